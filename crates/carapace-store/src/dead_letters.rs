//! The dead-letter queue: outbound messages the Gate blocked, kept for the owner to
//! release (send after all) or discard.
//!
//! The store never sees a message's text: the caller seals it (the vault crate's
//! `SealKey`, which this crate does not depend on) and hands over the nonce and the
//! ciphertext, which come back as they went in. The seal is bound to its row by the
//! associated data [`NewDeadLetter::associated_data`] (`id \n channel \n recipient`), so
//! a ciphertext copied to another row, or a row edited to go to another recipient, does
//! not open.
//!
//! A letter is resolved once, each step one statement: a release first claims the letter
//! ([`Store::claim_dead_letter`]: held to releasing), so of two owners releasing at once
//! only one sends and a discard cannot take a letter being sent; then it sends, and
//! marks it released ([`Store::resolve_dead_letter`]) or, when the send failed, puts it
//! back on hold ([`Store::unclaim_dead_letter`]). A crash in between leaves it releasing,
//! never sent twice. A discard takes only a held letter.
//!
//! The version 7 table allows no fourth status, so a letter being released is stored
//! as `released` with `resolved_by` (who claimed it) and no `resolved_ms` yet; this
//! module reads that back as [`DeadLetterStatus::Releasing`].

use carapace_types::SessionId;
use rusqlite::{OptionalExtension as _, params};

use crate::{Store, StoreError};

/// Where a dead letter stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadLetterStatus {
    /// Waiting for the owner.
    Held,
    /// Claimed by a release whose send has not finished (or was cut short by a crash:
    /// then it may or may not have been sent, and is not sent again).
    Releasing,
    /// The owner had it sent.
    Released,
    /// The owner threw it away.
    Discarded,
}

/// What the owner decided about a letter (a resolved letter cannot be put back on hold).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Send it.
    Released,
    /// Throw it away.
    Discarded,
}

impl DeadLetterStatus {
    /// The name shown: `held`, `releasing`, `released` or `discarded`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterStatus::Held => "held",
            DeadLetterStatus::Releasing => "releasing",
            DeadLetterStatus::Released => "released",
            DeadLetterStatus::Discarded => "discarded",
        }
    }

    /// The status of a row: its `status` column, and `released` without a
    /// `resolved_ms` is a release under way.
    fn parse(s: &str, resolved_ms: Option<i64>) -> Result<DeadLetterStatus, StoreError> {
        Ok(match s {
            "held" => DeadLetterStatus::Held,
            "released" if resolved_ms.is_none() => DeadLetterStatus::Releasing,
            "released" => DeadLetterStatus::Released,
            "discarded" => DeadLetterStatus::Discarded,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "unknown dead-letter status {other:?}"
                )));
            }
        })
    }
}

impl From<Resolution> for DeadLetterStatus {
    fn from(r: Resolution) -> DeadLetterStatus {
        match r {
            Resolution::Released => DeadLetterStatus::Released,
            Resolution::Discarded => DeadLetterStatus::Discarded,
        }
    }
}

/// What is known about a blocked message besides its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterMeta {
    /// When it was blocked, ms since the epoch.
    pub created_ms: i64,
    /// The session it was sent from.
    pub session: SessionId,
    /// Who sent it (the principal, like `agent:RUN@socket`).
    pub principal: String,
    /// The channel's name (no newline).
    pub channel: String,
    /// Whom it was for, as the sender wrote it.
    pub recipient: String,
    /// The Gate's error code, like `UNAUTHORIZED`.
    pub code: String,
    /// The Gate stage that blocked it, like `authorize`.
    pub stage: String,
    /// The rule that blocked it, when one did.
    pub rule: Option<String>,
    /// The length of the text in bytes.
    pub bytes: u64,
}

/// A dead letter about to be stored. Its id is made here, before the text is sealed,
/// because the seal is bound to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDeadLetter {
    id: String,
    /// Its metadata.
    pub meta: DeadLetterMeta,
}

