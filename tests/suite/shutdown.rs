//! Stopping and readiness: on shutdown the proxy stops accepting connections and lets the calls
//! and streams in flight finish within the grace period, cutting what is left after it;
//! `/readyz` says whether the upstream accepts connections, `/healthz` that the proxy is alive.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use llm_meter::{CallRecord, ErrorType, Meter, Telemetry};
use llm_meter_mock::{MockConfig, MockServer};
use llm_meter_proxy::{Proxy, ProxySettings};
use serde_json::json;
use tokio::sync::oneshot;

type Records = Arc<Mutex<Vec<CallRecord>>>;

/// A proxy in front of a mock whose streams take about 8 × 100 ms, stopped by the sender.
async fn slow_proxy(grace: Duration) -> (String, oneshot::Sender<()>, tokio::task::JoinHandle<bool>, Records) {
    let mock = MockServer::start(MockConfig {
        chunk_delay: Duration::from_millis(100),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let records: Records = Arc::default();
    let sink = records.clone();
    let meter = Meter::builder()
        .hook(move |r: &CallRecord| sink.lock().unwrap().push(r.clone()))
        .build()
        .unwrap();
    let settings = ProxySettings {
        upstream: mock.base_url().parse().unwrap(),
        ..ProxySettings::default()
    };
    let proxy = Proxy::new(settings, meter).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        let _mock = mock;
        proxy
            .serve_until(
                listener,
                async {
                    let _ = stopped.await;
                },
                grace,
            )
            .await
            .unwrap()
    });
    (base, stop, served, records)
}

async fn start_stream(base: &str) -> reqwest::Response {
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp
}

async fn read_all(resp: reqwest::Response) -> (String, bool) {
    let mut body = resp.bytes_stream();
    let mut text = Vec::new();
    let mut failed = false;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => text.extend_from_slice(&c),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    (String::from_utf8_lossy(&text).into_owned(), failed)
}

#[tokio::test]
async fn a_stream_in_flight_finishes_within_the_grace_period_and_new_connections_are_refused() {
    let (base, stop, served, records) = slow_proxy(Duration::from_secs(10)).await;
    let stream = start_stream(&base).await;
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Stopped accepting: a new connection is refused (or closed without an answer).
    let fresh = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "gpt-4o", "messages": []}))
        .send()
        .await;
    assert!(fresh.is_err(), "a new call after shutdown got {fresh:?}");
    let (text, failed) = read_all(stream).await;
    assert!(!failed && text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(served.await.unwrap(), "everything finished within the grace period");
    let records = records.lock().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].error, None);
}

#[tokio::test]
async fn what_is_left_after_the_grace_period_is_cut_and_recorded_as_cancelled() {
    let (base, stop, served, records) = slow_proxy(Duration::from_millis(150)).await;
    let stream = start_stream(&base).await;
    stop.send(()).unwrap();
    assert!(!served.await.unwrap(), "the stream outlived the grace period");
    let (text, failed) = read_all(stream).await;
    assert!(failed || !text.contains("[DONE]"), "the stream was cut: {text}");
    let records = records.lock().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].error, Some(ErrorType::Cancelled));
}

#[tokio::test]
async fn readyz_follows_the_upstream_and_healthz_the_proxy() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let telemetry = Telemetry::builder().without_otlp().build().unwrap();
    let up = Proxy::new(
        ProxySettings {
            upstream: mock.base_url().parse().unwrap(),
            ..ProxySettings::default()
        },
        Meter::default(),
    )
    .unwrap();
    // An upstream nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down = Proxy::new(
        ProxySettings {
            upstream: format!("http://{closed}/v1").parse().unwrap(),
            ..ProxySettings::default()
        },
        Meter::default(),
    )
    .unwrap();
    let any = "127.0.0.1:0".parse().unwrap();
    let admin_up = llm_meter_proxy::spawn_admin(any, &telemetry, &up).await.unwrap();
    let admin_down = llm_meter_proxy::spawn_admin(any, &telemetry, &down).await.unwrap();
    let get = |addr: std::net::SocketAddr, path: &'static str| async move {
        reqwest::get(format!("http://{addr}{path}"))
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(get(admin_up, "/readyz").await, 200);
    assert_eq!(get(admin_down, "/readyz").await, 503);
    assert_eq!(get(admin_down, "/healthz").await, 200);
    assert_eq!(get(admin_up, "/metrics").await, 200);
}
