use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Which backend a secret comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// The encrypted `vault.json` in the data directory.
    File,
    /// Environment variables.
    Env,
    /// `pass`, the standard Unix password manager.
    Pass,
    /// The Bitwarden CLI, `bw`.
    Bitwarden,
    /// The 1Password CLI, `op`.
    OnePassword,
    /// The OS keyring: the Secret Service on Linux, the Keychain on macOS.
    Keyring,
}

impl BackendKind {
    /// The backend named as in config (`backend = "..."`) and on the command line:
    /// `file`, `env`, `pass`, `bw`, `op` or `keyring`.
    pub fn from_config_name(name: &str) -> Option<BackendKind> {
        Some(match name {
            "file" => BackendKind::File,
            "env" => BackendKind::Env,
            "pass" => BackendKind::Pass,
            "bw" => BackendKind::Bitwarden,
            "op" => BackendKind::OnePassword,
            "keyring" => BackendKind::Keyring,
            _ => return None,
        })
    }

    /// The name config uses for this backend (the inverse of
    /// [`BackendKind::from_config_name`]).
    pub fn config_name(self) -> &'static str {
        match self {
            BackendKind::File => "file",
            BackendKind::Env => "env",
            BackendKind::Pass => "pass",
            BackendKind::Bitwarden => "bw",
            BackendKind::OnePassword => "op",
            BackendKind::Keyring => "keyring",
        }
    }

    /// Password managers ask before their first use in a session unless told otherwise;
    /// the file vault, the OS keyring (the owner's own stores, unlocked by their session)
    /// and the environment do not.
    pub fn approve_first_use_by_default(self) -> bool {
        matches!(
            self,
            BackendKind::Pass | BackendKind::Bitwarden | BackendKind::OnePassword
        )
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::File => "file",
            BackendKind::Env => "env",
            BackendKind::Pass => "pass",
            BackendKind::Bitwarden => "bitwarden",
            BackendKind::OnePassword => "1password",
            BackendKind::Keyring => "keyring",
        })
    }
}

/// Why a secret could not be read or written. No variant ever holds a secret value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The backend has no secret under this name.
    #[error("no secret named `{name}` in the {backend} backend")]
    NotFound {
        /// The backend asked.
        backend: BackendKind,
        /// The name asked for.
        name: String,
    },
    /// The backend does not support this operation (it is read-only).
    #[error("the {backend} backend is read-only: {operation} is not supported")]
    ReadOnly {
        /// The backend asked.
        backend: BackendKind,
        /// What was attempted: `set`, `remove` or `names`.
        operation: &'static str,
    },
    /// The name is not one a secret may have.
    #[error("invalid secret name `{name}`: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The passphrase or key file does not open this vault.
    #[error("wrong passphrase or key file for the vault at {}", path.display())]
    WrongPassphrase {
        /// The vault file.
        path: PathBuf,
    },
    /// The vault was created with the other kind of key.
    #[error("the vault at {} is opened with {vault_uses}, not {given}", path.display())]
    WrongKeySource {
        /// The vault file.
        path: PathBuf,
        /// What the vault's header asks for.
        vault_uses: &'static str,
        /// What was given.
        given: &'static str,
    },
    /// The vault file cannot be read as a vault; it is left as it is.
    #[error("the vault file {} is corrupt: {detail}", path.display())]
    Corrupt {
        /// The vault file.
        path: PathBuf,
        /// What is wrong, naming the field or entry.
        detail: String,
    },
    /// One entry failed authentication (tampered with, or damaged); the others are fine.
    #[error("entry `{name}` of the vault at {} failed authentication (tampered with or damaged)", path.display())]
    EntryTampered {
        /// The vault file.
        path: PathBuf,
        /// The entry.
        name: String,
    },
    /// Sealed data did not open: changed, moved to another record (its associated data
    /// differs), or sealed under another key.
    #[error(
        "sealed data failed authentication (tampered with, moved, or sealed under another key)"
    )]
    SealBroken,
    /// The vault file was written by a newer version of this program.
    #[error("the vault file {} has version {version}, which this build does not read", path.display())]
    UnsupportedVersion {
        /// The vault file.
        path: PathBuf,
        /// The version in its header.
        version: u64,
    },
    /// `create` found a vault already there.
    #[error("a vault already exists at {}", path.display())]
    AlreadyExists {
        /// The vault file.
        path: PathBuf,
    },
    /// `open` found no vault.
    #[error("no vault at {}", path.display())]
    NoVault {
        /// The vault file looked for.
        path: PathBuf,
    },
    /// The directory given for the vault does not exist.
    #[error("the vault directory {} does not exist", path.display())]
    MissingDirectory {
        /// The directory.
        path: PathBuf,
    },
    /// The key file is unusable (length, encoding or permissions).
    #[error("key file {}: {detail}", path.display())]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Key derivation parameters out of range.
    #[error("invalid key derivation parameters: {detail}")]
    InvalidKdfParams {
        /// What is wrong.
        detail: String,
    },
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The password manager's program is not installed (or not at the configured path).
    #[error("the {backend} program `{program}` was not found")]
    ProgramNotFound {
        /// The backend.
        backend: BackendKind,
        /// The program that was run.
        program: String,
    },
    /// The password manager did not answer in time and was killed.
    #[error("the {backend} program did not answer within {} s", after.as_secs_f32())]
    Timeout {
        /// The backend.
        backend: BackendKind,
        /// The time limit.
        after: Duration,
    },
    /// The password manager is locked or not signed in.
    #[error("the {backend} vault is locked or not signed in: {detail}")]
    Locked {
        /// The backend.
        backend: BackendKind,
        /// Its own message.
        detail: String,
    },
    /// The name matches several items of the password manager.
    #[error("more than one {backend} item matches `{name}`")]
    Ambiguous {
        /// The backend.
        backend: BackendKind,
        /// The name asked for.
        name: String,
    },
    /// The password manager failed for another reason.
    #[error("the {backend} program failed ({status}): {detail}")]
    CommandFailed {
        /// The backend.
        backend: BackendKind,
        /// How it exited.
        status: String,
        /// The first lines of its error output.
        detail: String,
    },
    /// The backend's service cannot be reached, or did not answer in time.
    #[error("the {backend} backend is not available: {detail}")]
    Unavailable {
        /// The backend.
        backend: BackendKind,
        /// Why, without any value.
        detail: String,
    },
    /// The backend cannot do this operation at all (unlike [`VaultError::ReadOnly`], it
    /// may do others that write).
    #[error("the {backend} backend does not support {operation}: {reason}")]
    Unsupported {
        /// The backend.
        backend: BackendKind,
        /// What was attempted.
        operation: &'static str,
        /// Why it cannot be done.
        reason: &'static str,
    },
    /// The backend's service answered with an error.
    #[error("the {backend} backend failed: {detail}")]
    Failed {
        /// The backend.
        backend: BackendKind,
        /// Its own message, which never holds a value.
        detail: String,
    },
    /// The value read is unusable (empty, or not UTF-8).
    #[error("the value of `{name}` from the {backend} backend is {reason}")]
    InvalidValue {
        /// The backend.
        backend: BackendKind,
        /// The name asked for.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl VaultError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> VaultError {
        VaultError::Io {
            context: context.into(),
            source,
        }
    }
}
