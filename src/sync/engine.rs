//! The sync engine for contacts, calendar and tasks: the service's implementation of the
//! runtime's `SyncPort`.
//!
//! One step of a folder: (1) Exchange to CRM — SyncFolderItems (ids only) from the stored
//! state, GetItem for what changed (skipping items whose ChangeKey is the one we wrote: echo
//! suppression), three-way merge against the last synced base, write whichever side lost a
//! change; deletes in Exchange delete the CRM row unless the CRM changed it and leads.
//! (2) CRM to Exchange — the rows the change feed queued for the mailbox (ms_pending): rows
//! whose version is the one we wrote are echoes; changed rows are merged and written with
//! UpdateItem (only the changed fields), new rows are linked by their stamped CRM id if a
//! crash left them in Exchange, else created (batched), rows deleted, moved to another owner or
//! no longer matching the filter are deleted from Exchange. Every write is committed with its
//! mapping before the step ends; a crash at any point repeats work but never duplicates it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use ews::items::Item;
use ews::ops::{
    ConflictResolution, CreateFolder, CreateItem, DeleteItem, DeleteType, FindFolder, FindItem,
    GetFolder, GetItem, ItemUpdate, Operation, Restriction, SyncFolderItems, Traversal, UpdateItem,
    View,
};
use ews::types::{DistinguishedFolder, FolderRef, ItemId, Shape};
use futures_util::future::BoxFuture;
use mailsync_actors::{
    FolderId, MailboxSpec, StepContext, StepReport, StepRequest, SyncError, SyncPort,
};
use parking_lot::RwLock;

use super::fields::{self, Fields};
use super::merge::merge;
use crate::config::{Area, AreaConfig, Leading};
use crate::db::rows::{problems, CrmRow};
use crate::db::state::{Conflict, Failure, FolderState, ItemMapping, Winner};
use crate::db::{Db, DbError};
use crate::metrics::ServiceMetrics;

/// Rows handled per step from the queue; a fuller queue makes the step ask for another.
const QUEUE_BATCH: i64 = 500;
/// Items per GetItem / CreateItem / UpdateItem / DeleteItem request.
const ITEM_BATCH: usize = 100;
/// The base key that says a contact lives in the shared contacts folder.
const SHARED_MARK: &str = "_folder";
/// How `update_exchange` says the item no longer exists.
const GONE: &str = "the item is gone from Exchange";
/// Folder key of the tenant's shared contacts in ms_folder_state.
pub const SHARED_CONTACTS: &str = "contacts/shared";

/// Everything the engine knows about one mailbox.
#[derive(Debug, Clone)]
pub struct MailboxSetup {
    /// Primary SMTP address, lower case.
    pub smtp: String,
    /// The client to reach it with (the server's, or one with the mailbox's own credentials).
    pub client: Arc<ews::Client>,
    /// Impersonated or own.
    pub target: ews::Target,
    /// The operator's personnel number.
    pub operator: String,
    /// crm_tenants.id, when tenants are configured.
    pub tenant: Option<i64>,
    /// Name of the shared contacts subfolder.
    pub shared_folder_name: String,
    /// Enabled areas.
    pub areas: BTreeMap<Area, AreaConfig>,
    /// Mail folder rules (start dates, exclusions, delete mode).
    pub mail: crate::config::MailConfig,
    /// The SMTP server for outbox mails with an alternative sender.
    pub smtp_relay: Option<Arc<crate::config::SmtpConfig>>,
}

/// A mailbox's operator, resolved in the CRM when the mailbox opens.
#[derive(Debug, Clone, Copy)]
pub(super) struct Owner {
    pub(super) operator_id: i64,
    pub(super) tenant_id: i64,
}

pub(super) struct Inner {
    pub(super) crm: Db,
    pub(super) state: Db,
    /// The state store lives in the business database: rows and mappings commit together.
    same_db: bool,
    mailboxes: RwLock<HashMap<String, Arc<MailboxSetup>>>,
    owners: RwLock<HashMap<String, Owner>>,
    pub(super) metrics: ServiceMetrics,
    /// Folders (mailbox, table, shared) whose last CreateItem round in this process finished
    /// with every created item recorded: no item of theirs can be in Exchange unrecorded, so
    /// the next round skips the stamp search (one FindItem per isolated CRM create). Empty
    /// after a start, and a folder leaves it while a round runs, so a crash or a failed round
    /// is always followed by a search.
    pub(super) clean: parking_lot::Mutex<std::collections::HashSet<(String, &'static str, bool)>>,
    /// Exchange item id → the ChangeKey our last CreateItem/UpdateItem of it returned. The
    /// notification of our own write carries that ChangeKey and wakes no folder (it would only
    /// cost a SyncFolderItems that finds the echo). An event that comes before its entry is
    /// recorded still runs a step, which suppresses the echo by ChangeKey as always.
    own_writes: parking_lot::Mutex<HashMap<String, String>>,
    /// The mail side of each mailbox (distinguished folders, folders with news).
    pub(super) mail: super::mail::MailState,
}

/// Bound of [`Inner::own_writes`]: entries whose notification never came (no subscription at
/// the time) are dropped wholesale beyond it; a dropped entry only costs one echo step.
const OWN_WRITES_MAX: usize = 100_000;

/// The engine; cheap to clone.
#[derive(Clone)]
pub struct Engine(Arc<Inner>);

/// Maps a client error to what the runtime does about it.
pub fn sync_error(e: ews::Error) -> SyncError {
    match e {
        ews::Error::Throttled { back_off, .. } => SyncError::Throttled { back_off },
        ews::Error::Transient(m) | ews::Error::Request(m) | ews::Error::Malformed(m) => {
            SyncError::Transient(m)
        }
        ews::Error::InvalidSyncState(m) => SyncError::InvalidState(m),
        ews::Error::Unauthorized(m) => SyncError::Denied(m),
        ews::Error::Denied { code, message } => SyncError::Denied(format!("{code}: {message}")),
        other => SyncError::Failed(other.to_string()),
    }
}

/// The version to record after stamping the ews_id on a row read at `read`: our write is the
/// version right after the one we read; if the row changed in between, keep the version we
/// read, so that change is still seen as new and written.
pub(super) fn own_version(read: i64, written: Option<i64>) -> Option<i64> {
    match written {
        Some(v) if v == read + 1 => Some(v),
        Some(_) => Some(read),
        None => None,
    }
}

/// An appointment row with `uid` set (other rows unchanged).
fn with_uid(row: CrmRow, uid: Option<String>) -> CrmRow {
    match row {
        CrmRow::Appointment(mut a) => {
            a.uid = uid;
            CrmRow::Appointment(a)
        }
        other => other,
    }
}

fn uid_of(row: &CrmRow) -> Option<String> {
    match row {
        CrmRow::Appointment(a) => a.uid.clone(),
        _ => None,
    }
}

pub(super) fn db_error(e: DbError) -> SyncError {
    SyncError::Transient(e.to_string())
}

fn area_of(folder: &str) -> Result<Area, SyncError> {
    match folder {
        "contacts" | SHARED_CONTACTS => Ok(Area::Contacts),
        "calendar" => Ok(Area::Calendar),
        "tasks" => Ok(Area::Tasks),
        other => Err(SyncError::Failed(format!(
            "folder {other:?} is not a contacts, calendar or tasks folder"
        ))),
    }
}

fn distinguished(area: Area) -> DistinguishedFolder {
    match area {
        Area::Contacts => DistinguishedFolder::Contacts,
        Area::Calendar => DistinguishedFolder::Calendar,
        Area::Tasks => DistinguishedFolder::Tasks,
        Area::Mail => DistinguishedFolder::Inbox,
    }
}

fn base_of(m: &ItemMapping) -> (Fields, bool) {
    let mut base: Fields = serde_json::from_value(m.fields.clone()).unwrap_or_default();
    let shared = base.remove(SHARED_MARK).flatten().is_some();
    (base, shared)
}

fn base_json(fields: &Fields, shared: bool) -> serde_json::Value {
    let mut f = fields.clone();
    if shared {
        f.insert(SHARED_MARK.into(), Some("shared".into()));
    }
    serde_json::to_value(f).unwrap_or_default()
}

fn matches_filter(config: &AreaConfig, f: &Fields) -> bool {
    config.categories.is_empty() || {
        let have = fields::categories_of(f);
        config
            .categories
            .iter()
            .any(|c| have.iter().any(|h| h.eq_ignore_ascii_case(c)))
    }
}

/// One step's working set.
struct Step<'a> {
    engine: &'a Inner,
    setup: &'a MailboxSetup,
    owner: Owner,
    area: Area,
    table: &'static str,
    config: AreaConfig,
    ctx: &'a StepContext,
    items: u64,
    /// Writes by (direction, action), for the initial sync's summary.
    counts: BTreeMap<(String, String), u64>,
    /// Changes and queued rows looked at (progress of an initial sync).
    seen: u64,
    /// An update was refused as stale: another step, with SyncFolderItems, is due.
    needs_pull: bool,
}

