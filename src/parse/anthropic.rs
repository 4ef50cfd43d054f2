//! Anthropic's Messages API (`POST /v1/messages`): the response body ([`AnthropicMessage`]),
//! the response headers (read into the common [`ProviderMeta`]), and the stream events that
//! [`StreamObserver`](crate::parse::stream::StreamObserver) folds in its
//! [`AnthropicMessages`](crate::parse::endpoint::Api::AnthropicMessages) format.
//!
//! Usage follows the GenAI conventions' rule that input tokens include cached ones: Anthropic's
//! `input_tokens` counts only the tokens after the last cache breakpoint, so the input tokens
//! recorded are `input_tokens + cache_read_input_tokens + cache_creation_input_tokens`; cache
//! reads are also the cached input tokens and cache writes the cache-creation tokens (with the
//! 1-hour share when `cache_creation` says). Pure parsing, never panics on any input.

use std::time::SystemTime;

use http::HeaderMap;
use serde::Deserialize;

use crate::names;
use crate::parse::provider::{
    owned, parse_count, parse_retry_after, parse_rfc3339, top_level_type, utf8, BodyError, FinishReason, ProviderMeta,
    RateLimit, ResponseFacts, Str, Usage,
};

impl FinishReason {
    /// The finish reason of an Anthropic `stop_reason`: `end_turn` and `stop_sequence` are
    /// [`Stop`](Self::Stop), `max_tokens` and `model_context_window_exceeded`
    /// [`Length`](Self::Length), `tool_use` [`ToolCalls`](Self::ToolCalls), `refusal`
    /// [`ContentFilter`](Self::ContentFilter); anything else (`pause_turn`, …) is kept as sent.
    pub fn from_anthropic(stop_reason: &str) -> Self {
        match stop_reason {
            "end_turn" | "stop_sequence" => Self::Stop,
            "max_tokens" | "model_context_window_exceeded" => Self::Length,
            "tool_use" => Self::ToolCalls,
            "refusal" => Self::ContentFilter,
            other => Self::Other(other.to_owned()),
        }
    }
}

impl ProviderMeta {
    /// Reads Anthropic's response headers in one pass: `request-id`, `anthropic-organization-id`,
    /// `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}`
    /// and `retry-after`. The resets are RFC 3339 times; they are kept as the time from `now`
    /// (when the headers arrived) to the reset, zero when it has passed. Header values are shared,
    /// not copied; a missing or unreadable header is `None`.
    pub fn from_anthropic_headers(headers: &HeaderMap, now: SystemTime) -> Self {
        let mut meta = ProviderMeta::default();
        let reset = |text: &str| parse_rfc3339(text).map(|at| at.duration_since(now).unwrap_or_default());
        for (name, value) in headers {
            let name = name.as_str();
            if !(name.starts_with(names::HEADER_ANTHROPIC_RATELIMIT_PREFIX)
                || name.starts_with("re")
                || name == names::HEADER_ANTHROPIC_ORGANIZATION_ID)
            {
                continue;
            }
            let Ok(text) = value.to_str() else { continue };
            let (limit, field): (&mut RateLimit, _) = match name {
                names::HEADER_ANTHROPIC_REQUEST_ID => {
                    meta.set_request_id(value);
                    continue;
                }
                names::HEADER_ANTHROPIC_ORGANIZATION_ID => {
                    meta.set_organization(value);
                    continue;
                }
                names::HEADER_RETRY_AFTER => {
                    meta.retry_after = parse_retry_after(text, now);
                    continue;
                }
                names::HEADER_ANTHROPIC_RATELIMIT_REQUESTS_LIMIT => (&mut meta.requests, Field::Limit),
                names::HEADER_ANTHROPIC_RATELIMIT_REQUESTS_REMAINING => (&mut meta.requests, Field::Remaining),
                names::HEADER_ANTHROPIC_RATELIMIT_REQUESTS_RESET => (&mut meta.requests, Field::Reset),
                names::HEADER_ANTHROPIC_RATELIMIT_TOKENS_LIMIT => (&mut meta.tokens, Field::Limit),
                names::HEADER_ANTHROPIC_RATELIMIT_TOKENS_REMAINING => (&mut meta.tokens, Field::Remaining),
                names::HEADER_ANTHROPIC_RATELIMIT_TOKENS_RESET => (&mut meta.tokens, Field::Reset),
                names::HEADER_ANTHROPIC_RATELIMIT_INPUT_TOKENS_LIMIT => (&mut meta.input_tokens, Field::Limit),
                names::HEADER_ANTHROPIC_RATELIMIT_INPUT_TOKENS_REMAINING => (&mut meta.input_tokens, Field::Remaining),
                names::HEADER_ANTHROPIC_RATELIMIT_INPUT_TOKENS_RESET => (&mut meta.input_tokens, Field::Reset),
                names::HEADER_ANTHROPIC_RATELIMIT_OUTPUT_TOKENS_LIMIT => (&mut meta.output_tokens, Field::Limit),
                names::HEADER_ANTHROPIC_RATELIMIT_OUTPUT_TOKENS_REMAINING => {
                    (&mut meta.output_tokens, Field::Remaining)
                }
                names::HEADER_ANTHROPIC_RATELIMIT_OUTPUT_TOKENS_RESET => (&mut meta.output_tokens, Field::Reset),
                _ => continue,
            };
            match field {
                Field::Limit => limit.limit = parse_count(text),
                Field::Remaining => limit.remaining = parse_count(text),
                Field::Reset => limit.reset = reset(text),
            }
        }
        meta
    }
}

