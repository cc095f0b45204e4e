//! Reaching Exchange as installations do, through `mailsync run` and `mailsync test-connection`
//! against ews-sim: a service account with full (delegate) access instead of impersonation —
//! granted mailboxes sync both ways with streaming, a mailbox without the grant fails as
//! Exchange refuses it — and Autodiscover per mailbox, cached per domain, over https with a
//! test CA, with each of Basic, NTLM, OAuth2 with a client secret and OAuth2 with a certificate
//! (a client assertion ews-sim's token endpoint verifies).

mod common;
use common::{count, eventually, exec, free_port, Service};

use std::time::Duration;

use ews_sim::server::{self, SimConfig, UserSpec};
use mailsync::db::{Db, MigrationSet};

const TOKEN: &str = "access-test-token-0123456789";

/// A SQLite business database with tenant 1 and operators `(personnel number, e-mail)`.
async fn crm(dir: &std::path::Path, operators: &[(&str, &str)]) -> (Db, String) {
    let url = format!("sqlite:{}", dir.join("crm.db").display());
    let db = Db::connect(&url, 2).await.unwrap();
    db.migrate(MigrationSet::Crm).await.unwrap();
    exec(
        &db,
        "INSERT INTO crm_tenants (id, name) VALUES (1, 'Muster GmbH')",
    )
    .await;
    for (i, (personnel, email)) in operators.iter().enumerate() {
        exec(
            &db,
            &format!("INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name, email) VALUES ({}, 1, '{personnel}', 'Op {personnel}', '{email}')", i + 1),
        )
        .await;
    }
    (db, url)
}

fn mailboxes(list: &[(&str, &str)]) -> String {
    list.iter()
        .map(|(smtp, operator)| {
            format!(
                "[[mailboxes]]\nsmtp = \"{smtp}\"\noperator = \"{operator}\"\nserver = \"sim\"\n"
            )
        })
        .collect()
}

