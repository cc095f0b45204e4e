//! The rig of the mail tests (tests/mail_sync.rs, tests/mail_recovery.rs, tests/mail_load.rs):
//! ews-sim as Exchange, the CRM mail store in PostgreSQL, MariaDB or SQLite (with MariaDB the
//! state store is a SQLite file beside it), mail steps run directly; messages to sync and the
//! helpers that read both sides.
#![allow(dead_code, unused_imports)]

use crate::common;
pub use crate::common::{count, exec, SmtpSink};

pub use std::collections::{BTreeMap, BTreeSet};
pub use std::sync::Arc;
pub use std::time::Duration;

pub use ews::items::{Item, Message};
pub use ews::ops::{
    CreateFolder, CreateItem, DeleteItem, DeleteType, FindItem, GetItem, ItemUpdate,
    MessageDisposition, MoveItem, UpdateFolder, UpdateItem, View,
};
pub use ews::types::{DistinguishedFolder, FolderRef, ItemId, PropertyPath, Shape};
pub use ews_sim::server::{self, Running, SimConfig};
pub use mailsync::config::{Area, AreaConfig, Leading, MailConfig, SmtpConfig, SmtpTls};
pub use mailsync::db::{Db, MigrationSet};
pub use mailsync::metrics::Telemetry;
pub use mailsync::sync::engine::{Direction, Engine, MailboxSetup};
pub use mailsync::sync::feed::{Feed, Routes};
pub use mailsync_actors::{
    Cause, Causes, MailboxSpec, StepContext, StepRequest, SyncPort, Throttle, ThrottleSettings,
};
pub use sha2::{Digest, Sha256};

pub static PG_SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub const USER: &str = "user1@example.com";

pub struct Rig {
    /// The business database.
    pub db: Db,
    /// The state store: `db` itself, or SQLite beside MariaDB.
    pub state: Db,
    pub sim: Running,
    pub engine: Engine,
    pub feed: Feed,
    pub client: ews::Client,
    pub throttle: Throttle,
    pub pg_name: Option<String>,
    pub my_name: Option<String>,
    pub record: Option<tempfile::TempDir>,
    pub _dir: Option<tempfile::TempDir>,
    pub _serial: Option<tokio::sync::MutexGuard<'static, ()>>,
}

pub struct Options {
    /// Record every request and check it against the official schema at the end.
    pub record: bool,
    pub mail: MailConfig,
    pub smtp: Option<SmtpConfig>,
    pub leading: Leading,
    pub german: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            record: false,
            mail: MailConfig::default(),
            smtp: None,
            leading: Leading::Crm,
            german: false,
        }
    }
}

pub fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A message with a binary attachment (every byte value), `n` making it unique.
pub fn mime(n: usize, subject: &str, date: &str) -> Vec<u8> {
    let attachment: Vec<u8> = (0..=255u8).cycle().take(700 + n % 50).collect();
    let b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&attachment)
    };
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "From: Kunde {n} <kunde{n}@example.org>\r\nTo: user1@example.com\r\nSubject: {subject}\r\n\
         Date: {date}\r\nMessage-ID: <m{n}.{}@example.org>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b{n}\"\r\n\r\n--b{n}\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
         Grüße aus dem Büro, Nachricht {n}.\r\n--b{n}\r\nContent-Type: application/octet-stream\r\n\
         Content-Disposition: attachment; filename=\"daten{n}.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\
         {}\r\n--b{n}--\r\n",
        sha(subject.as_bytes()).get(..8).unwrap_or_default(),
        lines.join("\r\n")
    )
    .into_bytes()
}

pub fn areas(leading: Leading) -> BTreeMap<Area, AreaConfig> {
    [(
        Area::Mail,
        AreaConfig {
            leading,
            categories: vec![],
        },
    )]
    .into_iter()
    .collect()
}

impl Rig {
    pub async fn postgres(options: Options) -> Option<Rig> {
        let serial = PG_SERIAL.lock().await;
        let (name, url) = common::postgres_db("mail").await?;
        let db = Db::connect(&url, 5).await.unwrap();
        Some(
            Rig::start(
                db.clone(),
                db,
                (Some(name), None),
                None,
                Some(serial),
                options,
            )
            .await,
        )
    }

