//! Timing and sizing of the runtime. The service fills these from its configuration;
//! `Default` holds the values a production installation starts with.

use std::time::Duration;

use crate::backoff::Backoff;

/// How the runtime schedules, retries and supervises.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeSettings {
    /// Arbiters (threads) the mailbox actors are spread over; 0 runs everything on the
    /// caller's arbiter (tests under paused time).
    pub arbiters: usize,
    /// Mailboxes opening and running their first steps at once, so a (re)start storm cannot
    /// hammer Exchange.
    pub max_concurrent_starts: usize,
    /// Back-off between retries of a step that failed transiently.
    pub step_retry: Backoff,
    /// Back-off before restarting a failed folder or mailbox.
    pub restart: Backoff,
    /// Back-off before retrying a mailbox whose credentials or impersonation were refused.
    pub denied_retry: Backoff,
    /// A mailbox that ran this long without failing starts its back-off from the beginning.
    pub healthy_after: Duration,
    /// A step (or a mailbox opening) without a sign of life this long is cancelled.
    pub stall_timeout: Duration,
    /// Full resyncs in a row answered with an invalid sync state before the folder restarts.
    pub max_resyncs: u32,
    /// How long a graceful stop waits for running steps before cancelling them.
    pub stop_timeout: Duration,
    /// Streaming notifications.
    pub stream: StreamSettings,
    /// Every folder is read once in about this interval (jittered between half and one and a
    /// half times it) even when no notification says so: a safety net against a missed
    /// notification. `None`: never.
    pub safety_read: Option<Duration>,
}

/// How stream groups hold their connections, for every server alike. Group size, connection
/// lifetime and polling interval are per server ([`crate::ServerStreaming`] in each
/// [`crate::ServerSpec`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSettings {
    /// A new connection is opened this long before the old one's timeout, so there is no gap.
    pub renew_before: Duration,
    /// A connection silent for this long (no event, no heartbeat) counts as lost.
    pub heartbeat_timeout: Duration,
    /// Failed connection attempts in a row before the group polls.
    pub failures_before_polling: u32,
    /// Back-off between attempts to (re)connect.
    pub retry: Backoff,
    /// Joins and leaves within this window are applied with one new connection.
    pub join_delay: Duration,
    /// A live connection is replaced for new members at most this often: while many
    /// mailboxes start, their subscriptions gather and one connection carries them, instead
    /// of a new connection per join wave (each one a hanging connection Exchange counts
    /// until it notices the old one is gone). New members' events wait on their
    /// subscription meanwhile; nothing is lost.
    pub min_reopen: Duration,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            arbiters: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_concurrent_starts: 32,
            step_retry: Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
            restart: Backoff::new(Duration::from_secs(1), Duration::from_secs(600)),
            denied_retry: Backoff::new(Duration::from_secs(300), Duration::from_secs(3600)),
            healthy_after: Duration::from_secs(300),
            stall_timeout: Duration::from_secs(300),
            max_resyncs: 3,
            stop_timeout: Duration::from_secs(30),
            stream: StreamSettings::default(),
            safety_read: Some(Duration::from_secs(6 * 3600)),
        }
    }
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            renew_before: Duration::from_secs(60),
            heartbeat_timeout: Duration::from_secs(75),
            failures_before_polling: 3,
            retry: Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
            join_delay: Duration::from_millis(200),
            min_reopen: Duration::from_secs(5),
        }
    }
}
