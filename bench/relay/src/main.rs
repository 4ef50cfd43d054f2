//! Placeholder: the bare hyper relay lands here.
fn main() {}
