//! OTLP/HTTP span export (feature `otlp-http`): the protobuf body is written straight from the
//! SDK's span data into one buffer.
//!
//! opentelemetry-otlp first converts every span into opentelemetry-proto's message structs (a
//! new `String` for each attribute key and value, a `Vec` for each id) and then encodes those.
//! On the proxy that conversion and encoding cost about 60 k instructions per call with two
//! spans, more than half of what the rest of a call costs (`bench/RESULTS.md`). Here each field
//! is written once, in the order and with the defaults prost uses, so the bytes are the ones
//! opentelemetry-otlp would send (checked by the unit tests against it).
//!
//! The transport follows the OTLP/HTTP specification and opentelemetry-otlp's defaults: `POST`
//! of `application/x-protobuf` to the signal's endpoint; retries on 429, 502, 503, 504 and on
//! network errors, with exponential backoff (100 ms doubling to 1.6 s, up to 100 ms of jitter,
//! at most 3 retries, a `Retry-After` in seconds honoured), all within the export timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;

use crate::sinks::attributes::{Attributes, Text};

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// Straight onto `out` (most varints are one byte: a push).
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

/// A `bytes` or `string` field; proto3 leaves an empty one out.
fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    if !bytes.is_empty() {
        len_prefixed(out, field, bytes);
    }
}

fn len_prefixed(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    tag(out, field, LEN);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn uint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(out, field, VARINT);
        varint(out, v);
    }
}

