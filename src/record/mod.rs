//! [`CallRecord`]: everything observed about one call, handed to every sink once the call ends,
//! and the [`CallHook`] trait through which applications add their own sinks.

pub mod limits;
pub mod pricing;
#[cfg(feature = "redis")]
pub mod redis_ledger;
pub mod xproxy;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::parse::annotations::Annotations;
use crate::parse::endpoint::Api;
use crate::parse::provider::{scan_plain, ProviderMeta, ResponseFacts, Str, Usage};
use crate::parse::scan::{Scanner, Seen};
use crate::record::limits::{LimitState, Refusal};
use crate::record::pricing::Cost;

/// Low-cardinality class of a failed call, recorded as `error.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorType {
    /// The provider answered with a non-2xx HTTP status (`error.type` is the code, e.g. `429`).
    Status(u16),
    /// The call (or a stream read) timed out.
    Timeout,
    /// No connection could be made.
    Connect,
    /// The body could not be read as a chat completion, or a stream chunk as JSON.
    Decode,
    /// The caller dropped the call or the stream before it ended.
    Cancelled,
    /// The stream ended without `data: [DONE]`.
    Truncated,
    /// The provider sent an `{"error": ...}` event inside a stream.
    StreamError,
    /// The connection failed mid-call (reset, protocol error).
    Transport,
    /// The request could not be built (unserializable body, bad URL).
    InvalidRequest,
    /// A block limit refused the call; the provider was not called.
    LimitReached,
    /// The call named a block limit and the ledger could not be asked (policy `closed`); the
    /// provider was not called.
    LedgerUnavailable,
}

impl ErrorType {
    /// The `error.type` value.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorType::Status(code) => status_str(*code),
            ErrorType::Timeout => "timeout",
            ErrorType::Connect => "connect",
            ErrorType::Decode => "decode",
            ErrorType::Cancelled => "cancelled",
            ErrorType::Truncated => "truncated",
            ErrorType::StreamError => "stream_error",
            ErrorType::Transport => "transport",
            ErrorType::InvalidRequest => "invalid_request",
            ErrorType::LimitReached => "limit_reached",
            ErrorType::LedgerUnavailable => "ledger_unavailable",
        }
    }

    /// Classifies a reqwest error. reqwest reports a body that failed while it was read (the
    /// connection reset mid-body) as a decode error caused by a body error: that is `transport`;
    /// `decode` is for a body that arrived and could not be read.
    pub fn from_reqwest(e: &reqwest::Error) -> Self {
        if e.is_timeout() {
            ErrorType::Timeout
        } else if e.is_connect() {
            ErrorType::Connect
        } else if e.is_body() || caused_by_body(e) {
            ErrorType::Transport
        } else if e.is_decode() {
            ErrorType::Decode
        } else if e.is_builder() {
            ErrorType::InvalidRequest
        } else {
            ErrorType::Transport
        }
    }
}

/// Whether reading the body failed somewhere down `e`'s causes.
fn caused_by_body(e: &reqwest::Error) -> bool {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.downcast_ref::<reqwest::Error>().is_some_and(reqwest::Error::is_body) {
            return true;
        }
        cause = c.source();
    }
    false
}

impl std::fmt::Display for ErrorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `"100"` … `"599"` as static strings, so labels need no allocation; other codes are `_OTHER`.
fn status_str(code: u16) -> &'static str {
    static CODES: OnceLock<Vec<String>> = OnceLock::new();
    let codes = CODES.get_or_init(|| (100..600).map(|c| c.to_string()).collect());
    match code {
        100..=599 => &codes[usize::from(code - 100)],
        _ => "_OTHER",
    }
}

