//! `mailsync plan`: what the initial sync of a mailbox (or, for a mailbox that already syncs,
//! a full resync) would do, per area and side, without doing any of it. Only EWS read
//! operations are sent (GetFolder, FindFolder, SyncFolderHierarchy, SyncFolderItems, GetItem)
//! and neither database is written: the planner is the one the sync runs
//! ([`super::items::plan`], [`super::matching`], [`super::breaker`]), fed by the same read
//! phase with its writes switched off.

use std::collections::{BTreeMap, HashMap, HashSet};

use ews::items::Item;
use ews::ops::{GetFolder, ItemChange, SyncFolderHierarchy, SyncFolderItems};
use ews::types::{BaseShape, DistinguishedFolder, FolderRef, ItemId, PropertyPath, Shape};
use mailsync_actors::{StepContext, SyncError};
use serde::Serialize;

use super::breaker;
use super::core::{db_error, Inner, MailboxSetup, Owner};
use super::fields;
use super::initial::Direction;
use super::items::plan::{CrmWrite, Decision, EwsWrite, LinkBy, MapOp};
use super::items::read::Context;
use super::items::{ItemStep, Mode, ITEM_BATCH};
use crate::config::{Area, AreaConfig};
use crate::db::integrity::Side as HeldSide;
use crate::db::state::FolderState;

/// Writes planned on one side.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SidePlan {
    /// Records created.
    pub creates: u64,
    /// Records updated.
    pub updates: u64,
    /// Records deleted (held ones included; see `held`).
    pub deletes: u64,
    /// Updated fields and how often.
    pub fields: BTreeMap<String, u64>,
}

/// One planned change, for `--items`.
#[derive(Debug, Clone, Serialize)]
pub struct ItemPlan {
    /// What happens: create, update, delete, link, conflict, ambiguous, fails.
    pub action: String,
    /// On which side (crm, exchange, both).
    pub side: String,
    /// The CRM row, if any.
    pub crm_id: Option<i64>,
    /// The Exchange item, if any.
    pub ews_id: Option<String>,
    /// What a person recognises it by.
    pub title: String,
    /// More: the fields, what a link matched on, why it fails.
    pub detail: String,
}

/// The plan of one area (and scope) of a mailbox.
#[derive(Debug, Clone, Serialize)]
pub struct AreaPlan {
    /// contacts, calendar, tasks, mail.
    pub area: String,
    /// own, shared, or for mail the whole tree.
    pub scope: String,
    /// Records in the CRM's scope.
    pub crm_records: u64,
    /// Items in the Exchange folder.
    pub exchange_items: u64,
    /// Writes to Exchange.
    pub exchange: SidePlan,
    /// Writes to the CRM.
    pub crm: SidePlan,
    /// Links (records on both sides paired instead of copied) by what they matched on.
    pub links: BTreeMap<String, u64>,
    /// Fields both sides hold differently; the direction's side wins.
    pub conflicts: u64,
    /// Records with several candidates: left alone unless asked for (`--sync-ambiguous`).
    pub ambiguous: u64,
    /// Deletes the breaker would hold, per side, with the reason.
    pub held: Vec<String>,
    /// Records that could not be synced, with the reason.
    pub failures: u64,
    /// EWS requests the plan read with.
    pub read_requests: u64,
    /// EWS requests carrying it out would take (an estimate: batches of the sync's sizes).
    pub write_requests: u64,
    /// Bytes of mail to move (mail only).
    pub bytes: u64,
    /// The items, on request.
    pub items: Vec<ItemPlan>,
}

/// The plan of a mailbox.
#[derive(Debug, Clone, Serialize)]
pub struct MailboxPlan {
    /// The mailbox.
    pub mailbox: String,
    /// What the plan was made for: the initial sync in this direction, or a full resync of a
    /// mailbox that already syncs.
    pub mode: String,
    /// Per area.
    pub areas: Vec<AreaPlan>,
    /// EWS requests in all (read + estimated writes).
    pub requests: u64,
    /// Seconds those requests take at the server's configured budget.
    pub seconds: f64,
}

