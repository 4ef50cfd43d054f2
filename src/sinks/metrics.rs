//! Metric instruments, built once, and one pass per finished call that records them.
//!
//! | instrument | kind, unit | labels |
//! |---|---|---|
//! | `gen_ai.client.operation.duration` | histogram, `s` | default labels |
//! | `gen_ai.client.token.usage` | histogram, `{token}` | default + `gen_ai.token.type` |
//! | `gen_ai.client.operation.time_to_first_chunk` | histogram, `s`, streams | default labels |
//! | `gen_ai.client.operation.time_per_output_chunk` | histogram, `s`, streams | default labels |
//! | `gen_ai.client.inference.usage.{input_tokens, output_tokens, cache_read.input_tokens, cache_creation.input_tokens, reasoning.output_tokens}` | counters, `{token}` | default labels |
//! | `llm_meter.provider.processing.duration` | histogram, `s` (`openai-processing-ms`) | default labels |
//! | `llm_meter.ratelimit.{remaining, limit}` | gauges | provider, `server.address`, model, `llm_meter.ratelimit.kind` |
//! | `llm_meter.ratelimit.reset` | gauge, `s` | same |
//! | `llm_meter.ratelimit.reset.timestamp` | gauge, `s` (Unix time the reported window resets) | same |
//! | `llm_meter.label.overflow` | counter | `llm_meter.label` |
//! | `llm_meter.cost.usd` | counter, USD | default labels |
//! | `llm_meter.calls.unpriced` | counter | default labels |
//! | `llm_meter.calls.usage_missing` | counter: successful calls with no usage reported | default labels |
//! | `llm_meter.calls.in_flight` | up-down counter: calls started and not yet finished | none |
//! | `llm_meter.limit.{spend.usd, max.usd, threshold.usd, state}` | gauges (state: 0 ok, 1 exceeded, 2 overrun, 3 blocked) | `limit.id`, `limit.kind` |
//! | `llm_meter.limit.reset.timestamp` | gauge, `s` (Unix time the window resets) | `limit.id`, `limit.kind` |
//! | `llm_meter.limit.blocked` | counter | `limit.id` |
//! | `llm_meter.ledger.operation.duration` | histogram, `s` (a network ledger's round trips) | `llm_meter.ledger.operation`, `llm_meter.ledger.kind` |
//! | `llm_meter.ledger.errors` | counter | operation, kind, `error.type` (`timeout`, `unavailable`) |
//! | `llm_meter.ledger.{info, available, queued}` | gauges (info always 1; available 0/1; settlements queued) | `llm_meter.ledger.kind` |
//! | `llm_meter.ledger.{dropped, replayed}` | counters (settlements dropped at the queue's bound; replayed after a failure) | `llm_meter.ledger.kind` |
//!
//! Default labels: `gen_ai.operation.name`, `gen_ai.provider.name`, `gen_ai.request.model`,
//! `gen_ai.response.model`, `use_case.name`, `error.type` (each only when known). Models and use
//! case names come from callers (through the proxy, from anyone), so they are capped like the
//! opt-in labels (`user.id`, `account.name`, `request.tags`): past its cap a label's new values
//! fold into `other`, and `llm_meter.label.overflow` counts each fold.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use opentelemetry::metrics::{
    BoundCounter, BoundGauge, BoundHistogram, Counter, Gauge, Histogram, Meter as OtelMeter, UpDownCounter,
};
use opentelemetry::{Key, KeyValue, StringValue, Value};

use crate::names::*;
use crate::record::limits::{
    LedgerError, LedgerHealth, LedgerObserver, LedgerOp, LimitKind, LimitStatus, SharedLedger,
};
use crate::record::CallRecord;

/// Bucket boundaries of the duration histograms (GenAI semconv): 0.01 s doubling to 81.92 s.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// Bucket boundaries of the token histogram (GenAI semconv): 1, 4, 16, … 67108864.
pub const TOKEN_BUCKETS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
    67108864.0,
];

/// Bucket boundaries of the ledger's operation duration, in seconds: 100 µs to 1 s (a Redis
/// round trip is well under a millisecond on one network; the timeout is 250 ms by default).
pub const LEDGER_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The ledger operation instruments, told of every operation by the ledger.
struct LedgerInstruments {
    duration: Histogram<f64>,
    errors: Counter<u64>,
    kind: &'static str,
}

impl LedgerObserver for LedgerInstruments {
    fn operation(&self, op: LedgerOp, took: std::time::Duration, error: Option<&LedgerError>) {
        let labels = [
            KeyValue::new(LEDGER_OPERATION, op.as_str()),
            KeyValue::new(LEDGER_KIND, self.kind),
        ];
        self.duration.record(took.as_secs_f64(), &labels);
        if let Some(e) = error {
            let [a, b] = labels;
            self.errors.add(1, &[a, b, KeyValue::new(ERROR_TYPE, e.kind())]);
        }
    }
}

