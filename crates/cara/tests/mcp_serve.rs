//! `cara mcp serve` driven by the Python SDK client.
//!
//! The official MCP Python SDK's `stdio_client` (fixture `fixtures/mcp_serve/client.py`)
//! starts `cara mcp serve` three ways: in a run of `cara agent run`, from outside the
//! sandbox (`cara agent run ... -- cara mcp serve`) or from inside it (the client is the
//! run's program, as Claude Code under `cara agent run` would be), where the server
//! reaches the Gate through the agent socket; and on the owner's side with no sandbox
//! (`cara mcp serve [--session ID]`, as an editor such as Cursor starts it), where the
//! server uses the daemon's API with the owner's token. The client lists the tools,
//! calls them, and prints what the SDK parsed; the tests check the Gate's schemas and
//! effect classes, a file read, refusals as MCP tool errors and protocol errors, a call
//! that waits for the owner's answer, the session the calls land in, and the audit log.
//!
//! The sandboxed ways need user namespaces and the SDK: switched on by
//! `CARAPACE_TEST_SANDBOX=1` and `CARAPACE_TEST_MCP=1` (CI sets both and puts a Python
//! with `mcp` first on `PATH`). The owner's side needs the SDK only
//! (`CARAPACE_TEST_MCP=1`); the refusal without a daemon needs nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::util::{
    CARA, Daemon, TestDir, audit_entries, cara, outcomes, tool_call_records, wait_for,
};

const CLIENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/mcp_serve/client.py"
);

fn on(key: &str) -> bool {
    std::env::var_os(key).is_some_and(|v| v == "1")
}

/// The tests with a sandbox and the SDK.
fn enabled() -> bool {
    let both = on("CARAPACE_TEST_SANDBOX") && on("CARAPACE_TEST_MCP");
    if !both {
        eprintln!(
            "skipped: set CARAPACE_TEST_SANDBOX=1 and CARAPACE_TEST_MCP=1 to run the \
             cara mcp serve tests"
        );
    }
    both
}

/// The tests of the owner's side, which need the SDK but no sandbox.
fn sdk_enabled() -> bool {
    if !on("CARAPACE_TEST_MCP") {
        eprintln!("skipped: set CARAPACE_TEST_MCP=1 to run the cara mcp serve tests");
    }
    on("CARAPACE_TEST_MCP")
}

