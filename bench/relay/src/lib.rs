//! What the proxy benchmark (`bench/proxy.sh`) measures the proxy against, each run as its own
//! process (DESIGN §8, "Targets"):
//!
//! - `llm-meter-bench-relay`: a bare hyper relay — hyper 1 server (HTTP/1.1, keep-alive),
//!   hyper-util's pooled legacy client, bodies streamed both ways, nothing parsed. It is the
//!   floor: what a user would otherwise put in front of the provider.
//! - `llm-meter-bench-otlp-sink`: a minimal OTLP/HTTP receiver, so the proxy's span and metric
//!   exports cross a real socket into another process, as they would in production.
//!
//! This library holds what both binaries share: flag parsing, the runtime, the accept loop and
//! hop-by-hop header handling.

use std::convert::Infallible;
use std::error::Error;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// The error type of the binaries' set-up.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// Command-line flags, `--name value` or `--name=value`, each from a known list.
#[derive(Debug, Default)]
pub struct Flags {
    pairs: Vec<(String, String)>,
}

impl Flags {
    /// Parses `args` (without the program name), accepting only the flags in `known`.
    /// `--help` gives back `usage` as the error, so `main` prints it and exits non-zero.
    pub fn parse(args: impl IntoIterator<Item = String>, known: &[&str], usage: &str) -> Result<Self, BoxError> {
        let mut pairs = Vec::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "--help" || arg == "-h" {
                return Err(usage.into());
            }
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (arg, None),
            };
            if !known.contains(&name.as_str()) {
                return Err(format!("unknown argument {name:?}\n\n{usage}").into());
            }
            let value = match inline {
                Some(v) => v,
                None => args.next().ok_or_else(|| format!("{name} needs a value\n\n{usage}"))?,
            };
            pairs.push((name, value));
        }
        Ok(Flags { pairs })
    }

    /// The last value given for `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `name`, which must be given.
    pub fn require(&self, name: &str) -> Result<&str, BoxError> {
        self.get(name).ok_or_else(|| format!("{name} is required").into())
    }

    /// `--listen`: an address such as `127.0.0.1:8790`.
    pub fn listen(&self) -> Result<SocketAddr, BoxError> {
        let text = self.require("--listen")?;
        text.parse()
            .map_err(|_| format!("--listen {text:?} is not an address like 127.0.0.1:8790").into())
    }

    /// `--threads`: worker threads of the runtime (default: one per available core).
    pub fn threads(&self) -> Result<Option<usize>, BoxError> {
        match self.get("--threads") {
            None => Ok(None),
            Some(text) => match text.parse::<usize>() {
                Ok(n) if n > 0 => Ok(Some(n)),
                _ => Err(format!("--threads {text:?} is not a positive number").into()),
            },
        }
    }
}

/// A multi-threaded Tokio runtime with `threads` workers (default: one per core this process
/// may run on, so `taskset -c 0` gives one).
pub fn runtime(threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = threads {
        builder.worker_threads(n);
    }
    builder.build()
}

/// Serves every connection accepted on `listener` with HTTP/1.1 (keep-alive) and `handler`,
/// one task per connection, until the process ends. Accept errors (such as running out of
/// file descriptors) are reported and retried after a short pause.
pub async fn serve<F, Fut, B>(listener: TcpListener, handler: F) -> std::io::Result<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    loop {
        let stream = accept(&listener).await;
        // Small request and response heads: do not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let connection = http1::Builder::new()
                .keep_alive(true)
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service_fn(handler));
            // A client going away mid-request is normal under load; nothing to report.
            let _ = connection.await;
        });
    }
}

/// The next connection on `listener`. Accept errors (such as running out of file descriptors)
/// are reported and retried after a short pause.
pub async fn accept(listener: &TcpListener) -> tokio::net::TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return stream,
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Binds `addr` and says so on stderr.
pub async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, BoxError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    eprintln!("{what} listening on http://{}", listener.local_addr()?);
    Ok(listener)
}

/// Headers that belong to one connection, not to the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes the hop-by-hop headers, those a `Connection` header names included, and `Upgrade`
/// (the relay does not tunnel protocol upgrades).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Result<Flags, BoxError> {
        Flags::parse(
            args.iter().map(|s| (*s).to_owned()),
            &["--listen", "--threads"],
            "usage",
        )
    }

    #[test]
    fn flags_take_both_forms_and_refuse_unknown_ones() {
        let f = flags(&["--listen", "127.0.0.1:1", "--threads=2"]).unwrap();
        assert_eq!(f.listen().unwrap(), "127.0.0.1:1".parse::<SocketAddr>().unwrap());
        assert_eq!(f.threads().unwrap(), Some(2));
        assert!(flags(&["--nope", "1"]).is_err());
        assert!(flags(&["--listen"]).is_err());
        assert!(flags(&["--threads", "0"]).unwrap().threads().is_err());
        assert_eq!(flags(&["--help"]).unwrap_err().to_string(), "usage");
    }

    #[test]
    fn hop_by_hop_headers_go_and_end_to_end_ones_stay() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-private".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        h.insert(header::AUTHORIZATION, "Bearer sk-test".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "2".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "content-length", "content-type"]);
    }
}
