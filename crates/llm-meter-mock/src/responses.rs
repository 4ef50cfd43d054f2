//! `POST /v1/responses`: OpenAI's Responses API as documented. The response object (`output`
//! with a message, a reasoning item when reasoning tokens are configured, `usage` with
//! `input_tokens_details` and `output_tokens_details`, `status` `incomplete` when
//! `max_output_tokens` cuts it), OpenAI's headers and rate limits (shared with chat
//! completions), and the event stream from `response.created` to `response.completed` or
//! `response.incomplete` (no `[DONE]`), each event with its `event:` line and `sequence_number`.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use llm_meter::names;
use serde::Serialize;
use serde_json::{json, Value};

use crate::{
    admit_openai, error_body, header_str, lorem, lorem_range, openai_fault, openai_forced_error, openai_head,
    openai_rate_headers, put, random_id, rate_limited_now, respond, snapshot_of, stream_response, to_bytes, MockState,
    HEX, MAX_CHUNKS, MAX_COMPLETION_TOKENS,
};

#[derive(Serialize, Clone)]
struct ResponseBody<'a> {
    id: &'a str,
    object: &'static str,
    created_at: u64,
    status: &'static str,
    background: bool,
    error: Option<Value>,
    incomplete_details: Option<Value>,
    instructions: Option<&'a str>,
    max_output_tokens: Option<u64>,
    model: &'a str,
    output: Vec<Value>,
    parallel_tool_calls: bool,
    previous_response_id: Option<()>,
    reasoning: Value,
    service_tier: &'static str,
    store: bool,
    temperature: f64,
    text: Value,
    tool_choice: &'static str,
    tools: [(); 0],
    top_p: f64,
    truncation: &'static str,
    usage: Option<UsageBody>,
    user: Option<()>,
    metadata: Value,
}

#[derive(Serialize, Clone, Copy)]
struct UsageBody {
    input_tokens: u64,
    input_tokens_details: InputDetails,
    output_tokens: u64,
    output_tokens_details: OutputDetails,
    total_tokens: u64,
}

#[derive(Serialize, Clone, Copy)]
struct InputDetails {
    cached_tokens: u64,
}

#[derive(Serialize, Clone, Copy)]
struct OutputDetails {
    reasoning_tokens: u64,
}

