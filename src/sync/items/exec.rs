//! The executor of contacts, calendar and tasks plans: the breaker first (deletes over the
//! limits are held), then Exchange (DeleteItem, CreateItem, UpdateItem — each batched, with a
//! typed outcome per item), then the CRM for the pairs whose Exchange write went through,
//! then the mappings. Exchange goes first so that a step failing halfway has written nothing
//! to the CRM that a later merge could take for an ERP edit: an Exchange write that landed is
//! seen again as Exchange holding the merged values, which agree with the CRM's.

use std::collections::{HashMap, HashSet};

use ews::ops::{CreateItem, DeleteItem, DeleteType, ItemUpdate};
use ews::types::{FolderRef, ItemId};
use mailsync_actors::SyncError;

use super::plan::{self, ConflictNote, Decision, EwsWrite, MapOp, Pair, Side};
use super::read::Context;
use super::stamp::{Change, Of};
use super::{base_json, ItemStep, ITEM_BATCH};
use crate::db::rows::CrmRow;
use crate::db::state::{Conflict, Failure, ItemMapping};
use crate::sync::core::{db_error, own_version, ItemOutcome};
use crate::sync::events::{Action, Direction, FailureKind, ItemParked};
use crate::sync::fields::{self, Fields};

/// The execution state of one decision.
pub(super) struct Slot {
    pub(super) d: Decision,
    /// The item the pair ends with (new id or new ChangeKey).
    pub(super) ews: Option<ItemId>,
    /// The row and version the pair ends with.
    pub(super) crm: Option<(i64, i64)>,
    /// The mapping was written with the row (same database, same transaction).
    pub(super) mapped: bool,
    /// Nothing more is done for this pair in this step (parked, changed meanwhile, skipped).
    pub(super) stop: bool,
    /// The row stays queued for the next step.
    pub(super) requeue: bool,
    /// Exchange no longer has the item the update was for: decided again.
    pub(super) gone: bool,
    /// The item carries the stamp after this step.
    pub(super) stamped: bool,
    /// The item was written after the folder's stored state.
    pub(super) unverified: bool,
    /// Linked to a row that already carried the item: its values are reconciled by a
    /// step of its own (the mapping records no version, and the row is queued).
    pub(super) relinked: bool,
}

pub(super) fn with_uid(row: CrmRow, uid: Option<String>) -> CrmRow {
    match row {
        CrmRow::Appointment(mut a) => {
            a.uid = uid;
            CrmRow::Appointment(a)
        }
        other => other,
    }
}

pub(super) fn uid_of(row: &CrmRow) -> Option<String> {
    match row {
        CrmRow::Appointment(a) => a.uid.clone(),
        _ => None,
    }
}