impl Engine {
    /// An engine over the business database and the state store.
    pub fn new(crm: Db, state: Db, same_db: bool, metrics: ServiceMetrics) -> Self {
        Engine(Arc::new(Inner {
            crm,
            state,
            same_db,
            mailboxes: RwLock::new(HashMap::new()),
            owners: RwLock::new(HashMap::new()),
            metrics,
            clean: parking_lot::Mutex::default(),
            own_writes: parking_lot::Mutex::default(),
            mail: super::mail::MailState::default(),
        }))
    }

    /// Whether a notification about `id` is the echo of our own last write of it (consumed).
    pub(crate) fn is_own_write(&self, id: &ItemId) -> bool {
        let Some(change_key) = &id.change_key else {
            return false;
        };
        let mut own = self.0.own_writes.lock();
        if own.get(&id.id) == Some(change_key) {
            own.remove(&id.id);
            true
        } else {
            false
        }
    }

    /// Whether an Exchange folder is a synced mail folder or a mail root; an item event there
    /// (`item`) is noted for the mailbox's next mail step.
    pub(crate) fn mail_folder_event(&self, folder: &str, item: bool) -> bool {
        let Some(mailbox) = self.0.mail.mailbox_of(folder) else {
            return false;
        };
        if item {
            self.0.mail.mark_dirty(&mailbox, folder);
        }
        true
    }

    /// Replaces the set of mailboxes (startup and reload).
    pub fn set_mailboxes(&self, setups: Vec<MailboxSetup>) {
        let map = setups
            .into_iter()
            .map(|s| (s.smtp.clone(), Arc::new(s)))
            .collect();
        *self.0.mailboxes.write() = map;
    }

    /// The setup of a mailbox.
    pub fn mailbox(&self, smtp: &str) -> Option<Arc<MailboxSetup>> {
        self.0.mailboxes.read().get(smtp).cloned()
    }

    /// The business database.
    pub fn crm(&self) -> &Db {
        &self.0.crm
    }

    /// The state store.
    pub fn state(&self) -> &Db {
        &self.0.state
    }
}

impl Inner {
    /// Records the ChangeKey our write of an item produced (see `own_writes`).
    pub(super) fn note_own_write(&self, id: &ItemId) {
        if let Some(change_key) = &id.change_key {
            let mut own = self.own_writes.lock();
            if own.len() >= OWN_WRITES_MAX {
                own.clear();
            }
            own.insert(id.id.clone(), change_key.clone());
        }
    }

    pub(super) async fn call<O: Operation>(
        &self,
        setup: &MailboxSetup,
        ctx: &StepContext,
        op: &O,
    ) -> Result<O::Output, SyncError> {
        self.call_ews(setup, ctx, op).await.map_err(sync_error)
    }

    /// [`Inner::call`] with the client's error, for a caller that handles some codes itself
    /// (a folder that is gone, say).
    pub(super) async fn call_ews<O: Operation>(
        &self,
        setup: &MailboxSetup,
        ctx: &StepContext,
        op: &O,
    ) -> Result<O::Output, ews::Error> {
        let _permit = ctx.acquire().await;
        let reply = setup.client.call(&setup.target, op).await?;
        ctx.progress();
        Ok(reply.output)
    }

    /// The items of a folder stamped with these CRM rows (`table:id`), by CRM id: what a crash
    /// (or a failed round) left in Exchange after CreateItem but before the mapping. One
    /// FindItem per 50 rows.
    pub(super) async fn find_stamped(
        &self,
        setup: &MailboxSetup,
        ctx: &StepContext,
        folder: &FolderRef,
        table: &str,
        ids: &[i64],
    ) -> Result<HashMap<i64, ItemId>, SyncError> {
        let mut existing = HashMap::new();
        for chunk in ids.chunks(50) {
            let mut stamps: Vec<Restriction> = chunk
                .iter()
                .map(|id| {
                    Restriction::IsEqualTo(fields::crm_id_path(), fields::crm_stamp(table, *id))
                })
                .collect();
            let find = FindItem {
                folder: folder.clone(),
                shape: Shape {
                    base: ews::types::BaseShape::IdOnly,
                    additional: vec![fields::crm_id_path()],
                },
                view: View::IndexedPage {
                    offset: 0,
                    max: 1000,
                },
                restriction: Some(if stamps.len() == 1 {
                    stamps.remove(0)
                } else {
                    Restriction::Or(stamps)
                }),
            };
            for item in self.call(setup, ctx, &find).await?.items {
                if let (Some(id), Some(crm_id)) =
                    (item.id().cloned(), fields::stamped_id(&item, table))
                {
                    existing.insert(crm_id, id);
                }
            }
        }
        Ok(existing)
    }

    pub(super) async fn owner(&self, setup: &MailboxSetup) -> Result<Owner, SyncError> {
        let operators = self.crm.operators().await.map_err(db_error)?;
        let found: Vec<_> = operators
            .iter()
            .filter(|o| {
                o.personnel_no == setup.operator && setup.tenant.is_none_or(|t| t == o.tenant_id)
            })
            .collect();
        match found.as_slice() {
            [one] => Ok(Owner {
                operator_id: one.id,
                tenant_id: one.tenant_id,
            }),
            [] => Err(SyncError::Failed(format!(
                "operator with personnel number {:?}{} is not in crm_operators",
                setup.operator,
                setup
                    .tenant
                    .map(|t| format!(" in tenant {t}"))
                    .unwrap_or_default()
            ))),
            _ => Err(SyncError::Failed(format!(
                "personnel number {:?} exists in several tenants; configure the mailbox's tenant",
                setup.operator
            ))),
        }
    }

