//! The planner of contacts, calendar and tasks: from what a step saw of a pair of records (the
//! CRM row, the Exchange item, the last synced base), what to write where. Pure: no I/O, no
//! clock, no randomness, so its laws are property-tested (`tests` below):
//!
//! - executing a plan and planning again from what the sides then hold yields nothing to do;
//! - a plan deletes only what it saw gone (or saw leave the mailbox's scope), never what a
//!   step did not look at;
//! - where both sides changed a field, the leading system's value wins, and only there.

use ews::types::ItemId;

use super::super::fields::{self, Fields};
use super::super::merge::merge;
use crate::config::{AreaConfig, Leading};
use crate::db::state::Winner;

/// The last synced state of a pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// The CRM row.
    pub crm_id: i64,
    /// The Exchange item, with the ChangeKey last written or seen.
    pub ews: ItemId,
    /// The CRM version last written or seen.
    pub crm_version: Option<i64>,
    /// The values both sides last agreed on: the merge base.
    pub fields: Fields,
    /// The item lives in the tenant's shared contacts folder.
    pub shared: bool,
    /// The item carries the CRM-id stamp.
    pub stamped: bool,
}

/// A CRM row as a step read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrmObs {
    /// Id.
    pub id: i64,
    /// Version.
    pub version: i64,
    /// Values.
    pub fields: Fields,
    /// Where it belongs in this mailbox: `Some(shared)`; `None` when it belongs to another
    /// operator or tenant (it left the mailbox).
    pub scope: Option<bool>,
    /// Reasons Exchange cannot hold it (too long, too many categories…); empty when fine.
    pub problems: Vec<String>,
}

/// An Exchange item as a step read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EwsObs {
    /// Id and current ChangeKey.
    pub id: ItemId,
    /// Values.
    pub fields: Fields,
    /// Seen in the shared contacts folder.
    pub shared: bool,
}

/// What a step knows of one side of a pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side<T> {
    /// Not looked at in this step (an incremental step reads only what changed).
    Unseen,
    /// Looked at and gone (a reported delete, a row not found, missing from a full listing).
    Gone,
    /// Looked at: here it is.
    Here(T),
}

impl<T> Side<T> {
    /// The observation, when there is one.
    pub fn here(&self) -> Option<&T> {
        match self {
            Side::Here(t) => Some(t),
            _ => None,
        }
    }
}

/// Why two unmapped records were paired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkBy {
    /// The item carries this row's CRM-id stamp (a mapping was lost, or a crash came between
    /// the write and the mapping).
    Stamp,
    /// The row carries this item's Exchange id (imported before a crash lost the mapping).
    EwsId,
    /// First contact: a normalized e-mail address both have.
    Email(String),
    /// First contact: normalized full name plus company.
    NameCompany,
    /// First contact: subject plus due date.
    SubjectDue,
    /// The appointment's UID (iCalendar UID / Outlook's UID).
    Uid,
    /// First contact: subject plus start.
    SubjectStart,
}

impl LinkBy {
    /// The kind of link, for counts (the address itself is left out).
    pub fn kind(&self) -> &'static str {
        match self {
            LinkBy::Stamp => "the CRM-id stamp",
            LinkBy::EwsId => "the row's Exchange id",
            LinkBy::Email(_) => "e-mail address",
            LinkBy::NameCompany => "name and company",
            LinkBy::SubjectDue => "subject and due date",
            LinkBy::Uid => "UID",
            LinkBy::SubjectStart => "subject and start",
        }
    }

    /// What the plan's item list says.
    pub fn describe(&self) -> String {
        match self {
            LinkBy::Stamp => "the CRM-id stamp".into(),
            LinkBy::EwsId => "the row's Exchange id".into(),
            LinkBy::Email(e) => format!("e-mail {e}"),
            LinkBy::NameCompany => "name and company".into(),
            LinkBy::SubjectDue => "subject and due date".into(),
            LinkBy::Uid => "UID".into(),
            LinkBy::SubjectStart => "subject and start".into(),
        }
    }
}

