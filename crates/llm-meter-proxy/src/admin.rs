//! The admin listener beside the proxy: `GET /metrics` (Prometheus text format) and
//! `GET /healthz`, on its own address so that it is never exposed with the proxy's routes.

use std::net::SocketAddr;

use axum::Router;
use llm_meter::Telemetry;

/// The admin routes for `telemetry`'s metrics (an empty `/metrics` when it has no Prometheus
/// registry), to mount in your own server.
pub fn admin_router(telemetry: &Telemetry) -> Router {
    llm_meter::prometheus::router(telemetry.registry().cloned().unwrap_or_default())
}

/// Serves [`admin_router`] on `addr` in the background; returns the bound address.
pub async fn spawn_admin(addr: SocketAddr, telemetry: &Telemetry) -> std::io::Result<SocketAddr> {
    llm_meter::prometheus::serve(addr, telemetry.registry().cloned().unwrap_or_default()).await
}
