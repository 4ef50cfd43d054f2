//! `llm-meter demo`: the embedded mock provider, the proxy in front of it, and the library client,
//! driven with a realistic mix of annotated traffic — several use cases and users on OpenAI Chat
//! Completions, Anthropic Messages, the OpenAI Responses API and Azure OpenAI, streaming and
//! not, a budget that passes its threshold, a block limit that refuses calls, and some 429s —
//! with `/metrics` served, OTLP exported when the environment asks, and a live summary. Needs no
//! API key and no network.
//!
//! Run on (`--forever`), the traffic varies as production does, compressed into minutes (see
//! [`Shape`]): use cases at different volumes and models, a daily-like swell every 10 minutes,
//! a 10-minute usage spike in `docs.summarize` (30 times its volume) after the first hour and
//! every 2 hours, a 5-minute budget that fills and resets, a monthly budget projected to pass
//! its max, a provider rate-limit window that runs low (and answers 429s) at the swell's peak,
//! streams, and a trickle of calls on an unpriced model.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;

use llm_meter::{prometheus, Telemetry};
use llm_meter::{AdmissionMode, Ledger, LimitConfig, LimitKind, MemoryLedger};
use llm_meter::{Annotations, Api};
use llm_meter::{CallError, Client};
use llm_meter::{CallRecord, ErrorType};
use llm_meter_mock::{MockConfig, MockServer};
use llm_meter_proxy::{Proxy, ProxySettings};

/// Demo settings.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Calls to make (per round with `forever`).
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
            metrics_listen: prometheus::DEFAULT_METRICS_ADDR.parse().ok(),
            forever: false,
        }
    }
}

/// The demo's budgets: one passes its threshold, one blocks, one fills and resets every 5
/// minutes, one stays ok.
pub fn demo_limits() -> Vec<LimitConfig> {
    vec![
        LimitConfig {
            id: "team-support-daily".into(),
            max: 0.02,
            threshold: Some(0.25),
            kind: LimitKind::Allow,
            reset: Some(Duration::from_secs(86_400)),
            admission: AdmissionMode::Spent,
        },
        LimitConfig {
            id: "trial-org".into(),
            max: 0.003,
            threshold: Some(0.8),
            kind: LimitKind::Block,
            reset: None,
            admission: AdmissionMode::Spent,
        },
        LimitConfig {
            id: "search-5m".into(),
            max: 0.01,
            threshold: Some(0.5),
            kind: LimitKind::Allow,
            reset: Some(Duration::from_secs(300)),
            admission: AdmissionMode::Spent,
        },
        LimitConfig {
            id: "org-monthly".into(),
            max: 50.0,
            threshold: Some(0.8),
            kind: LimitKind::Allow,
            reset: Some(Duration::from_secs(30 * 86_400)),
            admission: AdmissionMode::Spent,
        },
    ]
}

#[derive(Default)]
struct Tally {
    calls: u64,
    streams: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost: f64,
    errors: BTreeMap<&'static str, u64>,
    by_use_case: BTreeMap<String, (u64, u64, f64)>,
    last_remaining: Option<(u64, u64)>,
}

impl Tally {
    fn add(&mut self, r: &CallRecord) {
        self.calls += 1;
        self.streams += u64::from(r.request.stream);
        let tokens = r.usage.map_or(0, |u| u.input_tokens + u.output_tokens);
        if let Some(u) = r.usage {
            self.input_tokens += u.input_tokens;
            self.output_tokens += u.output_tokens;
        }
        let cost = r.cost.map_or(0.0, |c| c.total);
        self.cost += cost;
        if let Some(e) = r.error {
            *self.errors.entry(e.as_str()).or_default() += 1;
        }
        let uc = self
            .by_use_case
            .entry(r.annotations.use_case_name().unwrap_or("(none)").to_owned())
            .or_default();
        uc.0 += 1;
        uc.1 += tokens;
        uc.2 += cost;
        if let (Some(a), Some(b)) = (r.meta.requests.remaining, r.meta.tokens.remaining) {
            self.last_remaining = Some((a, b));
        }
    }

