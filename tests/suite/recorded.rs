//! Replay of real recorded provider traffic through the proxy (the recordings are listed, with
//! their source, in `tests/fixtures/README.md`): every recorded number lands on the span, the
//! metrics and `xproxy_result`; the body passes through byte for byte apart from the added
//! `xproxy_result`; nothing is invented where the recording has no value.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use crate::common;

use std::sync::{Arc, Mutex};

use common::*;
use http::StatusCode;
use llm_meter::prometheus::encode;
use llm_meter::CallRecord;
use llm_meter::MemoryLedger;
use llm_meter::Telemetry;
use llm_meter_proxy::{Proxy, ProxySettings};
use serde_json::{json, Value};

#[tokio::test]
async fn a_recorded_openai_chat_completion_replays_exactly_through_the_proxy() {
    let capture = capture_spans();
    let upstream = FixtureServer::start(Canned::json(StatusCode::OK, fixture_headers(), FIXTURE_BODY)).await;
    let telemetry = Telemetry::builder().without_otlp().build().unwrap();
    let records: Arc<Mutex<Vec<CallRecord>>> = Arc::default();
    let sink = records.clone();
    let meter = telemetry
        .meter_builder()
        .tracer(capture.tracer())
        .ledger(Arc::new(MemoryLedger::new(vec![]).unwrap()))
        .hook(move |r: &CallRecord| sink.lock().unwrap().push(r.clone()))
        .build()
        .unwrap();
    let settings = ProxySettings {
        upstream: upstream.base_url().parse().unwrap(),
        ..ProxySettings::default()
    };
    let addr = Proxy::new(settings, meter)
        .unwrap()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("xProxy-UseCase-Name", "replay")
        .header("xProxy-Limit-IDs", "replay-budget")
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Every recorded header comes back as recorded.
    for (name, value) in fixture_headers().iter() {
        assert_eq!(resp.headers().get(name), Some(value), "{name}");
    }
    let body = resp.bytes().await.unwrap();

    // Byte for byte: the recorded body with `,"xproxy_result":{…}` before its last brace.
    let recorded = FIXTURE_BODY.as_bytes();
    let end = recorded.iter().rposition(|&b| b == b'}').unwrap();
    assert_eq!(&body[..end], &recorded[..end], "the provider's bytes before the splice");
    assert!(body[end..].starts_with(b",\"xproxy_result\":{"));
    assert_eq!(
        &body[body.len() - (recorded.len() - end)..],
        &recorded[end..],
        "and after it"
    );

    // The recorded numbers on the record, the span, the metrics and xproxy_result.
    let v: Value = serde_json::from_slice(&body).unwrap();
    let r = records.lock().unwrap().last().cloned().unwrap();
    let u = r.usage.unwrap();
    assert_eq!((u.input_tokens, u.output_tokens, u.total_tokens), (27, 44, Some(71)));
    assert_eq!((u.cached_input_tokens, u.reasoning_tokens), (Some(0), Some(0)));
    assert_eq!(r.meta.processing, Some(std::time::Duration::from_millis(861)));
    assert_eq!(r.meta.requests.remaining, Some(499));
    assert_eq!(r.meta.tokens.remaining, Some(29981));
    assert_eq!(r.response.id.as_deref(), Some("chatcmpl-BDXMEvOKQnSYFATQSDa0BbxRSDUrN"));
    assert_eq!(r.response.service_tier.as_deref(), Some("default"));
    // gpt-4o: $2.50 in, $10 out per 1M tokens.
    let cost = (27.0 * 2.5 + 44.0 * 10.0) / 1e6;
    let x = &v["xproxy_result"];
    assert!(
        (x["cost"]["total"]["base"].as_f64().unwrap() - cost).abs() < 1e-15,
        "{x}"
    );
    assert_eq!(x["use_case_name"], "replay");
    assert_eq!(x["limits"]["replay-budget"]["state"], "ok");
    assert!(
        x.get("use_case_id").is_none() && x.get("account_name").is_none(),
        "not sent: absent"
    );

    let a = attrs(&capture.chat_span());
    assert_eq!(a["gen_ai.usage.input_tokens"], i(27));
    assert_eq!(a["gen_ai.usage.output_tokens"], i(44));
    assert_eq!(a["gen_ai.response.model"], s("gpt-4o-2024-08-06"));
    assert_eq!(a["gen_ai.response.finish_reasons"], arr(&["stop"]));
    assert_eq!(a["openai.request.id"], s("req_4d55e0b8ecd8e46447c0701e1f8b6051"));
    assert_eq!(a["openai.response.system_fingerprint"], s("fp_6ec83003ad"));

    let text = encode(telemetry.exposition().unwrap()).unwrap();
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    assert_eq!(line("gen_ai_client_inference_usage_input_tokens_total{"), 27.0);
    assert_eq!(line("gen_ai_client_inference_usage_output_tokens_total{"), 44.0);
    assert_eq!(line("llm_meter_provider_processing_duration_seconds_sum{"), 0.861);
    assert_eq!(
        line("llm_meter_ratelimit_remaining{gen_ai_provider_name=\"openai\",gen_ai_request_model=\"gpt-4o\",llm_meter_ratelimit_kind=\"tokens\""),
        29981.0
    );
    assert!((line("llm_meter_cost_usd_total{") - cost).abs() < 1e-15);
    assert!(
        !text.contains("llm_meter_calls_unpriced_total{"),
        "priced: nothing unpriced"
    );
    assert!(
        !text.contains("llm_meter_calls_usage_missing_total{"),
        "usage was reported"
    );
}
