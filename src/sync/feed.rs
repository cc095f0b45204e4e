//! The CRM change feed: the service's implementation of the runtime's `CrmPort`.
//!
//! Reads crm_changes after its cursor, decides which mailboxes each change concerns (the
//! owner's; for a shared contact every mailbox of its tenant with contacts; and every mailbox
//! that holds a mapping of the row, so a row that moved to another owner or was deleted
//! leaves the mailbox it was in), queues the rows for them (ms_pending), and only then moves
//! the cursor: a crash repeats a batch, it never loses one. A change a mailbox's own step made
//! (`origin`, src/cluster/fence.rs) is not queued back to that mailbox when the mailbox's
//! mapping already holds the row's current version — its step stored what it wrote — so an
//! import of 100,000 rows does not come back as 100,000 steps' worth of work ahead of the
//! users' next changes.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use mailsync_actors::{CrmPort, FolderId, MailboxId, SyncError};
use parking_lot::RwLock;

use crate::config::Area;
use crate::db::changes::ChangeSignal;
use crate::db::{Db, DbError};

/// The cursor name of the feed in ms_cursor.
pub const CURSOR: &str = "crm-feed";
const BATCH: i64 = 1000;

/// Who gets what.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    /// crm_operators.id to the operator's mailbox.
    pub by_operator: HashMap<i64, MailboxId>,
    /// Tenant to its mailboxes with contacts enabled (they get the shared contacts).
    pub shared_contacts: HashMap<i64, Vec<MailboxId>>,
    /// The areas each mailbox syncs.
    pub areas: HashMap<MailboxId, BTreeSet<Area>>,
}

struct Inner {
    crm: Db,
    state: Db,
    routes: RwLock<Routes>,
    signal: tokio::sync::Mutex<Option<ChangeSignal>>,
    poll: Duration,
}

/// The feed; cheap to clone.
#[derive(Clone)]
pub struct Feed(Arc<Inner>);

/// Per changed row (table, id): the mailboxes mapping it, with the CRM version each mapping
/// holds.
type Mapped = HashMap<(String, i64), Vec<(String, Option<i64>)>>;

fn area_of_table(table: &str) -> Option<Area> {
    match table {
        "crm_contacts" => Some(Area::Contacts),
        "crm_appointments" => Some(Area::Calendar),
        "crm_tasks" => Some(Area::Tasks),
        "crm_mail_folders" | "crm_mails" | "crm_outbox" => Some(Area::Mail),
        _ => None,
    }
}

fn db_error(e: DbError) -> SyncError {
    SyncError::Transient(e.to_string())
}

impl Feed {
    /// A feed over the business database, queueing into the state store; `poll` is how often
    /// SQLite (which cannot notify) is read.
    pub fn new(crm: Db, state: Db, routes: Routes, poll: Duration) -> Self {
        Feed(Arc::new(Inner {
            crm,
            state,
            routes: RwLock::new(routes),
            signal: tokio::sync::Mutex::new(None),
            poll,
        }))
    }

    /// Replaces the routing (reload).
    pub fn set_routes(&self, routes: Routes) {
        *self.0.routes.write() = routes;
    }

    /// Whether the feed has a position: its cursor was stored once. Only a cursor never
    /// stored is new: one stored at the start of a log that was empty then (a fresh
    /// installation) is a position, and a second start (a restart, or the next reader of a
    /// cluster) must read what was logged since, not skip it.
    pub async fn has_position(&self) -> Result<bool, DbError> {
        self.0.state.cursor_exists(CURSOR).await
    }

    /// Starts the feed at the end of the log unless it already has a position
    /// ([`Feed::has_position`]). Everything before is covered by the first steps, which
    /// reconcile from their stored state, so it must be called before any mailbox's first
    /// step reads the CRM (a single instance: before its supervisor starts; a cluster: no
    /// mailbox is taken before the feed has a position).
    pub async fn start_at_end_if_new(&self) -> Result<(), DbError> {
        let inner = &self.0;
        if self.has_position().await? {
            return Ok(());
        }
        let mut last = Default::default();
        loop {
            let batch = inner.crm.changes_after(last, 10_000).await?;
            match batch.last() {
                Some(c) => last = c.cursor,
                None => break,
            }
        }
        inner.state.advance_cursor(CURSOR, last).await
    }

