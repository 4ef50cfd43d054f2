//! The observing proxy: OpenAI-compatible and Pay-i-compatible (proxy routing).
//!
//! `POST /v1/chat/completions` and Pay-i's `/api/v1/proxy/openai/v1/chat/completions` are
//! observed calls: `xProxy-*` headers become the call's annotations (invalid ones get a 400 that
//! names the header, and nothing is forwarded), the request goes to the upstream without them,
//! and the provider's status, headers and body come back, a JSON body with a sibling
//! `xproxy_result`, a stream chunk by chunk with `xproxy_result` on the usage chunk when the
//! caller asked for usage, else on the chunk with the finish reason (every chunk the caller
//! gets keeps its `choices`). Block
//! limits refuse calls before the provider sees them. Every other `/v1/*` request is forwarded
//! untouched.
//!
//! Secrets (`Authorization`, `xProxy-Api-Key`, a configured upstream key) are never recorded.

pub mod config;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::{any, post};
use axum::Router;
use bytes::Bytes;
use futures_util::TryStreamExt;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::json;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use llm_meter::names;
use llm_meter::Annotations;
use llm_meter::ErrorType;
use llm_meter::{add_json_field, XProxyResult};
use llm_meter::{Meter, Server};

/// Pay-i's proxy route prefix for OpenAI (`payi_openai_url(payi_base_url=…)`).
pub const PAYI_OPENAI_PREFIX: &str = "/api/v1/proxy/openai";

/// Header choosing another upstream for one request (only from the allow-list).
pub const HEADER_PROVIDER_BASE_URI: &str = names::HEADER_PROVIDER_BASE_URI;

/// Proxy settings.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// Where calls go: an OpenAI-compatible API base (`https://api.openai.com/v1`).
    pub upstream: reqwest::Url,
    /// Other API bases a request may choose with `xProxy-Provider-BaseUri`.
    pub allowed_upstreams: Vec<reqwest::Url>,
    /// Keys accepted in `xProxy-Api-Key`; empty: no proxy auth.
    pub keys: Vec<String>,
    /// Replaces the client's `Authorization` upstream when set.
    pub upstream_api_key: Option<String>,
    /// Largest request body accepted.
    pub body_limit: usize,
    /// Longest wait for a whole non-streaming answer.
    pub timeout: Duration,
    /// Longest wait to connect upstream.
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of an upstream answer (bounds a stalled stream).
    pub read_timeout: Duration,
}

impl Default for ProxySettings {
    #[expect(clippy::expect_used, reason = "a constant URL that parses (tests use the default)")]
    fn default() -> Self {
        ProxySettings {
            upstream: reqwest::Url::parse(llm_meter::DEFAULT_BASE_URL).expect("valid default"),
            allowed_upstreams: Vec::new(),
            keys: Vec::new(),
            upstream_api_key: None,
            body_limit: 8 * 1024 * 1024,
            timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(120),
        }
    }
}

/// The proxy: settings, the observation pipeline, and a pooled upstream client.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<ProxyInner>,
}

struct ProxyInner {
    settings: ProxySettings,
    meter: Meter,
    http: reqwest::Client,
    upstream_auth: Option<HeaderValue>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("upstream", &self.inner.settings.upstream.as_str())
            .finish_non_exhaustive()
    }
}

/// A proxy that could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("proxy set-up: {0}")]
pub struct ProxyError(pub String);

