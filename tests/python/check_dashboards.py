#!/usr/bin/env python3
"""Lint of the Grafana dashboards and Prometheus alert rules in dashboards/.

    python3 tests/python/check_dashboards.py [--skip-promtool-tests]

Dashboards (dashboards/*.json): schemaVersion >= 41, a short fixed uid, "id": null, no __inputs;
a `datasource` variable of type datasource (prometheus); job, use_case, provider and model
variables from label_values() (".*" as the All value); every panel (rows and collapsed rows
included) and every target on ${datasource}; every panel with a description and a unit, of a
known type; every range window $__rate_interval ($__range allowed in instant targets, for totals
over the range); counters only inside rate/increase; histogram buckets only inside
histogram_quantile(sum by (le, ...)) and never averaged; only defined variables; links between
all the dashboards; the use case dashboard links to its traces in Tempo.

Alert rules (dashboards/alerts.yml): every alert has a severity, summary, description,
runbook_url (an anchor that exists in docs/runbooks.md) and dashboard_url (a /d/<uid> of one of
the dashboards, with var-<name> parameters it defines); every alert fires in some promtool test
and is asserted quiet in another. Then runs `promtool check rules` and `promtool test rules`.

Prints every failure and exits 1 if there is any. Needs PyYAML (pip install pyyaml) and promtool.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

try:
    import yaml
except ImportError:
    print(
        "check_dashboards.py needs PyYAML: pip install pyyaml (or apt-get install python3-yaml)",
        file=sys.stderr,
    )
    sys.exit(2)

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
RULES = DASHBOARDS / "alerts.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
RUNBOOK_BASE = "https://github.com/llm-meter/llm-meter/blob/main/docs/runbooks.md#"
DS = {"type": "prometheus", "uid": "${datasource}"}
PANEL_TYPES = {"timeseries", "stat", "table", "bargauge", "gauge"}
REQUIRED_VARS = ("job", "use_case", "provider", "model")
BUILTIN_VARS = {"__rate_interval", "__range", "__interval", "__from", "__to", "__url_time_range",
                "__field", "__series", "__value", "__all", "__dashboard", "__org", "__user",
                "__range_s", "__range_ms", "__interval_ms", "__timeFilter"}
SEVERITIES = {"info", "warning", "critical"}
COUNTER_SUFFIXES = ("_total", "_count", "_sum", "_bucket")
COUNTER_FUNCS = ("rate", "irate", "increase")

failures: list[str] = []


def fail(msg: str) -> None:
    failures.append(msg)


def strip_strings(expr: str) -> str:
    """The expression with string literals blanked (so brackets in regexes are not windows)."""
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)


def call_spans(expr: str, func: str) -> list[tuple[int, int]]:
    """(start, end) of the argument list of every call of `func` in `expr`."""
    spans = []
    for m in re.finditer(rf"\b{func}\s*\(", expr):
        depth, i = 0, m.end() - 1
        while i < len(expr):
            if expr[i] == "(":
                depth += 1
            elif expr[i] == ")":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        spans.append((m.end(), i))
    return spans


def inside(pos: int, spans) -> bool:
    return any(a <= pos < b for a, b in spans)


def all_panels(panels):
    for p in panels or []:
        yield p
        if p.get("type") == "row":
            yield from all_panels(p.get("panels"))


def check_expr(where: str, expr: str, instant: bool, variables: set[str]) -> None:
    e = strip_strings(expr)
    for w in re.findall(r"\[([^\]]*)\]", e):
        allowed = {"$__rate_interval"} | ({"$__range"} if instant else set())
        if w.strip() not in allowed:
            fail(f"{where}: window [{w}] (want $__rate_interval{', or $__range for a total' if instant else ''})")
    counter_spans = [s for f in COUNTER_FUNCS for s in call_spans(e, f)]
    hq_spans = call_spans(e, "histogram_quantile")
    for m in re.finditer(r"\b([a-zA-Z_][a-zA-Z0-9_]*(?:_total|_count|_sum|_bucket))\b", e):
        if not inside(m.start(), counter_spans):
            fail(f"{where}: counter {m.group(1)} outside rate()/increase()")
        if m.group(1).endswith("_bucket"):
            if not inside(m.start(), hq_spans):
                fail(f"{where}: {m.group(1)} outside histogram_quantile()")
    for a, b in hq_spans:
        arg = e[a:b]
        m = re.search(r"\bsum\s+by\s*\(([^)]*)\)", arg)
        if not m or "le" not in [x.strip() for x in m.group(1).split(",")]:
            fail(f"{where}: histogram_quantile() without sum by (le, ...)")
    for f in ("avg", "avg_over_time"):
        for a, b in call_spans(e, f):
            if "_bucket" in e[a:b]:
                fail(f"{where}: {f}() over histogram buckets")
    if re.search(r"\bavg\s+(by|without)\s*\([^)]*\)\s*\([^;]*_bucket", e):
        fail(f"{where}: avg over histogram buckets")
    for v in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", expr):
        if v not in variables and v not in BUILTIN_VARS:
            fail(f"{where}: uses undefined variable ${v}")


def dashboard_links(d: dict) -> tuple[set[str], set[str]]:
    """(tags linked, uids linked) by the dashboard's links."""
    tags, uids = set(), set()
    for link in d.get("links") or []:
        if link.get("type") == "dashboards":
            tags |= set(link.get("tags") or [])
        m = re.match(r"^/d/([^/?]+)", link.get("url") or "")
        if m:
            uids.add(m.group(1))
    return tags, uids


