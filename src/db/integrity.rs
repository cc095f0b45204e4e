//! The state store's safety records: which mappings a stored sync state does not cover yet
//! (no lost deletes), deletes held by the delete breaker until an administrator decides,
//! records the first contact could not link unambiguously, and the retry schedule of parked
//! failures.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::state::FolderState;
use super::{q, sqlite_placeholders, Db, DbError};

/// Where a held delete would be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// The CRM row would be deleted (the item is gone from Exchange).
    Crm,
    /// The Exchange item would be deleted (the row is gone from the CRM).
    Exchange,
}

impl Side {
    /// Column and API value.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Crm => "crm",
            Side::Exchange => "exchange",
        }
    }

    fn parse(s: &str) -> Side {
        if s == "crm" {
            Side::Crm
        } else {
            Side::Exchange
        }
    }
}

/// An administrator's answer to held deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Apply the deletes.
    Approve,
    /// Restore what was deleted from the other side.
    Reject,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Reject => "reject",
        }
    }
}

/// One delete the breaker holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Mailbox.
    pub mailbox: String,
    /// CRM table of the record.
    pub crm_table: String,
    /// `own`, `shared` or the path of a mail folder: the breaker counts each on its own.
    pub scope: String,
    /// Where the delete would be applied.
    pub side: Side,
    /// The CRM row.
    pub crm_id: i64,
    /// The Exchange item ('' when unknown).
    pub ews_item_id: String,
    /// Something a person recognises the record by (name, subject).
    pub title: String,
    /// The administrator's decision, once given.
    pub decision: Option<Decision>,
}

/// Held deletes of one mailbox, grouped as the API shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldGroup {
    /// CRM table.
    pub crm_table: String,
    /// Scope.
    pub scope: String,
    /// Side.
    pub side: Side,
    /// How many.
    pub count: i64,
    /// A few of them, to recognise what would go.
    pub sample: Vec<Held>,
}

/// A record left alone because the first contact found several candidates for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ambiguous {
    /// CRM table of the area.
    pub crm_table: String,
    /// Which side `record` is on.
    pub side: Side,
    /// A CRM id (side crm) or an Exchange item id (side exchange).
    pub record: String,
    /// What a person recognises it by.
    pub title: String,
    /// The candidates on the other side (ids).
    pub candidates: Vec<String>,
}

/// When a parked failure is tried again: doubling from one minute after the first failure up
/// to one day. Checked arithmetic: any attempt count gives a time.
pub fn next_retry(attempts: i64, now: DateTime<Utc>) -> DateTime<Utc> {
    let exponent = attempts.clamp(1, 32) - 1;
    let minutes = 1i64
        .checked_shl(exponent as u32)
        .unwrap_or(i64::MAX)
        .min(24 * 60);
    now.checked_add_signed(chrono::Duration::minutes(minutes))
        .unwrap_or(now)
}

fn held_row<R: Row>(r: &R) -> Result<Held, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let decision: Option<String> = r.try_get(7)?;
    Ok(Held {
        mailbox: r.try_get(0)?,
        crm_table: r.try_get(1)?,
        scope: r.try_get(2)?,
        side: Side::parse(&r.try_get::<String, _>(3)?),
        crm_id: r.try_get(4)?,
        ews_item_id: r.try_get(5)?,
        title: r.try_get(6)?,
        decision: match decision.as_deref() {
            Some("approve") => Some(Decision::Approve),
            Some("reject") => Some(Decision::Reject),
            _ => None,
        },
    })
}

const HELD_COLUMNS: &str =
    "mailbox, crm_table, scope, side, crm_id, ews_item_id, title, decision FROM ms_held";

impl Db {
    /// Whether mailsync's state tables exist here (the state store was migrated).
    pub async fn has_state_tables(&self) -> bool {
        on_db!(
            self,
            "SELECT COUNT(*) FROM ms_item_map WHERE 1 = 0",
            "probing the state store",
            |x| x,
            fetch_one,
            |_r| ()
        )
        .is_ok()
    }

