//! Supervisor: starts, watches, restarts and stops the mailboxes; owns the throttles, the
//! stream groups and the CRM feed; takes the admin commands.
//!
//! Mailbox actors are spread over arbiters (threads, one per core by default). A mailbox that
//! goes down is restarted after a capped exponential back-off — slowly when its access was
//! denied — and never disturbs its neighbours. Every incarnation of a mailbox actor has a
//! generation number; messages from an older one are ignored, so a late report can never
//! restart a mailbox twice.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use actix::prelude::*;
use futures_util::future::join_all;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::crm_feed::{CrmFeedActor, StopFeed};
use crate::mailbox::RejoinGroup;
use crate::mailbox::{MailboxActor, MailboxArgs, MailboxTrigger, PauseMailbox, StopMailbox};
use crate::metrics::Metrics;
use crate::ports::{Cause, GroupInfo, MailboxId, MailboxSpec, Ports, ServerId, ServerSpec};
use crate::settings::RuntimeSettings;
use crate::status::{Board, MailboxState, RestartCause};
use crate::stream_group::{GroupDown, LeaveGroup, StopGroup, StreamGroupActor};
use crate::throttle::Throttle;
use crate::Shared;

mod admin;
mod messages;

pub use messages::*;

struct ServerRuntime {
    /// As configured.
    spec: ServerSpec,
    /// Shared by every actor of the server.
    throttle: Throttle,
    /// Stream groups by number.
    groups: BTreeMap<u32, GroupSlot>,
    /// Next group number.
    next_group: u32,
}

struct GroupSlot {
    /// The running group actor.
    addr: Addr<StreamGroupActor>,
    /// Its mailboxes.
    members: BTreeSet<MailboxId>,
    /// Number of the current actor; a death report of an older one is ignored.
    incarnation: u64,
    /// Deaths in a row (reset once an actor lived `healthy_after`).
    deaths: u32,
    /// When the current actor started.
    started: Instant,
    /// The current actor only polls: streaming was given up after repeated deaths, and
    /// comes back after the restart back-off.
    polling_only: bool,
    /// The scheduled return to streaming.
    retry: Option<SpawnHandle>,
}

struct Slot {
    /// As configured.
    spec: MailboxSpec,
    /// Generation of the current (or retired) actor.
    generation: u64,
    /// Index of the arbiter it runs on.
    arbiter: usize,
    /// Its stream group (number within its server).
    group: Option<u32>,
    /// Restarts after errors in a row (reset once it ran `healthy_after`).
    failures: u32,
    /// Denied restarts in a row (reset when it runs).
    denied: u32,
    /// The pending restart.
    restart: Option<SpawnHandle>,
    /// When the current actor became ready.
    ready_at: Option<Instant>,
}

/// The supervisor.
pub struct Supervisor {
    /// Ports, registry, metrics, settings, start slots.
    shared: Arc<Shared>,
    /// Servers by name.
    servers: HashMap<ServerId, ServerRuntime>,
    /// Mailboxes by address.
    slots: HashMap<MailboxId, Slot>,
    /// Arbiters the mailboxes run on (empty: the supervisor's own).
    arbiters: Vec<Arbiter>,
    /// Round-robin position for the next mailbox.
    next_arbiter: usize,
    /// The CRM feed, if the service has one.
    feed: Option<Addr<CrmFeedActor>>,
    /// No restarts, no commands.
    shutting_down: bool,
    /// Instances sharing each server's budget (1 outside a cluster).
    budget_share: usize,
}

fn check_specs(servers: &[ServerSpec], mailboxes: &[MailboxSpec]) -> Result<(), SpecError> {
    let mut names = HashSet::new();
    for server in servers {
        if !names.insert(server.id.clone()) {
            return Err(SpecError::DuplicateServer(server.id.clone()));
        }
    }
    let mut seen = HashSet::new();
    for mailbox in mailboxes {
        if !seen.insert(mailbox.smtp.clone()) {
            return Err(SpecError::DuplicateMailbox(mailbox.smtp.clone()));
        }
        if !names.contains(&mailbox.server) {
            return Err(SpecError::UnknownServer {
                smtp: mailbox.smtp.clone(),
                server: mailbox.server.clone(),
            });
        }
    }
    Ok(())
}

