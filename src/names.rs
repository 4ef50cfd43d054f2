//! Every attribute, metric, label and header name llm-meter emits or reads, in one place.
//!
//! The `gen_ai.*` names follow the OpenTelemetry GenAI semantic conventions v1.41.1. They are
//! defined here as our own constants (the `opentelemetry-semantic-conventions` crate only has
//! them behind `semconv_experimental`, all deprecated) so that a rename upstream never silently
//! renames a metric a dashboard depends on. Tests, dashboards and docs refer to these constants.

// ---- GenAI span attributes -------------------------------------------------------------------

/// `gen_ai.operation.name`: always `chat` for chat completions.
pub const GEN_AI_OPERATION_NAME: &str = "gen_ai.operation.name";
/// `gen_ai.provider.name`: `openai` for OpenAI-compatible providers.
pub const GEN_AI_PROVIDER_NAME: &str = "gen_ai.provider.name";
/// Model named in the request.
pub const GEN_AI_REQUEST_MODEL: &str = "gen_ai.request.model";
/// `max_completion_tokens` (or legacy `max_tokens`) sent.
pub const GEN_AI_REQUEST_MAX_TOKENS: &str = "gen_ai.request.max_tokens";
/// `temperature` sent.
pub const GEN_AI_REQUEST_TEMPERATURE: &str = "gen_ai.request.temperature";
/// `top_p` sent.
pub const GEN_AI_REQUEST_TOP_P: &str = "gen_ai.request.top_p";
/// `frequency_penalty` sent.
pub const GEN_AI_REQUEST_FREQUENCY_PENALTY: &str = "gen_ai.request.frequency_penalty";
/// `presence_penalty` sent.
pub const GEN_AI_REQUEST_PRESENCE_PENALTY: &str = "gen_ai.request.presence_penalty";
/// `seed` sent.
pub const GEN_AI_REQUEST_SEED: &str = "gen_ai.request.seed";
/// `stop` sequences sent (array).
pub const GEN_AI_REQUEST_STOP_SEQUENCES: &str = "gen_ai.request.stop_sequences";
/// `n` sent, when not 1.
pub const GEN_AI_REQUEST_CHOICE_COUNT: &str = "gen_ai.request.choice.count";
/// Whether the request asked for a stream.
pub const GEN_AI_REQUEST_STREAM: &str = "gen_ai.request.stream";
/// Response `id`.
pub const GEN_AI_RESPONSE_ID: &str = "gen_ai.response.id";
/// Response `model`.
pub const GEN_AI_RESPONSE_MODEL: &str = "gen_ai.response.model";
/// Every choice's `finish_reason` (array).
pub const GEN_AI_RESPONSE_FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
/// `usage.prompt_tokens`.
pub const GEN_AI_USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
/// `usage.completion_tokens`.
pub const GEN_AI_USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
/// `usage.prompt_tokens_details.cached_tokens`.
pub const GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: &str = "gen_ai.usage.cache_read.input_tokens";
/// `usage.completion_tokens_details.reasoning_tokens`.
pub const GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: &str = "gen_ai.usage.reasoning.output_tokens";
/// `usage.cache_creation_input_tokens` (Anthropic): input tokens written to the prompt cache.
pub const GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: &str = "gen_ai.usage.cache_creation.input_tokens";
/// Provider host.
pub const SERVER_ADDRESS: &str = "server.address";
/// Provider port.
pub const SERVER_PORT: &str = "server.port";
/// Low-cardinality failure class (`429`, `timeout`, `connect`, `decode`, `cancelled`, ...).
pub const ERROR_TYPE: &str = "error.type";
/// `service_tier` the provider used.
pub const OPENAI_RESPONSE_SERVICE_TIER: &str = "openai.response.service_tier";
/// `system_fingerprint` of the response.
pub const OPENAI_RESPONSE_SYSTEM_FINGERPRINT: &str = "openai.response.system_fingerprint";
/// `service_tier` the request asked for.
pub const OPENAI_REQUEST_SERVICE_TIER: &str = "openai.request.service_tier";

