//! Spans written straight from the record into OTLP (feature `otlp-http`): the route of a meter
//! built from [`Telemetry`](crate::Telemetry) when spans go to a collector over OTLP/HTTP.
//!
//! On the SDK's route a span lives as `SpanData`: its attributes built as `KeyValue`s, the whole
//! of it moved through the batch processor's channel to the exporter's thread, encoded there
//! and freed. That cost about 22 k instructions per proxied call with its two spans, as much as
//! all the proxy's other telemetry together (`bench/RESULTS.md`). Here a span holds only its
//! ids while it is open. They are chosen when it starts as the SDK's tracer chooses them: the
//! same id generator, and the same sampler, built from `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG` by the SDK's own configuration. When the span ends, its `Span`
//! message is written from the record, attribute by attribute, into a buffer the thread keeps,
//! and copied onto a bounded queue.
//!
//! The queue works as the SDK's batch processor does, with the same settings: at most
//! [`TelemetryBuilder::span_queue`](crate::TelemetryBuilder::span_queue) spans (default 2,048;
//! more are dropped and counted), sent by a thread of its own in batches of
//! `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (512) or every `OTEL_BSP_SCHEDULE_DELAY` (5 s), each export
//! bounded by the export timeout. Flush and shutdown reach it through [`Telemetry`]. The span
//! limit `OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT` (128) holds as on the SDK's spans.
//!
//! The SDK's samplers decide on the parent and the trace id alone; they are handed the span's
//! kind and operation (`chat`, or the server span's method) rather than its full name, and no
//! attributes.
//!
//! [`Telemetry`]: crate::Telemetry

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{Config, IdGenerator, SamplingDecision, ShouldSample};

use crate::names::{ERROR_TYPE, HTTP_REQUEST_METHOD, HTTP_ROUTE, OPERATION_CHAT};
use crate::record::CallRecord;
use crate::sinks::attributes::{each_attribute, opening_attributes, Attributes, Text};
use crate::sinks::batching::Batching;
use crate::sinks::export_stats::ExportStats;
use crate::sinks::otlp_http::{
    dropped_events_and_links, scope_span, span_fields, HttpSpanExporter, SpanAttributes, SpanHead,
};

/// The direct route's spans: ids and sampling for new spans, and the queue their messages go
/// to. Cheap to clone; the last clone dropped stops the queue's thread once it has sent what it
/// holds.
#[derive(Clone, Debug)]
pub(crate) struct OtlpSpans {
    inner: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    sampler: Box<dyn ShouldSample>,
    ids: Box<dyn IdGenerator>,
    attribute_limit: u32,
    queue: Arc<Queue>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.queue.stop();
    }
}

/// The queue and what its thread needs.
#[derive(Debug)]
struct Queue {
    state: Mutex<State>,
    /// Wakes the thread: a batch is full, a flush is asked for, or the queue stops.
    work: Condvar,
    /// Wakes flushes and shutdowns waiting on the thread.
    done: Condvar,
    shut_down: AtomicBool,
    exporter: HttpSpanExporter,
    scope: InstrumentationScope,
    stats: Arc<ExportStats>,
    batching: Batching,
}

#[derive(Debug, Default)]
struct State {
    /// `Span` messages of the batch being filled, and how many.
    open: Vec<u8>,
    open_spans: usize,
    /// Full batches waiting for the thread.
    full: VecDeque<(Vec<u8>, usize)>,
    /// Spans in `open` and `full`.
    queued: usize,
    flushes_asked: u64,
    flushes_done: u64,
    stopping: bool,
    /// The thread has sent what it held and ended.
    stopped: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues one span's message, or drops it when the queue is full or stopped.
    fn push(&self, span: &[u8]) {
        self.stats.span_ended();
        let mut state = self.lock();
        if state.stopping || state.queued >= self.batching.max_queue {
            drop(state);
            self.stats.span_dropped();
            return;
        }
        state.open.extend_from_slice(span);
        state.open_spans += 1;
        state.queued += 1;
        if state.open_spans >= self.batching.max_batch {
            state.seal();
            self.work.notify_one();
        }
    }

