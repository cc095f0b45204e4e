//! The shared core of the sync engine: what every area needs — the two databases, the
//! configured mailboxes and their operators, the EWS call through the server's throttle, the
//! notification echo table, and the typed outcomes that every decision point matches on.
//!
//! Nothing here knows an area: `items`, `mail`, `initial` and `engine` build on it, never the
//! other way round.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use ews::ops::{FindItem, Operation, Restriction, View};
use ews::types::{FolderRef, ItemId, Shape};
use mailsync_actors::{StepContext, SyncError};
use parking_lot::{Mutex, RwLock};

use super::fields;
use crate::config::{Area, AreaConfig, InitialSync};
use crate::db::{Db, DbError};
use crate::metrics::ServiceMetrics;

pub use crate::config::BreakerLimits;

/// Everything the engine knows about one mailbox.
#[derive(Debug, Clone)]
pub struct MailboxSetup {
    /// Primary SMTP address, lower case.
    pub smtp: String,
    /// The client to reach it with (the server's, or one with the mailbox's own credentials).
    pub client: Arc<ews::Client>,
    /// Impersonated or own.
    pub target: ews::Target,
    /// The operator's personnel number.
    pub operator: String,
    /// crm_tenants.id, when tenants are configured.
    pub tenant: Option<i64>,
    /// Name of the shared contacts subfolder.
    pub shared_folder_name: String,
    /// Enabled areas.
    pub areas: BTreeMap<Area, AreaConfig>,
    /// Mail folder rules (start dates, exclusions, delete mode).
    pub mail: crate::config::MailConfig,
    /// The SMTP server for outbox mails with an alternative sender.
    pub smtp_relay: Option<Arc<crate::config::SmtpConfig>>,
    /// What a folder's first start does (`run` honours it).
    pub initial_sync: InitialSync,
    /// When deletes are held for approval.
    pub breaker: BreakerLimits,
    /// Records the first contact could not link unambiguously are synced as separate records
    /// (else they are left alone and reported).
    pub sync_ambiguous: bool,
}

/// A mailbox's operator, resolved in the CRM when the mailbox opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// crm_operators.id.
    pub operator_id: i64,
    /// The operator's tenant.
    pub tenant_id: i64,
}

/// The engine's shared state; one per process.
pub struct Inner {
    /// The business database.
    pub crm: Db,
    /// The state store.
    pub state: Db,
    /// The state store lives in the business database: rows and mappings commit together.
    pub same_db: bool,
    /// Configured mailboxes by address (replaced on reload).
    mailboxes: RwLock<HashMap<String, Arc<MailboxSetup>>>,
    /// Resolved operators by mailbox (filled when a mailbox opens).
    owners: RwLock<HashMap<String, Owner>>,
    /// The service's metrics.
    pub metrics: ServiceMetrics,
    /// Folders (mailbox, table, shared) whose last CreateItem round in this process finished
    /// with every created item recorded: no item of theirs can be in Exchange unrecorded, so
    /// the next round skips the stamp search (one FindItem per isolated CRM create). Empty
    /// after a start, and a folder leaves it while a round runs, so a crash or a failed round
    /// is always followed by a search.
    /// Keys: (mailbox, table, shared folder) of contacts, calendar and tasks; (mailbox,
    /// "crm_mails:" + the Exchange folder id, false) of each mail folder.
    pub clean: Mutex<HashSet<(String, String, bool)>>,
    /// Exchange item id → the ChangeKey our last write of it returned. The notification of
    /// our own write carries that ChangeKey and wakes no folder (it would only cost a
    /// SyncFolderItems that finds the echo). An event that comes before its entry is
    /// recorded still runs a step, which suppresses the echo by ChangeKey as always.
    own_writes: Mutex<HashMap<String, String>>,
    /// Deletes the breaker let through lately, per scope: the next parts of a mass delete
    /// that reaches the folder over several steps are judged together with them.
    pub recent_deletes: super::breaker::Recent,
}

/// Bound of [`Inner::own_writes`]: entries whose notification never came (no subscription at
/// the time) are dropped wholesale beyond it; a dropped entry only costs one echo step.
const OWN_WRITES_MAX: usize = 100_000;

