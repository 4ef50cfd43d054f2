//! async-openai's client observed through `MeterLayer` (its `middleware` feature).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers may fail loudly
#![cfg(feature = "async-openai")]

use crate::common;

/// The example itself, compiled into this test so that the suite runs it.
#[allow(dead_code)]
#[path = "../../examples/async_openai.rs"]
mod example;

use std::sync::{Arc, Mutex};

use async_openai::config::OpenAIConfig;
use async_openai::middleware::{HttpRequestFactory, ReqwestService};
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequest, CreateChatCompletionRequestArgs,
};
use common::*;
use futures_util::StreamExt;
use llm_meter::openai_layer::{with_annotations, MeterLayer, MeterService};
use llm_meter::{Annotations, CallRecord, ErrorType, Meter};
use llm_meter_mock::{MockConfig, MockServer};
use tower::ServiceExt;

type Records = Arc<Mutex<Vec<CallRecord>>>;

/// async-openai's reqwest service under `MeterLayer`, with every record kept.
fn recording_service() -> (MeterService<ReqwestService>, Records) {
    let records: Records = Arc::default();
    let sink = records.clone();
    let meter = Meter::builder()
        .hook(move |r: &CallRecord| sink.lock().unwrap().push(r.clone()))
        .build()
        .unwrap();
    let service = tower::ServiceBuilder::new()
        .layer(MeterLayer::new(meter))
        .service(ReqwestService::new(reqwest::Client::new()));
    (service, records)
}

fn setup(
    mock: &MockServer,
    extra_header: Option<(&'static str, &'static str)>,
) -> (async_openai::Client<OpenAIConfig>, Records) {
    let (service, records) = recording_service();
    let mut config = OpenAIConfig::new()
        .with_api_base(mock.base_url())
        .with_api_key("sk-layer-secret");
    if let Some((k, v)) = extra_header {
        config = config.with_header(k, v).unwrap();
    }
    (
        async_openai::Client::with_config(config).with_http_service(service),
        records,
    )
}

fn request(stream: bool) -> CreateChatCompletionRequest {
    let mut r = CreateChatCompletionRequestArgs::default()
        .model("gpt-4o")
        .messages(vec![ChatCompletionRequestUserMessageArgs::default()
            .content("Hi")
            .build()
            .unwrap()
            .into()])
        .build()
        .unwrap();
    r.stream = stream.then_some(true);
    r
}

fn annotations() -> Annotations {
    Annotations::builder()
        .use_case_name("layer.test")
        .user_id("u-9")
        .build()
        .unwrap()
}

#[tokio::test]
async fn async_openai_calls_become_observed_calls_with_annotations_and_spans() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let (client, records) = setup(&mock, None);
    let capture = capture_spans();
    let reply = with_annotations(annotations(), client.chat().create(request(false)))
        .await
        .unwrap();
    assert_eq!(reply.model, "gpt-4o-2024-08-06");

    let r = records.lock().unwrap().pop().expect("a record");
    assert_eq!(r.annotations.use_case_name(), Some("layer.test"));
    assert_eq!(
        r.usage.unwrap().output_tokens,
        u64::from(reply.usage.unwrap().completion_tokens)
    );
    assert_eq!(r.response.id.as_deref(), Some(reply.id.as_str()));
    let span = capture.chat_span();
    let a = attrs(&span);
    assert_eq!(a["user.id"], s("u-9"));
    assert_eq!(a["gen_ai.response.id"], s(&reply.id));
    assert!(!format!("{a:?}").contains("sk-layer-secret"));
    let sent = mock.received().pop().unwrap();
    assert!(sent.headers.contains_key("traceparent"));
}

#[tokio::test]
async fn async_openai_streams_get_usage_without_seeing_the_usage_chunk() {
    // Every test here holds a span capture: see common::capture_spans.
    let _capture = capture_spans();
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let (client, records) = setup(&mock, None);
    let mut stream = with_annotations(annotations(), client.chat().create_stream(request(true)))
        .await
        .unwrap();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert!(chunk.usage.is_none(), "the caller did not ask for usage");
        assert!(!chunk.choices.is_empty(), "no usage-only chunk reaches the caller");
        text.extend(chunk.choices.iter().filter_map(|c| c.delta.content.clone()));
    }
    assert!(text.starts_with("Hello there! How can I help today?"));
    let r = records.lock().unwrap().pop().expect("a record");
    assert_eq!(r.error, None);
    assert_eq!(r.usage.unwrap().output_tokens, 44);
    let body: serde_json::Value = serde_json::from_slice(&mock.received().pop().unwrap().body).unwrap();
    assert_eq!(body["stream_options"]["include_usage"], true);
}

fn response_request() -> async_openai::types::responses::CreateResponse {
    async_openai::types::responses::CreateResponseArgs::default()
        .model("gpt-4o")
        .input("Hello there, how are you today?")
        .build()
        .unwrap()
}

