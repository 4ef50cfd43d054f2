//! The mock speaks the other providers' documented wire formats: Anthropic Messages (headers,
//! body, event stream, errors), OpenAI Responses (body and typed event stream) and Azure OpenAI
//! chat completions (deployment and v1 paths, `api-key`, the empty first stream chunk). Each is
//! also read back through the library's own parsers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::time::{Duration, Instant, SystemTime};

use llm_meter::{
    names, AnthropicMessage, Api, FinishReason, OpenAiResponse, ProviderMeta, StreamFault, StreamObserver,
};
use llm_meter_mock::{MockConfig, MockServer};
use serde_json::{json, Value};

const VERSION: (&str, &str) = ("anthropic-version", "2023-06-01");

async fn post_to(url: String, body: Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = reqwest::Client::new().post(url).json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

fn claude(model: &str) -> Value {
    json!({"model": model, "max_tokens": 1024, "system": "You are terse.", "messages": [{"role": "user", "content": "Hello there, how are you today?"}]})
}

/// `(event, data)` of each SSE event in `text`.
fn sse(text: &str) -> Vec<(String, String)> {
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let mut name = String::new();
            let mut data = String::new();
            for line in e.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = v.to_owned();
                } else {
                    panic!("unexpected line {line:?} in {e:?}");
                }
            }
            (name, data)
        })
        .collect()
}

fn observe(format: Api, text: &str) -> StreamObserver {
    let mut o = StreamObserver::for_api(Instant::now(), format);
    o.observe_all(text.as_bytes());
    o
}

// ---- Anthropic Messages ------------------------------------------------------------------

