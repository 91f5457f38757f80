//! The JSON API through the router value: who gets in, what the session, approval and
//! audit endpoints answer, and that every failure is a typed error.

mod common;

use axum::http::StatusCode;
use carapace_gate::GateConfig;
use carapace_testkit::Reply;
use common::{Call, Options, TOKEN, audit_events, eventually, harness, harness_with, new_session};
use serde_json::{Value, json};

#[tokio::test]
async fn health_answers_without_a_token() {
    let h = harness(Vec::new()).await;
    let answer = Call::get("/health").auth(None).send(&h.app).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json(), json!({ "status": "ok" }));
    assert!(audit_events(&h.store, "auth_failed").is_empty());
}

#[tokio::test]
async fn every_other_route_refuses_a_missing_or_wrong_token_and_audits_it() {
    let h = harness(Vec::new()).await;
    let routes = [
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/api/status"),
        ("GET", "/api/sessions"),
        ("POST", "/api/sessions"),
        ("GET", "/api/sessions/s_x"),
        ("GET", "/api/sessions/s_x/messages"),
        ("POST", "/api/sessions/s_x/messages"),
        ("GET", "/api/sessions/s_x/tools"),
        ("POST", "/api/sessions/s_x/tools/call"),
        ("GET", "/api/approvals"),
        ("POST", "/api/approvals/ap_x"),
        ("GET", "/api/audit"),
        ("GET", "/api/audit/verify"),
        ("GET", "/ws"),
    ];
    let wrong = format!("Bearer {TOKEN}x");
    let truncated = format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]);
    let basic = format!("Basic {TOKEN}");
    let credentials: [(Option<&str>, &str); 6] = [
        (None, "missing token"),
        (Some(wrong.as_str()), "wrong token"),
        (Some(truncated.as_str()), "wrong token"),
        (Some("Bearer "), "wrong token"),
        (Some(basic.as_str()), "missing token"),
        (Some(TOKEN), "missing token"),
    ];
    for (method, path) in routes {
        for (auth, _) in credentials {
            let answer = Call::new(method, path)
                .auth(auth)
                .json(&json!({}))
                .send(&h.app)
                .await;
            assert_eq!(
                answer.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {auth:?}: {}",
                answer.text()
            );
            assert_eq!(answer.code(), "UNAUTHORIZED");
        }
    }
    // Failures are audited at most once a second, each record counting the failures it
    // stands for: the first at once, the rest (sent within a second) summed in later ones.
    let failures = audit_events(&h.store, "auth_failed");
    let (_, first_path) = routes[0];
    assert_eq!(failures[0]["path"], first_path, "{}", failures[0]);
    assert_eq!(failures[0]["reason"], credentials[0].1, "{}", failures[0]);
    assert_eq!(failures[0]["count"], 1, "{}", failures[0]);
    let counted: u64 = failures.iter().map(|r| r["count"].as_u64().unwrap()).sum();
    assert!(
        counted <= (routes.len() * credentials.len()) as u64,
        "{failures:?}"
    );
    // The guesses themselves are not kept, nor anything that looks like the token.
    let log = serde_json::to_string(
        &h.store
            .audit_tail(10_000)
            .unwrap()
            .iter()
            .map(|e| &e.record)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(!log.contains(&TOKEN[..10]), "{log}");
    // Nothing was created by the refused requests.
    assert!(h.store.list_sessions(10).unwrap().is_empty());
}

#[tokio::test]
async fn the_right_token_is_accepted_in_any_scheme_case() {
    let h = harness(Vec::new()).await;
    for auth in [
        format!("Bearer {TOKEN}"),
        format!("bearer {TOKEN}"),
        format!("BEARER  {TOKEN} "),
    ] {
        let answer = Call::get("/api/status")
            .auth(Some(&auth))
            .send(&h.app)
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{auth:?}");
    }
}

