//! `llm-meter-bench-otlp-sink`: a minimal OTLP/HTTP receiver for the proxy benchmark, so the
//! proxy's exports cross a socket into another process as they would in production.
//!
//! `POST /v1/traces`, `/v1/metrics` and `/v1/logs`: the body is read to its end (frame by frame,
//! not kept), its bytes and the request are counted, and the answer is `200 OK` with an empty
//! `application/x-protobuf` body (an empty `Export…ServiceResponse`: full success).
//! `GET /stats`: the counts so far, as JSON. Anything else: `404`.
//!
//! ```text
//! llm-meter-bench-otlp-sink --listen 127.0.0.1:4318 [--threads N]
//! ```

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use llm_meter_bench_relay::{bind, runtime, serve, BoxError, Flags};

const USAGE: &str = "usage: llm-meter-bench-otlp-sink --listen ADDR [--threads N]

A minimal OTLP/HTTP receiver: accepts POST /v1/traces, /v1/metrics and /v1/logs, counts
requests and bytes (GET /stats), answers 200 with an empty protobuf body.";

/// Requests and body bytes received for one signal.
#[derive(Debug, Default)]
struct Signal {
    requests: AtomicU64,
    bytes: AtomicU64,
    /// Bodies that failed before their end (the exporter went away).
    failed: AtomicU64,
}

impl Signal {
    fn json(&self) -> String {
        format!(
            r#"{{"requests":{},"bytes":{},"failed":{}}}"#,
            self.requests.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed)
        )
    }
}

#[derive(Debug, Default)]
struct Counts {
    traces: Signal,
    metrics: Signal,
    logs: Signal,
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Reads the body to its end without keeping it; its length in bytes.
async fn drain(mut body: Incoming) -> Result<u64, hyper::Error> {
    let mut length = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            length += data.len() as u64;
        }
    }
    Ok(length)
}

async fn handle(counts: Arc<Counts>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let signal = match (request.method(), request.uri().path()) {
        (&Method::POST, "/v1/traces") => &counts.traces,
        (&Method::POST, "/v1/metrics") => &counts.metrics,
        (&Method::POST, "/v1/logs") => &counts.logs,
        (&Method::GET, "/stats") => {
            let body = format!(
                r#"{{"traces":{},"metrics":{},"logs":{}}}"#,
                counts.traces.json(),
                counts.metrics.json(),
                counts.logs.json()
            );
            return Ok(respond(StatusCode::OK, "application/json", body));
        }
        _ => return Ok(respond(StatusCode::NOT_FOUND, "text/plain", "not found\n")),
    };
    match drain(request.into_body()).await {
        Ok(length) => {
            signal.requests.fetch_add(1, Ordering::Relaxed);
            signal.bytes.fetch_add(length, Ordering::Relaxed);
            Ok(respond(StatusCode::OK, "application/x-protobuf", Bytes::new()))
        }
        Err(_) => {
            signal.failed.fetch_add(1, Ordering::Relaxed);
            Ok(respond(StatusCode::BAD_REQUEST, "text/plain", "body failed\n"))
        }
    }
}

fn main() -> Result<(), BoxError> {
    let flags = Flags::parse(std::env::args().skip(1), &["--listen", "--threads"], USAGE)?;
    let listen = flags.listen()?;
    let runtime = runtime(flags.threads()?)?;
    runtime.block_on(async move {
        let counts = Arc::new(Counts::default());
        let listener = bind(listen, "llm-meter-bench-otlp-sink").await?;
        serve(listener, move |request| handle(counts.clone(), request)).await?;
        Ok::<(), BoxError>(())
    })?;
    Ok(())
}
