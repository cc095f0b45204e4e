//! The CRM mail store: crm_mail_folders, crm_mails and crm_outbox, as the mail sync reads and
//! writes them. Message bodies (`mime`) are read one message at a time and never with the
//! metadata lists, so a folder of large mails costs memory for one mail, not for the folder.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::Row;

use super::mysql::{self, MyQuery};
use super::rows::TextColumn;
use super::{q, sqlite_placeholders, Db, DbError};
use crate::cluster::fence::CrmWrite;

/// A CRM mail folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailFolderRow {
    /// crm_mail_folders.id.
    pub id: i64,
    /// The operator.
    pub owner_id: i64,
    /// Parent folder; `None` at the top of the tree.
    pub parent_id: Option<i64>,
    /// Display name.
    pub name: String,
    /// Distinguished role (inbox, sentitems, drafts, deleteditems, junkemail, outbox, archive).
    pub role: Option<String>,
    /// Mails older than this are not synced.
    pub sync_from: Option<NaiveDate>,
    /// Not synced (its mails); the folder itself is mirrored.
    pub sync_excluded: bool,
    /// The Exchange folder id, written by mailsync.
    pub ews_id: Option<String>,
    /// Row version.
    pub version: i64,
}

/// A CRM mail without its MIME bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailRow {
    /// crm_mails.id.
    pub id: i64,
    /// The operator.
    pub owner_id: i64,
    /// Folder.
    pub folder_id: i64,
    /// Message-ID header.
    pub internet_message_id: Option<String>,
    /// When sent.
    pub sent_at: Option<DateTime<Utc>>,
    /// Read flag.
    pub is_read: bool,
    /// Size of `mime` in bytes.
    pub size: Option<i64>,
    /// The Exchange item id, written by mailsync.
    pub ews_id: Option<String>,
    /// Row version.
    pub version: i64,
}

/// A mail to store in the CRM (from Exchange).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMail {
    /// The operator.
    pub owner_id: i64,
    /// Folder.
    pub folder_id: i64,
    /// Message-ID header.
    pub internet_message_id: Option<String>,
    /// Subject.
    pub subject: Option<String>,
    /// From.
    pub sender: Option<String>,
    /// To and Cc, comma-separated.
    pub recipients: Option<String>,
    /// When sent.
    pub sent_at: Option<DateTime<Utc>>,
    /// Read flag.
    pub is_read: bool,
    /// The full RFC 5322 message.
    pub mime: Vec<u8>,
    /// The Exchange item id.
    pub ews_id: String,
}

/// A mail the CRM wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// crm_outbox.id.
    pub id: i64,
    /// The operator.
    pub owner_id: i64,
    /// The From address.
    pub sender: String,
    /// Envelope recipients, comma-separated.
    pub recipients: String,
    /// pending, sent or failed.
    pub state: String,
}

const FOLDER_COLS: &str =
    "id, owner_id, parent_id, name, role, sync_from, sync_excluded, ews_id, version";
const MAIL_COLS: &str =
    "id, owner_id, folder_id, internet_message_id, sent_at, is_read, size, ews_id, version";

trait DecodeMail {
    fn folder(&self) -> Result<MailFolderRow, sqlx::Error>;
    fn mail(&self) -> Result<MailRow, sqlx::Error>;
}

macro_rules! impl_decode_mail {
    ($row:ty) => {
        impl DecodeMail for $row {
            fn folder(&self) -> Result<MailFolderRow, sqlx::Error> {
                Ok(MailFolderRow {
                    id: self.try_get("id")?,
                    owner_id: self.try_get("owner_id")?,
                    parent_id: self.try_get("parent_id")?,
                    name: self.try_get("name")?,
                    role: self.try_get("role")?,
                    sync_from: self.try_get("sync_from")?,
                    sync_excluded: self.try_get("sync_excluded")?,
                    ews_id: TextColumn::text(self, "ews_id")?,
                    version: self.try_get("version")?,
                })
            }
            fn mail(&self) -> Result<MailRow, sqlx::Error> {
                Ok(MailRow {
                    id: self.try_get("id")?,
                    owner_id: self.try_get("owner_id")?,
                    folder_id: self.try_get("folder_id")?,
                    internet_message_id: self.try_get("internet_message_id")?,
                    sent_at: self.try_get("sent_at")?,
                    is_read: self.try_get("is_read")?,
                    size: self.try_get("size")?,
                    ews_id: TextColumn::text(self, "ews_id")?,
                    version: self.try_get("version")?,
                })
            }
        }
    };
}

