//! The simulated Exchange store: mailboxes with folders and items, the change journals
//! behind SyncFolderItems and SyncFolderHierarchy, and the events streaming subscriptions see.
//!
//! Items are property bags: each property is the element the client sent (or the server set),
//! kept by name with the version that last changed it, and written back in the schema's order
//! (`schema_order`). Ids, change keys and sync states are opaque tokens; sync states carry a
//! keyed checksum, so a forged or foreign state is detected and answered
//! ErrorInvalidSyncStateData, as Exchange does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::Engine;
use chrono::{DateTime, Utc};
use parking_lot::{Mutex, RwLock};

use crate::xml::Node;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Well-known folders every mailbox has: (distinguished id, display name, class, element).
pub const DISTINGUISHED: &[(&str, &str, &str, &str)] = &[
    ("inbox", "Inbox", "IPF.Note", "Folder"),
    ("sentitems", "Sent Items", "IPF.Note", "Folder"),
    ("drafts", "Drafts", "IPF.Note", "Folder"),
    ("deleteditems", "Deleted Items", "IPF.Note", "Folder"),
    ("outbox", "Outbox", "IPF.Note", "Folder"),
    ("junkemail", "Junk Email", "IPF.Note", "Folder"),
    ("calendar", "Calendar", "IPF.Appointment", "CalendarFolder"),
    ("contacts", "Contacts", "IPF.Contact", "ContactsFolder"),
    ("tasks", "Tasks", "IPF.Task", "TasksFolder"),
    ("notes", "Notes", "IPF.StickyNote", "Folder"),
    ("journal", "Journal", "IPF.Journal", "Folder"),
];

/// Every DistinguishedFolderIdNameType value; those not in [`DISTINGUISHED`] (nor root and
/// msgfolderroot) are created on first use, as empty mail folders.
pub const OTHER_DISTINGUISHED: &[&str] = &[
    "searchfolders",
    "voicemail",
    "recoverableitemsroot",
    "recoverableitemsdeletions",
    "recoverableitemsversions",
    "recoverableitemspurges",
    "archiveroot",
    "archivemsgfolderroot",
    "archivedeleteditems",
    "archiveinbox",
    "archiverecoverableitemsroot",
    "syncissues",
    "conflicts",
    "localfailures",
    "serverfailures",
    "recipientcache",
    "quickcontacts",
    "conversationhistory",
    "adminauditlogs",
    "todosearch",
    "mycontacts",
    "directory",
    "imcontactlist",
    "peopleconnect",
    "favorites",
    "publicfoldersroot",
    "conversationsettings",
];

/// What happened to an item, as journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalKind {
    /// The item appeared in the folder (created, or moved in).
    Created,
    /// Properties changed.
    Modified,
    /// Only IsRead changed.
    ReadFlag,
    /// The item left the folder (deleted, or moved out) under this id.
    Deleted(String),
}

/// One journal entry.
#[derive(Debug, Clone)]
pub struct Journal {
    /// Mailbox-wide sequence number.
    pub seq: u64,
    /// The item.
    pub item: u64,
    /// What happened.
    pub kind: JournalKind,
}

/// A property with the item version that last set it (for conflict detection).
#[derive(Debug, Clone)]
pub struct Prop {
    /// The element.
    pub node: Node,
    /// Item version that wrote it.
    pub version: u64,
}

/// The properties of an item, by element name. A small vector: an item has a dozen or two,
/// a linear search is as fast as a map and the memory is a fraction of a B-tree's.
#[derive(Debug, Clone, Default)]
pub struct Props(Vec<Prop>);

impl Props {
    /// The property named `name`.
    pub fn get(&self, name: &str) -> Option<&Prop> {
        self.0.iter().find(|p| p.node.name == name)
    }

    /// The property named `name`, mutable.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Prop> {
        self.0.iter_mut().find(|p| p.node.name == name)
    }

    /// Whether it is set.
    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Sets a property (replacing one of the same name).
    pub fn insert(&mut self, prop: Prop) {
        match self.get_mut(&prop.node.name.clone()) {
            Some(p) => *p = prop,
            None => self.0.push(prop),
        }
    }

    /// Removes a property.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|p| p.node.name != name);
    }

    /// All properties.
    pub fn values(&self) -> impl Iterator<Item = &Prop> {
        self.0.iter()
    }
}

/// An item.
#[derive(Debug, Clone)]
pub struct Item {
    /// Key within the mailbox; survives moves.
    pub key: u64,
    /// Folder holding it.
    pub folder: u64,
    /// Element name: Message, CalendarItem, Contact, Task, …
    pub kind: crate::xml::Name,
    /// Properties by element name (ExtendedProperty excluded).
    pub props: Props,
    /// Extended properties: (lowercased set id or tag, name) → (ExtendedProperty node, version).
    pub ext: BTreeMap<(String, String), Prop>,
    /// Bumped on every change; the change key encodes it.
    pub version: u64,
    /// A series' changed occurrences by instance index (1-based), as Outlook makes them.
    pub exceptions: BTreeMap<u64, Exception>,
}

/// One occurrence of a series changed on its own.
#[derive(Debug, Clone, PartialEq)]
pub enum Exception {
    /// Removed from the series.
    Deleted,
    /// Modified: the properties set on the occurrence, over the master's.
    Modified(BTreeMap<String, Node>),
}

impl Item {
    /// Text of a property.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.props.get(name).map(|p| p.node.text.as_str())
    }

    /// Sets a plain text property.
    pub fn set_text(&mut self, name: &str, value: &str) {
        let version = self.version;
        self.props.insert(Prop {
            node: Node::leaf(name, value),
            version,
        });
    }
}

/// A folder.
#[derive(Debug, Clone)]
pub struct Folder {
    /// Key within the mailbox.
    pub key: u64,
    /// Parent folder; `None` for the root.
    pub parent: Option<u64>,
    /// Display name.
    pub name: String,
    /// FolderClass.
    pub class: String,
    /// Element name (Folder, CalendarFolder, ContactsFolder, TasksFolder).
    pub element: String,
    /// The distinguished id, for well-known folders.
    pub distinguished: Option<String>,
    /// Item change journal.
    pub journal: Vec<Journal>,
    /// Bumped when the folder itself changes (change key).
    pub version: u64,
    /// Sync-state epoch: bumping it invalidates every state issued before (fault injection).
    pub epoch: u64,
}