/// Maps a client error of a whole request to what the runtime does about it. A malformed
/// answer is not "transient": retrying it at once would loop; the folder restarts with its
/// capped back-off instead.
pub fn sync_error(e: ews::Error) -> SyncError {
    match e {
        ews::Error::Throttled { back_off, .. } => SyncError::Throttled { back_off },
        ews::Error::Transient(m) | ews::Error::Request(m) => SyncError::Transient(m),
        ews::Error::InvalidSyncState(m) => SyncError::InvalidState(m),
        ews::Error::Unauthorized(m) => SyncError::Denied(m),
        ews::Error::Denied { code, message } => SyncError::Denied(format!("{code}: {message}")),
        // A redirect is a configuration problem (the URL points elsewhere): like a refusal,
        // retried slowly, never followed.
        e @ ews::Error::Redirected { .. } => SyncError::Denied(e.to_string()),
        other => SyncError::Failed(other.to_string()),
    }
}

/// A database error as the runtime sees it: a lost connection or a timeout is retried; a
/// constraint violation or a bad statement is not transient (a retry at once would fail the
/// same way) and restarts the folder with back-off.
pub fn db_error(e: DbError) -> SyncError {
    // A lost lease (cluster): the mailbox stops and is retried only slowly; the membership
    // loop takes it off this instance before that.
    if matches!(e, DbError::Fenced { .. }) {
        return SyncError::Denied(e.to_string());
    }
    if is_transient_db(&e) {
        SyncError::Transient(e.to_string())
    } else {
        SyncError::Failed(e.to_string())
    }
}

/// Whether a database error may pass by itself.
pub fn is_transient_db(e: &DbError) -> bool {
    // A row changed meanwhile is merged again by the next step; the rest is the database's
    // own judgement (connections, pools, deadlocks, serialization on every backend).
    matches!(e, DbError::Stale { .. }) || e.is_transient()
}

/// What Exchange said about one item of a batched write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome<T> {
    /// Done; carries the answer (new ids, change keys).
    Written(T),
    /// The item is gone.
    Gone,
    /// The item changed since the ChangeKey we sent: read it and merge again.
    Changed,
    /// Refused, with Exchange's reason: parked in the failure log and retried on its
    /// schedule.
    Rejected(String),
    /// Not attempted: an earlier item of the batch failed and Exchange stopped
    /// (ErrorBatchProcessingStopped); it is tried again in the next step.
    Skipped,
}

/// The response code Exchange gives the items of a batch after a fatal error in an earlier one.
const BATCH_STOPPED: &str = "ErrorBatchProcessingStopped";

impl<T> ItemOutcome<T> {
    /// Sorts one item's answer: the outcomes a caller handles per item, or the step's error
    /// (throttling, a transient fault) when the whole step must be retried.
    pub fn from_read(r: Result<T, ews::Error>) -> Result<ItemOutcome<T>, SyncError> {
        match r {
            Ok(t) => Ok(ItemOutcome::Written(t)),
            Err(ews::Error::NotFound(_)) => Ok(ItemOutcome::Gone),
            Err(ews::Error::Conflict(_)) => Ok(ItemOutcome::Changed),
            Err(ews::Error::Transient(m)) if m.starts_with(BATCH_STOPPED) => {
                Ok(ItemOutcome::Skipped)
            }
            Err(e) if e.is_retryable() => Err(sync_error(e)),
            Err(e) => Ok(ItemOutcome::Rejected(e.to_string())),
        }
    }
}

impl<T> ItemOutcome<T> {
    /// Sorts one item's answer to a write (CreateItem, UpdateItem, DeleteItem) whose
    /// failure is parked per item. Like [`ItemOutcome::from_read`], except that a server
    /// error in the item's own response message is [`ItemOutcome::Rejected`]: the request
    /// went through and only this item failed, so failing the step would write the same
    /// batch again, fail on the same item, and hold up every other item of the folder. The
    /// item is parked and retried on its schedule. Throttling stays the step's.
    pub fn from_write(r: Result<T, ews::Error>) -> Result<ItemOutcome<T>, SyncError> {
        match r {
            Err(ews::Error::Transient(m)) if !m.starts_with(BATCH_STOPPED) => {
                Ok(ItemOutcome::Rejected(m))
            }
            other => ItemOutcome::from_read(other),
        }
    }
}

/// [`ItemOutcome::from_read`] as a function.
pub fn item_outcome<T>(r: Result<T, ews::Error>) -> Result<ItemOutcome<T>, SyncError> {
    ItemOutcome::from_read(r)
}

impl Inner {
    /// An engine core over the business database and the state store.
    pub fn new(crm: Db, state: Db, same_db: bool, metrics: ServiceMetrics) -> Self {
        Inner {
            crm,
            state,
            same_db,
            mailboxes: RwLock::default(),
            owners: RwLock::default(),
            metrics,
            clean: Mutex::default(),
            own_writes: Mutex::default(),
            recent_deletes: Default::default(),
        }
    }

