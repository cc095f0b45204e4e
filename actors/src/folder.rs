//! FolderActor: the sync loop of one folder.
//!
//! Triggers (notification, CRM change, timer, admin resync) coalesce: while a step runs, any
//! number of triggers mark the folder dirty and cause exactly one more step. Step errors are
//! classified: throttled and transient ones are retried with back-off (throttling pauses the
//! whole server first), an invalid sync state runs a full resync, anything else goes up to
//! the mailbox, which restarts this folder alone — or, when access was denied, fails the
//! mailbox.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::mailbox::{FolderDown, FolderReady, MailboxActor};
use crate::ports::{Cause, Causes, FolderId, MailboxId, StepReport, StepRequest, SyncError};
use crate::status::{FolderState, RestartCause};
use crate::throttle::{Progress, StepContext, Throttle};
use crate::watchdog::{guard, Guarded};
use crate::Shared;

/// Asks a folder to sync.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Trigger {
    /// Why.
    pub cause: Cause,
    /// Forget the sync state and reconcile everything.
    pub full: bool,
}

/// Pauses (true) or resumes (false) a folder: a paused folder runs no step but remembers
/// triggers.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct SetPaused(pub bool);

/// Stops a folder: gracefully after the running step, or at once (`abort`), cancelling it.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct StopFolder {
    /// Cancel the running step instead of waiting for it.
    pub abort: bool,
}

/// Asks for a [`FolderInfo`].
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "FolderInfo")]
pub struct GetStatus;

/// A folder actor's own view of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderInfo {
    /// Which incarnation this actor is (the mailbox counts them).
    pub incarnation: u64,
    /// A step runs.
    pub running: bool,
    /// Another step is due after the running one.
    pub dirty: bool,
    /// Paused.
    pub paused: bool,
    /// Consecutive failed attempts of the current step.
    pub attempt: u32,
}

/// Everything a folder actor is created with.
pub(crate) struct FolderArgs {
    pub mailbox: MailboxId,
    pub folder: FolderId,
    pub index: usize,
    pub generation: u64,
    pub incarnation: u64,
    pub parent: Addr<MailboxActor>,
    pub throttle: Throttle,
    pub shared: Arc<Shared>,
    pub paused: bool,
}

/// The sync loop of one folder.
pub struct FolderActor {
    /// Who we are, where we report: see [`FolderArgs`].
    args: FolderArgs,
    /// The running step, if any (cancelled on abort).
    running: Option<SpawnHandle>,
    /// Another step is due after the running one.
    dirty: bool,
    /// Causes of the triggers not yet covered by a step.
    causes: Causes,
    /// A full resync was asked for and has not run yet.
    full: bool,
    /// When the oldest uncovered trigger arrived, and its cause (for the lag metric).
    pending: Option<(Instant, Cause)>,
    /// The same for the triggers the running step covers.
    covering: Option<(Instant, Cause)>,
    /// The causes and full flag of the running step, given back if it fails.
    step_causes: (Causes, bool),
    /// A scheduled retry; triggers meanwhile only add to it.
    retry: Option<SpawnHandle>,
    /// Failed attempts in a row.
    attempt: u32,
    /// Invalid-sync-state answers in a row.
    resyncs: u32,
    /// Paused by an operator.
    paused: bool,
    /// Stop requested; who waits for it.
    stopping: Option<Vec<oneshot::Sender<()>>>,
    /// The first step finished (told to the mailbox once).
    first_done: bool,
    /// A step succeeded in this incarnation (resets the mailbox's restart back-off).
    had_success: bool,
    /// Left on purpose; if the actor is dropped without this, it died (panic).
    exited: bool,
    /// A step the port asked for at a time of its own (a parked item's retry).
    wake: Option<SpawnHandle>,
    /// The next safety-net read.
    safety: Option<SpawnHandle>,
}

