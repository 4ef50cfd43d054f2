//! The proxy's routes: observed calls (OpenAI Chat Completions and Responses, Anthropic
//! Messages, Azure OpenAI chat completions; each on its native path and Pay-i's proxy path) and
//! every other request of those providers forwarded as it is.

use std::borrow::Cow;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_body_util::BodyExt;

use llm_meter::{names, Annotations, Api, Server, XProxyResult};

use crate::headers::{authorize, prepare_upstream_headers, remove_hop_by_hop};
use crate::rejection::Rejection;
use crate::settings::ProxySettings;
use crate::splicing::with_xproxy_result;
use crate::{Proxy, ProxyInner, PAYI_ANTHROPIC_PREFIX, PAYI_AZURE_OPENAI_PREFIX, PAYI_OPENAI_PREFIX};

/// The providers the proxy has routes for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Provider {
    /// OpenAI (and OpenAI-compatible APIs): `upstream`, paths below `/v1`.
    OpenAi,
    /// Anthropic: `anthropic_upstream`, paths from `/v1`.
    Anthropic,
    /// Azure OpenAI: `azure_openai_upstream`, paths from `/openai`.
    AzureOpenAi,
}

impl Provider {
    /// Pay-i's proxy prefix of its routes.
    fn payi_prefix(self) -> &'static str {
        match self {
            Provider::OpenAi => PAYI_OPENAI_PREFIX,
            Provider::Anthropic => PAYI_ANTHROPIC_PREFIX,
            Provider::AzureOpenAi => PAYI_AZURE_OPENAI_PREFIX,
        }
    }

    /// `gen_ai.provider.name`, when the route decides it (OpenAI's is the meter's, `openai` by
    /// default, since an OpenAI-compatible upstream may be another provider).
    fn name(self) -> Option<&'static str> {
        match self {
            Provider::OpenAi => None,
            Provider::Anthropic => Some(names::PROVIDER_ANTHROPIC),
            Provider::AzureOpenAi => Some(names::PROVIDER_AZURE_OPENAI),
        }
    }

    /// The configured upstream of this provider.
    fn upstream(self, settings: &ProxySettings) -> Result<&reqwest::Url, Rejection> {
        match self {
            Provider::OpenAi => Ok(&settings.upstream),
            Provider::Anthropic => Ok(&settings.anthropic_upstream),
            Provider::AzureOpenAi => settings
                .azure_openai_upstream
                .as_ref()
                .ok_or(Rejection::NoUpstream("azure_openai")),
        }
    }

    /// The path below the upstream for a request `path` (Pay-i's prefix removed): OpenAI's
    /// upstream is an API base that ends in `/v1`; the others are origins.
    fn upstream_path(self, path: &str) -> &str {
        let rest = path.strip_prefix(self.payi_prefix()).unwrap_or(path);
        match self {
            Provider::OpenAi => rest.strip_prefix("/v1").unwrap_or(rest),
            Provider::Anthropic | Provider::AzureOpenAi => rest,
        }
    }
}

/// The upstream this request goes to: its provider's, or an allowed one it chose.
fn upstream_base<'a>(
    settings: &'a ProxySettings,
    provider: Provider,
    headers: &HeaderMap,
) -> Result<Cow<'a, reqwest::Url>, Rejection> {
    let configured = provider.upstream(settings)?;
    let Some(chosen) = headers.get(names::HEADER_PROVIDER_BASE_URI) else {
        return Ok(Cow::Borrowed(configured));
    };
    let text = chosen
        .to_str()
        .map_err(|_| Rejection::InvalidUpstreamChoice("not valid text"))?;
    let url =
        reqwest::Url::parse(text.trim_end_matches('/')).map_err(|_| Rejection::InvalidUpstreamChoice("not a URL"))?;
    let same = |a: &reqwest::Url| a.as_str().trim_end_matches('/') == url.as_str().trim_end_matches('/');
    if same(configured) || settings.allowed_upstreams.iter().any(same) {
        Ok(Cow::Owned(url))
    } else {
        Err(Rejection::InvalidUpstreamChoice("not in the proxy's allowed upstreams"))
    }
}

