//! The production Gemini client driven against `FakeGemini`, which speaks the Gemini API
//! wire format on 127.0.0.1.

use std::time::Duration;

use carapace_llm::gemini::{Gemini, GeminiConfig};
use carapace_llm::{
    ChatMessage, ChatRequest, ChatResponse, Provider, ProviderError, ToolCallRequest, ToolSpec,
};
use carapace_testkit::gemini::{FakeGemini, GeminiReply};
use carapace_types::Secret;
use expect_test::expect;
use serde_json::json;
use tokio::sync::mpsc;

use common::{MODES, Mode, ask_model, assert_not_shown, each_mode, eventually, run};

mod common;

const KEY: &str = "AIzaSy-test-4f9a1c0e7b2d";
const MODEL: &str = "gemini-test";

fn config(base_url: String) -> GeminiConfig {
    GeminiConfig {
        base_url,
        api_key: Some(Secret::new(KEY.to_string())),
        request_timeout: Duration::from_secs(10),
        stall_timeout: Duration::from_secs(10),
    }
}

async fn fake(script: Vec<GeminiReply>) -> (FakeGemini, Gemini) {
    let fake = FakeGemini::start(script).await.with_api_key(KEY);
    let provider = Gemini::new(config(fake.base_url())).unwrap();
    (fake, provider)
}

fn ask(text: &str) -> ChatRequest {
    ask_model(MODEL, text)
}

/// Plays `reply` once in each mode.
async fn both_modes(reply: GeminiReply) -> Vec<(Mode, Result<ChatResponse, ProviderError>)> {
    let (_fake, provider) = fake(vec![reply.clone(), reply]).await;
    each_mode(&provider, &ask("hi")).await
}

#[tokio::test]
async fn plain_answer() {
    let (fake, provider) = fake(vec![GeminiReply::Text("Hello from the fake".into())]).await;
    let resp = provider.chat(&ask("hi"), None).await.unwrap();
    assert_eq!(resp.content.as_deref(), Some("Hello from the fake"));
    assert!(resp.tool_calls.is_empty());
    assert_eq!(resp.finish_reason.as_deref(), Some("stop"));
    // `modelVersion`, not the model asked for.
    assert_eq!(resp.model, "gemini-test-001");
    assert!(
        resp.usage
            .is_some_and(|u| u.prompt_tokens > 0 && u.completion_tokens > 0)
    );
    let req = &fake.requests()[0];
    assert_eq!(
        (
            req.model.as_str(),
            req.method.as_str(),
            req.query.as_deref()
        ),
        (MODEL, "generateContent", None)
    );
    assert_eq!(req.api_key.as_deref(), Some(KEY));
    assert_eq!(fake.disconnects(), 0);
}

#[tokio::test]
async fn streamed_answer_deltas_add_up_to_the_content() {
    let text = "The quick brown fox jumps over the lazy dog";
    let (fake, provider) = fake(vec![GeminiReply::Text(text.into())]).await;
    let (resp, deltas) = run(&provider, &ask("hi"), Mode::Streamed).await;
    let resp = resp.unwrap();
    assert!(deltas.len() > 1, "the fake streams by word: {deltas:?}");
    assert_eq!(deltas.concat(), text);
    assert_eq!(resp.content.as_deref(), Some(text));
    assert_eq!(resp.finish_reason.as_deref(), Some("stop"));
    assert!(resp.usage.is_some_and(|u| u.completion_tokens > 1));
    let req = &fake.requests()[0];
    assert_eq!(req.method, "streamGenerateContent");
    assert_eq!(req.query.as_deref(), Some("alt=sse"));
    assert_eq!(fake.disconnects(), 0, "a finished stream is no disconnect");
}

#[tokio::test]
async fn one_function_call() {
    let args = json!({ "path": "notes/todo.md", "max_bytes": 4096, "note": "é ü – ok" });
    for (mode, resp) in both_modes(GeminiReply::ToolCalls(vec![(
        "read_file".into(),
        args.clone(),
    )]))
    .await
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
        let got: serde_json::Value = serde_json::from_str(&call.arguments).unwrap();
        assert_eq!(got, args, "{mode:?}");
    }
}

#[tokio::test]
async fn several_function_calls_keep_their_order_and_get_unique_ids() {
    let reply = GeminiReply::ToolCalls(vec![
        ("list_dir".into(), json!({ "path": "src" })),
        ("read_file".into(), json!({ "path": "src/main.rs" })),
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
                ("read_file", r#"{"path":"src/main.rs"}"#)
            ],
            "{mode:?}"
        );
        ids.extend(calls.into_iter().map(|c| c.id));
    }
    // Gemini sends no ids; ours never repeat within one provider.
    assert_eq!(ids, ["call_1", "call_2", "call_3", "call_4"]);
}

