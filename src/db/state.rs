//! mailsync's state store: change-log cursors, EWS sync states per folder, the item mappings
//! (with the last synced field values, the base of the three-way merge), the conflict log
//! and the failure log. PostgreSQL or SQLite: `Db::migrate` refuses it on MariaDB/MySQL, so
//! the statements here are written for those two.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::changes::Cursor;
use super::{q, sqlite_placeholders, Db, DbError};

/// [`MAPPING_UPSERT`] for each mapping of `$all`, on `$conn`.
macro_rules! upsert_each {
    ($conn:expr, $sql:expr, $all:expr) => {
        for m in $all {
            sqlx::query($sql)
                .bind(&m.mailbox)
                .bind(&m.crm_table)
                .bind(m.crm_id)
                .bind(&m.ews_item_id)
                .bind(&m.change_key)
                .bind(m.crm_version)
                .bind(m.fields.to_string())
                .bind(m.stamped)
                .bind(m.unverified)
                .execute(&mut *$conn)
                .await
                .map_err(q("storing an item mapping"))?;
        }
    };
}

/// The EWS sync state of one folder of one mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FolderState {
    /// The Exchange folder id, once known.
    pub ews_folder_id: Option<String>,
    /// The SyncState of the last completed SyncFolderItems (or SyncFolderHierarchy).
    pub sync_state: Option<String>,
}

/// One synced item: the CRM row and the Exchange item it is paired with.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemMapping {
    /// Mailbox (primary SMTP address).
    pub mailbox: String,
    /// CRM table, e.g. crm_contacts.
    pub crm_table: String,
    /// CRM row id.
    pub crm_id: i64,
    /// Exchange item id.
    pub ews_item_id: String,
    /// Change key last written or seen.
    pub change_key: Option<String>,
    /// CRM version last written or seen.
    pub crm_version: Option<i64>,
    /// Field values last synced, by field name: the base of the three-way merge.
    pub fields: serde_json::Value,
    /// The Exchange item carries the CRM-id stamp. An imported item is stamped later, in a
    /// batch or with its next update; until then its mapping and the row's `ews_id` are what
    /// recognise it.
    pub stamped: bool,
    /// Written (created in Exchange, or imported from it) after the folder's stored sync
    /// state was taken: a SyncFolderItems from that state may never report the item, not
    /// even its deletion, so the next complete read checks it (see docs/ARCHITECTURE.md).
    pub unverified: bool,
}

/// The system whose value won a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Winner {
    /// The CRM's value was kept.
    Crm,
    /// Exchange's value was kept.
    Exchange,
}

/// A logged conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// Mailbox.
    pub mailbox: String,
    /// CRM table.
    pub crm_table: String,
    /// CRM row.
    pub crm_id: Option<i64>,
    /// Exchange item.
    pub ews_item_id: Option<String>,
    /// Fields changed on both sides.
    pub fields: Vec<String>,
    /// Who won.
    pub winner: Winner,
}

/// What each side held and what was kept, for the conflict log: JSON objects field -> value
/// (the value as the field model writes it; `null` for an empty field). Default: nothing
/// recorded, as for conflicts logged before the values were kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConflictValues {
    /// The CRM's values of the conflicting fields.
    pub crm: serde_json::Map<String, serde_json::Value>,
    /// Exchange's values of the conflicting fields.
    pub exchange: serde_json::Map<String, serde_json::Value>,
    /// The values written to both sides after the merge.
    pub merged: serde_json::Map<String, serde_json::Value>,
}

impl ConflictValues {
    /// The values of `fields` taken from three field maps (JSON objects, e.g. the canonical
    /// field values of each side and of the merge result); fields missing from a map are
    /// recorded as `null`, anything that is not an object records nothing for that side.
    pub fn of(
        fields: &[String],
        crm: &serde_json::Value,
        exchange: &serde_json::Value,
        merged: &serde_json::Value,
    ) -> Self {
        let pick = |side: &serde_json::Value| -> serde_json::Map<String, serde_json::Value> {
            match side.as_object() {
                Some(map) => fields
                    .iter()
                    .map(|f| (f.clone(), map.get(f).cloned().unwrap_or_default()))
                    .collect(),
                None => serde_json::Map::new(),
            }
        };
        ConflictValues {
            crm: pick(crm),
            exchange: pick(exchange),
            merged: pick(merged),
        }
    }
}

