//! The `chat {model}` span of the library client: exact attribute sets for non-streaming,
//! streaming and failed calls, parenting, trace context propagation and secrets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use http::{HeaderMap, StatusCode};
use llm_meter::opentelemetry::trace::{SpanKind, Status};
use llm_meter::opentelemetry::Value;
use llm_meter::{Annotations, CallRecord, Client, ErrorType, Meter};
use llm_meter_mock::{MockConfig, MockServer, StreamCounts};
use serde_json::json;

const SECRET: &str = "sk-proj-SECRETSECRET1234567890";

fn annotations() -> Annotations {
    Annotations::builder()
        .use_case_name("support.triage")
        .use_case_id("uc-42")
        .user_id("user-7")
        .account_name("acme")
        .limit_ids(["daily", "monthly"])
        .request_tags(["beta", "eu"])
        .request_property("ticket", "T-1")
        .use_case_property("team", "care")
        .build()
        .unwrap()
}

fn body(stream: bool) -> serde_json::Value {
    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello!"}], "temperature": 0.7, "max_completion_tokens": 100, "stream": stream})
}

fn client(base: &str) -> Client {
    Client::builder().base_url(base).api_key(SECRET).build().unwrap()
}

/// The two routes a meter's spans take: through `tracing` (a meter without a tracer) and
/// straight onto an OpenTelemetry tracer (a meter from `Telemetry`). Both must give the same
/// span data.
#[derive(Clone, Copy, Debug)]
enum Route {
    Tracing,
    Tracer,
}
const ROUTES: [Route; 2] = [Route::Tracing, Route::Tracer];

fn meter_on(route: Route, capture: &SpanCapture) -> Meter {
    match route {
        Route::Tracing => Meter::default(),
        Route::Tracer => Meter::builder().tracer(capture.tracer()).build().unwrap(),
    }
}

fn client_on(base: &str, route: Route, capture: &SpanCapture) -> Client {
    Client::builder()
        .base_url(base)
        .api_key(SECRET)
        .meter(meter_on(route, capture))
        .build()
        .unwrap()
}

fn annotation_attrs() -> Vec<(&'static str, Value)> {
    vec![
        ("use_case.name", s("support.triage")),
        ("use_case.id", s("uc-42")),
        ("use_case.properties.team", s("care")),
        ("user.id", s("user-7")),
        ("account.name", s("acme")),
        ("limit.ids", arr(&["daily", "monthly"])),
        ("request.tags", arr(&["beta", "eu"])),
        ("request.properties.ticket", s("T-1")),
    ]
}

/// Every attribute of a call answered with the recorded fixture (body and headers).
fn fixture_call_attrs(port: u16, stream: bool) -> Vec<(&'static str, Value)> {
    let mut want = vec![
        ("gen_ai.operation.name", s("chat")),
        ("gen_ai.provider.name", s("openai")),
        ("gen_ai.request.model", s("gpt-4o")),
        ("gen_ai.request.max_tokens", i(100)),
        ("gen_ai.request.temperature", Value::F64(0.7)),
        ("gen_ai.request.stream", Value::Bool(stream)),
        ("server.address", s("127.0.0.1")),
        ("server.port", i(port.into())),
        ("gen_ai.response.id", s("chatcmpl-BDXMEvOKQnSYFATQSDa0BbxRSDUrN")),
        ("gen_ai.response.model", s("gpt-4o-2024-08-06")),
        ("gen_ai.response.finish_reasons", arr(&["stop"])),
        ("openai.response.service_tier", s("default")),
        ("openai.response.system_fingerprint", s("fp_6ec83003ad")),
        ("gen_ai.usage.input_tokens", i(27)),
        ("gen_ai.usage.output_tokens", i(44)),
        ("gen_ai.usage.cache_read.input_tokens", i(0)),
        ("gen_ai.usage.reasoning.output_tokens", i(0)),
        ("http.response.status_code", i(200)),
        ("openai.request.id", s("req_4d55e0b8ecd8e46447c0701e1f8b6051")),
        ("openai.organization", s("user-ue08pmd83ul7gjg1su5tgani")),
        ("openai.api.version", s("2020-10-01")),
        ("openai.processing_ms", Value::F64(861.0)),
        ("openai.ratelimit.requests.limit", i(500)),
        ("openai.ratelimit.requests.remaining", i(499)),
        ("openai.ratelimit.requests.reset_s", Value::F64(0.12)),
        ("openai.ratelimit.tokens.limit", i(30000)),
        ("openai.ratelimit.tokens.remaining", i(29981)),
        ("openai.ratelimit.tokens.reset_s", Value::F64(0.038)),
    ];
    want.extend(fixture_cost_attrs());
    want.extend(annotation_attrs());
    want
}

