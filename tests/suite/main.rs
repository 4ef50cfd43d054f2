//! The library's integration tests, one module per concern, linked into one test binary (one
//! link instead of one per file). Tests that change process-wide state (environment variables)
//! live in their own binaries beside this folder.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

mod common;
#[path = "common/receiver.rs"]
mod receiver;

mod async_openai_layer;
mod client_spans;
mod cost_limits;
mod disconnect;
mod exposition;
mod faults;
mod fuzz;
mod ledger_parity;
mod light;
mod metrics;
mod middleware;
mod mock;
mod mock_providers;
mod names;
mod openai_sdk;
mod otlp;
mod provider_sdks;
mod proxy;
mod proxy_providers;
mod proxy_spans;
mod recorded;
mod redis_ledger;
mod security;
mod shutdown;
mod streaming;
mod upstream_choice;
