//! UpdateItem in batches, pipelined: the executor's field updates and the CRM-id stamps of
//! imported items.
//!
//! An item imported from Exchange is recognised without its stamp (its mapping, and the
//! row's unique `ews_id`), so the stamp never costs a request of its own: it rides along with
//! the next UpdateItem of its folder, or waits until [`STAMP_BATCH`] imports wait (and at the
//! end of a first contact), and is then written many to a request with up to [`PIPELINE`]
//! requests in flight, each through the server's throttle. Every item of a batch has its own
//! outcome; an item Exchange refuses is parked alone (and its stamp is not offered again
//! until its retry), and the items Exchange did not attempt after it
//! (ErrorBatchProcessingStopped) are sent again at once in a request of their own.

use ews::ops::{ItemUpdate, UpdateItem};
use ews::types::ItemId;
use futures_util::stream::{self, StreamExt};
use mailsync_actors::SyncError;

use super::exec::Slot;
use super::{ItemStep, ITEM_BATCH, STAMP_BATCH};
use crate::config::Area;
use crate::db::state::ItemMapping;
use crate::sync::core::{db_error, ItemOutcome};
use crate::sync::events::{Action, Direction, FailureKind};
use crate::sync::fields;

/// Requests of one step in flight at once (GetItem, UpdateItem), each still passing the
/// server's throttle: enough to hide a round trip behind the others' work, few enough that
/// hundreds of mailboxes share the server's concurrency cap fairly.
pub(crate) const PIPELINE: usize = 4;
/// Waiting stamps read per round of [`ItemStep::stamp_waiting`].
const STAMP_PAGE: i64 = 1000;
/// A stamp that has waited this long is written by the folder's next step with whatever else
/// waits (at worst the periodic safety read's), so no import stays unstamped for good.
pub(crate) const STAMP_MAX_WAIT: chrono::TimeDelta = chrono::TimeDelta::minutes(15);

/// What one entry of an UpdateItem batch is for.
#[derive(Debug, Clone)]
pub(super) enum Of {
    /// A planned update: the executor's slot.
    Slot(usize),
    /// The stamp of an imported item, with the mapping it was read from.
    Stamp(ItemMapping),
}

/// One entry of an UpdateItem batch.
#[derive(Debug, Clone)]
pub(super) struct Change {
    /// What it is for.
    pub of: Of,
    /// The CRM row.
    pub crm_id: i64,
    /// The change sent.
    pub update: ItemUpdate,
}