/// Which labels metrics carry, and how many distinct values each may take.
#[derive(Clone, Debug)]
pub struct LabelPolicy {
    /// Distinct request (and response) models before folding (default 200).
    pub models: usize,
    /// Distinct use case names before folding (default 500).
    pub use_cases: usize,
    /// `user.id` as a label, with this cap (default off: users are unbounded).
    pub user_id: Option<usize>,
    /// `account.name` as a label, with this cap (default off).
    pub account_name: Option<usize>,
    /// `request.tags` (sorted, comma-joined) as a label, with this cap (default off).
    pub request_tags: Option<usize>,
    /// Distinct limit ids on the blocked-calls counter (default 1000; limit gauges follow the
    /// ledger's own bound).
    pub limit_ids: usize,
}

impl Default for LabelPolicy {
    fn default() -> Self {
        LabelPolicy {
            models: 200,
            use_cases: 500,
            user_id: None,
            account_name: None,
            request_tags: None,
            limit_ids: 1000,
        }
    }
}

/// A label whose values are interned (no allocation per call once seen) and capped. Its cap,
/// and whether an opt-in label is on, change with [`Metrics::set_label_policy`].
#[derive(Debug)]
struct CappedLabel {
    key: &'static str,
    cap: AtomicUsize,
    on: AtomicBool,
    values: RwLock<HashMap<Box<str>, StringValue>>,
    other: StringValue,
}

impl CappedLabel {
    fn new(key: &'static str, cap: usize) -> Self {
        Self::opt_in(key, Some(cap))
    }

    /// A label that is off unless `cap` is given.
    fn opt_in(key: &'static str, cap: Option<usize>) -> Self {
        CappedLabel {
            key,
            cap: AtomicUsize::new(cap.unwrap_or(0)),
            on: AtomicBool::new(cap.is_some()),
            values: RwLock::new(HashMap::new()),
            other: StringValue::from(OTHER),
        }
    }

    /// Turns the label on with `cap`, or off. Values already admitted stay admitted.
    fn set(&self, cap: Option<usize>) {
        self.cap.store(cap.unwrap_or(0), Ordering::Relaxed);
        self.on.store(cap.is_some(), Ordering::Relaxed);
    }

    fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// The interned value, or `other` past the cap (then `overflow` is told).
    fn value(&self, v: &str, overflow: &Counter<u64>, overflow_label: &[KeyValue]) -> StringValue {
        if let Some(found) = self.values.read().ok().and_then(|m| m.get(v).cloned()) {
            return found;
        }
        let Ok(mut map) = self.values.write() else {
            return self.other.clone();
        };
        if let Some(found) = map.get(v) {
            return found.clone();
        }
        if map.len() >= self.cap.load(Ordering::Relaxed) {
            overflow.add(1, overflow_label);
            return self.other.clone();
        }
        let interned = StringValue::from(Arc::<str>::from(v));
        map.insert(v.into(), interned.clone());
        interned
    }
}

/// Label sets whose instruments are kept bound, at most; past it, calls are recorded unbound
/// (correct, only slower).
pub const MAX_BOUND_SERIES: usize = 4096;

/// A label set, as the key of its bound instruments.
type SeriesKey = Vec<(Key, StringValue)>;

/// One label set's instruments, each bound the first time it is used (binding creates the
/// series, and a series nobody recorded on must not show up, e.g. a zero cost for an unpriced
/// model).
#[derive(Debug, Default)]
struct Series {
    duration: OnceLock<BoundHistogram<f64>>,
    time_to_first_chunk: OnceLock<BoundHistogram<f64>>,
    time_per_output_chunk: OnceLock<BoundHistogram<f64>>,
    processing: OnceLock<BoundHistogram<f64>>,
    cost: OnceLock<BoundCounter<f64>>,
    unpriced: OnceLock<BoundCounter<u64>>,
    usage_missing: OnceLock<BoundCounter<u64>>,
    input_tokens: OnceLock<BoundCounter<u64>>,
    output_tokens: OnceLock<BoundCounter<u64>>,
    cached_input_tokens: OnceLock<BoundCounter<u64>>,
    cache_creation_input_tokens: OnceLock<BoundCounter<u64>>,
    reasoning_tokens: OnceLock<BoundCounter<u64>>,
    input_token_usage: OnceLock<BoundHistogram<u64>>,
    output_token_usage: OnceLock<BoundHistogram<u64>>,
}

