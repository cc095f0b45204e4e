//! The EWS operations mailsync uses, each a request type that writes its SOAP body
//! ([`Operation::write_body`]) and reads its response ([`Operation::parse`]).
//!
//! Batch operations answer one `Result` per requested item, in request order, so one bad
//! item never hides the others (ErrorBatchProcessingStopped arrives as that item's error).

use chrono::{DateTime, Utc};

use crate::items::{FieldUpdate, Folder, Item};
use crate::soap::{response_messages, single_message};
use crate::types::{format_datetime, FolderId, FolderRef, ItemId, PropertyPath, Shape};
use crate::xml::{Element, XmlWriter};
use crate::Error;

/// One EWS operation.
pub trait Operation {
    /// The operation name: the request element (`GetItem`) and the recorded file name.
    const NAME: &'static str;
    /// What a successful call returns.
    type Output;
    /// Writes the request element inside `soap:Body`.
    fn write_body(&self, w: &mut XmlWriter);
    /// Reads the response element (the first child of `soap:Body`).
    fn parse(&self, body: &Element) -> Result<Self::Output, Error>;
    /// Whether the answer carries MIME content, so the larger response cap applies
    /// ([`crate::client::ClientConfig::max_mime_response_bytes`]).
    fn carries_mime(&self) -> bool {
        false
    }
    /// Why this request cannot act on another mailbox by delegate access, if it cannot (it
    /// would silently address the caller's own mailbox instead).
    fn delegate_refusal(&self) -> Option<&'static str> {
        None
    }
}

fn write_folder_refs(w: &mut XmlWriter, tag: &str, folders: &[FolderRef]) {
    w.start(tag, &[]);
    for f in folders {
        f.write(w);
    }
    w.end(tag);
}

fn write_item_ids(w: &mut XmlWriter, ids: &[ItemId]) {
    w.start("m:ItemIds", &[]);
    for id in ids {
        id.write(w, "t:ItemId");
    }
    w.end("m:ItemIds");
}

/// A batch answer: one result per requested item, in request order. An answer with another
/// number of response messages cannot be matched to the items and is refused whole
/// (`Malformed`), so no result is ever taken for another item's.
fn per_item<T>(
    op: &str,
    asked: usize,
    out: Vec<Result<T, Error>>,
) -> Result<Vec<Result<T, Error>>, Error> {
    if out.len() != asked {
        // A server that refuses the request as a whole may say so in one message: that error
        // is the answer (throttling with its back-off, say), not the count.
        if let [Err(_)] = out.as_slice() {
            if let Some(Err(e)) = out.into_iter().next() {
                return Err(e);
            }
        }
        return Err(Error::Malformed(format!(
            "{op} answered another number of response messages than the {asked} items asked for"
        )));
    }
    Ok(out)
}

fn items_of(m: &Element) -> Vec<Item> {
    m.child("Items")
        .map(|l| l.children.iter().map(Item::from_element).collect())
        .unwrap_or_default()
}

fn first_item_id(m: &Element) -> Result<ItemId, Error> {
    m.child("Items")
        .and_then(|l| l.children.first())
        .and_then(|i| i.child("ItemId"))
        .and_then(ItemId::from_element)
        .ok_or_else(|| Error::Malformed("response message without an ItemId".into()))
}

/// GetFolder: folders by id or well-known name.
#[derive(Debug, Clone)]
pub struct GetFolder {
    /// Folders to read.
    pub folders: Vec<FolderRef>,
    /// Properties to return.
    pub shape: Shape,
}

impl Operation for GetFolder {
    const NAME: &'static str = "GetFolder";
    type Output = Vec<Result<Folder, Error>>;
    fn write_body(&self, w: &mut XmlWriter) {
        w.start("m:GetFolder", &[]);
        self.shape.write(w, "m:FolderShape");
        write_folder_refs(w, "m:FolderIds", &self.folders);
        w.end("m:GetFolder");
    }
    fn parse(&self, body: &Element) -> Result<Self::Output, Error> {
        Ok(response_messages(body)?
            .into_iter()
            .map(|m| {
                let m = m?;
                m.child("Folders")
                    .and_then(|f| f.children.first())
                    .map(Folder::from_element)
                    .ok_or_else(|| Error::Malformed("GetFolder response without a folder".into()))
            })
            .collect())
    }
}

