//! The CRM change feed with any number of instances.
//!
//! One instance reads it: the holder of the `@crm-feed` lease. It queues every change for
//! the mailboxes it concerns in `ms_pending` (the state store all instances share, one row
//! per mailbox and CRM row) exactly as a single instance does ([`Feed::poll_once`]), moves
//! the shared cursor (a write the state store's fence refuses to anyone but the lease holder),
//! and then wakes the owners with a NOTIFY on the state store (`mailsync_pending`, payload
//! lines `mailbox<TAB>folder`). Every other instance LISTENs and triggers the folders of
//! the mailboxes it owns; after (re)connecting its listener it triggers every owned folder
//! with queued rows, and on becoming the reader (its predecessor may have died between
//! queueing and notifying) it wakes every folder with queued rows, its own and, by a NOTIFY,
//! the other instances', so a missed notification costs nothing. A mailbox that moves reads
//! its queue in its first steps at the new owner.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::future::BoxFuture;
use mailsync_actors::{CrmPort, FolderId, MailboxId, SyncError};
use sqlx::postgres::PgListener;

use super::Cluster;
use crate::sync::feed::Feed;

/// The notification channel on the state store.
pub const CHANNEL: &str = "mailsync_pending";
/// A NOTIFY payload must stay under 8000 bytes.
const PAYLOAD_MAX: usize = 7000;
/// How often a waiting instance looks whether it became the reader.
const LOOK: Duration = Duration::from_millis(500);

/// The feed port of a cluster member.
#[derive(Clone)]
pub struct ClusterFeed {
    feed: Feed,
    cluster: Cluster,
    /// What the listener task heard: folders, or `None` after a (re)connect. The task owns
    /// the LISTEN connection, so no wait here can cancel a notification half read.
    heard: std::sync::Arc<tokio::sync::Mutex<Option<Heard>>>,
    /// This instance was the reader at the last look (so becoming it is noticed once).
    reading: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

fn transient(e: impl std::fmt::Display) -> SyncError {
    SyncError::Transient(e.to_string())
}

/// `mailbox<TAB>folder` lines, cut into payloads that fit a NOTIFY.
fn payloads(folders: &[(MailboxId, FolderId)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for (m, f) in folders {
        let line = format!("{m}\t{f}\n");
        if cur.len() + line.len() > PAYLOAD_MAX && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        cur.push_str(&line);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn parse(payload: &str) -> Vec<(MailboxId, FolderId)> {
    payload
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(m, f)| (MailboxId::from(m), FolderId::from(f)))
        .collect()
}

impl ClusterFeed {
    /// The port over the single-instance `feed`.
    pub fn new(feed: Feed, cluster: Cluster) -> Self {
        ClusterFeed {
            feed,
            cluster,
            heard: Default::default(),
            reading: Default::default(),
        }
    }

    /// As the reader: one batch queued, the cursor moved, the owners woken.
    async fn read(&self) -> Result<Option<Vec<(MailboxId, FolderId)>>, SyncError> {
        let Some(folders) = self.feed.poll_once().await? else {
            return Ok(None);
        };
        self.notify(&folders).await?;
        Ok(Some(self.mine(folders)))
    }

    /// Wakes the owners of `folders` on the other instances.
    async fn notify(&self, folders: &[(MailboxId, FolderId)]) -> Result<(), SyncError> {
        let pool = self.cluster.store().pool();
        for payload in payloads(folders) {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(payload)
                .execute(pool)
                .await
                .map_err(transient)?;
        }
        Ok(())
    }

    fn mine(&self, folders: Vec<(MailboxId, FolderId)>) -> Vec<(MailboxId, FolderId)> {
        folders
            .into_iter()
            .filter(|(m, _)| self.cluster.owns(m))
            .collect()
    }

    /// As a follower: the folders of owned mailboxes the reader notified, waiting up to
    /// [`LOOK`]. After a (re)connect of the listener, every owned folder with queued rows.
    async fn follow(&self) -> Result<Vec<(MailboxId, FolderId)>, SyncError> {
        let mut guard = self.heard.lock().await;
        let heard = guard.get_or_insert_with(|| listen(self.cluster.store().pool().clone()));
        match tokio::time::timeout(LOOK, heard.recv()).await {
            Err(_) => Ok(Vec::new()),
            Ok(Some(Some(folders))) => Ok(self.mine(folders)),
            Ok(Some(None)) => Ok(self.mine(self.queued().await?)),
            Ok(None) => {
                *guard = None;
                Err(transient("the cluster's notification listener stopped"))
            }
        }
    }

    /// The folders of every mailbox (wherever it runs) with rows in ms_pending.
    async fn queued(&self) -> Result<Vec<(MailboxId, FolderId)>, SyncError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT DISTINCT mailbox, crm_table FROM ms_pending")
                .fetch_all(self.cluster.store().pool())
                .await
                .map_err(transient)?;
        let folders: BTreeSet<(MailboxId, FolderId)> = rows
            .into_iter()
            .filter_map(|(m, t)| {
                crate::sync::feed::folder_of_table(&t).map(|f| (MailboxId::from(m), f))
            })
            .collect();
        Ok(folders.into_iter().collect())
    }
}

type Heard = tokio::sync::mpsc::Receiver<Option<Vec<(MailboxId, FolderId)>>>;

/// The LISTEN task: forwards each notification's folders, and `None` after every (re)connect
/// (anything sent while it was away is in ms_pending). Ends when the feed is dropped.
fn listen(pool: sqlx::PgPool) -> Heard {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let connected = async {
                let mut l = PgListener::connect_with(&pool).await?;
                l.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            }
            .await;
            let mut listener = match connected {
                Ok(l) => l,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "cluster: cannot listen for queued CRM changes; retrying");
                    tokio::time::sleep(Duration::from_millis(500) * failures.min(20)).await;
                    continue;
                }
            };
            failures = 0;
            if tx.send(None).await.is_err() {
                return;
            }
            loop {
                // The reader drops the receiver: end at once, which unlistens.
                let next = tokio::select! {
                    _ = tx.closed() => return,
                    next = listener.try_recv() => next,
                };
                match next {
                    Ok(Some(n)) => {
                        if tx.send(Some(parse(n.payload()))).await.is_err() {
                            return;
                        }
                    }
                    // Reconnected by sqlx: tell the follower to look at the queue.
                    Ok(None) => {
                        if tx.send(None).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster: the notification listener failed; reconnecting");
                        break;
                    }
                }
            }
        }
    });
    rx
}

