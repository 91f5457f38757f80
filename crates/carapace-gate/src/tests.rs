//! Gate tests: each one tries to get a call past a stage it should not pass.

use std::sync::Arc;
use std::time::Duration;

use carapace_policy::Policy;
use carapace_store::{AuditKey, Store};
use carapace_types::{
    Confidentiality, ErrorCode, FrontDoor, Integrity, Label, Principal, Secret, SessionId, Source,
    Stage,
};
use serde_json::{Value, json};

use super::*;
use crate::catalog::{Catalog, RawResult, ToolDef, ToolFailure, schema_is_closed};

pub(crate) struct Fixture {
    gate: Gate,
    store: Arc<Store>,
    key: Arc<AuditKey>,
    session: SessionId,
    owner: Principal,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn root(&self) -> std::path::PathBuf {
        self.dir.path().join("workspace")
    }

    async fn call(&self, tool: &str, args: Value) -> Result<ToolOutput, GateError> {
        self.gate
            .call(CallRequest {
                principal: &self.owner,
                session: &self.session,
                call_id: "call_1",
                tool,
                args: RawArgs::Json(&args),
            })
            .await
    }

    fn outcomes(&self) -> Vec<String> {
        self.store
            .audit_tail(1000)
            .unwrap()
            .iter()
            .map(|e| {
                let r = &e.record;
                let code = r.get("code").and_then(Value::as_str).unwrap_or("-");
                format!(
                    "{} {} {}",
                    r["tool"].as_str().unwrap_or("?"),
                    r["outcome"].as_str().unwrap_or("?"),
                    code
                )
            })
            .collect()
    }
}

const API_KEY: &str = "sk-test-0123456789abcdefghijklmnop";

fn fixture_with(config: GateConfig, extra: Vec<ToolDef>) -> Fixture {
    fixture_policy(Policy::strict(), None, config, extra)
}

fn fixture_policy(
    policy: Policy,
    judge: Option<Arc<dyn RuleJudge>>,
    config: GateConfig,
    extra: Vec<ToolDef>,
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("workspace");
    std::fs::create_dir(&root).unwrap();
    let store = Arc::new(Store::open_in_memory().unwrap());
    let key = Arc::new(AuditKey::generate());
    let session = SessionId::new("s_test");
    store.create_session(&session, "test", 0).unwrap();
    let mut catalog = builtin::catalog();
    let mut config = config;
    for tool in extra {
        config.granted_tools.push(tool.name.to_string());
        catalog.add(tool);
    }
    let gate = Gate::with_catalog(
        GateDeps {
            store: store.clone(),
            audit_key: key.clone(),
            workspace_root: root.clone(),
            policy,
            judge,
            scrubber: SharedScrubber::new(Scrubber::new(&[Secret::new(API_KEY.to_string())])),
            config,
            exec: None,
            net: None,
            channels: None,
            mcp: None,
        },
        catalog,
    )
    .unwrap();
    Fixture {
        gate,
        store,
        key,
        session,
        owner: Principal::owner(FrontDoor::Api),
        dir,
    }
}

fn fixture() -> Fixture {
    fixture_with(GateConfig::default(), Vec::new())
}

/// Answers every approval request with `approve`.
fn auto_answer(gate: &Gate, approve: bool) {
    let gate = gate.clone();
    let mut events = gate.subscribe();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if let GateEvent::ApprovalRequested(info) = event {
                gate.decide_approval(&Principal::owner(FrontDoor::Api), &info.id, approve)
                    .unwrap();
            }
        }
    });
}

#[tokio::test]
async fn read_passes_every_stage_and_is_audited() {
    let f = fixture();
    std::fs::write(f.root().join("notes.txt"), "hello").unwrap();
    let out = f
        .call("read_file", json!({ "path": "notes.txt" }))
        .await
        .unwrap();
    assert_eq!(out.content["content"], "hello");
    assert_eq!(out.source, Source::UserFile);
    assert_eq!(out.label.confidentiality, Confidentiality::Private);
    // A read has no side effect: its decision is recorded once, with its result.
    assert_eq!(f.outcomes(), ["read_file executed -"]);
    assert_eq!(f.store.verify_audit(&f.key).unwrap().records, 1);
    // The session saw private data, so its label rose.
    let label = f.store.session(&f.session).unwrap().unwrap().label;
    assert_eq!(label.confidentiality, Confidentiality::Private);
}

