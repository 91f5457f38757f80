//! Sessions, their messages, and the record of files the agent wrote.

use std::collections::BTreeMap;

use carapace_types::{Confidentiality, Integrity, Label, SessionId, Source};
use rusqlite::{Row, TransactionBehavior, params};
use serde_json::Value;

use crate::canonical::{MAX_JSON_DEPTH, canonical_json, too_deep};
use crate::{Store, StoreError};

/// A chat session as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// Its id.
    pub id: SessionId,
    /// A title for lists.
    pub title: String,
    /// When it was created, in Unix milliseconds.
    pub created_ms: i64,
    /// When a message was last appended or its label last rose, in Unix milliseconds.
    pub updated_ms: i64,
    /// The join of the labels of everything the session has seen.
    pub label: Label,
    /// The session's own list of hosts the network tools may reach, set at creation; it
    /// narrows the configuration's lists and never widens them. `None`: no list of its
    /// own.
    pub egress_hosts: Option<Vec<String>>,
    /// The model this session was switched to, `provider/model`; `None`: the configured
    /// one.
    pub model: Option<String>,
    /// The sources the session has seen (`web`, `tool:exec`, ...), in first-seen order.
    pub seen: Vec<String>,
    /// What the session has been granted, counted by kind; only grows until a reset.
    pub exposure: BTreeMap<String, u32>,
}

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Instructions from Carapace itself.
    System,
    /// The owner.
    User,
    /// The model.
    Assistant,
    /// The result of a tool call.
    Tool,
}

impl Role {
    /// Stable lowercase name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }

    /// Parses the name produced by [`Role::as_str`].
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            "tool" => Some(Role::Tool),
            _ => None,
        }
    }
}

/// A message to append to a session.
#[derive(Clone, Debug, PartialEq)]
pub struct NewMessage {
    /// Who wrote it.
    pub role: Role,
    /// Its text.
    pub content: String,
    /// The tool calls an assistant message asks for, as the provider sent them.
    pub tool_calls: Option<Value>,
    /// For a tool result: the id of the call it answers.
    pub tool_call_id: Option<String>,
    /// Where its content came from.
    pub source: Source,
    /// Its label.
    pub label: Label,
    /// When it was created, in Unix milliseconds.
    pub created_ms: i64,
}

/// A message as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct MessageRecord {
    /// Its position in the session, from 1.
    pub seq: i64,
    /// Who wrote it.
    pub role: Role,
    /// Its text.
    pub content: String,
    /// The tool calls an assistant message asks for.
    pub tool_calls: Option<Value>,
    /// For a tool result: the id of the call it answers.
    pub tool_call_id: Option<String>,
    /// Where its content came from.
    pub source: Source,
    /// Its label.
    pub label: Label,
    /// When it was created, in Unix milliseconds.
    pub created_ms: i64,
}

/// What the store remembers about a file the agent wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentWrite {
    /// SHA-256 of the content written, lowercase hex.
    pub sha256_hex: String,
    /// The label of the data written.
    pub label: Label,
    /// The session that wrote it.
    pub session: SessionId,
}

impl Store {
    /// Creates a session with the label [`Label::TRUSTED_PUBLIC`] and no host list of
    /// its own.
    pub fn create_session(
        &self,
        id: &SessionId,
        title: &str,
        now_ms: i64,
    ) -> Result<SessionRecord, StoreError> {
        self.create_scoped_session(id, title, now_ms, None)
    }

