//! `POST /v1/messages`: Anthropic's Messages API as documented. Request checks (`x-api-key`, or
//! `Authorization: Bearer` as the SDK sends it, when a key is configured, `anthropic-version`, `model`, `max_tokens`, `messages`), the
//! message body, `request-id` and `anthropic-ratelimit-*` headers (resets as RFC 3339 times,
//! token counts left rounded to the thousand as Anthropic rounds them), the event stream
//! (`message_start`, `content_block_start`, `ping`, `content_block_delta`…,
//! `content_block_stop`, `message_delta`, `message_stop`) and Anthropic's error shape
//! (`{"type":"error","error":{"type":…,"message":…},"request_id":…}`).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use llm_meter::names;
use serde_json::{json, Value};

use crate::{
    header_str, lorem, lorem_range, random_id, respond, splitmix, stream_response, AnthropicWindow, MockState, ALNUM,
    MAX_CHUNKS, MAX_COMPLETION_TOKENS,
};

/// The organization id the mock answers for.
const ORGANIZATION_ID: &str = "5b1f6c1e-0d3a-4c8e-9f2a-6d7e8f9a0b1c";

/// Resolves an alias to the dated snapshot Anthropic answers with.
pub fn snapshot_of(model: &str) -> &str {
    match model {
        "claude-opus-4-1" => "claude-opus-4-1-20250805",
        "claude-opus-4-0" | "claude-opus-4" => "claude-opus-4-20250514",
        "claude-sonnet-4-5" => "claude-sonnet-4-5-20250929",
        "claude-sonnet-4-0" | "claude-sonnet-4" => "claude-sonnet-4-20250514",
        "claude-haiku-4-5" => "claude-haiku-4-5-20251001",
        "claude-3-7-sonnet-latest" => "claude-3-7-sonnet-20250219",
        "claude-3-5-haiku-latest" => "claude-3-5-haiku-20241022",
        other => other,
    }
}

/// An Anthropic-shaped error answer.
fn error(status: StatusCode, head: HeaderMap, kind: &str, message: &str, request_id: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id});
    respond(status, head, Bytes::from(body.to_string()))
}

