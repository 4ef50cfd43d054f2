//! Helpers shared by the integration tests: span capture through a real tracing-opentelemetry
//! pipeline into the SDK's in-memory exporter, and a fixture server that replays recorded
//! provider responses.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers may fail loudly
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use axum::routing::post;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use llm_meter::opentelemetry::trace::TracerProvider as _;
use llm_meter::opentelemetry::Value;
use llm_meter::opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

pub mod metered;
pub mod redis;

pub const FIXTURE_BODY: &str = include_str!("../../fixtures/openai-chat-completion.json");
pub const FIXTURE_HEADERS: &str = include_str!("../../fixtures/openai-chat-completion.headers");
pub const FIXTURE_STREAM: &str = include_str!("../../fixtures/openai-chat-completion-stream.sse");

/// Spans of everything run while this is alive on the current thread.
pub struct SpanCapture {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
    _guard: tracing::subscriber::DefaultGuard,
}

pub fn capture_spans() -> SpanCapture {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("test"))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false);
    let guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
    SpanCapture {
        exporter,
        provider,
        _guard: guard,
    }
}

impl SpanCapture {
    /// A tracer on the capturing provider, for meters that build spans directly
    /// ([`llm_meter::MeterBuilder::tracer`]; a meter from `Telemetry::meter_builder` does).
    pub fn tracer(&self) -> llm_meter::opentelemetry_sdk::trace::SdkTracer {
        use llm_meter::opentelemetry::trace::TracerProvider as _;
        self.provider.tracer("test")
    }

    pub fn spans(&self) -> Vec<SpanData> {
        let _ = self.provider.force_flush();
        self.exporter.get_finished_spans().expect("in-memory exporter")
    }

    /// The one `chat …` span.
    pub fn chat_span(&self) -> SpanData {
        let mut chats: Vec<SpanData> = self
            .spans()
            .into_iter()
            .filter(|s| s.name.starts_with("chat "))
            .collect();
        assert_eq!(
            chats.len(),
            1,
            "expected exactly one chat span, got {:?}",
            chats.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        chats.pop().unwrap()
    }
}

/// Attributes as a sorted map.
pub fn attrs(span: &SpanData) -> BTreeMap<String, Value> {
    span.attributes
        .iter()
        .map(|kv| (kv.key.as_str().to_owned(), kv.value.clone()))
        .collect()
}

pub fn s(v: &str) -> Value {
    Value::String(v.to_owned().into())
}

pub fn i(v: i64) -> Value {
    Value::I64(v)
}

pub fn arr(items: &[&str]) -> Value {
    Value::Array(llm_meter::opentelemetry::Array::String(
        items.iter().map(|s| (*s).to_owned().into()).collect(),
    ))
}

pub fn fixture_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in FIXTURE_HEADERS.lines().filter(|l| !l.trim().is_empty()) {
        let (k, v) = line.split_once(':').expect("header line");
        h.insert(
            HeaderName::from_bytes(k.trim().as_bytes()).unwrap(),
            HeaderValue::from_str(v.trim()).unwrap(),
        );
    }
    h
}

/// What the fixture server answers with.
#[derive(Clone)]
pub struct Canned {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// Body pieces, sent as separate writes with `gap` between them.
    pub pieces: Vec<Bytes>,
    pub gap: Duration,
}

impl Canned {
    pub fn json(status: StatusCode, headers: HeaderMap, body: &str) -> Self {
        let mut headers = headers;
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        Canned {
            status,
            headers,
            pieces: vec![Bytes::copy_from_slice(body.as_bytes())],
            gap: Duration::ZERO,
        }
    }

    pub fn sse(headers: HeaderMap, pieces: Vec<Bytes>, gap: Duration) -> Self {
        let mut headers = headers;
        headers.insert("content-type", HeaderValue::from_static("text/event-stream"));
        Canned {
            status: StatusCode::OK,
            headers,
            pieces,
            gap,
        }
    }
}

/// A server on 127.0.0.1 that answers every `POST /v1/chat/completions` with a canned
/// response and remembers the request headers and bodies it got.
pub struct FixtureServer {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
}

impl FixtureServer {
    pub async fn start(canned: Canned) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let seen = received.clone();
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            post(move |headers: HeaderMap, body: Bytes| {
                let canned = canned.clone();
                seen.lock().unwrap().push((headers, body));
                async move {
                    let gap = canned.gap;
                    let stream =
                        futures_util::stream::unfold(canned.pieces.into_iter().enumerate(), move |mut it| async move {
                            let (i, piece) = it.next()?;
                            if i > 0 && !gap.is_zero() {
                                tokio::time::sleep(gap).await;
                            }
                            Some((Ok::<_, std::io::Error>(piece), it))
                        });
                    let mut resp = Response::new(Body::from_stream(stream));
                    *resp.status_mut() = canned.status;
                    *resp.headers_mut() = canned.headers;
                    resp
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FixtureServer { addr, received }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn last_request(&self) -> (HeaderMap, serde_json::Value) {
        let r = self.received.lock().unwrap();
        let (h, b) = r.last().expect("a request").clone();
        (h, serde_json::from_slice(&b).unwrap())
    }
}
