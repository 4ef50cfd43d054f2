//! Sinks that turn a [`CallRecord`](crate::CallRecord) into telemetry, and the exporters that
//! ship it: the `tracing` span ([`span`]), metric instruments ([`metrics`]), the Prometheus
//! `/metrics` endpoint (`prometheus`, feature `prometheus`) the OTLP/provider set-up ([`export`]) and the
//! OTLP/HTTP span exporter (`otlp_http`, feature `otlp-http`), with the queue of spans written
//! straight from records (`otlp_spans`).

mod attributes;
#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
mod batching;
pub mod export;
mod export_stats;
pub mod metrics;
#[cfg(feature = "otlp-http")]
mod otlp_http;
#[cfg(feature = "otlp-http")]
pub(crate) mod otlp_spans;
#[cfg(feature = "prometheus")]
pub mod prometheus;
pub mod span;
