//! After the soak: the convergence checker (src/sync/converge.rs) compares every mailbox and
//! area both ways, and the workload's knowledge adds what equality of the two sides cannot
//! show: a record both sides lost, a deleted record that came back on both, a
//! single-writer field holding anything but its writer's last value, a moved mail not
//! where it was moved to.

use std::collections::{BTreeMap, HashMap};

use ews::items::Item;
use ews::ops::{FindItem, GetItem, View};
use ews::types::{DistinguishedFolder, FolderRef, PropertyPath, Shape};
use mailsync::config::Area;
use mailsync::db::Db;
use mailsync::sync::converge::compare;

use super::workload::{item_values, smtp, Ctx, Kind, Life, KINDS};

/// What the checks found: counts by kind (lost, duplicated, resurrected, mismatched) and
/// by source (checker, knowledge), and a line per finding.
#[derive(Default, Debug)]
pub struct Findings {
    /// (source, kind) → count.
    pub counts: BTreeMap<(String, String), u64>,
    pub details: Vec<String>,
    /// Records whose outcome the workload could not learn (skipped by the knowledge checks).
    pub uncertain: u64,
}

impl Findings {
    fn add(&mut self, source: &str, kind: &str, detail: String) {
        *self.counts.entry((source.into(), kind.into())).or_default() += 1;
        self.details.push(format!("{source} {kind}: {detail}"));
    }

    /// The total of a kind over both sources.
    pub fn total(&self, kind: &str) -> u64 {
        self.counts
            .iter()
            .filter(|((_, k), _)| k == kind)
            .map(|(_, n)| n)
            .sum()
    }

    /// Nothing found.
    pub fn clean(&self) -> bool {
        self.counts.values().all(|n| *n == 0)
    }
}

fn area(kind: Kind) -> Area {
    match kind {
        Kind::Contact => Area::Contacts,
        Kind::Appointment => Area::Calendar,
        Kind::Task => Area::Tasks,
        Kind::Mail => Area::Mail,
    }
}

/// Every item of a folder, read in full (the key and the compared values).
async fn folder_items(
    client: &ews::Client,
    target: &ews::Target,
    folder: DistinguishedFolder,
) -> Result<Vec<Item>, String> {
    let mut ids = Vec::new();
    let mut offset = 0;
    loop {
        let op = FindItem {
            folder: FolderRef::well_known(folder),
            shape: Shape::id_only(),
            view: View::IndexedPage { offset, max: 1000 },
            restriction: None,
        };
        let page = client
            .call(target, &op)
            .await
            .map_err(|e| e.to_string())?
            .output;
        offset += page.items.len() as u32;
        ids.extend(page.items.iter().filter_map(|i| i.id().cloned()));
        if page.includes_last || page.items.is_empty() {
            break;
        }
    }
    let mut out = Vec::new();
    for chunk in ids.chunks(100) {
        let get = GetItem {
            ids: chunk.to_vec(),
            shape: Shape::all_properties(vec![
                PropertyPath::field("message:IsRead"),
                PropertyPath::field("message:InternetMessageId"),
            ]),
        };
        for r in client
            .call(target, &get)
            .await
            .map_err(|e| e.to_string())?
            .output
        {
            out.push(r.map_err(|e| e.to_string())?);
        }
    }
    Ok(out)
}

/// One side's records of a mailbox area by key: where each copy is (`trash` for mail in
/// Deleted Items) and its values.
type Side = HashMap<String, Vec<(bool, [Option<String>; 3])>>;

/// A CRM row as the check reads it: key, in Deleted Items, the three values.
type KeyedRow = (
    Option<String>,
    bool,
    Option<String>,
    Option<String>,
    Option<String>,
);

async fn crm_side(db: &sqlx::PgPool, mailbox: usize, kind: Kind) -> Result<Side, String> {
    let trash = if kind == Kind::Mail {
        "(SELECT role FROM crm_mail_folders f WHERE f.id = folder_id) IS NOT DISTINCT FROM 'deleteditems'"
    } else {
        "FALSE"
    };
    let sql = format!(
        "SELECT {}, {trash}, {} FROM {} WHERE owner_id = $1",
        kind.key_col(),
        kind.value_cols(),
        kind.table()
    );
    let rows: Vec<KeyedRow> = sqlx::query_as(&sql)
        .bind(mailbox as i64 + 1)
        .fetch_all(db)
        .await
        .map_err(|e| format!("{sql}: {e}"))?;
    let mut side = Side::new();
    for (key, trash, a, b, c) in rows {
        if let Some(key) = key {
            side.entry(key).or_default().push((trash, [a, b, c]));
        }
    }
    Ok(side)
}

async fn exchange_side(client: &ews::Client, mailbox: usize, kind: Kind) -> Result<Side, String> {
    let target = ews::Target::own(&smtp(mailbox));
    let mut folders = vec![(kind.folder(), false)];
    if kind == Kind::Mail {
        folders.push((DistinguishedFolder::DeletedItems, true));
    }
    let mut side = Side::new();
    for (folder, trash) in folders {
        for item in folder_items(client, &target, folder).await? {
            if let Some((key, values)) = item_values(&item) {
                side.entry(key).or_default().push((trash, values));
            }
        }
    }
    Ok(side)
}

