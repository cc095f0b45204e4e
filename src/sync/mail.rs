//! Mail sync: the folder tree and the messages of one mailbox, both ways (docs/mapping.md,
//! "Mail").
//!
//! One runtime folder (`mail`) per mailbox runs the whole tree, so a move between two folders
//! is seen as one change in one step. A step: (1) the folder tree from Exchange
//! (SyncFolderHierarchy under msgfolderroot; distinguished folders are recognised by their
//! role, never by name), (2) the CRM's folder changes to Exchange, (3) the messages of every
//! synced folder from Exchange (SyncFolderItems with ids, flags and sizes; MIME read with
//! GetItem in batches bounded by bytes), (4) the CRM's mail changes to Exchange (CreateItem
//! with MimeContent, IsRead, MoveItem, DeleteItem), (5) the outbox (SendAndSaveCopy, or SMTP
//! for an alternative sender).
//!
//! No duplicates: a message mailsync writes carries the CRM id (stamp); a message from
//! Exchange is written to the CRM with its Exchange id first. A message that moved in Exchange
//! comes as a delete in one folder and a create in another; creates are handled before
//! deletes and linked to the row being deleted by stamp or Internet-Message-ID, so the row
//! moves instead of being copied.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::NaiveDate;
use ews::items::{Item, Message};
use ews::ops::{
    ConflictResolution, CreateFolder, CreateItem, DeleteFolder, DeleteItem, DeleteType,
    FolderChange, GetFolder, GetItem, ItemChange, ItemUpdate, MessageDisposition, MoveFolder,
    MoveItem, SyncFolderHierarchy, SyncFolderItems, UpdateFolder, UpdateItem,
};
use ews::types::{BaseShape, DistinguishedFolder, FolderRef, ItemId, PropertyPath, Shape};
use mailsync_actors::{StepContext, SyncError};
use parking_lot::Mutex;
use serde_json::json;

use super::engine::{db_error, own_version, sync_error, Inner, MailboxSetup, Owner};
use super::fields;
use crate::config::{Leading, MailDeleteMode};
use crate::db::mail::{MailFolderRow, MailRow, NewMail};
use crate::db::state::{FolderState, ItemMapping};

/// The runtime folder that syncs a mailbox's mail.
pub const MAIL: &str = "mail";
/// ms_folder_state key of the folder tree.
const HIERARCHY: &str = "mail/hierarchy";
const FOLDERS: &str = "crm_mail_folders";
const MAILS: &str = "crm_mails";
const OUTBOX: &str = "crm_outbox";
/// MIME bytes per GetItem or CreateItem request: a step holds at most about this much mail.
pub const BYTES_PER_REQUEST: u64 = 4 * 1024 * 1024;
/// Messages per GetItem or CreateItem request.
const MAILS_PER_REQUEST: usize = 50;
/// Queued rows handled per step.
const QUEUE_BATCH: i64 = 500;
/// Pages of SyncFolderItems per folder and step (a folder with more asks for another step).
const PAGES_PER_STEP: usize = 4;

/// The distinguished mail folders and their CRM roles (the wire name is the role).
const ROLES: [(DistinguishedFolder, &str); 6] = [
    (DistinguishedFolder::Inbox, "inbox"),
    (DistinguishedFolder::SentItems, "sentitems"),
    (DistinguishedFolder::Drafts, "drafts"),
    (DistinguishedFolder::DeletedItems, "deleteditems"),
    (DistinguishedFolder::JunkEmail, "junkemail"),
    (DistinguishedFolder::Outbox, "outbox"),
];

/// A mailbox's distinguished folders, read once per process.
#[derive(Debug, Clone, Default)]
pub(super) struct Roles {
    /// msgfolderroot's id: the parent of top-level folders.
    root: String,
    /// Exchange folder id → role.
    by_id: HashMap<String, &'static str>,
}

/// What the engine keeps about the mail side of its mailboxes.
#[derive(Default)]
pub struct MailState {
    roles: Mutex<HashMap<String, Arc<Roles>>>,
    /// Exchange folder ids of each mailbox's synced mail folders (for notifications).
    folders: Mutex<HashMap<String, String>>,
    /// Folders a notification named since their last sync, per mailbox.
    dirty: Mutex<HashMap<String, HashSet<String>>>,
    /// Folders whose last pull had more to read, per mailbox.
    unfinished: Mutex<HashMap<String, HashSet<String>>>,
}

impl MailState {
    /// The mailbox whose synced mail folder this Exchange folder is, if any.
    pub fn mailbox_of(&self, ews_folder: &str) -> Option<String> {
        self.folders.lock().get(ews_folder).cloned()
    }

    /// Notes that a notification named this folder (or the tree changed, `None`).
    pub fn mark_dirty(&self, mailbox: &str, ews_folder: &str) {
        self.dirty
            .lock()
            .entry(mailbox.to_owned())
            .or_default()
            .insert(ews_folder.to_owned());
    }
}

/// The folder view a step works with.
#[derive(Debug, Clone)]
struct SyncedFolder {
    row: MailFolderRow,
    ews_id: String,
    excluded: bool,
    sync_from: Option<NaiveDate>,
}

/// The mapping base of a folder.
fn folder_base(
    name: &str,
    parent: Option<i64>,
    excluded: bool,
    from: Option<NaiveDate>,
) -> serde_json::Value {
    json!({ "name": name, "parent": parent, "excluded": excluded, "sync_from": from })
}

/// The mapping base of a mail.
fn mail_base(folder: i64, is_read: bool) -> serde_json::Value {
    json!({ "folder": folder, "is_read": is_read })
}

fn base_i64(m: &ItemMapping, key: &str) -> Option<i64> {
    m.fields.get(key).and_then(serde_json::Value::as_i64)
}

fn base_bool(m: &ItemMapping, key: &str) -> Option<bool> {
    m.fields.get(key).and_then(serde_json::Value::as_bool)
}

/// PR_MESSAGE_FLAGS for a message mailsync files: read or unread, never MSGFLAG_UNSENT.
/// Exchange keeps a message created with SaveOnly as an unsent draft (opened for editing in
/// Outlook) unless this is set at creation; a mirror of received or sent mail is no draft.
fn message_flags(is_read: bool) -> ews::types::ExtendedProperty {
    ews::types::ExtendedProperty {
        uri: ews::types::ExtendedFieldUri::tag("0x0E07", "Integer"),
        value: if is_read { "1" } else { "0" }.into(),
    }
}

fn is_mail_class(class: Option<&str>) -> bool {
    class.is_none_or(|c| c == "IPF.Note" || c.starts_with("IPF.Note."))
}

fn delete_type(mode: Option<MailDeleteMode>) -> DeleteType {
    match mode.unwrap_or(MailDeleteMode::MoveToDeletedItems) {
        MailDeleteMode::MoveToDeletedItems => DeleteType::MoveToDeletedItems,
        MailDeleteMode::SoftDelete => DeleteType::SoftDelete,
        MailDeleteMode::HardDelete => DeleteType::HardDelete,
    }
}

fn id_of(s: &str) -> ItemId {
    ItemId {
        id: s.to_owned(),
        change_key: None,
    }
}

fn pull_shape() -> Shape {
    Shape {
        base: BaseShape::IdOnly,
        additional: vec![
            PropertyPath::Field("message:IsRead".into()),
            PropertyPath::Field("item:Size".into()),
            PropertyPath::Field("item:DateTimeReceived".into()),
            PropertyPath::Field("message:InternetMessageId".into()),
            fields::crm_id_path(),
        ],
    }
}

fn mailbox_list(m: &Message) -> Option<String> {
    let all: Vec<String> =
        m.to.iter()
            .chain(&m.cc)
            .filter_map(|b| b.email.clone())
            .collect();
    (!all.is_empty()).then(|| all.join(", "))
}

/// A new message seen in a folder, before it is linked or read.
#[derive(Debug, Clone)]
struct Seen {
    id: ItemId,
    folder: i64,
    is_read: bool,
    size: u64,
    message_id: Option<String>,
    stamped: Option<i64>,
}

/// What a step read from the folders of Exchange.
#[derive(Default)]
struct Reads {
    creates: Vec<Seen>,
    updates: Vec<(ItemId, i64, Option<bool>)>,
    deletes: Vec<ItemId>,
    /// (state key, Exchange folder id, new sync state), stored after the changes are applied.
    next_states: Vec<(String, String, Option<String>)>,
    /// Folders with more to read.
    more: HashSet<String>,
}

