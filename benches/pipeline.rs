//! CPU and allocations the observation pipeline adds to a chat call, without the network.
//!
//! Arms, interleaved in every round (DESIGN §8 method): the same work a bare caller does
//! (serialize the request, parse the response into `serde_json::Value`), then that work plus
//! llm-meter's pipeline (prepare, span, headers, body, record, hooks) with spans disabled (no
//! subscriber), with a tracing-opentelemetry subscriber exporting to a null exporter, with spans
//! built on an SDK tracer directly (a meter given `MeterBuilder::tracer`, or one from `Telemetry`
//! over gRPC) exporting to the same null exporter, with metrics and spans as a meter from
//! `Telemetry` over OTLP/HTTP records them (spans written from the record onto the export queue,
//! sent to a collector in this process that answers 200), and the per-chunk cost of the SSE
//! observer (the whole recorded stream, and a warm content chunk of each API). A second bare
//! arm is the noise floor. Reports medians of
//! per-round differences (ns per call) and allocation counts.
//!
//! Run: `cargo bench --bench pipeline` (results go to bench/RESULTS.md by hand);
//! `BENCH_ONLY=<arm>` runs one arm's calls alone (`chunk`, `chunk-anthropic`, `chunk-responses`: a
//! warm SSE chunk of that API), for callgrind. Under
//! `cargo test` (no `--bench` argument) it runs a short smoke round instead. Either way it then
//! asserts the allocation counts bench/RESULTS.md records, which are deterministic: 0 per warm
//! SSE chunk, and at most the recorded count per call for each arm.

#![allow(unsafe_code)] // the allocation-counting GlobalAlloc below
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::time::Instant;

use http::{HeaderMap, StatusCode};
use llm_meter::opentelemetry::trace::TracerProvider as _;
use llm_meter::opentelemetry_sdk::error::OTelSdkResult;
use llm_meter::opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use llm_meter::Annotations;
use llm_meter::StreamObserver;
use llm_meter::{Meter, Server};
use tracing_subscriber::layer::SubscriberExt;

mod common;
use common::{headers, BODY};

struct Counting;

thread_local! {
    /// Allocations made by this thread (exporter threads do not count against the caller).
    static THREAD_ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count_alloc() {
    let _ = THREAD_ALLOCS.try_with(|c| c.set(c.get() + 1));
}

fn allocs() -> u64 {
    THREAD_ALLOCS.with(Cell::get)
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_alloc();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_alloc();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Debug)]
struct NullExporter;

impl SpanExporter for NullExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        black_box(batch);
        Ok(())
    }
}

const STREAM: &str = include_str!("../tests/fixtures/openai-chat-completion-stream.sse");
const ANTHROPIC_STREAM: &str = include_str!("../tests/fixtures/anthropic-message-stream.sse");
const RESPONSES_STREAM: &str = include_str!("../tests/fixtures/openai-response-stream.sse");

/// The warm content chunk measured for each API: its `BENCH_ONLY` arm, its name, the recorded
/// stream and which of its events (the fourth Chat Completions event, the Messages stream's
/// second text delta, the Responses stream's third output text delta).
const WARM_CHUNKS: [(&str, &str, llm_meter::Api, &str, usize); 3] = [
    ("chunk", "Chat Completions", llm_meter::Api::ChatCompletions, STREAM, 3),
    (
        "chunk-anthropic",
        "Anthropic Messages",
        llm_meter::Api::AnthropicMessages,
        ANTHROPIC_STREAM,
        4,
    ),
    (
        "chunk-responses",
        "Responses",
        llm_meter::Api::Responses,
        RESPONSES_STREAM,
        6,
    ),
];

/// An observer of `api` that has seen the events before `events[at]`.
fn warm_observer(api: llm_meter::Api, events: &[&[u8]], at: usize) -> StreamObserver {
    let mut o = StreamObserver::for_api(Instant::now(), api);
    for c in &events[..at] {
        o.observe_all(c);
    }
    o
}

/// A recorded stream's events, each a chunk of its own.
fn events(stream: &str) -> Vec<&[u8]> {
    stream.split_inclusive("\n\n").map(str::as_bytes).collect()
}

