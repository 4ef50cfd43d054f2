//! Fuzzing of every parser that reads outside input, with proptest: annotation headers, response
//! headers and durations, response bodies, the SSE observer, request bodies, the config file and
//! the ledger snapshot. Inputs are random bytes and mutations (flips, cuts, insertions, splices)
//! of the real recordings in `tests/fixtures`. Each target must never panic, and where a parser
//! has a law (a stream observed the same however it is cut; annotations that survive their own
//! headers), the law is checked too.
//!
//! `LLM_METER_FUZZ_CASES` sets the cases per target (default 1000, the short run of the test
//! command); `scripts/fuzz.sh` is the long run, and docs/fuzzing.md records its figures.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::{HeaderMap, HeaderName, HeaderValue};
use llm_meter::{
    names, Annotations, AnthropicMessage, Api, ChatCompletion, Meter, OpenAiResponse, ProviderMeta, RequestFacts,
    StreamObserver,
};
use llm_meter_proxy::config::Config;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};

use crate::common::{FIXTURE_BODY, FIXTURE_HEADERS, FIXTURE_STREAM};

const ANTHROPIC_BODY: &str = include_str!("../fixtures/anthropic-message.json");
const ANTHROPIC_STREAM: &str = include_str!("../fixtures/anthropic-message-stream.sse");
const RESPONSES_BODY: &str = include_str!("../fixtures/openai-response.json");
const RESPONSES_STREAM: &str = include_str!("../fixtures/openai-response-stream.sse");

const REQUEST: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":false},"max_completion_tokens":64,"temperature":0.2,"top_p":0.9,"stop":["END"],"n":2,"seed":7}"#;

const CONFIG: &str = r#"
upstream = "https://api.openai.com/v1"
listen = "127.0.0.1:8787"
[proxy]
keys = ["0123456789abcdef0123"]
timeout = "600s"
read_timeout = "2m"
[[limits]]
id = "daily"
max = 5.0
kind = "block"
reset = "1d"
threshold = 0.8
[prices."my-model"]
input = 1.0
output = 2.0
[labels]
user_id = 100
[model_defaults."gpt-4o"]
max_completion_tokens = 1024
"#;

const SNAPSHOT: &str =
    r#"{"version":1,"saved_at_unix":1764547200,"limits":{"daily":{"spend":1.25,"window_start_unix":1764547200.5}}}"#;

fn cases() -> u32 {
    std::env::var("LLM_METER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// One edit of a seed.
#[derive(Clone, Debug)]
enum Edit {
    Flip(usize, u8),
    Cut(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
        any::<usize>().prop_map(Edit::Cut),
        (
            any::<usize>(),
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..8),
                Just(b"\n\n".to_vec()),
                Just(b"data: ".to_vec()),
                Just(b"\r".to_vec()),
                Just(b"\"".to_vec()),
                Just(b"{".to_vec()),
                Just("é\u{0}".as_bytes().to_vec()),
                Just(b"99999999999999999999999".to_vec()),
            ]
        )
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), 0usize..64).prop_map(|(i, n)| Edit::Remove(i, n)),
    ];
    proptest::collection::vec(edit, 0..6)
}

fn apply(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for e in edits {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
        match e {
            Edit::Flip(i, b) if !out.is_empty() => {
                let n = out.len();
                out[i % n] ^= b;
            }
            Edit::Flip(..) => {}
            Edit::Cut(i) => out.truncate(at(*i, out.len())),
            Edit::Insert(i, bytes) => {
                let p = at(*i, out.len());
                out.splice(p..p, bytes.iter().copied());
            }
            Edit::Remove(i, n) => {
                let p = at(*i, out.len());
                let end = (p + n).min(out.len());
                out.drain(p..end);
            }
        }
    }
    out
}

/// Random bytes, or a seed with a few edits.
fn input(seed: &'static str) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..512),
        4 => edits().prop_map(move |e| apply(seed.as_bytes(), &e)),
    ]
}

