//! In-memory ports for tests and benches: scripted, observable, and loud about surprises.
//!
//! [`FakeSync`] records every step (when it started, when its request got through the
//! throttle, when it finished) and plays scripted behaviours per mailbox and folder;
//! [`FakeStream`] hands out subscriptions and connections whose events the test sends;
//! [`FakeCrm`] is a queue of "this folder has CRM changes". Each has a `wait_until` that
//! awaits a condition without sleeping.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use crate::ports::{
    CrmPort, FolderId, GroupInfo, MailboxId, MailboxSpec, StepReport, StepRequest, StreamEvent,
    StreamPort, SubscriptionId, SyncError, SyncPort,
};
use crate::throttle::{StepContext, Throttle};

/// What a scripted step or opening does.
#[derive(Clone)]
pub enum Behaviour {
    /// Succeeds at once.
    Ok,
    /// Succeeds and says there is more.
    More,
    /// Succeeds after this long.
    Delay(Duration),
    /// Waits for the gate to open, then succeeds.
    Gate(Arc<Notify>),
    /// Fails so.
    Fail(SyncError),
    /// Panics.
    Panic,
    /// Never finishes and never shows progress.
    Hang,
    /// Succeeds at once with this report (a wake-up time, held deletes, more to do).
    Report(StepReport),
    /// Reports progress `done` of `total`, then waits for the gate and succeeds with
    /// `more` set (a long initial sync's page).
    Progress(u64, u64, Arc<Notify>),
}

/// One step as the fake saw it.
#[derive(Debug, Clone)]
pub struct StepRecord {
    /// Mailbox.
    pub mailbox: MailboxId,
    /// Folder.
    pub folder: FolderId,
    /// A full resync was asked for.
    pub full: bool,
    /// When the step began.
    pub started: Instant,
    /// When its (simulated) EWS request got through the throttle.
    pub sent: Option<Instant>,
    /// When it finished successfully ("committed").
    pub committed: Option<Instant>,
}

/// Waiting helper shared by the fakes: a version counter bumped on every change.
struct Changes(watch::Sender<u64>);

