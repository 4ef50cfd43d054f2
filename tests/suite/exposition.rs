//! The Prometheus exposition: golden text for a scripted set of calls, `promtool check metrics`
//! on it, the Prometheus names DESIGN promises, and the `/metrics` and `/healthz` routes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use llm_meter::prometheus::{encode, serve};
use llm_meter::RequestFacts;
use llm_meter::Telemetry;
use llm_meter::{Annotations, CallRecord, ErrorType};
use llm_meter::{FinishReason, RateLimit, Usage};

const GOLDEN: &str = "tests/data/exposition.prom";

fn scripted_record(i: u64) -> CallRecord {
    let (use_case, model, stream) = [
        ("support.triage", "gpt-4o-mini", false),
        ("docs.summarize", "gpt-4o", true),
    ][i as usize % 2];
    let annotations = Annotations::builder()
        .use_case_name(use_case)
        .user_id(format!("user-{i}"))
        .build()
        .unwrap();
    let mut request = RequestFacts::default();
    request.model = model.into();
    request.stream = stream;
    let mut r = CallRecord::new(annotations, request, SystemTime::UNIX_EPOCH);
    r.id = llm_meter::CallId(7);
    r.server_address = Arc::from("api.openai.com");
    r.server_port = Some(443);
    r.status = Some(if i == 5 { 429 } else { 200 });
    r.meta.processing = Some(Duration::from_millis(100 * i));
    r.meta.requests = RateLimit {
        limit: Some(500),
        remaining: Some(500 - i),
        reset: Some(Duration::from_millis(120)),
    };
    r.meta.tokens = RateLimit {
        limit: Some(30000),
        remaining: Some(30000 - 100 * i),
        reset: Some(Duration::from_secs(6)),
    };
    if i != 5 {
        r.response.model = Some(format!("{model}-2024-08-06"));
        r.response.finish_reasons = vec![FinishReason::Stop];
        let mut usage = Usage::default();
        usage.input_tokens = 20 * i + 7;
        usage.output_tokens = 40 * i + 3;
        usage.cached_input_tokens = Some(i);
        usage.reasoning_tokens = Some(0);
        r.usage = Some(usage);
    }
    r.timings.duration = Duration::from_millis(30 * (i + 1));
    if stream {
        r.timings.time_to_first_chunk = Some(Duration::from_millis(15 * (i + 1)));
        r.timings.time_per_output_chunk = Some(Duration::from_millis(5));
        r.timings.chunks = 10;
    }
    r.error = (i == 5).then_some(ErrorType::Status(429));
    r
}

fn scripted_exposition() -> String {
    let t = Telemetry::builder()
        .without_otlp()
        .service_name("golden")
        .build()
        .unwrap();
    let prices = llm_meter::PriceTable::embedded();
    for i in 0..8 {
        let mut r = scripted_record(i);
        r.cost = r.usage.and_then(|u| prices.cost(&r.request.model, &u));
        t.metrics().record(&r);
    }
    encode(t.exposition().unwrap()).unwrap()
}

#[test]
fn exposition_matches_the_golden_file() {
    let text = scripted_exposition();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(GOLDEN, &text).unwrap();
    }
    let golden = std::fs::read_to_string(GOLDEN).expect("golden file (regenerate with UPDATE_GOLDEN=1)");
    assert_eq!(
        text, golden,
        "exposition changed; if intended, regenerate with UPDATE_GOLDEN=1 and review the diff"
    );
}

#[test]
fn prometheus_names_are_the_ones_dashboards_use() {
    let text = scripted_exposition();
    for name in [
        "gen_ai_client_operation_duration_seconds_bucket",
        "gen_ai_client_operation_duration_seconds_count",
        "gen_ai_client_token_usage_bucket",
        "gen_ai_client_token_usage_sum",
        "gen_ai_client_operation_time_to_first_chunk_seconds_bucket",
        "gen_ai_client_operation_time_per_output_chunk_seconds_bucket",
        "gen_ai_client_inference_usage_input_tokens_total",
        "gen_ai_client_inference_usage_output_tokens_total",
        "gen_ai_client_inference_usage_cache_read_input_tokens_total",
        "gen_ai_client_inference_usage_reasoning_output_tokens_total",
        "llm_meter_provider_processing_duration_seconds_bucket",
        "llm_meter_ratelimit_remaining",
        "llm_meter_ratelimit_limit",
        "llm_meter_ratelimit_reset_seconds",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing from /metrics"
        );
    }
    assert!(text.contains(r#"error_type="429""#));
    assert!(
        !text.contains(r#"use_case_name="support_triage""#),
        "label values are not mangled"
    );
    assert!(text.contains(r#"use_case_name="support.triage""#));
    assert!(!text.contains("user_id"), "user.id is not a label by default");
}

/// The span-export outcomes the alert on lost spans and the dashboards' lost-spans panel match
/// (`outcome=~"a|b"`, anchored) are outcomes the library writes: a name they expect that it
/// never writes would leave the alert silent.
#[test]
fn the_lost_spans_alert_and_panel_match_outcomes_the_library_writes() {
    let text = scripted_exposition();
    let written: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix(r#"llm_meter_export_spans_total{outcome=""#))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    let mut matched = 0;
    // Every dashboard, the alert rules and their promtool tests (whose series must be ones the
    // library writes, or the tests prove nothing about it).
    let mut files: Vec<_> = std::fs::read_dir("dashboards")
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json" || e == "yml"))
        .collect();
    files.sort();
    for path in &files {
        let file = path.display();
        let source = std::fs::read_to_string(path).unwrap().replace(r#"\""#, "\"");
        for (at, _) in source.match_indices("llm_meter_export_spans_total{") {
            let selector = &source[at..];
            let selector = &selector[..selector.find('}').unwrap()];
            let Some(values) = selector
                .split("outcome=~\"")
                .nth(1)
                .or(selector.split("outcome=\"").nth(1))
            else {
                continue;
            };
            for value in values.split('"').next().unwrap().split('|') {
                assert!(
                    written.contains(&value),
                    "{file}: outcome {value:?} is never written ({written:?})"
                );
                matched += 1;
            }
        }
    }
    assert!(
        matched >= 4,
        "the alert and the panel match on outcome ({matched} values found)"
    );
    assert_eq!(written, ["dropped", "exported", "failed"]);
}

#[test]
fn promtool_accepts_the_exposition() {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        panic!("promtool not found: install Prometheus's tools (Debian: `apt-get install prometheus`), then rerun");
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scripted_exposition().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check metrics failed:\n{report}");
}

#[tokio::test]
async fn metrics_and_healthz_are_served() {
    let t = Telemetry::builder().without_otlp().build().unwrap();
    t.metrics().record(&scripted_record(1));
    let addr = serve("127.0.0.1:0".parse().unwrap(), t.exposition().unwrap().clone())
        .await
        .unwrap();
    let resp = reqwest::get(format!("http://{addr}/metrics")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let body = resp.text().await.unwrap();
    assert!(body.contains("gen_ai_client_inference_usage_input_tokens_total{"));
    let health = reqwest::get(format!("http://{addr}/healthz")).await.unwrap();
    assert_eq!(
        (health.status().as_u16(), health.text().await.unwrap()),
        (200, "ok\n".to_owned())
    );
}
