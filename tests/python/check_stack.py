#!/usr/bin/env python3
"""Static checks of the docker-compose stack (there is no Docker engine where the tests run).

    python3 tests/python/check_stack.py

Checks that docker-compose.yml parses and names the services the stack needs; every image tag is
pinned (compose and Dockerfile); every bind-mounted host path exists; Prometheus' rule files and
scrape targets resolve to mounted files and compose services, and `promtool check config` passes
on a copy laid out as in the container; the collector's pipelines name defined components and its
exporters name compose services; Grafana's provisioned datasources have the uids the dashboards
use and its dashboard provider reads the mounted dashboards folder; the Dockerfile is multi-stage
and runs as a non-root user. Prints every failure and exits 1 if there is any.

Needs PyYAML (`pip install pyyaml` or `apt-get install python3-yaml`) and promtool (Debian
package `prometheus`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

try:
    import yaml
except ImportError:
    print(
        "check_stack.py needs PyYAML: pip install pyyaml (or apt-get install python3-yaml)",
        file=sys.stderr,
    )
    sys.exit(2)

ROOT = Path(__file__).resolve().parents[2]
REQUIRED_SERVICES = {"llm-meter", "otel-collector", "prometheus", "tempo", "grafana"}
DATASOURCE_UIDS = {"prometheus", "tempo"}

failures: list[str] = []


def fail(msg: str) -> None:
    failures.append(msg)


def load_yaml(path: Path):
    try:
        with path.open() as f:
            return yaml.safe_load(f)
    except FileNotFoundError:
        fail(f"{path.relative_to(ROOT)}: missing")
    except yaml.YAMLError as e:
        fail(f"{path.relative_to(ROOT)}: does not parse: {e}")
    return None


def image_pinned(image: str) -> bool:
    """`name:tag` with a tag other than latest, or a digest."""
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    tag = last.rsplit(":", 1)[1]
    return bool(tag) and tag != "latest" and "$" not in tag


def mounts(service: dict) -> list[tuple[str, str]]:
    """(host path, container path) of the bind mounts of a compose service."""
    out = []
    for v in service.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            if len(parts) >= 2 and (parts[0].startswith(".") or parts[0].startswith("/")):
                out.append((parts[0], parts[1]))
        elif isinstance(v, dict) and v.get("type", "bind") == "bind" and "source" in v:
            out.append((v["source"], v["target"]))
    return out


def host_path(p: str) -> Path:
    return (ROOT / p).resolve() if not p.startswith("/") else Path(p)


def container_file(service: dict, container_path: str) -> Path | None:
    """The host file that a container path of `service` maps to, through its bind mounts."""
    best = None
    for host, target in mounts(service):
        t = target.rstrip("/")
        if container_path == t or container_path.startswith(t + "/"):
            if best is None or len(t) > len(best[1]):
                best = (host, t)
    if best is None:
        return None
    rest = container_path[len(best[1]):].lstrip("/")
    return host_path(best[0]) / rest if rest else host_path(best[0])


def flag(args: list[str], name: str) -> str | None:
    """Value of `--name=value`, `-name=value` or `--name value` in a command list."""
    for i, a in enumerate(args):
        for prefix in (f"--{name}=", f"-{name}="):
            if a.startswith(prefix):
                return a[len(prefix):]
        if a in (f"--{name}", f"-{name}") and i + 1 < len(args):
            return args[i + 1]
    return None


def command(service: dict) -> list[str]:
    c = service.get("command") or []
    return c.split() if isinstance(c, str) else [str(x) for x in c]


def host_port(endpoint: str) -> tuple[str, int | None]:
    u = urlparse(endpoint if "://" in endpoint else f"//{endpoint}")
    return u.hostname or "", u.port


# ---- docker-compose.yml -------------------------------------------------------------------------

compose = load_yaml(ROOT / "docker-compose.yml")
if not isinstance(compose, dict) or not isinstance(compose.get("services"), dict):
    fail("docker-compose.yml: no services")
    compose = {"services": {}}
services: dict = compose["services"]
names = set(services)
for missing in sorted(REQUIRED_SERVICES - names):
    fail(f"docker-compose.yml: no service {missing!r}")

for name, svc in services.items():
    if "image" in svc:
        if not image_pinned(str(svc["image"])):
            fail(f"docker-compose.yml: service {name}: image {svc['image']!r} has no pinned tag")
    elif "build" not in svc:
        fail(f"docker-compose.yml: service {name}: neither image nor build")
    for host, target in mounts(svc):
        if not host_path(host).exists():
            fail(f"docker-compose.yml: service {name}: mounted host path {host} (-> {target}) does not exist")
    deps = svc.get("depends_on") or []
    for d in deps if isinstance(deps, list) else list(deps):
        if d not in names:
            fail(f"docker-compose.yml: service {name} depends on unknown service {d!r}")

# ---- llm-meter service --------------------------------------------------------------------------

meter = services.get("llm-meter", {})
meter_cmd = command(meter)
metrics_listen = flag(meter_cmd, "metrics-listen")
meter_port = None
if not meter_cmd or meter_cmd[0] != "demo" or "--forever" not in meter_cmd:
    fail(f"docker-compose.yml: llm-meter should run `demo --forever`, runs {meter_cmd}")
if not metrics_listen or not metrics_listen.startswith("0.0.0.0:"):
    fail("docker-compose.yml: llm-meter needs --metrics-listen 0.0.0.0:PORT (reachable from Prometheus)")
else:
    meter_port = int(metrics_listen.rsplit(":", 1)[1])
env = meter.get("environment") or {}
if isinstance(env, list):
    env = dict(e.split("=", 1) for e in env)
otlp = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
otlp_host, otlp_port = host_port(otlp) if otlp else ("", None)
if otlp_host != "otel-collector":
    fail(f"docker-compose.yml: llm-meter OTEL_EXPORTER_OTLP_ENDPOINT {otlp!r} does not name the otel-collector service")
if "OTEL_SERVICE_NAME" not in env:
    fail("docker-compose.yml: llm-meter sets no OTEL_SERVICE_NAME")

# ---- Dockerfile ---------------------------------------------------------------------------------

dockerfile = ROOT / "Dockerfile"
if "build" in meter:
    build = meter["build"]
    ctx = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = ROOT / ctx / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
if not dockerfile.exists():
    fail(f"{dockerfile.relative_to(ROOT)}: missing")
else:
    lines = [l.strip() for l in dockerfile.read_text().splitlines() if l.strip() and not l.strip().startswith("#")]
    froms = [l.split()[1] for l in lines if l.upper().startswith("FROM ")]
    stages = {l.split()[3].lower() for l in lines if l.upper().startswith("FROM ") and len(l.split()) >= 4}
    if len(froms) < 2:
        fail("Dockerfile: not multi-stage")
    for img in froms:
        if img.lower() not in stages and not image_pinned(img):
            fail(f"Dockerfile: base image {img!r} has no pinned tag")
    users = [l.split(None, 1)[1] for l in lines if l.upper().startswith("USER ")]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        fail("Dockerfile: the final stage must run as a non-root USER")
    if not any(l.upper().startswith("EXPOSE ") and str(meter_port or 9464) in l.split() for l in lines):
        fail(f"Dockerfile: does not EXPOSE {meter_port or 9464}")
    entry = [l for l in lines if l.upper().startswith("ENTRYPOINT ")]
    if not entry or "llm-meter" not in entry[-1]:
        fail("Dockerfile: ENTRYPOINT should run llm-meter")
    if not (ROOT / ".dockerignore").exists():
        fail(".dockerignore: missing (the build context would include target/)")
    elif "target" not in (ROOT / ".dockerignore").read_text():
        fail(".dockerignore: does not exclude target/")

# ---- Prometheus ---------------------------------------------------------------------------------

prom = services.get("prometheus", {})
prom_cmd = command(prom)
prom_config_path = flag(prom_cmd, "config.file") or "/etc/prometheus/prometheus.yml"
prom_config_host = container_file(prom, prom_config_path)
prom_config = None
if prom_config_host is None:
    fail(f"docker-compose.yml: prometheus config {prom_config_path} is not mounted")
else:
    prom_config = load_yaml(prom_config_host)

if isinstance(prom_config, dict):
    scrape_interval = (prom_config.get("global") or {}).get("scrape_interval", "1m")
    m = re.fullmatch(r"(\d+)s", str(scrape_interval))
    if not m or int(m.group(1)) > 15:
        fail(f"{prom_config_host.relative_to(ROOT)}: scrape_interval {scrape_interval} (want 15s or less)")
    config_dir = os.path.dirname(prom_config_path)
    rule_files = prom_config.get("rule_files") or []
    if not rule_files:
        fail(f"{prom_config_host.relative_to(ROOT)}: no rule_files")
    alert_rules_mounted = False
    for rf in rule_files:
        cpath = rf if rf.startswith("/") else os.path.normpath(os.path.join(config_dir, rf))
        hf = container_file(prom, cpath)
        if hf is None or not hf.exists():
            fail(f"{prom_config_host.relative_to(ROOT)}: rule file {rf} ({cpath} in the container) is not mounted")
        elif hf.resolve() == (ROOT / "dashboards" / "alerts.yml").resolve():
            alert_rules_mounted = True
    if not alert_rules_mounted:
        fail("prometheus: dashboards/alerts.yml is not among the loaded rule files")
    scrapes_meter = False
    for job in prom_config.get("scrape_configs") or []:
        for sc in job.get("static_configs") or []:
            for t in sc.get("targets") or []:
                host, port = host_port(t)
                if host not in names:
                    fail(f"{prom_config_host.relative_to(ROOT)}: job {job.get('job_name')}: target {t} is not a compose service")
                if host == "llm-meter":
                    scrapes_meter = True
                    if port != meter_port:
                        fail(f"{prom_config_host.relative_to(ROOT)}: scrapes llm-meter on port {port}, it listens on {meter_port}")
                    if job.get("job_name") != "llm-meter":
                        fail(f"{prom_config_host.relative_to(ROOT)}: the job scraping llm-meter should be named llm-meter")
    if not scrapes_meter:
        fail(f"{prom_config_host.relative_to(ROOT)}: does not scrape llm-meter")

    # promtool check config on a copy laid out as in the container (relative rule paths resolve).
    promtool = shutil.which("promtool")
    if promtool is None:
        fail("promtool not found (Debian package prometheus): cannot check the Prometheus config")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for host, target in mounts(prom):
                src = host_path(host)
                dst = Path(tmp) / target.lstrip("/")
                if src.is_dir():
                    shutil.copytree(src, dst)
                elif src.exists():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(src, dst)
            cfg = Path(tmp) / prom_config_path.lstrip("/")
            r = subprocess.run([promtool, "check", "config", str(cfg)], capture_output=True, text=True)
            if r.returncode != 0:
                fail("promtool check config failed:\n" + (r.stdout + r.stderr).strip())

# ---- OpenTelemetry Collector --------------------------------------------------------------------

col = services.get("otel-collector", {})
col_cmd = command(col)
col_config_path = flag(col_cmd, "config")
col_config = None
if not col_config_path:
    fail("docker-compose.yml: otel-collector has no --config")
else:
    hf = container_file(col, col_config_path)
    if hf is None:
        fail(f"docker-compose.yml: otel-collector config {col_config_path} is not mounted")
    else:
        col_config = load_yaml(hf)
        col_rel = hf.relative_to(ROOT)

tempo_cfg = None
tempo = services.get("tempo", {})
tempo_config_path = flag(command(tempo), "config.file")
if not tempo_config_path:
    fail("docker-compose.yml: tempo has no -config.file")
else:
    hf = container_file(tempo, tempo_config_path)
    if hf is None:
        fail(f"docker-compose.yml: tempo config {tempo_config_path} is not mounted")
    else:
        tempo_cfg = load_yaml(hf)

if isinstance(col_config, dict):
    svc = col_config.get("service") or {}
    for ext in svc.get("extensions") or []:
        if ext not in (col_config.get("extensions") or {}):
            fail(f"{col_rel}: service extension {ext} is not defined")
    pipelines = (svc.get("pipelines") or {})
    if not any(p.split("/")[0] == "traces" for p in pipelines):
        fail(f"{col_rel}: no traces pipeline")
    for pname, p in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            for comp in p.get(kind) or []:
                if comp not in (col_config.get(kind) or {}):
                    fail(f"{col_rel}: pipeline {pname}: {kind[:-1]} {comp} is not defined")
        if not p.get("receivers") or not p.get("exporters"):
            fail(f"{col_rel}: pipeline {pname} needs receivers and exporters")
    receivers = col_config.get("receivers") or {}
    grpc = ((receivers.get("otlp") or {}).get("protocols") or {}).get("grpc") or {}
    _, grpc_port = host_port(grpc.get("endpoint", "0.0.0.0:4317"))
    http = ((receivers.get("otlp") or {}).get("protocols") or {}).get("http") or {}
    _, http_port = host_port(http.get("endpoint", "0.0.0.0:4318"))
    proto = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    want = grpc_port if proto == "grpc" else http_port
    if otlp_port != want:
        fail(f"llm-meter sends OTLP ({proto}) to port {otlp_port}; the collector's otlp {proto} receiver is on {want}")
    trace_exporters = [e for p, v in pipelines.items() if p.split("/")[0] == "traces" for e in v.get("exporters") or []]
    for ename, e in (col_config.get("exporters") or {}).items():
        endpoint = (e or {}).get("endpoint")
        if not endpoint:
            continue
        host, port = host_port(str(endpoint))
        if ename.split("/")[0] == "prometheus":
            if host not in ("0.0.0.0", "", "localhost"):
                fail(f"{col_rel}: exporter {ename} should listen on 0.0.0.0, has {endpoint}")
            continue
        if host not in names:
            fail(f"{col_rel}: exporter {ename} endpoint {endpoint} is not a compose service")
        if host == "tempo" and isinstance(tempo_cfg, dict):
            protos = (((tempo_cfg.get("distributor") or {}).get("receivers") or {}).get("otlp") or {}).get("protocols") or {}
            tp = (protos.get("grpc") or {}).get("endpoint", "0.0.0.0:4317") if "grpc" in protos else None
            if tp is None or host_port(tp)[1] != port:
                fail(f"{col_rel}: exporter {ename} sends to tempo:{port}; tempo's OTLP gRPC receiver is {tp}")
    if not any(e.split("/")[0] in ("otlp", "otlp_grpc") and "tempo" in str((col_config["exporters"].get(e) or {}).get("endpoint", "")) for e in trace_exporters):
        fail(f"{col_rel}: the traces pipeline does not export to tempo over OTLP")

# ---- Grafana ------------------------------------------------------------------------------------

graf = services.get("grafana", {})
gmounts = mounts(graf)
prov = container_file(graf, "/etc/grafana/provisioning")
if prov is None or not prov.is_dir():
    fail("docker-compose.yml: grafana has no provisioning directory mounted at /etc/grafana/provisioning")
else:
    ds_uids = {}
    for f in sorted((prov / "datasources").glob("*.y*ml")):
        doc = load_yaml(f) or {}
        for ds in doc.get("datasources") or []:
            ds_uids[ds.get("uid")] = ds
            host, port = host_port(ds.get("url", ""))
            if host not in names:
                fail(f"{f.relative_to(ROOT)}: datasource {ds.get('name')} url {ds.get('url')} is not a compose service")
            if ds.get("type") == "tempo" and isinstance(tempo_cfg, dict):
                tport = (tempo_cfg.get("server") or {}).get("http_listen_port", 3200)
                if port != tport:
                    fail(f"{f.relative_to(ROOT)}: tempo datasource port {port}, tempo listens on {tport}")
            if ds.get("type") == "prometheus" and port != 9090:
                fail(f"{f.relative_to(ROOT)}: prometheus datasource port {port} (Prometheus listens on 9090)")
    for uid in sorted(DATASOURCE_UIDS - set(ds_uids)):
        fail(f"grafana provisioning: no datasource with uid {uid!r}")
    if ds_uids.get("prometheus", {}).get("type") != "prometheus":
        fail("grafana provisioning: datasource uid prometheus is not of type prometheus")
    if ds_uids.get("tempo", {}).get("type") != "tempo":
        fail("grafana provisioning: datasource uid tempo is not of type tempo")
    # Every fixed datasource uid the dashboards use must be provisioned.
    for dash in sorted((ROOT / "dashboards").glob("*.json")):
        text = dash.read_text()
        for uid in set(re.findall(r'"(?:uid|datasourceUid)"\s*:\s*"([^"$]+)"', text)) - {"-- Grafana --"}:
            if uid.startswith("llm-meter"):
                continue  # the dashboard's own uid
            if uid not in ds_uids:
                fail(f"dashboards/{dash.name}: datasource uid {uid!r} is not provisioned")
        for uid in set(re.findall(r'%22uid%22%3A%22([A-Za-z0-9_-]+)%22', text)):
            if uid not in ds_uids:
                fail(f"dashboards/{dash.name}: link to datasource uid {uid!r}, not provisioned")

    dash_mount = [t for h, t in gmounts if host_path(h) == (ROOT / "dashboards").resolve()]
    if not dash_mount:
        fail("docker-compose.yml: grafana does not mount ./dashboards")
    providers = []
    for f in sorted((prov / "dashboards").glob("*.y*ml")):
        providers += (load_yaml(f) or {}).get("providers") or []
    if not providers:
        fail("grafana provisioning: no dashboard provider")
    for p in providers:
        path = ((p.get("options") or {}).get("path") or "").rstrip("/")
        if p.get("type", "file") != "file":
            continue
        if path not in [t.rstrip("/") for t in dash_mount]:
            fail(f"grafana provisioning: dashboard provider {p.get('name')} reads {path}, "
                 f"the dashboards are mounted at {dash_mount}")
    genv = graf.get("environment") or {}
    if isinstance(genv, list):
        genv = dict(e.split("=", 1) for e in genv)
    home = genv.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        hf = container_file(graf, home)
        if hf is None or not hf.exists():
            fail(f"docker-compose.yml: grafana home dashboard {home} is not a mounted file")
    if not (ROOT / "dashboards").glob("*.json"):
        fail("dashboards/: no dashboards")
    for dash in sorted((ROOT / "dashboards").glob("*.json")):
        try:
            json.loads(dash.read_text())
        except json.JSONDecodeError as e:
            fail(f"dashboards/{dash.name}: not JSON: {e}")

# ---- proxy replicas on the shared Redis ledger ---------------------------------------------------

import tomllib  # noqa: E402  (Python 3.11+)

redis_svc = services.get("redis")
if redis_svc is None:
    fail("docker-compose.yml: no service 'redis' (the proxy replicas' shared ledger)")
elif "--appendonly" not in command(redis_svc) or flag(command(redis_svc), "appendonly") != "yes":
    fail("docker-compose.yml: redis should run with --appendonly yes (budgets survive a Redis restart)")
replicas = [n for n, svc in services.items() if command(svc)[:1] == ["proxy"]]
if len(replicas) < 2:
    fail(f"docker-compose.yml: want two or more proxy replicas, found {replicas}")
scraped = set()
if isinstance(prom_config, dict):
    for job in prom_config.get("scrape_configs") or []:
        for sc in job.get("static_configs") or []:
            scraped |= {host_port(t)[0] for t in sc.get("targets") or []}
for name in replicas:
    svc = services[name]
    cfg_path = flag(command(svc), "config")
    hf = container_file(svc, cfg_path) if cfg_path else None
    if hf is None or not hf.exists():
        fail(f"docker-compose.yml: {name}: --config {cfg_path} is not a mounted file")
        continue
    try:
        cfg = tomllib.loads(hf.read_text())
    except tomllib.TOMLDecodeError as e:
        fail(f"{hf.relative_to(ROOT)}: not TOML: {e}")
        continue
    url = (cfg.get("ledger") or {}).get("redis", "")
    host, _ = host_port(url)
    if host != "redis":
        fail(f"{hf.relative_to(ROOT)}: [ledger] redis {url!r} does not name the redis service")
    if "redis" not in (svc.get("depends_on") or []):
        fail(f"docker-compose.yml: {name} does not depend on redis")
    upstream_host, _ = host_port(cfg.get("upstream", ""))
    if upstream_host not in names:
        fail(f"{hf.relative_to(ROOT)}: upstream {cfg.get('upstream')!r} is not a compose service")
    if not str(cfg.get("metrics_listen", "")).startswith("0.0.0.0:"):
        fail(f"{hf.relative_to(ROOT)}: metrics_listen should be 0.0.0.0:PORT (reachable from Prometheus)")
    if name not in scraped:
        fail(f"prometheus: replica {name} is not scraped")

# ---- report -------------------------------------------------------------------------------------

if failures:
    print(f"check_stack: {len(failures)} failure(s):")
    for f in failures:
        print(f"  - {f}")
    sys.exit(1)
print(f"check_stack: ok ({len(services)} services; images pinned; mounts, Prometheus, collector, "
      "Tempo and Grafana provisioning consistent; promtool check config passed)")
