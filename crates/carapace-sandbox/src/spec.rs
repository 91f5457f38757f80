//! What to run and how: the spec the caller resolves, and its validation into the form
//! the init process receives.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::SandboxError;
use crate::wire::{WireBind, WireLimits, WireSpec};

/// A fully resolved description of one sandboxed process.
#[derive(Clone)]
pub struct SandboxSpec {
    /// Program and arguments; a program without `/` is looked up in the `PATH` of `env`.
    pub argv: Vec<String>,
    /// The complete environment of the process; nothing else is passed.
    pub env: Vec<(String, String)>,
    /// Working directory, inside the sandbox.
    pub cwd: PathBuf,
    /// Host paths to show inside the sandbox.
    pub binds: Vec<Bind>,
    /// The network the process sees.
    pub network: Network,
    /// Resource limits.
    pub limits: Limits,
    /// Run even when a kernel feature is missing; the outcome lists what was missing.
    pub allow_degraded: bool,
}

/// Environment values may hold a secret meant for this one process: debug output shows
/// the names only.
impl fmt::Debug for SandboxSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("SandboxSpec")
            .field("argv", &self.argv)
            .field("env", &env)
            .field("cwd", &self.cwd)
            .field("binds", &self.binds)
            .field("network", &self.network)
            .field("limits", &self.limits)
            .field("allow_degraded", &self.allow_degraded)
            .finish()
    }
}

/// A host path shown inside the sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    /// Host path, absolute.
    pub src: PathBuf,
    /// Path inside the sandbox, absolute.
    pub dst: PathBuf,
    /// Whether the process may write through this bind.
    pub writable: bool,
}

/// The network a sandboxed process sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Network {
    /// Loopback only, in a network namespace of its own.
    None,
    /// Loopback, plus one Unix socket of the host shown at `inside`.
    UnixSocket {
        /// The socket's host path.
        host: PathBuf,
        /// Where the socket appears inside the sandbox.
        inside: PathBuf,
    },
}

/// Resource limits of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time after which the whole process tree is killed.
    pub wall_clock: Duration,
    /// CPU seconds per process (RLIMIT_CPU).
    pub cpu_seconds: u64,
    /// Address space per process in bytes (RLIMIT_AS).
    pub address_space_bytes: u64,
    /// Open files per process (RLIMIT_NOFILE).
    pub open_files: u64,
    /// Processes and threads of the sandbox together.
    pub processes: u64,
    /// Bytes kept of stdout and of stderr each; the rest is read and discarded.
    pub output_bytes: usize,
    /// Memory of the whole sandbox in bytes (a cgroup limit, where one can be set).
    pub memory_bytes: u64,
    /// Size of the private `/tmp` (and of `/dev/shm`) in bytes.
    pub tmp_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            wall_clock: Duration::from_secs(60),
            cpu_seconds: 60,
            address_space_bytes: 4 << 30,
            open_files: 1024,
            processes: 256,
            output_bytes: 1 << 20,
            memory_bytes: 1 << 30,
            tmp_bytes: 256 << 20,
        }
    }
}

/// Directories inside the sandbox that binds must not cover: the root itself and the
/// sandbox's own procfs.
fn forbidden_destination(dst: &Path) -> Option<&'static str> {
    if dst == Path::new("/") {
        Some("the root")
    } else if dst.starts_with("/proc") {
        Some("/proc")
    } else {
        None
    }
}

fn invalid(message: String) -> SandboxError {
    SandboxError::InvalidSpec(message)
}

/// A path as UTF-8 text with no NUL byte, absolute and without `.` or `..`.
fn checked_path(what: &str, path: &Path) -> Result<String, SandboxError> {
    let text = path
        .to_str()
        .ok_or_else(|| invalid(format!("{what} `{}` is not UTF-8", path.display())))?;
    if text.contains('\0') {
        return Err(invalid(format!(
            "{what} `{}` contains a NUL byte",
            path.display()
        )));
    }
    if !path.is_absolute() {
        return Err(invalid(format!("{what} `{text}` is not an absolute path")));
    }
    if path
        .components()
        .any(|c| matches!(c, Component::CurDir | Component::ParentDir))
    {
        return Err(invalid(format!("{what} `{text}` contains `.` or `..`")));
    }
    Ok(text.to_string())
}

