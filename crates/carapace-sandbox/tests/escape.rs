//! The escape suite: each case is a real attempt from inside a sandbox that must fail,
//! asserting on what a wrong implementation would let through, plus the positive cases
//! a sandbox must still allow.
//!
//! Switched on by `CARAPACE_TEST_SANDBOX=1` (it needs user namespaces). Every case runs
//! as the current user through the library, and, when the tests run as root, again as
//! an ordinary user (`carapace-sbtest`, created if missing) through the init program's
//! `run` CLI.

use std::collections::BTreeSet;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use carapace_sandbox::{
    Bind, Exit, Feature, INIT_ARG, InitProgram, Limits, Network, Sandbox, SandboxError, SandboxSpec,
};
use tempfile::TempDir;

const INIT: &str = env!("CARGO_BIN_EXE_carapace-sandbox-init");
const TEST_USER: &str = "carapace-sbtest";

fn enabled() -> bool {
    let on = std::env::var_os("CARAPACE_TEST_SANDBOX").is_some_and(|v| v == "1");
    if !on {
        eprintln!("skipped: set CARAPACE_TEST_SANDBOX=1 to run the sandbox escape suite");
    }
    on
}

/// The cases watch host-wide state (process counts, /proc), so they run one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn euid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    nanos * 1000 + N.fetch_add(1, Ordering::Relaxed)
}

/// One sandboxed command.
#[derive(Clone)]
struct Case {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: String,
    binds: Vec<Bind>,
    network: Network,
    limits: Limits,
}

impl Case {
    fn argv(argv: &[&str]) -> Case {
        Case {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![
                ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
                ("HOME".into(), "/tmp".into()),
                ("LANG".into(), "C.UTF-8".into()),
            ],
            cwd: "/tmp".into(),
            binds: Vec::new(),
            network: Network::None,
            limits: Limits {
                wall_clock: Duration::from_secs(30),
                ..Limits::default()
            },
        }
    }

    fn sh(script: &str) -> Case {
        Case::argv(&["/bin/sh", "-c", script])
    }

    /// Binds `ws` read-write at /work and starts there.
    fn workspace(mut self, ws: &Path) -> Case {
        self.binds.push(Bind {
            src: ws.to_path_buf(),
            dst: "/work".into(),
            writable: true,
        });
        self.cwd = "/work".into();
        self
    }

    fn env(mut self, key: &str, value: &str) -> Case {
        self.env.push((key.into(), value.into()));
        self
    }

    fn limits(mut self, change: impl FnOnce(&mut Limits)) -> Case {
        change(&mut self.limits);
        self
    }

    fn spec(&self) -> SandboxSpec {
        SandboxSpec {
            argv: self.argv.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone().into(),
            binds: self.binds.clone(),
            network: self.network.clone(),
            limits: self.limits.clone(),
            allow_degraded: false,
        }
    }
}

/// What a case produced.
#[derive(Debug)]
struct Ran {
    exit: Exit,
    stdout: String,
    stderr: String,
    stdout_truncated: bool,
    duration: Duration,
    degraded: Vec<String>,
}

enum Kind {
    /// The library, as the user running the tests.
    CurrentUser(Sandbox),
    /// The init program's CLI, as an ordinary user.
    OtherUser {
        init: PathBuf,
        uid: u32,
        gid: u32,
        _dir: TempDir,
    },
}

struct Runner {
    kind: Kind,
    rt: tokio::runtime::Runtime,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn library_sandbox() -> Sandbox {
    Sandbox::new(InitProgram {
        program: INIT.into(),
        args: vec![INIT_ARG.into()],
    })
}

/// The runners: the current user, and the test user when running as root. `None` when
/// the suite is switched off.
fn runners() -> Option<Vec<Runner>> {
    if !enabled() {
        return None;
    }
    let mut out = vec![Runner {
        kind: Kind::CurrentUser(library_sandbox()),
        rt: runtime(),
    }];
    if euid() == 0 {
        out.push(other_user());
    }
    Some(out)
}

fn id_of(flag: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, TEST_USER]).output().ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