    fn progress_line(&self) -> String {
        let blocked = self.errors.get(ErrorType::LimitReached.as_str()).copied().unwrap_or(0);
        let limited = self.errors.get("429").copied().unwrap_or(0);
        format!(
            "{} calls · {} tokens · ${:.4} · {blocked} blocked by limits · {limited} rate-limited (429)",
            self.calls,
            self.input_tokens + self.output_tokens,
            self.cost
        )
    }
}

/// Which provider and API a demo use case calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Provider {
    /// OpenAI Chat Completions.
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// The OpenAI Responses API.
    Responses,
    /// Azure OpenAI chat completions on a deployment (through the proxy only).
    Azure,
}

/// A demo use case: name, model, streamed, relative volume when running on, provider.
type UseCase = (&'static str, &'static str, bool, u32, Provider);

/// Use cases: name, model, streamed, relative volume when running on, and provider.
const USE_CASES: [UseCase; 5] = [
    ("support.triage", "gpt-4o-mini", false, 5, Provider::OpenAi),
    ("support.reply", "claude-sonnet-4-5", true, 2, Provider::Anthropic),
    ("search.rerank", "gpt-4.1-mini", false, 3, Provider::Responses),
    ("docs.summarize", "gpt-4o", true, 1, Provider::OpenAi),
    ("billing.explain", "gpt-4o", false, 1, Provider::Azure),
];

/// A use case on a model with no price: its calls show as unpriced.
const UNPRICED: UseCase = ("labs.experiment", "acme-finetune-v1", false, 0, Provider::OpenAi);

/// The running demo's traffic over time, compressed: a "day" is 10 minutes.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    started: Instant,
}

impl Shape {
    const DAY: Duration = Duration::from_secs(600);
    /// The first spike starts once an hour of history exists (the spike alerts compare a use
    /// case with its own last hours), then one every 2 hours, 10 minutes long.
    const FIRST_SPIKE: Duration = Duration::from_secs(65 * 60);
    const SPIKE_EVERY: Duration = Duration::from_secs(2 * 3600);
    const SPIKE_FOR: Duration = Duration::from_secs(10 * 60);
    /// How many times its usual volume the spiking use case sends.
    const SPIKE_FACTOR: u32 = 30;

    fn new() -> Self {
        Shape {
            started: Instant::now(),
        }
    }

    /// Traffic level from 0.15 (night) to 1.0 (peak), a sine over the compressed day, peaking
    /// 2.5 minutes into each day: in the middle of the provider's first 5-minute request window
    /// of the day, which that peak runs low (the night's window stays well clear).
    pub fn swell(&self) -> f64 {
        let peak_at = Self::DAY.as_secs_f64() / 4.0;
        let phase = (self.started.elapsed().as_secs_f64() - peak_at) / Self::DAY.as_secs_f64();
        0.575 + 0.425 * (phase * std::f64::consts::TAU).cos()
    }

    /// Whether `docs.summarize` is in a usage spike.
    pub fn spiking(&self) -> bool {
        let Some(since) = self.started.elapsed().checked_sub(Self::FIRST_SPIKE) else {
            return false;
        };
        since.as_secs() % Self::SPIKE_EVERY.as_secs() < Self::SPIKE_FOR.as_secs()
    }

    /// Pause between rounds: short at the peak (the provider's request window runs low and
    /// answers 429s), long at night.
    fn pause(&self) -> Duration {
        Duration::from_secs_f64((0.6 / self.swell() - 0.4).max(0.05))
    }

