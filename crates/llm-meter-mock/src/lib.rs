//! A mock OpenAI chat-completions provider, faithful to the wire format: bodies as in the API
//! reference, the debug and rate-limit headers (limits count down per request and token and
//! reset on schedule), SSE streams with `data: [DONE]` and the usage chunk when
//! `stream_options.include_usage` is set, and OpenAI-shaped errors (400, 401, 404, 413, 429,
//! 500, 503, and 529).
//!
//! It also speaks the other APIs llm-meter observes, each in its documented wire format:
//! - Anthropic Messages, `POST /v1/messages` (`x-api-key` and `anthropic-version` headers,
//!   `request-id` and `anthropic-ratelimit-*` headers with RFC 3339 resets, the
//!   `message_start` … `message_stop` event stream with its `ping`, Anthropic-shaped errors,
//!   529 `overloaded_error` when the error rate strikes);
//! - OpenAI Responses, `POST /v1/responses` (the response object, its typed event stream from
//!   `response.created` to `response.completed` or `response.incomplete`);
//! - Azure OpenAI chat completions, `POST /openai/deployments/{deployment}/chat/completions?api-version=…`
//!   and `POST /openai/v1/chat/completions` (`api-key` header, content-filter results, and the
//!   empty first stream chunk that carries only `prompt_filter_results`).
//!
//! It is the embedded upstream of the demo, the tests and the benchmarks. Behaviour per request
//! can be forced with `x-mock-*` request headers (see [`MockServer`]). For tests it keeps every
//! request it receives, on any route ([`MockServer::received`]), counts the requests it
//! answered and those whose caller went away first ([`MockServer::requests`]), and counts how its
//! streams ended ([`MockServer::streams`]).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use llm_meter::names;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};

mod anthropic;
mod responses;

// ---- Wire shapes, in the key order OpenAI sends -------------------------------------------

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

#[derive(Serialize, Clone, Copy)]
struct UsageBody {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptDetails,
    completion_tokens_details: CompletionDetails,
}

#[derive(Serialize, Clone, Copy)]
struct PromptDetails {
    cached_tokens: u64,
    audio_tokens: u64,
}

#[derive(Serialize, Clone, Copy)]
struct CompletionDetails {
    reasoning_tokens: u64,
    audio_tokens: u64,
    accepted_prediction_tokens: u64,
    rejected_prediction_tokens: u64,
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    /// Azure OpenAI: the prompt's content-filter results.
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_filter_results: Option<Value>,
    choices: Vec<CompletionChoice>,
    usage: UsageBody,
    /// OpenAI only (Azure OpenAI does not report it).
    #[serde(skip_serializing_if = "Option::is_none")]
    service_tier: Option<&'static str>,
    system_fingerprint: &'a str,
}

#[derive(Serialize)]
struct CompletionChoice {
    /// Azure OpenAI: the completion's content-filter results.
    #[serde(skip_serializing_if = "Option::is_none")]
    content_filter_results: Option<Value>,
    index: u64,
    message: Message,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct Message {
    role: &'static str,
    content: String,
    refusal: Option<()>,
    annotations: [(); 0],
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_tier: Option<&'static str>,
    system_fingerprint: &'a str,
    choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<UsageBody>>,
}

#[derive(Serialize)]
struct ChunkChoice {
    /// Azure OpenAI: the content-filter results of this delta.
    #[serde(skip_serializing_if = "Option::is_none")]
    content_filter_results: Option<Value>,
    index: u64,
    delta: Delta,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<Option<()>>,
}

pub(crate) fn to_bytes(body: &impl Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(body).unwrap_or_default())
}

/// Behaviour of the mock.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Delay before the response head (and before the first chunk of a stream).
    pub latency: Duration,
    /// Delay between stream chunks.
    pub chunk_delay: Duration,
    /// Content chunks per stream (role and finish chunks come on top).
    pub chunks: u32,
    /// Output tokens per choice when `max_completion_tokens` does not cut it short.
    pub completion_tokens: u64,
    /// Reasoning tokens reported (for o-series style usage).
    pub reasoning_tokens: u64,
    /// Fraction of input tokens reported as cached (read from the prompt cache).
    pub cached_fraction: f64,
    /// Anthropic: fraction of input tokens reported as written to the prompt cache
    /// (`cache_creation_input_tokens`; 1-hour writes when the request's `cache_control` asks
    /// for `"ttl": "1h"`, else 5-minute ones).
    pub cache_write_fraction: f64,
    /// Fraction of calls answered with an error, deterministic by seed: OpenAI and Azure half
    /// 429, half 500; Anthropic 529 `overloaded_error`.
    pub error_rate: f64,
    /// Requests allowed per window (`x-ratelimit-limit-requests`).
    pub limit_requests: u64,
    /// Tokens allowed per window (`x-ratelimit-limit-tokens`).
    pub limit_tokens: u64,
    /// Rate-limit window.
    pub window: Duration,
    /// Require this API key, answering 401 otherwise: `Authorization: Bearer …` (OpenAI
    /// routes), `x-api-key` (Anthropic), `api-key` (Azure OpenAI).
    pub api_key: Option<String>,
    /// Seed of the id and fault generator.
    pub seed: u64,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            latency: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            chunks: 8,
            completion_tokens: 44,
            reasoning_tokens: 0,
            cached_fraction: 0.0,
            cache_write_fraction: 0.0,
            error_rate: 0.0,
            limit_requests: 500,
            limit_tokens: 30_000,
            window: Duration::from_secs(60),
            api_key: None,
            seed: 0x5eed,
        }
    }
}

/// A request as the mock received it, on any route, answered or not (the last
/// [`MockServer::KEPT_REQUESTS`] are kept).
#[derive(Clone, Debug)]
pub struct ReceivedRequest {
    /// Method.
    pub method: Method,
    /// Path.
    pub path: String,
    /// Query string (without the `?`), when there was one.
    pub query: Option<String>,
    /// Headers as received.
    pub headers: HeaderMap,
    /// Body as received.
    pub body: Bytes,
}

