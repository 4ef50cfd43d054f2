"""What bench/exporter_faults.py and bench/soak.py share, on top of bench/proxy.py's process,
port, CPU, RSS and oha helpers (imported from there, not copied):

- the binaries (built with cargo unless --bin-dir or BENCH_BIN_DIR points at them) and oha;
- the run's header: date, commit, machine, and the CPU share of other processes;
- /proc readings of one process: status and smaps_rollup fields, threads, sockets to a port;
- the proxy's /metrics: the span export counters;
- glibc's malloc statistics of a live process (gdb calling malloc_stats, malloc_trim);
- streams that are held open together and then read to their end;
- a plain text table.
"""

import asyncio
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import proxy  # noqa: E402  (bench/proxy.py: Procs, Bench, oha, summarize, rss_kib, ...)

from proxy import log  # noqa: E402


# --- binaries and tools ----------------------------------------------------------------------


def release_dir(bin_dir=None):
    """The directory of llm-meter, llm-meter-bench-relay and llm-meter-bench-otlp-sink: the
    given one, BENCH_BIN_DIR, or a fresh `cargo build --release` of the two packages."""
    bin_dir = bin_dir or os.environ.get("BENCH_BIN_DIR", "").strip() or None
    if bin_dir is None:
        log("building release binaries (cargo build --release -p llm-meter-cli -p llm-meter-bench-relay) ...")
        subprocess.run(
            ["cargo", "build", "--release", "-p", "llm-meter-cli", "-p", "llm-meter-bench-relay"],
            cwd=ROOT,
            check=True,
        )
        meta = subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--no-deps"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        bin_dir = os.path.join(json.loads(meta.stdout)["target_directory"], "release")
    for b in ("llm-meter", "llm-meter-bench-otlp-sink"):
        if not os.access(os.path.join(bin_dir, b), os.X_OK):
            sys.exit(f"missing {os.path.join(bin_dir, b)} (build it, or point --bin-dir at it)")
    return bin_dir


def find_oha(given=None):
    """oha: the given path, on PATH, or in ~/.cargo/bin (`bash bench/proxy.sh` installs it)."""
    for candidate in (given, shutil.which("oha"), os.path.expanduser("~/.cargo/bin/oha")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    sys.exit("oha not found: `cargo install oha --locked` (or run bash bench/proxy.sh once)")


class Bench(proxy.Bench):
    """proxy.Bench with a nginx path it never uses (these scripts run no nginx)."""

    def __init__(self, bin_dir, tmp):
        args = type("Args", (), {"bin_dir": bin_dir, "nginx": None})()
        super().__init__(args, tmp)


# --- the run's header ------------------------------------------------------------------------


def run_header(title):
    """Date, commit, machine and load average, as printed above every table."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        commit += "+changes" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{title} — {datetime.date.today().isoformat()}, commit {commit}, {platform.node()}: "
        f"{os.cpu_count()} CPUs ({model}), {mem_gib:.0f} GiB, {platform.system()} {platform.release()}, "
        f"load average at start {os.getloadavg()[0]:.1f}"
    )


# --- /proc -----------------------------------------------------------------------------------


def memory(pid):
    """KiB from /proc/PID/status (VmRSS, RssAnon, RssFile, VmSize) and smaps_rollup
    (Private_Dirty, Anonymous), plus Threads and open descriptors."""
    out = {}
    wanted = {"VmRSS", "RssAnon", "RssFile", "VmSize", "VmHWM", "Threads"}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in wanted:
                    out[key] = int(value.split()[0])
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("Private_Dirty", "Anonymous"):
                    out[key] = int(value.split()[0])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError, IndexError):
        pass
    return out


def tcp_connections(pid, remote_port):
    """Established TCP connections of process `pid` to 127.0.0.1:remote_port (e.g. its
    upstream pool, idle connections included)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return 0
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            # local, remote ("0100007F:1F90"), state ("01": established), ..., inode (field 9)
            if fields[3] == "01" and int(fields[2].split(":")[1], 16) == remote_port and fields[9] in inodes:
                n += 1
    return n


# --- the proxy's /metrics --------------------------------------------------------------------


def scrape(metrics_addr, timeout=10.0):
    """(text of /metrics, seconds the scrape took)."""
    t0 = time.monotonic()
    with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=timeout) as resp:
        text = resp.read().decode()
    return text, time.monotonic() - t0


def export_counters(text):
    """llm_meter_export_spans_total by outcome: exported, failed, dropped."""
    out = {}
    for line in text.splitlines():
        m = re.match(r'llm_meter_export_spans(?:_total)?\{[^}]*outcome="([a-z_]+)"[^}]*\}\s+(\S+)', line)
        if m:
            out[m.group(1)] = int(float(m.group(2)))
    return out


def series_count(text, prefix="llm_meter_"):
    """Series lines of our own metrics in a /metrics text."""
    return sum(1 for line in text.splitlines() if line.startswith(prefix))


# --- glibc malloc, from outside --------------------------------------------------------------


