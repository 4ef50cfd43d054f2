//! Counts of spans through the export pipeline, whichever route they take (the SDK's batch
//! processor, or the queue of spans written straight from records).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts of spans through the export pipeline.
#[derive(Debug, Default)]
pub struct ExportStats {
    ended: AtomicU64,
    exported: AtomicU64,
    failed: AtomicU64,
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
    /// Spans dropped before export (queue full, or after shutdown), as far as known: those
    /// ended and neither exported nor failed. Exact once the pipeline is flushed; before, it
    /// also counts spans still queued.
    pub fn dropped_or_queued(&self) -> u64 {
        self.ended().saturating_sub(self.exported() + self.failed())
    }

    /// One more sampled span ended.
    #[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
    pub(crate) fn span_ended(&self) {
        self.ended.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` spans sent in one export, which the receiver accepted (`ok`) or not.
    #[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
    pub(crate) fn spans_sent(&self, n: u64, ok: bool) {
        let counter = if ok { &self.exported } else { &self.failed };
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn outcomes(&self) -> [(&'static str, u64); 3] {
        [
            ("exported", self.exported()),
            ("failed", self.failed()),
            ("dropped_or_queued", self.dropped_or_queued()),
        ]
    }
}