    /// Reads one batch, queues it and moves the cursor; returns the folders to trigger, or
    /// `None` when the log had nothing new.
    pub async fn poll_once(&self) -> Result<Option<Vec<(MailboxId, FolderId)>>, SyncError> {
        let inner = &self.0;
        let cursor = inner.state.cursor(CURSOR).await.map_err(db_error)?;
        let changes = inner
            .crm
            .changes_after(cursor, BATCH)
            .await
            .map_err(db_error)?;
        let Some(last) = changes.last().map(|c| c.cursor) else {
            return Ok(None);
        };
        let mut by_table: HashMap<&str, Vec<i64>> = HashMap::new();
        for c in &changes {
            if area_of_table(&c.table).is_some() {
                by_table.entry(c.table.as_str()).or_default().push(c.row_id);
            }
        }
        let mut mapped: Mapped = HashMap::new();
        // The rows' current versions, read only where a change has an origin.
        let mut current: HashMap<(String, i64), i64> = HashMap::new();
        for (table, ids) in &by_table {
            for (mailbox, id, version) in inner
                .state
                .mapped_mailboxes(table, ids)
                .await
                .map_err(db_error)?
            {
                mapped
                    .entry(((*table).to_owned(), id))
                    .or_default()
                    .push((mailbox, version));
            }
            let own: Vec<i64> = changes
                .iter()
                .filter(|c| c.table == *table && c.origin.is_some())
                .map(|c| c.row_id)
                .collect();
            if !own.is_empty() {
                // Screening is an optimisation: if the versions cannot be read, every own
                // change is queued (an empty step each), and the feed goes on.
                match inner.crm.row_versions(table, &own).await {
                    Ok(versions) => {
                        for (id, version) in versions {
                            current.insert(((*table).to_owned(), id), version);
                        }
                    }
                    Err(e) => tracing::warn!(
                        table,
                        error = %e,
                        "change feed: cannot read the changed rows' versions; queueing this batch's own changes too"
                    ),
                }
            }
        }
        let mut queue: BTreeSet<(String, String, i64)> = BTreeSet::new();
        {
            let routes = inner.routes.read();
            for c in &changes {
                let Some(area) = area_of_table(&c.table) else {
                    continue;
                };
                let mut targets: Vec<MailboxId> = Vec::new();
                match (c.owner_id, c.tenant_id) {
                    (Some(owner), _) => targets.extend(routes.by_operator.get(&owner).cloned()),
                    (None, Some(tenant)) if area == Area::Contacts => targets.extend(
                        routes
                            .shared_contacts
                            .get(&tenant)
                            .cloned()
                            .unwrap_or_default(),
                    ),
                    _ => {}
                }
                targets.retain(|m| routes.areas.get(m).is_some_and(|a| a.contains(&area)));
                // A mailbox's own write is not queued back to it when its mapping already
                // holds the row as it is now (the step stored the version it wrote); every
                // other mailbox still gets it. A change the write caused that the step did
                // not store — a CRM trigger's or a cascade's, in the same transaction and so
                // with the same origin — finds no mapping, an older version or no row, and
                // is queued.
                let key = (c.table.clone(), c.row_id);
                let known = |m: &str| {
                    mapped.get(&key).is_some_and(|v| {
                        v.iter().any(|(mb, version)| {
                            mb.eq_ignore_ascii_case(m)
                                && version.is_some()
                                && *version == current.get(&key).copied()
                        })
                    })
                };
                let own = |m: &str| {
                    c.origin
                        .as_deref()
                        .is_some_and(|o| o.eq_ignore_ascii_case(m))
                        && known(m)
                };
                for mailbox in targets {
                    if !own(&mailbox) {
                        queue.insert((mailbox.to_string(), c.table.clone(), c.row_id));
                    }
                }
                for (mailbox, _) in mapped.get(&key).into_iter().flatten() {
                    if !own(mailbox) {
                        queue.insert((mailbox.clone(), c.table.clone(), c.row_id));
                    }
                }
            }
        }
        let items: Vec<(String, String, i64)> = queue.into_iter().collect();
        inner.state.add_pending(&items).await.map_err(db_error)?;
        inner
            .state
            .advance_cursor(CURSOR, last)
            .await
            .map_err(db_error)?;
        let folders: BTreeSet<(String, &'static str)> = items
            .iter()
            .filter_map(|(m, t, _)| area_of_table(t).map(|a| (m.clone(), a.as_str())))
            .collect();
        Ok(Some(
            folders
                .into_iter()
                .map(|(m, f)| (MailboxId::from(m), FolderId::from(f)))
                .collect(),
        ))
    }
}

impl CrmPort for Feed {
    fn next_changes(&self) -> BoxFuture<'static, Result<Vec<(MailboxId, FolderId)>, SyncError>> {
        let feed = self.clone();
        Box::pin(async move {
            loop {
                match feed.poll_once().await? {
                    Some(folders) if !folders.is_empty() => return Ok(folders),
                    // Changes of other tables: read on at once.
                    Some(_) => continue,
                    None => {}
                }
                feed.wait_for_changes().await?;
            }
        })
    }
}

impl Feed {
    /// Waits for the business database to signal a change (NOTIFY, or the polling interval
    /// where it cannot notify), at most 5 s.
    pub async fn wait_for_changes(&self) -> Result<(), SyncError> {
        let mut signal = self.0.signal.lock().await;
        if signal.is_none() {
            *signal = Some(
                ChangeSignal::new(&self.0.crm, self.0.poll)
                    .await
                    .map_err(db_error)?,
            );
        }
        if let Some(s) = signal.as_mut() {
            s.wait(Duration::from_secs(5)).await;
        }
        Ok(())
    }
}

/// The folder a queued row of `table` wakes (the cluster's followers read ms_pending).
pub fn folder_of_table(table: &str) -> Option<FolderId> {
    area_of_table(table).map(|a| FolderId::from(a.as_str()))
}
