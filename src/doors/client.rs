//! The instrumented LLM client over `reqwest`.
//!
//! [`Client::chat`] and [`Client::chat_stream`] send any `serde::Serialize` body to the API the
//! client speaks ([`ClientBuilder::api`]: `{base_url}/chat/completions` by default,
//! `{base_url}/messages` for Anthropic Messages, `{base_url}/responses`), hand back the provider's answer as it came (status, headers,
//! body bytes) and observe the call on the way: a `chat {model}` span, a [`CallRecord`] for every
//! hook. Telemetry never changes the caller's outcome: a provider error is returned as the
//! provider sent it, and nothing in the observation path panics into the caller.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::Instrument;

use crate::parse::annotations::Annotations;
use crate::parse::endpoint::{bearer, parse_api_base, Api};
use crate::parse::provider::{ChatCompletion, ProviderMeta, Usage};
use crate::pipeline::{Call, ChatStream, Meter, Server};
use crate::record::xproxy::XProxyResult;
use crate::record::{BuildError, CallError, CallRecord};

/// OpenAI's API base.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
/// Longest wait for a whole non-streaming answer, unless set otherwise (client and proxy).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest wait to connect to the provider, unless set otherwise (client and proxy).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the next bytes of an answer, unless set otherwise (client and proxy): it
/// bounds a stalled stream.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Builder for [`Client`]: where calls go and how (base URL, key, timeouts, headers). What is
/// observed and how (spans, metrics, hooks, prices, limits) is the [`Meter`]'s, given with
/// [`Self::meter`].
pub struct ClientBuilder {
    base_url: String,
    api_key: Option<String>,
    http: Option<reqwest::Client>,
    timeout: Option<Duration>,
    connect_timeout: Duration,
    read_timeout: Option<Duration>,
    send_annotation_headers: bool,
    headers: HeaderMap,
    meter: Option<Meter>,
    api: Api,
}

/// The `anthropic-version` a client of the Messages API sends unless told otherwise.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_key: None,
            http: None,
            timeout: Some(DEFAULT_TIMEOUT),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: Some(DEFAULT_READ_TIMEOUT),
            send_annotation_headers: false,
            headers: HeaderMap::new(),
            meter: None,
            api: Api::ChatCompletions,
        }
    }
}

impl ClientBuilder {
    /// API base, e.g. `https://api.openai.com/v1` (the default) or a mock's `http://127.0.0.1:PORT/v1`.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }
    /// API key, sent as `Authorization: Bearer …` (Anthropic Messages: `x-api-key`); never
    /// recorded.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }
    /// Uses an existing `reqwest::Client` (its own timeouts then apply; see [`Self::timeout`]).
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }
    /// Whole-call timeout for non-streaming calls (default 600 s); `None` for none.
    pub fn timeout(mut self, t: Option<Duration>) -> Self {
        self.timeout = t;
        self
    }
    /// Connect timeout (default 10 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }
    /// Longest wait for the next bytes of a response (default 120 s), which bounds a stalled stream.
    pub fn read_timeout(mut self, t: Option<Duration>) -> Self {
        self.read_timeout = t;
        self
    }
    /// Also send the annotations as `xProxy-*` headers (for a Pay-i-compatible proxy upstream).
    pub fn send_annotation_headers(mut self, on: bool) -> Self {
        self.send_annotation_headers = on;
        self
    }
    /// A header sent with every request (e.g. `OpenAI-Organization`).
    pub fn default_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }
    /// The API calls speak (default Chat Completions): it decides the path below the base URL
    /// and how answers are read. For [`Api::AnthropicMessages`] the key goes in `x-api-key`
    /// and `anthropic-version` is [`ANTHROPIC_VERSION`] unless a default header sets it.
    pub fn api(mut self, api: Api) -> Self {
        self.api = api;
        self
    }
    /// Observes calls with `meter` (spans, metrics, hooks, prices, limits, stream usage; see
    /// [`Meter::builder`]), which may be shared with other clients or the proxy. Default: a
    /// meter with spans on, no metrics, the embedded prices, no limits.
    pub fn meter(mut self, meter: Meter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Builds the client; fails on a bad base URL or key.
    pub fn build(self) -> Result<Client, BuildError> {
        let base = parse_api_base(&self.base_url).map_err(|why| BuildError::ApiBase {
            what: "base_url",
            url: self.base_url.clone(),
            why,
        })?;
        let chat_url = reqwest::Url::parse(&format!("{}/{}", base.as_str().trim_end_matches('/'), self.api.path()))
            .map_err(|_| BuildError::ApiBase {
                what: "base_url",
                url: self.base_url.clone(),
                why: "cannot hold a path",
            })?;
        let meter = match self.meter {
            Some(m) => m,
            None => Meter::builder().build()?,
        };
        let mut headers = self.headers;
        if let Some(key) = &self.api_key {
            if self.api == Api::AnthropicMessages {
                let mut value = HeaderValue::from_str(key).map_err(|_| BuildError::ApiKey { what: "api_key" })?;
                value.set_sensitive(true);
                headers.insert(HeaderName::from_static("x-api-key"), value);
            } else {
                let value = bearer(key).ok_or(BuildError::ApiKey { what: "api_key" })?;
                headers.insert(http::header::AUTHORIZATION, value);
            }
        }
        if self.api == Api::AnthropicMessages {
            headers
                .entry(HeaderName::from_static("anthropic-version"))
                .or_insert(HeaderValue::from_static(ANTHROPIC_VERSION));
        }
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let http = match self.http {
            Some(c) => c,
            None => {
                let mut b = reqwest::Client::builder().connect_timeout(self.connect_timeout);
                if let Some(t) = self.read_timeout {
                    b = b.read_timeout(t);
                }
                b.build().map_err(|e| BuildError::Http(Box::new(e)))?
            }
        };
        Ok(Client {
            inner: Arc::new(Inner {
                server: Server::of(&chat_url),
                api: self.api,
                chat_url,
                http,
                headers,
                timeout: self.timeout,
                send_annotation_headers: self.send_annotation_headers,
                meter,
            }),
        })
    }
}