/// The interpreter of the `python3` on `PATH`, which must import the SDK.
fn python() -> PathBuf {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys, mcp; print(sys.executable)"])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "CARAPACE_TEST_MCP=1 needs a python3 on PATH with the mcp package: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// What the client printed, one JSON value per line, and the stderr it shares with the
/// server.
struct Seen {
    lines: Vec<Value>,
    stderr: String,
}

impl Seen {
    fn one(&self, kind: &str) -> &Value {
        self.lines
            .iter()
            .find(|l| l["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} line in {:#?}", self.lines))
    }

    /// The answers to calls of `name`, in the order they arrived.
    fn calls(&self, name: &str) -> Vec<&Value> {
        self.lines
            .iter()
            .filter(|l| l["kind"] == "call" && l["name"] == name)
            .collect()
    }

    fn tool(&self, name: &str) -> &Value {
        self.one("tools")["tools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("no tool {name} in {}", self.one("tools")))
    }
}

/// Where the MCP client runs.
#[derive(Clone, Copy)]
enum Client {
    /// On the owner's side: it starts `cara agent run ... -- cara mcp serve` (any client
    /// outside the box).
    Outside,
    /// In the sandbox, next to the server it starts (Claude Code under `cara agent
    /// run`): `cara agent run ... -- python3 client.py -- cara mcp serve`.
    Inside,
    /// On the owner's side with no sandbox at all: it starts `cara mcp serve` itself
    /// (Cursor's `mcp.json`), which uses the daemon's API.
    Owner,
}

/// Runs the client making the rounds of calls `rounds`, with the server in a run of
/// `cara agent run [ARGS] --workspace PROJECT`, or for [`Client::Owner`] as `cara mcp
/// serve [ARGS]`.
async fn client(dir: &TestDir, project: &Path, args: &[&str], rounds: Value, at: Client) -> Seen {
    let calls = project.join("calls.json");
    std::fs::write(&calls, rounds.to_string()).unwrap();
    let agent_run = |cmd: &mut tokio::process::Command| {
        cmd.arg("--data-dir")
            .arg(dir.data())
            .args(["agent", "run"])
            .args(args)
            .arg("--workspace")
            .arg(project)
            .arg("--");
    };
    let mut cmd;
    match at {
        Client::Outside => {
            cmd = tokio::process::Command::new(python());
            cmd.arg(CLIENT).arg(&calls).args(["--", CARA]);
            agent_run(&mut cmd);
            cmd.args(["cara", "mcp", "serve"]);
        }
        Client::Inside => {
            std::fs::copy(CLIENT, project.join("client.py")).unwrap();
            cmd = tokio::process::Command::new(CARA);
            agent_run(&mut cmd);
            cmd.arg("/usr/bin/env")
                .arg(format!("PYTHONPATH={}", project.join(".pylib").display()))
                .args(["python3", "client.py", "calls.json", "--"])
                .args(["cara", "mcp", "serve"]);
        }
        Client::Owner => {
            cmd = tokio::process::Command::new(python());
            cmd.arg(CLIENT).arg(&calls).args(["--", CARA]);
            cmd.arg("--data-dir").arg(dir.data());
            cmd.args(["mcp", "serve"]).args(args);
        }
    }
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.root().join("home"))
        .env("CARAPACE_LOG", "warn")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the MCP client finished within 60 s")
        .expect("run the MCP client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "client: {}\n{stdout}\n{stderr}",
        out.status
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{stderr}")))
        .collect();
    let seen = Seen {
        lines,
        stderr: stderr.into_owned(),
    };
    seen.one("done");
    seen
}

/// Copies the SDK and what it imports into `dest` (the `.pylib` of a project), so the
/// sandbox's system Python can import it; prints the version of the Python it serves.
const VENDOR: &str = r#"
import importlib.metadata as md, os, re, shutil, sys
dest, seen, todo = sys.argv[1], set(), ["mcp"]
while todo:
    name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
    if name in seen:
        continue
    seen.add(name)
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        continue
    for f in dist.files or []:
        src = dist.locate_file(f)
        if ".." in f.parts or not os.path.isfile(src):
            continue
        os.makedirs(os.path.join(dest, os.path.dirname(str(f))), exist_ok=True)
        shutil.copyfile(src, os.path.join(dest, str(f)))
    for req in dist.requires or []:
        if "extra ==" not in req and "win32" not in req:
            todo.append(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0])
print("%d.%d" % sys.version_info[:2])
"#;

/// Makes the SDK importable by the sandbox's `python3` from `PROJECT/.pylib`; `false`
/// (the test says why) when that Python is another version than the SDK's.
///
/// A copy, because `cara agent run` binds nothing of the host but the system
/// directories, the workspace and the agent's home; a read-only bind of the SDK's
/// Python prefix would spare it.
fn vendor_sdk(project: &Path) -> bool {
    let out = std::process::Command::new(python())
        .args(["-c", VENDOR])
        .arg(project.join(".pylib"))
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sdk = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let system = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if system != sdk {
        eprintln!(
            "skipped the client inside the sandbox: the SDK's Python is {sdk}, the \
             sandbox's /usr/bin/python3 is {system:?}"
        );
    }
    system == sdk
}

/// A project directory for the run (the agent's own files, outside the data directory).
fn project(dir: &TestDir) -> PathBuf {
    let project = dir.root().join("project");
    std::fs::create_dir_all(&project).unwrap();
    project
}

const POLICY: &str = r#"
[[policy.rules]]
name = "no-secrets"
tool = "read_file"
destination = "path:secret*"
then = "deny"
reason = "secrets stay with the owner"
"#;

#[tokio::test]
async fn an_mcp_client_lists_and_calls_the_gate_tools_and_sees_refusals_as_mcp_errors() {
    if !enabled() {
        return;
    }
    let dir = TestDir::new();
    std::fs::create_dir_all(dir.data()).unwrap();
    std::fs::write(dir.config(), POLICY).unwrap();
    let daemon = Daemon::start_with_env(&dir, &[]).await;
    // The Gate's file tools work in Carapace's workspace.
    std::fs::write(
        dir.workspace().join("notes.txt"),
        "hello from the workspace\n",
    )
    .unwrap();
    std::fs::write(dir.workspace().join("secret.txt"), "the launch code\n").unwrap();
    let project = project(&dir);

    let seen = client(
        &dir,
        &project,
        &["--trust-input"],
        json!([
            // Two at once share the server's one socket connection.
            [
                {"name": "read_file", "arguments": {"path": "notes.txt"}},
                {"name": "list_dir", "arguments": {}},
            ],
            [{"name": "read_file", "arguments": {"path": "secret.txt"}}],
            [{"name": "no_such_tool", "arguments": {}}],
            [{"name": "read_file", "arguments": {"path": 5}}],
        ]),
        Client::Outside,
    )
    .await;

    // initialize: who answers, and that it offers tools only.
    let init = &seen.one("initialize")["result"];
    assert_eq!(init["serverInfo"]["name"], "carapace", "{init}");
    assert_eq!(
        init["capabilities"]["tools"],
        json!({"listChanged": false}),
        "{init}"
    );
    assert!(
        init["instructions"]
            .as_str()
            .is_some_and(|i| i.contains("Gate")),
        "{init}"
    );

    // tools/list: the Gate's tools with their closed schemas and hints from effects.
    for name in ["read_file", "write_file", "list_dir", "propose_plan"] {
        let tool = seen.tool(name);
        assert_eq!(tool["inputSchema"]["type"], "object", "{tool}");
        assert_eq!(tool["inputSchema"]["additionalProperties"], false, "{tool}");
        assert!(tool["description"].as_str().is_some_and(|d| !d.is_empty()));
    }
    let read = seen.tool("read_file");
    assert_eq!(read["annotations"]["readOnlyHint"], true, "{read}");
    assert_eq!(read["_meta"]["carapace/effect"], "read", "{read}");
    let write = seen.tool("write_file");
    assert_eq!(write["annotations"]["destructiveHint"], true, "{write}");
    assert_eq!(write["annotations"]["readOnlyHint"], false, "{write}");
    for t in seen.one("tools")["tools"].as_array().unwrap() {
        if t["_meta"]["carapace/effect"] == "egress" {
            assert_eq!(t["annotations"]["openWorldHint"], true, "{t}");
        }
    }

    // A read returns the file.
    let ok = &seen.calls("read_file")[0]["result"];
    assert_eq!(ok["isError"], false, "{ok}");
    // The Gate's result is an object: structured content, and the same as JSON text.
    assert_eq!(
        ok["structuredContent"]["content"], "hello from the workspace\n",
        "{ok}"
    );
    assert_eq!(ok["content"][0]["type"], "text", "{ok}");
    let text: Value = serde_json::from_str(ok["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(text, ok["structuredContent"]);
    let listed = &seen.calls("list_dir")[0]["result"];
    assert!(listed.to_string().contains("notes.txt"), "{listed}");

    // Policy refuses: a tool error the model reads, with the Gate's error as data.
    let denied = &seen.calls("read_file")[1]["result"];
    assert_eq!(denied["isError"], true, "{denied}");
    let text = denied["content"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("POLICY_DENIED at policy: "), "{text}");
    assert!(!text.contains("launch code"));
    assert_eq!(denied["structuredContent"]["code"], "POLICY_DENIED");
    assert_eq!(denied["structuredContent"]["rule"], "rules.no-secrets");

    // An unknown tool and bad arguments: protocol errors (-32602) with the Gate's data.
    let unknown = &seen.calls("no_such_tool")[0]["error"];
    assert_eq!(unknown["code"], -32602, "{unknown}");
    assert_eq!(unknown["data"]["code"], "UNKNOWN_TOOL", "{unknown}");
    let invalid = &seen.calls("read_file")[2]["error"];
    assert_eq!(invalid["code"], -32602, "{invalid}");
    assert_eq!(invalid["data"]["code"], "VALIDATION_FAILED", "{invalid}");
    assert_eq!(invalid["data"]["field"], "/path", "{invalid}");

    // Audited as the run's agent on the socket door; the chain verifies.
    let reads = tool_call_records(&dir, "read_file").await;
    assert!(reads.len() >= 2, "{reads:#?}");
    for r in &reads {
        let principal = r["principal"].as_str().unwrap();
        assert!(
            principal.starts_with("agent:run_") && principal.ends_with("@socket"),
            "{r}"
        );
    }
    let outcomes = outcomes(&reads);
    assert_eq!(outcomes, ["executed", "denied", "denied"], "{reads:#?}");
    assert_eq!(reads[1]["rule"], "rules.no-secrets");
    assert_eq!(reads[2]["code"], "VALIDATION_FAILED");
    // One run, one session: every call of the server's connection is in it.
    assert!(reads.iter().all(|r| r["session"] == reads[0]["session"]));
    let verify = cara(&dir).args(["audit", "verify"]).run().await;
    assert_eq!(verify.code, Some(0), "{verify:?}");
    drop(daemon);
}

#[tokio::test]
async fn a_call_waits_for_the_owner_and_a_no_is_a_tool_error() {
    if !enabled() {
        return;
    }
    let dir = TestDir::new();
    let daemon = Daemon::start_with_env(&dir, &[]).await;
    let project = project(&dir);
    // Without --trust-input the run's session is untrusted: a write asks the owner.
    let run = client(
        &dir,
        &project,
        &[],
        json!([[{"name": "write_file",
                 "arguments": {"path": "out.txt", "content": "from the agent"}}]]),
        Client::Outside,
    );
    let answer = async {
        let pending = daemon.pending_approval().await;
        assert_eq!(pending["tool"], "write_file", "{pending}");
        let id = pending["id"].as_str().unwrap();
        let (status, _) = daemon
            .post(
                &format!("/api/approvals/{id}"),
                &json!({"decision": "deny"}),
            )
            .await;
        assert_eq!(status, 200);
    };
    let (seen, ()) = tokio::join!(run, answer);
    let refused = &seen.calls("write_file")[0]["result"];
    assert_eq!(refused["isError"], true, "{refused}");
    assert_eq!(
        refused["structuredContent"]["code"], "CONFIRMATION_DENIED",
        "{refused}"
    );
    assert!(!dir.workspace().join("out.txt").exists());
    assert!(
        audit_entries(&dir)
            .await
            .iter()
            .any(|e| e["record"]["tool"] == "write_file"),
        "the refused write is audited"
    );
}

/// An MCP cancellation ends the Gate call on the daemon (over the agent socket's
/// `$/cancelRequest`): the approval it waited for leaves the owner's queue, and the audit
/// says it was cancelled.
#[tokio::test]
async fn a_cancelled_call_leaves_no_approval_behind() {
    if !enabled() {
        return;
    }
    let dir = TestDir::new();
    let daemon = Daemon::start_with_env(&dir, &[]).await;
    let project = project(&dir);
    let run = client(
        &dir,
        &project,
        &[],
        json!([
            [{"name": "write_file", "cancel_after": 3,
              "arguments": {"path": "out.txt", "content": "from the agent"}}],
            // The session stays open: the cancellation, not a closed connection, must
            // end the call.
            [{"sleep": 8}],
        ]),
        Client::Outside,
    );
    tokio::pin!(run);
    let withdrawn = async {
        let pending = daemon.pending_approval().await;
        assert_eq!(pending["tool"], "write_file", "{pending}");
        wait_for("the approval withdrawn", || async {
            let (_, body) = daemon.get("/api/approvals").await;
            body["approvals"].as_array()?.is_empty().then_some(())
        })
        .await;
    };
    tokio::select! {
        seen = &mut run => panic!("the client ended with the approval still there: {:?}", seen.lines),
        () = withdrawn => {}
    }
    let seen = run.await;
    assert_eq!(
        seen.calls("write_file")[0]["cancelled"],
        true,
        "{:?}",
        seen.lines
    );
    let outcomes: Vec<String> = tool_calls(&dir)
        .await
        .iter()
        .filter(|r| r["tool"] == "write_file")
        .map(|r| r["outcome"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(outcomes, ["asked", "cancelled"]);
    assert!(!dir.workspace().join("out.txt").exists());
}

#[tokio::test]
async fn an_agent_in_the_sandbox_starts_the_server_next_to_it() {
    if !enabled() {
        return;
    }
    let dir = TestDir::new();
    let _daemon = Daemon::start_with_env(&dir, &[]).await;
    std::fs::write(
        dir.workspace().join("notes.txt"),
        "hello from the workspace\n",
    )
    .unwrap();
    let project = project(&dir);
    if !vendor_sdk(&project) {
        return;
    }
    let seen = client(
        &dir,
        &project,
        &["--trust-input"],
        json!([
            [{"name": "read_file", "arguments": {"path": "notes.txt"}}],
            [{"name": "no_such_tool", "arguments": {}}],
        ]),
        Client::Inside,
    )
    .await;
    assert_eq!(
        seen.one("initialize")["result"]["serverInfo"]["name"],
        "carapace"
    );
    assert_eq!(seen.tool("read_file")["annotations"]["readOnlyHint"], true);
    let read = &seen.calls("read_file")[0]["result"];
    assert_eq!(
        read["structuredContent"]["content"], "hello from the workspace\n",
        "{read}"
    );
    assert_eq!(seen.calls("no_such_tool")[0]["error"]["code"], -32602);
    let reads = tool_call_records(&dir, "read_file").await;
    assert_eq!(outcomes(&reads), ["executed"]);
    assert!(
        reads[0]["principal"]
            .as_str()
            .is_some_and(|p| p.starts_with("agent:run_") && p.ends_with("@socket")),
        "{reads:?}"
    );
}

/// The audit records of tool calls, in order.
async fn tool_calls(dir: &TestDir) -> Vec<Value> {
    audit_entries(dir)
        .await
        .into_iter()
        .map(|e| e["record"].clone())
        .filter(|r| r["event"] == "tool_call")
        .collect()
}

#[tokio::test]
async fn outside_a_sandbox_an_mcp_client_uses_the_given_session_through_the_daemons_api() {
    if !sdk_enabled() {
        return;
    }
    let dir = TestDir::new();
    std::fs::create_dir_all(dir.data()).unwrap();
    std::fs::write(dir.config(), POLICY).unwrap();
    let daemon = Daemon::start_with_env(&dir, &[]).await;
    std::fs::write(
        dir.workspace().join("notes.txt"),
        "hello from the workspace\n",
    )
    .unwrap();
    std::fs::write(dir.workspace().join("secret.txt"), "the launch code\n").unwrap();
    // Two sessions; the client is given the second.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, created) = daemon.post("/api/sessions", &json!({})).await;
        assert_eq!(status, 201, "{created}");
        ids.push(created["session"]["id"].as_str().unwrap().to_string());
    }
    let session = ids[1].as_str();
    let project = project(&dir);

    let seen = client(
        &dir,
        &project,
        &["--session", session],
        json!([
            [
                {"name": "read_file", "arguments": {"path": "notes.txt"}},
                {"name": "list_dir", "arguments": {}},
            ],
            [{"name": "read_file", "arguments": {"path": "secret.txt"}}],
            [{"name": "no_such_tool", "arguments": {}}],
            [{"name": "read_file", "arguments": {"path": 5}}],
        ]),
        Client::Owner,
    )
    .await;

    let init = &seen.one("initialize")["result"];
    assert_eq!(init["serverInfo"]["name"], "carapace", "{init}");
    assert!(
        init["instructions"]
            .as_str()
            .is_some_and(|i| i.contains(session) && i.contains("Gate")),
        "{init}"
    );
    // The Gate's tools, as in a sandbox.
    for name in ["read_file", "write_file", "list_dir", "propose_plan"] {
        let tool = seen.tool(name);
        assert_eq!(tool["inputSchema"]["additionalProperties"], false, "{tool}");
    }
    assert_eq!(seen.tool("read_file")["annotations"]["readOnlyHint"], true);
    assert_eq!(seen.tool("write_file")["_meta"]["carapace/effect"], "write");

    let ok = &seen.calls("read_file")[0]["result"];
    assert_eq!(ok["isError"], false, "{ok}");
    assert_eq!(
        ok["structuredContent"]["content"], "hello from the workspace\n",
        "{ok}"
    );
    assert!(
        seen.calls("list_dir")[0]["result"]
            .to_string()
            .contains("notes.txt")
    );
    // The Gate's denial: a tool error the model reads, the Gate's error as data.
    let denied = &seen.calls("read_file")[1]["result"];
    assert_eq!(denied["isError"], true, "{denied}");
    let text = denied["content"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("POLICY_DENIED at policy: "), "{text}");
    assert!(!text.contains("launch code"));
    assert_eq!(denied["structuredContent"]["rule"], "rules.no-secrets");
    assert!(
        denied["structuredContent"].get("type").is_none(),
        "the Gate's error, not the API's wrapping: {denied}"
    );
    let unknown = &seen.calls("no_such_tool")[0]["error"];
    assert_eq!(unknown["code"], -32602, "{unknown}");
    assert_eq!(unknown["data"]["code"], "UNKNOWN_TOOL", "{unknown}");
    let invalid = &seen.calls("read_file")[2]["error"];
    assert_eq!(invalid["code"], -32602, "{invalid}");
    assert_eq!(invalid["data"]["code"], "VALIDATION_FAILED", "{invalid}");
    assert_eq!(invalid["data"]["field"], "/path", "{invalid}");
    assert!(
        !seen.stderr.contains("created session"),
        "no session is created when one is given: {}",
        seen.stderr
    );

    // Every call is the owner's, in the given session, and audited there.
    let calls = tool_calls(&dir).await;
    let summary: Vec<(&str, &str)> = calls
        .iter()
        .map(|r| (r["tool"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
        .filter(|(tool, _)| *tool == "read_file" || *tool == "no_such_tool")
        .collect();
    assert_eq!(
        summary,
        [
            ("read_file", "executed"),
            ("read_file", "denied"),
            ("no_such_tool", "denied"),
            ("read_file", "denied"),
        ],
        "{calls:#?}"
    );
    for r in &calls {
        assert_eq!(r["session"], session, "{r}");
        assert_eq!(r["principal"], "owner@api", "{r}");
    }
    // The read raised the given session's label, and only that one's.
    let label = |id: &str| {
        let id = id.to_string();
        let daemon = &daemon;
        async move {
            let (status, s) = daemon.get(&format!("/api/sessions/{id}")).await;
            assert_eq!(status, 200, "{s}");
            s["session"]["label"]["confidentiality"].clone()
        }
    };
    assert_eq!(label(session).await, "private");
    assert_eq!(label(&ids[0]).await, "public");
    let verify = cara(&dir).args(["audit", "verify"]).run().await;
    assert_eq!(verify.code, Some(0), "{verify:?}");
}

#[tokio::test]
async fn without_a_session_it_creates_one_names_it_on_stderr_and_waits_for_the_owner() {
    if !sdk_enabled() {
        return;
    }
    // The strict preset asks before a write.
    let dir = TestDir::strict();
    let daemon = Daemon::start_with_env(&dir, &[]).await;
    std::fs::write(dir.workspace().join("notes.txt"), "milk\n").unwrap();
    let project = project(&dir);
    let run = client(
        &dir,
        &project,
        &[],
        json!([
            [{"name": "read_file", "arguments": {"path": "notes.txt"}}],
            [{"name": "write_file", "arguments": {"path": "out.txt", "content": "x"}}],
        ]),
        Client::Owner,
    );
    let answer = async {
        let pending = daemon.pending_approval().await;
        assert_eq!(pending["tool"], "write_file", "{pending}");
        let id = pending["id"].as_str().unwrap();
        let (status, _) = daemon
            .post(
                &format!("/api/approvals/{id}"),
                &json!({"decision": "deny"}),
            )
            .await;
        assert_eq!(status, 200);
        pending["session"].as_str().unwrap().to_string()
    };
    let (seen, asked_in) = tokio::join!(run, answer);

    // The session it created is on stderr, never on the protocol's stdout.
    let created = seen
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("cara mcp serve: created session "))
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("no session on stderr: {}", seen.stderr));
    assert!(created.starts_with("s_"), "{created}");
    assert_eq!(asked_in, created, "the approval is asked in that session");
    let (status, session) = daemon.get(&format!("/api/sessions/{created}")).await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["session"]["title"], "cara mcp serve");

    let read = &seen.calls("read_file")[0]["result"];
    assert_eq!(read["structuredContent"]["content"], "milk\n", "{read}");
    let refused = &seen.calls("write_file")[0]["result"];
    assert_eq!(refused["isError"], true, "{refused}");
    assert_eq!(
        refused["structuredContent"]["code"], "CONFIRMATION_DENIED",
        "{refused}"
    );
    assert!(!dir.workspace().join("out.txt").exists());
    let calls = tool_calls(&dir).await;
    assert_eq!(
        outcomes(&calls),
        ["executed", "asked", "denied"],
        "{calls:#?}"
    );
    assert!(calls.iter().all(|r| r["session"] == created), "{calls:#?}");
}

#[tokio::test]
async fn without_a_running_daemon_it_exits_2_and_says_so() {
    let expect_refusal = |out: &crate::util::Output| {
        assert_eq!(out.code, Some(2), "{out:?}");
        assert!(
            out.stderr.contains("no gateway is running for") && out.stderr.contains("cara serve"),
            "{}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
        assert!(out.stdout.is_empty(), "nothing on the protocol's stdout");
    };
    // Never started here.
    let dir = TestDir::new();
    let out = cara(&dir).args(["mcp", "serve"]).run().await;
    expect_refusal(&out);
    // Started once and stopped: the token and a stale daemon.json are left.
    let daemon = Daemon::start_with_env(&dir, &[]).await;
    daemon.stop().await;
    for args in [
        &["mcp", "serve"][..],
        &["mcp", "serve", "--session", "s_0011"],
    ] {
        let out = cara(&dir).args(args).run().await;
        expect_refusal(&out);
    }
    // In a sandbox the session is the run's: --session is refused before anything.
    let out = cara(&dir)
        .env("CARAPACE_SOCKET", "/nonexistent/agent.sock")
        .args(["mcp", "serve", "--session", "s_0011"])
        .run()
        .await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("--session"), "{}", out.stderr);
    assert!(out.stdout.is_empty());
}
