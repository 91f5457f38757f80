//! The init program: three processes between the caller and the command.
//!
//! - The **outer** process (the init program itself, single-threaded) reads the spec,
//!   joins the cgroup, creates the namespaces, maps uid/gid 1000 to its own ids and
//!   forks PID 1. It waits for PID 1 and ends as the command ended. At the deadline the
//!   caller sends it SIGTERM, on which it kills PID 1 and waits until PID 1 (and so the
//!   whole namespace) is gone. If it dies instead (SIGKILL, a dropped run, a dead
//!   caller), PID 1's parent-death signal takes the namespace down.
//! - **PID 1** of the new PID namespace forks the command, builds the root, brings up
//!   loopback and reaps everything. When the command ends it reports the status to the
//!   outer process and exits, which kills whatever the command left behind.
//! - The **command** process sets rlimits, drops its capability bounding set, sets
//!   no_new_privs and installs its seccomp filter while PID 1 builds the root; then it
//!   moves to the working directory, restricts itself with Landlock and execs.
//!
//! Setup errors go to the caller as JSON lines on the channel (close-on-exec in the
//! command), so EOF after a `started` line means the command was executed.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use crate::landlock_rules::{self, Enforced};
use crate::mounts;
use crate::seccomp;
use crate::sys::{self, Forked};
use crate::wire::{CHANNEL_ARG, Report, WIRE_VERSION, WireSpec};
use crate::{Feature, INSIDE_GID, INSIDE_UID};

/// Exit code of the init program when setup failed (the report says why).
const SETUP_FAILED: i32 = 125;

/// Why setup stopped.
#[derive(Debug)]
pub(crate) struct Fail {
    step: String,
    message: String,
    feature: Option<Feature>,
}

impl Fail {
    pub(crate) fn setup(step: &str, message: String) -> Fail {
        Fail {
            step: step.to_string(),
            message,
            feature: None,
        }
    }

    fn missing(feature: Feature, step: &str, message: String) -> Fail {
        Fail {
            step: step.to_string(),
            message,
            feature: Some(feature),
        }
    }
}

/// The channel to the caller, while this process holds it.
struct Reporter {
    pipe: Option<File>,
    allow_degraded: bool,
}

impl Reporter {
    fn send(&mut self, report: &Report) {
        if let Some(pipe) = &mut self.pipe {
            // One short line per write is atomic on a pipe; if the caller is gone there
            // is nobody to tell.
            let _ = pipe.write_all(&report.to_line());
        }
    }

    /// A feature is missing: fine if the spec allows degraded runs (reported), an error
    /// otherwise.
    fn missing(&mut self, feature: Feature, step: &str, message: String) -> Result<(), Fail> {
        if self.allow_degraded {
            self.degraded(feature);
            Ok(())
        } else {
            Err(Fail::missing(feature, step, message))
        }
    }

    fn degraded(&mut self, feature: Feature) {
        self.send(&Report::Degraded {
            feature: feature.to_string(),
        });
    }

    fn fail(&mut self, fail: Fail) -> ! {
        self.send(&Report::Error {
            step: fail.step,
            message: fail.message,
            feature: fail.feature.map(|f| f.to_string()),
        });
        sys::exit(SETUP_FAILED)
    }

    /// Drops this process's copy of the channel, so the caller sees EOF once the
    /// command has executed.
    fn close(&mut self) {
        self.pipe = None;
    }
}

/// The init entry point. The program named by [`crate::InitProgram`] must call this as
/// the very first thing in `main` when its first argument is [`crate::INIT_ARG`],
/// before any thread starts.
pub fn init_main() -> ! {
    // Panics become setup errors on the channel instead of text on the command's stderr.
    std::panic::set_hook(Box::new(|_| {}));
    let mut reporter = Reporter {
        pipe: None,
        allow_degraded: false,
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| outer(&mut reporter)));
    let fail = match result {
        Ok(Ok(never)) => match never {},
        Ok(Err(fail)) => fail,
        Err(panic) => Fail::setup("init", panic_message(panic)),
    };
    reporter.fail(fail)
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("the init process panicked: {text}")
}