fn fixed64_field(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(out, field, FIXED64);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn fixed32_field(out: &mut Vec<u8>, field: u32, v: u32) {
    if v != 0 {
        tag(out, field, FIXED32);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// An embedded message, whose length is not known before `body` has written it.
fn message(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    sized_message(out, field, 1, body);
}

/// [`message`] with room for a length of `room` bytes kept in front of the body (1: up to 127
/// bytes, 2: up to 16,383, 3: up to 2 MiB); when the length needs more or fewer bytes, the body
/// is moved once to make it fit.
fn sized_message(out: &mut Vec<u8>, field: u32, room: usize, body: impl FnOnce(&mut Vec<u8>)) {
    tag(out, field, LEN);
    let at = out.len();
    out.resize(at + room, 0);
    body(out);
    let (prefix, n) = varint_bytes((out.len() - at - room) as u64);
    if n < room {
        out.drain(at + n..at + room);
    } else if n > room {
        out.splice(at + room..at + room, prefix[room..n].iter().copied());
    }
    out[at..at + n.min(room)].copy_from_slice(&prefix[..n.min(room)]);
}

/// A scalar attribute value, borrowed.
#[derive(Clone, Copy)]
enum Scalar<'a> {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(&'a str),
}

impl<'a> Scalar<'a> {
    /// `value` as a scalar; `None` for an array, or a kind this crate does not know yet.
    fn of(value: &'a Value) -> Option<Self> {
        Some(match value {
            Value::Bool(b) => Scalar::Bool(*b),
            Value::I64(i) => Scalar::Int(*i),
            Value::F64(f) => Scalar::Float(*f),
            Value::String(s) => Scalar::Text(s.as_str()),
            _ => return None,
        })
    }

    /// The length of what [`Self::write`] writes (its framing and text).
    fn len(self) -> usize {
        match self {
            Scalar::Bool(_) => 2,
            Scalar::Int(i) => 1 + varint_len(i as u64),
            Scalar::Float(_) => 9,
            Scalar::Text(s) => 1 + varint_len(s.len() as u64) + s.len(),
        }
    }

    /// A scalar `AnyValue`'s one field, written even when it holds the type's default (a
    /// oneof): its tag, then a number's bytes or a string's length and text.
    fn write(self, out: &mut Vec<u8>) {
        match self {
            Scalar::Bool(b) => {
                tag(out, 2, VARINT);
                out.push(u8::from(b));
            }
            Scalar::Int(i) => {
                tag(out, 3, VARINT);
                varint(out, i as u64);
            }
            Scalar::Float(f) => {
                tag(out, 4, FIXED64);
                out.extend_from_slice(&f.to_le_bytes());
            }
            Scalar::Text(s) => len_prefixed(out, 1, s.as_bytes()),
        }
    }
}

/// `AnyValue`: an array's values, or a scalar's one field; an empty `AnyValue` for a kind of
/// value this crate does not know yet, rather than a panic.
fn any_value(out: &mut Vec<u8>, value: &Value) {
    match (value, Scalar::of(value)) {
        (_, Some(scalar)) => scalar.write(out),
        (Value::Array(array), None) => message(out, 5, |out| array_values(out, array)),
        _ => {}
    }
}

/// `ArrayValue.values`, each an `AnyValue`.
fn array_values(out: &mut Vec<u8>, array: &Array) {
    fn each<T>(out: &mut Vec<u8>, items: &[T], scalar: impl Fn(&T) -> Scalar<'_>) {
        for item in items {
            message(out, 1, |out| scalar(item).write(out));
        }
    }
    match array {
        Array::Bool(items) => each(out, items, |b| Scalar::Bool(*b)),
        Array::I64(items) => each(out, items, |i| Scalar::Int(*i)),
        Array::F64(items) => each(out, items, |f| Scalar::Float(*f)),
        Array::String(items) => each(out, items, |s| Scalar::Text(s.as_str())),
        _ => {}
    }
}

/// A `string` field whose text is `parts` joined, without joining them first; proto3 leaves
/// an empty one out.
fn text_field(out: &mut Vec<u8>, field: u32, parts: &[&str]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > 0 {
        tag(out, field, LEN);
        varint(out, len as u64);
        for part in parts {
            out.extend_from_slice(part.as_bytes());
        }
    }
}

/// A `KeyValue` with a scalar value, its key `key` joined. Its length is known before it is
/// written, so it is written straight through, without a length to fill in afterwards. The
/// short form is inlined where it is called: with a constant key (every attribute the record
/// writes) the key's length is known there, and the key is copied without a call to `memcpy`.
#[inline(always)]
fn scalar_key_value(out: &mut Vec<u8>, field: u32, key: &[&str], value: Scalar<'_>) {
    let key_len: usize = key.iter().map(|p| p.len()).sum();
    let key_field = if key_len == 0 {
        0
    } else {
        1 + varint_len(key_len as u64) + key_len
    };
    let value_len = value.len();
    let len = key_field + 1 + varint_len(value_len as u64) + value_len;
    // Most attributes are short: every length fits one byte, and the framing around the key is
    // written as one piece of four bytes, the value's as one of two.
    if len < 0x80 && key_len > 0 && field < 16 {
        out.reserve(2 + len);
        out.extend_from_slice(&[(field << 3) as u8 | LEN, len as u8, (1 << 3) | LEN, key_len as u8]);
        for part in key {
            out.extend_from_slice(part.as_bytes());
        }
        out.extend_from_slice(&[(2 << 3) | LEN, value_len as u8]);
        value.write(out);
    } else {
        long_key_value(out, field, key, value, len);
    }
}

/// [`scalar_key_value`]'s general form, out of line: `len` is the `KeyValue`'s length.
#[inline(never)]
fn long_key_value(out: &mut Vec<u8>, field: u32, key: &[&str], value: Scalar<'_>, len: usize) {
    // Room for the whole `KeyValue` first (its tag and length take at most 15 bytes), so
    // writing it never grows `out` piece by piece.
    out.reserve(15 + len);
    tag(out, field, LEN);
    varint(out, len as u64);
    text_field(out, 1, key);
    tag(out, 2, LEN);
    varint(out, value.len() as u64);
    value.write(out);
}

fn attributes<'a>(out: &mut Vec<u8>, field: u32, attributes: impl IntoIterator<Item = (&'a str, &'a Value)>) {
    for (key, value) in attributes {
        match Scalar::of(value) {
            Some(scalar) => scalar_key_value(out, field, &[key], scalar),
            None => message(out, field, |out| {
                bytes_field(out, 1, key.as_bytes());
                message(out, 2, |out| any_value(out, value));
            }),
        }
    }
}

/// A varint's bytes on the stack, and how many there are.
fn varint_bytes(mut v: u64) -> ([u8; 10], usize) {
    let (mut bytes, mut len) = ([0; 10], 0);
    while v >= 0x80 {
        bytes[len] = (v as u8) | 0x80;
        len += 1;
        v >>= 7;
    }
    bytes[len] = v as u8;
    (bytes, len + 1)
}

/// Bytes of a varint.
fn varint_len(v: u64) -> usize {
    (u64::BITS - (v | 1).leading_zeros()).div_ceil(7) as usize
}

fn key_values(out: &mut Vec<u8>, field: u32, kvs: &[KeyValue]) {
    attributes(out, field, kvs.iter().map(|kv| (kv.key.as_str(), &kv.value)));
}

/// A span's attributes written straight into its `Span` message (field 9) as a record is read,
/// at most `room` of them; the rest are counted as dropped, as the SDK's span limit does.
pub(crate) struct SpanAttributes<'a> {
    out: &'a mut Vec<u8>,
    room: u32,
    dropped: u32,
}

