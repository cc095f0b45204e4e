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

use super::core::sync_error;
use super::engine::Engine;

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

/// The synced folders an event concerns. Item events: the folder holding the item and, for a
/// move or copy, the one it left (a move out is a delete there). Folder events (Exchange sends
/// a ModifiedEvent for a folder whenever its item count changes, next to the item's own event)
/// concern item sync only when a synced folder itself was moved or deleted. Events about
/// folders that are not synced concern none: they must not wake every folder of the mailbox
/// (each wake-up is a SyncFolderItems request).
///
/// Mail: `mail(folder, item_event)` says whether an Exchange folder is a synced mail folder
/// (or a mailbox's mail root) and, for an item event, notes the folder for the mail step.
/// Every folder event in the mail tree wakes the mail folder: it may be a new, renamed, moved
/// or deleted folder (SyncFolderHierarchy tells which).
fn affected(
    e: &ews::streaming::NotificationEvent,
    folders: &HashMap<String, FolderId>,
    own_write: &dyn Fn(&ItemId) -> bool,
    mail: &dyn Fn(&str, bool) -> bool,
) -> Vec<FolderId> {
    use ews::streaming::EventKind;
    let ours = |f: &Option<ews::types::FolderId>| f.as_ref().and_then(|f| folders.get(&f.id));
    let in_mail = |f: &Option<ews::types::FolderId>, item: bool| {
        f.as_ref().is_some_and(|f| mail(&f.id, item))
    };
    let mail_folder = || FolderId::from(super::mail::MAIL);
    if let Some(item) = &e.item_id {
        // The notification of our own CreateItem/UpdateItem: nothing new to sync.
        if matches!(e.kind, EventKind::Created | EventKind::Modified) && own_write(item) {
            return vec![];
        }
        let mut out: Vec<FolderId> = [ours(&e.parent_folder_id), ours(&e.old_parent_folder_id)]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        // Both sides of a move are noted (no short-circuit).
        let to = in_mail(&e.parent_folder_id, true);
        let from = in_mail(&e.old_parent_folder_id, true);
        if to || from {
            out.push(mail_folder());
        }
        return out;
    }
    let mut out: Vec<FolderId> = match e.kind {
        EventKind::Deleted | EventKind::Moved => ours(&e.folder_id).cloned().into_iter().collect(),
        _ => vec![],
    };
    let folder = in_mail(&e.folder_id, false);
    let parent = in_mail(&e.parent_folder_id, false);
    let old_parent = in_mail(&e.old_parent_folder_id, false);
    if folder || parent || old_parent {
        out.push(mail_folder());
    }
    out
}

/// Opening a connection failed. Too many open streaming connections for the account
/// (HangingConnectionLimit) is not server busyness: pausing every request of the server for
/// it would stall all mailboxes, so it fails this group's connection only (the group retries
/// with back-off and polls its mailboxes meanwhile).
fn stream_error(e: ews::Error) -> SyncError {
    match e {
        ews::Error::Throttled { code, .. } if code == "ErrorExceededConnectionCount" => {
            SyncError::Transient(format!(
                "the account has as many streaming connections open as Exchange allows \
                 ({code}; HangingConnectionLimit of its throttling policy): this group is polled \
                 until a connection is free"
            ))
        }
        other => sync_error(other),
    }
}

