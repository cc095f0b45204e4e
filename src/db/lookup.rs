//! Lookups the sync engine needs in batches: CRM rows by the Exchange id they carry (an import
//! that a crash separated from its mapping is found, not inserted twice), and the unverified
//! mappings of a table.

use std::collections::HashMap;

use sqlx::Row;

use super::state::ItemMapping;
use super::{q, Db, DbError};

/// The synced tables, so a table name from the engine can be put into SQL.
fn checked(table: &str) -> Result<&'static str, DbError> {
    [
        "crm_contacts",
        "crm_appointments",
        "crm_tasks",
        "crm_mails",
        "crm_mail_folders",
    ]
    .into_iter()
    .find(|t| *t == table)
    .ok_or_else(|| DbError::Url(format!("{table} is not a synced table")))
}

impl Db {
    /// The rows of a table that carry these Exchange ids, by Exchange id.
    pub async fn ids_by_ews_ids(
        &self,
        table: &str,
        ews_ids: &[String],
    ) -> Result<HashMap<String, i64>, DbError> {
        let table = checked(table)?;
        let mut out = HashMap::new();
        for chunk in ews_ids.chunks(500) {
            let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 1)).collect();
            let sql = format!(
                "SELECT ews_id, id FROM {table} WHERE ews_id IN ({}) ORDER BY id",
                list.join(", ")
            );
            let found: Vec<(String, i64)> = on_db!(
                self,
                &sql,
                "finding CRM rows by Exchange id",
                |x| chunk.iter().fold(x, |x, id| x.bind(id)),
                fetch_all,
                |rows| rows
                    .iter()
                    // ews_id is binary-collated on MariaDB/MySQL (case-sensitive).
                    .map(|r| Ok((
                        super::rows::TextColumn::text(r, "ews_id")?.unwrap_or_default(),
                        r.try_get::<i64, _>(1)?
                    )))
                    .collect::<Result<Vec<_>, sqlx::Error>>()
            )?
            .map_err(q("finding CRM rows by Exchange id"))?;
            for (ews, id) in found {
                // The oldest row wins should a database without the unique index hold two.
                out.entry(ews).or_insert(id);
            }
        }
        Ok(out)
    }

    /// The rows of a table that carry these Exchange ids, as (id, version) by Exchange id.
    pub async fn rows_by_ews_ids(
        &self,
        table: &str,
        ews_ids: &[String],
    ) -> Result<HashMap<String, (i64, i64)>, DbError> {
        let table = checked(table)?;
        let mut out = HashMap::new();
        for chunk in ews_ids.chunks(500) {
            let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 1)).collect();
            let sql = format!(
                "SELECT ews_id, id, version FROM {table} WHERE ews_id IN ({}) ORDER BY id",
                list.join(", ")
            );
            let found: Vec<(String, i64, i64)> = on_db!(
                self,
                &sql,
                "finding CRM rows by Exchange id",
                |x| chunk.iter().fold(x, |x, id| x.bind(id)),
                fetch_all,
                |rows| rows
                    .iter()
                    .map(|r| Ok((
                        super::rows::TextColumn::text(r, "ews_id")?.unwrap_or_default(),
                        r.try_get::<i64, _>(1)?,
                        r.try_get::<i64, _>(2)?
                    )))
                    .collect::<Result<Vec<_>, sqlx::Error>>()
            )?
            .map_err(q("finding CRM rows by Exchange id"))?;
            for (ews, id, version) in found {
                out.entry(ews).or_insert((id, version));
            }
        }
        Ok(out)
    }

    /// Appointments of an operator carrying any of these iCalendar UIDs, oldest first per UID
    /// (one query per 500 UIDs instead of one per UID).
    pub async fn appointments_by_uids(
        &self,
        owner_id: i64,
        uids: &[String],
    ) -> Result<HashMap<String, Vec<i64>>, DbError> {
        let mut out: HashMap<String, Vec<i64>> = HashMap::new();
        for chunk in uids.chunks(500) {
            let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "SELECT uid, id FROM crm_appointments WHERE owner_id = $1 AND uid IN ({}) ORDER BY id",
                list.join(", ")
            );
            let found: Vec<(String, i64)> = on_db!(
                self,
                &sql,
                "finding appointments by UID",
                |x| chunk.iter().fold(x.bind(owner_id), |x, u| x.bind(u)),
                fetch_all,
                |rows| rows
                    .iter()
                    .map(|r| Ok((
                        super::rows::TextColumn::text(r, "uid")?.unwrap_or_default(),
                        r.try_get::<i64, _>(1)?
                    )))
                    .collect::<Result<Vec<_>, sqlx::Error>>()
            )?
            .map_err(q("finding appointments by UID"))?;
            for (uid, id) in found {
                out.entry(uid).or_default().push(id);
            }
        }
        Ok(out)
    }

    /// The mappings of a mailbox and table that no stored sync state covers yet.
    pub async fn unverified_of(
        &self,
        mailbox: &str,
        crm_table: &str,
    ) -> Result<Vec<ItemMapping>, DbError> {
        let sql = "SELECT mailbox, crm_table, crm_id, ews_item_id, change_key, crm_version, fields, stamped, unverified FROM ms_item_map \
                   WHERE mailbox = $1 AND crm_table = $2 AND unverified = $3 ORDER BY crm_id";
        on_db!(
            self,
            sql,
            "reading unverified mappings",
            |x| x.bind(mailbox).bind(crm_table).bind(true),
            fetch_all,
            |rows| rows
                .iter()
                .map(super::state::decode_mapping)
                .collect::<Result<Vec<_>, _>>()
        )?
    }

    /// The mappings of a mailbox and table that still wait for their stamp, by CRM id after
    /// `after`; an item parked in the failure log (its stamp refused) is not offered until its
    /// entry is cleared.
    pub async fn unstamped_of(
        &self,
        mailbox: &str,
        crm_table: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<ItemMapping>, DbError> {
        let sql = "SELECT mailbox, crm_table, crm_id, ews_item_id, change_key, crm_version, fields, stamped, unverified FROM ms_item_map m \
                   WHERE mailbox = $1 AND crm_table = $2 AND stamped = $3 AND crm_id > $4 \
                   AND NOT EXISTS (SELECT 1 FROM ms_failures f WHERE f.mailbox = m.mailbox AND f.crm_table = m.crm_table \
                   AND f.crm_id = m.crm_id AND f.ews_item_id = m.ews_item_id) \
                   ORDER BY crm_id LIMIT $5";
        on_db!(
            self,
            sql,
            "reading unstamped mappings",
            |x| x
                .bind(mailbox)
                .bind(crm_table)
                .bind(false)
                .bind(after)
                .bind(limit),
            fetch_all,
            |rows| rows
                .iter()
                .map(super::state::decode_mapping)
                .collect::<Result<Vec<_>, _>>()
        )?
    }

    /// How many stamps of a mailbox's table have waited since `since` or longer (parked items
    /// not counted).
    pub async fn stamps_waiting_since(
        &self,
        mailbox: &str,
        crm_table: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<i64, DbError> {
        let sql = "SELECT COUNT(*) FROM ms_item_map m WHERE mailbox = $1 AND crm_table = $2 AND stamped = $3 \
                   AND updated_at <= $4 AND NOT EXISTS (SELECT 1 FROM ms_failures f WHERE f.mailbox = m.mailbox \
                   AND f.crm_table = m.crm_table AND f.crm_id = m.crm_id AND f.ews_item_id = m.ews_item_id)";
        on_db!(
            self,
            sql,
            "counting waiting stamps",
            |x| x.bind(mailbox).bind(crm_table).bind(false).bind(since),
            fetch_one,
            |r| r.try_get::<i64, _>(0)
        )?
        .map_err(q("counting waiting stamps"))
    }

    /// Records stamps written: (crm id, Exchange id, the ChangeKey the stamp was written over,
    /// the ChangeKey it produced). A mapping that moved on meanwhile (another item, another
    /// ChangeKey) is left as it is: its next update carries the stamp again.
    pub async fn mark_stamped(
        &self,
        mailbox: &str,
        crm_table: &str,
        stamps: &[(i64, String, Option<String>, Option<String>)],
    ) -> Result<(), DbError> {
        if stamps.is_empty() {
            return Ok(());
        }
        let what = "recording written stamps";
        let one = "UPDATE ms_item_map SET stamped = $1, change_key = $2, updated_at = now() \
                   WHERE mailbox = $3 AND crm_table = $4 AND crm_id = $5 AND ews_item_id = $6 \
                   AND COALESCE(change_key, '') = COALESCE($7, '')";
        match self {
            Db::Postgres(p) => {
                let bulk = "UPDATE ms_item_map AS m SET stamped = TRUE, change_key = v.new_ck, updated_at = now() \
                    FROM (SELECT unnest($3::bigint[]) AS crm_id, unnest($4::text[]) AS ews, \
                    unnest($5::text[]) AS old_ck, unnest($6::text[]) AS new_ck) AS v \
                    WHERE m.mailbox = $1 AND m.crm_table = $2 AND m.crm_id = v.crm_id \
                    AND m.ews_item_id = v.ews AND COALESCE(m.change_key, '') = COALESCE(v.old_ck, '')";
                sqlx::query(bulk)
                    .bind(mailbox)
                    .bind(crm_table)
                    .bind(stamps.iter().map(|s| s.0).collect::<Vec<_>>())
                    .bind(stamps.iter().map(|s| s.1.clone()).collect::<Vec<_>>())
                    .bind(stamps.iter().map(|s| s.2.clone()).collect::<Vec<_>>())
                    .bind(stamps.iter().map(|s| s.3.clone()).collect::<Vec<_>>())
                    .execute(p)
                    .await
                    .map_err(q(what))?;
                Ok(())
            }
            Db::Sqlite(p) => {
                let sql = super::sqlite_placeholders(one);
                let mut tx = p.begin().await.map_err(q("starting a transaction"))?;
                for (crm_id, ews, old, new) in stamps {
                    sqlx::query(&sql)
                        .bind(true)
                        .bind(new)
                        .bind(mailbox)
                        .bind(crm_table)
                        .bind(crm_id)
                        .bind(ews)
                        .bind(old)
                        .execute(&mut *tx)
                        .await
                        .map_err(q(what))?;
                }
                tx.commit().await.map_err(q(what))
            }
            Db::MySql(_) => Err(DbError::Url(super::STATE_NOT_MYSQL.into())),
        }
    }

    /// Marks every mapping of a mailbox and table unverified: a full read follows, and what
    /// it does not report is checked (a folder read from scratch is compared with the
    /// mappings, nothing missing stays mapped).
    pub async fn unverify_all(&self, mailbox: &str, crm_table: &str) -> Result<(), DbError> {
        on_db!(
            self,
            "UPDATE ms_item_map SET unverified = $3 WHERE mailbox = $1 AND crm_table = $2",
            "marking mappings for a full compare",
            |x| x.bind(mailbox).bind(crm_table).bind(true),
            execute,
            |_r| ()
        )
    }

    /// Forgets many mappings of a mailbox and table.
    pub async fn delete_mappings(
        &self,
        mailbox: &str,
        crm_table: &str,
        crm_ids: &[i64],
    ) -> Result<(), DbError> {
        for chunk in crm_ids.chunks(500) {
            let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 3)).collect();
            let sql = format!(
                "DELETE FROM ms_item_map WHERE mailbox = $1 AND crm_table = $2 AND crm_id IN ({})",
                list.join(", ")
            );
            on_db!(
                self,
                &sql,
                "deleting item mappings",
                |x| chunk
                    .iter()
                    .fold(x.bind(mailbox).bind(crm_table), |x, id| x.bind(*id)),
                execute,
                |_r| ()
            )?;
        }
        Ok(())
    }
}
