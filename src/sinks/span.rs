//! The `chat {model}` span: opened when a call starts, filled in one pass from the finished
//! [`CallRecord`], closed when the call (or stream) ends.
//!
//! A span takes one of two routes. Through `tracing` (the default, for a meter without its own
//! tracer): scalar attributes known at the start are `tracing` fields (visible to any
//! subscriber); the rest, including the arrays (`gen_ai.response.finish_reasons`, `limit.ids`,
//! `request.tags`), are set on the OpenTelemetry span behind it, since `tracing` fields cannot
//! hold arrays; spans are recorded under the `llm_meter` target at `INFO` level. Or straight on
//! an OpenTelemetry tracer (a meter built from [`Telemetry`](crate::Telemetry), or given
//! [`MeterBuilder::tracer`](crate::MeterBuilder::tracer)): the same name, kind, attributes and
//! status, without a `tracing` span in between; the sampler decides when the span starts, and
//! an unsampled span costs next to nothing.

use std::cell::RefCell;
use std::sync::{Arc, LazyLock};

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Array, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::{SdkTracer, Span as OtelSpan};
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::names::*;
use crate::parse::annotations::Annotations;
use crate::record::{write_hex, CallRecord};

macro_rules! chat_span {
    ($model:expr, $provider:expr, $server:expr, $annotations:expr $(, parent: $parent:expr)?) => {
        tracing::info_span!(
            target: "llm_meter",
            $(parent: $parent,)?
            "chat",
            otel.name = %format_args!("{OPERATION_CHAT} {}", $model),
            otel.kind = "client",
            otel.status_code = Empty,
            { GEN_AI_OPERATION_NAME } = OPERATION_CHAT,
            { GEN_AI_PROVIDER_NAME } = $provider,
            { GEN_AI_REQUEST_MODEL } = $model,
            { SERVER_ADDRESS } = $server,
            { USE_CASE_NAME } = $annotations.use_case_name(),
            { ERROR_TYPE } = Empty,
        )
    };
}

/// Opens the client span of a chat call under `parent`, or else under the caller's current span.
pub fn start_chat_span(
    model: &str,
    provider: &str,
    server_address: &str,
    annotations: &Annotations,
    parent: Option<&Span>,
) -> Span {
    match parent {
        Some(parent) => chat_span!(model, provider, server_address, annotations, parent: parent),
        None => chat_span!(model, provider, server_address, annotations),
    }
}

/// Opens the server span of one request the proxy serves (`{method} {route}`), continuing the
/// caller's trace when its headers carry W3C trace context. The chat span of the call becomes
/// its child.
pub fn start_server_span(method: &str, route: &str, headers: &HeaderMap) -> Span {
    let span = tracing::info_span!(
        target: "llm_meter",
        "proxy",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        { HTTP_REQUEST_METHOD } = method,
        { HTTP_ROUTE } = route,
    );
    if let Some(parent) = extract_trace_context(headers) {
        let _ = span.set_parent(parent);
    }
    span
}

/// The server span of one request on `tracer` directly: [`start_server_span`]'s name, kind and
/// attributes, as the context that holds it (the span ends when its last clone is dropped).
pub fn start_server_span_on(
    tracer: &SdkTracer,
    method: &str,
    route: &str,
    headers: &HeaderMap,
) -> opentelemetry::Context {
    let parent = extract_trace_context(headers).unwrap_or_default();
    let span = tracer
        .span_builder(joined(method, route))
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new(HTTP_REQUEST_METHOD, repeated(Repeated::Method, method)),
            KeyValue::new(HTTP_ROUTE, repeated(Repeated::Route, route)),
        ])
        .start_with_context(tracer, &parent);
    parent.with_span(span)
}