/// Whether the mock answered the requests it received (see [`MockServer::requests`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Requests the mock answered: their response head was ready to send (how a streamed body
    /// then ended is counted by [`MockServer::streams`]).
    pub answered: u64,
    /// Requests dropped before the mock answered them: whoever sent the request went away
    /// (closed the connection) while the mock was still waiting (`latency`, a forced `stall`).
    /// Requests forced to `reset-head` count in neither.
    pub abandoned: u64,
}

/// How the mock's answers sent piece by piece ended (see [`MockServer::streams`]): streams,
/// and the non-streaming bodies cut by a forced `reset` or `stall-body`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamCounts {
    /// Streams the mock ended itself: every event sent, or cut short on purpose by a forced
    /// `truncate` or `reset`.
    pub finished: u64,
    /// Streams dropped before the mock ended them: whoever read the stream went away (closed the
    /// connection) mid-stream.
    pub abandoned: u64,
}

struct Window {
    started: Instant,
    requests: u64,
    tokens: u64,
}

/// Anthropic's limits, counted apart from OpenAI's (another provider, another account).
pub(crate) struct AnthropicWindow {
    pub(crate) started: Instant,
    pub(crate) requests: u64,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
}

pub(crate) struct MockState {
    pub(crate) config: MockConfig,
    pub(crate) counter: AtomicU64,
    window: Mutex<Window>,
    pub(crate) anthropic_window: Mutex<AnthropicWindow>,
    received: Mutex<VecDeque<ReceivedRequest>>,
    pub(crate) gate: Semaphore,
    streams_finished: AtomicU64,
    streams_abandoned: AtomicU64,
    requests_answered: AtomicU64,
    requests_abandoned: AtomicU64,
}

/// A running mock provider on 127.0.0.1. Stops when dropped.
///
/// Request headers that force behaviour, for tests:
/// - `x-mock-error`: `400`, `401`, `404`, `413`, `429`, `500`, `503`, `529` (the error in the
///   route's own shape: OpenAI's `{"error": {"message", "type", "param", "code"}}`, Anthropic's
///   on `/v1/messages`, which also has `403`; OpenAI documents no 529, Anthropic's "overloaded",
///   so its OpenAI routes answer it with the 503 body), `truncate` (stream ends without its end
///   event), `reset` (connection dropped mid-body: half way through a stream, or after half of a
///   chat completion's body), `stall` (no answer for an hour), `stall-body` (the head and half the
///   body or stream, then nothing for an hour; chat completions, and every stream), `garbage`
///   (200 with a body that is not JSON), `stream-error` (a stream that fails half way:
///   Anthropic's `error` event with `overloaded_error`, the Responses API's `response.failed`);
///   on the chat completions routes also `malformed-sse` (a stream with one chunk cut short
///   mid-JSON, then the rest to `[DONE]`) and `bad-utf8` (a content delta, or the completion's
///   content, with a byte that is not UTF-8); on every route `reset-head` (the connection closed
///   without an answer) and `huge-head` (the answer with a 1 MiB head, over the 400 KiB or so an
///   HTTP client such as hyper reads at most);
/// - `x-mock-completion-tokens`, `x-mock-chunks`: override the config for this request;
/// - `x-mock-gate: 1`: each stream chunk after the first waits for [`MockServer::release`].
pub struct MockServer {
    addr: SocketAddr,
    state: Arc<MockState>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl MockServer {
    /// How many received requests are kept for inspection.
    pub const KEPT_REQUESTS: usize = 64;

    /// Starts on an ephemeral port of 127.0.0.1.
    pub async fn start(config: MockConfig) -> std::io::Result<Self> {
        let loopback = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
        Self::start_on(loopback, config).await
    }

    /// Starts on `addr`.
    pub async fn start_on(addr: SocketAddr, config: MockConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(MockState {
            counter: AtomicU64::new(config.seed),
            window: Mutex::new(Window {
                started: Instant::now(),
                requests: 0,
                tokens: 0,
            }),
            anthropic_window: Mutex::new(AnthropicWindow {
                started: Instant::now(),
                requests: 0,
                input_tokens: 0,
                output_tokens: 0,
            }),
            received: Mutex::new(VecDeque::new()),
            gate: Semaphore::new(0),
            streams_finished: AtomicU64::new(0),
            streams_abandoned: AtomicU64::new(0),
            requests_answered: AtomicU64::new(0),
            requests_abandoned: AtomicU64::new(0),
            config,
        });
        let (tx, rx) = oneshot::channel::<()>();
        let app = router(state.clone());
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = rx.await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(target: "llm_meter::mock", "mock server stopped: {e}");
            }
        });
        Ok(MockServer {
            addr,
            state,
            shutdown: Some(tx),
        })
    }

    /// Address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// API base for clients: `http://127.0.0.1:PORT/v1` (OpenAI's and Anthropic's routes both
    /// live under it: `/v1/chat/completions`, `/v1/responses`, `/v1/messages`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Azure OpenAI endpoint for clients: `http://127.0.0.1:PORT` (the resource's root, under
    /// which `/openai/deployments/{deployment}/…` and `/openai/v1/…` live).
    pub fn azure_endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The most recent requests received on any route (the chat routes, `/v1/models`, and
    /// paths the mock does not serve), oldest first.
    pub fn received(&self) -> Vec<ReceivedRequest> {
        self.state
            .received
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Lets `n` more gated stream chunks go (see `x-mock-gate`).
    pub fn release(&self, n: usize) {
        self.state.gate.add_permits(n);
    }

    /// How many requests the mock answered, and how many were dropped before it did: a request
    /// counts once its handling ends, so one still waiting counts in neither. A client that goes
    /// away before the answer shows as `abandoned` once the mock notices its closed connection.
    pub fn requests(&self) -> RequestCounts {
        RequestCounts {
            answered: self.state.requests_answered.load(Ordering::SeqCst),
            abandoned: self.state.requests_abandoned.load(Ordering::SeqCst),
        }
    }

    /// How the streams answered so far ended: a stream counts once its body is dropped, so one
    /// still being sent counts in neither. A client that goes away mid-stream shows as
    /// `abandoned` once the mock notices (at its next chunk at the latest).
    pub fn streams(&self) -> StreamCounts {
        StreamCounts {
            finished: self.state.streams_finished.load(Ordering::SeqCst),
            abandoned: self.state.streams_abandoned.load(Ordering::SeqCst),
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The mock's routes: `POST /v1/chat/completions` and `POST /chat/completions`,
/// `GET /v1/chat/completions` and `GET /v1/models`; `POST /v1/responses`; `POST /v1/messages`;
/// Azure's `POST /openai/deployments/{deployment}/chat/completions` and
/// `POST /openai/v1/chat/completions`; any other path gets OpenAI's 404. Every request is
/// recorded first.
fn router(state: Arc<MockState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat).get(stored_completions))
        .route("/chat/completions", post(chat))
        .route("/v1/responses", post(responses::create))
        .route("/v1/messages", post(anthropic::messages))
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(azure_deployment_chat),
        )
        .route("/openai/v1/chat/completions", post(azure_v1_chat))
        .route("/v1/models", axum::routing::get(models))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), record_request))
        .with_state(state)
}

