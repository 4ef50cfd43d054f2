//! The instrumented chat-completion client over `reqwest`.
//!
//! [`Client::chat`] and [`Client::chat_stream`] send any `serde::Serialize` body to
//! `{base_url}/chat/completions`, hand back the provider's answer as it came (status, headers,
//! body bytes) and observe the call on the way: a `chat {model}` span, a [`CallRecord`] for every
//! hook. Telemetry never changes the caller's outcome: a provider error is returned as the
//! provider sent it, and nothing in the observation path panics into the caller.

use std::collections::HashMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::annotations::Annotations;
use crate::provider::{ChatCompletion, ProviderMeta, ResponseFacts, Usage};
use crate::record::{CallHook, CallRecord, ErrorType, RequestFacts, StreamOptions, Timings};
use crate::semconv;
use crate::stream::{EventCutter, EventOutcome, StreamObserver};
use crate::telemetry::span::{record_on_span, start_chat_span};

/// OpenAI's API base.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// What the client does about usage on streams whose request did not ask for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StreamUsage {
    /// Add `stream_options.include_usage: true` and hide the extra usage-only chunk from the
    /// caller, so usage is known and the caller sees the stream it asked for (default).
    #[default]
    RequestAndHide,
    /// Add `include_usage` and let the caller see the usage chunk.
    RequestAndShow,
    /// Send the request as it is; usage is unknown unless the caller asked for it.
    Leave,
}

/// Errors of the client itself. Provider errors (4xx, 5xx) are not errors here: they come back
/// as a response with the provider's status and body.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request body could not be serialized, or is not a JSON object.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The HTTP exchange failed (connect, timeout, reset).
    #[error("chat completion call failed ({kind}): {source}")]
    Http {
        /// Low-cardinality class, as recorded on the span.
        kind: ErrorType,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// Building the client failed.
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl Error {
    /// The `error.type` this failure was recorded with.
    pub fn error_type(&self) -> ErrorType {
        match self {
            Error::InvalidRequest(_) | Error::Config(_) => ErrorType::InvalidRequest,
            Error::Http { kind, .. } => *kind,
        }
    }

    fn http(source: reqwest::Error) -> Self {
        Error::Http {
            kind: ErrorType::from_reqwest(&source),
            source,
        }
    }
}

/// Builder for [`Client`].
pub struct ClientBuilder {
    base_url: String,
    api_key: Option<String>,
    http: Option<reqwest::Client>,
    timeout: Option<Duration>,
    connect_timeout: Duration,
    read_timeout: Option<Duration>,
    provider: String,
    propagate_trace_context: bool,
    stream_usage: StreamUsage,
    spans: bool,
    send_annotation_headers: bool,
    defaults: HashMap<String, Map<String, Value>>,
    headers: HeaderMap,
    hooks: Vec<Arc<dyn CallHook>>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_key: None,
            http: None,
            timeout: Some(Duration::from_secs(600)),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Some(Duration::from_secs(120)),
            provider: semconv::PROVIDER_OPENAI.to_owned(),
            propagate_trace_context: true,
            stream_usage: StreamUsage::default(),
            spans: true,
            send_annotation_headers: false,
            defaults: HashMap::new(),
            headers: HeaderMap::new(),
            hooks: Vec::new(),
        }
    }
}