fn other_user() -> Runner {
    if id_of("-u").is_none() {
        let status = Command::new("useradd")
            .args(["--system", "--no-create-home", TEST_USER])
            .status()
            .expect("useradd");
        assert!(status.success(), "useradd {TEST_USER} failed");
    }
    let (uid, gid) = (id_of("-u").unwrap(), id_of("-g").unwrap());
    // The target directory is under root's home (0700): give the user a copy.
    let dir = TempDir::new().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let init = dir.path().join("carapace-sandbox-init");
    std::fs::copy(INIT, &init).unwrap();
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
    Runner {
        kind: Kind::OtherUser {
            init,
            uid,
            gid,
            _dir: dir,
        },
        rt: runtime(),
    }
}

impl Runner {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::CurrentUser(_) => "current user",
            Kind::OtherUser { .. } => TEST_USER,
        }
    }

    /// The kernel uid the sandboxed process has outside.
    fn outer_uid(&self) -> u32 {
        match self.kind {
            Kind::CurrentUser(_) => euid(),
            Kind::OtherUser { uid, .. } => uid,
        }
    }

    /// A fresh directory the sandbox's user owns (for a workspace).
    fn owned_dir(&self) -> TempDir {
        let dir = TempDir::new().unwrap();
        if let Kind::OtherUser { uid, gid, .. } = self.kind {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        dir
    }

    /// Makes `path` the sandbox user's (a no-op for the current user).
    fn give(&self, path: &Path) {
        if let Kind::OtherUser { uid, gid, .. } = self.kind {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
        }
    }

    fn run(&self, case: &Case) -> Ran {
        match &self.kind {
            Kind::CurrentUser(sandbox) => {
                let outcome = self
                    .rt
                    .block_on(sandbox.run(&case.spec()))
                    .unwrap_or_else(|e| panic!("run failed: {e}"));
                Ran {
                    exit: outcome.exit,
                    stdout: String::from_utf8_lossy(&outcome.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&outcome.stderr).into_owned(),
                    stdout_truncated: outcome.stdout_truncated,
                    duration: outcome.duration,
                    degraded: outcome.degraded.iter().map(|f| f.to_string()).collect(),
                }
            }
            Kind::OtherUser { init, uid, gid, .. } => run_cli(init, *uid, *gid, case),
        }
    }
}

fn run_cli(init: &Path, uid: u32, gid: u32, case: &Case) -> Ran {
    let mut cmd = Command::new(init);
    cmd.arg("run")
        .env_clear()
        .uid(uid)
        .gid(gid)
        .current_dir("/");
    for b in &case.binds {
        let ro = if b.writable { "" } else { ":ro" };
        cmd.arg("--bind")
            .arg(format!("{}:{}{ro}", b.src.display(), b.dst.display()));
    }
    if let Network::UnixSocket { host, inside } = &case.network {
        cmd.arg("--socket")
            .arg(format!("{}:{}", host.display(), inside.display()));
    }
    cmd.args(["--cwd", &case.cwd]);
    for (k, v) in &case.env {
        cmd.arg("--env").arg(format!("{k}={v}"));
    }
    let l = &case.limits;
    for (flag, value) in [
        ("--wall-ms", l.wall_clock.as_millis() as u64),
        ("--cpu", l.cpu_seconds),
        ("--as-bytes", l.address_space_bytes),
        ("--open-files", l.open_files),
        ("--processes", l.processes),
        ("--output-bytes", l.output_bytes as u64),
        ("--tmp-bytes", l.tmp_bytes),
    ] {
        cmd.arg(flag).arg(value.to_string());
    }
    cmd.arg("--").args(&case.argv);
    let start = Instant::now();
    let out = cmd.output().expect("start the init CLI");
    let duration = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr_all = String::from_utf8_lossy(&out.stderr).into_owned();
    let marker = "\ncarapace-sandbox-init: exit=";
    let Some(at) = stderr_all.rfind(marker) else {
        panic!("the CLI failed ({}): {stderr_all}", out.status);
    };
    let trailer = &stderr_all[at + 1..];
    let field = |name: &str| {
        trailer
            .split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .unwrap_or("")
            .to_string()
    };
    let exit = field("exit");
    let exit = if exit == "deadline" {
        Exit::Deadline
    } else if let Some(c) = exit.strip_prefix("code:") {
        Exit::Code(c.parse().unwrap())
    } else if let Some(s) = exit.strip_prefix("signal:") {
        Exit::Signal(s.parse().unwrap())
    } else {
        panic!("unexpected trailer {trailer}")
    };
    Ran {
        exit,
        stdout,
        stderr: stderr_all[..at].to_string(),
        stdout_truncated: field("stdout_truncated") == "true",
        duration,
        degraded: field("degraded")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    }
}

