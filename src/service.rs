//! `mailsync run`: the configuration turned into the running service — databases, EWS
//! clients, the sync engine, the CRM feed and streaming ports, the actor runtime, the admin
//! API — and kept running until SIGTERM/Ctrl-C; SIGHUP or POST /api/v1/reload re-read the
//! configuration file and apply it without disturbing unchanged mailboxes.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use futures_util::future::{BoxFuture, LocalBoxFuture};
use mailsync_actors::{
    MailboxId, MailboxSpec, Ports, Reload, RuntimeSettings, ServerSpec, ServerStreaming,
    Supervisor, SupervisorHandle, ThrottleSettings,
};

use crate::admin::{self, AdminState, ReloadFailure, Reloader};
use crate::config::{self, Area, AuthConfig, Config, Endpoint, OAuth2Credential, ServerConfig};
use crate::db::{Db, MigrationSet};
use crate::environment::ProcessEnv;
use crate::maintenance::{self, Maintenance};
use crate::metrics::Telemetry;
use crate::sdnotify::{self, Notifier};
use crate::sync::engine::{Engine, MailboxSetup};
use crate::sync::feed::{Feed, Routes};
use crate::sync::stream::EwsStream;

/// The EWS client of a server, with the given credentials (the service account's, or a
/// mailbox's own).
pub fn client_for(
    server: &ServerConfig,
    url: url::Url,
    credentials: Option<&config::Credentials>,
    telemetry: &Telemetry,
) -> anyhow::Result<ews::Client> {
    let creds = || {
        credentials.ok_or_else(|| {
            anyhow!(
                "servers.{}: no credentials (service_account or the mailbox's own)",
                server.name
            )
        })
    };
    let auth = match &server.auth {
        AuthConfig::Basic => {
            let c = creds()?;
            ews::Auth::Basic { username: c.username.clone(), password: c.password.expose().to_owned() }
        }
        AuthConfig::Ntlm => {
            let c = creds()?;
            ews::Auth::Ntlm { username: c.username.clone(), password: c.password.expose().to_owned() }
        }
        AuthConfig::OAuth2(o) => match &o.credential {
            OAuth2Credential::Secret(secret) => ews::Auth::OAuth2(Arc::new(ews::client::OAuth2Tokens::new(
                o.token_url.clone(),
                &o.client_id,
                secret.expose(),
                &o.scope,
            ))),
            OAuth2Credential::Certificate { .. } => bail!(
                "servers.{}: OAuth2 with a certificate credential is not supported yet; use client_secret",
                server.name
            ),
        },
    };
    let mut cfg = ews::ClientConfig::new(url, auth);
    cfg.version = server.version.as_str().to_owned();
    cfg.timeout = server.request_timeout;
    cfg.allow_http = server.allow_http;
    cfg.observer = Some(telemetry.ews_observer());
    if let Some(ca) = &server.ca_file {
        cfg.ca_pem = Some(
            std::fs::read(ca)
                .with_context(|| format!("servers.{}.ca_file: {}", server.name, ca.display()))?,
        );
    }
    ews::Client::new(cfg)
        .with_context(|| format!("servers.{}: building the EWS client", server.name))
}

/// The EWS URL of a server: set by hand, or by Autodiscover for `mailbox`.
async fn ews_url(server: &ServerConfig, mailbox: &str) -> anyhow::Result<url::Url> {
    match &server.endpoint {
        Endpoint::Url(u) => Ok(u.clone()),
        Endpoint::Autodiscover { domain } => {
            let creds = server.service_account.as_ref().ok_or_else(|| {
                anyhow!(
                    "servers.{}: Autodiscover needs the service account",
                    server.name
                )
            })?;
            let ad = ews::autodiscover::Autodiscover::new(
                &creds.username,
                creds.password.expose(),
                server.allow_http,
            )
            .with_context(|| format!("servers.{}: Autodiscover client", server.name))?;
            let found = ad
                .discover(mailbox, domain.as_deref())
                .await
                .with_context(|| format!("servers.{}: Autodiscover for {mailbox}", server.name))?;
            Ok(found.ews_url)
        }
    }
}