/// Largest request body the mock keeps a copy of (larger ones get a 413).
const RECORD_LIMIT: usize = 64 * 1024 * 1024;

/// Counts a request as answered or abandoned when its handling ends.
struct Answering {
    state: Arc<MockState>,
    answered: bool,
}

impl Drop for Answering {
    fn drop(&mut self) {
        let counter = if self.answered {
            &self.state.requests_answered
        } else {
            &self.state.requests_abandoned
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

/// Headers of `huge-head`: this many, of [`HUGE_HEADER_LEN`] bytes each (1 MiB in all, under
/// the usual cap on the number of headers, 100).
const HUGE_HEADERS: usize = 64;
const HUGE_HEADER_LEN: usize = 16 * 1024;

/// A body that fails before its first byte: the server drops the connection without sending
/// the head it had not flushed yet (hyper buffers the head until the body's first frame).
fn reset_before_head() -> Response {
    let fail = futures_util::stream::once(async {
        Err::<Bytes, _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "mock reset before the head",
        ))
    });
    Response::new(Body::from_stream(fail))
}

/// Keeps a copy of every request (method, path, query, headers, body) before it is answered;
/// counts it as answered or abandoned; forces the faults of every route (`reset-head`,
/// `huge-head`).
async fn record_request(State(state): State<Arc<MockState>>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, RECORD_LIMIT).await else {
        return too_large(HeaderMap::new());
    };
    if let Ok(mut r) = state.received.lock() {
        if r.len() == MockServer::KEPT_REQUESTS {
            r.pop_front();
        }
        r.push_back(ReceivedRequest {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
    }
    let forced = header_str(&parts.headers, "x-mock-error").map(str::to_owned);
    if forced.as_deref() == Some("reset-head") {
        return reset_before_head();
    }
    let mut answering = Answering { state, answered: false };
    let mut response = next.run(Request::from_parts(parts, Body::from(body))).await;
    if forced.as_deref() == Some("huge-head") {
        let padding = HeaderValue::from_str(&"a".repeat(HUGE_HEADER_LEN)).unwrap_or(HeaderValue::from_static("a"));
        for i in 0..HUGE_HEADERS {
            if let Ok(name) = http::HeaderName::try_from(format!("x-mock-padding-{i}")) {
                response.headers_mut().insert(name, padding.clone());
            }
        }
    }
    answering.answered = true;
    response
}

/// OpenAI-shaped 413: the request body is larger than the mock takes (or a forced `413`).
fn too_large(head: HeaderMap) -> Response {
    respond(
        StatusCode::PAYLOAD_TOO_LARGE,
        head,
        error_body("Request body too large.", "invalid_request_error", None, None),
    )
}

/// Any path the mock does not serve: OpenAI's answer to an unknown URL.
async fn not_found(method: Method, uri: http::Uri) -> Response {
    let message = format!("Invalid URL ({method} {})", uri.path());
    respond(
        StatusCode::NOT_FOUND,
        HeaderMap::new(),
        error_body(&message, "invalid_request_error", None, None),
    )
}

/// `GET /v1/chat/completions`: OpenAI's list of stored completions (the mock stores none).
async fn stored_completions() -> Response {
    let body = json!({"object": "list", "data": [], "first_id": null, "last_id": null, "has_more": false});
    respond(StatusCode::OK, HeaderMap::new(), Bytes::from(body.to_string()))
}

/// `GET /v1/models`: the models the mock answers for.
async fn models() -> Response {
    let data: Vec<Value> = ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o4-mini", "gpt-5"]
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 1715367049, "owned_by": "system"}))
        .collect();
    respond(
        StatusCode::OK,
        HeaderMap::new(),
        Bytes::from(json!({"object": "list", "data": data}).to_string()),
    )
}

/// Runs a mock on `addr` until the process ends (`llm-meter mock`).
pub async fn serve_forever(addr: SocketAddr, config: MockConfig) -> std::io::Result<()> {
    let server = MockServer::start_on(addr, config).await?;
    eprintln!("mock OpenAI provider listening on {}", server.base_url());
    std::future::pending::<()>().await;
    Ok(())
}

