//! The agent loop driven end to end: the production `OpenAiCompat` client against
//! `FakeOpenAi` on 127.0.0.1, and a real Gate over an in-memory store and a temporary
//! workspace. Each test checks what was persisted and what the model was sent, because
//! a history the model cannot read back is as broken as a lost message.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use carapace_agent::{Agent, AgentConfig, AgentError, AgentEvent, build_messages};
use carapace_gate::{Gate, GateConfig, GateDeps, Scrubber, SharedScrubber};
use carapace_llm::{ChatMessage, OpenAiCompat, OpenAiConfig, ProviderError};
use carapace_policy::Policy;
use carapace_store::{AuditKey, MessageRecord, Role, Store};
use carapace_testkit::{FakeOpenAi, Reply};
use carapace_types::{
    Confidentiality, FrontDoor, Integrity, Label, Principal, Secret, SessionId, Source,
};
use expect_test::{Expect, expect};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const SYSTEM: &str = "test system prompt";

struct Fixture {
    agent: Agent,
    gate: Gate,
    store: Arc<Store>,
    fake: FakeOpenAi,
    session: SessionId,
    owner: Principal,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn root(&self) -> std::path::PathBuf {
        self.dir.path().join("workspace")
    }

    async fn turn(&self, text: &str) -> Result<carapace_agent::TurnOutcome, AgentError> {
        self.agent
            .run_turn(&self.owner, &self.session, text, None)
            .await
    }

    fn history(&self) -> Vec<MessageRecord> {
        self.store.messages(&self.session).unwrap()
    }
}

struct Options {
    max_steps: usize,
    gate: GateConfig,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            max_steps: 8,
            gate: GateConfig {
                rate_per_minute: 10_000,
                ..GateConfig::default()
            },
        }
    }
}

async fn fixture(script: Vec<Reply>) -> Fixture {
    fixture_with(script, Options::default()).await
}

async fn fixture_with(script: Vec<Reply>, options: Options) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("workspace");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("notes.txt"), "buy milk\n").unwrap();
    let store = Arc::new(Store::open_in_memory().unwrap());
    let session = SessionId::new("s_agent_test");
    store.create_session(&session, "test", 0).unwrap();
    let gate = Gate::new(GateDeps {
        store: store.clone(),
        audit_key: Arc::new(AuditKey::generate()),
        workspace_root: root.clone(),
        policy: Policy::strict(),
        judge: None,
        scrubber: SharedScrubber::new(Scrubber::new(&[Secret::new(
            "sk-agent-test-0123456789abcdef".to_string(),
        )])),
        config: options.gate,
        exec: None,
        net: None,
        channels: None,
        mcp: None,
    })
    .unwrap();
    let fake = FakeOpenAi::start(script).await;
    let provider = OpenAiCompat::new(OpenAiConfig {
        request_timeout: Duration::from_secs(30),
        stall_timeout: Duration::from_secs(30),
        ..OpenAiConfig::new(fake.base_url())
    })
    .unwrap();
    let agent = Agent::new(
        Arc::new(provider),
        gate.clone(),
        store.clone(),
        AgentConfig {
            model: "test-model".into(),
            max_steps: options.max_steps,
            system_prompt: SYSTEM.into(),
        },
    );
    Fixture {
        agent,
        gate,
        store,
        fake,
        session,
        owner: Principal::owner(FrontDoor::Api),
        dir,
    }
}

fn calls(list: &[(&str, Value)]) -> Reply {
    Reply::ToolCalls(
        list.iter()
            .map(|(name, args)| (name.to_string(), args.clone()))
            .collect(),
    )
}

fn text(t: &str) -> Reply {
    Reply::Text(t.into())
}

