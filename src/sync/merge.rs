//! The three-way merge: given the last synced values (base), the CRM's and Exchange's, each
//! field takes the side that changed it; a field both sides changed to different values takes
//! the leading system's value and is reported as a conflict.

use std::collections::BTreeSet;

use super::fields::Fields;
use crate::config::Leading;

/// What the merge decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Merge {
    /// The values both sides end with.
    pub merged: Fields,
    /// Fields Exchange must be updated in (merged differs from Exchange's value).
    pub to_exchange: Vec<String>,
    /// Fields the CRM must be updated in.
    pub to_crm: Vec<String>,
    /// Fields both sides changed to different values.
    pub conflicts: Vec<String>,
}

fn value<'a>(f: &'a Fields, name: &str) -> Option<&'a String> {
    f.get(name).and_then(Option::as_ref)
}

/// Merges field by field.
pub fn merge(base: &Fields, crm: &Fields, ews: &Fields, leading: Leading) -> Merge {
    let names: BTreeSet<&String> = base.keys().chain(crm.keys()).chain(ews.keys()).collect();
    let mut m = Merge::default();
    for name in names {
        let (b, c, e) = (value(base, name), value(crm, name), value(ews, name));
        let merged = if c == e || e == b {
            c
        } else if c == b {
            e
        } else {
            m.conflicts.push(name.clone());
            match leading {
                Leading::Crm => c,
                Leading::Exchange => e,
            }
        };
        if merged != e {
            m.to_exchange.push(name.clone());
        }
        if merged != c {
            m.to_crm.push(name.clone());
        }
        m.merged.insert(name.clone(), merged.cloned());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fields(pairs: &[(&str, Option<&str>)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_owned)))
            .collect()
    }

    #[test]
    fn one_sided_changes_merge_and_two_sided_ones_go_to_the_leader() {
        let base = fields(&[
            ("a", Some("1")),
            ("b", Some("1")),
            ("c", Some("1")),
            ("d", None),
        ]);
        let crm = fields(&[
            ("a", Some("2")),
            ("b", Some("1")),
            ("c", Some("crm")),
            ("d", Some("x")),
        ]);
        let ews = fields(&[
            ("a", Some("1")),
            ("b", Some("3")),
            ("c", Some("ews")),
            ("d", Some("x")),
        ]);
        let m = merge(&base, &crm, &ews, Leading::Exchange);
        assert_eq!(
            m.merged,
            fields(&[
                ("a", Some("2")),
                ("b", Some("3")),
                ("c", Some("ews")),
                ("d", Some("x"))
            ])
        );
        assert_eq!(m.conflicts, vec!["c"]);
        assert_eq!(m.to_exchange, vec!["a"]);
        assert_eq!(m.to_crm, vec!["b", "c"]);
        let m = merge(&base, &crm, &ews, Leading::Crm);
        assert_eq!(m.merged["c"].as_deref(), Some("crm"));
        assert_eq!(m.to_exchange, vec!["a", "c"]);
    }

    fn arb_fields() -> impl Strategy<Value = Fields> {
        proptest::collection::btree_map(
            prop_oneof![
                Just("a".to_string()),
                Just("b".to_string()),
                Just("c".to_string())
            ],
            proptest::option::of(prop_oneof![
                Just("x".to_string()),
                Just("y".to_string()),
                Just("z".to_string())
            ]),
            0..3,
        )
    }

    fn leading() -> impl Strategy<Value = Leading> {
        prop_oneof![Just(Leading::Crm), Just(Leading::Exchange)]
    }

    proptest! {
        #[test]
        fn merged_values_come_from_a_side_and_writes_make_both_equal(base in arb_fields(), crm in arb_fields(), ews in arb_fields(), lead in leading()) {
            let m = merge(&base, &crm, &ews, lead);
            for (name, v) in &m.merged {
                let v = v.as_ref();
                prop_assert!(v == value(&crm, name) || v == value(&ews, name));
                // Applying the writes leaves both sides with the merged value.
                let crm_after = if m.to_crm.contains(name) { v } else { value(&crm, name) };
                let ews_after = if m.to_exchange.contains(name) { v } else { value(&ews, name) };
                prop_assert_eq!(crm_after, v);
                prop_assert_eq!(ews_after, v);
            }
        }

        #[test]
        fn an_unchanged_side_takes_the_other_without_conflict(base in arb_fields(), other in arb_fields(), lead in leading()) {
            let from_ews = merge(&base, &base, &other, lead);
            prop_assert!(from_ews.conflicts.is_empty());
            prop_assert!(from_ews.to_exchange.is_empty());
            let from_crm = merge(&base, &other, &base, lead);
            prop_assert!(from_crm.conflicts.is_empty());
            prop_assert!(from_crm.to_crm.is_empty());
        }

        #[test]
        fn conflicts_are_exactly_the_fields_both_changed_differently(base in arb_fields(), crm in arb_fields(), ews in arb_fields(), lead in leading()) {
            let m = merge(&base, &crm, &ews, lead);
            for name in m.merged.keys() {
                let (b, c, e) = (value(&base, name), value(&crm, name), value(&ews, name));
                prop_assert_eq!(m.conflicts.contains(name), c != b && e != b && c != e);
            }
        }

        #[test]
        fn swapping_the_sides_and_the_leader_merges_the_same(base in arb_fields(), crm in arb_fields(), ews in arb_fields()) {
            let a = merge(&base, &crm, &ews, Leading::Crm);
            let b = merge(&base, &ews, &crm, Leading::Exchange);
            prop_assert_eq!(a.merged, b.merged);
            prop_assert_eq!(a.conflicts, b.conflicts);
        }
    }
}
