#!/usr/bin/env python3
"""The proxy benchmark against its floor (DESIGN §8, "Targets"); run it through bench/proxy.sh.

Every server is its own process, on 127.0.0.1, and the load comes from oha in its own process:

  direct         oha -> mock (the baseline every "added" number is over)
  relay          oha -> llm-meter-bench-relay (bare hyper relay) -> mock: the floor
  relay-b        a second relay instance: the A-vs-A arm, i.e. the noise floor of every ratio
  nginx          oha -> nginx (keep-alive upstream, no buffering) -> mock
  proxy-off      llm-meter proxy, `--telemetry off`: no metrics, no spans (calls are still
                 parsed, priced and answered with xproxy_result)
  proxy-metrics  llm-meter proxy as it starts with no OTEL_* variables: metrics on its
                 Prometheus registry; no spans (nothing would export them)
  proxy-otlp     llm-meter proxy with metrics and sampled spans exported in batches (sampler
                 BENCH_SAMPLER, default always_on: every call) over OTLP/HTTP (protobuf) to
                 llm-meter-bench-otlp-sink

Each round runs every arm (in a shuffled order, seeded by the round) through:
  1. latency: 1 client, sequential calls for BENCH_LATENCY_SECS; p50 and p99 from oha.
     "Added" = arm - direct in the same round.
  2. throughput at 32 and at 256 in flight for BENCH_LOAD_SECS each: 2xx calls/s and errors
     (non-2xx and transport errors). CPU per call of the server process (all its threads; nginx:
     master + workers) from /proc/PID/stat utime+stime over the 32-in-flight run.
  3. memory per open stream: a fresh server (and a fresh mock whose streams send their first
     chunk and then wait BENCH_CHUNK_DELAY_MS), warmed with a few calls; VmRSS (summed over the
     server's processes) with 0 streams and with BENCH_STREAMS streams held open after their
     first chunk, difference / streams.
Reported: medians over rounds of the per-round values and of the per-round ratios to `relay`.

Knobs (environment variables; defaults in brackets):
  BENCH_ROUNDS [5]             rounds of the load phases (1 with --quick)
  BENCH_LATENCY_SECS [3]       length of each 1-client run (1 with --quick)
  BENCH_LOAD_SECS [3]          length of each 32- and 256-in-flight run (1 with --quick)
  BENCH_WARMUP_SECS [1]        warm-up per arm at 32 in flight, before the rounds
  BENCH_STREAMS [1000]         streams held open per memory measurement (200 with --quick)
  BENCH_STREAM_ROUNDS [rounds] rounds of the memory phase (0 skips it)
  BENCH_CHUNK_DELAY_MS [600000] the stream mock's delay after each stream's first chunk
  BENCH_SAMPLER [always_on]    OTEL_TRACES_SAMPLER of proxy-otlp (BENCH_SAMPLER_ARG: its argument)
  BENCH_ARMS [all]             comma-separated arms (direct and relay are always added)
  BENCH_SERVER_CPUS            e.g. "0": the servers under test run under `taskset -c`
  BENCH_LOAD_CPUS              e.g. "1": the mock, the OTLP sink and oha run under `taskset -c`
  BENCH_NGINX_WORKERS [auto]   nginx worker_processes (auto: one per core)
  BENCH_WAIT_IDLE_SECS [0]     before each round wait up to this long for other processes to use
                               under 5% of the machine (their share is reported per round anyway)
  BENCH_OUT                    write the raw per-round numbers there, as JSON
  BENCH_KEEP=1                 keep the temp dir with the logs and generated configs
"""

import argparse
import asyncio
import ctypes
import json
import os
import pwd
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY = json.dumps(
    {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Hello, benchmark"}],
        "max_completion_tokens": 32,
    },
    separators=(",", ":"),
)
STREAM_BODY = json.dumps(
    {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Hello, benchmark"}],
        "max_completion_tokens": 32,
        "stream": True,
    },
    separators=(",", ":"),
)
AUTH = "Bearer sk-test"
# The mock's rate limits, out of the way: the benchmark must never see a 429.
MOCK_LIMITS = ["--limit-requests", "1000000000000", "--limit-tokens", "1000000000000000"]

