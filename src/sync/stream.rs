//! Streaming notifications over EWS: the service's implementation of the runtime's
//! `StreamPort`. One subscription per mailbox (its synced folders), one GetStreamingEvents
//! connection per group, with the group's affinity (anchor mailbox, back-end cookie) on every
//! request of the group. Events are reduced to "this folder of this mailbox changed".

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ews::client::Affinity;
use ews::ops::{GetStreamingEvents, Subscribe};
use ews::streaming::StreamEvent as EwsEvent;
use ews::types::{FolderRef, ItemId};
use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, StreamExt};
use mailsync_actors::{
    FolderId, GroupInfo, MailboxId, StreamEvent, StreamPort, SubscriptionId, SyncError, Throttle,
};
use parking_lot::Mutex;

use super::engine::{sync_error, Engine};

struct Inner {
    engine: Engine,
    /// Exchange folder id to the mailbox folder it belongs to.
    folders: Mutex<HashMap<String, FolderId>>,
    /// Routing of each group, shared by its Subscribe and GetStreamingEvents requests.
    affinity: Mutex<HashMap<(String, u32), Affinity>>,
}

/// The stream port; cheap to clone.
#[derive(Clone)]
pub struct EwsStream(Arc<Inner>);

impl EwsStream {
    /// A stream port for the engine's mailboxes.
    pub fn new(engine: Engine) -> Self {
        EwsStream(Arc::new(Inner {
            engine,
            folders: Mutex::default(),
            affinity: Mutex::default(),
        }))
    }
}

impl Inner {
    fn target(&self, group: &GroupInfo, mailbox: &str) -> ews::Target {
        let affinity = self
            .affinity
            .lock()
            .entry((group.server.to_string(), group.group))
            .or_insert_with(|| Affinity::new(&group.anchor))
            .clone();
        let mut target = ews::Target::impersonating(mailbox);
        target.affinity = Some(affinity);
        target
    }
}

fn convert(event: EwsEvent, folders: &HashMap<String, FolderId>) -> Vec<StreamEvent> {
    match event {
        EwsEvent::Notification {
            subscription_id,
            events,
        } => {
            let subscription = SubscriptionId::from(subscription_id);
            let mut seen: Vec<Option<FolderId>> = Vec::new();
            for e in events {
                let folder = e
                    .parent_folder_id
                    .as_ref()
                    .or(e.folder_id.as_ref())
                    .and_then(|f| folders.get(&f.id).cloned());
                if !seen.contains(&folder) {
                    seen.push(folder);
                }
            }
            seen.into_iter()
                .map(|folder| StreamEvent::Changed {
                    subscription: subscription.clone(),
                    folder,
                })
                .collect()
        }
        EwsEvent::ConnectionOk => vec![StreamEvent::Heartbeat],
        EwsEvent::ConnectionClosed => vec![StreamEvent::Closed],
        EwsEvent::Error {
            error,
            subscription_ids,
        } if !subscription_ids.is_empty() => {
            tracing::info!(%error, subscriptions = subscription_ids.len(), "subscriptions lost");
            vec![StreamEvent::Lost(
                subscription_ids
                    .into_iter()
                    .map(SubscriptionId::from)
                    .collect(),
            )]
        }
        EwsEvent::Error { error, .. } => vec![StreamEvent::Failed(sync_error(error))],
    }
}

impl StreamPort for EwsStream {
    fn subscribe(
        &self,
        group: &GroupInfo,
        mailbox: &MailboxId,
        folders: &[FolderId],
        throttle: Throttle,
    ) -> BoxFuture<'static, Result<SubscriptionId, SyncError>> {
        let inner = self.0.clone();
        let group = group.clone();
        let mailbox = mailbox.clone();
        let folders = folders.to_vec();
        Box::pin(async move {
            let setup = inner
                .engine
                .mailbox(&mailbox)
                .ok_or_else(|| SyncError::Failed(format!("mailbox {mailbox} is not configured")))?;
            let state = inner.engine.state();
            let mut refs = Vec::new();
            for folder in &folders {
                {
                    let key = folder.to_string();
                    let fs = state
                        .folder_state(&mailbox, &key)
                        .await
                        .map_err(|e| SyncError::Transient(e.to_string()))?;
                    if let Some(id) = fs.ews_folder_id {
                        inner.folders.lock().insert(id.clone(), folder.clone());
                        refs.push(FolderRef::Id(ItemId {
                            id,
                            change_key: None,
                        }));
                    }
                }
            }
            let op = Subscribe {
                folders: refs,
                event_types: vec![],
            };
            let target = inner.target(&group, &mailbox);
            let _permit = throttle.acquire().await;
            let reply = setup.client.call(&target, &op).await.map_err(sync_error)?;
            Ok(SubscriptionId::from(reply.output))
        })
    }

    fn stream(
        &self,
        group: &GroupInfo,
        subscriptions: Vec<SubscriptionId>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<BoxStream<'static, StreamEvent>, SyncError>> {
        let inner = self.0.clone();
        let group = group.clone();
        Box::pin(async move {
            let setup = inner.engine.mailbox(&group.anchor).ok_or_else(|| {
                SyncError::Failed(format!("anchor mailbox {} is not configured", group.anchor))
            })?;
            let minutes = (timeout.as_secs() / 60).clamp(1, 30) as u8;
            let op = GetStreamingEvents {
                subscription_ids: subscriptions.iter().map(|s| s.to_string()).collect(),
                connection_timeout_minutes: minutes,
            };
            let target = inner.target(&group, &group.anchor);
            let events = setup
                .client
                .stream(&target, &op)
                .await
                .map_err(sync_error)?;
            let index = inner.clone();
            let events = events.flat_map(move |e| {
                let converted = convert(e, &index.folders.lock());
                futures_util::stream::iter(converted)
            });
            Ok(Box::pin(events) as BoxStream<'static, StreamEvent>)
        })
    }
}
