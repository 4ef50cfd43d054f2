//! `/metrics` in the Prometheus text format, written straight from the meter provider's
//! cumulative data: an axum router to mount in your own server, and a standalone listener
//! (default `127.0.0.1:9464`) with `/metrics` and `/healthz`.
//!
//! The names, labels and order are the ones opentelemetry-prometheus and the prometheus crate
//! give them (the exposition's golden file was written by them): metric names sanitized, the
//! unit's suffix (`_seconds`, …) and `_total` on counters appended; attribute keys sanitized
//! (`gen_ai.request.model` becomes `gen_ai_request_model`), values of keys that sanitize alike
//! joined with `;`; `target_info` for the resource; families by name, series by label values.
//! Going through those two crates cost about 10 ms for 10,000 series (`cargo bench --bench
//! exposition`): each data point became a protobuf struct with a `String` per label, and each
//! value went through `fmt`. Here each label set is rendered once and kept for later scrapes
//! (found again by the addresses of its strings, which the SDK's collect shares from one scrape
//! to the next), and the histogram bounds are printed once per metric.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hash as _, Hasher};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, Histogram, Metric, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{InstrumentKind, ManualReader, Pipeline, Temporality};

/// Default address of the standalone metrics listener.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

/// The content type of the text format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics of a [`Telemetry`](crate::Telemetry)'s meter provider, every instrumentation
/// scope included, ready to be encoded for a scrape. Cheap to clone. The default one has no
/// provider behind it and encodes to nothing.
#[derive(Clone, Default)]
pub struct Exposition {
    reader: Option<Arc<ManualReader>>,
    /// The label sets of earlier scrapes, rendered and ranked: a scrape renders only new ones.
    labels: Arc<Mutex<Labels>>,
}

impl std::fmt::Debug for Exposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exposition")
            .field("reader", &self.reader)
            .finish_non_exhaustive()
    }
}

/// Collecting the metrics failed (the meter provider was shut down).
#[derive(Debug, thiserror::Error)]
#[error("collecting metrics failed: {0}")]
pub struct ExpositionError(String);

/// The reader the meter provider is given; the [`Exposition`] collects through it.
#[derive(Debug)]
pub(crate) struct ExpositionReader(Arc<ManualReader>);

impl MetricReader for ExpositionReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline)
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    /// Prometheus counts from the start.
    fn temporality(&self, _kind: InstrumentKind) -> Temporality {
        Temporality::Cumulative
    }
}

impl Exposition {
    /// An exposition, and the reader to register with the meter provider it shows.
    pub(crate) fn new() -> (Exposition, ExpositionReader) {
        let reader = Arc::new(
            ManualReader::builder()
                .with_temporality(Temporality::Cumulative)
                .build(),
        );
        (
            Exposition {
                reader: Some(reader.clone()),
                labels: Arc::default(),
            },
            ExpositionReader(reader),
        )
    }

    /// Every metric, in the Prometheus text format.
    pub fn encode(&self) -> Result<String, ExpositionError> {
        let Some(reader) = &self.reader else {
            return Ok(String::new());
        };
        let mut data = ResourceMetrics::default();
        reader.collect(&mut data).map_err(|e| ExpositionError(e.to_string()))?;
        let mut labels = self.labels.lock().unwrap_or_else(|poisoned| {
            // A scrape panicked half-way: start afresh.
            self.labels.clear_poison();
            let mut labels = poisoned.into_inner();
            *labels = Labels::default();
            labels
        });
        Ok(write_text(&data, &mut labels))
    }
}

/// Encodes every metric of `exposition` in the Prometheus text format.
pub fn encode(exposition: &Exposition) -> Result<String, ExpositionError> {
    exposition.encode()
}

fn metrics_response(exposition: &Exposition) -> Response {
    match exposition.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, TEXT_FORMAT)], text).into_response(),
        Err(e) => {
            tracing::warn!(target: "llm_meter", "encoding /metrics failed: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
    }
}

/// A router with `GET /metrics` and `GET /healthz`, to mount in your own axum server.
pub fn router(exposition: Exposition) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || std::future::ready(metrics_response(&exposition))),
        )
        .route("/healthz", get(|| std::future::ready("ok\n")))
}

/// Serves [`router`] on `addr` in the background; returns the bound address (useful with port 0).
pub async fn serve(addr: SocketAddr, exposition: Exposition) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(exposition);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(target: "llm_meter", "metrics listener stopped: {e}");
        }
    });
    Ok(bound)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One series: its label set (an index of [`Labels::sets`]) and its samples.
struct Series {
    set: usize,
    samples: Samples,
}

/// One distinct set of attributes, rendered once however many instruments and scrapes have a
/// point for it.
struct LabelSet {
    attributes: Vec<KeyValue>,
    /// `k="v",…`, values escaped: a range of [`Labels::text`].
    text: Range<usize>,
    /// The raw label values, for ordering: a range of [`Labels::values`].
    values: Range<usize>,
    /// Its place in the prometheus crate's order of series (sets equal in that order: equal ranks).
    rank: usize,
    /// The last scrape that had a point with this set.
    scrape: u64,
}