impl FolderActor {
    pub(crate) fn new(args: FolderArgs) -> Self {
        let paused = args.paused;
        FolderActor {
            args,
            running: None,
            dirty: false,
            causes: Causes::default(),
            full: false,
            pending: None,
            covering: None,
            step_causes: (Causes::default(), false),
            retry: None,
            attempt: 0,
            resyncs: 0,
            paused,
            stopping: None,
            first_done: false,
            had_success: false,
            exited: false,
            wake: None,
            safety: None,
        }
    }

    /// Schedules the next safety-net read, jittered so that folders do not read in waves.
    fn schedule_safety(&mut self, ctx: &mut Context<Self>) {
        let Some(every) = self.args.shared.settings.safety_read else {
            return;
        };
        let delay = jittered(every, &self.args.mailbox, &self.args.folder);
        self.safety = Some(ctx.run_later(delay, |act, ctx| {
            act.safety = None;
            act.trigger(Cause::Timer, false, ctx);
            act.schedule_safety(ctx);
        }));
    }

    fn board(&self, f: impl FnOnce(&mut crate::status::FolderStatus)) {
        self.args
            .shared
            .board
            .folder(&self.args.mailbox, self.args.generation, self.args.index, f);
    }

    fn oldest_pending(&self) -> Option<Instant> {
        match (self.pending, self.covering) {
            (Some((a, _)), Some((b, _))) => Some(a.min(b)),
            (a, b) => a.or(b).map(|(t, _)| t),
        }
    }

    fn trigger(&mut self, cause: Cause, full: bool, ctx: &mut Context<Self>) {
        let metrics = &self.args.shared.metrics;
        metrics.triggers.with_label_values(&[cause.as_str()]).inc();
        self.full |= full;
        self.causes.insert(cause);
        let already_due = (self.running.is_some() && self.dirty)
            || self.retry.is_some()
            || self.stopping.is_some()
            || (self.paused && self.pending.is_some());
        if self.pending.is_none() {
            self.pending = Some((Instant::now(), cause));
            let oldest = self.oldest_pending();
            self.board(|f| f.pending_since = oldest);
        }
        if already_due {
            metrics.coalesced.with_label_values(&[cause.as_str()]).inc();
        } else if self.running.is_some() {
            self.dirty = true;
        } else {
            self.start_step(ctx);
        }
    }

    fn start_step(&mut self, ctx: &mut Context<Self>) {
        if self.running.is_some() || self.retry.is_some() || self.paused || self.stopping.is_some()
        {
            return;
        }
        self.dirty = false;
        self.covering = self.pending.take();
        let causes = std::mem::take(&mut self.causes);
        let full = std::mem::take(&mut self.full);
        self.step_causes = (causes, full);
        let progress = Progress::new();
        let request = StepRequest {
            mailbox: self.args.mailbox.clone(),
            folder: self.args.folder.clone(),
            full_resync: full,
            causes,
            ctx: StepContext::with_progress(self.args.throttle.clone(), progress.clone()),
        };
        let sync = self.args.shared.ports.sync.clone();
        let step = guard(
            move || sync.sync_folder(request),
            progress,
            self.args.shared.settings.stall_timeout,
        );
        self.board(|f| {
            f.state = FolderState::Syncing;
            f.steps += 1;
        });
        let started = Instant::now();
        let handle = ctx.spawn(
            step.into_actor(self)
                .map(move |outcome, act, ctx| act.step_done(outcome, started, ctx)),
        );
        self.running = Some(handle);
    }