/// Folder traversal of FindFolder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traversal {
    /// Direct children.
    Shallow,
    /// The whole subtree.
    Deep,
}

/// FindFolder: the subfolders of a folder.
#[derive(Debug, Clone)]
pub struct FindFolder {
    /// Where to look.
    pub parent: FolderRef,
    /// Children or subtree.
    pub traversal: Traversal,
    /// Properties to return.
    pub shape: Shape,
}

impl Operation for FindFolder {
    const NAME: &'static str = "FindFolder";
    type Output = Vec<Folder>;
    fn write_body(&self, w: &mut XmlWriter) {
        let t = match self.traversal {
            Traversal::Shallow => "Shallow",
            Traversal::Deep => "Deep",
        };
        w.start("m:FindFolder", &[("Traversal", t)]);
        self.shape.write(w, "m:FolderShape");
        write_folder_refs(w, "m:ParentFolderIds", std::slice::from_ref(&self.parent));
        w.end("m:FindFolder");
    }
    fn parse(&self, body: &Element) -> Result<Self::Output, Error> {
        let m = single_message(body)?;
        Ok(m.child("RootFolder")
            .and_then(|r| r.child("Folders"))
            .map(|f| f.children.iter().map(Folder::from_element).collect())
            .unwrap_or_default())
    }
}

/// CreateFolder: new folders under a parent.
#[derive(Debug, Clone)]
pub struct CreateFolder {
    /// Parent folder.
    pub parent: FolderRef,
    /// Folders (display name, class).
    pub folders: Vec<Folder>,
}

impl Operation for CreateFolder {
    const NAME: &'static str = "CreateFolder";
    type Output = Vec<Result<FolderId, Error>>;
    fn write_body(&self, w: &mut XmlWriter) {
        w.start("m:CreateFolder", &[]);
        write_folder_refs(w, "m:ParentFolderId", std::slice::from_ref(&self.parent));
        w.start("m:Folders", &[]);
        for f in &self.folders {
            f.write_create(w);
        }
        w.end("m:Folders").end("m:CreateFolder");
    }
    fn parse(&self, body: &Element) -> Result<Self::Output, Error> {
        Ok(response_messages(body)?
            .into_iter()
            .map(|m| {
                m?.child("Folders")
                    .and_then(|f| f.children.first())
                    .and_then(|f| f.child("FolderId"))
                    .and_then(ItemId::from_element)
                    .ok_or_else(|| {
                        Error::Malformed("CreateFolder response without a FolderId".into())
                    })
            })
            .collect())
    }
}

/// UpdateFolder: renames a folder (the one property mailsync changes).
#[derive(Debug, Clone)]
pub struct UpdateFolder {
    /// The folder.
    pub folder: FolderId,
    /// Its new display name.
    pub display_name: String,
}

impl Operation for UpdateFolder {
    const NAME: &'static str = "UpdateFolder";
    type Output = FolderId;
    fn write_body(&self, w: &mut XmlWriter) {
        w.start("m:UpdateFolder", &[])
            .start("m:FolderChanges", &[])
            .start("t:FolderChange", &[]);
        self.folder.write(w, "t:FolderId");
        w.start("t:Updates", &[])
            .start("t:SetFolderField", &[])
            .start("t:FieldURI", &[("FieldURI", "folder:DisplayName")])
            .end("t:FieldURI")
            .start("t:Folder", &[])
            .leaf("t:DisplayName", &self.display_name)
            .end("t:Folder")
            .end("t:SetFolderField")
            .end("t:Updates")
            .end("t:FolderChange")
            .end("m:FolderChanges")
            .end("m:UpdateFolder");
    }
    fn parse(&self, body: &Element) -> Result<Self::Output, Error> {
        let m = single_message(body)?;
        first_folder_id(m, "UpdateFolder")
    }
}

/// MoveFolder: a folder (with its subtree) under another parent.
#[derive(Debug, Clone)]
pub struct MoveFolder {
    /// The folder.
    pub folder: FolderId,
    /// The new parent.
    pub to: FolderRef,
}

