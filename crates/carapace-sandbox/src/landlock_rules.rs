//! Landlock rules matching the sandbox's mounts: reads where something is shown, writes
//! where the spec allows them. The mount tree already hides the rest; Landlock holds
//! even when it does not (a degraded run) and against a sandboxed process whose kernel
//! user id owns host files (a caller running as root).

use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd,
    Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};

/// The newest ABI this crate knows; older kernels get what they support (best effort).
const ABI_WANTED: ABI = ABI::V9;

/// How a path may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Grant {
    /// List directories only.
    List,
    /// Read and execute.
    Read,
    /// Read, and write to device files (`/dev/null` and friends).
    Device,
    /// Everything.
    Write,
}

/// One rule: a path inside the sandbox and what it allows beneath it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rule {
    pub path: PathBuf,
    pub access: Grant,
}

impl Rule {
    pub(crate) fn new(path: impl Into<PathBuf>, access: Grant) -> Rule {
        Rule {
            path: path.into(),
            access,
        }
    }
}

fn rights(access: Grant) -> BitFlags<AccessFs> {
    match access {
        Grant::List => AccessFs::ReadDir.into(),
        Grant::Read => AccessFs::from_read(ABI_WANTED),
        Grant::Device => {
            AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate | AccessFs::IoctlDev
        }
        Grant::Write => AccessFs::from_all(ABI_WANTED),
    }
}

/// What Landlock enforced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Enforced {
    /// Every requested right.
    Fully,
    /// The rights the kernel's ABI knows.
    Partially,
    /// Nothing: the kernel has no Landlock.
    Not,
}

/// Restricts the calling thread to `rules`. With `deny_tcp`, TCP bind and connect are
/// denied too (used when there is no network namespace).
pub(crate) fn restrict(rules: &[Rule], deny_tcp: bool) -> Result<Enforced, String> {
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(ABI_WANTED))
        .map_err(|e| e.to_string())?
        .scope(Scope::from_all(ABI_WANTED))
        .map_err(|e| e.to_string())?;
    if deny_tcp {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(ABI_WANTED))
            .map_err(|e| e.to_string())?;
    }
    let mut created = ruleset.create().map_err(|e| e.to_string())?;
    for rule in rules {
        let fd = match PathFd::new(&rule.path) {
            Ok(fd) => fd,
            // A path that does not exist cannot be opened in the sandbox either.
            Err(_) => continue,
        };
        let mut access = rights(rule.access);
        if !is_dir(&rule.path) {
            access &= AccessFs::from_file(ABI_WANTED);
        }
        if access.is_empty() {
            continue;
        }
        created = created
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|e| format!("rule for {}: {e}", rule.path.display()))?;
    }
    let status = created.restrict_self().map_err(|e| e.to_string())?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Enforced::Fully,
        RulesetStatus::PartiallyEnforced => Enforced::Partially,
        RulesetStatus::NotEnforced => Enforced::Not,
    })
}

fn is_dir(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_dir())
}