// ---- Provider meta (response headers) --------------------------------------------------------

/// `x-request-id` of the provider.
pub const OPENAI_REQUEST_ID: &str = "openai.request.id";
/// `openai-processing-ms`, in milliseconds.
pub const OPENAI_PROCESSING_MS: &str = "openai.processing_ms";
/// `openai-version`.
pub const OPENAI_API_VERSION: &str = "openai.api.version";
/// `openai-organization`.
pub const OPENAI_ORGANIZATION: &str = "openai.organization";
/// `x-ratelimit-limit-requests`.
pub const RATELIMIT_LIMIT_REQUESTS: &str = "openai.ratelimit.requests.limit";
/// `x-ratelimit-remaining-requests`.
pub const RATELIMIT_REMAINING_REQUESTS: &str = "openai.ratelimit.requests.remaining";
/// `x-ratelimit-reset-requests`, in seconds.
pub const RATELIMIT_RESET_REQUESTS: &str = "openai.ratelimit.requests.reset_s";
/// `x-ratelimit-limit-tokens`.
pub const RATELIMIT_LIMIT_TOKENS: &str = "openai.ratelimit.tokens.limit";
/// `x-ratelimit-remaining-tokens`.
pub const RATELIMIT_REMAINING_TOKENS: &str = "openai.ratelimit.tokens.remaining";
/// `x-ratelimit-reset-tokens`, in seconds.
pub const RATELIMIT_RESET_TOKENS: &str = "openai.ratelimit.tokens.reset_s";
/// HTTP status of the provider's response.
pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
/// HTTP method of a request the proxy served (its server span).
pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
/// Route of a request the proxy served (its server span).
pub const HTTP_ROUTE: &str = "http.route";

// ---- Streaming -------------------------------------------------------------------------------

/// Seconds from sending the request to the first chunk of a stream.
pub const LLM_METER_TIME_TO_FIRST_CHUNK: &str = "llm_meter.stream.time_to_first_chunk_s";
/// Number of SSE data events (chunks) in a stream, `[DONE]` excluded.
pub const LLM_METER_CHUNK_COUNT: &str = "llm_meter.stream.chunk_count";

// ---- Annotations -----------------------------------------------------------------------------

/// Use case name.
pub const USE_CASE_NAME: &str = "use_case.name";
/// Use case id.
pub const USE_CASE_ID: &str = "use_case.id";
/// Use case version.
pub const USE_CASE_VERSION: &str = "use_case.version";
/// Use case step.
pub const USE_CASE_STEP: &str = "use_case.step";
/// Prefix of use case properties: `use_case.properties.<key>`.
pub const USE_CASE_PROPERTIES_PREFIX: &str = "use_case.properties.";
/// End user id (spans only by default: unbounded).
pub const USER_ID: &str = "user.id";
/// Account name.
pub const ACCOUNT_NAME: &str = "account.name";
/// Limit (budget) ids the call counts against (array).
pub const LIMIT_IDS: &str = "limit.ids";
/// Request tags (array).
pub const REQUEST_TAGS: &str = "request.tags";
/// Prefix of request properties: `request.properties.<key>`.
pub const REQUEST_PROPERTIES_PREFIX: &str = "request.properties.";

// ---- Attribute values ------------------------------------------------------------------------

/// Value of `gen_ai.operation.name` for chat completions.
pub const OPERATION_CHAT: &str = "chat";
/// Value of `gen_ai.provider.name` for OpenAI and OpenAI-compatible providers.
pub const PROVIDER_OPENAI: &str = "openai";

// ---- Pay-i annotation headers ----------------------------------------------------------------

