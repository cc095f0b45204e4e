//! MailboxActor: one mailbox and its folder actors.
//!
//! On start it takes a start slot, opens the mailbox through the sync port (credentials,
//! impersonation, folder list), starts one FolderActor per folder and joins its stream
//! group; it gives the slot back once every folder has finished its first step. A failing
//! folder is restarted alone with back-off; a folder or opening that was denied access, or an
//! opening that failed otherwise, takes the mailbox down and the supervisor decides.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use futures_util::future::join_all;
use tokio::sync::OwnedSemaphorePermit;

use crate::folder::{FolderActor, FolderArgs, SetPaused, StopFolder, Trigger};
use crate::ports::{Cause, FolderId, MailboxSpec, SyncError};
use crate::status::{FolderState, FolderStatus, MailboxState, RestartCause};
use crate::stream_group::{JoinGroup, StreamGroupActor};
use crate::supervisor::{MailboxDown, MailboxReady, Supervisor};
use crate::throttle::{Progress, StepContext, Throttle};
use crate::watchdog::{guard, Guarded};
use crate::Shared;

/// Routes a trigger to one folder, or to all (`folder: None`).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct MailboxTrigger {
    /// The folder, or every folder.
    pub folder: Option<FolderId>,
    /// Why.
    pub cause: Cause,
    /// Forget the sync state and reconcile everything.
    pub full: bool,
}

/// The mailbox's stream group was replaced (its actor died): join the new one and, once
/// subscribed there, sync every folder (events since the old group died were heard by no
/// one).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct RejoinGroup(pub Addr<StreamGroupActor>);

/// Pauses (true) or resumes (false) every folder.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct PauseMailbox(pub bool);

/// Stops the mailbox: every folder finishes (or, with `abort`, cancels) its step.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct StopMailbox {
    /// Cancel running steps instead of waiting.
    pub abort: bool,
}

/// Asks for a [`MailboxInfo`].
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "MailboxInfo")]
pub struct GetStatus;

/// A mailbox actor's own view of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxInfo {
    /// Incarnation of this mailbox actor.
    pub generation: u64,
    /// Folders with their current actor's incarnation (None while it waits to restart).
    pub folders: Vec<(FolderId, Option<u64>)>,
    /// Paused.
    pub paused: bool,
    /// Every folder finished its first step.
    pub ready: bool,
}

/// A folder finished its first step.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct FolderReady {
    pub index: usize,
    pub incarnation: u64,
}

/// A folder actor went down.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct FolderDown {
    pub index: usize,
    pub incarnation: u64,
    pub cause: RestartCause,
    pub error: String,
    pub had_success: bool,
}

/// Everything a mailbox actor is created with.
pub(crate) struct MailboxArgs {
    pub spec: MailboxSpec,
    pub generation: u64,
    pub supervisor: Addr<Supervisor>,
    pub group: Option<Addr<StreamGroupActor>>,
    pub throttle: Throttle,
    pub shared: Arc<Shared>,
    pub paused: bool,
}

/// One folder's place in the mailbox.
struct FolderSlot {
    /// The folder.
    id: FolderId,
    /// The running actor (None while it waits to restart).
    addr: Option<Addr<FolderActor>>,
    /// Number of the current (or next) actor.
    incarnation: u64,
    /// Restarts in a row without a successful step in between.
    failures: u32,
    /// The pending restart.
    restart: Option<SpawnHandle>,
    /// Finished its first step (for readiness and the start slot).
    ready: bool,
}

/// One mailbox.
pub struct MailboxActor {
    /// See [`MailboxArgs`].
    args: MailboxArgs,
    /// The folders, in the order the sync port listed them.
    folders: Vec<FolderSlot>,
    /// Folder id to index in `folders`.
    index: HashMap<FolderId, usize>,
    /// The start slot, held until every folder finished its first step.
    permit: Option<OwnedSemaphorePermit>,
    /// Paused by an operator.
    paused: bool,
    /// Every folder finished its first step.
    ready: bool,
    /// Stopping: no folder restarts any more.
    stopping: bool,
    /// Left on purpose; dropped without this means it died.
    exited: bool,
}

impl MailboxActor {
    pub(crate) fn new(args: MailboxArgs) -> Self {
        let paused = args.paused;
        MailboxActor {
            args,
            folders: Vec::new(),
            index: HashMap::new(),
            permit: None,
            paused,
            ready: false,
            stopping: false,
            exited: false,
        }
    }

    fn smtp(&self) -> &str {
        &self.args.spec.smtp
    }

