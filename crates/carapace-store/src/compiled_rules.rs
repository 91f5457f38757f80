//! Plain-English rules as the model compiled them, keyed by the SHA-256 of the text.
//!
//! The store keeps what the caller hands it: the structured rule as JSON text, or why it
//! did not compile. It does not parse or judge the rule; the caller validates it again
//! each time it loads it.

use rusqlite::{OptionalExtension as _, params};

use crate::{Store, StoreError};

/// What came of compiling a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compilation {
    /// The structured rule, as JSON text.
    Rule(String),
    /// Why it did not compile, in words for the owner.
    Failed(String),
}

/// One plain-English rule and its compilation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledRule {
    /// Lowercase hex SHA-256 of the text; the key.
    pub sha256: String,
    /// The rule as the owner wrote it.
    pub text: String,
    /// The structured rule or the error.
    pub outcome: Compilation,
    /// The model that compiled it, `provider/model`.
    pub model: String,
    /// When, in Unix milliseconds.
    pub compiled_ms: i64,
    /// When the owner confirmed the compiled rule; `None`: not yet.
    pub confirmed_ms: Option<i64>,
}

const COLUMNS: &str = "sha256, text, rule, error, model, compiled_ms, confirmed_ms";

impl Store {
    /// The compilation of the rule whose text has this digest, if there is one.
    pub fn compiled_rule(&self, sha256: &str) -> Result<Option<CompiledRule>, StoreError> {
        let inner = self.lock();
        let mut stmt = inner.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM compiled_rules WHERE sha256 = ?1"
        ))?;
        let row = stmt.query_row([sha256], raw).optional()?;
        row.map(from_raw).transpose()
    }

    /// Stores a compilation, replacing an earlier one of the same text.
    pub fn put_compiled_rule(&self, r: &CompiledRule) -> Result<(), StoreError> {
        let (rule, error) = match &r.outcome {
            Compilation::Rule(json) => (Some(json.as_str()), None),
            Compilation::Failed(why) => (None, Some(why.as_str())),
        };
        let inner = self.lock();
        inner
            .conn
            .prepare_cached(&format!(
                "INSERT OR REPLACE INTO compiled_rules ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            ))?
            .execute(params![
                r.sha256,
                r.text,
                rule,
                error,
                r.model,
                r.compiled_ms,
                r.confirmed_ms
            ])?;
        Ok(())
    }

    /// The owner confirms the compiled rule of this digest. False when there is none
    /// (never compiled, or it did not compile).
    pub fn confirm_compiled_rule(&self, sha256: &str, now_ms: i64) -> Result<bool, StoreError> {
        let inner = self.lock();
        let changed = inner
            .conn
            .prepare_cached(
                "UPDATE compiled_rules SET confirmed_ms = ?2 WHERE sha256 = ?1 AND rule IS NOT NULL",
            )?
            .execute(params![sha256, now_ms])?;
        Ok(changed == 1)
    }

    /// Every stored compilation, by digest.
    pub fn compiled_rules(&self) -> Result<Vec<CompiledRule>, StoreError> {
        let inner = self.lock();
        let mut stmt = inner.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM compiled_rules ORDER BY sha256"
        ))?;
        let rows = stmt.query_map([], raw)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(from_raw(row?)?);
        }
        Ok(out)
    }
}

type Raw = (
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    i64,
    Option<i64>,
);

fn raw(row: &rusqlite::Row<'_>) -> rusqlite::Result<Raw> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
    ))
}

fn from_raw(
    (sha256, text, rule, error, model, compiled_ms, confirmed_ms): Raw,
) -> Result<CompiledRule, StoreError> {
    let outcome = match (rule, error) {
        (Some(rule), None) => Compilation::Rule(rule),
        (None, Some(error)) => Compilation::Failed(error),
        _ => {
            return Err(StoreError::Corrupt(format!(
                "compiled rule {sha256} has not exactly one of a rule and an error"
            )));
        }
    };
    Ok(CompiledRule {
        sha256,
        text,
        outcome,
        model,
        compiled_ms,
        confirmed_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(sha: &str, outcome: Compilation) -> CompiledRule {
        CompiledRule {
            sha256: sha.into(),
            text: format!("text of {sha}"),
            outcome,
            model: "fake/model".into(),
            compiled_ms: 1_700_000_000_000,
            confirmed_ms: None,
        }
    }

    #[test]
    fn put_get_replace_and_list() {
        let store = Store::open_in_memory().unwrap();
        assert_eq!(store.compiled_rule("aa").unwrap(), None);
        assert!(store.compiled_rules().unwrap().is_empty());

        let ok = rule("bb", Compilation::Rule(r#"{"then":"ask"}"#.into()));
        let failed = rule("aa", Compilation::Failed("uncompilable: vague".into()));
        store.put_compiled_rule(&ok).unwrap();
        store.put_compiled_rule(&failed).unwrap();
        assert_eq!(store.compiled_rule("bb").unwrap(), Some(ok.clone()));
        assert_eq!(store.compiled_rule("aa").unwrap(), Some(failed.clone()));
        assert_eq!(store.compiled_rules().unwrap(), vec![failed, ok.clone()]);

        // Compiling again replaces, it does not add.
        let again = rule("aa", Compilation::Rule(r#"{"then":"deny"}"#.into()));
        store.put_compiled_rule(&again).unwrap();
        assert_eq!(store.compiled_rules().unwrap(), vec![again.clone(), ok]);

        // Only a compiled rule can be confirmed, and compiling again clears it.
        assert!(store.confirm_compiled_rule("aa", 5).unwrap());
        assert_eq!(
            store.compiled_rule("aa").unwrap().unwrap().confirmed_ms,
            Some(5)
        );
        assert!(!store.confirm_compiled_rule("zz", 5).unwrap());
        store.put_compiled_rule(&again).unwrap();
        assert_eq!(
            store.compiled_rule("aa").unwrap().unwrap().confirmed_ms,
            None
        );
        store
            .put_compiled_rule(&rule("dd", Compilation::Failed("vague".into())))
            .unwrap();
        assert!(!store.confirm_compiled_rule("dd", 5).unwrap());
    }

    #[test]
    fn a_row_with_both_or_neither_is_corrupt() {
        let store = Store::open_in_memory().unwrap();
        store
            .lock()
            .conn
            .execute(
                "INSERT INTO compiled_rules VALUES ('cc', 't', NULL, NULL, 'm', 0, NULL)",
                [],
            )
            .unwrap();
        assert!(matches!(
            store.compiled_rule("cc"),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            store.compiled_rules(),
            Err(StoreError::Corrupt(_))
        ));
    }
}
