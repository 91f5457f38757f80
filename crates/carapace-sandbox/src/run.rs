//! The caller's side: start the init program with the spec, capture output with a cap,
//! enforce the deadline and turn the init's reports into an outcome or an error.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::cgroup::RunCgroup;
use crate::wire::{CHANNEL_ARG, Reports, parse_reports};
use crate::{Exit, Feature, Outcome, PidNamespace, Sandbox, SandboxError, SandboxSpec, spec, sys};

/// How long output pipes may stay open after the init process ended (only a process
/// that handed its descriptors out of the sandbox can hold them).
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Output kept up to a cap; the rest is read and discarded.
#[derive(Default)]
struct Capture {
    bytes: Vec<u8>,
    truncated: bool,
}

async fn drain(pipe: Option<impl AsyncRead + Unpin>, cap: usize, out: &mut Capture) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let room = cap.saturating_sub(out.bytes.len());
                if n > room {
                    out.truncated = true;
                }
                out.bytes.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// What one run produced.
struct Finished {
    exit: Exit,
    stdout: Capture,
    stderr: Capture,
    duration: Duration,
    degraded: Vec<Feature>,
}

/// Where the command's standard streams go.
enum Streams {
    Capture,
    Inherit,
    Given(Stdio3),
}

/// Standard streams handed to a run, such as a terminal another process passed over a
/// socket.
#[derive(Debug)]
pub struct Stdio3 {
    /// The command's standard input.
    pub stdin: OwnedFd,
    /// The command's standard output.
    pub stdout: OwnedFd,
    /// The command's standard error.
    pub stderr: OwnedFd,
}

impl Sandbox {
    /// Runs to completion with captured output; dropping the future kills the sandbox.
    pub async fn run(&self, spec: &SandboxSpec) -> Result<Outcome, SandboxError> {
        let f = self.execute(spec, Streams::Capture, None).await?;
        Ok(Outcome {
            exit: f.exit,
            stdout: f.stdout.bytes,
            stderr: f.stderr.bytes,
            stdout_truncated: f.stdout.truncated,
            stderr_truncated: f.stderr.truncated,
            duration: f.duration,
            degraded: f.degraded,
        })
    }

    /// Runs with the caller's stdin/stdout/stderr inherited (for `cara sandbox run`);
    /// returns the exit status as a shell would report it (code, or 128+signal; a run
    /// killed at its deadline reports 128+SIGKILL).
    pub async fn run_inherit(&self, spec: &SandboxSpec) -> Result<i32, SandboxError> {
        let f = self.execute(spec, Streams::Inherit, None).await?;
        Ok(shell_status(f))
    }

    /// Runs with the given standard streams; `started` receives the sandbox's pid
    /// namespace, held open, once the command is about to start (it is dropped unanswered
    /// when setup fails). Returns the exit status as [`Sandbox::run_inherit`] does.
    pub async fn run_attached(
        &self,
        spec: &SandboxSpec,
        stdio: Stdio3,
        started: tokio::sync::oneshot::Sender<PidNamespace>,
    ) -> Result<i32, SandboxError> {
        let f = self
            .execute(spec, Streams::Given(stdio), Some(started))
            .await?;
        Ok(shell_status(f))
    }

