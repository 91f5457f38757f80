//! What the provider suites share: building a turn, running it plain or streamed, waiting
//! for the fake to see what the client did, and checking that a key never shows.

// Each suite compiles this module on its own and uses only a part of it.
#![allow(dead_code)]

use std::time::Duration;

use carapace_llm::{ChatMessage, ChatRequest, ChatResponse, Provider, ProviderError, StreamEvent};
use tokio::sync::mpsc;

/// One user message to `model`, without tools or limits.
pub fn ask_model(model: &str, text: &str) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages: vec![ChatMessage::User {
            content: text.into(),
        }],
        tools: Vec::new(),
        max_tokens: None,
        temperature: None,
    }
}

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

/// Runs `req` once in each mode, plain first; returns the responses.
pub async fn each_mode(
    provider: &dyn Provider,
    req: &ChatRequest,
) -> Vec<(Mode, Result<ChatResponse, ProviderError>)> {
    let mut out = Vec::new();
    for mode in MODES {
        out.push((mode, run(provider, req, mode).await.0));
    }
    out
}

/// Drops a plain call before the response headers, then a streamed one after its first
/// event; the fake, whose received requests and disconnects the closures count, must see
/// both clients go away.
pub async fn drop_before_headers_and_mid_stream(
    provider: &dyn Provider,
    req: &ChatRequest,
    requests: impl Fn() -> usize,
    disconnects: impl Fn() -> usize,
) {
    tokio::select! {
        result = provider.chat(req, None) => panic!("finished early: {result:?}"),
        () = eventually("the request to arrive", || requests() == 1) => {}
    }
    eventually("the first disconnect", || disconnects() == 1).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::select! {
        result = provider.chat(req, Some(&tx)) => panic!("finished early: {result:?}"),
        first = rx.recv() => assert!(first.is_some()),
    }
    eventually("the second disconnect", || disconnects() == 2).await;
}

/// Asserts that `secret` shows in none of `errors`, displayed or debugged.
pub fn assert_not_shown(secret: &str, errors: &[ProviderError]) {
    for err in errors {
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(secret), "{shown}");
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