impl Changes {
    fn new() -> Self {
        Changes(watch::channel(0).0)
    }
    fn bump(&self) {
        self.0.send_modify(|v| *v += 1);
    }
    /// Waits until `cond` holds (re-checked after every change); fails after an hour of
    /// (possibly paused) time so a broken test ends instead of hanging.
    async fn wait_until(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let mut rx = self.0.subscribe();
        let wait = async {
            loop {
                if cond() {
                    return;
                }
                // Also look again every 10 ms: a condition may depend on state the fake does
                // not see change (the registry, updated by another arbiter after the fake's
                // last event).
                if let Ok(Err(_)) =
                    tokio::time::timeout(Duration::from_millis(10), rx.changed()).await
                {
                    return;
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(3600), wait)
            .await
            .is_err()
        {
            panic!("timed out waiting until {what}");
        }
    }
}

/// Called at the start of every step.
type StepHook = Arc<dyn Fn(&MailboxId, &FolderId) + Send + Sync>;

#[derive(Default)]
struct SyncState {
    folders: Vec<FolderId>,
    open_script: HashMap<MailboxId, VecDeque<Behaviour>>,
    step_script: HashMap<(MailboxId, FolderId), VecDeque<Behaviour>>,
    default_step: Option<Behaviour>,
    opens: HashMap<MailboxId, Vec<Instant>>,
    steps: Vec<StepRecord>,
    step_counts: HashMap<(MailboxId, FolderId), u64>,
    record: bool,
    on_step: Option<StepHook>,
}

/// A scripted [`SyncPort`].
pub struct FakeSync {
    inner: Arc<SyncInner>,
}

struct SyncInner {
    state: Mutex<SyncState>,
    changes: Changes,
}

impl SyncInner {
    fn record<R>(&self, f: impl FnOnce(&mut SyncState) -> R) -> R {
        let r = f(&mut self.state.lock());
        self.changes.bump();
        r
    }
}

impl FakeSync {
    fn state(&self) -> parking_lot::MutexGuard<'_, SyncState> {
        self.inner.state.lock()
    }

    /// Every mailbox has `folders`; every step and opening succeeds unless scripted.
    pub fn new(folders: &[&str]) -> Arc<Self> {
        Arc::new(FakeSync {
            inner: Arc::new(SyncInner {
                state: Mutex::new(SyncState {
                    folders: folders.iter().map(|f| FolderId::from(*f)).collect(),
                    record: true,
                    ..SyncState::default()
                }),
                changes: Changes::new(),
            }),
        })
    }

    /// The next openings of `mailbox` behave so, in order; then they succeed.
    pub fn script_open(&self, mailbox: &str, behaviours: impl IntoIterator<Item = Behaviour>) {
        self.state()
            .open_script
            .entry(mailbox.into())
            .or_default()
            .extend(behaviours);
    }

    /// The next steps of `mailbox`/`folder` behave so, in order; then the default.
    pub fn script_step(
        &self,
        mailbox: &str,
        folder: &str,
        behaviours: impl IntoIterator<Item = Behaviour>,
    ) {
        let key = (MailboxId::from(mailbox), FolderId::from(folder));
        self.state()
            .step_script
            .entry(key)
            .or_default()
            .extend(behaviours);
    }

    /// What unscripted steps do (default: succeed at once).
    pub fn set_default_step(&self, behaviour: Behaviour) {
        self.state().default_step = Some(behaviour);
    }

    /// Keep (true, the default) or drop step records; counts are always kept.
    pub fn set_recording(&self, record: bool) {
        self.state().record = record;
    }

    /// Called at the start of every step (benches measure trigger-to-step latency with it).
    pub fn on_step(&self, f: impl Fn(&MailboxId, &FolderId) + Send + Sync + 'static) {
        self.state().on_step = Some(Arc::new(f));
    }

    /// Every recorded step.
    pub fn steps(&self) -> Vec<StepRecord> {
        self.state().steps.clone()
    }

    /// Recorded steps of one folder.
    pub fn steps_of(&self, mailbox: &str, folder: &str) -> Vec<StepRecord> {
        self.state()
            .steps
            .iter()
            .filter(|s| &*s.mailbox == mailbox && &*s.folder == folder)
            .cloned()
            .collect()
    }

    /// Steps started for one folder.
    pub fn step_count(&self, mailbox: &str, folder: &str) -> u64 {
        let key = (MailboxId::from(mailbox), FolderId::from(folder));
        self.state().step_counts.get(&key).copied().unwrap_or(0)
    }

    /// Steps started in total.
    pub fn total_steps(&self) -> u64 {
        self.state().step_counts.values().sum()
    }

    /// Times `mailbox` was opened.
    pub fn opens(&self, mailbox: &str) -> u32 {
        self.state()
            .opens
            .get(mailbox)
            .map_or(0, |o| o.len() as u32)
    }

    /// When `mailbox` was opened, each time.
    pub fn open_times(&self, mailbox: &str) -> Vec<Instant> {
        self.state().opens.get(mailbox).cloned().unwrap_or_default()
    }

    /// Waits until `cond` holds for this fake.
    pub async fn wait_until(&self, what: &str, mut cond: impl FnMut(&FakeSync) -> bool) {
        self.inner.changes.wait_until(what, || cond(self)).await
    }
}

async fn play(behaviour: Behaviour) -> Result<StepReport, SyncError> {
    match behaviour {
        Behaviour::Report(report) => Ok(report),
        Behaviour::Progress(_, _, gate) => {
            gate.notified().await;
            Ok(StepReport {
                items: 1,
                more: true,
                ..StepReport::default()
            })
        }
        Behaviour::Ok => Ok(StepReport {
            items: 1,
            more: false,
            ..StepReport::default()
        }),
        Behaviour::More => Ok(StepReport {
            items: 1,
            more: true,
            ..StepReport::default()
        }),
        Behaviour::Delay(d) => {
            tokio::time::sleep(d).await;
            Ok(StepReport {
                items: 1,
                more: false,
                ..StepReport::default()
            })
        }
        Behaviour::Gate(gate) => {
            gate.notified().await;
            Ok(StepReport {
                items: 1,
                more: false,
                ..StepReport::default()
            })
        }
        Behaviour::Fail(e) => Err(e),
        Behaviour::Panic => panic!("scripted panic"),
        Behaviour::Hang => std::future::pending().await,
    }
}

impl SyncPort for FakeSync {
    fn open_mailbox(
        &self,
        mailbox: &MailboxSpec,
        ctx: StepContext,
    ) -> BoxFuture<'static, Result<Vec<FolderId>, SyncError>> {
        let (behaviour, folders) = self.inner.record(|s| {
            s.opens
                .entry(mailbox.smtp.clone())
                .or_default()
                .push(Instant::now());
            let b = s
                .open_script
                .get_mut(&mailbox.smtp)
                .and_then(|q| q.pop_front())
                .unwrap_or(Behaviour::Ok);
            (b, s.folders.clone())
        });
        Box::pin(async move {
            drop(ctx.acquire().await);
            play(behaviour).await.map(|_| folders)
        })
    }

