//! EWS operations, server side: each reads its request element and writes its response
//! element, with Exchange's semantics — one response message per requested item in order,
//! sync states, change keys and conflict resolution, shapes, paging, restrictions.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use crate::calendar;
use crate::schema_order as order;
use crate::store::{
    self, decode_ck, decode_id, fmt_time, net_changes, Item, JournalKind, Mailbox, PropPath, Store,
};
use crate::xml::{esc, Node};

/// A failure of the whole request: answered as a SOAP fault.
#[derive(Debug, Clone)]
pub struct Fault {
    /// EWS response code.
    pub code: String,
    /// Message.
    pub message: String,
}

impl Fault {
    /// A fault with code and message.
    pub fn new(code: &str, message: impl Into<String>) -> Fault {
        Fault {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

/// The request's context: whose mailbox it acts on.
pub struct Ctx<'a> {
    /// The store.
    pub store: &'a Store,
    /// The mailbox acted on (impersonated or own).
    pub mailbox: Arc<Mutex<Mailbox>>,
    /// Its address.
    pub smtp: String,
    /// Now.
    pub now: DateTime<Utc>,
    /// EWSFindCountLimit.
    pub find_limit: usize,
    /// Subscriptions allowed per mailbox.
    pub max_subscriptions: usize,
    /// A soft delete moves the item into the dumpster (Exchange 2013 and later: subscribers
    /// hear a MovedEvent); on Exchange 2010 it is a DeletedEvent.
    pub soft_delete_moves: bool,
}

/// Runs the operation named by `body`'s element. Unknown operations are a fault.
pub fn dispatch(ctx: &Ctx<'_>, body: &Node) -> Result<String, Fault> {
    let name = body.name.as_ref();
    let messages = match name {
        "GetFolder" => get_folder(ctx, body),
        "FindFolder" => find_folder(ctx, body),
        "CreateFolder" => create_folder(ctx, body),
        "UpdateFolder" => update_folder(ctx, body),
        "DeleteFolder" => delete_folder(ctx, body),
        "MoveFolder" => move_folder(ctx, body),
        "SyncFolderHierarchy" => sync_folder_hierarchy(ctx, body),
        "SyncFolderItems" => sync_folder_items(ctx, body),
        "FindItem" => find_item(ctx, body),
        "GetItem" => get_item(ctx, body),
        "CreateItem" => create_item(ctx, body),
        "UpdateItem" => update_item(ctx, body),
        "DeleteItem" => delete_item(ctx, body),
        "MoveItem" => move_or_copy_item(ctx, body, false),
        "CopyItem" => move_or_copy_item(ctx, body, true),
        "Subscribe" => subscribe(ctx, body),
        "Unsubscribe" => unsubscribe(ctx, body),
        other => {
            return Err(Fault::new(
                "ErrorInvalidRequest",
                format!(
                    "The request is invalid: operation {other} is not supported by this server."
                ),
            ))
        }
    }?;
    Ok(format!(
        "<m:{name}Response xmlns:m=\"http://schemas.microsoft.com/exchange/services/2006/messages\" xmlns:t=\"http://schemas.microsoft.com/exchange/services/2006/types\"><m:ResponseMessages>{}</m:ResponseMessages></m:{name}Response>",
        messages.concat()
    ))
}

fn ok(op: &str, inner: &str) -> String {
    format!("<m:{op}ResponseMessage ResponseClass=\"Success\"><m:ResponseCode>NoError</m:ResponseCode>{inner}</m:{op}ResponseMessage>")
}

fn err(op: &str, code: &str, inner: &str) -> String {
    format!(
        "<m:{op}ResponseMessage ResponseClass=\"Error\"><m:MessageText>{}</m:MessageText><m:ResponseCode>{code}</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>{inner}</m:{op}ResponseMessage>",
        esc(&message_text(code))
    )
}

fn warn_stopped(op: &str, inner: &str) -> String {
    format!(
        "<m:{op}ResponseMessage ResponseClass=\"Warning\"><m:MessageText>Processing of this item was stopped because a previous item in the batch failed.</m:MessageText><m:ResponseCode>ErrorBatchProcessingStopped</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>{inner}</m:{op}ResponseMessage>"
    )
}

/// Exchange's message text for a code.
pub fn message_text(code: &str) -> String {
    match code {
        "ErrorItemNotFound" => "The specified object was not found in the store.".into(),
        "ErrorFolderNotFound" => "The specified folder could not be found in the store.".into(),
        "ErrorInvalidIdMalformed" => "Id is malformed.".into(),
        "ErrorInvalidSyncStateData" => "Synchronization state data is corrupt or otherwise invalid.".into(),
        "ErrorIrresolvableConflict" => "An update to the item could not be completed because it conflicted with another change.".into(),
        "ErrorAccessDenied" => "Access is denied. Check credentials and try again.".into(),
        "ErrorSubscriptionNotFound" => "The specified subscription was not found.".into(),
        "ErrorFolderExists" => "A folder with the specified name already exists.".into(),
        "ErrorCalendarEndDateIsEarlierThanStartDate" => "EndDate is earlier than StartDate".into(),
        other => format!("{other}."),
    }
}

/// Which properties to return.
#[derive(Debug, Default)]
struct Shape {
    all: bool,
    fields: HashSet<String>,
    indexed: Vec<(String, String, Option<String>)>,
    ext: Vec<(String, String)>,
    mime: bool,
}

impl Shape {
    fn parse(n: Option<&Node>) -> Shape {
        let mut s = Shape::default();
        let Some(n) = n else { return s };
        s.all = matches!(n.text_of("BaseShape"), Some("Default" | "AllProperties"));
        for p in n
            .get("AdditionalProperties")
            .map(|a| a.children.as_slice())
            .unwrap_or_default()
        {
            match PropPath::from_node(p) {
                Some(PropPath::Field(f)) if f == "MimeContent" => s.mime = true,
                Some(PropPath::Field(f)) => {
                    s.fields.insert(f);
                }
                Some(PropPath::Indexed {
                    container,
                    key,
                    part,
                }) => s.indexed.push((container, key, part)),
                Some(PropPath::Extended(set, name)) => s.ext.push((set, name)),
                None => {}
            }
        }
        s
    }

    fn wants(&self, name: &str) -> bool {
        self.all || self.fields.contains(name)
    }
}

fn item_order(kind: &str) -> &'static [&'static str] {
    match kind {
        "Message"
        | "MeetingRequest"
        | "MeetingResponse"
        | "MeetingCancellation"
        | "MeetingMessage" => order::MESSAGE,
        "CalendarItem" => order::CALENDAR_ITEM,
        "Contact" => order::CONTACT,
        "Task" => order::TASK,
        "PostItem" => order::POST_ITEM,
        "DistributionList" => order::DISTRIBUTION_LIST,
        _ => order::ITEM,
    }
}

fn write_id(out: &mut String, tag: &str, (id, ck): &(String, String)) {
    out.push_str(&format!(
        "<t:{tag} Id=\"{}\" ChangeKey=\"{}\"/>",
        esc(id),
        esc(ck)
    ));
}

/// Writes an item in schema order, with the properties `sh` asks for.
fn write_item(m: &Mailbox, it: &Item, sh: &Shape, out: &mut String) {
    write_item_as(m, it, sh, out, None);
}

fn write_item_as(
    m: &Mailbox,
    it: &Item,
    sh: &Shape,
    out: &mut String,
    occurrence: Option<&calendar::Occurrence>,
) {
    let kind = if it.kind.starts_with("Meeting") {
        "Message"
    } else {
        it.kind.as_ref()
    };
    out.push_str("<t:");
    out.push_str(kind);
    out.push('>');
    for name in item_order(kind) {
        match *name {
            "MimeContent" => {
                if sh.mime {
                    if let Some(p) = it.props.get("MimeContent") {
                        p.node.write_t(out);
                    }
                }
            }
            "ItemId" => match occurrence {
                Some(o) => write_id(out, "ItemId", &(o.id.clone(), store::encode_ck(it.version))),
                None => write_id(out, "ItemId", &m.item_id(it)),
            },
            "ParentFolderId" => {
                if sh.wants("ParentFolderId") {
                    write_id(out, "ParentFolderId", &m.folder_id(it.folder));
                }
            }
            "ExtendedProperty" => {
                for (k, p) in &it.ext {
                    if sh.ext.iter().any(|e| e == k) {
                        p.node.write_t(out);
                    }
                }
            }
            n => {
                let value = match (occurrence, n) {
                    (Some(o), "Start") => Some(Node::leaf("Start", &fmt_time(o.start))),
                    (Some(o), "End") => Some(Node::leaf("End", &fmt_time(o.end))),
                    (Some(o), "OriginalStart") => {
                        Some(Node::leaf("OriginalStart", &fmt_time(o.original_start)))
                    }
                    (Some(o), "CalendarItemType") => Some(Node::leaf(
                        "CalendarItemType",
                        if o.overrides.is_some() {
                            "Exception"
                        } else {
                            "Occurrence"
                        },
                    )),
                    (Some(o), n) if o.overrides.as_ref().is_some_and(|p| p.contains_key(n)) => {
                        o.overrides.as_ref().and_then(|p| p.get(n)).cloned()
                    }
                    (Some(_), "Recurrence" | "ModifiedOccurrences" | "DeletedOccurrences") => None,
                    _ => it.props.get(n).map(|p| p.node.clone()),
                };
                let Some(node) = value else { continue };
                if sh.wants(n)
                    || (occurrence.is_some() && matches!(n, "Start" | "End" | "CalendarItemType"))
                {
                    node.write_t(out);
                } else {
                    let entries: Vec<&(String, String, Option<String>)> =
                        sh.indexed.iter().filter(|(c, _, _)| c == n).collect();
                    if !entries.is_empty() {
                        let mut filtered = node.clone();
                        filtered.children.retain(|e| {
                            entries
                                .iter()
                                .any(|(_, k, _)| e.attr("Key") == Some(k.as_str()))
                        });
                        if !filtered.children.is_empty() {
                            filtered.write_t(out);
                        }
                    }
                }
            }
        }
    }
    out.push_str("</t:");
    out.push_str(kind);
    out.push('>');
}

fn folder_elements(f: &store::Folder) -> &'static [&'static str] {
    match f.element.as_str() {
        "CalendarFolder" => order::CALENDAR_FOLDER,
        "ContactsFolder" => order::CONTACTS_FOLDER,
        "TasksFolder" => order::TASKS_FOLDER,
        _ => order::FOLDER,
    }
}