/// Characters of the text in `input` (a string, or items whose `content` is a string or parts
/// with `text`) and `instructions`, and the number of items.
fn estimate_input_tokens(req: &Value) -> u64 {
    let text = |v: Option<&Value>| match v {
        Some(Value::String(s)) => s.chars().count(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .map(|t| t.chars().count())
            .sum(),
        _ => 0,
    };
    let mut chars = text(req.get("instructions"));
    let mut items = 1u64;
    match req.get("input") {
        Some(Value::Array(list)) => {
            items = list.len() as u64;
            chars += list.iter().map(|item| text(item.get("content"))).sum::<usize>();
        }
        other => chars += text(other),
    }
    (chars as u64).div_ceil(4) + 4 * items + 3
}

/// One SSE event with its `event:` line; `data` gets `type` and `sequence_number` first.
fn event(seq: &mut u64, kind: &str, fields: Value) -> Bytes {
    let mut data = serde_json::Map::new();
    data.insert("type".into(), Value::from(kind));
    data.insert("sequence_number".into(), Value::from(*seq));
    if let Value::Object(rest) = fields {
        data.extend(rest);
    }
    *seq += 1;
    Bytes::from(format!("event: {kind}\ndata: {}\n\n", Value::Object(data)))
}

/// `POST /v1/responses`.
pub(crate) async fn create(State(state): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let cfg = &state.config;
    let started = Instant::now();
    let mut head = openai_head(&state);
    if let Some(key) = &cfg.api_key {
        let ok = header_str(&headers, "authorization").and_then(|v| v.strip_prefix("Bearer ")) == Some(key.as_str());
        if !ok {
            let msg = "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.";
            return respond(
                StatusCode::UNAUTHORIZED,
                head,
                error_body(msg, "invalid_request_error", None, Some("invalid_api_key")),
            );
        }
    }
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            let msg = "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)";
            return respond(
                StatusCode::BAD_REQUEST,
                head,
                error_body(msg, "invalid_request_error", None, None),
            );
        }
    };
    let Some(model) = req.get("model").and_then(Value::as_str) else {
        return respond(
            StatusCode::BAD_REQUEST,
            head,
            error_body(
                "Missing required parameter: 'model'.",
                "invalid_request_error",
                Some("model"),
                Some("missing_required_parameter"),
            ),
        );
    };
    let max_output = req.get("max_output_tokens").and_then(Value::as_u64);
    let wanted = header_str(&headers, "x-mock-completion-tokens")
        .and_then(|v| v.parse().ok())
        .unwrap_or(cfg.completion_tokens)
        .min(MAX_COMPLETION_TOKENS);
    // Reasoning comes first and counts against `max_output_tokens` too.
    let budget = max_output.unwrap_or(u64::MAX);
    let reasoning = cfg.reasoning_tokens.min(budget);
    let text_tokens = wanted.min(budget - reasoning);
    let incomplete = reasoning + text_tokens < cfg.reasoning_tokens + wanted;
    let input_tokens = estimate_input_tokens(&req);
    let usage = UsageBody {
        input_tokens,
        input_tokens_details: InputDetails {
            cached_tokens: ((input_tokens as f64) * cfg.cached_fraction).floor() as u64,
        },
        output_tokens: reasoning + text_tokens,
        output_tokens_details: OutputDetails {
            reasoning_tokens: reasoning,
        },
        total_tokens: input_tokens + reasoning + text_tokens,
    };
    let stream = req.get("stream").and_then(Value::as_bool) == Some(true);
    let chunks = header_str(&headers, "x-mock-chunks")
        .and_then(|v| v.parse().ok())
        .unwrap_or(cfg.chunks)
        .clamp(1, MAX_CHUNKS);
    let service_tier = match req.get("service_tier").and_then(Value::as_str) {
        Some("flex") => "flex",
        Some("priority") => "priority",
        _ => "default",
    };

    let cost = input_tokens.saturating_add(max_output.unwrap_or(wanted + cfg.reasoning_tokens));
    match admit_openai(&state, cost) {
        Ok(remaining) => openai_rate_headers(&mut head, cfg, remaining),
        Err((kind, reset)) => return rate_limited_now(&state, head, kind, model, reset),
    }
    let forced = openai_fault(&state, header_str(&headers, "x-mock-error").unwrap_or("").to_owned());
    if !cfg.latency.is_zero() {
        tokio::time::sleep(cfg.latency).await;
    }
    if let Some(error) = openai_forced_error(&state, &forced, &head, model).await {
        return error;
    }

    let id = format!("resp_{}", random_id(&state.counter, "", 48, HEX));
    let message_id = format!("msg_{}", random_id(&state.counter, "", 48, HEX));
    let created_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let model = snapshot_of(model).to_owned();
    let status = if incomplete { "incomplete" } else { "completed" };
    let message = |text: &str, status: &str| json!({"id": message_id, "type": "message", "status": status, "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}], "role": "assistant"});
    let reasoning_item = (reasoning > 0).then(
        || json!({"id": format!("rs_{}", random_id(&state.counter, "", 48, HEX)), "type": "reasoning", "summary": []}),
    );
    let full_text = lorem(text_tokens);
    let mut output: Vec<Value> = reasoning_item.iter().cloned().collect();
    output.push(message(&full_text, status));
    let mut response = ResponseBody {
        id: &id,
        object: "response",
        created_at,
        status,
        background: false,
        error: None,
        incomplete_details: incomplete.then(|| json!({"reason": "max_output_tokens"})),
        instructions: req.get("instructions").and_then(Value::as_str),
        max_output_tokens: max_output,
        model: &model,
        output,
        parallel_tool_calls: true,
        previous_response_id: None,
        reasoning: json!({"effort": if reasoning > 0 { Value::from("medium") } else { Value::Null }, "summary": null}),
        service_tier,
        store: true,
        temperature: 1.0,
        text: json!({"format": {"type": "text"}}),
        tool_choice: "auto",
        tools: [],
        top_p: 1.0,
        truncation: "disabled",
        usage: Some(usage),
        user: None,
        metadata: json!({}),
    };
    let processing = started.elapsed() + cfg.chunk_delay * chunks;
    put(
        &mut head,
        names::HEADER_OPENAI_PROCESSING_MS,
        processing.as_millis().max(1).to_string(),
    );
    if !stream {
        return respond(StatusCode::OK, head, to_bytes(&response));
    }

    let as_value = |r: &ResponseBody<'_>| serde_json::to_value(r).unwrap_or(Value::Null);
    let mut seq = 0;
    let mut in_progress = response.clone();
    in_progress.status = "in_progress";
    in_progress.incomplete_details = None;
    in_progress.output = Vec::new();
    in_progress.usage = None;
    // The created event shows the tier as requested (`auto` unless named), the last as served.
    in_progress.service_tier = match req.get("service_tier").and_then(Value::as_str) {
        Some("flex") => "flex",
        Some("priority") => "priority",
        Some("default") => "default",
        _ => "auto",
    };
    let mut events = vec![
        event(
            &mut seq,
            names::EVENT_RESPONSE_CREATED,
            json!({"response": as_value(&in_progress)}),
        ),
        event(
            &mut seq,
            names::EVENT_RESPONSE_IN_PROGRESS,
            json!({"response": as_value(&in_progress)}),
        ),
    ];
    let mut index = 0;
    if let Some(item) = &reasoning_item {
        events.push(event(
            &mut seq,
            "response.output_item.added",
            json!({"output_index": 0, "item": item}),
        ));
        events.push(event(
            &mut seq,
            "response.output_item.done",
            json!({"output_index": 0, "item": item}),
        ));
        index = 1;
    }
    let mut open = message("", "in_progress");
    if let Some(content) = open.get_mut("content") {
        *content = json!([]);
    }
    events.push(event(
        &mut seq,
        "response.output_item.added",
        json!({"output_index": index, "item": open}),
    ));
    let part = |text: &str| json!({"type": "output_text", "annotations": [], "logprobs": [], "text": text});
    events.push(event(
        &mut seq,
        "response.content_part.added",
        json!({"item_id": message_id, "output_index": index, "content_index": 0, "part": part("")}),
    ));
    let per_chunk = text_tokens.div_ceil(u64::from(chunks)).max(1);
    let total_deltas = text_tokens.div_ceil(per_chunk);
    let mut sent = 0;
    let mut deltas = 0u64;
    while sent < text_tokens {
        let n = per_chunk.min(text_tokens - sent);
        events.push(event(
            &mut seq,
            names::EVENT_RESPONSE_OUTPUT_TEXT_DELTA,
            json!({"item_id": message_id, "output_index": index, "content_index": 0, "delta": lorem_range(sent, n), "logprobs": []}),
        ));
        sent += n;
        deltas += 1;
        if forced == "stream-error" && deltas * 2 >= total_deltas {
            // A failure mid-stream: the terminal `response.failed`, with the usage so far.
            let mut failed = in_progress.clone();
            failed.status = "failed";
            failed.error =
                Some(json!({"code": "server_error", "message": "The model produced an error. Please try again."}));
            failed.service_tier = service_tier;
            failed.usage = Some(UsageBody {
                output_tokens: reasoning + sent,
                total_tokens: input_tokens + reasoning + sent,
                ..usage
            });
            events.push(event(
                &mut seq,
                names::EVENT_RESPONSE_FAILED,
                json!({"response": as_value(&failed)}),
            ));
            return stream_response(&state, &headers, head, events, String::new());
        }
    }
    events.push(event(
        &mut seq,
        "response.output_text.done",
        json!({"item_id": message_id, "output_index": index, "content_index": 0, "text": full_text, "logprobs": []}),
    ));
    events.push(event(
        &mut seq,
        "response.content_part.done",
        json!({"item_id": message_id, "output_index": index, "content_index": 0, "part": part(&full_text)}),
    ));
    events.push(event(
        &mut seq,
        "response.output_item.done",
        json!({"output_index": index, "item": message(&full_text, status)}),
    ));
    let terminal = if incomplete {
        names::EVENT_RESPONSE_INCOMPLETE
    } else {
        names::EVENT_RESPONSE_COMPLETED
    };
    response.status = status;
    events.push(event(&mut seq, terminal, json!({"response": as_value(&response)})));
    stream_response(&state, &headers, head, events, forced)
}