/// Runs `property` on `cases()` inputs from `strategy`; fails on a panic or a broken law, and
/// prints how many inputs the target saw.
fn fuzz<S: Strategy>(target: &str, strategy: S, property: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    let runs = AtomicU64::new(0);
    let started = Instant::now();
    let mut runner = TestRunner::new(RunnerConfig {
        cases: cases(),
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let result = runner.run(&strategy, |v| {
        runs.fetch_add(1, Ordering::Relaxed);
        property(v)
    });
    eprintln!(
        "fuzz {target}: {} inputs in {:.2} s",
        runs.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("fuzz {target}: {e}");
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn annotation_headers_never_panic_and_valid_ones_survive_their_own_headers() {
    let headers = [
        names::HEADER_USE_CASE_NAME,
        names::HEADER_USE_CASE_ID,
        names::HEADER_USE_CASE_VERSION,
        names::HEADER_USE_CASE_STEP,
        names::HEADER_USE_CASE_PROPERTIES,
        names::HEADER_USER_ID,
        names::HEADER_ACCOUNT_NAME,
        names::HEADER_LIMIT_IDS,
        names::HEADER_REQUEST_TAGS,
        names::HEADER_REQUEST_PROPERTIES,
    ];
    let value = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..80),
        Just(b"support.triage".to_vec()),
        Just(br#"{"tier":"gold","n":"1"}"#.to_vec()),
        Just(b"daily, monthly,,".to_vec()),
        Just(b"beta,beta,x-1".to_vec()),
    ];
    let strategy = proptest::collection::vec((0..headers.len(), value), 0..8);
    fuzz("annotations", strategy, |pairs| {
        let mut map = HeaderMap::new();
        for (i, v) in pairs {
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                map.append(HeaderName::from_bytes(headers[i].as_bytes()).unwrap(), v);
            }
        }
        if let Ok(a) = Annotations::from_headers(&map) {
            let again = Annotations::from_headers(&a.to_headers()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(again.to_headers(), a.to_headers());
        }
        Ok(())
    });
}

#[test]
fn response_headers_and_durations_never_panic() {
    let names: Vec<String> = FIXTURE_HEADERS
        .lines()
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_ascii_lowercase()))
        .filter(|n| !n.is_empty())
        .collect();
    let names_len = names.len();
    let strategy = proptest::collection::vec((0..names_len, input("6m0s")), 0..24);
    fuzz("provider headers", strategy, |pairs| {
        let mut map = HeaderMap::new();
        for (i, v) in pairs {
            let (Ok(n), Ok(v)) = (HeaderName::from_bytes(names[i].as_bytes()), HeaderValue::from_bytes(&v)) else {
                continue;
            };
            map.append(n, v);
        }
        let meta = ProviderMeta::from_headers(&map);
        let _ = format!("{meta:?}");
        Ok(())
    });
    fuzz("durations", input("1h2m3.5s"), |bytes| {
        let t = text(&bytes);
        if let Some(d) = llm_meter::parse_duration(&t) {
            prop_assert!(d.as_secs_f64().is_finite());
        }
        let _ = llm_meter::parse_period(&t);
        let _ = llm_meter::parse_api_base(&t);
        Ok(())
    });
}

#[test]
fn response_bodies_never_panic() {
    fuzz("chat completion body", input(FIXTURE_BODY), |bytes| {
        if let Ok(c) = ChatCompletion::parse(&bytes) {
            let _ = format!("{c:?}");
        }
        Ok(())
    });
}

/// A stream cut at `cuts` (positions modulo its length).
fn observe(bytes: &[u8], cuts: &[usize]) -> String {
    observe_as(Api::ChatCompletions, bytes, cuts)
}

fn observe_as(format: Api, bytes: &[u8], cuts: &[usize]) -> String {
    let mut positions: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    positions.sort_unstable();
    let mut observer = StreamObserver::for_api(Instant::now(), format);
    let mut start = 0;
    for p in positions.into_iter().chain([bytes.len()]) {
        observer.observe_all(&bytes[start..p]);
        start = p;
    }
    // Everything but the timings, which differ between runs.
    format!(
        "{:?} {:?} {:?} {:?} {:?}",
        observer.facts, observer.usage, observer.chunks, observer.done, observer.error
    )
}

#[test]
fn sse_streams_never_panic_and_are_observed_the_same_however_they_are_cut() {
    let strategy = (input(FIXTURE_STREAM), proptest::collection::vec(any::<usize>(), 0..12));
    fuzz("sse stream", strategy, |(bytes, cuts)| {
        let whole = observe(&bytes, &[]);
        let cut = observe(&bytes, &cuts);
        prop_assert_eq!(whole, cut);
        Ok(())
    });
}

#[test]
fn anthropic_and_responses_bodies_and_streams_never_panic_and_streams_are_cut_invariant() {
    fuzz("anthropic body", input(ANTHROPIC_BODY), |bytes| {
        let _ = AnthropicMessage::parse(&bytes);
        Ok(())
    });
    fuzz("responses body", input(RESPONSES_BODY), |bytes| {
        let _ = OpenAiResponse::parse(&bytes);
        Ok(())
    });
    for (target, format, seed) in [
        ("anthropic stream", Api::AnthropicMessages, ANTHROPIC_STREAM),
        ("responses stream", Api::Responses, RESPONSES_STREAM),
    ] {
        let strategy = (input(seed), proptest::collection::vec(any::<usize>(), 0..12));
        fuzz(target, strategy, |(bytes, cuts)| {
            prop_assert_eq!(observe_as(format, &bytes, &[]), observe_as(format, &bytes, &cuts));
            Ok(())
        });
    }
}

#[test]
fn request_bodies_never_panic() {
    let meter = Meter::default();
    fuzz("request body", input(REQUEST), |bytes| {
        let _ = RequestFacts::parse(&bytes);
        let _ = meter.prepare(bytes, None);
        Ok(())
    });
}

#[test]
fn config_files_never_panic() {
    fuzz("config file", input(CONFIG), |bytes| {
        if let Ok(t) = std::str::from_utf8(&bytes) {
            let _ = Config::parse(t);
        }
        Ok(())
    });
}

#[test]
fn ledger_snapshots_never_panic() {
    let dir = std::env::temp_dir().join(format!("llm-meter-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ledger.json");
    let limits = Config::parse(CONFIG).unwrap().limits;
    fuzz("ledger snapshot", input(SNAPSHOT), |bytes| {
        std::fs::write(&path, &bytes).unwrap();
        let _ = llm_meter::MemoryLedger::restore(limits.clone(), &path);
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// The seeds are inputs the parsers accept, so that their mutations reach past the first check.
#[test]
fn seeds_are_valid_inputs() {
    assert!(ChatCompletion::parse(FIXTURE_BODY.as_bytes()).is_ok());
    assert!(RequestFacts::parse(REQUEST.as_bytes()).is_ok());
    assert!(llm_meter::parse_duration("1h2m3.5s").is_some());
    let config = Config::parse(CONFIG).unwrap();
    let dir = std::env::temp_dir().join(format!("llm-meter-fuzz-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ledger.json");
    std::fs::write(&path, SNAPSHOT).unwrap();
    let restored = llm_meter::MemoryLedger::restore(config.limits, &path);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(restored.is_ok(), "{restored:?}");
    let whole = observe(FIXTURE_STREAM.as_bytes(), &[]);
    assert!(whole.contains("Usage {"), "{whole}");
    assert!(AnthropicMessage::parse(ANTHROPIC_BODY.as_bytes()).is_ok());
    assert!(OpenAiResponse::parse(RESPONSES_BODY.as_bytes()).is_ok());
    for (format, seed) in [
        (Api::AnthropicMessages, ANTHROPIC_STREAM),
        (Api::Responses, RESPONSES_STREAM),
    ] {
        let seen = observe_as(format, seed.as_bytes(), &[]);
        assert!(seen.contains("Usage {") && seen.contains("true"), "{format:?}: {seen}");
    }
}