#[tokio::test]
async fn unknown_and_ungranted_tools_do_not_exist() {
    let mut config = GateConfig::default();
    config.granted_tools.retain(|t| t != "write_file");
    let f = fixture_with(config, Vec::new());
    for name in ["exec", "write_file", "read_file\0", ""] {
        let err = f.call(name, json!({})).await.unwrap_err();
        assert_eq!(
            (err.code, err.stage),
            (ErrorCode::UnknownTool, Stage::Resolve),
            "{name:?}"
        );
    }
    assert!(f.gate.tool_specs().iter().all(|t| t.name != "write_file"));
    assert_eq!(f.outcomes().len(), 4, "every refusal is audited");
}

#[tokio::test]
async fn arguments_are_checked_against_closed_schemas() {
    let f = fixture();
    let cases = [
        (json!({ "path": "a", "bogus": 1 }), "/"),
        (json!({ "path": 42 }), "/path"),
        (json!({}), "/"),
        (json!({ "path": "a", "max_bytes": -1 }), "/max_bytes"),
        (json!("just a string"), "/"),
    ];
    for (args, field) in cases {
        let err = f.call("read_file", args.clone()).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::ValidationFailed, "{args}");
        assert_eq!(err.field.as_deref(), Some(field), "{args}: {err}");
    }
    let err = f
        .call("read_file", json!({ "path": "a", "bogus": 1 }))
        .await
        .unwrap_err();
    assert!(
        err.message.contains("bogus"),
        "the unknown field is named: {}",
        err.message
    );
}

#[tokio::test]
async fn malformed_and_oversized_argument_text_is_refused() {
    let f = fixture_with(
        GateConfig {
            max_args_bytes: 1024,
            ..GateConfig::default()
        },
        Vec::new(),
    );
    let big = format!("{{\"path\":\"{}\"}}", "a".repeat(2000));
    for text in ["{\"path\": ", "[1,2", "\u{0}", big.as_str()] {
        let err = f
            .gate
            .call(CallRequest {
                principal: &f.owner,
                session: &f.session,
                call_id: "c",
                tool: "read_file",
                args: RawArgs::Text(text),
            })
            .await
            .unwrap_err();
        assert_eq!(
            (err.code, err.stage),
            (ErrorCode::ValidationFailed, Stage::Validate)
        );
    }
}

#[tokio::test]
async fn write_asks_and_runs_only_when_approved() {
    let f = fixture();
    auto_answer(&f.gate, true);
    let out = f
        .call(
            "write_file",
            json!({ "path": "out.txt", "content": "done" }),
        )
        .await
        .unwrap();
    assert_eq!(out.content["bytes"], 4);
    assert_eq!(
        std::fs::read_to_string(f.root().join("out.txt")).unwrap(),
        "done"
    );
    assert_eq!(
        f.outcomes(),
        [
            "write_file asked -",
            "write_file approved -",
            "write_file allowed -",
            "write_file executed -"
        ]
    );
}

#[tokio::test]
async fn denied_write_leaves_no_file() {
    let f = fixture();
    auto_answer(&f.gate, false);
    let err = f
        .call("write_file", json!({ "path": "out.txt", "content": "x" }))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code, err.stage),
        (ErrorCode::ConfirmationDenied, Stage::Approve)
    );
    assert_eq!(err.rule.as_deref(), Some("preset.strict"));
    assert!(!f.root().join("out.txt").exists());
    assert_eq!(
        f.outcomes(),
        [
            "write_file asked -",
            "write_file denied CONFIRMATION_DENIED"
        ]
    );
}

#[tokio::test]
async fn unanswered_approval_times_out_and_is_withdrawn() {
    let config = GateConfig {
        approval_timeout: Duration::from_millis(50),
        ..GateConfig::default()
    };
    let f = fixture_with(config, Vec::new());
    let err = f
        .call("write_file", json!({ "path": "x", "content": "x" }))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ConfirmationTimeout);
    assert!(err.retriable);
    assert!(f.gate.pending_approvals().is_empty());
}

