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

    /// The mappings of a mailbox and table that still wait for their stamp.
    pub async fn unstamped_of(
        &self,
        mailbox: &str,
        crm_table: &str,
        limit: i64,
    ) -> Result<Vec<ItemMapping>, DbError> {
        let sql = "SELECT mailbox, crm_table, crm_id, ews_item_id, change_key, crm_version, fields, stamped, unverified FROM ms_item_map \
                   WHERE mailbox = $1 AND crm_table = $2 AND stamped = $3 ORDER BY crm_id LIMIT $4";
        on_db!(
            self,
            sql,
            "reading unstamped mappings",
            |x| x.bind(mailbox).bind(crm_table).bind(false).bind(limit),
            fetch_all,
            |rows| rows
                .iter()
                .map(super::state::decode_mapping)
                .collect::<Result<Vec<_>, _>>()
        )?
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
