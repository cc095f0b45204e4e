//! The `ews-sim` command: an Exchange Web Services simulator on a local address.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use ews_sim::server::{self, Profile, SimConfig};

/// Serves /EWS/Exchange.asmx, Autodiscover and the /sim control API for simulated mailboxes.
#[derive(Parser)]
#[command(name = "ews-sim", version, about)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8765")]
    listen: SocketAddr,
    /// Create user1@example.com … userN@example.com (password `password`).
    #[arg(long, default_value_t = 10)]
    mailboxes: usize,
    /// The service account holding the impersonation right, USER:PASSWORD.
    #[arg(long, default_value = "svc:secret")]
    service_account: String,
    /// Write every request and response body to numbered files in DIR.
    #[arg(long)]
    record: Option<PathBuf>,
    /// Which Exchange to be: exchange2016, exchange2010 or online.
    #[arg(long, default_value = "exchange2016")]
    profile: String,
    /// A users file (JSON array or TOML `[[users]]`) with smtp, password, display_name,
    /// impersonation, full_access.
    #[arg(long)]
    users: Option<PathBuf>,
    /// Turn throttling off (raw-speed benchmarks).
    #[arg(long)]
    no_throttle: bool,
    /// HTTP worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Serve https with this PEM certificate chain (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The PEM certificate registered with the OAuth2 app: client assertions signed with its
    /// key are accepted at /sim/oauth2/token.
    #[arg(long)]
    oauth_certificate: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let Some((user, password)) = cli.service_account.split_once(':') else {
        bail!(
            "--service-account: {:?} is not USER:PASSWORD",
            cli.service_account
        );
    };
    let Some(profile) = Profile::parse(&cli.profile) else {
        bail!(
            "--profile: {:?} is not one of exchange2016, exchange2010, online",
            cli.profile
        );
    };
    let mut cfg = SimConfig {
        listen: cli.listen,
        mailboxes: cli.mailboxes,
        service_account: (user.to_string(), password.to_string()),
        record: cli.record,
        profile,
        workers: cli.workers,
        ..SimConfig::default()
    };
    cfg.throttle.enabled = !cli.no_throttle;
    if let (Some(c), Some(k)) = (&cli.tls_cert, &cli.tls_key) {
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
        cfg.tls = Some(server::TlsPem {
            cert_chain: read(c)?,
            key: read(k)?,
        });
    }
    if let Some(p) = &cli.oauth_certificate {
        cfg.oauth_certificate =
            Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?);
    }
    if let Some(p) = &cli.users {
        cfg.users = server::read_users(p).map_err(anyhow::Error::msg)?;
    }
    let running = server::start(cfg)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    eprintln!(
        "ews-sim: {} mailboxes, EWS at {}",
        running.sim.store.len(),
        running.ews_url()
    );
    tokio::signal::ctrl_c().await?;
    running.stop().await;
    Ok(())
}
