//! Initial sync at wire speed, side by side with exchangelib: for contacts, appointments and
//! tasks separately, mailsync's CRM → Exchange and Exchange → CRM initial sync of `--mailboxes`
//! mailboxes × `--items` items (items/s, EWS requests per item), and in the same run
//! exchangelib's `bulk_create` and FindItem + GetItem of the same number of items against the
//! same simulator (bench/exchangelib_bulk.py, one process per mailbox); prints the ratios.
//!
//! ```sh
//! cargo run --release --example speed_bench -- [--mailboxes 5] [--items 1000] \
//!     [--areas contacts,calendar,tasks] [--database postgres://postgres@127.0.0.1:5432/postgres] \
//!     [--no-exchangelib] [--python python3] [--repeat 1]
//! ```
//!
//! `--repeat N` measures every area N times (fresh mailboxes and rows each round, mailsync and
//! exchangelib alternating as in one round) and prints the median of each figure and of the
//! ratios: on a shared machine a single round can catch either side in a slow moment.
//!
//! The simulator (throttling off) runs as a child process (this program with `--serve-sim`),
//! so the CPU seconds of mailsync and of the simulator are reported apart. A fresh database
//! `mailsync_speed_<pid>` is created on the server of `--database` and dropped at the end.
//! Mailsync passes its own throttle as in production (1,000 requests/s, 27 at a time: the
//! EWSMaxConcurrency of Exchange 2013+). Prints one JSON object per area, then a summary.

#[path = "bench_util/mod.rs"]
mod bench_util;
use bench_util::arg;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use chrono::{Duration as Days, TimeZone, Utc};
use ews::items::{CalendarItem, Contact, Item, Task};
use ews::ops::CreateItem;
use ews::types::{DistinguishedFolder, FolderRef};
use futures_util::future::join_all;
use mailsync::config::{Area, AreaConfig, Leading, MailConfig};
use mailsync::db::{Db, MigrationSet};
use mailsync::metrics::Telemetry;
use mailsync::sync::engine::{Direction, Engine, MailboxSetup};
use mailsync_actors::{MailboxSpec, Throttle, ThrottleSettings};
use sqlx::Connection;

fn serve_sim(mailboxes: usize) {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        let mut cfg = ews_sim::server::SimConfig {
            mailboxes,
            workers: 2,
            ..ews_sim::server::SimConfig::default()
        };
        cfg.throttle.enabled = false;
        let sim = ews_sim::server::start(cfg).await.expect("the simulator");
        println!("{}", sim.ews_url());
        // Until the parent closes our stdin.
        let _ = tokio::task::spawn_blocking(|| {
            let mut s = String::new();
            let _ = std::io::stdin().read_line(&mut s);
        })
        .await;
        sim.stop().await;
    });
}

/// CPU seconds (user + system) of a process so far.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the ')'.
    (ticks(11) + ticks(12)) / 100.0
}

async fn exec(db: &Db, sql: &str) {
    let Db::Postgres(p) = db else {
        unreachable!("the bench runs on PostgreSQL")
    };
    sqlx::query(sql)
        .execute(p)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn scalar(db: &Db, sql: &str) -> i64 {
    let Db::Postgres(p) = db else {
        unreachable!("the bench runs on PostgreSQL")
    };
    sqlx::query_as::<_, (i64,)>(sql)
        .fetch_one(p)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .0
}

async fn requests(http: &reqwest::Client, base: &str) -> BTreeMap<String, u64> {
    let stats: serde_json::Value = http
        .get(format!("{base}/sim/stats"))
        .send()
        .await
        .expect("the simulator's stats")
        .json()
        .await
        .expect("stats JSON");
    serde_json::from_value(stats["requests_by_operation"].clone()).unwrap_or_default()
}

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

/// One measured run: items, wall time, requests, CPU of both processes.
struct Run {
    items: u64,
    seconds: f64,
    requests: BTreeMap<String, u64>,
    cpu_mailsync: f64,
    cpu_sim: f64,
    cpu_postgres: f64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.items as f64 / self.seconds
    }

    fn per_item(&self) -> f64 {
        self.requests.values().sum::<u64>() as f64 / self.items.max(1) as f64
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "items": self.items,
            "seconds": round(self.seconds, 2),
            "items_per_second": self.rate().round(),
            "requests_per_item": round(self.per_item(), 4),
            "requests_by_operation": self.requests,
            "cpu_seconds_mailsync": round(self.cpu_mailsync, 2),
            "cpu_seconds_simulator": round(self.cpu_sim, 2),
            "cpu_seconds_postgres_backends": round(self.cpu_postgres, 2),
        })
    }
}

