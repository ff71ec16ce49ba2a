#!/usr/bin/env python3
"""Choose a similarity route's `fast_threshold`: the threshold on the router's fast tier's
(static) embedding that reproduces the encoder's route decisions at the route's `threshold`.

Starts classifier-svc, vllm-sim and two router-svc processes on the embedded config with both
thresholds at 0 (so every prompt reports its nearest route's similarity) and a 5 s classifier
deadline: one router asks the encoder, the other has no classifier (its fast tier answers every
request). Sends N prompts of one split of the traffic set to /v1/route on each and prints, for
fast thresholds 0.30-0.95, how often the fast tier's match agrees with the encoder's at
--threshold. Choose on `dev`, confirm on `heldout`.

  python3 models/traffic/route_fast_threshold.py --split dev --n 600
  python3 models/traffic/route_fast_threshold.py --split heldout --n 600 --check 0.6
"""

import argparse
import json
import os
import random
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "loadtest"))
import bench  # noqa: E402
from bench import Procs, free_port, http_post, wait_http  # noqa: E402


def similarities(rows, work):
    with open(os.path.join(ROOT, "router-svc", "config", "router.yaml")) as f:
        text = f.read()
    text = text.replace("  timeout_ms: 50 ", "  timeout_ms: 5000 ", 1)
    text = text.replace("      threshold: 0.5 ", "      threshold: 0.0 ", 1)
    text = text.replace("      fast_threshold: 0.6 ", "      fast_threshold: 0.0 ", 1)
    cfg = os.path.join(work, "calibrate.yaml")
    with open(cfg, "w") as f:
        f.write(text)
    procs = Procs(work)
    out = {}
    try:
        grpc, http, sp = free_port(), free_port(), free_port()
        cls = procs.start("classifier", [os.path.join(bench.BIN, "classifier-svc"), "serve"],
                          {"CLASSIFIER_GRPC_ADDR": f"127.0.0.1:{grpc}",
                           "CLASSIFIER_HTTP_ADDR": f"127.0.0.1:{http}"})
        wait_http(f"http://127.0.0.1:{http}/healthz", cls)
        sim = procs.start("sim", [os.path.join(bench.BIN, "vllm-sim"), "--addr", f"127.0.0.1:{sp}"])
        wait_http(f"http://127.0.0.1:{sp}/health", sim)
        for tag, addr in (("encoder", f"http://127.0.0.1:{grpc}"), ("fast", "http://127.0.0.1:1")):
            port = free_port()
            r = procs.start(f"router-{tag}", [os.path.join(bench.BIN, "router-svc"), "--config", cfg],
                            {"ROUTER_LISTEN": f"127.0.0.1:{port}", "ROUTER_CLASSIFIER_ADDRS": addr,
                             "ROUTER_REDIS_URL": "",
                             "ROUTER_ENDPOINTS_QWEN3_0_6B": f"http://127.0.0.1:{sp}",
                             "ROUTER_ENDPOINTS_QWEN3_8B": f"http://127.0.0.1:{sp}"})
            wait_http(f"http://127.0.0.1:{port}/readyz", r)
            time.sleep(3)  # the route examples embedded (encoder) or the breaker open (fast)
            sims = []
            for row in rows:
                body = json.dumps({"model": "auto", "max_tokens": 1,
                                   "messages": [{"role": "user", "content": row["text"]}]})
                _, _, b = http_post(f"http://127.0.0.1:{port}/v1/route", body)
                d = json.loads(b)
                d = d.get("decision", d)
                sims.append(d.get("route_similarity"))
            out[tag] = sims
            procs.stop(r)
    finally:
        procs.stop_all()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="dev")
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--threshold", type=float, default=0.5, help="the route's encoder threshold")
    ap.add_argument("--check", type=float, help="a fast threshold to report against 0.5")
    args = ap.parse_args()
    path = os.path.join(ROOT, "models", "traffic", "data", "traffic.jsonl")
    rows = [json.loads(l) for l in open(path)]
    random.seed(1)
    random.shuffle(rows)
    rows = [r for r in rows if r.get("split") == args.split][:args.n]
    s = similarities(rows, tempfile.mkdtemp(prefix="semroute-routecal-"))
    pairs = [(e if e is not None else -1.0, f if f is not None else -1.0)
             for e, f in zip(s["encoder"], s["fast"])]
    want = [e >= args.threshold for e, _ in pairs]
    print(f"{args.split}: {len(pairs)} prompts, the encoder matches {sum(want)} at {args.threshold}")
    grid = [t / 100 for t in range(30, 96, 5)] + ([args.check] if args.check else [])
    for t in grid:
        fp = sum(f >= t and not w for (_, f), w in zip(pairs, want))
        fn = sum(f < t and w for (_, f), w in zip(pairs, want))
        print(f"fast_threshold {t:.2f}: agrees on {len(pairs) - fp - fn}, {fp} more matches, {fn} fewer")


if __name__ == "__main__":
    main()
