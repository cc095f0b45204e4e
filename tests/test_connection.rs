//! `mailsync test-connection` against ews-sim and a SQLite (or MariaDB) business database: each check
//! printed as ok or FAILED with the reason, exit status 1 when any failed.

mod common;
use common::exec;

use std::process::Command;

use ews_sim::server::{self, SimConfig};
use mailsync::db::{Db, MigrationSet};

fn config(db_url: &str, ews: &str, account: (&str, &str)) -> String {
    config_with_state(db_url, db_url, ews, account)
}

fn config_with_state(db_url: &str, state_url: &str, ews: &str, account: (&str, &str)) -> String {
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
service_account = {{ username = "{}", password = "{}" }}

[mailbox_defaults]
areas = ["contacts", "calendar"]

[[mailboxes]]
smtp = "user1@example.com"
operator = "1001"
server = "sim"

[[mailboxes]]
smtp = "user2@example.com"
operator = "1002"
server = "sim"

[[mailboxes]]
smtp = "user3@example.com"
operator = "1003"
server = "sim"
"#,
        account.0, account.1
    )
}

async fn test_connection(path: &std::path::Path, extra: &[&str]) -> (i32, String) {
    let path = path.to_path_buf();
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_mailsync"))
            .args(["test-connection", "--config"])
            .arg(&path)
            .args(&extra)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_check_is_reported_with_its_reason() {
    let sim = server::start(SimConfig {
        mailboxes: 3,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite:{}", dir.path().join("crm.db").display());
    let db = Db::connect(&db_url, 2).await.unwrap();
    db.migrate(MigrationSet::Crm).await.unwrap();
    exec(
        &db,
        "INSERT INTO crm_tenants (id, name) VALUES (1, 'Muster GmbH')",
    )
    .await;
    exec(&db, "INSERT INTO crm_operators (tenant_id, personnel_no, display_name, email) VALUES (1, '1001', 'Anna', 'user1@example.com')").await;
    exec(&db, "INSERT INTO crm_operators (tenant_id, personnel_no, display_name) VALUES (1, '1002', 'Bernd')").await;

    let good = dir.path().join("good.toml");
    std::fs::write(&good, config(&db_url, &sim.ews_url(), ("svc", "secret"))).unwrap();
    let (code, out) = test_connection(&good, &["--mailbox", "user1@example.com"]).await;
    assert_eq!(code, 0, "{out}");
    let ews = sim.ews_url();
    let expected = format!(
        "ok     user1@example.com  operator: 1001 Anna <user1@example.com>\n\
         ok     user1@example.com  authentication: svc at {ews}\n\
         ok     user1@example.com  impersonation: acting for user1@example.com\n\
         ok     user1@example.com  folder contacts: accessible\n\
         ok     user1@example.com  folder calendar: accessible\n\
         5 checks, 0 failed\n"
    );
    assert_eq!(out, expected);

    let (code, out) = test_connection(&good, &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED user2@example.com  operator: operator 1002 (Bernd) has no e-mail address; appointments cannot be assigned"), "{out}");
    assert!(out.contains("FAILED user3@example.com  operator: no operator with personnel number \"1003\" in crm_operators"), "{out}");
    assert!(out.ends_with("15 checks, 2 failed\n"), "{out}");

    let wrong_password = dir.path().join("wrong.toml");
    std::fs::write(
        &wrong_password,
        config(&db_url, &sim.ews_url(), ("svc", "nope")),
    )
    .unwrap();
    let (code, out) = test_connection(&wrong_password, &["--mailbox", "user1@example.com"]).await;
    assert_eq!(code, 1);
    assert!(
        out.contains("FAILED user1@example.com  authentication:"),
        "{out}"
    );
    assert!(
        !out.contains("folder contacts"),
        "no folder checks without authentication: {out}"
    );

    let no_right = dir.path().join("noright.toml");
    std::fs::write(
        &no_right,
        config(&db_url, &sim.ews_url(), ("user1@example.com", "password")),
    )
    .unwrap();
    let (code, out) = test_connection(&no_right, &["--mailbox", "user2@example.com"]).await;
    assert_eq!(code, 1);
    assert!(
        out.contains("ok     user2@example.com  authentication: user1@example.com at"),
        "{out}"
    );
    assert!(
        out.contains("FAILED user2@example.com  impersonation:")
            && out.contains("ErrorImpersonateUserDenied"),
        "{out}"
    );
    sim.stop().await;
}

/// With `[smtp]`, test-connection checks the SMTP server too: the local sink answers EHLO;
/// a port nothing listens on fails with the reason, and the exit status says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smtp_server_is_checked_when_configured() {
    let sim = server::start(SimConfig {
        mailboxes: 1,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let sink = common::SmtpSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite:{}", dir.path().join("crm.db").display());
    let db = Db::connect(&db_url, 2).await.unwrap();
    db.migrate(MigrationSet::Crm).await.unwrap();
    exec(
        &db,
        "INSERT INTO crm_tenants (id, name) VALUES (1, 'Muster GmbH')",
    )
    .await;
    exec(&db, "INSERT INTO crm_operators (tenant_id, personnel_no, display_name, email) VALUES (1, '1001', 'Anna', 'user1@example.com')").await;
    let base = config(&db_url, &sim.ews_url(), ("svc", "secret"));
    let with_smtp = |port: u16| {
        format!("{base}\n[smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n")
    };

    let good = dir.path().join("smtp.toml");
    std::fs::write(&good, with_smtp(sink.addr.port())).unwrap();
    let (code, out) = test_connection(&good, &["--mailbox", "user1@example.com"]).await;
    assert_eq!(code, 0, "{out}");
    let port = sink.addr.port();
    assert!(
        out.contains(&format!(
            "ok     [smtp]             smtp server: 127.0.0.1:{port} answered EHLO (no TLS)\n"
        )),
        "{out}"
    );
    assert!(out.ends_with("6 checks, 0 failed\n"), "{out}");

    // A port nothing listens on: taken, then freed.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let bad = dir.path().join("smtp-bad.toml");
    std::fs::write(&bad, with_smtp(closed)).unwrap();
    let (code, out) = test_connection(&bad, &["--mailbox", "user1@example.com"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "FAILED [smtp]             smtp server: SMTP server 127.0.0.1:{closed}:"
        )),
        "{out}"
    );
    assert!(out.ends_with("6 checks, 1 failed\n"), "{out}");
    assert!(sink.mails.lock().is_empty(), "a check sends no mail");
    sim.stop().await;
}

/// The operator check reads a MariaDB business database (the state store in SQLite).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_check_reads_a_mariadb_business_database() {
    let Some((name, url)) = common::mariadb_db("testconn").await else {
        return;
    };
    let sim = server::start(SimConfig {
        mailboxes: 3,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(&url, 2).await.unwrap();
    db.migrate(MigrationSet::Crm).await.unwrap();
    exec(
        &db,
        "INSERT INTO crm_tenants (id, name) VALUES (1, 'Muster GmbH')",
    )
    .await;
    exec(&db, "INSERT INTO crm_operators (tenant_id, personnel_no, display_name, email) VALUES (1, '1001', 'Anna', 'user1@example.com')").await;
    db.close().await;
    let state_url = format!("sqlite:{}", dir.path().join("state.db").display());
    let path = dir.path().join("my.toml");
    std::fs::write(
        &path,
        config_with_state(&url, &state_url, &sim.ews_url(), ("svc", "secret")),
    )
    .unwrap();
    let (code, out) = test_connection(&path, &["--mailbox", "user1@example.com"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("ok     user1@example.com  operator: 1001 Anna <user1@example.com>\n"),
        "{out}"
    );
    assert!(out.ends_with("5 checks, 0 failed\n"), "{out}");
    sim.stop().await;
    common::drop_mariadb(&name).await;
}
