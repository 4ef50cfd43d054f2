//! How spans are batched for export: the SDK's batch processor's settings, read as the SDK
//! reads them, shared by both routes (the SDK's processor and the queue of spans written
//! straight from records).

use std::time::Duration;

/// How a span queue batches, as the SDK's batch processor's settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Batching {
    pub(crate) max_queue: usize,
    pub(crate) max_batch: usize,
    /// Used by the direct route; the SDK's processor reads the delay itself.
    #[cfg_attr(not(feature = "otlp-http"), allow(dead_code))]
    pub(crate) delay: Duration,
}

impl Batching {
    /// A queue of `max_queue` spans; the batch size and delay from `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`
    /// and `OTEL_BSP_SCHEDULE_DELAY` (milliseconds), else 512 and 5 s, as the SDK reads them.
    pub(crate) fn from_env(max_queue: usize) -> Self {
        fn number(name: &str) -> Option<u64> {
            std::env::var(name).ok()?.parse().ok()
        }
        let max_batch = number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE").map_or(512, |n| n as usize);
        Batching {
            max_queue,
            max_batch: max_batch.clamp(1, max_queue.max(1)),
            delay: Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY").unwrap_or(5_000)),
        }
    }
}