/// Everything a step knows of one pair of records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// The last synced state, when the pair is mapped.
    pub base: Option<Base>,
    /// The CRM side.
    pub crm: Side<CrmObs>,
    /// The Exchange side.
    pub ews: Side<EwsObs>,
    /// For an unmapped pair seen on both sides: what linked them.
    pub link: Option<LinkBy>,
    /// A delete of this pair awaits an administrator's decision: it is left alone.
    pub held: bool,
}

/// A write to Exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EwsWrite {
    /// CreateItem, stamped with the row's id.
    Create {
        /// The values.
        fields: Fields,
        /// Into the shared contacts folder.
        shared: bool,
    },
    /// UpdateItem of `changed` (with the ChangeKey of `id`: refused if Exchange changed since).
    Update {
        /// The item and the ChangeKey the values were merged from.
        id: ItemId,
        /// The values the item ends with.
        fields: Fields,
        /// The fields to write.
        changed: Vec<String>,
    },
    /// DeleteItem.
    Delete {
        /// The item.
        id: ItemId,
    },
    /// The row moved between the own and the shared contacts folder: delete, then create.
    Recreate {
        /// The item to delete.
        old: ItemId,
        /// The values.
        fields: Fields,
        /// The folder it goes to.
        shared: bool,
    },
}

/// A write to the CRM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrmWrite {
    /// INSERT of an item new in Exchange, with its Exchange id.
    Insert {
        /// The item.
        ews_id: String,
        /// Values.
        fields: Fields,
        /// A shared contact (no owner).
        shared: bool,
    },
    /// UPDATE over the version the values were merged from.
    Update {
        /// The row.
        id: i64,
        /// The version read.
        version: i64,
        /// The values the row ends with.
        fields: Fields,
        /// The fields that change.
        changed: Vec<String>,
    },
    /// DELETE.
    Delete {
        /// The row.
        id: i64,
    },
}

/// What happens to the mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapOp {
    /// Left as it is.
    Keep,
    /// Stored with these values as the new base (ids and versions from the writes).
    Put {
        /// The new base.
        fields: Fields,
        /// Folder.
        shared: bool,
    },
    /// Forgotten: the pair is gone, or left the synced set.
    Drop,
}

/// A conflict to log: both sides changed the same fields (or one deleted what the other
/// changed, field `deleted`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictNote {
    /// The fields.
    pub fields: Vec<String>,
    /// Who won.
    pub winner: Winner,
    /// The CRM's values of those fields.
    pub crm: Fields,
    /// Exchange's values of those fields.
    pub ews: Fields,
    /// What both sides end with.
    pub merged: Fields,
}

/// The plan for one pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The CRM row concerned, if known.
    pub crm_id: Option<i64>,
    /// The Exchange item concerned, if known.
    pub ews_id: Option<String>,
    /// The base of the pair (ids and versions the executor records from).
    pub base: Option<Base>,
    /// The Exchange write (done first: a step that fails after it leaves the CRM as it was,
    /// so nothing of ours is ever taken for an ERP edit).
    pub ews: Option<EwsWrite>,
    /// The CRM write (after the Exchange write succeeded).
    pub crm: Option<CrmWrite>,
    /// The mapping.
    pub map: MapOp,
    /// A conflict to log.
    pub conflict: Option<ConflictNote>,
    /// Why the pair cannot be synced (parked in the failure log).
    pub fail: Option<String>,
    /// How an unmapped pair was linked.
    pub link: Option<LinkBy>,
    /// Scope of the pair (true: the shared contacts folder), for the breaker.
    pub shared: bool,
    /// The row's version read (for recording our own write).
    pub crm_version: Option<i64>,
    /// The item's ChangeKey read.
    pub ews_change_key: Option<String>,
}