impl_decode_mail!(sqlx::postgres::PgRow);
impl_decode_mail!(sqlx::sqlite::SqliteRow);
impl_decode_mail!(sqlx::mysql::MySqlRow);

impl Db {
    /// Every mail folder of an operator, parents before children.
    pub async fn mail_folders(&self, owner_id: i64) -> Result<Vec<MailFolderRow>, DbError> {
        let sql =
            format!("SELECT {FOLDER_COLS} FROM crm_mail_folders WHERE owner_id = $1 ORDER BY id");
        let all = on_db!(
            self,
            &sql,
            "reading mail folders",
            |x| x.bind(owner_id),
            fetch_all,
            |rows| rows
                .iter()
                .map(DecodeMail::folder)
                .collect::<Result<Vec<_>, _>>()
        )?
        .map_err(q("reading mail folders"))?;
        Ok(parents_first(all))
    }

    /// One mail folder.
    pub async fn mail_folder(&self, id: i64) -> Result<Option<MailFolderRow>, DbError> {
        let sql = format!("SELECT {FOLDER_COLS} FROM crm_mail_folders WHERE id = $1");
        on_db!(
            self,
            &sql,
            "reading a mail folder",
            |x| x.bind(id),
            fetch_optional,
            |row| row.map(|r| r.folder()).transpose()
        )?
        .map_err(q("reading a mail folder"))
    }

    /// Creates a mail folder (from Exchange); returns its id and version.
    pub async fn insert_mail_folder(
        &self,
        owner_id: i64,
        parent_id: Option<i64>,
        name: &str,
        role: Option<&str>,
        ews_id: &str,
    ) -> Result<(i64, i64), DbError> {
        let sql = "INSERT INTO crm_mail_folders (owner_id, parent_id, name, role, ews_id) \
                   VALUES ($1, $2, $3, $4, $5) RETURNING id, version";
        on_db_write!(
            self,
            sql,
            "creating a mail folder",
            |x| x
                .bind(owner_id)
                .bind(parent_id)
                .bind(name)
                .bind(role)
                .bind(ews_id),
            fetch_one,
            |r| r
                .try_get::<i64, _>(0)
                .and_then(|id| Ok((id, r.try_get::<i64, _>(1)?))),
            mysql
                | conn
                | async {
                    let write = MyQuery::new(sql.trim_end_matches(" RETURNING id, version"))
                        .bind(owner_id)
                        .bind(parent_id)
                        .bind(name)
                        .bind(role)
                        .bind(ews_id);
                    // An insert always answers a row.
                    mysql::write_one(conn, write, "crm_mail_folders", None)
                        .await
                        .map(|r| r.ok_or(sqlx::Error::RowNotFound))
                }
        )?
        .map_err(q("creating a mail folder"))
    }

    /// Writes a folder's name, parent and Exchange id (from Exchange); returns the new
    /// version, or `None` when the row is gone.
    pub async fn update_mail_folder(
        &self,
        id: i64,
        name: &str,
        parent_id: Option<i64>,
        ews_id: &str,
    ) -> Result<Option<i64>, DbError> {
        // The version is bumped here, not left to the trigger: SQLite's bump is a nested update
        // after the statement, so RETURNING would answer the version before it.
        let sql = "UPDATE crm_mail_folders SET name = $2, parent_id = $3, ews_id = $4, version = version + 1 \
                   WHERE id = $1 RETURNING version";
        on_db_write!(
            self,
            sql,
            "updating a mail folder",
            |x| x.bind(id).bind(name).bind(parent_id).bind(ews_id),
            fetch_optional,
            |r| r.map(|r| r.try_get::<i64, _>(0)).transpose(),
            mysql
                | conn
                | async {
                    let write = MyQuery::new(sql.trim_end_matches(" RETURNING version"))
                        .bind(id)
                        .bind(name)
                        .bind(parent_id)
                        .bind(ews_id);
                    mysql::write_one(conn, write, "crm_mail_folders", Some(id))
                        .await
                        .map(|r| Ok(r.map(|(_, v)| v)))
                }
        )?
        .map_err(q("updating a mail folder"))
    }

