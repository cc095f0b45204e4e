//! The engine: the service's implementation of the runtime's `SyncPort`, and the entry to an
//! initial sync from the command line. It routes a step to the area that syncs the folder —
//! contacts, calendar and tasks ([`super::items`]) or the mail tree ([`super::mail`]) — and
//! decides what a folder's first start does (`initial_sync` of the mailbox).

use std::collections::BTreeMap;
use std::sync::Arc;

use ews::types::ItemId;
use futures_util::future::BoxFuture;
use mailsync_actors::{
    Cause, FolderId, MailboxSpec, StepContext, StepReport, StepRequest, SyncError, SyncPort,
};

pub use super::core::MailboxSetup;
use super::core::{db_error, Inner};
use super::initial::counts;
pub use super::initial::{AreaSummary, Direction};
use super::items::{ItemStep, Mode, SHARED_CONTACTS};
use super::mail::{MailState, MailStep, MAIL};
use super::open::area_of;
use crate::config::{Area, AreaConfig, InitialSync, Leading};
use crate::db::Db;
use crate::metrics::ServiceMetrics;

/// The engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    /// Databases, mailboxes, the EWS call.
    inner: Arc<Inner>,
    /// The mail side's per-process state (roles, folders with news).
    mail: Arc<MailState>,
    /// In a cluster: the leases, whose fence token every step carries (src/cluster/fence.rs).
    cluster: Arc<std::sync::OnceLock<crate::cluster::Cluster>>,
}

impl Engine {
    /// An engine over the business database and the state store.
    pub fn new(crm: Db, state: Db, same_db: bool, metrics: ServiceMetrics) -> Self {
        Engine {
            inner: Arc::new(Inner::new(crm, state, same_db, metrics)),
            mail: Arc::new(MailState::default()),
            cluster: Arc::default(),
        }
    }

    /// Makes every step carry the fence of its mailbox's lease (a cluster member).
    pub fn fenced_by(&self, cluster: crate::cluster::Cluster) {
        let _ = self.cluster.set(cluster);
    }

    /// Runs `fut` for `mailbox` under its fence, its CRM writes marked as the mailbox's own
    /// (the change feed does not queue them back to it); in a cluster, a mailbox this
    /// instance does not own (any more) runs nothing.
    async fn fenced<T>(
        self,
        mailbox: &str,
        fut: impl std::future::Future<Output = Result<T, SyncError>>,
    ) -> Result<T, SyncError> {
        let Some(cluster) = self.cluster.get() else {
            return crate::cluster::fence::origin_scope(mailbox.to_owned(), fut).await;
        };
        match cluster.fence(mailbox) {
            Some(fence) => crate::cluster::fence::scope(fence, fut).await,
            None => Err(SyncError::Denied(format!(
                "{mailbox} is not owned by this instance (cluster lease)"
            ))),
        }
    }

    /// Whether a notification about `id` is the echo of our own last write of it (consumed).
    pub(crate) fn is_own_write(&self, id: &ItemId) -> bool {
        self.inner.is_own_write(id)
    }

    /// Whether an Exchange folder is a synced mail folder or a mail root; an item event there
    /// (`item`) is noted for the mailbox's next mail step.
    pub(crate) fn mail_folder_event(&self, folder: &str, item: bool) -> bool {
        let Some(mailbox) = self.mail.mailbox_of(folder) else {
            return false;
        };
        if item {
            self.mail.mark_dirty(&mailbox, folder);
        }
        true
    }

    /// Replaces the set of mailboxes (startup and reload).
    pub fn set_mailboxes(&self, setups: Vec<MailboxSetup>) {
        self.inner.set_mailboxes(setups);
    }

    /// The setup of a mailbox.
    pub fn mailbox(&self, smtp: &str) -> Option<Arc<MailboxSetup>> {
        self.inner.mailbox(smtp)
    }