/// One measurement a finished call makes, on the instrument it names. [`points`] is the one
/// place that decides what a record measures; bound and unbound recording only differ in how
/// they reach the instrument.
#[derive(Clone, Copy, Debug)]
enum Point {
    Duration(f64),
    TimeToFirstChunk(f64),
    TimePerOutputChunk(f64),
    Processing(f64),
    Cost(f64),
    Unpriced,
    UsageMissing,
    InputTokens(u64),
    OutputTokens(u64),
    CachedInputTokens(u64),
    CacheCreationInputTokens(u64),
    ReasoningTokens(u64),
    /// `gen_ai.client.token.usage` with `gen_ai.token.type` `input` or `output`.
    TokenUsage(&'static str, u64),
}

/// Every measurement of `r`, in order.
fn points(r: &CallRecord, mut emit: impl FnMut(Point)) {
    emit(Point::Duration(r.timings.duration.as_secs_f64()));
    if let Some(d) = r.timings.time_to_first_chunk {
        emit(Point::TimeToFirstChunk(d.as_secs_f64()));
    }
    if let Some(d) = r.timings.time_per_output_chunk {
        emit(Point::TimePerOutputChunk(d.as_secs_f64()));
    }
    if let Some(d) = r.meta.processing {
        emit(Point::Processing(d.as_secs_f64()));
    }
    if let Some(c) = r.cost {
        emit(Point::Cost(c.total));
    } else if r.usage.is_some() {
        emit(Point::Unpriced);
    }
    if usage_missing(r) {
        emit(Point::UsageMissing);
    }
    if let Some(u) = r.usage {
        emit(Point::InputTokens(u.input_tokens));
        emit(Point::OutputTokens(u.output_tokens));
        if let Some(n) = u.cached_input_tokens {
            emit(Point::CachedInputTokens(n));
        }
        if let Some(n) = u.cache_creation_input_tokens {
            emit(Point::CacheCreationInputTokens(n));
        }
        if let Some(n) = u.reasoning_tokens {
            emit(Point::ReasoningTokens(n));
        }
        emit(Point::TokenUsage("input", u.input_tokens));
        emit(Point::TokenUsage("output", u.output_tokens));
    }
}

impl Series {
    /// Records `r` on this label set's bound instruments, binding each on first use.
    fn record(&self, i: &Instruments, r: &CallRecord, labels: &[KeyValue]) {
        let hist = |slot: &OnceLock<BoundHistogram<f64>>, inst: &Histogram<f64>, v: f64| {
            slot.get_or_init(|| inst.bind(labels)).record(v)
        };
        let count = |slot: &OnceLock<BoundCounter<u64>>, inst: &Counter<u64>, v: u64| {
            slot.get_or_init(|| inst.bind(labels)).add(v)
        };
        let typed = |slot: &OnceLock<BoundHistogram<u64>>, kind: &'static str, v: u64| {
            let bound = slot.get_or_init(|| {
                let mut l = labels.to_vec();
                l.insert(token_type_place(labels), KeyValue::new(GEN_AI_TOKEN_TYPE, kind));
                i.token_usage.bind(&l)
            });
            bound.record(v)
        };
        points(r, |point| match point {
            Point::Duration(v) => hist(&self.duration, &i.duration, v),
            Point::TimeToFirstChunk(v) => hist(&self.time_to_first_chunk, &i.time_to_first_chunk, v),
            Point::TimePerOutputChunk(v) => hist(&self.time_per_output_chunk, &i.time_per_output_chunk, v),
            Point::Processing(v) => hist(&self.processing, &i.processing, v),
            Point::Cost(v) => self.cost.get_or_init(|| i.cost.bind(labels)).add(v),
            Point::Unpriced => count(&self.unpriced, &i.unpriced, 1),
            Point::UsageMissing => count(&self.usage_missing, &i.usage_missing, 1),
            Point::InputTokens(n) => count(&self.input_tokens, &i.input_tokens, n),
            Point::OutputTokens(n) => count(&self.output_tokens, &i.output_tokens, n),
            Point::CachedInputTokens(n) => count(&self.cached_input_tokens, &i.cached_input_tokens, n),
            Point::CacheCreationInputTokens(n) => {
                count(&self.cache_creation_input_tokens, &i.cache_creation_input_tokens, n)
            }
            Point::ReasoningTokens(n) => count(&self.reasoning_tokens, &i.reasoning_tokens, n),
            Point::TokenUsage("input", n) => typed(&self.input_token_usage, "input", n),
            Point::TokenUsage(kind, n) => typed(&self.output_token_usage, kind, n),
        });
    }
}

/// Where `gen_ai.token.type` goes in a record's labels, which are sorted by key.
fn token_type_place(labels: &[KeyValue]) -> usize {
    labels.partition_point(|kv| kv.key.as_str() < GEN_AI_TOKEN_TYPE)
}

/// A successful call whose provider reported no usage (a data-quality signal).
fn usage_missing(r: &CallRecord) -> bool {
    r.error.is_none() && r.usage.is_none()
}

/// Provider, server and model of a rate-limit series.
type RateKey = (Arc<str>, Arc<str>, StringValue);

/// Bound rate-limit gauges of one provider, server and model, by kind (requests, tokens,
/// input tokens, output tokens).
#[derive(Debug, Default)]
struct RateSeries {
    remaining: [OnceLock<BoundGauge<u64>>; 4],
    limit: [OnceLock<BoundGauge<u64>>; 4],
    reset: [OnceLock<BoundGauge<f64>>; 4],
    reset_at: [OnceLock<BoundGauge<f64>>; 4],
}

/// Every instrument, built once; records one [`CallRecord`] per call. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Instruments>,
}

