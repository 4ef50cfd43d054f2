//! The observation pipeline shared by every way in (the [`Client`](crate::Client), the
//! async-openai layer, the proxy): prepare the request body, open the span, and turn the
//! provider's answer — a whole body or a stream — into one [`CallRecord`] for every sink.
//!
//! Every call goes through the same steps, whichever door it came in by:
//!
//! 1. **Prepare** ([`Meter::prepare`]): read the request's facts (model, stream, params), merge
//!    model defaults, ask for stream usage when the caller did not.
//! 2. **Start** ([`Meter::start`]): open the span (a child of the caller's), start the clock.
//! 3. **Admit** ([`Call::admit`], async: a network ledger is asked within its timeout): when
//!    the meter enforces limits, reserve the worst case on every limit the call names, or
//!    refuse it before the provider is called ([`Call::refuse`]).
//! 4. **Send**: the door sends the prepared body, with trace context
//!    ([`Call::inject_trace_context`]).
//! 5. **Observe**: a whole body ([`Call::finish_body`]), a stream ([`Call::observe_stream`],
//!    which never buffers and finishes at `[DONE]`, on error or when dropped), or no answer
//!    ([`Call::fail`]).
//! 6. **Finish**: price the answer at the tier that served it, settle it on the ledger, build
//!    the one [`CallRecord`], and hand it to every sink: the span, the metrics, the hooks.

use std::collections::HashMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use http::{HeaderMap, StatusCode};
use opentelemetry_sdk::trace::SdkTracer;
use serde_json::{Map, Value};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::names;
use crate::parse::annotations::Annotations;
use crate::parse::anthropic::AnthropicMessage;
use crate::parse::endpoint::Api;
use crate::parse::provider::{ChatCompletion, ProviderMeta, ResponseFacts};
use crate::parse::responses::OpenAiResponse;
use crate::parse::stream::{EventCutter, EventOutcome, StreamObserver};
use crate::record::limits::{Hold, LimitState, Refusal, SharedLedger};
use crate::record::pricing::{Cost, PriceTable};
use crate::record::{
    BuildError, CallError, CallHook, CallId, CallRecord, ErrorType, RequestFacts, StreamOptions, Timings,
};
use crate::sinks::metrics::Metrics;
use crate::sinks::span::{
    start_chat_span, start_chat_span_on, start_server_span, start_server_span_on, CallSpan, ServerSpan,
};

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

/// Settings of the observation pipeline, and the sinks it feeds. Cheap to clone.
#[derive(Clone)]
pub struct Meter {
    inner: Arc<MeterInner>,
}

#[derive(Clone)]
struct MeterInner {
    provider: Option<Arc<str>>,
    propagate: bool,
    stream_usage: StreamUsage,
    spans: bool,
    route: SpanRoute,
    defaults: HashMap<String, Map<String, Value>>,
    metrics: Option<Metrics>,
    hooks: Vec<Arc<dyn CallHook>>,
    /// The price table, replaceable while calls run ([`Meter::set_prices`]); shared by the
    /// meters derived from this one.
    prices: Arc<RwLock<Arc<PriceTable>>>,
    ledger: Option<SharedLedger>,
    enforce_limits: bool,
    reserve_max_tokens: u64,
}

impl fmt::Debug for Meter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Meter")
            .field("provider", &self.inner.provider)
            .field("spans", &self.inner.spans)
            .field("hooks", &self.inner.hooks.len())
            .finish_non_exhaustive()
    }
}

impl Default for Meter {
    #[expect(clippy::expect_used, reason = "the default settings are valid (tests use them)")]
    fn default() -> Self {
        MeterBuilder::default()
            .build()
            .expect("default meter settings are valid")
    }
}

/// Where a meter's spans go.
#[derive(Clone)]
enum SpanRoute {
    /// `tracing` spans, exported by the subscriber's OpenTelemetry layer if it has one.
    Tracing,
    /// OpenTelemetry spans on this tracer.
    Tracer(SdkTracer),
    /// Written straight from each record onto a telemetry's OTLP/HTTP queue.
    #[cfg(feature = "otlp-http")]
    Queue(crate::sinks::otlp_spans::OtlpSpans),
}

/// Builder for [`Meter`].
pub struct MeterBuilder {
    provider: Option<String>,
    propagate: bool,
    stream_usage: StreamUsage,
    spans: bool,
    route: SpanRoute,
    defaults: HashMap<String, Value>,
    metrics: Option<Metrics>,
    hooks: Vec<Arc<dyn CallHook>>,
    prices: PriceTable,
    ledger: Option<SharedLedger>,
    enforce_limits: bool,
    reserve_max_tokens: u64,
}

impl Default for MeterBuilder {
    fn default() -> Self {
        MeterBuilder {
            provider: None,
            propagate: true,
            stream_usage: StreamUsage::default(),
            spans: true,
            route: SpanRoute::Tracing,
            defaults: HashMap::new(),
            metrics: None,
            hooks: Vec::new(),
            prices: PriceTable::embedded(),
            ledger: None,
            enforce_limits: false,
            reserve_max_tokens: 4096,
        }
    }
}