/// The chat span of a call on `tracer` directly, under `parent`: [`start_chat_span`]'s name,
/// kind and opening attributes. A whole answer's span is opened with room for every attribute
/// it gets at the end, so setting them never grows its list; a stream's, open as long as the
/// stream is (1,000 open streams hold 1,000 spans), holds only the opening ones until then.
pub fn start_chat_span_on(
    tracer: &SdkTracer,
    model: &str,
    provider: &str,
    server_address: &str,
    annotations: &Annotations,
    parent: &opentelemetry::Context,
    streaming: bool,
) -> OtelSpan {
    let mut opening = Vec::with_capacity(if streaming { OPENING_ATTRIBUTES } else { SPAN_ATTRIBUTES });
    opening.push(KeyValue::new(GEN_AI_OPERATION_NAME, OPERATION_CHAT));
    opening.push(KeyValue::new(
        GEN_AI_PROVIDER_NAME,
        repeated(Repeated::Provider, provider),
    ));
    opening.push(KeyValue::new(
        GEN_AI_REQUEST_MODEL,
        repeated(Repeated::RequestModel, model),
    ));
    opening.push(KeyValue::new(
        SERVER_ADDRESS,
        repeated(Repeated::ServerAddress, server_address),
    ));
    if let Some(use_case) = annotations.use_case_name() {
        opening.push(KeyValue::new(USE_CASE_NAME, repeated(Repeated::UseCase, use_case)));
    }
    tracer
        .span_builder(joined(OPERATION_CHAT, model))
        .with_kind(SpanKind::Client)
        .with_attributes(opening)
        .start_with_context(tracer, parent)
}

/// Attribute values most calls repeat (a model, a route, an organization).
#[derive(Clone, Copy)]
enum Repeated {
    Method,
    Route,
    Provider,
    RequestModel,
    ServerAddress,
    UseCase,
    RequestServiceTier,
    ResponseModel,
    ResponseServiceTier,
    Fingerprint,
    Organization,
    ApiVersion,
}

impl Repeated {
    /// How many there are (the last one's index, plus one).
    const COUNT: usize = Repeated::ApiVersion as usize + 1;
}

thread_local! {
    /// The last value of each [`Repeated`] attribute on this thread.
    static LAST_VALUES: RefCell<[Option<Arc<str>>; Repeated::COUNT]> =
        const { RefCell::new([const { None }; Repeated::COUNT]) };
}

/// `value` as an attribute value shared with the previous call's when it is the same (a
/// reference count instead of a copy, which the exporter's thread would free).
fn repeated(which: Repeated, value: &str) -> Value {
    LAST_VALUES.with_borrow_mut(|last| {
        let slot = &mut last[which as usize];
        let shared = match slot {
            Some(last) if **last == *value => Arc::clone(last),
            _ => Arc::clone(slot.insert(Arc::from(value))),
        };
        Value::String(StringValue::from(shared))
    })
}

/// `"{first} {second}"`, a span name, without formatting machinery.
fn joined(first: &str, second: &str) -> String {
    let mut name = String::with_capacity(first.len() + 1 + second.len());
    name.push_str(first);
    name.push(' ');
    name.push_str(second);
    name
}

/// A call's span, on whichever route the meter sends spans.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per call, held in place for its life; boxing would add an allocation per call"
)]
pub enum CallSpan {
    /// Spans are off.
    Off,
    /// A `tracing` span (exported by the subscriber's OpenTelemetry layer, if it has one), and
    /// its OpenTelemetry context once looked up.
    Tracing(Span, Option<opentelemetry::Context>),
    /// An OpenTelemetry span on the meter's tracer.
    Otel(OtelSpan),
}

/// The parent a server door gives its calls' spans (see [`crate::Meter::server_span`]).
#[derive(Clone, Debug)]
pub enum ServerSpan {
    /// A `tracing` span.
    Tracing(Span),
    /// An OpenTelemetry context holding the server span.
    Otel(opentelemetry::Context),
}

static NO_SPAN: LazyLock<Span> = LazyLock::new(Span::none);

impl CallSpan {
    /// The `tracing` span of the call (a disabled one unless spans go through `tracing`).
    pub fn tracing(&self) -> &Span {
        match self {
            CallSpan::Tracing(span, _) => span,
            CallSpan::Off | CallSpan::Otel(_) => &NO_SPAN,
        }
    }

