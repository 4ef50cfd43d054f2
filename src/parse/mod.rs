//! Parsing, the lowest stage above [`names`](crate::names): what a call says about itself, read
//! from bytes and headers with no I/O and no telemetry. Business annotations and Pay-i's
//! `xProxy-*` headers ([`annotations`]); the API base and key every door sends ([`endpoint`]); the
//! provider's response headers, body, reset durations and timestamps ([`provider`]: OpenAI Chat
//! Completions and the types every provider is read into); Anthropic's Messages API
//! ([`anthropic`]) and OpenAI's Responses API ([`responses`]); Server-Sent Events streams of any
//! of them ([`stream`]). A strict scanner reads chat completions and requests before serde is asked (`scan`).

pub mod annotations;
pub mod anthropic;
pub mod endpoint;
pub mod provider;
pub mod responses;
pub(crate) mod scan;
pub mod stream;
