//! The per-server throttle every EWS request passes, and the step context that carries it.
//!
//! Three gates, in this order: a concurrency cap (a semaphore, so at most `max_concurrent`
//! requests are in flight), a server-wide pause (set when Exchange answers ErrorServerBusy
//! with BackOffMilliseconds), and a governor rate limit. Time comes from tokio's clock so
//! that tests under paused time see the same behaviour as production.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::ports::{ServerId, ThrottleSettings};

/// governor's clock, read from tokio so paused test time applies to the rate limit too.
#[derive(Debug, Clone, Copy, Default)]
struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;
    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<std::time::Instant>>;

/// The sustained rate as a governor quota: one request per `1 / rps` seconds, so fractional
/// rates keep their meaning (0.5 is one request every 2 s). A rate the configuration would
/// have refused (zero, negative, not finite) cannot come from it; here it falls back to one
/// request per second rather than no limit.
fn quota(requests_per_second: f64) -> Quota {
    let rps = if requests_per_second.is_finite() && requests_per_second > 0.0 {
        requests_per_second
    } else {
        1.0
    };
    // At most 10^9 per second (governor counts in nanoseconds); at least one per ~136 years.
    let period = Duration::from_secs_f64((1.0 / rps).clamp(1e-9, u32::MAX as f64));
    Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
}

/// The longest server-wide pause: Exchange asks for up to about five minutes; a longer (or
/// absurd) back-off is taken as this.
pub const MAX_PAUSE: Duration = Duration::from_secs(5 * 60);

/// The shared throttle of one Exchange server. Cheap to clone.
#[derive(Clone)]
pub struct Throttle(Arc<Inner>);

struct Inner {
    /// Metric label and log field.
    server: ServerId,
    /// The settings it was built from, so a reload can tell whether they changed.
    settings: ThrottleSettings,
    /// Sustained rate and burst (of this instance's share); replaced when the share changes.
    limiter: RwLock<Arc<Limiter>>,
    /// Concurrency cap.
    slots: Arc<Semaphore>,
    /// The cluster's split of the server's budget (see [`Throttle::set_share`]).
    share: Mutex<Share>,
    /// End of the current server-wide pause, if any.
    paused_until: Mutex<Option<Instant>>,
    /// Where waits and pauses are counted.
    metrics: Metrics,
}

impl Throttle {
    /// A throttle for `server` with `settings`.
    pub fn new(server: ServerId, settings: ThrottleSettings, metrics: Metrics) -> Self {
        metrics.register_server(&server);
        Throttle(Arc::new(Inner {
            limiter: RwLock::new(Arc::new(limiter(&settings, 1))),
            slots: Arc::new(Semaphore::new(settings.max_concurrent.max(1) as usize)),
            share: Mutex::new(Share {
                instances: 1,
                slots: settings.max_concurrent.max(1),
                owed: 0,
            }),
            paused_until: Mutex::new(None),
            server,
            settings,
            metrics,
        }))
    }

    /// The server this throttle meters.
    pub fn server(&self) -> &ServerId {
        &self.0.server
    }

    /// The settings it was built from.
    pub fn settings(&self) -> ThrottleSettings {
        self.0.settings
    }

    /// Takes this instance's share of the server's budget when `instances` instances share
    /// it (a cluster): the rate, the burst and the concurrency cap divided by their number
    /// (at least one request per second's fraction, one of burst and one slot), so that
    /// together they never exceed what is configured. Adjusted in place: requests in flight
    /// keep their slots (surplus slots are retired as they come back), nothing restarts.
    pub fn set_share(&self, instances: usize) {
        let n = instances.max(1) as u32;
        let mut share = self.0.share.lock();
        if share.instances == n {
            return;
        }
        share.instances = n;
        *self.0.limiter.write() = Arc::new(limiter(&self.0.settings, n));
        let want = (self.0.settings.max_concurrent / n).max(1);
        if want > share.slots {
            let mut more = want - share.slots;
            // Slots still owed back are simply not retired.
            let forgiven = more.min(share.owed);
            share.owed -= forgiven;
            more -= forgiven;
            self.0.slots.add_permits(more as usize);
        } else if want < share.slots {
            let fewer = share.slots - want;
            let now = self.0.slots.forget_permits(fewer as usize) as u32;
            share.owed += fewer - now;
        }
        share.slots = want;
        tracing::info!(server = %self.0.server, instances = n, requests_per_second = self.0.settings.requests_per_second / f64::from(n), max_concurrent = want, "EWS budget share");
    }

