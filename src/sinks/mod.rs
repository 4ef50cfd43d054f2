//! Sinks that turn a [`CallRecord`](crate::CallRecord) into telemetry, and the exporters that
//! ship it: the `tracing` span ([`span`]), metric instruments ([`metrics`]), the Prometheus
//! `/metrics` endpoint (`prometheus`, feature `prometheus`) and the OTLP/provider set-up ([`export`]).

pub mod export;
pub mod metrics;
#[cfg(feature = "prometheus")]
pub mod prometheus;
pub mod span;
