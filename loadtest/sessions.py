#!/usr/bin/env python3
"""Session benchmark: many concurrent conversations and agent sessions over two router replicas
and two replicas per model, with endpoint affinity on and off in the same run.

Why it exists: a model switch or an endpoint change mid-session throws the backend's prefix
cache away, and the whole conversation is computed again. vllm-sim keeps a per-replica prefix
cache here (16-token blocks, LRU) and charges prefill time for each prompt token not in it, so
the cost of losing the prefix shows as time to first token.

The stack: redis-server, classifier-svc (MiniLM + models/heads), --replicas vllm-sim replicas for
each model of the embedded config (4 by default, prefix cache on), and two router-svc replicas per setting
(affinity on: `upstream.affinity_load_bound: 2.0`; off: 0), all sharing Redis. Each phase plays
--sessions sessions at once, each of --turns turns, every turn on a random router replica of the
phase, streamed; half the sessions are agent-like (a long system prompt, a task, then tool calls
and growing tool results, an acknowledgement at the end), half are chats (user and assistant
turns, short follow-ups). Phases use different texts, so no phase finds another's prefixes.

Reported per phase: model switches per session, how turns were decided (x-vsr-session-action),
the share of later turns whose whole previous prompt was in the serving replica's prefix cache,
time to first token p50 / p99 (client side, through the router), and the spread of requests over
each model's replicas (max / mean).

  python3 loadtest/sessions.py [--sessions 48 --turns 8] [--out loadtest/SESSIONS.md]
"""

import argparse
import collections
import concurrent.futures
import datetime
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import bench  # noqa: E402

BIN = os.path.join(ROOT, "target", "release")
WORDS = ("retry backoff deadline replica endpoint cache prefix token stream budget request queue "
         "latency metric label session decision model policy router classifier").split()
TASKS = [
    "Find the race in the retry logic of upstream/mod.rs that turns a 502 into a 503 after the "
    "backends restart, fix it and add a regression test.",
    "Refactor the connection pool so that idle connections are closed after 90 seconds and "
    "write unit tests for the eviction order.",
    "Prove that there are infinitely many primes of the form 4k+3, step by step.",
    "Design a rate limiter shared by twelve gateway replicas and compare a token bucket in "
    "Redis with a sliding-window log.",
]
CHATS = [
    "What is a good name for a golden retriever puppy?",
    "Can you recommend a sci-fi book for a long train ride?",
    "Write a short birthday message for my coworker Dana.",
    "What should I cook tonight with rice, eggs and spinach?",
]
FOLLOW = ["something else?", "make it shorter", "and another one?", "what about tomorrow?",
          "thanks!", "ok", "more like that please", "why?"]


def filler(rng, words):
    return " ".join(rng.choice(WORDS) for _ in range(words))


def agent_turns(rng, tag, turns):
    """Messages per turn of an agent session: task, tool loop, then thanks."""
    system = f"[{tag}] You are a coding agent. " + filler(rng, 600)
    msgs = [{"role": "system", "content": system},
            {"role": "user", "content": f"{rng.choice(TASKS)} ({tag})"}]
    out = [list(msgs)]
    for i in range(1, turns):
        if i == turns - 1:
            msgs.append({"role": "assistant", "content": "Done: " + filler(rng, 40)})
            msgs.append({"role": "user", "content": "thanks"})
        else:
            msgs.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_{i}", "type": "function",
                 "function": {"name": "shell", "arguments": json.dumps({"cmd": f"step {i}"})}}]})
            msgs.append({"role": "tool", "tool_call_id": f"call_{i}", "content": filler(rng, 150)})
        out.append(list(msgs))
    return out


def chat_turns(rng, tag, turns):
    msgs = [{"role": "system", "content": f"[{tag}] You are a friendly assistant. " + filler(rng, 120)},
            {"role": "user", "content": f"{rng.choice(CHATS)} ({tag})"}]
    out = [list(msgs)]
    for _ in range(1, turns):
        msgs.append({"role": "assistant", "content": filler(rng, 80)})
        msgs.append({"role": "user", "content": rng.choice(FOLLOW)})
        out.append(list(msgs))
    return out


TOOLS = [{"type": "function", "function": {"name": "shell", "parameters": {"type": "object"}}}]