/// Which part of a rate limit a header reports.
enum Field {
    Limit,
    Remaining,
    Reset,
}

/// Anthropic's `usage` counts as sent: every count optional, so that a `message_delta` updates
/// only what it carries. Mapped to [`Usage`] by [`Self::to_usage`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MessagesUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_creation: Option<CacheCreation>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
struct CacheCreation {
    #[serde(default)]
    ephemeral_5m_input_tokens: Option<u64>,
    #[serde(default)]
    ephemeral_1h_input_tokens: Option<u64>,
}

/// `usage` as sent, the service tier beside the counts (Anthropic sends it inside `usage`).
#[derive(Deserialize)]
struct UsageWire<'a> {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation: Option<CacheCreation>,
    #[serde(borrow, default)]
    service_tier: Option<Str<'a>>,
}

impl UsageWire<'_> {
    fn counts(&self) -> MessagesUsage {
        MessagesUsage {
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cache_read_input_tokens: self.cache_read_input_tokens,
            cache_creation_input_tokens: self.cache_creation_input_tokens,
            cache_creation: self.cache_creation,
        }
    }
}

impl MessagesUsage {
    /// Takes every count `later` carries (Anthropic's counts are cumulative: a later event's
    /// value replaces an earlier one).
    fn update(&mut self, later: &MessagesUsage) {
        fn take(slot: &mut Option<u64>, v: Option<u64>) {
            if v.is_some() {
                *slot = v;
            }
        }
        take(&mut self.input_tokens, later.input_tokens);
        take(&mut self.output_tokens, later.output_tokens);
        take(&mut self.cache_read_input_tokens, later.cache_read_input_tokens);
        take(&mut self.cache_creation_input_tokens, later.cache_creation_input_tokens);
        if let Some(c) = later.cache_creation {
            let mine = self.cache_creation.get_or_insert_with(CacheCreation::default);
            take(&mut mine.ephemeral_5m_input_tokens, c.ephemeral_5m_input_tokens);
            take(&mut mine.ephemeral_1h_input_tokens, c.ephemeral_1h_input_tokens);
        }
    }

    /// The usage in the GenAI conventions' terms; `None` when no count was sent at all.
    pub(crate) fn to_usage(self) -> Option<Usage> {
        let split = self.cache_creation.unwrap_or_default();
        let split_total = match (split.ephemeral_5m_input_tokens, split.ephemeral_1h_input_tokens) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
        };
        let writes = self.cache_creation_input_tokens.or(split_total);
        if self.input_tokens.is_none()
            && self.output_tokens.is_none()
            && self.cache_read_input_tokens.is_none()
            && writes.is_none()
        {
            return None;
        }
        let input = self
            .input_tokens
            .unwrap_or(0)
            .saturating_add(self.cache_read_input_tokens.unwrap_or(0))
            .saturating_add(writes.unwrap_or(0));
        Some(Usage {
            input_tokens: input,
            output_tokens: self.output_tokens.unwrap_or(0),
            cached_input_tokens: self.cache_read_input_tokens,
            cache_creation_input_tokens: writes,
            cache_creation_1h_input_tokens: split.ephemeral_1h_input_tokens,
            ..Usage::default()
        })
    }
}

