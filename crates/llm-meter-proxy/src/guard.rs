//! Where an upstream chosen by the request (`xProxy-Provider-BaseUri`) may connect: only to
//! public addresses, unless the operator allows private ones (`allow_private_upstreams`). The
//! check is made on the addresses actually connected to, after resolution and at every new
//! connection, so a name that resolves (or is rebound) to a private address is refused as well as
//! an address written in the URL. The configured upstreams are the operator's own and connect
//! anywhere.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What kind of non-public address `ip` is, or `None` for a public one: loopback, private
/// (RFC 1918), link-local (169.254.0.0/16, cloud metadata services among them; fe80::/10),
/// unique-local (fc00::/7), unspecified (0.0.0.0/8, `::`), shared CGNAT space (100.64.0.0/10),
/// broadcast, the deprecated IPv6 site-local range (fec0::/10), and IPv4 addresses of those
/// kinds written as IPv6 (`::ffff:a.b.c.d`, NAT64's `64:ff9b::a.b.c.d`).
pub(crate) fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if a == 0 {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if a == 100 && (b & 0xc0) == 64 {
        Some("shared (CGNAT)")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else {
        None
    }
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return non_public_v4(v4);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., a, b, c, d] = ip.octets();
        return non_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if (s[0] & 0xffc0) == 0xfec0 {
        Some("site-local")
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Some("unique-local")
    } else {
        None
    }
}

/// A request-chosen upstream whose address is not public: the connection is not made.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{host} is {addr}, a {kind} address; a request-chosen upstream must be public unless [proxy] allow_private_upstreams = true")]
pub(crate) struct PrivateAddress {
    host: String,
    addr: IpAddr,
    kind: &'static str,
}

impl PrivateAddress {
    /// The refusal when `addr` (of `host`) is not public.
    fn check(host: &str, addr: IpAddr) -> Result<(), PrivateAddress> {
        match non_public(addr) {
            None => Ok(()),
            Some(kind) => {
                let refused = PrivateAddress {
                    host: host.to_owned(),
                    addr,
                    kind,
                };
                tracing::warn!(
                    target: "llm_meter",
                    "refused an upstream chosen with {}: {refused}",
                    llm_meter::names::HEADER_PROVIDER_BASE_URI
                );
                Err(refused)
            }
        }
    }
}

/// A resolver that answers only when every address of the name is public.
#[derive(Clone, Debug)]
pub(crate) struct PublicOnly(GaiResolver);

impl Service<Name> for PublicOnly {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolving = self.0.call(name.clone());
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = resolving.await?.collect();
            for addr in &addrs {
                PrivateAddress::check(name.as_str(), addr.ip())?;
            }
            Ok(addrs.into_iter())
        })
    }
}

/// The scheme, host and port of an upstream: connections are pooled, and trusted, by origin.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    https: bool,
    host: String,
    port: u16,
}

impl Origin {
    fn of_url(url: &reqwest::Url) -> Option<Origin> {
        Some(Origin {
            https: url.scheme() == "https",
            host: url.host_str()?.to_ascii_lowercase(),
            port: url.port_or_known_default()?,
        })
    }

    fn of_uri(uri: &Uri) -> Option<Origin> {
        let https = uri.scheme_str() == Some("https");
        Some(Origin {
            https,
            host: uri.host()?.to_ascii_lowercase(),
            port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
        })
    }
}

/// The TCP connector: to a configured upstream's origin (or anywhere, when private upstreams are
/// allowed) as asked; to any other origin, which only a request can have chosen, only when its
/// addresses are public.
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    open: HttpConnector,
    public_only: HttpConnector<PublicOnly>,
    /// The configured upstreams' origins; `None`: every origin is trusted.
    trusted: Option<Arc<[Origin]>>,
}

impl Connector {
    /// A connector trusting the `configured` upstreams (every origin when `allow_private`),
    /// connecting within `connect_timeout`.
    pub(crate) fn new<'a>(
        configured: impl IntoIterator<Item = &'a reqwest::Url>,
        allow_private: bool,
        connect_timeout: Duration,
    ) -> Self {
        let mut open = HttpConnector::new();
        let mut public_only = HttpConnector::new_with_resolver(PublicOnly(GaiResolver::new()));
        set_up(&mut open, connect_timeout);
        set_up(&mut public_only, connect_timeout);
        let trusted = (!allow_private).then(|| configured.into_iter().filter_map(Origin::of_url).collect());
        Connector {
            open,
            public_only,
            trusted,
        }
    }

    /// True when `uri` may connect to any address.
    fn trusts(&self, uri: &Uri) -> bool {
        match &self.trusted {
            None => true,
            Some(origins) => Origin::of_uri(uri).is_some_and(|o| origins.contains(&o)),
        }
    }
}

