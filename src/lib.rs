#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// The stages of the pipeline, lowest first; each imports only the ones above it in this list
// (scripts/check-layers.py keeps it so). The modules are private: what a user needs is
// re-exported below, so a file can move inside the crate without breaking anyone.
mod doors;
pub mod names;
mod parse;
mod pipeline;
mod record;
mod sinks;

pub use parse::annotations::{AnnotationError, AnnotationField, Annotations, AnnotationsBuilder};
pub use parse::anthropic::AnthropicMessage;
pub use parse::endpoint::{bearer, parse_api_base, Api};
pub use parse::provider::{
    parse_duration, parse_retry_after, parse_rfc3339, BodyError, ChatCompletion, FinishReason, ProviderMeta, RateLimit,
    ResponseFacts, Usage,
};
pub use parse::responses::OpenAiResponse;
pub use parse::stream::{EventCutter, EventOutcome, SseEvent, SseFrame, SseParser, StreamFault, StreamObserver};

pub use record::limits::{
    parse_period, Admission, AdmissionMode, Hold, Ledger, LedgerError, LedgerFuture, LedgerHealth, LedgerObserver,
    LedgerOp, LimitConfig, LimitError, LimitKind, LimitState, LimitStatus, MemoryLedger, OnLedgerError, Refusal,
    SharedLedger,
};
pub use record::pricing::{Cost, Price, PriceTable, PricingError, Rates, TierPrice};
#[cfg(feature = "redis")]
pub use record::redis_ledger::{redact_url, RedisLedger, RedisLedgerBuilder};
pub use record::xproxy::{add_json_field, add_json_field_with, LimitOutcome, XProxyCost, XProxyResult};
pub use record::{
    BuildError, CallError, CallHook, CallId, CallRecord, ErrorType, RequestFacts, StreamOptions, Timings,
};

pub use sinks::export::{
    init, ExportStats, InitError, LogFormat, Protocol, Telemetry, TelemetryBuilder, TelemetryGuard, SCOPE,
};
pub use sinks::metrics::{LabelPolicy, Metrics, DURATION_BUCKETS, LEDGER_BUCKETS, MAX_BOUND_SERIES, TOKEN_BUCKETS};
/// The Prometheus `/metrics` endpoint: the exposition, an axum router, a listener.
#[cfg(feature = "prometheus")]
pub use sinks::prometheus;
pub use sinks::span::{extract_trace_context, ServerSpan};

pub use pipeline::{Call, ChatStream, Meter, MeterBuilder, Prepared, Server, StreamUsage};

pub use doors::client::{
    ChatResponse, Client, ClientBuilder, ANTHROPIC_VERSION, DEFAULT_BASE_URL, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_TIMEOUT, DEFAULT_TIMEOUT,
};
#[cfg(feature = "reqwest-middleware")]
pub use doors::middleware::MeterMiddleware;
#[cfg(feature = "async-openai")]
pub use doors::openai_layer;

/// The OpenTelemetry API this crate is built on (one pinned version family).
pub use opentelemetry;
/// The OpenTelemetry SDK this crate is built on.
pub use opentelemetry_sdk;
/// The tracing-opentelemetry bridge this crate is built on.
pub use tracing_opentelemetry;