ALL_ARMS = ["direct", "relay", "relay-b", "nginx", "proxy-off", "proxy-metrics", "proxy-otlp"]
PROXY_ARMS = ["proxy-off", "proxy-metrics", "proxy-otlp"]

# DESIGN §8, as ratios to the hyper relay.
TARGET_LATENCY = 1.25
TARGET_THROUGHPUT = 0.8
TARGET_CPU = 1.5
TARGET_RSS = 1.25


def env_num(name, default, kind=float):
    text = os.environ.get(name, "").strip()
    return kind(text) if text else default


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --- processes -------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _child_setup():
    # Runs in the child after setsid(): die with the benchmark even if it is killed outright.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class Procs:
    """Every child process started, each in its own process group; all stopped on exit."""

    def __init__(self, logdir):
        self.logdir = logdir
        self.children = []

    def start(self, name, argv, env=None, cpus=None):
        if cpus:
            argv = ["taskset", "-c", cpus] + argv
        out = open(os.path.join(self.logdir, f"{name}.log"), "ab")
        p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_child_setup,
        )
        out.close()
        p.bench_name = name
        self.children.append(p)
        return p

    def stop(self, p, timeout=5.0):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        if p in self.children:
            self.children.remove(p)

    def stop_all(self):
        for p in list(reversed(self.children)):
            self.stop(p)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} (see its log)")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} in {timeout:.0f} s")


def process_tree(pid):
    """pid and its descendants (nginx: master and workers)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return total


def machine_cpu():
    """(busy, steal) CPU-seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def own_cpu():
    """CPU-seconds of this script and of every child it has waited for (servers once stopped,
    oha runs; nginx workers through their master)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def ours_cpu(procs):
    """CPU-seconds of this benchmark so far: itself, waited-for children, live servers."""
    live = sum(cpu_seconds(process_tree(p.pid)) for p in procs.children if p.poll() is None)
    return own_cpu() + live


class Foreign:
    """CPU the rest of the machine used over an interval (other builds or tests skew every number)."""

    def __init__(self, procs):
        self.procs = procs
        self.busy0, _ = machine_cpu()
        self.ours0 = ours_cpu(procs)
        self.t0 = time.monotonic()

    def share(self):
        """(CPU-seconds, fraction of the machine) used by other processes since creation."""
        busy, _ = machine_cpu()
        cpu = max(0.0, (busy - self.busy0) - (ours_cpu(self.procs) - self.ours0))
        wall = max(1e-6, time.monotonic() - self.t0)
        return cpu, cpu / wall / (os.cpu_count() or 1)


def wait_quiet(procs, limit_secs, threshold=0.05):
    """Waits (up to limit_secs) until other processes use under `threshold` of the machine over
    a 1 s sample. Returns the last sample's share."""
    deadline = time.monotonic() + limit_secs
    while True:
        f = Foreign(procs)
        time.sleep(1.0)
        _, share = f.share()
        if share < threshold or time.monotonic() >= deadline:
            return share
        log(f"  machine busy with other work ({share:.0%} of it); waiting ...")


# --- one run ---------------------------------------------------------------------------------


