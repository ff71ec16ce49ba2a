#!/usr/bin/env python3
"""The decision path under load and faults, on the embedded router config (50 ms classifier
deadline, admission, breaker): router-svc + classifier-svc (MiniLM + models/heads) + vllm-sim +
redis on this machine, all sharing its cores with the load generator.

  python3 loadtest/decision.py              # writes loadtest/DECISION.md (~2 min)
  python3 loadtest/decision.py --no-build --capacity 320 --seconds 20

Phases:
  rate R    open-loop unique prompts (loadgen, `{seq}` in the body) at R req/s through
            /v1/chat/completions: answered, failed, share classified (router_decisions_total),
            fail-open reasons, the classifier call's p99 (router_classify_duration_seconds)
  kill      open-loop load at --kill-rate while the classifier is SIGKILLed and restarted; a
            probe sends one request every 50 ms and records its latency and decision source:
            how long until every request fails open at once, and after the restart until 90 %
            of probes are classified again.
Reuses bench.py's process and loadgen helpers.
"""

import argparse
import datetime
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
from bench import (INSTANT_SIM, Procs, Stack, bucket_quantile, chat_body,  # noqa: E402
                   histogram_buckets, http_post, log, metrics, wait_http)

ROOT = bench.ROOT


def deltas(m0, m1, name, label):
    out = {}
    for k, v in m1.items():
        if k.startswith(name + "{"):
            import re
            g = re.search(label + r'="([^"]*)"', k)
            if g:
                out[g.group(1)] = out.get(g.group(1), 0) + v - m0.get(k, 0.0)
    return {k: int(round(v)) for k, v in out.items() if round(v)}


# Decisions that came from a classification: the classifier's (either tier), now or cached, or
# the router's own fast tier standing in for a classifier that could not answer.
BY_CLASSIFIER = ("classified", "coalesced", "cache_local", "cache_redis")
CLASSIFIED = BY_CLASSIFIER + ("fast_tier",)


def log_lines(path):
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def rate_phase(st, work, rate, seconds, tag, prompts=None):
    log(f"decision: {rate:.0f} req/s of unique prompts ({tag})")
    rm0 = metrics(f"{st.router}/metrics")
    cm0 = metrics(f"{st.classifier_http}/metrics")
    lines0 = log_lines(os.path.join(work, "router.log"))
    if prompts:
        # Traffic-like prompts in turn, each made unique by its number (no cache hits).
        body = chat_body("auto", "{prompt} (request {seq}, " + tag + ")")
        extra = ("--prompts", prompts)
    else:
        body = chat_body("auto", f"Question {{seq}} ({tag}): how would you prove that {{seq}} has a prime factor?")
        extra = ()
    r = bench.loadgen(f"{st.router}/v1/chat/completions", body,
                      os.path.join(work, f"decision-{tag}.json"), rate=rate, seconds=seconds,
                      warmup=0, extra=extra)
    rm1 = metrics(f"{st.router}/metrics")
    cm1 = metrics(f"{st.classifier_http}/metrics")
    # Texts the classifier answered, by tier: the encoder (reason "") or the fast tier and why.
    tiers = {("encoder" if k == "" else f"fast:{k}"): v
             for k, v in deltas(cm0, cm1, "classifier_answers_total", "reason").items()}
    sources = deltas(rm0, rm1, "router_decisions_total", "source")
    reasons = deltas(rm0, rm1, "router_fail_open_total", "reason")
    needed = sum(v for k, v in sources.items() if k in CLASSIFIED + ("fail_open",))
    classified = sum(v for k, v in sources.items() if k in CLASSIFIED)
    b0 = histogram_buckets(rm0, "router_classify_duration_seconds")
    b1 = histogram_buckets(rm1, "router_classify_duration_seconds")
    encoder = tiers.get("encoder", 0)
    return {
        "tag": tag, "rate": rate, "report": r, "sources": sources, "reasons": reasons,
        "tiers": tiers, "encoder_share": encoder / needed if needed else None,
        "router_fast": sources.get("fast_tier", 0),
        "classified_share": classified / needed if needed else None,
        "classified_per_s": classified / seconds,
        "classify_p99_le_s": bucket_quantile(b0, b1, 0.99),
        "classify_p50_le_s": bucket_quantile(b0, b1, 0.5),
        "log_lines": log_lines(os.path.join(work, "router.log")) - lines0,
    }


