//! The observing proxy: OpenAI-, Anthropic- and Azure-OpenAI-compatible, and Pay-i-compatible
//! (proxy routing).
//!
//! Observed calls, each on its native path and under Pay-i's proxy prefix:
//!
//! | API | native path | Pay-i's path | upstream |
//! |---|---|---|---|
//! | OpenAI Chat Completions | `/v1/chat/completions` | `/api/v1/proxy/openai/v1/chat/completions` | `upstream` |
//! | OpenAI Responses | `/v1/responses` | `/api/v1/proxy/openai/v1/responses` | `upstream` |
//! | Anthropic Messages | `/v1/messages` | `/api/v1/proxy/anthropic/v1/messages` | `anthropic_upstream` |
//! | Azure OpenAI | `/openai/deployments/{deployment}/chat/completions`, `/openai/v1/chat/completions` | the same under `/api/v1/proxy/azure.openai` | `azure_openai_upstream` |
//!
//! For each: `xProxy-*` headers become the call's annotations (invalid ones get a 400 that
//! names the header, and nothing is forwarded), the request goes to the upstream without them,
//! and the provider's status, headers and body come back, a JSON body with a sibling
//! `xproxy_result`, a stream chunk by chunk with `xproxy_result` on the usage chunk when the
//! caller asked for usage, else on the chunk with the finish reason (every chunk the caller
//! gets keeps its `choices`); Anthropic and Responses streams carry it on their terminal event.
//! Block limits refuse calls before the provider sees them. Every other request of those
//! providers (`/v1/*`, `/v1/messages/*`, `/openai/*`, and under Pay-i's prefixes) is forwarded
//! untouched.
//!
//! A request may choose another upstream with `xProxy-Provider-BaseUri`, only one of
//! `allowed_upstreams`, and only at a public address unless `allow_private_upstreams` is set:
//! the addresses a chosen upstream connects to are checked at every new connection (a refusal
//! is a 400 naming the header). The configured upstreams connect anywhere.
//!
//! Provider credentials (`Authorization`, `x-api-key`, `api-key`, `anthropic-version`) go
//! upstream as the client sent them. Secrets (those, `xProxy-Api-Key`, a configured upstream
//! key) are never recorded.

pub mod config;

mod admin;
mod base;
mod guard;
mod headers;
mod rejection;
mod repoll;
mod routes;
mod settings;
mod splicing;
mod upstream;
mod whole_body;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use http::HeaderValue;

use llm_meter::{names, BuildError, Meter};

pub use admin::{admin_router, spawn_admin};
pub use rejection::Rejection;
pub use settings::{ProxySettings, DEFAULT_HEADER_READ_TIMEOUT};

/// Pay-i's proxy route prefix for OpenAI (`payi_openai_url(payi_base_url=…)`).
pub const PAYI_OPENAI_PREFIX: &str = "/api/v1/proxy/openai";

/// Pay-i's proxy route prefix for Anthropic (`payi_anthropic_url()`).
pub const PAYI_ANTHROPIC_PREFIX: &str = "/api/v1/proxy/anthropic";

/// Pay-i's proxy route prefix for Azure OpenAI (`payi_azure_openai_url()`).
pub const PAYI_AZURE_OPENAI_PREFIX: &str = "/api/v1/proxy/azure.openai";

/// Header choosing another upstream for one request (only from the allow-list).
pub const HEADER_PROVIDER_BASE_URI: &str = names::HEADER_PROVIDER_BASE_URI;

/// The proxy: settings, the observation pipeline, and a pooled upstream client.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<ProxyInner>,
}

struct ProxyInner {
    settings: ProxySettings,
    meter: Meter,
    http: upstream::Upstream,
    upstream_auth: Option<HeaderValue>,
    bases: Bases,
}

/// The configured upstreams, taken apart once.
struct Bases {
    openai: base::Base,
    anthropic: base::Base,
    azure_openai: Option<base::Base>,
}

impl Bases {
    fn new(settings: &ProxySettings) -> Result<Self, BuildError> {
        let base = |what: &'static str, url: &reqwest::Url, provider| {
            base::Base::new(url, provider).ok_or_else(|| BuildError::ApiBase {
                what,
                url: url.to_string(),
                why: "not a URI an HTTP request can carry",
            })
        };
        Ok(Bases {
            openai: base("upstream", &settings.upstream, routes::Provider::OpenAi.name())?,
            anthropic: base(
                "anthropic_upstream",
                &settings.anthropic_upstream,
                routes::Provider::Anthropic.name(),
            )?,
            azure_openai: settings
                .azure_openai_upstream
                .as_ref()
                .map(|url| base("azure_openai_upstream", url, routes::Provider::AzureOpenAi.name()))
                .transpose()?,
        })
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("upstream", &self.inner.settings.upstream.as_str())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy with `settings`, observing through `meter` (block limits are always enforced).
    pub fn new(settings: ProxySettings, meter: Meter) -> Result<Self, BuildError> {
        llm_meter::parse_api_base(settings.upstream.as_str()).map_err(|why| BuildError::ApiBase {
            what: "upstream",
            url: settings.upstream.to_string(),
            why,
        })?;
        let bases = Bases::new(&settings)?;
        let http = upstream::Upstream::new(&settings)?;
        let upstream_auth = match &settings.upstream_api_key {
            Some(key) => Some(llm_meter::bearer(key).ok_or(BuildError::ApiKey {
                what: "upstream_api_key",
            })?),
            None => None,
        };
        Ok(Proxy {
            inner: Arc::new(ProxyInner {
                settings,
                meter: meter.enforcing_limits(),
                http,
                upstream_auth,
                bases,
            }),
        })
    }

