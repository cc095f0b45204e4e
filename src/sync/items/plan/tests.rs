//! The planner's laws, against a model of both sides: a world of CRM rows, Exchange items and
//! mappings that a plan is carried out on exactly as the executor would.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::config::{AreaConfig, Leading};

#[derive(Debug, Clone)]
struct Row {
    version: i64,
    fields: Fields,
    scope: Option<bool>,
}

#[derive(Debug, Clone)]
struct Item {
    change_key: u64,
    fields: Fields,
    shared: bool,
}

#[derive(Debug, Clone, Default)]
struct World {
    crm: BTreeMap<i64, Row>,
    ews: BTreeMap<String, Item>,
    maps: BTreeMap<i64, Base>,
    next: i64,
}

fn id(i: &str, ck: u64) -> ItemId {
    ItemId {
        id: i.to_owned(),
        change_key: Some(ck.to_string()),
    }
}

impl World {
    /// What a full step sees: every row, every item, every mapping.
    fn observe(&self) -> Vec<Pair> {
        let mut pairs = Vec::new();
        let mut mapped_items = std::collections::BTreeSet::new();
        for (crm_id, base) in &self.maps {
            mapped_items.insert(base.ews.id.clone());
            let crm = match self.crm.get(crm_id) {
                Some(r) => Side::Here(self.crm_obs(*crm_id, r)),
                None => Side::Gone,
            };
            let ews = match self.ews.get(&base.ews.id) {
                Some(i) => Side::Here(self.ews_obs(&base.ews.id, i)),
                None => Side::Gone,
            };
            pairs.push(Pair {
                base: Some(base.clone()),
                crm,
                ews,
                link: None,
                held: false,
            });
        }
        for (crm_id, r) in &self.crm {
            if !self.maps.contains_key(crm_id) {
                pairs.push(Pair {
                    base: None,
                    crm: Side::Here(self.crm_obs(*crm_id, r)),
                    ews: Side::Unseen,
                    link: None,
                    held: false,
                });
            }
        }
        for (ews_id, i) in &self.ews {
            if !mapped_items.contains(ews_id) {
                pairs.push(Pair {
                    base: None,
                    crm: Side::Unseen,
                    ews: Side::Here(self.ews_obs(ews_id, i)),
                    link: None,
                    held: false,
                });
            }
        }
        pairs
    }

    fn crm_obs(&self, crm_id: i64, r: &Row) -> CrmObs {
        CrmObs {
            id: crm_id,
            version: r.version,
            fields: r.fields.clone(),
            scope: r.scope,
            problems: vec![],
        }
    }

    fn ews_obs(&self, ews_id: &str, i: &Item) -> EwsObs {
        EwsObs {
            id: id(ews_id, i.change_key),
            fields: i.fields.clone(),
            shared: i.shared,
        }
    }

    fn new_item(&mut self, fields: &Fields, shared: bool) -> String {
        self.next += 1;
        let name = format!("new{}", self.next);
        self.ews.insert(
            name.clone(),
            Item {
                change_key: 1,
                fields: fields.clone(),
                shared,
            },
        );
        name
    }

    /// Carries a plan out as the executor does: Exchange first, then the CRM, then the mapping.
    fn apply(&mut self, plan: &[Decision]) {
        for d in plan {
            let mut ews_id = d.ews_id.clone();
            match &d.ews {
                Some(EwsWrite::Create { fields, shared }) => {
                    ews_id = Some(self.new_item(fields, *shared));
                }
                Some(EwsWrite::Update {
                    id,
                    fields,
                    changed,
                    ..
                }) => {
                    let item = self.ews.get_mut(&id.id).expect("updated item exists");
                    for n in changed {
                        item.fields
                            .insert(n.clone(), fields.get(n).cloned().flatten());
                    }
                    item.change_key += 1;
                }
                Some(EwsWrite::Delete { id }) => {
                    self.ews.remove(&id.id);
                }
                Some(EwsWrite::Recreate {
                    old,
                    fields,
                    shared,
                }) => {
                    self.ews.remove(&old.id);
                    ews_id = Some(self.new_item(fields, *shared));
                }
                None => {}
            }
            let mut crm_id = d.crm_id;
            match &d.crm {
                Some(CrmWrite::Insert { fields, shared, .. }) => {
                    self.next += 1;
                    crm_id = Some(1000 + self.next);
                    self.crm.insert(
                        1000 + self.next,
                        Row {
                            version: 1,
                            fields: fields.clone(),
                            scope: Some(*shared),
                        },
                    );
                }
                Some(CrmWrite::Update { id, fields, .. }) => {
                    let row = self.crm.get_mut(id).expect("updated row exists");
                    row.fields = fields.clone();
                    row.version += 1;
                }
                Some(CrmWrite::Delete { id }) => {
                    self.crm.remove(id);
                }
                None => {}
            }
            match &d.map {
                MapOp::Keep => {}
                MapOp::Drop => {
                    if let Some(b) = &d.base {
                        self.maps.remove(&b.crm_id);
                    }
                }
                MapOp::Put { fields, shared } => {
                    if let Some(b) = &d.base {
                        self.maps.remove(&b.crm_id);
                    }
                    let crm_id = crm_id.expect("a mapped pair has a row");
                    let ews_id = ews_id.expect("a mapped pair has an item");
                    let item = &self.ews[&ews_id];
                    self.maps.insert(
                        crm_id,
                        Base {
                            crm_id,
                            ews: id(&ews_id, item.change_key),
                            crm_version: Some(self.crm[&crm_id].version),
                            fields: fields.clone(),
                            shared: *shared,
                            stamped: true,
                        },
                    );
                }
            }
        }
    }
}

