//! Paths that lead out of the workspace, through the whole stack: the model asks, the
//! Gate runs the tool, the file system layer refuses, the model gets a typed error and
//! the audit log records the failure. (Swapping a symlink in after the check is covered
//! in the carapace-fs crate.)

use std::os::unix::fs::symlink;

use carapace_testkit::{FakeOpenAi, Reply};
use serde_json::{Value, json};

use crate::util::{Daemon, TestDir, audit_entries, cara, json_response, tool_messages};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_out_of_the_workspace_are_refused() {
    let dir = TestDir::new();
    let outside = dir.root().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "TOP-SECRET-OUTSIDE").unwrap();
    let absolute = outside.join("secret.txt").to_str().unwrap().to_string();

    let calls = [
        ("read_file", json!({ "path": "../secret.txt" })),
        ("read_file", json!({ "path": absolute })),
        ("read_file", json!({ "path": "link-to-secret" })),
        ("list_dir", json!({ "path": "link-to-outside" })),
        ("read_file", json!({ "path": "link-to-outside/secret.txt" })),
        // A control: the same tools work inside the workspace.
        ("read_file", json!({ "path": "inside.txt" })),
    ];
    let fake = FakeOpenAi::start(vec![
        Reply::ToolCalls(
            calls
                .iter()
                .map(|(n, a)| (n.to_string(), a.clone()))
                .collect(),
        ),
        Reply::Text("done".into()),
    ])
    .await;
    let daemon = Daemon::start(&dir, &fake).await;
    let ws = dir.workspace();
    std::fs::write(ws.join("inside.txt"), "inside content").unwrap();
    symlink(outside.join("secret.txt"), ws.join("link-to-secret")).unwrap();
    symlink(&outside, ws.join("link-to-outside")).unwrap();

    let (status, body) = json_response(
        daemon
            .chat(&json!({ "messages": [{ "role": "user", "content": "read around" }] }))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "done");

    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    let results = tool_messages(&requests[1]);
    assert_eq!(results.len(), calls.len(), "{results:?}");
    let (refused, control) = results.split_at(calls.len() - 1);
    for ((tool, args), msg) in calls.iter().zip(refused) {
        let content = msg["content"].as_str().unwrap();
        assert!(
            content.contains("TOOL_ERROR") && content.contains("escapes"),
            "{tool} {args} was not refused as an escape: {content}"
        );
        assert!(!content.contains("TOP-SECRET"), "{content}");
        assert!(!content.contains("secret.txt\",\"kind"), "{content}");
    }
    let control: Value = serde_json::from_str(control[0]["content"].as_str().unwrap()).unwrap();
    assert_eq!(control["content"], "inside content", "{control}");

    let records: Vec<Value> = audit_entries(&dir)
        .await
        .into_iter()
        .map(|e| e["record"].clone())
        .filter(|r| r["event"] == "tool_call" && r["outcome"] != "allowed")
        .collect();
    let summary: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            (
                r["args"]["path"].as_str().unwrap_or("").to_string(),
                format!(
                    "{} {}",
                    r["outcome"].as_str().unwrap_or("?"),
                    r["code"].as_str().unwrap_or("-")
                ),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = calls
        .iter()
        .map(|(_, a)| {
            let path = a["path"].as_str().unwrap().to_string();
            let outcome = if path == "inside.txt" {
                "executed -"
            } else {
                "failed TOOL_ERROR"
            };
            (path, outcome.to_string())
        })
        .collect();
    assert_eq!(summary, expected);

    let out = cara(&dir).args(["audit", "verify"]).run().await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("intact"), "{out:?}");
}
