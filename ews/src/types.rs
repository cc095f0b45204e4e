//! Ids, folder references, shapes and property paths: the small types every operation uses.

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::xml::{Element, XmlWriter};

/// An item id with its change key (absent where the server or the caller has none).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ItemId {
    /// Opaque id; changes when the item moves to another folder.
    pub id: String,
    /// Opaque version; changes on every change of the item.
    pub change_key: Option<String>,
}

impl ItemId {
    /// An id without change key.
    pub fn new(id: impl Into<String>) -> Self {
        ItemId {
            id: id.into(),
            change_key: None,
        }
    }

    /// Reads `<t:ItemId Id="…" ChangeKey="…"/>` (or any element with those attributes).
    pub fn from_element(e: &Element) -> Option<ItemId> {
        Some(ItemId {
            id: e.attr("Id")?.to_string(),
            change_key: e.attr("ChangeKey").map(str::to_string),
        })
    }

    /// Writes the id as element `tag` (e.g. `t:ItemId`).
    pub fn write(&self, w: &mut XmlWriter, tag: &str) {
        match &self.change_key {
            Some(ck) => w.empty(tag, &[("Id", &self.id), ("ChangeKey", ck)]),
            None => w.empty(tag, &[("Id", &self.id)]),
        };
    }
}

/// A folder id with its change key.
pub type FolderId = ItemId;

/// Exchange's well-known folders, by their `DistinguishedFolderId` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DistinguishedFolder {
    /// The root of the mailbox (non-IPM subtree included).
    Root,
    /// Top of Information Store: the root of the folders a user sees.
    MsgFolderRoot,
    /// Inbox.
    Inbox,
    /// Sent Items.
    SentItems,
    /// Drafts.
    Drafts,
    /// Deleted Items.
    DeletedItems,
    /// Outbox.
    Outbox,
    /// Junk E-mail.
    JunkEmail,
    /// Calendar.
    Calendar,
    /// Contacts.
    Contacts,
    /// Tasks.
    Tasks,
    /// Notes.
    Notes,
    /// Journal.
    Journal,
}

impl DistinguishedFolder {
    /// Every distinguished folder with its wire name.
    pub const ALL: [(DistinguishedFolder, &'static str); 13] = [
        (DistinguishedFolder::Root, "root"),
        (DistinguishedFolder::MsgFolderRoot, "msgfolderroot"),
        (DistinguishedFolder::Inbox, "inbox"),
        (DistinguishedFolder::SentItems, "sentitems"),
        (DistinguishedFolder::Drafts, "drafts"),
        (DistinguishedFolder::DeletedItems, "deleteditems"),
        (DistinguishedFolder::Outbox, "outbox"),
        (DistinguishedFolder::JunkEmail, "junkemail"),
        (DistinguishedFolder::Calendar, "calendar"),
        (DistinguishedFolder::Contacts, "contacts"),
        (DistinguishedFolder::Tasks, "tasks"),
        (DistinguishedFolder::Notes, "notes"),
        (DistinguishedFolder::Journal, "journal"),
    ];

    /// The wire name, e.g. `inbox`.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(f, _)| *f == self)
            .map(|(_, s)| *s)
            .unwrap_or("root")
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == s).map(|(f, _)| *f)
    }
}

/// A folder named by id or as a distinguished folder (of an explicit mailbox, for delegate
/// access; with impersonation the mailbox is implied).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FolderRef {
    /// By id.
    Id(FolderId),
    /// By well-known name.
    Distinguished {
        /// Which folder.
        folder: DistinguishedFolder,
        /// Whose mailbox (delegate access); `None` for the mailbox the request acts for.
        mailbox: Option<String>,
    },
}

impl FolderRef {
    /// A distinguished folder of the mailbox the request acts for.
    pub fn well_known(folder: DistinguishedFolder) -> Self {
        FolderRef::Distinguished {
            folder,
            mailbox: None,
        }
    }