impl ItemStep<'_> {
    /// A stamp-only change of a mapped item, with the ChangeKey we hold: refused if the item
    /// changed since, and then written with its next update.
    pub(super) fn stamp_change(&self, m: ItemMapping) -> Change {
        let extended = vec![ews::types::ExtendedProperty {
            uri: fields::crm_id_uri(),
            value: fields::crm_stamp(self.table, m.crm_id),
        }];
        let item = match self.area {
            Area::Contacts => ews::items::Item::Contact(ews::items::Contact {
                extended,
                ..Default::default()
            }),
            Area::Calendar => ews::items::Item::CalendarItem(ews::items::CalendarItem {
                extended,
                ..Default::default()
            }),
            _ => ews::items::Item::Task(ews::items::Task {
                extended,
                ..Default::default()
            }),
        };
        let update = self.item_update(
            &ItemId {
                id: m.ews_item_id.clone(),
                change_key: m.change_key.clone(),
            },
            &item,
            &[],
        );
        Change {
            crm_id: m.crm_id,
            of: Of::Stamp(m),
            update,
        }
    }

    /// Sends UpdateItem batches, [`PIPELINE`] at a time; per item: written, gone, changed
    /// since, refused, or not attempted (sent again while the rounds make progress). What was
    /// written is recorded even when a request fails; then the step fails with that error.
    pub(super) async fn send_updates(
        &mut self,
        slots: &mut [Slot],
        changes: Vec<Change>,
    ) -> Result<(), SyncError> {
        let mut stamped: Vec<(i64, String, Option<String>, Option<String>)> = Vec::new();
        let mut todo = changes;
        let mut failed = None;
        while !todo.is_empty() && failed.is_none() {
            let (engine, setup, ctx) = (self.engine, self.setup, self.ctx);
            let calendar = self.area == Area::Calendar;
            let batches: Vec<Vec<Change>> = todo.chunks(ITEM_BATCH).map(<[_]>::to_vec).collect();
            let sent = todo.len();
            let mut replies = stream::iter(batches)
                .map(|chunk| async move {
                    let op = UpdateItem {
                        changes: chunk.iter().map(|c| c.update.clone()).collect(),
                        conflict: ews::ops::ConflictResolution::NeverOverwrite,
                        disposition: None,
                        calendar,
                    };
                    (engine.call(setup, ctx, &op).await, chunk)
                })
                .buffered(PIPELINE);
            let mut again = Vec::new();
            while let Some((results, chunk)) = replies.next().await {
                let results = match results {
                    Ok(r) => r,
                    Err(e) => {
                        failed.get_or_insert(e);
                        continue;
                    }
                };
                for (c, r) in chunk.into_iter().zip(results) {
                    match ItemOutcome::from_write(r) {
                        Ok(ItemOutcome::Skipped) => again.push(c),
                        Ok(outcome) => self.updated(slots, c, outcome, &mut stamped).await,
                        Err(e) => {
                            failed.get_or_insert(e);
                        }
                    }
                }
                self.ctx.progress();
            }
            if again.len() == sent {
                // Nothing of the round was attempted: left for the next step.
                for c in again {
                    self.updated(slots, c, ItemOutcome::Skipped, &mut stamped)
                        .await;
                }
                break;
            }
            todo = again;
        }
        self.engine
            .state
            .mark_stamped(self.smtp(), self.table, &stamped)
            .await
            .map_err(db_error)?;
        failed.map_or(Ok(()), Err)
    }

    /// One item's answer to an UpdateItem.
    async fn updated(
        &mut self,
        slots: &mut [Slot],
        c: Change,
        outcome: ItemOutcome<ItemId>,
        stamped: &mut Vec<(i64, String, Option<String>, Option<String>)>,
    ) {
        let Change { of, crm_id, update } = c;
        let i = match of {
            Of::Slot(i) => i,
            Of::Stamp(m) => {
                match outcome {
                    ItemOutcome::Written(id) => {
                        self.engine.note_own_write(&id);
                        stamped.push((m.crm_id, m.ews_item_id, m.change_key, id.change_key));
                        self.counted(Direction::ToExchange, Action::Stamp);
                    }
                    ItemOutcome::Rejected(e) => {
                        // Parked: its stamp is not offered again before the retry time, so
                        // it never stops the batches of the others.
                        self.park(
                            crm_id,
                            &update.id.id,
                            FailureKind::RejectedByExchange,
                            &format!("Exchange refused the CRM-id stamp: {e}"),
                        )
                        .await;
                    }
                    // Changed since (written with its next update), gone (the next read
                    // sees the delete), not attempted (the next round): it keeps waiting.
                    ItemOutcome::Changed | ItemOutcome::Gone | ItemOutcome::Skipped => {}
                }
                return;
            }
        };
        let slot = &mut slots[i];
        match outcome {
            ItemOutcome::Written(id) => {
                self.engine.note_own_write(&id);
                slot.ews = Some(id);
                slot.stamped = true;
                self.counted(Direction::ToExchange, Action::Update);
            }
            ItemOutcome::Gone => {
                slot.stop = true;
                slot.gone = true;
            }
            ItemOutcome::Changed => {
                // Changed in Exchange since the ChangeKey we hold: the row stays queued and
                // the next step (asked for at once) reads Exchange first.
                tracing::debug!(
                    mailbox = self.smtp(),
                    crm_id,
                    "update refused; merging first"
                );
                slot.stop = true;
                slot.requeue = true;
                self.needs_pull = true;
            }
            ItemOutcome::Skipped => {
                // Not attempted: the next step, asked for at once, writes it.
                slot.stop = true;
                slot.requeue = true;
                self.needs_pull = true;
            }
            ItemOutcome::Rejected(e) => {
                slot.stop = true;
                self.park(
                    crm_id,
                    &update.id.id,
                    FailureKind::RejectedByExchange,
                    &format!("Exchange refused the update: {e}"),
                )
                .await;
            }
        }
    }

    /// Writes the stamps imports still wait for when [`STAMP_BATCH`] or more wait, or one of
    /// them has waited [`STAMP_MAX_WAIT`], or `force` (the end of a first contact), in
    /// pipelined batches; each stamp is offered once per call (one that changed since its
    /// ChangeKey waits for its next update).
    pub(crate) async fn stamp_waiting(&mut self, force: bool) -> Result<(), SyncError> {
        let mut after = i64::MIN;
        loop {
            let waiting = self
                .engine
                .state
                .unstamped_of(self.smtp(), self.table, after, STAMP_PAGE)
                .await
                .map_err(db_error)?;
            if waiting.is_empty() {
                return Ok(());
            }
            if after == i64::MIN && !force && (waiting.len() as i64) < STAMP_BATCH {
                let since = chrono::Utc::now() - STAMP_MAX_WAIT;
                let old = self
                    .engine
                    .state
                    .stamps_waiting_since(self.smtp(), self.table, since)
                    .await
                    .map_err(db_error)?;
                if old == 0 {
                    return Ok(());
                }
            }
            let full = waiting.len() as i64 == STAMP_PAGE;
            after = waiting.iter().map(|m| m.crm_id).max().unwrap_or(after);
            let changes: Vec<Change> = waiting.into_iter().map(|m| self.stamp_change(m)).collect();
            self.send_updates(&mut [], changes).await?;
            if !full {
                return Ok(());
            }
        }
    }
}
