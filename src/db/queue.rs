//! The CRM-to-Exchange work queue (ms_pending) and the few CRM statements the sync engine
//! needs beyond reading and writing rows: operators, ids in a scope, stamping `ews_id`,
//! deleting a row Exchange deleted.

use sqlx::Row;

use super::{q, sqlite_placeholders, Db, DbError};
use crate::cluster::fence::CrmWrite;

/// An operator (ERP user) of the CRM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// crm_operators.id.
    pub id: i64,
    /// Tenant.
    pub tenant_id: i64,
    /// Personnel number.
    pub personnel_no: String,
    /// Name.
    pub display_name: String,
    /// E-mail address, if recorded.
    pub email: Option<String>,
}

fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The tables the engine names in SQL; anything else is refused before it reaches a statement.
pub(crate) fn checked(table: &str) -> Result<&str, DbError> {
    match table {
        "crm_contacts" | "crm_appointments" | "crm_tasks" | "crm_mails" | "crm_mail_folders" => {
            Ok(table)
        }
        other => Err(DbError::Query {
            what: "naming a CRM table",
            source: sqlx::Error::Protocol(format!("{other:?} is not a synced table")),
        }),
    }
}

impl Db {
    /// Queues CRM rows for mailboxes (duplicates are ignored).
    pub async fn add_pending(&self, items: &[(String, String, i64)]) -> Result<(), DbError> {
        for chunk in items.chunks(300) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
                .collect();
            let sql = format!(
                "INSERT INTO ms_pending (mailbox, crm_table, crm_id) VALUES {} \
                 ON CONFLICT (mailbox, crm_table, crm_id) DO UPDATE SET token = ms_pending.token + 1",
                values.join(", ")
            );
            on_db!(
                self,
                &sql,
                "queueing CRM changes",
                |x| chunk
                    .iter()
                    .fold(x, |x, (m, t, id)| x.bind(m).bind(t).bind(*id)),
                execute,
                |_r| ()
            )?;
        }
        Ok(())
    }

    /// Up to `limit` queued rows of a mailbox and table, oldest id first, with their tokens
    /// (hand them back to [`Db::clear_pending`]).
    pub async fn pending(
        &self,
        mailbox: &str,
        table: &str,
        limit: i64,
    ) -> Result<Vec<(i64, i64)>, DbError> {
        let sql = "SELECT crm_id, token FROM ms_pending WHERE mailbox = $1 AND crm_table = $2 ORDER BY crm_id LIMIT $3";
        on_db!(
            self,
            sql,
            "reading queued CRM changes",
            |x| x.bind(mailbox).bind(table).bind(limit),
            fetch_all,
            |rows| rows
                .iter()
                .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<i64, _>(1)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()
        )?
        .map_err(q("reading queued CRM changes"))
    }

    /// Removes handled rows from the queue — only where the token is still the one read, so
    /// a row queued again meanwhile stays queued.
    pub async fn clear_pending(
        &self,
        mailbox: &str,
        table: &str,
        done: &[(i64, i64)],
    ) -> Result<(), DbError> {
        for chunk in done.chunks(250) {
            let pairs: Vec<String> = (0..chunk.len())
                .map(|i| format!("(crm_id = ${} AND token = ${})", 3 + 2 * i, 4 + 2 * i))
                .collect();
            let sql = format!(
                "DELETE FROM ms_pending WHERE mailbox = $1 AND crm_table = $2 AND ({})",
                pairs.join(" OR ")
            );
            on_db!(
                self,
                &sql,
                "clearing queued CRM changes",
                |x| chunk
                    .iter()
                    .fold(x.bind(mailbox).bind(table), |x, (id, token)| x
                        .bind(*id)
                        .bind(*token)),
                execute,
                |_r| ()
            )?;
        }
        Ok(())
    }

    /// Which mailboxes hold a mapping for these rows (a row that moved to another owner, or
    /// was deleted, must leave the mailbox it was in): (mailbox, row id, the CRM version the
    /// mapping holds).
    pub async fn mapped_mailboxes(
        &self,
        table: &str,
        ids: &[i64],
    ) -> Result<Vec<(String, i64, Option<i64>)>, DbError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(500) {
            let sql = format!(
                "SELECT mailbox, crm_id, crm_version FROM ms_item_map WHERE crm_table = $1 AND crm_id IN ({})",
                placeholders(2, chunk.len())
            );
            let rows = on_db!(
                self,
                &sql,
                "reading mappings of changed rows",
                |x| chunk.iter().fold(x.bind(table), |x, id| x.bind(*id)),
                fetch_all,
                |rows| rows
                    .iter()
                    .map(|r| {
                        Ok((
                            r.try_get::<String, _>(0)?,
                            r.try_get::<i64, _>(1)?,
                            r.try_get::<Option<i64>, _>(2)?,
                        ))
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()
            )?
            .map_err(q("reading mappings of changed rows"))?;
            out.extend(rows);
        }
        Ok(out)
    }

    /// The current versions of these rows of a synced table or the outbox (rows that are
    /// gone are absent).
    pub async fn row_versions(
        &self,
        table: &str,
        ids: &[i64],
    ) -> Result<std::collections::HashMap<i64, i64>, DbError> {
        let table = if table == "crm_outbox" {
            table
        } else {
            checked(table)?
        };
        let mut out = std::collections::HashMap::new();
        for chunk in ids.chunks(500) {
            let sql = format!(
                "SELECT id, version FROM {table} WHERE id IN ({})",
                placeholders(1, chunk.len())
            );
            let rows = on_db!(
                self,
                &sql,
                "reading the versions of changed rows",
                |x| chunk.iter().fold(x, |x, id| x.bind(*id)),
                fetch_all,
                |rows| rows
                    .iter()
                    .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<i64, _>(1)?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()
            )?
            .map_err(q("reading the versions of changed rows"))?;
            out.extend(rows);
        }
        Ok(out)
    }

    /// Every operator.
    pub async fn operators(&self) -> Result<Vec<Operator>, DbError> {
        let sql = "SELECT id, tenant_id, personnel_no, display_name, email FROM crm_operators ORDER BY id";
        on_db!(
            self,
            sql,
            "reading the operators",
            |x| x,
            fetch_all,
            |rows| rows
                .iter()
                .map(|r| {
                    Ok(Operator {
                        id: r.try_get(0)?,
                        tenant_id: r.try_get(1)?,
                        personnel_no: r.try_get(2)?,
                        display_name: r.try_get(3)?,
                        email: r.try_get(4)?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
        )?
        .map_err(q("reading the operators"))
    }

    /// Ids of the rows of `table` owned by `owner` (or, with `None`, shared by `tenant`).
    pub async fn ids_in_scope(
        &self,
        table: &str,
        owner: Option<i64>,
        tenant: i64,
    ) -> Result<Vec<i64>, DbError> {
        let table = checked(table)?;
        let (sql, bind) = match owner {
            Some(o) => (
                format!("SELECT id FROM {table} WHERE owner_id = $1 ORDER BY id"),
                o,
            ),
            None => (
                format!(
                    "SELECT id FROM {table} WHERE owner_id IS NULL AND tenant_id = $1 ORDER BY id"
                ),
                tenant,
            ),
        };
        on_db!(
            self,
            &sql,
            "listing CRM rows",
            |x| x.bind(bind),
            fetch_all,
            |rows| rows
                .iter()
                .map(|r| r.try_get::<i64, _>(0))
                .collect::<Result<Vec<_>, _>>()
        )?
        .map_err(q("listing CRM rows"))
    }

    /// Records the Exchange ids on CRM rows, in one statement on PostgreSQL and one
    /// transaction on SQLite (not a commit per row); each row's new version in the order
    /// given (None: the row is gone).
    pub async fn set_ews_ids(
        &self,
        table: &str,
        rows: &[(i64, String)],
    ) -> Result<Vec<Option<i64>>, DbError> {
        let table = checked(table)?;
        let sql = format!(
            "UPDATE {table} SET ews_id = $1, version = version + 1 WHERE id = $2 RETURNING version"
        );
        let what = "recording the Exchange id on a CRM row";
        macro_rules! in_tx {
            ($pool:expr, $sql:expr) => {{
                let mut tx = $pool.begin().await.map_err(q("starting a transaction"))?;
                let mark = tx.begin_write().await?;
                let mut versions = Vec::with_capacity(rows.len());
                for (id, ews_id) in rows {
                    let v: Option<(i64,)> = sqlx::query_as($sql)
                        .bind(ews_id)
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(q(what))?;
                    versions.push(v.map(|v| v.0));
                }
                tx.end_write(mark).await?;
                tx.commit().await.map_err(q(what))?;
                Ok(versions)
            }};
        }
        match self {
            // One statement for the whole batch on PostgreSQL (a round trip per row cost
            // a third of the initial sync's time).
            Db::Postgres(p) => {
                let bulk = format!(
                    "UPDATE {table} AS t SET ews_id = v.ews_id, version = t.version + 1 \
                     FROM (SELECT unnest($1::bigint[]) AS id, unnest($2::text[]) AS ews_id) AS v \
                     WHERE t.id = v.id RETURNING t.id, t.version"
                );
                let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
                let ews: Vec<&str> = rows.iter().map(|(_, e)| e.as_str()).collect();
                let mut tx = p.begin().await.map_err(q("starting a transaction"))?;
                let mark = tx.begin_write().await?;
                let written: std::collections::HashMap<i64, i64> = sqlx::query_as(&bulk)
                    .bind(&ids)
                    .bind(&ews)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(q(what))?
                    .into_iter()
                    .collect();
                tx.end_write(mark).await?;
                tx.commit().await.map_err(q(what))?;
                Ok(ids.iter().map(|id| written.get(id).copied()).collect())
            }
            Db::Sqlite(p) => in_tx!(p, &sqlite_placeholders(&sql)),
            // No RETURNING for UPDATE in MySQL: one UPDATE per 500 rows, then their versions,
            // in one transaction.
            Db::MySql(p) => {
                let mut tx = p.begin().await.map_err(q("starting a transaction"))?;
                let mark = tx.begin_write().await?;
                let mut written: std::collections::HashMap<i64, i64> = Default::default();
                for chunk in rows.chunks(500) {
                    let cases: String = chunk.iter().map(|_| " WHEN ? THEN ?").collect();
                    let list = vec!["?"; chunk.len()].join(", ");
                    let update = format!(
                        "UPDATE {table} SET ews_id = CASE id{cases} END, version = version + 1 WHERE id IN ({list})"
                    );
                    let mut query = sqlx::query(&update);
                    for (id, ews_id) in chunk {
                        query = query.bind(*id).bind(ews_id);
                    }
                    for (id, _) in chunk {
                        query = query.bind(*id);
                    }
                    query.execute(&mut *tx).await.map_err(q(what))?;
                    let read = format!("SELECT id, version FROM {table} WHERE id IN ({list})");
                    let versions: Vec<(i64, i64)> = chunk
                        .iter()
                        .fold(sqlx::query_as(&read), |x, (id, _)| x.bind(*id))
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(q(what))?;
                    written.extend(versions);
                }
                tx.end_write(mark).await?;
                tx.commit().await.map_err(q(what))?;
                Ok(rows
                    .iter()
                    .map(|(id, _)| written.get(id).copied())
                    .collect())
            }
        }
    }

    /// Deletes a CRM row (deleted in Exchange); false if it was already gone.
    /// In a cluster the delete checks the mailbox's fence in the same transaction.
    pub async fn delete_crm_row(&self, table: &str, id: i64) -> Result<bool, DbError> {
        let table = checked(table)?;
        let what = "deleting a CRM row";
        macro_rules! in_tx {
            ($pool:expr, $sql:expr) => {{
                let mut tx = $pool.begin().await.map_err(q("starting a transaction"))?;
                let mark = tx.begin_write().await?;
                let done = sqlx::query($sql)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(q(what))?;
                tx.end_write(mark).await?;
                tx.commit().await.map_err(q(what))?;
                Ok(done.rows_affected() > 0)
            }};
        }
        match self {
            Db::Postgres(p) => in_tx!(p, &format!("DELETE FROM {table} WHERE id = $1")),
            Db::Sqlite(p) => in_tx!(p, &format!("DELETE FROM {table} WHERE id = ?1")),
            Db::MySql(p) => in_tx!(p, &format!("DELETE FROM {table} WHERE id = ?")),
        }
    }
}

impl Db {
    /// Items of a mailbox and table in the failure log.
    pub async fn failures_count(&self, mailbox: &str, table: &str) -> Result<i64, DbError> {
        let sql = "SELECT COUNT(*) FROM ms_failures WHERE mailbox = $1 AND crm_table = $2";
        on_db!(
            self,
            sql,
            "counting failures",
            |x| x.bind(mailbox).bind(table),
            fetch_one,
            |row| row.try_get::<i64, _>(0)
        )?
        .map_err(q("counting failures"))
    }
}

impl Db {
    /// Mappings of a mailbox and table whose item was never confirmed (no ChangeKey yet).
    pub async fn unconfirmed_mappings(
        &self,
        mailbox: &str,
        table: &str,
    ) -> Result<Vec<(i64, String)>, DbError> {
        let sql = "SELECT crm_id, ews_item_id FROM ms_item_map WHERE mailbox = $1 AND crm_table = $2 AND change_key IS NULL";
        on_db!(
            self,
            sql,
            "reading unconfirmed mappings",
            |x| x.bind(mailbox).bind(table),
            fetch_all,
            |rows| rows
                .iter()
                .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<String, _>(1)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()
        )?
        .map_err(q("reading unconfirmed mappings"))
    }
}
