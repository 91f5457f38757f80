use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use carapace_types::Secret;
use keyring_core::{CredentialStore, Entry};
use zeroize::Zeroize;

use crate::backend::check_name;
use crate::{Backend, BackendKind, VaultError};

/// The service every entry is stored under; the account is the entry's reference.
pub const SERVICE: &str = "carapace";

/// How long one keyring call may take before it is given up. An unlock prompt nobody
/// answers (a locked collection on a headless machine) would otherwise wait forever.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`KeyringBackend::available`] waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Secrets in the OS keyring: the Secret Service (GNOME Keyring, KWallet, KeePassXC) on
/// the session D-Bus on Linux and the BSDs, the login Keychain on macOS. Entries are
/// stored under service `carapace` with the reference as the account.
///
/// Each call connects afresh (a keyring started after the daemon is found) on a thread
/// of its own, and is given up after a time limit, so no call hangs. Listing is not
/// supported: the store API finds items by attributes, and a search for all of
/// Carapace's items would also unlock every matching collection.
#[derive(Debug, Clone)]
pub struct KeyringBackend {
    timeout: Duration,
}

impl Default for KeyringBackend {
    fn default() -> KeyringBackend {
        KeyringBackend {
            timeout: CALL_TIMEOUT,
        }
    }
}

impl KeyringBackend {
    /// The platform's keyring, with a 10 s limit per call.
    pub fn new() -> KeyringBackend {
        KeyringBackend::default()
    }

    /// The time limit of one call.
    pub fn timeout(mut self, timeout: Duration) -> KeyringBackend {
        self.timeout = timeout;
        self
    }

    /// Whether the keyring answers (on Linux: a Secret Service on the session bus opens a
    /// session), within a few seconds; if not, why.
    pub fn available() -> Result<(), String> {
        let backend = KeyringBackend::new().timeout(PROBE_TIMEOUT);
        backend
            .on_thread(|| open_store().map(drop))
            .map_err(|e| match e {
                VaultError::Unavailable { detail, .. } => detail,
                other => other.to_string(),
            })
    }

    /// Runs `call` on its own thread and waits at most the time limit for it. A call
    /// given up keeps its thread until the D-Bus library's own timeout ends it; whatever
    /// it returns then is dropped (a value in it is wiped).
    fn on_thread<T: Send + 'static>(
        &self,
        call: impl FnOnce() -> Result<T, VaultError> + Send + 'static,
    ) -> Result<T, VaultError> {
        let (tx, rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("keyring".into())
            .spawn(move || {
                let _ = tx.send(call());
            })
            .map_err(|e| VaultError::io("cannot start a thread for the keyring", e))?;
        match rx.recv_timeout(self.timeout) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(VaultError::Unavailable {
                backend: BackendKind::Keyring,
                detail: format!(
                    "no answer within {} s (a locked keyring waiting for an unlock prompt?)",
                    self.timeout.as_secs_f32()
                ),
            }),
            Err(RecvTimeoutError::Disconnected) => Err(VaultError::Failed {
                backend: BackendKind::Keyring,
                detail: "the keyring call panicked".into(),
            }),
        }
    }
}

impl Backend for KeyringBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Keyring
    }

    fn get(&self, name: &str) -> Result<Secret<String>, VaultError> {
        check_name(name)?;
        let account = name.to_string();
        self.on_thread(move || {
            let bytes = entry(&account)?
                .get_secret()
                .map_err(|e| map_error(e, &account))?;
            let value = String::from_utf8(bytes).map_err(|e| {
                e.into_bytes().zeroize();
                invalid_value(&account, "not valid UTF-8")
            })?;
            let value = Secret::new(value);
            if value.expose().is_empty() {
                return Err(invalid_value(&account, "empty"));
            }
            Ok(value)
        })
    }

    fn set(&self, name: &str, value: &Secret<String>) -> Result<(), VaultError> {
        check_name(name)?;
        if value.expose().is_empty() {
            return Err(invalid_value(name, "empty"));
        }
        let account = name.to_string();
        let value = value.clone();
        self.on_thread(move || {
            entry(&account)?
                .set_secret(value.expose().as_bytes())
                .map_err(|e| map_error(e, &account))
        })
    }

    fn remove(&self, name: &str) -> Result<(), VaultError> {
        check_name(name)?;
        let account = name.to_string();
        self.on_thread(move || {
            entry(&account)?
                .delete_credential()
                .map_err(|e| map_error(e, &account))
        })
    }

    fn names(&self) -> Result<Vec<String>, VaultError> {
        Err(VaultError::Unsupported {
            backend: BackendKind::Keyring,
            operation: "names",
            reason: "the keyring cannot list its entries portably; \
                     name them in config.toml under [vault.secrets]",
        })
    }
}

/// The entry for `account` in a freshly opened store.
fn entry(account: &str) -> Result<Entry, VaultError> {
    open_store()?
        .build(SERVICE, account, None)
        .map_err(|e| map_error(e, account))
}

