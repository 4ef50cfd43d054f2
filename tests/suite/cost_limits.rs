//! Cost from the price table, Pay-i's `xproxy_result`, limits and their states, blocking with
//! bounded overspend under concurrency, and budgets that survive a restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use llm_meter::opentelemetry::Value;
use llm_meter::prometheus::encode;
use llm_meter::Telemetry;
use llm_meter::{AdmissionMode, LimitConfig, LimitKind, LimitState, MemoryLedger};
use llm_meter::{Annotations, CallError, Client, ErrorType, Meter};
use llm_meter_mock::{MockConfig, MockServer};
use llm_meter_proxy::config::Config;
use serde_json::json;

// Published prices (USD per million tokens), as in data/prices.toml.
const MINI_IN: f64 = 0.15;
const MINI_CACHED: f64 = 0.075;
const MINI_OUT: f64 = 0.60;

fn body(model: &str, stream: bool) -> serde_json::Value {
    json!({"model": model, "messages": [{"role": "user", "content": "What does a budget do?"}], "max_completion_tokens": 50, "stream": stream})
}

fn hand_cost(input: u64, cached: u64, output: u64) -> (f64, f64) {
    let input_cost = (input - cached) as f64 * MINI_IN / 1e6 + cached as f64 * MINI_CACHED / 1e6;
    (input_cost, output as f64 * MINI_OUT / 1e6)
}

#[tokio::test]
async fn cost_matches_hand_computed_prices_streaming_and_not() {
    let mock = MockServer::start(MockConfig {
        cached_fraction: 0.5,
        reasoning_tokens: 7,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let t = Telemetry::builder().without_otlp().build().unwrap();
    let capture = capture_spans();
    let client = Client::builder()
        .base_url(mock.base_url())
        .meter(t.meter_builder().tracer(capture.tracer()).build().unwrap())
        .build()
        .unwrap();
    let a = Annotations::builder().use_case_name("cost").build().unwrap();

    let r = client.chat(&body("gpt-4o-mini", false), &a).await.unwrap();
    let u = *r.usage().unwrap();
    let (want_in, want_out) = hand_cost(u.input_tokens, u.cached_input_tokens.unwrap(), u.output_tokens);
    assert!(u.cached_input_tokens.unwrap() > 0 && u.reasoning_tokens == Some(7));
    let c = r.record().cost.unwrap();
    assert!(
        (c.input - want_in).abs() < 1e-15 && (c.output - want_out).abs() < 1e-15,
        "{c:?}"
    );
    assert!((c.total - (want_in + want_out)).abs() < 1e-15);
    let x = r.xproxy_result().to_json();
    assert_eq!(x["cost"]["currency"], "usd");
    assert!((x["cost"]["total"]["base"].as_f64().unwrap() - c.total).abs() < 1e-18);

    let mut s = client.chat_stream(&body("gpt-4o-mini", true), &a).await.unwrap();
    while s.next().await.is_some() {}
    let rs = s.record().unwrap().clone();
    let us = rs.usage.unwrap();
    let (si, so) = hand_cost(us.input_tokens, us.cached_input_tokens.unwrap(), us.output_tokens);
    assert!((rs.cost.unwrap().total - (si + so)).abs() < 1e-15);
    assert!(s.xproxy_result().unwrap().cost.is_some());

    let spans = capture.spans();
    let a0 = attrs(&spans[0]);
    assert_eq!(a0["llm_meter.cost.total_usd"], Value::F64(c.total));
    let text = encode(t.exposition().unwrap()).unwrap();
    let metric_total: f64 = text
        .lines()
        .filter(|l| l.starts_with("llm_meter_cost_usd_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!((metric_total - (c.total + si + so)).abs() < 1e-12, "{metric_total}");
}

#[tokio::test]
async fn unpriced_models_get_no_invented_cost() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let t = Telemetry::builder().without_otlp().build().unwrap();
    let capture = capture_spans();
    let client = Client::builder()
        .base_url(mock.base_url())
        .meter(t.meter_builder().tracer(capture.tracer()).build().unwrap())
        .build()
        .unwrap();
    let r = client
        .chat(&body("my-finetune-v3", false), &Annotations::none())
        .await
        .unwrap();
    assert!(r.record().cost.is_none() && r.record().unpriced());
    assert!(r.xproxy_result().to_json().get("cost").is_none());
    let a = attrs(&capture.chat_span());
    assert_eq!(a["llm_meter.cost.unpriced"], Value::Bool(true));
    assert!(!a.contains_key("llm_meter.cost.total_usd"));
    let text = encode(t.exposition().unwrap()).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("llm_meter_calls_unpriced_total{") && l.ends_with(" 1")),
        "{text}"
    );
    assert!(!text.contains("llm_meter_cost_usd_total{"));
}

#[tokio::test]
async fn the_tier_that_served_the_call_prices_it_and_an_unpriced_tier_is_counted() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let t = Telemetry::builder().without_otlp().build().unwrap();
    let client = Client::builder()
        .base_url(mock.base_url())
        .meter(t.meter_builder().build().unwrap())
        .build()
        .unwrap();
    let _capture = capture_spans();
    let with_tier = |tier: &str| {
        let mut b = body("gpt-4o-mini", false);
        b["service_tier"] = json!(tier);
        b
    };
    let standard = client
        .chat(&body("gpt-4o-mini", false), &Annotations::none())
        .await
        .unwrap();
    let priority = client.chat(&with_tier("priority"), &Annotations::none()).await.unwrap();
    assert_eq!(priority.record().response.service_tier.as_deref(), Some("priority"));
    let (s, p) = (*standard.usage().unwrap(), *priority.usage().unwrap());
    assert_eq!((s.input_tokens, s.output_tokens), (p.input_tokens, p.output_tokens));
    // gpt-4o-mini priority: $0.25 in, $0.125 cached, $1.00 out per 1M (standard $0.15/$0.60).
    let cached = p.cached_input_tokens.unwrap_or(0);
    let want = ((p.input_tokens - cached) as f64 * 0.25 + cached as f64 * 0.125 + p.output_tokens as f64 * 1.0) / 1e6;
    let got = priority.record().cost.unwrap().total;
    assert!((got - want).abs() < 1e-15, "priority cost {got}, want {want}");
    assert!(got > standard.record().cost.unwrap().total);
    // `scale` has no price for this model: unpriced and counted, not costed at the default.
    let scale = client.chat(&with_tier("scale"), &Annotations::none()).await.unwrap();
    assert!(scale.record().cost.is_none() && scale.record().unpriced());
    let text = encode(t.exposition().unwrap()).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("llm_meter_calls_unpriced_total{") && l.ends_with(" 1")),
        "{text}"
    );
}