#[derive(Debug)]
struct Instruments {
    duration: Histogram<f64>,
    token_usage: Histogram<u64>,
    time_to_first_chunk: Histogram<f64>,
    time_per_output_chunk: Histogram<f64>,
    input_tokens: Counter<u64>,
    output_tokens: Counter<u64>,
    cached_input_tokens: Counter<u64>,
    cache_creation_input_tokens: Counter<u64>,
    reasoning_tokens: Counter<u64>,
    processing: Histogram<f64>,
    ratelimit_remaining: Gauge<u64>,
    ratelimit_limit: Gauge<u64>,
    ratelimit_reset: Gauge<f64>,
    ratelimit_reset_at: Gauge<f64>,
    overflow: Counter<u64>,
    cost: Counter<f64>,
    unpriced: Counter<u64>,
    usage_missing: Counter<u64>,
    in_flight: UpDownCounter<i64>,
    blocked: Counter<u64>,
    limit_ids: CappedLabel,
    otel_meter: OtelMeter,
    watched: Mutex<Vec<Box<dyn std::any::Any + Send + Sync>>>,
    series: RwLock<HashMap<SeriesKey, Arc<Series>>>,
    rate_series: RwLock<HashMap<RateKey, Arc<RateSeries>>>,
    request_model: CappedLabel,
    response_model: CappedLabel,
    use_case: CappedLabel,
    user_id: CappedLabel,
    account_name: CappedLabel,
    request_tags: CappedLabel,
    overflow_labels: HashMap<&'static str, [KeyValue; 1]>,
    /// Bumped by every [`Metrics::set_label_policy`]: a call's remembered label set (see
    /// [`LastSeries`]) holds only under the policy it was made with.
    policy_generation: AtomicU64,
}

/// The label set a thread recorded last, and its bound series: in steady traffic most calls
/// repeat the previous call's labels, so [`Metrics::record`] compares the record's raw label
/// inputs with these and skips building, capping and hashing the labels. Only label sets with
/// no opt-in label and no value folded into `other` are remembered (so each fold is still
/// counted on `llm_meter.label.overflow`).
struct LastSeries {
    /// Whose series: a `Weak` keeps the allocation, so no later `Metrics` can have its address.
    metrics: std::sync::Weak<Instruments>,
    generation: u64,
    operation: &'static str,
    provider: Arc<str>,
    request_model: Box<str>,
    response_model: Option<Box<str>>,
    use_case: Option<Box<str>>,
    error: Option<crate::record::ErrorType>,
    labels: Vec<KeyValue>,
    series: Arc<Series>,
}

impl LastSeries {
    fn matches(&self, metrics: &Instruments, r: &CallRecord) -> bool {
        std::ptr::eq(self.metrics.as_ptr(), metrics)
            && self.generation == metrics.policy_generation.load(Ordering::Relaxed)
            && self.operation == r.operation
            && self.error == r.error
            && *self.request_model == *r.request.model
            && self.response_model.as_deref() == r.response.model.as_deref()
            && self.use_case.as_deref() == r.annotations.use_case_name()
            && *self.provider == *r.provider
    }
}

/// The `gen_ai.request.model` value of a label set ([`Metrics::labels`] always has one).
fn request_model_label(labels: &[KeyValue]) -> Option<StringValue> {
    labels.iter().find_map(|kv| match &kv.value {
        Value::String(v) if kv.key.as_str() == GEN_AI_REQUEST_MODEL => Some(v.clone()),
        _ => None,
    })
}

thread_local! {
    static LAST_SERIES: std::cell::RefCell<Option<LastSeries>> = const { std::cell::RefCell::new(None) };
}

