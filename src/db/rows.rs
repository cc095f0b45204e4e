//! The synced CRM rows, typed, and the screening of rows Exchange cannot hold: those go to
//! the failure log with a reason naming the column and the value, and the others sync on.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::Row;

use super::state::Failure;
use super::{q, Db, DbError};

/// The longest subject, location or name Exchange stores.
pub const MAX_SHORT_TEXT: usize = 255;
/// The longest body or notes mailsync writes to Exchange (characters).
pub const MAX_BODY: usize = 1 << 20;
/// The most categories on one item.
pub const MAX_CATEGORIES: usize = 50;

/// A contact row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactRow {
    /// Row id.
    pub id: i64,
    /// Tenant.
    pub tenant_id: i64,
    /// Operator, or `None` for a contact shared by the tenant.
    pub owner_id: Option<i64>,
    /// Names and company.
    pub given_name: Option<String>,
    /// Last name.
    pub surname: Option<String>,
    /// Company.
    pub company: Option<String>,
    /// Job title.
    pub job_title: Option<String>,
    /// E-mail addresses 1 to 3.
    pub email: [Option<String>; 3],
    /// Business, mobile and home phone.
    pub phones: [Option<String>; 3],
    /// Street, postal code, city, country.
    pub address: [Option<String>; 4],
    /// Notes.
    pub notes: Option<String>,
    /// Categories.
    pub categories: Vec<String>,
    /// Exchange id written by mailsync.
    pub ews_id: Option<String>,
    /// Row version.
    pub version: i64,
}

/// An appointment row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppointmentRow {
    /// Row id.
    pub id: i64,
    /// Tenant.
    pub tenant_id: i64,
    /// Operator.
    pub owner_id: i64,
    /// Subject.
    pub subject: Option<String>,
    /// Location.
    pub location: Option<String>,
    /// Body.
    pub body: Option<String>,
    /// Start, UTC.
    pub starts_at: DateTime<Utc>,
    /// End, UTC.
    pub ends_at: DateTime<Utc>,
    /// All day.
    pub all_day: bool,
    /// IANA time zone.
    pub time_zone: String,
    /// RRULE.
    pub recurrence: Option<String>,
    /// Reminder.
    pub reminder_minutes: Option<i64>,
    /// Free/busy.
    pub show_as: String,
    /// Categories.
    pub categories: Vec<String>,
    /// iCalendar UID.
    pub uid: Option<String>,
    /// Exchange id.
    pub ews_id: Option<String>,
    /// Row version.
    pub version: i64,
}

/// A task row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    /// Row id.
    pub id: i64,
    /// Tenant.
    pub tenant_id: i64,
    /// Operator.
    pub owner_id: i64,
    /// Subject.
    pub subject: Option<String>,
    /// Body.
    pub body: Option<String>,
    /// Start.
    pub start_date: Option<NaiveDate>,
    /// Due.
    pub due_date: Option<NaiveDate>,
    /// Status.
    pub status: String,
    /// 0 to 100.
    pub percent_complete: i64,
    /// Importance.
    pub importance: String,
    /// Completion.
    pub completed_at: Option<DateTime<Utc>>,
    /// Categories.
    pub categories: Vec<String>,
    /// Exchange id.
    pub ews_id: Option<String>,
    /// Row version.
    pub version: i64,
}

/// A synced row of any area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrmRow {
    /// crm_contacts.
    Contact(ContactRow),
    /// crm_appointments.
    Appointment(AppointmentRow),
    /// crm_tasks.
    Task(TaskRow),
}

impl CrmRow {
    /// Its table.
    pub fn table(&self) -> &'static str {
        match self {
            CrmRow::Contact(_) => "crm_contacts",
            CrmRow::Appointment(_) => "crm_appointments",
            CrmRow::Task(_) => "crm_tasks",
        }
    }

    /// Its id.
    pub fn id(&self) -> i64 {
        match self {
            CrmRow::Contact(r) => r.id,
            CrmRow::Appointment(r) => r.id,
            CrmRow::Task(r) => r.id,
        }
    }
}

