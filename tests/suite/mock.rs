//! The mock provider speaks OpenAI's wire format: body shape, headers, rate limits that count
//! down and reset, SSE framing with the usage chunk, and OpenAI-shaped errors.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::time::Duration;

use llm_meter::{parse_duration, ChatCompletion, ProviderMeta};
use llm_meter_mock::{MockConfig, MockServer};
use serde_json::{json, Value};

async fn post(mock: &MockServer, body: Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("{}/chat/completions", mock.base_url()))
        .json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello there, how are you today?"}]})
}

#[tokio::test]
async fn completion_body_and_headers_have_openais_shape() {
    let mock = MockServer::start(MockConfig {
        cached_fraction: 0.5,
        reasoning_tokens: 3,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let resp = post(&mock, chat("gpt-4o"), &[]).await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "application/json");
    for name in [
        "openai-organization",
        "openai-processing-ms",
        "openai-version",
        "x-request-id",
        "x-ratelimit-limit-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
    ] {
        assert!(h.contains_key(name), "missing {name}");
    }
    let meta = ProviderMeta::from_headers(&h);
    assert!(meta.request_id().unwrap().starts_with("req_") && meta.request_id().unwrap().len() == 36);
    assert_eq!(meta.api_version(), Some("2020-10-01"));
    assert!(meta.requests.reset.is_some() && meta.tokens.reset.is_some());

    let body: Value = resp.json().await.unwrap();
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(body["model"], "gpt-4o-2024-08-06");
    assert_eq!(body["service_tier"], "default");
    assert!(body["system_fingerprint"].as_str().unwrap().starts_with("fp_"));
    let choice = &body["choices"][0];
    assert_eq!(
        (
            choice["index"].clone(),
            choice["finish_reason"].clone(),
            choice["message"]["role"].clone()
        ),
        (json!(0), json!("stop"), json!("assistant"))
    );
    let u = &body["usage"];
    let (p, c) = (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    );
    assert_eq!(u["total_tokens"].as_u64().unwrap(), p + c);
    assert_eq!(c, 44 + 3);
    assert_eq!(u["completion_tokens_details"]["reasoning_tokens"], 3);
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap(), p / 2);
    for k in [
        "audio_tokens",
        "accepted_prediction_tokens",
        "rejected_prediction_tokens",
    ] {
        assert!(u["completion_tokens_details"].get(k).is_some(), "{k}");
    }
    // And our own parser reads it.
    let parsed = ChatCompletion::parse(body.to_string().as_bytes()).unwrap();
    assert_eq!(parsed.usage.unwrap().cached_input_tokens, Some(p / 2));
}

#[tokio::test]
async fn max_completion_tokens_cuts_output_and_finish_reason_is_length() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let mut body = chat("gpt-4o-mini");
    body["max_completion_tokens"] = json!(5);
    body["n"] = json!(2);
    let v: Value = post(&mock, body, &[]).await.json().await.unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 10);
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(v["choices"][1]["finish_reason"], "length");
}