impl MeterBuilder {
    /// `gen_ai.provider.name` of every call (default: the door's, else the API's: `anthropic`
    /// for Anthropic Messages, `openai` for the others).
    pub fn provider_name(mut self, name: impl Into<String>) -> Self {
        self.provider = Some(name.into());
        self
    }
    /// Send W3C `traceparent`/`tracestate` to the provider (default on).
    pub fn propagate_trace_context(mut self, on: bool) -> Self {
        self.propagate = on;
        self
    }
    /// Usage on streams (default [`StreamUsage::RequestAndHide`]).
    pub fn stream_usage(mut self, policy: StreamUsage) -> Self {
        self.stream_usage = policy;
        self
    }
    /// Open spans (default on). Hooks still see every record when off.
    pub fn spans(mut self, on: bool) -> Self {
        self.spans = on;
        self
    }
    /// Builds spans on this OpenTelemetry tracer directly instead of through `tracing` (what
    /// [`Telemetry::meter_builder`](crate::Telemetry::meter_builder) does): leaner, the same
    /// span data. The call's span is then not a `tracing` span ([`Call::span`] is disabled);
    /// its parent is the caller's current `tracing` span's OpenTelemetry context, or the
    /// server span of a server door.
    pub fn tracer(mut self, tracer: SdkTracer) -> Self {
        self.route = SpanRoute::Tracer(tracer);
        self
    }
    /// Request defaults for `model`: each field is added to a request for that model only when
    /// the request leaves it unset (absent or `null`). `fields` must be a JSON object.
    pub fn model_defaults(mut self, model: impl Into<String>, fields: Value) -> Self {
        self.defaults.insert(model.into(), fields);
        self
    }
    /// Adds a sink that sees every finished [`CallRecord`].
    pub fn hook(mut self, hook: impl CallHook) -> Self {
        self.hooks.push(Arc::new(hook));
        self
    }
    /// Records every call on these metric instruments (see [`Telemetry::metrics`](crate::Telemetry::metrics)).
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Prices for cost (default: the embedded table).
    pub fn prices(mut self, prices: PriceTable) -> Self {
        self.prices = prices;
        self
    }
    /// Tracks spend per limit id in `ledger` (every call settles its cost there).
    pub fn ledger(mut self, ledger: SharedLedger) -> Self {
        self.ledger = Some(ledger);
        self
    }
    /// Refuse calls that a block limit would refuse, before calling the provider (the proxy
    /// always does; for the library client it is opt-in, default off).
    pub fn enforce_limits(mut self, on: bool) -> Self {
        self.enforce_limits = on;
        self
    }
    /// Output tokens assumed for a call's worst-case cost when it sets no `max_completion_tokens`
    /// (default 4096).
    pub fn reserve_max_tokens(mut self, tokens: u64) -> Self {
        self.reserve_max_tokens = tokens;
        self
    }

    /// Builds the meter; fails when model defaults are not JSON objects.
    pub fn build(self) -> Result<Meter, BuildError> {
        let mut defaults = HashMap::with_capacity(self.defaults.len());
        for (model, fields) in self.defaults {
            match fields {
                Value::Object(map) => {
                    defaults.insert(model, map);
                }
                other => {
                    return Err(BuildError::ModelDefaults {
                        model,
                        got: other.to_string(),
                    })
                }
            }
        }
        Ok(Meter {
            inner: Arc::new(MeterInner {
                provider: self.provider.map(Into::into),
                propagate: self.propagate,
                stream_usage: self.stream_usage,
                spans: self.spans,
                route: self.route,
                defaults,
                metrics: self.metrics.clone(),
                hooks: self.hooks,
                prices: Arc::new(RwLock::new(Arc::new(self.prices))),
                ledger: self.ledger.clone(),
                enforce_limits: self.enforce_limits,
                reserve_max_tokens: self.reserve_max_tokens,
            }),
        })
        .inspect(|_| {
            if let (Some(metrics), Some(ledger)) = (&self.metrics, &self.ledger) {
                metrics.watch_ledger(ledger.clone());
            }
        })
    }
}

impl crate::sinks::export::Telemetry {
    /// A meter builder already wired to these metrics and building its spans on this
    /// telemetry's tracer.
    ///
    /// When spans go over OTLP/HTTP, the meter's spans skip the SDK's span objects: each is
    /// written straight from the finished record onto this telemetry's export queue, with the
    /// same ids, sampling, attributes and batching (`src/sinks/otlp_spans.rs`). A tracer set on
    /// the builder afterwards ([`MeterBuilder::tracer`]) takes its place.
    pub fn meter_builder(&self) -> MeterBuilder {
        let builder = Meter::builder().metrics(self.metrics());
        #[cfg(feature = "otlp-http")]
        if let Some(spans) = self.otlp_spans() {
            return MeterBuilder {
                route: SpanRoute::Queue(spans.clone()),
                ..builder
            };
        }
        builder.tracer(self.tracer())
    }
}

/// A request body made ready to send: the bytes and what they ask for.
#[derive(Debug)]
pub struct Prepared {
    /// The JSON body to send: the caller's own bytes when nothing had to change.
    pub body: Bytes,
    /// What it asks for.
    pub facts: RequestFacts,
    /// The usage-only chunk is ours, not the caller's: hide it.
    pub hide_usage_chunk: bool,
}

