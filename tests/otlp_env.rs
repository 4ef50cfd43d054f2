//! OTLP configured by the standard environment variables alone. One test per process section:
//! environment variables are process-wide, so this file holds a single test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

#[path = "suite/common/mod.rs"]
mod common;
#[path = "suite/common/receiver.rs"]
mod receiver;

use std::time::Duration;

use llm_meter::names;
use llm_meter::Telemetry;
use llm_meter::{Annotations, Client};
use llm_meter_mock::{MockConfig, MockServer};
use receiver::*;
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt;

fn set(vars: &[(&str, Option<&str>)]) {
    for (k, v) in vars {
        match v {
            Some(v) => std::env::set_var(k, v),
            None => std::env::remove_var(k),
        }
    }
}

async fn one_call(t: &Telemetry) {
    let _s = tracing::subscriber::set_default(tracing_subscriber::registry().with(t.tracing_layer()));
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let client = Client::builder()
        .base_url(mock.base_url())
        .meter(t.meter_builder().build().unwrap())
        .build()
        .unwrap();
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
    client.chat(&body, &Annotations::none()).await.unwrap();
    let t = t.clone();
    tokio::task::spawn_blocking(move || t.flush()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_environment_variables_configure_otlp() {
    // Nothing set: no OTLP.
    set(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", None),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None),
        ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", None),
    ]);
    assert!(!Telemetry::builder().build().unwrap().otlp_enabled());

    // HTTP/protobuf with headers, service name and resource attributes from the environment.
    let (addr, rx) = http(any()).await;
    set(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", Some(&format!("http://{addr}"))),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", Some("http/protobuf")),
        ("OTEL_EXPORTER_OTLP_HEADERS", Some("x-api-key=s3cret,x-tenant=acme")),
        ("OTEL_SERVICE_NAME", Some("env-service")),
        ("OTEL_RESOURCE_ATTRIBUTES", Some("deployment.environment=test")),
        ("OTEL_METRIC_EXPORT_INTERVAL", Some("3600000")),
    ]);
    let t = Telemetry::builder().prometheus(false).build().unwrap();
    assert!(t.otlp_enabled());
    one_call(&t).await;
    assert!(
        eventually(|| !rx.spans().is_empty() && rx.latest_metric(names::METRIC_OPERATION_DURATION).is_some()).await
    );
    let headers = rx.http_headers.lock().unwrap().last().cloned().unwrap();
    assert_eq!(headers["x-api-key"], "s3cret");
    assert_eq!(headers["x-tenant"], "acme");
    let resource = rx.resource();
    assert_eq!(str_attr(&resource, "service.name").as_deref(), Some("env-service"));
    assert_eq!(str_attr(&resource, "deployment.environment").as_deref(), Some("test"));

    // gRPC chosen by the protocol variable; a per-signal variable turns traces off.
    let (addr, rx) = grpc(any()).await;
    set(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", Some(&format!("http://{addr}"))),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", Some("grpc")),
        ("OTEL_EXPORTER_OTLP_HEADERS", None),
        ("OTEL_TRACES_EXPORTER", Some("none")),
    ]);
    let t = Telemetry::builder().prometheus(false).build().unwrap();
    one_call(&t).await;
    assert!(eventually(|| rx.latest_metric(names::METRIC_OPERATION_DURATION).is_some()).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx.spans().is_empty(), "OTEL_TRACES_EXPORTER=none");

    // A protocol we do not build is a clear error, not a silent fallback.
    set(&[
        ("OTEL_TRACES_EXPORTER", None),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", Some("http/json")),
    ]);
    let err = Telemetry::builder().build().unwrap_err().to_string();
    assert!(err.contains("http/json") && err.contains("grpc"), "{err}");

    // The sampler variables hold over HTTP too, where llm-meter's spans are written straight
    // from their records (its own sampling, from the SDK's configuration).
    let (addr, rx) = http(any()).await;
    set(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", Some(&format!("http://{addr}"))),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", Some("http/protobuf")),
    ]);
    for (sampler, arg, kept) in [
        ("traceidratio", Some("0"), false),
        ("always_off", None, false),
        ("traceidratio", Some("1"), true),
    ] {
        set(&[("OTEL_TRACES_SAMPLER", Some(sampler)), ("OTEL_TRACES_SAMPLER_ARG", arg)]);
        let before = rx.spans().len();
        let t = Telemetry::builder().prometheus(false).build().unwrap();
        one_call(&t).await;
        assert_eq!(t.export_stats().ended(), u64::from(kept), "{sampler} {arg:?}");
        if kept {
            assert!(eventually(|| rx.spans().len() > before).await, "{sampler} {arg:?}");
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(rx.spans().len(), before, "{sampler} {arg:?}: nothing sampled");
        }
    }
    set(&[("OTEL_TRACES_SAMPLER", None), ("OTEL_TRACES_SAMPLER_ARG", None)]);
}
