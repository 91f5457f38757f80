//! Which model provider answers: `provider/model` names (`anthropic/claude-sonnet-4-5`,
//! `ollama/llama3.2`), aliases, the built-in providers with their conventional
//! environment variables, and `[providers.NAME]` tables for the rest.
//!
//! A name without a known `provider/` prefix goes to the `openai` provider, any
//! OpenAI-compatible server (`[provider] base_url` or `$OPENAI_BASE_URL`), so model names
//! with slashes of their own (`meta-llama/Llama-3-8B` on vLLM) keep working.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use carapace_agent::ModelCatalog;
use carapace_llm::{RetryPolicy, Route, Router};

use carapace_llm::anthropic::{Anthropic, AnthropicConfig};
use carapace_llm::bedrock::{Bedrock, BedrockConfig};
use carapace_llm::gemini::{Gemini, GeminiConfig};
use carapace_llm::ollama::{Ollama, OllamaConfig};
use carapace_llm::openai_responses::{OpenAiResponses, OpenAiResponsesConfig};
use carapace_llm::{OpenAiCompat, OpenAiConfig, Provider, ProviderError};
use carapace_types::Secret;
use serde::Deserialize;
use toml::Spanned;

use super::{Locator, Origin, check_base_url};

/// The wire protocol a provider speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI Chat Completions (OpenAI, Ollama's `/v1`, vLLM, llama.cpp, LM Studio,
    /// Venice, OpenRouter, Groq).
    OpenAi,
    /// The OpenAI Responses API.
    OpenAiResponses,
    /// The Anthropic Messages API.
    Anthropic,
    /// Google's Gemini API.
    Gemini,
    /// Ollama's native `/api/chat`.
    Ollama,
    /// AWS Bedrock's Converse API, SigV4-signed.
    Bedrock,
}

impl ProviderKind {
    /// The API's name, for `cara config show` and `cara doctor`.
    pub fn api_name(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "OpenAI Chat Completions",
            ProviderKind::OpenAiResponses => "OpenAI Responses",
            ProviderKind::Anthropic => "Anthropic Messages",
            ProviderKind::Gemini => "Gemini",
            ProviderKind::Ollama => "Ollama",
            ProviderKind::Bedrock => "Bedrock Converse",
        }
    }

    fn parse(s: &str) -> Option<ProviderKind> {
        Some(match s {
            "openai" => ProviderKind::OpenAi,
            "openai-responses" => ProviderKind::OpenAiResponses,
            "anthropic" => ProviderKind::Anthropic,
            "gemini" => ProviderKind::Gemini,
            "ollama" => ProviderKind::Ollama,
            "bedrock" => ProviderKind::Bedrock,
            _ => return None,
        })
    }
}

/// A provider Carapace knows without configuration.
pub struct Builtin {
    pub name: &'static str,
    pub kind: ProviderKind,
    pub default_base: &'static str,
    /// The variable that overrides the base URL.
    pub base_env: &'static str,
    /// The variables a key is taken from, first set wins.
    pub key_envs: &'static [&'static str],
    /// The model used when this provider's key is the only thing set.
    pub default_model: Option<&'static str>,
}

/// Every built-in provider. The order is the order in which a set key picks the default
/// provider when no model is configured.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "openai",
        kind: ProviderKind::OpenAi,
        default_base: super::OPENAI_DEFAULT_BASE,
        base_env: "OPENAI_BASE_URL",
        key_envs: &["OPENAI_API_KEY"],
        default_model: Some(super::OPENAI_DEFAULT_MODEL),
    },
    Builtin {
        name: "anthropic",
        kind: ProviderKind::Anthropic,
        default_base: "https://api.anthropic.com",
        base_env: "ANTHROPIC_BASE_URL",
        key_envs: &["ANTHROPIC_API_KEY"],
        default_model: Some("claude-sonnet-4-5"),
    },
    Builtin {
        name: "gemini",
        kind: ProviderKind::Gemini,
        default_base: "https://generativelanguage.googleapis.com",
        base_env: "GEMINI_BASE_URL",
        key_envs: &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
        default_model: Some("gemini-2.5-flash"),
    },
    Builtin {
        name: "ollama",
        kind: ProviderKind::Ollama,
        default_base: "http://127.0.0.1:11434",
        base_env: "OLLAMA_BASE_URL",
        key_envs: &[],
        default_model: None,
    },
    // Endpoint and credentials from the standard AWS variables (see `aws_settings`).
    Builtin {
        name: "bedrock",
        kind: ProviderKind::Bedrock,
        default_base: "",
        base_env: "BEDROCK_ENDPOINT_URL",
        key_envs: &[],
        default_model: None,
    },
    Builtin {
        name: "venice",
        kind: ProviderKind::OpenAi,
        default_base: "https://api.venice.ai/api/v1",
        base_env: "VENICE_BASE_URL",
        key_envs: &["VENICE_API_KEY"],
        default_model: None,
    },
    Builtin {
        name: "openrouter",
        kind: ProviderKind::OpenAi,
        default_base: "https://openrouter.ai/api/v1",
        base_env: "OPENROUTER_BASE_URL",
        key_envs: &["OPENROUTER_API_KEY"],
        default_model: None,
    },
    Builtin {
        name: "groq",
        kind: ProviderKind::OpenAi,
        default_base: "https://api.groq.com/openai/v1",
        base_env: "GROQ_BASE_URL",
        key_envs: &["GROQ_API_KEY"],
        default_model: None,
    },
];

