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
//! Requests to the APIs llm-meter reads (`POST` to a path that [`Api::of_path`](crate::Api::of_path)
//! knows: `…/chat/completions`, `…/responses`, `…/messages`) with a JSON object body become
//! observed calls with the same span and [`CallRecord`](crate::CallRecord) as
//! [`Client`](crate::Client) calls: `client.chat().create(…)` and `create_stream(…)`,
//! `client.responses().create(…)` and `create_stream(…)`. Streams are observed as async-openai
//! reads them, never buffered. Any other request (models, files, a response by id) passes
//! through untouched. Annotations come from the layer's defaults or,
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

use crate::doors::observe::{self, Observed, Start};
use crate::parse::annotations::Annotations;
use crate::pipeline::Meter;
use crate::record::{CallError, ErrorType};

tokio::task_local! {
    static ANNOTATIONS: Annotations;
}

/// Runs `fut` with `annotations` applied to every async-openai call observed inside it.
pub async fn with_annotations<F: Future>(annotations: Annotations, fut: F) -> F::Output {
    ANNOTATIONS.scope(annotations, fut).await
}

/// Tower layer that observes async-openai's chat completion and Responses calls.
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

/// The refusal as async-openai reports a provider's error: `403 limit_reached` when a block
/// limit refused the call, `503 ledger_unavailable` when the ledger could not be asked.
fn refusal_error(e: &CallError) -> OpenAIError {
    let (status, message) = match e {
        CallError::LimitReached { blocked_limit_ids, .. } => (
            http::StatusCode::FORBIDDEN,
            format!("refused by limit {}: the budget is spent", blocked_limit_ids.join(", ")),
        ),
        _ => (http::StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let kind = e.error_type().as_str().to_owned();
    OpenAIError::ApiError(async_openai::error::ApiErrorResponse {
        status_code: status,
        api_error: async_openai::error::ApiError {
            message,
            r#type: Some(kind.clone()),
            code: Some(kind),
            ..Default::default()
        },
    })
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
            let annotations = || {
                ANNOTATIONS
                    .try_with(Annotations::clone)
                    .unwrap_or_else(|_| layer.annotations.clone())
            };
            let Observed {
                call,
                headers,
                body,
                stream,
                hide_usage_chunk,
                ..
            } = match observe::start(&layer.meter, &request, annotations).await {
                Start::Pass => return inner.call(factory).await.map_err(Into::into),
                Start::Refused(e) => return Err(refusal_error(&e)),
                Start::Observe(observed) => observed,
            };
            let factory = rebuild(&request, headers, body);
            let sent = Instant::now();
            let response = match inner.call(factory).instrument(call.span().clone()).await {
                Ok(r) => r,
                Err(e) => {
                    let e = e.into();
                    call.fail(error_type(&e));
                    return Err(e);
                }
            };
            observe::answer(call, response, stream, hide_usage_chunk, sent)
                .await
                .map_err(OpenAIError::Reqwest)
        })
    }
}