/// A Messages API body (or the `message` of `message_start`). Strings borrow from the body;
/// `content` is skipped unread.
#[derive(Deserialize)]
struct MessageWire<'a> {
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    model: Option<Str<'a>>,
    #[serde(borrow, default)]
    stop_reason: Option<Str<'a>>,
    #[serde(borrow, default)]
    usage: Option<UsageWire<'a>>,
    #[serde(borrow, default)]
    error: Option<ErrorWire<'a>>,
}

#[derive(Deserialize)]
struct ErrorWire<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Str<'a>>,
}

/// Typed view of a Messages API body: what llm-meter observes, without the content.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct AnthropicMessage {
    /// `id`, `type` (as `object`: `message`), `model`, the stop reason as the one finish reason,
    /// and `usage.service_tier` (`standard`, `priority`, `batch`).
    pub facts: ResponseFacts,
    /// `usage`, mapped so that input tokens include cache reads and writes.
    pub usage: Option<Usage>,
    /// `stop_reason` as sent (`end_turn`, `max_tokens`, `stop_sequence`, `tool_use`,
    /// `pause_turn`, `refusal`, …).
    pub stop_reason: Option<String>,
    /// `error.type` of an error body (`overloaded_error`, `rate_limit_error`, …).
    pub error_type: Option<String>,
}

impl AnthropicMessage {
    /// Parses a Messages API response body (unknown fields ignored, content skipped unread).
    /// An error body (`{"type":"error","error":{…}}`) parses too, with only `error_type` set.
    pub fn parse(body: &[u8]) -> Result<Self, BodyError> {
        let w: MessageWire<'_> = serde_json::from_str(utf8(body)?)?;
        let (counts, tier) = match w.usage {
            Some(u) => (Some(u.counts()), u.service_tier),
            None => (None, None),
        };
        let stop_reason = owned(w.stop_reason);
        Ok(AnthropicMessage {
            facts: ResponseFacts {
                id: owned(w.id),
                object: owned(w.kind),
                model: owned(w.model),
                finish_reasons: stop_reason
                    .as_deref()
                    .map(FinishReason::from_anthropic)
                    .into_iter()
                    .collect(),
                service_tier: owned(tier),
                ..ResponseFacts::default()
            },
            usage: counts.and_then(MessagesUsage::to_usage),
            stop_reason,
            error_type: w.error.and_then(|e| owned(e.kind)),
        })
    }
}

/// What one Anthropic stream event is, told from its `event:` line (or, without one, from the
/// `type` its data starts with).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MessagesEvent {
    /// `message_start`: id, model, input usage.
    MessageStart,
    /// `content_block_start` / `content_block_stop`.
    BlockEdge,
    /// `content_block_delta`: content, never parsed.
    ContentDelta,
    /// `message_delta`: stop reason and cumulative usage.
    MessageDelta,
    /// `message_stop`: the end.
    MessageStop,
    /// `ping`: keep-alive.
    Ping,
    /// `error`: an error the provider reports mid-stream (`overloaded_error`, …).
    Error,
    /// An event type this version does not know: passed on, not parsed.
    Other,
    /// No type at all: not an event we can read.
    Unreadable,
}

/// Tells the event apart without parsing its data when it has an `event:` line.
pub(crate) fn event_kind(event: &[u8], data: &[u8]) -> MessagesEvent {
    let kind = if event.is_empty() {
        match top_level_type(data) {
            Some(t) => t,
            None => return MessagesEvent::Unreadable,
        }
    } else {
        event
    };
    // Compared as bytes, content deltas (most events) first: no UTF-8 check of the type.
    let is = |name: &str| kind == name.as_bytes();
    if is(names::EVENT_CONTENT_BLOCK_DELTA) {
        MessagesEvent::ContentDelta
    } else if is(names::EVENT_CONTENT_BLOCK_START) || is(names::EVENT_CONTENT_BLOCK_STOP) {
        MessagesEvent::BlockEdge
    } else if is(names::EVENT_PING) {
        MessagesEvent::Ping
    } else if is(names::EVENT_MESSAGE_START) {
        MessagesEvent::MessageStart
    } else if is(names::EVENT_MESSAGE_DELTA) {
        MessagesEvent::MessageDelta
    } else if is(names::EVENT_MESSAGE_STOP) {
        MessagesEvent::MessageStop
    } else if is(names::EVENT_ERROR) {
        MessagesEvent::Error
    } else {
        MessagesEvent::Other
    }
}

