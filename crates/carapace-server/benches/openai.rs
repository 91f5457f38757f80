//! A full OpenAI-compatible request with one tool call against the fake provider, and
//! the fake provider's own share of it, so that the gateway's overhead can be reported.
//!
//! 1. `openai/full_request_one_tool_call`: `POST /v1/chat/completions` through the
//!    router value (in process, no socket): auth, host check, JSON, a new session, two
//!    model calls over loopback HTTP to `FakeOpenAi`, one `list_dir` through every Gate
//!    stage (the strict policy preset, audit appends), every message persisted in a temp-file
//!    SQLite database in WAL mode, as in production.
//! 2. `openai/provider_only_two_model_calls`: the same two model calls, with the bodies
//!    the gateway sent in (1), made directly with the `OpenAiCompat` client.
//!
//! Gateway overhead = (1) − (2). `cargo bench -p carapace-server --bench openai` prints
//! criterion's figures, then p50 of 2 000 single requests of each and their difference.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use carapace_agent::{Agent, AgentConfig, SYSTEM_PROMPT};
use carapace_gate::{Gate, GateConfig, GateDeps, Scrubber, SharedScrubber};
use carapace_llm::{
    ChatMessage, ChatRequest, OpenAiCompat, OpenAiConfig, Provider, ToolCallRequest, ToolSpec,
};
use carapace_policy::Policy;
use carapace_server::{AppState, ServerDeps, router};
use carapace_store::{AuditKey, Store};
use carapace_testkit::{FakeOpenAi, Reply};
use carapace_types::Secret;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKEN: &str = "bench-token-0123456789abcdef";
const ANSWER: &str = "Your workspace holds three files: notes.txt, todo.md and report.csv.";

struct Bench {
    app: Router,
    fake: FakeOpenAi,
    provider: Arc<dyn Provider>,
    _dir: tempfile::TempDir,
}

fn script(fake: &FakeOpenAi) {
    fake.push(Reply::ToolCalls(vec![(
        "list_dir".into(),
        json!({ "path": "." }),
    )]));
    fake.push(Reply::Text(ANSWER.into()));
}

async fn setup() -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("workspace");
    std::fs::create_dir(&root).unwrap();
    for (name, text) in [
        ("notes.txt", "buy milk\n"),
        ("todo.md", "- write the benchmark\n"),
        ("report.csv", "a,b\n1,2\n"),
    ] {
        std::fs::write(root.join(name), text).unwrap();
    }
    let store = Arc::new(Store::open_exclusive(&dir.path().join("carapace.db")).unwrap());
    let audit_key = Arc::new(AuditKey::generate());
    let gate = Gate::new(GateDeps {
        store: store.clone(),
        audit_key: audit_key.clone(),
        workspace_root: root,
        policy: Policy::strict(),
        judge: None,
        scrubber: SharedScrubber::new(Scrubber::new(&[Secret::new(
            "sk-bench-0123456789abcdef".to_string(),
        )])),
        // No rate limit in the way of a benchmark loop.
        config: GateConfig {
            rate_per_minute: u32::MAX,
            ..GateConfig::default()
        },
        exec: None,
        net: None,
        channels: None,
        mcp: None,
    })
    .unwrap();
    let fake = FakeOpenAi::start(Vec::new()).await;
    let provider: Arc<dyn Provider> =
        Arc::new(OpenAiCompat::new(OpenAiConfig::new(fake.base_url())).unwrap());
    let agent = Agent::new(
        provider.clone(),
        gate.clone(),
        store.clone(),
        AgentConfig {
            model: "bench-model".into(),
            max_steps: 8,
            system_prompt: SYSTEM_PROMPT.into(),
        },
    );
    let state = AppState::new(ServerDeps {
        store,
        gate,
        agent: Some(agent),
        provider_hint: String::new(),
        token: Secret::new(TOKEN.to_string()),
        audit_key,
        max_body_bytes: 1024 * 1024,
        rules: serde_json::json!([]),
    });
    Bench {
        app: router(state),
        fake,
        provider,
        _dir: dir,
    }
}

