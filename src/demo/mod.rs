//! `mailsync demo`: the whole service on embedded defaults. ews-sim runs in-process as the
//! Exchange, a SQLite business database (or the PostgreSQL or MariaDB/MySQL of `--database`;
//! beside MariaDB/MySQL the state store is a SQLite file) gets seed data —
//! operators, contacts (own and shared), appointments (one recurring), tasks, mail folders and
//! mails (read and unread, with attachments) — for N mailboxes, the simulated mailboxes get
//! mail of their own, every mailbox is initial-synced with progress, then the service runs
//! with the admin API and its console while simulated users change things on both sides
//! ([`activity`]) and the propagation latency of each change is printed. `--areas` chooses
//! the data areas.

mod activity;
mod seed;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use parking_lot::Mutex;

use crate::config::{self, Area};
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
    /// The data areas seeded, synced and changed by the simulated users.
    pub areas: Vec<Area>,
}

fn config_text(
    db_url: &str,
    state_url: &str,
    ews_url: &str,
    n: usize,
    admin: SocketAddr,
    token: &str,
    areas: &[Area],
) -> String {
    let areas: Vec<String> = areas
        .iter()
        .map(|a| format!("\"{}\"", a.as_str()))
        .collect();
    let areas = areas.join(", ");
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
areas = [{areas}]
"#
    );
    for i in 1..=n {
        out.push_str(&format!("\n[[mailboxes]]\nsmtp = \"user{i}@example.com\"\noperator = \"{}\"\nserver = \"ews-sim\"\ntenant = \"1\"\n", 1000 + i));
    }
    out
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
    let areas = if opts.areas.is_empty() {
        Area::ALL.to_vec()
    } else {
        opts.areas.clone()
    };
    let names: Vec<&str> = areas.iter().map(|a| a.as_str()).collect();
    let mut cfg_client = ews::ClientConfig::new(
        url::Url::parse(&sim.ews_url()).context("the simulator's URL")?,
        ews::Auth::Basic {
            username: "svc".into(),
            password: "secret".into(),
        },
    );
    cfg_client.allow_http = true;
    let client = ews::Client::new(cfg_client)?;
    if seed::crm(&db, n, &areas).await? {
        println!(
            "business database {}: seeded {n} operators with {}",
            crate::secret::mask_url(&db_url),
            names.join(", ")
        );
        if areas.contains(&Area::Mail) {
            seed::exchange(&client, n).await?;
            println!(
                "simulated mailboxes: 2 mails delivered into each inbox (one unread, with a PDF)"
            );
        }
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
        config_text(
            &db_url,
            &state_url,
            &sim.ews_url(),
            n,
            opts.admin,
            &token,
            &areas,
        ),
    )?;
    let cfg = config::load(&path, &ProcessEnv).map_err(|e| anyhow::anyhow!("{e}"))?;

    println!("initial sync, CRM to Exchange:");
    let started = Instant::now();
    for m in &cfg.mailboxes {
        let summary =
            service::initial_sync(cfg.clone(), &m.smtp, Direction::CrmToExchange, false).await?;
        print!("{summary}");
    }
    println!(
        "initial sync of {n} mailboxes done in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let running = service::start(&cfg, path.clone()).await?;
    println!("admin API and console: http://{}/ (token {token}) — or: mailsync ctl status --url http://{} --token {token}", running.admin.addr, running.admin.addr);
    println!("continuous sync running; Ctrl-C stops");
    let latencies = Arc::new(Mutex::new(activity::Latencies::default()));
    if !opts.no_activity {
        let users = activity::Users {
            db: db.clone(),
            state: state.clone(),
            client,
            mailboxes: n,
            areas: areas.clone(),
            latencies: latencies.clone(),
        };
        actix_rt::spawn(async move {
            if let Err(e) = activity::run(users).await {
                eprintln!("simulated users stopped: {e:#}");
            }
        });
    }
    running.until_stopped_or(opts.duration).await?;
    {
        let l = latencies.lock();
        for ((area, to_exchange), v) in &l.0 {
            println!(
                "{} {}: {} changes, latency p50 {} ms, p99 {} ms",
                area.as_str(),
                activity::arrow(*to_exchange),
                v.len(),
                activity::percentile(v, 0.5).as_millis(),
                activity::percentile(v, 0.99).as_millis()
            );
        }
    }
    db.close().await;
    state.close().await;
    sim.stop().await;
    Ok(())
}
