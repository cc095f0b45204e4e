//! Several instances sharing the mailboxes through one PostgreSQL state store (`[cluster]`).
//!
//! Each instance registers in `ms_instance` with a heartbeat and owns mailboxes through
//! leases in `ms_lease`. A membership loop runs every third of the lease: it renews this
//! instance's leases in one statement (a lease missing from the answer was taken over: the
//! mailbox stops at once), heartbeats, reads who is live, and computes the desired owner of
//! every mailbox by rendezvous hashing ([`rendezvous`]) over the live instances. It releases
//! what another live instance should own (stopping the mailbox first), and acquires what it
//! should own when that lease is free or expired (epoch + 1; in the business database the
//! mailbox's fence epoch is bumped, [`fence`]), then starts it. The supervisor runs exactly
//! the mailboxes this instance holds: the loop sends it a `Reload` with them.
//!
//! The CRM change feed is read by the holder of the `@crm-feed` lease ([`feed`]). No mailbox
//! is taken anywhere before the feed has a position: the reader that finds none stores the end
//! of the log in the tick that takes the feed's lease, before it sets out to read.
//! A graceful stop marks the instance stopping, stops its mailboxes, then releases every
//! lease and removes its row, so the others take over at their next tick.

pub mod feed;
pub mod fence;
pub mod metrics;
pub mod rendezvous;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mailsync_actors::{MailboxSpec, Reload, ReloadReport, ServerSpec, SupervisorHandle};
use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

pub use metrics::ClusterMetrics;

use crate::config::ClusterConfig;
use crate::db::{Db, DbError};
use crate::sync::feed::Feed;
use fence::Fence;
use store::Store;

/// The SQLSTATE the state store's fence raises (migrations/postgres/state/2020_cluster.sql).
pub const FENCED_SQLSTATE: &str = "MSF01";
/// The lease key of the CRM change feed's reader.
pub const FEED_KEY: &str = "@crm-feed";

/// Who this instance is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Unique per process start: the name, `#`, and a part that differs between starts, so
    /// that a restarted instance never passes for its paused predecessor.
    pub id: String,
    /// What peers and the admin API show.
    pub name: String,
    /// This instance's admin API as peers reach it.
    pub admin_url: String,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "mailsync".to_owned())
}

impl Identity {
    /// From the configuration, the admin listen address and the process (host name, pid,
    /// start time).
    pub fn of(cfg: &ClusterConfig, admin_listen: std::net::SocketAddr) -> Self {
        let pid = std::process::id();
        let name = cfg
            .instance
            .clone()
            .unwrap_or_else(|| format!("{}-{pid}", host_name()));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let id = format!("{name}#{:x}", nanos ^ (u64::from(pid) << 40));
        let admin_url = match &cfg.admin_url {
            Some(u) => u.as_str().trim_end_matches('/').to_owned(),
            None if admin_listen.ip().is_unspecified() => {
                format!("http://{}:{}", host_name(), admin_listen.port())
            }
            None => format!("http://{admin_listen}"),
        };
        Identity {
            id,
            name,
            admin_url,
        }
    }
}

/// The configured servers and every configured mailbox (this instance runs those it owns).
#[derive(Debug, Clone, Default)]
struct Configured {
    servers: Vec<ServerSpec>,
    mailboxes: Vec<MailboxSpec>,
}