    fn opened(
        &mut self,
        permit: OwnedSemaphorePermit,
        result: Guarded<Vec<FolderId>>,
        ctx: &mut Context<Self>,
    ) {
        if self.stopping {
            return;
        }
        let folders = match result {
            Guarded::Done(Ok(folders)) => folders,
            Guarded::Done(Err(error)) => {
                let cause = match &error {
                    SyncError::Denied(_) => RestartCause::Denied,
                    SyncError::Throttled { back_off } => {
                        self.args.throttle.pause(*back_off);
                        RestartCause::Error
                    }
                    _ => RestartCause::Error,
                };
                return self.down(cause, format!("opening the mailbox: {error}"), ctx);
            }
            Guarded::Panicked(message) => {
                return self.down(
                    RestartCause::Panic,
                    format!("opening the mailbox: {message}"),
                    ctx,
                )
            }
            Guarded::Stalled => {
                return self.down(
                    RestartCause::Stall,
                    "opening the mailbox made no progress; cancelled".to_owned(),
                    ctx,
                )
            }
        };
        self.permit = Some(permit);
        let generation = self.args.generation;
        let statuses: Vec<FolderStatus> = folders
            .iter()
            .map(|f| FolderStatus::new(f.clone()))
            .collect();
        self.args.shared.board.update(self.smtp(), |e| {
            if e.generation == generation {
                e.folders = statuses;
            }
        });
        for (index, id) in folders.iter().enumerate() {
            self.index.insert(id.clone(), index);
            self.folders.push(FolderSlot {
                id: id.clone(),
                addr: None,
                incarnation: 0,
                failures: 0,
                restart: None,
                ready: false,
            });
        }
        // Subscribe before the first steps: Exchange queues events on a subscription until a
        // connection reads them, so nothing that happens after the first steps can be missed,
        // and no extra resync is needed once the group's connection covers the mailbox.
        let join = self.args.group.as_ref().map(|group| {
            group.send(JoinGroup {
                smtp: self.args.spec.smtp.clone(),
                generation,
                addr: ctx.address(),
                folders,
            })
        });
        let joined = async move {
            if let Some(join) = join {
                // A group that went away (reload) leaves the mailbox polled by its next group.
                let _ = join.await;
            }
        };
        ctx.spawn(joined.into_actor(self).map(|(), act, ctx| {
            if act.stopping {
                return;
            }
            for index in 0..act.folders.len() {
                act.start_folder(index, ctx);
            }
            act.check_ready();
        }));
    }

    fn start_folder(&mut self, index: usize, ctx: &mut Context<Self>) {
        let slot = &mut self.folders[index];
        slot.incarnation += 1;
        slot.restart = None;
        let args = FolderArgs {
            mailbox: self.args.spec.smtp.clone(),
            folder: slot.id.clone(),
            index,
            generation: self.args.generation,
            incarnation: slot.incarnation,
            parent: ctx.address(),
            throttle: self.args.throttle.clone(),
            shared: self.args.shared.clone(),
            paused: self.paused,
        };
        slot.addr = Some(FolderActor::new(args).start());
    }

    fn check_ready(&mut self) {
        if self.ready || !self.folders.iter().all(|f| f.ready) {
            return;
        }
        self.ready = true;
        self.permit = None;
        let state = if self.paused {
            MailboxState::Paused
        } else {
            MailboxState::Running
        };
        let board = &self.args.shared.board;
        let generation = self.args.generation;
        let current = board.update(self.smtp(), |e| {
            if e.generation == generation {
                e.first_step_done = true;
                true
            } else {
                false
            }
        });
        if current == Some(true) {
            board.set_state(self.smtp(), state);
        }
        self.args.supervisor.do_send(MailboxReady {
            smtp: self.args.spec.smtp.clone(),
            generation,
        });
    }

    /// Takes the mailbox down and tells the supervisor why.
    fn down(&mut self, cause: RestartCause, error: String, ctx: &mut Context<Self>) {
        tracing::warn!(mailbox = self.smtp(), cause = cause.as_str(), %error, "mailbox down");
        self.stopping = true;
        for slot in &mut self.folders {
            if let Some(addr) = slot.addr.take() {
                addr.do_send(StopFolder { abort: true });
            }
        }
        self.args.supervisor.do_send(MailboxDown {
            smtp: self.args.spec.smtp.clone(),
            generation: self.args.generation,
            cause,
            error,
        });
        self.exited = true;
        ctx.stop();
    }
}

impl Actor for MailboxActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let slots = self.args.shared.start_slots.clone();
        let sync = self.args.shared.ports.sync.clone();
        let spec = self.args.spec.clone();
        let throttle = self.args.throttle.clone();
        let stall = self.args.shared.settings.stall_timeout;
        let open = async move {
            let permit = slots
                .acquire_owned()
                .await
                .expect("the start semaphore is never closed");
            let progress = Progress::new();
            let ctx = StepContext::with_progress(throttle, progress.clone());
            let result = guard(move || sync.open_mailbox(&spec, ctx), progress, stall).await;
            (permit, result)
        };
        ctx.spawn(
            open.into_actor(self)
                .map(|(permit, result), act, ctx| act.opened(permit, result, ctx)),
        );
    }
}

impl Drop for MailboxActor {
    fn drop(&mut self) {
        if !self.exited {
            self.args.supervisor.do_send(MailboxDown {
                smtp: self.args.spec.smtp.clone(),
                generation: self.args.generation,
                cause: RestartCause::Panic,
                error: "mailbox actor died".to_owned(),
            });
        }
    }
}