/// What the request asked for, read from the body actually sent.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct RequestFacts {
    /// The API the request is for (it decides how the answer is read).
    pub api: Api,
    /// `model`.
    pub model: String,
    /// `stream`.
    pub stream: bool,
    /// `stream_options.include_usage` as sent (after the client may have added it).
    pub include_usage: bool,
    /// `max_completion_tokens`, or the legacy `max_tokens` (Anthropic's `max_tokens`, the
    /// Responses API's `max_output_tokens`).
    pub max_tokens: Option<u64>,
    /// `temperature`.
    pub temperature: Option<f64>,
    /// `top_p`.
    pub top_p: Option<f64>,
    /// `frequency_penalty`.
    pub frequency_penalty: Option<f64>,
    /// `presence_penalty`.
    pub presence_penalty: Option<f64>,
    /// `seed`.
    pub seed: Option<i64>,
    /// `n`.
    pub choice_count: Option<u64>,
    /// `stop` (a string or an array; Anthropic's `stop_sequences`).
    pub stop_sequences: Vec<String>,
    /// `service_tier`.
    pub service_tier: Option<String>,
}

#[derive(Deserialize, Default, Debug, PartialEq)]
struct RequestWire<'a> {
    #[serde(borrow, default)]
    model: Option<Str<'a>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptionsWire>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    frequency_penalty: Option<f64>,
    #[serde(default)]
    presence_penalty: Option<f64>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    stop_sequences: Option<Vec<String>>,
    #[serde(borrow, default)]
    service_tier: Option<Str<'a>>,
}

#[derive(Deserialize, Default, Debug, PartialEq)]
struct StreamOptionsWire {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize, Debug, PartialEq)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

impl<'a> RequestWire<'a> {
    /// What serde would read, or `None` when the [`Scanner`] leaves it to serde.
    fn scan(text: &'a str) -> Option<Self> {
        let mut s = Scanner::new(text);
        s.object()?;
        let mut w = RequestWire::default();
        let (mut seen, mut first) = (Seen::default(), true);
        while let Some(key) = s.next_key(&mut first)? {
            let field = match key {
                "model" => {
                    w.model = s.nullable(scan_plain)?;
                    0
                }
                "stream" => {
                    w.stream = s.nullable(Scanner::boolean)?;
                    1
                }
                "stream_options" => {
                    w.stream_options = s.nullable(|s| {
                        s.object()?;
                        let (mut include_usage, mut seen, mut first) = (None, Seen::default(), true);
                        while let Some(key) = s.next_key(&mut first)? {
                            if key != "include_usage" {
                                s.skip_value()?;
                                continue;
                            }
                            seen.first_time(0)?;
                            include_usage = s.nullable(Scanner::boolean)?;
                        }
                        Some(StreamOptionsWire { include_usage })
                    })?;
                    2
                }
                "max_completion_tokens" => {
                    w.max_completion_tokens = s.nullable(Scanner::unsigned)?;
                    3
                }
                "max_tokens" => {
                    w.max_tokens = s.nullable(Scanner::unsigned)?;
                    4
                }
                "max_output_tokens" => {
                    w.max_output_tokens = s.nullable(Scanner::unsigned)?;
                    5
                }
                "temperature" => {
                    w.temperature = s.nullable(number)?;
                    6
                }
                "top_p" => {
                    w.top_p = s.nullable(number)?;
                    7
                }
                "frequency_penalty" => {
                    w.frequency_penalty = s.nullable(number)?;
                    8
                }
                "presence_penalty" => {
                    w.presence_penalty = s.nullable(number)?;
                    9
                }
                "seed" => {
                    w.seed = s.nullable(number)?;
                    10
                }
                "n" => {
                    w.n = s.nullable(Scanner::unsigned)?;
                    11
                }
                "stop" => {
                    w.stop = s.nullable(|s| {
                        if s.peek()? == b'"' {
                            s.plain_string().map(|v| Stop::One(v.to_owned()))
                        } else {
                            strings(s).map(Stop::Many)
                        }
                    })?;
                    12
                }
                "stop_sequences" => {
                    w.stop_sequences = s.nullable(strings)?;
                    13
                }
                "service_tier" => {
                    w.service_tier = s.nullable(scan_plain)?;
                    14
                }
                _ => {
                    s.skip_value()?;
                    continue;
                }
            };
            seen.first_time(field)?;
        }
        s.at_end().then_some(w)
    }
}

