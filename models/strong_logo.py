#!/usr/bin/env python3
"""Leave-one-group-out validation of "strong model needed" signals on MMLU-Pro.

Does a weak/strong routing score learned from MMLU-Pro rank questions of a kind it has never
seen? Each candidate signal is trained on all groups but one and its APGR (mixtral-8x7b-instruct
-> gpt-4o, random = 0.5) measured on the held-out group, for the four source families
(original MMLU, stemez, theoremQA, scibench) and the 14 categories in turn; plus a random 15 %
split (in distribution). The last line is a ceiling, not a candidate: the share of the OTHER six
models that got each question wrong, i.e. a perfect estimate of the question's difficulty.

Reads ../shared/data/mmlu-pro/questions.jsonl and the MiniLM embeddings the trainer caches for
it (in file order): run
  semroute-train train --task domain --data ../shared/data/mmlu-pro/questions.jsonl \
    --label-field category --hidden 0 --epochs 1 --out /tmp/x
which prints "embeddings: 10032 texts ... cache PATH", then
  semroute-train eval --task complexity --data ../shared/data/mmlu-pro/questions.jsonl \
    --label-field category --predictions /tmp/complexity_mmlu.jsonl
  python3 models/strong_logo.py --embeddings PATH --complexity-predictions /tmp/complexity_mmlu.jsonl
Needs numpy, scipy, scikit-learn, safetensors (pip). Results are in models/ROUTING.md.
"""

import argparse
import json
import re

import numpy as np
from safetensors.numpy import load_file
from scipy.sparse import csr_matrix, hstack
from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler

MODELS = ["gpt-4o", "llama-3.1-70b-instruct", "deepseek", "qwen1.5-72b-chat",
          "llama-3.1-8b-instruct", "mixtral-8x7b-instruct", "mistral-7b-instruct-v0.2",
          "qwen1.5-7b-chat"]
FAMILIES = ["ori_mmlu", "stemez", "theoremQA", "scibench"]


def apgr(score, weak, strong):
    """Mean performance gap recovered over every share of strong calls (RouteLLM's APGR)."""
    order = np.argsort(-score, kind="stable")
    qw, qs = weak.sum(), strong.sum()
    q = qw + np.cumsum(strong[order] - weak[order])
    pgr = np.concatenate([[0.0], (q - qw) / max(qs - qw, 1e-9)])
    return ((pgr[:-1] + pgr[1:]) / 2).mean()