/// gpt-4o at $2.50 in / $10 out per million tokens, 27 in (none cached) and 44 out.
fn fixture_cost_attrs() -> Vec<(&'static str, Value)> {
    let (input, output): (f64, f64) = (
        27.0 * (2.50 / 1_000_000.0) + 0.0 * (1.25 / 1_000_000.0),
        44.0 * (10.0 / 1_000_000.0),
    );
    assert!((input + output - 0.0005075).abs() < 1e-15);
    vec![
        ("llm_meter.cost.input_usd", Value::F64(input)),
        ("llm_meter.cost.output_usd", Value::F64(output)),
        ("llm_meter.cost.total_usd", Value::F64(input + output)),
    ]
}

fn assert_attrs(span: &llm_meter::opentelemetry_sdk::trace::SpanData, expected: Vec<(&str, Value)>) {
    let got = attrs(span);
    let want: std::collections::BTreeMap<String, Value> =
        expected.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    assert_eq!(got, want, "\n got: {got:#?}\nwant: {want:#?}");
}

#[tokio::test]
async fn non_streaming_fixture_call_has_the_exact_attribute_set() {
    let server = FixtureServer::start(Canned::json(StatusCode::OK, fixture_headers(), FIXTURE_BODY)).await;
    for route in ROUTES {
        let capture = capture_spans();
        let resp = client_on(&server.base_url(), route, &capture)
            .chat(&body(false), &annotations())
            .await
            .unwrap();
        assert_eq!(
            resp.body(),
            FIXTURE_BODY.as_bytes(),
            "body reaches the caller byte for byte"
        );

        let span = capture.chat_span();
        assert_eq!(span.name, "chat gpt-4o", "{route:?}");
        assert_eq!(span.span_kind, SpanKind::Client, "{route:?}");
        assert_eq!(span.status, Status::Unset, "{route:?}");
        let want = fixture_call_attrs(server.addr.port(), false);
        assert_attrs(&span, want);
    }
}

#[tokio::test]
async fn streaming_call_span_covers_the_stream_with_usage_and_chunk_timings() {
    let pieces = FIXTURE_STREAM
        .split_inclusive("\n\n")
        .map(|p| bytes::Bytes::copy_from_slice(p.as_bytes()))
        .collect();
    let server = FixtureServer::start(Canned::sse(fixture_headers(), pieces, Duration::from_millis(2))).await;
    for route in ROUTES {
        streaming_call_on(&server, route).await;
    }
}

async fn streaming_call_on(server: &FixtureServer, route: Route) {
    let capture = capture_spans();
    let mut stream = client_on(&server.base_url(), route, &capture)
        .chat_stream(&body(true), &annotations())
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    let record = stream.record().expect("finished").clone();
    drop(stream);

    let span = capture.chat_span();
    assert_eq!(span.name, "chat gpt-4o");
    let got_attrs = attrs(&span);
    let ttfc = match got_attrs.get("llm_meter.stream.time_to_first_chunk_s") {
        Some(Value::F64(v)) => *v,
        other => panic!("time to first chunk missing: {other:?}"),
    };
    assert!(ttfc > 0.0 && ttfc < 5.0);
    assert_eq!(Some(Duration::from_secs_f64(ttfc)), record.timings.time_to_first_chunk);
    let mut want = fixture_call_attrs(server.addr.port(), true);
    want.extend([
        ("llm_meter.stream.time_to_first_chunk_s", Value::F64(ttfc)),
        ("llm_meter.stream.chunk_count", i(10)),
    ]);
    assert_attrs(&span, want);

    // The caller did not ask for usage: the client asked for it and hid the usage-only chunk.
    let (_, sent) = server.last_request();
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    let text = String::from_utf8(got).unwrap();
    assert!(
        !text.contains("\"usage\":{"),
        "usage chunk must be hidden from the caller"
    );
    assert_eq!(text, FIXTURE_STREAM.replace(&FIXTURE_STREAM[FIXTURE_STREAM.find("data: {\"id\":\"chatcmpl-BDXMEvOKQnSYFATQSDa0BbxRSDUrN\",\"object\":\"chat.completion.chunk\",\"created\":1742566190,\"model\":\"gpt-4o-2024-08-06\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_6ec83003ad\",\"choices\":[],").unwrap()..FIXTURE_STREAM.find("data: [DONE]").unwrap()], ""));
}

