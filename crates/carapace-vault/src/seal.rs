//! Sealing data at rest that is not a secret entry but must be kept as carefully: the
//! dead-letter queue holds outbound messages the Gate blocked, and a blocked message is
//! exactly what must not lie around in plain text (it may carry what an injected agent
//! tried to leak). The store keeps only what [`SealKey::seal`] returns; the text comes
//! back only through [`SealKey::open`], in the daemon, for the owner.
//!
//! A [`SealKey`] comes from one of two places:
//!
//! - [`FileVault::subkey`](crate::FileVault::subkey): when the owner's vault is the
//!   encrypted file, the key is derived from the vault's own key with HKDF-SHA256 and a
//!   purpose (`info` = `carapace subkey v1: ` + purpose), so the dead letters are sealed
//!   with the vault key, open only while the vault is unlocked, and a subkey for one
//!   purpose neither opens vault entries nor another purpose's data.
//! - [`SealKey::load_or_create`]: a backend without a key of its own (the environment,
//!   `pass`, `bw`, `op`, the OS keyring) has nothing to derive from, so the key is a file
//!   of 32 random bytes in the data directory (which is 0700), created 0600 and refused
//!   when group or others may read it. It protects against a copied database, not against
//!   someone who can read the data directory.
//!
//! Each seal is AES-256-GCM under a fresh random 96-bit nonce, with associated data the
//! caller chooses to bind the ciphertext to its record, so a ciphertext moved to another
//! record does not open.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::VaultError;

/// The prefix of the HKDF `info` of every subkey; the purpose follows it.
const SUBKEY_INFO: &str = "carapace subkey v1: ";
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// A 256-bit key for sealing data at rest. Its `Debug` shows nothing of the key.
pub struct SealKey(Zeroizing<[u8; KEY_LEN]>);

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(..)")
    }
}

/// What [`SealKey::seal`] makes: the nonce and the ciphertext with its tag. Neither is
/// secret; both are needed to open it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedBlob {
    /// The random 96-bit AES-GCM nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The ciphertext followed by the 16-byte tag.
    pub ciphertext: Vec<u8>,
}

impl SealedBlob {
    /// A blob from stored parts; `None` when the nonce is not 12 bytes.
    pub fn from_parts(nonce: &[u8], ciphertext: Vec<u8>) -> Option<SealedBlob> {
        Some(SealedBlob {
            nonce: nonce.try_into().ok()?,
            ciphertext,
        })
    }
}

impl SealKey {
    /// HKDF-SHA256 of `master` (no salt: the master key is already uniformly random)
    /// with `info` = `carapace subkey v1: ` + `purpose`.
    pub(crate) fn derive(master: &[u8; KEY_LEN], purpose: &str) -> SealKey {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        let mut info = Vec::with_capacity(SUBKEY_INFO.len() + purpose.len());
        info.extend_from_slice(SUBKEY_INFO.as_bytes());
        info.extend_from_slice(purpose.as_bytes());
        Hkdf::<Sha256>::new(None, master)
            .expand(&info, &mut key[..])
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        SealKey(key)
    }

    /// The key in the file at `path`, or a new random key written there when there is
    /// none (mode 0600, never replacing a file: a new key is written beside it and linked
    /// into place, so a reader never sees half a key and two processes agree on one).
    /// A key file that group or others may access, that is not a regular file or that is
    /// not exactly 32 bytes is refused, never repaired: the data sealed with it would be
    /// lost.
    pub fn load_or_create(path: &Path) -> Result<SealKey, VaultError> {
        match read_key(path) {
            Err(VaultError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        create_key(path)?;
        read_key(path)
    }

    /// Seals `plaintext` bound to `ad`: the same `ad` is needed to open it.
    pub fn seal(&self, ad: &[u8], plaintext: &[u8]) -> Result<SealedBlob, VaultError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| {
            VaultError::io("cannot get random bytes", io::Error::other(e.to_string()))
        })?;
        let ciphertext = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: ad,
                },
            )
            .map_err(|_| VaultError::io("cannot encrypt", io::Error::other("aes-gcm failed")))?;
        Ok(SealedBlob { nonce, ciphertext })
    }

    /// Opens a blob sealed under this key with the same `ad`. Anything else (another key,
    /// other associated data, a changed byte) is [`VaultError::SealBroken`].
    pub fn open(&self, ad: &[u8], blob: &SealedBlob) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        if blob.ciphertext.len() < TAG_LEN {
            return Err(VaultError::SealBroken);
        }
        self.cipher()
            .decrypt(
                Nonce::from_slice(&blob.nonce),
                Payload {
                    msg: &blob.ciphertext,
                    aad: ad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| VaultError::SealBroken)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.0[..]))
    }
}

