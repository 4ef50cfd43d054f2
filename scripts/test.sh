#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test (unit, integration, doc, examples).
# This is what CI runs (.ci/run); run it from anywhere in the repo.
set -euo pipefail
cd "$(dirname "$0")/.."

# The OpenAI and Anthropic Python SDKs and Pay-i's `payi` (its XproxyResult model) for the proxy's
# end-to-end tests. PyYAML for the static checks of the dashboards, rules and docker-compose stack.
if [ -z "${LLM_METER_PYTHON:-}" ] && ! .venv/bin/python -c "import openai, anthropic, payi, yaml" >/dev/null 2>&1; then
  echo "== making .venv with the OpenAI and Anthropic Python SDKs, payi and PyYAML"
  python3 -m venv .venv && .venv/bin/pip install -q --disable-pip-version-check "openai>=1.40" anthropic payi pyyaml ||
    echo "could not install the Python SDKs; tests/suite/openai_sdk.rs and provider_sdks.rs will fail and say how to install them"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (all targets, all features, warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

echo "== API docs build without broken links"
RUSTDOCFLAGS="-D warnings" cargo doc -q -p llm-meter -p llm-meter-proxy -p llm-meter-mock --all-features --no-deps

echo "== library layers (no import from a layer above, no two modules importing each other)"
python3 scripts/check-layers.py

echo "== cargo deny: licenses, bans (duplicate versions), sources; advisories when the database can be fetched"
deny_version=$(sed -n 's/^version=//p' scripts/install-cargo-deny.sh)
if ! cargo deny --version >/dev/null 2>&1; then
  echo "cargo-deny is not installed: run scripts/install-cargo-deny.sh" \
    "(cargo install cargo-deny --version $deny_version --locked); .ci/run does" >&2
  exit 1
fi
if [ "$(cargo deny --version)" != "cargo-deny $deny_version" ]; then
  echo "   note: $(cargo deny --version) installed; the suite pins $deny_version (scripts/install-cargo-deny.sh)"
fi
cargo deny --workspace check licenses bans sources
# The advisories check needs the RustSec database, a git clone from GitHub (into
# $CARGO_HOME/advisory-dbs). Where it cannot be fetched, a copy fetched before is used and its
# date said; with no copy the check does not run, and says so (LLM_METER_REQUIRE_ADVISORIES=1
# makes that an error).
if fetch_error=$(timeout 300 cargo deny fetch db 2>&1); then
  cargo deny --workspace check advisories
else
  fetch_error=$(printf '%s\n' "$fetch_error" | grep -v '^[[:space:]]*$' | tail -n 1 || true)
  db_copy=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/advisory-dbs/advisory-db-*/ 2>/dev/null | head -n 1 || true)
  if [ -n "$db_copy" ] && db_date=$(git -C "$db_copy" show -s --format=%cs HEAD 2>/dev/null); then
    echo "   advisories: the database could not be updated ($fetch_error);"
    echo "   checking against the copy of $db_date in $db_copy"
    cargo deny --workspace --offline check advisories
  else
    echo "   advisories: NOT CHECKED: the RustSec advisory database could not be fetched ($fetch_error)"
    if [ -n "${LLM_METER_REQUIRE_ADVISORIES:-}" ]; then
      echo "LLM_METER_REQUIRE_ADVISORIES is set: failing" >&2
      exit 1
    fi
  fi
fi

echo "== the library with each feature on its own (and with none)"
for features in "" rustls native-tls prometheus otlp-http otlp-grpc log async-openai reqwest-middleware redis; do
  echo "   features: ${features:-(none)}"
  cargo clippy -q -p llm-meter --lib --no-default-features ${features:+--features "$features"} -- -D warnings
done

echo "== dashboards, alert rules (promtool check + test rules) and the docker-compose stack, statically"
python=${LLM_METER_PYTHON:-.venv/bin/python}
"$python" tests/python/check_dashboards.py
"$python" tests/python/check_stack.py

echo "== cargo test"
cargo test --workspace --all-features --all-targets
cargo test --workspace --all-features --doc