/// Formats a time as RFC 3339 in UTC with whole seconds (`2025-08-21T12:40:59Z`), as
/// Anthropic's reset headers send it.
pub fn format_rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Text of a `content` or `system` value: a string, or blocks with `text`.
fn text_chars(v: Option<&Value>) -> usize {
    match v {
        Some(Value::String(s)) => s.chars().count(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .map(|t| t.chars().count())
            .sum(),
        _ => 0,
    }
}

fn estimate_input_tokens(req: &Value) -> u64 {
    let mut chars = text_chars(req.get("system"));
    let mut messages = 0u64;
    for m in req.get("messages").and_then(Value::as_array).into_iter().flatten() {
        messages += 1;
        chars += text_chars(m.get("content"));
    }
    (chars as u64).div_ceil(4) + 3 * messages + 4
}

/// Whether any `cache_control` in the request asks for the 1-hour lifetime.
fn wants_one_hour_cache(v: &Value) -> bool {
    match v {
        Value::Object(map) => map.iter().any(|(k, v)| {
            (k == "cache_control" && v.get("ttl").and_then(Value::as_str) == Some("1h")) || wants_one_hour_cache(v)
        }),
        Value::Array(items) => items.iter().any(wants_one_hour_cache),
        _ => false,
    }
}

/// Anthropic's `usage` object for an answer.
struct Usage {
    input: u64,
    cache_read: u64,
    cache_write: u64,
    one_hour: bool,
}

impl Usage {
    fn to_json(&self, output: u64) -> Value {
        let (five, hour) = if self.one_hour {
            (0, self.cache_write)
        } else {
            (self.cache_write, 0)
        };
        json!({
            "input_tokens": self.input,
            "cache_creation_input_tokens": self.cache_write,
            "cache_read_input_tokens": self.cache_read,
            "cache_creation": {"ephemeral_5m_input_tokens": five, "ephemeral_1h_input_tokens": hour},
            "output_tokens": output,
            "service_tier": "standard",
        })
    }
}

/// Rounds a token count to the nearest thousand, as Anthropic reports tokens left.
fn to_thousand(n: u64) -> u64 {
    n.saturating_add(500) / 1000 * 1000
}

/// What `admit` counted: limits and what is left of them, and when the window ends.
struct Left {
    requests: (u64, u64),
    input: (u64, u64),
    output: (u64, u64),
    reset: Duration,
}

/// Counts a request against Anthropic's window (requests, input tokens not read from the cache,
/// `max_tokens` output tokens, as Anthropic estimates them at admission); `Err` names the limit
/// hit.
fn admit(state: &MockState, input: u64, output: u64) -> (Left, Option<&'static str>) {
    let cfg = &state.config;
    let limits = (cfg.limit_requests, cfg.limit_tokens, (cfg.limit_tokens / 5).max(1));
    let mut w = state.anthropic_window.lock().unwrap_or_else(|p| p.into_inner());
    if w.started.elapsed() >= cfg.window {
        *w = AnthropicWindow {
            started: Instant::now(),
            requests: 0,
            input_tokens: 0,
            output_tokens: 0,
        };
    }
    let over = if w.requests >= limits.0 {
        Some("requests")
    } else if w.input_tokens.saturating_add(input) > limits.1 {
        Some("input tokens")
    } else if w.output_tokens.saturating_add(output) > limits.2 {
        Some("output tokens")
    } else {
        w.requests += 1;
        w.input_tokens = w.input_tokens.saturating_add(input);
        w.output_tokens = w.output_tokens.saturating_add(output);
        None
    };
    let left = Left {
        requests: (limits.0, limits.0.saturating_sub(w.requests)),
        input: (limits.1, limits.1.saturating_sub(w.input_tokens)),
        output: (limits.2, limits.2.saturating_sub(w.output_tokens)),
        reset: cfg.window.saturating_sub(w.started.elapsed()),
    };
    (left, over)
}

fn rate_headers(head: &mut HeaderMap, left: &Left) {
    let reset = format_rfc3339(SystemTime::now() + left.reset);
    let mut put = |name: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            head.insert(name, v);
        }
    };
    put(
        names::HEADER_ANTHROPIC_RATELIMIT_REQUESTS_LIMIT,
        left.requests.0.to_string(),
    );
    put(
        names::HEADER_ANTHROPIC_RATELIMIT_REQUESTS_REMAINING,
        left.requests.1.to_string(),
    );
    put(names::HEADER_ANTHROPIC_RATELIMIT_REQUESTS_RESET, reset.clone());
    put(
        names::HEADER_ANTHROPIC_RATELIMIT_INPUT_TOKENS_LIMIT,
        left.input.0.to_string(),
    );
    put(
        names::HEADER_ANTHROPIC_RATELIMIT_INPUT_TOKENS_REMAINING,
        to_thousand(left.input.1).to_string(),
    );
    put(names::HEADER_ANTHROPIC_RATELIMIT_INPUT_TOKENS_RESET, reset.clone());
    put(
        names::HEADER_ANTHROPIC_RATELIMIT_OUTPUT_TOKENS_LIMIT,
        left.output.0.to_string(),
    );
    put(
        names::HEADER_ANTHROPIC_RATELIMIT_OUTPUT_TOKENS_REMAINING,
        to_thousand(left.output.1).to_string(),
    );
    put(names::HEADER_ANTHROPIC_RATELIMIT_OUTPUT_TOKENS_RESET, reset.clone());
    // The combined limit: input and output together.
    put(
        names::HEADER_ANTHROPIC_RATELIMIT_TOKENS_LIMIT,
        (left.input.0 + left.output.0).to_string(),
    );
    put(
        names::HEADER_ANTHROPIC_RATELIMIT_TOKENS_REMAINING,
        to_thousand(left.input.1 + left.output.1).to_string(),
    );
    put(names::HEADER_ANTHROPIC_RATELIMIT_TOKENS_RESET, reset);
}

