//! Fencing of CRM writes. The business database may be another database than the state
//! store (usually is), so the lease cannot be checked there; instead it holds `ms_fence`
//! (mailbox, epoch): a new owner bumps the mailbox's epoch there before it starts the mailbox
//! and keeps the number (its fence token). Every CRM write of a step runs in a transaction
//! that first reads the row — `FOR SHARE` on PostgreSQL, `LOCK IN SHARE MODE` on
//! MariaDB/MySQL; SQLite has one writer, so a plain read in the write transaction suffices —
//! and refuses to write unless the epoch is still its token. The bump waits for writes in
//! flight; a late write of the old owner finds a newer epoch and fails with
//! [`DbError::Fenced`], which stops that mailbox (never retried in a loop).
//!
//! The token travels with the step as a task-local ([`scope`]), so the write functions need
//! no new parameter; outside a cluster no token is set and nothing is checked.
//!
//! The same transactions mark their origin: the mailbox a step writes for ([`origin_scope`],
//! set in and outside a cluster) goes into `crm_changes.origin` of every change the
//! transaction makes (migrations */crm/1003_change_origin.sql), so the change feed does not
//! queue a step's own writes back to the mailbox that made them. PostgreSQL: the
//! transaction-local setting `mailsync.origin`, read by the capture trigger. MariaDB/MySQL: the
//! session variable `@mailsync_origin`, set at the start of every write transaction and
//! cleared at its end — and whenever a connection goes back to the pool, so a write that
//! failed in between leaves no marked connection behind (src/db/mod.rs). SQLite (one writer at a time): the transaction takes the write lock
//! first, notes the last `seq` of the log, and before commit marks every change after it —
//! no other writer can have logged one in between. A write whose marking is missed is only
//! queued once more (an empty step), never lost.

use std::future::Future;

use futures_util::future::BoxFuture;

use crate::db::{q, Db, DbError};

/// What a step writing for a mailbox carries: the mailbox and the fence token its owner got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The mailbox (lower case).
    pub mailbox: String,
    /// Its epoch in `ms_fence` when this instance took it.
    pub token: i64,
}

tokio::task_local! {
    static CURRENT: Fence;
    static ORIGIN: String;
}

/// Runs `fut` with `fence` as the token every CRM write inside checks (and its mailbox as
/// their origin).
pub async fn scope<F: Future>(fence: Fence, fut: F) -> F::Output {
    let mailbox = fence.mailbox.clone();
    ORIGIN.scope(mailbox, CURRENT.scope(fence, fut)).await
}

/// Runs `fut` with `mailbox` as the origin of every CRM write inside, checking no fence
/// (outside a cluster).
pub async fn origin_scope<F: Future>(mailbox: String, fut: F) -> F::Output {
    ORIGIN.scope(mailbox, fut).await
}

/// The token of the step running on this task, if any.
pub fn current() -> Option<Fence> {
    CURRENT.try_with(Clone::clone).ok()
}

/// The mailbox the step running on this task writes for, if any.
pub fn origin() -> Option<String> {
    ORIGIN.try_with(Clone::clone).ok()
}

/// Ok when the epoch found is still the fence's token, the typed refusal otherwise.
fn verdict(fence: &Fence, found: Option<i64>) -> Result<(), DbError> {
    match found {
        Some(e) if e == fence.token => Ok(()),
        other => Err(refused(fence, other)),
    }
}

fn refused(fence: &Fence, found: Option<i64>) -> DbError {
    DbError::Fenced {
        what: "checking the mailbox's fence in the business database",
        message: format!(
            "{} was taken over (fence epoch {} here, {} in the database)",
            fence.mailbox,
            fence.token,
            found.map_or("none".to_owned(), |e| e.to_string())
        ),
    }
}

/// Within the caller's transaction on `$conn`: when the step on this task carries a fence,
/// reads the mailbox's epoch with the backend's locking read `$sql` and refuses unless it is
/// still the token.
macro_rules! check_fence {
    ($conn:expr, $sql:expr) => {
        if let Some(fence) = current() {
            let found: Option<i64> = sqlx::query_scalar($sql)
                .bind(&fence.mailbox)
                .fetch_optional(&mut *$conn)
                .await
                .map_err(q("checking the mailbox's fence"))?;
            verdict(&fence, found)?;
        }
    };
}

/// What [`CrmWrite::begin_write`] noted for [`CrmWrite::end_write`].
#[derive(Debug, Clone, Default)]
#[must_use = "end_write takes it right before the commit"]
pub struct WriteMark {
    /// The mailbox the transaction writes for.
    origin: Option<String>,
    /// SQLite: the last `seq` of the log once the transaction held the write lock.
    after: Option<i64>,
}

/// A connection a CRM write transaction of a step runs on: [`CrmWrite::begin_write`] right
/// after `BEGIN`, [`CrmWrite::end_write`] right before `COMMIT`.
pub trait CrmWrite {
    /// Within the caller's transaction: refuses with [`DbError::Fenced`] when a fence is set
    /// and the mailbox's epoch is no longer its token, and marks the transaction's origin.
    fn begin_write(&mut self) -> BoxFuture<'_, Result<WriteMark, DbError>>;
    /// Finishes the origin's marking (SQLite marks the log here; MariaDB/MySQL clear the
    /// session variable).
    fn end_write(&mut self, mark: WriteMark) -> BoxFuture<'_, Result<(), DbError>>;
}

const MARKING: &str = "marking the origin of a CRM write";