def kill_phase(st, procs, work, rate, kill_at=4.0, down_for=5.0, total=16.0):
    log(f"decision: classifier killed at {kill_at}s and restarted {down_for}s later, {rate} req/s")
    body = chat_body("auto", "Kill phase {seq}: why is the sky blue at noon and red at dusk?")
    lg = subprocess.Popen([os.path.join(bench.BIN, "loadgen"), "--url",
                           f"{st.router}/v1/chat/completions", "--body", body, "--json",
                           os.path.join(work, "decision-kill.json"), "--rate", str(rate),
                           "--seconds", str(total), "--max-error-rate", "1"],
                          cwd=ROOT, stdout=subprocess.DEVNULL)
    m0 = metrics(f"{st.router}/metrics")
    probes = []
    stop = threading.Event()
    t0 = time.time()

    def probe():
        i = 0
        while not stop.is_set():
            i += 1
            s = time.time()
            try:
                status, h, _ = http_post(f"{st.router}/v1/chat/completions",
                                         chat_body("auto", f"probe {i}: explain the proof of theorem {i}"))
                probes.append((s - t0, time.time() - s, status, h.get("x-vsr-decision-source"),
                               h.get("x-vsr-fail-reason")))
            except Exception as e:  # a failed request is recorded, not hidden
                probes.append((s - t0, time.time() - s, 0, "error", str(e)))
            time.sleep(max(0.0, 0.05 - (time.time() - s)))

    th = threading.Thread(target=probe)
    th.start()
    time.sleep(kill_at)
    os.killpg(st.classifier_proc.pid, signal.SIGKILL)
    st.classifier_proc.wait()
    killed = time.time() - t0
    time.sleep(down_for)
    st.classifier_proc = procs.start("classifier-2", st.classifier_argv, st.classifier_env)
    restarted = time.time() - t0
    wait_http(f"{st.classifier_http}/healthz", st.classifier_proc)
    healthy = time.time() - t0
    lg.wait()
    stop.set()
    th.join()
    sources = deltas(m0, metrics(f"{st.router}/metrics"), "router_decisions_total", "source")
    with open(os.path.join(work, "decision-kill.json")) as f:
        import json
        lgr = json.load(f)
    # After the kill: the first probe from which every probe until the restart was answered fast
    # (by the router's fast tier, or failed open where it has none).
    down = [p for p in probes if killed <= p[0] < restarted]
    fast_ms = 10.0
    settle = None
    for i, p in enumerate(down):
        if all(q[3] in ("fail_open", "fast_tier") and q[1] * 1e3 < fast_ms for q in down[i:]):
            settle = p[0] - killed
            break
    after = [p for p in probes if p[0] >= restarted]
    back = None
    for i in range(len(after)):
        window = after[i:i + 10]
        if len(window) == 10 and sum(q[3] in BY_CLASSIFIER for q in window) >= 9:
            back = window[0][0]
            break
    return {
        "killed_at": killed, "restarted_at": restarted, "healthy_at": healthy,
        "fail_open_fast_after_s": settle, "fast_ms": fast_ms,
        "down_probe_max_ms": max((p[1] * 1e3 for p in down if p[0] - killed >= (settle or 0)), default=None),
        "after_1s_max_ms": max((p[1] * 1e3 for p in down if p[0] - killed >= 1.0), default=None),
        "after_1s_slow": sum(1 for p in down if p[0] - killed >= 1.0 and p[1] * 1e3 >= fast_ms),
        "after_1s_not_fail_open": sum(1 for p in down if p[0] - killed >= 1.0 and p[3] != "fail_open"),
        "down_probes": len(down),
        "down_by_router_fast": sum(1 for p in down if p[3] == "fast_tier"),
        "down_fail_open": sum(1 for p in down if p[3] == "fail_open"),
        "load_sources": sources,
        "after_1s": sum(1 for p in down if p[0] - killed >= 1.0),
        "classified_again_after_restart_s": None if back is None else back - restarted,
        "classified_again_after_healthy_s": None if back is None else back - healthy,
        "probe_errors": sum(1 for p in probes if p[2] != 200),
        "probes": len(probes), "loadgen": lgr,
    }