    /// How many instances this throttle shares the server's budget with (itself included).
    pub fn share(&self) -> (u32, u32) {
        let s = self.0.share.lock();
        (s.instances, s.slots)
    }

    /// Waits until one more request may go to the server; the request runs while the permit
    /// lives.
    pub async fn acquire(&self) -> ThrottlePermit {
        let started = Instant::now();
        let slot = self
            .0
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the throttle's semaphore is never closed");
        loop {
            if let Some(until) = self.paused_until() {
                tokio::time::sleep_until(until).await;
                continue;
            }
            let check = self.0.limiter.read().check();
            match check {
                Ok(()) => break,
                Err(not_until) => {
                    tokio::time::sleep(not_until.wait_time_from(TokioClock.now())).await;
                }
            }
        }
        let server: &str = &self.0.server;
        self.0
            .metrics
            .throttle_wait
            .with_label_values(&[server])
            .observe(started.elapsed().as_secs_f64());
        self.0
            .metrics
            .throttle_in_flight
            .with_label_values(&[server])
            .inc();
        ThrottlePermit {
            slot: Some(slot),
            throttle: self.clone(),
        }
    }

    /// Stops every request to the server for `back_off` (extending a pause already running),
    /// at most [`MAX_PAUSE`]; returns the pause applied. No value a server sends can stop a
    /// server's sync for longer, or overflow the deadline.
    pub fn pause(&self, back_off: Duration) -> Duration {
        let back_off = back_off.min(MAX_PAUSE);
        let now = Instant::now();
        let until = now.checked_add(back_off).unwrap_or(now);
        let mut paused = self.0.paused_until.lock();
        *paused = Some(paused.map_or(until, |current| current.max(until)));
        drop(paused);
        let server: &str = &self.0.server;
        self.0
            .metrics
            .throttle_pauses
            .with_label_values(&[server])
            .inc();
        self.0
            .metrics
            .throttle_paused_seconds
            .with_label_values(&[server])
            .inc_by(back_off.as_secs_f64());
        tracing::warn!(
            server,
            back_off_ms = back_off.as_millis() as u64,
            "server asked us to back off; pausing every request to it"
        );
        back_off
    }

    /// The end of the running pause, if one runs.
    pub fn paused_until(&self) -> Option<Instant> {
        let mut paused = self.0.paused_until.lock();
        match *paused {
            Some(until) if until > Instant::now() => Some(until),
            Some(_) => {
                *paused = None;
                None
            }
            None => None,
        }
    }
}

/// A request's right to run; dropping it frees the concurrency slot.
pub struct ThrottlePermit {
    /// The concurrency slot (retired instead of returned while the share owes slots).
    slot: Option<OwnedSemaphorePermit>,
    throttle: Throttle,
}

/// This instance's part of a server's budget.
#[derive(Debug)]
struct Share {
    /// Instances sharing the budget.
    instances: u32,
    /// Concurrency slots this instance may use.
    slots: u32,
    /// Slots to retire as requests in flight give them back (the share shrank while they
    /// ran).
    owed: u32,
}

/// The rate limiter of one instance's share of `settings` among `n`.
fn limiter(settings: &ThrottleSettings, n: u32) -> Limiter {
    let burst = NonZeroU32::new((settings.burst / n.max(1)).max(1)).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct_with_clock(
        quota(settings.requests_per_second / f64::from(n.max(1))).allow_burst(burst),
        TokioClock,
    )
}

