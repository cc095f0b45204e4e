//! The ports: what the actors drive and the service implements.
//!
//! The actors decide *when* something happens (a folder syncs, a stream reconnects); the
//! ports decide *what* it means on the wire and in the database. The service implements them
//! with the `ews` client and sqlx; this crate's tests and benches use [`crate::fakes`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use crate::throttle::{StepContext, Throttle};

/// A mailbox, by its primary SMTP address in lower case.
pub type MailboxId = Arc<str>;
/// A synced folder of a mailbox, as the service names it (`contacts`, `calendar`, `mail/inbox`…).
pub type FolderId = Arc<str>;
/// An Exchange server, by its name in the configuration.
pub type ServerId = Arc<str>;
/// A streaming subscription id, as Exchange issued it.
pub type SubscriptionId = Arc<str>;

/// What the supervisor needs to know about one configured mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxSpec {
    /// Primary SMTP address, lower case; the mailbox's identity everywhere.
    pub smtp: MailboxId,
    /// The server whose throttle and stream groups the mailbox uses.
    pub server: ServerId,
    /// A digest of everything else the service configured for the mailbox, so that a reload
    /// can tell a changed mailbox (restarted) from an unchanged one (left alone).
    pub fingerprint: u64,
}

/// Per-server request limits (see docs/configuration.md, `[servers.throttle]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThrottleSettings {
    /// Sustained requests per second for the whole server; fractional rates are kept (0.5 is
    /// one request every 2 s). Must be finite and above zero (the configuration checks it).
    pub requests_per_second: f64,
    /// Requests allowed in a burst above the sustained rate.
    pub burst: u32,
    /// Requests in flight at once (EWSMaxConcurrency is 27 on Exchange 2013+, 10 on 2010).
    pub max_concurrent: u32,
}

/// One configured Exchange server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSpec {
    /// Name from the configuration; used as a metric label (bounded by configuration).
    pub id: ServerId,
    /// Request limits for this server.
    pub throttle: ThrottleSettings,
    /// Whether streaming notifications are used (else folders are polled).
    pub streaming: bool,
    /// How this server's mailboxes share streaming connections and how often they are polled
    /// when they cannot stream: servers differ (Exchange Online, an old on-premises server).
    pub stream: ServerStreaming,
}

/// The per-server part of streaming (docs/configuration.md, `[servers.streaming]`); the
/// runtime-wide timing (heartbeat, renewal, retries) is in [`crate::StreamSettings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerStreaming {
    /// Mailboxes per streaming connection (EWS allows 200 subscriptions per connection).
    pub group_size: usize,
    /// Lifetime asked for each GetStreamingEvents connection (1–30 minutes).
    pub connection_timeout: Duration,
    /// Polling interval of a group's mailboxes while they cannot stream.
    pub polling_interval: Duration,
}

impl Default for ServerStreaming {
    fn default() -> Self {
        ServerStreaming {
            group_size: 200,
            connection_timeout: Duration::from_secs(30 * 60),
            polling_interval: Duration::from_secs(60),
        }
    }
}

/// Why a folder was asked to sync. Kept as a small bit set while triggers coalesce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The mailbox (re)started: every folder syncs once.
    Start,
    /// A streaming notification, or a stream gap that may have hidden one.
    Notification,
    /// The CRM change log has rows for this folder.
    Crm,
    /// A polling tick (streaming off or failing).
    Timer,
    /// An operator asked for it through the admin API.
    Admin,
    /// The previous step said there is more to fetch.
    More,
}

impl Cause {
    /// Every cause, in the order of their metric label values.
    pub const ALL: [Cause; 6] = [
        Cause::Start,
        Cause::Notification,
        Cause::Crm,
        Cause::Timer,
        Cause::Admin,
        Cause::More,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Start => "start",
            Cause::Notification => "notification",
            Cause::Crm => "crm",
            Cause::Timer => "timer",
            Cause::Admin => "admin",
            Cause::More => "more",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The causes coalesced into one step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Causes(u8);

impl Causes {
    /// Adds a cause.
    pub fn insert(&mut self, cause: Cause) {
        self.0 |= cause.bit();
    }
    /// Whether `cause` is among them.
    pub fn contains(self, cause: Cause) -> bool {
        self.0 & cause.bit() != 0
    }
    /// Whether there is none.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The causes, in [`Cause::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Cause> {
        Cause::ALL.into_iter().filter(move |c| self.contains(*c))
    }
}

/// One sync step of one folder, as the folder actor asks for it.
pub struct StepRequest {
    /// The mailbox.
    pub mailbox: MailboxId,
    /// The folder.
    pub folder: FolderId,
    /// Forget the stored sync state and reconcile everything (after an invalid sync state or
    /// an admin resync).
    pub full_resync: bool,
    /// Why the step runs.
    pub causes: Causes,
    /// Throttle and progress: every EWS request goes through `ctx.acquire()`, and long work
    /// calls `ctx.progress()` so the stall watchdog knows it is alive.
    pub ctx: StepContext,
}

/// What a successful step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepReport {
    /// Items written on either side.
    pub items: u64,
    /// There is more to fetch (a page limit was hit): the folder runs another step at once.
    pub more: bool,
    /// The port wants a step after this long even if nothing triggers one (a parked item's
    /// retry time).
    pub wake_in: Option<Duration>,
    /// Deletes of this folder held for an administrator's decision after the step (0: none).
    pub held: u64,
    /// Progress of a long job (an initial sync): done, of.
    pub progress: Option<(u64, u64)>,
}