async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// One line per stored message: role, source, label, the call it answers, the calls it
/// makes, and the start of its content.
fn render_records(history: &[MessageRecord]) -> String {
    history
        .iter()
        .map(|m| {
            let mut line = format!("{} {} {}", m.role.as_str(), m.source.as_string(), m.label);
            if let Some(id) = &m.tool_call_id {
                line += &format!(" answers={id}");
            }
            if let Some(calls) = m.tool_calls.as_ref().and_then(Value::as_array) {
                let names: Vec<String> = calls
                    .iter()
                    .map(|c| {
                        format!(
                            "{}:{}",
                            c["id"].as_str().unwrap(),
                            c["name"].as_str().unwrap()
                        )
                    })
                    .collect();
                line += &format!(" calls=[{}]", names.join(","));
            }
            if !m.content.is_empty() {
                let content: String = m.content.chars().take(60).collect();
                line += &format!(" | {content}");
            }
            line + "\n"
        })
        .collect()
}

/// One line per provider message, as the model would be sent it.
fn render_chat(messages: &[ChatMessage]) -> String {
    messages
        .iter()
        .map(|m| match m {
            ChatMessage::System { content } => format!("system: {content}\n"),
            ChatMessage::User { content } => format!("user: {content}\n"),
            ChatMessage::Assistant {
                content,
                tool_calls,
            } => {
                let calls: Vec<String> = tool_calls
                    .iter()
                    .map(|c| format!("{}:{}({})", c.id, c.name, c.arguments))
                    .collect();
                format!("assistant: {content:?} calls=[{}]\n", calls.join(", "))
            }
            ChatMessage::Tool {
                tool_call_id,
                content,
            } => format!("tool {tool_call_id}: {content}\n"),
        })
        .collect()
}

/// The rule every provider enforces: each assistant tool call is answered by a tool
/// message before the next user or assistant message, and no tool message answers a call
/// that was not made.
fn assert_valid(messages: &[ChatMessage]) {
    let mut open: Vec<&str> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        match m {
            ChatMessage::System { .. } => assert_eq!(i, 0, "system prompt only first"),
            ChatMessage::User { .. } => {
                assert!(
                    open.is_empty(),
                    "unanswered calls {open:?} before message {i}"
                );
            }
            ChatMessage::Assistant { tool_calls, .. } => {
                assert!(
                    open.is_empty(),
                    "unanswered calls {open:?} before message {i}"
                );
                open = tool_calls.iter().map(|c| c.id.as_str()).collect();
                let unique: HashSet<&str> = open.iter().copied().collect();
                assert_eq!(unique.len(), open.len(), "duplicate call ids at {i}");
            }
            ChatMessage::Tool { tool_call_id, .. } => {
                let at = open
                    .iter()
                    .position(|id| id == tool_call_id)
                    .unwrap_or_else(|| panic!("tool message {i} answers no open call"));
                open.remove(at);
            }
        }
    }
    assert!(open.is_empty(), "unanswered calls {open:?} at the end");
}

/// The same rule on the JSON body the fake received.
fn assert_valid_wire(request: &Value) {
    let mut open: Vec<String> = Vec::new();
    for m in request["messages"].as_array().unwrap() {
        match m["role"].as_str().unwrap() {
            "tool" => {
                let id = m["tool_call_id"].as_str().unwrap();
                let at = open.iter().position(|o| o == id);
                assert!(at.is_some(), "tool message answers no open call: {m}");
                open.remove(at.unwrap());
            }
            role => {
                assert!(
                    open.is_empty(),
                    "unanswered {open:?} before a {role} message"
                );
                if let Some(calls) = m["tool_calls"].as_array() {
                    open = calls
                        .iter()
                        .map(|c| c["id"].as_str().unwrap().to_string())
                        .collect();
                }
            }
        }
    }
    assert!(open.is_empty(), "unanswered {open:?} at the end");
}