impl ClientBuilder {
    /// API base, e.g. `https://api.openai.com/v1` (the default) or a mock's `http://127.0.0.1:PORT/v1`.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }
    /// API key, sent as `Authorization: Bearer …`; never recorded.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }
    /// Uses an existing `reqwest::Client` (its own timeouts then apply; see [`Self::timeout`]).
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }
    /// Whole-call timeout for non-streaming calls (default 600 s); `None` for none.
    pub fn timeout(mut self, t: Option<Duration>) -> Self {
        self.timeout = t;
        self
    }
    /// Connect timeout (default 10 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }
    /// Longest wait for the next bytes of a response (default 120 s), which bounds a stalled stream.
    pub fn read_timeout(mut self, t: Option<Duration>) -> Self {
        self.read_timeout = t;
        self
    }
    /// `gen_ai.provider.name` (default `openai`).
    pub fn provider_name(mut self, name: impl Into<String>) -> Self {
        self.provider = name.into();
        self
    }
    /// Send W3C `traceparent`/`tracestate` to the provider (default on).
    pub fn propagate_trace_context(mut self, on: bool) -> Self {
        self.propagate_trace_context = on;
        self
    }
    /// Usage on streams (default [`StreamUsage::RequestAndHide`]).
    pub fn stream_usage(mut self, policy: StreamUsage) -> Self {
        self.stream_usage = policy;
        self
    }
    /// Open `tracing` spans (default on). Hooks still see every record when off.
    pub fn spans(mut self, on: bool) -> Self {
        self.spans = on;
        self
    }
    /// Also send the annotations as `xProxy-*` headers (for a Pay-i-compatible proxy upstream).
    pub fn send_annotation_headers(mut self, on: bool) -> Self {
        self.send_annotation_headers = on;
        self
    }
    /// Request defaults for `model`: each field is added to a request for that model only when
    /// the request leaves it unset (absent or `null`). `fields` must be a JSON object.
    pub fn model_defaults(mut self, model: impl Into<String>, fields: Value) -> Self {
        let map = match fields {
            Value::Object(m) => m,
            other => {
                let mut m = Map::new();
                m.insert("__invalid__".into(), other);
                m
            }
        };
        self.defaults.insert(model.into(), map);
        self
    }
    /// A header sent with every request (e.g. `OpenAI-Organization`).
    pub fn default_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }
    /// Adds a sink that sees every finished [`CallRecord`].
    pub fn hook(mut self, hook: impl CallHook) -> Self {
        self.hooks.push(Arc::new(hook));
        self
    }

    /// Builds the client; fails on a bad base URL, key or defaults.
    pub fn build(self) -> Result<Client, Error> {
        let base = reqwest::Url::parse(self.base_url.trim_end_matches('/'))
            .map_err(|e| Error::Config(format!("base_url {:?}: {e}", self.base_url)))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(Error::Config(format!(
                "base_url {:?}: scheme must be http or https",
                self.base_url
            )));
        }
        let chat_url = reqwest::Url::parse(&format!("{}/chat/completions", base.as_str().trim_end_matches('/')))
            .map_err(|e| Error::Config(format!("base_url: {e}")))?;
        if let Some((model, _)) = self.defaults.iter().find(|(_, m)| m.contains_key("__invalid__")) {
            return Err(Error::Config(format!(
                "model_defaults for {model:?} must be a JSON object"
            )));
        }
        let mut headers = self.headers;
        if let Some(key) = &self.api_key {
            let mut v = HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| Error::Config("api_key holds characters not allowed in a header".into()))?;
            v.set_sensitive(true);
            headers.insert(http::header::AUTHORIZATION, v);
        }
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let http = match self.http {
            Some(c) => c,
            None => {
                let mut b = reqwest::Client::builder().connect_timeout(self.connect_timeout);
                if let Some(t) = self.read_timeout {
                    b = b.read_timeout(t);
                }
                b.build().map_err(|e| Error::Config(e.to_string()))?
            }
        };
        Ok(Client {
            inner: Arc::new(Inner {
                server_address: chat_url.host_str().unwrap_or_default().into(),
                server_port: chat_url.port_or_known_default(),
                chat_url,
                http,
                headers,
                timeout: self.timeout,
                provider: self.provider.into(),
                propagate: self.propagate_trace_context,
                stream_usage: self.stream_usage,
                spans: self.spans,
                send_annotation_headers: self.send_annotation_headers,
                defaults: self.defaults,
                hooks: self.hooks,
            }),
        })
    }
}

/// Instrumented chat-completion client. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    chat_url: reqwest::Url,
    server_address: Arc<str>,
    server_port: Option<u16>,
    http: reqwest::Client,
    headers: HeaderMap,
    timeout: Option<Duration>,
    provider: Arc<str>,
    propagate: bool,
    stream_usage: StreamUsage,
    spans: bool,
    send_annotation_headers: bool,
    defaults: HashMap<String, Map<String, Value>>,
    hooks: Vec<Arc<dyn CallHook>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("chat_url", &self.inner.chat_url.as_str())
            .finish_non_exhaustive()
    }
}

/// A non-streaming answer: the provider's response as it came, plus what was observed.
#[derive(Debug)]
pub struct ChatResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    record: CallRecord,
}