def tempo_traceql_links(d: dict) -> list[str]:
    """TraceQL queries of links (dashboard, panel and data links) to Explore on uid tempo."""
    out = []
    urls = [l.get("url", "") for l in d.get("links") or []]
    for p in all_panels(d.get("panels")):
        urls += [l.get("url", "") for l in p.get("links") or []]
        urls += [l.get("url", "") for l in ((p.get("fieldConfig") or {}).get("defaults") or {}).get("links") or []]
    for u in urls:
        if not u.startswith("/explore"):
            continue
        panes = parse_qs(urlparse(u).query).get("panes")
        if not panes:
            continue
        try:
            doc = json.loads(unquote(panes[0]) if panes[0].startswith("%") else panes[0])
        except json.JSONDecodeError:
            fail(f"{d.get('uid')}: Explore link whose panes parameter is not JSON: {u[:80]}...")
            continue
        for pane in doc.values():
            for q in pane.get("queries") or []:
                if (q.get("datasource") or {}).get("uid") == "tempo" and q.get("queryType") == "traceql":
                    out.append(q.get("query", ""))
    return out


# ---- dashboards ---------------------------------------------------------------------------------

dashboards: dict[str, dict] = {}
for path in sorted(DASHBOARDS.glob("*.json")):
    name = path.name
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        fail(f"{name}: not JSON: {e}")
        continue
    uid = d.get("uid")
    dashboards[name] = d
    if not isinstance(uid, str) or not re.fullmatch(r"[a-z0-9-]{1,40}", uid):
        fail(f"{name}: uid {uid!r} (want a fixed short uid, lower-case, at most 40 characters)")
    if d.get("id", "missing") is not None:
        fail(f"{name}: id must be null")
    if "__inputs" in d or "__requires" in d:
        fail(f"{name}: has __inputs/__requires (an export for UI import; file provisioning needs the datasource variable)")
    if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 41:
        fail(f"{name}: schemaVersion {d.get('schemaVersion')} (want >= 41)")
    if not d.get("title"):
        fail(f"{name}: no title")

    variables = {v.get("name"): v for v in (d.get("templating") or {}).get("list") or []}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        fail(f"{name}: needs a variable `datasource` of type datasource with query prometheus")
    if sum(1 for v in variables.values() if v.get("type") == "datasource") != 1:
        fail(f"{name}: exactly one datasource variable expected")
    for vn in REQUIRED_VARS:
        v = variables.get(vn)
        if not v:
            fail(f"{name}: no variable {vn}")
            continue
        q = v.get("query")
        qs = q.get("query") if isinstance(q, dict) else q
        if v.get("type") != "query" or not isinstance(qs, str) or not qs.startswith("label_values("):
            fail(f"{name}: variable {vn} must be a query variable from label_values(...)")
        if v.get("datasource") != DS:
            fail(f"{name}: variable {vn} must query ${{datasource}}")
        if v.get("includeAll") and v.get("allValue") != ".*":
            fail(f"{name}: variable {vn} includes All but its allValue is not .* (regex matchers would not match all)")
    for vn, v in variables.items():
        if v.get("type") == "query":
            q = v.get("query")
            qs = (q.get("query") if isinstance(q, dict) else q) or ""
            for ref in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", qs):
                if ref not in variables:
                    fail(f"{name}: variable {vn} uses undefined variable ${ref}")

    ids = []
    for p in all_panels(d.get("panels")):
        title = p.get("title") or "(untitled)"
        where = f"{name}: panel {title!r}"
        ids.append(p.get("id"))
        if "gridPos" not in p:
            fail(f"{where}: no gridPos")
        if p.get("type") == "row":
            if p.get("datasource") not in (None, DS):
                fail(f"{where}: row datasource must be ${{datasource}} if set")
            if not p.get("collapsed") and p.get("panels"):
                fail(f"{where}: an expanded row keeps its panels at the top level, not in `panels`")
            continue
        if p.get("type") not in PANEL_TYPES:
            fail(f"{where}: type {p.get('type')!r} (want one of {sorted(PANEL_TYPES)})")
        if p.get("datasource") != DS:
            fail(f"{where}: datasource {p.get('datasource')} (want {DS})")
        if not (p.get("description") or "").strip():
            fail(f"{where}: no description (the question the panel answers)")
        if not (((p.get("fieldConfig") or {}).get("defaults") or {}).get("unit") or ""):
            fail(f"{where}: no unit (fieldConfig.defaults.unit)")
        targets = p.get("targets") or []
        if not targets:
            fail(f"{where}: no targets")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or not all(refs):
            fail(f"{where}: refIds must be set and unique, got {refs}")
        for t in targets:
            tw = f"{where} target {t.get('refId')}"
            if t.get("datasource") != DS:
                fail(f"{tw}: datasource {t.get('datasource')} (want {DS})")
            if not (t.get("expr") or "").strip():
                fail(f"{tw}: no expr")
                continue
            instant = bool(t.get("instant")) and not t.get("range")
            if p.get("type") in ("stat", "table", "bargauge", "gauge") and "$__range" in t["expr"] and not instant:
                fail(f"{tw}: a total over $__range must be an instant query")
            check_expr(tw, t["expr"], instant, set(variables))
    if len(set(ids)) != len(ids) or None in ids:
        fail(f"{name}: panel ids must be set and unique")

