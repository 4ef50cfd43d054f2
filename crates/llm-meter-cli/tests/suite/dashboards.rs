//! The dashboards and alert rules against real data: the `llm-meter demo --forever` binary makes
//! traffic (every use case, streams, 429s, a limit past its threshold, blocked calls, unpriced
//! calls), a real Prometheus (Debian's `prometheus`) scrapes its `/metrics` every second with the
//! rules loaded, and every target of every panel of every dashboard is evaluated through
//! Prometheus's HTTP API with its template variables set to real values from their label
//! queries. A query that errors or returns nothing fails the test, naming dashboard and panel.
//! Totals the dashboards show are compared with what the demo's own `/metrics` counted, and
//! every metric a dashboard or rule names must be one the code emits (from `names`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const INSTALL: &str = "Prometheus is needed: `apt-get install prometheus` (Debian), or set LLM_METER_PROMETHEUS \
                       to a prometheus binary; .ci/run installs it";

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn dashboards() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root().join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            out.push((name, serde_json::from_str(&text).unwrap()));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 4, "dashboards missing: {out:?}");
    out
}

/// Every `(panel title, expr)` of a dashboard, rows and collapsed rows included.
fn targets(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("(untitled)").to_owned();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push((
                        format!("{title} [{}]", t["refId"].as_str().unwrap_or("?")),
                        expr.to_owned(),
                    ));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn prometheus_binary() -> PathBuf {
    let bin = std::env::var_os("LLM_METER_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("prometheus"));
    match Command::new(&bin).arg("--version").output() {
        Ok(out) if out.status.success() => bin,
        _ => panic!("cannot run {}: {INSTALL}", bin.display()),
    }
}

struct Prom {
    base: String,
    http: reqwest::Client,
}

impl Prom {
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let url = reqwest::Url::parse_with_params(&format!("{}/api/v1/query", self.base), [("query", expr)])
            .map_err(|e| e.to_string())?;
        let resp = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        let body: Value = resp.json().await.map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        let data = &body["data"];
        match data["resultType"].as_str() {
            Some("vector") | Some("matrix") => Ok(data["result"].as_array().cloned().unwrap_or_default()),
            Some("scalar") => Ok(vec![data["result"].clone()]),
            other => Err(format!("unexpected result type {other:?}")),
        }
    }

    async fn scalar(&self, expr: &str) -> f64 {
        let r = self.query(expr).await.unwrap_or_else(|e| panic!("{expr}: {e}"));
        let first = r.first().unwrap_or_else(|| panic!("{expr}: no result"));
        first["value"][1].as_str().unwrap().parse().unwrap()
    }

    /// Values of `label` on the series `selector` selects (what Grafana's `label_values` gives).
    async fn label_values(&self, selector: &str, label: &str) -> Vec<String> {
        let r = self
            .query(&format!("group by ({label}) ({selector})"))
            .await
            .unwrap_or_else(|e| panic!("label_values({selector}, {label}): {e}"));
        let mut v: Vec<String> = r
            .iter()
            .filter_map(|s| s["metric"][label].as_str().map(str::to_owned))
            .collect();
        v.sort();
        v
    }
}

/// The variables of a dashboard, resolved in order from their label queries: multi-value ones
/// to all their values (`a|b|c`), single ones to the value with the most calls.
async fn variables(prom: &Prom, dashboard: &Value) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap().to_owned();
        if v["type"] == "datasource" {
            continue;
        }
        let query = v["query"]
            .as_str()
            .or_else(|| v["query"]["query"].as_str())
            .unwrap_or_else(|| panic!("variable {name} has no query"));
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {name}: not a label_values query: {query}"));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        let selector = substitute(selector.trim(), &vars, "1m");
        let label = label.trim();
        let values = prom.label_values(&selector, label).await;
        assert!(!values.is_empty(), "variable {name}: {query} has no values");
        let value = if v["multi"] == true || v["includeAll"] == true {
            values.join("|")
        } else {
            let top = prom
                .query(&format!(
                    "topk(1, sum by ({label}) (gen_ai_client_operation_duration_seconds_count{{{label}=~\"{}\"}}))",
                    values.join("|")
                ))
                .await
                .unwrap();
            top.first()
                .and_then(|s| s["metric"][label].as_str())
                .map_or_else(|| values[0].clone(), str::to_owned)
        };
        vars.insert(name, value);
    }
    vars
}

/// The expression with Grafana's variables replaced.
fn substitute(expr: &str, vars: &BTreeMap<String, String>, range: &str) -> String {
    let mut out = expr
        .replace("$__rate_interval", "10s")
        .replace("$__interval", "2s")
        .replace("$__range", range);
    // Longest names first, so `$model` never eats the start of `$model_x`.
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        let value = &vars[name];
        out = out
            .replace(&format!("${{{name}:regex}}"), value)
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    out
}

