//! The SQL side of mailsync: the business ("CRM") database through the reference integration
//! schema, and mailsync's own state store, through sqlx. The business database is
//! PostgreSQL, MariaDB/MySQL or SQLite; the state store PostgreSQL or SQLite.
//!
//! One enum, [`Db`], covers the backends: each method matches on it once, so the SQL of
//! each backend stays side by side and readable. Queries are checked at run time, so a
//! clean build needs no database. Migrations are embedded:
//! `migrations/{postgres,sqlite,mysql}/crm` (versions 1xxx) and `{postgres,sqlite}/state`
//! (2xxx), which can share one database.

/// Runs the same query on every backend. The SQL is written once with `$N` placeholders
/// (SQLite's `?N` is substituted; for MySQL each `$N` becomes `?` and its value is bound
/// again at every place, see [`mysql::MyQuery`]); `$build` binds the parameters, `$finish`
/// runs it and `$convert` turns the backend's rows into ours. A macro because the pools and
/// their row types differ: binding and decoding must be spelled out for each, and writing
/// every query three times is how dialects drift apart.
macro_rules! on_db {
    ($db:expr, $sql:expr, $what:expr, |$query:ident| $build:expr, $finish:ident, |$out:ident| $convert:expr) => {
        match $db {
            $crate::db::Db::Postgres(p) => {
                let $query = sqlx::query($sql);
                $build.$finish(p).await.map(|$out| $convert)
            }
            $crate::db::Db::Sqlite(p) => {
                let sql = $crate::db::sqlite_placeholders($sql);
                let $query = sqlx::query(&sql);
                $build.$finish(p).await.map(|$out| $convert)
            }
            $crate::db::Db::MySql(p) => {
                let $query = $crate::db::mysql::MyQuery::new($sql);
                $build.$finish(p).await.map(|$out| $convert)
            }
        }
        .map_err($crate::db::q($what))
    };
}

/// [`on_db!`] for a CRM write a step makes: the statement runs in a transaction that checks the
/// mailbox's fence and marks the write's origin (src/cluster/fence.rs). MySQL has no
/// RETURNING for UPDATE, so its arm is the caller's: `mysql |conn| EXPR`, run on the
/// transaction's connection, gives what `$convert` gives on the other backends (as a
/// `Result<_, sqlx::Error>`).
macro_rules! on_db_write {
    ($db:expr, $sql:expr, $what:expr, |$query:ident| $build:expr, $finish:ident, |$out:ident| $convert:expr, mysql |$conn:ident| $my:expr) => {{
        use $crate::cluster::fence::CrmWrite;
        let what = $what;
        match $db {
            $crate::db::Db::Postgres(p) => {
                let mut tx = p
                    .begin()
                    .await
                    .map_err($crate::db::q("starting a transaction"))?;
                let mark = tx.begin_write().await?;
                let $query = sqlx::query($sql);
                let $out = $build
                    .$finish(&mut *tx)
                    .await
                    .map_err($crate::db::q(what))?;
                let out = $convert;
                tx.end_write(mark).await?;
                tx.commit().await.map_err($crate::db::q(what))?;
                Ok::<_, $crate::db::DbError>(out)
            }
            $crate::db::Db::Sqlite(p) => {
                let sql = $crate::db::sqlite_placeholders($sql);
                let mut tx = p
                    .begin()
                    .await
                    .map_err($crate::db::q("starting a transaction"))?;
                let mark = tx.begin_write().await?;
                let $query = sqlx::query(&sql);
                let $out = $build
                    .$finish(&mut *tx)
                    .await
                    .map_err($crate::db::q(what))?;
                let out = $convert;
                tx.end_write(mark).await?;
                tx.commit().await.map_err($crate::db::q(what))?;
                Ok(out)
            }
            $crate::db::Db::MySql(p) => {
                let mut tx = p
                    .begin()
                    .await
                    .map_err($crate::db::q("starting a transaction"))?;
                let mark = tx.begin_write().await?;
                let out = {
                    let $conn: &mut sqlx::MySqlConnection = &mut *tx;
                    $my.await.map_err($crate::db::q(what))?
                };
                tx.end_write(mark).await?;
                tx.commit().await.map_err($crate::db::q(what))?;
                Ok(out)
            }
        }
    }};
}

