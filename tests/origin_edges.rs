//! The edges of origin marking (src/cluster/fence.rs, src/sync/feed.rs): a change the business
//! database makes in reaction to a step's write (a CRM trigger, a cascade) carries the step's
//! origin but still reaches the step's own mailbox, because that mailbox's mapping does not
//! hold it; and on MariaDB a step's write that fails leaves no marked connection in the pool.
//! Found by an outside review.

mod common;
use common::exec;

use std::time::Duration;

use mailsync::cluster::fence;
use mailsync::config::Area;
use mailsync::db::rows::CrmRow;
use mailsync::db::{Db, DbError, MigrationSet};
use mailsync::sync::feed::{Feed, Routes};

const USER1: &str = "user1@example.com";

fn contact(id: i64, version: i64, surname: &str, ews: &str) -> CrmRow {
    common::contact_row(id, version, Some(1), surname, ews)
}

async fn origins_of_surname(crm: &Db, surname: &str) -> Vec<Option<String>> {
    let sql = format!(
        "SELECT c.origin FROM crm_changes c JOIN crm_contacts r ON r.id = c.row_id \
         WHERE c.table_name = 'crm_contacts' AND r.surname = '{surname}'"
    );
    match crm {
        Db::Postgres(p) => sqlx::query_scalar(&sql).fetch_all(p).await.unwrap(),
        Db::Sqlite(p) => sqlx::query_scalar(&sql).fetch_all(p).await.unwrap(),
        Db::MySql(p) => sqlx::query_scalar(&sql).fetch_all(p).await.unwrap(),
    }
}

// The origin marks the whole transaction, not the rows the step wrote. A change the
// business database makes in reaction to the step's write (a CRM trigger; on PostgreSQL and
// SQLite also an ON DELETE CASCADE) is logged with the step's mailbox as origin, so the feed
// never queues it to that mailbox although its step never stored (or even knew) it. Here a
// CRM trigger creates a follow-up task for every new contact: the task of user1 never
// reaches user1's queue.

async fn side_effect_of_a_steps_write_reaches_its_mailbox(db: &Db, trigger: &[&str]) {
    db.migrate(MigrationSet::Crm).await.unwrap();
    db.migrate(MigrationSet::State).await.unwrap();
    common::seed(db, &[(1, "1001", Some(USER1))]).await;
    for sql in trigger {
        exec(db, sql).await;
    }
    let routes = Routes {
        by_operator: [(1, USER1.into())].into_iter().collect(),
        shared_contacts: Default::default(),
        areas: [(
            USER1.into(),
            [Area::Contacts, Area::Tasks].into_iter().collect(),
        )]
        .into_iter()
        .collect(),
    };
    let feed = Feed::new(db.clone(), db.clone(), routes, Duration::from_millis(20));
    feed.start_at_end_if_new().await.unwrap();
    // user1's step imports a contact created in Exchange.
    fence::origin_scope(
        USER1.into(),
        db.save_from_exchange(&contact(0, 0, "Imported", "E1"), "E1", None),
    )
    .await
    .unwrap();
    let task = common::count(db, "SELECT MAX(id) FROM crm_tasks").await;
    assert!(task > 0, "the CRM trigger made a task");
    while feed.poll_once().await.unwrap().is_some() {}
    let queued: Vec<i64> = db
        .pending(USER1, "crm_tasks", 100)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        queued,
        vec![task],
        "the task the CRM made (not the step) is user1's new task and must reach user1"
    );
}

#[tokio::test]
async fn a_crm_side_effect_of_a_steps_write_reaches_its_mailbox_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("crm.db").display());
    let db = Db::connect(&url, 4).await.unwrap();
    side_effect_of_a_steps_write_reaches_its_mailbox(
        &db,
        &["CREATE TRIGGER biz_followup AFTER INSERT ON crm_contacts BEGIN \
           INSERT INTO crm_tasks (tenant_id, owner_id, subject) VALUES (NEW.tenant_id, NEW.owner_id, 'Call ' || NEW.surname); END"],
    )
    .await;
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crm_side_effect_of_a_steps_write_reaches_its_mailbox_on_postgresql() {
    let Some((name, url)) = common::postgres_db("probe_side").await else {
        return;
    };
    let db = Db::connect(&url, 4).await.unwrap();
    side_effect_of_a_steps_write_reaches_its_mailbox(
        &db,
        &[
            "CREATE FUNCTION biz_followup() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             INSERT INTO crm_tasks (tenant_id, owner_id, subject) VALUES (NEW.tenant_id, NEW.owner_id, 'Call ' || NEW.surname); \
             RETURN NULL; END $$",
            "CREATE TRIGGER biz_followup AFTER INSERT ON crm_contacts FOR EACH ROW EXECUTE FUNCTION biz_followup()",
        ],
    )
    .await;
    db.close().await;
    common::drop_postgres(&name).await;
}

// MariaDB: @mailsync_origin stays set on the pooled connection when a step's write
// fails between begin_write and end_write (here the ordinary optimistic refusal
// DbError::Stale; equally a fence refusal, a duplicate, a deadlock). The next write on that
// connection that does not itself go through begin_write is marked with the mailbox.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_a_failed_step_write_leaves_no_origin_on_the_pooled_connection() {
    let Some((name, url)) = common::mariadb_db("probe_leak").await else {
        return;
    };
    // One connection, so the next use is the same session.
    let crm = Db::connect(&url, 1).await.unwrap();
    crm.migrate(MigrationSet::Crm).await.unwrap();
    common::seed(&crm, &[(1, "1001", Some(USER1))]).await;
    exec(
        &crm,
        "INSERT INTO crm_contacts (tenant_id, owner_id, surname, ews_id) VALUES (1, 1, 'Row', 'E1')",
    )
    .await;
    let id = common::count(&crm, "SELECT id FROM crm_contacts WHERE surname = 'Row'").await;
    // The step read the row at version 1; a user changed it since (version 2): Stale.
    exec(
        &crm,
        &format!("UPDATE crm_contacts SET notes = 'u' WHERE id = {id}"),
    )
    .await;
    let r = fence::origin_scope(
        USER1.into(),
        crm.save_from_exchange(&contact(id, 1, "Row", "E1"), "E1", None),
    )
    .await;
    assert!(matches!(r, Err(DbError::Stale { .. })), "{r:?}");
    exec(
        &crm,
        "INSERT INTO crm_contacts (tenant_id, owner_id, surname) VALUES (1, 1, 'After')",
    )
    .await;
    let after = origins_of_surname(&crm, "After").await;
    crm.close().await;
    common::drop_mariadb(&name).await;
    assert_eq!(
        after,
        vec![None],
        "a write outside any step carries no origin"
    );
}