    /// The business database.
    pub fn crm(&self) -> &Db {
        &self.inner.crm
    }

    /// The state store.
    pub fn state(&self) -> &Db {
        &self.inner.state
    }

    /// The shared core (for the plan command and tests in this crate).
    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// Whether a folder starts for the first time: no stored state and nothing mapped.
    async fn first_start(&self, smtp: &str, key: &str, table: &str) -> Result<bool, SyncError> {
        let state = self
            .inner
            .state
            .folder_state(smtp, key)
            .await
            .map_err(db_error)?;
        if state.sync_state.is_some() {
            return Ok(false);
        }
        let mapped = self
            .inner
            .state
            .count_mappings(smtp, table)
            .await
            .map_err(db_error)?;
        Ok(mapped == 0)
    }

    async fn step(self, req: StepRequest) -> Result<StepReport, SyncError> {
        let inner = &*self.inner;
        let smtp: &str = &req.mailbox;
        let setup = inner.setup(smtp)?;
        let owner = inner.owner(&setup).await?;
        if &*req.folder == MAIL {
            return self.mail_step(&setup, owner, &req).await;
        }
        let area = area_of(&req.folder)?;
        let mut config = setup
            .areas
            .get(&area)
            .cloned()
            .ok_or_else(|| SyncError::Failed(format!("{area:?} is not enabled")))?;
        let shared = &*req.folder == SHARED_CONTACTS;
        let table = super::fields::table(area);
        let first = !req.full_resync && self.first_start(smtp, &req.folder, table).await?;
        let mode = match (first, setup.initial_sync) {
            (false, _) => Mode::Continuous,
            (true, InitialSync::None) => Mode::Baseline,
            (true, direction) => {
                config.leading = match direction {
                    InitialSync::ExchangeToCrm => Leading::Exchange,
                    _ => Leading::Crm,
                };
                Mode::Initial {
                    separate_ambiguous: setup.sync_ambiguous,
                }
            }
        };
        if shared && mode != Mode::Continuous {
            // The first contact of the shared folder is the `contacts` actor's (it writes
            // every contact row, so no row is handled by two actors at once).
            return Ok(StepReport::default());
        }
        let mut step = ItemStep::new(inner, &setup, owner, area, config, &req.ctx, mode);
        let folders: &[bool] = if area == Area::Contacts {
            &[false, true]
        } else {
            &[false]
        };
        let more = match mode {
            Mode::Baseline => {
                for shared in folders {
                    step.baseline(*shared).await?;
                }
                false
            }
            Mode::Initial { .. } => {
                tracing::info!(mailbox = smtp, folder = %req.folder, direction = ?setup.initial_sync, "first start: initial sync");
                let ctx = req.ctx.clone();
                let report = move |done: u64, total: u64| ctx.report_progress(done, total);
                for shared in folders {
                    step.first_contact(*shared, &report).await?;
                }
                false
            }
            Mode::Continuous => {
                if req.full_resync && !shared {
                    step.queue_all().await?;
                }
                // A step only for CRM changes needs no SyncFolderItems: updates carry the
                // ChangeKey last seen and are refused if Exchange changed since (that change's
                // notification then runs a full step), so an isolated CRM change costs its write.
                let pull = req.full_resync || req.causes.iter().any(|c| c != Cause::Crm);
                step.run(shared, pull, req.full_resync).await?
            }
        };
        let held = self.held_now(smtp, &[table]).await?;
        Ok(StepReport {
            items: step.items,
            more,
            wake_in: step.wake,
            held,
            progress: None,
        })
    }

    /// Deletes of these tables held for a decision now (the folder's `held` state).
    async fn held_now(&self, smtp: &str, tables: &[&str]) -> Result<u64, SyncError> {
        let mut n = 0;
        for t in tables {
            n += self
                .inner
                .state
                .held(smtp, Some(t))
                .await
                .map_err(db_error)?
                .len() as u64;
        }
        Ok(n)
    }

