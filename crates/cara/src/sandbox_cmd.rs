//! `cara sandbox run` and `cara sandbox check`: the owner's own use of the sandbox, at
//! their terminal (the agent's `exec` tool reaches the sandbox only through the Gate).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use carapace_sandbox::{InitProgram, Sandbox};

use crate::config;
use crate::datadir::DataDir;

/// The init program of every sandbox this binary starts: itself, with the init argument.
pub fn init_program() -> anyhow::Result<InitProgram> {
    let program = std::env::current_exe().context("cannot find the cara executable")?;
    Ok(InitProgram {
        program,
        args: vec![carapace_sandbox::INIT_ARG.to_string()],
    })
}

/// The environment every sandboxed process starts from; nothing of the caller's leaks.
pub fn base_env() -> Vec<(String, String)> {
    [
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("HOME", "/tmp"),
        ("USER", "sandbox"),
        ("LANG", "C.UTF-8"),
        ("TERM", "dumb"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

pub struct RunArgs {
    pub profile: Option<String>,
    pub binds: Vec<String>,
    pub workspace: Option<PathBuf>,
    pub env: Vec<String>,
    pub command: Vec<String>,
}

pub async fn run(dd: &DataDir, args: RunArgs) -> anyhow::Result<ExitCode> {
    let path = dd.config();
    let file = config::load(&path)?;
    let name = args.profile.as_deref().unwrap_or("tool");
    let Some(profile) = file.sandbox.profile(name) else {
        bail!(
            "no sandbox profile `{name}`; profiles: {}",
            file.sandbox.profile_names().join(", ")
        );
    };
    let workspace = match args.workspace {
        Some(w) => w,
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    let workspace = workspace
        .canonicalize()
        .with_context(|| format!("workspace {}", workspace.display()))?;
    let mut extra = Vec::new();
    for b in &args.binds {
        extra.push(config::sandbox::parse_bind(b).map_err(|p| anyhow::anyhow!("--bind {p}"))?);
    }
    let mut env = base_env();
    if let Ok(term) = std::env::var("TERM") {
        env.retain(|(k, _)| k != "TERM");
        env.push(("TERM".into(), term));
    }
    for e in &args.env {
        let Some((k, v)) = e.split_once('=') else {
            bail!("--env `{e}` is not NAME=VALUE");
        };
        if k.is_empty() {
            bail!("--env `{e}` has no name");
        }
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v.to_string()));
    }
    let mut spec = profile.spec(&workspace, env, args.command);
    spec.binds.extend(extra);
    let sandbox = Sandbox::new(init_program()?);
    let code = sandbox.run_inherit(&spec).await?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// Prints each feature; exits 1 when one the default profiles need is missing (cgroup
/// limits are best effort: rlimits apply without them).
pub fn check() -> anyhow::Result<ExitCode> {
    let features = carapace_sandbox::check();
    let width = features
        .iter()
        .map(|f| f.feature.to_string().len())
        .max()
        .unwrap_or(0);
    let mut missing = Vec::new();
    for f in &features {
        let state = if f.available {
            "available"
        } else {
            "missing  "
        };
        println!(
            "{:width$}  {state}  {}",
            f.feature.to_string(),
            f.detail,
            width = width
        );
        if !f.available && f.feature != carapace_sandbox::Feature::Cgroup {
            missing.push(f.feature.to_string());
        }
    }
    if missing.is_empty() {
        println!("\nthe sandbox can run here with every protection it needs");
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "\nmissing: {}. Profiles refuse to run without them unless they set allow_degraded = true",
            missing.join(", ")
        );
        Ok(ExitCode::FAILURE)
    }
}
