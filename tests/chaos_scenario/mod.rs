//! The chaos soak, shared by `examples/chaos.rs` (the bench: 50 mailboxes, 5 minutes) and
//! `tests/chaos.rs` (a short run in the suite): `mailsync run` as a child process against
//! ews-sim and a private PostgreSQL, a steady workload on both sides in all four areas
//! (workload.rs, actors.rs), faults meanwhile (faults.rs), then, once mailsync has settled,
//! the convergence checker and the workload's knowledge (check.rs). Every count must be 0.
//!
//! The business database and the state store are two databases of the one private server,
//! so a CRM row and its mapping are two writes (as with the default SQLite state store) and
//! both meet the restart and the terminations.
#![allow(dead_code)]

pub mod actors;
pub mod check;
pub mod faults;
pub mod pg;
pub mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailsync::db::{Db, MigrationSet};

use check::Findings;
use faults::{Chaos, Service};
use pg::PrivatePg;
use workload::{fresh, initial_values, smtp, Ctx, Kind, Rng};

/// What to run.
pub struct Options {
    pub mailboxes: usize,
    /// How long the workload and the faults run.
    pub duration: Duration,
    /// Workload changes per second, both sides together.
    pub rate: f64,
    /// kill -9 of `mailsync run` (each followed by a restart).
    pub kills: usize,
    pub seed: u64,
    /// The longest wait for mailsync to settle afterwards.
    pub settle: Duration,
    /// The `mailsync` binary.
    pub mailsync: PathBuf,
    /// The simulator's EWS URL (`…/EWS/Exchange.asmx`), serving at least `mailboxes`
    /// mailboxes user1@example.com … with password `password`, service account svc:secret.
    pub ews_url: String,
    /// After the checks, with mailsync stopped, plant a difference of each kind the checks
    /// must see and check again (the checks' own test: a checker that sees nothing proves
    /// nothing).
    pub plant: bool,
}

/// What the soak found and did.
pub struct Report {
    pub findings: Findings,
    /// Workload actions by "side area action".
    pub workload: BTreeMap<String, u64>,
    /// Faults by name.
    pub faults: BTreeMap<&'static str, u64>,
    /// Seconds: start-up (initial sync included), the soak, settling, the checks.
    pub timings: [f64; 4],
    /// EWS requests the simulator answered, by operation.
    pub requests: BTreeMap<String, u64>,
    pub seed: u64,
    /// What the checks found after the planting (see [`Options::plant`]).
    pub planted: Option<Findings>,
}

impl Report {
    /// The four counts that must be 0.
    pub fn counts(&self) -> [(&'static str, u64); 4] {
        ["lost", "duplicated", "resurrected", "mismatched"].map(|k| (k, self.findings.total(k)))
    }

    /// Every count 0.
    pub fn clean(&self) -> bool {
        self.findings.clean()
    }

    /// The report as text.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let changes: u64 = self
            .workload
            .iter()
            .filter(|(k, _)| !k.ends_with("deferred"))
            .map(|(_, n)| n)
            .sum();
        out.push_str(&format!(
            "seed {}; start-up {:.1} s, soak {:.1} s, settled in {:.1} s, checked in {:.1} s\n",
            self.seed, self.timings[0], self.timings[1], self.timings[2], self.timings[3]
        ));
        out.push_str(&format!("workload: {changes} changes\n"));
        for (k, n) in &self.workload {
            out.push_str(&format!("  {k}: {n}\n"));
        }
        out.push_str("faults:\n");
        for (k, n) in &self.faults {
            out.push_str(&format!("  {k}: {n}\n"));
        }
        let total: u64 = self.requests.values().sum();
        out.push_str(&format!("EWS requests answered: {total}\n"));
        for (k, n) in self.counts() {
            out.push_str(&format!("{k}: {n}\n"));
        }
        out.push_str(&format!(
            "records with an unknown outcome (not judged): {}\n",
            self.findings.uncertain
        ));
        for d in self.findings.details.iter().take(40) {
            out.push_str(&format!("  {d}\n"));
        }
        out
    }