def raise_nofile():
    """1,000 streams take 2,000+ descriptors in a relay (3,000+ in a proxy); children inherit
    the raised limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(want, 65536)), hard))


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


class Run:
    """One benchmark run, as a context manager: its temp dir (logs and generated configs) and
    the `Bench` starting its processes. SIGTERM and SIGHUP end it like Ctrl-C. On the way out
    every process is stopped; the temp dir is removed unless BENCH_KEEP=1 or the run failed or
    was interrupted. An interrupt ends the `with` block quietly, with `exit_code` 130.

        with Run("llm-meter-bench-", lambda tmp: Bench(args, tmp)) as session:
            ...
        return session.exit_code
    """

    def __init__(self, prefix, make_bench):
        self.tmp = tempfile.mkdtemp(prefix=prefix)
        self.bench = make_bench(self.tmp)
        self.keep = os.environ.get("BENCH_KEEP") == "1"
        self.exit_code = 0
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGHUP, _interrupt)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, _exc, _tb):
        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        if interrupted:
            log("interrupted")
            self.exit_code = 130
        self.bench.procs.stop_all()
        if self.keep or exc_type is not None:
            log(f"logs and configs kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return interrupted


# --- the servers -----------------------------------------------------------------------------


class Bench:
    def __init__(self, args, tmp):
        self.args = args
        self.tmp = tmp
        self.procs = Procs(tmp)
        self.bin = args.bin_dir
        self.cpus = os.environ.get("BENCH_SERVER_CPUS", "").strip() or None
        self.load_cpus = os.environ.get("BENCH_LOAD_CPUS", "").strip() or None
        base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "RUST_LOG"}
        base["RUST_LOG"] = "warn"
        self.base_env = base
        self.sink_port = None

    def exe(self, name):
        return os.path.join(self.bin, name)

    def start_mock(self, name, chunk_delay_ms=0):
        port = free_port()
        argv = [self.exe("llm-meter"), "mock", "--listen", f"127.0.0.1:{port}"] + MOCK_LIMITS
        if chunk_delay_ms:
            argv += ["--chunk-delay-ms", str(chunk_delay_ms), "--chunks", "2"]
        p = self.procs.start(name, argv, env=self.base_env, cpus=self.load_cpus)
        wait_port(port, p, name)
        return p, port

    def start_sink(self, name="otlp-sink", flags=()):
        """The OTLP sink (`flags`: its faults, e.g. `--delay-ms 2000`); proxy-otlp exports to the
        last one started unless start_server is given another port."""
        port = free_port()
        argv = [self.exe("llm-meter-bench-otlp-sink"), "--listen", f"127.0.0.1:{port}", "--threads", "1"]
        p = self.procs.start(name, argv + list(flags), env=self.base_env, cpus=self.load_cpus)
        wait_port(port, p, name)
        self.sink_port = port
        return p, port

    def nginx_conf(self, name, port, upstream_port):
        d = os.path.join(self.tmp, name)
        os.makedirs(d, exist_ok=True)
        workers = os.environ.get("BENCH_NGINX_WORKERS", "").strip() or "auto"
        user = f"user {pwd.getpwuid(os.getuid()).pw_name};" if os.getuid() == 0 else ""
        conf = f"""# Generated by bench/proxy.py: nginx as a plain streaming reverse proxy.
