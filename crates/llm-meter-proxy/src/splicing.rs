//! Pay-i's outcome on the provider's answer: `xproxy_result` added to a JSON body as a sibling
//! of the provider's fields (streams get it on one chunk, see `ChatStream::with_outcome_field`).

use llm_meter::{add_json_field_with, names, CallRecord, XProxyResult};

/// Adds `"xproxy_result": {…}`, the outcome of `record`, to a JSON object body, just before its
/// closing brace; `None` when the body is not a JSON object (it is then relayed as it came).
pub(crate) fn with_xproxy_result(body: &[u8], record: &CallRecord) -> Option<Vec<u8>> {
    add_json_field_with(body, names::XPROXY_RESULT, XProxyResult::TYPICAL_JSON_LEN, |out| {
        XProxyResult::write_record_json(record, out);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xproxy_result_is_spliced_into_json_objects_only() {
        let r = CallRecord::new(
            llm_meter::Annotations::default(),
            llm_meter::RequestFacts::default(),
            std::time::SystemTime::now(),
        );
        let id = r.id.to_string();
        let out = with_xproxy_result(b"{\"a\": 1}\n", &r).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["a"], 1);
        assert_eq!(v["xproxy_result"]["request_id"], id.as_str());
        assert!(out.ends_with(b"}\n"));
        let empty: serde_json::Value = serde_json::from_slice(&with_xproxy_result(b"{ }", &r).unwrap()).unwrap();
        assert_eq!(empty["xproxy_result"]["request_id"], id.as_str());
        assert!(with_xproxy_result(b"[1]", &r).is_none());
        assert!(with_xproxy_result(b"", &r).is_none());
    }
}
