//! The production Bedrock client driven against `FakeBedrock`, which speaks the Converse
//! API, its binary event stream and SigV4 (checked independently) on 127.0.0.1.

use std::time::Duration;

use carapace_llm::bedrock::{Bedrock, BedrockConfig};
use carapace_llm::{
    ChatMessage, ChatRequest, ChatResponse, Provider, ProviderError, ToolCallRequest, ToolSpec,
};
use carapace_testkit::bedrock::{
    ACCESS_KEY_ID, BedrockReply as Reply, CACHE_READ_INPUT_TOKENS, FakeBedrock, INPUT_TOKENS,
    MODEL_ID, REGION, SECRET_ACCESS_KEY, SIGNATURE_MISMATCH,
};
use carapace_types::Secret;
use expect_test::expect;
use serde_json::json;

use common::{MODES, Mode, ask_model, drop_before_headers_and_mid_stream, each_mode, run};

mod common;

const MODEL: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";
const SESSION_TOKEN: &str = "IQoJb3JpZ2luX2VjEFAKE//session+token/0a1b2c3d4e5f";

fn config(fake: &FakeBedrock) -> BedrockConfig {
    BedrockConfig {
        endpoint: Some(fake.endpoint()),
        control_endpoint: Some(fake.endpoint()),
        request_timeout: Duration::from_secs(10),
        stall_timeout: Duration::from_secs(10),
        ..BedrockConfig::new(
            REGION,
            Secret::new(ACCESS_KEY_ID.into()),
            Secret::new(SECRET_ACCESS_KEY.into()),
        )
    }
}

fn client(fake: &FakeBedrock) -> Bedrock {
    Bedrock::new(config(fake)).unwrap()
}

fn ask(text: &str) -> ChatRequest {
    ask_model(MODEL, text)
}

/// Plays `reply` once in each mode on one provider and returns the responses.
async fn both_modes(reply: Reply) -> Vec<(Mode, Result<ChatResponse, ProviderError>)> {
    let fake = FakeBedrock::start(vec![reply.clone(), reply]).await;
    let provider = client(&fake);
    each_mode(&provider, &ask("hi")).await
}

/// The `SignedHeaders` of an `Authorization` header.
fn signed_headers(authorization: &str) -> &str {
    authorization
        .split(", ")
        .find_map(|f| f.strip_prefix("SignedHeaders="))
        .unwrap()
}