/// Sum of the samples of `metric` (any labels) in a Prometheus text exposition.
fn exposition_sum(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn write_prometheus_config(dir: &Path, metrics_port: u16) -> PathBuf {
    let rules = root().join("dashboards/alerts.yml");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: llm-meter\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n",
        rules.display()
    );
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, config).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let prometheus = prometheus_binary();
    let dir = std::env::temp_dir().join(format!("llm-meter-dashboards-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (metrics_port, prom_port) = (free_port(), free_port());

    let started = Instant::now();
    let _demo = Killed(
        Command::new(env!("CARGO_BIN_EXE_llm-meter"))
            .args(["demo", "--forever", "--calls", "60", "--metrics-listen"])
            .arg(format!("127.0.0.1:{metrics_port}"))
            .env("OTEL_TRACES_EXPORTER", "none")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let config = write_prometheus_config(&dir, metrics_port);
    let _prom = Killed(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start prometheus: {e}: {INSTALL}")),
    );
    let prom = Prom {
        base: format!("http://127.0.0.1:{prom_port}"),
        http: reqwest::Client::new(),
    };

    // Wait for 20 s of scraped data (rates over 10 s need several samples), at most 90 s.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ready = matches!(
            prom.query("count_over_time(up{job=\"llm-meter\"}[1m]) >= 20 and on() up{job=\"llm-meter\"} == 1").await,
            Ok(r) if !r.is_empty()
        );
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the demo's /metrics for 20 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The whole run, for `$__range` (totals "over the range").
    let range = format!("{}s", started.elapsed().as_secs() + 5);

    let mut failures = Vec::new();
    let mut evaluated = 0;
    for (file, d) in dashboards() {
        let vars = variables(&prom, &d).await;
        for (panel, expr) in targets(&d) {
            let query = substitute(&expr, &vars, &range);
            evaluated += 1;
            match prom.query(&query).await {
                Ok(r) if r.is_empty() => failures.push(format!("{file} / {panel}: no data for {query}")),
                Ok(_) => {}
                Err(e) => failures.push(format!("{file} / {panel}: {e} in {query}")),
            }
        }
    }
    assert!(evaluated >= 60, "only {evaluated} targets found");
    assert!(
        failures.is_empty(),
        "{} of {evaluated} targets failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Every rule evaluates without error.
    let rules: Value = prom
        .http
        .get(format!("{}/api/v1/rules", prom.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut rule_count = 0;
    for g in rules["data"]["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            rule_count += 1;
            assert_eq!(r["health"], "ok", "rule {} is unhealthy: {}", r["name"], r["lastError"]);
        }
    }
    assert!(rule_count >= 12, "rules not loaded: {rules}");

    // Totals: what the dashboards' aggregation shows equals what the demo counted. The demo's
    // /metrics and Prometheus's last scrape are read back to back; traffic goes on, so allow
    // the calls of the seconds in between.
    let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let checks = [
        (
            "llm_meter_cost_usd_total",
            "sum(llm_meter_cost_usd_total{job=\"llm-meter\"})",
        ),
        (
            "gen_ai_client_inference_usage_input_tokens_total",
            "sum(gen_ai_client_inference_usage_input_tokens_total{job=\"llm-meter\"})",
        ),
        (
            "gen_ai_client_inference_usage_output_tokens_total",
            "sum(gen_ai_client_inference_usage_output_tokens_total{job=\"llm-meter\"})",
        ),
        (
            "gen_ai_client_operation_duration_seconds_count",
            "sum(gen_ai_client_operation_duration_seconds_count{job=\"llm-meter\"})",
        ),
    ];
    for (metric, expr) in checks {
        let counted = exposition_sum(&text, metric);
        let shown = prom.scalar(expr).await;
        assert!(counted > 0.0, "{metric}: the demo counted nothing");
        assert!(
            (shown - counted).abs() <= 0.1 * counted,
            "{metric}: Prometheus shows {shown}, the demo counted {counted}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Metric names a PromQL text uses (`gen_ai_…` and `llm_meter_…`), recording rules (`a:b:c`)
/// left out.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts = expr[i..].starts_with("gen_ai_") || expr[i..].starts_with("llm_meter_");
        let boundary =
            i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b':');
        if starts && boundary {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(expr.len(), |e| i + e);
            let name = &expr[i..end];
            if !name.contains(':') {
                out.insert(name.to_owned());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// The Prometheus names of every metric `names` defines (dots to `_`, `_seconds` for unit
/// `s`, `_total` for counters, `_bucket`/`_sum`/`_count` for histograms), and of every
/// attribute it defines as label names (dots to `_`).
fn semconv_prometheus_names() -> (BTreeSet<String>, BTreeSet<String>) {
    let src = std::fs::read_to_string(root().join("src/names.rs")).unwrap();
    let mut out = BTreeSet::new();
    let mut labels = BTreeSet::new();
    let mut doc = String::new();
    for line in src.lines() {
        let line = line.trim();
        if let Some(d) = line.strip_prefix("///") {
            doc.push_str(d);
            continue;
        }
        if let Some(rest) = line.strip_prefix("pub const METRIC_") {
            let name = rest.split('"').nth(1).unwrap().replace('.', "_");
            let seconds = doc.contains("`s`") || doc.contains(", `s`");
            let base = if seconds { format!("{name}_seconds") } else { name };
            if doc.trim_start().starts_with("Histogram") {
                for s in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{base}{s}"));
                }
            } else if doc.trim_start().starts_with("Counter") {
                out.insert(format!("{base}_total"));
            } else {
                out.insert(base);
            }
        } else if let Some(value) = line.strip_prefix("pub const ").and_then(|r| r.split('"').nth(1)) {
            labels.insert(value.replace('.', "_"));
        }
        doc.clear();
    }
    (out, labels)
}

#[test]
fn dashboards_and_rules_only_use_metric_names_the_code_emits() {
    let (emitted, labels) = semconv_prometheus_names();
    for must in [
        "gen_ai_client_operation_duration_seconds_count",
        "llm_meter_cost_usd_total",
        "llm_meter_limit_spend_usd",
        "llm_meter_ratelimit_reset_timestamp_seconds",
        "llm_meter_calls_usage_missing_total",
    ] {
        assert!(emitted.contains(must), "names translation lost {must}: {emitted:?}");
    }
    let mut used = BTreeMap::new();
    for (file, d) in dashboards() {
        for (panel, expr) in targets(&d) {
            for name in metric_names(&expr) {
                used.entry(name).or_insert_with(|| format!("{file} / {panel}"));
            }
        }
    }
    let rules = std::fs::read_to_string(root().join("dashboards/alerts.yml")).unwrap();
    for name in metric_names(&rules) {
        used.entry(name).or_insert_with(|| "dashboards/alerts.yml".to_owned());
    }
    assert!(used.len() >= 15, "{used:?}");
    // A name is a metric the code emits, or a label it sets (in `{…}` or `by (…)`).
    let unknown: Vec<String> = used
        .iter()
        .filter(|(name, _)| !emitted.contains(*name) && !labels.contains(*name))
        .map(|(name, at)| format!("{name} (in {at})"))
        .collect();
    assert!(unknown.is_empty(), "names the code does not emit: {unknown:?}");
    // And the other way round: every call metric the code emits is charted somewhere.
    // `llm_meter_ratelimit_reset_seconds` (as last reported) goes stale between calls: the
    // dashboards chart `llm_meter_ratelimit_reset_timestamp_seconds - time()` instead.
    let not_charted = ["llm_meter_ratelimit_reset_seconds"];
    let uncharted: Vec<&String> = emitted
        .iter()
        .filter(|n| !not_charted.contains(&n.as_str()))
        .filter(|n| !n.ends_with("_bucket") && !n.ends_with("_sum"))
        .filter(|n| {
            let stem = n.trim_end_matches("_count");
            !used.keys().any(|u| u.starts_with(stem))
        })
        .collect();
    assert!(
        uncharted.is_empty(),
        "emitted but on no dashboard or rule: {uncharted:?}"
    );
}

#[test]
fn the_name_scanner_finds_metrics_and_skips_recording_rules() {
    let names = metric_names(
        "sum(rate(llm_meter_cost_usd_total{a=\"b\"}[5m])) / llm_meter:cost_usd:rate1h + gen_ai_client_token_usage_bucket",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["gen_ai_client_token_usage_bucket", "llm_meter_cost_usd_total"]
    );
}

#[test]
fn dashboards_and_rules_only_match_error_types_the_code_records() {
    use llm_meter::ErrorType;
    let known: BTreeSet<&str> = [
        ErrorType::Timeout,
        ErrorType::Connect,
        ErrorType::Decode,
        ErrorType::Cancelled,
        ErrorType::Truncated,
        ErrorType::StreamError,
        ErrorType::Transport,
        ErrorType::InvalidRequest,
        ErrorType::LimitReached,
    ]
    .iter()
    .map(|e| e.as_str())
    .collect();
    let mut texts = vec![std::fs::read_to_string(root().join("dashboards/alerts.yml")).unwrap()];
    for (_, d) in dashboards() {
        texts.extend(targets(&d).into_iter().map(|(_, e)| e));
    }
    let mut seen = 0;
    for text in &texts {
        for (at, _) in text.match_indices("error_type") {
            let rest = &text[at + "error_type".len()..];
            let rest = rest.trim_start_matches(['=', '!', '~', ' ']);
            let Some(value) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) else {
                continue;
            };
            for alt in value.split('|').filter(|a| !a.is_empty()) {
                seen += 1;
                let status = alt.len() == 3 && alt.bytes().all(|b| b.is_ascii_digit());
                assert!(
                    status || known.contains(alt),
                    "error_type value {alt:?} is never recorded (known: {known:?})"
                );
            }
        }
    }
    assert!(seen >= 3, "no error_type values found");
}