/// Instrumented chat-completion client. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where calls go: the base URL and the API's path.
    chat_url: reqwest::Url,
    api: Api,
    server: Server,
    http: reqwest::Client,
    headers: HeaderMap,
    timeout: Option<Duration>,
    send_annotation_headers: bool,
    meter: Meter,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("chat_url", &self.inner.chat_url.as_str())
            .finish_non_exhaustive()
    }
}

/// A non-streaming answer: the provider's response as it came, plus what was observed.
#[derive(Debug)]
pub struct ChatResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    record: CallRecord,
}

impl ChatResponse {
    /// HTTP status from the provider.
    pub fn status(&self) -> StatusCode {
        self.status
    }
    /// True for a 2xx status.
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }
    /// The provider's headers, unchanged.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }
    /// The provider's body, byte for byte.
    pub fn body(&self) -> &Bytes {
        &self.body
    }
    /// Parses the body into the caller's own type (e.g. async-openai's `CreateChatCompletionResponse`).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
    /// Typed view of the completion (no content), when the body was one.
    pub fn completion(&self) -> Option<ChatCompletion> {
        (self.record.response.id.is_some() || self.record.usage.is_some()).then(|| ChatCompletion {
            facts: self.record.response.clone(),
            usage: self.record.usage,
        })
    }
    /// Provider debug and rate-limit headers.
    pub fn meta(&self) -> &ProviderMeta {
        &self.record.meta
    }
    /// Usage, when reported.
    pub fn usage(&self) -> Option<&Usage> {
        self.record.usage.as_ref()
    }
    /// Everything observed about the call.
    pub fn record(&self) -> &CallRecord {
        &self.record
    }
    /// The call's outcome in Pay-i's `xproxy_result` shape (cost, limit states).
    pub fn xproxy_result(&self) -> XProxyResult {
        XProxyResult::from_record(&self.record)
    }
    /// Splits into status, headers and body.
    pub fn into_parts(self) -> (StatusCode, HeaderMap, Bytes) {
        (self.status, self.headers, self.body)
    }
}

impl Client {
    /// Starts a builder.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A client for `base_url` with `api_key`, all else default.
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> Result<Self, BuildError> {
        Self::builder().base_url(base_url).api_key(api_key).build()
    }

    /// The observation pipeline this client feeds.
    pub fn meter(&self) -> &Meter {
        &self.inner.meter
    }

    async fn start(
        &self,
        body: &impl Serialize,
        annotations: &Annotations,
        stream: bool,
    ) -> Result<(Call, reqwest::RequestBuilder, bool), CallError> {
        let bytes = serde_json::to_vec(body).map_err(|e| CallError::InvalidRequest(e.to_string()))?;
        let prepared = self.inner.meter.prepare_for(self.inner.api, bytes, Some(stream))?;
        let mut call = self
            .inner
            .meter
            .start(self.inner.server.clone(), annotations, prepared.facts);
        if let Err(refusal) = call.admit(prepared.body.len()).await {
            let record = call.refuse(&refusal);
            return Err(CallError::refused(refusal, record));
        }
        let mut headers = self.inner.headers.clone();
        call.inject_trace_context(&mut headers);
        if self.inner.send_annotation_headers {
            annotations.write_headers(&mut headers);
        }
        let mut req = self
            .inner
            .http
            .post(self.inner.chat_url.clone())
            .headers(headers)
            .body(prepared.body);
        if let (false, Some(t)) = (stream, self.inner.timeout) {
            req = req.timeout(t);
        }
        Ok((call, req, prepared.hide_usage_chunk))
    }

    /// Sends a non-streaming chat completion. Provider errors come back as a response with the
    /// provider's status and body; `Err` means no answer arrived.
    pub async fn chat(&self, body: &impl Serialize, annotations: &Annotations) -> Result<ChatResponse, CallError> {
        let (call, req, _) = self.start(body, annotations, false).await?;
        let result = async {
            let resp = req.send().await?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        }
        .instrument(call.span().clone())
        .await;
        match result {
            Ok((status, headers, body)) => {
                let record = call.finish_body(status, &headers, &body);
                Ok(ChatResponse {
                    status,
                    headers,
                    body,
                    record,
                })
            }
            Err(e) => {
                let err = CallError::from(e);
                call.fail(err.error_type());
                Err(err)
            }
        }
    }

    /// Sends a streaming chat completion (the body must have `"stream": true`). The returned
    /// stream yields the provider's bytes as they arrive; the call's span and record end when
    /// the stream ends, fails, or is dropped (then `error.type` is `cancelled`).
    pub async fn chat_stream(&self, body: &impl Serialize, annotations: &Annotations) -> Result<ChatStream, CallError> {
        let (call, req, hide) = self.start(body, annotations, true).await?;
        let sent = Instant::now();
        match req.send().instrument(call.span().clone()).await {
            Ok(resp) => {
                let (status, headers) = (resp.status(), resp.headers().clone());
                Ok(call.observe_stream(status, headers, resp.bytes_stream(), sent, hide))
            }
            Err(e) => {
                let err = CallError::from(e);
                call.fail(err.error_type());
                Err(err)
            }
        }
    }
}