impl Drop for ThrottlePermit {
    fn drop(&mut self) {
        {
            let mut share = self.throttle.0.share.lock();
            if share.owed > 0 {
                share.owed -= 1;
                if let Some(slot) = self.slot.take() {
                    slot.forget();
                }
            }
        }
        let server: &str = &self.throttle.0.server;
        self.throttle
            .0
            .metrics
            .throttle_in_flight
            .with_label_values(&[server])
            .dec();
    }
}

/// A step's liveness, watched by the stall watchdog. Cheap to clone.
#[derive(Clone)]
pub struct Progress(Arc<ProgressInner>);

struct ProgressInner {
    /// Reference point for `last_ms`.
    origin: Instant,
    /// Milliseconds after `origin` of the last sign of life.
    last_ms: AtomicU64,
    /// Requests currently waiting for the throttle: waiting on the server is not a stall.
    waiting: AtomicU32,
}

impl Progress {
    pub(crate) fn new() -> Self {
        Progress(Arc::new(ProgressInner {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
            waiting: AtomicU32::new(0),
        }))
    }

    /// Records a sign of life (a page fetched, a batch written).
    pub fn tick(&self) {
        let ms = self.0.origin.elapsed().as_millis() as u64;
        self.0.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long the step has shown no sign of life (zero while it waits for the throttle).
    pub(crate) fn idle(&self) -> Duration {
        if self.0.waiting.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let now = self.0.origin.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.0.last_ms.load(Ordering::Relaxed)))
    }
}

/// What a port gets with every step: the server's throttle and the step's progress.
#[derive(Clone)]
pub struct StepContext {
    progress: Progress,
    throttle: Throttle,
    /// Where a long job reports how far it is (the folder's status and the metrics).
    report: Option<ProgressSink>,
}

/// Receives (done, total) of a long job; cheap to clone.
pub type ProgressSink = Arc<dyn Fn(u64, u64) + Send + Sync>;

impl StepContext {
    /// A context for a step on `throttle`'s server.
    pub fn new(throttle: Throttle) -> Self {
        StepContext {
            progress: Progress::new(),
            throttle,
            report: None,
        }
    }

    pub(crate) fn with_progress(throttle: Throttle, progress: Progress) -> Self {
        StepContext {
            progress,
            throttle,
            report: None,
        }
    }

    /// This context with a sink for a long job's progress.
    pub fn with_report(mut self, sink: ProgressSink) -> Self {
        self.report = Some(sink);
        self
    }

    /// Reports how far a long job is (an initial sync): `done` of `total`. Also a sign of
    /// life.
    pub fn report_progress(&self, done: u64, total: u64) {
        self.progress.tick();
        if let Some(sink) = &self.report {
            sink(done, total);
        }
    }

    /// Waits for the throttle; the time spent waiting never counts as a stall.
    pub async fn acquire(&self) -> ThrottlePermit {
        self.progress.0.waiting.fetch_add(1, Ordering::Relaxed);
        let permit = self.throttle.acquire().await;
        self.progress.0.waiting.fetch_sub(1, Ordering::Relaxed);
        self.progress.tick();
        permit
    }

    /// Records a sign of life.
    pub fn progress(&self) {
        self.progress.tick();
    }

