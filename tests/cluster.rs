//! Several `mailsync run` processes on one PostgreSQL (`[cluster]`): every mailbox is owned
//! by exactly one instance; a kill -9 moves the dead instance's mailboxes within two lease
//! durations and changes made on both sides meanwhile arrive once; a graceful stop hands
//! over at once (its leases released, not left to expire); an instance paused with SIGSTOP
//! loses its mailboxes, stops them when it wakes (its late writes would be refused by the
//! fence, tests/fencing.rs) and rejoins, while a change made meanwhile arrives exactly once.
//! A member is ready only once the mailboxes it owns took their first steps, and after the
//! state store was away for a lease every lease is run again or handed over. The change
//! feed's hand-overs: tests/cluster_feed.rs.

mod common;
use common::cluster::*;
use common::{count, eventually, exec, sim_client};

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_sixty_mailboxes_and_take_over_a_dead_ones() {
    let Some(rig) = Rig::new(60).await else {
        return;
    };
    let mut a = rig.start("a");
    let mut b = rig.start("b");
    let mut c = rig.start("c");
    every_mailbox_once(&rig, &[&a, &b, &c], Duration::from_secs(120)).await;
    for s in [&mut a, &mut b, &mut c] {
        s.ready(Duration::from_secs(60)).await;
    }
    let owners = rig.owners().await;
    for name in ["a", "b", "c"] {
        let n = owners.values().filter(|o| *o == name).count();
        assert!(n >= 8, "{name} owns only {n} of 60: {owners:?}");
    }
    let view = cluster_view(&a).await;
    assert_eq!(view["enabled"], true, "{view}");
    assert_eq!(view["live"], 3, "{view}");
    assert_eq!(view["mailboxes"].as_array().unwrap().len(), 60, "{view}");

    // A command for a mailbox another instance owns answers 409 naming the owner.
    let elsewhere = owners.iter().find(|(_, o)| *o == "b").unwrap().0.clone();
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/mailboxes/{elsewhere}/sync", a.admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 409);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["owner"], "b", "{body}");
    assert_eq!(
        body["owner_admin_url"].as_str(),
        Some(b.admin.as_str()),
        "{body}"
    );

    // `mailsync ctl cluster` on any instance shows the same cluster.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailsync"))
        .args(["ctl", "cluster", "--url", &c.admin, "--token", TOKEN])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("cluster: 3 live of 3 instances, lease 3s"),
        "{text}"
    );
    assert!(
        text.contains("c (this)") && text.contains(&format!("{elsewhere:<40} b ")),
        "{text}"
    );
    assert!(text.contains("change feed read by: "), "{text}");

    // kill -9 of b; meanwhile a CRM change and an Exchange change for its mailboxes.
    let of_b: Vec<String> = owners
        .iter()
        .filter(|(_, o)| *o == "b")
        .map(|(m, _)| m.clone())
        .collect();
    let killed = Instant::now();
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let crm_side = number(&of_b[0]);
    let ews_side = number(&of_b[of_b.len() - 1]);
    exec(&rig.db, &format!("INSERT INTO crm_contacts (tenant_id, owner_id, given_name, surname) VALUES (1, {crm_side}, 'Karl', 'Takeover')")).await;
    user_creates_contact(&rig, &of_b[of_b.len() - 1], "Failover").await;
    eventually(
        "b's mailboxes leased by a or c",
        Duration::from_secs(2 * LEASE),
        || async {
            let owners = rig.owners().await;
            of_b.iter()
                .all(|m| owners.get(m).is_some_and(|o| o == "a" || o == "c"))
        },
    )
    .await;
    let took = killed.elapsed();
    every_mailbox_once(&rig, &[&a, &c], Duration::from_secs(60)).await;
    eventually(
        "the CRM change in Exchange",
        Duration::from_secs(30),
        || async {
            common::exchange_contacts(&sim_client(&rig.sim), &of_b[0])
                .await
                .iter()
                .any(|(s, _)| s == "Takeover")
        },
    )
    .await;
    eventually(
        "the Exchange change in the CRM",
        Duration::from_secs(30),
        || async {
            count(
                &rig.db,
                &format!("SELECT COUNT(*) FROM crm_contacts WHERE surname = 'Failover' AND owner_id = {ews_side}"),
            )
            .await
                == 1
        },
    )
    .await;
    converged(&rig, crm_side).await;
    converged(&rig, ews_side).await;
    assert_eq!(
        count(
            &rig.db,
            "SELECT COUNT(*) FROM crm_contacts WHERE surname IN ('Takeover', 'Failover')"
        )
        .await,
        2
    );
    println!("takeover after kill -9: {took:?}");

    // A graceful stop of c hands over at once: its leases are released, not left to expire.
    let of_c: Vec<String> = rig
        .owners()
        .await
        .into_iter()
        .filter(|(_, o)| o == "c")
        .map(|(m, _)| m)
        .collect();
    assert!(!of_c.is_empty());
    let c_log = c.log.clone();
    c.stop().await;
    assert_eq!(
        count(
            &rig.db,
            "SELECT COUNT(*) FROM ms_lease l JOIN ms_instance i ON i.id = l.owner WHERE i.name = 'c'"
        )
        .await,
        0,
        "c left leases behind; its log:\n{}",
        std::fs::read_to_string(&c_log).unwrap_or_default()
    );
    assert_eq!(
        count(&rig.db, "SELECT COUNT(*) FROM ms_instance WHERE name = 'c'").await,
        0
    );
    eventually(
        "c's mailboxes owned by a",
        Duration::from_secs(LEASE),
        || async {
            let owners = rig.owners().await;
            of_c.iter().all(|m| owners.get(m).is_some_and(|o| o == "a"))
        },
    )
    .await;
    every_mailbox_once(&rig, &[&a], Duration::from_secs(60)).await;
    a.stop().await;
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_instance_loses_its_mailboxes_and_its_late_writes_are_refused() {
    let Some(rig) = Rig::new(6).await else {
        return;
    };
    let mut a = rig.start("a");
    let mut b = rig.start("b");
    every_mailbox_once(&rig, &[&a, &b], Duration::from_secs(60)).await;
    // Every mailbox took its first contact before the changes.
    a.ready(Duration::from_secs(60)).await;
    b.ready(Duration::from_secs(60)).await;
    let of_b: Vec<String> = rig
        .owners()
        .await
        .into_iter()
        .filter(|(_, o)| o == "b")
        .map(|(m, _)| m)
        .collect();
    assert!(!of_b.is_empty());
    let pid = b.child.id() as i32;
    // SAFETY: signals to our own child process.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    eventually(
        "b's mailboxes taken over by a",
        Duration::from_secs(3 * LEASE),
        || async {
            let owners = rig.owners().await;
            of_b.iter().all(|m| owners.get(m).is_some_and(|o| o == "a"))
        },
    )
    .await;
    // While b sleeps: a user's change in one of its former mailboxes. b's subscription
    // still hears of it, so when b wakes it would sync it too.
    let n = number(&of_b[0]);
    user_creates_contact(&rig, &of_b[0], "Paused").await;
    unsafe { libc::kill(pid, libc::SIGCONT) };
    eventually(
        "b stops the mailboxes it lost",
        Duration::from_secs(3 * LEASE),
        || async {
            b.log_text()
                .contains("leases taken over by another instance")
        },
    )
    .await;
    // b is live again: it gets its share back, each mailbox still run by one instance.
    every_mailbox_once(&rig, &[&a, &b], Duration::from_secs(30)).await;
    eventually(
        "the change in the CRM once",
        Duration::from_secs(30),
        || async {
            count(
                &rig.db,
                &format!(
                    "SELECT COUNT(*) FROM crm_contacts WHERE surname = 'Paused' AND owner_id = {n}"
                ),
            )
            .await
                == 1
        },
    )
    .await;
    converged(&rig, n).await;
    assert_eq!(
        count(
            &rig.db,
            "SELECT COUNT(*) FROM crm_contacts WHERE surname = 'Paused'"
        )
        .await,
        1
    );
    b.stop().await;
    a.stop().await;
    rig.finish().await;
}

