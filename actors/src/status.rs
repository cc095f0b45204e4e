//! The registry: every mailbox's actor address and status, readable without asking an actor.
//!
//! A `DashMap` keyed by mailbox. Actors write their own part (the supervisor the lifecycle,
//! the mailbox its folder list, each folder its step results) with short synchronous
//! updates; the admin API and the routing of notifications read it. No guard is ever held
//! across an `.await`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::Addr;
use dashmap::DashMap;
use tokio::time::Instant;

use crate::mailbox::MailboxActor;
use crate::metrics::Metrics;
use crate::ports::{FolderId, MailboxId, MailboxSpec, ServerId};

/// Where a mailbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MailboxState {
    /// Waiting for a start slot, opening, or running its first steps.
    Starting,
    /// Syncing.
    Running,
    /// Paused by an operator: no steps run, triggers are remembered.
    Paused,
    /// Failed with an error; restarts after a back-off.
    Backoff,
    /// Credentials or impersonation refused; retried slowly.
    Failed,
    /// Stopped (shutdown).
    Stopped,
}

impl MailboxState {
    /// Every state, in the order of their metric label values.
    pub const ALL: [MailboxState; 6] = [
        MailboxState::Starting,
        MailboxState::Running,
        MailboxState::Paused,
        MailboxState::Backoff,
        MailboxState::Failed,
        MailboxState::Stopped,
    ];

    /// Label value and API string.
    pub fn as_str(self) -> &'static str {
        match self {
            MailboxState::Starting => "starting",
            MailboxState::Running => "running",
            MailboxState::Paused => "paused",
            MailboxState::Backoff => "backoff",
            MailboxState::Failed => "failed",
            MailboxState::Stopped => "stopped",
        }
    }
}

/// Where a folder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolderState {
    /// Nothing to do.
    Idle,
    /// A step runs.
    Syncing,
    /// Waiting to retry after an error.
    Retrying,
    /// The mailbox is paused.
    Paused,
    /// Failed; the mailbox restarts it after a back-off.
    Restarting,
}

impl FolderState {
    /// API string.
    pub fn as_str(self) -> &'static str {
        match self {
            FolderState::Idle => "idle",
            FolderState::Syncing => "syncing",
            FolderState::Retrying => "retrying",
            FolderState::Paused => "paused",
            FolderState::Restarting => "restarting",
        }
    }
}

/// A folder's status, as kept in the registry.
#[derive(Debug, Clone)]
pub struct FolderStatus {
    /// The folder.
    pub id: FolderId,
    /// Where it is.
    pub state: FolderState,
    /// Steps run since the mailbox started.
    pub steps: u64,
    /// Times this folder alone was restarted.
    pub restarts: u32,
    /// The folder actor's incarnation, so tests can tell a restarted actor from a kept one.
    pub incarnation: u64,
    /// When the last step committed.
    pub last_sync: Option<SystemTime>,
    /// The last step's error, cleared by the next success.
    pub last_error: Option<String>,
    /// The oldest trigger not yet applied.
    pub pending_since: Option<Instant>,
    /// Deletes held for an administrator's decision (0: none).
    pub held: u64,
    /// Progress of a long job (an initial sync): done, of.
    pub progress: Option<(u64, u64)>,
}

impl FolderStatus {
    pub(crate) fn new(id: FolderId) -> Self {
        FolderStatus {
            id,
            state: FolderState::Idle,
            steps: 0,
            restarts: 0,
            incarnation: 0,
            last_sync: None,
            last_error: None,
            pending_since: None,
            held: 0,
            progress: None,
        }
    }
}

/// A mailbox's registry entry.
pub(crate) struct MailboxEntry {
    /// What was configured.
    pub spec: MailboxSpec,
    /// The running actor, if one runs.
    pub addr: Option<Addr<MailboxActor>>,
    /// Lifecycle state (mirrored in the `mailsync_mailboxes` gauge).
    pub state: MailboxState,
    /// Incarnation of the mailbox actor; messages from an older one are ignored.
    pub generation: u64,
    /// Restarts of the mailbox (any cause).
    pub restarts: u32,
    /// Why the mailbox last failed.
    pub last_error: Option<String>,
    /// When a mailbox in back-off or failed is retried.
    pub next_retry: Option<SystemTime>,
    /// Paused by an operator; survives restarts.
    pub paused: bool,
    /// Finished its first sync step (or failed to open) since the process started.
    pub first_step_done: bool,
    /// The folders of the current incarnation.
    pub folders: Vec<FolderStatus>,
}

/// A copy of one mailbox's status (for the admin API and tests).
#[derive(Debug, Clone)]
pub struct MailboxSnapshot {
    /// The mailbox.
    pub smtp: MailboxId,
    /// Its server.
    pub server: ServerId,
    /// Lifecycle state.
    pub state: MailboxState,
    /// Incarnation of the mailbox actor.
    pub generation: u64,
    /// Restarts of the mailbox.
    pub restarts: u32,
    /// Latest commit of any of its folders.
    pub last_sync: Option<SystemTime>,
    /// The mailbox's error, else the first folder error.
    pub last_error: Option<String>,
    /// Age of the oldest trigger not yet applied (zero when up to date).
    pub lag: Duration,
    /// When a mailbox in back-off or failed is retried.
    pub next_retry: Option<SystemTime>,
    /// Whether it finished its first sync step.
    pub first_step_done: bool,
    /// Its folders.
    pub folders: Vec<FolderStatus>,
}

