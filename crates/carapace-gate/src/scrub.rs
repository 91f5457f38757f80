//! Removes secrets from anything that goes back to the model or into the audit log:
//! known secret values in their common encodings, and strings shaped like credentials.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use carapace_types::Secret;
use regex::Regex;
use serde_json::Value;

const REDACTED: &str = "[REDACTED]";

/// Known secrets shorter than this are not scrubbed by value: they would match
/// ordinary text. Credential-shaped patterns still apply.
const MIN_SECRET_LEN: usize = 8;

/// Scrubs known secret values and credential-shaped strings.
///
/// Everything is compiled into one regular expression, so a string that holds nothing
/// secret (the common case) costs one linear scan.
#[derive(Clone)]
pub struct Scrubber {
    known: usize,
    all: Regex,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scrubber({} known secrets)", self.known)
    }
}

impl Scrubber {
    /// A scrubber for these known secrets (each in raw, base64, base64url, hex and
    /// percent-encoded form) plus the built-in credential patterns.
    pub fn new(secrets: &[Secret<String>]) -> Scrubber {
        let mut needles = Vec::new();
        for secret in secrets {
            let raw = secret.expose();
            if raw.len() < MIN_SECRET_LEN {
                continue;
            }
            let b = raw.as_bytes();
            needles.push(raw.clone());
            for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
                needles.push(engine.encode(b));
            }
            needles.push(hex::encode(b));
            needles.push(hex::encode_upper(b));
            needles.push(percent_encode(raw));
            needles.push(raw.chars().rev().collect());
        }
        // Longest first, so a padded encoding is removed whole before its prefix.
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        needles.dedup();
        let known = secrets
            .iter()
            .filter(|s| s.expose().len() >= MIN_SECRET_LEN)
            .count();
        let patterns = [
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
            r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_\-]{20,}",
            r"\bgh[pousr]_[A-Za-z0-9]{30,}",
            r"\bgithub_pat_[A-Za-z0-9_]{30,}",
            r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
            r"\bxox[abprs]-[A-Za-z0-9-]{10,}",
            r"\bAIza[0-9A-Za-z_\-]{35}",
            r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
            r"(?i:\bbearer\s+[A-Za-z0-9._~+/=-]{20,})",
        ];
        // Known values first (longest first), then the shapes.
        let alternatives: Vec<String> = needles
            .iter()
            .map(|n| regex::escape(n))
            .chain(patterns.iter().map(|p| format!("(?:{p})")))
            .collect();
        let all = regex::RegexBuilder::new(&alternatives.join("|"))
            .size_limit(64 << 20)
            .build()
            .expect("scrub patterns compile");
        Scrubber { known, all }
    }

    /// Scrubs one string in place; true when anything was removed.
    pub fn scrub_string(&self, s: &mut String) -> bool {
        if !self.all.is_match(s) {
            return false;
        }
        *s = self.all.replace_all(s, REDACTED).into_owned();
        true
    }

    /// Scrubs every string (keys included) of a JSON document; true when anything was
    /// removed.
    pub fn scrub_json(&self, v: &mut Value) -> bool {
        match v {
            Value::String(s) => self.scrub_string(s),
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |acc, i| self.scrub_json(i) | acc),
            Value::Object(map) => {
                let mut changed = false;
                let keys: Vec<String> = map.keys().cloned().collect();
                for key in keys {
                    let mut new_key = key.clone();
                    if self.scrub_string(&mut new_key) {
                        changed = true;
                        if let Some(val) = map.remove(&key) {
                            map.insert(new_key.clone(), val);
                        }
                    }
                    if let Some(val) = map.get_mut(&new_key) {
                        changed |= self.scrub_json(val);
                    }
                }
                changed
            }
            _ => false,
        }
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scrubber() -> Scrubber {
        Scrubber::new(&[Secret::new("hunter2-very-secret/+=".to_string())])
    }

    #[test]
    fn known_secret_is_removed_in_every_encoding() {
        let s = scrubber();
        let raw = "hunter2-very-secret/+=";
        let encodings = [
            raw.to_string(),
            STANDARD.encode(raw),
            URL_SAFE_NO_PAD.encode(raw),
            hex::encode(raw),
            hex::encode_upper(raw),
            percent_encode(raw),
            raw.chars().rev().collect(),
        ];
        for enc in encodings {
            let mut text = format!("before {enc} after");
            assert!(s.scrub_string(&mut text), "{enc} was not scrubbed");
            assert_eq!(text, "before [REDACTED] after");
        }
    }

    #[test]
    fn credential_shaped_strings_are_removed_without_being_known() {
        let s = Scrubber::new(&[]);
        for cred in [
            "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            "AKIAIOSFODNN7EXAMPLE",
            "xoxb-1234567890-abcdefghij",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
        ] {
            let mut v = json!({ "text": format!("key: {cred} end"), "nested": [cred] });
            assert!(s.scrub_json(&mut v));
            let out = v.to_string();
            assert!(!out.contains(cred), "{cred} survived: {out}");
        }
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        let s = scrubber();
        let mut v = json!({ "content": "a task list: skim the notes, ask before sending" });
        let before = v.clone();
        assert!(!s.scrub_json(&mut v));
        assert_eq!(v, before);
    }

    #[test]
    fn secrets_in_object_keys_are_removed() {
        let s = scrubber();
        let mut v = json!({ "hunter2-very-secret/+=": 1 });
        assert!(s.scrub_json(&mut v));
        assert_eq!(v, json!({ "[REDACTED]": 1 }));
    }
}
