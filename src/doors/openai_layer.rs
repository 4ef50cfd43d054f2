//! Observation for [async-openai](https://docs.rs/async-openai) clients, as a tower layer for
//! its `middleware` feature (`Client::with_http_service`).
//!
//! ```no_run
//! use async_openai::middleware::{retry::OpenAIRetryLayer, ReqwestService};
//! use llm_meter::openai_layer::MeterLayer;
//!
//! let service = tower::ServiceBuilder::new()
//!     .layer(OpenAIRetryLayer::default()) // outside: every attempt is observed
//!     .layer(MeterLayer::new(llm_meter::Meter::default()))
//!     .service(ReqwestService::new(reqwest::Client::new()));
//! let client = async_openai::Client::new().with_http_service(service);
//! ```
//!
//! Chat completion requests (`POST …/chat/completions` with a JSON body) become observed calls
//! with the same span and [`CallRecord`](crate::CallRecord) as [`Client`](crate::Client) calls;
//! any other request passes through untouched. Annotations come from the layer's defaults or,
//! per call, from [`with_annotations`]. If a request cannot be observed (an unreadable body),
//! it is sent as it was: telemetry never changes the outcome.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use bytes::Bytes;
use tracing::Instrument;

use crate::parse::annotations::Annotations;
use crate::pipeline::{Meter, Server};
use crate::record::limits::Refusal;
use crate::record::ErrorType;

tokio::task_local! {
    static ANNOTATIONS: Annotations;
}

/// Runs `fut` with `annotations` applied to every async-openai call observed inside it.
pub async fn with_annotations<F: Future>(annotations: Annotations, fut: F) -> F::Output {
    ANNOTATIONS.scope(annotations, fut).await
}

/// Tower layer that observes async-openai chat completion calls.
#[derive(Clone, Debug)]
pub struct MeterLayer {
    meter: Meter,
    annotations: Annotations,
}

impl MeterLayer {
    /// Observes with `meter` (its hooks, spans, usage policy and model defaults).
    pub fn new(meter: Meter) -> Self {
        MeterLayer {
            meter,
            annotations: Annotations::none(),
        }
    }

    /// Annotations for calls made outside any [`with_annotations`] scope.
    pub fn with_default_annotations(mut self, annotations: Annotations) -> Self {
        self.annotations = annotations;
        self
    }
}

impl<S> tower::Layer<S> for MeterLayer {
    type Service = MeterService<S>;

    fn layer(&self, inner: S) -> MeterService<S> {
        MeterService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`MeterLayer`] wraps around async-openai's HTTP service.
#[derive(Clone, Debug)]
pub struct MeterService<S> {
    inner: S,
    layer: MeterLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

fn error_type(e: &OpenAIError) -> ErrorType {
    match e {
        OpenAIError::Reqwest(e) => ErrorType::from_reqwest(e),
        _ => ErrorType::Transport,
    }
}

fn rebuild(base: &reqwest::Request, headers: http::HeaderMap, body: Bytes) -> HttpRequestFactory {
    let (method, url, timeout) = (base.method().clone(), base.url().clone(), base.timeout().copied());
    HttpRequestFactory::new(move || {
        let mut req = reqwest::Request::new(method.clone(), url.clone());
        *req.headers_mut() = headers.clone();
        *req.body_mut() = Some(body.clone().into());
        *req.timeout_mut() = timeout;
        std::future::ready(Ok(req))
    })
}

impl<S> tower::Service<HttpRequestFactory> for MeterService<S>
where
    S: tower::Service<HttpRequestFactory, Response = reqwest::Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<OpenAIError> + Send + 'static,
{
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = BoxFuture<Result<reqwest::Response, OpenAIError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), OpenAIError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, factory: HttpRequestFactory) -> Self::Future {
        // The clone is the fresh service; `self.inner` stays the one polled ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let request = factory.build().await?;
            let body = match request.body().and_then(|b| b.as_bytes()) {
                Some(bytes)
                    if request.method() == http::Method::POST
                        && request.url().path().ends_with("/chat/completions") =>
                {
                    bytes.to_vec()
                }
                _ => return inner.call(factory).await.map_err(Into::into),
            };
            let prepared = match layer.meter.prepare(body, None) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(target: "llm_meter", "chat request not observed: {e}");
                    return inner.call(factory).await.map_err(Into::into);
                }
            };
            let annotations = ANNOTATIONS
                .try_with(Annotations::clone)
                .unwrap_or_else(|_| layer.annotations.clone());
            let stream = prepared.facts.stream;
            let mut call = layer
                .meter
                .start(Server::of(request.url()), &annotations, prepared.facts);
            // The same admission as every door: refused before the provider is called.
            if let Err(refusal) = call.admit(prepared.body.len()).await {
                let (status, kind, message) = match &refusal {
                    Refusal::LedgerUnavailable(e) => (
                        http::StatusCode::SERVICE_UNAVAILABLE,
                        ErrorType::LedgerUnavailable,
                        format!("refused: {e}; calls naming a block limit are refused until it answers"),
                    ),
                    Refusal::Blocked(blocked) => (
                        http::StatusCode::FORBIDDEN,
                        ErrorType::LimitReached,
                        format!("refused by limit {}: the budget is spent", blocked.join(", ")),
                    ),
                };
                call.refuse(&refusal);
                return Err(OpenAIError::ApiError(async_openai::error::ApiErrorResponse {
                    status_code: status,
                    api_error: async_openai::error::ApiError {
                        message,
                        r#type: Some(kind.as_str().to_owned()),
                        code: Some(kind.as_str().to_owned()),
                        ..Default::default()
                    },
                }));
            }
            let mut headers = request.headers().clone();
            call.inject_trace_context(&mut headers);
            let factory = rebuild(&request, headers, Bytes::from(prepared.body));
            let sent = Instant::now();
            let span = call.span().clone();
            let response = match inner.call(factory).instrument(span.clone()).await {
                Ok(r) => r,
                Err(e) => {
                    let e = e.into();
                    call.fail(error_type(&e));
                    return Err(e);
                }
            };
            let (status, version, headers) = (response.status(), response.version(), response.headers().clone());
            let rebuild_response = |body: reqwest::Body, headers: http::HeaderMap| {
                let mut out = http::Response::new(body);
                *out.status_mut() = status;
                *out.version_mut() = version;
                *out.headers_mut() = headers;
                reqwest::Response::from(out)
            };
            if stream {
                let observed = call.observe_stream(
                    status,
                    headers.clone(),
                    response.bytes_stream(),
                    sent,
                    prepared.hide_usage_chunk,
                );
                return Ok(rebuild_response(reqwest::Body::wrap_stream(observed), headers));
            }
            match response.bytes().instrument(span).await {
                Ok(bytes) => {
                    call.finish_body(status, &headers, &bytes);
                    Ok(rebuild_response(bytes.into(), headers))
                }
                Err(e) => {
                    call.fail(ErrorType::from_reqwest(&e));
                    Err(OpenAIError::Reqwest(e))
                }
            }
        })
    }
}