const NAMES: [&str; 3] = ["a", "b", "categories"];

fn value() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("1".to_owned())),
        Just(Some("2".to_owned())),
    ]
}

fn categories() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("[\"x\"]".to_owned())),
        Just(Some("[\"y\"]".to_owned())),
    ]
}

fn some_fields() -> impl Strategy<Value = Fields> {
    (value(), value(), categories()).prop_map(|(a, b, c)| {
        let mut f = Fields::new();
        for (n, v) in NAMES.iter().zip([a, b, c]) {
            f.insert((*n).to_owned(), v);
        }
        f
    })
}

/// One pair's state in a generated world.
#[derive(Debug, Clone)]
enum Case {
    /// Mapped: base, CRM (None: deleted; Some(changed?, fields, scope)), Exchange (None:
    /// deleted; Some(changed?, fields)), shared.
    Mapped {
        base: Fields,
        crm: Option<(bool, Fields, Option<bool>)>,
        ews: Option<(bool, Fields)>,
        shared: bool,
    },
    /// A row only in the CRM.
    CrmOnly(Fields, Option<bool>),
    /// An item only in Exchange.
    EwsOnly(Fields, bool),
}

fn scope() -> impl Strategy<Value = Option<bool>> {
    prop_oneof![4 => Just(Some(false)), 1 => Just(Some(true)), 1 => Just(None)]
}

fn case() -> impl Strategy<Value = Case> {
    prop_oneof![
        3 => (
            some_fields(),
            proptest::option::weighted(0.8, (any::<bool>(), some_fields(), scope())),
            proptest::option::weighted(0.8, (any::<bool>(), some_fields())),
            any::<bool>(),
        )
            .prop_map(|(base, crm, ews, shared)| Case::Mapped { base, crm, ews, shared }),
        1 => (some_fields(), scope()).prop_map(|(f, s)| Case::CrmOnly(f, s)),
        1 => (some_fields(), any::<bool>()).prop_map(|(f, s)| Case::EwsOnly(f, s)),
    ]
}

fn world(cases: &[Case]) -> World {
    let mut w = World::default();
    for (n, c) in cases.iter().enumerate() {
        let crm_id = n as i64 + 1;
        let ews_id = format!("item{n}");
        match c {
            Case::Mapped {
                base,
                crm,
                ews,
                shared,
            } => {
                w.maps.insert(
                    crm_id,
                    Base {
                        crm_id,
                        ews: id(&ews_id, 1),
                        crm_version: Some(1),
                        fields: base.clone(),
                        shared: *shared,
                        stamped: true,
                    },
                );
                if let Some((changed, fields, scope)) = crm {
                    let scope = scope.map(|_| *shared).or(*scope);
                    w.crm.insert(
                        crm_id,
                        Row {
                            version: if *changed { 2 } else { 1 },
                            fields: if *changed {
                                fields.clone()
                            } else {
                                base.clone()
                            },
                            scope,
                        },
                    );
                }
                if let Some((changed, fields)) = ews {
                    w.ews.insert(
                        ews_id,
                        Item {
                            change_key: if *changed { 2 } else { 1 },
                            fields: if *changed {
                                fields.clone()
                            } else {
                                base.clone()
                            },
                            shared: *shared,
                        },
                    );
                }
            }
            Case::CrmOnly(fields, scope) => {
                w.crm.insert(
                    crm_id,
                    Row {
                        version: 1,
                        fields: fields.clone(),
                        scope: *scope,
                    },
                );
            }
            Case::EwsOnly(fields, shared) => {
                w.ews.insert(
                    ews_id,
                    Item {
                        change_key: 1,
                        fields: fields.clone(),
                        shared: *shared,
                    },
                );
            }
        }
    }
    w
}

fn config(leading: Leading, filter: bool) -> AreaConfig {
    AreaConfig {
        leading,
        categories: if filter { vec!["x".into()] } else { vec![] },
    }
}