    /// Replaces the set of mailboxes (startup and reload).
    pub fn set_mailboxes(&self, setups: Vec<MailboxSetup>) {
        let map = setups
            .into_iter()
            .map(|s| (s.smtp.clone(), Arc::new(s)))
            .collect();
        *self.mailboxes.write() = map;
    }

    /// The setup of a mailbox.
    pub fn mailbox(&self, smtp: &str) -> Option<Arc<MailboxSetup>> {
        self.mailboxes.read().get(smtp).cloned()
    }

    /// The setup of a mailbox, or the error a step reports when it is not configured.
    pub fn setup(&self, smtp: &str) -> Result<Arc<MailboxSetup>, SyncError> {
        self.mailbox(smtp)
            .ok_or_else(|| SyncError::Failed(format!("mailbox {smtp} is not configured")))
    }

    /// Records the ChangeKey our write of an item produced (see `own_writes`).
    pub fn note_own_write(&self, id: &ItemId) {
        if let Some(change_key) = &id.change_key {
            let mut own = self.own_writes.lock();
            if own.len() >= OWN_WRITES_MAX {
                own.clear();
            }
            own.insert(id.id.clone(), change_key.clone());
        }
    }

    /// Whether a notification about `id` is the echo of our own last write of it (consumed).
    pub fn is_own_write(&self, id: &ItemId) -> bool {
        let Some(change_key) = &id.change_key else {
            return false;
        };
        let mut own = self.own_writes.lock();
        if own.get(&id.id) == Some(change_key) {
            own.remove(&id.id);
            true
        } else {
            false
        }
    }

    /// One EWS request through the server's throttle, its error as the runtime sees it.
    pub async fn call<O: Operation>(
        &self,
        setup: &MailboxSetup,
        ctx: &StepContext,
        op: &O,
    ) -> Result<O::Output, SyncError> {
        self.call_ews(setup, ctx, op).await.map_err(sync_error)
    }

    /// [`Inner::call`] with the client's error, for a caller that handles some codes itself
    /// (a folder that is gone, say).
    pub async fn call_ews<O: Operation>(
        &self,
        setup: &MailboxSetup,
        ctx: &StepContext,
        op: &O,
    ) -> Result<O::Output, ews::Error> {
        let _permit = ctx.acquire().await;
        let reply = setup.client.call(&setup.target, op).await?;
        ctx.progress();
        Ok(reply.output)
    }

    /// The items of a folder stamped with these CRM rows (`table:id`), by CRM id: what a crash
    /// (or a failed round) left in Exchange after CreateItem but before the mapping. One
    /// FindItem per 50 rows.
    pub async fn find_stamped(
        &self,
        setup: &MailboxSetup,
        ctx: &StepContext,
        folder: &FolderRef,
        table: &str,
        ids: &[i64],
    ) -> Result<HashMap<i64, ItemId>, SyncError> {
        let mut existing = HashMap::new();
        for chunk in ids.chunks(50) {
            let mut stamps: Vec<Restriction> = chunk
                .iter()
                .map(|id| {
                    Restriction::IsEqualTo(fields::crm_id_path(), fields::crm_stamp(table, *id))
                })
                .collect();
            let find = FindItem {
                folder: folder.clone(),
                shape: Shape {
                    base: ews::types::BaseShape::IdOnly,
                    additional: vec![fields::crm_id_path()],
                },
                view: View::IndexedPage {
                    offset: 0,
                    max: 1000,
                },
                restriction: Some(if stamps.len() == 1 {
                    stamps.remove(0)
                } else {
                    Restriction::Or(stamps)
                }),
            };
            for item in self.call(setup, ctx, &find).await?.items {
                if let (Some(id), Some(crm_id)) =
                    (item.id().cloned(), fields::stamped_id(&item, table))
                {
                    existing.insert(crm_id, id);
                }
            }
        }
        Ok(existing)
    }

    /// The mailbox's operator (cached once resolved).
    pub async fn owner(&self, setup: &MailboxSetup) -> Result<Owner, SyncError> {
        if let Some(o) = self.owners.read().get(&setup.smtp) {
            return Ok(*o);
        }
        let owner = self.resolve_owner(setup).await?;
        self.owners.write().insert(setup.smtp.clone(), owner);
        Ok(owner)
    }

