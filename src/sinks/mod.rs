//! Sinks that turn a [`CallRecord`](crate::CallRecord) into telemetry, and the exporters that
//! ship it: the `tracing` span ([`span`]), metric instruments ([`metrics`]), the Prometheus
//! `/metrics` endpoint (`prometheus`, feature `prometheus`) the OTLP/provider set-up ([`export`]) and the
//! OTLP/HTTP span exporter (`otlp_http`, feature `otlp-http`).

pub mod export;
pub mod metrics;
#[cfg(feature = "otlp-http")]
mod otlp_http;
#[cfg(feature = "prometheus")]
pub mod prometheus;
pub mod span;
