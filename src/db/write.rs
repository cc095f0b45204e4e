//! Writing CRM rows that came from Exchange, atomically with their mapping where the state
//! store lives in the same database.
//!
//! A write is SQL plus typed [`Value`]s, bound per backend (categories become `text[]` on
//! PostgreSQL and a JSON array on SQLite). [`Db::save_from_exchange`] inserts or updates the
//! row with its `ews_id` stamped and, given a mapping, stores it in the same transaction: both
//! or neither survive a crash. With a separate state store the caller stores the mapping
//! afterwards; the stamped `ews_id` makes a crash in between harmless (docs/crm-schema.md).
//!
//! Importing is idempotent: every synced table has a unique index on `ews_id` (where set), and
//! an insert for an Exchange item that a row already carries — found before the insert, or
//! refused by the index when two writers race — is [`DbError::Duplicate`] naming that row,
//! never a second row. [`Db::row_by_ews_id`] is the lookup.

use chrono::{DateTime, NaiveDate, Utc};

use sqlx::Row;

use super::rows::CrmRow;
use super::state::ItemMapping;
use super::{q, sqlite_placeholders, Db, DbError};
use crate::cluster::fence::CrmWrite;

/// What the row statement's failure is called (told apart from the mapping's).
const WRITING_ROW: &str = "writing a CRM row";

/// A value bound into a CRM write.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Text or NULL.
    Text(Option<String>),
    /// Integer or NULL.
    Int(Option<i64>),
    /// Boolean.
    Bool(bool),
    /// Timestamp or NULL.
    Time(Option<DateTime<Utc>>),
    /// Date or NULL.
    Date(Option<NaiveDate>),
    /// A list of categories.
    Categories(Vec<String>),
}

macro_rules! bind_values {
    ($query:expr, $values:expr, $categories:expr) => {{
        let mut query = $query;
        for v in $values {
            query = match v {
                Value::Text(t) => query.bind(t.clone()),
                Value::Int(i) => query.bind(*i),
                Value::Bool(b) => query.bind(*b),
                Value::Time(t) => query.bind(*t),
                Value::Date(d) => query.bind(*d),
                Value::Categories(c) => query.bind($categories(c)),
            };
        }
        query
    }};
}

/// The row write and the mapping upsert in one transaction, for either pool (the statement
/// text and the categories encoding are the backend's).
macro_rules! write_in_tx {
    ($pool:expr, $sql:expr, $mapping_sql:expr, $categories:expr, $values:expr, $mapping:expr, $table:expr, $id:expr, $ews:expr) => {{
        let mut tx = $pool.begin().await.map_err(q("starting a transaction"))?;
        let mark = CrmWrite::begin_write(&mut *tx).await?;
        let query = bind_values!(sqlx::query_as::<_, (i64, i64)>($sql), &$values, $categories);
        let (new_id, version) = query
            .fetch_optional(&mut *tx)
            .await
            .map_err(q(WRITING_ROW))?
            .ok_or_else(|| DbError::Stale {
                table: $table,
                id: $id,
            })?;
        if let Some(m) = $mapping {
            sqlx::query($mapping_sql)
                .bind(&m.mailbox)
                .bind($table)
                .bind(new_id)
                .bind($ews)
                .bind(&m.change_key)
                .bind(version)
                .bind(m.fields.to_string())
                .bind(m.stamped)
                .bind(m.unverified)
                .execute(&mut *tx)
                .await
                .map_err(q("storing an item mapping"))?;
        }
        CrmWrite::end_write(&mut *tx, mark).await?;
        tx.commit().await.map_err(q("committing a CRM write"))?;
        Ok((new_id, version))
    }};
}

use super::state::MAPPING_UPSERT;

