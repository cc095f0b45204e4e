//! The steady workload: the ERP writes the business database, users write their mailboxes
//! through EWS (as themselves, so storms aimed at the service account spare them), in all
//! four areas. Every record carries a key of its own (a contact's surname, an appointment's or
//! task's subject, a mail's Message-ID), so what the workload knows can be checked on both
//! sides without any of mailsync's ids.
//!
//! Per area one field only the ERP writes, one only users write, and one both write:
//!
//! | area | key | ERP only | users only | both |
//! |---|---|---|---|---|
//! | contacts | surname | company | given_name | job_title |
//! | calendar | subject | body | categories | location |
//! | tasks | subject | due_date | categories | body |
//! | mail | Message-ID | — | — | is_read, the folder (inbox → Deleted Items) |
//!
//! So a lost or older single-writer value is visible at the end. Deletes follow two rules that
//! keep every outcome decided (the leading system is the CRM everywhere): a record one actor
//! is working on is not picked by the other, and a user deletes an item only once it shows the
//! ERP's latest edit (a mail only if the ERP never touched it) — else mailsync would rightly
//! write it back.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Duration as Days, NaiveDate, Timelike, Utc};
use ews::items::{Body, Item};
use ews::types::{DistinguishedFolder, PropertyPath};
use parking_lot::Mutex;
use sqlx::PgPool;

/// A data area as the workload sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Contact,
    Appointment,
    Task,
    Mail,
}

/// Every area, in the order reports list them.
pub const KINDS: [Kind; 4] = [Kind::Contact, Kind::Appointment, Kind::Task, Kind::Mail];

impl Kind {
    /// The area's name in reports and mailsync's configuration.
    pub fn area(self) -> &'static str {
        match self {
            Kind::Contact => "contacts",
            Kind::Appointment => "calendar",
            Kind::Task => "tasks",
            Kind::Mail => "mail",
        }
    }

    /// The CRM table.
    pub fn table(self) -> &'static str {
        match self {
            Kind::Contact => "crm_contacts",
            Kind::Appointment => "crm_appointments",
            Kind::Task => "crm_tasks",
            Kind::Mail => "crm_mails",
        }
    }

    /// The key column.
    pub fn key_col(self) -> &'static str {
        match self {
            Kind::Contact => "surname",
            Kind::Appointment | Kind::Task => "subject",
            Kind::Mail => "internet_message_id",
        }
    }

    /// SQL of (ERP-only, user-only, shared) as text; mail has none of them.
    pub fn value_cols(self) -> &'static str {
        match self {
            Kind::Contact => "company, given_name, job_title",
            Kind::Appointment => "body, array_to_string(categories, ','), location",
            Kind::Task => "due_date::text, array_to_string(categories, ','), body",
            Kind::Mail => "NULL::text, NULL::text, NULL::text",
        }
    }

    /// The Exchange folder (mail: the Inbox; Deleted Items is checked too).
    pub fn folder(self) -> DistinguishedFolder {
        match self {
            Kind::Contact => DistinguishedFolder::Contacts,
            Kind::Appointment => DistinguishedFolder::Calendar,
            Kind::Task => DistinguishedFolder::Tasks,
            Kind::Mail => DistinguishedFolder::Inbox,
        }
    }

    /// The EWS property holding the key (for FindItem restrictions).
    pub fn key_path(self) -> PropertyPath {
        PropertyPath::field(match self {
            Kind::Contact => "contacts:Surname",
            Kind::Appointment | Kind::Task => "item:Subject",
            Kind::Mail => "message:InternetMessageId",
        })
    }
}

/// A CRM row's (ERP-only, user-only, shared) values as text.
pub type Values = (Option<String>, Option<String>, Option<String>);

/// The values the check compares of one Exchange item: (key, ERP-only, user-only, shared).
pub fn item_values(item: &Item) -> Option<(String, [Option<String>; 3])> {
    let text = |b: &Option<Body>| b.as_ref().map(|b| b.content.trim().to_owned());
    Some(match item {
        Item::Contact(c) => (
            c.surname.clone()?,
            [
                c.company_name.clone(),
                c.given_name.clone(),
                c.job_title.clone(),
            ],
        ),
        Item::CalendarItem(c) => (
            c.subject.clone()?,
            [
                text(&c.body),
                Some(c.categories.join(",")),
                c.location.clone(),
            ],
        ),
        Item::Task(t) => (
            t.subject.clone()?,
            [
                t.due_date.map(|d| d.date_naive().to_string()),
                Some(t.categories.join(",")),
                text(&t.body),
            ],
        ),
        Item::Message(m) => (m.internet_message_id.clone()?, [None, None, None]),
        Item::Other { .. } => return None,
    })
}

/// Where a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    /// In its folder on both sides (once synced).
    Live,
    /// Deleted (hard, or moved out of a contacts, calendar or tasks folder): on neither side.
    Gone,
    /// A mail moved to Deleted Items: there on both sides.
    Trashed,
}

