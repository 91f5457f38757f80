//! The production OpenAI Responses client driven against `FakeOpenAiResponses`, which
//! speaks the Responses API wire format on 127.0.0.1.

use std::time::Duration;

use carapace_llm::openai_responses::{DEFAULT_BASE_URL, OpenAiResponses, OpenAiResponsesConfig};
use carapace_llm::{
    ChatMessage, ChatRequest, ChatResponse, Provider, ProviderError, ToolCallRequest, ToolSpec,
};
use carapace_testkit::openai_responses::{
    FakeOpenAiResponses, INPUT_TOKENS, MODEL_ID, RETRY_AFTER_SECS, ResponsesReply as Reply,
};
use carapace_types::Secret;
use expect_test::expect;
use serde_json::json;

use common::{
    MODES, Mode, ask_model, assert_not_shown, drop_before_headers_and_mid_stream, each_mode, run,
};

mod common;

const KEY: &str = "sk-test-5b7e0c3a9d21f4";

fn config(fake: &FakeOpenAiResponses) -> OpenAiResponsesConfig {
    OpenAiResponsesConfig {
        base_url: fake.base_url(),
        api_key: Some(Secret::new(KEY.into())),
        request_timeout: Duration::from_secs(10),
        stall_timeout: Duration::from_secs(10),
    }
}

fn client(fake: &FakeOpenAiResponses) -> OpenAiResponses {
    OpenAiResponses::new(config(fake)).unwrap()
}

/// A fake that requires [`KEY`].
async fn fake(script: Vec<Reply>) -> FakeOpenAiResponses {
    FakeOpenAiResponses::start(script).await.with_api_key(KEY)
}

fn ask(text: &str) -> ChatRequest {
    ask_model("gpt-test", text)
}

/// Plays `reply` once in each mode and returns the responses.
async fn both_modes(reply: Reply) -> Vec<(Mode, Result<ChatResponse, ProviderError>)> {
    let fake = fake(vec![reply.clone(), reply]).await;
    let provider = client(&fake);
    each_mode(&provider, &ask("hi")).await
}

#[tokio::test]
async fn a_text_answer_in_both_modes() {
    let text = "The quick brown fox jumps over the lazy dog";
    let fake = fake(vec![Reply::Text(text.into()), Reply::Text(text.into())]).await;
    let provider = client(&fake);
    for mode in MODES {
        let (resp, deltas) = run(&provider, &ask("hi"), mode).await;
        let resp = resp.unwrap();
        assert_eq!(resp.content.as_deref(), Some(text), "{mode:?}");
        assert_eq!(resp.finish_reason.as_deref(), Some("stop"), "{mode:?}");
        assert_eq!(resp.model, "gpt-test", "{mode:?}");
        let usage = resp.usage.unwrap();
        assert_eq!(
            (usage.prompt_tokens, usage.completion_tokens),
            (INPUT_TOKENS, text.len() as u64 / 4 + 1),
            "{mode:?}: the usage of response.completed"
        );
        match mode {
            Mode::Plain => assert!(deltas.is_empty()),
            Mode::Streamed => {
                assert_eq!(deltas.len(), 9, "one delta a word: {deltas:?}");
                assert_eq!(deltas.concat(), text);
            }
        }
    }
    let requests = fake.requests();
    assert_eq!(requests[0]["stream"], json!(false));
    assert_eq!(requests[1]["stream"], json!(true));
    assert!(requests.iter().all(|r| r["store"] == json!(false)));
    assert_eq!(
        fake.authorizations(),
        [Some(format!("Bearer {KEY}")), Some(format!("Bearer {KEY}"))]
    );
    assert_eq!(fake.disconnects(), 0);
}