struct Inner {
    me: Identity,
    lease: Duration,
    store: Store,
    /// The business database, where the fence epochs live.
    crm: Db,
    metrics: ClusterMetrics,
    /// Mailboxes this instance holds and runs, with their fence tokens.
    owned: RwLock<BTreeMap<String, i64>>,
    /// This instance holds the change feed's lease.
    feed: AtomicBool,
    /// The CRM change feed, which this instance positions when it takes the feed's lease and
    /// finds no stored cursor (see [`Cluster::acquire`]).
    change_feed: Feed,
    /// An acquiring tick ran to its end (nothing held back for the feed's position): what
    /// this instance owns is what it should own, so readiness can be judged (see
    /// [`Cluster::readiness`]).
    acquired: AtomicBool,
    /// The feed's cursor is known to be stored: mailboxes may be taken. A stored cursor is
    /// never removed, so once seen it is not looked up again.
    positioned: AtomicBool,
    configured: RwLock<Configured>,
    supervisor: OnceLock<SupervisorHandle>,
    /// One `Reload` at a time (the loop and a configuration reload).
    applying: tokio::sync::Mutex<()>,
    /// When the leases were last renewed: past a lease without renewal, this instance stops
    /// everything by itself (it cannot tell whether it still holds anything).
    renewed_at: Mutex<Instant>,
    /// Live instances' ids at the last tick.
    live: RwLock<Vec<String>>,
    /// Ends the loop.
    stop: tokio::sync::watch::Sender<bool>,
    /// A graceful stop began: no tick registers this instance again or takes a lease, so
    /// nothing a tick still in flight sends can undo [`Cluster::leave`].
    leaving: AtomicBool,
    /// Called with the number of live instances when it changes (the EWS budget share).
    on_members: OnceLock<Box<dyn Fn(usize) + Send + Sync>>,
}

/// Refuses to join while another running instance has this instance's name (a copied
/// configuration): peers, the admin API and the 409s could not tell the two apart. A row of
/// the same name with a fresh heartbeat may be this instance's own predecessor, killed a
/// moment ago and restarted (systemd, Kubernetes): it is running only if its heartbeat
/// moves within one and a half heartbeat periods (a third of the lease each).
async fn refuse_a_running_namesake(
    store: &Store,
    me: &Identity,
    lease: Duration,
) -> anyhow::Result<()> {
    let before = store.namesakes(&me.name, &me.id).await?;
    if before.is_empty() {
        return Ok(());
    }
    tokio::time::sleep(lease / 2).await;
    let after = store.namesakes(&me.name, &me.id).await?;
    let running = after
        .iter()
        .find(|(id, _, beat)| before.iter().any(|(i, _, b)| i == id && beat > b));
    if let Some((id, url, _)) = running {
        anyhow::bail!(
            "cluster.instance {:?} is already used by a running instance (id {id}, admin {url}); \
             give every instance its own name (or leave cluster.instance out: host name and pid)",
            me.name
        );
    }
    Ok(())
}

/// How far a cluster member is from ready (`/readyz`, systemd's `READY=1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    /// An acquiring tick of the membership loop ran to its end: until then this instance
    /// has not taken what it should own, and an empty board proves nothing.
    pub acquired: bool,
    /// Mailboxes this instance owns.
    pub owned: usize,
    /// Owned mailboxes that have not finished a first step on the supervisor's board yet
    /// (or are not on it yet).
    pub waiting: usize,
}

impl Readiness {
    /// Ready: the first acquiring tick is done and every owned mailbox took its first step.
    pub fn ready(&self) -> bool {
        self.acquired && self.waiting == 0
    }
}

/// The cluster membership of this instance; cheap to clone.
#[derive(Clone)]
pub struct Cluster(Arc<Inner>);

impl Cluster {
    /// Joins (nothing runs until [`Cluster::spawn`]); the state store must be PostgreSQL and
    /// its connections must carry `me.id` ([`Db::connect_as`]).
    pub async fn new(
        me: Identity,
        cfg: &ClusterConfig,
        state: &Db,
        crm: &Db,
        change_feed: Feed,
        metrics: ClusterMetrics,
    ) -> anyhow::Result<Self> {
        let Db::Postgres(pool) = state else {
            anyhow::bail!("[cluster] needs a PostgreSQL state store");
        };
        let store = Store::new(pool.clone(), cfg.lease);
        refuse_a_running_namesake(&store, &me, cfg.lease).await?;
        fence::prepare(crm).await?;
        let (stop, _) = tokio::sync::watch::channel(false);
        Ok(Cluster(Arc::new(Inner {
            me,
            lease: cfg.lease,
            store,
            crm: crm.clone(),
            metrics,
            owned: RwLock::new(BTreeMap::new()),
            feed: AtomicBool::new(false),
            change_feed,
            positioned: AtomicBool::new(false),
            acquired: AtomicBool::new(false),
            configured: RwLock::new(Configured::default()),
            supervisor: OnceLock::new(),
            applying: tokio::sync::Mutex::new(()),
            renewed_at: Mutex::new(Instant::now()),
            live: RwLock::new(Vec::new()),
            stop,
            leaving: AtomicBool::new(false),
            on_members: OnceLock::new(),
        })))
    }

