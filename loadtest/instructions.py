"""User-space instructions per request of router-svc on the cache-hit path, counted by valgrind's
callgrind: repeatable to a fraction of a percent whatever else the machine does (CPU time per
request moves by +-10 % between runs here), so each per-request cut can be measured alone.

  python3 loadtest/instructions.py target/release/router-svc base     # explicit model, then auto
  python3 loadtest/instructions.py /tmp/other/router-svc after auto

The stack is bench.py's (redis-server, classifier-svc, vllm-sim answering at once); router-svc
runs under callgrind; loadgen sends 40 req/s over 4 keep-alive connections (as a loaded router
sees them: one connection set-up amortised over many requests): 80 to warm up, then the counters
are zeroed and 200 are counted. Kernel time (about half of a request's CPU) is not in these counts.
Needs: valgrind (apt-get install valgrind), the release build.
"""
import glob
import os
import subprocess
import sys
import tempfile
import time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench
exe = os.path.abspath(sys.argv[1]); tag = sys.argv[2]
models = sys.argv[3].split(",") if len(sys.argv) > 3 else ["qwen3-0.6b", "auto"]
d = tempfile.mkdtemp(prefix=f"cg-{tag}-")
for b in ("classifier-svc", "vllm-sim", "loadgen"):
    os.symlink(os.path.join(bench.ROOT, "target", "release", b), f"{d}/{b}")
with open(f"{d}/router-svc", "w") as f:
    f.write(f"#!/bin/sh\nexec valgrind --tool=callgrind --compress-strings=no --compress-pos=no --callgrind-out-file={d}/cg.out {exe} \"$@\"\n")
os.chmod(f"{d}/router-svc", 0o755)
bench.BIN = d
work = tempfile.mkdtemp(prefix="cgw-")
procs = bench.Procs(work)
try:
    st = bench.Stack(procs, bench.INSTANT_SIM)
    bench.warm_cache(st.router)
    pid = st.router_proc.pid
    for model in models:
        bench.loadgen(f"{st.router}/v1/chat/completions", bench.chat_body(model), os.path.join(work, "w.json"), rate=40, seconds=2, warmup=0, connections=4)
        subprocess.run(["callgrind_control", "-z", str(pid)], stdout=subprocess.DEVNULL)
        r = bench.loadgen(f"{st.router}/v1/chat/completions", bench.chat_body(model), os.path.join(work, "m.json"), rate=40, seconds=5, warmup=0, connections=4)
        before = set(glob.glob(f"{d}/cg.out*"))
        subprocess.run(["callgrind_control", "-d", str(pid)], stdout=subprocess.DEVNULL)
        time.sleep(1)
        new = sorted(set(glob.glob(f"{d}/cg.out*")) - before, key=os.path.getmtime)
        ir = 0
        for line in open(new[-1]):
            if line.startswith("summary:") or line.startswith("totals:"):
                ir = int(line.split()[1]); break
        n = r["ok"]
        print(f"{tag} {model}: {ir / max(n,1) / 1000:.1f} k instructions/request ({n} ok, {r['http_errors']} errors) file {new[-1]}", flush=True)
finally:
    procs.stop_all()