/// The upstream URI for `rest` (a path below the API base) and the caller's query.
fn join(base: &reqwest::Url, rest: &str, query: Option<&str>) -> Result<Uri, Rejection> {
    let mut uri = format!(
        "{}/{}",
        base.as_str().trim_end_matches('/'),
        rest.trim_start_matches('/')
    );
    if let Some(q) = query {
        uri.push('?');
        uri.push_str(q);
    }
    Uri::try_from(uri).map_err(|_| Rejection::InvalidPath)
}

fn upstream_request(method: Method, uri: Uri, headers: HeaderMap, body: Body) -> http::Request<Body> {
    let mut request = http::Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    request
}

/// A response with the upstream's status and headers (hop-by-hop ones removed) and `body`.
fn downstream(status: StatusCode, mut headers: HeaderMap, body: Body) -> Response {
    remove_hop_by_hop(&mut headers);
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// `POST` on OpenAI's chat completions path: an observed call.
pub(crate) async fn chat(State(proxy): State<Proxy>, request: Request) -> Response {
    observe(&proxy, request, Provider::OpenAi, Api::ChatCompletions).await
}

/// `POST` on OpenAI's responses path: an observed call.
pub(crate) async fn responses(State(proxy): State<Proxy>, request: Request) -> Response {
    observe(&proxy, request, Provider::OpenAi, Api::Responses).await
}

/// `POST` on Anthropic's messages path: an observed call.
pub(crate) async fn messages(State(proxy): State<Proxy>, request: Request) -> Response {
    observe(&proxy, request, Provider::Anthropic, Api::AnthropicMessages).await
}

/// `POST` on an Azure OpenAI chat completions path (a deployment's, or the v1 API's).
pub(crate) async fn azure_chat(State(proxy): State<Proxy>, request: Request) -> Response {
    observe(&proxy, request, Provider::AzureOpenAi, Api::ChatCompletions).await
}

async fn observe(proxy: &Proxy, request: Request, provider: Provider, api: Api) -> Response {
    // The server span is the call span's explicit parent: no span is entered on every poll.
    // Its route is the path template (an Azure deployment's name is not in it).
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| request.uri().path(), MatchedPath::as_str);
    let span = proxy
        .inner
        .meter
        .server_span(request.method().as_str(), route, request.headers());
    match observed(&proxy.inner, request, provider, api, span.as_ref()).await {
        Ok(response) => response,
        Err(rejection) => rejection.into_response(),
    }
}

/// The deployment named by an Azure OpenAI path (`/openai/deployments/{deployment}/…`).
fn azure_deployment(path: &str) -> Option<&str> {
    let (_, rest) = path.split_once("/openai/deployments/")?;
    rest.split('/').next().filter(|d| !d.is_empty())
}