/// Every variable a provider key may come from, for `cara vault import-env` and the
/// daemon's vault fallback.
pub fn key_variables() -> impl Iterator<Item = &'static str> {
    BUILTINS
        .iter()
        .flat_map(|b| b.key_envs.iter().copied())
        .chain(AWS_SECRETS)
}

/// The AWS credential variables Bedrock reads (each may also be a vault entry).
const AWS_SECRETS: [&str; 3] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

/// What Bedrock signs with.
pub struct AwsSettings {
    pub region: String,
    pub access_key_id: Secret<String>,
    pub secret_access_key: Secret<String>,
    pub session_token: Option<Secret<String>>,
}

fn builtin(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

/// `[providers.NAME]`: a built-in provider's endpoint changed, or a provider of its own
/// (a vLLM box, LM Studio, a proxy).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderTable {
    /// `openai`, `openai-responses`, `anthropic`, `gemini`, `ollama` or `bedrock`; required unless
    /// NAME is a built-in provider.
    pub kind: Option<Spanned<String>>,
    pub base_url: Option<Spanned<String>>,
    /// The environment variable (or vault entry of that name) holding the key.
    pub api_key_env: Option<Spanned<String>>,
    /// The AWS region (Bedrock only).
    pub region: Option<Spanned<String>>,
    /// Present only to give a precise error: keys never live in this file.
    api_key: Option<Spanned<toml::Value>>,
}

/// One resolved model: who answers, where, with which key.
pub struct ModelTarget {
    /// The provider's name (`anthropic`, `ollama`, a `[providers]` table).
    pub provider: String,
    pub kind: ProviderKind,
    /// The model as the provider knows it.
    pub model: String,
    pub base_url: String,
    pub base_url_origin: Origin,
    pub api_key: Option<Secret<String>>,
    /// Where the key came from (`$ANTHROPIC_API_KEY`), if there is one.
    pub api_key_from: Option<String>,
    /// Bedrock's region and credentials.
    pub aws: Option<AwsSettings>,
    /// Whether the name named the provider (`openai/gpt-4o` rather than `gpt-4o`).
    prefixed: bool,
}

impl ModelTarget {
    /// `provider/model`, or the bare model when it was named without its provider (a
    /// model of the `openai` provider).
    pub fn full_name(&self) -> String {
        if self.prefixed {
            format!("{}/{}", self.provider, self.model)
        } else {
            self.model.clone()
        }
    }

    /// Every secret this provider is given, for the scrubber.
    pub fn secrets(&self) -> Vec<Secret<String>> {
        let mut out: Vec<Secret<String>> = self.api_key.iter().cloned().collect();
        if let Some(aws) = &self.aws {
            out.push(aws.access_key_id.clone());
            out.push(aws.secret_access_key.clone());
            out.extend(aws.session_token.clone());
        }
        out
    }

