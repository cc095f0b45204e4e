//! The maintenance job of `mailsync run`: retention (see [`crate::db::retention`]) at start
//! and then every `retention.interval`, and the `mailsync_failures_parked` gauge every
//! [`GAUGE_EVERY`]. It runs as one task the service watches and stops at shutdown; a failed
//! pass is logged and tried again at the next tick, never fatal.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use parking_lot::RwLock;
use tokio::sync::watch;

use crate::config::RetentionConfig;
use crate::db::journal::area_of_table;
use crate::db::retention::Pruned;
use crate::db::{Db, DbError};
use crate::metrics::{ServiceMetrics, AREAS};
use crate::sync::feed::CURSOR;

/// How often the parked-failures gauge is refreshed.
pub const GAUGE_EVERY: Duration = Duration::from_secs(30);

/// What the job works on. Cheap to clone.
#[derive(Clone)]
pub struct Maintenance {
    /// The business database (crm_changes).
    crm: Db,
    /// The state store (cursor, conflict log, failures, mailbox state).
    state: Db,
    /// How long things are kept and how often the job runs.
    retention: RetentionConfig,
    /// The mailboxes configured now (replaced on reload), whose state is never pruned.
    configured: Arc<RwLock<Vec<String>>>,
    /// Where the gauge and the pruned counts go.
    metrics: ServiceMetrics,
    /// The server of each configured mailbox (the held-deletes gauge is per server).
    servers: Arc<RwLock<std::collections::HashMap<String, String>>>,
    /// The held-deletes series set by the last refresh: a series no refresh sets any more
    /// (its server left the configuration) is removed, never left at its last value.
    held_series: Arc<parking_lot::Mutex<std::collections::BTreeSet<(String, &'static str)>>>,
}

/// A running job; dropping it does not stop it, [`Running::stop`] does.
pub struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops the job after the pass in progress, if any.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the maintenance job ended abnormally");
        }
    }
}

impl Maintenance {
    /// A job over these databases.
    pub fn new(
        crm: Db,
        state: Db,
        retention: RetentionConfig,
        configured: Vec<String>,
        metrics: ServiceMetrics,
    ) -> Self {
        Maintenance {
            crm,
            state,
            retention,
            configured: Arc::new(RwLock::new(normalise(configured))),
            metrics,
            servers: Arc::default(),
            held_series: Arc::default(),
        }
    }

    /// Replaces the mailbox → server map (startup and reload).
    pub fn set_servers(&self, servers: impl IntoIterator<Item = (String, String)>) {
        *self.servers.write() = servers
            .into_iter()
            .map(|(m, s)| (m.to_lowercase(), s))
            .collect();
    }

    /// Replaces the list of configured mailboxes (after a reload).
    pub fn set_configured(&self, mailboxes: Vec<String>) {
        *self.configured.write() = normalise(mailboxes);
    }

    /// One retention pass: notes the configured mailboxes, then prunes what is older than
    /// the retention.
    pub async fn prune_once(&self) -> Result<Pruned, DbError> {
        let configured = self.configured.read().clone();
        let cutoff = Utc::now()
            - chrono::Duration::from_std(self.retention.keep)
                .unwrap_or_else(|_| chrono::Duration::days(3650));
        self.state.mark_configured(&configured).await?;
        let cursor = self.state.cursor(CURSOR).await?;
        let changes = self.crm.prune_changes(cursor, cutoff).await?;
        let conflicts = self.state.prune_conflicts(cutoff).await?;
        let (mailboxes, mailbox_rows) = self
            .state
            .prune_removed_mailboxes(&configured, cutoff)
            .await?;
        for (kind, n) in [
            ("changes", changes),
            ("conflicts", conflicts),
            ("mailbox_state", mailbox_rows),
        ] {
            self.metrics.pruned.with_label_values(&[kind]).inc_by(n);
        }
        Ok(Pruned {
            changes,
            conflicts,
            mailboxes,
            mailbox_rows,
        })
    }