fn key_file_error(path: &Path, detail: impl Into<String>) -> VaultError {
    VaultError::KeyFile {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Reads a key file, checking what was opened (not the path again) for its kind, mode
/// and length.
fn read_key(path: &Path) -> Result<SealKey, VaultError> {
    let mut file = File::open(path)
        .map_err(|e| VaultError::io(format!("cannot open {}", path.display()), e))?;
    let meta = file
        .metadata()
        .map_err(|e| VaultError::io(format!("cannot stat {}", path.display()), e))?;
    if !meta.is_file() {
        return Err(key_file_error(path, "is not a regular file"));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(key_file_error(
            path,
            format!("is accessible to group or others (mode {mode:03o}); run chmod 600 on it"),
        ));
    }
    if meta.len() != KEY_LEN as u64 {
        return Err(key_file_error(
            path,
            format!("must hold exactly {KEY_LEN} bytes, not {}", meta.len()),
        ));
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    file.read_exact(&mut key[..])
        .map_err(|e| VaultError::io(format!("cannot read {}", path.display()), e))?;
    // A file that grew between the stat and the read is not a key either.
    let mut extra = [0u8; 1];
    if file
        .read(&mut extra)
        .map_err(|e| VaultError::io(format!("cannot read {}", path.display()), e))?
        != 0
    {
        return Err(key_file_error(path, "grew while it was read"));
    }
    Ok(SealKey(key))
}

/// Writes 32 random bytes to a new file beside `path` (O_EXCL, 0600), syncs it and
/// hard-links it to `path`, which fails if `path` appeared meanwhile: then the other
/// writer's key stands. The directory is synced so the key survives a crash.
fn create_key(path: &Path) -> Result<(), VaultError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix)
        .map_err(|e| VaultError::io("cannot get random bytes", io::Error::other(e.to_string())))?;
    let mut temp_name = path.file_name().unwrap_or_default().to_owned();
    temp_name.push(format!(".new-{}", hex::encode(suffix)));
    let temp = dir.join(temp_name);
    let result = (|| {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(&mut key[..]).map_err(|e| {
            VaultError::io("cannot get random bytes", io::Error::other(e.to_string()))
        })?;
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| VaultError::io(format!("cannot create {}", temp.display()), e))?;
        out.write_all(&key[..])
            .and_then(|()| out.sync_all())
            .map_err(|e| VaultError::io(format!("cannot write {}", temp.display()), e))?;
        match fs::hard_link(&temp, path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(VaultError::io(
                    format!("cannot create {}", path.display()),
                    e,
                ));
            }
        }
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| VaultError::io(format!("cannot sync {}", dir.display()), e))
    })();
    let _ = fs::remove_file(&temp);
    result
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn key(byte: u8) -> SealKey {
        SealKey(Zeroizing::new([byte; KEY_LEN]))
    }

    #[test]
    fn seal_opens_with_the_same_key_and_associated_data_only() {
        let k = key(1);
        let blob = k.seal(b"dl_1\nimsg\n+1415", b"the text").unwrap();
        assert_eq!(blob.ciphertext.len(), b"the text".len() + TAG_LEN);
        assert_eq!(
            k.open(b"dl_1\nimsg\n+1415", &blob).unwrap().as_slice(),
            b"the text"
        );
        // Two seals of the same text differ (fresh nonce).
        assert_ne!(k.seal(b"ad", b"x").unwrap(), k.seal(b"ad", b"x").unwrap());

        // Moved to another record, another key, a flipped byte, a cut tag: all refused.
        assert!(matches!(
            k.open(b"dl_2\nimsg\n+1415", &blob),
            Err(VaultError::SealBroken)
        ));
        assert!(matches!(
            key(2).open(b"dl_1\nimsg\n+1415", &blob),
            Err(VaultError::SealBroken)
        ));
        let mut tampered = blob.clone();
        tampered.ciphertext[0] ^= 1;
        assert!(matches!(
            k.open(b"dl_1\nimsg\n+1415", &tampered),
            Err(VaultError::SealBroken)
        ));
        let mut other_nonce = blob.clone();
        other_nonce.nonce[11] ^= 1;
        assert!(k.open(b"dl_1\nimsg\n+1415", &other_nonce).is_err());
        let short = SealedBlob::from_parts(&blob.nonce, vec![0; 3]).unwrap();
        assert!(matches!(
            k.open(b"dl_1\nimsg\n+1415", &short),
            Err(VaultError::SealBroken)
        ));
        assert!(SealedBlob::from_parts(&[0; 11], Vec::new()).is_none());
    }

    #[test]
    fn a_swapped_ciphertext_does_not_open_as_the_other_row() {
        // Two rows as the dead-letter queue binds them: id \n channel \n recipient.
        let k = SealKey::derive(&[7; KEY_LEN], "dead-letters");
        let a = k.seal(b"dl_aaaa\nimsg\n+14155550100", b"to alice").unwrap();
        let b = k.seal(b"dl_bbbb\nimsg\n+14155550199", b"to bob").unwrap();
        assert!(k.open(b"dl_bbbb\nimsg\n+14155550199", &a).is_err());
        assert!(k.open(b"dl_aaaa\nimsg\n+14155550100", &b).is_err());
        // The same id with another recipient (a row edited to send elsewhere) too.
        assert!(k.open(b"dl_aaaa\nimsg\n+14155550199", &a).is_err());
        assert!(k.open(b"dl_aaaa\nsignal\n+14155550100", &a).is_err());
    }

    #[test]
    fn subkeys_are_bound_to_their_purpose_and_master() {
        let master = [9; KEY_LEN];
        let dl = SealKey::derive(&master, "dead-letters");
        assert_eq!(*dl.0, *SealKey::derive(&master, "dead-letters").0);
        assert_ne!(*dl.0, *SealKey::derive(&master, "dead-letters2").0);
        assert_ne!(*dl.0, *SealKey::derive(&[8; KEY_LEN], "dead-letters").0);
        assert_ne!(*dl.0, master);
        let blob = dl.seal(b"", b"x").unwrap();
        assert!(SealKey::derive(&master, "other").open(b"", &blob).is_err());
        assert_eq!(format!("{dl:?}"), "SealKey(..)");
    }

    #[test]
    fn a_file_vault_gives_the_same_subkey_each_time_it_is_opened() {
        use crate::{FileVault, KdfParams, KeySource, Secret};
        let dir = tempfile::tempdir().unwrap();
        let pass = || KeySource::Passphrase(Secret::new("correct horse".into()));
        let vault =
            FileVault::create_with_params(dir.path(), pass(), KdfParams::insecure_for_tests())
                .unwrap();
        let blob = vault
            .subkey("dead-letters")
            .seal(b"ad", b"held text")
            .unwrap();
        drop(vault);
        let vault = FileVault::open(dir.path(), pass()).unwrap();
        let text = vault.subkey("dead-letters").open(b"ad", &blob).unwrap();
        assert_eq!(text.as_slice(), b"held text");
        assert!(vault.subkey("other").open(b"ad", &blob).is_err());
    }

    #[test]
    fn subkey_matches_the_rfc_5869_construction() {
        // HKDF-SHA256 with no salt is HMAC(HMAC(0^32, ikm), info || 0x01) for one block.
        use hkdf::hmac::{Hmac, Mac};
        let master = [3u8; KEY_LEN];
        let mut extract = <Hmac<Sha256> as Mac>::new_from_slice(&[0u8; 32]).unwrap();
        extract.update(&master);
        let prk = extract.finalize().into_bytes();
        let mut expand = <Hmac<Sha256> as Mac>::new_from_slice(&prk).unwrap();
        expand.update(b"carapace subkey v1: dead-letters\x01");
        let okm = expand.finalize().into_bytes();
        assert_eq!(*SealKey::derive(&master, "dead-letters").0, okm[..]);
    }

    #[test]
    fn a_key_file_is_created_private_once_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead-letters.key");
        let first = SealKey::load_or_create(&path).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        let again = SealKey::load_or_create(&path).unwrap();
        assert_eq!(*first.0, *again.0);
        // No temporary file is left beside it.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["dead-letters.key"]);
    }

    #[test]
    fn a_key_file_others_can_read_or_of_the_wrong_length_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        SealKey::load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = SealKey::load_or_create(&path).unwrap_err();
        assert!(err.to_string().contains("mode 640"), "{err}");

        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, [0u8; 33]).unwrap();
        let err = SealKey::load_or_create(&path).unwrap_err();
        assert!(err.to_string().contains("not 33"), "{err}");
        assert_eq!(fs::read(&path).unwrap().len(), 33, "never replaced");

        let sub = dir.path().join("d");
        fs::create_dir(&sub).unwrap();
        assert!(SealKey::load_or_create(&sub).is_err());
    }
}
