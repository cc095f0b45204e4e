//! The first contact of a mailbox's two sides, as `mailsync initial-sync` runs it and as `run`
//! does on a folder's first start (`initial_sync` of the mailbox):
//!
//! - `crm-to-exchange` / `exchange-to-crm`: the folder is listed in full, every row in scope
//!   read, records on both sides linked by their mapping, stamp, Exchange id or — first contact
//!   — by what they have in common ([`super::matching`]); ambiguous ones are left alone and
//!   reported (or synced as separate records when asked); the rest is copied; the direction
//!   decides who wins where linked records differ. Resumable: a restart links what was
//!   already written.
//! - `none`: a baseline — the folder's state is taken as it is now; nothing that exists is
//!   copied, later changes sync.

use std::collections::{BTreeMap, HashSet};

use ews::types::ItemId;
use mailsync_actors::SyncError;

use super::core::db_error;
use super::events::{Action, Direction as Dir};
use super::fields;
use super::items::plan::{LinkBy, Pair, Side};
use super::items::read::{Context, Page};
use super::items::ItemStep;
use super::matching::{match_records, Record};
use crate::db::integrity::{Ambiguous, Side as HeldSide};

/// Decisions of a first contact carried out (and their mappings recorded) at a time.
const CARRY_CHUNK: usize = 500;

/// Which side an initial sync starts from: where linked records differ, its values win.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// CRM rows are written to Exchange first.
    CrmToExchange,
    /// Exchange items are imported into the CRM first.
    ExchangeToCrm,
}

impl Direction {
    /// The configuration's and the CLI's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::CrmToExchange => "crm-to-exchange",
            Direction::ExchangeToCrm => "exchange-to-crm",
        }
    }

    /// The leading system it implies.
    pub fn leading(self) -> crate::config::Leading {
        match self {
            Direction::CrmToExchange => crate::config::Leading::Crm,
            Direction::ExchangeToCrm => crate::config::Leading::Exchange,
        }
    }
}

/// What an initial sync did in one area.
#[derive(Debug, Clone, Default)]
pub struct AreaSummary {
    /// The area.
    pub area: String,
    /// Items looked at.
    pub seen: u64,
    /// Writes by (direction, action).
    pub counts: BTreeMap<(String, String), u64>,
    /// Links by what they matched on.
    pub links: BTreeMap<String, u64>,
    /// Records left alone because their match was ambiguous.
    pub ambiguous: Vec<Ambiguous>,
    /// Deletes held for approval.
    pub held: u64,
    /// Items that went to the failure log.
    pub failures: i64,
    /// Wall time.
    pub seconds: f64,
}

/// The counts of a step, as the summary keeps them.
pub(crate) fn counts(c: &BTreeMap<(Dir, Action), u64>) -> BTreeMap<(String, String), u64> {
    c.iter()
        .map(|((d, a), n)| ((d.as_str().to_owned(), a.as_str().to_owned()), *n))
        .collect()
}

