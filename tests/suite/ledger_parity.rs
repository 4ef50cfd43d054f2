//! One suite of ledger behaviour, run against both implementations: the in-memory ledger and
//! the Redis ledger (on a real redis-server). Each scenario writes a trace of what the ledger
//! answered (admissions, settlement states, then every status once settled); the two traces must
//! be identical, and each scenario also asserts what the answers must be.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use llm_meter::{AdmissionMode, Hold, Ledger, LimitConfig, LimitKind, LimitState, MemoryLedger, RedisLedger};

use crate::common::redis::RedisServer;

fn limit(id: &str, max: f64, threshold: Option<f64>, kind: LimitKind) -> LimitConfig {
    LimitConfig {
        id: id.into(),
        max,
        threshold,
        kind,
        reset: None,
        admission: AdmissionMode::Spent,
    }
}

fn reserving(id: &str, max: f64) -> LimitConfig {
    LimitConfig {
        admission: AdmissionMode::Reserve,
        ..limit(id, max, None, LimitKind::Block)
    }
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// Makes a fresh ledger for limits, tracking at most `max_unconfigured` unconfigured ids.
type Make<'a> = &'a (dyn Fn(Vec<LimitConfig>, usize) -> Arc<dyn Ledger> + Sync);

/// Drives one ledger and writes down what it answered.
struct Driver {
    ledger: Arc<dyn Ledger>,
    trace: Vec<String>,
}

impl Driver {
    async fn admit(&mut self, v: &[&str], reservation: f64) -> (Vec<String>, Hold) {
        let a = self.ledger.admit(&ids(v), reservation).await.unwrap();
        self.trace
            .push(format!("admit {v:?} {reservation} -> blocked {:?}", a.blocked));
        (a.blocked, a.hold)
    }

    async fn settle(&mut self, v: &[&str], hold: Hold, cost: f64) -> Vec<(String, LimitState)> {
        let states = self.ledger.settle(&ids(v), hold, cost);
        self.trace.push(format!("settle {v:?} {cost} -> {states:?}"));
        self.ledger.flush().await.unwrap();
        self.statuses();
        states
    }

    fn statuses(&mut self) {
        for s in self.ledger.statuses() {
            self.trace.push(format!(
                "  status {} spend {:.9} reserved {:.9} {:?}",
                s.id, s.spend, s.reserved, s.state
            ));
        }
    }
}

async fn states_follow_threshold_max_and_kind(make: Make<'_>) -> Vec<String> {
    let mut d = Driver {
        ledger: make(
            vec![
                limit("a", 1.0, Some(0.8), LimitKind::Allow),
                limit("b", 1.0, Some(0.5), LimitKind::Block),
            ],
            1000,
        ),
        trace: Vec::new(),
    };
    let none = Hold::default();
    let ok = |id: &str, s| (id.to_owned(), s);
    assert_eq!(
        d.settle(&["a", "b"], none, 0.4).await,
        [ok("a", LimitState::Ok), ok("b", LimitState::Ok)]
    );
    assert_eq!(
        d.settle(&["a", "b"], none, 0.4).await,
        [ok("a", LimitState::Exceeded), ok("b", LimitState::Exceeded)]
    );
    assert_eq!(d.settle(&["a"], none, 0.4).await, [ok("a", LimitState::Overrun)]);
    assert_eq!(d.settle(&["b"], none, 0.2).await, [ok("b", LimitState::Blocked)]);
    assert_eq!(d.admit(&["a", "b"], 0.0).await.0, ["b"]);
    assert!(d.admit(&["a"], 5.0).await.0.is_empty(), "allow limits never refuse");
    d.trace
}

async fn reserve_admission_counts_reservations_in_flight(make: Make<'_>) -> Vec<String> {
    let mut d = Driver {
        ledger: make(vec![reserving("b", 1.0)], 1000),
        trace: Vec::new(),
    };
    let (blocked, first) = d.admit(&["b"], 0.4).await;
    assert!(blocked.is_empty());
    assert!(d.admit(&["b"], 0.4).await.0.is_empty());
    assert_eq!(d.admit(&["b"], 0.4).await.0, ["b"], "0.8 reserved + 0.4 would pass 1.0");
    d.settle(&["b"], first, 0.1).await;
    assert!(
        d.admit(&["b"], 0.4).await.0.is_empty(),
        "settling released the reservation"
    );
    d.ledger.flush().await.unwrap();
    d.statuses();
    let s = &d.ledger.statuses()[0];
    assert!((s.spend - 0.1).abs() < 1e-9 && (s.reserved - 0.8).abs() < 1e-9, "{s:?}");
    // The worst case reserved is what passes max: refused even with spend at 0.1.
    assert_eq!(d.admit(&["b"], 0.2).await.0, ["b"]);
    d.trace
}

async fn spent_admission_refuses_only_once_spend_reached_max(make: Make<'_>) -> Vec<String> {
    let mut d = Driver {
        ledger: make(vec![limit("b", 1.0, None, LimitKind::Block)], 1000),
        trace: Vec::new(),
    };
    let mut holds = Vec::new();
    for _ in 0..5 {
        let (blocked, hold) = d.admit(&["b"], 0.4).await;
        assert!(blocked.is_empty(), "reservations do not refuse");
        holds.push(hold);
    }
    d.ledger.flush().await.unwrap();
    d.statuses();
    assert!(
        (d.ledger.statuses()[0].reserved - 2.0).abs() < 1e-9,
        "but are still tracked"
    );
    d.settle(&["b"], holds[0], 0.6).await;
    assert!(d.admit(&["b"], 0.0).await.0.is_empty(), "0.6 spent of 1.0");
    assert_eq!(
        d.settle(&["b"], holds[1], 0.5).await,
        [("b".to_owned(), LimitState::Blocked)],
        "1.1 spent: overspend of one call in flight"
    );
    assert_eq!(d.admit(&["b"], 0.0).await.0, ["b"], "spend reached max: refused");
    for hold in &holds[2..] {
        d.settle(&["b"], *hold, 0.0).await;
    }
    assert_eq!(d.ledger.statuses()[0].reserved, 0.0, "every reservation settled");
    d.trace
}

async fn unconfigured_ids_are_tracked_up_to_a_bound(make: Make<'_>) -> Vec<String> {
    let mut d = Driver {
        ledger: make(vec![], 2),
        trace: Vec::new(),
    };
    d.settle(&["x", "y", "z"], Hold::default(), 0.5).await;
    let statuses = d.ledger.statuses();
    assert_eq!(statuses.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["x", "y"]);
    assert_eq!(statuses[0].state, LimitState::Ok);
    assert!((statuses[0].spend - 0.5).abs() < 1e-9);
    let (blocked, hold) = d.admit(&["x", "q"], 0.25).await;
    assert!(blocked.is_empty());
    d.settle(&["x", "q"], hold, 0.25).await;
    d.trace
}

async fn windows_reset_on_schedule(make: Make<'_>) -> Vec<String> {
    // Start just after a whole 2 s period, so the memory ledger's window (from its creation)
    // and Redis's (aligned to the epoch) are the same window.
    let period = 2_000u128;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
    tokio::time::sleep(Duration::from_millis((period - now % period + 20) as u64)).await;
    let mut cfg = limit("d", 1.0, None, LimitKind::Block);
    cfg.reset = Some(Duration::from_secs(2));
    let mut d = Driver {
        ledger: make(vec![cfg], 1000),
        trace: Vec::new(),
    };
    d.settle(&["d"], Hold::default(), 1.0).await;
    assert_eq!(d.admit(&["d"], 0.0).await.0, ["d"], "spent within the window");
    let end = d.ledger.statuses()[0].window_end.unwrap();
    let end_ms = end.duration_since(UNIX_EPOCH).unwrap().as_millis();
    assert!(
        end_ms % period <= 50 || end_ms % period >= period - 50,
        "window ends on a whole period"
    );
    tokio::time::sleep(end.duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_millis(150)).await;
    assert!(d.admit(&["d"], 0.0).await.0.is_empty(), "a new window: spend reset");
    d.statuses();
    assert_eq!(d.ledger.statuses()[0].spend, 0.0);
    d.trace
}

fn memory(limits: Vec<LimitConfig>, max_unconfigured: usize) -> Arc<dyn Ledger> {
    Arc::new(
        MemoryLedger::new(limits)
            .unwrap()
            .with_max_unconfigured(max_unconfigured),
    )
}

/// Runs a scenario on both ledgers; their traces must be the same.
macro_rules! parity {
    ($name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let redis = RedisServer::start();
            let url = redis.url();
            let prefix = std::sync::atomic::AtomicU64::new(0);
            let on_redis = move |limits: Vec<LimitConfig>, max_unconfigured: usize| -> Arc<dyn Ledger> {
                let n = prefix.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Arc::new(
                    RedisLedger::builder(url.clone(), limits)
                        .key_prefix(format!("parity{n}"))
                        .max_unconfigured(max_unconfigured)
                        .build()
                        .unwrap(),
                )
            };
            let in_memory = super::$name(&memory).await;
            let on_redis = super::$name(&on_redis).await;
            assert!(in_memory.len() >= 5, "{in_memory:#?}");
            assert_eq!(
                in_memory, on_redis,
                "the Redis ledger answered otherwise than the memory ledger"
            );
            println!("{}: {} identical answers", stringify!($name), in_memory.len());
        }
    };
}

mod memory_and_redis_agree {
    use super::*;

    parity!(states_follow_threshold_max_and_kind);
    parity!(reserve_admission_counts_reservations_in_flight);
    parity!(spent_admission_refuses_only_once_spend_reached_max);
    parity!(unconfigured_ids_are_tracked_up_to_a_bound);
    parity!(windows_reset_on_schedule);
}
