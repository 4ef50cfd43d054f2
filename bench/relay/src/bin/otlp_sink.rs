//! `llm-meter-bench-otlp-sink`: a minimal OTLP/HTTP receiver for the proxy benchmark, so the
//! proxy's exports cross a socket into another process as they would in production.
//!
//! `POST /v1/traces`, `/v1/metrics` and `/v1/logs`: the body is read to its end (frame by frame,
//! not kept), its bytes and the request are counted, and the answer is `200 OK` with an empty
//! `application/x-protobuf` body (an empty `Export…ServiceResponse`: full success).
//! `GET /stats`: the counts so far, as JSON. Anything else: `404`.
//!
//! Faults, for `bench/exporter_faults.py` (an exporter must never slow the calls it observes):
//!
//! - `--delay-ms N`: every export is answered N ms after its body was read (a slow collector;
//!   past the exporter's timeout, a hung one).
//! - `--flap-secs N`: the sink cycles through four phases of N seconds from its start: healthy,
//!   refusing (exports are read and answered `503 Service Unavailable`), healthy, dropping
//!   (connections are closed: those open when the phase starts, requests in flight on them
//!   included, and every new one as soon as it is accepted).
//!
//! ```text
//! llm-meter-bench-otlp-sink --listen 127.0.0.1:4318 [--threads N] [--delay-ms N] [--flap-secs N]
//! ```

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use llm_meter_bench_relay::{accept, bind, runtime, BoxError, Flags};
use tokio::net::TcpListener;
use tokio::time::Instant;

const USAGE: &str = "usage: llm-meter-bench-otlp-sink --listen ADDR [--threads N] [--delay-ms N] [--flap-secs N]

A minimal OTLP/HTTP receiver: accepts POST /v1/traces, /v1/metrics and /v1/logs, counts
requests and bytes (GET /stats), answers 200 with an empty protobuf body.
  --delay-ms N    answer each export N ms after reading its body
  --flap-secs N   cycle through N s healthy, N s answering 503, N s healthy, N s dropping
                  connections";

/// Requests and body bytes received for one signal.
#[derive(Debug, Default)]
struct Signal {
    requests: AtomicU64,
    bytes: AtomicU64,
    /// Bodies that failed before their end (the exporter went away).
    failed: AtomicU64,
    /// Exports read and answered 503 (the refusing phase of `--flap-secs`).
    refused: AtomicU64,
}

impl Signal {
    fn json(&self) -> String {
        format!(
            r#"{{"requests":{},"bytes":{},"failed":{},"refused":{}}}"#,
            self.requests.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed)
        )
    }
}

#[derive(Debug, Default)]
struct Counts {
    traces: Signal,
    metrics: Signal,
    logs: Signal,
    /// Connections closed by the dropping phase of `--flap-secs`.
    dropped_connections: AtomicU64,
}

/// One of the four phases of `--flap-secs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Healthy,
    Refusing,
    Dropping,
}

/// The sink's behaviour: its faults and the clock they follow.
#[derive(Debug)]
struct Behaviour {
    started: Instant,
    delay: Duration,
    flap: Option<Duration>,
}

impl Behaviour {
    fn phase(&self, now: Instant) -> Phase {
        let Some(flap) = self.flap else {
            return Phase::Healthy;
        };
        let n = now.duration_since(self.started).as_nanos() / flap.as_nanos().max(1);
        match n % 4 {
            1 => Phase::Refusing,
            3 => Phase::Dropping,
            _ => Phase::Healthy,
        }
    }

