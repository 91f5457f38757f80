//! `cara vault`: store, list and remove secrets, and the vault the daemon reads them from.
//!
//! No command prints a value: `set` reads it from a prompt without echo or from standard
//! input (never from the command line, where `ps` and shell history would show it), and
//! `list` shows names, backends and where each is injected. `set` and `rm` write to the
//! encrypted file or to the OS keyring; the other backends are read-only.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use carapace_gate::{SecretSource, SharedScrubber};
use carapace_vault::{
    Backend, BitwardenBackend, EnvBackend, FileVault, KeySource, KeyringBackend,
    OnePasswordBackend, PassBackend, Secret, VaultError,
};

use crate::config::vault::{BackendKind, check_entry_name};
use crate::config::{self, Config};
use crate::datadir::DataDir;

/// Environment variables `cara vault import-env` looks for when given no names.
const KNOWN_VARIABLES: &[&str] = &[
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "VENICE_API_KEY",
    "OPENROUTER_API_KEY",
    "GROQ_API_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "SLACK_BOT_TOKEN",
    "TELEGRAM_BOT_TOKEN",
];

/// The passphrase variable for unattended daemons.
pub const PASSPHRASE_VAR: &str = "CARAPACE_VAULT_PASSPHRASE";

/// How to unlock the vault without asking: the key file, or the passphrase variable.
pub fn unattended_key(file: &Config) -> Option<KeySource> {
    if let Some(k) = &file.vault.key_file {
        return Some(KeySource::KeyFile(PathBuf::from(k.get_ref())));
    }
    std::env::var(PASSPHRASE_VAR)
        .ok()
        .filter(|p| !p.is_empty())
        .map(|p| KeySource::Passphrase(Secret::new(p)))
}

/// The key: unattended if possible, else asked at the terminal (twice when `creating`).
fn key(file: &Config, creating: bool) -> anyhow::Result<KeySource> {
    if let Some(k) = unattended_key(file) {
        return Ok(k);
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "the vault is locked: set {PASSPHRASE_VAR}, set vault.key_file in config.toml, or run this in a terminal"
        );
    }
    let first = rpassword::prompt_password(if creating {
        "new vault passphrase: "
    } else {
        "vault passphrase: "
    })?;
    if creating {
        if first.chars().count() < 8 {
            bail!("a vault passphrase has at least 8 characters");
        }
        let again = rpassword::prompt_password("repeat the passphrase: ")?;
        if again != first {
            bail!("the passphrases differ; nothing was stored");
        }
    }
    Ok(KeySource::Passphrase(Secret::new(first)))
}

fn open_or_create(dd: &DataDir, file: &Config) -> anyhow::Result<FileVault> {
    dd.prepare()?;
    if FileVault::exists(dd.root()) {
        Ok(FileVault::open(dd.root(), key(file, false)?)?)
    } else {
        let vault = FileVault::create(dd.root(), key(file, true)?)?;
        eprintln!(
            "cara: created the encrypted vault {}",
            FileVault::file_path(dd.root()).display()
        );
        Ok(vault)
    }
}

/// Reads a value without echo at a terminal, or all of standard input otherwise (one
/// trailing newline removed).
fn read_value(name: &str) -> anyhow::Result<Secret<String>> {
    let value = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("value of {name} (not shown): "))?
    } else {
        let mut v = String::new();
        std::io::stdin()
            .read_to_string(&mut v)
            .context("cannot read the value from standard input")?;
        if v.ends_with('\n') {
            v.pop();
            if v.ends_with('\r') {
                v.pop();
            }
        }
        v
    };
    if value.is_empty() {
        bail!("the value is empty; nothing was stored");
    }
    Ok(Secret::new(value))
}

fn require_file_entry(file: &Config, name: &str) -> anyhow::Result<()> {
    writable_entry(file, name, None).map(drop)
}

/// The writable store of `name`: the one `--backend` names, else the one its
/// `[vault.secrets]` table names, else the file. The two must agree, and a read-only
/// backend is refused.
fn writable_entry(
    file: &Config,
    name: &str,
    flag: Option<BackendKind>,
) -> anyhow::Result<config::vault::EntrySettings> {
    check_entry_name(name).map_err(|p| anyhow::anyhow!(p))?;
    let mut entry = file.vault.entry(name);
    let configured = file
        .vault
        .secrets
        .get(name)
        .is_some_and(|s| s.backend.is_some());
    if let Some(flag) = flag
        && flag != entry.backend
    {
        if configured {
            bail!(
                "`{name}` is kept in {} (config.toml, [vault.secrets.{name}]), not {}; change it there",
                entry.backend.config_name(),
                flag.config_name()
            );
        }
        entry.backend = flag;
    }
    if !matches!(entry.backend, BackendKind::File | BackendKind::Keyring) {
        bail!(
            "`{name}` is kept in {} (config.toml, [vault.secrets.{name}]); change it there",
            entry.backend.config_name()
        );
    }
    Ok(entry)
}