    async fn mail_step(
        &self,
        setup: &MailboxSetup,
        owner: super::core::Owner,
        req: &StepRequest,
    ) -> Result<StepReport, SyncError> {
        let mut leading = setup
            .areas
            .get(&Area::Mail)
            .map_or(Leading::Crm, |c| c.leading);
        // A first start: the tree and the folders have no state and nothing is mapped.
        let first = !req.full_resync
            && self
                .first_start(&setup.smtp, super::mail::HIERARCHY, "crm_mails")
                .await?
            && self
                .inner
                .state
                .count_mappings(&setup.smtp, "crm_mail_folders")
                .await
                .map_err(db_error)?
                == 0;
        let mut full = req.full_resync;
        let mut baseline = false;
        if first {
            match setup.initial_sync {
                InitialSync::None => baseline = true,
                InitialSync::CrmToExchange => {
                    leading = Leading::Crm;
                    full = true;
                }
                InitialSync::ExchangeToCrm => {
                    leading = Leading::Exchange;
                    full = true;
                }
            }
        }
        let mut step = MailStep {
            engine: &self.inner,
            mail: &self.mail,
            setup,
            owner,
            ctx: &req.ctx,
            leading,
            items: 0,
            seen: 0,
            counts: BTreeMap::new(),
            held: 0,
            baseline,
        };
        // Only notifications, CRM changes or a previous "more": read only the folders that
        // were named; a start, a timer or an operator reads every synced folder.
        let only_dirty = !full
            && req
                .causes
                .iter()
                .all(|c| matches!(c, Cause::Notification | Cause::Crm | Cause::More));
        let more = step.run(full, only_dirty).await?;
        let held = self
            .held_now(&setup.smtp, &["crm_mails", "crm_mail_folders"])
            .await?;
        Ok(StepReport {
            items: step.items,
            more,
            wake_in: None,
            held,
            progress: None,
        })
    }

    /// The initial sync of one mailbox from the command line: every area from scratch, linked
    /// where both sides hold a record, copied where one does. Resumable: a restart after a
    /// crash links what was already written. `progress(area, done, total)` is called as the
    /// work advances. `separate_ambiguous`: ambiguous first-contact matches are synced as
    /// separate records instead of being left alone. Its CRM writes are the mailbox's own
    /// (the change feed does not queue them back to it).
    pub async fn initial_sync(
        &self,
        spec: &MailboxSpec,
        direction: Direction,
        throttle: mailsync_actors::Throttle,
        separate_ambiguous: bool,
        progress: &(dyn Fn(&str, u64, u64) + Send + Sync),
    ) -> Result<Vec<AreaSummary>, SyncError> {
        crate::cluster::fence::origin_scope(
            spec.smtp.to_string(),
            self.initial_sync_unscoped(spec, direction, throttle, separate_ambiguous, progress),
        )
        .await
    }