    /// W3C trace context for the provider, when the call has a valid span.
    pub fn write_trace_context(&mut self, headers: &mut HeaderMap) {
        match self {
            CallSpan::Off => {}
            CallSpan::Tracing(span, cx) => {
                if !span.is_disabled() {
                    let cx = cx.get_or_insert_with(|| span.context());
                    write_trace_context(cx.span().span_context(), headers);
                }
            }
            CallSpan::Otel(span) => write_trace_context(span.span_context(), headers),
        }
    }

    /// Writes everything the record holds onto the span and ends it.
    pub fn finish(self, r: &CallRecord) {
        match self {
            CallSpan::Off => {}
            CallSpan::Tracing(span, cx) => record_on_span(&span, cx, r),
            CallSpan::Otel(mut span) => {
                if span.is_recording() {
                    each_attribute(r, |kv| span.set_attribute(kv));
                    if let Some(e) = r.error {
                        span.set_attribute(KeyValue::new(ERROR_TYPE, e.as_str()));
                        span.set_status(Status::error(""));
                    }
                }
                span.end();
            }
        }
    }
}

/// Writes W3C `traceparent` (and `tracestate`, when not empty) for the span `sc`: the same
/// header `TraceContextPropagator` writes, its hex digits written straight into place.
pub fn write_trace_context(sc: &SpanContext, headers: &mut HeaderMap) {
    if !sc.is_valid() {
        return;
    }
    // 00-{trace id: 32 digits}-{span id: 16}-{flags: 2}
    let mut value = *b"00-00000000000000000000000000000000-0000000000000000-00";
    write_hex(&sc.trace_id().to_bytes(), &mut value[3..35]);
    write_hex(&sc.span_id().to_bytes(), &mut value[36..52]);
    write_hex(&[sc.trace_flags().to_u8()], &mut value[53..55]);
    if let Ok(v) = HeaderValue::from_bytes(&value) {
        headers.insert(HeaderName::from_static("traceparent"), v);
    }
    let state = sc.trace_state().header();
    if !state.is_empty() {
        if let Ok(v) = HeaderValue::try_from(state) {
            headers.insert(HeaderName::from_static("tracestate"), v);
        }
    }
}

