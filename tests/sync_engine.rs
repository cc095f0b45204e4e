//! The contacts/calendar/tasks engine end to end: ews-sim as Exchange, the business database
//! and the state store in SQLite and PostgreSQL, or the business database in MariaDB with the
//! state store in SQLite beside it; steps run directly (no actors), so each test says exactly
//! which step moves what.

mod common;
use common::{count, exec};

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::TimeZone;
use ews::items::{Contact, Item, Task};
use ews::ops::{
    ConflictResolution, CreateItem, DeleteItem, DeleteType, FindItem, ItemUpdate, UpdateItem, View,
};
use ews::types::{DistinguishedFolder, FolderRef, Shape};
use ews_sim::server::{self, Running, SimConfig};
use mailsync::config::{Area, AreaConfig, Leading};
use mailsync::db::{Db, MigrationSet};
use mailsync::metrics::Telemetry;
use mailsync::sync::engine::{Engine, MailboxSetup};
use mailsync::sync::feed::{Feed, Routes};
use mailsync_actors::{
    Cause, Causes, MailboxSpec, StepContext, StepRequest, SyncPort, Throttle, ThrottleSettings,
};

static PG_SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    _dir: Option<tempfile::TempDir>,
    _serial: Option<tokio::sync::MutexGuard<'static, ()>>,
}

const USER: &str = "user1@example.com";

/// The first column of the first row as text (`CAST(x AS TEXT)` is `AS CHAR` on MariaDB).
async fn scalar(db: &Db, sql: &str) -> Option<String> {
    let row: Option<(Option<String>,)> = match db {
        Db::Postgres(p) => sqlx::query_as(sql).fetch_optional(p).await.unwrap(),
        Db::Sqlite(p) => sqlx::query_as(sql).fetch_optional(p).await.unwrap(),
        Db::MySql(p) => {
            // Binary-collated columns (ews_id) come as bytes.
            let sql = sql.replace(" AS TEXT)", " AS CHAR)");
            let row: Option<(Option<Vec<u8>>,)> =
                sqlx::query_as(&sql).fetch_optional(p).await.unwrap();
            row.map(|(v,)| (v.map(|b| String::from_utf8(b).unwrap()),))
        }
    };
    row.and_then(|r| r.0)
}

fn areas(leading: Leading) -> BTreeMap<Area, AreaConfig> {
    [Area::Contacts, Area::Calendar, Area::Tasks]
        .into_iter()
        .map(|a| {
            (
                a,
                AreaConfig {
                    leading,
                    categories: vec![],
                },
            )
        })
        .collect()
}

impl Rig {
    async fn sqlite(leading: Leading) -> Rig {
        Rig::sqlite_with(areas(leading)).await
    }