#[tokio::test]
async fn a_tool_result_round_trip_has_the_gemini_shape() {
    let (fake, provider) = fake(vec![GeminiReply::Text("done".into())]).await;
    let req = ChatRequest {
        model: MODEL.into(),
        messages: vec![
            ChatMessage::System {
                content: "You are careful.".into(),
            },
            ChatMessage::User {
                content: "What is in src?".into(),
            },
            ChatMessage::Assistant {
                content: Some("Let me look.".into()),
                tool_calls: vec![
                    ToolCallRequest {
                        id: "call_9".into(),
                        name: "list_dir".into(),
                        arguments: r#"{"path":"src"}"#.into(),
                        signature: None,
                    },
                    ToolCallRequest {
                        // An id Gemini issued goes back; a malformed argument text
                        // goes back as `{}`.
                        id: "g-7f3a".into(),
                        name: "read_file".into(),
                        arguments: r#"{"path": "#.into(),
                        signature: None,
                    },
                ],
            },
            ChatMessage::Tool {
                tool_call_id: "call_9".into(),
                content: "main.rs".into(),
            },
            ChatMessage::Tool {
                tool_call_id: "g-7f3a".into(),
                content: r#"{"error":"bad arguments"}"#.into(),
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
                    "$schema": "https://json-schema.org/draft/2020-12/schema",
                    "type": "object",
                    "properties": {
                        "path": { "type": "string", "description": "Relative path" },
                        "depth": { "type": ["integer", "null"], "minimum": 0, "exclusiveMaximum": 9 },
                        "filter": {
                            "type": "object",
                            "properties": { "glob": { "type": "string" } },
                            "additionalProperties": false,
                        },
                    },
                    "required": ["path"],
                    "additionalProperties": false,
                }),
            },
            ToolSpec {
                name: "now".into(),
                description: "The time.".into(),
                parameters: json!({ "type": "object", "properties": {}, "additionalProperties": false }),
            },
        ],
        max_tokens: Some(256),
        temperature: Some(0.2),
    };
    provider.chat(&req, None).await.unwrap();
    let sent = &fake.requests()[0];
    assert_eq!(sent.api_key.as_deref(), Some(KEY));
    assert_eq!(sent.query, None, "the key is never in the url");
    let body = serde_json::to_string_pretty(&carapace_testkit::sorted_keys(&sent.body)).unwrap();
    expect![[r#"
        {
          "contents": [
            {
              "parts": [
                {
                  "text": "What is in src?"
                }
              ],
              "role": "user"
            },
            {
              "parts": [
                {
                  "text": "Let me look."
                },
                {
                  "functionCall": {
                    "args": {
                      "path": "src"
                    },
                    "name": "list_dir"
                  }
                },
                {
                  "functionCall": {
                    "args": {},
                    "id": "g-7f3a",
                    "name": "read_file"
                  }
                }
              ],
              "role": "model"
            },
            {
              "parts": [
                {
                  "functionResponse": {
                    "name": "list_dir",
                    "response": {
                      "content": "main.rs"
                    }
                  }
                },
                {
                  "functionResponse": {
                    "id": "g-7f3a",
                    "name": "read_file",
                    "response": {
                      "content": "{\"error\":\"bad arguments\"}"
                    }
                  }
                }
              ],
              "role": "user"
            },
            {
              "parts": [
                {
                  "text": "There is main.rs."
                }
              ],
              "role": "model"
            },
            {
              "parts": [
                {
                  "text": "Thanks"
                }
              ],
              "role": "user"
            }
          ],
          "generationConfig": {
            "maxOutputTokens": 256,
            "temperature": 0.2
          },
          "systemInstruction": {
            "parts": [
              {
                "text": "You are careful."
              }
            ]
          },
          "tools": [
            {
              "functionDeclarations": [
                {
                  "description": "Lists a directory of the workspace.",
                  "name": "list_dir",
                  "parameters": {
                    "properties": {
                      "depth": {
                        "minimum": 0,
                        "nullable": true,
                        "type": "integer"
                      },
                      "filter": {
                        "properties": {
                          "glob": {
                            "type": "string"
                          }
                        },
                        "type": "object"
                      },
                      "path": {
                        "description": "Relative path",
                        "type": "string"
                      }
                    },
                    "required": [
                      "path"
                    ],
                    "type": "object"
                  }
                },
                {
                  "description": "The time.",
                  "name": "now"
                }
              ]
            }
          ]
        }"#]]
    .assert_eq(&body);
}

#[tokio::test]
async fn a_tool_result_for_an_unknown_call_is_refused_before_sending() {
    let (fake, provider) = fake(vec![]).await;
    let mut req = ask("hi");
    req.messages.push(ChatMessage::Tool {
        tool_call_id: "call_404".into(),
        content: "x".into(),
    });
    let err = provider.chat(&req, None).await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Protocol(m) if m.contains("call_404")),
        "{err:?}"
    );
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn each_documented_error_status_keeps_status_message_and_retriability() {
    let cases = [
        (
            400,
            "INVALID_ARGUMENT",
            "Request contains an invalid argument.",
            false,
        ),
        (
            403,
            "PERMISSION_DENIED",
            "The caller does not have permission",
            false,
        ),
        (
            404,
            "NOT_FOUND",
            "models/gemini-test is not found for API version v1beta",
            false,
        ),
        (
            429,
            "RESOURCE_EXHAUSTED",
            "Resource has been exhausted (e.g. check quota).",
            true,
        ),
        (500, "INTERNAL", "An internal error has occurred.", true),
        (
            503,
            "UNAVAILABLE",
            "The model is overloaded. Please try again later.",
            true,
        ),
        (
            504,
            "DEADLINE_EXCEEDED",
            "Deadline expired before operation could complete.",
            true,
        ),
    ];
    for mode in MODES {
        for (status, status_name, message, retriable) in cases {
            let (_fake, provider) = fake(vec![GeminiReply::Error {
                status,
                status_name: status_name.into(),
                message: message.into(),
            }])
            .await;
            let err = run(&provider, &ask("hi"), mode).await.0.unwrap_err();
            assert_eq!(
                err,
                ProviderError::Http {
                    status,
                    message: format!("{status_name}: {message}"),
                    // The fake's 429s say `retry-after: 2`.
                    retry_after: (status == 429).then(|| Duration::from_secs(2)),
                },
                "{mode:?}"
            );
            assert_eq!(err.retriable(), retriable, "{status} {mode:?}");
        }
    }
}

