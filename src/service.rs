//! `mailsync run`: the configuration turned into the running service — databases, EWS
//! clients, the sync engine, the CRM feed and streaming ports, the actor runtime, the admin
//! API — and kept running until SIGTERM/Ctrl-C; SIGHUP or POST /api/v1/reload re-read the
//! configuration file and apply it without disturbing unchanged mailboxes.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context as _};
use futures_util::future::{BoxFuture, LocalBoxFuture};
use mailsync_actors::{
    MailboxId, MailboxSpec, Ports, Reload, RuntimeSettings, ServerSpec, ServerStreaming,
    Supervisor, SupervisorHandle, ThrottleSettings,
};

use crate::admin::{self, AdminState, AdminToken, ReloadFailure, Reloader};
use crate::cluster::{feed::ClusterFeed, Cluster, Identity};
use crate::config::{self, Area, Config, ServerConfig};
use crate::connect::{self, Endpoints, Tokens};
use crate::db::{Db, MigrationSet};
use crate::environment::ProcessEnv;
use crate::maintenance::{self, Maintenance};
use crate::metrics::Telemetry;
use crate::sdnotify::{self, Notifier};
use crate::sync::engine::{Engine, MailboxSetup};
use crate::sync::feed::{Feed, Routes};
use crate::sync::stream::EwsStream;

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

/// Builds clients, mailbox setups, routes and specs from `cfg` (Autodiscover runs here, per
/// server and domain).
pub async fn build(cfg: &Config, crm: &Db, telemetry: &Telemetry) -> anyhow::Result<Built> {
    build_with(cfg, crm, telemetry, &Endpoints::default()).await
}

/// [`build`] with Autodiscover answers kept in `endpoints` (for later reloads).
pub async fn build_with(
    cfg: &Config,
    crm: &Db,
    telemetry: &Telemetry,
    endpoints: &Endpoints,
) -> anyhow::Result<Built> {
    let smtp_relay = cfg.smtp.clone().map(Arc::new);
    let operators = crm.operators().await.context("reading crm_operators")?;
    let tokens = Tokens::of(cfg);
    let urls = endpoints.resolve(cfg, &tokens).await?;
    let mut servers = Vec::new();
    for server in &cfg.servers {
        let mut server_urls: BTreeSet<&url::Url> = BTreeSet::new();
        for m in cfg.mailboxes.iter().filter(|m| m.server == server.name) {
            if let Some(u) = urls.get(&m.smtp.to_lowercase()) {
                server_urls.insert(u);
            }
        }
        if server_urls.is_empty() {
            continue;
        }
        if server_urls.len() > 1 {
            tracing::warn!(
                server = %server.name,
                endpoints = server_urls.len(),
                "Autodiscover gave this server's mailboxes several EWS endpoints; each mailbox uses its own, and a streaming group connects through its anchor mailbox's"
            );
        }
        servers.push(server_spec(server));
    }
    // One client per server and endpoint for the server's own credentials; one per mailbox
    // that logs in with its own.
    let mut shared: HashMap<(String, url::Url), Arc<ews::Client>> = HashMap::new();
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
        let smtp = m.smtp.to_lowercase();
        let url = urls
            .get(&smtp)
            .cloned()
            .ok_or_else(|| anyhow!("mailbox {smtp}: no EWS endpoint"))?;
        let client = match &m.credentials {
            Some(own) => Arc::new(connect::client(
                server,
                url,
                connect::auth(server, Some(own), &tokens)?,
                telemetry,
            )?),
            None => match shared.entry((server.name.clone(), url.clone())) {
                std::collections::hash_map::Entry::Occupied(e) => e.get().clone(),
                std::collections::hash_map::Entry::Vacant(e) => e
                    .insert(Arc::new(connect::client(
                        server,
                        url,
                        connect::auth(server, server.service_account.as_ref(), &tokens)?,
                        telemetry,
                    )?))
                    .clone(),
            },
        };
        let target = connect::target(server, m);
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
    /// This instance's cluster membership and its loop (`[cluster]`).
    cluster: Option<(Cluster, tokio::task::JoinHandle<()>)>,
}

