//! The production OpenAI-compatible client driven against `FakeOpenAi`, which speaks the
//! real wire format on 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use carapace_llm::{
    ChatMessage, ChatRequest, ChatResponse, OpenAiCompat, OpenAiConfig, Provider, ProviderError,
    ToolCallRequest, ToolSpec,
};
use carapace_testkit::{FakeOpenAi, Reply, free_loopback_port};
use carapace_types::Secret;
use expect_test::expect;
use serde_json::json;
use tokio::sync::mpsc;

use common::{MODES, Mode, ask_model, assert_not_shown, each_mode, eventually, run};

mod common;

const KEY: &str = "sk-test-4f9a1c0e7b2d";

fn config(base_url: String) -> OpenAiConfig {
    OpenAiConfig {
        base_url,
        api_key: None,
        request_timeout: Duration::from_secs(10),
        stall_timeout: Duration::from_secs(10),
    }
}

fn client(fake: &FakeOpenAi) -> Arc<dyn Provider> {
    Arc::new(OpenAiCompat::new(config(fake.base_url())).unwrap())
}

fn client_with_key(fake: &FakeOpenAi, key: &str) -> Arc<dyn Provider> {
    let cfg = OpenAiConfig {
        api_key: Some(Secret::new(key.to_string())),
        ..config(fake.base_url())
    };
    Arc::new(OpenAiCompat::new(cfg).unwrap())
}

fn ask(text: &str) -> ChatRequest {
    ask_model("test-model", text)
}

/// Plays `reply` once in each mode and returns the responses.
async fn both_modes(reply: Reply) -> Vec<(Mode, Result<ChatResponse, ProviderError>)> {
    let fake = FakeOpenAi::start(vec![reply.clone(), reply]).await;
    let provider = client(&fake);
    each_mode(provider.as_ref(), &ask("hi")).await
}

#[tokio::test]
async fn plain_text_turn() {
    let fake = FakeOpenAi::start(vec![Reply::Text("Hello from the fake".into())]).await;
    let resp = client(&fake).chat(&ask("hi"), None).await.unwrap();
    assert_eq!(resp.content.as_deref(), Some("Hello from the fake"));
    assert!(resp.tool_calls.is_empty());
    assert_eq!(resp.finish_reason.as_deref(), Some("stop"));
    assert_eq!(resp.model, "test-model");
    assert!(
        resp.usage
            .is_some_and(|u| u.prompt_tokens > 0 && u.completion_tokens > 0)
    );
    assert_eq!(fake.requests()[0].get("stream"), None);
    assert_eq!(fake.disconnects(), 0);
}

#[tokio::test]
async fn streamed_text_arrives_in_order_and_adds_up_to_the_content() {
    let text = "The quick brown fox jumps over the lazy dog";
    let fake = FakeOpenAi::start(vec![Reply::Text(text.into())]).await;
    let (resp, deltas) = run(client(&fake).as_ref(), &ask("hi"), Mode::Streamed).await;
    let resp = resp.unwrap();
    assert!(
        deltas.len() > 1,
        "the fake streams word by word: {deltas:?}"
    );
    assert_eq!(deltas.concat(), text);
    assert_eq!(resp.content.as_deref(), Some(text));
    assert_eq!(resp.finish_reason.as_deref(), Some("stop"));
    assert!(resp.usage.is_some(), "asked for include_usage");
    let body = &fake.requests()[0];
    assert_eq!(body["stream"], json!(true));
    assert_eq!(body["stream_options"], json!({ "include_usage": true }));
    assert_eq!(fake.disconnects(), 0, "a finished stream is no disconnect");
}

#[tokio::test]
async fn a_tool_call_is_assembled_exactly() {
    let args = json!({ "path": "notes/todo.md", "max_bytes": 4096, "note": "é ü – ok" });
    for (mode, resp) in both_modes(Reply::ToolCalls(vec![("read_file".into(), args.clone())])).await
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
        assert_eq!(call.arguments, args.to_string(), "{mode:?}");
        assert!(call.id.starts_with("call_"), "{mode:?}");
    }
}