fn write_folder(m: &Mailbox, key: u64, sh: &Shape, out: &mut String) {
    let Some(f) = m.folders.get(&key) else { return };
    let total = m.items.values().filter(|i| i.folder == key).count();
    let unread = m
        .items
        .values()
        .filter(|i| i.folder == key && i.kind == "Message" && i.text("IsRead") == Some("false"))
        .count();
    let children = m.folders.values().filter(|c| c.parent == Some(key)).count();
    out.push_str(&format!("<t:{}>", f.element));
    for name in folder_elements(f) {
        let want = |field: &str| sh.wants(field);
        match *name {
            "FolderId" => write_id(out, "FolderId", &m.folder_id(key)),
            "ParentFolderId" if want("ParentFolderId") => {
                if let Some(p) = f.parent {
                    write_id(out, "ParentFolderId", &m.folder_id(p));
                }
            }
            "FolderClass" if want("FolderClass") && !f.class.is_empty() => {
                out.push_str(&format!("<t:FolderClass>{}</t:FolderClass>", esc(&f.class)))
            }
            "DisplayName" if want("DisplayName") => {
                out.push_str(&format!("<t:DisplayName>{}</t:DisplayName>", esc(&f.name)))
            }
            "TotalCount" if want("TotalCount") => {
                out.push_str(&format!("<t:TotalCount>{total}</t:TotalCount>"))
            }
            "ChildFolderCount" if want("ChildFolderCount") => out.push_str(&format!(
                "<t:ChildFolderCount>{children}</t:ChildFolderCount>"
            )),
            "DistinguishedFolderId" if sh.fields.contains("DistinguishedFolderId") => {
                if let Some(d) = &f.distinguished {
                    out.push_str(&format!(
                        "<t:DistinguishedFolderId>{}</t:DistinguishedFolderId>",
                        esc(d)
                    ));
                }
            }
            "UnreadCount" if want("UnreadCount") => {
                out.push_str(&format!("<t:UnreadCount>{unread}</t:UnreadCount>"))
            }
            _ => {}
        }
    }
    out.push_str(&format!("</t:{}>", f.element));
}

