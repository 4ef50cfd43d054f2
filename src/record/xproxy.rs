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

    /// Appends the JSON text to `out`: the bytes `serde_json` would write for it.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        ResultFields {
            request_id: &self.request_id,
            use_case_name: self.use_case_name.as_deref(),
            use_case_id: self.use_case_id.as_deref(),
            use_case_step: self.use_case_step.as_deref(),
            user_id: self.user_id.as_deref(),
            account_name: self.account_name.as_deref(),
            request_tags: &self.request_tags,
            blocked_limit_ids: &self.blocked_limit_ids,
            cost: self.cost.as_ref().map(|c| (c.input.base, c.output.base, c.total.base)),
        }
        .write(self.limits.iter().map(|(id, o)| (id.as_str(), o.state)), out);
    }

    /// Appends the JSON text of `record`'s outcome to `out`, the bytes
    /// `XProxyResult::from_record(record).write_json(out)` would write, without building it.
    pub fn write_record_json(record: &CallRecord, out: &mut Vec<u8>) {
        let a = &record.annotations;
        let hex = record.id.to_hex();
        // One entry per limit id, in id order, the last state of an id repeated (a map's).
        let mut limits: Vec<(&str, LimitState)> = Vec::new();
        if !record.limits.is_empty() {
            limits.extend(record.limits.iter().map(|(id, state)| (id.as_str(), *state)));
            limits.reverse();
            limits.sort_by_key(|(id, _)| *id);
            limits.dedup_by_key(|(id, _)| *id);
        }
        ResultFields {
            // Hex digits are ASCII.
            request_id: std::str::from_utf8(&hex).unwrap_or_default(),
            use_case_name: a.use_case_name(),
            use_case_id: a.use_case_id(),
            use_case_step: a.use_case_step(),
            user_id: a.user_id(),
            account_name: a.account_name(),
            request_tags: a.request_tags(),
            blocked_limit_ids: &record.blocked_limit_ids,
            cost: record.cost.map(|c| (c.input, c.output, c.total)),
        }
        .write(limits.into_iter(), out);
    }

    /// [`XProxyResult::write_record_json`] into a new buffer.
    pub fn record_json_bytes(record: &CallRecord) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::TYPICAL_JSON_LEN);
        Self::write_record_json(record, &mut out);
        out
    }

    /// As a JSON value.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// The fields of an `xproxy_result`, borrowed from an [`XProxyResult`] or a [`CallRecord`]:
/// one writer for both, in the order and format of the derived `Serialize` (a test holds them
/// to it), without serde's per-key machinery.
struct ResultFields<'a> {
    request_id: &'a str,
    use_case_name: Option<&'a str>,
    use_case_id: Option<&'a str>,
    use_case_step: Option<&'a str>,
    user_id: Option<&'a str>,
    account_name: Option<&'a str>,
    request_tags: &'a [String],
    blocked_limit_ids: &'a [String],
    /// Input, output and total.
    cost: Option<(f64, f64, f64)>,
}

impl ResultFields<'_> {
    /// Writes the object; `limits` come sorted by id, each id once.
    fn write<'l>(&self, limits: impl Iterator<Item = (&'l str, LimitState)>, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"request_id\":");
        json_str(out, self.request_id);
        out.extend_from_slice(b",\"use_case_name\":");
        json_opt_str(out, self.use_case_name);
        if let Some(id) = self.use_case_id {
            out.extend_from_slice(b",\"use_case_id\":");
            json_str(out, id);
        }
        if let Some(step) = self.use_case_step {
            out.extend_from_slice(b",\"use_case_step\":");
            json_str(out, step);
        }
        out.extend_from_slice(b",\"user_id\":");
        json_opt_str(out, self.user_id);
        if let Some(account) = self.account_name {
            out.extend_from_slice(b",\"account_name\":");
            json_str(out, account);
        }
        out.extend_from_slice(b",\"request_tags\":");
        json_str_array(out, self.request_tags);
        out.extend_from_slice(b",\"limits\":{");
        for (i, (id, state)) in limits.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_str(out, id);
            out.extend_from_slice(b":{\"state\":\"");
            out.extend_from_slice(state.as_str().as_bytes());
            out.extend_from_slice(b"\"}");
        }
        out.extend_from_slice(b"},\"blocked_limit_ids\":");
        json_str_array(out, self.blocked_limit_ids);
        if let Some((input, output, total)) = self.cost {
            out.extend_from_slice(b",\"cost\":{\"currency\":\"usd\",\"input\":{\"base\":");
            json_f64(out, input);
            out.extend_from_slice(b"},\"output\":{\"base\":");
            json_f64(out, output);
            out.extend_from_slice(b"},\"total\":{\"base\":");
            json_f64(out, total);
            out.extend_from_slice(b"}}");
        }
        out.push(b'}');
    }
}

