//! The first contact of two sides that both hold records: matching links instead of copying
//! (identical records, records changed on one side, ambiguous ones left alone), `mailsync plan`
//! says so beforehand with read operations only and writes nothing, and `mailsync run`
//! honours `initial_sync` on a mailbox's first start — none, crm-to-exchange, exchange-to-crm.

mod common;
use common::rig::{Rig, RigOptions, USERS};
use common::{count, exec, Service};

use std::collections::BTreeMap;
use std::time::Duration;

use ews::items::{Contact, Item};
use ews::types::{DistinguishedFolder, FolderRef};
use ews_sim::server::{self, SimConfig};
use mailsync::config::Area;
use mailsync::db::{Db, MigrationSet};

const U: &str = USERS[0];

fn outlook(given: &str, surname: &str, email: &str, phone: Option<&str>) -> Item {
    let mut c = Contact {
        given_name: Some(given.into()),
        surname: Some(surname.into()),
        ..Contact::default()
    };
    c.email[0] = Some(email.into());
    c.phones[0] = phone.map(str::to_owned);
    Item::Contact(c)
}

/// The overlap of the issue's example: 10 CRM and 10 Outlook contacts of the same operator,
/// 6 of them the same people (4 identical, 1 with another phone in Outlook, 1 with an
/// Outlook-only mobile number), 3 only in the CRM, 2 only in Outlook, and one CRM contact
/// whose address two Outlook contacts carry (ambiguous).
async fn overlap(db: &Db, outlook_create: impl AsyncFnOnce(Vec<Item>)) {
    let mut rows = Vec::new();
    for i in 1..=6 {
        rows.push(format!(
            "(1, 1, 'Same{i}', 'Person', 'same{i}@example.com', '+49 1')"
        ));
    }
    for i in 1..=3 {
        rows.push(format!(
            "(1, 1, 'Crm{i}', 'Only', 'crm{i}@example.com', NULL)"
        ));
    }
    rows.push("(1, 1, 'Team', 'Mailbox', 'team@example.com', NULL)".into());
    exec(
        db,
        &format!(
            "INSERT INTO crm_contacts (tenant_id, owner_id, given_name, surname, email1, business_phone) VALUES {}",
            rows.join(", ")
        ),
    )
    .await;
    let mut items = Vec::new();
    for i in 1..=4 {
        items.push(outlook(
            &format!("Same{i}"),
            "Person",
            &format!("same{i}@example.com"),
            Some("+49 1"),
        ));
    }
    items.push(outlook(
        "Same5",
        "Person",
        "same5@example.com",
        Some("+49 555"),
    ));
    let mut six = outlook("Same6", "Person", "same6@example.com", Some("+49 1"));
    if let Item::Contact(c) = &mut six {
        c.phones[1] = Some("+49 171 6".into());
    }
    items.push(six);
    items.push(outlook("Outlook1", "Only", "ol1@example.com", None));
    items.push(outlook("Outlook2", "Only", "ol2@example.com", None));
    items.push(outlook("Team", "A", "team@example.com", None));
    items.push(outlook("Team", "B", "team@example.com", None));
    outlook_create(items).await;
}

