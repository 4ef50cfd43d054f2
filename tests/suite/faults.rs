//! The fault matrix: every way a call can go wrong, through both doors (the library `Client`
//! and the proxy), streaming and not, against the mock provider forcing the fault.
//!
//! For every case: the caller gets the provider's answer as it came (an HTTP error's status and
//! body unchanged), or, when no answer came, the library's `CallError` or the proxy's documented
//! rejection (`Rejection::Upstream`: 502, 504 on a timeout); exactly one `CallRecord` is made,
//! with the fault's `error.type`; the metrics count the call once; the block limit's reservation
//! is released; nothing is left in flight; and the mock saw the upstream call answered, or
//! abandoned when the caller (or a timeout) gave up on it.
//!
//! Every case has its own mock, meter and proxy on ephemeral ports; the cases of a table run at
//! once, and the failures of all of them are reported together.

use std::time::Duration;

use futures_util::StreamExt;
use http::{HeaderName, HeaderValue};
use llm_meter::{names, CallError, Client, ErrorType};
use llm_meter_mock::{MockConfig, MockServer, RequestCounts, StreamCounts};
use llm_meter_proxy::{Proxy, ProxySettings, Rejection};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use crate::common::metered::{limited, metered, Metered, LIMIT};

/// Longest wait for a whole non-streaming answer (client `timeout`, proxy `timeout`).
const TIMEOUT: Duration = Duration::from_millis(500);
/// Longest wait for the next bytes (client and proxy `read_timeout`): it bounds streams.
const READ_TIMEOUT: Duration = Duration::from_millis(800);
/// When a caller that goes away gives up.
const GIVE_UP: Duration = Duration::from_millis(150);
/// How long after the record no second one may come.
const QUIET: Duration = Duration::from_millis(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Door {
    Library,
    Proxy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// The provider answers with this HTTP status (`x-mock-error: <code>`).
    Status(u16),
    /// Nothing listens on the upstream's port.
    Refused,
    /// The connection is closed before the response head (`reset-head`).
    ResetHead,
    /// The connection is reset mid-body (`reset`).
    ResetBody,
    /// The stream ends without `[DONE]` (`truncate`).
    Truncate,
    /// 200 with a body that is not JSON (`garbage`).
    Garbage,
    /// A stream chunk cut mid-JSON (`malformed-sse`).
    MalformedSse,
    /// A byte that is not UTF-8 in the content (`bad-utf8`).
    BadUtf8,
    /// A response head over the client's limit (`huge-head`).
    HugeHead,
    /// No answer at all (`stall`): the timeouts end the call.
    Stall,
    /// The head and half the body, then nothing (`stall-body`): the timeouts end the call.
    StallBody,
    /// The caller goes away before the head (the provider `stall`s).
    GoneBeforeHead,
    /// The caller goes away mid-body: after a stream's first chunk, or, for a non-streaming
    /// call, while the door reads the provider's body (`stall-body`).
    GoneMidBody,
}

impl Fault {
    /// The `x-mock-error` that provokes it.
    fn header(self) -> Option<String> {
        let fault = match self {
            Fault::Status(code) => return Some(code.to_string()),
            Fault::Refused => return None,
            Fault::ResetHead => "reset-head",
            Fault::ResetBody => "reset",
            Fault::Truncate => "truncate",
            Fault::Garbage => "garbage",
            Fault::MalformedSse => "malformed-sse",
            Fault::BadUtf8 => "bad-utf8",
            Fault::HugeHead => "huge-head",
            Fault::Stall | Fault::GoneBeforeHead => "stall",
            Fault::StallBody | Fault::GoneMidBody => "stall-body",
        };
        Some(fault.to_owned())
    }

    /// What the mock saw of the upstream call (`None`: nothing reached it): whether it
    /// answered, and how a body sent piece by piece ended (`None`: either way).
    fn upstream(self, stream: bool) -> Option<(RequestCounts, Option<StreamCounts>)> {
        let answered = RequestCounts {
            answered: 1,
            abandoned: 0,
        };
        let abandoned = RequestCounts {
            answered: 0,
            abandoned: 1,
        };
        let sent_whole = StreamCounts {
            finished: 1,
            abandoned: 0,
        };
        let cut_off = StreamCounts {
            finished: 0,
            abandoned: 1,
        };
        let none = StreamCounts::default();
        let (requests, streams) = match self {
            Fault::Refused => return None,
            Fault::ResetHead => (RequestCounts::default(), Some(none)),
            Fault::Stall | Fault::GoneBeforeHead => (abandoned, Some(none)),
            Fault::StallBody | Fault::GoneMidBody => (answered, Some(cut_off)),
            // The stream may be all sent before the client gives up on the head, or not.
            Fault::HugeHead if stream => (answered, None),
            // Bodies sent whole, not piece by piece: errors, and 200s to non-streaming calls.
            Fault::Status(_) | Fault::Garbage | Fault::HugeHead => (answered, Some(none)),
            // Cut by the mock on purpose: it ended them itself.
            Fault::ResetBody => (answered, Some(sent_whole)),
            _ if stream => (answered, Some(sent_whole)),
            _ => (answered, Some(none)),
        };
        Some((requests, streams))
    }
}

/// What the caller should get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// The provider's status and body, byte for byte as the mock answers the same request.
    Relayed,
    /// 200 and the provider's body or stream to its end, bytes as sent (`done`: the stream
    /// has its `[DONE]`).
    Whole { done: bool },
    /// 200, then the body fails part way: the library's stream yields the error (its
    /// `error.type` is the record's); the proxy cuts the connection.
    Cut,
    /// No answer: the library returns `CallError::Http` of the record's `error.type`; the
    /// proxy answers `Rejection::Upstream` of it (502, or 504 for a timeout).
    Failed,
    /// The caller went away first.
    Gone,
}

