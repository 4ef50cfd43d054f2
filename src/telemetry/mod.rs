//! Sinks that turn a [`CallRecord`](crate::CallRecord) into telemetry: the `tracing` span (exported
//! by tracing-opentelemetry) today; metrics and exporters build on the same record.

pub mod span;
