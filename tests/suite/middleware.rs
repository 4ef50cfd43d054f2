//! A `reqwest_middleware::ClientWithMiddleware` observed through `MeterMiddleware`: every API,
//! streaming and not, byte for byte, one record per call; other requests untouched.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers may fail loudly
#![cfg(feature = "reqwest-middleware")]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use futures_util::StreamExt;
use http::{HeaderMap, StatusCode};
use llm_meter::{Annotations, Api, CallError, CallRecord, ErrorType, Meter, MeterBuilder, MeterMiddleware};
use llm_meter_mock::{MockConfig, MockServer};
use reqwest_middleware::ClientWithMiddleware;
use serde_json::{json, Value};

use crate::common::{attrs, capture_spans, s};

type Records = Arc<Mutex<Vec<CallRecord>>>;
/// One body, filled as it is relayed.
type Relayed = Arc<Mutex<Vec<u8>>>;

/// A relay in front of the mock that keeps the bytes of every answer as the mock sent them, so
/// that a test can compare what the caller got with what the provider sent.
struct Tee {
    addr: SocketAddr,
    /// One entry per answer, in order: its body, whole.
    sent: Arc<Mutex<Vec<Relayed>>>,
    mock: MockServer,
}

impl Tee {
    async fn start() -> Tee {
        let mock = MockServer::start(MockConfig::default()).await.unwrap();
        let upstream = format!("http://{}", mock.addr());
        let sent: Arc<Mutex<Vec<Relayed>>> = Arc::default();
        let kept = sent.clone();
        let http = reqwest::Client::new();
        let relay = move |req: axum::extract::Request| {
            let (http, kept, upstream) = (http.clone(), kept.clone(), upstream.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                let mut headers = parts.headers.clone();
                headers.remove(http::header::HOST);
                headers.remove(http::header::CONTENT_LENGTH);
                let answer = http
                    .request(parts.method, format!("{upstream}{}", parts.uri))
                    .headers(headers)
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let bytes = Relayed::default();
                kept.lock().unwrap().push(bytes.clone());
                let mut out = http::Response::builder().status(answer.status());
                for (name, value) in answer.headers() {
                    if name != http::header::CONTENT_LENGTH && name != http::header::TRANSFER_ENCODING {
                        out = out.header(name, value);
                    }
                }
                let body = answer.bytes_stream().map(move |chunk| {
                    if let Ok(chunk) = &chunk {
                        bytes.lock().unwrap().extend_from_slice(chunk);
                    }
                    chunk
                });
                out.body(Body::from_stream(body)).unwrap()
            }
        };
        let app = axum::Router::new().fallback(relay);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Tee { addr, sent, mock }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The body of the last answer, as the mock sent it.
    fn last_sent(&self) -> Vec<u8> {
        self.sent
            .lock()
            .unwrap()
            .last()
            .expect("an answer")
            .lock()
            .unwrap()
            .clone()
    }

    /// The requests the mock received, as the middleware sent them on.
    fn received(&self) -> Vec<llm_meter_mock::ReceivedRequest> {
        self.mock.received()
    }
}

fn recording(builder: MeterBuilder) -> (Meter, Records) {
    let records: Records = Arc::default();
    let sink = records.clone();
    let meter = builder
        .hook(move |r: &CallRecord| sink.lock().unwrap().push(r.clone()))
        .build()
        .unwrap();
    (meter, records)
}

fn client(middleware: MeterMiddleware) -> ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(middleware)
        .build()
}

fn recording_client() -> (ClientWithMiddleware, Records) {
    let (meter, records) = recording(Meter::builder());
    (client(MeterMiddleware::new(meter)), records)
}

/// The one record made since the last call, taken out.
fn one_record(records: &Records) -> CallRecord {
    let mut r = records.lock().unwrap();
    assert_eq!(r.len(), 1, "exactly one record per call: {r:?}");
    r.pop().unwrap()
}

/// A request body of `api`, streaming or not, and the path it goes to.
fn request_of(api: Api, stream: bool) -> (&'static str, Value) {
    let text = "Hello there, how are you today?";
    let (path, mut body) = match api {
        Api::AnthropicMessages => (
            "/v1/messages",
            json!({"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": [{"role": "user", "content": text}]}),
        ),
        Api::Responses => ("/v1/responses", json!({"model": "gpt-4o", "input": text})),
        _ => (
            "/v1/chat/completions",
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}),
        ),
    };
    if stream {
        body["stream"] = json!(true);
        if api == Api::ChatCompletions {
            // Asked for by the caller, so the middleware changes nothing in the stream.
            body["stream_options"] = json!({"include_usage": true});
        }
    }
    (path, body)
}

