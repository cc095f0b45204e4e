//! The read phase of a contacts, calendar or tasks step: what changed in Exchange since the
//! folder's stored state (SyncFolderItems ids, GetItem for what is not our own echo), the rows
//! the change feed queued, the mappings — gathered into pairs for the planner.
//!
//! Linking happens here, never across scopes: an item is paired with a CRM row by its
//! mapping; else by its CRM-id stamp, but only with a row of this mailbox's operator (or, in
//! the shared contacts folder, of its tenant's shared contacts) — a stamp copied from another
//! operator's or tenant's item makes the item new; else by the row that carries its Exchange
//! id (an import a crash separated from its mapping); else, for appointments, by UID.

use std::collections::{HashMap, HashSet};

use ews::items::Item;
use ews::ops::{GetItem, ItemChange, SyncFolderItems};
use ews::types::{FolderRef, ItemId, Shape};
use futures_util::stream::{self, StreamExt};
use mailsync_actors::SyncError;

use super::plan::{Base, CrmObs, EwsObs, LinkBy, Pair, Side};
use super::stamp::PIPELINE;
use super::{to_base, ItemStep, Mode, ITEM_BATCH, QUEUE_BATCH};
use crate::config::Area;
use crate::db::integrity::Side as HeldSide;
use crate::db::rows::{problems, CrmRow};
use crate::db::state::{FolderState, ItemMapping};
use crate::sync::core::{db_error, ItemOutcome};
use crate::sync::events::FailureKind;
use crate::sync::fields;

/// An Exchange item read in full.
#[derive(Debug, Clone)]
pub(crate) struct SeenItem {
    /// Its values.
    pub obs: EwsObs,
    /// The CRM id stamped on it for this table, if any.
    pub stamp: Option<i64>,
    /// An appointment's UID.
    pub uid: Option<String>,
}

/// What one read of a folder found.
#[derive(Debug, Default)]
pub(crate) struct Page {
    /// Items created or changed, read in full (echoes of our own writes left out).
    pub seen: Vec<SeenItem>,
    /// Items reported deleted.
    pub gone: Vec<String>,
    /// Every item id the read reported (echoes included): the stored state covers them.
    pub reported: Vec<String>,
    /// The state to store once the page is carried out.
    pub next: Option<FolderState>,
    /// Exchange has nothing more after this page.
    pub complete: bool,
}

/// The per-step records the planner's view leaves out and the executor needs.
#[derive(Debug, Default)]
pub(crate) struct Context {
    /// CRM rows read, by id.
    pub rows: HashMap<i64, CrmRow>,
    /// Mappings read, by CRM id.
    pub maps: HashMap<i64, ItemMapping>,
    /// Appointment UIDs of Exchange items, by item id.
    pub uids: HashMap<String, String>,
    /// Queued rows read, with their queue tokens.
    pub queued: Vec<(i64, i64)>,
}

/// Whether a row belongs in this mailbox: `Some(shared?)`, or `None`.
pub(crate) fn scope_of(owner: crate::sync::core::Owner, row: &CrmRow) -> Option<bool> {
    match row {
        CrmRow::Contact(c) => match c.owner_id {
            Some(o) if o == owner.operator_id => Some(false),
            None if c.tenant_id == owner.tenant_id => Some(true),
            _ => None,
        },
        CrmRow::Appointment(a) => (a.owner_id == owner.operator_id).then_some(false),
        CrmRow::Task(t) => (t.owner_id == owner.operator_id).then_some(false),
    }
}

