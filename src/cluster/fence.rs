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
}

/// Runs `fut` with `fence` as the token every CRM write inside checks.
pub async fn scope<F: Future>(fence: Fence, fut: F) -> F::Output {
    CURRENT.scope(fence, fut).await
}

/// The token of the step running on this task, if any.
pub fn current() -> Option<Fence> {
    CURRENT.try_with(Clone::clone).ok()
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

/// A connection a CRM write transaction runs on, checkable against the current fence.
pub trait Fenced {
    /// Within the caller's transaction: Ok when no fence is set or the mailbox's epoch is
    /// still the token; [`DbError::Fenced`] otherwise.
    fn check_fence(&mut self) -> BoxFuture<'_, Result<(), DbError>>;
}

impl Fenced for sqlx::PgConnection {
    fn check_fence(&mut self) -> BoxFuture<'_, Result<(), DbError>> {
        Box::pin(async move {
            let Some(fence) = current() else {
                return Ok(());
            };
            let found: Option<i64> =
                sqlx::query_scalar("SELECT epoch FROM ms_fence WHERE mailbox = $1 FOR SHARE")
                    .bind(&fence.mailbox)
                    .fetch_optional(&mut *self)
                    .await
                    .map_err(q("checking the mailbox's fence"))?;
            verdict(&fence, found)
        })
    }
}

impl Fenced for sqlx::SqliteConnection {
    fn check_fence(&mut self) -> BoxFuture<'_, Result<(), DbError>> {
        Box::pin(async move {
            let Some(fence) = current() else {
                return Ok(());
            };
            let found: Option<i64> =
                sqlx::query_scalar("SELECT epoch FROM ms_fence WHERE mailbox = ?1")
                    .bind(&fence.mailbox)
                    .fetch_optional(&mut *self)
                    .await
                    .map_err(q("checking the mailbox's fence"))?;
            verdict(&fence, found)
        })
    }
}

impl Fenced for sqlx::MySqlConnection {
    fn check_fence(&mut self) -> BoxFuture<'_, Result<(), DbError>> {
        Box::pin(async move {
            let Some(fence) = current() else {
                return Ok(());
            };
            let found: Option<i64> = sqlx::query_scalar(
                "SELECT epoch FROM ms_fence WHERE mailbox = ? LOCK IN SHARE MODE",
            )
            .bind(&fence.mailbox)
            .fetch_optional(&mut *self)
            .await
            .map_err(q("checking the mailbox's fence"))?;
            verdict(&fence, found)
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
