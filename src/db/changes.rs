//! Reading the business database's change log (crm_changes) after a cursor, in commit-safe
//! order and in batches, and waking up on PostgreSQL NOTIFY instead of polling.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::Row;

use super::{q, Db, DbError};

/// A position in the change log. On PostgreSQL the writing transaction's id orders first
/// (see the schema's comment on crm_changes); on SQLite, whose writers are serialized, `txid`
/// is always 0 and `seq` alone orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Cursor {
    /// Writing transaction (PostgreSQL), 0 on SQLite.
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
}

impl Db {
    /// Changes after `after`, oldest first, at most `limit`. On PostgreSQL only changes of
    /// transactions older than the oldest one still running are returned, so a change that
    /// commits later can never fall behind a cursor that already moved past it.
    pub async fn changes_after(&self, after: Cursor, limit: i64) -> Result<Vec<Change>, DbError> {
        let rows = match self {
            Db::Postgres(p) => sqlx::query(
                "SELECT seq, txid, table_name, row_id, op::text AS op, owner_id, tenant_id FROM crm_changes \
                 WHERE txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint AND (txid, seq) > ($1, $2) \
                 ORDER BY txid, seq LIMIT $3",
            )
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
                "SELECT seq, 0 AS txid, table_name, row_id, op, owner_id, tenant_id FROM crm_changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .bind(after.seq)
            .bind(limit)
            .fetch_all(p)
            .await
            .map_err(q("reading crm_changes"))?
            .into_iter()
            .map(|r| change(&r))
            .collect::<Result<Vec<_>, _>>(),
        };
        rows.map_err(q("decoding crm_changes"))
    }
}

fn change<R: Row>(r: &R) -> Result<Change, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
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
    })
}

/// Wakes a change reader when the business database has something new: LISTEN crm_changes
/// on PostgreSQL, a poll interval on SQLite (which has no notifications).
pub enum ChangeSignal {
    /// PostgreSQL LISTEN.
    Listen(Box<PgListener>),
    /// Poll every so often.
    Poll(Duration),
}

impl ChangeSignal {
    /// The signal for `db`; `poll` is the SQLite interval.
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
            Db::Sqlite(_) => Ok(ChangeSignal::Poll(poll)),
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
