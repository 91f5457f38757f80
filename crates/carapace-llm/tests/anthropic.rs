//! The production Anthropic client driven against `FakeAnthropic`, which speaks the
//! Messages API wire format on 127.0.0.1.

use std::time::Duration;

use carapace_llm::anthropic::{Anthropic, AnthropicConfig};
use carapace_llm::{
    ChatMessage, ChatRequest, ChatResponse, Provider, ProviderError, ToolCallRequest, ToolSpec,
};
use carapace_testkit::anthropic::{
    AnthropicReply as Reply, CACHE_CREATION_INPUT_TOKENS, CACHE_READ_INPUT_TOKENS, FakeAnthropic,
    INPUT_TOKENS, RETRY_AFTER_SECS, SeenHeaders,
};
use carapace_types::Secret;
use expect_test::expect;
use serde_json::{Value, json};

use common::{
    MODES, Mode, ask_model, assert_not_shown, drop_before_headers_and_mid_stream, each_mode, run,
};

mod common;

const KEY: &str = "sk-ant-test-4f9a1c0e7b2d";

fn config(fake: &FakeAnthropic) -> AnthropicConfig {
    AnthropicConfig {
        base_url: fake.base_url(),
        api_key: Some(Secret::new(KEY.into())),
        request_timeout: Duration::from_secs(10),
        stall_timeout: Duration::from_secs(10),
        max_tokens: 4096,
    }
}

fn client(fake: &FakeAnthropic) -> Anthropic {
    Anthropic::new(config(fake)).unwrap()
}

/// A fake that requires [`KEY`].
async fn fake(script: Vec<Reply>) -> FakeAnthropic {
    FakeAnthropic::start(script).await.with_api_key(KEY)
}

fn ask(text: &str) -> ChatRequest {
    ask_model("claude-test", text)
}

/// Plays `reply` once in each mode and returns the responses.
async fn both_modes(reply: Reply) -> Vec<(Mode, Result<ChatResponse, ProviderError>)> {
    let fake = fake(vec![reply.clone(), reply]).await;
    let provider = client(&fake);
    each_mode(&provider, &ask("hi")).await
}

#[tokio::test]
async fn plain_answer() {
    let fake = fake(vec![Reply::Text("Hello from the fake".into())]).await;
    let resp = client(&fake).chat(&ask("hi"), None).await.unwrap();
    assert_eq!(resp.content.as_deref(), Some("Hello from the fake"));
    assert!(resp.tool_calls.is_empty());
    assert_eq!(resp.finish_reason.as_deref(), Some("stop"), "end_turn");
    assert_eq!(resp.model, "claude-test");
    let usage = resp.usage.unwrap();
    assert_eq!(
        usage.prompt_tokens,
        INPUT_TOKENS + CACHE_CREATION_INPUT_TOKENS + CACHE_READ_INPUT_TOKENS,
        "cache writes and reads are prompt tokens too"
    );
    assert_eq!(
        usage.completion_tokens,
        "Hello from the fake".len() as u64 / 4 + 1
    );
    let body = &fake.requests()[0];
    assert_eq!(body.get("stream"), None);
    assert_eq!(body["max_tokens"], json!(4096), "the config's default");
    assert_eq!(fake.disconnects(), 0);
}

#[tokio::test]
async fn streamed_answer_deltas_add_up_to_the_content() {
    let text = "The quick brown fox jumps over the lazy dog";
    let fake = fake(vec![Reply::Text(text.into())]).await;
    let (resp, deltas) = run(&client(&fake), &ask("hi"), Mode::Streamed).await;
    let resp = resp.unwrap();
    assert!(
        deltas.len() > 1,
        "the fake streams word by word: {deltas:?}"
    );
    assert_eq!(deltas.concat(), text);
    assert_eq!(resp.content.as_deref(), Some(text));
    assert_eq!(resp.finish_reason.as_deref(), Some("stop"));
    assert_eq!(
        resp.usage.unwrap().prompt_tokens,
        INPUT_TOKENS + CACHE_CREATION_INPUT_TOKENS + CACHE_READ_INPUT_TOKENS
    );
    assert_eq!(
        resp.usage.unwrap().completion_tokens,
        text.len() as u64 / 4 + 1,
        "the count of message_delta, not the 1 of message_start"
    );
    assert_eq!(fake.requests()[0]["stream"], json!(true));
    assert_eq!(fake.disconnects(), 0, "a finished stream is no disconnect");
}