/// The shared registry. Cheap to clone.
#[derive(Clone)]
pub struct Board {
    entries: Arc<DashMap<MailboxId, MailboxEntry>>,
    metrics: Metrics,
}

impl Board {
    pub(crate) fn new(metrics: Metrics) -> Self {
        Board {
            entries: Arc::new(DashMap::new()),
            metrics,
        }
    }

    pub(crate) fn insert(&self, spec: MailboxSpec) {
        let smtp = spec.smtp.clone();
        let entry = MailboxEntry {
            spec,
            addr: None,
            state: MailboxState::Starting,
            generation: 0,
            restarts: 0,
            last_error: None,
            next_retry: None,
            paused: false,
            first_step_done: false,
            folders: Vec::new(),
        };
        self.gauge(MailboxState::Starting, 1);
        if let Some(old) = self.entries.insert(smtp, entry) {
            self.gauge(old.state, -1);
        }
    }

    pub(crate) fn remove(&self, smtp: &str) -> Option<Addr<MailboxActor>> {
        let (_, entry) = self.entries.remove(smtp)?;
        self.gauge(entry.state, -1);
        entry.addr
    }

    fn gauge(&self, state: MailboxState, delta: i64) {
        self.metrics
            .mailboxes
            .with_label_values(&[state.as_str()])
            .add(delta);
    }

    /// Runs `f` on the entry, if the mailbox is known.
    pub(crate) fn update<R>(
        &self,
        smtp: &str,
        f: impl FnOnce(&mut MailboxEntry) -> R,
    ) -> Option<R> {
        let mut entry = self.entries.get_mut(smtp)?;
        Some(f(&mut entry))
    }

    /// Moves the mailbox to `state`, keeping the gauge in step.
    pub(crate) fn set_state(&self, smtp: &str, state: MailboxState) {
        let old = self.update(smtp, |e| std::mem::replace(&mut e.state, state));
        if let Some(old) = old {
            if old != state {
                self.gauge(old, -1);
                self.gauge(state, 1);
            }
        }
    }

    /// Runs `f` on a folder's status if the entry still belongs to `generation`.
    pub(crate) fn folder(
        &self,
        smtp: &str,
        generation: u64,
        index: usize,
        f: impl FnOnce(&mut FolderStatus),
    ) {
        self.update(smtp, |e| {
            if e.generation == generation {
                if let Some(folder) = e.folders.get_mut(index) {
                    f(folder);
                }
            }
        });
    }

    /// The running actor of a mailbox.
    pub fn addr(&self, smtp: &str) -> Option<Addr<MailboxActor>> {
        self.entries.get(smtp).and_then(|e| e.addr.clone())
    }

    /// Whether the mailbox is configured.
    pub fn contains(&self, smtp: &str) -> bool {
        self.entries.contains_key(smtp)
    }

    /// Number of configured mailboxes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no mailbox is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether every mailbox has finished its first sync step (or failed to open).
    pub fn ready(&self) -> bool {
        self.entries.iter().all(|e| e.first_step_done)
    }

    /// A snapshot of one mailbox.
    pub fn snapshot(&self, smtp: &str) -> Option<MailboxSnapshot> {
        self.entries.get(smtp).map(|e| snapshot(&e))
    }

    /// Snapshots of every mailbox, ordered by address.
    pub fn snapshots(&self) -> Vec<MailboxSnapshot> {
        let mut all: Vec<MailboxSnapshot> = self.entries.iter().map(|e| snapshot(&e)).collect();
        all.sort_by(|a, b| a.smtp.cmp(&b.smtp));
        all
    }

    /// Counts of mailboxes by state.
    pub fn states(&self) -> Vec<(MailboxState, usize)> {
        MailboxState::ALL
            .iter()
            .map(|s| (*s, self.entries.iter().filter(|e| e.state == *s).count()))
            .collect()
    }
}

fn snapshot(e: &MailboxEntry) -> MailboxSnapshot {
    let now = Instant::now();
    let oldest = e.folders.iter().filter_map(|f| f.pending_since).min();
    MailboxSnapshot {
        smtp: e.spec.smtp.clone(),
        server: e.spec.server.clone(),
        state: e.state,
        generation: e.generation,
        restarts: e.restarts,
        last_sync: e.folders.iter().filter_map(|f| f.last_sync).max(),
        last_error: e
            .last_error
            .clone()
            .or_else(|| e.folders.iter().find_map(|f| f.last_error.clone())),
        lag: oldest.map_or(Duration::ZERO, |t| now.saturating_duration_since(t)),
        next_retry: e.next_retry,
        first_step_done: e.first_step_done,
        folders: e.folders.clone(),
    }
}

/// Why a folder or mailbox went down (the `cause` label of `mailsync_restarts_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartCause {
    /// An error the step could not retry its way out of.
    Error,
    /// A panic in a port or an actor.
    Panic,
    /// No progress for the stall timeout.
    Stall,
    /// Credentials or impersonation refused.
    Denied,
    /// An operator asked for it.
    Admin,
}

impl RestartCause {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartCause::Error => "error",
            RestartCause::Panic => "panic",
            RestartCause::Stall => "stall",
            RestartCause::Denied => "denied",
            RestartCause::Admin => "admin",
        }
    }
}