impl NewDeadLetter {
    /// A new letter with a fresh id: `dl_` and 16 random hex digits.
    pub fn new(meta: DeadLetterMeta) -> Result<NewDeadLetter, StoreError> {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_err(|e| StoreError::Io {
            context: "cannot get random bytes".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(NewDeadLetter {
            id: format!("dl_{}", hex::encode(bytes)),
            meta,
        })
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The associated data to seal its text with; see [`associated_data`].
    pub fn associated_data(&self) -> Vec<u8> {
        associated_data(&self.id, &self.meta.channel, &self.meta.recipient)
    }
}

/// A stored dead letter without its sealed text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// `dl_` and 16 hex digits.
    pub id: String,
    /// What was blocked, where and why.
    pub meta: DeadLetterMeta,
    /// Held, releasing, released or discarded.
    pub status: DeadLetterStatus,
    /// When the owner resolved it; `None` while held or releasing.
    pub resolved_ms: Option<i64>,
    /// Who resolved it, or is releasing it (the owner's principal); `None` while held.
    pub resolved_by: Option<String>,
}

impl DeadLetter {
    /// The associated data its text was sealed with; see [`associated_data`].
    pub fn associated_data(&self) -> Vec<u8> {
        associated_data(&self.id, &self.meta.channel, &self.meta.recipient)
    }
}

/// A stored dead letter with its sealed text, exactly as it was stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterSealed {
    /// The letter.
    pub letter: DeadLetter,
    /// The seal's nonce.
    pub nonce: Vec<u8>,
    /// The sealed text.
    pub ciphertext: Vec<u8>,
}

/// The associated data of a dead letter's seal: `id \n channel \n recipient` in UTF-8.
/// It reads back one way only: the id is `dl_` and hex, and a channel name with a newline
/// is refused by the table, so everything after the second newline is the recipient.
pub fn associated_data(id: &str, channel: &str, recipient: &str) -> Vec<u8> {
    let mut ad = Vec::with_capacity(id.len() + channel.len() + recipient.len() + 2);
    ad.extend_from_slice(id.as_bytes());
    ad.push(b'\n');
    ad.extend_from_slice(channel.as_bytes());
    ad.push(b'\n');
    ad.extend_from_slice(recipient.as_bytes());
    ad
}

/// Rows held for the owner: held, or being released.
const HELD_LIKE: &str = "(status = 'held' OR (status = 'released' AND resolved_ms IS NULL))";

const COLUMNS: &str = "id, created_ms, session, principal, channel, recipient, code, stage, \
                       rule, bytes, status, resolved_ms, resolved_by";

impl Store {
    /// Stores a blocked message: its metadata and its sealed text (`nonce`,
    /// `ciphertext`), held for the owner. Returns its id.
    pub fn add_dead_letter(
        &self,
        letter: &NewDeadLetter,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<String, StoreError> {
        let m = &letter.meta;
        let bytes = i64::try_from(m.bytes)
            .map_err(|_| StoreError::Corrupt(format!("{} bytes is too long", m.bytes)))?;
        let inner = self.lock();
        inner
            .conn
            .prepare_cached(
                "INSERT INTO dead_letters (id, created_ms, session, principal, channel, \
                 recipient, code, stage, rule, bytes, nonce, ciphertext) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![
                letter.id,
                m.created_ms,
                m.session.as_str(),
                m.principal,
                m.channel,
                m.recipient,
                m.code,
                m.stage,
                m.rule,
                bytes,
                nonce,
                ciphertext
            ])?;
        Ok(letter.id.clone())
    }

