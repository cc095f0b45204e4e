//! StreamGroupActor: the streaming notifications of up to `group_size` mailboxes of one
//! server over one GetStreamingEvents connection.
//!
//! It subscribes each member, holds one connection for the group, opens the next connection
//! `renew_before` ahead of the agreed timeout (so renewal leaves no gap), and resubscribes
//! members whose subscriptions were lost. A notification only says "look now": the folder's
//! step reads what changed. So after any gap — a lost connection, a silent one, a lost
//! subscription, a member that joined — every folder of the affected members syncs once the
//! next connection is up. Members not covered by a live connection (streaming off, failing,
//! or not yet subscribed) are polled every `polling_interval` (group size, connection
//! lifetime and polling interval are the server's own, [`ServerStreaming`]); after
//! `failures_before_polling` failed attempts in a row the group reports itself as polling and
//! keeps retrying streaming with back-off, returning to it when a connection works again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use actix::prelude::*;
use futures_util::future::join_all;
use futures_util::stream::{self, StreamExt};
use tokio::sync::oneshot;

use crate::mailbox::{MailboxActor, MailboxTrigger};
use crate::ports::{
    Cause, FolderId, GroupInfo, MailboxId, ServerStreaming, StreamEvent, SubscriptionId, SyncError,
};
use crate::status::RestartCause;
use crate::supervisor::Supervisor;
use crate::throttle::Throttle;
use crate::Shared;

/// A mailbox joins (or, with a new generation, rejoins) the group; answered once its
/// subscription exists (or could not be made: it is polled then).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct JoinGroup {
    pub smtp: MailboxId,
    pub generation: u64,
    pub addr: Addr<MailboxActor>,
    pub folders: Vec<FolderId>,
}

/// A mailbox leaves the group (removed from the configuration).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct LeaveGroup {
    pub smtp: MailboxId,
}

/// Stops the group and closes its connection.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopGroup;

/// Told to the supervisor when a group actor ended without being asked to (a panic in one
/// of its handlers or in a stream it reads, or a stop of its own): its members would hear no
/// notification and get no poll, so the supervisor starts a replacement.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct GroupDown {
    pub server: crate::ports::ServerId,
    pub group: u32,
    pub incarnation: u64,
    pub cause: RestartCause,
}

/// Asks for a [`GroupStatus`].
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "GroupStatus")]
pub struct GetStatus;

/// A stream group's view of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    /// Member mailboxes.
    pub members: usize,
    /// Members with a subscription.
    pub subscribed: usize,
    /// Members whose subscription is on the live connection.
    pub covered: usize,
    /// A connection is open.
    pub connected: bool,
    /// `streaming` or `polling`.
    pub mode: &'static str,
    /// Connections opened so far.
    pub connects: u64,
    /// Failed connection attempts in a row.
    pub failures: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Streaming,
    Polling,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Streaming => "streaming",
            Mode::Polling => "polling",
        }
    }
}

struct Member {
    /// Incarnation of the mailbox actor that joined.
    generation: u64,
    /// Where its triggers go.
    addr: Addr<MailboxActor>,
    /// What it subscribes to.
    folders: Vec<FolderId>,
    /// Its subscription, once subscribed.
    sub: Option<SubscriptionId>,
    /// Its subscription is on the live connection: notifications reach it.
    covered: bool,
    /// It may have missed changes (a gap): sync all its folders once it is covered again.
    resync_on_cover: bool,
    /// Mailbox actors waiting for the subscription before their first steps.
    waiters: Vec<oneshot::Sender<()>>,
    /// A subscribe call for it is in flight.
    subscribing: bool,
}

struct Conn {
    /// Tells this connection's events from an older one's.
    id: u64,
    /// The stream being read.
    handle: SpawnHandle,
    /// The timer that opens the next connection ahead of the timeout.
    renew: SpawnHandle,
    /// Fires when the connection has been silent too long.
    heartbeat: Option<SpawnHandle>,
}

