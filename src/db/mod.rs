//! The SQL side of mailsync: the business ("CRM") database through the reference integration
//! schema, and mailsync's own state store, on PostgreSQL or SQLite through sqlx.
//!
//! One enum, [`Db`], covers both backends: each method matches on it once, so the SQL of
//! each backend stays side by side and readable. Queries are checked at run time, so a
//! clean build needs no database. Migrations are embedded: `migrations/{postgres,sqlite}/crm`
//! (versions 1xxx) and `.../state` (2xxx), which can share one database.

/// Runs the same query on either backend. The SQL is written once with `$N` placeholders
/// (SQLite's `?N` is substituted); `$build` binds the parameters, `$finish` runs it and
/// `$convert` turns the backend's rows into ours. A macro because the two pools and their row
/// types differ: binding and decoding must be spelled out for each, and writing every query
/// twice is how dialects drift apart.
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
        }
        .map_err($crate::db::q($what))
    };
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
pub mod queue;
pub mod retention;
pub mod rows;
pub mod state;
pub mod write;

use std::str::FromStr;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};

use crate::config::DbKind;

static PG_CRM: Migrator = sqlx::migrate!("migrations/postgres/crm");
static PG_STATE: Migrator = sqlx::migrate!("migrations/postgres/state");
static SQLITE_CRM: Migrator = sqlx::migrate!("migrations/sqlite/crm");
static SQLITE_STATE: Migrator = sqlx::migrate!("migrations/sqlite/state");

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
}

/// Wraps a query error with what was being done.
pub(crate) fn q(what: &'static str) -> impl FnOnce(sqlx::Error) -> DbError {
    move |source| DbError::Query { what, source }
}

/// A connection pool to PostgreSQL or SQLite.
#[derive(Debug, Clone)]
pub enum Db {
    /// PostgreSQL.
    Postgres(PgPool),
    /// SQLite (one file, WAL mode, foreign keys on).
    Sqlite(SqlitePool),
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
}

impl Db {
    /// Connects; a SQLite file is created if missing.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Db, DbError> {
        let masked = crate::secret::mask_url(url);
        let connect_err = |source| DbError::Connect {
            url: masked.clone(),
            source,
        };
        match kind_of(url)? {
            DbKind::Postgres => {
                let opts = PgConnectOptions::from_str(url).map_err(connect_err)?;
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
            DbKind::MySql => Err(DbError::Url(format!(
                "{masked}: MySQL/MariaDB is not supported yet; use PostgreSQL or SQLite"
            ))),
        }
    }

    /// The backend.
    pub fn kind(&self) -> DbKind {
        match self {
            Db::Postgres(_) => DbKind::Postgres,
            Db::Sqlite(_) => DbKind::Sqlite,
        }
    }

    /// Applies the migrations of `set` that are not applied yet. Idempotent.
    pub async fn migrate(&self, set: MigrationSet) -> Result<MigrationReport, DbError> {
        let mut migrator = match (self, set) {
            (Db::Postgres(_), MigrationSet::Crm) => clone_migrator(&PG_CRM),
            (Db::Postgres(_), MigrationSet::State) => clone_migrator(&PG_STATE),
            (Db::Sqlite(_), MigrationSet::Crm) => clone_migrator(&SQLITE_CRM),
            (Db::Sqlite(_), MigrationSet::State) => clone_migrator(&SQLITE_STATE),
        };
        // The other set may live in the same database: its versions are not "missing".
        migrator.set_ignore_missing(true);
        let before = self.applied_versions().await?;
        match self {
            Db::Postgres(p) => migrator.run(p).await?,
            Db::Sqlite(p) => migrator.run(p).await?,
        }
        let mut report = MigrationReport {
            applied: Vec::new(),
            already: 0,
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
        };
        match rows {
            Ok(r) => Ok(r.into_iter().map(|(v,)| v).collect()),
            // No migration table yet: nothing applied.
            Err(sqlx::Error::Database(_)) => Ok(Vec::new()),
            Err(e) => Err(q("reading applied migrations")(e)),
        }
    }

    /// Closes the pool.
    pub async fn close(&self) {
        match self {
            Db::Postgres(p) => p.close().await,
            Db::Sqlite(p) => p.close().await,
        }
    }
}

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
