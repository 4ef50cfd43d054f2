//! The `llm-meter` binary's own code, as a library so that its tests can drive it: the demo
//! (`llm-meter demo`). The binary (`src/main.rs`) adds the command line, signals and log setup.

#![warn(missing_docs)]

pub mod demo;
