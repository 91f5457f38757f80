//! The OpenAI-compatible endpoints through the router value, checked against the shapes
//! OpenAI clients parse: `chat.completion`, `chat.completion.chunk` events and `[DONE]`.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use carapace_testkit::Reply;
use common::{Call, MODEL, Options, eventually, harness, harness_with};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

fn ask(text: &str) -> Value {
    json!({
        "model": "gpt-4o",
        "messages": [
            { "role": "system", "content": "client-side system prompt, ignored" },
            { "role": "user", "content": text },
        ],
        "temperature": 0.2,
    })
}

/// The `data:` payloads of an SSE body, in order.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|event| !event.trim().is_empty())
        .map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            assert!(!data.is_empty(), "an event without data: {event:?}");
            data.join("\n")
        })
        .collect()
}

#[tokio::test]
async fn a_plain_completion_has_the_openai_shape() {
    let h = harness(vec![
        Reply::ToolCalls(vec![("list_dir".into(), json!({}))]),
        Reply::Text("There is one file, notes.txt.".into()),
    ])
    .await;
    let answer = Call::post("/v1/chat/completions")
        .json(&ask("what files do I have?"))
        .send(&h.app)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert!(
        answer
            .header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let body = answer.json();
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], MODEL, "Carapace answers with its own model");
    assert!(body["created"].as_i64().unwrap() > 1_600_000_000);
    assert_eq!(
        body["choices"],
        json!([{
            "index": 0,
            "message": { "role": "assistant", "content": "There is one file, notes.txt." },
            "finish_reason": "stop",
        }])
    );
    let usage = &body["usage"];
    let (p, c) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert!(p > 0 && c > 0);
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), p + c);

    // A new session per request without `user`; its messages hold the whole turn.
    let session = answer.header("x-carapace-session").unwrap().to_string();
    assert!(session.starts_with("s_"), "{session}");
    let messages = Call::get(&format!("/api/sessions/{session}/messages"))
        .send(&h.app)
        .await
        .json();
    assert_eq!(messages["messages"].as_array().unwrap().len(), 4);
    // The client's system message is not the model's system prompt.
    let sent = &h.fake.as_ref().unwrap().requests()[0]["messages"];
    assert_eq!(sent[0]["content"], "test system prompt");
    assert_eq!(
        sent[1],
        json!({ "role": "user", "content": "what files do I have?" })
    );
}

#[tokio::test]
async fn a_streamed_completion_sends_chunks_then_done() {
    let text = "Your notes say: buy milk.";
    let h = harness(vec![
        Reply::ToolCalls(vec![("read_file".into(), json!({ "path": "notes.txt" }))]),
        Reply::Text(text.into()),
    ])
    .await;
    let mut body = ask("read my notes");
    body["stream"] = json!(true);
    let answer = Call::post("/v1/chat/completions")
        .json(&body)
        .send(&h.app)
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        answer
            .header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert!(answer.header("x-carapace-session").is_some());

    let events = sse_data(&answer.text());
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        assert_eq!(c["id"], id, "one id for the whole stream");
        assert_eq!(c["model"], MODEL);
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({ "role": "assistant", "content": "" })
    );
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text);
    let deltas = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["content"].is_string())
        .count();
    assert!(deltas > 2, "the text arrives in pieces");

    let n = chunks.len();
    assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[n - 2]["choices"][0]["delta"], json!({}));
    for c in &chunks[..n - 2] {
        assert!(c["choices"][0]["finish_reason"].is_null(), "{c}");
    }
    let usage = &chunks[n - 1];
    assert_eq!(usage["choices"], json!([]));
    let u = &usage["usage"];
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );
    assert!(u["prompt_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn a_failed_streamed_turn_ends_with_a_typed_error_event() {
    let h = harness(vec![Reply::Error {
        status: 503,
        message: "overloaded".into(),
    }])
    .await;
    let mut body = ask("hi");
    body["stream"] = json!(true);
    let answer = Call::post("/v1/chat/completions")
        .json(&body)
        .send(&h.app)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "the stream had started");
    let events = sse_data(&answer.text());
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "MODEL_ERROR", "{events:?}");
    assert!(!events.iter().any(|e| e == "[DONE]"));
}

