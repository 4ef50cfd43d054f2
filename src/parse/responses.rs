//! OpenAI's Responses API (`POST /v1/responses`): the response body ([`OpenAiResponse`]) and the
//! stream events that [`StreamObserver`](crate::parse::stream::StreamObserver) folds in its
//! [`Responses`](crate::parse::endpoint::Api::Responses) format. The response headers
//! are OpenAI's ([`ProviderMeta::from_headers`](crate::parse::provider::ProviderMeta::from_headers)).
//!
//! The Responses API has no finish reason; one is derived from `status`: `completed` is
//! [`Stop`](FinishReason::Stop), or [`ToolCalls`](FinishReason::ToolCalls) when the output asks
//! the caller to run a tool; `incomplete` follows `incomplete_details.reason`
//! (`max_output_tokens` is [`Length`](FinishReason::Length), `content_filter`
//! [`ContentFilter`](FinishReason::ContentFilter)); `failed` is `error`. Pure parsing, never
//! panics on any input.

use serde::Deserialize;

use crate::names;
use crate::parse::provider::{owned, top_level_type, utf8, BodyError, FinishReason, ResponseFacts, Str, Usage};

/// `usage` as the Responses API sends it.
#[derive(Deserialize)]
struct UsageWire {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default)]
    input_tokens_details: Option<InputDetails>,
    #[serde(default)]
    output_tokens_details: Option<OutputDetails>,
}

#[derive(Deserialize)]
struct InputDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct OutputDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl UsageWire {
    fn to_usage(&self) -> Usage {
        Usage {
            input_tokens: self.input_tokens.unwrap_or(0),
            output_tokens: self.output_tokens.unwrap_or(0),
            total_tokens: self.total_tokens,
            cached_input_tokens: self.input_tokens_details.as_ref().and_then(|d| d.cached_tokens),
            reasoning_tokens: self.output_tokens_details.as_ref().and_then(|d| d.reasoning_tokens),
            ..Usage::default()
        }
    }
}

/// A response object (the body, or the `response` of a stream event). Strings borrow from the
/// body; output content is skipped unread.
#[derive(Deserialize)]
struct ResponseWire<'a> {
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    object: Option<Str<'a>>,
    #[serde(default)]
    created_at: Option<i64>,
    #[serde(borrow, default)]
    model: Option<Str<'a>>,
    #[serde(borrow, default)]
    status: Option<Str<'a>>,
    #[serde(borrow, default)]
    service_tier: Option<Str<'a>>,
    #[serde(borrow, default)]
    incomplete_details: Option<IncompleteWire<'a>>,
    #[serde(borrow, default)]
    error: Option<ErrorWire<'a>>,
    #[serde(borrow, default)]
    output: Option<Vec<ItemWire<'a>>>,
    #[serde(default)]
    usage: Option<UsageWire>,
}

#[derive(Deserialize)]
struct IncompleteWire<'a> {
    #[serde(borrow, default)]
    reason: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct ErrorWire<'a> {
    #[serde(borrow, default)]
    code: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct ItemWire<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Str<'a>>,
}

/// Output item types that hand a tool call to the caller (server-side tools such as web search
/// run at OpenAI and end nothing).
fn asks_caller_to_run_a_tool(kind: &str) -> bool {
    matches!(
        kind,
        "function_call" | "custom_tool_call" | "computer_call" | "local_shell_call" | "mcp_approval_request"
    )
}

impl ResponseWire<'_> {
    fn finish_reason(&self) -> Option<FinishReason> {
        Some(match self.status.as_ref()?.as_str() {
            "completed" => {
                let tool = self.output.iter().flatten().any(|item| {
                    item.kind
                        .as_ref()
                        .is_some_and(|k| asks_caller_to_run_a_tool(k.as_str()))
                });
                if tool {
                    FinishReason::ToolCalls
                } else {
                    FinishReason::Stop
                }
            }
            "incomplete" => match self.incomplete_details.as_ref().and_then(|d| d.reason.as_ref()) {
                Some(r) if r.as_str() == "max_output_tokens" => FinishReason::Length,
                Some(r) if r.as_str() == "content_filter" => FinishReason::ContentFilter,
                Some(r) => FinishReason::Other(r.as_str().to_owned()),
                None => FinishReason::Other("incomplete".to_owned()),
            },
            "failed" => FinishReason::Other("error".to_owned()),
            _ => return None,
        })
    }
}