/// An item that failed to sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Mailbox.
    pub mailbox: String,
    /// CRM table.
    pub crm_table: String,
    /// CRM row (0 when the item is only known in Exchange).
    pub crm_id: i64,
    /// Exchange item ('' when only known in the CRM).
    pub ews_item_id: String,
    /// Why, in words an operator can act on.
    pub error: String,
    /// How often it failed.
    pub attempts: i64,
}

impl Db {
    /// The cursor named `name` (start of the log when unknown).
    pub async fn cursor(&self, name: &str) -> Result<Cursor, DbError> {
        on_db!(
            self,
            "SELECT txid, seq FROM ms_cursor WHERE name = $1",
            "reading a cursor",
            |x| x.bind(name),
            fetch_optional,
            |row| {
                row.map_or(Cursor::default(), |r| Cursor {
                    txid: r.get(0),
                    seq: r.get(1),
                })
            }
        )
    }

    /// Whether the cursor named `name` was ever stored (a stored cursor at the start of an
    /// empty log is still a position: what is logged after it must be read, not skipped).
    pub async fn cursor_exists(&self, name: &str) -> Result<bool, DbError> {
        on_db!(
            self,
            "SELECT name FROM ms_cursor WHERE name = $1",
            "reading a cursor",
            |x| x.bind(name),
            fetch_optional,
            |row| row.is_some()
        )
    }

    /// Moves the cursor to `to`, and only forward: a replayed or late batch cannot move it
    /// back. Call it after the changes up to `to` are applied (at-least-once delivery).
    pub async fn advance_cursor(&self, name: &str, to: Cursor) -> Result<(), DbError> {
        let sql = "INSERT INTO ms_cursor (name, txid, seq) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE \
                   SET txid = excluded.txid, seq = excluded.seq, updated_at = now() \
                   WHERE ms_cursor.txid < excluded.txid OR (ms_cursor.txid = excluded.txid AND ms_cursor.seq < excluded.seq)";
        on_db!(
            self,
            sql,
            "advancing a cursor",
            |x| x.bind(name).bind(to.txid).bind(to.seq),
            execute,
            |_r| ()
        )
    }

    /// The sync state of a folder (`Default` when none is stored: sync from scratch).
    pub async fn folder_state(
        &self,
        mailbox: &str,
        folder_key: &str,
    ) -> Result<FolderState, DbError> {
        on_db!(
            self,
            "SELECT ews_folder_id, sync_state FROM ms_folder_state WHERE mailbox = $1 AND folder_key = $2",
            "reading a folder state",
            |x| x.bind(mailbox).bind(folder_key),
            fetch_optional,
            |row| row.map_or(FolderState::default(), |r| FolderState { ews_folder_id: r.get(0), sync_state: r.get(1) })
        )
    }

    /// Stores the sync state of a folder (after the step that produced it committed).
    pub async fn set_folder_state(
        &self,
        mailbox: &str,
        folder_key: &str,
        state: &FolderState,
    ) -> Result<(), DbError> {
        let sql = "INSERT INTO ms_folder_state (mailbox, folder_key, ews_folder_id, sync_state) VALUES ($1, $2, $3, $4) \
                   ON CONFLICT (mailbox, folder_key) DO UPDATE SET ews_folder_id = excluded.ews_folder_id, \
                   sync_state = excluded.sync_state, updated_at = now()";
        on_db!(
            self,
            sql,
            "storing a folder state",
            |x| x
                .bind(mailbox)
                .bind(folder_key)
                .bind(&state.ews_folder_id)
                .bind(&state.sync_state),
            execute,
            |_r| ()
        )
    }

    /// Stores or replaces the mapping of a CRM row. Mapping an Exchange item that is already
    /// mapped to another row of the mailbox fails with a unique violation: one item, one row.
    pub async fn put_mapping(&self, m: &ItemMapping) -> Result<(), DbError> {
        self.put_mappings(std::slice::from_ref(m)).await
    }