#[tokio::test]
async fn plain_answer_is_signed_and_goes_to_the_encoded_model_path() {
    let fake = FakeBedrock::start(vec![Reply::Text("Hello from the fake".into())]).await;
    let resp = client(&fake).chat(&ask("hi"), None).await.unwrap();
    assert_eq!(resp.content.as_deref(), Some("Hello from the fake"));
    assert!(resp.tool_calls.is_empty());
    assert_eq!(resp.finish_reason.as_deref(), Some("stop"), "end_turn");
    assert_eq!(
        resp.model, MODEL,
        "Bedrock names no model; the one asked for"
    );
    let usage = resp.usage.unwrap();
    assert_eq!(
        (usage.prompt_tokens, usage.completion_tokens),
        (
            INPUT_TOKENS + CACHE_READ_INPUT_TOKENS,
            "Hello from the fake".len() as u64 / 4 + 1
        )
    );
    assert_eq!(fake.model_ids(), [MODEL]);
    let seen = &fake.seen()[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(
        seen.path,
        "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    );
    assert_eq!(seen.refused, None, "the fake recomputed the same signature");
    let authorization = seen.authorization.as_deref().unwrap();
    let amz_date = seen.amz_date.as_deref().unwrap();
    assert_eq!(amz_date.len(), 16, "{amz_date}");
    assert!(
        authorization.starts_with(&format!(
            "AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/{}/us-east-1/bedrock/aws4_request, ",
            &amz_date[..8]
        )),
        "{authorization}"
    );
    assert_eq!(
        signed_headers(authorization),
        "content-type;host;x-amz-date"
    );
    assert_eq!(seen.content_type.as_deref(), Some("application/json"));
    assert_eq!(seen.security_token, None);
    assert_eq!(
        seen.content_sha256, None,
        "Bedrock needs no x-amz-content-sha256; the body hash is signed either way"
    );
    assert_eq!(fake.disconnects(), 0);
}

#[tokio::test]
async fn streamed_answer_deltas_add_up_to_the_content() {
    let text = "The quick brown fox jumps over the lazy dog";
    let fake = FakeBedrock::start(vec![Reply::Text(text.into())]).await;
    let (resp, deltas) = run(&client(&fake), &ask("hi"), Mode::Streamed).await;
    let resp = resp.unwrap();
    assert!(deltas.len() > 1, "word by word: {deltas:?}");
    assert_eq!(deltas.concat(), text);
    assert_eq!(resp.content.as_deref(), Some(text));
    assert_eq!(resp.finish_reason.as_deref(), Some("stop"));
    assert_eq!(
        resp.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
        Some((
            INPUT_TOKENS + CACHE_READ_INPUT_TOKENS,
            text.len() as u64 / 4 + 1
        ))
    );
    assert_eq!(
        fake.seen()[0].path,
        "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream"
    );
    assert_eq!(fake.seen()[0].refused, None);
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
        // Streamed, the 4-character pieces cut through escapes and multi-byte text.
        assert_eq!(call.arguments, input.to_string(), "{mode:?}");
        assert!(call.id.starts_with("tooluse_fake_"), "{mode:?}");
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
    assert_eq!(
        ids,
        [
            "tooluse_fake_1",
            "tooluse_fake_2",
            "tooluse_fake_3",
            "tooluse_fake_4",
            "tooluse_fake_5",
            "tooluse_fake_6"
        ]
    );
}

#[tokio::test]
async fn tool_result_round_trip_request_shape() {
    let fake = FakeBedrock::start(vec![Reply::Text("done".into())]).await;
    let req = ChatRequest {
        model: MODEL.into(),
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
                        id: "tooluse_a".into(),
                        name: "list_dir".into(),
                        arguments: r#"{"path":"src"}"#.into(),
                        signature: None,
                    },
                    ToolCallRequest {
                        id: "tooluse_b".into(),
                        name: "list_dir".into(),
                        // Malformed: goes out as {}.
                        arguments: r#"{"path": "docs"#.into(),
                        signature: None,
                    },
                ],
            },
            ChatMessage::User {
                content: "hurry".into(),
            },
            ChatMessage::Tool {
                tool_call_id: "tooluse_a".into(),
                content: "main.rs".into(),
            },
            ChatMessage::Tool {
                tool_call_id: "tooluse_b".into(),
                content: "error: arguments are not valid json".into(),
            },
            ChatMessage::Assistant {
                content: Some("There is main.rs.".into()),
                tool_calls: vec![],
            },
            ChatMessage::Assistant {
                content: Some(String::new()),
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
                description: String::new(),
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
          "inferenceConfig": {
            "maxTokens": 256,
            "temperature": 0.2
          },
          "messages": [
            {
              "content": [
                {
                  "text": "What is in src and docs?"
                },
                {
                  "text": "And be quick."
                }
              ],
              "role": "user"
            },
            {
              "content": [
                {
                  "text": "Let me look."
                },
                {
                  "toolUse": {
                    "input": {
                      "path": "src"
                    },
                    "name": "list_dir",
                    "toolUseId": "tooluse_a"
                  }
                },
                {
                  "toolUse": {
                    "input": {},
                    "name": "list_dir",
                    "toolUseId": "tooluse_b"
                  }
                }
              ],
              "role": "assistant"
            },
            {
              "content": [
                {
                  "toolResult": {
                    "content": [
                      {
                        "text": "main.rs"
                      }
                    ],
                    "toolUseId": "tooluse_a"
                  }
                },
                {
                  "toolResult": {
                    "content": [
                      {
                        "text": "error: arguments are not valid json"
                      }
                    ],
                    "toolUseId": "tooluse_b"
                  }
                },
                {
                  "text": "hurry"
                }
              ],
              "role": "user"
            },
            {
              "content": [
                {
                  "text": "There is main.rs."
                }
              ],
              "role": "assistant"
            },
            {
              "content": [
                {
                  "text": "Thanks"
                }
              ],
              "role": "user"
            }
          ],
          "system": [
            {
              "text": "You are careful."
            },
            {
              "text": "Answer briefly."
            }
          ],
          "toolConfig": {
            "tools": [
              {
                "toolSpec": {
                  "description": "Lists a directory of the workspace.",
                  "inputSchema": {
                    "json": {
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
                  "name": "list_dir"
                }
              },
              {
                "toolSpec": {
                  "inputSchema": {
                    "json": {
                      "properties": {},
                      "type": "object"
                    }
                  },
                  "name": "now"
                }
              }
            ]
          }
        }"#]]
    .assert_eq(&body);
    assert_eq!(fake.model_ids(), [MODEL]);
}

#[tokio::test]
async fn a_plain_request_asks_for_the_configured_max_tokens() {
    let fake = FakeBedrock::start(vec![Reply::Text("ok".into())]).await;
    let provider = Bedrock::new(BedrockConfig {
        max_tokens: 777,
        ..config(&fake)
    })
    .unwrap();
    provider.chat(&ask("hi"), None).await.unwrap();
    expect![[r#"{"inferenceConfig":{"maxTokens":777},"messages":[{"content":[{"text":"hi"}],"role":"user"}]}"#]]
        .assert_eq(&carapace_testkit::sorted_keys(&fake.requests()[0]).to_string());
}

#[tokio::test]
async fn every_documented_error_keeps_status_kind_message_and_retriability() {
    let cases = [
        (
            400,
            "ValidationException",
            "The provided model identifier is invalid.",
            false,
        ),
        (
            403,
            "AccessDeniedException",
            "You don't have access to the model with the specified model ID.",
            false,
        ),
        (404, "ResourceNotFoundException", "Model not found.", false),
        (
            408,
            "ModelTimeoutException",
            "Model has timed out in processing the request.",
            false,
        ),
        (
            424,
            "ModelErrorException",
            "The model returned an error.",
            false,
        ),
        (
            429,
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
            true,
        ),
        (
            500,
            "InternalServerException",
            "An internal server error occurred.",
            true,
        ),
        (
            503,
            "ServiceUnavailableException",
            "The service isn't currently available.",
            true,
        ),
    ];
    for mode in MODES {
        for (status, kind, message, retriable) in cases {
            let fake = FakeBedrock::start(vec![Reply::Error {
                status,
                kind: kind.into(),
                message: message.into(),
                retry_after: None,
            }])
            .await;
            let err = run(&client(&fake), &ask("hi"), mode).await.0.unwrap_err();
            assert_eq!(
                err,
                ProviderError::Http {
                    status,
                    message: format!("{kind}: {message}"),
                    retry_after: None,
                },
                "{mode:?}"
            );
            assert_eq!(err.retriable(), retriable, "{status} {mode:?}");
        }
    }
}

#[tokio::test]
async fn a_retry_after_from_a_proxy_is_kept() {
    let throttled = Reply::Error {
        status: 429,
        kind: "ThrottlingException".into(),
        message: "Rate exceeded".into(),
        retry_after: Some(7),
    };
    for (mode, resp) in both_modes(throttled).await {
        assert_eq!(
            resp.unwrap_err(),
            ProviderError::Http {
                status: 429,
                message: "ThrottlingException: Rate exceeded".into(),
                retry_after: Some(Duration::from_secs(7)),
            },
            "{mode:?}"
        );
    }
}

#[tokio::test]
async fn an_exception_mid_stream_fails_the_turn_like_its_http_error() {
    let cases = [
        ("throttlingException", 429, "ThrottlingException", true),
        (
            "modelStreamErrorException",
            424,
            "ModelStreamErrorException",
            false,
        ),
        (
            "internalServerException",
            500,
            "InternalServerException",
            true,
        ),
        ("validationException", 400, "ValidationException", false),
    ];
    for (kind, status, http_kind, retriable) in cases {
        let reply = Reply::MidStreamException {
            kind: kind.into(),
            message: "It broke.".into(),
        };
        let fake = FakeBedrock::start(vec![reply.clone(), reply]).await;
        let provider = client(&fake);
        let expected = ProviderError::Http {
            status,
            message: format!("{http_kind}: It broke."),
            retry_after: None,
        };
        let (result, deltas) = run(&provider, &ask("hi"), Mode::Streamed).await;
        let err = result.unwrap_err();
        assert_eq!(err, expected, "streamed {kind}");
        assert_eq!(err.retriable(), retriable, "{kind}");
        assert_eq!(
            deltas,
            ["this ", "answer "],
            "the deltas before the exception"
        );
        let plain = provider.chat(&ask("hi"), None).await.unwrap_err();
        assert_eq!(plain, expected, "plain {kind}");
    }
}

#[tokio::test]
async fn a_wrong_secret_or_key_id_is_refused_with_aws_403s() {
    let fake = FakeBedrock::start(vec![]).await;
    let wrong_secret = Bedrock::new(BedrockConfig {
        secret_access_key: Secret::new("not-the-secret".into()),
        ..config(&fake)
    })
    .unwrap();
    for mode in MODES {
        let err = run(&wrong_secret, &ask("hi"), mode).await.0.unwrap_err();
        assert_eq!(
            err,
            ProviderError::Http {
                status: 403,
                message: format!("InvalidSignatureException: {SIGNATURE_MISMATCH}"),
                retry_after: None,
            },
            "{mode:?}"
        );
        assert!(!err.retriable());
    }
    let wrong_id = Bedrock::new(BedrockConfig {
        access_key_id: Secret::new("AKIAOTHERKEY0000000".into()),
        ..config(&fake)
    })
    .unwrap();
    assert_eq!(
        wrong_id.list_models().await.unwrap_err(),
        ProviderError::Http {
            status: 403,
            message: "UnrecognizedClientException: The security token included in the request is invalid.".into(),
            retry_after: None,
        }
    );
    let refused: Vec<Option<String>> = fake.seen().into_iter().map(|s| s.refused).collect();
    assert_eq!(
        refused,
        [
            Some("InvalidSignatureException".into()),
            Some("InvalidSignatureException".into()),
            Some("UnrecognizedClientException".into()),
        ]
    );
    assert!(
        fake.requests().is_empty(),
        "refused before the body is read"
    );
}

#[tokio::test]
async fn a_session_token_is_sent_and_signed() {
    let fake = FakeBedrock::start(vec![Reply::Text("ok".into()), Reply::Text("ok".into())])
        .await
        .with_session_token(SESSION_TOKEN);
    let temporary = Bedrock::new(BedrockConfig {
        session_token: Some(Secret::new(SESSION_TOKEN.into())),
        ..config(&fake)
    })
    .unwrap();
    for mode in MODES {
        let (resp, _) = run(&temporary, &ask("hi"), mode).await;
        assert_eq!(resp.unwrap().content.as_deref(), Some("ok"), "{mode:?}");
    }
    assert_eq!(temporary.list_models().await.unwrap(), [MODEL_ID]);
    for seen in fake.seen() {
        assert_eq!(seen.refused, None, "{}", seen.path);
        assert_eq!(seen.security_token.as_deref(), Some(SESSION_TOKEN));
        assert!(
            signed_headers(seen.authorization.as_deref().unwrap())
                .split(';')
                .any(|h| h == "x-amz-security-token"),
        );
    }
    let err = client(&fake).chat(&ask("hi"), None).await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Http { status: 403, message, .. } if message.starts_with("UnrecognizedClientException")),
        "without the token: {err:?}"
    );
}

#[tokio::test]
async fn list_models_asks_the_control_plane_for_text_models() {
    let fake = FakeBedrock::start(vec![]).await;
    assert_eq!(client(&fake).list_models().await.unwrap(), [MODEL_ID]);
    let seen = &fake.seen()[0];
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("GET", "/foundation-models?byOutputModality=TEXT")
    );
    assert_eq!(seen.refused, None, "the query string is signed too");
    assert_eq!(
        signed_headers(seen.authorization.as_deref().unwrap()),
        "host;x-amz-date"
    );
}

#[tokio::test]
async fn a_stalled_stream_is_stalled() {
    let fake = FakeBedrock::start(vec![Reply::StallAfter(3)]).await;
    let provider = Bedrock::new(BedrockConfig {
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
    let fake = FakeBedrock::start(vec![Reply::Stall, Reply::Stall]).await;
    let provider = Bedrock::new(BedrockConfig {
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
    let fake = FakeBedrock::start(vec![Reply::Stall, Reply::StallAfter(3)]).await;
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
async fn cut_streams_and_bad_checksums_are_protocol_errors() {
    for (mode, result) in both_modes(Reply::NoMessageStop).await {
        let err = result.unwrap_err();
        assert!(
            matches!(err, ProviderError::Protocol(_)),
            "{mode:?}: {err:?}"
        );
        assert!(!err.retriable());
    }
    let fake = FakeBedrock::start(vec![Reply::BadChecksum]).await;
    let (result, deltas) = run(&client(&fake), &ask("hi"), Mode::Streamed).await;
    assert_eq!(
        result.unwrap_err(),
        ProviderError::Protocol("an event stream frame has a bad message checksum".into())
    );
    assert_eq!(deltas, ["this "], "the frames before the broken one");
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
async fn credentials_never_show_in_debug_or_errors() {
    let echo = Reply::Error {
        status: 403,
        kind: "AccessDeniedException".into(),
        message: format!(
            "User with key {ACCESS_KEY_ID} and token {SESSION_TOKEN} (secret {SECRET_ACCESS_KEY}) is not authorized"
        ),
        retry_after: None,
    };
    let fake = FakeBedrock::start(vec![echo.clone(), echo])
        .await
        .with_session_token(SESSION_TOKEN);
    let cfg = BedrockConfig {
        session_token: Some(Secret::new(SESSION_TOKEN.into())),
        ..config(&fake)
    };
    let secrets = [ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN];
    let provider = Bedrock::new(cfg.clone()).unwrap();
    let shown = format!("{cfg:?} {provider:?} {provider:#?}");
    for secret in secrets {
        assert!(!shown.contains(secret), "{shown}");
    }
    let mut errors = Vec::new();
    for mode in MODES {
        errors.push(run(&provider, &ask("hi"), mode).await.0.unwrap_err());
    }
    assert_eq!(
        errors[0].to_string(),
        "provider answered http 403: AccessDeniedException: User with key [REDACTED] and token [REDACTED] (secret [REDACTED]) is not authorized"
    );
    errors.push(
        Bedrock::new(BedrockConfig {
            endpoint: Some(format!(
                "http://{ACCESS_KEY_ID}:{SECRET_ACCESS_KEY}@127.0.0.1"
            )),
            ..cfg.clone()
        })
        .unwrap_err(),
    );
    errors.push(
        Bedrock::new(BedrockConfig {
            secret_access_key: Secret::new(format!("{SECRET_ACCESS_KEY}\n")),
            ..cfg
        })
        .unwrap_err(),
    );
    for err in &errors {
        let shown = format!("{err} {err:?}");
        for secret in secrets {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}

#[test]
fn endpoints_default_to_the_region_and_plain_http_is_only_for_loopback() {
    let defaults = BedrockConfig::new(
        "eu-central-1",
        Secret::new("AKIA".into()),
        Secret::new("s".into()),
    );
    assert_eq!(
        defaults.runtime_endpoint(),
        "https://bedrock-runtime.eu-central-1.amazonaws.com"
    );
    assert_eq!(
        defaults.control_plane_endpoint(),
        "https://bedrock.eu-central-1.amazonaws.com"
    );
    assert_eq!(defaults.max_tokens, 4096);
    assert_eq!(defaults.request_timeout, Duration::from_secs(300));
    assert_eq!(defaults.stall_timeout, Duration::from_secs(60));
    assert!(Bedrock::new(defaults.clone()).is_ok());
    let with = |endpoint: &str| {
        Bedrock::new(BedrockConfig {
            endpoint: Some(endpoint.into()),
            ..defaults.clone()
        })
    };
    for url in [
        "http://127.0.0.1:9",
        "http://localhost:9/",
        "https://vpce-1.bedrock-runtime.us-east-1.vpce.amazonaws.com",
    ] {
        assert!(with(url).is_ok(), "{url}");
    }
    for url in [
        "http://bedrock-runtime.us-east-1.amazonaws.com",
        "http://10.0.0.5:8080",
    ] {
        assert_eq!(
            with(url).unwrap_err(),
            ProviderError::InvalidConfig(
                "base_url must be https unless the host is loopback".into()
            ),
            "{url}"
        );
    }
    for region in ["", "us-east-1.evil.com/", "US-EAST-1"] {
        assert!(
            matches!(
                Bedrock::new(BedrockConfig {
                    region: region.into(),
                    ..defaults.clone()
                }),
                Err(ProviderError::InvalidConfig(_))
            ),
            "{region:?}"
        );
    }
    let zero = BedrockConfig {
        max_tokens: 0,
        ..defaults
    };
    assert!(matches!(
        Bedrock::new(zero),
        Err(ProviderError::InvalidConfig(_))
    ));
}

#[tokio::test]
async fn a_repeating_fake_answers_every_call_once_its_script_is_used_up() {
    let fake = FakeBedrock::start(vec![Reply::Text("first".into())])
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