#[tokio::test]
async fn a_wrong_or_missing_key_is_an_http_error() {
    let fake = FakeGemini::start(vec![]).await.with_api_key(KEY);
    let wrong = Gemini::new(GeminiConfig {
        api_key: Some(Secret::new("AIza-wrong".into())),
        ..config(fake.base_url())
    })
    .unwrap();
    let err = wrong.chat(&ask("hi"), None).await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Http { status: 400, message, .. } if message.contains("API key not valid")),
        "{err:?}"
    );
    let none = Gemini::new(GeminiConfig {
        api_key: None,
        ..config(fake.base_url())
    })
    .unwrap();
    let err = none.list_models().await.unwrap_err();
    assert!(
        matches!(err, ProviderError::Http { status: 403, .. }),
        "{err:?}"
    );
    let keys: Vec<_> = fake.requests().into_iter().map(|r| r.api_key).collect();
    assert_eq!(keys, [Some("AIza-wrong".to_string()), None]);
}

#[tokio::test]
async fn a_blocked_prompt_is_a_clear_protocol_error() {
    for (mode, resp) in both_modes(GeminiReply::Blocked("PROHIBITED_CONTENT".into())).await {
        let err = resp.unwrap_err();
        assert_eq!(
            err,
            ProviderError::Protocol("the provider blocked the prompt: PROHIBITED_CONTENT".into()),
            "{mode:?}"
        );
        assert!(!err.retriable());
    }
}

#[tokio::test]
async fn a_safety_stop_is_an_empty_answer_with_finish_reason_safety() {
    for (mode, resp) in both_modes(GeminiReply::SafetyStop).await {
        let resp = resp.unwrap();
        assert_eq!(resp.content, None, "{mode:?}");
        assert!(resp.tool_calls.is_empty(), "{mode:?}");
        assert_eq!(resp.finish_reason.as_deref(), Some("safety"), "{mode:?}");
    }
}

#[tokio::test]
async fn a_stream_without_finish_reason_is_a_protocol_error() {
    let (_fake, provider) = fake(vec![GeminiReply::NoFinishReason("cut short here".into())]).await;
    let (result, deltas) = run(&provider, &ask("hi"), Mode::Streamed).await;
    assert_eq!(
        result.unwrap_err(),
        ProviderError::Protocol("the stream ended before the answer was complete".into())
    );
    assert_eq!(deltas.concat(), "cut short here");
}