/// Use case name header.
pub const HEADER_USE_CASE_NAME: &str = "xProxy-UseCase-Name";
/// Use case id header.
pub const HEADER_USE_CASE_ID: &str = "xProxy-UseCase-ID";
/// Use case version header.
pub const HEADER_USE_CASE_VERSION: &str = "xProxy-UseCase-Version";
/// Use case step header.
pub const HEADER_USE_CASE_STEP: &str = "xProxy-UseCase-Step";
/// Use case properties header (compact JSON object).
pub const HEADER_USE_CASE_PROPERTIES: &str = "xProxy-UseCase-Properties";
/// User id header.
pub const HEADER_USER_ID: &str = "xProxy-User-ID";
/// Account name header.
pub const HEADER_ACCOUNT_NAME: &str = "xProxy-Account-Name";
/// Limit ids header (comma list).
pub const HEADER_LIMIT_IDS: &str = "xProxy-Limit-IDs";
/// Request tags header (comma list).
pub const HEADER_REQUEST_TAGS: &str = "xProxy-Request-Tags";
/// Request properties header (compact JSON object).
pub const HEADER_REQUEST_PROPERTIES: &str = "xProxy-Request-Properties";
/// Proxy key header: a secret, never recorded.
pub const HEADER_API_KEY: &str = "xProxy-Api-Key";
/// Header choosing another upstream for one proxied request (only from the allow-list).
pub const HEADER_PROVIDER_BASE_URI: &str = "xProxy-Provider-BaseUri";
/// Every Pay-i header starts with this, lowercased as HTTP/2 and `http::HeaderName` keep it.
pub const HEADER_XPROXY_PREFIX: &str = "xproxy-";

// ---- OpenAI response headers -----------------------------------------------------------------

/// Every OpenAI debug header starts with this.
pub const HEADER_OPENAI_PREFIX: &str = "openai-";
/// Every rate-limit header starts with this (`x-ratelimit-…`); `x-request-id` shares `x-r`.
pub const HEADER_RATELIMIT_PREFIX: &str = "x-ratelimit-";
/// `openai-organization` header.
pub const HEADER_OPENAI_ORGANIZATION: &str = "openai-organization";
/// `openai-processing-ms` header.
pub const HEADER_OPENAI_PROCESSING_MS: &str = "openai-processing-ms";
/// `openai-version` header.
pub const HEADER_OPENAI_VERSION: &str = "openai-version";
/// `x-request-id` header.
pub const HEADER_REQUEST_ID: &str = "x-request-id";
/// `x-ratelimit-limit-requests` header.
pub const HEADER_RATELIMIT_LIMIT_REQUESTS: &str = "x-ratelimit-limit-requests";
/// `x-ratelimit-limit-tokens` header.
pub const HEADER_RATELIMIT_LIMIT_TOKENS: &str = "x-ratelimit-limit-tokens";
/// `x-ratelimit-remaining-requests` header.
pub const HEADER_RATELIMIT_REMAINING_REQUESTS: &str = "x-ratelimit-remaining-requests";
/// `x-ratelimit-remaining-tokens` header.
pub const HEADER_RATELIMIT_REMAINING_TOKENS: &str = "x-ratelimit-remaining-tokens";
/// `x-ratelimit-reset-requests` header.
pub const HEADER_RATELIMIT_RESET_REQUESTS: &str = "x-ratelimit-reset-requests";
/// `x-ratelimit-reset-tokens` header.
pub const HEADER_RATELIMIT_RESET_TOKENS: &str = "x-ratelimit-reset-tokens";

// ---- Metrics ---------------------------------------------------------------------------------
//
// Prometheus names (ours on /metrics and an OTel Collector's Prometheus exporter alike): dots
// become `_`, unit `s` adds `_seconds`, `{...}` units add nothing, counters add `_total`.

