#!/usr/bin/env python3
"""The proxy at saturation while its OTLP endpoint fails (DESIGN §9: "A down OTLP endpoint
never blocks or slows calls; queues are bounded and drops are counted").

    python3 bench/exporter_faults.py            # 6 rounds, 60 s at saturation per scenario (~8 min)
    python3 bench/exporter_faults.py --quick    # 1 round, 7 s per scenario (~1.5 min)

One llm-meter proxy process per scenario, each exporting metrics and every span
(OTEL_TRACES_SAMPLER=always_on, two spans per call) over OTLP/HTTP (protobuf), as proxy.py's
proxy-otlp arm does, all in front of one mock; the endpoints:

  healthy   llm-meter-bench-otlp-sink, answering at once (the reference)
  down      a closed port on 127.0.0.1 (connection refused)
  slow      the sink answering each export after BENCH_SLOW_MS [2000] ms
  hung      the sink answering after 600 s: every export runs into the exporter's 10 s timeout
  flapping  the sink cycling through BENCH_FLAP_SECS [5] s healthy, answering 503, healthy,
            dropping connections (open ones and new ones)

Each proxy is warmed (BENCH_WARMUP_SECS [2] at 32, then at 256 in flight) and its RSS read ("start"); then
each round runs every scenario in a shuffled order: oha with 1 client for BENCH_LATENCY_SECS [3]
s (latency without queueing: a call held up by the exporter would show in its slowest), at 32
in flight for BENCH_LOAD_SECS [5] s, then at 256 for as long; RSS after each. At the end ("end") RSS again, and, after
BENCH_SETTLE_SECS [8] s without load (the healthy exporter's queue drains in one 5 s batch
interval), the proxy's llm_meter_export_spans_total counters and the time its /metrics took;
last, how long the proxy took to exit on SIGTERM (it flushes spans and metrics on its way out).

Reported per scenario: p50, p99 and slowest call at 1, 32 and 256 in flight, calls/s, each as a
median over rounds and as the median of per-round ratios to `healthy`; errors (non-2xx and
transport errors, must be 0); the proxy's CPU per call; RSS at start, its highest after a round,
and at the end; spans per call that reached an outcome (2 when every span was exported, failed
or dropped by the time the counters are read) and the export outcomes.

Knobs (environment variables): BENCH_ROUNDS [6], BENCH_LOAD_SECS [5], BENCH_LATENCY_SECS [3],
BENCH_WARMUP_SECS [2],
BENCH_SETTLE_SECS [8], BENCH_SLOW_MS [2000], BENCH_FLAP_SECS [5], BENCH_SCENARIOS (comma-separated),
BENCH_SERVER_CPUS / BENCH_LOAD_CPUS (taskset, as in proxy.py), BENCH_WAIT_IDLE_SECS [0]
(before each round wait up to this long for other processes to use under 5 % of the machine), BENCH_BIN_DIR (binaries already
built; else `cargo build --release` first), BENCH_OUT (raw numbers as JSON), BENCH_KEEP=1 (keep logs).
"""

import argparse
import json
import os
import sys
import time
import urllib.request

import common
from common import proxy
from common import log, mib

SCENARIOS = ["healthy", "down", "slow", "hung", "flapping"]