    fn sync_folder(&self, step: StepRequest) -> BoxFuture<'static, Result<StepReport, SyncError>> {
        let key = (step.mailbox.clone(), step.folder.clone());
        let (behaviour, index, hook) = self.inner.record(|s| {
            *s.step_counts.entry(key.clone()).or_default() += 1;
            let b = s
                .step_script
                .get_mut(&key)
                .and_then(|q| q.pop_front())
                .or_else(|| s.default_step.clone())
                .unwrap_or(Behaviour::Ok);
            let index = s.record.then(|| {
                s.steps.push(StepRecord {
                    mailbox: step.mailbox.clone(),
                    folder: step.folder.clone(),
                    full: step.full_resync,
                    started: Instant::now(),
                    sent: None,
                    committed: None,
                });
                s.steps.len() - 1
            });
            (b, index, s.on_step.clone())
        });
        if let Some(hook) = hook {
            hook(&step.mailbox, &step.folder);
        }
        let me = self.inner.clone();
        Box::pin(async move {
            let permit = step.ctx.acquire().await;
            if let Some(i) = index {
                me.record(|s| s.steps[i].sent = Some(Instant::now()));
            }
            drop(permit);
            if let Behaviour::Progress(done, total, _) = &behaviour {
                step.ctx.report_progress(*done, *total);
            }
            let result = play(behaviour).await;
            if let (Some(i), Ok(_)) = (index, &result) {
                me.record(|s| s.steps[i].committed = Some(Instant::now()));
            }
            result
        })
    }
}

/// One connection the fake stream handed out.
#[derive(Debug, Clone)]
pub struct ConnectionRecord {
    /// Subscriptions on it.
    pub subscriptions: Vec<SubscriptionId>,
    /// When it opened.
    pub opened: Instant,
    /// The timeout asked for.
    pub timeout: Duration,
    /// Still delivering.
    pub open: bool,
}

#[derive(Default)]
struct StreamState {
    next_sub: u64,
    subs: HashMap<SubscriptionId, MailboxId>,
    subscribes: u64,
    fail_subscribe: HashMap<MailboxId, VecDeque<SyncError>>,
    fail_connects: VecDeque<SyncError>,
    panic_connects: usize,
    connects_attempted: u64,
    connections: Vec<(ConnectionRecord, Option<mpsc::UnboundedSender<StreamEvent>>)>,
    silent: bool,
    take_over: bool,
}