/// Histogram, `s`: whole call, stream included (GenAI semconv).
pub const METRIC_OPERATION_DURATION: &str = "gen_ai.client.operation.duration";
/// Histogram, `{token}`, by `gen_ai.token.type` (GenAI semconv).
pub const METRIC_TOKEN_USAGE: &str = "gen_ai.client.token.usage";
/// Histogram, `s`: streams only (GenAI semconv).
pub const METRIC_TIME_TO_FIRST_CHUNK: &str = "gen_ai.client.operation.time_to_first_chunk";
/// Histogram, `s`: streams only, mean gap between output chunks after the first (GenAI semconv).
pub const METRIC_TIME_PER_OUTPUT_CHUNK: &str = "gen_ai.client.operation.time_per_output_chunk";
/// Counter, `{token}`: input tokens (cached ones included), for cheap `rate()`.
pub const METRIC_INPUT_TOKENS: &str = "gen_ai.client.inference.usage.input_tokens";
/// Counter, `{token}`: output tokens (reasoning ones included).
pub const METRIC_OUTPUT_TOKENS: &str = "gen_ai.client.inference.usage.output_tokens";
/// Counter, `{token}`: cached input tokens.
pub const METRIC_CACHED_INPUT_TOKENS: &str = "gen_ai.client.inference.usage.cache_read.input_tokens";
/// Counter, `{token}`: reasoning output tokens.
pub const METRIC_REASONING_TOKENS: &str = "gen_ai.client.inference.usage.reasoning.output_tokens";
/// Counter, `{token}`: input tokens written to the provider's cache (Anthropic's
/// `cache_creation_input_tokens`; part of the input tokens).
pub const METRIC_CACHE_CREATION_INPUT_TOKENS: &str = "gen_ai.client.inference.usage.cache_creation.input_tokens";
/// Histogram, `s`: the provider's own processing time (`openai-processing-ms`).
pub const METRIC_PROVIDER_PROCESSING: &str = "llm_meter.provider.processing.duration";
/// Gauge, `{request}` or `{token}` by kind: rate-limit budget left in the window, as last reported.
pub const METRIC_RATELIMIT_REMAINING: &str = "llm_meter.ratelimit.remaining";
/// Gauge: rate-limit budget per window, as last reported.
pub const METRIC_RATELIMIT_LIMIT: &str = "llm_meter.ratelimit.limit";
/// Gauge, `s`: time until the window resets, as last reported.
pub const METRIC_RATELIMIT_RESET: &str = "llm_meter.ratelimit.reset";
/// Gauge, `s`: Unix time at which the last reported rate-limit window resets (observation time
/// plus the reported reset). A remaining value whose reset time has passed is stale.
pub const METRIC_RATELIMIT_RESET_TIME: &str = "llm_meter.ratelimit.reset.timestamp";
/// Counter: successful calls for which the provider reported no usage, default labels.
pub const METRIC_USAGE_MISSING: &str = "llm_meter.calls.usage_missing";
/// Up-down counter: calls started and not yet finished (answered, failed, refused or cancelled).
pub const METRIC_CALLS_IN_FLIGHT: &str = "llm_meter.calls.in_flight";
/// Counter: a label value folded into `other` because its label reached its cap.
pub const METRIC_LABEL_OVERFLOW: &str = "llm_meter.label.overflow";
/// Counter: spans handed to the exporter pipeline, by `outcome` (exported, failed, dropped).
pub const METRIC_EXPORT_SPANS: &str = "llm_meter.export.spans";