    /// The use case of call `i` of a round: by volume, the spiking one 30 times its volume,
    /// one call in 40 on the unpriced model.
    fn use_case(&self, i: usize) -> UseCase {
        if i % 40 == 39 {
            return UNPRICED;
        }
        let weight = |(name, _, _, w, _): &UseCase| {
            if *name == "docs.summarize" && self.spiking() {
                w * Self::SPIKE_FACTOR
            } else {
                *w
            }
        };
        let total: u32 = USE_CASES.iter().map(weight).sum();
        // A fixed spread of the round's calls over the weights (no randomness needed).
        let mut at = (i as u32 * 7919) % total;
        for uc in USE_CASES {
            let w = weight(&uc);
            if at < w {
                return uc;
            }
            at -= w;
        }
        USE_CASES[0]
    }
}

/// How one demo call goes out.
#[derive(Clone)]
struct Doors {
    /// Library clients: Chat Completions, Anthropic Messages, Responses.
    chat: Client,
    anthropic: Client,
    responses: Client,
    proxy: String,
    http: reqwest::Client,
}

impl Doors {
    fn client(&self, provider: Provider) -> Option<&Client> {
        match provider {
            Provider::OpenAi => Some(&self.chat),
            Provider::Anthropic => Some(&self.anthropic),
            Provider::Responses => Some(&self.responses),
            Provider::Azure => None,
        }
    }
}

/// The request body of a demo call to `provider`.
fn demo_body(provider: Provider, model: &str, stream: bool, i: usize) -> serde_json::Value {
    let question = format!("Demo question number {i}: how do I reset my password?");
    match provider {
        Provider::OpenAi => json!({
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "max_completion_tokens": 64,
            "stream": stream,
        }),
        // The deployment in the path names the model.
        Provider::Azure => json!({
            "messages": [{"role": "user", "content": question}],
            "max_completion_tokens": 64,
            "stream": stream,
        }),
        Provider::Anthropic => json!({
            "model": model,
            "max_tokens": 64,
            "system": "You answer support questions.",
            "messages": [{"role": "user", "content": question}],
            "stream": stream,
        }),
        Provider::Responses => json!({
            "model": model,
            "input": question,
            "max_output_tokens": 64,
            "stream": stream,
        }),
    }
}

/// Runs the demo with `telemetry` (its metrics, and its spans when its layer is installed) and
/// prints progress and a summary to stdout.
pub async fn run(config: DemoConfig, telemetry: &Telemetry) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mock = MockServer::start(MockConfig {
        latency: config.latency,
        chunk_delay: config.chunk_delay,
        error_rate: config.error_rate,
        // Running on: a 5-minute request window sized so that the swell's peak runs it low for
        // minutes (the headroom alert waits 1 minute) and into 429s, and the night does not.
        limit_requests: if config.forever { 30_000 } else { 10_000 },
        window: if config.forever {
            Duration::from_secs(300)
        } else {
            MockConfig::default().window
        },
        limit_tokens: 2_000_000,
        cached_fraction: 0.25,
        cache_write_fraction: 0.1,
        ..MockConfig::default()
    })
    .await?;
    if let (Some(addr), Some(exposition)) = (config.metrics_listen, telemetry.exposition()) {
        let bound = prometheus::serve(addr, exposition.clone())
            .await
            .map_err(|e| format!("cannot serve /metrics on {addr}: {e} (choose another with --metrics-listen)"))?;
        println!("metrics:        http://{bound}/metrics");
    }
    if telemetry.otlp_enabled() {
        println!("OTLP export:    on (from OTEL_EXPORTER_OTLP_* variables)");
    }
    let tally = Arc::new(Mutex::new(Tally::default()));
    let sink = tally.clone();
    let ledger = Arc::new(MemoryLedger::new(demo_limits())?);
    let meter = telemetry
        .meter_builder()
        .ledger(ledger.clone())
        .enforce_limits(true)
        .hook(move |r: &CallRecord| {
            if let Ok(mut t) = sink.lock() {
                t.add(r);
            }
        })
        .build()?;
    let settings = ProxySettings {
        upstream: mock.base_url().parse()?,
        anthropic_upstream: mock.azure_endpoint().parse()?,
        azure_openai_upstream: Some(mock.azure_endpoint().parse()?),
        ..ProxySettings::default()
    };
    let proxy_addr = Proxy::new(settings, meter.clone())?
        .spawn("127.0.0.1:0".parse()?)
        .await?;
    println!("mock provider:  {}", mock.base_url());
    println!("proxy:          http://{proxy_addr}/v1 (Pay-i route: /api/v1/proxy/openai/v1; also /v1/messages, /v1/responses, /openai/deployments/…)");
    let client = |api: Api| {
        Client::builder()
            .base_url(mock.base_url())
            .api_key("sk-demo-not-a-real-key")
            .api(api)
            .meter(meter.clone())
            .build()
    };
    let doors = Doors {
        chat: client(Api::ChatCompletions)?,
        anthropic: client(Api::AnthropicMessages)?,
        responses: client(Api::Responses)?,
        proxy: format!("http://{proxy_addr}"),
        http: reqwest::Client::new(),
    };

    let started = Instant::now();
    let shape = config.forever.then(Shape::new);
    let mut round = 0usize;
    loop {
        drive(&doors, &config, round, shape, &tally).await;
        round += 1;
        let Some(shape) = shape else { break };
        tokio::time::sleep(shape.pause()).await;
    }
    summarize(&tally, ledger.as_ref(), started)
}

