//! OTLP export of spans and metrics, over gRPC and HTTP/protobuf, to a real receiver built on
//! `opentelemetry-proto`; and the faults: receiver down, hanging, and back again.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use crate::receiver;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use llm_meter::names;
use llm_meter::{Annotations, CallRecord, Client};
use llm_meter::{Protocol, Telemetry};
use llm_meter::{DURATION_BUCKETS, TOKEN_BUCKETS};
use llm_meter_mock::{MockConfig, MockServer};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::metrics::v1::metric;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use receiver::*;
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt;

fn telemetry(protocol: Protocol, addr: std::net::SocketAddr) -> Telemetry {
    Telemetry::builder()
        .otlp(protocol, format!("http://{addr}"))
        .service_name("otlp-test")
        .prometheus(false)
        .metric_interval(Duration::from_secs(3600))
        .export_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

fn annotations() -> Annotations {
    Annotations::builder()
        .use_case_name("otlp.test")
        .user_id("u-1")
        .limit_ids(["daily"])
        .build()
        .unwrap()
}

fn body(stream: bool) -> serde_json::Value {
    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello there"}], "stream": stream})
}

async fn flush(t: &Telemetry) {
    let t = t.clone();
    tokio::task::spawn_blocking(move || t.flush()).await.unwrap();
}

async fn call(client: &Client) -> CallRecord {
    client
        .chat(&body(false), &annotations())
        .await
        .unwrap()
        .record()
        .clone()
}

/// A receiver speaking `protocol`, on any port.
async fn receiver_of(protocol: Protocol) -> (std::net::SocketAddr, std::sync::Arc<Received>) {
    match protocol {
        Protocol::Grpc => grpc(any()).await,
        Protocol::HttpProtobuf => http(any()).await,
    }
}

fn client(mock: &MockServer, t: &Telemetry) -> Client {
    Client::builder()
        .base_url(mock.base_url())
        .meter(t.meter_builder().build().unwrap())
        .build()
        .unwrap()
}

async fn exports_spans_and_metrics(protocol: Protocol) {
    let (addr, rx) = receiver_of(protocol).await;
    let t = telemetry(protocol, addr);
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry().with(t.tracing_layer()));
    let mock = MockServer::start(MockConfig {
        cached_fraction: 0.5,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let record = call(&client(&mock, &t)).await;
    flush(&t).await;
    assert!(eventually(|| !rx.spans().is_empty() && rx.latest_metric(names::METRIC_TOKEN_USAGE).is_some()).await);

    let scopes = rx.scopes();
    assert!(!scopes.is_empty());
    for (name, version) in &scopes {
        assert_eq!(
            (name.as_str(), version.as_str()),
            ("llm-meter", env!("CARGO_PKG_VERSION")),
            "the scope carries the version"
        );
    }
    let spans = rx.spans();
    assert_eq!(spans.len(), 1);
    let span = &spans[0];
    assert_eq!(span.name, "chat gpt-4o");
    assert_eq!(span.kind, SpanKind::Client as i32);
    let usage = record.usage.unwrap();
    assert_eq!(
        int_attr(&span.attributes, "gen_ai.usage.input_tokens"),
        Some(usage.input_tokens as i64)
    );
    assert_eq!(
        int_attr(&span.attributes, "gen_ai.usage.output_tokens"),
        Some(usage.output_tokens as i64)
    );
    assert_eq!(str_attr(&span.attributes, "gen_ai.response.id"), record.response.id);
    assert_eq!(
        str_attr(&span.attributes, "use_case.name").as_deref(),
        Some("otlp.test")
    );
    assert_eq!(
        str_attr(&span.attributes, "openai.request.id").as_deref(),
        record.meta.request_id()
    );
    match attr(&span.attributes, "limit.ids") {
        Some(any_value::Value::ArrayValue(a)) => assert_eq!(a.values.len(), 1),
        other => panic!("limit.ids is not an array: {other:?}"),
    }

    let tokens = rx.latest_metric(names::METRIC_TOKEN_USAGE).unwrap();
    assert_eq!(tokens.unit, "{token}");
    let Some(metric::Data::Histogram(h)) = &tokens.data else {
        panic!("token usage is a histogram")
    };
    assert_eq!(h.data_points.len(), 2);
    for p in &h.data_points {
        assert_eq!(p.explicit_bounds, TOKEN_BUCKETS);
        let kind = str_attr(&p.attributes, "gen_ai.token.type").unwrap();
        let want = if kind == "input" {
            usage.input_tokens
        } else {
            usage.output_tokens
        };
        assert_eq!((p.count, p.sum), (1, Some(want as f64)), "{kind}");
        assert_eq!(
            str_attr(&p.attributes, "gen_ai.request.model").as_deref(),
            Some("gpt-4o")
        );
        assert_eq!(
            str_attr(&p.attributes, "gen_ai.response.model").as_deref(),
            Some("gpt-4o-2024-08-06")
        );
        assert_eq!(str_attr(&p.attributes, "use_case.name").as_deref(), Some("otlp.test"));
        assert_eq!(
            str_attr(&p.attributes, "gen_ai.provider.name").as_deref(),
            Some("openai")
        );
        assert_eq!(
            str_attr(&p.attributes, "user.id"),
            None,
            "user.id is not a label by default"
        );
    }
    let duration = rx.latest_metric(names::METRIC_OPERATION_DURATION).unwrap();
    assert_eq!(duration.unit, "s");
    let Some(metric::Data::Histogram(h)) = &duration.data else {
        panic!("duration is a histogram")
    };
    assert_eq!(h.data_points[0].explicit_bounds, DURATION_BUCKETS);
    assert_eq!(
        counter_total(&rx.latest_metric(names::METRIC_INPUT_TOKENS).unwrap()),
        usage.input_tokens
    );
    assert_eq!(
        counter_total(&rx.latest_metric(names::METRIC_CACHED_INPUT_TOKENS).unwrap()),
        usage.cached_input_tokens.unwrap()
    );
    let remaining = rx.latest_metric(names::METRIC_RATELIMIT_REMAINING).unwrap();
    let Some(metric::Data::Gauge(g)) = &remaining.data else {
        panic!("remaining is a gauge")
    };
    let requests = g
        .data_points
        .iter()
        .find(|p| str_attr(&p.attributes, "llm_meter.ratelimit.kind").as_deref() == Some("requests"))
        .unwrap();
    assert_eq!(
        requests.value,
        Some(
            opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(
                record.meta.requests.remaining.unwrap() as i64
            )
        )
    );
    assert_eq!(str_attr(&rx.resource(), "service.name").as_deref(), Some("otlp-test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_spans_and_metrics_over_grpc() {
    exports_spans_and_metrics(Protocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_spans_and_metrics_over_http() {
    exports_spans_and_metrics(Protocol::HttpProtobuf).await;
}

/// The tracing layer takes `INFO` and above: a caller's `DEBUG` span is not exported beside its
/// `INFO` parent, and `TRACE` events (hyper-util's pool logs several per request) are not even
/// enabled, so they are never built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tracing_layer_exports_info_spans_and_leaves_debug_and_trace_out() {
    let (addr, rx) = http(any()).await;
    let t = telemetry(Protocol::HttpProtobuf, addr);
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry().with(t.tracing_layer()));
    assert!(!tracing::enabled!(target: "hyper_util::client::legacy::pool", tracing::Level::TRACE));
    assert!(!tracing::enabled!(tracing::Level::DEBUG));
    assert!(tracing::enabled!(tracing::Level::INFO));
    tracing::info_span!("kept").in_scope(|| tracing::debug_span!("left out").in_scope(|| {}));
    flush(&t).await;
    assert!(eventually(|| !rx.spans().is_empty()).await);
    let names: Vec<String> = rx.spans().iter().map(|s| s.name.clone()).collect();
    assert_eq!(names, ["kept"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_complete_while_the_receiver_hangs_and_the_bounded_queue_drops() {
    // gRPC goes through the SDK's batch processor, HTTP through the queue of spans written
    // straight from records: both bounded, both counted.
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        receiver_hangs(protocol).await;
    }
}

async fn receiver_hangs(protocol: Protocol) {
    let (addr, rx) = receiver_of(protocol).await;
    rx.hang.store(true, Ordering::Relaxed);
    let t = Telemetry::builder()
        .otlp(protocol, format!("http://{addr}"))
        .span_queue(16)
        .export_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry().with(t.tracing_layer()));
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let c = client(&mock, &t);
    let started = Instant::now();
    for _ in 0..200 {
        let r = tokio::time::timeout(Duration::from_secs(5), call(&c))
            .await
            .expect("a call never waits on the exporter");
        assert_eq!(r.error, None);
    }
    let calls = started.elapsed();
    flush(&t).await;
    let stats = t.export_stats();
    assert_eq!(stats.ended(), 200, "{protocol:?}");
    assert_eq!(stats.exported(), 0, "the receiver never answered ({protocol:?})");
    assert!(
        stats.dropped() >= 100 && stats.queued() == 0,
        "queue of 16 must drop most of 200 spans ({protocol:?}): {stats:?}"
    );
    // What the alert on lost spans watches.
    let text = llm_meter::prometheus::encode(t.exposition().unwrap()).unwrap();
    for (outcome, n) in [
        ("dropped", stats.dropped()),
        ("failed", stats.failed()),
        ("exported", 0),
    ] {
        let line = format!("llm_meter_export_spans_total{{outcome=\"{outcome}\"}} {n}");
        assert!(text.lines().any(|l| l == line), "{protocol:?}: no `{line}` in\n{text}");
    }
    assert!(calls < Duration::from_secs(20), "{calls:?}");
    rx.hang.store(false, Ordering::Relaxed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_then_back_gets_right_cumulative_metrics() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let t = telemetry(Protocol::Grpc, port);
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry().with(t.tracing_layer()));
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let c = client(&mock, &t);
    let mut input_tokens = 0;
    for _ in 0..3 {
        input_tokens += call(&c).await.usage.unwrap().input_tokens;
    }
    flush(&t).await;
    assert!(
        t.export_stats().failed() >= 3,
        "refused exports are counted: {:?}",
        t.export_stats()
    );

    let (_, rx) = grpc(port).await;
    for _ in 0..2 {
        input_tokens += call(&c).await.usage.unwrap().input_tokens;
    }
    flush(&t).await;
    assert!(eventually(|| rx.latest_metric(names::METRIC_INPUT_TOKENS).is_some()).await);
    assert_eq!(
        counter_total(&rx.latest_metric(names::METRIC_INPUT_TOKENS).unwrap()),
        input_tokens
    );
    let Some(metric::Data::Histogram(h)) = rx.latest_metric(names::METRIC_OPERATION_DURATION).unwrap().data else {
        panic!("duration is a histogram")
    };
    assert_eq!(
        h.data_points.iter().map(|p| p.count).sum::<u64>(),
        5,
        "all five calls, across the outage"
    );
}

/// What the proxy does on SIGTERM: no flush, only `shutdown` (the guard's drop). The span still
/// waiting for its 5 s batch and the metrics waiting for their hourly export both arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_alone_exports_the_spans_and_metrics_still_held() {
    let (addr, rx) = http(any()).await;
    let t = telemetry(Protocol::HttpProtobuf, addr);
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let c = Client::builder()
        .base_url(mock.base_url())
        .meter(t.meter_builder().build().unwrap())
        .build()
        .unwrap();
    let record = call(&c).await;
    assert!(rx.spans().is_empty(), "nothing is exported before the batch is due");
    let held = t.clone();
    tokio::task::spawn_blocking(move || held.shutdown()).await.unwrap();
    let spans = rx.spans();
    assert_eq!(spans.len(), 1, "the held span is exported on shutdown");
    assert_eq!(str_attr(&spans[0].attributes, "gen_ai.response.id"), record.response.id);
    let tokens = rx
        .latest_metric(names::METRIC_TOKEN_USAGE)
        .expect("the held metrics are exported on shutdown");
    let Some(metric::Data::Histogram(h)) = &tokens.data else {
        panic!("token usage is a histogram")
    };
    let usage = record.usage.unwrap();
    let sum: f64 = h.data_points.iter().filter_map(|p| p.sum).sum();
    assert_eq!(sum, (usage.input_tokens + usage.output_tokens) as f64);
}

/// The proxy exporting to `addr` over `protocol`: its URL for chat completions.
async fn proxy(t: &Telemetry, upstream: String) -> String {
    let settings = llm_meter_proxy::ProxySettings {
        upstream: upstream.parse().unwrap(),
        ..llm_meter_proxy::ProxySettings::default()
    };
    let addr = llm_meter_proxy::Proxy::new(settings, t.meter_builder().build().unwrap())
        .unwrap()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    format!("http://{addr}/v1/chat/completions")
}

/// Over OTLP/HTTP a meter from `Telemetry` writes its spans straight from the record (no SDK
/// span); over gRPC they are SDK spans. The collector must see the same spans either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_spans_are_the_same_over_http_as_over_grpc_and_continue_the_callers_trace() {
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut seen = Vec::new();
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let (addr, rx) = receiver_of(protocol).await;
        let t = telemetry(protocol, addr);
        let mock = MockServer::start(MockConfig::default()).await.unwrap();
        let url = proxy(&t, mock.base_url()).await;
        let resp = reqwest::Client::new()
            .post(&url)
            .json(&body(false))
            .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
            .header("xProxy-UseCase-Name", "otlp.proxy")
            .header("authorization", "Bearer sk-secret-never-exported")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        flush(&t).await;
        assert!(
            eventually(|| rx.spans().len() == 2).await,
            "{protocol:?}: {:?}",
            rx.spans()
        );
        let spans = rx.spans();
        let server = spans.iter().find(|s| s.kind == SpanKind::Server as i32).unwrap();
        let chat = spans.iter().find(|s| s.kind == SpanKind::Client as i32).unwrap();
        assert_eq!(server.name, "POST /v1/chat/completions");
        assert_eq!(chat.name, "chat gpt-4o");
        assert_eq!(hex(&server.trace_id), trace_id, "{protocol:?}");
        assert_eq!(hex(&chat.trace_id), trace_id, "{protocol:?}");
        assert_eq!(hex(&server.parent_span_id), "00f067aa0ba902b7", "{protocol:?}");
        assert_eq!(chat.parent_span_id, server.span_id, "{protocol:?}");
        let sent = mock.received().pop().unwrap();
        assert_eq!(
            sent.headers["traceparent"].to_str().unwrap(),
            format!("00-{trace_id}-{}-01", hex(&chat.span_id)),
            "{protocol:?}: the provider sees the chat span"
        );
        assert!(chat.end_time_unix_nano > chat.start_time_unix_nano);
        assert!(!format!("{spans:?}").contains("sk-secret"), "no secret in any span");
        // What differs from call to call (ids, times) aside, the same spans.
        let per_call = ["gen_ai.response.id", "openai.request.id", "server.port"];
        let shape = |s: &opentelemetry_proto::tonic::trace::v1::Span| {
            let attributes: Vec<String> = s
                .attributes
                .iter()
                .filter(|kv| !per_call.contains(&kv.key.as_str()))
                .map(|kv| format!("{}={:?}", kv.key, kv.value))
                .collect();
            (
                s.name.clone(),
                s.kind,
                s.flags,
                s.status.clone(),
                s.trace_state.clone(),
                attributes,
            )
        };
        seen.push((shape(server), shape(chat)));
        t.shutdown();
    }
    assert_eq!(
        seen[0], seen[1],
        "gRPC (SDK spans) and HTTP (written from the record) differ"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A library call made inside the caller's own `tracing` span is that span's child, whichever
/// route the meter's span takes (an SDK span over gRPC, written from the record over HTTP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_inside_the_callers_span_is_its_child_over_both_protocols() {
    use tracing::Instrument as _;
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let (addr, rx) = receiver_of(protocol).await;
        let t = telemetry(protocol, addr);
        let subscriber = tracing_subscriber::registry().with(t.tracing_layer());
        let _default = tracing::subscriber::set_default(subscriber);
        let mock = MockServer::start(MockConfig::default()).await.unwrap();
        let c = client(&mock, &t);
        call(&c).instrument(tracing::info_span!("handle.ticket")).await;
        flush(&t).await;
        assert!(
            eventually(|| rx.spans().len() == 2).await,
            "{protocol:?}: {:?}",
            rx.spans()
        );
        let spans = rx.spans();
        let parent = spans.iter().find(|s| s.name == "handle.ticket").unwrap();
        let chat = spans.iter().find(|s| s.name == "chat gpt-4o").unwrap();
        assert_eq!(chat.trace_id, parent.trace_id, "{protocol:?}");
        assert_eq!(chat.parent_span_id, parent.span_id, "{protocol:?}");
        let sent = mock.received().pop().unwrap();
        assert_eq!(
            sent.headers["traceparent"].to_str().unwrap(),
            format!("00-{}-{}-01", hex(&chat.trace_id), hex(&chat.span_id)),
            "{protocol:?}"
        );
        t.shutdown();
    }
}
