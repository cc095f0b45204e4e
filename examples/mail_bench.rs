//! Initial mail sync at volume: 1 GB of mail (by default) initial-synced CRM → Exchange, then
//! the same mailbox imported into an empty CRM (Exchange → CRM). Prints messages/s, MB/s and
//! the memory ceiling of the syncing process (peak RSS, reset before each direction).
//!
//! ```sh
//! cargo run --release --example mail_bench -- [--megabytes 1024] [--message-kb 256] \
//!     [--folders 20] [--database postgres://postgres@127.0.0.1:5432/postgres]
//! ```
//!
//! The simulator runs as a child process (this program with `--serve-sim`), so the memory
//! figures are mailsync's alone: the simulator keeps the whole gigabyte in memory. A fresh
//! database `mailsync_mailbench_<pid>` is created and dropped at the end.

#[path = "bench_util/mod.rs"]
mod bench_util;
use bench_util::{arg, status_mb};

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use mailsync::config::{Area, AreaConfig, Leading, MailConfig};
use mailsync::db::{Db, MigrationSet};
use mailsync::metrics::Telemetry;
use mailsync::sync::engine::{Direction, Engine, MailboxSetup};
use mailsync_actors::{MailboxSpec, Throttle, ThrottleSettings};
use sqlx::Connection;

const USER: &str = "user1@example.com";

/// Resets the peak RSS (VmHWM) to the current RSS (Linux 4.0+).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// A message of about `kb` KB: headers, a text part and a base64 attachment of noise.
fn message(n: usize, kb: usize) -> Vec<u8> {
    use base64::Engine as _;
    let mut state = n as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let raw: Vec<u8> = (0..kb * 1024 * 3 / 4)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
    let mut out = format!(
        "From: kunde{n}@example.org\r\nTo: {USER}\r\nSubject: Vorgang {n}\r\n\
         Date: Mon, 02 Mar 2026 09:30:00 +0100\r\nMessage-ID: <bench{n}@example.org>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\nNachricht {n}\r\n--b\r\n\
         Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    )
    .into_bytes();
    for line in b64.as_bytes().chunks(76) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"--b--\r\n");
    out
}

fn serve_sim() {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        let mut cfg = ews_sim::server::SimConfig {
            mailboxes: 1,
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

async fn exec(db: &Db, sql: &str) {
    let Db::Postgres(p) = db else {
        unreachable!("the bench runs on PostgreSQL")
    };
    sqlx::query(sql)
        .execute(p)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

struct Run {
    messages: i64,
    megabytes: f64,
    seconds: f64,
    peak_rss_mb: f64,
}

impl Run {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "messages": self.messages,
            "megabytes": (self.megabytes * 10.0).round() / 10.0,
            "seconds": (self.seconds * 100.0).round() / 100.0,
            "messages_per_second": (self.messages as f64 / self.seconds).round(),
            "mb_per_second": ((self.megabytes / self.seconds) * 10.0).round() / 10.0,
            "peak_rss_mb": self.peak_rss_mb.round(),
        })
    }
}