fn fingerprint(m: &config::MailboxConfig, server: &ServerConfig) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{m:?}{server:?}").hash(&mut h);
    h.finish()
}

/// Everything built from one configuration.
pub struct Built {
    /// Engine mailboxes.
    pub setups: Vec<MailboxSetup>,
    /// Feed routing.
    pub routes: Routes,
    /// Servers for the supervisor.
    pub servers: Vec<ServerSpec>,
    /// Mailboxes for the supervisor.
    pub mailboxes: Vec<MailboxSpec>,
}

/// Builds clients, mailbox setups, routes and specs from `cfg` (Autodiscover runs here).
pub async fn build(cfg: &Config, crm: &Db, telemetry: &Telemetry) -> anyhow::Result<Built> {
    let smtp_relay = cfg.smtp.clone().map(Arc::new);
    let operators = crm.operators().await.context("reading crm_operators")?;
    let mut server_clients: HashMap<String, (Arc<ews::Client>, url::Url)> = HashMap::new();
    let mut servers = Vec::new();
    for server in &cfg.servers {
        let first = cfg.mailboxes.iter().find(|m| m.server == server.name);
        let Some(first) = first else { continue };
        let url = ews_url(server, &first.smtp).await?;
        let client = client_for(
            server,
            url.clone(),
            server.service_account.as_ref(),
            telemetry,
        )?;
        server_clients.insert(server.name.clone(), (Arc::new(client), url));
        servers.push(server_spec(server));
    }
    let tenant_names: HashMap<&str, &str> = cfg
        .tenants
        .iter()
        .map(|t| (t.id.as_str(), t.name.as_str()))
        .collect();
    let mut setups = Vec::new();
    let mut specs = Vec::new();
    let mut routes = Routes::default();
    for m in &cfg.mailboxes {
        let server = cfg
            .server(&m.server)
            .ok_or_else(|| anyhow!("mailbox {}: unknown server {}", m.smtp, m.server))?;
        let (shared_client, url) = server_clients
            .get(&server.name)
            .cloned()
            .ok_or_else(|| anyhow!("server {} has no client", server.name))?;
        let smtp = m.smtp.to_lowercase();
        let (client, target) = match &m.credentials {
            Some(own) => (
                Arc::new(client_for(server, url, Some(own), telemetry)?),
                ews::Target::own(&smtp),
            ),
            None => (shared_client, ews::Target::impersonating(&smtp)),
        };
        let tenant = match &m.tenant {
            Some(t) => Some(
                t.parse::<i64>()
                    .map_err(|_| anyhow!("mailbox {smtp}: tenant {t:?} is not a crm_tenants.id"))?,
            ),
            None => None,
        };
        let shared_name = match m.tenant.as_deref().and_then(|t| tenant_names.get(t)) {
            Some(name) => format!("{name} (CRM)"),
            None => "Shared contacts (CRM)".to_owned(),
        };
        let areas: std::collections::BTreeMap<Area, config::AreaConfig> = m.areas.clone();
        let id: MailboxId = smtp.as_str().into();
        if let Some(op) = operators
            .iter()
            .find(|o| o.personnel_no == m.operator && tenant.is_none_or(|t| t == o.tenant_id))
        {
            routes.by_operator.insert(op.id, id.clone());
            if areas.contains_key(&Area::Contacts) {
                routes
                    .shared_contacts
                    .entry(op.tenant_id)
                    .or_default()
                    .push(id.clone());
            }
        } else {
            tracing::warn!(mailbox = %smtp, operator = %m.operator, "the operator is not in crm_operators; the mailbox fails until it is");
        }
        routes
            .areas
            .insert(id.clone(), areas.keys().copied().collect::<BTreeSet<_>>());
        specs.push(MailboxSpec {
            smtp: id,
            server: server.name.as_str().into(),
            fingerprint: fingerprint(m, server),
        });
        setups.push(MailboxSetup {
            smtp,
            client,
            target,
            operator: m.operator.clone(),
            tenant,
            shared_folder_name: shared_name,
            areas,
            mail: m.mail.clone(),
            smtp_relay: smtp_relay.clone(),
            initial_sync: m.initial_sync,
            breaker: m.breaker,
            sync_ambiguous: m.sync_ambiguous,
        });
    }
    Ok(Built {
        setups,
        routes,
        servers,
        mailboxes: specs,
    })
}