def send(router, messages, agent):
    body = {"model": "auto", "messages": messages, "stream": True, "max_tokens": 4}
    if agent:
        body["tools"] = TOOLS
        body["tool_choice"] = "none"
    req = urllib.request.Request(f"{router}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as r:
        h = {k.lower(): v for k, v in r.headers.items()}
        first = None
        for line in r:
            if first is None and line.startswith(b"data:"):
                first = time.perf_counter() - t0
        status = r.status
    if status != 200:
        raise RuntimeError(f"status {status}")
    return {"ttft_ms": (first or 0) * 1000, "model": h.get("x-vsr-selected-model"),
            "backend": h.get("x-sim-backend"), "action": h.get("x-vsr-session-action"),
            "prompt": int(h.get("x-sim-prompt-tokens", 0)), "cached": int(h.get("x-sim-cached-tokens", 0))}


def play(routers, turns, agent, seed):
    rng = random.Random(seed)
    out = []
    for msgs in turns:
        out.append(send(rng.choice(routers), msgs, agent))
    return out


def phase(routers, tag, sessions, turns, seed):
    rng = random.Random(seed)
    plays = []
    for i in range(sessions):
        agent = i % 2 == 0
        tr = (agent_turns if agent else chat_turns)(rng, f"{tag}-{i}", turns)
        plays.append((tr, agent, seed * 1000 + i))
    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(sessions) as ex:
        results = list(ex.map(lambda p: play(routers, *p), plays))
    return results, time.time() - t0


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def summarise(results, pools):
    c = collections.Counter()
    ttft, later_ttft = [], []
    per_backend = collections.Counter()
    switches = []
    for sess in results:
        models = [t["model"] for t in sess]
        switches.append(sum(a != b for a, b in zip(models, models[1:])))
        for i, t in enumerate(sess):
            c[f"action:{t['action']}"] += 1
            per_backend[t["backend"]] += 1
            ttft.append(t["ttft_ms"])
            if i > 0:
                later_ttft.append(t["ttft_ms"])
                c["later"] += 1
                # The whole previous prompt (less its last, partial block) was cached here.
                hit = t["cached"] >= sess[i - 1]["prompt"] - 16
                c["hit"] += int(hit)
                if not hit:
                    moved = "same replica" if t["backend"] == sess[i - 1]["backend"] else "moved"
                    c[f"miss:{t['action']} ({moved})"] += 1
    spread = {}
    for model, names in pools.items():
        counts = [per_backend[n] for n in names]
        mean = sum(counts) / len(counts)
        spread[model] = {"requests": dict(zip(names, counts)),
                         "max_over_mean": (max(counts) / mean) if mean else None}
    n = sum(len(s) for s in results)
    return {
        "sessions": len(results), "turns": n,
        "switches_per_session": sum(switches) / len(switches),
        "sessions_with_a_switch": sum(1 for s in switches if s),
        "actions": {k[7:]: v for k, v in sorted(c.items()) if k.startswith("action:")},
        "classified_share": sum(v for k, v in c.items()
                                if k in ("action:started", "action:kept", "action:escalated",
                                         "action:stepped_down")) / n,
        "prefix_hit_share_later_turns": c["hit"] / c["later"] if c["later"] else None,
        "prefix_misses": {k[5:]: v for k, v in sorted(c.items()) if k.startswith("miss:")},
        "ttft_ms": {"p50": pct(ttft, 0.5), "p99": pct(ttft, 0.99)},
        "ttft_later_turns_ms": {"p50": pct(later_ttft, 0.5), "p99": pct(later_ttft, 0.99)},
        "spread": spread,
    }


def router_yaml(work, name, bound, timeout_ms, sessions=True):
    with open(os.path.join(ROOT, "router-svc", "config", "router.yaml")) as f:
        text = f.read()
    text, n = re.subn(r"(?m)^(  timeout_ms:) \d+", rf"\1 {timeout_ms}", text, count=1)
    assert n == 1
    text, n = re.subn(r"(?m)^(  affinity_load_bound:) [\d.]+", rf"\1 {bound}", text, count=1)
    assert n == 1
    # Everything shares two cores here: a 5 ms Redis budget is missed under this load, and each
    # miss takes Redis out for a second (the store's back-off), which is not what is measured.
    text, n = re.subn(r"(?m)^(  redis_timeout_ms:) \d+", r"\1 50", text, count=1)
    assert n == 1
    if not sessions:
        text, n = re.subn(r"(?m)^(session:\n  enabled:) true", r"\1 false", text, count=1)
        assert n == 1
    path = os.path.join(work, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


def cpu_compare(procs, work, env, args):
    """Router CPU per request of one tool-loop turn (an agent session's request ending in a tool
    result), sessions on (the session's state found in process: no classification, no decision
    cache) against sessions off (the task classified again: a decision-cache hit), one worker
    each, the same loadgen schedule, twice interleaved."""
    urls, pids = {}, {}
    for name, on in (("sessions-on", True), ("sessions-off", False)):
        cfg = router_yaml(work, f"router-cpu-{name}", args.affinity_bound, args.timeout_ms, sessions=on)
        port = bench.free_port()
        p = procs.start(f"router-cpu-{name}", [os.path.join(BIN, "router-svc"), "--config", cfg],
                        {**env, "ROUTER_LISTEN": f"127.0.0.1:{port}", "ROUTER_WORKERS": "1"})
        urls[name] = f"http://127.0.0.1:{port}"
        bench.wait_http(f"{urls[name]}/readyz", p)
        pids[name] = p.pid
    rng = random.Random(7)
    msgs = agent_turns(rng, "cpu", 3)[1]
    body = json.dumps({"model": "auto", "messages": msgs, "max_tokens": 4, "tools": TOOLS,
                       "tool_choice": "none"})
    first = json.dumps({"model": "auto", "messages": agent_turns(random.Random(7), "cpu", 3)[0],
                        "max_tokens": 4})
    for name in urls:
        # The session's first turn, then the tool-loop turn once (its state or decision cached).
        for b in (first, body):
            status, h, _ = bench.http_post(f"{urls[name]}/v1/chat/completions", b)
            assert status == 200, status
    rows = []
    for rep in range(2):
        for name in urls:
            bench.log(f"cpu {name} {args.cpu_rate} req/s (repeat {rep + 1})")
            r = bench.loadgen(f"{urls[name]}/v1/chat/completions", body,
                              os.path.join(work, f"cpu-{name}-{rep}.json"), rate=args.cpu_rate,
                              seconds=args.cpu_seconds, cpu_of={"router": pids[name]})
            rows.append({"setting": name, "repeat": rep, "cpu_us": r["cpu_us_per_req"]["router"],
                         "ok_share": r["ok_share"]})
    mean = {n: sum(r["cpu_us"] for r in rows if r["setting"] == n) / 2 for n in urls}
    return {"rows": rows, "mean_cpu_us": mean,
            "added_us": mean["sessions-on"] - mean["sessions-off"], "rate": args.cpu_rate}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=48)
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--replicas", type=int, default=4,
                    help="vllm-sim replicas per model (with 2, a random pick finds a session's "
                         "last replica half of the time)")
    ap.add_argument("--prefill-us-per-token", type=int, default=200)
    ap.add_argument("--prefix-cache-blocks", type=int, default=200000)
    ap.add_argument("--timeout-ms", type=int, default=2000, help="classifier deadline")
    ap.add_argument("--affinity-bound", type=float, default=2.0,
                    help="upstream.affinity_load_bound of the 'on' phase")
    ap.add_argument("--cpu-rate", type=int, default=1000,
                    help="tool-loop requests/s for the CPU-per-request comparison (0: skip it)")
    ap.add_argument("--cpu-seconds", type=float, default=5.0)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "SESSIONS.md"))
    ap.add_argument("--json")
    args = ap.parse_args()
    os.chdir(ROOT)
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "-q", "-p", "classifier-svc",
                        "-p", "router-svc", "-p", "loadtest"], check=True)
        subprocess.run([os.path.join(ROOT, "models", "fetch.sh")], check=True, stdout=subprocess.DEVNULL)
    work = tempfile.mkdtemp(prefix="session-bench-")
    procs = bench.Procs(work)
    res = {}
    try:
        rp = bench.free_port()
        procs.start("redis", ["redis-server", "--port", str(rp), "--save", "", "--appendonly", "no"])
        redis_url = f"redis://127.0.0.1:{rp}"
        grpc, http = bench.free_port(), bench.free_port()
        cls = procs.start("classifier", [os.path.join(BIN, "classifier-svc"), "serve"],
                          {"CLASSIFIER_GRPC_ADDR": f"127.0.0.1:{grpc}",
                           "CLASSIFIER_HTTP_ADDR": f"127.0.0.1:{http}", "RUST_LOG": "warn"})
        bench.wait_http(f"http://127.0.0.1:{http}/healthz", cls)
        sims, pools = {}, {"qwen3-0.6b": [], "qwen3-8b": []}
        for model, kind in (("qwen3-0.6b", "small"), ("qwen3-8b", "large")):
            names = [f"{kind}-{i + 1}" for i in range(args.replicas)]
            for name in names:
                port = bench.free_port()
                p = procs.start(name, [os.path.join(BIN, "vllm-sim"), "--addr", f"127.0.0.1:{port}",
                                       "--name", name, "--ttft-ms", "5", "--tokens-per-sec", "2000",
                                       "--max-num-seqs", "100000",
                                       "--prefill-us-per-token", str(args.prefill_us_per_token),
                                       "--prefix-cache-blocks", str(args.prefix_cache_blocks)],
                                {"RUST_LOG": "warn"})
                sims[name] = f"http://127.0.0.1:{port}"
                bench.wait_http(f"{sims[name]}/health", p)
                pools[model].append(name)
        env = {"ROUTER_CLASSIFIER_ADDRS": f"http://127.0.0.1:{grpc}", "ROUTER_REDIS_URL": redis_url,
               "ROUTER_ENDPOINTS_QWEN3_0_6B": ",".join(sims[n] for n in pools["qwen3-0.6b"]),
               "ROUTER_ENDPOINTS_QWEN3_8B": ",".join(sims[n] for n in pools["qwen3-8b"]),
               "RUST_LOG": "warn"}
        routers = {}
        for setting, bound in (("on", args.affinity_bound), ("off", 0)):
            cfg = router_yaml(work, f"router-{setting}", bound, args.timeout_ms)
            for i in range(2):
                port = bench.free_port()
                p = procs.start(f"router-{setting}-{i}", [os.path.join(BIN, "router-svc"), "--config", cfg],
                                {**env, "ROUTER_LISTEN": f"127.0.0.1:{port}"})
                url = f"http://127.0.0.1:{port}"
                bench.wait_http(f"{url}/readyz", p)
                routers.setdefault(setting, []).append(url)
        # Until the routers know the classifier's tasks (nothing is classified before).
        time.sleep(3)
        for i, setting in enumerate(("on", "off")):
            bench.log(f"phase: affinity {setting}")
            results, took = phase(routers[setting], f"{setting}", args.sessions, args.turns, seed=i + 1)
            res[setting] = {**summarise(results, pools), "seconds": took}
        if args.cpu_rate:
            res["cpu"] = cpu_compare(procs, work, env, args)
    finally:
        procs.stop_all()
    cmd = "python3 loadtest/sessions.py " + " ".join(sys.argv[1:])
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": cmd, **res}, f, indent=1)
    on, off = res["on"], res["off"]
    with open(args.out, "w") as w:
        w.write("# Sessions: decisions, prefix cache and time to first token\n\n")
        w.write(f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on this "
                f"machine (2 cores, everything on it) with `{cmd}`: {args.sessions} concurrent sessions "
                f"of {args.turns} turns per phase (half agent-like with tool loops, half chats), two "
                f"router replicas per phase sharing Redis, {args.replicas} vllm-sim replicas per model with a "
                f"prefix cache ({args.prefill_us_per_token} us of prefill per uncached prompt token, "
                "5 ms base time to first token), Redis budget 50 ms (everything shares the two cores). "
                "Affinity on and off in the same run.\n\n")
        w.write("| | affinity on | affinity off |\n|---|---|---|\n")
        w.write(f"| model switches per session | {on['switches_per_session']:.3f} | {off['switches_per_session']:.3f} |\n")
        w.write(f"| turns classified (new user words) | {on['classified_share']:.3f} | {off['classified_share']:.3f} |\n")
        w.write(f"| later turns with their whole previous prompt in the replica's prefix cache | "
                f"**{on['prefix_hit_share_later_turns']:.3f}** | {off['prefix_hit_share_later_turns']:.3f} |\n")
        w.write(f"| time to first token p50 / p99 (ms), all turns | **{on['ttft_ms']['p50']:.1f}** / "
                f"{on['ttft_ms']['p99']:.1f} | {off['ttft_ms']['p50']:.1f} / {off['ttft_ms']['p99']:.1f} |\n")
        w.write(f"| same, later turns | {on['ttft_later_turns_ms']['p50']:.1f} / {on['ttft_later_turns_ms']['p99']:.1f} | "
                f"{off['ttft_later_turns_ms']['p50']:.1f} / {off['ttft_later_turns_ms']['p99']:.1f} |\n")
        for model in on["spread"]:
            a, b = on["spread"][model], off["spread"][model]
            fa = "n/a" if a["max_over_mean"] is None else f"{a['max_over_mean']:.2f}"
            fb = "n/a" if b["max_over_mean"] is None else f"{b['max_over_mean']:.2f}"
            w.write(f"| {model}: busiest replica / mean (requests) | {fa} {a['requests']} | {fb} {b['requests']} |\n")
        ratio = off["ttft_ms"]["p50"] / on["ttft_ms"]["p50"] if on["ttft_ms"]["p50"] else float("nan")
        w.write(f"\nTime to first token p50, off / on: **{ratio:.2f}x**. Turns by session action "
                f"(on): {on['actions']}; (off): {off['actions']}. Later turns that missed the "
                f"prefix, by action and replica (on): {on['prefix_misses']}.\n")
        if "cpu" in res:
            c = res["cpu"]
            w.write(f"\nRouter CPU per request of a tool-loop turn at {c['rate']} req/s (one worker, "
                    "/proc of the router, loadgen, two interleaved runs each): sessions on (state "
                    f"found in process) {c['mean_cpu_us']['sessions-on']:.1f} us, sessions off (the "
                    f"task classified again: decision-cache hit) {c['mean_cpu_us']['sessions-off']:.1f}"
                    f" us; added by the session look-up: **{c['added_us']:+.1f} us**. Runs: "
                    + ", ".join(f"{r['setting']} {r['cpu_us']:.1f}" for r in c["rows"]) + ".\n")


if __name__ == "__main__":
    main()