/// One mail step's working set.
pub(super) struct MailStep<'a> {
    pub(super) engine: &'a Inner,
    pub(super) setup: &'a MailboxSetup,
    pub(super) owner: Owner,
    pub(super) ctx: &'a StepContext,
    /// Which side wins when both changed (initial sync: the source side).
    pub(super) leading: Leading,
    pub(super) items: u64,
    pub(super) seen: u64,
    pub(super) counts: BTreeMap<(String, String), u64>,
}

impl<'a> MailStep<'a> {
    fn smtp(&self) -> &str {
        &self.setup.smtp
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
            .with_label_values(&["mail", direction, action])
            .inc();
    }

    /// One step; true when there is more to do.
    pub(super) async fn run(&mut self, full: bool, only_dirty: bool) -> Result<bool, SyncError> {
        let roles = self.roles().await?;
        if full {
            self.queue_all().await?;
        }
        let mut more = self.pull_hierarchy(&roles, full).await?;
        more |= self.push_folders(&roles).await?;
        let folders = self.folders().await?;
        // CRM changes go first and the folders they wrote into are read after them: Exchange
        // reports net changes, so a message we wrote that a user deletes before the folder's
        // next read would never be reported deleted unless that read already knew it.
        more |= self.push_mails(&folders).await?;
        // The outbox is read when the change feed queued rows of it, or on a start, a timer or
        // an admin trigger (rows written before the feed's first position), not on every step.
        self.send_outbox(&roles, full || !only_dirty).await?;
        more |= self.pull_mails(&folders, full, only_dirty).await?;
        Ok(more)
    }

    /// Queues every CRM folder and mail of the operator (a full resync, an initial sync).
    pub(super) async fn queue_all(&self) -> Result<(), SyncError> {
        let crm = &self.engine.crm;
        let mut items = Vec::new();
        for table in [FOLDERS, MAILS] {
            for id in crm
                .ids_in_scope(table, Some(self.owner.operator_id), self.owner.tenant_id)
                .await
                .map_err(db_error)?
            {
                items.push((self.smtp().to_owned(), table.to_owned(), id));
            }
        }
        self.engine
            .state
            .add_pending(&items)
            .await
            .map_err(db_error)
    }

    async fn roles(&self) -> Result<Arc<Roles>, SyncError> {
        if let Some(r) = self.engine.mail.roles.lock().get(self.smtp()) {
            return Ok(r.clone());
        }
        let mut refs = vec![FolderRef::well_known(DistinguishedFolder::MsgFolderRoot)];
        refs.extend(ROLES.iter().map(|(d, _)| FolderRef::well_known(*d)));
        let op = GetFolder {
            folders: refs,
            shape: Shape::id_only(),
        };
        let found = self.engine.call(self.setup, self.ctx, &op).await?;
        let mut roles = Roles::default();
        for (i, f) in found.into_iter().enumerate() {
            let id = f
                .map_err(sync_error)?
                .id
                .ok_or_else(|| SyncError::Failed("GetFolder answered a folder without id".into()))?
                .id;
            match i {
                0 => roles.root = id,
                n => {
                    roles.by_id.insert(id, ROLES[n - 1].1);
                }
            }
        }
        self.engine
            .mail
            .folders
            .lock()
            .insert(roles.root.clone(), self.smtp().to_owned());
        let roles = Arc::new(roles);
        self.engine
            .mail
            .roles
            .lock()
            .insert(self.smtp().to_owned(), roles.clone());
        Ok(roles)
    }

    // ---- the folder tree ----

    async fn mapping_of_folder(&self, ews_id: &str) -> Result<Option<ItemMapping>, SyncError> {
        self.engine
            .state
            .mapping_by_ews(self.smtp(), ews_id)
            .await
            .map_err(db_error)
            .map(|m| m.filter(|m| m.crm_table == FOLDERS))
    }

    /// The CRM folder of an Exchange parent (`None`: the top of the tree).
    async fn crm_parent(
        &self,
        roles: &Roles,
        parent: Option<&ItemId>,
    ) -> Result<Option<Option<i64>>, SyncError> {
        match parent {
            None => Ok(Some(None)),
            Some(p) if p.id == roles.root => Ok(Some(None)),
            Some(p) => Ok(self.mapping_of_folder(&p.id).await?.map(|m| Some(m.crm_id))),
        }
    }

    fn put_folder_mapping(
        &self,
        crm_id: i64,
        ews_id: &str,
        version: i64,
        base: serde_json::Value,
    ) -> ItemMapping {
        ItemMapping {
            mailbox: self.smtp().to_owned(),
            crm_table: FOLDERS.into(),
            crm_id,
            ews_item_id: ews_id.to_owned(),
            change_key: None,
            crm_version: Some(version),
            fields: base,
        }
    }

    /// Exchange → CRM: folder changes. True when Exchange has more.
    async fn pull_hierarchy(&mut self, roles: &Roles, full: bool) -> Result<bool, SyncError> {
        let state = self
            .engine
            .state
            .folder_state(self.smtp(), HIERARCHY)
            .await
            .map_err(db_error)?;
        let op = SyncFolderHierarchy {
            folder: Some(FolderRef::well_known(DistinguishedFolder::MsgFolderRoot)),
            shape: Shape::all_properties(vec![]),
            sync_state: if full { None } else { state.sync_state },
        };
        let reply = self.engine.call(self.setup, self.ctx, &op).await?;
        // Parents come before children in a first sync; a folder whose parent is not known yet
        // (created in the same batch, listed later) waits for the next pass.
        let mut todo: Vec<FolderChange> = reply.changes;
        loop {
            let before = todo.len();
            let mut later = Vec::new();
            for change in todo {
                if !self.folder_change(roles, &change).await? {
                    later.push(change);
                }
            }
            todo = later;
            if todo.is_empty() || todo.len() == before {
                break;
            }
        }
        for change in &todo {
            tracing::warn!(
                mailbox = self.smtp(),
                ?change,
                "mail folder whose parent is not synced; left out"
            );
        }
        self.engine
            .state
            .set_folder_state(
                self.smtp(),
                HIERARCHY,
                &FolderState {
                    ews_folder_id: Some(roles.root.clone()),
                    sync_state: Some(reply.sync_state),
                },
            )
            .await
            .map_err(db_error)?;
        Ok(!reply.includes_last)
    }

    /// Applies one folder change; false when its parent is not known yet.
    async fn folder_change(
        &mut self,
        roles: &Roles,
        change: &FolderChange,
    ) -> Result<bool, SyncError> {
        let state = &self.engine.state;
        let crm = &self.engine.crm;
        match change {
            FolderChange::Delete(id) => {
                if let Some(m) = self.mapping_of_folder(&id.id).await? {
                    self.forget_folder_tree(m.crm_id).await?;
                    crm.delete_mail_folder(m.crm_id).await.map_err(db_error)?;
                    self.counted("to_crm", "delete_folder");
                }
                Ok(true)
            }
            FolderChange::Create(f) | FolderChange::Update(f) => {
                let Some(id) = f.id.clone() else {
                    return Ok(true);
                };
                if !is_mail_class(f.folder_class.as_deref()) {
                    return Ok(true);
                }
                let role = roles.by_id.get(&id.id).copied();
                let Some(parent) = self.crm_parent(roles, f.parent.as_ref()).await? else {
                    return Ok(false);
                };
                let name = f.display_name.clone().unwrap_or_default();
                if let Some(m) = self.mapping_of_folder(&id.id).await? {
                    let base_name = m
                        .fields
                        .get("name")
                        .and_then(|v| v.as_str())
                        .map(str::to_owned);
                    let base_parent = base_i64(&m, "parent");
                    if role.is_some()
                        || (base_name.as_deref() == Some(name.as_str()) && base_parent == parent)
                    {
                        return Ok(true);
                    }
                    let Some(row) = crm.mail_folder(m.crm_id).await.map_err(db_error)? else {
                        return Ok(true);
                    };
                    let crm_changed = Some(row.version) != m.crm_version;
                    if crm_changed && self.leading == Leading::Crm {
                        // The CRM's own rename or move is queued and wins.
                        return Ok(true);
                    }
                    if let Some(v) = crm
                        .update_mail_folder(row.id, &name, parent, &id.id)
                        .await
                        .map_err(db_error)?
                    {
                        let mut base = m.fields.clone();
                        base["name"] = json!(name);
                        base["parent"] = json!(parent);
                        state
                            .put_mapping(&self.put_folder_mapping(row.id, &id.id, v, base))
                            .await
                            .map_err(db_error)?;
                        self.counted("to_crm", "update_folder");
                    }
                    return Ok(true);
                }
                // Not mapped: link to the CRM folder of the same role, or the one that carries
                // this id (a crash after the insert), or an unmapped one of the same name and
                // parent; else create it.
                let all = crm
                    .mail_folders(self.owner.operator_id)
                    .await
                    .map_err(db_error)?;
                let mapped: HashSet<i64> = state
                    .mappings_by_crm(
                        self.smtp(),
                        FOLDERS,
                        &all.iter().map(|f| f.id).collect::<Vec<_>>(),
                    )
                    .await
                    .map_err(db_error)?
                    .into_keys()
                    .collect();
                let found = all.iter().find(|r| match role {
                    Some(role) => r.role.as_deref() == Some(role),
                    None => {
                        r.ews_id.as_deref() == Some(id.id.as_str())
                            || (!mapped.contains(&r.id)
                                && r.role.is_none()
                                && r.parent_id == parent
                                && r.name.eq_ignore_ascii_case(&name))
                    }
                });
                let (crm_id, version, base_name) = match found {
                    Some(r) => {
                        let v = crm
                            .update_mail_folder(r.id, &r.name, r.parent_id, &id.id)
                            .await
                            .map_err(db_error)?
                            .unwrap_or(r.version);
                        (r.id, v, r.name.clone())
                    }
                    None => {
                        let (crm_id, v) = crm
                            .insert_mail_folder(self.owner.operator_id, parent, &name, role, &id.id)
                            .await
                            .map_err(db_error)?;
                        self.counted("to_crm", "create_folder");
                        (crm_id, v, name.clone())
                    }
                };
                let base = folder_base(&base_name, parent, false, None);
                state
                    .put_mapping(&self.put_folder_mapping(crm_id, &id.id, version, base))
                    .await
                    .map_err(db_error)?;
                Ok(true)
            }
        }
    }