uids = {d.get("uid"): name for name, d in dashboards.items()}
for name, d in dashboards.items():
    tags, linked = dashboard_links(d)
    for other_name, other in dashboards.items():
        if other_name == name:
            continue
        if other.get("uid") not in linked and not (tags & set(other.get("tags") or [])):
            fail(f"{name}: does not link to {other_name} (a tags link or a /d/{other.get('uid')} link)")

uc = next((d for d in dashboards.values() if d.get("uid") == "llm-meter-use-case"), None)
if uc is None:
    fail("no use case drill-down dashboard (uid llm-meter-use-case)")
else:
    queries = tempo_traceql_links(uc)
    if not any('span."use_case.name"' in q and "use_case" in q.split("=", 1)[-1] for q in queries):
        fail('use-case dashboard: no link to Explore on datasource uid tempo with TraceQL { span."use_case.name" = "$use_case" }')

if len(dashboards) < 4:
    fail(f"dashboards/: {len(dashboards)} dashboards, want overview, cost-budgets, ratelimits-latency, use-case")

# ---- alert rules --------------------------------------------------------------------------------


def github_anchors(markdown: str) -> set[str]:
    anchors = set()
    for line in markdown.splitlines():
        m = re.match(r"^#{1,6}\s+(.*)$", line)
        if m:
            a = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            anchors.add(a)
    return anchors