impl Supervisor {
    /// Starts the supervisor and, through it, every mailbox. Must run inside an actix system.
    pub fn launch(
        settings: RuntimeSettings,
        servers: Vec<ServerSpec>,
        mailboxes: Vec<MailboxSpec>,
        ports: Ports,
        metrics: Metrics,
    ) -> Result<SupervisorHandle, SpecError> {
        check_specs(&servers, &mailboxes)?;
        let board = Board::new(metrics.clone());
        let shared = Arc::new(Shared {
            start_slots: Arc::new(Semaphore::new(settings.max_concurrent_starts.max(1))),
            ports,
            board: board.clone(),
            metrics: metrics.clone(),
            settings,
        });
        let servers = servers
            .into_iter()
            .map(|spec| (spec.id.clone(), ServerRuntime::new(spec, &metrics)))
            .collect();
        let mut supervisor = Supervisor {
            shared,
            servers,
            slots: HashMap::new(),
            arbiters: Vec::new(),
            next_arbiter: 0,
            feed: None,
            shutting_down: false,
            budget_share: 1,
        };
        // Registered before anything starts, so the registry (and /readyz) know every mailbox.
        for spec in mailboxes {
            supervisor.add(spec);
        }
        Ok(SupervisorHandle {
            addr: supervisor.start(),
            board,
            metrics,
        })
    }

    /// Registers a mailbox (not started yet).
    fn add(&mut self, spec: MailboxSpec) {
        let arbiters = self.shared.settings.arbiters;
        let arbiter = if arbiters == 0 {
            0
        } else {
            self.next_arbiter % arbiters
        };
        self.next_arbiter += 1;
        self.shared.board.insert(spec.clone());
        let smtp = spec.smtp.clone();
        self.slots.insert(
            smtp,
            Slot {
                spec,
                generation: 0,
                arbiter,
                group: None,
                failures: 0,
                denied: 0,
                restart: None,
                ready_at: None,
            },
        );
    }

    /// Puts the mailbox into a stream group of its server with room left.
    fn assign_group(&mut self, smtp: &MailboxId, supervisor: Addr<Supervisor>) {
        let Some(slot) = self.slots.get_mut(smtp) else {
            return;
        };
        if slot.group.is_some() {
            return;
        }
        let Some(server) = self.servers.get_mut(&slot.spec.server) else {
            return;
        };
        let size = server.spec.stream.group_size.max(1);
        let number = match server.groups.iter().find(|(_, g)| g.members.len() < size) {
            Some((number, _)) => *number,
            None => {
                let number = server.next_group;
                server.next_group += 1;
                let info = GroupInfo {
                    server: server.spec.id.clone(),
                    group: number,
                    anchor: smtp.clone(),
                };
                let addr = StreamGroupActor::new(
                    info,
                    server.throttle.clone(),
                    self.shared.clone(),
                    server.spec.streaming,
                    server.spec.stream,
                    supervisor,
                    0,
                )
                .start();
                server.groups.insert(
                    number,
                    GroupSlot {
                        addr,
                        members: BTreeSet::new(),
                        incarnation: 0,
                        deaths: 0,
                        started: Instant::now(),
                        polling_only: false,
                        retry: None,
                    },
                );
                number
            }
        };
        server
            .groups
            .get_mut(&number)
            .expect("just found or made")
            .members
            .insert(smtp.clone());
        slot.group = Some(number);
    }

    /// Takes the mailbox out of its stream group; a group left empty stops.
    fn leave_group(&mut self, smtp: &MailboxId) {
        let Some(slot) = self.slots.get_mut(smtp) else {
            return;
        };
        let Some(number) = slot.group.take() else {
            return;
        };
        let Some(server) = self.servers.get_mut(&slot.spec.server) else {
            return;
        };
        if let Some(group) = server.groups.get_mut(&number) {
            group.members.remove(smtp);
            group.addr.do_send(LeaveGroup { smtp: smtp.clone() });
            if group.members.is_empty() {
                group.addr.do_send(StopGroup);
                server.groups.remove(&number);
            }
        }
    }

