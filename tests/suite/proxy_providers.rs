//! The proxy's routes beyond OpenAI Chat Completions: Anthropic Messages, OpenAI Responses and
//! Azure OpenAI, each on its native path and Pay-i's, streaming and not, against the mock
//! provider. Each call is recorded once with its provider, usage and rate limits; the caller
//! gets the provider's answer with `xproxy_result`; provider keys go upstream unchanged.

use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use llm_meter::{names, Api, CallRecord, Meter};
use llm_meter_mock::{MockConfig, MockServer};
use llm_meter_proxy::{Proxy, ProxySettings};
use serde_json::{json, Value};

type Records = Arc<Mutex<Vec<CallRecord>>>;

struct Setup {
    mock: MockServer,
    base: String,
    records: Records,
}

/// A proxy with the mock as every provider's upstream (Azure's only when `azure`).
async fn setup(config: MockConfig, azure: bool) -> Setup {
    let mock = MockServer::start(config).await.unwrap();
    let records: Records = Arc::default();
    let sink = records.clone();
    let meter = Meter::builder()
        .hook(move |r: &CallRecord| sink.lock().unwrap().push(r.clone()))
        .build()
        .unwrap();
    let origin = mock.azure_endpoint();
    let settings = ProxySettings {
        upstream: mock.base_url().parse().unwrap(),
        anthropic_upstream: origin.parse().unwrap(),
        azure_openai_upstream: azure.then(|| origin.parse().unwrap()),
        ..ProxySettings::default()
    };
    let addr = Proxy::new(settings, meter)
        .unwrap()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    Setup {
        mock,
        base: format!("http://{addr}"),
        records,
    }
}

impl Setup {
    async fn post(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = reqwest::Client::new().post(format!("{}{path}", self.base)).json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    /// The one record of the last call (waits for a stream's record, bounded).
    async fn last_record(&self, count: usize) -> CallRecord {
        for _ in 0..100 {
            if self.records.lock().unwrap().len() >= count {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let records = self.records.lock().unwrap();
        assert_eq!(records.len(), count, "one record per call");
        records[count - 1].clone()
    }
}

/// `(event, data)` of each SSE event.
fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = String::new();
            let mut data = String::new();
            for line in e.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            (name, serde_json::from_str(&data).unwrap_or(Value::String(data)))
        })
        .collect()
}

async fn text_of(resp: reqwest::Response) -> String {
    let mut body = resp.bytes_stream();
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    String::from_utf8(out).unwrap()
}

const ANTHROPIC_KEY: &str = "sk-ant-proxy-test-key";
const AZURE_KEY: &str = "azure-proxy-test-key";

fn claude(stream: bool) -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 256, "stream": stream,
           "messages": [{"role": "user", "content": "Hello there, how are you today?"}]})
}