/// Resolves a FolderId / DistinguishedFolderId to a folder of the context mailbox.
fn folder_key(ctx: &Ctx<'_>, m: &mut Mailbox, n: &Node) -> Result<u64, &'static str> {
    match n.name.as_ref() {
        "DistinguishedFolderId" => {
            if let Some(other) = n.get("Mailbox").and_then(|mb| mb.text_of("EmailAddress")) {
                if !other.eq_ignore_ascii_case(&ctx.smtp) {
                    return Err("ErrorAccessDenied");
                }
            }
            m.distinguished_folder(n.attr("Id").unwrap_or_default())
                .ok_or("ErrorFolderNotFound")
        }
        "FolderId" => {
            let (kind, mbx, key, _) =
                decode_id(n.attr("Id").unwrap_or_default()).ok_or("ErrorInvalidIdMalformed")?;
            if kind != b'F' {
                return Err("ErrorInvalidIdMalformed");
            }
            if mbx != m.index {
                return Err("ErrorAccessDenied");
            }
            m.folders
                .contains_key(&key)
                .then_some(key)
                .ok_or("ErrorFolderNotFound")
        }
        _ => Err("ErrorInvalidIdMalformed"),
    }
}

fn first_folder_key(
    ctx: &Ctx<'_>,
    m: &mut Mailbox,
    container: Option<&Node>,
) -> Result<u64, &'static str> {
    let n = container
        .and_then(|c| c.children.first())
        .ok_or("ErrorFolderNotFound")?;
    folder_key(ctx, m, n)
}

/// Resolves an ItemId to an item key of the context mailbox, with the change key's version.
fn item_key(m: &Mailbox, n: &Node) -> Result<(u64, Option<u64>), &'static str> {
    let (kind, mbx, key, folder) =
        decode_id(n.attr("Id").unwrap_or_default()).ok_or("ErrorInvalidIdMalformed")?;
    if kind != b'I' {
        return Err("ErrorInvalidIdMalformed");
    }
    if mbx != m.index {
        return Err("ErrorAccessDenied");
    }
    match m.items.get(&key) {
        // An id from before a move no longer names the item.
        Some(it) if it.folder == folder => Ok((key, n.attr("ChangeKey").and_then(decode_ck))),
        _ => Err("ErrorItemNotFound"),
    }
}

/// A success message carrying only the folder's (new) id: CreateFolder, UpdateFolder, MoveFolder.
fn folder_id_ok(op: &str, m: &Mailbox, key: u64) -> String {
    let el = &m.folders[&key].element;
    let mut s = format!("<m:Folders><t:{el}>");
    write_id(&mut s, "FolderId", &m.folder_id(key));
    s.push_str(&format!("</t:{el}></m:Folders>"));
    ok(op, &s)
}

/// A success message carrying only the item's (new) id, plus `extra` elements.
fn item_id_ok(op: &str, m: &Mailbox, key: u64, extra: &str) -> String {
    let it = &m.items[&key];
    let mut s = format!("<m:Items><t:{}>", it.kind);
    write_id(&mut s, "ItemId", &m.item_id(it));
    s.push_str(&format!("</t:{}></m:Items>{extra}", it.kind));
    ok(op, &s)
}

fn get_folder(ctx: &Ctx<'_>, body: &Node) -> Result<Vec<String>, Fault> {
    let sh = Shape::parse(body.get("FolderShape"));
    let ids = body.children_of("FolderIds");
    ctx.store.with_mailbox(&ctx.mailbox, |m| {
        Ok(ids
            .iter()
            .map(|n| match folder_key(ctx, m, n) {
                Ok(k) => {
                    let mut s = String::from("<m:Folders>");
                    write_folder(m, k, &sh, &mut s);
                    s.push_str("</m:Folders>");
                    ok("GetFolder", &s)
                }
                Err(code) => err("GetFolder", code, "<m:Folders/>"),
            })
            .collect())
    })
}

fn subtree(m: &Mailbox, root: u64, deep: bool) -> Vec<u64> {
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(k) = stack.pop() {
        let mut kids: Vec<u64> = m
            .folders
            .values()
            .filter(|f| f.parent == Some(k))
            .map(|f| f.key)
            .collect();
        kids.sort();
        for c in kids.into_iter().rev() {
            out.push(c);
            if deep {
                stack.push(c);
            }
        }
    }
    out.sort();
    out
}

fn find_folder(ctx: &Ctx<'_>, body: &Node) -> Result<Vec<String>, Fault> {
    let sh = Shape::parse(body.get("FolderShape"));
    let deep = body.attr("Traversal") == Some("Deep");
    ctx.store.with_mailbox(&ctx.mailbox, |m| {
        let parents = body.children_of("ParentFolderIds");
        Ok(parents
            .iter()
            .map(|p| match folder_key(ctx, m, p) {
                Ok(k) => {
                    let found = subtree(m, k, deep);
                    let mut s = format!("<m:RootFolder TotalItemsInView=\"{}\" IncludesLastItemInRange=\"true\"><t:Folders>", found.len());
                    for f in found {
                        write_folder(m, f, &sh, &mut s);
                    }
                    s.push_str("</t:Folders></m:RootFolder>");
                    ok("FindFolder", &s)
                }
                Err(code) => err("FindFolder", code, ""),
            })
            .collect())
    })
}

fn create_folder(ctx: &Ctx<'_>, body: &Node) -> Result<Vec<String>, Fault> {
    ctx.store.with_mailbox(&ctx.mailbox, |m| {
        let parent = first_folder_key(ctx, m, body.get("ParentFolderId"));
        let folders = body.children_of("Folders");
        Ok(folders
            .iter()
            .map(|f| {
                let parent = match parent {
                    Ok(p) => p,
                    Err(code) => return err("CreateFolder", code, "<m:Folders/>"),
                };
                let name = f.text_of("DisplayName").unwrap_or_default();
                let class = f
                    .text_of("FolderClass")
                    .map(str::to_string)
                    .unwrap_or_else(|| {
                        match f.name.as_ref() {
                            "CalendarFolder" => "IPF.Appointment",
                            "ContactsFolder" => "IPF.Contact",
                            "TasksFolder" => "IPF.Task",
                            _ => "IPF.Note",
                        }
                        .to_string()
                    });
                if name.is_empty() {
                    return err("CreateFolder", "ErrorInvalidPropertySet", "<m:Folders/>");
                }
                match m.create_folder(parent, name, &class) {
                    Ok(k) => folder_id_ok("CreateFolder", m, k),
                    Err(code) => err("CreateFolder", code, "<m:Folders/>"),
                }
            })
            .collect())
    })
}

