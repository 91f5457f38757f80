use std::fmt;

use carapace_types::Secret;

use crate::{BackendKind, VaultError};

/// A place secrets are read from, and for the file vault written to.
///
/// Calls block (a file read, or a password manager's CLI that may take seconds): call
/// them from a blocking thread. Read-only backends answer `set`, `remove` and `names`
/// with [`VaultError::ReadOnly`].
pub trait Backend: Send + Sync + fmt::Debug {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// The secret stored under `name`.
    fn get(&self, name: &str) -> Result<Secret<String>, VaultError>;

    /// Stores `value` under `name`, replacing what was there.
    fn set(&self, name: &str, value: &Secret<String>) -> Result<(), VaultError> {
        let _ = (name, value);
        Err(VaultError::ReadOnly {
            backend: self.kind(),
            operation: "set",
        })
    }

    /// Removes the secret stored under `name`.
    fn remove(&self, name: &str) -> Result<(), VaultError> {
        let _ = name;
        Err(VaultError::ReadOnly {
            backend: self.kind(),
            operation: "remove",
        })
    }

    /// The names of the stored secrets, sorted.
    fn names(&self) -> Result<Vec<String>, VaultError> {
        Err(VaultError::ReadOnly {
            backend: self.kind(),
            operation: "names",
        })
    }
}

/// Rejects names that cannot be a secret's name anywhere: empty, too long, with control
/// characters or surrounding whitespace.
pub(crate) fn check_name(name: &str) -> Result<(), VaultError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > 256 {
        "it is longer than 256 bytes"
    } else if name.chars().any(char::is_control) {
        "it contains a control character"
    } else if name.trim() != name {
        "it starts or ends with whitespace"
    } else {
        return Ok(());
    };
    Err(VaultError::InvalidName {
        name: name.chars().filter(|c| !c.is_control()).take(64).collect(),
        reason,
    })
}