    /// Drops the mappings of a folder's subtree and mails (the folder is gone in Exchange
    /// with everything in it; the CRM delete cascades).
    async fn forget_folder_tree(&self, folder: i64) -> Result<(), SyncError> {
        let crm = &self.engine.crm;
        let state = &self.engine.state;
        let all = crm
            .mail_folders(self.owner.operator_id)
            .await
            .map_err(db_error)?;
        let mut tree = vec![folder];
        let mut i = 0;
        while i < tree.len() {
            let f = tree[i];
            tree.extend(all.iter().filter(|r| r.parent_id == Some(f)).map(|r| r.id));
            i += 1;
        }
        for f in tree {
            for id in crm.mail_ids_in_folder(f).await.map_err(db_error)? {
                state
                    .delete_mapping(self.smtp(), MAILS, id)
                    .await
                    .map_err(db_error)?;
            }
            state
                .delete_mapping(self.smtp(), FOLDERS, f)
                .await
                .map_err(db_error)?;
        }
        Ok(())
    }

    /// Drops the mappings of the mails that were in a folder the CRM deleted (the rows are gone
    /// with it; the messages go with the Exchange folder).
    async fn forget_folder_mails(&self, folder: i64) -> Result<(), SyncError> {
        let state = &self.engine.state;
        for m in state
            .mappings_of(self.smtp(), MAILS)
            .await
            .map_err(db_error)?
        {
            if base_i64(&m, "folder") == Some(folder) {
                state
                    .delete_mapping(self.smtp(), MAILS, m.crm_id)
                    .await
                    .map_err(db_error)?;
            }
        }
        Ok(())
    }

    /// CRM → Exchange: queued folder rows. True when the queue has more.
    async fn push_folders(&mut self, roles: &Roles) -> Result<bool, SyncError> {
        let state = &self.engine.state;
        let crm = &self.engine.crm;
        let queued = state
            .pending(self.smtp(), FOLDERS, QUEUE_BATCH)
            .await
            .map_err(db_error)?;
        if queued.is_empty() {
            return Ok(false);
        }
        let all = crm
            .mail_folders(self.owner.operator_id)
            .await
            .map_err(db_error)?;
        let by_id: HashMap<i64, &MailFolderRow> = all.iter().map(|f| (f.id, f)).collect();
        let queued_ids: HashSet<i64> = queued.iter().map(|(id, _)| *id).collect();
        let mut done = Vec::new();
        // Parents first, so a new subtree is created top-down in one step.
        let mut order: Vec<(i64, i64)> = Vec::new();
        for f in &all {
            if let Some(q) = queued.iter().find(|(id, _)| *id == f.id) {
                order.push(*q);
            }
        }
        order.extend(queued.iter().filter(|(id, _)| !by_id.contains_key(id)));
        for (crm_id, token) in order {
            let mapping = state
                .mapping_by_crm(self.smtp(), FOLDERS, crm_id)
                .await
                .map_err(db_error)?;
            match (by_id.get(&crm_id), mapping) {
                (None, Some(m)) => {
                    // Deleted in the CRM: delete in Exchange (never a distinguished folder),
                    // unless its parent went with it (the subtree goes in one piece). The
                    // mapping stays as a tombstone, so the folder, now in Deleted Items, does
                    // not come back; the mappings of its mails go.
                    let cascaded = base_i64(&m, "parent").is_some_and(|p| !by_id.contains_key(&p));
                    self.forget_folder_mails(crm_id).await?;
                    if cascaded {
                        done.push((crm_id, token));
                        continue;
                    }
                    if !roles.by_id.contains_key(&m.ews_item_id) {
                        let op = DeleteFolder {
                            folder: id_of(&m.ews_item_id),
                            delete_type: delete_type(self.setup.mail.delete_mode),
                        };
                        match self.engine.call_ews(self.setup, self.ctx, &op).await {
                            // Gone already: nothing to delete.
                            Ok(()) | Err(ews::Error::NotFound(_)) => {
                                self.counted("to_exchange", "delete_folder")
                            }
                            Err(e @ (ews::Error::Throttled { .. } | ews::Error::Transient(_))) => {
                                return Err(sync_error(e))
                            }
                            Err(e) => {
                                let reason = format!("Exchange refused to delete the folder: {e}");
                                self.fail(FOLDERS, crm_id, &reason).await;
                            }
                        }
                    }
                }
                (None, None) => {}
                (Some(row), Some(m)) => {
                    if Some(row.version) != m.crm_version {
                        self.folder_changed_in_crm(roles, row, m, &by_id).await?;
                    }
                }
                (Some(row), None) => {
                    let parent_ews = match row.parent_id {
                        None => Some(roles.root.clone()),
                        Some(p) => state
                            .mapping_by_crm(self.smtp(), FOLDERS, p)
                            .await
                            .map_err(db_error)?
                            .map(|m| m.ews_item_id),
                    };
                    let Some(parent_ews) = parent_ews else {
                        // The parent is not in Exchange yet (its creation is queued or failed).
                        if !row.parent_id.is_some_and(|p| queued_ids.contains(&p)) {
                            self.fail(FOLDERS, row.id, "its parent folder is not synced")
                                .await;
                        }
                        done.push((crm_id, token));
                        continue;
                    };
                    self.folder_created_in_crm(roles, row, &parent_ews).await?;
                }
            }
            done.push((crm_id, token));
        }
        state
            .clear_pending(self.smtp(), FOLDERS, &done)
            .await
            .map_err(db_error)?;
        Ok(queued.len() as i64 >= QUEUE_BATCH)
    }

    /// A CRM row that cannot be synced: logged and in the failure log; the rest goes on.
    async fn fail(&self, table: &str, crm_id: i64, error: &str) {
        tracing::warn!(mailbox = self.smtp(), table, crm_id, error, "not synced");
        self.engine
            .metrics
            .failures
            .with_label_values(&["mail", "invalid_row"])
            .inc();
        let failure = crate::db::state::Failure {
            mailbox: self.smtp().to_owned(),
            crm_table: table.to_owned(),
            crm_id,
            ews_item_id: String::new(),
            error: error.to_owned(),
            attempts: 1,
        };
        if let Err(e) = self.engine.state.record_failure(&failure, None).await {
            tracing::error!(error = %e, "recording a failure failed");
        }
    }

