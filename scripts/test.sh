#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test (unit, integration, doc, examples).
# This is what CI runs (.ci/run); run it from anywhere in the repo.
set -euo pipefail
cd "$(dirname "$0")/.."

# The OpenAI Python SDK and Pay-i's `payi` (its XproxyResult model) for the proxy's end-to-end test.
if [ -z "${LLM_METER_PYTHON:-}" ] && ! .venv/bin/python -c "import openai, payi" >/dev/null 2>&1; then
  echo "== making .venv with the OpenAI Python SDK and payi"
  python3 -m venv .venv && .venv/bin/pip install -q --disable-pip-version-check "openai>=1.40" payi ||
    echo "could not install the OpenAI Python SDK; tests/openai_sdk.rs will fail and say how to install it"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (all targets, all features, warnings are errors)"
cargo clippy --all-targets --all-features -- -D warnings

echo "== cargo test"
cargo test --all-features --all-targets
cargo test --all-features --doc