/// Categories are `text[]` on PostgreSQL and a JSON array on SQLite and MariaDB/MySQL.
trait Categories {
    fn categories(&self) -> Result<Vec<String>, sqlx::Error>;
}

impl Categories for sqlx::postgres::PgRow {
    fn categories(&self) -> Result<Vec<String>, sqlx::Error> {
        self.try_get("categories")
    }
}

fn json_categories(text: &str) -> Result<Vec<String>, sqlx::Error> {
    serde_json::from_str(text).map_err(|e| {
        sqlx::Error::Decode(
            format!("categories {text:?} is not a JSON array of strings: {e}").into(),
        )
    })
}

impl Categories for sqlx::sqlite::SqliteRow {
    fn categories(&self) -> Result<Vec<String>, sqlx::Error> {
        json_categories(&self.try_get::<String, _>("categories")?)
    }
}

impl Categories for sqlx::mysql::MySqlRow {
    fn categories(&self) -> Result<Vec<String>, sqlx::Error> {
        json_categories(&self.try_get::<String, _>("categories")?)
    }
}

/// Reading a text column that may carry a binary collation. MySQL marks such columns
/// BINARY (`ews_id` is utf8mb4_bin, so Exchange ids compare case-sensitively), and sqlx will
/// not decode those as text; their bytes are UTF-8 all the same.
pub(crate) trait TextColumn {
    /// The column's text, or `None` for NULL.
    fn text(&self, column: &str) -> Result<Option<String>, sqlx::Error>;
}

impl TextColumn for sqlx::postgres::PgRow {
    fn text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
        self.try_get(column)
    }
}

impl TextColumn for sqlx::sqlite::SqliteRow {
    fn text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
        self.try_get(column)
    }
}

impl TextColumn for sqlx::mysql::MySqlRow {
    fn text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
        self.try_get::<Option<Vec<u8>>, _>(column)?
            .map(|bytes| {
                String::from_utf8(bytes).map_err(|e| sqlx::Error::ColumnDecode {
                    index: column.to_string(),
                    source: Box::new(e),
                })
            })
            .transpose()
    }
}

/// A row that could not be read, with the reason (a bad timestamp in SQLite, say).
pub type Unreadable = String;

/// Decoding a row into our types, for both backends' row types (one body, see `impl_decode`).
trait DecodeCrmRow {
    fn contact(&self) -> Result<CrmRow, sqlx::Error>;
    fn appointment(&self) -> Result<CrmRow, sqlx::Error>;
    fn task(&self) -> Result<CrmRow, sqlx::Error>;
}