/// Runs `test` with every runner, one at a time.
fn each(test: impl Fn(&Runner)) {
    let Some(runners) = runners() else { return };
    let _guard = serial();
    for runner in &runners {
        eprintln!("-- as {}", runner.name());
        test(runner);
    }
}

/// Only the cgroup may be missing (this kernel may not delegate one).
fn assert_not_degraded(ran: &Ran) {
    let unexpected: Vec<&String> = ran.degraded.iter().filter(|f| *f != "cgroup").collect();
    assert!(unexpected.is_empty(), "degraded: {unexpected:?}");
}

/// A host process that sleeps with a marker in its environment; killed on drop.
struct HostProcess(std::process::Child);

impl HostProcess {
    fn start(env: &[(&str, &str)]) -> HostProcess {
        let mut cmd = Command::new("sleep");
        cmd.arg("60").stdout(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        HostProcess(cmd.spawn().unwrap())
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Host pids whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(marker)
        {
            found.push(pid);
        }
    }
    found
}

/// Waits up to two seconds for every process with `marker` to be gone.
fn assert_all_gone(marker: &str) {
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        let left = processes_with(marker);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < until,
            "processes with {marker} survived: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Host processes in a PID namespace other than the test's own (the sandboxes').
fn processes_in_other_pid_namespaces() -> usize {
    let own = std::fs::read_link("/proc/self/ns/pid").unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| std::fs::read_link(e.path().join("ns/pid")).is_ok_and(|ns| ns != own))
        .count()
}

/// Counts in a host thread while a sandbox runs, to show the host keeps making progress;
/// also samples the sandbox's process count.
struct HostWatch {
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
    handle: std::thread::JoinHandle<(usize, usize)>,
}

impl HostWatch {
    fn start() -> HostWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), progress.clone());
        let handle = std::thread::spawn(move || {
            let mut max_sandboxed = 0;
            let mut spawn_failures = 0;
            while !s.load(Ordering::Relaxed) {
                // The host can still start processes and get work done.
                match Command::new("true").status() {
                    Ok(st) if st.success() => {}
                    _ => spawn_failures += 1,
                }
                max_sandboxed = max_sandboxed.max(processes_in_other_pid_namespaces());
                p.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
            (max_sandboxed, spawn_failures)
        });
        HostWatch {
            stop,
            progress,
            handle,
        }
    }

    /// (progress ticks, most sandboxed processes seen, host spawn failures)
    fn finish(self) -> (u64, usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let (max, failures) = self.handle.join().unwrap();
        (self.progress.load(Ordering::Relaxed), max, failures)
    }
}

// ---------------------------------------------------------------------------------------
// What must work

#[test]
fn shell_python_and_common_tools_work_and_the_workspace_is_writable() {
    each(|r| {
        let ws = r.owned_dir();
        let script = "set -e
            echo hello > /work/in.txt
            cat /work/in.txt
            printf 'a 1\\nb 2\\n' | grep b
            echo abc | sed s/b/X/
            printf '1 2\\n3 4\\n' | awk '{s+=$2} END {print s}'
            ls /work
            find /work -name in.txt
            python3 -c 'print(6*7)'
            echo scratch > /tmp/x && cat /tmp/x";
        let ran = r.run(&Case::sh(script).workspace(ws.path()));
        assert_eq!(ran.exit, Exit::Code(0), "{ran:?}");
        assert_eq!(
            ran.stdout, "hello\nb 2\naXc\n6\nin.txt\n/work/in.txt\n42\nscratch\n",
            "{ran:?}"
        );
        assert_not_degraded(&ran);
        assert_eq!(
            std::fs::read_to_string(ws.path().join("in.txt")).unwrap(),
            "hello\n"
        );
    });
}

