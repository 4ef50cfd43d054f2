//! `llm-meter-bench-relay`: the bare hyper relay the proxy benchmark measures against.
//!
//! Forwards any method and path to the upstream base URL, bodies streamed both ways (the
//! incoming body becomes the upstream request's body, the upstream response's body becomes the
//! answer's; nothing is buffered or parsed). `Host` is rewritten to the upstream's, hop-by-hop
//! headers are dropped both ways, upstream connections are kept alive in hyper-util's pool.
//! A request the upstream cannot be reached for gets an empty `502 Bad Gateway`.
//!
//! ```text
//! llm-meter-bench-relay --listen 127.0.0.1:8790 --upstream http://127.0.0.1:8080 [--threads N]
//! ```

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use llm_meter_bench_relay::{bind, runtime, serve, strip_hop_by_hop, BoxError, Flags};

const USAGE: &str = "usage: llm-meter-bench-relay --listen ADDR --upstream http://HOST:PORT[/base] [--threads N]

A bare hyper relay: every request is forwarded to the upstream with the upstream's base path
prepended, bodies streamed both ways, nothing parsed.";

/// Where requests go: `http://authority` plus an optional base path.
#[derive(Debug)]
struct Upstream {
    authority: Authority,
    /// The `Host` header sent upstream.
    host: HeaderValue,
    /// Base path without a trailing slash (empty for none), put before each request's path.
    base: String,
}

impl Upstream {
    fn parse(text: &str) -> Result<Self, BoxError> {
        let uri: Uri = text
            .parse()
            .map_err(|e| format!("--upstream {text:?} is not a URL: {e}"))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(format!("--upstream {text:?}: only http:// upstreams are supported").into());
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("--upstream {text:?} has no host"))?;
        let host = HeaderValue::from_str(authority.as_str())?;
        let base = uri.path().trim_end_matches('/').to_owned();
        Ok(Upstream { authority, host, base })
    }

    /// The upstream URL for a request's path and query.
    fn uri(&self, incoming: &Uri) -> Result<Uri, http::Error> {
        let path_and_query = incoming.path_and_query().map_or("/", PathAndQuery::as_str);
        let path_and_query = if self.base.is_empty() {
            PathAndQuery::try_from(path_and_query)?
        } else {
            PathAndQuery::try_from(format!("{}{path_and_query}", self.base))?
        };
        Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }
}

type Body = Either<Incoming, Empty<Bytes>>;

fn bad_gateway() -> Response<Body> {
    let mut response = Response::new(Either::Right(Empty::new()));
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}

/// Forwards one request and streams the answer back.
async fn relay(
    client: Client<HttpConnector, Incoming>,
    upstream: Arc<Upstream>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (mut parts, body) = request.into_parts();
    parts.uri = match upstream.uri(&parts.uri) {
        Ok(uri) => uri,
        Err(_) => {
            let mut response = Response::new(Either::Right(Empty::new()));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            return Ok(response);
        }
    };
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(header::HOST, upstream.host.clone());
    match client.request(Request::from_parts(parts, body)).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(parts, Either::Left(body)))
        }
        Err(_) => Ok(bad_gateway()),
    }
}

fn main() -> Result<(), BoxError> {
    let flags = Flags::parse(
        std::env::args().skip(1),
        &["--listen", "--upstream", "--threads"],
        USAGE,
    )?;
    let listen = flags.listen()?;
    let upstream = Arc::new(Upstream::parse(flags.require("--upstream")?)?);
    let runtime = runtime(flags.threads()?)?;
    runtime.block_on(async move {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        let listener = bind(listen, "llm-meter-bench-relay").await?;
        eprintln!(
            "llm-meter-bench-relay: forwarding to http://{}{}",
            upstream.authority, upstream.base
        );
        serve(listener, move |request| {
            relay(client.clone(), upstream.clone(), request)
        })
        .await?;
        Ok::<(), BoxError>(())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_paths_keep_the_base_and_the_query() {
        let up = Upstream::parse("http://127.0.0.1:8080/v1/").unwrap();
        assert_eq!(up.host, "127.0.0.1:8080");
        let uri = up.uri(&"/chat/completions?x=1".parse().unwrap()).unwrap();
        assert_eq!(uri.to_string(), "http://127.0.0.1:8080/v1/chat/completions?x=1");
        let bare = Upstream::parse("http://127.0.0.1:8080").unwrap();
        let uri = bare.uri(&"/v1/models".parse().unwrap()).unwrap();
        assert_eq!(uri.to_string(), "http://127.0.0.1:8080/v1/models");
        assert!(Upstream::parse("https://example.com").is_err());
        assert!(Upstream::parse("not a url").is_err());
    }
}
