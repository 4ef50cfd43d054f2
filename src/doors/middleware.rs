//! The reqwest-middleware door: [`MeterMiddleware`], for code that already has its own
//! `reqwest_middleware::ClientWithMiddleware`. It shares `observe.rs` with
//! the async-openai layer.

use std::time::Instant;

use http::Extensions;
use reqwest_middleware::{Middleware, Next};
use tracing::Instrument;

use crate::doors::observe::{self, Observed, Start};
use crate::parse::annotations::{AnnotationField, Annotations};
use crate::pipeline::Meter;
use crate::record::ErrorType;

/// A [`reqwest_middleware::Middleware`] that observes the LLM calls made through a
/// `ClientWithMiddleware`, for code that already has its own. Cheap to clone.
///
/// ```no_run
/// use llm_meter::{Annotations, Meter, MeterMiddleware};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     // .with(a retry middleware) before it: every attempt is observed
///     .with(MeterMiddleware::new(Meter::default()))
///     .build();
/// let annotations = Annotations::builder().use_case_name("support.triage").build()?;
/// let body = serde_json::json!({
///     "model": "gpt-4o-mini",
///     "messages": [{"role": "user", "content": "How do I reset my password?"}],
/// });
/// let response = client
///     .post("https://api.openai.com/v1/chat/completions")
///     .bearer_auth("sk-...")
///     .header("content-type", "application/json")
///     .body(serde_json::to_vec(&body)?)
///     .with_extension(annotations) // or the `xProxy-*` headers
///     .send()
///     .await?;
/// let text = response.text().await?; // the provider's body, byte for byte
/// # let _ = text; Ok(()) }
/// ```
///
/// **What is observed.** A `POST` to a path of an API llm-meter reads
/// ([`Api::of_path`](crate::Api::of_path): `…/chat/completions`, `…/messages`, `…/responses`)
/// whose body is a JSON object in memory becomes an observed call, with the same span and
/// [`CallRecord`](crate::CallRecord) as a [`Client`](crate::Client) call. Every other request
/// (another path or method, a streamed body, a body that is not a JSON object) passes through
/// untouched and makes no record.
///
/// **Annotations**, for each observed call, from the first of: an [`Annotations`] request
/// extension (`RequestBuilder::with_extension(annotations)`); the request's `xProxy-*` headers
/// ([`Annotations::from_headers`]; invalid ones are ignored with a warning, never a refused
/// request); the middleware's [`MeterMiddleware::with_default_annotations`]. The `xProxy-*`
/// annotation headers are meant for the meter: they are taken off the observed request before
/// it goes on (turn on [`MeterMiddleware::send_annotation_headers`] when the next hop is a
/// Pay-i-compatible proxy that reads them).
///
/// **The answer** comes back as the provider sent it: status, version, headers, URL and body.
/// A whole body is read, observed and handed back byte for byte. A stream (`"stream": true`) is
/// observed as the caller reads it, never buffered; its record is finished at its end, on an
/// error, or when the caller drops it (`cancelled`). As with the client, a Chat Completions
/// stream that does not ask for usage is sent asking for it and the extra usage chunk is hidden
/// ([`StreamUsage`](crate::StreamUsage)); the request also gets `traceparent` unless the meter
/// turns it off, and the meter's model defaults.
///
/// **Errors.** An error from the rest of the chain finishes the call (its `error.type` from the
/// reqwest error inside, else `transport`) and is returned unchanged. Telemetry never changes
/// the caller's outcome, with one opt-in exception: a meter that enforces block limits
/// ([`MeterBuilder::enforce_limits`](crate::MeterBuilder::enforce_limits)) refuses a call
/// before it is sent with `reqwest_middleware::Error::Middleware` holding the
/// [`CallError`](crate::CallError) (`LimitReached` or `LedgerUnavailable`, with the refused
/// call's record; `downcast_ref::<llm_meter::CallError>()` on it).
#[derive(Clone, Debug)]
pub struct MeterMiddleware {
    meter: Meter,
    annotations: Annotations,
    send_annotation_headers: bool,
}

impl MeterMiddleware {
    /// Observes with `meter` (its hooks, spans, metrics, usage policy, model defaults and
    /// limits).
    pub fn new(meter: Meter) -> Self {
        MeterMiddleware {
            meter,
            annotations: Annotations::none(),
            send_annotation_headers: false,
        }
    }

    /// Annotations for calls that carry none (no [`Annotations`] extension, no `xProxy-*`
    /// headers).
    pub fn with_default_annotations(mut self, annotations: Annotations) -> Self {
        self.annotations = annotations;
        self
    }

    /// Send each observed call's annotations on as `xProxy-*` headers, for a Pay-i-compatible
    /// proxy as the next hop (default off: they are taken off the request).
    pub fn send_annotation_headers(mut self, on: bool) -> Self {
        self.send_annotation_headers = on;
        self
    }

    /// The meter calls are observed with.
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// The call's annotations: the extension, else the headers, else the defaults.
    fn annotations(&self, request: &reqwest::Request, extensions: &Extensions) -> Annotations {
        if let Some(annotations) = extensions.get::<Annotations>() {
            return annotations.clone();
        }
        match Annotations::from_headers(request.headers()) {
            Ok(annotations) if !annotations.is_empty() => annotations,
            Ok(_) => self.annotations.clone(),
            Err(e) => {
                tracing::warn!(target: "llm_meter", "annotation headers ignored: {e}");
                self.annotations.clone()
            }
        }
    }
}

/// The `error.type` of an error from the rest of the chain: the reqwest error in it, if any.
fn error_type(e: &reqwest_middleware::Error) -> ErrorType {
    match e {
        reqwest_middleware::Error::Reqwest(e) => ErrorType::from_reqwest(e),
        reqwest_middleware::Error::Middleware(e) => e
            .chain()
            .find_map(|cause| cause.downcast_ref::<reqwest::Error>())
            .map_or(ErrorType::Transport, ErrorType::from_reqwest),
    }
}

#[async_trait::async_trait]
impl Middleware for MeterMiddleware {
    async fn handle(
        &self,
        mut request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let annotations = || self.annotations(&request, extensions);
        let Observed {
            call,
            annotations,
            mut headers,
            body,
            stream,
            hide_usage_chunk,
        } = match observe::start(&self.meter, &request, annotations).await {
            Start::Pass => return next.run(request, extensions).await,
            Start::Refused(e) => return Err(reqwest_middleware::Error::middleware(e)),
            Start::Observe(observed) => observed,
        };
        for field in AnnotationField::ALL {
            headers.remove(field.header());
        }
        if self.send_annotation_headers {
            annotations.write_headers(&mut headers);
        }
        *request.headers_mut() = headers;
        *request.body_mut() = Some(body.into());
        let sent = Instant::now();
        let response = match next.run(request, extensions).instrument(call.span().clone()).await {
            Ok(response) => response,
            Err(e) => {
                call.fail(error_type(&e));
                return Err(e);
            }
        };
        Ok(observe::answer(call, response, stream, hide_usage_chunk, sent).await?)
    }
}