/// The caller's trace context from W3C `traceparent`/`tracestate` headers, when it sent one.
pub fn extract_trace_context(headers: &HeaderMap) -> Option<opentelemetry::Context> {
    use opentelemetry::propagation::{Extractor, TextMapPropagator};
    struct Headers<'a>(&'a HeaderMap);
    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(HeaderName::as_str).collect()
        }
    }
    headers.get("traceparent")?;
    let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&Headers(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

/// Writes everything the record holds onto the span, in one pass: the attributes are collected
/// into one list and handed to the OpenTelemetry span at once (one lock), rather than one
/// `set_attribute` call (one subscriber lookup) per attribute. A disabled span costs nothing.
/// `cx` is the span's OpenTelemetry context when the caller already has it.
pub fn record_on_span(span: &Span, cx: Option<opentelemetry::Context>, r: &CallRecord) {
    if span.is_disabled() {
        return;
    }
    let cx = cx.unwrap_or_else(|| span.context());
    let otel = cx.span();
    if otel.span_context().is_valid() && otel.is_recording() {
        otel.set_attributes(attributes(r));
    }
    if let Some(e) = r.error {
        span.record(ERROR_TYPE, e.as_str());
        span.record("otel.status_code", "error");
    }
}

/// How many attributes a call's span is opened with, at most.
const OPENING_ATTRIBUTES: usize = 5;

/// How many attributes a call's span holds at most without properties: the opening ones, the
/// 46 [`each_attribute`] can give and `error.type`.
const SPAN_ATTRIBUTES: usize = OPENING_ATTRIBUTES + 47;

/// Every attribute of the record beyond the ones the span was opened with, in one list.
pub fn attributes(r: &CallRecord) -> Vec<KeyValue> {
    let mut out = Vec::with_capacity(SPAN_ATTRIBUTES);
    each_attribute(r, |kv| out.push(kv));
    out
}

/// Hands `put` every attribute of the record beyond the ones the span was opened with, each
/// once, in a fixed order: what is known of the request, the answer, the provider's headers,
/// the stream, the cost, then the annotations and their properties. A value the record does
/// not have is left out.
pub fn each_attribute(r: &CallRecord, mut emit: impl FnMut(KeyValue)) {
    fn int(v: u64) -> Value {
        Value::I64(i64::try_from(v).unwrap_or(i64::MAX))
    }
    fn text(v: &str) -> Value {
        Value::String(v.to_owned().into())
    }
    fn seconds(d: std::time::Duration) -> Value {
        Value::F64(d.as_secs_f64())
    }
    fn strings(items: impl Iterator<Item = StringValue>) -> Option<Value> {
        let values: Vec<StringValue> = items.collect();
        (!values.is_empty()).then_some(Value::Array(Array::String(values)))
    }
    fn array(items: &[String]) -> Option<Value> {
        strings(items.iter().map(|s| StringValue::from(s.clone())))
    }
    // A text most calls repeat, shared with the previous call's (see `repeated`).
    fn share(which: Repeated) -> impl Fn(&str) -> Value {
        move |v| repeated(which, v)
    }
    let mut put = |key: &'static str, value: Value| emit(KeyValue::new(key, value));
    // `key` with `value` (mapped by `to`), when there is a value.
    macro_rules! some {
        ($key:expr, $value:expr) => {
            if let Some(v) = $value {
                put($key, v);
            }
        };
        ($key:expr, $value:expr, $to:expr) => {
            some!($key, $value.map($to))
        };
    }

    some!(SERVER_PORT, r.server_port, |p: u16| Value::I64(p.into()));
    let q = &r.request;
    some!(GEN_AI_REQUEST_MAX_TOKENS, q.max_tokens, int);
    some!(GEN_AI_REQUEST_TEMPERATURE, q.temperature, Value::F64);
    some!(GEN_AI_REQUEST_TOP_P, q.top_p, Value::F64);
    some!(GEN_AI_REQUEST_FREQUENCY_PENALTY, q.frequency_penalty, Value::F64);
    some!(GEN_AI_REQUEST_PRESENCE_PENALTY, q.presence_penalty, Value::F64);
    some!(GEN_AI_REQUEST_SEED, q.seed, Value::I64);
    some!(GEN_AI_REQUEST_CHOICE_COUNT, q.choice_count.filter(|n| *n != 1), int);
    some!(GEN_AI_REQUEST_STOP_SEQUENCES, array(&q.stop_sequences));
    put(GEN_AI_REQUEST_STREAM, Value::Bool(q.stream));
    some!(
        OPENAI_REQUEST_SERVICE_TIER,
        q.service_tier.as_deref(),
        share(Repeated::RequestServiceTier)
    );

    let p = &r.response;
    some!(GEN_AI_RESPONSE_ID, p.id.as_deref(), text);
    some!(
        GEN_AI_RESPONSE_MODEL,
        p.model.as_deref(),
        share(Repeated::ResponseModel)
    );
    let finish_reasons = strings(p.finish_reasons.iter().map(|f| match f.as_static_str() {
        Some(known) => StringValue::from(known),
        None => StringValue::from(f.as_str().to_owned()),
    }));
    some!(GEN_AI_RESPONSE_FINISH_REASONS, finish_reasons);
    some!(
        OPENAI_RESPONSE_SERVICE_TIER,
        p.service_tier.as_deref(),
        share(Repeated::ResponseServiceTier)
    );
    some!(
        OPENAI_RESPONSE_SYSTEM_FINGERPRINT,
        p.system_fingerprint.as_deref(),
        share(Repeated::Fingerprint)
    );
    if let Some(u) = r.usage {
        put(GEN_AI_USAGE_INPUT_TOKENS, int(u.input_tokens));
        put(GEN_AI_USAGE_OUTPUT_TOKENS, int(u.output_tokens));
        some!(GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, u.cached_input_tokens, int);
        some!(
            GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS,
            u.cache_creation_input_tokens,
            int
        );
        some!(GEN_AI_USAGE_REASONING_OUTPUT_TOKENS, u.reasoning_tokens, int);
    }
    some!(HTTP_RESPONSE_STATUS_CODE, r.status, |s: u16| int(s.into()));

    let m = &r.meta;
    some!(OPENAI_REQUEST_ID, m.request_id(), text);
    some!(OPENAI_ORGANIZATION, m.organization(), share(Repeated::Organization));
    some!(OPENAI_API_VERSION, m.api_version(), share(Repeated::ApiVersion));
    some!(OPENAI_PROCESSING_MS, m.processing, |d: std::time::Duration| {
        Value::F64(d.as_secs_f64() * 1000.0)
    });
    some!(RATELIMIT_LIMIT_REQUESTS, m.requests.limit, int);
    some!(RATELIMIT_REMAINING_REQUESTS, m.requests.remaining, int);
    some!(RATELIMIT_RESET_REQUESTS, m.requests.reset, seconds);
    some!(RATELIMIT_LIMIT_TOKENS, m.tokens.limit, int);
    some!(RATELIMIT_REMAINING_TOKENS, m.tokens.remaining, int);
    some!(RATELIMIT_RESET_TOKENS, m.tokens.reset, seconds);

    if q.stream {
        some!(LLM_METER_TIME_TO_FIRST_CHUNK, r.timings.time_to_first_chunk, seconds);
        put(LLM_METER_CHUNK_COUNT, int(r.timings.chunks.into()));
    }
    if let Some(c) = r.cost {
        put(COST_INPUT_USD, Value::F64(c.input));
        put(COST_OUTPUT_USD, Value::F64(c.output));
        put(COST_TOTAL_USD, Value::F64(c.total));
    }
    if r.unpriced() {
        put(COST_UNPRICED, Value::Bool(true));
    }
    some!(LIMITS_BLOCKED, array(&r.blocked_limit_ids));

    let a = &r.annotations;
    some!(USE_CASE_ID, a.use_case_id(), text);
    some!(USE_CASE_VERSION, a.use_case_version(), text);
    some!(USE_CASE_STEP, a.use_case_step(), text);
    some!(USER_ID, a.user_id(), text);
    some!(ACCOUNT_NAME, a.account_name(), text);
    some!(LIMIT_IDS, array(a.limit_ids()));
    some!(REQUEST_TAGS, array(a.request_tags()));
    for (prefix, props) in [
        (USE_CASE_PROPERTIES_PREFIX, a.use_case_properties()),
        (REQUEST_PROPERTIES_PREFIX, a.request_properties()),
    ] {
        for (k, v) in props {
            emit(KeyValue::new(format!("{prefix}{k}"), v.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(value: &Value) -> Arc<str> {
        match value {
            Value::String(s) => Arc::from(s.as_str()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_repeated_value_is_the_previous_ones_and_a_new_one_replaces_it() {
        let first = repeated(Repeated::ResponseModel, "gpt-4o");
        let again = repeated(Repeated::ResponseModel, "gpt-4o");
        assert_eq!(shared(&first), shared(&again));
        // The same allocation: one string, counted by its users and the thread's cache.
        let cached = LAST_VALUES.with_borrow(|last| last[Repeated::ResponseModel as usize].clone().unwrap());
        assert_eq!(Arc::strong_count(&cached), 4, "two values, the cache, and this clone");
        assert_eq!(&*cached, "gpt-4o");

        let other = repeated(Repeated::ResponseModel, "gpt-4o-mini");
        assert_eq!(&*shared(&other), "gpt-4o-mini");
        assert_eq!(Arc::strong_count(&cached), 3, "no longer cached");
        // Slots are apart: another attribute with the same text is its own.
        let route = repeated(Repeated::Route, "gpt-4o-mini");
        assert_eq!(&*shared(&route), "gpt-4o-mini");
        assert_eq!(&*shared(&repeated(Repeated::ResponseModel, "")), "");
    }
}