    /// When the next dropping phase starts (after `now`), if the sink flaps.
    fn next_drop(&self, now: Instant) -> Option<Instant> {
        let flap = self.flap?;
        let period = flap * 4;
        let elapsed = now.duration_since(self.started);
        let cycles = elapsed.as_nanos() / period.as_nanos().max(1);
        let cycle_start = self.started + period * u32::try_from(cycles).unwrap_or(u32::MAX);
        let drop_at = cycle_start + flap * 3;
        Some(if drop_at > now { drop_at } else { drop_at + period })
    }
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

async fn handle(
    counts: Arc<Counts>,
    behaviour: Arc<Behaviour>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let signal = match (request.method(), request.uri().path()) {
        (&Method::POST, "/v1/traces") => &counts.traces,
        (&Method::POST, "/v1/metrics") => &counts.metrics,
        (&Method::POST, "/v1/logs") => &counts.logs,
        (&Method::GET, "/stats") => {
            let body = format!(
                r#"{{"traces":{},"metrics":{},"logs":{},"dropped_connections":{}}}"#,
                counts.traces.json(),
                counts.metrics.json(),
                counts.logs.json(),
                counts.dropped_connections.load(Ordering::Relaxed)
            );
            return Ok(respond(StatusCode::OK, "application/json", body));
        }
        _ => return Ok(respond(StatusCode::NOT_FOUND, "text/plain", "not found\n")),
    };
    match drain(request.into_body()).await {
        Ok(length) => {
            if !behaviour.delay.is_zero() {
                tokio::time::sleep(behaviour.delay).await;
            }
            if behaviour.phase(Instant::now()) == Phase::Refusing {
                signal.refused.fetch_add(1, Ordering::Relaxed);
                return Ok(respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "refusing\n"));
            }
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

/// The accept loop: like the relay's, but a connection is closed when a dropping phase starts
/// (and one accepted during it, at once).
async fn serve(listener: TcpListener, counts: Arc<Counts>, behaviour: Arc<Behaviour>) {
    loop {
        let stream = accept(&listener).await;
        let now = Instant::now();
        if behaviour.phase(now) == Phase::Dropping {
            counts.dropped_connections.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (counts, behaviour) = (counts.clone(), behaviour.clone());
        tokio::spawn(async move {
            let next_drop = behaviour.next_drop(now);
            let service = {
                let (counts, behaviour) = (counts.clone(), behaviour.clone());
                service_fn(move |request| handle(counts.clone(), behaviour.clone(), request))
            };
            let connection = http1::Builder::new()
                .keep_alive(true)
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            match next_drop {
                // An exporter going away mid-request is normal here; nothing to report.
                None => {
                    let _ = connection.await;
                }
                Some(at) => {
                    tokio::select! {
                        _ = connection => {}
                        () = tokio::time::sleep_until(at) => {
                            counts.dropped_connections.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
    }
}

fn millis(flags: &Flags, name: &str, scale: u64) -> Result<Option<Duration>, BoxError> {
    match flags.get(name) {
        None => Ok(None),
        Some(text) => match text.parse::<u64>() {
            Ok(n) => Ok(Some(Duration::from_millis(n.saturating_mul(scale)))),
            Err(_) => Err(format!("{name} {text:?} is not a whole number").into()),
        },
    }
}

fn main() -> Result<(), BoxError> {
    let flags = Flags::parse(
        std::env::args().skip(1),
        &["--listen", "--threads", "--delay-ms", "--flap-secs"],
        USAGE,
    )?;
    let listen = flags.listen()?;
    let delay = millis(&flags, "--delay-ms", 1)?.unwrap_or_default();
    let flap = millis(&flags, "--flap-secs", 1000)?.filter(|d| !d.is_zero());
    let runtime = runtime(flags.threads()?)?;
    runtime.block_on(async move {
        let counts = Arc::new(Counts::default());
        let behaviour = Arc::new(Behaviour {
            started: Instant::now(),
            delay,
            flap,
        });
        let listener = bind(listen, "llm-meter-bench-otlp-sink").await?;
        serve(listener, counts, behaviour).await;
        Ok::<(), BoxError>(())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flapping_cycles_healthy_refusing_healthy_dropping() {
        let started = Instant::now();
        let b = Behaviour {
            started,
            delay: Duration::ZERO,
            flap: Some(Duration::from_secs(2)),
        };
        let at = |s: u64| started + Duration::from_millis(s * 1000 + 500);
        let phases: Vec<Phase> = (0..10).map(|s| b.phase(at(s))).collect();
        use Phase::*;
        assert_eq!(
            phases,
            [Healthy, Healthy, Refusing, Refusing, Healthy, Healthy, Dropping, Dropping, Healthy, Healthy]
        );
        assert_eq!(b.next_drop(at(0)), Some(started + Duration::from_secs(6)));
        assert_eq!(b.next_drop(at(6)), Some(started + Duration::from_secs(14)));
        assert_eq!(b.next_drop(at(9)), Some(started + Duration::from_secs(14)));
    }

    #[test]
    fn a_steady_sink_never_drops() {
        let b = Behaviour {
            started: Instant::now(),
            delay: Duration::from_millis(5),
            flap: None,
        };
        assert_eq!(b.phase(Instant::now() + Duration::from_secs(100)), Phase::Healthy);
        assert_eq!(b.next_drop(Instant::now()), None);
    }
}