    async fn folder_created_in_crm(
        &mut self,
        roles: &Roles,
        row: &MailFolderRow,
        parent_ews: &str,
    ) -> Result<(), SyncError> {
        let crm = &self.engine.crm;
        // A role folder is Exchange's distinguished folder: linked, never created.
        let ews_id = if let Some(role) = row.role.as_deref() {
            match roles.by_id.iter().find(|(_, r)| **r == role) {
                Some((id, _)) => id.clone(),
                None => {
                    // archive has no distinguished folder in EWS: an ordinary folder.
                    self.create_folder(row, parent_ews).await?
                }
            }
        } else if let Some(id) = row.ews_id.clone() {
            // Written by a run that crashed before its mapping, or imported earlier.
            match self.folder_exists(&id).await? {
                true => id,
                false => self.create_folder(row, parent_ews).await?,
            }
        } else {
            self.create_folder(row, parent_ews).await?
        };
        let v = crm
            .update_mail_folder(row.id, &row.name, row.parent_id, &ews_id)
            .await
            .map_err(db_error)?
            .unwrap_or(row.version);
        let base = folder_base(&row.name, row.parent_id, row.sync_excluded, row.sync_from);
        self.engine
            .state
            .put_mapping(&self.put_folder_mapping(row.id, &ews_id, v, base))
            .await
            .map_err(db_error)?;
        // Its mails were skipped while it had no Exchange folder.
        self.queue_folder_mails(row.id).await
    }

    async fn folder_exists(&self, id: &str) -> Result<bool, SyncError> {
        let op = GetFolder {
            folders: vec![FolderRef::Id(id_of(id))],
            shape: Shape::id_only(),
        };
        let found = self.engine.call(self.setup, self.ctx, &op).await?;
        Ok(matches!(found.first(), Some(Ok(_))))
    }

    async fn create_folder(
        &mut self,
        row: &MailFolderRow,
        parent_ews: &str,
    ) -> Result<String, SyncError> {
        let op = CreateFolder {
            parent: FolderRef::Id(id_of(parent_ews)),
            folders: vec![ews::items::Folder {
                display_name: Some(row.name.clone()),
                folder_class: Some("IPF.Note".into()),
                ..ews::items::Folder::default()
            }],
        };
        let created = self.engine.call(self.setup, self.ctx, &op).await?;
        match created.into_iter().next() {
            Some(Ok(id)) => {
                self.counted("to_exchange", "create_folder");
                Ok(id.id)
            }
            Some(Err(ews::Error::Response { code, .. })) if code == "ErrorFolderExists" => {
                // A folder of that name is there (made by the user, or by a run that crashed
                // before its mapping): link it.
                let find = ews::ops::FindFolder {
                    parent: FolderRef::Id(id_of(parent_ews)),
                    traversal: ews::ops::Traversal::Shallow,
                    shape: Shape::all_properties(vec![]),
                };
                let children = self.engine.call(self.setup, self.ctx, &find).await?;
                children
                    .into_iter()
                    .find(|f| {
                        f.display_name
                            .as_deref()
                            .is_some_and(|n| n.eq_ignore_ascii_case(&row.name))
                    })
                    .and_then(|f| f.id)
                    .map(|id| id.id)
                    .ok_or_else(|| {
                        SyncError::Failed(format!(
                            "folder {:?} exists and cannot be found",
                            row.name
                        ))
                    })
            }
            Some(Err(e)) => Err(sync_error(e)),
            None => Err(SyncError::Failed("CreateFolder answered nothing".into())),
        }
    }

    async fn folder_changed_in_crm(
        &mut self,
        roles: &Roles,
        row: &MailFolderRow,
        m: ItemMapping,
        by_id: &HashMap<i64, &MailFolderRow>,
    ) -> Result<(), SyncError> {
        let mut base = m.fields.clone();
        let is_role = roles.by_id.contains_key(&m.ews_item_id);
        let base_name = m
            .fields
            .get("name")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        let mut ews_id = m.ews_item_id.clone();
        if !is_role && base_name != row.name {
            let op = UpdateFolder {
                folder: id_of(&ews_id),
                display_name: row.name.clone(),
            };
            ews_id = self.engine.call(self.setup, self.ctx, &op).await?.id;
            base["name"] = json!(row.name);
            self.counted("to_exchange", "rename_folder");
        }
        if !is_role && base_i64(&m, "parent") != row.parent_id {
            let to = match row.parent_id {
                None => Some(roles.root.clone()),
                Some(p) if by_id.contains_key(&p) => self
                    .engine
                    .state
                    .mapping_by_crm(self.smtp(), FOLDERS, p)
                    .await
                    .map_err(db_error)?
                    .map(|m| m.ews_item_id),
                Some(_) => None,
            };
            if let Some(to) = to {
                let op = MoveFolder {
                    folder: id_of(&ews_id),
                    to: FolderRef::Id(id_of(&to)),
                };
                ews_id = self.engine.call(self.setup, self.ctx, &op).await?.id;
                base["parent"] = json!(row.parent_id);
                self.counted("to_exchange", "move_folder");
            }
        }
        // "excluded" and "sync_from" stay: `folders` compares them and catches up.
        let mapping = self.put_folder_mapping(row.id, &ews_id, row.version, base);
        self.engine
            .state
            .put_mapping(&mapping)
            .await
            .map_err(db_error)
    }

    async fn queue_folder_mails(&self, folder: i64) -> Result<(), SyncError> {
        let ids = self
            .engine
            .crm
            .mail_ids_in_folder(folder)
            .await
            .map_err(db_error)?;
        let items: Vec<(String, String, i64)> = ids
            .into_iter()
            .map(|id| (self.smtp().to_owned(), MAILS.to_owned(), id))
            .collect();
        self.engine
            .state
            .add_pending(&items)
            .await
            .map_err(db_error)
    }

    /// The CRM folders with their Exchange ids, and whether each is synced (CRM flags and the
    /// mailbox's configured paths). A folder that becomes synced catches up: its CRM mails are
    /// queued and its Exchange side is read from the start.
    async fn folders(&mut self) -> Result<Vec<SyncedFolder>, SyncError> {
        let crm = &self.engine.crm;
        let state = &self.engine.state;
        let all = crm
            .mail_folders(self.owner.operator_id)
            .await
            .map_err(db_error)?;
        let mappings = state
            .mappings_by_crm(
                self.smtp(),
                FOLDERS,
                &all.iter().map(|f| f.id).collect::<Vec<_>>(),
            )
            .await
            .map_err(db_error)?;
        let by_id: HashMap<i64, &MailFolderRow> = all.iter().map(|f| (f.id, f)).collect();
        let path_of = |row: &MailFolderRow| {
            let mut parts = Vec::new();
            let mut cur = Some(row);
            while let Some(r) = cur {
                parts.push(r.role.clone().unwrap_or_else(|| r.name.clone()));
                cur = r.parent_id.and_then(|p| by_id.get(&p).copied());
                if parts.len() > 64 {
                    break;
                }
            }
            parts.reverse();
            parts.join("/")
        };
        let config = &self.setup.mail;
        let mut out = Vec::new();
        for row in &all {
            let Some(m) = mappings.get(&row.id) else {
                continue;
            };
            let path = path_of(row);
            let excluded = row.sync_excluded
                || config.excluded_folders.iter().any(|p| {
                    p.eq_ignore_ascii_case(&path)
                        || path
                            .to_lowercase()
                            .starts_with(&format!("{}/", p.to_lowercase()))
                });
            let sync_from = row
                .sync_from
                .or_else(|| {
                    config
                        .folder_sync_from
                        .iter()
                        .find(|(p, _)| p.eq_ignore_ascii_case(&path))
                        .map(|(_, d)| *d)
                })
                .or(config.sync_from);
            let was_excluded = base_bool(m, "excluded").unwrap_or(false);
            let was_from: Option<NaiveDate> = m
                .fields
                .get("sync_from")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .flatten();
            let widened = (was_excluded && !excluded)
                || match (was_from, sync_from) {
                    (Some(a), Some(b)) => b < a,
                    (Some(_), None) => true,
                    _ => false,
                };
            if widened {
                // The backlog: CRM mails queued, the Exchange folder read from the start.
                self.queue_folder_mails(row.id).await?;
                state
                    .set_folder_state(
                        self.smtp(),
                        &format!("mail/{}", row.id),
                        &FolderState::default(),
                    )
                    .await
                    .map_err(db_error)?;
                tracing::info!(
                    mailbox = self.smtp(),
                    folder = path,
                    "mail folder included: catching up"
                );
            }
            if widened || was_excluded != excluded || was_from != sync_from {
                let mut base = m.fields.clone();
                base["excluded"] = json!(excluded);
                base["sync_from"] = json!(sync_from);
                let mut updated = m.clone();
                updated.fields = base;
                state.put_mapping(&updated).await.map_err(db_error)?;
            }
            out.push(SyncedFolder {
                row: row.clone(),
                ews_id: m.ews_item_id.clone(),
                excluded,
                sync_from,
            });
        }
        // Which Exchange folders notifications should name: updated in place (the index holds
        // every mailbox's folders; no copy of it per step).
        let mut index = self.engine.mail.folders.lock();
        for f in &out {
            if f.excluded {
                index.remove(&f.ews_id);
            } else {
                index.insert(f.ews_id.clone(), self.smtp().to_owned());
            }
        }
        drop(index);
        Ok(out)
    }