impl ChatResponse {
    /// HTTP status from the provider.
    pub fn status(&self) -> StatusCode {
        self.status
    }
    /// True for a 2xx status.
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }
    /// The provider's headers, unchanged.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }
    /// The provider's body, byte for byte.
    pub fn body(&self) -> &Bytes {
        &self.body
    }
    /// Parses the body into the caller's own type (e.g. async-openai's `CreateChatCompletionResponse`).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
    /// Typed view of the completion (no content), when the body was one.
    pub fn completion(&self) -> Option<ChatCompletion> {
        (self.record.response.id.is_some() || self.record.usage.is_some()).then(|| ChatCompletion {
            facts: self.record.response.clone(),
            usage: self.record.usage,
        })
    }
    /// Provider debug and rate-limit headers.
    pub fn meta(&self) -> &ProviderMeta {
        &self.record.meta
    }
    /// Usage, when reported.
    pub fn usage(&self) -> Option<&Usage> {
        self.record.usage.as_ref()
    }
    /// Everything observed about the call.
    pub fn record(&self) -> &CallRecord {
        &self.record
    }
    /// Splits into status, headers and body.
    pub fn into_parts(self) -> (StatusCode, HeaderMap, Bytes) {
        (self.status, self.headers, self.body)
    }
}

/// A prepared request: the bytes to send and what they ask for.
struct Prepared {
    body: Vec<u8>,
    facts: RequestFacts,
    hide_usage_chunk: bool,
}

/// The part of a call that outlives the request: everything needed to finish the record.
struct Call {
    inner: Arc<Inner>,
    span: Span,
    annotations: Annotations,
    request: RequestFacts,
    started_at: SystemTime,
    started: Instant,
}

impl Call {
    fn finish(
        self,
        status: Option<StatusCode>,
        meta: ProviderMeta,
        response: ResponseFacts,
        usage: Option<Usage>,
        stream: Option<&StreamObserver>,
        error: Option<ErrorType>,
    ) -> CallRecord {
        let duration = self.started.elapsed();
        let (ttfc, tpoc, chunks) = match stream {
            Some(o) => {
                let ttfc = o.first_chunk.map(|t| t.duration_since(o.started));
                let tpoc = match (o.first_chunk, o.last_chunk) {
                    (Some(first), Some(last)) if o.chunks > 1 => Some(last.duration_since(first) / (o.chunks - 1)),
                    _ => None,
                };
                (ttfc, tpoc, o.chunks)
            }
            None => (None, None, 0),
        };
        let record = CallRecord {
            operation: semconv::OPERATION_CHAT,
            provider: self.inner.provider.clone(),
            server_address: self.inner.server_address.clone(),
            server_port: self.inner.server_port,
            annotations: self.annotations,
            request: self.request,
            status: status.map(|s| s.as_u16()),
            meta,
            response,
            usage,
            timings: Timings {
                started_at: self.started_at,
                duration,
                time_to_first_chunk: ttfc,
                time_per_output_chunk: tpoc,
                chunks,
            },
            error,
        };
        record_on_span(&self.span, &record);
        for hook in &self.inner.hooks {
            if std::panic::catch_unwind(AssertUnwindSafe(|| hook.on_call(&record))).is_err() {
                tracing::warn!(target: "llm_meter", "a call hook panicked; the call result is unaffected");
            }
        }
        drop(self.span);
        record
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(key.as_bytes()), HeaderValue::from_str(&value)) {
            self.0.insert(k, v);
        }
    }
}

fn status_error(status: StatusCode) -> Option<ErrorType> {
    (!status.is_success()).then(|| ErrorType::Status(status.as_u16()))
}

impl Client {
    /// Starts a builder.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A client for `base_url` with `api_key`, all else default.
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> Result<Self, Error> {
        Self::builder().base_url(base_url).api_key(api_key).build()
    }

