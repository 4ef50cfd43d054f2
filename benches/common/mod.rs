//! What the benchmarks share: the recorded OpenAI answer (body and headers).

use http::{HeaderMap, HeaderName, HeaderValue};

pub const BODY: &str = include_str!("../../tests/fixtures/openai-chat-completion.json");
pub const HEADERS: &str = include_str!("../../tests/fixtures/openai-chat-completion.headers");

/// The recorded answer's headers.
pub fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in HEADERS.lines().filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once(':').unwrap();
        h.insert(
            HeaderName::from_bytes(k.trim().as_bytes()).unwrap(),
            HeaderValue::from_str(v.trim()).unwrap(),
        );
    }
    h
}