    /// Writes `t:FolderId` or `t:DistinguishedFolderId`. A distinguished folder without a
    /// mailbox of its own names the writer's mailbox when it has one (delegate access).
    pub fn write(&self, w: &mut XmlWriter) {
        match self {
            FolderRef::Id(id) => id.write(w, "t:FolderId"),
            FolderRef::Distinguished { folder, mailbox } => {
                let smtp = mailbox.clone().or_else(|| w.mailbox().map(str::to_string));
                match smtp {
                    None => {
                        w.empty("t:DistinguishedFolderId", &[("Id", folder.as_str())]);
                    }
                    Some(smtp) => {
                        w.start("t:DistinguishedFolderId", &[("Id", folder.as_str())])
                            .start("t:Mailbox", &[])
                            .leaf("t:EmailAddress", &smtp)
                            .end("t:Mailbox")
                            .end("t:DistinguishedFolderId");
                    }
                }
            }
        }
    }
}

/// How much of an item or folder to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseShape {
    /// Ids only.
    IdOnly,
    /// The default property set.
    Default,
    /// All first-class properties.
    AllProperties,
}

impl BaseShape {
    fn as_str(self) -> &'static str {
        match self {
            BaseShape::IdOnly => "IdOnly",
            BaseShape::Default => "Default",
            BaseShape::AllProperties => "AllProperties",
        }
    }
}

/// A custom MAPI named property: mailsync stamps its CRM id with one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExtendedFieldUri {
    /// Property set GUID, bare and lowercase, e.g. `6c7d6b06-…`.
    pub property_set_id: String,
    /// Property name.
    pub property_name: String,
    /// MAPI type: `String`, `Integer`, …
    pub property_type: String,
    /// A MAPI property tag such as `0x0E07` (PR_MESSAGE_FLAGS) instead of a named property:
    /// then `property_set_id` and `property_name` are empty.
    pub property_tag: Option<String>,
}

impl ExtendedFieldUri {
    /// A tagged MAPI property, e.g. `tag("0x0E07", "Integer")` for PR_MESSAGE_FLAGS.
    pub fn tag(tag: &str, property_type: &str) -> Self {
        ExtendedFieldUri {
            property_set_id: String::new(),
            property_name: String::new(),
            property_type: property_type.to_string(),
            property_tag: Some(tag.to_string()),
        }
    }

    /// A string property in a property set. The GUID may be given with or without braces;
    /// the schema wants it bare.
    pub fn string(property_set_id: &str, property_name: &str) -> Self {
        ExtendedFieldUri {
            property_set_id: property_set_id
                .trim_matches(|c| c == '{' || c == '}')
                .to_ascii_lowercase(),
            property_name: property_name.to_string(),
            property_type: "String".to_string(),
            property_tag: None,
        }
    }

    /// Writes `<t:ExtendedFieldURI …/>`.
    pub fn write(&self, w: &mut XmlWriter) {
        match &self.property_tag {
            Some(tag) => w.empty(
                "t:ExtendedFieldURI",
                &[("PropertyTag", tag), ("PropertyType", &self.property_type)],
            ),
            None => w.empty(
                "t:ExtendedFieldURI",
                &[
                    ("PropertySetId", &self.property_set_id),
                    ("PropertyName", &self.property_name),
                    ("PropertyType", &self.property_type),
                ],
            ),
        };
    }

    /// Reads an `ExtendedFieldURI` element (named properties and property tags).
    pub fn from_element(e: &Element) -> Option<Self> {
        let property_type = e.attr("PropertyType").unwrap_or("String");
        if let Some(tag) = e.attr("PropertyTag") {
            return Some(ExtendedFieldUri::tag(tag, property_type));
        }
        Some(ExtendedFieldUri {
            property_set_id: e.attr("PropertySetId")?.to_ascii_lowercase(),
            property_name: e.attr("PropertyName")?.to_string(),
            property_type: property_type.to_string(),
            property_tag: None,
        })
    }

    /// Property set ids and tags compare case-insensitively, as GUIDs and hex numbers do.
    pub fn same_as(&self, other: &ExtendedFieldUri) -> bool {
        self.property_set_id
            .eq_ignore_ascii_case(&other.property_set_id)
            && self.property_name == other.property_name
            && match (&self.property_tag, &other.property_tag) {
                (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                (None, None) => true,
                _ => false,
            }
    }
}

/// An extended property with its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtendedProperty {
    /// Which property.
    pub uri: ExtendedFieldUri,
    /// Its value as text.
    pub value: String,
}