/// The columns and values of a row, without id and version (those the database owns).
fn columns(row: &CrmRow, ews_item_id: &str) -> (&'static str, Vec<(&'static str, Value)>) {
    let t = |v: &Option<String>| Value::Text(v.clone());
    let ews = ("ews_id", Value::Text(Some(ews_item_id.to_string())));
    match row {
        CrmRow::Contact(c) => (
            "crm_contacts",
            vec![
                ("tenant_id", Value::Int(Some(c.tenant_id))),
                ("owner_id", Value::Int(c.owner_id)),
                ("given_name", t(&c.given_name)),
                ("surname", t(&c.surname)),
                ("company", t(&c.company)),
                ("job_title", t(&c.job_title)),
                ("email1", t(&c.email[0])),
                ("email2", t(&c.email[1])),
                ("email3", t(&c.email[2])),
                ("business_phone", t(&c.phones[0])),
                ("mobile_phone", t(&c.phones[1])),
                ("home_phone", t(&c.phones[2])),
                ("street", t(&c.address[0])),
                ("postal_code", t(&c.address[1])),
                ("city", t(&c.address[2])),
                ("country", t(&c.address[3])),
                ("notes", t(&c.notes)),
                ("categories", Value::Categories(c.categories.clone())),
                ews,
            ],
        ),
        CrmRow::Appointment(a) => (
            "crm_appointments",
            vec![
                ("tenant_id", Value::Int(Some(a.tenant_id))),
                ("owner_id", Value::Int(Some(a.owner_id))),
                ("subject", t(&a.subject)),
                ("location", t(&a.location)),
                ("body", t(&a.body)),
                ("starts_at", Value::Time(Some(a.starts_at))),
                ("ends_at", Value::Time(Some(a.ends_at))),
                ("all_day", Value::Bool(a.all_day)),
                ("time_zone", Value::Text(Some(a.time_zone.clone()))),
                ("recurrence", t(&a.recurrence)),
                ("reminder_minutes", Value::Int(a.reminder_minutes)),
                ("show_as", Value::Text(Some(a.show_as.clone()))),
                ("categories", Value::Categories(a.categories.clone())),
                ("uid", t(&a.uid)),
                ews,
            ],
        ),
        CrmRow::Task(k) => (
            "crm_tasks",
            vec![
                ("tenant_id", Value::Int(Some(k.tenant_id))),
                ("owner_id", Value::Int(Some(k.owner_id))),
                ("subject", t(&k.subject)),
                ("body", t(&k.body)),
                ("start_date", Value::Date(k.start_date)),
                ("due_date", Value::Date(k.due_date)),
                ("status", Value::Text(Some(k.status.clone()))),
                ("percent_complete", Value::Int(Some(k.percent_complete))),
                ("importance", Value::Text(Some(k.importance.clone()))),
                ("completed_at", Value::Time(k.completed_at)),
                ("categories", Value::Categories(k.categories.clone())),
                ews,
            ],
        ),
    }
}

