//! Metric instruments: names, units, buckets, labels and values, through the SDK's in-memory
//! exporter; label caps under 10,000 distinct users.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use llm_meter::names::*;
use llm_meter::opentelemetry::metrics::MeterProvider as _;
use llm_meter::opentelemetry::{KeyValue, Value};
use llm_meter::opentelemetry_sdk::metrics::data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics};
use llm_meter::opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use llm_meter::RequestFacts;
use llm_meter::Usage;
use llm_meter::{Annotations, CallRecord, Client, ErrorType, Meter};
use llm_meter::{LabelPolicy, Metrics};
use llm_meter::{DURATION_BUCKETS, TOKEN_BUCKETS};
use llm_meter_mock::{MockConfig, MockServer};
use serde_json::json;

struct Harness {
    provider: SdkMeterProvider,
    exporter: InMemoryMetricExporter,
    metrics: Metrics,
}

fn harness(policy: LabelPolicy) -> Harness {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let metrics = Metrics::new(&provider.meter("llm-meter"), policy);
    Harness {
        provider,
        exporter,
        metrics,
    }
}

impl Harness {
    fn collect(&self) -> ResourceMetrics {
        self.provider.force_flush().unwrap();
        self.exporter.get_finished_metrics().unwrap().pop().expect("an export")
    }
}

fn find<'a>(rm: &'a ResourceMetrics, name: &str) -> &'a Metric {
    rm.scope_metrics()
        .flat_map(|s| s.metrics())
        .find(|m| m.name() == name)
        .unwrap_or_else(|| panic!("no metric {name}"))
}

