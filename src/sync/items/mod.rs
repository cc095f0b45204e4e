//! Contacts, calendar and tasks: one step of one folder, as read → plan → hold → execute.
//!
//! [`read`] gathers what changed on both sides into [`plan::Pair`]s (SyncFolderItems from the
//! stored state and GetItem for what is not our own echo; the rows the change feed queued;
//! the mappings), [`plan`] decides every pair without I/O, [`crate::sync::breaker`] holds
//! deletes above the mailbox's limits, and [`exec`] carries the rest out: Exchange first
//! (batched CreateItem / UpdateItem / DeleteItem), then the CRM, then the mappings and the
//! folder's new sync state.

pub(crate) mod exec;
mod held;
pub mod plan;
pub(crate) mod read;
mod stamp;
mod to_crm;

use std::collections::BTreeMap;
use std::time::Duration;

use mailsync_actors::{StepContext, SyncError};

use super::core::{db_error, Inner, MailboxSetup, Owner};
use super::events::{Action, Direction, ItemSynced};
use super::fields::Fields;
use crate::config::{Area, AreaConfig};
use crate::db::state::ItemMapping;

/// Folder key (in ms_folder_state) and runtime folder of the tenant's shared contacts.
pub const SHARED_CONTACTS: &str = "contacts/shared";
/// The base key that says a contact lives in the shared contacts folder.
const SHARED_MARK: &str = "_folder";
/// Rows handled per step from the queue; a fuller queue makes the step ask for another.
pub(crate) const QUEUE_BATCH: i64 = 500;
/// Items per GetItem / CreateItem / UpdateItem / DeleteItem request.
pub(crate) const ITEM_BATCH: usize = 100;
/// Unstamped imports that make a step write their stamps in a batch of their own (fewer wait
/// for the next UpdateItem of their folder, which carries them at no extra request).
pub(crate) const STAMP_BATCH: i64 = 50;

/// How a step treats records that are not paired yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Continuous sync: a new record on one side is created on the other.
    Continuous,
    /// The first contact of the two sides: records on both sides are linked by what they
    /// have in common (see [`crate::sync::matching`]) before anything is copied.
    Initial {
        /// Ambiguous records are synced as separate records (else left alone and reported).
        separate_ambiguous: bool,
    },
    /// `initial_sync = "none"`: the sides as they are now are the baseline; nothing that
    /// exists is copied, only later changes sync.
    Baseline,
}

/// The decoded base of a mapping, or why it cannot be used.
pub(crate) fn base_of(m: &ItemMapping) -> Result<(Fields, bool), String> {
    let mut base: Fields = serde_json::from_value(m.fields.clone()).map_err(|e| {
        format!(
            "the merge base of {} row {} is corrupt ({e}); the pair merges from nothing",
            m.crm_table, m.crm_id
        )
    })?;
    let shared = base.remove(SHARED_MARK).flatten().is_some();
    Ok((base, shared))
}

/// The stored form of a base.
pub(crate) fn base_json(fields: &Fields, shared: bool) -> serde_json::Value {
    let mut f = fields.clone();
    if shared {
        f.insert(SHARED_MARK.into(), Some("shared".into()));
    }
    serde_json::to_value(f).unwrap_or_default()
}

/// The planner's view of a mapping. A corrupt base is logged as such and taken as empty (the
/// pair then merges from nothing: a field the sides hold differently goes to the leader).
pub(crate) fn to_base(m: &ItemMapping) -> plan::Base {
    let (fields, shared) = base_of(m).unwrap_or_else(|e| {
        tracing::error!(mailbox = %m.mailbox, error = %e, "corrupt merge base");
        let shared = m.fields.get(SHARED_MARK).is_some_and(|v| !v.is_null());
        (Fields::new(), shared)
    });
    plan::Base {
        crm_id: m.crm_id,
        ews: ews::types::ItemId {
            id: m.ews_item_id.clone(),
            change_key: m.change_key.clone(),
        },
        crm_version: m.crm_version,
        fields,
        shared,
        stamped: m.stamped,
    }
}

/// One step's working set.
pub(crate) struct ItemStep<'a> {
    /// The engine.
    pub engine: &'a Inner,
    /// The mailbox.
    pub setup: &'a MailboxSetup,
    /// Its operator.
    pub owner: Owner,
    /// The area.
    pub area: Area,
    /// Its CRM table.
    pub table: &'static str,
    /// Leading system and filter (the initial sync overrides the leader).
    pub config: AreaConfig,
    /// Throttle and progress.
    pub ctx: &'a StepContext,
    /// How unpaired records are treated.
    pub mode: Mode,
    /// Writes made.
    pub items: u64,
    /// Writes by (direction, action), for summaries.
    pub counts: BTreeMap<(Direction, Action), u64>,
    /// Changes and queued rows looked at (progress).
    pub seen: u64,
    /// An update was refused as stale: a step with SyncFolderItems is due.
    pub needs_pull: bool,
    /// Deletes this step held.
    pub held: u64,
    /// When the step wants to run again by itself (a parked item's retry time).
    pub wake: Option<Duration>,
    /// Links made, by what they matched on (plan and summary).
    pub links: BTreeMap<String, u64>,
    /// Ambiguous records found (initial sync).
    pub ambiguous: Vec<crate::db::integrity::Ambiguous>,
    /// Items parked in this step (crm id, Exchange id).
    pub parked: std::collections::HashSet<(i64, String)>,
    /// Parked items this step retried (crm id, Exchange id).
    pub retried: Vec<(i64, String)>,
    /// The step listed the whole folder: every stamped item is known, no stamp search is
    /// needed before creating.
    pub listed_all: bool,
    /// `mailsync plan`: nothing is written anywhere (failures and ambiguous matches are
    /// collected here instead of recorded).
    pub dry_run: bool,
    /// What a dry run would have parked: (crm id, Exchange id, reason).
    pub would_park: Vec<(i64, String, String)>,
}

