#!/usr/bin/env python3
"""Decisions on whole conversations, turn by turn, through two router replicas.

Why it exists: route_eval.py judges single prompts; a conversation's later turns ("thanks",
"now in Rust", "what about 4k+1?") mean little alone, and a model switch mid-conversation throws
the backend's prefix cache away. This script starts the real stack (redis-server, classifier-svc
with the heads, two router-svc replicas sharing Redis, a simulated backend) and plays every
conversation of `models/traffic/conversations.jsonl` (written for this check; each turn labelled)
through `POST /v1/chat/completions` with `model: auto`, the turns alternating between the two
replicas, the conversation's history growing as a client's does. No session header is sent: the
router names the session from the conversation's opening.

Judged per turn:
  first turns      expect small -> the cheapest model with reasoning off; reasoning -> any other
  follow-ups       expect plain -> reasoning off (a light follow-up never turns reasoning on);
                   expect reasoning -> reasoning on (a follow-up that needs reasoning gets it)
and counted: model switches inside a conversation, and how each turn was decided
(x-vsr-session-action).

  python3 models/traffic/session_eval.py [--heads models/heads] [--config router.yaml] [--out R.md]
"""

import argparse
import collections
import datetime
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "loadtest"))
sys.path.insert(0, HERE)
import bench  # noqa: E402
import route_eval  # noqa: E402


def chat(router, messages):
    body = {"model": "auto", "messages": messages, "max_tokens": 8}
    req = urllib.request.Request(f"{router}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read() or b"{}")


def play(routers, conv, small):
    """Every turn of `conv`: (turn index, expect, model, reasoning, action, source)."""
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    out = []
    for i, t in enumerate(conv["turns"]):
        messages.append({"role": "user", "content": t["text"]})
        status, h, body = chat(routers[i % len(routers)], messages)
        if status != 200:
            raise RuntimeError(f"{conv['id']} turn {i}: {status} {body}")
        h = {k.lower(): v for k, v in h.items()}
        out.append({"turn": i, "expect": t["expect"], "model": h.get("x-vsr-selected-model"),
                    "reasoning": h.get("x-vsr-selected-reasoning") == "on",
                    "action": h.get("x-vsr-session-action"), "source": h.get("x-vsr-decision-source"),
                    "session": h.get("x-vsr-session")})
        answer = body["choices"][0]["message"].get("content") or "An answer."
        messages.append({"role": "assistant", "content": answer})
    return out


def right(r, small):
    if r["turn"] == 0:
        tier = "small" if r["model"] == small and not r["reasoning"] else "reasoning"
        return tier == r["expect"]
    return r["reasoning"] == (r["expect"] == "reasoning")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(HERE, "conversations.jsonl"))
    ap.add_argument("--heads", default="models/heads")
    ap.add_argument("--config", default="router-svc/config/router.yaml")
    ap.add_argument("--timeout-ms", type=int, default=60000)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--out", help="markdown report")
    ap.add_argument("--json", help="JSON report")
    args = ap.parse_args()
    route_eval.prepare(args.no_build)
    convs = [json.loads(l) for l in open(args.data) if l.strip()]
    price = route_eval.prices(args.config)
    small = min(price, key=lambda m: price[m][1])
    work = tempfile.mkdtemp(prefix="session-eval-")
    os.environ["CLASSIFIER_HEADS"] = args.heads
    procs = bench.Procs(work)
    try:
        cfg = route_eval.router_config(args.config, args.timeout_ms, work)
        st = bench.Stack(procs, bench.INSTANT_SIM, router_args=["--config", cfg])
        second, _ = st.start_router(router_args=["--config", cfg], name="router2")
        results = {c["id"]: play([st.router, second], c, small) for c in convs}
    finally:
        procs.stop_all()

    c = collections.Counter()
    wrong = []
    for cid, turns in results.items():
        models = [t["model"] for t in turns]
        c["switches"] += sum(a != b for a, b in zip(models, models[1:]))
        c["sessions_one_id"] += int(len({t["session"] for t in turns}) == 1)
        for t in turns:
            key = "first" if t["turn"] == 0 else "follow"
            ok = right(t, small)
            c[f"{key}_n"] += 1
            c[f"{key}_right"] += int(ok)
            c[f"{key}_{t['expect']}_n"] += 1
            c[f"{key}_{t['expect']}_right"] += int(ok)
            c[f"action:{t['action']}"] += 1
            if not ok:
                wrong.append(f"{cid} turn {t['turn']} (expect {t['expect']}): {t['model']}, "
                             f"reasoning {'on' if t['reasoning'] else 'off'}, {t['action']}")
    rep = {
        "conversations": len(results),
        "turns": c["first_n"] + c["follow_n"],
        "first_turn_accuracy": c["first_right"] / c["first_n"],
        "follow_up_accuracy": c["follow_right"] / c["follow_n"],
        "follow_up_plain_accuracy": c["follow_plain_right"] / max(1, c["follow_plain_n"]),
        "follow_up_reasoning_accuracy": c["follow_reasoning_right"] / max(1, c["follow_reasoning_n"]),
        "follow_ups": c["follow_n"],
        "model_switches": c["switches"],
        "one_session_id_per_conversation": c["sessions_one_id"],
        "actions": {k[7:]: v for k, v in c.items() if k.startswith("action:")},
        "wrong": wrong,
    }
    cmd = "python3 models/traffic/session_eval.py " + " ".join(sys.argv[1:])
    print(json.dumps(rep, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": cmd, **rep}, f, indent=2)
    if args.out:
        with open(args.out, "w") as w:
            w.write("# Conversations: decisions turn by turn (two router replicas)\n\n")
            w.write(f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC with "
                    f"`{cmd}`: heads `{args.heads}`, router config `{args.config}`, "
                    f"{rep['conversations']} conversations of `{os.path.relpath(args.data, ROOT)}` "
                    f"({rep['turns']} turns), turns alternating between two replicas sharing Redis.\n\n")
            w.write("| | turns | right |\n|---|---|---|\n")
            w.write(f"| first turns (tier) | {c['first_n']} | {rep['first_turn_accuracy']:.3f} |\n")
            w.write(f"| follow-ups, all | {c['follow_n']} | **{rep['follow_up_accuracy']:.3f}** |\n")
            w.write(f"| follow-ups that need no reasoning (reasoning off) | {c['follow_plain_n']} | "
                    f"{rep['follow_up_plain_accuracy']:.3f} |\n")
            w.write(f"| follow-ups that need reasoning (reasoning on) | {c['follow_reasoning_n']} | "
                    f"{rep['follow_up_reasoning_accuracy']:.3f} |\n\n")
            w.write(f"Model switches inside a conversation: {rep['model_switches']}; conversations "
                    f"that kept one session id on both replicas: {rep['one_session_id_per_conversation']}"
                    f" of {rep['conversations']}.\n\nHow turns were decided "
                    f"(`x-vsr-session-action`): " +
                    ", ".join(f"{k} {v}" for k, v in sorted(rep["actions"].items())) + ".\n")
            if wrong:
                w.write("\nWrong turns:\n\n" + "".join(f"- {x}\n" for x in wrong))


if __name__ == "__main__":
    main()
