//! Pay-i's outcome on the provider's answer: `xproxy_result` added to a JSON body as a sibling
//! of the provider's fields (streams get it on one chunk, see `ChatStream::with_outcome_field`).

use llm_meter::{add_json_field_with, names, XProxyResult};

/// Adds `"xproxy_result": {…}` to a JSON object body, just before its closing brace; `None`
/// when the body is not a JSON object (it is then relayed as it came).
pub(crate) fn with_xproxy_result(body: &[u8], result: &XProxyResult) -> Option<Vec<u8>> {
    add_json_field_with(body, names::XPROXY_RESULT, XProxyResult::TYPICAL_JSON_LEN, |out| {
        result.write_json(out);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xproxy_result_is_spliced_into_json_objects_only() {
        let r = XProxyResult {
            request_id: "r".into(),
            use_case_name: None,
            use_case_id: None,
            use_case_step: None,
            user_id: None,
            account_name: None,
            request_tags: vec![],
            limits: Default::default(),
            blocked_limit_ids: vec![],
            cost: None,
        };
        let out = with_xproxy_result(b"{\"a\": 1}\n", &r).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["a"], 1);
        assert_eq!(v["xproxy_result"]["request_id"], "r");
        assert!(out.ends_with(b"}\n"));
        let empty: serde_json::Value = serde_json::from_slice(&with_xproxy_result(b"{ }", &r).unwrap()).unwrap();
        assert_eq!(empty["xproxy_result"]["request_id"], "r");
        assert!(with_xproxy_result(b"[1]", &r).is_none());
        assert!(with_xproxy_result(b"", &r).is_none());
    }
}