    /// Stores many mappings in one transaction.
    pub async fn put_mappings(&self, all: &[ItemMapping]) -> Result<(), DbError> {
        let what = "storing an item mapping";
        match self {
            // One statement for the whole batch on PostgreSQL.
            Db::Postgres(p) if all.len() > 1 => pg_put_mappings(p, all).await,
            Db::Postgres(p) => {
                let mut tx = p.begin().await.map_err(q("starting a transaction"))?;
                upsert_each!(&mut *tx, MAPPING_UPSERT, all);
                tx.commit().await.map_err(q(what))
            }
            Db::Sqlite(p) => {
                let mut tx = p.begin().await.map_err(q("starting a transaction"))?;
                sqlite_put_mappings(&mut tx, all).await?;
                tx.commit().await.map_err(q(what))
            }
            Db::MySql(_) => Err(DbError::Url(super::STATE_NOT_MYSQL.into())),
        }
    }

    /// The mapping of a CRM row.
    pub async fn mapping_by_crm(
        &self,
        mailbox: &str,
        crm_table: &str,
        crm_id: i64,
    ) -> Result<Option<ItemMapping>, DbError> {
        let sql = "SELECT mailbox, crm_table, crm_id, ews_item_id, change_key, crm_version, fields, stamped, unverified FROM ms_item_map \
                   WHERE mailbox = $1 AND crm_table = $2 AND crm_id = $3";
        on_db!(
            self,
            sql,
            "reading an item mapping",
            |x| x.bind(mailbox).bind(crm_table).bind(crm_id),
            fetch_optional,
            |row| { row.map(|r| decode_mapping(&r)).transpose() }
        )?
    }

