//! The convergence checker: compares one mailbox area item by item on both sides and lists
//! every difference. Contacts, calendar and tasks: every CRM row in the mailbox's scope
//! against every Exchange item of the area's folder (and, for contacts, the tenant's shared
//! subfolder), paired by the stamped CRM id, compared in the canonical field model. Mail:
//! every CRM mail of the operator (crm_mails, per CRM folder path) against every message of
//! the synced Exchange mail folders, paired by stamp, then Exchange id, then
//! Internet-Message-ID, compared by folder path, read flag and MIME hash.
//!
//! Every difference has a [`Difference::kind`]: `lost` (on one side only), `duplicated`,
//! `resurrected` (an Exchange item stamped with a CRM row that no longer exists) or
//! `mismatched` (paired, but different).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::NaiveDate;
use ews::items::Item;
use ews::ops::{FindFolder, FindItem, GetFolder, GetItem, Traversal, View};
use ews::types::{BaseShape, DistinguishedFolder, FolderRef, ItemId, PropertyPath, Shape};
use sha2::{Digest, Sha256};

use super::fields::{self, Fields};
use crate::config::Area;
use crate::db::rows::CrmRow;
use crate::db::Db;

/// One way the two sides differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// A CRM row with no item in Exchange.
    MissingInExchange(i64),
    /// An Exchange item with no CRM row (its stamp, if any).
    MissingInCrm(String, Option<i64>),
    /// Two Exchange items carry the same CRM id.
    Duplicate(i64),
    /// Paired, but these fields differ: (field, CRM value, Exchange value). For mail the
    /// fields are `folder` (the path), `is_read` and `mime` (its SHA-256).
    Fields(i64, Vec<(String, Option<String>, Option<String>)>),
    /// An Exchange item stamped with a CRM id that has no row in the mailbox's scope: the row
    /// was deleted (or belongs elsewhere) and the item lives on or came back (Exchange id,
    /// stamp).
    Resurrected(String, i64),
    /// A CRM mail that repeats another one's message (same Internet-Message-ID and folder)
    /// with no Exchange message of its own: (the extra row, the row that was paired).
    DuplicateRow(i64, i64),
}

impl Difference {
    /// `lost`, `duplicated`, `resurrected` or `mismatched`: what the chaos soak counts.
    pub fn kind(&self) -> &'static str {
        match self {
            Difference::MissingInExchange(_) | Difference::MissingInCrm(_, None) => "lost",
            Difference::Duplicate(_) | Difference::DuplicateRow(..) => "duplicated",
            Difference::Resurrected(..) | Difference::MissingInCrm(_, Some(_)) => "resurrected",
            Difference::Fields(..) => "mismatched",
        }
    }
}

/// The Exchange folder of a contacts, calendar or tasks area (mail has a tree of its own).
fn folder_of(area: Area) -> DistinguishedFolder {
    match area {
        Area::Contacts => DistinguishedFolder::Contacts,
        Area::Calendar => DistinguishedFolder::Calendar,
        Area::Tasks => DistinguishedFolder::Tasks,
        Area::Mail => DistinguishedFolder::Inbox,
    }
}

/// The ids of every item of a folder (FindItem, paged).
async fn item_ids(
    client: &ews::Client,
    target: &ews::Target,
    folder: FolderRef,
) -> Result<Vec<ItemId>, String> {
    let mut ids: Vec<ItemId> = Vec::new();
    let mut offset = 0;
    loop {
        let op = FindItem {
            folder: folder.clone(),
            shape: Shape::id_only(),
            view: View::IndexedPage { offset, max: 1000 },
            restriction: None,
        };
        let page = client
            .call(target, &op)
            .await
            .map_err(|e| e.to_string())?
            .output;
        offset += page.items.len() as u32;
        ids.extend(page.items.iter().filter_map(|i| i.id().cloned()));
        if page.includes_last || page.items.is_empty() {
            break;
        }
    }
    Ok(ids)
}