/// A change of the folder hierarchy, journaled per mailbox.
#[derive(Debug, Clone)]
pub struct HierarchyJournal {
    /// Sequence number.
    pub seq: u64,
    /// The folder.
    pub folder: u64,
    /// Created (true) or changed; deleted folders carry their id.
    pub deleted: Option<String>,
    /// Created since.
    pub created: bool,
}

/// What a streaming subscriber is told.
#[derive(Debug, Clone)]
pub struct Event {
    /// CreatedEvent, ModifiedEvent, DeletedEvent, MovedEvent, CopiedEvent, NewMailEvent.
    pub kind: &'static str,
    /// When.
    pub at: DateTime<Utc>,
    /// Item id (item events) — the new id for moves.
    pub item_id: Option<(String, String)>,
    /// Folder id (folder events).
    pub folder_id: Option<(String, String)>,
    /// Parent folder.
    pub parent: (String, String),
    /// Old item id and old parent, for moves.
    pub old: Option<((String, String), (String, String))>,
    /// The folder the event is about (for subscription filtering).
    pub folder_key: u64,
    /// For a move: the folder the item left. A subscription to either folder hears of the
    /// move, as Exchange tells the subscribers of both.
    pub old_folder_key: Option<u64>,
}

/// A mailbox.
#[derive(Debug)]
pub struct Mailbox {
    /// Index in the store (part of every id).
    pub index: u64,
    /// Primary SMTP address (lowercase).
    pub smtp: String,
    /// Display name.
    pub display_name: String,
    /// Mailbox-wide sequence.
    pub seq: u64,
    next_key: u64,
    /// Folders by key.
    pub folders: BTreeMap<u64, Folder>,
    /// Items by key.
    pub items: HashMap<u64, Item>,
    /// Folder hierarchy journal.
    pub hierarchy: Vec<HierarchyJournal>,
    /// Hierarchy sync-state epoch.
    pub hierarchy_epoch: u64,
    /// Distinguished folder keys.
    pub distinguished: HashMap<String, u64>,
    /// Events produced by the last mutations, taken by the store to feed subscriptions.
    pub pending_events: Vec<Event>,
    /// Items every write of which is refused with this response code (a corrupt item, as
    /// Exchange has them): the control API sets it, tests of permanent per-item refusals use it.
    pub poisoned: HashMap<u64, String>,
}

/// Key of the root folder.
pub const ROOT: u64 = 1;
/// Key of msgfolderroot (Top of Information Store).
pub const MSG_ROOT: u64 = 2;

impl Mailbox {
    fn new(index: u64, smtp: &str, display_name: &str) -> Mailbox {
        let mut m = Mailbox {
            index,
            smtp: smtp.to_string(),
            display_name: display_name.to_string(),
            seq: 0,
            next_key: 3,
            folders: BTreeMap::new(),
            items: HashMap::new(),
            hierarchy: Vec::new(),
            hierarchy_epoch: 0,
            distinguished: HashMap::new(),
            pending_events: Vec::new(),
            poisoned: HashMap::new(),
        };
        m.insert_folder(ROOT, None, "Root", "", "Folder", Some("root"));
        m.insert_folder(
            MSG_ROOT,
            Some(ROOT),
            "Top of Information Store",
            "IPF.Note",
            "Folder",
            Some("msgfolderroot"),
        );
        for (id, name, class, element) in DISTINGUISHED {
            let key = m.alloc();
            m.insert_folder(key, Some(MSG_ROOT), name, class, element, Some(id));
        }
        m
    }

    fn alloc(&mut self) -> u64 {
        let k = self.next_key;
        self.next_key += 1;
        k
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn insert_folder(
        &mut self,
        key: u64,
        parent: Option<u64>,
        name: &str,
        class: &str,
        element: &str,
        distinguished: Option<&str>,
    ) {
        let seq = self.next_seq();
        self.folders.insert(
            key,
            Folder {
                key,
                parent,
                name: name.to_string(),
                class: class.to_string(),
                element: element.to_string(),
                distinguished: distinguished.map(str::to_string),
                journal: Vec::new(),
                version: 1,
                epoch: 0,
            },
        );
        if let Some(d) = distinguished {
            self.distinguished.insert(d.to_string(), key);
        }
        self.hierarchy.push(HierarchyJournal {
            seq,
            folder: key,
            deleted: None,
            created: true,
        });
    }

    /// The key of a distinguished folder, creating the rarer ones on first use.
    pub fn distinguished_folder(&mut self, id: &str) -> Option<u64> {
        if let Some(k) = self.distinguished.get(id) {
            return Some(*k);
        }
        if OTHER_DISTINGUISHED.contains(&id) {
            let key = self.alloc();
            let parent = if id.starts_with("archive") || id.starts_with("recoverable") {
                ROOT
            } else {
                MSG_ROOT
            };
            self.insert_folder(key, Some(parent), id, "IPF.Note", "Folder", Some(id));
            return Some(key);
        }
        None
    }

    /// Ids of an item: (ItemId, ChangeKey).
    pub fn item_id(&self, item: &Item) -> (String, String) {
        (
            encode_id(b'I', self.index, item.key, item.folder),
            encode_ck(item.version),
        )
    }

    /// Ids of a folder.
    pub fn folder_id(&self, key: u64) -> (String, String) {
        let v = self.folders.get(&key).map_or(0, |f| f.version);
        (encode_id(b'F', self.index, key, 0), encode_ck(v))
    }

    /// Creates a subfolder.
    pub fn create_folder(
        &mut self,
        parent: u64,
        name: &str,
        class: &str,
    ) -> Result<u64, &'static str> {
        if !self.folders.contains_key(&parent) {
            return Err("ErrorParentFolderNotFound");
        }
        if self
            .folders
            .values()
            .any(|f| f.parent == Some(parent) && f.name.eq_ignore_ascii_case(name))
        {
            return Err("ErrorFolderExists");
        }
        let element = match class {
            c if c.starts_with("IPF.Appointment") => "CalendarFolder",
            c if c.starts_with("IPF.Contact") => "ContactsFolder",
            c if c.starts_with("IPF.Task") => "TasksFolder",
            _ => "Folder",
        };
        let key = self.alloc();
        self.insert_folder(key, Some(parent), name, class, element, None);
        self.folder_event("CreatedEvent", key);
        Ok(key)
    }