    /// Serializes the body and applies model defaults and the stream usage policy.
    fn prepare(&self, body: &impl Serialize, stream: bool) -> Result<Prepared, Error> {
        let mut bytes = serde_json::to_vec(body).map_err(|e| Error::InvalidRequest(e.to_string()))?;
        if bytes.first() != Some(&b'{') {
            return Err(Error::InvalidRequest("the request body must be a JSON object".into()));
        }
        let (mut facts, options) = RequestFacts::parse(&bytes).map_err(|e| Error::InvalidRequest(e.to_string()))?;
        if stream && !facts.stream {
            return Err(Error::InvalidRequest(
                "chat_stream needs a body with \"stream\": true".into(),
            ));
        }
        if !stream && facts.stream {
            return Err(Error::InvalidRequest(
                "chat needs a body without \"stream\": true; use chat_stream".into(),
            ));
        }
        let wants_usage = stream && self.inner.stream_usage != StreamUsage::Leave && !facts.include_usage;
        let defaults = self.inner.defaults.get(&facts.model);
        let mut changed = false;
        if wants_usage && options == StreamOptions::Absent && defaults.is_none() {
            // Fast path: append the one missing key to the serialized object.
            bytes.pop();
            bytes.extend_from_slice(br#","stream_options":{"include_usage":true}}"#);
            changed = true;
        } else if wants_usage || defaults.is_some() {
            let mut map: Map<String, Value> =
                serde_json::from_slice(&bytes).map_err(|e| Error::InvalidRequest(e.to_string()))?;
            for (k, v) in defaults.into_iter().flatten() {
                if map.get(k).is_none_or(Value::is_null) {
                    map.insert(k.clone(), v.clone());
                    changed = true;
                }
            }
            if wants_usage {
                let options = map.entry("stream_options").or_insert_with(|| Value::Object(Map::new()));
                if !options.is_object() {
                    *options = Value::Object(Map::new());
                }
                if let Some(o) = options.as_object_mut() {
                    o.insert("include_usage".into(), Value::Bool(true));
                }
                changed = true;
            }
            if changed {
                bytes = serde_json::to_vec(&map).map_err(|e| Error::InvalidRequest(e.to_string()))?;
            }
        }
        if changed {
            facts = RequestFacts::parse(&bytes)
                .map_err(|e| Error::InvalidRequest(e.to_string()))?
                .0;
        }
        Ok(Prepared {
            body: bytes,
            facts,
            hide_usage_chunk: wants_usage && self.inner.stream_usage == StreamUsage::RequestAndHide,
        })
    }

    fn start(&self, annotations: &Annotations, request: RequestFacts) -> Call {
        let span = if self.inner.spans {
            start_chat_span(
                &request.model,
                &self.inner.provider,
                &self.inner.server_address,
                annotations,
            )
        } else {
            Span::none()
        };
        Call {
            inner: self.inner.clone(),
            span,
            annotations: annotations.clone(),
            request,
            started_at: SystemTime::now(),
            started: Instant::now(),
        }
    }

    fn request(
        &self,
        call: &Call,
        body: Vec<u8>,
        annotations: &Annotations,
        whole_call_timeout: bool,
    ) -> reqwest::RequestBuilder {
        let mut headers = self.inner.headers.clone();
        if self.inner.propagate && !call.span.is_disabled() {
            TraceContextPropagator::new().inject_context(&call.span.context(), &mut HeaderInjector(&mut headers));
        }
        if self.inner.send_annotation_headers {
            annotations.write_headers(&mut headers);
        }
        let mut req = self
            .inner
            .http
            .post(self.inner.chat_url.clone())
            .headers(headers)
            .body(body);
        if let (true, Some(t)) = (whole_call_timeout, self.inner.timeout) {
            req = req.timeout(t);
        }
        req
    }

    /// Sends a non-streaming chat completion. Provider errors come back as a response with the
    /// provider's status and body; `Err` means no answer arrived (or the body was unusable).
    pub async fn chat(&self, body: &impl Serialize, annotations: &Annotations) -> Result<ChatResponse, Error> {
        let prepared = self.prepare(body, false)?;
        let call = self.start(annotations, prepared.facts);
        let req = self.request(&call, prepared.body, annotations, true);
        let span = call.span.clone();
        let result = async {
            let resp = req.send().await?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        }
        .instrument(span)
        .await;
        let (status, headers, body) = match result {
            Ok(parts) => parts,
            Err(e) => {
                let err = Error::http(e);
                call.finish(
                    None,
                    ProviderMeta::default(),
                    ResponseFacts::default(),
                    None,
                    None,
                    Some(err.error_type()),
                );
                return Err(err);
            }
        };
        let meta = ProviderMeta::from_headers(&headers);
        let mut error = status_error(status);
        let (facts, usage) = match ChatCompletion::parse(&body) {
            Ok(c) => (c.facts, c.usage),
            Err(_) => {
                error.get_or_insert(ErrorType::Decode);
                (ResponseFacts::default(), None)
            }
        };
        let record = call.finish(Some(status), meta, facts, usage, None, error);
        Ok(ChatResponse {
            status,
            headers,
            body,
            record,
        })
    }

    /// Sends a streaming chat completion (the body must have `"stream": true`). The returned
    /// stream yields the provider's bytes as they arrive; the call's span and record end when
    /// the stream ends, fails, or is dropped (then `error.type` is `cancelled`).
    pub async fn chat_stream(&self, body: &impl Serialize, annotations: &Annotations) -> Result<ChatStream, Error> {
        let prepared = self.prepare(body, true)?;
        let hide = prepared.hide_usage_chunk;
        let call = self.start(annotations, prepared.facts);
        let req = self.request(&call, prepared.body, annotations, false);
        let sent = Instant::now();
        let resp = match req.send().instrument(call.span.clone()).await {
            Ok(r) => r,
            Err(e) => {
                let err = Error::http(e);
                call.finish(
                    None,
                    ProviderMeta::default(),
                    ResponseFacts::default(),
                    None,
                    None,
                    Some(err.error_type()),
                );
                return Err(err);
            }
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        let meta = ProviderMeta::from_headers(&headers);
        Ok(ChatStream {
            status,
            headers,
            body: Box::pin(resp.bytes_stream()),
            observer: StreamObserver::new(sent),
            cutter: (hide && status.is_success()).then(EventCutter::default),
            events: Vec::new(),
            pending: Some((call, meta)),
            record: None,
            body_done: false,
        })
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// A streaming answer: the provider's SSE bytes as they arrive, observed on the way through.
/// Works with any SSE parser (e.g. `eventsource-stream`) on top.
pub struct ChatStream {
    status: StatusCode,
    headers: HeaderMap,
    body: ByteStream,
    observer: StreamObserver,
    cutter: Option<EventCutter>,
    events: Vec<(usize, bool)>,
    pending: Option<(Call, ProviderMeta)>,
    record: Option<CallRecord>,
    body_done: bool,
}

impl fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatStream")
            .field("status", &self.status)
            .field("finished", &self.record.is_some())
            .finish_non_exhaustive()
    }
}

impl ChatStream {
    /// HTTP status from the provider.
    pub fn status(&self) -> StatusCode {
        self.status
    }
    /// The provider's headers, unchanged.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }
    /// The record, once the stream has ended.
    pub fn record(&self) -> Option<&CallRecord> {
        self.record.as_ref()
    }

    fn finish(&mut self, error: Option<ErrorType>) {
        if let Some((call, meta)) = self.pending.take() {
            let o = &mut self.observer;
            // A stream dropped after `[DONE]` was not cancelled: it was complete.
            let error = error.filter(|e| !(*e == ErrorType::Cancelled && o.done));
            let error = status_error(self.status)
                .or(error)
                .or(o.error)
                .or_else(|| (!o.done).then_some(ErrorType::Truncated));
            let facts = std::mem::take(&mut o.facts);
            self.record = Some(call.finish(Some(self.status), meta, facts, o.usage, Some(o), error));
        }
    }
}

impl Stream for ChatStream {
    type Item = Result<Bytes, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.body_done {
                return Poll::Ready(None);
            }
            match this.body.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    let out = match &mut this.cutter {
                        None => {
                            this.observer.observe_all(&chunk);
                            Some(chunk)
                        }
                        Some(cutter) => {
                            let events = &mut this.events;
                            events.clear();
                            this.observer.observe(&chunk, |outcome, end| {
                                events.push((end, outcome != EventOutcome::UsageOnly))
                            });
                            cutter.cut(chunk, events)
                        }
                    };
                    if this.observer.done {
                        // The call is complete at `[DONE]`: end the span now, not when the
                        // caller gets round to polling the end of the body.
                        this.finish(None);
                    }
                    if let Some(out) = out {
                        return Poll::Ready(Some(Ok(out)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.body_done = true;
                    let err = Error::http(e);
                    this.finish(Some(err.error_type()));
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Ready(None) => {
                    this.body_done = true;
                    let rest = this.cutter.as_mut().and_then(EventCutter::finish);
                    this.finish(None);
                    return Poll::Ready(rest.map(Ok));
                }
            }
        }
    }
}

impl Drop for ChatStream {
    fn drop(&mut self) {
        self.finish(Some(ErrorType::Cancelled));
    }
}