fn leading() -> impl Strategy<Value = Leading> {
    prop_oneof![Just(Leading::Crm), Just(Leading::Exchange)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Executing a plan and planning again yields nothing to do.
    #[test]
    fn a_plan_carried_out_leaves_nothing_to_do(
        cases in proptest::collection::vec(case(), 1..8),
        leading in leading(),
        filter in any::<bool>(),
    ) {
        let config = config(leading, filter);
        let mut w = world(&cases);
        let first = plan(&w.observe(), &config);
        w.apply(&first);
        let again = plan(&w.observe(), &config);
        prop_assert!(again.is_empty(), "first plan {first:#?}\nleft {again:#?}\nworld {w:#?}");
    }

    /// A plan never deletes what the step did not see gone (or leave the mailbox).
    #[test]
    fn a_plan_deletes_only_what_it_saw_gone(
        cases in proptest::collection::vec(case(), 1..8),
        unseen in proptest::collection::vec(any::<bool>(), 8),
        leading in leading(),
        filter in any::<bool>(),
    ) {
        let config = config(leading, filter);
        let w = world(&cases);
        let mut pairs = w.observe();
        // An incremental step looks at some items only; the CRM row of a mapped pair whose
        // item it saw is always read, others may be unseen too.
        for (p, hide) in pairs.iter_mut().zip(unseen) {
            if hide {
                if p.ews.here().is_some() || matches!(p.ews, Side::Gone) {
                    p.ews = Side::Unseen;
                } else {
                    p.crm = Side::Unseen;
                }
            }
        }
        for (p, d) in pairs.iter().map(|p| (p, decide(p, &config))) {
            if matches!(d.crm, Some(CrmWrite::Delete { .. })) {
                prop_assert_eq!(&p.ews, &Side::Gone, "CRM delete without Exchange seen gone: {:?}", d);
            }
            if matches!(d.ews, Some(EwsWrite::Delete { .. }) | Some(EwsWrite::Recreate { .. })) {
                let left = match &p.crm {
                    Side::Gone => true,
                    Side::Here(c) => c.scope.is_none()
                        || !wanted(&config, &c.fields)
                        || Some(c.scope == Some(true)) != p.base.as_ref().map(|b| b.shared)
                        || p.ews.here().is_some_and(|e| Some(e.shared) != c.scope),
                    Side::Unseen => false,
                };
                prop_assert!(left, "Exchange delete without the row seen gone: {p:?} {d:?}");
            }
        }
    }

    /// Where both sides changed a field, the leading system's value wins; where one side
    /// changed it, that side's value; a field nobody changed keeps its value.
    #[test]
    fn the_leader_wins_exactly_the_fields_changed_on_both_sides(
        base in some_fields(),
        crm in some_fields(),
        ews in some_fields(),
        leading in leading(),
    ) {
        let config = config(leading, false);
        let pair = Pair {
            base: Some(Base {
                crm_id: 1,
                ews: id("i", 1),
                crm_version: Some(1),
                fields: base.clone(),
                shared: false,
                stamped: true,
            }),
            crm: Side::Here(CrmObs { id: 1, version: 2, fields: crm.clone(), scope: Some(false), problems: vec![] }),
            ews: Side::Here(EwsObs { id: id("i", 2), fields: ews.clone(), shared: false }),
            link: None,
            held: false,
        };
        let d = decide(&pair, &config);
        let merged = match &d.map {
            MapOp::Put { fields, .. } => fields.clone(),
            other => return Err(TestCaseError::fail(format!("expected a new base, got {other:?}"))),
        };
        let conflicts = d.conflict.as_ref().map(|c| c.fields.clone()).unwrap_or_default();
        for n in NAMES {
            let (b, c, e) = (base.get(n).cloned().flatten(), crm.get(n).cloned().flatten(), ews.get(n).cloned().flatten());
            let m = merged.get(n).cloned().flatten();
            let both = b != c && b != e && c != e;
            if both {
                let leader = if leading == Leading::Crm { &c } else { &e };
                prop_assert_eq!(&m, leader);
                prop_assert!(conflicts.iter().any(|f| f == n));
            } else {
                prop_assert!(!conflicts.iter().any(|f| f == n));
                if b != c { prop_assert_eq!(&m, &c); }
                else if b != e { prop_assert_eq!(&m, &e); }
                else { prop_assert_eq!(&m, &b); }
            }
        }
    }
}

fn f(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Some((*v).to_owned())))
        .collect()
}

/// One decision, data-driven: (case, what is expected).
fn check(p: Pair, leading: Leading, expect: impl Fn(&Decision) -> bool, what: &str) {
    let d = decide(&p, &config(leading, false));
    assert!(expect(&d), "{what}: {d:#?}");
}