#[tokio::test]
async fn only_loopback_host_names_are_served() {
    let h = harness(Vec::new()).await;
    for host in [
        "localhost:8321",
        "localhost",
        "127.0.0.1:8321",
        "[::1]:8321",
    ] {
        let answer = Call::get("/api/status").host(Some(host)).send(&h.app).await;
        assert_eq!(answer.status, StatusCode::OK, "{host}: {}", answer.text());
    }
    for host in [
        Some("evil.com"),
        Some("localhost.evil.com:8321"),
        Some("evil.com:8321"),
        Some(""),
        None,
    ] {
        for path in ["/api/status", "/health"] {
            let answer = Call::get(path).host(host).send(&h.app).await;
            assert_eq!(
                answer.status,
                StatusCode::MISDIRECTED_REQUEST,
                "{host:?} {path}"
            );
            assert_eq!(answer.code(), "BAD_HOST");
        }
    }
    // A rebinding page without the token is stopped at the Host check, before auth.
    let answer = Call::get("/api/status")
        .host(Some("evil.com"))
        .auth(None)
        .send(&h.app)
        .await;
    assert_eq!(answer.status, StatusCode::MISDIRECTED_REQUEST);
}

#[tokio::test]
async fn unknown_endpoints_are_typed_404s() {
    let h = harness(Vec::new()).await;
    let answer = Call::get("/api/nope").send(&h.app).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.code(), "NOT_FOUND");
}

#[tokio::test]
async fn sessions_are_created_listed_and_fetched() {
    let h = harness(Vec::new()).await;
    let untitled = Call::post("/api/sessions").send(&h.app).await;
    assert_eq!(untitled.status, StatusCode::CREATED);
    let untitled = untitled.json()["session"].clone();
    assert_eq!(untitled["title"], "");
    assert_eq!(
        untitled["label"],
        json!({ "integrity": "trusted", "confidentiality": "public" })
    );

    let titled = Call::post("/api/sessions")
        .json(&json!({ "title": "x" }))
        .send(&h.app)
        .await;
    assert_eq!(titled.status, StatusCode::CREATED);
    let titled = titled.json()["session"].clone();
    assert_eq!(titled["title"], "x");
    assert_ne!(titled["id"], untitled["id"]);

    for bad in [
        r#"{"title":"x","owner":"me"}"#,
        r#"{"title":7}"#,
        "{",
        "null",
    ] {
        let answer = Call::post("/api/sessions")
            .raw(Some("application/json"), bad)
            .send(&h.app)
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(answer.code(), "BAD_REQUEST");
    }

    let list = Call::get("/api/sessions").send(&h.app).await.json();
    let mut ids: Vec<&Value> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["id"])
        .collect();
    ids.sort_by_key(|v| v.as_str().unwrap().to_string());
    let mut expected = vec![&untitled["id"], &titled["id"]];
    expected.sort_by_key(|v| v.as_str().unwrap().to_string());
    assert_eq!(ids, expected);

    let id = titled["id"].as_str().unwrap();
    let one = Call::get(&format!("/api/sessions/{id}")).send(&h.app).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.json()["session"], titled);
    assert_eq!(audit_events(&h.store, "session_created").len(), 2);

    let long = "s_".to_string() + &"a".repeat(200);
    for unknown in ["s_unknown", long.as_str()] {
        for path in [
            format!("/api/sessions/{unknown}"),
            format!("/api/sessions/{unknown}/messages"),
        ] {
            let answer = Call::get(&path).send(&h.app).await;
            assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(answer.code(), "NOT_FOUND");
        }
    }
}