impl Operation for MoveFolder {
    const NAME: &'static str = "MoveFolder";
    type Output = FolderId;
    fn write_body(&self, w: &mut XmlWriter) {
        w.start("m:MoveFolder", &[]);
        write_folder_refs(w, "m:ToFolderId", std::slice::from_ref(&self.to));
        w.start("m:FolderIds", &[]);
        self.folder.write(w, "t:FolderId");
        w.end("m:FolderIds").end("m:MoveFolder");
    }
    fn parse(&self, body: &Element) -> Result<Self::Output, Error> {
        let m = single_message(body)?;
        first_folder_id(m, "MoveFolder")
    }
}

/// DeleteFolder: a folder with its subtree and items.
#[derive(Debug, Clone)]
pub struct DeleteFolder {
    /// The folder.
    pub folder: FolderId,
    /// How.
    pub delete_type: DeleteType,
}

impl Operation for DeleteFolder {
    const NAME: &'static str = "DeleteFolder";
    type Output = ();
    fn write_body(&self, w: &mut XmlWriter) {
        w.start(
            "m:DeleteFolder",
            &[("DeleteType", self.delete_type.as_str())],
        )
        .start("m:FolderIds", &[]);
        self.folder.write(w, "t:FolderId");
        w.end("m:FolderIds").end("m:DeleteFolder");
    }
    fn parse(&self, body: &Element) -> Result<Self::Output, Error> {
        single_message(body).map(|_| ())
    }
}

fn first_folder_id(m: &Element, op: &str) -> Result<FolderId, Error> {
    m.child("Folders")
        .and_then(|l| l.children.first())
        .and_then(|f| f.child("FolderId"))
        .and_then(ItemId::from_element)
        .ok_or_else(|| Error::Malformed(format!("{op} response without a FolderId")))
}

/// A change of the folder hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FolderChange {
    /// A folder appeared.
    Create(Folder),
    /// A folder changed (renamed, moved, counts).
    Update(Folder),
    /// A folder is gone.
    Delete(FolderId),
}

/// The result of SyncFolderHierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HierarchyChanges {
    /// State to send next time.
    pub sync_state: String,
    /// False: call again, there is more.
    pub includes_last: bool,
    /// The changes.
    pub changes: Vec<FolderChange>,
}

/// SyncFolderHierarchy: folder changes since a sync state.
#[derive(Debug, Clone)]
pub struct SyncFolderHierarchy {
    /// Root of the synced subtree; `None` for the whole mailbox.
    pub folder: Option<FolderRef>,
    /// Folder properties returned.
    pub shape: Shape,
    /// State of the previous call; `None` on the first.
    pub sync_state: Option<String>,
}

impl Operation for SyncFolderHierarchy {
    const NAME: &'static str = "SyncFolderHierarchy";
    type Output = HierarchyChanges;
    fn write_body(&self, w: &mut XmlWriter) {
        w.start("m:SyncFolderHierarchy", &[]);
        self.shape.write(w, "m:FolderShape");
        if let Some(f) = &self.folder {
            write_folder_refs(w, "m:SyncFolderId", std::slice::from_ref(f));
        }
        w.opt_leaf("m:SyncState", self.sync_state.as_deref());
        w.end("m:SyncFolderHierarchy");
    }
    fn parse(&self, body: &Element) -> Result<Self::Output, Error> {
        let m = single_message(body)?;
        let mut changes = Vec::new();
        for c in m
            .child("Changes")
            .map(|c| c.children.as_slice())
            .unwrap_or_default()
        {
            let folder = || {
                c.children
                    .iter()
                    .find(|f| Folder::is_folder_element(&f.name))
                    .map(Folder::from_element)
            };
            match c.name.as_str() {
                "Create" => changes.extend(folder().map(FolderChange::Create)),
                "Update" => changes.extend(folder().map(FolderChange::Update)),
                "Delete" => changes.extend(
                    c.child("FolderId")
                        .and_then(ItemId::from_element)
                        .map(FolderChange::Delete),
                ),
                _ => {}
            }
        }
        Ok(HierarchyChanges {
            sync_state: m
                .child_text("SyncState")
                .unwrap_or_default()
                .trim()
                .to_string(),
            includes_last: m.child_bool("IncludesLastFolderInRange").unwrap_or(true),
            changes,
        })
    }
}

