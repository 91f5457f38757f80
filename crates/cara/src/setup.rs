//! `cara setup`: pick a provider and a model, keep the provider's key in the vault (or
//! leave it in its usual variable), write config.toml, and make one test call.
//!
//! Interactive at a terminal; `--non-interactive` takes everything from flags and the
//! environment, for scripts. Nothing here ever writes a key to config.toml.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use carapace_llm::{ChatMessage, ChatRequest};
use carapace_types::Secret;

use crate::config::{self, ProviderSetup, providers};
use crate::datadir::{DataDir, write_atomic};

/// What `cara setup` was told on the command line.
pub struct SetupArgs {
    pub provider: Option<String>,
    pub model: Option<String>,
    pub base_url: Option<String>,
    /// Store the provider's key from its variable in the vault.
    pub store_key: bool,
    pub non_interactive: bool,
    /// Skip the test call.
    pub no_test: bool,
}

pub async fn setup(dd: &DataDir, args: SetupArgs) -> anyhow::Result<ExitCode> {
    dd.prepare()?;
    let interactive = !args.non_interactive;
    if interactive && !std::io::stdin().is_terminal() {
        bail!(
            "cara setup asks questions at a terminal; in scripts use --non-interactive with --provider and --model"
        );
    }
    let path = dd.config();
    let file = config::load(&path)?;

    // Provider.
    let provider = match (&args.provider, &args.base_url) {
        (Some(p), _) => p.trim().to_string(),
        // `--base-url` alone: an OpenAI-compatible server, as before providers had names.
        (None, Some(_)) => "openai".to_string(),
        (None, None) if !interactive => {
            bail!("--non-interactive needs --provider (one of {})", names())
        }
        (None, None) => {
            println!("Providers (their key and endpoint variables are in the README):");
            for b in providers::BUILTINS {
                let base = if b.default_base.is_empty() {
                    "from $AWS_REGION"
                } else {
                    b.default_base
                };
                println!("  {:<11} {:<26} {base}", b.name, b.kind.api_name());
            }
            for name in file.providers.keys() {
                if !providers::BUILTINS.iter().any(|b| b.name == name) {
                    println!("  {name:<11} (your [providers.{name}])");
                }
            }
            println!("  (any other OpenAI-compatible server: choose openai and give its URL)");
            ask("provider", "ollama")?
        }
    };
    let builtin = providers::BUILTINS.iter().find(|b| b.name == provider);
    if builtin.is_none() && !file.providers.contains_key(&provider) {
        bail!("`{provider}` is not a provider; use one of {}", names());
    }

    // Endpoint: written only when it differs from the built-in default.
    let default_base = builtin.map(|b| b.default_base).unwrap_or("");
    let base_url = match args.base_url.clone() {
        Some(u) => Some(u),
        None if interactive && !default_base.is_empty() => {
            let u = ask("base URL", default_base)?;
            (u != default_base).then_some(u)
        }
        None => None,
    };
    let mut text =
        std::fs::read_to_string(&path).unwrap_or_else(|_| config::DEFAULT_CONFIG.to_string());
    if let Some(url) = &base_url {
        config::check_base_url(url).map_err(|p| anyhow::anyhow!("base URL: {p}"))?;
        let key = if provider == "openai" {
            "provider.base_url".to_string()
        } else {
            format!("providers.{provider}.base_url")
        };
        text = config::set_key(&path, &text, &key, &format!("{url:?}"))?;
    }

    // Key: into the vault, never into the file.
    let key_var = builtin
        .and_then(|b| b.key_envs.first().copied())
        .map(String::from)
        .or_else(|| {
            file.providers
                .get(&provider)
                .and_then(|t| t.api_key_env.as_ref().map(|v| v.get_ref().clone()))
        });
    let mut stored: Option<(String, Secret<String>)> = None;
    if provider == "bedrock" {
        println!(
            "Bedrock signs with AWS credentials: $AWS_REGION, $AWS_ACCESS_KEY_ID, \
             $AWS_SECRET_ACCESS_KEY (and $AWS_SESSION_TOKEN); `cara vault import-env \
             AWS_SECRET_ACCESS_KEY` keeps the secret in the vault"
        );
    } else if let Some(var) = &key_var {
        let from_env = std::env::var(var).ok().filter(|v| !v.is_empty());
        let value = match from_env {
            Some(v) if args.store_key => Some(v),
            Some(v) if interactive => {
                let yes = ask(
                    &format!("${var} is set: keep it in the encrypted vault?"),
                    "Y",
                )?;
                yes.eq_ignore_ascii_case("y").then_some(v)
            }
            Some(_) => {
                println!("using ${var} from the environment (--store-key keeps it in the vault)");
                None
            }
            None if args.store_key => bail!("--store-key: ${var} is not set"),
            None if interactive => {
                let v = rpassword::prompt_password(format!(
                    "API key for {provider} (not shown; empty to set ${var} yourself): "
                ))?;
                (!v.trim().is_empty()).then(|| v.trim().to_string())
            }
            None => {
                println!("no key: set ${var} (or `cara vault set {var}`) before chatting");
                None
            }
        };
        if let Some(v) = value {
            let secret = Secret::new(v);
            crate::vault_cmd::store_in_file(dd, var, &secret)?;
            println!("stored the key in the vault as `{var}`; the gateway reads it from there");
            stored = Some((var.clone(), secret));
        }
    }

    // Model.
    let default_model = builtin
        .and_then(|b| b.default_model)
        .unwrap_or(match provider.as_str() {
            "ollama" => "llama3.2",
            _ => "",
        });
    let model = match args.model.clone() {
        Some(m) => m,
        None if interactive => ask("model", default_model)?,
        None if !default_model.is_empty() => default_model.to_string(),
        None => bail!("--non-interactive needs --model for {provider}"),
    };
    if model.trim().is_empty() {
        bail!("the model name is empty");
    }
    let full = format!("{provider}/{}", model.trim());
    text = config::set_key(&path, &text, "provider.model", &format!("{full:?}"))?;
    write_atomic(&path, text.as_bytes())?;
    println!("wrote provider.model = {full:?} to {}", path.display());

    if args.no_test {
        println!("then run `cara chat` (a running gateway must be restarted to pick this up)");
        return Ok(ExitCode::SUCCESS);
    }
    test_call(dd, stored).await
}

