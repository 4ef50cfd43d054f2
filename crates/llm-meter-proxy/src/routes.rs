//! The proxy's routes: observed chat completions (OpenAI's path and Pay-i's proxy path) and
//! every other `/v1/*` request forwarded as it is.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::TryStreamExt;
use http::{header, HeaderMap, HeaderValue};

use llm_meter::{names, Annotations, ErrorType, Server, XProxyResult};

use crate::headers::{authorize, downstream_headers, upstream_request_headers};
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
    reqwest::Url::parse(&url).map_err(|_| Rejection::InvalidPath)
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
    server_span: Option<&tracing::Span>,
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
    let mut headers = upstream_request_headers(&parts.headers, inner.upstream_auth.as_ref(), true);
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
        return Err(Rejection::LimitReached {
            blocked_limit_ids: blocked,
            outcome: Box::new(XProxyResult::from_record(&record)),
        });
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
            return Err(Rejection::Upstream(kind));
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
        return Ok(resp);
    }
    let body = match response.bytes().await {
        Ok(b) => b,
        Err(e) => {
            let kind = ErrorType::from_reqwest(&e);
            call.fail(kind);
            return Err(Rejection::Upstream(kind));
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
    Ok(resp)
}

async fn send_unobserved(
    inner: &ProxyInner,
    url: reqwest::Url,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Rejection> {
    let sent = inner
        .http
        .post(url)
        .headers(headers)
        .body(body)
        .timeout(inner.settings.timeout)
        .send()
        .await;
    relay(sent)
}

/// The upstream's answer as it came (minus hop-by-hop headers), its body streamed.
fn relay(upstream: reqwest::Result<reqwest::Response>) -> Result<Response, Rejection> {
    let upstream = upstream.map_err(|e| Rejection::Upstream(ErrorType::from_reqwest(&e)))?;
    let status = upstream.status();
    let headers = downstream_headers(upstream.headers());
    let mut resp = Response::new(Body::from_stream(upstream.bytes_stream()));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
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
    let headers = upstream_request_headers(&parts.headers, inner.upstream_auth.as_ref(), false);
    let body = reqwest::Body::wrap_stream(body.into_data_stream().map_err(std::io::Error::other));
    let sent = inner
        .http
        .request(parts.method, url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    relay(sent)
}
