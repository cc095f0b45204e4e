//! Mail: messages from Exchange — the synced folders read (SyncFolderItems), links before deletes (a move is one change), MIME imported in batches bounded by bytes.

use std::collections::{HashMap, HashSet};

use ews::items::Item;
use ews::ops::{GetItem, ItemChange, SyncFolderItems};
use ews::types::{BaseShape, FolderRef, ItemId, PropertyPath, Shape};
use mailsync_actors::SyncError;

use super::*;
use crate::config::Leading;
use crate::db::mail::{MailRow, NewMail};
use crate::db::state::{FolderState, ItemMapping};
use crate::sync::core::{db_error, sync_error};
use crate::sync::events::{Action, Direction};
use crate::sync::fields;

impl MailStep<'_> {
    // ---- messages, Exchange → CRM ----

    pub(super) async fn pull_mails(
        &mut self,
        folders: &[SyncedFolder],
        full: bool,
        only_dirty: bool,
    ) -> Result<bool, SyncError> {
        let smtp = self.smtp().to_owned();
        let dirty: HashSet<String> = self.mail.dirty.lock().remove(&smtp).unwrap_or_default();
        let unfinished: HashSet<String> = self
            .mail
            .unfinished
            .lock()
            .remove(&smtp)
            .unwrap_or_default();
        let result = self
            .pull_mails_of(folders, full, only_dirty, &dirty, &unfinished)
            .await;
        if result.is_err() {
            // Give the notifications back: the retry must still look there.
            let mut d = self.mail.dirty.lock();
            let e = d.entry(smtp.clone()).or_default();
            e.extend(dirty);
            e.extend(unfinished);
        }
        result
    }

    /// Reads one folder's changes (up to `PAGES_PER_STEP` pages) into `reads`.
    pub(super) async fn read_folder(
        &mut self,
        f: &SyncedFolder,
        current: FolderState,
        full: bool,
        reads: &mut Reads,
    ) -> Result<(), SyncError> {
        let mut sync_state = if full || current.ews_folder_id.as_deref() != Some(f.ews_id.as_str())
        {
            None
        } else {
            current.sync_state
        };
        if sync_state.is_none() {
            // From scratch: what the listing does not report of the folder's mappings is
            // checked at its end, so nothing gone stays mapped.
            self.unverify_folder_mails(f.row.id).await?;
        }
        let reported = reads.reported.entry(f.row.id).or_default();
        let mut finished = false;
        // A baseline reads a folder to its end in one go: its state must cover everything.
        let pages = if self.baseline {
            usize::MAX
        } else {
            PAGES_PER_STEP
        };
        for _ in 0..pages {
            let op = SyncFolderItems {
                folder: FolderRef::Id(id_of(&f.ews_id)),
                shape: pull_shape(),
                sync_state: sync_state.clone(),
                ignore: vec![],
                max_changes: ews::ops::MAX_CHANGES_RETURNED,
            };
            let reply = match self.engine.call_ews(self.setup, self.ctx, &op).await {
                Ok(r) => r,
                // The folder vanished since the tree was read: the next tree sync says so.
                Err(ews::Error::NotFound(_)) => {
                    finished = true;
                    break;
                }
                Err(e) => return Err(sync_error(e)),
            };
            self.seen += reply.changes.len() as u64;
            for change in reply.changes {
                if self.baseline {
                    // The baseline: what is there now is neither imported nor deleted.
                    continue;
                }
                match &change {
                    ItemChange::Create(i) | ItemChange::Update(i) => {
                        if let Some(id) = i.id() {
                            reported.push(id.id.clone());
                        }
                    }
                    ItemChange::Delete(id) | ItemChange::ReadFlagChange { id, .. } => {
                        reported.push(id.id.clone())
                    }
                }
                match change {
                    ItemChange::Create(Item::Message(msg))
                    | ItemChange::Update(Item::Message(msg)) => {
                        let Some(id) = msg.id.clone() else { continue };
                        if f.sync_from
                            .is_some_and(|from| msg.received.is_some_and(|r| r.date_naive() < from))
                        {
                            continue;
                        }
                        let message_id = msg.internet_message_id.clone();
                        let (is_read, size) = (msg.is_read.unwrap_or(false), msg.size.unwrap_or(0));
                        let stamped = fields::stamped_id(&Item::Message(msg), MAILS);
                        reads.creates.push(Seen {
                            id,
                            folder: f.row.id,
                            is_read,
                            size,
                            message_id,
                            stamped,
                        });
                    }
                    ItemChange::Create(_) | ItemChange::Update(_) => {}
                    ItemChange::ReadFlagChange { id, is_read } => {
                        reads.updates.push((id, f.row.id, Some(is_read)));
                    }
                    ItemChange::Delete(id) => reads.deletes.push(id),
                }
            }
            sync_state = Some(reply.sync_state);
            finished = reply.includes_last;
            if finished {
                break;
            }
        }
        if finished {
            reads.complete.insert(f.row.id);
        } else {
            // More than this step reads: the next step goes on here.
            reads.more.insert(f.ews_id.clone());
        }
        reads
            .next_states
            .push((format!("mail/{}", f.row.id), f.ews_id.clone(), sync_state));
        Ok(())
    }

    /// The mail mappings of deleted Exchange items, by item id.
    pub(super) async fn mapped_deletes(
        &self,
        deletes: &[ItemId],
    ) -> Result<HashMap<String, ItemMapping>, SyncError> {
        let ids: Vec<String> = deletes.iter().map(|id| id.id.clone()).collect();
        let mut found = self
            .engine
            .state
            .mappings_by_ews(self.smtp(), &ids)
            .await
            .map_err(db_error)?;
        found.retain(|_, m| m.crm_table == MAILS);
        Ok(found)
    }

    pub(super) async fn pull_mails_of(
        &mut self,
        folders: &[SyncedFolder],
        full: bool,
        only_dirty: bool,
        dirty: &HashSet<String>,
        unfinished: &HashSet<String>,
    ) -> Result<bool, SyncError> {
        let state = &self.engine.state;
        let mut reads = Reads::default();
        let mut skipped: Vec<&SyncedFolder> = Vec::new();
        for f in folders.iter().filter(|f| !f.excluded) {
            let current = state
                .folder_state(self.smtp(), &format!("mail/{}", f.row.id))
                .await
                .map_err(db_error)?;
            // A folder never read (new, or just included) is read whatever woke the step.
            let fresh = current.sync_state.is_none();
            if only_dirty && !fresh && !dirty.contains(&f.ews_id) && !unfinished.contains(&f.ews_id)
            {
                skipped.push(f);
                continue;
            }
            self.read_folder(f, current, full, &mut reads).await?;
        }
        // Creates and changes first, then deletes: a message moved between two folders is
        // relinked, not deleted and copied.
        let mut deleted = self.mapped_deletes(&reads.deletes).await?;
        if !deleted.is_empty() && !skipped.is_empty() {
            // A message gone from a folder may have moved into one this step did not read (no
            // notification named it): before anything is deleted, every synced folder is read.
            for f in skipped {
                let current = state
                    .folder_state(self.smtp(), &format!("mail/{}", f.row.id))
                    .await
                    .map_err(db_error)?;
                self.read_folder(f, current, full, &mut reads).await?;
            }
            deleted = self.mapped_deletes(&reads.deletes).await?;
        }
        // Messages written after a folder's stored state that its complete read did not
        // report: looked up; gone ones are deletes like any other.
        let vanished = self.unreported_gone(&reads).await?;
        if !vanished.is_empty() {
            reads.deletes.extend(vanished);
            deleted = self.mapped_deletes(&reads.deletes).await?;
        }
        let Reads {
            creates,
            updates,
            next_states,
            more,
            reported,
            ..
        } = reads;
        let trash = folders
            .iter()
            .find(|f| f.row.role.as_deref() == Some("deleteditems"))
            .map(|f| f.row.id);
        let relinked = self.apply_seen(creates, &deleted, trash).await?;
        let flagged: Vec<String> = updates.iter().map(|(id, _, _)| id.id.clone()).collect();
        let mut flagged = state
            .mappings_by_ews(self.smtp(), &flagged)
            .await
            .map_err(db_error)?;
        for (id, folder, is_read) in updates {
            if let Some(m) = flagged.remove(&id.id) {
                self.exchange_flag(&id, folder, is_read, m).await?;
            }
        }
        deleted.retain(|_, m| !relinked.contains(&m.crm_id));
        let deleted = self.hold_mail_deletes(deleted, folders).await?;
        for (ews, m) in deleted {
            state
                .delete_mapping(self.smtp(), MAILS, m.crm_id)
                .await
                .map_err(db_error)?;
            let row = self.engine.crm.mails(&[m.crm_id]).await.map_err(db_error)?;
            if let Some(row) = row.first() {
                if Some(row.version) != m.crm_version && self.leading == Leading::Crm {
                    // Changed in the CRM since: the CRM leads, the mail is written again.
                    self.engine
                        .state
                        .add_pending(&[(self.smtp().to_owned(), MAILS.to_owned(), row.id)])
                        .await
                        .map_err(db_error)?;
                    continue;
                }
                self.engine
                    .crm
                    .delete_crm_row(MAILS, row.id)
                    .await
                    .map_err(db_error)?;
                self.counted(Direction::ToCrm, Action::Delete);
            }
            tracing::debug!(mailbox = self.smtp(), ews, "mail deleted in Exchange");
        }
        for (key, ews, sync_state) in next_states {
            let folder: Option<i64> = key.strip_prefix("mail/").and_then(|k| k.parse().ok());
            let ids = folder
                .and_then(|f| reported.get(&f))
                .cloned()
                .unwrap_or_default();
            state
                .store_state_verifying(
                    self.smtp(),
                    &key,
                    &FolderState {
                        ews_folder_id: Some(ews),
                        sync_state,
                    },
                    &ids,
                )
                .await
                .map_err(db_error)?;
        }
        let has_more = !more.is_empty();
        if has_more {
            self.mail
                .unfinished
                .lock()
                .entry(self.smtp().to_owned())
                .or_default()
                .extend(more);
        }
        Ok(has_more)
    }

    /// Marks the mail mappings of a folder unverified before it is read from scratch.
    pub(super) async fn unverify_folder_mails(&self, folder: i64) -> Result<(), SyncError> {
        let state = &self.engine.state;
        let mut all = state
            .mappings_of(self.smtp(), MAILS)
            .await
            .map_err(db_error)?;
        all.retain(|m| base_i64(m, "folder") == Some(folder) && !m.unverified);
        if all.is_empty() {
            return Ok(());
        }
        for m in &mut all {
            m.unverified = true;
        }
        state.put_mappings(&all).await.map_err(db_error)
    }

    /// The messages of completely read folders that were written after the folder's stored
    /// state and not reported by its read: each is looked up; found ones are verified, the
    /// ids of gone ones returned (a read from an older state nets "created, then deleted" into
    /// nothing, so this is how such a delete is seen).
    async fn unreported_gone(&mut self, reads: &Reads) -> Result<Vec<ItemId>, SyncError> {
        if reads.complete.is_empty() {
            return Ok(Vec::new());
        }
        let open: Vec<ItemMapping> = self
            .engine
            .state
            .unverified_of(self.smtp(), MAILS)
            .await
            .map_err(db_error)?
            .into_iter()
            .filter(|m| {
                base_i64(m, "folder").is_some_and(|f| {
                    reads.complete.contains(&f)
                        && !reads
                            .reported
                            .get(&f)
                            .is_some_and(|ids| ids.contains(&m.ews_item_id))
                })
            })
            .collect();
        let mut found = Vec::new();
        let mut gone = Vec::new();
        for chunk in open.chunks(100) {
            let get = GetItem {
                ids: chunk.iter().map(|m| id_of(&m.ews_item_id)).collect(),
                shape: Shape::id_only(),
            };
            let answers = self.engine.call(self.setup, self.ctx, &get).await?;
            for (m, a) in chunk.iter().zip(answers) {
                match crate::sync::core::ItemOutcome::from_read(a)? {
                    crate::sync::core::ItemOutcome::Gone => gone.push(id_of(&m.ews_item_id)),
                    crate::sync::core::ItemOutcome::Written(_) => found.push(m.ews_item_id.clone()),
                    _ => {}
                }
            }
        }
        self.engine
            .state
            .verify_mappings(self.smtp(), &found)
            .await
            .map_err(db_error)?;
        if !gone.is_empty() {
            tracing::info!(
                mailbox = self.smtp(),
                count = gone.len(),
                "messages written since their folder's last read are gone from Exchange"
            );
        }
        Ok(gone)
    }

    /// The breaker for messages gone from Exchange: per folder, deletes over the limits (or
    /// all of a folder's messages) are held; the rest are returned to be applied.
    async fn hold_mail_deletes(
        &mut self,
        deleted: HashMap<String, ItemMapping>,
        folders: &[SyncedFolder],
    ) -> Result<HashMap<String, ItemMapping>, SyncError> {
        if deleted.is_empty() {
            return Ok(deleted);
        }
        let mut by_folder: HashMap<i64, Vec<String>> = HashMap::new();
        for (ews, m) in &deleted {
            by_folder
                .entry(base_i64(m, "folder").unwrap_or(0))
                .or_default()
                .push(ews.clone());
        }
        let stopped = self
            .breaker(MAILS, crate::db::integrity::Side::Crm, &by_folder, folders)
            .await?;
        if stopped.is_empty() {
            return Ok(deleted);
        }
        let mut keep = HashMap::new();
        let mut held = Vec::new();
        for (ews, m) in deleted {
            let folder = base_i64(&m, "folder").unwrap_or(0);
            match stopped.get(&folder) {
                Some(scope) => held.push(crate::db::integrity::Held {
                    mailbox: self.smtp().to_owned(),
                    crm_table: MAILS.to_owned(),
                    scope: scope.clone(),
                    side: crate::db::integrity::Side::Crm,
                    crm_id: m.crm_id,
                    ews_item_id: ews,
                    title: String::new(),
                    decision: None,
                }),
                None => {
                    keep.insert(ews, m);
                }
            }
        }
        self.held += held.len() as u64;
        self.engine.state.hold(&held).await.map_err(db_error)?;
        Ok(keep)
    }

    /// A read flag (or a changed item) seen in Exchange.
    pub(super) async fn exchange_flag(
        &mut self,
        id: &ItemId,
        folder: i64,
        is_read: Option<bool>,
        m: ItemMapping,
    ) -> Result<(), SyncError> {
        let state = &self.engine.state;
        if m.crm_table != MAILS || (id.change_key.is_some() && m.change_key == id.change_key) {
            return Ok(());
        }
        let Some(row) = self
            .engine
            .crm
            .mails(&[m.crm_id])
            .await
            .map_err(db_error)?
            .into_iter()
            .next()
        else {
            return Ok(());
        };
        let is_read = is_read.unwrap_or(row.is_read);
        let crm_changed = Some(row.version) != m.crm_version;
        if crm_changed
            && self.leading == Leading::Crm
            && base_bool(&m, "is_read") != Some(row.is_read)
        {
            // Both changed the flag: the CRM leads. Its change is queued (again: a write
            // that found the item moved away left it unrecorded).
            return self
                .engine
                .state
                .add_pending(&[(self.smtp().to_owned(), MAILS.to_owned(), row.id)])
                .await
                .map_err(db_error);
        }
        if row.is_read == is_read && row.folder_id == folder {
            let mut m = m;
            m.fields = mail_base(folder, is_read);
            m.change_key = id.change_key.clone().or(m.change_key);
            m.crm_version = Some(row.version);
            return state.put_mapping(&m).await.map_err(db_error);
        }
        match self
            .engine
            .crm
            .update_mail(row.id, row.version, folder, is_read, &id.id)
            .await
            .map_err(db_error)?
        {
            Some(v) => {
                let mut m = m;
                m.fields = mail_base(folder, is_read);
                m.change_key = id.change_key.clone().or(m.change_key);
                m.crm_version = Some(v);
                state.put_mapping(&m).await.map_err(db_error)?;
                self.counted(Direction::ToCrm, Action::Update);
                Ok(())
            }
            // Changed meanwhile: the next step sees both again.
            None => Ok(()),
        }
    }

    /// Links or imports new messages; returns the CRM ids that were relinked (moves).
    pub(super) async fn apply_seen(
        &mut self,
        seen: Vec<Seen>,
        deleted: &HashMap<String, ItemMapping>,
        trash: Option<i64>,
    ) -> Result<HashSet<i64>, SyncError> {
        let state = &self.engine.state;
        let crm = &self.engine.crm;
        let mut relinked = HashSet::new();
        let deleted_by_crm: HashMap<i64, &ItemMapping> =
            deleted.values().map(|m| (m.crm_id, m)).collect();
        // Everything a batch needs is read in a few queries, not several per message.
        let ids: Vec<String> = seen.iter().map(|s| s.id.id.clone()).collect();
        let mapped = state
            .mappings_by_ews(self.smtp(), &ids)
            .await
            .map_err(db_error)?;
        let mut fresh = Vec::new();
        for s in seen {
            match mapped.get(&s.id.id).filter(|m| m.crm_table == MAILS) {
                Some(m) => {
                    if m.change_key.is_none() || m.change_key != s.id.change_key {
                        self.exchange_flag(&s.id, s.folder, Some(s.is_read), m.clone())
                            .await?;
                    }
                }
                None => fresh.push(s),
            }
        }
        let owner = self.owner.operator_id;
        let stamped_ids: Vec<i64> = fresh.iter().filter_map(|s| s.stamped).collect();
        let stamped_rows: HashMap<i64, MailRow> = crm
            .mails(&stamped_ids)
            .await
            .map_err(db_error)?
            .into_iter()
            .filter(|r| r.owner_id == owner)
            .map(|r| (r.id, r))
            .collect();
        let fresh_ids: Vec<String> = fresh.iter().map(|s| s.id.id.clone()).collect();
        let by_ews_id = crm
            .mails_by_ews_ids(owner, &fresh_ids)
            .await
            .map_err(db_error)?;
        let message_ids: Vec<String> = fresh.iter().filter_map(|s| s.message_id.clone()).collect();
        let by_message_id = crm
            .mails_by_message_ids(owner, &message_ids)
            .await
            .map_err(db_error)?;
        let candidates: Vec<i64> = by_message_id.values().flatten().map(|r| r.id).collect();
        let mapped_rows = state
            .mappings_by_crm(self.smtp(), MAILS, &candidates)
            .await
            .map_err(db_error)?;
        // Rows linked in this batch are no longer free for another message.
        let mut taken: HashSet<i64> = HashSet::new();
        let mut import = Vec::new();
        for s in fresh {
            // Which CRM row is this message? Its stamp; the row that carries its id; the row
            // of a message deleted (moved away) in this same step with the same Message-ID; an
            // unmapped row of the same folder with the same Message-ID.
            let mut target: Option<MailRow> = None;
            if let Some(crm_id) = s.stamped {
                target = stamped_rows.get(&crm_id).cloned();
                if target.is_none() && Some(s.folder) == trash {
                    // Written by mailsync for a row the CRM has deleted since: deleting in the
                    // CRM moved it to Deleted Items, and it does not come back from there.
                    // (Restored into another folder in Outlook, it is imported again.)
                    continue;
                }
            }
            if target.is_none() {
                target = by_ews_id.get(&s.id.id).cloned();
            }
            if target.is_none() {
                if let Some(rows) = s.message_id.as_ref().and_then(|m| by_message_id.get(m)) {
                    target = rows
                        .iter()
                        .find(|r| deleted_by_crm.contains_key(&r.id) && !taken.contains(&r.id))
                        .or_else(|| {
                            rows.iter().find(|r| {
                                r.folder_id == s.folder
                                    && !mapped_rows.contains_key(&r.id)
                                    && !taken.contains(&r.id)
                            })
                        })
                        .cloned();
                }
            }
            if let Some(row) = &target {
                if !taken.insert(row.id) {
                    // The same row twice (a copy of our message in Exchange): linked once.
                    continue;
                }
            }
            match target {
                Some(row) => {
                    relinked.insert(row.id);
                    // A row that moved away from another item keeps one mapping: the new one.
                    let version = match crm
                        .update_mail(row.id, row.version, s.folder, s.is_read, &s.id.id)
                        .await
                        .map_err(db_error)?
                    {
                        Some(v) => v,
                        None => continue,
                    };
                    if row.folder_id != s.folder {
                        self.counted(Direction::ToCrm, Action::Move);
                    }
                    state
                        .put_mapping(&ItemMapping {
                            mailbox: self.smtp().to_owned(),
                            crm_table: MAILS.into(),
                            crm_id: row.id,
                            ews_item_id: s.id.id.clone(),
                            change_key: s.id.change_key.clone(),
                            crm_version: Some(version),
                            fields: mail_base(s.folder, s.is_read),
                            stamped: true,
                            unverified: true,
                        })
                        .await
                        .map_err(db_error)?;
                }
                None => import.push(s),
            }
        }
        // An item a row of another operator carries (the mailbox was reassigned, say) is never
        // linked across operators, and cannot be imported a second time: parked with the reason.
        let ids: Vec<String> = import.iter().map(|s| s.id.id.clone()).collect();
        let elsewhere = crm.ids_by_ews_ids(MAILS, &ids).await.map_err(db_error)?;
        let mut fresh = Vec::with_capacity(import.len());
        for s in import {
            match elsewhere.get(&s.id.id) {
                Some(row) => {
                    let reason = format!(
                        "crm_mails row {row} of another operator holds this Exchange item (was the mailbox reassigned?); it is not imported twice"
                    );
                    self.park(
                        MAILS,
                        0,
                        &s.id.id,
                        crate::sync::events::FailureKind::InvalidRow,
                        &reason,
                    )
                    .await;
                }
                None => fresh.push(s),
            }
        }
        self.import(fresh).await?;
        Ok(relinked)
    }

    /// Reads messages' MIME and stores them in the CRM, a bounded number of bytes at a time.
    pub(super) async fn import(&mut self, seen: Vec<Seen>) -> Result<(), SyncError> {
        let mut batch: Vec<Seen> = Vec::new();
        let mut bytes = 0u64;
        let max = self.max_message_bytes();
        for s in seen {
            if s.size > max {
                // Never loaded: parked with the reason, retried on the schedule (the limit
                // may be raised meanwhile).
                let reason = format!(
                    "the message has {} MB, more than mail.max_message_mb ({} MB)",
                    s.size / (1024 * 1024),
                    self.max_message_bytes() / (1024 * 1024)
                );
                self.park(
                    MAILS,
                    0,
                    &s.id.id,
                    crate::sync::events::FailureKind::TooLarge,
                    &reason,
                )
                .await;
                continue;
            }
            if !batch.is_empty()
                && (batch.len() >= MAILS_PER_REQUEST || bytes + s.size > BYTES_PER_REQUEST)
            {
                self.import_batch(std::mem::take(&mut batch)).await?;
                bytes = 0;
            }
            bytes += s.size;
            batch.push(s);
        }
        if !batch.is_empty() {
            self.import_batch(batch).await?;
        }
        Ok(())
    }

    pub(super) async fn import_batch(&mut self, batch: Vec<Seen>) -> Result<(), SyncError> {
        let get = GetItem {
            ids: batch.iter().map(|s| s.id.clone()).collect(),
            shape: Shape {
                base: BaseShape::IdOnly,
                additional: vec![
                    PropertyPath::Field("item:MimeContent".into()),
                    PropertyPath::Field("item:Subject".into()),
                    PropertyPath::Field("message:From".into()),
                    PropertyPath::Field("message:ToRecipients".into()),
                    PropertyPath::Field("message:CcRecipients".into()),
                    PropertyPath::Field("item:DateTimeSent".into()),
                    PropertyPath::Field("message:IsRead".into()),
                    PropertyPath::Field("message:InternetMessageId".into()),
                ],
            },
        };
        let items = match self.engine.call_ews(self.setup, self.ctx, &get).await {
            Ok(items) => items,
            // The answer is over the response cap (sizes Exchange reported were too small,
            // or the cap is tight): one message at a time, and one alone over it is parked.
            Err(e @ ews::Error::TooLarge { .. }) => {
                if batch.len() == 1 {
                    let reason = format!("the message cannot be read within the response cap: {e}");
                    self.park(
                        MAILS,
                        0,
                        &batch[0].id.id,
                        crate::sync::events::FailureKind::TooLarge,
                        &reason,
                    )
                    .await;
                    return Ok(());
                }
                for one in batch {
                    Box::pin(self.import_batch(vec![one])).await?;
                }
                return Ok(());
            }
            Err(e) => return Err(sync_error(e)),
        };
        let mut rows = Vec::new();
        let mut ids = Vec::new();
        for (s, item) in batch.iter().zip(items) {
            let msg = match item {
                Ok(Item::Message(m)) => m,
                Ok(_) => continue,
                Err(ews::Error::NotFound(_)) => continue,
                Err(e @ (ews::Error::Throttled { .. } | ews::Error::Transient(_))) => {
                    return Err(sync_error(e))
                }
                Err(e) => {
                    tracing::warn!(mailbox = self.smtp(), ews_id = s.id.id, error = %e, "message not readable; skipped");
                    continue;
                }
            };
            let Some(mime) = msg.mime.clone() else {
                continue;
            };
            let id = msg.id.clone().unwrap_or_else(|| s.id.clone());
            rows.push(NewMail {
                owner_id: self.owner.operator_id,
                folder_id: s.folder,
                internet_message_id: msg
                    .internet_message_id
                    .clone()
                    .or_else(|| s.message_id.clone()),
                subject: msg.subject.clone(),
                sender: msg.from.as_ref().and_then(|f| f.email.clone()),
                recipients: mailbox_list(&msg),
                sent_at: msg.sent.or(msg.received),
                is_read: msg.is_read.unwrap_or(s.is_read),
                mime,
                ews_id: id.id.clone(),
            });
            ids.push((id, s.folder, msg.is_read.unwrap_or(s.is_read)));
        }
        if rows.is_empty() {
            return Ok(());
        }
        let written = self
            .engine
            .crm
            .insert_mails(&rows)
            .await
            .map_err(db_error)?;
        drop(rows);
        let mappings: Vec<ItemMapping> = ids
            .iter()
            .zip(&written)
            .map(|((id, folder, is_read), (crm_id, version))| ItemMapping {
                mailbox: self.smtp().to_owned(),
                crm_table: MAILS.into(),
                crm_id: *crm_id,
                ews_item_id: id.id.clone(),
                change_key: id.change_key.clone(),
                crm_version: Some(*version),
                fields: mail_base(*folder, *is_read),
                stamped: true,
                unverified: true,
            })
            .collect();
        self.engine
            .state
            .put_mappings(&mappings)
            .await
            .map_err(db_error)?;
        for _ in 0..mappings.len() {
            self.counted(Direction::ToCrm, Action::Create);
        }
        self.ctx.progress();
        Ok(())
    }
}