/// `$1` → `?1`, and `now()` → SQLite's ISO timestamp.
pub(crate) fn sqlite_placeholders(sql: &str) -> String {
    sql.replace('$', "?")
        .replace("now()", "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')")
}

pub mod changes;
pub mod integrity;
pub mod journal;
pub mod lookup;
pub mod mail;
pub(crate) mod mysql;
pub mod queue;
pub mod retention;
pub mod rows;
pub mod state;
pub mod write;

use std::str::FromStr;

use sqlx::migrate::Migrator;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::ConnectOptions as _;
use sqlx::{MySqlPool, PgPool, SqlitePool};

use crate::config::DbKind;

static PG_CRM: Migrator = sqlx::migrate!("migrations/postgres/crm");
static PG_STATE: Migrator = sqlx::migrate!("migrations/postgres/state");
static SQLITE_CRM: Migrator = sqlx::migrate!("migrations/sqlite/crm");
static SQLITE_STATE: Migrator = sqlx::migrate!("migrations/sqlite/state");
static MYSQL_CRM: Migrator = sqlx::migrate!("migrations/mysql/crm");

/// A failure of the SQL side, naming what was being done.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL names no supported database.
    #[error("{0}")]
    Url(String),
    /// Connecting failed.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL, password masked.
        url: String,
        /// Why.
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("{what}: {source}")]
    Query {
        /// What was being done.
        what: &'static str,
        /// Why.
        source: sqlx::Error,
    },
    /// An update found the row gone or changed since it was read; nothing was written.
    #[error("{table} row {id} was changed or deleted in the CRM while it was being synced; it is read again")]
    Stale {
        /// The table.
        table: &'static str,
        /// The row.
        id: i64,
    },
    /// This instance no longer holds the lease of the mailbox (or of the change feed) the
    /// write was for: another instance owns it now, and nothing was written. Never retried:
    /// the mailbox stops here and runs at its new owner.
    #[error("{what}: fenced, another instance owns this mailbox now: {message}")]
    Fenced {
        /// What was being done.
        what: &'static str,
        /// The database's or the fence's words (which instance, which mailbox).
        message: String,
    },
    /// A row of the table already carries this Exchange id (imported before, or by a writer
    /// racing this one); nothing was written. The caller links that row instead.
    #[error("{table} row {} already holds Exchange item {ews_id}; nothing was written", existing.0)]
    Duplicate {
        /// The table.
        table: &'static str,
        /// The Exchange item id.
        ews_id: String,
        /// The row that holds it: (id, version).
        existing: (i64, i64),
    },
}

impl DbError {
    /// True when trying the same thing again later can succeed without anything changing:
    /// the connection was lost or refused, the pool had no connection in time, the database
    /// is shutting down or out of resources, or the transaction lost a serialization
    /// conflict or a deadlock, or waited too long for a lock. False for what will fail again
    /// the same way: constraint violations, syntax and type errors, missing tables or
    /// privileges, undecodable values, a bad URL, a failed migration — and for
    /// [`DbError::Stale`] and [`DbError::Duplicate`], which are outcomes the caller acts on
    /// (read again; link the existing row), not faults.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Connect { source, .. } | DbError::Query { source, .. } => {
                transient_sqlx(source)
            }
            DbError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => transient_sqlx(e),
            DbError::Url(_)
            | DbError::Migrate(_)
            | DbError::Stale { .. }
            | DbError::Fenced { .. }
            | DbError::Duplicate { .. } => false,
        }
    }
}

/// The transient sqlx errors (see [`DbError::is_transient`]).
fn transient_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => transient_code(db.as_ref()),
        _ => false,
    }
}

/// Transient database error codes. PostgreSQL: SQLSTATE classes 08 (connection), 53
/// (insufficient resources), 57P (operator intervention: shutdown, restart), 40001
/// (serialization failure), 40P01 (deadlock), 55P03 (lock not available). SQLite: BUSY and
/// LOCKED (5, 6, and their extended codes). MySQL/MariaDB: 1205 (lock wait timeout), 1213
/// (deadlock), 1040 (too many connections), 2006/2013 (server gone, lost connection), 1053
/// (server shutdown); SQLSTATE 08 and 40001 besides.
fn transient_code(db: &dyn sqlx::error::DatabaseError) -> bool {
    let code = db.code();
    let code = code.as_deref().unwrap_or_default();
    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return matches!(my.number(), 1205 | 1213 | 1040 | 1053 | 2006 | 2013)
            || code.starts_with("08")
            || code == "40001";
    }
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // Primary result code in the low byte: SQLITE_BUSY 5, SQLITE_LOCKED 6.
        return code.parse::<i64>().is_ok_and(|n| matches!(n & 0xff, 5 | 6));
    }
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P")
        || matches!(code, "40001" | "40P01" | "55P03")
}