/// A member is ready only once its first acquiring tick is done and every mailbox it owns
/// took its first step (its board starts empty, so the board alone would say ready at once);
/// when it takes over a dead member's mailboxes it is not ready until those took theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_is_ready_once_the_mailboxes_it_owns_took_their_first_step() {
    // Ten mailboxes: the hashing leaves b none with a chance of 1 in 1024.
    let Some(rig) = Rig::new(10).await else {
        return;
    };
    let all: BTreeSet<String> = (1..=rig.mailboxes)
        .map(|n| format!("user{n}@example.com"))
        .collect();
    slow_down(&rig, "user1@example.com", 3000, 2).await;
    let mut a = rig.start("a");
    let start = Instant::now();
    let mut saw_waiting = false;
    loop {
        let (status, body) = readyz(&a).await;
        let runs = running(&a).await;
        if status == 200 {
            assert_eq!(
                runs, all,
                "ready before its mailboxes took their first step: {body}"
            );
            break;
        }
        saw_waiting |= status == 503
            && body["cluster"]["acquired"] == true
            && body["cluster"]["owned"] == all.len()
            && body["cluster"]["waiting"].as_u64() >= Some(1);
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not ready within 60s: {body}\n{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        saw_waiting,
        "/readyz never named the owned mailbox it waited for"
    );

    let mut b = rig.start("b");
    every_mailbox_once(&rig, &[&a, &b], Duration::from_secs(60)).await;
    a.ready(Duration::from_secs(60)).await;
    b.ready(Duration::from_secs(60)).await;
    let of_b: Vec<String> = rig
        .owners()
        .await
        .into_iter()
        .filter(|(_, o)| o == "b")
        .map(|(m, _)| m)
        .collect();
    assert!(!of_b.is_empty(), "{:?}", rig.owners().await);
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    // Only a asks for b's mailboxes from now on: their first steps at a are slow.
    for m in &of_b {
        slow_down(&rig, m, 3000, 2).await;
    }
    eventually(
        "a not ready while b's mailboxes take their first step there",
        Duration::from_secs(3 * LEASE),
        || async {
            let (status, body) = readyz(&a).await;
            status == 503 && body["cluster"]["owned"] == all.len()
        },
    )
    .await;
    a.ready(Duration::from_secs(60)).await;
    assert_eq!(running(&a).await, all);
    a.stop().await;
    rig.finish().await;
}