fn mapped(base: Fields) -> Option<Base> {
    Some(Base {
        crm_id: 7,
        ews: id("x", 1),
        crm_version: Some(1),
        fields: base,
        shared: false,
        stamped: true,
    })
}

fn row(version: i64, fields: Fields) -> Side<CrmObs> {
    Side::Here(CrmObs {
        id: 7,
        version,
        fields,
        scope: Some(false),
        problems: vec![],
    })
}

fn item(ck: u64, fields: Fields) -> Side<EwsObs> {
    Side::Here(EwsObs {
        id: id("x", ck),
        fields,
        shared: false,
    })
}

fn pair(base: Option<Base>, crm: Side<CrmObs>, ews: Side<EwsObs>) -> Pair {
    Pair {
        base,
        crm,
        ews,
        link: None,
        held: false,
    }
}

#[test]
fn cases() {
    let b = f(&[("a", "1")]);
    check(
        pair(mapped(b.clone()), Side::Gone, Side::Unseen),
        Leading::Crm,
        |d| matches!(d.ews, Some(EwsWrite::Delete { .. })) && d.map == MapOp::Drop,
        "deleted in the CRM: deleted in Exchange",
    );
    check(
        pair(mapped(b.clone()), row(1, b.clone()), Side::Gone),
        Leading::Crm,
        |d| matches!(d.crm, Some(CrmWrite::Delete { id: 7 })) && d.conflict.is_none(),
        "deleted in Exchange, unchanged in the CRM: deleted in the CRM",
    );
    check(
        pair(mapped(b.clone()), row(2, f(&[("a", "2")])), Side::Gone),
        Leading::Crm,
        |d| {
            matches!(d.ews, Some(EwsWrite::Create { .. }))
                && d.crm.is_none()
                && d.conflict.is_some()
        },
        "deleted in Exchange, changed in the leading CRM: written again",
    );
    check(
        pair(mapped(b.clone()), row(2, f(&[("a", "2")])), Side::Gone),
        Leading::Exchange,
        |d| matches!(d.crm, Some(CrmWrite::Delete { .. })) && d.conflict.is_some(),
        "deleted in the leading Exchange, changed in the CRM: deleted, logged",
    );
    check(
        pair(mapped(b.clone()), Side::Gone, item(2, f(&[("a", "3")]))),
        Leading::Exchange,
        |d| matches!(d.crm, Some(CrmWrite::Insert { .. })) && d.conflict.is_some(),
        "deleted in the CRM, changed in the leading Exchange: the row comes back",
    );
    check(
        pair(mapped(b.clone()), row(1, b.clone()), item(1, b.clone())),
        Leading::Crm,
        Decision::is_noop,
        "nothing changed: nothing to do",
    );
    check(
        pair(mapped(b.clone()), row(2, b.clone()), Side::Unseen),
        Leading::Crm,
        |d| d.ews.is_none() && matches!(d.map, MapOp::Put { .. }),
        "a new version with the same values: only the version is recorded",
    );
    check(
        pair(mapped(b.clone()), row(1, b.clone()), Side::Unseen),
        Leading::Crm,
        Decision::is_noop,
        "our own write coming back: nothing",
    );
    let out = Side::Here(CrmObs {
        id: 7,
        version: 2,
        fields: b.clone(),
        scope: None,
        problems: vec![],
    });
    check(
        pair(mapped(b.clone()), out, item(2, f(&[("a", "9")]))),
        Leading::Exchange,
        |d| matches!(d.ews, Some(EwsWrite::Delete { .. })) && d.crm.is_none(),
        "a row moved to another operator is never written from this mailbox",
    );
    let mut held = pair(mapped(b.clone()), Side::Gone, Side::Unseen);
    held.held = true;
    check(
        held,
        Leading::Crm,
        Decision::is_noop,
        "a held pair is left alone",
    );
    let mut linked = pair(
        None,
        row(1, f(&[("a", "1"), ("b", "crm")])),
        item(1, f(&[("a", "1"), ("b", "ews")])),
    );
    linked.link = Some(LinkBy::Email("a@b.c".into()));
    check(
        linked,
        Leading::Exchange,
        |d| {
            matches!(&d.crm, Some(CrmWrite::Update { changed, .. }) if changed == &["b".to_string()])
                && d.ews.is_none()
                && d.conflict.is_some()
        },
        "first contact: linked, the leading side's value where both hold one",
    );
    let bad = Side::Here(CrmObs {
        id: 7,
        version: 1,
        fields: b.clone(),
        scope: Some(false),
        problems: vec!["subject is too long".into()],
    });
    check(
        pair(None, bad, Side::Unseen),
        Leading::Crm,
        |d| d.fail.as_deref() == Some("subject is too long") && d.ews.is_none(),
        "a row Exchange cannot hold is parked",
    );
}