#[tokio::test]
async fn anthropic_messages_are_observed_on_both_routes() {
    let s = setup(
        MockConfig {
            api_key: Some(ANTHROPIC_KEY.into()),
            cached_fraction: 0.25,
            cache_write_fraction: 0.5,
            ..MockConfig::default()
        },
        false,
    )
    .await;
    let auth = [("x-api-key", ANTHROPIC_KEY), ("anthropic-version", "2023-06-01")];
    for (n, path) in ["/v1/messages", "/api/v1/proxy/anthropic/v1/messages"]
        .iter()
        .enumerate()
    {
        let resp = s.post(path, &claude(false), &auth).await;
        assert_eq!(resp.status(), 200, "{path}");
        let request_id = resp.headers()[names::HEADER_ANTHROPIC_REQUEST_ID]
            .to_str()
            .unwrap()
            .to_owned();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["type"], "message");
        let u = &body["usage"];
        let (input, read, write, output) = (
            u["input_tokens"].as_u64().unwrap(),
            u["cache_read_input_tokens"].as_u64().unwrap(),
            u["cache_creation_input_tokens"].as_u64().unwrap(),
            u["output_tokens"].as_u64().unwrap(),
        );
        assert!(read > 0 && write > 0, "the mock caches: {u}");
        let r = s.last_record(n + 1).await;
        assert_eq!(&*r.provider, names::PROVIDER_ANTHROPIC);
        assert_eq!(r.request.api, Api::AnthropicMessages);
        assert_eq!(r.error, None, "{path}");
        let usage = r.usage.unwrap();
        assert_eq!(
            usage.input_tokens,
            input + read + write,
            "input counts cache reads and writes"
        );
        assert_eq!(usage.cached_input_tokens, Some(read));
        assert_eq!(usage.cache_creation_input_tokens, Some(write));
        assert_eq!(usage.output_tokens, output);
        assert_eq!(r.response.model.as_deref(), body["model"].as_str());
        assert_eq!(r.meta.request_id(), Some(request_id.as_str()));
        assert_eq!(r.meta.input_tokens.limit, Some(30_000));
        assert_eq!(r.meta.output_tokens.limit, Some(6_000));
        assert!(r.cost.is_some(), "Claude models are priced");
        let x = &body[names::XPROXY_RESULT];
        assert_eq!(x["request_id"], r.id.to_string());
        assert!((x["cost"]["total"]["base"].as_f64().unwrap() - r.cost.unwrap().total).abs() < 1e-12);
    }
    let seen = s.mock.received();
    assert!(seen.iter().all(|q| q.headers["x-api-key"] == ANTHROPIC_KEY));
    assert!(seen.iter().all(|q| q.headers["anthropic-version"] == "2023-06-01"));
    assert!(seen.iter().all(|q| q.path == "/v1/messages"), "{seen:?}");
}

#[tokio::test]
async fn anthropic_streams_keep_their_events_and_end_with_xproxy_result() {
    let s = setup(MockConfig::default(), false).await;
    let auth = [("x-api-key", ANTHROPIC_KEY), ("anthropic-version", "2023-06-01")];
    let direct = text_of(
        reqwest::Client::new()
            .post(format!("{}/messages", s.mock.base_url()))
            .json(&claude(true))
            .header("x-api-key", ANTHROPIC_KEY)
            .header("anthropic-version", "2023-06-01")
            .send()
            .await
            .unwrap(),
    )
    .await;
    for (n, path) in ["/v1/messages", "/api/v1/proxy/anthropic/v1/messages"]
        .iter()
        .enumerate()
    {
        let resp = s.post(path, &claude(true), &auth).await;
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let got = events(&text_of(resp).await);
        let want = events(&direct);
        let names_of = |e: &[(String, Value)]| e.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(
            names_of(&got),
            names_of(&want),
            "the same events, each with its event: line"
        );
        assert_eq!(got.last().unwrap().0, "message_stop");
        let stop = &got.last().unwrap().1;
        assert_eq!(stop["type"], "message_stop");
        let r = s.last_record(n + 1).await;
        assert_eq!(r.error, None);
        assert_eq!(stop[names::XPROXY_RESULT]["request_id"], r.id.to_string());
        assert!(got[..got.len() - 1]
            .iter()
            .all(|(_, d)| d.get(names::XPROXY_RESULT).is_none()));
        let usage = r.usage.unwrap();
        let delta = got.iter().find(|(n, _)| n == "message_delta").unwrap();
        assert_eq!(usage.output_tokens, delta.1["usage"]["output_tokens"].as_u64().unwrap());
        assert!(r.request.stream);
    }
    let sent: Value = serde_json::from_slice(&s.mock.received()[1].body).unwrap();
    assert!(sent.get("stream_options").is_none(), "no include_usage for Anthropic");
}

fn response_request(stream: bool) -> Value {
    json!({"model": "gpt-4o-mini", "input": "Say hello.", "max_output_tokens": 64, "stream": stream})
}

