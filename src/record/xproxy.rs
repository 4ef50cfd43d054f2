//! Pay-i's per-call outcome, `xproxy_result`: what the proxy adds to a response body (and the
//! library client returns beside the response).
//!
//! ```json
//! {"request_id": "…", "use_case_name": "…", "user_id": "…", "request_tags": ["…"],
//!  "limits": {"daily": {"state": "ok"}}, "blocked_limit_ids": [],
//!  "cost": {"currency": "usd", "input": {"base": 0.0001}, "output": {"base": 0.0004}, "total": {"base": 0.0005}}}
//! ```
//!
//! `use_case_id`, `use_case_step` and `account_name` are present when the request sent them;
//! `cost` is absent when the model has no price (no cost is invented). Every key is a field of
//! Pay-i's own `XproxyResult` model (the `payi` package), checked by the SDK end-to-end test.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::record::limits::LimitState;
use crate::record::CallRecord;

/// The `xproxy_result` object.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct XProxyResult {
    /// llm-meter's id of the call.
    pub request_id: String,
    /// `xProxy-UseCase-Name`.
    pub use_case_name: Option<String>,
    /// `xProxy-UseCase-ID`, when sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_case_id: Option<String>,
    /// `xProxy-UseCase-Step`, when sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_case_step: Option<String>,
    /// `xProxy-User-ID`.
    pub user_id: Option<String>,
    /// `xProxy-Account-Name`, when sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_name: Option<String>,
    /// `xProxy-Request-Tags`.
    pub request_tags: Vec<String>,
    /// State of every limit the call named.
    pub limits: BTreeMap<String, LimitOutcome>,
    /// Limits that refused the call.
    pub blocked_limit_ids: Vec<String>,
    /// Cost in USD, when the model is priced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<XProxyCost>,
}

/// `{"state": …}`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LimitOutcome {
    /// State after the call.
    pub state: LimitState,
}

/// `{"currency": "usd", "input": {"base": …}, "output": {"base": …}, "total": {"base": …}}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct XProxyCost {
    /// Always `usd`.
    pub currency: &'static str,
    /// Input cost.
    pub input: Base,
    /// Output cost.
    pub output: Base,
    /// Total cost.
    pub total: Base,
}

/// `{"base": …}`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Base {
    /// Amount in USD.
    pub base: f64,
}

impl XProxyResult {
    /// Room for a typical `xproxy_result`'s JSON (about 250 bytes with a cost and no limits),
    /// so that serializing it does not grow the buffer step by step.
    pub const TYPICAL_JSON_LEN: usize = 384;

    /// The outcome of a finished call.
    pub fn from_record(r: &CallRecord) -> Self {
        let a = &r.annotations;
        XProxyResult {
            request_id: r.id.to_string(),
            use_case_name: a.use_case_name().map(str::to_owned),
            use_case_id: a.use_case_id().map(str::to_owned),
            use_case_step: a.use_case_step().map(str::to_owned),
            user_id: a.user_id().map(str::to_owned),
            account_name: a.account_name().map(str::to_owned),
            request_tags: a.request_tags().to_vec(),
            limits: r
                .limits
                .iter()
                .map(|(id, state)| (id.clone(), LimitOutcome { state: *state }))
                .collect(),
            blocked_limit_ids: r.blocked_limit_ids.clone(),
            cost: r.cost.map(|c| XProxyCost {
                currency: "usd",
                input: Base { base: c.input },
                output: Base { base: c.output },
                total: Base { base: c.total },
            }),
        }
    }

    /// As JSON bytes.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::TYPICAL_JSON_LEN);
        self.write_json(&mut out);
        out
    }

    /// Appends the JSON text to `out` (`null` if it could not be serialized, which a map of
    /// string keys and finite numbers never fails).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let len = out.len();
        if serde_json::to_writer(&mut *out, self).is_err() {
            out.truncate(len);
            out.extend_from_slice(b"null");
        }
    }

    /// As a JSON value.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// Adds `"key": value` (`value` already JSON) to a JSON object's text, just before its closing
/// brace, keeping every other byte as it was. `None` when `object` is not a JSON object's text.
pub fn add_json_field(object: &[u8], key: &str, value: &[u8]) -> Option<Vec<u8>> {
    add_json_field_with(object, key, value.len(), |out| out.extend_from_slice(value))
}

/// [`add_json_field`] with the value written by `write` straight into the new text (`size`:
/// the room to reserve for it), so it is neither serialized apart nor copied.
pub fn add_json_field_with(object: &[u8], key: &str, size: usize, write: impl FnOnce(&mut Vec<u8>)) -> Option<Vec<u8>> {
    let start = object.iter().position(|b| !b.is_ascii_whitespace())?;
    let end = object.iter().rposition(|b| !b.is_ascii_whitespace())?;
    if object[start] != b'{' || object[end] != b'}' {
        return None;
    }
    let empty = object[start + 1..end].iter().all(u8::is_ascii_whitespace);
    let mut out = Vec::with_capacity(object.len() + key.len() + size + 4);
    out.extend_from_slice(&object[..end]);
    if !empty {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    write(&mut out);
    out.extend_from_slice(&object[end..]);
    Some(out)
}