#[tokio::test]
async fn tool_calls_keep_their_call_ids_order_and_exact_arguments() {
    let input = json!({ "path": "notes/todo \"q\".md", "max_bytes": 4096, "note": "é ü – ok\n" });
    let reply = Reply::ToolCalls(vec![
        ("read_file".into(), input.clone()),
        ("now".into(), json!({})),
    ]);
    for (mode, resp) in both_modes(reply).await {
        let resp = resp.unwrap();
        assert_eq!(resp.content, None, "{mode:?}");
        assert_eq!(
            resp.finish_reason.as_deref(),
            Some("tool_calls"),
            "{mode:?}"
        );
        let got: Vec<(&str, String)> = resp
            .tool_calls
            .iter()
            .map(|c| (c.name.as_str(), c.arguments.clone()))
            .collect();
        // Streamed, the 4-character pieces cut through escapes and multi-byte text.
        assert_eq!(
            got,
            [("read_file", input.to_string()), ("now", "{}".into())],
            "{mode:?}"
        );
        assert!(
            resp.tool_calls
                .iter()
                .all(|c| c.id.starts_with("call_fake_")),
            "{mode:?}: the call_id, not the item id: {:?}",
            resp.tool_calls
        );
    }
}

#[tokio::test]
async fn tool_result_round_trip_request_shape() {
    let fake = fake(vec![Reply::Text("done".into())]).await;
    let req = ChatRequest {
        model: "gpt-test".into(),
        messages: vec![
            ChatMessage::System {
                content: "You are careful.".into(),
            },
            ChatMessage::User {
                content: "What is in src and docs?".into(),
            },
            ChatMessage::Assistant {
                content: Some("Let me look.".into()),
                tool_calls: vec![
                    ToolCallRequest {
                        id: "call_a".into(),
                        name: "list_dir".into(),
                        arguments: r#"{"path":"src"}"#.into(),
                        signature: None,
                    },
                    ToolCallRequest {
                        id: "call_b".into(),
                        name: "list_dir".into(),
                        // Malformed: goes back exactly as the model wrote it.
                        arguments: r#"{"path": "docs"#.into(),
                        signature: None,
                    },
                ],
            },
            ChatMessage::Tool {
                tool_call_id: "call_a".into(),
                content: "main.rs".into(),
            },
            ChatMessage::Tool {
                tool_call_id: "call_b".into(),
                content: "error: arguments are not valid json".into(),
            },
            ChatMessage::Assistant {
                content: Some("There is main.rs.".into()),
                tool_calls: vec![],
            },
            ChatMessage::User {
                content: "Thanks".into(),
            },
        ],
        tools: vec![ToolSpec {
            name: "list_dir".into(),
            description: "Lists a directory of the workspace.".into(),
            // `depth` is optional: strict mode, the API's default, would refuse this.
            parameters: json!({
                "type": "object",
                "properties": { "path": { "type": "string" }, "depth": { "type": "integer" } },
                "required": ["path"],
                "additionalProperties": false,
            }),
        }],
        max_tokens: Some(256),
        temperature: Some(0.2),
    };
    client(&fake).chat(&req, None).await.unwrap();
    let body =
        serde_json::to_string_pretty(&carapace_testkit::sorted_keys(&fake.requests()[0])).unwrap();
    expect![[r#"
        {
          "input": [
            {
              "content": "You are careful.",
              "role": "system",
              "type": "message"
            },
            {
              "content": "What is in src and docs?",
              "role": "user",
              "type": "message"
            },
            {
              "content": "Let me look.",
              "role": "assistant",
              "type": "message"
            },
            {
              "arguments": "{\"path\":\"src\"}",
              "call_id": "call_a",
              "name": "list_dir",
              "type": "function_call"
            },
            {
              "arguments": "{\"path\": \"docs",
              "call_id": "call_b",
              "name": "list_dir",
              "type": "function_call"
            },
            {
              "call_id": "call_a",
              "output": "main.rs",
              "type": "function_call_output"
            },
            {
              "call_id": "call_b",
              "output": "error: arguments are not valid json",
              "type": "function_call_output"
            },
            {
              "content": "There is main.rs.",
              "role": "assistant",
              "type": "message"
            },
            {
              "content": "Thanks",
              "role": "user",
              "type": "message"
            }
          ],
          "max_output_tokens": 256,
          "model": "gpt-test",
          "store": false,
          "stream": false,
          "temperature": 0.2,
          "tools": [
            {
              "description": "Lists a directory of the workspace.",
              "name": "list_dir",
              "parameters": {
                "additionalProperties": false,
                "properties": {
                  "depth": {
                    "type": "integer"
                  },
                  "path": {
                    "type": "string"
                  }
                },
                "required": [
                  "path"
                ],
                "type": "object"
              },
              "strict": false,
              "type": "function"
            }
          ]
        }"#]]
    .assert_eq(&body);
}

#[tokio::test]
async fn a_tool_result_without_its_call_is_the_400_openai_sends() {
    let fake = fake(vec![Reply::Text("unused".into())]).await;
    let req = ChatRequest {
        messages: vec![
            ChatMessage::User {
                content: "go".into(),
            },
            ChatMessage::Tool {
                tool_call_id: "call_gone".into(),
                content: "noon".into(),
            },
        ],
        ..ask("")
    };
    let err = client(&fake).chat(&req, None).await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::Http {
            status: 400,
            message: "No tool call found for function call output with call_id call_gone.".into(),
            retry_after: None,
        }
    );
}

#[tokio::test]
async fn http_errors_keep_status_message_and_retriability() {
    let cases = [
        (400, "invalid_request_error", Some("invalid_value"), false),
        (404, "invalid_request_error", Some("model_not_found"), false),
        (429, "requests", Some("rate_limit_exceeded"), true),
        (500, "server_error", None, true),
        (503, "server_error", None, true),
    ];
    for mode in MODES {
        for (status, kind, code, retriable) in cases {
            let fake = fake(vec![Reply::Error {
                status,
                kind: kind.into(),
                code: code.map(str::to_string),
                message: format!("failure {status}"),
            }])
            .await;
            let err = run(&client(&fake), &ask("hi"), mode).await.0.unwrap_err();
            assert_eq!(
                err,
                ProviderError::Http {
                    status,
                    message: format!("failure {status}"),
                    retry_after: (status == 429).then(|| Duration::from_secs(RETRY_AFTER_SECS)),
                },
                "{mode:?}"
            );
            assert_eq!(err.retriable(), retriable, "{status} {mode:?}");
        }
    }
}

#[tokio::test]
async fn a_failed_response_is_its_error() {
    let cases = [
        (
            "server_error",
            "provider answered http 500: server_error: boom",
            true,
        ),
        (
            "invalid_prompt",
            "provider protocol error: the provider reported an error in the stream: invalid_prompt: boom",
            false,
        ),
    ];
    for (code, shown, retriable) in cases {
        let reply = Reply::Failed {
            code: code.into(),
            message: "boom".into(),
        };
        for (mode, result) in both_modes(reply).await {
            let err = result.unwrap_err();
            assert_eq!(err.to_string(), shown, "{mode:?}");
            assert_eq!(err.retriable(), retriable, "{mode:?}");
        }
    }
}

#[tokio::test]
async fn an_incomplete_response_stops_for_length() {
    for (mode, result) in both_modes(Reply::Incomplete("cut short".into())).await {
        let resp = result.unwrap();
        assert_eq!(resp.content.as_deref(), Some("cut short"), "{mode:?}");
        assert_eq!(resp.finish_reason.as_deref(), Some("length"), "{mode:?}");
    }
}

#[tokio::test]
async fn a_stream_without_response_completed_is_a_protocol_error() {
    for (mode, result) in both_modes(Reply::NoCompleted).await {
        let err = result.unwrap_err();
        assert!(
            matches!(err, ProviderError::Protocol(_)),
            "{mode:?}: {err:?}"
        );
    }
}

#[tokio::test]
async fn a_stalled_stream_is_stalled() {
    let fake = fake(vec![Reply::StallAfter(5)]).await;
    let provider = OpenAiResponses::new(OpenAiResponsesConfig {
        stall_timeout: Duration::from_millis(300),
        ..config(&fake)
    })
    .unwrap();
    let (result, deltas) = run(&provider, &ask("hi"), Mode::Streamed).await;
    assert_eq!(result.unwrap_err(), ProviderError::Stalled);
    assert_eq!(deltas, ["this "], "the delta before the stall");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let fake = fake(vec![Reply::Stall, Reply::Stall]).await;
    let provider = OpenAiResponses::new(OpenAiResponsesConfig {
        request_timeout: Duration::from_millis(200),
        ..config(&fake)
    })
    .unwrap();
    for mode in MODES {
        let err = run(&provider, &ask("hi"), mode).await.0.unwrap_err();
        assert_eq!(err, ProviderError::Timeout, "{mode:?}");
    }
}

#[tokio::test]
async fn dropping_the_future_aborts_the_request() {
    let fake = fake(vec![Reply::Stall, Reply::StallAfter(5)]).await;
    let provider = client(&fake);
    drop_before_headers_and_mid_stream(
        &provider,
        &ask("hi"),
        || fake.requests().len(),
        || fake.disconnects(),
    )
    .await;
}

#[tokio::test]
async fn an_oversized_response_is_refused() {
    let huge = "x".repeat(17 * 1024 * 1024);
    for (mode, resp) in both_modes(Reply::Text(huge)).await {
        let err = resp.unwrap_err();
        assert!(
            matches!(&err, ProviderError::Protocol(m) if m.contains("16 MiB")),
            "{mode:?}: {err}"
        );
    }
}

#[tokio::test]
async fn a_wrong_key_is_refused_and_list_models_reads_ids() {
    let fake = fake(vec![]).await;
    assert_eq!(client(&fake).list_models().await.unwrap(), [MODEL_ID]);
    let wrong = OpenAiResponses::new(OpenAiResponsesConfig {
        api_key: Some(Secret::new("sk-wrong-000000".into())),
        ..config(&fake)
    })
    .unwrap();
    let err = wrong.list_models().await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Http { status: 401, message, .. } if message.starts_with("Incorrect API key provided: sk-***0000")),
        "{err:?}"
    );
    assert!(!err.retriable());
}

