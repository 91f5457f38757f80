//! The `exec` tool: a shell command in the sandbox, with the workspace bound.
//!
//! The process sees the workspace and the read-only system, no network but loopback and
//! an environment built from scratch (`carapace-sandbox`). Its output is scrubbed before
//! it is cut to the cap, so a secret at the cut is not half shown, and the result carries
//! the session's label: what a command prints is as trusted as what the session had seen.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use carapace_sandbox::{Exit, Sandbox, SandboxError, SandboxSpec};
use carapace_types::{EffectClass, Source};
use carapace_vault::Redaction;
use serde_json::{Value, json};

use crate::catalog::{ExecCtx, ExecFn, RawResult, ToolDef, ToolFailure};

/// How the `exec` tool runs: the sandbox and the resolved profile.
#[derive(Clone)]
pub struct ExecSetup {
    /// Starts sandboxed processes.
    pub sandbox: Sandbox,
    /// The profile's name, reported with each result.
    pub profile: String,
    /// Everything but argv: binds (the workspace at `cwd`), environment, limits, network.
    /// `cwd` is where commands start; `limits.wall_clock` is the longest a command may run.
    pub template: SandboxSpec,
}

/// Longer than any secret the scrubber knows or any credential pattern it looks for.
const SCRUB_MARGIN_BYTES: usize = 4096;

/// Extra time the Gate allows past the sandbox's own deadline, so the sandbox reports a
/// timed-out command with its output instead of the Gate cutting it off.
pub(crate) const DEADLINE_MARGIN: Duration = Duration::from_secs(5);

pub(crate) fn tool(setup: ExecSetup) -> ToolDef {
    let max_secs = setup.template.limits.wall_clock.as_secs().max(1);
    let setup = Arc::new(setup);
    let exec: ExecFn = Arc::new(move |ctx, args| {
        let setup = setup.clone();
        Box::pin(async move { run(&setup, ctx, args).await })
    });
    let mut def = ToolDef::new(
        "exec",
        "Run a shell command (/bin/sh -c) in an isolated sandbox: the workspace is the \
         current directory, the system is read-only, there is no network and no access to \
         the owner's home. Returns exit code, stdout and stderr (capped).",
        EffectClass::Exec,
        json!({
            "type": "object",
            "properties": {
                "command": { "type": "string", "minLength": 1, "maxLength": 65536,
                             "description": "shell command, run with /bin/sh -c" },
                "cwd": { "type": "string", "minLength": 1, "maxLength": 4096,
                         "description": "directory relative to the workspace (default the workspace root)" },
                "timeout_secs": { "type": "integer", "minimum": 1, "maximum": max_secs,
                                  "description": format!("kill the command after this long (default and most {max_secs})") }
            },
            "required": ["command"],
            "additionalProperties": false
        }),
        exec,
    );
    def.timeout = Some(Duration::from_secs(max_secs) + DEADLINE_MARGIN);
    def
}

async fn run(setup: &ExecSetup, ctx: ExecCtx, args: Value) -> Result<RawResult, ToolFailure> {
    let command = args["command"].as_str().unwrap_or_default();
    if command.contains('\0') {
        return Err(ToolFailure("the command contains a NUL byte".into()));
    }
    let mut spec = setup.template.clone();
    if let Some(cwd) = args["cwd"].as_str() {
        spec.cwd = inside(&spec.cwd, cwd)?;
    }
    if let Some(secs) = args["timeout_secs"].as_u64() {
        spec.limits.wall_clock = spec.limits.wall_clock.min(Duration::from_secs(secs));
    }
    let cap = spec.limits.output_bytes;
    spec.limits.output_bytes = cap + SCRUB_MARGIN_BYTES;
    spec.argv = vec!["/bin/sh".into(), "-c".into(), command.to_string()];

    let outcome = setup.sandbox.run(&spec).await.map_err(describe)?;
    let mut redactions = Vec::new();
    let (stdout, stdout_truncated) = capped(
        &outcome.stdout,
        outcome.stdout_truncated,
        cap,
        &ctx.scrubber,
        ("/stdout", &mut redactions),
    );
    let (stderr, stderr_truncated) = capped(
        &outcome.stderr,
        outcome.stderr_truncated,
        cap,
        &ctx.scrubber,
        ("/stderr", &mut redactions),
    );
    let (exit_code, signal, timed_out) = match outcome.exit {
        Exit::Code(c) => (Some(c), None, false),
        Exit::Signal(s) => (None, Some(s), false),
        Exit::Deadline => (None, None, true),
    };
    let degraded: Vec<String> = outcome.degraded.iter().map(|f| f.to_string()).collect();
    Ok(RawResult {
        content: json!({
            "exit_code": exit_code,
            "signal": signal,
            "timed_out": timed_out,
            "stdout": stdout,
            "stdout_truncated": stdout_truncated,
            "stderr": stderr,
            "stderr_truncated": stderr_truncated,
            "duration_ms": outcome.duration.as_millis() as u64,
            "profile": setup.profile,
            "degraded": degraded,
        }),
        // What a command prints is as trusted and as confidential as what the session
        // had seen: it may echo any of it.
        label: ctx.session_label,
        source: Source::Tool("exec".into()),
        redactions,
    })
}

/// `rel` beneath `base`, refusing absolute paths and `..`.
fn inside(base: &Path, rel: &str) -> Result<PathBuf, ToolFailure> {
    let rel_path = Path::new(rel);
    if rel_path.is_absolute()
        || rel_path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(ToolFailure(format!(
            "cwd `{rel}` must be a path inside the workspace, without `..`"
        )));
    }
    Ok(base.join(rel_path))
}

/// Output as text: scrubbed whole, then cut to `cap` bytes on a character boundary.
/// The output as text: scrubbed whole (noting where in `report`), then cut to `cap`.
fn capped(
    bytes: &[u8],
    truncated: bool,
    cap: usize,
    scrubber: &crate::Scrubber,
    report: (&str, &mut Vec<Redaction>),
) -> (String, bool) {
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    let count = scrubber.scrub_counted(&mut text);
    if count > 0 {
        report.1.push(Redaction {
            path: report.0.into(),
            count,
        });
    }
    let mut cut = truncated;
    if text.len() > cap {
        let mut end = cap;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        cut = true;
    }
    if cut {
        text.push_str("\n[output truncated]");
    }
    (text, cut)
}

/// A sandbox failure in words for the model: which feature is missing, or that the
/// command could not start; host details stay in the daemon's log.
fn describe(e: SandboxError) -> ToolFailure {
    match e {
        SandboxError::FeatureMissing { feature, .. } => ToolFailure(format!(
            "the sandbox cannot run here: the kernel feature `{feature}` is missing and the \
             profile does not allow running without it (`cara sandbox check` lists features)"
        )),
        SandboxError::InvalidSpec(message) => ToolFailure(format!("cannot run: {message}")),
        other => {
            tracing::error!(error = %other, "sandbox failed");
            ToolFailure("the sandbox could not start the command".into())
        }
    }
}