impl ExtendedProperty {
    /// Writes `<t:ExtendedProperty>` for CreateItem or SetItemField.
    pub fn write(&self, w: &mut XmlWriter) {
        w.start("t:ExtendedProperty", &[]);
        self.uri.write(w);
        w.leaf("t:Value", &self.value).end("t:ExtendedProperty");
    }

    /// Reads the `ExtendedProperty` children of an item.
    pub fn all_from(item: &Element) -> Vec<ExtendedProperty> {
        item.children_named("ExtendedProperty")
            .filter_map(|p| {
                Some(ExtendedProperty {
                    uri: ExtendedFieldUri::from_element(p.child("ExtendedFieldURI")?)?,
                    value: p.child_text("Value")?.to_string(),
                })
            })
            .collect()
    }
}

/// A property to ask for, set or delete.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PropertyPath {
    /// `<t:FieldURI FieldURI="item:Subject"/>`.
    Field(String),
    /// `<t:IndexedFieldURI FieldURI="contacts:EmailAddress" FieldIndex="EmailAddress1"/>`.
    Indexed {
        /// The field.
        uri: String,
        /// The index (key).
        index: String,
    },
    /// An extended property.
    Extended(ExtendedFieldUri),
}

impl PropertyPath {
    /// A plain field.
    pub fn field(uri: &str) -> Self {
        PropertyPath::Field(uri.to_string())
    }

    /// An indexed field.
    pub fn indexed(uri: &str, index: &str) -> Self {
        PropertyPath::Indexed {
            uri: uri.to_string(),
            index: index.to_string(),
        }
    }

    /// Writes the path element.
    pub fn write(&self, w: &mut XmlWriter) {
        match self {
            PropertyPath::Field(f) => {
                w.empty("t:FieldURI", &[("FieldURI", f)]);
            }
            PropertyPath::Indexed { uri, index } => {
                w.empty(
                    "t:IndexedFieldURI",
                    &[("FieldURI", uri), ("FieldIndex", index)],
                );
            }
            PropertyPath::Extended(e) => e.write(w),
        }
    }

    /// A stable text key (`item:Subject`, `contacts:EmailAddress[EmailAddress1]`, `ext:{set}/name`),
    /// for callers that select updates by field.
    pub fn key(&self) -> String {
        match self {
            PropertyPath::Field(f) => f.clone(),
            PropertyPath::Indexed { uri, index } => format!("{uri}[{index}]"),
            PropertyPath::Extended(e) => format!("ext:{}/{}", e.property_set_id, e.property_name),
        }
    }
}

/// An item or folder shape: a base shape plus additional properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// The base set.
    pub base: BaseShape,
    /// Extra properties (extended properties, MimeContent, …).
    pub additional: Vec<PropertyPath>,
}

impl Shape {
    /// Ids only.
    pub fn id_only() -> Self {
        Shape {
            base: BaseShape::IdOnly,
            additional: vec![],
        }
    }

    /// All properties plus `additional`.
    pub fn all_properties(additional: Vec<PropertyPath>) -> Self {
        Shape {
            base: BaseShape::AllProperties,
            additional,
        }
    }

    /// Writes the shape as element `tag` (`m:ItemShape` or `m:FolderShape`).
    pub fn write(&self, w: &mut XmlWriter, tag: &str) {
        w.start(tag, &[]).leaf("t:BaseShape", self.base.as_str());
        if !self.additional.is_empty() {
            w.start("t:AdditionalProperties", &[]);
            for p in &self.additional {
                p.write(w);
            }
            w.end("t:AdditionalProperties");
        }
        w.end(tag);
    }
}

/// Formats a UTC time the way EWS expects (`2024-05-01T08:00:00Z`).
pub fn format_datetime(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Parses an EWS date-time; a value without offset is taken as UTC (we always send the UTC
/// TimeZoneContext, and Start/End are UTC on the wire).
pub fn parse_datetime(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|n| n.and_utc())
        })
}
