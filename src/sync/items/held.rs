//! Held deletes and parked items of contacts, calendar and tasks: the breaker that holds a
//! plan's deletes over the limits, the carrying out of administrators' decisions on them, and
//! the retry of parked items when their time has come.

use std::collections::{HashMap, HashSet};

use ews::types::ItemId;
use mailsync_actors::SyncError;

use super::plan::{CrmWrite, Decision, EwsWrite, MapOp};
use super::read::Context;
use super::ItemStep;
use crate::db::integrity::{Decision as Verdict, Held, Side as HeldSide};
use crate::db::rows::CrmRow;
use crate::sync::core::db_error;
use crate::sync::events::{Action, DeletesHeld, Direction};
use crate::sync::fields;

impl ItemStep<'_> {
    /// The breaker: counts the deletes per scope and side, holds those over the limits.
    pub(crate) async fn hold(
        &mut self,
        decisions: Vec<Decision>,
    ) -> Result<Vec<Decision>, SyncError> {
        let deletes: Vec<(bool, HeldSide, String)> = decisions
            .iter()
            .filter_map(|d| {
                let id = match (d.crm_id, &d.ews_id) {
                    (Some(c), _) => c.to_string(),
                    (None, Some(e)) => e.clone(),
                    (None, None) => String::new(),
                };
                d.delete().map(|side| (d.shared, side, id))
            })
            .collect();
        if deletes.is_empty() {
            return Ok(decisions);
        }
        let state = &self.engine.state;
        let mappings = state
            .mappings_of(self.smtp(), self.table)
            .await
            .map_err(db_error)?;
        let held_now = state
            .held(self.smtp(), Some(self.table))
            .await
            .map_err(db_error)?;
        let mut stopped: HashSet<(bool, HeldSide)> = HashSet::new();
        let now = std::time::Instant::now();
        for shared in [false, true] {
            for side in [HeldSide::Crm, HeldSide::Exchange] {
                let ids: Vec<String> = deletes
                    .iter()
                    .filter(|d| (d.0, d.1) == (shared, side))
                    .map(|d| d.2.clone())
                    .collect();
                let size = mappings
                    .iter()
                    .filter(|m| super::to_base(m).shared == shared)
                    .count() as u64;
                let scope = if shared { "shared" } else { "own" };
                let already = held_now.iter().any(|h| h.scope == scope && h.side == side);
                // Judged with the deletes of this scope let through within the burst window.
                let key = (
                    self.smtp().to_owned(),
                    self.table.to_owned(),
                    scope.to_owned(),
                    side,
                );
                let (reason, count, size) = self.engine.recent_deletes.judge(
                    key,
                    &ids,
                    size,
                    self.setup.breaker,
                    already,
                    now,
                );
                if let Some(reason) = reason {
                    DeletesHeld {
                        mailbox: self.smtp(),
                        area: self.area.as_str(),
                        scope,
                        side: side.as_str(),
                        count: count as usize,
                        of: size,
                        reason: &reason.describe(),
                    }
                    .emit();
                    stopped.insert((shared, side));
                }
            }
        }
        if stopped.is_empty() {
            return Ok(decisions);
        }
        let mut keep = Vec::with_capacity(decisions.len());
        let mut held = Vec::new();
        for d in decisions {
            match d.delete() {
                Some(side) if stopped.contains(&(d.shared, side)) => {
                    let title = d
                        .base
                        .as_ref()
                        .map(|b| fields::title(self.area, &b.fields))
                        .unwrap_or_default();
                    held.push(Held {
                        mailbox: self.smtp().to_owned(),
                        crm_table: self.table.to_owned(),
                        scope: if d.shared { "shared" } else { "own" }.to_owned(),
                        side,
                        crm_id: d.crm_id.unwrap_or(0),
                        ews_item_id: d.ews_id.clone().unwrap_or_default(),
                        title,
                        decision: None,
                    });
                }
                _ => keep.push(d),
            }
        }
        self.held += held.len() as u64;
        state.hold(&held).await.map_err(db_error)?;
        Ok(keep)
    }

    /// Carries out administrators' decisions on held deletes: approved deletes are applied;
    /// rejected ones are restored on the side that deleted, from the other side.
    pub(crate) async fn settle_held(&mut self) -> Result<(), SyncError> {
        let held = self
            .engine
            .state
            .held(self.smtp(), Some(self.table))
            .await
            .map_err(db_error)?;
        let decided: Vec<Held> = held.into_iter().filter(|h| h.decision.is_some()).collect();
        if decided.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = decided.iter().map(|h| h.crm_id).collect();
        let maps = self
            .engine
            .state
            .mappings_by_crm(self.smtp(), self.table, &ids)
            .await
            .map_err(db_error)?;
        let rows: HashMap<i64, CrmRow> = self
            .engine
            .crm
            .crm_rows(self.table, &ids)
            .await
            .map_err(db_error)?
            .into_iter()
            .filter_map(|(id, r)| r.ok().map(|r| (id, r)))
            .collect();
        // An approved delete in Exchange meets the item as it is now: one edited in Outlook
        // since the hold (another ChangeKey) is newer than the delete and comes back to the
        // CRM instead.
        let approved_in_exchange: Vec<ItemId> = decided
            .iter()
            .filter(|h| h.decision == Some(Verdict::Approve) && h.side == HeldSide::Exchange)
            .filter_map(|h| maps.get(&h.crm_id))
            .map(|m| ItemId {
                id: m.ews_item_id.clone(),
                change_key: None,
            })
            .collect();
        let edited_in_exchange: HashSet<String> = if approved_in_exchange.is_empty() {
            HashSet::new()
        } else {
            let (seen, _gone) = self.fetch(&approved_in_exchange, false).await?;
            seen.into_iter()
                .filter(|s| {
                    maps.values().any(|m| {
                        m.ews_item_id == s.obs.id.id
                            && m.change_key.is_some()
                            && m.change_key != s.obs.id.change_key
                    })
                })
                .map(|s| s.obs.id.id)
                .collect()
        };
        let mut decisions = Vec::new();
        let mut restore_from_exchange = Vec::new();
        for h in &decided {
            let Some(m) = maps.get(&h.crm_id) else {
                continue;
            };
            let row_version = rows.get(&h.crm_id).map(crate::db::rows::version_of);
            // A row edited in the CRM since the hold (a version past the mapping's) is newer
            // than the delete from Exchange: it is restored there instead of deleted.
            let edited_in_crm = h.side == HeldSide::Crm
                && row_version.is_some()
                && m.crm_version.is_some()
                && row_version != m.crm_version;
            let verdict = match h.decision {
                Some(Verdict::Approve) if edited_in_crm => Some(Verdict::Reject),
                Some(Verdict::Approve)
                    if h.side == HeldSide::Exchange
                        && edited_in_exchange.contains(&m.ews_item_id) =>
                {
                    Some(Verdict::Reject)
                }
                other => other,
            };
            if verdict != h.decision {
                tracing::info!(
                    mailbox = self.smtp(),
                    table = self.table,
                    crm_id = h.crm_id,
                    "an approved delete met a newer edit; the record is kept and restored"
                );
            }
            // A restore that a failed step already carried out (the mapping names a new item)
            // is not made twice.
            if verdict == Some(Verdict::Reject)
                && h.side == HeldSide::Crm
                && !h.ews_item_id.is_empty()
                && m.ews_item_id != h.ews_item_id
            {
                continue;
            }
            let base = super::to_base(m);
            let mut d = Decision {
                crm_id: Some(h.crm_id),
                ews_id: Some(m.ews_item_id.clone()),
                base: Some(base.clone()),
                ews: None,
                crm: None,
                map: MapOp::Drop,
                conflict: None,
                fail: None,
                link: None,
                shared: base.shared,
                crm_version: rows.get(&h.crm_id).map(crate::db::rows::version_of),
                ews_change_key: None,
            };
            match (verdict, h.side) {
                (Some(Verdict::Approve), HeldSide::Crm) => {
                    d.crm = Some(CrmWrite::Delete { id: h.crm_id });
                }
                (Some(Verdict::Approve), HeldSide::Exchange) => {
                    d.ews = Some(EwsWrite::Delete {
                        id: base.ews.clone(),
                    });
                }
                (Some(Verdict::Reject), HeldSide::Crm) => {
                    // Gone from Exchange: the item comes back from the CRM row.
                    let Some(row) = rows.get(&h.crm_id) else {
                        continue;
                    };
                    let Ok(values) = fields::from_row(row) else {
                        continue;
                    };
                    d.ews = Some(EwsWrite::Create {
                        fields: values.clone(),
                        shared: base.shared,
                    });
                    d.ews_id = None;
                    d.map = MapOp::Put {
                        fields: values,
                        shared: base.shared,
                    };
                    self.counted(Direction::ToExchange, Action::Restore);
                }
                (Some(Verdict::Reject), HeldSide::Exchange) => {
                    // Gone from the CRM: the row comes back from the item.
                    restore_from_exchange.push((h.crm_id, base));
                    continue;
                }
                (None, _) => continue,
            }
            decisions.push(d);
        }
        if !restore_from_exchange.is_empty() {
            let ids: Vec<ItemId> = restore_from_exchange
                .iter()
                .map(|(_, b)| ItemId {
                    id: b.ews.id.clone(),
                    change_key: None,
                })
                .collect();
            let (seen, _missing) = self.fetch(&ids, false).await?;
            let by_id: HashMap<String, super::read::SeenItem> =
                seen.into_iter().map(|s| (s.obs.id.id.clone(), s)).collect();
            for (crm_id, base) in restore_from_exchange {
                let Some(s) = by_id.get(&base.ews.id) else {
                    continue;
                };
                decisions.push(Decision {
                    crm_id: Some(crm_id),
                    ews_id: Some(s.obs.id.id.clone()),
                    base: Some(base.clone()),
                    ews: None,
                    crm: Some(CrmWrite::Insert {
                        ews_id: s.obs.id.id.clone(),
                        fields: s.obs.fields.clone(),
                        shared: base.shared,
                    }),
                    map: MapOp::Put {
                        fields: s.obs.fields.clone(),
                        shared: base.shared,
                    },
                    conflict: None,
                    fail: None,
                    link: None,
                    shared: base.shared,
                    crm_version: None,
                    ews_change_key: s.obs.id.change_key.clone(),
                });
                self.counted(Direction::ToCrm, Action::Restore);
            }
        }
        // What an administrator decided does not pass the breaker again. The entries are
        // released only once the decision is carried out: a step that fails on the way keeps
        // them, and the next step carries out the rest (what is done already is skipped).
        let mut ctx = Context {
            rows,
            maps: maps.into_iter().collect(),
            ..Context::default()
        };
        self.carry_out_decisions(decisions, &mut ctx, false, false)
            .await?;
        self.engine
            .state
            .release_held(self.smtp(), self.table, &ids)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// Parked items whose retry time has come: queued CRM rows again; Exchange items read
    /// again in this step.
    pub(crate) async fn retry_due(&mut self) -> Result<Vec<ItemId>, SyncError> {
        let due = self
            .engine
            .state
            .due_failures(self.smtp(), self.table, chrono::Utc::now())
            .await
            .map_err(db_error)?;
        let mut rows = Vec::new();
        let mut items = Vec::new();
        let now = chrono::Utc::now();
        for f in due {
            // Taken: the next retry is due at the schedule's next point unless this one
            // clears it (so an item that neither fails nor syncs is not retried every step).
            let until = crate::db::integrity::next_retry(f.attempts + 1, now);
            self.engine
                .state
                .postpone_failure(self.smtp(), self.table, f.crm_id, &f.ews_item_id, until)
                .await
                .map_err(db_error)?;
            self.retried.push((f.crm_id, f.ews_item_id.clone()));
            if f.crm_id != 0 {
                rows.push((self.smtp().to_owned(), self.table.to_owned(), f.crm_id));
            } else if !f.ews_item_id.is_empty() {
                items.push(ItemId {
                    id: f.ews_item_id.clone(),
                    change_key: None,
                });
            }
        }
        self.engine
            .state
            .add_pending(&rows)
            .await
            .map_err(db_error)?;
        Ok(items)
    }
}
