//! Approvals through the HTTP API: a `write` call waits for the owner, who lets it go
//! ahead or refuses it.

use carapace_testkit::{FakeOpenAi, Reply};
use reqwest::Method;
use serde_json::json;

use crate::util::{
    Daemon, TestDir, cara, error_code, json_response, outcomes, tool_call_records, tool_messages,
    wait_requests,
};

fn write_call(path: &str, content: &str) -> Reply {
    Reply::ToolCalls(vec![(
        "write_file".into(),
        json!({ "path": path, "content": content }),
    )])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_approves_or_denies_through_the_api() {
    let fake = FakeOpenAi::start(vec![
        write_call("todo.txt", "buy milk"),
        Reply::Text("Saved.".into()),
        write_call("denied.txt", "should never exist"),
        Reply::Text("Not saved.".into()),
    ])
    .await;
    let dir = TestDir::strict();
    let daemon = Daemon::start(&dir, &fake).await;

    // Approve.
    let turn = tokio::spawn(
        daemon
            .authed(Method::POST, "/v1/chat/completions")
            .json(&json!({ "messages": [{ "role": "user", "content": "note: buy milk" }] }))
            .send(),
    );
    let approval = daemon.pending_approval().await;
    let id = approval["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("ap_"), "{approval}");
    assert_eq!(approval["tool"], "write_file");
    assert_eq!(approval["rule"], "preset.strict");
    assert!(
        approval["args"].as_str().unwrap().contains("todo.txt"),
        "{approval}"
    );
    assert!(
        !dir.workspace().join("todo.txt").exists(),
        "nothing is written before the owner answers"
    );
    let (status, body) = daemon
        .post(
            &format!("/api/approvals/{id}"),
            &json!({ "decision": "approve" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({ "id": id, "decision": "approve" }));
    let (status, body) = json_response(turn.await.unwrap().unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "Saved.");
    assert_eq!(
        std::fs::read_to_string(dir.workspace().join("todo.txt")).unwrap(),
        "buy milk"
    );
    let (_, body) = daemon.get("/api/approvals").await;
    assert_eq!(body["approvals"], json!([]), "answered approvals are gone");
    // Answering twice is not possible.
    let (status, body) = daemon
        .post(
            &format!("/api/approvals/{id}"),
            &json!({ "decision": "deny" }),
        )
        .await;
    assert_eq!((status.as_u16(), error_code(&body)), (404, "NOT_FOUND"));

    // Deny.
    let turn = tokio::spawn(
        daemon
            .authed(Method::POST, "/v1/chat/completions")
            .json(&json!({ "messages": [{ "role": "user", "content": "write another" }] }))
            .send(),
    );
    let approval = daemon.pending_approval().await;
    let id = approval["id"].as_str().unwrap();
    let (status, body) = daemon
        .post(
            &format!("/api/approvals/{id}"),
            &json!({ "decision": "deny" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = json_response(turn.await.unwrap().unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "Not saved.");
    assert!(!dir.workspace().join("denied.txt").exists());
    let requests = wait_requests(&fake, 4).await;
    let tools = tool_messages(&requests[3]);
    let refusal = tools.last().unwrap()["content"].as_str().unwrap();
    assert!(refusal.contains("CONFIRMATION_DENIED"), "{refusal}");

    let records = tool_call_records(&dir, "write_file").await;
    assert_eq!(
        outcomes(&records),
        [
            "asked", "approved", "allowed", "executed", "asked", "denied"
        ],
        "{records:?}"
    );
    assert_eq!(records[5]["code"], "CONFIRMATION_DENIED");

    // Bad answers get typed errors.
    let (status, body) = daemon
        .post(
            "/api/approvals/ap_nonexistent",
            &json!({ "decision": "approve" }),
        )
        .await;
    assert_eq!((status.as_u16(), error_code(&body)), (404, "NOT_FOUND"));
    let (status, body) = daemon
        .post(
            "/api/approvals/ap_nonexistent",
            &json!({ "decision": "maybe" }),
        )
        .await;
    assert!(matches!(status.as_u16(), 400 | 422), "{status} {body}");
    error_code(&body);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("maybe"),
        "the message names the bad value: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_and_answers_approvals() {
    let fake = FakeOpenAi::start(vec![
        write_call("cli.txt", "approved on the command line"),
        Reply::Text("Done.".into()),
    ])
    .await;
    let dir = TestDir::strict();
    let daemon = Daemon::start(&dir, &fake).await;

    let out = cara(&dir).args(["status"]).run().await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(out.stdout.contains("gateway: running"), "{out:#?}");
    assert!(out.stdout.contains("model: fake-model"), "{out:#?}");

    let turn = tokio::spawn(
        daemon
            .authed(Method::POST, "/v1/chat/completions")
            .json(&json!({ "messages": [{ "role": "user", "content": "save it" }] }))
            .send(),
    );
    let id = daemon.pending_approval().await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = cara(&dir).args(["approvals", "list"]).run().await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(out.stdout.contains(&id), "{out:#?}");
    assert!(out.stdout.contains("write_file"), "{out:#?}");

    let out = cara(&dir).args(["approvals", "approve", &id]).run().await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let (status, body) = json_response(turn.await.unwrap().unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        std::fs::read_to_string(dir.workspace().join("cli.txt")).unwrap(),
        "approved on the command line"
    );

    let out = cara(&dir).args(["approvals", "deny", &id]).run().await;
    assert_eq!(out.code, Some(1), "an answered approval is gone: {out:#?}");
    assert!(out.stderr.contains("NOT_FOUND"), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_a_plan_and_approves_some_of_its_steps() {
    let plan = json!({
        "goal": "two notes",
        "steps": [
            { "tool": "write_file", "args": { "path": { "exact": "one.txt" } }, "why": "first" },
            { "tool": "write_file", "args": { "path": { "exact": "two.txt" } }, "why": "second" }
        ]
    });
    let fake = FakeOpenAi::start(vec![
        Reply::ToolCalls(vec![("propose_plan".into(), plan)]),
        write_call("two.txt", "under the plan"),
        Reply::Text("Done.".into()),
    ])
    .await;
    // Strict: without the grant the write would ask.
    let dir = TestDir::strict();
    let daemon = Daemon::start(&dir, &fake).await;
    let turn = tokio::spawn(
        daemon
            .authed(Method::POST, "/v1/chat/completions")
            .json(&json!({ "messages": [{ "role": "user", "content": "two notes" }] }))
            .send(),
    );
    let approval = daemon.pending_approval().await;
    assert_eq!(
        approval["plan"]["steps"][1]["covers"],
        "write_file path = \"two.txt\""
    );
    let id = approval["id"].as_str().unwrap().to_string();
    let out = cara(&dir).args(["approvals", "list"]).run().await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    for expected in [
        "plan for session",
        "1. write_file path = \"one.txt\" [would ask (preset.strict)]",
        "2. write_file path = \"two.txt\"",
        "why: \"second\"",
    ] {
        assert!(out.stdout.contains(expected), "{expected:?} in {out:#?}");
    }
    // A step number the plan does not have is refused and changes nothing.
    let out = cara(&dir)
        .args(["approvals", "approve", &id, "--steps", "3"])
        .run()
        .await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(
        out.stderr.contains("not a step between 1 and 2"),
        "{out:#?}"
    );
    let out = cara(&dir)
        .args(["approvals", "approve", &id, "--steps", "2"])
        .run()
        .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(out.stdout.contains("approved steps 2 of"), "{out:#?}");
    let (status, body) = json_response(turn.await.unwrap().unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        std::fs::read_to_string(dir.workspace().join("two.txt")).unwrap(),
        "under the plan"
    );
    let records = tool_call_records(&dir, "propose_plan").await;
    let approved = records
        .iter()
        .find(|r| r["outcome"] == "approved")
        .expect("the plan's approval is recorded");
    assert_eq!(approved["answer"], "steps 2");
    assert_eq!(approved["answered_by"], "owner@api");
}
