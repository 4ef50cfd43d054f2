//! A meter wired to every sink a call reaches (Prometheus metrics, a reserving block limit on a
//! memory ledger, a hook that keeps the records), and the check that a call was finished once:
//! one record, counted once, its reservation released, nothing left in flight.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llm_meter::{
    names, AdmissionMode, Annotations, CallRecord, ErrorType, LimitConfig, LimitKind, MemoryLedger, Meter, Telemetry,
};

/// The block limit every call names.
pub const LIMIT: &str = "daily";

pub type Records = Arc<Mutex<Vec<CallRecord>>>;

/// A meter and what it feeds.
pub struct Metered {
    pub meter: Meter,
    pub telemetry: Telemetry,
    pub ledger: Arc<MemoryLedger>,
    pub records: Records,
}

/// A meter with metrics, a hook, and the `daily` block limit (10 USD) on a memory ledger that
/// reserves each call's worst case at admission.
pub fn metered() -> Metered {
    let telemetry = Telemetry::builder().without_otlp().build().unwrap();
    let ledger = Arc::new(
        MemoryLedger::new(vec![LimitConfig {
            id: LIMIT.into(),
            max: 10.0,
            threshold: None,
            kind: LimitKind::Block,
            reset: None,
            admission: AdmissionMode::Reserve,
        }])
        .unwrap(),
    );
    let records: Records = Arc::default();
    let sink = records.clone();
    let meter = telemetry
        .meter_builder()
        .ledger(ledger.clone())
        .enforce_limits(true)
        .hook(move |r: &CallRecord| sink.lock().unwrap().push(r.clone()))
        .build()
        .unwrap();
    Metered {
        meter,
        telemetry,
        ledger,
        records,
    }
}

/// Annotations naming the limit.
pub fn limited() -> Annotations {
    Annotations::builder().limit_ids([LIMIT]).build().unwrap()
}

/// The value of each sample of `name` in the Prometheus text, with its labels.
pub fn samples(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let labels = match series.split_once('{') {
                Some((n, labels)) if n == name => labels.trim_end_matches('}'),
                None if series == name => "",
                _ => return None,
            };
            Some((labels.to_owned(), value.parse().ok()?))
        })
        .collect()
}

impl Metered {
    /// The Prometheus exposition of the metrics.
    pub fn exposition(&self) -> String {
        llm_meter::prometheus::encode(self.telemetry.exposition().unwrap()).unwrap()
    }

    /// `llm_meter.calls.in_flight`, once a call has started.
    pub fn in_flight(&self) -> Option<f64> {
        let name = names::METRIC_CALLS_IN_FLIGHT.replace('.', "_");
        samples(&self.exposition(), &name).first().map(|(_, v)| *v)
    }

    /// Waits (at most `within`) for a first record.
    pub async fn wait_for_record(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.records.lock().unwrap().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (bounded) for the call's record and `quiet` more for a second one that must not
    /// come; checks its `error.type`, that the metrics counted the call once under it, that the
    /// ledger released the reservation and kept the call's cost, and that nothing is in flight.
    /// Returns the record.
    pub async fn assert_finished_once(&self, error: Option<ErrorType>, quiet: Duration) -> CallRecord {
        self.wait_for_record(Duration::from_secs(5)).await;
        tokio::time::sleep(quiet).await;
        let records = self.records.lock().unwrap().clone();
        assert_eq!(records.len(), 1, "one record: {records:#?}");
        let record = records.into_iter().next().unwrap();
        assert_eq!(
            record.error, error,
            "error.type of the record (status {:?}, usage {:?})",
            record.status, record.usage
        );

        let text = self.exposition();
        let name = format!("{}_seconds_count", names::METRIC_OPERATION_DURATION.replace('.', "_"));
        let counted: Vec<(String, f64)> = samples(&text, &name).into_iter().filter(|(_, v)| *v > 0.0).collect();
        let label = error.map(|e| format!("error_type=\"{}\"", e.as_str()));
        assert!(
            counted.len() == 1
                && counted[0].1 == 1.0
                && label.as_ref().is_none_or(|l| counted[0].0.contains(l.as_str()))
                && (label.is_some() || !counted[0].0.contains("error_type=")),
            "the call counted once, under {label:?}: {counted:?}"
        );
        let in_flight = samples(&text, &names::METRIC_CALLS_IN_FLIGHT.replace('.', "_"));
        assert!(
            !in_flight.is_empty() && in_flight.iter().all(|(_, v)| *v == 0.0),
            "nothing in flight: {in_flight:?}"
        );

        assert!(
            self.meter.worst_case_cost(&record.request, 100) > 0.0,
            "the call reserved something to release"
        );
        assert!(
            record.limits.iter().any(|(id, _)| id == LIMIT),
            "the call named the limit: {:?}",
            record.limits
        );
        let status = self.ledger.statuses().into_iter().find(|s| s.id == LIMIT).unwrap();
        let cost = record.cost.map_or(0.0, |c| c.total);
        assert_eq!(
            (status.reserved, status.spend),
            (0.0, cost),
            "the reservation is released and the cost kept"
        );
        record
    }
}
