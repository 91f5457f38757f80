use std::path::PathBuf;
use std::time::Duration;

use carapace_types::Secret;

use crate::cli::{self, DEFAULT_TIMEOUT};
use crate::{Backend, BackendKind, VaultError};

/// Secrets from `pass`, the standard Unix password manager: `pass show NAME`, first line.
///
/// `PASSWORD_STORE_DIR` and `GNUPGHOME` are inherited unless set here. Decryption must
/// not need a pinentry prompt (a key without passphrase, or a running agent that has it);
/// a call that waits longer than the timeout is killed. Read-only.
#[derive(Debug, Clone)]
pub struct PassBackend {
    program: PathBuf,
    store_dir: Option<PathBuf>,
    gnupg_home: Option<PathBuf>,
    timeout: Duration,
}

impl Default for PassBackend {
    fn default() -> PassBackend {
        PassBackend {
            program: "pass".into(),
            store_dir: None,
            gnupg_home: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl PassBackend {
    /// Runs `pass` from `PATH` with the inherited environment and a 30 s limit.
    pub fn new() -> PassBackend {
        PassBackend::default()
    }

    /// Runs this program instead of `pass`.
    pub fn program(mut self, program: impl Into<PathBuf>) -> PassBackend {
        self.program = program.into();
        self
    }

    /// Sets `PASSWORD_STORE_DIR` for the call.
    pub fn store_dir(mut self, dir: impl Into<PathBuf>) -> PassBackend {
        self.store_dir = Some(dir.into());
        self
    }

    /// Sets `GNUPGHOME` for the call.
    pub fn gnupg_home(mut self, dir: impl Into<PathBuf>) -> PassBackend {
        self.gnupg_home = Some(dir.into());
        self
    }

    /// The time limit of one call.
    pub fn timeout(mut self, timeout: Duration) -> PassBackend {
        self.timeout = timeout;
        self
    }
}

impl Backend for PassBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Pass
    }

    fn get(&self, name: &str) -> Result<Secret<String>, VaultError> {
        cli::check_cli_name(name)?;
        if name.split('/').any(|part| part == "..") {
            return Err(VaultError::InvalidName {
                name: name.into(),
                reason: "it has a `..` component",
            });
        }
        let mut env = Vec::new();
        if let Some(dir) = &self.store_dir {
            env.push(("PASSWORD_STORE_DIR", dir.as_os_str()));
        }
        if let Some(dir) = &self.gnupg_home {
            env.push(("GNUPGHOME", dir.as_os_str()));
        }
        let out = cli::run(
            BackendKind::Pass,
            &self.program,
            &["show", name],
            &env,
            self.timeout,
        )?;
        if !out.success {
            if out.stderr.contains("is not in the password store") {
                return Err(VaultError::NotFound {
                    backend: BackendKind::Pass,
                    name: name.into(),
                });
            }
            return Err(out.failed(BackendKind::Pass));
        }
        let first_line = out.stdout.split(|&b| b == b'\n').next().unwrap_or(&[]);
        let first_line = first_line.strip_suffix(b"\r").unwrap_or(first_line);
        cli::value(first_line, BackendKind::Pass, name)
    }
}
