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
        #[arg(long)]
        mailbox: String,
        /// Which side to start from.
        #[arg(long, value_parser = ["crm-to-exchange", "exchange-to-crm"])]
        direction: String,
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
    /// Talk to a running service's admin API: show status, restart, resync, pause or resume a
    /// mailbox (every mailbox when none is named).
    Ctl {
        /// status, restart, resync, pause or resume.
        #[arg(value_parser = ["status", "restart", "resync", "pause", "resume"])]
        action: String,
        /// The mailbox's SMTP address.
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
    let level = if matches!(cli.command, Command::Demo { .. }) {
        "warn"
    } else {
        "info"
    };
    logging::init(format, level);
    match cli.command {
        Command::CheckConfig { config: path } => check_config(&path),
        Command::Migrate { config: path } => migrate(&path),
        Command::Run { config: path } => run(path),
        Command::Demo {
            mailboxes,
            database,
            sim_listen,
            sim_record,
            admin,
            admin_token,
            no_activity,
            seconds,
        } => {
            let opts = mailsync::demo::DemoOptions {
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
            direction,
        } => initial_sync(&path, &mailbox, &direction),
        Command::TestConnection {
            config: path,
            mailbox,
        } => test_connection(&path, mailbox.as_deref()),
        Command::Ctl {
            action,
            mailbox,
            config: path,
            url,
            token,
        } => ctl(&action, mailbox.as_deref(), path.as_deref(), url, token),
    }
}

fn initial_sync(path: &std::path::Path, mailbox: &str, direction: &str) -> ExitCode {
    let cfg = match config::load(path, &ProcessEnv) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    if cfg.mailbox(mailbox).is_none() {
        eprintln!("error: mailbox {mailbox} is not in {}", path.display());
        return ExitCode::from(2);
    }
    let direction = match direction {
        "crm-to-exchange" => mailsync::sync::engine::Direction::CrmToExchange,
        _ => mailsync::sync::engine::Direction::ExchangeToCrm,
    };
    let Some(runtime) = runtime(true) else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(mailsync::service::initial_sync(cfg, mailbox, direction)) {
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
    action: &str,
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
    let command = match action {
        "status" => mailsync::ctl::CtlCommand::Status,
        other => mailsync::ctl::CtlCommand::Action(other.to_owned()),
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
