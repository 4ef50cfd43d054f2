//! What the provider tells us: response headers ([`ProviderMeta`]) and the chat completion body
//! ([`ChatCompletion`], [`Usage`]). Pure parsing, no I/O; never panics on any input.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use serde::Deserialize;

use crate::names;

/// Debug and rate-limit headers of one provider response. A header that is missing or does not
/// parse is `None`: never 0, -1 or `u64::MAX` (Azure sends -1 for unknown).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProviderMeta {
    request_id: Option<HeaderValue>,
    organization: Option<HeaderValue>,
    api_version: Option<HeaderValue>,
    /// `openai-processing-ms`: the provider's own processing time.
    pub processing: Option<Duration>,
    /// `x-ratelimit-*-requests`.
    pub requests: RateLimit,
    /// `x-ratelimit-*-tokens`.
    pub tokens: RateLimit,
}

/// One rate-limit dimension (requests or tokens) as last reported.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RateLimit {
    /// `x-ratelimit-limit-*`.
    pub limit: Option<u64>,
    /// `x-ratelimit-remaining-*`.
    pub remaining: Option<u64>,
    /// `x-ratelimit-reset-*`: time until the window resets.
    pub reset: Option<Duration>,
}

impl RateLimit {
    /// True when the provider sent nothing usable for this dimension.
    pub fn is_empty(&self) -> bool {
        self.limit.is_none() && self.remaining.is_none() && self.reset.is_none()
    }
}

fn text(v: &Option<HeaderValue>) -> Option<&str> {
    v.as_ref().and_then(|v| v.to_str().ok())
}

impl ProviderMeta {
    /// Reads the OpenAI debug and rate-limit headers in one pass over the response headers.
    /// Header values are shared, not copied.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut meta = ProviderMeta::default();
        for (name, value) in headers {
            let name = name.as_str();
            // Every header we read starts with `x-r` or `openai-`: skip the rest cheaply.
            if !(name.starts_with("x-r") || name.starts_with(names::HEADER_OPENAI_PREFIX)) {
                continue;
            }
            let Ok(text) = value.to_str() else { continue };
            let slot = match name {
                names::HEADER_REQUEST_ID => &mut meta.request_id,
                names::HEADER_OPENAI_ORGANIZATION => &mut meta.organization,
                names::HEADER_OPENAI_VERSION => &mut meta.api_version,
                names::HEADER_OPENAI_PROCESSING_MS => {
                    meta.processing = parse_millis(text);
                    continue;
                }
                names::HEADER_RATELIMIT_LIMIT_REQUESTS => {
                    meta.requests.limit = parse_count(text);
                    continue;
                }
                names::HEADER_RATELIMIT_REMAINING_REQUESTS => {
                    meta.requests.remaining = parse_count(text);
                    continue;
                }
                names::HEADER_RATELIMIT_RESET_REQUESTS => {
                    meta.requests.reset = parse_duration(text);
                    continue;
                }
                names::HEADER_RATELIMIT_LIMIT_TOKENS => {
                    meta.tokens.limit = parse_count(text);
                    continue;
                }
                names::HEADER_RATELIMIT_REMAINING_TOKENS => {
                    meta.tokens.remaining = parse_count(text);
                    continue;
                }
                names::HEADER_RATELIMIT_RESET_TOKENS => {
                    meta.tokens.reset = parse_duration(text);
                    continue;
                }
                _ => continue,
            };
            if !text.is_empty() {
                *slot = Some(value.clone());
            }
        }
        meta
    }

    /// `x-request-id`.
    pub fn request_id(&self) -> Option<&str> {
        text(&self.request_id)
    }
    /// `openai-organization`.
    pub fn organization(&self) -> Option<&str> {
        text(&self.organization)
    }
    /// `openai-version`.
    pub fn api_version(&self) -> Option<&str> {
        text(&self.api_version)
    }
}

