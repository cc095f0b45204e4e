//! Streaming subscriptions: Subscribe creates one for one mailbox; store changes are queued
//! on every matching subscription and wake the GetStreamingEvents connections holding it.
//! A subscription no connection has held for the expiry time is dropped, after which its id
//! answers ErrorSubscriptionNotFound.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::store::Event;

/// One subscription.
struct Sub {
    mailbox: String,
    /// Folder keys watched; `None` for SubscribeToAllFolders.
    folders: Option<HashSet<u64>>,
    types: HashSet<String>,
    queue: Vec<Event>,
    /// The connection holding it, with the Notify that wakes it. One at a time: a new
    /// GetStreamingEvents naming the subscription takes it over, so no event goes to a
    /// connection its client is about to drop.
    holder: Option<(u64, Arc<Notify>)>,
    /// Last time a connection held it (or it was created).
    last_held: Instant,
}

/// What a connection's [`Hub::take`] found.
#[derive(Default)]
pub struct Taken {
    /// Queued events by subscription.
    pub events: Vec<(String, Vec<Event>)>,
    /// Subscriptions that no longer exist.
    pub gone: Vec<String>,
    /// Subscriptions a newer connection holds now.
    pub moved: Vec<String>,
}

/// All subscriptions of the simulator.
#[derive(Default)]
pub struct Hub {
    subs: Mutex<HashMap<String, Sub>>,
    counter: AtomicU64,
}

impl Hub {
    /// Creates a subscription and returns its id.
    pub fn subscribe(
        &self,
        mailbox: &str,
        folders: Option<HashSet<u64>>,
        types: HashSet<String>,
    ) -> String {
        use base64::Engine;
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut raw = b"SUB".to_vec();
        raw.extend_from_slice(&n.to_be_bytes());
        raw.extend_from_slice(&(nanos as u64).to_be_bytes());
        let id = base64::engine::general_purpose::STANDARD.encode(raw);
        self.subs.lock().insert(
            id.clone(),
            Sub {
                mailbox: mailbox.to_string(),
                folders,
                types,
                queue: Vec::new(),
                holder: None,
                last_held: Instant::now(),
            },
        );
        id
    }

    /// Removes a subscription; false when unknown.
    pub fn unsubscribe(&self, id: &str) -> bool {
        self.subs.lock().remove(id).is_some()
    }

    /// The mailbox of a subscription.
    pub fn mailbox_of(&self, id: &str) -> Option<String> {
        self.subs.lock().get(id).map(|s| s.mailbox.clone())
    }

    /// Queues events on the matching subscriptions of `mailbox` and wakes their connections.
    pub fn publish(&self, mailbox: &str, events: Vec<Event>) {
        let mut subs = self.subs.lock();
        for s in subs.values_mut().filter(|s| s.mailbox == mailbox) {
            let mut woke = false;
            for e in &events {
                // A move concerns the folder it left as much as the one it entered.
                let folder_ok = s.folders.as_ref().is_none_or(|f| {
                    f.contains(&e.folder_key)
                        || e.old_folder_key.is_some_and(|old| f.contains(&old))
                });
                if folder_ok && s.types.contains(e.kind) {
                    s.queue.push(e.clone());
                    woke = true;
                }
            }
            if woke {
                if let Some((_, n)) = &s.holder {
                    n.notify_one();
                }
            }
        }
    }

    /// Attaches a connection to subscriptions; returns the ids that do not exist.
    pub fn attach(&self, conn: u64, ids: &[String], notify: &Arc<Notify>) -> Vec<String> {
        let mut subs = self.subs.lock();
        let mut missing = Vec::new();
        for id in ids {
            match subs.get_mut(id) {
                Some(s) => {
                    // The previous holder wakes, finds the subscription gone from it and,
                    // holding nothing any more, ends.
                    if let Some((_, old)) = s.holder.replace((conn, notify.clone())) {
                        old.notify_one();
                    }
                    s.last_held = Instant::now();
                }
                None => missing.push(id.clone()),
            }
        }
        missing
    }

    /// Detaches a connection.
    pub fn detach(&self, conn: u64, ids: &[String]) {
        let mut subs = self.subs.lock();
        for id in ids {
            if let Some(s) = subs.get_mut(id) {
                if s.holder.as_ref().is_some_and(|(c, _)| *c == conn) {
                    s.holder = None;
                }
                s.last_held = Instant::now();
            }
        }
    }

    /// Takes the queued events of the subscriptions connection `conn` holds. Returns the
    /// events, the ids that disappeared meanwhile, and the ids another connection took over.
    pub fn take(&self, conn: u64, ids: &[String]) -> Taken {
        let mut subs = self.subs.lock();
        let mut taken = Taken::default();
        for id in ids {
            match subs.get_mut(id) {
                Some(s) if s.holder.as_ref().is_some_and(|(c, _)| *c == conn) => {
                    s.last_held = Instant::now();
                    if !s.queue.is_empty() {
                        taken
                            .events
                            .push((id.clone(), std::mem::take(&mut s.queue)));
                    }
                }
                Some(_) => taken.moved.push(id.clone()),
                None => taken.gone.push(id.clone()),
            }
        }
        taken
    }

    /// Drops subscriptions no connection has held for `max_idle`.
    pub fn expire_idle(&self, max_idle: Duration) -> usize {
        let mut subs = self.subs.lock();
        let before = subs.len();
        subs.retain(|_, s| s.holder.is_some() || s.last_held.elapsed() < max_idle);
        before - subs.len()
    }

    /// Drops every subscription of a mailbox (or all with `None`), waking their connections
    /// so they report ErrorSubscriptionNotFound: the fault a lost subscription causes.
    pub fn expire_mailbox(&self, mailbox: Option<&str>) -> usize {
        let mut subs = self.subs.lock();
        let doomed: Vec<String> = subs
            .iter()
            .filter(|(_, s)| mailbox.is_none_or(|m| s.mailbox == m))
            .map(|(k, _)| k.clone())
            .collect();
        for id in &doomed {
            if let Some(s) = subs.remove(id) {
                if let Some((_, n)) = s.holder {
                    n.notify_one();
                }
            }
        }
        doomed.len()
    }

    /// Subscriptions of one mailbox.
    pub fn count_for(&self, mailbox: &str) -> usize {
        self.subs
            .lock()
            .values()
            .filter(|s| s.mailbox == mailbox)
            .count()
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.subs.lock().len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
