//! Processes under Linux namespaces, Landlock, seccomp and rlimits: the only crate with `unsafe`.
//!
//! [`Sandbox::run`] takes a fully resolved [`SandboxSpec`] and runs it as uid 1000 in new
//! user, mount, PID, network, IPC and UTS namespaces, on a root of its own (read-only
//! system directories, a generated `/etc`, a private `/tmp`, the spec's binds), with
//! nothing but loopback (or one Unix socket the spec passes in), Landlock rules matching
//! the binds, a seccomp filter, no_new_privs and rlimits. The environment is exactly the
//! spec's; output is captured with a cap; the whole process tree dies at the deadline.
//!
//! The caller never forks itself: it starts an init program ([`InitProgram`], which
//! calls [`init_main`]) and hands it the spec over an inherited descriptor.
//!
//! This crate must never decide policy (it runs what it is given), never pass the spec
//! through argv or the environment (both are visible to other processes), never let the
//! caller's environment reach the sandbox, never show the host's `/etc` whole, and never
//! leave a sandboxed process running after its run has ended.

mod cgroup;
#[allow(unsafe_code)]
pub mod fdpass;
#[allow(unsafe_code)]
mod init;
mod landlock_rules;
mod mounts;
#[allow(unsafe_code)]
mod peer;
mod probe;
#[allow(unsafe_code)]
mod run;
mod seccomp;
mod spec;
#[allow(unsafe_code)]
mod sys;
mod wire;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use init::init_main;
pub use peer::{NsId, Peer, PidNamespace, peer};
pub use run::Stdio3;
pub use spec::{Bind, Limits, Network, SandboxSpec};

/// The argument after which the init program calls [`init_main`].
pub const INIT_ARG: &str = "__sandbox-init";

/// The user and group id of the sandboxed process, inside its user namespace.
pub const INSIDE_UID: u32 = 1000;
/// The group id of the sandboxed process, inside its user namespace.
pub const INSIDE_GID: u32 = 1000;

/// The program (and its leading arguments) that runs [`init_main`]: `cara` passes its own
/// executable and [`INIT_ARG`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitProgram {
    /// The executable.
    pub program: PathBuf,
    /// Arguments before which nothing else is passed (the spec travels separately).
    pub args: Vec<String>,
}

/// Starts sandboxed processes.
#[derive(Clone, Debug)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    init: InitProgram,
    /// The cgroup v2 directory runs are created under, found once.
    cgroup_base: OnceLock<Option<PathBuf>>,
}

impl Sandbox {
    /// A sandbox whose runs start `init`.
    pub fn new(init: InitProgram) -> Sandbox {
        Sandbox {
            inner: Arc::new(Inner {
                init,
                cgroup_base: OnceLock::new(),
            }),
        }
    }

    fn init(&self) -> &InitProgram {
        &self.inner.init
    }

    fn cgroup_base(&self) -> Option<&Path> {
        self.inner
            .cgroup_base
            .get_or_init(|| cgroup::find_base().ok())
            .as_deref()
    }
}

/// The result of a run that started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// How the command ended.
    pub exit: Exit,
    /// Standard output, at most `limits.output_bytes`.
    pub stdout: Vec<u8>,
    /// Standard error, at most `limits.output_bytes`.
    pub stderr: Vec<u8>,
    /// Whether stdout had more than the cap (the rest was read and discarded).
    pub stdout_truncated: bool,
    /// Whether stderr had more than the cap (the rest was read and discarded).
    pub stderr_truncated: bool,
    /// Wall-clock time from start to end.
    pub duration: Duration,
    /// Features the run went without (only with `allow_degraded`, and the cgroup, which
    /// is always best effort).
    pub degraded: Vec<Feature>,
}

/// How a sandboxed command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
    /// It ran past the wall-clock limit and was killed with all its processes.
    Deadline,
}

