//! Matching on first contact: records that exist on both sides before they were ever synced
//! (the normal case when a company introduces mailsync) are linked instead of copied.
//! Pure: the records in, the links and the ambiguous groups out.
//!
//! - contacts: any normalized e-mail address; a record with no address in common with the
//!   other side, by normalized full name plus company;
//! - tasks: subject plus due date;
//! - appointments: UID; one without a UID in common, by subject plus start.
//!
//! Records connected by a key form a group. A group of exactly one record on each side is a
//! link; a larger group is ambiguous (one record, several candidates) and is never linked:
//! its records are reported and left alone unless the administrator asks for them to be
//! synced as separate records.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::fields::Fields;
use super::items::plan::LinkBy;
use crate::config::Area;

/// One record offered for matching.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    /// Its values.
    pub fields: &'a Fields,
    /// An appointment's UID.
    pub uid: Option<&'a str>,
}

/// What matching found; indices into the two input lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matches {
    /// (CRM record, Exchange record, what they matched on).
    pub links: Vec<(usize, usize, LinkBy)>,
    /// Groups that are not one-to-one: (CRM records, Exchange records, the key).
    pub ambiguous: Vec<(Vec<usize>, Vec<usize>, String)>,
}

fn norm(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn get<'a>(f: &'a Fields, name: &str) -> Option<&'a str> {
    f.get(name)
        .and_then(|v| v.as_deref())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Match keys of one tier: the key text and what a link by it is called.
type Keys = Vec<(String, LinkBy)>;

/// The keys of a record in the first tier (decisive) and the second (used only by records
/// that share no first-tier key with the other side).
fn keys(area: Area, r: &Record<'_>) -> (Keys, Keys) {
    let f = r.fields;
    match area {
        Area::Contacts => {
            let emails = ["email1", "email2", "email3"]
                .iter()
                .filter_map(|n| get(f, n))
                .map(|e| {
                    let e = e.to_lowercase();
                    (format!("email:{e}"), LinkBy::Email(e))
                })
                .collect();
            let name = [get(f, "given_name"), get(f, "surname")]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
            let second = if name.trim().is_empty() {
                vec![]
            } else {
                let company = get(f, "company").map(norm).unwrap_or_default();
                vec![(
                    format!("name:{}|{company}", norm(&name)),
                    LinkBy::NameCompany,
                )]
            };
            (emails, second)
        }
        Area::Tasks => {
            let first = get(f, "subject")
                .map(|s| {
                    let due = get(f, "due_date").unwrap_or("");
                    vec![(format!("task:{}|{due}", norm(s)), LinkBy::SubjectDue)]
                })
                .unwrap_or_default();
            (first, vec![])
        }
        Area::Calendar => {
            let first = r
                .uid
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(|u| vec![(format!("uid:{u}"), LinkBy::Uid)])
                .unwrap_or_default();
            let second = match (get(f, "subject"), get(f, "start")) {
                (Some(s), Some(start)) => {
                    vec![(format!("appt:{}|{start}", norm(s)), LinkBy::SubjectStart)]
                }
                _ => vec![],
            };
            (first, second)
        }
        Area::Mail => (vec![], vec![]),
    }
}

/// Union-find over record nodes (CRM records first, then Exchange records).
struct Groups(Vec<usize>);

impl Groups {
    fn find(&mut self, x: usize) -> usize {
        let mut r = x;
        while self.0[r] != r {
            r = self.0[r];
        }
        let mut x = x;
        while self.0[x] != r {
            let next = self.0[x];
            self.0[x] = r;
            x = next;
        }
        r
    }

    fn join(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        if a != b {
            self.0[a.max(b)] = a.min(b);
        }
    }
}