#[cfg(all(
    unix,
    not(any(target_os = "macos", target_os = "ios", target_os = "android"))
))]
fn open_store() -> Result<Arc<CredentialStore>, VaultError> {
    match zbus_secret_service_keyring_store::Store::new() {
        Ok(store) => Ok(store),
        Err(e) => Err(VaultError::Unavailable {
            backend: BackendKind::Keyring,
            detail: format!(
                "no Secret Service answers on the session D-Bus ({}): {}",
                bus_address(),
                platform_detail(&e)
            ),
        }),
    }
}

#[cfg(target_os = "macos")]
fn open_store() -> Result<Arc<CredentialStore>, VaultError> {
    match apple_native_keyring_store::keychain::Store::new() {
        Ok(store) => Ok(store),
        Err(e) => Err(VaultError::Unavailable {
            backend: BackendKind::Keyring,
            detail: format!("the Keychain cannot be opened: {}", platform_detail(&e)),
        }),
    }
}

#[cfg(not(any(
    target_os = "macos",
    all(
        unix,
        not(any(target_os = "macos", target_os = "ios", target_os = "android"))
    )
)))]
fn open_store() -> Result<Arc<CredentialStore>, VaultError> {
    Err(VaultError::Unavailable {
        backend: BackendKind::Keyring,
        detail: "this build has no OS keyring store for this platform".into(),
    })
}

/// Where the session bus is looked for, to say so when it does not answer.
#[cfg(all(
    unix,
    not(any(target_os = "macos", target_os = "ios", target_os = "android"))
))]
fn bus_address() -> String {
    match std::env::var("DBUS_SESSION_BUS_ADDRESS") {
        Ok(a) if !a.is_empty() => format!("DBUS_SESSION_BUS_ADDRESS={a}"),
        _ => "DBUS_SESSION_BUS_ADDRESS is not set".into(),
    }
}

fn invalid_value(account: &str, reason: &'static str) -> VaultError {
    VaultError::InvalidValue {
        backend: BackendKind::Keyring,
        name: account.into(),
        reason,
    }
}

/// The store's error without the data some variants carry (the bytes of an unreadable
/// value are never formatted; they are wiped).
fn platform_detail(e: &keyring_core::Error) -> String {
    use keyring_core::Error as E;
    match e {
        E::PlatformFailure(inner) | E::NoStorageAccess(inner) => inner.to_string(),
        E::BadStoreFormat(detail) | E::NotSupportedByStore(detail) => detail.clone(),
        E::Invalid(what, why) => format!("{what} {why}"),
        E::TooLong(what, limit) => format!("{what} is longer than {limit}"),
        E::NoDefaultStore => "no credential store".into(),
        E::NoEntry => "no such entry".into(),
        E::Ambiguous(_) => "more than one entry matches".into(),
        E::BadEncoding(_) | E::BadDataFormat(..) => "the stored value is unreadable".into(),
        _ => "an error this build does not know".into(),
    }
}

fn map_error(e: keyring_core::Error, account: &str) -> VaultError {
    use keyring_core::Error as E;
    let backend = BackendKind::Keyring;
    match e {
        E::NoEntry => VaultError::NotFound {
            backend,
            name: account.into(),
        },
        E::Ambiguous(_) => VaultError::Ambiguous {
            backend,
            name: account.into(),
        },
        E::BadEncoding(mut bytes) | E::BadDataFormat(mut bytes, _) => {
            bytes.zeroize();
            invalid_value(account, "in a form this build does not read")
        }
        E::NoStorageAccess(inner) => VaultError::Locked {
            backend,
            detail: inner.to_string(),
        },
        other => VaultError::Failed {
            backend,
            detail: platform_detail(&other),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_value_is_wiped_and_never_formatted() {
        let e = map_error(
            keyring_core::Error::BadEncoding(b"hunter2-\xff".to_vec()),
            "acct",
        );
        let shown = e.to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(matches!(e, VaultError::InvalidValue { .. }), "{e:?}");
        assert!(!format!("{e:?}").contains("hunter2"));
    }

    #[test]
    fn a_missing_entry_is_not_found() {
        let e = map_error(keyring_core::Error::NoEntry, "acct");
        assert_eq!(
            e.to_string(),
            "no secret named `acct` in the keyring backend"
        );
    }

    #[test]
    fn listing_is_unsupported_and_says_why() {
        let e = KeyringBackend::new().names().unwrap_err();
        assert!(
            e.to_string()
                .starts_with("the keyring backend does not support names: "),
            "{e}"
        );
    }

    #[test]
    fn bad_names_are_refused_before_any_connection() {
        let backend = KeyringBackend::new();
        assert!(matches!(
            backend.get(""),
            Err(VaultError::InvalidName { .. })
        ));
        assert!(matches!(
            backend.set("a\nb", &Secret::new("v".into())),
            Err(VaultError::InvalidName { .. })
        ));
        assert!(matches!(
            backend.set("ok", &Secret::new(String::new())),
            Err(VaultError::InvalidValue { .. })
        ));
    }
}