impl<'a> ItemStep<'a> {
    /// A step of `area` for a mailbox.
    pub fn new(
        engine: &'a Inner,
        setup: &'a MailboxSetup,
        owner: Owner,
        area: Area,
        config: AreaConfig,
        ctx: &'a StepContext,
        mode: Mode,
    ) -> Self {
        ItemStep {
            engine,
            setup,
            owner,
            area,
            table: super::fields::table(area),
            config,
            ctx,
            mode,
            items: 0,
            counts: BTreeMap::new(),
            seen: 0,
            needs_pull: false,
            held: 0,
            wake: None,
            links: BTreeMap::new(),
            ambiguous: Vec::new(),
            parked: Default::default(),
            retried: Vec::new(),
            listed_all: false,
            dry_run: false,
            would_park: Vec::new(),
        }
    }

    pub(crate) fn smtp(&self) -> &str {
        &self.setup.smtp
    }

    /// Counts a write (stamps and links only in the metrics: they are bookkeeping, not a
    /// record written).
    pub(crate) fn counted(&mut self, direction: Direction, action: Action) {
        if !matches!(action, Action::Stamp | Action::Link) {
            self.items += 1;
            *self.counts.entry((direction, action)).or_default() += 1;
        }
        ItemSynced {
            area: self.area.as_str(),
            direction,
            action,
        }
        .emit(&self.engine.metrics);
    }

    /// Folder key of the own or the shared folder.
    pub(crate) fn folder_key(&self, shared: bool) -> &'static str {
        if shared {
            SHARED_CONTACTS
        } else {
            self.area.as_str()
        }
    }

    /// Queues every CRM row of the scope, so the step reconciles all of them (full resync).
    pub async fn queue_all(&self) -> Result<(), SyncError> {
        let ids = self.ids_in_scope().await?;
        let items: Vec<(String, String, i64)> = ids
            .into_iter()
            .map(|id| (self.smtp().to_owned(), self.table.to_owned(), id))
            .collect();
        self.engine
            .state
            .add_pending(&items)
            .await
            .map_err(db_error)
    }

    /// The ids of every CRM row in the mailbox's scope (own rows, and the tenant's shared
    /// contacts).
    pub async fn ids_in_scope(&self) -> Result<Vec<i64>, SyncError> {
        let db = &self.engine.crm;
        let mut ids = db
            .ids_in_scope(
                self.table,
                Some(self.owner.operator_id),
                self.owner.tenant_id,
            )
            .await
            .map_err(db_error)?;
        if self.area == Area::Contacts {
            ids.extend(
                db.ids_in_scope(self.table, None, self.owner.tenant_id)
                    .await
                    .map_err(db_error)?,
            );
        }
        Ok(ids)
    }

    /// One step. `shared_only`: the shared contacts folder's own actor (Exchange → CRM only;
    /// the `contacts` actor writes every queued contact, so no row is written by two actors).
    /// Returns whether there is more to do at once.
    pub async fn run(
        &mut self,
        shared_only: bool,
        pull: bool,
        full: bool,
    ) -> Result<bool, SyncError> {
        let mut extra = Vec::new();
        if !shared_only {
            self.settle_held().await?;
            extra = self.retry_due().await?;
        }
        let mut more = self
            .sync(shared_only, pull || full || shared_only, full, extra)
            .await?;
        if !shared_only {
            self.stamp_waiting(false).await?;
        }
        self.clear_retried().await?;
        more |= self.needs_pull;
        self.wake = self.next_wake().await?;
        Ok(more)
    }

    /// When a parked failure of this mailbox is due, from now.
    async fn next_wake(&self) -> Result<Option<Duration>, SyncError> {
        let next = self
            .engine
            .state
            .next_failure_retry(self.smtp())
            .await
            .map_err(db_error)?;
        Ok(next.map(|at| {
            (at - chrono::Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_secs(1))
        }))
    }

    /// Parked items retried in this step that were not parked again: they synced (or there
    /// was nothing left to do for them), so they leave the failure log.
    async fn clear_retried(&mut self) -> Result<(), SyncError> {
        for (crm_id, ews_id) in std::mem::take(&mut self.retried) {
            if self.parked.contains(&(crm_id, ews_id.clone())) {
                continue;
            }
            self.engine
                .state
                .clear_failure(self.smtp(), self.table, crm_id, &ews_id)
                .await
                .map_err(db_error)?;
        }
        Ok(())
    }
}