fn update_folder(ctx: &Ctx<'_>, body: &Node) -> Result<Vec<String>, Fault> {
    ctx.store.with_mailbox(&ctx.mailbox, |m| {
        let changes = body.children_of("FolderChanges");
        Ok(changes
            .iter()
            .map(|c| {
                let key = match c.children.first().map(|n| folder_key(ctx, m, n)) {
                    Some(Ok(k)) => k,
                    Some(Err(code)) => return err("UpdateFolder", code, "<m:Folders/>"),
                    None => return err("UpdateFolder", "ErrorInvalidIdMalformed", "<m:Folders/>"),
                };
                let mut name = None;
                for u in c
                    .get("Updates")
                    .map(|u| u.children.as_slice())
                    .unwrap_or_default()
                {
                    if u.name == "SetFolderField" {
                        if let Some(n) = u
                            .children
                            .iter()
                            .find(|x| x.name.ends_with("Folder"))
                            .and_then(|f| f.text_of("DisplayName"))
                        {
                            name = Some(n.to_string());
                        }
                    }
                }
                match m.update_folder(key, name.as_deref(), None) {
                    Ok(()) => folder_id_ok("UpdateFolder", m, key),
                    Err(code) => err("UpdateFolder", code, "<m:Folders/>"),
                }
            })
            .collect())
    })
}

/// DeleteFolder. MoveToDeletedItems moves the folder (with its subtree) into Deleted Items,
/// as Exchange does; a folder already there, and the other delete types, are deleted.
fn delete_folder(ctx: &Ctx<'_>, body: &Node) -> Result<Vec<String>, Fault> {
    let to_trash = body.attr("DeleteType") == Some("MoveToDeletedItems");
    ctx.store.with_mailbox(&ctx.mailbox, |m| {
        let ids = body.children_of("FolderIds");
        let trash = m.distinguished_folder("deleteditems");
        Ok(ids
            .iter()
            .map(|n| {
                let r = folder_key(ctx, m, n).and_then(|k| {
                    let in_trash = {
                        let mut cur = m.folders.get(&k).and_then(|f| f.parent);
                        let mut found = false;
                        while let Some(c) = cur {
                            if Some(c) == trash {
                                found = true;
                                break;
                            }
                            cur = m.folders.get(&c).and_then(|f| f.parent);
                        }
                        found
                    };
                    match trash {
                        Some(t) if to_trash && !in_trash => {
                            if m.folders.get(&k).is_some_and(|f| f.distinguished.is_some()) {
                                return Err("ErrorDeleteDistinguishedFolder");
                            }
                            m.update_folder(k, None, Some(t))
                        }
                        _ => m.delete_folder(k),
                    }
                });
                match r {
                    Ok(()) => ok("DeleteFolder", ""),
                    Err(code) => err("DeleteFolder", code, ""),
                }
            })
            .collect())
    })
}

fn move_folder(ctx: &Ctx<'_>, body: &Node) -> Result<Vec<String>, Fault> {
    ctx.store.with_mailbox(&ctx.mailbox, |m| {
        let to = first_folder_key(ctx, m, body.get("ToFolderId"));
        let ids = body.children_of("FolderIds");
        Ok(ids
            .iter()
            .map(|n| {
                let r = to.and_then(|to| {
                    folder_key(ctx, m, n)
                        .and_then(|k| m.update_folder(k, None, Some(to)).map(|_| k))
                });
                match r {
                    Ok(k) => folder_id_ok("MoveFolder", m, k),
                    Err(code) => err("MoveFolder", code, "<m:Folders/>"),
                }
            })
            .collect())
    })
}

fn sync_folder_hierarchy(ctx: &Ctx<'_>, body: &Node) -> Result<Vec<String>, Fault> {
    let sh = Shape::parse(body.get("FolderShape"));
    ctx.store.with_mailbox(&ctx.mailbox, |m| {
        let root = match body.get("SyncFolderId") {
            Some(c) => match first_folder_key(ctx, m, Some(c)) {
                Ok(k) => k,
                Err(code) => return Ok(vec![err("SyncFolderHierarchy", code, "")]),
            },
            None => store::ROOT,
        };
        let since = match body.text_of("SyncState").filter(|s| !s.is_empty()) {
            None => 0,
            Some(s) => match ctx.store.check_hierarchy_state(s, m.index, root, m.hierarchy_epoch) {
                Some(seq) => seq,
                None => return Ok(vec![err("SyncFolderHierarchy", "ErrorInvalidSyncStateData", "")]),
            },
        };
        let in_tree: HashSet<u64> = subtree(m, root, true).into_iter().collect();
        let mut created = HashSet::new();
        let mut changed: Vec<(u64, Option<String>, bool)> = Vec::new();
        for j in m.hierarchy.iter().filter(|j| j.seq > since) {
            if j.created {
                created.insert(j.folder);
            }
            changed.retain(|(f, _, _)| *f != j.folder);
            changed.push((j.folder, j.deleted.clone(), created.contains(&j.folder)));
        }
        let mut s = format!("<m:SyncState>{}</m:SyncState><m:IncludesLastFolderInRange>true</m:IncludesLastFolderInRange><m:Changes>", ctx.store.hierarchy_state(m.index, root, m.hierarchy_epoch, m.seq));
        for (f, deleted, is_new) in changed {
            match deleted {
                Some(id) if !is_new => s.push_str(&format!("<t:Delete><t:FolderId Id=\"{}\"/></t:Delete>", esc(&id))),
                Some(_) => {}
                None if in_tree.contains(&f) => {
                    let tag = if is_new { "Create" } else { "Update" };
                    s.push_str(&format!("<t:{tag}>"));
                    write_folder(m, f, &sh, &mut s);
                    s.push_str(&format!("</t:{tag}>"));
                }
                None => {}
            }
        }
        s.push_str("</m:Changes>");
        Ok(vec![ok("SyncFolderHierarchy", &s)])
    })
}

