#!/usr/bin/env bash
# The long fuzzing run: every parser target of tests/suite/fuzz.rs with many more inputs, in
# release mode. Usage: scripts/fuzz.sh [CASES per target, default 200000]. Prints the inputs and
# time per target; docs/fuzzing.md records the figures of the last run.
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${1:-200000}"
echo "== fuzzing, ${cases} inputs per target (release build)"
LLM_METER_FUZZ_CASES="$cases" cargo test --release -p llm-meter --all-features --test suite fuzz:: -- --nocapture --test-threads 2 2>&1 \
  | grep -E "^fuzz |^test result|panicked|FAILED"