    async fn initial_sync_unscoped(
        &self,
        spec: &MailboxSpec,
        direction: Direction,
        throttle: mailsync_actors::Throttle,
        separate_ambiguous: bool,
        progress: &(dyn Fn(&str, u64, u64) + Send + Sync),
    ) -> Result<Vec<AreaSummary>, SyncError> {
        let inner = &*self.inner;
        let ctx = StepContext::new(throttle);
        let folders = inner.open(spec, ctx.clone()).await?;
        let setup = inner.setup(&spec.smtp)?;
        let owner = inner.owner(&setup).await?;
        let mut summaries = Vec::new();
        for folder in folders.into_iter().filter(|f| &**f != SHARED_CONTACTS) {
            let started = std::time::Instant::now();
            if &*folder == MAIL {
                summaries.push(
                    self.initial_mail(&setup, owner, &ctx, direction, progress)
                        .await?,
                );
                continue;
            }
            let area = area_of(&folder)?;
            let mut config = setup.areas.get(&area).cloned().unwrap_or(AreaConfig {
                leading: Leading::Crm,
                categories: vec![],
            });
            config.leading = direction.leading();
            let table = super::fields::table(area);
            let failures_before = inner
                .state
                .failures_count(&setup.smtp, table)
                .await
                .map_err(db_error)?;
            let mut step = ItemStep::new(
                inner,
                &setup,
                owner,
                area,
                config,
                &ctx,
                Mode::Initial { separate_ambiguous },
            );
            for shared in [false, true]
                .into_iter()
                .filter(|s| !*s || area == Area::Contacts)
            {
                let report = |done: u64, total: u64| progress(area.as_str(), done, total);
                step.first_contact(shared, &report).await?;
            }
            let failures = inner
                .state
                .failures_count(&setup.smtp, table)
                .await
                .map_err(db_error)?
                - failures_before;
            summaries.push(AreaSummary {
                area: area.as_str().to_owned(),
                seen: step.seen,
                counts: counts(&step.counts),
                links: step.links.clone(),
                ambiguous: step.ambiguous.clone(),
                held: step.held,
                failures,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        Ok(summaries)
    }

    /// The initial sync of a mailbox's mail: the folder tree and every message of the synced
    /// folders from scratch, steps repeated until nothing is left.
    async fn initial_mail(
        &self,
        setup: &MailboxSetup,
        owner: super::core::Owner,
        ctx: &StepContext,
        direction: Direction,
        progress: &(dyn Fn(&str, u64, u64) + Send + Sync),
    ) -> Result<AreaSummary, SyncError> {
        let inner = &*self.inner;
        let started = std::time::Instant::now();
        let failures_before = inner
            .state
            .failures_count(&setup.smtp, "crm_mails")
            .await
            .map_err(db_error)?;
        let crm_total = inner
            .crm
            .ids_in_scope("crm_mails", Some(owner.operator_id), owner.tenant_id)
            .await
            .map_err(db_error)?
            .len() as u64;
        let mut step = MailStep {
            engine: inner,
            mail: &self.mail,
            setup,
            owner,
            ctx,
            leading: direction.leading(),
            items: 0,
            seen: 0,
            counts: BTreeMap::new(),
            held: 0,
            baseline: false,
        };
        let mut full = true;
        loop {
            // Every step is resumable: a server that says "busy" is waited for, not fatal.
            let more = match step.run(full, false).await {
                Ok(more) => more,
                Err(SyncError::Throttled { back_off }) => {
                    tokio::time::sleep(back_off).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            full = false;
            progress(MAIL, step.seen, step.seen.max(crm_total));
            if !more {
                break;
            }
        }
        let failures = inner
            .state
            .failures_count(&setup.smtp, "crm_mails")
            .await
            .map_err(db_error)?
            - failures_before;
        Ok(AreaSummary {
            area: MAIL.to_owned(),
            seen: step.seen,
            counts: counts(&step.counts),
            held: step.held,
            failures,
            seconds: started.elapsed().as_secs_f64(),
            ..AreaSummary::default()
        })
    }
}

impl SyncPort for Engine {
    fn open_mailbox(
        &self,
        mailbox: &MailboxSpec,
        ctx: StepContext,
    ) -> BoxFuture<'static, Result<Vec<FolderId>, SyncError>> {
        let engine = self.clone();
        let spec = mailbox.clone();
        Box::pin(async move {
            let open = engine.inner.clone();
            engine
                .fenced(
                    &spec.smtp.clone(),
                    async move { open.open(&spec, ctx).await },
                )
                .await
        })
    }

    fn sync_folder(&self, step: StepRequest) -> BoxFuture<'static, Result<StepReport, SyncError>> {
        let engine = self.clone();
        Box::pin(async move {
            let mailbox = step.mailbox.clone();
            engine.clone().fenced(&mailbox, engine.step(step)).await
        })
    }
}