fn batches(n: u64, size: u64) -> u64 {
    n.div_ceil(size.max(1))
}

/// Plans one mailbox. `requests_per_second` is its server's budget.
pub async fn plan_mailbox(
    inner: &Inner,
    setup: &MailboxSetup,
    ctx: &StepContext,
    direction: Option<Direction>,
    items: bool,
    requests_per_second: f64,
) -> Result<MailboxPlan, SyncError> {
    let owner = inner.resolve_owner(setup).await?;
    let syncing = inner
        .state
        .count_mappings(&setup.smtp, "crm_contacts")
        .await
        .map_err(db_error)?
        + inner
            .state
            .count_mappings(&setup.smtp, "crm_appointments")
            .await
            .map_err(db_error)?
        + inner
            .state
            .count_mappings(&setup.smtp, "crm_tasks")
            .await
            .map_err(db_error)?
        + inner
            .state
            .count_mappings(&setup.smtp, "crm_mails")
            .await
            .map_err(db_error)?
        > 0;
    let direction = direction.unwrap_or(match setup.initial_sync {
        crate::config::InitialSync::ExchangeToCrm => Direction::ExchangeToCrm,
        _ => Direction::CrmToExchange,
    });
    let mode = if syncing {
        format!(
            "full resync ({} wins where both differ)",
            direction.as_str()
        )
    } else {
        format!("initial sync {}", direction.as_str())
    };
    let mut areas = Vec::new();
    for (area, config) in &setup.areas {
        if *area == Area::Mail {
            areas.push(plan_mail(inner, setup, owner, ctx, items).await?);
            continue;
        }
        let mut config: AreaConfig = config.clone();
        config.leading = direction.leading();
        for shared in [false, true]
            .into_iter()
            .filter(|s| !*s || *area == Area::Contacts)
        {
            areas.push(
                plan_area(
                    inner,
                    setup,
                    owner,
                    ctx,
                    *area,
                    config.clone(),
                    shared,
                    items,
                )
                .await?,
            );
        }
    }
    let requests: u64 = areas
        .iter()
        .map(|a| a.read_requests + a.write_requests)
        .sum();
    Ok(MailboxPlan {
        mailbox: setup.smtp.clone(),
        mode,
        seconds: requests as f64 / requests_per_second.max(0.001),
        requests,
        areas,
    })
}

/// The area's Exchange folder, read-only (nothing created, nothing recorded).
async fn folder_of(
    inner: &Inner,
    setup: &MailboxSetup,
    ctx: &StepContext,
    area: Area,
    shared: bool,
) -> Result<Option<ItemId>, SyncError> {
    let id = inner.area_folder(setup, ctx, area).await?;
    if !shared {
        return Ok(Some(id));
    }
    inner.find_shared_contacts(setup, ctx, &id).await
}

