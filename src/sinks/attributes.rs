//! A call's span attributes, read once from the finished [`CallRecord`] in a fixed order and
//! handed to a sink: an OpenTelemetry span as `KeyValue`s ([`KeyValues`]), or an OTLP protobuf
//! body written straight from the record (`otlp_spans`). Both routes give the same attributes in
//! the same order, so a span reads the same whichever route it took.

use std::cell::RefCell;
use std::sync::Arc;

use opentelemetry::{Array, KeyValue, StringValue, Value};

use crate::names::*;
use crate::parse::annotations::Annotations;
use crate::record::CallRecord;

/// A text attribute value: one the program holds for good (a known finish reason), or one
/// borrowed from the record.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Text<'a> {
    Static(&'static str),
    Of(&'a str),
}

impl Text<'_> {
    #[cfg_attr(not(feature = "otlp-http"), allow(dead_code))]
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Text::Static(s) => s,
            Text::Of(s) => s,
        }
    }
}

/// Where a call's attributes go, one by one.
pub(crate) trait Attributes {
    fn int(&mut self, key: &'static str, value: i64);
    fn float(&mut self, key: &'static str, value: f64);
    fn flag(&mut self, key: &'static str, value: bool);
    fn text(&mut self, key: &'static str, value: Text<'_>);
    /// A text most calls repeat (a model, an organization), which a sink may share with the
    /// previous call's.
    fn repeated(&mut self, key: &'static str, _which: Repeated, value: &str) {
        self.text(key, Text::Of(value));
    }
    /// An array of texts; never empty.
    fn texts<'a>(&mut self, key: &'static str, values: impl ExactSizeIterator<Item = Text<'a>> + Clone);
    /// `{prefix}{name}` = `value`: a use-case or request property.
    fn property(&mut self, prefix: &'static str, name: &str, value: &str);
}

/// Attribute values most calls repeat (a model, a route, an organization).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Repeated {
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
pub(crate) fn repeated(which: Repeated, value: &str) -> Value {
    LAST_VALUES.with_borrow_mut(|last| {
        let slot = &mut last[which as usize];
        let shared = match slot {
            Some(last) if **last == *value => Arc::clone(last),
            _ => Arc::clone(slot.insert(Arc::from(value))),
        };
        Value::String(StringValue::from(shared))
    })
}

/// How many attributes a call's span is opened with, at most ([`opening_attributes`]).
pub(crate) const OPENING_ATTRIBUTES: usize = 5;

/// How many attributes a call's span holds at most without properties: the opening ones, the
/// 46 [`each_attribute`] can give and `error.type`.
pub(crate) const SPAN_ATTRIBUTES: usize = OPENING_ATTRIBUTES + 47;

/// The attributes a call's span has from its start: operation, provider, requested model,
/// server address and, when annotated, the use case.
pub(crate) fn opening_attributes(
    model: &str,
    provider: &str,
    server_address: &str,
    annotations: &Annotations,
    to: &mut impl Attributes,
) {
    to.text(GEN_AI_OPERATION_NAME, Text::Static(OPERATION_CHAT));
    to.repeated(GEN_AI_PROVIDER_NAME, Repeated::Provider, provider);
    to.repeated(GEN_AI_REQUEST_MODEL, Repeated::RequestModel, model);
    to.repeated(SERVER_ADDRESS, Repeated::ServerAddress, server_address);
    if let Some(use_case) = annotations.use_case_name() {
        to.repeated(USE_CASE_NAME, Repeated::UseCase, use_case);
    }
}

/// Hands `to` every attribute of the record beyond the opening ones, each once, in a fixed
/// order: what is known of the request, the answer, the provider's headers, the stream, the
/// cost, then the annotations and their properties. A value the record does not have is left
/// out.
pub(crate) fn each_attribute(r: &CallRecord, to: &mut impl Attributes) {
    fn int(v: u64) -> i64 {
        i64::try_from(v).unwrap_or(i64::MAX)
    }
    fn of(items: &[String]) -> impl ExactSizeIterator<Item = Text<'_>> + Clone {
        items.iter().map(|s| Text::Of(s))
    }
    // `to.$kind(key, value)` (the value mapped by `$map`), when there is a value.
    macro_rules! some {
        ($kind:ident, $key:expr, $value:expr) => {
            if let Some(v) = $value {
                to.$kind($key, v);
            }
        };
        ($kind:ident, $key:expr, $value:expr, $map:expr) => {
            some!($kind, $key, $value.map($map))
        };
    }
    // A text most calls repeat, when there is one.
    macro_rules! repeated {
        ($key:expr, $value:expr, $which:ident) => {
            if let Some(v) = $value {
                to.repeated($key, Repeated::$which, v);
            }
        };
    }
    // An array of texts, when there is one.
    macro_rules! texts {
        ($key:expr, $items:expr) => {
            let items = $items;
            if items.len() > 0 {
                to.texts($key, items);
            }
        };
    }

    some!(int, SERVER_PORT, r.server_port, i64::from);
    let q = &r.request;
    some!(int, GEN_AI_REQUEST_MAX_TOKENS, q.max_tokens, int);
    some!(float, GEN_AI_REQUEST_TEMPERATURE, q.temperature);
    some!(float, GEN_AI_REQUEST_TOP_P, q.top_p);
    some!(float, GEN_AI_REQUEST_FREQUENCY_PENALTY, q.frequency_penalty);
    some!(float, GEN_AI_REQUEST_PRESENCE_PENALTY, q.presence_penalty);
    some!(int, GEN_AI_REQUEST_SEED, q.seed);
    some!(
        int,
        GEN_AI_REQUEST_CHOICE_COUNT,
        q.choice_count.filter(|n| *n != 1),
        int
    );
    texts!(GEN_AI_REQUEST_STOP_SEQUENCES, of(&q.stop_sequences));
    to.flag(GEN_AI_REQUEST_STREAM, q.stream);
    repeated!(
        OPENAI_REQUEST_SERVICE_TIER,
        q.service_tier.as_deref(),
        RequestServiceTier
    );

    let p = &r.response;
    some!(text, GEN_AI_RESPONSE_ID, p.id.as_deref(), Text::Of);
    repeated!(GEN_AI_RESPONSE_MODEL, p.model.as_deref(), ResponseModel);
    texts!(
        GEN_AI_RESPONSE_FINISH_REASONS,
        p.finish_reasons.iter().map(|f| match f.as_static_str() {
            Some(known) => Text::Static(known),
            None => Text::Of(f.as_str()),
        })
    );
    repeated!(
        OPENAI_RESPONSE_SERVICE_TIER,
        p.service_tier.as_deref(),
        ResponseServiceTier
    );
    repeated!(
        OPENAI_RESPONSE_SYSTEM_FINGERPRINT,
        p.system_fingerprint.as_deref(),
        Fingerprint
    );
    if let Some(u) = r.usage {
        to.int(GEN_AI_USAGE_INPUT_TOKENS, int(u.input_tokens));
        to.int(GEN_AI_USAGE_OUTPUT_TOKENS, int(u.output_tokens));
        some!(int, GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, u.cached_input_tokens, int);
        some!(
            int,
            GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS,
            u.cache_creation_input_tokens,
            int
        );
        some!(int, GEN_AI_USAGE_REASONING_OUTPUT_TOKENS, u.reasoning_tokens, int);
    }
    some!(int, HTTP_RESPONSE_STATUS_CODE, r.status, i64::from);

    let m = &r.meta;
    some!(text, OPENAI_REQUEST_ID, m.request_id(), Text::Of);
    repeated!(OPENAI_ORGANIZATION, m.organization(), Organization);
    repeated!(OPENAI_API_VERSION, m.api_version(), ApiVersion);
    some!(float, OPENAI_PROCESSING_MS, m.processing, |d: std::time::Duration| d
        .as_secs_f64()
        * 1000.0);
    let seconds = |d: std::time::Duration| d.as_secs_f64();
    some!(int, RATELIMIT_LIMIT_REQUESTS, m.requests.limit, int);
    some!(int, RATELIMIT_REMAINING_REQUESTS, m.requests.remaining, int);
    some!(float, RATELIMIT_RESET_REQUESTS, m.requests.reset, seconds);
    some!(int, RATELIMIT_LIMIT_TOKENS, m.tokens.limit, int);
    some!(int, RATELIMIT_REMAINING_TOKENS, m.tokens.remaining, int);
    some!(float, RATELIMIT_RESET_TOKENS, m.tokens.reset, seconds);

    if q.stream {
        some!(
            float,
            LLM_METER_TIME_TO_FIRST_CHUNK,
            r.timings.time_to_first_chunk,
            seconds
        );
        to.int(LLM_METER_CHUNK_COUNT, r.timings.chunks.into());
    }
    if let Some(c) = r.cost {
        to.float(COST_INPUT_USD, c.input);
        to.float(COST_OUTPUT_USD, c.output);
        to.float(COST_TOTAL_USD, c.total);
    }
    if r.unpriced() {
        to.flag(COST_UNPRICED, true);
    }
    texts!(LIMITS_BLOCKED, of(&r.blocked_limit_ids));

    let a = &r.annotations;
    some!(text, USE_CASE_ID, a.use_case_id(), Text::Of);
    some!(text, USE_CASE_VERSION, a.use_case_version(), Text::Of);
    some!(text, USE_CASE_STEP, a.use_case_step(), Text::Of);
    some!(text, USER_ID, a.user_id(), Text::Of);
    some!(text, ACCOUNT_NAME, a.account_name(), Text::Of);
    texts!(LIMIT_IDS, of(a.limit_ids()));
    texts!(REQUEST_TAGS, of(a.request_tags()));
    for (prefix, props) in [
        (USE_CASE_PROPERTIES_PREFIX, a.use_case_properties()),
        (REQUEST_PROPERTIES_PREFIX, a.request_properties()),
    ] {
        for (k, v) in props {
            to.property(prefix, k, v);
        }
    }
}

/// Attributes as OpenTelemetry `KeyValue`s, each handed to the closure.
pub(crate) struct KeyValues<F: FnMut(KeyValue)>(pub(crate) F);

impl<F: FnMut(KeyValue)> Attributes for KeyValues<F> {
    fn int(&mut self, key: &'static str, value: i64) {
        (self.0)(KeyValue::new(key, value));
    }
    fn float(&mut self, key: &'static str, value: f64) {
        (self.0)(KeyValue::new(key, value));
    }
    fn flag(&mut self, key: &'static str, value: bool) {
        (self.0)(KeyValue::new(key, value));
    }
    fn text(&mut self, key: &'static str, value: Text<'_>) {
        (self.0)(KeyValue::new(key, string(value)));
    }
    fn repeated(&mut self, key: &'static str, which: Repeated, value: &str) {
        (self.0)(KeyValue::new(key, repeated(which, value)));
    }
    fn texts<'a>(&mut self, key: &'static str, values: impl ExactSizeIterator<Item = Text<'a>> + Clone) {
        let values = Array::String(values.map(string).collect());
        (self.0)(KeyValue::new(key, Value::Array(values)));
    }
    fn property(&mut self, prefix: &'static str, name: &str, value: &str) {
        (self.0)(KeyValue::new(format!("{prefix}{name}"), value.to_owned()));
    }
}

/// A text as a `StringValue`: a static one as it is, a borrowed one copied.
fn string(text: Text<'_>) -> StringValue {
    match text {
        Text::Static(s) => StringValue::from(s),
        Text::Of(s) => StringValue::from(s.to_owned()),
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