    /// Starts a new actor for stream group `number` of `server` in place of the current one
    /// (dead, or polling only and due to stream again) and has its members join it. Members
    /// that join sync every folder once the new subscription exists, so nothing that happened
    /// while no group watched them is missed.
    fn replace_group(
        &mut self,
        server_id: &ServerId,
        number: u32,
        streaming: bool,
        ctx: &mut Context<Self>,
    ) {
        let supervisor = ctx.address();
        let Some(server) = self.servers.get_mut(server_id) else {
            return;
        };
        let Some(slot) = server.groups.get_mut(&number) else {
            return;
        };
        // The old actor, if it still runs (a polling-only one being replaced), stops quietly.
        slot.addr.do_send(StopGroup);
        slot.incarnation += 1;
        slot.started = Instant::now();
        slot.polling_only = !streaming;
        let Some(anchor) = slot.members.iter().next().cloned() else {
            server.groups.remove(&number);
            return;
        };
        let info = GroupInfo {
            server: server.spec.id.clone(),
            group: number,
            anchor,
        };
        slot.addr = StreamGroupActor::new(
            info,
            server.throttle.clone(),
            self.shared.clone(),
            server.spec.streaming && streaming,
            server.spec.stream,
            supervisor,
            slot.incarnation,
        )
        .start();
        for smtp in &slot.members {
            if let Some(mailbox) = self.shared.board.addr(smtp) {
                mailbox.do_send(RejoinGroup(slot.addr.clone()));
            }
        }
    }

    /// Starts a new incarnation of the mailbox actor.
    fn spawn_mailbox(&mut self, smtp: &MailboxId, ctx: &mut Context<Self>) {
        if self.shutting_down {
            return;
        }
        self.assign_group(smtp, ctx.address());
        let Some(slot) = self.slots.get_mut(smtp) else {
            return;
        };
        let Some(server) = self.servers.get(&slot.spec.server) else {
            return;
        };
        slot.generation += 1;
        slot.restart = None;
        slot.ready_at = None;
        let generation = slot.generation;
        let board = &self.shared.board;
        let paused = board
            .update(smtp, |e| {
                e.generation = generation;
                e.addr = None;
                e.folders.clear();
                e.next_retry = None;
                e.paused
            })
            .unwrap_or(false);
        board.set_state(smtp, MailboxState::Starting);
        let args = MailboxArgs {
            spec: slot.spec.clone(),
            generation,
            supervisor: ctx.address(),
            group: slot
                .group
                .and_then(|g| server.groups.get(&g))
                .map(|g| g.addr.clone()),
            throttle: server.throttle.clone(),
            shared: self.shared.clone(),
            paused,
        };
        let arbiter = match self.arbiters.get(slot.arbiter) {
            Some(arbiter) => arbiter.handle(),
            None => Arbiter::current(),
        };
        let addr = MailboxActor::start_in_arbiter(&arbiter, move |_| MailboxActor::new(args));
        board.update(smtp, |e| {
            if e.generation == generation {
                e.addr = Some(addr);
            }
        });
    }

    /// Retires the current actor (its later reports are ignored) and returns it for stopping.
    fn retire(&mut self, smtp: &MailboxId, ctx: &mut Context<Self>) -> Option<Addr<MailboxActor>> {
        let slot = self.slots.get_mut(smtp)?;
        slot.generation += 1;
        if let Some(restart) = slot.restart.take() {
            ctx.cancel_future(restart);
        }
        let generation = slot.generation;
        self.shared.board.update(smtp, |e| {
            e.generation = generation;
            e.addr.take()
        })?
    }