/// The state store unreachable for longer than a lease (a PostgreSQL failover, say): the
/// instance stops its mailboxes by itself, and its leases outlive the gap (nobody took them;
/// its first renewal afterwards makes them fresh again). Then each of them must either run
/// here again or, when another instance should own it now, be handed over; neither may stay
/// renewed for ever by an instance that does not run it. Here the other instance is a row
/// with a heartbeat the test keeps fresh, so that it is live at a's first tick back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_state_store_was_away_a_lease_is_run_again_or_handed_over() {
    use sqlx::Connection;
    let Some(rig) = Rig::new(2).await else {
        return;
    };
    let mut a = rig.start("a");
    every_mailbox_once(&rig, &[&a], Duration::from_secs(60)).await;
    // The test's own session survives the gap; everything else of the database is cut off.
    let mut keep = sqlx::PgConnection::connect(&rig.url).await.unwrap();
    let db = &rig.db_name;
    common::postgres_admin(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false")).await;
    let mine: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut keep)
        .await
        .unwrap();
    common::postgres_admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{db}' AND pid <> {mine}"
    ))
    .await;
    eventually(
        "a stops its mailboxes for want of renewals",
        Duration::from_secs(60),
        || async {
            a.log_text()
                .contains("no lease renewal for a whole lease; stopping every mailbox here")
        },
    )
    .await;
    assert_eq!(readyz(&a).await.0, 503, "ready while it runs nothing");
    // Another instance joins meanwhile and should own user1 now.
    let a_id: String = sqlx::query_scalar("SELECT id FROM ms_instance WHERE name = 'a'")
        .fetch_one(&mut keep)
        .await
        .unwrap();
    let (z_id, live) = (0..)
        .map(|n| {
            let z = format!("z#{n}");
            let mut live = vec![a_id.clone(), z.clone()];
            live.sort();
            (z, live)
        })
        .find(|(z, live)| {
            mailsync::cluster::rendezvous::owner("user1@example.com", live) == Some(z.as_str())
        })
        .unwrap();
    sqlx::query(
        "INSERT INTO ms_instance (id, name, heartbeat) VALUES ($1, 'z', now() + interval '1 hour')",
    )
    .bind(&z_id)
    .execute(&mut keep)
    .await
    .unwrap();
    common::postgres_admin(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true")).await;
    let of_a: BTreeSet<String> = (1..=rig.mailboxes)
        .map(|n| format!("user{n}@example.com"))
        .filter(|m| mailsync::cluster::rendezvous::owner(m, &live) == Some(a_id.as_str()))
        .collect();
    eventually(
        "a runs what it should own again and hands user1 over",
        Duration::from_secs(30),
        || async {
            let held: BTreeMap<String, String> = rig
                .owners()
                .await
                .into_iter()
                .filter(|(_, o)| o == "a")
                .collect();
            !held.contains_key("user1@example.com")
                && held.keys().cloned().collect::<BTreeSet<_>>() == of_a
                && running(&a).await == of_a
        },
    )
    .await;
    // The other instance leaves again: a takes everything.
    sqlx::query("DELETE FROM ms_instance WHERE id = $1")
        .bind(&z_id)
        .execute(&mut keep)
        .await
        .unwrap();
    every_mailbox_once(&rig, &[&a], Duration::from_secs(30)).await;
    a.ready(Duration::from_secs(30)).await;
    keep.close().await.unwrap();
    a.stop().await;
    rig.finish().await;
}

/// A copied configuration: a second instance under the name of a running one refuses to
/// start, naming the name and the running one, and takes nothing; a restart under the name
/// of a killed instance (its heartbeat stopped) starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_under_a_running_name_refuses_to_start() {
    let Some(rig) = Rig::new(2).await else {
        return;
    };
    let mut a = rig.start("a");
    every_mailbox_once(&rig, &[&a], Duration::from_secs(60)).await;
    let mut copy = rig.start_as("a-copy", "a");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = copy.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the copy still runs:\n{}",
            copy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success(), "{}", copy.log_text());
    assert!(
        copy.log_text()
            .contains("is already used by a running instance (id a#"),
        "{}",
        copy.log_text()
    );
    let owners = rig.owners().await;
    assert_eq!(owners.len(), 2, "{owners:?}");
    assert!(owners.values().all(|n| n == "a"), "{owners:?}");
    assert_eq!(running(&a).await.len(), 2);
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let again = rig.start_as("a-again", "a");
    every_mailbox_once(&rig, &[&again], Duration::from_secs(60)).await;
    again.stop().await;
    rig.finish().await;
}