    /// Creates a session with the label [`Label::TRUSTED_PUBLIC`] whose network tools
    /// reach only `egress_hosts` (within what the configuration allows). The list is
    /// fixed for the session's life: nothing can widen it later.
    pub fn create_scoped_session(
        &self,
        id: &SessionId,
        title: &str,
        now_ms: i64,
        egress_hosts: Option<&[String]>,
    ) -> Result<SessionRecord, StoreError> {
        let label = Label::TRUSTED_PUBLIC;
        let hosts_json = egress_hosts
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("cannot encode the host list: {e}")))?;
        let inner = self.lock();
        let inserted = inner
            .conn
            .prepare_cached(
                "INSERT INTO sessions
                     (id, title, created_ms, updated_ms, integrity, confidentiality, egress_hosts)
                 VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6) ON CONFLICT (id) DO NOTHING",
            )?
            .execute(params![
                id.as_str(),
                title,
                now_ms,
                label.integrity.as_str(),
                label.confidentiality.as_str(),
                hosts_json,
            ])?;
        if inserted == 0 {
            return Err(StoreError::SessionExists(id.clone()));
        }
        Ok(SessionRecord {
            id: id.clone(),
            title: title.to_string(),
            created_ms: now_ms,
            updated_ms: now_ms,
            label,
            egress_hosts: egress_hosts.map(<[String]>::to_vec),
            model: None,
            seen: Vec::new(),
            exposure: BTreeMap::new(),
        })
    }

    /// Switches the session to `model` (`None`: back to the configured one).
    pub fn set_session_model(&self, id: &SessionId, model: Option<&str>) -> Result<(), StoreError> {
        let inner = self.lock();
        let changed = inner
            .conn
            .prepare_cached("UPDATE sessions SET model = ?2 WHERE id = ?1")?
            .execute(params![id.as_str(), model])?;
        if changed == 0 {
            return Err(StoreError::UnknownSession(id.clone()));
        }
        Ok(())
    }

    /// The session with this id, if there is one.
    pub fn session(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let inner = self.lock();
        let mut stmt = inner.conn.prepare_cached(
            "SELECT id, title, created_ms, updated_ms, integrity, confidentiality, egress_hosts,
                 model, seen, exposure
             FROM sessions WHERE id = ?1",
        )?;
        let mut rows = stmt.query([id.as_str()])?;
        rows.next()?.map(session_from_row).transpose()
    }

    /// Up to `limit` sessions, most recently updated first.
    pub fn list_sessions(&self, limit: usize) -> Result<Vec<SessionRecord>, StoreError> {
        let inner = self.lock();
        let mut stmt = inner.conn.prepare_cached(
            "SELECT id, title, created_ms, updated_ms, integrity, confidentiality, egress_hosts,
                 model, seen, exposure
             FROM sessions ORDER BY updated_ms DESC, rowid DESC LIMIT ?1",
        )?;
        let mut rows = stmt.query([sql_limit(limit)])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(session_from_row(row)?);
        }
        Ok(out)
    }

    /// Joins `label` into the session's label and returns the new label; a label never
    /// goes down. (`absorb_result` does this together with the sources seen and the
    /// exposure counters.)
    pub fn raise_session_label(
        &self,
        id: &SessionId,
        label: Label,
        now_ms: i64,
    ) -> Result<Label, StoreError> {
        self.absorb_result(id, label, "", &[], now_ms)
    }

    /// Renames a session.
    pub fn set_session_title(&self, id: &SessionId, title: &str) -> Result<(), StoreError> {
        let inner = self.lock();
        let changed = inner
            .conn
            .prepare_cached("UPDATE sessions SET title = ?2 WHERE id = ?1")?
            .execute(params![id.as_str(), title])?;
        if changed == 0 {
            return Err(StoreError::UnknownSession(id.clone()));
        }
        Ok(())
    }

    /// Appends a message and returns its seq (1 for the first message of a session). Bumps
    /// the session's `updated_ms` to the message's `created_ms` (it never goes back).
    /// Does not touch the session's label: raising it is the caller's separate step.
    pub fn append_message(&self, session: &SessionId, msg: &NewMessage) -> Result<i64, StoreError> {
        let tool_calls = match &msg.tool_calls {
            Some(value) if too_deep(value) => {
                return Err(StoreError::TooDeep {
                    max: MAX_JSON_DEPTH,
                });
            }
            Some(value) => Some(canonical_json(value)),
            None => None,
        };
        let source = msg.source.as_string();
        let mut inner = self.lock();
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let touched = tx
            .prepare_cached("UPDATE sessions SET updated_ms = max(updated_ms, ?2) WHERE id = ?1")?
            .execute(params![session.as_str(), msg.created_ms])?;
        if touched == 0 {
            return Err(StoreError::UnknownSession(session.clone()));
        }
        let seq: i64 = tx
            .prepare_cached("SELECT coalesce(max(seq), 0) + 1 FROM messages WHERE session_id = ?1")?
            .query_row([session.as_str()], |row| row.get(0))?;
        tx.prepare_cached(
            "INSERT INTO messages (session_id, seq, role, content, tool_calls, tool_call_id,
                 source, integrity, confidentiality, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            session.as_str(),
            seq,
            msg.role.as_str(),
            msg.content,
            tool_calls,
            msg.tool_call_id,
            source,
            msg.label.integrity.as_str(),
            msg.label.confidentiality.as_str(),
            msg.created_ms,
        ])?;
        tx.commit()?;
        Ok(seq)
    }

    /// All messages of a session in seq order (empty for an unknown session).
    pub fn messages(&self, session: &SessionId) -> Result<Vec<MessageRecord>, StoreError> {
        let inner = self.lock();
        let mut stmt = inner.conn.prepare_cached(
            "SELECT seq, role, content, tool_calls, tool_call_id, source, integrity,
                 confidentiality, created_ms
             FROM messages WHERE session_id = ?1 ORDER BY seq",
        )?;
        let mut rows = stmt.query([session.as_str()])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(message_from_row(row)?);
        }
        Ok(out)
    }

    /// Remembers that the agent wrote `path` (workspace-relative) with this content digest
    /// and label. A later write to the same path replaces the record.
    pub fn record_agent_write(
        &self,
        path: &str,
        sha256_hex: &str,
        label: Label,
        session: &SessionId,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let inner = self.lock();
        inner
            .conn
            .prepare_cached(
                "INSERT INTO agent_writes
                     (path, sha256, integrity, confidentiality, session_id, written_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (path) DO UPDATE SET sha256 = excluded.sha256,
                     integrity = excluded.integrity, confidentiality = excluded.confidentiality,
                     session_id = excluded.session_id, written_ms = excluded.written_ms",
            )?
            .execute(params![
                path,
                sha256_hex,
                label.integrity.as_str(),
                label.confidentiality.as_str(),
                session.as_str(),
                now_ms
            ])?;
        Ok(())
    }

    /// The join of the labels of every file the agent wrote with this content digest,
    /// wherever it wrote it; `None` when it never wrote such content.
    pub fn agent_write_label_by_digest(
        &self,
        sha256_hex: &str,
    ) -> Result<Option<Label>, StoreError> {
        let inner = self.lock();
        let mut stmt = inner.conn.prepare_cached(
            "SELECT integrity, confidentiality FROM agent_writes WHERE sha256 = ?1",
        )?;
        let mut rows = stmt.query([sha256_hex])?;
        let mut label: Option<Label> = None;
        while let Some(row) = rows.next()? {
            let found = parse_label(&row.get::<_, String>(0)?, &row.get::<_, String>(1)?)?;
            label = Some(label.map_or(found, |l| l.join(found)));
        }
        Ok(label)
    }

    /// The last agent write recorded for `path`, if any.
    pub fn agent_write(&self, path: &str) -> Result<Option<AgentWrite>, StoreError> {
        let inner = self.lock();
        let mut stmt = inner.conn.prepare_cached(
            "SELECT sha256, integrity, confidentiality, session_id
             FROM agent_writes WHERE path = ?1",
        )?;
        let mut rows = stmt.query([path])?;
        let Some(row) = rows.next()? else {
            return Ok(None);
        };
        Ok(Some(AgentWrite {
            sha256_hex: row.get(0)?,
            label: parse_label(&row.get::<_, String>(1)?, &row.get::<_, String>(2)?)?,
            session: SessionId::new(row.get::<_, String>(3)?),
        }))
    }
}

