//! The SSE observer on every split of the fixture stream, and the client's streaming behaviour
//! end to end: pass-through, usage policy, no buffering.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use llm_meter::mock::{MockConfig, MockServer};
use llm_meter::provider::{FinishReason, ResponseFacts, Usage};
use llm_meter::stream::{EventCutter, EventOutcome, StreamObserver};
use llm_meter::{Annotations, Client, StreamUsage};
use proptest::prelude::*;
use serde_json::json;

/// Variants of the fixture with other legal framings of the same events.
fn variants() -> Vec<(&'static str, String)> {
    let lf = FIXTURE_STREAM.to_owned();
    let crlf = lf.replace('\n', "\r\n");
    let cr = lf.replace('\n', "\r");
    let comments = lf.replace("data: {", ": keep-alive\nevent: message\ndata: {").replacen(
        "data: ",
        ": OPENROUTER PROCESSING\n\ndata: ",
        1,
    );
    // Each JSON payload split over two `data:` lines (joined with "\n", still the same JSON).
    let multiline = lf.replace(",\"created\":", ",\ndata: \"created\":");
    let no_space = lf.replace("data: ", "data:");
    vec![
        ("lf", lf),
        ("crlf", crlf),
        ("cr", cr),
        ("comments", comments),
        ("multiline", multiline),
        ("no-space", no_space),
    ]
}

struct Observed {
    facts: ResponseFacts,
    usage: Option<Usage>,
    chunks: u32,
    done: bool,
    decode_error: bool,
    passed: Vec<u8>,
}

/// Runs the observer and the usage-hiding cutter over `pieces`.
fn observe(pieces: &[&[u8]], hide_usage: bool) -> Observed {
    let mut o = StreamObserver::new(std::time::Instant::now());
    let mut cutter = EventCutter::default();
    let mut passed = Vec::new();
    let mut events = Vec::new();
    for piece in pieces {
        events.clear();
        o.observe(piece, |outcome, end| {
            events.push((end, !(hide_usage && outcome == EventOutcome::UsageOnly)))
        });
        if let Some(out) = cutter.cut(Bytes::copy_from_slice(piece), &events) {
            passed.extend_from_slice(&out);
        }
    }
    if let Some(rest) = cutter.finish() {
        passed.extend_from_slice(&rest);
    }
    Observed {
        facts: o.facts.clone(),
        usage: o.usage,
        chunks: o.chunks,
        done: o.done,
        decode_error: o.error.is_some(),
        passed,
    }
}

/// Byte range of the usage-only event: from the end of the previous event's blank line to the
/// end of its own.
fn usage_event(stream: &str) -> (usize, usize) {
    let sep = ["\r\n\r\n", "\n\n", "\r\r"]
        .into_iter()
        .find(|sep| stream.contains(sep))
        .unwrap();
    let at = stream.find("\"choices\":[],").unwrap();
    let start = stream[..at].rfind(sep).unwrap() + sep.len();
    let end = at + stream[at..].find(sep).unwrap() + sep.len();
    (start, end)
}

fn check(name: &str, stream: &str, o: &Observed, hide_usage: bool) {
    assert!(o.done, "{name}: [DONE] not seen");
    assert!(!o.decode_error, "{name}: decode error");
    assert_eq!(o.chunks, 10, "{name}");
    assert_eq!(
        o.facts.id.as_deref(),
        Some("chatcmpl-BDXMEvOKQnSYFATQSDa0BbxRSDUrN"),
        "{name}"
    );
    assert_eq!(o.facts.model.as_deref(), Some("gpt-4o-2024-08-06"), "{name}");
    assert_eq!(o.facts.finish_reasons, [FinishReason::Stop], "{name}");
    let u = o.usage.expect("usage");
    assert_eq!(
        (u.input_tokens, u.output_tokens, u.total_tokens),
        (27, 44, Some(71)),
        "{name}"
    );
    if hide_usage {
        let (start, end) = usage_event(stream);
        let mut want = stream.as_bytes()[..start].to_vec();
        want.extend_from_slice(&stream.as_bytes()[end..]);
        assert_eq!(
            String::from_utf8_lossy(&o.passed),
            String::from_utf8_lossy(&want),
            "{name}: only the usage event is removed"
        );
    } else {
        assert_eq!(o.passed, stream.as_bytes(), "{name}: bytes pass unchanged");
    }
}

#[test]
fn observer_is_correct_for_every_two_way_split_of_every_framing() {
    for (name, stream) in variants() {
        let bytes = stream.as_bytes();
        for at in 0..=bytes.len() {
            let (a, b) = bytes.split_at(at);
            for hide in [false, true] {
                check(&format!("{name}@{at}"), &stream, &observe(&[a, b], hide), hide);
            }
        }
    }
}

#[test]
fn observer_is_correct_one_byte_at_a_time() {
    for (name, stream) in variants() {
        let pieces: Vec<&[u8]> = stream.as_bytes().chunks(1).collect();
        for hide in [false, true] {
            check(name, &stream, &observe(&pieces, hide), hide);
        }
    }
}