/// Where a call goes, for `server.address` and `server.port`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Server {
    /// Host.
    pub address: Arc<str>,
    /// Port.
    pub port: Option<u16>,
    /// The provider behind it (`gen_ai.provider.name`), when the door knows it (the proxy's
    /// Azure OpenAI routes); else the meter's, else the API's.
    pub provider: Option<Arc<str>>,
}

impl Server {
    /// From a URL.
    pub fn of(url: &reqwest::Url) -> Self {
        Server {
            address: url.host_str().unwrap_or_default().into(),
            port: url.port_or_known_default(),
            provider: None,
        }
    }

    /// A host and port (`server.address`, `server.port`).
    pub fn new(address: impl Into<Arc<str>>, port: Option<u16>) -> Self {
        Server {
            address: address.into(),
            port,
            provider: None,
        }
    }

    /// The provider behind this server.
    pub fn with_provider(mut self, provider: impl Into<Arc<str>>) -> Self {
        self.provider = Some(provider.into());
        self
    }
}

/// What pricing and the ledger made of a call: its cost, the state of every limit it named
/// after it, and the limits that refused it.
struct Settled {
    cost: Option<Cost>,
    limits: Vec<(String, LimitState)>,
    blocked_limit_ids: Vec<String>,
}

/// What the provider answered (or why there is no answer), as one value.
struct Answer {
    status: Option<StatusCode>,
    meta: ProviderMeta,
    response: ResponseFacts,
    usage: Option<crate::parse::provider::Usage>,
    error: Option<ErrorType>,
}

impl Answer {
    /// No answer: the call failed (or was refused) with `error`.
    fn failed(error: ErrorType) -> Self {
        Answer {
            status: None,
            meta: ProviderMeta::default(),
            response: ResponseFacts::default(),
            usage: None,
            error: Some(error),
        }
    }
}

/// One call in flight: everything needed to finish its record.
pub struct Call {
    meter: Meter,
    server: Server,
    /// `gen_ai.provider.name`.
    provider: Arc<str>,
    span: CallSpan,
    annotations: Annotations,
    request: RequestFacts,
    started_at: SystemTime,
    started: Instant,
    /// What admission holds on the call's limits.
    hold: Hold,
    /// The record is built (set by the one finishing step; a call dropped before it is
    /// finished as `cancelled` by `Drop`).
    finished: bool,
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("model", &self.request.model)
            .finish_non_exhaustive()
    }
}

/// Why a stream ended without its end: cut short (`truncated`), or not a stream at all (no
/// event, and a content type other than `text/event-stream`: an HTML error page, a JSON body),
/// which could not be read as one (`decode`).
fn unfinished(observer: &StreamObserver, headers: &HeaderMap) -> ErrorType {
    let media_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim());
    match media_type {
        Some(t) if observer.chunks == 0 && !t.eq_ignore_ascii_case("text/event-stream") => ErrorType::Decode,
        _ => ErrorType::Truncated,
    }
}

/// `gen_ai.provider.name` of a call to `api` when neither the door nor the meter names one
/// (shared: no allocation per call).
fn api_provider(api: Api) -> Arc<str> {
    static OPENAI: LazyLock<Arc<str>> = LazyLock::new(|| Api::ChatCompletions.default_provider().into());
    static ANTHROPIC: LazyLock<Arc<str>> = LazyLock::new(|| Api::AnthropicMessages.default_provider().into());
    match api {
        Api::AnthropicMessages => ANTHROPIC.clone(),
        Api::ChatCompletions | Api::Responses => OPENAI.clone(),
    }
}

/// `headers` with their values in one allocation of their own. A client's values are slices of
/// its connection's read buffer: kept for as long as a stream is open, they would keep that
/// buffer too (8 KiB or more) after the client has moved on to a new one.
fn detached(headers: &HeaderMap) -> HeaderMap {
    let mut text = bytes::BytesMut::with_capacity(headers.iter().map(|(_, v)| v.len()).sum());
    for (_, value) in headers {
        text.extend_from_slice(value.as_bytes());
    }
    let mut text = text.freeze();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let bytes = text.split_to(value.len());
        let mut copy = http::HeaderValue::from_maybe_shared(bytes).unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        out.append(name.clone(), copy);
    }
    out
}

/// The provider's response headers, read the way `api`'s provider sends them.
fn provider_meta(api: Api, headers: &HeaderMap) -> ProviderMeta {
    match api {
        Api::AnthropicMessages => ProviderMeta::from_anthropic_headers(headers, SystemTime::now()),
        Api::ChatCompletions | Api::Responses => ProviderMeta::from_headers(headers),
    }
}

fn status_error(status: StatusCode) -> Option<ErrorType> {
    (!status.is_success()).then(|| ErrorType::Status(status.as_u16()))
}

fn invalid(e: serde_json::Error) -> CallError {
    CallError::InvalidRequest(e.to_string())
}

impl Meter {
    /// Starts a builder.
    pub fn builder() -> MeterBuilder {
        MeterBuilder::default()
    }