    /// The dead letters, newest first, without their text: the held and releasing ones,
    /// or all with `include_resolved`.
    pub fn dead_letters(&self, include_resolved: bool) -> Result<Vec<DeadLetter>, StoreError> {
        let inner = self.lock();
        let mut stmt = inner.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM dead_letters WHERE ?1 OR {HELD_LIKE} \
             ORDER BY created_ms DESC, rowid DESC"
        ))?;
        let rows = stmt.query_map([include_resolved], raw)?;
        rows.map(|row| from_raw(row?)).collect()
    }

    /// The held and releasing letters of one session, oldest first, without their text:
    /// what counts against the session's quota. (A scan: the table has no index by
    /// session, and holds what the quotas let in plus what the owner resolved.)
    pub fn held_dead_letters_of(&self, session: &SessionId) -> Result<Vec<DeadLetter>, StoreError> {
        let inner = self.lock();
        let mut stmt = inner.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM dead_letters WHERE session = ?1 AND {HELD_LIKE} \
             ORDER BY created_ms, rowid"
        ))?;
        let rows = stmt.query_map([session.as_str()], raw)?;
        rows.map(|row| from_raw(row?)).collect()
    }

    /// One dead letter with its sealed text, if there is one with this id.
    pub fn dead_letter(&self, id: &str) -> Result<Option<DeadLetterSealed>, StoreError> {
        let inner = self.lock();
        let mut stmt = inner.conn.prepare_cached(&format!(
            "SELECT {COLUMNS}, nonce, ciphertext FROM dead_letters WHERE id = ?1"
        ))?;
        let row = stmt
            .query_row([id], |row| {
                Ok((
                    raw(row)?,
                    row.get::<_, Vec<u8>>(13)?,
                    row.get::<_, Vec<u8>>(14)?,
                ))
            })
            .optional()?;
        row.map(|(r, nonce, ciphertext)| {
            Ok(DeadLetterSealed {
                letter: from_raw(r)?,
                nonce,
                ciphertext,
            })
        })
        .transpose()
    }

    /// Claims a held letter for a release by `by`: true when this call moved it from held
    /// to releasing, false when there is no such letter or it is not held (claimed,
    /// released or discarded by this owner or another, at the same moment or before).
    /// Only a `true` may send it.
    pub fn claim_dead_letter(&self, id: &str, by: &str) -> Result<bool, StoreError> {
        let inner = self.lock();
        let changed = inner
            .conn
            .prepare_cached(
                "UPDATE dead_letters SET status = 'released', resolved_by = ?2 \
                 WHERE id = ?1 AND status = 'held'",
            )?
            .execute(params![id, by])?;
        Ok(changed == 1)
    }

    /// Puts a letter being released back on hold (its send failed): true when this call
    /// moved it from releasing to held.
    pub fn unclaim_dead_letter(&self, id: &str) -> Result<bool, StoreError> {
        let inner = self.lock();
        let changed = inner
            .conn
            .prepare_cached(
                "UPDATE dead_letters SET status = 'held', resolved_by = NULL \
                 WHERE id = ?1 AND status = 'released' AND resolved_ms IS NULL",
            )?
            .execute([id])?;
        Ok(changed == 1)
    }

    /// Resolves a letter: [`Resolution::Released`] moves a letter being released (claimed
    /// by [`claim_dead_letter`](Self::claim_dead_letter), then sent) to released;
    /// [`Resolution::Discarded`] moves a held letter, never one being released, to
    /// discarded. True when this call moved it, false when there is no such letter or it
    /// was not in that state (resolved already, by this owner or another, at the same
    /// moment or before).
    pub fn resolve_dead_letter(
        &self,
        id: &str,
        resolution: Resolution,
        by: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let from = match resolution {
            Resolution::Released => "status = 'released' AND resolved_ms IS NULL",
            Resolution::Discarded => "status = 'held'",
        };
        let inner = self.lock();
        let changed = inner
            .conn
            .prepare_cached(&format!(
                "UPDATE dead_letters SET status = ?2, resolved_ms = ?3, resolved_by = ?4 \
                 WHERE id = ?1 AND {from}"
            ))?
            .execute(params![
                id,
                DeadLetterStatus::from(resolution).as_str(),
                now_ms,
                by
            ])?;
        Ok(changed == 1)
    }
}

type Raw = (
    String,
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    i64,
    String,
    Option<i64>,
    Option<String>,
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
        row.get(7)?,
        row.get(8)?,
        row.get(9)?,
        row.get(10)?,
        row.get(11)?,
        row.get(12)?,
    ))
}