/// What the workload knows of one record.
#[derive(Clone, Debug)]
pub struct Rec {
    pub mailbox: usize,
    pub kind: Kind,
    /// Never deleted or moved (keeps every scope populated, so the breaker's "side emptied"
    /// rule never holds the workload's deletes).
    pub anchor: bool,
    pub life: Life,
    /// Last value of the ERP-only field.
    pub erp: Option<String>,
    /// Last value of the user-only field.
    pub user: Option<String>,
    /// The shared field's value at creation, and the last value each side wrote to it.
    pub shared: [Option<String>; 3],
    /// The ERP edited the record at least once (mail: users never delete those).
    pub erp_touched: bool,
    /// A write whose outcome could not be learned: the record's checks are skipped.
    pub uncertain: bool,
    /// An actor is working on it.
    busy: bool,
}

/// Everything the workload did and knows.
#[derive(Default)]
pub struct Knowledge {
    pub recs: BTreeMap<String, Rec>,
    /// Actions by "side area action".
    pub counts: BTreeMap<String, u64>,
    seq: u64,
}

impl Knowledge {
    pub fn next(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub fn count(&mut self, side: &str, kind: Kind, action: &str) {
        *self
            .counts
            .entry(format!("{side} {} {action}", kind.area()))
            .or_default() += 1;
    }

    /// A random record of a mailbox and area that is live (in the Inbox for mail), not busy,
    /// and, when `deletable`, no anchor; marked busy.
    pub fn pick(
        &mut self,
        rng: &mut Rng,
        mailbox: usize,
        kind: Kind,
        deletable: bool,
    ) -> Option<(String, Rec)> {
        let keys: Vec<&String> = self
            .recs
            .iter()
            .filter(|(_, r)| {
                r.mailbox == mailbox
                    && r.kind == kind
                    && r.life == Life::Live
                    && !r.busy
                    && !r.uncertain
                    && !(deletable && r.anchor)
            })
            .map(|(k, _)| k)
            .collect();
        if keys.is_empty() {
            return None;
        }
        let key = keys[rng.below(keys.len())].clone();
        let rec = self.recs.get_mut(&key)?;
        rec.busy = true;
        Some((key, rec.clone()))
    }

    pub fn release(&mut self, key: &str, f: impl FnOnce(&mut Rec)) {
        if let Some(r) = self.recs.get_mut(key) {
            f(r);
            r.busy = false;
        }
    }
}

/// xorshift64*: reproducible from the printed seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// What both actors share.
pub struct Ctx {
    /// The business database (application_name chaos-workload, spared by the terminations).
    pub crm: PgPool,
    /// The simulator's base URL (its /sim control API).
    pub sim_base: String,
    /// One EWS client per mailbox, logged in as its user.
    pub users: Vec<ews::Client>,
    pub http: reqwest::Client,
    pub knowledge: Mutex<Knowledge>,
    /// The CRM's Inbox and Deleted Items folder ids per mailbox, once mailsync mirrored them.
    mail_folders: Mutex<HashMap<usize, (i64, i64)>>,
}

/// The address of mailbox `i` (0-based).
pub fn smtp(i: usize) -> String {
    format!("user{}@example.com", i + 1)
}

/// A due date as the workload writes it: a day after 2030-01-01.
fn due(n: u64) -> String {
    (NaiveDate::from_ymd_opt(2030, 1, 1).unwrap() + Days::days((n % 3000) as i64)).to_string()
}

/// Tomorrow at the next full hour, UTC (whole seconds, as Exchange keeps them).
pub fn tomorrow() -> DateTime<Utc> {
    let now = Utc::now() + Days::days(1);
    now.with_nanosecond(0)
        .unwrap()
        .with_second(0)
        .unwrap()
        .with_minute(0)
        .unwrap()
}

/// A small mail with the given Message-ID.
pub fn mime(key: &str, to: &str, at: DateTime<Utc>) -> String {
    format!(
        "From: Kunde <kunde@example.org>\r\nTo: {to}\r\nSubject: Vorgang {key}\r\n\
         Date: {}\r\nMessage-ID: {key}\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\nNachricht {key}\r\n",
        at.to_rfc2822()
    )
}

impl Ctx {
    pub fn new(crm: PgPool, sim_base: String, ews_url: &str, mailboxes: usize) -> Ctx {
        let users = (0..mailboxes)
            .map(|i| {
                let mut cfg = ews::ClientConfig::new(
                    url::Url::parse(ews_url).expect("the simulator's EWS URL"),
                    ews::Auth::Basic {
                        username: smtp(i),
                        password: "password".into(),
                    },
                );
                cfg.allow_http = true;
                ews::Client::new(cfg).expect("a user's EWS client")
            })
            .collect();
        Ctx {
            crm,
            sim_base,
            users,
            http: reqwest::Client::new(),
            knowledge: Mutex::new(Knowledge::default()),
            mail_folders: Mutex::new(HashMap::new()),
        }
    }

    /// Records a record created by the seed or an actor.
    pub fn learn(&self, key: String, rec_of: impl FnOnce(u64) -> Rec) {
        let mut k = self.knowledge.lock();
        let n = k.next();
        k.recs.insert(key, rec_of(n));
    }

