//! The sync service at scale against ews-sim and PostgreSQL: initial sync throughput, then
//! propagation latency both ways under a steady change load, EWS requests per change, RSS.
//!
//! ```sh
//! cargo run --release --example sync_bench -- [--mailboxes 1000] [--contacts 100] \
//!     [--rate 20] [--seconds 30] [--database postgres://postgres@127.0.0.1:5432/postgres] \
//!     [--initial-by-run]
//! ```
//!
//! `--initial-by-run`: no initial sync beforehand; every mailbox holds `--contacts` contacts in
//! the CRM and as many other ones in Exchange, and `mailsync run` starts with
//! `initial_sync = "crm-to-exchange"`, copying each side's to the other; the figure is the time
//! until every mailbox is synced both ways and ready.
//!
//! A fresh database `mailsync_bench_<pid>` is created on the server of `--database` and
//! dropped at the end. Prints one JSON object.

#[path = "bench_util/mod.rs"]
mod bench_util;
use bench_util::{arg, status_mb};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ews::items::{Contact, Item};
use ews::ops::CreateItem;
use ews::types::{DistinguishedFolder, FolderRef};
use futures_util::stream::{self, StreamExt};
use mailsync::db::{Db, MigrationSet};
use mailsync::environment::ProcessEnv;
use mailsync::metrics::Telemetry;
use mailsync::sync::engine::{Direction, Engine};
use sqlx::Connection;