    /// Renames and/or moves a folder.
    pub fn update_folder(
        &mut self,
        key: u64,
        name: Option<&str>,
        parent: Option<u64>,
    ) -> Result<(), &'static str> {
        let f = self.folders.get(&key).ok_or("ErrorFolderNotFound")?;
        if f.distinguished.is_some() && (name.is_some() || parent.is_some()) && f.parent.is_none() {
            return Err("ErrorCannotDeleteObject");
        }
        if let Some(p) = parent {
            if !self.folders.contains_key(&p) {
                return Err("ErrorParentFolderNotFound");
            }
            // No folder moves into its own subtree.
            let mut cur = Some(p);
            while let Some(c) = cur {
                if c == key {
                    return Err("ErrorMoveCopyFailed");
                }
                cur = self.folders.get(&c).and_then(|f| f.parent);
            }
        }
        let seq = self.next_seq();
        let f = self.folders.get_mut(&key).ok_or("ErrorFolderNotFound")?;
        if let Some(n) = name {
            f.name = n.to_string();
        }
        if let Some(p) = parent {
            f.parent = Some(p);
        }
        f.version += 1;
        self.hierarchy.push(HierarchyJournal {
            seq,
            folder: key,
            deleted: None,
            created: false,
        });
        self.folder_event("ModifiedEvent", key);
        Ok(())
    }

    /// Deletes a folder, its subfolders and their items.
    pub fn delete_folder(&mut self, key: u64) -> Result<(), &'static str> {
        let f = self.folders.get(&key).ok_or("ErrorFolderNotFound")?;
        if f.distinguished.is_some() {
            return Err("ErrorDeleteDistinguishedFolder");
        }
        let mut doomed = vec![key];
        let mut i = 0;
        while i < doomed.len() {
            let k = doomed[i];
            doomed.extend(
                self.folders
                    .values()
                    .filter(|f| f.parent == Some(k))
                    .map(|f| f.key),
            );
            i += 1;
        }
        self.folder_event("DeletedEvent", key);
        for k in doomed {
            let id = self.folder_id(k);
            let seq = self.next_seq();
            self.folders.remove(&k);
            self.items.retain(|_, it| it.folder != k);
            self.hierarchy.push(HierarchyJournal {
                seq,
                folder: k,
                deleted: Some(id.0),
                created: false,
            });
        }
        Ok(())
    }

    fn folder_event(&mut self, kind: &'static str, key: u64) {
        let parent = self
            .folders
            .get(&key)
            .and_then(|f| f.parent)
            .unwrap_or(ROOT);
        let ev = Event {
            kind,
            at: Utc::now(),
            item_id: None,
            folder_id: Some(self.folder_id(key)),
            parent: self.folder_id(parent),
            old: None,
            folder_key: parent,
            old_folder_key: None,
        };
        self.pending_events.push(ev);
    }

    fn item_event(
        &mut self,
        kind: &'static str,
        item: u64,
        old: Option<((String, String), (String, String))>,
    ) {
        let Some(it) = self.items.get(&item) else {
            return;
        };
        let folder = it.folder;
        let ev = Event {
            kind,
            at: Utc::now(),
            item_id: Some(self.item_id(it)),
            folder_id: None,
            parent: self.folder_id(folder),
            old,
            folder_key: folder,
            old_folder_key: None,
        };
        self.pending_events.push(ev);
        // A user-visible change also modifies the folder (counts): Exchange says so too.
        self.folder_modified(folder);
    }

    /// The ModifiedEvent of a folder whose content (item count) changed.
    fn folder_modified(&mut self, folder: u64) {
        let fe = Event {
            kind: "ModifiedEvent",
            at: Utc::now(),
            item_id: None,
            folder_id: Some(self.folder_id(folder)),
            parent: self.folder_id(
                self.folders
                    .get(&folder)
                    .and_then(|f| f.parent)
                    .unwrap_or(ROOT),
            ),
            old: None,
            folder_key: folder,
            old_folder_key: None,
        };
        self.pending_events.push(fe);
    }

    /// The MovedEvent of an item that left `from` for `to` (new ids, old ids), told to the
    /// subscribers of both folders, and the ModifiedEvents of both folders — what Exchange
    /// raises for MoveItem, DeleteItem MoveToDeletedItems (Outlook's "Delete") and, on 2013
    /// and later, a soft delete into the dumpster.
    fn moved_event(
        &mut self,
        new_id: (String, String),
        to: u64,
        old: ((String, String), (String, String)),
        from: u64,
    ) {
        self.pending_events.push(Event {
            kind: "MovedEvent",
            at: Utc::now(),
            item_id: Some(new_id),
            folder_id: None,
            parent: self.folder_id(to),
            old: Some(old),
            folder_key: to,
            old_folder_key: Some(from),
        });
        self.folder_modified(to);
        self.folder_modified(from);
    }

    fn journal(&mut self, folder: u64, item: u64, kind: JournalKind) {
        let seq = self.next_seq();
        if let Some(f) = self.folders.get_mut(&folder) {
            f.journal.push(Journal { seq, item, kind });
        }
    }

    /// Adds an item to a folder. `props` are the client's elements.
    pub fn create_item(
        &mut self,
        folder: u64,
        kind: &str,
        props: Vec<Node>,
        now: DateTime<Utc>,
    ) -> Result<u64, &'static str> {
        if !self.folders.contains_key(&folder) {
            return Err("ErrorFolderNotFound");
        }
        let key = self.alloc();
        let mut item = Item {
            key,
            folder,
            kind: crate::xml::name(kind),
            props: Props::default(),
            ext: BTreeMap::new(),
            version: 1,
            exceptions: BTreeMap::new(),
        };
        for n in props {
            put_prop(&mut item, n, 1);
        }
        server_props(&mut item, now, &self.smtp, &self.display_name);
        item.props.0.shrink_to_fit();
        self.items.insert(key, item);
        self.journal(folder, key, JournalKind::Created);
        self.item_event("CreatedEvent", key, None);
        if kind == "Message" && self.distinguished.get("inbox") == Some(&folder) {
            self.item_event("NewMailEvent", key, None);
        }
        Ok(key)
    }

    /// Applies property changes (set or delete) to an item; returns the new version.
    pub fn update_item(
        &mut self,
        key: u64,
        set: Vec<Node>,
        delete: Vec<PropPath>,
        now: DateTime<Utc>,
    ) -> Result<u64, &'static str> {
        let it = self.items.get_mut(&key).ok_or("ErrorItemNotFound")?;
        let old_read = it.text("IsRead").map(str::to_string);
        it.version += 1;
        let v = it.version;
        let mut only_read = true;
        let series = |name: &str| matches!(name, "Recurrence" | "Start" | "End");
        let rebuilds_series = set.iter().any(|n| series(&n.name))
            || delete
                .iter()
                .any(|p| matches!(p, PropPath::Field(f) if series(f)));
        for n in set {
            if n.name != "IsRead" {
                only_read = false;
            }
            merge_prop(it, n, v);
        }
        for p in delete {
            only_read = false;
            delete_prop(it, &p);
        }
        it.props.insert(Prop {
            node: Node::leaf("LastModifiedTime", &fmt_time(now)),
            version: v,
        });
        if it.kind == "CalendarItem" {
            // A new pattern or new times rebuild the series: its exceptions are gone, as in
            // Exchange (Outlook warns about it).
            if !it.exceptions.is_empty() && rebuilds_series {
                it.exceptions.clear();
            }
            let master = it.props.contains_key("Recurrence");
            it.set_text(
                "CalendarItemType",
                if master { "RecurringMaster" } else { "Single" },
            );
            it.set_text("IsRecurring", if master { "true" } else { "false" });
        }
        let folder = it.folder;
        let read_changed = it.text("IsRead").map(str::to_string) != old_read;
        if it.kind == "CalendarItem" {
            let mbx = self.index;
            if let Some(it) = self.items.get_mut(&key) {
                crate::calendar::refresh_exceptions(mbx, it);
            }
        }
        let kind = if only_read && read_changed {
            JournalKind::ReadFlag
        } else {
            JournalKind::Modified
        };
        self.journal(folder, key, kind);
        self.item_event("ModifiedEvent", key, None);
        Ok(v)
    }

    /// Changes one occurrence of a series (`None`: deletes it from the series). The master's
    /// version moves on and sync reports the master as changed, as Exchange does.
    pub fn change_occurrence(
        &mut self,
        key: u64,
        index: u64,
        set: Option<Vec<Node>>,
        now: DateTime<Utc>,
    ) -> Result<(), &'static str> {
        let mbx = self.index;
        let it = self.items.get_mut(&key).ok_or("ErrorItemNotFound")?;
        let entry = it
            .exceptions
            .entry(index)
            .or_insert_with(|| Exception::Modified(BTreeMap::new()));
        match (entry, set) {
            (Exception::Deleted, _) => {
                return Err("ErrorCalendarOccurrenceIsDeletedFromRecurrence")
            }
            (e, None) => *e = Exception::Deleted,
            (Exception::Modified(props), Some(set)) => {
                for n in set {
                    props.insert(n.name.to_string(), n);
                }
            }
        }
        it.version += 1;
        let v = it.version;
        it.props.insert(Prop {
            node: Node::leaf("LastModifiedTime", &fmt_time(now)),
            version: v,
        });
        crate::calendar::refresh_exceptions(mbx, it);
        let folder = it.folder;
        self.journal(folder, key, JournalKind::Modified);
        self.item_event("ModifiedEvent", key, None);
        Ok(())
    }

    /// Removes an item (any delete type: the simulator keeps no dumpster). Subscribers hear a
    /// DeletedEvent and the ModifiedEvent of the parent folder (a hard delete, or a soft
    /// delete on Exchange 2010).
    pub fn delete_item(&mut self, key: u64) -> Result<(), &'static str> {
        let it = self.items.get(&key).ok_or("ErrorItemNotFound")?;
        let id = self.item_id(it).0;
        let folder = it.folder;
        self.item_event("DeletedEvent", key, None);
        self.items.remove(&key);
        self.journal(folder, key, JournalKind::Deleted(id));
        Ok(())
    }

    /// A soft delete as Exchange 2013 and later report it: the item moves into the dumpster
    /// (Recoverable Items\Deletions), so subscribers hear a MovedEvent naming both parents
    /// and the ModifiedEvents of both folders. The simulator keeps no dumpster: the item is
    /// gone from the store, and SyncFolderItems of its folder reports a Delete.
    pub fn soft_delete_item(&mut self, key: u64) -> Result<(), &'static str> {
        let it = self.items.get(&key).ok_or("ErrorItemNotFound")?;
        let from = it.folder;
        let version = it.version + 1;
        let old = (self.item_id(it), self.folder_id(from));
        let dumpster = self
            .distinguished_folder("recoverableitemsdeletions")
            .ok_or("ErrorFolderNotFound")?;
        let new_id = (
            encode_id(b'I', self.index, key, dumpster),
            encode_ck(version),
        );
        self.items.remove(&key);
        self.journal(from, key, JournalKind::Deleted(old.0 .0.clone()));
        self.moved_event(new_id, dumpster, old, from);
        Ok(())
    }

    /// Moves an item to another folder; its id changes.
    pub fn move_item(&mut self, key: u64, to: u64) -> Result<(), &'static str> {
        if !self.folders.contains_key(&to) {
            return Err("ErrorFolderNotFound");
        }
        let it = self.items.get(&key).ok_or("ErrorItemNotFound")?;
        let from = it.folder;
        if from == to {
            return Ok(());
        }
        let old = (self.item_id(it), self.folder_id(from));
        let old_id = old.0 .0.clone();
        let it = self.items.get_mut(&key).ok_or("ErrorItemNotFound")?;
        it.folder = to;
        it.version += 1;
        self.journal(from, key, JournalKind::Deleted(old_id));
        self.journal(to, key, JournalKind::Created);
        let new_id = self.item_id(&self.items[&key]);
        self.moved_event(new_id, to, old, from);
        Ok(())
    }
}