fn from_raw(
    (
        id,
        created_ms,
        session,
        principal,
        channel,
        recipient,
        code,
        stage,
        rule,
        bytes,
        status,
        resolved_ms,
        resolved_by,
    ): Raw,
) -> Result<DeadLetter, StoreError> {
    let bytes = u64::try_from(bytes)
        .map_err(|_| StoreError::Corrupt(format!("dead letter {id} has {bytes} bytes")))?;
    Ok(DeadLetter {
        meta: DeadLetterMeta {
            created_ms,
            session: SessionId::new(session),
            principal,
            channel,
            recipient,
            code,
            stage,
            rule,
            bytes,
        },
        status: DeadLetterStatus::parse(&status, resolved_ms)?,
        resolved_ms,
        resolved_by,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(at: i64, to: &str) -> DeadLetterMeta {
        DeadLetterMeta {
            created_ms: at,
            session: SessionId::new("s_run"),
            principal: "agent:r1@socket".into(),
            channel: "imsg".into(),
            recipient: to.into(),
            code: "UNAUTHORIZED".into(),
            stage: "authorize".into(),
            rule: None,
            bytes: 5,
        }
    }

    fn add(store: &Store, at: i64, to: &str) -> String {
        let letter = NewDeadLetter::new(meta(at, to)).unwrap();
        store
            .add_dead_letter(&letter, &[7; 12], b"sealed-bytes")
            .unwrap()
    }

    #[test]
    fn a_letter_round_trips_with_its_sealed_bytes_untouched() {
        let store = Store::open_in_memory().unwrap();
        let mut m = meta(1_000, "+14155550100");
        m.rule = Some("channel.imsg.filter.0".into());
        m.code = "POLICY_DENIED".into();
        m.stage = "policy".into();
        let letter = NewDeadLetter::new(m.clone()).unwrap();
        assert!(letter.id().starts_with("dl_") && letter.id().len() == 19);
        assert!(letter.id()[3..].bytes().all(|b| b.is_ascii_hexdigit()));
        let id = store
            .add_dead_letter(&letter, &[1; 12], &[0, 255, 10, 13])
            .unwrap();
        assert_eq!(id, letter.id());

        let got = store.dead_letter(&id).unwrap().unwrap();
        assert_eq!(
            got,
            DeadLetterSealed {
                letter: DeadLetter {
                    id: id.clone(),
                    meta: m,
                    status: DeadLetterStatus::Held,
                    resolved_ms: None,
                    resolved_by: None,
                },
                nonce: vec![1; 12],
                ciphertext: vec![0, 255, 10, 13],
            }
        );
        assert_eq!(
            got.letter.associated_data(),
            format!("{id}\nimsg\n+14155550100").into_bytes()
        );
        assert_eq!(got.letter.associated_data(), letter.associated_data());
        assert_eq!(store.dead_letters(false).unwrap(), vec![got.letter]);
        assert_eq!(store.dead_letter("dl_0000000000000000").unwrap(), None);
    }

    #[test]
    fn the_list_is_newest_first_and_hides_resolved_letters_unless_asked() {
        let store = Store::open_in_memory().unwrap();
        let old = add(&store, 100, "a");
        let new = add(&store, 300, "b");
        let same_ms_later = add(&store, 300, "c");
        let middle = add(&store, 200, "d");
        let ids = |all| -> Vec<String> {
            store
                .dead_letters(all)
                .unwrap()
                .into_iter()
                .map(|l| l.id)
                .collect()
        };
        assert_eq!(
            ids(false),
            [
                same_ms_later.clone(),
                new.clone(),
                middle.clone(),
                old.clone()
            ]
        );
        assert!(
            store
                .resolve_dead_letter(&middle, Resolution::Discarded, "owner@cli", 400)
                .unwrap()
        );
        assert_eq!(
            ids(false),
            [same_ms_later.clone(), new.clone(), old.clone()]
        );
        assert_eq!(ids(true), [same_ms_later, new, middle, old]);
    }

    #[test]
    fn a_letter_is_resolved_once_only() {
        let store = Store::open_in_memory().unwrap();
        let id = add(&store, 1, "x");
        // Released only after a claim.
        assert!(
            !store
                .resolve_dead_letter(&id, Resolution::Released, "owner@cli", 40)
                .unwrap()
        );
        assert!(store.claim_dead_letter(&id, "owner@cli").unwrap());
        assert!(
            store
                .resolve_dead_letter(&id, Resolution::Released, "owner@cli", 50)
                .unwrap()
        );
        // A second release, or a discard after it, changes nothing.
        assert!(!store.claim_dead_letter(&id, "owner@ws").unwrap());
        assert!(!store.unclaim_dead_letter(&id).unwrap());
        assert!(
            !store
                .resolve_dead_letter(&id, Resolution::Released, "owner@ws", 60)
                .unwrap()
        );
        assert!(
            !store
                .resolve_dead_letter(&id, Resolution::Discarded, "owner@ws", 70)
                .unwrap()
        );
        assert!(
            !store
                .resolve_dead_letter("dl_nope", Resolution::Released, "owner@cli", 80)
                .unwrap()
        );
        let l = store.dead_letter(&id).unwrap().unwrap().letter;
        assert_eq!(l.status, DeadLetterStatus::Released);
        assert_eq!(l.resolved_ms, Some(50));
        assert_eq!(l.resolved_by.as_deref(), Some("owner@cli"));
    }

    #[test]
    fn two_owners_resolving_at_once_send_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("carapace.db");
        let first = Store::open(&path).unwrap();
        let id = add(&first, 1, "x");
        let won: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let path = &path;
                    let id = &id;
                    s.spawn(move || {
                        let store = Store::open(path).unwrap();
                        let by = format!("owner{i}");
                        if i % 2 == 0 {
                            store.claim_dead_letter(id, &by).unwrap()
                        } else {
                            store
                                .resolve_dead_letter(id, Resolution::Discarded, &by, i)
                                .unwrap()
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| usize::from(h.join().unwrap()))
                .sum()
        });
        assert_eq!(won, 1);
    }

    #[test]
    fn a_letter_being_released_is_listed_as_held_and_cannot_be_discarded() {
        let store = Store::open_in_memory().unwrap();
        let id = add(&store, 1, "x");
        let other = add(&store, 2, "y");
        assert!(store.claim_dead_letter(&id, "owner@cli").unwrap());
        let status = |id: &str| store.dead_letter(id).unwrap().unwrap().letter.status;
        assert_eq!(status(&id), DeadLetterStatus::Releasing);
        let held: Vec<(String, &str)> = store
            .dead_letters(false)
            .unwrap()
            .into_iter()
            .map(|l| (l.id, l.status.as_str()))
            .collect();
        assert_eq!(held, [(other.clone(), "held"), (id.clone(), "releasing")]);
        assert_eq!(
            store
                .held_dead_letters_of(&SessionId::new("s_run"))
                .unwrap()
                .len(),
            2
        );
        // A discard (or a second release) while it is being sent does not take it.
        assert!(
            !store
                .resolve_dead_letter(&id, Resolution::Discarded, "owner@ws", 3)
                .unwrap()
        );
        assert!(!store.claim_dead_letter(&id, "owner@ws").unwrap());
        // The send failed: back on hold, as it was.
        assert!(store.unclaim_dead_letter(&id).unwrap());
        let l = store.dead_letter(&id).unwrap().unwrap().letter;
        assert_eq!(
            (l.status, l.resolved_ms, l.resolved_by),
            (DeadLetterStatus::Held, None, None)
        );
        assert!(!store.unclaim_dead_letter(&id).unwrap());
        assert!(
            store
                .resolve_dead_letter(&id, Resolution::Discarded, "owner@ws", 4)
                .unwrap()
        );
        assert!(!store.unclaim_dead_letter(&id).unwrap());
        assert_eq!(status(&id), DeadLetterStatus::Discarded);
    }

    #[test]
    fn the_held_letters_of_a_session_are_its_own() {
        let store = Store::open_in_memory().unwrap();
        let first = add(&store, 1, "x");
        let second = add(&store, 2, "y");
        let resolved = add(&store, 3, "z");
        assert!(
            store
                .resolve_dead_letter(&resolved, Resolution::Discarded, "owner@ws", 4)
                .unwrap()
        );
        let mut m = meta(5, "x");
        m.session = SessionId::new("s_other");
        let letter = NewDeadLetter::new(m).unwrap();
        store.add_dead_letter(&letter, &[0; 12], b"c").unwrap();
        let ids: Vec<String> = store
            .held_dead_letters_of(&SessionId::new("s_run"))
            .unwrap()
            .into_iter()
            .map(|l| l.id)
            .collect();
        assert_eq!(ids, [first, second]);
    }

    #[test]
    fn a_version_6_database_gains_the_queue_and_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("carapace.db");
        let store = Store::open(&path).unwrap();
        store
            .create_session(&SessionId::new("s_old"), "before v7", 1)
            .unwrap();
        drop(store);
        // Back to the schema of version 6, as an older build left it.
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.execute_batch("DROP TABLE dead_letters; PRAGMA user_version = 6;")
            .unwrap();
        drop(raw);

        let store = Store::open(&path).unwrap();
        let version: i64 = store
            .lock()
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 7);
        assert!(store.session(&SessionId::new("s_old")).unwrap().is_some());
        assert!(store.dead_letters(true).unwrap().is_empty());
        let id = add(&store, 5, "x");
        assert_eq!(store.dead_letters(false).unwrap()[0].id, id);
    }

    #[test]
    fn a_channel_name_with_a_newline_is_refused() {
        let store = Store::open_in_memory().unwrap();
        let mut m = meta(1, "x");
        m.channel = "imsg\n+1415".into();
        let letter = NewDeadLetter::new(m).unwrap();
        assert!(matches!(
            store.add_dead_letter(&letter, &[0; 12], b"c"),
            Err(StoreError::Sqlite(_))
        ));
        assert!(store.dead_letters(true).unwrap().is_empty());
    }

    #[test]
    fn an_unknown_status_is_corrupt() {
        let store = Store::open_in_memory().unwrap();
        let id = add(&store, 1, "x");
        // The table's own checks refuse it, so go around them as a damaged file would.
        {
            let inner = store.lock();
            inner
                .conn
                .execute_batch("PRAGMA ignore_check_constraints = ON")
                .unwrap();
            inner
                .conn
                .execute(
                    "UPDATE dead_letters SET status = 'sent', resolved_ms = 1, resolved_by = 'x'",
                    [],
                )
                .unwrap();
        }
        assert!(matches!(
            store.dead_letter(&id),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            store.dead_letters(true),
            Err(StoreError::Corrupt(_))
        ));
    }
}