/// A number as serde reads it, from its own text (the same parser, so the same value).
fn number<T: serde::de::DeserializeOwned>(s: &mut Scanner<'_>) -> Option<T> {
    serde_json::from_str(s.number_text()?).ok()
}

/// An array of strings without escapes.
fn strings(s: &mut Scanner<'_>) -> Option<Vec<String>> {
    s.array()?;
    let (mut out, mut first) = (Vec::new(), true);
    while s.next_element(&mut first)? {
        out.push(s.plain_string()?.to_owned());
    }
    Some(out)
}

/// Where `stream_options` stands in a request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamOptions {
    /// No `stream_options` object.
    Absent,
    /// Present; `include_usage` as given.
    Present {
        /// `include_usage: true`.
        include_usage: bool,
    },
}

impl RequestFacts {
    /// Reads the facts from a JSON request body of any [`Api`] (the field names do not clash:
    /// each API's are read); also says where `stream_options` stands. `api` is left at its
    /// default: the caller knows which API it sends to.
    pub fn parse(body: &[u8]) -> Result<(Self, StreamOptions), serde_json::Error> {
        // The scanner reads text; serde reads what it leaves, and bodies that are not UTF-8
        // (serde does not check the strings it skips).
        let w = match std::str::from_utf8(body).ok().and_then(RequestWire::scan) {
            Some(w) => w,
            None => serde_json::from_slice(body)?,
        };
        let options = match &w.stream_options {
            None => StreamOptions::Absent,
            Some(o) => StreamOptions::Present {
                include_usage: o.include_usage == Some(true),
            },
        };
        let facts = RequestFacts {
            api: Api::default(),
            model: w.model.map(|m| m.0.into_owned()).unwrap_or_default(),
            stream: w.stream == Some(true),
            include_usage: matches!(options, StreamOptions::Present { include_usage: true }),
            max_tokens: w.max_completion_tokens.or(w.max_tokens).or(w.max_output_tokens),
            temperature: w.temperature,
            top_p: w.top_p,
            frequency_penalty: w.frequency_penalty,
            presence_penalty: w.presence_penalty,
            seed: w.seed,
            choice_count: w.n,
            stop_sequences: match (w.stop, w.stop_sequences) {
                (Some(Stop::One(s)), _) => vec![s],
                (Some(Stop::Many(v)), _) | (None, Some(v)) => v,
                (None, None) => Vec::new(),
            },
            service_tier: w.service_tier.map(|t| t.0.into_owned()),
        };
        Ok((facts, options))
    }
}

/// Timings of a call.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Timings {
    /// Wall-clock start.
    pub started_at: SystemTime,
    /// Whole call, from sending to the end of the body or stream.
    pub duration: Duration,
    /// Streams: from sending to the first chunk.
    pub time_to_first_chunk: Option<Duration>,
    /// Streams: mean time between output chunks after the first.
    pub time_per_output_chunk: Option<Duration>,
    /// Streams: data events received, `[DONE]` excluded.
    pub chunks: u32,
}

impl Timings {
    /// A call started at `started_at` that took no time yet and streamed nothing.
    pub fn new(started_at: SystemTime) -> Self {
        Timings {
            started_at,
            duration: Duration::ZERO,
            time_to_first_chunk: None,
            time_per_output_chunk: None,
            chunks: 0,
        }
    }
}

/// llm-meter's id of a call: 128 random bits, shown as 32 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CallId(pub u128);

