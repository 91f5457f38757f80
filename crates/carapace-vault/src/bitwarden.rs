use std::path::PathBuf;
use std::time::Duration;

use carapace_types::Secret;

use crate::cli::{self, DEFAULT_TIMEOUT};
use crate::{Backend, BackendKind, VaultError};

/// Secrets from the Bitwarden CLI: `bw --nointeraction get password NAME`.
///
/// The session key goes in `BW_SESSION` (given here, or inherited), never on the command
/// line. `bw` prints the value without a newline; errors (`Vault is locked.`,
/// `Not found.`, `More than one result was found. ...`) go to standard error with exit
/// code 1. Read-only.
#[derive(Debug, Clone)]
pub struct BitwardenBackend {
    program: PathBuf,
    session: Option<Secret<String>>,
    timeout: Duration,
}

impl Default for BitwardenBackend {
    fn default() -> BitwardenBackend {
        BitwardenBackend {
            program: "bw".into(),
            session: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl BitwardenBackend {
    /// Runs `bw` from `PATH`, `BW_SESSION` inherited, with a 30 s limit.
    pub fn new() -> BitwardenBackend {
        BitwardenBackend::default()
    }

    /// Runs this program instead of `bw`.
    pub fn program(mut self, program: impl Into<PathBuf>) -> BitwardenBackend {
        self.program = program.into();
        self
    }

    /// Passes this session key in `BW_SESSION`.
    pub fn session(mut self, session: Secret<String>) -> BitwardenBackend {
        self.session = Some(session);
        self
    }

    /// The time limit of one call.
    pub fn timeout(mut self, timeout: Duration) -> BitwardenBackend {
        self.timeout = timeout;
        self
    }
}

impl Backend for BitwardenBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Bitwarden
    }

    fn get(&self, name: &str) -> Result<Secret<String>, VaultError> {
        cli::check_cli_name(name)?;
        let mut env = Vec::new();
        if let Some(s) = &self.session {
            env.push(("BW_SESSION", std::ffi::OsStr::new(s.expose().as_str())));
        }
        let out = cli::run(
            BackendKind::Bitwarden,
            &self.program,
            &["--nointeraction", "get", "password", name],
            &env,
            self.timeout,
        )?;
        if !out.success {
            let err = &out.stderr;
            let backend = BackendKind::Bitwarden;
            return Err(if err.contains("Not found.") {
                VaultError::NotFound {
                    backend,
                    name: name.into(),
                }
            } else if err.contains("More than one result was found") {
                VaultError::Ambiguous {
                    backend,
                    name: name.into(),
                }
            } else if err.contains("Vault is locked") || err.contains("You are not logged in") {
                VaultError::Locked {
                    backend,
                    detail: out.stderr_summary(),
                }
            } else {
                out.failed(backend)
            });
        }
        // The documented output has no newline; tolerate one.
        cli::value(cli::chomp(&out.stdout), BackendKind::Bitwarden, name)
    }
}