    /// Applies model defaults and the stream usage policy to a serialized JSON object body of
    /// a Chat Completions request. `expect_stream` checks the body's `stream` flag when the
    /// caller's method implies one.
    pub fn prepare(&self, bytes: impl Into<Bytes>, expect_stream: Option<bool>) -> Result<Prepared, CallError> {
        self.prepare_for(Api::ChatCompletions, bytes, expect_stream)
    }

    /// [`Self::prepare`] for a request of `api`. Only Chat Completions streams need asking for
    /// usage (`stream_options.include_usage`); Anthropic's and the Responses API's streams
    /// always report it. A body that needs no change is passed on as it is, not copied.
    pub fn prepare_for(
        &self,
        api: Api,
        bytes: impl Into<Bytes>,
        expect_stream: Option<bool>,
    ) -> Result<Prepared, CallError> {
        let mut bytes: Bytes = bytes.into();
        if bytes.first() != Some(&b'{') || bytes.last() != Some(&b'}') {
            return Err(CallError::InvalidRequest(
                "the request body must be a JSON object".into(),
            ));
        }
        let (mut facts, options) = RequestFacts::parse(&bytes).map_err(invalid)?;
        match expect_stream {
            Some(true) if !facts.stream => {
                return Err(CallError::InvalidRequest(
                    "chat_stream needs a body with \"stream\": true".into(),
                ))
            }
            Some(false) if facts.stream => {
                return Err(CallError::InvalidRequest(
                    "chat needs a body without \"stream\": true; use chat_stream".into(),
                ))
            }
            _ => {}
        }
        let stream = facts.stream;
        let m = &self.inner;
        let wants_usage =
            api == Api::ChatCompletions && stream && m.stream_usage != StreamUsage::Leave && !facts.include_usage;
        let defaults = m.defaults.get(&facts.model);
        let mut changed = false;
        if wants_usage && options == StreamOptions::Absent && defaults.is_none() {
            // Fast path: append the one missing key to the serialized object.
            const KEY: &[u8] = br#""stream_options":{"include_usage":true}}"#;
            let mut extended = Vec::with_capacity(bytes.len() + 1 + KEY.len());
            extended.extend_from_slice(&bytes[..bytes.len() - 1]);
            if bytes.len() > 2 {
                extended.push(b',');
            }
            extended.extend_from_slice(KEY);
            bytes = extended.into();
            changed = true;
        } else if wants_usage || defaults.is_some() {
            let mut map: Map<String, Value> = serde_json::from_slice(&bytes).map_err(invalid)?;
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
                bytes = serde_json::to_vec(&map).map_err(invalid)?.into();
            }
        }
        if changed {
            facts = RequestFacts::parse(&bytes).map_err(invalid)?.0;
        }
        facts.api = api;
        Ok(Prepared {
            body: bytes,
            facts,
            hide_usage_chunk: wants_usage && m.stream_usage == StreamUsage::RequestAndHide,
        })
    }

    /// Opens the call's span (under the current span) and starts its clock.
    pub fn start(&self, server: Server, annotations: &Annotations, request: RequestFacts) -> Call {
        self.start_under(None, server, annotations, request)
    }

    /// Like [`Self::start`], with the call's span under `parent` rather than the current span
    /// (saves entering a span on every poll of the caller's future).
    pub fn start_under(
        &self,
        parent: Option<&ServerSpan>,
        server: Server,
        annotations: &Annotations,
        request: RequestFacts,
    ) -> Call {
        let m = &self.inner;
        let provider: Arc<str> = match (&server.provider, &m.provider) {
            (Some(p), _) | (None, Some(p)) => p.clone(),
            (None, None) => api_provider(request.api),
        };
        let span = match (m.spans, &m.route) {
            (false, _) => CallSpan::Off,
            #[cfg(feature = "otlp-http")]
            (true, SpanRoute::Queue(spans)) => {
                let caller;
                let parent = match parent {
                    Some(ServerSpan::Otel(cx)) => cx,
                    Some(ServerSpan::Tracing(span)) => {
                        caller = span.context();
                        &caller
                    }
                    None => {
                        caller = Span::current().context();
                        &caller
                    }
                };
                CallSpan::Queued(spans.start_chat(parent))
            }
            (true, SpanRoute::Tracer(tracer)) => {
                let caller;
                let parent = match parent {
                    Some(ServerSpan::Otel(cx)) => cx,
                    Some(ServerSpan::Tracing(span)) => {
                        caller = span.context();
                        &caller
                    }
                    None => {
                        caller = Span::current().context();
                        &caller
                    }
                };
                CallSpan::Otel(start_chat_span_on(
                    tracer,
                    &request.model,
                    &provider,
                    &server.address,
                    annotations,
                    parent,
                    request.stream,
                ))
            }
            (true, SpanRoute::Tracing) => {
                let parent = match parent {
                    Some(ServerSpan::Tracing(span)) => Some(span),
                    Some(ServerSpan::Otel(_)) | None => None,
                };
                let span = start_chat_span(&request.model, &provider, &server.address, annotations, parent);
                CallSpan::Tracing(span, None)
            }
        };
        if let Some(metrics) = &self.inner.metrics {
            metrics.call_started();
        }
        Call {
            meter: self.clone(),
            server,
            provider,
            span,
            annotations: annotations.clone(),
            request,
            started_at: SystemTime::now(),
            started: Instant::now(),
            hold: Hold::default(),
            finished: false,
        }
    }

    /// The server span of one request a server door (the proxy) serves, continuing the
    /// caller's trace; `None` when spans are off. Pass it to [`Self::start_under`].
    pub fn server_span(&self, method: &str, route: &str, headers: &HeaderMap) -> Option<ServerSpan> {
        let m = &self.inner;
        m.spans.then(|| match &m.route {
            SpanRoute::Tracer(tracer) => ServerSpan::Otel(start_server_span_on(tracer, method, route, headers)),
            #[cfg(feature = "otlp-http")]
            SpanRoute::Queue(spans) => {
                let parent = crate::sinks::span::extract_trace_context(headers).unwrap_or_default();
                ServerSpan::Otel(spans.start_server(parent, method, route))
            }
            SpanRoute::Tracing => ServerSpan::Tracing(start_server_span(method, route, headers)),
        })
    }

    /// Whether calls open spans.
    pub fn spans_enabled(&self) -> bool {
        self.inner.spans
    }

    /// This meter, enforcing block limits (the proxy's: it always refuses calls a block limit
    /// refuses). Shares sinks, prices and ledger with `self`.
    pub fn enforcing_limits(&self) -> Meter {
        if self.inner.enforce_limits {
            return self.clone();
        }
        Meter {
            inner: Arc::new(MeterInner {
                enforce_limits: true,
                ..(*self.inner).clone()
            }),
        }
    }

    /// Whether calls are checked against block limits before they are sent.
    pub fn enforces_limits(&self) -> bool {
        self.inner.enforce_limits && self.inner.ledger.is_some()
    }

    /// The price table in force (calls started after [`Self::set_prices`] see the new one).
    pub fn prices(&self) -> Arc<PriceTable> {
        self.inner
            .prices
            .read()
            .map_or_else(|p| p.into_inner().clone(), |t| t.clone())
    }

    /// Replaces the price table for every call finished from now on, on this meter and the
    /// meters derived from it (a configuration reload; calls in flight are priced with the
    /// table in force when they finish).
    pub fn set_prices(&self, prices: PriceTable) {
        let table = Arc::new(prices);
        match self.inner.prices.write() {
            Ok(mut slot) => *slot = table,
            Err(poisoned) => *poisoned.into_inner() = table,
        }
    }

    /// The ledger, when limits are tracked.
    pub fn ledger(&self) -> Option<&SharedLedger> {
        self.inner.ledger.as_ref()
    }

    /// Worst-case cost of a request: about a token per 4 bytes of body for input, and
    /// `max_completion_tokens` (else the configured default) per choice for output, at the
    /// requested tier's prices when it has them. Unpriced models reserve nothing.
    pub fn worst_case_cost(&self, request: &RequestFacts, body_len: usize) -> f64 {
        let prices = self.prices();
        let Some(price) = prices.price(&request.model) else {
            return 0.0;
        };
        // The tier asked for, when it has a price (`auto` may be served at the standard tier).
        let Some(rates) = price
            .rates(request.service_tier.as_deref())
            .or_else(|| price.rates(None))
        else {
            return 0.0;
        };
        let input = (body_len as f64 / 4.0).ceil();
        let output = request.max_tokens.unwrap_or(self.inner.reserve_max_tokens) as f64
            * request.choice_count.unwrap_or(1).max(1) as f64;
        (input * rates.input + output * rates.output) / 1_000_000.0
    }
}