impl CallId {
    /// A fresh id (unique within the process, unpredictable across processes).
    pub fn new() -> Self {
        static SEED: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let seed = *SEED.get_or_init(|| {
            let t = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            splitmix(t ^ u64::from(std::process::id()).rotate_left(32))
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let hi = splitmix(seed ^ n);
        let lo = splitmix(hi ^ n.rotate_left(17));
        CallId((u128::from(hi) << 64) | u128::from(lo))
    }
}

impl Default for CallId {
    fn default() -> Self {
        Self::new()
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writes `bytes` as lowercase hex digits into `out` (twice as long), without formatting
/// machinery.
pub(crate) fn write_hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
}

impl CallId {
    /// The id as 32 lowercase hex digits, without formatting machinery.
    pub fn to_hex(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        write_hex(&self.0.to_be_bytes(), &mut out);
        out
    }
}

impl std::fmt::Display for CallId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex = self.to_hex();
        // Hex digits are ASCII.
        f.pad(std::str::from_utf8(&hex).unwrap_or_default())
    }
}

/// Everything observed about one call. Sinks (span, metrics, limits, hooks) read it once.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CallRecord {
    /// llm-meter's id of the call (`xproxy_result.request_id`).
    pub id: CallId,
    /// `gen_ai.operation.name` (`chat`).
    pub operation: &'static str,
    /// `gen_ai.provider.name`.
    pub provider: Arc<str>,
    /// Provider host.
    pub server_address: Arc<str>,
    /// Provider port.
    pub server_port: Option<u16>,
    /// The caller's annotations.
    pub annotations: Annotations,
    /// What the request asked for.
    pub request: RequestFacts,
    /// HTTP status of the provider's answer, when one came.
    pub status: Option<u16>,
    /// Provider debug and rate-limit headers.
    pub meta: ProviderMeta,
    /// Response facts (id, model, finish reasons, ...).
    pub response: ResponseFacts,
    /// Token usage, when the provider reported it.
    pub usage: Option<Usage>,
    /// Timings.
    pub timings: Timings,
    /// Why the call failed, if it did.
    pub error: Option<ErrorType>,
    /// Cost in USD, when usage is known and the model priced.
    pub cost: Option<Cost>,
    /// State of every limit the call named, after it.
    pub limits: Vec<(String, LimitState)>,
    /// Limits that refused the call.
    pub blocked_limit_ids: Vec<String>,
}

impl CallRecord {
    /// The record of a call to `request.model` started at `started_at`, before anything came
    /// back: a fresh id, a chat call to OpenAI, no answer, no usage, no cost. The pipeline fills
    /// the rest; tests and custom doors set the fields they observed.
    pub fn new(annotations: Annotations, request: RequestFacts, started_at: SystemTime) -> Self {
        CallRecord {
            id: CallId::new(),
            operation: crate::names::OPERATION_CHAT,
            provider: Arc::from(crate::names::PROVIDER_OPENAI),
            server_address: Arc::from(""),
            server_port: None,
            annotations,
            request,
            status: None,
            meta: ProviderMeta::default(),
            response: ResponseFacts::default(),
            usage: None,
            timings: Timings::new(started_at),
            error: None,
            cost: None,
            limits: Vec::new(),
            blocked_limit_ids: Vec::new(),
        }
    }

    /// The model to label the call with: the response's, else the request's.
    pub fn model(&self) -> &str {
        self.response.model.as_deref().unwrap_or(&self.request.model)
    }

    /// True when the provider reported usage but the model has no price.
    pub fn unpriced(&self) -> bool {
        self.usage.is_some() && self.cost.is_none()
    }
}

/// A sink for finished calls. Implemented for `()` (nothing), for closures
/// `Fn(&CallRecord)`, and for any user type. Called on the task that finished the call: keep it
/// fast and never block.
pub trait CallHook: Send + Sync + 'static {
    /// One finished call.
    fn on_call(&self, record: &CallRecord);
}

impl CallHook for () {
    fn on_call(&self, _: &CallRecord) {}
}

/// A shared hook: keep one handle, give the client another.
impl<T: CallHook> CallHook for Arc<T> {
    fn on_call(&self, record: &CallRecord) {
        (**self).on_call(record)
    }
}