impl<'a> SpanAttributes<'a> {
    pub(crate) fn new(out: &'a mut Vec<u8>, limit: u32) -> Self {
        SpanAttributes {
            out,
            room: limit,
            dropped: 0,
        }
    }

    /// Whether one more attribute fits; counts it as dropped when not.
    fn fits(&mut self) -> bool {
        if self.room == 0 {
            self.dropped += 1;
            return false;
        }
        self.room -= 1;
        true
    }

    #[inline(always)]
    fn scalar(&mut self, key: &[&str], value: Scalar<'_>) {
        if self.fits() {
            scalar_key_value(self.out, 9, key, value);
        }
    }

    /// `kvs`, as far as they fit.
    pub(crate) fn key_values(&mut self, kvs: &[KeyValue]) {
        for kv in kvs {
            if self.fits() {
                attributes(self.out, 9, [(kv.key.as_str(), &kv.value)]);
            }
        }
    }

    /// How many attributes did not fit.
    pub(crate) fn dropped(&self) -> u32 {
        self.dropped
    }
}

impl Attributes for SpanAttributes<'_> {
    #[inline(always)]
    fn int(&mut self, key: &'static str, value: i64) {
        self.scalar(&[key], Scalar::Int(value));
    }
    #[inline(always)]
    fn float(&mut self, key: &'static str, value: f64) {
        self.scalar(&[key], Scalar::Float(value));
    }
    #[inline(always)]
    fn flag(&mut self, key: &'static str, value: bool) {
        self.scalar(&[key], Scalar::Bool(value));
    }
    #[inline(always)]
    fn text(&mut self, key: &'static str, value: Text<'_>) {
        self.scalar(&[key], Scalar::Text(value.as_str()));
    }
    fn texts<'t>(&mut self, key: &'static str, values: impl ExactSizeIterator<Item = Text<'t>> + Clone) {
        if self.fits() {
            message(self.out, 9, |out| {
                bytes_field(out, 1, key.as_bytes());
                message(out, 2, |out| {
                    message(out, 5, |out| {
                        for value in values {
                            message(out, 1, |out| Scalar::Text(value.as_str()).write(out));
                        }
                    });
                });
            });
        }
    }
    fn property(&mut self, prefix: &'static str, name: &str, value: &str) {
        self.scalar(&[prefix, name], Scalar::Text(value));
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// `SpanFlags`: the W3C trace flags, plus "whether the parent is remote is known" and, when it
/// is, "the parent is remote".
fn span_flags(trace_flags: u8, parent_is_remote: bool) -> u32 {
    const HAS_IS_REMOTE: u32 = 0x100;
    const IS_REMOTE: u32 = 0x200;
    u32::from(trace_flags) | HAS_IS_REMOTE | if parent_is_remote { IS_REMOTE } else { 0 }
}

fn span_kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// What a `Span` message says besides its name, attributes, events and links.
pub(crate) struct SpanHead<'a> {
    pub(crate) context: &'a SpanContext,
    pub(crate) parent_span_id: SpanId,
    pub(crate) parent_is_remote: bool,
    pub(crate) kind: &'a SpanKind,
    pub(crate) start: SystemTime,
    pub(crate) end: SystemTime,
    pub(crate) status: &'a Status,
}

/// Writes the fields of a `Span` message, in number order as prost does: `head`, the name
/// (`name` joined), the attributes `attributes` writes (it returns how many it dropped), then
/// the events and links `events_and_links` writes (fields 11 to 14).
pub(crate) fn span_fields(
    out: &mut Vec<u8>,
    head: &SpanHead<'_>,
    name: &[&str],
    attributes: impl FnOnce(&mut Vec<u8>) -> u32,
    events_and_links: impl FnOnce(&mut Vec<u8>),
) {
    let cx = head.context;
    bytes_field(out, 1, &cx.trace_id().to_bytes());
    bytes_field(out, 2, &cx.span_id().to_bytes());
    bytes_field(out, 3, cx.trace_state().header().as_bytes());
    if head.parent_span_id != SpanId::INVALID {
        bytes_field(out, 4, &head.parent_span_id.to_bytes());
    }
    text_field(out, 5, name);
    uint_field(out, 6, span_kind(head.kind));
    fixed64_field(out, 7, nanos(head.start));
    fixed64_field(out, 8, nanos(head.end));
    let dropped = attributes(out);
    uint_field(out, 10, dropped.into());
    events_and_links(out);
    message(out, 15, |out| {
        let (code, text) = match head.status {
            Status::Unset => (0, ""),
            Status::Ok => (1, ""),
            Status::Error { description } => (2, description.as_ref()),
        };
        bytes_field(out, 2, text.as_bytes());
        uint_field(out, 3, code);
    });
    // Field 16 was added to the message later; prost writes fields in number order.
    fixed32_field(out, 16, span_flags(cx.trace_flags().to_u8(), head.parent_is_remote));
}

