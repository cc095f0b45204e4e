//! Cluster takeover benchmark: `--instances` `mailsync run` processes (default 3) with
//! `[cluster]` on one PostgreSQL database share `--mailboxes` simulated mailboxes (default
//! 1000, contacts only). A writer inserts one CRM contact every `--every-ms` (default 50) for
//! the mailboxes in turn; after the warm-up one instance is killed with SIGKILL. Printed: the
//! takeover time (kill until every mailbox of the dead instance has a live lease elsewhere)
//! and the propagation of the CRM changes (insert until the mapping to its Exchange item is
//! recorded, looked for after every insert) overall and for those made during the takeover.
//!
//! cargo build --release --bin mailsync --example cluster_bench
//! target/release/examples/cluster_bench [--mailboxes 1000] [--instances 3] [--lease 5]
//!     [--pg postgres://postgres@127.0.0.1:5432]

mod bench_util;

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bench_util::arg;
use ews_sim::server::{self, SimConfig};
use mailsync::db::{Db, MigrationSet};
use sqlx::Connection;

const TOKEN: &str = "cluster-bench-token-0123456789";

struct Instance {
    name: String,
    child: Child,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pool(db: &Db) -> &sqlx::PgPool {
    match db {
        Db::Postgres(p) => p,
        _ => unreachable!("PostgreSQL"),
    }
}

async fn owners(db: &Db) -> BTreeMap<String, String> {
    sqlx::query_as::<_, (String, String)>(
        "SELECT l.mailbox, i.name FROM ms_lease l JOIN ms_instance i ON i.id = l.owner \
         WHERE l.expires_at > now() AND l.mailbox NOT LIKE '@%'",
    )
    .fetch_all(pool(db))
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// Records the propagation of every change whose mapping appeared since the last look.
async fn look(db: &Db, inserted: &HashMap<i64, Instant>, seen: &mut HashMap<i64, Duration>) {
    let open: Vec<i64> = inserted
        .keys()
        .filter(|id| !seen.contains_key(*id))
        .copied()
        .collect();
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT crm_id FROM ms_item_map WHERE crm_table = 'crm_contacts' AND crm_id = ANY($1)",
    )
    .bind(&open)
    .fetch_all(pool(db))
    .await
    .unwrap();
    let now = Instant::now();
    for id in ids {
        seen.insert(id, now.duration_since(inserted[&id]));
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[actix_rt::main]
async fn main() {
    let mailboxes: usize = arg("--mailboxes", "1000").parse().unwrap();
    let instances: usize = arg("--instances", "3").parse().unwrap();
    let lease: u64 = arg("--lease", "5").parse().unwrap();
    let every = Duration::from_millis(arg("--every-ms", "50").parse().unwrap());
    let pg = arg("--pg", "postgres://postgres@127.0.0.1:5432");
    let name = format!("mailsync_cluster_bench_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&format!("{pg}/postgres"))
        .await
        .expect("PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = format!("{pg}/{name}");
    let db = Db::connect(&url, 4).await.unwrap();
    db.migrate(MigrationSet::Crm).await.unwrap();
    db.migrate(MigrationSet::State).await.unwrap();
    sqlx::query("INSERT INTO crm_tenants (id, name) VALUES (1, 'Muster GmbH')")
        .execute(pool(&db))
        .await
        .unwrap();
    sqlx::query("INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name, email) SELECT n, 1, (1000 + n)::text, 'Op ' || n, 'user' || n || '@example.com' FROM generate_series(1, $1) n")
        .bind(mailboxes as i64)
        .execute(pool(&db))
        .await
        .unwrap();
    let sim = server::start(SimConfig {
        mailboxes,
        max_streams: Some(100),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("mailsync");
    let mut boxes = String::new();
    for n in 1..=mailboxes {
        boxes.push_str(&format!(
            "[[mailboxes]]\nsmtp = \"user{n}@example.com\"\noperator = \"{}\"\nserver = \"sim\"\n",
            1000 + n
        ));
    }
    let mut procs = Vec::new();
    let mut admins = Vec::new();
    for i in 0..instances {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let name = format!("i{i}");
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n[database]\nurl = \"{url}\"\n[state]\nurl = \"{url}\"\n\
                 [cluster]\ninstance = \"{name}\"\nlease_seconds = {lease}\n\
                 [[servers]]\nname = \"sim\"\news_url = \"{ews}\"\nallow_http = true\nauth = \"basic\"\n\
                 service_account = {{ username = \"svc\", password = \"secret\" }}\n\
                 throttle = {{ requests_per_second = 3000, burst = 3000, max_concurrent_requests = 64 }}\n\
                 [mailbox_defaults]\nareas = [\"contacts\"]\ninitial_sync = \"none\"\n{boxes}",
                ews = sim.ews_url()
            ),
        )
        .unwrap();
        let child = Command::new(&exe)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(config.with_extension("log")).unwrap())
            .spawn()
            .expect("the mailsync binary next to target/release/examples");
        procs.push(Instance { name, child });
        admins.push(format!("http://127.0.0.1:{port}"));
    }
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let owned = owners(&db).await.len();
        // Ready: every instance has finished the first steps of the mailboxes on its board,
        // and the boards together hold every mailbox (an instance that has taken leases but
        // not yet started those mailboxes answers ready with fewer on its board). A change
        // made before a mailbox's first step is part of its baseline (`initial_sync = none`)
        // and is not synced, so the writer must not start earlier.
        let mut ready = 0;
        let mut on_boards = 0;
        for a in &admins {
            if let Ok(r) = http.get(format!("{a}/readyz")).send().await {
                let ok = r.status().is_success();
                if let Ok(v) = r.json::<serde_json::Value>().await {
                    on_boards += v["mailboxes"].as_u64().unwrap_or(0) as usize;
                }
                if ok {
                    ready += 1;
                }
            }
        }
        if owned == mailboxes && ready == instances && on_boards == mailboxes {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "no start: {owned} owned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "{instances} instances x {mailboxes} mailboxes owned and ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let victim = procs[instances - 1].name.clone();
    let of_victim: Vec<String> = owners(&db)
        .await
        .into_iter()
        .filter(|(_, o)| *o == victim)
        .map(|(m, _)| m)
        .collect();

    // The writer: one CRM contact every `every`, for the mailboxes in turn.
    let warmup = Duration::from_secs(5);
    let after = Duration::from_secs(3 * lease + 10);
    let mut inserted: HashMap<i64, Instant> = HashMap::new();
    // Propagation: until the mapping (Exchange item created, then recorded) exists.
    let mut seen: HashMap<i64, Duration> = HashMap::new();
    let mut kill_at = None;
    let mut took_over = None;
    let t0 = Instant::now();
    let mut n = 0usize;
    while t0.elapsed() < warmup + after {
        if kill_at.is_none() && t0.elapsed() >= warmup {
            let v = procs.last_mut().unwrap();
            v.child.kill().unwrap();
            v.child.wait().unwrap();
            kill_at = Some(Instant::now());
        }
        if let (Some(k), None) = (kill_at, took_over) {
            let o = owners(&db).await;
            if of_victim
                .iter()
                .all(|m| o.get(m).is_some_and(|x| *x != victim))
            {
                took_over = Some(k.elapsed());
            }
        }
        let owner = (n % mailboxes) as i64 + 1;
        n += 1;
        let id: i64 = sqlx::query_scalar("INSERT INTO crm_contacts (tenant_id, owner_id, given_name, surname) VALUES (1, $1, 'Bench', 'Contact') RETURNING id")
            .bind(owner)
            .fetch_one(pool(&db))
            .await
            .unwrap();
        inserted.insert(id, Instant::now());
        look(&db, &inserted, &mut seen).await;
        tokio::time::sleep(every).await;
    }
    let kill_at = kill_at.unwrap();
    let took_over = took_over.unwrap_or_else(|| kill_at.elapsed());
    let window_end = kill_at + took_over;
    // The changes still under way.
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < inserted.len() && Instant::now() < deadline {
        look(&db, &inserted, &mut seen).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Changes that never arrived: where each one is stuck (a loss must be visible).
    let missing: Vec<i64> = inserted
        .keys()
        .filter(|id| !seen.contains_key(*id))
        .copied()
        .collect();
    if !missing.is_empty() {
        let stuck: Vec<(i64, String, bool, bool)> = sqlx::query_as(
            "SELECT c.id, 'user' || c.owner_id || '@example.com', \
             EXISTS (SELECT 1 FROM ms_pending p WHERE p.crm_table = 'crm_contacts' AND p.crm_id = c.id), \
             c.ews_id IS NOT NULL \
             FROM crm_contacts c WHERE c.id = ANY($1) ORDER BY c.id",
        )
        .bind(&missing)
        .fetch_all(pool(&db))
        .await
        .unwrap();
        let owners_now = owners(&db).await;
        println!("NOT ARRIVED: {} changes", missing.len());
        for (id, mailbox, pending, ews) in stuck.iter().take(40) {
            println!(
                "  row {id} of {mailbox}: was the killed instance's {}, owner now {:?}, queued {pending}, ews_id set {ews}",
                of_victim.contains(mailbox),
                owners_now.get(mailbox)
            );
        }
    }
    let mut all: Vec<Duration> = seen.values().copied().collect();
    all.sort();
    let mut during: Vec<Duration> = inserted
        .iter()
        .filter(|(_, t)| **t >= kill_at && **t <= window_end)
        .filter_map(|(id, _)| seen.get(id).copied())
        .collect();
    during.sort();
    println!(
        "kill -9 of {victim} ({} mailboxes): all owned again after {:.2} s (lease {lease} s)",
        of_victim.len(),
        took_over.as_secs_f64()
    );
    println!(
        "CRM changes: {} made, {} arrived; propagation p50 {:.2} s, p99 {:.2} s, max {:.2} s",
        inserted.len(),
        all.len(),
        pct(&all, 0.5).as_secs_f64(),
        pct(&all, 0.99).as_secs_f64(),
        pct(&all, 1.0).as_secs_f64()
    );
    println!(
        "  made during the takeover: {}; propagation p50 {:.2} s, p99 {:.2} s, max {:.2} s",
        during.len(),
        pct(&during, 0.5).as_secs_f64(),
        pct(&during, 0.99).as_secs_f64(),
        pct(&during, 1.0).as_secs_f64()
    );
    // By owner at the end and by whether the owner read the feed: where time goes.
    let owner_of = owners(&db).await;
    let feed: Option<String> = sqlx::query_scalar(
        "SELECT i.name FROM ms_lease l JOIN ms_instance i ON i.id = l.owner WHERE l.mailbox = '@crm-feed'",
    )
    .fetch_optional(pool(&db))
    .await
    .unwrap();
    let rows: Vec<(i64, i64)> = sqlx::query_as("SELECT id, owner_id FROM crm_contacts")
        .fetch_all(pool(&db))
        .await
        .unwrap();
    let mut by: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    for (id, op) in rows {
        if let (Some(d), Some(o)) = (
            seen.get(&id),
            owner_of.get(&format!("user{op}@example.com")),
        ) {
            by.entry(o.clone()).or_default().push(*d);
        }
    }
    for (o, mut v) in by {
        v.sort();
        println!(
            "  owner {o}{}: {} changes, p50 {:.2} s, p99 {:.2} s",
            if feed.as_deref() == Some(o.as_str()) {
                " (feed reader)"
            } else {
                ""
            },
            v.len(),
            pct(&v, 0.5).as_secs_f64(),
            pct(&v, 0.99).as_secs_f64()
        );
    }
    drop(procs);
    db.close().await;
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await;
}
