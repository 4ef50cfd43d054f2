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

/// Headers that are per connection (RFC 9110 §7.6.1), and `host` and `content-length`, which
/// the client sets for the next hop.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::HOST,
    header::CONTENT_LENGTH,
];

/// The index of `name` in [`HOP_BY_HOP`]: by length first, so most names are passed over
/// after one comparison.
fn hop_by_hop_index(name: &str) -> Option<usize> {
    let index = match name.len() {
        10 if name == "connection" => 0,
        16 if name == "proxy-connection" => 1,
        10 if name == "keep-alive" => 2,
        2 if name == "te" => 3,
        7 if name == "trailer" => 4,
        17 if name == "transfer-encoding" => 5,
        7 if name == "upgrade" => 6,
        4 if name == "host" => 7,
        14 if name == "content-length" => 8,
        _ => return None,
    };
    Some(index)
}

/// Removes, in place, the per-connection headers and those a `Connection` header names. One
/// pass over the names finds those present (usually only `host` and `content-length`): no
/// lookup per listed name.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let present = headers.keys().fold(0u16, |present, name| {
        hop_by_hop_index(name.as_str()).map_or(present, |i| present | 1 << i)
    });
    if present == 0 {
        return;
    }
    // `HOP_BY_HOP[0]` is `connection`.
    if present & 1 != 0 {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in &named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & 1 << i != 0 {
            headers.remove(name);
        }
    }
}

/// Makes the caller's request headers the upstream's, in place: no hop-by-hop, no `xProxy-*`,
/// `upstream_auth` instead of the caller's `Authorization` when set. `observed` calls must read
/// the body, so they ask the provider for it uncompressed.
pub(crate) fn prepare_upstream_headers(headers: &mut HeaderMap, upstream_auth: Option<&HeaderValue>, observed: bool) {
    remove_hop_by_hop(headers);
    // Without `xProxy-*` headers the collected list is empty and allocates nothing.
    let annotations: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with(names::HEADER_XPROXY_PREFIX))
        .cloned()
        .collect();
    for name in annotations {
        headers.remove(name);
    }
    if observed {
        headers.remove(header::ACCEPT_ENCODING);
    }
    if let Some(auth) = upstream_auth {
        headers.insert(header::AUTHORIZATION, auth.clone());
    }
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
    fn upstream_headers_lose_annotations_and_get_the_upstream_key() {
        let mut h = HeaderMap::new();
        h.insert("xproxy-user-id", HeaderValue::from_static("u"));
        h.insert("xproxy-api-key", HeaderValue::from_static("proxy-secret"));
        h.insert("authorization", HeaderValue::from_static("Bearer caller"));
        h.insert("accept-encoding", HeaderValue::from_static("gzip"));
        h.insert("openai-organization", HeaderValue::from_static("org"));
        let key = HeaderValue::from_static("Bearer upstream");
        prepare_upstream_headers(&mut h, Some(&key), true);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["authorization"], "Bearer upstream");
        assert!(h.contains_key("openai-organization"));
    }

    #[test]
    fn hop_by_hop_and_named_connection_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, x-trace-hop"));
        h.insert("x-trace-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-request-id", HeaderValue::from_static("req_1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-request-id"));

        // Each listed header, alone and all together (the last ones in the list too).
        for (i, hop) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(hop.as_str()), Some(i), "{hop}");
            let mut h = HeaderMap::new();
            h.insert(hop.clone(), HeaderValue::from_static("x"));
            h.insert("x-request-id", HeaderValue::from_static("req_1"));
            remove_hop_by_hop(&mut h);
            assert_eq!(h.len(), 1, "{hop}: {h:?}");
        }
        for other in [
            "content-type",
            "x-request-id",
            "hosts",
            "tee",
            "connectio",
            "keep-alivf",
        ] {
            assert_eq!(hop_by_hop_index(other), None, "{other}");
        }
        let mut all = HeaderMap::new();
        for hop in &HOP_BY_HOP {
            all.append(hop.clone(), HeaderValue::from_static("close"));
            all.append(hop.clone(), HeaderValue::from_static("x"));
        }
        remove_hop_by_hop(&mut all);
        assert!(all.is_empty(), "{all:?}");
    }
}