#[tokio::test]
async fn provider_error_keeps_its_body_and_marks_the_span() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let capture = capture_spans();
    let client = Client::builder()
        .base_url(mock.base_url())
        .api_key(SECRET)
        .default_header("x-mock-error".parse().unwrap(), "429".parse().unwrap())
        .build()
        .unwrap();
    let resp = client.chat(&body(false), &annotations()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let err: serde_json::Value = resp.json().unwrap();
    assert_eq!(err["error"]["code"], "rate_limit_exceeded");
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(resp.record().error, Some(ErrorType::Status(429)));

    let span = capture.chat_span();
    assert!(matches!(span.status, Status::Error { .. }), "{:?}", span.status);
    let a = attrs(&span);
    assert_eq!(a["error.type"], s("429"));
    assert_eq!(a["http.response.status_code"], i(429));
    assert!(!a.contains_key("gen_ai.response.id"));
    assert!(!a.contains_key("gen_ai.usage.input_tokens"));
}

async fn error_type_of(mock_error: &str, stream: bool, client_timeout: Option<Duration>) -> (ErrorType, Status) {
    let (kind, status) = error_type_on(Route::Tracing, mock_error, stream, client_timeout).await;
    let direct = error_type_on(Route::Tracer, mock_error, stream, client_timeout).await;
    assert_eq!((kind, &status), (direct.0, &direct.1), "both span routes agree");
    (kind, status)
}

async fn error_type_on(
    route: Route,
    mock_error: &str,
    stream: bool,
    client_timeout: Option<Duration>,
) -> (ErrorType, Status) {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let capture = capture_spans();
    let mut b = Client::builder()
        .base_url(mock.base_url())
        .meter(meter_on(route, &capture))
        .default_header("x-mock-error".parse().unwrap(), mock_error.parse().unwrap());
    if let Some(t) = client_timeout {
        b = b.timeout(Some(t)).read_timeout(Some(t));
    }
    let client = b.build().unwrap();
    let record_error = if stream {
        match client.chat_stream(&body(true), &Annotations::none()).await {
            Ok(mut s) => {
                while let Some(Ok(_)) = s.next().await {}
                s.record().map(|r| r.error)
            }
            Err(e) => Some(Some(e.error_type())),
        }
    } else {
        match client.chat(&body(false), &Annotations::none()).await {
            Ok(r) => Some(r.record().error),
            Err(e) => Some(Some(e.error_type())),
        }
    };
    let span = capture.chat_span();
    let a = attrs(&span);
    let kind = record_error.flatten().expect("an error");
    assert_eq!(a["error.type"], s(kind.as_str()));
    (kind, span.status)
}

#[tokio::test]
async fn failures_get_low_cardinality_error_types() {
    assert_eq!(error_type_of("500", false, None).await.0, ErrorType::Status(500));
    assert_eq!(error_type_of("400", true, None).await.0, ErrorType::Status(400));
    assert_eq!(error_type_of("garbage", false, None).await.0, ErrorType::Decode);
    assert_eq!(error_type_of("truncate", true, None).await.0, ErrorType::Truncated);
    assert_eq!(error_type_of("reset", true, None).await.0, ErrorType::Transport);
    let (kind, status) = error_type_of("stall", false, Some(Duration::from_millis(300))).await;
    assert_eq!(kind, ErrorType::Timeout);
    assert!(matches!(status, Status::Error { .. }));
}

#[tokio::test]
async fn connection_refused_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let capture = capture_spans();
    let err = client(&format!("http://127.0.0.1:{port}/v1"))
        .chat(&body(false), &annotations())
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), ErrorType::Connect);
    assert_eq!(attrs(&capture.chat_span())["error.type"], s("connect"));
}