#[tokio::test]
async fn a_cancelled_call_withdraws_its_approval_and_is_recorded() {
    let f = fixture();
    let mut events = f.gate.subscribe();
    let call = f.call("write_file", json!({ "path": "x", "content": "x" }));
    let waited = tokio::time::timeout(Duration::from_millis(100), call).await;
    assert!(waited.is_err(), "the call waits for the owner");
    assert!(
        f.gate.pending_approvals().is_empty(),
        "dropping the call withdraws the request"
    );
    // The owners' front ends hear that the request is gone...
    let asked = match events.try_recv().unwrap() {
        GateEvent::ApprovalRequested(info) => info.id,
        other => panic!("{other:?}"),
    };
    match events.try_recv().unwrap() {
        GateEvent::ApprovalResolved { id, approved } => assert_eq!((id, approved), (asked, false)),
        other => panic!("{other:?}"),
    }
    // ...and the decision has its outcome in the log.
    assert_eq!(
        f.outcomes(),
        ["write_file asked -", "write_file cancelled -"]
    );
    assert!(!f.root().join("x").exists());
    let err = f
        .gate
        .decide_approval(&f.owner, "ap_unknown", true)
        .unwrap_err();
    assert_eq!(err, ApprovalDecisionError::NotFound);
}

#[tokio::test]
async fn path_escapes_are_refused_and_audited() {
    let f = fixture();
    let outside = f.dir.path().join("secret.txt");
    std::fs::write(&outside, "outside").unwrap();
    std::os::unix::fs::symlink(&outside, f.root().join("link")).unwrap();
    std::os::unix::fs::symlink(f.dir.path(), f.root().join("dirlink")).unwrap();
    let outside_str = outside.to_str().unwrap().to_string();
    for path in [
        "../secret.txt",
        "a/../../secret.txt",
        outside_str.as_str(),
        "link",
        "dirlink/secret.txt",
    ] {
        let err = f
            .call("read_file", json!({ "path": path }))
            .await
            .unwrap_err();
        assert_eq!(
            (err.code, err.stage),
            (ErrorCode::ToolError, Stage::Execute),
            "{path}"
        );
        // The model may see back the path it gave, never the workspace's host path.
        assert!(
            !err.message.contains(f.root().to_str().unwrap()),
            "host path leaked: {}",
            err.message
        );
    }
    let refused = f
        .outcomes()
        .iter()
        .filter(|o| o.as_str() == "read_file failed TOOL_ERROR")
        .count();
    assert_eq!(refused, 5);
    f.store.verify_audit(&f.key).unwrap();
}

