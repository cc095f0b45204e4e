//! mailsync's state store: cursors over the change log (and, as the sync issues land, folder
//! sync states, item mappings, conflicts and failures — the tables exist already).

use super::changes::Cursor;
use super::{q, Db, DbError};

impl Db {
    /// The cursor named `name` (start of the log when unknown).
    pub async fn cursor(&self, name: &str) -> Result<Cursor, DbError> {
        let row: Option<(i64, i64)> = match self {
            Db::Postgres(p) => {
                sqlx::query_as("SELECT txid, seq FROM ms_cursor WHERE name = $1")
                    .bind(name)
                    .fetch_optional(p)
                    .await
            }
            Db::Sqlite(p) => {
                sqlx::query_as("SELECT txid, seq FROM ms_cursor WHERE name = ?1")
                    .bind(name)
                    .fetch_optional(p)
                    .await
            }
        }
        .map_err(q("reading a cursor"))?;
        Ok(row.map_or(Cursor::default(), |(txid, seq)| Cursor { txid, seq }))
    }

    /// Moves the cursor to `to`, and only forward: a replayed or late batch cannot move it
    /// back. Call it after the changes up to `to` are applied (at-least-once delivery).
    pub async fn advance_cursor(&self, name: &str, to: Cursor) -> Result<(), DbError> {
        match self {
            Db::Postgres(p) => sqlx::query(
                "INSERT INTO ms_cursor (name, txid, seq) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE \
                 SET txid = EXCLUDED.txid, seq = EXCLUDED.seq, updated_at = now() \
                 WHERE (ms_cursor.txid, ms_cursor.seq) < (EXCLUDED.txid, EXCLUDED.seq)",
            )
            .bind(name)
            .bind(to.txid)
            .bind(to.seq)
            .execute(p)
            .await
            .map(|_| ()),
            Db::Sqlite(p) => sqlx::query(
                "INSERT INTO ms_cursor (name, txid, seq) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO UPDATE \
                 SET txid = excluded.txid, seq = excluded.seq, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
                 WHERE ms_cursor.seq < excluded.seq",
            )
            .bind(name)
            .bind(to.txid)
            .bind(to.seq)
            .execute(p)
            .await
            .map(|_| ()),
        }
        .map_err(q("advancing a cursor"))
    }
}