    /// Stores a folder's new sync state and, in the same transaction, marks the mappings of
    /// the items that state covers as verified (`ews_ids`: what the reads since the previous
    /// state reported). A crash between the two cannot leave a covered item unverified
    /// or an unverified item covered.
    pub async fn store_state_verifying(
        &self,
        mailbox: &str,
        folder_key: &str,
        state: &FolderState,
        ews_ids: &[String],
    ) -> Result<(), DbError> {
        let upsert = "INSERT INTO ms_folder_state (mailbox, folder_key, ews_folder_id, sync_state) VALUES ($1, $2, $3, $4) \
                      ON CONFLICT (mailbox, folder_key) DO UPDATE SET ews_folder_id = excluded.ews_folder_id, \
                      sync_state = excluded.sync_state, updated_at = now()";
        let what = "storing a folder state";
        match self {
            Db::Postgres(p) => {
                let mut tx = p.begin().await.map_err(q("starting a transaction"))?;
                sqlx::query(upsert)
                    .bind(mailbox)
                    .bind(folder_key)
                    .bind(&state.ews_folder_id)
                    .bind(&state.sync_state)
                    .execute(&mut *tx)
                    .await
                    .map_err(q(what))?;
                for chunk in ews_ids.chunks(500) {
                    sqlx::query("UPDATE ms_item_map SET unverified = FALSE WHERE mailbox = $1 AND unverified AND ews_item_id = ANY($2)")
                        .bind(mailbox)
                        .bind(chunk.to_vec())
                        .execute(&mut *tx)
                        .await
                        .map_err(q("verifying item mappings"))?;
                }
                tx.commit().await.map_err(q(what))
            }
            Db::Sqlite(p) => {
                let mut tx = p.begin().await.map_err(q("starting a transaction"))?;
                sqlx::query(&sqlite_placeholders(upsert))
                    .bind(mailbox)
                    .bind(folder_key)
                    .bind(&state.ews_folder_id)
                    .bind(&state.sync_state)
                    .execute(&mut *tx)
                    .await
                    .map_err(q(what))?;
                for chunk in ews_ids.chunks(500) {
                    sqlx::query("UPDATE ms_item_map SET unverified = 0 WHERE mailbox = ?1 AND unverified = 1 AND ews_item_id IN (SELECT value FROM json_each(?2))")
                        .bind(mailbox)
                        .bind(serde_json::Value::from(chunk.to_vec()).to_string())
                        .execute(&mut *tx)
                        .await
                        .map_err(q("verifying item mappings"))?;
                }
                tx.commit().await.map_err(q(what))
            }
            Db::MySql(_) => Err(DbError::Url(super::STATE_NOT_MYSQL.into())),
        }
    }

    /// Marks mappings verified (an item found with GetItem after a read did not report it).
    pub async fn verify_mappings(&self, mailbox: &str, ews_ids: &[String]) -> Result<(), DbError> {
        if ews_ids.is_empty() {
            return Ok(());
        }
        for chunk in ews_ids.chunks(500) {
            match self {
                Db::Postgres(p) => sqlx::query("UPDATE ms_item_map SET unverified = FALSE WHERE mailbox = $1 AND ews_item_id = ANY($2)")
                    .bind(mailbox)
                    .bind(chunk.to_vec())
                    .execute(p)
                    .await
                    .map(|_| ()),
                Db::Sqlite(p) => sqlx::query("UPDATE ms_item_map SET unverified = 0 WHERE mailbox = ?1 AND ews_item_id IN (SELECT value FROM json_each(?2))")
                    .bind(mailbox)
                    .bind(serde_json::Value::from(chunk.to_vec()).to_string())
                    .execute(p)
                    .await
                    .map(|_| ()),
                Db::MySql(_) => return Err(DbError::Url(super::STATE_NOT_MYSQL.into())),
            }
            .map_err(q("verifying item mappings"))?;
        }
        Ok(())
    }