#[tokio::test]
async fn secrets_in_results_are_scrubbed_and_raise_the_label() {
    let f = fixture();
    std::fs::write(
        f.root().join("env"),
        format!("OPENAI_API_KEY={API_KEY}\nother=ghp_abcdefghijklmnopqrstuvwxyz0123456789"),
    )
    .unwrap();
    let out = f.call("read_file", json!({ "path": "env" })).await.unwrap();
    let text = out.content.to_string();
    assert!(!text.contains(API_KEY) && !text.contains("ghp_"), "{text}");
    assert!(text.contains("[REDACTED]"));
    let log = serde_json::to_string(
        &f.store
            .audit_tail(10)
            .unwrap()
            .iter()
            .map(|e| e.record.clone())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(!log.contains(API_KEY));
    // The record says where in the result something was withheld, and how often.
    let executed = f
        .store
        .audit_tail(10)
        .unwrap()
        .into_iter()
        .map(|e| e.record)
        .find(|r| r["outcome"] == "executed")
        .unwrap();
    assert_eq!(
        executed["redactions"],
        json!([{ "path": "/content", "count": 2 }]),
        "{executed}"
    );
}

#[tokio::test]
async fn secret_arguments_never_enter_the_audit_log() {
    let f = fixture();
    auto_answer(&f.gate, true);
    let big = "x".repeat(10_000);
    // A known secret in the arguments is refused outright (and not logged), raw or
    // encoded: secrets are injected where the owner configured them, never passed.
    for content in [
        format!("key={API_KEY}"),
        format!("key={}", hex::encode(API_KEY)),
    ] {
        let err = f
            .call("write_file", json!({ "path": "k", "content": content }))
            .await
            .unwrap_err();
        assert_eq!(
            (err.code, err.stage),
            (ErrorCode::ValidationFailed, Stage::Validate),
            "{err:?}"
        );
    }
    assert!(!f.root().join("k").exists());
    f.call("write_file", json!({ "path": "big", "content": big }))
        .await
        .unwrap();
    let log: Vec<String> = f
        .store
        .audit_tail(100)
        .unwrap()
        .iter()
        .map(|e| e.record.to_string())
        .collect();
    let log = log.join("\n");
    assert!(!log.contains(API_KEY));
    assert!(
        !log.contains(&"x".repeat(300)),
        "large payloads are stored as digests"
    );
    assert!(log.contains("\"bytes\":10000"));
}

#[tokio::test]
async fn files_the_agent_wrote_keep_the_label_they_were_written_with() {
    let f = fixture();
    auto_answer(&f.gate, true);
    let tainted = Label {
        integrity: Integrity::Untrusted,
        confidentiality: Confidentiality::Public,
    };
    f.store.raise_session_label(&f.session, tainted, 1).unwrap();
    f.call(
        "write_file",
        json!({ "path": "copy.txt", "content": "from the web" }),
    )
    .await
    .unwrap();

    let fresh = SessionId::new("s_fresh");
    f.store.create_session(&fresh, "fresh", 2).unwrap();
    let args = json!({ "path": "copy.txt" });
    let out = f
        .gate
        .call(CallRequest {
            principal: &f.owner,
            session: &fresh,
            call_id: "c",
            tool: "read_file",
            args: RawArgs::Json(&args),
        })
        .await
        .unwrap();
    assert_eq!(out.source, Source::AgentFile);
    assert_eq!(out.label.integrity, Integrity::Untrusted);
    assert_eq!(
        f.store.session(&fresh).unwrap().unwrap().label.integrity,
        Integrity::Untrusted
    );

    // The same content under another name (here a symlink inside the workspace) is
    // still tainted.
    std::os::unix::fs::symlink("copy.txt", f.root().join("alias.txt")).unwrap();
    let out = f
        .call("read_file", json!({ "path": "alias.txt" }))
        .await
        .unwrap();
    assert_eq!(out.content["content"], "from the web");
    assert_eq!(out.label.integrity, Integrity::Untrusted);

    // Edited by someone else since: no longer the agent's file, and still tainted.
    std::fs::write(f.root().join("copy.txt"), "edited").unwrap();
    let out = f
        .call("read_file", json!({ "path": "copy.txt" }))
        .await
        .unwrap();
    assert_eq!(out.source, Source::UserFile);
    assert_eq!(out.label.integrity, Integrity::Untrusted);
}

fn test_tool(
    name: &'static str,
    f: fn() -> Result<RawResult, ToolFailure>,
    delay: Duration,
) -> ToolDef {
    ToolDef::new(
        name,
        "test tool",
        carapace_types::EffectClass::Read,
        json!({ "type": "object", "additionalProperties": false }),
        Arc::new(move |_ctx, _args| {
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                f()
            })
        }),
    )
}

#[tokio::test]
async fn a_panicking_or_hanging_executor_fails_typed_and_the_gate_keeps_working() {
    let config = GateConfig {
        tool_timeout: Duration::from_millis(100),
        ..GateConfig::default()
    };
    let f = fixture_with(
        config,
        vec![
            test_tool(
                "boom",
                || panic!("executor bug with /host/path detail"),
                Duration::ZERO,
            ),
            test_tool(
                "hang",
                || Err(ToolFailure("unreachable".into())),
                Duration::from_secs(3600),
            ),
        ],
    );
    let err = f.call("boom", json!({})).await.unwrap_err();
    assert_eq!(
        (err.code, err.stage),
        (ErrorCode::ToolError, Stage::Execute)
    );
    assert!(!err.message.contains("/host/path"), "{}", err.message);
    let err = f.call("hang", json!({})).await.unwrap_err();
    assert_eq!(
        (err.code, err.stage, err.retriable),
        (ErrorCode::ToolTimeout, Stage::Execute, true)
    );
    std::fs::write(f.root().join("a"), "still alive").unwrap();
    let out = f.call("read_file", json!({ "path": "a" })).await.unwrap();
    assert_eq!(out.content["content"], "still alive");
    f.store.verify_audit(&f.key).unwrap();
}

#[tokio::test]
async fn rate_limit_counts_denied_attempts_too() {
    let f = fixture_with(
        GateConfig {
            rate_per_minute: 2,
            ..GateConfig::default()
        },
        Vec::new(),
    );
    // Two malformed attempts use up the budget...
    for _ in 0..2 {
        let err = f
            .call("read_file", json!({ "bogus": true }))
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::ValidationFailed);
    }
    // ...so a valid third call is rate limited.
    let err = f
        .call("read_file", json!({ "path": "a" }))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code, err.stage),
        (ErrorCode::RateLimited, Stage::Authorize)
    );
    assert!(err.retry_after.is_some_and(|d| d > Duration::from_secs(1)));
}

