//! The encrypted file vault: `vault.json` in the data directory.
//!
//! Format (JSON, version 1):
//!
//! ```text
//! { "format": "carapace-vault", "version": 1,
//!   "kdf": { "algorithm": "argon2id", "version": 19, "m_cost_kib": 65536, "t_cost": 3,
//!            "p_cost": 1, "salt": BASE64 }          or { "algorithm": "keyfile" },
//!   "check": { "nonce": BASE64, "ciphertext": BASE64 },
//!   "entries": { NAME: { "nonce": BASE64, "ciphertext": BASE64 }, ... } }
//! ```
//!
//! Every value is sealed with AES-256-GCM under a fresh random 96-bit nonce, with the
//! associated data `carapace-vault-v1\0` followed by the entry's name, so a ciphertext
//! moved to another name fails. `check` seals a fixed text, so a wrong key is told apart
//! from a damaged entry. Writers hold an exclusive lock on `vault.lock` around
//! read-modify-write and replace the file by an atomic rename.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use carapace_types::Secret;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize as _, Zeroizing};

use crate::backend::check_name;
use crate::{Backend, BackendKind, SealKey, VaultError};

const FILE_NAME: &str = "vault.json";
const LOCK_NAME: &str = "vault.lock";
const TEMP_NAME: &str = "vault.json.tmp";
const FORMAT: &str = "carapace-vault";
const VERSION: u64 = 1;
const ENTRY_AD: &[u8] = b"carapace-vault-v1\0";
const CHECK_AD: &[u8] = b"carapace-vault-v1-check";
const CHECK_TEXT: &[u8] = b"carapace-vault key check";
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// How the vault's key is obtained.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// Derived from a passphrase with Argon2id.
    Passphrase(Secret<String>),
    /// Read from a file of exactly 32 bytes, or 64 hex characters (a trailing newline is
    /// allowed); the file must not be accessible to group or others.
    KeyFile(PathBuf),
}

impl KeySource {
    fn describe(&self) -> &'static str {
        match self {
            KeySource::Passphrase(_) => "a passphrase",
            KeySource::KeyFile(_) => "a key file",
        }
    }
}

/// Argon2id cost parameters for a passphrase vault. They are stored in the file's header,
/// so a vault is always opened with the costs it was created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB (default 64 MiB).
    pub m_cost_kib: u32,
    /// Passes over the memory (default 3).
    pub t_cost: u32,
    /// Lanes (default 1).
    pub p_cost: u32,
}

impl Default for KdfParams {
    fn default() -> KdfParams {
        KdfParams {
            m_cost_kib: 64 * 1024,
            t_cost: 3,
            p_cost: 1,
        }
    }
}

impl KdfParams {
    /// Cheap costs for tests; never for a real vault.
    pub fn insecure_for_tests() -> KdfParams {
        KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        }
    }

    /// Checks the ranges this crate accepts (also guards `open` against a header that
    /// asks for absurd amounts of memory or time).
    fn check(&self) -> Result<argon2::Params, String> {
        if self.m_cost_kib > 4 * 1024 * 1024 {
            return Err(format!("m_cost_kib {} is above 4 GiB", self.m_cost_kib));
        }
        if !(1..=64).contains(&self.t_cost) {
            return Err(format!("t_cost {} is not between 1 and 64", self.t_cost));
        }
        if !(1..=64).contains(&self.p_cost) {
            return Err(format!("p_cost {} is not between 1 and 64", self.p_cost));
        }
        argon2::Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(32))
            .map_err(|e| e.to_string())
    }
}

/// The encrypted file backend: `vault.json` in a directory the caller gives (the data
/// directory), mode 0600.
///
/// Each call reads the file afresh (writers replace it by rename, so a reader sees the
/// old or the new file, never half of one); `set` and `remove` hold `vault.lock` while
/// they read, change and write, so concurrent writers, in this process or another, lose
/// no update. A file that cannot be parsed is reported as [`VaultError::Corrupt`] and
/// never overwritten.
pub struct FileVault {
    dir: PathBuf,
    path: PathBuf,
    key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for FileVault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileVault")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VaultFile {
    format: String,
    version: u64,
    kdf: KdfHeader,
    check: Sealed,
    entries: BTreeMap<String, Sealed>,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(tag = "algorithm", deny_unknown_fields)]
