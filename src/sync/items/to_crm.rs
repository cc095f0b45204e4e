//! The CRM side of the executor: the rows a plan writes from Exchange, a batch at a time.
//!
//! Inserts and updates of a step (or of a first-contact chunk) go to the business database in
//! one transaction ([`crate::db::Db::save_many_from_exchange`]): a commit per chunk, not per
//! row. Each row still gets its own outcome — written, already imported (linked), or changed
//! in the CRM meanwhile (merged again next step) — exactly as the row-by-row write gave them.
//! With the state store in the same database the mappings commit with the rows; apart, every
//! row carries its `ews_id`, which links it again should the mapping be lost.

use mailsync_actors::SyncError;

use super::exec::{uid_of, with_uid, Slot};
use super::plan::CrmWrite;
use super::read::Context;
use super::{base_json, ItemStep};
use crate::db::state::ItemMapping;
use crate::db::write::{ExchangeWrite, Saved};
use crate::db::DbError;
use crate::sync::core::db_error;
use crate::sync::events::{Action, Direction, FailureKind};
use crate::sync::fields;

impl ItemStep<'_> {
    /// Carries out the CRM writes of the slots whose Exchange side went through.
    pub(super) async fn crm_writes(
        &mut self,
        slots: &mut [Slot],
        ctx: &Context,
    ) -> Result<(), SyncError> {
        // Pairs whose row comes back (restored, or recreated because Exchange leads) lose
        // their old mapping first, all of them before any insert: a database that reuses ids
        // may give a new row the id another pair of this batch is leaving.
        let leaving: Vec<i64> = slots
            .iter()
            .filter(|s| !s.stop && matches!(s.d.crm, Some(CrmWrite::Insert { .. })))
            .filter_map(|s| s.d.base.as_ref().map(|b| b.crm_id))
            .collect();
        self.engine
            .state
            .delete_mappings(self.smtp(), self.table, &leaving)
            .await
            .map_err(db_error)?;
        let mut batch: Vec<(usize, ExchangeWrite)> = Vec::new();
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.stop {
                continue;
            }
            match slot.d.crm.clone() {
                Some(CrmWrite::Insert {
                    ews_id,
                    fields: values,
                    shared,
                }) => {
                    let owner = (!shared).then_some(self.owner.operator_id);
                    let row =
                        match fields::to_row(self.area, &values, 0, self.owner.tenant_id, owner, 0)
                        {
                            Ok(r) => with_uid(r, ctx.uids.get(&ews_id).cloned()),
                            Err(e) => {
                                slot.stop = true;
                                self.park(0, &ews_id, FailureKind::InvalidRow, &e).await;
                                continue;
                            }
                        };
                    // With the state store in the business database, the mapping commits
                    // with the row; apart, the row carries the Exchange id, which links it
                    // again should the mapping be lost (unique per table).
                    let mapping = self.engine.same_db.then(|| ItemMapping {
                        mailbox: self.smtp().to_owned(),
                        crm_table: self.table.to_owned(),
                        crm_id: 0,
                        ews_item_id: ews_id.clone(),
                        change_key: slot.d.ews_change_key.clone(),
                        crm_version: None,
                        fields: base_json(&values, shared),
                        stamped: false,
                        unverified: true,
                    });
                    batch.push((
                        i,
                        ExchangeWrite {
                            row,
                            ews_id,
                            mapping,
                        },
                    ));
                }
                Some(CrmWrite::Update {
                    id,
                    version,
                    fields: values,
                    ..
                }) => {
                    let Some(current) = ctx.rows.get(&id) else {
                        continue;
                    };
                    let (tenant, owner) = crate::db::rows::tenant_owner(current);
                    let row = match fields::to_row(self.area, &values, id, tenant, owner, version) {
                        // The UID is not a synced field: the row keeps its own.
                        Ok(r) => with_uid(r, uid_of(current)),
                        Err(e) => {
                            slot.stop = true;
                            let ews = slot.d.ews_id.clone().unwrap_or_default();
                            self.park(id, &ews, FailureKind::InvalidRow, &e).await;
                            continue;
                        }
                    };
                    let s = &*slot;
                    let ews_id = s
                        .ews
                        .as_ref()
                        .map(|i| i.id.clone())
                        .or(s.d.ews_id.clone())
                        .unwrap_or_default();
                    batch.push((
                        i,
                        ExchangeWrite {
                            row,
                            ews_id,
                            mapping: None,
                        },
                    ));
                }
                _ => {}
            }
        }
        let (order, writes): (Vec<usize>, Vec<ExchangeWrite>) = batch.into_iter().unzip();
        let saved = self
            .engine
            .crm
            .save_many_from_exchange(&writes)
            .await
            .map_err(db_error)?;
        for ((i, w), outcome) in order.into_iter().zip(&writes).zip(saved) {
            let s = &mut slots[i];
            let insert = w.row.id() == 0;
            match (insert, outcome) {
                (true, Saved::Written(id, version)) => {
                    s.crm = Some((id, version));
                    s.mapped = w.mapping.is_some();
                    s.stamped = false;
                    s.unverified = true;
                    self.counted(Direction::ToCrm, Action::Create);
                }
                // A row already carries the item (imported before a crash lost the mapping,
                // or a racing writer): linked, not inserted twice. Its values are merged with
                // the item's by the next read of the pair.
                (true, Saved::Duplicate(id, version)) => {
                    tracing::info!(
                        mailbox = self.smtp(),
                        table = self.table,
                        crm_id = id,
                        ews_id = w.ews_id,
                        "the item's row exists already; linked"
                    );
                    s.relinked = true;
                    s.crm = Some((id, version));
                    s.mapped = false;
                    s.stamped = false;
                    s.unverified = true;
                    self.counted(Direction::ToCrm, Action::Create);
                }
                (false, Saved::Written(id, version)) => {
                    s.crm = Some((id, version));
                    self.counted(Direction::ToCrm, Action::Update);
                }
                // Changed in the CRM meanwhile: merged again in the next step.
                (_, Saved::Stale) => {
                    s.stop = true;
                    s.requeue = true;
                    self.needs_pull = true;
                }
                (false, Saved::Duplicate(id, version)) => {
                    return Err(db_error(DbError::Duplicate {
                        table: w.row.table(),
                        ews_id: w.ews_id.clone(),
                        existing: (id, version),
                    }))
                }
            }
        }
        for s in slots.iter_mut().filter(|s| !s.stop) {
            if let Some(CrmWrite::Delete { id }) = s.d.crm {
                self.engine
                    .crm
                    .delete_crm_row(self.table, id)
                    .await
                    .map_err(db_error)?;
                self.counted(Direction::ToCrm, Action::Delete);
            }
        }
        Ok(())
    }
}