fn sync_folder_items(ctx: &Ctx<'_>, body: &Node) -> Result<Vec<String>, Fault> {
    let sh = Shape::parse(body.get("ItemShape"));
    let max: usize = body
        .text_of("MaxChangesReturned")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if !(1..=512).contains(&max) {
        return Err(Fault::new(
            "ErrorSchemaValidation",
            "The request failed schema validation: MaxChangesReturned must be between 1 and 512.",
        ));
    }
    ctx.store.with_mailbox(&ctx.mailbox, |m| {
        let folder = match first_folder_key(ctx, m, body.get("SyncFolderId")) {
            Ok(k) => k,
            Err(code) => return Ok(vec![err("SyncFolderItems", code, "")]),
        };
        let epoch = m.folders[&folder].epoch;
        let since = match body.text_of("SyncState").filter(|s| !s.is_empty()) {
            None => 0,
            Some(s) => match ctx.store.check_item_state(s, m.index, folder, epoch) {
                Some(seq) => seq,
                None => return Ok(vec![err("SyncFolderItems", "ErrorInvalidSyncStateData", "")]),
            },
        };
        let ignore: HashSet<u64> = body
            .get("Ignore")
            .map(|i| i.children.iter().filter_map(|n| decode_id(n.attr("Id").unwrap_or_default()).map(|d| d.2)).collect())
            .unwrap_or_default();
        let all = net_changes(&m.folders[&folder], since);
        let includes_last = all.len() <= max;
        let page: Vec<_> = all.into_iter().take(max).collect();
        let next = if includes_last { m.seq } else { page.last().map_or(since, |(seq, _, _)| *seq) };
        let mut s = format!(
            "<m:SyncState>{}</m:SyncState><m:IncludesLastItemInRange>{includes_last}</m:IncludesLastItemInRange><m:Changes>",
            ctx.store.item_state(m.index, folder, epoch, next)
        );
        // Newest first, as Exchange 2010 SP2 and later answer.
        for (_, key, kind) in page.into_iter().rev() {
            if ignore.contains(&key) {
                continue;
            }
            match kind {
                JournalKind::Deleted(id) => s.push_str(&format!("<t:Delete><t:ItemId Id=\"{}\"/></t:Delete>", esc(&id))),
                JournalKind::ReadFlag => {
                    if let Some(it) = m.items.get(&key) {
                        s.push_str("<t:ReadFlagChange>");
                        write_id(&mut s, "ItemId", &m.item_id(it));
                        s.push_str(&format!("<t:IsRead>{}</t:IsRead></t:ReadFlagChange>", it.text("IsRead").unwrap_or("false")));
                    }
                }
                JournalKind::Created | JournalKind::Modified => {
                    if let Some(it) = m.items.get(&key) {
                        let tag = if kind == JournalKind::Created { "Create" } else { "Update" };
                        s.push_str(&format!("<t:{tag}>"));
                        write_item(m, it, &sh, &mut s);
                        s.push_str(&format!("</t:{tag}>"));
                    }
                }
            }
        }
        s.push_str("</m:Changes>");
        Ok(vec![ok("SyncFolderItems", &s)])
    })
}

/// The value of a property path on an item, as text, for restrictions and sorting.
fn value_of(it: &Item, p: &PropPath) -> Option<String> {
    match p {
        PropPath::Field(f) => match f.as_str() {
            "ItemClass" | "Subject" | "Start" | "End" | "UID" => it.text(f).map(str::to_string),
            _ => it.props.get(f).map(|n| n.node.text.clone()),
        },
        PropPath::Extended(s, n) => it
            .ext
            .get(&(s.clone(), n.clone()))
            .and_then(|p| p.node.text_of("Value").map(str::to_string)),
        PropPath::Indexed {
            container,
            key,
            part,
        } => {
            let c = it.props.get(container)?;
            let e = c
                .node
                .children
                .iter()
                .find(|e| e.attr("Key") == Some(key.as_str()))?;
            Some(match part {
                Some(p) => e.text_of(p)?.to_string(),
                None => e.text.trim().to_string(),
            })
        }
    }
}

fn compare(a: &str, b: &str) -> std::cmp::Ordering {
    let ta = DateTime::parse_from_rfc3339(a.trim());
    let tb = DateTime::parse_from_rfc3339(b.trim());
    if let (Ok(x), Ok(y)) = (ta, tb) {
        return x.cmp(&y);
    }
    if let (Ok(x), Ok(y)) = (a.trim().parse::<f64>(), b.trim().parse::<f64>()) {
        return x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal);
    }
    a.to_lowercase().cmp(&b.to_lowercase())
}

/// Evaluates a restriction element against an item.
fn matches(it: &Item, r: &Node) -> bool {
    let path = || r.children.iter().find_map(PropPath::from_node);
    let constant = || {
        r.get("FieldURIOrConstant")
            .and_then(|c| c.get("Constant"))
            .and_then(|c| c.attr("Value"))
            .map(str::to_string)
    };
    let cmp = |f: fn(std::cmp::Ordering) -> bool| match (
        path().and_then(|p| value_of(it, &p)),
        constant(),
    ) {
        (Some(v), Some(c)) => f(compare(&v, &c)),
        _ => false,
    };
    use std::cmp::Ordering::*;
    match r.name.as_ref() {
        "And" => r.children.iter().all(|c| matches(it, c)),
        "Or" => r.children.iter().any(|c| matches(it, c)),
        "Not" => r.children.first().is_some_and(|c| !matches(it, c)),
        "Exists" => path().and_then(|p| value_of(it, &p)).is_some(),
        "IsEqualTo" => cmp(|o| o == Equal),
        "IsNotEqualTo" => cmp(|o| o != Equal),
        "IsGreaterThan" => cmp(|o| o == Greater),
        "IsGreaterThanOrEqualTo" => cmp(|o| o != Less),
        "IsLessThan" => cmp(|o| o == Less),
        "IsLessThanOrEqualTo" => cmp(|o| o != Greater),
        "Contains" => {
            let needle = r
                .get("Constant")
                .and_then(|c| c.attr("Value"))
                .unwrap_or_default()
                .to_lowercase();
            path()
                .and_then(|p| value_of(it, &p))
                .is_some_and(|v| v.to_lowercase().contains(&needle))
        }
        _ => false,
    }
}