/// The streaming notifications of one group.
pub struct StreamGroupActor {
    /// Server, group number, anchor mailbox.
    info: GroupInfo,
    /// The server's throttle (subscribes pass it; open connections do not count).
    throttle: Throttle,
    /// Ports, settings, metrics.
    shared: Arc<Shared>,
    /// Streaming configured for the server (and not given up after repeated deaths of this
    /// group); otherwise the group only polls.
    enabled: bool,
    /// Told when this actor ends unasked ([`GroupDown`]).
    supervisor: Addr<Supervisor>,
    /// Which actor of this group number it is, so a late report of an old one is ignored.
    incarnation: u64,
    /// Stopped on purpose (StopGroup): its end is no death.
    exited: bool,
    /// `stopped()` ran and gave back its gauges; else `Drop` does.
    released: bool,
    /// The server's connection lifetime and polling interval.
    stream: ServerStreaming,
    /// Members by address.
    members: BTreeMap<MailboxId, Member>,
    /// Subscription to member.
    by_sub: HashMap<SubscriptionId, MailboxId>,
    /// The live connection.
    live: Option<Conn>,
    /// A subscribe-and-connect round is in flight.
    opening: bool,
    /// Another round was asked for while one was in flight, and why.
    again: Option<&'static str>,
    /// A scheduled round.
    due: Option<SpawnHandle>,
    /// Failed attempts in a row.
    failures: u32,
    /// What the group reports.
    mode: Mode,
    /// Connections opened so far (ids too).
    connects: u64,
    /// When the live connection was opened.
    opened_at: Option<tokio::time::Instant>,
    /// Replaced connections still read for a moment (stream, timer ending it): events the
    /// server sent on one before the new connection took its subscriptions over are not lost.
    draining: HashMap<u64, (SpawnHandle, SpawnHandle)>,
    /// The live connection ended because the connection being opened took its
    /// subscriptions over (Exchange ends the old one as the new request arrives, before the
    /// new response reaches us). If that opening fails, its members are uncovered.
    handover: bool,
}

/// How long a replaced connection is still read (unless it ends first, as Exchange ends a
/// connection whose subscriptions a newer one took over).
const DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

impl StreamGroupActor {
    pub(crate) fn new(
        info: GroupInfo,
        throttle: Throttle,
        shared: Arc<Shared>,
        enabled: bool,
        stream: ServerStreaming,
        supervisor: Addr<Supervisor>,
        incarnation: u64,
    ) -> Self {
        StreamGroupActor {
            info,
            throttle,
            shared,
            enabled,
            stream,
            supervisor,
            incarnation,
            exited: false,
            released: false,
            members: BTreeMap::new(),
            by_sub: HashMap::new(),
            live: None,
            opening: false,
            again: None,
            due: None,
            failures: 0,
            mode: if enabled {
                Mode::Streaming
            } else {
                Mode::Polling
            },
            connects: 0,
            opened_at: None,
            draining: HashMap::new(),
            handover: false,
        }
    }

    /// How long new members wait for the connection that carries them: `join_delay`, and
    /// while a connection is live, at least until it is `min_reopen` old.
    fn join_wait(&self) -> std::time::Duration {
        let settings = &self.shared.settings.stream;
        let paced = match (&self.live, self.opened_at) {
            (Some(_), Some(at)) => {
                (at + settings.min_reopen).saturating_duration_since(tokio::time::Instant::now())
            }
            _ => std::time::Duration::ZERO,
        };
        settings.join_delay.max(paced)
    }

    fn server(&self) -> &str {
        &self.info.server
    }

    fn set_mode(&mut self, mode: Mode) {
        if self.mode != mode {
            let groups = &self.shared.metrics.stream_groups;
            groups
                .with_label_values(&[self.server(), self.mode.as_str()])
                .dec();
            groups
                .with_label_values(&[self.server(), mode.as_str()])
                .inc();
            tracing::info!(
                server = self.server(),
                group = self.info.group,
                mode = mode.as_str(),
                "stream group changed mode"
            );
            self.mode = mode;
        }
    }

    fn schedule(
        &mut self,
        delay: std::time::Duration,
        reason: &'static str,
        ctx: &mut Context<Self>,
    ) {
        if !self.enabled || self.due.is_some() {
            return;
        }
        self.due = Some(ctx.run_later(delay, move |act, ctx| {
            act.due = None;
            act.round(reason, ctx);
        }));
    }

