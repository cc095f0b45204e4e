//! Fencing of a cluster member's writes (src/cluster/fence.rs and the state store's
//! trigger, migrations/postgres/state/2020_cluster.sql): once another instance took a
//! mailbox over, a late write of the old owner is refused in its own transaction — on a
//! PostgreSQL, MariaDB and SQLite business database and in the PostgreSQL state store — and
//! writes the new owner makes, or any write outside a cluster, go through. On PostgreSQL the
//! takeover waits for a write in flight instead of overtaking it.

mod common;
use common::{count, eventually, exec};

use mailsync::cluster::fence::{self, CrmWrite, Fence};
use mailsync::db::rows::CrmRow;
use mailsync::db::state::ItemMapping;
use mailsync::db::{Db, DbError, MigrationSet};

const MAILBOX: &str = "user1@example.com";

fn contact(surname: &str, ews: &str) -> CrmRow {
    common::contact_row(0, 0, Some(1), surname, ews)
}

fn fenced(token: i64) -> Fence {
    Fence {
        mailbox: MAILBOX.into(),
        token,
    }
}

/// The old owner's writes are refused after a takeover, the new owner's pass, and nothing
/// the refused writes meant to change changed.
async fn late_writes_are_refused(crm: &Db) {
    crm.migrate(MigrationSet::Crm).await.unwrap();
    common::seed(crm, &[(1, "1001", Some(MAILBOX))]).await;
    fence::prepare(crm).await.unwrap();
    fence::prepare(crm).await.unwrap(); // idempotent: every start runs it
    let old = fence::bump(crm, MAILBOX).await.unwrap();
    let (kept, _) = fence::scope(
        fenced(old),
        crm.save_from_exchange(&contact("Before", "AAA1"), "AAA1", None),
    )
    .await
    .expect("the owner's write passes");

    // Another instance takes the mailbox over.
    let new = fence::bump(crm, MAILBOX).await.unwrap();
    assert!(new > old);
    let late = fence::scope(
        fenced(old),
        crm.save_from_exchange(&contact("Late", "AAA2"), "AAA2", None),
    )
    .await;
    assert!(
        matches!(late, Err(DbError::Fenced { .. })),
        "a late write: {late:?}"
    );
    let late_delete = fence::scope(fenced(old), crm.delete_crm_row("crm_contacts", kept)).await;
    assert!(
        matches!(late_delete, Err(DbError::Fenced { .. })),
        "a late delete: {late_delete:?}"
    );
    assert_eq!(
        count(
            crm,
            "SELECT COUNT(*) FROM crm_contacts WHERE surname = 'Late'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            crm,
            "SELECT COUNT(*) FROM crm_contacts WHERE surname = 'Before'"
        )
        .await,
        1,
        "the refused delete deleted nothing"
    );
    let message = late.unwrap_err().to_string();
    assert!(
        message.contains("fenced") && message.contains(MAILBOX),
        "{message}"
    );
    // Every other kind of CRM write a step makes is refused alike, and changes nothing.
    let folder = fence::scope(
        fenced(new),
        crm.insert_mail_folder(1, None, "Projekte", None, "F1"),
    )
    .await
    .expect("the new owner's folder")
    .0;
    let refusals = [
        (
            "a bulk import",
            fence::scope(
                fenced(old),
                crm.save_many_from_exchange(&[mailsync::db::write::ExchangeWrite {
                    row: contact("Late bulk", "AAA5"),
                    ews_id: "AAA5".into(),
                    mapping: None,
                }]),
            )
            .await
            .map(drop),
        ),
        (
            "an Exchange id",
            fence::scope(
                fenced(old),
                crm.set_ews_ids("crm_contacts", &[(kept, "LATE".into())]),
            )
            .await
            .map(drop),
        ),
        (
            "a new folder",
            fence::scope(
                fenced(old),
                crm.insert_mail_folder(1, None, "Late", None, "F2"),
            )
            .await
            .map(drop),
        ),
        (
            "a renamed folder",
            fence::scope(
                fenced(old),
                crm.update_mail_folder(folder, "Late", None, "F1"),
            )
            .await
            .map(drop),
        ),
        (
            "a deleted folder",
            fence::scope(fenced(old), crm.delete_mail_folder(folder))
                .await
                .map(drop),
        ),
        (
            "a moved mail",
            fence::scope(fenced(old), crm.update_mail(1, 1, folder, true, "M1"))
                .await
                .map(drop),
        ),
        (
            "a sent mail",
            fence::scope(fenced(old), crm.finish_outbox(1, Ok(())))
                .await
                .map(drop),
        ),
    ];
    for (what, outcome) in refusals {
        assert!(
            matches!(outcome, Err(DbError::Fenced { .. })),
            "{what}: {outcome:?}"
        );
    }
    assert_eq!(
        count(
            crm,
            "SELECT COUNT(*) FROM crm_contacts WHERE surname = 'Late bulk' OR ews_id = 'LATE'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            crm,
            &format!(
                "SELECT COUNT(*) FROM crm_mail_folders WHERE name = 'Projekte' AND id = {folder}"
            )
        )
        .await,
        1,
        "the refused folder writes changed nothing"
    );

    fence::scope(
        fenced(new),
        crm.save_from_exchange(&contact("New owner", "AAA3"), "AAA3", None),
    )
    .await
    .expect("the new owner's write passes");
    // Outside a cluster nothing is checked.
    crm.save_from_exchange(&contact("Single", "AAA4"), "AAA4", None)
        .await
        .expect("no fence, no check");
}