# worker_processes {workers}: one worker per core (like the relay's one runtime thread per
# core), so throughput compares like for like; CPU and RSS are summed over master + workers.
{user}
worker_processes {workers};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 16384;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream mock {{
        server 127.0.0.1:{upstream_port};
        keepalive 1024;
        keepalive_requests 1000000;
        keepalive_timeout 90s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        keepalive_requests 1000000;
        keepalive_timeout 90s;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host 127.0.0.1:{upstream_port};
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"""
        path = os.path.join(d, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        return d, path

    def start_server(self, arm, upstream_port, name=None, otlp_port=None, env_extra=None):
        """Starts the server under test for `arm` in front of the mock on upstream_port
        (proxy-otlp: exporting to otlp_port, else to the sink; env_extra: more variables)."""
        name = name or arm
        port = free_port()
        env = dict(self.base_env)
        env.update(env_extra or {})
        if arm in ("relay", "relay-b"):
            argv = [
                self.exe("llm-meter-bench-relay"),
                "--listen",
                f"127.0.0.1:{port}",
                "--upstream",
                f"http://127.0.0.1:{upstream_port}",
            ]
        elif arm == "nginx":
            d, conf = self.nginx_conf(name, port, upstream_port)
            argv = [self.args.nginx, "-p", d, "-c", conf, "-e", os.path.join(d, "error.log")]
        elif arm in PROXY_ARMS:
            argv = [
                self.exe("llm-meter"),
                "proxy",
                "--listen",
                f"127.0.0.1:{port}",
                "--upstream",
                f"http://127.0.0.1:{upstream_port}/v1",
                "--telemetry",
                "off" if arm == "proxy-off" else "auto",
                "--metrics-listen",
                f"127.0.0.1:{free_port()}",
            ]
            if arm == "proxy-otlp":
                env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{otlp_port or self.sink_port}"
                env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
                env["OTEL_TRACES_SAMPLER"] = os.environ.get("BENCH_SAMPLER", "always_on")
                if "BENCH_SAMPLER_ARG" in os.environ:
                    env["OTEL_TRACES_SAMPLER_ARG"] = os.environ["BENCH_SAMPLER_ARG"]
        else:
            raise ValueError(arm)
        p = self.procs.start(name, argv, env=env, cpus=self.cpus)
        wait_port(port, p, name)
        p.bench_port = port
        if arm in PROXY_ARMS:
            p.bench_metrics = argv[-1]
        return p, port


# --- load ------------------------------------------------------------------------------------


def oha(oha_bin, port, concurrency, seconds, cpus=None):
    """One oha run (under `taskset -c cpus` if given); returns the parsed JSON."""
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    duration = f"{max(1, int(round(seconds * 1000)))}ms"
    argv = [
        oha_bin,
        "--no-tui",
        "--output-format",  # oha ≥ 1.5; older ones spelled it -j
        "json",
        "-z",
        duration,
        "-w",  # let the calls in flight at the deadline finish (not errors)
        "-c",
        str(concurrency),
        "-m",
        "POST",
        "-T",
        "application/json",
        "-H",
        f"Authorization: {AUTH}",
        "-d",
        BODY,
        url,
    ]
    if cpus:
        argv = ["taskset", "-c", cpus] + argv
    out = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"oha failed ({out.returncode}): {out.stderr.decode(errors='replace')[-2000:]}")
    return json.loads(out.stdout)


def summarize(result):
    """(2xx calls, other answers + transport errors, seconds, p50 s, p99 s)."""
    codes = result.get("statusCodeDistribution") or {}
    ok = sum(n for c, n in codes.items() if str(c).startswith("2"))
    bad = sum(n for c, n in codes.items() if not str(c).startswith("2"))
    errors = result.get("errorDistribution") or {}
    bad += sum(errors.values())
    pct = result.get("latencyPercentiles") or {}
    seconds = (result.get("summary") or {}).get("total") or 0.0
    return ok, bad, seconds, pct.get("p50"), pct.get("p99"), errors


def check_arm(arm, port):
    """One call through the arm: it must answer 200 with a chat completion."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=BODY.encode(),
        headers={"Content-Type": "application/json", "Authorization": AUTH},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = json.loads(resp.read())
        if resp.status != 200 or "choices" not in body:
            raise RuntimeError(f"{arm}: unexpected answer {resp.status} {body!r:.300}")
        return "xproxy_result" in body


# --- open streams ----------------------------------------------------------------------------


def stream_request(port):
    """The raw HTTP/1.1 request of a streaming chat completion to 127.0.0.1:`port`."""
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nAuthorization: {AUTH}\r\n"
        f"Content-Length: {len(STREAM_BODY)}\r\n\r\n{STREAM_BODY}"
    ).encode()


async def read_to_first_chunk(reader, writer, request, timeout, closed):
    """Sends `request` and reads until the first SSE chunk of a 200 answer, all within
    `timeout` s. Returns the bytes read and `more()`, which reads what comes next within the
    same deadline. A server that closes raises ConnectionError(`closed`), one that answers
    other than 200 raises ConnectionError with its status line."""
    writer.write(request)
    await writer.drain()
    deadline = time.monotonic() + timeout

    async def more():
        left = deadline - time.monotonic()
        if left <= 0:
            raise asyncio.TimeoutError()
        chunk = await asyncio.wait_for(reader.read(65536), left)
        if not chunk:
            raise ConnectionError(closed)
        return chunk

    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += await more()
    if not buf.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(buf.split(b"\r\n", 1)[0].decode(errors="replace"))
    while b"data:" not in buf.split(b"\r\n\r\n", 1)[1]:
        buf += await more()
    return buf, more


async def open_streams(port, count, parallel_opens=64, timeout=30.0):
    """Opens `count` streaming calls and waits for each one's first SSE chunk. Returns the
    writers (close them to end the streams) and the number of failures."""
    request = stream_request(port)
    gate = asyncio.Semaphore(parallel_opens)
    writers, failures = [], []

    async def one():
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
            except (OSError, asyncio.TimeoutError) as e:
                failures.append(repr(e))
                return
            writers.append(writer)
            try:
                await read_to_first_chunk(reader, writer, request, timeout, "closed before the first chunk")
            except (OSError, ConnectionError, asyncio.TimeoutError) as e:
                failures.append(repr(e))

    await asyncio.gather(*(one() for _ in range(count)))
    return writers, failures


def close_streams(writers):
    for w in writers:
        try:
            w.transport.abort()
        except Exception:  # noqa: BLE001 - best effort teardown
            pass


def stream_memory(bench, arm, streams, chunk_delay_ms):
    """KiB of server RSS per open stream (fresh server and fresh mock), and failures."""
    mock, mock_port = bench.start_mock(f"{arm}-streams-mock", chunk_delay_ms=chunk_delay_ms)
    server = None
    try:
        if arm == "direct":
            server, port = mock, mock_port
        else:
            server, port = bench.start_server(arm, mock_port, name=f"{arm}-streams")
        for _ in range(20):  # warm: connections, pools, metric series
            check_arm(arm, port)
        time.sleep(0.3)
        pids = process_tree(server.pid)
        before = rss_kib(pids)
        loop = asyncio.new_event_loop()
        try:
            writers, failures = loop.run_until_complete(open_streams(port, streams))
            time.sleep(0.5)
            pids = process_tree(server.pid)
            held = rss_kib(pids)
            close_streams(writers)
            loop.run_until_complete(asyncio.sleep(0.05))
        finally:
            loop.close()
        opened = streams - len(failures)
        per_stream = (held - before) / opened if opened else float("nan")
        return {"before_kib": before, "held_kib": held, "opened": opened, "failures": failures[:5], "per_stream_kib": per_stream}
    finally:
        if server is not None and server is not mock:
            bench.procs.stop(server)
        bench.procs.stop(mock)


def round_order(arms, r):
    """The arms' order in round r: a shuffle seeded by the round, so that no arm always runs
    first or always right after the same neighbour, and a rerun uses the same orders."""
    order = list(arms)
    random.Random(r).shuffle(order)
    return order


# --- statistics and the table ----------------------------------------------------------------


def med(values):
    values = [v for v in values if v is not None and v == v]
    return statistics.median(values) if values else None


def ratio_series(rounds, arm, key):
    out = []
    for r in rounds:
        a, b = r.get(arm, {}).get(key), r.get("relay", {}).get(key)
        if a is not None and b is not None and b > 0:
            out.append(a / b)
    return out


def fmt(v, spec="{:.2f}", none="—"):
    return none if v is None else spec.format(v)


def verdict(value, target, higher_is_better=False):
    if value is None:
        return ""
    ok = value >= target if higher_is_better else value <= target
    return "" if ok else "!"


def table(rounds, streams_rounds, arms):
    lines = []
    head = [
        "arm",
        "added p50",
        "added p99",
        "lat ratio p50/p99",
        "calls/s @32",
        "@256",
        "tput ratio @32/@256",
        "errors",
        "CPU/call",
        "CPU ratio",
        "RSS/stream",
        "RSS ratio",
    ]
    rows = []
    for arm in arms:
        lat50 = med([r[arm]["added_p50_us"] for r in rounds if arm in r])
        lat99 = med([r[arm]["added_p99_us"] for r in rounds if arm in r])
        rps32 = med([r[arm]["rps32"] for r in rounds if arm in r])
        rps256 = med([r[arm]["rps256"] for r in rounds if arm in r])
        errors = sum(r[arm]["errors1"] + r[arm]["errors32"] + r[arm]["errors256"] for r in rounds if arm in r)
        cpu = med([r[arm]["cpu_us_per_call"] for r in rounds if arm in r])
        rss = med([s[arm]["per_stream_kib"] for s in streams_rounds if arm in s])
        if arm == "direct":
            p50 = med([r[arm]["p50_us"] for r in rounds])
            p99 = med([r[arm]["p99_us"] for r in rounds])
            added50, added99 = f"({p50:.0f} µs)", f"({p99:.0f} µs)"
            lat_ratio = tput_ratio = cpu_ratio = rss_ratio = "—"
        else:
            added50, added99 = f"{lat50:+.1f} µs", f"{lat99:+.1f} µs"
            r50 = med(ratio_series(rounds, arm, "added_p50_us"))
            r99 = med(ratio_series(rounds, arm, "added_p99_us"))
            t32 = med(ratio_series(rounds, arm, "rps32"))
            t256 = med(ratio_series(rounds, arm, "rps256"))
            c = med(ratio_series(rounds, arm, "cpu_us_per_call"))
            m = med(ratio_series(streams_rounds, arm, "per_stream_kib"))
            lat_ratio = (
                f"{fmt(r50)}{verdict(r50, TARGET_LATENCY)}/{fmt(r99)}{verdict(r99, TARGET_LATENCY)}"
            )
            tput_ratio = (
                f"{fmt(t32)}{verdict(t32, TARGET_THROUGHPUT, True)}/"
                f"{fmt(t256)}{verdict(t256, TARGET_THROUGHPUT, True)}"
            )
            cpu_ratio = f"{fmt(c)}{verdict(c, TARGET_CPU)}"
            rss_ratio = f"{fmt(m)}{verdict(m, TARGET_RSS)}"
        rows.append(
            [
                arm,
                added50,
                added99,
                lat_ratio,
                fmt(rps32, "{:,.0f}"),
                fmt(rps256, "{:,.0f}"),
                tput_ratio,
                str(errors),
                fmt(cpu, "{:.1f} µs"),
                cpu_ratio,
                fmt(rss, "{:.1f} KiB"),
                rss_ratio,
            ]
        )
    targets = [
        "target (vs relay)",
        "",
        "",
        f"≤{TARGET_LATENCY}/≤{TARGET_LATENCY}",
        "",
        "",
        f"≥{TARGET_THROUGHPUT}/≥{TARGET_THROUGHPUT}",
        "0",
        "",
        f"≤{TARGET_CPU}",
        "",
        f"≤{TARGET_RSS}",
    ]
    widths = [max(len(x[i]) for x in [head, targets] + rows) for i in range(len(head))]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    lines.append(line(head))
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        lines.append(line(row))
    lines.append(line(targets))
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin-dir", required=True, help="directory with llm-meter and the bench binaries")
    parser.add_argument("--oha", required=True)
    parser.add_argument("--nginx", required=True)
    parser.add_argument("--quick", action="store_true", help="1 round, short runs: a smoke check")
    args = parser.parse_args()

    quick = args.quick
    rounds_n = env_num("BENCH_ROUNDS", 1 if quick else 5, int)
    lat_secs = env_num("BENCH_LATENCY_SECS", 1.0 if quick else 3.0)
    load_secs = env_num("BENCH_LOAD_SECS", 1.0 if quick else 3.0)
    warm_secs = env_num("BENCH_WARMUP_SECS", 0.5 if quick else 1.0)
    streams = env_num("BENCH_STREAMS", 200 if quick else 1000, int)
    stream_rounds_n = env_num("BENCH_STREAM_ROUNDS", rounds_n, int)
    chunk_delay_ms = env_num("BENCH_CHUNK_DELAY_MS", 600_000, int)
    wait_idle = env_num("BENCH_WAIT_IDLE_SECS", 0.0)
    arms = [a.strip() for a in os.environ.get("BENCH_ARMS", ",".join(ALL_ARMS)).split(",") if a.strip()]
    for a in arms:
        if a not in ALL_ARMS:
            sys.exit(f"unknown arm {a!r} in BENCH_ARMS (arms: {', '.join(ALL_ARMS)})")
    for needed in ("direct", "relay"):
        if needed not in arms:
            arms.insert(0 if needed == "direct" else 1, needed)

    raise_nofile()
    started = time.monotonic()
    _, steal0 = machine_cpu()
    with Run("llm-meter-bench-", lambda tmp: Bench(args, tmp)) as session:
        tmp, bench = session.tmp, session.bench
        log(f"llm-meter proxy benchmark: {rounds_n} round(s), arms {', '.join(arms)}; logs in {tmp}")
        mock, mock_port = bench.start_mock("mock")
        if "proxy-otlp" in arms:
            bench.start_sink()
        servers = {"direct": (mock, mock_port)}
        for arm in arms:
            if arm != "direct":
                servers[arm] = bench.start_server(arm, mock_port)
        for arm in arms:
            marked = check_arm(arm, servers[arm][1])
            if arm in PROXY_ARMS and not marked:
                log(f"note: {arm} answered without xproxy_result")
        log(f"warm-up: {warm_secs:g} s at 32 in flight per arm")
        for arm in arms:
            oha(args.oha, servers[arm][1], 32, warm_secs, bench.load_cpus)

        rounds = []
        for r in range(rounds_n):
            if wait_idle:
                wait_quiet(bench.procs, wait_idle)
            foreign = Foreign(bench.procs)
            order = round_order(arms, r)
            got = {arm: {} for arm in arms}
            for arm in order:
                ok, bad, _s, p50, p99, errs = summarize(oha(args.oha, servers[arm][1], 1, lat_secs, bench.load_cpus))
                got[arm].update(p50_us=p50 * 1e6, p99_us=p99 * 1e6, errors1=bad)
                if bad:
                    log(f"round {r + 1} {arm} @1: {bad} errors {errs}")
            for arm in order:
                pids = process_tree(servers[arm][0].pid)
                cpu0 = cpu_seconds(pids)
                ok, bad, secs, *_rest, errs = summarize(oha(args.oha, servers[arm][1], 32, load_secs, bench.load_cpus))
                cpu1 = cpu_seconds(process_tree(servers[arm][0].pid))
                got[arm].update(
                    rps32=ok / secs if secs else 0.0,
                    errors32=bad,
                    calls32=ok + bad,
                    cpu_us_per_call=(cpu1 - cpu0) * 1e6 / max(1, ok + bad),
                )
                if bad:
                    log(f"round {r + 1} {arm} @32: {bad} errors {errs}")
            for arm in order:
                ok, bad, secs, *_rest, errs = summarize(oha(args.oha, servers[arm][1], 256, load_secs, bench.load_cpus))
                got[arm].update(rps256=ok / secs if secs else 0.0, errors256=bad)
                if bad:
                    log(f"round {r + 1} {arm} @256: {bad} errors {errs}")
            for arm in arms:
                got[arm]["added_p50_us"] = got[arm]["p50_us"] - got["direct"]["p50_us"]
                got[arm]["added_p99_us"] = got[arm]["p99_us"] - got["direct"]["p99_us"]
            rounds.append(got)
            foreign_cpu, foreign_share = foreign.share()
            got["_foreign"] = {"cpu_s": foreign_cpu, "share": foreign_share}
            log(
                f"round {r + 1}/{rounds_n} (other processes: {foreign_share:.0%} of the machine): "
                + ", ".join(
                    f"{a} +{got[a]['added_p50_us']:.0f}µs {got[a]['rps32']:,.0f}/s" for a in arms if a != "direct"
                )
            )

        streams_rounds = []
        for r in range(stream_rounds_n):
            if wait_idle:
                wait_quiet(bench.procs, wait_idle)
            foreign = Foreign(bench.procs)
            order = round_order(arms, r)
            got = {}
            for arm in order:
                got[arm] = stream_memory(bench, arm, streams, chunk_delay_ms)
                if got[arm]["failures"]:
                    log(f"streams round {r + 1} {arm}: {streams - got[arm]['opened']} failed, e.g. {got[arm]['failures'][0]}")
            streams_rounds.append(got)
            foreign_cpu, foreign_share = foreign.share()
            got["_foreign"] = {"cpu_s": foreign_cpu, "share": foreign_share}
            log(
                f"streams round {r + 1}/{stream_rounds_n} (other processes: {foreign_share:.0%}): "
                + ", ".join(f"{a} {got[a]['per_stream_kib']:.1f} KiB" for a in arms)
            )

        sink = None
        if bench.sink_port:
            with urllib.request.urlopen(f"http://127.0.0.1:{bench.sink_port}/stats", timeout=5) as resp:
                sink = json.loads(resp.read())
        exports = {}
        for arm in PROXY_ARMS:
            if arm in servers:
                url = f"http://{servers[arm][0].bench_metrics}/metrics"
                with urllib.request.urlopen(url, timeout=5) as resp:
                    text = resp.read().decode()
                exports[arm] = [
                    line for line in text.splitlines() if line.startswith("llm_meter_export_spans") and "{" in line
                ]

        elapsed = time.monotonic() - started
        # Everything stopped and waited for: what the machine did besides this benchmark.
        bench.procs.stop_all()
        _, steal1 = machine_cpu()
        shares = [r["_foreign"]["share"] for r in rounds]
        stream_shares = [r["_foreign"]["share"] for r in streams_rounds]
        foreign = sum(r["_foreign"]["cpu_s"] for r in rounds + streams_rounds)
        print()
        print(
            f"llm-meter proxy benchmark — {rounds_n} round(s) × ({lat_secs:g} s @1, {load_secs:g} s @32, "
            f"{load_secs:g} s @256), {stream_rounds_n} stream round(s) × {streams} streams; "
            f"{os.cpu_count()} CPUs{', servers under test on CPUs ' + bench.cpus if bench.cpus else ''}"
            f"{', mock/sink/oha on CPUs ' + bench.load_cpus if bench.load_cpus else ''}; {elapsed:.0f} s"
        )
        print(
            "medians over rounds; added = arm − direct in the same round; ratios are medians of per-round "
            "arm/relay; '!' marks a miss of the DESIGN §8 target"
        )
        print()
        print(table(rounds, streams_rounds, arms))
        print()
        print(
            "direct row: the mock's own p50/p99 in brackets, CPU/call and RSS/stream of the mock; "
            "errors: non-2xx + transport errors at 1, 32 and 256 in flight, summed over rounds"
        )
        if sink is not None:
            t, m = sink["traces"], sink["metrics"]
            print(
                f"otlp sink: {t['requests']} trace exports ({t['bytes'] / 1e6:.1f} MB), "
                f"{m['requests']} metric exports ({m['bytes'] / 1e6:.2f} MB)"
            )
        for arm, lines in exports.items():
            if lines:
                print(f"{arm} span export counters: " + "; ".join(lines))
        print(
            f"other processes used {foreign:.1f} CPU-s while rounds ran (share of the {os.cpu_count()} CPUs "
            "per load round: "
            + ", ".join(f"{x:.0%}" for x in shares)
            + "; per stream round: "
            + ", ".join(f"{x:.0%}" for x in stream_shares)
            + f"); steal {steal1 - steal0:.1f} CPU-s"
            + ("  <- some rounds skewed by other work" if max(shares + stream_shares + [0]) > 0.05 else "")
        )
        out = os.environ.get("BENCH_OUT")
        if out:
            with open(out, "w") as f:
                json.dump({"rounds": rounds, "streams": streams_rounds, "sink": sink}, f, indent=1)
            print(f"raw numbers: {out}")
    return session.exit_code


if __name__ == "__main__":
    sys.exit(main())