/// How a port failed, classified by what the actors must do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// Exchange asked us to back off: the whole server pauses for `back_off`, then the step
    /// is retried.
    #[error("throttled by the server for {}ms", back_off.as_millis())]
    Throttled {
        /// How long the server asked us to wait.
        back_off: Duration,
    },
    /// A timeout, a 5xx, a dropped connection, a database hiccup: retried with back-off.
    #[error("{0}")]
    Transient(String),
    /// The stored sync state is unusable: the folder resyncs from scratch.
    #[error("invalid sync state: {0}")]
    InvalidState(String),
    /// Credentials or impersonation were refused: the mailbox is marked failed and retried
    /// slowly; its neighbours carry on.
    #[error("access denied: {0}")]
    Denied(String),
    /// Anything else: the folder (or the mailbox, when opening it) restarts with back-off.
    #[error("{0}")]
    Failed(String),
}

/// The sync side of the service: open a mailbox, sync one folder once.
pub trait SyncPort: Send + Sync + 'static {
    /// Checks that the mailbox can be reached (credentials, impersonation) and lists the
    /// folders to sync. Runs whenever the mailbox (re)starts.
    fn open_mailbox(
        &self,
        mailbox: &MailboxSpec,
        ctx: StepContext,
    ) -> BoxFuture<'static, Result<Vec<FolderId>, SyncError>>;

    /// One sync step of one folder: fetch what changed on both sides, write both sides,
    /// commit the new state. Must be safe to cancel (dropped) at any await point: the next
    /// step picks up from the last committed state.
    fn sync_folder(&self, step: StepRequest) -> BoxFuture<'static, Result<StepReport, SyncError>>;
}

/// A group of mailboxes that share one streaming connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// The server.
    pub server: ServerId,
    /// Number of the group within its server.
    pub group: u32,
    /// The alphabetically first member: its address goes in X-AnchorMailbox for the group.
    pub anchor: MailboxId,
}

/// What a streaming connection delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// Something changed in a subscribed folder (`None` when the port cannot tell which).
    Changed {
        /// The subscription the event came on.
        subscription: SubscriptionId,
        /// The folder, when known.
        folder: Option<FolderId>,
    },
    /// The server's keep-alive (ConnectionStatus OK).
    Heartbeat,
    /// The server ended the connection as agreed (ConnectionStatus Closed).
    Closed,
    /// These subscriptions are gone (expired, lost, missed events): resubscribe and resync.
    Lost(Vec<SubscriptionId>),
    /// The connection failed.
    Failed(SyncError),
}

/// The notification side: streaming subscriptions and connections.
pub trait StreamPort: Send + Sync + 'static {
    /// Subscribes to the given folders of one mailbox.
    fn subscribe(
        &self,
        group: &GroupInfo,
        mailbox: &MailboxId,
        folders: &[FolderId],
        throttle: Throttle,
    ) -> BoxFuture<'static, Result<SubscriptionId, SyncError>>;

    /// Opens one GetStreamingEvents connection for these subscriptions, lasting at most
    /// `timeout`. Resolves once the connection is established.
    fn stream(
        &self,
        group: &GroupInfo,
        subscriptions: Vec<SubscriptionId>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<BoxStream<'static, StreamEvent>, SyncError>>;
}

/// The CRM side's change feed: which folders have CRM changes waiting.
pub trait CrmPort: Send + Sync + 'static {
    /// Waits until the change log has something new and says which folders it concerns.
    /// The folders read the changes themselves from their own cursors; this only says "look now".
    fn next_changes(&self) -> BoxFuture<'static, Result<Vec<(MailboxId, FolderId)>, SyncError>>;
}

/// The ports the runtime drives.
#[derive(Clone)]
pub struct Ports {
    /// Opening mailboxes and syncing folders.
    pub sync: Arc<dyn SyncPort>,
    /// Streaming notifications.
    pub stream: Arc<dyn StreamPort>,
    /// The CRM change feed, if the service has one.
    pub crm: Option<Arc<dyn CrmPort>>,
}

impl fmt::Debug for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ports")
            .field("crm", &self.crm.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_set_keeps_each_cause_once() {
        let mut causes = Causes::default();
        assert!(causes.is_empty());
        causes.insert(Cause::Crm);
        causes.insert(Cause::Crm);
        causes.insert(Cause::Admin);
        assert_eq!(
            causes.iter().collect::<Vec<_>>(),
            vec![Cause::Crm, Cause::Admin]
        );
        assert!(!causes.contains(Cause::Timer));
    }
}