/// A property path for deletes and lookups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropPath {
    /// A whole element.
    Field(String),
    /// An entry of a dictionary (EmailAddresses, PhoneNumbers, …) by key, optionally one part
    /// of it (PhysicalAddresses entries: Street, City, …).
    Indexed {
        /// Container element, e.g. EmailAddresses.
        container: String,
        /// Entry key.
        key: String,
        /// Part within the entry.
        part: Option<String>,
    },
    /// An extended property.
    Extended(String, String),
}

impl PropPath {
    /// Reads FieldURI / IndexedFieldURI / ExtendedFieldURI.
    pub fn from_node(n: &Node) -> Option<PropPath> {
        match n.name.as_ref() {
            "FieldURI" => Some(PropPath::Field(
                field_element(n.attr("FieldURI")?).to_string(),
            )),
            "IndexedFieldURI" => {
                let uri = n.attr("FieldURI")?;
                let key = n.attr("FieldIndex")?.to_string();
                let (container, part) = indexed_container(uri)?;
                Some(PropPath::Indexed {
                    container: container.to_string(),
                    key,
                    part: part.map(str::to_string),
                })
            }
            "ExtendedFieldURI" => Some(PropPath::Extended(ext_set(n), ext_name(n))),
            _ => None,
        }
    }
}