fn find_item(ctx: &Ctx<'_>, body: &Node) -> Result<Vec<String>, Fault> {
    let sh = Shape::parse(body.get("ItemShape"));
    let restriction = body
        .get("Restriction")
        .and_then(|r| r.children.first())
        .cloned();
    let sort = body
        .get("SortOrder")
        .and_then(|s| s.get("FieldOrder"))
        .map(|f| {
            (
                f.children.iter().find_map(PropPath::from_node),
                f.attr("Order") != Some("Descending"),
            )
        });
    ctx.store.with_mailbox(&ctx.mailbox, |m| {
        let parents = body.children_of("ParentFolderIds");
        Ok(parents
            .iter()
            .map(|p| {
                let folder = match folder_key(ctx, m, p) {
                    Ok(k) => k,
                    Err(code) => return err("FindItem", code, ""),
                };
                let mut items: Vec<&Item> = m.items.values().filter(|i| i.folder == folder).collect();
                if let Some(r) = &restriction {
                    items.retain(|i| matches(i, r));
                }
                items.sort_by_key(|i| i.key);
                if let Some((Some(path), asc)) = &sort {
                    items.sort_by(|a, b| {
                        let o = compare(&value_of(a, path).unwrap_or_default(), &value_of(b, path).unwrap_or_default());
                        if *asc { o } else { o.reverse() }
                    });
                }
                if let Some(cv) = body.get("CalendarView") {
                    let start = cv.attr("StartDate").and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|d| d.with_timezone(&Utc));
                    let end = cv.attr("EndDate").and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|d| d.with_timezone(&Utc));
                    let (Some(start), Some(end)) = (start, end) else {
                        return err("FindItem", "ErrorCalendarInvalidDayForTimeChangePattern", "");
                    };
                    if end < start {
                        return err("FindItem", "ErrorCalendarEndDateIsEarlierThanStartDate", "");
                    }
                    let max = cv.attr("MaxEntriesReturned").and_then(|v| v.parse::<usize>().ok()).unwrap_or(ctx.find_limit).min(ctx.find_limit);
                    let mut found: Vec<(DateTime<Utc>, &Item, Option<calendar::Occurrence>)> = Vec::new();
                    for it in items.iter().filter(|i| i.kind == "CalendarItem") {
                        for o in calendar::occurrences(m, it, start, end) {
                            found.push((o.start, it, o.occurrence));
                        }
                    }
                    found.sort_by_key(|(s, it, _)| (*s, it.key));
                    let total = found.len();
                    let mut s = format!("<m:RootFolder TotalItemsInView=\"{total}\" IncludesLastItemInRange=\"{}\"><t:Items>", total <= max);
                    for (_, it, occ) in found.iter().take(max) {
                        write_item_as(m, it, &sh, &mut s, occ.as_ref());
                    }
                    s.push_str("</t:Items></m:RootFolder>");
                    return ok("FindItem", &s);
                }
                let (offset, max, from_end) = body
                    .get("IndexedPageItemView")
                    .map(|v| {
                        (
                            v.attr("Offset").and_then(|x| x.parse().ok()).unwrap_or(0usize),
                            v.attr("MaxEntriesReturned").and_then(|x| x.parse().ok()).unwrap_or(ctx.find_limit),
                            v.attr("BasePoint") == Some("End"),
                        )
                    })
                    .unwrap_or((0, ctx.find_limit, false));
                let max = max.min(ctx.find_limit);
                let total = items.len();
                if from_end {
                    items.reverse();
                }
                let page: Vec<&&Item> = items.iter().skip(offset).take(max).collect();
                let next = offset + page.len();
                let mut s = format!(
                    "<m:RootFolder IndexedPagingOffset=\"{next}\" TotalItemsInView=\"{total}\" IncludesLastItemInRange=\"{}\"><t:Items>",
                    next >= total
                );
                for it in page {
                    write_item(m, it, &sh, &mut s);
                }
                s.push_str("</t:Items></m:RootFolder>");
                ok("FindItem", &s)
            })
            .collect())
    })
}

fn get_item(ctx: &Ctx<'_>, body: &Node) -> Result<Vec<String>, Fault> {
    let sh = Shape::parse(body.get("ItemShape"));
    let ids = body.children_of("ItemIds");
    ctx.store.with_mailbox(&ctx.mailbox, |m| {
        Ok(ids
            .iter()
            .map(|n| {
                let found = calendar::resolve_ref(m, n, |m, n| item_key(m, n).map(|(k, _)| k));
                match found {
                    Ok((k, occ)) => {
                        let mut s = String::from("<m:Items>");
                        write_item_as(m, &m.items[&k], &sh, &mut s, occ.as_ref());
                        s.push_str("</m:Items>");
                        ok("GetItem", &s)
                    }
                    Err(code) => err("GetItem", code, "<m:Items/>"),
                }
            })
            .collect())
    })
}

fn default_folder(m: &mut Mailbox, kind: &str, disposition: Option<&str>) -> Option<u64> {
    let d = match kind {
        "CalendarItem" => "calendar",
        "Contact" | "DistributionList" => "contacts",
        "Task" => "tasks",
        _ if matches!(disposition, Some("SendAndSaveCopy")) => "sentitems",
        _ => "drafts",
    };
    m.distinguished_folder(d)
}

/// Checks what Exchange would refuse in a new or changed item.
fn validate_item(kind: &str, props: &[Node]) -> Result<(), &'static str> {
    if kind == "CalendarItem" {
        let get = |n: &str| {
            props
                .iter()
                .find(|p| p.name == n)
                .and_then(|p| DateTime::parse_from_rfc3339(p.text.trim()).ok())
        };
        if let (Some(s), Some(e)) = (get("Start"), get("End")) {
            if e < s {
                return Err("ErrorCalendarEndDateIsEarlierThanStartDate");
            }
        }
    }
    if let Some(m) = props.iter().find(|p| p.name == "MimeContent") {
        use base64::Engine;
        let cleaned: String = m.text.split_whitespace().collect();
        if base64::engine::general_purpose::STANDARD
            .decode(cleaned)
            .is_err()
        {
            return Err("ErrorMimeContentInvalidBase64String");
        }
    }
    Ok(())
}