#[tokio::test]
async fn a_posted_message_runs_a_turn_whose_messages_can_be_listed() {
    let h = harness(vec![
        Reply::ToolCalls(vec![("read_file".into(), json!({ "path": "notes.txt" }))]),
        Reply::Text("You need milk.".into()),
    ])
    .await;
    let id = new_session(&h.app).await;
    let path = format!("/api/sessions/{id}/messages");
    let answer = Call::post(&path)
        .json(&json!({ "text": "what do I need?" }))
        .send(&h.app)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(
        answer.json(),
        json!({ "session": id, "text": "You need milk.", "steps": 2, "tool_calls": 1 })
    );

    let messages = Call::get(&path).send(&h.app).await.json()["messages"].clone();
    let summary: Vec<(String, String, String)> = messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_string(),
                m["source"].as_str().unwrap().to_string(),
                m["label"]["confidentiality"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [
        ("user", "owner", "public"),
        ("assistant", "model", "public"),
        ("tool", "user_file", "private"),
        // The model's answer is as confidential as what it read.
        ("assistant", "model", "private"),
    ];
    assert_eq!(
        summary,
        expected.map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    );
    assert_eq!(messages[0]["content"], "what do I need?");
    let call_id = &messages[1]["tool_calls"][0]["id"];
    assert_eq!(&messages[2]["tool_call_id"], call_id);
    let seqs: Vec<i64> = messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    // The session's label rose with the private file.
    let session = Call::get(&format!("/api/sessions/{id}"))
        .send(&h.app)
        .await
        .json();
    assert_eq!(session["session"]["label"]["confidentiality"], "private");

    for (body, status) in [
        (json!({ "text": "  " }), StatusCode::BAD_REQUEST),
        (
            json!({ "text": "hi", "session": "s_other" }),
            StatusCode::BAD_REQUEST,
        ),
        (json!({ "message": "hi" }), StatusCode::BAD_REQUEST),
    ] {
        let answer = Call::post(&path).json(&body).send(&h.app).await;
        assert_eq!(answer.status, status, "{body}");
        assert_eq!(answer.code(), "BAD_REQUEST");
    }
    let answer = Call::post("/api/sessions/s_unknown/messages")
        .json(&json!({ "text": "hi" }))
        .send(&h.app)
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(
        h.fake.as_ref().unwrap().requests().len(),
        2,
        "refused posts reach no model"
    );
}

#[tokio::test]
async fn turn_failures_are_typed() {
    let h = harness_with(Options {
        script: Some(vec![
            Reply::Error {
                status: 500,
                message: "upstream broke".into(),
            },
            Reply::ToolCalls(vec![("list_dir".into(), json!({}))]),
            Reply::ToolCalls(vec![("list_dir".into(), json!({}))]),
        ]),
        max_steps: 2,
        ..Options::default()
    })
    .await;
    let id = new_session(&h.app).await;
    let path = format!("/api/sessions/{id}/messages");
    let answer = Call::post(&path)
        .json(&json!({ "text": "hi" }))
        .send(&h.app)
        .await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.code(), "MODEL_ERROR");
    assert!(
        answer.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("upstream broke")
    );

    let answer = Call::post(&path)
        .json(&json!({ "text": "loop" }))
        .send(&h.app)
        .await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.code(), "TOO_MANY_STEPS");
}

#[tokio::test]
async fn without_a_provider_turns_answer_no_provider_and_the_rest_works() {
    let h = harness_with(Options {
        script: None,
        ..Options::default()
    })
    .await;
    let id = new_session(&h.app).await;
    let answer = Call::post(&format!("/api/sessions/{id}/messages"))
        .json(&json!({ "text": "hi" }))
        .send(&h.app)
        .await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.code(), "NO_PROVIDER");
    assert_eq!(answer.json()["error"]["message"], common::HINT);
    let status = Call::get("/api/status").send(&h.app).await.json();
    assert_eq!(status["provider_configured"], false);
    assert_eq!(status["provider_hint"], common::HINT);
}

async fn pending_approvals(h: &common::Harness) -> Vec<Value> {
    let answer = Call::get("/api/approvals").send(&h.app).await;
    assert_eq!(answer.status, StatusCode::OK);
    answer.json()["approvals"].as_array().unwrap().clone()
}

/// Starts a turn that calls write_file and waits until its approval is pending.
async fn turn_waiting_for_approval(
    h: &common::Harness,
    file: &str,
) -> (tokio::task::JoinHandle<common::Answer>, Value) {
    let id = new_session(&h.app).await;
    let app = h.app.clone();
    let path = format!("/api/sessions/{id}/messages");
    let turn = tokio::spawn(async move {
        Call::post(&path)
            .json(&json!({ "text": "write it" }))
            .send(&app)
            .await
    });
    eventually("the approval request", || {
        !h.gate.pending_approvals().is_empty()
    })
    .await;
    let approvals = pending_approvals(h).await;
    assert_eq!(approvals.len(), 1, "{approvals:?}");
    let approval = approvals[0].clone();
    assert_eq!(approval["session"], id.as_str());
    assert_eq!(approval["tool"], "write_file");
    assert_eq!(approval["rule"], "preset.strict");
    assert!(
        approval["args"].as_str().unwrap().contains(file),
        "{approval}"
    );
    assert!(approval["id"].as_str().unwrap().starts_with("ap_"));
    assert!(approval["expires_ms"].as_i64() > approval["created_ms"].as_i64());
    (turn, approval)
}

