//! Exporters, configured once at start-up by the application: one `SdkMeterProvider` feeding
//! both the Prometheus exposition (`/metrics`) and OTLP, one `SdkTracerProvider` exporting spans
//! over OTLP, and a guard that flushes and shuts both down.
//!
//! Nothing is global until you say so: [`Telemetry::builder`] builds providers and instruments
//! and hands them to you; [`Telemetry::install`] (or the one-call [`init`]) also installs the
//! `tracing` subscriber as the global default.
//!
//! OTLP follows the standard variables: it is on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or a
//! per-signal `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT`) is set, the transport comes from
//! `OTEL_EXPORTER_OTLP[_{TRACES,METRICS}]_PROTOCOL` (`grpc` or `http/protobuf`, the default),
//! headers from `OTEL_EXPORTER_OTLP[_…]_HEADERS`, timeouts from `OTEL_EXPORTER_OTLP[_…]_TIMEOUT`,
//! and the resource from `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`.
//! `OTEL_TRACES_EXPORTER=none` / `OTEL_METRICS_EXPORTER=none` turn a signal off. The builder
//! overrides any of it.

use std::collections::HashMap;
#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
use opentelemetry_sdk::error::OTelSdkResult;
#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
use opentelemetry_sdk::metrics::PeriodicReader;
use opentelemetry_sdk::metrics::{Instrument, SdkMeterProvider, Stream};
use opentelemetry_sdk::trace::SdkTracerProvider;
#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Whether this build has any OTLP transport (features `otlp-http`, `otlp-grpc`).
const OTLP_BUILT: bool = cfg!(any(feature = "otlp-http", feature = "otlp-grpc"));

use crate::names;
#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
use crate::sinks::batching::Batching;
pub use crate::sinks::export_stats::ExportStats;
use crate::sinks::metrics::{LabelPolicy, Metrics};
#[cfg(feature = "otlp-http")]
use crate::sinks::otlp_spans::OtlpSpans;

/// Instrumentation scope of llm-meter's spans and metrics.
pub const SCOPE: &str = "llm-meter";

/// The instrumentation scope, with the crate's version.
fn scope() -> opentelemetry::InstrumentationScope {
    opentelemetry::InstrumentationScope::builder(SCOPE)
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// How log lines are written (feature `log`): text for people, or one JSON object per line for
/// a log pipeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `tracing-subscriber`'s default text lines.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`, `spans`).
    Json,
}

/// OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (default port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (default port 4318).
    HttpProtobuf,
}

impl Protocol {
    /// Parses `grpc` or `http/protobuf`.
    pub fn parse(s: &str) -> Result<Self, InitError> {
        match s.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            other => Err(InitError(format!(
                "unsupported OTLP protocol {other:?}: use \"grpc\" or \"http/protobuf\" (http/json is not built in)"
            ))),
        }
    }
}

/// A telemetry set-up that could not be built; says what to fix.
#[derive(Debug, thiserror::Error)]
#[error("telemetry set-up failed: {0}")]
pub struct InitError(pub String);

/// Where and how OTLP goes, for one signal.
#[derive(Clone, Debug)]
#[cfg_attr(not(any(feature = "otlp-http", feature = "otlp-grpc")), allow(dead_code))]
struct Otlp {
    protocol: Protocol,
    /// Base endpoint (`http://host:4318`); the HTTP signal path is appended. `None`: the crate's
    /// own env handling and defaults.
    endpoint: Option<String>,
    headers: HashMap<String, String>,
}