    /// This instance.
    pub fn me(&self) -> &Identity {
        &self.0.me
    }

    /// The cluster's tables.
    pub fn store(&self) -> &Store {
        &self.0.store
    }

    /// The lease duration.
    pub fn lease(&self) -> Duration {
        self.0.lease
    }

    /// Sets what is configured (at start and on every reload).
    pub fn set_configured(&self, servers: Vec<ServerSpec>, mailboxes: Vec<MailboxSpec>) {
        *self.0.configured.write() = Configured { servers, mailboxes };
    }

    /// The supervisor the loop drives (once, after it was launched with no mailboxes).
    pub fn attach(&self, handle: SupervisorHandle) {
        let _ = self.0.supervisor.set(handle);
    }

    /// Called with the number of live instances whenever it changes.
    pub fn on_members(&self, f: impl Fn(usize) + Send + Sync + 'static) {
        let _ = self.0.on_members.set(Box::new(f));
    }

    /// The fence a step for `mailbox` carries; `None` when this instance does not own it.
    pub fn fence(&self, mailbox: &str) -> Option<Fence> {
        self.0.owned.read().get(mailbox).map(|token| Fence {
            mailbox: mailbox.to_owned(),
            token: *token,
        })
    }

    /// Whether this instance owns `mailbox` now.
    pub fn owns(&self, mailbox: &str) -> bool {
        self.0.owned.read().contains_key(mailbox)
    }

    /// Whether `mailbox` is in the configuration (whoever owns it).
    pub fn is_configured(&self, mailbox: &str) -> bool {
        self.0
            .configured
            .read()
            .mailboxes
            .iter()
            .any(|m| &*m.smtp == mailbox)
    }

    /// Whether this instance reads the CRM change feed now.
    pub fn reads_feed(&self) -> bool {
        self.0.feed.load(Ordering::SeqCst)
    }

    /// Whether this member is ready: see [`Readiness`]. A mailbox just leased is owned before
    /// the supervisor has it, so it counts as waiting until its first step is on the board.
    pub fn readiness(&self) -> Readiness {
        let owned: Vec<String> = self.0.owned.read().keys().cloned().collect();
        let board = self.0.supervisor.get().map(|h| &h.board);
        let waiting = owned
            .iter()
            .filter(|m| {
                !board
                    .and_then(|b| b.snapshot(m))
                    .is_some_and(|s| s.first_step_done)
            })
            .count();
        Readiness {
            acquired: self.0.acquired.load(Ordering::SeqCst),
            owned: owned.len(),
            waiting,
        }
    }

    /// The instance holding `mailbox`'s live lease: (name, admin url), if any.
    pub async fn owner_of(&self, mailbox: &str) -> Result<Option<(String, String)>, DbError> {
        let Some((owner, _)) = self.0.store.holder(mailbox).await? else {
            return Ok(None);
        };
        let instances = self.0.store.instances().await?;
        Ok(Some(
            instances
                .into_iter()
                .find(|i| i.id == owner)
                .map_or((owner, String::new()), |i| (i.name, i.admin_url)),
        ))
    }

