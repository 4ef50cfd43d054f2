//! Pay-i's per-call outcome, `xproxy_result`: what the proxy adds to a response body (and the
//! library client returns beside the response).
//!
//! ```json
//! {"request_id": "…", "use_case_name": "…", "user_id": "…", "request_tags": ["…"],
//!  "limits": {"daily": {"state": "ok"}}, "blocked_limit_ids": [],
//!  "cost": {"currency": "usd", "input": {"base": 0.0001}, "output": {"base": 0.0004}, "total": {"base": 0.0005}}}
//! ```
//!
//! `cost` is absent when the model has no price (no cost is invented).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::limits::LimitState;
use crate::record::CallRecord;

/// The `xproxy_result` object.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct XProxyResult {
    /// llm-meter's id of the call.
    pub request_id: String,
    /// `xProxy-UseCase-Name`.
    pub use_case_name: Option<String>,
    /// `xProxy-User-ID`.
    pub user_id: Option<String>,
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
    /// The outcome of a finished call.
    pub fn from_record(r: &CallRecord) -> Self {
        let a = &r.annotations;
        XProxyResult {
            request_id: r.id.to_string(),
            use_case_name: a.use_case_name().map(str::to_owned),
            user_id: a.user_id().map(str::to_owned),
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

    /// As a JSON value.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}