/// One OpenAI-compatible request as a client sends it (no `user`: a new session each
/// time, so every request has the same history and payload sizes).
async fn full_request(b: &Bench) {
    script(&b.fake);
    let body = json!({
        "model": "gpt-4o",
        "messages": [{ "role": "user", "content": "What files are in my workspace?" }],
    });
    let req = Request::post("/v1/chat/completions")
        .header(header::HOST, "127.0.0.1:8321")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = b.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let answer: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], ANSWER);
}

/// The two model calls of [`full_request`], made directly.
async fn provider_only(b: &Bench, requests: &[ChatRequest; 2]) {
    script(&b.fake);
    let first = b.provider.chat(&requests[0], None).await.unwrap();
    assert_eq!(first.tool_calls.len(), 1);
    let second = b.provider.chat(&requests[1], None).await.unwrap();
    assert_eq!(second.content.as_deref(), Some(ANSWER));
}

/// A request body the fake received, turned back into the `ChatRequest` that produced it.
fn decode(body: &Value) -> ChatRequest {
    let text = |m: &Value| m["content"].as_str().unwrap_or_default().to_string();
    let messages = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m["role"].as_str().unwrap() {
            "system" => ChatMessage::System { content: text(m) },
            "user" => ChatMessage::User { content: text(m) },
            "tool" => ChatMessage::Tool {
                tool_call_id: m["tool_call_id"].as_str().unwrap().to_string(),
                content: text(m),
            },
            "assistant" => ChatMessage::Assistant {
                content: m["content"].as_str().map(str::to_string),
                tool_calls: m["tool_calls"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| ToolCallRequest {
                        id: c["id"].as_str().unwrap().to_string(),
                        name: c["function"]["name"].as_str().unwrap().to_string(),
                        arguments: c["function"]["arguments"].as_str().unwrap().to_string(),
                        signature: None,
                    })
                    .collect(),
            },
            other => panic!("unexpected role {other}"),
        })
        .collect();
    let tools = body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| ToolSpec {
            name: t["function"]["name"].as_str().unwrap().to_string(),
            description: t["function"]["description"].as_str().unwrap().to_string(),
            parameters: t["function"]["parameters"].clone(),
        })
        .collect();
    ChatRequest {
        model: body["model"].as_str().unwrap().to_string(),
        messages,
        tools,
        max_tokens: None,
        temperature: None,
    }
}

fn p50(rt: &tokio::runtime::Runtime, n: usize, mut one: impl AsyncFnMut()) -> Duration {
    let mut samples: Vec<Duration> = Vec::with_capacity(n);
    rt.block_on(async {
        for _ in 0..n {
            let t = Instant::now();
            one().await;
            samples.push(t.elapsed());
        }
    });
    samples.sort();
    samples[samples.len() / 2]
}

fn openai(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bench = rt.block_on(setup());

    // One request to capture the exact bodies the gateway sends the provider.
    rt.block_on(full_request(&bench));
    let sent = bench.fake.requests();
    assert_eq!(sent.len(), 2, "one tool call means two model calls");
    let direct = [decode(&sent[0]), decode(&sent[1])];
    rt.block_on(provider_only(&bench, &direct));
    let again = bench.fake.requests();
    assert_eq!(
        again[2].to_string().len(),
        sent[0].to_string().len(),
        "the direct calls send the same payloads"
    );

    let mut group = c.benchmark_group("openai");
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(50);
    group.bench_function("full_request_one_tool_call", |b| {
        b.iter(|| rt.block_on(full_request(&bench)))
    });
    group.bench_function("provider_only_two_model_calls", |b| {
        b.iter(|| rt.block_on(provider_only(&bench, &direct)))
    });
    group.finish();

    let n = 2_000;
    let full = p50(&rt, n, async || full_request(&bench).await);
    let provider = p50(&rt, n, async || provider_only(&bench, &direct).await);
    println!(
        "openai single requests (n = {n}): full p50 {full:?}  provider-only p50 {provider:?}  \
         gateway overhead p50 ≈ {:?}",
        full.saturating_sub(provider)
    );
}

criterion_group!(benches, openai);
criterion_main!(benches);