/// The median of the finite values (NaN when there is none).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        l if l % 2 == 1 => v[l / 2],
        l => (v[l / 2 - 1] + v[l / 2]) / 2.0,
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// The bench's shared pieces.
struct Bench {
    db: Db,
    engine: Engine,
    throttle: Throttle,
    http: reqwest::Client,
    client: Arc<ews::Client>,
    url: String,
    base: String,
    sim_pid: String,
    /// The bench database's name and a pool on the server's `postgres` database, to find
    /// the backends serving the bench (their CPU is PostgreSQL's share of the work).
    dbname: String,
    admin: sqlx::PgPool,
}

impl Bench {
    /// CPU seconds of the PostgreSQL backends connected to the bench database, by pid.
    async fn postgres_cpu(&self) -> BTreeMap<i32, f64> {
        let pids: Vec<(i32,)> =
            sqlx::query_as("SELECT pid FROM pg_stat_activity WHERE datname = $1")
                .bind(&self.dbname)
                .fetch_all(&self.admin)
                .await
                .unwrap_or_default();
        pids.into_iter()
            .map(|(p,)| (p, cpu_seconds(&p.to_string())))
            .collect()
    }

    async fn measure<F: std::future::Future<Output = u64>>(&self, work: F) -> Run {
        let before = requests(&self.http, &self.base).await;
        let pg = self.postgres_cpu().await;
        let (cpu_me, cpu_sim) = (cpu_seconds("self"), cpu_seconds(&self.sim_pid));
        let started = Instant::now();
        let items = work.await;
        let seconds = started.elapsed().as_secs_f64();
        let (cpu_me2, cpu_sim2) = (cpu_seconds("self"), cpu_seconds(&self.sim_pid));
        // Backends that appeared meanwhile count from zero.
        let cpu_postgres = self
            .postgres_cpu()
            .await
            .iter()
            .map(|(pid, c)| c - pg.get(pid).copied().unwrap_or(0.0))
            .sum();
        let after = requests(&self.http, &self.base).await;
        Run {
            items,
            seconds,
            requests: by_operation(&before, &after),
            cpu_mailsync: cpu_me2 - cpu_me,
            cpu_sim: cpu_sim2 - cpu_sim,
            cpu_postgres,
        }
    }

    /// Initial sync of `users` in one direction, all at once.
    async fn initial(&self, users: &[usize], direction: Direction) {
        let runs = users.iter().map(|u| {
            let spec = MailboxSpec {
                smtp: format!("user{u}@example.com").into(),
                server: "sim".into(),
                fingerprint: 0,
            };
            let (engine, throttle) = (self.engine.clone(), self.throttle.clone());
            async move {
                engine
                    .initial_sync(&spec, direction, throttle, false, &|_, _, _| {})
                    .await
                    .unwrap_or_else(|e| panic!("initial sync of {}: {e:?}", spec.smtp))
            }
        });
        join_all(runs).await;
    }

    /// Fills the area's folder of `user` with `items` items, as a user would (CreateItem).
    async fn fill_exchange(&self, area: Area, user: usize, items: usize) {
        let folder = match area {
            Area::Contacts => DistinguishedFolder::Contacts,
            Area::Calendar => DistinguishedFolder::Calendar,
            _ => DistinguishedFolder::Tasks,
        };
        let start = Utc.with_ymd_and_hms(2027, 1, 4, 8, 0, 0).unwrap();
        let target = ews::Target::impersonating(&format!("user{user}@example.com"));
        for chunk in (0..items).collect::<Vec<_>>().chunks(100) {
            let items = chunk
                .iter()
                .map(|n| match area {
                    Area::Contacts => Item::Contact(Contact {
                        given_name: Some(format!("Given{n}")),
                        surname: Some(format!("Surname{n}")),
                        company_name: Some(format!("Company {}", n % 50)),
                        email: [Some(format!("c{n}@example.com")), None, None],
                        ..Contact::default()
                    }),
                    Area::Calendar => Item::CalendarItem(CalendarItem {
                        subject: Some(format!("Meeting {n}")),
                        location: Some("Room 1".into()),
                        start: Some(start + Days::hours(*n as i64)),
                        end: Some(start + Days::hours(*n as i64) + Days::minutes(30)),
                        ..CalendarItem::default()
                    }),
                    _ => Item::Task(Task {
                        subject: Some(format!("Task {n}")),
                        due_date: Some(start + Days::days((*n % 90) as i64)),
                        ..Task::default()
                    }),
                })
                .collect();
            let op = CreateItem {
                folder: Some(FolderRef::well_known(folder)),
                items,
                disposition: None,
            };
            for r in self
                .client
                .call(&target, &op)
                .await
                .expect("filling Exchange")
                .output
            {
                r.expect("a CreateItem of the fill");
            }
        }
    }