#[tokio::test]
async fn a_stalled_stream_is_stalled() {
    let (fake, _) = fake(vec![GeminiReply::StallAfter(2), GeminiReply::StallAfter(2)]).await;
    let provider = Gemini::new(GeminiConfig {
        request_timeout: Duration::from_millis(300),
        stall_timeout: Duration::from_millis(300),
        ..config(fake.base_url())
    })
    .unwrap();
    let (result, deltas) = run(&provider, &ask("hi"), Mode::Streamed).await;
    assert_eq!(result.unwrap_err(), ProviderError::Stalled);
    assert_eq!(
        deltas.len(),
        2,
        "the deltas before the stall were delivered"
    );
    // Unstreamed, half a body and silence is past the request deadline.
    let err = run(&provider, &ask("hi"), Mode::Plain).await.0.unwrap_err();
    assert_eq!(err, ProviderError::Timeout);
}

#[tokio::test]
async fn dropping_the_future_closes_the_connection() {
    let (fake, provider) = fake(vec![GeminiReply::Stall, GeminiReply::StallAfter(1)]).await;
    let req = ask("hi");
    tokio::select! {
        result = provider.chat(&req, None) => panic!("finished early: {result:?}"),
        () = eventually("the request to arrive", || fake.requests().len() == 1) => {}
    }
    eventually("the first disconnect", || fake.disconnects() == 1).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::select! {
        result = provider.chat(&req, Some(&tx)) => panic!("finished early: {result:?}"),
        first = rx.recv() => assert!(first.is_some()),
    }
    eventually("the disconnect mid-stream", || fake.disconnects() == 2).await;
}

#[tokio::test]
async fn the_key_never_shows_in_debug_or_errors() {
    let (fake, provider) = fake(vec![
        // A server that echoes the key it was sent must not leak it through us.
        GeminiReply::Error {
            status: 400,
            status_name: "INVALID_ARGUMENT".into(),
            message: format!("API key {KEY} not valid. Please pass a valid API key."),
        },
        GeminiReply::Error {
            status: 429,
            status_name: "RESOURCE_EXHAUSTED".into(),
            message: format!("quota of {KEY} exhausted"),
        },
    ])
    .await;
    let cfg = config(fake.base_url());
    assert!(!format!("{cfg:?}").contains(KEY));
    assert!(!format!("{provider:?} {provider:#?}").contains(KEY));
    let mut errors = Vec::new();
    for mode in MODES {
        errors.push(run(&provider, &ask("hi"), mode).await.0.unwrap_err());
    }
    let refused = format!(
        "http://127.0.0.1:{}",
        carapace_testkit::free_loopback_port()
    );
    let refused = Gemini::new(GeminiConfig {
        base_url: refused,
        ..cfg.clone()
    })
    .unwrap();
    errors.push(refused.chat(&ask("hi"), None).await.unwrap_err());
    errors.push(
        Gemini::new(GeminiConfig {
            base_url: format!("http://user:{KEY}@127.0.0.1"),
            ..cfg.clone()
        })
        .unwrap_err(),
    );
    errors.push(
        Gemini::new(GeminiConfig {
            api_key: Some(Secret::new(format!("{KEY}\n"))),
            ..cfg
        })
        .unwrap_err(),
    );
    assert!(
        errors[0]
            .to_string()
            .contains("API key [REDACTED] not valid"),
        "{}",
        errors[0]
    );
    assert!(
        matches!(errors[2], ProviderError::Connect(_)),
        "{:?}",
        errors[2]
    );
    assert_not_shown(KEY, &errors);
    assert!(
        fake.requests()
            .iter()
            .all(|r| r.query.as_deref().is_none_or(|q| !q.contains(KEY)))
    );
}

#[tokio::test]
async fn list_models_strips_the_prefix() {
    let (fake, provider) = fake(vec![]).await;
    assert_eq!(provider.list_models().await.unwrap(), ["fake-gemini"]);
    let req = &fake.requests()[0];
    assert_eq!(req.method, "list");
    assert_eq!(req.api_key.as_deref(), Some(KEY));
}

#[tokio::test]
async fn long_error_messages_are_cut_to_500_characters() {
    let (_fake, provider) = fake(vec![GeminiReply::Error {
        status: 400,
        status_name: "INVALID_ARGUMENT".into(),
        message: "é".repeat(2000),
    }])
    .await;
    let err = provider.chat(&ask("hi"), None).await.unwrap_err();
    let ProviderError::Http { message, .. } = err else {
        panic!("{err:?}")
    };
    assert_eq!(message.chars().count(), 500);
    assert!(message.starts_with("INVALID_ARGUMENT: éé"));
}