    fn step_done(
        &mut self,
        outcome: Guarded<StepReport>,
        started: Instant,
        ctx: &mut Context<Self>,
    ) {
        self.running = None;
        let shared = self.args.shared.clone();
        let metrics = &shared.metrics;
        metrics
            .step_duration
            .observe(started.elapsed().as_secs_f64());
        let settings = &shared.settings;
        let outcome_label;
        let mut first_finished = true;
        match outcome {
            Guarded::Done(Ok(report)) => {
                outcome_label = "ok";
                self.attempt = 0;
                self.resyncs = 0;
                self.had_success = true;
                if let Some((since, cause)) = self.covering.take() {
                    metrics
                        .lag
                        .with_label_values(&[cause.as_str()])
                        .observe(since.elapsed().as_secs_f64());
                }
                if report.more {
                    self.causes.insert(Cause::More);
                    self.pending.get_or_insert((Instant::now(), Cause::More));
                    self.dirty = true;
                    // A start is finished when nothing more is owed (an initial sync that
                    // runs in several steps keeps its start slot until it is done).
                    first_finished = false;
                }
                if let Some(after) = report.wake_in {
                    if let Some(old) = self.wake.take() {
                        ctx.cancel_future(old);
                    }
                    self.wake = Some(ctx.run_later(after, |act, ctx| {
                        act.wake = None;
                        act.trigger(Cause::Timer, false, ctx);
                    }));
                }
                let oldest = self.oldest_pending();
                self.board(|f| {
                    f.state = FolderState::Idle;
                    f.last_sync = Some(SystemTime::now());
                    f.last_error = None;
                    f.pending_since = oldest;
                    f.held = report.held;
                    f.progress = report.progress;
                });
            }
            Guarded::Done(Err(error)) => {
                self.give_back();
                let message = error.to_string();
                let delay = match error {
                    SyncError::Throttled { back_off } => {
                        outcome_label = "throttled";
                        self.args.throttle.pause(back_off);
                        Some(back_off)
                    }
                    SyncError::Transient(_) => {
                        outcome_label = "retry";
                        self.attempt += 1;
                        Some(settings.step_retry.delay(self.attempt))
                    }
                    SyncError::InvalidState(_) if self.resyncs < settings.max_resyncs => {
                        outcome_label = "resync";
                        self.resyncs += 1;
                        self.full = true;
                        self.dirty = true;
                        None
                    }
                    SyncError::InvalidState(_) => {
                        metrics.steps.with_label_values(&["failed"]).inc();
                        return self.escalate(
                            RestartCause::Error,
                            format!("{message} (again after {} full resyncs)", self.resyncs),
                            ctx,
                        );
                    }
                    SyncError::Denied(_) => {
                        metrics.steps.with_label_values(&["failed"]).inc();
                        return self.escalate(RestartCause::Denied, message, ctx);
                    }
                    SyncError::Failed(_) => {
                        metrics.steps.with_label_values(&["failed"]).inc();
                        return self.escalate(RestartCause::Error, message, ctx);
                    }
                };
                tracing::debug!(mailbox = %self.args.mailbox, folder = %self.args.folder, error = %message, "sync step failed; retrying");
                self.board(|f| {
                    f.state = if delay.is_some() {
                        FolderState::Retrying
                    } else {
                        FolderState::Idle
                    };
                    f.last_error = Some(message);
                });
                if let Some(delay) = delay {
                    self.retry = Some(ctx.run_later(delay, |act, ctx| {
                        act.retry = None;
                        act.start_step(ctx);
                    }));
                }
            }
            Guarded::Panicked(message) => {
                metrics.steps.with_label_values(&["panic"]).inc();
                self.give_back();
                return self.escalate(RestartCause::Panic, message, ctx);
            }
            Guarded::Stalled => {
                metrics.steps.with_label_values(&["stall"]).inc();
                self.give_back();
                let message = format!(
                    "no progress for {}s; step cancelled",
                    settings.stall_timeout.as_secs()
                );
                return self.escalate(RestartCause::Stall, message, ctx);
            }
        }
        metrics.steps.with_label_values(&[outcome_label]).inc();
        if first_finished {
            self.first_step_finished();
        }
        if self.stopping.is_some() {
            self.exited = true;
            ctx.stop();
        } else if self.dirty && self.retry.is_none() {
            self.start_step(ctx);
        } else if self.paused {
            self.board(|f| f.state = FolderState::Paused);
        }
    }