#[test]
fn the_environment_is_exactly_the_given_one() {
    each(|r| {
        let case = Case::argv(&["/usr/bin/env"]).env("CARAPACE_PROBE", "a b=c");
        let ran = r.run(&case);
        assert_eq!(ran.exit, Exit::Code(0), "{ran:?}");
        let got: BTreeSet<&str> = ran.stdout.lines().collect();
        let want: BTreeSet<String> = case.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let want: BTreeSet<&str> = want.iter().map(String::as_str).collect();
        assert_eq!(got, want);
        // The test's own environment (which switched this suite on) does not leak.
        assert!(!ran.stdout.contains("CARAPACE_TEST_SANDBOX"), "{ran:?}");
    });
}

#[test]
fn identity_hostname_and_home() {
    each(|r| {
        let script = "id -u; id -g; hostname; ls -A /home 2>&1 | head -c 200; echo;
            grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status;
            (echo renamed > /proc/self/comm) 2>/dev/null; echo comm-write=$?;
            kill -0 1 2>/dev/null; echo signal-pid1=$?;
            cat /etc/passwd";
        let ran = r.run(&Case::sh(script));
        let lines: Vec<&str> = ran.stdout.lines().collect();
        assert_eq!(lines[0], "1000", "{ran:?}");
        assert_eq!(lines[1], "1000", "{ran:?}");
        assert_eq!(lines[2], "carapace", "{ran:?}");
        assert!(
            lines[3].contains("No such file") || lines[3].is_empty(),
            "/home: {ran:?}"
        );
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert!(
                ran.stdout.contains(&format!("{cap}:\t0000000000000000")),
                "{cap} not empty: {ran:?}"
            );
        }
        assert!(ran.stdout.contains("NoNewPrivs:\t1"), "{ran:?}");
        assert!(ran.stdout.contains("Seccomp:\t2"), "{ran:?}");
        // /proc is read-only (the mount, and Landlock).
        assert!(!ran.stdout.contains("comm-write=0"), "{ran:?}");
        // Only Landlock's signal scope stops a signal to PID 1, which is outside the
        // command's Landlock domain (the PID namespace would let it through and drop it).
        assert!(ran.stdout.contains("signal-pid1=1"), "{ran:?}");
        // The generated passwd, not the host's.
        assert!(ran.stdout.contains("sandbox:x:1000:1000"), "{ran:?}");
        let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap();
        for line in host_passwd.lines() {
            let user = line.split(':').next().unwrap();
            if !["root", "nobody"].contains(&user) {
                assert!(
                    !ran.stdout.contains(&format!("\n{user}:")),
                    "host user {user} shown: {ran:?}"
                );
            }
        }
    });
}

#[test]
fn output_over_the_cap_is_truncated_and_the_writer_is_not_blocked() {
    each(|r| {
        let case = Case::sh("head -c 5000000 /dev/zero | tr '\\0' x; echo done >&2")
            .limits(|l| l.output_bytes = 1000);
        let ran = r.run(&case);
        assert_eq!(ran.exit, Exit::Code(0), "{:?}", ran.stderr);
        assert_eq!(ran.stdout.len(), 1000);
        assert!(ran.stdout_truncated);
        assert!(ran.stdout.bytes().all(|b| b == b'x'));
        assert_eq!(ran.stderr, "done\n");
    });
}

#[test]
fn exit_codes_and_signals_are_reported() {
    each(|r| {
        assert_eq!(r.run(&Case::sh("exit 3")).exit, Exit::Code(3));
        assert_eq!(
            r.run(&Case::sh("kill -TERM $$; sleep 5")).exit,
            Exit::Signal(libc::SIGTERM)
        );
    });
}

#[test]
fn a_unix_socket_passed_in_is_the_one_way_out() {
    each(|r| {
        let dir = r.owned_dir();
        let path = dir.path().join("cara.sock");
        let listener = UnixListener::bind(&path).unwrap();
        r.give(&path);
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut got = String::new();
            conn.read_to_string(&mut got).unwrap();
            got
        });
        let mut case = Case::argv(&[
            "python3",
            "-c",
            "import socket; s = socket.socket(socket.AF_UNIX); s.connect('/run/cara.sock'); \
             s.sendall(b'hello from inside'); s.close()",
        ]);
        case.network = Network::UnixSocket {
            host: path.clone(),
            inside: "/run/cara.sock".into(),
        };
        let ran = r.run(&case);
        assert_eq!(ran.exit, Exit::Code(0), "{ran:?}");
        assert_eq!(server.join().unwrap(), "hello from inside");
    });
}