def sink_flags(scenario, slow_ms, flap_secs):
    return {
        "healthy": [],
        "slow": ["--delay-ms", str(slow_ms)],
        "hung": ["--delay-ms", "600000"],
        "flapping": ["--flap-secs", str(flap_secs)],
    }.get(scenario)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin-dir", help="directory with llm-meter and llm-meter-bench-otlp-sink")
    parser.add_argument("--oha", help="the oha binary (default: on PATH or in ~/.cargo/bin)")
    parser.add_argument("--quick", action="store_true", help="1 round, 3 s per load: a smoke check")
    args = parser.parse_args()

    quick = args.quick
    rounds_n = proxy.env_num("BENCH_ROUNDS", 1 if quick else 6, int)
    load_secs = proxy.env_num("BENCH_LOAD_SECS", 3.0 if quick else 5.0)
    lat_secs = proxy.env_num("BENCH_LATENCY_SECS", 1.0 if quick else 3.0)
    warm_secs = proxy.env_num("BENCH_WARMUP_SECS", 1.0 if quick else 2.0)
    settle_secs = proxy.env_num("BENCH_SETTLE_SECS", 8.0)
    slow_ms = proxy.env_num("BENCH_SLOW_MS", 2000, int)
    flap_secs = proxy.env_num("BENCH_FLAP_SECS", 5, int)
    scenarios = [s.strip() for s in os.environ.get("BENCH_SCENARIOS", ",".join(SCENARIOS)).split(",") if s.strip()]
    for s in scenarios:
        if s not in SCENARIOS:
            sys.exit(f"unknown scenario {s!r} (scenarios: {', '.join(SCENARIOS)})")
    if "healthy" not in scenarios:
        scenarios.insert(0, "healthy")

    wait_idle = proxy.env_num("BENCH_WAIT_IDLE_SECS", 0.0)
    bin_dir = common.release_dir(args.bin_dir)
    oha_bin = common.find_oha(args.oha)
    proxy.raise_nofile()
    header = common.run_header("llm-meter proxy under OTLP exporter faults")
    started = time.monotonic()
    with proxy.Run("llm-meter-faults-", lambda tmp: common.Bench(bin_dir, tmp)) as session:
        tmp, bench = session.tmp, session.bench
        log(f"{header}\nscenarios {', '.join(scenarios)}; {rounds_n} round(s) × ({lat_secs:g} s @1 + {load_secs:g} s @32 + "
            f"{load_secs:g} s @256); logs in {tmp}")
        mock, mock_port = bench.start_mock("mock")
        runs = {}
        for sc in scenarios:
            flags = sink_flags(sc, slow_ms, flap_secs)
            if flags is None:  # down: a port nothing listens on
                sink, otlp_port = None, proxy.free_port()
            else:
                sink, otlp_port = bench.start_sink(name=f"sink-{sc}", flags=flags)
            server, port = bench.start_server("proxy-otlp", mock_port, name=f"proxy-{sc}", otlp_port=otlp_port)
            runs[sc] = {"server": server, "port": port, "sink": sink, "sink_port": otlp_port, "calls": 0, "rounds": []}
        for sc in scenarios:
            run = runs[sc]
            proxy.check_arm(sc, run["port"])
            run["calls"] += 1
            for c in (32, 256):
                ok, bad, *_ = proxy.summarize(proxy.oha(oha_bin, run["port"], c, warm_secs, bench.load_cpus))
                run["calls"] += ok + bad
            run["rss_start"] = common.memory(run["server"].pid)
            run["rss_max"] = run["rss_start"].get("VmRSS", 0)

        foreign = proxy.Foreign(bench.procs)
        shares = []
        for r in range(rounds_n):
            if wait_idle:
                proxy.wait_quiet(bench.procs, wait_idle)
            round_foreign = proxy.Foreign(bench.procs)
            for sc in proxy.round_order(scenarios, r):
                run = runs[sc]
                got = {}
                for c in (1, 32, 256):
                    pid = run["server"].pid
                    cpu0 = proxy.cpu_seconds([pid])
                    res = proxy.oha(oha_bin, run["port"], c, lat_secs if c == 1 else load_secs, bench.load_cpus)
                    cpu1 = proxy.cpu_seconds([pid])
                    ok, bad, secs, p50, p99, errs = proxy.summarize(res)
                    slowest = (res.get("summary") or {}).get("slowest")
                    run["calls"] += ok + bad
                    got[c] = {
                        "rps": ok / secs if secs else 0.0,
                        "p50_ms": (p50 or 0) * 1e3,
                        "p99_ms": (p99 or 0) * 1e3,
                        "max_ms": (slowest or 0) * 1e3,
                        "errors": bad,
                        "error_kinds": errs,
                        "cpu_us": (cpu1 - cpu0) * 1e6 / max(1, ok + bad),
                    }
                    if bad:
                        log(f"round {r + 1} {sc} @{c}: {bad} errors {errs}")
                rss = common.memory(run["server"].pid).get("VmRSS", 0)
                run["rss_max"] = max(run["rss_max"], rss)
                got["rss"] = rss
                run["rounds"].append(got)
            _, share = round_foreign.share()
            shares.append(share)
            log(
                f"round {r + 1}/{rounds_n} (other processes: {share:.0%} of the machine): "
                + ", ".join(
                    f"{sc} {runs[sc]['rounds'][-1][32]['rps']:,.0f}/s p99 {runs[sc]['rounds'][-1][32]['p99_ms']:.1f} ms"
                    for sc in scenarios
                )
            )
        foreign_cpu, foreign_share = foreign.share()
        for sc in scenarios:
            runs[sc]["rss_end"] = common.memory(runs[sc]["server"].pid)
        log(f"settling {settle_secs:g} s before reading the export counters ...")
        time.sleep(settle_secs)
        for sc in scenarios:
            run = runs[sc]
            text, took = common.scrape(run["server"].bench_metrics)
            run["export"] = common.export_counters(text)
            run["scrape_ms"] = took * 1e3
            run["alive"] = run["server"].poll() is None
            if run["sink"] is not None:
                with urllib.request.urlopen(f"http://127.0.0.1:{run['sink_port']}/stats", timeout=5) as resp:
                    run["sink_stats"] = json.loads(resp.read())
        for sc in scenarios:
            # SIGTERM to exit: the proxy flushes spans and metrics on its way out.
            t0 = time.monotonic()
            bench.procs.stop(runs[sc]["server"], timeout=60.0)
            runs[sc]["stop_s"] = time.monotonic() - t0
        elapsed = time.monotonic() - started
        bench.procs.stop_all()

        def med(sc, c, key):
            return proxy.med([g[c][key] for g in runs[sc]["rounds"]])

        def ratio(sc, c, key):
            vals = []
            for g, h in zip(runs[sc]["rounds"], runs["healthy"]["rounds"]):
                if h[c][key]:
                    vals.append(g[c][key] / h[c][key])
            return proxy.med(vals)

        rows = []
        for sc in scenarios:
            run = runs[sc]
            cells = [
                sc,
                f"{med(sc, 1, 'p50_ms'):.2f} / {med(sc, 1, 'p99_ms'):.2f} / {max(g[1]['max_ms'] for g in run['rounds']):.0f}",
            ]
            for c in (32, 256):
                cells += [
                    f"{med(sc, c, 'p50_ms'):.2f} / {med(sc, c, 'p99_ms'):.2f} / {max(g[c]['max_ms'] for g in run['rounds']):.0f}",
                    f"{med(sc, c, 'rps'):,.0f}",
                    "—" if sc == "healthy" else
                    f"{ratio(sc, c, 'p50_ms'):.2f} / {ratio(sc, c, 'p99_ms'):.2f} / {ratio(sc, c, 'rps'):.2f}",
                ]
            errors = sum(g[c]["errors"] for g in run["rounds"] for c in (1, 32, 256))
            exp = run["export"]
            counted = sum(exp.values())
            cells += [
                str(errors),
                f"{med(sc, 32, 'cpu_us'):.0f} µs",
                f"{mib(run['rss_start'].get('VmRSS'))} / {mib(run['rss_max'])} / {mib(run['rss_end'].get('VmRSS'))}",
                f"{counted / max(1, run['calls']):.2f}",
                f"{exp.get('exported', 0):,} / {exp.get('failed', 0):,} / {exp.get('dropped', 0):,}",
                f"{run['scrape_ms']:.0f} ms",
                f"{run['stop_s']:.1f} s",
            ]
            rows.append(cells)
        head = [
            "endpoint",
            "@1 p50/p99/max ms",
            "@32 p50/p99/max ms",
            "@32 calls/s",
            "@32 vs healthy p50/p99/calls",
            "@256 p50/p99/max ms",
            "@256 calls/s",
            "@256 vs healthy p50/p99/calls",
            "errors",
            "CPU/call @32",
            "RSS MiB start / max / end",
            "spans/call",
            "spans exported / failed / dropped",
            "/metrics",
            "exit",
        ]
        print()
        print(header)
        print(
            f"{rounds_n} round(s) × ({lat_secs:g} s @1 + {load_secs:g} s @32 + {load_secs:g} s @256) per scenario, scenarios in a shuffled "
            f"order each round, one proxy process per scenario (OTLP/HTTP, always_on: 2 spans per call) in front of "
            f"one mock; {elapsed:.0f} s"
        )
        print("medians over rounds; 'vs healthy' = medians of per-round ratios to the healthy endpoint's proxy")
        print()
        print(common.table(head, rows))
        print()
        print(
            f"expected: errors 0; p50/p99/calls within noise of healthy (ratios ~1: drops cost less than exports); "
            f"RSS flat (start → end within a few MiB: the span queue holds at most 2,048 spans); spans/call 2.00 "
            f"(every span counted; less only while spans are still queued, as at a hung endpoint); failed + dropped > 0 for every faulty endpoint; slowest calls of ~1 s at 256 in "
            f"flight come from opening 256 connections at once (oha against the bare mock shows them too); the counters read after "
            f"{settle_secs:g} s idle (spans still queued are in none of the three, so spans/call counts only spans that reached an outcome)"
        )
        for sc in scenarios:
            s = runs[sc].get("sink_stats")
            if s:
                t = s["traces"]
                print(
                    f"sink {sc}: {t['requests']} trace exports accepted, {t['refused']} answered 503, "
                    f"{t['failed']} bodies cut, {s['dropped_connections']} connections dropped; "
                    f"{s['metrics']['requests']} metric exports accepted"
                )
            if not runs[sc]["alive"]:
                print(f"proxy {sc}: EXITED during the run (see its log)")
        print(
            f"other processes used {foreign_cpu:.1f} CPU-s during the rounds ({foreign_share:.0%} of the "
            f"{os.cpu_count()} CPUs; per round: " + ", ".join(f"{x:.0%}" for x in shares) + ")"
            + ("  <- skewed by other work" if max(shares + [0]) > 0.05 else "")
        )
        out = os.environ.get("BENCH_OUT")
        if out:
            with open(out, "w") as f:
                json.dump(
                    {sc: {k: v for k, v in run.items() if k not in ("server", "sink")} for sc, run in runs.items()},
                    f,
                    indent=1,
                )
            print(f"raw numbers: {out}")
    return session.exit_code


if __name__ == "__main__":
    sys.exit(main())