/// Builder for [`Telemetry`].
#[derive(Debug)]
pub struct TelemetryBuilder {
    service_name: Option<String>,
    otlp_traces: Option<Otlp>,
    otlp_metrics: Option<Otlp>,
    prometheus: bool,
    labels: LabelPolicy,
    cardinality_limit: usize,
    span_queue: usize,
    metric_interval: Duration,
    /// `None`: `OTEL_EXPORTER_OTLP[_…]_TIMEOUT`, else 10 s.
    export_timeout: Option<Duration>,
    env_error: Option<InitError>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The OTLP settings the environment asks for, for `signal` (`TRACES` or `METRICS`).
fn otlp_from_env(signal: &str) -> Result<Option<Otlp>, InitError> {
    let exporter_var = format!("OTEL_{signal}_EXPORTER");
    if env(&exporter_var).is_some_and(|v| v == "none") {
        return Ok(None);
    }
    let signal_endpoint = env(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"));
    if signal_endpoint.is_none() && env("OTEL_EXPORTER_OTLP_ENDPOINT").is_none() {
        return Ok(None);
    }
    let protocol =
        match env(&format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")).or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL")) {
            Some(p) => Protocol::parse(&p)?,
            None => Protocol::HttpProtobuf,
        };
    // Endpoints and headers are read with the spec's rules (signal paths appended to the
    // generic HTTP endpoint only) by opentelemetry-otlp, or for HTTP spans by
    // `http_span_exporter`.
    Ok(Some(Otlp {
        protocol,
        endpoint: None,
        headers: HashMap::new(),
    }))
}

impl Default for TelemetryBuilder {
    fn default() -> Self {
        let (traces, metrics) = match (otlp_from_env("TRACES"), otlp_from_env("METRICS")) {
            (Ok(t), Ok(m)) => (t, m),
            (Err(e), _) | (_, Err(e)) => {
                return TelemetryBuilder {
                    env_error: Some(e),
                    ..Self::bare()
                };
            }
        };
        TelemetryBuilder {
            otlp_traces: traces,
            otlp_metrics: metrics,
            ..Self::bare()
        }
    }
}

impl TelemetryBuilder {
    fn bare() -> Self {
        TelemetryBuilder {
            service_name: None,
            otlp_traces: None,
            otlp_metrics: None,
            prometheus: cfg!(feature = "prometheus"),
            labels: LabelPolicy::default(),
            cardinality_limit: 2000,
            span_queue: 2048,
            metric_interval: Duration::from_secs(10),
            export_timeout: None,
            env_error: None,
        }
    }

    /// `service.name` (else `OTEL_SERVICE_NAME`, else the SDK's `unknown_service`).
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }

    /// Exports traces and metrics over OTLP to `endpoint` (a base such as
    /// `http://127.0.0.1:4317` for gRPC or `http://127.0.0.1:4318` for HTTP, where `/v1/traces`
    /// and `/v1/metrics` are appended), whatever the environment says.
    pub fn otlp(mut self, protocol: Protocol, endpoint: impl Into<String>) -> Self {
        let otlp = Otlp {
            protocol,
            endpoint: Some(endpoint.into()),
            headers: HashMap::new(),
        };
        self.otlp_traces = Some(otlp.clone());
        self.otlp_metrics = Some(otlp);
        self.env_error = None;
        self
    }

