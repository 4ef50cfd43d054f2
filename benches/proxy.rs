//! Proxy overhead against the floor it is measured by (DESIGN §8), all on loopback, one process.
//!
//! Arms, interleaved every round: `direct` (client → mock), `direct-again` (the A-vs-A noise
//! floor), `relay` (a bare pass-through relay: axum + a pooled keep-alive reqwest client, no
//! parsing — the same HTTP stack the proxy uses), `proxy` (llm-meter's proxy with telemetry on:
//! metrics on the Prometheus exposition and sampled spans through tracing-opentelemetry into a
//! batch exporter with a null sink), `proxy-quiet` (telemetry off) and `metrics-only` (metrics
//! on, spans off). Reported: medians over
//! rounds of each arm's added latency over `direct` at p50 and p99, the ratio proxy/relay of
//! those, CPU per call (all threads, from /proc/self/task/*/schedstat) added over `direct`,
//! throughput at 32 in flight with telemetry on vs off, and memory per open stream.
//!
//! Run: `cargo bench --bench proxy` (quick smoke run under `cargo test`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use futures_util::{StreamExt, TryStreamExt};
use llm_meter::opentelemetry::trace::TracerProvider as _;
use llm_meter::opentelemetry_sdk::error::OTelSdkResult;
use llm_meter::opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use llm_meter::Meter;
use llm_meter::Telemetry;
use llm_meter_mock::{MockConfig, MockServer};
use llm_meter_proxy::{Proxy, ProxySettings};
use tracing_subscriber::layer::SubscriberExt;

#[derive(Debug)]
struct NullExporter;

impl SpanExporter for NullExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        drop(batch);
        Ok(())
    }
}

/// CPU time of every thread of this process, in nanoseconds.
fn process_cpu_ns() -> u64 {
    let mut total = 0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
                total += text
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|t| t.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(0);
    pages * 4096
}

/// The bare relay: forwards method, path, headers and body both ways, parsing nothing.
async fn relay(State((client, upstream)): State<(reqwest::Client, String)>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let url = format!("{upstream}{}", parts.uri.path().trim_start_matches("/v1"));
    let mut headers = parts.headers;
    headers.remove(http::header::HOST);
    let upstream = client
        .request(parts.method, url)
        .headers(headers)
        .body(reqwest::Body::wrap_stream(
            body.into_data_stream().map_err(std::io::Error::other),
        ))
        .send()
        .await;
    match upstream {
        Ok(r) => {
            let (status, headers) = (r.status(), r.headers().clone());
            let mut resp = Response::new(Body::from_stream(r.bytes_stream()));
            *resp.status_mut() = status;
            *resp.headers_mut() = headers;
            resp.headers_mut().remove(http::header::CONTENT_LENGTH);
            resp
        }
        Err(_) => {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = http::StatusCode::BAD_GATEWAY;
            resp
        }
    }
}

async fn spawn_relay(upstream: String) -> String {
    let app = axum::Router::new()
        .route("/v1/{*rest}", axum::routing::any(relay))
        .with_state((reqwest::Client::new(), upstream));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1")
}

async fn spawn_proxy(upstream: &str, meter: Meter) -> String {
    let settings = ProxySettings {
        upstream: upstream.parse().unwrap(),
        ..ProxySettings::default()
    };
    let addr = Proxy::new(settings, meter)
        .unwrap()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    format!("http://{addr}/v1")
}

const BODY: &str =
    r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hello, benchmark"}],"max_completion_tokens":32}"#;