    // ---- messages, Exchange → CRM ----

    async fn pull_mails(
        &mut self,
        folders: &[SyncedFolder],
        full: bool,
        only_dirty: bool,
    ) -> Result<bool, SyncError> {
        let smtp = self.smtp().to_owned();
        let dirty: HashSet<String> = self
            .engine
            .mail
            .dirty
            .lock()
            .remove(&smtp)
            .unwrap_or_default();
        let unfinished: HashSet<String> = self
            .engine
            .mail
            .unfinished
            .lock()
            .remove(&smtp)
            .unwrap_or_default();
        let result = self
            .pull_mails_of(folders, full, only_dirty, &dirty, &unfinished)
            .await;
        if result.is_err() {
            // Give the notifications back: the retry must still look there.
            let mut d = self.engine.mail.dirty.lock();
            let e = d.entry(smtp.clone()).or_default();
            e.extend(dirty);
            e.extend(unfinished);
        }
        result
    }

    /// Reads one folder's changes (up to `PAGES_PER_STEP` pages) into `reads`.
    async fn read_folder(
        &mut self,
        f: &SyncedFolder,
        current: FolderState,
        full: bool,
        reads: &mut Reads,
    ) -> Result<(), SyncError> {
        let mut sync_state = if full || current.ews_folder_id.as_deref() != Some(f.ews_id.as_str())
        {
            None
        } else {
            current.sync_state
        };
        let mut finished = false;
        for _ in 0..PAGES_PER_STEP {
            let op = SyncFolderItems {
                folder: FolderRef::Id(id_of(&f.ews_id)),
                shape: pull_shape(),
                sync_state: sync_state.clone(),
                ignore: vec![],
                max_changes: ews::ops::MAX_CHANGES_RETURNED,
            };
            let reply = match self.engine.call_ews(self.setup, self.ctx, &op).await {
                Ok(r) => r,
                // The folder vanished since the tree was read: the next tree sync says so.
                Err(ews::Error::NotFound(_)) => {
                    finished = true;
                    break;
                }
                Err(e) => return Err(sync_error(e)),
            };
            self.seen += reply.changes.len() as u64;
            for change in reply.changes {
                match change {
                    ItemChange::Create(Item::Message(msg))
                    | ItemChange::Update(Item::Message(msg)) => {
                        let Some(id) = msg.id.clone() else { continue };
                        if f.sync_from
                            .is_some_and(|from| msg.received.is_some_and(|r| r.date_naive() < from))
                        {
                            continue;
                        }
                        let message_id = msg.internet_message_id.clone();
                        let (is_read, size) = (msg.is_read.unwrap_or(false), msg.size.unwrap_or(0));
                        let stamped = fields::stamped_id(&Item::Message(msg), MAILS);
                        reads.creates.push(Seen {
                            id,
                            folder: f.row.id,
                            is_read,
                            size,
                            message_id,
                            stamped,
                        });
                    }
                    ItemChange::Create(_) | ItemChange::Update(_) => {}
                    ItemChange::ReadFlagChange { id, is_read } => {
                        reads.updates.push((id, f.row.id, Some(is_read)));
                    }
                    ItemChange::Delete(id) => reads.deletes.push(id),
                }
            }
            sync_state = Some(reply.sync_state);
            finished = reply.includes_last;
            if finished {
                break;
            }
        }
        if !finished {
            // More than this step reads: the next step goes on here.
            reads.more.insert(f.ews_id.clone());
        }
        reads
            .next_states
            .push((format!("mail/{}", f.row.id), f.ews_id.clone(), sync_state));
        Ok(())
    }

    /// The mail mappings of deleted Exchange items, by item id.
    async fn mapped_deletes(
        &self,
        deletes: &[ItemId],
    ) -> Result<HashMap<String, ItemMapping>, SyncError> {
        let ids: Vec<String> = deletes.iter().map(|id| id.id.clone()).collect();
        let mut found = self
            .engine
            .state
            .mappings_by_ews(self.smtp(), &ids)
            .await
            .map_err(db_error)?;
        found.retain(|_, m| m.crm_table == MAILS);
        Ok(found)
    }

    async fn pull_mails_of(
        &mut self,
        folders: &[SyncedFolder],
        full: bool,
        only_dirty: bool,
        dirty: &HashSet<String>,
        unfinished: &HashSet<String>,
    ) -> Result<bool, SyncError> {
        let state = &self.engine.state;
        let mut reads = Reads::default();
        let mut skipped: Vec<&SyncedFolder> = Vec::new();
        for f in folders.iter().filter(|f| !f.excluded) {
            let current = state
                .folder_state(self.smtp(), &format!("mail/{}", f.row.id))
                .await
                .map_err(db_error)?;
            // A folder never read (new, or just included) is read whatever woke the step.
            let fresh = current.sync_state.is_none();
            if only_dirty && !fresh && !dirty.contains(&f.ews_id) && !unfinished.contains(&f.ews_id)
            {
                skipped.push(f);
                continue;
            }
            self.read_folder(f, current, full, &mut reads).await?;
        }
        // Creates and changes first, then deletes: a message moved between two folders is
        // relinked, not deleted and copied.
        let mut deleted = self.mapped_deletes(&reads.deletes).await?;
        if !deleted.is_empty() && !skipped.is_empty() {
            // A message gone from a folder may have moved into one this step did not read (no
            // notification named it): before anything is deleted, every synced folder is read.
            for f in skipped {
                let current = state
                    .folder_state(self.smtp(), &format!("mail/{}", f.row.id))
                    .await
                    .map_err(db_error)?;
                self.read_folder(f, current, full, &mut reads).await?;
            }
            deleted = self.mapped_deletes(&reads.deletes).await?;
        }
        let Reads {
            creates,
            updates,
            next_states,
            more,
            ..
        } = reads;
        let trash = folders
            .iter()
            .find(|f| f.row.role.as_deref() == Some("deleteditems"))
            .map(|f| f.row.id);
        let relinked = self.apply_seen(creates, &deleted, trash).await?;
        let flagged: Vec<String> = updates.iter().map(|(id, _, _)| id.id.clone()).collect();
        let mut flagged = state
            .mappings_by_ews(self.smtp(), &flagged)
            .await
            .map_err(db_error)?;
        for (id, folder, is_read) in updates {
            if let Some(m) = flagged.remove(&id.id) {
                self.exchange_flag(&id, folder, is_read, m).await?;
            }
        }
        for (ews, m) in deleted {
            if relinked.contains(&m.crm_id) {
                continue;
            }
            state
                .delete_mapping(self.smtp(), MAILS, m.crm_id)
                .await
                .map_err(db_error)?;
            let row = self.engine.crm.mails(&[m.crm_id]).await.map_err(db_error)?;
            if let Some(row) = row.first() {
                if Some(row.version) != m.crm_version && self.leading == Leading::Crm {
                    // Changed in the CRM since: the CRM leads, the mail is written again.
                    self.engine
                        .state
                        .add_pending(&[(self.smtp().to_owned(), MAILS.to_owned(), row.id)])
                        .await
                        .map_err(db_error)?;
                    continue;
                }
                self.engine
                    .crm
                    .delete_crm_row(MAILS, row.id)
                    .await
                    .map_err(db_error)?;
                self.counted("to_crm", "delete");
            }
            tracing::debug!(mailbox = self.smtp(), ews, "mail deleted in Exchange");
        }
        for (key, ews, sync_state) in next_states {
            state
                .set_folder_state(
                    self.smtp(),
                    &key,
                    &FolderState {
                        ews_folder_id: Some(ews),
                        sync_state,
                    },
                )
                .await
                .map_err(db_error)?;
        }
        let has_more = !more.is_empty();
        if has_more {
            self.engine
                .mail
                .unfinished
                .lock()
                .entry(self.smtp().to_owned())
                .or_default()
                .extend(more);
        }
        Ok(has_more)
    }

