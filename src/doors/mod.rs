//! The doors, the top stage: the ways an application's calls come into the
//! [pipeline](crate::pipeline). The instrumented reqwest [`client`] and, with the
//! `async-openai` feature, a tower layer for async-openai clients ([`openai_layer`]). The proxy
//! (crate `llm-meter-proxy`) is the third door, built on the same pipeline.

pub mod client;
#[cfg(feature = "async-openai")]
pub mod openai_layer;
