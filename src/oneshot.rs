//! The engine run from the command line, without the service: `mailsync initial-sync` (one
//! mailbox, or `--all` with progress) and `mailsync plan` (read-only: what an initial sync or a
//! full resync would do).

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{anyhow, Context as _};
use mailsync_actors::{MailboxSpec, ServerSpec, StepContext, Throttle};

use crate::config::{Config, InitialSync};
use crate::db::{Db, MigrationSet};
use crate::metrics::Telemetry;
use crate::service::build;
use crate::sync::dryrun::{self, MailboxPlan};
use crate::sync::engine::{AreaSummary, Direction, Engine};

/// The databases, the engine and the configured mailboxes, for one command.
struct Offline {
    crm: Db,
    state: Db,
    same_db: bool,
    engine: Engine,
    mailboxes: Vec<MailboxSpec>,
    servers: Vec<ServerSpec>,
    telemetry: Telemetry,
}

impl Offline {
    /// Connects. `writable`: the state store is migrated (an initial sync records state);
    /// otherwise it is only read, and a state store that was never migrated is stood in for
    /// by an empty one in memory (a plan writes nothing anywhere).
    async fn open(cfg: &Config, writable: bool) -> anyhow::Result<Offline> {
        let database = cfg
            .database
            .clone()
            .ok_or_else(|| anyhow!("database.url is required"))?;
        let crm = Db::connect(database.url.expose(), database.max_connections)
            .await
            .context("connecting the business database")?;
        let same_db = database.url.expose() == cfg.state.url.expose();
        let mut state = if same_db {
            crm.clone()
        } else {
            Db::connect(cfg.state.url.expose(), cfg.state.max_connections)
                .await
                .context("connecting the state store")?
        };
        if writable {
            state
                .migrate(MigrationSet::State)
                .await
                .context("migrating the state store")?;
        } else if !state.has_state_tables().await {
            let empty = Db::connect("sqlite::memory:", 1)
                .await
                .context("an empty state store in memory")?;
            empty
                .migrate(MigrationSet::State)
                .await
                .context("an empty state store in memory")?;
            state = empty;
        }
        let telemetry = Telemetry::new();
        let built = build(cfg, &crm, &telemetry).await?;
        let engine = Engine::new(
            crm.clone(),
            state.clone(),
            same_db,
            telemetry.service.clone(),
        );
        engine.set_mailboxes(built.setups);
        Ok(Offline {
            crm,
            state,
            same_db,
            engine,
            mailboxes: built.mailboxes,
            servers: built.servers,
            telemetry,
        })
    }

    fn spec(&self, smtp: &str) -> anyhow::Result<(MailboxSpec, ServerSpec)> {
        let spec = self
            .mailboxes
            .iter()
            .find(|m| *m.smtp == *smtp)
            .cloned()
            .ok_or_else(|| anyhow!("mailbox {smtp} is not configured"))?;
        let server = self
            .servers
            .iter()
            .find(|s| s.id == spec.server)
            .cloned()
            .ok_or_else(|| anyhow!("no server for {smtp}"))?;
        Ok((spec, server))
    }

    fn throttle(&self, server: &ServerSpec) -> Throttle {
        Throttle::new(
            server.id.clone(),
            server.throttle,
            self.telemetry.runtime.clone(),
        )
    }

    async fn close(self) {
        self.crm.close().await;
        if !self.same_db {
            self.state.close().await;
        }
    }
}

/// An action of the initial sync's summary as a person says it happened.
fn past(action: &str) -> String {
    match action {
        "create_folder" => "folders created".to_owned(),
        a if a.ends_with('e') => format!("{a}d"),
        a => format!("{a}ed"),
    }
}

/// The summary of one mailbox's initial sync.
fn summary(smtp: &str, direction: Direction, seconds: f64, summaries: &[AreaSummary]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "initial sync of {smtp} ({}) done in {seconds:.1} s",
        direction.as_str()
    );
    for s in summaries {
        let side = |dir: &str| {
            let parts: Vec<String> = s
                .counts
                .iter()
                .filter(|((d, _), _)| d == dir)
                .map(|((_, action), n)| format!("{n} {}", past(action)))
                .collect();
            if parts.is_empty() {
                "nothing".to_owned()
            } else {
                parts.join(", ")
            }
        };
        let written: u64 = s.counts.values().sum();
        let _ = writeln!(
            out,
            "  {}: {} looked at; to Exchange: {}; to CRM: {}; {} failed; {:.1} s ({:.0} items/s)",
            s.area,
            s.seen,
            side("to_exchange"),
            side("to_crm"),
            s.failures,
            s.seconds,
            written as f64 / s.seconds.max(0.001)
        );
        if !s.links.is_empty() {
            let links: Vec<String> = s.links.iter().map(|(k, v)| format!("{v} by {k}")).collect();
            let _ = writeln!(out, "    linked instead of copied: {}", links.join(", "));
        }
        if !s.ambiguous.is_empty() {
            let _ = writeln!(
                out,
                "    {} ambiguous (several candidates; left alone — `--sync-ambiguous` syncs them as separate records):",
                s.ambiguous.len()
            );
            for a in s.ambiguous.iter().take(20) {
                let _ = writeln!(out, "      {} {}: {}", a.side.as_str(), a.record, a.title);
            }
        }
        if s.held > 0 {
            let _ = writeln!(
                out,
                "    {} deletes held for approval (mailsync ctl approve-deletes|reject-deletes {smtp})",
                s.held
            );
        }
    }
    out
}

fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} {msg:>9} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// `mailsync initial-sync --mailbox`: one mailbox, with a progress bar on a terminal; returns
/// the summary.
pub async fn initial_sync(
    cfg: Config,
    mailbox: &str,
    direction: Direction,
    separate_ambiguous: bool,
) -> anyhow::Result<String> {
    let offline = Offline::open(&cfg, true).await?;
    let smtp = mailbox.to_lowercase();
    let result = run_one(&offline, &smtp, direction, separate_ambiguous, "").await;
    offline.close().await;
    result
}

async fn run_one(
    offline: &Offline,
    smtp: &str,
    direction: Direction,
    separate_ambiguous: bool,
    prefix: &str,
) -> anyhow::Result<String> {
    let (spec, server) = offline.spec(smtp)?;
    let bar = progress_bar();
    bar.set_prefix(prefix.to_owned());
    let progress_bar = bar.clone();
    let progress = move |area: &str, seen: u64, total: u64| {
        progress_bar.set_message(area.to_owned());
        progress_bar.set_length(total.max(seen));
        progress_bar.set_position(seen);
    };
    let started = Instant::now();
    let result = offline
        .engine
        .initial_sync(
            &spec,
            direction,
            offline.throttle(&server),
            separate_ambiguous,
            &progress,
        )
        .await;
    bar.finish_and_clear();
    let summaries = result.map_err(|e| anyhow!("initial sync of {smtp}: {e}"))?;
    Ok(summary(
        smtp,
        direction,
        started.elapsed().as_secs_f64(),
        &summaries,
    ))
}

/// `mailsync initial-sync --all`: every configured mailbox in turn, each in the direction
/// given or its own `initial_sync` (a mailbox configured `none` is skipped and said so). A
/// mailbox that fails is reported and the rest go on; the result is an error if any failed.
pub async fn initial_sync_all(
    cfg: Config,
    direction: Option<Direction>,
    separate_ambiguous: bool,
) -> anyhow::Result<String> {
    let offline = Offline::open(&cfg, true).await?;
    let mut out = String::new();
    let mut failed = Vec::new();
    let total = cfg.mailboxes.len();
    for (n, m) in cfg.mailboxes.iter().enumerate() {
        let dir = match (direction, m.initial_sync) {
            (Some(d), _) => d,
            (None, InitialSync::CrmToExchange) => Direction::CrmToExchange,
            (None, InitialSync::ExchangeToCrm) => Direction::ExchangeToCrm,
            (None, InitialSync::None) => {
                let _ = writeln!(
                    out,
                    "{}: skipped (initial_sync = \"none\"; give --direction to sync it)",
                    m.smtp
                );
                continue;
            }
        };
        let prefix = format!("[{}/{total}] {}", n + 1, m.smtp);
        match run_one(&offline, &m.smtp, dir, separate_ambiguous, &prefix).await {
            Ok(s) => out.push_str(&s),
            Err(e) => {
                let _ = writeln!(out, "{}: FAILED: {e:#}", m.smtp);
                failed.push(m.smtp.clone());
            }
        }
    }
    offline.close().await;
    if failed.is_empty() {
        let _ = writeln!(out, "initial sync of {total} mailboxes done");
        Ok(out)
    } else {
        Err(anyhow!(
            "{out}initial sync failed for {} of {total} mailboxes: {}",
            failed.len(),
            failed.join(", ")
        ))
    }
}

/// `mailsync plan`: the plans of the named mailboxes (all when `mailboxes` is empty), as text
/// or JSON.
pub async fn plan(
    cfg: Config,
    mailboxes: &[String],
    direction: Option<Direction>,
    items: bool,
    json: bool,
) -> anyhow::Result<String> {
    let offline = Offline::open(&cfg, false).await?;
    let wanted: Vec<String> = if mailboxes.is_empty() {
        cfg.mailboxes.iter().map(|m| m.smtp.clone()).collect()
    } else {
        mailboxes.iter().map(|m| m.to_lowercase()).collect()
    };
    let mut plans: Vec<MailboxPlan> = Vec::new();
    for smtp in &wanted {
        let (_, server) = offline.spec(smtp)?;
        let setup = offline
            .engine
            .mailbox(smtp)
            .ok_or_else(|| anyhow!("mailbox {smtp} is not configured"))?;
        let ctx = StepContext::new(offline.throttle(&server));
        let plan = dryrun::plan_mailbox(
            offline.engine.inner(),
            &setup,
            &ctx,
            direction,
            items,
            server.throttle.requests_per_second,
        )
        .await
        .map_err(|e| anyhow!("plan of {smtp}: {e}"))?;
        plans.push(plan);
    }
    offline.close().await;
    if json {
        Ok(serde_json::to_string_pretty(&plans)? + "\n")
    } else {
        Ok(dryrun::render(&plans))
    }
}