/// The layout the command sees.
enum Layout {
    /// Namespaces and the sandbox's own root.
    Isolated,
    /// A degraded run without namespaces: host paths, Landlock only.
    Host,
}

/// Takes the channel named by the last argument and closes every other inherited
/// descriptor above the standard ones (nothing the caller leaked without close-on-exec
/// reaches the sandbox). On descriptor 0 the channel moves up and stdin becomes
/// `/dev/null`.
fn open_channel() -> Result<File, Fail> {
    let fail = |m: String| Fail::setup("channel", m);
    let fd: RawFd = std::env::args()
        .next_back()
        .and_then(|a| a.strip_prefix(CHANNEL_ARG).and_then(|n| n.parse().ok()))
        .ok_or_else(|| {
            fail("no channel argument; the init program is started by Sandbox::run".into())
        })?;
    sys::close_from(fd.max(2) + 1, false).map_err(|e| fail(e.to_string()))?;
    let inherited =
        sys::inherited_fd(fd).ok_or_else(|| fail(format!("descriptor {fd} is not open")))?;
    if fd != 0 {
        sys::set_cloexec(fd).map_err(|e| fail(e.to_string()))?;
        return Ok(File::from(inherited));
    }
    let moved = sys::dup_at_least(0, 3).map_err(|e| fail(e.to_string()))?;
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| fail(format!("/dev/null: {e}")))?;
    sys::dup2_raw(null.as_raw_fd(), 0).map_err(|e| fail(e.to_string()))?;
    // Descriptor 0 is /dev/null now, not the channel: it must stay open.
    let _ = inherited.into_raw_fd();
    Ok(File::from(moved))
}

fn read_spec(channel: &mut File) -> Result<WireSpec, Fail> {
    let mut bytes = Vec::new();
    channel
        .read_to_end(&mut bytes)
        .map_err(|e| Fail::setup("spec", e.to_string()))?;
    parse_spec(&bytes)
}

