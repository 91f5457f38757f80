use std::collections::BTreeMap;

use carapace_types::Secret;

use crate::{Backend, BackendKind, VaultError};

/// Secrets from environment variables, for containers and CI.
///
/// A name maps to a variable explicitly ([`EnvBackend::map`]) or by rule: the prefix
/// followed by the name in upper case with every character other than a letter or digit
/// turned into `_` (`anthropic/api-key` with prefix `CARAPACE_` reads
/// `CARAPACE_ANTHROPIC_API_KEY`). Read-only. The variable stays in the process
/// environment (removing it is not possible safely in a threaded program), so child
/// processes must be started with a cleared environment.
#[derive(Debug, Clone, Default)]
pub struct EnvBackend {
    prefix: String,
    map: BTreeMap<String, String>,
}

impl EnvBackend {
    /// Names map to variables by rule, with no prefix.
    pub fn new() -> EnvBackend {
        EnvBackend::default()
    }

    /// Names map to variables by rule, after this prefix.
    pub fn with_prefix(prefix: impl Into<String>) -> EnvBackend {
        EnvBackend {
            prefix: prefix.into(),
            map: BTreeMap::new(),
        }
    }

    /// Reads `name` from `variable` instead of the variable the rule gives.
    pub fn map(mut self, name: impl Into<String>, variable: impl Into<String>) -> EnvBackend {
        self.map.insert(name.into(), variable.into());
        self
    }

    /// The variable `name` is read from.
    pub fn variable_for(&self, name: &str) -> String {
        if let Some(v) = self.map.get(name) {
            return v.clone();
        }
        let mut var = self.prefix.clone();
        var.extend(name.chars().map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        }));
        var
    }
}

impl Backend for EnvBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Env
    }

    fn get(&self, name: &str) -> Result<Secret<String>, VaultError> {
        crate::backend::check_name(name)?;
        let var = self.variable_for(name);
        let invalid = |reason| VaultError::InvalidValue {
            backend: BackendKind::Env,
            name: name.into(),
            reason,
        };
        match std::env::var_os(&var) {
            None => Err(VaultError::NotFound {
                backend: BackendKind::Env,
                name: format!("{name} (variable {var})"),
            }),
            Some(value) => match value.into_string() {
                Ok(value) if value.is_empty() => Err(invalid("empty")),
                Ok(value) => Ok(Secret::new(value)),
                Err(value) => {
                    zeroize::Zeroize::zeroize(&mut std::os::unix::ffi::OsStringExt::into_vec(
                        value,
                    ));
                    Err(invalid("not valid UTF-8"))
                }
            },
        }
    }
}
