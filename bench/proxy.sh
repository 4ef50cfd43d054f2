#!/usr/bin/env bash
# The proxy benchmark against its floor (DESIGN §8): llm-meter's proxy vs a bare hyper relay
# and nginx, each server in its own process on 127.0.0.1, load from oha in its own process.
#
#   bash bench/proxy.sh            # full run (~8 minutes on a 2-core VM)
#   bash bench/proxy.sh --quick    # smoke check: 1 round, short runs (~1 minute)
#
# Installs what is missing: nginx (apt-get) and oha (`cargo install oha --locked`, started first
# because it takes a while to build), then builds the release binaries and runs bench/proxy.py.
# Knobs are environment variables, listed at the top of bench/proxy.py (BENCH_ROUNDS,
# BENCH_LATENCY_SECS, BENCH_LOAD_SECS, BENCH_STREAMS, BENCH_SERVER_CPUS, ...). BENCH_BIN_DIR
# points at already built binaries (llm-meter, llm-meter-bench-relay,
# llm-meter-bench-otlp-sink) and skips the build.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

say() { printf '%s\n' "$*" >&2; }

as_root() {
    if [[ "$(id -u)" == 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        say "need root (or sudo) to run: $*"
        return 1
    fi
}

oha_pid=""
cleanup() {
    if [[ -n "$oha_pid" ]]; then
        kill "$oha_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT INT TERM

# 1. oha: start its build first, in the background (a temporary target dir of cargo's own).
find_oha() {
    if command -v oha >/dev/null; then
        command -v oha
    elif [[ -x "$HOME/.cargo/bin/oha" ]]; then
        printf '%s\n' "$HOME/.cargo/bin/oha"
    fi
}
oha_bin="$(find_oha)"
oha_log=""
if [[ -z "$oha_bin" ]]; then
    oha_log="$(mktemp -t oha-install.XXXXXX.log)"
    say "installing oha (cargo install oha --locked, log: $oha_log) ..."
    env -u CARGO_TARGET_DIR cargo install oha --locked >"$oha_log" 2>&1 &
    oha_pid=$!
fi

# 2. nginx, from the distribution.
nginx_bin="$(command -v nginx || true)"
if [[ -z "$nginx_bin" && -x /usr/sbin/nginx ]]; then
    nginx_bin=/usr/sbin/nginx
fi
if [[ -z "$nginx_bin" ]]; then
    say "installing nginx (apt-get) ..."
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
    nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
fi

# 3. The binaries under test, release build.
if [[ -n "${BENCH_BIN_DIR:-}" ]]; then
    bin_dir="$BENCH_BIN_DIR"
else
    say "building release binaries (llm-meter, llm-meter-bench-relay) ..."
    cargo build --release -p llm-meter-cli -p llm-meter-bench-relay
    target_dir="$(cargo metadata --format-version 1 --no-deps \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
    bin_dir="$target_dir/release"
fi
for b in llm-meter llm-meter-bench-relay llm-meter-bench-otlp-sink; do
    if [[ ! -x "$bin_dir/$b" ]]; then
        say "missing $bin_dir/$b"
        exit 1
    fi
done

# 4. Wait for oha if it was building.
if [[ -n "$oha_pid" ]]; then
    say "waiting for the oha build ..."
    if ! wait "$oha_pid"; then
        oha_pid=""
        say "cargo install oha failed; the end of its log:"
        tail -n 30 "$oha_log" >&2
        exit 1
    fi
    oha_pid=""
    oha_bin="$(find_oha)"
    if [[ -z "$oha_bin" ]]; then
        say "oha was installed but is not on PATH nor in ~/.cargo/bin"
        exit 1
    fi
fi

trap - EXIT INT TERM
exec python3 "$here/proxy.py" --bin-dir "$bin_dir" --oha "$oha_bin" --nginx "$nginx_bin" "$@"
