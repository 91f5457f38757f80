//! The command line: the chat REPL with inline approvals, and the messages a user gets
//! when there is no provider or the configuration is wrong.

use carapace_testkit::{FakeOpenAi, Reply, free_loopback_port};
use serde_json::json;

use crate::util::{Daemon, TestDir, cara, outcomes, tool_call_records};

fn write_call(path: &str, content: &str) -> Reply {
    Reply::ToolCalls(vec![(
        "write_file".into(),
        json!({ "path": path, "content": content }),
    )])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repl_asks_inline_and_obeys_the_answer() {
    let fake = FakeOpenAi::start(vec![
        write_call("from-repl.txt", "written from the repl"),
        Reply::Text("I wrote the file.".into()),
        write_call("refused.txt", "never"),
        Reply::Text("I did not write it.".into()),
    ])
    .await;
    let dir = TestDir::strict();
    let _daemon = Daemon::start(&dir, &fake).await;

    let out = cara(&dir)
        .args(["chat"])
        .stdin("please write a file\ny\n/exit\n")
        .run()
        .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    for expected in [
        "model fake-model",
        "approval needed (ap_",
        "write_file",
        "from-repl.txt",
        "approve? [y]es once / [s]ession",
        "    ok\n",
        "cara> I wrote the file.",
    ] {
        assert!(out.stdout.contains(expected), "{expected:?} in {out:#?}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.workspace().join("from-repl.txt")).unwrap(),
        "written from the repl"
    );

    let out = cara(&dir)
        .args(["chat"])
        .stdin("now another one\nn\n/exit\n")
        .run()
        .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    for expected in [
        "approval needed (ap_",
        "refused.txt",
        "refused: CONFIRMATION_DENIED",
        "cara> I did not write it.",
    ] {
        assert!(out.stdout.contains(expected), "{expected:?} in {out:#?}");
    }
    assert!(!dir.workspace().join("refused.txt").exists());
    let records = tool_call_records(&dir, "write_file").await;
    assert_eq!(
        outcomes(&records),
        [
            "asked", "approved", "allowed", "executed", "asked", "denied"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repl_approves_some_steps_of_a_plan_and_shows_where_the_session_stands() {
    let fake = FakeOpenAi::start(vec![
        Reply::ToolCalls(vec![(
            "propose_plan".into(),
            json!({
                "goal": "tidy up",
                "steps": [
                    { "tool": "write_file", "args": { "path": { "exact": "a.txt" } } },
                    { "tool": "write_file", "args": { "path": { "exact": "b.txt" } } }
                ]
            }),
        )]),
        Reply::ToolCalls(vec![("list_dir".into(), json!({}))]),
        write_call("a.txt", "not approved"),
        write_call("b.txt", "approved in the plan"),
        Reply::Text("Done what I was allowed.".into()),
    ])
    .await;
    let dir = TestDir::new();
    std::fs::create_dir_all(dir.data()).unwrap();
    // The listing counts as untrusted here, so the session is tainted after it.
    std::fs::write(dir.config(), "[tools.list_dir]\nresult = \"untrusted\"\n").unwrap();
    let _daemon = Daemon::start(&dir, &fake).await;

    let out = cara(&dir)
        .args(["chat"])
        .stdin("tidy up\n2\nn\n/session\n/reset\n/session\n/exit\n")
        .run()
        .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    for expected in [
        "approve? [a]ll / steps like 1-3,5 / [N]o",
        "1. write_file path = \"a.txt\"",
        "2. write_file path = \"b.txt\"",
        "[allowed by policy anyway]",
        "this session has seen untrusted content (sources seen: tool:list_dir)",
        "default.untrusted-asks",
        "cara> Done what I was allowed.",
        "label untrusted/private",
        "1 grant(s)",
        "session reset",
        "0 grant(s)",
    ] {
        assert!(out.stdout.contains(expected), "{expected:?} in {out:#?}");
    }
    assert!(!dir.workspace().join("a.txt").exists());
    assert_eq!(
        std::fs::read_to_string(dir.workspace().join("b.txt")).unwrap(),
        "approved in the plan"
    );
    let records = tool_call_records(&dir, "write_file").await;
    let rules: Vec<&str> = records
        .iter()
        .map(|r| r["rule"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(
        rules[..2],
        ["default.untrusted-asks", "default.untrusted-asks"]
    );
    assert!(
        rules[2].starts_with("grant.plan_") && rules[2].ends_with("#2"),
        "{rules:?}"
    );

    let id = out
        .stdout
        .split("you> session ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_string();
    let shown = cara(&dir).args(["session", "show", &id]).run().await;
    assert_eq!(shown.code, Some(0), "{shown:#?}");
    for expected in [
        "label untrusted/private",
        "seen: ",
        "tool:list_dir",
        "friction quiet",
        "tool:list_dir    untrusted/private",
        // What the model writes after reading untrusted content carries its label.
        "assistant model            untrusted/private Done what I was allowed.",
    ] {
        assert!(
            shown.stdout.contains(expected),
            "{expected:?} in {shown:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_without_a_provider_says_how_to_set_one_up() {
    let dir = TestDir::new();
    // A port nothing listens on, so a gateway someone runs on the default port is not
    // mistaken for this data directory's.
    let bind = format!("127.0.0.1:{}", free_loopback_port());
    let out = cara(&dir)
        .args(["chat"])
        .env("CARAPACE_BIND", &bind)
        .stdin("hello\n")
        .run()
        .await;
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(out.stderr.contains("OPENAI_BASE_URL"), "{out:#?}");
    assert!(out.stderr.contains("cara setup"), "{out:#?}");
    assert!(!out.stderr.contains("panicked"), "{out:#?}");
    assert!(
        !dir.data().join("daemon.json").exists(),
        "no gateway was started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_name_file_line_and_key() {
    let dir = TestDir::new();
    std::fs::create_dir(dir.data()).unwrap();
    std::fs::write(
        dir.config(),
        "[server]\nbind = \"127.0.0.1:0\"\n\n[provider]\nmodel = \"m\"\ncolour = \"blue\"\n",
    )
    .unwrap();
    let at = format!("{}:6:", dir.config().display());

    let out = cara(&dir).args(["config", "validate"]).run().await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains(&at), "file and line in {out:#?}");
    assert!(out.stderr.contains("`provider.colour`"), "key in {out:#?}");

    let out = cara(&dir)
        .args(["serve", "--bind", "127.0.0.1:0"])
        .run()
        .await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains(&at), "file and line in {out:#?}");
    assert!(out.stderr.contains("`provider.colour`"), "key in {out:#?}");
    assert!(!dir.data().join("daemon.json").exists());

    std::fs::remove_file(dir.config()).unwrap();
    let out = cara(&dir)
        .args(["serve", "--bind", "0.0.0.0:8321"])
        .run()
        .await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    // The flag is named: the user passed --bind, not $CARAPACE_BIND.
    assert!(out.stderr.contains("--bind"), "{out:#?}");
    assert!(out.stderr.contains("0.0.0.0:8321"), "{out:#?}");
    assert!(out.stderr.contains("not a loopback address"), "{out:#?}");
    assert!(!out.stderr.contains("panicked"), "{out:#?}");
    assert!(!dir.data().join("daemon.json").exists());

    // A valid file passes.
    let out = cara(&dir).args(["config", "validate"]).run().await;
    assert_eq!(out.code, Some(0), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_allow_host_starts_sessions_with_their_own_host_list() {
    let fake = FakeOpenAi::start(vec![
        Reply::Text("first".into()),
        Reply::Text("second".into()),
    ])
    .await;
    let dir = TestDir::new();
    let _daemon = Daemon::start(&dir, &fake).await;

    let out = cara(&dir)
        .args(["chat", "--allow-host", "api.github.com"])
        .args(["--allow-host", "*.wikipedia.org"])
        .stdin("hello\n/session\n/new\nagain\n/session\n/exit\n")
        .run()
        .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let listed = "network tools reach only: api.github.com, *.wikipedia.org";
    assert_eq!(out.stdout.matches(listed).count(), 2, "{out:#?}");
    assert!(out.stdout.contains("cara> second"), "{out:#?}");

    let out = cara(&dir)
        .args(["chat", "--allow-host", "http://api.github.com"])
        .stdin("hello\n/exit\n")
        .run()
        .await;
    assert_ne!(out.code, Some(0), "{out:#?}");
    assert!(out.stderr.contains("--allow-host"), "{out:#?}");

    let out = cara(&dir)
        .args(["chat", "--session", "s_1", "--allow-host", "a.example"])
        .stdin("/exit\n")
        .run()
        .await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains("new sessions only"), "{out:#?}");
}