/// The cost of one warm content chunk of `api`: an observer that has seen the events before
/// `events[at]` observes that event again and again. Nanoseconds per chunk (median over
/// `rounds` rounds of 10,000) and allocations per chunk.
fn warm_chunk(api: llm_meter::Api, events: &[&[u8]], at: usize, rounds: usize) -> (f64, f64) {
    let mut o = warm_observer(api, events, at);
    let chunk = events[at];
    let a0 = allocs();
    for _ in 0..10_000 {
        o.observe_all(black_box(chunk));
    }
    let allocs = (allocs() - a0) as f64 / 10_000.0;
    let mut ns = vec![];
    for _ in 0..rounds {
        let t0 = Instant::now();
        for _ in 0..10_000 {
            o.observe_all(black_box(chunk));
        }
        ns.push(t0.elapsed().as_nanos() as f64 / 10_000.0);
    }
    (median(ns), allocs)
}

fn request() -> serde_json::Value {
    serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello!"}], "max_completion_tokens": 100})
}

/// What a caller does without llm-meter: serialize, hand the body to its HTTP client (which
/// makes it `Bytes`, as reqwest's `Body::from(Vec<u8>)` does; with llm-meter, `prepare` does
/// that and the client takes the `Bytes` as they are), parse the answer.
fn bare(req: &serde_json::Value, body: &[u8]) {
    let bytes = serde_json::to_vec(req).unwrap();
    black_box(bytes::Bytes::from(bytes));
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    black_box(v);
}

/// The same, through llm-meter's pipeline.
fn metered(
    meter: &Meter,
    server: &Server,
    annotations: &Annotations,
    headers: &HeaderMap,
    req: &serde_json::Value,
    body: &[u8],
) {
    let bytes = serde_json::to_vec(req).unwrap();
    let prepared = meter.prepare(bytes, Some(false)).unwrap();
    let mut call = meter.start(server.clone(), annotations, prepared.facts);
    let mut out = HeaderMap::new();
    call.inject_trace_context(&mut out);
    black_box((&prepared.body, out));
    let record = call.finish_body(StatusCode::OK, headers, body);
    black_box(record);
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    black_box(v);
}