    /// exchangelib against the same simulator: one process per mailbox, all at once.
    /// Returns (write items/s, read items/s, runs) over all mailboxes.
    async fn exchangelib(
        &self,
        python: &str,
        area: Area,
        users: &[usize],
        items: usize,
    ) -> Result<(f64, f64, Vec<serde_json::Value>), String> {
        let kind = match area {
            Area::Contacts => "contacts",
            Area::Calendar => "calendar",
            _ => "tasks",
        };
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/exchangelib_bulk.py");
        let mut children = Vec::new();
        for u in users {
            let child = Command::new(python)
                .args([
                    script,
                    "--url",
                    &self.url,
                    "--user",
                    "svc",
                    "--password",
                    "secret",
                ])
                .args(["--mailbox", &format!("user{u}@example.com"), "--kind", kind])
                .args(["--items", &items.to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("{python}: {e}"))?;
            children.push(child);
        }
        let mut out = Vec::new();
        for child in children {
            let r = tokio::task::spawn_blocking(move || child.wait_with_output())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("{python}: {e}"))?;
            if !r.status.success() {
                return Err(format!(
                    "exchangelib_bulk.py failed: {}",
                    String::from_utf8_lossy(&r.stderr)
                ));
            }
            let v: serde_json::Value = serde_json::from_slice(&r.stdout)
                .map_err(|e| format!("exchangelib_bulk.py printed no JSON ({e})"))?;
            out.push(v);
        }
        let sum = |k: &str| {
            out.iter()
                .map(|v| v[k].as_f64().unwrap_or(0.0))
                .sum::<f64>()
        };
        let max = |k: &str| {
            out.iter()
                .map(|v| v[k].as_f64().unwrap_or(0.0))
                .fold(0.0, f64::max)
        };
        Ok((
            sum("items") / max("write_seconds"),
            sum("read_items") / max("read_seconds"),
            out,
        ))
    }
}

fn seed_sql(area: Area, users: &[usize], items: usize) -> String {
    let list = users
        .iter()
        .map(|u| u.to_string())
        .collect::<Vec<_>>()
        .join(",");
    match area {
        Area::Contacts => format!(
            "INSERT INTO crm_contacts (tenant_id, owner_id, given_name, surname, company, email1) \
             SELECT 1, o, 'Given' || c, 'Surname' || o || '-' || c, 'Company ' || (c % 50), 'c' || c || '.o' || o || '@example.com' \
             FROM unnest(ARRAY[{list}]) o, generate_series(1, {items}) c"
        ),
        Area::Calendar => format!(
            "INSERT INTO crm_appointments (tenant_id, owner_id, subject, location, starts_at, ends_at) \
             SELECT 1, o, 'Meeting ' || c, 'Room 1', timestamptz '2027-01-04 08:00Z' + c * interval '1 hour', \
             timestamptz '2027-01-04 08:30Z' + c * interval '1 hour' FROM unnest(ARRAY[{list}]) o, generate_series(1, {items}) c"
        ),
        _ => format!(
            "INSERT INTO crm_tasks (tenant_id, owner_id, subject, due_date) \
             SELECT 1, o, 'Task ' || c, date '2027-01-04' + (c % 90) FROM unnest(ARRAY[{list}]) o, generate_series(1, {items}) c"
        ),
    }
}