enum Samples {
    One(f64),
    /// Cumulative bucket counts (a range of the scrape's counts), their `le="…"} ` text
    /// (shared by the metric's series), sum, count.
    Buckets {
        cumulative: Range<usize>,
        bounds: Arc<[String]>,
        infinite_last: bool,
        sum: f64,
        count: u64,
    },
}

struct Family {
    help: String,
    kind: Kind,
    series: Vec<Series>,
    /// The family's last scrape.
    last: Memo,
}

/// A family's sets in the order its points came in a scrape, and its series in the order they
/// were written: when the next scrape's points come in the same order (the SDK's map gives them
/// so while nothing is added), each point is checked against its guess alone, and the family
/// needs no sort.
#[derive(Default)]
struct Memo {
    sets: Vec<usize>,
    order: Vec<usize>,
}

type QuickMap = HashMap<u64, Vec<usize>, BuildHasherDefault<QuickHasher>>;

/// The label sets an [`Exposition`] has seen, each rendered once into three shared buffers and
/// kept from one scrape to the next (a cumulative provider repeats every series), and scratch
/// space to render one.
#[derive(Default)]
struct Labels {
    sets: Vec<LabelSet>,
    /// The sets by the hash of their attributes' content.
    by_content: QuickMap,
    /// The sets by the addresses of their attributes' strings (see [`identity`]).
    by_identity: QuickMap,
    /// Every series' rendered labels, one after the other.
    text: String,
    /// Every series' raw label values, one after the other …
    raw: String,
    /// … and where each value is in `raw`.
    values: Vec<Range<usize>>,
    scratch: String,
    /// (sanitized key, original key, value), as ranges of `scratch`.
    entries: Vec<(Range<usize>, Range<usize>, Range<usize>)>,
    /// How many of `sets` [`Labels::rank`] last ranked.
    ranked: usize,
    /// Each family's last scrape, by name.
    memos: HashMap<String, Memo>,
    /// The scrape under way, and how many sets it has used so far.
    scrape: u64,
    used: usize,
}

/// Sets kept beyond twice those a scrape used before they are all dropped (and the next scrape
/// renders its sets afresh): series that a provider stopped reporting do not pile up.
const STALE_SETS_KEPT: usize = 1024;

impl Labels {
    /// Starts a scrape.
    fn begin(&mut self) {
        self.scrape += 1;
        self.used = 0;
    }

    /// Ends a scrape: drops every set if too many went unused.
    fn end(&mut self) {
        if self.sets.len() > 2 * self.used + STALE_SETS_KEPT {
            *self = Labels::default();
        }
    }

    /// The series of `attributes`, its label set rendered unless an earlier series had it;
    /// `guess` is the set a point in its place had last scrape.
    fn series(&mut self, guess: Option<usize>, attributes: &[&KeyValue], samples: Samples) -> Series {
        let set = match guess {
            Some(set) if set < self.sets.len() && same_identity(&self.sets[set].attributes, attributes) => set,
            _ => self.find_or_render(attributes),
        };
        let entry = &mut self.sets[set];
        if entry.scrape != self.scrape {
            entry.scrape = self.scrape;
            self.used += 1;
        }
        Series { set, samples }
    }

    fn find_or_render(&mut self, attributes: &[&KeyValue]) -> usize {
        // Points of a series share its strings from one scrape to the next (the SDK clones
        // `Arc`s and `&'static str`s): their addresses find it without reading the text.
        let id = identity(attributes.iter().copied());
        if let Some(id) = id {
            let found = self.by_identity.get(&id).and_then(|sets| {
                sets.iter()
                    .copied()
                    .find(|&i| same_identity(&self.sets[i].attributes, attributes))
            });
            if let Some(set) = found {
                return set;
            }
        }
        let mut hasher = QuickHasher::default();
        attributes.hash(&mut hasher);
        let hash = hasher.finish();
        let found = self.by_content.get(&hash).and_then(|sets| {
            sets.iter()
                .copied()
                .find(|&i| same_content(&self.sets[i].attributes, attributes))
        });
        if let Some(set) = found {
            return set;
        }
        let set = self.render(attributes);
        self.by_content.entry(hash).or_default().push(set);
        // The identity of the kept copy: what later scrapes' points share with it.
        if let Some(id) = identity(self.sets[set].attributes.iter()) {
            self.by_identity.entry(id).or_default().push(set);
        }
        set
    }