// ---------------------------------------------------------------------------------------
// What must fail

#[test]
fn the_daemon_data_directory_is_invisible() {
    each(|r| {
        let data = TempDir::new().unwrap();
        let token = format!("server-token-{}", unique());
        std::fs::write(data.path().join("server.token"), &token).unwrap();
        let ws = r.owned_dir();
        let d = data.path().display();
        let script = format!(
            "cat {d}/server.token; ls {d}; cat /proc/1/root{d}/server.token;
             find / -maxdepth 4 -name server.token 2>/dev/null;
             grep -rs {token} /tmp /work /etc /dev/shm | head -1"
        );
        let ran = r.run(&Case::sh(&script).workspace(ws.path()));
        assert!(!ran.stdout.contains(&token), "{ran:?}");
        assert!(!ran.stdout.contains("server.token"), "{ran:?}");
        assert!(ran.stderr.contains("No such file"), "{ran:?}");
    });
}

#[test]
fn ssh_keys_in_home_are_invisible() {
    each(|r| {
        let home = TempDir::new().unwrap();
        let key = format!("-----BEGIN OPENSSH PRIVATE KEY----- {}", unique());
        std::fs::create_dir(home.path().join(".ssh")).unwrap();
        std::fs::write(home.path().join(".ssh/id_ed25519"), &key).unwrap();
        let h = home.path().display().to_string();
        let case =
            Case::sh("cat \"$HOME/.ssh/id_ed25519\"; ls -la \"$HOME\" /home /root").env("HOME", &h);
        let ran = r.run(&case);
        assert!(!ran.stdout.contains(&key), "{ran:?}");
        assert!(!ran.stdout.contains("id_ed25519"), "{ran:?}");
        assert!(ran.stderr.contains("No such file"), "{ran:?}");
    });
}

#[test]
fn etc_shows_no_secrets() {
    each(|r| {
        let script = "cat /etc/shadow /etc/gshadow; ls /etc/ssh /etc/sudoers /etc/ssl/private;
            ls -A /etc";
        let ran = r.run(&Case::sh(script));
        for secret in ["shadow", "gshadow", "sudoers", "ssh\n", "private"] {
            assert!(!ran.stdout.contains(secret), "{secret} shown: {ran:?}");
        }
        assert!(!ran.stdout.contains("root:$"), "{ran:?}");
        assert!(ran.stdout.contains("passwd"), "{ran:?}");
    });
}

#[test]
fn another_process_environment_is_invisible() {
    each(|r| {
        let marker = format!("environ-marker-{}", unique());
        let host = HostProcess::start(&[("CARAPACE_ENV_MARKER", &marker)]);
        let pid = host.pid();
        let script = format!(
            "cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | grep CARAPACE_ENV_MARKER;
             cat /proc/{pid}/environ; ls /proc | grep -E '^[0-9]+$' | wc -l"
        );
        let ran = r.run(&Case::sh(&script));
        assert!(!ran.stdout.contains(&marker), "{ran:?}");
        assert!(ran.stderr.contains("No such file"), "{ran:?}");
        // Only the sandbox's own processes: PID 1, sh, ls, grep, wc and the like.
        let count: usize = ran
            .stdout
            .trim()
            .lines()
            .last()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(count < 10, "{count} processes visible: {ran:?}");
    });
}

