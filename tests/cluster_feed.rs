//! The CRM change feed in a cluster (tests/common/cluster.rs is the rig): the feed moves
//! with its reader's lease and every change arrives once; no mailbox starts before the feed
//! has a position, and a reader's death (before it positioned the feed, or before its NOTIFY)
//! loses no change; only followers listen for the reader's notifications.

mod common;
use common::cluster::*;
use common::{eventually, exec, sim_client, Service};

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mailsync::db::{Db, MigrationSet};

/// The reader of the feed killed right after it took the feed's lease (before it read
/// anything): its successor reads from the position the cluster stored before any mailbox
/// started, so the changes made meanwhile are queued, not skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_moves_with_its_reader_and_every_change_arrives_once() {
    let Some(rig) = Rig::new(6).await else {
        return;
    };
    let mut a = rig.start("a");
    let mut b = rig.start("b");
    every_mailbox_once(&rig, &[&a, &b], Duration::from_secs(60)).await;
    // Every mailbox took its first contact before the changes.
    a.ready(Duration::from_secs(60)).await;
    b.ready(Duration::from_secs(60)).await;
    eventually("a feed reader", Duration::from_secs(3 * LEASE), || async {
        cluster_view(&a).await["feed"]["owner"].is_string()
    })
    .await;
    let reader = cluster_view(&a).await["feed"]["owner"]
        .as_str()
        .unwrap()
        .to_owned();
    let (mut dead, alive) = if reader == "a" { (a, b) } else { (b, a) };
    // Changes for every mailbox (whoever owns it), the reader killed, more changes.
    for n in 1..=rig.mailboxes {
        exec(&rig.db, &format!("INSERT INTO crm_contacts (tenant_id, owner_id, given_name, surname) VALUES (1, {n}, 'First', 'Feed{n}')")).await;
    }
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    for n in 1..=rig.mailboxes {
        exec(&rig.db, &format!("INSERT INTO crm_contacts (tenant_id, owner_id, given_name, surname) VALUES (1, {n}, 'Second', 'Feed{n}')")).await;
    }
    every_mailbox_once(&rig, &[&alive], Duration::from_secs(60)).await;
    let client = sim_client(&rig.sim);
    for n in 1..=rig.mailboxes {
        let smtp = format!("user{n}@example.com");
        let surname = format!("Feed{n}");
        // Changes arrive within a fraction of a second of the takeover (4 runs under a load
        // of 10 on 2 cores); 30 s missed means something is stuck: say what is queued and
        // what both instances logged, so a rare failure can be read.
        let start = Instant::now();
        loop {
            let there = common::exchange_contacts(&client, &smtp)
                .await
                .iter()
                .filter(|(s, _)| *s == surname)
                .count();
            if there >= 2 {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let Db::Postgres(p) = &rig.db else {
                    unreachable!()
                };
                let queued: Vec<(String, String, i64)> =
                    sqlx::query_as("SELECT mailbox, crm_table, crm_id FROM ms_pending")
                        .fetch_all(p)
                        .await
                        .unwrap();
                let tail = |log: String| {
                    let lines: Vec<&str> = log.lines().collect();
                    lines[lines.len().saturating_sub(150)..].join("\n")
                };
                let cursor: Option<(i64, i64)> =
                    sqlx::query_as("SELECT txid, seq FROM ms_cursor WHERE name = 'crm-feed'")
                        .fetch_optional(p)
                        .await
                        .unwrap();
                panic!(
                    "both changes of {smtp} in Exchange: not within 30s ({there} there); \
                     queued: {queued:?}; feed cursor (txid, seq): {cursor:?}\n\
                     --- the killed reader ---\n{}\n--- the survivor ---\n{}",
                    tail(dead.log_text()),
                    tail(alive.log_text())
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        converged(&rig, n).await;
        let in_exchange = common::exchange_contacts(&client, &smtp)
            .await
            .into_iter()
            .filter(|(s, _)| *s == surname)
            .count();
        assert_eq!(in_exchange, 2, "{smtp}: each change once");
    }
    assert_eq!(
        cluster_view(&alive).await["feed"]["owner"],
        if reader == "a" { "b" } else { "a" }
    );
    alive.stop().await;
    rig.finish().await;
}

/// The reader of a fresh cluster that died before it stored the feed's position (here a
/// lease held by an instance that never reads): no mailbox starts before the feed has a
/// position, so a change made meanwhile is not left behind the position the next reader
/// stores; it arrives, and so does one made later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_mailbox_starts_before_the_feed_has_a_position() {
    let Some(rig) = Rig::new(2).await else {
        return;
    };
    exec(
        &rig.db,
        "INSERT INTO ms_lease (mailbox, owner, epoch, expires_at) \
         VALUES ('@crm-feed', 'gone#0', 1, now() + interval '1 hour')",
    )
    .await;
    let mut a = rig.start("a");
    let held_back = "the CRM change feed has no position yet";
    eventually(
        "a's acquiring tick (mailboxes held back, or taken)",
        Duration::from_secs(30),
        || async { a.log_text().contains(held_back) || !rig.owners().await.is_empty() },
    )
    .await;
    assert!(
        rig.owners().await.is_empty() && running(&a).await.is_empty(),
        "mailboxes taken while the feed has no position:\n{}",
        a.log_text()
    );
    assert_eq!(
        readyz(&a).await.0,
        503,
        "ready before it took its mailboxes"
    );
    exec(&rig.db, "INSERT INTO crm_contacts (tenant_id, owner_id, given_name, surname) VALUES (1, 1, 'Karl', 'Meanwhile')").await;
    // The holder is gone: its lease expires.
    exec(
        &rig.db,
        "UPDATE ms_lease SET expires_at = now() WHERE mailbox = '@crm-feed'",
    )
    .await;
    every_mailbox_once(&rig, &[&a], Duration::from_secs(60)).await;
    a.ready(Duration::from_secs(60)).await;
    exec(&rig.db, "INSERT INTO crm_contacts (tenant_id, owner_id, given_name, surname) VALUES (1, 1, 'Karl', 'Later')").await;
    let client = sim_client(&rig.sim);
    eventually(
        "both changes in Exchange",
        Duration::from_secs(30),
        || async {
            let there = common::exchange_contacts(&client, "user1@example.com").await;
            ["Meanwhile", "Later"]
                .iter()
                .all(|n| there.iter().any(|(s, _)| s == n))
        },
    )
    .await;
    converged(&rig, 1).await;
    a.stop().await;
    rig.finish().await;
}

/// The reader killed after it queued a batch and moved the cursor, before its NOTIFY: the
/// next reader wakes what is queued at every instance, not only at itself, so a mailbox of a
/// third instance (whose listener never reconnected) gets the change at once instead of at
/// its next safety read, hours later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_reader_wakes_what_its_predecessor_queued_for_every_instance() {
    use sqlx::Connection;
    // Twenty mailboxes: the third instance owns none with a chance of 1 in 3300.
    let Some(rig) = Rig::new(20).await else {
        return;
    };
    let mut a = rig.start("a");
    let mut b = rig.start("b");
    let mut c = rig.start("c");
    every_mailbox_once(&rig, &[&a, &b, &c], Duration::from_secs(120)).await;
    for s in [&mut a, &mut b, &mut c] {
        s.ready(Duration::from_secs(60)).await;
    }
    eventually("a feed reader", Duration::from_secs(3 * LEASE), || async {
        cluster_view(&a).await["feed"]["owner"].is_string()
    })
    .await;
    let reader = cluster_view(&a).await["feed"]["owner"]
        .as_str()
        .unwrap()
        .to_owned();
    let Db::Postgres(p) = &rig.db else {
        unreachable!()
    };
    let ids: BTreeMap<String, String> = sqlx::query_as("SELECT id, name FROM ms_instance")
        .fetch_all(p)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let rest: Vec<String> = ids
        .iter()
        .filter(|(_, n)| **n != reader)
        .map(|(i, _)| i.clone())
        .collect();
    let next = &ids[mailsync::cluster::rendezvous::owner("@crm-feed", &rest).unwrap()];
    let third = ids
        .values()
        .find(|n| **n != reader && *n != next)
        .unwrap()
        .clone();
    let owners = rig.owners().await;
    let (mailbox, _) = owners
        .iter()
        .find(|(_, o)| **o == third)
        .unwrap_or_else(|| panic!("{third} owns nothing: {owners:?}"));
    let n = number(mailbox);
    // What a reader leaves that died after moving the cursor: the row queued, no NOTIFY.
    // The change log's capture is off for this session, so no reader ever reads it.
    let mut quiet = sqlx::PgConnection::connect(&rig.url).await.unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut quiet)
        .await
        .unwrap();
    let id: i64 = sqlx::query_scalar(&format!("INSERT INTO crm_contacts (tenant_id, owner_id, given_name, surname) VALUES (1, {n}, 'Karl', 'Unheard') RETURNING id"))
        .fetch_one(&mut quiet)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO ms_pending (mailbox, crm_table, crm_id) VALUES ($1, 'crm_contacts', $2)",
    )
    .bind(mailbox)
    .bind(id)
    .execute(&mut quiet)
    .await
    .unwrap();
    quiet.close().await.unwrap();
    let (mut dead, alive): (Service, Vec<Service>) = match reader.as_str() {
        "a" => (a, vec![b, c]),
        "b" => (b, vec![a, c]),
        _ => (c, vec![a, b]),
    };
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    let client = sim_client(&rig.sim);
    eventually(
        &format!("the queued change in {mailbox} at {third}, woken by the next reader {next}"),
        Duration::from_secs(3 * LEASE + 20),
        || async {
            common::exchange_contacts(&client, mailbox)
                .await
                .iter()
                .any(|(s, _)| s == "Unheard")
        },
    )
    .await;
    converged(&rig, n).await;
    for s in alive {
        s.stop().await;
    }
    rig.finish().await;
}