macro_rules! impl_decode {
    ($row:ty) => {
        impl DecodeCrmRow for $row {
            fn contact(&self) -> Result<CrmRow, sqlx::Error> {
                let r = self;
                Ok(CrmRow::Contact(ContactRow {
                    id: r.try_get("id")?,
                    tenant_id: r.try_get("tenant_id")?,
                    owner_id: r.try_get("owner_id")?,
                    given_name: r.try_get("given_name")?,
                    surname: r.try_get("surname")?,
                    company: r.try_get("company")?,
                    job_title: r.try_get("job_title")?,
                    email: [
                        r.try_get("email1")?,
                        r.try_get("email2")?,
                        r.try_get("email3")?,
                    ],
                    phones: [
                        r.try_get("business_phone")?,
                        r.try_get("mobile_phone")?,
                        r.try_get("home_phone")?,
                    ],
                    address: [
                        r.try_get("street")?,
                        r.try_get("postal_code")?,
                        r.try_get("city")?,
                        r.try_get("country")?,
                    ],
                    notes: r.try_get("notes")?,
                    categories: r.categories()?,
                    ews_id: TextColumn::text(r, "ews_id")?,
                    version: r.try_get("version")?,
                }))
            }

            fn appointment(&self) -> Result<CrmRow, sqlx::Error> {
                let r = self;
                Ok(CrmRow::Appointment(AppointmentRow {
                    id: r.try_get("id")?,
                    tenant_id: r.try_get("tenant_id")?,
                    owner_id: r.try_get("owner_id")?,
                    subject: r.try_get("subject")?,
                    location: r.try_get("location")?,
                    body: r.try_get("body")?,
                    starts_at: r.try_get("starts_at")?,
                    ends_at: r.try_get("ends_at")?,
                    all_day: r.try_get("all_day")?,
                    time_zone: r.try_get("time_zone")?,
                    recurrence: r.try_get("recurrence")?,
                    reminder_minutes: r.try_get("reminder_minutes")?,
                    show_as: r.try_get("show_as")?,
                    categories: r.categories()?,
                    uid: r.try_get("uid")?,
                    ews_id: TextColumn::text(r, "ews_id")?,
                    version: r.try_get("version")?,
                }))
            }

            fn task(&self) -> Result<CrmRow, sqlx::Error> {
                let r = self;
                Ok(CrmRow::Task(TaskRow {
                    id: r.try_get("id")?,
                    tenant_id: r.try_get("tenant_id")?,
                    owner_id: r.try_get("owner_id")?,
                    subject: r.try_get("subject")?,
                    body: r.try_get("body")?,
                    start_date: r.try_get("start_date")?,
                    due_date: r.try_get("due_date")?,
                    status: r.try_get("status")?,
                    percent_complete: r.try_get("percent_complete")?,
                    importance: r.try_get("importance")?,
                    completed_at: r.try_get("completed_at")?,
                    categories: r.categories()?,
                    ews_id: TextColumn::text(r, "ews_id")?,
                    version: r.try_get("version")?,
                }))
            }
        }
    };
}

impl_decode!(sqlx::postgres::PgRow);
impl_decode!(sqlx::sqlite::SqliteRow);
impl_decode!(sqlx::mysql::MySqlRow);

/// The columns read for each synced table (integers widened to BIGINT for one decoder;
/// MySQL spells that type SIGNED in a cast).
fn select_list(table: &str, mysql: bool) -> Option<String> {
    let list = match table {
        "crm_contacts" => {
            "id, tenant_id, owner_id, given_name, surname, company, job_title, email1, email2, email3, business_phone, \
             mobile_phone, home_phone, street, postal_code, city, country, notes, categories, ews_id, version"
        }
        "crm_appointments" => {
            "id, tenant_id, owner_id, subject, location, body, starts_at, ends_at, all_day, time_zone, recurrence, \
             CAST(reminder_minutes AS BIGINT) AS reminder_minutes, show_as, categories, uid, ews_id, version"
        }
        "crm_tasks" => {
            "id, tenant_id, owner_id, subject, body, start_date, due_date, status, \
             CAST(percent_complete AS BIGINT) AS percent_complete, importance, completed_at, categories, ews_id, version"
        }
        _ => return None,
    };
    Some(if mysql {
        list.replace("AS BIGINT)", "AS SIGNED)")
    } else {
        list.to_string()
    })
}

fn decode_as<R: DecodeCrmRow + Row>(table: &str, r: &R) -> (i64, Result<CrmRow, Unreadable>)
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let id = r.try_get("id").unwrap_or_default();
    let row = match table {
        "crm_contacts" => r.contact(),
        "crm_appointments" => r.appointment(),
        _ => r.task(),
    };
    (id, row.map_err(|e| e.to_string()))
}