/// Metric label: which token count (`input` / `output`).
pub const GEN_AI_TOKEN_TYPE: &str = "gen_ai.token.type";
/// Metric label: which rate limit (`requests` / `tokens`).
pub const RATELIMIT_KIND: &str = "llm_meter.ratelimit.kind";
/// [`RATELIMIT_KIND`]: requests per window.
pub const RATELIMIT_KIND_REQUESTS: &str = "requests";
/// [`RATELIMIT_KIND`]: tokens per window (Anthropic: the most restrictive token limit).
pub const RATELIMIT_KIND_TOKENS: &str = "tokens";
/// [`RATELIMIT_KIND`]: input tokens per window (Anthropic).
pub const RATELIMIT_KIND_INPUT_TOKENS: &str = "input_tokens";
/// [`RATELIMIT_KIND`]: output tokens per window (Anthropic).
pub const RATELIMIT_KIND_OUTPUT_TOKENS: &str = "output_tokens";
/// Metric label: the label that overflowed.
pub const LABEL_NAME: &str = "llm_meter.label";
/// Metric label: export outcome.
pub const EXPORT_OUTCOME: &str = "outcome";
/// Value of a capped label past its cap.
pub const OTHER: &str = "other";

// ---- Pay-i outcome ---------------------------------------------------------------------------

/// JSON key of Pay-i's per-call outcome, beside the provider's response (and on a stream chunk).
pub const XPROXY_RESULT: &str = "xproxy_result";
/// JSON key of Pay-i's error object on a refused call.
pub const XPROXY_ERROR: &str = "xproxy_error";

// ---- Cost and limits -------------------------------------------------------------------------

/// Span: input cost in USD.
pub const COST_INPUT_USD: &str = "llm_meter.cost.input_usd";
/// Span: output cost in USD.
pub const COST_OUTPUT_USD: &str = "llm_meter.cost.output_usd";
/// Span: total cost in USD.
pub const COST_TOTAL_USD: &str = "llm_meter.cost.total_usd";
/// Span: `true` when usage is known but the model has no price.
pub const COST_UNPRICED: &str = "llm_meter.cost.unpriced";
/// Span: limit ids that refused the call (array).
pub const LIMITS_BLOCKED: &str = "llm_meter.limits.blocked";
/// Counter, USD: cost of calls, default labels.
pub const METRIC_COST: &str = "llm_meter.cost.usd";
/// Counter: calls with usage on a model with no price, default labels.
pub const METRIC_UNPRICED: &str = "llm_meter.calls.unpriced";
/// Gauge, USD: spend in the current window, by `limit.id`.
pub const METRIC_LIMIT_SPEND: &str = "llm_meter.limit.spend.usd";
/// Gauge, USD: configured max, by `limit.id`.
pub const METRIC_LIMIT_MAX: &str = "llm_meter.limit.max.usd";
/// Gauge: state code (0 ok, 1 exceeded, 2 overrun, 3 blocked), by `limit.id`.
pub const METRIC_LIMIT_STATE: &str = "llm_meter.limit.state";
/// Gauge, USD: `threshold × max`, by `limit.id` (limits with a threshold).
pub const METRIC_LIMIT_THRESHOLD: &str = "llm_meter.limit.threshold.usd";
/// Gauge, `s`: Unix time at which the limit's current window resets (limits with a reset).
pub const METRIC_LIMIT_RESET_TIME: &str = "llm_meter.limit.reset.timestamp";
/// Counter: calls refused by a block limit, by `limit.id`.
pub const METRIC_LIMIT_BLOCKED: &str = "llm_meter.limit.blocked";
/// Metric label: a limit id.
pub const LIMIT_ID: &str = "limit.id";
/// Metric label: a limit's kind (`allow` / `block`).
pub const LIMIT_KIND: &str = "limit.kind";

// ---- The ledger's own health -----------------------------------------------------------------

