#!/usr/bin/env bash
# Installs the cargo-deny that scripts/test.sh runs (from crates.io, with its locked
# dependencies), unless that version is already installed. Its MSRV is Rust 1.88.
set -euo pipefail

version=0.20.2

if [ "$(cargo deny --version 2>/dev/null)" = "cargo-deny $version" ]; then
  exit 0
fi
echo "== installing cargo-deny $version"
cargo install cargo-deny --version "$version" --locked
