//! `mailsync run` killed with SIGKILL in the middle of an import from Exchange, with the state
//! store apart from the business database (so a CRM row and its mapping are two writes that a
//! kill can separate), restarted, killed again, and finally left to finish: every Exchange
//! item is in the CRM exactly once, and Exchange holds no copy.

mod common;
use common::{count, exchange_contacts, exec, sim_client, Service};

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ews::items::{Contact, Item};
use ews::ops::CreateItem;
use ews::types::{DistinguishedFolder, FolderRef};
use ews_sim::server::{self, SimConfig};
use mailsync::db::{Db, MigrationSet};

const ITEMS: usize = 2000;
const U: &str = "user1@example.com";

async fn killed_mid_import(db_url: &str, dir: &std::path::Path) {
    let sim = server::start(SimConfig {
        mailboxes: 1,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let client = sim_client(&sim);
    for chunk in (0..ITEMS).collect::<Vec<_>>().chunks(200) {
        let op = CreateItem {
            folder: Some(FolderRef::well_known(DistinguishedFolder::Contacts)),
            items: chunk
                .iter()
                .map(|i| {
                    Item::Contact(Contact {
                        given_name: Some("Kim".into()),
                        surname: Some(format!("x{i:05}")),
                        ..Contact::default()
                    })
                })
                .collect(),
            disposition: None,
        };
        for r in client
            .call(&ews::Target::impersonating(U), &op)
            .await
            .unwrap()
            .output
        {
            r.unwrap();
        }
    }
    let db = Db::connect(db_url, 2).await.unwrap();
    db.migrate(MigrationSet::Crm).await.unwrap();
    exec(
        &db,
        "INSERT INTO crm_tenants (id, name) VALUES (1, 'Muster GmbH')",
    )
    .await;
    exec(&db, "INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name, email) VALUES (1, 1, '1001', 'Anna', 'user1@example.com')").await;
    let (state, state_url) = common::sqlite_state(dir).await;
    let admin_port = common::free_port();
    let config = dir.join("mailsync.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[admin]
listen = "127.0.0.1:{admin_port}"
token = "crash-test-token-0123456789"

[database]
url = "{db_url}"

[state]
url = "{state_url}"

[[servers]]
name = "sim"
ews_url = "{ews}"
allow_http = true
auth = "basic"
service_account = {{ username = "svc", password = "secret" }}
throttle = {{ requests_per_second = 1000, burst = 1000, max_concurrent_requests = 10 }}

[mailbox_defaults]
areas = ["contacts"]
initial_sync = "exchange-to-crm"

[[mailboxes]]
smtp = "{U}"
operator = "1001"
server = "sim"
"#,
            ews = sim.ews_url()
        ),
    )
    .unwrap();

    let rows = "SELECT COUNT(*) FROM crm_contacts";
    let mut kills = Vec::new();
    for at in [ITEMS / 10, ITEMS / 2] {
        let mut service = Service::start(&config, admin_port);
        let start = Instant::now();
        loop {
            if count(&db, rows).await >= at as i64 {
                break;
            }
            if let Ok(Some(status)) = service.child.try_wait() {
                panic!("mailsync run exited ({status}):\n{}", service.log_text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "no progress to {at} rows:\n{}",
                service.log_text()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        service.child.kill().unwrap();
        service.child.wait().unwrap();
        let mapped = count(&state, "SELECT COUNT(*) FROM ms_item_map").await;
        kills.push(count(&db, rows).await);
        // Rows ahead of mappings: the kill separated a row from its mapping (likely, as a
        // batch's rows are written before its mappings; the failpoint test in integrity.rs
        // makes it certain).
        println!(
            "killed at {} rows, {mapped} mappings",
            kills.last().unwrap()
        );
    }
    assert!(
        kills.iter().all(|&k| k < ITEMS as i64),
        "killed too late to prove anything: {kills:?}"
    );

    // The last run finishes the import.
    let mut service = Service::start(&config, admin_port);
    service.ready(Duration::from_secs(180)).await;
    let start = Instant::now();
    while count(&state, "SELECT COUNT(*) FROM ms_item_map").await < ITEMS as i64 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the import did not finish: {} rows, {} mappings\n{}",
            count(&db, rows).await,
            count(&state, "SELECT COUNT(*) FROM ms_item_map").await,
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    service.stop().await;

    assert_eq!(count(&db, rows).await, ITEMS as i64, "no second row");
    assert_eq!(
        count(&db, "SELECT COUNT(DISTINCT ews_id) FROM crm_contacts").await,
        ITEMS as i64
    );
    assert_eq!(
        count(&state, "SELECT COUNT(*) FROM ms_item_map").await,
        ITEMS as i64
    );
    let surnames = count(&db, "SELECT COUNT(DISTINCT surname) FROM crm_contacts").await;
    assert_eq!(surnames, ITEMS as i64, "every item once");
    let in_exchange = exchange_contacts(&client, U).await;
    assert_eq!(in_exchange.len(), ITEMS, "no copy in Exchange");
    // Every stamp written names a different row.
    let stamps: Vec<i64> = in_exchange.iter().filter_map(|(_, s)| *s).collect();
    let distinct: HashSet<i64> = stamps.iter().copied().collect();
    assert_eq!(stamps.len(), distinct.len(), "a row stamped on two items");
    db.close().await;
    state.close().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_killed_mid_import_leaves_no_second_row() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("crm.db").display());
    killed_mid_import(&url, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_killed_mid_import_leaves_no_second_row_on_postgres() {
    let Some((name, url)) = common::postgres_db("crash").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    killed_mid_import(&url, dir.path()).await;
    common::drop_postgres(&name).await;
}