#[tokio::test]
async fn one_tool_call_is_assembled_exactly() {
    let input = json!({ "path": "notes/todo \"q\".md", "max_bytes": 4096, "note": "é ü – ok\n" });
    for (mode, resp) in
        both_modes(Reply::ToolCalls(vec![("read_file".into(), input.clone())])).await
    {
        let resp = resp.unwrap();
        assert_eq!(resp.content, None, "{mode:?}");
        assert_eq!(
            resp.finish_reason.as_deref(),
            Some("tool_calls"),
            "{mode:?}"
        );
        assert_eq!(resp.tool_calls.len(), 1, "{mode:?}");
        let call = &resp.tool_calls[0];
        assert_eq!(call.name, "read_file", "{mode:?}");
        // Streamed, the 3-character pieces cut through escapes and multi-byte text.
        assert_eq!(call.arguments, input.to_string(), "{mode:?}");
        assert!(call.id.starts_with("toolu_fake_"), "{mode:?}");
    }
}

#[tokio::test]
async fn several_tool_calls_keep_their_order_ids_and_arguments() {
    let reply = Reply::ToolCalls(vec![
        ("list_dir".into(), json!({ "path": "src" })),
        ("read_file".into(), json!({ "path": "src/main.rs" })),
        ("now".into(), json!({})),
    ]);
    let mut ids = Vec::new();
    for (mode, resp) in both_modes(reply).await {
        let calls = resp.unwrap().tool_calls;
        let got: Vec<(&str, &str)> = calls
            .iter()
            .map(|c| (c.name.as_str(), c.arguments.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("list_dir", r#"{"path":"src"}"#),
                ("read_file", r#"{"path":"src/main.rs"}"#),
                ("now", "{}"),
            ],
            "{mode:?}"
        );
        ids.extend(calls.into_iter().map(|c| c.id));
    }
    // Ids count messages and calls together: msg 1, three calls, msg 5, three calls.
    assert_eq!(
        ids,
        [
            "toolu_fake_2",
            "toolu_fake_3",
            "toolu_fake_4",
            "toolu_fake_6",
            "toolu_fake_7",
            "toolu_fake_8"
        ]
    );
}

#[tokio::test]
async fn tool_result_round_trip_request_shape() {
    let fake = fake(vec![Reply::Text("done".into())]).await;
    let req = ChatRequest {
        model: "claude-test".into(),
        messages: vec![
            ChatMessage::System {
                content: "You are careful.".into(),
            },
            ChatMessage::System {
                content: "Answer briefly.".into(),
            },
            ChatMessage::User {
                content: "What is in src and docs?".into(),
            },
            ChatMessage::User {
                content: "And be quick.".into(),
            },
            ChatMessage::Assistant {
                content: Some("Let me look.".into()),
                tool_calls: vec![
                    ToolCallRequest {
                        id: "toolu_a".into(),
                        name: "list_dir".into(),
                        arguments: r#"{"path":"src"}"#.into(),
                        signature: None,
                    },
                    ToolCallRequest {
                        id: "toolu_b".into(),
                        name: "list_dir".into(),
                        // Malformed: goes out as {}.
                        arguments: r#"{"path": "docs"#.into(),
                        signature: None,
                    },
                ],
            },
            ChatMessage::Tool {
                tool_call_id: "toolu_a".into(),
                content: "main.rs".into(),
            },
            ChatMessage::Tool {
                tool_call_id: "toolu_b".into(),
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
        tools: vec![
            ToolSpec {
                name: "list_dir".into(),
                description: "Lists a directory of the workspace.".into(),
                parameters: json!({
                    "type": "object",
                    "properties": { "path": { "type": "string" } },
                    "required": ["path"],
                }),
            },
            ToolSpec {
                name: "now".into(),
                description: "The time.".into(),
                parameters: json!({ "type": "object", "properties": {} }),
            },
        ],
        max_tokens: Some(256),
        temperature: Some(0.2),
    };
    client(&fake).chat(&req, None).await.unwrap();
    let body =
        serde_json::to_string_pretty(&carapace_testkit::sorted_keys(&fake.requests()[0])).unwrap();
    expect![[r#"
        {
          "max_tokens": 256,
          "messages": [
            {
              "content": [
                {
                  "text": "What is in src and docs?",
                  "type": "text"
                },
                {
                  "text": "And be quick.",
                  "type": "text"
                }
              ],
              "role": "user"
            },
            {
              "content": [
                {
                  "text": "Let me look.",
                  "type": "text"
                },
                {
                  "id": "toolu_a",
                  "input": {
                    "path": "src"
                  },
                  "name": "list_dir",
                  "type": "tool_use"
                },
                {
                  "id": "toolu_b",
                  "input": {},
                  "name": "list_dir",
                  "type": "tool_use"
                }
              ],
              "role": "assistant"
            },
            {
              "content": [
                {
                  "content": "main.rs",
                  "tool_use_id": "toolu_a",
                  "type": "tool_result"
                },
                {
                  "content": "error: arguments are not valid json",
                  "tool_use_id": "toolu_b",
                  "type": "tool_result"
                }
              ],
              "role": "user"
            },
            {
              "content": [
                {
                  "text": "There is main.rs.",
                  "type": "text"
                }
              ],
              "role": "assistant"
            },
            {
              "content": [
                {
                  "text": "Thanks",
                  "type": "text"
                }
              ],
              "role": "user"
            }
          ],
          "model": "claude-test",
          "system": [
            {
              "text": "You are careful.",
              "type": "text"
            },
            {
              "cache_control": {
                "type": "ephemeral"
              },
              "text": "Answer briefly.",
              "type": "text"
            }
          ],
          "temperature": 0.2,
          "tools": [
            {
              "description": "Lists a directory of the workspace.",
              "input_schema": {
                "properties": {
                  "path": {
                    "type": "string"
                  }
                },
                "required": [
                  "path"
                ],
                "type": "object"
              },
              "name": "list_dir"
            },
            {
              "cache_control": {
                "type": "ephemeral"
              },
              "description": "The time.",
              "input_schema": {
                "properties": {},
                "type": "object"
              },
              "name": "now"
            }
          ]
        }"#]]
    .assert_eq(&body);
    assert_eq!(
        fake.headers(),
        [SeenHeaders {
            api_key: Some(KEY.into()),
            version: Some("2023-06-01".into()),
            content_type: Some("application/json".into()),
        }]
    );
}

#[tokio::test]
async fn a_tool_result_after_user_text_still_comes_first() {
    // Tool result then user text in one turn: the result block must open the message.
    let fake = fake(vec![Reply::Text("ok".into())]).await;
    let req = ChatRequest {
        messages: vec![
            ChatMessage::User {
                content: "go".into(),
            },
            ChatMessage::Assistant {
                content: None,
                tool_calls: vec![ToolCallRequest {
                    id: "t1".into(),
                    name: "now".into(),
                    arguments: String::new(),
                    signature: None,
                }],
            },
            ChatMessage::User {
                content: "hurry".into(),
            },
            ChatMessage::Tool {
                tool_call_id: "t1".into(),
                content: "noon".into(),
            },
        ],
        ..ask("")
    };
    client(&fake).chat(&req, None).await.unwrap();
    let types: Vec<Value> = fake.requests()[0]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            json!([
                m["role"],
                m["content"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b["type"].clone())
                    .collect::<Vec<_>>()
            ])
        })
        .collect();
    assert_eq!(
        types,
        [
            json!(["user", ["text"]]),
            json!(["assistant", ["tool_use"]]),
            json!(["user", ["tool_result", "text"]]),
        ]
    );
    assert_eq!(
        fake.requests()[0]["messages"][1]["content"][0]["input"],
        json!({})
    );
}

#[tokio::test]
async fn every_documented_error_kind_keeps_status_message_and_retriability() {
    let cases = [
        (
            400,
            "invalid_request_error",
            "messages: field required",
            false,
        ),
        (401, "authentication_error", "invalid x-api-key", false),
        (
            403,
            "permission_error",
            "Your API key does not have permission",
            false,
        ),
        (404, "not_found_error", "model: claude-nope", false),
        (
            413,
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes",
            false,
        ),
        (
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your rate limit",
            true,
        ),
        (500, "api_error", "Internal server error", true),
        (529, "overloaded_error", "Overloaded", true),
    ];
    for mode in MODES {
        for (status, kind, message, retriable) in cases {
            let fake = fake(vec![Reply::Error {
                status,
                kind: kind.into(),
                message: message.into(),
            }])
            .await;
            let err = run(&client(&fake), &ask("hi"), mode).await.0.unwrap_err();
            assert_eq!(
                err,
                ProviderError::Http {
                    status,
                    message: format!("{kind}: {message}"),
                    retry_after: (status == 429).then(|| Duration::from_secs(RETRY_AFTER_SECS)),
                },
                "{mode:?}"
            );
            assert_eq!(err.retriable(), retriable, "{status} {mode:?}");
        }
    }
}

#[tokio::test]
async fn a_wrong_key_is_refused_and_list_models_reads_ids() {
    let fake = fake(vec![]).await;
    assert_eq!(
        client(&fake).list_models().await.unwrap(),
        ["claude-fake-1"]
    );
    let wrong = Anthropic::new(AnthropicConfig {
        api_key: Some(Secret::new("sk-ant-wrong".into())),
        ..config(&fake)
    })
    .unwrap();
    let err = wrong.list_models().await.unwrap_err();
    assert!(
        matches!(err, ProviderError::Http { status: 401, .. }),
        "{err:?}"
    );
    assert!(!err.retriable());
    let keys: Vec<Option<String>> = fake.headers().into_iter().map(|h| h.api_key).collect();
    assert_eq!(keys, [Some(KEY.into()), Some("sk-ant-wrong".into())]);
}

#[tokio::test]
async fn a_stalled_stream_is_stalled() {
    let fake = fake(vec![Reply::StallAfter(4)]).await;
    let provider = Anthropic::new(AnthropicConfig {
        stall_timeout: Duration::from_millis(300),
        ..config(&fake)
    })
    .unwrap();
    let (result, deltas) = run(&provider, &ask("hi"), Mode::Streamed).await;
    assert_eq!(result.unwrap_err(), ProviderError::Stalled);
    assert_eq!(
        deltas,
        ["this "],
        "the delta before the stall was delivered"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let fake = fake(vec![Reply::Stall, Reply::Stall]).await;
    let provider = Anthropic::new(AnthropicConfig {
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
    let fake = fake(vec![Reply::Stall, Reply::StallAfter(4)]).await;
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
async fn an_error_event_mid_stream_fails_the_turn() {
    let cases = [
        ("overloaded_error", 529, true),
        ("api_error", 500, true),
        ("invalid_request_error", 400, false),
    ];
    for (kind, status, retriable) in cases {
        let fake = fake(vec![Reply::MidStreamError {
            kind: kind.into(),
            message: "Overloaded".into(),
        }])
        .await;
        let (result, deltas) = run(&client(&fake), &ask("hi"), Mode::Streamed).await;
        let err = result.unwrap_err();
        assert_eq!(
            err,
            ProviderError::Http {
                status,
                message: format!("{kind}: Overloaded"),
                retry_after: None,
            }
        );
        assert_eq!(err.retriable(), retriable, "{kind}");
        assert_eq!(deltas, ["this ", "answer "], "the deltas before the error");
    }
}

#[tokio::test]
async fn a_stream_without_message_stop_is_a_protocol_error() {
    // Even though message_delta already brought a stop reason.
    for (mode, result) in both_modes(Reply::NoMessageStop).await {
        let err = result.unwrap_err();
        assert!(
            matches!(err, ProviderError::Protocol(_)),
            "{mode:?}: {err:?}"
        );
        assert!(!err.retriable());
    }
}

#[tokio::test]
async fn the_api_key_never_shows_in_debug_or_errors() {
    let echo = Reply::Error {
        status: 401,
        kind: "authentication_error".into(),
        message: format!("invalid x-api-key {KEY}"),
    };
    let fake = fake(vec![echo.clone(), echo]).await;
    let cfg = config(&fake);
    assert!(!format!("{cfg:?}").contains(KEY));
    let provider = Anthropic::new(cfg.clone()).unwrap();
    assert!(!format!("{provider:?} {provider:#?}").contains(KEY));
    let mut errors = Vec::new();
    for mode in MODES {
        errors.push(run(&provider, &ask("hi"), mode).await.0.unwrap_err());
    }
    assert_eq!(
        errors[0].to_string(),
        "provider answered http 401: authentication_error: invalid x-api-key [REDACTED]"
    );
    errors.push(
        Anthropic::new(AnthropicConfig {
            base_url: format!("http://user:{KEY}@127.0.0.1"),
            ..cfg.clone()
        })
        .unwrap_err(),
    );
    errors.push(
        Anthropic::new(AnthropicConfig {
            api_key: Some(Secret::new(format!("{KEY}\n"))),
            ..cfg
        })
        .unwrap_err(),
    );
    assert_not_shown(KEY, &errors);
}

#[tokio::test]
async fn long_error_messages_are_cut_to_500_characters() {
    let fake = fake(vec![Reply::Error {
        status: 400,
        kind: "invalid_request_error".into(),
        message: "é".repeat(2000),
    }])
    .await;
    let err = client(&fake).chat(&ask("hi"), None).await.unwrap_err();
    let ProviderError::Http { message, .. } = err else {
        panic!("{err:?}")
    };
    assert_eq!(message.chars().count(), 500);
}

#[test]
fn plain_http_is_only_for_loopback() {
    let with = |url: &str| {
        Anthropic::new(AnthropicConfig {
            base_url: url.into(),
            ..AnthropicConfig::default()
        })
    };
    for url in [
        "http://127.0.0.1:9",
        "http://localhost:9/",
        "http://[::1]:9",
        "https://api.anthropic.com",
    ] {
        assert!(with(url).is_ok(), "{url}");
    }
    for url in [
        "http://api.anthropic.com",
        "http://10.0.0.5:8080",
        "http://127.0.0.1.nip.io",
    ] {
        assert_eq!(
            with(url).unwrap_err(),
            ProviderError::InvalidConfig(
                "base_url must be https unless the host is loopback".into()
            ),
            "{url}"
        );
    }
    let zero = AnthropicConfig {
        max_tokens: 0,
        ..AnthropicConfig::default()
    };
    assert!(matches!(
        Anthropic::new(zero),
        Err(ProviderError::InvalidConfig(_))
    ));
    let defaults = AnthropicConfig::new(Secret::new("k".into()));
    assert_eq!(defaults.base_url, "https://api.anthropic.com");
    assert_eq!(defaults.max_tokens, 4096);
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
