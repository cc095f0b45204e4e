//! The conflict log and the failure log as an administrator reads them: pages (newest first,
//! by id so a page never shifts while new entries arrive), one entry, and "retry now" for a
//! parked failure.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::state::{Conflict, ConflictValues, Failure, Winner};
use super::{q, Db, DbError};

/// The data area a CRM table belongs to (`contacts`, `calendar`, `tasks`, `mail`), or the
/// table itself for one the sync does not know.
pub fn area_of_table(table: &str) -> &str {
    match table {
        "crm_contacts" => "contacts",
        "crm_appointments" => "calendar",
        "crm_tasks" => "tasks",
        "crm_mail_folders" | "crm_mails" | "crm_outbox" => "mail",
        other => other,
    }
}

/// One entry of the conflict log.
#[derive(Debug, Clone, PartialEq)]
pub struct ConflictEntry {
    /// Its id (increasing; pages are cut by it).
    pub id: i64,
    /// When it was logged.
    pub at: DateTime<Utc>,
    /// What conflicted and who won.
    pub conflict: Conflict,
    /// Both sides' values and the merged result (empty for entries logged without them).
    pub values: ConflictValues,
}

/// Which conflicts to read.
#[derive(Debug, Clone, Default)]
pub struct ConflictQuery {
    /// Only this mailbox.
    pub mailbox: Option<String>,
    /// Only entries logged at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only entries older than this id (the `next` of the previous page).
    pub before: Option<i64>,
    /// At most this many (the caller bounds it).
    pub limit: i64,
}

/// One entry of the failure log.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureEntry {
    /// Its id, for "retry".
    pub id: i64,
    /// The item and why it failed.
    pub failure: Failure,
    /// When it first failed.
    pub first_at: DateTime<Utc>,
    /// When it last failed.
    pub last_at: DateTime<Utc>,
    /// When the sync step tries it again; `None`: when the item changes again.
    pub next_retry_at: Option<DateTime<Utc>>,
}

/// SQLite keeps timestamps as ISO text in UTC with milliseconds and a `Z`; a bound cut-off
/// must have the same shape to compare as text.
pub(crate) fn sqlite_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%.3fZ").to_string()
}

fn json_map(text: &str) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    }
}

macro_rules! conflict_entry {
    ($r:expr) => {{
        let r = $r;
        ConflictEntry {
            id: r.try_get(0)?,
            at: r.try_get(1)?,
            conflict: Conflict {
                mailbox: r.try_get(2)?,
                crm_table: r.try_get(3)?,
                crm_id: r.try_get(4)?,
                ews_item_id: r.try_get(5)?,
                fields: serde_json::from_str(&r.try_get::<String, _>(6)?).unwrap_or_default(),
                winner: if r.try_get::<String, _>(7)? == "crm" {
                    Winner::Crm
                } else {
                    Winner::Exchange
                },
            },
            values: ConflictValues {
                crm: json_map(&r.try_get::<String, _>(8)?),
                exchange: json_map(&r.try_get::<String, _>(9)?),
                merged: json_map(&r.try_get::<String, _>(10)?),
            },
        }
    }};
}

macro_rules! failure_entry {
    ($r:expr) => {{
        let r = $r;
        FailureEntry {
            id: r.try_get(0)?,
            failure: Failure {
                mailbox: r.try_get(1)?,
                crm_table: r.try_get(2)?,
                crm_id: r.try_get(3)?,
                ews_item_id: r.try_get(4)?,
                error: r.try_get(5)?,
                attempts: r.try_get(6)?,
            },
            first_at: r.try_get(7)?,
            last_at: r.try_get(8)?,
            next_retry_at: r.try_get(9)?,
        }
    }};
}

const CONFLICT_COLUMNS: &str =
    "id, at, mailbox, crm_table, crm_id, ews_item_id, fields, winner, crm_values, ews_values, merged";
const FAILURE_COLUMNS: &str =
    "id, mailbox, crm_table, crm_id, ews_item_id, error, attempts, first_at, last_at, next_retry_at";

