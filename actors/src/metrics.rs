//! The runtime's Prometheus metrics.
//!
//! Names follow `mailsync_<subsystem>_<name>_<unit>`; label values are bounded: states,
//! causes and outcomes are fixed sets below, `server` is a configured server name. No
//! mailbox address or error text is ever a label value.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use crate::ports::Cause;
use crate::status::MailboxState;

/// Step outcomes, the label values of `mailsync_folder_steps_total{outcome}`.
pub const STEP_OUTCOMES: [&str; 7] = [
    "ok",
    "retry",
    "throttled",
    "resync",
    "failed",
    "panic",
    "stall",
];
/// Restart causes, the label values of `mailsync_restarts_total{cause}`.
pub const RESTART_CAUSES: [&str; 5] = ["error", "panic", "stall", "denied", "admin"];

/// Latency buckets from 1 ms to 5 min.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Every metric the runtime emits.
#[derive(Clone)]
pub struct Metrics {
    /// `mailsync_mailboxes{state}`: mailboxes by state.
    pub mailboxes: IntGaugeVec,
    /// `mailsync_restarts_total{level,cause}`: mailbox, folder and stream group restarts.
    pub restarts: IntCounterVec,
    /// `mailsync_folder_steps_total{outcome}`.
    pub steps: IntCounterVec,
    /// `mailsync_folder_step_duration_seconds`.
    pub step_duration: Histogram,
    /// `mailsync_triggers_total{cause}`: every trigger a folder received.
    pub triggers: IntCounterVec,
    /// `mailsync_triggers_coalesced_total{cause}`: triggers absorbed by a step already due.
    pub coalesced: IntCounterVec,
    /// `mailsync_sync_lag_seconds{cause}`: from the first trigger a step covers to its commit.
    pub lag: HistogramVec,
    /// `mailsync_throttle_wait_seconds{server}`: time a request waited for the throttle.
    pub throttle_wait: HistogramVec,
    /// `mailsync_throttle_pauses_total{server}`: server-wide pauses on ErrorServerBusy.
    pub throttle_pauses: IntCounterVec,
    /// `mailsync_throttle_paused_seconds_total{server}`: back-off time asked for.
    pub throttle_paused_seconds: prometheus::CounterVec,
    /// `mailsync_throttle_in_flight{server}`: requests holding a concurrency permit.
    pub throttle_in_flight: IntGaugeVec,
    /// `mailsync_stream_connections{server}`: open streaming connections.
    pub stream_connections: IntGaugeVec,
    /// `mailsync_stream_reconnects_total{server,reason}`: renewal, lost, failed, resubscribe.
    pub stream_reconnects: IntCounterVec,
    /// `mailsync_stream_groups{server,mode}`: groups streaming or polling.
    pub stream_groups: IntGaugeVec,
    /// `mailsync_stream_notifications_total{server}`.
    pub notifications: IntCounterVec,
    /// `mailsync_crm_feed_batches_total{outcome}`: CRM change batches routed (ok, error).
    pub crm_batches: IntCounterVec,
    /// `mailsync_initial_sync_remaining_items`: items initial syncs running now still have
    /// to look at (0 when none runs).
    pub initial_remaining: prometheus::IntGauge,
    /// `mailsync_initial_syncs_running`: folders in an initial sync now.
    pub initial_running: prometheus::IntGauge,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Metrics {
            mailboxes: IntGaugeVec::new(
                opts("mailsync_mailboxes", "Mailboxes by state (starting, running, paused, backoff, failed, stopped)."),
                &["state"],
            )?,
            restarts: IntCounterVec::new(
                opts("mailsync_restarts_total", "Restarts by level (mailbox, folder, stream_group: a group actor that died, replaced and its mailboxes rejoined) and cause (error, panic, stall, denied, admin)."),
                &["level", "cause"],
            )?,
            steps: IntCounterVec::new(
                opts("mailsync_folder_steps_total", "Folder sync steps by outcome (ok, retry, throttled, resync, failed, panic, stall)."),
                &["outcome"],
            )?,
            step_duration: Histogram::with_opts(
                HistogramOpts::new("mailsync_folder_step_duration_seconds", "Duration of folder sync steps.")
                    .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            triggers: IntCounterVec::new(
                opts("mailsync_triggers_total", "Sync triggers received by folders, by cause (start, notification, crm, timer, admin, more)."),
                &["cause"],
            )?,
            coalesced: IntCounterVec::new(
                opts("mailsync_triggers_coalesced_total", "Triggers absorbed into a step that was already due, by cause (start, notification, crm, timer, admin, more)."),
                &["cause"],
            )?,
            lag: HistogramVec::new(
                HistogramOpts::new("mailsync_sync_lag_seconds", "From the first trigger a step covers until the step committed, by that trigger's cause (start, notification, crm, timer, admin, more).")
                    .buckets(LATENCY_BUCKETS.to_vec()),
                &["cause"],
            )?,
            throttle_wait: HistogramVec::new(
                HistogramOpts::new("mailsync_throttle_wait_seconds", "Time an EWS request waited for its server's throttle (rate, concurrency, pause), by server.")
                    .buckets(LATENCY_BUCKETS.to_vec()),
                &["server"],
            )?,
            throttle_pauses: IntCounterVec::new(
                opts("mailsync_throttle_pauses_total", "Server-wide pauses after ErrorServerBusy, by server."),
                &["server"],
            )?,
            throttle_paused_seconds: prometheus::CounterVec::new(
                opts("mailsync_throttle_paused_seconds_total", "Back-off time requested by servers, by server."),
                &["server"],
            )?,
            throttle_in_flight: IntGaugeVec::new(
                opts("mailsync_throttle_in_flight", "EWS requests in flight, by server."),
                &["server"],
            )?,
            stream_connections: IntGaugeVec::new(
                opts("mailsync_stream_connections", "Open streaming-notification connections, by server."),
                &["server"],
            )?,
            stream_reconnects: IntCounterVec::new(
                opts("mailsync_stream_reconnects_total", "Streaming connections opened after the first, by server and reason (renewal, lost, failed, resubscribe, members)."),
                &["server", "reason"],
            )?,
            stream_groups: IntGaugeVec::new(
                opts("mailsync_stream_groups", "Stream groups by server and mode (streaming, polling)."),
                &["server", "mode"],
            )?,
            notifications: IntCounterVec::new(
                opts("mailsync_stream_notifications_total", "Change notifications received, by server."),
                &["server"],
            )?,
            initial_remaining: prometheus::IntGauge::with_opts(opts(
                "mailsync_initial_sync_remaining_items",
                "Items the initial syncs running now (a folder's first start with initial_sync set) still have to look at.",
            ))?,
            initial_running: prometheus::IntGauge::with_opts(opts(
                "mailsync_initial_syncs_running",
                "Folders in an initial sync now.",
            ))?,
            crm_batches: IntCounterVec::new(
                opts("mailsync_crm_feed_batches_total", "CRM change batches routed to folders, by outcome (ok, error)."),
                &["outcome"],
            )?,
        };
        for c in m.collectors() {
            registry.register(c)?;
        }
        for state in MailboxState::ALL {
            m.mailboxes.with_label_values(&[state.as_str()]).set(0);
        }
        for outcome in STEP_OUTCOMES {
            m.steps.with_label_values(&[outcome]).inc_by(0);
        }
        for cause in RESTART_CAUSES {
            for level in ["mailbox", "folder", "stream_group"] {
                m.restarts.with_label_values(&[level, cause]).inc_by(0);
            }
        }
        for cause in Cause::ALL {
            m.triggers.with_label_values(&[cause.as_str()]).inc_by(0);
            m.coalesced.with_label_values(&[cause.as_str()]).inc_by(0);
            m.lag.with_label_values(&[cause.as_str()]);
        }
        for outcome in ["ok", "error"] {
            m.crm_batches.with_label_values(&[outcome]).inc_by(0);
        }
        Ok(m)
    }

