//! The server built as a value over real parts: a Gate with the strict policy preset over an
//! in-memory store and a temporary workspace, and an agent whose model is a
//! `FakeOpenAi` on 127.0.0.1 reached through the production `OpenAiCompat` client.
//! Requests go through `tower::ServiceExt::oneshot`, no socket.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use carapace_agent::{Agent, AgentConfig};
use carapace_gate::{Gate, GateConfig, GateDeps, Scrubber, SharedScrubber};
use carapace_llm::{OpenAiCompat, OpenAiConfig};
use carapace_policy::Policy;
use carapace_server::{AppState, ServerDeps, router};
use carapace_store::{AuditKey, Store};
use carapace_testkit::{FakeOpenAi, Reply};
use carapace_types::Secret;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

pub const TOKEN: &str = "test-token-7d1f0c9a2b";
pub const HOST: &str = "localhost:8321";
pub const MODEL: &str = "test-model";
pub const HINT: &str = "no model provider is configured; set [provider] in config.toml";

pub struct Harness {
    pub app: Router,
    pub store: Arc<Store>,
    pub gate: Gate,
    pub fake: Option<FakeOpenAi>,
    pub dir: tempfile::TempDir,
}

pub struct Options {
    /// `None` builds the server without a model provider.
    pub script: Option<Vec<Reply>>,
    pub max_body_bytes: usize,
    pub gate: GateConfig,
    pub max_steps: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            script: Some(Vec::new()),
            max_body_bytes: 64 * 1024,
            gate: GateConfig {
                rate_per_minute: 10_000,
                ..GateConfig::default()
            },
            max_steps: 8,
        }
    }
}

pub async fn harness(script: Vec<Reply>) -> Harness {
    harness_with(Options {
        script: Some(script),
        ..Options::default()
    })
    .await
}

pub async fn harness_with(options: Options) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("workspace");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("notes.txt"), "buy milk\n").unwrap();
    let store = Arc::new(Store::open_in_memory().unwrap());
    let audit_key = Arc::new(AuditKey::generate());
    let gate = Gate::new(GateDeps {
        store: store.clone(),
        audit_key: audit_key.clone(),
        workspace_root: root,
        policy: Policy::strict(),
        judge: None,
        scrubber: SharedScrubber::new(Scrubber::new(&[Secret::new(TOKEN.to_string())])),
        config: options.gate,
        exec: None,
        net: None,
        channels: None,
        mcp: None,
    })
    .unwrap();
    let fake = match options.script {
        Some(script) => Some(FakeOpenAi::start(script).await),
        None => None,
    };
    let agent = fake.as_ref().map(|fake| {
        let provider = OpenAiCompat::new(OpenAiConfig {
            request_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(30),
            ..OpenAiConfig::new(fake.base_url())
        })
        .unwrap();
        Agent::new(
            Arc::new(provider),
            gate.clone(),
            store.clone(),
            AgentConfig {
                model: MODEL.into(),
                max_steps: options.max_steps,
                system_prompt: "test system prompt".into(),
            },
        )
    });
    let state = AppState::new(ServerDeps {
        store: store.clone(),
        gate: gate.clone(),
        agent,
        provider_hint: HINT.into(),
        token: Secret::new(TOKEN.to_string()),
        audit_key,
        max_body_bytes: options.max_body_bytes,
        rules: serde_json::json!([]),
    });
    Harness {
        app: router(state),
        store,
        gate,
        fake,
        dir,
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not json ({e}): {:?} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }

    /// The error code of a typed error body, after checking the body has the typed shape.
    pub fn code(&self) -> String {
        let body = self.json();
        let error = &body["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "typed errors carry a message: {body}"
        );
        assert_eq!(
            error["type"].as_str(),
            error["code"]
                .as_str()
                .map(str::to_ascii_lowercase)
                .as_deref(),
            "{body}"
        );
        error["code"].as_str().unwrap().to_string()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A request to the router, with the right Host and bearer token unless told otherwise.
pub struct Call {
    method: &'static str,
    path: String,
    host: Option<String>,
    auth: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

impl Call {
    pub fn get(path: &str) -> Call {
        Call::new("GET", path)
    }

    pub fn post(path: &str) -> Call {
        Call::new("POST", path)
    }

    pub fn new(method: &'static str, path: &str) -> Call {
        Call {
            method,
            path: path.to_string(),
            host: Some(HOST.to_string()),
            auth: Some(format!("Bearer {TOKEN}")),
            content_type: None,
            body: Vec::new(),
        }
    }

    pub fn json(mut self, body: &Value) -> Call {
        self.content_type = Some("application/json".into());
        self.body = serde_json::to_vec(body).unwrap();
        self
    }

    pub fn raw(mut self, content_type: Option<&str>, body: impl Into<Vec<u8>>) -> Call {
        self.content_type = content_type.map(str::to_string);
        self.body = body.into();
        self
    }

    pub fn host(mut self, host: Option<&str>) -> Call {
        self.host = host.map(str::to_string);
        self
    }

    pub fn auth(mut self, value: Option<&str>) -> Call {
        self.auth = value.map(str::to_string);
        self
    }

    pub fn request(self) -> Request<Body> {
        let mut req = Request::builder().method(self.method).uri(&self.path);
        if let Some(host) = &self.host {
            req = req.header(header::HOST, host);
        }
        if let Some(auth) = &self.auth {
            req = req.header(header::AUTHORIZATION, auth);
        }
        if let Some(ct) = &self.content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        req.body(Body::from(self.body)).unwrap()
    }

    /// Sends the request and reads the whole response.
    pub async fn send(self, app: &Router) -> Answer {
        let resp = app.clone().oneshot(self.request()).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes().to_vec();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

pub async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The audit records with this `event`.
pub fn audit_events(store: &Store, event: &str) -> Vec<Value> {
    store
        .audit_tail(100_000)
        .unwrap()
        .into_iter()
        .map(|e| e.record)
        .filter(|r| r["event"] == event)
        .collect()
}

/// Creates a session through the API and returns its id.
pub async fn new_session(app: &Router) -> String {
    let answer = Call::post("/api/sessions").send(app).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    answer.json()["session"]["id"].as_str().unwrap().to_string()
}