impl Db {
    /// A page of the conflict log, newest first.
    pub async fn conflict_page(
        &self,
        query: &ConflictQuery,
    ) -> Result<Vec<ConflictEntry>, DbError> {
        let sql = format!(
            "SELECT {CONFLICT_COLUMNS} FROM ms_conflicts WHERE ($1 = '' OR mailbox = $1) AND id < $2 \
             AND at >= $3 ORDER BY id DESC LIMIT $4"
        );
        let mailbox = query.mailbox.clone().unwrap_or_default();
        let before = query.before.unwrap_or(i64::MAX);
        let since = query.since.unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
        let what = "reading the conflict log";
        match self {
            Db::Postgres(p) => sqlx::query(&sql)
                .bind(&mailbox)
                .bind(before)
                .bind(since)
                .bind(query.limit)
                .fetch_all(p)
                .await
                .and_then(|rows| {
                    rows.iter()
                        .map(|r| Ok(conflict_entry!(r)))
                        .collect::<Result<Vec<_>, sqlx::Error>>()
                }),
            Db::Sqlite(p) => sqlx::query(&super::sqlite_placeholders(&sql))
                .bind(&mailbox)
                .bind(before)
                .bind(sqlite_time(since))
                .bind(query.limit)
                .fetch_all(p)
                .await
                .and_then(|rows| {
                    rows.iter()
                        .map(|r| Ok(conflict_entry!(r)))
                        .collect::<Result<Vec<_>, sqlx::Error>>()
                }),
            Db::MySql(_) => return Err(DbError::Url(super::STATE_NOT_MYSQL.into())),
        }
        .map_err(q(what))
    }

    /// One conflict by id.
    pub async fn conflict_by_id(&self, id: i64) -> Result<Option<ConflictEntry>, DbError> {
        let sql = format!("SELECT {CONFLICT_COLUMNS} FROM ms_conflicts WHERE id = $1");
        on_db!(
            self,
            &sql,
            "reading a conflict",
            |x| x.bind(id),
            fetch_optional,
            |row| row
                .map(|r| Ok::<_, sqlx::Error>(conflict_entry!(&r)))
                .transpose()
        )?
        .map_err(q("decoding a conflict"))
    }

    /// A page of the failure log (of one mailbox, or of all), newest first.
    pub async fn failure_page(
        &self,
        mailbox: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<FailureEntry>, DbError> {
        let sql = format!(
            "SELECT {FAILURE_COLUMNS} FROM ms_failures WHERE ($1 = '' OR mailbox = $1) AND id < $2 \
             ORDER BY id DESC LIMIT $3"
        );
        let mailbox = mailbox.unwrap_or_default();
        on_db!(
            self,
            &sql,
            "reading the failure log",
            |x| x.bind(mailbox).bind(before.unwrap_or(i64::MAX)).bind(limit),
            fetch_all,
            |rows| rows
                .iter()
                .map(|r| Ok::<_, sqlx::Error>(failure_entry!(r)))
                .collect::<Result<Vec<_>, _>>()
        )?
        .map_err(q("decoding the failure log"))
    }

    /// One failure by id.
    pub async fn failure_by_id(&self, id: i64) -> Result<Option<FailureEntry>, DbError> {
        let sql = format!("SELECT {FAILURE_COLUMNS} FROM ms_failures WHERE id = $1");
        on_db!(
            self,
            &sql,
            "reading a failure",
            |x| x.bind(id),
            fetch_optional,
            |row| row
                .map(|r| Ok::<_, sqlx::Error>(failure_entry!(&r)))
                .transpose()
        )?
        .map_err(q("decoding a failure"))
    }

    /// Makes a parked failure due now: the mailbox's next step retries it. Returns the entry
    /// as it is now, or `None` when no failure has that id (it synced meanwhile).
    pub async fn retry_failure_now(
        &self,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<FailureEntry>, DbError> {
        on_db!(
            self,
            "UPDATE ms_failures SET next_retry_at = $2 WHERE id = $1",
            "scheduling a failure's retry",
            |x| x.bind(id).bind(now),
            execute,
            |_r| ()
        )?;
        self.failure_by_id(id).await
    }

    /// Parked failures by CRM table (for the `mailsync_failures_parked` gauge).
    pub async fn failure_counts(&self) -> Result<Vec<(String, i64)>, DbError> {
        on_db!(
            self,
            "SELECT crm_table, COUNT(*) FROM ms_failures GROUP BY crm_table ORDER BY crm_table",
            "counting failures",
            |x| x,
            fetch_all,
            |rows| rows
                .iter()
                .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
                .collect()
        )
    }
}