#[tokio::test]
async fn the_user_field_names_a_stable_session() {
    let h = harness(vec![
        Reply::Text("first".into()),
        Reply::Text("second".into()),
        Reply::Text("bob's".into()),
        Reply::Text("by id".into()),
        Reply::Text("by api id".into()),
    ])
    .await;
    let as_user = |user: &str, text: &str| {
        let mut body = ask(text);
        body["user"] = json!(user);
        Call::post("/v1/chat/completions").json(&body)
    };
    let one = as_user("alice", "hello").send(&h.app).await;
    let two = as_user("alice", "again").send(&h.app).await;
    let bob = as_user("bob", "hi").send(&h.app).await;
    let alice = one.header("x-carapace-session").unwrap().to_string();
    assert!(alice.starts_with("u_"), "{alice}");
    assert_eq!(two.header("x-carapace-session"), Some(alice.as_str()));
    assert_ne!(bob.header("x-carapace-session"), Some(alice.as_str()));
    assert_eq!(two.json()["choices"][0]["message"]["content"], "second");

    // The server keeps the history: alice's second request carried her first turn.
    let requests = h.fake.as_ref().unwrap().requests();
    let contents: Vec<&str> = requests[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["hello", "first", "again"]);
    let bob_sent = requests[2]["messages"].as_array().unwrap();
    assert_eq!(bob_sent.len(), 2, "bob's session is his own");

    // An existing session id, like the header just returned, is used as is.
    let by_id = as_user(&alice, "by id").send(&h.app).await;
    assert_eq!(by_id.header("x-carapace-session"), Some(alice.as_str()));
    let api_session = common::new_session(&h.app).await;
    let by_api_id = as_user(&api_session, "by api id").send(&h.app).await;
    assert_eq!(
        by_api_id.header("x-carapace-session"),
        Some(api_session.as_str())
    );
    let sessions = Call::get("/api/sessions").send(&h.app).await.json();
    assert_eq!(sessions["sessions"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn requests_without_a_usable_user_message_are_refused() {
    let h = harness(Vec::new()).await;
    let cases = [
        json!({ "messages": [] }),
        json!({ "messages": [{ "role": "system", "content": "only a system prompt" }] }),
        json!({ "messages": [{ "role": "user", "content": "   " }] }),
        json!({ "messages": [{ "role": "user", "content": 42 }] }),
        json!({ "messages": [{ "role": "user", "content": [{ "type": "image_url", "image_url": { "url": "x" } }] }] }),
        json!({ "messages": [{ "role": "user", "content": "hi" }], "user": "u".repeat(300) }),
        json!({ "model": "m" }),
        json!({ "messages": "hi" }),
    ];
    for body in cases {
        let answer = Call::post("/v1/chat/completions")
            .json(&body)
            .send(&h.app)
            .await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            answer.text()
        );
        assert_eq!(answer.code(), "BAD_REQUEST");
    }
    assert!(h.fake.as_ref().unwrap().requests().is_empty());
}

#[tokio::test]
async fn text_parts_are_joined_into_the_user_message() {
    let h = harness(vec![Reply::Text("ok".into())]).await;
    let body = json!({ "messages": [{ "role": "user", "content": [
        { "type": "text", "text": "line one" },
        { "type": "image_url", "image_url": { "url": "http://example.invalid/x.png" } },
        { "type": "text", "text": "line two" },
    ] }] });
    let answer = Call::post("/v1/chat/completions")
        .json(&body)
        .send(&h.app)
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let sent = &h.fake.as_ref().unwrap().requests()[0]["messages"][1];
    assert_eq!(sent["content"], "line one\nline two");
}

#[tokio::test]
async fn without_a_provider_completions_answer_no_provider_with_the_hint() {
    let h = harness_with(Options {
        script: None,
        ..Options::default()
    })
    .await;
    for stream in [false, true] {
        let mut body = ask("hi");
        body["stream"] = json!(stream);
        let answer = Call::post("/v1/chat/completions")
            .json(&body)
            .send(&h.app)
            .await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.code(), "NO_PROVIDER");
        assert_eq!(answer.json()["error"]["message"], common::HINT);
    }
    let models = Call::get("/v1/models").send(&h.app).await;
    assert_eq!(models.status, StatusCode::OK);
    assert_eq!(models.json(), json!({ "object": "list", "data": [] }));
    assert!(
        h.store.list_sessions(10).unwrap().is_empty(),
        "no session for a refused request"
    );
}

#[tokio::test]
async fn models_lists_the_configured_model() {
    let h = harness(Vec::new()).await;
    let answer = Call::get("/v1/models").send(&h.app).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.json(),
        json!({
            "object": "list",
            "data": [{ "id": MODEL, "object": "model", "created": 0, "owned_by": "carapace" }],
        })
    );
}

#[tokio::test]
async fn a_client_that_leaves_a_stream_cancels_the_turn_upstream() {
    let h = harness(vec![
        Reply::Delayed(
            Duration::from_secs(60),
            Box::new(Reply::Text("too late".into())),
        ),
        Reply::Text("next".into()),
    ])
    .await;
    let fake = h.fake.as_ref().unwrap();
    let mut body = ask("slow");
    body["stream"] = json!(true);
    body["user"] = json!("carol");
    let response = h
        .app
        .clone()
        .oneshot(Call::post("/v1/chat/completions").json(&body).request())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body_stream = response.into_body();
    // The role chunk comes first, before the model has said anything.
    let first = body_stream
        .frame()
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("\"role\":\"assistant\""));
    eventually("the model request", || fake.requests().len() == 1).await;
    drop(body_stream);
    eventually("the upstream disconnect", || fake.disconnects() == 1).await;

    // The session's turn lock was released with the turn.
    let mut again = ask("are you there?");
    again["user"] = json!("carol");
    let answer = Call::post("/v1/chat/completions")
        .json(&again)
        .send(&h.app)
        .await;
    assert_eq!(answer.json()["choices"][0]["message"]["content"], "next");
}
