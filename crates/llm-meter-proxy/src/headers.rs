//! Headers on the way through: the proxy key check, and what is dropped going up (hop-by-hop,
//! `xProxy-*`, `Accept-Encoding` on observed calls) and coming back (hop-by-hop).

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};

use llm_meter::names;

use crate::rejection::Rejection;
use crate::settings::ProxySettings;

/// Constant-time comparison of a presented key with each accepted key.
fn key_matches(presented: &[u8], keys: &[String]) -> bool {
    let mut found = 0u8;
    for key in keys {
        let key = key.as_bytes();
        let mut diff = u8::from(key.len() != presented.len());
        for (i, k) in key.iter().enumerate() {
            diff |= k ^ presented.get(i).copied().unwrap_or(0);
        }
        found |= u8::from(diff == 0);
    }
    found == 1
}

/// Passes when no proxy keys are configured or `xProxy-Api-Key` holds one of them.
pub(crate) fn authorize(settings: &ProxySettings, headers: &HeaderMap) -> Result<(), Rejection> {
    if settings.keys.is_empty() {
        return Ok(());
    }
    let presented = headers
        .get(names::HEADER_API_KEY)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    if key_matches(presented, &settings.keys) {
        Ok(())
    } else {
        Err(Rejection::Unauthorized)
    }
}

/// Headers that are per connection (RFC 9110 §7.6.1), plus those a `Connection` header names.
fn is_hop_by_hop(name: &HeaderName, connection: &[String]) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "proxy-connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    ) || connection.iter().any(|c| c.eq_ignore_ascii_case(name.as_str()))
}

fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Request headers to send upstream: no hop-by-hop, no `xProxy-*`, `upstream_auth` instead of
/// the caller's `Authorization` when set. `observed` calls must read the body, so they ask the
/// provider for it uncompressed.
pub(crate) fn upstream_request_headers(
    incoming: &HeaderMap,
    upstream_auth: Option<&HeaderValue>,
    observed: bool,
) -> HeaderMap {
    let connection = connection_tokens(incoming);
    let mut out = HeaderMap::with_capacity(incoming.len());
    for (name, value) in incoming {
        if is_hop_by_hop(name, &connection) || name.as_str().starts_with(names::HEADER_XPROXY_PREFIX) {
            continue;
        }
        if observed && name == header::ACCEPT_ENCODING {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    if let Some(auth) = upstream_auth {
        out.insert(header::AUTHORIZATION, auth.clone());
    }
    out
}

/// Response headers to send back: no hop-by-hop ones.
pub(crate) fn downstream_headers(upstream: &HeaderMap) -> HeaderMap {
    let connection = connection_tokens(upstream);
    let mut out = HeaderMap::with_capacity(upstream.len());
    for (name, value) in upstream {
        if !is_hop_by_hop(name, &connection) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole() {
        let keys = vec!["secret-1".to_owned(), "other".to_owned()];
        assert!(key_matches(b"secret-1", &keys));
        assert!(key_matches(b"other", &keys));
        assert!(!key_matches(b"secret-", &keys));
        assert!(!key_matches(b"secret-12", &keys));
        assert!(!key_matches(b"", &keys));
    }

    #[test]
    fn hop_by_hop_and_named_connection_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, x-trace-hop"));
        h.insert("x-trace-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-request-id", HeaderValue::from_static("req_1"));
        let out = downstream_headers(&h);
        assert_eq!(out.len(), 1);
        assert!(out.contains_key("x-request-id"));
    }
}