async fn post(
    client: &ClientWithMiddleware,
    url: String,
    body: &Value,
    headers: &[(&'static str, &'static str)],
) -> reqwest::Response {
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .body(serde_json::to_vec(body).unwrap());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

/// The input tokens a non-streaming body reports, as the record should count them.
fn input_tokens_in(api: Api, body: &Value) -> u64 {
    let usage = &body["usage"];
    match api {
        Api::ChatCompletions => usage["prompt_tokens"].as_u64().unwrap(),
        _ => usage["input_tokens"].as_u64().unwrap(),
    }
}

const APIS: [Api; 3] = [Api::ChatCompletions, Api::AnthropicMessages, Api::Responses];

#[tokio::test]
async fn every_api_streaming_or_not_reaches_the_caller_byte_for_byte_with_one_record() {
    let _capture = capture_spans();
    let tee = Tee::start().await;
    let (client, records) = recording_client();
    for api in APIS {
        for stream in [false, true] {
            let case = format!("{api:?} stream={stream}");
            let (path, body) = request_of(api, stream);
            let response = post(&client, tee.url(path), &body, &[]).await;
            assert_eq!(response.status(), StatusCode::OK, "{case}");
            assert_eq!(response.url().as_str(), tee.url(path), "{case}: the URL is kept");
            let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
            let got = response.bytes().await.unwrap();
            let sent = tee.last_sent();
            assert!(!sent.is_empty(), "{case}");
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&sent),
                "{case}: the body the mock sent"
            );
            if stream {
                assert!(content_type.starts_with("text/event-stream"), "{case}: {content_type}");
            }

            let r = one_record(&records);
            assert_eq!(r.request.api, api, "{case}");
            assert_eq!(r.request.stream, stream, "{case}");
            assert_eq!(r.error, None, "{case}");
            assert_eq!(r.status, Some(200), "{case}");
            let provider = if api == Api::AnthropicMessages {
                "anthropic"
            } else {
                "openai"
            };
            assert_eq!(&*r.provider, provider, "{case}");
            let usage = r.usage.unwrap_or_else(|| panic!("{case}: usage"));
            assert_eq!(usage.output_tokens, 44, "{case}");
            assert!(usage.input_tokens > 0, "{case}");
            if !stream {
                let answer: Value = serde_json::from_slice(&got).unwrap();
                assert_eq!(usage.input_tokens, input_tokens_in(api, &answer), "{case}");
                assert_eq!(r.response.id.as_deref(), answer["id"].as_str(), "{case}");
            } else {
                assert!(r.timings.chunks > 0, "{case}");
            }
            // Forwarded with trace context, and the body as the caller wrote it.
            let sent_on = tee.received().pop().unwrap();
            assert!(sent_on.headers.contains_key("traceparent"), "{case}");
            assert_eq!(serde_json::from_slice::<Value>(&sent_on.body).unwrap(), body, "{case}");
        }
    }
}

#[tokio::test]
async fn a_chat_stream_without_usage_is_sent_asking_for_it_and_the_usage_chunk_is_hidden() {
    let _capture = capture_spans();
    let tee = Tee::start().await;
    let (client, records) = recording_client();
    let mut body = request_of(Api::ChatCompletions, true).1;
    body.as_object_mut().unwrap().remove("stream_options");
    let got = post(&client, tee.url("/v1/chat/completions"), &body, &[])
        .await
        .bytes()
        .await
        .unwrap();
    let sent_on: Value = serde_json::from_slice(&tee.received().pop().unwrap().body).unwrap();
    assert_eq!(sent_on["stream_options"]["include_usage"], true);
    // What the caller got is what the mock sent, less the one usage-only event.
    let sent = String::from_utf8(tee.last_sent()).unwrap();
    let usage_only: Vec<&str> = sent
        .split_inclusive("\n\n")
        .filter(|e| e.contains("\"choices\":[]"))
        .collect();
    assert_eq!(usage_only.len(), 1, "{sent}");
    assert_eq!(String::from_utf8_lossy(&got), sent.replacen(usage_only[0], "", 1));
    assert_eq!(one_record(&records).usage.unwrap().output_tokens, 44);
}

