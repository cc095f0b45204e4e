//! `mailsync initial-sync` as a process against ews-sim and SQLite, or MariaDB with the state
//! store in SQLite: both directions end with both sides equal, and a run killed halfway and
//! started again neither duplicates nor loses.

mod common;
use common::{count, exchange_contacts, exec, sim_client};

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ews::items::{Contact, Item};
use ews::ops::CreateItem;
use ews::types::{DistinguishedFolder, FolderRef};
use ews_sim::server::{self, Running, SimConfig};
use mailsync::db::{Db, MigrationSet};

fn config(db_url: &str, state_url: &str, ews: &str) -> String {
    format!(
        r#"
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
areas = ["contacts", "tasks"]

[[mailboxes]]
smtp = "user1@example.com"
operator = "1001"
server = "sim"

[[mailboxes]]
smtp = "user2@example.com"
operator = "1002"
server = "sim"
"#
    )
}

struct Setup {
    sim: Running,
    /// The business database.
    db: Db,
    /// The state store (the same SQLite database, or SQLite beside MariaDB).
    state: Db,
    config: std::path::PathBuf,
    my_name: Option<String>,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn finish(self) {
        self.sim.stop().await;
        self.db.close().await;
        self.state.close().await;
        if let Some(name) = self.my_name {
            common::drop_mariadb(&name).await;
        }
    }
}