async fn one_call(client: &reqwest::Client, base: &str) -> Duration {
    let t = Instant::now();
    let resp = client
        .post(format!("{base}/chat/completions"))
        .header("content-type", "application/json")
        .header("xProxy-UseCase-Name", "bench")
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    resp.bytes().await.unwrap();
    t.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct ArmRound {
    p50: f64,
    p99: f64,
    cpu_per_call: f64,
}

async fn run_arm(client: &reqwest::Client, base: &str, calls: usize) -> ArmRound {
    let cpu0 = process_cpu_ns();
    let mut lat = Vec::with_capacity(calls);
    for _ in 0..calls {
        lat.push(one_call(client, base).await);
    }
    let cpu = (process_cpu_ns() - cpu0) as f64 / calls as f64 / 1000.0;
    lat.sort();
    ArmRound {
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        cpu_per_call: cpu,
    }
}

async fn throughput(base: &str, total: usize, in_flight: usize) -> f64 {
    let client = reqwest::Client::new();
    let t = Instant::now();
    futures_util::stream::iter(0..total)
        .for_each_concurrent(in_flight, |_| {
            let client = client.clone();
            async move {
                one_call(&client, base).await;
            }
        })
        .await;
    total as f64 / t.elapsed().as_secs_f64()
}

/// Opens `n` streams through `base` and holds them after their first chunk; RSS added per stream.
async fn memory_per_stream(base: &str, mock: &MockServer, n: usize) -> f64 {
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let body = r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hold"}]}"#;
    let before = rss_bytes();
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        let resp = client
            .post(format!("{base}/chat/completions"))
            .header("content-type", "application/json")
            .header("x-mock-gate", "1")
            .body(body)
            .send()
            .await
            .unwrap();
        let mut stream = resp.bytes_stream();
        stream.next().await.unwrap().unwrap();
        open.push(stream);
    }
    let per_stream = (rss_bytes().saturating_sub(before)) as f64 / n as f64;
    mock.release(n * 100);
    for mut s in open {
        while s.next().await.is_some() {}
    }
    per_stream
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let env = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (rounds, calls, tput_calls, streams) = if full {
        (env("BENCH_ROUNDS", 15), env("BENCH_CALLS", 300), 3000, 200)
    } else {
        (2, 10, 40, 4)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mock = MockServer::start(MockConfig { limit_requests: u64::MAX / 2, limit_tokens: u64::MAX / 2, ..MockConfig::default() })
            .await
            .unwrap();
        let direct = mock.base_url();
        let relay = spawn_relay(direct.clone()).await;

        let telemetry = Telemetry::builder().without_otlp().build().unwrap();
        let tracer = SdkTracerProvider::builder().with_batch_exporter(NullExporter).build();
        // The layer as `Telemetry::tracing_layer` configures it, on a tracer with a null sink.
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer.tracer("bench"))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::set_global_default(subscriber).unwrap();
        let proxy = spawn_proxy(&direct, telemetry.meter_builder().build().unwrap()).await;
        let quiet = spawn_proxy(&direct, Meter::builder().spans(false).propagate_trace_context(false).build().unwrap()).await;
        let metrics_only = spawn_proxy(&direct, telemetry.meter_builder().spans(false).build().unwrap()).await;

        let client = reqwest::Client::new();
        let arms = [("direct", direct.clone()), ("direct-again", direct.clone()), ("relay", relay.clone()), ("proxy", proxy.clone()), ("proxy-quiet", quiet.clone()), ("metrics-only", metrics_only.clone())];
        for (_, base) in &arms {
            run_arm(&client, base, calls.min(50)).await; // warm pools and caches
        }
        let mut results: Vec<Vec<ArmRound>> = (0..arms.len()).map(|_| Vec::new()).collect();
        for round in 0..rounds {
            // Rotate the order each round so no arm always runs first.
            for k in 0..arms.len() {
                let i = (k + round) % arms.len();
                results[i].push(run_arm(&client, &arms[i].1, calls).await);
            }
        }
        let added = |arm: usize, f: &dyn Fn(&ArmRound) -> f64| -> Vec<f64> {
            results[arm].iter().zip(&results[0]).map(|(a, d)| f(a) - f(d)).collect()
        };
        let ratio = |num: &[f64], den: &[f64]| -> f64 { median(num.iter().zip(den).map(|(n, d)| n / d).collect()) };
        println!("proxy benchmark: {rounds} rounds x {calls} sequential calls per arm, one client, loopback");
        println!("  direct: p50 {:.0} us, p99 {:.0} us, CPU {:.0} us/call (client + mock)", median(results[0].iter().map(|r| r.p50).collect()), median(results[0].iter().map(|r| r.p99).collect()), median(results[0].iter().map(|r| r.cpu_per_call).collect()));
        for (i, (name, _)) in arms.iter().enumerate().skip(1) {
            println!(
                "  {name:<13} added p50 {:>+6.0} us, p99 {:>+6.0} us, CPU {:>+6.1} us/call",
                median(added(i, &|r| r.p50)),
                median(added(i, &|r| r.p99)),
                median(added(i, &|r| r.cpu_per_call))
            );
        }
        let (relay_p50, relay_p99) = (added(2, &|r| r.p50), added(2, &|r| r.p99));
        println!(
            "  proxy/relay added latency (median of per-round ratios): p50 {:.2}x, p99 {:.2}x; telemetry off: p50 {:.2}x, p99 {:.2}x",
            ratio(&added(3, &|r| r.p50), &relay_p50),
            ratio(&added(3, &|r| r.p99), &relay_p99),
            ratio(&added(4, &|r| r.p50), &relay_p50),
            ratio(&added(4, &|r| r.p99), &relay_p99)
        );

        let mut on = Vec::new();
        let mut off = Vec::new();
        for _ in 0..3 {
            on.push(throughput(&proxy, tput_calls, 32).await);
            off.push(throughput(&quiet, tput_calls, 32).await);
        }
        let relay_tput = throughput(&relay, tput_calls, 32).await;
        println!(
            "  throughput at 32 in flight: proxy {:.0}/s, proxy telemetry off {:.0}/s (ratio {:.2}), bare relay {relay_tput:.0}/s",
            median(on.clone()),
            median(off.clone()),
            median(on.iter().zip(&off).map(|(a, b)| a / b).collect())
        );

        let via_relay = memory_per_stream(&relay, &mock, streams).await;
        let via_proxy = memory_per_stream(&proxy, &mock, streams).await;
        println!(
            "  memory per open stream (RSS delta, {streams} streams; client and mock included): via proxy {:.1} KiB, via relay {:.1} KiB, proxy minus relay {:+.1} KiB",
            via_proxy / 1024.0,
            via_relay / 1024.0,
            (via_proxy - via_relay) / 1024.0
        );
        let _ = tracer.shutdown();
    });
}
