//! The OpenAI-compatible API: `/v1/chat/completions` (plain and streamed) runs a full
//! agent turn with tools behind the Gate; `/v1/models`; sessions chosen by `user`.

use carapace_testkit::{FakeOpenAi, Reply};
use serde_json::{Value, json};

use crate::util::{
    Daemon, TestDir, json_response, outcomes, tool_call_records, tool_messages, transcript,
    wait_requests,
};

fn user_message(text: &str) -> Value {
    json!([{ "role": "user", "content": text }])
}

/// The workspace listing the model must receive for a workspace holding only hello.txt.
fn expected_listing() -> Value {
    json!([{ "name": "hello.txt", "kind": "file", "size": 3 }])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completion_runs_a_tool_call_through_the_gate() {
    let fake = FakeOpenAi::start(vec![
        Reply::ToolCalls(vec![("list_dir".into(), json!({}))]),
        Reply::Text("There is one file: hello.txt".into()),
    ])
    .await;
    let dir = TestDir::strict();
    let daemon = Daemon::start(&dir, &fake).await;
    std::fs::write(dir.workspace().join("hello.txt"), "hi\n").unwrap();

    let resp = daemon
        .chat(&json!({
            "model": "gpt-4o",
            "temperature": 0.2,
            "messages": [
                { "role": "system", "content": "ignored: the server keeps its own" },
                { "role": "user", "content": "what is in my workspace?" },
            ],
        }))
        .await;
    let session = resp
        .headers()
        .get("x-carapace-session")
        .expect("x-carapace-session header")
        .to_str()
        .unwrap()
        .to_string();
    let (status, body) = json_response(resp).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "fake-model", "answers with its own model");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "There is one file: hello.txt");
    assert_eq!(choice["finish_reason"], "stop");
    assert!(session.starts_with("s_"), "a new session: {session}");

    let requests = fake.requests();
    assert_eq!(
        requests.len(),
        2,
        "one step for the call, one for the answer"
    );
    assert_eq!(requests[0]["model"], "fake-model");
    let offered: Vec<&str> = requests[0]["tools"]
        .as_array()
        .expect("tools are offered")
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
            "exec",
            "web_fetch",
            "http_request",
            "propose_plan"
        ]
    );
    assert_eq!(
        transcript(&requests[1])[..2],
        ["user: what is in my workspace?", "assistant calls list_dir"]
    );
    let tools = tool_messages(&requests[1]);
    assert_eq!(tools.len(), 1, "{tools:?}");
    assert_eq!(tools[0]["tool_call_id"], "call_1");
    let result: Value = serde_json::from_str(tools[0]["content"].as_str().unwrap()).unwrap();
    assert_eq!(result["entries"], expected_listing(), "{result}");

    // A read has no side effect to write ahead of: the Gate records its decision and
    // its result in one record (writes get `allowed` before and `executed` after; see
    // the approval tests).
    let records = tool_call_records(&dir, "list_dir").await;
    assert_eq!(outcomes(&records), ["executed"], "{records:?}");
    let r = &records[0];
    assert_eq!(r["session"], session.as_str());
    assert_eq!(r["rule"], "default.read");
    assert_eq!(r["call_id"], "call_1");
    assert!(r["result_sha256"].is_string(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_chat_completion_sends_chunks_and_done() {
    let text = "There is one file: hello.txt, and it says hi";
    let fake = FakeOpenAi::start(vec![
        Reply::ToolCalls(vec![("list_dir".into(), json!({ "path": "." }))]),
        Reply::Text(text.into()),
    ])
    .await;
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &fake).await;
    std::fs::write(dir.workspace().join("hello.txt"), "hi\n").unwrap();

    let resp = daemon
        .chat(&json!({ "stream": true, "messages": user_message("what is there?") }))
        .await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert!(resp.headers().contains_key("x-carapace-session"));
    let body = resp.text().await.unwrap();

    let events: Vec<&str> = body
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {e:?}"))
        })
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{body}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}")))
        .collect();
    let id = &chunks[0]["id"];
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        assert_eq!(&c["id"], id, "one id for the whole stream");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text);
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "stop"),
        "{body}"
    );

    // The tool call ran through the Gate in the streamed turn too.
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    let result: Value =
        serde_json::from_str(tool_messages(&requests[1])[0]["content"].as_str().unwrap()).unwrap();
    assert_eq!(result["entries"], expected_listing(), "{result}");
    let records = tool_call_records(&dir, "list_dir").await;
    assert_eq!(outcomes(&records), ["executed"], "{records:?}");
    assert_eq!(records[0]["rule"], "default.read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_and_sessions_chosen_by_user() {
    let fake = FakeOpenAi::start(vec![
        Reply::Text("first answer".into()),
        Reply::Text("second answer".into()),
        Reply::Text("bob's answer".into()),
    ])
    .await;
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &fake).await;

    let (status, models) = daemon.get("/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["fake-model"]);

    let mut sessions = Vec::new();
    for (user, text) in [
        ("alice", "one"),
        ("alice", "two, with history"),
        ("bob", "three"),
    ] {
        let resp = daemon
            .chat(&json!({ "user": user, "messages": user_message(text) }))
            .await;
        sessions.push(
            resp.headers()["x-carapace-session"]
                .to_str()
                .unwrap()
                .to_string(),
        );
        let (status, body) = json_response(resp).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(sessions[0], sessions[1], "the same user, the same session");
    assert_ne!(sessions[0], sessions[2], "another user, another session");

    let requests = wait_requests(&fake, 3).await;
    assert_eq!(
        transcript(&requests[1]),
        [
            "user: one",
            "assistant: first answer",
            "user: two, with history"
        ]
    );
    assert_eq!(
        transcript(&requests[2]),
        ["user: three"],
        "bob does not see alice"
    );

    let (status, listed) = daemon
        .get(&format!("/api/sessions/{}/messages", sessions[0]))
        .await;
    assert_eq!(status, 200);
    assert_eq!(listed["messages"].as_array().unwrap().len(), 4, "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_a_stream_cancels_the_model_request() {
    let fake = FakeOpenAi::start(vec![Reply::StallAfter(3)]).await;
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &fake).await;

    let mut resp = daemon
        .chat(&json!({ "stream": true, "messages": user_message("talk slowly") }))
        .await;
    assert_eq!(resp.status(), 200);
    // Read until the model's first words arrive, then hang up.
    let mut seen = String::new();
    while !seen.contains("\"content\":\"this ") {
        let chunk = tokio::time::timeout(crate::util::PATIENCE, resp.chunk())
            .await
            .expect("a chunk in time")
            .unwrap()
            .expect("the stream goes on");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(resp);
    crate::util::wait_for("the upstream request to be dropped", || {
        let gone = fake.disconnects() == 1;
        async move { gone.then_some(()) }
    })
    .await;
    daemon.assert_healthy().await;
}