fn create_item(ctx: &Ctx<'_>, body: &Node) -> Result<Vec<String>, Fault> {
    let disposition = body.attr("MessageDisposition").map(str::to_string);
    let items = body.children_of("Items");
    let mut deliveries: Vec<(String, Vec<Node>)> = Vec::new();
    let out = ctx.store.with_mailbox(&ctx.mailbox, |m| {
        let target = body
            .get("SavedItemFolderId")
            .map(|c| first_folder_key(ctx, m, Some(c)));
        let mut out = Vec::new();
        let mut stopped = false;
        for it in items {
            if stopped {
                out.push(warn_stopped("CreateItem", "<m:Items/>"));
                continue;
            }
            let sending = it.name == "Message"
                && matches!(disposition.as_deref(), Some("SendOnly" | "SendAndSaveCopy"));
            let folder = match &target {
                Some(Ok(k)) if !sending || disposition.as_deref() == Some("SendAndSaveCopy") => {
                    Ok(*k)
                }
                Some(Err(code)) => Err(*code),
                _ => {
                    default_folder(m, &it.name, disposition.as_deref()).ok_or("ErrorFolderNotFound")
                }
            };
            let result = folder.and_then(|f| {
                validate_item(&it.name, &it.children)?;
                if sending {
                    let mut props = it.children.clone();
                    props.retain(|p| p.name != "IsRead" && p.name != "IsDraft");
                    props.push(Node::leaf("IsRead", "true"));
                    props.push(Node::leaf("IsDraft", "false"));
                    deliveries.push((recipients(it).join(","), it.children.clone()));
                    if disposition.as_deref() == Some("SendAndSaveCopy") {
                        m.create_item(f, &it.name, props, ctx.now)?;
                    }
                    return Ok(None);
                }
                let mut props = it.children.clone();
                if it.name == "Message" {
                    draft_state(&mut props);
                }
                m.create_item(f, &it.name, props, ctx.now).map(Some)
            });
            match result {
                Ok(Some(k)) => out.push(item_id_ok("CreateItem", m, k, "")),
                Ok(None) => out.push(ok("CreateItem", "<m:Items/>")),
                Err(code) => {
                    out.push(err("CreateItem", code, "<m:Items/>"));
                    stopped = true;
                }
            }
        }
        out
    });
    // Mail sent to other simulated mailboxes arrives in their inboxes.
    for (to, props) in deliveries {
        for addr in to.split(',').filter(|a| !a.is_empty()) {
            if let Some(mb) = ctx.store.mailbox(addr) {
                ctx.store.with_mailbox(&mb, |r| {
                    if let Some(inbox) = r.distinguished_folder("inbox") {
                        let mut p = props.clone();
                        p.retain(|x| {
                            x.name != "IsRead"
                                && x.name != "IsDraft"
                                && x.name != "ExtendedProperty"
                        });
                        p.push(Node::leaf("IsDraft", "false"));
                        let _ = r.create_item(inbox, "Message", p, ctx.now);
                    }
                });
            }
        }
    }
    Ok(out)
}

/// A message saved with CreateItem is an unsent draft unless PR_MESSAGE_FLAGS (0x0E07) is
/// given at creation without MSGFLAG_UNSENT (0x8), as in Exchange; the flags' MSGFLAG_READ
/// (0x1) gives IsRead when the request sets none.
fn draft_state(props: &mut Vec<Node>) {
    let flags = props
        .iter()
        .filter(|p| p.name == "ExtendedProperty")
        .find(|p| {
            p.get("ExtendedFieldURI")
                .and_then(|u| u.attr("PropertyTag"))
                .is_some_and(|t| {
                    let t = t.trim();
                    let tag = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok(),
                        None => t.parse().ok(),
                    };
                    tag == Some(0x0E07)
                })
        })
        .and_then(|p| p.text_of("Value"))
        .and_then(|v| v.trim().parse::<u32>().ok());
    let draft = flags.is_none_or(|f| f & 0x8 != 0);
    props.retain(|p| p.name != "IsDraft");
    props.push(Node::leaf("IsDraft", if draft { "true" } else { "false" }));
    if let Some(f) = flags {
        if !props.iter().any(|p| p.name == "IsRead") {
            props.push(Node::leaf(
                "IsRead",
                if f & 0x1 != 0 { "true" } else { "false" },
            ));
        }
    }
}

fn recipients(it: &Node) -> Vec<String> {
    let mut out = Vec::new();
    for list in ["ToRecipients", "CcRecipients", "BccRecipients"] {
        if let Some(l) = it.get(list) {
            out.extend(
                l.all("Mailbox")
                    .filter_map(|m| m.text_of("EmailAddress"))
                    .map(|s| s.to_ascii_lowercase()),
            );
        }
    }
    if let Some(mime) = it.get("MimeContent") {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(mime.text.split_whitespace().collect::<String>())
            .unwrap_or_default();
        out.extend(crate::mime::recipients(&bytes));
    }
    out
}

/// A poisoned item's response code, as the `&'static str` the handlers answer with.
fn poisoned_code(code: &str) -> &'static str {
    const KNOWN: [&str; 5] = [
        "ErrorCorruptData",
        "ErrorInvalidPropertySet",
        "ErrorItemCorrupt",
        "ErrorAccessDenied",
        "ErrorInternalServerError",
    ];
    KNOWN
        .into_iter()
        .find(|k| *k == code)
        .unwrap_or("ErrorCorruptData")
}

fn update_item(ctx: &Ctx<'_>, body: &Node) -> Result<Vec<String>, Fault> {
    let resolution = body
        .attr("ConflictResolution")
        .unwrap_or("AutoResolve")
        .to_string();
    let changes = body.children_of("ItemChanges");
    ctx.store.with_mailbox(&ctx.mailbox, |m| {
        let mut out = Vec::new();
        let mut stopped = false;
        for c in changes {
            if stopped {
                out.push(warn_stopped("UpdateItem", "<m:Items/>"));
                continue;
            }
            let result = (|| {
                let id = c.children.first().ok_or("ErrorInvalidIdMalformed")?;
                let (key, occurrence) =
                    calendar::resolve_ref(m, id, |m, n| item_key(m, n).map(|(k, _)| k))?;
                if let Some(code) = m.poisoned.get(&key) {
                    return Err(poisoned_code(code));
                }
                let seen_version = if occurrence.is_some() {
                    None
                } else {
                    item_key(m, id)?.1
                };
                let mut set = Vec::new();
                let mut delete = Vec::new();
                for u in c
                    .get("Updates")
                    .map(|u| u.children.as_slice())
                    .unwrap_or_default()
                {
                    let path = u
                        .children
                        .iter()
                        .find_map(PropPath::from_node)
                        .ok_or("ErrorInvalidPropertyRequest")?;
                    match u.name.as_ref() {
                        "SetItemField" | "AppendToItemField" => {
                            let wrapper = u
                                .children
                                .iter()
                                .find(|n| PropPath::from_node(n).is_none())
                                .ok_or("ErrorInvalidPropertySet")?;
                            let value = wrapper
                                .children
                                .first()
                                .ok_or("ErrorInvalidPropertySet")?
                                .clone();
                            set.push((path, value));
                        }
                        "DeleteItemField" => delete.push(path),
                        _ => return Err("ErrorInvalidPropertyRequest"),
                    }
                }
                let it = &m.items[&key];
                validate_item(
                    &it.kind,
                    &set.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
                )?;
                if let Some(seen) = seen_version {
                    if seen < it.version {
                        let touched = |p: &PropPath| -> u64 {
                            match p {
                                PropPath::Field(f) => it.props.get(f).map_or(0, |x| x.version),
                                PropPath::Indexed { container, .. } => {
                                    it.props.get(container).map_or(0, |x| x.version)
                                }
                                PropPath::Extended(s, n) => {
                                    it.ext.get(&(s.clone(), n.clone())).map_or(0, |x| x.version)
                                }
                            }
                        };
                        let conflict = match resolution.as_str() {
                            "NeverOverwrite" => true,
                            "AlwaysOverwrite" => false,
                            // AutoResolve: only a property changed since the client's version conflicts.
                            _ => set
                                .iter()
                                .map(|(p, _)| p)
                                .chain(delete.iter())
                                .any(|p| touched(p) > seen),
                        };
                        if conflict {
                            return Err("ErrorIrresolvableConflict");
                        }
                    }
                }
                match occurrence {
                    // An occurrence changed on its own becomes an exception of its series.
                    Some(o) => m.change_occurrence(
                        key,
                        o.index,
                        Some(set.into_iter().map(|(_, v)| v).collect()),
                        ctx.now,
                    )?,
                    None => {
                        m.update_item(
                            key,
                            set.into_iter().map(|(_, v)| v).collect(),
                            delete,
                            ctx.now,
                        )?;
                    }
                }
                Ok(key)
            })();
            match result {
                Ok(k) => {
                    out.push(item_id_ok(
                        "UpdateItem",
                        m,
                        k,
                        "<m:ConflictResults><t:Count>0</t:Count></m:ConflictResults>",
                    ));
                }
                Err(code) => {
                    out.push(err("UpdateItem", code, "<m:Items/>"));
                    stopped = code != "ErrorIrresolvableConflict" && code != "ErrorItemNotFound";
                }
            }
        }
        Ok(out)
    })
}