    /// The figures as one JSON object.
    pub fn json(&self) -> serde_json::Value {
        let counts: serde_json::Map<String, serde_json::Value> = self
            .counts()
            .into_iter()
            .map(|(k, n)| (k.to_owned(), n.into()))
            .collect();
        serde_json::json!({
            "bench": "chaos soak",
            "seed": self.seed,
            "counts": counts,
            "workload": self.workload,
            "faults": self.faults,
            "ews_requests": self.requests.values().sum::<u64>(),
            "seconds": {"start": self.timings[0], "soak": self.timings[1], "settle": self.timings[2], "check": self.timings[3]},
        })
    }
}

const TENANT: &str = "Muster GmbH";
const TOKEN: &str = "chaos-soak-admin-token-0123456789";
/// Records per mailbox and area that exist before the soak and are never deleted.
const ANCHORS: usize = 3;

fn config(o: &Options, pg: &PrivatePg, admin_port: u16) -> String {
    let mut c = format!(
        r#"
[admin]
listen = "127.0.0.1:{admin_port}"
token = "{TOKEN}"

[database]
url = "{crm}"

[state]
url = "{state}"

[[tenants]]
id = "1"
name = "{TENANT}"

[[servers]]
name = "sim"
ews_url = "{ews}"
allow_http = true
auth = "basic"
service_account = {{ username = "svc", password = "secret" }}
throttle = {{ requests_per_second = 400, burst = 800, max_concurrent_requests = 10 }}

[mailbox_defaults]
areas = ["contacts", "calendar", "tasks", "mail"]
initial_sync = "crm-to-exchange"

[mailbox_defaults.leading]
contacts = "crm"
calendar = "crm"
tasks = "crm"
mail = "crm"

[mailbox_defaults.mail]
sync_from = 2020-01-01
delete_mode = "hard-delete"

[sync]
safety_read_hours = 0
"#,
        crm = pg.url("chaos_crm"),
        state = pg.url("chaos_state"),
        ews = o.ews_url,
    );
    for i in 0..o.mailboxes {
        c.push_str(&format!(
            "\n[[mailboxes]]\nsmtp = \"{}\"\noperator = \"{}\"\nserver = \"sim\"\ntenant = \"1\"\n",
            smtp(i),
            i + 1
        ));
    }
    c
}

