//! Plain-English rules: `cara rules compile` sends each `[[rules]]` text to the model
//! once and stores the structured rule, `cara rules show` shows it, and the daemon
//! evaluates it without asking the model again. A rule that does not compile is judged
//! per call by the model from metadata only, and can only ask.

use carapace_testkit::{FakeOpenAi, Reply};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::util::{Daemon, TestDir, cara, json_response, wait_requests};

/// A data directory whose config.toml holds one plain-English rule.
fn dir_with_rule(text: &str) -> TestDir {
    let dir = TestDir::new();
    std::fs::create_dir_all(dir.data()).expect("create the data directory");
    std::fs::write(dir.config(), format!("[[rules]]\ntext = {text:?}\n")).expect("write config");
    dir
}

/// `english.` and the first 12 hex digits of the SHA-256 of the text.
fn name_of(text: &str) -> String {
    format!(
        "english.{}",
        &hex::encode(Sha256::digest(text.as_bytes()))[..12]
    )
}

fn write_call(path: &str, content: &str) -> Reply {
    Reply::ToolCalls(vec![(
        "write_file".into(),
        json!({ "path": path, "content": content }),
    )])
}

fn is_compile(request: &Value) -> bool {
    request.to_string().contains("You compile a rule")
}

fn is_judgment(request: &Value) -> bool {
    request.to_string().contains("You check one tool call")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compiled_rule_is_shown_and_enforced_without_the_model() {
    const TEXT: &str = "ask me before writing any file";
    let fake = FakeOpenAi::start(vec![Reply::Text(
        "```json\n{\"effect\": \"write\", \"then\": \"ask\", \"reason\": \"you asked to see every write\"}\n```"
            .into(),
    )])
    .await;
    let dir = dir_with_rule(TEXT);
    let name = name_of(TEXT);
    let with_model = |c: crate::util::Cli| {
        c.env("OPENAI_BASE_URL", &fake.base_url())
            .env("CARAPACE_MODEL", "fake-model")
    };

    // Before compiling: pending.
    let out = cara(&dir).args(["rules", "show"]).run().await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("pending"), "{out:?}");

    let out = with_model(cara(&dir))
        .args(["rules", "compile"])
        .run()
        .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains(&name), "{out:?}");
    assert!(out.stdout.contains("compiled by fake-model"), "{out:?}");
    assert!(out.stdout.contains("effect = \"write\""), "{out:?}");
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert!(is_compile(&requests[0]), "{}", requests[0]);
    assert!(requests[0].to_string().contains(TEXT));

    let out = cara(&dir).args(["rules", "show"]).run().await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains(&format!("{name}  \"{TEXT}\"")),
        "{out:?}"
    );
    assert!(out.stdout.contains("[[policy.rules]]"), "{out:?}");
    assert!(out.stdout.contains("not confirmed"), "{out:?}");
    // The owner has read it and confirms: from the next start it alone decides.
    let out = cara(&dir).args(["rules", "confirm"]).run().await;
    assert_eq!(out.code, Some(1), "a name or --all is needed: {out:?}");
    let out = cara(&dir)
        .args(["rules", "confirm", "english.000000000000"])
        .run()
        .await;
    assert!(out.stderr.contains("no plain-English rule"), "{out:?}");
    let out = cara(&dir).args(["rules", "confirm", &name]).run().await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains(&format!("confirmed {name}")), "{out:?}");
    let out = cara(&dir).args(["rules", "show", "--json"]).run().await;
    let shown: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(shown[0]["status"], "compiled", "{shown}");
    assert_eq!(shown[0]["confirmed"], true, "{shown}");
    assert_eq!(shown[0]["name"], name.as_str());
    assert_eq!(
        shown[0]["rule"],
        json!({ "effect": "write", "then": "ask", "reason": "you asked to see every write" })
    );

    // Compiled once: a second compile has nothing to do.
    let out = with_model(cara(&dir))
        .args(["rules", "compile"])
        .run()
        .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("nothing to compile"), "{out:?}");
    assert_eq!(fake.requests().len(), 1);

    // The daemon loads it without asking the model, and it asks before a write in a
    // clean session, where the default rules would allow it.
    fake.push(write_call("todo.txt", "buy milk"));
    fake.push(Reply::Text("Not saved.".into()));
    let daemon = Daemon::start(&dir, &fake).await;
    daemon.assert_healthy().await;
    assert_eq!(fake.requests().len(), 1, "the daemon compiled again");
    // While it runs, `cara rules show` asks it what it loaded.
    let out = cara(&dir).args(["rules", "show", "--json"]).run().await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let shown: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(shown[0]["status"], "compiled", "{shown}");
    let turn = tokio::spawn(
        daemon
            .authed(Method::POST, "/v1/chat/completions")
            .json(&json!({ "messages": [{ "role": "user", "content": "note: buy milk" }] }))
            .send(),
    );
    let approval = daemon.pending_approval().await;
    assert_eq!(approval["rule"], name.as_str(), "{approval}");
    assert!(
        approval["reason"]
            .as_str()
            .unwrap()
            .contains("you asked to see every write"),
        "{approval}"
    );
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
    let requests = wait_requests(&fake, 3).await;
    assert_eq!(requests.iter().filter(|r| is_compile(r)).count(), 1);
    assert!(!dir.workspace().join("todo.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncompiled_rule_is_judged_from_metadata_and_asks() {
    const TEXT: &str = "be careful with anything that looks like a diary";
    const PLANTED: &str = "dear diary PLANTED-7c1d";
    // The daemon compiles at start; the model cannot express the rule, so at the write
    // the judge asks it, with the call's metadata only.
    let fake = FakeOpenAi::start(vec![
        Reply::Text(
            r#"{"uncompilable": "whether something looks like a diary is not in the metadata"}"#
                .into(),
        ),
        write_call("diary.txt", PLANTED),
        Reply::Text(r#"{"ask": true, "reason": "a file named diary"}"#.into()),
        Reply::Text("Not saved.".into()),
    ])
    .await;
    let dir = dir_with_rule(TEXT);
    let name = name_of(TEXT);
    let daemon = Daemon::start(&dir, &fake).await;
    let turn = tokio::spawn(
        daemon
            .authed(Method::POST, "/v1/chat/completions")
            .json(&json!({ "messages": [{ "role": "user", "content": "write my diary" }] }))
            .send(),
    );
    let approval = daemon.pending_approval().await;
    assert_eq!(approval["rule"], name.as_str(), "{approval}");
    let reason = approval["reason"].as_str().unwrap();
    assert!(reason.contains("a file named diary"), "{approval}");
    let id = approval["id"].as_str().unwrap();
    let (status, _) = daemon
        .post(
            &format!("/api/approvals/{id}"),
            &json!({ "decision": "deny" }),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = json_response(turn.await.unwrap().unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "Not saved.");

    let requests = wait_requests(&fake, 4).await;
    assert!(is_compile(&requests[0]), "{}", requests[0]);
    let judgment = &requests[2];
    assert!(is_judgment(judgment), "{judgment}");
    let sent = judgment.to_string();
    assert!(
        sent.contains("write_file") && sent.contains("path:diary.txt"),
        "{sent}"
    );
    assert!(
        !sent.contains("PLANTED"),
        "an argument reached the judge: {sent}"
    );

    // `cara rules show` names it uncompiled, with the model's reason: from the running
    // gateway, and from the database once it is stopped.
    let check_show = || async {
        let out = cara(&dir).args(["rules", "show"]).run().await;
        assert_eq!(out.code, Some(0), "{out:?}");
        assert!(out.stdout.contains("uncompiled"), "{out:?}");
        assert!(out.stdout.contains("not in the metadata"), "{out:?}");
    };
    check_show().await;
    let doctor = cara(&dir).args(["doctor"]).run().await;
    assert!(
        doctor
            .stdout
            .contains("plain-English rules: 0 compiled, 1 not"),
        "{doctor:?}"
    );
    daemon.stop().await;
    check_show().await;
}