#[test]
fn writes_outside_the_workspace_fail_also_through_links() {
    each(|r| {
        let outside = TempDir::new().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "original").unwrap();
        // A file whose owner is not the sandbox's kernel uid, writable by its owner
        // only: only a capability (which the sandbox must not have) could write it.
        let linked = outside.path().join("linked");
        std::fs::write(&linked, "original").unwrap();
        let foreign_owner = if r.outer_uid() == 0 { 65534 } else { 0 };
        let can_chown = std::os::unix::fs::chown(&linked, Some(foreign_owner), None).is_ok();
        std::fs::set_permissions(&linked, std::fs::Permissions::from_mode(0o644)).unwrap();

        let ws = r.owned_dir();
        std::os::unix::fs::symlink(&victim, ws.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), ws.path().join("dirlink")).unwrap();
        let hard = std::fs::hard_link(&linked, ws.path().join("hard")).is_ok();
        let script = format!(
            "echo pwned > /work/link; echo pwned > /work/dirlink/new; echo pwned > /work/hard;
             echo pwned > {v}; echo pwned > /usr/pwned; echo pwned > /etc/pwned;
             echo pwned > /pwned; echo pwned > /proc/pwned;
             ln /usr/bin/id /work/id-link; ln /etc/passwd /work/passwd-link;
             echo done",
            v = victim.display()
        );
        let ran = r.run(&Case::sh(&script).workspace(ws.path()));
        assert!(ran.stdout.contains("done"), "{ran:?}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "original");
        assert!(!outside.path().join("new").exists());
        assert!(!Path::new("/usr/pwned").exists());
        assert!(!Path::new("/etc/pwned").exists());
        assert!(!Path::new("/pwned").exists());
        // Hard links into the workspace from read-only mounts fail (EXDEV).
        assert!(!ws.path().join("id-link").exists(), "{ran:?}");
        assert!(!ws.path().join("passwd-link").exists(), "{ran:?}");
        if hard && can_chown {
            assert_eq!(
                std::fs::read_to_string(&linked).unwrap(),
                "original",
                "wrote through a hard link to a file the sandbox's uid does not own"
            );
        } else {
            eprintln!("hard-link case skipped: cannot link or chown here");
        }
    });
}

#[test]
fn the_network_is_loopback_only() {
    each(|r| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let script = format!(
            "import socket, time
for addr in [('127.0.0.1', {port}), ('10.255.255.1', 80), ('1.1.1.1', 53)]:
    s = socket.socket(); s.settimeout(5); t = time.time()
    try:
        s.connect(addr); print('connected', addr)
    except OSError as e:
        print('failed', addr[0], e.errno, round(time.time() - t, 2))
s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()
c = socket.create_connection(s.getsockname()); print('loopback works')
"
        );
        let ran = r.run(&Case::argv(&["python3", "-c", &script]));
        assert_eq!(ran.exit, Exit::Code(0), "{ran:?}");
        assert!(!ran.stdout.contains("connected"), "{ran:?}");
        assert!(
            ran.stdout
                .contains(&format!("failed 127.0.0.1 {}", libc::ECONNREFUSED)),
            "{ran:?}"
        );
        for addr in ["10.255.255.1", "1.1.1.1"] {
            let line = ran
                .stdout
                .lines()
                .find(|l| l.starts_with(&format!("failed {addr} ")))
                .unwrap_or_else(|| panic!("{addr}: {ran:?}"));
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(fields[2], libc::ENETUNREACH.to_string(), "{line}");
            assert!(
                fields[3].parse::<f64>().unwrap() < 1.0,
                "slow failure: {line}"
            );
        }
        assert!(ran.stdout.contains("loopback works"), "{ran:?}");
        assert!(
            matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "the host listener received a connection"
        );
    });
}

#[test]
fn ptrace_of_a_host_process_fails() {
    each(|r| {
        let host = HostProcess::start(&[]);
        let pid = host.pid();
        let script = format!(
            "import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
for name, args in [('attach', (16, {pid}, 0, 0)), ('traceme', (0, 0, 0, 0))]:
    rc = libc.ptrace(*args)
    print(name, rc, ctypes.get_errno())
"
        );
        let ran = r.run(&Case::argv(&["python3", "-c", &script]));
        assert_eq!(ran.exit, Exit::Code(0), "{ran:?}");
        assert!(
            ran.stdout.contains(&format!("attach -1 {}", libc::EPERM)),
            "{ran:?}"
        );
        assert!(
            ran.stdout.contains(&format!("traceme -1 {}", libc::EPERM)),
            "{ran:?}"
        );
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(status.contains("TracerPid:\t0"), "{status}");
    });
}