#[allow(clippy::too_many_arguments)]
async fn plan_area(
    inner: &Inner,
    setup: &MailboxSetup,
    owner: Owner,
    ctx: &StepContext,
    area: Area,
    config: AreaConfig,
    shared: bool,
    with_items: bool,
) -> Result<AreaPlan, SyncError> {
    let mut step = ItemStep::new(
        inner,
        setup,
        owner,
        area,
        config,
        ctx,
        Mode::Initial {
            separate_ambiguous: setup.sync_ambiguous,
        },
    );
    step.dry_run = true;
    let mut reads = 1 + u64::from(shared);
    let folder = folder_of(inner, setup, ctx, area, shared).await?;
    let mut listed = Vec::new();
    if let Some(folder) = &folder {
        let state = FolderState {
            ews_folder_id: Some(folder.id.clone()),
            sync_state: None,
        };
        let page = step.list_folder(shared, &state).await?;
        reads += batches(
            page.reported.len() as u64,
            ews::ops::MAX_CHANGES_RETURNED as u64,
        )
        .max(1);
        listed = page.reported;
    }
    let ids: Vec<ItemId> = listed
        .iter()
        .map(|id| ItemId {
            id: id.clone(),
            change_key: None,
        })
        .collect();
    reads += batches(ids.len() as u64, ITEM_BATCH as u64);
    let (seen, _) = step.fetch(&ids, shared).await?;
    let all = step.ids_in_scope().await?;
    let rows = inner
        .crm
        .crm_rows(step.table, &all)
        .await
        .map_err(db_error)?;
    let crm_ids: Vec<i64> = rows
        .into_iter()
        .filter_map(|(id, r)| {
            let r = r.ok()?;
            (super::items::read::scope_of(owner, &r) == Some(shared)).then_some(id)
        })
        .collect();
    let mut ctx_rows = Context::default();
    let exchange_items = seen.len() as u64;
    let mut pairs = step.assemble(seen, &[], &crm_ids, &mut ctx_rows).await?;
    // Mapped items the listing does not contain are gone: what a full read finds.
    let listed_set: HashSet<&String> = listed.iter().collect();
    for p in &mut pairs {
        if let (Some(b), super::items::plan::Side::Unseen) = (&p.base, &p.ews) {
            if !listed_set.contains(&b.ews.id) {
                p.ews = super::items::plan::Side::Gone;
            }
        }
    }
    let separate = setup.sync_ambiguous;
    step.match_first_contact(&mut pairs, &ctx_rows, separate, shared)
        .await?;
    let decisions = super::items::plan::plan(&pairs, &step.config);
    let mut out = AreaPlan {
        area: area.as_str().to_owned(),
        scope: if shared { "shared" } else { "own" }.to_owned(),
        crm_records: crm_ids.len() as u64,
        exchange_items,
        exchange: SidePlan::default(),
        crm: SidePlan::default(),
        links: BTreeMap::new(),
        conflicts: 0,
        ambiguous: step.ambiguous.len() as u64,
        held: Vec::new(),
        failures: step.would_park.len() as u64,
        read_requests: reads,
        write_requests: 0,
        bytes: 0,
        items: Vec::new(),
    };
    let mut deletes: HashMap<HeldSide, u64> = HashMap::new();
    for d in &decisions {
        tally(area, d, &mut out, with_items);
        if let Some(side) = d.delete() {
            *deletes.entry(side).or_default() += 1;
        }
    }
    let mapped = inner
        .state
        .mappings_of(&setup.smtp, step.table)
        .await
        .map_err(db_error)?
        .iter()
        .filter(|m| super::items::to_base(m).shared == shared)
        .count() as u64;
    for (side, n) in deletes {
        if let Some(reason) = breaker::check(n, mapped, setup.breaker, false) {
            out.held.push(format!(
                "{n} deletes in the {} would be held: {}",
                side.as_str(),
                reason.describe()
            ));
        }
    }
    if with_items {
        for a in &step.ambiguous {
            out.items.push(ItemPlan {
                action: "ambiguous".into(),
                side: a.side.as_str().into(),
                crm_id: (a.side == HeldSide::Crm)
                    .then(|| a.record.parse().ok())
                    .flatten(),
                ews_id: (a.side == HeldSide::Exchange).then(|| a.record.clone()),
                title: a.title.clone(),
                detail: format!("candidates: {}", a.candidates.join(", ")),
            });
        }
        for (crm_id, ews_id, reason) in &step.would_park {
            out.items.push(ItemPlan {
                action: "fails".into(),
                side: String::new(),
                crm_id: (*crm_id != 0).then_some(*crm_id),
                ews_id: (!ews_id.is_empty()).then(|| ews_id.clone()),
                title: String::new(),
                detail: reason.clone(),
            });
        }
    }
    let imports = out.crm.creates;
    out.write_requests = batches(out.exchange.creates, ITEM_BATCH as u64)
        + batches(out.exchange.updates + imports, ITEM_BATCH as u64)
        + batches(out.exchange.deletes, ITEM_BATCH as u64);
    Ok(out)
}

