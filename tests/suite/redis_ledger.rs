//! Budgets across proxy replicas on the shared Redis ledger, each against a real redis-server:
//! three proxies and 300 concurrent calls on one block limit, restarts, Redis down, slow and
//! restarted under both policies, the ledger's health metrics, and the library client sharing a
//! budget with the proxy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use llm_meter::prometheus::encode;
use llm_meter::{
    AdmissionMode, Annotations, CallError, Client, Hold, Ledger, LimitConfig, LimitKind, LimitState, OnLedgerError,
    RedisLedger, Telemetry,
};
use llm_meter_mock::{MockConfig, MockServer};
use llm_meter_proxy::{Proxy, ProxySettings};
use serde_json::{json, Value};

use crate::common::redis::RedisServer;

const TIMEOUT: Duration = Duration::from_millis(200);
/// What a refusal or a served call may take beyond the Redis timeout on a loaded 2-core CI box.
const SLACK: Duration = Duration::from_millis(400);

fn limit(id: &str, max: f64, kind: LimitKind) -> LimitConfig {
    LimitConfig {
        id: id.into(),
        max,
        threshold: None,
        kind,
        reset: None,
        admission: AdmissionMode::Spent,
    }
}

fn body() -> Value {
    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "What does a budget do?"}], "max_completion_tokens": 50})
}

fn micros(usd: f64) -> i64 {
    (usd * 1e6).round() as i64
}

/// One proxy replica on the shared ledger, served until aborted.
struct Replica {
    ledger: Arc<RedisLedger>,
    base: String,
    telemetry: Telemetry,
    task: tokio::task::JoinHandle<()>,
}

async fn replica(url: &str, mock: &MockServer, limits: Vec<LimitConfig>, policy: OnLedgerError) -> Replica {
    replica_with(url, mock, limits, policy, TIMEOUT).await
}

async fn replica_with(
    url: &str,
    mock: &MockServer,
    limits: Vec<LimitConfig>,
    policy: OnLedgerError,
    timeout: Duration,
) -> Replica {
    let ledger = Arc::new(
        RedisLedger::builder(url, limits)
            .on_error(policy)
            .timeout(timeout)
            .build()
            .unwrap(),
    );
    let telemetry = Telemetry::builder().without_otlp().build().unwrap();
    let meter = telemetry.meter_builder().ledger(ledger.clone()).build().unwrap();
    let settings = ProxySettings {
        upstream: mock.base_url().parse().unwrap(),
        ..ProxySettings::default()
    };
    let proxy = Proxy::new(settings, meter).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = proxy.serve(listener).await;
    });
    Replica {
        ledger,
        base,
        telemetry,
        task,
    }
}

struct Answer {
    status: u16,
    body: Value,
    took: Duration,
    retry_after: Option<String>,
}

async fn call(http: &reqwest::Client, base: &str, limits: &str) -> Answer {
    let mut req = http.post(format!("{base}/v1/chat/completions")).json(&body());
    if !limits.is_empty() {
        req = req.header("xProxy-Limit-IDs", limits);
    }
    let started = Instant::now();
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = resp.json().await.unwrap();
    Answer {
        status,
        body,
        took: started.elapsed(),
        retry_after,
    }
}

fn cost(a: &Answer) -> f64 {
    a.body["xproxy_result"]["cost"]["total"]["base"].as_f64().unwrap()
}