    /// Adds a header (e.g. an API key of the collector) to OTLP exports set with [`Self::otlp`].
    pub fn otlp_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let (name, value) = (name.into(), value.into());
        for o in [&mut self.otlp_traces, &mut self.otlp_metrics].into_iter().flatten() {
            o.headers.insert(name.clone(), value.clone());
        }
        self
    }

    /// No OTLP, whatever the environment says.
    pub fn without_otlp(mut self) -> Self {
        self.otlp_traces = None;
        self.otlp_metrics = None;
        self.env_error = None;
        self
    }

    /// Serve metrics on `/metrics` (default on with the `prometheus` feature; asking
    /// for it without the feature is an error at [`Self::build`]).
    pub fn prometheus(mut self, on: bool) -> Self {
        self.prometheus = on;
        self
    }

    /// Which labels metrics carry (default [`LabelPolicy::default`]).
    pub fn labels(mut self, policy: LabelPolicy) -> Self {
        self.labels = policy;
        self
    }

    /// The SDK's limit of series per llm-meter metric (default 2000); past it, points go to one
    /// overflow series (`otel.metric.overflow="true"`). Our own label caps keep us well under it
    /// by default; it is the last guard when labels are opted in.
    pub fn cardinality_limit(mut self, limit: usize) -> Self {
        self.cardinality_limit = limit.max(1);
        self
    }

    /// Spans waiting for export at most (default 2048), beside those of an export under way;
    /// past it, spans are dropped and counted (`ExportStats::dropped`).
    pub fn span_queue(mut self, size: usize) -> Self {
        self.span_queue = size.max(1);
        self
    }

    /// OTLP metric export interval (default 10 s).
    pub fn metric_interval(mut self, interval: Duration) -> Self {
        self.metric_interval = interval;
        self
    }

    /// Longest wait for one OTLP export, retries included (default: the
    /// `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_TIMEOUT` or `OTEL_EXPORTER_OTLP_TIMEOUT` variable in
    /// milliseconds, else 10 s).
    pub fn export_timeout(mut self, timeout: Duration) -> Self {
        self.export_timeout = Some(timeout);
        self
    }

    /// Builds the providers, exporters and instruments. Installs nothing global. Must run inside
    /// a Tokio runtime when OTLP/gRPC is on.
    pub fn build(self) -> Result<Telemetry, InitError> {
        if let Some(e) = self.env_error {
            return Err(e);
        }
        if !OTLP_BUILT && (self.otlp_traces.is_some() || self.otlp_metrics.is_some()) {
            return Err(InitError(
                "OTLP export is asked for (builder or OTEL_EXPORTER_OTLP_* variables) but this build has no OTLP \
                 transport: enable llm-meter's `otlp-http` or `otlp-grpc` feature"
                    .into(),
            ));
        }
        let mut resource = Resource::builder();
        if let Some(name) = &self.service_name {
            resource = resource.with_service_name(name.clone());
        }
        let resource = resource.build();
        let stats = Arc::new(ExportStats::default());
        #[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
        let batching = Batching::from_env(self.span_queue);

        #[cfg_attr(not(any(feature = "otlp-http", feature = "otlp-grpc")), allow(unused_mut))]
        let mut tracer = SdkTracerProvider::builder().with_resource(resource.clone());
        if let Some(otlp) = &self.otlp_traces {
            #[cfg(not(any(feature = "otlp-http", feature = "otlp-grpc")))]
            let _ = (otlp, &stats);
            #[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
            let in_queue = Arc::new(AtomicUsize::new(0));
            #[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
            let exporter = CountingExporter {
                inner: span_exporter(otlp, self.export_timeout)?,
                stats: stats.clone(),
                in_queue: in_queue.clone(),
            };
            #[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
            {
                // `span_queue` spans may wait while a batch is sent, as on the direct route; the
                // processor's channel has room for both, so it never drops a span uncounted.
                let room = batching.max_queue + batching.max_batch;
                let batch = BatchConfigBuilder::default()
                    .with_max_queue_size(room)
                    .with_max_export_batch_size(batching.max_batch)
                    .build();
                let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batch).build();
                tracer = tracer.with_span_processor(CountingProcessor {
                    inner: processor,
                    stats: stats.clone(),
                    in_queue,
                    max_queue: room,
                    shut_down: AtomicBool::new(false),
                });
            }
        }
        let tracer_provider = tracer.build();
        #[cfg(feature = "otlp-http")]
        let spans = match &self.otlp_traces {
            Some(otlp) if otlp.protocol == Protocol::HttpProtobuf => {
                let mut exporter = http_span_exporter(otlp, self.export_timeout)?;
                exporter.set_resource(&resource);
                Some(OtlpSpans::start(exporter, scope(), stats.clone(), batching).map_err(InitError)?)
            }
            _ => None,
        };

        let limit = self.cardinality_limit;
        #[cfg_attr(
            not(any(feature = "prometheus", feature = "otlp-http", feature = "otlp-grpc")),
            allow(unused_mut)
        )]
        let mut meters = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_view(move |i: &Instrument| {
                (i.scope().name() == SCOPE)
                    .then(|| Stream::builder().with_cardinality_limit(limit).build().ok())
                    .flatten()
            });
        #[cfg(feature = "prometheus")]
        let exposition = if self.prometheus {
            let (exposition, reader) = crate::sinks::prometheus::Exposition::new();
            meters = meters.with_reader(reader);
            Some(exposition)
        } else {
            None
        };
        #[cfg(not(feature = "prometheus"))]
        if self.prometheus {
            return Err(InitError(
                "Prometheus metrics need llm-meter's `prometheus` feature (or call .prometheus(false))".into(),
            ));
        }
        #[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
        if let Some(otlp) = &self.otlp_metrics {
            let exporter = metric_exporter(otlp, self.export_timeout)?;
            meters = meters.with_reader(
                PeriodicReader::builder(exporter)
                    .with_interval(self.metric_interval)
                    .build(),
            );
        }
        let meter_provider = meters.build();
        let otel_meter = meter_provider.meter_with_scope(scope());
        let metrics = Metrics::new(&otel_meter, self.labels);
        let observed = stats.clone();
        let export_counter = otel_meter
            .u64_observable_counter(names::METRIC_EXPORT_SPANS)
            .with_description("Spans exported, failed to export, or dropped (queue full or shut down).")
            .with_callback(move |o| {
                for (outcome, n) in observed.outcomes() {
                    o.observe(n, &[KeyValue::new(names::EXPORT_OUTCOME, outcome)]);
                }
            })
            .build();
        Ok(Telemetry {
            inner: Arc::new(TelemetryInner {
                tracer_provider,
                #[cfg(feature = "otlp-http")]
                spans,
                meter_provider,
                #[cfg(feature = "prometheus")]
                exposition,
                metrics,
                stats,
                otlp: self.otlp_traces.is_some() || self.otlp_metrics.is_some(),
                spans_exported: self.otlp_traces.is_some() && !sampler_always_off(),
                _export_counter: export_counter,
            }),
        })
    }
}