#[test]
fn mounts_and_new_namespaces_fail_and_the_process_lives_on() {
    each(|r| {
        let script = "import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def show(name, rc):
    print(name, rc, ctypes.get_errno())
show('mount', libc.mount(b'none', b'/tmp', b'tmpfs', 0, None))
show('unshare', libc.unshare(0x10000000))
show('clone3', libc.syscall(435, 0, 0))
show('chroot', libc.chroot(b'/tmp'))
show('keyctl', libc.syscall(250, 0, 0, 0, 0, 0))
show('bpf', libc.syscall(321, 0, 0, 0))
print('alive')
";
        let ran = r.run(&Case::argv(&["python3", "-c", script]));
        assert_eq!(ran.exit, Exit::Code(0), "{ran:?}");
        let eperm = libc::EPERM;
        for name in ["mount", "unshare", "chroot", "keyctl", "bpf"] {
            assert!(
                ran.stdout.contains(&format!("{name} -1 {eperm}")),
                "{name}: {ran:?}"
            );
        }
        assert!(
            ran.stdout.contains(&format!("clone3 -1 {}", libc::ENOSYS)),
            "{ran:?}"
        );
        assert!(ran.stdout.contains("alive"), "{ran:?}");
        let shell = r.run(&Case::sh(
            "mount -t tmpfs none /tmp; echo mount=$?; unshare -r true; echo unshare=$?",
        ));
        assert!(shell.stdout.contains("mount=") && !shell.stdout.contains("mount=0"));
        assert!(!shell.stdout.contains("unshare=0"), "{shell:?}");
    });
}