/// Typed view of a Responses API body: what llm-meter observes, without the output.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct OpenAiResponse {
    /// `id`, `object` (`response`), `created_at`, `model`, `service_tier`, `status`, and the
    /// finish reason derived from the status (see the module docs).
    pub facts: ResponseFacts,
    /// `usage`: `input_tokens` (cached ones included), `output_tokens` (reasoning ones
    /// included), `input_tokens_details.cached_tokens`, `output_tokens_details.reasoning_tokens`.
    pub usage: Option<Usage>,
    /// `incomplete_details.reason` (`max_output_tokens`, `content_filter`).
    pub incomplete_reason: Option<String>,
    /// `error.code` of a failed response (`server_error`, `rate_limit_exceeded`, …).
    pub error_code: Option<String>,
}

impl OpenAiResponse {
    /// Parses a Responses API body (unknown fields ignored, output content skipped unread).
    pub fn parse(body: &[u8]) -> Result<Self, BodyError> {
        let w: ResponseWire<'_> = serde_json::from_str(utf8(body)?)?;
        let text = |s: Option<&Str<'_>>| s.filter(|s| !s.as_str().is_empty()).map(|s| s.as_str().to_owned());
        let incomplete_reason = text(w.incomplete_details.as_ref().and_then(|d| d.reason.as_ref()));
        let error_code = text(w.error.as_ref().and_then(|e| e.code.as_ref()));
        let mut facts = ResponseFacts::default();
        let usage = fold(w, &mut facts);
        Ok(OpenAiResponse {
            facts,
            usage,
            incomplete_reason,
            error_code,
        })
    }
}

/// Folds a response object into `facts` (a later object's values win: the terminal event's
/// `service_tier` is the tier that served the call, the created event's the one requested) and
/// returns its usage.
fn fold(w: ResponseWire<'_>, facts: &mut ResponseFacts) -> Option<Usage> {
    fn set(slot: &mut Option<String>, v: Option<Str<'_>>) {
        if let Some(v) = owned(v) {
            *slot = Some(v);
        }
    }
    if let Some(reason) = w.finish_reason() {
        facts.finish_reasons = vec![reason];
    }
    set(&mut facts.id, w.id);
    set(&mut facts.object, w.object);
    set(&mut facts.model, w.model);
    set(&mut facts.status, w.status);
    set(&mut facts.service_tier, w.service_tier);
    if let Some(created) = w.created_at.filter(|&c| c != 0) {
        facts.created = Some(created);
    }
    w.usage.map(|u| u.to_usage())
}

/// What one Responses stream event is, told from its `event:` line (or, without one, from the
/// `type` its data starts with).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResponsesEvent {
    /// `response.created`, `response.queued`, `response.in_progress`: the response so far.
    Created,
    /// Any `*.delta` event (output text, arguments, reasoning, audio): never parsed.
    OutputDelta,
    /// `response.completed` (terminal).
    Completed,
    /// `response.incomplete` (terminal).
    Incomplete,
    /// `response.failed` (terminal).
    Failed,
    /// `error`.
    Error,
    /// Any other event (items and parts added and done, …): passed on, not parsed.
    Other,
    /// No type at all: not an event we can read.
    Unreadable,
}

impl ResponsesEvent {
    /// The events that end a Responses stream (it has no `[DONE]`).
    pub(crate) fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Incomplete | Self::Failed)
    }
}

/// Tells the event apart without parsing its data when it has an `event:` line.
pub(crate) fn event_kind(event: &[u8], data: &[u8]) -> ResponsesEvent {
    let kind = if event.is_empty() {
        match top_level_type(data) {
            Some(t) => t,
            None if data == b"[DONE]" => return ResponsesEvent::Other,
            None => return ResponsesEvent::Unreadable,
        }
    } else {
        event
    };
    if kind.ends_with(names::EVENT_DELTA_SUFFIX.as_bytes()) {
        return ResponsesEvent::OutputDelta;
    }
    match std::str::from_utf8(kind) {
        Ok(names::EVENT_RESPONSE_CREATED | names::EVENT_RESPONSE_QUEUED | names::EVENT_RESPONSE_IN_PROGRESS) => {
            ResponsesEvent::Created
        }
        Ok(names::EVENT_RESPONSE_COMPLETED) => ResponsesEvent::Completed,
        Ok(names::EVENT_RESPONSE_INCOMPLETE) => ResponsesEvent::Incomplete,
        Ok(names::EVENT_RESPONSE_FAILED) => ResponsesEvent::Failed,
        Ok(names::EVENT_ERROR) => ResponsesEvent::Error,
        _ => ResponsesEvent::Other,
    }
}

#[derive(Deserialize)]
struct EventWire<'a> {
    #[serde(borrow)]
    response: ResponseWire<'a>,
}

