//! The proxy's routes: observed calls (OpenAI Chat Completions and Responses, Anthropic
//! Messages, Azure OpenAI chat completions; each on its native path and Pay-i's proxy path) and
//! every other request of those providers forwarded as it is.

use std::borrow::Cow;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};

use llm_meter::{names, Annotations, Api, XProxyResult};

use crate::base::Base;
use crate::headers::{authorize, prepare_upstream_headers, remove_hop_by_hop};
use crate::rejection::Rejection;
use crate::splicing::with_xproxy_result;
use crate::whole_body::{read_whole, read_within, ReadError};
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
    pub(crate) fn name(self) -> Option<&'static str> {
        match self {
            Provider::OpenAi => None,
            Provider::Anthropic => Some(names::PROVIDER_ANTHROPIC),
            Provider::AzureOpenAi => Some(names::PROVIDER_AZURE_OPENAI),
        }
    }

    /// The configured upstream of this provider, taken apart.
    fn base(self, inner: &ProxyInner) -> Result<&Base, Rejection> {
        match self {
            Provider::OpenAi => Ok(&inner.bases.openai),
            Provider::Anthropic => Ok(&inner.bases.anthropic),
            Provider::AzureOpenAi => inner
                .bases
                .azure_openai
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
    inner: &'a ProxyInner,
    provider: Provider,
    headers: &HeaderMap,
) -> Result<Cow<'a, Base>, Rejection> {
    let configured = provider.base(inner)?;
    let Some(chosen) = headers.get(names::HEADER_PROVIDER_BASE_URI) else {
        return Ok(Cow::Borrowed(configured));
    };
    let text = chosen
        .to_str()
        .map_err(|_| Rejection::InvalidUpstreamChoice("not valid text"))?;
    let url =
        reqwest::Url::parse(text.trim_end_matches('/')).map_err(|_| Rejection::InvalidUpstreamChoice("not a URL"))?;
    let same = |a: &reqwest::Url| a.as_str().trim_end_matches('/') == url.as_str().trim_end_matches('/');
    if !(same(configured.url()) || inner.settings.allowed_upstreams.iter().any(same)) {
        return Err(Rejection::InvalidUpstreamChoice("not in the proxy's allowed upstreams"));
    }
    Base::new(&url, provider.name())
        .map(Cow::Owned)
        .ok_or(Rejection::InvalidUpstreamChoice("not a URL"))
}

/// The upstream URI for `rest` (a path below the API base) and the caller's query.
fn join(base: &Base, rest: &str, query: Option<&str>) -> Result<Uri, Rejection> {
    base.uri(rest, query).ok_or(Rejection::InvalidPath)
}

/// The request to the upstream at `base`, with its `Host` header.
fn upstream_request(method: Method, base: &Base, uri: Uri, mut headers: HeaderMap, body: Body) -> http::Request<Body> {
    headers.insert(header::HOST, base.host().clone());
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

/// What a request is, by its method and path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// An observed call of `api` to `provider`; `template` is its path template (`http.route`).
    Observe {
        provider: Provider,
        api: Api,
        template: &'static str,
    },
    /// Any other request of `provider`'s API: forwarded unobserved.
    Forward(Provider),
}

/// The observed paths, each on its native path and under its Pay-i prefix (checked against
/// the `PAYI_*` constants in the tests). Other methods on them are forwarded.
const OBSERVED: [(&str, Provider, Api); 8] = [
    ("/v1/chat/completions", Provider::OpenAi, Api::ChatCompletions),
    (
        "/api/v1/proxy/openai/v1/chat/completions",
        Provider::OpenAi,
        Api::ChatCompletions,
    ),
    ("/v1/responses", Provider::OpenAi, Api::Responses),
    ("/api/v1/proxy/openai/v1/responses", Provider::OpenAi, Api::Responses),
    ("/v1/messages", Provider::Anthropic, Api::AnthropicMessages),
    (
        "/api/v1/proxy/anthropic/v1/messages",
        Provider::Anthropic,
        Api::AnthropicMessages,
    ),
    (
        "/openai/v1/chat/completions",
        Provider::AzureOpenAi,
        Api::ChatCompletions,
    ),
    (
        "/api/v1/proxy/azure.openai/openai/v1/chat/completions",
        Provider::AzureOpenAi,
        Api::ChatCompletions,
    ),
];