pub(crate) fn splitmix(state: &AtomicU64) -> u64 {
    let mut z = state
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(crate) fn random_id(state: &AtomicU64, prefix: &str, len: usize, alphabet: &[u8]) -> String {
    let mut s = String::with_capacity(prefix.len() + len);
    s.push_str(prefix);
    let mut bits = 0u64;
    for i in 0..len {
        if i % 8 == 0 {
            bits = splitmix(state);
        }
        s.push(alphabet[(bits % alphabet.len() as u64) as usize] as char);
        bits /= alphabet.len() as u64;
    }
    s
}

pub(crate) const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
pub(crate) const HEX: &[u8] = b"0123456789abcdef";

/// Resolves an alias to the dated snapshot OpenAI answers with.
pub fn snapshot_of(model: &str) -> &str {
    match model {
        "gpt-4o" => "gpt-4o-2024-08-06",
        "gpt-4o-mini" => "gpt-4o-mini-2024-07-18",
        "gpt-4.1" => "gpt-4.1-2025-04-14",
        "gpt-4.1-mini" => "gpt-4.1-mini-2025-04-14",
        "gpt-4.1-nano" => "gpt-4.1-nano-2025-04-14",
        "o3" => "o3-2025-04-16",
        "o4-mini" => "o4-mini-2025-04-16",
        "gpt-5" => "gpt-5-2025-08-07",
        "gpt-5-mini" => "gpt-5-mini-2025-08-07",
        other => other,
    }
}

/// Formats a duration the way OpenAI's reset headers do (`120ms`, `1.5s`, `6m0s`).
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = format!("{:.3}", d.as_secs_f64());
        let s = s.trim_end_matches('0').trim_end_matches('.');
        format!("{s}s")
    } else {
        let secs = d.as_secs();
        let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
        if h > 0 {
            format!("{h}h{m}m{s}s")
        } else {
            format!("{m}m{s}s")
        }
    }
}

fn estimate_prompt_tokens(req: &Value) -> u64 {
    let mut chars = 0usize;
    let mut messages = 0u64;
    if let Some(list) = req.get("messages").and_then(Value::as_array) {
        for m in list {
            messages += 1;
            match m.get("content") {
                Some(Value::String(s)) => chars += s.chars().count(),
                Some(Value::Array(parts)) => {
                    chars += parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .map(|t| t.chars().count())
                        .sum::<usize>()
                }
                _ => {}
            }
        }
    }
    (chars as u64).div_ceil(4) + 4 * messages + 3
}

pub(crate) fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Bytes {
    to_bytes(&ErrorBody {
        error: ErrorDetail {
            message,
            kind,
            param,
            code,
        },
    })
}

struct Plan {
    model: String,
    stream: bool,
    include_usage: bool,
    choices: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    finish_reason: &'static str,
    chunks: u32,
    /// The tier that serves the call, as OpenAI reports it: the requested `flex` or
    /// `priority`, else `default` (also for `auto`). Azure OpenAI reports none.
    service_tier: Option<&'static str>,
    azure: bool,
}

/// Most output tokens one mock answer carries, whatever the request or a header asks for.
pub const MAX_COMPLETION_TOKENS: u64 = 100_000;
/// Most chunks one mock stream has, whatever `x-mock-chunks` asks for.
pub const MAX_CHUNKS: u32 = 10_000;

pub(crate) fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Whose chat completions API a request came in on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor<'a> {
    OpenAi,
    /// Azure OpenAI, with the deployment named in the path (`None` on the `/openai/v1` path,
    /// where the body's `model` names it).
    Azure(Option<&'a str>),
}

/// Azure OpenAI's content-filter verdict on a harmless text (keys in Azure's order).
fn azure_filters() -> Value {
    let safe = json!({"filtered": false, "severity": "safe"});
    json!({"hate": safe, "self_harm": safe, "sexual": safe, "violence": safe})
}

/// Azure OpenAI's `prompt_filter_results`.
fn azure_prompt_filters() -> Value {
    json!([{"prompt_index": 0, "content_filter_results": azure_filters()}])
}

/// Azure-shaped error (`code` and `message` only).
fn azure_error(status: StatusCode, head: HeaderMap, code: &str, message: &str) -> Response {
    respond(
        status,
        head,
        Bytes::from(json!({"error": {"code": code, "message": message}}).to_string()),
    )
}

/// Whether the request carries the API key in the header its flavor uses (`Authorization:
/// Bearer …` for OpenAI, `api-key` for Azure OpenAI).
fn key_ok(headers: &HeaderMap, flavor: Flavor<'_>, key: &str) -> bool {
    match flavor {
        Flavor::OpenAi => header_str(headers, "authorization").and_then(|v| v.strip_prefix("Bearer ")) == Some(key),
        Flavor::Azure(_) => header_str(headers, names::HEADER_AZURE_API_KEY) == Some(key),
    }
}

async fn chat(State(state): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    chat_as(&state, &headers, &body, Flavor::OpenAi).await
}

/// `POST /openai/deployments/{deployment}/chat/completions?api-version=…` (Azure OpenAI).
async fn azure_deployment_chat(
    State(state): State<Arc<MockState>>,
    Path(deployment): Path<String>,
    uri: http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let has_version = uri.query().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv.strip_prefix("api-version=").is_some_and(|v| !v.is_empty()))
    });
    if !has_version {
        // What Azure answers when `api-version` is missing.
        return azure_error(StatusCode::NOT_FOUND, HeaderMap::new(), "404", "Resource not found");
    }
    chat_as(&state, &headers, &body, Flavor::Azure(Some(&deployment))).await
}

/// `POST /openai/v1/chat/completions` (Azure OpenAI's v1 API: no `api-version` needed).
async fn azure_v1_chat(State(state): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    chat_as(&state, &headers, &body, Flavor::Azure(None)).await
}

/// Counts a request and its worst-case tokens against OpenAI's window: the requests and tokens
/// left and the time to the window's end, or which limit (`requests`, `tokens`) it hit.
pub(crate) fn admit_openai(state: &MockState, cost: u64) -> Result<(u64, u64, Duration), (&'static str, Duration)> {
    let cfg = &state.config;
    let mut w = state.window.lock().unwrap_or_else(|p| p.into_inner());
    if w.started.elapsed() >= cfg.window {
        *w = Window {
            started: Instant::now(),
            requests: 0,
            tokens: 0,
        };
    }
    let reset = cfg.window.saturating_sub(w.started.elapsed());
    if w.requests >= cfg.limit_requests {
        return Err(("requests", reset));
    }
    if w.tokens.saturating_add(cost) > cfg.limit_tokens {
        return Err(("tokens", reset));
    }
    w.requests += 1;
    w.tokens = w.tokens.saturating_add(cost);
    Ok((cfg.limit_requests - w.requests, cfg.limit_tokens - w.tokens, reset))
}

