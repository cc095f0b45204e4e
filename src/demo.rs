//! `mailsync demo`: the whole service on embedded defaults. ews-sim runs in-process as the
//! Exchange, a SQLite business database (or the PostgreSQL or MariaDB/MySQL of `--database`;
//! beside MariaDB/MySQL the state store is a SQLite file) gets seed data —
//! operators, contacts (own and shared), appointments (one recurring), tasks — for N mailboxes,
//! every mailbox is initial-synced with progress, then the service runs with the admin API
//! while simulated users change things on both sides and the propagation latency of each
//! change is printed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ews::items::{Contact, Item};
use ews::ops::CreateItem;
use ews::types::{DistinguishedFolder, FolderRef};
use parking_lot::Mutex;
use sqlx::Row;

use crate::config;
use crate::db::{Db, MigrationSet};
use crate::environment::ProcessEnv;
use crate::service;
use crate::sync::engine::Direction;

/// The demo's flags.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Simulated mailboxes (user1@example.com …).
    pub mailboxes: usize,
    /// A business database URL (postgres://, mysql://, mariadb://, sqlite:) instead of a
    /// fresh SQLite file.
    pub database: Option<String>,
    /// Serve the simulator on this address (so other EWS clients can use it).
    pub sim_listen: Option<SocketAddr>,
    /// Record every EWS request and response there.
    pub sim_record: Option<PathBuf>,
    /// Admin API address.
    pub admin: SocketAddr,
    /// Admin API token (a random one is made and printed otherwise).
    pub admin_token: Option<String>,
    /// No simulated users.
    pub no_activity: bool,
    /// Stop after this long (default: run until Ctrl-C).
    pub duration: Option<Duration>,
}

async fn exec(db: &Db, sql: &str) -> anyhow::Result<()> {
    match db {
        Db::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        Db::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        Db::MySql(p) => sqlx::query(&crate::db::mysql_literals(sql))
            .execute(p)
            .await
            .map(|_| ()),
    }
    .with_context(|| format!("seeding: {sql}"))
}

async fn scalar(db: &Db, sql: &str) -> anyhow::Result<i64> {
    let v = match db {
        Db::Postgres(p) => sqlx::query(sql)
            .fetch_one(p)
            .await
            .and_then(|r| r.try_get::<i64, _>(0)),
        Db::Sqlite(p) => sqlx::query(sql)
            .fetch_one(p)
            .await
            .and_then(|r| r.try_get::<i64, _>(0)),
        Db::MySql(p) => sqlx::query(sql)
            .fetch_one(p)
            .await
            .and_then(|r| r.try_get::<i64, _>(0)),
    };
    v.with_context(|| format!("reading: {sql}"))
}

const SURNAMES: [&str; 10] = [
    "Müller",
    "Schmidt",
    "Schneider",
    "Fischer",
    "Weber",
    "Meyer",
    "Wagner",
    "Becker",
    "Schulz",
    "Hoffmann",
];
const GIVEN: [&str; 10] = [
    "Anna", "Ben", "Clara", "David", "Emma", "Felix", "Greta", "Hannes", "Ida", "Jonas",
];

/// Operators, contacts, appointments and tasks for `n` mailboxes, unless the database has
/// operators already.
async fn seed(db: &Db, n: usize) -> anyhow::Result<bool> {
    if scalar(db, "SELECT COUNT(*) FROM crm_operators").await? > 0 {
        return Ok(false);
    }
    exec(
        db,
        "INSERT INTO crm_tenants (id, name) VALUES (1, 'Demo GmbH')",
    )
    .await?;
    for i in 1..=n {
        let id = i as i64;
        exec(db, &format!("INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name, email) VALUES ({id}, 1, '{}', 'Operator {i}', 'user{i}@example.com')", 1000 + i)).await?;
        let contacts: Vec<String> = (0..10)
            .map(|k| {
                let (g, s) = (GIVEN[(i + k) % 10], SURNAMES[(i * 3 + k) % 10]);
                format!("(1, {id}, '{g}', '{s}', 'Kunde {k} AG', '{}.{}@kunde{k}.example', '+49 30 {i:03}{k:02}')", g.to_lowercase(), i)
            })
            .collect();
        exec(db, &format!("INSERT INTO crm_contacts (tenant_id, owner_id, given_name, surname, company, email1, business_phone) VALUES {}", contacts.join(", "))).await?;
        let day = 23 + (i % 5);
        exec(db, &format!(
            "INSERT INTO crm_appointments (tenant_id, owner_id, subject, location, starts_at, ends_at, time_zone, recurrence) VALUES \
             (1, {id}, 'Jour fixe', 'Raum {i}', '2026-11-{day:02}T08:00:00Z', '2026-11-{day:02}T09:00:00Z', 'Europe/Berlin', 'FREQ=WEEKLY;COUNT=10'), \
             (1, {id}, 'Kundentermin', 'Berlin', '2026-11-{day:02}T13:00:00Z', '2026-11-{day:02}T14:30:00Z', 'Europe/Berlin', NULL), \
             (1, {id}, 'Messe', 'Hannover', '2026-12-0{}T23:00:00Z', '2026-12-0{}T23:00:00Z', 'Europe/Berlin', NULL)",
            1 + i % 4, 2 + i % 4
        )).await?;
        exec(db, &format!(
            "INSERT INTO crm_tasks (tenant_id, owner_id, subject, due_date, status, importance) VALUES \
             (1, {id}, 'Angebot schreiben', '2026-12-01', 'in_progress', 'high'), \
             (1, {id}, 'Rechnung prüfen', '2026-12-05', 'not_started', 'normal'), \
             (1, {id}, 'Rückruf', NULL, 'not_started', 'low')"
        )).await?;
    }
    exec(db, "INSERT INTO crm_contacts (tenant_id, owner_id, company, email1) VALUES (1, NULL, 'Zentrale Demo GmbH', 'info@demo.example'), (1, NULL, 'Hotline', 'hotline@demo.example')").await?;
    Ok(true)
}

