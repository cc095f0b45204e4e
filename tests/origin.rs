//! The origin of CRM changes (src/cluster/fence.rs, migrations */crm/1003_change_origin.sql):
//! a write a mailbox's step makes lands in crm_changes with that mailbox as `origin`, every
//! other writer's with none — also one committing while the step's transaction is open — on
//! PostgreSQL, SQLite and MariaDB; and the change feed queues a step's own write to every
//! mailbox concerned except the one that made it.

mod common;
use common::{count, exec};

use std::time::Duration;

use mailsync::cluster::fence::{self, CrmWrite};
use mailsync::config::Area;
use mailsync::db::rows::CrmRow;
use mailsync::db::state::ItemMapping;
use mailsync::db::write::ExchangeWrite;
use mailsync::db::{Db, MigrationSet};
use mailsync::sync::feed::{Feed, Routes};

const USER1: &str = "user1@example.com";
const USER2: &str = "user2@example.com";

fn contact(owner: Option<i64>, surname: &str, ews: &str) -> CrmRow {
    common::contact_row(0, 0, owner, surname, ews)
}

/// The origins logged for the contact rows of `surname`, in log order ("-" for none).
async fn origins(crm: &Db, surname: &str) -> String {
    let sql = format!(
        "SELECT COALESCE(c.origin, '-') FROM crm_changes c JOIN crm_contacts r ON r.id = c.row_id \
         WHERE c.table_name = 'crm_contacts' AND r.surname = '{surname}' ORDER BY c.id"
    );
    let sql = match crm {
        // SQLite's and PostgreSQL's log has no `id`: its order is `seq`.
        Db::MySql(_) => sql,
        _ => sql.replace("ORDER BY c.id", "ORDER BY c.seq"),
    };
    let rows: Vec<String> = match crm {
        Db::Postgres(p) => sqlx::query_scalar(&sql).fetch_all(p).await.unwrap(),
        Db::Sqlite(p) => sqlx::query_scalar(&sql).fetch_all(p).await.unwrap(),
        Db::MySql(p) => sqlx::query_scalar(&sql).fetch_all(p).await.unwrap(),
    };
    rows.join(",")
}