#[tokio::test]
async fn upstream_errors_reach_the_caller_unchanged_and_are_recorded() {
    let _capture = capture_spans();
    let tee = Tee::start().await;
    let (client, records) = recording_client();
    for api in APIS {
        for stream in [false, true] {
            let case = format!("{api:?} stream={stream}");
            let (path, body) = request_of(api, stream);
            let response = post(&client, tee.url(path), &body, &[("x-mock-error", "500")]).await;
            assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR, "{case}");
            let got = response.bytes().await.unwrap();
            assert_eq!(got, tee.last_sent(), "{case}: the provider's error body");
            let r = one_record(&records);
            assert_eq!(r.error, Some(ErrorType::Status(500)), "{case}");
            assert_eq!(r.request.api, api, "{case}");
        }
    }
}

#[tokio::test]
async fn a_stream_dropped_early_is_recorded_once_as_cancelled() {
    let _capture = capture_spans();
    let tee = Tee::start().await;
    let (client, records) = recording_client();
    for api in APIS {
        let (path, body) = request_of(api, true);
        let response = post(&client, tee.url(path), &body, &[("x-mock-gate", "1")]).await;
        let mut stream = response.bytes_stream();
        // Only the first chunk is out (the rest wait for the gate): a buffered stream would
        // never yield it.
        let first = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
            .await
            .expect("the first chunk arrives before the stream ends")
            .unwrap()
            .unwrap();
        assert!(!first.is_empty());
        assert!(records.lock().unwrap().is_empty(), "{api:?}: the stream is still open");
        drop(stream);
        let r = one_record(&records);
        assert_eq!(r.error, Some(ErrorType::Cancelled), "{api:?}");
        assert_eq!(r.request.api, api);
    }
}

#[tokio::test]
async fn other_requests_pass_through_untouched_with_no_record() {
    let _capture = capture_spans();
    let tee = Tee::start().await;
    let (client, records) = recording_client();

    let models = client.get(tee.url("/v1/models")).send().await.unwrap();
    assert_eq!(models.status(), StatusCode::OK);
    let got = models.bytes().await.unwrap();
    assert_eq!(got, tee.last_sent());
    assert_eq!(serde_json::from_slice::<Value>(&got).unwrap()["object"], "list");

    // Not an API llm-meter reads, and not a JSON object: sent as they were.
    let cases: [(&str, &[u8]); 3] = [
        (
            "/v1/embeddings",
            br#"{"model": "text-embedding-3-small", "input": "Hi"}"#,
        ),
        ("/v1/chat/completions", b"not json"),
        ("/v1/responses", br#"["an array"]"#),
    ];
    for (path, body) in cases {
        client
            .post(tee.url(path))
            .header("xProxy-User-ID", "u-1")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        let sent_on = tee.received().pop().unwrap();
        assert_eq!(sent_on.path, path);
        assert_eq!(&sent_on.body[..], body, "{path}: the body as it was");
        assert!(!sent_on.headers.contains_key("traceparent"), "{path}");
        assert_eq!(sent_on.headers["xproxy-user-id"], "u-1", "{path}: headers as they were");
    }
    assert!(records.lock().unwrap().is_empty(), "{:?}", records.lock().unwrap());
}

#[tokio::test]
async fn annotations_come_from_the_extension_else_the_headers_which_are_not_sent_on() {
    let capture = capture_spans();
    let tee = Tee::start().await;
    let (meter, records) = recording(Meter::builder());
    let defaults = Annotations::builder().use_case_name("default.case").build().unwrap();
    let client = client(MeterMiddleware::new(meter).with_default_annotations(defaults));
    let (path, body) = request_of(Api::ChatCompletions, false);
    let url = tee.url(path);
    let send = |headers: HeaderMap, extension: Option<Annotations>| {
        let mut req = client
            .post(url.clone())
            .headers(headers)
            .body(serde_json::to_vec(&body).unwrap());
        if let Some(a) = extension {
            req = req.with_extension(a);
        }
        req.send()
    };
    let from_headers = Annotations::builder()
        .use_case_name("headers.case")
        .user_id("u-7")
        .limit_ids(["daily"])
        .build()
        .unwrap();
    let from_extension = Annotations::builder().use_case_name("extension.case").build().unwrap();

    send(from_headers.to_headers(), None).await.unwrap();
    let r = one_record(&records);
    assert_eq!(r.annotations, from_headers);
    let sent_on = tee.received().pop().unwrap();
    assert!(
        !sent_on.headers.keys().any(|k| k.as_str().starts_with("xproxy-")),
        "annotation headers are not sent on: {:?}",
        sent_on.headers
    );
    let span = capture.chat_span();
    assert_eq!(attrs(&span)["use_case.name"], s("headers.case"));
    assert_eq!(attrs(&span)["user.id"], s("u-7"));

    send(from_headers.to_headers(), Some(from_extension.clone()))
        .await
        .unwrap();
    assert_eq!(
        one_record(&records).annotations,
        from_extension,
        "the extension comes first"
    );

    send(HeaderMap::new(), None).await.unwrap();
    assert_eq!(one_record(&records).annotations.use_case_name(), Some("default.case"));

    let mut invalid = HeaderMap::new();
    invalid.insert("xProxy-UseCase-Name", "no spaces allowed".parse().unwrap());
    let response = send(invalid, None).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "invalid headers never refuse the call"
    );
    assert_eq!(one_record(&records).annotations.use_case_name(), Some("default.case"));
}