#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
fn http_endpoint(base: &str, path: &str) -> String {
    format!("{}/{path}", base.trim_end_matches('/'))
}

/// The settings both transports share; the signal's HTTP path is appended to a base endpoint.
/// `OTEL_TRACES_SAMPLER=always_off`: the SDK's sampler records no span.
fn sampler_always_off() -> bool {
    std::env::var("OTEL_TRACES_SAMPLER").is_ok_and(|s| s.trim().eq_ignore_ascii_case("always_off"))
}

#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
fn configure<B: opentelemetry_otlp::WithExportConfig>(
    b: B,
    otlp: &Otlp,
    timeout: Option<Duration>,
    http_path: Option<&str>,
) -> B {
    let b = match timeout {
        Some(timeout) => b.with_timeout(timeout),
        None => b,
    };
    match (&otlp.endpoint, http_path) {
        (Some(e), Some(path)) => b.with_endpoint(http_endpoint(e, path)),
        (Some(e), None) => b.with_endpoint(e.clone()),
        (None, _) => b,
    }
}

#[cfg(feature = "otlp-grpc")]
fn with_tonic_headers<B: opentelemetry_otlp::WithTonicConfig>(b: B, otlp: &Otlp) -> Result<B, InitError> {
    Ok(if otlp.headers.is_empty() {
        b
    } else {
        b.with_metadata(metadata(&otlp.headers)?)
    })
}

/// A transport this build does not have: says which feature brings it.
#[cfg(all(
    any(feature = "otlp-http", feature = "otlp-grpc"),
    not(all(feature = "otlp-http", feature = "otlp-grpc"))
))]
fn missing(protocol: Protocol) -> InitError {
    let feature = match protocol {
        Protocol::Grpc => "otlp-grpc",
        Protocol::HttpProtobuf => "otlp-http",
    };
    InitError(format!("OTLP over {protocol:?} needs llm-meter's `{feature}` feature"))
}

/// The span exporter of the configured transport: over HTTP, our own
/// ([`HttpSpanExporter`](crate::sinks::otlp_http)), which writes the protobuf body straight
/// from the spans; over gRPC, opentelemetry-otlp's.
#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
#[derive(Debug)]
enum TraceExporter {
    #[cfg(feature = "otlp-http")]
    Http(crate::sinks::otlp_http::HttpSpanExporter),
    #[cfg(feature = "otlp-grpc")]
    Grpc(opentelemetry_otlp::SpanExporter),
}

#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
impl SpanExporter for TraceExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        match self {
            #[cfg(feature = "otlp-http")]
            TraceExporter::Http(e) => e.export(batch).await,
            #[cfg(feature = "otlp-grpc")]
            TraceExporter::Grpc(e) => e.export(batch).await,
        }
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        match self {
            #[cfg(feature = "otlp-http")]
            TraceExporter::Http(e) => e.shutdown_with_timeout(timeout),
            #[cfg(feature = "otlp-grpc")]
            TraceExporter::Grpc(e) => e.shutdown_with_timeout(timeout),
        }
    }
    fn force_flush(&self) -> OTelSdkResult {
        match self {
            #[cfg(feature = "otlp-http")]
            TraceExporter::Http(e) => e.force_flush(),
            #[cfg(feature = "otlp-grpc")]
            TraceExporter::Grpc(e) => e.force_flush(),
        }
    }
    fn set_resource(&mut self, resource: &Resource) {
        match self {
            #[cfg(feature = "otlp-http")]
            TraceExporter::Http(e) => e.set_resource(resource),
            #[cfg(feature = "otlp-grpc")]
            TraceExporter::Grpc(e) => e.set_resource(resource),
        }
    }
}