/// Fails fast, before a value is asked for, when the OS keyring does not answer.
fn require_keyring() -> anyhow::Result<()> {
    KeyringBackend::available().map_err(|why| {
        anyhow::anyhow!(
            "the OS keyring is not available: {why}; store the secret in the encrypted file instead (without --backend keyring)"
        )
    })
}

pub fn set(dd: &DataDir, name: &str, backend: Option<BackendKind>) -> anyhow::Result<ExitCode> {
    let file = config::load(&dd.config())?;
    let entry = writable_entry(&file, name, backend)?;
    if entry.backend == BackendKind::Keyring {
        require_keyring()?;
        let value = read_value(name)?;
        KeyringBackend::new().set(&entry.reference, &value)?;
        println!(
            "stored `{name}` in the OS keyring (service carapace, account {})",
            entry.reference
        );
        if file.vault.entry(name).backend != BackendKind::Keyring {
            println!(
                "for the gateway to read it from there, say so in config.toml:\n\
                 \x20 [vault.secrets.{name}]\n\
                 \x20 backend = \"keyring\""
            );
        }
    } else {
        let vault = open_or_create(dd, &file)?;
        let value = read_value(name)?;
        vault.set(name, &value)?;
        println!("stored `{name}` in the vault");
    }
    if file.vault.hosts_of(name).is_empty() {
        println!(
            "to let a tool use it, name the hosts that receive it in config.toml:\n\
             \x20 [[vault.inject]]\n\
             \x20 secret = \"{name}\"\n\
             \x20 hosts = [\"api.example.com\"]\n\
             \x20 header = \"Authorization\"\n\
             \x20 format = \"Bearer {{}}\""
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn rm(dd: &DataDir, name: &str, backend: Option<BackendKind>) -> anyhow::Result<ExitCode> {
    let file = config::load(&dd.config())?;
    let entry = writable_entry(&file, name, backend)?;
    if entry.backend == BackendKind::Keyring {
        require_keyring()?;
        return match KeyringBackend::new().remove(&entry.reference) {
            Ok(()) => {
                println!(
                    "removed `{name}` from the OS keyring (account {})",
                    entry.reference
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(VaultError::NotFound { .. }) => bail!(
                "there is no secret `{name}` in the OS keyring (service carapace, account {})",
                entry.reference
            ),
            Err(e) => Err(e.into()),
        };
    }
    if !FileVault::exists(dd.root()) {
        bail!("there is no vault yet; `cara vault set NAME` creates it");
    }
    let vault = FileVault::open(dd.root(), key(&file, false)?)?;
    match vault.remove(name) {
        Ok(()) => {
            println!("removed `{name}`");
            Ok(ExitCode::SUCCESS)
        }
        Err(VaultError::NotFound { .. }) => bail!("there is no secret `{name}` in the vault"),
        Err(e) => Err(e.into()),
    }
}

pub fn list(dd: &DataDir) -> anyhow::Result<ExitCode> {
    let file = config::load(&dd.config())?;
    let mut names: Vec<String> = if FileVault::exists(dd.root()) {
        FileVault::list_names(dd.root())?
    } else {
        Vec::new()
    };
    for name in file.vault.secrets.keys() {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names.sort();
    if names.is_empty() {
        println!("the vault is empty; `cara vault set NAME` stores a secret");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 4]> = names
        .iter()
        .map(|name| {
            let e = file.vault.entry(name);
            let hosts = file.vault.hosts_of(name);
            [
                name.clone(),
                if e.backend == BackendKind::File {
                    "file".to_string()
                } else {
                    format!("{} ({})", e.backend.config_name(), e.reference)
                },
                if hosts.is_empty() {
                    "(not injected)".to_string()
                } else {
                    hosts.join(", ")
                },
                if e.approve_first_use { "ask" } else { "no" }.to_string(),
            ]
        })
        .collect();
    let header = ["NAME", "BACKEND", "INJECTED FOR", "ASK FIRST USE"];
    let widths: Vec<usize> = (0..4)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: [&str; 4]| {
        format!(
            "{:w0$}  {:w1$}  {:w2$}  {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        )
    };
    println!("{}", line(header));
    for r in &rows {
        println!("{}", line([&r[0], &r[1], &r[2], &r[3]]));
    }
    Ok(ExitCode::SUCCESS)
}

/// Stores `value` as the encrypted vault's entry `name` (created on first use), for
/// `cara setup`.
pub fn store_in_file(dd: &DataDir, name: &str, value: &Secret<String>) -> anyhow::Result<()> {
    check_entry_name(name).map_err(|p| anyhow::anyhow!(p))?;
    let file = config::load(&dd.config())?;
    require_file_entry(&file, name)?;
    open_or_create(dd, &file)?.set(name, value)?;
    Ok(())
}

pub fn import_env(dd: &DataDir, names: Vec<String>) -> anyhow::Result<ExitCode> {
    let file = config::load(&dd.config())?;
    let explicit = !names.is_empty();
    let wanted: Vec<String> = if explicit {
        names
    } else {
        KNOWN_VARIABLES.iter().map(|s| s.to_string()).collect()
    };
    let mut found = Vec::new();
    for var in &wanted {
        check_entry_name(var).map_err(|p| anyhow::anyhow!(p))?;
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => found.push((var.clone(), Secret::new(v))),
            _ if explicit => bail!("${var} is not set; nothing was imported"),
            _ => {}
        }
    }
    if found.is_empty() {
        println!(
            "none of the known variables is set ({}); name the ones to import",
            KNOWN_VARIABLES.join(", ")
        );
        return Ok(ExitCode::SUCCESS);
    }
    for (var, _) in &found {
        require_file_entry(&file, var)?;
    }
    let vault = open_or_create(dd, &file)?;
    for (var, value) in &found {
        vault.set(var, value)?;
        println!("imported ${var} as `{var}`");
    }
    println!(
        "remove them from your shell's environment and profile files: the vault keeps them now"
    );
    Ok(ExitCode::SUCCESS)
}

/// The daemon's view of the vault: the entries' backends, values fetched on demand, and
/// every fetched value added to the scrubber before anything can echo it.
pub struct VaultSource {
    file_vault: Option<FileVault>,
    locked_reason: Option<String>,
    config: config::vault::VaultSection,
    scrubber: SharedScrubber,
}

impl VaultSource {
    /// Opens the file vault if it exists and can be unlocked without a terminal.
    pub fn open(dd: &DataDir, file: &Config, scrubber: SharedScrubber) -> VaultSource {
        let (file_vault, locked_reason) = if !FileVault::exists(dd.root()) {
            (None, None)
        } else {
            match unattended_key(file) {
                None => (
                    None,
                    Some(format!(
                        "the vault is locked: start the daemon with {PASSPHRASE_VAR} or set vault.key_file"
                    )),
                ),
                Some(key) => match FileVault::open(dd.root(), key) {
                    Ok(v) => (Some(v), None),
                    Err(e) => (None, Some(format!("the vault cannot be opened: {e}"))),
                },
            }
        };
        if let Some(reason) = &locked_reason {
            tracing::warn!("{reason}");
        }
        VaultSource {
            file_vault,
            locked_reason,
            config: file.vault.clone(),
            scrubber,
        }
    }

    /// Loads every value of the file vault into the scrubber (at start: whatever the
    /// vault holds can never reach the model, injected or not).
    pub fn preload(&self) -> usize {
        let Some(vault) = &self.file_vault else {
            return 0;
        };
        let names = vault.names().unwrap_or_default();
        let values: Vec<Secret<String>> = names.iter().filter_map(|n| vault.get(n).ok()).collect();
        self.scrubber.add(&values);
        values.len()
    }

    /// A value by entry name, from the file vault.
    /// The key that seals the dead-letter queue: a subkey of the file vault's key, or,
    /// when there is no file vault, a key file of its own in the data directory (0600).
    /// A file vault that is locked gives no key (letters sealed with another key could
    /// not be opened once it is unlocked).
    pub fn dead_letter_key(&self, dd: &DataDir) -> anyhow::Result<carapace_vault::SealKey> {
        match &self.file_vault {
            Some(v) => Ok(v.subkey("dead-letters")),
            None if FileVault::exists(dd.root()) => {
                bail!("the vault is locked, so blocked messages cannot be sealed")
            }
            None => {
                let path = dd.root().join("dead-letters.key");
                carapace_vault::SealKey::load_or_create(&path)
                    .with_context(|| format!("cannot use {}", path.display()))
            }
        }
    }

    pub fn file_value(&self, name: &str) -> Option<Secret<String>> {
        self.file_vault.as_ref()?.get(name).ok()
    }

    fn backend(&self, kind: BackendKind) -> Result<Box<dyn Backend + '_>, String> {
        Ok(match kind {
            BackendKind::File => match &self.file_vault {
                Some(v) => return Ok(Box::new(BorrowedFile(v))),
                None => {
                    return Err(self
                        .locked_reason
                        .clone()
                        .unwrap_or_else(|| "there is no vault; `cara vault set NAME`".into()));
                }
            },
            BackendKind::Env => Box::new(EnvBackend::new()),
            BackendKind::Pass => Box::new(PassBackend::new()),
            BackendKind::Bitwarden => Box::new(BitwardenBackend::new()),
            BackendKind::OnePassword => Box::new(OnePasswordBackend::new()),
            BackendKind::Keyring => Box::new(KeyringBackend::new()),
        })
    }
}

/// The file vault lent to the `Backend` interface.
#[derive(Debug)]
struct BorrowedFile<'a>(&'a FileVault);

impl Backend for BorrowedFile<'_> {
    fn kind(&self) -> carapace_vault::BackendKind {
        self.0.kind()
    }
    fn get(&self, name: &str) -> Result<Secret<String>, VaultError> {
        self.0.get(name)
    }
}

impl SecretSource for VaultSource {
    fn get(&self, name: &str) -> Result<Secret<String>, String> {
        let entry = self.config.entry(name);
        let backend = self.backend(entry.backend)?;
        let value = backend.get(&entry.reference).map_err(|e| e.to_string())?;
        self.scrubber.add(std::slice::from_ref(&value));
        Ok(value)
    }

    fn approve_first_use(&self, name: &str) -> bool {
        self.config.entry(name).approve_first_use
    }
}
