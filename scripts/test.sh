#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test (unit, integration, doc, examples).
# This is what CI runs (.ci/run); run it from anywhere in the repo.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (all targets, all features, warnings are errors)"
cargo clippy --all-targets --all-features -- -D warnings

echo "== cargo test"
cargo test --all-features --all-targets
cargo test --all-features --doc
