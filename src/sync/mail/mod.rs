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
use ews::items::Message;
use ews::ops::{DeleteType, GetFolder};
use ews::types::{BaseShape, DistinguishedFolder, FolderRef, ItemId, PropertyPath, Shape};
use mailsync_actors::{StepContext, SyncError};
use parking_lot::Mutex;
use serde_json::json;

use crate::config::{Leading, MailDeleteMode};
use crate::db::mail::MailFolderRow;
use crate::db::state::ItemMapping;
use crate::sync::core::{db_error, sync_error, Inner, MailboxSetup, Owner};
use crate::sync::events::{Action, Direction, ItemSynced};
use crate::sync::fields;

/// The runtime folder that syncs a mailbox's mail.
pub const MAIL: &str = "mail";
/// ms_folder_state key of the folder tree.
pub(crate) const HIERARCHY: &str = "mail/hierarchy";
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
pub(crate) struct Roles {
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
pub(crate) struct SyncedFolder {
    row: MailFolderRow,
    ews_id: String,
    excluded: bool,
    sync_from: Option<NaiveDate>,
    /// Its path (role names for distinguished folders): the breaker's scope.
    path: String,
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
    /// Item ids each folder's read reported (CRM folder id → ids): its stored state covers them.
    reported: HashMap<i64, Vec<String>>,
    /// Folders whose read reached the end of what Exchange has.
    complete: HashSet<i64>,
}

/// One mail step's working set.
pub(crate) struct MailStep<'a> {
    /// The engine.
    pub(crate) engine: &'a Inner,
    /// The mail side's per-process state.
    pub(crate) mail: &'a MailState,
    pub(crate) setup: &'a MailboxSetup,
    pub(crate) owner: Owner,
    pub(crate) ctx: &'a StepContext,
    /// Which side wins when both changed (initial sync: the source side).
    pub(crate) leading: Leading,
    pub(crate) items: u64,
    pub(crate) seen: u64,
    pub(crate) counts: BTreeMap<(Direction, Action), u64>,
    /// Deletes this step held for an administrator.
    pub(crate) held: u64,
    /// `initial_sync = "none"` on the first start: the tree is mirrored, the folders'
    /// messages are taken as they are (nothing imported or written).
    pub(crate) baseline: bool,
}

impl<'a> MailStep<'a> {
    pub(crate) fn smtp(&self) -> &str {
        &self.setup.smtp
    }

    pub(crate) fn counted(&mut self, direction: Direction, action: Action) {
        self.items += 1;
        *self.counts.entry((direction, action)).or_default() += 1;
        ItemSynced {
            area: "mail",
            direction,
            action,
        }
        .emit(&self.engine.metrics);
    }

    /// One step; true when there is more to do.
    pub(crate) async fn run(&mut self, full: bool, only_dirty: bool) -> Result<bool, SyncError> {
        let roles = self.roles().await?;
        self.settle_held(&roles).await?;
        if self.baseline {
            while self.pull_hierarchy(&roles, full).await? {}
            let folders = self.folders().await?;
            self.pull_mails(&folders, false, false).await?;
            return Ok(false);
        }
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
    pub(crate) async fn queue_all(&self) -> Result<(), SyncError> {
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

    pub(crate) async fn roles(&self) -> Result<Arc<Roles>, SyncError> {
        if let Some(r) = self.mail.roles.lock().get(self.smtp()) {
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
        self.mail
            .folders
            .lock()
            .insert(roles.root.clone(), self.smtp().to_owned());
        let roles = Arc::new(roles);
        self.mail
            .roles
            .lock()
            .insert(self.smtp().to_owned(), roles.clone());
        Ok(roles)
    }

    pub(crate) async fn fail(&self, table: &str, crm_id: i64, error: &str) {
        self.park(
            table,
            crm_id,
            "",
            crate::sync::events::FailureKind::InvalidRow,
            error,
        )
        .await
    }

    /// Parks a record in the failure log with its reason and next retry time.
    pub(crate) async fn park(
        &self,
        table: &str,
        crm_id: i64,
        ews_id: &str,
        kind: crate::sync::events::FailureKind,
        reason: &str,
    ) {
        crate::sync::events::ItemParked {
            mailbox: self.smtp(),
            area: "mail",
            table,
            crm_id,
            ews_id,
            kind,
            reason,
        }
        .emit(&self.engine.metrics);
        let state = &self.engine.state;
        let attempts = state
            .failure_attempts(self.smtp(), table, crm_id, ews_id)
            .await
            .unwrap_or(0);
        let next = crate::db::integrity::next_retry(attempts + 1, chrono::Utc::now());
        let failure = crate::db::state::Failure {
            mailbox: self.smtp().to_owned(),
            crm_table: table.to_owned(),
            crm_id,
            ews_item_id: ews_id.to_owned(),
            error: reason.to_owned(),
            attempts: 1,
        };
        if let Err(e) = state.record_failure(&failure, Some(next)).await {
            tracing::error!(error = %e, "recording a failure failed");
        }
    }

    /// The largest message synced, in bytes (`mail.max_message_mb`).
    pub(crate) fn max_message_bytes(&self) -> u64 {
        self.setup.mail.max_message_bytes
    }
}

impl MailStep<'_> {
    /// The breaker for mail: `deletes` (folder → the records whose delete is planned) are
    /// counted per folder against the folder's mapped messages; returns the folders whose
    /// deletes are held, with their path (the scope).
    pub(super) async fn breaker(
        &mut self,
        table: &str,
        side: crate::db::integrity::Side,
        deletes: &HashMap<i64, Vec<String>>,
        folders: &[SyncedFolder],
    ) -> Result<HashMap<i64, String>, SyncError> {
        let state = &self.engine.state;
        let mut sizes: HashMap<i64, u64> = HashMap::new();
        for m in state
            .mappings_of(self.smtp(), MAILS)
            .await
            .map_err(db_error)?
        {
            *sizes
                .entry(base_i64(&m, "folder").unwrap_or(0))
                .or_default() += 1;
        }
        let held_now = state
            .held(self.smtp(), Some(table))
            .await
            .map_err(db_error)?;
        let mut stopped = HashMap::new();
        let now = std::time::Instant::now();
        for (folder, ids) in deletes {
            let scope = folders
                .iter()
                .find(|f| f.row.id == *folder)
                .map(|f| f.path.clone())
                .unwrap_or_else(|| format!("folder {folder}"));
            let size = sizes.get(folder).copied().unwrap_or(0);
            let already = held_now.iter().any(|h| h.scope == scope && h.side == side);
            // Judged with the deletes of this folder let through within the burst window.
            let key = (
                self.smtp().to_owned(),
                table.to_owned(),
                scope.clone(),
                side,
            );
            let (reason, count, size) =
                self.engine
                    .recent_deletes
                    .judge(key, ids, size, self.setup.breaker, already, now);
            if let Some(reason) = reason {
                crate::sync::events::DeletesHeld {
                    mailbox: self.smtp(),
                    area: "mail",
                    scope: &scope,
                    side: side.as_str(),
                    count: count as usize,
                    of: size,
                    reason: &reason.describe(),
                }
                .emit();
                stopped.insert(*folder, scope);
            }
        }
        Ok(stopped)
    }
}

mod held;
mod outbox;
mod pull;
mod push;
mod tree;
mod tree_push;