    /// Finds (or creates) the folder of an area and records its id.
    async fn open(&self, spec: &MailboxSpec, ctx: StepContext) -> Result<Vec<FolderId>, SyncError> {
        let smtp: &str = &spec.smtp;
        let setup = self
            .mailboxes
            .read()
            .get(smtp)
            .cloned()
            .ok_or_else(|| SyncError::Failed(format!("mailbox {smtp} is not configured")))?;
        let owner = self.owner(&setup).await?;
        self.owners.write().insert(smtp.to_owned(), owner);
        let mut folders = Vec::new();
        for (area, _) in setup.areas.iter().filter(|(a, _)| **a != Area::Mail) {
            let op = GetFolder {
                folders: vec![FolderRef::well_known(distinguished(*area))],
                shape: Shape::id_only(),
            };
            let found = self.call(&setup, &ctx, &op).await?;
            let folder = found
                .into_iter()
                .next()
                .ok_or_else(|| SyncError::Failed("GetFolder answered nothing".into()))?;
            let folder = folder.map_err(sync_error)?;
            let id = folder.id.ok_or_else(|| {
                SyncError::Failed("GetFolder answered a folder without id".into())
            })?;
            self.remember_folder(smtp, area.as_str(), &id.id).await?;
            if *area == Area::Contacts {
                let shared = self.shared_contacts_folder(&setup, &ctx, &id).await?;
                self.remember_folder(smtp, SHARED_CONTACTS, &shared.id)
                    .await?;
            }
            folders.push(FolderId::from(area.as_str()));
            if *area == Area::Contacts {
                // Its own folder actor, so a notification there syncs only that folder.
                folders.push(FolderId::from(SHARED_CONTACTS));
            }
        }
        if setup.areas.contains_key(&Area::Mail) {
            // One actor for the whole mail tree: it follows a tree that grows and shrinks, and
            // sees a move between two folders in one step.
            folders.push(FolderId::from(super::mail::MAIL));
        }
        Ok(folders)
    }

    async fn remember_folder(&self, smtp: &str, key: &str, ews_id: &str) -> Result<(), SyncError> {
        let current = self.state.folder_state(smtp, key).await.map_err(db_error)?;
        if current.ews_folder_id.as_deref() != Some(ews_id) {
            // A different folder (first run, or recreated by the user): its old state is meaningless.
            let fresh = FolderState {
                ews_folder_id: Some(ews_id.to_owned()),
                sync_state: None,
            };
            self.state
                .set_folder_state(smtp, key, &fresh)
                .await
                .map_err(db_error)?;
        }
        Ok(())
    }

    async fn shared_contacts_folder(
        &self,
        setup: &MailboxSetup,
        ctx: &StepContext,
        parent: &ItemId,
    ) -> Result<ItemId, SyncError> {
        let find = FindFolder {
            parent: FolderRef::Id(parent.clone()),
            traversal: Traversal::Shallow,
            shape: Shape::all_properties(vec![]),
        };
        let children = self.call(setup, ctx, &find).await?;
        if let Some(id) = children
            .into_iter()
            .find(|f| f.display_name.as_deref() == Some(setup.shared_folder_name.as_str()))
            .and_then(|f| f.id)
        {
            return Ok(id);
        }
        let create = CreateFolder {
            parent: FolderRef::Id(parent.clone()),
            folders: vec![ews::items::Folder {
                display_name: Some(setup.shared_folder_name.clone()),
                folder_class: Some("IPF.Contact".into()),
                ..ews::items::Folder::default()
            }],
        };
        let created = self.call(setup, ctx, &create).await?;
        created
            .into_iter()
            .next()
            .ok_or_else(|| SyncError::Failed("CreateFolder answered nothing".into()))?
            .map_err(sync_error)
    }
}

impl<'a> Step<'a> {
    fn smtp(&self) -> &str {
        &self.setup.smtp
    }

    async fn fail(&self, crm_id: i64, ews_id: &str, error: String) {
        tracing::warn!(mailbox = self.smtp(), table = self.table, crm_id, ews_id, %error, "item not synced");
        self.engine
            .metrics
            .failures
            .with_label_values(&[self.area.as_str(), "invalid_row"])
            .inc();
        let failure = Failure {
            mailbox: self.smtp().to_owned(),
            crm_table: self.table.to_owned(),
            crm_id,
            ews_item_id: ews_id.to_owned(),
            error,
            attempts: 1,
        };
        if let Err(e) = self.engine.state.record_failure(&failure, None).await {
            tracing::error!(error = %e, "recording a failure failed");
        }
    }

    async fn conflict(
        &self,
        crm_id: Option<i64>,
        ews_id: Option<&str>,
        fields: Vec<String>,
        winner: Winner,
    ) -> Result<(), SyncError> {
        let resolution = match winner {
            Winner::Crm => "crm_wins",
            Winner::Exchange => "exchange_wins",
        };
        self.engine
            .metrics
            .conflicts
            .with_label_values(&[self.area.as_str(), resolution])
            .inc();
        let c = Conflict {
            mailbox: self.smtp().to_owned(),
            crm_table: self.table.to_owned(),
            crm_id,
            ews_item_id: ews_id.map(str::to_owned),
            fields,
            winner,
        };
        self.engine.state.log_conflict(&c).await.map_err(db_error)
    }

    fn counted(&mut self, direction: &str, action: &str) {
        self.items += 1;
        *self
            .counts
            .entry((direction.to_owned(), action.to_owned()))
            .or_default() += 1;
        self.engine
            .metrics
            .items
            .with_label_values(&[self.area.as_str(), direction, action])
            .inc();
    }

    fn winner(&self) -> Winner {
        match self.config.leading {
            Leading::Crm => Winner::Crm,
            Leading::Exchange => Winner::Exchange,
        }
    }

    /// The Exchange folder of the step (own or the shared contacts subfolder).
    async fn folder(&self, shared: bool) -> Result<FolderState, SyncError> {
        let key = if shared {
            SHARED_CONTACTS
        } else {
            self.area.as_str()
        };
        let state = self
            .engine
            .state
            .folder_state(self.smtp(), key)
            .await
            .map_err(db_error)?;
        if state.ews_folder_id.is_none() {
            return Err(SyncError::Failed(format!(
                "folder {key} of {} was never opened",
                self.smtp()
            )));
        }
        Ok(state)
    }

    fn scope_of(&self, row: &CrmRow) -> Option<bool> {
        // Some(shared?) when the row belongs in this mailbox; None when it does not.
        match row {
            CrmRow::Contact(c) => match c.owner_id {
                Some(o) if o == self.owner.operator_id => Some(false),
                None if c.tenant_id == self.owner.tenant_id => Some(true),
                _ => None,
            },
            CrmRow::Appointment(a) => (a.owner_id == self.owner.operator_id).then_some(false),
            CrmRow::Task(t) => (t.owner_id == self.owner.operator_id).then_some(false),
        }
    }