#[tokio::test]
async fn annotation_headers_are_sent_on_when_asked_for() {
    let _capture = capture_spans();
    let tee = Tee::start().await;
    let (meter, records) = recording(Meter::builder());
    let client = client(MeterMiddleware::new(meter).send_annotation_headers(true));
    let annotations = Annotations::builder()
        .use_case_name("proxied")
        .request_tags(["a", "b"])
        .build()
        .unwrap();
    let (path, body) = request_of(Api::Responses, false);
    client
        .post(tee.url(path))
        .body(serde_json::to_vec(&body).unwrap())
        .with_extension(annotations.clone())
        .send()
        .await
        .unwrap();
    let sent_on = tee.received().pop().unwrap();
    assert_eq!(sent_on.headers["xproxy-usecase-name"], "proxied");
    assert_eq!(sent_on.headers["xproxy-request-tags"], "a,b");
    assert_eq!(one_record(&records).annotations, annotations);
}

#[tokio::test]
async fn a_failed_exchange_is_recorded_and_its_error_returned_unchanged() {
    let _capture = capture_spans();
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (client, records) = recording_client();
    let (path, body) = request_of(Api::ChatCompletions, false);
    let err = client
        .post(format!("http://{closed}{path}"))
        .body(serde_json::to_vec(&body).unwrap())
        .send()
        .await
        .unwrap_err();
    match &err {
        reqwest_middleware::Error::Reqwest(e) => assert!(e.is_connect(), "{e:?}"),
        other => panic!("not reqwest's own error: {other:?}"),
    }
    assert_eq!(one_record(&records).error, Some(ErrorType::Connect));
}

#[tokio::test]
async fn a_block_limit_refuses_the_call_before_it_is_sent() {
    use llm_meter::{AdmissionMode, LimitConfig, LimitKind, MemoryLedger};
    let _capture = capture_spans();
    let tee = Tee::start().await;
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
    let (meter, records) = recording(Meter::builder().ledger(ledger).enforce_limits(true));
    let client = client(MeterMiddleware::new(meter));
    let capped = Annotations::builder().limit_ids(["cap"]).build().unwrap();
    let (path, body) = request_of(Api::ChatCompletions, false);
    let send = || {
        client
            .post(tee.url(path))
            .body(serde_json::to_vec(&body).unwrap())
            .with_extension(capped.clone())
            .send()
    };
    // The first call spends past the $0.0001 max; the second is refused before the provider.
    send().await.unwrap();
    one_record(&records);
    let err = send().await.unwrap_err();
    let reqwest_middleware::Error::Middleware(e) = &err else {
        panic!("not a middleware error: {err:?}")
    };
    match e.downcast_ref::<CallError>() {
        Some(CallError::LimitReached { blocked_limit_ids, .. }) => assert_eq!(blocked_limit_ids, &["cap".to_owned()]),
        other => panic!("not the limit: {other:?}"),
    }
    assert_eq!(tee.received().len(), 1, "the refused call never reached the provider");
    assert_eq!(one_record(&records).error, Some(ErrorType::LimitReached));
}