fn config_text(
    db_url: &str,
    state_url: &str,
    ews_url: &str,
    n: usize,
    admin: SocketAddr,
    token: &str,
) -> String {
    let mut out = format!(
        r#"# Written by `mailsync demo`.
[admin]
listen = "{admin}"
token = "{token}"

[database]
url = "{db_url}"

[state]
url = "{state_url}"

[[tenants]]
id = "1"
name = "Demo GmbH"

[[servers]]
name = "ews-sim"
ews_url = "{ews_url}"
allow_http = true
auth = "basic"
service_account = {{ username = "svc", password = "secret" }}
throttle = {{ requests_per_second = 500, burst = 500, max_concurrent_requests = 20 }}

[mailbox_defaults]
areas = ["contacts", "calendar", "tasks"]
"#
    );
    for i in 1..=n {
        out.push_str(&format!("\n[[mailboxes]]\nsmtp = \"user{i}@example.com\"\noperator = \"{}\"\nserver = \"ews-sim\"\ntenant = \"1\"\n", 1000 + i));
    }
    out
}

/// Latencies of propagated changes, by direction.
#[derive(Default)]
struct Latencies {
    to_exchange: Vec<Duration>,
    to_crm: Vec<Duration>,
}

fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s.get(((s.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

/// Runs the demo.
pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let n = opts.mailboxes.max(1);
    let sim_config = ews_sim::server::SimConfig {
        listen: opts
            .sim_listen
            .unwrap_or_else(|| "127.0.0.1:0".parse().expect("literal address")),
        mailboxes: n,
        record: opts.sim_record.clone(),
        ..ews_sim::server::SimConfig::default()
    };
    let sim = ews_sim::server::start(sim_config)
        .await
        .context("starting ews-sim")?;
    println!("ews-sim (the simulated Exchange): {}", sim.ews_url());
    println!("  mailboxes user1@example.com … user{n}@example.com (password: password), service account svc / secret");
    let dir = tempfile::Builder::new()
        .prefix("mailsync-demo-")
        .tempdir()
        .context("creating a working directory")?;
    let db_url = match &opts.database {
        Some(url) => url.clone(),
        None => format!("sqlite:{}", dir.path().join("demo.db").display()),
    };
    let db = Db::connect(&db_url, 5)
        .await
        .context("connecting the business database")?;
    db.migrate(MigrationSet::Crm).await?;
    // The state store lives in the business database, except beside MariaDB/MySQL, which
    // cannot hold it: then in a SQLite file of the working directory.
    let (state_url, state) = if db.kind() == config::DbKind::MySql {
        let url = format!("sqlite:{}", dir.path().join("state.db").display());
        let state = Db::connect(&url, 5)
            .await
            .context("creating the state store")?;
        (url, state)
    } else {
        (db_url.clone(), db.clone())
    };
    state.migrate(MigrationSet::State).await?;
    if seed(&db, n).await? {
        println!(
            "business database {}: seeded {n} operators with contacts, appointments and tasks",
            crate::secret::mask_url(&db_url)
        );
    }
    let token = opts.admin_token.clone().unwrap_or_else(|| {
        format!(
            "demo-{:016x}",
            (std::process::id() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        )
    });
    let path = dir.path().join("mailsync.toml");
    std::fs::write(
        &path,
        config_text(&db_url, &state_url, &sim.ews_url(), n, opts.admin, &token),
    )?;
    let cfg = config::load(&path, &ProcessEnv).map_err(|e| anyhow::anyhow!("{e}"))?;

    println!("initial sync, CRM to Exchange:");
    let started = Instant::now();
    for m in &cfg.mailboxes {
        let summary = service::initial_sync(cfg.clone(), &m.smtp, Direction::CrmToExchange).await?;
        print!("{summary}");
    }
    println!(
        "initial sync of {n} mailboxes done in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let running = service::start(&cfg, path.clone()).await?;
    println!("admin API: http://{} (token {token}) — try: mailsync ctl status --url http://{} --token {token}", running.admin.addr, running.admin.addr);
    println!("continuous sync running; Ctrl-C stops");
    let latencies = Arc::new(Mutex::new(Latencies::default()));
    if !opts.no_activity {
        let (db, state, lat) = (db.clone(), state.clone(), latencies.clone());
        let mut cfg_client = ews::ClientConfig::new(
            url::Url::parse(&sim.ews_url()).context("the simulator's URL")?,
            ews::Auth::Basic {
                username: "svc".into(),
                password: "secret".into(),
            },
        );
        cfg_client.allow_http = true;
        let client = ews::Client::new(cfg_client)?;
        actix_rt::spawn(async move {
            if let Err(e) = activity(db, state, client, n, lat).await {
                eprintln!("simulated users stopped: {e:#}");
            }
        });
    }
    running.until_stopped_or(opts.duration).await?;
    {
        let l = latencies.lock();
        for (name, v) in [
            ("CRM → Exchange", &l.to_exchange),
            ("Exchange → CRM", &l.to_crm),
        ] {
            if !v.is_empty() {
                println!(
                    "{name}: {} changes, latency p50 {} ms, p99 {} ms",
                    v.len(),
                    percentile(v, 0.5).as_millis(),
                    percentile(v, 0.99).as_millis()
                );
            }
        }
    }
    db.close().await;
    sim.stop().await;
    Ok(())
}

/// Simulated users: one change a second, alternating sides, each followed until it arrived.
async fn activity(
    db: Db,
    state: Db,
    client: ews::Client,
    n: usize,
    latencies: Arc<Mutex<Latencies>>,
) -> anyhow::Result<()> {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    for k in 1u64.. {
        tick.tick().await;
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let user = (seed % n as u64) as usize + 1;
        let mailbox = format!("user{user}@example.com");
        let surname = format!("Demo{k}");
        let start = Instant::now();
        if k % 2 == 1 {
            exec(&db, &format!("INSERT INTO crm_contacts (tenant_id, owner_id, given_name, surname) VALUES (1, {user}, 'Neu', '{surname}')")).await?;
            let id = scalar(
                &db,
                &format!("SELECT id FROM crm_contacts WHERE surname = '{surname}'"),
            )
            .await?;
            let arrived = wait(Duration::from_secs(10), || {
                let state = state.clone();
                async move { scalar(&state, &format!("SELECT COUNT(*) FROM ms_item_map WHERE crm_table = 'crm_contacts' AND crm_id = {id}")).await.unwrap_or(0) > 0 }
            })
            .await;
            report(
                &latencies,
                true,
                &mailbox,
                &surname,
                arrived.then(|| start.elapsed()),
            );
        } else {
            let item = Item::Contact(Contact {
                given_name: Some("Outlook".into()),
                surname: Some(surname.clone()),
                ..Contact::default()
            });
            let op = CreateItem {
                folder: Some(FolderRef::well_known(DistinguishedFolder::Contacts)),
                items: vec![item],
                disposition: None,
            };
            client
                .call(&ews::Target::impersonating(&mailbox), &op)
                .await?;
            let arrived = wait(Duration::from_secs(10), || {
                let db = db.clone();
                let q = format!("SELECT COUNT(*) FROM crm_contacts WHERE surname = '{surname}'");
                async move { scalar(&db, &q).await.unwrap_or(0) > 0 }
            })
            .await;
            report(
                &latencies,
                false,
                &mailbox,
                &surname,
                arrived.then(|| start.elapsed()),
            );
        }
    }
    Ok(())
}

async fn wait<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

fn report(
    latencies: &Mutex<Latencies>,
    to_exchange: bool,
    mailbox: &str,
    what: &str,
    took: Option<Duration>,
) {
    let arrow = if to_exchange {
        "CRM → Exchange"
    } else {
        "Exchange → CRM"
    };
    match took {
        Some(d) => {
            let mut l = latencies.lock();
            let v = if to_exchange {
                &mut l.to_exchange
            } else {
                &mut l.to_crm
            };
            v.push(d);
            println!(
                "  {arrow}  {mailbox:<22} contact {what:<8} {:>5} ms   (p50 {} ms, p99 {} ms over {})",
                d.as_millis(),
                percentile(v, 0.5).as_millis(),
                percentile(v, 0.99).as_millis(),
                v.len()
            );
        }
        None => println!("  {arrow}  {mailbox:<22} contact {what:<8} not arrived within 10 s"),
    }
}