#[derive(Deserialize)]
struct StartWire<'a> {
    #[serde(borrow)]
    message: MessageWire<'a>,
}

#[derive(Deserialize)]
struct DeltaWire<'a> {
    #[serde(borrow, default)]
    delta: Option<StopWire<'a>>,
    #[serde(borrow, default)]
    usage: Option<UsageWire<'a>>,
}

#[derive(Deserialize)]
struct StopWire<'a> {
    #[serde(borrow, default)]
    stop_reason: Option<Str<'a>>,
}

/// Folds the events that carry facts (`message_start`, `message_delta`) into `facts` and
/// `usage`; the others need no parsing. Allocates only when a field is first seen.
pub(crate) fn apply_event(
    kind: MessagesEvent,
    data: &[u8],
    facts: &mut ResponseFacts,
    usage: &mut MessagesUsage,
) -> Result<(), BodyError> {
    // JSON is UTF-8; serde checks only the strings it reads, and content is skipped.
    utf8(data)?;
    fn first(slot: &mut Option<String>, v: Option<Str<'_>>) {
        if slot.is_none() {
            *slot = owned(v);
        }
    }
    match kind {
        MessagesEvent::MessageStart => {
            let w: StartWire<'_> = serde_json::from_slice(data)?;
            let m = w.message;
            first(&mut facts.id, m.id);
            first(&mut facts.object, m.kind);
            first(&mut facts.model, m.model);
            if let Some(u) = m.usage {
                usage.update(&u.counts());
                first(&mut facts.service_tier, u.service_tier);
            }
            if let Some(reason) = m.stop_reason {
                facts.finish_reasons = vec![FinishReason::from_anthropic(reason.as_str())];
            }
        }
        MessagesEvent::MessageDelta => {
            let w: DeltaWire<'_> = serde_json::from_slice(data)?;
            if let Some(reason) = w.delta.and_then(|d| d.stop_reason) {
                facts.finish_reasons = vec![FinishReason::from_anthropic(reason.as_str())];
            }
            if let Some(u) = w.usage {
                usage.update(&u.counts());
                first(&mut facts.service_tier, u.service_tier);
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use http::HeaderValue;

    use super::*;

    const BODY: &str = include_str!("../../tests/fixtures/anthropic-message.json");
    const HEADERS: &str = include_str!("../../tests/fixtures/anthropic-message.headers");
    const STREAM: &str = include_str!("../../tests/fixtures/anthropic-message-stream.sse");

    fn header_map(text: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (k, v) = line.split_once(':').unwrap();
            h.append(
                http::HeaderName::from_bytes(k.trim().as_bytes()).unwrap(),
                HeaderValue::from_str(v.trim()).unwrap(),
            );
        }
        h
    }

    #[test]
    fn body_usage_counts_cache_reads_and_writes_as_input() {
        let m = AnthropicMessage::parse(BODY.as_bytes()).unwrap();
        assert_eq!(m.facts.id.as_deref(), Some("msg_01XFDUDYJgAACzvnptvVoYEL"));
        assert_eq!(m.facts.object.as_deref(), Some("message"));
        assert_eq!(m.facts.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
        assert_eq!(m.facts.service_tier.as_deref(), Some("standard"));
        assert_eq!(m.stop_reason.as_deref(), Some("end_turn"));
        assert_eq!(m.facts.finish_reasons, [FinishReason::Stop]);
        let u = m.usage.unwrap();
        // 12 uncached + 2048 read + 1536 written (1024 of them for an hour).
        assert_eq!(u.input_tokens, 12 + 2048 + 1536);
        assert_eq!(u.output_tokens, 58);
        assert_eq!(u.cached_input_tokens, Some(2048));
        assert_eq!(u.cache_creation_input_tokens, Some(1536));
        assert_eq!(u.cache_creation_1h_input_tokens, Some(1024));
        assert_eq!(u.total_tokens, None, "Anthropic sends no total");
    }

    #[test]
    fn body_without_cache_fields_has_plain_input() {
        let m = AnthropicMessage::parse(
            br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-3-5-haiku-20241022","content":[{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris"}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":25,"output_tokens":40}}"#,
        )
        .unwrap();
        let u = m.usage.unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (25, 40));
        assert_eq!((u.cached_input_tokens, u.cache_creation_input_tokens), (None, None));
        assert_eq!(m.facts.finish_reasons, [FinishReason::ToolCalls]);
    }

    #[test]
    fn cache_creation_split_without_a_total_still_counts() {
        let m = AnthropicMessage::parse(
            br#"{"usage":{"input_tokens":1,"output_tokens":2,"cache_creation":{"ephemeral_5m_input_tokens":10,"ephemeral_1h_input_tokens":20}}}"#,
        )
        .unwrap();
        let u = m.usage.unwrap();
        assert_eq!(u.input_tokens, 31);
        assert_eq!(u.cache_creation_input_tokens, Some(30));
        assert_eq!(u.cache_creation_1h_input_tokens, Some(20));
    }

    #[test]
    fn error_body_parses_with_its_error_type() {
        let m = AnthropicMessage::parse(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}"#,
        )
        .unwrap();
        assert_eq!(m.error_type.as_deref(), Some("overloaded_error"));
        assert_eq!(m.usage, None);
        assert!(AnthropicMessage::parse(b"<html>").is_err());
    }

    #[test]
    fn stop_reasons_map_to_finish_reasons() {
        let cases = [
            ("end_turn", FinishReason::Stop),
            ("stop_sequence", FinishReason::Stop),
            ("max_tokens", FinishReason::Length),
            ("model_context_window_exceeded", FinishReason::Length),
            ("tool_use", FinishReason::ToolCalls),
            ("refusal", FinishReason::ContentFilter),
            ("pause_turn", FinishReason::Other("pause_turn".into())),
        ];
        for (wire, want) in cases {
            assert_eq!(FinishReason::from_anthropic(wire), want, "{wire}");
        }
    }

    #[test]
    fn headers_fill_request_id_rate_limits_and_resets_relative_to_now() {
        let h = header_map(HEADERS);
        // The fixture's resets are at 12:41:00Z and 12:40:59Z; the headers arrived at 12:40:58Z.
        let now = parse_rfc3339("2025-08-21T12:40:58Z").unwrap();
        let m = ProviderMeta::from_anthropic_headers(&h, now);
        assert_eq!(m.request_id(), Some("req_011CSLsW7mFqvHHnzrKdKjAE"));
        assert_eq!(m.organization(), Some("36562039-1ae4-48e6-ae28-1e517e3d2d12"));
        assert_eq!(m.api_version(), None);
        assert_eq!(
            m.requests,
            RateLimit {
                limit: Some(1000),
                remaining: Some(999),
                reset: Some(Duration::from_secs(1)),
            }
        );
        assert_eq!((m.tokens.limit, m.tokens.remaining), (Some(96_000), Some(96_000)));
        assert_eq!(
            (m.input_tokens.limit, m.input_tokens.remaining, m.input_tokens.reset),
            (Some(80_000), Some(80_000), Some(Duration::from_secs(1)))
        );
        assert_eq!(
            (m.output_tokens.limit, m.output_tokens.remaining, m.output_tokens.reset),
            (Some(16_000), Some(16_000), Some(Duration::from_secs(2)))
        );
        assert_eq!(m.retry_after, None);
        assert_eq!(m.processing, None);
        // The OpenAI reader sees none of it, and this one none of OpenAI's.
        assert_eq!(ProviderMeta::from_headers(&h).requests, RateLimit::default());
    }

    #[test]
    fn a_reset_in_the_past_is_zero_and_garbage_is_absent() {
        let mut h = HeaderMap::new();
        h.insert(
            names::HEADER_ANTHROPIC_RATELIMIT_REQUESTS_RESET,
            HeaderValue::from_static("2025-08-21T12:40:59Z"),
        );
        h.insert(
            names::HEADER_ANTHROPIC_RATELIMIT_TOKENS_RESET,
            HeaderValue::from_static("in a minute"),
        );
        h.insert(
            names::HEADER_ANTHROPIC_RATELIMIT_TOKENS_REMAINING,
            HeaderValue::from_static("-1"),
        );
        h.insert(names::HEADER_RETRY_AFTER, HeaderValue::from_static("7"));
        h.insert(names::HEADER_ANTHROPIC_REQUEST_ID, HeaderValue::from_static(""));
        let later = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let m = ProviderMeta::from_anthropic_headers(&h, later);
        assert_eq!(m.requests.reset, Some(Duration::ZERO));
        assert_eq!(m.tokens, RateLimit::default());
        assert_eq!(m.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(m.request_id(), None);
    }

    /// Feeds the documented stream through the observer, cut at every byte offset (as the
    /// network may cut it), and checks the facts are the same each time.
    #[test]
    fn stream_fixture_folds_into_facts_and_usage_however_it_is_cut() {
        use crate::parse::endpoint::Api;
        use crate::parse::stream::{EventOutcome, StreamObserver};
        let bytes = STREAM.as_bytes();
        let mut outcomes_whole = Vec::new();
        for cut in 0..bytes.len() {
            let mut o = StreamObserver::for_api(std::time::Instant::now(), Api::AnthropicMessages);
            let mut outcomes = Vec::new();
            for part in [&bytes[..cut], &bytes[cut..]] {
                o.observe(part, |outcome, _| outcomes.push(outcome));
            }
            assert!(o.done, "cut at {cut}");
            assert_eq!(o.error, None, "cut at {cut}");
            assert_eq!(o.facts.id.as_deref(), Some("msg_01XFDUDYJgAACzvnptvVoYEL"));
            assert_eq!(o.facts.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
            assert_eq!(o.facts.finish_reasons, [FinishReason::Stop]);
            let u = o.usage.unwrap();
            assert_eq!((u.input_tokens, u.output_tokens), (12 + 2048 + 1536, 58));
            assert_eq!(u.cached_input_tokens, Some(2048));
            assert_eq!(u.cache_creation_input_tokens, Some(1536));
            assert_eq!(u.cache_creation_1h_input_tokens, Some(1024));
            // message_start, content_block_start, 3 deltas, content_block_stop, message_delta:
            // ping and message_stop are not chunks.
            assert_eq!(o.chunks, 7, "cut at {cut}");
            assert!(o.first_output.is_some() && o.first_chunk <= o.first_output);
            outcomes.retain(|&x| x != EventOutcome::Chunk);
            if cut == 0 {
                outcomes_whole = outcomes.clone();
            }
            assert_eq!(outcomes, outcomes_whole, "cut at {cut}");
        }
        assert_eq!(outcomes_whole, [EventOutcome::Finish, EventOutcome::Done]);
    }

    #[test]
    fn stream_events_are_told_apart_with_or_without_their_event_line() {
        use MessagesEvent::*;
        let delta = br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"type"}}"#;
        assert_eq!(event_kind(b"content_block_delta", delta), ContentDelta);
        assert_eq!(event_kind(b"", delta), ContentDelta);
        // Key order does not matter, and a nested `type` is not the event's.
        let reordered =
            br#"{"index":0,"delta":{"type":"text_delta","text":"\"type\":\"x\""},"type":"content_block_delta"}"#;
        assert_eq!(event_kind(b"", reordered), ContentDelta);
        assert_eq!(event_kind(b"", br#"{"type": "ping"}"#), Ping);
        assert_eq!(event_kind(b"", br#"{"type":"message_stop"}"#), MessageStop);
        assert_eq!(event_kind(b"future_event", b"{}"), Other);
        assert_eq!(event_kind(b"", b"not json"), Unreadable);
        assert_eq!(event_kind(b"", br#"{"delta":{"type":"x"}}"#), Unreadable);
    }

    #[test]
    fn message_delta_usage_updates_what_message_start_said() {
        let mut facts = ResponseFacts::default();
        let mut usage = MessagesUsage::default();
        apply_event(
            MessagesEvent::MessageStart,
            br#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-haiku-4-5","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":472,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":2}}}"#,
            &mut facts,
            &mut usage,
        )
        .unwrap();
        assert_eq!(usage.to_usage().unwrap().output_tokens, 2);
        // Newer API versions repeat every count in message_delta, cumulative.
        apply_event(
            MessagesEvent::MessageDelta,
            br#"{"type":"message_delta","delta":{"stop_reason":"max_tokens","stop_sequence":null},"usage":{"input_tokens":472,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":89}}"#,
            &mut facts,
            &mut usage,
        )
        .unwrap();
        let u = usage.to_usage().unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (472, 89));
        assert_eq!(facts.finish_reasons, [FinishReason::Length]);
        assert!(apply_event(MessagesEvent::MessageDelta, b"{oops", &mut facts, &mut usage).is_err());
    }

    #[test]
    fn an_error_event_is_a_stream_fault_and_the_stream_is_not_done() {
        use crate::parse::endpoint::Api;
        use crate::parse::stream::{StreamFault, StreamObserver};
        let mut o = StreamObserver::for_api(std::time::Instant::now(), Api::AnthropicMessages);
        o.observe_all(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_2\",\"model\":\"claude-opus-4-1-20250805\",\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n");
        o.observe_all(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
        assert_eq!(o.error, Some(StreamFault::ErrorEvent));
        assert!(!o.done);
        assert_eq!(o.usage.unwrap().input_tokens, 9);
        let mut bad = StreamObserver::for_api(std::time::Instant::now(), Api::AnthropicMessages);
        bad.observe_all(b"event: message_start\ndata: {\"message\": 42}\n\n");
        assert_eq!(bad.error, Some(StreamFault::Decode));
    }

    mod props {
        use proptest::prelude::*;

        use super::*;
        use crate::parse::endpoint::Api;
        use crate::parse::stream::StreamObserver;

        /// The fixture with a few bytes overwritten.
        fn mutated(base: &'static str) -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8).prop_map(move |edits| {
                let mut bytes = base.as_bytes().to_vec();
                for (at, byte) in edits {
                    let i = at % bytes.len();
                    bytes[i] = byte;
                }
                bytes
            })
        }

        /// The facts of `bytes` observed in pieces cut at `cuts` (timings left out).
        fn observe(bytes: &[u8], cuts: &[usize]) -> String {
            let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            at.sort_unstable();
            let mut o = StreamObserver::for_api(std::time::Instant::now(), Api::AnthropicMessages);
            let mut start = 0;
            for end in at.into_iter().chain([bytes.len()]) {
                o.observe_all(&bytes[start..end]);
                start = end;
            }
            format!("{:?} {:?} {} {} {:?}", o.facts, o.usage, o.chunks, o.done, o.error)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn bodies_never_panic(bytes in mutated(BODY), noise in proptest::collection::vec(any::<u8>(), 0..64)) {
                let _ = AnthropicMessage::parse(&bytes);
                let _ = AnthropicMessage::parse(&noise);
            }

            #[test]
            fn streams_never_panic_and_are_observed_the_same_however_cut(
                bytes in mutated(STREAM),
                cuts in proptest::collection::vec(any::<usize>(), 0..10),
            ) {
                prop_assert_eq!(observe(&bytes, &[]), observe(&bytes, &cuts));
            }

            #[test]
            fn headers_never_panic(values in proptest::collection::vec("\\PC{0,40}", 14)) {
                let names = [
                    names::HEADER_ANTHROPIC_REQUEST_ID,
                    names::HEADER_ANTHROPIC_ORGANIZATION_ID,
                    names::HEADER_RETRY_AFTER,
                    names::HEADER_ANTHROPIC_RATELIMIT_REQUESTS_LIMIT,
                    names::HEADER_ANTHROPIC_RATELIMIT_REQUESTS_REMAINING,
                    names::HEADER_ANTHROPIC_RATELIMIT_REQUESTS_RESET,
                    names::HEADER_ANTHROPIC_RATELIMIT_TOKENS_LIMIT,
                    names::HEADER_ANTHROPIC_RATELIMIT_TOKENS_REMAINING,
                    names::HEADER_ANTHROPIC_RATELIMIT_TOKENS_RESET,
                    names::HEADER_ANTHROPIC_RATELIMIT_INPUT_TOKENS_RESET,
                    names::HEADER_ANTHROPIC_RATELIMIT_OUTPUT_TOKENS_REMAINING,
                    names::HEADER_ANTHROPIC_RATELIMIT_OUTPUT_TOKENS_RESET,
                    "anthropic-ratelimit-x",
                    "re",
                ];
                let mut h = HeaderMap::new();
                for (name, v) in names.iter().zip(&values) {
                    if let Ok(v) = HeaderValue::from_str(v) {
                        h.insert(*name, v);
                    }
                }
                let _ = format!("{:?}", ProviderMeta::from_anthropic_headers(&h, SystemTime::now()));
                let _ = format!("{:?}", ProviderMeta::from_anthropic_headers(&h, UNIX_EPOCH));
            }

            #[test]
            fn timestamps_never_panic(
                any_text in "\\PC{0,40}",
                near in "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,14})?([Zz]|[+-][0-9]{2}:[0-9]{2})",
            ) {
                let _ = parse_rfc3339(&any_text);
                let _ = parse_retry_after(&any_text, SystemTime::now());
                if let Some(t) = parse_rfc3339(&near) {
                    let _ = t.duration_since(UNIX_EPOCH);
                }
            }
        }
    }
}