#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
fn span_exporter(otlp: &Otlp, timeout: Option<Duration>) -> Result<TraceExporter, InitError> {
    match otlp.protocol {
        #[cfg(feature = "otlp-grpc")]
        Protocol::Grpc => with_tonic_headers(
            configure(
                opentelemetry_otlp::SpanExporter::builder().with_tonic(),
                otlp,
                timeout,
                None,
            ),
            otlp,
        )?
        .build()
        .map(TraceExporter::Grpc)
        .map_err(|e| InitError(format!("OTLP span exporter: {e}"))),
        #[cfg(feature = "otlp-http")]
        Protocol::HttpProtobuf => http_span_exporter(otlp, timeout).map(TraceExporter::Http),
        #[cfg(not(all(feature = "otlp-http", feature = "otlp-grpc")))]
        other => Err(missing(other)),
    }
}

/// Our OTLP/HTTP span exporter, configured as opentelemetry-otlp configures its own: the
/// builder's endpoint (`/v1/traces` appended), else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as it
/// is, else `OTEL_EXPORTER_OTLP_ENDPOINT` with `/v1/traces` appended, else
/// `http://localhost:4318/v1/traces`; the builder's headers, then those of
/// `OTEL_EXPORTER_OTLP_TRACES_HEADERS` (else `OTEL_EXPORTER_OTLP_HEADERS`); the timeout likewise.
#[cfg(feature = "otlp-http")]
fn http_span_exporter(
    otlp: &Otlp,
    timeout: Option<Duration>,
) -> Result<crate::sinks::otlp_http::HttpSpanExporter, InitError> {
    use crate::sinks::otlp_http::{add_headers_from_env, HttpSpanExporter};
    let endpoint = match (&otlp.endpoint, env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) {
        (Some(base), _) => http_endpoint(base, "v1/traces"),
        (None, Some(full)) => full.trim().to_owned(),
        (None, None) => http_endpoint(
            env("OTEL_EXPORTER_OTLP_ENDPOINT")
                .as_deref()
                .unwrap_or("http://localhost:4318"),
            "v1/traces",
        ),
    };
    let mut headers = header_map(&otlp.headers)?;
    if let Some(value) = env("OTEL_EXPORTER_OTLP_TRACES_HEADERS").or_else(|| env("OTEL_EXPORTER_OTLP_HEADERS")) {
        add_headers_from_env(&value, &mut headers).map_err(InitError)?;
    }
    if let Some(c) = env("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION").or_else(|| env("OTEL_EXPORTER_OTLP_COMPRESSION")) {
        if c.trim() != "none" {
            return Err(InitError(format!(
                "OTLP compression {c:?} is not built in: unset OTEL_EXPORTER_OTLP_COMPRESSION (or set it to \"none\")"
            )));
        }
    }
    let millis = |name: &str| {
        env(name)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_millis)
    };
    let timeout = timeout
        .or_else(|| millis("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"))
        .or_else(|| millis("OTEL_EXPORTER_OTLP_TIMEOUT"))
        .unwrap_or(Duration::from_secs(10));
    HttpSpanExporter::new(endpoint, headers, timeout).map_err(InitError)
}

#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
fn metric_exporter(otlp: &Otlp, timeout: Option<Duration>) -> Result<opentelemetry_otlp::MetricExporter, InitError> {
    use opentelemetry_otlp::MetricExporter;
    let built = match otlp.protocol {
        #[cfg(feature = "otlp-grpc")]
        Protocol::Grpc => with_tonic_headers(
            configure(MetricExporter::builder().with_tonic(), otlp, timeout, None),
            otlp,
        )?
        .build(),
        #[cfg(feature = "otlp-http")]
        Protocol::HttpProtobuf => {
            use opentelemetry_otlp::WithHttpConfig;
            configure(MetricExporter::builder().with_http(), otlp, timeout, Some("v1/metrics"))
                .with_headers(otlp.headers.clone())
                .build()
        }
        #[cfg(not(all(feature = "otlp-http", feature = "otlp-grpc")))]
        other => return Err(missing(other)),
    };
    built.map_err(|e| InitError(format!("OTLP metric exporter: {e}")))
}

