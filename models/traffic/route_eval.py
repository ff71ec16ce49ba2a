#!/usr/bin/env python3
"""Routing decisions on traffic-like prompts, judged the way /v1/route decides.

Why it exists: route-bench judges the policy on exam questions with per-model correctness; real
traffic is chat, writing and editing, intents, coding requests, hard work phrased naturally. This
script starts the real stack (redis-server, classifier-svc with the heads to judge, router-svc
with the router config to judge, a simulated backend), sends every prompt of a split of the
traffic set (`models/traffic/build.py`) to `POST /v1/route` as a one-turn chat, and compares the
router's decision with the row's expected tier:

  small      the cheapest model, reasoning off
  reasoning  any other decision (the large model, or reasoning switched on)

A request the guard blocks counts as wrong (a benign request refused). The classifier deadline is
raised (`--timeout-ms`) so that every request is classified: this judges the decisions, not the
load (loadtest/DECISION.md does that).

  python3 models/traffic/route_eval.py                     # held-out split, shipped heads
  python3 models/traffic/route_eval.py --split dev --heads /tmp/heads --config my-router.yaml \
      --json /tmp/r.json --out /tmp/r.md

Cost: each decision is priced with the router config's prices, at input tokens = characters / 4
and an assumed answer of --answer-tokens (x --reasoning-factor with reasoning on); reported per
1,000 requests beside "everything on the large model with reasoning" and "the expected tier".
"""

import argparse
import collections
import concurrent.futures
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "loadtest"))
import bench  # noqa: E402  (the stack helpers: processes, ports, readiness)

KIND_ORDER = ["chitchat", "intent", "everyday", "factoid", "writing", "math", "logic", "coding",
              "hard", "multilingual", "long"]


def prepare(no_build):
    """From the repository root, with the release binaries of the stack built (unless asked not)."""
    os.chdir(ROOT)
    if not no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "-q", "-p", "classifier-svc",
                        "-p", "router-svc", "-p", "loadtest"], check=True)


