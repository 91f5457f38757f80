//! Benchmarks of the Gate's hot path: one allowed call through every stage, audit
//! write included.

fn main() {}