    fn render(&mut self, attributes: &[&KeyValue]) -> usize {
        self.scratch.clear();
        self.entries.clear();
        for kv in attributes {
            let key = kv.key.as_str();
            let start = self.scratch.len();
            push_sanitized(&mut self.scratch, key, false);
            let sanitized = start..self.scratch.len();
            self.scratch.push_str(key);
            let original = sanitized.end..self.scratch.len();
            write_value(&mut self.scratch, &kv.value);
            let value = original.end..self.scratch.len();
            self.entries.push((sanitized, original, value));
        }
        let scratch = &self.scratch;
        let order = |a: &(Range<usize>, Range<usize>, Range<usize>), b: &(Range<usize>, Range<usize>, Range<usize>)| {
            scratch[a.0.clone()]
                .cmp(&scratch[b.0.clone()])
                .then_with(|| scratch[a.1.clone()].cmp(&scratch[b.1.clone()]))
        };
        // Attribute sets come sorted by key, which sanitizing seldom changes.
        if !self.entries.is_sorted_by(|a, b| order(a, b) != Ordering::Greater) {
            self.entries.sort_by(order);
        }
        let (text_start, values_start) = (self.text.len(), self.values.len());
        let mut i = 0;
        while i < self.entries.len() {
            let key = &scratch[self.entries[i].0.clone()];
            let start = self.raw.len();
            self.raw.push_str(&scratch[self.entries[i].2.clone()]);
            i += 1;
            // Keys that sanitize alike share one label, their values joined with `;`.
            while i < self.entries.len() && &scratch[self.entries[i].0.clone()] == key {
                self.raw.push(';');
                self.raw.push_str(&scratch[self.entries[i].2.clone()]);
                i += 1;
            }
            if self.text.len() > text_start {
                self.text.push(',');
            }
            self.text.push_str(key);
            self.text.push_str("=\"");
            escape_into(&mut self.text, &self.raw[start..], true);
            self.text.push('"');
            self.values.push(start..self.raw.len());
        }
        self.sets.push(LabelSet {
            attributes: attributes.iter().map(|kv| (*kv).clone()).collect(),
            text: text_start..self.text.len(),
            values: values_start..self.values.len(),
            rank: 0,
            scrape: 0,
        });
        self.sets.len() - 1
    }

    /// Ranks every set in the prometheus crate's order of series in a family, so that each
    /// family's series sort by a number; only when sets were added since the last ranking
    /// (then returns `true`).
    fn rank(&mut self) -> bool {
        if self.ranked == self.sets.len() {
            return false;
        }
        self.ranked = self.sets.len();
        let mut by_order: Vec<usize> = (0..self.sets.len()).collect();
        by_order.sort_by(|&a, &b| self.order(&self.sets[a], &self.sets[b]));
        let mut rank = 0;
        for place in 0..by_order.len() {
            let i = by_order[place];
            if place > 0 && self.order(&self.sets[by_order[place - 1]], &self.sets[i]) != Ordering::Equal {
                rank = place;
            }
            self.sets[i].rank = rank;
        }
        true
    }

    /// The prometheus crate's order: fewer labels first, then by the label values in turn
    /// (sets that compare equal keep the order their points came in).
    fn order(&self, a: &LabelSet, b: &LabelSet) -> Ordering {
        let (x, y) = (&self.values[a.values.clone()], &self.values[b.values.clone()]);
        x.len().cmp(&y.len()).then_with(|| {
            for (x, y) in x.iter().zip(y) {
                let order = self.raw[x.clone()].cmp(&self.raw[y.clone()]);
                if order != Ordering::Equal {
                    return order;
                }
            }
            Ordering::Equal
        })
    }
}

/// The address and length of a string: two live strings with the same are the same string, so
/// equal text (a kept copy holds its `Arc` or `Box`, and no other string can take its place).
fn address(s: &str) -> (usize, usize) {
    (s.as_ptr() as usize, s.len())
}

/// A hash of the attributes by the addresses of their strings and the bits of their other
/// values; `None` when one is an array (those are found by content).
fn identity<'a>(attributes: impl Iterator<Item = &'a KeyValue>) -> Option<u64> {
    let mut hasher = QuickHasher::default();
    for kv in attributes {
        let (at, len) = address(kv.key.as_str());
        hasher.write_u64(at as u64);
        hasher.write_u64(len as u64);
        let word = match &kv.value {
            Value::String(s) => {
                let (at, len) = address(s.as_str());
                hasher.write_u64(len as u64);
                at as u64
            }
            Value::I64(i) => *i as u64,
            Value::F64(f) => f.to_bits(),
            Value::Bool(b) => u64::from(*b),
            _ => return None,
        };
        hasher.write_u64(word);
    }
    Some(hasher.finish())
}

/// Whether `point`'s attributes are `kept`'s by [`identity`].
fn same_identity(kept: &[KeyValue], point: &[&KeyValue]) -> bool {
    same_attributes(kept, point, |x, y| address(x) == address(y))
}

/// Whether `point`'s attributes are `kept`'s by content.
fn same_content(kept: &[KeyValue], point: &[&KeyValue]) -> bool {
    same_attributes(kept, point, |x, y| x == y)
}