#[tokio::test]
async fn two_tool_calls_in_one_response_then_an_answer() {
    let f = fixture(vec![
        calls(&[
            ("read_file", json!({ "path": "notes.txt" })),
            ("list_dir", json!({})),
        ]),
        text("You need to buy milk."),
    ])
    .await;
    let outcome = f.turn("what is in my notes?").await.unwrap();
    assert_eq!(outcome.text, "You need to buy milk.");
    assert_eq!((outcome.steps, outcome.tool_calls), (2, 2));
    assert!(
        outcome.usage.0 > 0 && outcome.usage.1 > 0,
        "{:?}",
        outcome.usage
    );

    expect![[r#"
        user owner trusted/public | what is in my notes?
        assistant model trusted/public calls=[call_1:read_file,call_2:list_dir]
        tool user_file trusted/private answers=call_1 | {"content":"buy milk\n","path":"notes.txt","total_bytes":9,"
        tool tool:list_dir trusted/private answers=call_2 | {"entries":[{"kind":"file","name":"notes.txt","size":9}],"pa
        assistant model trusted/private | You need to buy milk.
    "#]]
    .assert_eq(&render_records(&f.history()));

    // The private file raised the session's label.
    let session = f.store.session(&f.session).unwrap().unwrap();
    assert_eq!(session.label.confidentiality, Confidentiality::Private);

    // The second model call carried both results, each under the id of its call.
    let requests = f.fake.requests();
    assert_eq!(requests.len(), 2);
    let offered: Vec<&str> = requests[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        offered,
        [
            "read_file",
            "list_dir",
            "write_file",
            "search_files",
            "propose_plan"
        ]
    );
    let sent = requests[1]["messages"].as_array().unwrap();
    let roles: Vec<&str> = sent.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "tool", "tool"]);
    assert_eq!(sent[0]["content"], SYSTEM);
    let call_ids: Vec<&str> = sent[2]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(call_ids, ["call_1", "call_2"]);
    assert_eq!(sent[3]["tool_call_id"], "call_1");
    assert_eq!(sent[4]["tool_call_id"], "call_2");
    let read: Value = serde_json::from_str(sent[3]["content"].as_str().unwrap()).unwrap();
    assert_eq!(read["content"], "buy milk\n");
    let listed: Value = serde_json::from_str(sent[4]["content"].as_str().unwrap()).unwrap();
    assert_eq!(listed["entries"][0]["name"], "notes.txt");
    assert_valid_wire(&requests[1]);
}

#[tokio::test]
async fn streaming_reports_text_deltas_and_every_tool_call_and_result() {
    let answer = "Your notes say to buy milk, and nothing else.";
    let f = fixture(vec![
        calls(&[
            ("list_dir", json!({})),
            ("read_file", json!({ "path": "notes.txt" })),
        ]),
        text(answer),
    ])
    .await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let outcome = f
        .agent
        .run_turn(&f.owner, &f.session, "read my notes", Some(tx))
        .await
        .unwrap();
    let mut events = Vec::new();
    while let Some(e) = rx.recv().await {
        events.push(e);
    }
    assert_eq!(outcome.text, answer);
    let deltas: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::TextDelta(d) => Some(d.as_str()),
            _ => None,
        })
        .collect();
    assert!(deltas.len() > 1, "streamed in pieces: {deltas:?}");
    assert_eq!(deltas.concat(), answer);
    let tools: Vec<AgentEvent> = events
        .into_iter()
        .filter(|e| !matches!(e, AgentEvent::TextDelta(_)))
        .collect();
    assert_eq!(
        tools,
        [
            AgentEvent::ToolCall {
                id: "call_1".into(),
                name: "list_dir".into(),
                arguments: "{}".into()
            },
            AgentEvent::ToolResult {
                id: "call_1".into(),
                name: "list_dir".into(),
                ok: true,
                code: None
            },
            AgentEvent::ToolCall {
                id: "call_2".into(),
                name: "read_file".into(),
                arguments: r#"{"path":"notes.txt"}"#.into()
            },
            AgentEvent::ToolResult {
                id: "call_2".into(),
                name: "read_file".into(),
                ok: true,
                code: None
            },
        ]
    );
    for r in f.fake.requests() {
        assert_eq!(r["stream"], true, "an events channel means streaming");
    }
    // The persisted answer is the whole text, not the last delta.
    assert_eq!(f.history().last().unwrap().content, answer);
}

