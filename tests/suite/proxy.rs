//! The proxy end to end with the mock provider: pass-through, xproxy_result, streaming without
//! buffering, annotations, auth, limits, upstream failures and disconnects.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use llm_meter::{AdmissionMode, LimitConfig, LimitKind, MemoryLedger};
use llm_meter::{CallRecord, ErrorType, Meter};
use llm_meter_mock::{MockConfig, MockServer, StreamCounts};
use llm_meter_proxy::{Proxy, ProxySettings};
use serde_json::{json, Value};

struct Setup {
    mock: MockServer,
    base: String,
    records: Arc<Mutex<Vec<CallRecord>>>,
    http: reqwest::Client,
}

async fn setup_with(
    mock: MockConfig,
    settings: impl FnOnce(&mut ProxySettings),
    meter: impl FnOnce(llm_meter::MeterBuilder) -> llm_meter::MeterBuilder,
) -> Setup {
    let mock = MockServer::start(mock).await.unwrap();
    let records: Arc<Mutex<Vec<CallRecord>>> = Arc::default();
    let sink = records.clone();
    let meter = meter(Meter::builder().hook(move |r: &CallRecord| sink.lock().unwrap().push(r.clone())))
        .build()
        .unwrap();
    let mut s = ProxySettings {
        upstream: mock.base_url().parse().unwrap(),
        ..ProxySettings::default()
    };
    settings(&mut s);
    let addr = Proxy::new(s, meter)
        .unwrap()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    Setup {
        mock,
        base: format!("http://{addr}"),
        records,
        http: reqwest::Client::new(),
    }
}

async fn setup() -> Setup {
    let ledger = Arc::new(MemoryLedger::new(vec![]).unwrap());
    setup_with(MockConfig::default(), |_| {}, |m| m.ledger(ledger)).await
}

fn chat(stream: bool) -> Value {
    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello proxy"}], "stream": stream})
}

impl Setup {
    fn post(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .json(body)
            .header("authorization", "Bearer sk-client-key")
    }
    fn last_record(&self) -> CallRecord {
        self.records.lock().unwrap().last().cloned().expect("a record")
    }
}

#[tokio::test]
async fn json_answers_pass_through_with_a_sibling_xproxy_result() {
    let s = setup().await;
    let resp = s
        .post("/v1/chat/completions", &chat(false))
        .header("xProxy-UseCase-Name", "support")
        .header("xProxy-User-ID", "u-42")
        .header("xProxy-Limit-IDs", "daily, team")
        .header("xProxy-Request-Tags", "beta")
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for h in [
        "x-request-id",
        "openai-processing-ms",
        "openai-version",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-tokens",
    ] {
        assert!(resp.headers().contains_key(h), "{h} passes through");
    }
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let raw = resp.text().await.unwrap();
    assert!(
        raw.starts_with("{\"id\":\"chatcmpl-"),
        "the provider's body is kept as it was: {raw}"
    );
    let body: Value = serde_json::from_str(&raw).unwrap();
    let x = &body["xproxy_result"];
    assert_eq!(x["use_case_name"], "support");
    assert_eq!(x["user_id"], "u-42");
    assert_eq!(x["request_tags"], json!(["beta"]));
    assert_eq!(x["limits"], json!({"daily": {"state": "ok"}, "team": {"state": "ok"}}));
    assert_eq!(x["cost"]["currency"], "usd");
    assert!(body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .starts_with("Hello"));

    let r = s.last_record();
    assert_eq!(r.meta.request_id(), Some(request_id.as_str()));
    assert_eq!(x["request_id"], r.id.to_string());
    let sent = s.mock.received().pop().unwrap();
    assert_eq!(sent.headers["authorization"], "Bearer sk-client-key");
    assert!(
        sent.headers.keys().all(|k| !k.as_str().starts_with("xproxy-")),
        "annotations are not forwarded"
    );
    assert!(
        !sent.headers.contains_key("accept-encoding"),
        "observed calls ask for an uncompressed answer"
    );
}

