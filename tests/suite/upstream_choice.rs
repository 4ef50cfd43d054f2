//! Upstreams a request chooses with `xProxy-Provider-BaseUri`: only from the allow-list, and only
//! at public addresses unless the operator sets `allow_private_upstreams`; the configured
//! upstreams connect anywhere. Every address here is on loopback: the refused ones are refused
//! before any connection is attempted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::sync::{Arc, Mutex};

use llm_meter::{names, CallRecord, ErrorType, Meter};
use llm_meter_mock::{MockConfig, MockServer};
use llm_meter_proxy::{Proxy, ProxySettings};
use serde_json::{json, Value};

struct Setup {
    /// The proxy's configured upstream.
    configured: MockServer,
    /// Another provider a request may choose.
    chosen: MockServer,
    base: String,
    records: Arc<Mutex<Vec<CallRecord>>>,
    http: reqwest::Client,
}

/// A proxy whose allow-list holds `allowed(chosen port)`.
async fn setup(allowed: impl Fn(u16) -> Vec<String>, allow_private_upstreams: bool) -> Setup {
    let configured = MockServer::start(MockConfig::default()).await.unwrap();
    let chosen = MockServer::start(MockConfig::default()).await.unwrap();
    let records: Arc<Mutex<Vec<CallRecord>>> = Arc::default();
    let sink = records.clone();
    let meter = Meter::builder()
        .hook(move |r: &CallRecord| sink.lock().unwrap().push(r.clone()))
        .build()
        .unwrap();
    let settings = ProxySettings {
        upstream: configured.base_url().parse().unwrap(),
        allowed_upstreams: allowed(chosen.addr().port())
            .iter()
            .map(|u| u.parse().unwrap())
            .collect(),
        allow_private_upstreams,
        ..ProxySettings::default()
    };
    let addr = Proxy::new(settings, meter)
        .unwrap()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    Setup {
        configured,
        chosen,
        base: format!("http://{addr}"),
        records,
        http: reqwest::Client::new(),
    }
}

fn chat(stream: bool) -> Value {
    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello"}], "stream": stream})
}

impl Setup {
    /// A chat call choosing `upstream` (none: the route's).
    async fn chat(&self, upstream: Option<&str>, stream: bool) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/v1/chat/completions", self.base))
            .json(&chat(stream));
        if let Some(u) = upstream {
            request = request.header(names::HEADER_PROVIDER_BASE_URI, u);
        }
        request.send().await.unwrap()
    }

    /// A forwarded (unobserved) request choosing `upstream`.
    async fn models(&self, upstream: &str) -> reqwest::Response {
        self.http
            .get(format!("{}/v1/models", self.base))
            .header(names::HEADER_PROVIDER_BASE_URI, upstream)
            .send()
            .await
            .unwrap()
    }
}

/// Asserts the refusal of a private choice: 400, OpenAI-shaped, naming the header and not the
/// address.
async fn assert_refused(resp: reqwest::Response, what: &str) {
    assert_eq!(resp.status(), 400, "{what}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "private_upstream", "{what}: {body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{what}: {body}");
    assert_eq!(
        body["error"]["param"],
        names::HEADER_PROVIDER_BASE_URI,
        "{what}: {body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(names::HEADER_PROVIDER_BASE_URI), "{what}: {message}");
    assert!(
        !message.contains("127.0.0.1") && !message.contains("::1"),
        "{what}: {message}"
    );
}

#[tokio::test]
async fn an_allowed_upstream_at_a_loopback_address_is_refused_by_default() {
    let s = setup(
        |port| vec![format!("http://127.0.0.1:{port}/v1"), format!("http://[::1]:{port}/v1")],
        false,
    )
    .await;
    let port = s.chosen.addr().port();
    for upstream in [format!("http://127.0.0.1:{port}/v1"), format!("http://[::1]:{port}/v1")] {
        assert_refused(s.chat(Some(&upstream), false).await, &upstream).await;
        assert_refused(s.chat(Some(&upstream), true).await, &upstream).await;
        assert_refused(s.models(&upstream).await, &upstream).await;
    }
    assert!(s.chosen.received().is_empty(), "nothing reached the chosen upstream");
    assert!(s.configured.received().is_empty(), "nor the configured one");
    // The refused calls are recorded as invalid requests, not as the upstream's failures.
    let records = s.records.lock().unwrap().clone();
    assert_eq!(records.len(), 4);
    assert!(
        records.iter().all(|r| r.error == Some(ErrorType::InvalidRequest)),
        "{records:?}"
    );
}

#[tokio::test]
async fn an_allowed_upstream_whose_name_resolves_to_loopback_is_refused() {
    let s = setup(|port| vec![format!("http://localhost:{port}/v1")], false).await;
    let upstream = format!("http://localhost:{}/v1", s.chosen.addr().port());
    assert_refused(s.chat(Some(&upstream), false).await, &upstream).await;
    assert_refused(s.models(&upstream).await, &upstream).await;
    assert!(s.chosen.received().is_empty());
}

#[tokio::test]
async fn private_upstreams_may_be_chosen_when_the_operator_allows_them() {
    let s = setup(
        |port| {
            vec![
                format!("http://127.0.0.1:{port}/v1"),
                format!("http://localhost:{port}/v1"),
            ]
        },
        true,
    )
    .await;
    let port = s.chosen.addr().port();
    for upstream in [
        format!("http://127.0.0.1:{port}/v1"),
        format!("http://localhost:{port}/v1"),
    ] {
        let resp = s.chat(Some(&upstream), false).await;
        assert_eq!(resp.status(), 200, "{upstream}");
        assert!(resp.json::<Value>().await.unwrap()["choices"].is_array());
        let resp = s.chat(Some(&upstream), true).await;
        assert_eq!(resp.status(), 200, "{upstream}");
        assert!(resp.text().await.unwrap().contains("[DONE]"));
        assert_eq!(s.models(&upstream).await.status(), 200, "{upstream}");
    }
    assert_eq!(s.chosen.received().len(), 6, "every call went to the chosen upstream");
    assert!(s.configured.received().is_empty());
}

#[tokio::test]
async fn the_configured_upstream_on_loopback_connects_named_or_not_and_unlisted_choices_are_refused() {
    let s = setup(|_| vec![], false).await;
    assert_eq!(s.chat(None, false).await.status(), 200);
    assert_eq!(s.chat(None, true).await.status(), 200);
    // Naming the route's own upstream is the operator's choice, not the request's.
    let own = s.configured.base_url();
    assert_eq!(s.chat(Some(&own), false).await.status(), 200);
    assert_eq!(s.models(&own).await.status(), 200);
    assert_eq!(s.configured.received().len(), 4);

    let unlisted = s.chosen.base_url();
    let resp = s.chat(Some(&unlisted), false).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_header", "{body}");
    assert_eq!(body["error"]["param"], names::HEADER_PROVIDER_BASE_URI);
    assert!(s.chosen.received().is_empty());
}