pub(crate) fn span(out: &mut Vec<u8>, s: &SpanData) {
    let head = SpanHead {
        context: &s.span_context,
        parent_span_id: s.parent_span_id,
        parent_is_remote: s.parent_span_is_remote,
        kind: &s.span_kind,
        start: s.start_time,
        end: s.end_time,
        status: &s.status,
    };
    let attributes = |out: &mut Vec<u8>| {
        key_values(out, 9, &s.attributes);
        s.dropped_attributes_count
    };
    span_fields(out, &head, &[&s.name], attributes, |out| {
        for event in s.events.iter() {
            message(out, 11, |out| {
                fixed64_field(out, 1, nanos(event.timestamp));
                bytes_field(out, 2, event.name.as_bytes());
                key_values(out, 3, &event.attributes);
                uint_field(out, 4, event.dropped_attributes_count.into());
            });
        }
        uint_field(out, 12, s.events.dropped_count.into());
        for link in s.links.iter() {
            let cx = &link.span_context;
            message(out, 13, |out| {
                bytes_field(out, 1, &cx.trace_id().to_bytes());
                bytes_field(out, 2, &cx.span_id().to_bytes());
                bytes_field(out, 3, cx.trace_state().header().as_bytes());
                key_values(out, 4, &link.attributes);
                uint_field(out, 5, link.dropped_attributes_count.into());
                fixed32_field(out, 6, span_flags(cx.trace_flags().to_u8(), cx.is_remote()));
            });
        }
        uint_field(out, 14, s.links.dropped_count.into());
    });
}

/// A `Span` message's counts of events and links dropped (fields 12 and 14), for a span
/// that keeps neither.
pub(crate) fn dropped_events_and_links(out: &mut Vec<u8>, events: u32, links: u32) {
    uint_field(out, 12, events.into());
    uint_field(out, 14, links.into());
}

/// One `Span` message (as `ScopeSpans.spans`, field 2) appended to `out`, its fields written
/// by `fields`: how the direct route queues a span.
pub(crate) fn scope_span(out: &mut Vec<u8>, fields: impl FnOnce(&mut Vec<u8>)) {
    sized_message(out, 2, 2, fields);
}

fn scope(out: &mut Vec<u8>, scope: &InstrumentationScope) {
    bytes_field(out, 1, scope.name().as_bytes());
    bytes_field(out, 2, scope.version().unwrap_or_default().as_bytes());
    attributes(out, 3, scope.attributes().map(|kv| (kv.key.as_str(), &kv.value)));
}

/// The `Resource` message of `resource` (its attributes in the resource's own order).
fn resource_message(resource: &Resource) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    attributes(&mut out, 1, resource.iter().map(|(k, v)| (k.as_str(), v)));
    out
}

/// Writes the `ExportTraceServiceRequest` of `spans` into `out`: one `ResourceSpans` with the
/// resource (`resource_message`, from [`resource_message`], and its schema URL), and one
/// `ScopeSpans` per instrumentation scope, in the order the scopes first appear.
fn export_request(out: &mut Vec<u8>, spans: &[SpanData], resource_message: &[u8], schema_url: &str) {
    // Scopes in order of first appearance, each with its spans' indices; a batch holds one or
    // two scopes, so a linear search beats hashing the scope.
    let mut scopes: Vec<(&InstrumentationScope, Vec<usize>)> = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        match scopes.iter_mut().find(|(scope, _)| **scope == s.instrumentation_scope) {
            Some((_, members)) => members.push(i),
            None => scopes.push((&s.instrumentation_scope, vec![i])),
        }
    }
    sized_message(out, 1, 3, |out| {
        len_prefixed(out, 1, resource_message);
        for (one_scope, members) in &scopes {
            sized_message(out, 2, 3, |out| {
                message(out, 1, |out| scope(out, one_scope));
                for &i in members {
                    sized_message(out, 2, 2, |out| span(out, &spans[i]));
                }
                bytes_field(out, 3, one_scope.schema_url().unwrap_or_default().as_bytes());
            });
        }
        bytes_field(out, 3, schema_url.as_bytes());
    });
}

