//! `/metrics` in the Prometheus text format, from the registry the OpenTelemetry Prometheus
//! reader fills: an axum router to mount in your own server, and a standalone listener
//! (default `127.0.0.1:9464`) with `/metrics` and `/healthz`.

use std::net::SocketAddr;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};

/// Default address of the standalone metrics listener.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

/// Encodes every metric of `registry` in the Prometheus text format.
pub fn encode(registry: &Registry) -> Result<String, prometheus::Error> {
    let mut out = Vec::with_capacity(16 * 1024);
    TextEncoder::new().encode(&registry.gather(), &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

fn metrics_response(registry: &Registry) -> Response {
    match encode(registry) {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(e) => {
            tracing::warn!(target: "llm_meter", "encoding /metrics failed: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encoding metrics failed: {e}\n"),
            )
                .into_response()
        }
    }
}

/// A router with `GET /metrics` and `GET /healthz`, to mount in your own axum server.
pub fn router(registry: Registry) -> Router {
    Router::new()
        .route("/metrics", get(move || std::future::ready(metrics_response(&registry))))
        .route("/healthz", get(|| std::future::ready("ok\n")))
}

/// Serves [`router`] on `addr` in the background; returns the bound address (useful with port 0).
pub async fn serve(addr: SocketAddr, registry: Registry) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(registry);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(target: "llm_meter", "metrics listener stopped: {e}");
        }
    });
    Ok(bound)
}
