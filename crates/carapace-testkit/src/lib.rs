//! Dev-only fakes of the services Carapace talks to, for the tests and benchmarks of the
//! other crates and for manual demos. Each fake is a small axum app that speaks the real
//! wire format, so the client code under test is the production code.
//!
//! This crate must never be a dependency of production code (only `[dev-dependencies]`)
//! and must never touch the internet: every fake listens on 127.0.0.1 only.

pub mod anthropic;
pub mod bedrock;
mod fake;
pub mod gemini;
pub mod ollama;
mod openai;
pub mod openai_responses;

pub use openai::{FakeOpenAi, Reply, ScriptError, parse_script};

/// A loopback port that was free a moment ago. Nothing listens on it, so connecting to it
/// is refused (until someone else takes it).
pub fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}

/// The JSON with object keys sorted at every level, whatever serde_json's features: for
/// snapshots that must not depend on key order.
pub fn sorted_keys(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted_keys(&map[k])))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted_keys).collect()),
        other => other.clone(),
    }
}