fn parse_spec(bytes: &[u8]) -> Result<WireSpec, Fail> {
    // The version first, so a spec of another build is named as such.
    let version = serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("version").and_then(serde_json::Value::as_u64));
    if version != Some(u64::from(WIRE_VERSION)) {
        return Err(Fail::setup(
            "spec",
            format!(
                "this init program speaks wire version {WIRE_VERSION}, the caller sent {}: \
                 install the init program from the same build as its caller",
                version.map_or("none".to_string(), |v| v.to_string())
            ),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| Fail::setup("spec", e.to_string()))
}

enum Never {}

fn outer(reporter: &mut Reporter) -> Result<Never, Fail> {
    let mut channel = open_channel()?;
    let spec = read_spec(&mut channel)?;
    reporter.pipe = Some(channel);
    reporter.allow_degraded = spec.allow_degraded;
    // Die with the caller; if it is already gone, stop here.
    sys::set_parent_death_signal(libc::SIGKILL)
        .map_err(|e| Fail::setup("parent death signal", e.to_string()))?;
    if sys::getppid() as u32 != spec.caller_pid {
        sys::exit(SETUP_FAILED);
    }
    let _ = sys::setrlimit(libc::RLIMIT_CORE, 0, 0);

    if let Some(dir) = &spec.cgroup
        && std::fs::write(Path::new(dir).join("cgroup.procs"), "0").is_err()
    {
        reporter.degraded(Feature::Cgroup);
    }

    let (uid, gid) = sys::ids();
    if uid == 0 {
        // Root's supplementary groups would keep their file access inside.
        let _ = sys::clear_groups();
    }
    let layout = enter_namespaces(&spec, reporter, uid, gid)?;
    if matches!(layout, Layout::Host) && uid == 0 && !can_drop_root() {
        return Err(Fail::missing(
            Feature::UserNamespace,
            "namespaces",
            "running as root without a user namespace, and the capabilities cannot be dropped"
                .into(),
        ));
    }

    let (lifeline_r, lifeline_w) = sys::pipe().map_err(|e| Fail::setup("pipe", e.to_string()))?;
    let (status_r, status_w) = sys::pipe().map_err(|e| Fail::setup("pipe", e.to_string()))?;
    // SAFETY: the init program is single-threaded (init_main runs before any thread
    // starts), so the child may do anything.
    match unsafe { sys::fork() }.map_err(|e| Fail::setup("fork", e.to_string()))? {
        Forked::Child => {
            drop(lifeline_w);
            drop(status_r);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pid1(&spec, reporter, &layout, lifeline_r, status_w)
            }));
            let fail = match result {
                Ok(Ok(never)) => match never {},
                Ok(Err(fail)) => fail,
                Err(panic) => Fail::setup("init", panic_message(panic)),
            };
            reporter.fail(fail)
        }
        Forked::Parent(pid1) => {
            drop(status_w);
            drop(lifeline_r);
            // The caller's SIGTERM (its deadline) kills PID 1, which takes the whole
            // namespace with it; this process ends only once all of it is gone.
            sys::kill_on_term(pid1).map_err(|e| Fail::setup("signals", e.to_string()))?;
            reporter.close();
            let (_, status) = sys::waitpid(pid1).map_err(|e| Fail::setup("wait", e.to_string()))?;
            let mut raw = [0u8; 4];
            let command_status = match File::from(status_r).read_exact(&mut raw) {
                Ok(()) => i32::from_ne_bytes(raw),
                // PID 1 died without a word (killed): report its own end.
                Err(_) => status,
            };
            // `lifeline_w` stays open until this process ends, so PID 1 can tell it is
            // still there.
            end_like(command_status)
        }
    }
}

/// Ends this process the way a process with wait status `status` ended.
fn end_like(status: i32) -> ! {
    if libc::WIFSIGNALED(status) {
        sys::die_by_signal(libc::WTERMSIG(status))
    }
    sys::exit(libc::WEXITSTATUS(status))
}

/// Whether a root process without a user namespace can give up its capabilities for
/// good (CAP_SETPCAP, to empty the bounding set).
fn can_drop_root() -> bool {
    const CAP_SETPCAP: libc::c_int = 8;
    sys::in_bounding_set(CAP_SETPCAP)
}

const NAMESPACES: &[(Feature, libc::c_int)] = &[
    (Feature::MountNamespace, libc::CLONE_NEWNS),
    (Feature::PidNamespace, libc::CLONE_NEWPID),
    (Feature::NetworkNamespace, libc::CLONE_NEWNET),
    (Feature::IpcNamespace, libc::CLONE_NEWIPC),
    (Feature::UtsNamespace, libc::CLONE_NEWUTS),
];