impl Call {
    /// Pre-flight check against block limits, the one admission decision of every door: when
    /// the meter enforces limits ([`MeterBuilder::enforce_limits`]), reserves the call's
    /// worst-case cost on every limit it names, or says why the call is refused (finish it with
    /// [`Call::refuse`]). A meter that does not enforce limits admits every call at once. A
    /// network ledger is asked within its timeout.
    pub async fn admit(&mut self, body_len: usize) -> Result<(), Refusal> {
        if !self.meter.enforces_limits() {
            return Ok(());
        }
        let Some(ledger) = self.meter.inner.ledger.clone() else {
            return Ok(());
        };
        let ids = self.annotations.limit_ids();
        if ids.is_empty() {
            return Ok(());
        }
        let reservation = self.meter.worst_case_cost(&self.request, body_len);
        match ledger.admit(ids, reservation).await {
            Ok(admission) if admission.blocked.is_empty() => {
                self.hold = admission.hold;
                Ok(())
            }
            Ok(admission) => Err(Refusal::Blocked(admission.blocked)),
            Err(e) => Err(Refusal::LedgerUnavailable(e)),
        }
    }

    /// Finishes a call that admission refused: the provider was not called.
    pub fn refuse(mut self, refusal: &Refusal) -> CallRecord {
        match refusal {
            Refusal::Blocked(blocked) => self.finish_blocked(blocked.clone()),
            Refusal::LedgerUnavailable(_) => {
                // The states as last known; nothing is settled (the ledger is not answering).
                let limits = match &self.meter.inner.ledger {
                    Some(ledger) => {
                        let statuses = ledger.statuses();
                        self.annotations
                            .limit_ids()
                            .iter()
                            .map(|id| {
                                let state = statuses
                                    .iter()
                                    .find(|s| &s.id == id)
                                    .map_or(LimitState::Ok, |s| s.state);
                                (id.clone(), state)
                            })
                            .collect()
                    }
                    None => Vec::new(),
                };
                let settled = Settled {
                    cost: None,
                    limits,
                    blocked_limit_ids: Vec::new(),
                };
                self.finish_with(Answer::failed(ErrorType::LedgerUnavailable), None, settled)
            }
        }
    }