pub(crate) fn put(head: &mut HeaderMap, name: &'static str, v: String) {
    if let Ok(v) = HeaderValue::from_str(&v) {
        head.insert(name, v);
    }
}

/// OpenAI's rate-limit headers for the counts `admit_openai` left.
pub(crate) fn openai_rate_headers(head: &mut HeaderMap, cfg: &MockConfig, remaining: (u64, u64, Duration)) {
    let (remaining_requests, remaining_tokens, reset) = remaining;
    put(
        head,
        names::HEADER_RATELIMIT_LIMIT_REQUESTS,
        cfg.limit_requests.to_string(),
    );
    put(head, names::HEADER_RATELIMIT_LIMIT_TOKENS, cfg.limit_tokens.to_string());
    put(
        head,
        names::HEADER_RATELIMIT_REMAINING_REQUESTS,
        remaining_requests.to_string(),
    );
    put(
        head,
        names::HEADER_RATELIMIT_REMAINING_TOKENS,
        remaining_tokens.to_string(),
    );
    // Requests replenish one by one, tokens in proportion: report time to a full refill.
    let per_request = cfg.window / u32::try_from(cfg.limit_requests.max(1)).unwrap_or(u32::MAX);
    put(
        head,
        names::HEADER_RATELIMIT_RESET_REQUESTS,
        format_reset(per_request.min(reset)),
    );
    put(
        head,
        names::HEADER_RATELIMIT_RESET_TOKENS,
        format_reset(reset.mul_f64((cfg.limit_tokens - remaining_tokens) as f64 / cfg.limit_tokens.max(1) as f64)),
    );
}

/// The debug headers OpenAI sends with every answer.
pub(crate) fn openai_head(state: &MockState) -> HeaderMap {
    let request_id = random_id(&state.counter, "req_", 32, HEX);
    let mut head = HeaderMap::new();
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        head.insert(names::HEADER_REQUEST_ID, id);
    }
    head.insert(
        names::HEADER_OPENAI_ORGANIZATION,
        HeaderValue::from_static("user-mockorg0000000000000000"),
    );
    head.insert(names::HEADER_OPENAI_VERSION, HeaderValue::from_static("2020-10-01"));
    head
}

/// The headers Azure OpenAI sends with every answer (ids, region, deployment).
fn azure_head(state: &MockState, deployment: &str) -> HeaderMap {
    let mut head = HeaderMap::new();
    let uuid = |state: &MockState| {
        let h = random_id(&state.counter, "", 32, HEX);
        format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
    };
    put(&mut head, names::HEADER_REQUEST_ID, uuid(state));
    put(&mut head, "apim-request-id", uuid(state));
    head.insert("x-ms-region", HeaderValue::from_static("East US"));
    put(&mut head, "x-ms-deployment-name", deployment.to_owned());
    head
}

/// A random fault by the configured error rate, unless one is forced: OpenAI's mix (half
/// `429`, half `500`).
pub(crate) fn openai_fault(state: &MockState, forced: String) -> String {
    let cfg = &state.config;
    let random_fault = cfg.error_rate > 0.0 && (splitmix(&state.counter) % 10_000) as f64 / 10_000.0 < cfg.error_rate;
    if forced.is_empty() && random_fault {
        if splitmix(&state.counter) % 2 == 0 {
            "429".to_owned()
        } else {
            "500".to_owned()
        }
    } else {
        forced
    }
}

/// The OpenAI-shaped answer to a forced error code, or `None` to go on (`stall` waits first).
pub(crate) async fn openai_forced_error(
    state: &MockState,
    forced: &str,
    head: &HeaderMap,
    model: &str,
) -> Option<Response> {
    let cfg = &state.config;
    let error = |status, message: &str, kind: &str, param, code| {
        Some(respond(status, head.clone(), error_body(message, kind, param, code)))
    };
    match forced {
        "400" => error(
            StatusCode::BAD_REQUEST,
            "Invalid value for 'temperature': expected a number between 0 and 2.",
            "invalid_request_error",
            Some("temperature"),
            Some("invalid_value"),
        ),
        "401" => error(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided.",
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        ),
        "404" => error(
            StatusCode::NOT_FOUND,
            &format!("The model `{model}` does not exist or you do not have access to it."),
            "invalid_request_error",
            None,
            Some("model_not_found"),
        ),
        "413" => Some(too_large(head.clone())),
        "429" => {
            let w = state.window.lock().unwrap_or_else(|p| p.into_inner());
            Some(rate_limited(
                head.clone(),
                cfg,
                &w,
                "requests",
                model,
                Duration::from_millis(120),
                false,
            ))
        }
        "500" => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
            None,
        ),
        "503" => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "The engine is currently overloaded, please try again later.",
            "server_error",
            None,
            None,
        ),
        // Not an OpenAI status (Anthropic's "overloaded"): the 503 body, for relays that must
        // pass any status through.
        "529" => error(
            StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "The engine is currently overloaded, please try again later.",
            "server_error",
            None,
            None,
        ),
        "stall" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            None
        }
        "garbage" => Some(respond(
            StatusCode::OK,
            head.clone(),
            Bytes::from_static(b"<html>upstream proxy error</html>"),
        )),
        _ => None,
    }
}