#[tokio::test]
async fn openai_responses_are_observed_streaming_and_not() {
    let s = setup(MockConfig::default(), false).await;
    let mut n = 0;
    for path in ["/v1/responses", "/api/v1/proxy/openai/v1/responses"] {
        let resp = s.post(path, &response_request(false), &[]).await;
        assert_eq!(resp.status(), 200, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["object"], "response");
        n += 1;
        let r = s.last_record(n).await;
        assert_eq!(&*r.provider, names::PROVIDER_OPENAI);
        assert_eq!(r.request.api, Api::Responses);
        assert_eq!(r.request.max_tokens, Some(64));
        let usage = r.usage.unwrap();
        assert_eq!(usage.input_tokens, body["usage"]["input_tokens"].as_u64().unwrap());
        assert_eq!(usage.output_tokens, body["usage"]["output_tokens"].as_u64().unwrap());
        assert_eq!(body[names::XPROXY_RESULT]["request_id"], r.id.to_string());

        let resp = s.post(path, &response_request(true), &[]).await;
        assert_eq!(resp.status(), 200);
        let got = events(&text_of(resp).await);
        n += 1;
        let r = s.last_record(n).await;
        assert_eq!(r.error, None);
        let (name, done) = got.last().unwrap();
        assert_eq!(name, "response.completed");
        assert_eq!(done["type"], "response.completed");
        assert_eq!(done[names::XPROXY_RESULT]["request_id"], r.id.to_string());
        assert_eq!(
            r.usage.unwrap().output_tokens,
            done["response"]["usage"]["output_tokens"].as_u64().unwrap()
        );
        assert!(
            got.iter().all(|(n, _)| !n.is_empty()),
            "every event keeps its event: line"
        );
    }
    let sent: Value = serde_json::from_slice(&s.mock.received()[1].body).unwrap();
    assert!(sent.get("stream_options").is_none(), "no include_usage for Responses");
    assert!(s.mock.received().iter().all(|q| q.path == "/v1/responses"));
}

fn azure_chat(stream: bool) -> Value {
    json!({"messages": [{"role": "user", "content": "Hello there"}], "stream": stream,
           "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null }})
}

#[tokio::test]
async fn azure_openai_deployments_and_the_v1_path_are_observed() {
    let s = setup(
        MockConfig {
            api_key: Some(AZURE_KEY.into()),
            ..MockConfig::default()
        },
        true,
    )
    .await;
    let key = [("api-key", AZURE_KEY)];
    let paths = [
        "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
        "/api/v1/proxy/azure.openai/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
    ];
    let mut n = 0;
    for path in paths {
        for stream in [false, true] {
            let resp = s.post(path, &azure_chat(stream), &key).await;
            assert_eq!(resp.status(), 200, "{path}");
            let text = text_of(resp).await;
            n += 1;
            let r = s.last_record(n).await;
            assert_eq!(&*r.provider, names::PROVIDER_AZURE_OPENAI);
            assert_eq!(r.error, None, "{path} stream={stream}");
            assert_eq!(r.request.model, "gpt-4o", "the deployment is what was asked for");
            assert_eq!(
                r.response.model.as_deref(),
                Some("gpt-4o-2024-08-06"),
                "the model is the answer's"
            );
            assert!(r.usage.is_some());
            assert!(r.meta.requests.remaining.is_some(), "Azure's x-ratelimit-remaining-*");
            assert!(r.cost.is_some(), "priced by the answer's model");
            assert!(text.contains(names::XPROXY_RESULT));
        }
    }
    let resp = s
        .post(
            "/openai/v1/chat/completions",
            &json!({"model": "gpt-4o", "messages": []}),
            &key,
        )
        .await;
    assert_eq!(resp.status(), 200);
    n += 1;
    assert_eq!(&*s.last_record(n).await.provider, names::PROVIDER_AZURE_OPENAI);
    let seen = s.mock.received();
    assert!(seen.iter().all(|q| q.headers["api-key"] == AZURE_KEY));
    assert!(seen.iter().all(|q| q.path.starts_with("/openai/")), "{seen:?}");
}

#[tokio::test]
async fn azure_routes_without_an_azure_upstream_answer_502_naming_the_setting() {
    let s = setup(MockConfig::default(), false).await;
    let resp = s
        .post(
            "/openai/deployments/d/chat/completions?api-version=2024-10-21",
            &azure_chat(false),
            &[],
        )
        .await;
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_not_configured");
    assert!(body["error"]["message"].as_str().unwrap().contains("azure_openai"));
    assert!(s.mock.received().is_empty());
    assert!(s.records.lock().unwrap().is_empty(), "nothing was called");
}
