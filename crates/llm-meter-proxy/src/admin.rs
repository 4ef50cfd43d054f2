//! The admin listener beside the proxy: `GET /metrics` (Prometheus text format), `GET /healthz`
//! (alive) and `GET /readyz` (ready: the upstream accepts connections), on its own address
//! (loopback by default) so that it is never exposed with the proxy's routes.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use llm_meter::Telemetry;

use crate::Proxy;

/// Longest wait for the upstream in a readiness check.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// The admin routes for `telemetry`'s metrics (an empty `/metrics` when Prometheus is off)
/// and `proxy`'s readiness, to mount in your own server.
pub fn admin_router(telemetry: &Telemetry, proxy: &Proxy) -> Router {
    let proxy = proxy.clone();
    llm_meter::prometheus::router(telemetry.exposition().cloned().unwrap_or_default()).route(
        "/readyz",
        get(move || {
            let proxy = proxy.clone();
            async move {
                if proxy.upstream_reachable(READINESS_TIMEOUT).await {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "upstream unreachable\n")
                }
            }
        }),
    )
}

/// Serves [`admin_router`] on `addr` in the background; returns the bound address.
pub async fn spawn_admin(addr: SocketAddr, telemetry: &Telemetry, proxy: &Proxy) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = admin_router(telemetry, proxy);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(target: "llm_meter", "admin listener stopped: {e}");
        }
    });
    Ok(bound)
}
