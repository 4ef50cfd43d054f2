//! `llm-meter demo`: the embedded mock provider, a realistic mix of annotated calls through the
//! library client, and a summary of what was observed. Needs no API key and no network.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;

use crate::annotations::Annotations;
use crate::client::Client;
use crate::mock::{MockConfig, MockServer};
use crate::record::CallRecord;
use crate::telemetry::{prometheus, Telemetry};

/// Demo settings.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Calls to make.
    pub calls: usize,
    /// Calls in flight at once.
    pub concurrency: usize,
    /// Mock latency before the response head.
    pub latency: Duration,
    /// Mock delay between stream chunks.
    pub chunk_delay: Duration,
    /// Fraction of calls the mock fails (429 and 500).
    pub error_rate: f64,
    /// Where `/metrics` and `/healthz` are served (`None`: not served).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Keep sending traffic until interrupted.
    pub forever: bool,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            calls: 120,
            concurrency: 8,
            latency: Duration::from_millis(20),
            chunk_delay: Duration::from_millis(5),
            error_rate: 0.05,
            metrics_listen: Some(
                crate::telemetry::prometheus::DEFAULT_METRICS_ADDR
                    .parse()
                    .expect("valid default"),
            ),
            forever: false,
        }
    }
}

#[derive(Default)]
struct Tally {
    calls: u64,
    streams: u64,
    input_tokens: u64,
    output_tokens: u64,
    errors: BTreeMap<&'static str, u64>,
    by_use_case: BTreeMap<String, (u64, u64)>,
    last_remaining: Option<(u64, u64)>,
}

impl Tally {
    fn add(&mut self, r: &CallRecord) {
        self.calls += 1;
        self.streams += u64::from(r.request.stream);
        if let Some(u) = r.usage {
            self.input_tokens += u.input_tokens;
            self.output_tokens += u.output_tokens;
        }
        if let Some(e) = r.error {
            *self.errors.entry(e.as_str()).or_default() += 1;
        }
        let uc = self
            .by_use_case
            .entry(r.annotations.use_case_name().unwrap_or("(none)").to_owned())
            .or_default();
        uc.0 += 1;
        uc.1 += r.usage.map_or(0, |u| u.input_tokens + u.output_tokens);
        if let (Some(a), Some(b)) = (r.meta.requests.remaining, r.meta.tokens.remaining) {
            self.last_remaining = Some((a, b));
        }
    }
}

const USE_CASES: [(&str, &str, bool); 4] = [
    ("support.triage", "gpt-4o-mini", false),
    ("support.reply", "gpt-4o", true),
    ("search.rerank", "gpt-4.1-mini", false),
    ("docs.summarize", "gpt-4o", true),
];

/// Runs the demo with `telemetry` (its metrics, and its spans when its layer is installed) and
/// prints a summary to stdout.
pub async fn run(config: DemoConfig, telemetry: &Telemetry) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mock = MockServer::start(MockConfig {
        latency: config.latency,
        chunk_delay: config.chunk_delay,
        error_rate: config.error_rate,
        limit_requests: 10_000,
        limit_tokens: 2_000_000,
        cached_fraction: 0.25,
        ..MockConfig::default()
    })
    .await?;
    println!("llm-meter demo: mock provider at {}", mock.base_url());
    if let (Some(addr), Some(registry)) = (config.metrics_listen, telemetry.registry()) {
        let bound = prometheus::serve(addr, registry.clone())
            .await
            .map_err(|e| format!("cannot serve /metrics on {addr}: {e} (choose another with --metrics-listen)"))?;
        println!("metrics: http://{bound}/metrics");
    }
    if telemetry.otlp_enabled() {
        println!("OTLP export: on (from OTEL_EXPORTER_OTLP_* variables)");
    }
    let tally = Arc::new(Mutex::new(Tally::default()));
    let sink = tally.clone();
    let meter = telemetry
        .meter_builder()
        .hook(move |r: &CallRecord| {
            if let Ok(mut t) = sink.lock() {
                t.add(r);
            }
        })
        .build()?;
    let client = Client::builder()
        .base_url(mock.base_url())
        .api_key("sk-demo-not-a-real-key")
        .meter(meter)
        .build()?;

    let started = Instant::now();
    let mut round = 0usize;
    loop {
        drive(&client, &config, round).await;
        round += 1;
        if !config.forever {
            break;
        }
        let t = tally.lock().map_err(|_| "tally poisoned")?;
        println!(
            "  round {round}: {} calls so far, {} tokens",
            t.calls,
            t.input_tokens + t.output_tokens
        );
    }
    summarize(&tally, started)
}

/// One batch of `config.calls` annotated calls, `config.concurrency` at a time.
async fn drive(client: &Client, config: &DemoConfig, round: usize) {
    let calls = futures_util::stream::iter(0..config.calls)
        .map(|i| {
            let client = client.clone();
            async move {
                let (use_case, model, stream) = USE_CASES[i % USE_CASES.len()];
                let annotations = Annotations::builder()
                    .use_case_name(use_case)
                    .user_id(format!("user-{}", i % 7))
                    .limit_ids([if i % 2 == 0 { "team-support-daily" } else { "org-monthly" }])
                    .request_tags(["demo"])
                    .build()
                    .expect("demo annotations are valid");
                let body = json!({
                    "model": model,
                    "messages": [{"role": "user", "content": format!("Demo question number {i}: how do I reset my password?")}],
                    "max_completion_tokens": 64,
                    "stream": stream,
                });
                if stream {
                    if let Ok(mut s) = client.chat_stream(&body, &annotations).await {
                        while let Some(chunk) = s.next().await {
                            if chunk.is_err() {
                                break;
                            }
                        }
                    }
                } else {
                    let _ = client.chat(&body, &annotations).await;
                }
            }
        })
        .buffer_unordered(config.concurrency.max(1));
    let mut done = 0usize;
    let mut calls = std::pin::pin!(calls);
    while calls.next().await.is_some() {
        done += 1;
        if round == 0 && (done % 20 == 0 || done == config.calls) {
            println!("  {done}/{} calls", config.calls);
        }
    }
}

fn summarize(tally: &Mutex<Tally>, started: Instant) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let t = tally.lock().map_err(|_| "tally poisoned")?;
    println!(
        "\n{} calls ({} streamed) in {:.2}s",
        t.calls,
        t.streams,
        started.elapsed().as_secs_f64()
    );
    println!("tokens: {} input, {} output", t.input_tokens, t.output_tokens);
    println!(
        "errors: {}",
        if t.errors.is_empty() {
            "none".to_owned()
        } else {
            format!("{:?}", t.errors)
        }
    );
    if let Some((req, tok)) = t.last_remaining {
        println!("rate limit headroom (last seen): {req} requests, {tok} tokens");
    }
    println!("by use case (calls, tokens):");
    for (uc, (n, tokens)) in &t.by_use_case {
        println!("  {uc:<16} {n:>5} {tokens:>8}");
    }
    Ok(())
}
