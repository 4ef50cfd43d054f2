//! A connection woken while it is being polled is polled again at once, instead of being
//! rescheduled.
//!
//! The proxy reads each request's body in its connection's task (it must parse the body before
//! it sends it on), and hyper's body channel wakes its sender, that same task, when the body is
//! taken. tokio treats a task woken while it runs as a yield: it puts the task at the back of
//! the run queue and wakes an idle worker thread to share the work. That was one `futex` wake
//! and one `futex` wait per proxied call; at one client the proxy's CPU per call was 1.64× the
//! relay's with it and 1.39× without (bench/RESULTS.md). The bare relay has no such wake: its
//! request bodies are read by the client connection's task. [`Repoll`] gives the polled future
//! a waker of its own that, during a poll, only notes the wake; the poll then goes round again,
//! at most [`REPOLLS`] times (hyper's own fairness yields still reach tokio after that).
//! Outside a poll the wake goes to the task as usual.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Polls again after a wake during a poll, at most this many times per poll of the task.
const REPOLLS: usize = 2;

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN_WHILE_POLLING: u8 = 2;

/// `inner`, polled again when it wakes itself during a poll.
pub(crate) struct Repoll<F> {
    inner: Pin<Box<F>>,
    state: Arc<WakeState>,
    waker: Waker,
}

struct WakeState {
    phase: AtomicU8,
    task: AtomicWaker,
}

impl Wake for WakeState {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // During a poll the poller sees the note and polls again; else the task is woken.
        match self
            .phase
            .compare_exchange(POLLING, WOKEN_WHILE_POLLING, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) | Err(WOKEN_WHILE_POLLING) => {}
            Err(_) => self.task.wake(),
        }
    }
}

impl<F: Future> Repoll<F> {
    pub(crate) fn new(inner: F) -> Self {
        let state = Arc::new(WakeState {
            phase: AtomicU8::new(IDLE),
            task: AtomicWaker::new(),
        });
        Repoll {
            inner: Box::pin(inner),
            waker: Waker::from(Arc::clone(&state)),
            state,
        }
    }
}

impl<F: Future> Future for Repoll<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        this.state.task.register(cx.waker());
        let mut inner_cx = Context::from_waker(&this.waker);
        for _ in 0..=REPOLLS {
            this.state.phase.store(POLLING, Ordering::Release);
            let polled = this.inner.as_mut().poll(&mut inner_cx);
            let woken = this
                .state
                .phase
                .compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                .is_err();
            if polled.is_ready() || !woken {
                this.state.phase.store(IDLE, Ordering::Release);
                return polled;
            }
        }
        // Still waking itself: let the scheduler run others first.
        this.state.phase.store(IDLE, Ordering::Release);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    /// Counts how often the task's own waker is woken.
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<CountingWaker>, Waker) {
        let count = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        (count, waker)
    }

    /// Wakes its own waker and is pending for its first `wakes_itself` polls, then ready with
    /// the number of polls.
    struct WakesItself {
        wakes_itself: usize,
        polls: usize,
    }

    impl Future for WakesItself {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            if self.polls > self.wakes_itself {
                return Poll::Ready(self.polls);
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    fn wakes_itself(times: usize) -> Repoll<WakesItself> {
        Repoll::new(WakesItself {
            wakes_itself: times,
            polls: 0,
        })
    }

    #[test]
    fn a_wake_during_the_poll_polls_again_without_waking_the_task() {
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(Pin::new(&mut wakes_itself(0)).poll(&mut cx), Poll::Ready(1));
        assert_eq!(
            Pin::new(&mut wakes_itself(REPOLLS)).poll(&mut cx),
            Poll::Ready(REPOLLS + 1)
        );
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_future_that_keeps_waking_itself_yields_to_the_scheduler() {
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let mut f = wakes_itself(10);
        assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
        assert_eq!(f.inner.polls, REPOLLS + 1);
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "the task is woken to be polled again"
        );
    }

    #[test]
    fn a_wake_after_the_poll_reaches_the_task_from_any_thread() {
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let mut parked = Repoll::new(std::future::pending::<()>());
        assert!(Pin::new(&mut parked).poll(&mut cx).is_pending());
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        // The waker the inner future was given, woken later from another thread.
        let given = parked.waker.clone();
        std::thread::spawn(move || given.wake()).join().unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    /// `inner`, counting the wakes that come while it is being polled.
    struct CountSelfWakes<F> {
        inner: Pin<Box<F>>,
        polling: Arc<AtomicBool>,
        during: Arc<AtomicUsize>,
    }

    struct CountingTaskWaker {
        polling: Arc<AtomicBool>,
        during: Arc<AtomicUsize>,
        task: Waker,
    }

    impl Wake for CountingTaskWaker {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            if self.polling.load(Ordering::SeqCst) {
                self.during.fetch_add(1, Ordering::SeqCst);
            }
            self.task.wake_by_ref();
        }
    }

    impl<F: Future> Future for CountSelfWakes<F> {
        type Output = F::Output;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            let waker = Waker::from(Arc::new(CountingTaskWaker {
                polling: Arc::clone(&self.polling),
                during: Arc::clone(&self.during),
                task: cx.waker().clone(),
            }));
            self.polling.store(true, Ordering::SeqCst);
            let polled = self.inner.as_mut().poll(&mut Context::from_waker(&waker));
            self.polling.store(false, Ordering::SeqCst);
            polled
        }
    }

    /// Serves one request whose handler reads the body (as the proxy's routes do) on a hyper
    /// connection, wrapped in `Repoll` or not; returns the wakes of the connection's task that
    /// came during its own polls.
    async fn self_wakes_serving_one_request(repoll: bool) -> usize {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let service = hyper::service::service_fn(|request: hyper::Request<hyper::body::Incoming>| async move {
            let body = crate::whole_body::read_within(request.into_body(), 1 << 20)
                .await
                .map_err(|_| "unreadable")?;
            Ok::<_, &'static str>(hyper::Response::new(http_body_util::Full::new(body)))
        });
        let connection =
            hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(server), service);
        let during = Arc::new(AtomicUsize::new(0));
        let polling = Arc::new(AtomicBool::new(false));
        let served = if repoll {
            let counted = CountSelfWakes {
                inner: Box::pin(Repoll::new(connection)),
                polling,
                during: Arc::clone(&during),
            };
            tokio::spawn(async move { drop(counted.await) })
        } else {
            let counted = CountSelfWakes {
                inner: Box::pin(connection),
                polling,
                during: Arc::clone(&during),
            };
            tokio::spawn(async move { drop(counted.await) })
        };
        client
            .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: proxy\r\ncontent-length: 11\r\nconnection: close\r\n\r\nhello world")
            .await
            .unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 200") && answer.ends_with(b"hello world"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        served.await.unwrap();
        during.load(Ordering::SeqCst)
    }

    /// hyper's body channel wakes the connection's own task when its handler takes the body:
    /// without `Repoll` tokio sees that wake during the poll (and handles it as a yield that
    /// wakes an idle worker); with it, none reaches the task.
    #[tokio::test]
    async fn reading_a_request_body_does_not_wake_the_connection_during_its_poll() {
        assert!(
            self_wakes_serving_one_request(false).await >= 1,
            "the control: hyper no longer wakes the connection while it reads the body"
        );
        assert_eq!(self_wakes_serving_one_request(true).await, 0);
    }
}
