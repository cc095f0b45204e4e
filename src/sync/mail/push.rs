//! Mail: messages from the CRM — created with their MIME (stamped), moved, flagged and deleted in Exchange.

use std::collections::HashMap;

use ews::items::{Item, Message};
use ews::ops::{
    ConflictResolution, CreateItem, DeleteItem, GetItem, ItemUpdate, MessageDisposition, MoveItem,
    UpdateItem,
};
use ews::types::{FolderRef, ItemId, Shape};
use mailsync_actors::SyncError;

use super::*;
use crate::db::mail::MailRow;
use crate::db::state::ItemMapping;
use crate::sync::core::{db_error, own_version, sync_error};
use crate::sync::events::{Action, Direction};
use crate::sync::fields;

impl MailStep<'_> {
    // ---- messages, CRM → Exchange ----

    pub(super) async fn push_mails(&mut self, folders: &[SyncedFolder]) -> Result<bool, SyncError> {
        let state = &self.engine.state;
        let queued = state
            .pending(self.smtp(), MAILS, QUEUE_BATCH)
            .await
            .map_err(db_error)?;
        if queued.is_empty() {
            return Ok(false);
        }
        self.seen += queued.len() as u64;
        let ids: Vec<i64> = queued.iter().map(|(id, _)| *id).collect();
        let rows: HashMap<i64, MailRow> = self
            .engine
            .crm
            .mails(&ids)
            .await
            .map_err(db_error)?
            .into_iter()
            .filter(|r| r.owner_id == self.owner.operator_id)
            .map(|r| (r.id, r))
            .collect();
        let mappings = state
            .mappings_by_crm(self.smtp(), MAILS, &ids)
            .await
            .map_err(db_error)?;
        let by_folder: HashMap<i64, &SyncedFolder> =
            folders.iter().map(|f| (f.row.id, f)).collect();
        let mut deletes: Vec<(i64, String)> = Vec::new();
        let mut create: Vec<&MailRow> = Vec::new();
        for id in &ids {
            match (rows.get(id), mappings.get(id)) {
                (None, Some(m)) => deletes.push((*id, m.ews_item_id.clone())),
                (None, None) => {}
                (Some(row), Some(m)) => {
                    if Some(row.version) != m.crm_version {
                        self.mail_changed_in_crm(row, m, &by_folder).await?;
                    }
                }
                (Some(row), None) => {
                    let Some(f) = by_folder.get(&row.folder_id) else {
                        continue;
                    };
                    if f.excluded
                        || f.sync_from
                            .is_some_and(|from| row.sent_at.is_some_and(|t| t.date_naive() < from))
                    {
                        continue;
                    }
                    create.push(row);
                }
            }
        }
        if !deletes.is_empty() {
            // The breaker, per folder of the deleted rows.
            let mut by_folder: HashMap<i64, Vec<String>> = HashMap::new();
            for (id, _) in &deletes {
                let folder = mappings
                    .get(id)
                    .and_then(|m| base_i64(m, "folder"))
                    .unwrap_or(0);
                by_folder.entry(folder).or_default().push(id.to_string());
            }
            let stopped = self
                .breaker(
                    MAILS,
                    crate::db::integrity::Side::Exchange,
                    &by_folder,
                    folders,
                )
                .await?;
            if !stopped.is_empty() {
                let mut held = Vec::new();
                deletes.retain(|(id, ews)| {
                    let folder = mappings
                        .get(id)
                        .and_then(|m| base_i64(m, "folder"))
                        .unwrap_or(0);
                    match stopped.get(&folder) {
                        Some(scope) => {
                            held.push(crate::db::integrity::Held {
                                mailbox: self.smtp().to_owned(),
                                crm_table: MAILS.to_owned(),
                                scope: scope.clone(),
                                side: crate::db::integrity::Side::Exchange,
                                crm_id: *id,
                                ews_item_id: ews.clone(),
                                title: String::new(),
                                decision: None,
                            });
                            false
                        }
                        None => true,
                    }
                });
                self.held += held.len() as u64;
                self.engine.state.hold(&held).await.map_err(db_error)?;
            }
            self.delete_in_exchange(&deletes).await?;
        }
        // New rows, per folder.
        let mut per_folder: BTreeMap<i64, Vec<&MailRow>> = BTreeMap::new();
        for row in create {
            per_folder.entry(row.folder_id).or_default().push(row);
        }
        for (folder, rows) in per_folder {
            let f = by_folder[&folder];
            self.create_in_exchange(f, rows).await?;
        }
        state
            .clear_pending(self.smtp(), MAILS, &queued)
            .await
            .map_err(db_error)?;
        Ok(queued.len() as i64 >= QUEUE_BATCH)
    }

    pub(super) async fn delete_in_exchange(
        &mut self,
        deletes: &[(i64, String)],
    ) -> Result<(), SyncError> {
        for chunk in deletes.chunks(100) {
            let op = DeleteItem {
                ids: chunk.iter().map(|(_, id)| id_of(id)).collect(),
                delete_type: delete_type(self.setup.mail.delete_mode),
            };
            let results = self.engine.call(self.setup, self.ctx, &op).await?;
            for ((crm_id, _), r) in chunk.iter().zip(results) {
                match r {
                    Ok(()) | Err(ews::Error::NotFound(_)) => {}
                    Err(e @ (ews::Error::Throttled { .. } | ews::Error::Transient(_))) => {
                        return Err(sync_error(e))
                    }
                    Err(e) => {
                        tracing::warn!(mailbox = self.smtp(), crm_id, error = %e, "Exchange refused a delete")
                    }
                }
                self.engine
                    .state
                    .delete_mapping(self.smtp(), MAILS, *crm_id)
                    .await
                    .map_err(db_error)?;
                self.counted(Direction::ToExchange, Action::Delete);
            }
        }
        Ok(())
    }

    pub(super) async fn mail_changed_in_crm(
        &mut self,
        row: &MailRow,
        m: &ItemMapping,
        by_folder: &HashMap<i64, &SyncedFolder>,
    ) -> Result<(), SyncError> {
        let mut mapping = m.clone();
        let mut id = ItemId {
            id: m.ews_item_id.clone(),
            change_key: m.change_key.clone(),
        };
        if base_i64(m, "folder") != Some(row.folder_id) {
            let Some(to) = by_folder.get(&row.folder_id) else {
                return Ok(());
            };
            let op = MoveItem {
                ids: vec![id_of(&id.id)],
                to: FolderRef::Id(id_of(&to.ews_id)),
            };
            match self
                .engine
                .call(self.setup, self.ctx, &op)
                .await?
                .into_iter()
                .next()
            {
                Some(Ok(Some(new_id))) => {
                    self.engine.note_own_write(&new_id);
                    self.mail.mark_dirty(self.smtp(), &to.ews_id);
                    id = new_id;
                    self.counted(Direction::ToExchange, Action::Move);
                }
                Some(Ok(None)) => {}
                Some(Err(ews::Error::NotFound(_))) => {
                    // Gone in Exchange: its delete arrives with the folder's next sync.
                    return Ok(());
                }
                Some(Err(e)) => return Err(sync_error(e)),
                None => return Err(SyncError::Failed("MoveItem answered nothing".into())),
            }
        }
        let flag_written = base_bool(m, "is_read") != Some(row.is_read);
        if flag_written {
            let op = UpdateItem {
                changes: vec![ItemUpdate {
                    id: id.clone(),
                    updates: Item::Message(Message {
                        is_read: Some(row.is_read),
                        ..Message::default()
                    })
                    .updates(),
                }],
                conflict: ConflictResolution::AlwaysOverwrite,
                disposition: Some(MessageDisposition::SaveOnly),
                calendar: false,
            };
            match self
                .engine
                .call(self.setup, self.ctx, &op)
                .await?
                .into_iter()
                .next()
            {
                Some(Ok(new_id)) => {
                    self.engine.note_own_write(&new_id);
                    id = new_id;
                    self.counted(Direction::ToExchange, Action::Update);
                }
                Some(Err(ews::Error::NotFound(_))) => return Ok(()),
                Some(Err(e)) => return Err(sync_error(e)),
                None => return Err(SyncError::Failed("UpdateItem answered nothing".into())),
            }
        }
        mapping.ews_item_id = id.id;
        // After a move alone the item is as Exchange had it, which may be newer than our
        // base (a flag the user set meanwhile): no change key, so the folder's next read
        // compares it instead of taking it for our echo.
        mapping.change_key = if flag_written { id.change_key } else { None };
        mapping.crm_version = Some(row.version);
        mapping.fields = mail_base(row.folder_id, row.is_read);
        self.engine
            .state
            .put_mapping(&mapping)
            .await
            .map_err(db_error)
    }

    pub(super) async fn create_in_exchange(
        &mut self,
        folder: &SyncedFolder,
        rows: Vec<&MailRow>,
    ) -> Result<(), SyncError> {
        // Rows that already are in Exchange (a crash after CreateItem, or imported earlier and
        // the mapping lost) are linked: by the stamp, searched unless this folder's last round
        // finished clean (each folder on its own: one folder's clean round says nothing of
        // another's).
        let clean_key = (
            self.smtp().to_owned(),
            format!("{MAILS}:{}", folder.ews_id),
            false,
        );
        let verify = !self.engine.clean.lock().remove(&clean_key);
        let mut existing = if verify {
            let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
            let folder_ref = FolderRef::Id(id_of(&folder.ews_id));
            self.engine
                .find_stamped(self.setup, self.ctx, &folder_ref, MAILS, &ids)
                .await?
        } else {
            HashMap::new()
        };
        let mut found = Vec::new();
        let mut unsure = Vec::new();
        for row in rows {
            match existing.remove(&row.id) {
                Some(id) => found.push((row, id)),
                None => unsure.push(row),
            }
        }
        // A row that carries an Exchange id came from Exchange (or was written there before a
        // crash): if that message still exists, it is linked, not copied.
        let mut todo = Vec::new();
        for chunk in unsure.chunks(100) {
            let known: Vec<&MailRow> = chunk
                .iter()
                .copied()
                .filter(|r| r.ews_id.is_some())
                .collect();
            todo.extend(chunk.iter().copied().filter(|r| r.ews_id.is_none()));
            if known.is_empty() {
                continue;
            }
            let get = GetItem {
                ids: known
                    .iter()
                    .map(|r| id_of(r.ews_id.as_deref().unwrap_or_default()))
                    .collect(),
                shape: Shape::id_only(),
            };
            let items = self.engine.call(self.setup, self.ctx, &get).await?;
            for (row, item) in known.into_iter().zip(items) {
                match item.ok().and_then(|i| i.id().cloned()) {
                    Some(id) => found.push((row, id)),
                    None => todo.push(row),
                }
            }
        }
        self.record_created(found).await?;
        let mut batch: Vec<(&MailRow, Vec<u8>)> = Vec::new();
        let mut bytes = 0u64;
        let max = self.max_message_bytes();
        for row in todo {
            let size = row.size.unwrap_or(0).max(0) as u64;
            if size > max {
                let reason = format!(
                    "the mail has {} MB, more than mail.max_message_mb ({} MB)",
                    size / (1024 * 1024),
                    self.max_message_bytes() / (1024 * 1024)
                );
                self.park(
                    MAILS,
                    row.id,
                    "",
                    crate::sync::events::FailureKind::TooLarge,
                    &reason,
                )
                .await;
                continue;
            }
            if !batch.is_empty()
                && (batch.len() >= MAILS_PER_REQUEST || bytes + size > BYTES_PER_REQUEST)
            {
                self.create_batch(folder, std::mem::take(&mut batch))
                    .await?;
                bytes = 0;
            }
            let Some(mime) = self.engine.crm.mail_mime(row.id).await.map_err(db_error)? else {
                self.fail(MAILS, row.id, "the mail has no MIME content")
                    .await;
                continue;
            };
            bytes += mime.len() as u64;
            batch.push((row, mime));
        }
        if !batch.is_empty() {
            self.create_batch(folder, batch).await?;
        }
        self.engine.clean.lock().insert(clean_key);
        Ok(())
    }

    pub(super) async fn create_batch(
        &mut self,
        folder: &SyncedFolder,
        batch: Vec<(&MailRow, Vec<u8>)>,
    ) -> Result<(), SyncError> {
        let mut items = Vec::with_capacity(batch.len());
        let mut rows = Vec::with_capacity(batch.len());
        for (row, mime) in batch {
            items.push(Item::Message(Message {
                mime: Some(mime),
                is_read: Some(row.is_read),
                extended: vec![
                    ews::types::ExtendedProperty {
                        uri: fields::crm_id_uri(),
                        value: fields::crm_stamp(MAILS, row.id),
                    },
                    message_flags(row.is_read),
                ],
                ..Message::default()
            }));
            rows.push(row);
        }
        let op = CreateItem {
            folder: Some(FolderRef::Id(id_of(&folder.ews_id))),
            items,
            disposition: Some(MessageDisposition::SaveOnly),
        };
        let results = self.engine.call(self.setup, self.ctx, &op).await?;
        drop(op);
        self.mail.mark_dirty(self.smtp(), &folder.ews_id);
        let mut made = Vec::new();
        let mut retry = None;
        for (row, r) in rows.into_iter().zip(results) {
            match r {
                Ok(id) => {
                    self.engine.note_own_write(&id);
                    made.push((row, id));
                }
                Err(e @ (ews::Error::Throttled { .. } | ews::Error::Transient(_))) => {
                    retry.get_or_insert(sync_error(e));
                }
                Err(e) => {
                    self.fail(MAILS, row.id, &format!("Exchange refused the mail: {e}"))
                        .await
                }
            }
        }
        let n = made.len();
        self.record_created(made).await?;
        for _ in 0..n {
            self.counted(Direction::ToExchange, Action::Create);
        }
        self.ctx.progress();
        match retry {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub(super) async fn record_created(
        &mut self,
        made: Vec<(&MailRow, ItemId)>,
    ) -> Result<(), SyncError> {
        if made.is_empty() {
            return Ok(());
        }
        let ids: Vec<(i64, String)> = made.iter().map(|(r, id)| (r.id, id.id.clone())).collect();
        let written = self
            .engine
            .crm
            .set_ews_ids(MAILS, &ids)
            .await
            .map_err(db_error)?;
        let mappings: Vec<ItemMapping> = made
            .iter()
            .zip(written)
            .map(|((row, id), written)| ItemMapping {
                mailbox: self.smtp().to_owned(),
                crm_table: MAILS.into(),
                crm_id: row.id,
                ews_item_id: id.id.clone(),
                change_key: id.change_key.clone(),
                crm_version: own_version(row.version, written),
                fields: mail_base(row.folder_id, row.is_read),
                stamped: true,
                // Created after the folder's stored state: checked by its next read.
                unverified: true,
            })
            .collect();
        self.engine
            .state
            .put_mappings(&mappings)
            .await
            .map_err(db_error)
    }
}
