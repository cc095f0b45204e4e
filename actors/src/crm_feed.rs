//! CrmFeedActor: turns the CRM change feed into triggers for the folders it concerns.
//!
//! The feed only says "look now"; each folder reads the changes from its own cursor in its
//! step, so a trigger lost here (a mailbox restarting at that moment) costs nothing: the
//! restarted mailbox's first steps read the same changes.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use actix::prelude::*;
use futures_util::FutureExt;

use crate::mailbox::MailboxTrigger;
use crate::ports::{Cause, CrmPort, FolderId, MailboxId, SyncError};
use crate::Shared;

/// Stops the feed.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopFeed;

/// Reads the CRM change feed and routes it.
pub struct CrmFeedActor {
    /// The feed.
    port: Arc<dyn CrmPort>,
    /// Registry (routing), metrics, settings.
    shared: Arc<Shared>,
    /// Failed reads in a row (back-off).
    failures: u32,
}

impl CrmFeedActor {
    pub(crate) fn new(port: Arc<dyn CrmPort>, shared: Arc<Shared>) -> Self {
        CrmFeedActor {
            port,
            shared,
            failures: 0,
        }
    }

    fn next(&mut self, ctx: &mut Context<Self>) {
        let read = AssertUnwindSafe(self.port.next_changes()).catch_unwind();
        ctx.spawn(read.into_actor(self).map(|result, act, ctx| {
            let result = result.unwrap_or_else(|_| Err(SyncError::Failed("the CRM feed panicked".to_owned())));
            match result {
                Ok(changes) => {
                    act.failures = 0;
                    act.route(changes);
                    act.shared.metrics.crm_batches.with_label_values(&["ok"]).inc();
                    act.next(ctx);
                }
                Err(error) => {
                    act.failures += 1;
                    act.shared.metrics.crm_batches.with_label_values(&["error"]).inc();
                    let delay = act.shared.settings.step_retry.delay(act.failures);
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "reading the CRM change feed failed");
                    ctx.run_later(delay, |act, ctx| act.next(ctx));
                }
            }
        }));
    }

    fn route(&self, changes: Vec<(MailboxId, FolderId)>) {
        let unique: HashSet<(MailboxId, FolderId)> = changes.into_iter().collect();
        for (smtp, folder) in unique {
            match self.shared.board.addr(&smtp) {
                Some(addr) => addr.do_send(MailboxTrigger {
                    folder: Some(folder),
                    cause: Cause::Crm,
                    full: false,
                }),
                None => {
                    tracing::debug!(mailbox = %smtp, "CRM change for a mailbox that is not running")
                }
            }
        }
    }
}

impl Actor for CrmFeedActor {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        self.next(ctx);
    }
}

impl Handler<StopFeed> for CrmFeedActor {
    type Result = ();
    fn handle(&mut self, _: StopFeed, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