def _gdb_call(pid, expr, timeout=60):
    if not shutil.which("gdb"):
        return None
    # --readnever: no DWARF of the (large) binary is read; glibc's exported symbols suffice.
    argv = ["gdb", "--readnever", "-nx", "-batch", "-iex", "set debuginfod enabled off", "-p", str(pid),
            "-ex", "set confirm off", "-ex", f"call {expr}", "-ex", "detach"]
    try:
        out = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    m = re.search(r"\$1 = (-?\d+)", out.stdout)
    return int(m.group(1)) if m else 0


def malloc_stats(pid, log_path, timeout=60):
    """glibc's malloc_stats() of a live process, called through gdb (it prints on the process's
    stderr, i.e. its log): {"arenas": n, "system_kib": ..., "in_use_kib": ..., "mmap_kib": ...}
    with system = bytes malloc holds from the kernel (heap and arenas, mmapped chunks included)
    and in use = bytes in live allocations. None when gdb is missing or failed."""
    try:
        start = os.path.getsize(log_path)
    except OSError:
        return None
    if _gdb_call(pid, "(void)malloc_stats()", timeout) is None:
        return None
    time.sleep(0.2)
    with open(log_path, "rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    arenas = len(re.findall(r"^Arena \d+:", text, re.M))
    total = text.rsplit("Total (incl. mmap):", 1)
    if arenas == 0 or len(total) < 2:
        return None
    system = re.search(r"system bytes\s*=\s*(\d+)", total[1])
    in_use = re.search(r"in use bytes\s*=\s*(\d+)", total[1])
    mmap = re.search(r"max mmap bytes\s*=\s*(\d+)", total[1])
    per_arena = [
        (int(s) // 1024, int(u) // 1024)
        for s, u in re.findall(r"Arena \d+:\s*system bytes\s*=\s*(\d+)\s*in use bytes\s*=\s*(\d+)", text)
    ]
    return {
        "arenas": arenas,
        "system_kib": int(system.group(1)) // 1024 if system else None,
        "in_use_kib": int(in_use.group(1)) // 1024 if in_use else None,
        "max_mmap_kib": int(mmap.group(1)) // 1024 if mmap else None,
        "per_arena_kib": per_arena,
    }


def malloc_trim(pid, timeout=60):
    """Calls glibc's malloc_trim(0) in a live process (gives free heap pages back to the
    kernel); True when it ran."""
    return _gdb_call(pid, "(int)malloc_trim(0)", timeout) is not None


# --- streams held open together, then completed ----------------------------------------------


async def held_streams(port, count, on_held=None, parallel_opens=64, timeout=60.0):
    """Opens `count` streaming chat completions, waits until each has its first SSE chunk (all
    held open at once), calls on_held() (e.g. to read the server's RSS), then reads every stream
    to its end (`data: [DONE]` and the last chunk of the chunked body).

    Returns {"completed", "failures" (reprs), "peak_open" (streams open together after their
    first chunk), "marked" (streams that carried xproxy_result), "early" (streams that ended
    before the last one was opened: the hold did not hold them all), "open_s", "total_s"}."""
    request = proxy.stream_request(port)
    gate = asyncio.Semaphore(parallel_opens)
    state = {"open": 0, "peak": 0, "held": 0, "done": 0, "completed": 0, "marked": 0, "early": 0}
    failures = []
    all_held = asyncio.Event()
    t0 = time.monotonic()

    def settle():
        if state["held"] + len(failures) >= count:
            all_held.set()

    async def one():
        writer = None
        first = False
        try:
            async with gate:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
                buf, more = await proxy.read_to_first_chunk(
                    reader, writer, request, timeout, "closed before the end of the stream"
                )
            first = True
            state["held"] += 1
            state["open"] += 1
            state["peak"] = max(state["peak"], state["open"])
            settle()
            # To `[DONE]` and the chunked body's last chunk (or the connection's end after it).
            while not (b"data: [DONE]" in buf and buf.endswith(b"0\r\n\r\n")):
                try:
                    buf += await more()
                except ConnectionError:
                    if b"data: [DONE]" not in buf:
                        raise
                    break
            if not all_held.is_set():
                state["early"] += 1
            state["completed"] += 1
            state["marked"] += b"xproxy_result" in buf
        except (OSError, ConnectionError, asyncio.TimeoutError) as e:
            failures.append(repr(e))
            settle()
        finally:
            if first:
                state["open"] -= 1
            if writer is not None:
                writer.close()

    tasks = [asyncio.ensure_future(one()) for _ in range(count)]
    try:
        await asyncio.wait_for(all_held.wait(), timeout)
    except asyncio.TimeoutError:
        pass
    open_s = time.monotonic() - t0
    if on_held is not None:
        on_held()
    await asyncio.gather(*tasks)
    return {
        "completed": state["completed"],
        "failures": failures,
        "peak_open": state["peak"],
        "marked": state["marked"],
        "early": state["early"],
        "open_s": open_s,
        "total_s": time.monotonic() - t0,
    }


def run_held_streams(port, count, on_held=None, **kw):
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(held_streams(port, count, on_held, **kw))
    finally:
        loop.close()


# --- output ----------------------------------------------------------------------------------


def table(head, rows):
    """A Markdown table, padded for reading in a terminal."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(x[i]) for x in [head] + rows) for i in range(len(head))]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def mib(kib):
    return "—" if kib is None else f"{kib / 1024:.1f}"
