//! The CLI's integration tests (the binary, the demo, the dashboards and rules against a real
//! Prometheus), linked into one test binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

mod cli;
mod dashboards;
mod demo;
