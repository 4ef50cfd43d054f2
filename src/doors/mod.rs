//! The doors, the top stage: the ways an application's calls come into the
//! [pipeline](crate::pipeline). The instrumented reqwest [`client`]; with the `async-openai`
//! feature, a tower layer for async-openai clients ([`openai_layer`]); with the
//! `reqwest-middleware` feature, a middleware for `reqwest_middleware` clients ([`middleware`]).
//! The last two sit inside the application's own HTTP stack and share [`observe`]. The proxy
//! (crate `llm-meter-proxy`) is the fourth door, built on the same pipeline.

pub mod client;
#[cfg(feature = "reqwest-middleware")]
pub mod middleware;
#[cfg(any(feature = "async-openai", feature = "reqwest-middleware"))]
mod observe;
#[cfg(feature = "async-openai")]
pub mod openai_layer;
