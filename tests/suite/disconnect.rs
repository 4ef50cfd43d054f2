//! A caller that goes away before the answer (a client disconnecting from the proxy before the
//! response head, a timeout around a library call): the call is finished once as `cancelled`,
//! its reservation is released, and `llm_meter.calls.in_flight` returns to zero.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use llm_meter::{
    names, AdmissionMode, Annotations, CallRecord, Client, ErrorType, LimitConfig, LimitKind, MemoryLedger, Telemetry,
};
use llm_meter_mock::{MockConfig, MockServer};
use llm_meter_proxy::{Proxy, ProxySettings};
use serde_json::json;

type Records = Arc<Mutex<Vec<CallRecord>>>;

struct Setup {
    mock: MockServer,
    telemetry: Telemetry,
    ledger: Arc<MemoryLedger>,
    records: Records,
}

/// A mock that answers after 1 s, and a meter with metrics, a reserving limit and a hook.
async fn setup() -> (Setup, llm_meter::Meter) {
    let mock = MockServer::start(MockConfig {
        latency: Duration::from_secs(1),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let telemetry = Telemetry::builder().without_otlp().build().unwrap();
    let ledger = Arc::new(
        MemoryLedger::new(vec![LimitConfig {
            id: "daily".into(),
            max: 10.0,
            threshold: None,
            kind: LimitKind::Block,
            reset: None,
            admission: AdmissionMode::Reserve,
        }])
        .unwrap(),
    );
    let records: Records = Arc::default();
    let sink = records.clone();
    let meter = telemetry
        .meter_builder()
        .ledger(ledger.clone())
        .enforce_limits(true)
        .hook(move |r: &CallRecord| sink.lock().unwrap().push(r.clone()))
        .build()
        .unwrap();
    (
        Setup {
            mock,
            telemetry,
            ledger,
            records,
        },
        meter,
    )
}

fn in_flight(telemetry: &Telemetry) -> Option<f64> {
    let text = llm_meter::prometheus::encode(telemetry.registry().unwrap()).unwrap();
    let name = names::METRIC_CALLS_IN_FLIGHT.replace('.', "_");
    text.lines()
        .filter(|l| l.starts_with(&name) && !l.starts_with('#'))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Waits (bounded) for the one record, then checks it and the ledger and gauge.
async fn assert_cancelled_once(s: &Setup) {
    for _ in 0..100 {
        if !s.records.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing more arrives once the provider would have answered.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let records = s.records.lock().unwrap();
    assert_eq!(records.len(), 1, "one record: {records:?}");
    assert_eq!(records[0].error, Some(ErrorType::Cancelled));
    let status = &s.ledger.statuses()[0];
    assert_eq!(
        (status.reserved, status.spend),
        (0.0, 0.0),
        "the reservation is released"
    );
    assert_eq!(in_flight(&s.telemetry), Some(0.0), "in flight back to zero");
}

#[tokio::test]
async fn a_client_that_disconnects_from_the_proxy_before_the_head_cancels_the_call() {
    let (s, meter) = setup().await;
    let settings = ProxySettings {
        upstream: s.mock.base_url().parse().unwrap(),
        ..ProxySettings::default()
    };
    let addr = Proxy::new(settings, meter)
        .unwrap()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let gone = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .header(names::HEADER_LIMIT_IDS, "daily")
        .json(
            &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 100}),
        )
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up first: {gone:?}");
    assert_cancelled_once(&s).await;
}

#[tokio::test]
async fn a_library_call_dropped_before_the_answer_is_recorded_as_cancelled() {
    let (s, meter) = setup().await;
    let client = Client::builder()
        .base_url(s.mock.base_url())
        .meter(meter)
        .build()
        .unwrap();
    let annotations = Annotations::builder().limit_ids(["daily"]).build().unwrap();
    let body =
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 100});
    let gone = tokio::time::timeout(Duration::from_millis(200), client.chat(&body, &annotations)).await;
    assert!(gone.is_err(), "the caller gave up first");
    // While a call is in flight the gauge counts it; this one is gone.
    assert_cancelled_once(&s).await;
}