    /// Queues every CRM row of the scope, so the step reconciles all of them (full resync).
    async fn queue_all(&self) -> Result<(), SyncError> {
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

    /// Exchange to CRM for one Exchange folder; true when Exchange has more.
    async fn pull_exchange(&mut self, shared: bool, full: bool) -> Result<bool, SyncError> {
        let key = if shared {
            SHARED_CONTACTS
        } else {
            self.area.as_str()
        };
        let folder_state = self.folder(shared).await?;
        let folder_id = ItemId {
            id: folder_state.ews_folder_id.clone().unwrap_or_default(),
            change_key: None,
        };
        let sync = SyncFolderItems {
            folder: FolderRef::Id(folder_id),
            shape: Shape::id_only(),
            sync_state: if full {
                None
            } else {
                folder_state.sync_state.clone()
            },
            ignore: vec![],
            max_changes: ews::ops::MAX_CHANGES_RETURNED,
        };
        let changes = self.engine.call(self.setup, self.ctx, &sync).await?;
        self.seen += changes.changes.len() as u64;
        let mut fetch = Vec::new();
        let mut deletes = Vec::new();
        for change in changes.changes {
            match change {
                ews::ops::ItemChange::Create(item) | ews::ops::ItemChange::Update(item) => {
                    if let Some(id) = item.id() {
                        fetch.push(id.clone());
                    }
                }
                ews::ops::ItemChange::Delete(id) => deletes.push(id),
                ews::ops::ItemChange::ReadFlagChange { .. } => {}
            }
        }
        // Echo suppression: an item whose ChangeKey is the one we wrote or saw last needs nothing.
        let mut wanted = Vec::new();
        for id in fetch {
            let known = self
                .engine
                .state
                .mapping_by_ews(self.smtp(), &id.id)
                .await
                .map_err(db_error)?;
            if known.is_none_or(|m| m.change_key.is_none() || m.change_key != id.change_key) {
                wanted.push(id);
            }
        }
        for chunk in wanted.chunks(ITEM_BATCH) {
            let get = GetItem {
                ids: chunk.to_vec(),
                shape: Shape::all_properties(vec![fields::crm_id_path()]),
            };
            let items = self.engine.call(self.setup, self.ctx, &get).await?;
            for (id, item) in chunk.iter().zip(items) {
                match item {
                    Ok(item) => self.exchange_item(item, shared).await?,
                    Err(ews::Error::NotFound(_)) => {}
                    Err(e)
                        if matches!(e, ews::Error::Throttled { .. } | ews::Error::Transient(_)) =>
                    {
                        return Err(sync_error(e))
                    }
                    Err(e) => {
                        self.fail(0, &id.id, format!("reading the item from Exchange: {e}"))
                            .await
                    }
                }
            }
            self.ctx.progress();
        }
        for id in deletes {
            self.exchange_delete(&id).await?;
        }
        self.confirm_unstamped().await?;
        let next = FolderState {
            ews_folder_id: folder_state.ews_folder_id,
            sync_state: Some(changes.sync_state),
        };
        self.engine
            .state
            .set_folder_state(self.smtp(), key, &next)
            .await
            .map_err(db_error)?;
        Ok(!changes.includes_last)
    }

    async fn exchange_item(&mut self, item: Item, shared: bool) -> Result<(), SyncError> {
        let Some(id) = item.id().cloned() else {
            return Ok(());
        };
        let ews_fields = match fields::from_item(&item) {
            Ok(f) => f,
            Err(e) => {
                self.fail(0, &id.id, e).await;
                return Ok(());
            }
        };
        let state = &self.engine.state;
        let mut mapping = state
            .mapping_by_ews(self.smtp(), &id.id)
            .await
            .map_err(db_error)?;
        if mapping.is_none() {
            if let Some(crm_id) = fields::stamped_id(&item, self.table) {
                mapping = state
                    .mapping_by_crm(self.smtp(), self.table, crm_id)
                    .await
                    .map_err(db_error)?;
            }
        }
        match mapping {
            Some(m) => {
                let stamped = fields::stamped_id(&item, self.table);
                self.exchange_changed(m, id, ews_fields, shared, stamped)
                    .await
            }
            None => self.exchange_created(item, id, ews_fields, shared).await,
        }
    }

    /// The oldest appointment of this operator with `uid` that no item of this mailbox is
    /// mapped to yet.
    async fn unmapped_by_uid(&self, uid: Option<&str>) -> Result<Option<i64>, SyncError> {
        let Some(uid) = uid.filter(|_| self.area == Area::Calendar) else {
            return Ok(None);
        };
        let ids = self
            .engine
            .crm
            .appointments_by_uid(self.owner.operator_id, uid)
            .await
            .map_err(db_error)?;
        if ids.is_empty() {
            return Ok(None);
        }
        let mapped = self
            .engine
            .state
            .mappings_by_crm(self.smtp(), self.table, &ids)
            .await
            .map_err(db_error)?;
        Ok(ids.into_iter().find(|id| !mapped.contains_key(id)))
    }

    async fn exchange_created(
        &mut self,
        item: Item,
        id: ItemId,
        ews_fields: Fields,
        shared: bool,
    ) -> Result<(), SyncError> {
        let stamped = fields::stamped_id(&item, self.table);
        if !matches_filter(&self.config, &ews_fields) {
            return Ok(());
        }
        // An item stamped with a CRM row of ours whose mapping was lost: link, do not copy.
        let existing = match stamped {
            Some(crm_id) => self
                .engine
                .crm
                .crm_row(self.table, crm_id)
                .await
                .map_err(db_error)?
                .and_then(Result::ok),
            None => None,
        };
        let owner = if shared {
            None
        } else {
            Some(self.owner.operator_id)
        };
        let uid = match &item {
            Item::CalendarItem(c) => c.uid.clone(),
            _ => None,
        };
        // An appointment the CRM already has under the same UID (an invitation both sides
        // hold, or a row from an earlier sync product): link it and merge, do not copy.
        if existing.is_none() {
            if let Some(row_id) = self.unmapped_by_uid(uid.as_deref()).await? {
                let link = ItemMapping {
                    crm_id: row_id,
                    crm_version: None,
                    fields: serde_json::json!({}),
                    ..self.mapping(row_id, &id, None, &Fields::new(), shared)
                };
                return self
                    .exchange_changed(link, id, ews_fields, shared, None)
                    .await;
            }
        }
        let (row_id, version) = match existing {
            Some(row) => (row.id(), crate::db::rows::version_of(&row)),
            None => {
                let row =
                    match fields::to_row(self.area, &ews_fields, 0, self.owner.tenant_id, owner, 0)
                    {
                        Ok(r) => with_uid(r, uid.clone()),
                        Err(e) => {
                            self.fail(0, &id.id, e).await;
                            return Ok(());
                        }
                    };
                // No ChangeKey yet: until the stamp below is written, the item is not an echo.
                let unstamped = ItemId {
                    id: id.id.clone(),
                    change_key: None,
                };
                let mut mapping = self.mapping(0, &unstamped, None, &ews_fields, shared);
                let saved = if self.engine.same_db {
                    self.engine
                        .crm
                        .save_from_exchange(&row, &id.id, Some(&mapping))
                        .await
                } else {
                    self.engine.crm.save_from_exchange(&row, &id.id, None).await
                };
                let (row_id, version) = saved.map_err(db_error)?;
                if !self.engine.same_db {
                    mapping.crm_id = row_id;
                    mapping.crm_version = Some(version);
                    self.engine
                        .state
                        .put_mapping(&mapping)
                        .await
                        .map_err(db_error)?;
                }
                self.counted("to_crm", "create");
                (row_id, version)
            }
        };
        // Stamp the CRM id on the item, so the pair is found again whatever happens to the state.
        let mut change_key = id.change_key.clone();
        if stamped != Some(row_id) {
            let stamp = fields::crm_stamp(self.table, row_id);
            change_key = self
                .update_exchange(&id, &ews_fields, &[], &stamp)
                .await?
                .or(change_key);
        }
        let mapping = self.mapping(
            row_id,
            &ItemId {
                id: id.id.clone(),
                change_key,
            },
            Some(version),
            &ews_fields,
            shared,
        );
        self.engine
            .state
            .put_mapping(&mapping)
            .await
            .map_err(db_error)
    }

    /// Items imported but not yet stamped (the stamp failed, the step with it): if the item
    /// is gone meanwhile — created and deleted between two SyncFolderItems, which then report
    /// neither — the imported row is deleted too; otherwise the stamp is written now.
    async fn confirm_unstamped(&mut self) -> Result<(), SyncError> {
        let open = self
            .engine
            .state
            .unconfirmed_mappings(self.smtp(), self.table)
            .await
            .map_err(db_error)?;
        for chunk in open.chunks(ITEM_BATCH) {
            let ids: Vec<ItemId> = chunk
                .iter()
                .map(|(_, ews)| ItemId {
                    id: ews.clone(),
                    change_key: None,
                })
                .collect();
            let get = GetItem {
                ids: ids.clone(),
                shape: Shape::all_properties(vec![fields::crm_id_path()]),
            };
            let items = self.engine.call(self.setup, self.ctx, &get).await?;
            for ((crm_id, ews_id), item) in chunk.iter().zip(items) {
                match item {
                    Ok(item) => {
                        let mapping = self
                            .engine
                            .state
                            .mapping_by_crm(self.smtp(), self.table, *crm_id)
                            .await
                            .map_err(db_error)?;
                        let shared = mapping.as_ref().is_some_and(|m| base_of(m).1);
                        self.exchange_item(item, shared).await?;
                    }
                    Err(ews::Error::NotFound(_)) => {
                        self.engine
                            .state
                            .delete_mapping(self.smtp(), self.table, *crm_id)
                            .await
                            .map_err(db_error)?;
                        self.engine
                            .crm
                            .delete_crm_row(self.table, *crm_id)
                            .await
                            .map_err(db_error)?;
                        self.counted("to_crm", "delete");
                        tracing::info!(
                            mailbox = self.smtp(),
                            crm_id,
                            ews_id,
                            "imported item vanished before it was stamped; row removed"
                        );
                    }
                    Err(e) => return Err(sync_error(e)),
                }
            }
        }
        Ok(())
    }

    fn mapping(
        &self,
        crm_id: i64,
        id: &ItemId,
        version: Option<i64>,
        f: &Fields,
        shared: bool,
    ) -> ItemMapping {
        ItemMapping {
            mailbox: self.smtp().to_owned(),
            crm_table: self.table.to_owned(),
            crm_id,
            ews_item_id: id.id.clone(),
            change_key: id.change_key.clone(),
            crm_version: version,
            fields: base_json(f, shared),
        }
    }

    async fn exchange_changed(
        &mut self,
        m: ItemMapping,
        id: ItemId,
        ews_fields: Fields,
        shared: bool,
        stamped: Option<i64>,
    ) -> Result<(), SyncError> {
        let row = self
            .engine
            .crm
            .crm_row(self.table, m.crm_id)
            .await
            .map_err(db_error)?;
        let row = match row {
            None if base_of(&m).0 == ews_fields => {
                // Deleted in the CRM, unchanged in Exchange (a resync looks at every item).
                self.engine
                    .state
                    .delete_mapping(self.smtp(), self.table, m.crm_id)
                    .await
                    .map_err(db_error)?;
                return self.delete_in_exchange(std::slice::from_ref(&id)).await;
            }
            None => {
                // Deleted in the CRM while changed in Exchange: the leading system decides.
                self.conflict(
                    Some(m.crm_id),
                    Some(&id.id),
                    vec!["deleted".into()],
                    self.winner(),
                )
                .await?;
                self.engine
                    .state
                    .delete_mapping(self.smtp(), self.table, m.crm_id)
                    .await
                    .map_err(db_error)?;
                match self.config.leading {
                    // Recreated in the CRM as a new row, linked to the same item.
                    Leading::Exchange => return self.recreate_in_crm(id, ews_fields, shared).await,
                    Leading::Crm => {
                        self.delete_in_exchange(std::slice::from_ref(&id)).await?;
                        return Ok(());
                    }
                }
            }
            Some(Err(e)) => {
                self.fail(m.crm_id, &id.id, e).await;
                return Ok(());
            }
            Some(Ok(row)) => row,
        };
        let crm_fields = match fields::from_row(&row) {
            Ok(f) => f,
            Err(e) => {
                self.fail(m.crm_id, &id.id, e).await;
                return Ok(());
            }
        };
        let (base, _) = base_of(&m);
        let merged = merge(&base, &crm_fields, &ews_fields, self.config.leading);
        if !merged.conflicts.is_empty() {
            self.conflict(
                Some(row.id()),
                Some(&id.id),
                merged.conflicts.clone(),
                self.winner(),
            )
            .await?;
        }
        let mut change_key = id.change_key.clone();
        let mut version = crate::db::rows::version_of(&row);
        if !merged.to_crm.is_empty() {
            let (tenant, owner) = crate::db::rows::tenant_owner(&row);
            let updated =
                fields::to_row(self.area, &merged.merged, row.id(), tenant, owner, version)
                    .map_err(SyncError::Failed)?;
            // The UID is not a synced field: the row keeps its own.
            let updated = with_uid(updated, uid_of(&row));
            let (_, v) = self
                .engine
                .crm
                .save_from_exchange(&updated, &id.id, None)
                .await
                .map_err(db_error)?;
            version = v;
            self.counted("to_crm", "update");
        }
        // The stamp is (re)written when missing, e.g. after a stamping that was interrupted.
        if !merged.to_exchange.is_empty() || stamped != Some(row.id()) {
            let stamp = fields::crm_stamp(self.table, row.id());
            change_key = self
                .update_exchange(&id, &merged.merged, &merged.to_exchange, &stamp)
                .await?
                .or(change_key);
            if !merged.to_exchange.is_empty() {
                self.counted("to_exchange", "update");
            }
        }
        let mapping = self.mapping(
            row.id(),
            &ItemId {
                id: id.id,
                change_key,
            },
            Some(version),
            &merged.merged,
            shared,
        );
        self.engine
            .state
            .put_mapping(&mapping)
            .await
            .map_err(db_error)
    }

    async fn recreate_in_crm(
        &mut self,
        id: ItemId,
        ews_fields: Fields,
        shared: bool,
    ) -> Result<(), SyncError> {
        let owner = if shared {
            None
        } else {
            Some(self.owner.operator_id)
        };
        let row = fields::to_row(self.area, &ews_fields, 0, self.owner.tenant_id, owner, 0)
            .map_err(SyncError::Failed)?;
        let (row_id, version) = self
            .engine
            .crm
            .save_from_exchange(&row, &id.id, None)
            .await
            .map_err(db_error)?;
        self.counted("to_crm", "create");
        let stamp = fields::crm_stamp(self.table, row_id);
        let change_key = self
            .update_exchange(&id, &ews_fields, &[], &stamp)
            .await?
            .or(id.change_key.clone());
        let mapping = self.mapping(
            row_id,
            &ItemId {
                id: id.id,
                change_key,
            },
            Some(version),
            &ews_fields,
            shared,
        );
        self.engine
            .state
            .put_mapping(&mapping)
            .await
            .map_err(db_error)
    }

    async fn exchange_delete(&mut self, id: &ItemId) -> Result<(), SyncError> {
        let state = &self.engine.state;
        let Some(m) = state
            .mapping_by_ews(self.smtp(), &id.id)
            .await
            .map_err(db_error)?
        else {
            return Ok(());
        };
        let row = self
            .engine
            .crm
            .crm_row(self.table, m.crm_id)
            .await
            .map_err(db_error)?
            .and_then(Result::ok);
        state
            .delete_mapping(self.smtp(), self.table, m.crm_id)
            .await
            .map_err(db_error)?;
        let Some(row) = row else { return Ok(()) };
        let changed_in_crm = m
            .crm_version
            .is_some_and(|v| v != crate::db::rows::version_of(&row));
        if changed_in_crm && self.config.leading == Leading::Crm {
            // Deleted in Exchange, changed in the CRM, the CRM leads: it goes back to Exchange.
            self.conflict(
                Some(m.crm_id),
                Some(&id.id),
                vec!["deleted".into()],
                Winner::Crm,
            )
            .await?;
            let item = (self.smtp().to_owned(), self.table.to_owned(), m.crm_id);
            return state.add_pending(&[item]).await.map_err(db_error);
        }
        if changed_in_crm {
            self.conflict(
                Some(m.crm_id),
                Some(&id.id),
                vec!["deleted".into()],
                Winner::Exchange,
            )
            .await?;
        }
        self.engine
            .crm
            .delete_crm_row(self.table, m.crm_id)
            .await
            .map_err(db_error)?;
        self.counted("to_crm", "delete");
        Ok(())
    }

    /// Writes `names` of `merged` (and the stamp) to the item; returns the new ChangeKey.
    async fn update_exchange(
        &mut self,
        id: &ItemId,
        merged: &Fields,
        names: &[String],
        stamp: &str,
    ) -> Result<Option<String>, SyncError> {
        let item = fields::to_item(self.area, merged, stamp).map_err(SyncError::Failed)?;
        let keys: HashSet<String> = names
            .iter()
            .flat_map(|n| fields::property_keys(self.area, n))
            .collect();
        let updates: Vec<_> = item
            .updates()
            .into_iter()
            .filter(|u| keys.contains(&u.key()) || u.key().starts_with("ext:"))
            .collect();
        let op = UpdateItem {
            changes: vec![ItemUpdate {
                id: id.clone(),
                updates,
            }],
            conflict: ConflictResolution::NeverOverwrite,
            disposition: None,
            calendar: self.area == Area::Calendar,
        };
        let mut results = self.engine.call(self.setup, self.ctx, &op).await?;
        match results.pop() {
            Some(Ok(new_id)) => {
                self.engine.note_own_write(&new_id);
                Ok(new_id.change_key)
            }
            Some(Err(ews::Error::NotFound(e))) => Err(SyncError::Failed(format!("{GONE}: {e}"))),
            Some(Err(e)) => Err(sync_error(e)),
            None => Err(SyncError::Failed("UpdateItem answered nothing".into())),
        }
    }

    async fn delete_in_exchange(&mut self, ids: &[ItemId]) -> Result<(), SyncError> {
        for chunk in ids.chunks(ITEM_BATCH) {
            let op = DeleteItem {
                ids: chunk
                    .iter()
                    .map(|i| ItemId {
                        id: i.id.clone(),
                        change_key: None,
                    })
                    .collect(),
                delete_type: DeleteType::MoveToDeletedItems,
            };
            let results = self.engine.call(self.setup, self.ctx, &op).await?;
            for r in results {
                match r {
                    Ok(()) | Err(ews::Error::NotFound(_)) => self.counted("to_exchange", "delete"),
                    Err(e @ (ews::Error::Throttled { .. } | ews::Error::Transient(_))) => {
                        return Err(sync_error(e))
                    }
                    Err(e) => {
                        tracing::warn!(mailbox = self.smtp(), error = %e, "deleting an item in Exchange failed")
                    }
                }
            }
        }
        Ok(())
    }

    /// CRM to Exchange: the queued rows; true when more are queued.
    async fn push_crm(&mut self) -> Result<bool, SyncError> {
        let state = &self.engine.state;
        let queued = state
            .pending(self.smtp(), self.table, QUEUE_BATCH)
            .await
            .map_err(db_error)?;
        if queued.is_empty() {
            return Ok(false);
        }
        let tokens: HashMap<i64, i64> = queued.iter().copied().collect();
        let ids: Vec<i64> = queued.iter().map(|(id, _)| *id).collect();
        self.seen += ids.len() as u64;
        let rows: HashMap<i64, Result<CrmRow, String>> = self
            .engine
            .crm
            .crm_rows(self.table, &ids)
            .await
            .map_err(db_error)?
            .into_iter()
            .collect();
        let mut mappings = state
            .mappings_by_crm(self.smtp(), self.table, &ids)
            .await
            .map_err(db_error)?;
        let mut deletes: Vec<(i64, ItemId)> = Vec::new();
        let mut creates: Vec<(CrmRow, Fields, bool)> = Vec::new();
        let mut done: Vec<i64> = Vec::new();
        for id in &ids {
            let mapping = mappings.remove(id);
            let row = match rows.get(id) {
                Some(Ok(row)) => Some(row),
                Some(Err(e)) => {
                    self.fail(*id, "", e.clone()).await;
                    done.push(*id);
                    continue;
                }
                None => None,
            };
            let scope = row.and_then(|r| self.scope_of(r));
            let row_fields = match row.filter(|_| scope.is_some()).map(fields::from_row) {
                Some(Ok(f)) => Some(f),
                Some(Err(e)) => {
                    self.fail(*id, mapping.as_ref().map_or("", |m| &m.ews_item_id), e)
                        .await;
                    done.push(*id);
                    continue;
                }
                None => None,
            };
            let wanted = row_fields
                .as_ref()
                .filter(|f| matches_filter(&self.config, f));
            match (row, wanted, mapping) {
                // Gone, moved to someone else, or no longer matching: out of this mailbox.
                (_, None, Some(m)) => deletes.push((
                    m.crm_id,
                    ItemId {
                        id: m.ews_item_id,
                        change_key: None,
                    },
                )),
                (_, None, None) => {}
                (Some(row), Some(f), Some(m)) => {
                    let (base, was_shared) = base_of(&m);
                    let shared = scope == Some(true);
                    if m.crm_version == Some(crate::db::rows::version_of(row))
                        && was_shared == shared
                    {
                        // Our own write coming back, or nothing new.
                    } else if was_shared != shared {
                        // Between the own and the shared contacts folder: delete and create.
                        deletes.push((
                            m.crm_id,
                            ItemId {
                                id: m.ews_item_id.clone(),
                                change_key: None,
                            },
                        ));
                        creates.push((row.clone(), f.clone(), shared));
                    } else {
                        let problems = problems(row);
                        if !problems.is_empty() {
                            self.fail(*id, &m.ews_item_id, problems.join("; ")).await;
                        } else {
                            let merged = merge(&base, f, &base, self.config.leading);
                            let item = ItemId {
                                id: m.ews_item_id.clone(),
                                change_key: m.change_key.clone(),
                            };
                            let mut change_key = m.change_key.clone();
                            if !merged.to_exchange.is_empty() {
                                let stamp = fields::crm_stamp(self.table, row.id());
                                match self
                                    .update_exchange(&item, f, &merged.to_exchange, &stamp)
                                    .await
                                {
                                    Ok(ck) => {
                                        change_key = ck.or(change_key);
                                        self.counted("to_exchange", "update");
                                    }
                                    // Deleted in Exchange (perhaps before any SyncFolderItems
                                    // could report it) while changed in the CRM.
                                    Err(SyncError::Failed(e)) if e.starts_with(GONE) => {
                                        self.conflict(
                                            Some(row.id()),
                                            Some(&m.ews_item_id),
                                            vec!["deleted".into()],
                                            self.winner(),
                                        )
                                        .await?;
                                        state
                                            .delete_mapping(self.smtp(), self.table, row.id())
                                            .await
                                            .map_err(db_error)?;
                                        match self.config.leading {
                                            Leading::Crm => {
                                                creates.push((row.clone(), f.clone(), shared))
                                            }
                                            Leading::Exchange => {
                                                self.engine
                                                    .crm
                                                    .delete_crm_row(self.table, row.id())
                                                    .await
                                                    .map_err(db_error)?;
                                                self.counted("to_crm", "delete");
                                            }
                                        }
                                        done.push(*id);
                                        continue;
                                    }
                                    // Changed in Exchange since the ChangeKey we hold: the row
                                    // stays queued and the next step (asked for at once) reads
                                    // Exchange first and merges.
                                    Err(SyncError::Failed(e)) => {
                                        tracing::debug!(mailbox = self.smtp(), crm_id = row.id(), error = %e, "update refused; merging first");
                                        self.needs_pull = true;
                                        continue;
                                    }
                                    Err(e) => return Err(e),
                                }
                            }
                            let version = Some(crate::db::rows::version_of(row));
                            let mapping = self.mapping(
                                row.id(),
                                &ItemId {
                                    id: m.ews_item_id,
                                    change_key,
                                },
                                version,
                                f,
                                shared,
                            );
                            state.put_mapping(&mapping).await.map_err(db_error)?;
                        }
                    }
                }
                (Some(row), Some(f), None) => {
                    let problems = problems(row);
                    if problems.is_empty() {
                        creates.push((row.clone(), f.clone(), scope == Some(true)));
                    } else {
                        self.fail(*id, "", problems.join("; ")).await;
                    }
                }
                (None, Some(_), _) => {}
            }
            done.push(*id);
        }
        if !deletes.is_empty() {
            let ids: Vec<ItemId> = deletes.iter().map(|(_, i)| i.clone()).collect();
            self.delete_in_exchange(&ids).await?;
            for (crm_id, _) in &deletes {
                state
                    .delete_mapping(self.smtp(), self.table, *crm_id)
                    .await
                    .map_err(db_error)?;
            }
        }
        for shared in [false, true] {
            let batch: Vec<(CrmRow, Fields)> = creates
                .iter()
                .filter(|(_, _, s)| *s == shared)
                .map(|(r, f, _)| (r.clone(), f.clone()))
                .collect();
            if !batch.is_empty() {
                self.create_in_exchange(batch, shared).await?;
            }
        }
        let done: Vec<(i64, i64)> = done
            .iter()
            .map(|id| (*id, tokens.get(id).copied().unwrap_or(0)))
            .collect();
        state
            .clear_pending(self.smtp(), self.table, &done)
            .await
            .map_err(db_error)?;
        Ok(ids.len() as i64 == QUEUE_BATCH)
    }

    async fn create_in_exchange(
        &mut self,
        batch: Vec<(CrmRow, Fields)>,
        shared: bool,
    ) -> Result<(), SyncError> {
        let folder = self.folder(shared).await?;
        let folder_ref = FolderRef::Id(ItemId {
            id: folder.ews_folder_id.unwrap_or_default(),
            change_key: None,
        });
        // Items a crash (or a failed round) left in Exchange after CreateItem but before the
        // mapping: link them.
        let key = (self.smtp().to_owned(), self.table, shared);
        let verify = !self.engine.clean.lock().remove(&key);
        let mut existing = if verify {
            let ids: Vec<i64> = batch.iter().map(|(row, _)| row.id()).collect();
            self.engine
                .find_stamped(self.setup, self.ctx, &folder_ref, self.table, &ids)
                .await?
        } else {
            HashMap::new()
        };
        let mut to_create = Vec::new();
        let mut found = Vec::new();
        for (row, f) in &batch {
            let stamp = fields::crm_stamp(self.table, row.id());
            match existing.remove(&row.id()) {
                Some(id) => found.push((row, f, id)),
                None => match fields::to_item(self.area, f, &stamp) {
                    Ok(item) => to_create.push((row, f, item)),
                    Err(e) => self.fail(row.id(), "", e).await,
                },
            }
        }
        self.created_all(found, shared).await?;
        for chunk in to_create.chunks(ITEM_BATCH) {
            let op = CreateItem {
                folder: Some(folder_ref.clone()),
                items: chunk.iter().map(|(_, _, item)| item.clone()).collect(),
                disposition: None,
            };
            let results = self.engine.call(self.setup, self.ctx, &op).await?;
            let mut made = Vec::new();
            let mut retry = None;
            for ((row, f, _), result) in chunk.iter().zip(results) {
                match result {
                    Ok(id) => {
                        self.engine.note_own_write(&id);
                        made.push((*row, *f, id))
                    }
                    Err(e @ (ews::Error::Throttled { .. } | ews::Error::Transient(_))) => {
                        retry.get_or_insert(sync_error(e));
                    }
                    Err(e) => {
                        self.fail(row.id(), "", format!("Exchange refused the item: {e}"))
                            .await
                    }
                }
            }
            // What was created is recorded before a throttled rest is retried.
            let created = made.len();
            self.created_all(made, shared).await?;
            for _ in 0..created {
                self.counted("to_exchange", "create");
            }
            if let Some(e) = retry {
                return Err(e);
            }
        }
        self.engine.clean.lock().insert(key);
        Ok(())
    }

    /// Records created (or found) items: ews_id on each row, then the mappings with the rows'
    /// versions after that write, so the write is recognised as our own. One statement (or
    /// transaction) for the ews_ids and one for the mappings, not two commits per item.
    async fn created_all(
        &mut self,
        made: Vec<(&CrmRow, &Fields, ItemId)>,
        shared: bool,
    ) -> Result<(), SyncError> {
        if made.is_empty() {
            return Ok(());
        }
        let ids: Vec<(i64, String)> = made
            .iter()
            .map(|(row, _, id)| (row.id(), id.id.clone()))
            .collect();
        let written = self
            .engine
            .crm
            .set_ews_ids(self.table, &ids)
            .await
            .map_err(db_error)?;
        let mappings: Vec<ItemMapping> = made
            .iter()
            .zip(written)
            .map(|((row, f, id), written)| {
                let version = own_version(crate::db::rows::version_of(row), written);
                self.mapping(row.id(), id, version, f, shared)
            })
            .collect();
        self.engine
            .state
            .put_mappings(&mappings)
            .await
            .map_err(db_error)
    }
}

impl Engine {
    async fn step(self, req: StepRequest) -> Result<StepReport, SyncError> {
        let inner = &*self.0;
        let smtp: &str = &req.mailbox;
        let setup = inner
            .mailboxes
            .read()
            .get(smtp)
            .cloned()
            .ok_or_else(|| SyncError::Failed(format!("mailbox {smtp} is not configured")))?;
        let owner = inner.owners.read().get(smtp).copied();
        let owner = match owner {
            Some(o) => o,
            None => inner.owner(&setup).await?,
        };
        if &*req.folder == super::mail::MAIL {
            let leading = setup
                .areas
                .get(&Area::Mail)
                .map_or(Leading::Crm, |c| c.leading);
            let mut step = super::mail::MailStep {
                engine: inner,
                setup: &setup,
                owner,
                ctx: &req.ctx,
                leading,
                items: 0,
                seen: 0,
                counts: BTreeMap::new(),
            };
            // Only notifications, CRM changes or a previous "more": read only the folders that
            // were named; a start, a timer or an operator reads every synced folder.
            let only_dirty = !req.full_resync
                && req.causes.iter().all(|c| {
                    matches!(
                        c,
                        mailsync_actors::Cause::Notification
                            | mailsync_actors::Cause::Crm
                            | mailsync_actors::Cause::More
                    )
                });
            let more = step.run(req.full_resync, only_dirty).await?;
            return Ok(StepReport {
                items: step.items,
                more,
            });
        }
        let area = area_of(&req.folder)?;
        let config = setup
            .areas
            .get(&area)
            .cloned()
            .ok_or_else(|| SyncError::Failed(format!("{area:?} is not enabled")))?;
        let mut step = Step {
            engine: inner,
            setup: &setup,
            owner,
            area,
            table: fields::table(area),
            config,
            ctx: &req.ctx,
            items: 0,
            counts: BTreeMap::new(),
            seen: 0,
            needs_pull: false,
        };
        if &*req.folder == SHARED_CONTACTS {
            // Exchange -> CRM only: the "contacts" folder actor writes every queued contact,
            // shared ones included, so no row is ever handled by two actors at once.
            let more = step.pull_exchange(true, req.full_resync).await?;
            return Ok(StepReport {
                items: step.items,
                more,
            });
        }
        if req.full_resync {
            step.queue_all().await?;
        }
        // A step only for CRM changes needs no SyncFolderItems: updates carry the ChangeKey
        // last seen and are refused if Exchange changed since (that change's notification then
        // runs a full step), so an isolated CRM change costs its write (and a stamp lookup).
        let pull = req.full_resync || req.causes.iter().any(|c| c != mailsync_actors::Cause::Crm);
        let mut more = false;
        if pull {
            more |= step.pull_exchange(false, req.full_resync).await?;
        }
        more |= step.push_crm().await?;
        more |= step.needs_pull;
        Ok(StepReport {
            items: step.items,
            more,
        })
    }
}

impl Engine {
    /// The initial sync of a mailbox's mail: the folder tree and every message of the synced
    /// folders from scratch, steps repeated until nothing is left. Direction decides which side
    /// wins where both changed; the same message on both sides is linked, not copied.
    async fn initial_mail(
        &self,
        setup: &MailboxSetup,
        owner: Owner,
        ctx: &StepContext,
        direction: Direction,
        progress: &(dyn Fn(&str, u64, u64) + Send + Sync),
    ) -> Result<AreaSummary, SyncError> {
        let inner = &*self.0;
        let started = std::time::Instant::now();
        let failures_before = inner
            .state
            .failures_count(&setup.smtp, "crm_mails")
            .await
            .map_err(db_error)?;
        let crm_total = inner
            .crm
            .ids_in_scope("crm_mails", Some(owner.operator_id), owner.tenant_id)
            .await
            .map_err(db_error)?
            .len() as u64;
        let mut step = super::mail::MailStep {
            engine: inner,
            setup,
            owner,
            ctx,
            leading: match direction {
                Direction::CrmToExchange => Leading::Crm,
                Direction::ExchangeToCrm => Leading::Exchange,
            },
            items: 0,
            seen: 0,
            counts: BTreeMap::new(),
        };
        let mut full = true;
        loop {
            // Every step is resumable: a server that says "busy" is waited for, not fatal.
            let more = match step.run(full, false).await {
                Ok(more) => more,
                Err(SyncError::Throttled { back_off }) => {
                    tokio::time::sleep(back_off).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            full = false;
            progress(super::mail::MAIL, step.seen, step.seen.max(crm_total));
            if !more {
                break;
            }
        }
        let failures = inner
            .state
            .failures_count(&setup.smtp, "crm_mails")
            .await
            .map_err(db_error)?
            - failures_before;
        Ok(AreaSummary {
            area: super::mail::MAIL.to_owned(),
            seen: step.seen,
            counts: step.counts,
            failures,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

impl SyncPort for Engine {
    fn open_mailbox(
        &self,
        mailbox: &MailboxSpec,
        ctx: StepContext,
    ) -> BoxFuture<'static, Result<Vec<FolderId>, SyncError>> {
        let engine = self.clone();
        let spec = mailbox.clone();
        Box::pin(async move { engine.0.open(&spec, ctx).await })
    }

    fn sync_folder(&self, step: StepRequest) -> BoxFuture<'static, Result<StepReport, SyncError>> {
        Box::pin(self.clone().step(step))
    }
}

/// Which side an initial sync starts from: its items are created on the other side, and where
/// an item exists on both (linked by the stamped CRM id), its values win.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// CRM rows are written to Exchange first.
    CrmToExchange,
    /// Exchange items are imported into the CRM first.
    ExchangeToCrm,
}

/// What an initial sync did in one area.
#[derive(Debug, Clone, Default)]
pub struct AreaSummary {
    /// The area.
    pub area: String,
    /// Items looked at.
    pub seen: u64,
    /// Writes by (direction, action).
    pub counts: BTreeMap<(String, String), u64>,
    /// Items that went to the failure log.
    pub failures: i64,
    /// Wall time.
    pub seconds: f64,
}

impl Engine {
    /// The initial sync of one mailbox: every area from scratch, the source side first, then
    /// the other side's items, so both sides end equal. Resumable: a restart after a crash links
    /// what was already written (by the stamped CRM id and the mappings) instead of copying it.
    /// `progress(area, seen, total)` is called as the work advances.
    pub async fn initial_sync(
        &self,
        spec: &MailboxSpec,
        direction: Direction,
        throttle: mailsync_actors::Throttle,
        progress: &(dyn Fn(&str, u64, u64) + Send + Sync),
    ) -> Result<Vec<AreaSummary>, SyncError> {
        let inner = &*self.0;
        let ctx = StepContext::new(throttle);
        let folders = inner.open(spec, ctx.clone()).await?;
        let smtp: &str = &spec.smtp;
        let setup = self
            .mailbox(smtp)
            .ok_or_else(|| SyncError::Failed(format!("mailbox {smtp} is not configured")))?;
        let owner = inner.owner(&setup).await?;
        let mut summaries = Vec::new();
        for folder in folders.into_iter().filter(|f| &**f != SHARED_CONTACTS) {
            let started = std::time::Instant::now();
            if &*folder == super::mail::MAIL {
                summaries.push(
                    self.initial_mail(&setup, owner, &ctx, direction, progress)
                        .await?,
                );
                continue;
            }
            let area = area_of(&folder)?;
            let mut config = setup.areas.get(&area).cloned().unwrap_or(AreaConfig {
                leading: Leading::Crm,
                categories: vec![],
            });
            config.leading = match direction {
                Direction::CrmToExchange => Leading::Crm,
                Direction::ExchangeToCrm => Leading::Exchange,
            };
            let table = fields::table(area);
            let crm_total = inner
                .crm
                .ids_in_scope(table, Some(owner.operator_id), owner.tenant_id)
                .await
                .map_err(db_error)?
                .len()
                + if area == Area::Contacts {
                    inner
                        .crm
                        .ids_in_scope(table, None, owner.tenant_id)
                        .await
                        .map_err(db_error)?
                        .len()
                } else {
                    0
                };
            let get = GetFolder {
                folders: vec![FolderRef::well_known(distinguished(area))],
                shape: Shape::all_properties(vec![]),
            };
            let ews_total = inner
                .call(&setup, &ctx, &get)
                .await?
                .into_iter()
                .next()
                .and_then(Result::ok)
                .and_then(|f| f.total_count)
                .unwrap_or(0) as u64;
            let total = crm_total as u64 + ews_total;
            let failures_before = inner
                .state
                .failures_count(smtp, table)
                .await
                .map_err(db_error)?;
            let mut step = Step {
                engine: inner,
                setup: &setup,
                owner,
                area,
                table,
                config,
                ctx: &ctx,
                items: 0,
                counts: BTreeMap::new(),
                seen: 0,
                needs_pull: false,
            };
            let shared_too = area == Area::Contacts;
            let report = |step: &Step<'_>| progress(area.as_str(), step.seen.min(total), total);
            // Appointments are linked by UID when Exchange items are read, so the calendar
            // reads Exchange first whatever the direction (the leading side still wins).
            let pull_first = area == Area::Calendar;
            if direction == Direction::CrmToExchange && !pull_first {
                step.queue_all().await?;
                while step.push_crm().await? {
                    report(&step);
                }
                report(&step);
            }
            for shared in [false, true].into_iter().filter(|s| !*s || shared_too) {
                let mut first = true;
                while step.pull_exchange(shared, first).await? {
                    first = false;
                    report(&step);
                }
                report(&step);
            }
            if direction == Direction::ExchangeToCrm || pull_first {
                step.queue_all().await?;
                while step.push_crm().await? {
                    report(&step);
                }
            }
            report(&step);
            let failures = inner
                .state
                .failures_count(smtp, table)
                .await
                .map_err(db_error)?
                - failures_before;
            summaries.push(AreaSummary {
                area: area.as_str().to_owned(),
                seen: step.seen,
                counts: step.counts,
                failures,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        Ok(summaries)
    }
}