/// One batch of `config.calls` annotated calls, `config.concurrency` at a time, alternating
/// between the library client and the proxy: every use case in turn, or by `shape` when the
/// demo runs on.
async fn drive(doors: &Doors, config: &DemoConfig, round: usize, shape: Option<Shape>, tally: &Mutex<Tally>) {
    let calls = futures_util::stream::iter(0..config.calls)
        .map(|i| {
            let doors = doors.clone();
            async move {
                let (use_case, model, stream, _, provider) = match shape {
                    Some(shape) => shape.use_case(i),
                    None => USE_CASES[i % USE_CASES.len()],
                };
                let limits: &[&str] = match (use_case, i % 3) {
                    ("search.rerank", _) => &["search-5m", "org-monthly"],
                    (_, 0) => &["team-support-daily", "org-monthly"],
                    (_, 1) => &["trial-org"],
                    _ => &["org-monthly"],
                };
                let annotations = Annotations::builder()
                    .use_case_name(use_case)
                    .user_id(format!("user-{}", i % 7))
                    .limit_ids(limits.iter().copied())
                    .request_tags(["demo"])
                    .build();
                let Ok(annotations) = annotations else {
                    tracing::warn!(target: "llm_meter", "demo annotations rejected: {annotations:?}");
                    return;
                };
                let body = demo_body(provider, model, stream, i);
                match doors.client(provider) {
                    Some(client) if i % 2 == 0 => through_client(client, &body, &annotations, stream).await,
                    _ => through_proxy(&doors, provider, model, &body, &annotations).await,
                }
            }
        })
        .buffer_unordered(config.concurrency.max(1));
    let mut done = 0usize;
    let mut calls = std::pin::pin!(calls);
    while calls.next().await.is_some() {
        done += 1;
        if done % 20 == 0 || done == config.calls {
            let line = tally.lock().map(|t| t.progress_line()).unwrap_or_default();
            println!("  round {} · {done}/{} · {line}", round + 1, config.calls);
        }
    }
}

async fn through_client(client: &Client, body: &serde_json::Value, annotations: &Annotations, stream: bool) {
    if stream {
        if let Ok(mut s) = client.chat_stream(body, annotations).await {
            while let Some(Ok(_)) = s.next().await {}
        }
    } else {
        match client.chat(body, annotations).await {
            Ok(_) | Err(CallError::LimitReached { .. }) => {}
            Err(e) => tracing::debug!(target: "llm_meter", "demo call failed: {e}"),
        }
    }
}