    /// The queue's thread: sends each full batch at once, and what is open when the delay has
    /// passed, a flush is asked for, or the queue stops.
    fn run(&self) {
        let mut state = self.lock();
        loop {
            let due = Instant::now() + self.batching.delay;
            while state.full.is_empty() && state.flushes_asked == state.flushes_done && !state.stopping {
                let left = due.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                state = self
                    .work
                    .wait_timeout(state, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            let (flushes, stopping) = (state.flushes_asked, state.stopping);
            state.seal();
            let batches = std::mem::take(&mut state.full);
            state.queued -= batches.iter().map(|(_, n)| n).sum::<usize>();
            drop(state);
            for (spans, n) in batches {
                let result = self.exporter.export_written(&spans, &self.scope);
                self.stats.spans_sent(n as u64, result.is_ok());
                if let Err(e) = result {
                    tracing::debug!(target: "llm_meter", "span export failed: {e}");
                }
            }
            state = self.lock();
            state.flushes_done = state.flushes_done.max(flushes);
            if stopping {
                state.stopped = true;
                self.shut_down.store(true, Ordering::Relaxed);
                self.done.notify_all();
                return;
            }
            self.done.notify_all();
        }
    }

    /// Sends what is queued and waits for it, at most `timeout`.
    fn flush(&self, timeout: Duration) -> Result<(), String> {
        let mut state = self.lock();
        if state.stopped {
            return Ok(());
        }
        state.flushes_asked += 1;
        let ticket = state.flushes_asked;
        self.work.notify_one();
        self.wait(state, timeout, |s| s.flushes_done >= ticket || s.stopped)
            .map_err(|()| format!("span flush did not finish within {timeout:?}"))
    }

    /// Stops taking spans; the thread sends what is queued and ends.
    fn stop(&self) {
        let mut state = self.lock();
        state.stopping = true;
        self.work.notify_one();
    }

    /// [`Self::stop`], then waits for the thread to send what it held, at most `timeout`.
    fn shutdown(&self, timeout: Duration) -> Result<(), String> {
        self.stop();
        let state = self.lock();
        self.wait(state, timeout, |s| s.stopped)
            .map_err(|()| format!("span shutdown did not finish within {timeout:?}"))
    }

    fn wait(
        &self,
        mut state: MutexGuard<'_, State>,
        timeout: Duration,
        until: impl Fn(&State) -> bool,
    ) -> Result<(), ()> {
        let deadline = Instant::now() + timeout;
        while !until(&state) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(());
            }
            state = self
                .done
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Ok(())
    }
}

impl State {
    /// Moves the open batch, if it holds any span, behind the full ones.
    fn seal(&mut self) {
        if self.open_spans > 0 {
            let spans = std::mem::take(&mut self.open);
            self.full.push_back((spans, std::mem::take(&mut self.open_spans)));
        }
    }
}

thread_local! {
    /// The buffer a span's message is written into on this thread before it is queued.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl OtlpSpans {
    /// Starts the queue's thread, sending through `exporter`.
    pub(crate) fn start(
        exporter: HttpSpanExporter,
        scope: InstrumentationScope,
        stats: Arc<ExportStats>,
        batching: Batching,
    ) -> Result<Self, String> {
        let queue = Arc::new(Queue {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            shut_down: AtomicBool::new(false),
            exporter,
            scope,
            stats,
            batching,
        });
        let runs = queue.clone();
        std::thread::Builder::new()
            .name("llm-meter-spans".into())
            .spawn(move || runs.run())
            .map_err(|e| format!("starting the span export thread failed: {e}"))?;
        let config = Config::default();
        Ok(OtlpSpans {
            inner: Arc::new(Handle {
                sampler: config.sampler,
                ids: config.id_generator,
                attribute_limit: config.span_limits.max_attributes_per_span,
                queue,
            }),
        })
    }

    /// Sends what is queued, waiting at most `timeout`.
    pub(crate) fn flush(&self, timeout: Duration) -> Result<(), String> {
        self.inner.queue.flush(timeout)
    }

    /// Stops taking spans and sends what is queued, waiting at most `timeout`.
    pub(crate) fn shutdown(&self, timeout: Duration) -> Result<(), String> {
        self.inner.queue.shutdown(timeout)
    }

    /// Ids and the sampling decision of a new span under `parent`, as the SDK's tracer makes
    /// them.
    fn begin(&self, parent: &Context, kind: &SpanKind, operation: &str) -> Begun {
        let h = &*self.inner;
        if parent.is_telemetry_suppressed() || h.queue.shut_down.load(Ordering::Relaxed) {
            return Begun {
                context: SpanContext::empty_context(),
                parent_span_id: SpanId::INVALID,
                parent_is_remote: false,
            };
        }
        let span_id = h.ids.new_span_id();
        let parent_span = parent.span();
        let psc = parent_span.span_context();
        let has_parent = psc.is_valid();
        let trace_id = if has_parent {
            psc.trace_id()
        } else {
            h.ids.new_trace_id()
        };
        let result = h
            .sampler
            .should_sample(Some(parent), trace_id, operation, kind, &[], &[]);
        let parent_flags = if has_parent {
            psc.trace_flags()
        } else {
            TraceFlags::default()
        };
        let flags = match result.decision {
            SamplingDecision::RecordAndSample => parent_flags.with_sampled(true),
            SamplingDecision::RecordOnly => parent_flags.with_sampled(false),
            SamplingDecision::Drop => TraceFlags::default(),
        };
        Begun {
            context: SpanContext::new(trace_id, span_id, flags, false, result.trace_state),
            parent_span_id: if has_parent { psc.span_id() } else { SpanId::INVALID },
            parent_is_remote: has_parent && psc.is_remote(),
        }
    }

    /// Opens a call's `chat` client span under `parent`.
    pub(crate) fn start_chat(&self, parent: &Context) -> QueuedSpan {
        QueuedSpan {
            begun: self.begin(parent, &SpanKind::Client, OPERATION_CHAT),
            spans: self.clone(),
        }
    }

    /// Opens the server span of one request the proxy serves (`{method} {route}`) under
    /// `parent` (the caller's trace context, or none): the context holding it, which ends it
    /// when its last clone is dropped.
    pub(crate) fn start_server(&self, parent: Context, method: &str, route: &str) -> Context {
        let begun = self.begin(&parent, &SpanKind::Server, method);
        let recording = begun.context.is_sampled();
        let mut name = String::with_capacity(method.len() + 1 + route.len());
        name.push_str(method);
        name.push(' ');
        name.push_str(route);
        parent.with_span(ServerSpan {
            begun,
            spans: recording.then(|| self.clone()),
            start: SystemTime::now(),
            method_route: name,
            method_len: method.len(),
            renamed: None,
            status: Status::Unset,
            attributes: Vec::new(),
            dropped_events: 0,
            dropped_links: 0,
        })
    }

    /// Writes one span's message with `fields` and queues it.
    fn queue(&self, fields: impl FnOnce(&mut Vec<u8>)) {
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            scope_span(scratch, fields);
            self.inner.queue.push(scratch);
        });
    }
}