def answered_by_tier(http):
    """classifier_answers_total by tier and reason (the cascade: who answered the texts)."""
    out = {}
    with urllib.request.urlopen(f"{http}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            m = re.match(r'classifier_answers_total\{(.*)\} (\S+)', line)
            if m:
                labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
                key = labels.get("tier", "") + (f":{labels['reason']}" if labels.get("reason") else "")
                out[key] = out.get(key, 0) + int(float(m.group(2)))
    return out


def load_rows(path, split):
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                if split == "all" or r["split"] == split:
                    rows.append(r)
    if not rows:
        sys.exit(f"no rows of split {split!r} in {path}")
    return rows


def router_config(src, timeout_ms, work, jailbreak_threshold=None):
    """`src` with the classifier deadline raised so that every request is classified (and,
    for candidate heads, the guard's threshold taken from their head.json)."""
    with open(src) as f:
        text = f.read()
    text, n = re.subn(r"(?m)^(  timeout_ms:) \d+", rf"\1 {timeout_ms}", text, count=1)
    if n != 1:
        sys.exit(f"{src}: classifier.timeout_ms not found")
    if jailbreak_threshold is not None:
        text, n = re.subn(r"(?m)^(    threshold:) [\d.]+", rf"\g<1> {jailbreak_threshold}", text, count=1)
        if n != 1:
            sys.exit(f"{src}: routing.jailbreak.threshold not found")
    path = os.path.join(work, "router-eval.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


def prices(config_path):
    """Model -> (input, output) USD per million tokens, read from the YAML without a parser:
    `- name: X` then `pricing: {input_per_million: a, output_per_million: b}`."""
    out, name = {}, None
    with open(config_path) as f:
        for line in f:
            m = re.match(r"\s*- name: ([^\s#]+)", line)
            if m:
                name = m.group(1)
            m = re.search(r"input_per_million: ([\d.]+), output_per_million: ([\d.]+)", line)
            if m and name:
                out[name] = (float(m.group(1)), float(m.group(2)))
    return out


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def tier_of(decision, small):
    if decision.get("blocked"):
        return "blocked"
    if decision["model"] == small and not decision.get("use_reasoning"):
        return "small"
    return "reasoning"


def evaluate(router, rows, small, price, args):
    def one(r):
        status, body = post(f"{router}/v1/route", {
            "model": "auto", "messages": [{"role": "user", "content": r["text"]}]})
        if status != 200:
            raise RuntimeError(f"{r['id']}: /v1/route answered {status}: {body}")
        return r, body["decision"]

    out = []
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as ex:
        for r, d in ex.map(one, rows):
            if d.get("source") not in ("classified", "coalesced", "cache_local", "cache_redis"):
                raise RuntimeError(f"{r['id']}: not classified ({d.get('source')}, "
                                   f"{d.get('fail_reason')}): raise --timeout-ms")
            out.append((r, d))
    large = max(price, key=lambda m: price[m][1])

    def cost(model, reasoning, chars):
        p_in, p_out = price[model]
        answer = args.answer_tokens * (args.reasoning_factor if reasoning else 1)
        return (chars / 4 * p_in + answer * p_out) / 1e6

    if args.decisions:
        # One line a prompt (id, kind, expected, tier, signals): no prompt text.
        with open(args.decisions, "w") as f:
            for r, d in out:
                f.write(json.dumps({"id": r["id"], "kind": r["kind"], "expected": r["expected"],
                                    "tier": tier_of(d, small), "model": d["model"],
                                    "use_reasoning": d.get("use_reasoning"),
                                    "signals": d.get("signals")}) + "\n")
    res = collections.OrderedDict()
    for r, d in out:
        k = res.setdefault(r["kind"], collections.Counter())
        t = tier_of(d, small)
        k["n"] += 1
        k["right"] += int(t == r["expected"])
        k["expected_" + r["expected"]] += 1
        k[f"{r['expected']}->{t}"] += 1
        k["blocked"] += int(t == "blocked")
        chars = len(r["text"])
        k["cost"] += 0 if t == "blocked" else cost(d["model"], d.get("use_reasoning"), chars)
        k["cost_all_large"] += cost(large, True, chars)
        k["cost_expected"] += cost(small, False, chars) if r["expected"] == "small" else cost(large, True, chars)
        k[f"category:{d.get('category')}"] += 1
    return res


def summarise(res):
    tot = collections.Counter()
    for c in res.values():
        tot.update(c)
    simple = tot["expected_small"]
    hard = tot["expected_reasoning"]
    return {
        "n": tot["n"],
        "accuracy": tot["right"] / tot["n"],
        "simple_to_reasoning": (tot["small->reasoning"] + tot["small->blocked"]) / simple if simple else None,
        "simple_to_reasoning_strict": tot["small->reasoning"] / simple if simple else None,
        "hard_to_small": (tot["reasoning->small"] + tot["reasoning->blocked"]) / hard if hard else None,
        "blocked": tot["blocked"],
        "cost_per_1k": tot["cost"] / tot["n"] * 1000,
        "cost_all_large_per_1k": tot["cost_all_large"] / tot["n"] * 1000,
        "cost_expected_per_1k": tot["cost_expected"] / tot["n"] * 1000,
    }


def per_kind(res):
    out = {}
    for kind, c in res.items():
        top = sorted(((v, k[9:]) for k, v in c.items() if k.startswith("category:")), reverse=True)[:3]
        out[kind] = {
            "n": c["n"], "accuracy": c["right"] / c["n"],
            "expected_small": c["expected_small"], "expected_reasoning": c["expected_reasoning"],
            "to_reasoning": (c["small->reasoning"] + c["reasoning->reasoning"]) / c["n"],
            "blocked": c["blocked"],
            "cost_per_1k": c["cost"] / c["n"] * 1000,
            "top_categories": [f"{k} {v}" for v, k in top],
        }
    return out


def write_md(path, args, kinds, total, cmd):
    order = [k for k in KIND_ORDER if k in kinds] + sorted(set(kinds) - set(KIND_ORDER))
    with open(path, "w") as w:
        w.write(f"# Routing decisions on traffic-like prompts ({args.split} split)\n\n")
        w.write(f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC with\n"
                f"`{cmd}`\n\nheads `{args.heads}`, router config `{args.config}`, data "
                f"`{os.path.relpath(args.data, ROOT)}` (built by `models/traffic/build.py`; "
                "sources in `models/traffic/SOURCES.md`).\n\n")
        w.write("| kind | n | expected small / reasoning | right | sent to the reasoning tier | "
                "blocked | cost / 1k requests (USD) | top categories |\n|---|---|---|---|---|---|---|---|\n")
        for k in order:
            c = kinds[k]
            w.write(f"| {k} | {c['n']} | {c['expected_small']} / {c['expected_reasoning']} | "
                    f"{c['accuracy']:.3f} | {c['to_reasoning']:.3f} | {c['blocked']} | "
                    f"{c['cost_per_1k']:.4f} | {', '.join(c['top_categories'])} |\n")
        t = total
        w.write(f"\nOverall accuracy **{t['accuracy']:.3f}** on {t['n']} prompts; simple requests "
                f"sent to the reasoning tier **{t['simple_to_reasoning'] * 100:.1f} %** (blocked ones "
                f"included; {t['simple_to_reasoning_strict'] * 100:.1f} % without), hard requests left "
                f"on the small tier **{t['hard_to_small'] * 100:.1f} %**; {t['blocked']} blocked by the "
                f"guard.\n\nImplied cost per 1,000 requests: {t['cost_per_1k']:.4f} USD as routed, "
                f"{t['cost_all_large_per_1k']:.4f} with everything on the large model with reasoning, "
                f"{t['cost_expected_per_1k']:.4f} at the expected tiers (input = characters / 4 "
                f"tokens, answers {args.answer_tokens} tokens, x{args.reasoning_factor} with "
                "reasoning; the config's prices).\n")
        if t.get("classifier_answers"):
            w.write(f"\nTexts answered by the classifier's tiers (classifier_answers_total, tier:reason): "
                    f"{t['classifier_answers']}. The fast tier is on where `models/static-minilm` "
                    "and `models/heads-static` exist (CLASSIFIER_FAST_ENCODER=none turns it off).\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(HERE, "data", "traffic.jsonl"))
    ap.add_argument("--split", default="heldout", choices=["heldout", "dev", "all"])
    ap.add_argument("--heads", default="models/heads")
    ap.add_argument("--config", default="router-svc/config/router.yaml")
    ap.add_argument("--timeout-ms", type=int, default=60000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--answer-tokens", type=int, default=400)
    ap.add_argument("--reasoning-factor", type=float, default=4.0)
    ap.add_argument("--heads-threshold", action="store_true",
                    help="use the guard threshold of --heads' jailbreak/head.json instead of the config's")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--out", help="markdown report")
    ap.add_argument("--decisions", help="JSONL of every decision (ids and signals, no text)")
    ap.add_argument("--json", help="JSON report")
    args = ap.parse_args()
    prepare(args.no_build)
    rows = load_rows(args.data, args.split)
    price = prices(args.config)
    small = min(price, key=lambda m: price[m][1])
    work = tempfile.mkdtemp(prefix="route-eval-")
    os.environ["CLASSIFIER_HEADS"] = args.heads
    procs = bench.Procs(work)
    try:
        thr = None
        if args.heads_threshold:
            with open(os.path.join(args.heads, "jailbreak", "head.json")) as f:
                thr = json.load(f)["threshold"]
        cfg = router_config(args.config, args.timeout_ms, work, thr)
        st = bench.Stack(procs, bench.INSTANT_SIM, router_args=["--config", cfg])
        res = evaluate(st.router, rows, small, price, args)
        tiers = answered_by_tier(st.classifier_http)
    finally:
        procs.stop_all()
    kinds, total = per_kind(res), summarise(res)
    total["classifier_answers"] = tiers
    cmd = "python3 models/traffic/route_eval.py " + " ".join(sys.argv[1:])
    order = [k for k in KIND_ORDER if k in kinds] + sorted(set(kinds) - set(KIND_ORDER))
    for k in order:
        c = kinds[k]
        print(f"{k:<13} n={c['n']:>4} right {c['accuracy']:.3f} to-reasoning {c['to_reasoning']:.3f} "
              f"blocked {c['blocked']:>2}  {', '.join(c['top_categories'])}")
    print(f"overall {total['accuracy']:.3f}  simple->reasoning {total['simple_to_reasoning']:.3f}  "
          f"hard->small {total['hard_to_small']:.3f}  cost/1k {total['cost_per_1k']:.4f} "
          f"(all large {total['cost_all_large_per_1k']:.4f}, expected {total['cost_expected_per_1k']:.4f})")
    print(f"classifier answers by tier and reason: {tiers}")
    if args.out:
        write_md(args.out, args, kinds, total, cmd)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": cmd, "split": args.split, "heads": args.heads,
                       "config": args.config, "kinds": kinds, "overall": total}, f, indent=1)


if __name__ == "__main__":
    main()