/// A plain HTTP client using the proxy as each provider's SDK would, with annotations as
/// `xProxy-*` headers.
async fn through_proxy(
    doors: &Doors,
    provider: Provider,
    model: &str,
    body: &serde_json::Value,
    annotations: &Annotations,
) {
    const KEY: &str = "sk-demo-not-a-real-key";
    let base = &doors.proxy;
    let request = match provider {
        Provider::OpenAi => doors.http.post(format!("{base}/v1/chat/completions")).bearer_auth(KEY),
        Provider::Responses => doors.http.post(format!("{base}/v1/responses")).bearer_auth(KEY),
        Provider::Anthropic => doors
            .http
            .post(format!("{base}/v1/messages"))
            .header("x-api-key", KEY)
            .header("anthropic-version", llm_meter::ANTHROPIC_VERSION),
        Provider::Azure => doors
            .http
            .post(format!(
                "{base}/openai/deployments/{model}/chat/completions?api-version=2024-10-21"
            ))
            .header("api-key", KEY),
    };
    let request = request
        .headers(annotations.to_headers())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body.to_string());
    if let Ok(resp) = request.send().await {
        let mut bytes = resp.bytes_stream();
        while let Some(Ok(_)) = bytes.next().await {}
    }
}

fn summarize(
    tally: &Mutex<Tally>,
    ledger: &dyn Ledger,
    started: Instant,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let t = tally.lock().map_err(|_| "tally poisoned")?;
    println!(
        "\n{} calls ({} streamed) in {:.2}s",
        t.calls,
        t.streams,
        started.elapsed().as_secs_f64()
    );
    println!(
        "tokens: {} input, {} output · cost ${:.4}",
        t.input_tokens, t.output_tokens, t.cost
    );
    println!(
        "errors: {}",
        if t.errors.is_empty() {
            "none".to_owned()
        } else {
            format!("{:?}", t.errors)
        }
    );
    if let Some((req, tok)) = t.last_remaining {
        println!("rate-limit headroom (last seen): {req} requests, {tok} tokens");
    }
    println!("by use case          calls   tokens      cost");
    for (uc, (n, tokens, cost)) in &t.by_use_case {
        println!("  {uc:<18} {n:>5} {tokens:>8} {cost:>9.4}");
    }
    println!("limits               spend / max        state");
    for s in ledger.statuses() {
        let max = s.config.as_ref().map_or("-".to_owned(), |c| format!("{:.4}", c.max));
        println!("  {:<18} {:>7.4} / {max:<9} {}", s.id, s.spend, s.state.as_str());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(elapsed: Duration) -> Shape {
        Shape {
            started: Instant::now()
                .checked_sub(elapsed)
                .expect("the clock goes back far enough"),
        }
    }

    fn minutes(m: u64) -> Duration {
        Duration::from_secs(m * 60)
    }

    #[test]
    fn the_swell_runs_from_night_to_peak_over_a_compressed_day() {
        let at_secs = |s: u64| at(Duration::from_secs(s));
        assert!((at_secs(150).swell() - 1.0).abs() < 0.01, "peak 2.5 minutes in");
        assert!((at_secs(450).swell() - 0.15).abs() < 0.01, "night 7.5 minutes in");
        assert!((at_secs(750).swell() - 1.0).abs() < 0.01, "and again the next day");
        assert!(at_secs(150).pause() < at_secs(450).pause() / 10);
    }

    #[test]
    fn the_spike_comes_after_an_hour_of_history_and_every_two_hours() {
        for (m, spiking) in [
            (0, false),
            (30, false),
            (64, false),
            (66, true),
            (74, true),
            (76, false),
            (186, true),
        ] {
            assert_eq!(at(minutes(m)).spiking(), spiking, "{m} min");
        }
    }

    #[test]
    fn use_cases_follow_their_volumes_and_the_spike() {
        let count = |shape: Shape, name: &str| (0..400).filter(|&i| shape.use_case(i).0 == name).count();
        let calm = at(minutes(10));
        assert!(count(calm, "support.triage") > 3 * count(calm, "docs.summarize"));
        assert_eq!(count(calm, UNPRICED.0), 10, "one call in 40 on the unpriced model");
        let spike = at(minutes(70));
        assert!(count(spike, "docs.summarize") > 2 * count(spike, "support.triage"));
    }
}