    /// A read flag (or a changed item) seen in Exchange.
    async fn exchange_flag(
        &mut self,
        id: &ItemId,
        folder: i64,
        is_read: Option<bool>,
        m: ItemMapping,
    ) -> Result<(), SyncError> {
        let state = &self.engine.state;
        if m.crm_table != MAILS || (id.change_key.is_some() && m.change_key == id.change_key) {
            return Ok(());
        }
        let Some(row) = self
            .engine
            .crm
            .mails(&[m.crm_id])
            .await
            .map_err(db_error)?
            .into_iter()
            .next()
        else {
            return Ok(());
        };
        let is_read = is_read.unwrap_or(row.is_read);
        let crm_changed = Some(row.version) != m.crm_version;
        if crm_changed
            && self.leading == Leading::Crm
            && base_bool(&m, "is_read") != Some(row.is_read)
        {
            // Both changed the flag: the CRM leads. Its change is queued (again: a write
            // that found the item moved away left it unrecorded).
            return self
                .engine
                .state
                .add_pending(&[(self.smtp().to_owned(), MAILS.to_owned(), row.id)])
                .await
                .map_err(db_error);
        }
        if row.is_read == is_read && row.folder_id == folder {
            let mut m = m;
            m.fields = mail_base(folder, is_read);
            m.change_key = id.change_key.clone().or(m.change_key);
            m.crm_version = Some(row.version);
            return state.put_mapping(&m).await.map_err(db_error);
        }
        match self
            .engine
            .crm
            .update_mail(row.id, row.version, folder, is_read, &id.id)
            .await
            .map_err(db_error)?
        {
            Some(v) => {
                let mut m = m;
                m.fields = mail_base(folder, is_read);
                m.change_key = id.change_key.clone().or(m.change_key);
                m.crm_version = Some(v);
                state.put_mapping(&m).await.map_err(db_error)?;
                self.counted("to_crm", "update");
                Ok(())
            }
            // Changed meanwhile: the next step sees both again.
            None => Ok(()),
        }
    }

    /// Links or imports new messages; returns the CRM ids that were relinked (moves).
    async fn apply_seen(
        &mut self,
        seen: Vec<Seen>,
        deleted: &HashMap<String, ItemMapping>,
        trash: Option<i64>,
    ) -> Result<HashSet<i64>, SyncError> {
        let state = &self.engine.state;
        let crm = &self.engine.crm;
        let mut relinked = HashSet::new();
        let deleted_by_crm: HashMap<i64, &ItemMapping> =
            deleted.values().map(|m| (m.crm_id, m)).collect();
        // Everything a batch needs is read in a few queries, not several per message.
        let ids: Vec<String> = seen.iter().map(|s| s.id.id.clone()).collect();
        let mapped = state
            .mappings_by_ews(self.smtp(), &ids)
            .await
            .map_err(db_error)?;
        let mut fresh = Vec::new();
        for s in seen {
            match mapped.get(&s.id.id).filter(|m| m.crm_table == MAILS) {
                Some(m) => {
                    if m.change_key.is_none() || m.change_key != s.id.change_key {
                        self.exchange_flag(&s.id, s.folder, Some(s.is_read), m.clone())
                            .await?;
                    }
                }
                None => fresh.push(s),
            }
        }
        let owner = self.owner.operator_id;
        let stamped_ids: Vec<i64> = fresh.iter().filter_map(|s| s.stamped).collect();
        let stamped_rows: HashMap<i64, MailRow> = crm
            .mails(&stamped_ids)
            .await
            .map_err(db_error)?
            .into_iter()
            .filter(|r| r.owner_id == owner)
            .map(|r| (r.id, r))
            .collect();
        let fresh_ids: Vec<String> = fresh.iter().map(|s| s.id.id.clone()).collect();
        let by_ews_id = crm
            .mails_by_ews_ids(owner, &fresh_ids)
            .await
            .map_err(db_error)?;
        let message_ids: Vec<String> = fresh.iter().filter_map(|s| s.message_id.clone()).collect();
        let by_message_id = crm
            .mails_by_message_ids(owner, &message_ids)
            .await
            .map_err(db_error)?;
        let candidates: Vec<i64> = by_message_id.values().flatten().map(|r| r.id).collect();
        let mapped_rows = state
            .mappings_by_crm(self.smtp(), MAILS, &candidates)
            .await
            .map_err(db_error)?;
        // Rows linked in this batch are no longer free for another message.
        let mut taken: HashSet<i64> = HashSet::new();
        let mut import = Vec::new();
        for s in fresh {
            // Which CRM row is this message? Its stamp; the row that carries its id; the row
            // of a message deleted (moved away) in this same step with the same Message-ID; an
            // unmapped row of the same folder with the same Message-ID.
            let mut target: Option<MailRow> = None;
            if let Some(crm_id) = s.stamped {
                target = stamped_rows.get(&crm_id).cloned();
                if target.is_none() && Some(s.folder) == trash {
                    // Written by mailsync for a row the CRM has deleted since: deleting in the
                    // CRM moved it to Deleted Items, and it does not come back from there.
                    // (Restored into another folder in Outlook, it is imported again.)
                    continue;
                }
            }
            if target.is_none() {
                target = by_ews_id.get(&s.id.id).cloned();
            }
            if target.is_none() {
                if let Some(rows) = s.message_id.as_ref().and_then(|m| by_message_id.get(m)) {
                    target = rows
                        .iter()
                        .find(|r| deleted_by_crm.contains_key(&r.id) && !taken.contains(&r.id))
                        .or_else(|| {
                            rows.iter().find(|r| {
                                r.folder_id == s.folder
                                    && !mapped_rows.contains_key(&r.id)
                                    && !taken.contains(&r.id)
                            })
                        })
                        .cloned();
                }
            }
            if let Some(row) = &target {
                if !taken.insert(row.id) {
                    // The same row twice (a copy of our message in Exchange): linked once.
                    continue;
                }
            }
            match target {
                Some(row) => {
                    relinked.insert(row.id);
                    // A row that moved away from another item keeps one mapping: the new one.
                    let version = match crm
                        .update_mail(row.id, row.version, s.folder, s.is_read, &s.id.id)
                        .await
                        .map_err(db_error)?
                    {
                        Some(v) => v,
                        None => continue,
                    };
                    if row.folder_id != s.folder {
                        self.counted("to_crm", "move");
                    }
                    state
                        .put_mapping(&ItemMapping {
                            mailbox: self.smtp().to_owned(),
                            crm_table: MAILS.into(),
                            crm_id: row.id,
                            ews_item_id: s.id.id.clone(),
                            change_key: s.id.change_key.clone(),
                            crm_version: Some(version),
                            fields: mail_base(s.folder, s.is_read),
                        })
                        .await
                        .map_err(db_error)?;
                }
                None => import.push(s),
            }
        }
        self.import(import).await?;
        Ok(relinked)
    }

    /// Reads messages' MIME and stores them in the CRM, a bounded number of bytes at a time.
    async fn import(&mut self, seen: Vec<Seen>) -> Result<(), SyncError> {
        let mut batch: Vec<Seen> = Vec::new();
        let mut bytes = 0u64;
        for s in seen {
            if !batch.is_empty()
                && (batch.len() >= MAILS_PER_REQUEST || bytes + s.size > BYTES_PER_REQUEST)
            {
                self.import_batch(std::mem::take(&mut batch)).await?;
                bytes = 0;
            }
            bytes += s.size;
            batch.push(s);
        }
        if !batch.is_empty() {
            self.import_batch(batch).await?;
        }
        Ok(())
    }

