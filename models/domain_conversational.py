#!/usr/bin/env python3
"""How the domain head (trained on exam questions) behaves on prompts as users send them.

The complexity data holds conversational prompts with a finer `category` (math word problems,
competition math, coding, factoid questions, intent requests, chit-chat...). Math and coding have a
right domain (math, computer science); science multiple-choice has several acceptable ones; the
rest have none among the 14, where the right answer is `other` or a confidence under the router's
`confidence_threshold` (a category rule is then not applied). Reads the per-row predictions of
  semroute-train eval --task domain --data ../shared/data/complexity/simple_prompts.jsonl \
    --data ../shared/data/complexity/reasoning_prompts.jsonl --label-field category \
    --predictions /tmp/domain_conv.jsonl
and prints one table row per kind of prompt. Results are in models/ROUTING.md.
"""

import argparse
import collections
import json

RIGHT = {
    "competition_math": {"math"}, "math_word_problem": {"math"}, "mtbench_math": {"math"},
    "coding": {"computer science"}, "mtbench_coding": {"computer science"},
    "science_mcq": {"physics", "chemistry", "biology", "health", "engineering", "other"},
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("predictions")
    ap.add_argument("--threshold", type=float, default=0.5,
                    help="the router's routing.confidence_threshold")
    a = ap.parse_args()
    by = collections.defaultdict(list)
    for line in open(a.predictions):
        r = json.loads(line)
        top = max(r["probabilities"].items(), key=lambda kv: kv[1])
        by[r["label"]].append(top)
    print(f"| prompt kind | n | right domain | confident (>= {a.threshold}) and wrong | "
          "most predicted (share) |")
    print("|---|---|---|---|---|")
    for kind in sorted(by, key=lambda k: (k not in RIGHT, k)):
        tops = by[kind]
        right = RIGHT.get(kind, {"other"})
        ok = sum(lab in right for lab, _ in tops) / len(tops)
        wrong = sum(lab not in right and p >= a.threshold for lab, p in tops) / len(tops)
        common = collections.Counter(lab for lab, _ in tops).most_common(2)
        most = ", ".join(f"{lab} {n / len(tops):.0%}" for lab, n in common)
        print(f"| {kind} | {len(tops)} | {ok:.1%} | {wrong:.1%} | {most} |")


if __name__ == "__main__":
    main()
