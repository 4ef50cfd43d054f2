//! The `chat {model}` span: opened when a call starts, filled in one pass from the finished
//! [`CallRecord`], closed when the call (or stream) ends.
//!
//! Scalar attributes known at the start are `tracing` fields (visible to any subscriber); the
//! rest, including the arrays (`gen_ai.response.finish_reasons`, `limit.ids`, `request.tags`),
//! are set through [`OpenTelemetrySpanExt::set_attribute`], since `tracing` fields cannot hold
//! arrays. Spans are recorded under the `llm_meter` target at `INFO` level.

use opentelemetry::{Array, StringValue, Value};
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::annotations::Annotations;
use crate::record::CallRecord;
use crate::semconv::*;

/// Opens the client span of a chat call under the caller's current span.
pub fn start_chat_span(model: &str, provider: &str, server_address: &str, annotations: &Annotations) -> Span {
    tracing::info_span!(
        target: "llm_meter",
        "chat",
        otel.name = %format_args!("{OPERATION_CHAT} {model}"),
        otel.kind = "client",
        otel.status_code = Empty,
        { GEN_AI_OPERATION_NAME } = OPERATION_CHAT,
        { GEN_AI_PROVIDER_NAME } = provider,
        { GEN_AI_REQUEST_MODEL } = model,
        { SERVER_ADDRESS } = server_address,
        { USE_CASE_NAME } = annotations.use_case_name(),
        { ERROR_TYPE } = Empty,
    )
}

/// Writes everything the record holds onto the span, in one pass. A disabled span costs nothing.
pub fn record_on_span(span: &Span, r: &CallRecord) {
    if span.is_disabled() {
        return;
    }
    let set = |key: &'static str, value: Value| span.set_attribute(key, value);
    let set_u64 = |key: &'static str, v: Option<u64>| {
        if let Some(v) = v {
            set(key, Value::I64(i64::try_from(v).unwrap_or(i64::MAX)));
        }
    };
    let set_f64 = |key: &'static str, v: Option<f64>| {
        if let Some(v) = v {
            set(key, Value::F64(v));
        }
    };
    let set_str = |key: &'static str, v: Option<&str>| {
        if let Some(v) = v {
            set(key, Value::String(v.to_owned().into()));
        }
    };
    let set_array = |key: &'static str, items: &mut dyn Iterator<Item = &str>| {
        let values: Vec<StringValue> = items.map(|s| StringValue::from(s.to_owned())).collect();
        if !values.is_empty() {
            set(key, Value::Array(Array::String(values)));
        }
    };

    if let Some(port) = r.server_port {
        set(SERVER_PORT, Value::I64(port.into()));
    }
    let q = &r.request;
    set_u64(GEN_AI_REQUEST_MAX_TOKENS, q.max_tokens);
    set_f64(GEN_AI_REQUEST_TEMPERATURE, q.temperature);
    set_f64(GEN_AI_REQUEST_TOP_P, q.top_p);
    set_f64(GEN_AI_REQUEST_FREQUENCY_PENALTY, q.frequency_penalty);
    set_f64(GEN_AI_REQUEST_PRESENCE_PENALTY, q.presence_penalty);
    if let Some(seed) = q.seed {
        set(GEN_AI_REQUEST_SEED, Value::I64(seed));
    }
    set_u64(GEN_AI_REQUEST_CHOICE_COUNT, q.choice_count.filter(|n| *n != 1));
    set_array(
        GEN_AI_REQUEST_STOP_SEQUENCES,
        &mut q.stop_sequences.iter().map(String::as_str),
    );
    set(GEN_AI_REQUEST_STREAM, Value::Bool(q.stream));
    set_str(OPENAI_REQUEST_SERVICE_TIER, q.service_tier.as_deref());

    let p = &r.response;
    set_str(GEN_AI_RESPONSE_ID, p.id.as_deref());
    set_str(GEN_AI_RESPONSE_MODEL, p.model.as_deref());
    set_array(
        GEN_AI_RESPONSE_FINISH_REASONS,
        &mut p.finish_reasons.iter().map(|f| f.as_str()),
    );
    set_str(OPENAI_RESPONSE_SERVICE_TIER, p.service_tier.as_deref());
    set_str(OPENAI_RESPONSE_SYSTEM_FINGERPRINT, p.system_fingerprint.as_deref());
    if let Some(u) = &r.usage {
        set_u64(GEN_AI_USAGE_INPUT_TOKENS, Some(u.input_tokens));
        set_u64(GEN_AI_USAGE_OUTPUT_TOKENS, Some(u.output_tokens));
        set_u64(GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, u.cached_input_tokens);
        set_u64(GEN_AI_USAGE_REASONING_OUTPUT_TOKENS, u.reasoning_tokens);
    }
    set_u64(HTTP_RESPONSE_STATUS_CODE, r.status.map(u64::from));

    let m = &r.meta;
    set_str(OPENAI_REQUEST_ID, m.request_id());
    set_str(OPENAI_ORGANIZATION, m.organization());
    set_str(OPENAI_API_VERSION, m.api_version());
    set_f64(OPENAI_PROCESSING_MS, m.processing.map(|d| d.as_secs_f64() * 1000.0));
    set_u64(RATELIMIT_LIMIT_REQUESTS, m.requests.limit);
    set_u64(RATELIMIT_REMAINING_REQUESTS, m.requests.remaining);
    set_f64(RATELIMIT_RESET_REQUESTS, m.requests.reset.map(|d| d.as_secs_f64()));
    set_u64(RATELIMIT_LIMIT_TOKENS, m.tokens.limit);
    set_u64(RATELIMIT_REMAINING_TOKENS, m.tokens.remaining);
    set_f64(RATELIMIT_RESET_TOKENS, m.tokens.reset.map(|d| d.as_secs_f64()));

    if q.stream {
        set_f64(
            LLM_METER_TIME_TO_FIRST_CHUNK,
            r.timings.time_to_first_chunk.map(|d| d.as_secs_f64()),
        );
        set_u64(LLM_METER_CHUNK_COUNT, Some(r.timings.chunks.into()));
    }

    let a = &r.annotations;
    set_str(USE_CASE_ID, a.use_case_id());
    set_str(USE_CASE_VERSION, a.use_case_version());
    set_str(USE_CASE_STEP, a.use_case_step());
    set_str(USER_ID, a.user_id());
    set_str(ACCOUNT_NAME, a.account_name());
    set_array(LIMIT_IDS, &mut a.limit_ids().iter().map(String::as_str));
    set_array(REQUEST_TAGS, &mut a.request_tags().iter().map(String::as_str));
    for (prefix, props) in [
        (USE_CASE_PROPERTIES_PREFIX, a.use_case_properties()),
        (REQUEST_PROPERTIES_PREFIX, a.request_properties()),
    ] {
        for (k, v) in props {
            span.set_attribute(format!("{prefix}{k}"), v.clone());
        }
    }

    if let Some(e) = r.error {
        span.record(ERROR_TYPE, e.as_str());
        span.record("otel.status_code", "error");
    }
}
