//! The `mailsync` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use mailsync::config::{self, LogFormat};
use mailsync::db::{Db, MigrationSet};
use mailsync::environment::ProcessEnv;
use mailsync::{logging, summary};

/// Two-way sync between an ERP/CRM SQL database and Microsoft Exchange mailboxes (EWS).
#[derive(Parser)]
#[command(name = "mailsync", version, about)]
struct Cli {
    /// Log format: text or json (default: the config's logging.format, else text).
    #[arg(long, global = true, env = config::overrides::LOG_FORMAT)]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file and print a summary; exit 2 with every error when invalid.
    CheckConfig {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Apply the database migrations: the reference schema to the business database and the
    /// state store's tables (idempotent; says what it did).
    Migrate {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    #[cfg(feature = "demo")]
    /// Everything on embedded defaults: ews-sim in-process, a seeded SQLite business
    /// database, N mailboxes initial-synced, then continuous sync with simulated users and the
    /// propagation latency of each change.
    Demo {
        /// Simulated mailboxes (user1@example.com …).
        #[arg(long, default_value_t = 20)]
        mailboxes: usize,
        /// A business database URL (postgres://…, mysql://… or mariadb://…) instead of a fresh
        /// SQLite file; beside MariaDB/MySQL the state store is a SQLite file.
        #[arg(long)]
        database: Option<String>,
        /// Serve the simulator on this address, so other EWS clients can use it.
        #[arg(long)]
        sim_listen: Option<std::net::SocketAddr>,
        /// Write every EWS request and response into this directory.
        #[arg(long)]
        sim_record: Option<PathBuf>,
        /// Admin API address.
        #[arg(long, default_value = "127.0.0.1:9898")]
        admin: std::net::SocketAddr,
        /// Admin API bearer token (default: one made up and printed).
        #[arg(long)]
        admin_token: Option<String>,
        /// No simulated users.
        #[arg(long)]
        no_activity: bool,
        /// Stop after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
        /// Data areas to seed, sync and change: any of contacts, calendar, tasks, mail
        /// (comma-separated; default all four).
        #[arg(long, value_delimiter = ',', value_parser = ["contacts", "calendar", "tasks", "mail"])]
        areas: Vec<String>,
    },
    /// Run the service: two-way sync of every configured mailbox, with streaming
    /// notifications, CRM change capture and the admin API, until SIGTERM or Ctrl-C
    /// (SIGHUP reloads the configuration).
    Run {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The initial sync of one mailbox: every item of the source side to the other, linking
    /// instead of copying what exists on both; resumable after a crash; then the other side's
    /// items, so both sides end equal and continuous sync can take over.
    InitialSync {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// The mailbox's SMTP address.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        mailbox: Option<String>,
        /// Every configured mailbox, one after the other, with progress.
        #[arg(long)]
        all: bool,
        /// Which side to start from (default: the mailbox's `initial_sync`; with --all a
        /// mailbox configured `none` is skipped).
        #[arg(long, value_parser = ["crm-to-exchange", "exchange-to-crm"])]
        direction: Option<String>,
        /// Records whose first-contact match is ambiguous (several candidates) are synced as
        /// separate records instead of being left alone.
        #[arg(long)]
        sync_ambiguous: bool,
    },
    /// What the initial sync (or, for a mailbox that already syncs, a full resync) would do,
    /// per mailbox and area: creates, links and what they matched on, updates, deletes (and
    /// which the breaker would hold), conflicts, ambiguous matches, and an estimate of the EWS
    /// requests and the time. Sends read operations only and writes nothing.
    Plan {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Only these mailboxes (repeatable; default and with --all: every configured one).
        #[arg(long)]
        mailbox: Vec<String>,
        /// Every configured mailbox.
        #[arg(long, conflicts_with = "mailbox")]
        all: bool,
        /// The direction to plan for (default: each mailbox's `initial_sync`).
        #[arg(long, value_parser = ["crm-to-exchange", "exchange-to-crm"])]
        direction: Option<String>,
        /// The plan as JSON.
        #[arg(long)]
        json: bool,
        /// List the items, not only the counts.
        #[arg(long)]
        items: bool,
    },
    /// Check everything a mailbox needs: the operator in the CRM, Autodiscover,
    /// authentication, impersonation, each enabled folder; exit 1 when a check failed.
    TestConnection {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Only this mailbox.
        #[arg(long)]
        mailbox: Option<String>,
    },
    /// Exit 0 when the service on this host answers GET /healthz, else 1 (a container
    /// HEALTHCHECK that needs no curl in the image).
    Healthcheck {
        /// The health URL (default: http://ADDR/healthz with ADDR from MAILSYNC_ADMIN_LISTEN,
        /// an unspecified address such as 0.0.0.0 meaning this host, else 127.0.0.1:9898).
        #[arg(long)]
        url: Option<String>,
    },
    /// Talk to a running service's admin API: show status, restart, resync, sync, pause or
    /// resume a mailbox (every mailbox when none is named); read the conflict log and the
    /// parked failures, retry a failure, approve or reject held deletes.
    Ctl {
        /// status, restart, resync, sync, pause, resume, conflicts, failures, retry,
        /// approve-deletes, reject-deletes or cluster.
        #[arg(value_parser = ["status", "restart", "resync", "sync", "pause", "resume", "conflicts", "failures", "retry", "approve-deletes", "reject-deletes", "cluster"])]
        action: String,
        /// The mailbox's SMTP address (for retry: the failure's id).
        mailbox: Option<String>,
        /// Read the admin address and token from this configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Admin API base URL (default: from --config, else http://127.0.0.1:9898).
        #[arg(long)]
        url: Option<String>,
        /// Bearer token (default: MAILSYNC_ADMIN_TOKEN, else from --config).
        #[arg(long, env = config::overrides::ADMIN_TOKEN, hide_env_values = true)]
        token: Option<String>,
        /// conflicts: only entries since then (2026-03-01T08:00:00Z, 2026-03-01, 24h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// conflicts, failures: at most this many, newest first (1 to 500, default 50).
        #[arg(long)]
        limit: Option<u32>,
        /// approve-deletes, reject-deletes: only this area.
        #[arg(long)]
        area: Option<String>,
        /// approve-deletes, reject-deletes: only this scope of the area (own, shared, a mail
        /// folder path).
        #[arg(long, requires = "area")]
        scope: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match cli.log_format.as_deref().map(LogFormat::parse) {
        None => LogFormat::Text,
        Some(Some(f)) => f,
        Some(None) => {
            eprintln!("error: --log-format must be text or json");
            return ExitCode::from(2);
        }
    };
    // The demo prints its own story; the service's info lines would drown it.
    #[cfg(feature = "demo")]
    let level = if matches!(cli.command, Command::Demo { .. }) {
        "warn"
    } else {
        "info"
    };
    #[cfg(not(feature = "demo"))]
    let level = "info";
    logging::init(format, level);
    match cli.command {
        Command::CheckConfig { config: path } => check_config(&path),
        Command::Migrate { config: path } => migrate(&path),
        Command::Run { config: path } => run(path),
        #[cfg(feature = "demo")]
        Command::Demo {
            mailboxes,
            database,
            sim_listen,
            sim_record,
            admin,
            admin_token,
            no_activity,
            seconds,
            areas,
        } => {
            let opts = mailsync::demo::DemoOptions {
                areas: areas
                    .iter()
                    .filter_map(|a| mailsync::config::Area::parse(a))
                    .collect(),
                mailboxes,
                database,
                sim_listen,
                sim_record,
                admin,
                admin_token,
                no_activity,
                duration: seconds.map(std::time::Duration::from_secs),
            };
            match actix_rt::System::new().block_on(mailsync::demo::run(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::InitialSync {
            config: path,
            mailbox,
            all: _,
            direction,
            sync_ambiguous,
        } => initial_sync(
            &path,
            mailbox.as_deref(),
            direction.as_deref(),
            sync_ambiguous,
        ),
        Command::Plan {
            config: path,
            mailbox,
            all: _,
            direction,
            json,
            items,
        } => plan(&path, &mailbox, direction.as_deref(), json, items),
        Command::TestConnection {
            config: path,
            mailbox,
        } => test_connection(&path, mailbox.as_deref()),
        Command::Healthcheck { url } => healthcheck(url),
        Command::Ctl {
            action,
            mailbox,
            config: path,
            url,
            token,
            since,
            limit,
            area,
            scope,
        } => {
            let command = match action.as_str() {
                "status" => mailsync::ctl::CtlCommand::Status,
                "conflicts" => mailsync::ctl::CtlCommand::Conflicts { since, limit },
                "failures" => mailsync::ctl::CtlCommand::Failures { limit },
                "cluster" => mailsync::ctl::CtlCommand::Cluster,
                "retry" => match mailbox.as_deref().map(str::parse::<i64>) {
                    Some(Ok(id)) => mailsync::ctl::CtlCommand::Retry(id),
                    _ => {
                        eprintln!("error: retry needs a failure id (see `mailsync ctl failures`)");
                        return ExitCode::from(2);
                    }
                },
                "approve-deletes" | "reject-deletes" => mailsync::ctl::CtlCommand::Deletes {
                    approve: action == "approve-deletes",
                    area,
                    scope,
                },
                other => mailsync::ctl::CtlCommand::Action(other.to_owned()),
            };
            let target = match &command {
                mailsync::ctl::CtlCommand::Retry(_) => None,
                _ => mailbox.as_deref(),
            };
            ctl(command, target, path.as_deref(), url, token)
        }
    }
}

fn direction_of(d: Option<&str>) -> Option<mailsync::sync::engine::Direction> {
    d.map(|d| match d {
        "crm-to-exchange" => mailsync::sync::engine::Direction::CrmToExchange,
        _ => mailsync::sync::engine::Direction::ExchangeToCrm,
    })
}

fn initial_sync(
    path: &std::path::Path,
    mailbox: Option<&str>,
    direction: Option<&str>,
    sync_ambiguous: bool,
) -> ExitCode {
    let cfg = match config::load(path, &ProcessEnv) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    let direction = direction_of(direction);
    let job = match mailbox {
        Some(m) => {
            let Some(configured) = cfg.mailbox(m) else {
                eprintln!("error: mailbox {m} is not in {}", path.display());
                return ExitCode::from(2);
            };
            let direction = match (direction, configured.initial_sync) {
                (Some(d), _) => d,
                (None, config::InitialSync::CrmToExchange) => {
                    mailsync::sync::engine::Direction::CrmToExchange
                }
                (None, config::InitialSync::ExchangeToCrm) => {
                    mailsync::sync::engine::Direction::ExchangeToCrm
                }
                (None, config::InitialSync::None) => {
                    eprintln!(
                        "error: {m} is configured with initial_sync = \"none\"; give --direction"
                    );
                    return ExitCode::from(2);
                }
            };
            let m = m.to_owned();
            Box::pin(async move {
                mailsync::oneshot::initial_sync(cfg, &m, direction, sync_ambiguous).await
            })
                as std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<String>>>>
        }
        None => Box::pin(mailsync::oneshot::initial_sync_all(
            cfg,
            direction,
            sync_ambiguous,
        )),
    };
    let Some(runtime) = runtime(true) else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(job) {
        Ok(summary) => {
            print!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn plan(
    path: &std::path::Path,
    mailboxes: &[String],
    direction: Option<&str>,
    json: bool,
    items: bool,
) -> ExitCode {
    let cfg = match config::load(path, &ProcessEnv) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    for m in mailboxes {
        if cfg.mailbox(m).is_none() {
            eprintln!("error: mailbox {m} is not in {}", path.display());
            return ExitCode::from(2);
        }
    }
    let Some(runtime) = runtime(false) else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(mailsync::oneshot::plan(
        cfg,
        mailboxes,
        direction_of(direction),
        items,
        json,
    )) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn test_connection(path: &std::path::Path, mailbox: Option<&str>) -> ExitCode {
    let cfg = match config::load(path, &ProcessEnv) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    if let Some(m) = mailbox {
        if cfg.mailbox(m).is_none() {
            eprintln!("error: mailbox {m} is not in {}", path.display());
            return ExitCode::from(2);
        }
    }
    let Some(runtime) = runtime(false) else {
        return ExitCode::FAILURE;
    };
    let checks = runtime.block_on(mailsync::testconn::run(&cfg, mailbox));
    print!("{}", mailsync::testconn::render(&checks));
    if checks.iter().all(|c| c.result.is_ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run(path: PathBuf) -> ExitCode {
    match actix_rt::System::new().block_on(mailsync::service::run(path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn ctl(
    command: mailsync::ctl::CtlCommand,
    mailbox: Option<&str>,
    path: Option<&std::path::Path>,
    url: Option<String>,
    token: Option<String>,
) -> ExitCode {
    let cfg = match path.map(|p| config::load(p, &ProcessEnv)) {
        Some(Ok(cfg)) => Some(cfg),
        Some(Err(errors)) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
        None => None,
    };
    let endpoint = mailsync::ctl::Endpoint {
        url: url.unwrap_or_else(|| match &cfg {
            Some(cfg) => format!("http://{}", cfg.admin.listen),
            None => format!("http://{}", config::DEFAULT_ADMIN_LISTEN),
        }),
        token: token.or_else(|| {
            cfg.as_ref()
                .and_then(|c| c.admin.token.as_ref())
                .map(|t| t.expose().to_owned())
        }),
    };
    let Some(runtime) = runtime(false) else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(mailsync::ctl::run(&endpoint, &command, mailbox)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn healthcheck(url: Option<String>) -> ExitCode {
    let url = url.unwrap_or_else(|| {
        let listen = std::env::var(config::overrides::ADMIN_LISTEN)
            .ok()
            .and_then(|l| l.parse::<std::net::SocketAddr>().ok())
            .unwrap_or_else(|| {
                config::DEFAULT_ADMIN_LISTEN
                    .parse()
                    .expect("the default admin address parses")
            });
        let host = match listen.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_owned(),
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_owned(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        format!("http://{host}:{}/healthz", listen.port())
    });
    let Some(runtime) = runtime(false) else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        let resp = client.get(&url).send().await.map_err(|e| e.to_string())?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", resp.status().as_u16()))
        }
    });
    match result {
        Ok(()) => {
            println!("healthy: {url}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unhealthy: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn migrate(path: &std::path::Path) -> ExitCode {
    let cfg = match config::load(path, &ProcessEnv) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    let Some(database) = cfg.database.clone() else {
        eprintln!(
            "{}: database.url is required to migrate the business database",
            path.display()
        );
        return ExitCode::from(2);
    };
    let Some(runtime) = runtime(false) else {
        return ExitCode::FAILURE;
    };
    let steps = [
        ("business database", database, MigrationSet::Crm),
        ("state store", cfg.state.clone(), MigrationSet::State),
    ];
    runtime.block_on(async {
        for (what, db_cfg, set) in steps {
            let url = mailsync::secret::mask_url(db_cfg.url.expose());
            let result = async {
                let db = Db::connect(db_cfg.url.expose(), 2).await?;
                let report = db.migrate(set).await;
                db.close().await;
                report
            }
            .await;
            match result {
                Ok(r) if r.applied.is_empty() => println!(
                    "{what} {url}: up to date ({} migration{} applied before)",
                    r.already,
                    if r.already == 1 { "" } else { "s" }
                ),
                Ok(r) => {
                    println!("{what} {url}: applied {}", r.applied.join(", "));
                    for d in &r.resolved {
                        println!("  resolved duplicate: {d}");
                    }
                }
                Err(e) => {
                    eprintln!("error: {what} {url}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        ExitCode::SUCCESS
    })
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match config::load(path, &ProcessEnv) {
        Ok(cfg) => {
            tracing::info!(
                file = %path.display(),
                servers = cfg.servers.len(),
                mailboxes = cfg.mailboxes.len(),
                database = %cfg.database.as_ref().map_or_else(|| "none".to_string(), |d| mailsync::secret::mask_url(d.url.expose())),
                "configuration valid"
            );
            println!("configuration ok: {}", path.display());
            print!("{}", summary::render(&cfg));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            tracing::error!(file = %path.display(), errors = errors.errors.len(), "configuration invalid");
            eprintln!("{errors}");
            ExitCode::from(2)
        }
    }
}

/// The tokio runtime of a command (multi-threaded where the work is parallel); `None` after
/// saying why it could not start.
fn runtime(multi_thread: bool) -> Option<tokio::runtime::Runtime> {
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    match builder.enable_all().build() {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            None
        }
    }
}