#[tokio::test]
async fn the_step_bound_stops_a_model_that_never_answers_and_leaves_a_valid_history() {
    let forever = || calls(&[("list_dir", json!({}))]);
    let f = fixture_with(
        vec![forever(), forever(), forever(), forever(), forever()],
        Options {
            max_steps: 3,
            ..Options::default()
        },
    )
    .await;
    let err = f.turn("loop please").await.unwrap_err();
    assert!(matches!(err, AgentError::TooManySteps(3)), "{err:?}");
    assert_eq!(f.fake.requests().len(), 3, "exactly max_steps model calls");

    let history = f.history();
    let roles: Vec<Role> = history.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [
            Role::User,
            Role::Assistant,
            Role::Tool,
            Role::Assistant,
            Role::Tool,
            Role::Assistant,
            Role::Tool
        ]
    );
    let messages = build_messages(SYSTEM, &history);
    assert_valid(&messages);
    assert_eq!(
        messages.len(),
        history.len() + 1,
        "nothing synthetic was needed"
    );

    // The session is usable again.
    f.fake.push(text("sorry, done now"));
    let outcome = f.turn("stop").await.unwrap();
    assert_eq!(outcome.text, "sorry, done now");
    assert_valid_wire(f.fake.requests().last().unwrap());
}