/// A JSON string: serde_json's escaping (writing to a `Vec` cannot fail).
fn json_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

fn json_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn json_str_array(out: &mut Vec<u8>, items: &[String]) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_str(out, item);
    }
    out.push(b']');
}

/// A number as serde_json writes it (`null` when not finite).
fn json_f64(out: &mut Vec<u8>, x: f64) {
    let _ = serde_json::to_writer(&mut *out, &x);
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

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use proptest::prelude::*;

    use super::*;
    use crate::record::pricing::Cost;
    use crate::record::RequestFacts;
    use crate::Annotations;

    fn states() -> impl Strategy<Value = LimitState> {
        prop_oneof![
            Just(LimitState::Ok),
            Just(LimitState::Exceeded),
            Just(LimitState::Overrun),
            Just(LimitState::Blocked)
        ]
    }

    /// Any text, escapes and control characters included.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![any::<String>(), "[a-z\"\\\\\\n\\t\\u{0}-\\u{1f}é😀]{0,12}"]
    }

    fn amounts() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            Just(0.0),
            Just(-0.0),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(1e-12),
            0.0..1.0e3
        ]
    }

    fn results() -> impl Strategy<Value = XProxyResult> {
        (
            text(),
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::collection::vec(text(), 0..3),
            proptest::collection::btree_map(text(), states(), 0..3),
            proptest::collection::vec(text(), 0..3),
            proptest::option::of((amounts(), amounts(), amounts())),
        )
            .prop_map(
                |(id, name, case_id, step, user, account, tags, limits, blocked, cost)| XProxyResult {
                    request_id: id,
                    use_case_name: name,
                    use_case_id: case_id,
                    use_case_step: step,
                    user_id: user,
                    account_name: account,
                    request_tags: tags,
                    limits: limits
                        .into_iter()
                        .map(|(id, state)| (id, LimitOutcome { state }))
                        .collect(),
                    blocked_limit_ids: blocked,
                    cost: cost.map(|(input, output, total)| XProxyCost {
                        currency: "usd",
                        input: Base { base: input },
                        output: Base { base: output },
                        total: Base { base: total },
                    }),
                },
            )
    }

    proptest! {
        /// The hand-written JSON is, byte for byte, what the derived `Serialize` writes.
        #[test]
        fn written_json_is_what_serde_writes(result in results()) {
            let mut out = b"prefix".to_vec();
            result.write_json(&mut out);
            prop_assert_eq!(&out[..6], b"prefix");
            let want = serde_json::to_vec(&result).unwrap();
            prop_assert_eq!(String::from_utf8_lossy(&out[6..]), String::from_utf8_lossy(&want));
        }
    }

    fn record(limits: Vec<(&str, LimitState)>, cost: Option<Cost>) -> CallRecord {
        let annotations = Annotations::builder()
            .use_case_name("chat")
            .use_case_step("draft")
            .user_id("u-1")
            .request_tags(["a", "b"])
            .build()
            .unwrap();
        let mut r = CallRecord::new(annotations, RequestFacts::default(), SystemTime::UNIX_EPOCH);
        r.limits = limits.into_iter().map(|(id, s)| (id.to_owned(), s)).collect();
        r.blocked_limit_ids = vec!["daily".into()];
        r.cost = cost;
        r
    }

    #[test]
    fn a_records_json_is_that_of_its_result() {
        let cost = Cost {
            input: 0.000_11,
            output: 0.4,
            total: 0.400_11,
        };
        let cases = [
            record(vec![], None),
            record(vec![("daily", LimitState::Ok)], Some(cost)),
            // Out of order, and an id named twice: sorted, the last state kept, as a map does.
            record(
                vec![
                    ("weekly", LimitState::Exceeded),
                    ("daily", LimitState::Ok),
                    ("weekly", LimitState::Blocked),
                    ("a", LimitState::Overrun),
                ],
                Some(cost),
            ),
        ];
        for r in &cases {
            let want = XProxyResult::from_record(r).to_json_bytes();
            assert_eq!(
                String::from_utf8(XProxyResult::record_json_bytes(r)).unwrap(),
                String::from_utf8(want).unwrap()
            );
        }
        let last = XProxyResult::from_record(&cases[2]);
        assert_eq!(last.limits["weekly"].state, LimitState::Blocked);
        assert_eq!(last.request_id.len(), 32);
    }
}