fn setup(client: &Arc<ews::Client>, user: usize, area: Area) -> MailboxSetup {
    let smtp = format!("user{user}@example.com");
    MailboxSetup {
        target: ews::Target::impersonating(&smtp),
        smtp,
        client: client.clone(),
        operator: user.to_string(),
        tenant: Some(1),
        shared_folder_name: "CRM".into(),
        areas: [(
            area,
            AreaConfig {
                leading: Leading::Crm,
                categories: vec![],
            },
        )]
        .into_iter()
        .collect(),
        mail: MailConfig::default(),
        smtp_relay: None,
        initial_sync: mailsync::config::InitialSync::CrmToExchange,
        breaker: Default::default(),
        sync_ambiguous: false,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve-sim") {
        let n = args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(1);
        return serve_sim(n);
    }
    let mailboxes: usize = arg("--mailboxes", "5").parse().expect("--mailboxes N");
    let items: usize = arg("--items", "1000").parse().expect("--items N");
    let admin_url = arg("--database", "postgres://postgres@127.0.0.1:5432/postgres");
    let python = arg("--python", "python3");
    let with_exchangelib = !args.iter().any(|a| a == "--no-exchangelib");
    let repeat: usize = arg("--repeat", "1").parse().expect("--repeat N");
    assert!(repeat >= 1, "--repeat must be at least 1");
    let areas: Vec<Area> = arg("--areas", "contacts,calendar,tasks")
        .split(',')
        .map(|a| match a {
            "contacts" => Area::Contacts,
            "calendar" => Area::Calendar,
            "tasks" => Area::Tasks,
            other => panic!("--areas: {other:?} is not contacts, calendar or tasks"),
        })
        .collect();
    // Per area and round three sets of mailboxes: CRM → Exchange, Exchange → CRM, exchangelib.
    let total = areas.len() * repeat * 3 * mailboxes;
    let mut child = Command::new(std::env::current_exe().expect("this program"))
        .args(["--serve-sim", &total.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the simulator process");
    let sim_pid = child.id().to_string();
    let mut url = String::new();
    BufReader::new(child.stdout.take().expect("its stdout"))
        .read_line(&mut url)
        .expect("the simulator's URL");
    let url = url.trim().to_owned();
    let base = url.trim_end_matches("/EWS/Exchange.asmx").to_owned();

    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        let name = format!("mailsync_speed_{}", std::process::id());
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.expect("PostgreSQL for the bench");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("a bench database");
        let db_url = match admin_url.rfind('/') {
            Some(i) => format!("{}/{name}", &admin_url[..i]),
            None => panic!("--database must end in /DBNAME"),
        };
        let db = Db::connect(&db_url, 20).await.expect("the bench database");
        db.migrate(MigrationSet::Crm).await.unwrap();
        db.migrate(MigrationSet::State).await.unwrap();
        exec(&db, "INSERT INTO crm_tenants (id, name) VALUES (1, 'Bench')").await;
        exec(&db, &format!("INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name, email) SELECT g, 1, g::text, 'Op ' || g, 'user' || g || '@example.com' FROM generate_series(1, {total}) g")).await;

        let telemetry = Telemetry::new();
        let mut cfg = ews::ClientConfig::new(
            url::Url::parse(&url).expect("the simulator's URL"),
            ews::Auth::Basic { username: "svc".into(), password: "secret".into() },
        );
        cfg.allow_http = true;
        let client = Arc::new(ews::Client::new(cfg).expect("a client"));
        let sets = |a: usize, r: usize, k: usize| -> Vec<usize> {
            let first = ((a * repeat + r) * 3 + k) * mailboxes + 1;
            (first..first + mailboxes).collect()
        };
        let mut setups = Vec::new();
        for (a, area) in areas.iter().enumerate() {
            for r in 0..repeat {
                for u in sets(a, r, 0).into_iter().chain(sets(a, r, 1)) {
                    setups.push(setup(&client, u, *area));
                }
            }
        }
        let engine = Engine::new(db.clone(), db.clone(), true, telemetry.service.clone());
        engine.set_mailboxes(setups);
        let throttle = Throttle::new(
            "sim".into(),
            ThrottleSettings { requests_per_second: 1000.0, burst: 1000, max_concurrent: 27 },
            telemetry.runtime.clone(),
        );
        let admin_pool = sqlx::PgPool::connect(&admin_url).await.expect("PostgreSQL for the bench");
        let bench = Bench { db, engine, throttle, http: reqwest::Client::new(), client, url, base, sim_pid, dbname: name.clone(), admin: admin_pool };

        let mut summary = Vec::new();
        for (a, area) in areas.iter().enumerate() {
            let table = mailsync::sync::fields::table(*area);
            let n = (items * mailboxes) as u64;
            let in_list = |users: &[usize]| users.iter().map(|u| format!("'user{u}@example.com'")).collect::<Vec<_>>().join(",");
            // Per round: mailsync C→E, E→C, exchangelib write, read (items/s).
            let mut rounds: Vec<[f64; 4]> = Vec::new();
            let mut per_item = (Vec::new(), Vec::new());
            for r in 0..repeat {
                let (to_ex, to_crm, peers) = (sets(a, r, 0), sets(a, r, 1), sets(a, r, 2));
                exec(&bench.db, &seed_sql(*area, &to_ex, items)).await;
                let c2e = bench.measure(async {
                    bench.initial(&to_ex, Direction::CrmToExchange).await;
                    n
                }).await;
                let mapped = scalar(&bench.db, &format!("SELECT count(*) FROM ms_item_map WHERE crm_table = '{table}' AND mailbox IN ({})", in_list(&to_ex))).await;
                assert_eq!(mapped as u64, n, "every {table} row mapped after CRM → Exchange");

                join_all(to_crm.iter().map(|u| bench.fill_exchange(*area, *u, items))).await;
                let e2c = bench.measure(async {
                    bench.initial(&to_crm, Direction::ExchangeToCrm).await;
                    n
                }).await;
                let imported = scalar(&bench.db, &format!("SELECT count(*) FROM {table} WHERE owner_id IN ({})",
                    to_crm.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(","))).await;
                assert_eq!(imported as u64, n, "every item in {table} once after Exchange → CRM");
                let unstamped = scalar(&bench.db, &format!("SELECT count(*) FROM ms_item_map WHERE crm_table = '{table}' AND NOT stamped AND mailbox IN ({})", in_list(&to_crm))).await;

                let mut out = serde_json::json!({
                    "area": area.as_str(),
                    "round": r + 1,
                    "mailboxes": mailboxes,
                    "items_per_mailbox": items,
                    "crm_to_exchange": c2e.json(),
                    "exchange_to_crm": e2c.json(),
                    "left_unstamped": unstamped,
                    // Other work on the machine (1-minute load average when the round finished).
                    "load_average": std::fs::read_to_string("/proc/loadavg").ok().and_then(|l| l.split_whitespace().next().and_then(|v| v.parse::<f64>().ok())),
                });
                let mut rates = [c2e.rate(), e2c.rate(), f64::NAN, f64::NAN];
                per_item.0.push(c2e.per_item());
                per_item.1.push(e2c.per_item());
                if with_exchangelib {
                    let before = requests(&bench.http, &bench.base).await;
                    match bench.exchangelib(&python, *area, &peers, items).await {
                        Ok((write, read, runs)) => {
                            let after = requests(&bench.http, &bench.base).await;
                            let reqs: u64 = by_operation(&before, &after).values().sum();
                            out["exchangelib"] = serde_json::json!({
                                "bulk_create_items_per_second": write.round(),
                                "find_get_items_per_second": read.round(),
                                "requests_per_item_write_and_read": round(reqs as f64 / n as f64, 4),
                                "runs": runs,
                            });
                            out["ratio_crm_to_exchange"] = round(c2e.rate() / write, 2).into();
                            out["ratio_exchange_to_crm"] = round(e2c.rate() / read, 2).into();
                            rates[2] = write;
                            rates[3] = read;
                        }
                        Err(e) => out["exchangelib"] = serde_json::json!({ "error": e }),
                    }
                }
                println!("{out}");
                rounds.push(rates);
            }
            let of = |f: &dyn Fn(&[f64; 4]) -> f64| median(rounds.iter().map(f));
            let label = if repeat > 1 { format!(" (median of {repeat})") } else { String::new() };
            let mut line = format!(
                "{:<9} C→E {:>6.0} items/s {:.4} req/item | E→C {:>6.0} items/s {:.4} req/item",
                area.as_str(), of(&|r| r[0]), median(per_item.0.iter().copied()), of(&|r| r[1]), median(per_item.1.iter().copied())
            );
            if with_exchangelib {
                if rounds.iter().any(|r| r[2].is_finite()) {
                    line.push_str(&format!(
                        " | exchangelib write {:>5.0}/s read {:>5.0}/s | ratio C→E {:.2}× E→C {:.2}×",
                        of(&|r| r[2]), of(&|r| r[3]), of(&|r| r[0] / r[2]), of(&|r| r[1] / r[3])
                    ));
                } else {
                    line.push_str(" | exchangelib failed");
                }
            }
            line.push_str(&label);
            summary.push(line);
        }
        for line in summary {
            println!("{line}");
        }
        bench.db.close().await;
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await;
    });
    drop(child.stdin.take());
    let _ = child.wait();
}