impl Db {
    /// Reads synced rows by id in one query, in the order of `ids`; rows that are gone are
    /// left out, rows whose values cannot be read come as `Err(reason)`.
    pub async fn crm_rows(
        &self,
        table: &str,
        ids: &[i64],
    ) -> Result<Vec<(i64, Result<CrmRow, Unreadable>)>, DbError> {
        let cols = select_list(table, matches!(self, Db::MySql(_)))
            .ok_or_else(|| DbError::Url(format!("{table} is not a synced item table")))?;
        let mut found = match self {
            Db::Postgres(p) => {
                sqlx::query(&format!("SELECT {cols} FROM {table} WHERE id = ANY($1)"))
                    .bind(ids)
                    .fetch_all(p)
                    .await
                    .map_err(q("reading CRM rows"))?
                    .iter()
                    .map(|r| decode_as(table, r))
                    .collect::<Vec<_>>()
            }
            Db::Sqlite(p) => sqlx::query(&format!(
                "SELECT {cols} FROM {table} WHERE id IN (SELECT value FROM json_each(?1))"
            ))
            .bind(serde_json::Value::from(ids.to_vec()).to_string())
            .fetch_all(p)
            .await
            .map_err(q("reading CRM rows"))?
            .iter()
            .map(|r| decode_as(table, r))
            .collect::<Vec<_>>(),
            Db::MySql(p) => {
                let mut out = Vec::with_capacity(ids.len());
                for chunk in ids.chunks(500) {
                    let list = vec!["?"; chunk.len()].join(", ");
                    let sql = format!("SELECT {cols} FROM {table} WHERE id IN ({list})");
                    let query = chunk.iter().fold(sqlx::query(&sql), |x, id| x.bind(*id));
                    out.extend(
                        query
                            .fetch_all(p)
                            .await
                            .map_err(q("reading CRM rows"))?
                            .iter()
                            .map(|r| decode_as(table, r)),
                    );
                }
                out
            }
        };
        let order: std::collections::HashMap<i64, usize> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, i))
            .rev()
            .collect();
        found.sort_by_key(|(id, _)| order.get(id).copied());
        Ok(found)
    }

    /// Reads one synced row; `Ok(None)` when it is gone, `Ok(Some(Err(reason)))` when its
    /// values cannot be read.
    pub async fn crm_row(
        &self,
        table: &str,
        id: i64,
    ) -> Result<Option<Result<CrmRow, Unreadable>>, DbError> {
        Ok(self
            .crm_rows(table, &[id])
            .await?
            .into_iter()
            .next()
            .map(|(_, r)| r))
    }

    /// Reads the rows `ids` of `table` for `mailbox` and returns those Exchange can hold, in
    /// one query. Every other row is written to the failure log of `state` (which may be this
    /// database) with its reasons, and skipped: one bad row never stops the others. Rows that
    /// are gone are skipped silently (their delete arrives as a change of its own).
    pub async fn load_syncable(
        &self,
        state: &Db,
        mailbox: &str,
        table: &str,
        ids: &[i64],
    ) -> Result<Vec<CrmRow>, DbError> {
        let mut ok = Vec::new();
        for (id, read) in self.crm_rows(table, ids).await? {
            let reasons = match read {
                Err(unreadable) => vec![format!("cannot be read: {unreadable}")],
                Ok(row) => {
                    let p = problems(&row);
                    if p.is_empty() {
                        ok.push(row);
                        continue;
                    }
                    p
                }
            };
            let failure = Failure {
                mailbox: mailbox.to_string(),
                crm_table: table.to_string(),
                crm_id: id,
                ews_item_id: String::new(),
                error: format!("{table} {id}: {}", reasons.join("; ")),
                attempts: 1,
            };
            tracing::warn!(mailbox, table, id, error = %failure.error, "row cannot be synced to Exchange");
            // No automatic retry: the row is retried when it changes (its change comes again).
            state.record_failure(&failure, None).await?;
        }
        let good: Vec<i64> = ok.iter().map(CrmRow::id).collect();
        state.clear_failures(mailbox, table, &good).await?;
        Ok(ok)
    }
}

fn too_long(out: &mut Vec<String>, column: &str, value: &Option<String>, max: usize) {
    if let Some(v) = value {
        let n = v.chars().count();
        if n > max {
            out.push(format!(
                "{column} has {n} characters, at most {max} fit in Exchange"
            ));
        }
    }
}

fn check_categories(out: &mut Vec<String>, cats: &[String]) {
    if cats.len() > MAX_CATEGORIES {
        out.push(format!(
            "categories has {} entries, at most {MAX_CATEGORIES} are synced",
            cats.len()
        ));
    }
    for c in cats {
        if c.trim().is_empty() {
            out.push("categories contains an empty category".to_string());
        } else if c.chars().count() > MAX_SHORT_TEXT {
            out.push(format!(
                "category {:?}… is longer than {MAX_SHORT_TEXT} characters",
                c.chars().take(20).collect::<String>()
            ));
        }
    }
}