    /// The client for this provider. Its key goes only to its base URL.
    pub fn connect(
        &self,
        request_timeout: Duration,
        stall_timeout: Duration,
    ) -> Result<Arc<dyn Provider>, ProviderError> {
        let base_url = self.base_url.clone();
        let api_key = self.api_key.clone();
        Ok(match self.kind {
            ProviderKind::OpenAi => Arc::new(OpenAiCompat::new(OpenAiConfig {
                base_url,
                api_key,
                request_timeout,
                stall_timeout,
            })?),
            ProviderKind::Anthropic => Arc::new(Anthropic::new(AnthropicConfig {
                base_url,
                api_key,
                request_timeout,
                stall_timeout,
                ..AnthropicConfig::default()
            })?),
            ProviderKind::Gemini => Arc::new(Gemini::new(GeminiConfig {
                base_url,
                api_key,
                request_timeout,
                stall_timeout,
            })?),
            ProviderKind::Ollama => Arc::new(Ollama::new(OllamaConfig {
                base_url,
                api_key,
                request_timeout,
                stall_timeout,
            })?),
            ProviderKind::Bedrock => {
                let aws = self.aws.as_ref().ok_or_else(|| {
                    ProviderError::InvalidConfig("bedrock needs AWS credentials".into())
                })?;
                Arc::new(Bedrock::new(BedrockConfig {
                    endpoint: Some(base_url.clone()),
                    // A custom endpoint (a proxy, a test server) serves the model list too.
                    control_endpoint: (self.base_url_origin != Origin::Default).then_some(base_url),
                    session_token: aws.session_token.clone(),
                    request_timeout,
                    stall_timeout,
                    ..BedrockConfig::new(
                        &aws.region,
                        aws.access_key_id.clone(),
                        aws.secret_access_key.clone(),
                    )
                })?)
            }
            ProviderKind::OpenAiResponses => {
                Arc::new(OpenAiResponses::new(OpenAiResponsesConfig {
                    base_url,
                    api_key,
                    request_timeout,
                    stall_timeout,
                })?)
            }
        })
    }
}