def write(path, args, phases, kill, started):
    out = [f"# Decision path under load and faults\n",
           f"Reproduce: `python3 loadtest/decision.py --capacity {args.capacity:g} --seconds {args.seconds:g}"
           + (f" --config {args.config}" if args.config else "")
           + (f" --prompts {args.prompts}" if args.prompts else "") + "`"
           f" (run {started:%Y-%m-%d %H:%M} UTC, 2 cores shared by loadgen, router-svc, classifier-svc"
           f" (MiniLM + models/heads, CPU, the fast tier where models/static-minilm is), vllm-sim and redis; "
           + (f"router config {args.config}" if args.config else "embedded router config") + ": classifier"
           f" deadline 50 ms, admission AIMD, breaker after 5 dead calls).\n",
           f"Classifier capacity taken as {args.capacity:g} texts/s (classifier-svc bench, 64 closed-loop"
           f" clients, cores to itself).\n",
           "| offered req/s | answered 2xx | failed | p50 / p99 ms (from schedule) | classified share (any tier) | by the encoder | by the router's fast tier | classified/s | fail-open reasons | classify call p50 / p99 (bucket ≤) | classifier answers by tier | router log lines |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in phases:
        r = p["report"]
        failed = r["http_errors"] + r["io_errors"] + r["timeouts"] + r["unsent"]
        share = "-" if p["classified_share"] is None else f"{100 * p['classified_share']:.1f}%"
        enc = "-" if p["encoder_share"] is None else f"{100 * p['encoder_share']:.1f}%"
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(p["reasons"].items())) or "-"
        c50 = "-" if p["classify_p50_le_s"] is None else f"{1e3 * p['classify_p50_le_s']:g}"
        c99 = "-" if p["classify_p99_le_s"] is None else f"{1e3 * p['classify_p99_le_s']:g}"
        out.append(f"| {p['rate']:.0f} ({p['tag']}) | {r['ok']} | {failed} | {r['latency_ms']['p50']:.1f} / {r['latency_ms']['p99']:.1f} | {share} | {enc} | {p['router_fast']} | {p['classified_per_s']:.1f} | {reasons} | {c50} / {c99} | {', '.join(f'{k} {v}' for k, v in sorted(p['tiers'].items())) or '-'} | {p['log_lines']} |")
    k = kill
    if k is None:
        text = "\n".join(out) + "\n"
        with open(path, "w") as f:
            f.write(text)
        return text
    lg = k["loadgen"]
    kfailed = lg["http_errors"] + lg["io_errors"] + lg["timeouts"] + lg["unsent"]
    fmt = lambda v, nd=2: "never" if v is None else f"{v:.{nd}f}"
    out += ["", f"Classifier killed under {args.kill_rate:g} req/s (probe every 50 ms):", "",
            f"- classified by the router's fast tier while the classifier was down: **{k['down_by_router_fast']} of {k['down_probes']}** probes"
            + (f" ({100 * k['down_by_router_fast'] / k['down_probes']:.1f} %)" if k['down_probes'] else "")
            + f", {k['down_fail_open']} failed open; decisions of the whole phase's load by source: "
            + ", ".join(f"{s} {v}" for s, v in sorted(k['load_sources'].items())),
            f"- every request answered (fast tier or fail-open) in under {k['fast_ms']:g} ms from **{fmt(k['fail_open_fast_after_s'])} s** after the kill (slowest probe after that: {fmt(k['down_probe_max_ms'], 1)} ms)",
            f"- from 1 s after the kill until the restart: {k['after_1s']} probes, {k['after_1s_not_fail_open']} not failed open (the fast tier's), {k['after_1s_slow']} took {k['fast_ms']:g} ms or more, the slowest {fmt(k['after_1s_max_ms'], 1)} ms (the deadline is 50 ms)",
            f"- restarted (process spawned) at +{k['restarted_at'] - k['killed_at']:.1f} s, /healthz 200 {k['healthy_at'] - k['restarted_at']:.2f} s later; 9 of 10 consecutive probes classified by the classifier again **{fmt(k['classified_again_after_restart_s'])} s** after the spawn ({fmt(k['classified_again_after_healthy_s'])} s after /healthz)",
            f"- load: {lg['ok']} answered, {kfailed} failed; probes: {k['probes']}, {k['probe_errors']} not 200", ""]
    text = "\n".join(out) + "\n"
    with open(path, "w") as f:
        f.write(text)
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--capacity", type=float, default=320.0, help="classifier texts/s (its bench)")
    ap.add_argument("--rates", default="150", help="fixed rates besides 2x capacity")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--kill-rate", type=float, default=100.0)
    ap.add_argument("--out", default=os.path.join(ROOT, "loadtest", "DECISION.md"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--phases", default="rates,kill")
    ap.add_argument("--config", help="router config (default: the embedded one)")
    ap.add_argument("--prompts", help="JSONL of prompts (a \"text\" field) sent in turn instead of one template")
    args = ap.parse_args()
    started = datetime.datetime.now(datetime.timezone.utc)
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "router-svc", "-p",
                        "loadtest", "-p", "classifier-svc"], check=True, cwd=ROOT)
    work = tempfile.mkdtemp(prefix="semroute-decision-")
    log(f"logs in {work}")
    procs = Procs(work)
    try:
        st = Stack(procs, INSTANT_SIM, router_env={"RUST_LOG": "info"},
                   router_args=["--config", args.config] if args.config else ())
        http_post(f"{st.router}/v1/route", chat_body("auto", "warm-up"))
        rates = [float(r) for r in args.rates.split(",") if r] + [2 * args.capacity]
        phases = [rate_phase(st, work, r, args.seconds,
                             "2x capacity" if r == 2 * args.capacity else "fixed", args.prompts)
                  for r in rates] if "rates" in args.phases else []
        kill = kill_phase(st, procs, work, args.kill_rate) if "kill" in args.phases else None
    finally:
        procs.stop_all()
    print(write(args.out, args, phases, kill, started))


if __name__ == "__main__":
    main()
