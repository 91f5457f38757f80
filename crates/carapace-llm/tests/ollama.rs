//! The production Ollama client driven against `FakeOllama`, which speaks Ollama's native
//! chat API on 127.0.0.1.

use std::time::Duration;

use carapace_llm::ollama::{DEFAULT_BASE_URL, Ollama, OllamaConfig};
use carapace_llm::{
    ChatMessage, ChatRequest, ChatResponse, Provider, ProviderError, ToolCallRequest, ToolSpec,
};
use carapace_testkit::ollama::{FakeOllama, MODEL_NAME, OllamaReply as Reply, PROMPT_EVAL_COUNT};
use carapace_types::Secret;
use expect_test::expect;
use serde_json::json;

use common::{
    MODES, Mode, ask_model, assert_not_shown, drop_before_headers_and_mid_stream, each_mode, run,
};

mod common;

const KEY: &str = "proxy-key-7c1e92d04b";

fn config(fake: &FakeOllama) -> OllamaConfig {
    OllamaConfig {
        base_url: fake.base_url(),
        api_key: None,
        request_timeout: Duration::from_secs(10),
        stall_timeout: Duration::from_secs(10),
    }
}

fn client(fake: &FakeOllama) -> Ollama {
    Ollama::new(config(fake)).unwrap()
}

fn ask(text: &str) -> ChatRequest {
    ask_model("qwen3:8b", text)
}

/// Plays `reply` once in each mode on one provider and returns the responses.
async fn both_modes(reply: Reply) -> Vec<(Mode, Result<ChatResponse, ProviderError>)> {
    let fake = FakeOllama::start(vec![reply.clone(), reply]).await;
    let provider = client(&fake);
    each_mode(&provider, &ask("hi")).await
}

#[tokio::test]
async fn plain_answer_says_stream_false() {
    let fake = FakeOllama::start(vec![Reply::Text("Hello from the fake".into())]).await;
    let resp = client(&fake).chat(&ask("hi"), None).await.unwrap();
    assert_eq!(resp.content.as_deref(), Some("Hello from the fake"));
    assert!(resp.tool_calls.is_empty());
    assert_eq!(resp.finish_reason.as_deref(), Some("stop"));
    assert_eq!(resp.model, "qwen3:8b");
    let usage = resp.usage.unwrap();
    assert_eq!(
        (usage.prompt_tokens, usage.completion_tokens),
        (PROMPT_EVAL_COUNT, 4)
    );
    assert_eq!(
        fake.requests()[0]["stream"],
        json!(false),
        "Ollama streams unless told not to"
    );
    assert_eq!(fake.authorizations(), [None], "no key by default");
    assert_eq!(fake.disconnects(), 0);
}

#[tokio::test]
async fn streamed_answer_deltas_add_up_to_the_content() {
    let text = "The quick brown fox jumps over the lazy dog";
    let fake = FakeOllama::start(vec![Reply::Text(text.into())]).await;
    let (resp, deltas) = run(&client(&fake), &ask("hi"), Mode::Streamed).await;
    let resp = resp.unwrap();
    assert_eq!(deltas.len(), 9, "one line a word: {deltas:?}");
    assert_eq!(deltas.concat(), text);
    assert_eq!(resp.content.as_deref(), Some(text));
    assert_eq!(resp.finish_reason.as_deref(), Some("stop"));
    assert_eq!(
        resp.usage.unwrap().completion_tokens,
        9,
        "the done line's eval_count"
    );
    assert_eq!(fake.requests()[0]["stream"], json!(true));
    assert_eq!(fake.disconnects(), 0, "a finished stream is no disconnect");
}

#[tokio::test]
async fn tool_calls_get_stable_unique_ids_and_exact_arguments() {
    let input = json!({ "path": "notes/todo \"q\".md", "max_bytes": 4096, "note": "é ü – ok\n" });
    let reply = Reply::ToolCalls(vec![
        ("read_file".into(), input.clone()),
        ("now".into(), json!({})),
    ]);
    let mut ids = Vec::new();
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
        assert_eq!(
            got,
            [("read_file", input.to_string()), ("now", "{}".into())],
            "{mode:?}"
        );
        ids.extend(resp.tool_calls.into_iter().map(|c| c.id));
    }
    // Ollama sends no ids; the provider numbers calls across turns.
    assert_eq!(ids, ["call_1", "call_2", "call_3", "call_4"]);
}