    /// Resolves the operator in the CRM (on every open: an operator may have moved).
    pub async fn resolve_owner(&self, setup: &MailboxSetup) -> Result<Owner, SyncError> {
        let operators = self.crm.operators().await.map_err(db_error)?;
        let found: Vec<_> = operators
            .iter()
            .filter(|o| {
                o.personnel_no == setup.operator && setup.tenant.is_none_or(|t| t == o.tenant_id)
            })
            .collect();
        let owner = match found.as_slice() {
            [one] => Owner {
                operator_id: one.id,
                tenant_id: one.tenant_id,
            },
            [] => {
                return Err(SyncError::Failed(format!(
                    "operator with personnel number {:?}{} is not in crm_operators",
                    setup.operator,
                    setup
                        .tenant
                        .map(|t| format!(" in tenant {t}"))
                        .unwrap_or_default()
                )))
            }
            _ => {
                return Err(SyncError::Failed(format!(
                "personnel number {:?} exists in several tenants; configure the mailbox's tenant",
                setup.operator
            )))
            }
        };
        self.owners.write().insert(setup.smtp.clone(), owner);
        Ok(owner)
    }
}

/// The version to record after stamping the ews_id on a row read at `read`: our write is the
/// version right after the one we read; if the row changed in between, keep the version we
/// read, so that change is still seen as new and written.
pub fn own_version(read: i64, written: Option<i64>) -> Option<i64> {
    match written {
        Some(v) if v == read + 1 => Some(v),
        Some(_) => Some(read),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_answers_are_sorted_by_what_the_caller_does() {
        let ok: Result<u8, ews::Error> = Ok(1);
        assert_eq!(item_outcome(ok), Ok(ItemOutcome::Written(1)));
        let gone: Result<u8, _> = Err(ews::Error::NotFound("ErrorItemNotFound".into()));
        assert_eq!(item_outcome(gone), Ok(ItemOutcome::Gone));
        let changed: Result<u8, _> = Err(ews::Error::Conflict("ErrorIrresolvableConflict".into()));
        assert_eq!(item_outcome(changed), Ok(ItemOutcome::Changed));
        let refused: Result<u8, _> = Err(ews::Error::Response {
            code: "ErrorInvalidPropertySet".into(),
            message: "no".into(),
        });
        assert!(
            matches!(item_outcome(refused), Ok(ItemOutcome::Rejected(r)) if r.contains("ErrorInvalidPropertySet"))
        );
        let busy: Result<u8, _> = Err(ews::Error::Throttled {
            back_off: std::time::Duration::from_secs(1),
            code: "ErrorServerBusy".into(),
        });
        assert!(matches!(
            item_outcome(busy),
            Err(SyncError::Throttled { .. })
        ));
        let transient: Result<u8, _> = Err(ews::Error::Transient("x".into()));
        assert!(matches!(
            item_outcome(transient),
            Err(SyncError::Transient(_))
        ));
        // Writes: a server error in one item's response message is that item's (parked, the
        // others go on); throttling and a stopped batch are not.
        let write =
            |code: &str| ItemOutcome::<u8>::from_write(Err(ews::Error::from_code(code, "m", None)));
        assert!(
            matches!(write("ErrorInternalServerError"), Ok(ItemOutcome::Rejected(r)) if r.contains("ErrorInternalServerError"))
        );
        assert_eq!(
            write("ErrorBatchProcessingStopped"),
            Ok(ItemOutcome::Skipped)
        );
        assert!(matches!(
            write("ErrorServerBusy"),
            Err(SyncError::Throttled { .. })
        ));
        assert_eq!(
            ItemOutcome::from_write(Ok::<u8, ews::Error>(3)),
            Ok(ItemOutcome::Written(3))
        );
        let stopped: Result<u8, _> = Err(ews::Error::from_code(
            "ErrorBatchProcessingStopped",
            "stopped",
            None,
        ));
        assert_eq!(item_outcome(stopped), Ok(ItemOutcome::Skipped));
    }

    #[test]
    fn a_malformed_answer_is_not_retried_at_once() {
        assert!(matches!(
            sync_error(ews::Error::Malformed("bad".into())),
            SyncError::Failed(_)
        ));
        assert!(matches!(
            sync_error(ews::Error::Request("reset".into())),
            SyncError::Transient(_)
        ));
    }

    #[test]
    fn constraint_violations_are_not_transient() {
        let stale = DbError::Stale {
            table: "crm_contacts",
            id: 1,
        };
        assert!(is_transient_db(&stale));
        let timeout = DbError::Query {
            what: "x",
            source: sqlx::Error::PoolTimedOut,
        };
        assert!(is_transient_db(&timeout));
        let decode = DbError::Query {
            what: "x",
            source: sqlx::Error::ColumnNotFound("c".into()),
        };
        assert!(!is_transient_db(&decode));
        assert!(matches!(db_error(decode), SyncError::Failed(_)));
    }
}