/// Wraps a query error with what was being done.
/// A write the state store's fence refused (src/cluster: SQLSTATE MSF01) becomes
/// [`DbError::Fenced`].
pub(crate) fn q(what: &'static str) -> impl FnOnce(sqlx::Error) -> DbError {
    move |source| match &source {
        sqlx::Error::Database(db)
            if db.code().as_deref() == Some(crate::cluster::FENCED_SQLSTATE) =>
        {
            DbError::Fenced {
                what,
                message: db.message().to_owned(),
            }
        }
        _ => DbError::Query { what, source },
    }
}

/// A connection pool to PostgreSQL, SQLite or MariaDB/MySQL.
#[derive(Debug, Clone)]
pub enum Db {
    /// PostgreSQL.
    Postgres(PgPool),
    /// SQLite (one file, WAL mode, foreign keys on).
    Sqlite(SqlitePool),
    /// MariaDB 10.6+ or MySQL 8.0+ (sessions in UTC); the business database only.
    MySql(MySqlPool),
}

/// Which migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationSet {
    /// The reference integration schema and change capture.
    Crm,
    /// mailsync's state store.
    State,
}

/// What a migration run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Migrations applied now, as `version description`.
    pub applied: Vec<String>,
    /// Migrations of this set that were there already.
    pub already: usize,
    /// Exchange ids that several rows of a table carried, resolved before the unique index
    /// on `ews_id` was created (migration 1002).
    pub resolved: Vec<ResolvedDuplicate>,
}

/// An Exchange id that several rows of one table carried (a crash between a CRM write and its
/// mapping, before imports were idempotent): the oldest row keeps it, the others lose it.
/// Their data is untouched; an operator merges them in the ERP if they are one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedDuplicate {
    /// The table.
    pub table: &'static str,
    /// The Exchange id.
    pub ews_id: String,
    /// The row that keeps it (the lowest id).
    pub kept: i64,
    /// The rows whose `ews_id` was set to NULL.
    pub cleared: Vec<i64>,
}

impl std::fmt::Display for ResolvedDuplicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cleared: Vec<String> = self.cleared.iter().map(i64::to_string).collect();
        write!(
            f,
            "{}: Exchange item {} was on rows {} and {}: kept on row {} (the oldest), cleared on {}; \
             check whether they are one record",
            self.table,
            self.ews_id,
            self.kept,
            cleared.join(", "),
            self.kept,
            cleared.join(", ")
        )
    }
}

/// The synced tables that carry `ews_id` (unique where set since migration 1002).
pub const EWS_ID_TABLES: [&str; 5] = [
    "crm_contacts",
    "crm_appointments",
    "crm_tasks",
    "crm_mail_folders",
    "crm_mails",
];

/// The migration that creates the unique `ews_id` indexes on PostgreSQL and SQLite.
const UNIQUE_EWS_IDS: i64 = 1002;

