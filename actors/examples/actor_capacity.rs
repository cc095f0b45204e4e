//! Capacity of the actor runtime with fake sides: memory per idle mailbox, time to start
//! them all, and trigger-to-step latency under a steady trigger rate.
//!
//! ```sh
//! cargo run --release -p mailsync-actors --example actor_capacity -- \
//!     [--mailboxes 10000] [--folders 4] [--rate 1000] [--seconds 10]
//! ```
//!
//! Prints one JSON object. The fake sync port answers every step at once, so what is
//! measured is the runtime itself: actors, registry, routing, coalescing, throttle.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use mailsync_actors::fakes::{FakeStream, FakeSync};
use mailsync_actors::mailbox::MailboxTrigger;
use mailsync_actors::*;
use parking_lot::Mutex;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} needs a number, got {v:?}"))
        })
        .unwrap_or(default)
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn main() {
    let mailboxes = arg("--mailboxes", 10_000) as usize;
    let folder_count = arg("--folders", 4) as usize;
    let rate = arg("--rate", 1000);
    let seconds = arg("--seconds", 10);
    let folder_names: Vec<String> = (0..folder_count).map(|i| format!("folder{i}")).collect();

    actix_rt::System::new().block_on(async move {
        let folder_refs: Vec<&str> = folder_names.iter().map(String::as_str).collect();
        let sync = FakeSync::new(&folder_refs);
        sync.set_recording(false);
        let stream = FakeStream::new();
        let settings = RuntimeSettings {
            max_concurrent_starts: 256,
            ..RuntimeSettings::default()
        };
        let arbiters = settings.arbiters;
        let server = ServerSpec {
            id: "ex1".into(),
            throttle: ThrottleSettings {
                requests_per_second: 1_000_000.0,
                burst: 100_000,
                max_concurrent: 1000,
            },
            streaming: true,
            stream: ServerStreaming::default(),
        };
        let specs: Vec<MailboxSpec> = (0..mailboxes)
            .map(|i| MailboxSpec {
                smtp: format!("user{i}@example.com").into(),
                server: "ex1".into(),
                fingerprint: 0,
            })
            .collect();
        let names: Vec<MailboxId> = specs.iter().map(|s| s.smtp.clone()).collect();
        let rss_before = rss_bytes();

        let started = Instant::now();
        let ports = Ports {
            sync: sync.clone(),
            stream: stream.clone(),
            crm: None,
        };
        let handle = Supervisor::launch(
            settings,
            vec![server],
            specs,
            ports,
            Metrics::unregistered(),
        )
        .unwrap();
        let board = handle.board.clone();
        sync.wait_until("every mailbox ready", |_| board.ready())
            .await;
        let start_seconds = started.elapsed().as_secs_f64();
        // Let the stream groups subscribe and connect, then measure the idle footprint.
        stream
            .wait_until("every group connected", |s| {
                s.open_connections() == mailboxes.div_ceil(200)
            })
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_idle = rss_bytes();

        // Trigger-to-step latency: a trigger's time is kept until its folder's next step starts.
        let pending: Arc<DashMap<(MailboxId, FolderId), Instant>> = Arc::new(DashMap::new());
        let latencies: Arc<Mutex<Vec<Duration>>> =
            Arc::new(Mutex::new(Vec::with_capacity((rate * seconds) as usize)));
        {
            let (pending, latencies) = (pending.clone(), latencies.clone());
            sync.on_step(move |mailbox, folder| {
                if let Some((_, at)) = pending.remove(&(mailbox.clone(), folder.clone())) {
                    latencies.lock().push(at.elapsed());
                }
            });
        }
        let total = rate * seconds;
        let mut coalesced = 0u64;
        let tick = Duration::from_millis(10);
        let per_tick = (rate / 100).max(1);
        let mut interval = tokio::time::interval(tick);
        let mut sent = 0u64;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let folder_ids: Vec<FolderId> = folder_names
            .iter()
            .map(|f| FolderId::from(f.as_str()))
            .collect();
        while sent < total {
            interval.tick().await;
            for _ in 0..per_tick.min(total - sent) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let mailbox = names[(seed % names.len() as u64) as usize].clone();
                let folder = folder_ids[((seed >> 32) % folder_ids.len() as u64) as usize].clone();
                let key = (mailbox.clone(), folder.clone());
                if pending.contains_key(&key) {
                    coalesced += 1;
                } else {
                    pending.insert(key, Instant::now());
                }
                if let Some(addr) = board.addr(&mailbox) {
                    addr.do_send(MailboxTrigger {
                        folder: Some(folder),
                        cause: Cause::Notification,
                        full: false,
                    });
                }
                sent += 1;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pending.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut lat = latencies.lock().clone();
        lat.sort();
        let report = serde_json_like(&[
            ("mailboxes", mailboxes.to_string()),
            ("folders_per_mailbox", folder_count.to_string()),
            ("arbiters", arbiters.to_string()),
            ("start_all_seconds", format!("{start_seconds:.2}")),
            ("rss_before_mb", format!("{:.1}", rss_before as f64 / 1e6)),
            ("rss_idle_mb", format!("{:.1}", rss_idle as f64 / 1e6)),
            (
                "bytes_per_idle_mailbox",
                ((rss_idle.saturating_sub(rss_before)) / mailboxes as u64).to_string(),
            ),
            ("triggers_sent", sent.to_string()),
            ("trigger_rate_per_s", rate.to_string()),
            ("latencies_measured", lat.len().to_string()),
            ("coalesced_in_bench", coalesced.to_string()),
            ("unanswered", pending.len().to_string()),
            ("latency_p50_ms", format!("{:.3}", percentile(&lat, 0.50))),
            ("latency_p99_ms", format!("{:.3}", percentile(&lat, 0.99))),
            ("latency_max_ms", format!("{:.3}", percentile(&lat, 1.0))),
        ]);
        println!("{report}");
        let _ = handle.addr.send(Shutdown).await;
    });
}

/// A flat JSON object from pre-formatted values (numbers stay numbers).
fn serde_json_like(fields: &[(&str, String)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("  \"{k}\": {v}"))
        .collect();
    format!("{{\n{}\n}}", body.join(",\n"))
}