/// The runtime settings a configuration asks for. Everything a server configures (request
/// budget, streaming group size, connection lifetime, polling interval) is in its
/// [`server_spec`], so that each server keeps its own.
pub fn runtime_settings(cfg: &Config) -> RuntimeSettings {
    RuntimeSettings {
        safety_read: cfg.sync.safety_read,
        ..RuntimeSettings::default()
    }
}

/// What the runtime needs to know of one configured server: its request budget (a fractional
/// rate stays fractional) and its streaming settings.
pub fn server_spec(server: &ServerConfig) -> ServerSpec {
    ServerSpec {
        id: server.name.as_str().into(),
        throttle: ThrottleSettings {
            requests_per_second: server.throttle.requests_per_second,
            burst: server.throttle.burst.max(1),
            max_concurrent: server.throttle.max_concurrent_requests.max(1),
        },
        streaming: server.streaming.enabled,
        stream: ServerStreaming {
            group_size: server.streaming.group_size.max(1) as usize,
            connection_timeout: server.streaming.connection_timeout,
            polling_interval: server.streaming.polling_interval,
        },
    }
}

/// Runs the service until a stop signal. Must run inside an actix system.
pub async fn run(path: PathBuf) -> anyhow::Result<()> {
    let cfg = config::load(&path, &ProcessEnv).map_err(|e| anyhow!("{e}"))?;
    start(&cfg, path).await?.until_stopped().await
}

/// A started service.
pub struct Service {
    /// The supervisor and registry.
    pub handle: SupervisorHandle,
    /// The admin API.
    pub admin: admin::AdminServer,
    /// Every metric.
    pub telemetry: Telemetry,
    /// The business database.
    pub crm: Db,
    reload: Reloader,
    state: Db,
    same_db: bool,
    maintenance: maintenance::Running,
}

/// Starts everything `cfg` describes; `path` is where reloads read the configuration again.
/// Must run inside an actix system.
pub async fn start(cfg: &Config, path: PathBuf) -> anyhow::Result<Service> {
    let database = cfg
        .database
        .clone()
        .ok_or_else(|| anyhow!("{}: database.url is required to run", path.display()))?;
    let crm = Db::connect(database.url.expose(), database.max_connections)
        .await
        .context("connecting the business database")?;
    let same_db = database.url.expose() == cfg.state.url.expose();
    let state = if same_db {
        crm.clone()
    } else {
        Db::connect(cfg.state.url.expose(), cfg.state.max_connections)
            .await
            .context("connecting the state store")?
    };
    state
        .migrate(MigrationSet::State)
        .await
        .context("migrating the state store")?;
    let telemetry = Telemetry::new();
    let built = build(cfg, &crm, &telemetry).await?;
    for server in &built.servers {
        telemetry.service.register_server(&server.id);
    }
    let engine = Engine::new(
        crm.clone(),
        state.clone(),
        same_db,
        telemetry.service.clone(),
    );
    engine.set_mailboxes(built.setups);
    let feed = Feed::new(
        crm.clone(),
        state.clone(),
        built.routes,
        std::time::Duration::from_millis(50),
    );
    feed.start_at_end_if_new()
        .await
        .context("positioning the CRM change feed")?;
    let maintenance = Maintenance::new(
        crm.clone(),
        state.clone(),
        cfg.retention.clone(),
        cfg.mailboxes.iter().map(|m| m.smtp.clone()).collect(),
        telemetry.service.clone(),
    );
    maintenance.set_servers(
        cfg.mailboxes
            .iter()
            .map(|m| (m.smtp.clone(), m.server.clone())),
    );
    let ports = Ports {
        sync: Arc::new(engine.clone()),
        stream: Arc::new(EwsStream::new(engine.clone())),
        crm: Some(Arc::new(feed.clone())),
    };
    let handle = Supervisor::launch(
        runtime_settings(cfg),
        built.servers,
        built.mailboxes,
        ports,
        telemetry.runtime.clone(),
    )
    .map_err(|e| anyhow!("{e}"))?;
    let reload = reloader(
        path.clone(),
        crm.clone(),
        engine.clone(),
        feed.clone(),
        telemetry.clone(),
        handle.clone(),
        maintenance.clone(),
    );
    let admin_state = AdminState {
        handle: handle.clone(),
        telemetry: telemetry.clone(),
        token: cfg.admin.token.clone(),
        reload: reload.clone(),
        store: Some(state.clone()),
        deletes: Some(crate::sync::gate::StoreGate::new(
            state.clone(),
            handle.clone(),
        )),
    };
    let admin = admin::start(cfg.admin.listen, admin_state)?;
    let maintenance = maintenance.spawn();
    tracing::info!(mailboxes = cfg.mailboxes.len(), admin = %admin.addr, "mailsync running");
    Ok(Service {
        handle,
        admin,
        telemetry,
        crm,
        reload,
        state,
        same_db,
        maintenance,
    })
}

