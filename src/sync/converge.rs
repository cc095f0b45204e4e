//! The convergence checker: compares one mailbox area item by item on both sides — every CRM
//! row in the mailbox's scope against every Exchange item of the area's folders, paired by the
//! stamped CRM id, compared in the canonical field model — and lists every difference.

use std::collections::{BTreeMap, HashMap};

use ews::ops::{FindFolder, FindItem, GetItem, Traversal, View};
use ews::types::{DistinguishedFolder, FolderRef, ItemId, Shape};

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
    /// Paired, but these fields differ: (field, CRM value, Exchange value).
    Fields(i64, Vec<(String, Option<String>, Option<String>)>),
}

fn folder_of(area: Area) -> DistinguishedFolder {
    match area {
        Area::Contacts => DistinguishedFolder::Contacts,
        Area::Calendar => DistinguishedFolder::Calendar,
        _ => DistinguishedFolder::Tasks,
    }
}

async fn items(
    client: &ews::Client,
    target: &ews::Target,
    folder: FolderRef,
) -> Result<Vec<ews::items::Item>, String> {
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
    let mut by_stamp: HashMap<i64, Fields> = HashMap::new();
    let mut diffs = Vec::new();
    for folder in folders {
        for item in items(client, target, folder).await? {
            let stamp = fields::stamped_id(&item, table);
            let Ok(f) = fields::from_item(&item) else {
                continue;
            };
            match stamp {
                Some(id) if by_stamp.insert(id, f).is_some() => {
                    diffs.push(Difference::Duplicate(id))
                }
                Some(_) => {}
                None => diffs.push(Difference::MissingInCrm(
                    item.id().map(|i| i.id.clone()).unwrap_or_default(),
                    None,
                )),
            }
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
        diffs.push(Difference::MissingInCrm(String::new(), Some(id)));
    }
    Ok(diffs)
}
