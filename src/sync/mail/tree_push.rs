//! Mail: folders CRM → Exchange (created, renamed, moved, deleted from the CRM side) and which folders sync (exclusions, start dates, folders included later).

use std::collections::{HashMap, HashSet};

use chrono::NaiveDate;
use ews::ops::{CreateFolder, DeleteFolder, GetFolder, MoveFolder, UpdateFolder};
use ews::types::{FolderRef, Shape};
use mailsync_actors::SyncError;
use serde_json::json;

use super::*;
use crate::db::mail::MailFolderRow;
use crate::db::state::{FolderState, ItemMapping};
use crate::sync::core::{db_error, sync_error};
use crate::sync::events::{Action, Direction};

impl MailStep<'_> {
    /// CRM → Exchange: queued folder rows. True when the queue has more.
    pub(super) async fn push_folders(&mut self, roles: &Roles) -> Result<bool, SyncError> {
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
                    if !cascaded && !roles.by_id.contains_key(&m.ews_item_id) {
                        // Its messages would go from Exchange with it: held for a decision.
                        let mails = self
                            .engine
                            .state
                            .mappings_of(self.smtp(), MAILS)
                            .await
                            .map_err(db_error)?
                            .iter()
                            .filter(|x| base_i64(x, "folder") == Some(crm_id))
                            .count() as u64;
                        if self
                            .hold_folder_delete(
                                &m,
                                mails,
                                crate::db::integrity::Side::Exchange,
                                "the folder was deleted in the CRM with its mails",
                            )
                            .await?
                        {
                            done.push((crm_id, token));
                            continue;
                        }
                    }
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
                                self.counted(Direction::ToExchange, Action::DeleteFolder)
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
    pub(super) async fn folder_created_in_crm(
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
            .put_mapping(&self.folder_mapping(row.id, &ews_id, v, base, true))
            .await
            .map_err(db_error)?;
        // Its mails were skipped while it had no Exchange folder.
        self.queue_folder_mails(row.id).await
    }

    pub(super) async fn folder_exists(&self, id: &str) -> Result<bool, SyncError> {
        let op = GetFolder {
            folders: vec![FolderRef::Id(id_of(id))],
            shape: Shape::id_only(),
        };
        let found = self.engine.call(self.setup, self.ctx, &op).await?;
        Ok(matches!(found.first(), Some(Ok(_))))
    }

    pub(super) async fn create_folder(
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
                self.counted(Direction::ToExchange, Action::CreateFolder);
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

    pub(super) async fn folder_changed_in_crm(
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
            self.counted(Direction::ToExchange, Action::RenameFolder);
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
                self.counted(Direction::ToExchange, Action::MoveFolder);
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

    pub(super) async fn queue_folder_mails(&self, folder: i64) -> Result<(), SyncError> {
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
    pub(super) async fn folders(&mut self) -> Result<Vec<SyncedFolder>, SyncError> {
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
        // Folders whose deletion in Exchange is held are left alone until it is decided
        // (with their subfolders: they went with them).
        let mut held: HashSet<i64> = HashSet::new();
        for h in state
            .held(self.smtp(), Some(FOLDERS))
            .await
            .map_err(db_error)?
            .into_iter()
            .filter(|h| h.side == crate::db::integrity::Side::Crm)
        {
            held.extend(self.subtree(h.crm_id).await?);
        }
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
            if held.contains(&row.id) {
                continue;
            }
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
                path,
            });
        }
        // Which Exchange folders notifications should name: updated in place (the index holds
        // every mailbox's folders; no copy of it per step).
        let mut index = self.mail.folders.lock();
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
}