fn tally(area: Area, d: &Decision, out: &mut AreaPlan, with_items: bool) {
    let title = match (&d.ews, &d.crm, &d.map) {
        (Some(EwsWrite::Create { fields: f, .. }), _, _)
        | (Some(EwsWrite::Update { fields: f, .. }), _, _)
        | (_, Some(CrmWrite::Insert { fields: f, .. }), _)
        | (_, Some(CrmWrite::Update { fields: f, .. }), _)
        | (_, _, MapOp::Put { fields: f, .. }) => fields::title(area, f),
        _ => d
            .base
            .as_ref()
            .map(|b| fields::title(area, &b.fields))
            .unwrap_or_default(),
    };
    let mut push = |action: &str, side: &str, detail: String| {
        if with_items {
            out.items.push(ItemPlan {
                action: action.into(),
                side: side.into(),
                crm_id: d.crm_id,
                ews_id: d.ews_id.clone(),
                title: title.clone(),
                detail,
            });
        }
    };
    if let Some(link) = &d.link {
        let by: &LinkBy = link;
        *out.links.entry(by.kind().to_owned()).or_default() += 1;
        push("link", "both", by.describe());
    }
    if let Some(c) = &d.conflict {
        out.conflicts += 1;
        push("conflict", "both", c.fields.join(", "));
    }
    match &d.ews {
        Some(EwsWrite::Create { .. }) | Some(EwsWrite::Recreate { .. }) => {
            out.exchange.creates += 1;
            push("create", "exchange", String::new());
        }
        Some(EwsWrite::Update { changed, .. }) => {
            out.exchange.updates += 1;
            for f in changed {
                *out.exchange.fields.entry(f.clone()).or_default() += 1;
            }
            push("update", "exchange", changed.join(", "));
        }
        Some(EwsWrite::Delete { .. }) => {
            out.exchange.deletes += 1;
            push("delete", "exchange", String::new());
        }
        None => {}
    }
    match &d.crm {
        Some(CrmWrite::Insert { .. }) => {
            out.crm.creates += 1;
            push("create", "crm", String::new());
        }
        Some(CrmWrite::Update { changed, .. }) => {
            out.crm.updates += 1;
            for f in changed {
                *out.crm.fields.entry(f.clone()).or_default() += 1;
            }
            push("update", "crm", changed.join(", "));
        }
        Some(CrmWrite::Delete { .. }) => {
            out.crm.deletes += 1;
            push("delete", "crm", String::new());
        }
        None => {}
    }
    if let Some(reason) = &d.fail {
        out.failures += 1;
        push("fails", "", reason.clone());
    }
}