enum KdfHeader {
    #[serde(rename = "argon2id")]
    Argon2id {
        version: u32,
        m_cost_kib: u32,
        t_cost: u32,
        p_cost: u32,
        salt: String,
    },
    #[serde(rename = "keyfile")]
    KeyFile,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Sealed {
    nonce: String,
    ciphertext: String,
}

impl Sealed {
    /// The nonce and ciphertext, or what is wrong with them.
    fn decode(&self) -> Result<([u8; NONCE_LEN], Vec<u8>), String> {
        let nonce = B64
            .decode(&self.nonce)
            .map_err(|e| format!("nonce is not base64 ({e})"))?;
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|n: Vec<u8>| format!("nonce is {} bytes, not {NONCE_LEN}", n.len()))?;
        let ciphertext = B64
            .decode(&self.ciphertext)
            .map_err(|e| format!("ciphertext is not base64 ({e})"))?;
        if ciphertext.len() < TAG_LEN {
            return Err(format!(
                "ciphertext is {} bytes, shorter than its tag",
                ciphertext.len()
            ));
        }
        Ok((nonce, ciphertext))
    }
}

impl FileVault {
    /// The path of the vault file in `dir`.
    pub fn file_path(dir: &Path) -> PathBuf {
        dir.join(FILE_NAME)
    }

    /// The entry names of the vault in `dir`, read without the key: names are not
    /// secret (they are the associated data of each entry), values are.
    pub fn list_names(dir: &Path) -> Result<Vec<String>, VaultError> {
        Ok(read_vault(&Self::file_path(dir))?
            .entries
            .into_keys()
            .collect())
    }

    /// True when `dir` holds a vault file (whether or not it is readable).
    pub fn exists(dir: &Path) -> bool {
        fs::symlink_metadata(Self::file_path(dir)).is_ok()
    }

    /// Creates a new, empty vault in `dir` (which must exist) with the default Argon2id
    /// costs. Fails with [`VaultError::AlreadyExists`] if there is one.
    pub fn create(dir: &Path, key: KeySource) -> Result<FileVault, VaultError> {
        Self::create_with_params(dir, key, KdfParams::default())
    }

    /// Like [`FileVault::create`] with chosen Argon2id costs (ignored for a key file).
    pub fn create_with_params(
        dir: &Path,
        key: KeySource,
        params: KdfParams,
    ) -> Result<FileVault, VaultError> {
        check_dir(dir)?;
        let path = Self::file_path(dir);
        // Checked again under the lock; this spares the key derivation.
        if Self::exists(dir) {
            return Err(VaultError::AlreadyExists { path });
        }
        let (kdf, key) = match &key {
            KeySource::Passphrase(passphrase) => {
                if passphrase.expose().is_empty() {
                    return Err(VaultError::InvalidValue {
                        backend: BackendKind::File,
                        name: "passphrase".into(),
                        reason: "empty",
                    });
                }
                params
                    .check()
                    .map_err(|detail| VaultError::InvalidKdfParams { detail })?;
                let mut salt = [0u8; SALT_LEN];
                random(&mut salt)?;
                let header = KdfHeader::Argon2id {
                    version: 0x13,
                    m_cost_kib: params.m_cost_kib,
                    t_cost: params.t_cost,
                    p_cost: params.p_cost,
                    salt: B64.encode(salt),
                };
                let key = derive(passphrase, &params, &salt)?;
                (header, key)
            }
            KeySource::KeyFile(file) => (KdfHeader::KeyFile, read_key_file(file)?),
        };
        let vault = FileVault {
            dir: dir.to_path_buf(),
            path,
            key,
        };
        let file = VaultFile {
            format: FORMAT.into(),
            version: VERSION,
            kdf,
            check: vault.seal(CHECK_AD, CHECK_TEXT)?,
            entries: BTreeMap::new(),
        };
        let _lock = vault.lock()?;
        if Self::exists(dir) {
            return Err(VaultError::AlreadyExists { path: vault.path });
        }
        vault.write(&file)?;
        Ok(vault)
    }

