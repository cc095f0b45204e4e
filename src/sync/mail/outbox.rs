//! Mail: the CRM outbox — SendAndSaveCopy for the mailbox's own address, SMTP for an alternative sender; never sent twice.

use ews::items::{Item, Message};
use ews::ops::{CreateItem, MessageDisposition};
use ews::types::{DistinguishedFolder, FolderRef};
use mailsync_actors::SyncError;

use super::*;
use crate::sync::core::{db_error, sync_error};
use crate::sync::events::{Action, Direction};
use crate::sync::fields;

impl MailStep<'_> {
    // ---- sending ----

    pub(super) async fn send_outbox(&mut self, roles: &Roles, look: bool) -> Result<(), SyncError> {
        let crm = &self.engine.crm;
        let state = &self.engine.state;
        let queued = state
            .pending(self.smtp(), OUTBOX, QUEUE_BATCH)
            .await
            .map_err(db_error)?;
        if queued.is_empty() && !look {
            return Ok(());
        }
        let pending = crm
            .outbox_pending(self.owner.operator_id)
            .await
            .map_err(db_error)?;
        if pending.is_empty() {
            return state
                .clear_pending(self.smtp(), OUTBOX, &queued)
                .await
                .map_err(db_error);
        }
        for row in pending {
            let Some(mime) = crm.outbox_mime(row.id).await.map_err(db_error)? else {
                continue;
            };
            let own =
                row.sender.trim().is_empty() || row.sender.trim().eq_ignore_ascii_case(self.smtp());
            let outcome = if own {
                // Its copy lands in Sent Items: read there in this step.
                if let Some((sent, _)) = roles.by_id.iter().find(|(_, r)| **r == "sentitems") {
                    self.mail.mark_dirty(self.smtp(), sent);
                }
                self.send_through_exchange(row.id, mime).await?
            } else {
                crate::sync::smtp::send(self.setup.smtp_relay.as_deref(), &row, mime).await
            };
            if let Err(e) = &outcome {
                tracing::warn!(mailbox = self.smtp(), outbox_id = row.id, error = %e, "mail not sent");
            }
            crm.finish_outbox(row.id, outcome.clone())
                .await
                .map_err(db_error)?;
            self.counted(
                Direction::ToExchange,
                if outcome.is_ok() {
                    Action::Send
                } else {
                    Action::SendFailed
                },
            );
        }
        state
            .clear_pending(self.smtp(), OUTBOX, &queued)
            .await
            .map_err(db_error)
    }

    /// Sends with SendAndSaveCopy (the copy lands in Sent Items). A copy stamped with this
    /// outbox row in Sent Items means a crash came between sending and recording it: it is
    /// not sent twice.
    pub(super) async fn send_through_exchange(
        &mut self,
        id: i64,
        mime: Vec<u8>,
    ) -> Result<Result<(), String>, SyncError> {
        let stamp = fields::crm_stamp(OUTBOX, id);
        let sent = FolderRef::well_known(DistinguishedFolder::SentItems);
        let found = self
            .engine
            .find_stamped(self.setup, self.ctx, &sent, OUTBOX, &[id])
            .await?;
        if !found.is_empty() {
            return Ok(Ok(()));
        }
        let op = CreateItem {
            folder: Some(FolderRef::well_known(DistinguishedFolder::SentItems)),
            items: vec![Item::Message(Message {
                mime: Some(mime),
                extended: vec![ews::types::ExtendedProperty {
                    uri: fields::crm_id_uri(),
                    value: stamp,
                }],
                ..Message::default()
            })],
            disposition: Some(MessageDisposition::SendAndSaveCopy),
        };
        match self
            .engine
            .call(self.setup, self.ctx, &op)
            .await?
            .into_iter()
            .next()
        {
            Some(Ok(_)) => Ok(Ok(())),
            Some(Err(e @ (ews::Error::Throttled { .. } | ews::Error::Transient(_)))) => {
                Err(sync_error(e))
            }
            Some(Err(e)) => Ok(Err(format!("Exchange refused to send it: {e}"))),
            None => Err(SyncError::Failed("CreateItem answered nothing".into())),
        }
    }
}