    /// Stops mailbox actors gracefully, cancelling their steps after the stop timeout.
    fn stop_all(
        &self,
        actors: Vec<Addr<MailboxActor>>,
    ) -> impl std::future::Future<Output = ()> + 'static {
        let timeout = self.shared.settings.stop_timeout;
        async move {
            let graceful = join_all(actors.iter().map(|a| a.send(StopMailbox { abort: false })));
            if tokio::time::timeout(timeout, graceful).await.is_err() {
                tracing::warn!(
                    timeout_s = timeout.as_secs(),
                    "steps still running after the stop timeout; cancelling them"
                );
                join_all(actors.iter().map(|a| a.send(StopMailbox { abort: true }))).await;
            }
        }
    }
}

impl ServerRuntime {
    fn new(spec: ServerSpec, metrics: &Metrics) -> Self {
        let throttle = Throttle::new(spec.id.clone(), spec.throttle, metrics.clone());
        ServerRuntime {
            spec,
            throttle,
            groups: BTreeMap::new(),
            next_group: 0,
        }
    }

    fn stop_groups(&mut self) {
        for group in std::mem::take(&mut self.groups).into_values() {
            group.addr.do_send(StopGroup);
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1024);
        self.arbiters = (0..self.shared.settings.arbiters)
            .map(|_| Arbiter::new())
            .collect();
        let all: Vec<MailboxId> = {
            let mut all: Vec<MailboxId> = self.slots.keys().cloned().collect();
            all.sort();
            all
        };
        for smtp in &all {
            self.spawn_mailbox(smtp, ctx);
        }
        if let Some(crm) = self.shared.ports.crm.clone() {
            self.feed = Some(CrmFeedActor::new(crm, self.shared.clone()).start());
        }
        tracing::info!(
            mailboxes = all.len(),
            arbiters = self.arbiters.len(),
            "supervisor started"
        );
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}

impl Handler<MailboxReady> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: MailboxReady, _: &mut Context<Self>) {
        let Some(slot) = self.slots.get_mut(&msg.smtp) else {
            return;
        };
        if slot.generation != msg.generation {
            return;
        }
        slot.ready_at = Some(Instant::now());
        slot.denied = 0;
        self.shared.board.update(&msg.smtp, |e| e.last_error = None);
    }
}

impl Handler<MailboxDown> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: MailboxDown, ctx: &mut Context<Self>) {
        if self.shutting_down {
            return;
        }
        let settings = &self.shared.settings;
        let Some(slot) = self.slots.get_mut(&msg.smtp) else {
            return;
        };
        if slot.generation != msg.generation {
            return;
        }
        let (delay, state) = if msg.cause == RestartCause::Denied {
            slot.denied += 1;
            (
                settings.denied_retry.delay(slot.denied),
                MailboxState::Failed,
            )
        } else {
            if slot
                .ready_at
                .is_some_and(|t| t.elapsed() >= settings.healthy_after)
            {
                slot.failures = 0;
            }
            slot.failures += 1;
            (settings.restart.delay(slot.failures), MailboxState::Backoff)
        };
        slot.ready_at = None;
        self.shared
            .metrics
            .restarts
            .with_label_values(&["mailbox", msg.cause.as_str()])
            .inc();
        let board = &self.shared.board;
        board.update(&msg.smtp, |e| {
            e.addr = None;
            e.restarts += 1;
            e.last_error = Some(msg.error.clone());
            e.next_retry = Some(SystemTime::now() + delay);
            e.first_step_done = true;
        });
        board.set_state(&msg.smtp, state);
        tracing::warn!(mailbox = %msg.smtp, cause = msg.cause.as_str(), retry_in_s = delay.as_secs(), error = %msg.error, "mailbox down; restart scheduled");
        let smtp = msg.smtp.clone();
        slot.restart = Some(ctx.run_later(delay, move |act, ctx| act.spawn_mailbox(&smtp, ctx)));
    }
}