    /// The server's throttle.
    pub fn throttle(&self) -> &Throttle {
        &self.throttle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(rps: f64, burst: u32, max_concurrent: u32) -> Throttle {
        Throttle::new(
            "ex1".into(),
            ThrottleSettings {
                requests_per_second: rps,
                burst,
                max_concurrent,
            },
            Metrics::unregistered(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_spaces_requests_after_the_burst() {
        let t = throttle(10.0, 2, 100);
        let start = Instant::now();
        for _ in 0..4 {
            drop(t.acquire().await);
        }
        // Two from the burst at once, then one every 100 ms.
        assert_eq!(start.elapsed(), Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fractional_rate_is_kept_not_rounded_up() {
        // 0.5 per second: after the one request the burst allows, one every 2 s.
        let t = throttle(0.5, 1, 100);
        let start = Instant::now();
        for _ in 0..3 {
            drop(t.acquire().await);
        }
        assert_eq!(start.elapsed(), Duration::from_secs(4));
        // 2.5 per second: one every 400 ms.
        let t = throttle(2.5, 1, 100);
        let start = Instant::now();
        for _ in 0..3 {
            drop(t.acquire().await);
        }
        assert_eq!(start.elapsed(), Duration::from_millis(800));
    }

    #[test]
    fn a_rate_the_configuration_refuses_still_limits() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(quota(bad), quota(1.0), "{bad}");
        }
        assert_eq!(
            quota(0.5).replenish_interval(),
            Duration::from_secs(2),
            "0.5 per second"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_cap_holds_requests_until_a_slot_frees() {
        let t = throttle(1000.0, 1000, 2);
        let a = t.acquire().await;
        let _b = t.acquire().await;
        let t2 = t.clone();
        let waiter = tokio::spawn(async move {
            let start = Instant::now();
            drop(t2.acquire().await);
            start.elapsed()
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !waiter.is_finished(),
            "a third request ran while two held the slots"
        );
        drop(a);
        assert_eq!(waiter.await.unwrap(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn pause_holds_every_request_and_extends_never_shortens() {
        let t = throttle(1000.0, 1000, 10);
        t.pause(Duration::from_secs(30));
        t.pause(Duration::from_secs(10));
        let start = Instant::now();
        drop(t.acquire().await);
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        assert!(t.paused_until().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn absurd_back_offs_pause_at_most_the_cap_and_never_panic() {
        let t = throttle(1000.0, 1000, 10);
        for back_off in [
            Duration::from_millis(1_000_000_000_000),
            Duration::from_millis(u64::MAX),
            Duration::MAX,
        ] {
            assert_eq!(t.pause(back_off), MAX_PAUSE);
        }
        let start = Instant::now();
        drop(t.acquire().await);
        assert_eq!(start.elapsed(), MAX_PAUSE);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_the_throttle_is_not_idle_time() {
        let t = throttle(1000.0, 1000, 10);
        let ctx = StepContext::new(t.clone());
        t.pause(Duration::from_secs(60));
        let ctx2 = ctx.clone();
        let task = tokio::spawn(async move { drop(ctx2.acquire().await) });
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert_eq!(ctx.progress.idle(), Duration::ZERO);
        task.await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(ctx.progress.idle(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_share_divides_rate_and_slots_in_place() {
        let t = throttle(10.0, 10, 6);
        // Three instances: each 10/3 requests per second, burst 3, two slots.
        t.set_share(3);
        assert_eq!(t.share(), (3, 2));
        let start = Instant::now();
        let mut permits = Vec::new();
        for _ in 0..2 {
            permits.push(t.acquire().await);
        }
        drop(permits);
        for _ in 0..2 {
            drop(t.acquire().await);
        }
        // Burst 3, then one every 0.3 s: the fourth request waits 0.3 s.
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        let a = t.acquire().await;
        let _b = t.acquire().await;
        let t2 = t.clone();
        let third = tokio::spawn(async move { drop(t2.acquire().await) });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !third.is_finished(),
            "a third request ran on a share of two slots"
        );
        drop(a);
        third.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_shrinking_share_retires_slots_as_requests_finish() {
        let t = throttle(1000.0, 1000, 4);
        let mut permits = Vec::new();
        for _ in 0..4 {
            permits.push(t.acquire().await);
        }
        // Two instances now: all four slots are in use, two are owed back.
        t.set_share(2);
        assert_eq!(t.share(), (2, 2));
        drop(permits.pop());
        drop(permits.pop());
        let t2 = t.clone();
        let next = tokio::spawn(async move { drop(t2.acquire().await) });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !next.is_finished(),
            "two requests still run: the share is full"
        );
        drop(permits.pop());
        next.await.unwrap();
        drop(permits);
        // Alone again: four slots.
        t.set_share(1);
        assert_eq!(t.share(), (1, 4));
        let mut four = Vec::new();
        for _ in 0..4 {
            four.push(t.acquire().await);
        }
        assert_eq!(four.len(), 4);
    }
}
