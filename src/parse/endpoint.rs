//! The provider's address, API and credentials as every door sends them: one check of an API
//! base URL, which API a path speaks, and one `Authorization` header, for the client, the proxy
//! and its configuration file.

use http::HeaderValue;
use reqwest::Url;

use crate::names;

/// Which API a call speaks: it decides how the request, the answer, its headers and its stream
/// are read. The framing of streams (SSE) is the same for all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Api {
    /// OpenAI Chat Completions (also Azure OpenAI and OpenAI-compatible providers): `data:`
    /// chunks and `data: [DONE]`.
    #[default]
    ChatCompletions,
    /// Anthropic Messages: `event:` + `data:` pairs from `message_start` to `message_stop`.
    AnthropicMessages,
    /// OpenAI Responses: typed events from `response.created` to a terminal `response.*`.
    Responses,
}

impl Api {
    /// The API of a request path by its last segments: `…/chat/completions`, `…/messages`
    /// (not OpenAI's `…/threads/{id}/messages`), `…/responses`; `None` for any other path.
    pub fn of_path(path: &str) -> Option<Api> {
        let path = path.trim_end_matches('/');
        if path.ends_with("/chat/completions") {
            Some(Api::ChatCompletions)
        } else if path.ends_with("/messages") && !path.contains("/threads/") {
            // (OpenAI's Assistants API has `/threads/{id}/messages`: not a Messages call.)
            Some(Api::AnthropicMessages)
        } else if path.ends_with("/responses") {
            Some(Api::Responses)
        } else {
            None
        }
    }

    /// The path below an API base (`chat/completions`, `messages`, `responses`).
    pub fn path(self) -> &'static str {
        match self {
            Api::ChatCompletions => "chat/completions",
            Api::AnthropicMessages => "messages",
            Api::Responses => "responses",
        }
    }

    /// The provider that defines this API (`gen_ai.provider.name` when the door names none):
    /// `anthropic` for Messages, `openai` for the others.
    pub fn default_provider(self) -> &'static str {
        match self {
            Api::AnthropicMessages => names::PROVIDER_ANTHROPIC,
            Api::ChatCompletions | Api::Responses => names::PROVIDER_OPENAI,
        }
    }
}

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
    fn the_api_of_a_path() {
        assert_eq!(Api::of_path("/v1/chat/completions"), Some(Api::ChatCompletions));
        assert_eq!(
            Api::of_path("/openai/deployments/gpt-4o/chat/completions"),
            Some(Api::ChatCompletions)
        );
        assert_eq!(
            Api::of_path("/api/v1/proxy/anthropic/v1/messages"),
            Some(Api::AnthropicMessages)
        );
        assert_eq!(Api::of_path("/v1/responses/"), Some(Api::Responses));
        assert_eq!(Api::of_path("/v1/models"), None);
        assert_eq!(Api::of_path("/v1/messages/batches"), None);
        assert_eq!(Api::of_path("/v1/threads/thread_abc/messages"), None);
        for api in [Api::ChatCompletions, Api::AnthropicMessages, Api::Responses] {
            assert_eq!(Api::of_path(&format!("/v1/{}", api.path())), Some(api));
        }
    }

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