proptest! {
    #[test]
    fn observer_is_correct_for_random_multi_way_splits(cuts in proptest::collection::btree_set(0usize..3395, 0..40), which in 0usize..6, hide: bool) {
        let (name, stream) = &variants()[which];
        let bytes = stream.as_bytes();
        let mut pieces = Vec::new();
        let mut last = 0;
        for c in cuts.into_iter().filter(|c| *c <= bytes.len()) {
            pieces.push(&bytes[last..c]);
            last = c;
        }
        pieces.push(&bytes[last..]);
        check(name, stream, &observe(&pieces, hide), hide);
    }

    #[test]
    fn observer_never_panics_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..600), at in 0usize..600) {
        let at = at.min(data.len());
        let o = observe(&[&data[..at], &data[at..]], true);
        prop_assert!(o.passed.len() <= data.len());
    }
}

#[test]
fn unreadable_chunk_mid_stream_is_a_decode_error_and_still_passes() {
    let stream = FIXTURE_STREAM.replacen("data: {\"id\"", "data: {not json at all\n\ndata: {\"id\"", 3);
    let o = observe(&[stream.as_bytes()], false);
    assert!(o.decode_error);
    assert!(o.done);
    assert_eq!(o.passed, stream.as_bytes());
}

#[test]
fn stream_cut_mid_event_is_not_done_and_passes_the_partial_bytes() {
    let cut = &FIXTURE_STREAM.as_bytes()[..FIXTURE_STREAM.len() / 2];
    let o = observe(&[cut], true);
    assert!(!o.done);
    assert_eq!(o.passed, cut, "nothing is lost, even the unfinished event");
}

fn stream_body() -> serde_json::Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Tell me a story"}], "stream": true})
}

async fn collect(client: &Client, body: &serde_json::Value) -> (String, llm_meter::CallRecord) {
    let mut s = client.chat_stream(body, &Annotations::none()).await.unwrap();
    let mut text = Vec::new();
    while let Some(c) = s.next().await {
        text.extend_from_slice(&c.unwrap());
    }
    (String::from_utf8(text).unwrap(), s.record().unwrap().clone())
}

#[tokio::test]
async fn usage_the_caller_asked_for_is_left_alone_and_visible() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let client = Client::builder().base_url(mock.base_url()).build().unwrap();
    let mut body = stream_body();
    body["stream_options"] = json!({"include_usage": true});
    let (text, record) = collect(&client, &body).await;
    assert!(text.contains("\"choices\":[],"), "usage chunk visible");
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(
        mock.received()[0].body,
        serde_json::to_vec(&body).unwrap(),
        "body sent unchanged"
    );
    assert!(record.usage.is_some() && record.error.is_none());
}

#[tokio::test]
async fn usage_policy_show_and_leave() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let show = Client::builder()
        .base_url(mock.base_url())
        .stream_usage(StreamUsage::RequestAndShow)
        .build()
        .unwrap();
    let (text, record) = collect(&show, &stream_body()).await;
    assert!(text.contains("\"choices\":[],") && record.usage.is_some());

    let leave = Client::builder()
        .base_url(mock.base_url())
        .stream_usage(StreamUsage::Leave)
        .build()
        .unwrap();
    let (text, record) = collect(&leave, &stream_body()).await;
    assert!(!text.contains("\"usage\""), "no usage asked, none sent");
    assert!(record.usage.is_none());
    assert_eq!(record.error, None);
    let sent: serde_json::Value = serde_json::from_slice(&mock.received()[1].body).unwrap();
    assert!(sent.get("stream_options").is_none());

    // The default hides the chunk it asked for, merging into existing stream_options.
    let hide = Client::builder().base_url(mock.base_url()).build().unwrap();
    let mut body = stream_body();
    body["stream_options"] = json!({"include_obfuscation": false});
    let (text, record) = collect(&hide, &body).await;
    assert!(!text.contains("\"choices\":[],") && record.usage.is_some());
    let sent: serde_json::Value = serde_json::from_slice(&mock.received()[2].body).unwrap();
    assert_eq!(
        sent["stream_options"],
        json!({"include_obfuscation": false, "include_usage": true})
    );
}

#[tokio::test]
async fn first_chunk_reaches_the_caller_before_the_provider_sends_the_second() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let client = Client::builder()
        .base_url(mock.base_url())
        .default_header("x-mock-gate".parse().unwrap(), "1".parse().unwrap())
        .build()
        .unwrap();
    let mut s = client.chat_stream(&stream_body(), &Annotations::none()).await.unwrap();
    // The mock holds every chunk after the first until released: if anything buffered, this
    // would wait forever.
    let first = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("first chunk without buffering")
        .unwrap()
        .unwrap();
    assert!(first.starts_with(b"data: {"));
    mock.release(1000);
    while let Some(c) = s.next().await {
        c.unwrap();
    }
    assert_eq!(s.record().unwrap().error, None);
}

#[tokio::test]
async fn chat_and_chat_stream_reject_the_wrong_kind_of_body() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let client = Client::builder().base_url(mock.base_url()).build().unwrap();
    let e = client.chat(&stream_body(), &Annotations::none()).await.unwrap_err();
    assert!(e.to_string().contains("use chat_stream"), "{e}");
    let e = client
        .chat_stream(&json!({"model": "m", "messages": []}), &Annotations::none())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("\"stream\": true"), "{e}");
    let e = client.chat(&json!([1, 2]), &Annotations::none()).await.unwrap_err();
    assert!(e.to_string().contains("JSON object"), "{e}");
    assert!(mock.received().is_empty(), "nothing was sent");
}
