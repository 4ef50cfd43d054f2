#!/usr/bin/env python3
"""A bounded soak of the proxy: does its memory level off, and what holds it?

    python3 bench/soak.py            # 6 rounds per arm, then 185 s idle (~8.5 min)
    python3 bench/soak.py --quick    # 2 rounds, 5 s loads, 10 s idle (~1.5 min)

The proxy as it starts by default (metrics on its Prometheus registry, no OTLP) in front of the
mock, in two arms, each its own process, rounds interleaved (A, B, B, A, ...):

  default   glibc malloc as it comes (an arena per thread, at most 8 per core)
  arena2    the same binary with MALLOC_ARENA_MAX=2
  otlp      (only when asked for, BENCH_ARMS=...,otlp) metrics and every span exported over OTLP/HTTP
            to llm-meter-bench-otlp-sink, as proxy.py's proxy-otlp arm

Each round, per arm: BENCH_STREAMS [1000] streaming calls opened together and held open (each
has its first chunk; the mock sends the next ones BENCH_CHUNK_DELAY_MS [1500] ms apart, so a
stream lasts ~4 delays), RSS read while all are held, then every stream read to its `[DONE]`
(failures counted: must be 0); then oha at 32 in flight, non-streaming, for BENCH_LOAD_SECS
[15] s (errors counted: must be 0); RSS, the upstream connections kept in the proxy's pool
and /metrics' series after each step.

After the rounds the arms sit idle for BENCH_IDLE_SECS [185] s (the upstream pool evicts
connections idle for 90 s on a 90 s tick, so all are gone by 180 s), RSS and pooled
connections read along the way; then glibc's own accounting
through gdb (malloc_stats: bytes malloc holds from the kernel vs bytes in live allocations,
per arena), and RSS after malloc_trim(0) (free heap pages handed back): what RSS is live data,
and what is memory malloc keeps.

Bound (stated before the run): the RSS after each of the last 3 rounds, and while 1,000
streams are held, within BENCH_BOUND_PCT [5] % of each other (max / min − 1).

Knobs (environment variables): BENCH_ROUNDS [6], BENCH_STREAMS [1000], BENCH_CHUNK_DELAY_MS
[1500], BENCH_LOAD_SECS [15], BENCH_IDLE_SECS [185], BENCH_BOUND_PCT [5], BENCH_ARMS
[default,arena2], BENCH_SERVER_CPUS / BENCH_LOAD_CPUS (taskset, as in proxy.py), BENCH_WAIT_IDLE_SECS [0]
(before each round wait up to this long for other processes to use under 5 % of the machine), BENCH_BIN_DIR,
BENCH_OUT (raw numbers as JSON), BENCH_KEEP=1 (keep logs), BENCH_GDB=0 (skip the malloc
statistics).
"""

import argparse
import json
import os
import shutil
import sys
import time

import common
from common import proxy
from common import log, mib