/// Writes the `ExportTraceServiceRequest` of spans of one `scope`, already written as
/// `ScopeSpans.spans` fields ([`scope_span`]), as [`export_request`] would write them.
fn export_request_of_written(
    out: &mut Vec<u8>,
    spans: &[u8],
    one_scope: &InstrumentationScope,
    resource_message: &[u8],
    schema_url: &str,
) {
    sized_message(out, 1, 3, |out| {
        len_prefixed(out, 1, resource_message);
        sized_message(out, 2, 3, |out| {
            message(out, 1, |out| scope(out, one_scope));
            out.extend_from_slice(spans);
            bytes_field(out, 3, one_scope.schema_url().unwrap_or_default().as_bytes());
        });
        bytes_field(out, 3, schema_url.as_bytes());
    });
}

/// How export attempts are retried (opentelemetry-otlp's recommended policy).
const MAX_RETRIES: u32 = 3;
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_millis(1600);
const MAX_JITTER_MS: u64 = 100;

/// Why one attempt failed, and whether another may succeed.
#[derive(Debug)]
enum AttemptError {
    /// Worth another attempt, after at least the delay the server asked for.
    Retryable(String, Option<Duration>),
    Final(String),
}

/// The OTLP/HTTP span exporter.
#[derive(Debug)]
pub(crate) struct HttpSpanExporter {
    client: reqwest::blocking::Client,
    endpoint: String,
    headers: HeaderMap,
    timeout: Duration,
    resource_message: Vec<u8>,
    schema_url: String,
    shut_down: AtomicBool,
}

impl HttpSpanExporter {
    /// An exporter posting to `endpoint` (the full URL, `…/v1/traces`) with `headers`, each
    /// export bounded by `timeout`, retries included.
    pub(crate) fn new(endpoint: String, headers: HeaderMap, timeout: Duration) -> Result<Self, String> {
        reqwest::Url::parse(&endpoint).map_err(|e| format!("invalid OTLP traces endpoint {endpoint:?}: {e}"))?;
        // A blocking client owns a runtime of its own, which may not be started on a thread
        // that already runs one (the caller may be inside Tokio).
        let client = std::thread::spawn(move || reqwest::blocking::Client::builder().timeout(timeout).build())
            .join()
            .map_err(|_| "building the OTLP HTTP client panicked".to_owned())?
            .map_err(|e| format!("building the OTLP HTTP client failed: {e}"))?;
        Ok(HttpSpanExporter {
            client,
            endpoint,
            headers,
            timeout,
            resource_message: resource_message(&Resource::builder_empty().build()),
            schema_url: String::new(),
            shut_down: AtomicBool::new(false),
        })
    }

    fn attempt(&self, body: &bytes::Bytes, left: Duration) -> Result<(), AttemptError> {
        let response = self
            .client
            .post(&self.endpoint)
            .headers(self.headers.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .timeout(left)
            .body(body.clone())
            .send()
            .map_err(|e| AttemptError::Retryable(format!("OTLP span export failed: {e}"), None))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let message = format!("OTLP span export failed with HTTP status {}", status.as_u16());
        Err(match status.as_u16() {
            429 | 503 => {
                let asked = response
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                AttemptError::Retryable(message, asked)
            }
            502 | 504 => AttemptError::Retryable(message, None),
            _ => AttemptError::Final(message),
        })
    }

    /// Sends `body`, retrying as the module says, within the export timeout.
    fn send(&self, body: bytes::Bytes) -> OTelSdkResult {
        let start = Instant::now();
        let mut delay = FIRST_DELAY;
        let mut retries = 0;
        loop {
            let left = self.timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(OTelSdkError::Timeout(self.timeout));
            }
            let (message, asked) = match self.attempt(&body, left) {
                Ok(()) => return Ok(()),
                Err(AttemptError::Final(message)) => return Err(OTelSdkError::InternalFailure(message)),
                Err(AttemptError::Retryable(message, asked)) => (message, asked),
            };
            if retries == MAX_RETRIES {
                return Err(OTelSdkError::InternalFailure(message));
            }
            retries += 1;
            let jitter = Duration::from_millis(u64::from(start.elapsed().subsec_nanos()) % (MAX_JITTER_MS + 1));
            let wait = asked.map_or(delay, |asked| asked.max(delay)).saturating_add(jitter);
            let wait = if asked.is_some() { wait } else { wait.min(MAX_DELAY) };
            if wait >= self.timeout.saturating_sub(start.elapsed()) {
                return Err(OTelSdkError::InternalFailure(format!(
                    "{message}; the next retry would pass the export timeout"
                )));
            }
            std::thread::sleep(wait);
            delay = delay.saturating_mul(2).min(MAX_DELAY);
        }
    }

    /// The body of one export of `spans`.
    fn body(&self, spans: &[SpanData]) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.resource_message.len() + spans.len() * 512);
        export_request(&mut out, spans, &self.resource_message, &self.schema_url);
        out
    }
}

