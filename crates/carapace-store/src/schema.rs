//! The schema, one migration per `PRAGMA user_version` step. Never edit a migration that
//! has shipped; add the next one.

use rusqlite::{Connection, TransactionBehavior};

use crate::StoreError;

const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5, V6, V7];

const V1: &str = "
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    integrity TEXT NOT NULL,
    confidentiality TEXT NOT NULL
) STRICT;
CREATE INDEX sessions_by_update ON sessions (updated_ms DESC);

CREATE TABLE messages (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    tool_calls TEXT,
    tool_call_id TEXT,
    source TEXT NOT NULL,
    integrity TEXT NOT NULL,
    confidentiality TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (session_id, seq)
) STRICT, WITHOUT ROWID;

-- No foreign key to sessions: the file outlives the session that wrote it, and losing
-- this row would make an agent-written file look like one the owner put there.
CREATE TABLE agent_writes (
    path TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    integrity TEXT NOT NULL,
    confidentiality TEXT NOT NULL,
    session_id TEXT NOT NULL,
    written_ms INTEGER NOT NULL
) STRICT;
-- The same content under another name (a link, a copy) keeps the label it was written with.
CREATE INDEX agent_writes_by_digest ON agent_writes (sha256);

CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    record TEXT NOT NULL
) STRICT;
CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    signature TEXT NOT NULL
) STRICT;
-- Guards against a bug in this crate, not against an attacker (who can drop them);
-- the hash chain and the signed head are what catch an attacker.
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
";

/// The session's own egress host list (JSON array of strings; NULL: none), set when the
/// session is created.
const V2: &str = "
ALTER TABLE sessions ADD COLUMN egress_hosts TEXT;
";

/// Token counts and cost of every model call, for `cara usage` and the daily budget.
/// `day` is the UTC date of the call; cost is in millionths of a US dollar, NULL when the
/// model has no price.
const V3: &str = "
CREATE TABLE usage (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    model TEXT NOT NULL,
    day TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_micros INTEGER
) STRICT;
CREATE INDEX usage_by_day ON usage (day);
CREATE INDEX usage_by_session ON usage (session_id);
";

/// The model a session was switched to (`/model`); NULL: the configured one.
const V4: &str = "
ALTER TABLE sessions ADD COLUMN model TEXT;
";

/// Policy state of a session: the sources it has seen (JSON array of source names), its
/// exposure counters (JSON object of counts by kind), the grants the owner approved (an
/// approved plan step or an "approve for this session" answer; `step` is the step's JSON,
/// `remaining` NULL means unbounded), and plain-English rules compiled by a model, keyed
/// by the SHA-256 of their text (`rule` is the structured rule as JSON, or NULL with the
/// reason in `error` when it did not compile).
const V5: &str = "
ALTER TABLE sessions ADD COLUMN seen TEXT NOT NULL DEFAULT '[]';
ALTER TABLE sessions ADD COLUMN exposure TEXT NOT NULL DEFAULT '{}';
CREATE TABLE grants (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    id TEXT NOT NULL,
    step TEXT NOT NULL,
    remaining INTEGER,
    expires_ms INTEGER,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (session_id, id)
) STRICT;
CREATE TABLE compiled_rules (
    sha256 TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    rule TEXT,
    error TEXT,
    model TEXT NOT NULL,
    compiled_ms INTEGER NOT NULL
) STRICT;
";

/// When the owner confirmed a compiled plain-English rule (`cara rules confirm`); NULL:
/// not yet, and the model keeps judging the text beside the compiled rule. A new
/// compilation of the same text clears it.
const V6: &str = "
ALTER TABLE compiled_rules ADD COLUMN confirmed_ms INTEGER;
";

/// The dead-letter queue: outbound messages the Gate blocked, kept for the owner. The text
/// is sealed by the caller (`nonce`, `ciphertext`: AES-256-GCM with `id \n channel \n
/// recipient` as associated data); this table never holds it in plain text. `bytes` is
/// the length of the text. `resolved_ms` and `resolved_by` are set when the owner
/// released or discarded it, exactly once. A channel name holds no newline, so the
/// associated data reads back one way only. No foreign key to sessions: a dead letter
/// outlives its session.
const V7: &str = "
CREATE TABLE dead_letters (
    id TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    session TEXT NOT NULL,
    principal TEXT NOT NULL,
    channel TEXT NOT NULL CHECK (instr(channel, char(10)) = 0),
    recipient TEXT NOT NULL,
    code TEXT NOT NULL,
    stage TEXT NOT NULL,
    rule TEXT,
    bytes INTEGER NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    status TEXT NOT NULL DEFAULT 'held' CHECK (status IN ('held', 'released', 'discarded')),
    resolved_ms INTEGER,
    resolved_by TEXT,
    CHECK ((status = 'held') = (resolved_ms IS NULL AND resolved_by IS NULL))
) STRICT;
CREATE INDEX dead_letters_by_time ON dead_letters (created_ms DESC);
";

/// Brings the schema up to date. Runs in one IMMEDIATE transaction so that two processes
/// opening a new file at once do not both create the tables.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let supported = MIGRATIONS.len();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let Ok(done) = usize::try_from(found) else {
        return Err(StoreError::Corrupt(format!(
            "negative schema version {found}"
        )));
    };
    if done > supported {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: supported as i64,
        });
    }
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version as i64 + 1)?;
    }
    tx.commit()?;
    Ok(())
}