/// A span's ids, chosen at its start, and its parent's.
#[derive(Debug)]
struct Begun {
    context: SpanContext,
    parent_span_id: SpanId,
    parent_is_remote: bool,
}

impl Begun {
    fn head<'a>(&'a self, kind: &'a SpanKind, start: SystemTime, end: SystemTime, status: &'a Status) -> SpanHead<'a> {
        SpanHead {
            context: &self.context,
            parent_span_id: self.parent_span_id,
            parent_is_remote: self.parent_is_remote,
            kind,
            start,
            end,
            status,
        }
    }
}

/// A call's span on the direct route, open: its ids, nothing else.
#[derive(Debug)]
pub struct QueuedSpan {
    begun: Begun,
    spans: OtlpSpans,
}

impl QueuedSpan {
    /// The span's context (for `traceparent`).
    pub(crate) fn span_context(&self) -> &SpanContext {
        &self.begun.context
    }

    /// Ends the span: when sampled, writes its message from the record and queues it. It
    /// started at the record's start and lasted the call's duration.
    pub(crate) fn finish(self, r: &CallRecord) {
        if !self.begun.context.is_sampled() {
            return;
        }
        let status = match r.error {
            Some(_) => Status::error(""),
            None => Status::Unset,
        };
        let start = r.timings.started_at;
        let head = self
            .begun
            .head(&SpanKind::Client, start, start + r.timings.duration, &status);
        let limit = self.spans.inner.attribute_limit;
        self.spans.queue(|out| {
            let name = [OPERATION_CHAT, " ", r.request.model.as_str()];
            span_fields(out, &head, &name, |out| write_chat_attributes(out, limit, r), |_| {});
        });
    }
}

