//! The service under faults: ErrorServerBusy storms, dropped streams, expired subscriptions and
//! invalidated sync states, with changes on both sides throughout; the convergence checker
//! then finds both sides equal, item by item, in every mailbox.

mod common;
use common::{count, exec, sim_client};

use std::time::{Duration, Instant};

use ews::items::{Contact, Item};
use ews::ops::{CreateItem, DeleteItem, DeleteType};
use ews::types::{DistinguishedFolder, FolderRef};
use ews_sim::server::{self, SimConfig};
use mailsync::config::Area;
use mailsync::db::{Db, MigrationSet};
use mailsync::environment::ProcessEnv;
use mailsync::sync::converge::{compare, Difference};

#[actix_rt::test]
async fn faults_on_every_path_end_with_both_sides_equal_on_postgres() {
    let Some((name, url)) = common::postgres_db("faults").await else {
        return;
    };
    faults_on_every_path_end_with_both_sides_equal(&url, &url).await;
    common::drop_postgres(&name).await;
}

#[actix_rt::test]
async fn faults_on_every_path_end_with_both_sides_equal_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite:{}", dir.path().join("crm.db").display());
    faults_on_every_path_end_with_both_sides_equal(&db_url, &db_url).await;
}

/// The business database in MariaDB, the state store in SQLite beside it.
#[actix_rt::test]
async fn faults_on_every_path_end_with_both_sides_equal_on_mariadb() {
    let Some((name, url)) = common::mariadb_db("faults").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let state_url = format!("sqlite:{}", dir.path().join("state.db").display());
    faults_on_every_path_end_with_both_sides_equal(&url, &state_url).await;
    common::drop_mariadb(&name).await;
}