    /// Finishes a call that a block limit refused: the provider was not called.
    pub fn finish_blocked(mut self, blocked: Vec<String>) -> CallRecord {
        let mut limits = Vec::new();
        if let Some(ledger) = &self.meter.inner.ledger {
            limits = ledger.settle(self.annotations.limit_ids(), Hold::default(), 0.0);
            for (id, state) in &mut limits {
                if blocked.contains(id) {
                    *state = LimitState::Blocked;
                }
            }
        }
        let answer = Answer::failed(ErrorType::LimitReached);
        let settled = Settled {
            cost: None,
            limits,
            blocked_limit_ids: blocked,
        };
        self.finish_with(answer, None, settled)
    }

    /// The call's `tracing` span (disabled when spans are off or built on a tracer directly).
    pub fn span(&self) -> &Span {
        self.span.tracing()
    }

    /// Adds W3C trace context headers for the provider, when enabled.
    pub fn inject_trace_context(&mut self, headers: &mut HeaderMap) {
        if self.meter.inner.propagate {
            self.span.write_trace_context(headers);
        }
    }

    /// Finishes a call that got no answer.
    pub fn fail(mut self, error: ErrorType) -> CallRecord {
        self.finish(Answer::failed(error), None)
    }

    /// Finishes a call from the provider's whole (non-streaming) answer.
    pub fn finish_body(mut self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> CallRecord {
        let api = self.request.api;
        let meta = provider_meta(api, headers);
        let mut error = status_error(status);
        let parsed = match api {
            Api::ChatCompletions => ChatCompletion::parse(body).map(|c| (c.facts, c.usage)),
            Api::AnthropicMessages => AnthropicMessage::parse(body).map(|m| (m.facts, m.usage)),
            Api::Responses => OpenAiResponse::parse(body).map(|r| (r.facts, r.usage)),
        };
        let (facts, usage) = match parsed {
            Ok(parsed) => parsed,
            Err(_) => {
                error.get_or_insert(ErrorType::Decode);
                (ResponseFacts::default(), None)
            }
        };
        let answer = Answer {
            status: Some(status),
            meta,
            response: facts,
            usage,
            error,
        };
        self.finish(answer, None)
    }

    /// Observes a streaming answer on its way to the caller; the record is finished when the
    /// stream ends, fails or is dropped. `sent` is when the request went out.
    pub fn observe_stream<S, E>(
        self,
        status: StatusCode,
        headers: HeaderMap,
        body: S,
        sent: Instant,
        hide_usage_chunk: bool,
    ) -> ChatStream
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<CallError> + 'static,
    {
        let api = self.request.api;
        let headers = detached(&headers);
        let meta = provider_meta(api, &headers);
        ChatStream {
            status,
            headers,
            body: Box::pin(body.map_err(Into::into)),
            observer: StreamObserver::for_api(sent, api),
            cutter: (hide_usage_chunk && status.is_success()).then(EventCutter::default),
            events: Vec::new(),
            inserts: Vec::new(),
            pending: Some((self, meta)),
            record: None,
            body_done: false,
            done_at: None,
            hide_usage_chunk: hide_usage_chunk && status.is_success(),
            outcome: None,
            held: None,
            deferred_error: None,
        }
    }

    /// Prices the answer, settles it on the ledger and finishes the record.
    fn finish(&mut self, answer: Answer, stream: Option<&StreamObserver>) -> CallRecord {
        let model = answer.response.model.as_deref().unwrap_or(&self.request.model);
        let cost = answer.usage.and_then(|u| {
            let tier = answer.response.service_tier.as_deref();
            self.meter.prices().cost_at(model, tier, &u)
        });
        let limits = match &self.meter.inner.ledger {
            Some(ledger) if !self.annotations.limit_ids().is_empty() => {
                ledger.settle(self.annotations.limit_ids(), self.hold, cost.map_or(0.0, |c| c.total))
            }
            _ => Vec::new(),
        };
        let settled = Settled {
            cost,
            limits,
            blocked_limit_ids: Vec::new(),
        };
        self.finish_with(answer, stream, settled)
    }

    /// Builds the one [`CallRecord`] of the call and hands it to every sink: span, metrics,
    /// hooks.
    fn finish_with(&mut self, answer: Answer, stream: Option<&StreamObserver>, settled: Settled) -> CallRecord {
        self.finished = true;
        let Answer {
            status,
            meta,
            response,
            usage,
            error,
        } = answer;
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
            id: CallId::new(),
            operation: names::OPERATION_CHAT,
            provider: self.provider.clone(),
            server_address: self.server.address.clone(),
            server_port: self.server.port,
            annotations: std::mem::replace(&mut self.annotations, Annotations::none()),
            request: std::mem::take(&mut self.request),
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
            cost: settled.cost,
            limits: settled.limits,
            blocked_limit_ids: settled.blocked_limit_ids,
        };
        std::mem::replace(&mut self.span, CallSpan::Off).finish(&record);
        if let Some(metrics) = &self.meter.inner.metrics {
            metrics.record(&record);
            metrics.call_ended();
        }
        for hook in &self.meter.inner.hooks {
            if std::panic::catch_unwind(AssertUnwindSafe(|| hook.on_call(&record))).is_err() {
                tracing::warn!(target: "llm_meter", "a call hook panicked; the call result is unaffected");
            }
        }
        record
    }
}

