#!/usr/bin/env bash
# The cascade's fast tier, made on this machine from the shipped encoder (no download), as the
# cards in models/static-minilm and models/heads-static say:
#   1. semroute-train distill: static token embeddings from all-MiniLM-L6-v2 (model2vec
#      method), token weights counted on the training prompts (never the traffic set's
#      held-out part);
#   2. models/train.sh with ENCODER/OUT: the same heads, commands and data as the encoder's
#      (domain, complexity, jailbreak);
#   3. semroute-train cascade: per task, the threshold above which the fast tier answers alone,
#      chosen on the heads' validation split for at most --max-loss accuracy against the encoder.
# Usage: models/fast-tier.sh [DATA_DIR]  (default: ../shared/data); ~10 min on 2 cores.
# TRAIN_BIN overrides the binary as in models/train.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data}"
models/fetch.sh
if [ -n "${TRAIN_BIN:-}" ]; then
  bin=("$TRAIN_BIN")
else
  bin=(cargo run --release --locked -q -p semroute-trainer --bin semroute-train --)
fi
traffic=models/traffic/data/traffic-dev.jsonl
pool=models/traffic/data/traffic-pool.jsonl
for f in "$traffic" "$pool"; do
  [ -f "$f" ] || { echo "missing $f: run python3 models/traffic/build.py first (see models/traffic/SOURCES.md)" >&2; exit 1; }
done
"${bin[@]}" distill --out models/static-minilm --dims 256 \
  --corpus "$data/complexity/simple_prompts.jsonl" --corpus "$data/complexity/reasoning_prompts.jsonl" \
  --corpus "$data/mmlu-pro/questions.jsonl" --corpus "$data/jailbreak/jailbreak_injection_prompts.jsonl" \
  --corpus "$traffic" --corpus "$pool"
ENCODER=models/static-minilm OUT=models/heads-static TASKS="domain complexity jailbreak" \
  models/train.sh "$data"
# The same data and split arguments as each head's training (models/train.sh). Accuracy the
# cascade may lose on validation, per task: the domain (the category: system prompt, candidates)
# 1.5 points, complexity (the model) 0.2, the guard none. Held-out decisions for this and two
# other settings: models/traffic/RESULTS.md.
"${bin[@]}" cascade --task domain --data "$data/mmlu-pro/questions.jsonl" --text-field text \
  --label-field category --max-loss 0.015
"${bin[@]}" cascade --task complexity --data "$data/complexity/simple_prompts.jsonl" \
  --data "$data/complexity/reasoning_prompts.jsonl" --data "$traffic" --data "$pool" --text-field text \
  --label-field "label|expected" --label-map small=simple --max-loss 0.002
"${bin[@]}" cascade --task jailbreak --data "$data/jailbreak/jailbreak_injection_prompts.jsonl" \
  --data "$traffic" --text-field text --label-field "label|expected" \
  --label-map small=benign,reasoning=benign --val-fraction 0.25 --test-fraction 0.15 --max-loss 0  # the guard: no loss