impl Db {
    /// Connects; a SQLite file is created if missing.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Db, DbError> {
        Self::connect_as(url, max_connections, None).await
    }

    /// [`Db::connect`] for a cluster member: on PostgreSQL every connection carries
    /// `instance` in the session setting `mailsync.instance`, which the state store's fence
    /// compares with the lease owners (migrations/postgres/state/2020_cluster.sql).
    pub async fn connect_as(
        url: &str,
        max_connections: u32,
        instance: Option<&str>,
    ) -> Result<Db, DbError> {
        let masked = crate::secret::mask_url(url);
        let connect_err = |source| DbError::Connect {
            url: masked.clone(),
            source,
        };
        match kind_of(url)? {
            DbKind::Postgres => {
                let mut opts = PgConnectOptions::from_str(url).map_err(connect_err)?;
                if let Some(id) = instance {
                    opts = opts.options([("mailsync.instance", id)]);
                }
                let pool = PgPoolOptions::new()
                    .max_connections(max_connections)
                    .connect_with(opts)
                    .await
                    .map_err(connect_err)?;
                Ok(Db::Postgres(pool))
            }
            DbKind::Sqlite => {
                let opts = SqliteConnectOptions::from_str(url)
                    .map_err(connect_err)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .foreign_keys(true)
                    .busy_timeout(std::time::Duration::from_secs(10));
                let pool = SqlitePoolOptions::new()
                    .max_connections(max_connections)
                    .connect_with(opts)
                    .await
                    .map_err(connect_err)?;
                Ok(Db::Sqlite(pool))
            }
            DbKind::MySql => {
                // sqlx reads mysql:// and mariadb:// alike; its sessions run with time_zone
                // '+00:00', which the schema's DATETIME columns (UTC) rely on.
                let opts = MySqlConnectOptions::from_str(url)
                    .map_err(connect_err)?
                    .timezone(Some("+00:00".to_string()));
                let pool = MySqlPoolOptions::new()
                    .max_connections(max_connections)
                    // A step's write marks its changes through the session variable
                    // @mailsync_origin (src/cluster/fence.rs); a write that fails before it
                    // clears it must not hand a marked connection to the next user of the pool.
                    .after_release(|conn, _| {
                        Box::pin(async move {
                            sqlx::query("SET @mailsync_origin = NULL")
                                .execute(&mut *conn)
                                .await?;
                            Ok(true)
                        })
                    })
                    .connect_with(opts)
                    .await
                    .map_err(connect_err)?;
                let version: String = sqlx::query_scalar("SELECT VERSION()")
                    .fetch_one(&pool)
                    .await
                    .map_err(connect_err)?;
                if let Err(why) = mysql::check_version(&version) {
                    pool.close().await;
                    return Err(DbError::Url(format!("{masked}: {why}")));
                }
                Ok(Db::MySql(pool))
            }
        }
    }

    /// The backend.
    pub fn kind(&self) -> DbKind {
        match self {
            Db::Postgres(_) => DbKind::Postgres,
            Db::Sqlite(_) => DbKind::Sqlite,
            Db::MySql(_) => DbKind::MySql,
        }
    }

    /// Applies the migrations of `set` that are not applied yet. Idempotent.
    pub async fn migrate(&self, set: MigrationSet) -> Result<MigrationReport, DbError> {
        let mut migrator = match (self, set) {
            (Db::Postgres(_), MigrationSet::Crm) => clone_migrator(&PG_CRM),
            (Db::Postgres(_), MigrationSet::State) => clone_migrator(&PG_STATE),
            (Db::Sqlite(_), MigrationSet::Crm) => clone_migrator(&SQLITE_CRM),
            (Db::Sqlite(_), MigrationSet::State) => clone_migrator(&SQLITE_STATE),
            (Db::MySql(_), MigrationSet::Crm) => clone_migrator(&MYSQL_CRM),
            (Db::MySql(_), MigrationSet::State) => {
                return Err(DbError::Url(STATE_NOT_MYSQL.into()))
            }
        };
        // The other set may live in the same database: its versions are not "missing".
        migrator.set_ignore_missing(true);
        let before = self.applied_versions().await?;
        // Before the unique ews_id index: resolve what it would refuse, and say so.
        let resolved = if set == MigrationSet::Crm
            && before.contains(&1001)
            && !before.contains(&UNIQUE_EWS_IDS)
            && migrator.iter().any(|m| m.version == UNIQUE_EWS_IDS)
        {
            self.resolve_duplicate_ews_ids().await?
        } else {
            Vec::new()
        };
        match self {
            Db::Postgres(p) => migrator.run(p).await?,
            Db::Sqlite(p) => migrator.run(p).await?,
            Db::MySql(p) => {
                // DDL is slow on MySQL (seconds for the schema): on a connection of its own
                // whose slow-statement log is at debug level, or sqlx would print the whole
                // migration as a warning.
                let opts = (*p.connect_options()).clone().log_slow_statements(
                    log::LevelFilter::Debug,
                    std::time::Duration::from_secs(1),
                );
                let mut conn = sqlx::ConnectOptions::connect(&opts)
                    .await
                    .map_err(q("connecting to migrate"))?;
                let ran = migrator.run(&mut conn).await;
                let _ = sqlx::Connection::close(conn).await;
                ran?
            }
        }
        let mut report = MigrationReport {
            applied: Vec::new(),
            already: 0,
            resolved,
        };
        for m in migrator.iter() {
            if before.contains(&m.version) {
                report.already += 1;
            } else {
                report
                    .applied
                    .push(format!("{} {}", m.version, m.description));
            }
        }
        Ok(report)
    }

    async fn applied_versions(&self) -> Result<Vec<i64>, DbError> {
        let sql = "SELECT version FROM _sqlx_migrations WHERE success";
        let rows: Result<Vec<(i64,)>, sqlx::Error> = match self {
            Db::Postgres(p) => sqlx::query_as(sql).fetch_all(p).await,
            Db::Sqlite(p) => sqlx::query_as(sql).fetch_all(p).await,
            Db::MySql(p) => sqlx::query_as(sql).fetch_all(p).await,
        };
        match rows {
            Ok(r) => Ok(r.into_iter().map(|(v,)| v).collect()),
            // No migration table yet: nothing applied.
            Err(sqlx::Error::Database(_)) => Ok(Vec::new()),
            Err(e) => Err(q("reading applied migrations")(e)),
        }
    }

    /// Finds Exchange ids carried by several rows of a synced table and keeps each on the
    /// oldest row (lowest id), clearing it on the others, one transaction per table. The
    /// clearing is an ordinary update: versions move and the change log records it.
    async fn resolve_duplicate_ews_ids(&self) -> Result<Vec<ResolvedDuplicate>, DbError> {
        let what = "resolving duplicate Exchange ids";
        let mut out = Vec::new();
        for table in EWS_ID_TABLES {
            let find = format!(
                "SELECT ews_id, id FROM {table} WHERE ews_id IN \
                 (SELECT ews_id FROM {table} WHERE ews_id IS NOT NULL GROUP BY ews_id HAVING COUNT(*) > 1) \
                 ORDER BY ews_id, id"
            );
            let rows: Vec<(String, i64)> = match self {
                Db::Postgres(p) => sqlx::query_as(&find).fetch_all(p).await,
                Db::Sqlite(p) => sqlx::query_as(&find).fetch_all(p).await,
                // Unique from its first migration: nothing to resolve.
                Db::MySql(_) => Ok(Vec::new()),
            }
            .map_err(q(what))?;
            let mut groups: Vec<ResolvedDuplicate> = Vec::new();
            for (ews_id, id) in rows {
                match groups.last_mut() {
                    Some(g) if g.ews_id == ews_id => g.cleared.push(id),
                    _ => groups.push(ResolvedDuplicate {
                        table,
                        ews_id,
                        kept: id,
                        cleared: Vec::new(),
                    }),
                }
            }
            if groups.is_empty() {
                continue;
            }
            let ids: Vec<i64> = groups.iter().flat_map(|g| g.cleared.clone()).collect();
            macro_rules! clear {
                ($pool:expr, $sql:expr) => {{
                    let mut tx = $pool.begin().await.map_err(q(what))?;
                    for id in &ids {
                        sqlx::query($sql)
                            .bind(*id)
                            .execute(&mut *tx)
                            .await
                            .map_err(q(what))?;
                    }
                    tx.commit().await.map_err(q(what))?;
                }};
            }
            let clear_sql = format!("UPDATE {table} SET ews_id = NULL WHERE id = $1");
            match self {
                Db::Postgres(p) => clear!(p, &clear_sql),
                Db::Sqlite(p) => clear!(p, &sqlite_placeholders(&clear_sql)),
                Db::MySql(_) => {}
            }
            for g in &groups {
                tracing::warn!(
                    table = g.table,
                    ews_id = %g.ews_id,
                    kept = g.kept,
                    cleared = ?g.cleared,
                    "duplicate Exchange id resolved before the unique index"
                );
            }
            out.extend(groups);
        }
        Ok(out)
    }

    /// Closes the pool.
    pub async fn close(&self) {
        match self {
            Db::Postgres(p) => p.close().await,
            Db::Sqlite(p) => p.close().await,
            Db::MySql(p) => p.close().await,
        }
    }
}