# arm: (proxy.py's arm it starts, extra environment)
ARMS = {
    "default": ("proxy-metrics", {}),
    "arena2": ("proxy-metrics", {"MALLOC_ARENA_MAX": "2"}),
    "otlp": ("proxy-otlp", {}),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin-dir", help="directory with llm-meter")
    parser.add_argument("--oha", help="the oha binary (default: on PATH or in ~/.cargo/bin)")
    parser.add_argument("--quick", action="store_true", help="2 rounds, 5 s loads, 10 s idle: a smoke check")
    args = parser.parse_args()

    quick = args.quick
    rounds_n = proxy.env_num("BENCH_ROUNDS", 2 if quick else 6, int)
    streams = proxy.env_num("BENCH_STREAMS", 1000, int)
    chunk_delay_ms = proxy.env_num("BENCH_CHUNK_DELAY_MS", 1000 if quick else 1500, int)
    load_secs = proxy.env_num("BENCH_LOAD_SECS", 5.0 if quick else 15.0)
    idle_secs = proxy.env_num("BENCH_IDLE_SECS", 10.0 if quick else 185.0)
    bound_pct = proxy.env_num("BENCH_BOUND_PCT", 5.0)
    use_gdb = os.environ.get("BENCH_GDB", "1") != "0" and shutil.which("gdb")
    arms = [a.strip() for a in os.environ.get("BENCH_ARMS", "default,arena2").split(",") if a.strip()]
    for a in arms:
        if a not in ARMS:
            sys.exit(f"unknown arm {a!r} (arms: {', '.join(ARMS)})")

    wait_idle = proxy.env_num("BENCH_WAIT_IDLE_SECS", 0.0)
    bin_dir = common.release_dir(args.bin_dir)
    oha_bin = common.find_oha(args.oha)
    proxy.raise_nofile()
    header = common.run_header("llm-meter proxy soak")
    started = time.monotonic()
    with proxy.Run("llm-meter-soak-", lambda tmp: common.Bench(bin_dir, tmp)) as session:
        tmp, bench = session.tmp, session.bench
        log(f"{header}\narms {', '.join(arms)}; {rounds_n} round(s) × ({streams} held streams + {load_secs:g} s "
            f"@32); logs in {tmp}")
        mock, mock_port = bench.start_mock("mock", chunk_delay_ms=chunk_delay_ms)
        runs = {}
        for arm in arms:
            kind, env_extra = ARMS[arm]
            if kind == "proxy-otlp" and bench.sink_port is None:
                bench.start_sink()
            server, port = bench.start_server(kind, mock_port, name=f"proxy-{arm}", env_extra=env_extra)
            runs[arm] = {"server": server, "port": port, "rounds": []}
            proxy.check_arm(arm, port)

        def snapshot(arm):
            run = runs[arm]
            m = common.memory(run["server"].pid)
            m["pool"] = common.tcp_connections(run["server"].pid, mock_port)
            return m

        for arm in arms:
            runs[arm]["start"] = snapshot(arm)
            text, _ = common.scrape(runs[arm]["server"].bench_metrics)
            runs[arm]["start"]["series"] = common.series_count(text)
            if use_gdb:
                runs[arm]["start"]["malloc"] = common.malloc_stats(
                    runs[arm]["server"].pid, os.path.join(tmp, f"proxy-{arm}.log")
                )

        shares = []
        foreign = proxy.Foreign(bench.procs)
        for r in range(rounds_n):
            if wait_idle:
                proxy.wait_quiet(bench.procs, wait_idle)
            round_foreign = proxy.Foreign(bench.procs)
            order = arms if r % 2 == 0 else list(reversed(arms))
            for arm in order:
                run = runs[arm]
                got = {}
                held = {}

                def on_held():
                    held.update(snapshot(arm))
                    if use_gdb:
                        held["malloc"] = common.malloc_stats(run["server"].pid, os.path.join(tmp, f"proxy-{arm}.log"))

                res = common.run_held_streams(run["port"], streams, on_held=on_held, timeout=60.0 + 6 * chunk_delay_ms / 1e3)
                got["streams"] = {k: v for k, v in res.items() if k != "failures"}
                got["stream_failures"] = len(res["failures"])
                got["stream_failure_kinds"] = sorted(set(res["failures"]))[:5]
                got["held"] = held
                time.sleep(0.3)
                got["after_streams"] = snapshot(arm)
                ok, bad, secs, p50, p99, errs = proxy.summarize(
                    proxy.oha(oha_bin, run["port"], 32, load_secs, bench.load_cpus)
                )
                got["load"] = {"calls": ok + bad, "errors": bad, "rps": ok / secs if secs else 0.0,
                               "p50_ms": (p50 or 0) * 1e3, "p99_ms": (p99 or 0) * 1e3, "error_kinds": errs}
                time.sleep(0.3)
                got["after_load"] = snapshot(arm)
                text, _ = common.scrape(run["server"].bench_metrics)
                got["after_load"]["series"] = common.series_count(text)
                if use_gdb:
                    got["malloc"] = common.malloc_stats(run["server"].pid, os.path.join(tmp, f"proxy-{arm}.log"))
                run["rounds"].append(got)
                if got["stream_failures"] or bad:
                    log(f"round {r + 1} {arm}: {got['stream_failures']} stream failures "
                        f"{got['stream_failure_kinds']}, {bad} load errors {errs}")
            _, share = round_foreign.share()
            shares.append(share)
            log(
                f"round {r + 1}/{rounds_n} (other processes: {share:.0%} of the machine): "
                + ", ".join(
                    f"{a} held {mib(runs[a]['rounds'][-1]['held'].get('VmRSS'))} MiB, "
                    f"after {mib(runs[a]['rounds'][-1]['after_load'].get('VmRSS'))} MiB, "
                    f"pool {runs[a]['rounds'][-1]['after_load'].get('pool')}"
                    for a in arms
                )
            )
        foreign_cpu, foreign_share = foreign.share()

        # Idle: the pool's idle timeout (90 s) closes the upstream connections; does RSS follow?
        idle = {arm: [] for arm in arms}
        stats = {arm: {} for arm in arms}
        if use_gdb:
            for arm in arms:
                stats[arm]["idle_start"] = common.malloc_stats(runs[arm]["server"].pid, os.path.join(tmp, f"proxy-{arm}.log"))
        t_idle = time.monotonic()
        marks = sorted({0.0, idle_secs / 3, 2 * idle_secs / 3, idle_secs})
        for mark in marks:
            left = t_idle + mark - time.monotonic()
            if left > 0:
                time.sleep(left)
            for arm in arms:
                idle[arm].append((round(time.monotonic() - t_idle), snapshot(arm)))
        trimmed = {}
        if use_gdb:
            for arm in arms:
                pid = runs[arm]["server"].pid
                stats[arm]["idle_end"] = common.malloc_stats(pid, os.path.join(tmp, f"proxy-{arm}.log"))
                if common.malloc_trim(pid):
                    time.sleep(0.3)
                    trimmed[arm] = common.memory(pid)
        for arm in arms:
            runs[arm]["alive"] = runs[arm]["server"].poll() is None
        elapsed = time.monotonic() - started
        bench.procs.stop_all()

        print()
        print(header)
        print(
            f"{rounds_n} round(s) per arm × ({streams} streams held open together then read to [DONE], mock chunk "
            f"delay {chunk_delay_ms} ms; then {load_secs:g} s non-streaming at 32 in flight); arms interleaved; "
            f"then {idle_secs:g} s idle; {elapsed:.0f} s"
        )
        verdicts = []
        for arm in arms:
            run = runs[arm]
            print()
            extra = ARMS[arm][1]
            print(f"arm {arm}{' (' + ', '.join(f'{k}={v}' for k, v in extra.items()) + ')' if extra else ''}: "
                  f"RSS at start {mib(run['start'].get('VmRSS'))} MiB, {run['start'].get('Threads')} threads, "
                  f"{run['start'].get('series')} series"
                  + (f", malloc held / live {mib(run['start']['malloc']['system_kib'])} / "
                     f"{mib(run['start']['malloc']['in_use_kib'])} MiB" if run["start"].get("malloc") else ""))
            rows = []
            for i, g in enumerate(run["rounds"]):
                s = g["streams"]
                rows.append([
                    str(i + 1),
                    f"{s['completed']}/{streams}",
                    str(g["stream_failures"]),
                    f"{s['peak_open']}{'' if s['early'] == 0 else ' (' + str(s['early']) + ' early)'}",
                    mib(g["held"].get("VmRSS"))
                    + ("" if not g["held"].get("malloc") else
                       f" ({mib(g['held']['malloc']['system_kib'])} / {mib(g['held']['malloc']['in_use_kib'])})"),
                    mib(g["after_streams"].get("VmRSS")),
                    str(g["after_streams"].get("pool")),
                    f"{g['load']['rps']:,.0f}",
                    str(g["load"]["errors"]),
                    mib(g["after_load"].get("VmRSS")),
                    mib(g["after_load"].get("RssAnon")),
                    str(g["after_load"].get("pool")),
                    str(g["after_load"].get("Threads")),
                    str(g["after_load"].get("series")),
                    "—" if not g.get("malloc") else
                    f"{mib(g['malloc']['system_kib'])} / {mib(g['malloc']['in_use_kib'])}",
                ])
            print(common.table(
                ["round", "streams done", "failed", "held together", "RSS held (malloc held / live)", "RSS after streams",
                 "pool conns", "load calls/s", "load errors", "RSS after load", "RssAnon", "pool conns", "threads",
                 "series", "malloc held / live MiB"],
                rows,
            ))
            tail = run["rounds"][-3:]
            after = [g["after_load"].get("VmRSS", 0) for g in tail]
            held = [g["held"].get("VmRSS", 0) for g in tail]
            spread_after = (max(after) / max(1, min(after)) - 1) * 100 if after else float("nan")
            spread_held = (max(held) / max(1, min(held)) - 1) * 100 if held else float("nan")
            first, last = run["rounds"][0], run["rounds"][-1]
            ok = spread_after <= bound_pct and spread_held <= bound_pct and len(tail) >= 3
            verdicts.append(ok)
            print(
                f"last {len(tail)} rounds: RSS after load within {spread_after:.1f} %, while held within "
                f"{spread_held:.1f} % (bound {bound_pct:g} %): {'levelled off' if ok else 'NOT within the bound'}; "
                f"round 1 → {len(run['rounds'])}: held {mib(first['held'].get('VmRSS'))} → "
                f"{mib(last['held'].get('VmRSS'))} MiB, after load {mib(first['after_load'].get('VmRSS'))} → "
                f"{mib(last['after_load'].get('VmRSS'))} MiB; stream failures "
                f"{sum(g['stream_failures'] for g in run['rounds'])}, load errors "
                f"{sum(g['load']['errors'] for g in run['rounds'])}"
            )
            print("idle: " + ", ".join(
                f"{t} s {mib(m.get('VmRSS'))} MiB (pool {m.get('pool')})" for t, m in idle[arm]
            ) + (f"; after malloc_trim(0) {mib(trimmed[arm].get('VmRSS'))} MiB" if arm in trimmed else ""))
            for when in ("idle_start", "idle_end"):
                st = stats[arm].get(when)
                if st:
                    print(
                        f"malloc_stats at {when.replace('_', ' ')}: {st['arenas']} arenas, malloc holds "
                        f"{mib(st['system_kib'])} MiB from the kernel, {mib(st['in_use_kib'])} MiB in live "
                        f"allocations ({mib(st['system_kib'] - st['in_use_kib'])} MiB free inside malloc); "
                        f"per arena (held/live MiB): "
                        + ", ".join(f"{mib(s)}/{mib(u)}" for s, u in st["per_arena_kib"])
                    )
            if not run["alive"]:
                print(f"proxy {arm}: EXITED during the run (see its log)")
        print()
        print(
            f"other processes used {foreign_cpu:.1f} CPU-s during the rounds ({foreign_share:.0%} of the "
            f"{os.cpu_count()} CPUs; per round: " + ", ".join(f"{x:.0%}" for x in shares) + ")"
            + ("  <- skewed by other work" if max(shares + [0]) > 0.05 else "")
        )
        out = os.environ.get("BENCH_OUT")
        if out:
            with open(out, "w") as f:
                json.dump(
                    {
                        "runs": {a: {k: v for k, v in run.items() if k != "server"} for a, run in runs.items()},
                        "idle": idle,
                        "malloc": stats,
                        "trimmed": trimmed,
                    },
                    f,
                    indent=1,
                )
            print(f"raw numbers: {out}")
    return session.exit_code


if __name__ == "__main__":
    sys.exit(main())
