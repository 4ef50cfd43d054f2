//! The proxy's spans: a server span continuing the caller's trace, with the `chat` client span
//! as its child, and the right `error.type` on failures. (Its own file: every test here
//! captures spans, so no test without a subscriber shares the process.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use crate::common;

use std::time::Duration;

use common::*;
use llm_meter::opentelemetry::trace::SpanKind;
use llm_meter::Meter;
use llm_meter_mock::{MockConfig, MockServer};
use llm_meter_proxy::{Proxy, ProxySettings};
use serde_json::json;

async fn proxy(upstream: String, timeout: Duration) -> String {
    proxy_with(upstream, timeout, Meter::default()).await
}

async fn proxy_with(upstream: String, timeout: Duration, meter: Meter) -> String {
    let settings = ProxySettings {
        upstream: upstream.parse().unwrap(),
        timeout,
        ..ProxySettings::default()
    };
    let addr = Proxy::new(settings, meter)
        .unwrap()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    format!("http://{addr}/v1/chat/completions")
}

fn body() -> serde_json::Value {
    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn server_span_continues_the_callers_trace_and_parents_the_chat_span() {
    for direct in [false, true] {
        server_and_chat_spans(direct).await;
    }
}

/// Through `tracing` spans, or (`direct`) on a tracer, as a meter from `Telemetry` does.
async fn server_and_chat_spans(direct: bool) {
    let capture = capture_spans();
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let meter = if direct {
        Meter::builder().tracer(capture.tracer()).build().unwrap()
    } else {
        Meter::default()
    };
    let url = proxy_with(mock.base_url(), Duration::from_secs(10), meter).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = reqwest::Client::new()
        .post(&url)
        .json(&body())
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .header("authorization", "Bearer sk-secret-never-recorded")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let spans = capture.spans();
    let server = spans
        .iter()
        .find(|s| s.name == "POST /v1/chat/completions")
        .expect("server span");
    let chat = spans.iter().find(|s| s.name == "chat gpt-4o").expect("chat span");
    assert_eq!(server.span_kind, SpanKind::Server);
    assert_eq!(chat.span_kind, SpanKind::Client);
    assert_eq!(server.span_context.trace_id().to_string(), trace_id);
    assert_eq!(chat.parent_span_id, server.span_context.span_id());
    let sent = mock.received().pop().unwrap();
    let traceparent = sent.headers["traceparent"].to_str().unwrap();
    assert_eq!(
        traceparent,
        format!("00-{trace_id}-{}-01", chat.span_context.span_id()),
        "the provider sees the chat span"
    );
    assert!(!format!("{spans:?}").contains("sk-secret"), "no secret in any span");
}

#[tokio::test]
async fn upstream_failures_end_the_chat_span_with_their_error_type() {
    let capture = capture_spans();
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let url = proxy(mock.base_url(), Duration::from_millis(300)).await;
    let client = reqwest::Client::new();
    let stalled = client
        .post(&url)
        .json(&body())
        .header("x-mock-error", "stall")
        .send()
        .await
        .unwrap();
    assert_eq!(stalled.status(), 504);
    let limited = client
        .post(&url)
        .json(&body())
        .header("x-mock-error", "429")
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 429);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = proxy(format!("http://127.0.0.1:{port}/v1"), Duration::from_secs(5)).await;
    assert_eq!(client.post(&down).json(&body()).send().await.unwrap().status(), 502);
    let errors: Vec<_> = capture
        .spans()
        .iter()
        .filter(|s| s.name.starts_with("chat "))
        .map(|s| attrs(s)["error.type"].clone())
        .collect();
    assert_eq!(errors, [s("timeout"), s("429"), s("connect")]);
}