#[cfg(feature = "otlp-grpc")]
fn metadata(
    headers: &HashMap<String, String>,
) -> Result<opentelemetry_otlp::tonic_types::metadata::MetadataMap, InitError> {
    Ok(opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(
        header_map(headers)?,
    ))
}

/// The builder's OTLP headers as HTTP headers; a name or value HTTP refuses is an error.
#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
fn header_map(headers: &HashMap<String, String>) -> Result<http::HeaderMap, InitError> {
    let mut map = http::HeaderMap::new();
    for (k, v) in headers {
        let name =
            http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| InitError(format!("bad OTLP header name {k:?}")))?;
        let value =
            http::HeaderValue::from_str(v).map_err(|_| InitError(format!("bad OTLP header value for {k:?}")))?;
        map.insert(name, value);
    }
    Ok(map)
}

/// Counts what the SDK's batch processor sends, and frees its room in the queue.
#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    stats: Arc<ExportStats>,
    /// Spans handed to the batch processor and not yet sent (shared with [`CountingProcessor`]).
    in_queue: Arc<AtomicUsize>,
}

#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        // Never below 0 (`fetch_update` cannot fail when the closure always returns `Some`).
        let _ = self
            .in_queue
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| Some(q.saturating_sub(n)));
        self.stats.spans_sent(n as u64, result.is_ok());
        result
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}

/// Counts the spans that end, and drops (counting them) those the SDK's batch processor would
/// drop without a count: over `max_queue` not yet sent (waiting, or in the batch being sent), or
/// after shutdown. The batch processor's channel holds `max_queue` spans, and only spans not yet
/// sent, so it never fills.
#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
#[derive(Debug)]
struct CountingProcessor<P> {
    inner: P,
    stats: Arc<ExportStats>,
    in_queue: Arc<AtomicUsize>,
    max_queue: usize,
    shut_down: AtomicBool,
}

#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
impl<P: opentelemetry_sdk::trace::SpanProcessor> opentelemetry_sdk::trace::SpanProcessor for CountingProcessor<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx)
    }
    fn on_end(&self, span: SpanData) {
        let sampled = span.span_context.is_sampled();
        if sampled {
            self.stats.span_ended();
        }
        // A place in the queue is taken before the span is handed on, so that no two spans
        // take the last one.
        let dropped = if self.shut_down.load(Ordering::Acquire) {
            true
        } else if self.in_queue.fetch_add(1, Ordering::AcqRel) >= self.max_queue {
            self.in_queue.fetch_sub(1, Ordering::AcqRel);
            true
        } else {
            false
        };
        if dropped {
            if sampled {
                self.stats.span_dropped();
            }
            return;
        }
        self.inner.on_end(span)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.shut_down.store(true, Ordering::Release);
        self.inner.shutdown_with_timeout(timeout)
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}

/// The providers, the Prometheus exposition and llm-meter's instruments. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Telemetry {
    inner: Arc<TelemetryInner>,
}

#[derive(Debug)]
struct TelemetryInner {
    tracer_provider: SdkTracerProvider,
    /// The direct route of llm-meter's own spans, when they go over OTLP/HTTP.
    #[cfg(feature = "otlp-http")]
    spans: Option<OtlpSpans>,
    meter_provider: SdkMeterProvider,
    #[cfg(feature = "prometheus")]
    exposition: Option<crate::sinks::prometheus::Exposition>,
    metrics: Metrics,
    stats: Arc<ExportStats>,
    otlp: bool,
    spans_exported: bool,
    _export_counter: opentelemetry::metrics::ObservableCounter<u64>,
}

impl Telemetry {
    /// Starts a builder (reads the OTLP environment variables).
    pub fn builder() -> TelemetryBuilder {
        TelemetryBuilder::default()
    }

    /// llm-meter's metric instruments, for [`MeterBuilder::metrics`](crate::MeterBuilder::metrics).
    pub fn metrics(&self) -> Metrics {
        self.inner.metrics.clone()
    }