impl StreamState {
    /// The subscription of a mailbox: its newest (an older one may linger, as on Exchange,
    /// after its group was replaced).
    fn sub_of(&self, mailbox: &str) -> Option<SubscriptionId> {
        self.subs
            .iter()
            .filter(|(_, m)| &***m == mailbox)
            .max_by_key(|(sub, _)| {
                sub.strip_prefix("sub-")
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .map(|(sub, _)| sub.clone())
    }
}

struct StreamInner {
    state: Mutex<StreamState>,
    changes: Changes,
}

/// A scripted [`StreamPort`]: connections end at their timeout with `Closed`, like Exchange.
pub struct FakeStream {
    inner: Arc<StreamInner>,
}

impl FakeStream {
    /// A stream port where everything works.
    pub fn new() -> Arc<Self> {
        Arc::new(FakeStream {
            inner: Arc::new(StreamInner {
                state: Mutex::default(),
                changes: Changes::new(),
            }),
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut StreamState) -> R) -> R {
        let r = f(&mut self.inner.state.lock());
        self.inner.changes.bump();
        r
    }

    /// Connections opened from now on send no heartbeats (Exchange sends one every 30 s
    /// or so; this fake does too unless silenced).
    pub fn silence_heartbeats(&self) {
        self.with(|s| s.silent = true);
    }

    /// The next `n` connection attempts fail.
    pub fn fail_next_connects(&self, n: usize, error: SyncError) {
        self.with(|s| s.fail_connects.extend(std::iter::repeat_n(error, n)));
    }

    /// The next `n` connections open, and the first read of each panics inside the stream
    /// group actor that reads it (a bug in a handler): the group actor dies.
    pub fn panic_next_connects(&self, n: usize) {
        self.with(|s| s.panic_connects += n);
    }

    /// The next subscribe of `mailbox` fails so.
    pub fn fail_next_subscribe(&self, mailbox: &str, error: SyncError) {
        self.with(|s| {
            s.fail_subscribe
                .entry(mailbox.into())
                .or_default()
                .push_back(error)
        });
    }

    /// Sends `event` on the newest open connection; false if none is open.
    pub fn send(&self, event: StreamEvent) -> bool {
        self.with(|s| {
            s.connections
                .iter()
                .rev()
                .find_map(|(rec, tx)| if rec.open { tx.as_ref() } else { None })
                .is_some_and(|tx| tx.send(event).is_ok())
        })
    }

    /// A change notification for `mailbox`'s folder on the newest connection that carries its
    /// subscription; false if none does.
    pub fn notify(&self, mailbox: &str, folder: &str) -> bool {
        self.with(|s| {
            let Some(sub) = s.sub_of(mailbox) else {
                return false;
            };
            s.connections
                .iter()
                .rev()
                .filter(|(rec, _)| rec.open && rec.subscriptions.contains(&sub))
                .find_map(|(_, tx)| tx.as_ref())
                .is_some_and(|tx| {
                    tx.send(StreamEvent::Changed {
                        subscription: sub.clone(),
                        folder: Some(folder.into()),
                    })
                    .is_ok()
                })
        })
    }

    /// From now on a new connection ends the older ones whose subscriptions it names (with
    /// `Closed`, just before it opens), as Exchange does.
    pub fn take_over(&self) {
        self.with(|s| s.take_over = true);
    }

    /// A change notification for `mailbox`'s folder on connection number `index` (in the
    /// order they were opened), open or being drained; false if that one is not read any more.
    pub fn notify_on(&self, index: usize, mailbox: &str, folder: &str) -> bool {
        self.with(|s| {
            let Some(sub) = s.sub_of(mailbox) else {
                return false;
            };
            s.connections
                .get(index)
                .and_then(|(_, tx)| tx.as_ref())
                .is_some_and(|tx| {
                    tx.send(StreamEvent::Changed {
                        subscription: sub,
                        folder: Some(folder.into()),
                    })
                    .is_ok()
                })
        })
    }

    /// Ends the newest open connection without a word (a dropped TCP connection).
    pub fn drop_connection(&self) {
        self.with(|s| {
            if let Some((rec, tx)) = s.connections.iter_mut().rev().find(|(rec, _)| rec.open) {
                rec.open = false;
                tx.take();
            }
        });
    }

    /// Tells the newest connection that `mailbox`'s subscription is gone (as Exchange does
    /// with ErrorSubscriptionNotFound), and forgets it.
    pub fn lose_subscription(&self, mailbox: &str) -> bool {
        let sub = self.with(|s| {
            let sub = s.sub_of(mailbox)?;
            s.subs.remove(&sub);
            Some(sub)
        });
        match sub {
            Some(sub) => self.send(StreamEvent::Lost(vec![sub])),
            None => false,
        }
    }

    /// Scripted panics not yet delivered ([`FakeStream::panic_next_connects`]).
    pub fn pending_panics(&self) -> usize {
        self.inner.state.lock().panic_connects
    }

    /// Subscribe calls so far.
    pub fn subscribes(&self) -> u64 {
        self.inner.state.lock().subscribes
    }

    /// Connection attempts so far (successful or not).
    pub fn connects_attempted(&self) -> u64 {
        self.inner.state.lock().connects_attempted
    }

    /// Every connection handed out.
    pub fn connections(&self) -> Vec<ConnectionRecord> {
        self.inner
            .state
            .lock()
            .connections
            .iter()
            .map(|(rec, _)| rec.clone())
            .collect()
    }

    /// Connections still open.
    pub fn open_connections(&self) -> usize {
        self.inner
            .state
            .lock()
            .connections
            .iter()
            .filter(|(rec, tx)| rec.open && tx.as_ref().is_some_and(|t| !t.is_closed()))
            .count()
    }

    /// Waits until `cond` holds for this fake.
    pub async fn wait_until(&self, what: &str, mut cond: impl FnMut(&FakeStream) -> bool) {
        self.inner.changes.wait_until(what, || cond(self)).await
    }
}

impl StreamPort for FakeStream {
    fn subscribe(
        &self,
        _group: &GroupInfo,
        mailbox: &MailboxId,
        _folders: &[FolderId],
        throttle: Throttle,
    ) -> BoxFuture<'static, Result<SubscriptionId, SyncError>> {
        let inner = self.inner.clone();
        let mailbox = mailbox.clone();
        Box::pin(async move {
            drop(throttle.acquire().await);
            let mut s = inner.state.lock();
            s.subscribes += 1;
            let result = match s
                .fail_subscribe
                .get_mut(&mailbox)
                .and_then(|q| q.pop_front())
            {
                Some(error) => Err(error),
                None => {
                    s.next_sub += 1;
                    let sub = SubscriptionId::from(format!("sub-{}", s.next_sub));
                    s.subs.insert(sub.clone(), mailbox);
                    Ok(sub)
                }
            };
            drop(s);
            inner.changes.bump();
            result
        })
    }

    fn stream(
        &self,
        _group: &GroupInfo,
        subscriptions: Vec<SubscriptionId>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<BoxStream<'static, StreamEvent>, SyncError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let opened = {
                let mut s = inner.state.lock();
                s.connects_attempted += 1;
                if let Some(error) = s.fail_connects.pop_front() {
                    Err(error)
                } else if s.panic_connects > 0 {
                    s.panic_connects -= 1;
                    drop(s);
                    inner.changes.bump();
                    let doomed = stream::once(async { scripted_stream_panic() });
                    return Ok(Box::pin(doomed) as BoxStream<'static, StreamEvent>);
                } else {
                    let take_over = s.take_over;
                    if take_over {
                        // As Exchange: a connection whose subscriptions the new request names ends
                        // now, before the new response reaches the client.
                        for (rec, tx) in s.connections.iter() {
                            if rec.open
                                && rec.subscriptions.iter().all(|x| subscriptions.contains(x))
                            {
                                if let Some(tx) = tx {
                                    let _ = tx.send(StreamEvent::Closed);
                                }
                            }
                        }
                    }
                    let (tx, rx) = mpsc::unbounded_channel();
                    let record = ConnectionRecord {
                        subscriptions,
                        opened: Instant::now(),
                        timeout,
                        open: true,
                    };
                    s.connections.push((record, Some(tx)));
                    let index = s.connections.len() - 1;
                    let heartbeat = if s.silent {
                        Duration::MAX
                    } else {
                        Duration::from_secs(30)
                    };
                    Ok((rx, index, heartbeat, take_over))
                }
            };
            let (rx, index, heartbeat, take_over) = match opened {
                Ok(o) => o,
                Err(error) => {
                    inner.changes.bump();
                    return Err(error);
                }
            };
            inner.changes.bump();
            if take_over {
                // Let the old connection's end arrive first, as it does over the network.
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
            }
            let deadline = Instant::now() + timeout;
            let inner2 = inner.clone();
            let events = stream::unfold((rx, false), move |(mut rx, done)| {
                let inner = inner2.clone();
                async move {
                    if done {
                        return None;
                    }
                    let beat = Instant::now()
                        .checked_add(heartbeat)
                        .unwrap_or(deadline)
                        .min(deadline);
                    tokio::select! {
                        event = rx.recv() => event.map(|e| (e, (rx, false))),
                        _ = tokio::time::sleep_until(beat), if beat < deadline => Some((StreamEvent::Heartbeat, (rx, false))),
                        _ = tokio::time::sleep_until(deadline) => {
                            inner.state.lock().connections[index].0.open = false;
                            inner.changes.bump();
                            Some((StreamEvent::Closed, (rx, true)))
                        }
                    }
                }
            });
            Ok(Box::pin(events) as BoxStream<'static, StreamEvent>)
        })
    }
}

fn scripted_stream_panic() -> StreamEvent {
    panic!("scripted panic in a streaming connection")
}

/// A [`CrmPort`] fed by the test.
pub struct FakeCrm {
    tx: mpsc::UnboundedSender<(MailboxId, FolderId)>,
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<(MailboxId, FolderId)>>>,
}

impl FakeCrm {
    /// An empty feed.
    pub fn new() -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        Arc::new(FakeCrm {
            tx,
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
        })
    }

    /// Reports a CRM change for `mailbox`'s `folder`.
    pub fn push(&self, mailbox: &str, folder: &str) {
        let _ = self.tx.send((mailbox.into(), folder.into()));
    }
}

impl CrmPort for FakeCrm {
    fn next_changes(&self) -> BoxFuture<'static, Result<Vec<(MailboxId, FolderId)>, SyncError>> {
        let rx = self.rx.clone();
        Box::pin(async move {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return std::future::pending().await;
            };
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            Ok(batch)
        })
    }
}

/// Runs `fut` to completion under an hour of (possibly paused) time, failing loudly otherwise.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(3600), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}