/// Histogram, `s`: one ledger operation (a Redis round trip), by `llm_meter.ledger.operation`
/// and `llm_meter.ledger.kind`.
pub const METRIC_LEDGER_DURATION: &str = "llm_meter.ledger.operation.duration";
/// Counter: ledger operations that failed, by operation, kind and `error.type` (`timeout`,
/// `unavailable`).
pub const METRIC_LEDGER_ERRORS: &str = "llm_meter.ledger.errors";
/// Gauge: settlements waiting to be applied on the ledger (queued while it does not answer).
pub const METRIC_LEDGER_QUEUED: &str = "llm_meter.ledger.queued";
/// Counter: settlements dropped because the ledger's queue was full (spend the ledger lost).
pub const METRIC_LEDGER_DROPPED: &str = "llm_meter.ledger.dropped";
/// Counter: settlements applied after at least one failed attempt (replayed).
pub const METRIC_LEDGER_REPLAYED: &str = "llm_meter.ledger.replayed";
/// Gauge: 1 when the ledger's last operation succeeded, 0 when it failed.
pub const METRIC_LEDGER_AVAILABLE: &str = "llm_meter.ledger.available";
/// Gauge: always 1, by `llm_meter.ledger.kind`: which ledger holds the budgets.
pub const METRIC_LEDGER_INFO: &str = "llm_meter.ledger.info";
/// Metric label: which ledger (`memory`, `redis`).
pub const LEDGER_KIND: &str = "llm_meter.ledger.kind";
/// Metric label: which ledger operation (`admit`, `settle`, `refresh`).
pub const LEDGER_OPERATION: &str = "llm_meter.ledger.operation";
/// Value of `llm_meter.ledger.kind` for the in-memory ledger.
pub const LEDGER_MEMORY: &str = "memory";
/// Value of `llm_meter.ledger.kind` for the Redis ledger.
pub const LEDGER_REDIS: &str = "redis";

// ---- Other providers: Anthropic Messages, OpenAI Responses, Azure OpenAI ---------------------

/// Value of `gen_ai.provider.name` for Anthropic.
pub const PROVIDER_ANTHROPIC: &str = "anthropic";
/// Value of `gen_ai.provider.name` for Azure OpenAI.
pub const PROVIDER_AZURE_OPENAI: &str = "azure.ai.openai";

/// `retry-after` response header: seconds (or an HTTP date) to wait before retrying.
pub const HEADER_RETRY_AFTER: &str = "retry-after";
/// Anthropic's request id response header.
pub const HEADER_ANTHROPIC_REQUEST_ID: &str = "request-id";
/// `anthropic-organization-id` response header.
pub const HEADER_ANTHROPIC_ORGANIZATION_ID: &str = "anthropic-organization-id";
/// `anthropic-version` request header (the Messages API requires it).
pub const HEADER_ANTHROPIC_VERSION: &str = "anthropic-version";
/// `x-api-key` request header: Anthropic's API key, a secret never recorded.
pub const HEADER_ANTHROPIC_API_KEY: &str = "x-api-key";
/// `api-key` request header: Azure OpenAI's API key, a secret never recorded.
pub const HEADER_AZURE_API_KEY: &str = "api-key";
/// Every Anthropic rate-limit header starts with this.
pub const HEADER_ANTHROPIC_RATELIMIT_PREFIX: &str = "anthropic-ratelimit-";
/// `anthropic-ratelimit-requests-limit` header.
pub const HEADER_ANTHROPIC_RATELIMIT_REQUESTS_LIMIT: &str = "anthropic-ratelimit-requests-limit";
/// `anthropic-ratelimit-requests-remaining` header.
pub const HEADER_ANTHROPIC_RATELIMIT_REQUESTS_REMAINING: &str = "anthropic-ratelimit-requests-remaining";
/// `anthropic-ratelimit-requests-reset` header (RFC 3339 time).
pub const HEADER_ANTHROPIC_RATELIMIT_REQUESTS_RESET: &str = "anthropic-ratelimit-requests-reset";
/// `anthropic-ratelimit-tokens-limit` header.
pub const HEADER_ANTHROPIC_RATELIMIT_TOKENS_LIMIT: &str = "anthropic-ratelimit-tokens-limit";
/// `anthropic-ratelimit-tokens-remaining` header.
pub const HEADER_ANTHROPIC_RATELIMIT_TOKENS_REMAINING: &str = "anthropic-ratelimit-tokens-remaining";
/// `anthropic-ratelimit-tokens-reset` header (RFC 3339 time).
pub const HEADER_ANTHROPIC_RATELIMIT_TOKENS_RESET: &str = "anthropic-ratelimit-tokens-reset";
/// `anthropic-ratelimit-input-tokens-limit` header.
pub const HEADER_ANTHROPIC_RATELIMIT_INPUT_TOKENS_LIMIT: &str = "anthropic-ratelimit-input-tokens-limit";
/// `anthropic-ratelimit-input-tokens-remaining` header.
pub const HEADER_ANTHROPIC_RATELIMIT_INPUT_TOKENS_REMAINING: &str = "anthropic-ratelimit-input-tokens-remaining";
/// `anthropic-ratelimit-input-tokens-reset` header (RFC 3339 time).
pub const HEADER_ANTHROPIC_RATELIMIT_INPUT_TOKENS_RESET: &str = "anthropic-ratelimit-input-tokens-reset";
/// `anthropic-ratelimit-output-tokens-limit` header.
pub const HEADER_ANTHROPIC_RATELIMIT_OUTPUT_TOKENS_LIMIT: &str = "anthropic-ratelimit-output-tokens-limit";
/// `anthropic-ratelimit-output-tokens-remaining` header.
pub const HEADER_ANTHROPIC_RATELIMIT_OUTPUT_TOKENS_REMAINING: &str = "anthropic-ratelimit-output-tokens-remaining";
/// `anthropic-ratelimit-output-tokens-reset` header (RFC 3339 time).
pub const HEADER_ANTHROPIC_RATELIMIT_OUTPUT_TOKENS_RESET: &str = "anthropic-ratelimit-output-tokens-reset";

