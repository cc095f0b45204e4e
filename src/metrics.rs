//! The service's Prometheus metrics, and the registry that holds them with the runtime's.
//!
//! Names follow `mailsync_<subsystem>_<name>_<unit>`; label values come from fixed sets
//! (listed in each help text): EWS operation names, error classes, data areas, directions,
//! actions, resolutions. No mailbox address or error text is ever a label value.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

// The label values of items and failures are the engine's event enums, and so are the help
// texts that list them: one list, which cannot drift from what is emitted.
use crate::sync::events::{Action, FailureKind, FAILURES_HELP, ITEMS_HELP};

/// Data areas (the `area` label).
pub const AREAS: [&str; 4] = ["contacts", "calendar", "tasks", "mail"];
/// Directions (the `direction` label).
pub const DIRECTIONS: [&str; 2] = ["to_exchange", "to_crm"];
/// Conflict resolutions (the `resolution` label).
pub const RESOLUTIONS: [&str; 3] = ["merged", "crm_wins", "exchange_wins"];
/// What the retention job prunes (the `kind` label of `mailsync_retention_pruned_rows_total`).
pub const PRUNED_KINDS: [&str; 3] = ["changes", "conflicts", "mailbox_state"];

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// What the sync engine and the EWS client emit.
#[derive(Clone, Debug)]
pub struct ServiceMetrics {
    /// `mailsync_ews_requests_total{operation,outcome}`.
    pub ews_requests: IntCounterVec,
    /// `mailsync_ews_request_duration_seconds{operation}`.
    pub ews_duration: HistogramVec,
    /// `mailsync_items_synced_total{area,direction,action}`.
    pub items: IntCounterVec,
    /// `mailsync_conflicts_total{area,resolution}`.
    pub conflicts: IntCounterVec,
    /// `mailsync_failures_total{area,kind}`.
    pub failures: IntCounterVec,
    /// `mailsync_build_info{version}`: always 1.
    pub build_info: IntGaugeVec,
    /// `mailsync_failures_parked{area}`: entries in the failure log now (refreshed by the
    /// maintenance job every 30 s).
    pub failures_parked: IntGaugeVec,
    /// `mailsync_held_deletes{server,area}`: deletes held for approval now (set by the
    /// delete breaker).
    pub held_deletes: IntGaugeVec,
    /// `mailsync_retention_pruned_rows_total{kind}`: rows the retention job deleted.
    pub pruned: IntCounterVec,
}

impl ServiceMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = ServiceMetrics {
            ews_requests: IntCounterVec::new(
                Opts::new("mailsync_ews_requests_total", "EWS requests by operation (GetItem, SyncFolderItems, …) and outcome (ok, throttled, transient, invalid_sync_state, subscription_gone, conflict, not_found, unauthorized, denied, malformed, error, request, http_error)."),
                &["operation", "outcome"],
            )?,
            ews_duration: HistogramVec::new(
                HistogramOpts::new("mailsync_ews_request_duration_seconds", "EWS request duration by operation (for GetStreamingEvents: until the connection is established).")
                    .buckets(LATENCY_BUCKETS.to_vec()),
                &["operation"],
            )?,
            items: IntCounterVec::new(
                Opts::new("mailsync_items_synced_total", ITEMS_HELP),
                &["area", "direction", "action"],
            )?,
            conflicts: IntCounterVec::new(
                Opts::new("mailsync_conflicts_total", "Items changed on both sides, by area (contacts, calendar, tasks, mail) and resolution (merged, crm_wins, exchange_wins)."),
                &["area", "resolution"],
            )?,
            failures: IntCounterVec::new(
                Opts::new("mailsync_failures_total", FAILURES_HELP),
                &["area", "kind"],
            )?,
            build_info: IntGaugeVec::new(Opts::new("mailsync_build_info", "Always 1; the version label says which build runs."), &["version"])?,
            failures_parked: IntGaugeVec::new(
                Opts::new("mailsync_failures_parked", "Items in the failure log now, by area (contacts, calendar, tasks, mail)."),
                &["area"],
            )?,
            held_deletes: IntGaugeVec::new(
                Opts::new("mailsync_held_deletes", "Deletes held for an administrator's approval now, by server and area (contacts, calendar, tasks, mail)."),
                &["server", "area"],
            )?,
            pruned: IntCounterVec::new(
                Opts::new("mailsync_retention_pruned_rows_total", "Rows deleted by the retention job, by kind (changes, conflicts, mailbox_state)."),
                &["kind"],
            )?,
        };
        registry.register(Box::new(m.ews_requests.clone()))?;
        registry.register(Box::new(m.ews_duration.clone()))?;
        registry.register(Box::new(m.items.clone()))?;
        registry.register(Box::new(m.conflicts.clone()))?;
        registry.register(Box::new(m.failures.clone()))?;
        registry.register(Box::new(m.build_info.clone()))?;
        registry.register(Box::new(m.failures_parked.clone()))?;
        registry.register(Box::new(m.held_deletes.clone()))?;
        registry.register(Box::new(m.pruned.clone()))?;
        for kind in PRUNED_KINDS {
            m.pruned.with_label_values(&[kind]).inc_by(0);
        }
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for area in AREAS {
            for direction in DIRECTIONS {
                for action in Action::ALL {
                    m.items
                        .with_label_values(&[area, direction, action.as_str()])
                        .inc_by(0);
                }
            }
            for resolution in RESOLUTIONS {
                m.conflicts.with_label_values(&[area, resolution]).inc_by(0);
            }
            for kind in FailureKind::ALL {
                m.failures
                    .with_label_values(&[area, kind.as_str()])
                    .inc_by(0);
            }
            m.failures_parked.with_label_values(&[area]).set(0);
        }
        m.ews_requests
            .with_label_values(&["SyncFolderItems", "ok"])
            .inc_by(0);
        m.ews_duration.with_label_values(&["SyncFolderItems"]);
        Ok(m)
    }

    /// Prepares a server's per-area series so they show (as zero) before the first event.
    pub fn register_server(&self, server: &str) {
        for area in AREAS {
            self.held_deletes.with_label_values(&[server, area]).add(0);
        }
    }

    /// The metric family names this struct exports.
    pub fn names() -> Vec<&'static str> {
        vec![
            "mailsync_ews_requests_total",
            "mailsync_ews_request_duration_seconds",
            "mailsync_items_synced_total",
            "mailsync_conflicts_total",
            "mailsync_failures_total",
            "mailsync_build_info",
            "mailsync_failures_parked",
            "mailsync_held_deletes",
            "mailsync_retention_pruned_rows_total",
        ]
    }
}