#[tokio::test]
async fn payi_route_and_upstream_key_replacement() {
    let s = setup_with(
        MockConfig::default(),
        |p| p.upstream_api_key = Some("sk-upstream-secret".into()),
        |m| m,
    )
    .await;
    let resp = s
        .post("/api/v1/proxy/openai/v1/chat/completions", &chat(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.json::<Value>().await.unwrap().get("xproxy_result").is_some());
    assert_eq!(
        s.mock.received().pop().unwrap().headers["authorization"],
        "Bearer sk-upstream-secret"
    );
}

#[tokio::test]
async fn streams_are_forwarded_chunk_by_chunk_with_xproxy_result_on_the_finish_chunk() {
    let s = setup().await;
    let resp = s
        .post("/v1/chat/completions", &chat(true))
        .header("x-mock-gate", "1")
        .header("xProxy-UseCase-Name", "stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = resp.bytes_stream();
    // The mock holds every chunk after the first until released: a buffering proxy would hang.
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("first chunk unbuffered")
        .unwrap()
        .unwrap();
    assert!(first.starts_with(b"data: {"));
    s.mock.release(1000);
    let mut text = String::from_utf8(first.to_vec()).unwrap();
    while let Some(chunk) = body.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(*events.last().unwrap(), "data: [DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    // The caller did not ask for usage: every chunk it gets has choices (`chunk.choices[0]`
    // works on each), and the outcome rides on the chunk with the finish reason, the last one.
    for c in &chunks {
        assert!(
            !c["choices"].as_array().unwrap().is_empty(),
            "a chunk without choices: {c}"
        );
    }
    let carriers: Vec<&Value> = chunks.iter().filter(|c| c.get("xproxy_result").is_some()).collect();
    assert_eq!(carriers.len(), 1, "{text}");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["xproxy_result"]["use_case_name"], "stream");
    assert!(last["xproxy_result"]["cost"]["total"]["base"].as_f64().unwrap() > 0.0);
    assert!(
        !text.contains("\"usage\":{"),
        "the usage chunk the proxy asked for is hidden"
    );
    let sent: Value = serde_json::from_slice(&s.mock.received().pop().unwrap().body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let r = s.last_record();
    assert_eq!((r.error, r.usage.map(|u| u.output_tokens)), (None, Some(44)));
}

#[tokio::test]
async fn streams_keep_the_usage_chunk_the_caller_asked_for() {
    let s = setup().await;
    let mut body = chat(true);
    body["stream_options"] = json!({"include_usage": true});
    let text = s
        .post("/v1/chat/completions", &body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text.matches("\"usage\":{").count(), 1, "{text}");
    assert_eq!(text.matches("xproxy_result").count(), 1, "{text}");
    // The outcome rides on the usage chunk itself: no chunk is added.
    let events: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let usage_chunk = events.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert!(usage_chunk["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert!(usage_chunk["xproxy_result"]["cost"]["total"]["base"].as_f64().unwrap() > 0.0);
    assert_eq!(
        events.iter().filter(|e| e["choices"] == json!([])).count(),
        1,
        "only the usage chunk has no choices"
    );
    assert_eq!(
        s.mock.received()[0].body,
        serde_json::to_vec(&body).unwrap(),
        "sent upstream unchanged"
    );
}

#[tokio::test]
async fn invalid_annotations_get_a_400_naming_the_header_and_nothing_is_forwarded() {
    let s = setup().await;
    let resp = s
        .post("/v1/chat/completions", &chat(false))
        .header("xProxy-Request-Tags", "ok,not ok")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["param"], "xProxy-Request-Tags");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("xProxy-Request-Tags"));
    assert!(s.mock.received().is_empty());
}

#[tokio::test]
async fn proxy_keys_are_required_when_configured() {
    let key = "proxy-key-0123456789";
    let s = setup_with(MockConfig::default(), |p| p.keys = vec![key.into()], |m| m).await;
    let missing = s.post("/v1/chat/completions", &chat(false)).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let wrong = s
        .post("/v1/chat/completions", &chat(false))
        .header("xProxy-Api-Key", "proxy-key-0123456788")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(s.mock.received().is_empty());
    let models = s.http.get(format!("{}/v1/models", s.base)).send().await.unwrap();
    assert_eq!(models.status(), 401, "forwarded routes need the key too");
    let ok = s
        .post("/v1/chat/completions", &chat(false))
        .header("xProxy-Api-Key", key)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(
        !s.mock.received()[0].headers.contains_key("xproxy-api-key"),
        "the proxy key is never forwarded"
    );
}

#[tokio::test]
async fn block_limits_refuse_before_the_provider_is_called() {
    let chat = |_| {
        let mut c = chat(false);
        c["max_completion_tokens"] = json!(50);
        c
    };
    let ledger = Arc::new(
        MemoryLedger::new(vec![LimitConfig {
            id: "cap".into(),
            max: 0.0006,
            threshold: None,
            kind: LimitKind::Block,
            reset: None,
            admission: AdmissionMode::Reserve,
        }])
        .unwrap(),
    );
    let s = setup_with(MockConfig::default(), |_| {}, |m| m.ledger(ledger.clone())).await;
    let first = s
        .post("/v1/chat/completions", &chat(()))
        .header("xProxy-Limit-IDs", "cap")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let refused = s
        .post("/v1/chat/completions", &chat(()))
        .header("xProxy-Limit-IDs", "cap")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["xproxy_error"]["code"], "limit_reached");
    assert_eq!(body["xproxy_result"]["blocked_limit_ids"], json!(["cap"]));
    assert_eq!(body["xproxy_result"]["limits"]["cap"]["state"], "blocked");
    assert_eq!(s.mock.received().len(), 1);
    assert_eq!(s.last_record().error, Some(ErrorType::LimitReached));
}

#[tokio::test]
async fn upstream_errors_pass_through_as_the_provider_sent_them() {
    let s = setup().await;
    let resp = s
        .post("/v1/chat/completions", &chat(false))
        .header("x-mock-error", "429")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert!(body.get("xproxy_result").is_none());
    assert_eq!(s.last_record().error, Some(ErrorType::Status(429)));
    let resp = s
        .post("/v1/chat/completions", &chat(true))
        .header("x-mock-error", "500")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["type"], "server_error");
}

#[tokio::test]
async fn timeouts_and_unreachable_upstreams_get_openai_shaped_504_and_502() {
    let s = setup_with(MockConfig::default(), |p| p.timeout = Duration::from_millis(300), |m| m).await;
    let resp = s
        .post("/v1/chat/completions", &chat(false))
        .header("x-mock-error", "stall")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "upstream_timeout");
    assert_eq!(s.last_record().error, Some(ErrorType::Timeout));

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = setup_with(
        MockConfig::default(),
        |p| p.upstream = format!("http://127.0.0.1:{port}/v1").parse().unwrap(),
        |m| m,
    )
    .await;
    let resp = down.post("/v1/chat/completions", &chat(false)).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "upstream_unreachable"
    );
    assert_eq!(down.last_record().error, Some(ErrorType::Connect));
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_cancels_the_call() {
    // 40 chunks 50 ms apart: the whole stream takes 2 s.
    let s = setup_with(
        MockConfig {
            chunk_delay: Duration::from_millis(50),
            chunks: 40,
            ..MockConfig::default()
        },
        |_| {},
        |m| m,
    )
    .await;
    let resp = s.post("/v1/chat/completions", &chat(true)).send().await.unwrap();
    let mut body = resp.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(body);
    let mut record = None;
    for _ in 0..100 {
        if let Some(r) = s.records.lock().unwrap().last().cloned() {
            record = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(record.expect("the call ended").error, Some(ErrorType::Cancelled));
    // The upstream call stopped too: the provider saw its stream dropped before the end. A proxy
    // that kept reading it after the client left would show it finished (after the 2 s).
    let mut streams = StreamCounts::default();
    for _ in 0..500 {
        streams = s.mock.streams();
        if streams != StreamCounts::default() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        streams,
        StreamCounts {
            finished: 0,
            abandoned: 1
        },
        "the upstream stream is dropped with the client"
    );
}

#[tokio::test]
async fn other_v1_requests_are_forwarded_untouched() {
    let key = "proxy-key-0123456789";
    let s = setup_with(MockConfig::default(), |p| p.keys = vec![key.into()], |m| m).await;
    let annotated = |req: reqwest::RequestBuilder| {
        req.header("xProxy-Api-Key", key)
            .header("xProxy-UseCase-Name", "x")
            .header("xProxy-User-ID", "u-1")
            .header("xProxy-Limit-IDs", "daily")
            .header("xProxy-Request-Tags", "beta")
            .header("authorization", "Bearer sk-client-key")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("te", "trailers")
            .header("x-client-header", "kept")
    };
    // What reached the provider: no proxy header, no hop-by-hop header, the rest as sent.
    let check_headers = |sent: &llm_meter_mock::ReceivedRequest| {
        let names: Vec<&str> = sent.headers.keys().map(|k| k.as_str()).collect();
        assert!(
            names.iter().all(|k| !k.starts_with("xproxy-")),
            "no xProxy-* header is forwarded: {names:?}"
        );
        for hop in ["connection", "x-hop", "keep-alive", "proxy-connection", "te"] {
            assert!(!sent.headers.contains_key(hop), "{hop} is per connection: {names:?}");
        }
        assert_eq!(sent.headers["authorization"], "Bearer sk-client-key");
        assert_eq!(sent.headers["x-client-header"], "kept");
        assert_eq!(
            sent.headers["host"],
            s.mock.addr().to_string(),
            "the provider's own host, not the proxy's"
        );
    };

    let resp = annotated(s.http.get(format!("{}/v1/models?limit=2&order=desc", s.base)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["object"], "list");
    let sent = s.mock.received().pop().expect("the request reached the provider");
    assert_eq!(sent.method, http::Method::GET);
    assert_eq!(sent.path, "/v1/models");
    assert_eq!(sent.query.as_deref(), Some("limit=2&order=desc"));
    assert!(sent.body.is_empty());
    check_headers(&sent);

    // A POST on another route, through Pay-i's prefix: the body goes byte for byte.
    let body: &[u8] = b"{\"model\": \"text-embedding-3-small\",\n  \"input\": \"caf\xc3\xa9 \\u00e9\"}\n";
    let resp = annotated(s.http.post(format!(
        "{}/api/v1/proxy/openai/v1/embeddings?api-version=2024-10-21",
        s.base
    )))
    .header("content-type", "application/json")
    .body(body)
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 404, "the provider's answer, as it sent it");
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["message"],
        "Invalid URL (POST /v1/embeddings)"
    );
    let sent = s.mock.received().pop().expect("the request reached the provider");
    assert_eq!(sent.method, http::Method::POST);
    assert_eq!(sent.path, "/v1/embeddings");
    assert_eq!(sent.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(sent.body, body, "the body is forwarded untouched");
    assert_eq!(sent.headers["content-type"], "application/json");
    check_headers(&sent);

    assert_eq!(s.mock.received().len(), 2);
    assert!(s.records.lock().unwrap().is_empty(), "not a chat call: not observed");
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused() {
    let s = setup_with(MockConfig::default(), |p| p.body_limit = 1024, |m| m).await;
    let big = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x".repeat(4096)}]});
    let resp = s.post("/v1/chat/completions", &big).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    assert!(s.mock.received().is_empty());
}

#[tokio::test]
async fn a_config_file_sets_prices_limits_and_model_defaults() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let config = llm_meter_proxy::config::Config::parse(&format!(
        "upstream = \"{}\"\n[prices.\"house-model\"]\ninput = 1000.0\noutput = 2000.0\n\
         [[limits]]\nid = \"house\"\nmax = 1000.0\nthreshold = 0.5\n\
         [model_defaults.\"house-model\"]\nmax_completion_tokens = 7\ntemperature = 0.1\n",
        mock.base_url()
    ))
    .unwrap();
    let telemetry = llm_meter::Telemetry::builder().without_otlp().build().unwrap();
    let (proxy, ledger) =
        llm_meter_proxy::from_config(&config, None, &telemetry, llm_meter_proxy::Observation::Full).unwrap();
    let addr = proxy.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let body = json!({"model": "house-model", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.9});
    let resp: Value = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("xProxy-Limit-IDs", "house")
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sent: Value = serde_json::from_slice(&mock.received()[0].body).unwrap();
    assert_eq!(sent["max_completion_tokens"], 7, "default merged into the unset field");
    assert_eq!(sent["temperature"], 0.9, "the request's own value wins");
    let usage = &resp["usage"];
    let want = usage["prompt_tokens"].as_f64().unwrap() * 1000.0 / 1e6
        + usage["completion_tokens"].as_f64().unwrap() * 2000.0 / 1e6;
    assert!((resp["xproxy_result"]["cost"]["total"]["base"].as_f64().unwrap() - want).abs() < 1e-12);
    assert_eq!(usage["completion_tokens"], 7);
    assert_eq!(resp["xproxy_result"]["limits"]["house"]["state"], "ok");
    assert!((ledger.statuses()[0].spend - want).abs() < 1e-12);
}

#[tokio::test]
async fn the_observation_mode_chooses_what_is_recorded() {
    use llm_meter_proxy::Observation;
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let config = llm_meter_proxy::config::Config::parse(&format!("upstream = \"{}\"\n", mock.base_url())).unwrap();
    let calls_metric = llm_meter::names::METRIC_OPERATION_DURATION.replace('.', "_");
    for (mode, metrics, spans) in [
        (Observation::Auto, true, false), // no OTLP trace export: nothing would read spans
        (Observation::Full, true, true),
        (Observation::Metrics, true, false),
        (Observation::Off, false, false),
    ] {
        let telemetry = llm_meter::Telemetry::builder().without_otlp().build().unwrap();
        assert!(!telemetry.spans_exported());
        let (proxy, _) = llm_meter_proxy::from_config(&config, None, &telemetry, mode).unwrap();
        assert_eq!(proxy.meter().spans_enabled(), spans, "{mode:?}");
        let addr = proxy.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let resp = reqwest::Client::new()
            .post(format!("http://{addr}/v1/chat/completions"))
            .json(&chat(false))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let answer: Value = resp.json().await.unwrap();
        assert!(answer["xproxy_result"]["cost"].is_object(), "{mode:?}: still priced");
        let text = llm_meter::prometheus::encode(telemetry.exposition().unwrap()).unwrap();
        let recorded = text
            .lines()
            .any(|l| l.starts_with(&calls_metric) && !l.starts_with('#'));
        assert_eq!(recorded, metrics, "{mode:?}: metrics\n{text}");
    }
}

/// A client cannot hold a connection by sending its request head slowly: the connection is
/// closed once `header_read_timeout` has passed without a whole head, and so is a kept-alive
/// connection left idle that long. Whole requests are answered as before.
#[tokio::test]
async fn a_request_head_not_complete_in_time_closes_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let wait = Duration::from_millis(300);
    let s = setup_with(MockConfig::default(), |p| p.header_read_timeout = wait, |m| m).await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let closed_after = |mut connection: tokio::net::TcpStream| async move {
        let started = std::time::Instant::now();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), connection.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "the connection was still open after 10 s");
        (started.elapsed(), answer)
    };

    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: proxy\r\ncontent-type: application/json\r\n")
        .await
        .unwrap();
    let (elapsed, answer) = closed_after(slow).await;
    assert!(
        elapsed >= wait - Duration::from_millis(50),
        "closed before the timeout: {elapsed:?}"
    );
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(s.mock.requests().answered, 0, "nothing was forwarded");

    let idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (elapsed, _) = closed_after(idle).await;
    assert!(
        elapsed >= wait - Duration::from_millis(50),
        "closed before the timeout: {elapsed:?}"
    );

    let resp = s.post("/v1/chat/completions", &chat(false)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}