/// A non-negative integer count; anything else (`-1`, `abc`, empty, overflow) is absent.
pub fn parse_count(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `openai-processing-ms`: milliseconds, integer or decimal.
pub fn parse_millis(s: &str) -> Option<Duration> {
    let ms: f64 = s.trim().parse().ok()?;
    (0.0..1e12).contains(&ms).then(|| Duration::from_secs_f64(ms / 1000.0))
}

/// Parses a Go-style duration, as OpenAI's reset headers send them and as configuration files
/// give timeouts: sequences of number and unit (`6m0s`, `1s`,
/// `120ms`, `1h2m3.5s`, `0s`, also `us`/`µs`/`ns`). Anything else is `None`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest.bytes().take_while(|b| b.is_ascii_digit() || *b == b'.').count();
        let (num, after) = rest.split_at(num_len);
        if num.is_empty() || num.bytes().filter(|&b| b == b'.').count() > 1 || num == "." {
            return None;
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(after.len(), |(i, _)| i);
        let (unit, next) = after.split_at(unit_len);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += num.parse::<f64>().ok()? * scale;
        rest = next;
    }
    (total.is_finite() && total < 1e12).then(|| Duration::from_secs_f64(total))
}

/// Why a choice stopped. Known values need no allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// `stop`
    Stop,
    /// `length`
    Length,
    /// `tool_calls`
    ToolCalls,
    /// `content_filter`
    ContentFilter,
    /// `function_call` (deprecated by OpenAI, still seen)
    FunctionCall,
    /// Anything else the provider sends.
    Other(String),
}

impl FinishReason {
    /// Parses the wire value.
    pub fn parse(s: &str) -> Self {
        match s {
            "stop" => Self::Stop,
            "length" => Self::Length,
            "tool_calls" => Self::ToolCalls,
            "content_filter" => Self::ContentFilter,
            "function_call" => Self::FunctionCall,
            other => Self::Other(other.to_owned()),
        }
    }
    /// The wire value.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ToolCalls => "tool_calls",
            Self::ContentFilter => "content_filter",
            Self::FunctionCall => "function_call",
            Self::Other(s) => s,
        }
    }
}

impl fmt::Display for FinishReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Token usage of one call, from the body's `usage` object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Usage {
    /// `prompt_tokens` (cached ones included).
    pub input_tokens: u64,
    /// `completion_tokens` (reasoning ones included).
    pub output_tokens: u64,
    /// `total_tokens`.
    pub total_tokens: Option<u64>,
    /// `prompt_tokens_details.cached_tokens`.
    pub cached_input_tokens: Option<u64>,
    /// `prompt_tokens_details.audio_tokens`.
    pub input_audio_tokens: Option<u64>,
    /// `completion_tokens_details.reasoning_tokens`.
    pub reasoning_tokens: Option<u64>,
    /// `completion_tokens_details.audio_tokens`.
    pub output_audio_tokens: Option<u64>,
    /// `completion_tokens_details.accepted_prediction_tokens`.
    pub accepted_prediction_tokens: Option<u64>,
    /// `completion_tokens_details.rejected_prediction_tokens`.
    pub rejected_prediction_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct UsageWire {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize, Default)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    audio_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
    #[serde(default)]
    audio_tokens: Option<u64>,
    #[serde(default)]
    accepted_prediction_tokens: Option<u64>,
    #[serde(default)]
    rejected_prediction_tokens: Option<u64>,
}

impl<'de> Deserialize<'de> for Usage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = UsageWire::deserialize(d)?;
        let p = w.prompt_tokens_details.unwrap_or_default();
        let c = w.completion_tokens_details.unwrap_or_default();
        Ok(Usage {
            input_tokens: w.prompt_tokens.unwrap_or(0),
            output_tokens: w.completion_tokens.unwrap_or(0),
            total_tokens: w.total_tokens,
            cached_input_tokens: p.cached_tokens,
            input_audio_tokens: p.audio_tokens,
            reasoning_tokens: c.reasoning_tokens,
            output_audio_tokens: c.audio_tokens,
            accepted_prediction_tokens: c.accepted_prediction_tokens,
            rejected_prediction_tokens: c.rejected_prediction_tokens,
        })
    }
}

/// The observable facts of a response (a whole body, or the chunks of a stream). Message
/// content is not kept.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct ResponseFacts {
    /// `id`.
    pub id: Option<String>,
    /// `object`: `chat.completion` or `chat.completion.chunk`.
    pub object: Option<String>,
    /// `created` (Unix seconds).
    pub created: Option<i64>,
    /// `model` the provider answered with.
    pub model: Option<String>,
    /// One finish reason per choice, in choice order.
    pub finish_reasons: Vec<FinishReason>,
    /// `service_tier`.
    pub service_tier: Option<String>,
    /// `system_fingerprint`.
    pub system_fingerprint: Option<String>,
}

