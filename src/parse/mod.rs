//! Parsing, the lowest stage above [`names`](crate::names): what a call says about itself, read
//! from bytes and headers with no I/O and no telemetry. Business annotations and Pay-i's
//! `xProxy-*` headers ([`annotations`]); the API base and key every door sends ([`endpoint`]); the provider's response headers, body and reset
//! durations ([`provider`]); Server-Sent Events streams ([`stream`]).

pub mod annotations;
pub mod endpoint;
pub mod provider;
pub mod stream;
