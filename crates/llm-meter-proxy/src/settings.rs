//! What a proxy is set up with: where calls go, which keys it accepts, limits on bodies and waits.

use std::time::Duration;

/// Anthropic's API origin, the default `anthropic_upstream`.
pub const DEFAULT_ANTHROPIC_URL: &str = "https://api.anthropic.com";

/// The default `header_read_timeout`: hyper's.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Proxy settings. [`Default`] is OpenAI's API, no proxy keys, 8 MiB bodies and the library's
/// default timeouts; the configuration file ([`crate::config`]) fills them from TOML.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// Where OpenAI calls go (Chat Completions, Responses, every other `/v1/*` request): an
    /// OpenAI-compatible API base (`https://api.openai.com/v1`).
    pub upstream: reqwest::Url,
    /// Where Anthropic Messages calls go: the API's origin, below which its paths start with
    /// `/v1` (`https://api.anthropic.com`).
    pub anthropic_upstream: reqwest::Url,
    /// Where Azure OpenAI calls go: the resource's endpoint, below which its paths start with
    /// `/openai` (`https://my-resource.openai.azure.com`); `None`: the Azure routes answer 502.
    pub azure_openai_upstream: Option<reqwest::Url>,
    /// Other API bases a request may choose with `xProxy-Provider-BaseUri` (instead of its
    /// route's upstream).
    pub allowed_upstreams: Vec<reqwest::Url>,
    /// Lets an upstream chosen with `xProxy-Provider-BaseUri` connect to a loopback, private,
    /// link-local (cloud metadata services), unique-local, unspecified or CGNAT address. Off by
    /// default: such a choice is refused (400), checked on the addresses its name resolves to at
    /// every new connection. The configured upstreams connect anywhere either way.
    pub allow_private_upstreams: bool,
    /// Keys accepted in `xProxy-Api-Key`; empty: no proxy auth.
    pub keys: Vec<String>,
    /// Replaces the client's `Authorization` on OpenAI calls when set. On Anthropic and Azure
    /// routes every credential (`Authorization`, which recent Anthropic SDKs send, `x-api-key`,
    /// `api-key`) goes up as the client sent it.
    pub upstream_api_key: Option<String>,
    /// Largest request body accepted.
    pub body_limit: usize,
    /// Longest wait for a whole non-streaming answer.
    pub timeout: Duration,
    /// Longest wait to connect upstream.
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of an upstream answer (bounds a stalled stream).
    pub read_timeout: Duration,
    /// Longest wait for a client's request head (request line and headers), counted from
    /// when the connection is ready for one: a new connection, or the end of the previous
    /// answer on a kept-alive one. A connection whose head is not complete by then is closed,
    /// so a client cannot hold one open by sending its head slowly, and a kept-alive connection
    /// left idle that long is closed too. Default 30 s.
    pub header_read_timeout: Duration,
}

impl Default for ProxySettings {
    #[expect(clippy::expect_used, reason = "a constant URL that parses (tests use the default)")]
    fn default() -> Self {
        ProxySettings {
            upstream: llm_meter::parse_api_base(llm_meter::DEFAULT_BASE_URL).expect("valid default"),
            anthropic_upstream: llm_meter::parse_api_base(DEFAULT_ANTHROPIC_URL).expect("valid default"),
            azure_openai_upstream: None,
            allowed_upstreams: Vec::new(),
            allow_private_upstreams: false,
            keys: Vec::new(),
            upstream_api_key: None,
            body_limit: 8 * 1024 * 1024,
            timeout: llm_meter::DEFAULT_TIMEOUT,
            connect_timeout: llm_meter::DEFAULT_CONNECT_TIMEOUT,
            read_timeout: llm_meter::DEFAULT_READ_TIMEOUT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
        }
    }
}