/// One short turn against the configured model, as the gateway would make it.
async fn test_call(
    dd: &DataDir,
    stored: Option<(String, Secret<String>)>,
) -> anyhow::Result<ExitCode> {
    let file = config::load(&dd.config())?;
    let env = |k: &str| {
        std::env::var(k).ok().filter(|v| !v.is_empty()).or_else(|| {
            stored
                .as_ref()
                .filter(|(name, _)| name == k)
                .map(|(_, v)| v.expose().clone())
        })
    };
    let settings = config::settings(&dd.config(), &file, &env)?;
    let ProviderSetup::Ready(p) = settings.provider else {
        bail!("the configuration names no usable model");
    };
    let t = &p.target;
    print!("test call to {} at {} ... ", t.full_name(), t.base_url);
    std::io::stdout().flush().ok();
    let provider = t.connect(Duration::from_secs(60), Duration::from_secs(30))?;
    let request = ChatRequest {
        model: t.model.clone(),
        messages: vec![ChatMessage::User {
            content: "Reply with the single word OK.".into(),
        }],
        tools: Vec::new(),
        max_tokens: Some(16),
        temperature: None,
    };
    match provider.chat(&request, None).await {
        Ok(answer) => {
            let said: String = answer
                .content
                .unwrap_or_default()
                .chars()
                .filter(|c| !c.is_control())
                .take(80)
                .collect();
            println!("ok, it answered {said:?}");
            println!("then run `cara chat` (a running gateway must be restarted to pick this up)");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("failed");
            eprintln!(
                "cara: the test call failed: {e}\n(config.toml is written; fix the key or endpoint and run `cara doctor`)"
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn names() -> String {
    providers::BUILTINS
        .iter()
        .map(|b| b.name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn ask(question: &str, default: &str) -> anyhow::Result<String> {
    if default.is_empty() {
        print!("{question}: ");
    } else {
        print!("{question} [{default}]: ");
    }
    std::io::stdout().flush().ok();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the answer")?;
    let line = line.trim();
    Ok(if line.is_empty() {
        default.to_string()
    } else {
        line.to_string()
    })
}
