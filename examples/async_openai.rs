//! async-openai with llm-meter, two ways, against the embedded mock provider (no network):
//!
//! 1. async-openai's request types sent through llm-meter's own [`Client`];
//! 2. async-openai's own client, observed by [`MeterLayer`] (its `middleware` feature), for a
//!    call and a stream.
//!
//! It checks what it shows (the replies, and one record per call with the annotations and the
//! usage the provider reported) and exits non-zero when anything is off.
//!
//! Run: `cargo run --example async_openai --features async-openai` (the test suite runs
//! [`run`] too, in tests/async_openai.rs).

use std::error::Error;
use std::sync::{Arc, Mutex};

use async_openai::config::OpenAIConfig;
use async_openai::middleware::{retry::OpenAIRetryLayer, ReqwestService};
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs, CreateChatCompletionResponse,
};
use futures_util::StreamExt;
use llm_meter::openai_layer::{with_annotations, MeterLayer};
use llm_meter::{Annotations, CallRecord, Client, Meter};
use llm_meter_mock::{MockConfig, MockServer};

/// Output tokens asked for: the mock's answers are cut to this length.
const MAX_TOKENS: u32 = 32;

fn print_record(r: &CallRecord) {
    let usage = r.usage.map(|u| (u.input_tokens, u.output_tokens));
    println!(
        "  observed: {} use_case={:?} stream={} usage={usage:?} error={:?}",
        r.model(),
        r.annotations.use_case_name(),
        r.request.stream,
        r.error.map(|e| e.as_str())
    );
}

/// An error unless `ok`.
fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), Box<dyn Error>> {
    if ok {
        Ok(())
    } else {
        Err(what().into())
    }
}

/// The example: makes the three calls, prints what it sees, and fails if it is not what the
/// calls should give.
pub async fn run() -> Result<(), Box<dyn Error>> {
    let provider = MockServer::start(MockConfig::default()).await?;
    let records: Arc<Mutex<Vec<CallRecord>>> = Arc::default();
    let sink = records.clone();
    let meter = Meter::builder()
        .hook(move |r: &CallRecord| {
            print_record(r);
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(r.clone());
        })
        .build()?;
    let annotations = Annotations::builder()
        .use_case_name("example.async-openai")
        .user_id("user-1")
        .build()?;

    let request = CreateChatCompletionRequestArgs::default()
        .model("gpt-4o-mini")
        .messages(vec![ChatCompletionRequestUserMessageArgs::default()
            .content("Say hello")
            .build()?
            .into()])
        .max_completion_tokens(MAX_TOKENS)
        .build()?;

    println!("1. async-openai request types through llm_meter::Client");
    let client = Client::builder()
        .base_url(provider.base_url())
        .api_key("sk-example")
        .meter(meter.clone())
        .build()?;
    let response = client.chat(&request, &annotations).await?;
    let typed: CreateChatCompletionResponse = response.json()?;
    let first = typed.choices[0].message.content.clone().unwrap_or_default();
    println!("  reply: {first:?}");
    ensure(first.starts_with("Hello"), || format!("unexpected reply {first:?}"))?;

    println!("2. async-openai's client with MeterLayer");
    let service = tower::ServiceBuilder::new()
        .layer(OpenAIRetryLayer::default())
        .layer(MeterLayer::new(meter))
        .service(ReqwestService::new(reqwest::Client::new()));
    let openai = async_openai::Client::with_config(
        OpenAIConfig::new()
            .with_api_base(provider.base_url())
            .with_api_key("sk-example"),
    )
    .with_http_service(service);
    let reply = with_annotations(annotations.clone(), openai.chat().create(request.clone())).await?;
    let second = reply.choices[0].message.content.clone().unwrap_or_default();
    println!("  reply: {second:?}");
    ensure(second == first, || {
        format!("the layer's reply {second:?} differs from {first:?}")
    })?;

    let mut streaming = request;
    streaming.stream = Some(true);
    let mut stream = with_annotations(annotations, openai.chat().create_stream(streaming)).await?;
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        for choice in chunk?.choices {
            text.push_str(choice.delta.content.as_deref().unwrap_or(""));
        }
    }
    println!("  streamed: {text:?}");
    ensure(text == first, || {
        format!("the streamed text {text:?} differs from {first:?}")
    })?;

    // One record per call, each with the annotations and the provider's usage.
    let records = records.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let streams: Vec<bool> = records.iter().map(|r| r.request.stream).collect();
    ensure(streams == [false, false, true], || {
        format!("records of calls (stream flags) {streams:?}, expected [false, false, true]")
    })?;
    for r in &records {
        let what = || {
            format!(
                "record of the call: model {} use_case {:?} user {:?} usage {:?} error {:?}",
                r.model(),
                r.annotations.use_case_name(),
                r.annotations.user_id(),
                r.usage.map(|u| (u.input_tokens, u.output_tokens)),
                r.error
            )
        };
        ensure(r.error.is_none(), what)?;
        ensure(r.model() == "gpt-4o-mini-2024-07-18", what)?;
        ensure(r.annotations.use_case_name() == Some("example.async-openai"), what)?;
        ensure(r.annotations.user_id() == Some("user-1"), what)?;
        ensure(r.usage.is_some_and(|u| u.output_tokens == u64::from(MAX_TOKENS)), what)?;
    }
    println!("ok: 3 calls, 3 records");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    run().await
}
