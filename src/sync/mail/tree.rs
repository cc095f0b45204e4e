//! Mail: the folder tree from Exchange (by role for distinguished folders, never by name): the hierarchy read, its verification, folder changes and what goes with a folder.

use std::collections::HashSet;

use ews::ops::{FolderChange, GetFolder, SyncFolderHierarchy};
use ews::types::{DistinguishedFolder, FolderRef, ItemId, Shape};
use mailsync_actors::SyncError;
use serde_json::json;

use super::*;
use crate::config::Leading;
use crate::db::state::{FolderState, ItemMapping};
use crate::sync::core::{db_error, sync_error};
use crate::sync::events::{Action, Direction};

impl MailStep<'_> {
    // ---- the folder tree ----

    pub(super) async fn mapping_of_folder(
        &self,
        ews_id: &str,
    ) -> Result<Option<ItemMapping>, SyncError> {
        self.engine
            .state
            .mapping_by_ews(self.smtp(), ews_id)
            .await
            .map_err(db_error)
            .map(|m| m.filter(|m| m.crm_table == FOLDERS))
    }

    /// The CRM folder of an Exchange parent (`None`: the top of the tree).
    pub(super) async fn crm_parent(
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

    pub(super) fn put_folder_mapping(
        &self,
        crm_id: i64,
        ews_id: &str,
        version: i64,
        base: serde_json::Value,
    ) -> ItemMapping {
        self.folder_mapping(crm_id, ews_id, version, base, false)
    }

    /// A folder's mapping; `unverified`: we created the folder after the stored hierarchy
    /// state (its next complete read must report it, or it is looked up).
    pub(super) fn folder_mapping(
        &self,
        crm_id: i64,
        ews_id: &str,
        version: i64,
        base: serde_json::Value,
        unverified: bool,
    ) -> ItemMapping {
        ItemMapping {
            mailbox: self.smtp().to_owned(),
            crm_table: FOLDERS.into(),
            crm_id,
            ews_item_id: ews_id.to_owned(),
            change_key: None,
            crm_version: Some(version),
            fields: base,
            stamped: true,
            unverified,
        }
    }

    /// Exchange → CRM: folder changes. True when Exchange has more.
    pub(super) async fn pull_hierarchy(
        &mut self,
        roles: &Roles,
        full: bool,
    ) -> Result<bool, SyncError> {
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
        let reported: HashSet<String> = reply
            .changes
            .iter()
            .filter_map(|c| match c {
                FolderChange::Create(f) | FolderChange::Update(f) => {
                    f.id.as_ref().map(|i| i.id.clone())
                }
                FolderChange::Delete(id) => Some(id.id.clone()),
            })
            .collect();
        // Folders we created after the stored state that this (complete) read did not report:
        // created and deleted since, netted into nothing by Exchange — looked up now.
        let vanished = if reply.includes_last {
            self.unreported_folders(&reported).await?
        } else {
            Vec::new()
        };
        // Parents come before children in a first sync; a folder whose parent is not known yet
        // (created in the same batch, listed later) waits for the next pass.
        let mut todo: Vec<FolderChange> = reply.changes;
        todo.extend(vanished.into_iter().map(FolderChange::Delete));
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
        let reported: Vec<String> = reported.into_iter().collect();
        self.engine
            .state
            .store_state_verifying(
                self.smtp(),
                HIERARCHY,
                &FolderState {
                    ews_folder_id: Some(roles.root.clone()),
                    sync_state: Some(reply.sync_state),
                },
                &reported,
            )
            .await
            .map_err(db_error)?;
        Ok(!reply.includes_last)
    }

    /// Folder mappings no stored hierarchy state covers (folders we created) that a complete
    /// read did not report: found ones are verified, the ids of gone ones returned.
    async fn unreported_folders(
        &mut self,
        reported: &HashSet<String>,
    ) -> Result<Vec<ItemId>, SyncError> {
        let open: Vec<ItemMapping> = self
            .engine
            .state
            .unverified_of(self.smtp(), FOLDERS)
            .await
            .map_err(db_error)?
            .into_iter()
            .filter(|m| !reported.contains(&m.ews_item_id))
            .collect();
        if open.is_empty() {
            return Ok(Vec::new());
        }
        let op = GetFolder {
            folders: open
                .iter()
                .map(|m| FolderRef::Id(id_of(&m.ews_item_id)))
                .collect(),
            shape: Shape::id_only(),
        };
        let answers = self.engine.call(self.setup, self.ctx, &op).await?;
        let mut found = Vec::new();
        let mut gone = Vec::new();
        for (m, a) in open.iter().zip(answers) {
            match a {
                Ok(_) => found.push(m.ews_item_id.clone()),
                Err(ews::Error::NotFound(_)) => gone.push(id_of(&m.ews_item_id)),
                Err(e) if e.is_retryable() => return Err(sync_error(e)),
                Err(e) => {
                    tracing::debug!(mailbox = self.smtp(), folder = m.ews_item_id, error = %e, "a folder we created could not be checked")
                }
            }
        }
        self.engine
            .state
            .verify_mappings(self.smtp(), &found)
            .await
            .map_err(db_error)?;
        Ok(gone)
    }

    /// Applies one folder change; false when its parent is not known yet.
    pub(super) async fn folder_change(
        &mut self,
        roles: &Roles,
        change: &FolderChange,
    ) -> Result<bool, SyncError> {
        let state = &self.engine.state;
        let crm = &self.engine.crm;
        match change {
            FolderChange::Delete(id) => {
                if let Some(m) = self.mapping_of_folder(&id.id).await? {
                    // Its messages would all go from the CRM with it: the breaker holds that
                    // (the side would be left empty) until an administrator decides.
                    let mails = self.mails_in_tree(m.crm_id).await?;
                    if self
                        .hold_folder_delete(
                            &m,
                            mails,
                            crate::db::integrity::Side::Crm,
                            "the folder was deleted in Exchange with its messages",
                        )
                        .await?
                    {
                        return Ok(true);
                    }
                    self.forget_folder_tree(m.crm_id).await?;
                    crm.delete_mail_folder(m.crm_id).await.map_err(db_error)?;
                    self.counted(Direction::ToCrm, Action::DeleteFolder);
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
                        self.counted(Direction::ToCrm, Action::UpdateFolder);
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
                        self.counted(Direction::ToCrm, Action::CreateFolder);
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

    /// The folder and its subfolders (CRM ids, the folder first).
    pub(super) async fn subtree(&self, folder: i64) -> Result<Vec<i64>, SyncError> {
        let all = self
            .engine
            .crm
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
        Ok(tree)
    }

    /// Mapped messages in a folder and its subfolders.
    pub(super) async fn mails_in_tree(&self, folder: i64) -> Result<u64, SyncError> {
        let tree: HashSet<i64> = self.subtree(folder).await?.into_iter().collect();
        Ok(self
            .engine
            .state
            .mappings_of(self.smtp(), MAILS)
            .await
            .map_err(db_error)?
            .iter()
            .filter(|m| base_i64(m, "folder").is_some_and(|f| tree.contains(&f)))
            .count() as u64)
    }

    /// Drops the mappings of a folder's subtree and mails (the folder is gone in Exchange
    /// with everything in it; the CRM delete cascades).
    pub(super) async fn forget_folder_tree(&self, folder: i64) -> Result<(), SyncError> {
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
    pub(super) async fn forget_folder_mails(&self, folder: i64) -> Result<(), SyncError> {
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
}