/// The mail tree and its messages, compared: folders linked by role, mapping or path;
/// messages by stamp, Exchange id or Internet-Message-ID.
async fn plan_mail(
    inner: &Inner,
    setup: &MailboxSetup,
    owner: Owner,
    ctx: &StepContext,
    with_items: bool,
) -> Result<AreaPlan, SyncError> {
    const ROLES: [(DistinguishedFolder, &str); 6] = [
        (DistinguishedFolder::Inbox, "inbox"),
        (DistinguishedFolder::SentItems, "sentitems"),
        (DistinguishedFolder::Drafts, "drafts"),
        (DistinguishedFolder::DeletedItems, "deleteditems"),
        (DistinguishedFolder::JunkEmail, "junkemail"),
        (DistinguishedFolder::Outbox, "outbox"),
    ];
    let mut out = AreaPlan {
        area: "mail".into(),
        scope: "tree".into(),
        crm_records: 0,
        exchange_items: 0,
        exchange: SidePlan::default(),
        crm: SidePlan::default(),
        links: BTreeMap::new(),
        conflicts: 0,
        ambiguous: 0,
        held: Vec::new(),
        failures: 0,
        read_requests: 2,
        write_requests: 0,
        bytes: 0,
        items: Vec::new(),
    };
    // Exchange's tree: the roles, then every folder from scratch.
    let mut refs = vec![FolderRef::well_known(DistinguishedFolder::MsgFolderRoot)];
    refs.extend(ROLES.iter().map(|(d, _)| FolderRef::well_known(*d)));
    let found = inner
        .call(
            setup,
            ctx,
            &GetFolder {
                folders: refs,
                shape: Shape::id_only(),
            },
        )
        .await?;
    let mut root = String::new();
    let mut role_of: HashMap<String, &str> = HashMap::new();
    for (i, f) in found.into_iter().enumerate() {
        let Some(id) = f.ok().and_then(|f| f.id) else {
            continue;
        };
        if i == 0 {
            root = id.id;
        } else {
            role_of.insert(id.id, ROLES[i - 1].1);
        }
    }
    let mut ews_folders: Vec<ews::items::Folder> = Vec::new();
    let mut state = None;
    loop {
        let reply = inner
            .call(
                setup,
                ctx,
                &SyncFolderHierarchy {
                    folder: Some(FolderRef::well_known(DistinguishedFolder::MsgFolderRoot)),
                    shape: Shape::all_properties(vec![]),
                    sync_state: state.take(),
                },
            )
            .await?;
        out.read_requests += 1;
        for c in reply.changes {
            if let ews::ops::FolderChange::Create(f) | ews::ops::FolderChange::Update(f) = c {
                if f.folder_class
                    .as_deref()
                    .is_none_or(|c| c == "IPF.Note" || c.starts_with("IPF.Note."))
                {
                    ews_folders.push(f);
                }
            }
        }
        if reply.includes_last {
            break;
        }
        state = Some(reply.sync_state);
    }
    let by_id: HashMap<String, &ews::items::Folder> = ews_folders
        .iter()
        .filter_map(|f| Some((f.id.as_ref()?.id.clone(), f)))
        .collect();
    let ews_path = |f: &ews::items::Folder| {
        let mut parts = Vec::new();
        let mut cur = Some(f);
        while let Some(x) = cur {
            let id = x.id.as_ref().map(|i| i.id.clone()).unwrap_or_default();
            parts.push(
                role_of
                    .get(&id)
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| x.display_name.clone().unwrap_or_default()),
            );
            cur = x
                .parent
                .as_ref()
                .filter(|p| p.id != root)
                .and_then(|p| by_id.get(&p.id).copied());
            if parts.len() > 64 {
                break;
            }
        }
        parts.reverse();
        parts.join("/").to_lowercase()
    };
    let crm_folders = inner
        .crm
        .mail_folders(owner.operator_id)
        .await
        .map_err(db_error)?;
    let crm_by_id: HashMap<i64, &crate::db::mail::MailFolderRow> =
        crm_folders.iter().map(|f| (f.id, f)).collect();
    let crm_path = |row: &crate::db::mail::MailFolderRow| {
        let mut parts = Vec::new();
        let mut cur = Some(row);
        while let Some(r) = cur {
            parts.push(r.role.clone().unwrap_or_else(|| r.name.clone()));
            cur = r.parent_id.and_then(|p| crm_by_id.get(&p).copied());
            if parts.len() > 64 {
                break;
            }
        }
        parts.reverse();
        parts.join("/").to_lowercase()
    };
    let crm_by_path: HashMap<String, &crate::db::mail::MailFolderRow> =
        crm_folders.iter().map(|f| (crm_path(f), f)).collect();
    let mut linked: Vec<(String, &crate::db::mail::MailFolderRow, String)> = Vec::new();
    let mut ews_paths: HashSet<String> = HashSet::new();
    for f in &ews_folders {
        let path = ews_path(f);
        ews_paths.insert(path.clone());
        match crm_by_path.get(&path) {
            Some(row) => {
                *out.links.entry("folder path or role".into()).or_default() += 1;
                linked.push((
                    path,
                    row,
                    f.id.as_ref().map(|i| i.id.clone()).unwrap_or_default(),
                ));
            }
            None => {
                out.crm.creates += 1;
                if with_items {
                    out.items.push(ItemPlan {
                        action: "create folder".into(),
                        side: "crm".into(),
                        crm_id: None,
                        ews_id: f.id.as_ref().map(|i| i.id.clone()),
                        title: path,
                        detail: String::new(),
                    });
                }
            }
        }
    }
    for (path, row) in &crm_by_path {
        if !ews_paths.contains(path) {
            out.exchange.creates += 1;
            out.write_requests += 1;
            if with_items {
                out.items.push(ItemPlan {
                    action: "create folder".into(),
                    side: "exchange".into(),
                    crm_id: Some(row.id),
                    ews_id: None,
                    title: path.clone(),
                    detail: String::new(),
                });
            }
        }
    }
    // Messages of the linked folders.
    let shape = Shape {
        base: BaseShape::IdOnly,
        additional: vec![
            PropertyPath::Field("item:Size".into()),
            PropertyPath::Field("message:InternetMessageId".into()),
            fields::crm_id_path(),
        ],
    };
    let mut to_crm_bytes = 0u64;
    for (path, row, ews_id) in linked {
        let excluded = row.sync_excluded
            || setup.mail.excluded_folders.iter().any(|p| {
                path == p.to_lowercase() || path.starts_with(&format!("{}/", p.to_lowercase()))
            });
        if excluded || ews_id.is_empty() {
            continue;
        }
        let mut messages = Vec::new();
        let mut state = None;
        loop {
            let reply = inner
                .call(
                    setup,
                    ctx,
                    &SyncFolderItems {
                        folder: FolderRef::Id(ItemId {
                            id: ews_id.clone(),
                            change_key: None,
                        }),
                        shape: shape.clone(),
                        sync_state: state.take(),
                        ignore: vec![],
                        max_changes: ews::ops::MAX_CHANGES_RETURNED,
                    },
                )
                .await?;
            out.read_requests += 1;
            for c in reply.changes {
                if let ItemChange::Create(Item::Message(m)) = c {
                    messages.push(m);
                }
            }
            if reply.includes_last {
                break;
            }
            state = Some(reply.sync_state);
        }
        let ids = inner
            .crm
            .mail_ids_in_folder(row.id)
            .await
            .map_err(db_error)?;
        let rows = inner.crm.mails(&ids).await.map_err(db_error)?;
        out.crm_records += rows.len() as u64;
        out.exchange_items += messages.len() as u64;
        let mut taken: HashSet<i64> = HashSet::new();
        let by_ews: HashMap<&str, i64> = rows
            .iter()
            .filter_map(|r| Some((r.ews_id.as_deref()?, r.id)))
            .collect();
        let by_mid: HashMap<&str, i64> = rows
            .iter()
            .filter_map(|r| Some((r.internet_message_id.as_deref()?, r.id)))
            .collect();
        let row_ids: HashSet<i64> = rows.iter().map(|r| r.id).collect();
        for m in &messages {
            let id = m.id.as_ref().map(|i| i.id.as_str()).unwrap_or_default();
            let stamp = fields::stamped_id(&Item::Message(m.clone()), "crm_mails")
                .filter(|s| row_ids.contains(s));
            let (target, by) = match (
                stamp,
                by_ews.get(id),
                m.internet_message_id.as_deref().and_then(|x| by_mid.get(x)),
            ) {
                (Some(s), _, _) => (Some(s), "the CRM-id stamp"),
                (None, Some(r), _) => (Some(*r), "the row's Exchange id"),
                (None, None, Some(r)) => (Some(*r), "Internet-Message-ID"),
                _ => (None, ""),
            };
            match target.filter(|t| taken.insert(*t)) {
                Some(_) => *out.links.entry(by.into()).or_default() += 1,
                None => {
                    out.crm.creates += 1;
                    to_crm_bytes += m.size.unwrap_or(0);
                }
            }
        }
        for r in &rows {
            if !taken.contains(&r.id) {
                out.exchange.creates += 1;
                out.bytes += r.size.unwrap_or(0).max(0) as u64;
            }
        }
    }
    out.bytes += to_crm_bytes;
    // GetItem and CreateItem carry at most 50 messages or 4 MB.
    let per =
        |n: u64, bytes: u64| batches(n, 50).max(batches(bytes, super::mail::BYTES_PER_REQUEST));
    out.read_requests += 0;
    out.write_requests += per(out.crm.creates, to_crm_bytes)
        + per(out.exchange.creates, out.bytes.saturating_sub(to_crm_bytes));
    Ok(out)
}