/// A change of a folder's items.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemChange {
    /// An item appeared (with the properties of the requested shape).
    Create(Item),
    /// An item changed.
    Update(Item),
    /// An item is gone.
    Delete(ItemId),
    /// Only the read flag changed.
    ReadFlagChange {
        /// The item.
        id: ItemId,
        /// New state.
        is_read: bool,
    },
}

/// The result of SyncFolderItems.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemChanges {
    /// State to send next time.
    pub sync_state: String,
    /// False: call again, there is more.
    pub includes_last: bool,
    /// The changes, newest first on 2010 SP2+.
    pub changes: Vec<ItemChange>,
}

/// SyncFolderItems: item changes since a sync state.
#[derive(Debug, Clone)]
pub struct SyncFolderItems {
    /// The folder.
    pub folder: FolderRef,
    /// Item properties returned (IdOnly is Microsoft's advice; GetItem follows).
    pub shape: Shape,
    /// State of the previous call; `None` on the first.
    pub sync_state: Option<String>,
    /// Items whose changes to leave out (ones the caller just wrote).
    pub ignore: Vec<ItemId>,
    /// 1 to 512.
    pub max_changes: u16,
}

/// Largest MaxChangesReturned Exchange accepts.
pub const MAX_CHANGES_RETURNED: u16 = 512;