#[tokio::test]
async fn an_approval_is_listed_while_the_turn_waits_and_approving_lets_it_run() {
    let h = harness(vec![
        Reply::ToolCalls(vec![(
            "write_file".into(),
            json!({ "path": "out.txt", "content": "hello" }),
        )]),
        Reply::Text("Written.".into()),
    ])
    .await;
    let (turn, approval) = turn_waiting_for_approval(&h, "out.txt").await;
    let decide = format!("/api/approvals/{}", approval["id"].as_str().unwrap());

    for bad in [
        json!({ "decision": "maybe" }),
        json!({ "decision": true }),
        json!({}),
        json!({ "decision": "approve", "x": 1 }),
    ] {
        let answer = Call::post(&decide).json(&bad).send(&h.app).await;
        assert!(
            answer.status.is_client_error(),
            "{bad}: {:?}",
            answer.status
        );
        assert_eq!(answer.code(), "BAD_REQUEST", "{bad}");
    }
    assert_eq!(
        pending_approvals(&h).await.len(),
        1,
        "bad decisions change nothing"
    );
    assert!(!h.dir.path().join("workspace/out.txt").exists());

    let answer = Call::post(&decide)
        .json(&json!({ "decision": "approve" }))
        .send(&h.app)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(
        answer.json(),
        json!({ "id": approval["id"], "decision": "approve" })
    );

    let done = turn.await.unwrap();
    assert_eq!(done.status, StatusCode::OK, "{}", done.text());
    assert_eq!(done.json()["text"], "Written.");
    assert_eq!(
        std::fs::read_to_string(h.dir.path().join("workspace/out.txt")).unwrap(),
        "hello"
    );
    assert!(pending_approvals(&h).await.is_empty());

    // An answered approval cannot be answered again.
    let again = Call::post(&decide)
        .json(&json!({ "decision": "deny" }))
        .send(&h.app)
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(again.code(), "NOT_FOUND");
    let calls = audit_events(&h.store, "tool_call");
    let outcomes: Vec<&str> = calls
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["asked", "approved", "allowed", "executed"]);
}

#[tokio::test]
async fn denying_an_approval_gives_the_model_a_typed_refusal() {
    let h = harness(vec![
        Reply::ToolCalls(vec![(
            "write_file".into(),
            json!({ "path": "no.txt", "content": "x" }),
        )]),
        Reply::Text("The owner said no.".into()),
    ])
    .await;
    let (turn, approval) = turn_waiting_for_approval(&h, "no.txt").await;
    let answer = Call::post(&format!(
        "/api/approvals/{}",
        approval["id"].as_str().unwrap()
    ))
    .json(&json!({ "decision": "deny" }))
    .send(&h.app)
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["decision"], "deny");
    let done = turn.await.unwrap();
    assert_eq!(done.json()["text"], "The owner said no.");
    assert!(!h.dir.path().join("workspace/no.txt").exists());
    let second = &h.fake.as_ref().unwrap().requests()[1];
    let tool = second["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .unwrap();
    let content: Value = serde_json::from_str(tool["content"].as_str().unwrap()).unwrap();
    assert_eq!(content["error"]["code"], "CONFIRMATION_DENIED");
    assert_eq!(content["error"]["stage"], "approve");
}

#[tokio::test]
async fn unknown_approval_ids_are_404() {
    let h = harness(Vec::new()).await;
    for id in ["ap_0000000000000000", "nope", &"x".repeat(300)] {
        let answer = Call::post(&format!("/api/approvals/{id}"))
            .json(&json!({ "decision": "approve" }))
            .send(&h.app)
            .await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{id}");
        assert_eq!(answer.code(), "NOT_FOUND");
    }
}

#[tokio::test]
async fn an_approval_nobody_answers_expires_and_is_gone() {
    let h = harness_with(Options {
        script: Some(vec![
            Reply::ToolCalls(vec![(
                "write_file".into(),
                json!({ "path": "late.txt", "content": "x" }),
            )]),
            Reply::Text("Nobody answered.".into()),
        ]),
        gate: GateConfig {
            approval_timeout: std::time::Duration::from_millis(200),
            ..Options::default().gate
        },
        ..Options::default()
    })
    .await;
    let id = new_session(&h.app).await;
    let answer = Call::post(&format!("/api/sessions/{id}/messages"))
        .json(&json!({ "text": "write late" }))
        .send(&h.app)
        .await;
    assert_eq!(answer.json()["text"], "Nobody answered.");
    assert!(pending_approvals(&h).await.is_empty());
    assert!(!h.dir.path().join("workspace/late.txt").exists());
}

