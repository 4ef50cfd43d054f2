//! The pooled HTTP client to the provider: hyper-util's client over rustls (the platform's
//! roots), as a bare relay uses it. Bodies go up and come back as frames, never buffered except
//! a non-streaming answer the proxy must read to observe. Every wait is bounded: connecting, the
//! time to the next bytes (`read_timeout`, also between stream chunks), and a whole
//! non-streaming answer (`timeout`). An upstream chosen by the request connects only to public
//! addresses unless the operator allows private ones ([`crate::guard`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_platform_verifier::ConfigVerifierExt;
use tokio::time::{Instant, Sleep};

use llm_meter::{BuildError, CallError, ErrorType};

use crate::guard::{Connector, PrivateAddress};
use crate::rejection::Rejection;
use crate::settings::ProxySettings;

/// Why an exchange with the upstream failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// No bytes (head or body) within the wait.
    #[error("the upstream sent nothing for {0:?}")]
    Timeout(Duration),
    /// Connecting or sending the request failed, or the connection closed before the head.
    #[error("upstream request failed: {0}")]
    Request(#[source] hyper_util::client::legacy::Error),
    /// The body failed mid-way (reset, malformed framing).
    #[error("upstream body failed: {0}")]
    Body(#[source] hyper::Error),
    /// The request chose an upstream whose address is not public; nothing was sent.
    #[error(transparent)]
    PrivateAddress(PrivateAddress),
}

impl UpstreamError {
    /// The `error.type` of the failure.
    pub(crate) fn kind(&self) -> ErrorType {
        match self {
            UpstreamError::Timeout(_) => ErrorType::Timeout,
            UpstreamError::Request(e) if e.is_connect() => ErrorType::Connect,
            UpstreamError::Request(_) | UpstreamError::Body(_) => ErrorType::Transport,
            UpstreamError::PrivateAddress(_) => ErrorType::InvalidRequest,
        }
    }

    /// The client's failure, or the refusal of the address that caused it.
    fn request(e: hyper_util::client::legacy::Error) -> Self {
        match crate::guard::refusal(&e) {
            Some(refused) => UpstreamError::PrivateAddress(refused),
            None => UpstreamError::Request(e),
        }
    }
}

impl From<&UpstreamError> for Rejection {
    /// A refused address is the request's choice (400); the rest are the upstream's failures.
    fn from(e: &UpstreamError) -> Self {
        match e {
            UpstreamError::PrivateAddress(_) => Rejection::PrivateUpstream,
            _ => Rejection::Upstream(e.kind()),
        }
    }
}

impl From<UpstreamError> for CallError {
    fn from(e: UpstreamError) -> Self {
        CallError::transport(e.kind(), e)
    }
}

/// The upstream client: one connection pool for every route.
#[derive(Clone, Debug)]
pub(crate) struct Upstream {
    client: Client<HttpsConnector<Connector>, Body>,
    read_timeout: Duration,
}

impl Upstream {
    /// A pool that connects within `connect_timeout`, waits at most `read_timeout` for bytes,
    /// and connects a request-chosen upstream only to public addresses unless
    /// `allow_private_upstreams`.
    pub(crate) fn new(settings: &ProxySettings) -> Result<Self, BuildError> {
        let tls = rustls::ClientConfig::with_platform_verifier().map_err(|e| BuildError::Http(Box::new(e)))?;
        let configured = [&settings.upstream, &settings.anthropic_upstream]
            .into_iter()
            .chain(settings.azure_openai_upstream.as_ref());
        let http = Connector::new(configured, settings.allow_private_upstreams, settings.connect_timeout);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        // The pool's idle timeout needs a timer: without one hyper-util never runs its eviction
        // task, and only the connections a checkout happens to pop are ever dropped (the list
        // is LIFO), so after a burst of 1,000 streams ~1,000 idle connections stayed open for
        // as long as the upstream kept them (bench/soak.py).
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(https);
        Ok(Upstream {
            client,
            read_timeout: settings.read_timeout,
        })
    }

    /// Sends `request`; the answer's head within `read_timeout`, its body timed per frame.
    pub(crate) async fn send(&self, request: http::Request<Body>) -> Result<http::Response<TimedBody>, UpstreamError> {
        self.exchange(request, Deadline::new(self.read_timeout, None)).await
    }

    /// Sends `request` and reads the whole answer within `timeout` (and `read_timeout` between
    /// its bytes).
    pub(crate) async fn send_and_read(
        &self,
        request: http::Request<Body>,
        timeout: Duration,
    ) -> Result<(http::response::Parts, Bytes), UpstreamError> {
        let (parts, body) = self
            .exchange(request, Deadline::new(self.read_timeout, Some(timeout)))
            .await?
            .into_parts();
        Ok((parts, crate::whole_body::read_whole(body).await?))
    }

    /// Sends `request` and waits for the answer's head until `deadline`, which then times its
    /// body: one timer for the whole exchange.
    async fn exchange(
        &self,
        request: http::Request<Body>,
        mut deadline: Deadline,
    ) -> Result<http::Response<TimedBody>, UpstreamError> {
        let mut head = std::pin::pin!(self.client.request(request));
        let response = std::future::poll_fn(|cx| match head.as_mut().poll(cx) {
            Poll::Ready(answer) => Poll::Ready(answer.map_err(UpstreamError::request)),
            Poll::Pending => deadline.poll_passed(cx).map(Err),
        })
        .await?;
        deadline.moved_on();
        Ok(response.map(|inner| TimedBody { inner, deadline }))
    }
}

/// When an exchange with the upstream gives up: `wait` after its last progress (sending, the
/// head, each frame), and at the latest `whole` after it started. One timer, moved forward on
/// every frame (no allocation per chunk).
#[derive(Debug)]
struct Deadline {
    sleep: Pin<Box<Sleep>>,
    wait: Duration,
    /// The end of the whole exchange and its length, when it has one.
    whole: Option<(Instant, Duration)>,
}

impl Deadline {
    fn new(wait: Duration, whole: Option<Duration>) -> Self {
        let now = Instant::now();
        let whole = whole.map(|length| (now + length, length));
        Deadline {
            sleep: Box::pin(tokio::time::sleep_until(Self::next(now, wait, whole))),
            wait,
            whole,
        }
    }

    fn next(now: Instant, wait: Duration, whole: Option<(Instant, Duration)>) -> Instant {
        let after_wait = now + wait;
        whole.map_or(after_wait, |(end, _)| after_wait.min(end))
    }

    /// Some progress: the wait starts again.
    fn moved_on(&mut self) {
        let next = Self::next(Instant::now(), self.wait, self.whole);
        self.sleep.as_mut().reset(next);
    }

    /// Ready with the timeout that passed.
    fn poll_passed(&mut self, cx: &mut Context<'_>) -> Poll<UpstreamError> {
        ready!(self.sleep.as_mut().poll(cx));
        Poll::Ready(match self.whole {
            Some((end, length)) if Instant::now() >= end => UpstreamError::Timeout(length),
            _ => UpstreamError::Timeout(self.wait),
        })
    }
}

/// The upstream's body, each frame within its exchange's [`Deadline`].
#[derive(Debug)]
pub(crate) struct TimedBody {
    inner: Incoming,
    deadline: Deadline,
}

impl TimedBody {
    /// The body's data frames as a stream, for the pipeline's stream observer.
    pub(crate) fn into_data_stream(self) -> http_body_util::BodyDataStream<Self> {
        http_body_util::BodyDataStream::new(self)
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.deadline.moved_on();
                Poll::Ready(frame.map(|f| f.map_err(UpstreamError::Body)))
            }
            Poll::Pending => this.deadline.poll_passed(cx).map(|e| Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passed(deadline: &mut Deadline) -> Option<Duration> {
        let waker = std::task::Waker::noop();
        match deadline.poll_passed(&mut Context::from_waker(waker)) {
            Poll::Ready(UpstreamError::Timeout(after)) => Some(after),
            Poll::Ready(other) => panic!("{other}"),
            Poll::Pending => None,
        }
    }

    #[tokio::test]
    async fn progress_moves_the_wait_on_but_not_past_the_whole_exchange() {
        let (wait, whole) = (Duration::from_millis(120), Duration::from_millis(300));
        let mut deadline = Deadline::new(wait, Some(whole));
        let started = Instant::now();
        // Bytes every 40 ms: the wait never passes, the whole exchange does.
        let after = loop {
            tokio::time::sleep(Duration::from_millis(40)).await;
            if let Some(after) = passed(&mut deadline) {
                break after;
            }
            assert!(started.elapsed() < 5 * whole, "the whole exchange's end never passed");
            deadline.moved_on();
        };
        assert_eq!(after, whole);
        assert!(started.elapsed() >= whole, "{:?}", started.elapsed());

        // No progress: the wait passes first, and is the timeout reported.
        let mut stalled = Deadline::new(wait, Some(whole));
        tokio::time::sleep(wait + Duration::from_millis(20)).await;
        assert_eq!(passed(&mut stalled), Some(wait));
        let mut stream = Deadline::new(wait, None);
        assert_eq!(passed(&mut stream), None);
    }
}