impl Decision {
    fn new(p: &Pair) -> Self {
        let crm = p.crm.here();
        let ews = p.ews.here();
        Decision {
            crm_id: crm.map(|c| c.id).or(p.base.as_ref().map(|b| b.crm_id)),
            ews_id: ews
                .map(|e| e.id.id.clone())
                .or(p.base.as_ref().map(|b| b.ews.id.clone())),
            base: p.base.clone(),
            ews: None,
            crm: None,
            map: MapOp::Keep,
            conflict: None,
            fail: None,
            link: p.link.clone(),
            shared: p
                .base
                .as_ref()
                .map(|b| b.shared)
                .or(ews.map(|e| e.shared))
                .or(crm.and_then(|c| c.scope))
                .unwrap_or(false),
            crm_version: crm.map(|c| c.version),
            ews_change_key: ews.and_then(|e| e.id.change_key.clone()),
        }
    }

    /// Nothing to write, record or log.
    pub fn is_noop(&self) -> bool {
        self.ews.is_none()
            && self.crm.is_none()
            && self.map == MapOp::Keep
            && self.conflict.is_none()
            && self.fail.is_none()
    }

    /// The delete this decision applies, if any: (side, crm id, Exchange item).
    pub fn delete(&self) -> Option<crate::db::integrity::Side> {
        use crate::db::integrity::Side as S;
        match (&self.crm, &self.ews) {
            (Some(CrmWrite::Delete { .. }), _) => Some(S::Crm),
            (_, Some(EwsWrite::Delete { .. })) => Some(S::Exchange),
            _ => None,
        }
    }
}

/// Whether values pass the area's category filter.
pub fn wanted(config: &AreaConfig, f: &Fields) -> bool {
    config.categories.is_empty() || {
        let have = fields::categories_of(f);
        config
            .categories
            .iter()
            .any(|c| have.iter().any(|h| h.eq_ignore_ascii_case(c)))
    }
}

fn winner(leading: Leading) -> Winner {
    match leading {
        Leading::Crm => Winner::Crm,
        Leading::Exchange => Winner::Exchange,
    }
}

fn subset(f: &Fields, names: &[String]) -> Fields {
    names
        .iter()
        .map(|n| (n.clone(), f.get(n).cloned().flatten()))
        .collect()
}

fn deleted_conflict(leading: Leading, crm: Option<&Fields>, ews: Option<&Fields>) -> ConflictNote {
    let mark = |present: bool| {
        Fields::from([(
            "deleted".to_owned(),
            Some(if present { "no" } else { "yes" }.to_owned()),
        )])
    };
    let crm_values = mark(crm.is_some());
    let ews_values = mark(ews.is_some());
    let merged = match leading {
        Leading::Crm => crm_values.clone(),
        Leading::Exchange => ews_values.clone(),
    };
    ConflictNote {
        fields: vec!["deleted".into()],
        winner: winner(leading),
        crm: crm_values,
        ews: ews_values,
        merged,
    }
}