impl Operation for SyncFolderItems {
    const NAME: &'static str = "SyncFolderItems";
    type Output = ItemChanges;
    fn write_body(&self, w: &mut XmlWriter) {
        w.start("m:SyncFolderItems", &[]);
        self.shape.write(w, "m:ItemShape");
        write_folder_refs(w, "m:SyncFolderId", std::slice::from_ref(&self.folder));
        w.opt_leaf("m:SyncState", self.sync_state.as_deref());
        if !self.ignore.is_empty() {
            w.start("m:Ignore", &[]);
            for id in &self.ignore {
                id.write(w, "t:ItemId");
            }
            w.end("m:Ignore");
        }
        w.leaf(
            "m:MaxChangesReturned",
            &self.max_changes.clamp(1, MAX_CHANGES_RETURNED).to_string(),
        );
        w.end("m:SyncFolderItems");
    }
    fn parse(&self, body: &Element) -> Result<Self::Output, Error> {
        let m = single_message(body)?;
        let mut changes = Vec::new();
        for c in m
            .child("Changes")
            .map(|c| c.children.as_slice())
            .unwrap_or_default()
        {
            match c.name.as_str() {
                "Create" => changes.extend(
                    c.children
                        .first()
                        .map(|i| ItemChange::Create(Item::from_element(i))),
                ),
                "Update" => changes.extend(
                    c.children
                        .first()
                        .map(|i| ItemChange::Update(Item::from_element(i))),
                ),
                "Delete" => changes.extend(
                    c.child("ItemId")
                        .and_then(ItemId::from_element)
                        .map(ItemChange::Delete),
                ),
                "ReadFlagChange" => {
                    let id = c.child("ItemId").and_then(ItemId::from_element);
                    let read = c.child_bool("IsRead");
                    match (id, read) {
                        (Some(id), Some(is_read)) => {
                            changes.push(ItemChange::ReadFlagChange { id, is_read })
                        }
                        _ => {
                            return Err(Error::Malformed(
                                "ReadFlagChange without ItemId or IsRead".into(),
                            ))
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(ItemChanges {
            sync_state: m
                .child_text("SyncState")
                .unwrap_or_default()
                .trim()
                .to_string(),
            includes_last: m.child_bool("IncludesLastItemInRange").unwrap_or(true),
            changes,
        })
    }
}

/// A FindItem restriction.
#[derive(Debug, Clone, PartialEq)]
pub enum Restriction {
    /// property == value
    IsEqualTo(PropertyPath, String),
    /// property >= value
    IsGreaterThanOrEqualTo(PropertyPath, String),
    /// property < value
    IsLessThan(PropertyPath, String),
    /// All of them.
    And(Vec<Restriction>),
    /// Any of them.
    Or(Vec<Restriction>),
}

impl Restriction {
    fn write(&self, w: &mut XmlWriter) {
        let cmp = |w: &mut XmlWriter, tag: &str, p: &PropertyPath, v: &str| {
            w.start(tag, &[]);
            p.write(w);
            w.start("t:FieldURIOrConstant", &[])
                .empty("t:Constant", &[("Value", v)])
                .end("t:FieldURIOrConstant");
            w.end(tag);
        };
        match self {
            Restriction::IsEqualTo(p, v) => cmp(w, "t:IsEqualTo", p, v),
            Restriction::IsGreaterThanOrEqualTo(p, v) => cmp(w, "t:IsGreaterThanOrEqualTo", p, v),
            Restriction::IsLessThan(p, v) => cmp(w, "t:IsLessThan", p, v),
            Restriction::And(rs) | Restriction::Or(rs) => {
                let tag = if matches!(self, Restriction::And(_)) {
                    "t:And"
                } else {
                    "t:Or"
                };
                w.start(tag, &[]);
                for r in rs {
                    r.write(w);
                }
                w.end(tag);
            }
        }
    }
}

/// How FindItem pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// A page of `max` items from `offset`.
    IndexedPage {
        /// First item.
        offset: u32,
        /// Page size (at most 1000, EWSFindCountLimit).
        max: u32,
    },
    /// Calendar items between `start` and `end`, recurrences expanded into occurrences.
    Calendar {
        /// Window start.
        start: DateTime<Utc>,
        /// Window end.
        end: DateTime<Utc>,
        /// At most this many.
        max: Option<u32>,
    },
}

/// A page of FindItem.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundItems {
    /// The items.
    pub items: Vec<Item>,
    /// False: another page follows.
    pub includes_last: bool,
    /// Total matching items.
    pub total: Option<u32>,
    /// Offset of the next page.
    pub next_offset: Option<u32>,
}

/// FindItem: items of a folder by view and restriction.
#[derive(Debug, Clone)]
pub struct FindItem {
    /// The folder.
    pub folder: FolderRef,
    /// Properties returned (FindItem cannot return every property; ask with GetItem).
    pub shape: Shape,
    /// Paging or calendar window.
    pub view: View,
    /// Filter.
    pub restriction: Option<Restriction>,
}

impl Operation for FindItem {
    const NAME: &'static str = "FindItem";
    type Output = FoundItems;
    fn write_body(&self, w: &mut XmlWriter) {
        w.start("m:FindItem", &[("Traversal", "Shallow")]);
        self.shape.write(w, "m:ItemShape");
        match &self.view {
            View::IndexedPage { offset, max } => {
                w.empty(
                    "m:IndexedPageItemView",
                    &[
                        ("MaxEntriesReturned", &max.to_string()),
                        ("Offset", &offset.to_string()),
                        ("BasePoint", "Beginning"),
                    ],
                );
            }
            View::Calendar { start, end, max } => {
                let (s, e) = (format_datetime(start), format_datetime(end));
                match max {
                    Some(m) => w.empty(
                        "m:CalendarView",
                        &[
                            ("MaxEntriesReturned", &m.to_string()),
                            ("StartDate", &s),
                            ("EndDate", &e),
                        ],
                    ),
                    None => w.empty("m:CalendarView", &[("StartDate", &s), ("EndDate", &e)]),
                };
            }
        }
        if let Some(r) = &self.restriction {
            w.start("m:Restriction", &[]);
            r.write(w);
            w.end("m:Restriction");
        }
        write_folder_refs(w, "m:ParentFolderIds", std::slice::from_ref(&self.folder));
        w.end("m:FindItem");
    }
    fn parse(&self, body: &Element) -> Result<Self::Output, Error> {
        let m = single_message(body)?;
        let root = m
            .child("RootFolder")
            .ok_or_else(|| Error::Malformed("FindItem response without RootFolder".into()))?;
        let num = |a: &str| root.attr(a).and_then(|v| v.parse().ok());
        Ok(FoundItems {
            items: root
                .child("Items")
                .map(|l| l.children.iter().map(Item::from_element).collect())
                .unwrap_or_default(),
            includes_last: root
                .attr("IncludesLastItemInRange")
                .and_then(crate::xml::parse_bool)
                .unwrap_or(true),
            total: num("TotalItemsInView"),
            next_offset: num("IndexedPagingOffset"),
        })
    }
}

/// GetItem: items by id, batched.
#[derive(Debug, Clone)]
pub struct GetItem {
    /// The items.
    pub ids: Vec<ItemId>,
    /// Properties returned (add `item:MimeContent` for the full message).
    pub shape: Shape,
}

impl Operation for GetItem {
    const NAME: &'static str = "GetItem";
    type Output = Vec<Result<Item, Error>>;
    fn carries_mime(&self) -> bool {
        self.shape
            .additional
            .iter()
            .any(|p| matches!(p, PropertyPath::Field(f) if f == "item:MimeContent"))
    }
    fn write_body(&self, w: &mut XmlWriter) {
        w.start("m:GetItem", &[]);
        self.shape.write(w, "m:ItemShape");
        write_item_ids(w, &self.ids);
        w.end("m:GetItem");
    }
    fn parse(&self, body: &Element) -> Result<Self::Output, Error> {
        let out = response_messages(body)?
            .into_iter()
            .map(|m| {
                items_of(m?)
                    .into_iter()
                    .next()
                    .ok_or_else(|| Error::Malformed("GetItem response without an item".into()))
            })
            .collect();
        per_item(Self::NAME, self.ids.len(), out)
    }
}

/// What happens to a message on create or update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageDisposition {
    /// Store only (a CRM mirror).
    SaveOnly,
    /// Send without keeping a copy.
    SendOnly,
    /// Send and keep a copy in Sent Items.
    SendAndSaveCopy,
}

impl MessageDisposition {
    fn as_str(self) -> &'static str {
        match self {
            MessageDisposition::SaveOnly => "SaveOnly",
            MessageDisposition::SendOnly => "SendOnly",
            MessageDisposition::SendAndSaveCopy => "SendAndSaveCopy",
        }
    }
}

/// CreateItem: new items in a folder, batched. Meeting invitations are never sent and
/// messages are saved only unless `disposition` says otherwise.
#[derive(Debug, Clone)]
pub struct CreateItem {
    /// Target folder (`None`: the default folder of the item type).
    pub folder: Option<FolderRef>,
    /// The items.
    pub items: Vec<Item>,
    /// For messages; `None` writes no attribute (non-message items).
    pub disposition: Option<MessageDisposition>,
}

impl Operation for CreateItem {
    const NAME: &'static str = "CreateItem";
    type Output = Vec<Result<ItemId, Error>>;
    fn write_body(&self, w: &mut XmlWriter) {
        let mut attrs = vec![("SendMeetingInvitations", "SendToNone")];
        if let Some(d) = self.disposition {
            attrs.insert(0, ("MessageDisposition", d.as_str()));
        }
        w.start("m:CreateItem", &attrs);
        if let Some(f) = &self.folder {
            write_folder_refs(w, "m:SavedItemFolderId", std::slice::from_ref(f));
        }
        w.start("m:Items", &[]);
        for i in &self.items {
            i.write_create(w);
        }
        w.end("m:Items").end("m:CreateItem");
    }
    fn parse(&self, body: &Element) -> Result<Self::Output, Error> {
        let sending = matches!(
            self.disposition,
            Some(MessageDisposition::SendOnly | MessageDisposition::SendAndSaveCopy)
        );
        let out = response_messages(body)?
            .into_iter()
            .map(|m| {
                let m = m?;
                // A sent message answers with an empty Items element: there is no id to return.
                if sending && m.child("Items").is_none_or(|l| l.children.is_empty()) {
                    return Ok(ItemId::new(""));
                }
                first_item_id(m)
            })
            .collect();
        per_item(Self::NAME, self.items.len(), out)
    }
}

/// UpdateItem conflict handling against a stale change key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictResolution {
    /// Fail on any conflict (ErrorIrresolvableConflict).
    NeverOverwrite,
    /// Exchange's default.
    AutoResolve,
    /// Overwrite regardless.
    AlwaysOverwrite,
}