/// Whether `point`'s attributes are `kept`'s, keys and string values compared by `same_str`,
/// floats by their bits (so that a NaN finds its set), other values by `==`.
fn same_attributes(kept: &[KeyValue], point: &[&KeyValue], same_str: impl Fn(&str, &str) -> bool) -> bool {
    kept.len() == point.len()
        && kept.iter().zip(point).all(|(a, b)| {
            same_str(a.key.as_str(), b.key.as_str())
                && match (&a.value, &b.value) {
                    (Value::String(x), Value::String(y)) => same_str(x.as_str(), y.as_str()),
                    (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
                    (x, y) => x == y,
                }
        })
}

/// A fast non-cryptographic hash (the multiply-rotate of rustc's `FxHasher`) for finding
/// label sets already rendered: the keys are our own data, so hash flooding is not a concern,
/// and SipHash cost 6 % of an exposition.
#[derive(Default)]
struct QuickHasher(u64);

impl Hasher for QuickHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
        for &b in chunks.remainder() {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// An attribute value as opentelemetry-prometheus prints it (its `Display`).
fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::String(s) => out.push_str(s.as_str()),
        Value::I64(i) => write_integer(out, *i),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

fn write_integer(out: &mut String, v: i64) {
    out.push_str(itoa::Buffer::new().format(v));
}

/// A count as the `f64` the prometheus crate holds it in prints (whole below 2^53).
fn write_count(out: &mut String, n: u64) {
    if n < EXACT_IN_F64 {
        out.push_str(itoa::Buffer::new().format(n));
    } else {
        write_f64(out, n as f64);
    }
}

/// 2^53: every whole number below it is exact in an `f64` and prints as an integer.
const EXACT_IN_F64: u64 = 1 << 53;

/// A sample value as Rust's `Display` for `f64` prints it (what the prometheus crate writes),
/// whole numbers without the formatting machinery.
fn write_f64(out: &mut String, v: f64) {
    if v.fract() == 0.0 && v.abs() < EXACT_IN_F64 as f64 && !(v == 0.0 && v.is_sign_negative()) {
        write_integer(out, v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Escapes `\` and newlines, and `"` in label values.
fn escape_into(out: &mut String, s: &str, quotes: bool) {
    let special = if quotes {
        memchr::memchr3(b'\\', b'\n', b'"', s.as_bytes())
    } else {
        memchr::memchr2(b'\\', b'\n', s.as_bytes())
    };
    if special.is_none() {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quotes => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// opentelemetry-prometheus's name of `metric` and its family kind (`None`: not shown).
fn name_and_kind(metric: &Metric) -> Option<(String, Kind)> {
    fn of<T>(data: &MetricData<T>) -> Option<(Kind, bool)> {
        match data {
            MetricData::Gauge(_) => Some((Kind::Gauge, false)),
            MetricData::Sum(s) if s.is_monotonic() => Some((Kind::Counter, true)),
            MetricData::Sum(_) => Some((Kind::Gauge, false)),
            MetricData::Histogram(_) => Some((Kind::Histogram, false)),
            MetricData::ExponentialHistogram(_) => None,
        }
    }
    let (kind, total) = match metric.data() {
        AggregatedMetrics::F64(d) => of(d),
        AggregatedMetrics::U64(d) => of(d),
        AggregatedMetrics::I64(d) => of(d),
    }?;
    let mut name = sanitize_name(metric.name());
    if let Some(suffix) = unit_suffix(metric.unit()) {
        name.push('_');
        name.push_str(&suffix);
    }
    if total {
        name.push_str("_total");
    }
    Some((name, kind))
}

fn sanitize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 1);
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    push_sanitized(&mut out, name, true);
    out
}

/// `s` with every character but ASCII letters, digits, `:` (and `_` when `underscore`: it
/// becomes `_` either way) replaced by `_`, one `_` per character.
fn push_sanitized(out: &mut String, s: &str, underscore: bool) {
    let keep = |c: u8| c.is_ascii_alphanumeric() || c == b':' || (underscore && c == b'_');
    if s.is_ascii() {
        // One byte per character: no UTF-8 decoding.
        out.reserve(s.len());
        for c in s.bytes() {
            out.push(if keep(c) { char::from(c) } else { '_' });
        }
    } else {
        out.extend(s.chars().map(|c| if c.is_ascii() && keep(c as u8) { c } else { '_' }));
    }
}

/// The Prometheus suffix of an OpenTelemetry unit (`s` → `seconds`, `By/s` →
/// `bytes_per_second`); annotations such as `{token}` and unknown units have none.
fn unit_suffix(unit: &str) -> Option<Cow<'static, str>> {
    fn units(u: &str) -> Option<&'static str> {
        Some(match u {
            "d" => "days",
            "h" => "hours",
            "min" => "minutes",
            "s" => "seconds",
            "ms" => "milliseconds",
            "us" => "microseconds",
            "ns" => "nanoseconds",
            "By" | "B" => "bytes",
            "KiBy" => "kibibytes",
            "MiBy" => "mebibytes",
            "GiBy" => "gibibytes",
            "TiBy" => "tibibytes",
            "KBy" | "KB" => "kilobytes",
            "MBy" | "MB" => "megabytes",
            "GBy" | "GB" => "gigabytes",
            "TBy" | "TB" => "terabytes",
            "m" => "meters",
            "V" => "volts",
            "A" => "amperes",
            "J" => "joules",
            "W" => "watts",
            "g" => "grams",
            "Cel" => "celsius",
            "Hz" => "hertz",
            "1" => "ratio",
            "%" => "percent",
            _ => return None,
        })
    }
    fn per(u: &str) -> Option<&'static str> {
        Some(match u {
            "s" => "second",
            "m" => "minute",
            "h" => "hour",
            "d" => "day",
            "w" => "week",
            "mo" => "month",
            "y" => "year",
            _ => return None,
        })
    }
    if unit.is_empty() {
        return None;
    }
    if let Some(suffix) = units(unit) {
        return Some(Cow::Borrowed(suffix));
    }
    let (first, second) = unit.split_once('/')?;
    let second = per(second)?;
    let time_or_ratio = ["1", "d", "h", "min", "s", "ms", "us", "ns"].contains(&first);
    Some(Cow::Owned(match units(first) {
        Some(first) if !time_or_ratio => format!("{first}_per_{second}"),
        _ => format!("per_{second}"),
    }))
}

trait AsF64: Copy {
    fn as_f64(self) -> f64;
}
impl AsF64 for f64 {
    fn as_f64(self) -> f64 {
        self
    }
}
impl AsF64 for u64 {
    fn as_f64(self) -> f64 {
        self as f64
    }
}
impl AsF64 for i64 {
    fn as_f64(self) -> f64 {
        self as f64
    }
}

/// Adds the series of metrics' data points, their attributes gathered in one scratch vector
/// and their bucket counts in the scrape's one vector.
struct Points<'a, 'd> {
    labels: &'a mut Labels,
    series: &'a mut Vec<Series>,
    /// The family's sets of the last scrape, in the order its points came.
    guesses: &'a [usize],
    /// Every histogram point's cumulative bucket counts, one after the other.
    counts: &'a mut Vec<u64>,
    /// Scratch space for a point's attributes.
    attributes: Vec<&'d KeyValue>,
}

impl<'d> Points<'_, 'd> {
    fn add(&mut self, attributes: impl Iterator<Item = &'d KeyValue>, samples: Samples) {
        self.attributes.clear();
        self.attributes.extend(attributes);
        let guess = self.guesses.get(self.series.len()).copied();
        let series = self.labels.series(guess, &self.attributes, samples);
        self.series.push(series);
    }

    /// Adds the series of one metric's data.
    fn metric<T: AsF64>(&mut self, data: &'d MetricData<T>) {
        match data {
            MetricData::Gauge(g) => {
                for p in g.data_points() {
                    self.add(p.attributes(), Samples::One(p.value().as_f64()));
                }
            }
            MetricData::Sum(s) => {
                for p in s.data_points() {
                    self.add(p.attributes(), Samples::One(p.value().as_f64()));
                }
            }
            MetricData::Histogram(h) => self.histogram(h),
            MetricData::ExponentialHistogram(_) => {}
        }
    }

    fn histogram<T: AsF64>(&mut self, h: &'d Histogram<T>) {
        // The `le` values, printed once for all the metric's points with the same bounds.
        let mut printed: Option<(Vec<f64>, Arc<[String]>)> = None;
        let mut bounds = Vec::new();
        for p in h.data_points() {
            bounds.clear();
            bounds.extend(p.bounds());
            let le = match &printed {
                Some((b, le)) if *b == bounds => le.clone(),
                _ => {
                    let le: Arc<[String]> = bounds.iter().map(|b| format!("le=\"{b}\"}} ")).collect();
                    printed = Some((bounds.clone(), le.clone()));
                    le
                }
            };
            let start = self.counts.len();
            let mut running = 0u64;
            self.counts.extend(p.bucket_counts().take(bounds.len()).map(|c| {
                running += c;
                running
            }));
            let infinite_last = bounds.last().is_some_and(|b| b.is_infinite() && b.is_sign_positive());
            let samples = Samples::Buckets {
                cumulative: start..self.counts.len(),
                bounds: le,
                infinite_last,
                sum: p.sum().as_f64(),
                count: p.count(),
            };
            self.add(p.attributes(), samples);
        }
    }
}

/// The whole exposition of `data`.
fn write_text(data: &ResourceMetrics, labels: &mut Labels) -> String {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    labels.begin();
    let mut counts = Vec::new();
    let resource: Vec<KeyValue> = data
        .resource()
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect();
    if !resource.is_empty() {
        families.insert(
            "target_info".to_owned(),
            Family {
                help: "Target metadata".to_owned(),
                kind: Kind::Gauge,
                series: vec![labels.series(None, &resource.iter().collect::<Vec<_>>(), Samples::One(1.0))],
                last: labels.memos.remove("target_info").unwrap_or_default(),
            },
        );
    }
    for scope in data.scope_metrics() {
        for metric in scope.metrics() {
            let Some((name, kind)) = name_and_kind(metric) else {
                continue;
            };
            let family = families.entry(name).or_insert_with_key(|name| Family {
                help: metric.description().to_owned(),
                kind,
                series: Vec::new(),
                last: labels.memos.remove(name).unwrap_or_default(),
            });
            if family.kind != kind {
                // The prometheus crate keeps the first definition of a name.
                continue;
            }
            let mut points = Points {
                labels,
                series: &mut family.series,
                guesses: &family.last.sets,
                counts: &mut counts,
                attributes: Vec::new(),
            };
            match metric.data() {
                AggregatedMetrics::F64(d) => points.metric(d),
                AggregatedMetrics::U64(d) => points.metric(d),
                AggregatedMetrics::I64(d) => points.metric(d),
            }
        }
    }

    // Room for every line: name, labels, `le`, value.
    let room: usize = families
        .iter()
        .map(|(name, f)| {
            let lines = |s: &Series| match &s.samples {
                Samples::One(_) => 1,
                Samples::Buckets { bounds, .. } => bounds.len() + 3,
            };
            f.series
                .iter()
                .map(|s| lines(s) * (name.len() + labels.sets[s.set].text.len() + 48))
                .sum::<usize>()
                + 256
        })
        .sum();
    let mut out = String::with_capacity(room);
    let reranked = labels.rank();
    let mut prefix = String::new();
    for (name, mut family) in families {
        if family.series.is_empty() {
            continue;
        }
        let mut memo = std::mem::take(&mut family.last);
        if reranked || !family.series.iter().map(|s| s.set).eq(memo.sets.iter().copied()) {
            memo.sets.clear();
            memo.sets.extend(family.series.iter().map(|s| s.set));
            // By rank: a number per series; stable, so equal sets keep their points' order.
            memo.order.clear();
            memo.order.extend(0..family.series.len());
            memo.order.sort_by_key(|&i| labels.sets[family.series[i].set].rank);
        }
        if !family.help.is_empty() {
            out.push_str("# HELP ");
            out.push_str(&name);
            out.push(' ');
            escape_into(&mut out, &family.help, false);
            out.push('\n');
        }
        out.push_str("# TYPE ");
        out.push_str(&name);
        out.push(' ');
        out.push_str(family.kind.as_str());
        out.push('\n');
        for &i in &memo.order {
            let s = &family.series[i];
            let text = &labels.text[labels.sets[s.set].text.clone()];
            write_series(&mut out, &mut prefix, &name, text, &s.samples, &counts);
        }
        labels.memos.insert(name, memo);
    }
    labels.end();
    out
}

/// The lines of one series; `prefix` is scratch space for its buckets' common start.
fn write_series(out: &mut String, prefix: &mut String, name: &str, labels: &str, samples: &Samples, counts: &[u64]) {
    let sample = |out: &mut String, suffix: &str, value: f64| {
        out.push_str(name);
        out.push_str(suffix);
        if !labels.is_empty() {
            out.push('{');
            out.push_str(labels);
            out.push('}');
        }
        out.push(' ');
        write_f64(out, value);
        out.push('\n');
    };
    match samples {
        Samples::One(v) => sample(out, "", *v),
        Samples::Buckets {
            cumulative,
            bounds,
            infinite_last,
            sum,
            count,
        } => {
            // `name_bucket{labels,`, then each bucket's `le="…"} ` and count.
            prefix.clear();
            prefix.push_str(name);
            prefix.push_str("_bucket{");
            prefix.push_str(labels);
            if !labels.is_empty() {
                prefix.push(',');
            }
            for (le, n) in bounds.iter().zip(&counts[cumulative.clone()]) {
                out.push_str(prefix);
                out.push_str(le);
                write_count(out, *n);
                out.push('\n');
            }
            if !infinite_last {
                out.push_str(prefix);
                out.push_str("le=\"+Inf\"} ");
                write_count(out, *count);
                out.push('\n');
            }
            sample(out, "_sum", *sum);
            sample(out, "_count", *count as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// Every kind of instrument and number, units with and without suffixes, two scopes, a
    /// resource, label keys that sanitize alike, values that need escaping, and enough label
    /// sets for the order to matter.
    fn record_everything(provider: &opentelemetry_sdk::metrics::SdkMeterProvider) {
        record_some(provider, 40);
    }

    /// The first `points` points of [`record_everything`] (whose attribute values are
    /// `&'static str`s, owned `String`s and shared `Arc<str>`s).
    fn record_some(provider: &opentelemetry_sdk::metrics::SdkMeterProvider, points: i64) {
        use opentelemetry::metrics::MeterProvider as _;
        let ours = provider.meter("llm-meter");
        let app = provider.meter_with_scope(
            opentelemetry::InstrumentationScope::builder("app")
                .with_version("1.2")
                .build(),
        );
        let calls = ours
            .u64_counter("gen_ai.calls")
            .with_unit("{call}")
            .with_description("Calls.")
            .build();
        let cost = ours
            .f64_counter("llm_meter.cost")
            .with_unit("USD")
            .with_description("Cost\nin \\ USD.")
            .build();
        let in_flight = ours.i64_up_down_counter("in.flight").build();
        let remaining = ours.f64_gauge("ratelimit.remaining").with_unit("1").build();
        let limit = ours.u64_gauge("ratelimit.limit").with_unit("{request}").build();
        let level = ours.i64_gauge("level").with_unit("Cel").build();
        let duration = ours
            .f64_histogram("op.duration")
            .with_unit("s")
            .with_boundaries(vec![0.005, 0.1, 1.5, 20.0])
            .build();
        let tokens = ours.u64_histogram("token.usage").with_unit("{token}").build();
        let rate = app.f64_counter("bytes.rate").with_unit("By/s").build();
        let odd = app
            .f64_histogram("2xx.count")
            .with_unit("ms/s")
            .with_boundaries(vec![-1.0, 0.0, 10.0])
            .build();
        let shared: [Arc<str>; 3] = ["team-a".into(), "team-b".into(), "team-c".into()];
        for i in 0..points {
            let attributes = [
                KeyValue::new("team", Value::String(shared[(i % 3) as usize].clone().into())),
                KeyValue::new(
                    "gen_ai.request.model",
                    ["gpt-4o", "gpt-4o-mini", "o3", "a\"b\\c\nd"][(i % 4) as usize],
                ),
                KeyValue::new("use_case.name", format!("case-{}", i % 7)),
                KeyValue::new("a.b", "dot"),
                KeyValue::new("a_b", "underscore"),
                KeyValue::new("n", i % 3),
                KeyValue::new("flag", i % 2 == 0),
            ];
            let some = &attributes[..(i % 7) as usize + 1];
            calls.add(i as u64 + 1, some);
            cost.add(0.1 * i as f64 + 1e-7, some);
            in_flight.add(if i % 2 == 0 { 3 } else { -5 }, some);
            remaining.record(-0.0 + (i as f64) / 3.0, some);
            limit.record(u64::MAX - i as u64, some);
            level.record(-i, some);
            duration.record(0.001 * (i * i) as f64, some);
            tokens.record(i as u64 * 37, some);
            rate.add(1.5, &[]);
            odd.record((i - 20) as f64 / 4.0, &attributes[5..]);
        }
        calls.add(1, &[]);
    }

    #[test]
    fn the_text_is_what_opentelemetry_prometheus_and_the_prometheus_crate_write() {
        use prometheus::Encoder as _;
        let registry = prometheus::Registry::new();
        let theirs = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .scope_info_enabled(false)
            .build()
            .unwrap();
        let (exposition, reader) = Exposition::new();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("svc")
            .with_attributes([
                KeyValue::new("deployment.environment", "test"),
                KeyValue::new("host.name", "h\"1"),
            ])
            .build();
        let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(theirs)
            .with_reader(reader)
            .build();
        let same_as_the_oracle = |at_least: usize| {
            let mut expected = Vec::new();
            prometheus::TextEncoder::new()
                .encode(&registry.gather(), &mut expected)
                .unwrap();
            let expected = String::from_utf8(expected).unwrap();
            let ours = exposition.encode().unwrap();
            assert!(
                expected.lines().count() > at_least,
                "the oracle wrote {} lines",
                expected.lines().count()
            );
            for (n, (a, b)) in ours.lines().zip(expected.lines()).enumerate() {
                assert_eq!(a, b, "line {}", n + 1);
            }
            assert_eq!(ours, expected);
        };
        // A first scrape with a few series; the next ones find those kept and add the rest
        // (ranked among them); the last finds every one kept.
        record_some(&provider, 5);
        same_as_the_oracle(50);
        record_everything(&provider);
        same_as_the_oracle(500);
        record_everything(&provider);
        same_as_the_oracle(500);
        // A family's new point whose set other families have: no new set, new order.
        use opentelemetry::metrics::MeterProvider as _;
        let limit = provider
            .meter("llm-meter")
            .u64_gauge("ratelimit.limit")
            .with_unit("{request}")
            .build();
        limit.record(5, &[]);
        same_as_the_oracle(500);
    }

    #[test]
    fn a_scrape_renders_only_the_label_sets_no_scrape_had() {
        let (exposition, reader) = Exposition::new();
        let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
            .with_reader(reader)
            .build();
        record_everything(&provider);
        let kept = || exposition.labels.lock().unwrap().sets.len();
        let first = exposition.encode().unwrap();
        let sets = kept();
        assert!(sets > 40, "{sets} label sets");
        // Owned strings are new copies in every collection: found by content, not added again.
        assert_eq!(exposition.encode().unwrap(), first);
        assert_eq!(exposition.encode().unwrap(), first);
        assert_eq!(kept(), sets);
        use opentelemetry::metrics::MeterProvider as _;
        let calls = provider.meter("llm-meter").u64_counter("gen_ai.calls").build();
        calls.add(1, &[KeyValue::new("use_case.name", String::from("a new one"))]);
        let text = exposition.encode().unwrap();
        assert!(
            text.contains(r#"gen_ai_calls_total{use_case_name="a new one"} 1"#),
            "{text}"
        );
        assert_eq!(kept(), sets + 1);
    }

    #[test]
    fn points_share_a_kept_sets_identity_only_through_its_strings() {
        let arc = |s: &str| Value::String(Arc::<str>::from(s).into());
        let kept = vec![
            KeyValue::new("model", arc("gpt-4o")),
            KeyValue::new("static", "s"),
            KeyValue::new("n", 3_i64),
            KeyValue::new("x", f64::NAN),
        ];
        let clone: Vec<KeyValue> = kept.clone();
        let with = |i: usize, v: Value| {
            let mut kvs = kept.clone();
            kvs[i] = KeyValue::new(kvs[i].key.clone(), v);
            kvs
        };
        let check = |point: &[KeyValue]| {
            let point: Vec<&KeyValue> = point.iter().collect();
            (
                same_identity(&kept, &point),
                identity(point.iter().copied()) == identity(kept.iter()),
                same_content(&kept, &point),
            )
        };
        assert_eq!(
            check(&clone),
            (true, true, true),
            "clones share the Arc and the &'static str"
        );
        // The same text in another allocation: found by content, not by identity.
        assert_eq!(check(&with(0, arc("gpt-4o"))), (false, false, true));
        // Other text of the same length.
        assert_eq!(check(&with(0, arc("gpt-4x"))), (false, false, false));
        assert_eq!(check(&with(2, Value::I64(4))), (false, false, false));
        // Owned strings are copied by every clone.
        let owned = with(1, Value::String(String::from("s").into()));
        let again = owned.clone();
        let owned: Vec<&KeyValue> = owned.iter().collect();
        assert!(!same_identity(&again, &owned));
        assert!(same_content(&again, &owned));
        let array = with(2, Value::Array(vec![1_i64].into()));
        assert_eq!(identity(array.iter()), None, "arrays are found by content");
    }

    #[test]
    fn label_sets_no_longer_scraped_are_dropped() {
        let owned: Vec<Vec<KeyValue>> = (0..2000)
            .map(|i| vec![KeyValue::new("n", i64::from(i)), KeyValue::new("s", format!("v{i}"))])
            .collect();
        fn refs(kvs: &[KeyValue]) -> Vec<&KeyValue> {
            kvs.iter().collect()
        }
        let mut labels = Labels::default();
        labels.begin();
        for kvs in &owned {
            labels.series(None, &refs(kvs), Samples::One(1.0));
        }
        labels.end();
        assert_eq!(labels.sets.len(), 2000);
        labels.begin();
        let s = labels.series(None, &refs(&owned[7]), Samples::One(1.0));
        assert_eq!(s.set, 7, "kept from the scrape before");
        labels.end();
        assert_eq!(labels.sets.len(), 0, "1,999 sets unused: all dropped");
        labels.begin();
        let s = labels.series(None, &refs(&owned[7]), Samples::One(1.0));
        assert_eq!(&labels.text[labels.sets[s.set].text.clone()], r#"n="7",s="v7""#);
        labels.end();
        assert_eq!(labels.sets.len(), 1);
    }

    #[test]
    fn no_provider_no_text_and_a_shut_down_provider_is_an_error() {
        assert_eq!(Exposition::default().encode().unwrap(), "");
        let (exposition, reader) = Exposition::new();
        let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
            .with_reader(reader)
            .build();
        provider.shutdown().unwrap();
        assert!(exposition.encode().is_err());
    }

    #[test]
    fn numbers_print_as_rust_displays_them() {
        for v in [
            0.0,
            -0.0,
            1.0,
            -3.0,
            0.18,
            1e-7,
            123_456_789.0,
            9_007_199_254_740_991.0,
            9_007_199_254_740_992.0,
            1.152_921_504_606_847e18,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            f64::MAX,
        ] {
            let mut out = String::new();
            write_f64(&mut out, v);
            assert_eq!(out, v.to_string(), "{v:e}");
        }
        for v in [0, 7, -7, i64::MAX, i64::MIN] {
            let mut out = String::new();
            write_integer(&mut out, v);
            assert_eq!(out, v.to_string());
        }
        for n in [0, 7, (1 << 53) - 1, 1 << 53, (1 << 53) + 1, u64::MAX] {
            let mut out = String::new();
            write_count(&mut out, n);
            assert_eq!(out, (n as f64).to_string(), "{n}");
        }
    }

    #[test]
    fn names_and_units_follow_opentelemetry_prometheus() {
        assert_eq!(sanitize_name("gen_ai.client.token.usage"), "gen_ai_client_token_usage");
        assert_eq!(sanitize_name("1st-metric"), "_1st_metric");
        assert_eq!(sanitize_name("a:b_c"), "a:b_c");
        for (unit, suffix) in [
            ("s", Some("seconds")),
            ("By", Some("bytes")),
            ("{token}", None),
            ("USD", None),
            ("", None),
            ("m/s", Some("meters_per_second")),
            ("1/y", Some("per_year")),
            ("ms/s", Some("per_second")),
            ("{request}/s", Some("per_second")),
            ("x/zz", None),
        ] {
            assert_eq!(unit_suffix(unit).as_deref(), suffix, "{unit}");
        }
    }

    #[test]
    fn labels_are_sanitized_sorted_joined_and_escaped() {
        let attributes = [
            KeyValue::new("z.key", "last"),
            KeyValue::new("a.b", "one"),
            KeyValue::new("a_b", "two"),
            KeyValue::new("aB", "quote \" back \\ line \n"),
            KeyValue::new("n", 3_i64),
            KeyValue::new("t", true),
        ];
        let mut labels = Labels::default();
        let s = labels.series(None, &attributes.iter().collect::<Vec<_>>(), Samples::One(1.0));
        let set = &labels.sets[s.set];
        assert_eq!(
            &labels.text[set.text.clone()],
            r#"aB="quote \" back \\ line \n",a_b="one;two",n="3",t="true",z_key="last""#
        );
        let values: Vec<&str> = labels.values[set.values.clone()]
            .iter()
            .map(|r| &labels.raw[r.clone()])
            .collect();
        assert_eq!(values, ["quote \" back \\ line \n", "one;two", "3", "true", "last"]);
    }
}
