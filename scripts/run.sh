#!/usr/bin/env bash
# Starts the system on embedded defaults: the classifier with the default encoder (all-MiniLM-L6-v2)
# and the heads in models/heads, gRPC on :50051, HTTP (/metrics, /healthz) on :9091.
# Extra arguments go to `classifier-svc serve` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
models/fetch.sh
exec cargo run --release --locked -p classifier-svc -- serve "$@"