async fn test_connection(config: &std::path::Path) -> (i32, String) {
    let config = config.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailsync"))
            .args(["test-connection", "--config"])
            .arg(&config)
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
async fn delegate_access_syncs_granted_mailboxes_and_refuses_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("record");
    let sim = server::start(SimConfig {
        mailboxes: 3,
        record: Some(record.clone()),
        users: vec![UserSpec {
            smtp: "crm-sync@example.com".into(),
            password: "full-access-pw".into(),
            display_name: Some("CRM sync".into()),
            impersonation: false,
            full_access: vec!["user1@example.com".into(), "user2@example.com".into()],
        }],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let (db, db_url) = crm(
        dir.path(),
        &[
            ("1001", "user1@example.com"),
            ("1002", "user2@example.com"),
            ("1003", "user3@example.com"),
        ],
    )
    .await;
    let admin_port = free_port();
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
url = "{db_url}"

[[servers]]
name = "sim"
ews_url = "{ews}"
allow_http = true
auth = "basic"
access = "delegate"
service_account = {{ username = "crm-sync@example.com", password = "full-access-pw" }}

[mailbox_defaults]
areas = ["contacts", "calendar", "mail"]

{mailboxes}"#,
            ews = sim.ews_url(),
            mailboxes = mailboxes(&[
                ("user1@example.com", "1001"),
                ("user2@example.com", "1002"),
                ("user3@example.com", "1003"),
            ])
        ),
    )
    .unwrap();

    // test-connection: full access to the granted mailboxes, Exchange's refusal for the other.
    let (code, out) = test_connection(&config).await;
    assert_eq!(code, 1, "{out}");
    let ews = sim.ews_url();
    for granted in ["user1@example.com", "user2@example.com"] {
        assert!(
            out.contains(&format!(
                "ok     {granted}  authentication: crm-sync@example.com at {ews}\n"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "ok     {granted}  full access: acting for {granted}\n"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!("ok     {granted}  folder mail: accessible\n")),
            "{out}"
        );
    }
    assert!(
        out.contains("FAILED user3@example.com  full access: denied (ErrorAccessDenied): Access is denied. Check credentials and try again.\n"),
        "{out}"
    );
    assert!(out.ends_with("15 checks, 1 failed\n"), "{out}");

    // run: the granted mailboxes sync, the other fails with Exchange's reason.
    let service = Service::start(&config, admin_port);
    eventually("mailbox states", Duration::from_secs(60), || {
        let service = &service;
        async move {
            let (_, list) = service.mailboxes(TOKEN).await;
            let states: Vec<(String, String, String)> = list["mailboxes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|m| {
                            (
                                m["smtp"].as_str().unwrap_or("").to_string(),
                                m["state"].as_str().unwrap_or("").to_string(),
                                m["last_error"].as_str().unwrap_or("").to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            states.len() == 3
                && states
                    .iter()
                    .all(|(smtp, state, error)| match smtp.as_str() {
                        "user3@example.com" => {
                            state == "failed" && error.contains("ErrorAccessDenied")
                        }
                        _ => state == "running",
                    })
        }
    })
    .await;
    let (_, list) = service.mailboxes(TOKEN).await;
    for m in list["mailboxes"].as_array().unwrap() {
        if m["smtp"] != "user3@example.com" {
            eventually("first steps", Duration::from_secs(30), || {
                let service = &service;
                let smtp = m["smtp"].as_str().unwrap().to_string();
                async move {
                    let (_, list) = service.mailboxes(TOKEN).await;
                    list["mailboxes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|m| m["smtp"] == smtp.as_str() && m["first_step_done"] == true)
                }
            })
            .await;
        }
    }

    // CRM -> Exchange into user2's mailbox, by delegate access.
    exec(&db, "INSERT INTO crm_contacts (tenant_id, owner_id, given_name, surname) VALUES (1, 2, 'Clara', 'Meier')").await;
    let contacts_of = |smtp: &str| {
        let mailbox = sim.sim.store.mailbox(smtp).unwrap();
        let m = mailbox.lock();
        m.items.values().filter(|i| i.kind == "Contact").count()
    };
    eventually(
        "the CRM contact in user2's Exchange mailbox",
        Duration::from_secs(30),
        || {
            let n = contacts_of("user2@example.com");
            async move { n == 1 }
        },
    )
    .await;

    // Exchange -> CRM through streaming notifications on delegate subscriptions: a contact
    // and a mail a user creates in Outlook.
    let http = reqwest::Client::new();
    let create = |body: serde_json::Value| {
        let http = http.clone();
        let url = format!("{}/sim/mailboxes/user1@example.com/items", sim.base_url());
        async move {
            let resp = http.post(url).json(&body).send().await.unwrap();
            assert!(resp.status().is_success(), "{:?}", resp.text().await);
        }
    };
    create(serde_json::json!({"folder": "contacts", "type": "Contact", "fields": {"GivenName": "Dora", "Surname": "Dietz"}})).await;
    create(serde_json::json!({"folder": "inbox", "type": "Message", "mime": "Subject: Rueckfrage\r\nMessage-ID: <d1@example.org>\r\n\r\nText\r\n"})).await;
    eventually(
        "the Outlook contact and mail in the CRM",
        Duration::from_secs(30),
        || {
            let db = db.clone();
            async move {
                count(&db, "SELECT COUNT(*) FROM crm_contacts WHERE surname = 'Dietz' AND owner_id = 1").await == 1
                    && count(&db, "SELECT COUNT(*) FROM crm_mails WHERE owner_id = 1 AND internet_message_id = '<d1@example.org>'").await == 1
            }
        },
    )
    .await;
    // Nothing landed in the service account's own mailbox.
    let own = sim
        .sim
        .store
        .mailbox("crm-sync@example.com")
        .unwrap()
        .lock()
        .items
        .len();
    assert_eq!(own, 0, "items in the service account's own mailbox");
    service.stop().await;
    sim.stop().await;

    // Every request was a delegate request, valid per the schema: no ExchangeImpersonation,
    // no SubscribeToAllFolders (it would watch the service account's own mailbox).
    let operations = common::validate_recorded_requests(&record);
    assert!(operations.contains("Subscribe"), "{operations:?}");
    let mut subscribes = 0;
    for entry in std::fs::read_dir(&record).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with("-request.xml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("ExchangeImpersonation"), "{name}: {text}");
        if name.contains("-Subscribe-") {
            subscribes += 1;
            assert!(!text.contains("SubscribeToAllFolders"), "{name}: {text}");
        }
    }
    assert!(subscribes >= 2, "{subscribes} Subscribe requests");
}

/// How a server authenticates in the Autodiscover runs.
#[derive(Debug, Clone, Copy)]
enum Auth {
    Basic,
    Ntlm,
    OAuth2Secret,
    OAuth2Certificate,
}

impl Auth {
    fn server_keys(self, base: &str) -> String {
        use mailsync_testkit::fixtures;
        let token_url = format!("{base}/sim/oauth2/token");
        match self {
            Auth::Basic => "auth = \"basic\"\nservice_account = { username = \"svc\", password = \"secret\" }\n".into(),
            Auth::Ntlm => "auth = \"ntlm\"\nservice_account = { username = 'EXAMPLE\\svc', password = \"secret\" }\n".into(),
            Auth::OAuth2Secret => format!(
                "auth = \"oauth2\"\n[servers.oauth2]\ntenant_id = \"sim\"\nclient_id = \"mailsync-app\"\nclient_secret = \"app-secret\"\ntoken_url = \"{token_url}\"\n"
            ),
            Auth::OAuth2Certificate => format!(
                "auth = \"oauth2\"\n[servers.oauth2]\ntenant_id = \"sim\"\nclient_id = \"mailsync-app\"\ncertificate_file = \"{}\"\nprivate_key_file = \"{}\"\ntoken_url = \"{token_url}\"\n",
                fixtures::path(fixtures::OAUTH_APP_CERT).display(),
                fixtures::path(fixtures::OAUTH_APP_KEY).display(),
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autodiscover_per_mailbox_over_https_with_every_auth() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki(dir.path(), &["localhost"]);
    let sim = server::start(SimConfig {
        mailboxes: 2,
        users: vec![UserSpec {
            smtp: "anna@contoso.test".into(),
            password: "pw".into(),
            display_name: None,
            impersonation: false,
            full_access: vec![],
        }],
        tls: Some(pki.tls.clone()),
        oauth_certificate: Some(mailsync_testkit::fixtures::read(
            mailsync_testkit::fixtures::OAUTH_APP_CERT,
        )),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let base = format!("https://localhost:{}", sim.addr.port());
    let (_db, db_url) = crm(
        dir.path(),
        &[
            ("1001", "user1@example.com"),
            ("1002", "user2@example.com"),
            ("2001", "anna@contoso.test"),
        ],
    )
    .await;
    for (n, (auth, endpoint)) in [
        (Auth::Basic, "autodiscover.svc"),
        (Auth::Ntlm, "autodiscover.xml"),
        (Auth::OAuth2Secret, "autodiscover.svc"),
        (Auth::OAuth2Certificate, "autodiscover.xml"),
    ]
    .into_iter()
    .enumerate()
    {
        let admin_port = free_port();
        let config = dir.path().join(format!("mailsync-{n}.toml"));
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
url = "sqlite:{state}"

[mailbox_defaults]
areas = ["contacts"]

{mailboxes}
[[servers]]
name = "sim"
autodiscover = true
autodiscover_url = "{base}/autodiscover/{endpoint}"
ca_file = "{ca}"
{auth}"#,
                state = dir.path().join(format!("state-{n}.db")).display(),
                ca = pki.ca_file.display(),
                auth = auth.server_keys(&base),
                mailboxes = mailboxes(&[
                    ("user1@example.com", "1001"),
                    ("user2@example.com", "1002"),
                    ("anna@contoso.test", "2001"),
                ]),
            ),
        )
        .unwrap();
        // test-connection reaches Exchange the same way.
        let (code, out) = test_connection(&config).await;
        assert_eq!(code, 0, "{auth:?}: {out}");
        let ews = format!("{base}/EWS/Exchange.asmx");
        let who = match auth {
            Auth::Basic => "svc".to_string(),
            Auth::Ntlm => r"EXAMPLE\svc".to_string(),
            Auth::OAuth2Secret | Auth::OAuth2Certificate => "app mailsync-app".to_string(),
        };
        for smtp in ["user1@example.com", "anna@contoso.test"] {
            assert!(
                out.contains(&format!("ok     {smtp:<17}  autodiscover: {ews}\n")),
                "{auth:?}: {out}"
            );
            assert!(
                out.contains(&format!(
                    "ok     {smtp:<17}  authentication: {who} at {ews}\n"
                )),
                "{auth:?}: {out}"
            );
        }
        let mut service = Service::start(&config, admin_port);
        service.ready(Duration::from_secs(60)).await;
        let (status, list) = service.mailboxes(TOKEN).await;
        assert_eq!(status, 200, "{auth:?}");
        let states: Vec<&str> = list["mailboxes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["state"].as_str().unwrap())
            .collect();
        assert_eq!(states, vec!["running"; 3], "{auth:?}: {list}");
        // Once per domain (example.com for two mailboxes, contoso.test), never per mailbox.
        let log = service.log_text();
        let mut found: Vec<(String, String)> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["message"] == "Autodiscover found the EWS endpoint")
            .map(|l| {
                (
                    l["domain"].as_str().unwrap_or("").to_string(),
                    l["ews_url"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        found.sort();
        assert_eq!(
            found,
            vec![
                ("contoso.test".to_string(), ews.clone()),
                ("example.com".to_string(), ews.clone())
            ],
            "{auth:?}:\n{log}"
        );
        service.stop().await;
    }
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autodiscover_that_finds_nothing_stops_the_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki(dir.path(), &["localhost"]);
    // Wrong CA: the simulator's certificate is not trusted, so nothing is sent.
    let other_dir = dir.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = common::pki(&other_dir, &["localhost"]);
    let sim = server::start(SimConfig {
        mailboxes: 1,
        tls: Some(pki.tls.clone()),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let (_db, db_url) = crm(dir.path(), &[("1001", "user1@example.com")]).await;
    let config = dir.path().join("mailsync.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[admin]
listen = "127.0.0.1:{port}"

[database]
url = "{db_url}"

[[servers]]
name = "sim"
autodiscover = true
autodiscover_url = "https://localhost:{sim_port}/autodiscover/autodiscover.svc"
ca_file = "{ca}"
auth = "basic"
service_account = {{ username = "svc", password = "secret" }}

{mailboxes}"#,
            port = free_port(),
            sim_port = sim.addr.port(),
            ca = other.ca_file.display(),
            mailboxes = mailboxes(&[("user1@example.com", "1001")]),
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_mailsync"))
            .args(["run", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("servers.sim: Autodiscover for example.com (asked for user1@example.com)"),
        "{stderr}"
    );
    sim.stop().await;
}
