//! Reading the business database's change log (crm_changes) after a cursor, in commit-safe
//! order and in batches, and waking up on PostgreSQL NOTIFY instead of polling.
//!
//! Commit-safe order per backend (docs/crm-schema.md has the argument in full):
//! PostgreSQL returns only changes of transactions older than the oldest one still running,
//! ordered by (txid, seq); SQLite serialises its writers, so seq is commit order; on
//! MariaDB/MySQL the reader itself numbers committed changes (`seq`) in the order it finds
//! them committed ([`Db::stamp_changes`]), so a change committed late is numbered after
//! everything already read.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::Row;

use super::{q, Db, DbError};

/// A position in the change log. On PostgreSQL the writing transaction's id orders first
/// (see the schema's comment on crm_changes); on SQLite, whose writers are serialized, and on
/// MariaDB/MySQL, whose `seq` is stamped in commit order, `txid` is always 0 and `seq` alone
/// orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Cursor {
    /// Writing transaction (PostgreSQL), 0 on SQLite and MariaDB/MySQL.
    pub txid: i64,
    /// Change sequence number.
    pub seq: i64,
}

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    /// Inserted.
    Insert,
    /// Updated.
    Update,
    /// Deleted.
    Delete,
}

/// One entry of crm_changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Its place in the log.
    pub cursor: Cursor,
    /// The table, e.g. crm_contacts.
    pub table: String,
    /// The row's id.
    pub row_id: i64,
    /// Insert, update or delete.
    pub op: ChangeOp,
    /// The row's owner (operator), where the table has one.
    pub owner_id: Option<i64>,
    /// The row's tenant, where the table has one.
    pub tenant_id: Option<i64>,
    /// The mailbox whose sync step wrote it; `None` for every other writer (users, the ERP).
    pub origin: Option<String>,
}

/// The PostgreSQL read of the change log. Only changes of transactions older than the oldest
/// one still running *that could write here* are returned: the horizon is the lowest id among
/// the snapshot's running transactions, leaving out those pg_stat_activity shows in another
/// database of the cluster (they cannot write to this database's change log, and one left open
/// there must not stall the feed). Leaving out only transactions known to be elsewhere is safe
/// whenever pg_stat_activity is read: a transaction of this database is never among them, and
/// one that cannot be placed (ended meanwhile, or not visible to this user) counts as this
/// database's, which only makes the horizon lower. Ids: pg_stat_activity shows 32-bit xids,
/// the snapshot 64-bit ones (two running transactions never share the low 32 bits).
const PG_CHANGES_AFTER: &str = "WITH snap AS MATERIALIZED (SELECT pg_current_snapshot() AS s), \
     horizon AS (SELECT COALESCE( \
       (SELECT MIN(x::text::bigint) FROM snap, pg_snapshot_xip(snap.s) AS x \
        WHERE x::text::bigint % 4294967296 NOT IN ( \
          SELECT backend_xid::text::bigint FROM pg_stat_activity \
          WHERE backend_xid IS NOT NULL AND datname IS DISTINCT FROM current_database())), \
       (SELECT pg_snapshot_xmax(s)::text::bigint FROM snap)) AS h) \
     SELECT seq, txid, table_name, row_id, op::text AS op, owner_id, tenant_id, origin FROM crm_changes, horizon \
     WHERE txid < horizon.h AND (txid, seq) > ($1, $2) \
     ORDER BY txid, seq LIMIT $3";