/// Counts every EWS request the client makes (plug into `ews::ClientConfig::observer`).
#[derive(Debug, Clone)]
pub struct EwsObserver(pub ServiceMetrics);

impl ews::Observer for EwsObserver {
    fn request_done(&self, operation: &'static str, outcome: &'static str, elapsed: Duration) {
        self.0
            .ews_requests
            .with_label_values(&[operation, outcome])
            .inc();
        self.0
            .ews_duration
            .with_label_values(&[operation])
            .observe(elapsed.as_secs_f64());
    }
}

/// Every metric of the process, in one registry served at /metrics.
#[derive(Clone)]
pub struct Telemetry {
    /// The registry.
    pub registry: Registry,
    /// The actor runtime's metrics.
    pub runtime: mailsync_actors::Metrics,
    /// The service's own.
    pub service: ServiceMetrics,
    /// Membership and leases (src/cluster).
    pub cluster: crate::cluster::ClusterMetrics,
}

impl Telemetry {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let runtime =
            mailsync_actors::Metrics::new(&registry).expect("runtime metrics have unique names");
        let service = ServiceMetrics::new(&registry).expect("service metrics have unique names");
        let cluster = crate::cluster::ClusterMetrics::new(&registry)
            .expect("cluster metrics have unique names");
        Telemetry {
            registry,
            runtime,
            service,
            cluster,
        }
    }

    /// An observer for the EWS client.
    pub fn ews_observer(&self) -> Arc<dyn ews::Observer> {
        Arc::new(EwsObserver(self.service.clone()))
    }

    /// Every metric family name the process exports.
    pub fn names(&self) -> Vec<String> {
        let mut names = self.runtime.names();
        names.extend(ServiceMetrics::names().into_iter().map(str::to_owned));
        names.extend(crate::cluster::metrics::NAMES.map(str::to_owned));
        names
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_else(|e| format!("# encoding metrics failed: {e}\n"))
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_family_is_rendered_and_no_label_value_is_unbounded() {
        let t = Telemetry::new();
        t.runtime.register_server("ex1");
        t.service.register_server("ex1");
        ews::Observer::request_done(
            &EwsObserver(t.service.clone()),
            "GetItem",
            "throttled",
            Duration::from_millis(20),
        );
        let text = t.render();
        for name in t.names() {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} is not exported"
            );
        }
        assert!(text
            .contains(r#"mailsync_ews_requests_total{operation="GetItem",outcome="throttled"} 1"#));
        assert!(!text.contains('@'), "an address leaked into a label");
    }

    /// Every family has a help text that says more than its name, and lists every value of
    /// its bounded labels that a series carries (the series exist from the start, as zero).
    #[test]
    fn every_help_text_explains_the_metric_and_lists_its_label_values() {
        let t = Telemetry::new();
        t.runtime.register_server("ex1");
        t.service.register_server("ex1");
        // Labels whose values are not a fixed set: servers, EWS operations, the version, and
        // histogram buckets.
        let open = ["server", "operation", "version", "le"];
        let mut checked = 0;
        let mut unlisted = std::collections::BTreeSet::new();
        for family in t.registry.gather() {
            let (name, help) = (family.name(), family.help());
            let words = help.split_whitespace().count();
            assert!(
                words >= 4 && !help.contains(name),
                "{name}: help {help:?} does not explain the metric"
            );
            for metric in family.get_metric() {
                for label in metric.get_label() {
                    if open.contains(&label.name()) {
                        continue;
                    }
                    let value = label.value();
                    let listed = help
                        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .any(|w| w == value);
                    if !listed {
                        unlisted.insert(format!("{name}: {}={value:?}", label.name()));
                    }
                    checked += 1;
                }
            }
        }
        assert!(unlisted.is_empty(), "not in the help text: {unlisted:#?}");
        assert!(checked > 100, "only {checked} label values seen");
        for action in Action::ALL {
            assert!(
                t.render()
                    .contains(&format!("action=\"{}\"", action.as_str())),
                "{action:?} has no series"
            );
        }
    }
}