#[tokio::test]
async fn dropping_a_turn_while_the_model_thinks_cancels_it_cleanly() {
    let f = fixture(vec![
        calls(&[("list_dir", json!({}))]),
        Reply::Delayed(Duration::from_secs(60), Box::new(text("too late"))),
        text("fresh answer"),
    ])
    .await;
    tokio::select! {
        result = f.turn("list and think") => panic!("the turn finished: {result:?}"),
        () = eventually("the second model call", || f.fake.requests().len() == 2) => {}
    }
    // The turn's future is dropped here; the upstream request goes with it.
    eventually("the fake to see the disconnect", || {
        f.fake.disconnects() == 1
    })
    .await;
    assert_eq!(
        f.history().len(),
        3,
        "user, assistant with a call, its result"
    );

    let outcome = f.turn("are you there?").await.unwrap();
    assert_eq!(outcome.text, "fresh answer");
    let last = f.fake.requests().pop().unwrap();
    assert_valid_wire(&last);
    let roles: Vec<&str> = last["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "tool", "user"]);
    assert_valid(&build_messages(SYSTEM, &f.history()));
}

#[tokio::test]
async fn dropping_a_turn_mid_tool_call_gets_the_call_a_cancelled_result() {
    let f = fixture(vec![
        calls(&[
            ("list_dir", json!({})),
            ("write_file", json!({ "path": "out.txt", "content": "x" })),
        ]),
        text("ok, I will not write it"),
    ])
    .await;
    tokio::select! {
        result = f.turn("list, then write") => panic!("the turn finished: {result:?}"),
        () = eventually("the approval request", || !f.gate.pending_approvals().is_empty()) => {}
    }
    // Dropping the turn withdrew the approval and wrote nothing.
    assert!(f.gate.pending_approvals().is_empty());
    assert!(!f.root().join("out.txt").exists());
    expect![[r#"
        user owner trusted/public | list, then write
        assistant model trusted/public calls=[call_1:list_dir,call_2:write_file]
        tool tool:list_dir trusted/private answers=call_1 | {"entries":[{"kind":"file","name":"notes.txt","size":9}],"pa
    "#]]
    .assert_eq(&render_records(&f.history()));

    f.turn("never mind").await.unwrap();
    let last = f.fake.requests().pop().unwrap();
    assert_valid_wire(&last);
    let sent = last["messages"].as_array().unwrap();
    assert_eq!(sent[4]["role"], "tool");
    assert_eq!(sent[4]["tool_call_id"], "call_2");
    let cancelled: Value = serde_json::from_str(sent[4]["content"].as_str().unwrap()).unwrap();
    assert_eq!(cancelled["error"]["code"], "CANCELLED");
    assert_eq!(sent[5]["role"], "user");
}

#[tokio::test]
async fn a_refused_call_becomes_a_typed_error_result_and_the_turn_goes_on() {
    let f = fixture_with(
        vec![
            calls(&[(
                "write_file",
                json!({ "path": "out.txt", "content": "hello" }),
            )]),
            text("I could not write the file: nobody approved it."),
        ],
        Options {
            gate: GateConfig {
                approval_timeout: Duration::from_millis(100),
                ..Options::default().gate
            },
            ..Options::default()
        },
    )
    .await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let outcome = f
        .agent
        .run_turn(&f.owner, &f.session, "write hello to out.txt", Some(tx))
        .await
        .unwrap();
    assert_eq!(
        outcome.text,
        "I could not write the file: nobody approved it."
    );
    assert_eq!((outcome.steps, outcome.tool_calls), (2, 1));
    assert!(!f.root().join("out.txt").exists());

    let mut results = Vec::new();
    while let Some(e) = rx.recv().await {
        if let AgentEvent::ToolResult { ok, code, .. } = e {
            results.push((ok, code));
        }
    }
    assert_eq!(results, [(false, Some("CONFIRMATION_TIMEOUT".to_string()))]);

    let history = f.history();
    let tool = &history[2];
    assert_eq!(tool.role, Role::Tool);
    assert_eq!(tool.source, Source::Tool("write_file".into()));
    assert_eq!(tool.label, Label::TRUSTED_PUBLIC);
    let content: Value = serde_json::from_str(&tool.content).unwrap();
    let error = &content["error"];
    assert_eq!(error["code"], "CONFIRMATION_TIMEOUT");
    assert_eq!(error["stage"], "approve");
    assert_eq!(error["retriable"], true);
    assert_eq!(error["rule"], "preset.strict");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));

    // The model was shown exactly that error object.
    let sent = &f.fake.requests()[1]["messages"];
    assert_eq!(sent[3]["content"].as_str().unwrap(), tool.content);
    // Nothing the session saw made it less trusted.
    let label = f.store.session(&f.session).unwrap().unwrap().label;
    assert_eq!(label.integrity, Integrity::Trusted);
}

#[tokio::test]
async fn a_provider_error_surfaces_typed_and_keeps_the_user_message() {
    let f = fixture(vec![
        Reply::Error {
            status: 500,
            message: "the model is on fire".into(),
        },
        text("better now"),
    ])
    .await;
    let err = f.turn("hello?").await.unwrap_err();
    match err {
        AgentError::Provider(ProviderError::Http {
            status, message, ..
        }) => {
            assert_eq!(status, 500);
            assert_eq!(message, "the model is on fire");
        }
        other => panic!("expected a provider error, got {other:?}"),
    }
    let history = f.history();
    assert_eq!(history.len(), 1);
    assert_eq!(
        (history[0].role, history[0].content.as_str()),
        (Role::User, "hello?")
    );

    // The next turn sends both user messages.
    assert_eq!(f.turn("hello again").await.unwrap().text, "better now");
    let second = &f.fake.requests()[1];
    let roles: Vec<&str> = second["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "user"]);
}

#[tokio::test]
async fn a_turn_in_an_unknown_session_persists_nothing() {
    let f = fixture(vec![text("unused")]).await;
    let ghost = SessionId::new("s_ghost");
    let err = f
        .agent
        .run_turn(&f.owner, &ghost, "hi", None)
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::NoSession), "{err:?}");
    assert!(f.store.messages(&ghost).unwrap().is_empty());
    assert!(f.fake.requests().is_empty());
}

// build_messages on crafted histories: data in, rendered provider messages out.

fn record(seq: i64, role: Role, content: &str) -> MessageRecord {
    let source = match role {
        Role::User => Source::Owner,
        _ => Source::Model,
    };
    MessageRecord {
        seq,
        role,
        content: content.into(),
        tool_calls: None,
        tool_call_id: None,
        source,
        label: Label::TRUSTED_PUBLIC,
        created_ms: seq,
    }
}

fn asks(seq: i64, ids: &[&str]) -> MessageRecord {
    let calls: Vec<Value> = ids
        .iter()
        .map(|id| json!({ "id": id, "name": "list_dir", "arguments": "{}" }))
        .collect();
    MessageRecord {
        tool_calls: Some(Value::Array(calls)),
        ..record(seq, Role::Assistant, "")
    }
}

fn answers(seq: i64, id: &str) -> MessageRecord {
    MessageRecord {
        tool_call_id: Some(id.into()),
        source: Source::Tool("list_dir".into()),
        ..record(seq, Role::Tool, "{\"entries\":[]}")
    }
}

fn check(history: &[MessageRecord], expected: Expect) {
    let messages = build_messages("sys", history);
    assert_valid(&messages);
    expected.assert_eq(&render_chat(&messages));
}

#[test]
fn build_messages_answers_calls_a_cut_turn_left_open() {
    // The turn was cut after the first of two results, then the owner spoke again.
    check(
        &[
            record(1, Role::User, "hi"),
            asks(2, &["a", "b"]),
            answers(3, "a"),
            record(4, Role::User, "still there?"),
        ],
        expect![[r#"
            system: sys
            user: hi
            assistant: None calls=[a:list_dir({}), b:list_dir({})]
            tool a: {"entries":[]}
            tool b: {"error":{"code":"CANCELLED","message":"the turn was interrupted before this call finished"}}
            user: still there?
        "#]],
    );
    // The turn was cut before any result, at the end of the history.
    check(
        &[record(1, Role::User, "hi"), asks(2, &["a"])],
        expect![[r#"
            system: sys
            user: hi
            assistant: None calls=[a:list_dir({})]
            tool a: {"error":{"code":"CANCELLED","message":"the turn was interrupted before this call finished"}}
        "#]],
    );
    // A complete history passes through unchanged; stored system messages are dropped.
    check(
        &[
            record(1, Role::System, "stored system text"),
            record(2, Role::User, "hi"),
            MessageRecord {
                content: "let me look".into(),
                ..asks(3, &["a"])
            },
            answers(4, "a"),
            record(5, Role::Assistant, "empty"),
        ],
        expect![[r#"
            system: sys
            user: hi
            assistant: Some("let me look") calls=[a:list_dir({})]
            tool a: {"entries":[]}
            assistant: Some("empty") calls=[]
        "#]],
    );
}

#[test]
fn build_messages_answers_a_cut_call_whose_id_an_earlier_turn_used() {
    // Some OpenAI-compatible servers number calls per response (`call_0`, ...), so an
    // id comes back in a later turn. The earlier answer must not count for the later
    // call, or the history sent next is missing a tool result and the provider refuses it.
    check(
        &[
            record(1, Role::User, "list"),
            asks(2, &["call_0"]),
            answers(3, "call_0"),
            record(4, Role::Assistant, "done"),
            record(5, Role::User, "list again"),
            asks(6, &["call_0"]),
            record(7, Role::User, "hello?"),
        ],
        expect![[r#"
            system: sys
            user: list
            assistant: None calls=[call_0:list_dir({})]
            tool call_0: {"entries":[]}
            assistant: Some("done") calls=[]
            user: list again
            assistant: None calls=[call_0:list_dir({})]
            tool call_0: {"error":{"code":"CANCELLED","message":"the turn was interrupted before this call finished"}}
            user: hello?
        "#]],
    );
}