/// Decides one pair.
pub fn decide(p: &Pair, config: &AreaConfig) -> Decision {
    let leading = config.leading;
    let mut d = Decision::new(p);
    if p.held {
        return d;
    }
    let Some(base) = &p.base else {
        return decide_unmapped(p, config, d);
    };
    // A row that left the mailbox (another owner or tenant, or no longer in the filter) is
    // out, as if gone; a problem row stays mapped and is reported.
    let crm = match &p.crm {
        Side::Here(c) if c.scope.is_none() => Side::Gone,
        Side::Here(c) if !wanted(config, &c.fields) => Side::Gone,
        other => other.clone(),
    };
    match (&crm, &p.ews) {
        (Side::Gone, Side::Gone) => d.map = MapOp::Drop,
        (Side::Gone, Side::Unseen) => {
            d.ews = Some(EwsWrite::Delete {
                id: base.ews.clone(),
            });
            d.map = MapOp::Drop;
        }
        (Side::Gone, Side::Here(e)) => {
            let row_exists = p.crm.here().is_some();
            if e.fields == base.fields || row_exists || leading == Leading::Crm {
                // Unchanged in Exchange, or the row went to someone else, or the CRM leads:
                // the delete goes to Exchange.
                if e.fields != base.fields && !row_exists {
                    d.conflict = Some(deleted_conflict(leading, None, Some(&e.fields)));
                }
                d.ews = Some(EwsWrite::Delete { id: e.id.clone() });
                d.map = MapOp::Drop;
            } else if !wanted(config, &e.fields) {
                // Exchange leads with values outside the filter: the pair leaves the sync.
                d.conflict = Some(deleted_conflict(leading, None, Some(&e.fields)));
                d.map = MapOp::Drop;
            } else {
                // Deleted in the CRM, changed in Exchange, Exchange leads: the row comes back.
                d.conflict = Some(deleted_conflict(leading, None, Some(&e.fields)));
                d.crm = Some(CrmWrite::Insert {
                    ews_id: e.id.id.clone(),
                    fields: e.fields.clone(),
                    shared: e.shared,
                });
                d.map = MapOp::Put {
                    fields: e.fields.clone(),
                    shared: e.shared,
                };
            }
        }
        (Side::Here(c), Side::Gone) => {
            if !c.problems.is_empty() {
                d.fail = Some(c.problems.join("; "));
                return d;
            }
            let changed = base.crm_version != Some(c.version) && c.fields != base.fields;
            if changed && leading == Leading::Crm {
                // Deleted in Exchange, changed in the CRM, the CRM leads: it goes back.
                d.conflict = Some(deleted_conflict(leading, Some(&c.fields), None));
                let shared = c.scope == Some(true);
                d.ews = Some(EwsWrite::Create {
                    fields: c.fields.clone(),
                    shared,
                });
                d.map = MapOp::Put {
                    fields: c.fields.clone(),
                    shared,
                };
            } else {
                if changed {
                    d.conflict = Some(deleted_conflict(leading, Some(&c.fields), None));
                }
                d.crm = Some(CrmWrite::Delete { id: c.id });
                d.map = MapOp::Drop;
            }
        }
        (Side::Here(c), Side::Here(e)) => {
            if !c.problems.is_empty() {
                d.fail = Some(c.problems.join("; "));
                return d;
            }
            merge_both(&mut d, base, c, e, config);
        }
        (Side::Here(c), Side::Unseen) => {
            if !c.problems.is_empty() {
                if base.crm_version != Some(c.version) {
                    d.fail = Some(c.problems.join("; "));
                }
                return d;
            }
            let shared = c.scope == Some(true);
            if shared != base.shared {
                d.ews = Some(EwsWrite::Recreate {
                    old: base.ews.clone(),
                    fields: c.fields.clone(),
                    shared,
                });
                d.map = MapOp::Put {
                    fields: c.fields.clone(),
                    shared,
                };
                return d;
            }
            if base.crm_version == Some(c.version) {
                // Our own write coming back, or nothing new.
                return d;
            }
            // Exchange is taken as unchanged; the update carries the ChangeKey we hold, so it
            // is refused if Exchange changed since (then the pair is read and merged).
            let m = merge(&base.fields, &c.fields, &base.fields, leading);
            if !m.to_exchange.is_empty() {
                d.ews = Some(EwsWrite::Update {
                    id: base.ews.clone(),
                    fields: m.merged.clone(),
                    changed: m.to_exchange,
                });
            }
            d.map = MapOp::Put {
                fields: m.merged,
                shared,
            };
        }
        // The read phase always reads the row of a mapped pair whose item it saw; nothing is
        // decided without it.
        (Side::Unseen, _) => {}
    }
    d
}