/// A destination inside the sandbox: a checked path that no other mount owns.
fn checked_destination(what: &str, path: &Path) -> Result<String, SandboxError> {
    let text = checked_path(what, path)?;
    if let Some(reserved) = forbidden_destination(path) {
        return Err(invalid(format!(
            "{what} `{text}` would cover {reserved}, which the sandbox owns"
        )));
    }
    Ok(text)
}

/// Validates `spec` and returns the form the init process receives.
#[must_use = "the checked spec is what must be run"]
pub(crate) fn validate(spec: &SandboxSpec) -> Result<WireSpec, SandboxError> {
    if spec.argv.is_empty() || spec.argv[0].is_empty() {
        return Err(invalid("argv is empty".into()));
    }
    if let Some(arg) = spec.argv.iter().find(|a| a.contains('\0')) {
        return Err(invalid(format!(
            "argument `{}` contains a NUL byte",
            arg.replace('\0', "\\0")
        )));
    }
    for (key, value) in &spec.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(invalid(format!(
                "environment variable name `{}` is empty or contains `=` or a NUL byte",
                key.replace('\0', "\\0")
            )));
        }
        if value.contains('\0') {
            return Err(invalid(format!(
                "the value of environment variable `{key}` contains a NUL byte"
            )));
        }
    }
    let cwd = checked_path("working directory", &spec.cwd)?;

    let mut binds = Vec::with_capacity(spec.binds.len());
    for bind in &spec.binds {
        let src = checked_path("bind source", &bind.src)?;
        let dst = checked_destination("bind destination", &bind.dst)?;
        if let Err(e) = std::fs::metadata(&bind.src) {
            return Err(invalid(format!("bind source `{src}` cannot be used: {e}")));
        }
        if binds.iter().any(|b: &WireBind| b.dst == dst) {
            return Err(invalid(format!("two binds have the destination `{dst}`")));
        }
        binds.push(WireBind {
            src,
            dst,
            writable: bind.writable,
        });
    }
    let socket = match &spec.network {
        Network::None => None,
        Network::UnixSocket { host, inside } => {
            let host_text = checked_path("socket", host)?;
            let inside_text = checked_destination("socket destination", inside)?;
            match std::fs::metadata(host) {
                Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {}
                Ok(_) => return Err(invalid(format!("`{host_text}` is not a Unix socket"))),
                Err(e) => {
                    return Err(invalid(format!("socket `{host_text}` cannot be used: {e}")));
                }
            }
            if binds.iter().any(|b| b.dst == inside_text) {
                return Err(invalid(format!(
                    "the socket destination `{inside_text}` is also a bind destination"
                )));
            }
            Some((host_text, inside_text))
        }
    };

    let l = &spec.limits;
    for (name, value) in [
        ("cpu_seconds", l.cpu_seconds),
        ("address_space_bytes", l.address_space_bytes),
        ("open_files", l.open_files),
        ("processes", l.processes),
        ("memory_bytes", l.memory_bytes),
        ("tmp_bytes", l.tmp_bytes),
    ] {
        if value == 0 {
            return Err(invalid(format!("limit {name} is 0")));
        }
    }
    if l.wall_clock.is_zero() {
        return Err(invalid("limit wall_clock is 0".into()));
    }

    Ok(WireSpec {
        version: crate::wire::WIRE_VERSION,
        argv: spec.argv.clone(),
        env: spec.env.clone(),
        cwd,
        binds,
        socket,
        limits: WireLimits {
            cpu_seconds: l.cpu_seconds,
            address_space_bytes: l.address_space_bytes,
            open_files: l.open_files,
            processes: l.processes,
            tmp_bytes: l.tmp_bytes,
        },
        allow_degraded: spec.allow_degraded,
        caller_pid: std::process::id(),
        cgroup: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SandboxSpec {
        SandboxSpec {
            argv: vec!["/bin/true".into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: "/tmp".into(),
            binds: vec![Bind {
                src: std::env::temp_dir(),
                dst: "/work".into(),
                writable: true,
            }],
            network: Network::None,
            limits: Limits::default(),
            allow_degraded: false,
        }
    }

    /// Applies `change` to a valid spec and returns the validation error's message.
    fn check(change: impl FnOnce(&mut SandboxSpec)) -> String {
        let mut s = spec();
        change(&mut s);
        match validate(&s) {
            Ok(_) => "ok".into(),
            Err(SandboxError::InvalidSpec(m)) => m,
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn a_plain_spec_is_valid() {
        assert_eq!(check(|_| {}), "ok");
        let wire = validate(&spec()).unwrap();
        assert_eq!(wire.binds[0].dst, "/work");
        assert_eq!(wire.caller_pid, std::process::id());
    }

    #[test]
    fn invalid_specs_say_what_is_wrong() {
        type Case = (Box<dyn FnOnce(&mut SandboxSpec)>, &'static str);
        let cases: Vec<Case> = vec![
            (Box::new(|s| s.argv.clear()), "argv is empty"),
            (Box::new(|s| s.argv = vec![String::new()]), "argv is empty"),
            (
                Box::new(|s| s.argv.push("a\0b".into())),
                "argument `a\\0b` contains a NUL byte",
            ),
            (
                Box::new(|s| s.env.push(("A=B".into(), "x".into()))),
                "environment variable name `A=B` is empty or contains `=` or a NUL byte",
            ),
            (
                Box::new(|s| s.env.push((String::new(), "x".into()))),
                "environment variable name `` is empty or contains `=` or a NUL byte",
            ),
            (
                Box::new(|s| s.env.push(("K".into(), "x\0".into()))),
                "the value of environment variable `K` contains a NUL byte",
            ),
            (
                Box::new(|s| s.cwd = "work".into()),
                "working directory `work` is not an absolute path",
            ),
            (
                Box::new(|s| s.binds[0].src = "relative".into()),
                "bind source `relative` is not an absolute path",
            ),
            (
                Box::new(|s| s.binds[0].dst = "/".into()),
                "bind destination `/` would cover the root, which the sandbox owns",
            ),
            (
                Box::new(|s| s.binds[0].dst = "/proc".into()),
                "bind destination `/proc` would cover /proc, which the sandbox owns",
            ),
            (
                Box::new(|s| s.binds[0].dst = "/proc/self".into()),
                "bind destination `/proc/self` would cover /proc, which the sandbox owns",
            ),
            (
                Box::new(|s| s.binds[0].dst = "/work/../etc".into()),
                "bind destination `/work/../etc` contains `.` or `..`",
            ),
            (
                Box::new(|s| s.binds[0].src = "/nonexistent/carapace".into()),
                "bind source `/nonexistent/carapace` cannot be used: No such file or directory (os error 2)",
            ),
            (
                Box::new(|s| {
                    let b = s.binds[0].clone();
                    s.binds.push(b)
                }),
                "two binds have the destination `/work`",
            ),
            (
                Box::new(|s| {
                    s.network = Network::UnixSocket {
                        host: std::env::temp_dir(),
                        inside: "/run/cara.sock".into(),
                    }
                }),
                "is not a Unix socket",
            ),
            (Box::new(|s| s.limits.processes = 0), "limit processes is 0"),
            (Box::new(|s| s.limits.tmp_bytes = 0), "limit tmp_bytes is 0"),
            (
                Box::new(|s| s.limits.wall_clock = Duration::ZERO),
                "limit wall_clock is 0",
            ),
        ];
        for (change, expected) in cases {
            let got = check(change);
            assert!(
                got.ends_with(expected),
                "got `{got}`, expected `{expected}`"
            );
        }
    }

    #[test]
    fn debug_output_hides_environment_values() {
        let mut s = spec();
        s.env.push(("TOKEN".into(), "very-secret-value".into()));
        let shown = format!("{s:?}");
        assert!(shown.contains("TOKEN"), "{shown}");
        assert!(!shown.contains("very-secret-value"), "{shown}");
    }
}