anchors = github_anchors(RUNBOOKS.read_text()) if RUNBOOKS.exists() else set()
if not RUNBOOKS.exists():
    fail("docs/runbooks.md: missing")

alerts: set[str] = set()
try:
    rules_doc = yaml.safe_load(RULES.read_text())
except (OSError, yaml.YAMLError) as e:
    fail(f"dashboards/alerts.yml: {e}")
    rules_doc = {}
for group in (rules_doc or {}).get("groups") or []:
    for rule in group.get("rules") or []:
        if "alert" not in rule:
            continue
        an = rule["alert"]
        alerts.add(an)
        where = f"alerts.yml: {an}"
        sev = (rule.get("labels") or {}).get("severity")
        if sev not in SEVERITIES:
            fail(f"{where}: labels.severity {sev!r} (want one of {sorted(SEVERITIES)})")
        ann = rule.get("annotations") or {}
        for key in ("summary", "description", "runbook_url", "dashboard_url"):
            if not (ann.get(key) or "").strip():
                fail(f"{where}: no annotation {key}")
        rb = ann.get("runbook_url") or ""
        if not rb.startswith(RUNBOOK_BASE):
            fail(f"{where}: runbook_url {rb!r} (want {RUNBOOK_BASE}<anchor>)")
        elif rb[len(RUNBOOK_BASE):] not in anchors:
            fail(f"{where}: runbook anchor #{rb[len(RUNBOOK_BASE):]} is not a heading of docs/runbooks.md")
        elif rb[len(RUNBOOK_BASE):] != an.lower():
            fail(f"{where}: runbook anchor should be #{an.lower()}")
        du = ann.get("dashboard_url") or ""
        m = re.match(r"^/d/([^/?]+)(?:/[^?]*)?(?:\?(.*))?$", du)
        if not m or m.group(1) not in uids:
            fail(f"{where}: dashboard_url {du!r} is not /d/<uid> of a dashboard ({sorted(uids)})")
        else:
            dvars = {v.get("name") for v in (dashboards[uids[m.group(1)]].get("templating") or {}).get("list") or []}
            for param in (m.group(2) or "").split("&"):
                if param.startswith("var-") and param[4:].split("=")[0] not in dvars:
                    fail(f"{where}: dashboard_url sets {param.split('=')[0]}, not a variable of {m.group(1)}")

# Every alert fires in a test and is asserted quiet in a test.
fires, quiet = set(), set()
test_files = sorted(DASHBOARDS.glob("alerts*.test.yml"))
if not test_files:
    fail("dashboards/: no promtool test files (alerts*.test.yml)")
for tf in test_files:
    doc = yaml.safe_load(tf.read_text()) or {}
    if not any(Path(tf.parent / r).resolve() == RULES.resolve() for r in doc.get("rule_files") or []):
        fail(f"{tf.name}: rule_files does not name alerts.yml (relative to the test file)")
    for t in doc.get("tests") or []:
        for a in t.get("alert_rule_test") or []:
            (fires if a.get("exp_alerts") else quiet).add(a.get("alertname"))
for an in sorted(alerts):
    if an not in fires:
        fail(f"{an}: no promtool test where it fires")
    if an not in quiet:
        fail(f"{an}: no promtool test where it stays quiet (exp_alerts: [])")

promtool = shutil.which("promtool")
if promtool is None:
    fail("promtool not found (Debian package prometheus)")
else:
    r = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    if r.returncode != 0:
        fail("promtool check rules failed:\n" + (r.stdout + r.stderr).strip())
    if "--skip-promtool-tests" not in sys.argv and test_files:
        r = subprocess.run([promtool, "test", "rules", *map(str, test_files)], capture_output=True, text=True)
        if r.returncode != 0:
            fail("promtool test rules failed:\n" + (r.stdout + r.stderr).strip())

if failures:
    print(f"check_dashboards: {len(failures)} failure(s):")
    for f in failures:
        print(f"  - {f}")
    sys.exit(1)
print(f"check_dashboards: ok ({len(dashboards)} dashboards, {len(alerts)} alerts, "
      f"{len(test_files)} promtool test files)")
