//! What each provider client costs over the HTTP call it makes, against the fakes of
//! `carapace-testkit` on 127.0.0.1 (each repeating one reply, see `repeating`).
//!
//! For each provider, two groups, each with the raw call and the provider side by side:
//!
//! - `<provider>_stream_2000/{raw_http,provider}`: a streamed turn whose answer is a text
//!   of 2,000 words. `raw_http` POSTs the body the provider sent and reads the whole
//!   streamed body as bytes, with no parsing; `provider` is `Provider::chat` with an
//!   events channel: building the request, sending it, decoding the stream and
//!   assembling the answer (the deltas are drained from the channel afterwards, as a
//!   consumer would). Throughput is 2,000 elements, so criterion reports text
//!   deltas per second.
//! - `<provider>_short/{raw_http,provider}`: one short unstreamed answer, the per-call
//!   overhead.
//!
//! Provider overhead = `provider` − `raw_http`; the fake's own work (building and
//! serialising 2,000 events) is in both.
//!
//! Every fake streams a text word by word, so the 2,000 words give 2,000 text deltas, and
//! the provider hands out exactly 2,000 `StreamEvent::TextDelta`s (checked before
//! measuring). Around them, on the wire:
//!
//! - OpenAI Chat Completions (`OpenAiCompat`, `FakeOpenAi`): 2,004 SSE events (a role
//!   chunk first; the finish chunk, the usage chunk asked for by `include_usage` and
//!   `[DONE]` after);
//! - OpenAI Responses (`FakeOpenAiResponses`): 2,008 SSE events (`created`,
//!   `in_progress`, item and part added; text, part and item done, `completed`);
//! - Anthropic (`FakeAnthropic`): 2,006 SSE events (`message_start`,
//!   `content_block_start`, `ping`; `content_block_stop`, `message_delta`,
//!   `message_stop`);
//! - Gemini (`FakeGemini`): exactly 2,000 SSE events, one chunk per word, the last one
//!   carrying `finishReason`;
//! - Ollama (`FakeOllama`): 2,001 NDJSON lines (the `done: true` line last);
//! - Bedrock (`FakeBedrock`): 2,004 event-stream frames (`messageStart`;
//!   `contentBlockStop`, `messageStop`, `metadata`).
//!
//! The setup prints the counts it finds for each provider.
//!
//! The raw body is the provider's request as the fake recorded it, serialised again by
//! `serde_json` (same content; key order may differ from the provider's bytes). Bedrock
//! has no unsigned path: the fake checks SigV4 on every request. Its raw call is signed
//! once, before measuring, with the same `aws-sigv4` signer and credentials, and the
//! fake accepts the replayed signature (it checks it, not the clock); so the raw call
//! signs nothing and the provider's per-call signing shows in its overhead.
//!
//! `cargo bench -p carapace-llm --bench providers`

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use carapace_llm::anthropic::{Anthropic, AnthropicConfig};
use carapace_llm::bedrock::{Bedrock, BedrockConfig};
use carapace_llm::gemini::{Gemini, GeminiConfig};
use carapace_llm::ollama::{Ollama, OllamaConfig};
use carapace_llm::openai_responses::{OpenAiResponses, OpenAiResponsesConfig};
use carapace_llm::{ChatMessage, ChatRequest, OpenAiCompat, OpenAiConfig, Provider, StreamEvent};
use carapace_testkit::anthropic::{self as fake_anthropic, AnthropicReply, FakeAnthropic};
use carapace_testkit::bedrock::{self as fake_bedrock, BedrockReply, FakeBedrock};
use carapace_testkit::gemini::{self as fake_gemini, FakeGemini, GeminiReply};
use carapace_testkit::ollama::{self as fake_ollama, FakeOllama, OllamaReply};
use carapace_testkit::openai_responses::{
    self as fake_responses, FakeOpenAiResponses, ResponsesReply,
};
use carapace_testkit::{FakeOpenAi, Reply};
use carapace_types::Secret;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// Words, hence text deltas, of the long answer.
const WORDS: usize = 2_000;
/// The short answer.
const SHORT: &str = "The file holds three lines.";