impl ConflictResolution {
    fn as_str(self) -> &'static str {
        match self {
            ConflictResolution::NeverOverwrite => "NeverOverwrite",
            ConflictResolution::AutoResolve => "AutoResolve",
            ConflictResolution::AlwaysOverwrite => "AlwaysOverwrite",
        }
    }
}

/// The changes to one item.
#[derive(Debug, Clone)]
pub struct ItemUpdate {
    /// The item, with the change key the caller last saw.
    pub id: ItemId,
    /// Field updates (see [`Item::updates`]).
    pub updates: Vec<FieldUpdate>,
}

/// UpdateItem: field updates of items, batched.
#[derive(Debug, Clone)]
pub struct UpdateItem {
    /// The changes.
    pub changes: Vec<ItemUpdate>,
    /// Conflict handling.
    pub conflict: ConflictResolution,
    /// Set for messages.
    pub disposition: Option<MessageDisposition>,
    /// Set for calendar items (always SendToNone for a mirror).
    pub calendar: bool,
}

impl Operation for UpdateItem {
    const NAME: &'static str = "UpdateItem";
    type Output = Vec<Result<ItemId, Error>>;
    fn write_body(&self, w: &mut XmlWriter) {
        let mut attrs = vec![("ConflictResolution", self.conflict.as_str())];
        if let Some(d) = self.disposition {
            attrs.push(("MessageDisposition", d.as_str()));
        }
        if self.calendar {
            attrs.push(("SendMeetingInvitationsOrCancellations", "SendToNone"));
        }
        w.start("m:UpdateItem", &attrs).start("m:ItemChanges", &[]);
        for c in &self.changes {
            w.start("t:ItemChange", &[]);
            c.id.write(w, "t:ItemId");
            w.start("t:Updates", &[]);
            for u in &c.updates {
                match &u.value {
                    Some(v) => {
                        w.start("t:SetItemField", &[]);
                        u.path.write(w);
                        w.raw(v).end("t:SetItemField");
                    }
                    None => {
                        w.start("t:DeleteItemField", &[]);
                        u.path.write(w);
                        w.end("t:DeleteItemField");
                    }
                }
            }
            w.end("t:Updates").end("t:ItemChange");
        }
        w.end("m:ItemChanges").end("m:UpdateItem");
    }
    fn parse(&self, body: &Element) -> Result<Self::Output, Error> {
        let out = response_messages(body)?
            .into_iter()
            .map(|m| first_item_id(m?))
            .collect();
        per_item(Self::NAME, self.changes.len(), out)
    }
}