/// One row of a table: a fault, streaming or not, its `error.type` and what each door's
/// caller gets.
#[derive(Clone, Copy, Debug)]
struct Row {
    fault: Fault,
    stream: bool,
    error: ErrorType,
    library: Want,
    proxy: Want,
}

const fn row(fault: Fault, stream: bool, error: ErrorType, library: Want, proxy: Want) -> Row {
    Row {
        fault,
        stream,
        error,
        library,
        proxy,
    }
}

/// How one door's call went, as its caller saw it.
#[derive(Debug)]
enum Got {
    /// A response head came: its status, the body bytes read, and how reading ended (`Ok`:
    /// at the end; `Err`: failed, with the library's `error.type`, `None` through the proxy
    /// whose connection was cut).
    Answer {
        status: u16,
        body: Vec<u8>,
        end: Result<(), Option<ErrorType>>,
    },
    /// The library returned an error before any answer.
    Error(ErrorType, String),
    /// The caller went away.
    Gone,
}

fn request_body(stream: bool) -> Value {
    let mut body =
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 100});
    if stream {
        // Usage asked for by the caller: the doors send the body unchanged.
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// A port nothing listens on: bound, so that no other case's server gets it while the socket
/// lives, but not listening, so connections to it are refused.
fn closed_port() -> tokio::net::TcpSocket {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    socket
}

/// The mock's own answer to the request, from a fresh mock like the case's: status and body.
async fn reference(fault: Fault, stream: bool, http: &reqwest::Client) -> (u16, Vec<u8>) {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let mut req = http
        .post(format!("{}/chat/completions", mock.base_url()))
        .json(&request_body(stream));
    if let Some(h) = fault.header() {
        req = req.header("x-mock-error", h);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
}

/// How the caller reaches the provider.
enum Caller {
    Library(Client),
    Proxy(Box<reqwest::RequestBuilder>),
}

/// The caller of a case, through `door` to the provider at `base_url`, observed by `m`.
async fn caller(row: Row, door: Door, base_url: String, m: &Metered, http: &reqwest::Client) -> Caller {
    let fault = row.fault.header();
    if door == Door::Library {
        let mut builder = Client::builder()
            .base_url(base_url)
            .meter(m.meter.clone())
            .timeout(Some(TIMEOUT))
            .read_timeout(Some(READ_TIMEOUT));
        if let Some(h) = fault {
            builder = builder.default_header(
                HeaderName::from_static("x-mock-error"),
                HeaderValue::from_str(&h).unwrap(),
            );
        }
        return Caller::Library(builder.build().unwrap());
    }
    let settings = ProxySettings {
        upstream: base_url.parse().unwrap(),
        timeout: TIMEOUT,
        read_timeout: READ_TIMEOUT,
        ..ProxySettings::default()
    };
    let addr = Proxy::new(settings, m.meter.clone())
        .unwrap()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut req = http
        .post(format!("http://{addr}/v1/chat/completions"))
        .header(names::HEADER_LIMIT_IDS, LIMIT)
        .json(&request_body(row.stream));
    if let Some(h) = fault {
        req = req.header("x-mock-error", h);
    }
    Caller::Proxy(Box::new(req))
}

async fn via_library(row: Row, client: Client) -> Got {
    let body = request_body(row.stream);
    let annotations = limited();
    let failed = |e: CallError| {
        assert!(matches!(e, CallError::Http { .. }), "a transport error: {e:?}");
        Got::Error(e.error_type(), format!("{e:?}"))
    };
    if !row.stream {
        if row.library == Want::Gone {
            let gone = tokio::time::timeout(GIVE_UP, client.chat(&body, &annotations)).await;
            assert!(gone.is_err(), "the caller gave up first: {gone:?}");
            return Got::Gone;
        }
        return match client.chat(&body, &annotations).await {
            Ok(resp) => Got::Answer {
                status: resp.status().as_u16(),
                body: resp.body().to_vec(),
                end: Ok(()),
            },
            Err(e) => failed(e),
        };
    }
    if row.fault == Fault::GoneBeforeHead {
        let gone = tokio::time::timeout(GIVE_UP, client.chat_stream(&body, &annotations)).await;
        assert!(gone.is_err(), "the caller gave up first: {gone:?}");
        return Got::Gone;
    }
    let mut stream = match client.chat_stream(&body, &annotations).await {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    let status = stream.status().as_u16();
    if row.fault == Fault::GoneMidBody {
        stream.next().await.unwrap().unwrap();
        drop(stream);
        return Got::Gone;
    }
    let mut bytes = Vec::new();
    let mut end = Ok(());
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(b) => bytes.extend_from_slice(&b),
            Err(e) => {
                end = Err(Some(e.error_type()));
                break;
            }
        }
    }
    Got::Answer {
        status,
        body: bytes,
        end,
    }
}

async fn via_proxy(row: Row, req: reqwest::RequestBuilder) -> Got {
    let gives_up_before_head = row.proxy == Want::Gone && (!row.stream || row.fault == Fault::GoneBeforeHead);
    if gives_up_before_head {
        let gone = req.timeout(GIVE_UP).send().await;
        assert!(gone.is_err(), "the caller gave up first: {gone:?}");
        return Got::Gone;
    }
    let mut resp = req.timeout(Duration::from_secs(10)).send().await.unwrap();
    let status = resp.status().as_u16();
    if row.proxy == Want::Gone {
        resp.chunk().await.unwrap().unwrap();
        drop(resp);
        return Got::Gone;
    }
    let mut bytes = Vec::new();
    let end = loop {
        match resp.chunk().await {
            Ok(Some(b)) => bytes.extend_from_slice(&b),
            Ok(None) => break Ok(()),
            Err(_) => break Err(None),
        }
    };
    Got::Answer {
        status,
        body: bytes,
        end,
    }
}

/// What is true of the bytes of a whole answer with this fault.
fn check_whole(fault: Fault, stream: bool, body: &[u8]) {
    let text = String::from_utf8_lossy(body);
    match fault {
        Fault::Garbage => assert_eq!(text, "<html>upstream proxy error</html>", "the body as sent"),
        Fault::BadUtf8 => assert!(body.contains(&0xFF), "the byte that is not UTF-8 is passed on: {text}"),
        Fault::MalformedSse => assert!(
            text.split("\n\n")
                .any(|e| e.starts_with("data: {") && !e.ends_with('}')),
            "the chunk cut short is passed on: {text}"
        ),
        Fault::Truncate => assert!(
            text.starts_with("data: {") && text.ends_with("}\n\n"),
            "whole events up to the cut: {text}"
        ),
        _ => {}
    }
    if stream && fault != Fault::Garbage {
        assert!(text.starts_with("data: "), "a stream: {text}");
    }
}

/// Lets every case of a table set up before any starts: building clients and proxies takes CPU
/// time that would otherwise run into the other cases' timeouts.
struct Start {
    ready: Option<mpsc::UnboundedSender<()>>,
    go: watch::Receiver<bool>,
}

impl Start {
    /// Says this case is ready, and waits for every other.
    async fn wait(mut self) {
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(());
        }
        let _ = self.go.wait_for(|go| *go).await;
    }
}