fn set_up<R>(connector: &mut HttpConnector<R>, connect_timeout: Duration) {
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    // https too: the TLS connector wraps this one.
    connector.enforce_http(false);
}

impl Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Both connectors are always ready (they connect in the returned future).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        if self.trusts(&uri) {
            let connecting = self.open.call(uri);
            return Box::pin(async move { connecting.await.map_err(Into::into) });
        }
        // An address in the URL is connected to without resolution: checked here; a name is
        // checked by the resolver, on every address it resolves to.
        let host = uri.host().unwrap_or_default();
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            if let Err(refused) = PrivateAddress::check(host, ip) {
                return Box::pin(async move { Err(refused.into()) });
            }
        }
        let connecting = self.public_only.call(uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// The refusal in an upstream client's error, when the connection was refused for its address.
pub(crate) fn refusal(error: &(dyn std::error::Error + 'static)) -> Option<PrivateAddress> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<PrivateAddress>() {
            return Some(refused.clone());
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_public_addresses_are_named_by_kind_and_public_ones_pass() {
        for (addr, kind) in [
            ("127.0.0.1", Some("loopback")),
            ("127.255.0.9", Some("loopback")),
            ("10.1.2.3", Some("private")),
            ("172.16.0.1", Some("private")),
            ("172.31.255.254", Some("private")),
            ("192.168.1.1", Some("private")),
            ("169.254.169.254", Some("link-local")),
            ("169.254.0.1", Some("link-local")),
            ("100.64.0.1", Some("shared (CGNAT)")),
            ("100.127.255.254", Some("shared (CGNAT)")),
            ("0.0.0.0", Some("unspecified")),
            ("0.1.2.3", Some("unspecified")),
            ("255.255.255.255", Some("broadcast")),
            ("::", Some("unspecified")),
            ("::1", Some("loopback")),
            ("fe80::1", Some("link-local")),
            ("febf::1", Some("link-local")),
            ("fec0::1", Some("site-local")),
            ("fc00::1", Some("unique-local")),
            ("fd12:3456::1", Some("unique-local")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:169.254.169.254", Some("link-local")),
            ("64:ff9b::a00:1", Some("private")),
            ("64:ff9b::808:808", None),
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("100.63.255.255", None),
            ("100.128.0.1", None),
            ("172.32.0.1", None),
            ("169.255.0.1", None),
            ("2606:4700::1111", None),
            ("::ffff:8.8.8.8", None),
            ("fe00::1", None),
        ] {
            assert_eq!(non_public(addr.parse().unwrap()), kind, "{addr}");
        }
    }

    #[test]
    fn only_the_configured_origins_are_trusted() {
        let configured: Vec<reqwest::Url> = vec![
            "http://127.0.0.1:9000/v1".parse().unwrap(),
            "https://API.example.com".parse().unwrap(),
            "http://[::1]:9002/v1".parse().unwrap(),
        ];
        let connector = Connector::new(&configured, false, Duration::from_secs(1));
        for (uri, trusted) in [
            ("http://127.0.0.1:9000/v1/chat/completions", true),
            ("http://127.0.0.1:9000/other", true),
            ("https://api.example.com:443/v1/messages", true),
            ("https://api.example.com/v1/messages", true),
            ("http://[::1]:9002/v1/chat/completions", true),
            ("http://[::1]:9003/v1", false),
            ("http://127.0.0.1:9001/v1", false),
            ("https://127.0.0.1:9000/v1", false),
            ("http://localhost:9000/v1", false),
            ("http://api.example.com/v1", false),
        ] {
            assert_eq!(connector.trusts(&uri.parse().unwrap()), trusted, "{uri}");
        }
        let open = Connector::new(&configured, true, Duration::from_secs(1));
        assert!(open.trusts(&"http://10.0.0.1/v1".parse().unwrap()));
    }

    #[tokio::test]
    async fn a_chosen_loopback_address_or_name_is_refused_before_connecting() {
        // Nothing listens on these: a connection attempt would fail with another error.
        let mut connector = Connector::new(&[], false, Duration::from_secs(1));
        for uri in ["http://127.0.0.1:9/v1", "http://[::1]:9/v1", "http://localhost:9/v1"] {
            let e = connector.call(uri.parse().unwrap()).await.unwrap_err();
            let refused = refusal(&*e).unwrap_or_else(|| panic!("{uri}: {e}"));
            assert_eq!(refused.kind, "loopback", "{uri}");
        }
    }
}
