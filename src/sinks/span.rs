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
//! an unsampled span costs next to nothing. Or, for a meter from `Telemetry` whose spans go over
//! OTLP/HTTP, written straight from the record onto the export queue when the call ends
//! (`src/sinks/otlp_spans.rs`), the same span without the SDK's span objects.

use std::sync::LazyLock;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{SdkTracer, Span as OtelSpan};
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::names::*;
use crate::parse::annotations::Annotations;
use crate::record::{write_hex, CallRecord};
use crate::sinks::attributes::{
    each_attribute, opening_attributes, repeated, KeyValues, Repeated, OPENING_ATTRIBUTES, SPAN_ATTRIBUTES,
};
#[cfg(feature = "otlp-http")]
use crate::sinks::otlp_spans::QueuedSpan;

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
    opening_attributes(
        model,
        provider,
        server_address,
        annotations,
        &mut KeyValues(|kv| opening.push(kv)),
    );
    tracer
        .span_builder(joined(OPERATION_CHAT, model))
        .with_kind(SpanKind::Client)
        .with_attributes(opening)
        .start_with_context(tracer, parent)
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
#[allow(
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
    /// A span written straight from the record onto the OTLP/HTTP queue when it ends.
    #[cfg(feature = "otlp-http")]
    Queued(QueuedSpan),
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
            _ => &NO_SPAN,
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
            #[cfg(feature = "otlp-http")]
            CallSpan::Queued(span) => write_trace_context(span.span_context(), headers),
        }
    }

    /// Writes everything the record holds onto the span and ends it.
    pub fn finish(self, r: &CallRecord) {
        match self {
            CallSpan::Off => {}
            CallSpan::Tracing(span, cx) => record_on_span(&span, cx, r),
            CallSpan::Otel(mut span) => {
                if span.is_recording() {
                    each_attribute(r, &mut KeyValues(|kv| span.set_attribute(kv)));
                    if let Some(e) = r.error {
                        span.set_attribute(KeyValue::new(ERROR_TYPE, e.as_str()));
                        span.set_status(Status::error(""));
                    }
                }
                span.end();
            }
            #[cfg(feature = "otlp-http")]
            CallSpan::Queued(span) => span.finish(r),
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

/// Every attribute of the record beyond the ones the span was opened with, in one list.
pub fn attributes(r: &CallRecord) -> Vec<KeyValue> {
    let mut out = Vec::with_capacity(SPAN_ATTRIBUTES);
    each_attribute(r, &mut KeyValues(|kv| out.push(kv)));
    out
}
