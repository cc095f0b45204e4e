//! ews-sim capacity: memory for 10,000 mailboxes of 100 items each, and simple requests
//! served per second. Prints one JSON object.
//!
//!     cargo run --release -p ews-sim --example capacity [-- MAILBOXES ITEMS SECONDS CONCURRENCY]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use ews_sim::server::{self, SimConfig};
use ews_sim::xml::Node;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let mailboxes = *args.first().unwrap_or(&10_000) as usize;
    let items = *args.get(1).unwrap_or(&100) as usize;
    let seconds = *args.get(2).unwrap_or(&10);
    let concurrency = *args.get(3).unwrap_or(&32) as usize;

    let base_rss = rss_kib();
    let mut cfg = SimConfig {
        mailboxes,
        workers: 2,
        ..SimConfig::default()
    };
    cfg.throttle.enabled = false;
    let sim = server::start(cfg).await.unwrap();
    let t0 = Instant::now();
    let now = Utc::now();
    for i in 1..=mailboxes {
        let mb = sim
            .sim
            .store
            .mailbox(&format!("user{i}@example.com"))
            .unwrap();
        let mut m = mb.lock();
        let folders = ["inbox", "calendar", "contacts", "tasks"];
        for n in 0..items {
            let folder = m.distinguished[folders[n % 4]];
            let kind = ["Message", "CalendarItem", "Contact", "Task"][n % 4];
            let props = vec![
                Node::leaf("Subject", &format!("item {n} of user{i}")),
                Node::leaf("Body", "A short body, as most CRM items have."),
            ];
            m.create_item(folder, kind, props, now).unwrap();
        }
        m.pending_events.clear();
    }
    let fill_secs = t0.elapsed().as_secs_f64();
    let rss = rss_kib();

    // Load: GetFolder on the inbox (impersonating mailboxes in turn), `concurrency` in flight.
    let url = sim.ews_url();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (http, url, done, failed) = (http.clone(), url.clone(), done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = w;
            while Instant::now() < deadline {
                n += concurrency;
                let mbx = n % mailboxes + 1;
                let body = format!(r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><s:Header><t:RequestServerVersion Version="Exchange2013_SP1"/><t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>user{mbx}@example.com</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation></s:Header><s:Body><m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder></s:Body></s:Envelope>"#);
                match http.post(&url).basic_auth("svc", Some("secret")).body(body).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let t1 = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = t1.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "mailboxes": mailboxes,
            "items_per_mailbox": items,
            "fill_seconds": (fill_secs * 100.0).round() / 100.0,
            "rss_mib": rss as f64 / 1024.0,
            "rss_mib_baseline": base_rss as f64 / 1024.0,
            "kib_per_mailbox": ((rss - base_rss) as f64 / mailboxes as f64).round(),
            "load_seconds": (elapsed * 100.0).round() / 100.0,
            "concurrency": concurrency,
            "requests": n,
            "failed": failed.load(Ordering::Relaxed),
            "requests_per_second": (n as f64 / elapsed).round(),
            "note": "load generator runs in the same process on the same 2 cores",
        })
    );
    sim.stop().await;
}