/// SQLite for both, or (`mariadb`) the business database in MariaDB and the state store in
/// SQLite; `None` when MariaDB is wanted and missing (outside CI).
async fn setup(mariadb: bool) -> Option<Setup> {
    let sim = server::start(SimConfig {
        mailboxes: 2,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite:{}", dir.path().join("crm.db").display());
    let (db_url, my_name) = if mariadb {
        let (name, url) = common::mariadb_db("initial").await?;
        (url, Some(name))
    } else {
        (sqlite_url.clone(), None)
    };
    let db = Db::connect(&db_url, 2).await.unwrap();
    db.migrate(MigrationSet::Crm).await.unwrap();
    let state = if mariadb {
        Db::connect(&sqlite_url, 2).await.unwrap()
    } else {
        db.clone()
    };
    state.migrate(MigrationSet::State).await.unwrap();
    exec(
        &db,
        "INSERT INTO crm_tenants (id, name) VALUES (1, 'Muster GmbH')",
    )
    .await;
    exec(&db, "INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name, email) VALUES (1, 1, '1001', 'Anna', 'user1@example.com')").await;
    exec(&db, "INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name, email) VALUES (2, 1, '1002', 'Bernd', 'user2@example.com')").await;
    let config_path = dir.path().join("mailsync.toml");
    std::fs::write(&config_path, config(&db_url, &sqlite_url, &sim.ews_url())).unwrap();
    Some(Setup {
        sim,
        db,
        state,
        config: config_path,
        my_name,
        _dir: dir,
    })
}

async fn initial_sync(
    config: &std::path::Path,
    mailbox: &str,
    direction: &str,
) -> (i32, String, String) {
    let (config, mailbox, direction) = (
        config.to_path_buf(),
        mailbox.to_owned(),
        direction.to_owned(),
    );
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_mailsync"))
            .args([
                "initial-sync",
                "--mailbox",
                &mailbox,
                "--direction",
                &direction,
                "--config",
            ])
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_directions_end_with_both_sides_equal() {
    both_directions(setup(false).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_directions_end_with_both_sides_equal_on_mariadb() {
    if let Some(s) = setup(true).await {
        both_directions(s).await;
    }
}

async fn both_directions(s: Setup) {
    let client = sim_client(&s.sim);
    for i in 0..300 {
        exec(&s.db, &format!("INSERT INTO crm_contacts (tenant_id, owner_id, surname) VALUES (1, 1, 'crm{i:03}')")).await;
    }
    exec(
        &s.db,
        "INSERT INTO crm_tasks (tenant_id, owner_id, subject) VALUES (1, 1, 'Aufgabe')",
    )
    .await;
    let outlook: Vec<Item> = (0..20)
        .map(|i| {
            Item::Contact(Contact {
                surname: Some(format!("outlook{i:02}")),
                ..Contact::default()
            })
        })
        .collect();
    let create = CreateItem {
        folder: Some(FolderRef::well_known(DistinguishedFolder::Contacts)),
        items: outlook,
        disposition: None,
    };
    client
        .call(&ews::Target::impersonating("user1@example.com"), &create)
        .await
        .unwrap();

    let (code, out, err) = initial_sync(&s.config, "user1@example.com", "crm-to-exchange").await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("initial sync of user1@example.com (crm-to-exchange) done in"),
        "{out}"
    );
    assert!(
        out.contains("contacts: ")
            && out.contains("to Exchange: 300 created; to CRM: 20 created; 0 failed"),
        "{out}"
    );
    assert!(
        out.contains("tasks: ") && out.contains("to Exchange: 1 created"),
        "{out}"
    );
    let in_exchange = exchange_contacts(&client, "user1@example.com").await;
    assert_eq!(in_exchange.len(), 320);
    assert_eq!(
        count(
            &s.db,
            "SELECT COUNT(*) FROM crm_contacts WHERE owner_id = 1"
        )
        .await,
        320
    );
    let stamps: HashSet<i64> = in_exchange.iter().filter_map(|(_, id)| *id).collect();
    assert_eq!(stamps.len(), 320, "every item stamped, none twice");

    // A second run finds everything linked: nothing is written.
    let (code, out, _) = initial_sync(&s.config, "user1@example.com", "crm-to-exchange").await;
    assert_eq!(code, 0);
    assert!(
        out.contains("to Exchange: nothing; to CRM: nothing"),
        "{out}"
    );

    // Exchange -> CRM for the other mailbox.
    let outlook: Vec<Item> = (0..50)
        .map(|i| {
            Item::Contact(Contact {
                surname: Some(format!("b{i:02}")),
                ..Contact::default()
            })
        })
        .collect();
    let create = CreateItem {
        folder: Some(FolderRef::well_known(DistinguishedFolder::Contacts)),
        items: outlook,
        disposition: None,
    };
    client
        .call(&ews::Target::impersonating("user2@example.com"), &create)
        .await
        .unwrap();
    exec(
        &s.db,
        "INSERT INTO crm_contacts (tenant_id, owner_id, surname) VALUES (1, 2, 'nur im CRM')",
    )
    .await;
    let (code, out, err) = initial_sync(&s.config, "user2@example.com", "exchange-to-crm").await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("to Exchange: 1 created; to CRM: 50 created"),
        "{out}"
    );
    assert_eq!(
        count(
            &s.db,
            "SELECT COUNT(*) FROM crm_contacts WHERE owner_id = 2"
        )
        .await,
        51
    );
    assert_eq!(
        exchange_contacts(&client, "user2@example.com").await.len(),
        51
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_halfway_resumes_without_duplicates_or_loss() {
    killed_halfway(setup(false).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_halfway_resumes_without_duplicates_or_loss_on_mariadb() {
    if let Some(s) = setup(true).await {
        killed_halfway(s).await;
    }
}

async fn killed_halfway(s: Setup) {
    let client = sim_client(&s.sim);
    let values: Vec<String> = (0..3000).map(|i| format!("(1, 1, 'k{i:04}')")).collect();
    for chunk in values.chunks(500) {
        exec(
            &s.db,
            &format!(
                "INSERT INTO crm_contacts (tenant_id, owner_id, surname) VALUES {}",
                chunk.join(", ")
            ),
        )
        .await;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailsync"))
        .args([
            "initial-sync",
            "--mailbox",
            "user1@example.com",
            "--direction",
            "crm-to-exchange",
            "--config",
        ])
        .arg(&s.config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once part of the work is done (another process: polled, there is no event).
    let start = Instant::now();
    loop {
        let done = count(&s.state, "SELECT COUNT(*) FROM ms_item_map").await;
        if done >= 300 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be killed"
        );
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let halfway = count(&s.state, "SELECT COUNT(*) FROM ms_item_map").await;
    assert!(
        halfway < 3000,
        "killed too late to prove anything ({halfway})"
    );

    let (code, out, err) = initial_sync(&s.config, "user1@example.com", "crm-to-exchange").await;
    assert_eq!(code, 0, "{out}{err}");
    let in_exchange = exchange_contacts(&client, "user1@example.com").await;
    let stamps: HashSet<i64> = in_exchange.iter().filter_map(|(_, id)| *id).collect();
    assert_eq!(in_exchange.len(), 3000, "no duplicates (and nothing lost)");
    assert_eq!(stamps.len(), 3000);
    assert_eq!(
        count(&s.db, "SELECT COUNT(*) FROM crm_contacts").await,
        3000,
        "nothing came back as a copy"
    );
    assert_eq!(
        count(&s.state, "SELECT COUNT(*) FROM ms_item_map").await,
        3000
    );
    s.finish().await;
}