impl<F: Fn(&CallRecord) + Send + Sync + 'static> CallHook for F {
    fn on_call(&self, record: &CallRecord) {
        self(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod request_scanner_against_serde {
        use proptest::prelude::*;
        use serde_json::{json, Value};

        use super::super::*;
        use crate::parse::scan::differential::{agrees, edit};

        fn check(text: &str) -> Result<bool, TestCaseError> {
            agrees(text, RequestWire::scan(text))
        }

        #[test]
        fn usual_requests_are_scanned_as_serde_reads_them() {
            let requests = [
                r#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello, benchmark"}]}"#,
                r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":false},"max_completion_tokens":64,"temperature":0.2,"top_p":0.9,"stop":["END"],"n":2,"seed":7}"#,
                r#"{"model":"claude-sonnet-4-5","max_tokens":1024,"stop_sequences":["\n\nHuman:"],"messages":[{"role":"user","content":[{"type":"text","text":"Hi"}]}],"temperature":1}"#,
                r#"{"model":"gpt-4.1","input":"Say hi","max_output_tokens":50,"service_tier":"flex","stream":false,"seed":-3,"frequency_penalty":-0.5,"presence_penalty":1e-1,"stop":"x"}"#,
                r#"{"model":null,"stream":null,"stream_options":null,"stop":null,"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]}"#,
            ];
            for text in requests {
                // The third has an escape in `stop_sequences`, which serde reads: left to serde.
                let scanned = check(text).unwrap();
                assert_eq!(scanned, !text.contains("\\n\\nHuman"), "{text}");
            }
        }

        fn any_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<u64>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(Value::from),
                (0.0f64..2.0).prop_map(Value::from),
                "[a-z\\\"é]{0,6}".prop_map(Value::from),
            ];
            leaf.prop_recursive(2, 12, 3, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                    proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..3)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        const FIELDS: [&str; 16] = [
            "model",
            "stream",
            "stream_options",
            "max_completion_tokens",
            "max_tokens",
            "max_output_tokens",
            "temperature",
            "top_p",
            "frequency_penalty",
            "presence_penalty",
            "seed",
            "n",
            "stop",
            "stop_sequences",
            "service_tier",
            "messages",
        ];

        fn request() -> impl Strategy<Value = Value> {
            let typed = prop_oneof![
                Just(json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true}})),
                Just(json!({"temperature": 0.7, "top_p": 1, "seed": -1, "n": 1, "max_tokens": 16})),
                Just(json!({"stop": ["a", "b"], "stop_sequences": [], "service_tier": "auto"})),
                Just(json!({"stop": "a", "stream_options": {"include_usage": null, "other": 1}})),
            ];
            (
                typed,
                proptest::collection::vec((prop::sample::select(&FIELDS[..]), any_value()), 0..4),
            )
                .prop_map(|(mut body, fields)| {
                    for (k, v) in fields {
                        body[k] = v;
                    }
                    body
                })
        }

        /// Also a field named twice.
        const REPLACEMENTS: [(&str, &str); 1] = [("{", "{\"n\":1,\"n\":2,")];

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            #[test]
            fn whatever_the_scanner_reads_serde_reads_the_same(body in request(), pretty: bool, kind: u8, at: usize) {
                let text = if pretty { serde_json::to_string_pretty(&body) } else { serde_json::to_string(&body) }.unwrap();
                check(&edit(&text, kind, at, &REPLACEMENTS))?;
            }
        }
    }

    #[test]
    fn call_ids_print_as_32_hex_digits() {
        for id in [
            0,
            7,
            u128::MAX,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
            CallId::new().0,
        ] {
            assert_eq!(CallId(id).to_string(), format!("{id:032x}"));
        }
    }

    #[test]
    fn error_types_are_low_cardinality_strings() {
        assert_eq!(ErrorType::Status(429).as_str(), "429");
        assert_eq!(ErrorType::Status(503).as_str(), "503");
        assert_eq!(ErrorType::Status(42).as_str(), "_OTHER");
        assert_eq!(ErrorType::Cancelled.as_str(), "cancelled");
    }

    #[test]
    fn request_facts_read_parameters_and_stream_options() {
        let body = br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":false},"max_tokens":5,"max_completion_tokens":9,"temperature":0.5,"stop":"END","n":2,"seed":-3}"#;
        let (f, opts) = RequestFacts::parse(body).unwrap();
        assert_eq!(opts, StreamOptions::Present { include_usage: false });
        assert_eq!(
            (f.model.as_str(), f.stream, f.max_tokens, f.temperature),
            ("gpt-4o", true, Some(9), Some(0.5))
        );
        assert_eq!(
            (f.stop_sequences, f.choice_count, f.seed),
            (vec!["END".to_owned()], Some(2), Some(-3))
        );
        let (f, opts) = RequestFacts::parse(br#"{"model":"m","stop":["a","b"]}"#).unwrap();
        assert_eq!(
            (opts, f.stop_sequences.len(), f.stream),
            (StreamOptions::Absent, 2, false)
        );
    }
}

