//! Mail sync end to end: ews-sim as Exchange, the CRM mail store in PostgreSQL and MariaDB
//! (and SQLite for the basics), mail steps run directly so each test says which step moves
//! what. With MariaDB the state store is a SQLite file beside it.

mod common;
use common::{count, exec, SmtpSink};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ews::items::{Item, Message};
use ews::ops::{
    CreateFolder, CreateItem, DeleteItem, DeleteType, FindItem, GetItem, ItemUpdate,
    MessageDisposition, MoveItem, UpdateFolder, UpdateItem, View,
};
use ews::types::{DistinguishedFolder, FolderRef, ItemId, PropertyPath, Shape};
use ews_sim::server::{self, Running, SimConfig};
use mailsync::config::{Area, AreaConfig, Leading, MailConfig, SmtpConfig, SmtpTls};
use mailsync::db::{Db, MigrationSet};
use mailsync::metrics::Telemetry;
use mailsync::sync::engine::{Direction, Engine, MailboxSetup};
use mailsync::sync::feed::{Feed, Routes};
use mailsync_actors::{
    Cause, Causes, MailboxSpec, StepContext, StepRequest, SyncPort, Throttle, ThrottleSettings,
};
use sha2::{Digest, Sha256};

static PG_SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const USER: &str = "user1@example.com";

struct Rig {
    /// The business database.
    db: Db,
    /// The state store: `db` itself, or SQLite beside MariaDB.
    state: Db,
    sim: Running,
    engine: Engine,
    feed: Feed,
    client: ews::Client,
    throttle: Throttle,
    pg_name: Option<String>,
    my_name: Option<String>,
    record: Option<tempfile::TempDir>,
    _dir: Option<tempfile::TempDir>,
    _serial: Option<tokio::sync::MutexGuard<'static, ()>>,
}