/// The simulator's request counts by operation.
async fn requests(http: &reqwest::Client, sim_base: &str) -> BTreeMap<String, u64> {
    let stats: serde_json::Value = match http.get(format!("{sim_base}/sim/stats")).send().await {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => return BTreeMap::new(),
    };
    stats["requests_by_operation"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs the soak. `Err` when the private PostgreSQL cannot be started (the caller decides
/// whether that skips or fails); panics on anything else that keeps it from running.
pub async fn run(o: Options) -> Result<Report, String> {
    let pg = tokio::task::block_in_place(PrivatePg::start)?;
    let sim_base = o
        .ews_url
        .strip_suffix("/EWS/Exchange.asmx")
        .expect("an EWS URL ending in /EWS/Exchange.asmx")
        .to_owned();
    let http = reqwest::Client::new();
    let started = Instant::now();

    // Databases, migrations, tenant, operators, and the anchors of contacts, calendar, tasks.
    {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&pg.url("postgres"))
            .await
            .map_err(|e| format!("the private PostgreSQL: {e}"))?;
        for db in ["chaos_crm", "chaos_state"] {
            sqlx::query(&format!("CREATE DATABASE {db}"))
                .execute(&mut admin)
                .await
                .map_err(|e| format!("CREATE DATABASE {db}: {e}"))?;
        }
    }
    let crm_db = Db::connect(&pg.url("chaos_crm"), 2)
        .await
        .map_err(|e| e.to_string())?;
    crm_db
        .migrate(MigrationSet::Crm)
        .await
        .map_err(|e| e.to_string())?;
    let state_db = Db::connect(&pg.url("chaos_state"), 2)
        .await
        .map_err(|e| e.to_string())?;
    state_db
        .migrate(MigrationSet::State)
        .await
        .map_err(|e| e.to_string())?;
    state_db.close().await;
    crm_db.close().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&format!(
            "{}?application_name=chaos-workload",
            pg.url("chaos_crm")
        ))
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query("INSERT INTO crm_tenants (id, name) VALUES (1, $1)")
        .bind(TENANT)
        .execute(&pool)
        .await
        .map_err(|e| e.to_string())?;
    for i in 0..o.mailboxes {
        sqlx::query("INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name, email) VALUES ($1, 1, $2, $3, $4)")
            .bind(i as i64 + 1)
            .bind((i + 1).to_string())
            .bind(format!("Op {}", i + 1))
            .bind(smtp(i))
            .execute(&pool)
            .await
            .map_err(|e| e.to_string())?;
    }
    let ctx = Arc::new(Ctx::new(
        pool.clone(),
        sim_base.clone(),
        &o.ews_url,
        o.mailboxes,
    ));
    for i in 0..o.mailboxes {
        for kind in [Kind::Contact, Kind::Appointment, Kind::Task] {
            for _ in 0..ANCHORS {
                let (key, n) = ctx.new_key(i, kind);
                let created = workload::crm_insert(&ctx, i, kind, &key, n)
                    .await
                    .map_err(|e| e.to_string())?;
                assert!(created, "an anchor row");
                ctx.learn(key, |_| fresh(i, kind, true, initial_values(kind, n)));
            }
        }
    }

    // mailsync: the initial sync copies the anchors; then mail anchors arrive in Outlook.
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let config_path = dir.path().join("mailsync.toml");
    std::fs::write(&config_path, config(&o, &pg, admin_port)).map_err(|e| e.to_string())?;
    let mut service = Service::new(&o.mailsync, &config_path, admin_port);
    service.start();
    service.ready(Duration::from_secs(600)).await;
    for i in 0..o.mailboxes {
        for _ in 0..ANCHORS {
            let key = actors::user_create(&ctx, i, Kind::Mail)
                .await
                .expect("an anchor mail delivered");
            if let Some(r) = ctx.knowledge.lock().recs.get_mut(&key) {
                r.anchor = true;
            }
        }
    }
    ctx.knowledge.lock().counts.clear();
    // The CRM's mail folders are mirrored before its mail is written.
    let wait = Instant::now();
    for i in 0..o.mailboxes {
        while ctx.mail_folders(i).await.is_none() {
            assert!(
                wait.elapsed() < Duration::from_secs(120),
                "no CRM inbox for {}",
                smtp(i)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let start_secs = started.elapsed().as_secs_f64();

    // The soak: both actors and the faults.
    let soak = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut rng = Rng::new(o.seed);
    let erp = tokio::spawn(actors::erp(
        ctx.clone(),
        o.rate / 2.0,
        rng.next(),
        stop.clone(),
    ));
    let users = tokio::spawn(actors::users(
        ctx.clone(),
        o.rate / 2.0,
        rng.next(),
        stop.clone(),
    ));
    let plan = faults::schedule(o.duration, o.kills, &mut rng);
    let fault_counts = {
        let fault_stop = Arc::new(AtomicBool::new(false));
        let chaos = Chaos {
            service: &mut service,
            pg: &pg,
            databases: ["chaos_crm".into(), "chaos_state".into()],
            sim_base: sim_base.clone(),
            mailboxes: o.mailboxes,
        };
        let deadline = tokio::time::sleep(o.duration);
        let fault_run = faults::run(chaos, plan, &mut rng, fault_stop.clone());
        tokio::pin!(deadline);
        tokio::pin!(fault_run);
        let mut done = None;
        tokio::select! {
            d = &mut fault_run => { done = Some(d); (&mut deadline).await; }
            _ = &mut deadline => {}
        }
        match done {
            Some(d) => d,
            None => {
                fault_stop.store(true, Ordering::Relaxed);
                fault_run.await
            }
        }
    };
    stop.store(true, Ordering::Relaxed);
    let _ = erp.await;
    let _ = users.await;
    let soak_secs = soak.elapsed().as_secs_f64();

    // Settle: faults cleared, then quiet (no queued work, no EWS request but streaming for
    // 5 s) and both sides equal, or the limit.
    let _ = http.delete(format!("{sim_base}/sim/faults")).send().await;
    service.check_alive();
    let settle = Instant::now();
    let svc = {
        let mut cfg = ews::ClientConfig::new(
            url::Url::parse(&o.ews_url).expect("the EWS URL"),
            ews::Auth::Basic {
                username: "svc".into(),
                password: "secret".into(),
            },
        );
        cfg.allow_http = true;
        ews::Client::new(cfg).expect("the service account's client")
    };
    let crm_db = Db::connect(&pg.url("chaos_crm"), 2)
        .await
        .map_err(|e| e.to_string())?;
    let state_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&pg.url("chaos_state"))
        .await
        .map_err(|e| e.to_string())?;
    let mut quiet_since: Option<(Instant, u64)> = None;
    let mut check_secs;
    let findings = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        service.check_alive();
        let pending: i64 = sqlx::query_as::<_, (i64,)>("SELECT count(*) FROM ms_pending")
            .fetch_one(&state_pool)
            .await
            .map(|(n,)| n)
            .unwrap_or(1);
        let busy: u64 = requests(&http, &sim_base)
            .await
            .iter()
            .filter(|(op, _)| op.as_str() != "GetStreamingEvents")
            .map(|(_, n)| n)
            .sum();
        let quiet = match quiet_since {
            Some((since, n)) if n == busy && pending == 0 => {
                since.elapsed() >= Duration::from_secs(5)
            }
            _ => {
                quiet_since = Some((Instant::now(), busy));
                false
            }
        };
        if !quiet && settle.elapsed() < o.settle {
            continue;
        }
        let t = Instant::now();
        let f = check::run(&ctx, &crm_db, &svc, TENANT).await;
        check_secs = t.elapsed().as_secs_f64();
        if f.clean() || settle.elapsed() >= o.settle {
            break f;
        }
        // Differences while mailsync was still quiet: it may be waiting out a back-off.
        quiet_since = None;
    };
    let settle_secs = settle.elapsed().as_secs_f64() - check_secs;
    if !findings.clean() {
        eprintln!("mailsync's log, last lines:\n{}", service.log_tail(40));
    }
    service.stop();
    let planted = if o.plant {
        Some(plant(&ctx, &crm_db, &svc).await)
    } else {
        None
    };
    crm_db.close().await;
    state_pool.close().await;
    pool.close().await;
    let workload = ctx.knowledge.lock().counts.clone();
    Ok(Report {
        findings,
        workload,
        faults: fault_counts,
        timings: [start_secs, soak_secs, settle_secs, check_secs],
        requests: requests(&http, &sim_base).await,
        seed: o.seed,
        planted,
    })
}

/// Plants, with mailsync stopped, an ERP-only value nobody wrote into a live contact (the
/// checker sees a mismatch, the knowledge a lost value) and a row again for a record deleted
/// during the soak (the knowledge sees a resurrection); then checks again.
async fn plant(ctx: &Ctx, crm: &Db, svc: &ews::Client) -> Findings {
    let (live, gone) = {
        let k = ctx.knowledge.lock();
        let live = k
            .recs
            .iter()
            .find(|(_, r)| {
                r.kind == Kind::Contact && r.life == workload::Life::Live && !r.uncertain
            })
            .map(|(key, r)| (key.clone(), r.mailbox));
        let gone = k
            .recs
            .iter()
            .find(|(_, r)| r.kind != Kind::Mail && r.life == workload::Life::Gone && !r.uncertain)
            .map(|(key, r)| (key.clone(), r.mailbox, r.kind));
        (live, gone)
    };
    if let Some((key, mailbox)) = live {
        sqlx::query(
            "UPDATE crm_contacts SET company = 'planted' WHERE owner_id = $1 AND surname = $2",
        )
        .bind(mailbox as i64 + 1)
        .bind(&key)
        .execute(&ctx.crm)
        .await
        .expect("planting a value");
    }
    if let Some((key, mailbox, kind)) = gone {
        workload::crm_insert(ctx, mailbox, kind, &key, 0)
            .await
            .expect("planting a resurrection");
    }
    check::run(ctx, crm, svc, TENANT).await
}