impl Drop for Start {
    /// A case whose setup failed does not hold the others up.
    fn drop(&mut self) {
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(());
        }
    }
}

/// Runs one case through one door and checks everything; panics on the first thing wrong.
async fn run(row: Row, door: Door, http: reqwest::Client, start: Start) {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let closed = closed_port();
    let base = match row.fault {
        Fault::Refused => format!("http://{}/v1", closed.local_addr().unwrap()),
        _ => mock.base_url(),
    };
    let m = metered();
    let want = match door {
        Door::Library => row.library,
        Door::Proxy => row.proxy,
    };
    let reference = match want {
        Want::Relayed => Some(reference(row.fault, row.stream, &http).await),
        _ => None,
    };
    let caller = caller(row, door, base, &m, &http).await;
    start.wait().await;
    let got = match caller {
        Caller::Library(client) => via_library(row, client).await,
        Caller::Proxy(req) => via_proxy(row, *req).await,
    };
    let error = row.error;
    match (want, &got) {
        (Want::Relayed, Got::Answer { status, body, end }) => {
            let (ref_status, ref_body) = reference.unwrap();
            assert_eq!(*status, ref_status, "the provider's status");
            assert_eq!(
                String::from_utf8_lossy(body),
                String::from_utf8_lossy(&ref_body),
                "the provider's body"
            );
            assert_eq!(*end, Ok(()));
        }
        (Want::Whole { done }, Got::Answer { status, body, end }) => {
            assert_eq!(*status, 200);
            assert_eq!(*end, Ok(()), "the body read to its end");
            assert_eq!(
                body.ends_with(b"data: [DONE]\n\n"),
                done,
                "[DONE] as sent: {}",
                String::from_utf8_lossy(body)
            );
            check_whole(row.fault, row.stream, body);
        }
        (Want::Cut, Got::Answer { status, body, end }) => {
            assert_eq!(*status, 200);
            assert!(!body.is_empty(), "the bytes before the fault are passed on");
            match door {
                Door::Library => assert_eq!(*end, Err(Some(error)), "the stream's error"),
                Door::Proxy => assert_eq!(*end, Err(None), "the connection is cut"),
            }
        }
        (Want::Failed, Got::Error(kind, message)) if door == Door::Library => {
            assert_eq!(*kind, error, "the CallError's type: {message}");
        }
        (Want::Failed, Got::Answer { status, body, end }) if door == Door::Proxy => {
            let rejection = Rejection::Upstream(error);
            assert_eq!(*status, rejection.status().as_u16(), "the rejection's status");
            let v: Value = serde_json::from_slice(body).unwrap();
            assert_eq!(v, rejection.body(), "the rejection's body");
            assert_eq!(*end, Ok(()));
        }
        (Want::Gone, Got::Gone) => {}
        (want, got) => panic!("wanted {want:?}, got {got:?}"),
    }
    m.assert_finished_once(Some(error), QUIET).await;
    if let Some((requests, streams)) = row.fault.upstream(row.stream) {
        let seen = || (mock.requests(), streams.map(|_| mock.streams()));
        for _ in 0..150 {
            if seen() == (requests, streams) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(seen(), (requests, streams), "what the provider saw (requests, streams)");
    }
}

/// Runs every row through both doors at once; fails with every case that failed.
async fn run_table(rows: &[Row]) {
    let http = reqwest::Client::new();
    let (ready, mut all_ready) = mpsc::unbounded_channel();
    let (go, started) = watch::channel(false);
    let mut cases = Vec::new();
    for &row in rows {
        for door in [Door::Library, Door::Proxy] {
            let name = format!(
                "{:?} {} through the {door:?}",
                row.fault,
                if row.stream { "stream" } else { "call" }
            );
            let start = Start {
                ready: Some(ready.clone()),
                go: started.clone(),
            };
            cases.push((name, tokio::spawn(run(row, door, http.clone(), start))));
        }
    }
    for _ in 0..cases.len() {
        all_ready.recv().await;
    }
    go.send(true).unwrap();
    let mut failed = Vec::new();
    for (name, case) in cases {
        if let Err(e) = case.await {
            let why = e.try_into_panic().ok().and_then(|p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            });
            failed.push(format!("{name}: {}", why.unwrap_or_default()));
        }
    }
    assert!(
        failed.is_empty(),
        "{} case(s) failed:\n{}",
        failed.len(),
        failed.join("\n\n")
    );
}

