//! `mailsync run` as a process: against ews-sim and a SQLite business database (or a MariaDB
//! one, named by a mariadb:// URL, with the state store in SQLite), it becomes ready, syncs
//! both ways in real time (CRM change capture one way, streaming notifications the other),
//! reports through the admin API, and stops cleanly on SIGTERM.

mod common;
use common::{count, exec, sim_client};

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ews::items::{Contact, Item};
use ews::ops::{CreateItem, FindItem, View};
use ews::types::{DistinguishedFolder, FolderRef, Shape};
use ews_sim::server::{self, SimConfig};
use mailsync::db::{Db, MigrationSet};

const TOKEN: &str = "run-test-token-0123456789";

/// Polls `check` every 50 ms until it holds or `limit` passes; the other side is another
/// process, so there is no event to await.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within {limit:?}");
}

struct Killer(Child);

impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_syncs_both_ways_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite:{}", dir.path().join("crm.db").display());
    run_syncs_both_ways(dir, &db_url.clone(), &db_url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_syncs_both_ways_and_stops_on_sigterm_on_mariadb() {
    let Some((name, url)) = common::mariadb_db("run").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let state_url = format!("sqlite:{}", dir.path().join("state.db").display());
    let url = url.replacen("mysql://", "mariadb://", 1);
    run_syncs_both_ways(dir, &url, &state_url).await;
    common::drop_mariadb(&name).await;
}

/// The scenario with the business database at `db_url` and the state store at `state_url`.
async fn run_syncs_both_ways(dir: tempfile::TempDir, db_url: &str, state_url: &str) {
    let sim = server::start(SimConfig {
        mailboxes: 2,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let db = Db::connect(db_url, 2).await.unwrap();
    db.migrate(MigrationSet::Crm).await.unwrap();
    exec(
        &db,
        "INSERT INTO crm_tenants (id, name) VALUES (1, 'Muster GmbH')",
    )
    .await;
    exec(&db, "INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name, email) VALUES (1, 1, '1001', 'Anna', 'user1@example.com')").await;
    exec(&db, "INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name, email) VALUES (2, 1, '1002', 'Bernd', 'user2@example.com')").await;
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("mailsync.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[admin]
listen = "127.0.0.1:{admin_port}"
token = "{TOKEN}"

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

[mailbox_defaults]
areas = ["contacts", "calendar", "tasks", "mail"]

[[mailboxes]]
smtp = "user1@example.com"
operator = "1001"
server = "sim"

[[mailboxes]]
smtp = "user2@example.com"
operator = "1002"
server = "sim"
"#,
            ews = sim.ews_url()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("run.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_mailsync"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut child = Killer(child);
    let http = reqwest::Client::new();
    let admin = format!("http://127.0.0.1:{admin_port}");
    let log_text = || std::fs::read_to_string(dir.path().join("run.log")).unwrap_or_default();
    eventually("ready", Duration::from_secs(60), || {
        let req = http.get(format!("{admin}/readyz"));
        async move { req.send().await.is_ok_and(|r| r.status().is_success()) }
    })
    .await;
    let list: serde_json::Value = http
        .get(format!("{admin}/api/v1/mailboxes"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let states: Vec<&str> = list["mailboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, vec!["running", "running"], "{list}\n{}", log_text());

    // CRM -> Exchange through change capture.
    exec(&db, "INSERT INTO crm_contacts (tenant_id, owner_id, given_name, surname) VALUES (1, 2, 'Clara', 'Meier')").await;
    let client = sim_client(&sim);
    let user2 = ews::Target::impersonating("user2@example.com");
    let find = FindItem {
        folder: FolderRef::well_known(DistinguishedFolder::Contacts),
        shape: Shape::id_only(),
        view: View::IndexedPage {
            offset: 0,
            max: 100,
        },
        restriction: None,
    };
    eventually(
        "the CRM contact in Exchange",
        Duration::from_secs(30),
        || {
            let (client, user2, find) = (client.clone(), user2.clone(), find.clone());
            async move {
                client
                    .call(&user2, &find)
                    .await
                    .is_ok_and(|r| r.output.items.len() == 1)
            }
        },
    )
    .await;

    // Exchange -> CRM through a streaming notification.
    let create = CreateItem {
        folder: Some(FolderRef::well_known(DistinguishedFolder::Contacts)),
        items: vec![Item::Contact(Contact {
            given_name: Some("Dora".into()),
            surname: Some("Dietz".into()),
            ..Contact::default()
        })],
        disposition: None,
    };
    client
        .call(&ews::Target::impersonating("user1@example.com"), &create)
        .await
        .unwrap();
    eventually(
        "the Outlook contact in the CRM",
        Duration::from_secs(30),
        || {
            let db = db.clone();
            async move {
                count(
                    &db,
                    "SELECT COUNT(*) FROM crm_contacts WHERE surname = 'Dietz' AND owner_id = 1",
                )
                .await
                    == 1
            }
        },
    )
    .await;

    // Mail, CRM -> Exchange: a mail filed into the operator's inbox (the folder came from
    // Exchange when the mailbox started, linked by its role).
    eventually(
        "the CRM inbox from Exchange",
        Duration::from_secs(30),
        || {
            let db = db.clone();
            async move {
                count(
                    &db,
                    "SELECT COUNT(*) FROM crm_mail_folders WHERE owner_id = 2 AND role = 'inbox'",
                )
                .await
                    == 1
            }
        },
    )
    .await;
    let mime = match db {
        // MySQL's CHAR() takes several codes; a cast to BLOB is spelled BINARY there.
        Db::MySql(_) => {
            "CAST(CONCAT('Subject: Angebot', CHAR(13, 10, 13, 10), 'Text', CHAR(13, 10)) AS BINARY)"
        }
        _ => "CAST('Subject: Angebot' || char(13, 10, 13, 10) || 'Text' || char(13, 10) AS BLOB)",
    };
    exec(
        &db,
        &format!(
            "INSERT INTO crm_mails (owner_id, folder_id, subject, is_read, mime, size) \
               SELECT 2, id, 'Angebot', 0, {mime}, 26 \
               FROM crm_mail_folders WHERE owner_id = 2 AND role = 'inbox'"
        ),
    )
    .await;
    let inbox = FindItem {
        folder: FolderRef::well_known(DistinguishedFolder::Inbox),
        ..find.clone()
    };
    eventually("the CRM mail in Exchange", Duration::from_secs(30), || {
        let (client, user2, inbox) = (client.clone(), user2.clone(), inbox.clone());
        async move {
            client
                .call(&user2, &inbox)
                .await
                .is_ok_and(|r| r.output.items.len() == 1)
        }
    })
    .await;

    // Mail, Exchange -> CRM through a streaming notification (every folder is subscribed).
    client
        .call(
            &ews::Target::impersonating("user1@example.com"),
            &CreateItem {
                folder: Some(FolderRef::well_known(DistinguishedFolder::Inbox)),
                items: vec![Item::Message(ews::items::Message {
                    mime: Some(
                        b"Subject: Rueckfrage\r\nMessage-ID: <r1@example.org>\r\n\r\nText\r\n"
                            .to_vec(),
                    ),
                    ..Default::default()
                })],
                disposition: Some(ews::ops::MessageDisposition::SaveOnly),
            },
        )
        .await
        .unwrap();
    eventually("the Outlook mail in the CRM", Duration::from_secs(30), || {
        let db = db.clone();
        async move {
            count(
                &db,
                "SELECT COUNT(*) FROM crm_mails WHERE owner_id = 1 AND internet_message_id = '<r1@example.org>'",
            )
            .await
                == 1
        }
    })
    .await;

    // SIGTERM: a clean stop.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no stop after SIGTERM\n{}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}\n{}", log_text());
    assert!(log_text().contains("mailsync stopped"), "{}", log_text());
    sim.stop().await;
    db.close().await;
}
