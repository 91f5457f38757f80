//! The sandbox through the whole stack: the `exec` tool asked for by the model, approved
//! by the owner, run in the sandbox, scrubbed and labelled by the Gate; and the owner's
//! own `cara sandbox run` and `cara sandbox check`.
//!
//! Switched on by `CARAPACE_TEST_SANDBOX=1` (they need user namespaces); the escape
//! suite proper lives in the carapace-sandbox crate.

use carapace_testkit::{FakeOpenAi, Reply};
use reqwest::Method;
use serde_json::{Value, json};

use crate::util::{
    Daemon, TestDir, cara, json_response, outcomes, tool_call_records, tool_messages, wait_requests,
};

fn enabled() -> bool {
    let on = std::env::var_os("CARAPACE_TEST_SANDBOX").is_some_and(|v| v == "1");
    if !on {
        eprintln!("skipped: set CARAPACE_TEST_SANDBOX=1 to run the sandbox tests");
    }
    on
}

const PROVIDER_KEY: &str = "sk-proj-e2eSandboxKeyThatMustNeverBeShown0123456789";

/// Runs one `exec` call through a daemon, approves it, and returns the tool result the
/// model received.
async fn exec_once(dir: &TestDir, command: &str) -> (Value, FakeOpenAi) {
    let fake = FakeOpenAi::start(vec![
        Reply::ToolCalls(vec![("exec".into(), json!({ "command": command }))]),
        Reply::Text("done".into()),
    ])
    .await;
    let daemon = Daemon::start_with_env(
        dir,
        &[
            ("OPENAI_BASE_URL", fake.base_url().as_str()),
            ("CARAPACE_MODEL", "fake-model"),
            ("OPENAI_API_KEY", PROVIDER_KEY),
            ("CARAPACE_LEAK_MARKER", "daemon-environment-marker"),
        ],
    )
    .await;
    let turn = tokio::spawn(
        daemon
            .authed(Method::POST, "/v1/chat/completions")
            .json(&json!({ "messages": [{ "role": "user", "content": "run it" }] }))
            .send(),
    );
    let approval = daemon.pending_approval().await;
    assert_eq!(approval["tool"], "exec", "{approval}");
    let id = approval["id"].as_str().unwrap();
    let (status, body) = daemon
        .post(
            &format!("/api/approvals/{id}"),
            &json!({ "decision": "approve" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = json_response(turn.await.unwrap().unwrap()).await;
    assert_eq!(status, 200, "{body}");
    let requests = wait_requests(&fake, 2).await;
    let results = tool_messages(&requests[1]);
    let content = results[0]["content"].as_str().unwrap();
    let result: Value = serde_json::from_str(content)
        .unwrap_or_else(|_| panic!("exec result is not JSON: {content}"));
    daemon.stop().await;
    (result, fake)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_in_the_sandbox_with_the_workspace_and_nothing_else() {
    if !enabled() {
        return;
    }
    let dir = TestDir::strict();
    let command = "echo made-inside > made.txt; id -u; hostname; env; \
                   ls /home 2>/dev/null | wc -l; \
                   cat ../data/server.token 2>&1 || echo no-token; \
                   ls / | tr '\\n' ' '";
    let (result, _fake) = exec_once(&dir, command).await;
    assert_eq!(result["exit_code"], 0, "{result}");
    assert_eq!(result["timed_out"], false);
    assert_eq!(result["profile"], "tool");
    let stdout = result["stdout"].as_str().unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "1000", "uid inside: {stdout}");
    assert_eq!(lines[1], "carapace", "hostname: {stdout}");
    assert!(
        stdout.contains("PATH=/usr/local/bin:/usr/bin:/bin"),
        "{stdout}"
    );
    assert!(stdout.contains("HOME=/tmp"), "{stdout}");
    // Nothing of the daemon's environment reaches the command.
    assert!(!stdout.contains("daemon-environment-marker"), "{stdout}");
    assert!(!stdout.contains("OPENAI"), "{stdout}");
    assert!(!stdout.contains("CARAPACE_DATA_DIR"), "{stdout}");
    assert!(stdout.contains("no-token"), "{stdout}");
    assert!(
        !stdout.contains(&std::fs::read_to_string(dir.data().join("server.token")).unwrap()),
        "{stdout}"
    );
    // The workspace is the one bound, read-write.
    assert_eq!(
        std::fs::read_to_string(dir.workspace().join("made.txt")).unwrap(),
        "made-inside\n"
    );

    let records = tool_call_records(&dir, "exec").await;
    assert_eq!(
        outcomes(&records),
        ["asked", "approved", "allowed", "executed"]
    );
    assert_eq!(records[0]["effect"], "exec");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_output_is_scrubbed_then_capped() {
    if !enabled() {
        return;
    }
    let dir = TestDir::strict();
    std::fs::create_dir_all(dir.workspace()).unwrap();
    std::fs::write(dir.workspace().join("creds.txt"), PROVIDER_KEY).unwrap();
    // The key raw, in base64 and in hex, then 2 MB of filler past the 1 MiB cap.
    let command = "cat creds.txt; echo; base64 -w0 creds.txt; echo; \
                   od -An -tx1 creds.txt | tr -d ' \\n'; echo; \
                   head -c 2000000 /dev/zero | tr '\\0' a";
    let (result, fake) = exec_once(&dir, command).await;
    assert_eq!(result["exit_code"], 0, "{result}");
    let stdout = result["stdout"].as_str().unwrap();
    assert_eq!(result["stdout_truncated"], true);
    assert!(stdout.ends_with("[output truncated]"), "{}", &stdout[..200]);
    assert!(stdout.len() < 1024 * 1024 + 100, "{}", stdout.len());
    let head: Vec<&str> = stdout.lines().take(3).collect();
    assert_eq!(head, ["[REDACTED]", "[REDACTED]", "[REDACTED]"], "{head:?}");
    // Nothing the model was sent holds the key in any of these forms.
    for request in fake.requests() {
        let text = request.to_string();
        assert!(!text.contains(PROVIDER_KEY));
        assert!(!text.contains(&hex::encode(PROVIDER_KEY)));
    }
    // The audit record says where the withheld values were, and that the result is
    // private from now on.
    let records = tool_call_records(&dir, "exec").await;
    let executed = records.iter().find(|r| r["outcome"] == "executed").unwrap();
    assert_eq!(
        executed["redactions"],
        json!([{ "path": "/stdout", "count": 3 }]),
        "{executed}"
    );
    assert!(
        executed["result_label"]
            .as_str()
            .unwrap()
            .ends_with("/private"),
        "{executed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_run_gives_the_commands_status_and_honours_binds() {
    if !enabled() {
        return;
    }
    let dir = TestDir::new();
    let shared = dir.root().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("in.txt"), "from the host").unwrap();
    let ws = dir.root().join("project");
    std::fs::create_dir(&ws).unwrap();

    let out = cara(&dir)
        .args(["sandbox", "run", "--workspace"])
        .args([ws.to_str().unwrap()])
        .args(["--bind"])
        .args([format!("{}:/data:ro", shared.display())])
        .args([
            "--",
            "sh",
            "-c",
            "cat /data/in.txt; echo; pwd; echo x > /data/new.txt || echo read-only; \
             echo y > here.txt; exit 3",
        ])
        .run()
        .await;
    assert_eq!(out.code, Some(3), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        ["from the host", "/workspace", "read-only"],
        "{out:?}"
    );
    assert!(!shared.join("new.txt").exists());
    assert_eq!(std::fs::read_to_string(ws.join("here.txt")).unwrap(), "y\n");

    let out = cara(&dir)
        .args(["sandbox", "run", "--profile", "nope", "--", "true"])
        .run()
        .await;
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains("no sandbox profile `nope`; profiles: tool, readonly"),
        "{out:?}"
    );

    let out = cara(&dir)
        .args(["sandbox", "run", "--profile", "readonly", "--workspace"])
        .args([ws.to_str().unwrap()])
        .args(["--", "sh", "-c", "echo z > blocked.txt"])
        .run()
        .await;
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(!ws.join("blocked.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_check_reports_every_feature() {
    if !enabled() {
        return;
    }
    let dir = TestDir::new();
    let out = cara(&dir).args(["sandbox", "check"]).run().await;
    assert_eq!(out.code, Some(0), "{out:?}");
    for feature in [
        "user-namespace",
        "pid-namespace",
        "landlock",
        "seccomp",
        "rlimits",
    ] {
        assert!(
            out.stdout.lines().any(|l| l.starts_with(feature)),
            "{feature} missing from:\n{}",
            out.stdout
        );
    }
}