impl CrmWrite for sqlx::PgConnection {
    fn begin_write(&mut self) -> BoxFuture<'_, Result<WriteMark, DbError>> {
        Box::pin(async move {
            let origin = origin();
            if let Some(o) = &origin {
                sqlx::query("SELECT set_config('mailsync.origin', $1, true)")
                    .bind(o)
                    .execute(&mut *self)
                    .await
                    .map_err(q(MARKING))?;
            }
            check_fence!(
                self,
                "SELECT epoch FROM ms_fence WHERE mailbox = $1 FOR SHARE"
            );
            Ok(WriteMark {
                origin,
                after: None,
            })
        })
    }

    fn end_write(&mut self, _mark: WriteMark) -> BoxFuture<'_, Result<(), DbError>> {
        // The setting is the transaction's own: it ends with it.
        Box::pin(async { Ok(()) })
    }
}

impl CrmWrite for sqlx::SqliteConnection {
    fn begin_write(&mut self) -> BoxFuture<'_, Result<WriteMark, DbError>> {
        Box::pin(async move {
            let origin = origin();
            let mut after = None;
            if origin.is_some() {
                // A write first, so the transaction holds the write lock (waiting for it
                // under the busy timeout) before it reads anything: from here on no other
                // writer can log a change until this one commits.
                sqlx::query("UPDATE crm_changes SET origin = NULL WHERE seq = -1")
                    .execute(&mut *self)
                    .await
                    .map_err(q(MARKING))?;
                after = Some(
                    sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM crm_changes")
                        .fetch_one(&mut *self)
                        .await
                        .map_err(q(MARKING))?,
                );
            }
            check_fence!(self, "SELECT epoch FROM ms_fence WHERE mailbox = ?1");
            Ok(WriteMark { origin, after })
        })
    }

    fn end_write(&mut self, mark: WriteMark) -> BoxFuture<'_, Result<(), DbError>> {
        Box::pin(async move {
            if let (Some(origin), Some(after)) = (mark.origin, mark.after) {
                sqlx::query("UPDATE crm_changes SET origin = ?1 WHERE seq > ?2")
                    .bind(origin)
                    .bind(after)
                    .execute(&mut *self)
                    .await
                    .map_err(q(MARKING))?;
            }
            Ok(())
        })
    }
}

impl CrmWrite for sqlx::MySqlConnection {
    fn begin_write(&mut self) -> BoxFuture<'_, Result<WriteMark, DbError>> {
        Box::pin(async move {
            // Set (or cleared) at every write: the variable outlives the transaction on a
            // pooled connection.
            let origin = origin();
            sqlx::query("SET @mailsync_origin = ?")
                .bind(origin.clone())
                .execute(&mut *self)
                .await
                .map_err(q(MARKING))?;
            check_fence!(
                self,
                "SELECT epoch FROM ms_fence WHERE mailbox = ? LOCK IN SHARE MODE"
            );
            Ok(WriteMark {
                origin,
                after: None,
            })
        })
    }

    fn end_write(&mut self, mark: WriteMark) -> BoxFuture<'_, Result<(), DbError>> {
        Box::pin(async move {
            if mark.origin.is_some() {
                sqlx::query("SET @mailsync_origin = NULL")
                    .execute(&mut *self)
                    .await
                    .map_err(q(MARKING))?;
            }
            Ok(())
        })
    }
}

/// Creates `ms_fence` in the business database if it is not there (mailsync's one table in
/// it besides the change capture; only a cluster uses it).
pub async fn prepare(crm: &Db) -> Result<(), DbError> {
    const SQL_PG_SQLITE: &str =
        "CREATE TABLE IF NOT EXISTS ms_fence (mailbox TEXT PRIMARY KEY, epoch BIGINT NOT NULL)";
    const SQL_MYSQL: &str = "CREATE TABLE IF NOT EXISTS ms_fence (mailbox VARCHAR(320) \
         CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PRIMARY KEY, epoch BIGINT NOT NULL)";
    let create = || async {
        match crm {
            Db::Postgres(p) => sqlx::query(SQL_PG_SQLITE).execute(p).await.map(drop),
            Db::Sqlite(p) => sqlx::query(SQL_PG_SQLITE).execute(p).await.map(drop),
            Db::MySql(p) => sqlx::query(SQL_MYSQL).execute(p).await.map(drop),
        }
    };
    // Instances starting together race: PostgreSQL's IF NOT EXISTS is not atomic against a
    // concurrent CREATE (a unique violation in its catalog). The table is there afterwards.
    match create().await {
        Ok(()) => Ok(()),
        Err(_) => create().await,
    }
    .map_err(q("creating ms_fence in the business database"))
}

/// Bumps the mailbox's epoch (waiting for the old owner's writes in flight) and returns the
/// new one: the token of the owner that calls it.
pub async fn bump(crm: &Db, mailbox: &str) -> Result<i64, DbError> {
    const UPSERT: &str = "INSERT INTO ms_fence (mailbox, epoch) VALUES ($1, 1) \
         ON CONFLICT (mailbox) DO UPDATE SET epoch = ms_fence.epoch + 1 RETURNING epoch";
    match crm {
        Db::Postgres(p) => sqlx::query_scalar(UPSERT).bind(mailbox).fetch_one(p).await,
        Db::Sqlite(p) => {
            sqlx::query_scalar(&UPSERT.replace('$', "?"))
                .bind(mailbox)
                .fetch_one(p)
                .await
        }
        Db::MySql(p) => {
            async {
                let mut tx = p.begin().await?;
                sqlx::query(
                    "INSERT INTO ms_fence (mailbox, epoch) VALUES (?, 1) \
                     ON DUPLICATE KEY UPDATE epoch = epoch + 1",
                )
                .bind(mailbox)
                .execute(&mut *tx)
                .await?;
                let epoch = sqlx::query_scalar("SELECT epoch FROM ms_fence WHERE mailbox = ?")
                    .bind(mailbox)
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(epoch)
            }
            .await
        }
    }
    .map_err(q("bumping the mailbox's fence"))
}