    /// The mappings of a mailbox and table that no stored sync state covers yet.
    pub async fn unverified_mappings(
        &self,
        mailbox: &str,
        crm_table: &str,
    ) -> Result<Vec<super::state::ItemMapping>, DbError> {
        Ok(self
            .mappings_of(mailbox, crm_table)
            .await?
            .into_iter()
            .filter(|m| m.unverified)
            .collect())
    }

    /// How many mappings a mailbox has in a table (the size of the area for the breaker).
    pub async fn count_mappings(&self, mailbox: &str, crm_table: &str) -> Result<i64, DbError> {
        on_db!(
            self,
            "SELECT COUNT(*) FROM ms_item_map WHERE mailbox = $1 AND crm_table = $2",
            "counting item mappings",
            |x| x.bind(mailbox).bind(crm_table),
            fetch_one,
            |row| row.try_get::<i64, _>(0)
        )?
        .map_err(q("counting item mappings"))
    }

    /// Holds deletes (a record already held keeps its entry and decision).
    pub async fn hold(&self, all: &[Held]) -> Result<(), DbError> {
        let sql = "INSERT INTO ms_held (mailbox, crm_table, scope, side, crm_id, ews_item_id, title) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                   ON CONFLICT (mailbox, crm_table, crm_id) DO NOTHING";
        macro_rules! in_tx {
            ($pool:expr, $sql:expr) => {{
                let mut tx = $pool.begin().await.map_err(q("starting a transaction"))?;
                for h in all {
                    sqlx::query($sql)
                        .bind(&h.mailbox)
                        .bind(&h.crm_table)
                        .bind(&h.scope)
                        .bind(h.side.as_str())
                        .bind(h.crm_id)
                        .bind(&h.ews_item_id)
                        .bind(&h.title)
                        .execute(&mut *tx)
                        .await
                        .map_err(q("holding a delete"))?;
                }
                tx.commit().await.map_err(q("holding deletes"))
            }};
        }
        match self {
            Db::Postgres(p) => in_tx!(p, sql),
            Db::Sqlite(p) => in_tx!(p, &sqlite_placeholders(sql)),
            Db::MySql(_) => Err(DbError::Url(super::STATE_NOT_MYSQL.into())),
        }
    }

    /// The held deletes of a mailbox (all tables when `crm_table` is `None`).
    pub async fn held(&self, mailbox: &str, crm_table: Option<&str>) -> Result<Vec<Held>, DbError> {
        let sql = format!(
            "SELECT {HELD_COLUMNS} WHERE mailbox = $1 AND ($2 OR crm_table = $3) ORDER BY id"
        );
        on_db!(
            self,
            &sql,
            "reading held deletes",
            |x| x
                .bind(mailbox)
                .bind(crm_table.is_none())
                .bind(crm_table.unwrap_or_default()),
            fetch_all,
            |rows| rows.iter().map(held_row).collect::<Result<Vec<_>, _>>()
        )?
        .map_err(q("reading held deletes"))
    }

    /// Held deletes of a mailbox grouped by table, scope and side, each with a sample.
    pub async fn held_groups(
        &self,
        mailbox: &str,
        sample: usize,
    ) -> Result<Vec<HeldGroup>, DbError> {
        let mut groups: Vec<HeldGroup> = Vec::new();
        for h in self.held(mailbox, None).await? {
            let at = groups
                .iter()
                .position(|g| g.crm_table == h.crm_table && g.scope == h.scope && g.side == h.side);
            let g = match at {
                Some(i) => &mut groups[i],
                None => {
                    groups.push(HeldGroup {
                        crm_table: h.crm_table.clone(),
                        scope: h.scope.clone(),
                        side: h.side,
                        count: 0,
                        sample: Vec::new(),
                    });
                    groups.last_mut().expect("just pushed")
                }
            };
            g.count += 1;
            if g.sample.len() < sample {
                g.sample.push(h);
            }
        }
        Ok(groups)
    }

