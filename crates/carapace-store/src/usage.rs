//! Token counts and cost of model calls, per session and per UTC day.

use carapace_types::SessionId;
use rusqlite::params;

use crate::{Store, StoreError};

/// One model call's usage, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRecord {
    /// The session the call was for.
    pub session: SessionId,
    /// The model that answered, `provider/model`.
    pub model: String,
    /// When, in Unix milliseconds; its UTC date is the day it counts for.
    pub created_ms: i64,
    /// Tokens of the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Cost in millionths of a US dollar; `None` when the model has no price.
    pub cost_micros: Option<u64>,
}

/// Usage summed over some calls.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageTotal {
    /// Model calls.
    pub calls: u64,
    /// Tokens of the prompts.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Cost of the calls with a price, in millionths of a US dollar.
    pub cost_micros: u64,
    /// Calls of models without a price (their cost is not in `cost_micros`).
    pub unpriced_calls: u64,
}

/// The usage of one day and model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRow {
    /// The UTC date, `YYYY-MM-DD`.
    pub day: String,
    /// The model, `provider/model`.
    pub model: String,
    /// Its totals.
    pub total: UsageTotal,
}

/// The UTC date of a Unix time in milliseconds, `YYYY-MM-DD` (proleptic Gregorian).
pub fn utc_day(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

impl Store {
    /// Records one model call.
    pub fn record_usage(&self, r: &UsageRecord) -> Result<(), StoreError> {
        let inner = self.lock();
        inner
            .conn
            .prepare_cached(
                "INSERT INTO usage (session_id, model, day, created_ms, prompt_tokens,
                     completion_tokens, cost_micros)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                r.session.as_str(),
                r.model,
                utc_day(r.created_ms),
                r.created_ms,
                sql_int(r.prompt_tokens),
                sql_int(r.completion_tokens),
                r.cost_micros.map(sql_int),
            ])?;
        Ok(())
    }

    /// The totals of one UTC day (`YYYY-MM-DD`), over every session.
    pub fn usage_of_day(&self, day: &str) -> Result<UsageTotal, StoreError> {
        self.total("WHERE day = ?1", day)
    }

    /// The totals of one session.
    pub fn usage_of_session(&self, session: &SessionId) -> Result<UsageTotal, StoreError> {
        self.total("WHERE session_id = ?1", session.as_str())
    }

    /// Per day and model, the days from `first_day` on (inclusive), newest first.
    pub fn usage_since(&self, first_day: &str) -> Result<Vec<UsageRow>, StoreError> {
        let inner = self.lock();
        let mut stmt = inner.conn.prepare_cached(&format!(
            "SELECT day, model, {TOTALS} FROM usage WHERE day >= ?1
             GROUP BY day, model ORDER BY day DESC, model"
        ))?;
        let mut rows = stmt.query([first_day])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(UsageRow {
                day: row.get(0)?,
                model: row.get(1)?,
                total: total_from(row, 2)?,
            });
        }
        Ok(out)
    }

    fn total(&self, filter: &str, arg: &str) -> Result<UsageTotal, StoreError> {
        let inner = self.lock();
        let mut stmt = inner
            .conn
            .prepare_cached(&format!("SELECT {TOTALS} FROM usage {filter}"))?;
        let mut rows = stmt.query([arg])?;
        match rows.next()? {
            Some(row) => total_from(row, 0),
            None => Ok(UsageTotal::default()),
        }
    }
}

/// The aggregate columns read by [`total_from`].
const TOTALS: &str =
    "COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0),
     COALESCE(SUM(cost_micros), 0), COUNT(*) - COUNT(cost_micros)";

fn total_from(row: &rusqlite::Row<'_>, at: usize) -> Result<UsageTotal, StoreError> {
    let get = |i: usize| -> Result<u64, StoreError> {
        let v: i64 = row.get(at + i)?;
        u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative usage total {v}")))
    };
    Ok(UsageTotal {
        calls: get(0)?,
        prompt_tokens: get(1)?,
        completion_tokens: get(2)?,
        cost_micros: get(3)?,
        unpriced_calls: get(4)?,
    })
}

/// SQLite integers are signed 64-bit; counts beyond that are clamped.
fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::utc_day;

    #[test]
    fn utc_days_across_leap_years_and_before_1970() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(86_399_999), "1970-01-01");
        assert_eq!(utc_day(86_400_000), "1970-01-02");
        assert_eq!(utc_day(-1), "1969-12-31");
        assert_eq!(utc_day(951_782_400_000), "2000-02-29");
        assert_eq!(utc_day(1_709_164_800_000), "2024-02-29");
        assert_eq!(utc_day(1_796_083_200_000), "2026-12-01");
    }
}