fn merge_both(d: &mut Decision, base: &Base, c: &CrmObs, e: &EwsObs, config: &AreaConfig) {
    let leading = config.leading;
    let shared = c.scope == Some(true);
    if shared != base.shared || shared != e.shared {
        // Moved between the own and the shared folder in the CRM: the item follows.
        d.ews = Some(EwsWrite::Recreate {
            old: e.id.clone(),
            fields: c.fields.clone(),
            shared,
        });
        d.map = MapOp::Put {
            fields: c.fields.clone(),
            shared,
        };
        return;
    }
    let m = merge(&base.fields, &c.fields, &e.fields, leading);
    if !m.conflicts.is_empty() {
        d.conflict = Some(ConflictNote {
            fields: m.conflicts.clone(),
            winner: winner(leading),
            crm: subset(&c.fields, &m.conflicts),
            ews: subset(&e.fields, &m.conflicts),
            merged: subset(&m.merged, &m.conflicts),
        });
    }
    if !m.to_exchange.is_empty() {
        d.ews = Some(EwsWrite::Update {
            id: e.id.clone(),
            fields: m.merged.clone(),
            changed: m.to_exchange.clone(),
        });
    }
    if !m.to_crm.is_empty() {
        d.crm = Some(CrmWrite::Update {
            id: c.id,
            version: c.version,
            fields: m.merged.clone(),
            changed: m.to_crm.clone(),
        });
    }
    let refreshed = m.merged != base.fields
        || base.crm_version != Some(c.version)
        || e.id.change_key.is_none()
        || base.ews.change_key != e.id.change_key
        || base.ews.id != e.id.id;
    if !wanted(config, &m.merged) {
        // No longer in the filter (a category removed): both sides keep the merged values,
        // the pair leaves the sync; nothing is deleted.
        d.map = MapOp::Drop;
    } else if refreshed || d.ews.is_some() || d.crm.is_some() {
        d.map = MapOp::Put {
            fields: m.merged,
            shared,
        };
    }
}

fn decide_unmapped(p: &Pair, config: &AreaConfig, mut d: Decision) -> Decision {
    match (&p.crm, &p.ews) {
        (Side::Here(c), Side::Here(e)) if c.scope.is_some() => {
            if !c.problems.is_empty() {
                d.fail = Some(c.problems.join("; "));
                return d;
            }
            // Linked: the row that was imported from this item is its own base; otherwise
            // the first contact merges from nothing (a field both hold differently goes to
            // the leading system and is logged).
            let base_fields = match p.link {
                Some(LinkBy::EwsId) => c.fields.clone(),
                _ => Fields::new(),
            };
            let base = Base {
                crm_id: c.id,
                ews: ItemId {
                    id: e.id.id.clone(),
                    change_key: None,
                },
                crm_version: None,
                fields: base_fields,
                shared: e.shared,
                stamped: false,
            };
            merge_both(&mut d, &base, c, e, config);
            if d.map == MapOp::Keep {
                d.map = MapOp::Put {
                    fields: c.fields.clone(),
                    shared: e.shared,
                };
            }
            d.base = Some(base);
        }
        (Side::Here(c), Side::Unseen | Side::Gone) => {
            let Some(shared) = c.scope else { return d };
            if !wanted(config, &c.fields) {
                return d;
            }
            if !c.problems.is_empty() {
                d.fail = Some(c.problems.join("; "));
                return d;
            }
            d.ews = Some(EwsWrite::Create {
                fields: c.fields.clone(),
                shared,
            });
            d.map = MapOp::Put {
                fields: c.fields.clone(),
                shared,
            };
        }
        (Side::Unseen | Side::Gone, Side::Here(e)) => {
            if !wanted(config, &e.fields) {
                return d;
            }
            d.crm = Some(CrmWrite::Insert {
                ews_id: e.id.id.clone(),
                fields: e.fields.clone(),
                shared: e.shared,
            });
            d.map = MapOp::Put {
                fields: e.fields.clone(),
                shared: e.shared,
            };
        }
        _ => {}
    }
    d
}

/// Decides every pair.
pub fn plan(pairs: &[Pair], config: &AreaConfig) -> Vec<Decision> {
    pairs
        .iter()
        .map(|p| decide(p, config))
        .filter(|d| !d.is_noop())
        .collect()
}

#[cfg(test)]
mod tests;