/// What a reload needs besides the new configuration.
#[derive(Clone)]
struct Reloading {
    path: PathBuf,
    crm: Db,
    engine: Engine,
    feed: Feed,
    telemetry: Telemetry,
    handle: SupervisorHandle,
    maintenance: Maintenance,
    /// Autodiscover answers found so far.
    endpoints: Endpoints,
    /// The admin API's bearer token, replaced by a reload.
    token: AdminToken,
    /// The admin address the API listens on (a reload cannot move it).
    admin_listen: std::net::SocketAddr,
    /// In a cluster, the reloaded mailboxes go through it (it runs the owned ones).
    cluster: Option<Cluster>,
}

/// Starts everything `cfg` describes; `path` is where reloads read the configuration again.
/// Must run inside an actix system.
pub async fn start(cfg: &Config, path: PathBuf) -> anyhow::Result<Service> {
    // The admin address first: a second instance, or another program on the port, must stop
    // this one before it migrates, positions the feed or starts a mailbox.
    let admin_listener = admin::bind(cfg.admin.listen)?;
    let database = cfg
        .database
        .clone()
        .ok_or_else(|| anyhow!("{}: database.url is required to run", path.display()))?;
    let identity = cfg
        .cluster
        .as_ref()
        .map(|c| Identity::of(c, cfg.admin.listen));
    let instance = identity.as_ref().map(|i| i.id.as_str());
    let crm = Db::connect_as(database.url.expose(), database.max_connections, instance)
        .await
        .context("connecting the business database")?;
    let same_db = database.url.expose() == cfg.state.url.expose();
    let state = if same_db {
        crm.clone()
    } else {
        Db::connect_as(cfg.state.url.expose(), cfg.state.max_connections, instance)
            .await
            .context("connecting the state store")?
    };
    state
        .migrate(MigrationSet::State)
        .await
        .context("migrating the state store")?;
    let telemetry = Telemetry::new();
    let endpoints = Endpoints::default();
    let built = build_with(cfg, &crm, &telemetry, &endpoints).await?;
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
    let cluster = match (&cfg.cluster, identity) {
        (Some(c), Some(me)) => {
            let cluster =
                Cluster::new(me, c, &state, &crm, feed.clone(), telemetry.cluster.clone())
                    .await
                    .context("joining the cluster")?;
            engine.fenced_by(cluster.clone());
            tracing::info!(instance = %cluster.me().name, id = %cluster.me().id, admin_url = %cluster.me().admin_url, lease_s = c.lease.as_secs(), "cluster member");
            Some(cluster)
        }
        _ => {
            // In a cluster the feed's reader positions it when it takes the feed's lease, and
            // no mailbox is taken before (`Cluster::acquire`).
            feed.start_at_end_if_new()
                .await
                .context("positioning the CRM change feed")?;
            None
        }
    };
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
    let crm_port: Arc<dyn mailsync_actors::CrmPort> = match &cluster {
        Some(c) => Arc::new(ClusterFeed::new(feed.clone(), c.clone())),
        None => Arc::new(feed.clone()),
    };
    let ports = Ports {
        sync: Arc::new(engine.clone()),
        stream: Arc::new(EwsStream::new(engine.clone())),
        crm: Some(crm_port),
    };
    // A cluster member starts with no mailbox: its membership loop hands the supervisor
    // those it acquires.
    let first_mailboxes = match &cluster {
        Some(c) => {
            c.set_configured(built.servers.clone(), built.mailboxes);
            Vec::new()
        }
        None => built.mailboxes,
    };
    let handle = Supervisor::launch(
        runtime_settings(cfg),
        built.servers,
        first_mailboxes,
        ports,
        telemetry.runtime.clone(),
    )
    .map_err(|e| anyhow!("{e}"))?;
    let cluster = cluster.map(|c| {
        c.attach(handle.clone());
        let budget = handle.clone();
        c.on_members(move |live| {
            budget
                .addr
                .do_send(mailsync_actors::ShareBudget { instances: live });
        });
        let membership = c.spawn();
        (c, membership)
    });
    let token = AdminToken::new(cfg.admin.token.clone());
    let reload = reloader(Reloading {
        path: path.clone(),
        crm: crm.clone(),
        engine: engine.clone(),
        feed: feed.clone(),
        telemetry: telemetry.clone(),
        handle: handle.clone(),
        maintenance: maintenance.clone(),
        endpoints,
        token: token.clone(),
        admin_listen: cfg.admin.listen,
        cluster: cluster.as_ref().map(|(c, _)| c.clone()),
    });
    let admin_state = AdminState {
        handle: handle.clone(),
        telemetry: telemetry.clone(),
        token,
        reload: reload.clone(),
        store: Some(state.clone()),
        deletes: Some(crate::sync::gate::StoreGate::new(
            state.clone(),
            handle.clone(),
        )),
        cluster: cluster.as_ref().map(|(c, _)| c.clone()),
    };
    let admin = admin::start_on(admin_listener, admin_state)?;
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
        cluster,
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
            mut cluster,
            ..
        } = self;
        let notifier = Arc::new(Notifier::from_env(&ProcessEnv));
        let (stop_notify, notify_stopped) = tokio::sync::watch::channel(false);
        let announcing = tokio::spawn(announce(
            notifier.clone(),
            handle.clone(),
            cluster.as_ref().map(|(c, _)| c.clone()),
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
        // A cluster member hands over: peers stop counting it, its mailboxes stop, then
        // every lease is released so the others take over at their next tick.
        if let Some((c, membership)) = cluster.as_mut() {
            c.begin_leaving().await;
            // The loop ends after the tick in flight: an aborted tick could still land its
            // heartbeat after `leave` removed this instance's row, and the row stayed.
            if tokio::time::timeout(std::time::Duration::from_secs(10), &mut *membership)
                .await
                .is_err()
            {
                membership.abort();
            }
        }
        let _ = handle.addr.send(mailsync_actors::Shutdown).await;
        if let Some((c, _)) = &cluster {
            c.leave().await;
        }
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
/// looked at four times a second. A cluster member is ready as its `/readyz` says: once its
/// first acquiring tick is done and every mailbox it owns took its first step.
async fn announce(
    notifier: Arc<Notifier>,
    handle: SupervisorHandle,
    cluster: Option<Cluster>,
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
                if board.ready() && cluster.as_ref().is_none_or(|c| c.readiness().ready()) {
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

fn reloader(r: Reloading) -> Reloader {
    Arc::new(
        move || -> BoxFuture<'static, Result<mailsync_actors::ReloadReport, ReloadFailure>> {
            let r = r.clone();
            Box::pin(async move { reload(&r).await })
        },
    )
}

async fn reload(r: &Reloading) -> Result<mailsync_actors::ReloadReport, ReloadFailure> {
    let cfg = config::load(&r.path, &ProcessEnv).map_err(|e| ReloadFailure {
        message: format!(
            "{}: the configuration has errors; nothing changed",
            r.path.display()
        ),
        details: e.errors.iter().map(|x| x.to_string()).collect(),
    })?;
    let built = build_with(&cfg, &r.crm, &r.telemetry, &r.endpoints)
        .await
        .map_err(|e| ReloadFailure {
            message: format!("{e:#}"),
            details: vec![],
        })?;
    for server in &built.servers {
        r.telemetry.service.register_server(&server.id);
    }
    r.engine.set_mailboxes(built.setups);
    r.feed.set_routes(built.routes);
    r.maintenance
        .set_configured(cfg.mailboxes.iter().map(|m| m.smtp.clone()).collect());
    r.maintenance.set_servers(
        cfg.mailboxes
            .iter()
            .map(|m| (m.smtp.clone(), m.server.clone())),
    );
    let report = match &r.cluster {
        Some(cluster) => cluster
            .reconfigure(built.servers, built.mailboxes)
            .await
            .map_err(|e| ReloadFailure {
                message: format!("{e:#}"),
                details: vec![],
            })?,
        None => r
            .handle
            .addr
            .send(Reload {
                servers: built.servers,
                mailboxes: built.mailboxes,
            })
            .await
            .map_err(|e| ReloadFailure {
                message: format!("the supervisor is gone: {e}"),
                details: vec![],
            })?
            .map_err(|e| ReloadFailure {
                message: e.to_string(),
                details: vec![],
            })?,
    };
    // The admin token takes effect at once: the old one stops working with this reload.
    if r.token.replace(cfg.admin.token.clone()) {
        tracing::info!("reload: the admin API token changed");
    }
    if cfg.admin.listen != r.admin_listen {
        tracing::warn!(old = %r.admin_listen, new = %cfg.admin.listen, "reload: admin.listen changed; the admin API moves at the next start");
    }
    Ok(report)
}

pub use crate::oneshot::initial_sync;

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