    async fn import_batch(&mut self, batch: Vec<Seen>) -> Result<(), SyncError> {
        let get = GetItem {
            ids: batch.iter().map(|s| s.id.clone()).collect(),
            shape: Shape {
                base: BaseShape::IdOnly,
                additional: vec![
                    PropertyPath::Field("item:MimeContent".into()),
                    PropertyPath::Field("item:Subject".into()),
                    PropertyPath::Field("message:From".into()),
                    PropertyPath::Field("message:ToRecipients".into()),
                    PropertyPath::Field("message:CcRecipients".into()),
                    PropertyPath::Field("item:DateTimeSent".into()),
                    PropertyPath::Field("message:IsRead".into()),
                    PropertyPath::Field("message:InternetMessageId".into()),
                ],
            },
        };
        let items = self.engine.call(self.setup, self.ctx, &get).await?;
        let mut rows = Vec::new();
        let mut ids = Vec::new();
        for (s, item) in batch.iter().zip(items) {
            let msg = match item {
                Ok(Item::Message(m)) => m,
                Ok(_) => continue,
                Err(ews::Error::NotFound(_)) => continue,
                Err(e @ (ews::Error::Throttled { .. } | ews::Error::Transient(_))) => {
                    return Err(sync_error(e))
                }
                Err(e) => {
                    tracing::warn!(mailbox = self.smtp(), ews_id = s.id.id, error = %e, "message not readable; skipped");
                    continue;
                }
            };
            let Some(mime) = msg.mime.clone() else {
                continue;
            };
            let id = msg.id.clone().unwrap_or_else(|| s.id.clone());
            rows.push(NewMail {
                owner_id: self.owner.operator_id,
                folder_id: s.folder,
                internet_message_id: msg
                    .internet_message_id
                    .clone()
                    .or_else(|| s.message_id.clone()),
                subject: msg.subject.clone(),
                sender: msg.from.as_ref().and_then(|f| f.email.clone()),
                recipients: mailbox_list(&msg),
                sent_at: msg.sent.or(msg.received),
                is_read: msg.is_read.unwrap_or(s.is_read),
                mime,
                ews_id: id.id.clone(),
            });
            ids.push((id, s.folder, msg.is_read.unwrap_or(s.is_read)));
        }
        if rows.is_empty() {
            return Ok(());
        }
        let written = self
            .engine
            .crm
            .insert_mails(&rows)
            .await
            .map_err(db_error)?;
        drop(rows);
        let mappings: Vec<ItemMapping> = ids
            .iter()
            .zip(&written)
            .map(|((id, folder, is_read), (crm_id, version))| ItemMapping {
                mailbox: self.smtp().to_owned(),
                crm_table: MAILS.into(),
                crm_id: *crm_id,
                ews_item_id: id.id.clone(),
                change_key: id.change_key.clone(),
                crm_version: Some(*version),
                fields: mail_base(*folder, *is_read),
            })
            .collect();
        self.engine
            .state
            .put_mappings(&mappings)
            .await
            .map_err(db_error)?;
        for _ in 0..mappings.len() {
            self.counted("to_crm", "create");
        }
        self.ctx.progress();
        Ok(())
    }

    // ---- messages, CRM → Exchange ----

    async fn push_mails(&mut self, folders: &[SyncedFolder]) -> Result<bool, SyncError> {
        let state = &self.engine.state;
        let queued = state
            .pending(self.smtp(), MAILS, QUEUE_BATCH)
            .await
            .map_err(db_error)?;
        if queued.is_empty() {
            return Ok(false);
        }
        self.seen += queued.len() as u64;
        let ids: Vec<i64> = queued.iter().map(|(id, _)| *id).collect();
        let rows: HashMap<i64, MailRow> = self
            .engine
            .crm
            .mails(&ids)
            .await
            .map_err(db_error)?
            .into_iter()
            .filter(|r| r.owner_id == self.owner.operator_id)
            .map(|r| (r.id, r))
            .collect();
        let mappings = state
            .mappings_by_crm(self.smtp(), MAILS, &ids)
            .await
            .map_err(db_error)?;
        let by_folder: HashMap<i64, &SyncedFolder> =
            folders.iter().map(|f| (f.row.id, f)).collect();
        let mut deletes: Vec<(i64, String)> = Vec::new();
        let mut create: Vec<&MailRow> = Vec::new();
        for id in &ids {
            match (rows.get(id), mappings.get(id)) {
                (None, Some(m)) => deletes.push((*id, m.ews_item_id.clone())),
                (None, None) => {}
                (Some(row), Some(m)) => {
                    if Some(row.version) != m.crm_version {
                        self.mail_changed_in_crm(row, m, &by_folder).await?;
                    }
                }
                (Some(row), None) => {
                    let Some(f) = by_folder.get(&row.folder_id) else {
                        continue;
                    };
                    if f.excluded
                        || f.sync_from
                            .is_some_and(|from| row.sent_at.is_some_and(|t| t.date_naive() < from))
                    {
                        continue;
                    }
                    create.push(row);
                }
            }
        }
        if !deletes.is_empty() {
            self.delete_in_exchange(&deletes).await?;
        }
        // New rows, per folder.
        let mut per_folder: BTreeMap<i64, Vec<&MailRow>> = BTreeMap::new();
        for row in create {
            per_folder.entry(row.folder_id).or_default().push(row);
        }
        for (folder, rows) in per_folder {
            let f = by_folder[&folder];
            self.create_in_exchange(f, rows).await?;
        }
        state
            .clear_pending(self.smtp(), MAILS, &queued)
            .await
            .map_err(db_error)?;
        Ok(queued.len() as i64 >= QUEUE_BATCH)
    }

    async fn delete_in_exchange(&mut self, deletes: &[(i64, String)]) -> Result<(), SyncError> {
        for chunk in deletes.chunks(100) {
            let op = DeleteItem {
                ids: chunk.iter().map(|(_, id)| id_of(id)).collect(),
                delete_type: delete_type(self.setup.mail.delete_mode),
            };
            let results = self.engine.call(self.setup, self.ctx, &op).await?;
            for ((crm_id, _), r) in chunk.iter().zip(results) {
                match r {
                    Ok(()) | Err(ews::Error::NotFound(_)) => {}
                    Err(e @ (ews::Error::Throttled { .. } | ews::Error::Transient(_))) => {
                        return Err(sync_error(e))
                    }
                    Err(e) => {
                        tracing::warn!(mailbox = self.smtp(), crm_id, error = %e, "Exchange refused a delete")
                    }
                }
                self.engine
                    .state
                    .delete_mapping(self.smtp(), MAILS, *crm_id)
                    .await
                    .map_err(db_error)?;
                self.counted("to_exchange", "delete");
            }
        }
        Ok(())
    }

    async fn mail_changed_in_crm(
        &mut self,
        row: &MailRow,
        m: &ItemMapping,
        by_folder: &HashMap<i64, &SyncedFolder>,
    ) -> Result<(), SyncError> {
        let mut mapping = m.clone();
        let mut id = ItemId {
            id: m.ews_item_id.clone(),
            change_key: m.change_key.clone(),
        };
        if base_i64(m, "folder") != Some(row.folder_id) {
            let Some(to) = by_folder.get(&row.folder_id) else {
                return Ok(());
            };
            let op = MoveItem {
                ids: vec![id_of(&id.id)],
                to: FolderRef::Id(id_of(&to.ews_id)),
            };
            match self
                .engine
                .call(self.setup, self.ctx, &op)
                .await?
                .into_iter()
                .next()
            {
                Some(Ok(Some(new_id))) => {
                    self.engine.note_own_write(&new_id);
                    self.engine.mail.mark_dirty(self.smtp(), &to.ews_id);
                    id = new_id;
                    self.counted("to_exchange", "move");
                }
                Some(Ok(None)) => {}
                Some(Err(ews::Error::NotFound(_))) => {
                    // Gone in Exchange: its delete arrives with the folder's next sync.
                    return Ok(());
                }
                Some(Err(e)) => return Err(sync_error(e)),
                None => return Err(SyncError::Failed("MoveItem answered nothing".into())),
            }
        }
        let flag_written = base_bool(m, "is_read") != Some(row.is_read);
        if flag_written {
            let op = UpdateItem {
                changes: vec![ItemUpdate {
                    id: id.clone(),
                    updates: Item::Message(Message {
                        is_read: Some(row.is_read),
                        ..Message::default()
                    })
                    .updates(),
                }],
                conflict: ConflictResolution::AlwaysOverwrite,
                disposition: Some(MessageDisposition::SaveOnly),
                calendar: false,
            };
            match self
                .engine
                .call(self.setup, self.ctx, &op)
                .await?
                .into_iter()
                .next()
            {
                Some(Ok(new_id)) => {
                    self.engine.note_own_write(&new_id);
                    id = new_id;
                    self.counted("to_exchange", "update");
                }
                Some(Err(ews::Error::NotFound(_))) => return Ok(()),
                Some(Err(e)) => return Err(sync_error(e)),
                None => return Err(SyncError::Failed("UpdateItem answered nothing".into())),
            }
        }
        mapping.ews_item_id = id.id;
        // After a move alone the item is as Exchange had it, which may be newer than our
        // base (a flag the user set meanwhile): no change key, so the folder's next read
        // compares it instead of taking it for our echo.
        mapping.change_key = if flag_written { id.change_key } else { None };
        mapping.crm_version = Some(row.version);
        mapping.fields = mail_base(row.folder_id, row.is_read);
        self.engine
            .state
            .put_mapping(&mapping)
            .await
            .map_err(db_error)
    }