fn session_from_row(row: &Row<'_>) -> Result<SessionRecord, StoreError> {
    let id: String = row.get(0)?;
    let egress_hosts = match row.get::<_, Option<String>>(6)? {
        Some(text) => Some(serde_json::from_str(&text).map_err(|e| {
            StoreError::Corrupt(format!("the host list of session {id} is not json: {e}"))
        })?),
        None => None,
    };
    let seen = json_column(&row.get::<_, String>(8)?, "seen list", &id)?;
    let exposure = json_column(&row.get::<_, String>(9)?, "exposure", &id)?;
    Ok(SessionRecord {
        id: SessionId::new(id),
        title: row.get(1)?,
        created_ms: row.get(2)?,
        updated_ms: row.get(3)?,
        label: parse_label(&row.get::<_, String>(4)?, &row.get::<_, String>(5)?)?,
        egress_hosts,
        model: row.get(7)?,
        seen,
        exposure,
    })
}

fn json_column<T: serde::de::DeserializeOwned>(
    text: &str,
    what: &str,
    id: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("the {what} of session {id} is unreadable: {e}")))
}

fn message_from_row(row: &Row<'_>) -> Result<MessageRecord, StoreError> {
    let seq: i64 = row.get(0)?;
    let role: String = row.get(1)?;
    let role = Role::parse(&role)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown role {role:?} in message {seq}")))?;
    let tool_calls = match row.get::<_, Option<String>>(3)? {
        Some(text) => Some(serde_json::from_str(&text).map_err(|e| {
            StoreError::Corrupt(format!("tool_calls of message {seq} are not json: {e}"))
        })?),
        None => None,
    };
    let source: String = row.get(5)?;
    let source = Source::parse(&source).ok_or_else(|| {
        StoreError::Corrupt(format!("unknown source {source:?} in message {seq}"))
    })?;
    Ok(MessageRecord {
        seq,
        role,
        content: row.get(2)?,
        tool_calls,
        tool_call_id: row.get(4)?,
        source,
        label: parse_label(&row.get::<_, String>(6)?, &row.get::<_, String>(7)?)?,
        created_ms: row.get(8)?,
    })
}

pub(crate) fn parse_label(integrity: &str, confidentiality: &str) -> Result<Label, StoreError> {
    let corrupt =
        |what: &str, value: &str| StoreError::Corrupt(format!("unknown {what} {value:?}"));
    Ok(Label {
        integrity: Integrity::parse(integrity).ok_or_else(|| corrupt("integrity", integrity))?,
        confidentiality: Confidentiality::parse(confidentiality)
            .ok_or_else(|| corrupt("confidentiality", confidentiality))?,
    })
}

/// A `LIMIT` for SQLite, which takes a signed 64-bit integer.
pub(crate) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::Role;

    #[test]
    fn role_names_round_trip() {
        for role in [Role::System, Role::User, Role::Assistant, Role::Tool] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("owner"), None);
    }
}