    /// Subscribes members that need it, then opens a connection for every subscription.
    fn round(&mut self, reason: &'static str, ctx: &mut Context<Self>) {
        if !self.enabled || self.members.is_empty() {
            return;
        }
        if self.opening {
            self.again.get_or_insert(reason);
            return;
        }
        self.opening = true;
        let todo: Vec<(MailboxId, Vec<FolderId>)> = self
            .members
            .iter_mut()
            .filter(|(_, m)| m.sub.is_none() && !m.subscribing)
            .map(|(smtp, m)| {
                m.subscribing = true;
                (smtp.clone(), m.folders.clone())
            })
            .collect();
        let port = self.shared.ports.stream.clone();
        let info = self.info.clone();
        let throttle = self.throttle.clone();
        // In parallel: the throttle's concurrency cap is what limits them.
        let subscribe = join_all(todo.into_iter().map(move |(smtp, folders)| {
            let call = port.subscribe(&info, &smtp, &folders, throttle.clone());
            async move { (smtp, call.await) }
        }));
        let timeout = self.stream.connection_timeout;
        ctx.spawn(subscribe.into_actor(self).then(move |results, act, _ctx| {
            for (smtp, result) in results {
                act.subscribed(&smtp, result);
            }
            let subs: Vec<SubscriptionId> =
                act.members.values().filter_map(|m| m.sub.clone()).collect();
            let opening = if subs.is_empty() {
                None
            } else {
                Some(
                    act.shared
                        .ports
                        .stream
                        .stream(&act.info, subs.clone(), timeout),
                )
            };
            async move {
                match opening {
                    Some(fut) => (subs, Some(fut.await)),
                    None => (subs, None),
                }
            }
            .into_actor(act)
            .map(move |(subs, result), act, ctx| act.opened(subs, result, reason, ctx))
        }));
    }

    /// Records a subscribe call's result and lets the waiting mailbox start its folders.
    fn subscribed(&mut self, smtp: &MailboxId, result: Result<SubscriptionId, SyncError>) {
        let Some(member) = self.members.get_mut(smtp) else {
            return;
        };
        member.subscribing = false;
        for waiter in member.waiters.drain(..) {
            let _ = waiter.send(());
        }
        match result {
            Ok(sub) => {
                self.by_sub.insert(sub.clone(), smtp.clone());
                member.sub = Some(sub);
            }
            Err(error) => {
                // Polled meanwhile; a poll can come late, so resync once covered.
                member.resync_on_cover = true;
                if let SyncError::Throttled { back_off } = error {
                    self.throttle.pause(back_off);
                }
                tracing::warn!(server = %self.info.server, mailbox = %smtp, %error, "subscribing failed; the mailbox is polled until it works");
            }
        }
    }

