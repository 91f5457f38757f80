//! `cara sandbox run` and `cara sandbox check`: the owner's own use of the sandbox, at
//! their terminal (the agent's `exec` tool reaches the sandbox only through the Gate).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use carapace_sandbox::{InitProgram, Sandbox};

use crate::config;
use crate::datadir::DataDir;

/// The small init program installed beside `cara`.
pub const INIT_HELPER: &str = "cara-sandbox-init";

/// The init program of every sandbox this binary starts: `cara-sandbox-init` beside it
/// when that can be trusted (it starts faster), else itself; with the init argument.
pub fn init_program() -> anyhow::Result<InitProgram> {
    let cara = std::env::current_exe().context("cannot find the cara executable")?;
    let helper = cara.with_file_name(INIT_HELPER);
    let program = if trusted_helper(&cara, &helper).is_ok() {
        helper
    } else {
        cara
    };
    Ok(InitProgram {
        program,
        args: vec![carapace_sandbox::INIT_ARG.to_string()],
    })
}

/// Whether `helper` may run as the init program of `cara`: a regular executable file (not
/// a symlink), owned by `cara`'s owner or root, writable by no one else. Whoever could
/// replace it could also replace `cara`. The error says why not.
pub fn trusted_helper(cara: &Path, helper: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let cara_meta = std::fs::metadata(cara).map_err(|e| format!("{}: {e}", cara.display()))?;
    let meta = std::fs::symlink_metadata(helper).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("{} is not installed", helper.display()),
        _ => format!("{}: {e}", helper.display()),
    })?;
    if !meta.file_type().is_file() {
        return Err(format!("{} is not a regular file", helper.display()));
    }
    if meta.uid() != cara_meta.uid() && meta.uid() != 0 {
        return Err(format!(
            "{} is owned by uid {}, not by cara's owner (uid {}) or root",
            helper.display(),
            meta.uid(),
            cara_meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by its group or others",
            helper.display()
        ));
    }
    if meta.mode() & 0o100 == 0 {
        return Err(format!("{} is not executable", helper.display()));
    }
    Ok(())
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
    if let Ok(cara) = std::env::current_exe() {
        let helper = cara.with_file_name(INIT_HELPER);
        match trusted_helper(&cara, &helper) {
            Ok(()) => println!(
                "{:width$}  available  {} (fast start)",
                "init program",
                helper.display(),
                width = width
            ),
            Err(why) => println!(
                "{:width$}  fallback   cara itself, about 1 ms slower per start: {why}",
                "init program",
                width = width
            ),
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::trusted_helper;

    #[test]
    fn only_a_private_executable_file_beside_cara_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let cara = dir.path().join("cara");
        let helper = dir.path().join("cara-sandbox-init");
        std::fs::write(&cara, "").unwrap();
        let set = |mode: u32| {
            std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(mode)).unwrap()
        };

        let why = trusted_helper(&cara, &helper).unwrap_err();
        assert!(why.ends_with("is not installed"), "{why}");
        std::fs::write(&helper, "").unwrap();
        set(0o755);
        assert_eq!(trusted_helper(&cara, &helper), Ok(()));
        set(0o775);
        assert!(
            trusted_helper(&cara, &helper)
                .unwrap_err()
                .contains("writable")
        );
        set(0o757);
        assert!(
            trusted_helper(&cara, &helper)
                .unwrap_err()
                .contains("writable")
        );
        set(0o644);
        assert!(
            trusted_helper(&cara, &helper)
                .unwrap_err()
                .contains("not executable")
        );
        set(0o755);
        // Owned by someone else (only root can arrange that here).
        if std::os::unix::fs::chown(&helper, Some(54_321), None).is_ok() {
            let why = trusted_helper(&cara, &helper).unwrap_err();
            assert!(why.contains("owned by uid 54321"), "{why}");
        }

        // A symlink is refused even when its target would pass.
        std::fs::remove_file(&helper).unwrap();
        let real = dir.path().join("real-init");
        std::fs::write(&real, "").unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&real, &helper).unwrap();
        assert!(
            trusted_helper(&cara, &helper)
                .unwrap_err()
                .contains("not a regular file")
        );
        // So is a directory.
        std::fs::remove_file(&helper).unwrap();
        std::fs::create_dir(&helper).unwrap();
        assert!(
            trusted_helper(&cara, &helper)
                .unwrap_err()
                .contains("not a regular file")
        );
    }
}