#[tokio::test]
async fn anthropic_message_body_and_headers_have_the_documented_shape() {
    let mock = MockServer::start(MockConfig {
        cached_fraction: 0.25,
        cache_write_fraction: 0.5,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let resp = post_to(
        format!("{}/messages", mock.base_url()),
        claude("claude-sonnet-4-5"),
        &[VERSION],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "application/json");
    for name in [
        names::HEADER_ANTHROPIC_REQUEST_ID,
        names::HEADER_ANTHROPIC_ORGANIZATION_ID,
        names::HEADER_ANTHROPIC_RATELIMIT_REQUESTS_LIMIT,
        names::HEADER_ANTHROPIC_RATELIMIT_REQUESTS_REMAINING,
        names::HEADER_ANTHROPIC_RATELIMIT_REQUESTS_RESET,
        names::HEADER_ANTHROPIC_RATELIMIT_TOKENS_LIMIT,
        names::HEADER_ANTHROPIC_RATELIMIT_TOKENS_REMAINING,
        names::HEADER_ANTHROPIC_RATELIMIT_TOKENS_RESET,
        names::HEADER_ANTHROPIC_RATELIMIT_INPUT_TOKENS_LIMIT,
        names::HEADER_ANTHROPIC_RATELIMIT_INPUT_TOKENS_REMAINING,
        names::HEADER_ANTHROPIC_RATELIMIT_INPUT_TOKENS_RESET,
        names::HEADER_ANTHROPIC_RATELIMIT_OUTPUT_TOKENS_LIMIT,
        names::HEADER_ANTHROPIC_RATELIMIT_OUTPUT_TOKENS_REMAINING,
        names::HEADER_ANTHROPIC_RATELIMIT_OUTPUT_TOKENS_RESET,
    ] {
        assert!(h.contains_key(name), "missing {name}");
    }
    assert!(!h.contains_key(names::HEADER_REQUEST_ID), "no OpenAI headers");
    let meta = ProviderMeta::from_anthropic_headers(&h, SystemTime::now());
    let id = meta.request_id().unwrap();
    assert!(id.starts_with("req_011C") && id.len() == 28, "{id}");
    assert_eq!(meta.requests.limit, Some(500));
    assert_eq!(meta.requests.remaining, Some(499));
    assert_eq!(meta.input_tokens.limit, Some(30_000));
    assert_eq!(meta.output_tokens.limit, Some(6_000));
    assert_eq!(meta.tokens.limit, Some(36_000), "input and output together");
    // Remaining tokens come rounded to the thousand, as Anthropic sends them.
    for remaining in [
        meta.input_tokens.remaining,
        meta.output_tokens.remaining,
        meta.tokens.remaining,
    ] {
        assert_eq!(remaining.unwrap() % 1000, 0);
    }
    for reset in [
        meta.requests.reset,
        meta.tokens.reset,
        meta.input_tokens.reset,
        meta.output_tokens.reset,
    ] {
        assert!(reset.unwrap() <= Duration::from_secs(61), "{reset:?}");
    }

    let body: Value = resp.json().await.unwrap();
    assert!(body["id"].as_str().unwrap().starts_with("msg_01"));
    assert_eq!(
        (&body["type"], &body["role"], &body["model"]),
        (
            &json!("message"),
            &json!("assistant"),
            &json!("claude-sonnet-4-5-20250929")
        )
    );
    assert_eq!(body["content"][0]["type"], "text");
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["stop_sequence"], Value::Null);
    let u = &body["usage"];
    let (input, read, write) = (
        u["input_tokens"].as_u64().unwrap(),
        u["cache_read_input_tokens"].as_u64().unwrap(),
        u["cache_creation_input_tokens"].as_u64().unwrap(),
    );
    let prompt = input + read + write;
    assert_eq!(read, prompt / 4);
    assert_eq!(write, prompt / 2);
    assert_eq!(u["cache_creation"]["ephemeral_5m_input_tokens"].as_u64(), Some(write));
    assert_eq!(u["cache_creation"]["ephemeral_1h_input_tokens"], 0);
    assert_eq!(u["output_tokens"], 44);
    assert_eq!(u["service_tier"], "standard");
    // And the library reads it with cache reads and writes inside the input tokens.
    let parsed = AnthropicMessage::parse(body.to_string().as_bytes()).unwrap();
    let usage = parsed.usage.unwrap();
    assert_eq!(usage.input_tokens, prompt);
    assert_eq!(usage.cached_input_tokens, Some(read));
    assert_eq!(usage.cache_creation_input_tokens, Some(write));
    assert_eq!(usage.cache_creation_1h_input_tokens, Some(0));
    assert_eq!(parsed.facts.finish_reasons, [FinishReason::Stop]);
}

#[tokio::test]
async fn anthropic_one_hour_cache_writes_and_max_tokens_show_in_the_usage() {
    let mock = MockServer::start(MockConfig {
        cache_write_fraction: 0.5,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let mut body = claude("claude-opus-4-1");
    body["system"] = json!([{"type": "text", "text": "A long, stable system prompt.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]);
    body["max_tokens"] = json!(5);
    let v: Value = post_to(format!("{}/messages", mock.base_url()), body, &[VERSION])
        .await
        .json()
        .await
        .unwrap();
    let write = v["usage"]["cache_creation_input_tokens"].as_u64().unwrap();
    assert!(write > 0);
    assert_eq!(
        v["usage"]["cache_creation"]["ephemeral_1h_input_tokens"].as_u64(),
        Some(write)
    );
    assert_eq!(v["usage"]["cache_creation"]["ephemeral_5m_input_tokens"], 0);
    assert_eq!(
        (&v["stop_reason"], &v["usage"]["output_tokens"]),
        (&json!("max_tokens"), &json!(5))
    );
    assert_eq!(v["model"], "claude-opus-4-1-20250805");
    let parsed = AnthropicMessage::parse(v.to_string().as_bytes()).unwrap();
    assert_eq!(parsed.usage.unwrap().cache_creation_1h_input_tokens, Some(write));
    assert_eq!(parsed.facts.finish_reasons, [FinishReason::Length]);
}

#[tokio::test]
async fn anthropic_checks_key_and_version_and_errors_have_anthropics_shape() {
    // Output tokens count at `max_tokens` (1024 each): room for every call below.
    let mock = MockServer::start(MockConfig {
        api_key: Some("sk-ant-test".into()),
        limit_tokens: 1_000_000,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let url = format!("{}/messages", mock.base_url());
    let key = ("x-api-key", "sk-ant-test");
    for (headers, status, kind, message) in [
        (
            vec![VERSION],
            401,
            "authentication_error",
            "x-api-key header is required",
        ),
        (
            vec![VERSION, ("x-api-key", "wrong")],
            401,
            "authentication_error",
            "invalid x-api-key",
        ),
        (
            vec![VERSION, ("authorization", "Bearer wrong")],
            401,
            "authentication_error",
            "invalid x-api-key",
        ),
        (
            vec![key],
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
        ),
    ] {
        let r = post_to(url.clone(), claude("claude-haiku-4-5"), &headers).await;
        assert_eq!(r.status(), status, "{headers:?}");
        let request_id = r.headers()[names::HEADER_ANTHROPIC_REQUEST_ID]
            .to_str()
            .unwrap()
            .to_owned();
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v,
            json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id})
        );
    }
    // The key as `Authorization: Bearer`, as the Anthropic SDK sends it since 2.x.
    let bearer = post_to(
        url.clone(),
        claude("claude-haiku-4-5"),
        &[VERSION, ("authorization", "Bearer sk-ant-test")],
    )
    .await;
    assert_eq!(bearer.status(), 200);
    let mut no_max = claude("claude-haiku-4-5");
    no_max.as_object_mut().unwrap().remove("max_tokens");
    let v: Value = post_to(url.clone(), no_max, &[key, VERSION])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["error"]["message"], "max_tokens: Field required");
    for (forced, status, kind) in [
        ("400", 400, "invalid_request_error"),
        ("403", 403, "permission_error"),
        ("404", 404, "not_found_error"),
        ("413", 413, "request_too_large"),
        ("429", 429, "rate_limit_error"),
        ("500", 500, "api_error"),
        ("529", 529, "overloaded_error"),
    ] {
        let r = post_to(
            url.clone(),
            claude("claude-haiku-4-5"),
            &[key, VERSION, ("x-mock-error", forced)],
        )
        .await;
        assert_eq!(r.status(), status, "{forced}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            (&v["type"], &v["error"]["type"]),
            (&json!("error"), &json!(kind)),
            "{forced}"
        );
        assert!(v["request_id"].as_str().unwrap().starts_with("req_"));
    }
    let r = post_to(
        url,
        claude("claude-haiku-4-5"),
        &[key, VERSION, ("x-mock-error", "529")],
    )
    .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], json!({"type": "overloaded_error", "message": "Overloaded"}));
}

#[tokio::test]
async fn anthropic_error_rate_answers_529_overloaded() {
    let mock = MockServer::start(MockConfig {
        error_rate: 1.0,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let r = post_to(
        format!("{}/messages", mock.base_url()),
        claude("claude-sonnet-4"),
        &[VERSION],
    )
    .await;
    assert_eq!(r.status().as_u16(), 529);
    let meta = ProviderMeta::from_anthropic_headers(r.headers(), SystemTime::now());
    assert!(
        meta.requests.remaining.is_some(),
        "rate-limit headers ride on errors too"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], json!({"type": "overloaded_error", "message": "Overloaded"}));
}

#[tokio::test]
async fn anthropic_rate_limits_count_down_and_answer_429_with_retry_after() {
    let mock = MockServer::start(MockConfig {
        limit_requests: 2,
        window: Duration::from_secs(2),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let url = format!("{}/messages", mock.base_url());
    let mut remaining = Vec::new();
    for _ in 0..2 {
        let r = post_to(url.clone(), claude("claude-sonnet-4-5"), &[VERSION]).await;
        assert_eq!(r.status(), 200);
        remaining.push(
            ProviderMeta::from_anthropic_headers(r.headers(), SystemTime::now())
                .requests
                .remaining,
        );
    }
    assert_eq!(remaining, [Some(1), Some(0)]);
    let limited = post_to(url.clone(), claude("claude-sonnet-4-5"), &[VERSION]).await;
    assert_eq!(limited.status(), 429);
    let meta = ProviderMeta::from_anthropic_headers(limited.headers(), SystemTime::now());
    let retry = meta.retry_after.unwrap();
    assert!(
        retry >= Duration::from_secs(1) && retry <= Duration::from_secs(2),
        "{retry:?}"
    );
    let reset = meta.requests.reset.unwrap();
    let v: Value = limited.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("2 requests per minute"));
    // The reset header has whole seconds: wait past it, then the window is fresh.
    tokio::time::sleep(reset + Duration::from_millis(1100)).await;
    let again = post_to(url, claude("claude-sonnet-4-5"), &[VERSION]).await;
    assert_eq!(again.status(), 200, "window reset");
}

#[tokio::test]
async fn anthropic_counts_output_tokens_at_max_tokens_on_admission() {
    // limit_tokens 5000: 5000 input and 1000 output tokens a window.
    let mock = MockServer::start(MockConfig {
        limit_tokens: 5000,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let r = post_to(
        format!("{}/messages", mock.base_url()),
        claude("claude-sonnet-4-5"),
        &[VERSION],
    )
    .await;
    assert_eq!(r.status(), 429, "max_tokens 1024 > 1000 output tokens a minute");
    let meta = ProviderMeta::from_anthropic_headers(r.headers(), SystemTime::now());
    assert_eq!(
        (meta.output_tokens.limit, meta.output_tokens.remaining),
        (Some(1000), Some(1000))
    );
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("1000 output tokens per minute"));
    let mut small = claude("claude-sonnet-4-5");
    small["max_tokens"] = json!(600);
    let r = post_to(format!("{}/messages", mock.base_url()), small, &[VERSION]).await;
    assert_eq!(r.status(), 200);
    let meta = ProviderMeta::from_anthropic_headers(r.headers(), SystemTime::now());
    assert_eq!(
        meta.output_tokens.remaining,
        Some(0),
        "400 left, rounded to the thousand"
    );
}

#[tokio::test]
async fn anthropic_stream_has_the_documented_event_sequence_and_reads_back() {
    let mock = MockServer::start(MockConfig {
        chunks: 4,
        cached_fraction: 0.5,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let mut body = claude("claude-sonnet-4-5");
    body["stream"] = json!(true);
    let r = post_to(format!("{}/messages", mock.base_url()), body, &[VERSION]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream; charset=utf-8");
    let text = r.text().await.unwrap();
    let events = sse(&text);
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let data: Vec<Value> = events.iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
    for ((kind, _), d) in events.iter().zip(&data) {
        assert_eq!(d["type"], kind.as_str(), "data names its event");
    }
    let start = &data[0]["message"];
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["stop_reason"], Value::Null);
    assert_eq!(start["usage"]["output_tokens"], 1);
    let input = start["usage"]["input_tokens"].as_u64().unwrap();
    let read = start["usage"]["cache_read_input_tokens"].as_u64().unwrap();
    assert_eq!(
        data[8]["delta"],
        json!({"stop_reason": "end_turn", "stop_sequence": null})
    );
    assert_eq!(data[8]["usage"], json!({"output_tokens": 44}));
    let content: String = data.iter().filter_map(|d| d["delta"]["text"].as_str()).collect();
    assert!(content.starts_with("Hello there!"), "{content}");

    let o = observe(Api::AnthropicMessages, &text);
    assert!(o.done);
    assert_eq!(o.error, None);
    assert_eq!(o.facts.id.as_deref(), start["id"].as_str());
    assert_eq!(o.facts.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    assert_eq!(o.facts.finish_reasons, [FinishReason::Stop]);
    let u = o.usage.unwrap();
    assert_eq!((u.input_tokens, u.output_tokens), (input + read, 44));
    assert_eq!(u.cached_input_tokens, Some(read));
    assert_eq!(o.chunks, 8, "every event but ping and message_stop");
}

#[tokio::test]
async fn anthropic_stream_error_is_an_error_event_and_no_message_stop() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let mut body = claude("claude-haiku-4-5");
    body["stream"] = json!(true);
    let text = post_to(
        format!("{}/messages", mock.base_url()),
        body,
        &[VERSION, ("x-mock-error", "stream-error")],
    )
    .await
    .text()
    .await
    .unwrap();
    let events = sse(&text);
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "error");
    assert_eq!(
        serde_json::from_str::<Value>(data).unwrap(),
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );
    assert!(!events.iter().any(|(k, _)| k == "message_stop"));
    let o = observe(Api::AnthropicMessages, &text);
    assert_eq!(o.error, Some(StreamFault::ErrorEvent));
    assert!(!o.done);
    assert!(o.usage.is_some(), "message_start's usage is kept");
}

// ---- OpenAI Responses --------------------------------------------------------------------

fn response_request(model: &str) -> Value {
    json!({"model": model, "instructions": "You are terse.", "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hello there, how are you today?"}]}]})
}

#[tokio::test]
async fn responses_body_has_the_documented_shape_and_openai_headers() {
    let mock = MockServer::start(MockConfig {
        reasoning_tokens: 6,
        cached_fraction: 0.5,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let r = post_to(
        format!("{}/responses", mock.base_url()),
        response_request("o4-mini"),
        &[],
    )
    .await;
    assert_eq!(r.status(), 200);
    let meta = ProviderMeta::from_headers(r.headers());
    assert!(meta.request_id().unwrap().starts_with("req_"));
    assert!(meta.requests.remaining.is_some() && meta.processing.is_some());
    let v: Value = r.json().await.unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!((&v["object"], &v["status"]), (&json!("response"), &json!("completed")));
    assert_eq!(v["model"], "o4-mini-2025-04-16");
    assert_eq!(v["incomplete_details"], Value::Null);
    assert_eq!(v["output"][0]["type"], "reasoning");
    assert_eq!(v["output"][1]["type"], "message");
    assert_eq!(v["output"][1]["content"][0]["type"], "output_text");
    let u = &v["usage"];
    let input = u["input_tokens"].as_u64().unwrap();
    assert_eq!(u["input_tokens_details"]["cached_tokens"].as_u64(), Some(input / 2));
    assert_eq!(u["output_tokens"], 44 + 6);
    assert_eq!(u["output_tokens_details"]["reasoning_tokens"], 6);
    assert_eq!(u["total_tokens"].as_u64(), Some(input + 50));
    let parsed = OpenAiResponse::parse(v.to_string().as_bytes()).unwrap();
    let usage = parsed.usage.unwrap();
    assert_eq!(
        (usage.input_tokens, usage.output_tokens, usage.reasoning_tokens),
        (input, 50, Some(6))
    );
    assert_eq!(parsed.facts.finish_reasons, [FinishReason::Stop]);
    assert_eq!(parsed.facts.service_tier.as_deref(), Some("default"));
}

#[tokio::test]
async fn responses_stream_runs_from_created_to_completed_without_done() {
    let mock = MockServer::start(MockConfig {
        chunks: 3,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let mut body = response_request("gpt-4.1");
    body["stream"] = json!(true);
    let text = post_to(format!("{}/responses", mock.base_url()), body, &[])
        .await
        .text()
        .await
        .unwrap();
    assert!(!text.contains("[DONE]"));
    let events = sse(&text);
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    let data: Vec<Value> = events.iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
    for (i, ((kind, _), d)) in events.iter().zip(&data).enumerate() {
        assert_eq!(d["type"], kind.as_str());
        assert_eq!(d["sequence_number"], i, "sequence numbers count from 0");
    }
    assert_eq!(data[0]["response"]["status"], "in_progress");
    assert_eq!(data[0]["response"]["usage"], Value::Null);
    assert_eq!(data[0]["response"]["service_tier"], "auto");
    let done = &data[10]["response"];
    assert_eq!(done["status"], "completed");
    let deltas: String = data.iter().filter_map(|d| d["delta"].as_str()).collect();
    assert_eq!(done["output"][0]["content"][0]["text"], deltas.as_str());

    let o = observe(Api::Responses, &text);
    assert!(o.done);
    assert_eq!(o.error, None);
    assert_eq!(o.facts.status.as_deref(), Some("completed"));
    assert_eq!(o.facts.service_tier.as_deref(), Some("default"));
    assert_eq!(o.facts.model.as_deref(), Some("gpt-4.1-2025-04-14"));
    let u = o.usage.unwrap();
    assert_eq!(u.output_tokens, 44);
    assert_eq!(Some(u.input_tokens), done["usage"]["input_tokens"].as_u64());
    assert_eq!(o.chunks, 11);
}

#[tokio::test]
async fn responses_max_output_tokens_makes_it_incomplete() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let mut body = response_request("gpt-4.1-mini");
    body["max_output_tokens"] = json!(16);
    let v: Value = post_to(format!("{}/responses", mock.base_url()), body.clone(), &[])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "incomplete");
    assert_eq!(v["incomplete_details"], json!({"reason": "max_output_tokens"}));
    assert_eq!(v["usage"]["output_tokens"], 16);
    body["stream"] = json!(true);
    let text = post_to(format!("{}/responses", mock.base_url()), body, &[])
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(sse(&text).last().unwrap().0, "response.incomplete");
    let o = observe(Api::Responses, &text);
    assert!(o.done);
    assert_eq!(o.facts.finish_reasons, [FinishReason::Length]);
    assert_eq!(o.usage.unwrap().output_tokens, 16);
}

#[tokio::test]
async fn responses_stream_error_ends_in_response_failed() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let mut body = response_request("gpt-4.1");
    body["stream"] = json!(true);
    let text = post_to(
        format!("{}/responses", mock.base_url()),
        body,
        &[("x-mock-error", "stream-error")],
    )
    .await
    .text()
    .await
    .unwrap();
    let events = sse(&text);
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "response.failed");
    let v: Value = serde_json::from_str(data).unwrap();
    assert_eq!(v["response"]["error"]["code"], "server_error");
    let o = observe(Api::Responses, &text);
    assert!(o.done);
    assert_eq!(o.error, Some(StreamFault::ErrorEvent));
    assert_eq!(o.facts.status.as_deref(), Some("failed"));
}

// ---- Azure OpenAI --------------------------------------------------------------------------

fn chat(model: Option<&str>) -> Value {
    let mut v = json!({"messages": [{"role": "user", "content": "Hello there, how are you today?"}]});
    if let Some(m) = model {
        v["model"] = json!(m);
    }
    v
}

#[tokio::test]
async fn azure_deployment_path_answers_like_chat_with_api_key_and_filter_results() {
    let mock = MockServer::start(MockConfig {
        api_key: Some("azure-key".into()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let url = format!(
        "{}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
        mock.azure_endpoint()
    );
    let r = post_to(url.clone(), chat(None), &[("api-key", "azure-key")]).await;
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    for name in ["apim-request-id", "x-ms-region", names::HEADER_REQUEST_ID] {
        assert!(h.contains_key(name), "missing {name}");
    }
    assert_eq!(h["x-ms-deployment-name"], "gpt-4o");
    assert!(!h.contains_key(names::HEADER_OPENAI_ORGANIZATION));
    let meta = ProviderMeta::from_headers(&h);
    assert_eq!(meta.requests.remaining, Some(499));
    assert!(meta.tokens.remaining.is_some());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o-2024-08-06");
    assert!(v.get("service_tier").is_none());
    assert_eq!(v["prompt_filter_results"][0]["prompt_index"], 0);
    assert_eq!(v["choices"][0]["content_filter_results"]["hate"]["filtered"], false);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    // Azure's own refusals: a wrong or missing key, a Bearer token in place of the key, no api-version.
    for headers in [
        vec![("api-key", "nope")],
        vec![],
        vec![("authorization", "Bearer azure-key")],
    ] {
        let r = post_to(url.clone(), chat(None), &headers).await;
        assert_eq!(r.status(), 401, "{headers:?}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "401");
    }
    let r = post_to(
        format!("{}/openai/deployments/gpt-4o/chat/completions", mock.azure_endpoint()),
        chat(None),
        &[("api-key", "azure-key")],
    )
    .await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": {"code": "404", "message": "Resource not found"}})
    );
}

#[tokio::test]
async fn azure_stream_starts_with_the_empty_prompt_filter_chunk() {
    let mock = MockServer::start(MockConfig {
        chunks: 2,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let mut body = chat(None);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let text = post_to(
        format!(
            "{}/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21",
            mock.azure_endpoint()
        ),
        body,
        &[],
    )
    .await
    .text()
    .await
    .unwrap();
    let events = sse(&text);
    assert!(events.iter().all(|(k, _)| k.is_empty()), "data-only events");
    let first: Value = serde_json::from_str(&events[0].1).unwrap();
    assert_eq!(
        first,
        json!({"choices": [], "created": 0, "id": "", "model": "", "object": "", "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {
            "hate": {"filtered": false, "severity": "safe"}, "self_harm": {"filtered": false, "severity": "safe"},
            "sexual": {"filtered": false, "severity": "safe"}, "violence": {"filtered": false, "severity": "safe"}}}]})
    );
    assert!(events[0]
        .1
        .starts_with(r#"{"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results""#));
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let content: Vec<Value> = events[1..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert!(content.iter().all(|c| c.get("service_tier").is_none()));
    assert_eq!(
        content[1]["choices"][0]["content_filter_results"]["violence"]["severity"],
        "safe"
    );
    // The library's Chat Completions observer takes the id and model from the real chunks.
    let o = observe(Api::ChatCompletions, &text);
    assert!(o.done);
    assert_eq!(o.error, None);
    assert!(o.facts.id.as_deref().unwrap().starts_with("chatcmpl-"));
    assert_eq!(o.facts.model.as_deref(), Some("my-gpt4o"));
    assert_eq!(o.usage.unwrap().output_tokens, 44);
}

#[tokio::test]
async fn azure_v1_path_takes_the_model_from_the_body_and_needs_no_api_version() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let url = format!("{}/openai/v1/chat/completions", mock.azure_endpoint());
    let r = post_to(url.clone(), chat(Some("gpt-4.1-mini")), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ms-deployment-name"], "gpt-4.1-mini");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["model"], "gpt-4.1-mini-2025-04-14");
    let r = post_to(url, chat(None), &[]).await;
    assert_eq!(r.status(), 400, "the v1 path needs a model");
}