/// Creates every namespace in one call and maps uid/gid 1000 inside to this process's
/// ids. If that fails, names the missing namespace; with `allow_degraded` the run goes
/// on without namespaces.
fn enter_namespaces(
    spec: &WireSpec,
    reporter: &mut Reporter,
    uid: libc::uid_t,
    gid: libc::gid_t,
) -> Result<Layout, Fail> {
    let all = NAMESPACES
        .iter()
        .fold(libc::CLONE_NEWUSER, |acc, (_, flag)| acc | flag);
    if let Err(e) = sys::unshare(all) {
        let hint = if e.raw_os_error() == Some(libc::EINVAL) {
            " (init_main must run before any thread starts)"
        } else {
            ""
        };
        // Which one is missing: each probed in a child of this single-threaded process.
        let mut missing = Vec::new();
        if sys::probe_in_child(libc::CLONE_NEWUSER).map_or(true, |errno| errno != 0) {
            missing.push(Feature::UserNamespace);
        }
        for (feature, flag) in NAMESPACES {
            if sys::probe_in_child(libc::CLONE_NEWUSER | flag).map_or(true, |errno| errno != 0) {
                missing.push(*feature);
            }
        }
        if missing.is_empty() {
            missing.push(Feature::UserNamespace);
        }
        let message = format!("unshare: {e}{hint}");
        if !spec.allow_degraded {
            return Err(Fail::missing(missing[0], "namespaces", message));
        }
        // All or nothing: without every namespace the run uses host paths.
        reporter.degraded(Feature::UserNamespace);
        for (feature, _) in NAMESPACES {
            reporter.degraded(*feature);
        }
        return Ok(Layout::Host);
    }
    let map = |file: &str, contents: String| {
        std::fs::write(file, contents).map_err(|e| Fail::setup("id maps", format!("{file}: {e}")))
    };
    map("/proc/self/setgroups", "deny".into())?;
    map("/proc/self/uid_map", format!("{INSIDE_UID} {uid} 1\n"))?;
    map("/proc/self/gid_map", format!("{INSIDE_GID} {gid} 1\n"))?;
    Ok(Layout::Isolated)
}

fn pid1(
    spec: &WireSpec,
    reporter: &mut Reporter,
    layout: &Layout,
    lifeline: OwnedFd,
    status: OwnedFd,
) -> Result<Never, Fail> {
    sys::set_parent_death_signal(libc::SIGKILL)
        .map_err(|e| Fail::setup("parent death signal", e.to_string()))?;
    // The outer process may have died before the signal was set.
    if sys::hung_up(lifeline.as_raw_fd()) {
        sys::exit(SETUP_FAILED);
    }
    drop(lifeline);

    // The command is forked first and prepares itself while this process builds the
    // root: they share the mount namespace, so pivot_root moves both. A byte on `ready`
    // says the root is done; EOF without one, that setup failed (and was reported).
    let (ready_r, ready_w) = sys::pipe().map_err(|e| Fail::setup("pipe", e.to_string()))?;
    // SAFETY: this process is single-threaded (a fork of the single-threaded init).
    match unsafe { sys::fork() }.map_err(|e| Fail::setup("fork", e.to_string()))? {
        Forked::Child => {
            drop(status);
            drop(ready_w);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                command(spec, reporter, layout, ready_r)
            }));
            let fail = match result {
                Ok(Ok(never)) => match never {},
                Ok(Err(fail)) => fail,
                Err(panic) => Fail::setup("init", panic_message(panic)),
            };
            reporter.fail(fail)
        }
        Forked::Parent(command) => {
            drop(ready_r);
            if let Err(fail) = prepare(spec, reporter, layout) {
                sys::kill(command);
                reporter.fail(fail);
            }
            // The command may be gone already (it reported why); reaping tells.
            let _ = File::from(ready_w).write_all(b"r");
            reporter.close();
            reap(command, layout, status)
        }
    }
}

/// PID 1's part of the setup: the root, loopback and host name (or, without
/// namespaces, becoming the subreaper of the command's orphans).
fn prepare(spec: &WireSpec, reporter: &mut Reporter, layout: &Layout) -> Result<(), Fail> {
    match layout {
        Layout::Isolated => {
            let built = mounts::build(spec)?;
            if !built.pid_max_set && sys::ids().0 == 0 {
                // The caller's kernel uid is 0 (the mapping of uid 1000): RLIMIT_NPROC
                // does not apply to it, and nothing else caps the process count.
                no_process_cap(reporter)?;
            }
            sys::loopback_up().map_err(|e| Fail::setup("loopback", e.to_string()))?;
            sys::sethostname(mounts::HOSTNAME)
                .map_err(|e| Fail::setup("hostname", e.to_string()))?;
        }
        Layout::Host => {
            let _ = sys::set_child_subreaper();
            if sys::ids().0 == 0 {
                no_process_cap(reporter)?;
            }
        }
    }
    Ok(())
}