#[tokio::test]
async fn xproxy_result_has_payis_exact_shape() {
    // Every test here holds a span capture: see common::capture_spans.
    let _capture = capture_spans();
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let ledger = Arc::new(
        MemoryLedger::new(vec![LimitConfig {
            id: "daily".into(),
            max: 100.0,
            threshold: None,
            kind: LimitKind::Allow,
            reset: None,
            admission: AdmissionMode::Spent,
        }])
        .unwrap(),
    );
    let client = Client::builder()
        .base_url(mock.base_url())
        .meter(Meter::builder().ledger(ledger).build().unwrap())
        .build()
        .unwrap();
    let a = Annotations::builder()
        .use_case_name("support")
        .user_id("u-1")
        .limit_ids(["daily", "adhoc"])
        .request_tags(["t1"])
        .build()
        .unwrap();
    let r = client.chat(&body("gpt-4o", false), &a).await.unwrap();
    let c = r.record().cost.unwrap();
    let x = r.xproxy_result().to_json();
    assert_eq!(x["request_id"].as_str().unwrap().len(), 32);
    let want = json!({
        "request_id": x["request_id"],
        "use_case_name": "support",
        "user_id": "u-1",
        "request_tags": ["t1"],
        "limits": {"daily": {"state": "ok"}, "adhoc": {"state": "ok"}},
        "blocked_limit_ids": [],
        "cost": {"currency": "usd", "input": {"base": c.input}, "output": {"base": c.output}, "total": {"base": c.total}},
    });
    assert_eq!(x, want);
}

fn ledger_with(limits: Vec<LimitConfig>) -> Arc<MemoryLedger> {
    Arc::new(MemoryLedger::new(limits).unwrap())
}

