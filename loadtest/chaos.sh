#!/usr/bin/env bash
# The chaos run in one command: builds the workspace binaries (debug, or release with --release
# as the first argument), installs the encoder if needed, and runs loadtest's `chaos` binary with
# the remaining arguments (see `chaos --help`; the README's "Chaos run"). A full run writes
# loadtest/CHAOS.md; exit status 1 when a request was lost or the logs were too loud.
# Usage: loadtest/chaos.sh [--release] [--short] [--rate N] [--report PATH] ...
set -euo pipefail
cd "$(dirname "$0")/.."
command="loadtest/chaos.sh $*"
profile=debug
build=()
if [[ "${1:-}" == "--release" ]]; then
  profile=release
  build=(--release)
  shift
fi
models/fetch.sh >/dev/null
cargo build --locked -q "${build[@]}" --workspace --bins
CHAOS_COMMAND="$command" CHAOS_BIN_DIR="target/$profile" exec "target/$profile/chaos" "$@"