/// A chat span's attributes, in the order the SDK's route sets them: the opening ones, the
/// record's, then `error.type`. Returns how many did not fit under `limit`.
fn write_chat_attributes(out: &mut Vec<u8>, limit: u32, r: &CallRecord) -> u32 {
    let mut to = SpanAttributes::new(out, limit);
    opening_attributes(
        &r.request.model,
        &r.provider,
        &r.server_address,
        &r.annotations,
        &mut to,
    );
    each_attribute(r, &mut to);
    if let Some(e) = r.error {
        to.text(ERROR_TYPE, Text::Static(e.as_str()));
    }
    to.dropped()
}

/// The proxy's server span on the direct route, held by the request's context; its message is
/// written when it ends (at the latest when the context's last clone is dropped).
#[derive(Debug)]
struct ServerSpan {
    begun: Begun,
    /// Where it goes when it ends; `None` once ended, or when not sampled.
    spans: Option<OtlpSpans>,
    start: SystemTime,
    /// `{method} {route}` (the name, unless renamed), and where the method ends.
    method_route: String,
    method_len: usize,
    renamed: Option<Cow<'static, str>>,
    status: Status,
    /// Attributes set on it after its start.
    attributes: Vec<KeyValue>,
    dropped_events: u32,
    dropped_links: u32,
}

impl opentelemetry::trace::Span for ServerSpan {
    /// Events are not kept on this span; each is counted as dropped.
    fn add_event_with_timestamp<T>(&mut self, _name: T, _timestamp: SystemTime, _attributes: Vec<KeyValue>)
    where
        T: Into<Cow<'static, str>>,
    {
        self.dropped_events += 1;
    }
    fn span_context(&self) -> &SpanContext {
        &self.begun.context
    }
    fn is_recording(&self) -> bool {
        self.spans.is_some()
    }
    fn set_attribute(&mut self, attribute: KeyValue) {
        if self.is_recording() {
            self.attributes.push(attribute);
        }
    }
    fn set_status(&mut self, status: Status) {
        if status > self.status {
            self.status = status;
        }
    }
    fn update_name<T>(&mut self, new_name: T)
    where
        T: Into<Cow<'static, str>>,
    {
        self.renamed = Some(new_name.into());
    }
    /// Links are not kept on this span; each is counted as dropped.
    fn add_link(&mut self, _span_context: SpanContext, _attributes: Vec<KeyValue>) {
        self.dropped_links += 1;
    }
    fn end_with_timestamp(&mut self, end: SystemTime) {
        let Some(spans) = self.spans.take() else {
            return;
        };
        let head = self.begun.head(&SpanKind::Server, self.start, end, &self.status);
        let limit = spans.inner.attribute_limit;
        let (method, route) = self.method_route.split_at(self.method_len);
        let route = &route[1..];
        let name = self.renamed.as_deref().unwrap_or(&self.method_route);
        spans.queue(|out| {
            let attributes = |out: &mut Vec<u8>| {
                let mut to = SpanAttributes::new(out, limit);
                to.text(HTTP_REQUEST_METHOD, Text::Of(method));
                to.text(HTTP_ROUTE, Text::Of(route));
                to.key_values(&self.attributes);
                to.dropped()
            };
            span_fields(out, &head, &[name], attributes, |out| {
                dropped_events_and_links(out, self.dropped_events, self.dropped_links);
            });
        });
    }
}