fn label<'a>(attrs: impl Iterator<Item = &'a KeyValue>, key: &str) -> Option<String> {
    attrs
        .into_iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn sum_u64(m: &Metric) -> u64 {
    match m.data() {
        AggregatedMetrics::U64(MetricData::Sum(s)) => s.data_points().map(|p| p.value()).sum(),
        other => panic!("{} is not a u64 sum: {other:?}", m.name()),
    }
}

fn record(user: &str, input: u64) -> CallRecord {
    let annotations = Annotations::builder()
        .use_case_name("support")
        .user_id(user)
        .build()
        .unwrap();
    let mut request = RequestFacts::default();
    request.model = "gpt-4o".into();
    let mut r = CallRecord::new(annotations, request, SystemTime::now());
    r.id = llm_meter::CallId(7);
    r.server_address = Arc::from("api.openai.com");
    r.server_port = Some(443);
    r.status = Some(200);
    r.response.model = Some("gpt-4o-2024-08-06".into());
    let mut usage = Usage::default();
    usage.input_tokens = input;
    usage.output_tokens = 5;
    r.usage = Some(usage);
    r.timings.duration = Duration::from_millis(250);
    r
}

#[tokio::test]
async fn calls_through_the_client_record_every_instrument_with_exact_names_units_and_buckets() {
    let h = harness(LabelPolicy::default());
    let mock = MockServer::start(MockConfig {
        cached_fraction: 0.5,
        reasoning_tokens: 7,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let meter = Meter::builder().metrics(h.metrics.clone()).build().unwrap();
    let client = Client::builder()
        .base_url(mock.base_url())
        .meter(meter)
        .build()
        .unwrap();
    let a = Annotations::builder()
        .use_case_name("triage")
        .user_id("u-1")
        .build()
        .unwrap();
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi there, friend"}]});
    let r1 = client.chat(&body, &a).await.unwrap().record().clone();
    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let mut s = client.chat_stream(&stream_body, &a).await.unwrap();
    while s.next().await.is_some() {}
    let r2 = s.record().unwrap().clone();
    let failing = Client::builder()
        .base_url(mock.base_url())
        .meter(Meter::builder().metrics(h.metrics.clone()).build().unwrap())
        .default_header("x-mock-error".parse().unwrap(), "429".parse().unwrap())
        .build()
        .unwrap();
    failing.chat(&body, &a).await.unwrap();
    let rm = h.collect();

    let (u1, u2) = (r1.usage.unwrap(), r2.usage.unwrap());
    let duration = find(&rm, METRIC_OPERATION_DURATION);
    assert_eq!(duration.unit(), "s");
    let AggregatedMetrics::F64(MetricData::Histogram(hist)) = duration.data() else {
        panic!()
    };
    let points: Vec<_> = hist.data_points().collect();
    assert_eq!(points.len(), 2, "one series for successes, one for error.type=429");
    for p in &points {
        assert_eq!(p.bounds().collect::<Vec<_>>(), DURATION_BUCKETS);
        assert_eq!(label(p.attributes(), GEN_AI_OPERATION_NAME).as_deref(), Some("chat"));
        assert_eq!(
            label(p.attributes(), GEN_AI_REQUEST_MODEL).as_deref(),
            Some("gpt-4o-mini")
        );
        assert_eq!(label(p.attributes(), USE_CASE_NAME).as_deref(), Some("triage"));
        assert_eq!(label(p.attributes(), USER_ID), None);
        match label(p.attributes(), ERROR_TYPE) {
            Some(e) => assert_eq!((e.as_str(), p.count()), ("429", 1)),
            None => {
                assert_eq!(p.count(), 2);
                assert_eq!(
                    label(p.attributes(), GEN_AI_RESPONSE_MODEL).as_deref(),
                    Some("gpt-4o-mini-2024-07-18")
                );
            }
        }
    }

    let tokens = find(&rm, METRIC_TOKEN_USAGE);
    assert_eq!(tokens.unit(), "{token}");
    let AggregatedMetrics::U64(MetricData::Histogram(hist)) = tokens.data() else {
        panic!()
    };
    for p in hist.data_points() {
        assert_eq!(p.bounds().collect::<Vec<_>>(), TOKEN_BUCKETS);
        let want = match label(p.attributes(), GEN_AI_TOKEN_TYPE).as_deref() {
            Some("input") => u1.input_tokens + u2.input_tokens,
            Some("output") => u1.output_tokens + u2.output_tokens,
            other => panic!("token type {other:?}"),
        };
        assert_eq!((p.count(), p.sum()), (2, want));
    }

    assert_eq!(
        sum_u64(find(&rm, METRIC_INPUT_TOKENS)),
        u1.input_tokens + u2.input_tokens
    );
    assert_eq!(
        sum_u64(find(&rm, METRIC_OUTPUT_TOKENS)),
        u1.output_tokens + u2.output_tokens
    );
    assert_eq!(sum_u64(find(&rm, METRIC_REASONING_TOKENS)), 14);
    assert_eq!(
        sum_u64(find(&rm, METRIC_CACHED_INPUT_TOKENS)),
        u1.cached_input_tokens.unwrap() + u2.cached_input_tokens.unwrap()
    );

    for name in [METRIC_TIME_TO_FIRST_CHUNK, METRIC_TIME_PER_OUTPUT_CHUNK] {
        let m = find(&rm, name);
        assert_eq!(m.unit(), "s");
        let AggregatedMetrics::F64(MetricData::Histogram(hist)) = m.data() else {
            panic!()
        };
        assert_eq!(
            hist.data_points().map(|p| p.count()).sum::<u64>(),
            1,
            "{name}: streams only"
        );
    }
    let processing = find(&rm, METRIC_PROVIDER_PROCESSING);
    assert_eq!(processing.unit(), "s");

    let remaining = find(&rm, METRIC_RATELIMIT_REMAINING);
    let AggregatedMetrics::U64(MetricData::Gauge(g)) = remaining.data() else {
        panic!()
    };
    let kinds: Vec<_> = g
        .data_points()
        .map(|p| label(p.attributes(), RATELIMIT_KIND).unwrap())
        .collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    for p in g.data_points() {
        assert_eq!(label(p.attributes(), SERVER_ADDRESS).as_deref(), Some("127.0.0.1"));
        assert_eq!(
            label(p.attributes(), GEN_AI_REQUEST_MODEL).as_deref(),
            Some("gpt-4o-mini")
        );
    }
    let reset = find(&rm, METRIC_RATELIMIT_RESET);
    assert_eq!(reset.unit(), "s");
}

#[test]
fn absent_rate_limit_headers_report_nothing() {
    let h = harness(LabelPolicy::default());
    h.metrics.record(&record("u", 3));
    let rm = h.collect();
    let names: Vec<_> = rm
        .scope_metrics()
        .flat_map(|s| s.metrics())
        .map(|m| m.name().to_owned())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with("llm_meter.ratelimit")), "{names:?}");
    assert!(!names.iter().any(|n| n == METRIC_TIME_TO_FIRST_CHUNK));
}

#[test]
fn ten_thousand_users_stay_bounded_when_user_id_is_opted_in() {
    let h = harness(LabelPolicy {
        user_id: Some(100),
        ..LabelPolicy::default()
    });
    let mut total = 0;
    for i in 0..10_000 {
        h.metrics.record(&record(&format!("user-{i}"), i % 50 + 1));
        total += i % 50 + 1;
    }
    let rm = h.collect();
    let input = find(&rm, METRIC_INPUT_TOKENS);
    let AggregatedMetrics::U64(MetricData::Sum(sum)) = input.data() else {
        panic!()
    };
    let series: Vec<_> = sum.data_points().collect();
    assert_eq!(series.len(), 101, "100 users plus 'other'");
    let other = series
        .iter()
        .find(|p| label(p.attributes(), USER_ID).as_deref() == Some("other"))
        .unwrap();
    assert_eq!(other.value(), (100..10_000u64).map(|i| i % 50 + 1).sum::<u64>());
    assert_eq!(
        series.iter().map(|p| p.value()).sum::<u64>(),
        total,
        "nothing lost in the fold"
    );
    let overflow = find(&rm, METRIC_LABEL_OVERFLOW);
    let AggregatedMetrics::U64(MetricData::Sum(sum)) = overflow.data() else {
        panic!()
    };
    let folds: Vec<_> = sum
        .data_points()
        .map(|p| (label(p.attributes(), LABEL_NAME).unwrap(), p.value()))
        .collect();
    assert_eq!(folds, [(USER_ID.to_owned(), 9_900)]);
}

#[test]
fn ten_thousand_users_add_no_series_by_default() {
    let h = harness(LabelPolicy::default());
    for i in 0..10_000 {
        h.metrics.record(&record(&format!("user-{i}"), 1));
    }
    let rm = h.collect();
    let AggregatedMetrics::U64(MetricData::Sum(sum)) = find(&rm, METRIC_INPUT_TOKENS).data() else {
        panic!()
    };
    assert_eq!(sum.data_points().count(), 1);
}

#[test]
fn use_case_and_model_names_from_callers_are_capped_too() {
    let h = harness(LabelPolicy {
        use_cases: 3,
        models: 2,
        ..LabelPolicy::default()
    });
    for i in 0..50 {
        let mut r = record("u", 1);
        r.annotations = Annotations::builder().use_case_name(format!("uc-{i}")).build().unwrap();
        r.request.model = format!("model-{i}");
        r.response.model = None;
        r.error = Some(ErrorType::Status(400));
        h.metrics.record(&r);
    }
    let rm = h.collect();
    let AggregatedMetrics::U64(MetricData::Sum(sum)) = find(&rm, METRIC_INPUT_TOKENS).data() else {
        panic!()
    };
    assert!(sum.data_points().count() <= 4 * 3, "bounded by the caps");
    let values: Vec<Value> = sum
        .data_points()
        .flat_map(|p| {
            p.attributes()
                .filter(|kv| kv.key.as_str() == USE_CASE_NAME)
                .map(|kv| kv.value.clone())
        })
        .collect();
    assert!(values.contains(&Value::from("other")));
}

#[test]
fn label_sets_past_the_bound_cache_are_still_recorded_exactly() {
    let h = harness(LabelPolicy {
        user_id: Some(10_000),
        ..LabelPolicy::default()
    });
    let n = llm_meter::MAX_BOUND_SERIES as u64 + 500;
    for i in 0..n {
        h.metrics.record(&record(&format!("user-{i}"), 2));
    }
    let rm = h.collect();
    // The SDK's own cardinality limit (2000 here) folds the excess into its overflow series;
    // what matters is that nothing is lost on either path.
    assert_eq!(sum_u64(find(&rm, METRIC_INPUT_TOKENS)), 2 * n);
}

/// A thread remembers the label set it recorded last and reuses it for a call with the same
/// label inputs. That must stay invisible: each `Metrics` counts its own calls, a new label
/// policy applies to the very next call, and a call with other inputs gets its own series.
#[test]
fn a_repeated_label_set_is_reused_only_where_it_holds() {
    let a = harness(LabelPolicy::default());
    let b = harness(LabelPolicy::default());
    for _ in 0..3 {
        a.metrics.record(&record("u-1", 10));
    }
    b.metrics.record(&record("u-1", 10));
    a.metrics.record(&record("u-1", 10));
    let input = |h: &Harness| sum_u64(find(&h.collect(), METRIC_INPUT_TOKENS));
    assert_eq!(input(&a), 40, "four calls on a");
    assert_eq!(input(&b), 10, "one call on b, none of a's");

    let c = harness(LabelPolicy::default());
    c.metrics.record(&record("u-1", 10));
    let mut other_model = record("u-1", 1);
    other_model.request.model = "gpt-4o-mini".into();
    c.metrics.record(&other_model);
    let mut failed = record("u-1", 100);
    failed.error = Some(ErrorType::Status(500));
    c.metrics.record(&failed);
    c.metrics.set_label_policy(&LabelPolicy {
        user_id: Some(10),
        ..LabelPolicy::default()
    });
    c.metrics.record(&record("u-1", 1000));
    let rm = c.collect();
    let AggregatedMetrics::U64(MetricData::Sum(sum)) = find(&rm, METRIC_INPUT_TOKENS).data() else {
        panic!("input tokens is a u64 sum")
    };
    let mut seen: Vec<(String, Option<String>, Option<String>, u64)> = sum
        .data_points()
        .map(|p| {
            (
                label(p.attributes(), GEN_AI_REQUEST_MODEL).unwrap(),
                label(p.attributes(), ERROR_TYPE),
                label(p.attributes(), USER_ID),
                p.value(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("gpt-4o".into(), None, None, 10),
            ("gpt-4o".into(), None, Some("u-1".into()), 1000),
            ("gpt-4o".into(), Some("500".into()), None, 100),
            ("gpt-4o-mini".into(), None, None, 1),
        ]
    );
}

/// The SDK keeps a label set bound in an order other than by key twice (as given and sorted),
/// and every collection walks and dedupes both: labels go to it sorted.
#[test]
fn labels_reach_the_sdk_sorted_by_key() {
    let h = harness(LabelPolicy {
        user_id: Some(10),
        ..LabelPolicy::default()
    });
    let mut r = record("u-1", 3);
    r.error = Some(ErrorType::Timeout);
    let labels = h.metrics.labels(&r);
    let keys: Vec<&str> = labels.iter().map(|kv| kv.key.as_str()).collect();
    assert!(keys.contains(&ERROR_TYPE) && keys.contains(&USER_ID), "{keys:?}");
    assert!(keys.is_sorted(), "{keys:?}");
    h.metrics.record(&r);
    h.metrics.record(&record("u-2", 4));
    let rm = h.collect();
    for name in [METRIC_OPERATION_DURATION, METRIC_TOKEN_USAGE, METRIC_INPUT_TOKENS] {
        let m = find(&rm, name);
        let points: Vec<Vec<String>> = match m.data() {
            AggregatedMetrics::F64(MetricData::Histogram(h)) => h
                .data_points()
                .map(|p| p.attributes().map(|kv| kv.key.to_string()).collect())
                .collect(),
            AggregatedMetrics::U64(MetricData::Histogram(h)) => h
                .data_points()
                .map(|p| p.attributes().map(|kv| kv.key.to_string()).collect())
                .collect(),
            AggregatedMetrics::U64(MetricData::Sum(s)) => s
                .data_points()
                .map(|p| p.attributes().map(|kv| kv.key.to_string()).collect())
                .collect(),
            other => panic!("{name}: {other:?}"),
        };
        assert!(points.len() >= 2, "{name}: {points:?}");
        for keys in points {
            assert!(keys.is_sorted(), "{name}: {keys:?}");
        }
    }
}