    /// The CRM in MariaDB, the state store in SQLite beside it.
    pub async fn mariadb(options: Options) -> Option<Rig> {
        let (name, url) = common::mariadb_db("mail").await?;
        let db = Db::connect(&url, 5).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = common::sqlite_state(dir.path()).await;
        Some(Rig::start(db, state, (None, Some(name)), Some(dir), None, options).await)
    }

    pub async fn sqlite(options: Options) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("crm.db").display());
        let db = Db::connect(&url, 5).await.unwrap();
        Rig::start(db.clone(), db, (None, None), Some(dir), None, options).await
    }

    pub async fn start(
        db: Db,
        state: Db,
        (pg_name, my_name): (Option<String>, Option<String>),
        dir: Option<tempfile::TempDir>,
        serial: Option<tokio::sync::MutexGuard<'static, ()>>,
        options: Options,
    ) -> Rig {
        db.migrate(MigrationSet::Crm).await.unwrap();
        state.migrate(MigrationSet::State).await.unwrap();
        let same_db = db.kind() != mailsync::config::DbKind::MySql;
        common::seed(&db, &[(1, "1001", Some(USER))]).await;
        let record = options.record.then(|| tempfile::tempdir().unwrap());
        let sim = server::start(SimConfig {
            mailboxes: 2,
            record: record.as_ref().map(|d| d.path().to_path_buf()),
            ..SimConfig::default()
        })
        .await
        .unwrap();
        if options.german {
            let store = &sim.sim.store;
            let m = store.mailbox(USER).unwrap();
            store.with_mailbox(&m, |m| {
                for (id, name) in [
                    ("inbox", "Posteingang"),
                    ("sentitems", "Gesendete Elemente"),
                    ("drafts", "Entwürfe"),
                    ("deleteditems", "Gelöschte Elemente"),
                    ("junkemail", "Junk-E-Mail"),
                    ("outbox", "Postausgang"),
                ] {
                    let key = m.distinguished_folder(id).unwrap();
                    m.update_folder(key, Some(name), None).unwrap();
                }
            });
        }
        let client = common::sim_client(&sim);
        let telemetry = Telemetry::new();
        let engine = Engine::new(
            db.clone(),
            state.clone(),
            same_db,
            telemetry.service.clone(),
        );
        engine.set_mailboxes(vec![MailboxSetup {
            smtp: USER.into(),
            client: Arc::new(client.clone()),
            target: ews::Target::impersonating(USER),
            operator: "1001".into(),
            tenant: Some(1),
            shared_folder_name: "Muster GmbH (CRM)".into(),
            areas: areas(options.leading),
            mail: options.mail,
            smtp_relay: options.smtp.map(Arc::new),
            initial_sync: mailsync::config::InitialSync::CrmToExchange,
            breaker: Default::default(),
            sync_ambiguous: false,
        }]);
        let routes = Routes {
            by_operator: [(1, USER.into())].into_iter().collect(),
            shared_contacts: Default::default(),
            areas: [(USER.into(), [Area::Mail].into_iter().collect())]
                .into_iter()
                .collect(),
        };
        let feed = Feed::new(db.clone(), state.clone(), routes, Duration::from_millis(20));
        feed.start_at_end_if_new().await.unwrap();
        let throttle = Throttle::new(
            "ex1".into(),
            ThrottleSettings {
                requests_per_second: 10_000.0,
                burst: 10_000,
                max_concurrent: 10,
            },
            telemetry.runtime.clone(),
        );
        let rig = Rig {
            db,
            state,
            sim,
            engine,
            feed,
            client,
            throttle,
            pg_name,
            my_name,
            record,
            _dir: dir,
            _serial: serial,
        };
        let folders = rig
            .engine
            .open_mailbox(&rig.spec(), StepContext::new(rig.throttle.clone()))
            .await
            .unwrap();
        assert_eq!(
            folders.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
            ["mail"]
        );
        rig
    }

    pub fn spec(&self) -> MailboxSpec {
        MailboxSpec {
            smtp: USER.into(),
            server: "ex1".into(),
            fingerprint: 0,
        }
    }

    pub async fn finish(self) {
        self.db.close().await;
        self.state.close().await;
        self.sim.stop().await;
        if let Some(dir) = &self.record {
            common::validate_recorded_requests(dir.path());
        }
        if let Some(name) = self.pg_name {
            common::drop_postgres(&name).await;
        }
        if let Some(name) = self.my_name {
            common::drop_mariadb(&name).await;
        }
    }

    /// Feeds the CRM changes, then runs mail steps until there is nothing more to do.
    pub async fn sync(&self) -> u64 {
        self.sync_with(Cause::Timer).await
    }

    pub async fn sync_with(&self, cause: Cause) -> u64 {
        while self.feed.poll_once().await.unwrap().is_some() {}
        let mut items = 0;
        let mut steps = 0;
        while steps < 200 {
            let mut causes = Causes::default();
            causes.insert(cause);
            let report = match self
                .engine
                .sync_folder(StepRequest {
                    mailbox: USER.into(),
                    folder: "mail".into(),
                    full_resync: false,
                    causes,
                    ctx: StepContext::new(self.throttle.clone()),
                })
                .await
            {
                Ok(r) => r,
                // What the runtime does: wait and run the step again. The simulator's back-off
                // covers one request; a step restarted after that could be refused again and
                // again, so the wait lets its budget refill (the runtime's own rate limit keeps
                // a real service below the budget).
                Err(mailsync_actors::SyncError::Throttled { back_off }) => {
                    tokio::time::sleep(back_off.max(Duration::from_millis(500))).await;
                    continue;
                }
                Err(e) => panic!("mail step: {e}"),
            };
            steps += 1;
            items += report.items;
            if !report.more {
                return items;
            }
        }
        panic!("the mail folder kept asking for more steps");
    }

    pub async fn initial(&self, direction: Direction) -> u64 {
        while self.feed.poll_once().await.unwrap().is_some() {}
        let summaries = self
            .engine
            .initial_sync(
                &self.spec(),
                direction,
                self.throttle.clone(),
                false,
                &|_, _, _| {},
            )
            .await
            .unwrap();
        summaries
            .iter()
            .find(|s| s.area == "mail")
            .expect("a mail summary")
            .counts
            .values()
            .sum()
    }

    /// A request as the user makes it (Outlook waits when Exchange says it is busy).
    pub async fn call<O: ews::ops::Operation>(&self, op: &O) -> O::Output {
        loop {
            match self
                .client
                .call(&ews::Target::impersonating(USER), op)
                .await
            {
                Ok(r) => return r.output,
                Err(ews::Error::Throttled { back_off, .. }) => {
                    tokio::time::sleep(back_off.max(Duration::from_millis(100))).await
                }
                Err(e) => panic!("{}: {e}", O::NAME),
            }
        }
    }

    /// The mail folders under msgfolderroot: path → Exchange id (paths use display names).
    pub async fn exchange_folders(&self) -> BTreeMap<String, ItemId> {
        let all: Vec<ews::items::Folder> = self
            .call(&ews::ops::SyncFolderHierarchy {
                folder: Some(FolderRef::well_known(DistinguishedFolder::MsgFolderRoot)),
                shape: Shape::all_properties(vec![]),
                sync_state: None,
            })
            .await
            .changes
            .into_iter()
            .filter_map(|c| match c {
                ews::ops::FolderChange::Create(f) => Some(f),
                _ => None,
            })
            .collect();
        let root = self
            .call(&ews::ops::GetFolder {
                folders: vec![FolderRef::well_known(DistinguishedFolder::MsgFolderRoot)],
                shape: Shape::id_only(),
            })
            .await
            .remove(0)
            .unwrap()
            .id
            .unwrap()
            .id;
        let by_id: BTreeMap<String, &ews::items::Folder> =
            all.iter().map(|f| (f.id.clone().unwrap().id, f)).collect();
        let mut out = BTreeMap::new();
        for f in all.iter().filter(|f| {
            f.folder_class
                .as_deref()
                .is_none_or(|c| c.starts_with("IPF.Note"))
        }) {
            let mut parts = vec![f.display_name.clone().unwrap_or_default()];
            let mut cur = f.parent.clone();
            while let Some(p) = cur.filter(|p| p.id != root) {
                let Some(pf) = by_id.get(&p.id) else { break };
                parts.push(pf.display_name.clone().unwrap_or_default());
                cur = pf.parent.clone();
            }
            parts.reverse();
            out.insert(parts.join("/"), f.id.clone().unwrap());
        }
        out
    }

    /// CRM folders: path → id (paths use names).
    pub async fn crm_folders(&self) -> BTreeMap<String, i64> {
        let rows = self.db.mail_folders(1).await.unwrap();
        let by_id: BTreeMap<i64, _> = rows.iter().map(|r| (r.id, r)).collect();
        rows.iter()
            .map(|r| {
                let mut parts = vec![r.name.clone()];
                let mut cur = r.parent_id;
                while let Some(p) = cur {
                    parts.push(by_id[&p].name.clone());
                    cur = by_id[&p].parent_id;
                }
                parts.reverse();
                (parts.join("/"), r.id)
            })
            .collect()
    }

    /// Messages of an Exchange folder: (sha of MIME, is_read, Exchange id).
    pub async fn exchange_mails(&self, folder: &ItemId) -> Vec<(String, bool, ItemId)> {
        let mut ids = Vec::new();
        let mut offset = 0;
        loop {
            let page = self
                .call(&FindItem {
                    folder: FolderRef::Id(folder.clone()),
                    shape: Shape::id_only(),
                    view: View::IndexedPage { offset, max: 1000 },
                    restriction: None,
                })
                .await;
            let n = page.items.len();
            ids.extend(page.items.iter().filter_map(|i| i.id().cloned()));
            offset += n as u32;
            if n < 1000 {
                break;
            }
        }
        let mut out = Vec::new();
        for chunk in ids.chunks(100) {
            let got = self
                .call(&GetItem {
                    ids: chunk.to_vec(),
                    shape: Shape {
                        base: ews::types::BaseShape::IdOnly,
                        additional: vec![
                            PropertyPath::Field("item:MimeContent".into()),
                            PropertyPath::Field("message:IsRead".into()),
                        ],
                    },
                })
                .await;
            for item in got {
                let Ok(Item::Message(m)) = item else {
                    panic!("not a message: {item:?}")
                };
                out.push((
                    sha(m.mime.as_deref().unwrap_or_default()),
                    m.is_read.unwrap_or(false),
                    m.id.unwrap(),
                ));
            }
        }
        out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        out
    }

    /// CRM mails of a folder: (sha of MIME, is_read, id).
    pub async fn crm_mails(&self, folder: i64) -> Vec<(String, bool, i64)> {
        let mut out = Vec::new();
        for id in self.db.mail_ids_in_folder(folder).await.unwrap() {
            let row = self.db.mails(&[id]).await.unwrap().remove(0);
            let mime = self.db.mail_mime(id).await.unwrap().unwrap_or_default();
            out.push((sha(&mime), row.is_read, id));
        }
        out.sort();
        out
    }

    pub async fn user_creates_mail(&self, folder: FolderRef, mime: Vec<u8>, read: bool) -> ItemId {
        self.call(&CreateItem {
            folder: Some(folder),
            items: vec![Item::Message(Message {
                mime: Some(mime),
                is_read: Some(read),
                ..Message::default()
            })],
            disposition: Some(MessageDisposition::SaveOnly),
        })
        .await
        .remove(0)
        .unwrap()
    }

    pub async fn crm_folder(&self, name: &str, role: Option<&str>, parent: Option<i64>) -> i64 {
        let role = role.map_or("NULL".into(), |r| format!("'{r}'"));
        let parent = parent.map_or("NULL".into(), |p| p.to_string());
        exec(
            &self.db,
            &format!("INSERT INTO crm_mail_folders (owner_id, parent_id, name, role) VALUES (1, {parent}, '{name}', {role})"),
        )
        .await;
        count(
            &self.db,
            &format!("SELECT max(id) FROM crm_mail_folders WHERE name = '{name}'"),
        )
        .await
    }

    pub async fn crm_mail(&self, folder: i64, mime: &[u8], read: bool, sent_at: &str) -> i64 {
        let sql = "INSERT INTO crm_mails (owner_id, folder_id, internet_message_id, subject, sent_at, is_read, mime, size) \
                   VALUES (1, $1, $2, 'crm', $3, $4, $5, $6) RETURNING id";
        let mid = String::from_utf8_lossy(mime)
            .lines()
            .find_map(|l| l.strip_prefix("Message-ID: ").map(str::to_owned));
        let at = chrono::DateTime::parse_from_rfc3339(sent_at)
            .unwrap()
            .with_timezone(&chrono::Utc);
        match &self.db {
            Db::Postgres(p) => {
                sqlx::query_as::<_, (i64,)>(sql)
                    .bind(folder)
                    .bind(mid)
                    .bind(at)
                    .bind(read)
                    .bind(mime)
                    .bind(mime.len() as i64)
                    .fetch_one(p)
                    .await
                    .unwrap()
                    .0
            }
            Db::Sqlite(p) => {
                sqlx::query_as::<_, (i64,)>(&sql.replace('$', "?"))
                    .bind(folder)
                    .bind(mid)
                    .bind(at)
                    .bind(read)
                    .bind(mime)
                    .bind(mime.len() as i64)
                    .fetch_one(p)
                    .await
                    .unwrap()
                    .0
            }
            Db::MySql(p) => {
                let sql = sql.replace(" RETURNING id", "");
                let sql = (1..=6)
                    .rev()
                    .fold(sql, |s, n| s.replace(&format!("${n}"), "?"));
                sqlx::query(&sql)
                    .bind(folder)
                    .bind(mid)
                    .bind(at)
                    .bind(read)
                    .bind(mime)
                    .bind(mime.len() as i64)
                    .execute(p)
                    .await
                    .unwrap()
                    .last_insert_id() as i64
            }
        }
    }

    /// A mail the CRM wants sent.
    pub async fn crm_outbox(&self, sender: &str, recipients: &str, body: &[u8]) {
        let sql = "INSERT INTO crm_outbox (owner_id, sender, recipients, subject, mime) VALUES (1, $1, $2, 's', $3)";
        match &self.db {
            Db::Postgres(p) => {
                sqlx::query(sql)
                    .bind(sender)
                    .bind(recipients)
                    .bind(body)
                    .execute(p)
                    .await
            }
            Db::Sqlite(p) => sqlx::query(&sql.replace('$', "?"))
                .bind(sender)
                .bind(recipients)
                .bind(body)
                .execute(p)
                .await
                .map(|_| Default::default()),
            Db::MySql(p) => {
                let sql = sql.replace("$1", "?").replace("$2", "?").replace("$3", "?");
                sqlx::query(&sql)
                    .bind(sender)
                    .bind(recipients)
                    .bind(body)
                    .execute(p)
                    .await
                    .map(|_| Default::default())
            }
        }
        .unwrap();
    }

    /// Ids and folders of every CRM mail.
    pub async fn crm_mail_ids(&self) -> Vec<(i64, i64)> {
        let sql = "SELECT id, folder_id FROM crm_mails ORDER BY id";
        match &self.db {
            Db::Postgres(p) => sqlx::query_as(sql).fetch_all(p).await,
            Db::Sqlite(p) => sqlx::query_as(sql).fetch_all(p).await,
            Db::MySql(p) => sqlx::query_as(sql).fetch_all(p).await,
        }
        .unwrap()
    }
}

pub fn hashes(v: &[(String, bool, ItemId)]) -> BTreeSet<String> {
    v.iter().map(|m| m.0.clone()).collect()
}

pub const DATE: &str = "Mon, 02 Mar 2026 09:30:00 +0100";
pub const SENT: &str = "2026-03-02T08:30:00Z";