    fn opened(
        &mut self,
        subs: Vec<SubscriptionId>,
        result: Option<Result<futures_util::stream::BoxStream<'static, StreamEvent>, SyncError>>,
        reason: &'static str,
        ctx: &mut Context<Self>,
    ) {
        self.opening = false;
        if std::mem::take(&mut self.handover) && !matches!(result, Some(Ok(_))) {
            // The successor did not open: what the closed connection covered is a gap.
            for member in self.members.values_mut() {
                member.covered = false;
                member.resync_on_cover = true;
            }
        }
        match result {
            Some(Ok(events)) => {
                self.failures = 0;
                self.opened_at = Some(tokio::time::Instant::now());
                self.set_mode(Mode::Streaming);
                let id = self.connects;
                self.connects += 1;
                let metrics = &self.shared.metrics;
                if id > 0 {
                    metrics
                        .stream_reconnects
                        .with_label_values(&[self.server(), reason])
                        .inc();
                }
                let events = events
                    .map(move |e| (id, Some(e)))
                    .chain(stream::once(async move { (id, None) }));
                let handle = ctx.add_stream(events);
                let renew_in = self
                    .stream
                    .connection_timeout
                    .saturating_sub(self.shared.settings.stream.renew_before);
                let renew = ctx.run_later(renew_in, |act, ctx| act.round("renewal", ctx));
                match self.live.replace(Conn {
                    id,
                    handle,
                    renew,
                    heartbeat: None,
                }) {
                    Some(old) => self.drain(old, ctx),
                    None => metrics
                        .stream_connections
                        .with_label_values(&[self.server()])
                        .inc(),
                }
                self.arm_heartbeat(ctx);
                let on_connection: HashSet<&SubscriptionId> = subs.iter().collect();
                for member in self.members.values_mut() {
                    let covered = member
                        .sub
                        .as_ref()
                        .is_some_and(|s| on_connection.contains(s));
                    if covered && member.resync_on_cover {
                        member.addr.do_send(MailboxTrigger {
                            folder: None,
                            cause: Cause::Notification,
                            full: false,
                        });
                        member.resync_on_cover = false;
                    }
                    member.covered = covered;
                }
            }
            Some(Err(error)) => {
                if let SyncError::Throttled { back_off } = error {
                    self.throttle.pause(back_off);
                }
                self.failed(&error.to_string(), ctx);
            }
            None => {
                if self.members.values().any(|m| m.sub.is_none()) {
                    self.failed("no member could subscribe", ctx);
                }
            }
        }
        if let Some(reason) = self.again.take() {
            self.round(reason, ctx);
        }
    }

    fn failed(&mut self, error: &str, ctx: &mut Context<Self>) {
        self.failures += 1;
        tracing::warn!(server = self.server(), group = self.info.group, failures = self.failures, %error, "streaming failed");
        if self.failures >= self.shared.settings.stream.failures_before_polling {
            self.set_mode(Mode::Polling);
        }
        let delay = self.shared.settings.stream.retry.delay(self.failures);
        self.schedule(delay, "failed", ctx);
    }

    /// Keeps reading a replaced connection for [`DRAIN`] (its timers stop: it is not the
    /// live one any more).
    fn drain(&mut self, conn: Conn, ctx: &mut Context<Self>) {
        ctx.cancel_future(conn.renew);
        if let Some(heartbeat) = conn.heartbeat {
            ctx.cancel_future(heartbeat);
        }
        let id = conn.id;
        let timer = ctx.run_later(DRAIN, move |act, ctx| act.end_drain(id, ctx));
        self.draining.insert(id, (conn.handle, timer));
    }

    fn end_drain(&mut self, id: u64, ctx: &mut Context<Self>) {
        if let Some((stream, timer)) = self.draining.remove(&id) {
            ctx.cancel_future(stream);
            ctx.cancel_future(timer);
        }
    }

    /// A notification: the member's folder (or every folder) syncs.
    fn notified(&self, subscription: &SubscriptionId, folder: Option<FolderId>) {
        self.shared
            .metrics
            .notifications
            .with_label_values(&[self.server()])
            .inc();
        if let Some(member) = self
            .by_sub
            .get(subscription)
            .and_then(|smtp| self.members.get(smtp))
        {
            member.addr.do_send(MailboxTrigger {
                folder,
                cause: Cause::Notification,
                full: false,
            });
        }
    }

    fn cancel(&mut self, conn: Conn, ctx: &mut Context<Self>) {
        ctx.cancel_future(conn.handle);
        ctx.cancel_future(conn.renew);
        if let Some(heartbeat) = conn.heartbeat {
            ctx.cancel_future(heartbeat);
        }
    }

    fn arm_heartbeat(&mut self, ctx: &mut Context<Self>) {
        let Some(live) = &mut self.live else { return };
        if let Some(old) = live.heartbeat.take() {
            ctx.cancel_future(old);
        }
        let id = live.id;
        let timeout = self.shared.settings.stream.heartbeat_timeout;
        let handle = ctx.run_later(timeout, move |act, ctx| {
            if act.live.as_ref().is_some_and(|c| c.id == id) {
                act.live.as_mut().expect("checked").heartbeat = None;
                act.lost(true, "no heartbeat", ctx);
            }
        });
        if let Some(live) = &mut self.live {
            live.heartbeat = Some(handle);
        }
    }