#[tokio::test]
async fn the_key_never_shows_in_debug_or_errors() {
    let echo = Reply::Error {
        status: 401,
        kind: "invalid_request_error".into(),
        code: Some("invalid_api_key".into()),
        message: format!("Incorrect API key provided: {KEY}"),
    };
    let fake = fake(vec![echo.clone(), echo]).await;
    let cfg = config(&fake);
    assert!(!format!("{cfg:?}").contains(KEY));
    let provider = OpenAiResponses::new(cfg.clone()).unwrap();
    assert!(!format!("{provider:?} {provider:#?}").contains(KEY));
    let mut errors = Vec::new();
    for mode in MODES {
        errors.push(run(&provider, &ask("hi"), mode).await.0.unwrap_err());
    }
    assert_eq!(
        errors[0].to_string(),
        "provider answered http 401: Incorrect API key provided: [REDACTED]"
    );
    errors.push(
        OpenAiResponses::new(OpenAiResponsesConfig {
            api_key: Some(Secret::new(format!("{KEY}\n"))),
            ..cfg
        })
        .unwrap_err(),
    );
    assert_not_shown(KEY, &errors);
}

#[test]
fn plain_http_is_only_for_loopback() {
    let defaults = OpenAiResponsesConfig::new(Secret::new("k".into()));
    assert_eq!(defaults.base_url, DEFAULT_BASE_URL);
    assert!(OpenAiResponses::new(defaults).is_ok());
    let err = OpenAiResponses::new(OpenAiResponsesConfig {
        base_url: "http://api.openai.com/v1".into(),
        ..OpenAiResponsesConfig::default()
    })
    .unwrap_err();
    assert_eq!(
        err,
        ProviderError::InvalidConfig("base_url must be https unless the host is loopback".into())
    );
}

#[tokio::test]
async fn a_repeating_fake_answers_every_call_once_its_script_is_used_up() {
    let fake = fake(vec![Reply::Text("first".into())])
        .await
        .repeating(Reply::Text("again".into()));
    let provider = client(&fake);
    let mut contents = Vec::new();
    for mode in MODES.into_iter().chain(MODES) {
        let resp = run(&provider, &ask("hi"), mode).await.0.unwrap();
        contents.push(resp.content.unwrap());
    }
    assert_eq!(contents, ["first", "again", "again", "again"]);
    assert_eq!(fake.requests().len(), 4);
}