    /// Every mailbox's number of held deletes per table (for the metrics gauge).
    pub async fn held_counts(&self) -> Result<Vec<(String, String, i64)>, DbError> {
        on_db!(
            self,
            "SELECT mailbox, crm_table, COUNT(*) FROM ms_held GROUP BY mailbox, crm_table",
            "counting held deletes",
            |x| x,
            fetch_all,
            |rows| rows
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()
        )?
        .map_err(q("counting held deletes"))
    }

    /// Records an administrator's decision on the held deletes of a mailbox (optionally of one
    /// table and scope) that have none yet: a decision stands until its step carries it out,
    /// so a second, contradicting one (two administrators, a double click) cannot turn an
    /// approval into a rejection halfway. Returns how many entries it covers.
    pub async fn decide_held(
        &self,
        mailbox: &str,
        crm_table: Option<&str>,
        scope: Option<&str>,
        decision: Decision,
    ) -> Result<u64, DbError> {
        let sql = "UPDATE ms_held SET decision = $1 WHERE decision IS NULL AND mailbox = $2 AND ($3 OR crm_table = $4) AND ($5 OR scope = $6)";
        on_db!(
            self,
            sql,
            "deciding held deletes",
            |x| x
                .bind(decision.as_str())
                .bind(mailbox)
                .bind(crm_table.is_none())
                .bind(crm_table.unwrap_or_default())
                .bind(scope.is_none())
                .bind(scope.unwrap_or_default()),
            execute,
            |r| r.rows_affected()
        )
    }

    /// Forgets held entries once carried out.
    pub async fn release_held(
        &self,
        mailbox: &str,
        crm_table: &str,
        crm_ids: &[i64],
    ) -> Result<(), DbError> {
        for id in crm_ids {
            on_db!(
                self,
                "DELETE FROM ms_held WHERE mailbox = $1 AND crm_table = $2 AND crm_id = $3",
                "releasing a held delete",
                |x| x.bind(mailbox).bind(crm_table).bind(*id),
                execute,
                |_r| ()
            )?;
        }
        Ok(())
    }

    /// Records ambiguous first-contact matches of a table (replacing the previous list).
    pub async fn set_ambiguous(
        &self,
        mailbox: &str,
        crm_table: &str,
        all: &[Ambiguous],
    ) -> Result<(), DbError> {
        on_db!(
            self,
            "DELETE FROM ms_ambiguous WHERE mailbox = $1 AND crm_table = $2",
            "clearing ambiguous matches",
            |x| x.bind(mailbox).bind(crm_table),
            execute,
            |_r| ()
        )?;
        self.add_ambiguous(mailbox, crm_table, all).await
    }

    /// Adds ambiguous first-contact matches of a table to its list.
    pub async fn add_ambiguous(
        &self,
        mailbox: &str,
        crm_table: &str,
        all: &[Ambiguous],
    ) -> Result<(), DbError> {
        for a in all {
            on_db!(
                self,
                "INSERT INTO ms_ambiguous (mailbox, crm_table, side, record, title, candidates) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (mailbox, crm_table, side, record) DO NOTHING",
                "recording an ambiguous match",
                |x| x
                    .bind(mailbox)
                    .bind(crm_table)
                    .bind(a.side.as_str())
                    .bind(&a.record)
                    .bind(&a.title)
                    .bind(serde_json::Value::from(a.candidates.clone()).to_string()),
                execute,
                |_r| ()
            )?;
        }
        Ok(())
    }

