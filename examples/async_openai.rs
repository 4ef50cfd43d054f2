//! async-openai with llm-meter, two ways, against the embedded mock provider:
//!
//! 1. async-openai's request types sent through llm-meter's own [`Client`];
//! 2. async-openai's own client, observed by [`MeterLayer`] (its `middleware` feature).
//!
//! Run: `cargo run --example async_openai --features async-openai`

use async_openai::config::OpenAIConfig;
use async_openai::middleware::{retry::OpenAIRetryLayer, ReqwestService};
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs, CreateChatCompletionResponse,
};
use futures_util::StreamExt;
use llm_meter::mock::{MockConfig, MockServer};
use llm_meter::openai_layer::{with_annotations, MeterLayer};
use llm_meter::{Annotations, CallRecord, Client, Meter};

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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let provider = MockServer::start(MockConfig::default()).await?;
    let meter = Meter::builder().hook(print_record).build()?;
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
        .max_completion_tokens(32u32)
        .build()?;

    println!("1. async-openai request types through llm_meter::Client");
    let client = Client::builder()
        .base_url(provider.base_url())
        .api_key("sk-example")
        .meter(meter.clone())
        .build()?;
    let response = client.chat(&request, &annotations).await?;
    let typed: CreateChatCompletionResponse = response.json()?;
    println!("  reply: {:?}", typed.choices[0].message.content);

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
    println!("  reply: {:?}", reply.choices[0].message.content);

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
    Ok(())
}