    /// Deletes a mail folder; its subfolders and mails go with it (ON DELETE CASCADE).
    pub async fn delete_mail_folder(&self, id: i64) -> Result<bool, DbError> {
        const SQL: &str = "DELETE FROM crm_mail_folders WHERE id = $1";
        on_db_write!(
            self,
            SQL,
            "deleting a mail folder",
            |x| x.bind(id),
            execute,
            |r| r.rows_affected() > 0,
            mysql
                | conn
                | async {
                    MyQuery::new(SQL)
                        .bind(id)
                        .execute_on(conn)
                        .await
                        .map(|r| r.rows_affected() > 0)
                }
        )
    }

    /// Mails by id (metadata only); rows that are gone are left out.
    pub async fn mails(&self, ids: &[i64]) -> Result<Vec<MailRow>, DbError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let list: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT {MAIL_COLS} FROM crm_mails WHERE id IN ({})",
                list.join(", ")
            );
            out.extend(
                on_db!(
                    self,
                    &sql,
                    "reading mails",
                    |x| chunk.iter().fold(x, |x, id| x.bind(*id)),
                    fetch_all,
                    |rows| rows
                        .iter()
                        .map(DecodeMail::mail)
                        .collect::<Result<Vec<_>, _>>()
                )?
                .map_err(q("reading mails"))?,
            );
        }
        Ok(out)
    }

    /// The ids of the mails in a folder, oldest first.
    pub async fn mail_ids_in_folder(&self, folder_id: i64) -> Result<Vec<i64>, DbError> {
        on_db!(
            self,
            "SELECT id FROM crm_mails WHERE folder_id = $1 ORDER BY id",
            "reading a folder's mails",
            |x| x.bind(folder_id),
            fetch_all,
            |rows| rows
                .iter()
                .map(|r| r.try_get::<i64, _>(0))
                .collect::<Result<Vec<_>, _>>()
        )?
        .map_err(q("reading a folder's mails"))
    }

    /// The mails of an operator whose `column` (`ews_id` or `internet_message_id`) is one of
    /// `values`, one query per 500 values.
    async fn mails_where_in(
        &self,
        owner_id: i64,
        column: &'static str,
        values: &[String],
    ) -> Result<Vec<MailRow>, DbError> {
        let mut out = Vec::new();
        for chunk in values.chunks(500) {
            let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "SELECT {MAIL_COLS} FROM crm_mails WHERE owner_id = $1 AND {column} IN ({}) ORDER BY id",
                list.join(", ")
            );
            out.extend(
                on_db!(
                    self,
                    &sql,
                    "finding mails",
                    |x| chunk.iter().fold(x.bind(owner_id), |x, v| x.bind(v)),
                    fetch_all,
                    |rows| rows
                        .iter()
                        .map(DecodeMail::mail)
                        .collect::<Result<Vec<_>, _>>()
                )?
                .map_err(q("finding mails"))?,
            );
        }
        Ok(out)
    }

    /// The mails of an operator that carry these Exchange ids, by Exchange id.
    pub async fn mails_by_ews_ids(
        &self,
        owner_id: i64,
        ews_ids: &[String],
    ) -> Result<std::collections::HashMap<String, MailRow>, DbError> {
        Ok(self
            .mails_where_in(owner_id, "ews_id", ews_ids)
            .await?
            .into_iter()
            .filter_map(|r| Some((r.ews_id.clone()?, r)))
            .collect())
    }

    /// The mails of an operator with these Message-IDs, by Message-ID (oldest first).
    pub async fn mails_by_message_ids(
        &self,
        owner_id: i64,
        message_ids: &[String],
    ) -> Result<std::collections::HashMap<String, Vec<MailRow>>, DbError> {
        let mut out: std::collections::HashMap<String, Vec<MailRow>> = Default::default();
        for r in self
            .mails_where_in(owner_id, "internet_message_id", message_ids)
            .await?
        {
            if let Some(mid) = r.internet_message_id.clone() {
                out.entry(mid).or_default().push(r);
            }
        }
        Ok(out)
    }

    /// The MIME bytes of one mail (`None` when the row is gone or has none).
    pub async fn mail_mime(&self, id: i64) -> Result<Option<Vec<u8>>, DbError> {
        on_db!(
            self,
            "SELECT mime FROM crm_mails WHERE id = $1",
            "reading a mail's MIME",
            |x| x.bind(id),
            fetch_optional,
            |row| row.and_then(|r| r.try_get::<Option<Vec<u8>>, _>(0).ok().flatten())
        )
    }

    /// Stores mails from Exchange in one transaction; returns (id, version) per mail.
    pub async fn insert_mails(&self, mails: &[NewMail]) -> Result<Vec<(i64, i64)>, DbError> {
        let sql = "INSERT INTO crm_mails (owner_id, folder_id, internet_message_id, subject, sender, recipients, \
                   sent_at, is_read, mime, size, ews_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                   RETURNING id, version";
        let what = "storing mails from Exchange";
        macro_rules! in_tx {
            ($pool:expr, $sql:expr) => {{
                let mut tx = $pool.begin().await.map_err(q("starting a transaction"))?;
                let mark = CrmWrite::begin_write(&mut *tx).await?;
                let mut out = Vec::with_capacity(mails.len());
                for m in mails {
                    let r = sqlx::query($sql)
                        .bind(m.owner_id)
                        .bind(m.folder_id)
                        .bind(&m.internet_message_id)
                        .bind(&m.subject)
                        .bind(&m.sender)
                        .bind(&m.recipients)
                        .bind(m.sent_at)
                        .bind(m.is_read)
                        .bind(&m.mime)
                        .bind(m.mime.len() as i64)
                        .bind(&m.ews_id)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(q(what))?;
                    out.push((
                        r.try_get::<i64, _>(0).map_err(q(what))?,
                        r.try_get::<i64, _>(1).map_err(q(what))?,
                    ));
                }
                CrmWrite::end_write(&mut *tx, mark).await?;
                tx.commit().await.map_err(q(what))?;
                Ok(out)
            }};
        }
        match self {
            Db::Postgres(p) => in_tx!(p, sql),
            Db::Sqlite(p) => in_tx!(p, &sqlite_placeholders(sql)),
            // No RETURNING: each insert's id, then the versions, in the same transaction.
            Db::MySql(p) => {
                let (sql, _) = mysql::placeholders(sql.trim_end_matches(" RETURNING id, version"));
                let mut tx = p.begin().await.map_err(q("starting a transaction"))?;
                let mark = CrmWrite::begin_write(&mut *tx).await?;
                let mut ids = Vec::with_capacity(mails.len());
                for m in mails {
                    let done = sqlx::query(&sql)
                        .bind(m.owner_id)
                        .bind(m.folder_id)
                        .bind(&m.internet_message_id)
                        .bind(&m.subject)
                        .bind(&m.sender)
                        .bind(&m.recipients)
                        .bind(m.sent_at)
                        .bind(m.is_read)
                        .bind(&m.mime)
                        .bind(m.mime.len() as i64)
                        .bind(&m.ews_id)
                        .execute(&mut *tx)
                        .await
                        .map_err(q(what))?;
                    // An AUTO_INCREMENT BIGINT: always within i64.
                    ids.push(done.last_insert_id() as i64);
                }
                let mut out = Vec::with_capacity(ids.len());
                for chunk in ids.chunks(500) {
                    let list = vec!["?"; chunk.len()].join(", ");
                    let read = format!("SELECT id, version FROM crm_mails WHERE id IN ({list})");
                    let versions: std::collections::HashMap<i64, i64> = chunk
                        .iter()
                        .fold(sqlx::query_as::<_, (i64, i64)>(&read), |x, id| x.bind(*id))
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(q(what))?
                        .into_iter()
                        .collect();
                    for id in chunk {
                        out.push((*id, versions.get(id).copied().unwrap_or(1)));
                    }
                }
                CrmWrite::end_write(&mut *tx, mark).await?;
                tx.commit().await.map_err(q(what))?;
                Ok(out)
            }
        }
    }

    /// Writes a mail's folder, read flag and Exchange id (from Exchange), only over the
    /// version it was read at; returns the new version, or `None` when the row is gone or
    /// changed meanwhile.
    pub async fn update_mail(
        &self,
        id: i64,
        read_version: i64,
        folder_id: i64,
        is_read: bool,
        ews_id: &str,
    ) -> Result<Option<i64>, DbError> {
        // The version is bumped here (see update_mail_folder).
        let sql = "UPDATE crm_mails SET folder_id = $3, is_read = $4, ews_id = $5, version = version + 1 \
                   WHERE id = $1 AND version = $2 RETURNING version";
        on_db_write!(
            self,
            sql,
            "updating a mail",
            |x| x
                .bind(id)
                .bind(read_version)
                .bind(folder_id)
                .bind(is_read)
                .bind(ews_id),
            fetch_optional,
            |r| r.map(|r| r.try_get::<i64, _>(0)).transpose(),
            mysql
                | conn
                | async {
                    let write = MyQuery::new(sql.trim_end_matches(" RETURNING version"))
                        .bind(id)
                        .bind(read_version)
                        .bind(folder_id)
                        .bind(is_read)
                        .bind(ews_id);
                    mysql::write_one(conn, write, "crm_mails", Some(id))
                        .await
                        .map(|r| Ok(r.map(|(_, v)| v)))
                }
        )?
        .map_err(q("updating a mail"))
    }

    /// Mails of an operator not yet sent, oldest first.
    pub async fn outbox_pending(&self, owner_id: i64) -> Result<Vec<OutboxRow>, DbError> {
        on_db!(
            self,
            "SELECT id, owner_id, sender, recipients, state FROM crm_outbox \
             WHERE owner_id = $1 AND state = 'pending' ORDER BY id",
            "reading the outbox",
            |x| x.bind(owner_id),
            fetch_all,
            |rows| rows
                .iter()
                .map(|r| {
                    Ok(OutboxRow {
                        id: r.try_get("id")?,
                        owner_id: r.try_get("owner_id")?,
                        sender: r.try_get("sender")?,
                        recipients: r.try_get("recipients")?,
                        state: r.try_get("state")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
        )?
        .map_err(q("reading the outbox"))
    }

    /// The MIME bytes of an outbox mail.
    pub async fn outbox_mime(&self, id: i64) -> Result<Option<Vec<u8>>, DbError> {
        on_db!(
            self,
            "SELECT mime FROM crm_outbox WHERE id = $1",
            "reading an outbox mail",
            |x| x.bind(id),
            fetch_optional,
            |row| row.and_then(|r| r.try_get::<Vec<u8>, _>(0).ok())
        )
    }

    /// Records the outcome of sending an outbox mail (`Err` = failed, with the reason).
    pub async fn finish_outbox(&self, id: i64, outcome: Result<(), String>) -> Result<(), DbError> {
        let (state, error) = match outcome {
            Ok(()) => ("sent", None),
            Err(e) => ("failed", Some(e)),
        };
        const SQL: &str = "UPDATE crm_outbox SET state = $2, error = $3, \
             sent_at = CASE WHEN $2 = 'sent' THEN now() ELSE sent_at END \
             WHERE id = $1 AND state = 'pending'";
        on_db_write!(
            self,
            SQL,
            "recording a sent mail",
            |x| x.bind(id).bind(state).bind(error.clone()),
            execute,
            |_r| (),
            mysql
                | conn
                | async {
                    MyQuery::new(SQL)
                        .bind(id)
                        .bind(state)
                        .bind(error.clone())
                        .execute_on(conn)
                        .await
                        .map(drop)
                }
        )
    }
}

/// Orders folders so that every parent comes before its children (rows whose parent is not
/// among them come first, as roots).
fn parents_first(all: Vec<MailFolderRow>) -> Vec<MailFolderRow> {
    let ids: std::collections::HashSet<i64> = all.iter().map(|f| f.id).collect();
    let mut out = Vec::with_capacity(all.len());
    let mut placed = std::collections::HashSet::new();
    let mut rest = all;
    while !rest.is_empty() {
        let before = rest.len();
        let (ready, wait): (Vec<_>, Vec<_>) = rest.into_iter().partition(|f| {
            f.parent_id
                .is_none_or(|p| !ids.contains(&p) || placed.contains(&p))
        });
        for f in &ready {
            placed.insert(f.id);
        }
        out.extend(ready);
        rest = wait;
        if rest.len() == before {
            // A cycle (not possible through mailsync): keep the rows rather than lose them.
            out.append(&mut rest);
        }
    }
    out
}