/// Checks `[providers]` and the model names of `[provider]`.
pub fn validate(
    at: &Locator<'_>,
    providers: &BTreeMap<String, ProviderTable>,
    aliases: &BTreeMap<String, Spanned<String>>,
) -> anyhow::Result<()> {
    for (name, t) in providers {
        let key = |k: &str| format!("providers.{name}.{k}");
        if let Some(k) = &t.api_key {
            return Err(at.span(
                k.span(),
                &key("api_key"),
                "API keys are never read from config.toml; name the variable (or vault entry) that holds it with api_key_env".into(),
            ));
        }
        if !valid_name(name) {
            return Err(at.key(
                &format!("providers.{name}"),
                "a provider name is letters, digits, `-` and `_`".into(),
            ));
        }
        match &t.kind {
            Some(k) if ProviderKind::parse(k.get_ref()).is_none() => {
                return Err(at.span(
                    k.span(),
                    &key("kind"),
                    format!(
                        "`{}` is not a provider kind; use openai, openai-responses, anthropic, gemini, ollama or bedrock",
                        k.get_ref()
                    ),
                ));
            }
            None if builtin(name).is_none() => {
                return Err(at.key(
                    &format!("providers.{name}"),
                    "a provider that is not built in needs a kind (openai, openai-responses, anthropic, gemini, ollama or bedrock) and a base_url".into(),
                ));
            }
            _ => {}
        }
        match &t.base_url {
            Some(url) => {
                if let Err(p) = check_base_url(url.get_ref()) {
                    return Err(at.span(url.span(), &key("base_url"), p));
                }
            }
            None if builtin(name).is_none()
                && t.kind.as_ref().map(|k| k.get_ref().as_str()) != Some("bedrock") =>
            {
                return Err(at.key(
                    &format!("providers.{name}"),
                    "a provider that is not built in needs a base_url".into(),
                ));
            }
            None => {}
        }
        if let Some(var) = &t.api_key_env
            && !valid_variable(var.get_ref())
        {
            return Err(at.span(
                var.span(),
                &key("api_key_env"),
                "must be an environment variable name, like MY_PROVIDER_KEY".into(),
            ));
        }
    }
    for (alias, target) in aliases {
        let key = format!("provider.aliases.{alias}");
        if target.get_ref().trim().is_empty() {
            return Err(at.span(target.span(), &key, "must not be empty".into()));
        }
        if aliases.contains_key(target.get_ref()) {
            return Err(at.span(
                target.span(),
                &key,
                "an alias must name a model, not another alias".into(),
            ));
        }
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_variable(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Why a model name does not resolve.
pub enum ResolveError {
    /// The name itself is wrong.
    Name(String),
    /// A setting it depends on is (the message names it).
    Setting(String),
}

/// Every variable resolution reads: base URLs, keys, AWS region and credentials, and
/// the `api_key_env` of each table.
pub fn variables(providers: &BTreeMap<String, ProviderTable>) -> Vec<String> {
    let mut out: Vec<String> = BUILTINS
        .iter()
        .map(|b| b.base_env)
        .chain(key_variables())
        .chain(["AWS_REGION", "AWS_DEFAULT_REGION"])
        .map(String::from)
        .collect();
    out.extend(
        providers
            .values()
            .filter_map(|t| t.api_key_env.as_ref().map(|v| v.get_ref().clone())),
    );
    out.sort();
    out.dedup();
    out
}

/// The models a session may switch to (`/model`): any name the configuration resolves,
/// served first, with the configured chain behind it. Built once per name.
pub struct Catalog {
    providers: BTreeMap<String, ProviderTable>,
    aliases: BTreeMap<String, Spanned<String>>,
    legacy_base_url: Option<Spanned<String>>,
    /// The variables resolution reads, read once at start.
    env: BTreeMap<String, String>,
    /// The configured chain, behind a session's own model.
    chain: Vec<Route>,
    retry: RetryPolicy,
    request_timeout: Duration,
    stall_timeout: Duration,
    built: Mutex<BTreeMap<String, Arc<Router>>>,
}

impl Catalog {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        providers: BTreeMap<String, ProviderTable>,
        aliases: BTreeMap<String, Spanned<String>>,
        legacy_base_url: Option<Spanned<String>>,
        env: BTreeMap<String, String>,
        chain: Vec<Route>,
        retry: RetryPolicy,
        request_timeout: Duration,
        stall_timeout: Duration,
    ) -> Catalog {
        Catalog {
            providers,
            aliases,
            legacy_base_url,
            env,
            chain,
            retry,
            request_timeout,
            stall_timeout,
            built: Mutex::default(),
        }
    }
}

impl ModelCatalog for Catalog {
    fn router_for(&self, name: &str) -> Result<Arc<Router>, String> {
        let mut built = self.built.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(router) = built.get(name) {
            return Ok(router.clone());
        }
        let env = |k: &str| self.env.get(k).cloned();
        let resolver = Resolver {
            providers: &self.providers,
            aliases: &self.aliases,
            legacy_base_url: self.legacy_base_url.as_ref(),
            env: &env,
        };
        let target = resolver.resolve(name).map_err(|e| match e {
            ResolveError::Name(m) | ResolveError::Setting(m) => m,
        })?;
        let provider = target
            .connect(self.request_timeout, self.stall_timeout)
            .map_err(|e| format!("cannot use {}: {e}", target.full_name()))?;
        let first = Route {
            name: target.full_name(),
            provider,
            model: target.model.clone(),
        };
        let routes: Vec<Route> = std::iter::once(first.clone())
            .chain(self.chain.iter().filter(|r| r.name != first.name).cloned())
            .collect();
        let router = Arc::new(Router::new(routes, self.retry).map_err(|e| e.to_string())?);
        built.insert(name.to_string(), router.clone());
        Ok(router)
    }
}

/// What a model name resolves with.
pub struct Resolver<'a> {
    pub providers: &'a BTreeMap<String, ProviderTable>,
    pub aliases: &'a BTreeMap<String, Spanned<String>>,
    /// `[provider] base_url`: the `openai` provider's endpoint, as before providers had
    /// tables.
    pub legacy_base_url: Option<&'a Spanned<String>>,
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

impl Resolver<'_> {
    /// Splits `name` (after alias expansion) into provider and model, and finds the
    /// provider's endpoint and key. The error says what is wrong with the name.
    pub fn resolve(&self, name: &str) -> Result<ModelTarget, ResolveError> {
        let name = name.trim();
        let name = self
            .aliases
            .get(name)
            .map(|t| t.get_ref().trim())
            .unwrap_or(name);
        let (provider, model, prefixed) = match name.split_once('/') {
            Some((p, m)) if builtin(p).is_some() || self.providers.contains_key(p) => (p, m, true),
            _ => ("openai", name, false),
        };
        if model.is_empty() {
            return Err(ResolveError::Name(format!(
                "`{name}` names no model after `{provider}/`, like {provider}/{}",
                builtin(provider)
                    .and_then(|b| b.default_model)
                    .unwrap_or("MODEL")
            )));
        }
        self.target(provider, model, prefixed)
    }

    fn target(
        &self,
        provider: &str,
        model: &str,
        prefixed: bool,
    ) -> Result<ModelTarget, ResolveError> {
        let table = self.providers.get(provider);
        let built = builtin(provider);
        let kind = table
            .and_then(|t| t.kind.as_ref())
            .and_then(|k| ProviderKind::parse(k.get_ref()))
            .or(built.map(|b| b.kind))
            .ok_or_else(|| ResolveError::Name(format!("no provider named `{provider}`")))?;
        let from_env = built.and_then(|b| {
            (self.env)(b.base_env)
                .filter(|u| !u.is_empty())
                .map(|u| (u, Origin::Env(b.base_env)))
        });
        let legacy = (provider == "openai")
            .then_some(self.legacy_base_url)
            .flatten();
        let (mut base_url, base_url_origin) = match (
            from_env,
            table.and_then(|t| t.base_url.as_ref()),
            legacy,
            built,
        ) {
            (Some((url, origin)), ..) => {
                check_base_url(&url).map_err(|p| {
                    let Origin::Env(var) = origin else {
                        unreachable!()
                    };
                    ResolveError::Setting(format!("${var}: {p}"))
                })?;
                (url, origin)
            }
            (None, Some(url), ..) | (None, None, Some(url), _) => {
                (url.get_ref().clone(), Origin::File)
            }
            (None, None, None, Some(b)) => (b.default_base.to_string(), Origin::Default),
            (None, None, None, None) => {
                return Err(ResolveError::Setting(format!(
                    "the provider `{provider}` has no base_url"
                )));
            }
        };
        let aws = if kind == ProviderKind::Bedrock {
            let aws = self.aws_settings(table)?;
            if base_url.is_empty() {
                base_url = format!("https://bedrock-runtime.{}.amazonaws.com", aws.region);
            }
            Some(aws)
        } else {
            None
        };
        if kind == ProviderKind::OpenAi && built.is_some_and(|b| b.kind == ProviderKind::Ollama) {
            // `[providers.ollama] kind = "openai"`: Ollama's OpenAI-compatible API lives
            // under /v1 of the same base URL.
            base_url = format!("{}/v1", base_url.trim_end_matches('/'));
        }
        let key_vars: Vec<String> = match table.and_then(|t| t.api_key_env.as_ref()) {
            Some(var) => vec![var.get_ref().clone()],
            None => built
                .map(|b| b.key_envs.iter().map(|v| v.to_string()).collect())
                .unwrap_or_default(),
        };
        let (api_key, api_key_from) = key_vars
            .iter()
            .find_map(|var| {
                (self.env)(var)
                    .filter(|k| !k.is_empty())
                    .map(|k| (Some(Secret::new(k)), Some(format!("${var}"))))
            })
            .unwrap_or((None, None));
        Ok(ModelTarget {
            provider: provider.to_string(),
            kind,
            model: model.to_string(),
            base_url,
            base_url_origin,
            api_key_from: match &aws {
                Some(_) => Some("$AWS_ACCESS_KEY_ID, $AWS_SECRET_ACCESS_KEY".into()),
                None => api_key_from,
            },
            api_key,
            aws,
            prefixed,
        })
    }

    /// Bedrock's region (`[providers.NAME] region`, `$AWS_REGION`, `$AWS_DEFAULT_REGION`)
    /// and credentials (`$AWS_ACCESS_KEY_ID`, `$AWS_SECRET_ACCESS_KEY`, optional
    /// `$AWS_SESSION_TOKEN`, or vault entries of those names).
    fn aws_settings(&self, table: Option<&ProviderTable>) -> Result<AwsSettings, ResolveError> {
        let var = |name: &str| (self.env)(name).filter(|v| !v.is_empty());
        let region = table
            .and_then(|t| t.region.as_ref().map(|r| r.get_ref().clone()))
            .or_else(|| var("AWS_REGION"))
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .ok_or_else(|| {
                ResolveError::Setting(
                    "bedrock needs a region: set $AWS_REGION (or region in [providers.bedrock])"
                        .into(),
                )
            })?;
        let (Some(id), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
        else {
            return Err(ResolveError::Setting(
                "bedrock needs AWS credentials: set $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY (or vault entries of those names)".into(),
            ));
        };
        Ok(AwsSettings {
            region,
            access_key_id: Secret::new(id),
            secret_access_key: Secret::new(secret),
            session_token: var("AWS_SESSION_TOKEN").map(Secret::new),
        })
    }

    /// The model to use when none is configured: the default model of the first
    /// built-in provider whose key is set.
    pub fn default_model(&self) -> Option<String> {
        BUILTINS.iter().find_map(|b| {
            let model = b.default_model?;
            b.key_envs
                .iter()
                .any(|v| (self.env)(v).is_some_and(|k| !k.is_empty()))
                .then(|| format!("{}/{model}", b.name))
        })
    }
}