impl Db {
    /// Changes after `after`, oldest first, at most `limit`. On PostgreSQL only changes of
    /// transactions older than the oldest one still running are returned, so a change that
    /// commits later can never fall behind a cursor that already moved past it; on
    /// MariaDB/MySQL newly committed changes are numbered first ([`Db::stamp_changes`]) for the
    /// same reason.
    pub async fn changes_after(&self, after: Cursor, limit: i64) -> Result<Vec<Change>, DbError> {
        let rows = match self {
            Db::Postgres(p) => sqlx::query(PG_CHANGES_AFTER)
            .bind(after.txid)
            .bind(after.seq)
            .bind(limit)
            .fetch_all(p)
            .await
            .map_err(q("reading crm_changes"))?
            .into_iter()
            .map(|r| change(&r))
            .collect::<Result<Vec<_>, _>>(),
            Db::Sqlite(p) => sqlx::query(
                "SELECT seq, 0 AS txid, table_name, row_id, op, owner_id, tenant_id, origin FROM crm_changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .bind(after.seq)
            .bind(limit)
            .fetch_all(p)
            .await
            .map_err(q("reading crm_changes"))?
            .into_iter()
            .map(|r| change(&r))
            .collect::<Result<Vec<_>, _>>(),
            Db::MySql(p) => {
                self.stamp_changes(STAMP_BATCH).await?;
                sqlx::query(
                    "SELECT seq, CAST(0 AS SIGNED) AS txid, table_name, row_id, op, owner_id, tenant_id, origin \
                     FROM crm_changes WHERE seq > ? ORDER BY seq LIMIT ?",
                )
                .bind(after.seq)
                .bind(limit)
                .fetch_all(p)
                .await
                .map_err(q("reading crm_changes"))?
                .into_iter()
                .map(|r| change(&r))
                .collect::<Result<Vec<_>, _>>()
            }
        };
        rows.map_err(q("decoding crm_changes"))
    }

    /// MariaDB/MySQL: numbers up to `max` committed, unnumbered changes (`seq` NULL) after the
    /// highest number handed out, in the order they were written; returns how many.
    ///
    /// Why this loses nothing: a change whose transaction is still open is locked by it, and
    /// `FOR UPDATE SKIP LOCKED` passes it by; it is numbered by a later round, after
    /// everything numbered before, so a reader's `seq` cursor can never have moved past it.
    /// Rounds are serialised by the counter row's lock (several mailsync instances), and
    /// InnoDB makes a transaction visible before it releases its locks, so a round sees every
    /// number an earlier round committed. Writers never wait for the reader: it locks only
    /// committed rows and the counter, under READ COMMITTED (no gap locks). Does nothing on
    /// the other backends, whose order needs no numbering.
    pub async fn stamp_changes(&self, max: i64) -> Result<u64, DbError> {
        let Db::MySql(p) = self else { return Ok(0) };
        // A cheap look first: an idle poll costs one indexed read, no transaction.
        let waiting: Option<i64> =
            sqlx::query_scalar("SELECT id FROM crm_changes WHERE seq IS NULL LIMIT 1")
                .fetch_optional(p)
                .await
                .map_err(q("looking for new crm_changes"))?;
        if waiting.is_none() {
            return Ok(0);
        }
        let what = "numbering crm_changes";
        let mut conn = p.acquire().await.map_err(q(what))?;
        // For the next transaction only: no gap locks, so inserting writers never wait.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .execute(&mut *conn)
            .await
            .map_err(q(what))?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(q(what))?;
        let last: i64 =
            sqlx::query_scalar("SELECT seq FROM crm_change_counter WHERE id = 1 FOR UPDATE")
                .fetch_one(&mut *tx)
                .await
                .map_err(q(what))?;
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM crm_changes WHERE seq IS NULL ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED",
        )
        .bind(max)
        .fetch_all(&mut *tx)
        .await
        .map_err(q(what))?;
        if ids.is_empty() {
            tx.rollback().await.map_err(q(what))?;
            return Ok(0);
        }
        // Numbered in id order (the order they were written). Ids come in runs of consecutive
        // numbers (a gap is a change still open, or rolled back); each run is numbered with
        // `seq = id + offset`, up to 100 runs per statement. A single-table UPDATE by primary
        // key ranges that hold only rows this round locked: under READ COMMITTED it never
        // waits for another writer's row.
        let runs = runs(&ids, last);
        for chunk in runs.chunks(100) {
            let cases = " WHEN id BETWEEN ? AND ? THEN ?".repeat(chunk.len());
            let ranges = vec!["id BETWEEN ? AND ?"; chunk.len()].join(" OR ");
            let sql = format!("UPDATE crm_changes SET seq = id + CASE{cases} END WHERE {ranges}");
            let mut update = sqlx::query(&sql);
            for (from, to, offset) in chunk {
                update = update.bind(*from).bind(*to).bind(*offset);
            }
            for (from, to, _) in chunk {
                update = update.bind(*from).bind(*to);
            }
            update.execute(&mut *tx).await.map_err(q(what))?;
        }
        let next = last + ids.len() as i64;
        sqlx::query("UPDATE crm_change_counter SET seq = ? WHERE id = 1")
            .bind(next)
            .execute(&mut *tx)
            .await
            .map_err(q(what))?;
        tx.commit().await.map_err(q(what))?;
        Ok(ids.len() as u64)
    }
}