async fn chat_as(state: &Arc<MockState>, headers: &HeaderMap, body: &Bytes, flavor: Flavor<'_>) -> Response {
    let cfg = &state.config;
    let started = Instant::now();
    let azure = matches!(flavor, Flavor::Azure(_));
    let mut head = match flavor {
        Flavor::OpenAi => openai_head(state),
        Flavor::Azure(deployment) => azure_head(state, deployment.unwrap_or_default()),
    };

    if let Some(key) = &cfg.api_key {
        if !key_ok(headers, flavor, key) {
            if azure {
                return azure_error(
                    StatusCode::UNAUTHORIZED,
                    head,
                    "401",
                    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.",
                );
            }
            let msg = "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.";
            return respond(
                StatusCode::UNAUTHORIZED,
                head,
                error_body(msg, "invalid_request_error", None, Some("invalid_api_key")),
            );
        }
    }

    let forced = header_str(headers, "x-mock-error").unwrap_or("").to_owned();
    let req: Value = match serde_json::from_slice(body) {
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
    // Azure's deployment path names the model; its v1 path and OpenAI take the body's.
    let model = match flavor {
        Flavor::Azure(Some(deployment)) => Some(req.get("model").and_then(Value::as_str).unwrap_or(deployment)),
        _ => req.get("model").and_then(Value::as_str),
    };
    let Some(model) = model else {
        return respond(
            StatusCode::BAD_REQUEST,
            head,
            error_body(
                "you must provide a model parameter",
                "invalid_request_error",
                None,
                None,
            ),
        );
    };
    if flavor == Flavor::Azure(None) {
        put(&mut head, "x-ms-deployment-name", model.to_owned());
    }
    if !req.get("messages").is_some_and(Value::is_array) {
        return respond(
            StatusCode::BAD_REQUEST,
            head,
            error_body(
                "Missing required parameter: 'messages'.",
                "invalid_request_error",
                Some("messages"),
                Some("missing_required_parameter"),
            ),
        );
    }
    let max_tokens = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .and_then(Value::as_u64);
    let wanted = header_str(headers, "x-mock-completion-tokens")
        .and_then(|v| v.parse().ok())
        .unwrap_or(cfg.completion_tokens);
    // Request-controlled sizes are bounded: the mock never allocates or overflows on them.
    let wanted = wanted.min(MAX_COMPLETION_TOKENS);
    let completion_tokens = max_tokens.map_or(wanted, |m| m.min(wanted));
    let plan = Plan {
        model: snapshot_of(model).to_owned(),
        stream: req.get("stream").and_then(Value::as_bool) == Some(true),
        include_usage: req.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true),
        choices: req.get("n").and_then(Value::as_u64).unwrap_or(1).clamp(1, 8),
        prompt_tokens: estimate_prompt_tokens(&req),
        completion_tokens,
        finish_reason: if completion_tokens < wanted { "length" } else { "stop" },
        chunks: header_str(headers, "x-mock-chunks")
            .and_then(|v| v.parse().ok())
            .unwrap_or(cfg.chunks)
            .clamp(1, MAX_CHUNKS),
        service_tier: (!azure).then(|| match req.get("service_tier").and_then(Value::as_str) {
            Some("flex") => "flex",
            Some("priority") => "priority",
            Some("scale") => "scale",
            _ => "default",
        }),
        azure,
    };

    // Rate limits: count this request and its worst-case tokens against the window.
    let cost = plan.prompt_tokens.saturating_add(
        max_tokens
            .unwrap_or(plan.completion_tokens)
            .saturating_mul(plan.choices),
    );
    match admit_openai(state, cost) {
        Ok(remaining) if azure => {
            // Azure sends the remaining counts only.
            put(
                &mut head,
                names::HEADER_RATELIMIT_REMAINING_REQUESTS,
                remaining.0.to_string(),
            );
            put(
                &mut head,
                names::HEADER_RATELIMIT_REMAINING_TOKENS,
                remaining.1.to_string(),
            );
        }
        Ok(remaining) => openai_rate_headers(&mut head, cfg, remaining),
        Err((kind, reset)) if azure => {
            let w = state.window.lock().unwrap_or_else(|p| p.into_inner());
            return rate_limited(head, cfg, &w, kind, model, reset, true);
        }
        Err((kind, reset)) => return rate_limited_now(state, head, kind, model, reset),
    }

    let forced = openai_fault(state, forced);
    if !cfg.latency.is_zero() {
        tokio::time::sleep(cfg.latency).await;
    }
    if forced == "429" && azure {
        let w = state.window.lock().unwrap_or_else(|p| p.into_inner());
        return rate_limited(head, cfg, &w, "requests", model, Duration::from_secs(1), true);
    }
    if let Some(error) = openai_forced_error(state, &forced, &head, model).await {
        return error;
    }

    let id = random_id(&state.counter, "chatcmpl-", 29, ALNUM);
    let fingerprint = random_id(&state.counter, "fp_", 10, HEX);
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let usage = usage_body(&plan, cfg);
    if !azure {
        let processing = started.elapsed() + cfg.chunk_delay * plan.chunks;
        put(
            &mut head,
            names::HEADER_OPENAI_PROCESSING_MS,
            processing.as_millis().max(1).to_string(),
        );
    }

    if !plan.stream {
        let body = Completion {
            id: &id,
            object: "chat.completion",
            created,
            model: &plan.model,
            prompt_filter_results: azure.then(azure_prompt_filters),
            choices: (0..plan.choices)
                .map(|index| CompletionChoice {
                    content_filter_results: azure.then(azure_filters),
                    index,
                    message: Message {
                        role: "assistant",
                        content: lorem(plan.completion_tokens),
                        refusal: None,
                        annotations: [],
                    },
                    logprobs: None,
                    finish_reason: plan.finish_reason,
                })
                .collect(),
            usage,
            service_tier: plan.service_tier,
            system_fingerprint: &fingerprint,
        };
        let body = to_bytes(&body);
        return match forced.as_str() {
            "bad-utf8" => respond(StatusCode::OK, head, not_utf8(&body)),
            "reset" | "stall-body" => body_in_halves(state, head, body, forced),
            _ => respond(StatusCode::OK, head, body),
        };
    }

    let mut events = stream_events(&plan, &id, created, &fingerprint, usage);
    let mid = events.len() / 2;
    if let Some(event) = events.get_mut(mid) {
        match forced.as_str() {
            "malformed-sse" => *event = cut_short(event),
            "bad-utf8" => *event = not_utf8(event),
            _ => {}
        }
    }
    stream_response(state, headers, head, events, forced)
}