impl Metrics {
    /// Builds every instrument on `meter` (from your `SdkMeterProvider`) with `policy`.
    pub fn new(meter: &OtelMeter, policy: LabelPolicy) -> Self {
        let seconds = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build()
        };
        let tokens = |name: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_unit("{token}")
                .with_description(description)
                .build()
        };
        let keys = [
            GEN_AI_REQUEST_MODEL,
            GEN_AI_RESPONSE_MODEL,
            USE_CASE_NAME,
            USER_ID,
            ACCOUNT_NAME,
            REQUEST_TAGS,
        ];
        Metrics {
            inner: Arc::new(Instruments {
                duration: seconds(METRIC_OPERATION_DURATION, "GenAI operation duration."),
                token_usage: meter
                    .u64_histogram(METRIC_TOKEN_USAGE)
                    .with_unit("{token}")
                    .with_description("Number of input and output tokens used.")
                    .with_boundaries(TOKEN_BUCKETS.to_vec())
                    .build(),
                time_to_first_chunk: seconds(
                    METRIC_TIME_TO_FIRST_CHUNK,
                    "Time to receive the first chunk of a streaming response.",
                ),
                time_per_output_chunk: seconds(
                    METRIC_TIME_PER_OUTPUT_CHUNK,
                    "Mean time between output chunks after the first, per streaming response.",
                ),
                input_tokens: tokens(METRIC_INPUT_TOKENS, "Input tokens, cached ones included."),
                output_tokens: tokens(METRIC_OUTPUT_TOKENS, "Output tokens, reasoning ones included."),
                cached_input_tokens: tokens(
                    METRIC_CACHED_INPUT_TOKENS,
                    "Input tokens read from the provider's cache.",
                ),
                cache_creation_input_tokens: tokens(
                    METRIC_CACHE_CREATION_INPUT_TOKENS,
                    "Input tokens written to the provider's cache (Anthropic's cache writes).",
                ),
                reasoning_tokens: tokens(METRIC_REASONING_TOKENS, "Output tokens spent on reasoning."),
                processing: seconds(
                    METRIC_PROVIDER_PROCESSING,
                    "The provider's own processing time (openai-processing-ms).",
                ),
                ratelimit_remaining: meter
                    .u64_gauge(METRIC_RATELIMIT_REMAINING)
                    .with_description("Rate-limit budget left in the current window, as last reported by the provider.")
                    .build(),
                ratelimit_limit: meter
                    .u64_gauge(METRIC_RATELIMIT_LIMIT)
                    .with_description("Rate-limit budget per window, as last reported by the provider.")
                    .build(),
                ratelimit_reset: meter
                    .f64_gauge(METRIC_RATELIMIT_RESET)
                    .with_unit("s")
                    .with_description("Time until the rate-limit window resets, as last reported by the provider.")
                    .build(),
                ratelimit_reset_at: meter
                    .f64_gauge(METRIC_RATELIMIT_RESET_TIME)
                    .with_unit("s")
                    .with_description(
                        "Unix time at which the last reported rate-limit window resets; a value past it is stale.",
                    )
                    .build(),
                overflow: meter
                    .u64_counter(METRIC_LABEL_OVERFLOW)
                    .with_description("Label values folded into 'other' because the label reached its cap.")
                    .build(),
                cost: meter
                    .f64_counter(METRIC_COST)
                    .with_unit("{USD}")
                    .with_description("Cost of calls in USD, from the price table.")
                    .build(),
                unpriced: meter
                    .u64_counter(METRIC_UNPRICED)
                    .with_description("Calls whose usage is known but whose model has no price (no cost invented).")
                    .build(),
                usage_missing: meter
                    .u64_counter(METRIC_USAGE_MISSING)
                    .with_description("Successful calls for which the provider reported no usage.")
                    .build(),
                in_flight: meter
                    .i64_up_down_counter(METRIC_CALLS_IN_FLIGHT)
                    .with_unit("{call}")
                    .with_description("Calls started and not yet finished.")
                    .build(),
                blocked: meter
                    .u64_counter(METRIC_LIMIT_BLOCKED)
                    .with_description("Calls refused by a block limit before the provider was called.")
                    .build(),
                limit_ids: CappedLabel::new(LIMIT_ID, policy.limit_ids),
                otel_meter: meter.clone(),
                watched: Mutex::new(Vec::new()),
                series: RwLock::new(HashMap::new()),
                rate_series: RwLock::new(HashMap::new()),
                request_model: CappedLabel::new(GEN_AI_REQUEST_MODEL, policy.models),
                response_model: CappedLabel::new(GEN_AI_RESPONSE_MODEL, policy.models),
                use_case: CappedLabel::new(USE_CASE_NAME, policy.use_cases),
                user_id: CappedLabel::opt_in(USER_ID, policy.user_id),
                account_name: CappedLabel::opt_in(ACCOUNT_NAME, policy.account_name),
                request_tags: CappedLabel::opt_in(REQUEST_TAGS, policy.request_tags),
                overflow_labels: keys.into_iter().map(|k| (k, [KeyValue::new(LABEL_NAME, k)])).collect(),
                policy_generation: AtomicU64::new(0),
            }),
        }
    }

    fn capped(&self, label: &CappedLabel, value: &str) -> KeyValue {
        let i = &self.inner;
        let overflow_label = i.overflow_labels.get(label.key).map_or(&[][..], |l| &l[..]);
        KeyValue::new(
            Key::from_static_str(label.key),
            Value::String(label.value(value, &i.overflow, overflow_label)),
        )
    }

    /// The default (and opted-in) labels of a record, sorted by key: the SDK keeps a label set
    /// given in another order twice (as given, and sorted), and every collection walks both.
    pub fn labels(&self, r: &CallRecord) -> Vec<KeyValue> {
        let i = &self.inner;
        let mut labels = Vec::with_capacity(10);
        labels.push(KeyValue::new(GEN_AI_OPERATION_NAME, r.operation));
        labels.push(KeyValue::new(
            GEN_AI_PROVIDER_NAME,
            Value::String(StringValue::from(r.provider.clone())),
        ));
        labels.push(self.capped(&i.request_model, &r.request.model));
        if let Some(model) = &r.response.model {
            labels.push(self.capped(&i.response_model, model));
        }
        let a = &r.annotations;
        if let Some(use_case) = a.use_case_name() {
            labels.push(self.capped(&i.use_case, use_case));
        }
        if let Some(e) = r.error {
            labels.push(KeyValue::new(ERROR_TYPE, e.as_str()));
        }
        if let Some(user) = a.user_id().filter(|_| i.user_id.is_on()) {
            labels.push(self.capped(&i.user_id, user));
        }
        if let Some(account) = a.account_name().filter(|_| i.account_name.is_on()) {
            labels.push(self.capped(&i.account_name, account));
        }
        if i.request_tags.is_on() {
            let label = &i.request_tags;
            if !a.request_tags().is_empty() {
                let mut tags: Vec<&str> = a.request_tags().iter().map(String::as_str).collect();
                tags.sort_unstable();
                tags.dedup();
                labels.push(self.capped(label, &tags.join(",")));
            }
        }
        labels.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        labels
    }

    /// Applies a new label policy to calls recorded from now on (a configuration reload):
    /// opt-in labels on or off, and every cap. Values already admitted under a cap stay
    /// admitted; series already exported stay until their exporter drops them.
    pub fn set_label_policy(&self, policy: &LabelPolicy) {
        let i = &self.inner;
        i.request_model.set(Some(policy.models));
        i.response_model.set(Some(policy.models));
        i.use_case.set(Some(policy.use_cases));
        i.user_id.set(policy.user_id);
        i.account_name.set(policy.account_name);
        i.request_tags.set(policy.request_tags);
        i.limit_ids.set(Some(policy.limit_ids));
        i.policy_generation.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a call in on `llm_meter.calls.in_flight` (the pipeline does, when a call starts).
    pub fn call_started(&self) {
        self.inner.in_flight.add(1, &[]);
    }

    /// Counts a call out of `llm_meter.calls.in_flight` (the pipeline does, when it finishes).
    pub fn call_ended(&self) {
        self.inner.in_flight.add(-1, &[]);
    }

    /// Records one finished call on every instrument it concerns. The instruments of each
    /// label set are bound once and kept (up to [`MAX_BOUND_SERIES`] label sets), so a call
    /// costs atomic updates, not the SDK's per-update sorting and hashing of attributes.
    pub fn record(&self, r: &CallRecord) {
        if !r.blocked_limit_ids.is_empty() {
            self.record_blocked(&r.blocked_limit_ids);
        }
        let i = &*self.inner;
        // The request model's label value, which the rate-limit gauges carry too.
        let model = LAST_SERIES.with(|last| match last.try_borrow().as_deref() {
            Ok(Some(last)) if last.matches(i, r) => {
                last.series.record(i, r, &last.labels);
                Some(request_model_label(&last.labels))
            }
            _ => None,
        });
        let model = match model {
            Some(model) => model,
            None => {
                let labels = self.labels(r);
                let model = request_model_label(&labels);
                match self.series(&labels) {
                    Some(series) => {
                        series.record(i, r, &labels);
                        self.remember(r, labels, series);
                    }
                    None => self.record_unbound(r, labels),
                }
                model
            }
        };
        self.record_rate_limits(r, model);
    }

    /// Keeps `labels` and `series` as this thread's [`LastSeries`], when they may be reused.
    fn remember(&self, r: &CallRecord, labels: Vec<KeyValue>, series: Arc<Series>) {
        let i = &*self.inner;
        let opt_in = i.user_id.is_on() || i.account_name.is_on() || i.request_tags.is_on();
        let folded = labels
            .iter()
            .any(|kv| matches!(&kv.value, Value::String(v) if v.as_str() == OTHER));
        if opt_in || folded {
            return;
        }
        let last = LastSeries {
            metrics: Arc::downgrade(&self.inner),
            generation: i.policy_generation.load(Ordering::Relaxed),
            operation: r.operation,
            provider: r.provider.clone(),
            request_model: r.request.model.as_str().into(),
            response_model: r.response.model.as_deref().map(Into::into),
            use_case: r.annotations.use_case_name().map(Into::into),
            error: r.error,
            labels,
            series,
        };
        LAST_SERIES.with(|slot| {
            if let Ok(mut slot) = slot.try_borrow_mut() {
                *slot = Some(last);
            }
        });
    }

    /// The bound instruments of `labels`, binding them the first time.
    fn series(&self, labels: &[KeyValue]) -> Option<Arc<Series>> {
        let key: SeriesKey = labels
            .iter()
            .map(|kv| match &kv.value {
                Value::String(v) => Some((kv.key.clone(), v.clone())),
                _ => None,
            })
            .collect::<Option<_>>()?;
        if let Some(found) = self.inner.series.read().ok()?.get(&key) {
            return Some(found.clone());
        }
        let mut map = self.inner.series.write().ok()?;
        if let Some(found) = map.get(&key) {
            return Some(found.clone());
        }
        if map.len() >= MAX_BOUND_SERIES {
            return None;
        }
        let series = Arc::new(Series::default());
        map.insert(key, series.clone());
        Some(series)
    }

    /// Records `r` with its labels on each update (past [`MAX_BOUND_SERIES`] label sets).
    fn record_unbound(&self, r: &CallRecord, labels: Vec<KeyValue>) {
        let i = &self.inner;
        let mut typed = labels.clone();
        let place = token_type_place(&labels);
        typed.insert(place, KeyValue::new(GEN_AI_TOKEN_TYPE, ""));
        points(r, |point| match point {
            Point::Duration(v) => i.duration.record(v, &labels),
            Point::TimeToFirstChunk(v) => i.time_to_first_chunk.record(v, &labels),
            Point::TimePerOutputChunk(v) => i.time_per_output_chunk.record(v, &labels),
            Point::Processing(v) => i.processing.record(v, &labels),
            Point::Cost(v) => i.cost.add(v, &labels),
            Point::Unpriced => i.unpriced.add(1, &labels),
            Point::UsageMissing => i.usage_missing.add(1, &labels),
            Point::InputTokens(n) => i.input_tokens.add(n, &labels),
            Point::OutputTokens(n) => i.output_tokens.add(n, &labels),
            Point::CachedInputTokens(n) => i.cached_input_tokens.add(n, &labels),
            Point::CacheCreationInputTokens(n) => i.cache_creation_input_tokens.add(n, &labels),
            Point::ReasoningTokens(n) => i.reasoning_tokens.add(n, &labels),
            Point::TokenUsage(kind, n) => {
                typed[place] = KeyValue::new(GEN_AI_TOKEN_TYPE, kind);
                i.token_usage.record(n, &typed);
            }
        });
    }

    /// Counts a call refused by `blocked` limits.
    fn record_blocked(&self, blocked: &[String]) {
        for id in blocked {
            let label = self.capped(&self.inner.limit_ids, id);
            self.inner.blocked.add(1, &[label]);
        }
    }

    /// Reports spend, max and state of every limit in `ledger` as gauges, read at collection.
    pub fn watch_ledger(&self, ledger: SharedLedger) {
        self.watch_ledger_health(&ledger);
        let m = &self.inner.otel_meter;
        let labels = |s: &LimitStatus| {
            let mut l = vec![KeyValue::new(LIMIT_ID, s.id.clone())];
            if let Some(c) = &s.config {
                l.push(KeyValue::new(
                    LIMIT_KIND,
                    if c.kind == LimitKind::Block { "block" } else { "allow" },
                ));
            }
            l
        };
        let (l1, l2, l3, l4, l5) = (ledger.clone(), ledger.clone(), ledger.clone(), ledger.clone(), ledger);
        let spend = m
            .f64_observable_gauge(METRIC_LIMIT_SPEND)
            .with_unit("{USD}")
            .with_description("Spend in USD in the limit's current window.")
            .with_callback(move |o| l1.statuses().iter().for_each(|s| o.observe(s.spend, &labels(s))))
            .build();
        let max = m
            .f64_observable_gauge(METRIC_LIMIT_MAX)
            .with_unit("{USD}")
            .with_description("Configured max of the limit in USD.")
            .with_callback(move |o| {
                l2.statuses().iter().for_each(|s| {
                    if let Some(c) = &s.config {
                        o.observe(c.max, &labels(s))
                    }
                })
            })
            .build();
        let state = m
            .u64_observable_gauge(METRIC_LIMIT_STATE)
            .with_description("Limit state: 0 ok, 1 exceeded, 2 overrun, 3 blocked.")
            .with_callback(move |o| l3.statuses().iter().for_each(|s| o.observe(s.state.code(), &labels(s))))
            .build();
        let threshold = m
            .f64_observable_gauge(METRIC_LIMIT_THRESHOLD)
            .with_unit("{USD}")
            .with_description("Spend in USD at which the limit's state becomes exceeded (threshold × max).")
            .with_callback(move |o| {
                l4.statuses().iter().for_each(|s| {
                    if let Some((c, t)) = s.config.as_ref().and_then(|c| c.threshold.map(|t| (c, t))) {
                        o.observe(t * c.max, &labels(s))
                    }
                })
            })
            .build();
        let reset_at = m
            .f64_observable_gauge(METRIC_LIMIT_RESET_TIME)
            .with_unit("s")
            .with_description("Unix time at which the limit's current window resets.")
            .with_callback(move |o| {
                l5.statuses().iter().for_each(|s| {
                    if let Some(end) = s.window_end {
                        o.observe(crate::record::limits::unix(end), &labels(s))
                    }
                })
            })
            .build();
        if let Ok(mut w) = self.inner.watched.lock() {
            w.push(Box::new((spend, max, state, threshold, reset_at)));
        }
    }

    /// Reports the health of `ledger` itself: which ledger, whether it answers, queued,
    /// dropped and replayed settlements (observed at collection), and the latency and errors of
    /// every operation of a network ledger (recorded as they happen).
    fn watch_ledger_health(&self, ledger: &SharedLedger) {
        let m = &self.inner.otel_meter;
        let kind = ledger.health().kind;
        let kind_label = [KeyValue::new(LEDGER_KIND, kind)];
        let observer = Arc::new(LedgerInstruments {
            duration: m
                .f64_histogram(METRIC_LEDGER_DURATION)
                .with_unit("s")
                .with_description("Duration of one ledger operation (a Redis round trip).")
                .with_boundaries(LEDGER_BUCKETS.to_vec())
                .build(),
            errors: m
                .u64_counter(METRIC_LEDGER_ERRORS)
                .with_description("Ledger operations that failed, by error.type (timeout, unavailable).")
                .build(),
            kind,
        });
        ledger.add_observer(observer);
        let gauge = |name: &'static str, description: &'static str, read: fn(&LedgerHealth) -> u64| {
            let (ledger, labels) = (ledger.clone(), kind_label.clone());
            m.u64_observable_gauge(name)
                .with_description(description)
                .with_callback(move |o| o.observe(read(&ledger.health()), &labels))
                .build()
        };
        let counter = |name: &'static str, description: &'static str, read: fn(&LedgerHealth) -> u64| {
            let (ledger, labels) = (ledger.clone(), kind_label.clone());
            m.u64_observable_counter(name)
                .with_description(description)
                .with_callback(move |o| o.observe(read(&ledger.health()), &labels))
                .build()
        };
        let instruments = (
            gauge(METRIC_LEDGER_INFO, "Which ledger holds the budgets (always 1).", |_| 1),
            gauge(
                METRIC_LEDGER_AVAILABLE,
                "1 when the ledger's last operation succeeded, 0 when it failed.",
                |h| u64::from(h.available),
            ),
            gauge(
                METRIC_LEDGER_QUEUED,
                "Settlements waiting to be applied on the ledger.",
                |h| h.queued,
            ),
            counter(
                METRIC_LEDGER_DROPPED,
                "Settlements dropped because the ledger's queue was full.",
                |h| h.dropped,
            ),
            counter(
                METRIC_LEDGER_REPLAYED,
                "Settlements applied after at least one failed attempt.",
                |h| h.replayed,
            ),
        );
        if let Ok(mut w) = self.inner.watched.lock() {
            w.push(Box::new(instruments));
        }
    }

    fn record_rate_limits(&self, r: &CallRecord, model: Option<StringValue>) {
        let i = &self.inner;
        let m = &r.meta;
        let kinds = [
            (RATELIMIT_KIND_REQUESTS, &m.requests),
            (RATELIMIT_KIND_TOKENS, &m.tokens),
            (RATELIMIT_KIND_INPUT_TOKENS, &m.input_tokens),
            (RATELIMIT_KIND_OUTPUT_TOKENS, &m.output_tokens),
        ];
        if kinds.iter().all(|(_, limit)| limit.is_empty()) {
            return;
        }
        // Rate limits are per model as the caller names it, whatever snapshot answered.
        let Some(model) = model else {
            return;
        };
        let key = (r.provider.clone(), r.server_address.clone(), model.clone());
        let labels = |kind: &'static str| {
            [
                KeyValue::new(
                    GEN_AI_PROVIDER_NAME,
                    Value::String(StringValue::from(r.provider.clone())),
                ),
                KeyValue::new(
                    SERVER_ADDRESS,
                    Value::String(StringValue::from(r.server_address.clone())),
                ),
                KeyValue::new(GEN_AI_REQUEST_MODEL, Value::String(model.clone())),
                KeyValue::new(RATELIMIT_KIND, kind),
            ]
        };
        // When the reported window resets: the answer's time plus the reported reset.
        let observed = crate::record::limits::unix(r.timings.started_at) + r.timings.duration.as_secs_f64();
        let series = self.rate_series(key);
        for (k, (kind, limit)) in kinds.into_iter().enumerate() {
            if limit.is_empty() {
                continue;
            }
            match &series {
                Some(s) => {
                    if let Some(v) = limit.remaining {
                        s.remaining[k]
                            .get_or_init(|| i.ratelimit_remaining.bind(&labels(kind)))
                            .record(v);
                    }
                    if let Some(v) = limit.limit {
                        s.limit[k]
                            .get_or_init(|| i.ratelimit_limit.bind(&labels(kind)))
                            .record(v);
                    }
                    if let Some(d) = limit.reset {
                        s.reset[k]
                            .get_or_init(|| i.ratelimit_reset.bind(&labels(kind)))
                            .record(d.as_secs_f64());
                        s.reset_at[k]
                            .get_or_init(|| i.ratelimit_reset_at.bind(&labels(kind)))
                            .record(observed + d.as_secs_f64());
                    }
                }
                None => {
                    let l = labels(kind);
                    if let Some(v) = limit.remaining {
                        i.ratelimit_remaining.record(v, &l);
                    }
                    if let Some(v) = limit.limit {
                        i.ratelimit_limit.record(v, &l);
                    }
                    if let Some(d) = limit.reset {
                        i.ratelimit_reset.record(d.as_secs_f64(), &l);
                        i.ratelimit_reset_at.record(observed + d.as_secs_f64(), &l);
                    }
                }
            }
        }
    }

    fn rate_series(&self, key: RateKey) -> Option<Arc<RateSeries>> {
        if let Some(found) = self.inner.rate_series.read().ok()?.get(&key) {
            return Some(found.clone());
        }
        let mut map = self.inner.rate_series.write().ok()?;
        if map.len() >= MAX_BOUND_SERIES && !map.contains_key(&key) {
            return None;
        }
        Some(map.entry(key).or_default().clone())
    }
}