/// How many changes one numbering round takes at most (MariaDB/MySQL).
const STAMP_BATCH: i64 = 5000;

/// Runs of consecutive ids in `ids` (ascending) as (first, last, offset), numbered from
/// `after + 1` on in order: the change `id` of a run gets `id + offset`.
fn runs(ids: &[i64], after: i64) -> Vec<(i64, i64, i64)> {
    let mut out: Vec<(i64, i64, i64)> = Vec::new();
    for (k, &id) in ids.iter().enumerate() {
        let seq = after + 1 + k as i64;
        match out.last_mut() {
            Some((_, to, _)) if *to + 1 == id => *to = id,
            _ => out.push((id, id, seq - id)),
        }
    }
    out
}

fn change<R: Row>(r: &R) -> Result<Change, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let op: String = r.try_get("op")?;
    let op = match op.trim() {
        "I" => ChangeOp::Insert,
        "U" => ChangeOp::Update,
        "D" => ChangeOp::Delete,
        other => {
            return Err(sqlx::Error::Decode(
                format!("unknown change op {other:?}").into(),
            ))
        }
    };
    Ok(Change {
        cursor: Cursor {
            txid: r.try_get("txid")?,
            seq: r.try_get("seq")?,
        },
        table: r.try_get("table_name")?,
        row_id: r.try_get("row_id")?,
        op,
        owner_id: r.try_get("owner_id")?,
        tenant_id: r.try_get("tenant_id")?,
        origin: r.try_get("origin")?,
    })
}

/// Wakes a change reader when the business database has something new: LISTEN crm_changes
/// on PostgreSQL, a poll interval on SQLite and MariaDB/MySQL (which have no notifications).
pub enum ChangeSignal {
    /// PostgreSQL LISTEN.
    Listen(Box<PgListener>),
    /// Poll every so often.
    Poll(Duration),
}

impl ChangeSignal {
    /// The signal for `db`; `poll` is the interval on SQLite and MariaDB/MySQL.
    pub async fn new(db: &Db, poll: Duration) -> Result<ChangeSignal, DbError> {
        match db {
            Db::Postgres(p) => {
                let mut l = PgListener::connect_with(p)
                    .await
                    .map_err(q("connecting the change listener"))?;
                l.listen("crm_changes")
                    .await
                    .map_err(q("LISTEN crm_changes"))?;
                Ok(ChangeSignal::Listen(Box::new(l)))
            }
            Db::Sqlite(_) | Db::MySql(_) => Ok(ChangeSignal::Poll(poll)),
        }
    }

    /// Waits until there may be news, or `max` passes. True when a notification arrived.
    /// A lost listener connection reconnects on the next call (PgListener does so itself);
    /// callers read after every return anyway, so nothing is missed either way.
    pub async fn wait(&mut self, max: Duration) -> bool {
        match self {
            ChangeSignal::Listen(l) => {
                matches!(tokio::time::timeout(max, l.recv()).await, Ok(Ok(_)))
            }
            ChangeSignal::Poll(every) => {
                tokio::time::sleep((*every).min(max)).await;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::runs;

    #[test]
    fn consecutive_ids_are_numbered_in_runs() {
        assert_eq!(runs(&[], 7), vec![]);
        // 10, 11, 12 | 15 | 20, 21 numbered 8..=13.
        let r = runs(&[10, 11, 12, 15, 20, 21], 7);
        assert_eq!(r, vec![(10, 12, -2), (15, 15, -4), (20, 21, -8)]);
        let numbered: Vec<i64> = [10, 11, 12, 15, 20, 21]
            .iter()
            .map(|id| {
                let (_, _, off) = r.iter().find(|(a, b, _)| a <= id && id <= b).unwrap();
                id + off
            })
            .collect();
        assert_eq!(numbered, vec![8, 9, 10, 11, 12, 13]);
    }
}