/// A collector on a port of its own that answers every export with 200: its base URL.
fn null_collector() -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                loop {
                    let (mut line, mut len) = (String::new(), 0);
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if reader.get_mut().write_all(ok).is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

fn per_call(iters: u32, mut f: impl FnMut()) -> (f64, f64) {
    let a0 = allocs();
    let t0 = Instant::now();
    for _ in 0..iters {
        f();
    }
    let ns = t0.elapsed().as_nanos() as f64 / f64::from(iters);
    let allocs = (allocs() - a0) as f64 / f64::from(iters);
    (ns, allocs)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Allocation counts bench/RESULTS.md records: added per call, spans + trace context with no
/// subscriber installed.
const RECORDED_ALLOCS_NO_SUBSCRIBER: f64 = 8.0;
/// Added per call, spans and propagation off.
const RECORDED_ALLOCS_TELEMETRY_OFF: f64 = 8.0;
/// Added per call, tracing-opentelemetry subscriber, sampled.
const RECORDED_ALLOCS_OTEL: f64 = 37.0;
/// Added per call, spans on the tracer directly, sampled.
const RECORDED_ALLOCS_DIRECT: f64 = 19.0;
/// Added per call, metrics and a span written onto the OTLP/HTTP queue, sampled.
const RECORDED_ALLOCS_TELEMETRY: f64 = 11.0;
/// Per chunk, the whole fixture stream (first-chunk fields and the learned delta shape included).
const RECORDED_ALLOCS_PER_STREAM_CHUNK: f64 = 0.73;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test` runs this binary without it: a smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let env = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (rounds, iters) = if full {
        (env("BENCH_ROUNDS", 31), env("BENCH_ITERS", 2000))
    } else {
        (2, 200)
    };
    let iters = u32::try_from(iters).expect("BENCH_ITERS fits in u32");
    let req = request();
    let body = BODY.as_bytes();
    let h = headers();
    let server = Server::of(&"https://api.openai.com/v1/chat/completions".parse().unwrap());
    let annotations = Annotations::builder()
        .use_case_name("bench")
        .user_id("u-1")
        .limit_ids(["daily"])
        .build()
        .unwrap();
    let meter = Meter::default();
    let quiet = Meter::builder()
        .spans(false)
        .propagate_trace_context(false)
        .build()
        .unwrap();

    let provider = SdkTracerProvider::builder().with_batch_exporter(NullExporter).build();
    let otel =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bench")));
    let otel = tracing::Dispatch::new(otel);
    let direct = Meter::builder().tracer(provider.tracer("bench")).build().unwrap();
    let telemetry = llm_meter::Telemetry::builder()
        .otlp(llm_meter::Protocol::HttpProtobuf, null_collector())
        .prometheus(false)
        .metric_interval(std::time::Duration::from_secs(3600))
        .build()
        .unwrap();
    let exported = telemetry.meter_builder().build().unwrap();

    // `BENCH_ONLY=<arm>`: that arm's calls alone, `BENCH_ITERS` of them, to count its
    // instructions under callgrind (bench/RESULTS.md); no rounds, no checks.
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        let run = |m: &Meter| per_call(iters, || metered(m, &server, &annotations, &h, &req, body));
        let (ns, allocs) = match only.as_str() {
            "bare" => per_call(iters, || bare(&req, body)),
            "off" => run(&quiet),
            "no-subscriber" => run(&meter),
            "tracing" => tracing::dispatcher::with_default(&otel, || run(&meter)),
            "direct" => run(&direct),
            "telemetry" => run(&exported),
            arm if WARM_CHUNKS.iter().any(|w| w.0 == arm) => {
                // A warm content chunk (see `WARM_CHUNKS`), `BENCH_ITERS` times through one
                // warm observer.
                let &(_, _, api, stream, at) = WARM_CHUNKS.iter().find(|w| w.0 == arm).unwrap();
                let events = events(stream);
                let mut o = warm_observer(api, &events, at);
                per_call(iters, || o.observe_all(black_box(events[at])))
            }
            other => panic!(
                "BENCH_ONLY={other}: not an arm (bare, off, no-subscriber, tracing, direct, telemetry, chunk, chunk-anthropic, chunk-responses)"
            ),
        };
        println!("{only}: {iters} calls, {ns:.0} ns/call, {allocs:.1} allocs/call");
        return;
    }

    tracing::dispatcher::with_default(&otel, || {
        let facts = meter.prepare(serde_json::to_vec(&req).unwrap(), None).unwrap().facts;
        let call = meter.start(server.clone(), &annotations, facts);
        assert!(!call.span().is_disabled(), "the OTel arm must record real spans");
    });
    let chunks = events(STREAM);
    let stream_bytes: usize = chunks.iter().map(|c| c.len()).sum();

    let (mut noise, mut off, mut quiet_d, mut on, mut direct_d, mut per_chunk) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut telemetry_d, mut allocs_telemetry) = (vec![], 0.0);
    let (mut allocs_bare, mut allocs_off, mut allocs_quiet, mut allocs_on, mut allocs_direct, mut allocs_chunk) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let mut bare_ns = vec![];
    for _ in 0..rounds {
        let (b1, ab) = per_call(iters, || bare(&req, body));
        let (m_off, a_off) = per_call(iters, || metered(&meter, &server, &annotations, &h, &req, body));
        let (m_quiet, a_quiet) = per_call(iters, || metered(&quiet, &server, &annotations, &h, &req, body));
        let (m_on, a_on) = tracing::dispatcher::with_default(&otel, || {
            per_call(iters, || metered(&meter, &server, &annotations, &h, &req, body))
        });
        let (m_direct, a_direct) = per_call(iters, || metered(&direct, &server, &annotations, &h, &req, body));
        let (m_telemetry, a_telemetry) = per_call(iters, || metered(&exported, &server, &annotations, &h, &req, body));
        let (b2, _) = per_call(iters, || bare(&req, body));
        let (stream_ns, a_stream) = per_call(iters / 4, || {
            let mut o = StreamObserver::new(Instant::now());
            for c in &chunks {
                o.observe_all(c);
            }
            black_box(&o);
        });
        let base = (b1 + b2) / 2.0;
        bare_ns.push(base);
        noise.push(b2 - b1);
        off.push(m_off - base);
        quiet_d.push(m_quiet - base);
        on.push(m_on - base);
        direct_d.push(m_direct - base);
        telemetry_d.push(m_telemetry - base);
        allocs_telemetry = a_telemetry - ab;
        per_chunk.push(stream_ns / chunks.len() as f64);
        (
            allocs_bare,
            allocs_off,
            allocs_quiet,
            allocs_on,
            allocs_direct,
            allocs_chunk,
        ) = (
            ab,
            a_off - ab,
            a_quiet - ab,
            a_on - ab,
            a_direct - ab,
            a_stream / chunks.len() as f64,
        );
    }
    let warm = WARM_CHUNKS.map(|(_, name, api, stream, at)| {
        let events = events(stream);
        (name, events[at].len(), warm_chunk(api, &events, at, rounds))
    });
    let warm_chunk_allocs = warm.iter().map(|(_, _, (_, a))| *a).fold(0.0, f64::max);

    println!("pipeline benchmark: {rounds} rounds x {iters} calls, medians of per-round differences");
    println!(
        "  bare caller work (serialize + parse into Value):     {:>8.0} ns/call, {allocs_bare:.0} allocs",
        median(bare_ns)
    );
    println!(
        "  noise floor (bare vs bare):                          {:>+8.0} ns/call",
        median(noise)
    );
    println!(
        "  added, spans + trace context, no subscriber:         {:>+8.0} ns/call, {allocs_off:+.0} allocs",
        median(off)
    );
    println!(
        "  added, spans and propagation off (telemetry off):    {:>+8.0} ns/call, {allocs_quiet:+.0} allocs",
        median(quiet_d)
    );
    println!(
        "  added, tracing-opentelemetry subscriber (sampled):   {:>+8.0} ns/call, {allocs_on:+.0} allocs",
        median(on)
    );
    println!(
        "  added, spans on the tracer directly (sampled):       {:>+8.0} ns/call, {allocs_direct:+.0} allocs",
        median(direct_d)
    );
    println!(
        "  added, metrics + span onto the OTLP/HTTP queue:     {:>+8.0} ns/call, {allocs_telemetry:+.0} allocs",
        median(telemetry_d)
    );
    println!(
        "  SSE observer: {:.0} ns/chunk ({} chunks, {stream_bytes} bytes per stream), {allocs_chunk:.2} allocs/chunk incl. first-chunk fields, {warm_chunk_allocs:.3} allocs/chunk warm",
        median(per_chunk),
        chunks.len()
    );
    for (api, len, (ns, allocs)) in &warm {
        println!("  SSE observer, a warm content chunk ({api}, {len} bytes): {ns:.0} ns/chunk, {allocs:.3} allocs");
    }
    let _ = provider.shutdown();
    telemetry.shutdown();

    // Allocations are deterministic (counted on this thread only): hold them to what
    // bench/RESULTS.md records. Per-call figures are averages over a round; the rounding
    // margin (half an allocation) absorbs a round's one-off allocations.
    println!(
        "  allocation counts: {allocs_off:+.3} / {allocs_quiet:+.3} / {allocs_on:+.3} / {allocs_direct:+.3} / {allocs_telemetry:+.3} per call, {allocs_chunk:.3} per stream chunk, {warm_chunk_allocs:.3} per warm chunk"
    );
    let within = |what: &str, measured: f64, recorded: f64| {
        assert!(
            measured <= recorded + 0.5,
            "{what}: {measured:.3} allocations, bench/RESULTS.md records {recorded}"
        );
    };
    within(
        "added per call, no subscriber",
        allocs_off,
        RECORDED_ALLOCS_NO_SUBSCRIBER,
    );
    within(
        "added per call, telemetry off",
        allocs_quiet,
        RECORDED_ALLOCS_TELEMETRY_OFF,
    );
    within("added per call, tracing-opentelemetry", allocs_on, RECORDED_ALLOCS_OTEL);
    within("added per call, tracer directly", allocs_direct, RECORDED_ALLOCS_DIRECT);
    within(
        "added per call, metrics + OTLP/HTTP queue",
        allocs_telemetry,
        RECORDED_ALLOCS_TELEMETRY,
    );
    let per_stream = allocs_chunk * chunks.len() as f64;
    let recorded_per_stream = (RECORDED_ALLOCS_PER_STREAM_CHUNK * chunks.len() as f64).round();
    assert!(
        per_stream.round() <= recorded_per_stream,
        "SSE observer: {per_stream:.2} allocations per fixture stream, bench/RESULTS.md records {recorded_per_stream}"
    );
    assert_eq!(
        warm_chunk_allocs, 0.0,
        "SSE observer: a warm content chunk of every API allocates nothing (bench/RESULTS.md)"
    );
}