/// The providers, in the order they are measured.
#[derive(Clone, Copy, Debug)]
enum Kind {
    OpenAiChat,
    OpenAiResponses,
    Anthropic,
    Gemini,
    Ollama,
    Bedrock,
}

const KINDS: [Kind; 6] = [
    Kind::OpenAiChat,
    Kind::OpenAiResponses,
    Kind::Anthropic,
    Kind::Gemini,
    Kind::Ollama,
    Kind::Bedrock,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::OpenAiChat => "openai_chat",
            Kind::OpenAiResponses => "openai_responses",
            Kind::Anthropic => "anthropic",
            Kind::Gemini => "gemini",
            Kind::Ollama => "ollama",
            Kind::Bedrock => "bedrock",
        }
    }

    fn model(self) -> &'static str {
        match self {
            Kind::OpenAiChat => "fake-model",
            Kind::OpenAiResponses => fake_responses::MODEL_ID,
            Kind::Anthropic => fake_anthropic::MODEL_ID,
            Kind::Gemini => fake_gemini::MODEL_NAME,
            Kind::Ollama => fake_ollama::MODEL_NAME,
            Kind::Bedrock => fake_bedrock::MODEL_ID,
        }
    }
}

/// A fake that answers every request with the same text.
enum Fake {
    OpenAiChat(FakeOpenAi),
    OpenAiResponses(FakeOpenAiResponses),
    Anthropic(FakeAnthropic),
    Gemini(FakeGemini),
    Ollama(FakeOllama),
    Bedrock(FakeBedrock),
}