impl HttpSpanExporter {
    /// Exports spans of `scope` already written as `ScopeSpans.spans` fields ([`scope_span`]).
    pub(crate) fn export_written(&self, spans: &[u8], scope: &InstrumentationScope) -> OTelSdkResult {
        if self.shut_down.load(Ordering::Relaxed) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        let mut body = Vec::with_capacity(64 + self.resource_message.len() + spans.len());
        export_request_of_written(&mut body, spans, scope, &self.resource_message, &self.schema_url);
        self.send(body.into())
    }
}

impl SpanExporter for HttpSpanExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if self.shut_down.load(Ordering::Relaxed) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        self.send(self.body(&batch).into())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        if self.shut_down.swap(true, Ordering::Relaxed) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource_message = resource_message(resource);
        self.schema_url = resource.schema_url().unwrap_or_default().to_owned();
    }
}

/// Adds `key=value` pairs of an `OTEL_EXPORTER_OTLP_*HEADERS` value (comma-separated, values
/// percent-decoded) to `headers`; a pair that is not a valid header is an error that names it.
pub(crate) fn add_headers_from_env(value: &str, headers: &mut HeaderMap) -> Result<(), String> {
    for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, raw) = pair
            .split_once('=')
            .ok_or_else(|| format!("OTLP header {pair:?} is not key=value"))?;
        let decoded =
            percent_decode(raw.trim()).ok_or_else(|| format!("OTLP header {name:?}: bad percent-encoding"))?;
        let name =
            HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| format!("bad OTLP header name {name:?}"))?;
        let value = HeaderValue::from_str(&decoded).map_err(|_| format!("bad OTLP header value for {name:?}"))?;
        headers.insert(name, value);
    }
    Ok(())
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::borrow::Cow;
    use std::time::Duration;

    use opentelemetry::trace::{Event, Link, SpanContext, TraceFlags, TraceId, TraceState};
    use opentelemetry::StringValue;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message as _;

    use super::*;

    fn context(trace: u128, span: u64, sampled: bool, remote: bool, state: &str) -> SpanContext {
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let state = if state.is_empty() {
            TraceState::default()
        } else {
            TraceState::from_key_value(state.split(',').map(|kv| kv.split_once('=').unwrap())).unwrap()
        };
        SpanContext::new(TraceId::from(trace), SpanId::from(span), flags, remote, state)
    }

    /// Every kind of attribute value, including long strings (lengths over 127 bytes) and
    /// negative and zero numbers (defaults that a oneof still carries).
    fn every_value() -> Vec<KeyValue> {
        vec![
            KeyValue::new("s", "text"),
            KeyValue::new("empty", ""),
            KeyValue::new("long", "x".repeat(300)),
            KeyValue::new("i", -42_i64),
            KeyValue::new("zero", 0_i64),
            KeyValue::new("f", 0.25),
            KeyValue::new("b", false),
            KeyValue::new("bs", Value::Array(Array::Bool(vec![true, false]))),
            KeyValue::new("is", Value::Array(Array::I64(vec![1, -1, i64::MAX]))),
            KeyValue::new("fs", Value::Array(Array::F64(vec![1.5, -0.0]))),
            KeyValue::new(
                "ss",
                Value::Array(Array::String(vec![StringValue::from("a"), StringValue::from("")])),
            ),
            KeyValue::new("", "no key"),
        ]
    }

    fn span_data(i: u64, scope: &InstrumentationScope) -> SpanData {
        let start = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789 + i);
        let mut events = SpanEvents::default();
        if i == 2 {
            events.events = vec![
                Event::new("first chunk", start, every_value(), 3),
                Event::new("", start, vec![], 0),
            ];
        }
        events.dropped_count = (i % 3) as u32;
        let mut links = SpanLinks::default();
        if i == 3 {
            links.links = vec![Link::new(context(5, 6, true, true, "k=v"), every_value(), 1)];
        }
        SpanData {
            span_context: context(
                0x1234_5678_9abc_def0_1122_3344_5566_7788 + u128::from(i),
                7 + i,
                i % 2 == 0,
                false,
                if i == 1 { "vendor=value,other=x" } else { "" },
            ),
            parent_span_id: if i % 3 == 0 {
                SpanId::INVALID
            } else {
                SpanId::from(99 + i)
            },
            parent_span_is_remote: i % 4 == 1,
            span_kind: [
                SpanKind::Client,
                SpanKind::Server,
                SpanKind::Internal,
                SpanKind::Producer,
                SpanKind::Consumer,
            ][(i % 5) as usize]
                .clone(),
            name: Cow::Owned(format!("chat model-{i}")),
            start_time: start,
            end_time: start + Duration::from_micros(1500 * i),
            attributes: if i == 0 {
                every_value()
            } else {
                vec![KeyValue::new("n", i as i64)]
            },
            dropped_attributes_count: (i % 2) as u32,
            events,
            links,
            status: match i % 3 {
                0 => Status::Unset,
                1 => Status::Ok,
                _ => Status::error(if i == 2 { "" } else { "upstream timed out" }),
            },
            instrumentation_scope: scope.clone(),
        }
    }

    fn batch() -> Vec<SpanData> {
        let ours = InstrumentationScope::builder("llm-meter").with_version("0.1.0").build();
        let theirs = InstrumentationScope::builder("app")
            .with_schema_url("https://opentelemetry.io/schemas/1.30.0")
            .with_attributes([KeyValue::new("scope.attr", 1_i64)])
            .build();
        let bare = InstrumentationScope::builder("").build();
        (0..12)
            .map(|i| span_data(i, [&ours, &theirs, &ours, &bare][(i % 4) as usize]))
            .collect()
    }

    fn resource() -> Resource {
        Resource::builder()
            .with_service_name("svc")
            .with_attributes([
                KeyValue::new("deployment.environment", "test"),
                KeyValue::new("long", "y".repeat(200)),
            ])
            .with_schema_url([], "https://opentelemetry.io/schemas/1.28.0")
            .build()
    }

    /// What opentelemetry-otlp sends for `spans`: the official conversion, encoded by prost.
    fn official(spans: Vec<SpanData>, resource: &Resource) -> Vec<u8> {
        let resource_spans = group_spans_by_resource_and_scope(spans, &ResourceAttributesWithSchema::from(resource));
        ExportTraceServiceRequest { resource_spans }.encode_to_vec()
    }

    fn ours(spans: &[SpanData], resource: &Resource) -> Vec<u8> {
        let mut out = Vec::new();
        export_request(
            &mut out,
            spans,
            &resource_message(resource),
            resource.schema_url().unwrap_or_default(),
        );
        out
    }

    #[test]
    fn the_body_is_byte_for_byte_what_opentelemetry_otlp_sends() {
        let resource = resource();
        let spans = batch();
        let expected = official(spans.clone(), &resource);
        let got = ours(&spans, &resource);
        assert_eq!(
            ExportTraceServiceRequest::decode(got.as_slice()).unwrap(),
            ExportTraceServiceRequest::decode(expected.as_slice()).unwrap(),
            "decoded messages differ"
        );
        assert_same_bytes(&got, &expected);
    }

    fn assert_same_bytes(got: &[u8], expected: &[u8]) {
        let first = got.iter().zip(expected).position(|(a, b)| a != b);
        assert!(
            got == expected,
            "{} bytes against {}, first difference at byte {first:?}",
            got.len(),
            expected.len()
        );
    }

    #[test]
    fn varint_lengths_are_those_written() {
        for v in [0, 1, 127, 128, 16_383, 16_384, 1 << 35, u64::MAX / 2, u64::MAX] {
            let mut out = Vec::new();
            varint(&mut out, v);
            assert_eq!(varint_len(v), out.len(), "{v}");
        }
    }

    #[test]
    fn one_span_and_an_empty_resource_match_too() {
        let resource = Resource::builder_empty().build();
        let scope = InstrumentationScope::builder("llm-meter").build();
        for i in 0..5 {
            let spans = vec![span_data(i, &scope)];
            assert_same_bytes(&ours(&spans, &resource), &official(spans, &resource));
        }
    }

    #[test]
    fn a_message_length_takes_the_bytes_it_needs_whatever_room_was_kept() {
        for room in 1..=3 {
            for len in [0, 1, 127, 128, 300, 16_383, 16_384, 70_000, 2_097_151, 2_097_152] {
                let mut out = vec![0xAA];
                sized_message(&mut out, 3, room, |out| out.extend((0..len).map(|i| i as u8)));
                let mut prefix = vec![0xAA, (3 << 3) | LEN];
                varint(&mut prefix, len as u64);
                assert_eq!(&out[..prefix.len()], prefix.as_slice(), "length {len}, room {room}");
                assert_eq!(out.len(), prefix.len() + len);
                assert!(out[prefix.len()..].iter().enumerate().all(|(i, b)| *b == i as u8));
            }
        }
    }

    /// A collector on 127.0.0.1 that answers the n-th request with `answers[n]` (status and
    /// extra header lines; past the end, 200) and keeps each request's head and body.
    /// A collector on a port of its own: its URL, and each request's head and body.
    pub(crate) fn collector(
        answers: Vec<(u16, &'static str)>,
    ) -> (String, std::sync::mpsc::Receiver<(String, Vec<u8>)>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut answers = answers.into_iter();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let mut reader = BufReader::new(stream);
                loop {
                    let mut head = String::new();
                    while !head.ends_with("\r\n\r\n") {
                        if reader.read_line(&mut head).unwrap_or(0) == 0 {
                            break;
                        }
                    }
                    if head.is_empty() {
                        break;
                    }
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    let mut body = vec![0; len];
                    reader.read_exact(&mut body).unwrap();
                    let (status, extra) = answers.next().unwrap_or((200, ""));
                    let _ = tx.send((head, body));
                    let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n{extra}\r\n");
                    if reader.get_mut().write_all(answer.as_bytes()).is_err() {
                        break;
                    }
                }
            }
        });
        (url, rx)
    }

    fn exporter(url: String, timeout: Duration, resource: &Resource) -> HttpSpanExporter {
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", HeaderValue::from_static("collector-key"));
        let mut exporter = HttpSpanExporter::new(url, headers, timeout).unwrap();
        exporter.set_resource(resource);
        exporter
    }

    fn export(exporter: &HttpSpanExporter, spans: Vec<SpanData>) -> OTelSdkResult {
        use futures_util::FutureExt as _;
        exporter
            .export(spans)
            .now_or_never()
            .expect("the export runs on the calling thread")
    }

    #[test]
    fn an_export_posts_the_body_with_its_headers_and_retries_what_the_spec_says_to() {
        let (url, rx) = collector(vec![(503, ""), (502, ""), (429, "retry-after: 0\r\n")]);
        // One resource for both sides: its attributes are in a hash map's order.
        let resource = resource();
        let exporter = exporter(url, Duration::from_secs(10), &resource);
        export(&exporter, batch()).unwrap();
        let requests: Vec<_> = rx.try_iter().collect();
        assert_eq!(
            requests.len(),
            4,
            "three retries after the first attempt, the last accepted"
        );
        let expected = official(batch(), &resource);
        for (head, body) in &requests {
            assert!(head.starts_with("POST /v1/traces HTTP/1.1\r\n"), "{head}");
            let head = head.to_ascii_lowercase();
            assert!(head.contains("content-type: application/x-protobuf\r\n"), "{head}");
            assert!(head.contains("x-api-key: collector-key\r\n"), "{head}");
            assert_same_bytes(body, &expected);
        }
    }

    #[test]
    fn retries_end_after_three_and_a_refusal_is_not_retried() {
        let (url, rx) = collector(vec![(504, ""); 5]);
        assert!(export(&exporter(url, Duration::from_secs(10), &resource()), batch()).is_err());
        assert_eq!(rx.try_iter().count(), 4);

        let (url, rx) = collector(vec![(400, "")]);
        assert!(export(&exporter(url, Duration::from_secs(10), &resource()), batch()).is_err());
        assert_eq!(rx.try_iter().count(), 1);
    }

    #[test]
    fn a_retry_after_past_the_timeout_fails_the_export_without_waiting() {
        let (url, rx) = collector(vec![(429, "retry-after: 30\r\n")]);
        let started = Instant::now();
        let result = export(&exporter(url, Duration::from_secs(3), &resource()), batch());
        assert!(result.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "gave up at once, not after 30 s"
        );
        assert_eq!(rx.try_iter().count(), 1);
    }

    #[test]
    fn a_collector_that_is_down_fails_the_export_within_its_timeout_and_shutdown_is_final() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let exporter = exporter(
            format!("http://127.0.0.1:{port}/v1/traces"),
            Duration::from_secs(2),
            &resource(),
        );
        let started = Instant::now();
        assert!(export(&exporter, batch()).is_err());
        assert!(started.elapsed() < Duration::from_secs(3));
        exporter.shutdown().unwrap();
        assert!(matches!(export(&exporter, batch()), Err(OTelSdkError::AlreadyShutdown)));
        assert!(HttpSpanExporter::new("not a url".into(), HeaderMap::new(), Duration::from_secs(1)).is_err());
    }

    #[test]
    fn header_variables_are_pairs_with_percent_decoded_values() {
        let mut headers = HeaderMap::new();
        add_headers_from_env(" x-api-key = s3cret ,x-tenant=acme%2Cinc,,", &mut headers).unwrap();
        assert_eq!(headers["x-api-key"], "s3cret");
        assert_eq!(headers["x-tenant"], "acme,inc");
        for bad in ["novalue", "x=%zz", "bad name=1", "x=%e2%28"] {
            assert!(add_headers_from_env(bad, &mut HeaderMap::new()).is_err(), "{bad}");
        }
    }
}