#[tokio::test]
async fn limit_states_reach_records_and_gauges() {
    // Every test here holds a span capture: see common::capture_spans.
    let _capture = capture_spans();
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let ledger = ledger_with(vec![
        LimitConfig {
            id: "tiny-allow".into(),
            max: 0.0001,
            threshold: None,
            kind: LimitKind::Allow,
            reset: None,
            admission: AdmissionMode::Spent,
        },
        LimitConfig {
            id: "half".into(),
            max: 0.0008,
            threshold: Some(0.5),
            kind: LimitKind::Allow,
            reset: None,
            admission: AdmissionMode::Spent,
        },
    ]);
    let t = Telemetry::builder().without_otlp().build().unwrap();
    let meter = t.meter_builder().ledger(ledger.clone()).build().unwrap();
    let client = Client::builder()
        .base_url(mock.base_url())
        .meter(meter)
        .build()
        .unwrap();
    let a = Annotations::builder()
        .limit_ids(["tiny-allow", "half"])
        .build()
        .unwrap();
    let r = client.chat(&body("gpt-4o", false), &a).await.unwrap();
    let states: Vec<_> = r.record().limits.clone();
    assert_eq!(
        states,
        [
            ("tiny-allow".to_owned(), LimitState::Overrun),
            ("half".to_owned(), LimitState::Exceeded)
        ]
    );
    assert!(r.is_success(), "allow limits never refuse");
    let text = encode(t.exposition().unwrap()).unwrap();
    assert!(
        text.contains(r#"llm_meter_limit_state{limit_id="tiny-allow",limit_kind="allow"} 2"#),
        "{text}"
    );
    assert!(text.contains(r#"llm_meter_limit_state{limit_id="half",limit_kind="allow"} 1"#));
    assert!(text.contains(r#"llm_meter_limit_max_usd{limit_id="half",limit_kind="allow"} 0.0008"#));
    let spend = ledger.statuses().into_iter().find(|s| s.id == "half").unwrap().spend;
    assert!((spend - r.record().cost.unwrap().total).abs() < 1e-15);
}

#[tokio::test]
async fn the_library_client_can_refuse_before_calling_the_provider() {
    // Every test here holds a span capture: see common::capture_spans.
    let _capture = capture_spans();
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let ledger = ledger_with(vec![LimitConfig {
        id: "cap".into(),
        max: 0.0008,
        threshold: None,
        kind: LimitKind::Block,
        reset: None,
        admission: AdmissionMode::Reserve,
    }]);
    let t = Telemetry::builder().without_otlp().build().unwrap();
    let meter = t
        .meter_builder()
        .ledger(ledger.clone())
        .enforce_limits(true)
        .build()
        .unwrap();
    let client = Client::builder()
        .base_url(mock.base_url())
        .meter(meter)
        .build()
        .unwrap();
    let a = Annotations::builder().limit_ids(["cap"]).build().unwrap();
    client.chat(&body("gpt-4o", false), &a).await.unwrap();
    let err = client.chat(&body("gpt-4o", false), &a).await.unwrap_err();
    let CallError::LimitReached {
        blocked_limit_ids,
        record,
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(blocked_limit_ids, &["cap"]);
    assert_eq!(record.error, Some(ErrorType::LimitReached));
    assert_eq!(record.limits, [("cap".to_owned(), LimitState::Blocked)]);
    assert_eq!(mock.received().len(), 1, "the refused call never reached the provider");
    let text = encode(t.exposition().unwrap()).unwrap();
    assert!(
        text.contains(r#"llm_meter_limit_blocked_total{limit_id="cap"} 1"#),
        "{text}"
    );
    assert!(err.to_string().contains("cap"));
}

/// What 200 concurrent calls (30 ms each, all started at once) against one block limit of
/// $0.01 did: calls admitted and refused, final spend, the peak of spend plus reservations, and
/// the sum of the admitted calls' costs.
struct Burst {
    admitted: usize,
    blocked: usize,
    spend: f64,
    reserved: f64,
    peak_committed: f64,
    costs: f64,
    provider_calls: usize,
    state: LimitState,
    /// Most calls in flight at once, as the test counted them.
    peak_in_flight: usize,
    /// Most one call cost.
    max_call_cost: f64,
}

const BURST_MAX: f64 = 0.01;

async fn two_hundred_concurrent_calls(admission: AdmissionMode) -> Burst {
    let mock = MockServer::start(MockConfig {
        latency: Duration::from_millis(30),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let ledger = ledger_with(vec![LimitConfig {
        id: "budget".into(),
        max: BURST_MAX,
        threshold: None,
        kind: LimitKind::Block,
        reset: None,
        admission,
    }]);
    let meter = llm_meter::Meter::builder()
        .ledger(ledger.clone())
        .enforce_limits(true)
        .build()
        .unwrap();
    let client = Client::builder()
        .base_url(mock.base_url())
        .meter(meter.clone())
        .build()
        .unwrap();
    let a = Annotations::builder().limit_ids(["budget"]).build().unwrap();
    let (admitted, blocked) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let peak_committed = Arc::new(std::sync::Mutex::new(0f64));
    let costs = Arc::new(std::sync::Mutex::new((0f64, 0f64)));
    let in_flight = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    futures_util::stream::iter(0..200)
        .for_each_concurrent(200, |_| {
            let in_flight = in_flight.clone();
            let (client, a, admitted, blocked, ledger, peak, costs) = (
                client.clone(),
                a.clone(),
                admitted.clone(),
                blocked.clone(),
                ledger.clone(),
                peak_committed.clone(),
                costs.clone(),
            );
            async move {
                let now = in_flight.0.fetch_add(1, Ordering::SeqCst) + 1;
                in_flight.1.fetch_max(now, Ordering::SeqCst);
                let result = client.chat(&body("gpt-4o", false), &a).await;
                in_flight.0.fetch_sub(1, Ordering::SeqCst);
                match result {
                    Ok(r) => {
                        assert!(r.is_success());
                        let cost = r.record().cost.unwrap().total;
                        let mut c = costs.lock().unwrap();
                        c.0 += cost;
                        c.1 = c.1.max(cost);
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(CallError::LimitReached { .. }) => {
                        blocked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("{e}"),
                }
                let s = &ledger.statuses()[0];
                let mut p = peak.lock().unwrap();
                *p = p.max(s.spend + s.reserved);
            }
        })
        .await;
    let status = ledger.statuses()[0].clone();
    let (costs, max_call_cost) = *costs.lock().unwrap();
    let burst = Burst {
        admitted: admitted.load(Ordering::Relaxed),
        blocked: blocked.load(Ordering::Relaxed),
        spend: status.spend,
        reserved: status.reserved,
        peak_committed: *peak_committed.lock().unwrap(),
        costs,
        provider_calls: mock.received().len(),
        state: status.state,
        peak_in_flight: in_flight.1.load(Ordering::SeqCst),
        max_call_cost,
    };
    println!(
        "{admission:?}: admitted {}, blocked {}, spend {:.6} of {BURST_MAX} ({:.0} %), peak spend+reserved {:.6}, \
         peak in flight {}",
        burst.admitted,
        burst.blocked,
        burst.spend,
        100.0 * burst.spend / BURST_MAX,
        burst.peak_committed,
        burst.peak_in_flight
    );
    let _ = meter;
    burst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_calls_never_overspend_a_block_limit() {
    // Every test here holds a span capture: see common::capture_spans.
    let _capture = capture_spans();
    let b = two_hundred_concurrent_calls(AdmissionMode::Reserve).await;
    assert_eq!(b.admitted + b.blocked, 200);
    assert!(
        b.admitted >= 5 && b.blocked >= 100,
        "admitted {}, blocked {}",
        b.admitted,
        b.blocked
    );
    assert_eq!(b.reserved, 0.0, "every reservation was settled");
    assert!(b.spend <= BURST_MAX, "spend {} passed max {BURST_MAX}", b.spend);
    assert!(
        b.peak_committed <= BURST_MAX + 1e-12,
        "spend plus in-flight reservations stayed within max"
    );
    assert_eq!(b.provider_calls.min(64), b.admitted.min(64));
    assert!(
        (b.spend - b.costs).abs() < 1e-12,
        "the ledger holds exactly the admitted calls' costs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spent_admission_admits_until_spend_reaches_max_and_overspends_by_the_calls_in_flight() {
    let _capture = capture_spans();
    let b = two_hundred_concurrent_calls(AdmissionMode::Spent).await;
    assert_eq!(b.admitted + b.blocked, 200);
    assert_eq!(b.reserved, 0.0, "every reservation was settled");
    assert!(
        (b.spend - b.costs).abs() < 1e-12,
        "the ledger holds exactly the admitted calls' costs"
    );
    assert_eq!(b.provider_calls.min(64), b.admitted.min(64));
    // Refused only once spend reached max; the overspend is bounded by the calls in flight
    // (each admitted while spend was still under max).
    assert!(b.spend >= BURST_MAX, "spend {} never reached max", b.spend);
    assert_eq!(b.state, LimitState::Blocked, "spend reached max: the limit blocks now");
    assert!(
        b.spend - BURST_MAX <= b.peak_in_flight as f64 * b.max_call_cost,
        "overspend {} beyond {} calls in flight",
        b.spend - BURST_MAX,
        b.peak_in_flight
    );
    assert!(
        b.admitted > 19,
        "more calls admitted than the reserve mode's worst cases allow"
    );

    // One call at a time (nothing in flight): calls are admitted until spend reaches max, and
    // the overspend is less than one call.
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let ledger = ledger_with(vec![LimitConfig {
        id: "budget".into(),
        max: BURST_MAX,
        threshold: None,
        kind: LimitKind::Block,
        reset: None,
        admission: AdmissionMode::Spent,
    }]);
    let meter = llm_meter::Meter::builder()
        .ledger(ledger.clone())
        .enforce_limits(true)
        .build()
        .unwrap();
    let client = Client::builder()
        .base_url(mock.base_url())
        .meter(meter)
        .build()
        .unwrap();
    let a = Annotations::builder().limit_ids(["budget"]).build().unwrap();
    let (mut admitted, mut last_cost) = (0, 0.0);
    loop {
        match client.chat(&body("gpt-4o", false), &a).await {
            Ok(r) => {
                admitted += 1;
                last_cost = r.record().cost.unwrap().total;
                assert!(admitted < 1000, "never refused");
            }
            Err(CallError::LimitReached { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let spend = ledger.statuses()[0].spend;
    println!("Spent, one at a time: admitted {admitted}, spend {spend:.6} of {BURST_MAX}");
    assert!(
        spend >= BURST_MAX && spend - BURST_MAX < last_cost,
        "spend {spend}, one call {last_cost}"
    );
    assert!(spend - last_cost < BURST_MAX, "the last call was admitted under max");
}

#[tokio::test]
async fn budgets_survive_a_restart_through_the_config_snapshot() {
    // Every test here holds a span capture: see common::capture_spans.
    let _capture = capture_spans();
    let dir = std::env::temp_dir().join(format!("llm-meter-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("llm-meter.toml");
    std::fs::write(&config_path, "[[limits]]\nid = \"monthly\"\nmax = 0.002\nkind = \"block\"\nreset = \"30d\"\n[ledger]\nsnapshot = \"ledger.json\"\n").unwrap();
    let _ = std::fs::remove_file(dir.join("ledger.json"));
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let a = Annotations::builder().limit_ids(["monthly"]).build().unwrap();

    let config = Config::from_file(&config_path).unwrap();
    let ledger = Arc::new(config.ledger().unwrap());
    let client = Client::builder()
        .base_url(mock.base_url())
        .meter(
            Meter::builder()
                .ledger(ledger.clone())
                .enforce_limits(true)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let mut spent = 0.0;
    for _ in 0..3 {
        spent += client
            .chat(&body("gpt-4o", false), &a)
            .await
            .unwrap()
            .record()
            .cost
            .unwrap()
            .total;
    }
    ledger.snapshot(&config.snapshot_path().unwrap()).unwrap();
    drop(client);

    // "Restart": a new ledger from the same config keeps the spend and keeps enforcing.
    let restored = Arc::new(Config::from_file(&config_path).unwrap().ledger().unwrap());
    assert!((restored.statuses()[0].spend - spent).abs() < 1e-15);
    let client = Client::builder()
        .base_url(mock.base_url())
        .meter(Meter::builder().ledger(restored).enforce_limits(true).build().unwrap())
        .build()
        .unwrap();
    let mut refused = false;
    for _ in 0..5 {
        if let Err(CallError::LimitReached { .. }) = client.chat(&body("gpt-4o", false), &a).await {
            refused = true;
            break;
        }
    }
    assert!(refused, "the restored budget runs out as the original would");

    std::fs::write(dir.join("ledger.json"), "not json").unwrap();
    let err = Config::from_file(&config_path)
        .unwrap()
        .ledger()
        .unwrap_err()
        .to_string();
    assert!(err.contains("unreadable") && err.contains("ledger.json"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