#[tokio::test]
async fn rate_limits_count_down_per_request_and_token_and_reset_on_schedule() {
    let mock = MockServer::start(MockConfig {
        limit_requests: 3,
        limit_tokens: 100_000,
        window: Duration::from_secs(2),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = post(&mock, chat("gpt-4o"), &[]).await;
        assert_eq!(r.status(), 200);
        let m = ProviderMeta::from_headers(r.headers());
        remaining.push((m.requests.remaining.unwrap(), m.tokens.remaining.unwrap()));
    }
    assert_eq!(remaining.iter().map(|r| r.0).collect::<Vec<_>>(), [2, 1, 0]);
    assert!(
        remaining[0].1 > remaining[1].1 && remaining[1].1 > remaining[2].1,
        "tokens count down: {remaining:?}"
    );

    let limited = post(&mock, chat("gpt-4o"), &[]).await;
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    let reset = parse_duration(limited.headers()["x-ratelimit-reset-requests"].to_str().unwrap()).unwrap();
    assert!(reset <= Duration::from_secs(2));
    let err: Value = limited.json().await.unwrap();
    assert_eq!(err["error"]["code"], "rate_limit_exceeded");
    assert_eq!(err["error"]["type"], "requests");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Rate limit reached for gpt-4o"));

    tokio::time::sleep(reset + Duration::from_millis(50)).await;
    let again = post(&mock, chat("gpt-4o"), &[]).await;
    assert_eq!(again.status(), 200, "window reset");
    assert_eq!(ProviderMeta::from_headers(again.headers()).requests.remaining, Some(2));
}

#[tokio::test]
async fn token_limit_answers_429_with_type_tokens() {
    let mock = MockServer::start(MockConfig {
        limit_tokens: 60,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let r = post(&mock, chat("gpt-4o"), &[]).await;
    assert_eq!(r.status(), 429);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["type"], "tokens");
}

#[tokio::test]
async fn errors_are_openai_shaped() {
    let mock = MockServer::start(MockConfig {
        api_key: Some("sk-test".into()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let r = post(&mock, chat("gpt-4o"), &[]).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "invalid_api_key");
    let auth = [("authorization", "Bearer sk-test")];
    for (forced, status, kind) in [
        ("400", 400, "invalid_request_error"),
        ("404", 404, "invalid_request_error"),
        ("413", 413, "invalid_request_error"),
        ("500", 500, "server_error"),
        ("503", 503, "server_error"),
        ("529", 529, "server_error"),
    ] {
        let r = post(&mock, chat("gpt-4o"), &[auth[0], ("x-mock-error", forced)]).await;
        assert_eq!(r.status(), status);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], kind);
        assert!(v["error"].get("param").is_some() && v["error"].get("code").is_some());
    }
    let r = reqwest::Client::new()
        .post(format!("{}/chat/completions", mock.base_url()))
        .header("authorization", "Bearer sk-test")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = post(&mock, json!({"model": "gpt-4o"}), &auth).await;
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["param"], "messages");
}

#[tokio::test]
async fn stream_is_sse_with_role_content_finish_usage_and_done() {
    let mock = MockServer::start(MockConfig {
        chunks: 4,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let mut body = chat("gpt-4o");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = post(&mock, body.clone(), &[]).await;
    assert_eq!(r.headers()["content-type"], "text/event-stream; charset=utf-8");
    let text = r.text().await.unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert!(events.iter().all(|e| e.starts_with("data: ")));
    assert_eq!(*events.last().unwrap(), "data: [DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(&e[6..]).unwrap())
        .collect();
    assert_eq!(chunks.len(), 1 + 4 + 1 + 1);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[6]["choices"], json!([]));
    assert_eq!(chunks[6]["usage"]["completion_tokens"], 44);
    assert!(chunks[..6].iter().all(|c| c["usage"].is_null()));
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!content.is_empty());

    body.as_object_mut().unwrap().remove("stream_options");
    let text = post(&mock, body, &[]).await.text().await.unwrap();
    assert!(!text.contains("usage"), "no usage field at all without include_usage");
}

#[tokio::test]
async fn every_request_is_recorded_on_any_route() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let http = reqwest::Client::new();
    let models = http
        .get(format!("{}/models?limit=1", mock.base_url()))
        .header("authorization", "Bearer sk-test")
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
    let unknown = http
        .post(format!("{}/embeddings", mock.base_url()))
        .body("raw body")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let err: Value = unknown.json().await.unwrap();
    assert_eq!(err["error"]["message"], "Invalid URL (POST /v1/embeddings)");
    assert_eq!(err["error"]["type"], "invalid_request_error");
    post(&mock, chat("gpt-4o"), &[]).await;

    let got: Vec<(String, String, Option<String>)> = mock
        .received()
        .iter()
        .map(|r| (r.method.to_string(), r.path.clone(), r.query.clone()))
        .collect();
    assert_eq!(
        got,
        [
            ("GET".into(), "/v1/models".into(), Some("limit=1".into())),
            ("POST".into(), "/v1/embeddings".into(), None),
            ("POST".into(), "/v1/chat/completions".into(), None),
        ]
    );
    let received = mock.received();
    assert_eq!(received[0].headers["authorization"], "Bearer sk-test");
    assert_eq!(received[1].body, "raw body");
}

#[tokio::test]
async fn streams_count_as_finished_or_abandoned() {
    use futures_util::StreamExt;
    use llm_meter_mock::StreamCounts;
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let mut body = chat("gpt-4o");
    body["stream"] = json!(true);
    // Read to the end, and cut short on purpose by the mock: both finished.
    post(&mock, body.clone(), &[]).await.bytes().await.unwrap();
    post(&mock, body.clone(), &[("x-mock-error", "truncate")])
        .await
        .bytes()
        .await
        .unwrap();
    // Dropped by the client after the first chunk while the mock holds the rest: abandoned.
    let resp = post(&mock, body, &[("x-mock-gate", "1")]).await;
    let mut chunks = resp.bytes_stream();
    chunks.next().await.unwrap().unwrap();
    drop(chunks);
    let want = StreamCounts {
        finished: 2,
        abandoned: 1,
    };
    for _ in 0..250 {
        if mock.streams() == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mock.streams(), want);
}

#[tokio::test]
async fn requests_count_as_answered_or_abandoned() {
    use llm_meter_mock::RequestCounts;
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    post(&mock, chat("gpt-4o"), &[]).await.bytes().await.unwrap();
    let gone = reqwest::Client::new()
        .post(format!("{}/chat/completions", mock.base_url()))
        .header("x-mock-error", "stall")
        .json(&chat("gpt-4o"))
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(gone.is_err());
    let want = RequestCounts {
        answered: 1,
        abandoned: 1,
    };
    for _ in 0..250 {
        if mock.requests() == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mock.requests(), want);
}

/// The raw bytes the mock answers `body` with, forcing `fault`, up to the connection's end.
async fn raw_answer(mock: &MockServer, fault: &str, body: &Value) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body.to_string();
    let mut conn = tokio::net::TcpStream::connect(mock.addr()).await.unwrap();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\nx-mock-error: {fault}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = conn.read_to_end(&mut out).await; // a reset ends it too
    out
}