async fn observed(
    inner: &ProxyInner,
    request: Request,
    provider: Provider,
    api: Api,
    server_span: Option<&llm_meter::ServerSpan>,
) -> Result<Response, Rejection> {
    let settings = &inner.settings;
    let (parts, body) = request.into_parts();
    authorize(settings, &parts.headers)?;
    let annotations = Annotations::from_headers(&parts.headers).map_err(Rejection::InvalidAnnotation)?;
    let base = upstream_base(settings, provider, &parts.headers)?;
    let url = join(&base, provider.upstream_path(parts.uri.path()), parts.uri.query())?;
    let body = axum::body::to_bytes(body, settings.body_limit)
        .await
        .map_err(|_| Rejection::BodyTooLarge(settings.body_limit))?;
    let mut headers = parts.headers;
    let upstream_auth = inner.upstream_auth.as_ref().filter(|_| provider == Provider::OpenAi);
    prepare_upstream_headers(&mut headers, upstream_auth, true);
    let mut prepared = match inner.meter.prepare_for(api, body.clone(), None) {
        Ok(p) => p,
        // Not a JSON object: the provider says what is wrong with it; nothing to observe.
        Err(_) => return relay(inner, upstream_request(Method::POST, url, headers, Body::from(body))).await,
    };
    if prepared.facts.model.is_empty() {
        // Azure OpenAI names the deployment in the path, not the model in the body.
        if let Some(deployment) = azure_deployment(parts.uri.path()) {
            prepared.facts.model = deployment.to_owned();
        }
    }
    let stream = prepared.facts.stream;
    let mut server = Server::of(&base);
    if let Some(name) = provider.name() {
        server = server.with_provider(name);
    }
    let mut call = inner
        .meter
        .start_under(server_span, server, &annotations, prepared.facts);
    if let Err(refusal) = call.admit(prepared.body.len()).await {
        return Err(Rejection::refused(call, refusal));
    }
    call.inject_trace_context(&mut headers);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let request = upstream_request(Method::POST, url, headers, Body::from(prepared.body));
    let sent = Instant::now();
    if !stream {
        let (parts, body) = match inner.http.send_and_read(request, settings.timeout).await {
            Ok(answer) => answer,
            Err(e) => {
                let kind = e.kind();
                call.fail(kind);
                return Err(Rejection::from(&e));
            }
        };
        let record = call.finish_body(parts.status, &parts.headers, &body);
        let body = if parts.status.is_success() {
            match with_xproxy_result(&body, &XProxyResult::from_record(&record)) {
                Some(extended) => Bytes::from(extended),
                None => body,
            }
        } else {
            body
        };
        return Ok(downstream(parts.status, parts.headers, Body::from(body)));
    }
    let response = match inner.http.send(request).await {
        Ok(r) => r,
        Err(e) => {
            let kind = e.kind();
            call.fail(kind);
            return Err(Rejection::from(&e));
        }
    };
    let (parts, body) = response.into_parts();
    if !parts.status.is_success() {
        // An error answer to a stream request is a JSON body: observed whole, like any answer.
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                let kind = e.kind();
                call.fail(kind);
                return Err(Rejection::from(&e));
            }
        };
        call.finish_body(parts.status, &parts.headers, &body);
        return Ok(downstream(parts.status, parts.headers, Body::from(body)));
    }
    let observed = call
        .observe_stream(
            parts.status,
            parts.headers.clone(),
            body.into_data_stream(),
            sent,
            prepared.hide_usage_chunk,
        )
        .with_outcome_field(names::XPROXY_RESULT, |record| {
            XProxyResult::from_record(record).to_json_bytes()
        });
    Ok(downstream(parts.status, parts.headers, Body::from_stream(observed)))
}

/// Sends `request` and relays the upstream's answer as it comes, unobserved.
async fn relay(inner: &ProxyInner, request: http::Request<Body>) -> Result<Response, Rejection> {
    let response = inner.http.send(request).await.map_err(|e| Rejection::from(&e))?;
    let (parts, body) = response.into_parts();
    Ok(downstream(parts.status, parts.headers, Body::new(body)))
}

/// Any other OpenAI request (`/v1/*`): forwarded as it is (minus `xProxy-*` and hop-by-hop
/// headers).
pub(crate) async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
    forward_to(&proxy, request, Provider::OpenAi).await
}

/// Any other Anthropic request (`/v1/messages/*`, Pay-i's `/api/v1/proxy/anthropic/*`).
pub(crate) async fn forward_anthropic(State(proxy): State<Proxy>, request: Request) -> Response {
    forward_to(&proxy, request, Provider::Anthropic).await
}

/// Any other Azure OpenAI request (`/openai/*`, Pay-i's `/api/v1/proxy/azure.openai/*`).
pub(crate) async fn forward_azure(State(proxy): State<Proxy>, request: Request) -> Response {
    forward_to(&proxy, request, Provider::AzureOpenAi).await
}

async fn forward_to(proxy: &Proxy, request: Request, provider: Provider) -> Response {
    match forwarded(&proxy.inner, request, provider).await {
        Ok(response) => response,
        Err(rejection) => rejection.into_response(),
    }
}

async fn forwarded(inner: &ProxyInner, request: Request, provider: Provider) -> Result<Response, Rejection> {
    let (parts, body) = request.into_parts();
    authorize(&inner.settings, &parts.headers)?;
    let base = upstream_base(&inner.settings, provider, &parts.headers)?;
    let url = join(&base, provider.upstream_path(parts.uri.path()), parts.uri.query())?;
    let mut headers = parts.headers;
    let upstream_auth = inner.upstream_auth.as_ref().filter(|_| provider == Provider::OpenAi);
    prepare_upstream_headers(&mut headers, upstream_auth, false);
    relay(inner, upstream_request(parts.method, url, headers, body)).await
}