    /// Metrics registered in a registry of their own (tests, benches).
    pub fn unregistered() -> Self {
        Metrics::new(&Registry::new()).expect("fresh registry accepts every metric")
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.mailboxes.clone()),
            Box::new(self.restarts.clone()),
            Box::new(self.steps.clone()),
            Box::new(self.step_duration.clone()),
            Box::new(self.triggers.clone()),
            Box::new(self.coalesced.clone()),
            Box::new(self.lag.clone()),
            Box::new(self.throttle_wait.clone()),
            Box::new(self.throttle_pauses.clone()),
            Box::new(self.throttle_paused_seconds.clone()),
            Box::new(self.throttle_in_flight.clone()),
            Box::new(self.stream_connections.clone()),
            Box::new(self.stream_reconnects.clone()),
            Box::new(self.stream_groups.clone()),
            Box::new(self.notifications.clone()),
            Box::new(self.crm_batches.clone()),
            Box::new(self.initial_remaining.clone()),
            Box::new(self.initial_running.clone()),
        ]
    }

    /// The names of every metric family (histograms as their base name), for checking that a
    /// dashboard queries only what exists.
    pub fn names(&self) -> Vec<String> {
        self.collectors()
            .iter()
            .flat_map(|c| {
                c.desc()
                    .into_iter()
                    .map(|d| d.fq_name.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Prepares the per-server series so they show (as zero) before the first event.
    pub fn register_server(&self, server: &str) {
        self.throttle_pauses.with_label_values(&[server]).inc_by(0);
        self.throttle_paused_seconds
            .with_label_values(&[server])
            .inc_by(0.0);
        self.throttle_in_flight.with_label_values(&[server]).set(0);
        self.throttle_wait.with_label_values(&[server]);
        self.stream_connections.with_label_values(&[server]).set(0);
        self.notifications.with_label_values(&[server]).inc_by(0);
        for mode in ["streaming", "polling"] {
            self.stream_groups.with_label_values(&[server, mode]).add(0);
        }
        for reason in ["renewal", "lost", "failed", "resubscribe", "members"] {
            self.stream_reconnects
                .with_label_values(&[server, reason])
                .inc_by(0);
        }
    }
}