#[tokio::test]
async fn two_parallel_tool_calls_keep_their_order_and_ids() {
    let reply = Reply::ToolCalls(vec![
        ("list_dir".into(), json!({ "path": "src" })),
        ("read_file".into(), json!({ "path": "src/main.rs" })),
    ]);
    let results = both_modes(reply).await;
    let mut ids = Vec::new();
    for (mode, resp) in results {
        let calls = resp.unwrap().tool_calls;
        let got: Vec<(&str, &str)> = calls
            .iter()
            .map(|c| (c.name.as_str(), c.arguments.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("list_dir", r#"{"path":"src"}"#),
                ("read_file", r#"{"path":"src/main.rs"}"#)
            ],
            "{mode:?}"
        );
        ids.extend(calls.into_iter().map(|c| c.id));
    }
    assert_eq!(ids, ["call_1", "call_2", "call_3", "call_4"]);
}

#[tokio::test]
async fn malformed_arguments_are_passed_through_raw() {
    let raw = r#"{"path": "notes/todo.md", "mode": "#;
    let reply = Reply::RawToolCall {
        name: "read_file".into(),
        arguments: raw.into(),
    };
    for (mode, resp) in both_modes(reply).await {
        let calls = resp.unwrap().tool_calls;
        assert_eq!(calls.len(), 1, "{mode:?}");
        assert_eq!(calls[0].arguments, raw, "{mode:?}");
    }
}

#[tokio::test]
async fn the_request_body_has_the_openai_shape() {
    let fake = FakeOpenAi::start(vec![Reply::Text("done".into())]).await;
    let req = ChatRequest {
        model: "test-model".into(),
        messages: vec![
            ChatMessage::System {
                content: "You are careful.".into(),
            },
            ChatMessage::User {
                content: "What is in src?".into(),
            },
            ChatMessage::Assistant {
                content: None,
                tool_calls: vec![ToolCallRequest {
                    id: "call_9".into(),
                    name: "list_dir".into(),
                    arguments: r#"{"path":"src"}"#.into(),
                    signature: None,
                }],
            },
            ChatMessage::Tool {
                tool_call_id: "call_9".into(),
                content: "main.rs".into(),
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
          "max_tokens": 256,
          "messages": [
            {
              "content": "You are careful.",
              "role": "system"
            },
            {
              "content": "What is in src?",
              "role": "user"
            },
            {
              "content": null,
              "role": "assistant",
              "tool_calls": [
                {
                  "function": {
                    "arguments": "{\"path\":\"src\"}",
                    "name": "list_dir"
                  },
                  "id": "call_9",
                  "type": "function"
                }
              ]
            },
            {
              "content": "main.rs",
              "role": "tool",
              "tool_call_id": "call_9"
            },
            {
              "content": "There is main.rs.",
              "role": "assistant"
            },
            {
              "content": "Thanks",
              "role": "user"
            }
          ],
          "model": "test-model",
          "temperature": 0.2,
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
    assert_eq!(
        fake.authorizations(),
        [None],
        "no key, no Authorization header"
    );
}

#[tokio::test]
async fn the_key_is_sent_as_a_bearer_token_and_checked() {
    let fake = FakeOpenAi::start(vec![Reply::Text("ok".into())])
        .await
        .with_api_key(KEY);
    let resp = client_with_key(&fake, KEY)
        .chat(&ask("hi"), None)
        .await
        .unwrap();
    assert_eq!(resp.content.as_deref(), Some("ok"));
    assert_eq!(
        client_with_key(&fake, KEY).list_models().await.unwrap(),
        ["fake-model"]
    );

    let wrong = client_with_key(&fake, "sk-wrong")
        .chat(&ask("hi"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&wrong, ProviderError::Http { status: 401, message, .. } if message.contains("Incorrect API key")),
        "{wrong:?}"
    );
    assert!(!wrong.retriable());
    let missing = client(&fake).list_models().await.unwrap_err();
    assert!(
        matches!(missing, ProviderError::Http { status: 401, .. }),
        "{missing:?}"
    );

    let bearer = Some(format!("Bearer {KEY}"));
    assert_eq!(
        fake.authorizations(),
        [bearer.clone(), bearer, Some("Bearer sk-wrong".into()), None]
    );
}

#[tokio::test]
async fn http_errors_carry_the_message_of_the_error_body() {
    let cases = [
        (401, "Incorrect API key provided.", false),
        (400, "Invalid 'messages': empty array.", false),
        (429, "Rate limit reached for requests", true),
        (
            500,
            "The server had an error while processing your request.",
            true,
        ),
        (503, "The engine is currently overloaded.", true),
    ];
    for mode in MODES {
        for (status, message, retriable) in cases {
            let fake = FakeOpenAi::start(vec![Reply::Error {
                status,
                message: message.into(),
            }])
            .await;
            let err = run(client(&fake).as_ref(), &ask("hi"), mode)
                .await
                .0
                .unwrap_err();
            assert_eq!(
                err,
                ProviderError::Http {
                    status,
                    message: message.into(),
                    // The fake sends `retry-after: 2` with its 429s.
                    retry_after: (status == 429).then(|| Duration::from_secs(2)),
                },
                "{mode:?}"
            );
            assert_eq!(err.retriable(), retriable, "{status} {mode:?}");
        }
    }
}

#[tokio::test]
async fn long_error_messages_are_cut_to_500_characters() {
    let fake = FakeOpenAi::start(vec![Reply::Error {
        status: 400,
        message: "é".repeat(2000),
    }])
    .await;
    let err = client(&fake).chat(&ask("hi"), None).await.unwrap_err();
    let ProviderError::Http { message, .. } = err else {
        panic!("{err:?}")
    };
    assert_eq!(message, "é".repeat(500));
}

#[tokio::test]
async fn an_exhausted_script_is_an_http_500() {
    let fake = FakeOpenAi::start(vec![]).await;
    let err = client(&fake).chat(&ask("hi"), None).await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::Http {
            status: 500,
            message: "fake script exhausted".into(),
            retry_after: None,
        }
    );
}

#[tokio::test]
async fn a_refused_connection_is_a_retriable_connect_error() {
    let base_url = format!("http://127.0.0.1:{}/v1", free_loopback_port());
    let provider = OpenAiCompat::new(config(base_url)).unwrap();
    for mode in MODES {
        let err = run(&provider, &ask("hi"), mode).await.0.unwrap_err();
        assert!(
            matches!(err, ProviderError::Connect(_)),
            "{mode:?}: {err:?}"
        );
        assert!(err.retriable());
    }
    let err = provider.list_models().await.unwrap_err();
    assert!(matches!(err, ProviderError::Connect(_)), "{err:?}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let fake = FakeOpenAi::start(vec![Reply::Stall, Reply::Stall]).await;
    let cfg = OpenAiConfig {
        request_timeout: Duration::from_millis(200),
        ..config(fake.base_url())
    };
    let provider = OpenAiCompat::new(cfg).unwrap();
    for mode in MODES {
        let err = run(&provider, &ask("hi"), mode).await.0.unwrap_err();
        assert_eq!(err, ProviderError::Timeout, "{mode:?}");
        assert!(err.retriable());
    }
}

#[tokio::test]
async fn a_stream_that_stops_midway_is_stalled() {
    let fake = FakeOpenAi::start(vec![Reply::StallAfter(3), Reply::StallAfter(3)]).await;
    let cfg = OpenAiConfig {
        request_timeout: Duration::from_millis(300),
        stall_timeout: Duration::from_millis(300),
        ..config(fake.base_url())
    };
    let provider = OpenAiCompat::new(cfg).unwrap();
    let (result, deltas) = run(&provider, &ask("hi"), Mode::Streamed).await;
    assert_eq!(result.unwrap_err(), ProviderError::Stalled);
    assert!(
        !deltas.is_empty(),
        "the deltas before the stall were delivered"
    );
    // Unstreamed, half a body and silence is past the request deadline.
    let err = run(&provider, &ask("hi"), Mode::Plain).await.0.unwrap_err();
    assert_eq!(err, ProviderError::Timeout);
}

#[tokio::test]
async fn dropping_the_future_aborts_the_request() {
    let fake = FakeOpenAi::start(vec![
        Reply::Delayed(
            Duration::from_secs(60),
            Box::new(Reply::Text("too late".into())),
        ),
        Reply::Delayed(
            Duration::from_secs(60),
            Box::new(Reply::Text("too late".into())),
        ),
    ])
    .await;
    let provider = client(&fake);
    for (n, mode) in MODES.into_iter().enumerate() {
        let req = ask("hi");
        tokio::select! {
            result = run(provider.as_ref(), &req, mode) => panic!("finished early: {result:?}"),
            () = eventually("the request to arrive", || fake.requests().len() == n + 1) => {}
        }
        // The chat future is dropped here.
        eventually("the disconnect", || fake.disconnects() == n + 1).await;
    }
}

#[tokio::test]
async fn dropping_the_future_mid_stream_aborts_the_stream() {
    let fake = FakeOpenAi::start(vec![Reply::StallAfter(3)]).await;
    let provider = client(&fake);
    let req = ask("hi");
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::select! {
        result = provider.chat(&req, Some(&tx)) => panic!("finished early: {result:?}"),
        first = rx.recv() => assert!(first.is_some()),
    }
    eventually("the disconnect", || fake.disconnects() == 1).await;
}

#[tokio::test]
async fn the_api_key_never_shows_in_debug_or_errors() {
    let fake = FakeOpenAi::start(vec![
        // A server that echoes the key it was sent must not leak it through us.
        Reply::Error {
            status: 400,
            message: format!("key {KEY} is not valid for this model"),
        },
        Reply::Error {
            status: 401,
            message: format!("Incorrect API key provided: {KEY}"),
        },
    ])
    .await;
    let cfg = OpenAiConfig {
        api_key: Some(Secret::new(KEY.into())),
        ..config(fake.base_url())
    };
    assert!(!format!("{cfg:?}").contains(KEY));
    let provider = OpenAiCompat::new(cfg.clone()).unwrap();
    assert!(!format!("{provider:?} {provider:#?}").contains(KEY));

    let mut errors = Vec::new();
    for mode in MODES {
        errors.push(run(&provider, &ask("hi"), mode).await.0.unwrap_err());
    }
    let refused = format!("http://127.0.0.1:{}/v1", free_loopback_port());
    let refused = OpenAiCompat::new(OpenAiConfig {
        base_url: refused,
        ..cfg.clone()
    })
    .unwrap();
    errors.push(refused.chat(&ask("hi"), None).await.unwrap_err());
    let bad_url = OpenAiConfig {
        base_url: format!("http://user:{KEY}@127.0.0.1/v1"),
        ..cfg.clone()
    };
    errors.push(OpenAiCompat::new(bad_url).unwrap_err());
    let bad_key = OpenAiConfig {
        api_key: Some(Secret::new(format!("{KEY}\n"))),
        ..cfg
    };
    errors.push(OpenAiCompat::new(bad_key).unwrap_err());

    assert!(
        errors[0]
            .to_string()
            .contains("key [REDACTED] is not valid"),
        "{}",
        errors[0]
    );
    assert_not_shown(KEY, &errors);
}

#[tokio::test]
async fn list_models_reads_the_model_ids() {
    let fake = FakeOpenAi::start(vec![]).await;
    assert_eq!(client(&fake).list_models().await.unwrap(), ["fake-model"]);
}

#[tokio::test]
async fn a_trailing_slash_in_base_url_is_tolerated() {
    let fake = FakeOpenAi::start(vec![Reply::Text("ok".into())]).await;
    let provider = OpenAiCompat::new(config(format!("{}/", fake.base_url()))).unwrap();
    assert_eq!(
        provider
            .chat(&ask("hi"), None)
            .await
            .unwrap()
            .content
            .as_deref(),
        Some("ok")
    );
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
        assert!(!err.retriable());
    }
}

#[test]
fn unusable_configs_are_refused() {
    let cases = [
        (
            "not a url",
            "invalid provider config: base_url is not a url: relative URL without a base",
        ),
        (
            "ftp://127.0.0.1/v1",
            "invalid provider config: base_url must be http or https",
        ),
        (
            "http://127.0.0.1/v1?x=1",
            "invalid provider config: base_url must not have a query or a fragment",
        ),
    ];
    for (url, expected) in cases {
        let err = OpenAiCompat::new(OpenAiConfig::new(url)).unwrap_err();
        assert_eq!(err.to_string(), expected);
    }
    let zero = OpenAiConfig {
        stall_timeout: Duration::ZERO,
        ..OpenAiConfig::new("http://127.0.0.1/v1")
    };
    assert_eq!(
        OpenAiCompat::new(zero).unwrap_err(),
        ProviderError::InvalidConfig("timeouts must be longer than zero".into())
    );
    let empty = OpenAiConfig {
        api_key: Some(Secret::new(String::new())),
        ..OpenAiConfig::new("http://127.0.0.1/v1")
    };
    assert!(matches!(
        OpenAiCompat::new(empty),
        Err(ProviderError::InvalidConfig(_))
    ));
}

#[tokio::test]
async fn a_repeating_fake_answers_every_call_once_its_script_is_used_up() {
    let fake = FakeOpenAi::start(vec![Reply::Text("first".into())])
        .await
        .repeating(Reply::Text("again".into()));
    let provider = client(&fake);
    let mut contents = Vec::new();
    for mode in MODES.into_iter().chain(MODES) {
        let resp = run(&*provider, &ask("hi"), mode).await.0.unwrap();
        contents.push(resp.content.unwrap());
    }
    assert_eq!(contents, ["first", "again", "again", "again"]);
    assert_eq!(fake.requests().len(), 4);
}