fn no_process_cap(reporter: &mut Reporter) -> Result<(), Fail> {
    reporter.missing(
        Feature::Rlimits,
        "process limit",
        "the caller runs as root, so RLIMIT_NPROC does not apply, and the kernel has no \
         per-namespace pid_max (Linux 6.14) to cap the process count"
            .into(),
    )
}

/// Reaps children until the command ends, then reports its status and exits (as PID 1,
/// which kills everything left in the namespace).
fn reap(command: libc::pid_t, layout: &Layout, status: OwnedFd) -> Result<Never, Fail> {
    let command_status = loop {
        match sys::waitpid(-1) {
            Ok((pid, st)) if pid == command => break st,
            Ok(_) => {}
            Err(e) => return Err(Fail::setup("wait", e.to_string())),
        }
    };
    if matches!(layout, Layout::Host) {
        kill_descendants(command);
    }
    let _ = File::from(status).write_all(&command_status.to_ne_bytes());
    sys::exit(0)
}

/// Without a PID namespace: kill what the command left behind (its process group, and
/// every orphan this subreaper inherited), best effort.
fn kill_descendants(command: libc::pid_t) {
    sys::kill(-command);
    for _ in 0..100 {
        let children =
            std::fs::read_to_string(format!("/proc/self/task/{}/children", std::process::id()))
                .unwrap_or_default();
        let pids: Vec<libc::pid_t> = children
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            sys::kill(pid);
            let _ = sys::waitpid(pid);
        }
    }
}

fn command(
    spec: &WireSpec,
    reporter: &mut Reporter,
    layout: &Layout,
    ready: OwnedFd,
) -> Result<Never, Fail> {
    // What does not need the new root, done while PID 1 builds it: the process's own
    // limits, capabilities, no_new_privs and seccomp filter.
    sys::setsid().map_err(|e| Fail::setup("setsid", e.to_string()))?;
    sys::reset_signals();
    sys::umask(0o022);
    set_rlimits(spec, reporter)?;
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()
        .map_err(|e| Fail::setup("argv", e.to_string()))?;
    let env: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")))
        .collect::<Result<_, _>>()
        .map_err(|e| Fail::setup("env", e.to_string()))?;
    // No capability can come back through a later execve.
    if let Err(e) = sys::drop_bounding_set() {
        // An ordinary user without a user namespace holds no capability to drop.
        let unprivileged_host = matches!(layout, Layout::Host) && sys::ids().0 != 0;
        if !unprivileged_host {
            return Err(Fail::setup("capabilities", e.to_string()));
        }
    }
    let _ = sys::clear_ambient_capabilities();
    if let Err(e) = sys::set_no_new_privs() {
        reporter.missing(Feature::NoNewPrivs, "no_new_privs", e.to_string())?;
    }
    // Nothing this process still does needs a system call the filter denies.
    if sys::seccomp_filter_supported() {
        let filter = seccomp::program().map_err(|e| Fail::setup("seccomp", e))?;
        seccomp::install(&filter).map_err(|e| Fail::setup("seccomp", e))?;
    } else {
        reporter.missing(
            Feature::Seccomp,
            "seccomp",
            "the kernel has no seccomp filters".into(),
        )?;
    }
    let (rules, cwd) = match layout {
        Layout::Isolated => (mounts::rules(spec), PathBuf::from(&spec.cwd)),
        Layout::Host => (mounts::host_rules(spec), mounts::to_host(spec, &spec.cwd)),
    };

    let mut byte = [0u8; 1];
    if !matches!(File::from(ready).read(&mut byte), Ok(1)) {
        // PID 1's setup failed; it reports why.
        sys::exit(SETUP_FAILED);
    }

    std::env::set_current_dir(&cwd)
        .map_err(|e| Fail::setup("chdir", format!("{}: {e}", cwd.display())))?;
    let program = resolve(&spec.argv[0], &spec.env)?;
    let deny_tcp = matches!(layout, Layout::Host);
    match landlock_rules::restrict(&rules, deny_tcp) {
        Ok(Enforced::Fully | Enforced::Partially) => {}
        Ok(Enforced::Not) => reporter.missing(
            Feature::Landlock,
            "landlock",
            "the kernel does not enforce Landlock".into(),
        )?,
        Err(e) => return Err(Fail::setup("landlock", e)),
    }

    sys::close_from(3, true).map_err(|e| Fail::setup("descriptors", e.to_string()))?;
    reporter.send(&Report::Started);
    let err = sys::execve(&program, &argv, &env);
    Err(Fail::setup(
        "exec",
        format!("cannot execute {}: {err}", spec.argv[0]),
    ))
}

