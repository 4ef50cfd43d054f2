//! A connection woken while it is being polled is polled again at once, instead of being
//! rescheduled.
//!
//! The proxy reads each request's body in its connection's task (it must parse the body before
//! it sends it on), and hyper's body channel wakes its sender, that same task, when the body is
//! taken. tokio treats a task woken while it runs as a yield: it puts the task at the back of
//! the run queue and wakes an idle worker thread to share the work. That was one `futex` wake
//! and one `futex` wait per proxied call, and at one client about 30 µs of CPU per call
//! (bench/RESULTS.md). The bare relay has no such wake: its request bodies are read by the
//! client connection's task. [`Repoll`] gives the polled future a waker of its own that, during
//! a poll, only notes the wake; the poll then goes round again, at most [`REPOLLS`] times
//! (hyper's own fairness yields still reach tokio after that). Outside a poll the wake goes to
//! the task as usual.

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
    use std::sync::atomic::AtomicUsize;

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
}