/// `item:Subject` → `Subject`; `message:IsRead` → `IsRead`.
pub fn field_element(uri: &str) -> &str {
    match uri {
        "folder:FolderId" => "FolderId",
        "item:ItemId" => "ItemId",
        _ => uri.rsplit(':').next().unwrap_or(uri),
    }
}

fn indexed_container(uri: &str) -> Option<(&'static str, Option<&str>)> {
    Some(match uri {
        "contacts:EmailAddress" => ("EmailAddresses", None),
        "contacts:PhoneNumber" => ("PhoneNumbers", None),
        "contacts:ImAddress" => ("ImAddresses", None),
        u if u.starts_with("contacts:PhysicalAddress:") => (
            "PhysicalAddresses",
            Some(&u["contacts:PhysicalAddress:".len()..]),
        ),
        _ => return None,
    })
}

/// The property-set (or tag / distinguished set) part of an ExtendedFieldURI's key.
pub fn ext_set(n: &Node) -> String {
    n.attr("PropertySetId")
        .map(|s| {
            s.trim_matches(|c| c == '{' || c == '}')
                .to_ascii_lowercase()
        })
        .or_else(|| n.attr("DistinguishedPropertySetId").map(|s| s.to_string()))
        .or_else(|| {
            n.attr("PropertyTag")
                .map(|t| format!("tag:{}", t.to_ascii_lowercase()))
        })
        .unwrap_or_default()
}

/// The name part of an ExtendedFieldURI's key.
pub fn ext_name(n: &Node) -> String {
    n.attr("PropertyName")
        .or_else(|| n.attr("PropertyId"))
        .unwrap_or_default()
        .to_string()
}

fn put_prop(item: &mut Item, n: Node, version: u64) {
    if n.name == "ExtendedProperty" {
        if let Some(uri) = n.get("ExtendedFieldURI") {
            item.ext
                .insert((ext_set(uri), ext_name(uri)), Prop { node: n, version });
        }
        return;
    }
    item.props.insert(Prop { node: n, version });
}

/// Dictionaries merge entry by entry (and address entries part by part) on SetItemField.
fn merge_prop(item: &mut Item, n: Node, version: u64) {
    let dict = matches!(
        n.name.as_ref(),
        "EmailAddresses" | "PhoneNumbers" | "ImAddresses" | "PhysicalAddresses"
    );
    if !dict || !item.props.contains_key(&n.name) {
        put_prop(item, n, version);
        return;
    }
    let Some(existing) = item.props.get_mut(&n.name) else {
        return;
    };
    for entry in n.children {
        let key = entry.attr("Key").unwrap_or_default().to_string();
        match existing
            .node
            .children
            .iter_mut()
            .find(|e| e.attr("Key") == Some(&key))
        {
            Some(e) if n.name == "PhysicalAddresses" => {
                for part in entry.children {
                    match e.children.iter_mut().find(|p| p.name == part.name) {
                        Some(p) => *p = part,
                        None => e.children.push(part),
                    }
                }
                sort_address(e);
            }
            Some(e) => *e = entry,
            None => existing.node.children.push(entry),
        }
    }
    existing.version = version;
}

fn sort_address(e: &mut Node) {
    const ORDER: [&str; 5] = ["Street", "City", "State", "CountryOrRegion", "PostalCode"];
    e.children
        .sort_by_key(|c| ORDER.iter().position(|o| *o == c.name).unwrap_or(99));
}

fn delete_prop(item: &mut Item, p: &PropPath) {
    match p {
        PropPath::Field(f) => {
            item.props.remove(f);
        }
        PropPath::Extended(s, n) => {
            item.ext.remove(&(s.clone(), n.clone()));
        }
        PropPath::Indexed {
            container,
            key,
            part,
        } => {
            let Some(c) = item.props.get_mut(container) else {
                return;
            };
            match part {
                None => c.node.children.retain(|e| e.attr("Key") != Some(key)),
                Some(part) => {
                    if let Some(e) = c
                        .node
                        .children
                        .iter_mut()
                        .find(|e| e.attr("Key") == Some(key))
                    {
                        e.children.retain(|x| &x.name != part);
                    }
                    c.node.children.retain(|e| !e.children.is_empty());
                }
            }
            if c.node.children.is_empty() {
                item.props.remove(container);
            }
        }
    }
}