    /// The tracer provider (spans go to OTLP when configured).
    pub fn tracer_provider(&self) -> &SdkTracerProvider {
        &self.inner.tracer_provider
    }

    /// The queue llm-meter's own spans are written to straight from their records, when spans
    /// go over OTLP/HTTP (see [`Self::meter_builder`](crate::Telemetry::meter_builder)).
    #[cfg(feature = "otlp-http")]
    pub(crate) fn otlp_spans(&self) -> Option<&OtlpSpans> {
        self.inner.spans.as_ref()
    }

    /// A tracer on this telemetry's provider, under llm-meter's instrumentation scope.
    pub fn tracer(&self) -> opentelemetry_sdk::trace::SdkTracer {
        self.inner.tracer_provider.tracer_with_scope(scope())
    }

    /// The meter provider (Prometheus and OTLP readers).
    pub fn meter_provider(&self) -> &SdkMeterProvider {
        &self.inner.meter_provider
    }

    /// The metrics behind `/metrics`, when Prometheus is on.
    #[cfg(feature = "prometheus")]
    pub fn exposition(&self) -> Option<&crate::sinks::prometheus::Exposition> {
        self.inner.exposition.as_ref()
    }

    /// Whether OTLP export is on.
    pub fn otlp_enabled(&self) -> bool {
        self.inner.otlp
    }

    /// Whether spans go anywhere: OTLP trace export is on and `OTEL_TRACES_SAMPLER` is not
    /// `always_off`. A server that installs only this crate's subscriber (the proxy) can turn
    /// spans off when this is false: nothing would read them.
    pub fn spans_exported(&self) -> bool {
        self.inner.spans_exported
    }

    /// Span export counts (drops included).
    pub fn export_stats(&self) -> &ExportStats {
        &self.inner.stats
    }

    /// The tracing-opentelemetry layer, for your own subscriber. It takes spans and events at
    /// `INFO` and above (llm-meter's own are `INFO`): `DEBUG` and `TRACE` ones, which HTTP
    /// libraries such as hyper-util emit several times per request, are never built when no
    /// other layer wants them, and would swamp a trace if exported. It leaves out what costs
    /// time on every poll and says nothing about a call: busy/idle times, thread ids and
    /// source locations (`code.*`). For other levels, build a layer on [`Self::tracer`].
    pub fn tracing_layer<S>(&self) -> impl Layer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.tracer())
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    }

    /// Installs the global `tracing` subscriber: this OpenTelemetry layer, plus (feature `log`) a
    /// `fmt` layer on stderr filtered by `RUST_LOG` (default `warn`), as text. Fails when a
    /// global subscriber is already set.
    pub fn install(self) -> Result<TelemetryGuard, InitError> {
        self.install_with_logs(LogFormat::Text)
    }

    /// [`Self::install`] with log lines in `format` (feature `log`; without it there are no
    /// log lines and `format` is ignored).
    pub fn install_with_logs(self, format: LogFormat) -> Result<TelemetryGuard, InitError> {
        let registry = tracing_subscriber::registry().with(self.tracing_layer());
        #[cfg(feature = "log")]
        let registry = {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
            let text = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
            let lines: Box<dyn Layer<_> + Send + Sync> = match format {
                LogFormat::Text => Box::new(text.with_filter(filter)),
                LogFormat::Json => Box::new(text.json().with_filter(filter)),
            };
            registry.with(lines)
        };
        #[cfg(not(feature = "log"))]
        let _ = format;
        registry
            .try_init()
            .map_err(|e| InitError(format!("a global tracing subscriber is already set: {e}")))?;
        Ok(TelemetryGuard { telemetry: self })
    }

    /// Flushes spans and metrics to their exporters (bounded by the export timeout).
    pub fn flush(&self) {
        #[cfg(feature = "otlp-http")]
        if let Some(spans) = &self.inner.spans {
            if let Err(e) = spans.flush(SPANS_WAIT) {
                tracing::warn!(target: "llm_meter", "{e}");
            }
        }
        if let Err(e) = self.inner.tracer_provider.force_flush() {
            tracing::warn!(target: "llm_meter", "span flush failed: {e}");
        }
        if let Err(e) = self.inner.meter_provider.force_flush() {
            tracing::warn!(target: "llm_meter", "metric flush failed: {e}");
        }
    }

    /// Shuts both providers down. Each exports what it still holds on its way (the SDK bounds
    /// the wait at 5 s per provider), so no flush comes first: one would wait on a collector
    /// that does not answer a second time (`bench/exporter_faults.py`, endpoint `hung`).
    pub fn shutdown(&self) {
        #[cfg(feature = "otlp-http")]
        if let Some(spans) = &self.inner.spans {
            let _ = spans.shutdown(SPANS_WAIT);
        }
        let _ = self.inner.tracer_provider.shutdown();
        let _ = self.inner.meter_provider.shutdown();
    }
}