/// A kernel feature the sandbox uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Feature {
    /// User namespaces (uid 1000 inside, mapped to the caller's ids).
    UserNamespace,
    /// Mount namespaces (the sandbox's own root).
    MountNamespace,
    /// PID namespaces (its own `/proc`; the tree dies with its PID 1).
    PidNamespace,
    /// Network namespaces (loopback only).
    NetworkNamespace,
    /// IPC namespaces.
    IpcNamespace,
    /// UTS namespaces (its own host name).
    UtsNamespace,
    /// Landlock file-system rules.
    Landlock,
    /// Seccomp system-call filtering.
    Seccomp,
    /// `PR_SET_NO_NEW_PRIVS`.
    NoNewPrivs,
    /// Cgroup v2 memory and process limits.
    Cgroup,
    /// Resource limits (rlimits, and the process cap).
    Rlimits,
}

const FEATURE_NAMES: &[(Feature, &str)] = &[
    (Feature::UserNamespace, "user-namespace"),
    (Feature::MountNamespace, "mount-namespace"),
    (Feature::PidNamespace, "pid-namespace"),
    (Feature::NetworkNamespace, "network-namespace"),
    (Feature::IpcNamespace, "ipc-namespace"),
    (Feature::UtsNamespace, "uts-namespace"),
    (Feature::Landlock, "landlock"),
    (Feature::Seccomp, "seccomp"),
    (Feature::NoNewPrivs, "no-new-privs"),
    (Feature::Cgroup, "cgroup"),
    (Feature::Rlimits, "rlimits"),
];

impl Feature {
    /// Every feature, in the order [`check`] reports them.
    pub const ALL: [Feature; 11] = [
        Feature::UserNamespace,
        Feature::MountNamespace,
        Feature::PidNamespace,
        Feature::NetworkNamespace,
        Feature::IpcNamespace,
        Feature::UtsNamespace,
        Feature::Landlock,
        Feature::Seccomp,
        Feature::NoNewPrivs,
        Feature::Cgroup,
        Feature::Rlimits,
    ];

    /// The feature's name, e.g. `landlock` or `user-namespace`.
    pub fn name(self) -> &'static str {
        FEATURE_NAMES
            .iter()
            .find(|(f, _)| *f == self)
            .map_or("unknown", |(_, n)| n)
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Feature {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FEATURE_NAMES
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(f, _)| *f)
            .ok_or_else(|| format!("unknown sandbox feature `{s}`"))
    }
}

/// Whether one feature works on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureStatus {
    /// The feature.
    pub feature: Feature,
    /// Whether it works here.
    pub available: bool,
    /// What was found, e.g. `ABI 7` or why it is missing.
    pub detail: String,
}

/// Probes each feature for real (in short-lived child processes); never needs root.
pub fn check() -> Vec<FeatureStatus> {
    probe::check()
}

/// Why a run could not happen.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The spec is not valid; nothing was started.
    #[error("invalid sandbox spec: {0}")]
    InvalidSpec(String),
    /// A kernel feature is missing and the spec does not allow running without it.
    #[error("kernel feature {feature} is missing: {detail}")]
    FeatureMissing {
        /// The missing feature.
        feature: Feature,
        /// What failed.
        detail: String,
    },
    /// Setting the sandbox up failed; the command did not run.
    #[error("sandbox setup failed at {step}: {message}")]
    Setup {
        /// The step that failed, e.g. `bind` or `exec`.
        step: String,
        /// What went wrong.
        message: String,
    },
    /// The init program could not be started.
    #[error("cannot start the sandbox init program: {0}")]
    Spawn(std::io::Error),
    /// Talking to the init program failed.
    #[error("sandbox i/o failed: {0}")]
    Io(std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_names_round_trip() {
        for f in Feature::ALL {
            assert_eq!(f.to_string().parse::<Feature>(), Ok(f));
        }
        assert_eq!(Feature::Landlock.to_string(), "landlock");
        assert!("nonsense".parse::<Feature>().is_err());
    }

    #[test]
    fn sandbox_is_clone_send_sync() {
        fn assert_traits<T: Clone + Send + Sync>() {}
        assert_traits::<Sandbox>();
    }

    #[test]
    fn check_reports_every_feature_once() {
        let features: Vec<Feature> = check().into_iter().map(|s| s.feature).collect();
        assert_eq!(features, Feature::ALL);
    }
}