fn convert(
    event: EwsEvent,
    folders: &HashMap<String, FolderId>,
    own_write: &dyn Fn(&ItemId) -> bool,
    mail: &dyn Fn(&str, bool) -> bool,
) -> Vec<StreamEvent> {
    match event {
        EwsEvent::Notification {
            subscription_id,
            events,
        } => {
            let subscription = SubscriptionId::from(subscription_id);
            let mut seen: Vec<Option<FolderId>> = Vec::new();
            for e in events {
                for folder in affected(&e, folders, own_write, mail) {
                    if !seen.contains(&Some(folder.clone())) {
                        seen.push(Some(folder));
                    }
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
            // The mail tree grows and shrinks: with mail, the subscription covers every folder
            // (SubscribeToAllFolders) and events are sorted by folder here.
            let all = folders.iter().any(|f| &**f == super::mail::MAIL);
            for folder in folders.iter().filter(|f| &***f != super::mail::MAIL) {
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
            if all {
                refs.clear();
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
                .map_err(stream_error)?;
            let index = inner.clone();
            let events = events.flat_map(move |e| {
                let engine = &index.engine;
                let converted = convert(
                    e,
                    &index.folders.lock(),
                    &|id| engine.is_own_write(id),
                    &|folder, item| engine.mail_folder_event(folder, item),
                );
                futures_util::stream::iter(converted)
            });
            Ok(Box::pin(events) as BoxStream<'static, StreamEvent>)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ews::streaming::{EventKind, NotificationEvent};

    fn id(s: &str) -> Option<ews::types::ItemId> {
        Some(ews::types::ItemId {
            id: s.into(),
            change_key: None,
        })
    }

    fn event(
        kind: EventKind,
        item: Option<&str>,
        folder: Option<&str>,
        parent: &str,
    ) -> NotificationEvent {
        NotificationEvent {
            kind,
            timestamp: None,
            item_id: item.and_then(id),
            folder_id: folder.and_then(id),
            parent_folder_id: id(parent),
            old_item_id: None,
            old_parent_folder_id: None,
        }
    }

    #[test]
    fn the_connection_limit_fails_the_group_without_pausing_the_server() {
        let limit = ews::Error::from_code("ErrorExceededConnectionCount", "too many", None);
        assert!(
            matches!(stream_error(limit), SyncError::Transient(m) if m.contains("HangingConnectionLimit"))
        );
        let busy = ews::Error::from_code("ErrorServerBusy", "busy", None);
        assert!(matches!(stream_error(busy), SyncError::Throttled { .. }));
    }

    #[test]
    fn events_wake_only_the_synced_folders_they_concern() {
        let folders: HashMap<String, FolderId> = [
            ("F-contacts".to_string(), FolderId::from("contacts")),
            ("F-shared".to_string(), FolderId::from("contacts/shared")),
        ]
        .into_iter()
        .collect();
        let convert_all = |events: Vec<NotificationEvent>| {
            convert(
                EwsEvent::Notification {
                    subscription_id: "S".into(),
                    events,
                },
                &folders,
                &|id: &ItemId| id.change_key.as_deref() == Some("OWN"),
                &|folder: &str, _item: bool| folder.starts_with("F-mail"),
            )
            .into_iter()
            .map(|e| match e {
                StreamEvent::Changed { folder, .. } => folder.map(|f| f.to_string()),
                other => panic!("{other:?}"),
            })
            .collect::<Vec<_>>()
        };
        // An item created in Contacts, and the count change of Contacts (a folder event whose
        // parent is the mailbox root): Contacts only, once.
        assert_eq!(
            convert_all(vec![
                event(EventKind::Created, Some("I1"), None, "F-contacts"),
                event(EventKind::Modified, None, Some("F-contacts"), "F-root"),
                event(EventKind::Modified, Some("I2"), None, "F-contacts"),
            ]),
            vec![Some("contacts".to_string())]
        );
        // The notification of our own write: nothing to sync.
        let mut own = event(EventKind::Modified, Some("I4"), None, "F-contacts");
        own.item_id = Some(ews::types::ItemId {
            id: "I4".into(),
            change_key: Some("OWN".into()),
        });
        assert!(convert_all(vec![own]).is_empty());
        // A folder event about the shared subfolder's count: nothing to sync.
        assert!(convert_all(vec![event(
            EventKind::Modified,
            None,
            Some("F-shared"),
            "F-contacts"
        )])
        .is_empty());
        // An item moved out of the shared folder into Deleted Items: the shared folder.
        let mut moved = event(EventKind::Moved, Some("I3"), None, "F-trash");
        moved.old_parent_folder_id = id("F-shared");
        assert_eq!(
            convert_all(vec![moved]),
            vec![Some("contacts/shared".to_string())]
        );
        // Mail: an item event in a synced mail folder wakes the mail folder; so does any folder
        // event in the mail tree (a folder created, renamed, moved or deleted there). Item
        // events elsewhere do not.
        assert_eq!(
            convert_all(vec![event(
                EventKind::Created,
                Some("I5"),
                None,
                "F-mail-inbox"
            )]),
            vec![Some("mail".to_string())]
        );
        let mut moved = event(EventKind::Moved, Some("I6"), None, "F-mail-archive");
        moved.old_parent_folder_id = id("F-mail-inbox");
        assert_eq!(convert_all(vec![moved]), vec![Some("mail".to_string())]);
        assert_eq!(
            convert_all(vec![event(
                EventKind::Created,
                None,
                Some("F-new"),
                "F-mail-root"
            )]),
            vec![Some("mail".to_string())]
        );
        assert!(
            convert_all(vec![event(EventKind::Created, Some("I7"), None, "F-notes")]).is_empty()
        );
        // A synced folder deleted: that folder syncs (and finds it gone).
        assert_eq!(
            convert_all(vec![event(
                EventKind::Deleted,
                None,
                Some("F-shared"),
                "F-contacts"
            )]),
            vec![Some("contacts/shared".to_string())]
        );
    }
}