impl CrmPort for ClusterFeed {
    fn next_changes(&self) -> BoxFuture<'static, Result<Vec<(MailboxId, FolderId)>, SyncError>> {
        let port = self.clone();
        Box::pin(async move {
            use std::sync::atomic::Ordering;
            loop {
                if port.cluster.reads_feed() {
                    if !port.reading.load(Ordering::SeqCst) {
                        // A reader does not listen: nobody would read what its listener is
                        // sent (its own NOTIFYs too), and a listening session that falls
                        // behind keeps PostgreSQL's notification queue from being freed until
                        // every NOTIFY of the server fails. Dropping the receiver ends the
                        // listener task, which drops the connection and so unlistens.
                        // The feed has its position: the cluster stored it (if it had none)
                        // before it said this instance reads (`Cluster::acquire`).
                        *port.heard.lock().await = None;
                        // The previous reader may have died between queueing a batch and
                        // its NOTIFY: what it queued is woken now, here and at the other
                        // instances (whose listeners did not reconnect, so nothing else
                        // makes them look at the queue). Only once that went through is this
                        // instance reading: a failure here repeats it at the next call.
                        let queued = port.queued().await?;
                        port.notify(&queued).await?;
                        port.reading.store(true, Ordering::SeqCst);
                        let mine = port.mine(queued);
                        if !mine.is_empty() {
                            return Ok(mine);
                        }
                    }
                    match port.read().await? {
                        Some(folders) if !folders.is_empty() => return Ok(folders),
                        Some(_) => continue,
                        None => {}
                    }
                    port.feed.wait_for_changes().await?;
                    continue;
                }
                port.reading.store(false, Ordering::SeqCst);
                let folders = port.follow().await?;
                if !folders.is_empty() {
                    return Ok(folders);
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_carry_every_folder_within_the_payload_limit() {
        let folders: Vec<(MailboxId, FolderId)> = (0..1000)
            .map(|i| {
                (
                    MailboxId::from(format!("user{i}@example.com")),
                    FolderId::from("contacts"),
                )
            })
            .collect();
        let payloads = payloads(&folders);
        assert!(payloads.len() > 1);
        assert!(payloads.iter().all(|p| p.len() <= PAYLOAD_MAX));
        let back: Vec<(MailboxId, FolderId)> = payloads.iter().flat_map(|p| parse(p)).collect();
        assert_eq!(back, folders);
    }
}