/// Runs every check on every mailbox. `svc` is the service account's client (the
/// convergence checker acts as mailsync does, by impersonation).
pub async fn run(ctx: &Ctx, crm: &Db, svc: &ews::Client, tenant_name: &str) -> Findings {
    let mut f = Findings::default();
    let shared = format!("{tenant_name} (CRM)");
    for mailbox in 0..ctx.users.len() {
        let target = ews::Target::impersonating(&smtp(mailbox));
        for kind in KINDS {
            let op = mailbox as i64 + 1;
            match compare(crm, svc, &target, area(kind), op, 1, &shared).await {
                Ok(diffs) => {
                    for d in diffs {
                        f.add(
                            "checker",
                            d.kind(),
                            format!("{} {}: {d:?}", smtp(mailbox), kind.area()),
                        );
                    }
                }
                Err(e) => f.add(
                    "checker",
                    "lost",
                    format!("{} {}: the checker failed: {e}", smtp(mailbox), kind.area()),
                ),
            }
            let sides = (
                crm_side(&ctx.crm, mailbox, kind).await,
                exchange_side(&ctx.users[mailbox], mailbox, kind).await,
            );
            let (crm_rows, items) = match sides {
                (Ok(c), Ok(e)) => (c, e),
                (Err(e), _) | (_, Err(e)) => {
                    f.add(
                        "knowledge",
                        "lost",
                        format!("{} {}: reading failed: {e}", smtp(mailbox), kind.area()),
                    );
                    continue;
                }
            };
            knowledge_checks(ctx, &mut f, mailbox, kind, &crm_rows, &items);
        }
    }
    f
}

fn knowledge_checks(
    ctx: &Ctx,
    f: &mut Findings,
    mailbox: usize,
    kind: Kind,
    crm: &Side,
    ex: &Side,
) {
    let k = ctx.knowledge.lock();
    let none = Vec::new();
    for (key, rec) in k
        .recs
        .iter()
        .filter(|(_, r)| r.mailbox == mailbox && r.kind == kind)
    {
        if rec.uncertain {
            f.uncertain += 1;
            continue;
        }
        let at = format!("{} {} {key}", smtp(mailbox), kind.area());
        let c = crm.get(key).unwrap_or(&none);
        let e = ex.get(key).unwrap_or(&none);
        match rec.life {
            Life::Gone => {
                if !c.is_empty() || !e.is_empty() {
                    f.add(
                        "knowledge",
                        "resurrected",
                        format!(
                            "{at}: deleted, yet {} in the CRM and {} in Exchange",
                            c.len(),
                            e.len()
                        ),
                    );
                }
                continue;
            }
            Life::Live | Life::Trashed => {}
        }
        if c.is_empty() && e.is_empty() {
            f.add("knowledge", "lost", format!("{at}: on neither side"));
            continue;
        }
        if c.len() > 1 || e.len() > 1 {
            f.add(
                "knowledge",
                "duplicated",
                format!("{at}: {} in the CRM, {} in Exchange", c.len(), e.len()),
            );
            continue;
        }
        let want_trash = rec.life == Life::Trashed;
        for (side, copies) in [("CRM", c), ("Exchange", e)] {
            if let Some((trash, _)) = copies.first() {
                if *trash != want_trash {
                    f.add(
                        "knowledge",
                        "lost",
                        format!(
                            "{at}: a move lost, in {side} {}",
                            if *trash {
                                "in Deleted Items"
                            } else {
                                "not in Deleted Items"
                            }
                        ),
                    );
                }
            }
        }
        let Some((_, values)) = c.first() else {
            continue;
        };
        if kind == Kind::Mail {
            continue;
        }
        // The single-writer fields hold their writer's last value; the shared one a last
        // value of either side (the creation value if neither wrote it).
        if values[0] != rec.erp {
            f.add(
                "knowledge",
                "lost",
                format!(
                    "{at}: the ERP's last value {:?}, the CRM holds {:?}",
                    rec.erp, values[0]
                ),
            );
        }
        if values[1] != rec.user {
            f.add(
                "knowledge",
                "lost",
                format!(
                    "{at}: the user's last value {:?}, the CRM holds {:?}",
                    rec.user, values[1]
                ),
            );
        }
        let [initial, erp, user] = &rec.shared;
        let allowed: Vec<&Option<String>> = if erp.is_none() && user.is_none() {
            vec![initial]
        } else {
            [erp, user].into_iter().filter(|v| v.is_some()).collect()
        };
        if !allowed.contains(&&values[2]) {
            f.add(
                "knowledge",
                "lost",
                format!(
                    "{at}: the shared field holds {:?}, not a last value of {allowed:?}",
                    values[2]
                ),
            );
        }
    }
}