use ErrorType as E;
use Fault as F;
use Want as W;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_http_errors_reach_the_caller_unchanged() {
    let mut rows = Vec::new();
    for code in [400, 401, 404, 413, 429, 500, 503, 529] {
        for stream in [false, true] {
            rows.push(row(F::Status(code), stream, E::Status(code), W::Relayed, W::Relayed));
        }
    }
    run_table(&rows).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_faults_are_answered_by_the_door_and_recorded_once() {
    #[rustfmt::skip]
    let rows = [
        //  fault            stream  error.type      library    proxy
        row(F::Refused,      false,  E::Connect,     W::Failed, W::Failed),
        row(F::Refused,      true,   E::Connect,     W::Failed, W::Failed),
        row(F::ResetHead,    false,  E::Transport,   W::Failed, W::Failed),
        row(F::ResetHead,    true,   E::Transport,   W::Failed, W::Failed),
        row(F::ResetBody,    false,  E::Transport,   W::Failed, W::Failed),
        row(F::ResetBody,    true,   E::Transport,   W::Cut,    W::Cut),
        row(F::HugeHead,     false,  E::Transport,   W::Failed, W::Failed),
        row(F::HugeHead,     true,   E::Transport,   W::Failed, W::Failed),
    ];
    run_table(&rows).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answers_are_passed_on_as_they_came_and_recorded_once() {
    let whole = W::Whole { done: false };
    let done = W::Whole { done: true };
    #[rustfmt::skip]
    let rows = [
        //  fault              stream  error.type     library  proxy
        row(F::Truncate,       true,   E::Truncated,  whole,   whole),
        row(F::Garbage,        false,  E::Decode,     whole,   whole),
        row(F::Garbage,        true,   E::Decode,     whole,   whole),
        row(F::MalformedSse,   true,   E::Decode,     done,    done),
        row(F::BadUtf8,        false,  E::Decode,     whole,   whole),
        row(F::BadUtf8,        true,   E::Decode,     done,    done),
    ];
    run_table(&rows).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_slower_than_the_timeouts_is_given_up_on_and_recorded_once() {
    #[rustfmt::skip]
    let rows = [
        //  fault            stream  error.type    library    proxy
        row(F::Stall,        false,  E::Timeout,   W::Failed, W::Failed),
        row(F::Stall,        true,   E::Timeout,   W::Failed, W::Failed),
        row(F::StallBody,    false,  E::Timeout,   W::Failed, W::Failed),
        row(F::StallBody,    true,   E::Timeout,   W::Cut,    W::Cut),
    ];
    run_table(&rows).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_cancels_the_call_and_the_upstream_request() {
    #[rustfmt::skip]
    let rows = [
        //  fault               stream  error.type     library  proxy
        row(F::GoneBeforeHead,  false,  E::Cancelled,  W::Gone, W::Gone),
        row(F::GoneBeforeHead,  true,   E::Cancelled,  W::Gone, W::Gone),
        row(F::GoneMidBody,     false,  E::Cancelled,  W::Gone, W::Gone),
        row(F::GoneMidBody,     true,   E::Cancelled,  W::Gone, W::Gone),
    ];
    run_table(&rows).await;
}