async fn items(
    client: &ews::Client,
    target: &ews::Target,
    folder: FolderRef,
) -> Result<Vec<ews::items::Item>, String> {
    let ids = item_ids(client, target, folder).await?;
    let mut out = Vec::new();
    for chunk in ids.chunks(100) {
        let get = GetItem {
            ids: chunk.to_vec(),
            shape: Shape::all_properties(vec![fields::crm_id_path()]),
        };
        for item in client
            .call(target, &get)
            .await
            .map_err(|e| e.to_string())?
            .output
        {
            out.push(item.map_err(|e| e.to_string())?);
        }
    }
    Ok(out)
}

/// Compares `area` of a mailbox: CRM rows owned by `operator` (and, for contacts, shared by
/// `tenant` in the subfolder named `shared_folder`) against Exchange.
pub async fn compare(
    crm: &Db,
    client: &ews::Client,
    target: &ews::Target,
    area: Area,
    operator: i64,
    tenant: i64,
    shared_folder: &str,
) -> Result<Vec<Difference>, String> {
    if area == Area::Mail {
        return compare_mail(crm, client, target, operator).await;
    }
    let table = fields::table(area);
    let mut ids = crm
        .ids_in_scope(table, Some(operator), tenant)
        .await
        .map_err(|e| e.to_string())?;
    let mut folders = vec![FolderRef::well_known(folder_of(area))];
    if area == Area::Contacts {
        ids.extend(
            crm.ids_in_scope(table, None, tenant)
                .await
                .map_err(|e| e.to_string())?,
        );
        let find = FindFolder {
            parent: FolderRef::well_known(DistinguishedFolder::Contacts),
            traversal: Traversal::Shallow,
            shape: Shape::all_properties(vec![]),
        };
        let children = client
            .call(target, &find)
            .await
            .map_err(|e| e.to_string())?
            .output;
        if let Some(id) = children
            .into_iter()
            .find(|f| f.display_name.as_deref() == Some(shared_folder))
            .and_then(|f| f.id)
        {
            folders.push(FolderRef::Id(id));
        }
    }
    let rows: BTreeMap<i64, Fields> = crm
        .crm_rows(table, &ids)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter_map(|(id, row): (i64, Result<CrmRow, String>)| {
            Some((id, fields::from_row(&row.ok()?).ok()?))
        })
        .collect();
    // An item belongs to the row its stamp names, when that row is in this mailbox's scope;
    // an imported item whose stamp is still to be written (or that carries a foreign stamp,
    // copied from another operator's item) belongs to the row that carries its Exchange id.
    let mut listed = Vec::new();
    for folder in folders {
        listed.extend(items(client, target, folder).await?);
    }
    let listed_ids: Vec<String> = listed
        .iter()
        .filter_map(|i| i.id().map(|i| i.id.clone()))
        .collect();
    let by_ews_id = crm
        .ids_by_ews_ids(table, &listed_ids)
        .await
        .map_err(|e| e.to_string())?;
    let mut by_stamp: HashMap<i64, Fields> = HashMap::new();
    let mut diffs = Vec::new();
    for item in listed {
        let ews_id = item.id().map(|i| i.id.clone()).unwrap_or_default();
        let stamp = fields::stamped_id(&item, table)
            .filter(|id| rows.contains_key(id))
            .or_else(|| {
                by_ews_id
                    .get(&ews_id)
                    .copied()
                    .filter(|id| rows.contains_key(id))
            })
            .or(fields::stamped_id(&item, table));
        let Ok(f) = fields::from_item(&item) else {
            continue;
        };
        match stamp {
            Some(id) if by_stamp.insert(id, f).is_some() => diffs.push(Difference::Duplicate(id)),
            Some(_) => {}
            None => diffs.push(Difference::MissingInCrm(ews_id, None)),
        }
    }
    for (id, crm_fields) in &rows {
        match by_stamp.remove(id) {
            None => diffs.push(Difference::MissingInExchange(*id)),
            Some(ews_fields) => {
                let differing: Vec<_> = crm_fields
                    .iter()
                    .filter(|(k, v)| ews_fields.get(*k) != Some(v))
                    .map(|(k, v)| (k.clone(), v.clone(), ews_fields.get(k).cloned().flatten()))
                    .collect();
                if !differing.is_empty() {
                    diffs.push(Difference::Fields(*id, differing));
                }
            }
        }
    }
    for id in by_stamp.into_keys() {
        diffs.push(Difference::Resurrected(String::new(), id));
    }
    Ok(diffs)
}