    /// A new record's key and sequence number.
    pub fn new_key(&self, mailbox: usize, kind: Kind) -> (String, u64) {
        let n = self.knowledge.lock().next();
        let key = match kind {
            Kind::Mail => format!("<chaos{n}.m{}@example.org>", mailbox + 1),
            _ => format!("k{n}m{}", mailbox + 1),
        };
        (key, n)
    }

    /// The CRM's (Inbox, Deleted Items) of a mailbox, once mailsync mirrored the tree.
    pub async fn mail_folders(&self, mailbox: usize) -> Option<(i64, i64)> {
        if let Some(f) = self.mail_folders.lock().get(&mailbox) {
            return Some(*f);
        }
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT role, id FROM crm_mail_folders WHERE owner_id = $1 AND role IN ('inbox', 'deleteditems')",
        )
        .bind(mailbox as i64 + 1)
        .fetch_all(&self.crm)
        .await
        .ok()?;
        let find = |role: &str| rows.iter().find(|(r, _)| r == role).map(|(_, id)| *id);
        let f = (find("inbox")?, find("deleteditems")?);
        self.mail_folders.lock().insert(mailbox, f);
        Some(f)
    }
}

/// A fresh record's knowledge: created with `values` (ERP-only, user-only, shared).
pub fn fresh(mailbox: usize, kind: Kind, anchor: bool, values: [Option<String>; 3]) -> Rec {
    let [erp, user, shared] = values;
    Rec {
        mailbox,
        kind,
        anchor,
        life: Life::Live,
        erp,
        user,
        shared: [shared, None, None],
        erp_touched: false,
        uncertain: false,
        busy: false,
    }
}

/// The values a record is created with, on either side.
pub fn initial_values(kind: Kind, n: u64) -> [Option<String>; 3] {
    match kind {
        Kind::Contact => [
            Some(format!("c{n}")),
            Some(format!("g{n}")),
            Some(format!("t{n}")),
        ],
        Kind::Appointment => [
            Some(format!("b{n}")),
            Some(String::new()),
            Some(format!("l{n}")),
        ],
        Kind::Task => [Some(due(n)), Some(String::new()), Some(format!("s{n}"))],
        Kind::Mail => [None, None, None],
    }
}

/// Inserts a record into the CRM (the seed and the ERP actor).
pub async fn crm_insert(
    ctx: &Ctx,
    mailbox: usize,
    kind: Kind,
    key: &str,
    n: u64,
) -> Result<bool, sqlx::Error> {
    let op = mailbox as i64 + 1;
    let [erp, user, shared] = initial_values(kind, n);
    let q = match kind {
        Kind::Contact => sqlx::query("INSERT INTO crm_contacts (tenant_id, owner_id, surname, company, given_name, job_title) VALUES (1, $1, $2, $3, $4, $5)")
            .bind(op).bind(key).bind(erp).bind(user).bind(shared),
        Kind::Appointment => sqlx::query("INSERT INTO crm_appointments (tenant_id, owner_id, subject, body, location, starts_at, ends_at) VALUES (1, $1, $2, $3, $5, $4, $4 + interval '1 hour')")
            .bind(op).bind(key).bind(erp).bind(tomorrow()).bind(shared),
        Kind::Task => sqlx::query("INSERT INTO crm_tasks (tenant_id, owner_id, subject, due_date, body) VALUES (1, $1, $2, $3::date, $4)")
            .bind(op).bind(key).bind(erp).bind(shared),
        Kind::Mail => {
            let Some((inbox, _)) = ctx.mail_folders(mailbox).await else {
                return Ok(false);
            };
            let at = Utc::now().with_nanosecond(0).unwrap();
            let m = mime(key, &smtp(mailbox), at).into_bytes();
            sqlx::query("INSERT INTO crm_mails (owner_id, folder_id, internet_message_id, subject, sender, recipients, sent_at, is_read, mime, size) VALUES ($1, $2, $3, $4, 'kunde@example.org', $5, $6, FALSE, $7, $8)")
                .bind(op).bind(inbox).bind(key).bind(format!("Vorgang {key}")).bind(smtp(mailbox)).bind(at).bind(m.clone()).bind(m.len() as i64)
        }
    };
    q.execute(&ctx.crm).await.map(|r| r.rows_affected() == 1)
}

/// One CRM row's (ERP-only, user-only, shared) values by key, retried until the database
/// answers (after a write whose answer was lost): `Some(None)` when there is no row, `None`
/// when the database did not answer for two minutes.
pub async fn read_back(
    ctx: &Ctx,
    kind: Kind,
    mailbox: usize,
    key: &str,
) -> Option<Option<[Option<String>; 3]>> {
    let sql = format!(
        "SELECT {} FROM {} WHERE owner_id = $1 AND {} = $2 LIMIT 1",
        kind.value_cols(),
        kind.table(),
        kind.key_col()
    );
    for _ in 0..240 {
        let r: Result<Option<Values>, _> = sqlx::query_as(&sql)
            .bind(mailbox as i64 + 1)
            .bind(key)
            .fetch_optional(&ctx.crm)
            .await;
        match r {
            Ok(row) => return Some(row.map(|(a, b, c)| [a, b, c])),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    None
}