#[tokio::test]
async fn late_crm_writes_are_refused_on_postgresql() {
    let Some((name, url)) = common::postgres_db("fence").await else {
        return;
    };
    let crm = Db::connect(&url, 4).await.unwrap();
    late_writes_are_refused(&crm).await;
    crm.close().await;
    common::drop_postgres(&name).await;
}

#[tokio::test]
async fn late_crm_writes_are_refused_on_mariadb() {
    let Some((name, url)) = common::mariadb_db("fence").await else {
        return;
    };
    let crm = Db::connect(&url, 4).await.unwrap();
    late_writes_are_refused(&crm).await;
    crm.close().await;
    common::drop_mariadb(&name).await;
}

#[tokio::test]
async fn late_crm_writes_are_refused_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("crm.db").display());
    let crm = Db::connect(&url, 4).await.unwrap();
    late_writes_are_refused(&crm).await;
    crm.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_waits_for_the_old_owners_write_in_flight_on_postgresql() {
    let Some((name, url)) = common::postgres_db("fence_wait").await else {
        return;
    };
    let crm = Db::connect(&url, 4).await.unwrap();
    crm.migrate(MigrationSet::Crm).await.unwrap();
    fence::prepare(&crm).await.unwrap();
    let old = fence::bump(&crm, MAILBOX).await.unwrap();
    let Db::Postgres(pool) = &crm else {
        unreachable!()
    };
    let mut tx = pool.begin().await.unwrap();
    let _mark = fence::scope(fenced(old), tx.begin_write()).await.unwrap();
    let bumping = tokio::spawn({
        let crm = crm.clone();
        async move { fence::bump(&crm, MAILBOX).await.unwrap() }
    });
    // The new owner's bump waits on the row the writer locked.
    eventually(
        "the bump waits for the writer's lock",
        std::time::Duration::from_secs(10),
        || async {
            count(&crm, "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'").await == 1
        },
    )
    .await;
    assert!(!bumping.is_finished());
    sqlx::query("INSERT INTO crm_tenants (id, name) VALUES (7, 'written in flight')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let new = bumping.await.unwrap();
    assert_eq!(new, old + 1);
    assert_eq!(
        count(&crm, "SELECT COUNT(*) FROM crm_tenants WHERE id = 7").await,
        1
    );
    crm.close().await;
    common::drop_postgres(&name).await;
}

fn mapping(ews: &str) -> ItemMapping {
    ItemMapping {
        mailbox: MAILBOX.into(),
        crm_table: "crm_contacts".into(),
        crm_id: 1,
        ews_item_id: ews.into(),
        change_key: None,
        crm_version: Some(1),
        fields: serde_json::json!({}),
        stamped: true,
        unverified: false,
    }
}

#[tokio::test]
async fn the_state_store_refuses_writes_for_a_mailbox_leased_to_another_instance() {
    let Some((name, url)) = common::postgres_db("fence_state").await else {
        return;
    };
    let plain = Db::connect(&url, 2).await.unwrap();
    plain.migrate(MigrationSet::State).await.unwrap();
    let mine = Db::connect_as(&url, 2, Some("a#1")).await.unwrap();
    let theirs = Db::connect_as(&url, 2, Some("b#2")).await.unwrap();
    // No lease row yet: nothing to check.
    mine.put_mapping(&mapping("E1")).await.unwrap();
    exec(&plain, &format!("INSERT INTO ms_lease (mailbox, owner, epoch, expires_at) VALUES ('{MAILBOX}', 'b#2', 2, now() + interval '15 seconds'), ('@crm-feed', 'b#2', 1, now() + interval '15 seconds')")).await;
    let late = mine.put_mapping(&mapping("E2")).await;
    assert!(
        matches!(late, Err(DbError::Fenced { .. })),
        "a mapping of a mailbox b holds: {late:?}"
    );
    let cursor = mine
        .advance_cursor(
            "crm-feed",
            mailsync::db::changes::Cursor { txid: 1, seq: 9 },
        )
        .await;
    assert!(
        matches!(cursor, Err(DbError::Fenced { .. })),
        "the feed's cursor while b reads the feed: {cursor:?}"
    );
    theirs.put_mapping(&mapping("E3")).await.unwrap();
    theirs
        .advance_cursor(
            "crm-feed",
            mailsync::db::changes::Cursor { txid: 1, seq: 9 },
        )
        .await
        .unwrap();
    plain
        .put_mapping(&mapping("E4"))
        .await
        .expect("a connection outside a cluster is not fenced");
    assert_eq!(
        count(
            &plain,
            "SELECT COUNT(*) FROM ms_item_map WHERE ews_item_id = 'E2'"
        )
        .await,
        0
    );
    for db in [plain, mine, theirs] {
        db.close().await;
    }
    common::drop_postgres(&name).await;
}