    /// The live connection ended: every member is uncovered until the next one is up.
    fn lost(&mut self, failure: bool, why: &str, ctx: &mut Context<Self>) {
        self.drop_live(ctx);
        for member in self.members.values_mut() {
            member.covered = false;
            member.resync_on_cover = true;
        }
        if failure {
            self.failed(why, ctx);
        } else {
            tracing::info!(
                server = self.server(),
                group = self.info.group,
                why,
                "stream ended; reconnecting"
            );
            self.round("lost", ctx);
        }
    }

    /// Stops reading the live connection.
    fn drop_live(&mut self, ctx: &mut Context<Self>) {
        if let Some(conn) = self.live.take() {
            self.cancel(conn, ctx);
            self.shared
                .metrics
                .stream_connections
                .with_label_values(&[self.server()])
                .dec();
        }
    }

    /// The live connection was closed while its successor is being opened: no gap, as long
    /// as the successor opens (see `handover`).
    fn handed_over(&mut self, ctx: &mut Context<Self>) {
        self.drop_live(ctx);
        self.handover = true;
        tracing::debug!(
            server = self.server(),
            group = self.info.group,
            "connection handed over to its successor"
        );
    }

    fn poll(&mut self) {
        for member in self.members.values().filter(|m| !m.covered) {
            member.addr.do_send(MailboxTrigger {
                folder: None,
                cause: Cause::Timer,
                full: false,
            });
        }
    }
}

impl Actor for StreamGroupActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.shared
            .metrics
            .stream_groups
            .with_label_values(&[self.server(), self.mode.as_str()])
            .inc();
        ctx.run_interval(self.stream.polling_interval, |act, _| act.poll());
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.release();
        // Nothing but StopGroup stops a group on purpose (the supervisor keeps its address),
        // so an end without it is its future being torn down after a panic: actix polls a
        // dropped actor's context once more, which runs this before `Drop`.
        if !self.exited {
            self.exited = true;
            self.report_down(RestartCause::Panic);
        }
    }
}

impl StreamGroupActor {
    /// Gives back what the group counts in the gauges (once).
    fn release(&mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        let metrics = &self.shared.metrics;
        metrics
            .stream_groups
            .with_label_values(&[self.server(), self.mode.as_str()])
            .dec();
        if self.live.take().is_some() {
            metrics
                .stream_connections
                .with_label_values(&[self.server()])
                .dec();
        }
    }

    fn report_down(&self, cause: RestartCause) {
        tracing::error!(
            server = self.server(),
            group = self.info.group,
            cause = cause.as_str(),
            "stream group actor ended unasked; the supervisor replaces it"
        );
        self.supervisor.do_send(GroupDown {
            server: self.info.server.clone(),
            group: self.info.group,
            incarnation: self.incarnation,
            cause,
        });
    }
}

/// A group actor dropped without `stopped()` having run died in a panic (its future was
/// dropped by the runtime); its members must not be left silent.
impl Drop for StreamGroupActor {
    fn drop(&mut self) {
        self.release();
        if !self.exited {
            self.exited = true;
            self.report_down(RestartCause::Panic);
        }
    }
}

