#!/usr/bin/env bash
# Instructions per proxied call, counted by callgrind: the server alone runs under valgrind,
# the mock, the OTLP sink and the load (a Python http.client loop, 4 threads) run outside it,
# so only the server's own work is counted. Counts are stable to about 0.6 k between runs,
# unlike times on a shared VM (bench/RESULTS.md).
#
#   bash bench/instructions.sh [ARM ...]     ARM: relay, proxy-off, proxy-metrics, proxy-otlp
#
# BENCH_BIN_DIR: where the release binaries are (default: built here). BENCH_CALLS (2000) calls
# are counted after BENCH_WARM (200); the callgrind output stays in BENCH_OUT (a temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v valgrind >/dev/null || { echo "needs valgrind: apt-get install -y valgrind" >&2; exit 1; }
command -v callgrind_control >/dev/null || { echo "needs callgrind_control (valgrind package)" >&2; exit 1; }
if [[ -n "${BENCH_BIN_DIR:-}" ]]; then
    bin="$BENCH_BIN_DIR"
else
    cargo build --release -q -p llm-meter-cli -p llm-meter-bench-relay
    bin=target/release
fi
arms=("$@")
[[ ${#arms[@]} -gt 0 ]] || arms=(relay proxy-off proxy-metrics proxy-otlp)
calls="${BENCH_CALLS:-2000}"
warm="${BENCH_WARM:-200}"
out="${BENCH_OUT:-$(mktemp -d)}"
mkdir -p "$out"
mock_port=18180 sink_port=18181 server_port=18182 metrics_port=18183

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_port() {
    for _ in $(seq 1 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        [[ -z "${2:-}" ]] || kill -0 "$2" 2>/dev/null || { echo "the server exited (see $3)" >&2; exit 1; }
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    exit 1
}

"$bin/llm-meter" mock --listen "127.0.0.1:$mock_port" \
    --limit-requests 1000000000000 --limit-tokens 1000000000000000 >/dev/null 2>&1 &
pids+=($!)
"$bin/llm-meter-bench-otlp-sink" --listen "127.0.0.1:$sink_port" --threads 1 >/dev/null 2>&1 &
pids+=($!)
wait_port "$mock_port"
wait_port "$sink_port"

# `calls` POSTs of the benchmark's chat request from 4 threads, each on its own connection.
load() {
    python3 - "$server_port" "$1" <<'EOF'
import http.client, json, sys, threading
port, n = int(sys.argv[1]), int(sys.argv[2])
# bench/proxy.py's request.
body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello, benchmark"}],
                   "max_completion_tokens": 32}, separators=(",", ":"))
def run(k):
    c = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(k):
        c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json", "authorization": "Bearer sk-test"})
        r = c.getresponse()
        r.read()
        assert r.status == 200, r.status
threads = [threading.Thread(target=run, args=(n // 4,)) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
EOF
}

printf '%-14s %12s %14s\n' arm "calls" "instr/call"
for arm in "${arms[@]}"; do
    env=(env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_TRACES_SAMPLER)
    case "$arm" in
        relay) cmd=("$bin/llm-meter-bench-relay" --listen "127.0.0.1:$server_port" --upstream "http://127.0.0.1:$mock_port") ;;
        proxy-off) cmd=("$bin/llm-meter" proxy --listen "127.0.0.1:$server_port" --upstream "http://127.0.0.1:$mock_port/v1" --telemetry off --metrics-listen "127.0.0.1:$metrics_port") ;;
        proxy-metrics) cmd=("$bin/llm-meter" proxy --listen "127.0.0.1:$server_port" --upstream "http://127.0.0.1:$mock_port/v1" --metrics-listen "127.0.0.1:$metrics_port") ;;
        proxy-otlp)
            cmd=("$bin/llm-meter" proxy --listen "127.0.0.1:$server_port" --upstream "http://127.0.0.1:$mock_port/v1" --metrics-listen "127.0.0.1:$metrics_port")
            env+=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$sink_port" OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf OTEL_TRACES_SAMPLER=always_on) ;;
        *) echo "unknown arm: $arm" >&2; exit 2 ;;
    esac
    file="$out/callgrind.$arm"
    "${env[@]}" valgrind --tool=callgrind --callgrind-out-file="$file" "${cmd[@]}" >/dev/null 2>"$out/$arm.log" &
    vg=$!
    pids+=($vg)
    wait_port "$server_port" "$vg" "$out/$arm.log"
    load "$warm"
    callgrind_control -z "$vg" >/dev/null 2>&1
    load "$calls"
    sleep 1 # let the batch exporter send what the calls ended
    callgrind_control -d "$vg" >/dev/null 2>&1
    kill "$vg"
    wait "$vg" 2>/dev/null || true
    dump=$(ls -t "$file".* 2>/dev/null | head -1)
    total=$(grep -m1 '^summary:' "$dump" | awk '{print $2}')
    [[ -n "$total" ]] || { echo "no callgrind dump for $arm (see $out/$arm.log)" >&2; exit 1; }
    printf '%-14s %12s %13.1fk\n' "$arm" "$calls" "$(awk "BEGIN { print $total / $calls / 1000 }")"
    sleep 0.5
done
echo "callgrind output: $out (callgrind_annotate --inclusive=yes FILE)"