impl Handler<GroupDown> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: GroupDown, ctx: &mut Context<Self>) {
        if self.shutting_down {
            return;
        }
        let shared = self.shared.clone();
        let settings = &shared.settings;
        let Some(slot) = self
            .servers
            .get_mut(&msg.server)
            .and_then(|s| s.groups.get_mut(&msg.group))
        else {
            return;
        };
        if slot.incarnation != msg.incarnation {
            return;
        }
        if slot.started.elapsed() >= settings.healthy_after {
            slot.deaths = 0;
        }
        slot.deaths += 1;
        let deaths = slot.deaths;
        // A group that keeps dying while it streams is replaced by one that only polls (it
        // makes no port calls, so it does not die of the same cause); streaming is tried
        // again after the restart back-off.
        let give_up = !slot.polling_only && deaths >= settings.stream.failures_before_polling;
        let streaming = !slot.polling_only && !give_up;
        shared
            .metrics
            .restarts
            .with_label_values(&["stream_group", msg.cause.as_str()])
            .inc();
        tracing::warn!(
            server = %msg.server,
            group = msg.group,
            deaths,
            cause = msg.cause.as_str(),
            polling_only = !streaming,
            "stream group died; replaced, its mailboxes rejoin"
        );
        self.replace_group(&msg.server, msg.group, streaming, ctx);
        if !streaming {
            let delay = settings.restart.delay(deaths);
            let (server, number) = (msg.server.clone(), msg.group);
            let handle = ctx.run_later(delay, move |act, ctx| {
                let due = act
                    .servers
                    .get(&server)
                    .and_then(|s| s.groups.get(&number))
                    .is_some_and(|g| g.polling_only);
                if due {
                    tracing::info!(server = %server, group = number, "stream group streams again");
                    act.replace_group(&server, number, true, ctx);
                }
            });
            if let Some(slot) = self
                .servers
                .get_mut(&msg.server)
                .and_then(|s| s.groups.get_mut(&msg.group))
            {
                if let Some(old) = slot.retry.replace(handle) {
                    ctx.cancel_future(old);
                }
            }
        }
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) -> Self::Result {
        self.shutting_down = true;
        if let Some(feed) = self.feed.take() {
            feed.do_send(StopFeed);
        }
        let mut actors = Vec::new();
        let all: Vec<MailboxId> = self.slots.keys().cloned().collect();
        for smtp in &all {
            if let Some(slot) = self.slots.get_mut(smtp) {
                if let Some(restart) = slot.restart.take() {
                    ctx.cancel_future(restart);
                }
            }
            actors.extend(self.shared.board.addr(smtp));
        }
        for server in self.servers.values_mut() {
            server.stop_groups();
        }
        tracing::info!(
            mailboxes = actors.len(),
            "shutting down: letting running steps finish"
        );
        let stop = self.stop_all(actors);
        Box::pin(stop.into_actor(self).map(move |(), act, ctx| {
            for smtp in &all {
                act.shared.board.update(smtp, |e| e.addr = None);
                act.shared.board.set_state(smtp, MailboxState::Stopped);
            }
            tracing::info!("every mailbox stopped");
            ctx.stop();
        }))
    }
}

impl Handler<ShareBudget> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: ShareBudget, _: &mut Context<Self>) {
        self.budget_share = msg.instances.max(1);
        for server in self.servers.values() {
            server.throttle.set_share(self.budget_share);
        }
    }
}

impl Handler<GetStatus> for Supervisor {
    type Result = MessageResult<GetStatus>;
    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        let mut groups: Vec<GroupRef> = self
            .servers
            .values()
            .flat_map(|s| {
                s.groups.iter().map(|(number, g)| GroupRef {
                    server: s.spec.id.clone(),
                    group: *number,
                    members: g.members.iter().cloned().collect(),
                    addr: g.addr.clone(),
                })
            })
            .collect();
        groups.sort_by(|a, b| (&a.server, a.group).cmp(&(&b.server, b.group)));
        MessageResult(SupervisorStatus {
            mailboxes: self.slots.len(),
            arbiters: self.arbiters.len(),
            groups,
            shutting_down: self.shutting_down,
        })
    }
}