/// The plan as text, a block per mailbox.
pub fn render(plans: &[MailboxPlan]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for p in plans {
        let _ = writeln!(
            s,
            "{} — {}: about {} EWS requests, {:.0} s at the server's budget",
            p.mailbox, p.mode, p.requests, p.seconds
        );
        for a in &p.areas {
            let side = |x: &SidePlan| {
                if x.creates + x.updates + x.deletes == 0 {
                    "nothing".to_owned()
                } else {
                    format!(
                        "{} create, {} update, {} delete",
                        x.creates, x.updates, x.deletes
                    )
                }
            };
            let links: Vec<String> = a.links.iter().map(|(k, v)| format!("{v} by {k}")).collect();
            let _ = writeln!(
                s,
                "  {} ({}): {} in the CRM, {} in Exchange; to Exchange: {}; to CRM: {}; linked: {}; {} conflicts; {} ambiguous; {} fail",
                a.area,
                a.scope,
                a.crm_records,
                a.exchange_items,
                side(&a.exchange),
                side(&a.crm),
                if links.is_empty() { "none".into() } else { links.join(", ") },
                a.conflicts,
                a.ambiguous,
                a.failures
            );
            for h in &a.held {
                let _ = writeln!(s, "    HELD: {h}");
            }
            for i in &a.items {
                let _ = writeln!(
                    s,
                    "    {} {} {}{}{} {}",
                    i.action,
                    i.side,
                    i.crm_id.map(|c| format!("crm {c} ")).unwrap_or_default(),
                    i.ews_id
                        .as_deref()
                        .map(|e| format!("ews {e} "))
                        .unwrap_or_default(),
                    if i.title.is_empty() {
                        String::new()
                    } else {
                        format!("{:?}", i.title)
                    },
                    i.detail
                );
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Exchange id is printed whole: its tail alone names no item (ids of one mailbox
    /// share long prefixes and may differ anywhere), and cutting it could split a character.
    #[test]
    fn the_text_names_items_by_their_whole_exchange_id() {
        let id = "AAMkADk0ZTU1NjQ2LWE5ZjMtNDc4Ni1iMjA1LTFiZjZlYmQ0YjA0NABGAAAAAAD+Q==";
        let area = AreaPlan {
            area: "contacts".into(),
            scope: "own".into(),
            crm_records: 1,
            exchange_items: 0,
            exchange: SidePlan::default(),
            crm: SidePlan::default(),
            links: BTreeMap::new(),
            conflicts: 0,
            ambiguous: 0,
            held: vec![],
            failures: 0,
            read_requests: 1,
            write_requests: 0,
            bytes: 0,
            items: vec![ItemPlan {
                action: "delete".into(),
                side: "crm".into(),
                crm_id: Some(7),
                ews_id: Some(id.into()),
                title: "Anna".into(),
                detail: String::new(),
            }],
        };
        let text = render(&[MailboxPlan {
            mailbox: "user1@example.com".into(),
            mode: "full resync".into(),
            areas: vec![area],
            requests: 1,
            seconds: 0.1,
        }]);
        assert!(
            text.contains(&format!("    delete crm crm 7 ews {id} \"Anna\"")),
            "{text}"
        );
    }
}