impl ItemStep<'_> {
    /// Reads a folder's whole listing (ids only), page by page; returns the last page (its
    /// state covers everything) with every reported id.
    pub(crate) async fn list_all(&mut self, shared: bool) -> Result<Page, SyncError> {
        let folder = self.folder_state(shared).await?;
        self.list_folder(shared, &folder).await
    }

    /// [`ItemStep::list_all`] of a given folder.
    pub(crate) async fn list_folder(
        &mut self,
        shared: bool,
        folder: &crate::db::state::FolderState,
    ) -> Result<Page, SyncError> {
        let mut all = Page::default();
        let mut from = None;
        loop {
            let page = self.read_page(shared, folder, from.take(), false).await?;
            all.reported.extend(page.reported);
            all.next = page.next;
            if page.complete {
                all.complete = true;
                return Ok(all);
            }
            from = all.next.as_ref().and_then(|n| n.sync_state.clone());
            self.ctx.progress();
        }
    }

    /// `initial_sync = "none"`: the folder's current state is the baseline.
    pub(crate) async fn baseline(&mut self, shared: bool) -> Result<(), SyncError> {
        let page = self.list_all(shared).await?;
        if let Some(next) = page.next {
            self.engine
                .state
                .set_folder_state(self.smtp(), self.folder_key(shared), &next)
                .await
                .map_err(db_error)?;
        }
        tracing::info!(
            mailbox = self.smtp(),
            folder = self.folder_key(shared),
            items = page.reported.len(),
            "baseline taken; only later changes sync"
        );
        Ok(())
    }

    /// The first contact of one folder with its CRM scope (see the module docs). `progress`
    /// gets (done, total).
    pub(crate) async fn first_contact(
        &mut self,
        shared: bool,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<(), SyncError> {
        let separate = matches!(
            self.mode,
            super::items::Mode::Initial {
                separate_ambiguous: true
            }
        );
        // Whatever the listing does not contain of what was mapped is checked afterwards.
        let page = self.list_all(shared).await?;
        self.listed_all = true;
        self.mark_all_unverified(shared).await?;
        let ids: Vec<ItemId> = page
            .reported
            .iter()
            .map(|id| ItemId {
                id: id.clone(),
                change_key: None,
            })
            .collect();
        progress(0, ids.len() as u64);
        let (seen, _missing) = self.fetch(&ids, shared).await?;
        // The rows are read after the items (as late as before, so a CRM edit meanwhile is
        // seen), and the assembly below does not read them again.
        let mut ctx = Context::default();
        let crm_ids: Vec<i64> = {
            // The rows of the folder's own scope only: the own folder's rows are the
            // operator's, the shared folder's the tenant's without an owner (reading both for
            // each folder read every contact twice).
            let owner = (!shared).then_some(self.owner.operator_id);
            let all = self
                .engine
                .crm
                .ids_in_scope(self.table, owner, self.owner.tenant_id)
                .await
                .map_err(db_error)?;
            let rows = self
                .engine
                .crm
                .crm_rows(self.table, &all)
                .await
                .map_err(db_error)?;
            let mut ids = Vec::new();
            for (id, row) in rows {
                if let Ok(row) = row {
                    if super::items::read::scope_of(self.owner, &row) == Some(shared) {
                        ids.push(id);
                        ctx.rows.insert(id, row);
                    }
                }
            }
            ids
        };
        let total = ids.len() as u64 + crm_ids.len() as u64;
        progress(0, total);
        self.seen += seen.len() as u64 + crm_ids.len() as u64;
        let open = self.unverified_open(shared, &page.reported).await?;
        let mut pairs = self.assemble(seen, &[], &crm_ids, &mut ctx).await?;
        self.match_first_contact(&mut pairs, &ctx, separate, shared)
            .await?;
        // Planned and put through the breaker as a whole, carried out in chunks: each chunk's
        // mappings are written before the next begins, so a crash loses at most one chunk's
        // links (and those rows are found again by their Exchange id), and the progress moves.
        let decisions = super::items::plan::plan(&pairs, &self.config);
        drop(pairs);
        let mut decisions = self.hold(decisions).await?;
        let total = decisions.len() as u64;
        let mut done = 0;
        progress(done, total);
        while !decisions.is_empty() {
            let rest = decisions.split_off(decisions.len().min(CARRY_CHUNK));
            done += decisions.len() as u64;
            self.carry_out_decisions(decisions, &mut ctx, true, false)
                .await?;
            progress(done, total);
            decisions = rest;
        }
        if let Some(next) = page.next {
            self.engine
                .state
                .store_state_verifying(self.smtp(), self.folder_key(shared), &next, &page.reported)
                .await
                .map_err(db_error)?;
        }
        self.check_unverified(shared, open).await?;
        self.stamp_waiting(true).await?;
        Ok(())
    }

    async fn mark_all_unverified(&mut self, shared: bool) -> Result<(), SyncError> {
        let state = &self.engine.state;
        let mut all = state
            .mappings_of(self.smtp(), self.table)
            .await
            .map_err(db_error)?;
        all.retain(|m| super::items::to_base(m).shared == shared && !m.unverified);
        for m in &mut all {
            m.unverified = true;
        }
        state.put_mappings(&all).await.map_err(db_error)
    }

    /// Links unpaired records of both sides by what they have in common; records with
    /// several candidates are taken out (and recorded) unless `separate`.
    pub(crate) async fn match_first_contact(
        &mut self,
        pairs: &mut Vec<Pair>,
        ctx: &Context,
        separate: bool,
        shared: bool,
    ) -> Result<(), SyncError> {
        let crm_only: Vec<usize> = pairs
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                p.base.is_none()
                    && p.link.is_none()
                    && p.crm.here().is_some_and(|c| c.scope.is_some())
                    && p.ews.here().is_none()
            })
            .map(|(i, _)| i)
            .collect();
        let ews_only: Vec<usize> = pairs
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                p.base.is_none()
                    && p.link.is_none()
                    && p.crm.here().is_none()
                    && p.ews.here().is_some()
            })
            .map(|(i, _)| i)
            .collect();
        if crm_only.is_empty() || ews_only.is_empty() {
            return self.record_ambiguous(Vec::new(), shared).await;
        }
        let crm_uids: Vec<Option<String>> = crm_only
            .iter()
            .map(|i| {
                let id = pairs[*i].crm.here().map(|c| c.id)?;
                match ctx.rows.get(&id)? {
                    crate::db::rows::CrmRow::Appointment(a) => a.uid.clone(),
                    _ => None,
                }
            })
            .collect();
        let ews_uids: Vec<Option<String>> = ews_only
            .iter()
            .map(|i| {
                let id = &pairs[*i].ews.here()?.id.id;
                ctx.uids.get(id).cloned()
            })
            .collect();
        let crm_records: Vec<Record<'_>> = crm_only
            .iter()
            .zip(&crm_uids)
            .map(|(i, uid)| Record {
                fields: &pairs[*i].crm.here().expect("filtered").fields,
                uid: uid.as_deref(),
            })
            .collect();
        let ews_records: Vec<Record<'_>> = ews_only
            .iter()
            .zip(&ews_uids)
            .map(|(i, uid)| Record {
                fields: &pairs[*i].ews.here().expect("filtered").fields,
                uid: uid.as_deref(),
            })
            .collect();
        let found = match_records(self.area, &crm_records, &ews_records);
        let mut remove: HashSet<usize> = HashSet::new();
        for (c, e, by) in &found.links {
            let (ci, ei) = (crm_only[*c], ews_only[*e]);
            let ews = std::mem::replace(&mut pairs[ei].ews, Side::Unseen);
            pairs[ci].ews = ews;
            pairs[ci].link = Some(by.clone());
            remove.insert(ei);
        }
        let mut ambiguous = Vec::new();
        for (cs, es, key) in &found.ambiguous {
            let crm_ids: Vec<String> = cs
                .iter()
                .filter_map(|c| pairs[crm_only[*c]].crm.here().map(|r| r.id.to_string()))
                .collect();
            let ews_ids: Vec<String> = es
                .iter()
                .filter_map(|e| pairs[ews_only[*e]].ews.here().map(|r| r.id.id.clone()))
                .collect();
            for c in cs {
                let p = &pairs[crm_only[*c]];
                if let Some(r) = p.crm.here() {
                    ambiguous.push(Ambiguous {
                        crm_table: self.table.to_owned(),
                        side: HeldSide::Crm,
                        record: r.id.to_string(),
                        title: format!("{} ({key})", fields::title(self.area, &r.fields)),
                        candidates: ews_ids.clone(),
                    });
                }
                if !separate {
                    remove.insert(crm_only[*c]);
                }
            }
            for e in es {
                let p = &pairs[ews_only[*e]];
                if let Some(r) = p.ews.here() {
                    ambiguous.push(Ambiguous {
                        crm_table: self.table.to_owned(),
                        side: HeldSide::Exchange,
                        record: r.id.id.clone(),
                        title: format!("{} ({key})", fields::title(self.area, &r.fields)),
                        candidates: crm_ids.clone(),
                    });
                }
                if !separate {
                    remove.insert(ews_only[*e]);
                }
            }
        }
        if !ambiguous.is_empty() {
            tracing::warn!(
                mailbox = self.smtp(),
                area = self.area.as_str(),
                records = ambiguous.len(),
                separate,
                "ambiguous first-contact matches: {}",
                if separate {
                    "synced as separate records"
                } else {
                    "left alone; see the plan or the initial sync's summary"
                }
            );
        }
        let mut i = 0;
        pairs.retain(|_| {
            let keep = !remove.contains(&i);
            i += 1;
            keep
        });
        self.record_ambiguous(
            if separate {
                Vec::new()
            } else {
                ambiguous.clone()
            },
            shared,
        )
        .await?;
        self.ambiguous.extend(ambiguous);
        Ok(())
    }

    /// Records the ambiguous records of a folder: the own folder's list replaces the area's
    /// (the first contact starts with it), the shared folder's is added to it.
    async fn record_ambiguous(
        &mut self,
        all: Vec<Ambiguous>,
        shared: bool,
    ) -> Result<(), SyncError> {
        if self.dry_run {
            return Ok(());
        }
        let state = &self.engine.state;
        if shared {
            return state
                .add_ambiguous(self.smtp(), self.table, &all)
                .await
                .map_err(db_error);
        }
        state
            .set_ambiguous(self.smtp(), self.table, &all)
            .await
            .map_err(db_error)
    }
}

/// What the plan says a link matched on (for summaries).
pub fn describe_link(by: &LinkBy) -> String {
    by.describe()
}