impl Drop for Call {
    /// A call dropped before it finished (the caller's future went away: a client that
    /// disconnected, a timeout around the call) is finished as `cancelled`: its hold is settled,
    /// its span ended and its record handed to every sink, once.
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.finish(Answer::failed(ErrorType::Cancelled), None);
        }
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, CallError>> + Send>>;

/// A streaming answer: the provider's SSE bytes as they arrive, observed on the way through.
/// Works with any SSE parser (e.g. `eventsource-stream`) on top.
pub struct ChatStream {
    status: StatusCode,
    headers: HeaderMap,
    body: ByteStream,
    observer: StreamObserver,
    cutter: Option<EventCutter>,
    /// `(end, keep)` of each event of the current chunk (reused: no allocation per chunk).
    events: Vec<(usize, bool)>,
    /// Bytes to pass on before the event at an index of `events` (reused).
    inserts: Vec<(usize, Bytes)>,
    pending: Option<(Call, ProviderMeta)>,
    record: Option<CallRecord>,
    body_done: bool,
    /// Index in `events` of the `[DONE]` event of the current chunk.
    done_at: Option<usize>,
    /// The usage-only chunk was requested by us, not the caller: drop it.
    hide_usage_chunk: bool,
    /// A field to add, from the finished record, to the chunk that ends the caller's stream.
    outcome: Option<OutcomeField>,
    /// The `event:` name and `data` of the event that will carry `outcome`, held back until the
    /// record is done.
    held: Option<(Vec<u8>, Vec<u8>)>,
    /// An upstream error to report once the held chunk has been passed on.
    deferred_error: Option<CallError>,
}

/// Makes a field's JSON value from the finished record.
type OutcomeValue = Box<dyn FnOnce(&CallRecord) -> Vec<u8> + Send>;

/// See [`ChatStream::with_outcome_field`].
struct OutcomeField {
    key: &'static str,
    value: OutcomeValue,
    /// Which chunk carries it: the usage chunk when the caller sees one, else the finish chunk.
    carrier: EventOutcome,
}