    /// The mappings of many CRM rows of one mailbox and table, by CRM id (one query per
    /// 500 ids instead of one per row).
    pub async fn mappings_by_crm(
        &self,
        mailbox: &str,
        crm_table: &str,
        crm_ids: &[i64],
    ) -> Result<std::collections::HashMap<i64, ItemMapping>, DbError> {
        let mut out = std::collections::HashMap::new();
        for chunk in crm_ids.chunks(500) {
            let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 3)).collect();
            let sql = format!(
                "SELECT mailbox, crm_table, crm_id, ews_item_id, change_key, crm_version, fields, stamped, unverified FROM ms_item_map \
                 WHERE mailbox = $1 AND crm_table = $2 AND crm_id IN ({})",
                list.join(", ")
            );
            let found: Vec<ItemMapping> = on_db!(
                self,
                &sql,
                "reading item mappings",
                |x| chunk
                    .iter()
                    .fold(x.bind(mailbox).bind(crm_table), |x, id| x.bind(*id)),
                fetch_all,
                |rows| rows
                    .iter()
                    .map(decode_mapping)
                    .collect::<Result<Vec<_>, _>>()
            )??;
            out.extend(found.into_iter().map(|m| (m.crm_id, m)));
        }
        Ok(out)
    }

    /// Every mapping of a mailbox and table.
    pub async fn mappings_of(
        &self,
        mailbox: &str,
        crm_table: &str,
    ) -> Result<Vec<ItemMapping>, DbError> {
        let sql = "SELECT mailbox, crm_table, crm_id, ews_item_id, change_key, crm_version, fields, stamped, unverified FROM ms_item_map \
                   WHERE mailbox = $1 AND crm_table = $2 ORDER BY crm_id";
        on_db!(
            self,
            sql,
            "reading item mappings",
            |x| x.bind(mailbox).bind(crm_table),
            fetch_all,
            |rows| rows
                .iter()
                .map(decode_mapping)
                .collect::<Result<Vec<_>, _>>()
        )?
    }

    /// The mappings of many Exchange items of one mailbox, by item id (one query per 500).
    pub async fn mappings_by_ews(
        &self,
        mailbox: &str,
        ews_ids: &[String],
    ) -> Result<std::collections::HashMap<String, ItemMapping>, DbError> {
        let mut out = std::collections::HashMap::new();
        for chunk in ews_ids.chunks(500) {
            let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "SELECT mailbox, crm_table, crm_id, ews_item_id, change_key, crm_version, fields, stamped, unverified FROM ms_item_map \
                 WHERE mailbox = $1 AND ews_item_id IN ({})",
                list.join(", ")
            );
            let found: Vec<ItemMapping> = on_db!(
                self,
                &sql,
                "reading item mappings",
                |x| chunk.iter().fold(x.bind(mailbox), |x, id| x.bind(id)),
                fetch_all,
                |rows| rows
                    .iter()
                    .map(decode_mapping)
                    .collect::<Result<Vec<_>, _>>()
            )??;
            out.extend(found.into_iter().map(|m| (m.ews_item_id.clone(), m)));
        }
        Ok(out)
    }

    /// The mapping of an Exchange item.
    pub async fn mapping_by_ews(
        &self,
        mailbox: &str,
        ews_item_id: &str,
    ) -> Result<Option<ItemMapping>, DbError> {
        let sql = "SELECT mailbox, crm_table, crm_id, ews_item_id, change_key, crm_version, fields, stamped, unverified FROM ms_item_map \
                   WHERE mailbox = $1 AND ews_item_id = $2";
        on_db!(
            self,
            sql,
            "reading an item mapping",
            |x| x.bind(mailbox).bind(ews_item_id),
            fetch_optional,
            |row| { row.map(|r| decode_mapping(&r)).transpose() }
        )?
    }

    /// Forgets the mapping of a CRM row (after the pair was deleted on both sides).
    pub async fn delete_mapping(
        &self,
        mailbox: &str,
        crm_table: &str,
        crm_id: i64,
    ) -> Result<bool, DbError> {
        let sql = "DELETE FROM ms_item_map WHERE mailbox = $1 AND crm_table = $2 AND crm_id = $3";
        on_db!(
            self,
            sql,
            "deleting an item mapping",
            |x| x.bind(mailbox).bind(crm_table).bind(crm_id),
            execute,
            |r| r.rows_affected() > 0
        )
    }

    /// Records a conflict (without the values; see [`Db::log_conflict_values`]).
    pub async fn log_conflict(&self, c: &Conflict) -> Result<(), DbError> {
        self.log_conflict_values(c, &ConflictValues::default())
            .await
    }

    /// Records a conflict with both sides' values and the merged result.
    pub async fn log_conflict_values(
        &self,
        c: &Conflict,
        values: &ConflictValues,
    ) -> Result<(), DbError> {
        let sql = "INSERT INTO ms_conflicts (mailbox, crm_table, crm_id, ews_item_id, fields, winner, crm_values, ews_values, merged) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
        let object = |m: &serde_json::Map<String, serde_json::Value>| {
            serde_json::Value::Object(m.clone()).to_string()
        };
        let (crm_values, ews_values, merged) = (
            object(&values.crm),
            object(&values.exchange),
            object(&values.merged),
        );
        let fields = serde_json::Value::from(c.fields.clone()).to_string();
        let winner = match c.winner {
            Winner::Crm => "crm",
            Winner::Exchange => "exchange",
        };
        on_db!(
            self,
            sql,
            "logging a conflict",
            |x| x
                .bind(&c.mailbox)
                .bind(&c.crm_table)
                .bind(c.crm_id)
                .bind(&c.ews_item_id)
                .bind(&fields)
                .bind(winner)
                .bind(&crm_values)
                .bind(&ews_values)
                .bind(&merged),
            execute,
            |_r| ()
        )
    }

    /// The conflicts of a mailbox, oldest first.
    pub async fn conflicts(&self, mailbox: &str) -> Result<Vec<Conflict>, DbError> {
        let sql = "SELECT mailbox, crm_table, crm_id, ews_item_id, fields, winner FROM ms_conflicts WHERE mailbox = $1 ORDER BY id";
        on_db!(
            self,
            sql,
            "reading conflicts",
            |x| x.bind(mailbox),
            fetch_all,
            |rows| rows
                .iter()
                .map(|r| Conflict {
                    mailbox: r.get(0),
                    crm_table: r.get(1),
                    crm_id: r.get(2),
                    ews_item_id: r.get(3),
                    fields: serde_json::from_str(&r.get::<String, _>(4)).unwrap_or_default(),
                    winner: if r.get::<String, _>(5) == "crm" {
                        Winner::Crm
                    } else {
                        Winner::Exchange
                    },
                })
                .collect()
        )
    }

    /// Records a failure of an item (counting attempts) and when to retry it.
    pub async fn record_failure(
        &self,
        f: &Failure,
        next_retry_at: Option<DateTime<Utc>>,
    ) -> Result<(), DbError> {
        let sql = "INSERT INTO ms_failures (mailbox, crm_table, crm_id, ews_item_id, error, next_retry_at) VALUES ($1, $2, $3, $4, $5, $6) \
                   ON CONFLICT (mailbox, crm_table, crm_id, ews_item_id) DO UPDATE SET error = excluded.error, \
                   attempts = ms_failures.attempts + 1, next_retry_at = excluded.next_retry_at, last_at = now()";
        on_db!(
            self,
            sql,
            "recording a failure",
            |x| x
                .bind(&f.mailbox)
                .bind(&f.crm_table)
                .bind(f.crm_id)
                .bind(&f.ews_item_id)
                .bind(&f.error)
                .bind(next_retry_at),
            execute,
            |_r| ()
        )
    }

    /// Removes an item from the failure log (it synced).
    pub async fn clear_failure(
        &self,
        mailbox: &str,
        crm_table: &str,
        crm_id: i64,
        ews_item_id: &str,
    ) -> Result<(), DbError> {
        let sql = "DELETE FROM ms_failures WHERE mailbox = $1 AND crm_table = $2 AND crm_id = $3 AND ews_item_id = $4";
        on_db!(
            self,
            sql,
            "clearing a failure",
            |x| x
                .bind(mailbox)
                .bind(crm_table)
                .bind(crm_id)
                .bind(ews_item_id),
            execute,
            |_r| ()
        )
    }

    /// Removes CRM rows that synced from the failure log, in one statement.
    pub async fn clear_failures(
        &self,
        mailbox: &str,
        crm_table: &str,
        crm_ids: &[i64],
    ) -> Result<(), DbError> {
        if crm_ids.is_empty() {
            return Ok(());
        }
        match self {
            Db::Postgres(p) => sqlx::query("DELETE FROM ms_failures WHERE mailbox = $1 AND crm_table = $2 AND ews_item_id = '' AND crm_id = ANY($3)")
                .bind(mailbox)
                .bind(crm_table)
                .bind(crm_ids)
                .execute(p)
                .await
                .map(|_| ()),
            Db::Sqlite(p) => sqlx::query(
                "DELETE FROM ms_failures WHERE mailbox = ?1 AND crm_table = ?2 AND ews_item_id = '' AND crm_id IN (SELECT value FROM json_each(?3))",
            )
            .bind(mailbox)
            .bind(crm_table)
            .bind(serde_json::Value::from(crm_ids.to_vec()).to_string())
            .execute(p)
            .await
            .map(|_| ()),
            Db::MySql(_) => return Err(DbError::Url(super::STATE_NOT_MYSQL.into())),
        }
        .map_err(q("clearing failures"))
    }

    /// Failures of a mailbox; with `due`, only those whose retry time has come.
    pub async fn failures(
        &self,
        mailbox: &str,
        due: Option<DateTime<Utc>>,
    ) -> Result<Vec<Failure>, DbError> {
        // Far future when no due time is asked for: every failure.
        let until = due.unwrap_or(DateTime::<Utc>::MAX_UTC);
        let sql = "SELECT mailbox, crm_table, crm_id, ews_item_id, error, attempts FROM ms_failures \
                   WHERE mailbox = $1 AND ($2 OR (next_retry_at IS NOT NULL AND next_retry_at <= $3)) ORDER BY id";
        on_db!(
            self,
            sql,
            "reading failures",
            |x| x.bind(mailbox).bind(due.is_none()).bind(until),
            fetch_all,
            |rows| rows
                .iter()
                .map(|r| Failure {
                    mailbox: r.get(0),
                    crm_table: r.get(1),
                    crm_id: r.get(2),
                    ews_item_id: r.get(3),
                    error: r.get(4),
                    attempts: r.get::<i64, _>(5),
                })
                .collect()
        )
    }
}