impl Service {
    /// Runs until SIGTERM or Ctrl-C (SIGHUP reloads), then stops gracefully.
    pub async fn until_stopped(self) -> anyhow::Result<()> {
        self.until_stopped_or(None).await
    }

    /// Like [`Service::until_stopped`], but stops by itself after `limit` if given.
    ///
    /// Under systemd (`NOTIFY_SOCKET`) it says `READY=1` once every mailbox finished its first
    /// step, `WATCHDOG=1` at half the `WatchdogSec=` interval while the supervisor lives, and
    /// `STOPPING=1` when a stop begins.
    pub async fn until_stopped_or(self, limit: Option<std::time::Duration>) -> anyhow::Result<()> {
        let Service {
            handle,
            admin,
            crm,
            reload,
            state,
            same_db,
            maintenance,
            ..
        } = self;
        let notifier = Arc::new(Notifier::from_env(&ProcessEnv));
        let (stop_notify, notify_stopped) = tokio::sync::watch::channel(false);
        let announcing = tokio::spawn(announce(
            notifier.clone(),
            handle.clone(),
            sdnotify::watchdog_interval(&ProcessEnv),
            notify_stopped,
        ));
        let on_hup = move || -> LocalBoxFuture<'static, ()> {
            let reload = reload.clone();
            Box::pin(async move {
                match reload().await {
                    Ok(r) => tracing::info!(
                        added = r.added.len(),
                        removed = r.removed.len(),
                        changed = r.changed.len(),
                        "reloaded"
                    ),
                    Err(e) => {
                        tracing::error!(error = %e.message, details = ?e.details, "reload refused; nothing changed")
                    }
                }
            })
        };
        let signals = mailsync_actors::signals::wait_for_stop(on_hup);
        match limit {
            None => signals.await?,
            Some(limit) => {
                tokio::select! {
                    r = signals => r?,
                    _ = tokio::time::sleep(limit) => {}
                }
            }
        }
        let _ = stop_notify.send(true);
        let _ = announcing.await;
        notifier.stopping();
        let _ = handle.addr.send(mailsync_actors::Shutdown).await;
        maintenance.stop().await;
        admin.stop().await;
        crm.close().await;
        if !same_db {
            state.close().await;
        }
        tracing::info!("mailsync stopped");
        Ok(())
    }
}