/// One SSE event: `event: {event}` when it has a name (the Anthropic and OpenAI SDKs dispatch on
/// it), then `data` (each of its lines a `data:` line).
fn sse_event(event: &[u8], data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(event.len() + data.len() + 24);
    if !event.is_empty() {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event);
        out.push(b'\n');
    }
    for line in data.split(|&b| b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
    Bytes::from(out)
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

    /// Adds `"key": value` (JSON made from the finished record) to the event that ends the
    /// caller's stream, the way Pay-i's proxy carries `xproxy_result`. Chat Completions: the
    /// usage chunk when the caller asked for usage, otherwise the last chunk with a finish
    /// reason, so that every chunk the caller gets still has `choices`; that one chunk is held
    /// back until the record is finished (it is followed at once by the usage chunk and
    /// `[DONE]`). Anthropic Messages and Responses: the terminal event (`message_stop`,
    /// `response.completed` / `incomplete` / `failed`), re-emitted with its `event:` line, a
    /// sibling of its `type`. Content deltas are never held. A stream with no such event gets
    /// no field. Events are then passed on whole.
    pub fn with_outcome_field(
        mut self,
        key: &'static str,
        value: impl FnOnce(&CallRecord) -> Vec<u8> + Send + 'static,
    ) -> Self {
        if self.status.is_success() {
            let caller_sees_usage = !self.hide_usage_chunk
                && self
                    .pending
                    .as_ref()
                    .is_some_and(|(call, _)| call.request.include_usage);
            let carrier = match self.observer.api() {
                Api::ChatCompletions if caller_sees_usage => EventOutcome::UsageOnly,
                Api::ChatCompletions => EventOutcome::Finish,
                Api::AnthropicMessages | Api::Responses => EventOutcome::Done,
            };
            self.cutter.get_or_insert_with(EventCutter::default);
            self.outcome = Some(OutcomeField {
                key,
                value: Box::new(value),
                carrier,
            });
        }
        self
    }

    /// The call's outcome in Pay-i's `xproxy_result` shape, once the stream has ended.
    pub fn xproxy_result(&self) -> Option<crate::record::xproxy::XProxyResult> {
        self.record
            .as_ref()
            .map(crate::record::xproxy::XProxyResult::from_record)
    }

    /// The call is complete at `[DONE]`: end the span now, not when the caller gets round to
    /// polling the end of the body.
    fn finish_if_done(&mut self) {
        if self.observer.done {
            self.finish(None);
        }
    }

    fn finish(&mut self, error: Option<ErrorType>) {
        if let Some((mut call, meta)) = self.pending.take() {
            let o = &mut self.observer;
            // A stream dropped after `[DONE]` was not cancelled: it was complete.
            let error = error.filter(|e| !(*e == ErrorType::Cancelled && o.done));
            let error = status_error(self.status)
                .or(error)
                .or(o.error.map(ErrorType::from))
                .or_else(|| (!o.done).then_some(unfinished(o, &self.headers)));
            let answer = Answer {
                status: Some(self.status),
                meta,
                response: std::mem::take(&mut o.facts),
                usage: o.usage,
                error,
            };
            self.record = Some(call.finish(answer, Some(o)));
        }
    }

    /// The held chunk with the outcome field added, once the record is finished.
    fn release_held(&mut self) -> Option<Bytes> {
        let record = self.record.as_ref()?;
        let (event, data) = self.held.take()?;
        let Some(outcome) = self.outcome.take() else {
            return Some(sse_event(&event, &data));
        };
        let value = (outcome.value)(record);
        Some(sse_event(
            &event,
            &crate::record::xproxy::add_json_field(&data, outcome.key, &value).unwrap_or(data),
        ))
    }

    /// Observes one network chunk and returns the bytes to pass on now.
    fn pass_on(&mut self, chunk: Bytes) -> Option<Bytes> {
        if self.cutter.is_none() {
            self.observer.observe_all(&chunk);
            self.finish_if_done();
            return Some(chunk);
        }
        let (events, inserts, held, done_at) = (&mut self.events, &mut self.inserts, &mut self.held, &mut self.done_at);
        events.clear();
        inserts.clear();
        *done_at = None;
        let hide = self.hide_usage_chunk;
        let carrier = self.outcome.as_ref().map(|o| o.carrier);
        self.observer.observe_typed(&chunk, |outcome, end, frame| {
            let index = events.len();
            if outcome == EventOutcome::Done {
                done_at.get_or_insert(index);
            }
            let keep = match outcome {
                EventOutcome::UsageOnly if hide => false,
                // The carrier is held (its tail, `frame` None, goes with it). An earlier one
                // (another choice's finish chunk) is passed on unchanged in its place.
                o if Some(o) == carrier => {
                    if let Some(frame) = frame {
                        if let Some((event, data)) = held.replace((frame.event.to_vec(), frame.data.to_vec())) {
                            inserts.push((index, sse_event(&event, &data)));
                        }
                    }
                    false
                }
                _ => true,
            };
            events.push((end, keep));
        });
        self.finish_if_done();
        if let Some(at) = self.done_at {
            if let Some(carrier) = self.release_held() {
                self.inserts.push((at, carrier));
            }
        }
        let cutter = self.cutter.as_mut()?;
        cutter.cut_inserting(chunk, &self.events, &self.inserts)
    }
}

impl Stream for ChatStream {
    type Item = Result<Bytes, CallError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(e) = this.deferred_error.take() {
                return Poll::Ready(Some(Err(e)));
            }
            if this.body_done {
                return Poll::Ready(None);
            }
            match this.body.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    if let Some(out) = this.pass_on(chunk) {
                        return Poll::Ready(Some(Ok(out)));
                    }
                }
                Poll::Ready(Some(Err(err))) => {
                    this.body_done = true;
                    this.finish(Some(err.error_type()));
                    // The held chunk is the caller's: pass it on before the error.
                    if let Some(held) = this.release_held() {
                        this.deferred_error = Some(err);
                        return Poll::Ready(Some(Ok(held)));
                    }
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Ready(None) => {
                    this.body_done = true;
                    let rest = this.cutter.as_mut().and_then(EventCutter::finish);
                    this.finish(None);
                    let out = match (this.release_held(), rest) {
                        (Some(held), Some(rest)) => Some([held, rest].concat().into()),
                        (held, rest) => held.or(rest),
                    };
                    return Poll::Ready(out.map(Ok));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detached_headers_are_the_same_in_a_buffer_of_their_own() {
        // Values that are slices of one buffer, as a client's are of its read buffer.
        let buffer = Bytes::from_static(b"req_1org-xsecretab");
        let mut headers = HeaderMap::new();
        let value = |range: std::ops::Range<usize>| http::HeaderValue::from_maybe_shared(buffer.slice(range)).unwrap();
        headers.append("x-request-id", value(0..5));
        headers.append("openai-organization", value(5..10));
        let mut secret = value(10..16);
        secret.set_sensitive(true);
        headers.append(http::header::AUTHORIZATION, secret);
        headers.append("x-multi", value(16..17));
        headers.append("x-multi", value(17..18));
        headers.append("x-empty", http::HeaderValue::from_static(""));

        let copy = detached(&headers);
        assert_eq!(copy, headers);
        let pairs = |h: &HeaderMap| h.iter().map(|(n, v)| (n.clone(), v.clone())).collect::<Vec<_>>();
        assert_eq!(pairs(&copy), pairs(&headers), "same order, repeated names included");
        assert!(copy[http::header::AUTHORIZATION].is_sensitive());
        let original = buffer.as_ptr_range();
        for (_, v) in &copy {
            assert!(
                v.is_empty() || !original.contains(&v.as_bytes().as_ptr()),
                "{v:?} still points into the original buffer"
            );
        }
    }
}