impl ItemStep<'_> {
    /// Parks an item in the failure log, with its next retry time.
    pub(crate) async fn park(
        &mut self,
        crm_id: i64,
        ews_id: &str,
        kind: FailureKind,
        reason: &str,
    ) {
        self.parked.insert((crm_id, ews_id.to_owned()));
        ItemParked {
            mailbox: self.smtp(),
            area: self.area.as_str(),
            table: self.table,
            crm_id,
            ews_id,
            kind,
            reason,
        }
        .emit(&self.engine.metrics);
        let state = &self.engine.state;
        let attempts = state
            .failure_attempts(self.smtp(), self.table, crm_id, ews_id)
            .await
            .unwrap_or(0);
        let next = crate::db::integrity::next_retry(attempts + 1, chrono::Utc::now());
        let failure = Failure {
            mailbox: self.smtp().to_owned(),
            crm_table: self.table.to_owned(),
            crm_id,
            ews_item_id: ews_id.to_owned(),
            error: reason.to_owned(),
            attempts: 1,
        };
        if let Err(e) = state.record_failure(&failure, Some(next)).await {
            tracing::error!(error = %e, "recording a failure failed");
        }
    }

    async fn log_conflict(&self, d: &Decision, c: &ConflictNote) -> Result<(), SyncError> {
        let resolution = match c.winner {
            crate::db::state::Winner::Crm => "crm_wins",
            crate::db::state::Winner::Exchange => "exchange_wins",
        };
        self.engine
            .metrics
            .conflicts
            .with_label_values(&[self.area.as_str(), resolution])
            .inc();
        let conflict = Conflict {
            mailbox: self.smtp().to_owned(),
            crm_table: self.table.to_owned(),
            crm_id: d.crm_id,
            ews_item_id: d.ews_id.clone(),
            fields: c.fields.clone(),
            winner: c.winner,
        };
        tracing::info!(
            mailbox = self.smtp(),
            table = self.table,
            crm_id = d.crm_id,
            fields = ?c.fields,
            crm = ?c.crm,
            exchange = ?c.ews,
            merged = ?c.merged,
            "conflict"
        );
        let json = |f: &Fields| serde_json::to_value(f).unwrap_or_default();
        let values = crate::db::state::ConflictValues::of(
            &c.fields,
            &json(&c.crm),
            &json(&c.ews),
            &json(&c.merged),
        );
        self.engine
            .state
            .log_conflict_values(&conflict, &values)
            .await
            .map_err(db_error)
    }

    /// Plans the pairs, holds what the breaker stops, and carries out the rest. Returns the
    /// queued rows that must stay queued.
    pub(crate) async fn carry_out(
        &mut self,
        pairs: Vec<Pair>,
        ctx: &mut Context,
    ) -> Result<HashSet<i64>, SyncError> {
        let decisions = plan::plan(&pairs, &self.config);
        self.carry_out_decisions(decisions, ctx, true, true).await
    }

    /// Carries decisions out, after the breaker (`breaker`); `again`: an update that finds its
    /// item gone is decided anew once.
    pub(crate) async fn carry_out_decisions(
        &mut self,
        decisions: Vec<Decision>,
        ctx: &mut Context,
        again: bool,
        breaker: bool,
    ) -> Result<HashSet<i64>, SyncError> {
        tracing::debug!(
            mailbox = self.smtp(),
            table = self.table,
            decisions = decisions.len(),
            deletes = decisions.iter().filter(|d| d.delete().is_some()).count(),
            "carrying out a plan"
        );
        let decisions = if breaker {
            self.hold(decisions).await?
        } else {
            decisions
        };
        let mut slots: Vec<Slot> = decisions
            .into_iter()
            .map(|d| Slot {
                stamped: d.base.as_ref().is_some_and(|b| b.stamped),
                unverified: d
                    .base
                    .as_ref()
                    .and_then(|b| ctx.maps.get(&b.crm_id))
                    .is_some_and(|m| m.unverified),
                d,
                ews: None,
                crm: None,
                mapped: false,
                stop: false,
                requeue: false,
                gone: false,
                relinked: false,
            })
            .collect();
        for s in &mut slots {
            if let Some(reason) = s.d.fail.clone() {
                s.stop = true;
                let ews = s.d.ews_id.clone().unwrap_or_default();
                self.park(
                    s.d.crm_id.unwrap_or(0),
                    &ews,
                    FailureKind::InvalidRow,
                    &reason,
                )
                .await;
            }
        }
        self.exchange_deletes(&mut slots).await?;
        self.exchange_creates(&mut slots).await?;
        self.exchange_updates(&mut slots).await?;
        self.crm_writes(&mut slots, ctx).await?;
        self.record(&mut slots, ctx).await?;
        let mut leave = HashSet::new();
        let mut gone = Vec::new();
        for s in &slots {
            if s.requeue {
                if let Some(id) = s.d.crm_id {
                    leave.insert(id);
                }
            }
            if s.gone {
                gone.push(s.d.clone());
            }
        }
        if again && !gone.is_empty() {
            // Deleted in Exchange (perhaps before any SyncFolderItems could report it) while
            // changed in the CRM: decided as such.
            let pairs: Vec<Pair> = gone
                .into_iter()
                .filter_map(|d| {
                    let base = d.base.clone()?;
                    let row = ctx.rows.get(&base.crm_id)?;
                    let obs = plan::CrmObs {
                        id: row.id(),
                        version: crate::db::rows::version_of(row),
                        fields: fields::from_row(row).ok()?,
                        scope: super::read::scope_of(self.owner, row),
                        problems: crate::db::rows::problems(row),
                    };
                    Some(Pair {
                        base: Some(base),
                        crm: Side::Here(obs),
                        ews: Side::Gone,
                        link: None,
                        held: false,
                    })
                })
                .collect();
            let decisions = plan::plan(&pairs, &self.config);
            leave.extend(Box::pin(self.carry_out_decisions(decisions, ctx, false, true)).await?);
        }
        Ok(leave)
    }
    async fn exchange_deletes(&mut self, slots: &mut [Slot]) -> Result<(), SyncError> {
        let todo: Vec<(usize, ItemId)> = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.stop)
            .filter_map(|(i, s)| match &s.d.ews {
                Some(EwsWrite::Delete { id }) | Some(EwsWrite::Recreate { old: id, .. }) => Some((
                    i,
                    ItemId {
                        id: id.id.clone(),
                        change_key: None,
                    },
                )),
                _ => None,
            })
            .collect();
        for chunk in todo.chunks(ITEM_BATCH) {
            let op = DeleteItem {
                ids: chunk.iter().map(|(_, id)| id.clone()).collect(),
                delete_type: DeleteType::MoveToDeletedItems,
            };
            let results = self.engine.call(self.setup, self.ctx, &op).await?;
            for ((i, id), r) in chunk.iter().zip(results) {
                let slot = &mut slots[*i];
                match ItemOutcome::from_write(r)? {
                    ItemOutcome::Written(()) | ItemOutcome::Gone => {
                        if matches!(slot.d.ews, Some(EwsWrite::Delete { .. })) {
                            self.counted(Direction::ToExchange, Action::Delete);
                        }
                    }
                    ItemOutcome::Changed | ItemOutcome::Skipped => {
                        slot.stop = true;
                        slot.requeue = true;
                        self.needs_pull = true;
                    }
                    ItemOutcome::Rejected(e) => {
                        slot.stop = true;
                        let crm_id = slot.d.crm_id.unwrap_or(0);
                        self.park(
                            crm_id,
                            &id.id,
                            FailureKind::RejectedByExchange,
                            &format!("Exchange refused to delete the item: {e}"),
                        )
                        .await;
                    }
                }
            }
        }
        Ok(())
    }

    async fn exchange_creates(&mut self, slots: &mut [Slot]) -> Result<(), SyncError> {
        for shared in [false, true] {
            let todo: Vec<usize> = slots
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.stop)
                .filter(|(_, s)| {
                    matches!(&s.d.ews, Some(EwsWrite::Create { shared: sh, .. }) | Some(EwsWrite::Recreate { shared: sh, .. }) if *sh == shared)
                })
                .map(|(i, _)| i)
                .collect();
            if todo.is_empty() {
                continue;
            }
            let folder = self.folder_state(shared).await?;
            let folder_ref = FolderRef::Id(ItemId {
                id: folder.ews_folder_id.unwrap_or_default(),
                change_key: None,
            });
            // Items a crash (or a failed round) left in Exchange after CreateItem but before
            // the mapping: linked, not created twice.
            let key = (self.smtp().to_owned(), self.table.to_owned(), shared);
            let verify = !self.engine.clean.lock().remove(&key) && !self.listed_all;
            let mut existing = if verify {
                let ids: Vec<i64> = todo.iter().filter_map(|i| slots[*i].d.crm_id).collect();
                let mut found = self
                    .engine
                    .find_stamped(self.setup, self.ctx, &folder_ref, self.table, &ids)
                    .await?;
                // An item another CRM row already holds (its `ews_id`) is that row's,
                // whatever its stamp says: a row restored from Exchange gets a new id while its
                // item keeps the old one in its stamp, and the database may hand that old id
                // out again. Linking it would fail on the unique `ews_id` every time.
                let found_ids: Vec<String> = found.values().map(|i| i.id.clone()).collect();
                let held_by = self
                    .engine
                    .crm
                    .ids_by_ews_ids(self.table, &found_ids)
                    .await
                    .map_err(db_error)?;
                found.retain(|crm_id, item| held_by.get(&item.id).is_none_or(|row| row == crm_id));
                found
            } else {
                HashMap::new()
            };
            let mut create = Vec::new();
            for i in todo {
                let slot = &mut slots[i];
                let crm_id = slot.d.crm_id.unwrap_or(0);
                if let Some(id) = existing.remove(&crm_id) {
                    slot.ews = Some(id);
                    slot.stamped = true;
                    slot.unverified = true;
                    continue;
                }
                let values = match &slot.d.ews {
                    Some(EwsWrite::Create { fields, .. })
                    | Some(EwsWrite::Recreate { fields, .. }) => fields,
                    _ => continue,
                };
                match fields::to_item(self.area, values, &fields::crm_stamp(self.table, crm_id)) {
                    Ok(item) => create.push((i, item)),
                    Err(e) => {
                        slot.stop = true;
                        self.park(crm_id, "", FailureKind::InvalidRow, &e).await;
                    }
                }
            }
            let mut failed = None;
            // The batch that landed last is recorded while the next CreateItem is on the wire
            // (the database and Exchange work side by side). A crash or a failed record in
            // between leaves created, stamped items without a mapping — the same as a crash
            // right after a CreateItem: the next listing or stamp search links them. Not in a
            // cluster: there a refused (fenced) record must stop the mailbox before another
            // CreateItem goes out, as every other write path does.
            let pipelined = crate::cluster::fence::current().is_none();
            let mut landed: Vec<usize> = Vec::new();
            for chunk in create.chunks(ITEM_BATCH) {
                let mut made_now: Vec<usize> = Vec::new();
                let op = CreateItem {
                    folder: Some(folder_ref.clone()),
                    items: chunk.iter().map(|(_, item)| item.clone()).collect(),
                    disposition: None,
                };
                let (results, recorded) = futures_util::future::join(
                    self.engine.call(self.setup, self.ctx, &op),
                    self.record_batch(slots, &landed),
                )
                .await;
                if recorded.is_ok() && !landed.is_empty() {
                    landed.clear();
                    self.ctx.progress();
                }
                // What this request created is taken in (ids, counts, refusals parked) even
                // when the record beside it failed: those items stay findable by their stamps.
                let results = match results {
                    Ok(r) => r,
                    Err(e) => {
                        recorded?;
                        failed = Some(e);
                        break;
                    }
                };
                for ((i, _), r) in chunk.iter().zip(results) {
                    let slot = &mut slots[*i];
                    let crm_id = slot.d.crm_id.unwrap_or(0);
                    match ItemOutcome::from_write(r) {
                        Ok(ItemOutcome::Written(id)) => {
                            self.engine.note_own_write(&id);
                            slot.ews = Some(id);
                            slot.stamped = true;
                            slot.unverified = true;
                            made_now.push(*i);
                            self.counted(Direction::ToExchange, Action::Create);
                        }
                        Ok(ItemOutcome::Rejected(e)) => {
                            slot.stop = true;
                            self.park(
                                crm_id,
                                "",
                                FailureKind::RejectedByExchange,
                                &format!("Exchange refused the item: {e}"),
                            )
                            .await;
                        }
                        Ok(_) => {
                            slot.stop = true;
                            slot.requeue = true;
                            self.needs_pull = true;
                        }
                        Err(e) => {
                            // Throttled or transient: what was created is recorded first.
                            slot.stop = true;
                            slot.requeue = true;
                            failed.get_or_insert(e);
                        }
                    }
                }
                recorded?;
                // Each batch is recorded as it lands (progress that survives a kill): with
                // the next request, or at once in a cluster.
                if pipelined {
                    landed = made_now;
                } else {
                    self.record_batch(slots, &made_now).await?;
                    self.ctx.progress();
                }
            }
            self.record_batch(slots, &landed).await?;
            // Items the stamp search found are recorded too.
            let found: Vec<usize> = slots
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.mapped && s.ews.is_some() && matches!(&s.d.ews, Some(EwsWrite::Create { shared: sh, .. }) | Some(EwsWrite::Recreate { shared: sh, .. }) if *sh == shared))
                .map(|(i, _)| i)
                .collect();
            self.record_batch(slots, &found).await?;
            if let Some(e) = failed {
                return Err(e);
            }
            self.engine.clean.lock().insert(key);
        }
        Ok(())
    }

    /// Records created items: their Exchange ids on the rows (one statement), then their
    /// mappings with the rows' versions after that write, so the write is our own.
    async fn record_batch(&self, slots: &mut [Slot], made: &[usize]) -> Result<(), SyncError> {
        let rows: Vec<(i64, String)> = made
            .iter()
            .filter_map(|i| Some((slots[*i].d.crm_id?, slots[*i].ews.as_ref()?.id.clone())))
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        let written = self
            .engine
            .crm
            .set_ews_ids(self.table, &rows)
            .await
            .map_err(db_error)?;
        let versions: HashMap<i64, Option<i64>> =
            rows.iter().map(|(id, _)| *id).zip(written).collect();
        let mut mappings = Vec::new();
        for i in made {
            let s = &mut slots[*i];
            if let (Some(id), Some(read)) = (s.d.crm_id, s.d.crm_version) {
                s.crm = own_version(read, versions.get(&id).copied().flatten()).map(|v| (id, v));
            }
            if let Some(m) = self.mapping_of(s) {
                mappings.push(m);
                s.mapped = true;
            }
        }
        self.engine
            .state
            .put_mappings(&mappings)
            .await
            .map_err(db_error)
    }

    async fn exchange_updates(&mut self, slots: &mut [Slot]) -> Result<(), SyncError> {
        let todo: Vec<usize> = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.stop && matches!(s.d.ews, Some(EwsWrite::Update { .. })))
            .map(|(i, _)| i)
            .collect();
        let mut changes: Vec<Change> = Vec::new();
        for i in todo {
            let slot = &mut slots[i];
            let Some(EwsWrite::Update {
                id,
                fields: values,
                changed,
            }) = &slot.d.ews
            else {
                continue;
            };
            let crm_id = slot.d.crm_id.unwrap_or(0);
            let item =
                match fields::to_item(self.area, values, &fields::crm_stamp(self.table, crm_id)) {
                    Ok(item) => item,
                    Err(e) => {
                        slot.stop = true;
                        self.park(crm_id, &id.id, FailureKind::InvalidRow, &e).await;
                        continue;
                    }
                };
            changes.push(Change {
                of: Of::Slot(i),
                crm_id,
                update: self.item_update(id, &item, changed),
            });
        }
        if changes.is_empty() {
            return Ok(());
        }
        // Imports that still wait for their stamp ride along at no extra request.
        let room = (ITEM_BATCH - changes.len() % ITEM_BATCH) % ITEM_BATCH;
        if room > 0 {
            let busy: HashSet<i64> = changes.iter().map(|c| c.crm_id).collect();
            for m in self
                .engine
                .state
                .unstamped_of(self.smtp(), self.table, i64::MIN, room as i64)
                .await
                .map_err(db_error)?
            {
                if !busy.contains(&m.crm_id) {
                    changes.push(self.stamp_change(m));
                }
            }
        }
        self.send_updates(slots, changes).await
    }

    pub(super) fn item_update(
        &self,
        id: &ItemId,
        item: &ews::items::Item,
        changed: &[String],
    ) -> ItemUpdate {
        let keys: HashSet<String> = changed
            .iter()
            .flat_map(|n| fields::property_keys(self.area, n))
            .collect();
        ItemUpdate {
            id: id.clone(),
            updates: item
                .updates()
                .into_iter()
                .filter(|u| keys.contains(&u.key()) || u.key().starts_with("ext:"))
                .collect(),
        }
    }

    /// The mapping a finished slot ends with.
    fn mapping_of(&self, s: &Slot) -> Option<ItemMapping> {
        let MapOp::Put {
            fields: values,
            shared,
        } = &s.d.map
        else {
            // A create that was recorded before a failure has a Put.
            return None;
        };
        let (crm_id, version) = match s.crm {
            Some((id, _)) if s.relinked => (id, None),
            Some((id, v)) => (id, Some(v)),
            None => (s.d.crm_id?, s.d.crm_version),
        };
        let ews = s.ews.clone().or_else(|| {
            s.d.ews_id.clone().map(|id| ItemId {
                id,
                change_key: s.d.ews_change_key.clone(),
            })
        })?;
        Some(ItemMapping {
            mailbox: self.smtp().to_owned(),
            crm_table: self.table.to_owned(),
            crm_id,
            ews_item_id: ews.id,
            change_key: ews.change_key,
            crm_version: version,
            fields: base_json(values, *shared),
            stamped: s.stamped,
            unverified: s.unverified,
        })
    }

    /// Mappings, conflicts, counts.
    async fn record(&mut self, slots: &mut [Slot], ctx: &Context) -> Result<(), SyncError> {
        let mut put = Vec::new();
        let mut drop_ids = Vec::new();
        for s in slots.iter() {
            if s.stop {
                continue;
            }
            if let Some(c) = &s.d.conflict {
                self.log_conflict(&s.d, c).await?;
            }
            if let Some(link) = &s.d.link {
                *self.links.entry(link.kind().to_owned()).or_default() += 1;
                self.counted(Direction::ToCrm, Action::Link);
            }
            match &s.d.map {
                MapOp::Keep => {}
                MapOp::Drop => {
                    if let Some(b) = &s.d.base {
                        if ctx.maps.contains_key(&b.crm_id) || s.d.link.is_none() {
                            drop_ids.push(b.crm_id);
                        }
                    }
                }
                MapOp::Put { .. } => {
                    // (An inserted row's old mapping went before the insert: a database that
                    // reuses ids may give the new row an id another pair just left.)
                    if let (Some(b), None) = (&s.d.base, &s.d.crm) {
                        let new_id = s.crm.map(|(id, _)| id).or(s.d.crm_id);
                        if new_id != Some(b.crm_id) && ctx.maps.contains_key(&b.crm_id) {
                            drop_ids.push(b.crm_id);
                        }
                    }
                    if !s.mapped {
                        if let Some(m) = self.mapping_of(s) {
                            put.push(m);
                        }
                    }
                }
            }
        }
        let state = &self.engine.state;
        state
            .delete_mappings(self.smtp(), self.table, &drop_ids)
            .await
            .map_err(db_error)?;
        state.put_mappings(&put).await.map_err(db_error)?;
        let relinked: Vec<(String, String, i64)> = slots
            .iter()
            .filter(|s| s.relinked)
            .filter_map(|s| Some((self.smtp().to_owned(), self.table.to_owned(), s.crm?.0)))
            .collect();
        state.add_pending(&relinked).await.map_err(db_error)?;
        // What synced leaves the failure log.
        let ok: Vec<i64> = slots
            .iter()
            .filter(|s| !s.stop)
            .filter_map(|s| s.crm.map(|(id, _)| id).or(s.d.crm_id))
            .collect();
        if !ok.is_empty() {
            state
                .clear_failures(self.smtp(), self.table, &ok)
                .await
                .map_err(db_error)?;
        }
        Ok(())
    }
}