/// A JSON answer sent in two halves, the second replaced by a dropped connection (a forced
/// `reset`) or by an hour's wait (`stall-body`). Counted by [`MockServer::streams`].
fn body_in_halves(state: &Arc<MockState>, mut head: HeaderMap, body: Bytes, fault: String) -> Response {
    let half = body.len() / 2;
    let pieces = vec![body.slice(..half), body.slice(half..)];
    let end = StreamEnd {
        state: state.clone(),
        ended: false,
    };
    let body = async_stream(pieces, end, move |i, _| {
        let reset = fault == "reset";
        async move {
            match i {
                0 => Step::Send,
                _ if reset => {
                    // The first half goes out first: the server flushes while the body waits.
                    tokio::task::yield_now().await;
                    Step::Fail
                }
                _ => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Step::Send
                }
            }
        }
    });
    head.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let mut resp = Response::new(body);
    *resp.headers_mut() = head;
    resp
}

/// `bytes` with the first byte of its first non-empty `"content"` string replaced by 0xFF,
/// which is never UTF-8 (the JSON around it stays whole).
fn not_utf8(bytes: &[u8]) -> Bytes {
    const KEY: &[u8] = br#""content":""#;
    let mut out = bytes.to_vec();
    let at = out
        .windows(KEY.len() + 1)
        .position(|w| w.starts_with(KEY) && w[KEY.len()] != b'"');
    if let Some(b) = at.and_then(|at| out.get_mut(at + KEY.len())) {
        *b = 0xFF;
    }
    Bytes::from(out)
}

/// An SSE event cut half way through its JSON, still ended by its blank line.
fn cut_short(event: &[u8]) -> Bytes {
    let mut out = event[..event.len() / 2].to_vec();
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// A streamed answer of `events` (SSE), paced by the config, gated by `x-mock-gate`, cut
/// short by a forced `truncate` or `reset` half way, or stalled there by `stall-body`.
pub(crate) fn stream_response(
    state: &Arc<MockState>,
    headers: &HeaderMap,
    mut head: HeaderMap,
    events: Vec<Bytes>,
    fault: String,
) -> Response {
    let gated = header_str(headers, "x-mock-gate") == Some("1");
    let state2 = state.clone();
    let chunk_delay = state.config.chunk_delay;
    let end = StreamEnd {
        state: state.clone(),
        ended: false,
    };
    let body = async_stream(events, end, move |i, total| {
        let state = state2.clone();
        let fault = fault.clone();
        async move {
            if i > 0 {
                if gated {
                    if let Ok(p) = state.gate.acquire().await {
                        p.forget();
                    }
                }
                if !chunk_delay.is_zero() {
                    tokio::time::sleep(chunk_delay).await;
                }
            }
            match fault.as_str() {
                "truncate" if i >= total / 2 => Step::End,
                "reset" if i >= total / 2 => {
                    // What came before goes out first: the server flushes while the body waits.
                    tokio::task::yield_now().await;
                    Step::Fail
                }
                "stall-body" if i >= total / 2 => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Step::Send
                }
                _ => Step::Send,
            }
        }
    });
    head.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    let mut resp = Response::new(body);
    *resp.headers_mut() = head;
    resp
}

fn usage_body(plan: &Plan, cfg: &MockConfig) -> UsageBody {
    let completion = plan.completion_tokens * plan.choices + cfg.reasoning_tokens;
    let cached = ((plan.prompt_tokens as f64) * cfg.cached_fraction).floor() as u64;
    UsageBody {
        prompt_tokens: plan.prompt_tokens,
        completion_tokens: completion,
        total_tokens: plan.prompt_tokens + completion,
        prompt_tokens_details: PromptDetails {
            cached_tokens: cached,
            audio_tokens: 0,
        },
        completion_tokens_details: CompletionDetails {
            reasoning_tokens: cfg.reasoning_tokens,
            audio_tokens: 0,
            accepted_prediction_tokens: 0,
            rejected_prediction_tokens: 0,
        },
    }
}

