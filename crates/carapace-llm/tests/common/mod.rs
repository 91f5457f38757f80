//! What the provider suites that share it need: running a turn plain or streamed, and
//! waiting for the fake to see what the client did.

use std::time::Duration;

use carapace_llm::{ChatRequest, ChatResponse, Provider, ProviderError, StreamEvent};
use tokio::sync::mpsc;

/// How a turn is run: plain, or streamed with the text deltas collected.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    Plain,
    Streamed,
}

/// Both modes, plain first.
pub const MODES: [Mode; 2] = [Mode::Plain, Mode::Streamed];

/// Runs one turn; returns the response and, when streamed, the text deltas received.
pub async fn run(
    provider: &dyn Provider,
    req: &ChatRequest,
    mode: Mode,
) -> (Result<ChatResponse, ProviderError>, Vec<String>) {
    match mode {
        Mode::Plain => (provider.chat(req, None).await, Vec::new()),
        Mode::Streamed => {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let result = provider.chat(req, Some(&tx)).await;
            drop(tx);
            let mut deltas = Vec::new();
            while let Some(StreamEvent::TextDelta(d)) = rx.recv().await {
                deltas.push(d);
            }
            (result, deltas)
        }
    }
}

/// Waits up to five seconds for `cond`; the fake sees events a little after the client.
pub async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}
