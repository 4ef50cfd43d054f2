#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod annotations;
pub mod client;
pub mod limits;
pub mod meter;
#[cfg(feature = "async-openai")]
pub mod openai_layer;
pub mod pricing;
pub mod provider;
pub mod record;
pub mod semconv;
pub mod stream;
pub mod telemetry;
pub mod xproxy;

pub use annotations::{AnnotationError, Annotations, AnnotationsBuilder};
pub use client::{ChatResponse, Client, ClientBuilder, Error};
pub use meter::{ChatStream, Meter, MeterBuilder, StreamUsage};
pub use provider::{ChatCompletion, FinishReason, ProviderMeta, RateLimit, ResponseFacts, Usage};
pub use record::{CallHook, CallRecord, ErrorType, RequestFacts, Timings};

/// The OpenTelemetry API this crate is built on (one pinned version family).
pub use opentelemetry;
/// The OpenTelemetry SDK this crate is built on.
pub use opentelemetry_sdk;
/// The tracing-opentelemetry bridge this crate is built on.
pub use tracing_opentelemetry;