/// `(spend, reserved, state)` of every limit, as one replica reports them.
fn report(ledger: &RedisLedger) -> Vec<(String, i64, i64, LimitState)> {
    ledger
        .statuses()
        .into_iter()
        .map(|s| (s.id, micros(s.spend), micros(s.reserved), s.state))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_hold_one_spent_block_limit_and_lose_nothing_on_restart() {
    three_replicas(AdmissionMode::Spent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_never_overspend_one_reserve_block_limit() {
    three_replicas(AdmissionMode::Reserve).await;
}

/// 300 calls at once, spread over three proxies on one Redis, against one block limit of $0.01
/// (`admission`) and one allow limit; then every replica restarted.
async fn three_replicas(admission: AdmissionMode) {
    const MAX: f64 = 0.01;
    let redis = RedisServer::start();
    let mock = MockServer::start(MockConfig {
        latency: Duration::from_millis(30),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let limits = vec![
        LimitConfig {
            admission,
            ..limit("budget", MAX, LimitKind::Block)
        },
        limit("team", 1000.0, LimitKind::Allow),
    ];
    // 300 calls at once on a 2-core debug build queue up in the runtime before they reach Redis:
    // a timeout of a second keeps this test about consistency (the fault tests test timeouts).
    let timeout = Duration::from_secs(1);
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let r = replica_with(&redis.url(), &mock, limits.clone(), OnLedgerError::Closed, timeout).await;
        r.ledger.flush().await.unwrap(); // connected and scripts loaded before the burst
        replicas.push(r);
    }
    let http = reqwest::Client::new();
    let bases: Vec<String> = replicas.iter().map(|r| r.base.clone()).collect();
    let in_flight = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let served: Arc<Mutex<Vec<f64>>> = Arc::default();
    let refused = Arc::new(AtomicUsize::new(0));
    futures_util::stream::iter(0..300)
        .for_each_concurrent(300, |i| {
            let (http, base, in_flight, served, refused) = (
                http.clone(),
                bases[i % 3].clone(),
                in_flight.clone(),
                served.clone(),
                refused.clone(),
            );
            async move {
                let now = in_flight.0.fetch_add(1, Ordering::SeqCst) + 1;
                in_flight.1.fetch_max(now, Ordering::SeqCst);
                let a = call(&http, &base, "budget, team").await;
                in_flight.0.fetch_sub(1, Ordering::SeqCst);
                match a.status {
                    200 => served.lock().unwrap().push(cost(&a)),
                    403 => {
                        assert_eq!(a.body["xproxy_error"]["code"], "limit_reached");
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("status {other}: {}", a.body),
                }
            }
        })
        .await;
    let costs = served.lock().unwrap().clone();
    let (admitted, blocked) = (costs.len(), refused.load(Ordering::Relaxed));
    assert_eq!(admitted + blocked, 300);
    // The mock keeps the last 64 requests it received.
    assert_eq!(
        mock.received().len().min(64),
        admitted.min(64),
        "refused calls never reached the provider"
    );

    for r in &replicas {
        r.ledger.flush().await.unwrap();
    }
    let reports: Vec<_> = replicas.iter().map(|r| report(&r.ledger)).collect();
    assert_eq!(reports[0], reports[1], "every replica reports the same spend and state");
    assert_eq!(reports[0], reports[2], "every replica reports the same spend and state");

    let want: i64 = costs.iter().map(|c| micros(*c)).sum();
    assert_eq!(
        redis.int("llm-meter:spend:team"),
        want,
        "the allow limit holds the exact sum of the calls' costs (in µUSD): no lost update"
    );
    assert_eq!(redis.int("llm-meter:spend:budget"), want);
    assert_eq!(redis.int("llm-meter:reserved:budget"), 0, "every hold released");
    let status = replicas[0]
        .ledger
        .statuses()
        .into_iter()
        .find(|s| s.id == "budget")
        .unwrap();
    let (peak, max_cost) = (
        in_flight.1.load(Ordering::SeqCst),
        costs.iter().copied().fold(0.0, f64::max),
    );
    println!(
        "3 replicas, {admission:?}: admitted {admitted}, refused {blocked}, spend {:.6} of {MAX} ({:.0} %), \
         overshoot {:.6} = {:.1} calls of {max_cost:.6}, peak in flight {peak}",
        status.spend,
        100.0 * status.spend / MAX,
        status.spend - MAX,
        (status.spend - MAX) / max_cost
    );
    // `spent` refuses only once settled spend reached max: on a slow machine all 300 calls can be
    // in flight before the first settles, and none is refused. What must hold is the bound
    // below (overshoot within the calls in flight) and the refusal right after.
    assert!(admitted >= 5, "admitted {admitted}, refused {blocked}");
    if admission == AdmissionMode::Reserve {
        assert!(
            blocked >= 100,
            "reserve refuses once the worst cases fill max: {blocked}"
        );
    }
    match admission {
        AdmissionMode::Spent => {
            assert_eq!(status.state, LimitState::Blocked);
            assert!(status.spend >= MAX, "spend {} never reached max", status.spend);
            assert!(
                status.spend - MAX <= peak as f64 * max_cost,
                "overspend {} beyond the {peak} calls in flight (the bound of one proxy)",
                status.spend - MAX
            );
        }
        _ => assert!(
            status.spend <= MAX,
            "reserve: spend {} passed max across replicas",
            status.spend
        ),
    }

    // Restart every replica: the new ones read the same budgets and keep refusing.
    let before = reports[0].clone();
    for r in replicas.drain(..) {
        r.task.abort();
    }
    drop(http);
    let mut fresh = Vec::new();
    for _ in 0..3 {
        fresh.push(replica_with(&redis.url(), &mock, limits.clone(), OnLedgerError::Closed, timeout).await);
    }
    let http = reqwest::Client::new();
    for r in &fresh {
        r.ledger.flush().await.unwrap();
        assert_eq!(report(&r.ledger), before, "a restarted replica lost nothing");
    }
    // The restarted replicas refuse as the first ones would (at once when spend reached max; a
    // reserve limit after at most the calls whose worst case still fits).
    let mut refused_after = None;
    for i in 0..10 {
        let a = call(&http, &fresh[i % 3].base, "budget").await;
        if a.status == 403 {
            refused_after = Some(i);
            break;
        }
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let refused_after = refused_after.expect("the restored budget refuses");
    if admission == AdmissionMode::Spent {
        assert_eq!(refused_after, 0, "spend had reached max: refused at once");
    }
    fresh[0].ledger.flush().await.unwrap();
    let spend = fresh[0]
        .ledger
        .statuses()
        .into_iter()
        .find(|s| s.id == "budget")
        .unwrap()
        .spend;
    if admission == AdmissionMode::Reserve {
        assert!(spend <= MAX, "reserve: spend {spend} passed max after the restart");
    }
}

/// Calls through one replica, the total cost of the served ones naming `team`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_refuses_block_limits_quickly_while_redis_is_down_slow_or_restarting() {
    let mut redis = RedisServer::start_persistent();
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let limits = vec![
        limit("cap", 100.0, LimitKind::Block),
        limit("team", 100.0, LimitKind::Allow),
    ];
    let r = replica(&redis.url(), &mock, limits, OnLedgerError::Closed).await;
    let http = reqwest::Client::new();
    let mut team_costs = Vec::new();
    let a = call(&http, &r.base, "cap, team").await;
    assert_eq!(a.status, 200, "{}", a.body);
    team_costs.push(cost(&a));

    // Down.
    redis.kill();
    let sent = mock.received().len();
    let a = call(&http, &r.base, "cap, team").await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "ledger_unavailable");
    assert_eq!(a.body["error"]["type"], "ledger_error");
    let message = a.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("ledger (redis)"), "{message}");
    assert_eq!(a.retry_after.as_deref(), Some("1"));
    assert!(a.took < TIMEOUT + SLACK, "refused in {:?}", a.took);
    assert_eq!(
        mock.received().len(),
        sent,
        "the refused call never reached the provider"
    );
    for _ in 0..3 {
        let a = call(&http, &r.base, "team").await;
        assert_eq!(a.status, 200, "calls naming no block limit are served: {}", a.body);
        assert!(a.took < TIMEOUT + SLACK, "served in {:?}", a.took);
        team_costs.push(cost(&a));
    }
    assert_eq!(call(&http, &r.base, "").await.status, 200);
    assert!(r.ledger.health().queued >= 3, "{:?}", r.ledger.health());
    assert!(!r.ledger.health().available);

    // Restarted: served again once it answers; the queued spend is replayed.
    redis.restart();
    let mut back = None;
    for _ in 0..50 {
        let a = call(&http, &r.base, "cap, team").await;
        if a.status == 200 {
            back = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    team_costs.push(cost(&back.expect("served again after Redis restarted")));

    // Slow: every Redis command waits 2 s.
    assert_eq!(redis.command(&["CLIENT", "PAUSE", "2000", "ALL"]), "OK");
    let a = call(&http, &r.base, "cap").await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(a.took < TIMEOUT + SLACK, "a slow Redis held the call {:?}", a.took);
    let a = call(&http, &r.base, "team").await;
    assert_eq!(a.status, 200);
    assert!(a.took < TIMEOUT + SLACK, "a slow Redis held the call {:?}", a.took);
    team_costs.push(cost(&a));
    tokio::time::sleep(Duration::from_millis(2100)).await;

    r.ledger.flush().await.unwrap();
    let want: i64 = team_costs.iter().map(|c| micros(*c)).sum();
    assert_eq!(
        redis.int("llm-meter:spend:team"),
        want,
        "nothing recorded was lost or counted twice"
    );
    assert_eq!(
        redis.int("llm-meter:reserved:team"),
        0,
        "holds of timed-out admissions released"
    );
    let h = r.ledger.health();
    assert!(
        h.queued == 0 && h.replayed >= 3 && h.dropped == 0 && h.available,
        "{h:?}"
    );

    let text = encode(r.telemetry.exposition().unwrap()).unwrap();
    for want in [
        "llm_meter_ledger_info{llm_meter_ledger_kind=\"redis\"",
        "llm_meter_ledger_available{llm_meter_ledger_kind=\"redis\"",
        "llm_meter_ledger_queued{llm_meter_ledger_kind=\"redis\"",
        "llm_meter_ledger_replayed_total{llm_meter_ledger_kind=\"redis\"",
        "llm_meter_ledger_dropped_total{llm_meter_ledger_kind=\"redis\"",
        "llm_meter_ledger_operation_duration_seconds_bucket{",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
    let errors: f64 = text
        .lines()
        .filter(|l| l.starts_with("llm_meter_ledger_errors_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(errors >= 2.0, "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("llm_meter_ledger_errors_total{") && l.contains("error_type=\"timeout\"")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_serves_calls_queues_their_spend_and_replays_it_when_redis_returns() {
    let mut redis = RedisServer::start_persistent();
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let r = replica(
        &redis.url(),
        &mock,
        vec![limit("cap", 100.0, LimitKind::Block)],
        OnLedgerError::Open,
    )
    .await;
    let http = reqwest::Client::new();
    let mut costs = Vec::new();
    for _ in 0..2 {
        let a = call(&http, &r.base, "cap").await;
        assert_eq!(a.status, 200);
        costs.push(cost(&a));
    }
    redis.kill();
    for _ in 0..5 {
        let a = call(&http, &r.base, "cap").await;
        assert_eq!(a.status, 200, "open: served while Redis is down: {}", a.body);
        assert!(a.took < TIMEOUT + SLACK, "served in {:?}", a.took);
        assert_eq!(a.body["xproxy_result"]["limits"]["cap"]["state"], "ok");
        costs.push(cost(&a));
    }
    let h = r.ledger.health();
    assert!(h.queued >= 5 && !h.available, "{h:?}");
    let text = encode(r.telemetry.exposition().unwrap()).unwrap();
    assert!(
        text.contains("llm_meter_ledger_available{llm_meter_ledger_kind=\"redis\",otel_scope_name")
            || text.contains("llm_meter_ledger_available{llm_meter_ledger_kind=\"redis\"} 0"),
        "{text}"
    );
    let queued_line = text
        .lines()
        .find(|l| l.starts_with("llm_meter_ledger_queued{"))
        .unwrap();
    assert!(
        queued_line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() >= 5.0,
        "{queued_line}"
    );

    redis.restart();
    let mut flushed = false;
    for _ in 0..50 {
        if r.ledger.flush().await.is_ok() {
            flushed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(flushed, "the queue was applied once Redis returned");
    let want: i64 = costs.iter().map(|c| micros(*c)).sum();
    assert_eq!(
        redis.int("llm-meter:spend:cap"),
        want,
        "the spend of every served call is on Redis"
    );
    let h = r.ledger.health();
    assert!(h.queued == 0 && h.replayed >= 5 && h.available, "{h:?}");

    assert_eq!(redis.command(&["CLIENT", "PAUSE", "1500", "ALL"]), "OK");
    let a = call(&http, &r.base, "cap").await;
    assert_eq!(a.status, 200);
    assert!(a.took < TIMEOUT + SLACK, "a slow Redis held the call {:?}", a.took);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_is_bounded_and_drops_are_counted() {
    let mut redis = RedisServer::start();
    let ledger = RedisLedger::builder(redis.url(), vec![limit("a", 1.0, LimitKind::Allow)])
        .timeout(TIMEOUT)
        .max_queued(3)
        .build()
        .unwrap();
    redis.kill();
    let ids = vec!["a".to_owned()];
    for _ in 0..5 {
        ledger.settle(&ids, Hold::default(), 0.1);
    }
    let h = ledger.health();
    assert_eq!((h.queued, h.dropped), (3, 2), "{h:?}");
    assert!(ledger.flush().await.is_err(), "flush says when Redis does not answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_calling_providers_directly_and_the_proxy_share_one_budget() {
    const MAX: f64 = 0.003;
    let redis = RedisServer::start();
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let limits = vec![limit("shared", MAX, LimitKind::Block)];
    let proxy = replica(&redis.url(), &mock, limits.clone(), OnLedgerError::Closed).await;
    let direct = Arc::new(
        RedisLedger::builder(redis.url(), limits)
            .timeout(TIMEOUT)
            .build()
            .unwrap(),
    );
    let client = Client::builder()
        .base_url(mock.base_url())
        .meter(
            llm_meter::Meter::builder()
                .ledger(direct.clone())
                .enforce_limits(true)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let a = Annotations::builder().limit_ids(["shared"]).build().unwrap();
    let http = reqwest::Client::new();
    let (mut costs, mut through_proxy, mut direct_calls) = (Vec::new(), 0, 0);
    let mut refused_by = None;
    for i in 0..100 {
        if i % 2 == 0 {
            match client.chat(&body(), &a).await {
                Ok(r) => {
                    costs.push(r.record().cost.unwrap().total);
                    direct_calls += 1;
                }
                Err(CallError::LimitReached { .. }) => {
                    refused_by = Some("client");
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        } else {
            let r = call(&http, &proxy.base, "shared").await;
            if r.status == 403 {
                refused_by = Some("proxy");
                break;
            }
            assert_eq!(r.status, 200);
            costs.push(cost(&r));
            through_proxy += 1;
        }
    }
    assert!(refused_by.is_some(), "the shared budget ran out");
    assert!(
        direct_calls >= 2 && through_proxy >= 2,
        "{direct_calls} direct, {through_proxy} proxied"
    );
    direct.flush().await.unwrap();
    proxy.ledger.flush().await.unwrap();
    let want: i64 = costs.iter().map(|c| micros(*c)).sum();
    assert_eq!(
        redis.int("llm-meter:spend:shared"),
        want,
        "both doors' spend on one limit"
    );
    assert!(want as f64 / 1e6 >= MAX);
    // Now both refuse.
    assert!(matches!(
        client.chat(&body(), &a).await,
        Err(CallError::LimitReached { .. })
    ));
    assert_eq!(call(&http, &proxy.base, "shared").await.status, 403);
    assert_eq!(report(&direct), report(&proxy.ledger), "both see the same budget");
    println!(
        "shared budget: {direct_calls} direct + {through_proxy} proxied calls, spend {:.6} of {MAX}, refused first by the {}",
        want as f64 / 1e6,
        refused_by.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_round_trips_stay_far_below_the_default_timeout() {
    let redis = RedisServer::start();
    let ledger = RedisLedger::builder(
        redis.url(),
        vec![limit("b", 1e6, LimitKind::Block), limit("a", 1e6, LimitKind::Allow)],
    )
    .build()
    .unwrap();
    let ids = vec!["b".to_owned(), "a".to_owned()];
    let warm = ledger.admit(&ids, 0.001).await.unwrap(); // connect and load the script
    ledger.settle(&ids, warm.hold, 0.0);
    let mut took = Vec::new();
    for _ in 0..1000 {
        let started = Instant::now();
        let admission = ledger.admit(&ids, 0.001).await.unwrap();
        took.push(started.elapsed());
        ledger.settle(&ids, admission.hold, 0.0005);
    }
    let started = Instant::now();
    ledger.flush().await.unwrap();
    let flush = started.elapsed();
    took.sort();
    let (p50, p99) = (took[took.len() / 2], took[took.len() * 99 / 100]);
    println!("admit on loopback Redis: p50 {p50:?}, p99 {p99:?}; flush of 1000 settlements {flush:?}");
    assert!(
        p99 < Duration::from_millis(50),
        "p99 {p99:?} (the default timeout is 250 ms)"
    );
    let spend = ledger.statuses().into_iter().find(|s| s.id == "a").unwrap().spend;
    assert!((spend - 0.5).abs() < 1e-9, "1000 × 500 µUSD, {spend}");
    assert_eq!(redis.int("llm-meter:reserved:b"), 0);
}

#[tokio::test]
async fn the_compose_stacks_proxy_config_puts_its_replicas_on_redis() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/llm-meter-proxy.toml");
    let config = llm_meter_proxy::config::Config::from_file(&path).unwrap();
    assert_eq!(config.ledger.redis.as_deref(), Some("redis://redis:6379/0"));
    assert_eq!(config.ledger.on_redis_error, OnLedgerError::Closed);
    match config.shared_ledger().unwrap() {
        llm_meter_proxy::config::ConfiguredLedger::Redis(r) => assert_eq!(r.url(), "redis://redis:6379/0"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_password_from_the_environment_reaches_redis_and_is_never_shown() {
    let redis = RedisServer::start();
    assert_eq!(
        redis.command(&["CONFIG", "SET", "requirepass", "hunter2-hunter2"]),
        "OK"
    );
    let limits = vec![limit("b", 1.0, LimitKind::Block)];
    let ids = vec!["b".to_owned()];
    let without = RedisLedger::builder(redis.url(), limits.clone())
        .timeout(TIMEOUT)
        .build()
        .unwrap();
    let e = without.admit(&ids, 0.0).await.unwrap_err().to_string();
    assert!(e.contains("redis"), "{e}");
    let with = RedisLedger::builder(redis.url(), limits.clone())
        .password("hunter2-hunter2")
        .timeout(TIMEOUT)
        .build()
        .unwrap();
    assert!(with.admit(&ids, 0.0).await.unwrap().blocked.is_empty());
    let in_url = RedisLedger::builder(format!("redis://:hunter2-hunter2@127.0.0.1:{}/0", redis.port), limits)
        .timeout(TIMEOUT)
        .build()
        .unwrap();
    assert!(in_url.admit(&ids, 0.0).await.unwrap().blocked.is_empty());
    for shown in [format!("{in_url:?}"), in_url.url().to_owned(), format!("{with:?}")] {
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
