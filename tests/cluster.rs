//! Several `mailsync run` processes on one PostgreSQL (`[cluster]`): every mailbox is owned
//! by exactly one instance; a kill -9 moves the dead instance's mailboxes within two lease
//! durations and changes made on both sides meanwhile arrive once; a graceful stop hands
//! over at once (its leases released, not left to expire); an instance paused with SIGSTOP
//! loses its mailboxes, stops them when it wakes (its late writes would be refused by the
//! fence, tests/fencing.rs) and rejoins, while a change made meanwhile arrives exactly once.
//! The change feed: no mailbox starts before it has a position, and a reader's death (before
//! it positioned the feed, or before its NOTIFY) loses no change. A member is ready only once
//! the mailboxes it owns took their first steps, and after the state store was away for a
//! lease every lease is run again or handed over.

mod common;
use common::{count, eventually, exec, free_port, sim_client, Service};

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ews::items::{Contact, Item};
use ews::ops::CreateItem;
use ews::types::{DistinguishedFolder, FolderRef};
use ews_sim::server::{self, SimConfig};
use mailsync::config::Area;
use mailsync::db::{Db, MigrationSet};
use mailsync::sync::converge::compare;

const TOKEN: &str = "cluster-test-token-0123456789";
const LEASE: u64 = 3;

/// The database, the simulator and the instances of one scenario.
struct Rig {
    dir: tempfile::TempDir,
    db: Db,
    db_name: String,
    url: String,
    sim: server::Running,
    mailboxes: usize,
}

impl Rig {
    /// A fresh PostgreSQL database (business tables and state store in one), `mailboxes`
    /// simulated mailboxes with one operator each. None without PostgreSQL (outside CI).
    async fn new(mailboxes: usize) -> Option<Rig> {
        let (db_name, url) = common::postgres_db("cluster").await?;
        let db = Db::connect(&url, 4).await.unwrap();
        db.migrate(MigrationSet::Crm).await.unwrap();
        db.migrate(MigrationSet::State).await.unwrap();
        exec(
            &db,
            "INSERT INTO crm_tenants (id, name) VALUES (1, 'Muster GmbH')",
        )
        .await;
        for n in 1..=mailboxes {
            exec(&db, &format!("INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name, email) VALUES ({n}, 1, '{}', 'Op {n}', 'user{n}@example.com')", 1000 + n)).await;
        }
        let sim = server::start(SimConfig {
            mailboxes,
            max_streams: Some(50),
            ..SimConfig::default()
        })
        .await
        .unwrap();
        Some(Rig {
            dir: tempfile::tempdir().unwrap(),
            db,
            db_name,
            url,
            sim,
            mailboxes,
        })
    }

    /// Starts instance `name` (its admin API on a free port).
    fn start(&self, name: &str) -> Service {
        self.start_as(name, name)
    }

    /// Starts an instance named `name` from the configuration file `file`.toml.
    fn start_as(&self, file: &str, name: &str) -> Service {
        let port = free_port();
        let mut boxes = String::new();
        for n in 1..=self.mailboxes {
            boxes.push_str(&format!(
                "[[mailboxes]]\nsmtp = \"user{n}@example.com\"\noperator = \"{}\"\nserver = \"sim\"\n\n",
                1000 + n
            ));
        }
        let config = self.dir.path().join(format!("{file}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"
[admin]
listen = "127.0.0.1:{port}"
token = "{TOKEN}"

[database]
url = "{url}"

[state]
url = "{url}"

[cluster]
instance = "{name}"
lease_seconds = {LEASE}

[[servers]]
name = "sim"
ews_url = "{ews}"
allow_http = true
auth = "basic"
service_account = {{ username = "svc", password = "secret" }}

[mailbox_defaults]
areas = ["contacts"]
initial_sync = "crm-to-exchange"

{boxes}"#,
                url = self.url,
                ews = self.sim.ews_url(),
            ),
        )
        .unwrap();
        Service::start(&config, port)
    }

