//! The `mailsync` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use mailsync::config::{self, LogFormat};
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
    logging::init(format, "info");
    match cli.command {
        Command::CheckConfig { config: path } => check_config(&path),
    }
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
