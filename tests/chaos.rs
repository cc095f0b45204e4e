//! The chaos soak, short: 4 mailboxes for a minute of changes on both sides in all four
//! areas, with kill -9 and restarts of `mailsync run`, a PostgreSQL restart, terminated
//! connections, busy and 503 storms, dropped streams, expired subscriptions and invalidated
//! sync states; afterwards nothing is lost, duplicated, resurrected or different. The same
//! scenario at 50 mailboxes for 5 minutes is `cargo run --release --example chaos`
//! (bench/README.md). Needs PostgreSQL's binaries (a private server is started): under
//! CI=true their absence fails the test.

mod chaos_scenario;

use std::time::Duration;

use ews_sim::server::{self, SimConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak_loses_duplicates_and_resurrects_nothing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let sim = server::start(SimConfig {
        mailboxes: 4,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let seed = std::env::var("MAILSYNC_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(19);
    let options = chaos_scenario::Options {
        mailboxes: 4,
        duration: Duration::from_secs(60),
        rate: 4.0,
        kills: 3,
        seed,
        settle: Duration::from_secs(120),
        mailsync: env!("CARGO_BIN_EXE_mailsync").into(),
        ews_url: sim.ews_url(),
        plant: true,
    };
    let report = match chaos_scenario::run(options).await {
        Ok(r) => r,
        Err(e) => {
            mailsync_testkit::require::missing(&format!("a private PostgreSQL server ({e})"));
            return;
        }
    };
    let text = report.text();
    println!("{text}");
    assert!(report.clean(), "{text}");
    // The scenario really ran: changes from both sides in every area, and every fault.
    for side in ["erp", "user"] {
        for area in ["contacts", "calendar", "tasks", "mail"] {
            let n: u64 = report
                .workload
                .iter()
                .filter(|(k, _)| {
                    k.starts_with(&format!("{side} {area} ")) && !k.ends_with("deferred")
                })
                .map(|(_, n)| n)
                .sum();
            assert!(n > 0, "no {side} change in {area}:\n{text}");
        }
    }
    for fault in [
        "kill -9 + restart",
        "PostgreSQL restart",
        "pg_terminate_backend of mailsync",
        "ErrorServerBusy storm",
        "503 storm",
        "streams dropped",
        "subscriptions expired",
        "sync states invalidated",
    ] {
        assert!(
            report.faults.get(fault).copied().unwrap_or(0) > 0,
            "no {fault}:\n{text}"
        );
    }
    assert_eq!(report.faults["kill -9 + restart"], 3, "{text}");
    // The checks see what was planted afterwards: a value nobody wrote, a deleted record back.
    let planted = report.planted.as_ref().expect("planted");
    assert!(planted.total("mismatched") >= 1, "{planted:#?}");
    assert!(planted.total("lost") >= 1, "{planted:#?}");
    assert!(planted.total("resurrected") >= 1, "{planted:#?}");
    sim.stop().await;
}