    async fn create_in_exchange(
        &mut self,
        folder: &SyncedFolder,
        rows: Vec<&MailRow>,
    ) -> Result<(), SyncError> {
        // Rows that already are in Exchange (a crash after CreateItem, or imported earlier and
        // the mapping lost) are linked: by the stamp, searched unless this folder's last round
        // finished clean.
        let clean_key = (self.smtp().to_owned(), MAILS, false);
        let verify = !self.engine.clean.lock().remove(&clean_key);
        let mut existing = if verify {
            let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
            let folder_ref = FolderRef::Id(id_of(&folder.ews_id));
            self.engine
                .find_stamped(self.setup, self.ctx, &folder_ref, MAILS, &ids)
                .await?
        } else {
            HashMap::new()
        };
        let mut found = Vec::new();
        let mut unsure = Vec::new();
        for row in rows {
            match existing.remove(&row.id) {
                Some(id) => found.push((row, id)),
                None => unsure.push(row),
            }
        }
        // A row that carries an Exchange id came from Exchange (or was written there before a
        // crash): if that message still exists, it is linked, not copied.
        let mut todo = Vec::new();
        for chunk in unsure.chunks(100) {
            let known: Vec<&MailRow> = chunk
                .iter()
                .copied()
                .filter(|r| r.ews_id.is_some())
                .collect();
            todo.extend(chunk.iter().copied().filter(|r| r.ews_id.is_none()));
            if known.is_empty() {
                continue;
            }
            let get = GetItem {
                ids: known
                    .iter()
                    .map(|r| id_of(r.ews_id.as_deref().unwrap_or_default()))
                    .collect(),
                shape: Shape::id_only(),
            };
            let items = self.engine.call(self.setup, self.ctx, &get).await?;
            for (row, item) in known.into_iter().zip(items) {
                match item.ok().and_then(|i| i.id().cloned()) {
                    Some(id) => found.push((row, id)),
                    None => todo.push(row),
                }
            }
        }
        self.record_created(found).await?;
        let mut batch: Vec<(&MailRow, Vec<u8>)> = Vec::new();
        let mut bytes = 0u64;
        for row in todo {
            let size = row.size.unwrap_or(0).max(0) as u64;
            if !batch.is_empty()
                && (batch.len() >= MAILS_PER_REQUEST || bytes + size > BYTES_PER_REQUEST)
            {
                self.create_batch(folder, std::mem::take(&mut batch))
                    .await?;
                bytes = 0;
            }
            let Some(mime) = self.engine.crm.mail_mime(row.id).await.map_err(db_error)? else {
                self.fail(MAILS, row.id, "the mail has no MIME content")
                    .await;
                continue;
            };
            bytes += mime.len() as u64;
            batch.push((row, mime));
        }
        if !batch.is_empty() {
            self.create_batch(folder, batch).await?;
        }
        self.engine.clean.lock().insert(clean_key);
        Ok(())
    }

    async fn create_batch(
        &mut self,
        folder: &SyncedFolder,
        batch: Vec<(&MailRow, Vec<u8>)>,
    ) -> Result<(), SyncError> {
        let mut items = Vec::with_capacity(batch.len());
        let mut rows = Vec::with_capacity(batch.len());
        for (row, mime) in batch {
            items.push(Item::Message(Message {
                mime: Some(mime),
                is_read: Some(row.is_read),
                extended: vec![
                    ews::types::ExtendedProperty {
                        uri: fields::crm_id_uri(),
                        value: fields::crm_stamp(MAILS, row.id),
                    },
                    message_flags(row.is_read),
                ],
                ..Message::default()
            }));
            rows.push(row);
        }
        let op = CreateItem {
            folder: Some(FolderRef::Id(id_of(&folder.ews_id))),
            items,
            disposition: Some(MessageDisposition::SaveOnly),
        };
        let results = self.engine.call(self.setup, self.ctx, &op).await?;
        drop(op);
        self.engine.mail.mark_dirty(self.smtp(), &folder.ews_id);
        let mut made = Vec::new();
        let mut retry = None;
        for (row, r) in rows.into_iter().zip(results) {
            match r {
                Ok(id) => {
                    self.engine.note_own_write(&id);
                    made.push((row, id));
                }
                Err(e @ (ews::Error::Throttled { .. } | ews::Error::Transient(_))) => {
                    retry.get_or_insert(sync_error(e));
                }
                Err(e) => {
                    self.fail(MAILS, row.id, &format!("Exchange refused the mail: {e}"))
                        .await
                }
            }
        }
        let n = made.len();
        self.record_created(made).await?;
        for _ in 0..n {
            self.counted("to_exchange", "create");
        }
        self.ctx.progress();
        match retry {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn record_created(&mut self, made: Vec<(&MailRow, ItemId)>) -> Result<(), SyncError> {
        if made.is_empty() {
            return Ok(());
        }
        let ids: Vec<(i64, String)> = made.iter().map(|(r, id)| (r.id, id.id.clone())).collect();
        let written = self
            .engine
            .crm
            .set_ews_ids(MAILS, &ids)
            .await
            .map_err(db_error)?;
        let mappings: Vec<ItemMapping> = made
            .iter()
            .zip(written)
            .map(|((row, id), written)| ItemMapping {
                mailbox: self.smtp().to_owned(),
                crm_table: MAILS.into(),
                crm_id: row.id,
                ews_item_id: id.id.clone(),
                change_key: id.change_key.clone(),
                crm_version: own_version(row.version, written),
                fields: mail_base(row.folder_id, row.is_read),
            })
            .collect();
        self.engine
            .state
            .put_mappings(&mappings)
            .await
            .map_err(db_error)
    }

    // ---- sending ----

    async fn send_outbox(&mut self, roles: &Roles, look: bool) -> Result<(), SyncError> {
        let crm = &self.engine.crm;
        let state = &self.engine.state;
        let queued = state
            .pending(self.smtp(), OUTBOX, QUEUE_BATCH)
            .await
            .map_err(db_error)?;
        if queued.is_empty() && !look {
            return Ok(());
        }
        let pending = crm
            .outbox_pending(self.owner.operator_id)
            .await
            .map_err(db_error)?;
        if pending.is_empty() {
            return state
                .clear_pending(self.smtp(), OUTBOX, &queued)
                .await
                .map_err(db_error);
        }
        for row in pending {
            let Some(mime) = crm.outbox_mime(row.id).await.map_err(db_error)? else {
                continue;
            };
            let own =
                row.sender.trim().is_empty() || row.sender.trim().eq_ignore_ascii_case(self.smtp());
            let outcome = if own {
                // Its copy lands in Sent Items: read there in this step.
                if let Some((sent, _)) = roles.by_id.iter().find(|(_, r)| **r == "sentitems") {
                    self.engine.mail.mark_dirty(self.smtp(), sent);
                }
                self.send_through_exchange(row.id, mime).await?
            } else {
                super::smtp::send(self.setup.smtp_relay.as_deref(), &row, mime).await
            };
            if let Err(e) = &outcome {
                tracing::warn!(mailbox = self.smtp(), outbox_id = row.id, error = %e, "mail not sent");
            }
            crm.finish_outbox(row.id, outcome.clone())
                .await
                .map_err(db_error)?;
            self.counted(
                "to_exchange",
                if outcome.is_ok() {
                    "send"
                } else {
                    "send_failed"
                },
            );
        }
        state
            .clear_pending(self.smtp(), OUTBOX, &queued)
            .await
            .map_err(db_error)
    }

    /// Sends with SendAndSaveCopy (the copy lands in Sent Items). A copy stamped with this
    /// outbox row in Sent Items means a crash came between sending and recording it: it is
    /// not sent twice.
    async fn send_through_exchange(
        &mut self,
        id: i64,
        mime: Vec<u8>,
    ) -> Result<Result<(), String>, SyncError> {
        let stamp = fields::crm_stamp(OUTBOX, id);
        let sent = FolderRef::well_known(DistinguishedFolder::SentItems);
        let found = self
            .engine
            .find_stamped(self.setup, self.ctx, &sent, OUTBOX, &[id])
            .await?;
        if !found.is_empty() {
            return Ok(Ok(()));
        }
        let op = CreateItem {
            folder: Some(FolderRef::well_known(DistinguishedFolder::SentItems)),
            items: vec![Item::Message(Message {
                mime: Some(mime),
                extended: vec![ews::types::ExtendedProperty {
                    uri: fields::crm_id_uri(),
                    value: stamp,
                }],
                ..Message::default()
            })],
            disposition: Some(MessageDisposition::SendAndSaveCopy),
        };
        match self
            .engine
            .call(self.setup, self.ctx, &op)
            .await?
            .into_iter()
            .next()
        {
            Some(Ok(_)) => Ok(Ok(())),
            Some(Err(e @ (ews::Error::Throttled { .. } | ews::Error::Transient(_)))) => {
                Err(sync_error(e))
            }
            Some(Err(e)) => Ok(Err(format!("Exchange refused to send it: {e}"))),
            None => Err(SyncError::Failed("CreateItem answered nothing".into())),
        }
    }
}
