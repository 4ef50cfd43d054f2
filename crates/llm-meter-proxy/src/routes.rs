//! The proxy's routes: observed chat completions (OpenAI's path and Pay-i's proxy path) and
//! every other `/v1/*` request forwarded as it is.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_body_util::BodyExt;

use llm_meter::{names, Annotations, Server, XProxyResult};

use crate::headers::{authorize, prepare_upstream_headers, remove_hop_by_hop};
use crate::rejection::Rejection;
use crate::settings::ProxySettings;
use crate::splicing::with_xproxy_result;
use crate::{Proxy, ProxyInner, PAYI_OPENAI_PREFIX};

/// The API base this request goes to: the configured one, or an allowed one it chose.
fn upstream_base(settings: &ProxySettings, headers: &HeaderMap) -> Result<reqwest::Url, Rejection> {
    let Some(chosen) = headers.get(names::HEADER_PROVIDER_BASE_URI) else {
        return Ok(settings.upstream.clone());
    };
    let text = chosen
        .to_str()
        .map_err(|_| Rejection::InvalidUpstreamChoice("not valid text"))?;
    let url =
        reqwest::Url::parse(text.trim_end_matches('/')).map_err(|_| Rejection::InvalidUpstreamChoice("not a URL"))?;
    let same = |a: &reqwest::Url| a.as_str().trim_end_matches('/') == url.as_str().trim_end_matches('/');
    if same(&settings.upstream) || settings.allowed_upstreams.iter().any(same) {
        Ok(url)
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

/// `POST` on a chat completions path: an observed call.
pub(crate) async fn chat(State(proxy): State<Proxy>, request: Request) -> Response {
    // The server span is the chat span's explicit parent: no span is entered on every poll.
    let span = proxy
        .inner
        .meter
        .server_span(request.method().as_str(), request.uri().path(), request.headers());
    match observed_chat(&proxy.inner, request, span.as_ref()).await {
        Ok(response) => response,
        Err(rejection) => rejection.into_response(),
    }
}

async fn observed_chat(
    inner: &ProxyInner,
    request: Request,
    server_span: Option<&llm_meter::ServerSpan>,
) -> Result<Response, Rejection> {
    let settings = &inner.settings;
    let (parts, body) = request.into_parts();
    authorize(settings, &parts.headers)?;
    let annotations = Annotations::from_headers(&parts.headers).map_err(Rejection::InvalidAnnotation)?;
    let base = upstream_base(settings, &parts.headers)?;
    let url = join(&base, "chat/completions", parts.uri.query())?;
    let body = axum::body::to_bytes(body, settings.body_limit)
        .await
        .map_err(|_| Rejection::BodyTooLarge(settings.body_limit))?;
    let mut headers = parts.headers;
    prepare_upstream_headers(&mut headers, inner.upstream_auth.as_ref(), true);
    let prepared = match inner.meter.prepare(Vec::from(body.clone()), None) {
        Ok(p) => p,
        // Not a JSON object: the provider says what is wrong with it; nothing to observe.
        Err(_) => return relay(inner, upstream_request(Method::POST, url, headers, Body::from(body))).await,
    };
    let stream = prepared.facts.stream;
    let mut call = inner
        .meter
        .start_under(server_span, Server::of(&base), &annotations, prepared.facts);
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
                return Err(Rejection::Upstream(kind));
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
            return Err(Rejection::Upstream(kind));
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
                return Err(Rejection::Upstream(kind));
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
    let response = inner
        .http
        .send(request)
        .await
        .map_err(|e| Rejection::Upstream(e.kind()))?;
    let (parts, body) = response.into_parts();
    Ok(downstream(parts.status, parts.headers, Body::new(body)))
}

/// Any other `/v1/*` request: forwarded as it is (minus `xProxy-*` and hop-by-hop headers).
pub(crate) async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
    match forwarded(&proxy.inner, request).await {
        Ok(response) => response,
        Err(rejection) => rejection.into_response(),
    }
}

async fn forwarded(inner: &ProxyInner, request: Request) -> Result<Response, Rejection> {
    let (parts, body) = request.into_parts();
    authorize(&inner.settings, &parts.headers)?;
    let base = upstream_base(&inner.settings, &parts.headers)?;
    let path = parts.uri.path();
    let rest = path.strip_prefix(PAYI_OPENAI_PREFIX).unwrap_or(path);
    let rest = rest.strip_prefix("/v1").unwrap_or(rest);
    let url = join(&base, rest, parts.uri.query())?;
    let mut headers = parts.headers;
    prepare_upstream_headers(&mut headers, inner.upstream_auth.as_ref(), false);
    relay(inner, upstream_request(parts.method, url, headers, body)).await
}