async fn initial(engine: &Engine, throttle: &Throttle, direction: Direction, db: &Db) -> Run {
    let spec = MailboxSpec {
        smtp: USER.into(),
        server: "sim".into(),
        fingerprint: 0,
    };
    reset_peak();
    let started = Instant::now();
    engine
        .initial_sync(&spec, direction, throttle.clone(), false, &|_, _, _| {})
        .await
        .expect("the initial sync");
    let seconds = started.elapsed().as_secs_f64();
    Run {
        messages: scalar(db, "SELECT count(*) FROM crm_mails").await,
        megabytes: scalar(db, "SELECT coalesce(sum(size), 0)::bigint FROM crm_mails").await as f64
            / 1_048_576.0,
        seconds,
        peak_rss_mb: status_mb("VmHWM:"),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--serve-sim") {
        return serve_sim();
    }
    let megabytes: usize = arg("--megabytes", "1024").parse().expect("--megabytes N");
    let kb: usize = arg("--message-kb", "256").parse().expect("--message-kb N");
    let folders: usize = arg("--folders", "20").parse().expect("--folders N");
    let admin_url = arg("--database", "postgres://postgres@127.0.0.1:5432/postgres");
    let mut child = Command::new(std::env::current_exe().expect("this program"))
        .arg("--serve-sim")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the simulator process");
    let mut url = String::new();
    BufReader::new(child.stdout.take().expect("its stdout"))
        .read_line(&mut url)
        .expect("the simulator's URL");
    let url = url.trim().to_owned();

    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        let name = format!("mailsync_mailbench_{}", std::process::id());
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.expect("PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("a bench database");
        let db_url = match admin_url.rfind('/') {
            Some(i) => format!("{}/{name}", &admin_url[..i]),
            None => panic!("--database must end in /DBNAME"),
        };
        let db = Db::connect(&db_url, 8).await.expect("the bench database");
        db.migrate(MigrationSet::Crm).await.unwrap();
        db.migrate(MigrationSet::State).await.unwrap();
        exec(&db, "INSERT INTO crm_tenants (id, name) VALUES (1, 'Bench')").await;
        exec(&db, &format!("INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name, email) VALUES (1, 1, '1', 'Bench', '{USER}')")).await;

        // The CRM mailbox: `megabytes` of mail in `folders` folders.
        let count = megabytes * 1024 / kb;
        let filled = Instant::now();
        let Db::Postgres(p) = &db else { unreachable!() };
        let mut folder_ids = Vec::new();
        for f in 0..folders {
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO crm_mail_folders (owner_id, name) VALUES (1, $1) RETURNING id",
            )
            .bind(format!("Ordner {f:02}"))
            .fetch_one(p)
            .await
            .unwrap();
            folder_ids.push(id);
        }
        for chunk in (0..count).collect::<Vec<_>>().chunks(32) {
            let mimes: Vec<Vec<u8>> = chunk.iter().map(|n| message(*n, kb)).collect();
            let folders: Vec<i64> = chunk.iter().map(|n| folder_ids[n % folder_ids.len()]).collect();
            sqlx::query(
                "INSERT INTO crm_mails (owner_id, folder_id, subject, sent_at, mime, size) \
                 SELECT 1, f, 'bench', now(), m, length(m) FROM unnest($1::bigint[], $2::bytea[]) AS t(f, m)",
            )
            .bind(&folders)
            .bind(&mimes)
            .execute(p)
            .await
            .unwrap();
        }
        let fill_seconds = filled.elapsed().as_secs_f64();

        let telemetry = Telemetry::new();
        let mut cfg = ews::ClientConfig::new(
            url::Url::parse(&url).expect("the simulator's URL"),
            ews::Auth::Basic {
                username: "svc".into(),
                password: "secret".into(),
            },
        );
        cfg.allow_http = true;
        let client = ews::Client::new(cfg).expect("a client");
        let engine = Engine::new(db.clone(), db.clone(), true, telemetry.service.clone());
        engine.set_mailboxes(vec![MailboxSetup {
            smtp: USER.into(),
            client: Arc::new(client),
            target: ews::Target::impersonating(USER),
            operator: "1".into(),
            tenant: Some(1),
            shared_folder_name: "CRM".into(),
            areas: [(
                Area::Mail,
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
        }]);
        let throttle = Throttle::new(
            "sim".into(),
            ThrottleSettings {
                requests_per_second: 1000.0,
                burst: 1000,
                max_concurrent: 27,
            },
            telemetry.runtime.clone(),
        );
        let rss_before = status_mb("VmRSS:");
        let to_exchange = initial(&engine, &throttle, Direction::CrmToExchange, &db).await;

        // The other way: the same mailbox into an empty CRM.
        for sql in [
            "DELETE FROM crm_mail_folders",
            "DELETE FROM ms_item_map",
            "DELETE FROM ms_folder_state",
            "DELETE FROM ms_pending",
            "DELETE FROM crm_changes",
        ] {
            exec(&db, sql).await;
        }
        let to_crm = initial(&engine, &throttle, Direction::ExchangeToCrm, &db).await;

        println!(
            "{}",
            serde_json::json!({
                "bench": "mail initial sync",
                "message_kb": kb,
                "folders": folders,
                "crm_fill_seconds": (fill_seconds * 10.0).round() / 10.0,
                "rss_before_mb": rss_before.round(),
                "bytes_per_request_limit_mb": mailsync::sync::mail::BYTES_PER_REQUEST / 1_048_576,
                "crm_to_exchange": to_exchange.json(),
                "exchange_to_crm": to_crm.json(),
            })
        );
        db.close().await;
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    });
    drop(child.stdin.take());
    let _ = child.wait();
}