    /// Opens the vault in `dir`. A wrong passphrase or key file gives
    /// [`VaultError::WrongPassphrase`]; a damaged file [`VaultError::Corrupt`].
    pub fn open(dir: &Path, key: KeySource) -> Result<FileVault, VaultError> {
        check_dir(dir)?;
        let path = Self::file_path(dir);
        let file = read_vault(&path)?;
        let key = match (&file.kdf, &key) {
            (
                KdfHeader::Argon2id {
                    m_cost_kib,
                    t_cost,
                    p_cost,
                    salt,
                    ..
                },
                KeySource::Passphrase(passphrase),
            ) => {
                let params = KdfParams {
                    m_cost_kib: *m_cost_kib,
                    t_cost: *t_cost,
                    p_cost: *p_cost,
                };
                let salt = B64.decode(salt).map_err(|_| corrupt(&path, "kdf salt"))?;
                derive(passphrase, &params, &salt)?
            }
            (KdfHeader::KeyFile, KeySource::KeyFile(file)) => read_key_file(file)?,
            (header, given) => {
                return Err(VaultError::WrongKeySource {
                    path,
                    vault_uses: match header {
                        KdfHeader::Argon2id { .. } => "a passphrase",
                        KdfHeader::KeyFile => "a key file",
                    },
                    given: given.describe(),
                });
            }
        };
        let vault = FileVault {
            dir: dir.to_path_buf(),
            path,
            key,
        };
        vault.verify(&file)?;
        Ok(vault)
    }

    /// The vault file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A key for sealing data at rest for one `purpose` (like `dead-letters`), derived
    /// from this vault's key with HKDF-SHA256; see [`crate::SealKey`]. It opens no vault
    /// entry and no other purpose's data.
    pub fn subkey(&self, purpose: &str) -> SealKey {
        SealKey::derive(&self.key, purpose)
    }

    /// Reads and parses the file and checks that this vault's key opens it.
    fn load(&self) -> Result<VaultFile, VaultError> {
        let file = read_vault(&self.path)?;
        self.verify(&file)?;
        Ok(file)
    }

    fn verify(&self, file: &VaultFile) -> Result<(), VaultError> {
        let (nonce, ciphertext) = file
            .check
            .decode()
            .map_err(|detail| corrupt(&self.path, &format!("key check: {detail}")))?;
        match self.unseal(CHECK_AD, &nonce, &ciphertext) {
            Some(text) if text.as_slice() == CHECK_TEXT => Ok(()),
            _ => Err(VaultError::WrongPassphrase {
                path: self.path.clone(),
            }),
        }
    }

    fn seal(&self, ad: &[u8], plaintext: &[u8]) -> Result<Sealed, VaultError> {
        let mut nonce = [0u8; NONCE_LEN];
        random(&mut nonce)?;
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.key[..]));
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: ad,
                },
            )
            .map_err(|_| VaultError::io("cannot encrypt", io::Error::other("aes-gcm failed")))?;
        Ok(Sealed {
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(ciphertext),
        })
    }

    fn unseal(
        &self,
        ad: &[u8],
        nonce: &[u8; NONCE_LEN],
        ciphertext: &[u8],
    ) -> Option<Zeroizing<Vec<u8>>> {
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.key[..]));
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: ad,
                },
            )
            .ok()
            .map(Zeroizing::new)
    }

    fn lock(&self) -> Result<File, VaultError> {
        let path = self.dir.join(LOCK_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| VaultError::io(format!("cannot open {}", path.display()), e))?;
        file.lock()
            .map_err(|e| VaultError::io(format!("cannot lock {}", path.display()), e))?;
        // Released when the file is closed.
        Ok(file)
    }

    /// Replaces the vault file: a temporary file in the same directory, synced, renamed
    /// over the old one, then the directory synced. Call with the lock held.
    fn write(&self, file: &VaultFile) -> Result<(), VaultError> {
        let json = serde_json::to_vec_pretty(file).map_err(|e| {
            VaultError::io(
                "cannot serialise the vault",
                io::Error::other(e.to_string()),
            )
        })?;
        let temp = self.dir.join(TEMP_NAME);
        let io_err = |what: &str, e| VaultError::io(format!("{what} {}", temp.display()), e);
        // A stale temporary file from a crash: we hold the lock, so it is nobody's.
        match fs::remove_file(&temp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("cannot remove", e)),
        }
        let result = (|| {
            let mut out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)
                .map_err(|e| io_err("cannot create", e))?;
            out.write_all(&json)
                .and_then(|()| out.sync_all())
                .map_err(|e| io_err("cannot write", e))?;
            drop(out);
            fail_point()?;
            fs::rename(&temp, &self.path).map_err(|e| {
                VaultError::io(format!("cannot replace {}", self.path.display()), e)
            })?;
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| VaultError::io(format!("cannot sync {}", self.dir.display()), e))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }
}