/// A reader that positioned the feed on an empty change log (a fresh installation) and died
/// before reading the first change: the next reader (another instance, or a restart) read
/// that change, it did not start "at the end" again and skip it.
#[tokio::test]
async fn the_next_reader_reads_what_was_logged_after_an_empty_start() {
    use mailsync::sync::feed::{Feed, Routes};
    let Some((db_name, url)) = common::postgres_db("clusterfeed").await else {
        return;
    };
    let db = Db::connect(&url, 2).await.unwrap();
    db.migrate(MigrationSet::Crm).await.unwrap();
    db.migrate(MigrationSet::State).await.unwrap();
    // Tenants are not captured: the log is still empty.
    exec(
        &db,
        "INSERT INTO crm_tenants (id, name) VALUES (1, 'Muster GmbH')",
    )
    .await;
    let feed = || {
        Feed::new(
            db.clone(),
            db.clone(),
            Routes::default(),
            Duration::from_millis(20),
        )
    };
    let first = feed();
    first.start_at_end_if_new().await.unwrap();
    exec(&db, "INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name, email) VALUES (1, 1, '1001', 'Op 1', 'user1@example.com')").await;
    let next = feed();
    next.start_at_end_if_new().await.unwrap();
    assert!(
        next.poll_once().await.unwrap().is_some(),
        "the change logged after the first reader's start was skipped"
    );
    db.close().await;
    common::drop_postgres(&db_name).await;
}

/// The feed's reader does not keep a LISTEN session it never reads (its own NOTIFYs would
/// pile up there and pin PostgreSQL's notification queue): with two instances, only the
/// follower listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_followers_listen_for_the_readers_notifications() {
    let Some(rig) = Rig::new(2).await else {
        return;
    };
    let a = rig.start("a");
    let b = rig.start("b");
    every_mailbox_once(&rig, &[&a, &b], Duration::from_secs(60)).await;
    eventually("a feed reader", Duration::from_secs(3 * LEASE), || async {
        cluster_view(&a).await["feed"]["owner"].is_string()
    })
    .await;
    let Db::Postgres(p) = &rig.db else {
        unreachable!()
    };
    let listening = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
             AND query LIKE 'LISTEN%mailsync_pending%'",
        )
        .bind(&rig.db_name)
        .fetch_one(p)
        .await
        .unwrap()
    };
    eventually(
        "one listening session (the follower's)",
        Duration::from_secs(10 * LEASE),
        || async { listening().await == 1 },
    )
    .await;
    a.stop().await;
    b.stop().await;
    rig.finish().await;
}