/// Typed view of a chat completion body: everything llm-meter observes, without the content.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChatCompletion {
    /// Response facts.
    pub facts: ResponseFacts,
    /// `usage`, when present.
    pub usage: Option<Usage>,
}

/// A JSON string borrowed from the body when it has no escapes, owned otherwise. (serde's own
/// `Cow<str>` only borrows as a direct `#[serde(borrow)]` field, never inside an `Option`.)
#[derive(Debug)]
pub(crate) struct Str<'a>(pub(crate) Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

impl<'a> Str<'a> {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// Wire shape shared by completions and stream chunks. Strings borrow from the body.
#[derive(Deserialize)]
struct BodyWire<'a> {
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    object: Option<Str<'a>>,
    #[serde(default)]
    created: Option<i64>,
    #[serde(borrow, default)]
    model: Option<Str<'a>>,
    #[serde(borrow, default)]
    choices: Choices<'a>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(borrow, default)]
    service_tier: Option<Str<'a>>,
    #[serde(borrow, default)]
    system_fingerprint: Option<Str<'a>>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

/// Only the choices that carry a finish reason are kept (so a stream chunk allocates nothing),
/// with the count of all choices seen.
#[derive(Default)]
struct Choices<'a>(Vec<(u32, Str<'a>)>, usize);

#[derive(Deserialize)]
struct ChoiceWire<'a> {
    #[serde(default)]
    index: u32,
    #[serde(borrow, default)]
    finish_reason: Option<Str<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Choices<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Choices<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of choices")
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Choices::default())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let (mut out, mut seen) = (Vec::new(), 0);
                while let Some(c) = seq.next_element::<ChoiceWire<'de>>()? {
                    seen += 1;
                    if let Some(reason) = c.finish_reason {
                        out.push((c.index, reason));
                    }
                }
                Ok(Choices(out, seen))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// The body was not a chat completion (or chunk) we could read.
#[derive(Debug, thiserror::Error)]
#[error("unreadable chat completion body: {0}")]
pub struct BodyError(#[from] serde_json::Error);

/// An owned copy of a string field; an empty string counts as absent (Azure OpenAI's first
/// stream chunk has `"id": ""` and `"model": ""`: never recorded as an id or a model).
fn owned(s: Option<Str<'_>>) -> Option<String> {
    s.filter(|s| !s.0.is_empty()).map(|s| s.0.into_owned())
}

impl ChatCompletion {
    /// Parses a non-streaming chat completion body (unknown fields ignored).
    pub fn parse(body: &[u8]) -> Result<Self, BodyError> {
        let w: BodyWire<'_> = serde_json::from_slice(body)?;
        let mut choices = w.choices.0;
        choices.sort_by_key(|(i, _)| *i);
        Ok(ChatCompletion {
            facts: ResponseFacts {
                id: owned(w.id),
                object: owned(w.object),
                created: w.created.filter(|&c| c != 0),
                model: owned(w.model),
                finish_reasons: choices.iter().map(|(_, r)| FinishReason::parse(r.as_str())).collect(),
                service_tier: owned(w.service_tier),
                system_fingerprint: owned(w.system_fingerprint),
            },
            usage: w.usage,
        })
    }
}

/// What one stream chunk contributed.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum ChunkKind {
    /// A chunk with choices (content, role, tool calls or a finish reason).
    Delta,
    /// A chunk with choices, at least one of which carries a finish reason.
    Finish,
    /// The usage-only chunk (`choices: []` with `usage`) sent when `include_usage` is set.
    UsageOnly,
    /// An `{"error": ...}` event in the stream.
    Error,
}

