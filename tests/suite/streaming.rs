//! The SSE observer on every split of the fixture stream, and the client's streaming behaviour
//! end to end: pass-through, usage policy, no buffering.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use llm_meter::{Annotations, Client, Meter, StreamUsage};
use llm_meter::{EventCutter, EventOutcome, StreamObserver};
use llm_meter::{FinishReason, ResponseFacts, Usage};
use llm_meter_mock::{MockConfig, MockServer};
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
        .meter(
            Meter::builder()
                .stream_usage(StreamUsage::RequestAndShow)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let (text, record) = collect(&show, &stream_body()).await;
    assert!(text.contains("\"choices\":[],") && record.usage.is_some());

    let leave = Client::builder()
        .base_url(mock.base_url())
        .meter(Meter::builder().stream_usage(StreamUsage::Leave).build().unwrap())
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

/// Runs a [`llm_meter::ChatStream`] over `pieces` (one network chunk each) with an outcome field
/// `"x": <output tokens>`; `caller_usage` says whether the caller's request asked for usage.
/// Returns what the caller received, and the error the stream ended with, if any.
async fn with_outcome(pieces: Vec<Result<Bytes, ()>>, caller_usage: bool) -> (String, Option<String>) {
    let meter = llm_meter::Meter::default();
    let mut body = stream_body();
    if caller_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    let prepared = meter.prepare(serde_json::to_vec(&body).unwrap(), Some(true)).unwrap();
    let server = llm_meter::Server::new("api.openai.com", Some(443));
    let call = meter.start(server, &Annotations::none(), prepared.facts);
    // A body error needs a real reqwest error: a connection refused by a closed port.
    let mut refused = match pieces.iter().any(Result::is_err) {
        true => Some(reqwest::get("http://127.0.0.1:9/").await.unwrap_err()),
        false => None,
    };
    let items: Vec<reqwest::Result<Bytes>> = pieces
        .into_iter()
        .map(|p| p.map_err(|()| refused.take().expect("one error at most")))
        .collect();
    let mut s = call
        .observe_stream(
            http::StatusCode::OK,
            http::HeaderMap::new(),
            futures_util::stream::iter(items),
            std::time::Instant::now(),
            prepared.hide_usage_chunk,
        )
        .with_outcome_field("x", |r| r.usage.map_or(0, |u| u.output_tokens).to_string().into_bytes());
    let (mut out, mut error) = (Vec::new(), None);
    while let Some(item) = s.next().await {
        match item {
            Ok(b) => out.extend_from_slice(&b),
            Err(e) => error = Some(e.to_string()),
        }
    }
    (String::from_utf8(out).unwrap(), error)
}

/// The fixture as the caller should get it: without the usage chunk (unless asked for), and
/// with `"x": 27`… added to the carrier chunk's JSON.
fn expected_with_outcome(caller_usage: bool) -> String {
    let events: Vec<&str> = FIXTURE_STREAM.split_inclusive("\n\n").collect();
    let usage_at = events.iter().position(|e| e.contains("\"choices\":[]")).unwrap();
    let finish_at = events
        .iter()
        .position(|e| e.contains("\"finish_reason\":\"stop\""))
        .unwrap();
    let output_tokens = FIXTURE_STREAM.split("\"completion_tokens\":").nth(1).unwrap();
    let output_tokens: String = output_tokens.chars().take_while(char::is_ascii_digit).collect();
    let carrier = if caller_usage { usage_at } else { finish_at };
    let mut out = String::new();
    for (i, e) in events.iter().enumerate() {
        if i == usage_at && !caller_usage {
            continue;
        }
        if i == carrier {
            let json = e.trim_end().strip_suffix('}').unwrap();
            out.push_str(&format!("{json},\"x\":{output_tokens}}}\n\n"));
        } else {
            out.push_str(e);
        }
    }
    out
}

#[tokio::test]
async fn the_outcome_rides_on_the_finish_chunk_at_every_split_when_usage_was_not_asked() {
    let data = FIXTURE_STREAM.as_bytes();
    let want = expected_with_outcome(false);
    for at in 0..=data.len() {
        let pieces = vec![
            Ok(Bytes::copy_from_slice(&data[..at])),
            Ok(Bytes::copy_from_slice(&data[at..])),
        ];
        let (got, error) = with_outcome(pieces, false).await;
        assert_eq!((got.as_str(), error), (want.as_str(), None), "split at {at}");
    }
}

#[tokio::test]
async fn the_outcome_rides_on_the_usage_chunk_at_every_split_when_usage_was_asked() {
    let data = FIXTURE_STREAM.as_bytes();
    let want = expected_with_outcome(true);
    for at in (0..=data.len()).step_by(7) {
        let pieces = vec![
            Ok(Bytes::copy_from_slice(&data[..at])),
            Ok(Bytes::copy_from_slice(&data[at..])),
        ];
        let (got, _) = with_outcome(pieces, true).await;
        assert_eq!(got, want, "split at {at}");
    }
}

#[tokio::test]
async fn content_is_never_held_back_for_the_outcome() {
    // One event per network chunk: each content delta is passed on in the poll that read it.
    let pieces: Vec<&str> = FIXTURE_STREAM.split_inclusive("\n\n").collect();
    let meter = llm_meter::Meter::default();
    let prepared = meter
        .prepare(serde_json::to_vec(&stream_body()).unwrap(), Some(true))
        .unwrap();
    let server = llm_meter::Server::new("h", None);
    let call = meter.start(server, &Annotations::none(), prepared.facts);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<reqwest::Result<Bytes>>();
    let rx = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let mut s = call
        .observe_stream(
            http::StatusCode::OK,
            http::HeaderMap::new(),
            rx,
            std::time::Instant::now(),
            true,
        )
        .with_outcome_field("x", |_| b"1".to_vec());
    for piece in &pieces {
        tx.send(Ok(Bytes::copy_from_slice(piece.as_bytes()))).unwrap();
        let is_content =
            !piece.contains("finish_reason\":\"") && !piece.contains("\"choices\":[]") && !piece.contains("[DONE]");
        if is_content {
            let got = tokio::time::timeout(Duration::from_secs(5), s.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(got, piece.as_bytes(), "a content chunk passes on at once, unchanged");
        }
    }
    drop(tx);
    let mut rest = Vec::new();
    while let Some(b) = s.next().await {
        rest.extend_from_slice(&b.unwrap());
    }
    let rest = String::from_utf8(rest).unwrap();
    assert!(
        rest.contains("\"finish_reason\":\"stop\"") && rest.contains(",\"x\":1}"),
        "{rest}"
    );
    assert!(rest.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn several_finish_chunks_pass_in_order_and_the_last_carries_the_outcome() {
    // n = 2: each choice ends in its own chunk; only the last one carries the outcome.
    let two = FIXTURE_STREAM.replace(
        "data: {\"id\":\"chatcmpl-BDXMEvOKQnSYFATQSDa0BbxRSDUrN\",\"object\":\"chat.completion.chunk\",\"created\":1742566190,\"model\":\"gpt-4o-2024-08-06\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_6ec83003ad\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":1,\"delta\":{},\"finish_reason\":\"length\"}]}\n\ndata: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    );
    assert_ne!(two, FIXTURE_STREAM, "the fixture's finish chunk was replaced");
    let (got, error) = with_outcome(vec![Ok(Bytes::from(two))], false).await;
    assert_eq!(error, None);
    let length = got.find("\"finish_reason\":\"length\"}]}\n\n").expect(&got);
    let stop = got.find("\"finish_reason\":\"stop\"}],\"x\":").expect(&got);
    assert!(length < stop && got[stop..].starts_with("\"finish_reason\":\"stop\"}],\"x\":"));
    assert_eq!(got.matches("\"x\":").count(), 1);
    assert!(got.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn a_held_chunk_is_passed_on_when_the_stream_is_cut_or_fails() {
    let data = FIXTURE_STREAM.as_bytes();
    let usage_at = FIXTURE_STREAM.find("data: {\"id\":\"chatcmpl-BDXMEvOKQnSYFATQSDa0BbxRSDUrN\",\"object\":\"chat.completion.chunk\",\"created\":1742566190,\"model\":\"gpt-4o-2024-08-06\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_6ec83003ad\",\"choices\":[]").unwrap();
    // Truncated after the finish chunk: it still reaches the caller, with the outcome.
    let (got, error) = with_outcome(vec![Ok(Bytes::copy_from_slice(&data[..usage_at]))], false).await;
    assert_eq!(error, None);
    assert!(
        got.contains("\"finish_reason\":\"stop\"}],\"usage\":null,\"x\":0}\n\n"),
        "{got}"
    );
    // A transport error after the finish chunk: the chunk first, then the error.
    let (got, error) = with_outcome(vec![Ok(Bytes::copy_from_slice(&data[..usage_at])), Err(())], false).await;
    assert!(
        got.contains("\"finish_reason\":\"stop\"}],\"usage\":null,\"x\":0}\n\n"),
        "{got}"
    );
    assert!(error.is_some());
}

#[tokio::test]
async fn an_empty_first_chunk_azure_style_records_no_empty_id_or_model() {
    // Azure OpenAI opens a stream with a chunk of empty values and its prompt filter results.
    let azure_first = "data: {\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\",\"prompt_filter_results\":[{\"prompt_index\":0,\"content_filter_results\":{\"hate\":{\"filtered\":false,\"severity\":\"safe\"}}}]}\n\n";
    let body = format!("{azure_first}{FIXTURE_STREAM}");
    let meter = llm_meter::Meter::default();
    let prepared = meter
        .prepare(serde_json::to_vec(&stream_body()).unwrap(), Some(true))
        .unwrap();
    let server = llm_meter::Server::new("my-resource.openai.azure.com", Some(443));
    let call = meter.start(server, &Annotations::none(), prepared.facts);
    let mut s = call.observe_stream(
        http::StatusCode::OK,
        http::HeaderMap::new(),
        futures_util::stream::iter([Ok::<_, llm_meter::CallError>(Bytes::from(body))]),
        std::time::Instant::now(),
        false,
    );
    while let Some(c) = s.next().await {
        c.unwrap();
    }
    let r = s.record().unwrap();
    assert_eq!(r.response.id.as_deref(), Some("chatcmpl-BDXMEvOKQnSYFATQSDa0BbxRSDUrN"));
    assert_eq!(r.response.model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(r.response.created, Some(1742566190));
    assert_eq!(r.response.object.as_deref(), Some("chat.completion.chunk"));
    assert!(r.cost.is_some(), "priced by the response model");
    assert_eq!(r.error, None);
}