/// How DeleteItem deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteType {
    /// Gone for good.
    HardDelete,
    /// Into the recoverable items.
    SoftDelete,
    /// Into Deleted Items.
    MoveToDeletedItems,
}

impl DeleteType {
    fn as_str(self) -> &'static str {
        match self {
            DeleteType::HardDelete => "HardDelete",
            DeleteType::SoftDelete => "SoftDelete",
            DeleteType::MoveToDeletedItems => "MoveToDeletedItems",
        }
    }
}

/// DeleteItem: items by id, batched; never sends meeting cancellations.
#[derive(Debug, Clone)]
pub struct DeleteItem {
    /// The items.
    pub ids: Vec<ItemId>,
    /// How.
    pub delete_type: DeleteType,
}

impl Operation for DeleteItem {
    const NAME: &'static str = "DeleteItem";
    type Output = Vec<Result<(), Error>>;
    fn write_body(&self, w: &mut XmlWriter) {
        w.start(
            "m:DeleteItem",
            &[
                ("DeleteType", self.delete_type.as_str()),
                ("SendMeetingCancellations", "SendToNone"),
                ("AffectedTaskOccurrences", "AllOccurrences"),
            ],
        );
        write_item_ids(w, &self.ids);
        w.end("m:DeleteItem");
    }
    fn parse(&self, body: &Element) -> Result<Self::Output, Error> {
        let out = response_messages(body)?
            .into_iter()
            .map(|m| m.map(|_| ()))
            .collect();
        per_item(Self::NAME, self.ids.len(), out)
    }
}

/// MoveItem: items to another folder, batched. Moved items get new ids.
#[derive(Debug, Clone)]
pub struct MoveItem {
    /// The items.
    pub ids: Vec<ItemId>,
    /// Destination.
    pub to: FolderRef,
}

impl Operation for MoveItem {
    const NAME: &'static str = "MoveItem";
    type Output = Vec<Result<Option<ItemId>, Error>>;
    fn write_body(&self, w: &mut XmlWriter) {
        w.start("m:MoveItem", &[]);
        write_folder_refs(w, "m:ToFolderId", std::slice::from_ref(&self.to));
        write_item_ids(w, &self.ids);
        w.end("m:MoveItem");
    }
    fn parse(&self, body: &Element) -> Result<Self::Output, Error> {
        // Cross-mailbox moves answer without the new id; that is not an error.
        let out = response_messages(body)?
            .into_iter()
            .map(|m| m.map(|m| first_item_id(m).ok()))
            .collect();
        per_item(Self::NAME, self.ids.len(), out)
    }
}

