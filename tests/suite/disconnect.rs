//! A caller that goes away before the answer (a client disconnecting from the proxy before the
//! response head, a timeout around a library call): the call is finished once as `cancelled`,
//! its reservation is released, and `llm_meter.calls.in_flight` returns to zero.

use std::time::Duration;

use llm_meter::{names, Client, ErrorType};
use llm_meter_mock::{MockConfig, MockServer};
use llm_meter_proxy::{Proxy, ProxySettings};
use serde_json::json;

use crate::common::metered::{limited, metered, Metered, LIMIT};

/// A mock that answers after 1 s, and a meter with metrics, a reserving limit and a hook.
async fn setup() -> (MockServer, Metered) {
    let mock = MockServer::start(MockConfig {
        latency: Duration::from_secs(1),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    (mock, metered())
}

/// Checks the one record, the ledger and the gauge; nothing more arrives once the provider
/// would have answered.
async fn assert_cancelled_once(m: &Metered) {
    m.assert_finished_once(Some(ErrorType::Cancelled), Duration::from_millis(1200))
        .await;
}

#[tokio::test]
async fn a_client_that_disconnects_from_the_proxy_before_the_head_cancels_the_call() {
    let (mock, m) = setup().await;
    let settings = ProxySettings {
        upstream: mock.base_url().parse().unwrap(),
        ..ProxySettings::default()
    };
    let addr = Proxy::new(settings, m.meter.clone())
        .unwrap()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let gone = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .header(names::HEADER_LIMIT_IDS, LIMIT)
        .json(
            &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 100}),
        )
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up first: {gone:?}");
    assert_cancelled_once(&m).await;
}

#[tokio::test]
async fn a_library_call_dropped_before_the_answer_is_recorded_as_cancelled() {
    let (mock, m) = setup().await;
    let client = Client::builder()
        .base_url(mock.base_url())
        .meter(m.meter.clone())
        .build()
        .unwrap();
    let body =
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 100});
    let gone = tokio::time::timeout(Duration::from_millis(200), client.chat(&body, &limited())).await;
    assert!(gone.is_err(), "the caller gave up first");
    // While a call is in flight the gauge counts it; this one is gone.
    assert_cancelled_once(&m).await;
}