/// Why a [`Meter`](crate::Meter), a [`Client`](crate::Client) or a proxy could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// An API base that is not an absolute http(s) URL (`what` names the setting).
    #[error("{what} {url:?}: {why}")]
    ApiBase {
        /// The setting: `base_url`, `upstream`, ….
        what: &'static str,
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// An API key that a header cannot carry (`what` names the setting).
    #[error("{what} holds characters not allowed in a header")]
    ApiKey {
        /// The setting: `api_key`, `upstream_api_key`.
        what: &'static str,
    },
    /// Model defaults that are not a JSON object.
    #[error("model_defaults for {model:?} must be a JSON object, got {got}")]
    ModelDefaults {
        /// The model the defaults are for.
        model: String,
        /// What was given instead.
        got: String,
    },
    /// The HTTP client could not be built (TLS set-up).
    #[error("HTTP client: {0}")]
    Http(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Why a call through llm-meter itself failed (every door: client, async-openai layer, proxy).
/// Provider errors (4xx, 5xx) are not errors here: they come back as a response with the
/// provider's status and body.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The request body could not be serialized, or is not a JSON object.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The HTTP exchange failed (connect, timeout, reset).
    #[error("chat completion call failed ({kind}): {source}")]
    Http {
        /// Low-cardinality class, as recorded on the span.
        kind: ErrorType,
        /// The transport error (a `reqwest::Error` from the client, a hyper error from the proxy).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A block limit refused the call; the provider was not called.
    #[error("limit reached: refused by {}", blocked_limit_ids.join(", "))]
    LimitReached {
        /// The limits that refused the call.
        blocked_limit_ids: Vec<String>,
        /// The record of the refused call.
        record: Box<CallRecord>,
    },
    /// The call named a block limit and the ledger could not be asked in time (policy
    /// `closed`); the provider was not called.
    #[error("refused: {source}; calls naming a block limit are refused until it answers")]
    LedgerUnavailable {
        /// What the ledger did.
        #[source]
        source: crate::record::limits::LedgerError,
        /// The record of the refused call.
        record: Box<CallRecord>,
    },
}

impl CallError {
    /// The `error.type` this failure was recorded with.
    pub fn error_type(&self) -> ErrorType {
        match self {
            CallError::InvalidRequest(_) => ErrorType::InvalidRequest,
            CallError::Http { kind, .. } => *kind,
            CallError::LimitReached { .. } => ErrorType::LimitReached,
            CallError::LedgerUnavailable { .. } => ErrorType::LedgerUnavailable,
        }
    }

    /// The error a library door reports a call with that admission refused (`record` is the
    /// refused call's, from [`Call::refuse`](crate::Call::refuse)).
    pub(crate) fn refused(refusal: Refusal, record: CallRecord) -> Self {
        let record = Box::new(record);
        match refusal {
            Refusal::LedgerUnavailable(source) => CallError::LedgerUnavailable { source, record },
            Refusal::Blocked(blocked_limit_ids) => CallError::LimitReached {
                blocked_limit_ids,
                record,
            },
        }
    }

    /// A transport failure of class `kind`.
    pub fn transport(kind: ErrorType, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        CallError::Http {
            kind,
            source: source.into(),
        }
    }
}

impl From<reqwest::Error> for CallError {
    fn from(source: reqwest::Error) -> Self {
        CallError::transport(ErrorType::from_reqwest(&source), source)
    }
}

impl From<crate::parse::stream::StreamFault> for ErrorType {
    fn from(fault: crate::parse::stream::StreamFault) -> Self {
        match fault {
            crate::parse::stream::StreamFault::Decode => ErrorType::Decode,
            crate::parse::stream::StreamFault::ErrorEvent => ErrorType::StreamError,
        }
    }
}
