//! A real OTLP receiver on 127.0.0.1 built on the official protobufs (`opentelemetry-proto`):
//! tonic services for OTLP/gRPC and an axum route decoding protobuf for OTLP/HTTP. It keeps
//! every request it accepts, and can be told to hang.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, Metric};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

#[derive(Default)]
pub struct Received {
    pub traces: Mutex<Vec<ExportTraceServiceRequest>>,
    pub metrics: Mutex<Vec<ExportMetricsServiceRequest>>,
    /// While set, requests are accepted and never answered.
    pub hang: AtomicBool,
    /// Headers of the OTLP/HTTP requests.
    pub http_headers: Mutex<Vec<http::HeaderMap>>,
}

impl Received {
    async fn maybe_hang(&self) {
        while self.hang.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn spans(&self) -> Vec<Span> {
        let traces = self.traces.lock().unwrap();
        traces
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| ss.spans.clone())
            .collect()
    }

    /// `(name, version)` of every instrumentation scope that exported spans or metrics.
    pub fn scopes(&self) -> Vec<(String, String)> {
        let traces = self.traces.lock().unwrap();
        let metrics = self.metrics.lock().unwrap();
        let spans = traces
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans);
        let from_spans = spans.filter_map(|ss| ss.scope.as_ref());
        let from_metrics = metrics
            .iter()
            .flat_map(|r| &r.resource_metrics)
            .flat_map(|rm| &rm.scope_metrics)
            .filter_map(|sm| sm.scope.as_ref());
        from_spans
            .chain(from_metrics)
            .map(|s| (s.name.clone(), s.version.clone()))
            .collect()
    }

    /// The latest export of the metric named `name`.
    pub fn latest_metric(&self, name: &str) -> Option<Metric> {
        let metrics = self.metrics.lock().unwrap();
        metrics
            .iter()
            .rev()
            .flat_map(|r| &r.resource_metrics)
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .find(|m| m.name == name)
            .cloned()
    }

    /// Resource attributes of the latest metric export.
    pub fn resource(&self) -> Vec<KeyValue> {
        let metrics = self.metrics.lock().unwrap();
        metrics
            .last()
            .and_then(|r| r.resource_metrics.first())
            .and_then(|rm| rm.resource.as_ref())
            .map(|r| r.attributes.clone())
            .unwrap_or_default()
    }
}

#[derive(Clone)]
struct Svc(Arc<Received>);

#[tonic::async_trait]
impl TraceService for Svc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.maybe_hang().await;
        self.0.traces.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Svc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.maybe_hang().await;
        self.0.metrics.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

/// Starts an OTLP/gRPC receiver on `addr` (port 0 for any).
pub async fn grpc(addr: SocketAddr) -> (SocketAddr, Arc<Received>) {
    let received = Arc::new(Received::default());
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let bound = listener.local_addr().unwrap();
    let svc = Svc(received.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(svc.clone()))
            .add_service(MetricsServiceServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (bound, received)
}

/// Starts an OTLP/HTTP (protobuf) receiver on `addr`.
pub async fn http(addr: SocketAddr) -> (SocketAddr, Arc<Received>) {
    let received = Arc::new(Received::default());
    let (traces, metrics) = (received.clone(), received.clone());
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            post(move |headers: http::HeaderMap, body: Bytes| async move {
                traces.http_headers.lock().unwrap().push(headers);
                traces.maybe_hang().await;
                traces
                    .traces
                    .lock()
                    .unwrap()
                    .push(ExportTraceServiceRequest::decode(body).unwrap());
                ExportTraceServiceResponse { partial_success: None }.encode_to_vec()
            }),
        )
        .route(
            "/v1/metrics",
            post(move |body: Bytes| async move {
                metrics.maybe_hang().await;
                metrics
                    .metrics
                    .lock()
                    .unwrap()
                    .push(ExportMetricsServiceRequest::decode(body).unwrap());
                ExportMetricsServiceResponse { partial_success: None }.encode_to_vec()
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let bound = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (bound, received)
}

pub fn any() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

pub fn str_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key) {
        Some(any_value::Value::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

pub fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key) {
        Some(any_value::Value::IntValue(i)) => Some(*i),
        _ => None,
    }
}

/// Sum of a monotonic counter's data points (all series).
pub fn counter_total(m: &Metric) -> u64 {
    match &m.data {
        Some(metric::Data::Sum(s)) => s
            .data_points
            .iter()
            .map(|p| match p.value {
                Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(i)) => i as u64,
                Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(d)) => d as u64,
                None => 0,
            })
            .sum(),
        other => panic!("{} is not a sum: {other:?}", m.name),
    }
}

/// Polls until `done` holds or 10 s pass.
pub async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}
