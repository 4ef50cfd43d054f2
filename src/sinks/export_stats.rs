//! Counts of spans through the export pipeline, whichever route they take (the SDK's batch
//! processor, or the queue of spans written straight from records).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts of spans through the export pipeline.
#[derive(Debug, Default)]
pub struct ExportStats {
    ended: AtomicU64,
    exported: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

impl ExportStats {
    /// Spans that ended and were handed to the batch queue.
    pub fn ended(&self) -> u64 {
        self.ended.load(Ordering::Relaxed)
    }
    /// Spans the receiver accepted.
    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }
    /// Spans in exports that failed (receiver down, refusing or too slow).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    /// Spans dropped before export: the queue was full, or the pipeline was shut down.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
    /// Spans ended and not yet exported, failed or dropped: in the queue or in an export under
    /// way (0 once the pipeline is flushed; what is left after a shutdown that timed out is lost).
    pub fn queued(&self) -> u64 {
        self.ended()
            .saturating_sub(self.exported() + self.failed() + self.dropped())
    }

    /// One more sampled span ended.
    #[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
    pub(crate) fn span_ended(&self) {
        self.ended.fetch_add(1, Ordering::Relaxed);
    }

    /// One more sampled span dropped before export.
    #[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
    pub(crate) fn span_dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` spans sent in one export, which the receiver accepted (`ok`) or not.
    #[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
    pub(crate) fn spans_sent(&self, n: u64, ok: bool) {
        let counter = if ok { &self.exported } else { &self.failed };
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counter's outcomes, each only ever growing (spans queued are not one of them).
    pub(crate) fn outcomes(&self) -> [(&'static str, u64); 3] {
        [
            ("exported", self.exported()),
            ("failed", self.failed()),
            ("dropped", self.dropped()),
        ]
    }
}