fn stream_events(plan: &Plan, id: &str, created: u64, fingerprint: &str, usage: UsageBody) -> Vec<Bytes> {
    // With include_usage every chunk carries `"usage": null`, and the last one the usage.
    let chunk = |choices: Vec<ChunkChoice>, usage_field: Option<UsageBody>| {
        let c = Chunk {
            id,
            object: "chat.completion.chunk",
            created,
            model: &plan.model,
            service_tier: plan.service_tier,
            system_fingerprint: fingerprint,
            choices,
            usage: plan.include_usage.then_some(usage_field),
        };
        Bytes::from(format!("data: {}\n\n", serde_json::to_string(&c).unwrap_or_default()))
    };
    // Azure puts its content-filter verdict on each content delta (and an empty one on the
    // role and finish chunks).
    let choice = |index, delta: Delta, finish_reason| {
        let filters = plan.azure.then(|| {
            if delta.content.as_ref().is_some_and(|c| !c.is_empty()) {
                azure_filters()
            } else {
                json!({})
            }
        });
        vec![ChunkChoice {
            content_filter_results: filters,
            index,
            delta,
            logprobs: None,
            finish_reason,
        }]
    };
    let mut out = Vec::new();
    if plan.azure {
        // Azure's first chunk: no choices, empty id and model, the prompt's filter results.
        let first = json!({"choices": [], "created": 0, "id": "", "model": "", "object": "", "prompt_filter_results": azure_prompt_filters()});
        out.push(Bytes::from(format!("data: {first}\n\n")));
    }
    for i in 0..plan.choices {
        let role = Delta {
            role: Some("assistant"),
            content: Some(String::new()),
            refusal: Some(None),
        };
        out.push(chunk(choice(i, role, None), None));
    }
    let per_chunk = plan.completion_tokens.div_ceil(u64::from(plan.chunks)).max(1);
    let mut left = plan.completion_tokens;
    for _ in 0..plan.chunks {
        if left == 0 {
            break;
        }
        let n = per_chunk.min(left);
        let from = plan.completion_tokens - left;
        left -= n;
        for i in 0..plan.choices {
            let text = Delta {
                content: Some(lorem_range(from, n)),
                ..Delta::default()
            };
            out.push(chunk(choice(i, text, None), None));
        }
    }
    for i in 0..plan.choices {
        out.push(chunk(choice(i, Delta::default(), Some(plan.finish_reason)), None));
    }
    if plan.include_usage {
        out.push(chunk(Vec::new(), Some(usage)));
    }
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

pub(crate) enum Step {
    Send,
    End,
    Fail,
}

/// Counts a stream as finished or abandoned when its body is dropped.
pub(crate) struct StreamEnd {
    pub(crate) state: Arc<MockState>,
    /// Set once the mock has ended the stream itself (last event sent, or a forced fault).
    pub(crate) ended: bool,
}

impl StreamEnd {
    fn mark_ended(&mut self) {
        self.ended = true;
    }
}

impl Drop for StreamEnd {
    fn drop(&mut self) {
        let counter = if self.ended {
            &self.state.streams_finished
        } else {
            &self.state.streams_abandoned
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

/// A body that sends `events` one by one, asking `before(i, total)` what to do before each;
/// `end` tells, when the body is dropped, whether the stream got to its end.
pub(crate) fn async_stream<F, Fut>(events: Vec<Bytes>, end: StreamEnd, before: F) -> Body
where
    F: Fn(usize, usize) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Step> + Send,
{
    let total = events.len();
    let s = futures_util::stream::unfold(
        (events.into_iter().enumerate(), before, end),
        move |(mut it, before, mut end)| async move {
            let Some((i, ev)) = it.next() else {
                end.mark_ended();
                return None;
            };
            match before(i, total).await {
                Step::Send => {
                    if i + 1 == total {
                        end.mark_ended();
                    }
                    Some((Ok(ev), (it, before, end)))
                }
                Step::End => {
                    end.mark_ended();
                    None
                }
                Step::Fail => {
                    end.mark_ended();
                    Some((
                        Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "mock reset")),
                        (it, before, end),
                    ))
                }
            }
        },
    );
    Body::from_stream(s)
}

/// OpenAI's 429 for the limit `kind` that `admit_openai` found reached.
pub(crate) fn rate_limited_now(
    state: &MockState,
    head: HeaderMap,
    kind: &str,
    model: &str,
    reset: Duration,
) -> Response {
    let w = state.window.lock().unwrap_or_else(|p| p.into_inner());
    rate_limited(head, &state.config, &w, kind, model, reset, false)
}

fn rate_limited(
    mut head: HeaderMap,
    cfg: &MockConfig,
    w: &Window,
    kind: &str,
    model: &str,
    reset: Duration,
    azure: bool,
) -> Response {
    let (limit, used, unit) = match kind {
        "tokens" => (cfg.limit_tokens, w.tokens, "tokens per min (TPM)"),
        _ => (cfg.limit_requests, w.requests, "requests per min (RPM)"),
    };
    let secs = reset.as_secs_f64().ceil().max(1.0) as u64;
    head.insert(names::HEADER_RETRY_AFTER, HeaderValue::from(secs));
    head.insert("retry-after-ms", HeaderValue::from(reset.as_millis().max(1) as u64));
    head.insert(
        names::HEADER_RATELIMIT_REMAINING_REQUESTS,
        HeaderValue::from(cfg.limit_requests.saturating_sub(w.requests)),
    );
    head.insert(
        names::HEADER_RATELIMIT_REMAINING_TOKENS,
        HeaderValue::from(cfg.limit_tokens.saturating_sub(w.tokens)),
    );
    if azure {
        let message = format!(
            "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded {} rate limit of your current OpenAI S0 pricing tier. Please retry after {secs} seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit.",
            if kind == "tokens" { "token" } else { "call" }
        );
        return azure_error(StatusCode::TOO_MANY_REQUESTS, head, "429", &message);
    }
    let mut msg = String::new();
    let _ = write!(
        msg,
        "Rate limit reached for {model} in organization org-mock on {unit}: Limit {limit}, Used {used}, Requested 1. Please try again in {}. Visit https://platform.openai.com/account/rate-limits to learn more.",
        format_reset(reset)
    );
    head.insert(
        names::HEADER_RATELIMIT_LIMIT_REQUESTS,
        HeaderValue::from(cfg.limit_requests),
    );
    head.insert(
        names::HEADER_RATELIMIT_LIMIT_TOKENS,
        HeaderValue::from(cfg.limit_tokens),
    );
    if let Ok(v) = HeaderValue::from_str(&format_reset(reset)) {
        head.insert(names::HEADER_RATELIMIT_RESET_REQUESTS, v.clone());
        head.insert(names::HEADER_RATELIMIT_RESET_TOKENS, v);
    }
    respond(
        StatusCode::TOO_MANY_REQUESTS,
        head,
        error_body(&msg, kind, None, Some("rate_limit_exceeded")),
    )
}

pub(crate) fn respond(status: StatusCode, mut head: HeaderMap, body: Bytes) -> Response {
    head.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = head;
    resp
}

/// Deterministic filler text of about `tokens` tokens.
pub(crate) fn lorem(tokens: u64) -> String {
    lorem_range(0, tokens)
}

/// Tokens `from..from + n` of the filler text, so stream deltas join into `lorem`'s text.
pub(crate) fn lorem_range(from: u64, n: u64) -> String {
    const WORDS: [&str; 8] = ["Hello", " there", "!", " How", " can", " I", " help", " today?"];
    (from..from + n).map(|i| WORDS[i as usize % WORDS.len()]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use llm_meter::parse_duration;

    #[test]
    fn reset_format_round_trips_through_the_parser() {
        for ms in [0u64, 38, 120, 999, 1000, 1500, 59_993, 60_000, 360_000, 3_723_000] {
            let d = Duration::from_millis(ms);
            let back = parse_duration(&format_reset(d)).unwrap();
            assert!(
                (back.as_secs_f64() - d.as_secs_f64()).abs() < 0.001,
                "{ms}: {}",
                format_reset(d)
            );
        }
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    }

    #[test]
    fn snapshots_resolve() {
        assert_eq!(snapshot_of("gpt-4o"), "gpt-4o-2024-08-06");
        assert_eq!(snapshot_of("custom"), "custom");
    }
}