/// Folds one stream chunk into `facts` and `usage`. Allocates only when a field is first seen.
pub fn apply_chunk(data: &[u8], facts: &mut ResponseFacts, usage: &mut Option<Usage>) -> Result<ChunkKind, BodyError> {
    let w: BodyWire<'_> = serde_json::from_slice(data)?;
    if w.error.is_some() {
        return Ok(ChunkKind::Error);
    }
    fn first(slot: &mut Option<String>, v: Option<Str<'_>>) {
        if slot.is_none() {
            *slot = owned(v);
        }
    }
    first(&mut facts.id, w.id);
    first(&mut facts.object, w.object);
    first(&mut facts.model, w.model);
    first(&mut facts.service_tier, w.service_tier);
    first(&mut facts.system_fingerprint, w.system_fingerprint);
    if facts.created.is_none() {
        facts.created = w.created.filter(|&c| c != 0);
    }
    let usage_only = w.usage.is_some() && w.choices.1 == 0;
    let finish = !w.choices.0.is_empty();
    for (index, reason) in w.choices.0 {
        let index = index as usize;
        if facts.finish_reasons.len() <= index && index < 128 {
            facts
                .finish_reasons
                .resize(index + 1, FinishReason::Other(String::new()));
        }
        if let Some(slot) = facts.finish_reasons.get_mut(index) {
            *slot = FinishReason::parse(reason.as_str());
        }
    }
    if w.usage.is_some() {
        *usage = w.usage;
    }
    Ok(if usage_only {
        ChunkKind::UsageOnly
    } else if finish {
        ChunkKind::Finish
    } else {
        ChunkKind::Delta
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_duration_parses_openai_formats() {
        let cases = [
            ("6m0s", Some(360.0)),
            ("1s", Some(1.0)),
            ("120ms", Some(0.12)),
            ("38ms", Some(0.038)),
            ("1h2m3.5s", Some(3723.5)),
            ("0s", Some(0.0)),
            ("59.993s", Some(59.993)),
            ("2m30.5s", Some(150.5)),
            ("500us", Some(0.0005)),
            ("", None),
            ("-1", None),
            ("-1s", None),
            ("1", None),
            ("s", None),
            ("1x", None),
            ("1.2.3s", None),
            ("1s garbage", None),
            ("ms", None),
        ];
        for (input, want) in cases {
            let got = parse_duration(input).map(|d| d.as_secs_f64());
            match (got, want) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 1e-9, "{input}: {g} != {w}"),
                (g, w) => assert_eq!(g, w, "{input}"),
            }
        }
    }

    #[test]
    fn counts_reject_sentinels_and_garbage() {
        assert_eq!(parse_count("499"), Some(499));
        assert_eq!(parse_count("-1"), None);
        assert_eq!(parse_count(""), None);
        assert_eq!(parse_count("1e3"), None);
        assert_eq!(parse_count("99999999999999999999999"), None);
    }

    #[test]
    fn processing_ms_parses_integers_and_decimals_only() {
        assert_eq!(parse_millis("861"), Some(Duration::from_millis(861)));
        assert_eq!(parse_millis("1.5"), Some(Duration::from_micros(1500)));
        assert_eq!(parse_millis("-3"), None);
        assert_eq!(parse_millis("NaN"), None);
        assert_eq!(parse_millis("x"), None);
    }

    #[test]
    fn meta_ignores_missing_and_invalid_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining-requests", HeaderValue::from_static("-1"));
        h.insert("x-ratelimit-limit-tokens", HeaderValue::from_static("n/a"));
        h.insert("x-ratelimit-reset-tokens", HeaderValue::from_static("soon"));
        h.insert("x-request-id", HeaderValue::from_static(""));
        let m = ProviderMeta::from_headers(&h);
        assert_eq!(m, ProviderMeta::default());
    }

    #[test]
    fn stream_chunks_fold_into_facts_and_usage() {
        let mut facts = ResponseFacts::default();
        let mut usage = None;
        let first = br#"{"id":"c1","object":"chat.completion.chunk","created":7,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}"#;
        assert_eq!(apply_chunk(first, &mut facts, &mut usage).unwrap(), ChunkKind::Delta);
        let last = br#"{"id":"c1","choices":[{"index":1,"delta":{},"finish_reason":"length"},{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
        assert_eq!(apply_chunk(last, &mut facts, &mut usage).unwrap(), ChunkKind::Finish);
        let usage_chunk =
            br#"{"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        assert_eq!(
            apply_chunk(usage_chunk, &mut facts, &mut usage).unwrap(),
            ChunkKind::UsageOnly
        );
        assert_eq!(facts.finish_reasons, [FinishReason::Stop, FinishReason::Length]);
        assert_eq!(facts.model.as_deref(), Some("m"));
        assert_eq!(usage.unwrap().output_tokens, 4);
        let err = br#"{"error":{"message":"boom","type":"server_error"}}"#;
        assert_eq!(apply_chunk(err, &mut facts, &mut usage).unwrap(), ChunkKind::Error);
        assert!(apply_chunk(b"{not json", &mut facts, &mut usage).is_err());
    }
}
