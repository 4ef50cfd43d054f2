//! One observed `reqwest` exchange, shared by the doors that sit inside an application's own
//! HTTP stack (the async-openai layer, the reqwest-middleware door): which requests are
//! observed, the request made ready to send, and the answer handed back as a
//! `reqwest::Response` whose body is observed on its way to the caller.
//!
//! A door calls [`start`] with the request; on [`Start::Observe`] it sends the prepared headers
//! and body down its own chain, finishes the call with [`Call::fail`] when the chain gives no
//! answer, and otherwise hands the answer to [`answer`].

use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;
use reqwest::ResponseBuilderExt;
use tracing::Instrument;

use crate::parse::annotations::Annotations;
use crate::parse::endpoint::Api;
use crate::pipeline::{Call, Meter, Server};
use crate::record::{CallError, ErrorType};

/// A request the door observes, made ready to send.
pub(crate) struct Observed {
    /// The call in flight.
    pub(crate) call: Call,
    /// Its annotations (the middleware may send them on as headers).
    #[cfg_attr(
        not(feature = "reqwest-middleware"),
        expect(dead_code, reason = "only the middleware sends annotations on")
    )]
    pub(crate) annotations: Annotations,
    /// The request's headers, with trace context added and no `Content-Length` (the body may
    /// have changed; the HTTP client sets it from the body).
    pub(crate) headers: HeaderMap,
    /// The body to send: the request's, with model defaults and stream usage applied.
    pub(crate) body: Bytes,
    /// The request asks for a stream.
    pub(crate) stream: bool,
    /// The usage-only chunk is ours, not the caller's: hide it.
    pub(crate) hide_usage_chunk: bool,
}

/// What a door does with a request.
#[expect(
    clippy::large_enum_variant,
    reason = "made once per call and moved once; a box would be one more allocation per call"
)]
pub(crate) enum Start {
    /// Not a call the meter observes, or one it cannot read: send it as it is.
    Pass,
    /// An observed call: send [`Observed::headers`] and [`Observed::body`].
    Observe(Observed),
    /// Admission refused the call (its record is finished): do not call the provider.
    Refused(CallError),
}

/// The API `request` calls and its body, when the meter observes it: a `POST` to a path of an
/// observed API ([`Api::of_path`]) whose body is in memory. A streamed request body is not read.
pub(crate) fn observed_api(request: &reqwest::Request) -> Option<(Api, &[u8])> {
    if request.method() != http::Method::POST {
        return None;
    }
    let api = Api::of_path(request.url().path())?;
    let body = request.body()?.as_bytes()?;
    Some((api, body))
}

/// Prepares, starts and admits the call `request` makes, when it is one the meter observes.
/// `annotations` is asked only for an observed call. A body that is not a JSON object is sent
/// as it is, unobserved (with a warning): telemetry never changes what is sent.
pub(crate) async fn start(
    meter: &Meter,
    request: &reqwest::Request,
    annotations: impl FnOnce() -> Annotations,
) -> Start {
    let Some((api, body)) = observed_api(request) else {
        return Start::Pass;
    };
    let prepared = match meter.prepare_for(api, body.to_vec(), None) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(target: "llm_meter", "{} request not observed: {e}", api.path());
            return Start::Pass;
        }
    };
    let stream = prepared.facts.stream;
    let annotations = annotations();
    let mut call = meter.start(Server::of(request.url()), &annotations, prepared.facts);
    // The same admission as every door: refused before the provider is called.
    if let Err(refusal) = call.admit(prepared.body.len()).await {
        let record = call.refuse(&refusal);
        return Start::Refused(CallError::refused(refusal, record));
    }
    let mut headers = request.headers().clone();
    headers.remove(http::header::CONTENT_LENGTH);
    call.inject_trace_context(&mut headers);
    Start::Observe(Observed {
        call,
        annotations,
        headers,
        body: prepared.body,
        stream,
        hide_usage_chunk: prepared.hide_usage_chunk,
    })
}

/// The answer to an observed call, handed back with the same status, version, headers,
/// extensions and URL. A stream (`stream`) is observed as the caller reads it, never buffered;
/// its record is finished at its end, on an error or when the caller drops it. A whole body is
/// read, observed and handed back byte for byte; when reading it fails, the call is finished
/// with that failure and the error returned.
pub(crate) async fn answer(
    call: Call,
    response: reqwest::Response,
    stream: bool,
    hide_usage_chunk: bool,
    sent: Instant,
) -> Result<reqwest::Response, reqwest::Error> {
    let mut head = http::Response::new(());
    *head.status_mut() = response.status();
    *head.version_mut() = response.version();
    *head.headers_mut() = response.headers().clone();
    *head.extensions_mut() = response.extensions().clone();
    // reqwest keeps the URL beside the head, as an extension only it can name: its builder
    // extension puts it back.
    if let Ok(with_url) = http::Response::builder().url(response.url().clone()).body(()) {
        head.extensions_mut().extend(with_url.into_parts().0.extensions);
    }
    let (parts, ()) = head.into_parts();
    let body = if stream {
        let observed = call.observe_stream(
            parts.status,
            parts.headers.clone(),
            response.bytes_stream(),
            sent,
            hide_usage_chunk,
        );
        reqwest::Body::wrap_stream(observed)
    } else {
        let span = call.span().clone();
        match response.bytes().instrument(span).await {
            Ok(bytes) => {
                call.finish_body(parts.status, &parts.headers, &bytes);
                reqwest::Body::from(bytes)
            }
            Err(e) => {
                call.fail(ErrorType::from_reqwest(&e));
                return Err(e);
            }
        }
    };
    Ok(reqwest::Response::from(http::Response::from_parts(parts, body)))
}