impl StreamHandler<(u64, Option<StreamEvent>)> for StreamGroupActor {
    fn handle(&mut self, (id, event): (u64, Option<StreamEvent>), ctx: &mut Context<Self>) {
        if self.live.as_ref().is_none_or(|c| c.id != id) {
            // A replaced connection: its notifications still count; its end is expected.
            if self.draining.contains_key(&id) {
                match event {
                    Some(StreamEvent::Changed {
                        subscription,
                        folder,
                    }) => self.notified(&subscription, folder),
                    Some(StreamEvent::Heartbeat | StreamEvent::Lost(_)) => {}
                    Some(StreamEvent::Closed | StreamEvent::Failed(_)) | None => {
                        self.end_drain(id, ctx)
                    }
                }
            }
            return;
        }
        match event {
            Some(StreamEvent::Changed {
                subscription,
                folder,
            }) => {
                self.arm_heartbeat(ctx);
                self.notified(&subscription, folder);
            }
            Some(StreamEvent::Heartbeat) => self.arm_heartbeat(ctx),
            Some(StreamEvent::Lost(subs)) => {
                self.arm_heartbeat(ctx);
                for sub in subs {
                    if let Some(smtp) = self.by_sub.remove(&sub) {
                        if let Some(member) = self.members.get_mut(&smtp) {
                            member.sub = None;
                            member.covered = false;
                            member.resync_on_cover = true;
                        }
                    }
                }
                self.round("resubscribe", ctx);
            }
            Some(StreamEvent::Closed) if self.opening => self.handed_over(ctx),
            Some(StreamEvent::Closed) => self.lost(false, "closed by the server", ctx),
            Some(StreamEvent::Failed(error)) => self.lost(true, &error.to_string(), ctx),
            None => self.lost(true, "connection dropped", ctx),
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        // Each connection's end arrives as an item (`None`); the actor outlives its streams.
    }
}

impl Handler<JoinGroup> for StreamGroupActor {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, msg: JoinGroup, ctx: &mut Context<Self>) -> Self::Result {
        let (sub, covered) = match self.members.get(&msg.smtp) {
            Some(old) if old.generation == msg.generation => return Box::pin(async {}),
            Some(old) if old.folders == msg.folders => (old.sub.clone(), old.covered),
            Some(old) => {
                if let Some(sub) = &old.sub {
                    self.by_sub.remove(sub);
                }
                (None, false)
            }
            None => (None, false),
        };
        if self.info.anchor > msg.smtp {
            self.info.anchor = msg.smtp.clone();
        }
        let needs_subscription = sub.is_none() && self.enabled;
        let mut member = Member {
            generation: msg.generation,
            addr: msg.addr,
            folders: msg.folders,
            sub,
            covered,
            resync_on_cover: false,
            waiters: Vec::new(),
            subscribing: false,
        };
        let reply = if needs_subscription {
            // Subscribed at once (the mailbox waits for it); the connection that carries the
            // new subscription is opened after `join_delay`, so joins arriving together share it.
            let (tx, rx) = oneshot::channel();
            member.waiters.push(tx);
            member.subscribing = true;
            let call = self.shared.ports.stream.subscribe(
                &self.info,
                &msg.smtp,
                &member.folders,
                self.throttle.clone(),
            );
            let smtp = msg.smtp.clone();
            self.members.insert(msg.smtp, member);
            ctx.spawn(call.into_actor(self).map(move |result, act, ctx| {
                act.subscribed(&smtp, result);
                let delay = act.join_wait();
                act.schedule(delay, "members", ctx);
            }));
            Some(rx)
        } else {
            self.members.insert(msg.smtp, member);
            None
        };
        Box::pin(async move {
            if let Some(rx) = reply {
                let _ = rx.await;
            }
        })
    }
}

impl Handler<LeaveGroup> for StreamGroupActor {
    type Result = ();
    fn handle(&mut self, msg: LeaveGroup, _: &mut Context<Self>) {
        if let Some(member) = self.members.remove(&msg.smtp) {
            if let Some(sub) = member.sub {
                self.by_sub.remove(&sub);
            }
        }
        if self.info.anchor == msg.smtp {
            if let Some(first) = self.members.keys().next() {
                self.info.anchor = first.clone();
            }
        }
    }
}

impl Handler<StopGroup> for StreamGroupActor {
    type Result = ();
    fn handle(&mut self, _: StopGroup, ctx: &mut Context<Self>) {
        self.exited = true;
        self.drop_live(ctx);
        ctx.stop();
    }
}

impl Handler<GetStatus> for StreamGroupActor {
    type Result = MessageResult<GetStatus>;
    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(GroupStatus {
            members: self.members.len(),
            subscribed: self.members.values().filter(|m| m.sub.is_some()).count(),
            covered: self.members.values().filter(|m| m.covered).count(),
            connected: self.live.is_some(),
            mode: self.mode.as_str(),
            connects: self.connects,
            failures: self.failures,
        })
    }
}