#[tokio::test]
async fn transport_faults_are_what_the_wire_shows() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let mut stream = chat("gpt-4o");
    stream["stream"] = json!(true);
    assert_eq!(
        raw_answer(&mock, "reset-head", &chat("gpt-4o")).await,
        b"",
        "no byte of an answer"
    );

    let huge = String::from_utf8(raw_answer(&mock, "huge-head", &chat("gpt-4o")).await).unwrap();
    let (head, body) = huge.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.1 200") && head.len() > 1024 * 1024,
        "{} bytes",
        head.len()
    );
    assert!(
        head.lines().count() < 100,
        "under the usual cap on the number of headers"
    );
    assert_eq!(
        serde_json::from_str::<Value>(body).unwrap()["object"],
        "chat.completion"
    );

    // A reset mid-body: the head and part of the body, then no end of the chunked body.
    for body in [&chat("gpt-4o"), &stream] {
        let cut = String::from_utf8_lossy(&raw_answer(&mock, "reset", body).await).into_owned();
        assert!(cut.starts_with("HTTP/1.1 200") && cut.contains("\r\n\r\n"), "{cut}");
        assert!(!cut.ends_with("\r\n0\r\n\r\n"), "the body never ends: {cut}");
    }

    let text = post(&mock, stream.clone(), &[("x-mock-error", "malformed-sse")])
        .await
        .text()
        .await
        .unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    let bad: Vec<&&str> = events
        .iter()
        .filter(|e| *e != &"data: [DONE]" && serde_json::from_str::<Value>(&e[6..]).is_err())
        .collect();
    assert_eq!(bad.len(), 1, "one chunk cut mid-JSON: {text}");
    assert_eq!(events.last(), Some(&"data: [DONE]"));

    for body in [&chat("gpt-4o"), &stream] {
        let bytes = post(&mock, body.clone(), &[("x-mock-error", "bad-utf8")])
            .await
            .bytes()
            .await
            .unwrap();
        assert!(std::str::from_utf8(&bytes).is_err());
        assert_eq!(bytes.iter().filter(|b| **b == 0xFF).count(), 1, "one byte replaced");
    }
}

#[tokio::test]
async fn request_controlled_sizes_are_bounded_and_never_overflow() {
    let mock = MockServer::start(MockConfig {
        limit_tokens: u64::MAX,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let mut body = chat("gpt-4o");
    body["max_completion_tokens"] = json!(u64::MAX);
    body["n"] = json!(u64::MAX);
    let huge = u64::MAX.to_string();
    let resp = post(&mock, body.clone(), &[("x-mock-completion-tokens", &huge)]).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let per_choice = llm_meter_mock::MAX_COMPLETION_TOKENS;
    assert_eq!(v["choices"].as_array().unwrap().len(), 8, "n is clamped");
    assert_eq!(v["usage"]["completion_tokens"], per_choice * 8);

    body["stream"] = json!(true);
    body["n"] = json!(1);
    body["max_completion_tokens"] = json!(10);
    let text = post(&mock, body, &[("x-mock-chunks", &u32::MAX.to_string())])
        .await
        .text()
        .await
        .unwrap();
    let chunks = text.matches("data: {").count();
    assert!(chunks <= llm_meter_mock::MAX_CHUNKS as usize + 3, "{chunks} chunks");
    assert!(text.ends_with("data: [DONE]\n\n"));
}
