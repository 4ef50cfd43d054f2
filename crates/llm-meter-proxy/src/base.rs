//! An upstream's base URL taken apart once: the scheme, authority and path every call's upstream
//! URI is built from, its `Host` header, and the `server.*` the call is recorded with. Built at start for the
//! configured upstreams, per request for one a request chose.

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri};

use llm_meter::Server;

/// A base URL (an OpenAI API base such as `https://api.openai.com/v1`, or an origin).
#[derive(Clone, Debug)]
pub(crate) struct Base {
    url: reqwest::Url,
    scheme: Scheme,
    authority: Authority,
    /// What follows the authority, its trailing `/` dropped (empty for an origin).
    path: String,
    host: HeaderValue,
    server: Server,
}

impl Base {
    /// `None` when `url` is not also an `http::Uri` (which would refuse every call's URI).
    pub(crate) fn new(url: &reqwest::Url, provider: Option<&'static str>) -> Option<Self> {
        let text = url.as_str().trim_end_matches('/');
        let uri: Uri = text.parse().ok()?;
        let scheme = uri.scheme()?.clone();
        let authority = uri.authority()?.clone();
        let path = text
            .strip_prefix(scheme.as_str())?
            .strip_prefix("://")?
            .strip_prefix(authority.as_str())?
            .to_owned();
        let host = host_header(&uri)?;
        let mut server = Server::of(url);
        if let Some(name) = provider {
            server = server.with_provider(name);
        }
        Some(Base {
            url: url.clone(),
            scheme,
            authority,
            path,
            host,
            server,
        })
    }

    /// The `Host` header of requests to this base: the one hyper-util's client would otherwise
    /// write for every request (with a `format!` when the port is not the scheme's default).
    pub(crate) fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// The upstream URI for `rest` (a path below the base) and the caller's `query`; `None`
    /// when they do not make a URI.
    pub(crate) fn uri(&self, rest: &str, query: Option<&str>) -> Option<Uri> {
        let rest = rest.trim_start_matches('/');
        let mut path = String::with_capacity(self.path.len() + rest.len() + 2 + query.map_or(0, str::len));
        path.push_str(&self.path);
        path.push('/');
        path.push_str(rest);
        if let Some(q) = query {
            path.push('?');
            path.push_str(q);
        }
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(PathAndQuery::try_from(path).ok()?);
        Uri::from_parts(parts).ok()
    }

    /// The URL it was made from.
    pub(crate) fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// The `server.*` of calls to this base.
    pub(crate) fn server(&self) -> &Server {
        &self.server
    }
}

/// The host and, unless it is the scheme's default, the port: hyper-util's rule (443 is the
/// default for `https`, 80 for any other scheme); never the user information.
fn host_header(uri: &Uri) -> Option<HeaderValue> {
    let host = uri.host()?;
    let secure = uri.scheme_str() == Some("https");
    let value = match uri.port() {
        Some(port) if !matches!((port.as_u16(), secure), (443, true) | (80, false)) => {
            HeaderValue::try_from(format!("{host}:{port}"))
        }
        _ => HeaderValue::try_from(host),
    };
    value.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The URI the way it was first built: the base's text, the path and query appended, the
    /// whole parsed.
    fn joined(base: &reqwest::Url, rest: &str, query: Option<&str>) -> Option<Uri> {
        let mut uri = format!(
            "{}/{}",
            base.as_str().trim_end_matches('/'),
            rest.trim_start_matches('/')
        );
        if let Some(q) = query {
            uri.push('?');
            uri.push_str(q);
        }
        Uri::try_from(uri).ok()
    }

    #[test]
    fn uris_are_those_of_the_base_text_and_the_path() {
        let bases = [
            "https://api.openai.com/v1",
            "https://api.openai.com/v1/",
            "http://127.0.0.1:8080/v1",
            "https://api.anthropic.com",
            "https://api.anthropic.com/",
            "http://[::1]:9000/openai/base",
            "http://user:secret@host.example:81/v1",
            "https://my-resource.openai.azure.com",
        ];
        let paths = [
            ("/chat/completions", None),
            ("chat/completions", Some("a=1&b=2")),
            ("/v1/messages", Some("beta=true")),
            (
                "/openai/deployments/gpt-4o/chat/completions",
                Some("api-version=2024-10-21"),
            ),
            ("", None),
            ("//double", Some("")),
            ("/with space", None),
            ("/pct%20ok", Some("q=%2F")),
        ];
        for text in bases {
            let url = llm_meter::parse_api_base(text).unwrap();
            let base = Base::new(&url, None).unwrap_or_else(|| panic!("{text}"));
            for (rest, query) in paths {
                let got = base.uri(rest, query);
                assert_eq!(got, joined(&url, rest, query), "{text} + {rest} ? {query:?}");
                if let Some(got) = got {
                    assert_eq!(got.to_string(), joined(&url, rest, query).unwrap().to_string());
                }
            }
            assert_eq!(base.server().address, Server::of(&url).address);
            assert_eq!(base.server().port, url.port_or_known_default());
        }
        let url = llm_meter::parse_api_base("https://api.anthropic.com").unwrap();
        let base = Base::new(&url, Some("anthropic")).unwrap();
        assert_eq!(base.host(), "api.anthropic.com");
        assert_eq!(base.server().provider.as_deref(), Some("anthropic"));
    }

    #[test]
    fn the_host_header_has_the_port_only_when_it_is_not_the_schemes_default() {
        let uri = |text: &str| text.parse::<Uri>().unwrap();
        for (text, host) in [
            ("https://api.openai.com/v1", "api.openai.com"),
            ("https://api.openai.com:443/v1", "api.openai.com"),
            ("https://api.openai.com:80/v1", "api.openai.com:80"),
            ("http://127.0.0.1:8080/v1", "127.0.0.1:8080"),
            ("http://127.0.0.1:80/v1", "127.0.0.1"),
            ("http://127.0.0.1:443/v1", "127.0.0.1:443"),
            ("http://[::1]:9000/openai/base", "[::1]:9000"),
            ("http://user:secret@host.example:81/v1", "host.example:81"),
        ] {
            assert_eq!(host_header(&uri(text)).unwrap(), host, "{text}");
        }
    }
}
