use std::path::PathBuf;
use std::time::Duration;

use carapace_types::Secret;

use crate::cli::{self, DEFAULT_TIMEOUT};
use crate::{Backend, BackendKind, VaultError};

/// Secrets from the 1Password CLI: `op read --no-newline op://VAULT/ITEM/FIELD`.
///
/// A name is the secret reference, with or without its `op://` scheme. Sign-in comes
/// from the inherited environment (`OP_SERVICE_ACCOUNT_TOKEN`, or a desktop-app or
/// `OP_SESSION_*` session). Errors look like
/// `[ERROR] 2024/01/01 00:00:00 could not read secret 'op://...': ...` on standard error
/// with exit code 1. Read-only.
#[derive(Debug, Clone)]
pub struct OnePasswordBackend {
    program: PathBuf,
    timeout: Duration,
}

impl Default for OnePasswordBackend {
    fn default() -> OnePasswordBackend {
        OnePasswordBackend {
            program: "op".into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl OnePasswordBackend {
    /// Runs `op` from `PATH` with a 30 s limit.
    pub fn new() -> OnePasswordBackend {
        OnePasswordBackend::default()
    }

    /// Runs this program instead of `op`.
    pub fn program(mut self, program: impl Into<PathBuf>) -> OnePasswordBackend {
        self.program = program.into();
        self
    }

    /// The time limit of one call.
    pub fn timeout(mut self, timeout: Duration) -> OnePasswordBackend {
        self.timeout = timeout;
        self
    }

    /// The secret reference read for `name`.
    pub fn reference(name: &str) -> String {
        if name.starts_with("op://") {
            name.to_owned()
        } else {
            format!("op://{name}")
        }
    }
}

impl Backend for OnePasswordBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::OnePassword
    }

    fn get(&self, name: &str) -> Result<Secret<String>, VaultError> {
        cli::check_cli_name(name)?;
        let reference = Self::reference(name);
        let out = cli::run(
            BackendKind::OnePassword,
            &self.program,
            &["read", "--no-newline", &reference],
            &[],
            self.timeout,
        )?;
        if !out.success {
            let err = out.stderr.to_ascii_lowercase();
            let backend = BackendKind::OnePassword;
            return Err(
                if [
                    "isn't an item",
                    "isn't a vault",
                    "isn't a field",
                    "cannot be found",
                    "not found",
                ]
                .iter()
                .any(|m| err.contains(m))
                {
                    VaultError::NotFound {
                        backend,
                        name: name.into(),
                    }
                } else if err.contains("more than one item matches") {
                    VaultError::Ambiguous {
                        backend,
                        name: name.into(),
                    }
                } else if [
                    "not currently signed in",
                    "not signed in",
                    "session expired",
                    "authorization",
                ]
                .iter()
                .any(|m| err.contains(m))
                {
                    VaultError::Locked {
                        backend,
                        detail: out.stderr_summary(),
                    }
                } else {
                    out.failed(backend)
                },
            );
        }
        cli::value(cli::chomp(&out.stdout), BackendKind::OnePassword, name)
    }
}
