//! The policy state of a session: sources seen, exposure counters, and grants. The store
//! keeps these facts; what they mean is the policy crate's business.

use std::collections::BTreeMap;

use carapace_types::{Label, SessionId};
use rusqlite::{OptionalExtension as _, TransactionBehavior, params};
use serde_json::Value;

use crate::session::parse_label;
use crate::{Store, StoreError};

/// A grant as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct GrantRecord {
    /// Its id, unique within the session (`plan_1a2b#2`, `session_3c4d`).
    pub id: String,
    /// The step it covers, as JSON in the plan language.
    pub step: Value,
    /// Calls left; `None`: unbounded.
    pub remaining: Option<u32>,
    /// When it stops covering calls, ms since the epoch; `None`: never.
    pub expires_ms: Option<i64>,
    /// When the owner approved it.
    pub created_ms: i64,
}

impl Store {
    /// Takes in one result: joins `label` into the session's label, adds `source` to the
    /// sources seen, and adds `exposure` to the counters, in one transaction. Returns the
    /// new label. Nothing here ever goes down.
    pub fn absorb_result(
        &self,
        id: &SessionId,
        label: Label,
        source: &str,
        exposure: &[(&str, u32)],
        now_ms: i64,
    ) -> Result<Label, StoreError> {
        let mut inner = self.lock();
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row = tx
            .prepare_cached(
                "SELECT integrity, confidentiality, seen, exposure FROM sessions WHERE id = ?1",
            )?
            .query_row([id.as_str()], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                ))
            })
            .optional()?;
        let Some((integrity, confidentiality, seen, counters)) = row else {
            return Err(StoreError::UnknownSession(id.clone()));
        };
        let current = parse_label(&integrity, &confidentiality)?;
        let raised = current.join(label);
        let mut seen: Vec<String> = serde_json::from_str(&seen).map_err(|e| {
            StoreError::Corrupt(format!("the seen list of session {id} is unreadable: {e}"))
        })?;
        let new_source = !source.is_empty() && !seen.iter().any(|s| s == source);
        let counts = exposure.iter().any(|(_, n)| *n > 0);
        // Nothing rises: nothing is written, not even the update time.
        if raised == current && !new_source && !counts {
            return Ok(raised);
        }
        if new_source {
            seen.push(source.to_string());
        }
        let mut counters: BTreeMap<String, u32> = serde_json::from_str(&counters).map_err(|e| {
            StoreError::Corrupt(format!("the exposure of session {id} is unreadable: {e}"))
        })?;
        for (kind, n) in exposure {
            let c = counters.entry((*kind).to_string()).or_default();
            *c = c.saturating_add(*n);
        }
        tx.prepare_cached(
            "UPDATE sessions SET integrity = ?2, confidentiality = ?3, seen = ?4, exposure = ?5,
             updated_ms = max(updated_ms, ?6) WHERE id = ?1",
        )?
        .execute(params![
            id.as_str(),
            raised.integrity.as_str(),
            raised.confidentiality.as_str(),
            serde_json::to_string(&seen).unwrap_or_else(|_| "[]".into()),
            serde_json::to_string(&counters).unwrap_or_else(|_| "{}".into()),
            now_ms
        ])?;
        tx.commit()?;
        Ok(raised)
    }

    /// The owner's reset: the exposure counters and the grants go; the label and the
    /// sources seen stay (what the session holds does not change by resetting).
    pub fn reset_session_policy(&self, id: &SessionId, now_ms: i64) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let changed = tx
            .prepare_cached(
                "UPDATE sessions SET exposure = '{}', updated_ms = max(updated_ms, ?2)
                 WHERE id = ?1",
            )?
            .execute(params![id.as_str(), now_ms])?;
        if changed == 0 {
            return Err(StoreError::UnknownSession(id.clone()));
        }
        tx.prepare_cached("DELETE FROM grants WHERE session_id = ?1")?
            .execute([id.as_str()])?;
        tx.commit()?;
        Ok(())
    }

    /// Adds grants to a session, all or none.
    pub fn add_grants(
        &self,
        session: &SessionId,
        grants: &[GrantRecord],
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for g in grants {
            tx.prepare_cached(
                "INSERT INTO grants (session_id, id, step, remaining, expires_ms, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                session.as_str(),
                g.id,
                g.step.to_string(),
                g.remaining,
                g.expires_ms,
                g.created_ms
            ])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The session's grants, oldest first (spent and expired ones included).
    pub fn grants(&self, session: &SessionId) -> Result<Vec<GrantRecord>, StoreError> {
        let inner = self.lock();
        // Sorted here, not by SQL: with `ORDER BY` the bundled SQLite (STAT4) recompiles
        // the cached statement at every new binding, a fifth of a Gate call's CPU.
        let mut stmt = inner.conn.prepare_cached(
            "SELECT id, step, remaining, expires_ms, created_ms FROM grants
             WHERE session_id = ?1",
        )?;
        let mut rows = stmt.query([session.as_str()])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let id: String = row.get(0)?;
            let step: String = row.get(1)?;
            let step = serde_json::from_str(&step)
                .map_err(|e| StoreError::Corrupt(format!("grant {id} is unreadable: {e}")))?;
            out.push(GrantRecord {
                id,
                step,
                remaining: row.get(2)?,
                expires_ms: row.get(3)?,
                created_ms: row.get(4)?,
            });
        }
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(out)
    }

    /// Uses one call of a grant at `now_ms`. False when it has none left (another call
    /// took the last one) or it has expired: then the caller must decide again without it.
    pub fn use_grant(
        &self,
        session: &SessionId,
        id: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let inner = self.lock();
        let changed = inner
            .conn
            .prepare_cached(
                "UPDATE grants SET remaining = remaining - 1
                 WHERE session_id = ?1 AND id = ?2 AND (remaining IS NULL OR remaining > 0)
                   AND (expires_ms IS NULL OR expires_ms > ?3)",
            )?
            .execute(params![session.as_str(), id, now_ms])?;
        Ok(changed == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carapace_types::{Confidentiality, Integrity};
    use serde_json::json;

    fn store() -> (tempfile::TempDir, Store, SessionId) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let id = SessionId::new("s1");
        store.create_session(&id, "t", 1).unwrap();
        (dir, store, id)
    }

    #[test]
    fn absorbing_only_raises_and_counts() {
        let (_d, store, id) = store();
        let web = Label {
            integrity: Integrity::Untrusted,
            confidentiality: Confidentiality::Public,
        };
        store
            .absorb_result(&id, web, "web", &[("untrusted_reads", 1), ("egress", 1)], 2)
            .unwrap();
        let after = store
            .absorb_result(
                &id,
                Label::TRUSTED_PUBLIC,
                "tool:list_dir",
                &[("egress", 2)],
                3,
            )
            .unwrap();
        assert_eq!(after, web);
        let s = store.session(&id).unwrap().unwrap();
        assert_eq!(s.seen, vec!["web", "tool:list_dir"]);
        assert_eq!(s.exposure["egress"], 3);
        assert_eq!(s.exposure["untrusted_reads"], 1);
        store.reset_session_policy(&id, 4).unwrap();
        let s = store.session(&id).unwrap().unwrap();
        assert!(s.exposure.is_empty());
        assert_eq!(s.label, web, "a reset does not lower the label");
    }

    #[test]
    fn a_grant_is_used_up_exactly() {
        let (_d, store, id) = store();
        let g = GrantRecord {
            id: "plan_1#1".into(),
            step: json!({"tool": "write_file"}),
            remaining: Some(2),
            expires_ms: None,
            created_ms: 5,
        };
        store.add_grants(&id, std::slice::from_ref(&g)).unwrap();
        assert_eq!(store.grants(&id).unwrap(), vec![g.clone()]);
        assert!(store.use_grant(&id, "plan_1#1", 6).unwrap());
        assert!(store.use_grant(&id, "plan_1#1", 6).unwrap());
        assert!(!store.use_grant(&id, "plan_1#1", 6).unwrap());
        assert!(!store.use_grant(&id, "nope", 6).unwrap());
        assert_eq!(store.grants(&id).unwrap()[0].remaining, Some(0));
        let timed = GrantRecord {
            id: "plan_2#1".into(),
            remaining: None,
            expires_ms: Some(100),
            ..g
        };
        store.add_grants(&id, std::slice::from_ref(&timed)).unwrap();
        assert!(store.use_grant(&id, "plan_2#1", 99).unwrap());
        assert!(!store.use_grant(&id, "plan_2#1", 100).unwrap(), "expired");
        store.reset_session_policy(&id, 6).unwrap();
        assert!(store.grants(&id).unwrap().is_empty());
    }
}
