//! Runs a password manager's command-line program: no value on its command line, a time
//! limit, and its output kept in memory that is wiped.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use carapace_types::Secret;
use zeroize::Zeroizing;

use crate::{BackendKind, VaultError};

/// The default time limit for one call of a password manager.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Standard output is cut off past this (no secret is this long).
const MAX_STDOUT: usize = 1 << 20;
const MAX_STDERR: usize = 64 << 10;

pub(crate) struct Output {
    pub success: bool,
    pub status: String,
    pub stdout: Zeroizing<Vec<u8>>,
    pub stderr: String,
}

impl Output {
    /// The first lines of the error output, short enough for an error message.
    pub fn stderr_summary(&self) -> String {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .take(3)
            .collect();
        let mut s = lines.join(" / ");
        if s.len() > 300 {
            let mut cut = 300;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push_str("...");
        }
        if s.is_empty() {
            s.push_str("no error output");
        }
        s
    }

    pub fn failed(&self, backend: BackendKind) -> VaultError {
        VaultError::CommandFailed {
            backend,
            status: self.status.clone(),
            detail: self.stderr_summary(),
        }
    }
}

enum Stream {
    Out(io::Result<Zeroizing<Vec<u8>>>),
    Err(io::Result<Zeroizing<Vec<u8>>>),
}

/// Runs `program args` with `env` added to the inherited environment, standard input
/// closed, and kills it after `timeout`.
pub(crate) fn run(
    backend: BackendKind,
    program: &Path,
    args: &[&str],
    env: &[(&str, &OsStr)],
    timeout: Duration,
) -> Result<Output, VaultError> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => VaultError::ProgramNotFound {
            backend,
            program: program.display().to_string(),
        },
        _ => VaultError::io(format!("cannot run {}", program.display()), e),
    })?;
    let deadline = Instant::now() + timeout;
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send(Stream::Out(read_capped(out, MAX_STDOUT)));
        });
    }
    if let Some(err) = child.stderr.take() {
        std::thread::spawn(move || {
            let _ = tx.send(Stream::Err(read_capped(err, MAX_STDERR)));
        });
    }
    let timed_out = VaultError::Timeout {
        backend,
        after: timeout,
    };
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                return Err(VaultError::io(
                    format!("cannot wait for {}", program.display()),
                    e,
                ));
            }
        }
        let now = Instant::now();
        if now >= deadline {
            // A grandchild may still hold the pipes; the reader threads end with it.
            let _ = child.kill();
            let _ = child.wait();
            return Err(timed_out);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    let (mut stdout, mut stderr) = (None, None);
    while stdout.is_none() || stderr.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Stream::Out(r)) => stdout = Some(r),
            Ok(Stream::Err(r)) => stderr = Some(r),
            Err(_) => return Err(timed_out),
        }
    }
    let read_err = |e| {
        VaultError::io(
            format!("cannot read the output of {}", program.display()),
            e,
        )
    };
    let stdout = stdout.expect("received").map_err(read_err)?;
    let stderr = stderr.expect("received").map_err(read_err)?;
    Ok(Output {
        success: status.success(),
        status: match status.code() {
            Some(code) => format!("exit code {code}"),
            None => "killed by a signal".into(),
        },
        stdout,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// Reads everything into a buffer that is wiped when dropped; grows by copying into a
/// new wiped buffer, so no copy of the output is left behind in freed memory.
fn read_capped(mut r: impl Read, cap: usize) -> io::Result<Zeroizing<Vec<u8>>> {
    let mut out = Zeroizing::new(Vec::with_capacity(4096));
    let mut chunk = Zeroizing::new([0u8; 4096]);
    loop {
        let n = match r.read(&mut chunk[..]) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if out.len() + n > cap {
            return Err(io::Error::other(format!("more than {cap} bytes of output")));
        }
        if out.len() + n > out.capacity() {
            let mut bigger =
                Zeroizing::new(Vec::with_capacity((out.len() + n).max(out.capacity() * 2)));
            bigger.extend_from_slice(&out);
            out = bigger;
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

/// Rejects names that could be read as an option or break the command line.
pub(crate) fn check_cli_name(name: &str) -> Result<(), VaultError> {
    crate::backend::check_name(name)?;
    if name.starts_with('-') {
        return Err(VaultError::InvalidName {
            name: name.into(),
            reason: "it starts with `-`",
        });
    }
    Ok(())
}

/// Turns output bytes into a secret: not empty, UTF-8.
pub(crate) fn value(
    bytes: &[u8],
    backend: BackendKind,
    name: &str,
) -> Result<Secret<String>, VaultError> {
    let invalid = |reason| VaultError::InvalidValue {
        backend,
        name: name.into(),
        reason,
    };
    if bytes.is_empty() {
        return Err(invalid("empty"));
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(Secret::new(s.to_owned())),
        Err(_) => Err(invalid("not valid UTF-8")),
    }
}

/// `bytes` without one trailing line ending.
pub(crate) fn chomp(bytes: &[u8]) -> &[u8] {
    let b = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    b.strip_suffix(b"\r").unwrap_or(b)
}