#[tokio::test]
async fn the_audit_log_can_be_tailed_and_verified() {
    let h = harness(Vec::new()).await;
    for _ in 0..7 {
        new_session(&h.app).await;
    }
    let _ = Call::get("/api/status").auth(None).send(&h.app).await;

    let tail = Call::get("/api/audit?n=5").send(&h.app).await;
    assert_eq!(tail.status, StatusCode::OK);
    let entries = tail.json()["entries"].as_array().unwrap().clone();
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [4, 5, 6, 7, 8], "the last five, oldest first");
    for pair in entries.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"], "chained");
    }
    assert_eq!(entries[4]["record"]["event"], "auth_failed");

    let after = Call::get("/api/audit?after=6&n=10")
        .send(&h.app)
        .await
        .json();
    let seqs: Vec<u64> = after["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [7, 8]);

    let verify = Call::get("/api/audit/verify").send(&h.app).await;
    assert_eq!(verify.status, StatusCode::OK);
    let verify = verify.json();
    assert_eq!(verify["ok"], true, "{verify}");
    assert_eq!(verify["records"], 8);
    assert_eq!(verify["head_hash"], entries[4]["hash"]);

    for query in ["n=abc", "n=-1", "after=x", "bogus=1"] {
        let answer = Call::get(&format!("/api/audit?{query}")).send(&h.app).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(answer.code(), "BAD_REQUEST");
    }
}

#[tokio::test]
async fn bodies_are_bounded_parsed_strictly_and_must_be_json() {
    let h = harness_with(Options {
        script: Some(vec![Reply::Text("unused".into())]),
        max_body_bytes: 4096,
        ..Options::default()
    })
    .await;
    let id = new_session(&h.app).await;
    let big = json!({ "text": "a".repeat(5000) });
    let posts = [
        format!("/api/sessions/{id}/messages"),
        "/v1/chat/completions".to_string(),
        "/api/approvals/ap_x".to_string(),
        format!("/api/sessions/{id}/tools/call"),
        "/api/sessions".to_string(),
    ];
    for path in &posts {
        let answer = Call::post(path).json(&big).send(&h.app).await;
        assert_eq!(
            answer.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{path}: {}",
            answer.text()
        );
        assert_eq!(answer.code(), "PAYLOAD_TOO_LARGE", "{path}");

        let answer = Call::post(path)
            .raw(Some("application/json"), "{\"text\": ")
            .send(&h.app)
            .await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{path}: {}",
            answer.text()
        );
        assert_eq!(answer.code(), "BAD_REQUEST", "{path}");
    }
    for path in &posts[..4] {
        for ct in [Some("text/plain"), None] {
            let answer = Call::post(path)
                .raw(ct, r#"{"text":"hi"}"#)
                .send(&h.app)
                .await;
            assert_eq!(
                answer.status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{path} {ct:?}"
            );
            answer.code();
        }
    }
    assert!(h.fake.as_ref().unwrap().requests().is_empty());
}

#[tokio::test]
async fn turns_of_one_session_do_not_interleave() {
    let slow = |t: &str| {
        Reply::Delayed(
            std::time::Duration::from_millis(50),
            Box::new(Reply::Text(t.into())),
        )
    };
    let h = harness(vec![slow("one"), slow("two"), slow("three")]).await;
    let id = new_session(&h.app).await;
    let path = format!("/api/sessions/{id}/messages");
    let turns: Vec<_> = (0..3)
        .map(|i| {
            let app = h.app.clone();
            let path = path.clone();
            tokio::spawn(async move {
                Call::post(&path)
                    .json(&json!({ "text": format!("q{i}") }))
                    .send(&app)
                    .await
            })
        })
        .collect();
    for t in turns {
        assert_eq!(t.await.unwrap().status, StatusCode::OK);
    }
    let messages = Call::get(&path).send(&h.app).await.json()["messages"].clone();
    let roles: Vec<&str> = messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        [
            "user",
            "assistant",
            "user",
            "assistant",
            "user",
            "assistant"
        ]
    );
    let answers: Vec<&str> = messages
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .step_by(2)
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(answers, ["one", "two", "three"]);
}
