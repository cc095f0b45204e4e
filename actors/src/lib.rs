//! mailsync-actors: the concurrency, supervision and throttling of mailsync.
//!
//! A supervisor owns one actor per mailbox, each owning one actor per synced folder; stream
//! group actors hold the EWS streaming connections; a throttle per Exchange server meters every
//! request. The crate knows nothing of XML or SQL: it drives the ports (traits) that the
//! service implements with the `ews` client and sqlx. See docs/ARCHITECTURE.md.
//!
//! Layout, one file per actor:
//!
//! - [`supervisor`]: starts, restarts (capped back-off, by cause) and stops mailboxes; admin
//!   commands and reload; owns throttles, stream groups and the CRM feed.
//! - [`mailbox`]: one mailbox; opens it, owns its folder actors, restarts a failed folder alone.
//! - [`folder`]: the sync loop of one folder; trigger coalescing, error classification, the
//!   stall watchdog.
//! - [`stream_group`]: one streaming connection for a group of mailboxes; renewal, gap resync,
//!   polling fallback.
//! - [`crm_feed`]: CRM change feed to folder triggers.
//! - [`throttle`]: per-server rate limit, concurrency cap and pause.
//! - [`ports`]: the traits the service implements; [`fakes`]: in-memory ones for tests/benches.
//! - [`status`]: the registry (a DashMap) and status snapshots; [`metrics`]: Prometheus.
//! - [`signals`]: SIGTERM/Ctrl-C stop, SIGHUP reload.

pub mod backoff;
pub mod crm_feed;
pub mod fakes;
pub mod folder;
pub mod mailbox;
pub mod metrics;
pub mod ports;
pub mod settings;
pub mod signals;
pub mod status;
pub mod stream_group;
pub mod supervisor;
pub mod throttle;
mod watchdog;

use std::sync::Arc;

use tokio::sync::Semaphore;

pub use backoff::Backoff;
pub use metrics::Metrics;
pub use ports::{
    Cause, Causes, CrmPort, FolderId, GroupInfo, MailboxId, MailboxSpec, Ports, ServerId,
    ServerSpec, ServerStreaming, StepReport, StepRequest, StreamEvent, StreamPort, SubscriptionId,
    SyncError, SyncPort, ThrottleSettings,
};
pub use settings::{RuntimeSettings, StreamSettings};
pub use status::{Board, FolderState, FolderStatus, MailboxSnapshot, MailboxState, RestartCause};
pub use supervisor::{
    Action, Command, CommandError, Reload, ReloadReport, ShareBudget, Shutdown, SpecError,
    Supervisor, SupervisorHandle,
};
pub use throttle::{ProgressSink, StepContext, Throttle, ThrottlePermit};

/// What every actor of one supervisor shares.
pub(crate) struct Shared {
    /// The service's side of things.
    pub ports: Ports,
    /// The registry.
    pub board: Board,
    /// Where everything is counted.
    pub metrics: Metrics,
    /// Timing and sizing.
    pub settings: RuntimeSettings,
    /// Mailboxes allowed to be starting at once.
    pub start_slots: Arc<Semaphore>,
}