fn set_rlimits(spec: &WireSpec, reporter: &mut Reporter) -> Result<(), Fail> {
    let l = &spec.limits;
    // RLIMIT_NPROC counts this user's processes in the sandbox's user namespace, where
    // the outer init and PID 1 live too.
    let limits = [
        (
            libc::RLIMIT_CPU,
            l.cpu_seconds,
            l.cpu_seconds.saturating_add(1),
        ),
        (
            libc::RLIMIT_AS,
            l.address_space_bytes,
            l.address_space_bytes,
        ),
        (libc::RLIMIT_NOFILE, l.open_files, l.open_files),
        (
            libc::RLIMIT_NPROC,
            l.processes.saturating_add(2),
            l.processes.saturating_add(2),
        ),
        (libc::RLIMIT_CORE, 0, 0),
    ];
    for (resource, soft, hard) in limits {
        // Without CAP_SYS_RESOURCE a hard limit can only go down.
        let ceiling = sys::hard_rlimit(resource).unwrap_or(u64::MAX);
        let (soft, hard) = (soft.min(ceiling), hard.min(ceiling));
        if let Err(e) = sys::setrlimit(resource, soft, hard) {
            reporter.missing(Feature::Rlimits, "rlimits", e.to_string())?;
        }
    }
    Ok(())
}

/// The program to execute: `name` itself if it has a `/`, else the first executable
/// match in the `PATH` of the spec's environment (or `/usr/bin:/bin`).
fn resolve(name: &str, env: &[(String, String)]) -> Result<CString, Fail> {
    let not_found = || Fail::setup("exec", format!("cannot execute {name}: not found in PATH"));
    if name.contains('/') {
        return CString::new(name).map_err(|e| Fail::setup("exec", e.to_string()));
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or("/usr/bin:/bin", |(_, v)| v.as_str());
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = CString::new(format!("{dir}/{name}")).map_err(|_| not_found())?;
        if sys::is_executable(&candidate)
            && std::fs::metadata(Path::new(dir).join(name)).is_ok_and(|m| m.is_file())
        {
            return Ok(candidate);
        }
    }
    Err(not_found())
}

#[cfg(test)]
mod tests {
    use super::parse_spec;

    #[test]
    fn a_spec_from_another_build_is_refused_by_name() {
        let ours = format!(
            r#"{{"version":{},"argv":["/bin/true"],"env":[],"cwd":"/","binds":[],"socket":null,"limits":{{"cpu_seconds":1,"address_space_bytes":1,"open_files":1,"processes":1,"tmp_bytes":1}},"allow_degraded":false,"caller_pid":1,"cgroup":null}}"#,
            super::WIRE_VERSION
        );
        assert!(parse_spec(ours.as_bytes()).is_ok());
        for (other, sent) in [
            (ours.replacen("\"version\":1", "\"version\":2", 1), "2"),
            (ours.replacen("\"version\":1,", "", 1), "none"),
        ] {
            let fail = parse_spec(other.as_bytes()).expect_err("refused");
            assert_eq!(fail.step, "spec");
            assert!(
                fail.message.contains(&format!("the caller sent {sent}")),
                "{}",
                fail.message
            );
        }
    }
}
