//! Retention: what the maintenance job of `mailsync run` deletes so that the databases do not
//! grow without bound — consumed change-log rows, old conflict-log entries, and the state of
//! mailboxes that left the configuration.
//!
//! Every cut is by age *and* by a condition that makes the row useless: a `crm_changes` row
//! only once the feed's cursor is past it, a removed mailbox's state only once the mailbox has
//! been out of the configuration for the whole retention period (an accidental removal that
//! is undone in time keeps its mappings). Deletes run in bounded batches so that no single
//! statement holds locks for long.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::changes::Cursor;
use super::journal::sqlite_time;
use super::{q, Db, DbError};

/// Rows deleted per statement.
const BATCH: i64 = 5_000;

/// The state tables of a mailbox, in the order they are pruned.
const MAILBOX_TABLES: [&str; 7] = [
    "ms_pending",
    "ms_item_map",
    "ms_folder_state",
    "ms_failures",
    "ms_conflicts",
    "ms_held",
    "ms_ambiguous",
];

/// What one pass deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// crm_changes rows (consumed and older than the retention).
    pub changes: u64,
    /// Conflict-log entries older than the retention.
    pub conflicts: u64,
    /// Mailboxes whose whole state was deleted.
    pub mailboxes: Vec<String>,
    /// Rows of those mailboxes' state.
    pub mailbox_rows: u64,
}

impl Db {
    /// Deletes change-log rows at or before `cursor` (already routed by the feed) and logged
    /// before `cutoff`. Runs on the business database.
    pub async fn prune_changes(
        &self,
        cursor: Cursor,
        cutoff: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        let mut total = 0;
        loop {
            let n = match self {
                Db::Postgres(p) => sqlx::query(
                    "DELETE FROM crm_changes WHERE seq IN (SELECT seq FROM crm_changes \
                     WHERE at < $1 AND (txid, seq) <= ($2, $3) LIMIT $4)",
                )
                .bind(cutoff)
                .bind(cursor.txid)
                .bind(cursor.seq)
                .bind(BATCH)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
                Db::Sqlite(p) => sqlx::query(
                    "DELETE FROM crm_changes WHERE seq IN (SELECT seq FROM crm_changes \
                     WHERE at < ?1 AND seq <= ?2 LIMIT ?3)",
                )
                .bind(sqlite_time(cutoff))
                .bind(cursor.seq)
                .bind(BATCH)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
                // Only numbered rows (`seq <= cursor` is false for NULL): a change not
                // numbered yet has not been read. MySQL has no LIMIT in IN subqueries.
                Db::MySql(p) => sqlx::query(
                    "DELETE FROM crm_changes WHERE at < ? AND seq <= ? ORDER BY seq LIMIT ?",
                )
                .bind(cutoff)
                .bind(cursor.seq)
                .bind(BATCH)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
            }
            .map_err(q("pruning crm_changes"))?;
            total += n;
            if n < BATCH as u64 {
                return Ok(total);
            }
        }
    }

    /// Deletes conflict-log entries logged before `cutoff`.
    pub async fn prune_conflicts(&self, cutoff: DateTime<Utc>) -> Result<u64, DbError> {
        let mut total = 0;
        loop {
            let n = match self {
                Db::Postgres(p) => sqlx::query(
                    "DELETE FROM ms_conflicts WHERE id IN (SELECT id FROM ms_conflicts WHERE at < $1 LIMIT $2)",
                )
                .bind(cutoff)
                .bind(BATCH)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
                Db::Sqlite(p) => sqlx::query(
                    "DELETE FROM ms_conflicts WHERE id IN (SELECT id FROM ms_conflicts WHERE at < ?1 LIMIT ?2)",
                )
                .bind(sqlite_time(cutoff))
                .bind(BATCH)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
                Db::MySql(_) => return Err(DbError::Url(super::STATE_NOT_MYSQL.into())),
            }
            .map_err(q("pruning the conflict log"))?;
            total += n;
            if n < BATCH as u64 {
                return Ok(total);
            }
        }
    }

    /// Notes that `mailboxes` are configured now (their removal clock starts when they stop
    /// being listed), and that every mailbox with state but no note yet was seen now too
    /// (state from before retention existed gets the full grace period).
    pub async fn mark_configured(&self, mailboxes: &[String]) -> Result<(), DbError> {
        let upsert = "INSERT INTO ms_mailboxes (mailbox) VALUES ($1) ON CONFLICT (mailbox) \
                      DO UPDATE SET last_configured_at = now()";
        for m in mailboxes {
            on_db!(
                self,
                upsert,
                "noting a configured mailbox",
                |x| x.bind(m),
                execute,
                |_r| ()
            )?;
        }
        let adopt = "INSERT INTO ms_mailboxes (mailbox) SELECT DISTINCT mailbox FROM ms_folder_state \
                     WHERE mailbox NOT IN (SELECT mailbox FROM ms_mailboxes) \
                     UNION SELECT DISTINCT mailbox FROM ms_item_map WHERE mailbox NOT IN (SELECT mailbox FROM ms_mailboxes)";
        on_db!(
            self,
            adopt,
            "noting mailboxes with state",
            |x| x,
            execute,
            |_r| ()
        )
    }

    /// Deletes the whole state of every mailbox not in `configured` that was last configured
    /// before `cutoff`: pending work, mappings, folder states, failures, conflicts, and the
    /// note itself. Returns the mailboxes and the number of rows.
    pub async fn prune_removed_mailboxes(
        &self,
        configured: &[String],
        cutoff: DateTime<Utc>,
    ) -> Result<(Vec<String>, u64), DbError> {
        let candidates: Vec<String> = match self {
            Db::Postgres(p) => sqlx::query(
                "SELECT mailbox FROM ms_mailboxes WHERE last_configured_at < $1 ORDER BY mailbox",
            )
            .bind(cutoff)
            .fetch_all(p)
            .await
            .map(|rows| rows.iter().map(|r| r.get::<String, _>(0)).collect()),
            Db::Sqlite(p) => sqlx::query(
                "SELECT mailbox FROM ms_mailboxes WHERE last_configured_at < ?1 ORDER BY mailbox",
            )
            .bind(sqlite_time(cutoff))
            .fetch_all(p)
            .await
            .map(|rows| rows.iter().map(|r| r.get::<String, _>(0)).collect()),
            Db::MySql(_) => return Err(DbError::Url(super::STATE_NOT_MYSQL.into())),
        }
        .map_err(q("finding removed mailboxes"))?;
        let mut gone = Vec::new();
        let mut rows = 0;
        for mailbox in candidates {
            if configured.iter().any(|c| c.eq_ignore_ascii_case(&mailbox)) {
                continue;
            }
            for table in MAILBOX_TABLES {
                let sql = format!("DELETE FROM {table} WHERE mailbox = $1");
                rows += on_db!(
                    self,
                    &sql,
                    "pruning a removed mailbox's state",
                    |x| x.bind(&mailbox),
                    execute,
                    |r| r.rows_affected()
                )?;
            }
            on_db!(
                self,
                "DELETE FROM ms_mailboxes WHERE mailbox = $1",
                "pruning a removed mailbox's state",
                |x| x.bind(&mailbox),
                execute,
                |_r| ()
            )?;
            gone.push(mailbox);
        }
        Ok((gone, rows))
    }
}