/// SQL written with ISO 8601 UTC timestamp literals (`'2026-01-05T08:00:00Z'`, as PostgreSQL
/// and SQLite take them) for MariaDB/MySQL, whose DATETIME wants `'2026-01-05 08:00:00'`
/// (UTC, as the schema stores it). Other text is left alone. For hand-written SQL such as
/// the demo's seed data.
pub fn mysql_literals(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    while i < b.len() {
        // '\'' YYYY-MM-DD 'T' hh:mm:ss [.fff…] 'Z' '\''
        if b[i] == b'\'' {
            let body = &b[i + 1..];
            let shape = |k: usize, c: u8| match c {
                b'0'..=b'9' => !matches!(k, 4 | 7 | 10 | 13 | 16),
                b'-' => matches!(k, 4 | 7),
                b'T' => k == 10,
                b':' => matches!(k, 13 | 16),
                _ => false,
            };
            if body.len() > 20 && body[..19].iter().enumerate().all(|(k, c)| shape(k, *c)) {
                let mut end = 19;
                if body[end] == b'.' {
                    end += 1;
                    while end < body.len() && body[end].is_ascii_digit() {
                        end += 1;
                    }
                }
                if body.get(end) == Some(&b'Z') && body.get(end + 1) == Some(&b'\'') {
                    out.push('\'');
                    out.push_str(&sql[i + 1..i + 11]);
                    out.push(' ');
                    out.push_str(&sql[i + 12..i + 1 + end]);
                    out.push('\'');
                    i += end + 3;
                    continue;
                }
            }
        }
        let ch = sql[i..].chars().next().unwrap_or_default();
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    out
}

/// Why the state store cannot be a MySQL database (check-config says the same, naming the key).
pub const STATE_NOT_MYSQL: &str = "mailsync's state store cannot live in MariaDB/MySQL: use \
     sqlite:PATH (the default) or postgres://; MariaDB/MySQL is supported for the business \
     database ([database]) only";

fn clone_migrator(m: &Migrator) -> Migrator {
    Migrator {
        migrations: m.migrations.clone(),
        ignore_missing: m.ignore_missing,
        locking: m.locking,
        no_tx: m.no_tx,
    }
}

fn kind_of(url: &str) -> Result<DbKind, DbError> {
    match url.split(':').next().unwrap_or_default() {
        "postgres" | "postgresql" => Ok(DbKind::Postgres),
        "sqlite" => Ok(DbKind::Sqlite),
        "mysql" | "mariadb" => Ok(DbKind::MySql),
        other => Err(DbError::Url(format!(
            "{other:?} is not a supported database URL scheme"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_timestamps_become_mysql_datetimes() {
        let check = |sql: &str, want: &str| assert_eq!(mysql_literals(sql), want, "{sql}");
        check(
            "VALUES ('2026-01-05T08:00:00Z', '2026-01-05T09:00:00.250Z')",
            "VALUES ('2026-01-05 08:00:00', '2026-01-05 09:00:00.250')",
        );
        check("'2026-11-23T08:00:00Z'", "'2026-11-23 08:00:00'");
        // Dates, zones other than Z, and other text stay as they are.
        check("'2026-12-01', 'Müller'", "'2026-12-01', 'Müller'");
        check("'2026-01-05T08:00:00+01:00'", "'2026-01-05T08:00:00+01:00'");
        check("'2026-01-05T08:00:00Z", "'2026-01-05T08:00:00Z");
        check("'tomorrow'", "'tomorrow'");
    }

    #[test]
    fn transient_errors_are_told_from_permanent_ones() {
        let query = |source| DbError::Query { what: "x", source };
        assert!(query(sqlx::Error::PoolTimedOut).is_transient());
        assert!(query(sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset
        )))
        .is_transient());
        assert!(!query(sqlx::Error::RowNotFound).is_transient());
        assert!(!query(sqlx::Error::Protocol("x is not a synced table".into())).is_transient());
        assert!(!DbError::Stale {
            table: "crm_tasks",
            id: 1
        }
        .is_transient());
        assert!(!DbError::Duplicate {
            table: "crm_tasks",
            ews_id: "A".into(),
            existing: (1, 1)
        }
        .is_transient());
        assert!(!DbError::Url("x".into()).is_transient());
    }
}