const MAILS: &str = "crm_mails";

/// The distinguished mail folders, by the role the CRM gives them (crm_mail_folders.role).
const MAIL_ROLES: [(DistinguishedFolder, &str); 6] = [
    (DistinguishedFolder::Inbox, "inbox"),
    (DistinguishedFolder::SentItems, "sentitems"),
    (DistinguishedFolder::Drafts, "drafts"),
    (DistinguishedFolder::DeletedItems, "deleteditems"),
    (DistinguishedFolder::JunkEmail, "junkemail"),
    (DistinguishedFolder::Outbox, "outbox"),
];

/// One mail on either side, as the checker compares it.
#[derive(Debug, Clone)]
struct MailSide {
    /// The folder path: a distinguished folder by its role, others by name, lower case.
    path: String,
    is_read: bool,
    /// SHA-256 of the MIME bytes, hex.
    mime: Option<String>,
    message_id: Option<String>,
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Folder paths from (id, parent, segment) triples: `segment/segment/…`, lower case.
fn paths<K: std::hash::Hash + Eq + Clone>(
    folders: &[(K, Option<K>, String)],
) -> HashMap<K, String> {
    let by_id: HashMap<&K, (&Option<K>, &String)> =
        folders.iter().map(|(id, p, s)| (id, (p, s))).collect();
    let mut out = HashMap::new();
    for (id, _, _) in folders {
        let mut segments = Vec::new();
        let mut at = Some(id);
        // Bounded by the number of folders, so a cycle cannot hang the checker.
        for _ in 0..=folders.len() {
            let Some(cur) = at else { break };
            let Some((parent, segment)) = by_id.get(cur) else {
                break;
            };
            segments.push(segment.to_lowercase());
            at = parent.as_ref();
        }
        segments.reverse();
        out.insert(id.clone(), segments.join("/"));
    }
    out
}

/// Compares the mail of the operator's mailbox. Folders the CRM marks `sync_excluded` are left
/// out on both sides, and so are mails older than their folder's `sync_from`. MIME is
/// compared byte for byte (by hash): what the simulator keeps; real Exchange may rewrite
/// MIME, so against it read `mime` mismatches with that in mind.
pub async fn compare_mail(
    crm: &Db,
    client: &ews::Client,
    target: &ews::Target,
    operator: i64,
) -> Result<Vec<Difference>, String> {
    // The CRM side.
    let crm_folders = crm
        .mail_folders(operator)
        .await
        .map_err(|e| e.to_string())?;
    let segment = |role: &Option<String>, name: &str| role.clone().unwrap_or_else(|| name.into());
    let crm_paths = paths(
        &crm_folders
            .iter()
            .map(|f| (f.id, f.parent_id, segment(&f.role, &f.name)))
            .collect::<Vec<_>>(),
    );
    // Paths not synced, and the start date of each synced path.
    let mut excluded: HashSet<String> = HashSet::new();
    let mut since: HashMap<String, NaiveDate> = HashMap::new();
    for f in &crm_folders {
        let path = crm_paths[&f.id].clone();
        if f.sync_excluded {
            excluded.insert(path.clone());
        }
        if let Some(d) = f.sync_from {
            since.insert(path, d);
        }
    }
    let too_old = |path: &str, at: Option<chrono::DateTime<chrono::Utc>>| matches!((since.get(path), at), (Some(from), Some(at)) if at.date_naive() < *from);
    let mut crm_mails: BTreeMap<i64, (MailSide, Option<String>)> = BTreeMap::new();
    for f in crm_folders.iter().filter(|f| !f.sync_excluded) {
        let path = &crm_paths[&f.id];
        let ids = crm
            .mail_ids_in_folder(f.id)
            .await
            .map_err(|e| e.to_string())?;
        for row in crm.mails(&ids).await.map_err(|e| e.to_string())? {
            if too_old(path, row.sent_at) {
                continue;
            }
            let mime = crm
                .mail_mime(row.id)
                .await
                .map_err(|e| e.to_string())?
                .map(|m| sha256(&m));
            crm_mails.insert(
                row.id,
                (
                    MailSide {
                        path: path.clone(),
                        is_read: row.is_read,
                        mime,
                        message_id: row.internet_message_id.clone(),
                    },
                    row.ews_id.clone(),
                ),
            );
        }
    }

    // The Exchange side: every mail folder under msgfolderroot, distinguished ones by role.
    let mut roles: HashMap<String, &'static str> = HashMap::new();
    let get = GetFolder {
        folders: MAIL_ROLES
            .iter()
            .map(|(f, _)| FolderRef::well_known(*f))
            .collect(),
        shape: Shape::id_only(),
    };
    for (folder, (_, role)) in client
        .call(target, &get)
        .await
        .map_err(|e| e.to_string())?
        .output
        .into_iter()
        .zip(MAIL_ROLES)
    {
        if let Some(id) = folder.ok().and_then(|f| f.id) {
            roles.insert(id.id, role);
        }
    }
    let find = FindFolder {
        parent: FolderRef::well_known(DistinguishedFolder::MsgFolderRoot),
        traversal: Traversal::Deep,
        shape: Shape::all_properties(vec![]),
    };
    let tree: Vec<ews::items::Folder> = client
        .call(target, &find)
        .await
        .map_err(|e| e.to_string())?
        .output
        .into_iter()
        .filter(|f| {
            f.folder_class
                .as_deref()
                .is_none_or(|c| c == "IPF.Note" || c.starts_with("IPF.Note."))
        })
        .collect();
    let known: HashSet<String> = tree
        .iter()
        .filter_map(|f| f.id.as_ref().map(|i| i.id.clone()))
        .collect();
    let ex_paths = paths(
        &tree
            .iter()
            .filter_map(|f| {
                let id = f.id.as_ref()?.id.clone();
                let parent = f
                    .parent
                    .as_ref()
                    .map(|p| p.id.clone())
                    .filter(|p| known.contains(p));
                let name = match roles.get(&id) {
                    Some(role) => (*role).to_owned(),
                    None => f.display_name.clone().unwrap_or_default(),
                };
                Some((id, parent, name))
            })
            .collect::<Vec<_>>(),
    );
    let mut ex_mails: Vec<(String, Option<i64>, MailSide)> = Vec::new();
    for f in &tree {
        let Some(id) = &f.id else { continue };
        let path = &ex_paths[&id.id];
        if excluded.contains(path) {
            continue;
        }
        for item in messages(client, target, FolderRef::Id(id.clone())).await? {
            let Item::Message(m) = &item else { continue };
            if too_old(path, m.sent.or(m.received)) {
                continue;
            }
            ex_mails.push((
                m.id.as_ref().map(|i| i.id.clone()).unwrap_or_default(),
                fields::stamped_id(&item, MAILS),
                MailSide {
                    path: path.clone(),
                    is_read: m.is_read.unwrap_or(false),
                    mime: m.mime.as_deref().map(sha256),
                    message_id: m.internet_message_id.clone(),
                },
            ));
        }
    }
    Ok(pair_mails(crm_mails, ex_mails))
}

/// Pairs the two sides (stamp, then Exchange id, then Internet-Message-ID) and lists the
/// differences. Pure, so its rules are tested without servers.
fn pair_mails(
    crm: BTreeMap<i64, (MailSide, Option<String>)>,
    exchange: Vec<(String, Option<i64>, MailSide)>,
) -> Vec<Difference> {
    let mut diffs = Vec::new();
    let mut unpaired: BTreeMap<i64, &(MailSide, Option<String>)> =
        crm.iter().map(|(id, m)| (*id, m)).collect();
    let by_ews: HashMap<&str, i64> = crm
        .iter()
        .filter_map(|(id, (_, ews))| Some((ews.as_deref()?, *id)))
        .collect();
    let mut paired: HashMap<i64, &MailSide> = HashMap::new();
    let mut leftovers = Vec::new();
    // Claims on a CRM mail by stamp or Exchange id, in Exchange order.
    let mut claims: BTreeMap<i64, Vec<&MailSide>> = BTreeMap::new();
    for (ews_id, stamp, side) in &exchange {
        let by_stamp = stamp.filter(|s| crm.contains_key(s));
        if let Some(s) = stamp.filter(|s| !crm.contains_key(s)) {
            diffs.push(Difference::Resurrected(ews_id.clone(), s));
            continue;
        }
        match by_stamp.or_else(|| by_ews.get(ews_id.as_str()).copied()) {
            Some(id) => claims.entry(id).or_default().push(side),
            None => leftovers.push((ews_id, side)),
        }
    }
    // Several messages claim one mail: the one in the mail's folder is its pair (else the
    // first), the others are duplicates.
    for (id, sides) in claims {
        let (crm_side, _) = &crm[&id];
        let best = sides
            .iter()
            .position(|s| s.path == crm_side.path)
            .unwrap_or(0);
        for _ in 1..sides.len() {
            diffs.push(Difference::Duplicate(id));
        }
        paired.insert(id, sides[best]);
        unpaired.remove(&id);
    }
    // Internet-Message-ID last: the oldest unpaired CRM mail with the same id.
    for (ews_id, side) in leftovers {
        let found = side.message_id.as_ref().and_then(|mid| {
            unpaired
                .iter()
                .find(|(_, (m, _))| m.message_id.as_ref() == Some(mid))
                .map(|(id, _)| *id)
        });
        match found {
            Some(id) => {
                unpaired.remove(&id);
                paired.insert(id, side);
            }
            None => diffs.push(Difference::MissingInCrm(ews_id.clone(), None)),
        }
    }
    for (id, (side, _)) in unpaired {
        let twin = paired.iter().find_map(|(other, s)| {
            let (other_side, _) = &crm[other];
            (side.message_id.is_some()
                && other_side.message_id == side.message_id
                && other_side.path == side.path
                && s.path == side.path)
                .then_some(*other)
        });
        diffs.push(match twin {
            Some(other) => Difference::DuplicateRow(id, other),
            None => Difference::MissingInExchange(id),
        });
    }
    let mut compared: Vec<(i64, &MailSide)> = paired.into_iter().collect();
    compared.sort_by_key(|(id, _)| *id);
    for (id, ex) in compared {
        let (side, _) = &crm[&id];
        let mut differing = Vec::new();
        if side.path != ex.path {
            differing.push((
                "folder".to_owned(),
                Some(side.path.clone()),
                Some(ex.path.clone()),
            ));
        }
        if side.is_read != ex.is_read {
            differing.push((
                "is_read".to_owned(),
                Some(side.is_read.to_string()),
                Some(ex.is_read.to_string()),
            ));
        }
        if side.mime != ex.mime {
            differing.push(("mime".to_owned(), side.mime.clone(), ex.mime.clone()));
        }
        if !differing.is_empty() {
            diffs.push(Difference::Fields(id, differing));
        }
    }
    diffs
}

/// Every message of a folder with what the checker compares (MIME included), 50 at a time.
async fn messages(
    client: &ews::Client,
    target: &ews::Target,
    folder: FolderRef,
) -> Result<Vec<Item>, String> {
    let ids = item_ids(client, target, folder).await?;
    let shape = Shape {
        base: BaseShape::IdOnly,
        additional: vec![
            PropertyPath::Field("item:MimeContent".into()),
            PropertyPath::Field("message:IsRead".into()),
            PropertyPath::Field("message:InternetMessageId".into()),
            PropertyPath::Field("item:DateTimeSent".into()),
            PropertyPath::Field("item:DateTimeReceived".into()),
            fields::crm_id_path(),
        ],
    };
    let mut out = Vec::new();
    for chunk in ids.chunks(50) {
        let get = GetItem {
            ids: chunk.to_vec(),
            shape: shape.clone(),
        };
        for item in client
            .call(target, &get)
            .await
            .map_err(|e| e.to_string())?
            .output
        {
            out.push(item.map_err(|e| e.to_string())?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(path: &str, is_read: bool, mime: &str, mid: &str) -> MailSide {
        MailSide {
            path: path.into(),
            is_read,
            mime: Some(mime.into()),
            message_id: Some(mid.into()),
        }
    }

    #[test]
    fn mails_pair_by_stamp_then_id_then_message_id_and_every_kind_is_found() {
        let crm: BTreeMap<i64, (MailSide, Option<String>)> = [
            // Paired by stamp, equal.
            (1, (side("inbox", true, "h1", "<1>"), Some("E1".into()))),
            // Paired by Exchange id; read flag and folder differ.
            (2, (side("inbox", false, "h2", "<2>"), Some("E2".into()))),
            // Paired by Message-ID; MIME differs.
            (3, (side("inbox/projekte", false, "h3", "<3>"), None)),
            // A second row of message 3 in the same folder: a duplicate row.
            (4, (side("inbox/projekte", false, "h3", "<3>"), None)),
            // No message in Exchange: lost.
            (5, (side("sentitems", true, "h5", "<5>"), None)),
            // Stamped twice in Exchange: duplicated.
            (6, (side("inbox", true, "h6", "<6>"), Some("E6".into()))),
        ]
        .into_iter()
        .collect();
        let exchange = vec![
            ("E1x".to_string(), Some(1), side("inbox", true, "h1", "<1>")),
            ("E2".to_string(), None, side("archiv", true, "h2", "<2>")),
            (
                "E3".to_string(),
                None,
                side("inbox/projekte", false, "hX", "<3>"),
            ),
            ("E6".to_string(), Some(6), side("inbox", true, "h6", "<6>")),
            ("E6c".to_string(), Some(6), side("inbox", true, "h6", "<6>")),
            // Stamped with a row that is gone.
            ("E9".to_string(), Some(9), side("inbox", true, "h9", "<9>")),
            // Neither stamped nor known: lost towards the CRM.
            ("E7".to_string(), None, side("inbox", false, "h7", "<7>")),
        ];
        let diffs = pair_mails(crm, exchange);
        let expected = vec![
            Difference::Resurrected("E9".into(), 9),
            Difference::Duplicate(6),
            Difference::MissingInCrm("E7".into(), None),
            Difference::DuplicateRow(4, 3),
            Difference::MissingInExchange(5),
            Difference::Fields(
                2,
                vec![
                    ("folder".into(), Some("inbox".into()), Some("archiv".into())),
                    ("is_read".into(), Some("false".into()), Some("true".into())),
                ],
            ),
            Difference::Fields(
                3,
                vec![("mime".into(), Some("h3".into()), Some("hX".into()))],
            ),
        ];
        assert_eq!(diffs, expected);
        let kinds: Vec<&str> = diffs.iter().map(Difference::kind).collect();
        assert_eq!(
            kinds,
            [
                "resurrected",
                "duplicated",
                "lost",
                "duplicated",
                "lost",
                "mismatched",
                "mismatched"
            ]
        );
    }

    #[test]
    fn folder_paths_use_roles_and_names_and_survive_a_cycle() {
        let folders = vec![
            (1, None, "inbox".to_string()),
            (2, Some(1), "Projekte".to_string()),
            (3, Some(2), "Alt".to_string()),
            (4, Some(5), "a".to_string()),
            (5, Some(4), "b".to_string()),
        ];
        let p = paths(&folders);
        assert_eq!(p[&3], "inbox/projekte/alt");
        assert_eq!(p[&1], "inbox");
        assert!(p[&4].len() < 64, "a cycle ends");
    }
}