impl Backend for FileVault {
    fn kind(&self) -> BackendKind {
        BackendKind::File
    }

    fn get(&self, name: &str) -> Result<Secret<String>, VaultError> {
        check_name(name)?;
        let file = self.load()?;
        let sealed = file.entries.get(name).ok_or_else(|| VaultError::NotFound {
            backend: BackendKind::File,
            name: name.into(),
        })?;
        let (nonce, ciphertext) = sealed
            .decode()
            .map_err(|detail| corrupt(&self.path, &format!("entry `{name}`: {detail}")))?;
        let mut plaintext = self
            .unseal(&entry_ad(name), &nonce, &ciphertext)
            .ok_or_else(|| VaultError::EntryTampered {
                path: self.path.clone(),
                name: name.into(),
            })?;
        match String::from_utf8(std::mem::take(&mut *plaintext)) {
            Ok(value) => Ok(Secret::new(value)),
            Err(e) => {
                e.into_bytes().zeroize();
                Err(VaultError::InvalidValue {
                    backend: BackendKind::File,
                    name: name.into(),
                    reason: "not valid UTF-8",
                })
            }
        }
    }

    fn set(&self, name: &str, value: &Secret<String>) -> Result<(), VaultError> {
        check_name(name)?;
        if value.expose().is_empty() {
            return Err(VaultError::InvalidValue {
                backend: BackendKind::File,
                name: name.into(),
                reason: "empty",
            });
        }
        let _lock = self.lock()?;
        let mut file = self.load()?;
        let sealed = self.seal(&entry_ad(name), value.expose().as_bytes())?;
        file.entries.insert(name.into(), sealed);
        self.write(&file)
    }

    fn remove(&self, name: &str) -> Result<(), VaultError> {
        check_name(name)?;
        let _lock = self.lock()?;
        let mut file = self.load()?;
        if file.entries.remove(name).is_none() {
            return Err(VaultError::NotFound {
                backend: BackendKind::File,
                name: name.into(),
            });
        }
        self.write(&file)
    }

    fn names(&self) -> Result<Vec<String>, VaultError> {
        Ok(self.load()?.entries.into_keys().collect())
    }
}

fn entry_ad(name: &str) -> Vec<u8> {
    let mut ad = ENTRY_AD.to_vec();
    ad.extend_from_slice(name.as_bytes());
    ad
}

fn corrupt(path: &Path, detail: &str) -> VaultError {
    VaultError::Corrupt {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

fn check_dir(dir: &Path) -> Result<(), VaultError> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(VaultError::MissingDirectory {
            path: dir.to_path_buf(),
        })
    }
}

fn random(buf: &mut [u8]) -> Result<(), VaultError> {
    getrandom::fill(buf)
        .map_err(|e| VaultError::io("cannot get random bytes", io::Error::other(e.to_string())))
}

fn derive(
    passphrase: &Secret<String>,
    params: &KdfParams,
    salt: &[u8],
) -> Result<Zeroizing<[u8; 32]>, VaultError> {
    let argon_params = params
        .check()
        .map_err(|detail| VaultError::InvalidKdfParams { detail })?;
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon_params,
    );
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.expose().as_bytes(), salt, &mut key[..])
        .map_err(|e| VaultError::InvalidKdfParams {
            detail: e.to_string(),
        })?;
    Ok(key)
}

fn read_key_file(path: &Path) -> Result<Zeroizing<[u8; 32]>, VaultError> {
    let err = |detail: String| VaultError::KeyFile {
        path: path.to_path_buf(),
        detail,
    };
    let meta = fs::metadata(path).map_err(|e| err(format!("cannot be read: {e}")))?;
    if !meta.is_file() {
        return Err(err("is not a regular file".into()));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(err(format!(
            "is accessible to group or others (mode {mode:03o}); run chmod 600 on it"
        )));
    }
    let bytes = Zeroizing::new(fs::read(path).map_err(|e| err(format!("cannot be read: {e}")))?);
    let mut key = Zeroizing::new([0u8; 32]);
    match bytes.len() {
        32 => key.copy_from_slice(&bytes),
        64 | 65 => {
            let text = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
            hex::decode_to_slice(text, &mut key[..])
                .map_err(|_| err("holds 64 characters that are not all hex digits".into()))?;
        }
        n => {
            return Err(err(format!(
                "must hold exactly 32 bytes or 64 hex characters, not {n} bytes"
            )));
        }
    }
    Ok(key)
}