    async fn execute(
        &self,
        spec: &SandboxSpec,
        streams: Streams,
        mut on_started: Option<tokio::sync::oneshot::Sender<PidNamespace>>,
    ) -> Result<Finished, SandboxError> {
        let mut wire = spec::validate(spec)?;
        let mut degraded = Vec::new();
        let cgroup = match self.cgroup_base() {
            Some(base) => match RunCgroup::create(base, &spec.limits) {
                Ok(cg) => Some(cg),
                Err(e) => {
                    tracing::debug!(error = %e, "no cgroup for this run");
                    None
                }
            },
            None => None,
        };
        match &cgroup {
            Some(cg) => wire.cgroup = Some(cg.path().to_string_lossy().into_owned()),
            None => degraded.push(Feature::Cgroup),
        }
        let json = serde_json::to_vec(&wire).map_err(|e| SandboxError::Io(e.into()))?;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(SandboxError::Io)?;
        let theirs = OwnedFd::from(theirs);

        let mut cmd = Command::new(&self.init().program);
        cmd.args(&self.init().args).env_clear().kill_on_drop(true);
        // Kept until the child is spawned: our copy of its end of the channel.
        let mut high = None;
        match streams {
            Streams::Capture => {
                // The channel is the init's stdin, so no pre_exec hook is needed and the
                // spawn can use posix_spawn (a fork of a large caller costs milliseconds).
                cmd.arg(format!("{CHANNEL_ARG}0"))
                    .stdin(Stdio::from(theirs))
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
            }
            Streams::Inherit | Streams::Given(_) => {
                // Above descriptor 3, so moving it there cannot clobber anything.
                let fd = sys::dup_at_least(theirs.as_raw_fd(), 10).map_err(SandboxError::Io)?;
                drop(theirs);
                let raw = fd.as_raw_fd();
                high = Some(fd);
                cmd.arg(format!("{CHANNEL_ARG}3"));
                match streams {
                    Streams::Given(io) => cmd
                        .stdin(Stdio::from(io.stdin))
                        .stdout(Stdio::from(io.stdout))
                        .stderr(Stdio::from(io.stderr)),
                    _ => cmd
                        .stdin(Stdio::inherit())
                        .stdout(Stdio::inherit())
                        .stderr(Stdio::inherit()),
                };
                // SAFETY: the closure runs in the forked child before exec and calls only
                // dup2, which is async-signal-safe; it touches no memory shared with other
                // threads.
                unsafe {
                    cmd.pre_exec(move || sys::dup2_raw(raw, 3));
                }
            }
        }
        let start = Instant::now();
        let spawned = cmd.spawn();
        // Only the init processes may hold their end of the channel, or EOF never comes.
        drop(cmd);
        drop(high);
        let mut child = spawned.map_err(SandboxError::Spawn)?;
        // Not reaped before this function returns, so the pid stays this child's.
        let init_pid = child.id();
        ours.set_nonblocking(true).map_err(SandboxError::Io)?;
        let mut channel = tokio::net::UnixStream::from_std(ours).map_err(SandboxError::Io)?;

        let deadline = tokio::time::Instant::from_std(start + spec.limits.wall_clock);
        let (stdout_pipe, stderr_pipe) = (child.stdout.take(), child.stderr.take());
        let cap = spec.limits.output_bytes;
        let (mut stdout, mut stderr, mut report_bytes) =
            (Capture::default(), Capture::default(), Capture::default());
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let waiter = async {
            let result = wait(&mut child, deadline, cgroup.as_ref()).await;
            let _ = done_tx.send(());
            result
        };
        let io = async {
            let reports = async {
                // A write error means the init is gone; what it reported, if anything, is
                // still read.
                if channel.write_all(&json).await.is_ok() {
                    let _ = channel.shutdown().await;
                }
                match on_started.take() {
                    None => drain(Some(&mut channel), 64 * 1024, &mut report_bytes).await,
                    Some(tx) => watch_start(&mut channel, &mut report_bytes, init_pid, tx).await,
                }
            };
            let all = async {
                tokio::join!(
                    drain(stdout_pipe, cap, &mut stdout),
                    drain(stderr_pipe, cap, &mut stderr),
                    reports,
                )
            };
            tokio::select! {
                _ = all => {}
                _ = async {
                    let _ = done_rx.await;
                    tokio::time::sleep(DRAIN_GRACE).await;
                } => {}
            }
        };
        let (waited, ()) = tokio::join!(waiter, io);
        let (status, timed_out) = waited.map_err(SandboxError::Io)?;
        let duration = start.elapsed();
        drop(cgroup);

        let Reports {
            started,
            degraded: reported,
            error,
        } = parse_reports(&report_bytes.bytes);
        if let Some(error) = error {
            return Err(error);
        }
        let exit = if timed_out {
            Exit::Deadline
        } else if !started {
            return Err(SandboxError::Setup {
                step: "init".into(),
                message: format!(
                    "the init program ended ({status}) without starting the command; \
                     does it call carapace_sandbox::init_main for {}?",
                    crate::INIT_ARG
                ),
            });
        } else if let Some(code) = status.code() {
            Exit::Code(code)
        } else {
            Exit::Signal(status.signal().unwrap_or(libc::SIGKILL))
        };
        degraded.extend(reported);
        degraded.sort();
        degraded.dedup();
        Ok(Finished {
            exit,
            stdout,
            stderr,
            duration,
            degraded,
        })
    }
}

/// Reads the report channel like `drain`; once the command is about to start, opens the
/// sandbox's pid namespace through the init process (the caller's unreaped child, whose
/// `pid_for_children` is the namespace it made) and hands it to `tx`.
async fn watch_start(
    channel: &mut tokio::net::UnixStream,
    out: &mut Capture,
    init_pid: Option<u32>,
    tx: tokio::sync::oneshot::Sender<PidNamespace>,
) {
    let mut tx = Some(tx);
    let mut buf = vec![0u8; 4096];
    loop {
        match channel.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let room = (64 * 1024usize).saturating_sub(out.bytes.len());
                out.bytes.extend_from_slice(&buf[..n.min(room)]);
                if tx.is_some()
                    && parse_reports(&out.bytes).started
                    && let Some(pid) = init_pid
                {
                    let path = format!("/proc/{pid}/ns/pid_for_children");
                    match PidNamespace::open(&path) {
                        Ok(ns) => {
                            let _ = tx.take().map(|tx| tx.send(ns));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot open the sandbox's pid namespace");
                            tx = None;
                        }
                    }
                }
            }
        }
    }
}

/// The exit status as a shell would report it.
fn shell_status(f: Finished) -> i32 {
    for feature in &f.degraded {
        tracing::warn!(%feature, "sandbox ran without a feature");
    }
    match f.exit {
        Exit::Code(c) => c,
        Exit::Signal(s) => 128 + s,
        Exit::Deadline => 128 + libc::SIGKILL,
    }
}

/// How long the init process may take to tear the sandbox down after SIGTERM before it
/// is killed outright.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// Waits for the init process. At the deadline it gets SIGTERM, on which it kills the
/// sandbox's PID 1 and exits once the whole namespace is gone, so no process of the run
/// outlives this call; SIGKILL if it does not (PID 1's parent-death signal then takes
/// the namespace down).
async fn wait(
    child: &mut Child,
    deadline: tokio::time::Instant,
    cgroup: Option<&RunCgroup>,
) -> std::io::Result<(ExitStatus, bool)> {
    match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(status) => Ok((status?, false)),
        Err(_) => {
            if let Some(cg) = cgroup {
                cg.kill();
            }
            // Not yet reaped, so the pid is still this child's.
            if let Some(pid) = child.id() {
                sys::terminate(pid as libc::pid_t);
            }
            match tokio::time::timeout(TERM_GRACE, child.wait()).await {
                Ok(status) => Ok((status?, true)),
                Err(_) => {
                    let _ = child.start_kill();
                    Ok((child.wait().await?, true))
                }
            }
        }
    }
}
