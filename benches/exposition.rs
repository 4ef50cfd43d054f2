//! How long `/metrics` takes with many series: calls with distinct use cases and models are
//! recorded until the Prometheus exposition has at least `BENCH_SERIES` (default 10,000) sample
//! lines, then the exposition is encoded `BENCH_ROUNDS` times (default 31); prints the median and
//! the slowest. DESIGN §8's target: ≤ 1 ms for 10,000 series.
//!
//! Run: `cargo bench --bench exposition`. Under `cargo test` (no `--bench` argument) it runs a
//! small smoke version.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark fails loudly

use std::time::Instant;

use http::StatusCode;
use llm_meter::{prometheus, Annotations, Meter, Server, Telemetry};

mod common;
use common::{headers, BODY};

fn sample_lines(text: &str) -> usize {
    text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).count()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let env = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (target, rounds) = if full {
        (env("BENCH_SERIES", 10_000), env("BENCH_ROUNDS", 31))
    } else {
        (1_000, 3)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let telemetry = Telemetry::builder().without_otlp().build().unwrap();
    let exposition = telemetry.exposition().expect("the prometheus feature").clone();
    let meter: Meter = telemetry.meter_builder().spans(false).build().unwrap();
    let server = Server::of(&"https://api.openai.com/v1/chat/completions".parse().unwrap());
    let h = headers();
    let models = ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o3-mini"];
    let mut label_sets = 0usize;
    let mut lines = 0usize;
    while lines < target {
        for model in models {
            let annotations = Annotations::builder()
                .use_case_name(format!("use-case-{label_sets}"))
                .build()
                .unwrap();
            let body = serde_json::to_vec(&serde_json::json!({"model": model, "messages": []})).unwrap();
            let prepared = meter.prepare(body, Some(false)).unwrap();
            let call = meter.start(server.clone(), &annotations, prepared.facts);
            call.finish_body(StatusCode::OK, &h, BODY.as_bytes());
        }
        label_sets += 1;
        if label_sets % 10 == 0 {
            lines = sample_lines(&prometheus::encode(&exposition).unwrap());
        }
    }
    let text = prometheus::encode(&exposition).unwrap();
    lines = sample_lines(&text);
    let mut took = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t0 = Instant::now();
        let text = prometheus::encode(&exposition).unwrap();
        took.push(t0.elapsed().as_secs_f64() * 1000.0);
        std::hint::black_box(text);
    }
    took.sort_by(f64::total_cmp);
    println!(
        "exposition benchmark: {lines} sample lines ({} label sets x {} models, {} KiB), encode median {:.2} ms, slowest {:.2} ms over {rounds} rounds (target: <= 1 ms for 10,000 series)",
        label_sets,
        models.len(),
        text.len() / 1024,
        took[took.len() / 2],
        took[took.len() - 1],
    );
}