/// Notification event types.
pub const ALL_EVENT_TYPES: [&str; 6] = [
    "NewMailEvent",
    "CreatedEvent",
    "DeletedEvent",
    "ModifiedEvent",
    "MovedEvent",
    "CopiedEvent",
];

/// Subscribe: a streaming subscription on folders of one mailbox.
#[derive(Debug, Clone)]
pub struct Subscribe {
    /// Folders to watch; empty watches every folder of the mailbox (SubscribeToAllFolders),
    /// which is how a mail folder tree that grows and shrinks is followed.
    pub folders: Vec<FolderRef>,
    /// Event types; empty means [`ALL_EVENT_TYPES`].
    pub event_types: Vec<String>,
}

impl Operation for Subscribe {
    const NAME: &'static str = "Subscribe";
    type Output = String;
    fn delegate_refusal(&self) -> Option<&'static str> {
        // SubscribeToAllFolders names no mailbox: Exchange subscribes the caller's own.
        self.folders.is_empty().then_some(
            "SubscribeToAllFolders names no mailbox and would watch the caller's own; with delegate access subscribe to the mailbox's folders",
        )
    }
    fn write_body(&self, w: &mut XmlWriter) {
        w.start("m:Subscribe", &[]);
        if self.folders.is_empty() {
            w.start(
                "m:StreamingSubscriptionRequest",
                &[("SubscribeToAllFolders", "true")],
            );
        } else {
            w.start("m:StreamingSubscriptionRequest", &[]);
            write_folder_refs(w, "t:FolderIds", &self.folders);
        }
        w.start("t:EventTypes", &[]);
        if self.event_types.is_empty() {
            for t in ALL_EVENT_TYPES {
                w.leaf("t:EventType", t);
            }
        } else {
            for t in &self.event_types {
                w.leaf("t:EventType", t);
            }
        }
        w.end("t:EventTypes")
            .end("m:StreamingSubscriptionRequest")
            .end("m:Subscribe");
    }
    fn parse(&self, body: &Element) -> Result<Self::Output, Error> {
        let m = single_message(body)?;
        m.child_text("SubscriptionId")
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::Malformed("Subscribe response without SubscriptionId".into()))
    }
}

/// Unsubscribe: ends a subscription.
#[derive(Debug, Clone)]
pub struct Unsubscribe {
    /// The subscription.
    pub subscription_id: String,
}

impl Operation for Unsubscribe {
    const NAME: &'static str = "Unsubscribe";
    type Output = ();
    fn write_body(&self, w: &mut XmlWriter) {
        w.start("m:Unsubscribe", &[])
            .leaf("m:SubscriptionId", &self.subscription_id)
            .end("m:Unsubscribe");
    }
    fn parse(&self, body: &Element) -> Result<Self::Output, Error> {
        single_message(body).map(|_| ())
    }
}

/// GetStreamingEvents: opens the stream for up to 200 subscriptions. The response is read with
/// [`crate::streaming::StreamParser`], not with `parse`.
#[derive(Debug, Clone)]
pub struct GetStreamingEvents {
    /// Subscriptions (at most 200).
    pub subscription_ids: Vec<String>,
    /// Minutes, 1 to 30.
    pub connection_timeout_minutes: u8,
}

impl Operation for GetStreamingEvents {
    const NAME: &'static str = "GetStreamingEvents";
    type Output = ();
    fn write_body(&self, w: &mut XmlWriter) {
        w.start("m:GetStreamingEvents", &[])
            .start("m:SubscriptionIds", &[]);
        for id in &self.subscription_ids {
            w.leaf("t:SubscriptionId", id);
        }
        w.end("m:SubscriptionIds");
        w.leaf(
            "m:ConnectionTimeout",
            &self.connection_timeout_minutes.clamp(1, 30).to_string(),
        );
        w.end("m:GetStreamingEvents");
    }
    fn parse(&self, body: &Element) -> Result<Self::Output, Error> {
        single_message(body).map(|_| ())
    }
}