/// Everything about a row that Exchange cannot hold, each naming the column and value.
pub fn problems(row: &CrmRow) -> Vec<String> {
    let mut out = Vec::new();
    match row {
        CrmRow::Contact(c) => {
            for (i, e) in c.email.iter().enumerate() {
                if let Some(e) = e.as_deref().filter(|e| !e.trim().is_empty()) {
                    if !crate::config::is_email(e.trim()) {
                        out.push(format!("email{} {e:?} is not an e-mail address", i + 1));
                    }
                }
            }
            for (col, v) in [
                ("given_name", &c.given_name),
                ("surname", &c.surname),
                ("company", &c.company),
                ("job_title", &c.job_title),
            ] {
                too_long(&mut out, col, v, MAX_SHORT_TEXT);
            }
            for (col, v) in [
                ("business_phone", &c.phones[0]),
                ("mobile_phone", &c.phones[1]),
                ("home_phone", &c.phones[2]),
            ] {
                too_long(&mut out, col, v, 64);
            }
            too_long(&mut out, "notes", &c.notes, MAX_BODY);
            if [&c.given_name, &c.surname, &c.company]
                .iter()
                .all(|v| v.as_deref().is_none_or(|s| s.trim().is_empty()))
                && c.email.iter().all(Option::is_none)
            {
                out.push("the contact has no name, company or e-mail address".to_string());
            }
            check_categories(&mut out, &c.categories);
        }
        CrmRow::Appointment(a) => {
            if a.ends_at < a.starts_at {
                out.push(format!(
                    "ends_at {} is before starts_at {}",
                    a.ends_at.format("%Y-%m-%dT%H:%M:%SZ"),
                    a.starts_at.format("%Y-%m-%dT%H:%M:%SZ")
                ));
            }
            if a.time_zone.parse::<chrono_tz::Tz>().is_err() {
                out.push(format!(
                    "time_zone {:?} is not an IANA time zone",
                    a.time_zone
                ));
            }
            if let Some(r) = &a.recurrence {
                if let Err(e) = r.parse::<crate::rrule::Rrule>() {
                    out.push(format!("recurrence {r:?} is not a supported RRULE: {e}"));
                }
            }
            if let Some(m) = a.reminder_minutes {
                if !(0..=2_628_000).contains(&m) {
                    out.push(format!(
                        "reminder_minutes {m} is out of range 0 to 2628000 (5 years)"
                    ));
                }
            }
            too_long(&mut out, "subject", &a.subject, MAX_SHORT_TEXT);
            too_long(&mut out, "location", &a.location, MAX_SHORT_TEXT);
            too_long(&mut out, "body", &a.body, MAX_BODY);
            check_categories(&mut out, &a.categories);
        }
        CrmRow::Task(t) => {
            if let (Some(s), Some(d)) = (t.start_date, t.due_date) {
                if d < s {
                    out.push(format!("due_date {d} is before start_date {s}"));
                }
            }
            too_long(&mut out, "subject", &t.subject, MAX_SHORT_TEXT);
            too_long(&mut out, "body", &t.body, MAX_BODY);
            check_categories(&mut out, &t.categories);
        }
    }
    out
}

/// A row's version.
pub fn version_of(row: &CrmRow) -> i64 {
    match row {
        CrmRow::Contact(r) => r.version,
        CrmRow::Appointment(r) => r.version,
        CrmRow::Task(r) => r.version,
    }
}

/// A row's tenant and owner.
pub fn tenant_owner(row: &CrmRow) -> (i64, Option<i64>) {
    match row {
        CrmRow::Contact(r) => (r.tenant_id, r.owner_id),
        CrmRow::Appointment(r) => (r.tenant_id, Some(r.owner_id)),
        CrmRow::Task(r) => (r.tenant_id, Some(r.owner_id)),
    }
}