    /// The ambiguous records of a mailbox and table.
    pub async fn ambiguous(
        &self,
        mailbox: &str,
        crm_table: &str,
    ) -> Result<Vec<Ambiguous>, DbError> {
        on_db!(
            self,
            "SELECT side, record, title, candidates FROM ms_ambiguous WHERE mailbox = $1 AND crm_table = $2 ORDER BY record",
            "reading ambiguous matches",
            |x| x.bind(mailbox).bind(crm_table),
            fetch_all,
            |rows| rows
                .iter()
                .map(|r| {
                    Ok(Ambiguous {
                        crm_table: crm_table.to_owned(),
                        side: Side::parse(&r.try_get::<String, _>(0)?),
                        record: r.try_get(1)?,
                        title: r.try_get(2)?,
                        candidates: serde_json::from_str(&r.try_get::<String, _>(3)?)
                            .unwrap_or_default(),
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
        )?
        .map_err(q("reading ambiguous matches"))
    }

    /// Forgets one ambiguous record (it was synced on request, or it changed in a way that
    /// resolved it).
    pub async fn forget_ambiguous(
        &self,
        mailbox: &str,
        crm_table: &str,
        side: Side,
        record: &str,
    ) -> Result<(), DbError> {
        on_db!(
            self,
            "DELETE FROM ms_ambiguous WHERE mailbox = $1 AND crm_table = $2 AND side = $3 AND record = $4",
            "forgetting an ambiguous match",
            |x| x.bind(mailbox).bind(crm_table).bind(side.as_str()).bind(record),
            execute,
            |_r| ()
        )
    }

    /// The earliest retry time of a mailbox's parked failures, if any.
    pub async fn next_failure_retry(
        &self,
        mailbox: &str,
    ) -> Result<Option<DateTime<Utc>>, DbError> {
        on_db!(
            self,
            "SELECT MIN(next_retry_at) FROM ms_failures WHERE mailbox = $1 AND next_retry_at IS NOT NULL",
            "reading the next retry time",
            |x| x.bind(mailbox),
            fetch_one,
            |row| row.try_get::<Option<DateTime<Utc>>, _>(0)
        )?
        .map_err(q("reading the next retry time"))
    }

    /// The attempts recorded for a failure so far (0: none).
    pub async fn failure_attempts(
        &self,
        mailbox: &str,
        crm_table: &str,
        crm_id: i64,
        ews_item_id: &str,
    ) -> Result<i64, DbError> {
        on_db!(
            self,
            "SELECT attempts FROM ms_failures WHERE mailbox = $1 AND crm_table = $2 AND crm_id = $3 AND ews_item_id = $4",
            "reading a failure",
            |x| x.bind(mailbox).bind(crm_table).bind(crm_id).bind(ews_item_id),
            fetch_optional,
            |row| row.map(|r| r.try_get::<i64, _>(0)).transpose()
        )?
        .map(|a| a.unwrap_or(0))
        .map_err(q("reading a failure"))
    }

    /// Moves a parked failure's retry time (it is being retried now).
    pub async fn postpone_failure(
        &self,
        mailbox: &str,
        crm_table: &str,
        crm_id: i64,
        ews_item_id: &str,
        until: DateTime<Utc>,
    ) -> Result<(), DbError> {
        on_db!(
            self,
            "UPDATE ms_failures SET next_retry_at = $5 WHERE mailbox = $1 AND crm_table = $2 AND crm_id = $3 AND ews_item_id = $4",
            "postponing a failure",
            |x| x.bind(mailbox).bind(crm_table).bind(crm_id).bind(ews_item_id).bind(until),
            execute,
            |_r| ()
        )
    }

    /// The parked failures of a table whose retry time has come.
    pub async fn due_failures(
        &self,
        mailbox: &str,
        crm_table: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<super::state::Failure>, DbError> {
        Ok(self
            .failures(mailbox, Some(now))
            .await?
            .into_iter()
            .filter(|f| f.crm_table == crm_table)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_from_a_minute_to_a_day_and_never_overflow() {
        let now = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        let minutes = |a| (next_retry(a, now) - now).num_minutes();
        assert_eq!(minutes(1), 1);
        assert_eq!(minutes(2), 2);
        assert_eq!(minutes(3), 4);
        assert_eq!(minutes(11), 1024);
        assert_eq!(minutes(12), 24 * 60);
        assert_eq!(minutes(i64::MAX), 24 * 60);
        assert_eq!(minutes(0), 1);
        assert_eq!(minutes(-5), 1);
        let end = DateTime::<Utc>::MAX_UTC;
        assert_eq!(next_retry(3, end), end);
    }
}