def hand_features(texts):
    """Surface features that mean the same in any benchmark: length, numbers, symbols, asks."""
    asks = re.compile(r"\b(calculate|compute|find|determine|what is the value|how many|how much)\b",
                      re.I)
    units = re.compile(r"\b(m|kg|s|J|N|W|K|mol|Hz|V|A|eV|cm|mm|nm|atm|Pa)\b")
    out = []
    for t in texts:
        n, digits, words = len(t), sum(c.isdigit() for c in t), t.split()
        out.append([
            np.log1p(n), digits / max(n, 1), np.log1p(digits),
            np.log1p(len(re.findall(r"\d+\.?\d*", t))),
            len(re.findall(r"[=+\-*/^]", t)) / max(n, 1), float(bool(asks.search(t))),
            float("?" in t), np.log1p(len(re.findall(r"[.!?]\s", t))), np.log1p(len(words)),
            np.mean([len(w) for w in words]) if words else 0.0, float(bool(units.search(t))),
            float("_" in t),
        ])
    return np.array(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/mmlu-pro/questions.jsonl")
    ap.add_argument("--embeddings", required=True)
    ap.add_argument("--complexity-predictions",
                    help="`semroute-train eval --task complexity --predictions` on the same file: "
                    "the complexity head's P(reasoning), trained on other data, as a signal")
    ap.add_argument("--weak", default="mixtral-8x7b-instruct")
    ap.add_argument("--strong", default="gpt-4o")
    a = ap.parse_args()

    rows = [json.loads(line) for line in open(a.data)]
    emb = load_file(a.embeddings)["embeddings"]
    assert emb.shape[0] == len(rows), "embeddings are not of this file (in file order)"
    texts = [r["text"] for r in rows]
    correct = np.array([[np.nan if r["correct"].get(m) is None else float(r["correct"][m])
                         for m in MODELS] for r in rows])
    family = np.array([r["src"].split("-")[0] for r in rows])
    category = np.array([r["category"] for r in rows])
    w, s = MODELS.index(a.weak), MODELS.index(a.strong)
    ok = ~np.isnan(correct[:, w]) & ~np.isnan(correct[:, s])
    win = ((correct[:, w] == 0) & (correct[:, s] == 1)).astype(float)
    difficulty = np.nanmean(1 - correct, axis=1)
    hashed = HashingVectorizer(n_features=2**16, ngram_range=(1, 2), alternate_sign=False,
                               norm=None).transform(texts)
    tokens = hstack([csr_matrix(emb), TfidfTransformer(sublinear_tf=True).fit_transform(hashed)])
    tokens = tokens.tocsr()
    hand = hand_features(texts)

    def logistic(x, y, tr, te, c=1.0, balanced=True):
        m = LogisticRegression(C=c, max_iter=3000, class_weight="balanced" if balanced else None)
        m.fit(x[tr], y[tr])
        return m.predict_proba(x[te])[:, 1]

    def knn(y, tr, te, k=50):
        sims = emb[te] @ emb[tr].T
        return y[tr][np.argpartition(-sims, k, axis=1)[:, :k]].mean(1)

    def p_right(x, j, tr, te):
        tr = tr[~np.isnan(correct[tr, j])]
        return logistic(x, correct[:, j], tr, te, balanced=False)

    def scaled(x, tr):
        return StandardScaler().fit(x[tr]).transform(x)

    signals = {
        "prompt length": lambda tr, te: np.array([len(texts[i]) for i in te], float),
        "surface features (12), logistic on the win label": lambda tr, te: logistic(
            scaled(hand, tr), win, tr[ok[tr]], te),
        "embedding, logistic on the win label": lambda tr, te: logistic(
            emb, win, tr[ok[tr]], te),
        "embedding + word/bigram tf-idf, win label (~ the shipped head)": lambda tr, te: logistic(
            tokens, win, tr[ok[tr]], te),
        "P(strong right) - P(weak right), two heads": lambda tr, te: p_right(
            emb, s, tr, te) - p_right(emb, w, tr, te),
        "difficulty (share of 8 models wrong), ridge": lambda tr, te: Ridge(alpha=1.0).fit(
            emb[tr], difficulty[tr]).predict(emb[te]),
        "k-nearest neighbours (50) of the win label": lambda tr, te: knn(win, tr, te),
    }
    if a.complexity_predictions:
        reasoning = np.array([json.loads(line)["probabilities"]["reasoning"]
                              for line in open(a.complexity_predictions)])
        assert len(reasoning) == len(rows), "predictions are not of this file"
        signals["complexity head P(reasoning) (never saw MMLU-Pro; nothing fitted here)"] = (
            lambda tr, te: reasoning[te])
    others = [j for j in range(len(MODELS)) if j not in (w, s)]
    ceiling = np.nanmean(1 - correct[:, others], axis=1)
    perm = np.random.default_rng(0).permutation(len(rows))
    splits = [("in distribution (random 15 %)", perm[1500:], perm[:1500])]
    splits += [(f"source {g}", np.where(family != g)[0], np.where(family == g)[0])
               for g in FAMILIES]
    splits += [(f"category {g}", np.where(category != g)[0], np.where(category == g)[0])
               for g in sorted(set(category))]

    def judge(score, te):
        m = ok[te]
        return apgr(score[m], correct[te[m], w], correct[te[m], s])

    print(f"APGR {a.weak} -> {a.strong} (random 0.5)\n")
    print("| signal | in distribution | held-out sources (mean; ori_mmlu, stemez, theoremQA, "
          "scibench) | held-out categories (mean, min) |")
    print("|---|---|---|---|")
    for name, fit in list(signals.items()) + [("ceiling: other 6 models' wrong share", None)]:
        res = [judge(ceiling[te] if fit is None else fit(tr, te), te) for _, tr, te in splits]
        src, cat = res[1:5], res[5:]
        print(f"| {name} | {res[0]:.3f} | {np.mean(src):.3f} ({', '.join(f'{x:.3f}' for x in src)})"
              f" | {np.mean(cat):.3f}, {np.min(cat):.3f} |", flush=True)


if __name__ == "__main__":
    main()