#[test]
fn setuid_binaries_do_not_escalate() {
    each(|r| {
        let ws = r.owned_dir();
        // A setuid copy owned by root, on the (nosuid) workspace bind.
        let copy = ws.path().join("id-suid");
        std::fs::copy("/usr/bin/id", &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let script = "/work/id-suid -u; /work/id-suid -ru;
            su -c 'id -u' root </dev/null; echo su=$?;
            python3 -c 'import os; print(os.geteuid(), os.getresuid())'";
        let ran = r.run(&Case::sh(script).workspace(ws.path()));
        let lines: Vec<&str> = ran.stdout.lines().collect();
        assert_eq!(lines[0], "1000", "{ran:?}");
        assert_eq!(lines[1], "1000", "{ran:?}");
        assert!(ran.stdout.contains("1000 (1000, 1000, 1000)"), "{ran:?}");
        assert!(!ran.stdout.contains("su=0"), "{ran:?}");
        assert!(!ran.stdout.lines().any(|l| l == "0"), "{ran:?}");
    });
}

#[test]
fn a_fork_bomb_is_contained() {
    each(|r| {
        // As root, RLIMIT_NPROC does not apply to kernel uid 0; the sandbox's own pid_max
        // caps the count instead (the kernel's floor is 300 processes).
        let cap = if r.outer_uid() == 0 { 300 } else { 64 };
        let watch = HostWatch::start();
        let case = Case::sh("b() { b | b & }; b; sleep 100").limits(|l| {
            l.processes = 64;
            l.wall_clock = Duration::from_secs(4);
        });
        let ran = r.run(&case);
        let (progress, max_sandboxed, failures) = watch.finish();
        assert_eq!(ran.exit, Exit::Deadline, "{:?}", ran.exit);
        assert!(progress >= 20, "the host made little progress: {progress}");
        assert_eq!(failures, 0, "the host could not start processes");
        assert!(
            max_sandboxed <= cap + 1,
            "{max_sandboxed} sandboxed processes, more than {cap} + PID 1"
        );
        // The run returns once the namespace is gone.
        assert_eq!(processes_in_other_pid_namespaces(), 0, "the bomb survived");
    });
}

#[test]
fn a_memory_bomb_is_contained() {
    each(|r| {
        let watch = HostWatch::start();
        let case = Case::argv(&[
            "python3",
            "-c",
            "chunks = []
try:
    while True:
        chunks.append(bytearray(64 << 20))
except MemoryError:
    print('contained at', len(chunks) * 64, 'MiB')",
        ])
        .limits(|l| {
            l.address_space_bytes = 512 << 20;
            l.wall_clock = Duration::from_secs(20);
        });
        let ran = r.run(&case);
        let (progress, _, failures) = watch.finish();
        assert!(ran.stdout.contains("contained at"), "{ran:?}");
        let mib: u64 = ran
            .stdout
            .split_whitespace()
            .nth(2)
            .unwrap()
            .parse()
            .unwrap();
        assert!(mib <= 512, "{mib} MiB allocated");
        assert!(progress > 0 && failures == 0);
    });
}

#[test]
fn the_deadline_kills_the_whole_tree() {
    each(|r| {
        let marker = format!("1000.{}", unique());
        let script = format!("trap '' TERM; sleep {marker} & sleep {marker}");
        let case = Case::sh(&script).limits(|l| l.wall_clock = Duration::from_millis(1500));
        let ran = r.run(&case);
        assert_eq!(ran.exit, Exit::Deadline);
        assert!(ran.duration < Duration::from_secs(5), "{:?}", ran.duration);
        assert_all_gone(&marker);
    });
}

// ---------------------------------------------------------------------------------------
// The library only

#[test]
fn dropping_the_run_future_kills_the_sandbox() {
    if !enabled() {
        return;
    }
    let _guard = serial();
    let rt = runtime();
    let sandbox = library_sandbox();
    let marker = format!("1000.{}", unique());
    let case = Case::sh(&format!("sleep {marker} & sleep {marker}"));
    let spec = case.spec();
    let result = rt.block_on(async {
        tokio::time::timeout(Duration::from_millis(500), sandbox.run(&spec)).await
    });
    assert!(result.is_err(), "the run ended by itself");
    assert_all_gone(&marker);
}

#[test]
fn run_inherit_reports_the_status_like_a_shell() {
    if !enabled() {
        return;
    }
    let _guard = serial();
    let rt = runtime();
    let sandbox = library_sandbox();
    let code = rt
        .block_on(sandbox.run_inherit(&Case::sh("exit 7").spec()))
        .unwrap();
    assert_eq!(code, 7);
    let code = rt
        .block_on(sandbox.run_inherit(&Case::sh("kill -KILL $$").spec()))
        .unwrap();
    assert_eq!(code, 128 + libc::SIGKILL);
}

#[test]
fn setup_failures_are_errors_naming_the_step() {
    if !enabled() {
        return;
    }
    let _guard = serial();
    let rt = runtime();
    let sandbox = library_sandbox();
    let cases = [
        (Case::argv(&["no-such-command-here"]), "exec"),
        (Case::argv(&["/no/such/program"]), "exec"),
        (
            {
                let mut c = Case::argv(&["true"]);
                c.cwd = "/no/such/dir".into();
                c
            },
            "chdir",
        ),
        (
            {
                let mut c = Case::argv(&["true"]);
                c.binds.push(Bind {
                    src: "/usr/bin".into(),
                    dst: "/usr/lib/carapace-absent/inside".into(),
                    writable: false,
                });
                c
            },
            "mount point",
        ),
    ];
    for (case, want) in cases {
        match rt.block_on(sandbox.run(&case.spec())) {
            Err(SandboxError::Setup { step, message }) => {
                assert_eq!(step, want, "{message}");
            }
            other => panic!("expected a setup error at {want}, got {other:?}"),
        }
    }
    // The init program must really be one.
    let not_init = Sandbox::new(InitProgram {
        program: "/bin/true".into(),
        args: vec![],
    });
    match rt.block_on(not_init.run(&Case::argv(&["true"]).spec())) {
        Err(SandboxError::Setup { step, .. }) => assert_eq!(step, "init"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn check_finds_the_features_this_suite_relies_on() {
    if !enabled() {
        return;
    }
    for status in carapace_sandbox::check() {
        eprintln!(
            "{:18} {:5} {}",
            status.feature.to_string(),
            status.available,
            status.detail
        );
        if status.feature != Feature::Cgroup {
            assert!(status.available, "{status:?}");
        }
    }
}

#[test]
fn output_reaches_the_host_before_the_command_ends() {
    // A command that writes and then sleeps: its output is captured even though it is
    // killed at the deadline.
    each(|r| {
        let case =
            Case::sh("echo early; sleep 30").limits(|l| l.wall_clock = Duration::from_secs(1));
        let ran = r.run(&case);
        assert_eq!(ran.exit, Exit::Deadline);
        assert_eq!(ran.stdout, "early\n");
    });
}
