//! The chaos soak as a reproducible bench: `mailsync run` (the real binary, a child process)
//! against ews-sim (a child process: this program with `--serve-sim`) and a private
//! PostgreSQL (initdb into a temporary directory, on a free port), a steady workload on both
//! sides in all four areas, and meanwhile kill -9 with restarts, a PostgreSQL restart, every
//! mailsync connection terminated, ErrorServerBusy and 503 storms, dropped streams, expired
//! subscriptions and invalidated sync states. Then mailsync settles and every mailbox is
//! compared both ways. Prints the lost, duplicated, resurrected and mismatched counts and
//! exits non-zero unless all are 0.
//!
//! ```sh
//! cargo build --release --bin mailsync
//! cargo run --release --example chaos -- --mailboxes 50 --minutes 5 \
//!     [--rate 6] [--kills 12] [--seed N] [--settle-seconds 300]
//! ```
//!
//! It runs target/<its profile>/mailsync and refuses one older than the sources. The scenario
//! is shared with tests/chaos.rs (tests/chaos_scenario/).

#[path = "bench_util/mod.rs"]
mod bench_util;
#[path = "../tests/chaos_scenario/mod.rs"]
mod chaos_scenario;

use bench_util::arg;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

fn serve_sim(mailboxes: usize) {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        let sim = ews_sim::server::start(ews_sim::server::SimConfig {
            mailboxes,
            ..ews_sim::server::SimConfig::default()
        })
        .await
        .expect("the simulator");
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

/// The newest modification time of the files under `dir`.
fn newest(dir: &Path) -> SystemTime {
    let mut out = SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest(&path)
        } else {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH)
        };
        out = out.max(t);
    }
    out
}

/// The `mailsync` binary of this example's profile (target/<profile>/mailsync), refused when
/// missing or older than the sources. It is not built from here: a build of another target
/// set may unify dependency features differently and rebuild this very program while it runs.
fn mailsync_binary() -> PathBuf {
    let profile = if cfg!(debug_assertions) {
        ""
    } else {
        " --release"
    };
    // target/<profile>/examples/chaos -> target/<profile>/mailsync
    let exe = std::env::current_exe().expect("this program");
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target/<profile>")
        .join("mailsync");
    let built = std::fs::metadata(&bin).and_then(|m| m.modified());
    let sources = Path::new(env!("CARGO_MANIFEST_DIR"));
    let changed = ["src", "actors/src", "ews/src"]
        .iter()
        .map(|d| newest(&sources.join(d)))
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    match built {
        Ok(t) if t >= changed => bin,
        Ok(_) => {
            eprintln!(
                "{} is older than the sources: cargo build{profile} --bin mailsync",
                bin.display()
            );
            std::process::exit(2);
        }
        Err(_) => {
            eprintln!("no {}: cargo build{profile} --bin mailsync", bin.display());
            std::process::exit(2);
        }
    }
}

fn main() {
    let mailboxes: usize = arg("--mailboxes", "50").parse().expect("--mailboxes N");
    if std::env::args().any(|a| a == "--serve-sim") {
        return serve_sim(mailboxes);
    }
    let minutes: f64 = arg("--minutes", "5").parse().expect("--minutes M");
    let rate: f64 = arg("--rate", "6")
        .parse()
        .expect("--rate CHANGES_PER_SECOND");
    let kills: usize = arg("--kills", "12").parse().expect("--kills N");
    let settle: u64 = arg("--settle-seconds", "300")
        .parse()
        .expect("--settle-seconds S");
    let default_seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs());
    let seed: u64 = arg("--seed", &default_seed.to_string())
        .parse()
        .expect("--seed N");
    let mailsync = mailsync_binary();

    let mut sim = Command::new(std::env::current_exe().expect("this program"))
        .args(["--serve-sim", "--mailboxes", &mailboxes.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the simulator process");
    let mut url = String::new();
    BufReader::new(sim.stdout.take().expect("its stdout"))
        .read_line(&mut url)
        .expect("the simulator's URL");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let report = rt.block_on(chaos_scenario::run(chaos_scenario::Options {
        mailboxes,
        duration: Duration::from_secs_f64(minutes * 60.0),
        rate,
        kills,
        seed,
        settle: Duration::from_secs(settle),
        mailsync,
        ews_url: url.trim().to_owned(),
        plant: false,
    }));
    drop(sim.stdin.take());
    let _ = sim.wait();
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("the soak could not run: {e}");
            std::process::exit(2);
        }
    };
    print!("{}", report.text());
    println!("{}", report.json());
    if !report.clean() {
        std::process::exit(1);
    }
}
