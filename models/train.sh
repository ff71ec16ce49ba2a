#!/usr/bin/env bash
# Trains the shipped heads (models/heads/<task>/) on the shared encoder from ../shared/data,
# exactly as their model cards say. Embeddings are cached in models/cache/embeddings, so a re-run
# with another head is quick. Usage: models/train.sh [DATA_DIR]  (default: ../shared/data)
# TRAIN_BIN overrides the binary (default: cargo run --release -p semroute-trainer --bin semroute-train --).
# ENCODER (default models/all-MiniLM-L6-v2), OUT (default models/heads) and TASKS (default: all of
# "domain complexity jailbreak robustness strong pii") train the same heads on another encoder:
# models/fast-tier.sh trains the fast tier's this way.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data}"
encoder="${ENCODER:-models/all-MiniLM-L6-v2}"
out="${OUT:-models/heads}"
tasks=" ${TASKS:-domain complexity jailbreak robustness strong pii} "
want() { [[ "$tasks" == *" $1 "* ]]; }
models/fetch.sh
if [ -n "${TRAIN_BIN:-}" ]; then
  bin=("$TRAIN_BIN")
else
  bin=(cargo run --release --locked -q -p semroute-trainer --bin semroute-train --)
fi

# Every head: a linear layer over [MiniLM embedding ; bag of token ids] (lexical features from the
# same tokenization: measured +6 points on domain over the embedding alone).
common=(--token-features --hidden 0 --lr 5e-3 --encoder "$encoder" --out "$out")
# Adjacent token-id pairs too (hashed): measured +0.9 points on domain, +1.7 recall on jailbreak,
# nothing on complexity (left without them). Every head using them must use the same count.
bigrams=(--bigram-buckets 16384)

want domain && "${bin[@]}" train --task domain --data "$data/mmlu-pro/questions.jsonl" \
  --text-field text --label-field category "${common[@]}" "${bigrams[@]}"
# Complexity: "does a large model pay", not "which benchmark": the shared exam/benchmark
# prompts plus the dev part of the traffic set (models/traffic/build.py: writing and editing,
# chat, intents, factoid, everyday help = simple; coding, maths, logic, arena-hard work =
# reasoning; its held-out part is never read here). Each source of a label weighs alike (sqrt
# inverse frequency within the label); probabilities calibrated by temperature on validation.
# Also the traffic set's pool (candidates its sampler left, never judged; more arena-hard
# work, code, maths and intents). An MLP (256 hidden) over the same inputs: +0.4 points on the
# held-out traffic decisions over the linear head.
traffic=models/traffic/data/traffic-dev.jsonl
pool=models/traffic/data/traffic-pool.jsonl
for f in "$traffic" "$pool"; do
  [ -f "$f" ] || { echo "missing $f: run python3 models/traffic/build.py first (see models/traffic/SOURCES.md)" >&2; exit 1; }
done
want complexity && "${bin[@]}" train --task complexity --data "$data/complexity/simple_prompts.jsonl" \
  --data "$data/complexity/reasoning_prompts.jsonl" --data "$traffic" --data "$pool" --text-field text \
  --label-field "label|expected" --label-map small=simple --group-field source --balance-groups \
  --calibrate --token-features --hidden 256 --dropout 0.2 --lr 1e-3 --encoder "$encoder" --out "$out"
# The guard: the attack data plus the traffic set's dev prompts as benign (everyday requests
# must not be refused), two perturbed copies of every training row (greetings, closers,
# unrelated sentences, case, spacing, look-alike letters) and one copy of every attack padded with
# benign training text to about a window's length, calibrated, long texts judged in windows of
# 256 tokens every 128 as well (padding an attack with an essay does not dilute it); the
# threshold is then set for <= 2 % FPR on the validation split (25 %) as served, windows included.
want jailbreak && "${bin[@]}" train --task jailbreak --data "$data/jailbreak/jailbreak_injection_prompts.jsonl" \
  --data "$traffic" --text-field text --label-field "label|expected" \
  --label-map small=benign,reasoning=benign --group-field "category|kind" --positive malicious \
  --max-fpr 0.02 --val-fraction 0.25 --test-fraction 0.15 --augment 2 --calibrate \
  --window 256,128,4 "${common[@]}" "${bigrams[@]}"
want robustness && "${bin[@]}" guard-robustness --data "$data/jailbreak/jailbreak_injection_prompts.jsonl" \
  --data "$traffic" --text-field text --label-field "label|expected" \
  --label-map small=benign,reasoning=benign --rethreshold 0.02 --sample 200 --adaptive-limit 60 --budget 40 \
  --encoder "$encoder" --heads "$out" --json "$out/jailbreak/robustness.json"  # ~1 h on 2 cores: long attacks, windows
# "Strong model needed" for a weak/strong pair (RouteLLM's win label: the weak model wrong and the
# strong one right), from MMLU-Pro's per-model correctness; the card reports the quality curve
# (PGR, APGR, CPT) on the test split for this pair and a second one, and the threshold for each
# target share of strong-model calls.
m=/correct/mixtral-8x7b-instruct g=/correct/gpt-4o
want strong && "${bin[@]}" train --task strong --data "$data/mmlu-pro/questions.jsonl" --text-field text \
  --label-field "$m+$g" --label-map "false+true=strong,true+true=weak,true+false=weak,false+false=weak" \
  --positive strong --max-fpr 0.5 --quality-pair "$m,$g" \
  --quality-pair /correct/llama-3.1-8b-instruct,/correct/llama-3.1-70b-instruct "${common[@]}" \
  "${bigrams[@]}"
# PII: a token-classification head (BIO per word over each token's hidden state, two neighbours
# on each side and spelling features), entity-level F1 on the test split; the two address
# schemas of the data are folded (STREET_ADDRESS -> ADDRESS, GPE -> LOCATION). classifier-svc
# adds validated patterns (e-mail, Luhn cards, SSN, IP, phone) to its entities.
want pii && "${bin[@]}" train --task pii --data "$data/pii/pii_examples.jsonl" --text-field text \
  --spans-field spans --label-map STREET_ADDRESS=ADDRESS,GPE=LOCATION --context 2 --hidden 512 \
  --dropout 0.3 --lr 5e-4 --batch-size 256 --epochs 60 --patience 8 --encoder "$encoder" --out "$out"
exit 0