    async fn sqlite_with(areas: BTreeMap<Area, AreaConfig>) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("crm.db").display());
        let db = Db::connect(&url, 5).await.unwrap();
        Rig::start(db.clone(), db, (None, None), Some(dir), None, areas).await
    }

    async fn postgres(leading: Leading) -> Option<Rig> {
        let serial = PG_SERIAL.lock().await;
        let (name, url) = common::postgres_db("sync").await?;
        let db = Db::connect(&url, 5).await.unwrap();
        Some(
            Rig::start(
                db.clone(),
                db,
                (Some(name), None),
                None,
                Some(serial),
                areas(leading),
            )
            .await,
        )
    }

    /// The business database in MariaDB, the state store in SQLite beside it.
    async fn mariadb(leading: Leading) -> Option<Rig> {
        let (name, url) = common::mariadb_db("sync").await?;
        let db = Db::connect(&url, 5).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = common::sqlite_state(dir.path()).await;
        Some(
            Rig::start(
                db,
                state,
                (None, Some(name)),
                Some(dir),
                None,
                areas(leading),
            )
            .await,
        )
    }

    async fn start(
        db: Db,
        state: Db,
        (pg_name, my_name): (Option<String>, Option<String>),
        dir: Option<tempfile::TempDir>,
        serial: Option<tokio::sync::MutexGuard<'static, ()>>,
        areas: BTreeMap<Area, AreaConfig>,
    ) -> Rig {
        db.migrate(MigrationSet::Crm).await.unwrap();
        state.migrate(MigrationSet::State).await.unwrap();
        let same_db = db.kind() != mailsync::config::DbKind::MySql;
        exec(
            &db,
            "INSERT INTO crm_tenants (id, name) VALUES (1, 'Muster GmbH')",
        )
        .await;
        exec(&db, "INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name, email) VALUES (1, 1, '1001', 'Anna', 'user1@example.com')").await;
        exec(&db, "INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name, email) VALUES (2, 1, '1002', 'Bernd', 'user2@example.com')").await;
        let sim = server::start(SimConfig {
            mailboxes: 2,
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let mut cfg = ews::ClientConfig::new(
            url::Url::parse(&sim.ews_url()).unwrap(),
            ews::Auth::Basic {
                username: "svc".into(),
                password: "secret".into(),
            },
        );
        cfg.allow_http = true;
        let client = ews::Client::new(cfg).unwrap();
        let telemetry = Telemetry::new();
        let engine = Engine::new(
            db.clone(),
            state.clone(),
            same_db,
            telemetry.service.clone(),
        );
        engine.set_mailboxes(vec![MailboxSetup {
            smtp: USER.into(),
            client: std::sync::Arc::new(client.clone()),
            target: ews::Target::impersonating(USER),
            operator: "1001".into(),
            tenant: Some(1),
            shared_folder_name: "Muster GmbH (CRM)".into(),
            areas,
            mail: Default::default(),
            smtp_relay: None,
            initial_sync: mailsync::config::InitialSync::CrmToExchange,
            breaker: Default::default(),
            sync_ambiguous: false,
        }]);
        let routes = Routes {
            by_operator: [(1, USER.into())].into_iter().collect(),
            shared_contacts: [(1, vec![USER.into()])].into_iter().collect(),
            areas: [(
                USER.into(),
                [Area::Contacts, Area::Calendar, Area::Tasks]
                    .into_iter()
                    .collect(),
            )]
            .into_iter()
            .collect(),
        };
        let feed = Feed::new(db.clone(), state.clone(), routes, Duration::from_millis(20));
        feed.start_at_end_if_new().await.unwrap();
        let throttle = Throttle::new(
            "ex1".into(),
            ThrottleSettings {
                requests_per_second: 1000.0,
                burst: 1000,
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
            _dir: dir,
            _serial: serial,
        };
        let spec = MailboxSpec {
            smtp: USER.into(),
            server: "ex1".into(),
            fingerprint: 0,
        };
        let folders = rig
            .engine
            .open_mailbox(&spec, StepContext::new(rig.throttle.clone()))
            .await
            .unwrap();
        assert_eq!(
            folders.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
            vec!["contacts", "contacts/shared", "calendar", "tasks"]
        );
        rig
    }

    async fn finish(self) {
        self.db.close().await;
        self.state.close().await;
        self.sim.stop().await;
        if let Some(name) = self.pg_name {
            common::drop_postgres(&name).await;
        }
        if let Some(name) = self.my_name {
            common::drop_mariadb(&name).await;
        }
    }

    /// Feeds the CRM changes, then runs steps of `folder` until it has nothing more to do.
    async fn sync(&self, folder: &str) -> u64 {
        self.feed.poll_once().await.unwrap();
        let mut items = 0;
        for _ in 0..10 {
            let mut causes = Causes::default();
            causes.insert(Cause::Notification);
            let report = self
                .engine
                .sync_folder(StepRequest {
                    mailbox: USER.into(),
                    folder: folder.into(),
                    full_resync: false,
                    causes,
                    ctx: StepContext::new(self.throttle.clone()),
                })
                .await
                .unwrap_or_else(|e| panic!("step of {folder}: {e}"));
            items += report.items;
            if !report.more {
                return items;
            }
        }
        panic!("{folder} kept asking for more steps");
    }

    async fn exchange_items(&self, folder: DistinguishedFolder) -> Vec<Item> {
        let op = FindItem {
            folder: FolderRef::well_known(folder),
            shape: Shape::all_properties(vec![mailsync::sync::fields::crm_id_path()]),
            view: View::IndexedPage {
                offset: 0,
                max: 1000,
            },
            restriction: None,
        };
        let target = ews::Target::impersonating(USER);
        let ids: Vec<_> = self
            .client
            .call(&target, &op)
            .await
            .unwrap()
            .output
            .items
            .iter()
            .filter_map(|i| i.id().cloned())
            .collect();
        if ids.is_empty() {
            return vec![];
        }
        let get = ews::ops::GetItem {
            ids,
            shape: Shape::all_properties(vec![mailsync::sync::fields::crm_id_path()]),
        };
        self.client
            .call(&target, &get)
            .await
            .unwrap()
            .output
            .into_iter()
            .map(Result::unwrap)
            .collect()
    }

    async fn user_creates(&self, item: Item, folder: DistinguishedFolder) -> ews::types::ItemId {
        let op = CreateItem {
            folder: Some(FolderRef::well_known(folder)),
            items: vec![item],
            disposition: None,
        };
        let target = ews::Target::own(USER);
        let mut out = self
            .client
            .call(&ews::Target::impersonating(USER), &op)
            .await
            .unwrap()
            .output;
        let _ = target;
        out.remove(0).unwrap()
    }

    async fn user_updates(&self, id: &ews::types::ItemId, item: Item, keys: &[&str]) {
        let updates = item
            .updates()
            .into_iter()
            .filter(|u| keys.contains(&u.key().as_str()))
            .collect();
        let op = UpdateItem {
            changes: vec![ItemUpdate {
                id: ews::types::ItemId {
                    id: id.id.clone(),
                    change_key: None,
                },
                updates,
            }],
            conflict: ConflictResolution::AlwaysOverwrite,
            disposition: None,
            calendar: false,
        };
        self.client
            .call(&ews::Target::impersonating(USER), &op)
            .await
            .unwrap()
            .output
            .remove(0)
            .unwrap();
    }

    async fn user_deletes(&self, id: &ews::types::ItemId) {
        let op = DeleteItem {
            ids: vec![ews::types::ItemId {
                id: id.id.clone(),
                change_key: None,
            }],
            delete_type: DeleteType::MoveToDeletedItems,
        };
        self.client
            .call(&ews::Target::impersonating(USER), &op)
            .await
            .unwrap()
            .output
            .remove(0)
            .unwrap();
    }
}

fn contact_of(item: &Item) -> &Contact {
    match item {
        Item::Contact(c) => c,
        other => panic!("not a contact: {other:?}"),
    }
}

async fn contacts_both_ways(rig: Rig) {
    // CRM -> Exchange.
    exec(&rig.db, "INSERT INTO crm_contacts (tenant_id, owner_id, given_name, surname, company, email1) VALUES (1, 1, 'Clara', 'Meier', 'ACME', 'clara@acme.example')").await;
    assert_eq!(rig.sync("contacts").await, 1);
    let items = rig.exchange_items(DistinguishedFolder::Contacts).await;
    assert_eq!(items.len(), 1);
    let c = contact_of(&items[0]);
    assert_eq!(
        (
            c.given_name.as_deref(),
            c.surname.as_deref(),
            c.email[0].as_deref()
        ),
        (Some("Clara"), Some("Meier"), Some("clara@acme.example"))
    );
    assert_eq!(
        mailsync::sync::fields::stamped_id(&items[0], "crm_contacts"),
        Some(1)
    );
    assert!(
        scalar(&rig.db, "SELECT ews_id FROM crm_contacts WHERE id = 1")
            .await
            .is_some()
    );
    // Nothing comes back: our own writes are echoes.
    assert_eq!(rig.sync("contacts").await, 0);

    // Exchange -> CRM: a contact the user creates lands under the operator and tenant.
    let created = rig
        .user_creates(
            Item::Contact(Contact {
                given_name: Some("Dora".into()),
                surname: Some("Dietz".into()),
                ..Contact::default()
            }),
            DistinguishedFolder::Contacts,
        )
        .await;
    assert_eq!(rig.sync("contacts").await, 1);
    assert_eq!(count(&rig.db, "SELECT COUNT(*) FROM crm_contacts WHERE surname = 'Dietz' AND owner_id = 1 AND tenant_id = 1").await, 1);
    assert_eq!(
        rig.sync("contacts").await,
        0,
        "the stamp written back is not a change"
    );

    // Updates both ways.
    exec(
        &rig.db,
        "UPDATE crm_contacts SET job_title = 'CTO' WHERE id = 1",
    )
    .await;
    rig.sync("contacts").await;
    let items = rig.exchange_items(DistinguishedFolder::Contacts).await;
    let clara = items
        .iter()
        .map(contact_of)
        .find(|c| c.surname.as_deref() == Some("Meier"))
        .unwrap();
    assert_eq!(clara.job_title.as_deref(), Some("CTO"));
    rig.user_updates(
        &created,
        Item::Contact(Contact {
            company_name: Some("Dietz KG".into()),
            ..Contact::default()
        }),
        &["contacts:CompanyName"],
    )
    .await;
    rig.sync("contacts").await;
    assert_eq!(
        scalar(
            &rig.db,
            "SELECT company FROM crm_contacts WHERE surname = 'Dietz'"
        )
        .await
        .as_deref(),
        Some("Dietz KG")
    );

    // Deletes both ways.
    exec(&rig.db, "DELETE FROM crm_contacts WHERE id = 1").await;
    rig.sync("contacts").await;
    rig.user_deletes(&created).await;
    rig.sync("contacts").await;
    assert!(rig
        .exchange_items(DistinguishedFolder::Contacts)
        .await
        .is_empty());
    assert_eq!(count(&rig.db, "SELECT COUNT(*) FROM crm_contacts").await, 0);
    assert_eq!(
        count(&rig.state, "SELECT COUNT(*) FROM ms_item_map").await,
        0
    );
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_sync_both_ways_on_sqlite() {
    contacts_both_ways(Rig::sqlite(Leading::Crm).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_sync_both_ways_on_postgres() {
    if let Some(rig) = Rig::postgres(Leading::Crm).await {
        contacts_both_ways(rig).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_sync_both_ways_on_mariadb() {
    if let Some(rig) = Rig::mariadb(Leading::Crm).await {
        contacts_both_ways(rig).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_merge_by_field_and_the_leader_wins_the_rest() {
    for leading in [Leading::Crm, Leading::Exchange] {
        let rig = Rig::sqlite(leading).await;
        exec(&rig.db, "INSERT INTO crm_tasks (tenant_id, owner_id, subject, status, importance) VALUES (1, 1, 'Angebot', 'not_started', 'normal')").await;
        rig.sync("tasks").await;
        let id = rig.exchange_items(DistinguishedFolder::Tasks).await[0]
            .id()
            .cloned()
            .unwrap();
        // Both sides change the subject; the CRM also the importance, Exchange the status.
        exec(
            &rig.db,
            "UPDATE crm_tasks SET subject = 'Angebot (CRM)', importance = 'high' WHERE id = 1",
        )
        .await;
        rig.user_updates(
            &id,
            Item::Task(Task {
                subject: Some("Angebot (Outlook)".into()),
                status: ews::items::TaskStatus::InProgress,
                ..Task::default()
            }),
            &["item:Subject", "task:Status"],
        )
        .await;
        rig.sync("tasks").await;
        let expected = match leading {
            Leading::Crm => "Angebot (CRM)",
            Leading::Exchange => "Angebot (Outlook)",
        };
        assert_eq!(
            scalar(&rig.db, "SELECT subject FROM crm_tasks WHERE id = 1")
                .await
                .as_deref(),
            Some(expected)
        );
        assert_eq!(
            scalar(&rig.db, "SELECT status FROM crm_tasks WHERE id = 1")
                .await
                .as_deref(),
            Some("in_progress")
        );
        assert_eq!(
            scalar(&rig.db, "SELECT importance FROM crm_tasks WHERE id = 1")
                .await
                .as_deref(),
            Some("high")
        );
        let task = match &rig.exchange_items(DistinguishedFolder::Tasks).await[0] {
            Item::Task(t) => t.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(task.subject.as_deref(), Some(expected));
        assert_eq!(task.importance, ews::items::Importance::High);
        assert_eq!(task.status, ews::items::TaskStatus::InProgress);
        assert_eq!(
            count(
                &rig.db,
                "SELECT COUNT(*) FROM ms_conflicts WHERE fields LIKE '%subject%'"
            )
            .await,
            1
        );
        assert_eq!(
            rig.sync("tasks").await,
            0,
            "converged: nothing left to write"
        );
        rig.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appointments_keep_time_zones_all_day_and_recurrence_both_ways() {
    let rig = Rig::sqlite(Leading::Crm).await;
    exec(
        &rig.db,
        "INSERT INTO crm_appointments (tenant_id, owner_id, subject, starts_at, ends_at, time_zone, recurrence, reminder_minutes, show_as) \
         VALUES (1, 1, 'Jour fixe', '2026-11-24T08:00:00Z', '2026-11-24T09:00:00Z', 'Europe/Berlin', 'FREQ=WEEKLY;BYDAY=TU;COUNT=10', 15, 'tentative')",
    )
    .await;
    exec(
        &rig.db,
        "INSERT INTO crm_appointments (tenant_id, owner_id, subject, starts_at, ends_at, all_day, time_zone) \
         VALUES (1, 1, 'Betriebsausflug', '2026-11-26T23:00:00Z', '2026-11-27T23:00:00Z', 1, 'Europe/Berlin')",
    )
    .await;
    assert_eq!(rig.sync("calendar").await, 2);
    let items = rig.exchange_items(DistinguishedFolder::Calendar).await;
    let by_subject = |s: &str| match items
        .iter()
        .find(|i| matches!(i, Item::CalendarItem(c) if c.subject.as_deref() == Some(s)))
    {
        Some(Item::CalendarItem(c)) => c.clone(),
        _ => panic!("{s} not in Exchange: {items:?}"),
    };
    let jf = by_subject("Jour fixe");
    assert_eq!(
        jf.start_time_zone.as_deref(),
        Some("W. Europe Standard Time")
    );
    assert_eq!(jf.reminder_minutes, Some(15));
    assert_eq!(jf.free_busy, ews::items::FreeBusy::Tentative);
    let rec = jf.recurrence.clone().expect("a series");
    assert_eq!(
        mailsync::sync::recurrence::to_rrule(&rec).unwrap(),
        "FREQ=WEEKLY;INTERVAL=1;BYDAY=TU;COUNT=10"
    );
    assert!(by_subject("Betriebsausflug").is_all_day);
    assert_eq!(rig.sync("calendar").await, 0, "no echo");

    // Created in Outlook, in New York time: arrives with its zone and times.
    let start = chrono::Utc.with_ymd_and_hms(2026, 12, 1, 15, 0, 0).unwrap();
    rig.user_creates(
        Item::CalendarItem(ews::items::CalendarItem {
            subject: Some("Call NY".into()),
            start: Some(start),
            end: Some(start + chrono::Duration::minutes(30)),
            start_time_zone: Some("Eastern Standard Time".into()),
            end_time_zone: Some("Eastern Standard Time".into()),
            ..Default::default()
        }),
        DistinguishedFolder::Calendar,
    )
    .await;
    assert_eq!(rig.sync("calendar").await, 1);
    assert_eq!(
        scalar(
            &rig.db,
            "SELECT time_zone FROM crm_appointments WHERE subject = 'Call NY'"
        )
        .await
        .as_deref(),
        Some("America/New_York")
    );
    assert_eq!(
        count(
            &rig.db,
            "SELECT COUNT(*) FROM crm_appointments WHERE owner_id = 1"
        )
        .await,
        3
    );
    assert_eq!(rig.sync("calendar").await, 0);

    // A recurrence Exchange cannot hold goes to the failure log; the rest syncs on.
    exec(
        &rig.db,
        "INSERT INTO crm_appointments (tenant_id, owner_id, subject, starts_at, ends_at, recurrence) \
         VALUES (1, 1, 'Kaputt', '2026-11-24T08:00:00Z', '2026-11-24T09:00:00Z', 'FREQ=MONTHLY;BYDAY=MO,WE;BYSETPOS=2')",
    )
    .await;
    exec(&rig.db, "INSERT INTO crm_appointments (tenant_id, owner_id, subject, starts_at, ends_at) VALUES (1, 1, 'Gut', '2026-11-25T08:00:00Z', '2026-11-25T09:00:00Z')").await;
    assert_eq!(rig.sync("calendar").await, 1);
    let error = scalar(
        &rig.db,
        "SELECT error FROM ms_failures WHERE crm_table = 'crm_appointments'",
    )
    .await
    .unwrap();
    assert!(error.contains("BYSETPOS"), "{error}");
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_rows_with_the_filter_categories_sync_and_a_row_that_stops_matching_leaves_exchange_only(
) {
    let mut config = areas(Leading::Crm);
    config.get_mut(&Area::Contacts).unwrap().categories = vec!["CRM".into()];
    let rig = Rig::sqlite_with(config).await;
    exec(&rig.db, r#"INSERT INTO crm_contacts (tenant_id, owner_id, surname, categories) VALUES (1, 1, 'Mit', '["CRM","VIP"]')"#).await;
    exec(&rig.db, r#"INSERT INTO crm_contacts (tenant_id, owner_id, surname, categories) VALUES (1, 1, 'Ohne', '["VIP"]')"#).await;
    rig.sync("contacts").await;
    let names = |items: Vec<Item>| {
        items
            .iter()
            .map(|i| contact_of(i).surname.clone().unwrap_or_default())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(rig.exchange_items(DistinguishedFolder::Contacts).await),
        vec!["Mit"]
    );

    // Outlook: only items with the category are imported.
    for (surname, categories) in [
        ("Outlook ohne", vec![]),
        ("Outlook mit", vec!["crm".to_string()]),
    ] {
        let contact = Contact {
            surname: Some(surname.into()),
            categories,
            ..Contact::default()
        };
        rig.user_creates(Item::Contact(contact), DistinguishedFolder::Contacts)
            .await;
    }
    rig.sync("contacts").await;
    assert_eq!(
        count(
            &rig.db,
            "SELECT COUNT(*) FROM crm_contacts WHERE surname LIKE 'Outlook%'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &rig.db,
            "SELECT COUNT(*) FROM crm_contacts WHERE surname = 'Outlook mit'"
        )
        .await,
        1
    );

    // The CRM row loses the category: gone from Exchange, kept in the CRM.
    exec(
        &rig.db,
        r#"UPDATE crm_contacts SET categories = '["VIP"]' WHERE surname = 'Mit'"#,
    )
    .await;
    rig.sync("contacts").await;
    rig.sync("contacts").await;
    let left = names(rig.exchange_items(DistinguishedFolder::Contacts).await);
    assert!(!left.contains(&"Mit".to_string()), "{left:?}");
    assert_eq!(
        count(
            &rig.db,
            "SELECT COUNT(*) FROM crm_contacts WHERE surname = 'Mit'"
        )
        .await,
        1
    );
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_contacts_go_to_the_tenant_subfolder_and_owner_changes_move_rows() {
    let rig = Rig::sqlite(Leading::Crm).await;
    exec(
        &rig.db,
        "INSERT INTO crm_contacts (tenant_id, owner_id, surname) VALUES (1, NULL, 'Geteilt')",
    )
    .await;
    exec(
        &rig.db,
        "INSERT INTO crm_contacts (tenant_id, owner_id, surname) VALUES (1, 2, 'Fremd')",
    )
    .await;
    rig.sync("contacts").await;
    assert!(
        rig.exchange_items(DistinguishedFolder::Contacts)
            .await
            .is_empty(),
        "neither is in the own folder"
    );
    let target = ews::Target::impersonating(USER);
    let find = ews::ops::FindFolder {
        parent: FolderRef::well_known(DistinguishedFolder::Contacts),
        traversal: ews::ops::Traversal::Shallow,
        shape: Shape::all_properties(vec![]),
    };
    let folders = rig.client.call(&target, &find).await.unwrap().output;
    let shared = folders
        .iter()
        .find(|f| f.display_name.as_deref() == Some("Muster GmbH (CRM)"))
        .expect("the shared subfolder");
    let in_shared = FindItem {
        folder: FolderRef::Id(shared.id.clone().unwrap()),
        shape: Shape::all_properties(vec![]),
        view: View::IndexedPage {
            offset: 0,
            max: 100,
        },
        restriction: None,
    };
    let items = rig
        .client
        .call(&target, &in_shared)
        .await
        .unwrap()
        .output
        .items;
    assert_eq!(items.len(), 1);

    // Bernd's contact becomes Anna's: it arrives in her own folder.
    exec(
        &rig.db,
        "UPDATE crm_contacts SET owner_id = 1 WHERE surname = 'Fremd'",
    )
    .await;
    rig.sync("contacts").await;
    let own = rig.exchange_items(DistinguishedFolder::Contacts).await;
    assert_eq!(
        own.iter()
            .map(|i| contact_of(i).surname.clone().unwrap())
            .collect::<Vec<_>>(),
        vec!["Fremd"]
    );
    // And it leaves again when it goes back.
    exec(
        &rig.db,
        "UPDATE crm_contacts SET owner_id = 2 WHERE surname = 'Fremd'",
    )
    .await;
    rig.sync("contacts").await;
    assert!(rig
        .exchange_items(DistinguishedFolder::Contacts)
        .await
        .is_empty());
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_against_a_concurrent_change_is_decided_by_the_leading_system() {
    for leading in [Leading::Crm, Leading::Exchange] {
        let rig = Rig::sqlite(leading).await;
        // Deleted in Exchange while changed in the CRM.
        exec(
            &rig.db,
            "INSERT INTO crm_tasks (tenant_id, owner_id, subject) VALUES (1, 1, 'Eins')",
        )
        .await;
        rig.sync("tasks").await;
        let id = rig.exchange_items(DistinguishedFolder::Tasks).await[0]
            .id()
            .cloned()
            .unwrap();
        exec(
            &rig.db,
            "UPDATE crm_tasks SET subject = 'Eins geändert' WHERE subject = 'Eins'",
        )
        .await;
        rig.user_deletes(&id).await;
        rig.sync("tasks").await;
        rig.sync("tasks").await;
        let rows = count(
            &rig.db,
            "SELECT COUNT(*) FROM crm_tasks WHERE subject = 'Eins geändert'",
        )
        .await;
        let items = rig.exchange_items(DistinguishedFolder::Tasks).await;
        match leading {
            Leading::Crm => {
                assert_eq!(rows, 1, "the CRM leads: the row stays");
                assert_eq!(items.len(), 1, "and is recreated in Exchange");
            }
            Leading::Exchange => {
                assert_eq!(rows, 0, "Exchange leads: the delete wins");
                assert!(items.is_empty());
            }
        }

        // Deleted in the CRM while changed in Exchange.
        exec(
            &rig.db,
            "INSERT INTO crm_tasks (tenant_id, owner_id, subject) VALUES (1, 1, 'Zwei')",
        )
        .await;
        rig.sync("tasks").await;
        let zwei = rig
            .exchange_items(DistinguishedFolder::Tasks)
            .await
            .into_iter()
            .find(|i| matches!(i, Item::Task(t) if t.subject.as_deref() == Some("Zwei")))
            .and_then(|i| i.id().cloned())
            .unwrap();
        exec(&rig.db, "DELETE FROM crm_tasks WHERE subject = 'Zwei'").await;
        rig.user_updates(
            &zwei,
            Item::Task(Task {
                subject: Some("Zwei (Outlook)".into()),
                ..Task::default()
            }),
            &["item:Subject"],
        )
        .await;
        rig.sync("tasks").await;
        rig.sync("tasks").await;
        let rows = count(
            &rig.db,
            "SELECT COUNT(*) FROM crm_tasks WHERE subject = 'Zwei (Outlook)'",
        )
        .await;
        let in_exchange = rig
            .exchange_items(DistinguishedFolder::Tasks)
            .await
            .iter()
            .any(|i| matches!(i, Item::Task(t) if t.subject.as_deref() == Some("Zwei (Outlook)")));
        match leading {
            Leading::Crm => assert!(rows == 0 && !in_exchange, "the CRM's delete wins"),
            Leading::Exchange => assert!(
                rows == 1 && in_exchange,
                "Exchange's change wins: the row comes back"
            ),
        }
        assert!(
            count(
                &rig.db,
                "SELECT COUNT(*) FROM ms_conflicts WHERE fields LIKE '%deleted%'"
            )
            .await
                >= 2
        );
        rig.finish().await;
    }
}

/// What Outlook sends when a user changes (`set`: Some) or deletes one occurrence of a series:
/// hand-written SOAP, since mailsync itself never touches single occurrences.
async fn outlook_changes_occurrence(rig: &Rig, master: &str, index: u32, set: Option<&str>) {
    let id =
        format!(r#"<t:OccurrenceItemId RecurringMasterId="{master}" InstanceIndex="{index}"/>"#);
    let body = match set {
        Some(subject) => format!(
            r#"<m:UpdateItem ConflictResolution="AlwaysOverwrite" SendMeetingInvitationsOrCancellations="SendToNone"><m:ItemChanges><t:ItemChange>{id}<t:Updates><t:SetItemField><t:FieldURI FieldURI="item:Subject"/><t:CalendarItem><t:Subject>{subject}</t:Subject></t:CalendarItem></t:SetItemField></t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>"#
        ),
        None => format!(
            r#"<m:DeleteItem DeleteType="MoveToDeletedItems" SendMeetingCancellations="SendToNone"><m:ItemIds>{id}</m:ItemIds></m:DeleteItem>"#
        ),
    };
    let envelope = format!(
        r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><s:Header><t:RequestServerVersion Version="Exchange2013_SP1"/><t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>{USER}</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation></s:Header><s:Body>{body}</s:Body></s:Envelope>"#
    );
    let response = reqwest::Client::new()
        .post(rig.sim.ews_url())
        .basic_auth("svc", Some("secret"))
        .header("Content-Type", "text/xml; charset=utf-8")
        .body(envelope)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(
        text.contains("ResponseClass=\"Success\""),
        "the occurrence change failed: {text}"
    );
}

fn calendar_item(items: &[Item], subject: &str) -> ews::items::CalendarItem {
    match items
        .iter()
        .find(|i| matches!(i, Item::CalendarItem(c) if c.subject.as_deref() == Some(subject)))
    {
        Some(Item::CalendarItem(c)) => c.clone(),
        _ => panic!("{subject} not in Exchange: {items:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlook_exceptions_survive_crm_edits_and_appointments_update_and_delete_both_ways() {
    if let Some(rig) = Rig::postgres(Leading::Crm).await {
        outlook_exceptions_and_appointments_both_ways(rig).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlook_exceptions_survive_crm_edits_and_appointments_update_and_delete_both_ways_on_mariadb(
) {
    if let Some(rig) = Rig::mariadb(Leading::Crm).await {
        outlook_exceptions_and_appointments_both_ways(rig).await;
    }
}

async fn outlook_exceptions_and_appointments_both_ways(rig: Rig) {
    exec(
        &rig.db,
        "INSERT INTO crm_appointments (tenant_id, owner_id, subject, location, starts_at, ends_at, time_zone, recurrence) \
         VALUES (1, 1, 'Jour fixe', 'Raum 1', '2026-11-24T08:00:00Z', '2026-11-24T09:00:00Z', 'Europe/Berlin', 'FREQ=WEEKLY;BYDAY=TU;COUNT=10')",
    )
    .await;
    exec(
        &rig.db,
        "INSERT INTO crm_appointments (tenant_id, owner_id, subject, starts_at, ends_at) VALUES (1, 1, 'Einzeltermin', '2026-11-25T10:00:00Z', '2026-11-25T11:00:00Z')",
    )
    .await;
    assert_eq!(rig.sync("calendar").await, 2);
    let items = rig.exchange_items(DistinguishedFolder::Calendar).await;
    let master = calendar_item(&items, "Jour fixe").id.unwrap();

    let crm = |column: &str| {
        let sql = format!("SELECT {column} FROM crm_appointments WHERE recurrence IS NOT NULL");
        let db = rig.db.clone();
        async move { scalar(&db, &sql).await }
    };
    let version = crm("CAST(version AS TEXT)").await;

    // In Outlook the user renames the second Tuesday and cancels the third.
    outlook_changes_occurrence(&rig, &master.id, 2, Some("Jour fixe (mit Kunde)")).await;
    outlook_changes_occurrence(&rig, &master.id, 3, None).await;
    rig.sync("calendar").await;
    assert_eq!(
        (crm("subject").await, crm("CAST(version AS TEXT)").await),
        (Some("Jour fixe".to_string()), version),
        "the series itself did not change: nothing is written to the CRM"
    );
    assert_eq!(
        count(&rig.db, "SELECT COUNT(*) FROM crm_appointments").await,
        2,
        "an exception is never imported as an appointment of its own"
    );

    // The CRM renames and moves the series to another room: the exceptions stay.
    exec(
        &rig.db,
        "UPDATE crm_appointments SET subject = 'Jour fixe Vertrieb', location = 'Raum 2' WHERE subject = 'Jour fixe'",
    )
    .await;
    rig.sync("calendar").await;
    let items = rig.exchange_items(DistinguishedFolder::Calendar).await;
    let series = calendar_item(&items, "Jour fixe Vertrieb");
    assert_eq!(series.location.as_deref(), Some("Raum 2"));
    assert_eq!(
        (
            series.modified_occurrences.len(),
            series.deleted_occurrences.len()
        ),
        (1, 1),
        "Outlook's exceptions survive the CRM's update of the series"
    );
    assert_eq!(
        series.deleted_occurrences[0].start,
        Some(chrono::Utc.with_ymd_and_hms(2026, 12, 8, 8, 0, 0).unwrap())
    );

    // Updated in Outlook: arrives in the CRM.
    let single = calendar_item(&items, "Einzeltermin").id.unwrap();
    rig.user_updates(
        &single,
        Item::CalendarItem(ews::items::CalendarItem {
            location: Some("Kantine".into()),
            ..Default::default()
        }),
        &["calendar:Location"],
    )
    .await;
    rig.sync("calendar").await;
    assert_eq!(
        scalar(
            &rig.db,
            "SELECT location FROM crm_appointments WHERE subject = 'Einzeltermin'"
        )
        .await
        .as_deref(),
        Some("Kantine")
    );

    // Deleted in Outlook: gone from the CRM; deleted in the CRM: gone from Exchange.
    rig.user_deletes(&single).await;
    rig.sync("calendar").await;
    assert_eq!(
        count(
            &rig.db,
            "SELECT COUNT(*) FROM crm_appointments WHERE subject = 'Einzeltermin'"
        )
        .await,
        0
    );
    exec(
        &rig.db,
        "DELETE FROM crm_appointments WHERE subject = 'Jour fixe Vertrieb'",
    )
    .await;
    rig.sync("calendar").await;
    assert!(rig
        .exchange_items(DistinguishedFolder::Calendar)
        .await
        .is_empty());
    assert_eq!(rig.sync("calendar").await, 0, "and nothing echoes");
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appointments_link_by_uid_instead_of_duplicating() {
    let rig = Rig::sqlite(Leading::Crm).await;
    let start = chrono::Utc.with_ymd_and_hms(2026, 12, 3, 9, 0, 0).unwrap();
    let invitation = |subject: &str, uid: &str, location: &str| {
        Item::CalendarItem(ews::items::CalendarItem {
            subject: Some(subject.into()),
            location: Some(location.into()),
            start: Some(start),
            end: Some(start + chrono::Duration::hours(1)),
            uid: Some(uid.into()),
            ..Default::default()
        })
    };
    // The same meeting in Outlook (an invitation) and in the CRM (recorded with its UID),
    // the room differing.
    rig.user_creates(
        invitation("Kick-off", "INVITE-42", "Raum A"),
        DistinguishedFolder::Calendar,
    )
    .await;
    exec(
        &rig.db,
        "INSERT INTO crm_appointments (tenant_id, owner_id, subject, location, starts_at, ends_at, uid) \
         VALUES (1, 1, 'Kick-off', 'Raum B', '2026-12-03T09:00:00Z', '2026-12-03T10:00:00Z', 'INVITE-42')",
    )
    .await;
    let spec = MailboxSpec {
        smtp: USER.into(),
        server: "ex1".into(),
        fingerprint: 0,
    };
    rig.engine
        .initial_sync(
            &spec,
            mailsync::sync::engine::Direction::CrmToExchange,
            rig.throttle.clone(),
            false,
            &|_, _, _| {},
        )
        .await
        .unwrap();
    let items = rig.exchange_items(DistinguishedFolder::Calendar).await;
    assert_eq!(items.len(), 1, "linked, not copied: {items:?}");
    let row_id = count(
        &rig.db,
        "SELECT id FROM crm_appointments WHERE uid = 'INVITE-42'",
    )
    .await;
    assert_eq!(
        mailsync::sync::fields::stamped_id(&items[0], "crm_appointments"),
        Some(row_id),
        "the Exchange item now carries the CRM id"
    );
    assert_eq!(
        calendar_item(&items, "Kick-off").location.as_deref(),
        Some("Raum B"),
        "the leading system's value"
    );
    assert_eq!(
        count(&rig.db, "SELECT COUNT(*) FROM crm_appointments").await,
        1
    );

    // In continuous sync too; and a row created from Exchange keeps the item's UID.
    exec(
        &rig.db,
        "INSERT INTO crm_appointments (tenant_id, owner_id, subject, starts_at, ends_at, uid) \
         VALUES (1, 1, 'Review', '2026-12-03T09:00:00Z', '2026-12-03T10:00:00Z', 'INVITE-43')",
    )
    .await;
    rig.user_creates(
        invitation("Review", "INVITE-43", "Raum C"),
        DistinguishedFolder::Calendar,
    )
    .await;
    rig.user_creates(
        invitation("Neu aus Outlook", "INVITE-44", "Raum D"),
        DistinguishedFolder::Calendar,
    )
    .await;
    rig.sync("calendar").await;
    rig.sync("calendar").await;
    assert_eq!(
        rig.exchange_items(DistinguishedFolder::Calendar)
            .await
            .len(),
        3
    );
    assert_eq!(
        count(&rig.db, "SELECT COUNT(*) FROM crm_appointments").await,
        3
    );
    assert_eq!(
        scalar(
            &rig.db,
            "SELECT uid FROM crm_appointments WHERE subject = 'Neu aus Outlook'"
        )
        .await
        .as_deref(),
        Some("INVITE-44")
    );
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_created_in_outlook_arrive_in_the_crm_and_crm_edits_go_back() {
    if let Some(rig) = Rig::postgres(Leading::Crm).await {
        tasks_from_outlook_and_back(rig).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_created_in_outlook_arrive_in_the_crm_and_crm_edits_go_back_on_mariadb() {
    if let Some(rig) = Rig::mariadb(Leading::Crm).await {
        tasks_from_outlook_and_back(rig).await;
    }
}

async fn tasks_from_outlook_and_back(rig: Rig) {
    let due = chrono::Utc.with_ymd_and_hms(2026, 12, 10, 0, 0, 0).unwrap();
    let id = rig
        .user_creates(
            Item::Task(Task {
                subject: Some("Rückruf Kunde".into()),
                due_date: Some(due),
                status: ews::items::TaskStatus::InProgress,
                importance: ews::items::Importance::High,
                ..Task::default()
            }),
            DistinguishedFolder::Tasks,
        )
        .await;
    rig.sync("tasks").await;
    let row = |column: &str| {
        let sql =
            format!("SELECT CAST({column} AS TEXT) FROM crm_tasks WHERE subject LIKE 'Rückruf%'");
        let db = rig.db.clone();
        async move { scalar(&db, &sql).await }
    };
    assert_eq!(
        (
            row("owner_id").await.as_deref(),
            row("tenant_id").await.as_deref(),
            row("status").await.as_deref(),
            row("importance").await.as_deref(),
            row("due_date").await.as_deref()
        ),
        (
            Some("1"),
            Some("1"),
            Some("in_progress"),
            Some("high"),
            Some("2026-12-10")
        ),
        "under the mailbox's operator and tenant, field by field"
    );
    // Edited in the CRM: the same Exchange item changes, nothing is duplicated.
    exec(
        &rig.db,
        "UPDATE crm_tasks SET status = 'completed', percent_complete = 100 WHERE subject LIKE 'Rückruf%'",
    )
    .await;
    rig.sync("tasks").await;
    let items = rig.exchange_items(DistinguishedFolder::Tasks).await;
    assert_eq!(items.len(), 1);
    match &items[0] {
        Item::Task(t) => {
            assert_eq!(t.id.as_ref().map(|i| i.id.as_str()), Some(id.id.as_str()));
            assert_eq!(t.status, ews::items::TaskStatus::Completed);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(rig.sync("tasks").await, 0, "no echo");
    rig.finish().await;
}

/// Outlook's "Delete" moves a contact to Deleted Items. The stream port must wake the folder
/// the item left: its subscription is to the contacts folder only, so the MovedEvent (with
/// OldParentFolderId) is the one thing that tells it. Nothing else happens meanwhile, so a
/// wake-up of `contacts` here comes from that event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_moved_to_deleted_items_wakes_the_contacts_folder_through_the_stream() {
    use futures_util::StreamExt;
    use mailsync::sync::stream::EwsStream;
    use mailsync_actors::{GroupInfo, StreamEvent, StreamPort};

    let rig = Rig::sqlite(Leading::Crm).await;
    let contact = Item::Contact(Contact {
        surname: Some("Gelöscht".into()),
        ..Contact::default()
    });
    let id = rig
        .user_creates(contact, DistinguishedFolder::Contacts)
        .await;
    rig.sync("contacts").await;
    assert_eq!(count(&rig.db, "SELECT COUNT(*) FROM crm_contacts").await, 1);

    let port = EwsStream::new(rig.engine.clone());
    let group = GroupInfo {
        server: "ex1".into(),
        group: 0,
        anchor: USER.into(),
    };
    let sub = port
        .subscribe(
            &group,
            &USER.into(),
            &["contacts".into()],
            rig.throttle.clone(),
        )
        .await
        .unwrap();
    let mut events = port
        .stream(&group, vec![sub.clone()], Duration::from_secs(60))
        .await
        .unwrap();
    rig.user_deletes(&id).await;
    let woken = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.next().await {
                Some(StreamEvent::Changed {
                    subscription,
                    folder,
                }) => return (subscription, folder.map(|f| f.to_string())),
                Some(StreamEvent::Heartbeat) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("no notification for the contacts folder within 10 s");
    assert_eq!(woken, (sub, Some("contacts".to_string())));
    // The step it causes finds the contact gone and deletes the CRM row.
    rig.sync("contacts").await;
    assert_eq!(count(&rig.db, "SELECT COUNT(*) FROM crm_contacts").await, 0);
    rig.finish().await;
}