#[tokio::test]
async fn dropping_a_stream_early_records_cancelled() {
    let mock = MockServer::start(MockConfig {
        chunk_delay: Duration::from_millis(20),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let capture = capture_spans();
    let mut stream = client(&mock.base_url())
        .chat_stream(&body(true), &annotations())
        .await
        .unwrap();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    assert_eq!(attrs(&capture.chat_span())["error.type"], s("cancelled"));
    // And the provider's stream stopped with it: dropped before its end, not read to the end.
    let mut streams = mock.streams();
    for _ in 0..250 {
        if streams != StreamCounts::default() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        streams = mock.streams();
    }
    assert_eq!(
        streams,
        StreamCounts {
            finished: 0,
            abandoned: 1
        }
    );
}

#[tokio::test]
async fn span_nests_under_the_callers_span_and_trace_context_reaches_the_provider() {
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let server = FixtureServer::start(Canned::json(StatusCode::OK, HeaderMap::new(), FIXTURE_BODY)).await;
    for route in ROUTES {
        let capture = capture_spans();
        let parent = tracing::info_span!("handle_ticket");
        let c = client_on(&server.base_url(), route, &capture);
        c.chat(&body(false), &annotations())
            .instrument(parent.clone())
            .await
            .unwrap();
        let parent_ctx = parent.context();
        drop(parent);
        let spans = capture.spans();
        let chat = spans.iter().find(|s| s.name == "chat gpt-4o").unwrap();
        let parent = spans.iter().find(|s| s.name == "handle_ticket").unwrap();
        assert_eq!(chat.parent_span_id, parent.span_context.span_id(), "{route:?}");
        assert_eq!(chat.span_context.trace_id(), parent.span_context.trace_id());
        let _ = parent_ctx;

        let (headers, _) = server.last_request();
        let traceparent = headers["traceparent"].to_str().unwrap().to_owned();
        assert_eq!(
            traceparent,
            format!("00-{}-{}-01", chat.span_context.trace_id(), chat.span_context.span_id()),
            "{route:?}"
        );
    }

    let off = Client::builder()
        .base_url(server.base_url())
        .meter(Meter::builder().propagate_trace_context(false).build().unwrap())
        .build()
        .unwrap();
    off.chat(&body(false), &annotations()).await.unwrap();
    assert!(!server.last_request().0.contains_key("traceparent"));
}

#[tokio::test]
async fn api_key_never_reaches_any_attribute_but_reaches_the_provider() {
    let server = FixtureServer::start(Canned::json(StatusCode::OK, fixture_headers(), FIXTURE_BODY)).await;
    let capture = capture_spans();
    let c = client(&server.base_url());
    c.chat(&body(false), &annotations()).await.unwrap();
    let mut s = c.chat_stream(&body(true), &annotations()).await.unwrap();
    while s.next().await.is_some() {}
    let dump = format!("{:?}", capture.spans());
    assert!(
        !dump.contains(SECRET) && !dump.contains("SECRETSECRET"),
        "secret leaked into spans"
    );
    assert!(
        !format!("{c:?}").contains("SECRET"),
        "Debug of the client leaks the key"
    );
    let (headers, _) = server.last_request();
    assert_eq!(headers["authorization"], format!("Bearer {SECRET}").as_str());
    assert!(
        !headers.contains_key("xproxy-user-id"),
        "annotations are not sent upstream by default"
    );
}

#[tokio::test]
async fn model_defaults_fill_only_unset_fields_and_the_span_records_what_was_sent() {
    let server = FixtureServer::start(Canned::json(StatusCode::OK, HeaderMap::new(), FIXTURE_BODY)).await;
    let capture = capture_spans();
    let c = Client::builder()
        .base_url(server.base_url())
        .meter(
            Meter::builder()
                .model_defaults(
                    "gpt-4o",
                    json!({"max_completion_tokens": 256, "temperature": 0.2, "top_p": 0.9}),
                )
                .model_defaults("gpt-4o-mini", json!({"temperature": 1.0}))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let req = json!({"model": "gpt-4o", "messages": [], "temperature": 0.7, "top_p": null});
    c.chat(&req, &Annotations::none()).await.unwrap();
    let (_, sent) = server.last_request();
    assert_eq!(
        (
            sent["max_completion_tokens"].clone(),
            sent["temperature"].clone(),
            sent["top_p"].clone()
        ),
        (json!(256), json!(0.7), json!(0.9))
    );
    let a = attrs(&capture.chat_span());
    assert_eq!(
        (
            a["gen_ai.request.max_tokens"].clone(),
            a["gen_ai.request.temperature"].clone(),
            a["gen_ai.request.top_p"].clone()
        ),
        (i(256), Value::F64(0.7), Value::F64(0.9))
    );

    let bad = Meter::builder().model_defaults("m", json!(3)).build().unwrap_err();
    assert!(bad.to_string().contains("must be a JSON object"), "{bad}");
}

/// What a hook saw of one record.
type Seen = (llm_meter::CallId, String, Option<ErrorType>, Option<(u64, u64)>);

fn seen(r: &CallRecord) -> Seen {
    (
        r.id,
        r.model().to_owned(),
        r.error,
        r.usage.map(|u| (u.input_tokens, u.output_tokens)),
    )
}

/// What a caller gets from one JSON call and one stream: status, text, usage, error, for both.
async fn call_outcome(c: &Client) -> (Vec<Seen>, Vec<(u16, String, Option<(u64, u64)>, Option<ErrorType>)>) {
    let resp = c.chat(&body(false), &annotations()).await.unwrap();
    let json: serde_json::Value = resp.json().unwrap();
    let text = json["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    let json_outcome = (
        resp.status().as_u16(),
        text,
        resp.usage().map(|u| (u.input_tokens, u.output_tokens)),
        resp.record().error,
    );
    let mut s = c.chat_stream(&body(true), &annotations()).await.unwrap();
    let mut sse = Vec::new();
    while let Some(chunk) = s.next().await {
        sse.extend_from_slice(&chunk.expect("every chunk arrives"));
    }
    let streamed: String = std::str::from_utf8(&sse)
        .unwrap()
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    let record = s.record().expect("the stream ended").clone();
    let stream_outcome = (
        s.status().as_u16(),
        streamed,
        record.usage.map(|u| (u.input_tokens, u.output_tokens)),
        record.error,
    );
    (
        vec![seen(resp.record()), seen(&record)],
        vec![json_outcome, stream_outcome],
    )
}

#[tokio::test]
async fn hooks_see_every_record_and_a_panicking_hook_changes_nothing() {
    #[derive(Default)]
    struct Counter(Mutex<Vec<Seen>>);
    impl llm_meter::CallHook for Counter {
        fn on_call(&self, r: &CallRecord) {
            self.0.lock().unwrap().push(seen(r));
        }
    }
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let (before, after) = (Arc::new(Counter::default()), Arc::new(Counter::default()));
    let c = Client::builder()
        .base_url(mock.base_url())
        .meter(
            Meter::builder()
                .hook(before.clone())
                .hook(|_: &CallRecord| panic!("user hook bug"))
                .hook(after.clone())
                .hook(())
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let (records, outcome) = call_outcome(&c).await;
    // Hooks on both sides of the panicking one saw both records, the ones the calls returned.
    assert_eq!(records[0].1, "gpt-4o-2024-08-06");
    assert_eq!(records.iter().map(|r| r.2).collect::<Vec<_>>(), [None, None]);
    assert_eq!(*before.0.lock().unwrap(), records, "the hook before the panicking one");
    assert_eq!(*after.0.lock().unwrap(), records, "the hook after the panicking one");
    // The caller gets what it gets with no hook at all.
    let plain = Client::builder().base_url(mock.base_url()).build().unwrap();
    let (_, without_hooks) = call_outcome(&plain).await;
    assert_eq!(outcome, without_hooks);
    assert_eq!(outcome[0].0, 200);
    assert!(outcome[0].1.starts_with("Hello"), "{outcome:?}");
    assert_eq!(outcome[0].1, outcome[1].1, "the stream's text is the answer's");
}

#[tokio::test]
async fn spans_off_still_feeds_hooks() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let capture = capture_spans();
    let seen = Arc::new(Mutex::new(0));
    let seen2 = seen.clone();
    let c = Client::builder()
        .base_url(mock.base_url())
        .meter(
            Meter::builder()
                .spans(false)
                .hook(move |_: &CallRecord| *seen2.lock().unwrap() += 1)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    c.chat(&body(false), &annotations()).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), 1);
    assert!(capture.spans().is_empty());
    assert!(!mock.received()[0].headers.contains_key("traceparent"));
}