/// Decodes a mapping row (the columns of the mapping SELECTs, in their order).
pub(crate) fn decode_mapping<R: Row>(r: &R) -> Result<ItemMapping, DbError>
where
    usize: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    bool: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let fields: String = r.try_get(6).map_err(q("decoding an item mapping"))?;
    Ok(ItemMapping {
        mailbox: r.try_get(0).map_err(q("decoding an item mapping"))?,
        crm_table: r.try_get(1).map_err(q("decoding an item mapping"))?,
        crm_id: r.try_get(2).map_err(q("decoding an item mapping"))?,
        ews_item_id: r.try_get(3).map_err(q("decoding an item mapping"))?,
        change_key: r.try_get(4).map_err(q("decoding an item mapping"))?,
        crm_version: r.try_get(5).map_err(q("decoding an item mapping"))?,
        fields: serde_json::from_str(&fields).map_err(|e| DbError::Query {
            what: "decoding mapped fields",
            source: sqlx::Error::Decode(Box::new(e)),
        })?,
        stamped: r.try_get(7).map_err(q("decoding an item mapping"))?,
        unverified: r.try_get(8).map_err(q("decoding an item mapping"))?,
    })
}

/// Stores or replaces one mapping ($N placeholders; SQLite takes it through
/// [`sqlite_placeholders`]).
pub(crate) const MAPPING_UPSERT: &str = "INSERT INTO ms_item_map (mailbox, crm_table, crm_id, ews_item_id, change_key, crm_version, fields, stamped, unverified) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (mailbox, crm_table, crm_id) DO UPDATE SET \
     ews_item_id = excluded.ews_item_id, change_key = excluded.change_key, crm_version = excluded.crm_version, \
     fields = excluded.fields, stamped = excluded.stamped, unverified = excluded.unverified, updated_at = now()";