/// Tells systemd how the start goes (`STATUS=`), when it is done (`READY=1`), and that the
/// service is alive (`WATCHDOG=1`, only while the supervisor runs, so a wedged process is
/// restarted), until `stop` turns true. The registry has no readiness event, so it is
/// looked at four times a second.
async fn announce(
    notifier: Arc<Notifier>,
    handle: SupervisorHandle,
    watchdog: Option<std::time::Duration>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if !notifier.enabled() {
        return;
    }
    let mut look = tokio::time::interval(std::time::Duration::from_millis(250));
    let mut beat = watchdog.map(tokio::time::interval);
    let mut ready = false;
    let mut last_status = String::new();
    loop {
        let heartbeat = async {
            match beat.as_mut() {
                Some(b) => {
                    b.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = stop.changed() => return,
            _ = heartbeat => {
                if handle.addr.connected() {
                    notifier.watchdog();
                }
            }
            _ = look.tick(), if !ready => {
                let board = &handle.board;
                let done = board.snapshots().iter().filter(|s| s.first_step_done).count();
                if board.ready() {
                    ready = true;
                    notifier.ready(&format!("{} mailboxes syncing", board.len()));
                } else {
                    let status = format!("starting: {done} of {} mailboxes done their first step", board.len());
                    if status != last_status {
                        notifier.status(&status);
                        last_status = status;
                    }
                }
            }
        }
    }
}

fn reloader(
    path: PathBuf,
    crm: Db,
    engine: Engine,
    feed: Feed,
    telemetry: Telemetry,
    handle: SupervisorHandle,
    maintenance: Maintenance,
) -> Reloader {
    Arc::new(
        move || -> BoxFuture<'static, Result<mailsync_actors::ReloadReport, ReloadFailure>> {
            let (path, crm, engine, feed, telemetry, handle, maintenance) = (
                path.clone(),
                crm.clone(),
                engine.clone(),
                feed.clone(),
                telemetry.clone(),
                handle.clone(),
                maintenance.clone(),
            );
            Box::pin(async move {
                reload(
                    &path,
                    &crm,
                    &engine,
                    &feed,
                    &telemetry,
                    &handle,
                    &maintenance,
                )
                .await
            })
        },
    )
}

async fn reload(
    path: &Path,
    crm: &Db,
    engine: &Engine,
    feed: &Feed,
    telemetry: &Telemetry,
    handle: &SupervisorHandle,
    maintenance: &Maintenance,
) -> Result<mailsync_actors::ReloadReport, ReloadFailure> {
    let cfg = config::load(path, &ProcessEnv).map_err(|e| ReloadFailure {
        message: format!(
            "{}: the configuration has errors; nothing changed",
            path.display()
        ),
        details: e.errors.iter().map(|x| x.to_string()).collect(),
    })?;
    let built = build(&cfg, crm, telemetry)
        .await
        .map_err(|e| ReloadFailure {
            message: format!("{e:#}"),
            details: vec![],
        })?;
    for server in &built.servers {
        telemetry.service.register_server(&server.id);
    }
    engine.set_mailboxes(built.setups);
    feed.set_routes(built.routes);
    maintenance.set_configured(cfg.mailboxes.iter().map(|m| m.smtp.clone()).collect());
    maintenance.set_servers(
        cfg.mailboxes
            .iter()
            .map(|m| (m.smtp.clone(), m.server.clone())),
    );
    let report = handle
        .addr
        .send(Reload {
            servers: built.servers,
            mailboxes: built.mailboxes,
        })
        .await
        .map_err(|e| ReloadFailure {
            message: format!("the supervisor is gone: {e}"),
            details: vec![],
        })?;
    report.map_err(|e| ReloadFailure {
        message: e.to_string(),
        details: vec![],
    })
}

/// An action of the initial sync's summary as a person says it happened.
fn past(action: &str) -> String {
    match action {
        "create_folder" => "folders created".to_owned(),
        a if a.ends_with('e') => format!("{a}d"),
        a => format!("{a}ed"),
    }
}

/// `mailsync initial-sync`: one mailbox, with a progress bar on a terminal; returns the summary.
pub async fn initial_sync(
    cfg: Config,
    mailbox: &str,
    direction: crate::sync::engine::Direction,
    separate_ambiguous: bool,
) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let database = cfg
        .database
        .clone()
        .ok_or_else(|| anyhow!("database.url is required"))?;
    let crm = Db::connect(database.url.expose(), database.max_connections)
        .await
        .context("connecting the business database")?;
    let same_db = database.url.expose() == cfg.state.url.expose();
    let state = if same_db {
        crm.clone()
    } else {
        Db::connect(cfg.state.url.expose(), cfg.state.max_connections)
            .await
            .context("connecting the state store")?
    };
    state
        .migrate(MigrationSet::State)
        .await
        .context("migrating the state store")?;
    let telemetry = Telemetry::new();
    let built = build(&cfg, &crm, &telemetry).await?;
    let smtp = mailbox.to_lowercase();
    let spec = built
        .mailboxes
        .iter()
        .find(|m| *m.smtp == *smtp)
        .cloned()
        .ok_or_else(|| anyhow!("mailbox {smtp} is not configured"))?;
    let server = built
        .servers
        .iter()
        .find(|s| s.id == spec.server)
        .cloned()
        .ok_or_else(|| anyhow!("no server for {smtp}"))?;
    let engine = Engine::new(
        crm.clone(),
        state.clone(),
        same_db,
        telemetry.service.clone(),
    );
    engine.set_mailboxes(built.setups);
    let throttle = mailsync_actors::Throttle::new(
        server.id.clone(),
        server.throttle,
        telemetry.runtime.clone(),
    );
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>9} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress_bar = bar.clone();
    let progress = move |area: &str, seen: u64, total: u64| {
        progress_bar.set_message(area.to_owned());
        progress_bar.set_length(total.max(seen));
        progress_bar.set_position(seen);
    };
    let started = std::time::Instant::now();
    let result = engine
        .initial_sync(&spec, direction, throttle, separate_ambiguous, &progress)
        .await;
    bar.finish_and_clear();
    crm.close().await;
    if !same_db {
        state.close().await;
    }
    let summaries = result.map_err(|e| anyhow!("initial sync of {smtp}: {e}"))?;
    let name = match direction {
        crate::sync::engine::Direction::CrmToExchange => "crm-to-exchange",
        crate::sync::engine::Direction::ExchangeToCrm => "exchange-to-crm",
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "initial sync of {smtp} ({name}) done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for s in &summaries {
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
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_server_keeps_its_own_budget_and_streaming_settings() {
        let text = r#"
[[servers]]
name = "onprem"
ews_url = "https://mail.example.com/EWS/Exchange.asmx"
auth = "basic"
service_account = { username = "svc", password = "pw" }
throttle = { requests_per_second = 0.5, burst = 3 }
streaming = { group_size = 50, connection_timeout_minutes = 10, polling_interval_seconds = 15 }

[[servers]]
name = "other"
ews_url = "https://other.example.com/EWS/Exchange.asmx"
auth = "basic"
service_account = { username = "svc", password = "pw" }
streaming = { enabled = false, polling_interval_seconds = 300 }

[[mailboxes]]
smtp = "a@example.com"
operator = "1"
server = "onprem"
"#;
        let cfg = config::parse(text, &HashMap::<&str, &str>::new()).expect("valid");
        let onprem = server_spec(&cfg.servers[0]);
        assert_eq!(onprem.throttle.requests_per_second, 0.5, "not rounded up");
        assert_eq!(onprem.throttle.burst, 3);
        assert!(onprem.streaming);
        assert_eq!(
            onprem.stream,
            ServerStreaming {
                group_size: 50,
                connection_timeout: Duration::from_secs(600),
                polling_interval: Duration::from_secs(15),
            }
        );
        let other = server_spec(&cfg.servers[1]);
        assert_eq!(other.throttle.requests_per_second, 20.0);
        assert!(!other.streaming);
        assert_eq!(
            other.stream,
            ServerStreaming {
                group_size: 200,
                connection_timeout: Duration::from_secs(1800),
                polling_interval: Duration::from_secs(300),
            }
        );
    }
}