impl Drop for ServerSpan {
    fn drop(&mut self) {
        opentelemetry::trace::Span::end(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use opentelemetry::trace::{TraceId, TraceState, TracerProvider as _};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler, SdkTracerProvider, SpanData};
    use prost::Message as _;

    use crate::parse::annotations::Annotations;
    use crate::parse::provider::{FinishReason, ProviderMeta, RateLimit, ResponseFacts, Usage};
    use crate::record::pricing::Cost;
    use crate::record::{ErrorType, RequestFacts};
    use crate::sinks::otlp_http::{span, tests::collector};
    use crate::sinks::span::{start_chat_span_on, start_server_span_on, CallSpan};

    /// A record with every attribute the span can carry, properties included; one value (the
    /// step) is too long for a one-byte length, so it takes the framing's long way.
    fn full_record(error: Option<ErrorType>) -> CallRecord {
        let annotations = Annotations::builder()
            .use_case_name("support.reply")
            .use_case_id("uc-1")
            .use_case_version("3")
            .use_case_step("draft-".repeat(30))
            .use_case_property("team", "care")
            .user_id("user-7")
            .account_name("acme")
            .limit_ids(["daily", "monthly"])
            .request_tags(["beta", "eu"])
            .request_property("ticket", "T-42")
            .build()
            .unwrap();
        let request = RequestFacts {
            model: "gpt-4o".into(),
            stream: true,
            max_tokens: Some(256),
            temperature: Some(0.2),
            top_p: Some(0.9),
            frequency_penalty: Some(0.1),
            presence_penalty: Some(-0.1),
            seed: Some(-5),
            choice_count: Some(2),
            stop_sequences: vec!["END".into(), String::new()],
            service_tier: Some("auto".into()),
            ..RequestFacts::default()
        };
        let mut r = CallRecord::new(
            annotations,
            request,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        );
        r.provider = Arc::from("openai");
        r.server_address = Arc::from("api.openai.com");
        r.server_port = Some(443);
        r.status = Some(200);
        let mut headers = http::HeaderMap::new();
        for (k, v) in [
            ("x-request-id", "req_1"),
            ("openai-organization", "org-1"),
            ("openai-version", "2020-10-01"),
            ("openai-processing-ms", "412"),
        ] {
            headers.insert(k, v.parse().unwrap());
        }
        r.meta = ProviderMeta::from_headers(&headers);
        let limits = |limit, remaining, reset| RateLimit {
            limit: Some(limit),
            remaining: Some(remaining),
            reset: Some(Duration::from_millis(reset)),
        };
        r.meta.requests = limits(500, 499, 120);
        r.meta.tokens = limits(30_000, 29_000, 2_000);
        r.response = ResponseFacts {
            id: Some("chatcmpl-1".into()),
            model: Some("gpt-4o-2024-08-06".into()),
            finish_reasons: vec![FinishReason::Stop, FinishReason::Other("odd".into())],
            service_tier: Some("default".into()),
            system_fingerprint: Some("fp_1".into()),
            ..ResponseFacts::default()
        };
        r.usage = Some(Usage {
            input_tokens: 12,
            output_tokens: 34,
            cached_input_tokens: Some(4),
            reasoning_tokens: Some(8),
            ..Usage::default()
        });
        r.timings.duration = Duration::from_millis(850);
        r.timings.time_to_first_chunk = Some(Duration::from_millis(120));
        r.timings.chunks = 9;
        r.cost = Some(Cost {
            input: 0.00003,
            output: 0.00034,
            total: 0.00037,
        });
        r.blocked_limit_ids = vec!["daily".into()];
        r.error = error;
        r
    }

    fn parent() -> Context {
        let state = TraceState::from_key_value([("vendor", "v1")]).unwrap();
        let sc = SpanContext::new(
            TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
            SpanId::from(0x00f0_67aa_0ba9_02b7),
            TraceFlags::SAMPLED,
            true,
            state,
        );
        Context::new().with_remote_span_context(sc)
    }

    /// The SDK's route: a provider keeping what it ends, with `limit` attributes per span.
    fn sdk(limit: u32, sampler: Sampler) -> (SdkTracerProvider, InMemorySpanExporter) {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .with_max_attributes_per_span(limit)
            .with_sampler(sampler)
            .build();
        (provider, exporter)
    }

    fn encoded(s: &SpanData) -> Vec<u8> {
        let mut out = Vec::new();
        span(&mut out, s);
        out
    }

    fn head_of(s: &SpanData) -> (Begun, SystemTime, SystemTime) {
        let begun = Begun {
            context: s.span_context.clone(),
            parent_span_id: s.parent_span_id,
            parent_is_remote: s.parent_span_is_remote,
        };
        (begun, s.start_time, s.end_time)
    }

    #[test]
    fn a_chat_span_written_from_its_record_is_the_sdk_routes_span_byte_for_byte() {
        // Every attribute (51, properties included), with and without an error; under a limit that
        // keeps them all, and one that drops some.
        for (limit, error) in [(128, None), (128, Some(ErrorType::Status(429))), (20, None)] {
            let r = full_record(error);
            let (provider, exporter) = sdk(limit, Sampler::AlwaysOn);
            let tracer = provider.tracer("llm-meter");
            let on_sdk = start_chat_span_on(
                &tracer,
                &r.request.model,
                &r.provider,
                &r.server_address,
                &r.annotations,
                &parent(),
                r.request.stream,
            );
            CallSpan::Otel(on_sdk).finish(&r);
            let data = exporter.get_finished_spans().unwrap().pop().unwrap();
            assert_eq!(data.dropped_attributes_count > 0, limit == 20, "{limit}");

            let (begun, start, end) = head_of(&data);
            let status = if error.is_some() {
                Status::error("")
            } else {
                Status::Unset
            };
            let head = begun.head(&SpanKind::Client, start, end, &status);
            let mut ours = Vec::new();
            span_fields(
                &mut ours,
                &head,
                &[OPERATION_CHAT, " ", &r.request.model],
                |out| write_chat_attributes(out, limit, &r),
                |_| {},
            );
            assert_eq!(ours, encoded(&data), "limit {limit}, error {error:?}");
        }
    }

    #[test]
    fn a_server_span_in_its_context_is_the_sdk_routes_server_span_byte_for_byte() {
        let (provider, exporter) = sdk(128, Sampler::AlwaysOn);
        let tracer = provider.tracer("llm-meter");
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        drop(start_server_span_on(&tracer, "POST", "/v1/chat/completions", &headers));
        let data = exporter.get_finished_spans().unwrap().pop().unwrap();

        let (begun, start, end) = head_of(&data);
        let status = Status::Unset;
        let head = begun.head(&SpanKind::Server, start, end, &status);
        let mut ours = Vec::new();
        span_fields(
            &mut ours,
            &head,
            &["POST /v1/chat/completions"],
            |out| {
                let mut to = SpanAttributes::new(out, 128);
                to.text(HTTP_REQUEST_METHOD, Text::Of("POST"));
                to.text(HTTP_ROUTE, Text::Of("/v1/chat/completions"));
                to.dropped()
            },
            |out| dropped_events_and_links(out, 0, 0),
        );
        assert_eq!(ours, encoded(&data));
    }

    /// Spans on the direct route, sent to `url` with these settings and `sampler`.
    fn direct(url: &str, sampler: Sampler, batching: Batching) -> (OtlpSpans, Arc<ExportStats>) {
        let exporter = HttpSpanExporter::new(url.to_owned(), http::HeaderMap::new(), Duration::from_secs(2)).unwrap();
        let stats = Arc::new(ExportStats::default());
        let spans = OtlpSpans::start(
            exporter,
            InstrumentationScope::builder("llm-meter").build(),
            stats.clone(),
            batching,
        )
        .unwrap();
        let mut handle = Arc::try_unwrap(spans.inner).unwrap();
        handle.sampler = Box::new(sampler);
        (
            OtlpSpans {
                inner: Arc::new(handle),
            },
            stats,
        )
    }

    fn no_collector() -> String {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        format!("http://127.0.0.1:{port}/v1/traces")
    }

    const SLOW: Batching = Batching {
        max_queue: 8,
        max_batch: 8,
        delay: Duration::from_secs(3600),
    };

    #[test]
    fn ids_and_sampling_decisions_are_the_sdk_tracers() {
        use opentelemetry::trace::{Span as _, Tracer as _};
        let unsampled = Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(7),
            SpanId::from(9),
            TraceFlags::default(),
            true,
            TraceState::default(),
        ));
        let samplers = || {
            [
                Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
                Sampler::AlwaysOff,
                Sampler::TraceIdRatioBased(0.5),
                Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            ]
        };
        let url = no_collector();
        for (ours, theirs) in samplers().into_iter().zip(samplers()) {
            let name = format!("{ours:?}");
            let (spans, _) = direct(&url, ours, SLOW);
            let (provider, _) = sdk(128, theirs);
            let tracer = provider.tracer("llm-meter");
            for parent in [parent(), unsampled.clone()] {
                let got = spans.begin(&parent, &SpanKind::Client, OPERATION_CHAT);
                let psc = parent.span().span_context().clone();
                let want = tracer.start_with_context("chat", &parent);
                let want = want.span_context();
                assert_eq!(got.context.trace_id(), want.trace_id(), "{name}");
                assert_eq!(got.context.trace_flags(), want.trace_flags(), "{name} {psc:?}");
                assert_eq!(
                    got.context.trace_state().header(),
                    want.trace_state().header(),
                    "{name}"
                );
                assert!(!got.context.is_remote());
                assert_eq!(
                    (got.parent_span_id, got.parent_is_remote),
                    (psc.span_id(), true),
                    "{name}"
                );
                assert_ne!(got.context.span_id(), SpanId::INVALID);
            }
            // A root: a new trace id, and the sampler's decision on it.
            for _ in 0..16 {
                let got = spans.begin(&Context::new(), &SpanKind::Client, OPERATION_CHAT);
                assert_ne!(got.context.trace_id(), TraceId::INVALID);
                assert_eq!((got.parent_span_id, got.parent_is_remote), (SpanId::INVALID, false));
                let decision = spans
                    .inner
                    .sampler
                    .should_sample(None, got.context.trace_id(), "chat", &SpanKind::Client, &[], &[])
                    .decision;
                assert_eq!(
                    got.context.is_sampled(),
                    decision == SamplingDecision::RecordAndSample,
                    "{name}"
                );
            }
        }
    }

    fn decoded(body: &[u8]) -> Vec<opentelemetry_proto::tonic::trace::v1::Span> {
        let request =
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(body).unwrap();
        let scopes = &request.resource_spans[0].scope_spans;
        assert_eq!(scopes.len(), 1);
        assert_eq!(scopes[0].scope.as_ref().unwrap().name, "llm-meter");
        scopes[0].spans.clone()
    }

    #[test]
    fn a_full_batch_goes_at_once_and_flush_and_shutdown_send_the_rest() {
        let (url, requests) = collector(vec![]);
        let batching = Batching {
            max_queue: 4,
            max_batch: 2,
            delay: Duration::from_secs(3600),
        };
        let (spans, stats) = direct(&url, Sampler::AlwaysOn, batching);
        let r = full_record(None);
        let end = |n: usize| {
            for _ in 0..n {
                spans.start_chat(&Context::new()).finish(&r);
            }
        };
        end(2);
        let (_, body) = requests
            .recv_timeout(Duration::from_secs(5))
            .expect("a full batch is sent");
        let sent = decoded(&body);
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].name, "chat gpt-4o");
        assert_eq!(sent[0].attributes.len(), 51, "every attribute of the record");
        assert_eq!(sent[0].end_time_unix_nano - sent[0].start_time_unix_nano, 850_000_000);

        end(1);
        spans.flush(Duration::from_secs(5)).unwrap();
        assert_eq!(decoded(&requests.try_recv().expect("flushed").1).len(), 1);
        assert_eq!((stats.ended(), stats.exported(), stats.failed()), (3, 3, 0));

        // Server spans end with their context and go the same way.
        let cx = spans.start_server(parent(), "POST", "/v1/chat/completions");
        spans.start_chat(&cx).finish(&r);
        drop(cx);
        spans.shutdown(Duration::from_secs(5)).unwrap();
        let sent = decoded(&requests.try_recv().expect("sent on shutdown").1);
        let names: Vec<&str> = sent.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["chat gpt-4o", "POST /v1/chat/completions"]);
        assert_eq!(
            sent[0].parent_span_id, sent[1].span_id,
            "the chat span is the server span's child"
        );
        assert_eq!(sent[1].parent_span_id, 0x00f0_67aa_0ba9_02b7_u64.to_be_bytes());

        // After shutdown, spans start unsampled and nothing more is sent.
        let late = spans.start_chat(&Context::new());
        assert!(!late.span_context().is_valid());
        late.finish(&r);
        assert_eq!((stats.ended(), stats.exported()), (5, 5));
    }

    #[test]
    fn a_full_queue_drops_and_a_collector_that_is_down_fails_without_holding_a_call() {
        let (spans, stats) = direct(&no_collector(), Sampler::AlwaysOn, Batching { max_queue: 2, ..SLOW });
        let r = full_record(None);
        let started = Instant::now();
        for _ in 0..5 {
            spans.start_chat(&Context::new()).finish(&r);
        }
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        spans.flush(Duration::from_secs(10)).unwrap();
        assert_eq!(stats.ended(), 5);
        assert_eq!(stats.failed(), 2, "the two queued spans failed to export");
        assert_eq!(stats.dropped(), 3, "the other three were dropped");
        assert_eq!(stats.queued(), 0);
    }
}