    /// Starts the membership loop.
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        let cluster = self.clone();
        let mut stop = self.0.stop.subscribe();
        tokio::spawn(async move {
            let period = cluster.0.lease / 3;
            // The first tick only announces this instance, so that instances starting
            // together see each other before anyone takes mailboxes.
            let mut acquire = false;
            loop {
                if let Err(e) = cluster.tick(acquire).await {
                    tracing::warn!(error = %e, "cluster membership tick failed");
                    cluster.fence_self_if_stale().await;
                }
                acquire = true;
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(period) => {}
                }
            }
        })
    }

    /// The beginning of a graceful stop: the loop ends and peers stop counting this
    /// instance as live; its leases stay held until [`Cluster::leave`].
    pub async fn begin_leaving(&self) {
        self.0.leaving.store(true, Ordering::SeqCst);
        let _ = self.0.stop.send(true);
        if let Err(e) = self.0.store.mark_stopping(&self.0.me.id).await {
            tracing::warn!(error = %e, "could not mark this instance as stopping");
        }
    }

    /// The end of a graceful stop, once the mailboxes stopped: every lease released at once.
    /// A failure (the state store busy or briefly away) is retried for a few seconds before
    /// the leases are left to expire, since peers then wait a whole lease for them.
    pub async fn leave(&self) {
        self.0.leaving.store(true, Ordering::SeqCst);
        self.0.owned.write().clear();
        self.0.feed.store(false, Ordering::SeqCst);
        let mut attempt = 1;
        loop {
            match self.0.store.leave(&self.0.me.id).await {
                Ok(()) => {
                    tracing::info!(instance = %self.0.me.name, "left the cluster; leases released");
                    return;
                }
                Err(e) if attempt < 5 => {
                    tracing::warn!(error = %e, attempt, "could not release the leases; trying again");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not release the leases; they expire");
                    return;
                }
            }
        }
    }

    /// Applies a reloaded configuration: the supervisor runs the owned mailboxes of it
    /// (removed ones stop; new ones are taken at the next tick if they fall to this instance).
    pub async fn reconfigure(
        &self,
        servers: Vec<ServerSpec>,
        mailboxes: Vec<MailboxSpec>,
    ) -> anyhow::Result<ReloadReport> {
        self.set_configured(servers, mailboxes);
        let run: BTreeSet<String> = self.0.owned.read().keys().cloned().collect();
        self.apply(&run).await
    }

    /// Has the supervisor run exactly `run` (of the configured mailboxes).
    async fn apply(&self, run: &BTreeSet<String>) -> anyhow::Result<ReloadReport> {
        let _one = self.0.applying.lock().await;
        let Some(handle) = self.0.supervisor.get() else {
            return Ok(ReloadReport::default());
        };
        let Configured { servers, mailboxes } = self.0.configured.read().clone();
        let mailboxes = mailboxes
            .into_iter()
            .filter(|m| run.contains(&*m.smtp))
            .collect();
        let report = handle
            .addr
            .send(Reload { servers, mailboxes })
            .await
            .map_err(|e| anyhow::anyhow!("the supervisor is gone: {e}"))??;
        self.0
            .metrics
            .mailboxes_owned
            .set(self.0.owned.read().len() as i64);
        Ok(report)
    }

    async fn apply_owned(&self) {
        let run: BTreeSet<String> = self.0.owned.read().keys().cloned().collect();
        if let Err(e) = self.apply(&run).await {
            tracing::error!(error = %e, "cluster: the supervisor refused the owned mailboxes");
        }
    }

    /// Without a renewal for a whole lease this instance may have lost anything: it stops
    /// every mailbox and the feed (their writes would be refused anyway).
    async fn fence_self_if_stale(&self) {
        if self.0.renewed_at.lock().elapsed() < self.0.lease {
            return;
        }
        // Not ready until an acquiring tick has taken its share again.
        self.0.acquired.store(false, Ordering::SeqCst);
        let had = self.0.owned.read().len();
        if had == 0 && !self.reads_feed() {
            return;
        }
        self.0.owned.write().clear();
        self.0.feed.store(false, Ordering::SeqCst);
        self.0.metrics.feed_reader.set(0);
        tracing::error!(
            mailboxes = had,
            "cluster: no lease renewal for a whole lease; stopping every mailbox here"
        );
        self.apply_owned().await;
    }

    /// One round of the membership loop (see the module comment).
    async fn tick(&self, acquire: bool) -> anyhow::Result<()> {
        let inner = &*self.0;
        let me = inner.me.id.as_str();
        if inner.leaving.load(Ordering::SeqCst) {
            return Ok(());
        }
        // Renew first: what was taken over while this instance was away stops before
        // anything else happens here.
        let renewed: HashMap<String, i64> = inner.store.renew(me).await?.into_iter().collect();
        *inner.renewed_at.lock() = Instant::now();
        let lost: Vec<String> = inner
            .owned
            .read()
            .keys()
            .filter(|k| !renewed.contains_key(*k))
            .cloned()
            .collect();
        let feed_lost = self.reads_feed() && !renewed.contains_key(FEED_KEY);
        if feed_lost {
            inner.feed.store(false, Ordering::SeqCst);
            inner.metrics.feed_reader.set(0);
            inner.metrics.lost.inc();
            tracing::warn!("cluster: the CRM feed's lease was taken over; no longer reading it");
        }
        if !lost.is_empty() {
            tracing::warn!(mailboxes = lost.len(), first = %lost[0], "cluster: leases taken over by another instance; those mailboxes stop here");
            inner.metrics.lost.inc_by(lost.len() as u64);
            {
                let mut owned = inner.owned.write();
                for k in &lost {
                    owned.remove(k);
                }
            }
            self.apply_owned().await;
        }
        inner
            .store
            .heartbeat(me, &inner.me.name, &inner.me.admin_url, &inner.leaving)
            .await?;
        let mut live = inner.store.live().await?;
        if !live.iter().any(|i| i == me) {
            live.push(me.to_owned());
            live.sort();
        }
        inner.metrics.instances_live.set(live.len() as i64);
        let changed = *inner.live.read() != live;
        if changed {
            tracing::info!(live = live.len(), "cluster membership changed");
            if let Some(f) = inner.on_members.get() {
                f(live.len());
            }
            *inner.live.write() = live.clone();
        }
        let mut keys: Vec<String> = inner
            .configured
            .read()
            .mailboxes
            .iter()
            .map(|m| m.smtp.to_string())
            .collect();
        keys.push(FEED_KEY.to_owned());
        let wanted: BTreeSet<&String> = keys
            .iter()
            .filter(|k| rendezvous::owner(k, &live) == Some(me))
            .collect();
        // Release what another live instance should own (or is no longer configured):
        // stop it first, then give the lease up. Every lease held is looked at, not only what
        // runs here: one a failed release or start left held would otherwise be renewed for
        // ever, run by nobody.
        let release: Vec<String> = renewed
            .keys()
            .filter(|k| !wanted.contains(k))
            .cloned()
            .collect();
        let stop = release.iter().any(|k| inner.owned.read().contains_key(k));
        if stop {
            let run: BTreeSet<String> = inner
                .owned
                .read()
                .keys()
                .filter(|k| wanted.contains(k))
                .cloned()
                .collect();
            self.apply(&run).await?;
            let mut owned = inner.owned.write();
            for k in &release {
                owned.remove(k);
            }
        }
        if release.iter().any(|k| k == FEED_KEY) {
            inner.feed.store(false, Ordering::SeqCst);
            inner.metrics.feed_reader.set(0);
        }
        if !release.is_empty() {
            tracing::info!(
                leases = release.len(),
                "cluster: handing leases over to their new owners"
            );
            inner.store.release(me, &release).await?;
        }
        if acquire && !inner.leaving.load(Ordering::SeqCst) && self.acquire(&wanted).await? {
            inner.acquired.store(true, Ordering::SeqCst);
        }
        inner
            .metrics
            .mailboxes_owned
            .set(inner.owned.read().len() as i64);
        inner.store.forget(&keys).await?;
        Ok(())
    }

    /// Takes the free leases of `wanted` not held yet and starts those mailboxes; returns
    /// false when the mailboxes had to wait for the change feed's position.
    ///
    /// A first step reconciles everything logged before it, so the cluster's very first reader
    /// may start the feed at the end of the log, but only if that end is fixed before any
    /// first step reads the CRM: a change made after a first step and before the position is
    /// stored would lie behind the cursor and never be queued (a reader killed before it
    /// stored one left exactly that to its successor). So no mailbox is taken while the feed
    /// has no position, and the instance that takes the feed's lease stores one before it
    /// starts anything.
    async fn acquire(&self, wanted: &BTreeSet<&String>) -> anyhow::Result<bool> {
        let inner = &*self.0;
        let me = inner.me.id.as_str();
        let mut take: Vec<String> = {
            let owned = inner.owned.read();
            wanted
                .iter()
                .filter(|k| {
                    if **k == FEED_KEY {
                        !self.reads_feed()
                    } else {
                        !owned.contains_key(**k)
                    }
                })
                .map(|k| (*k).clone())
                .collect()
        };
        if take.is_empty() {
            return Ok(true);
        }
        if !self.feed_positioned().await? {
            if let Some(i) = take.iter().position(|k| k == FEED_KEY) {
                let feed = take.remove(i);
                for (_, epoch) in inner.store.acquire(me, &[feed]).await? {
                    self.start_reading(epoch).await;
                }
            }
            if !self.feed_positioned().await? {
                tracing::info!(
                    mailboxes = take.len(),
                    "cluster: the CRM change feed has no position yet; no mailbox is taken until its reader stores one"
                );
                return Ok(false);
            }
        }
        let got = inner.store.acquire(me, &take).await?;
        let mut started = 0usize;
        let mut failed = Vec::new();
        for (key, epoch) in got {
            if key == FEED_KEY {
                self.start_reading(epoch).await;
                continue;
            }
            if epoch > 1 {
                inner.metrics.takeovers.inc();
            }
            match fence::bump(&inner.crm, &key).await {
                Ok(token) => {
                    inner.owned.write().insert(key, token);
                    started += 1;
                }
                Err(e) => {
                    tracing::warn!(mailbox = %key, error = %e, "cluster: cannot fence the mailbox in the business database; its lease is given back");
                    failed.push(key);
                }
            }
        }
        if !failed.is_empty() {
            inner.store.release(me, &failed).await?;
        }
        if started > 0 {
            tracing::info!(mailboxes = started, "cluster: leases acquired");
            self.apply_owned().await;
        }
        Ok(true)
    }

    /// Whether the change feed's cursor is stored (looked up until it is).
    async fn feed_positioned(&self) -> Result<bool, DbError> {
        let inner = &*self.0;
        if inner.positioned.load(Ordering::SeqCst) {
            return Ok(true);
        }
        let stored = inner.change_feed.has_position().await?;
        inner.positioned.store(stored, Ordering::SeqCst);
        Ok(stored)
    }

    /// Becomes the reader of the change feed whose lease this instance just took at `epoch`:
    /// stores the feed's first position if it has none, then the feed port reads. When the
    /// position cannot be stored this instance keeps the lease without reading; the next
    /// tick takes it again and retries.
    async fn start_reading(&self, epoch: i64) {
        let inner = &*self.0;
        if let Err(e) = inner.change_feed.start_at_end_if_new().await {
            tracing::warn!(error = %e, "cluster: cannot position the CRM change feed; retrying at the next tick");
            return;
        }
        inner.positioned.store(true, Ordering::SeqCst);
        if epoch > 1 {
            inner.metrics.takeovers.inc();
        }
        inner.feed.store(true, Ordering::SeqCst);
        inner.metrics.feed_reader.set(1);
        tracing::info!(epoch, "cluster: this instance reads the CRM change feed");
    }
}