#[tokio::test]
async fn model_names_that_could_change_the_path_are_refused() {
    let (fake, provider) = fake(vec![GeminiReply::Text("ok".into())]).await;
    for model in ["../../v1/files", "gemini?key=x", "a/b", "", "gemini test"] {
        let req = ChatRequest {
            model: model.into(),
            ..ask("hi")
        };
        let err = provider.chat(&req, None).await.unwrap_err();
        assert!(
            matches!(err, ProviderError::InvalidConfig(_)),
            "{model}: {err:?}"
        );
    }
    assert!(fake.requests().is_empty());
    let req = ChatRequest {
        model: format!("models/{MODEL}"),
        ..ask("hi")
    };
    provider.chat(&req, None).await.unwrap();
    assert_eq!(fake.requests()[0].model, MODEL);
}

#[test]
fn unusable_configs_are_refused() {
    let cases = [
        (
            "http://generativelanguage.googleapis.com",
            "invalid provider config: base_url must be https unless the host is loopback",
        ),
        (
            "http://10.0.0.5:8080",
            "invalid provider config: base_url must be https unless the host is loopback",
        ),
        (
            "ftp://127.0.0.1",
            "invalid provider config: base_url must be http or https",
        ),
        (
            "https://example.com/?key=x",
            "invalid provider config: base_url must not have a query or a fragment",
        ),
        (
            "not a url",
            "invalid provider config: base_url is not a url: relative URL without a base",
        ),
    ];
    for (url, expected) in cases {
        let cfg = GeminiConfig {
            base_url: url.into(),
            ..config(String::new())
        };
        assert_eq!(Gemini::new(cfg).unwrap_err().to_string(), expected, "{url}");
    }
    for ok in [
        "http://127.0.0.1:8080",
        "http://localhost:1",
        "http://[::1]:2",
        "https://generativelanguage.googleapis.com/",
    ] {
        let cfg = GeminiConfig {
            base_url: ok.into(),
            ..config(String::new())
        };
        assert!(Gemini::new(cfg).is_ok(), "{ok}");
    }
    assert_eq!(
        GeminiConfig::new(Secret::new(KEY.into())).base_url,
        "https://generativelanguage.googleapis.com"
    );
    let empty = GeminiConfig {
        api_key: Some(Secret::new(String::new())),
        ..config("https://example.com".into())
    };
    assert_eq!(
        Gemini::new(empty).unwrap_err(),
        ProviderError::InvalidConfig("api key is empty".into())
    );
}

#[tokio::test]
async fn a_repeating_fake_answers_every_call_once_its_script_is_used_up() {
    let (fake, provider) = fake(vec![GeminiReply::Text("first".into())]).await;
    let fake = fake.repeating(GeminiReply::Text("again".into()));
    let mut contents = Vec::new();
    for mode in MODES.into_iter().chain(MODES) {
        let resp = run(&provider, &ask("hi"), mode).await.0.unwrap();
        contents.push(resp.content.unwrap());
    }
    assert_eq!(contents, ["first", "again", "again", "again"]);
    assert_eq!(fake.requests().len(), 4);
}

#[tokio::test]
async fn a_calls_thought_signature_goes_back_with_it() {
    let (fake, provider) = fake(vec![
        GeminiReply::ToolCalls(vec![("list_dir".into(), json!({ "path": "src" }))]),
        GeminiReply::Text("done".into()),
    ])
    .await;
    let first = provider.chat(&ask("look"), None).await.unwrap();
    let call = first.tool_calls[0].clone();
    assert_eq!(
        call.signature.as_deref(),
        Some(carapace_testkit::gemini::signature_of("list_dir").as_str())
    );
    let mut next = ask("look");
    next.messages.push(ChatMessage::Assistant {
        content: None,
        tool_calls: vec![call.clone()],
    });
    next.messages.push(ChatMessage::Tool {
        tool_call_id: call.id.clone(),
        content: "main.rs".into(),
    });
    provider.chat(&next, None).await.unwrap();
    let sent = &fake.requests()[1].body;
    let model_turn = sent["contents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["role"] == "model")
        .expect("the model's turn is sent back");
    assert_eq!(
        model_turn["parts"][0]["thoughtSignature"],
        json!(call.signature.unwrap()),
        "{sent}"
    );
}
