#!/usr/bin/env bash
# Trains the shipped heads (models/heads/<task>/) on the shared encoder from ../shared/data,
# exactly as their model cards say. Embeddings are cached in models/cache/embeddings, so a re-run
# with another head is quick. Usage: models/train.sh [DATA_DIR]  (default: ../shared/data)
# CLASSIFIER_BIN overrides the binary (default: cargo run --release -p classifier-svc --).
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data}"
models/fetch.sh
if [ -n "${CLASSIFIER_BIN:-}" ]; then
  bin=("$CLASSIFIER_BIN")
else
  bin=(cargo run --release --locked -q -p classifier-svc --)
fi

# Every head: a linear layer over [MiniLM embedding ; bag of token ids] (lexical features from the
# same tokenization: measured +6 points on domain over the embedding alone).
common=(--token-features --hidden 0 --lr 5e-3 --out models/heads)

"${bin[@]}" train --task domain --data "$data/mmlu-pro/questions.jsonl" \
  --text-field text --label-field category "${common[@]}"
"${bin[@]}" train --task complexity --data "$data/complexity/simple_prompts.jsonl" \
  --data "$data/complexity/reasoning_prompts.jsonl" --text-field text --label-field label \
  "${common[@]}"
"${bin[@]}" train --task jailbreak --data "$data/jailbreak/jailbreak_injection_prompts.jsonl" \
  --text-field text --label-field label --group-field category --positive malicious --max-fpr 0.03 \
  "${common[@]}"