fn delete_item(ctx: &Ctx<'_>, body: &Node) -> Result<Vec<String>, Fault> {
    let delete_type = body.attr("DeleteType").unwrap_or("HardDelete").to_string();
    let ids = body.children_of("ItemIds");
    ctx.store.with_mailbox(&ctx.mailbox, |m| {
        let trash = m.distinguished_folder("deleteditems");
        Ok(ids
            .iter()
            .map(|n| {
                let r = calendar::resolve_ref(m, n, |m, n| item_key(m, n).map(|(k, _)| k))
                    .and_then(
                        |(k, occurrence)| match (occurrence, delete_type.as_str(), trash) {
                            // Deleting an occurrence takes it out of its series.
                            (Some(o), _, _) => m.change_occurrence(k, o.index, None, ctx.now),
                            (None, "MoveToDeletedItems", Some(t)) if m.items[&k].folder != t => {
                                m.move_item(k, t)
                            }
                            (None, "SoftDelete", _) if ctx.soft_delete_moves => {
                                m.soft_delete_item(k)
                            }
                            _ => m.delete_item(k),
                        },
                    );
                match r {
                    Ok(()) => ok("DeleteItem", ""),
                    Err(code) => err("DeleteItem", code, ""),
                }
            })
            .collect())
    })
}

fn move_or_copy_item(ctx: &Ctx<'_>, body: &Node, copy: bool) -> Result<Vec<String>, Fault> {
    let op = if copy { "CopyItem" } else { "MoveItem" };
    let ids = body.children_of("ItemIds");
    ctx.store.with_mailbox(&ctx.mailbox, |m| {
        let to = first_folder_key(ctx, m, body.get("ToFolderId"));
        Ok(ids
            .iter()
            .map(|n| {
                let r = to.and_then(|to| {
                    let (k, _) = item_key(m, n)?;
                    if copy {
                        let it = m.items[&k].clone();
                        let mut props: Vec<Node> =
                            it.props.values().map(|p| p.node.clone()).collect();
                        props.extend(it.ext.values().map(|p| p.node.clone()));
                        m.create_item(to, &it.kind, props, ctx.now)
                    } else {
                        m.move_item(k, to).map(|_| k)
                    }
                });
                match r {
                    Ok(k) => item_id_ok(op, m, k, ""),
                    Err(code) => err(op, code, "<m:Items/>"),
                }
            })
            .collect())
    })
}

fn subscribe(ctx: &Ctx<'_>, body: &Node) -> Result<Vec<String>, Fault> {
    let Some(req) = body.get("StreamingSubscriptionRequest") else {
        return Ok(vec![err(
            "Subscribe",
            "ErrorInvalidSubscriptionRequest",
            "",
        )]);
    };
    let all = req
        .attr("SubscribeToAllFolders")
        .is_some_and(|v| v == "true" || v == "1");
    let types: HashSet<String> = req
        .get("EventTypes")
        .map(|e| {
            e.children
                .iter()
                .map(|t| t.text.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    let folders = ctx.store.with_mailbox(
        &ctx.mailbox,
        |m| -> Result<Option<HashSet<u64>>, &'static str> {
            if all {
                return Ok(None);
            }
            let mut set = HashSet::new();
            for f in req
                .get("FolderIds")
                .map(|f| f.children.as_slice())
                .unwrap_or_default()
            {
                // A subscription covers one mailbox: folders of another are an invalid request.
                set.insert(folder_key(ctx, m, f).map_err(|e| {
                    if e == "ErrorAccessDenied" {
                        "ErrorInvalidSubscriptionRequest"
                    } else {
                        e
                    }
                })?);
            }
            if set.is_empty() {
                return Err("ErrorInvalidSubscriptionRequest");
            }
            Ok(Some(set))
        },
    );
    let folders = match folders {
        Ok(f) => f,
        Err(code) => return Ok(vec![err("Subscribe", code, "")]),
    };
    if ctx.store.subscriptions.count_for(&ctx.smtp) >= ctx.max_subscriptions {
        return Ok(vec![err("Subscribe", "ErrorExceededSubscriptionCount", "")]);
    }
    let id = ctx.store.subscriptions.subscribe(&ctx.smtp, folders, types);
    Ok(vec![ok(
        "Subscribe",
        &format!("<m:SubscriptionId>{}</m:SubscriptionId>", esc(&id)),
    )])
}

fn unsubscribe(ctx: &Ctx<'_>, body: &Node) -> Result<Vec<String>, Fault> {
    let id = body.text_of("SubscriptionId").unwrap_or_default();
    if ctx
        .store
        .subscriptions
        .mailbox_of(id)
        .is_some_and(|m| m != ctx.smtp)
    {
        return Ok(vec![err(
            "Unsubscribe",
            "ErrorSubscriptionAccessDenied",
            "",
        )]);
    }
    Ok(vec![if ctx.store.subscriptions.unsubscribe(id) {
        ok("Unsubscribe", "")
    } else {
        err("Unsubscribe", "ErrorSubscriptionNotFound", "")
    }])
}