async fn exec(db: &Db, sql: &str) {
    if let Db::Postgres(p) = db {
        sqlx::query(sql)
            .execute(p)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

async fn scalar(db: &Db, sql: &str) -> i64 {
    match db {
        Db::Postgres(p) => {
            sqlx::query_as::<_, (i64,)>(sql)
                .fetch_one(p)
                .await
                .unwrap()
                .0
        }
        Db::Sqlite(p) => {
            sqlx::query_as::<_, (i64,)>(sql)
                .fetch_one(p)
                .await
                .unwrap()
                .0
        }
        Db::MySql(p) => {
            sqlx::query_as::<_, (i64,)>(sql)
                .fetch_one(p)
                .await
                .unwrap()
                .0
        }
    }
}

async fn requests(http: &reqwest::Client, base: &str) -> BTreeMap<String, u64> {
    let stats: serde_json::Value = http
        .get(format!("{base}/sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    serde_json::from_value(stats["requests_by_operation"].clone()).unwrap_or_default()
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, skip: &[&str]) -> u64 {
    after
        .iter()
        .filter(|(op, _)| !skip.contains(&op.as_str()))
        .map(|(op, n)| n - before.get(op).copied().unwrap_or(0))
        .sum()
}

/// Requests per operation between two snapshots.
fn by_operation(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(op, n)| (op.clone(), n - before.get(op).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn pct(v: &[Duration], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort();
    s.get(((s.len() as f64 - 1.0) * p).round() as usize)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn main() {
    let mailboxes: usize = arg("--mailboxes", "1000").parse().unwrap();
    let contacts: usize = arg("--contacts", "100").parse().unwrap();
    let rate: u64 = arg("--rate", "20").parse().unwrap();
    let seconds: u64 = arg("--seconds", "30").parse().unwrap();
    let admin_url = arg("--database", "postgres://postgres@127.0.0.1:5432/postgres");
    let by_run = std::env::args().any(|a| a == "--initial-by-run");
    // Logs (stderr) only when asked for: MAILSYNC_BENCH_LOG=info.
    if let Ok(level) = std::env::var("MAILSYNC_BENCH_LOG") {
        mailsync::logging::init(mailsync::config::LogFormat::Text, &level);
    }
    actix_rt::System::new().block_on(async move {
        let sim = ews_sim::server::start(ews_sim::server::SimConfig {
            mailboxes,
            workers: 2,
            // The service account's throttling policy allows 16 open streaming connections
            // (HangingConnectionLimit; Exchange's default is 3 on-premises, 10 online): 1,000
            // mailboxes stream in 5 groups of 200, and a renewal opens the next connection
            // before it closes the old one.
            max_streams: Some(16),
            ..Default::default()
        }).await.unwrap();
        let name = format!("mailsync_bench_{}", std::process::id());
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.expect("PostgreSQL for the bench");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
        let base = admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(b, _)| b).to_owned();
        let db_url = format!("{base}/{name}");
        let db = Db::connect(&db_url, 20).await.unwrap();
        db.migrate(MigrationSet::Crm).await.unwrap();
        db.migrate(MigrationSet::State).await.unwrap();
        exec(&db, "INSERT INTO crm_tenants (id, name) VALUES (1, 'Bench')").await;
        exec(&db, &format!("INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name, email) SELECT g, 1, g::text, 'Op ' || g, 'user' || g || '@example.com' FROM generate_series(1, {mailboxes}) g")).await;
        exec(&db, &format!("INSERT INTO crm_contacts (tenant_id, owner_id, given_name, surname, company, email1) SELECT 1, o, 'Given' || c, 'Surname' || o || '-' || c, 'Company ' || c, 'c' || c || '.o' || o || '@example.com' FROM generate_series(1, {mailboxes}) o, generate_series(1, {contacts}) c")).await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"{db_url}\"\nmax_connections = 20\n[state]\nurl = \"{db_url}\"\nmax_connections = 20\n[[tenants]]\nid = \"1\"\nname = \"Bench\"\n\
             [[servers]]\nname = \"sim\"\news_url = \"{}\"\nallow_http = true\nauth = \"basic\"\nservice_account = {{ username = \"svc\", password = \"secret\" }}\n\
             throttle = {{ requests_per_second = 5000, burst = 5000, max_concurrent_requests = 64 }}\n[mailbox_defaults]\nareas = [\"contacts\"]\n{}",
            sim.ews_url(),
            if by_run { "initial_sync = \"crm-to-exchange\"\n" } else { "" }
        );
        for i in 1..=mailboxes {
            config.push_str(&format!("[[mailboxes]]\nsmtp = \"user{i}@example.com\"\noperator = \"{i}\"\nserver = \"sim\"\ntenant = \"1\"\n"));
        }
        let path = dir.path().join("bench.toml");
        std::fs::write(&path, config).unwrap();
        let cfg = mailsync::config::load(&path, &ProcessEnv).unwrap();
        let http = reqwest::Client::new();

        let telemetry = Telemetry::new();
        let mut initial_seconds = 0.0;
        let mut items = 0.0;
        let mut initial_requests = 0.0;
        let mut initial_by_op = BTreeMap::new();
        if by_run {
            // As many other contacts in each Exchange mailbox as in its CRM.
            let now = chrono::Utc::now();
            for i in 1..=mailboxes {
                let mb = sim.sim.store.mailbox(&format!("user{i}@example.com")).unwrap();
                let mut m = mb.lock();
                let folder = m.distinguished["contacts"];
                for c in 0..contacts {
                    let props = vec![
                        ews_sim::xml::Node::leaf("GivenName", &format!("Outlook{c}")),
                        ews_sim::xml::Node::leaf("Surname", &format!("User{i}-{c}")),
                    ];
                    m.create_item(folder, "Contact", props, now).unwrap();
                }
                m.pending_events.clear();
            }
        } else {
            // Initial sync of every mailbox, 32 at a time.
            let built = mailsync::service::build(&cfg, &db, &telemetry).await.unwrap();
            let engine = Engine::new(db.clone(), db.clone(), true, telemetry.service.clone());
            engine.set_mailboxes(built.setups);
            let throttle = mailsync_actors::Throttle::new("sim".into(), built.servers[0].throttle, telemetry.runtime.clone());
            let before = requests(&http, &sim.base_url()).await;
            let started = Instant::now();
            let specs = built.mailboxes.clone();
            let results: Vec<_> = stream::iter(specs)
                .map(|spec| {
                    let (engine, throttle) = (engine.clone(), throttle.clone());
                    async move { engine.initial_sync(&spec, Direction::CrmToExchange, throttle, false, &|_, _, _| {}).await }
                })
                .buffer_unordered(32)
                .collect()
                .await;
            initial_seconds = started.elapsed().as_secs_f64();
            assert!(results.iter().all(Result::is_ok), "initial sync failed: {:?}", results.iter().find(|r| r.is_err()));
            items = scalar(&db, "SELECT COUNT(*) FROM ms_item_map").await as f64;
            let after = requests(&http, &sim.base_url()).await;
            initial_requests = delta(&before, &after, &[]) as f64;
            initial_by_op = by_operation(&before, &after);
        }

        // The service, then a steady change load both ways.
        let before_run = requests(&http, &sim.base_url()).await;
        let service = mailsync::service::start(&cfg, path.clone()).await.unwrap();
        let board = service.handle.board.clone();
        let ready_start = Instant::now();
        let mut last_report = Instant::now();
        let expected = (2 * mailboxes * contacts) as i64;
        loop {
            let ready = board.ready() && board.len() == mailboxes;
            if ready && (!by_run || scalar(&db, "SELECT COUNT(*) FROM ms_item_map").await >= expected) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            if last_report.elapsed() > Duration::from_secs(10) {
                last_report = Instant::now();
                let ready = board.snapshots().iter().filter(|m| m.first_step_done).count();
                eprintln!("{:>5.0} s: {ready} of {mailboxes} mailboxes ready; {:?}", ready_start.elapsed().as_secs_f64(), board.states());
            }
        }
        let ready_seconds = ready_start.elapsed().as_secs_f64();
        if by_run {
            initial_seconds = ready_seconds;
            items = scalar(&db, "SELECT COUNT(*) FROM ms_item_map").await as f64;
            assert_eq!(scalar(&db, "SELECT COUNT(*) FROM crm_contacts").await, expected, "every contact once in the CRM");
            let after = requests(&http, &sim.base_url()).await;
            initial_requests = delta(&before_run, &after, &["GetStreamingEvents"]) as f64;
            initial_by_op = by_operation(&before_run, &after);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss_idle = status_mb("VmRSS:");
        let mut cfg_client = ews::ClientConfig::new(url::Url::parse(&sim.ews_url()).unwrap(), ews::Auth::Basic { username: "svc".into(), password: "secret".into() });
        cfg_client.allow_http = true;
        let client = ews::Client::new(cfg_client).unwrap();
        let to_exchange = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let to_crm = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let before = requests(&http, &sim.base_url()).await;
        let mut tick = tokio::time::interval(Duration::from_millis(1000 / rate.max(1)));
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut watchers = Vec::new();
        let missing = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
        for k in 0..rate * seconds {
            tick.tick().await;
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let user = (seed % mailboxes as u64) + 1;
            let surname = format!("Load{k}");
            let t0 = Instant::now();
            let db = db.clone();
            if k % 2 == 0 {
                exec(&db, &format!("INSERT INTO crm_contacts (tenant_id, owner_id, surname) VALUES (1, {user}, '{surname}')")).await;
                let id = scalar(&db, &format!("SELECT id FROM crm_contacts WHERE surname = '{surname}'")).await;
                let sink = to_exchange.clone();
                watchers.push(actix_rt::spawn(async move {
                    while t0.elapsed() < Duration::from_secs(30) {
                        if scalar(&db, &format!("SELECT COUNT(*) FROM ms_item_map WHERE crm_table = 'crm_contacts' AND crm_id = {id}")).await > 0 {
                            sink.lock().push(t0.elapsed());
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }));
            } else {
                let item = Item::Contact(Contact { surname: Some(surname.clone()), ..Contact::default() });
                let op = CreateItem { folder: Some(FolderRef::well_known(DistinguishedFolder::Contacts)), items: vec![item], disposition: None };
                let created = client.call(&ews::Target::impersonating(&format!("user{user}@example.com")), &op).await.unwrap();
                if let Some(Err(e)) = created.output.first() {
                    eprintln!("the simulated user's CreateItem in user{user} failed: {e}");
                    continue;
                }
                let t0 = Instant::now();
                let sink = to_crm.clone();
                let missing = missing.clone();
                watchers.push(actix_rt::spawn(async move {
                    while t0.elapsed() < Duration::from_secs(30) {
                        if scalar(&db, &format!("SELECT COUNT(*) FROM crm_contacts WHERE surname = '{surname}'")).await > 0 {
                            sink.lock().push(t0.elapsed());
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    missing.lock().push(format!("{surname} (user{user})"));
                }));
            }
        }
        for w in watchers {
            let _ = w.await;
        }
        let missing = missing.lock().clone();
        if !missing.is_empty() {
            eprintln!("not in the CRM after 30 s: {missing:?}");
        }
        let after = requests(&http, &sim.base_url()).await;
        let changes = (rate * seconds) as f64;
        // The users' own CreateItem calls are not mailsync's; streaming connections are not
        // per-change requests.
        let user_creates = (rate * seconds / 2) as f64;
        let service_requests = delta(&before, &after, &["GetStreamingEvents"]) as f64 - user_creates;
        let steady_by_op = by_operation(&before, &after);
        let (te, tc) = (to_exchange.lock().clone(), to_crm.lock().clone());
        println!(
            "{}",
            serde_json::json!({
                "mailboxes": mailboxes,
                "initial_sync_by_run": by_run,
                "items_initial": items,
                "initial_sync_seconds": (initial_seconds * 100.0).round() / 100.0,
                "initial_sync_items_per_second": (items / initial_seconds).round(),
                "initial_sync_requests_per_item": ((initial_requests / items) * 1000.0).round() / 1000.0,
                "service_ready_seconds": (ready_seconds * 100.0).round() / 100.0,
                "rss_mb_idle": rss_mb_round(rss_idle),
                "changes": changes,
                "crm_to_exchange": { "propagated": te.len(), "p50_ms": pct(&te, 0.5).round(), "p99_ms": pct(&te, 0.99).round() },
                "exchange_to_crm": { "propagated": tc.len(), "p50_ms": pct(&tc, 0.5).round(), "p99_ms": pct(&tc, 0.99).round() },
                "ews_requests_per_change": ((service_requests / changes) * 100.0).round() / 100.0,
                "initial_requests_by_operation": initial_by_op,
                "steady_requests_by_operation (users' CreateItem included)": steady_by_op,
                "rss_mb_end": rss_mb_round(status_mb("VmRSS:")),
            })
        );
        let _ = service.handle.addr.send(mailsync_actors::Shutdown).await;
        service.admin.stop().await;
        db.close().await;
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await;
        sim.stop().await;
    });
}

fn rss_mb_round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}
