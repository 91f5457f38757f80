//! Secret backends (an encrypted file, password managers, the OS keyring, the
//! environment), the scrubber that removes secret values from everything that goes back
//! to a model or into the audit log, and the keys that seal data at rest (the dead-letter
//! queue).
//!
//! This crate must never print, log or return a secret value other than inside a
//! [`Secret`], whose value is read only through `Secret::expose` at its one consumer: no
//! value in an error, a `Debug` output, a command line or a file in plain text.

mod backend;
mod bitwarden;
mod cli;
mod env;
mod error;
mod file;
mod keyring;
mod onepassword;
mod pass;
mod scrub;
mod seal;

pub use backend::Backend;
pub use bitwarden::BitwardenBackend;
pub use carapace_types::Secret;
pub use cli::DEFAULT_TIMEOUT;
pub use env::EnvBackend;
pub use error::{BackendKind, VaultError};
pub use file::{FileVault, KdfParams, KeySource};
pub use keyring::KeyringBackend;
pub use onepassword::OnePasswordBackend;
pub use pass::PassBackend;
pub use scrub::{MIN_SECRET_LEN, REDACTED, Redaction, Scrubber, SharedScrubber, StreamScrubber};
pub use seal::{SealKey, SealedBlob};