/// INSERT (id 0) or UPDATE (by id and the version the row was read at) returning id and
/// version.
fn statement(table: &str, id: i64, cols: &[(&'static str, Value)]) -> String {
    let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
    if id == 0 {
        let params: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
        format!(
            "INSERT INTO {table} ({}) VALUES ({}) RETURNING id, version",
            names.join(", "),
            params.join(", ")
        )
    } else {
        let sets: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{n} = ${}", i + 1))
            .collect();
        // The version is bumped here, not left to the trigger: on SQLite the bump trigger runs
        // after RETURNING (which would report the old version) and stands aside when the
        // statement bumps it itself; on PostgreSQL the BEFORE trigger sets the same value.
        // Optimistic: a row changed in the CRM since it was read is not overwritten (that
        // change would be lost); the statement matches nothing and the caller reads again.
        format!(
            "UPDATE {table} SET {}, version = version + 1 WHERE id = ${} AND version = ${} RETURNING id, version",
            sets.join(", "),
            cols.len() + 1,
            cols.len() + 2
        )
    }
}

impl Db {
    /// Writes `row` (inserted when its id is 0, else updated) with `ews_item_id` stamped, and
    /// `mapping` — filled in with the row's id and new version — in the same transaction.
    /// Returns (id, version). An update of a row that is gone or changed since it was read
    /// (its version differs from `row`'s) is [`DbError::Stale`]: nothing is written. A write
    /// that would give a second row of the table the same `ews_id` (an insert for an item
    /// already imported, found first or refused by the unique index when two writers race)
    /// is [`DbError::Duplicate`] naming the row that has it: nothing is written.
    /// `mapping` needs the state store in this database, so never on MariaDB/MySQL.
    pub async fn save_from_exchange(
        &self,
        row: &CrmRow,
        ews_item_id: &str,
        mapping: Option<&ItemMapping>,
    ) -> Result<(i64, i64), DbError> {
        let table = row.table();
        let id = row.id();
        if id == 0 {
            if let Some(existing) = self.row_by_ews_id(table, ews_item_id).await? {
                return Err(DbError::Duplicate {
                    table,
                    ews_id: ews_item_id.to_string(),
                    existing,
                });
            }
        }
        match self.write_row(row, ews_item_id, mapping).await {
            Err(DbError::Query {
                what: WRITING_ROW,
                source,
            }) if source
                .as_database_error()
                .is_some_and(|e| e.is_unique_violation()) =>
            {
                // Another writer stamped this item on a row meanwhile (or an update links an
                // item another row has): the index refused; name that row.
                match self.row_by_ews_id(table, ews_item_id).await? {
                    Some(existing) if existing.0 != id => Err(DbError::Duplicate {
                        table,
                        ews_id: ews_item_id.to_string(),
                        existing,
                    }),
                    _ => Err(DbError::Query {
                        what: WRITING_ROW,
                        source,
                    }),
                }
            }
            other => other,
        }
    }

    /// The row of `table` (a synced table: contacts, appointments, tasks, mail folders, mails)
    /// that carries the Exchange id `ews_id`, as (id, version).
    pub async fn row_by_ews_id(
        &self,
        table: &str,
        ews_id: &str,
    ) -> Result<Option<(i64, i64)>, DbError> {
        let table = super::queue::checked(table)?;
        let sql = format!("SELECT id, version FROM {table} WHERE ews_id = $1");
        on_db!(
            self,
            &sql,
            "finding a CRM row by its Exchange id",
            |x| x.bind(ews_id),
            fetch_optional,
            |row| row
                .map(|r| Ok::<_, sqlx::Error>((r.try_get::<i64, _>(0)?, r.try_get::<i64, _>(1)?)))
                .transpose()
        )?
        .map_err(q("finding a CRM row by its Exchange id"))
    }

    /// The row write itself (and the mapping, in one transaction).
    async fn write_row(
        &self,
        row: &CrmRow,
        ews_item_id: &str,
        mapping: Option<&ItemMapping>,
    ) -> Result<(i64, i64), DbError> {
        let (table, mut cols) = columns(row, ews_item_id);
        let id = row.id();
        let sql = statement(table, id, &cols);
        if id != 0 {
            cols.push(("id", Value::Int(Some(id))));
            cols.push(("version", Value::Int(Some(super::rows::version_of(row)))));
        }
        let values: Vec<Value> = cols.into_iter().map(|(_, v)| v).collect();
        match self {
            Db::Postgres(p) => write_in_tx!(
                p,
                &sql,
                MAPPING_UPSERT,
                |c: &Vec<String>| c.clone(),
                values,
                mapping,
                table,
                id,
                ews_item_id
            ),
            Db::Sqlite(p) => {
                let (sql, mapping_sql) = (
                    sqlite_placeholders(&sql),
                    sqlite_placeholders(MAPPING_UPSERT),
                );
                write_in_tx!(
                    p,
                    &sql,
                    &mapping_sql,
                    |c: &Vec<String>| serde_json::Value::from(c.clone()).to_string(),
                    values,
                    mapping,
                    table,
                    id,
                    ews_item_id
                )
            }
            Db::MySql(p) => {
                if mapping.is_some() {
                    return Err(DbError::Url(super::STATE_NOT_MYSQL.into()));
                }
                // No RETURNING in MySQL: the new id from the insert, the version read back in
                // the same transaction.
                let sql = mysql_statement(&sql);
                let mut tx = p.begin().await.map_err(q("starting a transaction"))?;
                let mark = CrmWrite::begin_write(&mut *tx).await?;
                let query = bind_values!(sqlx::query(&sql), &values, |c: &Vec<String>| {
                    serde_json::Value::from(c.clone()).to_string()
                });
                let done = query.execute(&mut *tx).await.map_err(q(WRITING_ROW))?;
                let new_id = if id == 0 {
                    // An AUTO_INCREMENT BIGINT: always within i64.
                    done.last_insert_id() as i64
                } else if done.rows_affected() == 0 {
                    return Err(DbError::Stale { table, id });
                } else {
                    id
                };
                let version: i64 =
                    sqlx::query_scalar(&format!("SELECT version FROM {table} WHERE id = ?"))
                        .bind(new_id)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(q(WRITING_ROW))?;
                CrmWrite::end_write(&mut *tx, mark).await?;
                tx.commit().await.map_err(q("committing a CRM write"))?;
                Ok((new_id, version))
            }
        }
    }
}

/// The INSERT or UPDATE of [`statement`] for MySQL: `?` placeholders (they appear in order),
/// no RETURNING.
fn mysql_statement(sql: &str) -> String {
    let (sql, _) = super::mysql::placeholders(sql);
    sql.trim_end_matches(" RETURNING id, version").to_string()
}

/// One write of a bulk save from Exchange ([`Db::save_many_from_exchange`]).
#[derive(Debug, Clone)]
pub struct ExchangeWrite {
    /// The row: inserted when its id is 0, else updated over the version it carries.
    pub row: CrmRow,
    /// The Exchange id the row carries (`ews_id`).
    pub ews_id: String,
    /// Its mapping, filled in with the row's id and new version and stored in the same
    /// transaction (needs the state store in this database: never on MariaDB/MySQL).
    pub mapping: Option<ItemMapping>,
}

/// What became of one write of a bulk save.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    /// Written: the row's id and new version.
    Written(i64, i64),
    /// An insert for an item a row already carries: that row's id and version. Nothing was
    /// written for it.
    Duplicate(i64, i64),
    /// An update of a row that is gone or changed since it was read. Nothing was written for
    /// it.
    Stale,
}

/// Rows per multi-row INSERT (19 columns at most: well within every backend's parameter cap).
const INSERT_ROWS: usize = 100;

/// A multi-row INSERT of `rows` rows of `names`, returning id, version and ews_id (matched
/// back by the unique `ews_id`, not by the order of the answer).
fn insert_statement(table: &str, names: &[&str], rows: usize) -> String {
    let per = names.len();
    let tuples: Vec<String> = (0..rows)
        .map(|r| {
            let ps: Vec<String> = (1..=per).map(|c| format!("${}", r * per + c)).collect();
            format!("({})", ps.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO {table} ({}) VALUES {} RETURNING id, version, ews_id",
        names.join(", "),
        tuples.join(", ")
    )
}

/// The bulk save on PostgreSQL or SQLite, in one transaction: multi-row INSERTs, an UPDATE per
/// changed row (over its version), then the mappings. Returns the outcome of each write in
/// `todo` (indexes into `writes`).
macro_rules! save_many_in_tx {
    ($pool:expr, $placeholders:expr, $categories:expr, $mappings:expr, $writes:expr, $todo:expr, $table:expr) => {{
        let writes: &[ExchangeWrite] = $writes;
        let mut saved: Vec<(usize, Saved)> = Vec::with_capacity($todo.len());
        let mut tx = $pool.begin().await.map_err(q("starting a transaction"))?;
        let mark = CrmWrite::begin_write(&mut *tx).await?;
        let (inserts, updates): (Vec<usize>, Vec<usize>) = $todo
            .iter()
            .copied()
            .partition(|i| writes[*i].row.id() == 0);
        for chunk in inserts.chunks(INSERT_ROWS) {
            let mut names = Vec::new();
            let mut values = Vec::new();
            for i in chunk {
                let (_, cols) = columns(&writes[*i].row, &writes[*i].ews_id);
                names = cols.iter().map(|(n, _)| *n).collect();
                values.extend(cols.into_iter().map(|(_, v)| v));
            }
            let sql = $placeholders(&insert_statement($table, &names, chunk.len()));
            let query = bind_values!(
                sqlx::query_as::<_, (i64, i64, Option<String>)>(&sql),
                &values,
                $categories
            );
            let back: std::collections::HashMap<String, (i64, i64)> = query
                .fetch_all(&mut *tx)
                .await
                .map_err(q(WRITING_ROW))?
                .into_iter()
                .filter_map(|(id, version, ews)| Some((ews?, (id, version))))
                .collect();
            for i in chunk {
                let (id, version) =
                    back.get(&writes[*i].ews_id)
                        .copied()
                        .ok_or(DbError::Query {
                            what: WRITING_ROW,
                            source: sqlx::Error::RowNotFound,
                        })?;
                saved.push((*i, Saved::Written(id, version)));
            }
        }
        for i in updates {
            let w = &writes[i];
            let (_, mut cols) = columns(&w.row, &w.ews_id);
            let sql = $placeholders(&statement($table, w.row.id(), &cols));
            cols.push(("id", Value::Int(Some(w.row.id()))));
            cols.push(("version", Value::Int(Some(super::rows::version_of(&w.row)))));
            let values: Vec<Value> = cols.into_iter().map(|(_, v)| v).collect();
            let query = bind_values!(sqlx::query_as::<_, (i64, i64)>(&sql), &values, $categories);
            let done = query
                .fetch_optional(&mut *tx)
                .await
                .map_err(q(WRITING_ROW))?;
            saved.push((
                i,
                done.map_or(Saved::Stale, |(id, v)| Saved::Written(id, v)),
            ));
        }
        let mappings: Vec<ItemMapping> = saved
            .iter()
            .filter_map(|(i, s)| match (&writes[*i].mapping, s) {
                (Some(m), Saved::Written(id, version)) => Some(ItemMapping {
                    crm_table: $table.to_string(),
                    crm_id: *id,
                    ews_item_id: writes[*i].ews_id.clone(),
                    crm_version: Some(*version),
                    ..m.clone()
                }),
                _ => None,
            })
            .collect();
        $mappings(&mut *tx, &mappings).await?;
        CrmWrite::end_write(&mut *tx, mark).await?;
        tx.commit().await.map_err(q("committing a CRM write"))?;
        Ok::<_, DbError>(saved)
    }};
}

impl Db {
    /// Writes many rows of one table from Exchange in one transaction (a commit per chunk,
    /// not per row), each with its mapping where given, and says per write what became of
    /// it — the same outcomes as [`Db::save_from_exchange`], in the order of `writes`: an
    /// insert for an item a row already carries is `Duplicate` (nothing written for it), an
    /// update over a changed version is `Stale`. Should the unique `ews_id` index refuse the
    /// batch (another writer imported one of the items meanwhile), nothing of it is kept and
    /// the writes are made one by one, so the one that collides is named and the rest land.
    pub async fn save_many_from_exchange(
        &self,
        writes: &[ExchangeWrite],
    ) -> Result<Vec<Saved>, DbError> {
        let Some(first) = writes.first() else {
            return Ok(Vec::new());
        };
        let table = first.row.table();
        if let Some(w) = writes.iter().find(|w| w.row.table() != table) {
            return Err(DbError::Url(format!(
                "a bulk save mixes {table} with {}",
                w.row.table()
            )));
        }
        // Inserts for items a row already carries, found first (one query); an item twice in
        // the batch is written once and the other write goes the slow way.
        let insert_ids: Vec<String> = writes
            .iter()
            .filter(|w| w.row.id() == 0)
            .map(|w| w.ews_id.clone())
            .collect();
        let existing = self.rows_by_ews_ids(table, &insert_ids).await?;
        let mut out: Vec<Option<Saved>> = vec![None; writes.len()];
        let mut todo = Vec::new();
        let mut later = Vec::new();
        let mut taken = std::collections::HashSet::new();
        for (i, w) in writes.iter().enumerate() {
            if w.row.id() != 0 {
                todo.push(i);
            } else if let Some((id, version)) = existing.get(&w.ews_id) {
                out[i] = Some(Saved::Duplicate(*id, *version));
            } else if taken.insert(w.ews_id.as_str()) {
                todo.push(i);
            } else {
                later.push(i);
            }
        }
        let done = match self {
            Db::Postgres(p) => save_many_in_tx!(
                p,
                |s: &str| s.to_string(),
                |c: &Vec<String>| c.clone(),
                pg_mappings,
                writes,
                todo,
                table
            ),
            Db::Sqlite(p) => save_many_in_tx!(
                p,
                sqlite_placeholders,
                |c: &Vec<String>| serde_json::Value::from(c.clone()).to_string(),
                super::state::sqlite_put_mappings,
                writes,
                todo,
                table
            ),
            Db::MySql(p) => mysql_save_many(p, writes, &todo, table).await,
        };
        match done {
            Ok(saved) => {
                for (i, s) in saved {
                    out[i] = Some(s);
                }
            }
            Err(DbError::Query {
                what: WRITING_ROW,
                source,
            }) if source
                .as_database_error()
                .is_some_and(|e| e.is_unique_violation()) =>
            {
                tracing::debug!(
                    table,
                    "a bulk save collided with another writer; one by one"
                );
                later.extend(todo.iter().copied());
            }
            Err(e) => return Err(e),
        }
        later.sort_unstable();
        for i in later {
            let w = &writes[i];
            out[i] = Some(
                match self
                    .save_from_exchange(&w.row, &w.ews_id, w.mapping.as_ref())
                    .await
                {
                    Ok((id, version)) => Saved::Written(id, version),
                    Err(DbError::Duplicate {
                        existing: (id, version),
                        ..
                    }) => Saved::Duplicate(id, version),
                    Err(DbError::Stale { .. }) => Saved::Stale,
                    Err(e) => return Err(e),
                },
            );
        }
        Ok(out.into_iter().map(|s| s.unwrap_or(Saved::Stale)).collect())
    }
}

/// The bulk save on MariaDB/MySQL: no RETURNING, so a statement per row (the version read
/// back), all in one transaction. Mappings never live here.
async fn mysql_save_many(
    p: &sqlx::MySqlPool,
    writes: &[ExchangeWrite],
    todo: &[usize],
    table: &'static str,
) -> Result<Vec<(usize, Saved)>, DbError> {
    if todo.iter().any(|i| writes[*i].mapping.is_some()) {
        return Err(DbError::Url(super::STATE_NOT_MYSQL.into()));
    }
    let categories = |c: &Vec<String>| serde_json::Value::from(c.clone()).to_string();
    let mut tx = p.begin().await.map_err(q("starting a transaction"))?;
    let mark = CrmWrite::begin_write(&mut *tx).await?;
    let mut saved = Vec::with_capacity(todo.len());
    for i in todo {
        let w = &writes[*i];
        let (_, mut cols) = columns(&w.row, &w.ews_id);
        let id = w.row.id();
        let sql = mysql_statement(&statement(table, id, &cols));
        if id != 0 {
            cols.push(("id", Value::Int(Some(id))));
            cols.push(("version", Value::Int(Some(super::rows::version_of(&w.row)))));
        }
        let values: Vec<Value> = cols.into_iter().map(|(_, v)| v).collect();
        let query = bind_values!(sqlx::query(&sql), &values, categories);
        let done = query.execute(&mut *tx).await.map_err(q(WRITING_ROW))?;
        let new_id = if id == 0 {
            // An AUTO_INCREMENT BIGINT: always within i64.
            done.last_insert_id() as i64
        } else if done.rows_affected() == 0 {
            saved.push((*i, Saved::Stale));
            continue;
        } else {
            id
        };
        let version: i64 = sqlx::query_scalar(&format!("SELECT version FROM {table} WHERE id = ?"))
            .bind(new_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(q(WRITING_ROW))?;
        saved.push((*i, Saved::Written(new_id, version)));
    }
    CrmWrite::end_write(&mut *tx, mark).await?;
    tx.commit().await.map_err(q("committing a CRM write"))?;
    Ok(saved)
}

/// The mappings of a bulk save, in its transaction: one statement on PostgreSQL.
async fn pg_mappings(tx: &mut sqlx::PgConnection, all: &[ItemMapping]) -> Result<(), DbError> {
    if all.is_empty() {
        return Ok(());
    }
    super::state::pg_put_mappings(tx, all).await
}