/// Folds the events that carry the response object (created and terminal) into `facts` and
/// `usage`; the others need no parsing. The created event is read only until the model is known.
pub(crate) fn apply_event(
    kind: ResponsesEvent,
    data: &[u8],
    facts: &mut ResponseFacts,
    usage: &mut Option<Usage>,
) -> Result<(), BodyError> {
    // JSON is UTF-8; serde checks only the strings it reads, and content is skipped.
    utf8(data)?;
    match kind {
        ResponsesEvent::Created if facts.model.is_none() => {
            let w: EventWire<'_> = serde_json::from_slice(data)?;
            if let Some(u) = fold(w.response, facts) {
                *usage = Some(u);
            }
        }
        ResponsesEvent::Completed | ResponsesEvent::Incomplete | ResponsesEvent::Failed => {
            let w: EventWire<'_> = serde_json::from_slice(data)?;
            if let Some(u) = fold(w.response, facts) {
                *usage = Some(u);
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::parse::endpoint::Api;
    use crate::parse::stream::{EventOutcome, StreamFault, StreamObserver};

    const BODY: &str = include_str!("../../tests/fixtures/openai-response.json");
    const STREAM: &str = include_str!("../../tests/fixtures/openai-response-stream.sse");

    #[test]
    fn body_usage_details_and_status_are_read() {
        let r = OpenAiResponse::parse(BODY.as_bytes()).unwrap();
        assert_eq!(
            r.facts.id.as_deref(),
            Some("resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b")
        );
        assert_eq!(r.facts.object.as_deref(), Some("response"));
        assert_eq!(r.facts.created, Some(1741476542));
        assert_eq!(r.facts.model.as_deref(), Some("gpt-4.1-2025-04-14"));
        assert_eq!(r.facts.status.as_deref(), Some("completed"));
        assert_eq!(r.facts.service_tier.as_deref(), Some("default"));
        assert_eq!(r.facts.finish_reasons, [FinishReason::Stop]);
        let u = r.usage.unwrap();
        assert_eq!((u.input_tokens, u.output_tokens, u.total_tokens), (36, 87, Some(123)));
        assert_eq!(u.cached_input_tokens, Some(0));
        assert_eq!(u.reasoning_tokens, Some(0));
        assert_eq!(u.cache_creation_input_tokens, None);
    }

    #[test]
    fn status_and_output_decide_the_finish_reason() {
        let cases: &[(&str, FinishReason)] = &[
            (
                r#"{"status":"completed","output":[{"type":"reasoning","summary":[]},{"type":"function_call","name":"f","arguments":"{}"}]}"#,
                FinishReason::ToolCalls,
            ),
            (
                r#"{"status":"completed","output":[{"type":"web_search_call"},{"type":"message"}]}"#,
                FinishReason::Stop,
            ),
            (
                r#"{"status":"incomplete","incomplete_details":{"reason":"max_output_tokens"}}"#,
                FinishReason::Length,
            ),
            (
                r#"{"status":"incomplete","incomplete_details":{"reason":"content_filter"}}"#,
                FinishReason::ContentFilter,
            ),
            (
                r#"{"status":"failed","error":{"code":"server_error","message":"x"}}"#,
                FinishReason::Other("error".into()),
            ),
        ];
        for (body, want) in cases {
            let r = OpenAiResponse::parse(body.as_bytes()).unwrap();
            assert_eq!(r.facts.finish_reasons, std::slice::from_ref(want), "{body}");
        }
        let r = OpenAiResponse::parse(br#"{"status":"in_progress"}"#).unwrap();
        assert!(r.facts.finish_reasons.is_empty());
        let r =
            OpenAiResponse::parse(br#"{"status":"incomplete","incomplete_details":{"reason":"max_output_tokens"}}"#)
                .unwrap();
        assert_eq!(r.incomplete_reason.as_deref(), Some("max_output_tokens"));
        let r = OpenAiResponse::parse(br#"{"status":"failed","error":{"code":"server_error","message":"x"}}"#).unwrap();
        assert_eq!(r.error_code.as_deref(), Some("server_error"));
        assert!(OpenAiResponse::parse(b"[1,2").is_err());
    }

    /// The documented stream, cut at every byte offset: the same facts each time.
    #[test]
    fn stream_fixture_folds_into_facts_and_usage_however_it_is_cut() {
        let bytes = STREAM.as_bytes();
        for cut in 0..bytes.len() {
            let mut o = StreamObserver::for_api(Instant::now(), Api::Responses);
            let mut outcomes = Vec::new();
            for part in [&bytes[..cut], &bytes[cut..]] {
                o.observe(part, |outcome, _| outcomes.push(outcome));
            }
            assert!(o.done, "cut at {cut}");
            assert_eq!(o.error, None, "cut at {cut}");
            assert_eq!(
                o.facts.id.as_deref(),
                Some("resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654")
            );
            assert_eq!(o.facts.model.as_deref(), Some("gpt-4.1-2025-04-14"));
            assert_eq!(o.facts.status.as_deref(), Some("completed"));
            // The created event says `auto` (requested), the completed one `default` (served).
            assert_eq!(o.facts.service_tier.as_deref(), Some("default"));
            assert_eq!(o.facts.finish_reasons, [FinishReason::Stop]);
            let u = o.usage.unwrap();
            assert_eq!((u.input_tokens, u.output_tokens, u.total_tokens), (37, 11, Some(48)));
            assert_eq!((u.cached_input_tokens, u.reasoning_tokens), (Some(0), Some(0)));
            assert_eq!(o.chunks, 13, "cut at {cut}");
            assert!(o.first_output.is_some() && o.first_chunk < o.first_output);
            assert_eq!(outcomes.last(), Some(&EventOutcome::Done));
            assert_eq!(outcomes.len(), 13);
        }
    }

    #[test]
    fn stream_events_are_told_apart_with_or_without_their_event_line() {
        use ResponsesEvent::*;
        let delta = br#"{"type":"response.output_text.delta","item_id":"msg_1","output_index":0,"content_index":0,"delta":"response.completed","sequence_number":4}"#;
        assert_eq!(event_kind(b"response.output_text.delta", delta), OutputDelta);
        assert_eq!(event_kind(b"", delta), OutputDelta);
        assert_eq!(
            event_kind(b"response.function_call_arguments.delta", b"{}"),
            OutputDelta
        );
        assert_eq!(event_kind(b"response.reasoning_summary_text.delta", b"{}"), OutputDelta);
        assert_eq!(event_kind(b"response.output_item.added", b"{}"), Other);
        assert_eq!(event_kind(b"", br#"{"type":"response.failed","response":{}}"#), Failed);
        assert_eq!(event_kind(b"", b"[DONE]"), Other);
        assert_eq!(event_kind(b"", b"garbage"), Unreadable);
    }

    #[test]
    fn a_failed_response_ends_the_stream_with_a_fault_and_keeps_its_usage() {
        let mut o = StreamObserver::for_api(Instant::now(), Api::Responses);
        o.observe_all(b"event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"model\":\"o4-mini-2025-04-16\",\"status\":\"in_progress\",\"usage\":null}}\n\n");
        o.observe_all(b"event: response.failed\ndata: {\"type\":\"response.failed\",\"sequence_number\":1,\"response\":{\"id\":\"resp_1\",\"status\":\"failed\",\"error\":{\"code\":\"server_error\",\"message\":\"The model failed.\"},\"usage\":{\"input_tokens\":5,\"output_tokens\":0,\"total_tokens\":5}}}\n\n");
        assert!(o.done);
        assert_eq!(o.error, Some(StreamFault::ErrorEvent));
        assert_eq!(o.facts.status.as_deref(), Some("failed"));
        assert_eq!(o.usage.unwrap().input_tokens, 5);

        let mut e = StreamObserver::for_api(Instant::now(), Api::Responses);
        let mut outcomes = Vec::new();
        e.observe(
            b"event: error\ndata: {\"type\":\"error\",\"code\":\"rate_limit_exceeded\",\"message\":\"Slow down.\",\"param\":null,\"sequence_number\":1}\n\n",
            |outcome, _| outcomes.push(outcome),
        );
        assert_eq!(outcomes, [EventOutcome::Unreadable]);
        assert_eq!(e.error, Some(StreamFault::ErrorEvent));
        assert!(!e.done);
    }

    #[test]
    fn an_unreadable_terminal_event_still_ends_the_stream() {
        let mut o = StreamObserver::for_api(Instant::now(), Api::Responses);
        o.observe_all(b"event: response.completed\ndata: {\"response\": 7}\n\n");
        assert!(o.done);
        assert_eq!(o.error, Some(StreamFault::Decode));
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
            let mut o = StreamObserver::for_api(std::time::Instant::now(), Api::Responses);
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
                let _ = OpenAiResponse::parse(&bytes);
                let _ = OpenAiResponse::parse(&noise);
            }

            #[test]
            fn streams_never_panic_and_are_observed_the_same_however_cut(
                bytes in mutated(STREAM),
                cuts in proptest::collection::vec(any::<usize>(), 0..10),
            ) {
                prop_assert_eq!(observe(&bytes, &[]), observe(&bytes, &cuts));
            }
        }
    }
}
