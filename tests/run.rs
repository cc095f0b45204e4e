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

/// Under systemd: `READY=1` once the mailboxes took their first steps, `WATCHDOG=1` at half
/// of `WATCHDOG_USEC`, `STOPPING=1` on SIGTERM — on a NOTIFY_SOCKET datagram socket. The
/// retention job runs at start: consumed old change-log rows, old conflicts and the state of
/// a mailbox removed long ago are gone, the rest stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_notifies_systemd_and_prunes_at_start() {
    use std::os::unix::net::UnixDatagram;
    let sim = server::start(SimConfig {
        mailboxes: 1,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite:{}", dir.path().join("crm.db").display());
    let db = Db::connect(&db_url, 2).await.unwrap();
    db.migrate(MigrationSet::Crm).await.unwrap();
    db.migrate(MigrationSet::State).await.unwrap();
    exec(
        &db,
        "INSERT INTO crm_tenants (id, name) VALUES (1, 'Muster GmbH')",
    )
    .await;
    exec(&db, "INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name, email) VALUES (1, 1, '1001', 'Anna', 'user1@example.com')").await;
    // Old change-log rows and a recent one; the feed consumes them all at start, the
    // retention pass deletes the old ones. (That an unconsumed row stays is tests/db.rs's.)
    exec(&db, "INSERT INTO crm_tasks (tenant_id, owner_id, subject) VALUES (1, 1, 'a'), (1, 1, 'b'), (1, 1, 'c')").await;
    let last = count(&db, "SELECT max(seq) FROM crm_changes").await;
    exec(
        &db,
        &format!("UPDATE crm_changes SET at = '2020-01-01T00:00:00.000Z' WHERE seq < {last}"),
    )
    .await;
    exec(
        &db,
        &format!(
            "INSERT INTO ms_cursor (name, txid, seq) VALUES ('crm-feed', 0, {})",
            last - 1
        ),
    )
    .await;
    // An old conflict and a recent one; the state of a mailbox removed in 2020.
    exec(&db, "INSERT INTO ms_conflicts (mailbox, crm_table, fields, winner, at) VALUES ('user1@example.com', 'crm_tasks', '[]', 'crm', '2020-01-01T00:00:00.000Z')").await;
    exec(&db, "INSERT INTO ms_conflicts (mailbox, crm_table, fields, winner) VALUES ('user1@example.com', 'crm_tasks', '[]', 'crm')").await;
    exec(&db, "INSERT INTO ms_item_map (mailbox, crm_table, crm_id, ews_item_id) VALUES ('left@example.com', 'crm_tasks', 1, 'AAMk1')").await;
    exec(&db, "INSERT INTO ms_mailboxes (mailbox, last_configured_at) VALUES ('left@example.com', '2020-01-01T00:00:00.000Z')").await;

    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let config = dir.path().join("mailsync.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[database]
url = "{db_url}"

[state]
url = "{db_url}"

[retention]
days = 30

[[servers]]
name = "sim"
ews_url = "{ews}"
allow_http = true
auth = "basic"
service_account = {{ username = "svc", password = "secret" }}

[mailbox_defaults]
areas = ["tasks"]

[[mailboxes]]
smtp = "user1@example.com"
operator = "1001"
server = "sim"
"#,
            ews = sim.ews_url()
        ),
    )
    .unwrap();
    let log_path = dir.path().join("run.log");
    let child = Command::new(env!("CARGO_BIN_EXE_mailsync"))
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let child = Killer(child);
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();
    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 1024];
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notification within 60 s: {e}"));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
    let (socket, messages) = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        // Until READY and two heartbeats after it.
        while seen.iter().filter(|m: &&String| *m == "WATCHDOG=1").count() < 2
            || !seen.iter().any(|m| m.starts_with("READY=1"))
        {
            seen.push(receive(&socket));
        }
        (socket, seen)
    })
    .await
    .unwrap();
    let ready = messages
        .iter()
        .position(|m| m.starts_with("READY=1"))
        .unwrap();
    assert_eq!(
        messages[ready], "READY=1\nSTATUS=1 mailboxes syncing",
        "{messages:?}"
    );
    assert!(
        messages[..ready]
            .iter()
            .all(|m| m.starts_with("STATUS=starting: ") || m == "WATCHDOG=1"),
        "{messages:?}"
    );

    // The retention pass ran at start.
    assert_eq!(
        count(
            &db,
            &format!("SELECT COUNT(*) FROM crm_changes WHERE seq < {last}")
        )
        .await,
        0,
        "old consumed rows are pruned\n{}",
        log_text()
    );
    assert_eq!(
        count(
            &db,
            &format!("SELECT COUNT(*) FROM crm_changes WHERE seq = {last}")
        )
        .await,
        1,
        "the recent one stays"
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM ms_conflicts").await, 1);
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM ms_item_map WHERE mailbox = 'left@example.com'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM ms_mailboxes WHERE mailbox = 'user1@example.com'"
        )
        .await,
        1
    );

    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let stopping = tokio::task::spawn_blocking(move || loop {
        let m = receive(&socket);
        if m.starts_with("STOPPING=1") {
            return m;
        }
    })
    .await
    .unwrap();
    assert!(stopping.starts_with("STOPPING=1\nSTATUS=stopping"));
    let mut child = child;
    let status = tokio::task::spawn_blocking(move || child.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}\n{}", log_text());
    assert!(log_text().contains("retention pass done"), "{}", log_text());
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_admin_token_takes_effect_on_reload_and_the_old_one_stops_working() {
    let sim = server::start(SimConfig {
        mailboxes: 1,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite:{}", dir.path().join("crm.db").display());
    let db = Db::connect(&db_url, 2).await.unwrap();
    db.migrate(MigrationSet::Crm).await.unwrap();
    common::seed(&db, &[(1, "1001", Some("user1@example.com"))]).await;
    let admin_port = common::free_port();
    let config = dir.path().join("mailsync.toml");
    let write = |token: &str| {
        std::fs::write(
            &config,
            format!(
                r#"
[admin]
listen = "127.0.0.1:{admin_port}"
token = "{token}"

[database]
url = "{db_url}"

[[servers]]
name = "sim"
ews_url = "{ews}"
allow_http = true
auth = "basic"
service_account = {{ username = "svc", password = "secret" }}

[[mailboxes]]
smtp = "user1@example.com"
operator = "1001"
server = "sim"
areas = ["contacts"]
"#,
                ews = sim.ews_url()
            ),
        )
        .unwrap()
    };
    let (first, second, third) = (
        "first-token-0123456789",
        "second-token-0123456789",
        "third-token-0123456789",
    );
    write(first);
    let mut service = common::Service::start(&config, admin_port);
    service.ready(Duration::from_secs(60)).await;
    assert_eq!(service.mailboxes(first).await.0, 200);

    // POST /api/v1/reload (authorized with the old token) switches to the new one at once.
    write(second);
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/reload", service.admin))
        .bearer_auth(first)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{:?}", resp.text().await);
    assert_eq!(
        service.mailboxes(first).await.0,
        401,
        "the old token still works"
    );
    assert_eq!(service.mailboxes(second).await.0, 200);

    // SIGHUP does the same.
    write(third);
    unsafe { libc::kill(service.child.id() as i32, libc::SIGHUP) };
    common::eventually("the third token", Duration::from_secs(30), || {
        let service = &service;
        async move { service.mailboxes(third).await.0 == 200 }
    })
    .await;
    assert_eq!(service.mailboxes(second).await.0, 401);
    assert_eq!(service.mailboxes(first).await.0, 401);
    service.stop().await;
    sim.stop().await;
}

/// An admin address already in use: `run` says which address and why, exits non-zero, and
/// has done nothing before (no state store created, no request to Exchange).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_the_admin_address_in_use_stops_with_a_clear_error_before_doing_anything() {
    let sim = server::start(SimConfig {
        mailboxes: 1,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite:{}", dir.path().join("crm.db").display());
    let db = Db::connect(&db_url, 2).await.unwrap();
    db.migrate(MigrationSet::Crm).await.unwrap();
    common::seed(&db, &[(1, "1001", Some("user1@example.com"))]).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let state = dir.path().join("state.db");
    let config = dir.path().join("mailsync.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[admin]
listen = "{addr}"
token = "{TOKEN}"

[database]
url = "{db_url}"

[state]
url = "sqlite:{state}"

[[servers]]
name = "sim"
ews_url = "{ews}"
allow_http = true
auth = "basic"
service_account = {{ username = "svc", password = "secret" }}

[[mailboxes]]
smtp = "user1@example.com"
operator = "1001"
server = "sim"
areas = ["contacts"]
"#,
            state = state.display(),
            ews = sim.ews_url()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailsync"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("run kept running with its admin address in use");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("admin API cannot listen on {addr}")) && stderr.contains("in use"),
        "{stderr}"
    );
    assert!(
        !state.exists(),
        "the state store was created before the bind failed"
    );
    let stats: serde_json::Value = reqwest::get(format!("{}/sim/stats", sim.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stats["requests_by_operation"],
        serde_json::json!({}),
        "Exchange was asked before the bind failed"
    );
    drop(taken);
    sim.stop().await;
}