impl Proxy {
    /// A proxy with `settings`, observing through `meter` (block limits are always enforced).
    pub fn new(settings: ProxySettings, meter: Meter) -> Result<Self, ProxyError> {
        if !matches!(settings.upstream.scheme(), "http" | "https") {
            return Err(ProxyError(format!(
                "upstream {}: scheme must be http or https",
                settings.upstream
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.read_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ProxyError(e.to_string()))?;
        let upstream_auth = match &settings.upstream_api_key {
            Some(key) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {key}"))
                    .map_err(|_| ProxyError("upstream_api_key holds characters not allowed in a header".into()))?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(Proxy {
            inner: Arc::new(ProxyInner {
                settings,
                meter: meter.enforcing_limits(),
                http,
                upstream_auth,
            }),
        })
    }

    /// The meter calls are observed with.
    pub fn meter(&self) -> &Meter {
        &self.inner.meter
    }

    /// The proxy's routes.
    pub fn router(self) -> Router {
        Router::new()
            // Other methods on the chat path (OpenAI's stored completions: GET, DELETE) are forwarded.
            .route("/v1/chat/completions", post(chat).fallback(forward))
            .route(
                &format!("{PAYI_OPENAI_PREFIX}/v1/chat/completions"),
                post(chat).fallback(forward),
            )
            .route("/v1/{*rest}", any(forward))
            .route(&format!("{PAYI_OPENAI_PREFIX}/v1/{{*rest}}"), any(forward))
            .with_state(self)
    }

    /// Serves the proxy on `listener` until the future is dropped.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    /// Binds `addr` and serves in the background; returns the bound address.
    pub async fn spawn(self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        tokio::spawn(async move {
            if let Err(e) = self.serve(listener).await {
                tracing::warn!(target: "llm_meter", "proxy stopped: {e}");
            }
        });
        Ok(bound)
    }
}

/// A proxy assembled from a configuration file: prices, limits (ledger restored from its
/// snapshot), model defaults and label policy, observing into `telemetry`'s metrics.
pub fn from_config(
    config: &crate::config::Config,
    upstream: Option<&str>,
    telemetry: &llm_meter::Telemetry,
) -> Result<(Proxy, Arc<llm_meter::MemoryLedger>), Box<dyn std::error::Error + Send + Sync>> {
    let ledger = Arc::new(config.ledger()?);
    let mut meter = telemetry
        .meter_builder()
        .prices(config.prices()?)
        .ledger(ledger.clone());
    for (model, defaults) in config.model_defaults_json() {
        meter = meter.model_defaults(model, defaults);
    }
    let proxy = Proxy::new(config.proxy_settings(upstream)?, meter.build()?)?;
    Ok((proxy, ledger))
}

/// A request the proxy answers itself, with an error (boxed: responses are large).
type Rejection = Box<Response>;

/// An OpenAI-shaped error response.
fn error_response(status: StatusCode, message: &str, kind: &str, param: Option<&str>, code: &str) -> Response {
    json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "param": param, "code": code}}),
    )
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Constant-time comparison of a presented key with each accepted key.
fn key_matches(presented: &[u8], keys: &[String]) -> bool {
    let mut found = 0u8;
    for key in keys {
        let key = key.as_bytes();
        let mut diff = u8::from(key.len() != presented.len());
        for (i, k) in key.iter().enumerate() {
            diff |= k ^ presented.get(i).copied().unwrap_or(0);
        }
        found |= u8::from(diff == 0);
    }
    found == 1
}

fn authorize(settings: &ProxySettings, headers: &HeaderMap) -> Result<(), Rejection> {
    if settings.keys.is_empty() {
        return Ok(());
    }
    let presented = headers
        .get(names::HEADER_API_KEY)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    if key_matches(presented, &settings.keys) {
        Ok(())
    } else {
        Err(Box::new(error_response(
            StatusCode::UNAUTHORIZED,
            "missing or wrong xProxy-Api-Key",
            "authentication_error",
            Some(names::HEADER_API_KEY),
            "invalid_proxy_key",
        )))
    }
}

/// The API base this request goes to: the configured one, or an allowed one it chose.
fn upstream_base(settings: &ProxySettings, headers: &HeaderMap) -> Result<reqwest::Url, Rejection> {
    let Some(chosen) = headers.get(HEADER_PROVIDER_BASE_URI) else {
        return Ok(settings.upstream.clone());
    };
    let bad = |why: &str| {
        Box::new(error_response(
            StatusCode::BAD_REQUEST,
            &format!("{}: {why}", names::HEADER_PROVIDER_BASE_URI),
            "invalid_request_error",
            Some(names::HEADER_PROVIDER_BASE_URI),
            "invalid_header",
        ))
    };
    let text = chosen.to_str().map_err(|_| bad("not valid text"))?;
    let url = reqwest::Url::parse(text.trim_end_matches('/')).map_err(|_| bad("not a URL"))?;
    let same = |a: &reqwest::Url| a.as_str().trim_end_matches('/') == url.as_str().trim_end_matches('/');
    if same(&settings.upstream) || settings.allowed_upstreams.iter().any(same) {
        Ok(url)
    } else {
        Err(bad("not in the proxy's allowed upstreams"))
    }
}

fn join(base: &reqwest::Url, rest: &str, query: Option<&str>) -> Result<reqwest::Url, Rejection> {
    let mut url = format!(
        "{}/{}",
        base.as_str().trim_end_matches('/'),
        rest.trim_start_matches('/')
    );
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    reqwest::Url::parse(&url).map_err(|_| {
        Box::new(error_response(
            StatusCode::BAD_REQUEST,
            "bad request path",
            "invalid_request_error",
            None,
            "invalid_path",
        ))
    })
}

/// Headers that are per connection (RFC 9110 §7.6.1), plus those a `Connection` header names.
fn is_hop_by_hop(name: &HeaderName, connection: &[String]) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "proxy-connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    ) || connection.iter().any(|c| c.eq_ignore_ascii_case(name.as_str()))
}

fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Request headers to send upstream: no hop-by-hop, no `xProxy-*`, the upstream key if set.
fn upstream_request_headers(inner: &ProxyInner, incoming: &HeaderMap, observed: bool) -> HeaderMap {
    let connection = connection_tokens(incoming);
    let mut out = HeaderMap::with_capacity(incoming.len());
    for (name, value) in incoming {
        if is_hop_by_hop(name, &connection) || name.as_str().starts_with(names::HEADER_XPROXY_PREFIX) {
            continue;
        }
        // Observed calls must read the body: ask the provider for it uncompressed.
        if observed && name == header::ACCEPT_ENCODING {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    if let Some(auth) = &inner.upstream_auth {
        out.insert(header::AUTHORIZATION, auth.clone());
    }
    out
}

/// Response headers to send back: no hop-by-hop ones.
fn downstream_headers(upstream: &HeaderMap) -> HeaderMap {
    let connection = connection_tokens(upstream);
    let mut out = HeaderMap::with_capacity(upstream.len());
    for (name, value) in upstream {
        if !is_hop_by_hop(name, &connection) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

fn upstream_failure(kind: ErrorType) -> Response {
    match kind {
        ErrorType::Timeout => error_response(
            StatusCode::GATEWAY_TIMEOUT,
            "the upstream provider did not answer in time",
            "upstream_error",
            None,
            "upstream_timeout",
        ),
        ErrorType::Connect => error_response(
            StatusCode::BAD_GATEWAY,
            "cannot connect to the upstream provider",
            "upstream_error",
            None,
            "upstream_unreachable",
        ),
        _ => error_response(
            StatusCode::BAD_GATEWAY,
            "the upstream provider's answer failed",
            "upstream_error",
            None,
            "upstream_failed",
        ),
    }
}

/// Adds `"xproxy_result": {…}` to a JSON object body, just before its closing brace.
fn with_xproxy_result(body: &[u8], result: &XProxyResult) -> Option<Vec<u8>> {
    add_json_field(body, names::XPROXY_RESULT, &result.to_json_bytes())
}

/// The server span of one proxied request, continuing the caller's trace when it sent one.
fn server_span(method: &Method, route: &str, headers: &HeaderMap) -> tracing::Span {
    let span = tracing::info_span!(
        target: "llm_meter",
        "proxy",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = route,
    );
    if let Some(parent) = llm_meter::extract_trace_context(headers) {
        let _ = span.set_parent(parent);
    }
    span
}

async fn chat(State(proxy): State<Proxy>, request: Request) -> Response {
    // The server span is the chat span's explicit parent: no span is entered on every poll.
    let span = proxy
        .inner
        .meter
        .spans_enabled()
        .then(|| server_span(request.method(), request.uri().path(), request.headers()));
    chat_inner(proxy, request, span.as_ref()).await
}

async fn chat_inner(proxy: Proxy, request: Request, server_span: Option<&tracing::Span>) -> Response {
    let inner = &proxy.inner;
    let settings = &inner.settings;
    let (parts, body) = request.into_parts();
    if let Err(resp) = authorize(settings, &parts.headers) {
        return *resp;
    }
    let annotations = match Annotations::from_headers(&parts.headers) {
        Ok(a) => a,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &e.to_string(),
                "invalid_request_error",
                Some(e.field.header()),
                "invalid_header",
            );
        }
    };
    let base = match upstream_base(settings, &parts.headers) {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    let url = match join(&base, "chat/completions", parts.uri.query()) {
        Ok(u) => u,
        Err(resp) => return *resp,
    };
    let body = match axum::body::to_bytes(body, settings.body_limit).await {
        Ok(b) => b,
        Err(_) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body larger than {} bytes", settings.body_limit),
                "invalid_request_error",
                None,
                "body_too_large",
            )
        }
    };
    let mut headers = upstream_request_headers(inner, &parts.headers, true);
    let prepared = match inner.meter.prepare(Vec::from(body.clone()), None) {
        Ok(p) => p,
        // Not a JSON object: the provider says what is wrong with it; nothing to observe.
        Err(_) => return send_unobserved(inner, url, headers, body).await,
    };
    let stream = prepared.facts.stream;
    let mut call = inner
        .meter
        .start_under(server_span, Server::of(&base), &annotations, prepared.facts);
    if let Err(blocked) = call.admit(prepared.body.len()) {
        let record = call.finish_blocked(blocked.clone());
        let message = format!("refused by limit {}: the call would pass its max", blocked.join(", "));
        return json_response(
            StatusCode::FORBIDDEN,
            &json!({
                "error": {"message": message, "type": "limit_reached", "param": null, "code": "limit_reached"},
                (names::XPROXY_ERROR): {"code": "limit_reached", "message": message},
                (names::XPROXY_RESULT): XProxyResult::from_record(&record),
            }),
        );
    }
    call.inject_trace_context(&mut headers);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let mut upstream = inner.http.post(url).headers(headers).body(prepared.body);
    if !stream {
        upstream = upstream.timeout(settings.timeout);
    }
    let sent = Instant::now();
    let response = match upstream.send().await {
        Ok(r) => r,
        Err(e) => {
            let kind = ErrorType::from_reqwest(&e);
            call.fail(kind);
            return upstream_failure(kind);
        }
    };
    let status = response.status();
    let upstream_headers = response.headers().clone();
    let mut out_headers = downstream_headers(&upstream_headers);
    if stream && status.is_success() {
        let observed = call
            .observe_stream(
                status,
                upstream_headers,
                response.bytes_stream(),
                sent,
                prepared.hide_usage_chunk,
            )
            .with_outcome_field(names::XPROXY_RESULT, |record| {
                XProxyResult::from_record(record).to_json_bytes()
            });
        let mut resp = Response::new(Body::from_stream(observed));
        *resp.status_mut() = status;
        *resp.headers_mut() = out_headers;
        return resp;
    }
    let body = match response.bytes().await {
        Ok(b) => b,
        Err(e) => {
            let kind = ErrorType::from_reqwest(&e);
            call.fail(kind);
            return upstream_failure(kind);
        }
    };
    let record = call.finish_body(status, &upstream_headers, &body);
    let body = if status.is_success() {
        match with_xproxy_result(&body, &XProxyResult::from_record(&record)) {
            Some(extended) => Bytes::from(extended),
            None => body,
        }
    } else {
        body
    };
    out_headers.remove(header::CONTENT_LENGTH);
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = out_headers;
    resp
}

async fn send_unobserved(inner: &ProxyInner, url: reqwest::Url, headers: HeaderMap, body: Bytes) -> Response {
    match inner
        .http
        .post(url)
        .headers(headers)
        .body(body)
        .timeout(inner.settings.timeout)
        .send()
        .await
    {
        Ok(r) => relay(r),
        Err(e) => upstream_failure(ErrorType::from_reqwest(&e)),
    }
}

fn relay(upstream: reqwest::Response) -> Response {
    let status = upstream.status();
    let headers = downstream_headers(upstream.headers());
    let mut resp = Response::new(Body::from_stream(upstream.bytes_stream()));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// Any other `/v1/*` request: forwarded as it is (minus `xProxy-*` and hop-by-hop headers).
async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
    let inner = &proxy.inner;
    let (parts, body) = request.into_parts();
    if let Err(resp) = authorize(&inner.settings, &parts.headers) {
        return *resp;
    }
    let base = match upstream_base(&inner.settings, &parts.headers) {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    let path = parts.uri.path();
    let rest = path.strip_prefix(PAYI_OPENAI_PREFIX).unwrap_or(path);
    let rest = rest.strip_prefix("/v1").unwrap_or(rest);
    let url = match join(&base, rest, parts.uri.query()) {
        Ok(u) => u,
        Err(resp) => return *resp,
    };
    let headers = upstream_request_headers(inner, &parts.headers, false);
    let body = reqwest::Body::wrap_stream(body.into_data_stream().map_err(std::io::Error::other));
    match inner
        .http
        .request(parts.method, url)
        .headers(headers)
        .body(body)
        .send()
        .await
    {
        Ok(r) => relay(r),
        Err(e) => upstream_failure(ErrorType::from_reqwest(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole() {
        let keys = vec!["secret-1".to_owned(), "other".to_owned()];
        assert!(key_matches(b"secret-1", &keys));
        assert!(key_matches(b"other", &keys));
        assert!(!key_matches(b"secret-", &keys));
        assert!(!key_matches(b"secret-12", &keys));
        assert!(!key_matches(b"", &keys));
    }

    #[test]
    fn xproxy_result_is_spliced_into_json_objects_only() {
        let r = XProxyResult {
            request_id: "r".into(),
            use_case_name: None,
            use_case_id: None,
            use_case_step: None,
            user_id: None,
            account_name: None,
            request_tags: vec![],
            limits: Default::default(),
            blocked_limit_ids: vec![],
            cost: None,
        };
        let out = with_xproxy_result(b"{\"a\": 1}\n", &r).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["a"], 1);
        assert_eq!(v["xproxy_result"]["request_id"], "r");
        assert!(out.ends_with(b"}\n"));
        let empty: serde_json::Value = serde_json::from_slice(&with_xproxy_result(b"{ }", &r).unwrap()).unwrap();
        assert_eq!(empty["xproxy_result"]["request_id"], "r");
        assert!(with_xproxy_result(b"[1]", &r).is_none());
        assert!(with_xproxy_result(b"", &r).is_none());
    }

    #[test]
    fn hop_by_hop_and_named_connection_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, x-trace-hop"));
        h.insert("x-trace-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-request-id", HeaderValue::from_static("req_1"));
        let out = downstream_headers(&h);
        assert_eq!(out.len(), 1);
        assert!(out.contains_key("x-request-id"));
    }
}