/// Matches two sides' unpaired records.
pub fn match_records(area: Area, crm: &[Record<'_>], ews: &[Record<'_>]) -> Matches {
    let n = crm.len();
    let node_keys: Vec<(Keys, Keys)> = crm.iter().chain(ews).map(|r| keys(area, r)).collect();
    // Which nodes hold each first-tier key, per side.
    let index = |tier: usize, nodes: &mut dyn Iterator<Item = usize>| {
        let mut by_key: BTreeMap<String, (BTreeSet<usize>, BTreeSet<usize>, LinkBy)> =
            BTreeMap::new();
        for i in nodes {
            let ks = if tier == 0 {
                &node_keys[i].0
            } else {
                &node_keys[i].1
            };
            for (k, by) in ks {
                let e = by_key
                    .entry(k.clone())
                    .or_insert_with(|| (BTreeSet::new(), BTreeSet::new(), by.clone()));
                if i < n {
                    e.0.insert(i);
                } else {
                    e.1.insert(i);
                }
            }
        }
        by_key
    };
    let mut groups = Groups((0..n + ews.len()).collect());
    let mut linked_by: HashMap<usize, (String, LinkBy)> = HashMap::new();
    let first = index(0, &mut (0..n + ews.len()));
    let mut has_first = vec![false; n + ews.len()];
    for (key, (c, e, by)) in &first {
        if c.is_empty() || e.is_empty() {
            continue;
        }
        let all: Vec<usize> = c.iter().chain(e).copied().collect();
        for w in all.windows(2) {
            groups.join(w[0], w[1]);
        }
        for i in &all {
            has_first[*i] = true;
            linked_by
                .entry(*i)
                .or_insert_with(|| (key.clone(), by.clone()));
        }
    }
    let second = index(1, &mut (0..n + ews.len()).filter(|i| !has_first[*i]));
    for (key, (c, e, by)) in &second {
        if c.is_empty() || e.is_empty() {
            continue;
        }
        let all: Vec<usize> = c.iter().chain(e).copied().collect();
        for w in all.windows(2) {
            groups.join(w[0], w[1]);
        }
        for i in &all {
            linked_by
                .entry(*i)
                .or_insert_with(|| (key.clone(), by.clone()));
        }
    }
    let mut members: BTreeMap<usize, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
    for i in linked_by.keys().copied() {
        let root = groups.find(i);
        let m = members.entry(root).or_default();
        if i < n {
            m.0.push(i);
        } else {
            m.1.push(i - n);
        }
    }
    let mut out = Matches::default();
    for (_, (mut c, mut e)) in members {
        c.sort_unstable();
        e.sort_unstable();
        let key = c
            .first()
            .copied()
            .or(e.first().map(|x| x + n))
            .and_then(|i| linked_by.get(&i))
            .map(|(k, _)| k.clone())
            .unwrap_or_default();
        match (c.as_slice(), e.as_slice()) {
            ([one], [other]) => {
                let by = linked_by[one].1.clone();
                out.links.push((*one, *other, by));
            }
            _ => out.ambiguous.push((c, e, key)),
        }
    }
    out.links.sort_by_key(|(c, _, _)| *c);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Some((*v).to_owned())))
            .collect()
    }

    fn rec(f: &Fields) -> Record<'_> {
        Record {
            fields: f,
            uid: None,
        }
    }

    #[test]
    fn contacts_link_by_any_address_case_and_space_insensitive() {
        let crm = [
            f(&[("given_name", "Ann"), ("email1", "Ann@Example.com ")]),
            f(&[("given_name", "Bob"), ("email2", "bob@example.com")]),
        ];
        let ews = [
            f(&[("given_name", "Bobby"), ("email3", "BOB@example.com")]),
            f(&[
                ("given_name", "Anne"),
                ("email1", "other@x.org"),
                ("email2", "ann@example.com"),
            ]),
            f(&[("given_name", "Carl"), ("email1", "carl@example.com")]),
        ];
        let m = match_records(
            Area::Contacts,
            &crm.iter().map(rec).collect::<Vec<_>>(),
            &ews.iter().map(rec).collect::<Vec<_>>(),
        );
        assert_eq!(
            m.links,
            vec![
                (0, 1, LinkBy::Email("ann@example.com".into())),
                (1, 0, LinkBy::Email("bob@example.com".into()))
            ]
        );
        assert!(m.ambiguous.is_empty());
    }

    #[test]
    fn contacts_without_a_common_address_link_by_name_and_company() {
        let crm = [f(&[
            ("given_name", "Eva"),
            ("surname", "Meier"),
            ("company", "ACME  GmbH"),
        ])];
        let ews = [f(&[
            ("given_name", "eva"),
            ("surname", "meier"),
            ("company", "acme gmbh"),
            ("email1", "eva@acme.de"),
        ])];
        let m = match_records(
            Area::Contacts,
            &crm.iter().map(rec).collect::<Vec<_>>(),
            &ews.iter().map(rec).collect::<Vec<_>>(),
        );
        assert_eq!(m.links, vec![(0, 0, LinkBy::NameCompany)]);
        // Same name, other company: not the same person.
        let ews = [f(&[
            ("given_name", "Eva"),
            ("surname", "Meier"),
            ("company", "Other"),
        ])];
        let m = match_records(
            Area::Contacts,
            &crm.iter().map(rec).collect::<Vec<_>>(),
            &ews.iter().map(rec).collect::<Vec<_>>(),
        );
        assert!(m.links.is_empty());
    }

    #[test]
    fn one_record_with_several_candidates_is_ambiguous_and_never_linked() {
        let crm = [f(&[("email1", "team@example.com")])];
        let ews = [
            f(&[("given_name", "A"), ("email1", "team@example.com")]),
            f(&[("given_name", "B"), ("email1", "team@example.com")]),
        ];
        let m = match_records(
            Area::Contacts,
            &crm.iter().map(rec).collect::<Vec<_>>(),
            &ews.iter().map(rec).collect::<Vec<_>>(),
        );
        assert!(m.links.is_empty());
        assert_eq!(
            m.ambiguous,
            vec![(vec![0], vec![0, 1], "email:team@example.com".into())]
        );
        // A chain through two addresses is one group too.
        let crm = [
            f(&[("email1", "a@x"), ("email2", "b@x")]),
            f(&[("email1", "c@x")]),
        ];
        let ews = [
            f(&[("email1", "a@x")]),
            f(&[("email1", "b@x"), ("email2", "c@x")]),
        ];
        let m = match_records(
            Area::Contacts,
            &crm.iter().map(rec).collect::<Vec<_>>(),
            &ews.iter().map(rec).collect::<Vec<_>>(),
        );
        assert!(m.links.is_empty());
        assert_eq!(m.ambiguous.len(), 1);
    }

    #[test]
    fn tasks_and_appointments() {
        let crm = [
            f(&[("subject", "Call  Meier"), ("due_date", "2026-12-03")]),
            f(&[("subject", "Call Meier"), ("due_date", "2026-12-04")]),
        ];
        let ews = [f(&[("subject", "call meier"), ("due_date", "2026-12-04")])];
        let m = match_records(
            Area::Tasks,
            &crm.iter().map(rec).collect::<Vec<_>>(),
            &ews.iter().map(rec).collect::<Vec<_>>(),
        );
        assert_eq!(m.links, vec![(1, 0, LinkBy::SubjectDue)]);

        let a = f(&[("subject", "Review"), ("start", "2026-12-03T09:00:00Z")]);
        let b = f(&[("subject", "review"), ("start", "2026-12-03T09:00:00Z")]);
        let c = f(&[("subject", "Other"), ("start", "2026-12-04T09:00:00Z")]);
        let d = f(&[("subject", "Renamed"), ("start", "2026-12-05T09:00:00Z")]);
        let crm = [
            Record {
                fields: &a,
                uid: None,
            },
            Record {
                fields: &c,
                uid: Some("U1"),
            },
        ];
        let ews = [
            Record {
                fields: &b,
                uid: None,
            },
            Record {
                fields: &d,
                uid: Some("U1"),
            },
        ];
        let m = match_records(Area::Calendar, &crm, &ews);
        assert_eq!(
            m.links,
            vec![(0, 0, LinkBy::SubjectStart), (1, 1, LinkBy::Uid)]
        );
    }
}