    /// Owner name of every mailbox with a live lease.
    async fn owners(&self) -> BTreeMap<String, String> {
        let Db::Postgres(p) = &self.db else {
            unreachable!()
        };
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT l.mailbox, i.name FROM ms_lease l JOIN ms_instance i ON i.id = l.owner \
             WHERE l.expires_at > now() AND l.mailbox NOT LIKE '@%'",
        )
        .fetch_all(p)
        .await
        .unwrap();
        rows.into_iter().collect()
    }

    async fn finish(self) {
        self.db.close().await;
        common::drop_postgres(&self.db_name).await;
    }
}

/// The mailboxes an instance's supervisor runs (running state), by its admin API.
async fn running(service: &Service) -> BTreeSet<String> {
    let (status, body) = service.mailboxes(TOKEN).await;
    if status != 200 {
        return BTreeSet::new();
    }
    body["mailboxes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] == "running")
        .map(|m| m["smtp"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until the instances together run every mailbox, each exactly once, and the leases
/// say the same.
async fn every_mailbox_once(rig: &Rig, services: &[&Service], limit: Duration) {
    let all: BTreeSet<String> = (1..=rig.mailboxes)
        .map(|n| format!("user{n}@example.com"))
        .collect();
    let start = Instant::now();
    loop {
        let mut seen = BTreeSet::new();
        let mut twice = Vec::new();
        for s in services {
            for m in running(s).await {
                if !seen.insert(m.clone()) {
                    twice.push(m);
                }
            }
        }
        assert!(twice.is_empty(), "run by two instances at once: {twice:?}");
        if seen == all && rig.owners().await.len() == all.len() {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "not every mailbox runs once within {limit:?}: {} of {} run\n{}",
            seen.len(),
            all.len(),
            services
                .iter()
                .map(|s| s.log_text())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn cluster_view(service: &Service) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{}/api/v1/cluster", service.admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Creates a contact in Exchange as the mailbox's user would.
async fn user_creates_contact(rig: &Rig, smtp: &str, surname: &str) {
    let create = CreateItem {
        folder: Some(FolderRef::well_known(DistinguishedFolder::Contacts)),
        items: vec![Item::Contact(Contact {
            given_name: Some("Eva".into()),
            surname: Some(surname.into()),
            ..Contact::default()
        })],
        disposition: None,
    };
    sim_client(&rig.sim)
        .call(&ews::Target::impersonating(smtp), &create)
        .await
        .unwrap();
}

/// The convergence checker finds nothing lost, duplicated or different in `n`'s contacts.
async fn converged(rig: &Rig, n: usize) {
    let client = sim_client(&rig.sim);
    let target = ews::Target::impersonating(&format!("user{n}@example.com"));
    let mut last = String::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        match compare(
            &rig.db,
            &client,
            &target,
            Area::Contacts,
            n as i64,
            1,
            "Muster GmbH (CRM)",
        )
        .await
        {
            Ok(d) if d.is_empty() => return,
            Ok(d) => last = format!("{d:?}"),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("user{n}: not converged: {last}");
}

fn number(smtp: &str) -> usize {
    smtp.trim_start_matches("user")
        .trim_end_matches("@example.com")
        .parse()
        .unwrap()
}

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

/// /readyz of a member, as (status, body); status 0 while its admin API does not answer.
async fn readyz(service: &Service) -> (u16, serde_json::Value) {
    let Ok(resp) = reqwest::Client::new()
        .get(format!("{}/readyz", service.admin))
        .send()
        .await
    else {
        return (0, serde_json::Value::Null);
    };
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

/// Makes the simulator answer the next `count` requests for `smtp` only after `ms`, so that
/// the mailbox's first step takes at least that long.
async fn slow_down(rig: &Rig, smtp: &str, ms: u64, count: u64) {
    reqwest::Client::new()
        .post(format!("{}/sim/faults", rig.sim.base_url()))
        .json(&serde_json::json!({ "mailbox": smtp, "latency_ms": ms, "count": count }))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
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