/// Formats a time as Exchange writes it.
pub fn fmt_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Properties the server sets on every new item.
fn server_props(item: &mut Item, now: DateTime<Utc>, owner_smtp: &str, owner_name: &str) {
    let class = match item.kind.as_ref() {
        "CalendarItem" => "IPM.Appointment",
        "Contact" => "IPM.Contact",
        "Task" => "IPM.Task",
        "DistributionList" => "IPM.DistList",
        "PostItem" => "IPM.Post",
        _ => "IPM.Note",
    };
    let t = fmt_time(now);
    if !item.props.contains_key("ItemClass") {
        item.set_text("ItemClass", class);
    }
    item.set_text("DateTimeCreated", &t);
    item.set_text("LastModifiedTime", &t);
    if !item.props.contains_key("DateTimeReceived") {
        item.set_text("DateTimeReceived", &t);
    }
    item.set_text("HasAttachments", "false");
    if let Some(mime) = item.props.get("MimeContent").map(|p| p.node.text.clone()) {
        let bytes = B64
            .decode(mime.split_whitespace().collect::<String>())
            .unwrap_or_default();
        item.set_text("Size", &bytes.len().to_string());
        fill_from_mime(item, &bytes);
    } else {
        let size = item
            .props
            .values()
            .map(|p| p.node.text.len() + 16)
            .sum::<usize>();
        item.set_text("Size", &size.to_string());
    }
    match item.kind.as_ref() {
        "Message" => {
            if !item.props.contains_key("IsRead") {
                item.set_text("IsRead", "false");
            }
            if !item.props.contains_key("From") {
                let mut from = Node::leaf("From", "");
                from.children.push(mailbox_node(owner_name, owner_smtp));
                item.props.insert(Prop {
                    node: from,
                    version: 1,
                });
            }
            if !item.props.contains_key("InternetMessageId") {
                item.set_text(
                    "InternetMessageId",
                    &format!(
                        "<{}.{}@ews-sim.local>",
                        item.key,
                        now.timestamp_nanos_opt().unwrap_or_default()
                    ),
                );
            }
        }
        "CalendarItem" => {
            if !item.props.contains_key("UID") {
                item.set_text(
                    "UID",
                    &format!(
                        "040000008200E00074C5B7101A82E008{:032X}",
                        item.key as u128 * 7919 + now.timestamp() as u128
                    ),
                );
            }
            let master = item.props.contains_key("Recurrence");
            item.set_text(
                "CalendarItemType",
                if master { "RecurringMaster" } else { "Single" },
            );
            item.set_text("IsRecurring", if master { "true" } else { "false" });
            if !item.props.contains_key("LegacyFreeBusyStatus") {
                item.set_text("LegacyFreeBusyStatus", "Busy");
            }
            if !item.props.contains_key("IsAllDayEvent") {
                item.set_text("IsAllDayEvent", "false");
            }
        }
        "Contact" if !item.props.contains_key("DisplayName") => {
            let name = [item.text("GivenName"), item.text("Surname")]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
            let name = if name.is_empty() {
                item.text("CompanyName").unwrap_or_default().to_string()
            } else {
                name
            };
            item.set_text("DisplayName", &name);
        }
        "Task" => {
            if !item.props.contains_key("Status") {
                item.set_text("Status", "NotStarted");
            }
            if !item.props.contains_key("PercentComplete") {
                item.set_text("PercentComplete", "0");
            }
        }
        _ => {}
    }
}

fn mailbox_node(name: &str, email: &str) -> Node {
    let mut m = Node::leaf("Mailbox", "");
    if !name.is_empty() {
        m.children.push(Node::leaf("Name", name));
    }
    m.children.push(Node::leaf("EmailAddress", email));
    m.children.push(Node::leaf("RoutingType", "SMTP"));
    m
}

/// Exchange derives the envelope properties of a message from its MIME headers
/// ([`crate::mime`]: encoded words decoded, quoted names with commas kept whole, groups
/// expanded).
fn fill_from_mime(item: &mut Item, mime: &[u8]) {
    let Some(env) = crate::mime::envelope(mime) else {
        return;
    };
    if let Some(s) = &env.subject {
        item.set_text("Subject", s);
    }
    if let Some(id) = &env.message_id {
        item.set_text("InternetMessageId", id);
    }
    if let Some(d) = env.date {
        item.set_text("DateTimeSent", &fmt_time(d));
    }
    let node = |m: &crate::mime::Mailbox| mailbox_node(&m.name, &m.email);
    for (prop, mailbox) in [("From", &env.from), ("Sender", &env.sender)] {
        if let Some(m) = mailbox {
            let mut n = Node::leaf(prop, "");
            n.children.push(node(m));
            item.props.insert(Prop {
                node: n,
                version: 1,
            });
        }
    }
    for (prop, list) in [
        ("ToRecipients", &env.to),
        ("CcRecipients", &env.cc),
        ("BccRecipients", &env.bcc),
        ("ReplyTo", &env.reply_to),
    ] {
        if !list.is_empty() {
            let mut n = Node::leaf(prop, "");
            n.children = list.iter().map(node).collect();
            item.props.insert(Prop {
                node: n,
                version: 1,
            });
        }
    }
}

/// Encodes an opaque id: kind byte, mailbox index, key, folder key.
pub fn encode_id(kind: u8, mbx: u64, key: u64, folder: u64) -> String {
    let mut b = vec![kind, 0x5a];
    b.extend_from_slice(&mbx.to_be_bytes());
    b.extend_from_slice(&key.to_be_bytes());
    b.extend_from_slice(&folder.to_be_bytes());
    B64.encode(b)
}