struct Options {
    /// Record every request and check it against the official schema at the end.
    record: bool,
    mail: MailConfig,
    smtp: Option<SmtpConfig>,
    leading: Leading,
    german: bool,
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

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A message with a binary attachment (every byte value), `n` making it unique.
fn mime(n: usize, subject: &str, date: &str) -> Vec<u8> {
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

fn areas(leading: Leading) -> BTreeMap<Area, AreaConfig> {
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
    async fn postgres(options: Options) -> Option<Rig> {
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
    async fn mariadb(options: Options) -> Option<Rig> {
        let (name, url) = common::mariadb_db("mail").await?;
        let db = Db::connect(&url, 5).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = common::sqlite_state(dir.path()).await;
        Some(Rig::start(db, state, (None, Some(name)), Some(dir), None, options).await)
    }

    async fn sqlite(options: Options) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("crm.db").display());
        let db = Db::connect(&url, 5).await.unwrap();
        Rig::start(db.clone(), db, (None, None), Some(dir), None, options).await
    }

    async fn start(
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

    fn spec(&self) -> MailboxSpec {
        MailboxSpec {
            smtp: USER.into(),
            server: "ex1".into(),
            fingerprint: 0,
        }
    }

    async fn finish(self) {
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
    async fn sync(&self) -> u64 {
        self.sync_with(Cause::Timer).await
    }

    async fn sync_with(&self, cause: Cause) -> u64 {
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

    async fn initial(&self, direction: Direction) -> u64 {
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
    async fn call<O: ews::ops::Operation>(&self, op: &O) -> O::Output {
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
    async fn exchange_folders(&self) -> BTreeMap<String, ItemId> {
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
    async fn crm_folders(&self) -> BTreeMap<String, i64> {
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
    async fn exchange_mails(&self, folder: &ItemId) -> Vec<(String, bool, ItemId)> {
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
    async fn crm_mails(&self, folder: i64) -> Vec<(String, bool, i64)> {
        let mut out = Vec::new();
        for id in self.db.mail_ids_in_folder(folder).await.unwrap() {
            let row = self.db.mails(&[id]).await.unwrap().remove(0);
            let mime = self.db.mail_mime(id).await.unwrap().unwrap_or_default();
            out.push((sha(&mime), row.is_read, id));
        }
        out.sort();
        out
    }

    async fn user_creates_mail(&self, folder: FolderRef, mime: Vec<u8>, read: bool) -> ItemId {
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

    async fn crm_folder(&self, name: &str, role: Option<&str>, parent: Option<i64>) -> i64 {
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

    async fn crm_mail(&self, folder: i64, mime: &[u8], read: bool, sent_at: &str) -> i64 {
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
    async fn crm_outbox(&self, sender: &str, recipients: &str, body: &[u8]) {
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
    async fn crm_mail_ids(&self) -> Vec<(i64, i64)> {
        let sql = "SELECT id, folder_id FROM crm_mails ORDER BY id";
        match &self.db {
            Db::Postgres(p) => sqlx::query_as(sql).fetch_all(p).await,
            Db::Sqlite(p) => sqlx::query_as(sql).fetch_all(p).await,
            Db::MySql(p) => sqlx::query_as(sql).fetch_all(p).await,
        }
        .unwrap()
    }
}

fn hashes(v: &[(String, bool, ItemId)]) -> BTreeSet<String> {
    v.iter().map(|m| m.0.clone()).collect()
}

const DATE: &str = "Mon, 02 Mar 2026 09:30:00 +0100";
const SENT: &str = "2026-03-02T08:30:00Z";

/// The folder tree both ways: distinguished folders link by role whatever their names (a
/// German mailbox, an English CRM), custom folders are created where missing; renames, moves
/// and deletes follow on either side.
async fn folder_tree(rig: &Rig) {
    let inbox = rig.crm_folder("Inbox", Some("inbox"), None).await;
    rig.crm_folder("Sent Items", Some("sentitems"), None).await;
    let projekte = rig.crm_folder("Projekte", None, Some(inbox)).await;
    let kunden = rig
        .call(&CreateFolder {
            parent: FolderRef::well_known(DistinguishedFolder::Inbox),
            folders: vec![ews::items::Folder {
                display_name: Some("Kunden".into()),
                folder_class: Some("IPF.Note".into()),
                ..Default::default()
            }],
        })
        .await
        .remove(0)
        .unwrap();
    rig.sync().await;

    let crm = rig.crm_folders().await;
    // One CRM folder per role: linked, never duplicated under the German name.
    assert_eq!(
        count(
            &rig.db,
            "SELECT count(*) FROM crm_mail_folders WHERE role = 'inbox'"
        )
        .await,
        1
    );
    assert!(crm.contains_key("Inbox/Kunden"), "{crm:?}");
    assert!(!crm.keys().any(|k| k.starts_with("Posteingang")), "{crm:?}");
    // Roles Exchange has and the CRM had not arrive under Exchange's names.
    assert!(crm.contains_key("Gelöschte Elemente"), "{crm:?}");
    assert_eq!(
        count(&rig.db, "SELECT count(*) FROM crm_mail_folders WHERE role = 'deleteditems' AND name = 'Gelöschte Elemente'").await,
        1
    );
    let ex = rig.exchange_folders().await;
    assert!(ex.contains_key("Posteingang/Projekte"), "{ex:?}");
    assert!(!ex.contains_key("Inbox"), "{ex:?}");

    // Rename in the CRM, rename and move in Exchange.
    exec(
        &rig.db,
        &format!("UPDATE crm_mail_folders SET name = 'Projekte 2026' WHERE id = {projekte}"),
    )
    .await;
    rig.call(&UpdateFolder {
        folder: kunden.clone(),
        display_name: "Stammkunden".into(),
    })
    .await;
    rig.sync().await;
    let ex = rig.exchange_folders().await;
    assert!(ex.contains_key("Posteingang/Projekte 2026"), "{ex:?}");
    let crm = rig.crm_folders().await;
    assert!(crm.contains_key("Inbox/Stammkunden"), "{crm:?}");

    rig.call(&ews::ops::MoveFolder {
        folder: ex["Posteingang/Stammkunden"].clone(),
        to: FolderRef::well_known(DistinguishedFolder::MsgFolderRoot),
    })
    .await;
    rig.sync().await;
    let crm = rig.crm_folders().await;
    assert!(crm.contains_key("Stammkunden"), "{crm:?}");

    // Delete in Exchange, delete in the CRM.
    rig.call(&ews::ops::DeleteFolder {
        folder: rig.exchange_folders().await["Stammkunden"].clone(),
        delete_type: DeleteType::HardDelete,
    })
    .await;
    exec(
        &rig.db,
        &format!("DELETE FROM crm_mail_folders WHERE id = {projekte}"),
    )
    .await;
    rig.sync().await;
    let crm = rig.crm_folders().await;
    assert!(!crm.contains_key("Stammkunden"), "{crm:?}");
    let ex = rig.exchange_folders().await;
    assert!(!ex.contains_key("Posteingang/Projekte 2026"), "{ex:?}");
    // Deleted the default way: into Deleted Items, where the user can restore it.
    assert!(
        ex.contains_key("Gelöschte Elemente/Projekte 2026"),
        "{ex:?}"
    );
    // ... and it does not come back into the CRM from there.
    rig.sync().await;
    let crm = rig.crm_folders().await;
    assert!(!crm.keys().any(|k| k.contains("Projekte")), "{crm:?}");
}

#[tokio::test]
async fn folder_tree_both_ways_by_role_in_a_german_mailbox_postgres() {
    let Some(rig) = Rig::postgres(Options {
        german: true,
        record: true,
        ..Options::default()
    })
    .await
    else {
        return;
    };
    folder_tree(&rig).await;
    rig.finish().await;
}

#[tokio::test]
async fn folder_tree_both_ways_by_role_in_a_german_mailbox_mariadb() {
    let Some(rig) = Rig::mariadb(Options {
        german: true,
        record: true,
        ..Options::default()
    })
    .await
    else {
        return;
    };
    folder_tree(&rig).await;
    rig.finish().await;
}

#[tokio::test]
async fn folder_tree_both_ways_by_role_in_a_german_mailbox_sqlite() {
    let rig = Rig::sqlite(Options {
        german: true,
        ..Options::default()
    })
    .await;
    folder_tree(&rig).await;
    rig.finish().await;
}

/// Messages both ways with their MIME byte for byte (attachments included), read flags,
/// moves and deletes both ways; a move is a move, never a copy.
async fn messages(rig: &Rig) {
    let inbox = rig.crm_folder("Inbox", Some("inbox"), None).await;
    let archiv = rig.crm_folder("Archiv", None, None).await;
    let from_crm = mime(1, "Angebot", DATE);
    let crm_id = rig.crm_mail(inbox, &from_crm, false, SENT).await;
    let from_outlook = mime(2, "Rückfrage", DATE);
    let ews_id = rig
        .user_creates_mail(
            FolderRef::well_known(DistinguishedFolder::Inbox),
            from_outlook.clone(),
            true,
        )
        .await;
    rig.sync().await;

    let ex = rig.exchange_folders().await;
    let ex_inbox = rig.exchange_mails(&ex["Inbox"]).await;
    let crm_inbox = rig.crm_mails(inbox).await;
    assert_eq!(
        hashes(&ex_inbox),
        crm_inbox
            .iter()
            .map(|m| m.0.clone())
            .collect::<BTreeSet<_>>()
    );
    assert_eq!(
        hashes(&ex_inbox),
        [sha(&from_crm), sha(&from_outlook)].into_iter().collect()
    );
    assert_eq!(
        count(&rig.db, "SELECT count(*) FROM crm_mails").await,
        2,
        "no copies"
    );
    // Filed as received mail, not as an unsent draft (PR_MESSAGE_FLAGS set at creation).
    let filed = ex_inbox
        .iter()
        .find(|m| m.0 == sha(&from_crm))
        .unwrap()
        .2
        .clone();
    let got = rig
        .call(&GetItem {
            ids: vec![filed],
            shape: Shape::all_properties(vec![]),
        })
        .await;
    let Ok(Item::Message(filed)) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!((filed.is_draft, filed.is_read), (Some(false), Some(false)));
    let imported = count(
        &rig.db,
        &format!("SELECT id FROM crm_mails WHERE id <> {crm_id}"),
    )
    .await;
    assert_eq!(
        count(
            &rig.db,
            &format!("SELECT count(*) FROM crm_mails WHERE is_read AND id = {imported}")
        )
        .await,
        1,
        "the read flag came with the message"
    );
    // The envelope columns are filled from Exchange.
    assert_eq!(
        count(&rig.db, &format!("SELECT count(*) FROM crm_mails WHERE id = {imported} AND subject = 'Rückfrage' AND sender = 'kunde2@example.org' AND internet_message_id IS NOT NULL AND size > 0")).await,
        1
    );

    // Read flags both ways.
    exec(
        &rig.db,
        &format!("UPDATE crm_mails SET is_read = TRUE WHERE id = {crm_id}"),
    )
    .await;
    let current = rig.exchange_mails(&ex["Inbox"]).await;
    let outlook_now = current
        .iter()
        .find(|m| m.0 == sha(&from_outlook))
        .unwrap()
        .2
        .clone();
    rig.call(&UpdateItem {
        changes: vec![ItemUpdate {
            id: outlook_now,
            updates: Item::Message(Message {
                is_read: Some(false),
                ..Message::default()
            })
            .updates(),
        }],
        conflict: ews::ops::ConflictResolution::AlwaysOverwrite,
        disposition: Some(MessageDisposition::SaveOnly),
        calendar: false,
    })
    .await;
    rig.sync().await;
    let flags: BTreeMap<String, bool> = rig
        .exchange_mails(&ex["Inbox"])
        .await
        .into_iter()
        .map(|m| (m.0, m.1))
        .collect();
    assert!(flags[&sha(&from_crm)], "CRM read → Exchange");
    assert_eq!(
        count(
            &rig.db,
            &format!("SELECT count(*) FROM crm_mails WHERE is_read AND id = {imported}")
        )
        .await,
        0,
        "Exchange unread → CRM"
    );

    // Moves both ways: the Outlook message into Archiv in Exchange, the CRM one in the CRM.
    let outlook_now = rig
        .exchange_mails(&ex["Inbox"])
        .await
        .into_iter()
        .find(|m| m.0 == sha(&from_outlook))
        .unwrap()
        .2;
    rig.call(&MoveItem {
        ids: vec![outlook_now],
        to: FolderRef::Id(ex["Archiv"].clone()),
    })
    .await;
    exec(
        &rig.db,
        &format!("UPDATE crm_mails SET folder_id = {archiv} WHERE id = {crm_id}"),
    )
    .await;
    rig.sync().await;
    assert!(rig.exchange_mails(&ex["Inbox"]).await.is_empty());
    assert_eq!(
        hashes(&rig.exchange_mails(&ex["Archiv"]).await),
        [sha(&from_crm), sha(&from_outlook)].into_iter().collect()
    );
    assert_eq!(
        count(&rig.db, &format!("SELECT count(*) FROM crm_mails WHERE folder_id = {archiv} AND id IN ({crm_id}, {imported})")).await,
        2,
        "both rows moved, same ids: no copy"
    );
    assert_eq!(count(&rig.db, "SELECT count(*) FROM crm_mails").await, 2);

    // Deletes: in the CRM → Exchange's Deleted Items (the default), not back into the CRM;
    // in Exchange (hard) → gone from the CRM.
    exec(
        &rig.db,
        &format!("DELETE FROM crm_mails WHERE id = {crm_id}"),
    )
    .await;
    let outlook_now = rig
        .exchange_mails(&ex["Archiv"])
        .await
        .into_iter()
        .find(|m| m.0 == sha(&from_outlook))
        .unwrap()
        .2;
    rig.call(&DeleteItem {
        ids: vec![outlook_now],
        delete_type: DeleteType::HardDelete,
    })
    .await;
    rig.sync().await;
    assert!(rig.exchange_mails(&ex["Archiv"]).await.is_empty());
    assert_eq!(
        hashes(&rig.exchange_mails(&ex["Deleted Items"]).await),
        [sha(&from_crm)].into_iter().collect()
    );
    assert_eq!(count(&rig.db, "SELECT count(*) FROM crm_mails").await, 0);
    let _ = ews_id;
}

#[tokio::test]
async fn messages_flags_moves_and_deletes_both_ways_postgres() {
    let Some(rig) = Rig::postgres(Options {
        record: true,
        ..Options::default()
    })
    .await
    else {
        return;
    };
    messages(&rig).await;
    rig.finish().await;
}

#[tokio::test]
async fn messages_flags_moves_and_deletes_both_ways_mariadb() {
    let Some(rig) = Rig::mariadb(Options {
        record: true,
        ..Options::default()
    })
    .await
    else {
        return;
    };
    messages(&rig).await;
    rig.finish().await;
}

#[tokio::test]
async fn messages_flags_moves_and_deletes_both_ways_sqlite() {
    let rig = Rig::sqlite(Options::default()).await;
    messages(&rig).await;
    rig.finish().await;
}

/// Sending: the mailbox's own address through Exchange (SendAndSaveCopy: the copy lands in
/// Sent Items and from there in the CRM's sent items), an alternative sender through the SMTP
/// server (byte for byte, envelope from the row); without an SMTP server the row fails with
/// the reason and the others are still sent.
#[tokio::test]
async fn outbox_sends_through_exchange_or_the_smtp_server() {
    let sink = SmtpSink::start().await;
    if let Some(rig) = Rig::postgres(outbox_options(&sink)).await {
        outbox(rig, sink).await;
    }
}

#[tokio::test]
async fn outbox_sends_through_exchange_or_the_smtp_server_on_mariadb() {
    let sink = SmtpSink::start().await;
    if let Some(rig) = Rig::mariadb(outbox_options(&sink)).await {
        outbox(rig, sink).await;
    }
}

fn outbox_options(sink: &SmtpSink) -> Options {
    Options {
        smtp: Some(SmtpConfig {
            host: "127.0.0.1".into(),
            port: sink.addr.port(),
            tls: SmtpTls::None,
            credentials: None,
        }),
        record: true,
        ..Options::default()
    }
}

async fn outbox(rig: Rig, sink: SmtpSink) {
    rig.crm_folder("Gesendet", Some("sentitems"), None).await;
    rig.sync().await;
    let own = mime(10, "Auftragsbestätigung", DATE);
    let alt = mime(11, "Newsletter", DATE);
    for (sender, body) in [(USER, &own), ("vertrieb@example.com", &alt)] {
        rig.crm_outbox(
            sender,
            "Kunde <kunde10@example.org>, kunde11@example.org",
            body,
        )
        .await;
    }
    rig.sync().await;
    assert_eq!(
        count(
            &rig.db,
            "SELECT count(*) FROM crm_outbox WHERE state = 'sent' AND sent_at IS NOT NULL"
        )
        .await,
        2
    );
    // Through Exchange: the copy in Sent Items, imported into the CRM's sent folder once.
    let ex = rig.exchange_folders().await;
    assert_eq!(
        hashes(&rig.exchange_mails(&ex["Sent Items"]).await),
        [sha(&own)].into_iter().collect()
    );
    rig.sync().await;
    assert_eq!(
        count(&rig.db, "SELECT count(*) FROM crm_mails m JOIN crm_mail_folders f ON f.id = m.folder_id WHERE f.role = 'sentitems'").await,
        1
    );
    // Through SMTP: the exact bytes, the row's envelope.
    let got = sink.mails.lock().clone();
    assert_eq!(
        got.len(),
        1,
        "only the alternative sender goes through SMTP"
    );
    assert_eq!(got[0].0, "vertrieb@example.com");
    assert_eq!(got[0].1, ["kunde10@example.org", "kunde11@example.org"]);
    assert_eq!(sha(&got[0].2), sha(&alt));

    // Sent rows are not sent again.
    rig.sync_with(Cause::Start).await;
    assert_eq!(sink.mails.lock().len(), 1);
    assert_eq!(rig.exchange_mails(&ex["Sent Items"]).await.len(), 1);
    rig.finish().await;
}

#[tokio::test]
async fn an_alternative_sender_without_an_smtp_server_fails_that_row_only() {
    let rig = Rig::sqlite(Options::default()).await;
    rig.crm_folder("Sent Items", Some("sentitems"), None).await;
    for sender in ["other@example.com", USER] {
        exec(
            &rig.db,
            &format!("INSERT INTO crm_outbox (owner_id, sender, recipients, mime) VALUES (1, '{sender}', 'kunde@example.org', X'{}')",
                mime(12, sender, DATE).iter().map(|b| format!("{b:02x}")).collect::<String>()),
        )
        .await;
    }
    rig.sync().await;
    assert_eq!(
        count(&rig.db, "SELECT count(*) FROM crm_outbox WHERE state = 'failed' AND sender = 'other@example.com' AND error LIKE '%no [smtp] server is configured%'").await,
        1
    );
    assert_eq!(
        count(
            &rig.db,
            "SELECT count(*) FROM crm_outbox WHERE state = 'sent' AND sender = 'user1@example.com'"
        )
        .await,
        1
    );
    rig.finish().await;
}

/// A crash between any write and its mapping links instead of copying: mappings lost on both
/// sides (as if the process died before storing them) are rebuilt from the CRM rows' Exchange
/// ids and the stamps on Exchange's messages.
#[tokio::test]
async fn lost_mappings_link_again_without_duplicates() {
    if let Some(rig) = Rig::postgres(Options::default()).await {
        lost_mappings(rig).await;
    }
}

#[tokio::test]
async fn lost_mappings_link_again_without_duplicates_on_mariadb() {
    if let Some(rig) = Rig::mariadb(Options::default()).await {
        lost_mappings(rig).await;
    }
}

async fn lost_mappings(rig: Rig) {
    let inbox = rig.crm_folder("Inbox", Some("inbox"), None).await;
    for n in 0..5 {
        rig.crm_mail(inbox, &mime(20 + n, "crm", DATE), n % 2 == 0, SENT)
            .await;
        rig.user_creates_mail(
            FolderRef::well_known(DistinguishedFolder::Inbox),
            mime(30 + n, "outlook", DATE),
            false,
        )
        .await;
    }
    rig.sync().await;
    let ex = rig.exchange_folders().await;
    assert_eq!(rig.exchange_mails(&ex["Inbox"]).await.len(), 10);
    assert_eq!(count(&rig.db, "SELECT count(*) FROM crm_mails").await, 10);
    // The crash: every mapping and sync state gone, the CRM rows queued again.
    exec(&rig.state, "DELETE FROM ms_item_map").await;
    exec(&rig.state, "DELETE FROM ms_folder_state").await;
    exec(&rig.db, "UPDATE crm_mails SET subject = subject").await;
    rig.sync().await;
    assert_eq!(rig.exchange_mails(&ex["Inbox"]).await.len(), 10);
    assert_eq!(count(&rig.db, "SELECT count(*) FROM crm_mails").await, 10);
    assert_eq!(
        count(
            &rig.db,
            "SELECT count(*) FROM crm_mail_folders WHERE role = 'inbox'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &rig.state,
            "SELECT count(*) FROM ms_item_map WHERE crm_table = 'crm_mails'"
        )
        .await,
        10
    );
    rig.finish().await;
}

/// Initial sync CRM → Exchange honours the start date per folder and skips excluded folders;
/// including a folder later syncs its backlog both ways.
#[tokio::test]
async fn start_dates_and_an_excluded_folder_that_is_included_later() {
    if let Some(rig) = Rig::postgres(start_dates_options()).await {
        start_dates(rig).await;
    }
}

#[tokio::test]
async fn start_dates_and_an_excluded_folder_that_is_included_later_on_mariadb() {
    if let Some(rig) = Rig::mariadb(start_dates_options()).await {
        start_dates(rig).await;
    }
}

fn start_dates_options() -> Options {
    Options {
        mail: MailConfig {
            excluded_folders: vec!["Projekte/Alt".into()],
            ..MailConfig::default()
        },
        record: true,
        ..Options::default()
    }
}

async fn start_dates(rig: Rig) {
    let inbox = rig.crm_folder("Inbox", Some("inbox"), None).await;
    exec(
        &rig.db,
        &format!("UPDATE crm_mail_folders SET sync_from = '2026-01-01' WHERE id = {inbox}"),
    )
    .await;
    let archiv = rig.crm_folder("Archiv", None, None).await;
    exec(
        &rig.db,
        &format!("UPDATE crm_mail_folders SET sync_excluded = TRUE WHERE id = {archiv}"),
    )
    .await;
    let projekte = rig.crm_folder("Projekte", None, None).await;
    let alt = rig.crm_folder("Alt", None, Some(projekte)).await;
    let old = mime(40, "alt", "Tue, 01 Oct 2024 10:00:00 +0200");
    rig.crm_mail(inbox, &old, true, "2024-10-01T08:00:00Z")
        .await;
    let new = mime(41, "neu", DATE);
    rig.crm_mail(inbox, &new, false, SENT).await;
    let archived = mime(42, "archiv", DATE);
    rig.crm_mail(archiv, &archived, true, SENT).await;
    let by_path = mime(43, "alt-projekt", DATE);
    rig.crm_mail(alt, &by_path, true, SENT).await;
    let counted = rig.initial(Direction::CrmToExchange).await;
    assert!(counted >= 4, "folders and mails written: {counted}");

    let ex = rig.exchange_folders().await;
    // The tree is complete; only the mails are left out.
    for path in ["Inbox", "Archiv", "Projekte/Alt"] {
        assert!(ex.contains_key(path), "{path} in {ex:?}");
    }
    assert_eq!(
        hashes(&rig.exchange_mails(&ex["Inbox"]).await),
        [sha(&new)].into_iter().collect(),
        "mails before the start date stay in the CRM"
    );
    assert!(rig.exchange_mails(&ex["Archiv"]).await.is_empty());
    assert!(rig.exchange_mails(&ex["Projekte/Alt"]).await.is_empty());

    // Meanwhile a user files a message into the excluded folder in Outlook: not imported.
    let outlook = mime(44, "outlook-archiv", DATE);
    rig.user_creates_mail(FolderRef::Id(ex["Archiv"].clone()), outlook.clone(), false)
        .await;
    rig.sync().await;
    assert_eq!(rig.crm_mails(archiv).await.len(), 1);

    // Included: the backlog of both sides arrives.
    exec(
        &rig.db,
        &format!("UPDATE crm_mail_folders SET sync_excluded = FALSE WHERE id = {archiv}"),
    )
    .await;
    rig.sync().await;
    let both: BTreeSet<String> = [sha(&archived), sha(&outlook)].into_iter().collect();
    assert_eq!(hashes(&rig.exchange_mails(&ex["Archiv"]).await), both);
    assert_eq!(
        rig.crm_mails(archiv)
            .await
            .into_iter()
            .map(|m| m.0)
            .collect::<BTreeSet<_>>(),
        both
    );
    rig.finish().await;
}

/// Inserts `per_folder` mails into each of `folders` new CRM folders (PostgreSQL and
/// MariaDB, one statement per folder); returns the folder ids.
async fn crm_bulk(rig: &Rig, folders: usize, per_folder: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for f in 0..folders {
        let id = rig.crm_folder(&format!("Ordner {f:02}"), None, None).await;
        let mimes: Vec<Vec<u8>> = (0..per_folder)
            .map(|i| mime(f * per_folder + i, &format!("Vorgang {f}-{i}"), DATE))
            .collect();
        match &rig.db {
            Db::Postgres(p) => sqlx::query(
                "INSERT INTO crm_mails (owner_id, folder_id, subject, sent_at, is_read, mime, size) \
                 SELECT 1, $1, 'bulk', now(), (n % 3 = 0), m, length(m) FROM unnest($2::bytea[]) WITH ORDINALITY AS t(m, n)",
            )
            .bind(id)
            .bind(&mimes)
            .execute(p)
            .await
            .map(|_| ()),
            Db::MySql(p) => {
                let rows = vec!["(1, ?, 'bulk', UTC_TIMESTAMP(6), ?, ?, ?)"; mimes.len()].join(", ");
                let sql = format!(
                    "INSERT INTO crm_mails (owner_id, folder_id, subject, sent_at, is_read, mime, size) VALUES {rows}"
                );
                mimes
                    .iter()
                    .enumerate()
                    .fold(sqlx::query(&sql), |q, (n, m)| {
                        q.bind(id).bind((n + 1) % 3 == 0).bind(m).bind(m.len() as i64)
                    })
                    .execute(p)
                    .await
                    .map(|_| ())
            }
            Db::Sqlite(_) => panic!("bulk inserts are written for PostgreSQL and MariaDB"),
        }
        .unwrap();
        ids.push(id);
    }
    ids
}

/// Every synced folder holds the same messages (MIME hash and read flag) on both sides.
async fn assert_same_content(rig: &Rig, skip_trash: bool) {
    let ex = rig.exchange_folders().await;
    let crm = rig.crm_folders().await;
    let roles: BTreeMap<i64, Option<String>> = rig
        .db
        .mail_folders(1)
        .await
        .unwrap()
        .into_iter()
        .map(|f| (f.id, f.role))
        .collect();
    for (path, id) in &crm {
        if skip_trash && roles[id].as_deref() == Some("deleteditems") {
            continue;
        }
        let on_exchange: Vec<(String, bool)> = rig
            .exchange_mails(&ex[path])
            .await
            .into_iter()
            .map(|m| (m.0, m.1))
            .collect();
        let in_crm: Vec<(String, bool)> = rig
            .crm_mails(*id)
            .await
            .into_iter()
            .map(|m| (m.0, m.1))
            .collect();
        if on_exchange != in_crm {
            let a: BTreeSet<_> = on_exchange.iter().cloned().collect();
            let b: BTreeSet<_> = in_crm.iter().cloned().collect();
            eprintln!(
                "only in Exchange: {:?}",
                a.difference(&b).collect::<Vec<_>>()
            );
            eprintln!(
                "only in the CRM: {:?}",
                b.difference(&a).collect::<Vec<_>>()
            );
        }
        assert_eq!(on_exchange, in_crm, "folder {path}");
    }
}

/// 10,000 messages in 50 folders, initial-synced CRM → Exchange, then the same mailbox's
/// content imported into a fresh CRM (Exchange → CRM): identical MIME (hashes) and flags.
#[tokio::test]
async fn ten_thousand_messages_in_fifty_folders_initial_sync_each_way() {
    if let Some(rig) = Rig::postgres(Options::default()).await {
        ten_thousand_each_way(rig).await;
    }
}

#[tokio::test]
async fn ten_thousand_messages_in_fifty_folders_initial_sync_each_way_on_mariadb() {
    if let Some(rig) = Rig::mariadb(Options::default()).await {
        ten_thousand_each_way(rig).await;
    }
}

async fn ten_thousand_each_way(rig: Rig) {
    crm_bulk(&rig, 50, 200).await;
    rig.initial(Direction::CrmToExchange).await;
    assert_eq!(
        count(
            &rig.state,
            "SELECT count(*) FROM ms_item_map WHERE crm_table = 'crm_mails'"
        )
        .await,
        10_000
    );
    assert_same_content(&rig, false).await;

    // The other way: the mailbox as it now is, into an empty CRM.
    exec(&rig.db, "DELETE FROM crm_mail_folders").await;
    exec(&rig.state, "DELETE FROM ms_item_map").await;
    exec(&rig.state, "DELETE FROM ms_folder_state").await;
    exec(&rig.state, "DELETE FROM ms_pending").await;
    rig.feed.start_at_end_if_new().await.unwrap();
    while rig.feed.poll_once().await.unwrap().is_some() {}
    exec(&rig.state, "DELETE FROM ms_pending").await;
    // Unstamped copies, as mail that arrived in Outlook would be.
    let before = count(&rig.db, "SELECT count(*) FROM crm_mails").await;
    assert_eq!(before, 0);
    rig.initial(Direction::ExchangeToCrm).await;
    assert_eq!(
        count(&rig.db, "SELECT count(*) FROM crm_mails").await,
        10_000
    );
    assert_same_content(&rig, false).await;
    rig.finish().await;
}

/// A small deterministic generator for the storms.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

/// Flag, move and delete storms on both sides, with steps in between at random moments,
/// converge: every folder holds the same messages with the same flags on both sides, and no
/// message exists twice.
#[tokio::test]
async fn flag_move_and_delete_storms_converge() {
    if let Some(rig) = Rig::postgres(Options::default()).await {
        storms(rig).await;
    }
}

#[tokio::test]
async fn flag_move_and_delete_storms_converge_on_mariadb() {
    if let Some(rig) = Rig::mariadb(Options::default()).await {
        storms(rig).await;
    }
}

async fn storms(rig: Rig) {
    rig.crm_folder("Deleted Items", Some("deleteditems"), None)
        .await;
    let folders = crm_bulk(&rig, 5, 40).await;
    for n in 0..40 {
        rig.user_creates_mail(
            FolderRef::well_known(DistinguishedFolder::Inbox),
            mime(900 + n, "outlook", DATE),
            n % 2 == 0,
        )
        .await;
    }
    rig.initial(Direction::CrmToExchange).await;
    assert_same_content(&rig, false).await;

    let mut rng = Lcg(7);
    for round in 0..6 {
        let ex = rig.exchange_folders().await;
        let ex_paths: Vec<String> = ex
            .keys()
            .filter(|p| p.starts_with("Ordner") || *p == "Inbox")
            .cloned()
            .collect();
        // Exchange side: 30 operations on messages listed once per round (each at most once,
        // as a moved message has a new id).
        let mut listed: Vec<(bool, ItemId)> = Vec::new();
        for path in &ex_paths {
            listed.extend(
                rig.exchange_mails(&ex[path])
                    .await
                    .into_iter()
                    .map(|m| (m.1, m.2)),
            );
        }
        for _ in 0..30 {
            if listed.is_empty() {
                break;
            }
            let (read, id) = listed.swap_remove(rng.next(listed.len()));
            match rng.next(4) {
                0 | 1 => {
                    rig.call(&UpdateItem {
                        changes: vec![ItemUpdate {
                            id,
                            updates: Item::Message(Message {
                                is_read: Some(!read),
                                ..Message::default()
                            })
                            .updates(),
                        }],
                        conflict: ews::ops::ConflictResolution::AlwaysOverwrite,
                        disposition: Some(MessageDisposition::SaveOnly),
                        calendar: false,
                    })
                    .await;
                }
                2 => {
                    let to = &ex_paths[rng.next(ex_paths.len())];
                    rig.call(&MoveItem {
                        ids: vec![id],
                        to: FolderRef::Id(ex[to].clone()),
                    })
                    .await;
                }
                _ => {
                    rig.call(&DeleteItem {
                        ids: vec![id],
                        delete_type: if rng.next(2) == 0 {
                            DeleteType::HardDelete
                        } else {
                            DeleteType::MoveToDeletedItems
                        },
                    })
                    .await;
                }
            }
        }
        // CRM side: 30 operations.
        let crm_ids: Vec<(i64, i64)> = rig.crm_mail_ids().await;
        for _ in 0..30 {
            let (id, _) = crm_ids[rng.next(crm_ids.len())];
            let sql = match rng.next(4) {
                0 | 1 => format!("UPDATE crm_mails SET is_read = NOT is_read WHERE id = {id}"),
                2 => format!(
                    "UPDATE crm_mails SET folder_id = {} WHERE id = {id}",
                    folders[rng.next(folders.len())]
                ),
                _ => format!("DELETE FROM crm_mails WHERE id = {id}"),
            };
            exec(&rig.db, &sql).await;
        }
        if round % 2 == 0 {
            rig.sync_with(Cause::Notification).await;
        }
    }
    rig.sync().await;
    rig.sync().await;
    // Deleted Items holds, in Exchange, what the CRM deleted (by design it stays there).
    assert_same_content(&rig, true).await;
    let dupes = count(
        &rig.db,
        "SELECT count(*) FROM (SELECT md5(mime) FROM crm_mails GROUP BY md5(mime) HAVING count(*) > 1) d",
    )
    .await;
    assert_eq!(dupes, 0, "no message twice in the CRM");
    rig.finish().await;
}

/// A message whose headers use RFC 2047 encoded words (UTF-8 and Latin-1, Q and B), folding,
/// a quoted display name with a comma and a group arrives in the CRM decoded: the subject as
/// text, the sender's address, and every recipient once (none split at a quoted comma).
#[tokio::test]
async fn imported_mail_has_decoded_subjects_and_whole_addresses() {
    let rig = Rig::sqlite(Options::default()).await;
    rig.crm_folder("Inbox", Some("inbox"), None).await;
    let raw = "Subject: =?utf-8?q?=C3=BCber?= den\r\n =?UTF-8?B?UHLDvGZzdGFuZA==?=\r\n\
               From: =?iso-8859-1?q?J=FCrgen_M=FCller?= <Juergen@example.com>\r\n\
               To: \"M\u{fc}ller, Anna\" <anna@example.com>, =?utf-8?b?w4RyenRlLCBCw7xybw==?=\r\n\
               \t<aerzte@example.com>\r\n\
               Cc: Team: carl@example.com, \"Dora, D.\" <dora@example.com>;\r\n\
               Message-ID: <decoded-1@example.com>\r\n\
               Date: Tue, 3 Mar 2026 09:15:00 +0100\r\n\
               MIME-Version: 1.0\r\n\
               Content-Type: text/plain; charset=utf-8\r\n\r\n\
               Hallo\r\n";
    rig.user_creates_mail(
        FolderRef::well_known(DistinguishedFolder::Inbox),
        raw.as_bytes().to_vec(),
        false,
    )
    .await;
    rig.sync().await;
    let row = common::texts(
        &rig.db,
        "SELECT subject, sender, recipients, internet_message_id FROM crm_mails",
    )
    .await;
    assert_eq!(
        row,
        vec![
            Some("über den Prüfstand".to_string()),
            Some("Juergen@example.com".to_string()),
            Some(
                "anna@example.com, aerzte@example.com, carl@example.com, dora@example.com"
                    .to_string()
            ),
            Some("<decoded-1@example.com>".to_string()),
        ]
    );
    rig.finish().await;
}

/// The convergence checker on mail: after a sync both sides are equal; then one difference of
/// each kind, made behind mailsync's back, is found and named.
#[tokio::test]
async fn the_convergence_checker_compares_mail_and_names_each_difference() {
    use mailsync::sync::converge::{compare, Difference};
    use mailsync::sync::fields;

    let rig = Rig::sqlite(Options::default()).await;
    let inbox = rig.crm_folder("Inbox", Some("inbox"), None).await;
    let projects = rig.crm_folder("Projekte", None, Some(inbox)).await;
    let crm1 = rig
        .crm_mail(inbox, &mime(1, "crm one", DATE), true, SENT)
        .await;
    let crm2 = rig
        .crm_mail(projects, &mime(2, "crm two", DATE), false, SENT)
        .await;
    for n in 3..=4 {
        rig.user_creates_mail(
            FolderRef::well_known(DistinguishedFolder::Inbox),
            mime(n, "outlook", DATE),
            false,
        )
        .await;
    }
    rig.sync().await;
    let target = ews::Target::impersonating(USER);
    let check = || compare(&rig.db, &rig.client, &target, Area::Mail, 1, 1, "");
    assert_eq!(check().await.unwrap(), vec![], "converged after the sync");

    // A message moved to another folder in Outlook, not synced yet: a folder mismatch; moved
    // back, equal again (paired by its stamp although its id changed twice).
    let ex = rig.exchange_folders().await;
    let in_projects = rig.exchange_mails(&ex["Inbox/Projekte"]).await;
    assert_eq!(in_projects.len(), 1);
    let moved = rig
        .call(&ews::ops::MoveItem {
            ids: vec![in_projects[0].2.clone()],
            to: FolderRef::well_known(DistinguishedFolder::SentItems),
        })
        .await
        .remove(0)
        .unwrap();
    assert_eq!(
        check().await.unwrap(),
        vec![Difference::Fields(
            crm2,
            vec![(
                "folder".into(),
                Some("inbox/projekte".into()),
                Some("sentitems".into())
            )]
        )]
    );
    rig.call(&ews::ops::MoveItem {
        ids: vec![moved.expect("MoveItem names the new id")],
        to: FolderRef::Id(ex["Inbox/Projekte"].clone()),
    })
    .await;
    assert_eq!(check().await.unwrap(), vec![]);

    // Behind mailsync's back: a read flag flipped in the CRM (mismatched), a CRM mail and an
    // Outlook mail nobody synced (lost, each way), a second message stamped with crm2's id
    // (duplicated), and crm1's row deleted while its message stays (resurrected).
    exec(
        &rig.db,
        "UPDATE crm_mails SET is_read = NOT is_read WHERE subject <> 'crm'",
    )
    .await;
    let lost_in_crm = rig
        .crm_mail(inbox, &mime(5, "crm five", DATE), false, SENT)
        .await;
    rig.user_creates_mail(
        FolderRef::well_known(DistinguishedFolder::Inbox),
        mime(6, "outlook six", DATE),
        false,
    )
    .await;
    rig.call(&CreateItem {
        folder: Some(FolderRef::well_known(DistinguishedFolder::Inbox)),
        items: vec![Item::Message(Message {
            mime: Some(mime(2, "crm two", DATE)),
            is_read: Some(false),
            extended: vec![ews::types::ExtendedProperty {
                uri: fields::crm_id_uri(),
                value: fields::crm_stamp("crm_mails", crm2),
            }],
            ..Message::default()
        })],
        disposition: Some(MessageDisposition::SaveOnly),
    })
    .await;
    exec(&rig.db, &format!("DELETE FROM crm_mails WHERE id = {crm1}")).await;

    let diffs = check().await.unwrap();
    let mut kinds: Vec<&str> = diffs.iter().map(Difference::kind).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "duplicated",
            "lost",
            "lost",
            "mismatched",
            "mismatched",
            "resurrected"
        ],
        "{diffs:#?}"
    );
    assert!(diffs.contains(&Difference::Duplicate(crm2)), "{diffs:#?}");
    assert!(
        diffs.contains(&Difference::MissingInExchange(lost_in_crm)),
        "{diffs:#?}"
    );
    assert!(
        diffs
            .iter()
            .any(|d| matches!(d, Difference::Resurrected(_, id) if *id == crm1)),
        "{diffs:#?}"
    );
    assert!(
        diffs
            .iter()
            .any(|d| matches!(d, Difference::Fields(_, f) if f.len() == 1 && f[0].0 == "is_read")),
        "{diffs:#?}"
    );
    rig.finish().await;
}

/// The breaker for mail: a folder deleted in Exchange with its messages is held (the CRM keeps
/// the folder and its mails); rejected, the folder is created again in Exchange with its
/// messages; deleted again and approved, it goes from the CRM. Then many messages deleted at
/// once in a folder: held, approved, deleted.
#[tokio::test]
async fn a_mail_folder_deleted_with_its_messages_is_held_then_restored_or_deleted() {
    use mailsync::db::integrity::{Decision, Side};
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let rig = Rig::sqlite(Options::default()).await;
    let inbox = rig.crm_folder("Inbox", Some("inbox"), None).await;
    let projects = rig.crm_folder("Projekte", None, Some(inbox)).await;
    for n in 0..5 {
        rig.crm_mail(projects, &mime(100 + n, "projekt", DATE), false, SENT)
            .await;
    }
    rig.sync().await;
    let ex = rig.exchange_folders().await;
    let folder = ex["Inbox/Projekte"].clone();
    assert_eq!(rig.exchange_mails(&folder).await.len(), 5);

    // Outlook: the folder is deleted for good, messages and all.
    rig.call(&ews::ops::DeleteFolder {
        folder: folder.clone(),
        delete_type: DeleteType::HardDelete,
    })
    .await;
    rig.sync().await;
    assert_eq!(
        count(
            &rig.db,
            &format!("SELECT count(*) FROM crm_mails WHERE folder_id = {projects}")
        )
        .await,
        5,
        "nothing deleted in the CRM"
    );
    let held = rig.state.held(USER, None).await.unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        (held[0].crm_table.as_str(), held[0].side),
        ("crm_mail_folders", Side::Crm)
    );

    // Rejected: the folder comes back in Exchange with its five messages.
    rig.state
        .decide_held(USER, None, None, Decision::Reject)
        .await
        .unwrap();
    rig.sync().await;
    let ex = rig.exchange_folders().await;
    let folder = ex
        .get("Inbox/Projekte")
        .expect("the folder is back")
        .clone();
    assert_eq!(rig.exchange_mails(&folder).await.len(), 5);
    assert!(rig.state.held(USER, None).await.unwrap().is_empty());

    // Deleted again, approved: gone from the CRM with its mails.
    rig.call(&ews::ops::DeleteFolder {
        folder,
        delete_type: DeleteType::HardDelete,
    })
    .await;
    rig.sync().await;
    assert_eq!(rig.state.held(USER, None).await.unwrap().len(), 1);
    rig.state
        .decide_held(USER, None, None, Decision::Approve)
        .await
        .unwrap();
    rig.sync().await;
    assert_eq!(
        count(
            &rig.db,
            &format!("SELECT count(*) FROM crm_mail_folders WHERE id = {projects}")
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &rig.db,
            &format!("SELECT count(*) FROM crm_mails WHERE folder_id = {projects}")
        )
        .await,
        0
    );

    // 30 messages in the inbox, all deleted at once in Outlook: held; approved: deleted.
    let mut ids = Vec::new();
    for n in 0..30 {
        ids.push(
            rig.user_creates_mail(
                FolderRef::well_known(DistinguishedFolder::Inbox),
                mime(200 + n, "massenweise", DATE),
                false,
            )
            .await,
        );
    }
    rig.sync().await;
    assert_eq!(
        count(
            &rig.db,
            &format!("SELECT count(*) FROM crm_mails WHERE folder_id = {inbox}")
        )
        .await,
        30
    );
    rig.call(&DeleteItem {
        ids: ids.clone(),
        delete_type: DeleteType::HardDelete,
    })
    .await;
    rig.sync().await;
    assert_eq!(
        count(
            &rig.db,
            &format!("SELECT count(*) FROM crm_mails WHERE folder_id = {inbox}")
        )
        .await,
        30,
        "held"
    );
    let held = rig.state.held(USER, Some("crm_mails")).await.unwrap();
    assert_eq!(held.len(), 30);
    assert!(held.iter().all(|h| h.scope == "inbox"), "{held:?}");
    rig.state
        .decide_held(USER, None, None, Decision::Approve)
        .await
        .unwrap();
    rig.sync().await;
    assert_eq!(
        count(
            &rig.db,
            &format!("SELECT count(*) FROM crm_mails WHERE folder_id = {inbox}")
        )
        .await,
        0
    );
    rig.finish().await;
}

/// A mail written to Exchange by a step woken only by CRM changes, deleted in Outlook before
/// its folder is read again: the delete reaches the CRM (the folder's read from an older
/// state would report nothing), every time.
#[tokio::test]
async fn a_mail_deleted_in_outlook_right_after_we_wrote_it_is_not_lost() {
    let rig = Rig::sqlite(Options::default()).await;
    let inbox = rig.crm_folder("Inbox", Some("inbox"), None).await;
    rig.crm_mail(inbox, &mime(300, "keep", DATE), false, SENT)
        .await;
    rig.crm_mail(inbox, &mime(301, "keep", DATE), false, SENT)
        .await;
    rig.sync().await;
    for round in 0..8 {
        let id = rig
            .crm_mail(inbox, &mime(400 + round, "gone", DATE), false, SENT)
            .await;
        rig.sync_with(Cause::Crm).await;
        let written: Vec<ItemId> = common::texts(
            &rig.state,
            &format!("SELECT ews_item_id FROM ms_item_map WHERE crm_table = 'crm_mails' AND crm_id = {id}"),
        )
        .await
        .into_iter()
        .flatten()
        .map(|id| ItemId { id, change_key: None })
        .collect();
        assert!(!written.is_empty(), "round {round}: written to Exchange");
        rig.call(&DeleteItem {
            ids: written,
            delete_type: if round % 2 == 0 {
                DeleteType::HardDelete
            } else {
                DeleteType::SoftDelete
            },
        })
        .await;
        // (Without a stream here, a timer reads every folder, as the safety-net read does.)
        rig.sync_with(Cause::Timer).await;
        assert_eq!(
            count(
                &rig.db,
                &format!("SELECT count(*) FROM crm_mails WHERE id = {id}")
            )
            .await,
            0,
            "round {round}: the delete reached the CRM"
        );
    }
    assert_eq!(count(&rig.db, "SELECT count(*) FROM crm_mails").await, 2);
    rig.finish().await;
}

/// Whether a mail folder's last round finished clean is kept per folder: folder B's round
/// fails after its CreateItem (the CRM refuses the Exchange id), folder A's next round is
/// clean — B's next round still searches for stamps and links its message instead of
/// creating it a second time.
#[tokio::test]
async fn a_failed_round_in_one_mail_folder_is_searched_again_after_another_is_clean() {
    let rig = Rig::sqlite(Options::default()).await;
    let a = rig.crm_folder("Projekte A", None, None).await;
    let b = rig.crm_folder("Projekte B", None, None).await;
    rig.sync().await;
    exec(
        &rig.db,
        "CREATE TRIGGER failpoint BEFORE UPDATE OF ews_id ON crm_mails \
         BEGIN SELECT RAISE(ABORT, 'failpoint: the Exchange id refused'); END",
    )
    .await;
    rig.crm_mail(b, &mime(41, "b", DATE), false, SENT).await;
    while rig.feed.poll_once().await.unwrap().is_some() {}
    let mut causes = Causes::default();
    causes.insert(Cause::Crm);
    let failed = rig
        .engine
        .sync_folder(StepRequest {
            mailbox: USER.into(),
            folder: "mail".into(),
            full_resync: false,
            causes,
            ctx: StepContext::new(rig.throttle.clone()),
        })
        .await;
    let err = format!("{:?}", failed.expect_err("the record was refused"));
    assert!(err.contains("failpoint"), "{err}");
    let ex = rig.exchange_folders().await;
    assert_eq!(rig.exchange_mails(&ex["Projekte B"]).await.len(), 1);
    exec(&rig.db, "DROP TRIGGER failpoint").await;
    // A's round (the lower folder id goes first) finishes clean, then B's.
    rig.crm_mail(a, &mime(42, "a", DATE), false, SENT).await;
    rig.sync_with(Cause::Crm).await;
    assert_eq!(rig.exchange_mails(&ex["Projekte A"]).await.len(), 1);
    assert_eq!(
        rig.exchange_mails(&ex["Projekte B"]).await.len(),
        1,
        "B's message linked, not created twice"
    );
    assert_eq!(
        count(
            &rig.state,
            "SELECT count(*) FROM ms_item_map WHERE crm_table = 'crm_mails'"
        )
        .await,
        2
    );
    rig.finish().await;
}