/// Reads and parses a vault file, naming what is wrong with a damaged one.
fn read_vault(path: &Path) -> Result<VaultFile, VaultError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(VaultError::NoVault {
                path: path.to_path_buf(),
            });
        }
        Err(e) => return Err(VaultError::io(format!("cannot read {}", path.display()), e)),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(corrupt(path, "the file is empty"));
    }
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        let hint = if e.is_eof() { " (truncated?)" } else { "" };
        corrupt(path, &format!("not valid JSON{hint}: {e}"))
    })?;
    if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(corrupt(
            path,
            "not a carapace vault (the `format` field is missing or wrong)",
        ));
    }
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(VERSION) => {}
        Some(version) if version > VERSION => {
            return Err(VaultError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
            });
        }
        _ => return Err(corrupt(path, "the `version` field is missing or invalid")),
    }
    let file: VaultFile =
        serde_json::from_value(value).map_err(|e| corrupt(path, &e.to_string()))?;
    if let KdfHeader::Argon2id {
        version,
        m_cost_kib,
        t_cost,
        p_cost,
        salt,
    } = &file.kdf
    {
        if *version != 0x13 {
            return Err(corrupt(
                path,
                &format!("kdf: argon2 version {version} is not 19"),
            ));
        }
        let params = KdfParams {
            m_cost_kib: *m_cost_kib,
            t_cost: *t_cost,
            p_cost: *p_cost,
        };
        params
            .check()
            .map_err(|detail| corrupt(path, &format!("kdf: {detail}")))?;
        match B64.decode(salt) {
            Ok(s) if s.len() == SALT_LEN => {}
            _ => return Err(corrupt(path, "kdf: the salt is not 16 bytes of base64")),
        }
    }
    Ok(file)
}

#[cfg(not(test))]
fn fail_point() -> Result<(), VaultError> {
    Ok(())
}

#[cfg(test)]
thread_local! {
    /// When set, the next write fails after the temporary file is written and before
    /// it is renamed.
    static FAIL_BEFORE_RENAME: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(test)]
fn fail_point() -> Result<(), VaultError> {
    if FAIL_BEFORE_RENAME.with(|f| f.replace(false)) {
        return Err(VaultError::io(
            "injected failure",
            io::Error::other("disk full"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_intact_and_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = KeySource::Passphrase(Secret::new("correct horse".into()));
        let vault = FileVault::create_with_params(dir.path(), key, KdfParams::insecure_for_tests())
            .expect("create");
        vault
            .set("a", &Secret::new("value-a".into()))
            .expect("set a");
        let before = fs::read(vault.path()).expect("read");

        FAIL_BEFORE_RENAME.with(|f| f.set(true));
        let err = vault
            .set("b", &Secret::new("value-b".into()))
            .expect_err("the write fails");
        assert!(err.to_string().contains("injected failure"), "{err}");

        assert_eq!(fs::read(vault.path()).expect("read"), before);
        assert!(!dir.path().join(TEMP_NAME).exists());
        assert_eq!(vault.get("a").expect("get a").expose(), "value-a");
        assert!(matches!(vault.get("b"), Err(VaultError::NotFound { .. })));
        // And the vault still takes writes.
        vault
            .set("b", &Secret::new("value-b".into()))
            .expect("set b");
        assert_eq!(vault.names().expect("names"), ["a", "b"]);
    }

    #[test]
    fn the_default_costs_are_the_documented_ones() {
        assert_eq!(
            KdfParams::default(),
            KdfParams {
                m_cost_kib: 65536,
                t_cost: 3,
                p_cost: 1
            }
        );
        assert!(KdfParams::default().check().is_ok());
        assert!(
            KdfParams {
                m_cost_kib: 64 << 20,
                ..KdfParams::default()
            }
            .check()
            .is_err()
        );
    }
}