/// Decodes an id: (kind, mailbox index, key, folder key).
pub fn decode_id(s: &str) -> Option<(u8, u64, u64, u64)> {
    let b = B64.decode(s.trim()).ok()?;
    if b.len() != 26 || b[1] != 0x5a {
        return None;
    }
    let n = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap_or_default());
    Some((b[0], n(2), n(10), n(18)))
}

/// Encodes a change key.
pub fn encode_ck(version: u64) -> String {
    let mut b = b"CK".to_vec();
    b.extend_from_slice(&version.to_be_bytes());
    B64.encode(b)
}

/// Decodes a change key to the version.
pub fn decode_ck(s: &str) -> Option<u64> {
    let b = B64.decode(s.trim()).ok()?;
    (b.len() == 10 && &b[..2] == b"CK")
        .then(|| u64::from_be_bytes(b[2..].try_into().unwrap_or_default()))
}

/// The whole store: mailboxes by address.
pub struct Store {
    mailboxes: RwLock<HashMap<String, Arc<Mutex<Mailbox>>>>,
    /// Mailbox index (encoded in every item and folder id) to address.
    addresses: RwLock<HashMap<u64, String>>,
    next_index: AtomicU64,
    /// Key of the sync-state checksums (per simulator instance).
    secret: u64,
    /// Streaming subscriptions.
    pub subscriptions: crate::streaming::Hub,
}

impl Store {
    /// An empty store.
    pub fn new(secret: u64) -> Store {
        Store {
            mailboxes: RwLock::new(HashMap::new()),
            addresses: RwLock::new(HashMap::new()),
            next_index: AtomicU64::new(1),
            secret,
            subscriptions: crate::streaming::Hub::default(),
        }
    }

    /// Adds a mailbox (idempotent).
    pub fn add_mailbox(&self, smtp: &str, display_name: &str) -> Arc<Mutex<Mailbox>> {
        let smtp = smtp.to_ascii_lowercase();
        if let Some(m) = self.mailboxes.read().get(&smtp) {
            return m.clone();
        }
        let index = self.next_index.fetch_add(1, Ordering::Relaxed);
        let m = Arc::new(Mutex::new(Mailbox::new(index, &smtp, display_name)));
        self.addresses.write().insert(index, smtp.clone());
        self.mailboxes.write().insert(smtp, m.clone());
        m
    }

    /// Replaces a mailbox with a new, empty one of the same address (an administrator who
    /// deleted and re-created it): every folder and item id is new, every sync state foreign.
    /// Returns false when there is no such mailbox.
    pub fn recreate_mailbox(&self, smtp: &str) -> bool {
        let smtp = smtp.to_ascii_lowercase();
        let Some(old) = self.mailbox(&smtp) else {
            return false;
        };
        let display_name = old.lock().display_name.clone();
        let index = self.next_index.fetch_add(1, Ordering::Relaxed);
        let fresh = Arc::new(Mutex::new(Mailbox::new(index, &smtp, &display_name)));
        self.addresses.write().insert(index, smtp.clone());
        self.mailboxes.write().insert(smtp, fresh);
        true
    }

    /// The address of the mailbox with this index (the one encoded in its ids).
    pub fn address_of(&self, index: u64) -> Option<String> {
        self.addresses.read().get(&index).cloned()
    }

    /// A mailbox by address.
    pub fn mailbox(&self, smtp: &str) -> Option<Arc<Mutex<Mailbox>>> {
        self.mailboxes
            .read()
            .get(&smtp.to_ascii_lowercase())
            .cloned()
    }

    /// All addresses.
    pub fn addresses(&self) -> Vec<String> {
        let mut v: Vec<String> = self.mailboxes.read().keys().cloned().collect();
        v.sort();
        v
    }

    /// Number of mailboxes.
    pub fn len(&self) -> usize {
        self.mailboxes.read().len()
    }

    /// True without mailboxes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `f` on a mailbox and hands the events it produced to the subscriptions.
    pub fn with_mailbox<T>(&self, m: &Arc<Mutex<Mailbox>>, f: impl FnOnce(&mut Mailbox) -> T) -> T {
        let (out, events, smtp) = {
            let mut g = m.lock();
            let out = f(&mut g);
            (out, std::mem::take(&mut g.pending_events), g.smtp.clone())
        };
        if !events.is_empty() {
            self.subscriptions.publish(&smtp, events);
        }
        out
    }

    fn mac(&self, parts: &[u64]) -> u64 {
        // FNV-1a over the secret and the parts: enough to tell forged states from ours.
        let mut h: u64 = 0xcbf29ce484222325 ^ self.secret;
        for p in parts {
            for b in p.to_be_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x100000001b3);
            }
        }
        h
    }

    /// A SyncFolderItems state: mailbox, folder, epoch, position.
    pub fn item_state(&self, mbx: u64, folder: u64, epoch: u64, seq: u64) -> String {
        let parts = [1, mbx, folder, epoch, seq];
        let mut b = Vec::new();
        for p in parts.iter().chain(std::iter::once(&self.mac(&parts))) {
            b.extend_from_slice(&p.to_be_bytes());
        }
        B64.encode(b)
    }

    /// Reads a SyncFolderItems state back; `None` when forged, damaged or of another folder.
    pub fn check_item_state(&self, s: &str, mbx: u64, folder: u64, epoch: u64) -> Option<u64> {
        let p = self.decode_state(s)?;
        (p[0] == 1 && p[1] == mbx && p[2] == folder && p[3] == epoch).then_some(p[4])
    }

    /// A SyncFolderHierarchy state.
    pub fn hierarchy_state(&self, mbx: u64, root: u64, epoch: u64, seq: u64) -> String {
        self.item_state_kind(2, mbx, root, epoch, seq)
    }

    /// Reads a hierarchy state back.
    pub fn check_hierarchy_state(&self, s: &str, mbx: u64, root: u64, epoch: u64) -> Option<u64> {
        let p = self.decode_state(s)?;
        (p[0] == 2 && p[1] == mbx && p[2] == root && p[3] == epoch).then_some(p[4])
    }

    fn item_state_kind(&self, kind: u64, mbx: u64, folder: u64, epoch: u64, seq: u64) -> String {
        let parts = [kind, mbx, folder, epoch, seq];
        let mut b = Vec::new();
        for p in parts.iter().chain(std::iter::once(&self.mac(&parts))) {
            b.extend_from_slice(&p.to_be_bytes());
        }
        B64.encode(b)
    }

    fn decode_state(&self, s: &str) -> Option<[u64; 5]> {
        let b = B64.decode(s.trim()).ok()?;
        if b.len() != 48 {
            return None;
        }
        let n = |i: usize| u64::from_be_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        let parts = [n(0), n(1), n(2), n(3), n(4)];
        (self.mac(&parts) == n(5)).then_some(parts)
    }
}