fn emails(items: &[Item]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for i in items {
        if let Item::Contact(c) = i {
            if let Some(e) = &c.email[0] {
                *out.entry(e.to_lowercase()).or_default() += 1;
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_sides_link_instead_of_copying_and_ambiguous_ones_wait() {
    let rig = Rig::new(RigOptions {
        areas: vec![Area::Contacts],
        ..RigOptions::default()
    })
    .await
    .unwrap();
    overlap(&rig.db, async |items| {
        rig.user_creates(
            U,
            FolderRef::well_known(DistinguishedFolder::Contacts),
            items,
        )
        .await;
    })
    .await;
    // The first start (initial_sync = crm-to-exchange) runs the first contact.
    rig.sync(U, "contacts").await;
    let items = rig.items(U, DistinguishedFolder::Contacts).await;
    let by_email = emails(&items);
    assert!(
        by_email
            .iter()
            .filter(|(e, _)| *e != "team@example.com")
            .all(|(_, n)| *n == 1),
        "no address twice in Exchange: {by_email:?}"
    );
    // 10 in Outlook + the 3 CRM-only; the ambiguous CRM contact stays out.
    assert_eq!(items.len(), 13, "{by_email:?}");
    // 10 in the CRM + the 2 Outlook-only; the ambiguous Outlook pair stays out.
    assert_eq!(
        count(&rig.db, "SELECT COUNT(*) FROM crm_contacts").await,
        12
    );
    assert_eq!(
        count(
            &rig.db,
            "SELECT COUNT(*) FROM crm_contacts WHERE lower(email1) LIKE 'same%'"
        )
        .await,
        6,
        "the same people are linked, not copied"
    );
    // Changed on one side: the CRM leads where both hold a value; one-sided values merge.
    let phone5 = common::texts(
        &rig.db,
        "SELECT business_phone FROM crm_contacts WHERE given_name = 'Same5'",
    )
    .await;
    assert_eq!(phone5[0].as_deref(), Some("+49 1"));
    let same5 = items
        .iter()
        .find_map(|i| match i {
            Item::Contact(c) if c.given_name.as_deref() == Some("Same5") => Some(c.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        same5.phones[0].as_deref(),
        Some("+49 1"),
        "the leading CRM's phone in Outlook"
    );
    let mobile6 = common::texts(
        &rig.db,
        "SELECT mobile_phone FROM crm_contacts WHERE given_name = 'Same6'",
    )
    .await;
    assert_eq!(
        mobile6[0].as_deref(),
        Some("+49 171 6"),
        "Outlook's mobile reaches the CRM"
    );
    // The ambiguous ones are recorded and left alone, on both sides.
    let ambiguous = rig.db.ambiguous(U, "crm_contacts").await.unwrap();
    assert_eq!(ambiguous.len(), 3, "{ambiguous:?}");
    assert_eq!(
        count(
            &rig.db,
            "SELECT COUNT(*) FROM crm_contacts WHERE email1 = 'team@example.com'"
        )
        .await,
        1
    );
    assert_eq!(by_email.get("team@example.com"), Some(&2));
    // Left alone in continuous sync too: an edit of the ambiguous CRM row goes nowhere.
    exec(
        &rig.db,
        "UPDATE crm_contacts SET job_title = 'Sekretariat' WHERE email1 = 'team@example.com'",
    )
    .await;
    rig.sync(U, "contacts").await;
    assert_eq!(
        emails(&rig.items(U, DistinguishedFolder::Contacts).await).get("team@example.com"),
        Some(&2)
    );
    // 6 linked, 3 created in Exchange, 2 imported; the 3 ambiguous unmapped.
    assert_eq!(count(&rig.db, "SELECT COUNT(*) FROM ms_item_map").await, 11);
    rig.finish().await;
}

async fn setup_sim_db() -> (ews_sim::server::Running, Db, tempfile::TempDir, String) {
    let record = tempfile::tempdir().unwrap();
    let sim = server::start(SimConfig {
        mailboxes: 2,
        record: Some(record.path().join("requests")),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let db_url = format!("sqlite:{}", record.path().join("crm.db").display());
    let db = Db::connect(&db_url, 2).await.unwrap();
    db.migrate(MigrationSet::Crm).await.unwrap();
    common::seed(&db, &[(1, "1001", Some(U))]).await;
    (sim, db, record, db_url)
}

fn config(db_url: &str, ews: &str, initial_sync: &str, admin_port: u16) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:{admin_port}"
token = "first-contact-token-0123"

[database]
url = "{db_url}"

[state]
url = "{db_url}"

[[servers]]
name = "sim"
ews_url = "{ews}"
allow_http = true
auth = "basic"
service_account = {{ username = "svc", password = "secret" }}
throttle = {{ requests_per_second = 500, burst = 500 }}

[mailbox_defaults]
areas = ["contacts"]
initial_sync = "{initial_sync}"

[[mailboxes]]
smtp = "{U}"
operator = "1001"
server = "sim"
"#
    )
}

/// Every row of every table of a SQLite database, as text: equal before and after means
/// nothing was written.
async fn dump(db: &Db) -> String {
    let Db::Sqlite(p) = db else { unreachable!() };
    let tables: Vec<(String,)> =
        sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(p)
            .await
            .unwrap();
    let mut out = String::new();
    for (t,) in tables {
        let cols: Vec<(String,)> =
            sqlx::query_as(&format!("SELECT name FROM pragma_table_info('{t}')"))
                .fetch_all(p)
                .await
                .unwrap();
        let expr: Vec<String> = cols.iter().map(|(c,)| format!("quote(\"{c}\")")).collect();
        let rows: Vec<(String,)> = sqlx::query_as(&format!(
            "SELECT {} FROM \"{t}\" ORDER BY rowid",
            expr.join(" || '|' || ")
        ))
        .fetch_all(p)
        .await
        .unwrap();
        out.push_str(&format!(
            "{t}: {}\n",
            rows.into_iter().map(|r| r.0).collect::<Vec<_>>().join("; ")
        ));
    }
    out
}

fn operations(dir: &std::path::Path) -> BTreeMap<String, usize> {
    let mut ops = BTreeMap::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(rest) = name.strip_suffix("-request.xml") {
            if let Some((_, op)) = rest.split_once('-') {
                *ops.entry(op.to_owned()).or_default() += 1;
            }
        }
    }
    ops
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_reads_only_writes_nothing_and_says_what_the_first_contact_will_do() {
    let (sim, db, dir, db_url) = setup_sim_db().await;
    db.migrate(MigrationSet::State).await.unwrap();
    let client = common::sim_client(&sim);
    overlap(&db, async |items| {
        client
            .call(
                &ews::Target::impersonating(U),
                &ews::ops::CreateItem {
                    folder: Some(FolderRef::well_known(DistinguishedFolder::Contacts)),
                    items,
                    disposition: None,
                },
            )
            .await
            .unwrap();
    })
    .await;
    let cfg = dir.path().join("mailsync.toml");
    std::fs::write(&cfg, config(&db_url, &sim.ews_url(), "crm-to-exchange", 9)).unwrap();
    let requests = dir.path().join("requests");
    let before_requests = operations(&requests);
    let before = dump(&db).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailsync"))
        .args(["plan", "--json", "--items", "--all", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(dump(&db).await, before, "the plan wrote to the database");
    let mut sent = operations(&requests);
    for (op, n) in before_requests {
        *sent.get_mut(&op).unwrap() -= n;
    }
    sent.retain(|_, n| *n > 0);
    let reads = [
        "GetFolder",
        "FindFolder",
        "SyncFolderHierarchy",
        "SyncFolderItems",
        "GetItem",
        "FindItem",
    ];
    assert!(!sent.is_empty());
    for op in sent.keys() {
        assert!(reads.contains(&op.as_str()), "the plan sent {op}: {sent:?}");
    }
    let plans: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let own = &plans[0]["areas"][0];
    assert_eq!(own["area"], "contacts");
    assert_eq!(own["scope"], "own");
    assert_eq!(own["crm_records"], 10);
    assert_eq!(own["exchange_items"], 10);
    assert_eq!(
        own["links"]["e-mail same1@example.com"],
        serde_json::Value::Null,
        "links are counted by kind"
    );
    let linked: u64 = own["links"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(linked, 6, "{own}");
    assert_eq!(own["exchange"]["creates"], 3, "{own}");
    assert_eq!(own["crm"]["creates"], 2, "{own}");
    assert_eq!(own["ambiguous"], 3, "{own}");
    assert_eq!(own["exchange"]["deletes"], 0);
    assert_eq!(own["crm"]["deletes"], 0);
    assert!(plans[0]["requests"].as_u64().unwrap() > 0);
    let items = own["items"].as_array().unwrap();
    assert!(
        items
            .iter()
            .any(|i| i["action"] == "ambiguous"
                && i["detail"].as_str().unwrap().contains("candidates")),
        "{own}"
    );
    assert!(
        items.iter().any(|i| i["action"] == "update"
            && i["side"] == "exchange"
            && i["detail"] == "business_phone"),
        "{own}"
    );

    // The text form says the same in words.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailsync"))
        .args(["plan", "--mailbox", U, "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("initial sync crm-to-exchange"), "{text}");
    let updates: Vec<&serde_json::Value> =
        items.iter().filter(|i| i["action"] == "update").collect();
    assert!(
        text.contains("to Exchange: 3 create, 1 update, 0 delete"),
        "{text}\n{updates:#?}"
    );
    assert!(text.contains("3 ambiguous"), "{text}");
    assert_eq!(dump(&db).await, before);
    sim.stop().await;
}

/// `mailsync run` on a first start with the given `initial_sync`, 5 contacts on each side
/// before it starts (3 of them the same people), then a change on each side after.
async fn run_mode(mode: &str) -> (Vec<Item>, i64, Db) {
    let (sim, db, dir, db_url) = setup_sim_db().await;
    let client = common::sim_client(&sim);
    exec(&db, "INSERT INTO crm_contacts (tenant_id, owner_id, given_name, surname, email1) VALUES (1, 1, 'A', 'Same', 'a@example.com'), (1, 1, 'B', 'Same', 'b@example.com'), (1, 1, 'C', 'Same', 'c@example.com'), (1, 1, 'D', 'Crm', 'd@example.com'), (1, 1, 'E', 'Crm', 'e@example.com')").await;
    let items = vec![
        outlook("A", "Same", "a@example.com", None),
        outlook("B", "Same", "b@example.com", None),
        outlook("C", "Same", "c@example.com", None),
        outlook("F", "Outlook", "f@example.com", None),
        outlook("G", "Outlook", "g@example.com", None),
    ];
    client
        .call(
            &ews::Target::impersonating(U),
            &ews::ops::CreateItem {
                folder: Some(FolderRef::well_known(DistinguishedFolder::Contacts)),
                items,
                disposition: None,
            },
        )
        .await
        .unwrap();
    let port = common::free_port();
    let cfg = dir.path().join("mailsync.toml");
    std::fs::write(&cfg, config(&db_url, &sim.ews_url(), mode, port)).unwrap();
    let mut service = Service::start(&cfg, port);
    service.ready(Duration::from_secs(60)).await;
    // After the start, one change on each side arrives whatever the mode.
    exec(&db, "INSERT INTO crm_contacts (tenant_id, owner_id, given_name, surname) VALUES (1, 1, 'Later', 'Crm')").await;
    client
        .call(
            &ews::Target::impersonating(U),
            &ews::ops::CreateItem {
                folder: Some(FolderRef::well_known(DistinguishedFolder::Contacts)),
                items: vec![outlook("Later", "Outlook", "later@example.com", None)],
                disposition: None,
            },
        )
        .await
        .unwrap();
    let rig_items = |c: ews::Client| async move {
        let find = ews::ops::FindItem {
            folder: FolderRef::well_known(DistinguishedFolder::Contacts),
            shape: ews::types::Shape::all_properties(vec![]),
            view: ews::ops::View::IndexedPage {
                offset: 0,
                max: 1000,
            },
            restriction: None,
        };
        c.call(&ews::Target::impersonating(U), &find)
            .await
            .unwrap()
            .output
            .items
    };
    common::eventually("both later changes arrive", Duration::from_secs(30), || {
        let (db, c) = (db.clone(), client.clone());
        async move {
            let in_crm = count(&db, "SELECT COUNT(*) FROM crm_contacts WHERE given_name = 'Later' AND surname = 'Outlook'").await;
            let in_ex = rig_items(c).await.iter().any(|i| matches!(i, Item::Contact(c) if c.surname.as_deref() == Some("Crm") && c.given_name.as_deref() == Some("Later")));
            in_crm == 1 && in_ex
        }
    })
    .await;
    // The admin API showed the first start's work (progress is cleared when done).
    let (status, body) = service.mailboxes("first-contact-token-0123").await;
    assert_eq!(status, 200, "{body}");
    service.stop().await;
    let items = rig_items(client).await;
    let rows = count(&db, "SELECT COUNT(*) FROM crm_contacts").await;
    sim.stop().await;
    (items, rows, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_initial_sync_none_takes_a_baseline_and_copies_nothing_that_existed() {
    let (items, rows, _db) = run_mode("none").await;
    // Nothing that existed was copied: the 5 Outlook contacts and the two later ones.
    assert_eq!(items.len(), 7);
    // The 5 CRM contacts and the two later ones.
    assert_eq!(rows, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_initial_sync_crm_to_exchange_links_and_copies_each_way_once() {
    let (items, rows, db) = run_mode("crm-to-exchange").await;
    // 3 linked + 2 CRM-only + 2 Outlook-only, and the later one on each side.
    assert_eq!(items.len(), 9);
    assert_eq!(rows, 9);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM crm_contacts WHERE email1 IN ('a@example.com', 'b@example.com', 'c@example.com')").await,
        3,
        "no address twice in the CRM"
    );
    assert_eq!(
        emails(&items).values().copied().max(),
        Some(1),
        "no address twice in Exchange"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_initial_sync_exchange_to_crm_links_and_copies_each_way_once() {
    let (items, rows, db) = run_mode("exchange-to-crm").await;
    assert_eq!(items.len(), 9);
    assert_eq!(rows, 9);
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM crm_contacts WHERE email1 = 'f@example.com'"
        )
        .await,
        1
    );
    assert_eq!(emails(&items).values().copied().max(), Some(1));
}