    /// A failed step's triggers are still owed.
    fn give_back(&mut self) {
        let (causes, full) = std::mem::take(&mut self.step_causes);
        for cause in causes.iter() {
            self.causes.insert(cause);
        }
        self.full |= full;
        if let Some(covering) = self.covering.take() {
            self.pending = Some(match self.pending {
                Some(p) if p.0 < covering.0 => p,
                _ => covering,
            });
        }
    }

    fn first_step_finished(&mut self) {
        if !self.first_done {
            self.first_done = true;
            self.args.parent.do_send(FolderReady {
                index: self.args.index,
                incarnation: self.args.incarnation,
            });
        }
    }

    fn escalate(&mut self, cause: RestartCause, error: String, ctx: &mut Context<Self>) {
        tracing::warn!(mailbox = %self.args.mailbox, folder = %self.args.folder, cause = cause.as_str(), %error, "folder failed");
        self.board(|f| {
            f.state = FolderState::Restarting;
            f.last_error = Some(error.clone());
        });
        self.args.parent.do_send(FolderDown {
            index: self.args.index,
            incarnation: self.args.incarnation,
            cause,
            error,
            had_success: self.had_success,
        });
        self.exited = true;
        ctx.stop();
    }
}

/// Between half and one and a half times `every`, spread by the folder's name and the clock.
fn jittered(every: Duration, mailbox: &str, folder: &str) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (mailbox, folder).hash(&mut h);
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        .hash(&mut h);
    let fraction = (h.finish() % 10_000) as f64 / 10_000.0;
    every.mul_f64(0.5 + fraction)
}

impl Actor for FolderActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let incarnation = self.args.incarnation;
        self.board(|f| f.incarnation = incarnation);
        self.trigger(Cause::Start, false, ctx);
        self.schedule_safety(ctx);
        if self.paused {
            self.board(|f| f.state = FolderState::Paused);
        }
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        for waiter in self.stopping.take().unwrap_or_default() {
            let _ = waiter.send(());
        }
    }
}

impl Drop for FolderActor {
    fn drop(&mut self) {
        if !self.exited {
            // Only a panic in the actor's own code drops it without `exited` set.
            self.args.parent.do_send(FolderDown {
                index: self.args.index,
                incarnation: self.args.incarnation,
                cause: RestartCause::Panic,
                error: "folder actor died".to_owned(),
                had_success: self.had_success,
            });
        }
    }
}

impl Handler<Trigger> for FolderActor {
    type Result = ();
    fn handle(&mut self, msg: Trigger, ctx: &mut Context<Self>) {
        self.trigger(msg.cause, msg.full, ctx);
    }
}

impl Handler<SetPaused> for FolderActor {
    type Result = ();
    fn handle(&mut self, SetPaused(paused): SetPaused, ctx: &mut Context<Self>) {
        self.paused = paused;
        if paused {
            if self.running.is_none() {
                self.board(|f| f.state = FolderState::Paused);
            }
        } else {
            self.board(|f| {
                if f.state == FolderState::Paused {
                    f.state = FolderState::Idle;
                }
            });
            if self.pending.is_some() {
                self.start_step(ctx);
            }
        }
    }
}

impl Handler<StopFolder> for FolderActor {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, msg: StopFolder, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(retry) = self.retry.take() {
            ctx.cancel_future(retry);
        }
        if msg.abort {
            if let Some(step) = self.running.take() {
                ctx.cancel_future(step);
            }
        }
        if self.running.is_none() {
            self.exited = true;
            ctx.stop();
            return Box::pin(async {});
        }
        let (tx, rx) = oneshot::channel();
        self.stopping.get_or_insert_with(Vec::new).push(tx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<GetStatus> for FolderActor {
    type Result = MessageResult<GetStatus>;
    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(FolderInfo {
            incarnation: self.args.incarnation,
            running: self.running.is_some(),
            dirty: self.dirty,
            paused: self.paused,
            attempt: self.attempt,
        })
    }
}
