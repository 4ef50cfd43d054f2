//! The provider's address and credentials as every door sends them: one check of an API base
//! URL and one `Authorization` header, for the client, the proxy and its configuration file.

use http::HeaderValue;
use reqwest::Url;

/// Parses an OpenAI-compatible API base (`https://api.openai.com/v1`): an absolute `http` or
/// `https` URL, a trailing `/` dropped. The error says why in a few words.
pub fn parse_api_base(text: &str) -> Result<Url, &'static str> {
    let url = Url::parse(text.trim_end_matches('/')).map_err(|_| "not a URL")?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("scheme must be http or https");
    }
    if url.cannot_be_a_base() || url.host_str().is_none_or(str::is_empty) {
        return Err("needs a host");
    }
    Ok(url)
}

/// `Bearer {key}` as a sensitive header value (never printed by `Debug`), or `None` when the key
/// holds characters a header cannot carry.
pub fn bearer(key: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {key}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_bases_are_absolute_http_urls() {
        assert_eq!(
            parse_api_base("https://api.openai.com/v1/").unwrap().as_str(),
            "https://api.openai.com/v1"
        );
        assert_eq!(parse_api_base("http://127.0.0.1:8080/v1").unwrap().port(), Some(8080));
        assert_eq!(parse_api_base("ftp://x/v1"), Err("scheme must be http or https"));
        assert_eq!(parse_api_base("api.openai.com/v1"), Err("not a URL"));
        assert_eq!(parse_api_base("mailto:a@b"), Err("scheme must be http or https"));
        assert_eq!(parse_api_base("http://"), Err("not a URL"));
    }

    #[test]
    fn bearer_values_are_sensitive_and_refuse_control_characters() {
        let v = bearer("sk-test").unwrap();
        assert!(v.is_sensitive());
        assert_eq!(v.to_str().unwrap(), "Bearer sk-test");
        assert!(bearer("sk\ntest").is_none());
    }
}