/// The scenario on the business database at `db_url` with the state store at `state_url`
/// (the same database on PostgreSQL and SQLite). Every request the service sent, storms and
/// retries included, is checked against the schema.
async fn faults_on_every_path_end_with_both_sides_equal(db_url: &str, state_url: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let record = tempfile::tempdir().unwrap();
    let sim = server::start(SimConfig {
        mailboxes: 3,
        record: Some(record.path().to_path_buf()),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(db_url, 3).await.unwrap();
    db.migrate(MigrationSet::Crm).await.unwrap();
    exec(
        &db,
        "INSERT INTO crm_tenants (id, name) VALUES (1, 'Muster GmbH')",
    )
    .await;
    let mut config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[database]
url = "{db_url}"

[state]
url = "{state_url}"

[[servers]]
name = "sim"
ews_url = "{}"
allow_http = true
auth = "basic"
service_account = {{ username = "svc", password = "secret" }}

[mailbox_defaults]
areas = ["contacts"]
"#,
        sim.ews_url()
    );
    for n in 1..=3 {
        exec(&db, &format!("INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name, email) VALUES ({n}, 1, '{n}', 'Op {n}', 'user{n}@example.com')")).await;
        config.push_str(&format!("\n[[mailboxes]]\nsmtp = \"user{n}@example.com\"\noperator = \"{n}\"\nserver = \"sim\"\ntenant = \"1\"\n"));
    }
    config.push_str("\n[[tenants]]\nid = \"1\"\nname = \"Muster GmbH\"\n");
    let path = dir.path().join("mailsync.toml");
    std::fs::write(&path, config).unwrap();
    let cfg = mailsync::config::load(&path, &ProcessEnv).unwrap();
    let service = mailsync::service::start(&cfg, path.clone()).await.unwrap();
    let board = service.handle.board.clone();
    let start = Instant::now();
    while !(board.ready() && board.len() == 3) {
        assert!(start.elapsed() < Duration::from_secs(30), "not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let client = sim_client(&sim);
    let http = reqwest::Client::new();
    let sim_api = |path: &str| format!("{}/sim/{path}", sim.base_url());
    let outlook = |n: usize, surname: String| {
        let client = client.clone();
        async move {
            let item = Item::Contact(Contact {
                surname: Some(surname),
                ..Contact::default()
            });
            let op = CreateItem {
                folder: Some(FolderRef::well_known(DistinguishedFolder::Contacts)),
                items: vec![item],
                disposition: None,
            };
            client
                .call(
                    &ews::Target::impersonating(&format!("user{n}@example.com")),
                    &op,
                )
                .await
                .unwrap()
                .output
                .remove(0)
                .unwrap()
        }
    };

    // Changes on both sides, then a storm of ErrorServerBusy.
    for i in 0..6 {
        exec(
            &db,
            &format!(
                "INSERT INTO crm_contacts (tenant_id, owner_id, surname) VALUES (1, {}, 'crm{i}')",
                i % 3 + 1
            ),
        )
        .await;
    }
    let mut created = Vec::new();
    for i in 0..6 {
        created.push((i % 3 + 1, outlook(i % 3 + 1, format!("outlook{i}")).await));
    }
    // Storms on the requests the service's steps make (the test's own user calls are left alone).
    for (operation, count) in [("SyncFolderItems", 15), ("UpdateItem", 5), ("GetItem", 5)] {
        let storm = serde_json::json!({"operation": operation, "error_code": "ErrorServerBusy", "back_off_ms": 300, "count": count});
        http.post(sim_api("faults"))
            .json(&storm)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }
    exec(
        &db,
        "UPDATE crm_contacts SET job_title = 'geändert' WHERE surname IN ('crm0', 'crm4')",
    )
    .await;
    exec(
        &db,
        "INSERT INTO crm_contacts (tenant_id, owner_id, company) VALUES (1, NULL, 'Geteilt AG')",
    )
    .await;
    created.push((2, outlook(2, "outlook-storm".into()).await));

    // Streams cut, subscriptions lost, a mailbox's sync states invalid; changes go on.
    http.post(sim_api("streams/drop"))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    http.post(sim_api("subscriptions/expire"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    http.post(sim_api("syncstates/invalidate"))
        .json(&serde_json::json!({"mailbox": "user2@example.com"}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    exec(&db, "DELETE FROM crm_contacts WHERE surname = 'crm1'").await;
    let (n, gone) = created.remove(0);
    let delete = DeleteItem {
        ids: vec![ews::types::ItemId {
            id: gone.id.clone(),
            change_key: None,
        }],
        delete_type: DeleteType::MoveToDeletedItems,
    };
    client
        .call(
            &ews::Target::impersonating(&format!("user{n}@example.com")),
            &delete,
        )
        .await
        .unwrap();
    created.push((3, outlook(3, "outlook-after".into()).await));

    // Converged: every mailbox equal on both sides, item by item.
    let start = Instant::now();
    let mut last = Vec::new();
    loop {
        let mut diffs = Vec::new();
        for n in 1..=3i64 {
            let target = ews::Target::impersonating(&format!("user{n}@example.com"));
            // The checker's own requests may meet the storm too: then it looks again.
            match compare(
                &db,
                &client,
                &target,
                Area::Contacts,
                n,
                1,
                "Muster GmbH (CRM)",
            )
            .await
            {
                Ok(d) => diffs.extend(d.into_iter().map(|d: Difference| format!("user{n}: {d:?}"))),
                Err(e) => diffs.push(format!("user{n}: checker: {e}")),
            }
        }
        if diffs.is_empty() {
            break;
        }
        last = diffs;
        if start.elapsed() > Duration::from_secs(60) {
            let status: Vec<_> = board
                .snapshots()
                .into_iter()
                .map(|s| (s.smtp, s.state, s.last_error, s.folders))
                .collect();
            let state = Db::connect(state_url, 1).await.unwrap();
            let pending = count(&state, "SELECT COUNT(*) FROM ms_pending").await;
            let maps = count(&state, "SELECT COUNT(*) FROM ms_item_map").await;
            panic!("not converged: {last:#?}\npending {pending} mappings {maps}\n{status:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 6 + 1 shared from the CRM, 6 + 2 from Outlook, minus one deleted on each side.
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM crm_contacts").await,
        6 + 1 + 8 - 2,
        "{last:?}"
    );
    // One more ERP edit after the storms: an UpdateItem the recorded requests must show
    // (before, the edits may have ridden along with their creates and the stamps may still
    // wait, so no UpdateItem need have got through).
    exec(
        &db,
        "UPDATE crm_contacts SET job_title = 'zuletzt' WHERE surname = 'crm2'",
    )
    .await;
    let user3 = ews::Target::impersonating("user3@example.com");
    let start = Instant::now();
    loop {
        let diffs = compare(
            &db,
            &client,
            &user3,
            Area::Contacts,
            3,
            1,
            "Muster GmbH (CRM)",
        )
        .await;
        if diffs.as_ref().is_ok_and(|d| d.is_empty()) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the last edit did not arrive: {diffs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats: serde_json::Value = http
        .get(sim_api("stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Faults were really injected: at least the SyncFolderItems storm ran its full count (every
    // step of a folder woken by the changes above reads it, and the service could not have
    // converged while it still answered busy); the UpdateItem and GetItem storms are spent only
    // as far as the service sends those operations (stamps ride along with other updates,
    // echoes need no GetItem), so at most their counts.
    let injected = stats["faults_injected"]
        .as_u64()
        .unwrap_or_else(|| panic!("GET /sim/stats has no faults_injected: {stats}"));
    assert!((15..=15 + 5 + 5).contains(&injected), "{stats}");
    // And the service met them as what they are: server-wide pauses on its throttle.
    let pauses = service
        .telemetry
        .runtime
        .throttle_pauses
        .with_label_values(&["sim"])
        .get();
    assert!(pauses > 0, "the service never paused for the storms");
    let _ = service.handle.addr.send(mailsync_actors::Shutdown).await;
    service.admin.stop().await;
    sim.stop().await;
    db.close().await;
    // The test's own user calls are recorded too; they come from the same `ews` client.
    let operations = common::validate_recorded_requests(record.path());
    for op in [
        "SyncFolderItems",
        "GetItem",
        "CreateItem",
        "UpdateItem",
        "Subscribe",
    ] {
        assert!(operations.contains(op), "no {op} among {operations:?}");
    }
}