#[tokio::test]
async fn an_unknown_session_is_refused_at_the_envelope() {
    let f = fixture();
    let ghost = SessionId::new("s_ghost");
    let args = json!({ "path": "a" });
    let err = f
        .gate
        .call(CallRequest {
            principal: &f.owner,
            session: &ghost,
            call_id: "c",
            tool: "read_file",
            args: RawArgs::Json(&args),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code, err.stage),
        (ErrorCode::Unauthorized, Stage::Envelope)
    );
}

#[test]
fn every_builtin_schema_is_closed() {
    let catalog: Catalog = builtin::catalog();
    for spec in catalog.specs() {
        assert!(schema_is_closed(&spec.parameters), "{}", spec.name);
    }
    assert!(!schema_is_closed(
        &json!({ "type": "object", "properties": {} })
    ));
    assert!(!schema_is_closed(&json!({
        "type": "object", "additionalProperties": false,
        "properties": { "inner": { "type": "object" } }
    })));
}

#[test]
fn errors_serialise_to_the_documented_shape() {
    let err =
        GateError::new(ErrorCode::ValidationFailed, Stage::Validate, "bad").with_field("/path");
    expect_test::expect![[r#"{"code":"VALIDATION_FAILED","field":"/path","message":"bad","retriable":false,"stage":"validate"}"#]]
        .assert_eq(&err.to_json().to_string());
}

#[tokio::test]
async fn a_secret_cut_by_max_bytes_or_an_excerpt_never_leaks_in_part() {
    let f = fixture();
    let prefix = "x".repeat(100);
    std::fs::write(f.root().join("env"), format!("{prefix}{API_KEY}\n")).unwrap();
    // The limit falls in the middle of the key.
    let out = f
        .call("read_file", json!({ "path": "env", "max_bytes": 110 }))
        .await
        .unwrap();
    let text = out.content["content"].as_str().unwrap();
    assert_eq!(out.content["truncated"], true);
    assert!(
        !text.contains(&API_KEY[..6]),
        "part of the key leaked: {text}"
    );

    // A search excerpt (300 characters around the match) would start inside the key.
    let line = format!("{}{API_KEY}{}MARK", "y".repeat(10), "z".repeat(280));
    std::fs::write(f.root().join("long.txt"), format!("{line}\n")).unwrap();
    let out = f
        .call("search_files", json!({ "query": "MARK" }))
        .await
        .unwrap();
    let shown = out.content["matches"][0]["text"].as_str().unwrap();
    assert!(shown.contains("MARK"), "{shown}");
    for cut in 6..API_KEY.len() {
        assert!(
            !shown.contains(&API_KEY[API_KEY.len() - cut..]),
            "a tail of the key leaked: {shown}"
        );
    }
}

#[tokio::test]
async fn the_approval_preview_shows_the_path_first_and_marks_what_it_cuts() {
    let f = fixture();
    let mut events = f.gate.subscribe();
    let content = format!("{}MALICIOUS", " ".repeat(2100));
    let call = f.call(
        "write_file",
        json!({ "content": content, "path": "target.txt" }),
    );
    let _ = tokio::time::timeout(Duration::from_millis(100), call).await;
    let GateEvent::ApprovalRequested(info) = events.try_recv().unwrap() else {
        panic!("no request")
    };
    let first_line = info.args_preview.lines().next().unwrap();
    assert_eq!(first_line, r#"path = "target.txt""#);
    assert!(
        info.args_preview
            .contains("(+1709 more characters, 2109 in all, sha256 "),
        "{}",
        info.args_preview
    );
}

#[tokio::test]
async fn arguments_nested_too_deeply_are_refused_and_still_audited() {
    let f = fixture();
    let mut deep = json!("leaf");
    // One level short of what the store can hold, so a record that copied the arguments
    // would be one level too deep to append.
    for _ in 0..126 {
        deep = json!([deep]);
    }
    let err = f
        .call("read_file", json!({ "path": deep }))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ValidationFailed);
    assert_eq!(f.outcomes(), ["read_file denied VALIDATION_FAILED"]);
    f.store.verify_audit(&f.key).unwrap();
}

mod channels;
mod policy;
