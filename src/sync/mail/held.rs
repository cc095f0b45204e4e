//! Mail: administrators' decisions on held deletes. Approved deletes are applied; rejected
//! ones are restored on the side that deleted, from the other side — a message gone from
//! Exchange is written there again from the CRM's MIME, a row gone from the CRM is imported
//! again from Exchange, a folder deleted in Exchange is created again with its messages, a
//! folder deleted in the CRM comes back with the next read of the tree.

use std::collections::HashMap;

use ews::ops::{DeleteFolder, DeleteItem};
use mailsync_actors::SyncError;

use super::*;
use crate::db::integrity::{Decision as Verdict, Held, Side};
use crate::db::state::FolderState;
use crate::sync::core::{db_error, sync_error, ItemOutcome};
use crate::sync::events::{Action, Direction};

impl MailStep<'_> {
    /// The breaker on a deleted folder: its `mails` messages would all go from the other side
    /// with it (that side of the folder left empty), so the delete is held for an
    /// administrator's decision — emitted, recorded, counted. False when it may go on.
    pub(super) async fn hold_folder_delete(
        &mut self,
        m: &crate::db::state::ItemMapping,
        mails: u64,
        side: Side,
        reason: &'static str,
    ) -> Result<bool, SyncError> {
        if crate::sync::breaker::check(mails, mails, self.setup.breaker, false).is_none() {
            return Ok(false);
        }
        let name = m
            .fields
            .get("name")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        crate::sync::events::DeletesHeld {
            mailbox: self.smtp(),
            area: "mail",
            scope: &name,
            side: match side {
                Side::Crm => "crm",
                Side::Exchange => "exchange",
            },
            count: mails as usize,
            of: mails,
            reason,
        }
        .emit();
        self.engine
            .state
            .hold(&[Held {
                mailbox: self.smtp().to_owned(),
                crm_table: FOLDERS.to_owned(),
                scope: name.clone(),
                side,
                crm_id: m.crm_id,
                ews_item_id: m.ews_item_id.clone(),
                title: format!("folder {name} with {mails} messages"),
                decision: None,
            }])
            .await
            .map_err(db_error)?;
        self.held += mails;
        Ok(true)
    }

    /// Carries out the decided held deletes of the mailbox's mail.
    pub(super) async fn settle_held(&mut self, roles: &Roles) -> Result<(), SyncError> {
        for table in [FOLDERS, MAILS] {
            let decided: Vec<Held> = self
                .engine
                .state
                .held(self.smtp(), Some(table))
                .await
                .map_err(db_error)?
                .into_iter()
                .filter(|h| h.decision.is_some())
                .collect();
            if decided.is_empty() {
                continue;
            }
            let ids: Vec<i64> = decided.iter().map(|h| h.crm_id).collect();
            let maps = self
                .engine
                .state
                .mappings_by_crm(self.smtp(), table, &ids)
                .await
                .map_err(db_error)?;
            let mut restore = Vec::new();
            for h in &decided {
                let verdict = h.decision.unwrap_or(Verdict::Reject);
                match (table, h.side, verdict) {
                    (MAILS, Side::Crm, Verdict::Approve) => {
                        self.engine
                            .crm
                            .delete_crm_row(MAILS, h.crm_id)
                            .await
                            .map_err(db_error)?;
                        self.forget(MAILS, h.crm_id).await?;
                        self.counted(Direction::ToCrm, Action::Delete);
                    }
                    (MAILS, Side::Crm, Verdict::Reject) => {
                        // Written to Exchange again from the CRM row (stamped, so linked).
                        self.forget(MAILS, h.crm_id).await?;
                        self.engine
                            .state
                            .add_pending(&[(self.smtp().to_owned(), MAILS.to_owned(), h.crm_id)])
                            .await
                            .map_err(db_error)?;
                        self.counted(Direction::ToExchange, Action::Restore);
                    }
                    (MAILS, Side::Exchange, Verdict::Approve) => {
                        let op = DeleteItem {
                            ids: vec![id_of(&h.ews_item_id)],
                            delete_type: delete_type(self.setup.mail.delete_mode),
                        };
                        for r in self.engine.call(self.setup, self.ctx, &op).await? {
                            if let ItemOutcome::Rejected(e) = ItemOutcome::from_read(r)? {
                                self.fail(
                                    MAILS,
                                    h.crm_id,
                                    &format!("Exchange refused the delete: {e}"),
                                )
                                .await;
                            }
                        }
                        self.forget(MAILS, h.crm_id).await?;
                        self.counted(Direction::ToExchange, Action::Delete);
                    }
                    (MAILS, Side::Exchange, Verdict::Reject) => {
                        // Imported again from Exchange.
                        if let Some(m) = maps.get(&h.crm_id) {
                            restore.push(Seen {
                                id: id_of(&m.ews_item_id),
                                folder: base_i64(m, "folder").unwrap_or(0),
                                is_read: base_bool(m, "is_read").unwrap_or(false),
                                size: 0,
                                message_id: None,
                                stamped: None,
                            });
                        }
                        self.forget(MAILS, h.crm_id).await?;
                        self.counted(Direction::ToCrm, Action::Restore);
                    }
                    (_, Side::Crm, Verdict::Approve) => {
                        self.forget_folder_tree(h.crm_id).await?;
                        self.engine
                            .crm
                            .delete_mail_folder(h.crm_id)
                            .await
                            .map_err(db_error)?;
                        self.counted(Direction::ToCrm, Action::DeleteFolder);
                    }
                    (_, Side::Crm, Verdict::Reject) => {
                        self.release(table, &[h.crm_id]).await?;
                        self.recreate_folder_tree(roles, h.crm_id).await?;
                    }
                    (_, Side::Exchange, Verdict::Approve) => {
                        if !roles.by_id.contains_key(&h.ews_item_id) {
                            let op = DeleteFolder {
                                folder: id_of(&h.ews_item_id),
                                delete_type: delete_type(self.setup.mail.delete_mode),
                            };
                            match self.engine.call_ews(self.setup, self.ctx, &op).await {
                                Ok(()) | Err(ews::Error::NotFound(_)) => {
                                    self.counted(Direction::ToExchange, Action::DeleteFolder)
                                }
                                Err(e) if e.is_retryable() => return Err(sync_error(e)),
                                Err(e) => {
                                    let reason =
                                        format!("Exchange refused to delete the folder: {e}");
                                    self.fail(FOLDERS, h.crm_id, &reason).await;
                                }
                            }
                        }
                        self.forget_mapped_tree(h.crm_id).await?;
                    }
                    (_, Side::Exchange, Verdict::Reject) => {
                        // The folder and its messages come back from Exchange: their mappings
                        // go and the tree is read in full, which creates them in the CRM.
                        self.forget_mapped_tree(h.crm_id).await?;
                        self.engine
                            .state
                            .set_folder_state(self.smtp(), HIERARCHY, &FolderState::default())
                            .await
                            .map_err(db_error)?;
                        self.counted(Direction::ToCrm, Action::Restore);
                    }
                }
            }
            self.release(table, &ids).await?;
            if !restore.is_empty() {
                self.import(restore).await?;
            }
        }
        Ok(())
    }

    async fn release(&self, table: &str, ids: &[i64]) -> Result<(), SyncError> {
        self.engine
            .state
            .release_held(self.smtp(), table, ids)
            .await
            .map_err(db_error)
    }

    async fn forget(&self, table: &str, crm_id: i64) -> Result<(), SyncError> {
        self.engine
            .state
            .delete_mapping(self.smtp(), table, crm_id)
            .await
            .map_err(db_error)
            .map(|_| ())
    }

    /// Forgets a folder's mapping, its mapped subfolders' (by the mapped parents) and the
    /// mappings of their messages: for a folder whose CRM rows are gone.
    async fn forget_mapped_tree(&self, folder: i64) -> Result<(), SyncError> {
        let state = &self.engine.state;
        let folders = state
            .mappings_of(self.smtp(), FOLDERS)
            .await
            .map_err(db_error)?;
        let mut tree = vec![folder];
        let mut i = 0;
        while i < tree.len() {
            let f = tree[i];
            tree.extend(
                folders
                    .iter()
                    .filter(|m| base_i64(m, "parent") == Some(f))
                    .map(|m| m.crm_id),
            );
            i += 1;
        }
        let mails: Vec<i64> = state
            .mappings_of(self.smtp(), MAILS)
            .await
            .map_err(db_error)?
            .into_iter()
            .filter(|m| base_i64(m, "folder").is_some_and(|f| tree.contains(&f)))
            .map(|m| m.crm_id)
            .collect();
        state
            .delete_mappings(self.smtp(), MAILS, &mails)
            .await
            .map_err(db_error)?;
        state
            .delete_mappings(self.smtp(), FOLDERS, &tree)
            .await
            .map_err(db_error)
    }

    /// A folder deleted in Exchange, rejected: created again with its subfolders, their
    /// messages written again from the CRM.
    async fn recreate_folder_tree(&mut self, roles: &Roles, folder: i64) -> Result<(), SyncError> {
        let crm = &self.engine.crm;
        let all = crm
            .mail_folders(self.owner.operator_id)
            .await
            .map_err(db_error)?;
        let by_id: HashMap<i64, &MailFolderRow> = all.iter().map(|f| (f.id, f)).collect();
        let mut created: HashMap<i64, String> = HashMap::new();
        for id in self.subtree(folder).await? {
            let Some(row) = by_id.get(&id).copied() else {
                continue;
            };
            let parent_ews = match row.parent_id {
                None => roles.root.clone(),
                Some(p) => match created.get(&p) {
                    Some(e) => e.clone(),
                    None => match self
                        .engine
                        .state
                        .mapping_by_crm(self.smtp(), FOLDERS, p)
                        .await
                        .map_err(db_error)?
                    {
                        Some(m) => m.ews_item_id,
                        None => roles.root.clone(),
                    },
                },
            };
            // The messages' mappings point into the deleted folder: they go, and the rows
            // are written again.
            let mails = crm.mail_ids_in_folder(id).await.map_err(db_error)?;
            self.engine
                .state
                .delete_mappings(self.smtp(), MAILS, &mails)
                .await
                .map_err(db_error)?;
            let ews = self.create_folder(row, &parent_ews).await?;
            let v = crm
                .update_mail_folder(row.id, &row.name, row.parent_id, &ews)
                .await
                .map_err(db_error)?
                .unwrap_or(row.version);
            let base = folder_base(&row.name, row.parent_id, row.sync_excluded, row.sync_from);
            self.engine
                .state
                .put_mapping(&self.folder_mapping(row.id, &ews, v, base, true))
                .await
                .map_err(db_error)?;
            self.engine
                .state
                .set_folder_state(
                    self.smtp(),
                    &format!("mail/{id}"),
                    &FolderState {
                        ews_folder_id: Some(ews.clone()),
                        sync_state: None,
                    },
                )
                .await
                .map_err(db_error)?;
            self.queue_folder_mails(id).await?;
            self.counted(Direction::ToExchange, Action::Restore);
            created.insert(id, ews);
        }
        Ok(())
    }
}