impl Handler<MailboxTrigger> for MailboxActor {
    type Result = ();
    fn handle(&mut self, msg: MailboxTrigger, _: &mut Context<Self>) {
        let trigger = Trigger {
            cause: msg.cause,
            full: msg.full,
        };
        match msg.folder {
            Some(folder) => match self
                .index
                .get(&folder)
                .and_then(|i| self.folders[*i].addr.as_ref())
            {
                Some(addr) => addr.do_send(trigger),
                None => {
                    tracing::debug!(mailbox = self.smtp(), %folder, "trigger for a folder that is not running")
                }
            },
            None => {
                for addr in self.folders.iter().filter_map(|f| f.addr.as_ref()) {
                    addr.do_send(trigger);
                }
            }
        }
    }
}

impl Handler<RejoinGroup> for MailboxActor {
    type Result = ();
    fn handle(&mut self, RejoinGroup(group): RejoinGroup, ctx: &mut Context<Self>) {
        self.args.group = Some(group.clone());
        if self.stopping || self.folders.is_empty() {
            // Still opening: it joins the new group when it has its folders.
            return;
        }
        let join = group.send(JoinGroup {
            smtp: self.args.spec.smtp.clone(),
            generation: self.args.generation,
            addr: ctx.address(),
            folders: self.folders.iter().map(|f| f.id.clone()).collect(),
        });
        ctx.spawn(
            async move { join.await.is_ok() }
                .into_actor(self)
                .map(|_, act, ctx| {
                    if act.stopping {
                        return;
                    }
                    // Joined (or the group went away again: its successor rejoins us); either way
                    // every folder looks once, which closes the gap.
                    let all = MailboxTrigger {
                        folder: None,
                        cause: Cause::Notification,
                        full: false,
                    };
                    <Self as Handler<MailboxTrigger>>::handle(act, all, ctx);
                }),
        );
    }
}

impl Handler<PauseMailbox> for MailboxActor {
    type Result = ();
    fn handle(&mut self, PauseMailbox(paused): PauseMailbox, _: &mut Context<Self>) {
        self.paused = paused;
        for addr in self.folders.iter().filter_map(|f| f.addr.as_ref()) {
            addr.do_send(SetPaused(paused));
        }
        if self.ready {
            let state = if paused {
                MailboxState::Paused
            } else {
                MailboxState::Running
            };
            self.args.shared.board.set_state(self.smtp(), state);
        }
    }
}

impl Handler<FolderReady> for MailboxActor {
    type Result = ();
    fn handle(&mut self, msg: FolderReady, _: &mut Context<Self>) {
        if let Some(slot) = self.folders.get_mut(msg.index) {
            if slot.incarnation == msg.incarnation {
                slot.ready = true;
                self.check_ready();
            }
        }
    }
}

impl Handler<FolderDown> for MailboxActor {
    type Result = ();
    fn handle(&mut self, msg: FolderDown, ctx: &mut Context<Self>) {
        let Some(slot) = self.folders.get_mut(msg.index) else {
            return;
        };
        if slot.incarnation != msg.incarnation || self.stopping {
            return;
        }
        slot.addr = None;
        slot.ready = true;
        if msg.cause == RestartCause::Denied {
            return self.down(RestartCause::Denied, msg.error, ctx);
        }
        slot.failures = if msg.had_success {
            1
        } else {
            slot.failures + 1
        };
        let delay = self.args.shared.settings.restart.delay(slot.failures);
        let shared = self.args.shared.clone();
        shared
            .metrics
            .restarts
            .with_label_values(&["folder", msg.cause.as_str()])
            .inc();
        shared
            .board
            .folder(&self.args.spec.smtp, self.args.generation, msg.index, |f| {
                f.restarts += 1;
                f.state = FolderState::Restarting;
                f.last_error = Some(msg.error.clone());
            });
        let index = msg.index;
        let handle = ctx.run_later(delay, move |act, ctx| {
            if !act.stopping {
                act.start_folder(index, ctx);
            }
        });
        self.folders[index].restart = Some(handle);
        self.check_ready();
    }
}

impl Handler<StopMailbox> for MailboxActor {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, msg: StopMailbox, ctx: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        let mut stops = Vec::new();
        for slot in &mut self.folders {
            if let Some(handle) = slot.restart.take() {
                ctx.cancel_future(handle);
            }
            // Kept (not taken) so that an abort after a graceful stop still reaches them.
            if let Some(addr) = &slot.addr {
                stops.push(addr.send(StopFolder { abort: msg.abort }));
            }
        }
        Box::pin(join_all(stops).into_actor(self).map(|_, act, ctx| {
            act.exited = true;
            ctx.stop();
        }))
    }
}

impl Handler<GetStatus> for MailboxActor {
    type Result = MessageResult<GetStatus>;
    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(MailboxInfo {
            generation: self.args.generation,
            folders: self
                .folders
                .iter()
                .map(|f| (f.id.clone(), f.addr.as_ref().map(|_| f.incarnation)))
                .collect(),
            paused: self.paused,
            ready: self.ready,
        })
    }
}