/// How long a flush or shutdown waits on the queue of llm-meter's own spans, as the SDK waits
/// on its providers.
#[cfg(feature = "otlp-http")]
const SPANS_WAIT: Duration = Duration::from_secs(5);

/// Keeps telemetry running; shuts it down (exporting what is left) when dropped.
#[derive(Debug)]
#[must_use = "telemetry shuts down when the guard is dropped"]
pub struct TelemetryGuard {
    telemetry: Telemetry,
}

impl std::ops::Deref for TelemetryGuard {
    type Target = Telemetry;
    fn deref(&self) -> &Telemetry {
        &self.telemetry
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.telemetry.shutdown();
    }
}

/// One call: builds telemetry from the environment and installs the global subscriber.
pub fn init() -> Result<TelemetryGuard, InitError> {
    Telemetry::builder().build()?.install()
}

#[cfg(test)]
#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks, SpanProcessor};
    use std::sync::Mutex;
    use std::time::SystemTime;

    /// A processor that only keeps what it is handed, as a batch processor's channel would.
    #[derive(Debug, Default)]
    struct Kept(Mutex<Vec<SpanData>>);

    impl SpanProcessor for Kept {
        fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().unwrap().push(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    #[derive(Debug)]
    struct Accepting;

    impl SpanExporter for Accepting {
        async fn export(&self, _: Vec<SpanData>) -> OTelSdkResult {
            Ok(())
        }
    }

    fn sampled_span() -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(1u128),
                SpanId::from(1u64),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Client,
            name: "chat".into(),
            start_time: SystemTime::now(),
            end_time: SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    #[tokio::test]
    async fn the_sdk_route_holds_its_room_of_unsent_spans_and_counts_every_drop() {
        let stats = Arc::new(ExportStats::default());
        let in_queue = Arc::new(AtomicUsize::new(0));
        let processor = CountingProcessor {
            inner: Kept::default(),
            stats: stats.clone(),
            in_queue: in_queue.clone(),
            max_queue: 3,
            shut_down: AtomicBool::new(false),
        };
        let exporter = CountingExporter {
            inner: Accepting,
            stats: stats.clone(),
            in_queue,
        };
        let kept = |p: &CountingProcessor<Kept>| p.inner.0.lock().unwrap().len();
        for _ in 0..5 {
            processor.on_end(sampled_span());
        }
        assert_eq!(kept(&processor), 3, "room for 3 unsent spans");
        assert_eq!((stats.ended(), stats.dropped(), stats.queued()), (5, 2, 3));
        // Two are sent: room for two more, and no more.
        let sent: Vec<SpanData> = processor.inner.0.lock().unwrap().drain(..2).collect();
        exporter.export(sent).await.unwrap();
        for _ in 0..3 {
            processor.on_end(sampled_span());
        }
        assert_eq!(kept(&processor), 3);
        assert_eq!((stats.exported(), stats.dropped(), stats.queued()), (2, 3, 3));
        // After shutdown nothing is handed on, room or not, and every span still has an outcome.
        let sent: Vec<SpanData> = processor.inner.0.lock().unwrap().drain(..).collect();
        exporter.export(sent).await.unwrap();
        processor.shutdown_with_timeout(Duration::from_secs(1)).unwrap();
        processor.on_end(sampled_span());
        assert_eq!(kept(&processor), 0);
        assert_eq!((stats.exported(), stats.dropped(), stats.queued()), (5, 4, 0));
        assert_eq!(
            stats.ended(),
            stats.exported() + stats.failed() + stats.dropped() + stats.queued()
        );
    }
}
