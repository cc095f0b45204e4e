//! `mailsync run` as a child process, and the faults thrown at it while the workload runs:
//! kill -9 and restart, a PostgreSQL crash-restart, every mailsync connection terminated,
//! and through the simulator's fault API ErrorServerBusy storms with back-offs, 503s,
//! dropped streams, expired subscriptions and invalidated sync states. Storms are aimed at
//! the service account (`account: svc`), so the users' own requests go on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::pg::PrivatePg;
use super::workload::Rng;

/// `mailsync run --config FILE` with its log (JSON lines) appended to a file.
pub struct Service {
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// `http://127.0.0.1:PORT` of its admin API.
    pub admin: String,
}

impl Service {
    pub fn new(bin: &Path, config: &Path, admin_port: u16) -> Service {
        Service {
            bin: bin.to_owned(),
            config: config.to_owned(),
            log: config.with_extension("log"),
            child: None,
            admin: format!("http://127.0.0.1:{admin_port}"),
        }
    }

    /// Starts the process (its log appended to the one file).
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("the service's log file");
        let child = Command::new(&self.bin)
            .args(["--log-format", "json", "run", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    /// kill -9, and waits for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (up to 60 s, then SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(60) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Panics with the log's tail when the process exited by itself.
    pub fn check_alive(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                panic!("mailsync run exited ({status}):\n{}", self.log_tail(60));
            }
        }
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits until /readyz answers 200 (every mailbox done with its first step).
    pub async fn ready(&mut self, limit: Duration) {
        let http = reqwest::Client::new();
        let start = Instant::now();
        while start.elapsed() < limit {
            let ok = http
                .get(format!("{}/readyz", self.admin))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return;
            }
            self.check_alive();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "mailsync not ready within {limit:?}:\n{}",
            self.log_tail(60)
        );
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One fault of the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    Kill,
    PgRestart,
    PgTerminate,
    BusyStorm,
    Storm503,
    DropStreams,
    ExpireSubscriptions,
    InvalidateSyncState,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill -9 + restart",
            Fault::PgRestart => "PostgreSQL restart",
            Fault::PgTerminate => "pg_terminate_backend of mailsync",
            Fault::BusyStorm => "ErrorServerBusy storm",
            Fault::Storm503 => "503 storm",
            Fault::DropStreams => "streams dropped",
            Fault::ExpireSubscriptions => "subscriptions expired",
            Fault::InvalidateSyncState => "sync states invalidated",
        }
    }
}

/// The schedule over `duration`: `kills` kills spread evenly (the last well before the end),
/// one PostgreSQL restart at 35 %, the terminations at 70 %, and the simulator's faults at
/// seeded moments in between.
pub fn schedule(duration: Duration, kills: usize, rng: &mut Rng) -> Vec<(Duration, Fault)> {
    let at = |f: f64| duration.mul_f64(f);
    let mut s: Vec<(Duration, Fault)> = (0..kills)
        .map(|i| (at(0.05 + 0.8 * i as f64 / kills.max(1) as f64), Fault::Kill))
        .collect();
    s.push((at(0.35), Fault::PgRestart));
    s.push((at(0.7), Fault::PgTerminate));
    let others = [
        (Fault::BusyStorm, 5),
        (Fault::Storm503, 3),
        (Fault::DropStreams, 4),
        (Fault::ExpireSubscriptions, 2),
        (Fault::InvalidateSyncState, 3),
    ];
    for (fault, n) in others {
        for _ in 0..n {
            s.push((at(0.05 + 0.8 * rng.below(1000) as f64 / 1000.0), fault));
        }
    }
    s.sort();
    s
}

/// What the fault task needs.
pub struct Chaos<'a> {
    pub service: &'a mut Service,
    pub pg: &'a PrivatePg,
    /// The databases whose mailsync connections are terminated.
    pub databases: [String; 2],
    pub sim_base: String,
    pub mailboxes: usize,
}

/// Carries out the schedule; returns how often each fault happened.
pub async fn run(
    chaos: Chaos<'_>,
    schedule: Vec<(Duration, Fault)>,
    rng: &mut Rng,
    stop: Arc<AtomicBool>,
) -> BTreeMap<&'static str, u64> {
    let http = reqwest::Client::new();
    let sim = |path: &str| format!("{}/sim/{path}", chaos.sim_base);
    let mut done: BTreeMap<&'static str, u64> = BTreeMap::new();
    let started = Instant::now();
    for (at, fault) in schedule {
        if let Some(wait) = at.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        chaos.service.check_alive();
        let ok = match fault {
            Fault::Kill => {
                chaos.service.kill();
                // Down for a moment, as a crashed process under systemd would be.
                tokio::time::sleep(Duration::from_millis(200 + rng.below(1500) as u64)).await;
                chaos.service.start();
                true
            }
            Fault::PgRestart => {
                let pg = chaos.pg;
                tokio::task::block_in_place(|| pg.restart())
                    .map_err(|e| eprintln!("PostgreSQL restart: {e}"))
                    .is_ok()
            }
            Fault::PgTerminate => {
                // mailsync may be between a kill and its restart: until it holds connections.
                let mut n = 0;
                for _ in 0..40 {
                    n = terminate(chaos.pg, &chaos.databases).await;
                    if n > 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                n > 0
            }
            Fault::BusyStorm => {
                let body = serde_json::json!({
                    "account": "svc", "error_code": "ErrorServerBusy",
                    "back_off_ms": 1000 + rng.below(4000), "count": 20 + rng.below(40),
                });
                post(&http, &sim("faults"), body).await
            }
            Fault::Storm503 => {
                let body = serde_json::json!({"account": "svc", "http_503": true, "count": 10 + rng.below(30)});
                post(&http, &sim("faults"), body).await
            }
            Fault::DropStreams => post(&http, &sim("streams/drop"), serde_json::json!({})).await,
            Fault::ExpireSubscriptions => {
                post(&http, &sim("subscriptions/expire"), serde_json::json!({})).await
            }
            Fault::InvalidateSyncState => {
                let mailbox = super::workload::smtp(rng.below(chaos.mailboxes));
                post(
                    &http,
                    &sim("syncstates/invalidate"),
                    serde_json::json!({"mailbox": mailbox}),
                )
                .await
            }
        };
        if ok {
            *done.entry(fault.name()).or_default() += 1;
        }
    }
    done
}

async fn post(http: &reqwest::Client, url: &str, body: serde_json::Value) -> bool {
    http.post(url)
        .json(&body)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Terminates every connection of mailsync (all but the workload's and this one) to the
/// soak's databases; returns how many.
async fn terminate(pg: &PrivatePg, databases: &[String; 2]) -> u64 {
    use sqlx::Connection;
    let mut admin = match sqlx::PgConnection::connect(&pg.url("postgres")).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("terminating mailsync's connections: {e}");
            return 0;
        }
    };
    let r: Result<Vec<(bool,)>, _> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = ANY($1) AND pid <> pg_backend_pid() \
         AND application_name IS DISTINCT FROM 'chaos-workload'",
    )
    .bind(databases.to_vec())
    .fetch_all(&mut admin)
    .await;
    match r {
        Ok(rows) => rows.iter().filter(|(t,)| *t).count() as u64,
        Err(e) => {
            eprintln!("terminating mailsync's connections: {e}");
            0
        }
    }
}