#[tokio::test]
async fn responses_create_is_one_record_with_the_responses_usage() {
    let _capture = capture_spans();
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let (client, records) = setup(&mock, None);
    let reply = with_annotations(annotations(), client.responses().create(response_request()))
        .await
        .unwrap();
    let usage = reply.usage.expect("the mock reports usage");

    let mut kept = records.lock().unwrap();
    assert_eq!(kept.len(), 1, "one record per call");
    let r = kept.pop().unwrap();
    assert_eq!(r.request.api, llm_meter::Api::Responses);
    assert_eq!((r.error, &*r.provider), (None, "openai"));
    assert_eq!(r.annotations.use_case_name(), Some("layer.test"));
    let observed = r.usage.expect("usage recorded");
    assert_eq!(
        (observed.input_tokens, observed.output_tokens),
        (u64::from(usage.input_tokens), u64::from(usage.output_tokens))
    );
    assert_eq!(r.response.id.as_deref(), Some(reply.id.as_str()));
    assert_eq!(mock.received().pop().unwrap().path, "/v1/responses");
}

#[tokio::test]
async fn responses_streams_are_observed_as_async_openai_reads_them() {
    use async_openai::types::responses::ResponseStreamEvent;
    let _capture = capture_spans();
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let (client, records) = setup(&mock, None);
    let mut stream = client.responses().create_stream(response_request()).await.unwrap();
    let mut completed = None;
    while let Some(event) = stream.next().await {
        if let ResponseStreamEvent::ResponseCompleted(e) = event.unwrap() {
            completed = Some(e.response);
        }
    }
    let usage = completed.expect("response.completed").usage.unwrap();
    let r = records.lock().unwrap().pop().expect("a record");
    assert_eq!(
        (r.request.api, r.request.stream, r.error),
        (llm_meter::Api::Responses, true, None)
    );
    assert_eq!(r.usage.unwrap().output_tokens, u64::from(usage.output_tokens));
    assert!(r.timings.chunks > 1);
    assert!(records.lock().unwrap().is_empty(), "exactly one record");
}

#[tokio::test]
async fn provider_errors_reach_async_openai_unchanged_and_are_recorded() {
    // Every test here holds a span capture: see common::capture_spans.
    let _capture = capture_spans();
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let (client, records) = setup(&mock, Some(("x-mock-error", "400")));
    let err = client.chat().create(request(false)).await.unwrap_err();
    match err {
        async_openai::error::OpenAIError::ApiError(e) => {
            assert_eq!(e.status_code, 400);
            assert_eq!(e.api_error.r#type.as_deref(), Some("invalid_request_error"));
        }
        other => panic!("expected the provider's API error, got {other:?}"),
    }
    assert_eq!(
        records.lock().unwrap().pop().unwrap().error,
        Some(ErrorType::Status(400))
    );
}

#[tokio::test]
async fn other_requests_pass_through_unobserved() {
    // Every test here holds a span capture: see common::capture_spans.
    let _capture = capture_spans();
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let (service, records) = recording_service();
    let url = format!("{}/models", mock.base_url());
    let factory = HttpRequestFactory::new(move || {
        let url = url.clone();
        async move { Ok(reqwest::Request::new(http::Method::GET, url.parse().unwrap())) }
    });
    let resp = service.oneshot(factory).await.unwrap();
    assert_eq!(resp.status(), 200);
    let list: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(list["object"], "list", "the answer passes as it came");
    assert!(records.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_async_openai_example_runs_and_checks_what_it_shows() {
    // Every test here holds a span capture: see common::capture_spans.
    let _capture = capture_spans();
    example::run().await.expect("the example's checks hold");
}

#[tokio::test]
async fn the_layer_refuses_calls_a_block_limit_refuses_like_every_door() {
    use llm_meter::{AdmissionMode, LimitConfig, LimitKind, MemoryLedger};
    let _capture = capture_spans();
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let ledger = Arc::new(
        MemoryLedger::new(vec![LimitConfig {
            id: "cap".into(),
            max: 0.0001,
            threshold: None,
            kind: LimitKind::Block,
            reset: None,
            admission: AdmissionMode::Spent,
        }])
        .unwrap(),
    );
    let records: Records = Arc::default();
    let sink = records.clone();
    let meter = Meter::builder()
        .ledger(ledger)
        .enforce_limits(true)
        .hook(move |r: &CallRecord| sink.lock().unwrap().push(r.clone()))
        .build()
        .unwrap();
    let service = tower::ServiceBuilder::new()
        .layer(MeterLayer::new(meter))
        .service(ReqwestService::new(reqwest::Client::new()));
    let config = OpenAIConfig::new().with_api_base(mock.base_url()).with_api_key("sk-x");
    let client = async_openai::Client::with_config(config).with_http_service(service);
    let capped = Annotations::builder().limit_ids(["cap"]).build().unwrap();
    // The first call spends past the $0.0001 max; the second is refused before the provider.
    with_annotations(capped.clone(), client.chat().create(request(false)))
        .await
        .unwrap();
    let err = with_annotations(capped, client.chat().create(request(false)))
        .await
        .unwrap_err();
    match err {
        async_openai::error::OpenAIError::ApiError(e) => {
            assert_eq!(e.status_code, 403);
            assert_eq!(e.api_error.code.as_deref(), Some("limit_reached"));
            assert!(e.api_error.message.contains("cap"), "{}", e.api_error.message);
        }
        other => panic!("not an API error: {other:?}"),
    }
    assert_eq!(mock.received().len(), 1, "the refused call never reached the provider");
    let r = records.lock().unwrap().pop().unwrap();
    assert_eq!(
        (r.error, r.blocked_limit_ids.clone()),
        (Some(ErrorType::LimitReached), vec!["cap".to_owned()])
    );
}
