//! The PostgreSQL change signal and the feed over it: `ChangeSignal::wait` returns after a
//! notification (it once waited for the next one too, and the feed hung after its first
//! wake-up), and the feed delivers a change made while it waits. Found by an outside review.

mod common;
use common::exec;

use std::time::Duration;

use mailsync::config::Area;
use mailsync::db::changes::ChangeSignal;
use mailsync::db::{Db, MigrationSet};
use mailsync::sync::feed::{Feed, Routes};
use mailsync_actors::CrmPort;

const USER1: &str = "user1@example.com";

fn routes_user1(areas: &[Area]) -> Routes {
    Routes {
        by_operator: [(1, USER1.into())].into_iter().collect(),
        shared_contacts: [(1, vec![USER1.into()])].into_iter().collect(),
        areas: [(USER1.into(), areas.iter().copied().collect())]
            .into_iter()
            .collect(),
    }
}

// Guards against ChangeSignal::wait never returning after a notification (a "drain" loop
// calls PgListener::try_recv, which WAITS for the next notification; it is not a
// non-blocking poll — that is next_buffered()). The feed's next_changes then hangs.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_change_signal_wait_returns_after_one_notification() {
    let Some((name, url)) = common::postgres_db("probe_sig").await else {
        return;
    };
    let crm = Db::connect(&url, 2).await.unwrap();
    crm.migrate(MigrationSet::Crm).await.unwrap();
    common::seed(&crm, &[(1, "1001", Some(USER1))]).await;
    let mut sig = ChangeSignal::new(&crm, Duration::from_millis(50))
        .await
        .unwrap();
    exec(
        &crm,
        "INSERT INTO crm_contacts (tenant_id, owner_id, surname) VALUES (1, 1, 'One')",
    )
    .await;
    let r = tokio::time::timeout(Duration::from_secs(10), sig.wait(Duration::from_secs(2))).await;
    drop(sig);
    crm.close().await;
    common::drop_postgres(&name).await;
    assert!(
        r.is_ok(),
        "ChangeSignal::wait(2s) did not return within 10 s after one notification"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_feed_next_changes_sees_a_change_made_while_it_waits() {
    let Some((name, url)) = common::postgres_db("probe_feed").await else {
        return;
    };
    let db = Db::connect(&url, 4).await.unwrap();
    db.migrate(MigrationSet::Crm).await.unwrap();
    db.migrate(MigrationSet::State).await.unwrap();
    common::seed(&db, &[(1, "1001", Some(USER1))]).await;
    let feed = Feed::new(
        db.clone(),
        db.clone(),
        routes_user1(&[Area::Contacts]),
        Duration::from_millis(50),
    );
    feed.start_at_end_if_new().await.unwrap();
    let waiting = tokio::spawn({
        let feed = feed.clone();
        async move { feed.next_changes().await }
    });
    // The feed is in wait_for_changes (nothing logged yet).
    tokio::time::sleep(Duration::from_millis(700)).await;
    exec(
        &db,
        "INSERT INTO crm_contacts (tenant_id, owner_id, surname) VALUES (1, 1, 'User edit')",
    )
    .await;
    let got = tokio::time::timeout(Duration::from_secs(15), waiting).await;
    let ok = matches!(&got, Ok(Ok(Ok(v))) if !v.is_empty());
    db.close().await;
    common::drop_postgres(&name).await;
    assert!(
        ok,
        "a user's CRM change made while the feed waited was not delivered within 15 s \
         (the feed's wait has a 5 s cap): {got:?}"
    );
}
