//! `[vault]`: where secrets live and where they may be injected.
//!
//! Values never appear in config.toml. Entries stored with `cara vault set` live in the
//! encrypted file and need no table here; `[vault.secrets.NAME]` names entries kept
//! elsewhere (environment, `pass`, Bitwarden, 1Password, the OS keyring) or changes an
//! entry's settings.
//! `[[vault.inject]]` says which hosts receive a secret, and how; the model never does.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::Locator;
use super::egress::check_host_entry;

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct VaultSection {
    /// A key file (32 raw bytes or 64 hex characters, mode 0600) instead of a passphrase.
    pub key_file: Option<Spanned<String>>,
    pub secrets: BTreeMap<String, SecretSection>,
    pub inject: Vec<InjectSection>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSection {
    /// `file` (the encrypted vault, default), `env`, `pass`, `bw`, `op` or `keyring`.
    pub backend: Option<Spanned<String>>,
    /// The variable (env), path (pass), item (bw), `op://` reference (op) or account
    /// (keyring, default: the entry's name).
    #[serde(rename = "ref")]
    pub reference: Option<Spanned<String>>,
    /// Ask the owner once per session before the first use (default: on for password
    /// managers, off otherwise: the OS keyring is the owner's own store, like the file).
    pub approve_first_use: Option<bool>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectSection {
    pub secret: Spanned<String>,
    pub hosts: Spanned<Vec<String>>,
    /// Header to set, with `format` (default `{}`), e.g. `Authorization` / `Bearer {}`.
    pub header: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
    /// Query parameter to set instead of a header.
    pub query: Option<Spanned<String>>,
}

pub use carapace_vault::BackendKind;

/// A secret entry as configured.
#[derive(Clone, Debug)]
pub struct EntrySettings {
    pub backend: BackendKind,
    /// The backend's reference; for the file backend, the entry name; for the keyring,
    /// the account (default: the entry name).
    pub reference: String,
    pub approve_first_use: bool,
}

/// Names of vault entries: letters, digits, `-`, `_` and `.`.
pub fn check_entry_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "`{name}` is not a secret name (letters, digits, `-`, `_`, `.`; at most 128)"
        ));
    }
    Ok(())
}

impl VaultSection {
    pub fn validate(&self, at: &Locator) -> anyhow::Result<()> {
        for (name, s) in &self.secrets {
            let key = |k: &str| format!("vault.secrets.{name}.{k}");
            if let Err(problem) = check_entry_name(name) {
                return Err(at.key(&format!("vault.secrets.{name}"), problem));
            }
            let backend = match &s.backend {
                Some(b) => match BackendKind::from_config_name(b.get_ref()) {
                    Some(k) => k,
                    None => {
                        return Err(at.span(
                            b.span(),
                            &key("backend"),
                            format!(
                                "`{}` is not a backend; use file, env, pass, bw, op or keyring",
                                b.get_ref()
                            ),
                        ));
                    }
                },
                None => BackendKind::File,
            };
            match (&s.reference, backend) {
                (None, BackendKind::Env | BackendKind::OnePassword) => {
                    return Err(at.key(
                        &key("ref"),
                        format!(
                            "the {} backend needs `ref` ({})",
                            backend.config_name(),
                            if backend == BackendKind::Env {
                                "the variable's name"
                            } else {
                                "an op://vault/item/field reference"
                            }
                        ),
                    ));
                }
                (Some(r), BackendKind::OnePassword) if !r.get_ref().starts_with("op://") => {
                    return Err(at.span(
                        r.span(),
                        &key("ref"),
                        format!(
                            "`{}` is not an op://vault/item/field reference",
                            r.get_ref()
                        ),
                    ));
                }
                (Some(r), _) if r.get_ref().trim().is_empty() => {
                    return Err(at.span(r.span(), &key("ref"), "must not be empty".into()));
                }
                _ => {}
            }
        }
        for (i, inject) in self.inject.iter().enumerate() {
            let key = |k: &str| format!("vault.inject[{i}].{k}");
            if let Err(problem) = check_entry_name(inject.secret.get_ref()) {
                return Err(at.span(inject.secret.span(), &key("secret"), problem));
            }
            if inject.hosts.get_ref().is_empty() {
                return Err(at.span(
                    inject.hosts.span(),
                    &key("hosts"),
                    "list at least one host; a secret is injected only for the hosts named".into(),
                ));
            }
            for h in inject.hosts.get_ref() {
                if let Err(problem) = check_host_entry(h, false) {
                    return Err(at.span(inject.hosts.span(), &key("hosts"), problem));
                }
            }
            match (&inject.header, &inject.query) {
                (Some(_), Some(q)) => {
                    return Err(at.span(
                        q.span(),
                        &key("query"),
                        "set either `header` or `query`, not both".into(),
                    ));
                }
                (None, None) => {
                    return Err(at.key(
                        &key("header"),
                        "set `header` (with `format`) or `query`".into(),
                    ));
                }
                (Some(h), None) => {
                    let name = h.get_ref();
                    if name.is_empty()
                        || !name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    {
                        return Err(at.span(
                            h.span(),
                            &key("header"),
                            format!("`{name}` is not a header name"),
                        ));
                    }
                }
                (None, Some(_)) => {}
            }
            if let Some(f) = &inject.format
                && f.get_ref().matches("{}").count() != 1
            {
                return Err(at.span(
                    f.span(),
                    &key("format"),
                    format!(
                        "`{}` must hold `{{}}` exactly once, where the secret goes",
                        f.get_ref()
                    ),
                ));
            }
        }
        if let Some(k) = &self.key_file
            && !std::path::Path::new(k.get_ref()).is_absolute()
        {
            return Err(at.span(
                k.span(),
                "vault.key_file",
                format!("`{}` must be an absolute path", k.get_ref()),
            ));
        }
        Ok(())
    }

    /// Settings of a configured entry, or of a plain file entry when it has no table.
    pub fn entry(&self, name: &str) -> EntrySettings {
        let s = self.secrets.get(name);
        let backend = s
            .and_then(|s| s.backend.as_ref())
            .and_then(|b| BackendKind::from_config_name(b.get_ref()))
            .unwrap_or(BackendKind::File);
        EntrySettings {
            backend,
            reference: s
                .and_then(|s| s.reference.as_ref())
                .map(|r| r.get_ref().clone())
                .unwrap_or_else(|| name.to_string()),
            approve_first_use: s
                .and_then(|s| s.approve_first_use)
                .unwrap_or(backend.approve_first_use_by_default()),
        }
    }

    /// The injection rules, resolved for the Gate.
    pub fn rules(&self) -> Vec<carapace_gate::InjectRule> {
        self.inject
            .iter()
            .map(|i| carapace_gate::InjectRule {
                secret: i.secret.get_ref().clone(),
                hosts: i.hosts.get_ref().clone(),
                place: match (&i.header, &i.query) {
                    (Some(h), _) => carapace_gate::Place::Header {
                        name: h.get_ref().clone(),
                        format: i
                            .format
                            .as_ref()
                            .map(|f| f.get_ref().clone())
                            .unwrap_or_else(|| "{}".into()),
                    },
                    (None, q) => carapace_gate::Place::Query {
                        name: q.as_ref().map(|q| q.get_ref().clone()).unwrap_or_default(),
                    },
                },
            })
            .collect()
    }

    /// Hosts each secret is injected for, by secret name.
    pub fn hosts_of(&self, name: &str) -> Vec<String> {
        self.inject
            .iter()
            .filter(|i| i.secret.get_ref() == name)
            .flat_map(|i| i.hosts.get_ref().iter().cloned())
            .collect()
    }
}