impl ItemStep<'_> {
    /// The stored state of the own or shared folder (an error if the mailbox never opened it).
    pub(crate) async fn folder_state(&self, shared: bool) -> Result<FolderState, SyncError> {
        let key = self.folder_key(shared);
        let state = self
            .engine
            .state
            .folder_state(self.smtp(), key)
            .await
            .map_err(db_error)?;
        if state.ews_folder_id.is_none() {
            return Err(SyncError::Failed(format!(
                "folder {key} of {} was never opened",
                self.smtp()
            )));
        }
        Ok(state)
    }

    /// One page of SyncFolderItems from `from` (None: from scratch), with the changed items
    /// read in full.
    pub(crate) async fn read_page(
        &mut self,
        shared: bool,
        folder: &FolderState,
        from: Option<String>,
        fetch_items: bool,
    ) -> Result<Page, SyncError> {
        let folder_id = ItemId {
            id: folder.ews_folder_id.clone().unwrap_or_default(),
            change_key: None,
        };
        let sync = SyncFolderItems {
            folder: FolderRef::Id(folder_id),
            shape: Shape::id_only(),
            sync_state: from,
            ignore: vec![],
            max_changes: ews::ops::MAX_CHANGES_RETURNED,
        };
        let reply = self.engine.call(self.setup, self.ctx, &sync).await?;
        self.seen += reply.changes.len() as u64;
        let mut page = Page {
            next: Some(FolderState {
                ews_folder_id: folder.ews_folder_id.clone(),
                sync_state: Some(reply.sync_state),
            }),
            complete: reply.includes_last,
            ..Page::default()
        };
        let mut changed = Vec::new();
        for change in reply.changes {
            match change {
                ItemChange::Create(item) | ItemChange::Update(item) => {
                    if let Some(id) = item.id() {
                        page.reported.push(id.id.clone());
                        changed.push(id.clone());
                    }
                }
                ItemChange::Delete(id) => {
                    page.reported.push(id.id.clone());
                    page.gone.push(id.id);
                }
                ItemChange::ReadFlagChange { .. } => {}
            }
        }
        if !fetch_items {
            return Ok(page);
        }
        // Echo suppression: an item whose ChangeKey is the one we wrote or saw last needs
        // nothing.
        let ids: Vec<String> = changed.iter().map(|i| i.id.clone()).collect();
        let known = self
            .engine
            .state
            .mappings_by_ews(self.smtp(), &ids)
            .await
            .map_err(db_error)?;
        let wanted: Vec<ItemId> = changed
            .into_iter()
            .filter(|id| {
                known.get(&id.id).is_none_or(|m| {
                    m.crm_table != self.table
                        || m.change_key.is_none()
                        || m.change_key != id.change_key
                })
            })
            .collect();
        page.seen = self.fetch(&wanted, shared).await?.0;
        Ok(page)
    }

    /// Reads items in full; returns them and the ids Exchange no longer has.
    pub(crate) async fn fetch(
        &mut self,
        ids: &[ItemId],
        shared: bool,
    ) -> Result<(Vec<SeenItem>, Vec<String>), SyncError> {
        let mut seen = Vec::new();
        let mut missing = Vec::new();
        // Up to PIPELINE requests in flight (each through the throttle); answers are taken in
        // order, so the items keep the order of `ids`.
        let (engine, setup, ctx) = (self.engine, self.setup, self.ctx);
        let chunks: Vec<Vec<ItemId>> = ids.chunks(ITEM_BATCH).map(<[_]>::to_vec).collect();
        let mut replies = stream::iter(chunks)
            .map(|chunk: Vec<ItemId>| async move {
                let get = GetItem {
                    ids: chunk,
                    shape: Shape::all_properties(vec![fields::crm_id_path()]),
                };
                let answer = engine.call(setup, ctx, &get).await;
                (get.ids, answer)
            })
            .buffered(PIPELINE);
        while let Some((chunk, items)) = replies.next().await {
            for (id, item) in chunk.iter().zip(items?) {
                match ItemOutcome::from_read(item)? {
                    ItemOutcome::Written(item) => {
                        if let Some(s) = self.observe(item, shared).await {
                            seen.push(s);
                        }
                    }
                    ItemOutcome::Gone => missing.push(id.id.clone()),
                    ItemOutcome::Changed | ItemOutcome::Skipped => {}
                    ItemOutcome::Rejected(e) => {
                        self.park(
                            0,
                            &id.id,
                            FailureKind::RejectedByExchange,
                            &format!("reading the item from Exchange: {e}"),
                        )
                        .await
                    }
                }
            }
            self.ctx.progress();
        }
        Ok((seen, missing))
    }

    /// An Exchange item in the field model, or parked when it cannot be.
    async fn observe(&mut self, item: Item, shared: bool) -> Option<SeenItem> {
        let id = item.id().cloned()?;
        match fields::from_item(&item) {
            Ok(f) => Some(SeenItem {
                stamp: fields::stamped_id(&item, self.table),
                uid: match &item {
                    Item::CalendarItem(c) => c.uid.clone(),
                    _ => None,
                },
                obs: EwsObs {
                    id,
                    fields: f,
                    shared,
                },
            }),
            Err(e) => {
                self.park(0, &id.id, FailureKind::InvalidRow, &e).await;
                None
            }
        }
    }

    /// The planner's view of a CRM row, or parked when it cannot be read.
    fn crm_obs(&self, row: &CrmRow) -> Result<CrmObs, String> {
        let f = fields::from_row(row)?;
        Ok(CrmObs {
            id: row.id(),
            version: crate::db::rows::version_of(row),
            fields: f,
            scope: scope_of(self.owner, row),
            problems: problems(row),
        })
    }

    /// Gathers pairs: items seen and gone in Exchange, queued CRM rows (and, for a first
    /// contact, every row in scope).
    pub(crate) async fn assemble(
        &mut self,
        seen: Vec<SeenItem>,
        gone: &[String],
        queued: &[i64],
        ctx: &mut Context,
    ) -> Result<Vec<Pair>, SyncError> {
        let state = &self.engine.state;
        let crm = &self.engine.crm;
        let mut ews_ids: Vec<String> = seen.iter().map(|s| s.obs.id.id.clone()).collect();
        ews_ids.extend(gone.iter().cloned());
        let mut by_ews = state
            .mappings_by_ews(self.smtp(), &ews_ids)
            .await
            .map_err(db_error)?;
        by_ews.retain(|_, m| m.crm_table == self.table);
        for s in &seen {
            if let Some(uid) = &s.uid {
                ctx.uids.insert(s.obs.id.id.clone(), uid.clone());
            }
        }
        // Candidates for the items nothing maps yet.
        let unmapped: Vec<&SeenItem> = seen
            .iter()
            .filter(|s| !by_ews.contains_key(&s.obs.id.id))
            .collect();
        let unmapped_ids: Vec<String> = unmapped.iter().map(|s| s.obs.id.id.clone()).collect();
        let by_row_ews = crm
            .ids_by_ews_ids(self.table, &unmapped_ids)
            .await
            .map_err(db_error)?;
        let mut by_uid: HashMap<String, Vec<i64>> = HashMap::new();
        if self.area == Area::Calendar {
            let mut uids: Vec<String> = unmapped.iter().filter_map(|s| s.uid.clone()).collect();
            uids.sort_unstable();
            uids.dedup();
            by_uid = crm
                .appointments_by_uids(self.owner.operator_id, &uids)
                .await
                .map_err(db_error)?;
        }
        // Every row any pair may need, in one read; and their mappings.
        let mut row_ids: Vec<i64> = queued.to_vec();
        row_ids.extend(by_ews.values().map(|m| m.crm_id));
        row_ids.extend(unmapped.iter().filter_map(|s| s.stamp));
        row_ids.extend(by_row_ews.values().copied());
        row_ids.extend(by_uid.values().flatten().copied());
        row_ids.sort_unstable();
        row_ids.dedup();
        // Rows the caller read already (a first contact reads its scope first) are not read
        // again.
        let unread: Vec<i64> = row_ids
            .iter()
            .copied()
            .filter(|id| !ctx.rows.contains_key(id))
            .collect();
        for (id, row) in crm.crm_rows(self.table, &unread).await.map_err(db_error)? {
            match row {
                Ok(r) => {
                    ctx.rows.insert(id, r);
                }
                Err(e) => self.park(id, "", FailureKind::InvalidRow, &e).await,
            }
        }
        let by_crm = state
            .mappings_by_crm(self.smtp(), self.table, &row_ids)
            .await
            .map_err(db_error)?;
        for m in by_crm.values().chain(by_ews.values()) {
            ctx.maps.insert(m.crm_id, m.clone());
        }
        let held: HashMap<i64, HeldSide> = state
            .held(self.smtp(), Some(self.table))
            .await
            .map_err(db_error)?
            .into_iter()
            .map(|h| (h.crm_id, h.side))
            .collect();
        let ambiguous: HashSet<(HeldSide, String)> = match self.mode {
            Mode::Initial {
                separate_ambiguous: true,
            } => HashSet::new(),
            _ => state
                .ambiguous(self.smtp(), self.table)
                .await
                .map_err(db_error)?
                .into_iter()
                .map(|a| (a.side, a.record))
                .collect(),
        };

        let mut pairs: HashMap<i64, Pair> = HashMap::new();
        let mut loose: Vec<Pair> = Vec::new();
        let gone_set: HashSet<&String> = gone.iter().collect();
        let mut moved_from: HashSet<String> = HashSet::new();
        let mut taken: HashSet<i64> = HashSet::new();
        for s in seen {
            if let Some(m) = by_ews.get(&s.obs.id.id) {
                taken.insert(m.crm_id);
                pairs.insert(
                    m.crm_id,
                    self.pair(Some(to_base(m)), Side::Here(s.obs), None),
                );
                continue;
            }
            if ambiguous.contains(&(HeldSide::Exchange, s.obs.id.id.clone())) {
                continue;
            }
            let in_scope = |id: i64| {
                ctx.rows
                    .get(&id)
                    .and_then(|r| scope_of(self.owner, r))
                    .is_some_and(|shared| shared == s.obs.shared)
            };
            // 1. The stamp, within this mailbox's scope only.
            if let Some(crm_id) = s.stamp.filter(|id| in_scope(*id) && !taken.contains(id)) {
                match by_crm.get(&crm_id) {
                    Some(m) if gone_set.contains(&m.ews_item_id) => {
                        // Moved: gone from one place, here in another; the pair follows.
                        moved_from.insert(m.ews_item_id.clone());
                        taken.insert(crm_id);
                        pairs.insert(crm_id, self.pair(Some(to_base(m)), Side::Here(s.obs), None));
                        continue;
                    }
                    Some(_) => {
                        // A copy of an item that is still mapped: new.
                    }
                    None => {
                        taken.insert(crm_id);
                        pairs.insert(
                            crm_id,
                            self.pair(None, Side::Here(s.obs), Some(LinkBy::Stamp)),
                        );
                        continue;
                    }
                }
            }
            // 2. The row that carries this item's Exchange id.
            if let Some(crm_id) = by_row_ews
                .get(&s.obs.id.id)
                .copied()
                .filter(|id| in_scope(*id) && !taken.contains(id) && !by_crm.contains_key(id))
            {
                taken.insert(crm_id);
                pairs.insert(
                    crm_id,
                    self.pair(None, Side::Here(s.obs), Some(LinkBy::EwsId)),
                );
                continue;
            }
            // 3. An appointment by UID: an unmapped one of this operator.
            if let Some(crm_id) = s.uid.as_ref().and_then(|u| by_uid.get(u)).and_then(|ids| {
                ids.iter()
                    .copied()
                    .find(|id| in_scope(*id) && !taken.contains(id) && !by_crm.contains_key(id))
            }) {
                taken.insert(crm_id);
                pairs.insert(
                    crm_id,
                    self.pair(None, Side::Here(s.obs), Some(LinkBy::Uid)),
                );
                continue;
            }
            loose.push(self.pair(None, Side::Here(s.obs), None));
        }
        for g in gone {
            if moved_from.contains(g) {
                continue;
            }
            if let Some(m) = by_ews.get(g) {
                pairs
                    .entry(m.crm_id)
                    .or_insert_with(|| self.pair(Some(to_base(m)), Side::Gone, None));
            }
        }
        for id in queued {
            if pairs.contains_key(id) || ambiguous.contains(&(HeldSide::Crm, id.to_string())) {
                continue;
            }
            let base = by_crm.get(id).map(to_base);
            pairs.insert(*id, self.pair(base, Side::Unseen, None));
        }
        // The CRM side of every pair that has a row.
        let mut out = Vec::with_capacity(pairs.len() + loose.len());
        let mut returned = Vec::new();
        for (crm_id, mut p) in pairs {
            p.crm = match ctx.rows.get(&crm_id) {
                // A row whose version is below the one recorded is not the mapped row: its id
                // was reused after the mapped row was deleted. The pair's row is gone; the new
                // row is a record of its own.
                Some(row)
                    if p.base
                        .as_ref()
                        .and_then(|b| b.crm_version)
                        .is_some_and(|v| crate::db::rows::version_of(row) < v) =>
                {
                    tracing::info!(
                        mailbox = self.smtp(),
                        table = self.table,
                        crm_id,
                        "a new row took the id of a deleted one"
                    );
                    if let Ok(obs) = self.crm_obs(row) {
                        loose.push(Pair {
                            base: None,
                            crm: Side::Here(obs),
                            ews: Side::Unseen,
                            link: None,
                            held: false,
                        });
                    }
                    Side::Gone
                }
                Some(row) => match self.crm_obs(row) {
                    Ok(obs) => Side::Here(obs),
                    Err(e) => {
                        self.park(crm_id, "", FailureKind::InvalidRow, &e).await;
                        continue;
                    }
                },
                None => Side::Gone,
            };
            // A record whose delete from Exchange is held but whose item this step sees in
            // the folder again (moved back from Deleted Items: found by its id or its stamp)
            // is no longer deleted: the hold is released, whatever was decided, and the pair
            // syncs as usual.
            let back = held.get(&crm_id) == Some(&HeldSide::Crm) && matches!(p.ews, Side::Here(_));
            if back {
                returned.push(crm_id);
            }
            p.held = held.contains_key(&crm_id) && !back;
            out.push(p);
        }
        if !returned.is_empty() {
            tracing::info!(
                mailbox = self.smtp(),
                table = self.table,
                count = returned.len(),
                "held deletes whose items came back are released"
            );
            state
                .release_held(self.smtp(), self.table, &returned)
                .await
                .map_err(db_error)?;
        }
        out.extend(loose);
        Ok(out)
    }

    fn pair(&self, base: Option<Base>, ews: Side<EwsObs>, link: Option<LinkBy>) -> Pair {
        Pair {
            base,
            crm: Side::Unseen,
            ews,
            link,
            held: false,
        }
    }

    /// The step proper: a page of Exchange changes (when `pull`), the queued CRM rows (unless
    /// `shared_only`), planned together and carried out; then the folder's state. Returns
    /// whether there is more.
    pub(crate) async fn sync(
        &mut self,
        shared: bool,
        pull: bool,
        full: bool,
        extra: Vec<ItemId>,
    ) -> Result<bool, SyncError> {
        let mut more = false;
        let mut page = Page::default();
        let folder = if pull || !extra.is_empty() {
            Some(self.folder_state(shared).await?)
        } else {
            None
        };
        if let (true, Some(folder)) = (pull, &folder) {
            if full || folder.sync_state.is_none() {
                // From scratch: whatever the listing does not report is checked, so a
                // folder emptied or recreated meanwhile does not leave rows behind.
                self.unverify_folder(shared).await?;
            }
            let from = if full {
                None
            } else {
                folder.sync_state.clone()
            };
            page = self.read_page(shared, folder, from, true).await?;
            more |= !page.complete;
        }
        if !extra.is_empty() {
            let (seen, missing) = self.fetch(&extra, shared).await?;
            page.seen.extend(seen);
            page.gone.extend(missing);
        }
        let mut ctx = Context::default();
        if !shared {
            ctx.queued = self
                .engine
                .state
                .pending(self.smtp(), self.table, QUEUE_BATCH)
                .await
                .map_err(db_error)?;
            self.seen += ctx.queued.len() as u64;
            more |= ctx.queued.len() as i64 == QUEUE_BATCH;
        }
        // What a complete read did not report of the mappings written after the stored state
        // (taken now: what this step writes is not covered by the state it stores).
        let open = if pull && page.complete {
            self.unverified_open(shared, &page.reported).await?
        } else {
            Vec::new()
        };
        let queued: Vec<i64> = ctx.queued.iter().map(|(id, _)| *id).collect();
        let seen = std::mem::take(&mut page.seen);
        let pairs = self.assemble(seen, &page.gone, &queued, &mut ctx).await?;
        let leave_queued = self.carry_out(pairs, &mut ctx).await?;
        if let (Some(next), Some(_)) = (page.next.take(), &folder) {
            self.engine
                .state
                .store_state_verifying(self.smtp(), self.folder_key(shared), &next, &page.reported)
                .await
                .map_err(db_error)?;
            self.check_unverified(shared, open).await?;
        }
        if !ctx.queued.is_empty() {
            let done: Vec<(i64, i64)> = ctx
                .queued
                .iter()
                .copied()
                .filter(|(id, _)| !leave_queued.contains(id))
                .collect();
            self.engine
                .state
                .clear_pending(self.smtp(), self.table, &done)
                .await
                .map_err(db_error)?;
        }
        Ok(more)
    }

    /// Marks the own (or shared) folder's mappings unverified before a read from scratch.
    async fn unverify_folder(&self, shared: bool) -> Result<(), SyncError> {
        let state = &self.engine.state;
        let mut all = state
            .mappings_of(self.smtp(), self.table)
            .await
            .map_err(db_error)?;
        all.retain(|m| to_base(m).shared == shared && !m.unverified);
        if all.is_empty() {
            return Ok(());
        }
        for m in &mut all {
            m.unverified = true;
        }
        state.put_mappings(&all).await.map_err(db_error)
    }

    /// The folder's mappings no stored state covers yet that a complete read did not report.
    pub(crate) async fn unverified_open(
        &self,
        shared: bool,
        reported: &[String],
    ) -> Result<Vec<ItemMapping>, SyncError> {
        let reported: HashSet<&String> = reported.iter().collect();
        Ok(self
            .engine
            .state
            .unverified_of(self.smtp(), self.table)
            .await
            .map_err(db_error)?
            .into_iter()
            .filter(|m| to_base(m).shared == shared && !reported.contains(&m.ews_item_id))
            .collect())
    }

    /// After a complete read: the folder's mappings no stored state covers yet were not
    /// reported by it (a read from an older state nets "created, then deleted" into
    /// nothing). Each is looked up: found, it is verified; gone, it is a delete like any other.
    pub(crate) async fn check_unverified(
        &mut self,
        shared: bool,
        open: Vec<ItemMapping>,
    ) -> Result<(), SyncError> {
        if open.is_empty() {
            return Ok(());
        }
        tracing::debug!(
            mailbox = self.smtp(),
            table = self.table,
            open = open.len(),
            "checking items a read did not report"
        );
        let folder = self.folder_state(shared).await?.ews_folder_id;
        let mut found = Vec::new();
        let mut gone = Vec::new();
        for chunk in open.chunks(ITEM_BATCH) {
            let get = GetItem {
                ids: chunk
                    .iter()
                    .map(|m| ItemId {
                        id: m.ews_item_id.clone(),
                        change_key: None,
                    })
                    .collect(),
                shape: Shape {
                    base: ews::types::BaseShape::IdOnly,
                    additional: vec![ews::types::PropertyPath::Field(
                        "item:ParentFolderId".into(),
                    )],
                },
            };
            let answers = self.engine.call(self.setup, self.ctx, &get).await?;
            for (m, a) in chunk.iter().zip(answers) {
                // An id the mailbox refuses on its own (while the folder itself reads fine)
                // is not this mailbox's item: one of a mailbox deleted and recreated.
                let a = match a {
                    Err(ews::Error::Denied { code, .. }) => Err(ews::Error::NotFound(code)),
                    other => other,
                };
                match ItemOutcome::from_read(a)? {
                    ItemOutcome::Gone => gone.push(m.ews_item_id.clone()),
                    // Moved out of the folder (Outlook's "Delete" moves to Deleted Items):
                    // gone from here.
                    ItemOutcome::Written(item)
                        if item
                            .parent()
                            .is_some_and(|p| Some(&p.id) != folder.as_ref()) =>
                    {
                        gone.push(m.ews_item_id.clone())
                    }
                    ItemOutcome::Written(_) => found.push(m.ews_item_id.clone()),
                    other => tracing::debug!(
                        mailbox = self.smtp(),
                        ews_id = m.ews_item_id,
                        ?other,
                        "an unverified item could not be checked; it stays unverified"
                    ),
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
                table = self.table,
                count = gone.len(),
                "items written since the folder's last read are gone from Exchange"
            );
            let mut ctx = Context::default();
            let pairs = self.assemble(Vec::new(), &gone, &[], &mut ctx).await?;
            self.carry_out(pairs, &mut ctx).await?;
        }
        Ok(())
    }
}