    /// The meter calls are observed with.
    pub fn meter(&self) -> &Meter {
        &self.inner.meter
    }

    /// The proxy as an axum service, to embed in an application's router: every path goes
    /// through the proxy's own route table (observed calls on OpenAI's, Anthropic's and Azure
    /// OpenAI's paths and Pay-i's prefixes, every other request of those APIs forwarded, 404
    /// for the rest).
    pub fn router(self) -> Router {
        Router::new().fallback(routes::handle_state).with_state(self)
    }

    /// Serves the proxy on `listener` until the future is dropped.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        self.serve_until(listener, std::future::pending(), std::time::Duration::ZERO)
            .await
            .map(|_| ())
    }

    /// Serves on `listener` until `shutdown` completes, then stops accepting connections and
    /// lets the requests and streams in flight finish for at most `grace`; the connections still
    /// open then are closed (streams cut that way are recorded as `cancelled`). Returns `true`
    /// when everything in flight finished within the grace period.
    pub async fn serve_until(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
        grace: std::time::Duration,
    ) -> std::io::Result<bool> {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut connections = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little instead of spinning.
                        tracing::warn!(target: "llm_meter", "accepting a connection failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            // Straight to the route table: no router or tower layers per request. The call's
            // future is boxed, so it is freed once the response (or a stream's head) is out;
            // inline, hyper keeps its room in the connection for as long as it is open.
            let proxy = self.clone();
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let proxy = proxy.clone();
                Box::pin(async move {
                    Ok::<_, std::convert::Infallible>(routes::handle(&proxy, request.map(axum::body::Body::new)).await)
                })
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(self.inner.settings.header_read_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let connection = repoll::Repoll::new(graceful.watch(connection));
            connections.spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(target: "llm_meter", "connection ended: {e}");
                }
            });
            while connections.try_join_next().is_some() {}
        }
        drop(listener);
        let finished = tokio::time::timeout(grace, graceful.shutdown()).await.is_ok();
        if !finished {
            tracing::warn!(target: "llm_meter", "grace period of {grace:?} over: closing the connections still open");
        }
        connections.abort_all();
        while connections.join_next().await.is_some() {}
        Ok(finished)
    }

    /// True when the upstream accepts a TCP connection within `timeout` (the readiness check).
    pub async fn upstream_reachable(&self, timeout: std::time::Duration) -> bool {
        let url = &self.inner.settings.upstream;
        let Some(host) = url.host_str() else {
            return false;
        };
        let port = url.port_or_known_default().unwrap_or(443);
        matches!(
            tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await,
            Ok(Ok(_))
        )
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

/// What the proxy records of each call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Observation {
    /// Metrics, plus spans when they go somewhere ([`llm_meter::Telemetry::spans_exported`]:
    /// OTLP trace export on and a sampler that can record). The default.
    #[default]
    Auto,
    /// Metrics and spans, exported or not.
    Full,
    /// Metrics only.
    Metrics,
    /// Nothing: calls are still priced, limited and answered with `xproxy_result`.
    Off,
}

impl Observation {
    fn metrics(self) -> bool {
        self != Observation::Off
    }
    fn spans(self, telemetry: &llm_meter::Telemetry) -> bool {
        match self {
            Observation::Auto => telemetry.spans_exported(),
            Observation::Full => true,
            Observation::Metrics | Observation::Off => false,
        }
    }
}

/// A proxy assembled from a configuration file: prices, limits (on the Redis ledger when
/// `[ledger] redis` is set, else in memory restored from its snapshot), model defaults and label
/// policy, observing into `telemetry` as `observation` says. Call it inside a tokio runtime.
pub fn from_config(
    config: &crate::config::Config,
    upstream: Option<&str>,
    telemetry: &llm_meter::Telemetry,
    observation: Observation,
) -> Result<(Proxy, crate::config::ConfiguredLedger), Box<dyn std::error::Error + Send + Sync>> {
    let ledger = config.shared_ledger()?;
    let meter = if observation.metrics() {
        telemetry.meter_builder()
    } else {
        Meter::builder()
    };
    let mut meter = meter
        .spans(observation.spans(telemetry))
        .prices(config.prices()?)
        .ledger(ledger.shared());
    for (model, defaults) in config.model_defaults_json() {
        meter = meter.model_defaults(model, defaults);
    }
    let proxy = Proxy::new(config.proxy_settings(upstream)?, meter.build()?)?;
    Ok((proxy, ledger))
}