/// Azure OpenAI's deployment paths (`{deployment}`: one path segment, which may be empty, as
/// axum's router matched it), native and under Pay-i's prefix: `(prefix, template)`.
const AZURE_DEPLOYMENTS: [(&str, &str); 2] = [
    ("", "/openai/deployments/{deployment}/chat/completions"),
    (
        PAYI_AZURE_OPENAI_PREFIX,
        "/api/v1/proxy/azure.openai/openai/deployments/{deployment}/chat/completions",
    ),
];

/// Forwarded path prefixes (each followed by at least one character), most specific first.
const FORWARDED: [(&str, Provider); 6] = [
    ("/v1/messages/", Provider::Anthropic),
    ("/api/v1/proxy/anthropic/", Provider::Anthropic),
    ("/v1/", Provider::OpenAi),
    ("/api/v1/proxy/openai/v1/", Provider::OpenAi),
    ("/openai/", Provider::AzureOpenAi),
    ("/api/v1/proxy/azure.openai/openai/", Provider::AzureOpenAi),
];

/// The route of a request: static string comparisons, no allocation. `None` is a 404.
pub(crate) fn route(method: &Method, path: &str) -> Option<Route> {
    let post = method == Method::POST;
    let observed = |provider, api, template| {
        Some(if post {
            Route::Observe {
                provider,
                api,
                template,
            }
        } else {
            Route::Forward(provider)
        })
    };
    if let Some((template, provider, api)) = OBSERVED.iter().find(|(t, _, _)| *t == path) {
        return observed(*provider, *api, *template);
    }
    for (prefix, template) in AZURE_DEPLOYMENTS {
        let deployment = path
            .strip_prefix(prefix)
            .and_then(|p| p.strip_prefix("/openai/deployments/"))
            .and_then(|p| p.strip_suffix("/chat/completions"));
        if deployment.is_some_and(|d| !d.contains('/')) {
            return observed(Provider::AzureOpenAi, Api::ChatCompletions, template);
        }
    }
    FORWARDED
        .iter()
        .find(|(prefix, _)| path.strip_prefix(prefix).is_some_and(|rest| !rest.is_empty()))
        .map(|(_, provider)| Route::Forward(*provider))
}