    /// Sets `mailsync_failures_parked{area}` from the failure log and
    /// `mailsync_held_deletes{server,area}` from the held deletes.
    pub async fn refresh_gauges(&self) -> Result<(), DbError> {
        let held = self.state.held_counts().await?;
        let servers = self.servers.read().clone();
        let mut totals: std::collections::BTreeMap<(String, &str), i64> = Default::default();
        for server in servers.values() {
            for area in AREAS {
                totals.insert((server.clone(), area), 0);
            }
        }
        for (mailbox, table, n) in held {
            // A mailbox no longer configured has no server label; its held deletes stay in
            // the store and the API, not in the gauge.
            if let Some(server) = servers.get(&mailbox) {
                let area = AREAS
                    .iter()
                    .copied()
                    .find(|a| *a == area_of_table(&table))
                    .unwrap_or("contacts");
                *totals.entry((server.clone(), area)).or_default() += n;
            }
        }
        let gone: Vec<(String, &'static str)> = {
            let mut shown = self.held_series.lock();
            let gone = shown
                .iter()
                .filter(|k| !totals.contains_key(*k))
                .cloned()
                .collect();
            *shown = totals.keys().cloned().collect();
            gone
        };
        for (server, area) in gone {
            let _ = self
                .metrics
                .held_deletes
                .remove_label_values(&[&server, area]);
        }
        for ((server, area), n) in totals {
            self.metrics
                .held_deletes
                .with_label_values(&[&server, area])
                .set(n);
        }
        let counts = self.state.failure_counts().await?;
        for area in AREAS {
            let n: i64 = counts
                .iter()
                .filter(|(table, _)| area_of_table(table) == area)
                .map(|(_, n)| n)
                .sum();
            self.metrics
                .failures_parked
                .with_label_values(&[area])
                .set(n);
        }
        Ok(())
    }

    /// Starts the job: a retention pass now and every interval, the gauge every
    /// [`GAUGE_EVERY`].
    pub fn spawn(self) -> Running {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut prune = tokio::time::interval(self.retention.interval);
            let mut gauge = tokio::time::interval(GAUGE_EVERY);
            prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            gauge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stopped.changed() => return,
                    _ = prune.tick() => match self.prune_once().await {
                        Ok(p) => tracing::info!(
                            changes = p.changes,
                            conflicts = p.conflicts,
                            removed_mailboxes = p.mailboxes.len(),
                            mailbox_rows = p.mailbox_rows,
                            "retention pass done"
                        ),
                        Err(e) => tracing::warn!(error = %e, "retention pass failed; tried again at the next interval"),
                    },
                    _ = gauge.tick() => {
                        if let Err(e) = self.refresh_gauges().await {
                            tracing::warn!(error = %e, "counting parked failures failed");
                        }
                    }
                }
            }
        });
        Running { stop, task }
    }
}

fn normalise(mut mailboxes: Vec<String>) -> Vec<String> {
    for m in &mut mailboxes {
        *m = m.to_lowercase();
    }
    mailboxes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::integrity::{Held, Side};
    use crate::db::MigrationSet;

    /// After a hold is decided and carried out the series shows 0; a server that left the
    /// configuration loses its series instead of keeping its last value.
    #[tokio::test]
    async fn the_held_deletes_gauge_follows_the_store_and_the_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("state.db").display());
        let state = Db::connect(&url, 1).await.unwrap();
        state.migrate(MigrationSet::State).await.unwrap();
        let telemetry = crate::metrics::Telemetry::new();
        let m = Maintenance::new(
            state.clone(),
            state.clone(),
            RetentionConfig {
                keep: Duration::from_secs(86_400),
                interval: Duration::from_secs(3600),
            },
            vec!["a@example.com".into()],
            telemetry.service.clone(),
        );
        m.set_servers([("a@example.com".to_string(), "ex1".to_string())]);
        let held: Vec<Held> = (1..=3)
            .map(|id| Held {
                mailbox: "a@example.com".into(),
                crm_table: "crm_contacts".into(),
                scope: "own".into(),
                side: Side::Crm,
                crm_id: id,
                ews_item_id: format!("AAMk{id}"),
                title: format!("Kunde {id}"),
                decision: None,
            })
            .collect();
        state.hold(&held).await.unwrap();
        let series = |server: &str| {
            telemetry
                .render()
                .lines()
                .find(|l| {
                    l.starts_with(&format!(
                        "mailsync_held_deletes{{area=\"contacts\",server=\"{server}\"}}"
                    ))
                })
                .map(|l| l.rsplit(' ').next().unwrap().to_owned())
        };
        m.refresh_gauges().await.unwrap();
        assert_eq!(series("ex1").as_deref(), Some("3"));
        // Decided and carried out: the step releases the entries; the series shows 0.
        state
            .release_held("a@example.com", "crm_contacts", &[1, 2, 3])
            .await
            .unwrap();
        m.refresh_gauges().await.unwrap();
        assert_eq!(series("ex1").as_deref(), Some("0"));
        // Held again, then the mailbox moves to another server (a reload): the old server's
        // series goes.
        state.hold(&held).await.unwrap();
        m.refresh_gauges().await.unwrap();
        m.set_servers([("a@example.com".to_string(), "ex2".to_string())]);
        m.refresh_gauges().await.unwrap();
        assert_eq!(series("ex2").as_deref(), Some("3"));
        assert_eq!(series("ex1"), None, "{}", telemetry.render());
    }
}