async fn steps_mark_their_writes(crm: &Db) {
    crm.migrate(MigrationSet::Crm).await.unwrap();
    common::seed(crm, &[(1, "1001", Some(USER1)), (2, "1002", Some(USER2))]).await;

    // Every kind of CRM write a step makes carries its mailbox.
    let (id, _) = fence::origin_scope(
        USER1.into(),
        crm.save_from_exchange(&contact(Some(1), "Single", "E1"), "E1", None),
    )
    .await
    .unwrap();
    fence::origin_scope(
        USER1.into(),
        crm.save_many_from_exchange(&[
            ExchangeWrite {
                row: contact(Some(1), "Bulk", "E2"),
                ews_id: "E2".into(),
                mapping: None,
            },
            ExchangeWrite {
                row: contact(Some(1), "Bulk", "E3"),
                ews_id: "E3".into(),
                mapping: None,
            },
        ]),
    )
    .await
    .unwrap();
    fence::origin_scope(
        USER2.into(),
        crm.set_ews_ids("crm_contacts", &[(id, "E1-new".into())]),
    )
    .await
    .unwrap();
    assert_eq!(origins(crm, "Single").await, format!("{USER1},{USER2}"));
    assert_eq!(origins(crm, "Bulk").await, format!("{USER1},{USER1}"));
    let folder = fence::origin_scope(
        USER1.into(),
        crm.insert_mail_folder(1, None, "Projekte", None, "F1"),
    )
    .await
    .unwrap()
    .0;
    let renamed = fence::origin_scope(
        USER1.into(),
        crm.update_mail_folder(folder, "Projekte 2", None, "F1"),
    )
    .await
    .unwrap();
    // The version a write answers is the row's (the mapping stores it; SQLite's trigger bump
    // runs after RETURNING, so the statement bumps it itself).
    assert_eq!(
        renamed,
        Some(
            count(
                crm,
                &format!("SELECT version FROM crm_mail_folders WHERE id = {folder}")
            )
            .await
        )
    );
    assert_eq!(renamed, Some(2));
    fence::origin_scope(USER1.into(), crm.delete_mail_folder(folder))
        .await
        .unwrap();
    assert_eq!(
        count(
            crm,
            &format!("SELECT COUNT(*) FROM crm_changes WHERE table_name = 'crm_mail_folders' AND origin = '{USER1}'")
        )
        .await,
        3
    );

    // Writes outside a step, on the same pool right after a step's (MariaDB keeps session
    // variables on a pooled connection) or by anyone else, carry none.
    crm.set_ews_ids("crm_contacts", &[(id, "E1-again".into())])
        .await
        .unwrap();
    exec(
        crm,
        "INSERT INTO crm_contacts (tenant_id, owner_id, surname) VALUES (1, 1, 'User')",
    )
    .await;
    assert_eq!(origins(crm, "User").await, "-");
    assert_eq!(origins(crm, "Single").await, format!("{USER1},{USER2},-"));

    // A step's transaction is open while a user writes: only the step's write is marked.
    let user_write = {
        let crm = crm.clone();
        async move {
            exec(&crm, "INSERT INTO crm_contacts (tenant_id, owner_id, surname) VALUES (1, 1, 'Meanwhile')").await;
        }
    };
    // A step's write transaction on PostgreSQL or MariaDB, with a user's write committing
    // while it is open.
    macro_rules! step_beside_a_user {
        ($pool:expr) => {{
            let mut tx = $pool.begin().await.unwrap();
            let mark = fence::origin_scope(USER1.into(), tx.begin_write())
                .await
                .unwrap();
            sqlx::query(
                "INSERT INTO crm_contacts (tenant_id, owner_id, surname) VALUES (1, 1, 'Step')",
            )
            .execute(&mut *tx)
            .await
            .unwrap();
            user_write.await;
            tx.end_write(mark).await.unwrap();
            tx.commit().await.unwrap();
        }};
    }
    match crm {
        Db::Postgres(p) => step_beside_a_user!(p),
        Db::MySql(p) => step_beside_a_user!(p),
        Db::Sqlite(p) => {
            // One writer at a time: the step holds the lock from its first statement, so the
            // user's write waits for its commit and is logged after the marked range.
            let mut tx = p.begin().await.unwrap();
            let mark = fence::origin_scope(USER1.into(), tx.begin_write())
                .await
                .unwrap();
            let user = tokio::spawn(user_write);
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(
                !user.is_finished(),
                "the user's write waits for the step's lock"
            );
            sqlx::query(
                "INSERT INTO crm_contacts (tenant_id, owner_id, surname) VALUES (1, 1, 'Step')",
            )
            .execute(&mut *tx)
            .await
            .unwrap();
            tx.end_write(mark).await.unwrap();
            tx.commit().await.unwrap();
            user.await.unwrap();
        }
    }
    assert_eq!(origins(crm, "Step").await, USER1);
    assert_eq!(origins(crm, "Meanwhile").await, "-");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steps_writes_carry_its_mailbox_on_postgresql() {
    let Some((name, url)) = common::postgres_db("origin").await else {
        return;
    };
    let crm = Db::connect(&url, 4).await.unwrap();
    steps_mark_their_writes(&crm).await;
    crm.close().await;
    common::drop_postgres(&name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steps_writes_carry_its_mailbox_on_mariadb() {
    let Some((name, url)) = common::mariadb_db("origin").await else {
        return;
    };
    // One connection: the user's write after the step's runs on the connection the step's
    // session variable was set on.
    let crm = Db::connect(&url, 2).await.unwrap();
    steps_mark_their_writes(&crm).await;
    crm.close().await;
    common::drop_mariadb(&name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steps_writes_carry_its_mailbox_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("crm.db").display());
    let crm = Db::connect(&url, 4).await.unwrap();
    steps_mark_their_writes(&crm).await;
    crm.close().await;
}

/// The feed queues a shared contact a step of user1 imported (and mapped) to user2 only, a
/// write of user1's step that user1's mapping does not hold to user1 as well, and a user's
/// change to both.
#[tokio::test]
async fn the_feed_does_not_queue_a_mailboxs_own_write_back_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("crm.db").display());
    let db = Db::connect(&url, 4).await.unwrap();
    db.migrate(MigrationSet::Crm).await.unwrap();
    db.migrate(MigrationSet::State).await.unwrap();
    common::seed(&db, &[(1, "1001", Some(USER1)), (2, "1002", Some(USER2))]).await;
    let both = vec![USER1.into(), USER2.into()];
    let routes = Routes {
        by_operator: [(1, USER1.into()), (2, USER2.into())].into_iter().collect(),
        shared_contacts: [(1, both.clone())].into_iter().collect(),
        areas: both
            .iter()
            .map(|m| (m.clone(), [Area::Contacts].into_iter().collect()))
            .collect(),
    };
    let feed = Feed::new(db.clone(), db.clone(), routes, Duration::from_millis(20));
    feed.start_at_end_if_new().await.unwrap();

    // As a step writes: the row and user1's mapping (with the version written) together.
    let mapping = |ews: &str| ItemMapping {
        mailbox: USER1.into(),
        crm_table: "crm_contacts".into(),
        crm_id: 0,
        ews_item_id: ews.into(),
        change_key: None,
        crm_version: None,
        fields: serde_json::json!({}),
        stamped: true,
        unverified: false,
    };
    let (shared, _) = fence::origin_scope(
        USER1.into(),
        db.save_from_exchange(&contact(None, "Shared", "S1"), "S1", Some(&mapping("S1"))),
    )
    .await
    .unwrap();
    let (own, _) = fence::origin_scope(
        USER1.into(),
        db.save_from_exchange(&contact(Some(1), "Own", "O1"), "O1", Some(&mapping("O1"))),
    )
    .await
    .unwrap();
    // A write of user1's step that its mapping does not hold (as a CRM trigger's would be)
    // is queued to user1 all the same.
    let (unmapped, _) = fence::origin_scope(
        USER1.into(),
        db.save_from_exchange(&contact(Some(1), "Unmapped", "U1"), "U1", None),
    )
    .await
    .unwrap();
    while feed.poll_once().await.unwrap().is_some() {}
    let queued = |m: &'static str| {
        let db = db.clone();
        async move { db.pending(m, "crm_contacts", 100).await.unwrap() }
    };
    let ids = |v: Vec<(i64, i64)>| v.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
    assert_eq!(ids(queued(USER1).await), vec![unmapped]);
    assert_eq!(ids(queued(USER2).await), vec![shared]);

    // A user edits both rows: both mailboxes get the shared one, user1 its own.
    exec(
        &db,
        &format!("UPDATE crm_contacts SET notes = 'x' WHERE id IN ({shared}, {own})"),
    )
    .await;
    while feed.poll_once().await.unwrap().is_some() {}
    let mut expected = vec![shared, own, unmapped];
    expected.sort();
    assert_eq!(ids(queued(USER1).await), expected);
    assert_eq!(ids(queued(USER2).await), vec![shared]);
    db.close().await;
}
