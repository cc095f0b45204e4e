//! The cluster's metrics: plain gauges and counters without labels (each instance exports
//! its own; Prometheus adds the scrape target), registered whether or not `[cluster]` is on,
//! so dashboards and alerts can name them everywhere.

use prometheus::{IntCounter, IntGauge, Registry};

/// Membership and lease metrics.
#[derive(Clone, Debug)]
pub struct ClusterMetrics {
    /// `mailsync_cluster_instances_live`: instances with a fresh heartbeat, this one included
    /// (0 outside a cluster).
    pub instances_live: IntGauge,
    /// `mailsync_cluster_mailboxes_owned`: mailboxes whose lease this instance holds.
    pub mailboxes_owned: IntGauge,
    /// `mailsync_cluster_feed_reader`: 1 while this instance reads the CRM change feed.
    pub feed_reader: IntGauge,
    /// `mailsync_cluster_lease_takeovers_total`: leases acquired that another instance held
    /// before (expired or handed over).
    pub takeovers: IntCounter,
    /// `mailsync_cluster_leases_lost_total`: leases found taken by another instance at
    /// renewal (this instance was paused or cut off); the mailbox stopped at once.
    pub lost: IntCounter,
}

/// The family names, for dashboards' and alerts' checks.
pub const NAMES: [&str; 5] = [
    "mailsync_cluster_instances_live",
    "mailsync_cluster_mailboxes_owned",
    "mailsync_cluster_feed_reader",
    "mailsync_cluster_lease_takeovers_total",
    "mailsync_cluster_leases_lost_total",
];

impl ClusterMetrics {
    /// Creates and registers them.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = ClusterMetrics {
            instances_live: IntGauge::new(NAMES[0], "Cluster instances with a fresh heartbeat, this one included (0 without [cluster]).")?,
            mailboxes_owned: IntGauge::new(NAMES[1], "Mailboxes whose lease this instance holds.")?,
            feed_reader: IntGauge::new(NAMES[2], "1 while this instance holds the CRM change feed's lease and reads it.")?,
            takeovers: IntCounter::new(NAMES[3], "Leases this instance acquired that another instance held before (expired or handed over).")?,
            lost: IntCounter::new(NAMES[4], "Leases found taken by another instance at renewal (this one was paused or cut off); the mailbox stopped at once.")?,
        };
        registry.register(Box::new(m.instances_live.clone()))?;
        registry.register(Box::new(m.mailboxes_owned.clone()))?;
        registry.register(Box::new(m.feed_reader.clone()))?;
        registry.register(Box::new(m.takeovers.clone()))?;
        registry.register(Box::new(m.lost.clone()))?;
        Ok(m)
    }
}
