//! Requests the proxy answers itself: every reason as one [`Rejection`], which knows its HTTP
//! status and its OpenAI-shaped body (`{"error": {"message", "type", "param", "code"}}`).

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Value};

use llm_meter::{names, AnnotationError, Call, ErrorType, LedgerError, Refusal, XProxyResult};

/// Why the proxy answered a request itself instead of relaying the provider's answer.
#[derive(Debug)]
#[non_exhaustive]
pub enum Rejection {
    /// Proxy keys are configured and `xProxy-Api-Key` is missing or wrong (401).
    Unauthorized,
    /// An `xProxy-*` annotation header is invalid (400, naming the header).
    InvalidAnnotation(AnnotationError),
    /// `xProxy-Provider-BaseUri` is unreadable or not an allowed upstream (400).
    InvalidUpstreamChoice(&'static str),
    /// `xProxy-Provider-BaseUri` chose an upstream at a loopback, private, link-local,
    /// unique-local, unspecified or CGNAT address, and the proxy does not allow private
    /// upstreams (400; nothing was sent).
    PrivateUpstream,
    /// The request path cannot be joined onto the upstream (400).
    InvalidPath,
    /// The request body is larger than the limit, in bytes (413).
    BodyTooLarge(usize),
    /// The request body could not be read to its end: the client reset the connection or
    /// sent malformed framing (400).
    BodyUnreadable,
    /// Block limits refused the call before the provider saw it (403), with Pay-i's
    /// `xproxy_error` and the call's `xproxy_result`.
    LimitReached {
        /// The limits that refused the call.
        blocked_limit_ids: Vec<String>,
        /// The refused call's outcome.
        outcome: Box<XProxyResult>,
    },
    /// The call names a block limit and the budget ledger could not be asked in time (policy
    /// `closed`): 503, naming the ledger, with `Retry-After`.
    LedgerUnavailable(LedgerError),
    /// The upstream could not be reached, timed out or failed mid-answer (502 or 504).
    Upstream(ErrorType),
    /// The route's provider has no upstream configured (`[upstreams] azure_openai`): 502,
    /// naming the setting.
    NoUpstream(&'static str),
}

impl Rejection {
    /// The HTTP status the caller gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::Unauthorized => StatusCode::UNAUTHORIZED,
            Rejection::InvalidAnnotation(_)
            | Rejection::InvalidUpstreamChoice(_)
            | Rejection::PrivateUpstream
            | Rejection::InvalidPath
            | Rejection::BodyUnreadable => StatusCode::BAD_REQUEST,
            Rejection::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::LimitReached { .. } => StatusCode::FORBIDDEN,
            Rejection::LedgerUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::Upstream(ErrorType::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            Rejection::Upstream(_) | Rejection::NoUpstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The OpenAI-shaped `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Unauthorized => "invalid_proxy_key",
            Rejection::InvalidAnnotation(_) | Rejection::InvalidUpstreamChoice(_) => "invalid_header",
            Rejection::PrivateUpstream => "private_upstream",
            Rejection::InvalidPath => "invalid_path",
            Rejection::BodyTooLarge(_) => "body_too_large",
            Rejection::BodyUnreadable => "body_unreadable",
            Rejection::LimitReached { .. } => "limit_reached",
            Rejection::LedgerUnavailable(_) => "ledger_unavailable",
            Rejection::Upstream(ErrorType::Timeout) => "upstream_timeout",
            Rejection::Upstream(ErrorType::Connect) => "upstream_unreachable",
            Rejection::Upstream(_) => "upstream_failed",
            Rejection::NoUpstream(_) => "upstream_not_configured",
        }
    }

    /// The OpenAI-shaped `error.type`.
    fn kind(&self) -> &'static str {
        match self {
            Rejection::Unauthorized => "authentication_error",
            Rejection::LimitReached { .. } => "limit_reached",
            Rejection::LedgerUnavailable(_) => "ledger_error",
            Rejection::Upstream(_) | Rejection::NoUpstream(_) => "upstream_error",
            _ => "invalid_request_error",
        }
    }

    /// The header the error is about (`error.param`).
    fn param(&self) -> Option<&'static str> {
        match self {
            Rejection::Unauthorized => Some(names::HEADER_API_KEY),
            Rejection::InvalidAnnotation(e) => Some(e.field.header()),
            Rejection::InvalidUpstreamChoice(_) | Rejection::PrivateUpstream => Some(names::HEADER_PROVIDER_BASE_URI),
            _ => None,
        }
    }

    /// A sentence for people.
    pub fn message(&self) -> String {
        match self {
            Rejection::Unauthorized => format!("missing or wrong {}", names::HEADER_API_KEY),
            Rejection::InvalidAnnotation(e) => e.to_string(),
            Rejection::InvalidUpstreamChoice(why) => format!("{}: {why}", names::HEADER_PROVIDER_BASE_URI),
            // The address is not said: the caller need not learn what a name resolves to inside.
            Rejection::PrivateUpstream => format!(
                "{}: the chosen upstream is at a loopback, private or link-local address, which this proxy does not connect to",
                names::HEADER_PROVIDER_BASE_URI
            ),
            Rejection::InvalidPath => "bad request path".into(),
            Rejection::BodyTooLarge(limit) => format!("request body larger than {limit} bytes"),
            Rejection::BodyUnreadable => "the request body ended before its length or was malformed".into(),
            Rejection::LimitReached { blocked_limit_ids, .. } => format!(
                "refused by limit {}: the call would pass its max",
                blocked_limit_ids.join(", ")
            ),
            Rejection::LedgerUnavailable(e) => format!(
                "the budget ledger ({}) is unavailable, so calls naming a block limit are refused until it answers: {e}",
                e.ledger()
            ),
            Rejection::Upstream(ErrorType::Timeout) => "the upstream provider did not answer in time".into(),
            Rejection::Upstream(ErrorType::Connect) => "cannot connect to the upstream provider".into(),
            Rejection::Upstream(_) => "the upstream provider's answer failed".into(),
            Rejection::NoUpstream(setting) => {
                format!("this proxy has no upstream for this route: set [upstreams] {setting} in its configuration")
            }
        }
    }

    /// The JSON body the caller gets.
    pub fn body(&self) -> Value {
        let message = self.message();
        let mut body = json!({
            "error": {"message": message, "type": self.kind(), "param": self.param(), "code": self.code()},
        });
        if let Rejection::LimitReached { outcome, .. } = self {
            body[names::XPROXY_ERROR] = json!({"code": self.code(), "message": message});
            body[names::XPROXY_RESULT] = json!(outcome);
        }
        body
    }
}

impl Rejection {
    /// Finishes a call that admission refused and says how the caller is answered: a block
    /// limit (403, Pay-i's `xproxy_error`) or an unavailable ledger (503).
    pub fn refused(call: Call, refusal: Refusal) -> Self {
        let record = call.refuse(&refusal);
        match refusal {
            Refusal::LedgerUnavailable(e) => Rejection::LedgerUnavailable(e),
            Refusal::Blocked(blocked_limit_ids) => Rejection::LimitReached {
                blocked_limit_ids,
                outcome: Box::new(XProxyResult::from_record(&record)),
            },
            // A kind of refusal this proxy does not know yet: refused all the same.
            _ => Rejection::LimitReached {
                blocked_limit_ids: record.blocked_limit_ids.clone(),
                outcome: Box::new(XProxyResult::from_record(&record)),
            },
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let mut resp = Response::new(Body::from(self.body().to_string()));
        *resp.status_mut() = self.status();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Rejection::LedgerUnavailable(_) = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rejection_has_an_openai_shaped_body_and_its_status() {
        let cases = [
            (
                Rejection::Unauthorized,
                401,
                "invalid_proxy_key",
                Some(names::HEADER_API_KEY),
            ),
            (
                Rejection::InvalidUpstreamChoice("not a URL"),
                400,
                "invalid_header",
                Some(names::HEADER_PROVIDER_BASE_URI),
            ),
            (
                Rejection::PrivateUpstream,
                400,
                "private_upstream",
                Some(names::HEADER_PROVIDER_BASE_URI),
            ),
            (Rejection::InvalidPath, 400, "invalid_path", None),
            (Rejection::BodyTooLarge(10), 413, "body_too_large", None),
            (Rejection::BodyUnreadable, 400, "body_unreadable", None),
            (Rejection::Upstream(ErrorType::Timeout), 504, "upstream_timeout", None),
            (
                Rejection::Upstream(ErrorType::Connect),
                502,
                "upstream_unreachable",
                None,
            ),
            (Rejection::Upstream(ErrorType::Truncated), 502, "upstream_failed", None),
            (
                Rejection::NoUpstream("azure_openai"),
                502,
                "upstream_not_configured",
                None,
            ),
            (
                Rejection::LedgerUnavailable(LedgerError::Timeout {
                    ledger: "redis",
                    after: std::time::Duration::from_millis(250),
                }),
                503,
                "ledger_unavailable",
                None,
            ),
        ];
        for (rejection, status, code, param) in cases {
            assert_eq!(rejection.status().as_u16(), status, "{rejection:?}");
            let body = rejection.body();
            assert_eq!(body["error"]["code"], code);
            assert_eq!(body["error"]["param"].as_str(), param);
            assert!(!body["error"]["message"].as_str().unwrap().is_empty());
            assert!(body["error"]["type"].is_string());
            assert!(body.get(names::XPROXY_ERROR).is_none());
        }
    }
}