/// Every request: routed by [`route`], observed or forwarded; 404 (empty) for other paths.
pub(crate) async fn handle(proxy: &Proxy, request: Request) -> Response {
    match route(request.method(), request.uri().path()) {
        Some(Route::Observe {
            provider,
            api,
            template,
        }) => observe(proxy, request, provider, api, template).await,
        Some(Route::Forward(provider)) => forward_to(proxy, request, provider).await,
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// [`handle`] as an axum handler (the proxy's [`Proxy::router`]).
pub(crate) async fn handle_state(State(proxy): State<Proxy>, request: Request) -> Response {
    handle(&proxy, request).await
}

async fn observe(proxy: &Proxy, request: Request, provider: Provider, api: Api, template: &'static str) -> Response {
    // The server span is the call span's explicit parent: no span is entered on every poll.
    // Its route is the path template (an Azure deployment's name is not in it).
    let span = proxy
        .inner
        .meter
        .server_span(request.method().as_str(), template, request.headers());
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
    let base = upstream_base(inner, provider, &parts.headers)?;
    let url = join(&base, provider.upstream_path(parts.uri.path()), parts.uri.query())?;
    let body = read_within(body, settings.body_limit).await.map_err(|e| match e {
        ReadError::TooLarge(limit) => Rejection::BodyTooLarge(limit),
        ReadError::Failed(_) => Rejection::BodyUnreadable,
    })?;
    let mut headers = parts.headers;
    let upstream_auth = inner.upstream_auth.as_ref().filter(|_| provider == Provider::OpenAi);
    prepare_upstream_headers(&mut headers, upstream_auth, true);
    let mut prepared = match inner.meter.prepare_for(api, body.clone(), None) {
        Ok(p) => p,
        // Not a JSON object: the provider says what is wrong with it; nothing to observe.
        Err(_) => {
            return relay(
                inner,
                upstream_request(Method::POST, &base, url, headers, Body::from(body)),
            )
            .await
        }
    };
    if prepared.facts.model.is_empty() {
        // Azure OpenAI names the deployment in the path, not the model in the body.
        if let Some(deployment) = azure_deployment(parts.uri.path()) {
            prepared.facts.model = deployment.to_owned();
        }
    }
    let stream = prepared.facts.stream;
    let mut call = inner
        .meter
        .start_under(server_span, base.server().clone(), &annotations, prepared.facts);
    if let Err(refusal) = call.admit(prepared.body.len()).await {
        return Err(Rejection::refused(call, refusal));
    }
    call.inject_trace_context(&mut headers);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let request = upstream_request(Method::POST, &base, url, headers, Body::from(prepared.body));
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
            match with_xproxy_result(&body, &record) {
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
        let body = match read_whole(body).await {
            Ok(b) => b,
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
        .with_outcome_field(names::XPROXY_RESULT, XProxyResult::record_json_bytes);
    Ok(downstream(parts.status, parts.headers, Body::from_stream(observed)))
}

/// Sends `request` and relays the upstream's answer as it comes, unobserved.
async fn relay(inner: &ProxyInner, request: http::Request<Body>) -> Result<Response, Rejection> {
    let response = inner.http.send(request).await.map_err(|e| Rejection::from(&e))?;
    let (parts, body) = response.into_parts();
    Ok(downstream(parts.status, parts.headers, Body::new(body)))
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
    let base = upstream_base(inner, provider, &parts.headers)?;
    let url = join(&base, provider.upstream_path(parts.uri.path()), parts.uri.query())?;
    let mut headers = parts.headers;
    let upstream_auth = inner.upstream_auth.as_ref().filter(|_| provider == Provider::OpenAi);
    prepare_upstream_headers(&mut headers, upstream_auth, false);
    relay(inner, upstream_request(parts.method, &base, url, headers, body)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::MatchedPath;
    use axum::routing::{any, post, MethodRouter};
    use http_body_util::BodyExt;
    use tower_service::Service;

    /// The route table the proxy had as an axum router, with each handler answering what it
    /// would have done: the specification [`route`] is checked against.
    fn axum_routes() -> axum::Router {
        fn observed(kind: &'static str, forward: &'static str) -> MethodRouter {
            post(move |path: MatchedPath| async move { format!("observe {kind} {}", path.as_str()) })
                .fallback(move || async move { format!("forward {forward}") })
        }
        fn forwarded(kind: &'static str) -> MethodRouter {
            any(move || async move { format!("forward {kind}") })
        }
        let mut router = axum::Router::new();
        for prefix in ["", PAYI_OPENAI_PREFIX] {
            router = router
                .route(
                    &format!("{prefix}/v1/chat/completions"),
                    observed("OpenAi ChatCompletions", "OpenAi"),
                )
                .route(
                    &format!("{prefix}/v1/responses"),
                    observed("OpenAi Responses", "OpenAi"),
                )
                .route(&format!("{prefix}/v1/{{*rest}}"), forwarded("OpenAi"));
        }
        for prefix in ["", PAYI_ANTHROPIC_PREFIX] {
            router = router
                .route(
                    &format!("{prefix}/v1/messages"),
                    observed("Anthropic AnthropicMessages", "Anthropic"),
                )
                .route(&format!("{prefix}/v1/messages/{{*rest}}"), forwarded("Anthropic"));
        }
        router = router.route(&format!("{PAYI_ANTHROPIC_PREFIX}/{{*rest}}"), forwarded("Anthropic"));
        for prefix in ["", PAYI_AZURE_OPENAI_PREFIX] {
            router = router
                .route(
                    &format!("{prefix}/openai/deployments/{{deployment}}/chat/completions"),
                    observed("AzureOpenAi ChatCompletions", "AzureOpenAi"),
                )
                .route(
                    &format!("{prefix}/openai/v1/chat/completions"),
                    observed("AzureOpenAi ChatCompletions", "AzureOpenAi"),
                )
                .route(&format!("{prefix}/openai/{{*rest}}"), forwarded("AzureOpenAi"));
        }
        router
    }

    fn described(route: Option<Route>) -> String {
        match route {
            Some(Route::Observe {
                provider,
                api,
                template,
            }) => format!("observe {provider:?} {api:?} {template}"),
            Some(Route::Forward(provider)) => format!("forward {provider:?}"),
            None => "404".into(),
        }
    }

    #[tokio::test]
    async fn the_route_table_routes_like_the_axum_router_it_replaced() {
        let mut oracle = axum_routes();
        let mut paths = vec![
            "/".to_owned(),
            "/v1".into(),
            "/v1/".into(),
            "/v2/chat/completions".into(),
            "//v1/chat/completions".into(),
            "/v1/chat/completions/".into(),
            "/v1/chat/completions/abc/messages".into(),
            "/v1/models".into(),
            "/v1/models/gpt-4o".into(),
            "/v1/responses/resp_1/input_items".into(),
            "/v1/messages/".into(),
            "/v1/messages/count_tokens".into(),
            "/v1/messages/batches/b_1".into(),
            "/V1/chat/completions".into(),
            "/openai".into(),
            "/openai/".into(),
            "/openai/deployments/gpt4o/chat/completions".into(),
            "/openai/deployments/gpt4o/chat/completions/".into(),
            "/openai/deployments//chat/completions".into(),
            "/openai/deployments/a/b/chat/completions".into(),
            "/openai/deployments/gpt4o/completions".into(),
            "/openai/deployments/gpt4o/embeddings".into(),
            "/openai/v1/chat/completions".into(),
            "/openai/v1/models".into(),
            "/api/v1/proxy/anthropic".into(),
            "/api/v1/proxy/anthropic/".into(),
            "/api/v1/proxy/anthropic/v1/complete".into(),
            "/api/v1/proxy/openai".into(),
            "/api/v1/proxy/openai/chat/completions".into(),
            "/api/v1/proxy/azure.openai/chat/completions".into(),
            "/api/v1/proxy/unknown/v1/chat/completions".into(),
        ];
        for (template, _, _) in OBSERVED {
            paths.push(template.to_owned());
            paths.push(format!("{template}/x"));
        }
        for (prefix, _) in AZURE_DEPLOYMENTS {
            paths.push(format!("{prefix}/openai/deployments/my-deployment/chat/completions"));
            paths.push(format!("{prefix}/openai/deployments/my-deployment/images/generations"));
        }
        for (prefix, _) in FORWARDED {
            paths.push(prefix.to_owned());
            paths.push(format!("{prefix}x"));
            paths.push(format!("{prefix}chat/completions"));
        }
        for path in &paths {
            for method in [Method::POST, Method::GET, Method::DELETE, Method::HEAD] {
                let request = Request::builder()
                    .method(method.clone())
                    .uri(path.as_str())
                    .body(Body::empty())
                    .unwrap();
                let response = oracle.call(request).await.unwrap();
                let expected = if response.status() == StatusCode::NOT_FOUND {
                    "404".to_owned()
                } else {
                    let body = response.into_body().collect().await.unwrap().to_bytes();
                    String::from_utf8(body.to_vec()).unwrap()
                };
                // HEAD answers have no body: compare the route's kind by GET instead.
                if method == Method::HEAD && expected.is_empty() {
                    continue;
                }
                assert_eq!(described(route(&method, path)), expected, "{method} {path}");
            }
        }
    }

    #[test]
    fn the_observed_paths_carry_the_pay_i_prefixes() {
        for (template, provider, _) in OBSERVED {
            let native = template.strip_prefix(provider.payi_prefix()).unwrap_or(template);
            assert!(
                OBSERVED.iter().any(|(t, _, _)| *t == native),
                "{template}: its native path is observed"
            );
            assert!(
                OBSERVED
                    .iter()
                    .any(|(t, _, _)| *t == format!("{}{native}", provider.payi_prefix())),
                "{template}: its Pay-i path is observed"
            );
        }
        for (prefix, template) in AZURE_DEPLOYMENTS {
            assert!(template.starts_with(prefix));
            assert!(prefix.is_empty() || prefix == PAYI_AZURE_OPENAI_PREFIX);
        }
    }
}