/// The mappings on SQLite, a statement each, in the caller's transaction.
pub(crate) async fn sqlite_put_mappings(
    tx: &mut sqlx::SqliteConnection,
    all: &[ItemMapping],
) -> Result<(), DbError> {
    let sql = sqlite_placeholders(MAPPING_UPSERT);
    upsert_each!(tx, &sql, all);
    Ok(())
}

/// Stores many mappings in one statement on PostgreSQL (`unnest` of one array per column),
/// with the pool or inside a caller's transaction (the bulk save of CRM rows).
pub(crate) async fn pg_put_mappings<'e>(
    conn: impl sqlx::PgExecutor<'e>,
    all: &[ItemMapping],
) -> Result<(), DbError> {
    let bulk = "INSERT INTO ms_item_map (mailbox, crm_table, crm_id, ews_item_id, change_key, crm_version, fields, stamped, unverified) \
        SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::bool[], $9::bool[]) \
        ON CONFLICT (mailbox, crm_table, crm_id) DO UPDATE SET \
        ews_item_id = excluded.ews_item_id, change_key = excluded.change_key, crm_version = excluded.crm_version, \
        fields = excluded.fields, stamped = excluded.stamped, unverified = excluded.unverified, updated_at = now()";
    let col = |f: fn(&ItemMapping) -> String| all.iter().map(f).collect::<Vec<_>>();
    sqlx::query(bulk)
        .bind(col(|m| m.mailbox.clone()))
        .bind(col(|m| m.crm_table.clone()))
        .bind(all.iter().map(|m| m.crm_id).collect::<Vec<_>>())
        .bind(col(|m| m.ews_item_id.clone()))
        .bind(all.iter().map(|m| m.change_key.clone()).collect::<Vec<_>>())
        .bind(all.iter().map(|m| m.crm_version).collect::<Vec<_>>())
        .bind(col(|m| m.fields.to_string()))
        .bind(all.iter().map(|m| m.stamped).collect::<Vec<_>>())
        .bind(all.iter().map(|m| m.unverified).collect::<Vec<_>>())
        .execute(conn)
        .await
        .map(|_| ())
        .map_err(q("storing an item mapping"))
}