/// Anthropic stream event: the message, with its id, model and input usage.
pub const EVENT_MESSAGE_START: &str = "message_start";
/// Anthropic stream event: a content block begins.
pub const EVENT_CONTENT_BLOCK_START: &str = "content_block_start";
/// Anthropic stream event: content (never parsed).
pub const EVENT_CONTENT_BLOCK_DELTA: &str = "content_block_delta";
/// Anthropic stream event: a content block ends.
pub const EVENT_CONTENT_BLOCK_STOP: &str = "content_block_stop";
/// Anthropic stream event: the stop reason and the cumulative usage.
pub const EVENT_MESSAGE_DELTA: &str = "message_delta";
/// Anthropic stream event: the end of the stream.
pub const EVENT_MESSAGE_STOP: &str = "message_stop";
/// Anthropic stream event: keep-alive.
pub const EVENT_PING: &str = "ping";
/// Stream event of an error (Anthropic and the Responses API alike).
pub const EVENT_ERROR: &str = "error";
/// Responses stream event: the response was created.
pub const EVENT_RESPONSE_CREATED: &str = "response.created";
/// Responses stream event: the response is queued (background mode).
pub const EVENT_RESPONSE_QUEUED: &str = "response.queued";
/// Responses stream event: the response is being generated.
pub const EVENT_RESPONSE_IN_PROGRESS: &str = "response.in_progress";
/// Responses stream event: output text (never parsed).
pub const EVENT_RESPONSE_OUTPUT_TEXT_DELTA: &str = "response.output_text.delta";
/// Responses stream event (terminal): the response completed, with its usage.
pub const EVENT_RESPONSE_COMPLETED: &str = "response.completed";
/// Responses stream event (terminal): the response stopped early (`incomplete_details`).
pub const EVENT_RESPONSE_INCOMPLETE: &str = "response.incomplete";
/// Responses stream event (terminal): the response failed (`error`).
pub const EVENT_RESPONSE_FAILED: &str = "response.failed";
/// Every Responses stream event carrying output (text, arguments, reasoning) ends with this.
pub const EVENT_DELTA_SUFFIX: &str = ".delta";