#[tokio::test]
async fn tool_result_round_trip_request_shape() {
    let fake = FakeOllama::start(vec![Reply::Text("done".into())]).await;
    let req = ChatRequest {
        model: "qwen3:8b".into(),
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
                        id: "call_1".into(),
                        name: "list_dir".into(),
                        arguments: r#"{"path":"src"}"#.into(),
                        signature: None,
                    },
                    ToolCallRequest {
                        id: "call_2".into(),
                        name: "read_file".into(),
                        // Malformed: goes out as {}.
                        arguments: r#"{"path": "docs"#.into(),
                        signature: None,
                    },
                ],
            },
            ChatMessage::Tool {
                tool_call_id: "call_1".into(),
                content: "main.rs".into(),
            },
            ChatMessage::Tool {
                tool_call_id: "call_2".into(),
                content: "error: arguments are not valid json".into(),
            },
            ChatMessage::Tool {
                tool_call_id: "call_unknown".into(),
                content: "orphan".into(),
            },
            ChatMessage::Assistant {
                content: None,
                tool_calls: vec![],
            },
            ChatMessage::User {
                content: "Thanks".into(),
            },
        ],
        tools: vec![ToolSpec {
            name: "list_dir".into(),
            description: "Lists a directory of the workspace.".into(),
            parameters: json!({
                "type": "object",
                "properties": { "path": { "type": "string" } },
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
          "messages": [
            {
              "content": "You are careful.",
              "role": "system"
            },
            {
              "content": "What is in src and docs?",
              "role": "user"
            },
            {
              "content": "Let me look.",
              "role": "assistant",
              "tool_calls": [
                {
                  "function": {
                    "arguments": {
                      "path": "src"
                    },
                    "index": 0,
                    "name": "list_dir"
                  },
                  "type": "function"
                },
                {
                  "function": {
                    "arguments": {},
                    "index": 1,
                    "name": "read_file"
                  },
                  "type": "function"
                }
              ]
            },
            {
              "content": "main.rs",
              "role": "tool",
              "tool_name": "list_dir"
            },
            {
              "content": "error: arguments are not valid json",
              "role": "tool",
              "tool_name": "read_file"
            },
            {
              "content": "orphan",
              "role": "tool"
            },
            {
              "content": "",
              "role": "assistant"
            },
            {
              "content": "Thanks",
              "role": "user"
            }
          ],
          "model": "qwen3:8b",
          "options": {
            "num_predict": 256,
            "temperature": 0.2
          },
          "stream": false,
          "tools": [
            {
              "function": {
                "description": "Lists a directory of the workspace.",
                "name": "list_dir",
                "parameters": {
                  "additionalProperties": false,
                  "properties": {
                    "path": {
                      "type": "string"
                    }
                  },
                  "required": [
                    "path"
                  ],
                  "type": "object"
                }
              },
              "type": "function"
            }
          ]
        }"#]]
    .assert_eq(&body);
}

#[tokio::test]
async fn http_errors_keep_status_message_and_retriability() {
    let cases = [
        (400, "model is required", None, false),
        (404, "model 'qwen9' not found", None, false),
        (429, "too many requests", Some(5), true),
        (500, "llama runner process has terminated", None, true),
        (502, "cloud model unreachable", None, true),
    ];
    for mode in MODES {
        for (status, message, retry_after, retriable) in cases {
            let fake = FakeOllama::start(vec![Reply::Error {
                status,
                message: message.into(),
                retry_after,
            }])
            .await;
            let err = run(&client(&fake), &ask("hi"), mode).await.0.unwrap_err();
            assert_eq!(
                err,
                ProviderError::Http {
                    status,
                    message: message.into(),
                    retry_after: retry_after.map(Duration::from_secs),
                },
                "{mode:?}"
            );
            assert_eq!(err.retriable(), retriable, "{status} {mode:?}");
        }
    }
}

#[tokio::test]
async fn a_refused_request_is_the_400_ollama_sends() {
    let fake = FakeOllama::start(vec![]).await;
    let err = client(&fake).chat(&ask("hi"), None).await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::Http {
            status: 500,
            message: "fake script exhausted".into(),
            retry_after: None,
        }
    );
    let no_model = ChatRequest {
        model: String::new(),
        ..ask("hi")
    };
    let err = client(&fake).chat(&no_model, None).await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Http { status: 400, message, .. } if message == "model is required"),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_error_line_mid_stream_fails_the_turn() {
    let fake = FakeOllama::start(vec![Reply::MidStreamError(
        "an error was encountered while running the model".into(),
    )])
    .await;
    let (result, deltas) = run(&client(&fake), &ask("hi"), Mode::Streamed).await;
    assert_eq!(
        result.unwrap_err(),
        ProviderError::Protocol(
            "the provider reported an error in the stream: an error was encountered while running the model".into()
        )
    );
    assert_eq!(deltas, ["this ", "answer "], "the deltas before the error");
}

#[tokio::test]
async fn an_answer_without_done_is_a_protocol_error() {
    for (mode, result) in both_modes(Reply::NoDone).await {
        let err = result.unwrap_err();
        assert!(
            matches!(err, ProviderError::Protocol(_)),
            "{mode:?}: {err:?}"
        );
        assert!(!err.retriable());
    }
}

#[tokio::test]
async fn a_stalled_stream_is_stalled() {
    let fake = FakeOllama::start(vec![Reply::StallAfter(2)]).await;
    let provider = Ollama::new(OllamaConfig {
        stall_timeout: Duration::from_millis(300),
        ..config(&fake)
    })
    .unwrap();
    let (result, deltas) = run(&provider, &ask("hi"), Mode::Streamed).await;
    assert_eq!(result.unwrap_err(), ProviderError::Stalled);
    assert_eq!(deltas, ["this ", "answer "], "the deltas before the stall");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let fake = FakeOllama::start(vec![Reply::Stall, Reply::Stall]).await;
    let provider = Ollama::new(OllamaConfig {
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
    let fake = FakeOllama::start(vec![Reply::Stall, Reply::StallAfter(2)]).await;
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
async fn a_proxy_key_is_sent_as_a_bearer_token_and_list_models_reads_names() {
    let fake = FakeOllama::start(vec![]).await.with_api_key(KEY);
    let with_key = Ollama::new(OllamaConfig {
        api_key: Some(Secret::new(KEY.into())),
        ..config(&fake)
    })
    .unwrap();
    assert_eq!(with_key.list_models().await.unwrap(), [MODEL_NAME]);
    let err = client(&fake).list_models().await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::Http {
            status: 401,
            message: "unauthorized".into(),
            retry_after: None,
        }
    );
    assert_eq!(fake.authorizations(), [Some(format!("Bearer {KEY}")), None]);
}

#[tokio::test]
async fn the_key_never_shows_in_debug_or_errors() {
    let echo = Reply::Error {
        status: 401,
        message: format!("bad token {KEY}"),
        retry_after: None,
    };
    let fake = FakeOllama::start(vec![echo.clone(), echo]).await;
    let cfg = OllamaConfig {
        api_key: Some(Secret::new(KEY.into())),
        ..config(&fake)
    };
    assert!(!format!("{cfg:?}").contains(KEY));
    let provider = Ollama::new(cfg.clone()).unwrap();
    assert!(!format!("{provider:?} {provider:#?}").contains(KEY));
    let mut errors = Vec::new();
    for mode in MODES {
        errors.push(run(&provider, &ask("hi"), mode).await.0.unwrap_err());
    }
    assert_eq!(
        errors[0].to_string(),
        "provider answered http 401: bad token [REDACTED]"
    );
    errors.push(
        Ollama::new(OllamaConfig {
            base_url: format!("http://user:{KEY}@127.0.0.1"),
            ..cfg.clone()
        })
        .unwrap_err(),
    );
    assert_not_shown(KEY, &errors);
}

#[test]
fn plain_http_is_only_for_loopback() {
    let with = |url: &str| {
        Ollama::new(OllamaConfig {
            base_url: url.into(),
            ..OllamaConfig::default()
        })
    };
    assert_eq!(OllamaConfig::default().base_url, DEFAULT_BASE_URL);
    for url in [
        DEFAULT_BASE_URL,
        "http://localhost:11434/",
        "https://ollama.example.com",
    ] {
        assert!(with(url).is_ok(), "{url}");
    }
    for url in ["http://192.168.1.20:11434", "http://ollama.example.com"] {
        assert_eq!(
            with(url).unwrap_err(),
            ProviderError::InvalidConfig(
                "base_url must be https unless the host is loopback".into()
            ),
            "{url}"
        );
    }
}

#[tokio::test]
async fn a_repeating_fake_answers_every_call_once_its_script_is_used_up() {
    let fake = FakeOllama::start(vec![Reply::Text("first".into())])
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