/// The net changes of a folder since a journal position, one per item, as SyncFolderItems
/// reports them: (last seq, item key, change). Items created and deleted in between vanish.
pub fn net_changes(folder: &Folder, since: u64) -> Vec<(u64, u64, JournalKind)> {
    let mut first_seen: HashMap<u64, (u64, bool)> = HashMap::new(); // item -> (last seq, created after since)
    let mut last_kind: HashMap<u64, JournalKind> = HashMap::new();
    let mut only_read: HashSet<u64> = HashSet::new();
    let mut not_only_read: HashSet<u64> = HashSet::new();
    for j in folder.journal.iter().filter(|j| j.seq > since) {
        let e = first_seen
            .entry(j.item)
            .or_insert((j.seq, j.kind == JournalKind::Created));
        e.0 = j.seq;
        match &j.kind {
            JournalKind::ReadFlag => {
                only_read.insert(j.item);
            }
            JournalKind::Deleted(_) => {}
            _ => {
                not_only_read.insert(j.item);
            }
        }
        if j.kind == JournalKind::Created
            && matches!(last_kind.get(&j.item), Some(JournalKind::Deleted(_)))
        {
            // Deleted and back again (moved out and in): it is an update for the client.
            e.1 = false;
        }
        last_kind.insert(j.item, j.kind.clone());
    }
    let mut out: Vec<(u64, u64, JournalKind)> = first_seen
        .into_iter()
        .filter_map(|(item, (seq, created_after))| {
            let last = last_kind.remove(&item)?;
            let kind = match last {
                JournalKind::Deleted(id) => {
                    if created_after {
                        return None;
                    }
                    JournalKind::Deleted(id)
                }
                _ if created_after => JournalKind::Created,
                _ if only_read.contains(&item) && !not_only_read.contains(&item) => {
                    JournalKind::ReadFlag
                }
                _ => JournalKind::Modified,
            };
            Some((seq, item, kind))
        })
        .collect();
    out.sort_by_key(|(seq, _, _)| *seq);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (Store, Arc<Mutex<Mailbox>>) {
        let s = Store::new(42);
        let m = s.add_mailbox("User1@Example.com", "User One");
        (s, m)
    }

    #[test]
    fn ids_round_trip_and_change() {
        let (_s, m) = store();
        let mut g = m.lock();
        let inbox = g.distinguished["inbox"];
        let key = g
            .create_item(
                inbox,
                "Message",
                vec![Node::leaf("Subject", "hi")],
                Utc::now(),
            )
            .unwrap();
        let (id, ck) = g.item_id(&g.items[&key]);
        assert_eq!(decode_id(&id), Some((b'I', g.index, key, inbox)));
        assert_eq!(decode_ck(&ck), Some(1));
        g.update_item(key, vec![Node::leaf("Subject", "ho")], vec![], Utc::now())
            .unwrap();
        assert_ne!(
            g.item_id(&g.items[&key]).1,
            ck,
            "a change gives a new change key"
        );
        let drafts = g.distinguished["drafts"];
        g.move_item(key, drafts).unwrap();
        assert_ne!(g.item_id(&g.items[&key]).0, id, "a move gives a new id");
        assert_eq!(decode_id("bm9wZQ=="), None);
    }

    #[test]
    fn net_changes_collapse_per_item() {
        let (_s, m) = store();
        let mut g = m.lock();
        let f = g.distinguished["inbox"];
        let now = Utc::now();
        let a = g.create_item(f, "Message", vec![], now).unwrap();
        let b = g.create_item(f, "Message", vec![], now).unwrap();
        let since = g.seq;
        let c = g.create_item(f, "Message", vec![], now).unwrap();
        g.update_item(a, vec![Node::leaf("IsRead", "true")], vec![], now)
            .unwrap();
        g.update_item(b, vec![Node::leaf("Subject", "x")], vec![], now)
            .unwrap();
        let d = g.create_item(f, "Message", vec![], now).unwrap();
        g.delete_item(d).unwrap();
        g.update_item(c, vec![Node::leaf("Subject", "y")], vec![], now)
            .unwrap();
        let ch = net_changes(&g.folders[&f], since);
        let kinds: Vec<(u64, JournalKind)> = ch.into_iter().map(|(_, k, j)| (k, j)).collect();
        assert_eq!(
            kinds,
            vec![
                (a, JournalKind::ReadFlag),
                (b, JournalKind::Modified),
                (c, JournalKind::Created)
            ]
        );
    }

    #[test]
    fn states_detect_forgery_and_foreign_folders() {
        let (s, m) = store();
        let g = m.lock();
        let st = s.item_state(g.index, 5, 0, 17);
        assert_eq!(s.check_item_state(&st, g.index, 5, 0), Some(17));
        assert_eq!(
            s.check_item_state(&st, g.index, 6, 0),
            None,
            "another folder's state"
        );
        assert_eq!(
            s.check_item_state(&st, g.index, 5, 1),
            None,
            "an invalidated epoch"
        );
        let mut b = B64.decode(&st).unwrap();
        b[39] ^= 1;
        assert_eq!(
            s.check_item_state(&B64.encode(b), g.index, 5, 0),
            None,
            "a forged position"
        );
        assert_eq!(
            Store::new(43).check_item_state(&st, g.index, 5, 0),
            None,
            "another server's state"
        );
    }
}