/// One POST exactly as a provider sent it, to send again without the provider.
struct RawCall {
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Fake {
    /// Starts the fake of `kind`, on the current runtime, repeating `text`.
    async fn start(kind: Kind, text: &str) -> Fake {
        let t = text.to_string();
        match kind {
            Kind::OpenAiChat => {
                Fake::OpenAiChat(FakeOpenAi::start(vec![]).await.repeating(Reply::Text(t)))
            }
            Kind::OpenAiResponses => Fake::OpenAiResponses(
                FakeOpenAiResponses::start(vec![])
                    .await
                    .repeating(ResponsesReply::Text(t)),
            ),
            Kind::Anthropic => Fake::Anthropic(
                FakeAnthropic::start(vec![])
                    .await
                    .repeating(AnthropicReply::Text(t)),
            ),
            Kind::Gemini => Fake::Gemini(
                FakeGemini::start(vec![])
                    .await
                    .repeating(GeminiReply::Text(t)),
            ),
            Kind::Ollama => Fake::Ollama(
                FakeOllama::start(vec![])
                    .await
                    .repeating(OllamaReply::Text(t)),
            ),
            Kind::Bedrock => Fake::Bedrock(
                FakeBedrock::start(vec![])
                    .await
                    .repeating(BedrockReply::Text(t)),
            ),
        }
    }

    /// The production client of this fake's API, configured for it with no key.
    fn provider(&self) -> Box<dyn Provider> {
        match self {
            Fake::OpenAiChat(f) => {
                Box::new(OpenAiCompat::new(OpenAiConfig::new(f.base_url())).unwrap())
            }
            Fake::OpenAiResponses(f) => Box::new(
                OpenAiResponses::new(OpenAiResponsesConfig {
                    base_url: f.base_url(),
                    ..OpenAiResponsesConfig::default()
                })
                .unwrap(),
            ),
            Fake::Anthropic(f) => Box::new(
                Anthropic::new(AnthropicConfig {
                    base_url: f.base_url(),
                    ..AnthropicConfig::default()
                })
                .unwrap(),
            ),
            Fake::Gemini(f) => Box::new(
                Gemini::new(GeminiConfig {
                    base_url: f.base_url(),
                    api_key: None,
                    request_timeout: Duration::from_secs(300),
                    stall_timeout: Duration::from_secs(60),
                })
                .unwrap(),
            ),
            Fake::Ollama(f) => Box::new(
                Ollama::new(OllamaConfig {
                    base_url: f.base_url(),
                    ..OllamaConfig::default()
                })
                .unwrap(),
            ),
            Fake::Bedrock(f) => Box::new(
                Bedrock::new(BedrockConfig {
                    endpoint: Some(f.endpoint()),
                    control_endpoint: Some(f.endpoint()),
                    ..BedrockConfig::new(
                        fake_bedrock::REGION,
                        Secret::new(fake_bedrock::ACCESS_KEY_ID.into()),
                        Secret::new(fake_bedrock::SECRET_ACCESS_KEY.into()),
                    )
                })
                .unwrap(),
            ),
        }
    }

    /// The last request the fake received, as a raw call.
    fn last_request(&self) -> RawCall {
        let json = "application/json".to_string();
        let content_type = vec![("content-type".to_string(), json)];
        let body = |requests: Vec<serde_json::Value>| {
            serde_json::to_vec(requests.last().expect("a recorded request")).unwrap()
        };
        match self {
            Fake::OpenAiChat(f) => RawCall {
                url: format!("{}/chat/completions", f.base_url()),
                headers: content_type,
                body: body(f.requests()),
            },
            Fake::OpenAiResponses(f) => RawCall {
                url: format!("{}/responses", f.base_url()),
                headers: content_type,
                body: body(f.requests()),
            },
            Fake::Anthropic(f) => {
                let version = f.headers().last().unwrap().version.clone().unwrap();
                let mut headers = content_type;
                headers.push(("anthropic-version".into(), version));
                RawCall {
                    url: format!("{}/v1/messages", f.base_url()),
                    headers,
                    body: body(f.requests()),
                }
            }
            Fake::Gemini(f) => {
                let last = f.requests().pop().unwrap();
                let query = last.query.map(|q| format!("?{q}")).unwrap_or_default();
                RawCall {
                    url: format!(
                        "{}/v1beta/models/{}:{}{query}",
                        f.base_url(),
                        last.model,
                        last.method
                    ),
                    headers: content_type,
                    body: serde_json::to_vec(&last.body).unwrap(),
                }
            }
            Fake::Ollama(f) => RawCall {
                url: format!("{}/api/chat", f.base_url()),
                headers: content_type,
                body: body(f.requests()),
            },
            Fake::Bedrock(f) => {
                let path = f.seen().pop().unwrap().path;
                let url = format!("{}{path}", f.endpoint());
                let body = body(f.requests());
                let mut headers = content_type;
                headers.extend(presign(&url, &body));
                RawCall { url, headers, body }
            }
        }
    }
}

/// The SigV4 headers of a Bedrock POST of `body` to `url` with the fake's credentials,
/// signed as the provider signs (`content-type` and `host`, default settings).
fn presign(url: &str, body: &[u8]) -> Vec<(String, String)> {
    let identity = aws_credential_types::Credentials::new(
        fake_bedrock::ACCESS_KEY_ID,
        fake_bedrock::SECRET_ACCESS_KEY,
        None,
        None,
        "bench",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(fake_bedrock::REGION)
        .name("bedrock")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let signable = SignableRequest::new(
        "POST",
        url,
        [("content-type", "application/json")].into_iter(),
        SignableBody::Bytes(body),
    )
    .unwrap();
    let (instructions, _signature) = sign(signable, &params).unwrap().into_parts();
    let (headers, _query) = instructions.into_parts();
    headers
        .into_iter()
        .map(|h| (h.name().to_string(), h.value().to_string()))
        .collect()
}

fn ask(kind: Kind) -> ChatRequest {
    ChatRequest {
        model: kind.model().into(),
        messages: vec![
            ChatMessage::System {
                content: "You are a benchmark.".into(),
            },
            ChatMessage::User {
                content: "Write two thousand words.".into(),
            },
        ],
        tools: Vec::new(),
        max_tokens: None,
        temperature: None,
    }
}

/// One turn through the provider, streamed or not; the text and, streamed, the deltas.
async fn turn(provider: &dyn Provider, req: &ChatRequest, stream: bool) -> (String, Vec<String>) {
    if !stream {
        let resp = provider.chat(req, None).await.expect("the provider turn");
        return (resp.content.unwrap_or_default(), Vec::new());
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let resp = provider
        .chat(req, Some(&tx))
        .await
        .expect("the provider turn");
    drop(tx);
    let mut deltas = Vec::new();
    while let Some(StreamEvent::TextDelta(d)) = rx.recv().await {
        deltas.push(d);
    }
    (resp.content.unwrap_or_default(), deltas)
}

/// The raw call: POSTs the body with the headers the provider sent; checks the status.
async fn send_raw(client: &reqwest::Client, call: &RawCall) -> reqwest::Response {
    let mut builder = client.post(&call.url).body(call.body.clone());
    for (name, value) in &call.headers {
        builder = builder.header(name, value);
    }
    let resp = builder.send().await.expect("the raw call");
    assert!(resp.status().is_success(), "raw call: {}", resp.status());
    resp
}

/// The raw call, then the whole body read as bytes, unparsed; its length.
async fn raw(client: &reqwest::Client, call: &RawCall) -> usize {
    let resp = send_raw(client, call).await;
    resp.bytes().await.expect("the raw body").len()
}

/// How many events a streamed body holds: SSE `data:` lines, NDJSON lines or
/// event-stream frames.
fn wire_events(kind: Kind, body: &[u8]) -> usize {
    let lines = || body.split(|b| *b == b'\n');
    match kind {
        Kind::Ollama => lines().filter(|l| !l.is_empty()).count(),
        Kind::Bedrock => {
            // Each frame starts with its total length, big-endian.
            let (mut at, mut frames) = (0, 0);
            while at + 4 <= body.len() {
                let len = u32::from_be_bytes(body[at..at + 4].try_into().unwrap());
                at += len as usize;
                frames += 1;
            }
            frames
        }
        _ => lines().filter(|l| l.starts_with(b"data:")).count(),
    }
}

/// The client of the raw calls, built as the providers build theirs for a loopback host.
fn raw_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent("carapace-bench")
        .build()
        .unwrap()
}

fn providers(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let client = raw_client();
    let long: String = (0..WORDS).map(|i| format!("word{i} ")).collect();

    for kind in KINDS {
        let name = kind.name();
        let req = ask(kind);

        // Setup: one call each way, checked, and the request it sent.
        let (long_fake, short_fake) = rt.block_on(async {
            (
                Fake::start(kind, &long).await,
                Fake::start(kind, SHORT).await,
            )
        });
        let long_provider = long_fake.provider();
        let short_provider = short_fake.provider();
        let (content, deltas) = rt.block_on(turn(&*long_provider, &req, true));
        assert_eq!(deltas.len(), WORDS, "{name}: text deltas");
        assert_eq!(deltas.concat(), long, "{name}: deltas");
        assert_eq!(content, long, "{name}: streamed content");
        let long_call = long_fake.last_request();
        let (content, _) = rt.block_on(turn(&*short_provider, &req, false));
        assert_eq!(content, SHORT, "{name}: short content");
        let short_call = short_fake.last_request();
        let body = rt.block_on(async { send_raw(&client, &long_call).await.bytes().await });
        let body = body.expect("the raw body");
        eprintln!(
            "{name}: {} text deltas, {} wire events, {} response bytes; request {} bytes",
            deltas.len(),
            wire_events(kind, &body),
            body.len(),
            long_call.body.len()
        );

        let mut group = c.benchmark_group(format!("{name}_stream_2000"));
        group
            .sample_size(20)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(8))
            .throughput(Throughput::Elements(WORDS as u64));
        group.bench_function("raw_http", |b| {
            b.iter(|| black_box(rt.block_on(raw(&client, &long_call))))
        });
        group.bench_function("provider", |b| {
            b.iter(|| black_box(rt.block_on(turn(&*long_provider, &req, true))))
        });
        group.finish();

        let mut group = c.benchmark_group(format!("{name}_short"));
        group
            .sample_size(20)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        group.bench_function("raw_http", |b| {
            b.iter(|| black_box(rt.block_on(raw(&client, &short_call))))
        });
        group.bench_function("provider", |b| {
            b.iter(|| black_box(rt.block_on(turn(&*short_provider, &req, false))))
        });
        group.finish();

        // The fakes stop here, before the next provider's start.
        drop((long_fake, short_fake));
    }
}

criterion_group!(benches, providers);
criterion_main!(benches);