/// One SSE event with its `event:` line.
fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// `POST /v1/messages`.
pub(crate) async fn messages(State(state): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let cfg = &state.config;
    let request_id = random_id(&state.counter, "req_011C", 20, ALNUM);
    let mut head = HeaderMap::new();
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        head.insert(names::HEADER_ANTHROPIC_REQUEST_ID, id);
    }
    head.insert(
        names::HEADER_ANTHROPIC_ORGANIZATION_ID,
        HeaderValue::from_static(ORGANIZATION_ID),
    );
    let fail = |status, head, kind: &str, message: &str| error(status, head, kind, message, &request_id);

    if let Some(key) = &cfg.api_key {
        // `x-api-key`, or `Authorization: Bearer` (what the Anthropic SDK sends since 2.x).
        let bearer = header_str(&headers, "authorization").and_then(|v| v.strip_prefix("Bearer "));
        match header_str(&headers, names::HEADER_ANTHROPIC_API_KEY).or(bearer) {
            None => {
                return fail(
                    StatusCode::UNAUTHORIZED,
                    head,
                    "authentication_error",
                    "x-api-key header is required",
                )
            }
            Some(k) if k != key => {
                return fail(
                    StatusCode::UNAUTHORIZED,
                    head,
                    "authentication_error",
                    "invalid x-api-key",
                )
            }
            Some(_) => {}
        }
    }
    if header_str(&headers, names::HEADER_ANTHROPIC_VERSION).is_none_or(str::is_empty) {
        return fail(
            StatusCode::BAD_REQUEST,
            head,
            "invalid_request_error",
            "anthropic-version: header is required",
        );
    }
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return fail(
                StatusCode::BAD_REQUEST,
                head,
                "invalid_request_error",
                "There was an error parsing the body of your request. Please make sure it is valid JSON.",
            )
        }
    };
    let Some(model) = req.get("model").and_then(Value::as_str) else {
        return fail(
            StatusCode::BAD_REQUEST,
            head,
            "invalid_request_error",
            "model: Field required",
        );
    };
    let Some(max_tokens) = req.get("max_tokens").and_then(Value::as_u64) else {
        return fail(
            StatusCode::BAD_REQUEST,
            head,
            "invalid_request_error",
            "max_tokens: Field required",
        );
    };
    if !req.get("messages").is_some_and(Value::is_array) {
        return fail(
            StatusCode::BAD_REQUEST,
            head,
            "invalid_request_error",
            "messages: Field required",
        );
    }
    let wanted = header_str(&headers, "x-mock-completion-tokens")
        .and_then(|v| v.parse().ok())
        .unwrap_or(cfg.completion_tokens)
        .min(MAX_COMPLETION_TOKENS);
    let output = max_tokens.min(wanted);
    let stop_reason = if output < wanted { "max_tokens" } else { "end_turn" };
    let prompt = estimate_input_tokens(&req);
    let cache_read = ((prompt as f64) * cfg.cached_fraction).floor() as u64;
    let cache_write =
        (((prompt as f64) * cfg.cache_write_fraction).floor() as u64).min(prompt - cache_read.min(prompt));
    let usage = Usage {
        input: prompt.saturating_sub(cache_read).saturating_sub(cache_write),
        cache_read,
        cache_write,
        one_hour: wants_one_hour_cache(&req),
    };
    let model = snapshot_of(model).to_owned();
    let stream = req.get("stream").and_then(Value::as_bool) == Some(true);
    let chunks = header_str(&headers, "x-mock-chunks")
        .and_then(|v| v.parse().ok())
        .unwrap_or(cfg.chunks)
        .clamp(1, MAX_CHUNKS);

    // Cache reads do not count against the input-token limit; output counts at `max_tokens`.
    let (left, over) = admit(&state, usage.input + usage.cache_write, max_tokens);
    rate_headers(&mut head, &left);
    if let Some(limit) = over {
        let secs = left.reset.as_secs_f64().ceil().max(1.0) as u64;
        head.insert(names::HEADER_RETRY_AFTER, HeaderValue::from(secs));
        let (limit_value, unit) = match limit {
            "requests" => (left.requests.0, "requests per minute"),
            "input tokens" => (left.input.0, "input tokens per minute"),
            _ => (left.output.0, "output tokens per minute"),
        };
        let message = format!(
            "This request would exceed the rate limit for your organization ({ORGANIZATION_ID}) of {limit_value} {unit}. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the response headers for current usage. Please reduce the prompt length or the maximum tokens requested, or try again later. You may also contact sales at https://www.anthropic.com/contact-sales to discuss your options for a rate limit increase."
        );
        return fail(StatusCode::TOO_MANY_REQUESTS, head, "rate_limit_error", &message);
    }

    let random_fault = cfg.error_rate > 0.0 && (splitmix(&state.counter) % 10_000) as f64 / 10_000.0 < cfg.error_rate;
    let forced = match header_str(&headers, "x-mock-error") {
        Some(f) => f.to_owned(),
        None if random_fault => "529".to_owned(),
        None => String::new(),
    };
    if !cfg.latency.is_zero() {
        tokio::time::sleep(cfg.latency).await;
    }
    let status = |code| StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match forced.as_str() {
        "400" => {
            return fail(
                status(400),
                head,
                "invalid_request_error",
                "messages: roles must alternate between \"user\" and \"assistant\", but found multiple \"user\" roles in a row",
            )
        }
        "401" => return fail(status(401), head, "authentication_error", "invalid x-api-key"),
        "403" => {
            return fail(
                status(403),
                head,
                "permission_error",
                "Your API key does not have permission to use the specified resource.",
            )
        }
        "404" => {
            return fail(
                status(404),
                head,
                "not_found_error",
                &format!("model: {model}"),
            )
        }
        "413" => return fail(status(413), head, "request_too_large", "Request exceeds the maximum allowed number of bytes."),
        "429" => {
            head.insert(names::HEADER_RETRY_AFTER, HeaderValue::from_static("1"));
            return fail(
                status(429),
                head,
                "rate_limit_error",
                "This request would exceed your organization's rate limit. Please try again later.",
            );
        }
        "500" => return fail(status(500), head, "api_error", "Internal server error"),
        "529" | "503" => return fail(status(529), head, "overloaded_error", "Overloaded"),
        "stall" => tokio::time::sleep(Duration::from_secs(3600)).await,
        "garbage" => {
            return respond(
                StatusCode::OK,
                head,
                Bytes::from_static(b"<html>upstream proxy error</html>"),
            )
        }
        _ => {}
    }

    let id = random_id(&state.counter, "msg_01", 22, ALNUM);
    if !stream {
        let body = json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": lorem(output)}],
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": usage.to_json(output),
        });
        return respond(StatusCode::OK, head, Bytes::from(body.to_string()));
    }

    let mut events = vec![
        event(
            names::EVENT_MESSAGE_START,
            &json!({"type": names::EVENT_MESSAGE_START, "message": {
                "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "stop_sequence": null, "usage": usage.to_json(1.min(output)),
            }}),
        ),
        event(
            names::EVENT_CONTENT_BLOCK_START,
            &json!({"type": names::EVENT_CONTENT_BLOCK_START, "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        event(names::EVENT_PING, &json!({"type": names::EVENT_PING})),
    ];
    head.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let per_chunk = output.div_ceil(u64::from(chunks)).max(1);
    let total_deltas = output.div_ceil(per_chunk);
    let mut sent = 0;
    let mut deltas = 0u64;
    while sent < output {
        let n = per_chunk.min(output - sent);
        events.push(event(
            names::EVENT_CONTENT_BLOCK_DELTA,
            &json!({"type": names::EVENT_CONTENT_BLOCK_DELTA, "index": 0, "delta": {"type": "text_delta", "text": lorem_range(sent, n)}}),
        ));
        sent += n;
        deltas += 1;
        if forced == "stream-error" && deltas * 2 >= total_deltas {
            // Anthropic reports an overload mid-stream as an `error` event, then ends.
            events.push(event(
                names::EVENT_ERROR,
                &json!({"type": names::EVENT_ERROR, "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ));
            return stream_response(&state, &headers, head, events, String::new());
        }
    }
    events.push(event(
        names::EVENT_CONTENT_BLOCK_STOP,
        &json!({"type": names::EVENT_CONTENT_BLOCK_STOP, "index": 0}),
    ));
    events.push(event(
        names::EVENT_MESSAGE_DELTA,
        &json!({"type": names::EVENT_MESSAGE_DELTA, "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": output}}),
    ));
    events.push(event(
        names::EVENT_MESSAGE_STOP,
        &json!({"type": names::EVENT_MESSAGE_STOP}),
    ));
    stream_response(&state, &headers, head, events, forced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_format_round_trips_through_the_library_parser() {
        for secs in [0u64, 951_868_800, 1_709_164_800, 1_755_780_059, 4_102_444_799] {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            let text = format_rfc3339(t);
            assert_eq!(llm_meter::parse_rfc3339(&text), Some(t), "{text}");
        }
        assert_eq!(
            format_rfc3339(UNIX_EPOCH + Duration::from_secs(1_755_780_059)),
            "2025-08-21T12:40:59Z"
        );
    }

    #[test]
    fn remaining_tokens_round_to_the_thousand() {
        assert_eq!(to_thousand(29_981), 30_000);
        assert_eq!(to_thousand(29_499), 29_000);
        assert_eq!(to_thousand(0), 0);
        assert_eq!(to_thousand(u64::MAX), u64::MAX / 1000 * 1000);
    }

    #[test]
    fn one_hour_cache_control_is_found_anywhere_in_the_request() {
        let req =
            json!({"system": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]});
        assert!(wants_one_hour_cache(&req));
        assert!(!wants_one_hour_cache(
            &json!({"messages": [{"content": [{"cache_control": {"type": "ephemeral"}}]}]})
        ));
    }
}
