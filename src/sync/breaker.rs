//! The delete breaker: before a plan is carried out, its deletes are counted per mailbox,
//! area, scope (own records, the tenant's shared contacts, each mail folder) and side. A count
//! over the mailbox's limits — more than `max_deletes` or `max_percent` of the scope,
//! whichever is larger — or one that would empty a side while the other still holds the
//! records, is held: those deletes wait for an administrator (approve applies them, reject
//! restores what was deleted from the other side), while everything else goes on. A side
//! left empty by more than one delete is always held. Once a scope is held, further deletes
//! in it join the hold. See docs/safety.md.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::db::integrity::Side;
use crate::sync::core::BreakerLimits;

/// How long applied deletes of a scope keep counting towards the next steps' deletes. One
/// "select all, delete" reaches mailsync as several steps when the client deletes item by
/// item and notifications wake the folder meanwhile (or a CRM job deletes in batches); within
/// this window the parts are judged as one mass delete.
pub const BURST_WINDOW: Duration = Duration::from_secs(300);

/// A scope of the breaker: mailbox, CRM table, scope (own, shared, a mail folder), side.
pub type ScopeKey = (String, String, String, Side);

/// Deletes let through recently, per scope and record (in memory: a restart forgets them,
/// which only makes the breaker judge the next part on its own, as before). Records, not
/// counts: a step that failed after its deletes were judged judges the same records again on
/// its retry, and they count once.
#[derive(Debug, Default)]
pub struct Recent {
    /// Per scope, the records whose delete was let through, and when.
    passed: Mutex<HashMap<ScopeKey, HashMap<String, Instant>>>,
}

impl Recent {
    /// The records of the scope let through within [`BURST_WINDOW`] before `now`.
    fn within(&self, key: &ScopeKey, now: Instant) -> Vec<String> {
        let mut passed = self.passed.lock();
        let Some(list) = passed.get_mut(key) else {
            return Vec::new();
        };
        list.retain(|_, at| now.saturating_duration_since(*at) < BURST_WINDOW);
        let ids = list.keys().cloned().collect();
        if list.is_empty() {
            passed.remove(key);
        }
        ids
    }

    /// Judges the deletes of `ids` in a scope of `size` mapped records together with those
    /// let through there within the window (the scope held them too, so they count in its
    /// size as well unless they are among `ids`, still mapped). Deletes that pass are noted.
    /// Returns the reason to hold, and the count and size it judged.
    pub fn judge(
        &self,
        key: ScopeKey,
        ids: &[String],
        size: u64,
        limits: BreakerLimits,
        already_held: bool,
        now: Instant,
    ) -> (Option<HoldReason>, u64, u64) {
        let count = ids.len() as u64;
        let earlier = if ids.is_empty() {
            0
        } else {
            let now_ids: std::collections::HashSet<&String> = ids.iter().collect();
            self.within(&key, now)
                .iter()
                .filter(|id| !now_ids.contains(id))
                .count() as u64
        };
        let (count_all, size_all) = (count.saturating_add(earlier), size.saturating_add(earlier));
        let reason = check(count_all, size_all, limits, already_held);
        if reason.is_none() && !ids.is_empty() {
            let mut passed = self.passed.lock();
            let list = passed.entry(key).or_default();
            for id in ids {
                list.insert(id.clone(), now);
            }
        }
        (reason, count_all, size_all)
    }
}

/// Why deletes were held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldReason {
    /// More than the limits allow at once.
    OverLimit {
        /// The limit that applied (the larger of the two).
        limit: u64,
    },
    /// Every record of the scope would go: the side turned empty while the other is not
    /// (a mailbox recreated empty, a table restored from an old backup or wiped).
    Emptied,
    /// The scope already has deletes waiting for a decision.
    AlreadyHeld,
}

impl HoldReason {
    /// In words, for the log and the API.
    pub fn describe(self) -> String {
        match self {
            HoldReason::OverLimit { limit } => format!("more than {limit} deletes at once"),
            HoldReason::Emptied => "the side would be left empty".into(),
            HoldReason::AlreadyHeld => "deletes of this scope already wait for a decision".into(),
        }
    }
}

/// Whether `count` deletes in a scope of `size` mapped records are held.
pub fn check(
    count: u64,
    size: u64,
    limits: BreakerLimits,
    already_held: bool,
) -> Option<HoldReason> {
    if count == 0 {
        return None;
    }
    if already_held {
        return Some(HoldReason::AlreadyHeld);
    }
    // A side left empty by more than one delete: a wiped table, a mailbox recreated empty,
    // a folder cleared. (A user deleting the last record of a scope is no such thing.)
    if size > 0 && count >= size && count >= 2 {
        return Some(HoldReason::Emptied);
    }
    let percent = size.saturating_mul(limits.max_percent) / 100;
    let limit = limits.max_deletes.max(percent);
    (count > limit).then_some(HoldReason::OverLimit { limit })
}

/// The sides' words.
pub fn side_str(side: Side) -> &'static str {
    side.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> BreakerLimits {
        BreakerLimits {
            max_deletes: 20,
            max_percent: 10,
        }
    }

    #[test]
    fn a_few_deletes_pass_and_many_are_held() {
        let cases: &[(u64, u64, bool, Option<HoldReason>)] = &[
            (0, 100, false, None),
            (3, 30, false, None),
            (20, 100, false, None),
            (21, 100, false, Some(HoldReason::OverLimit { limit: 20 })),
            // 10 % of 1,000 is the larger limit.
            (100, 1000, false, None),
            (101, 1000, false, Some(HoldReason::OverLimit { limit: 100 })),
            // Everything of a scope: held, however small...
            (30, 30, false, Some(HoldReason::Emptied)),
            (2, 2, false, Some(HoldReason::Emptied)),
            // ...but the last record of a scope alone is a user's delete.
            (1, 1, false, None),
            // A held scope holds whatever comes next.
            (1, 100, true, Some(HoldReason::AlreadyHeld)),
            (0, 100, true, None),
        ];
        for (count, size, held, expected) in cases {
            assert_eq!(
                check(*count, *size, limits(), *held),
                *expected,
                "{count} of {size}, held {held}"
            );
        }
    }

    fn key() -> ScopeKey {
        (
            "a@example.com".into(),
            "crm_contacts".into(),
            "own".into(),
            Side::Crm,
        )
    }

    fn ids(part: u64) -> Vec<String> {
        (part * 10..part * 10 + 10).map(|i| i.to_string()).collect()
    }

    /// 30 deletes of 100 seen by three steps of 10: the first two parts pass (20, the
    /// limit), the third is judged with them and held; a retried part counts once; after
    /// the window a part is judged alone.
    #[test]
    fn a_mass_delete_in_parts_is_judged_as_one() {
        let recent = Recent::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut size = 100;
        let mut outcomes = Vec::new();
        for part in 0..3 {
            let (reason, count, of) =
                recent.judge(key(), &ids(part), size, limits(), false, at(part));
            outcomes.push((reason, count, of));
            if reason.is_none() {
                size -= 10;
            }
        }
        assert_eq!(
            outcomes,
            vec![
                (None, 10, 100),
                (None, 20, 100),
                (Some(HoldReason::OverLimit { limit: 20 }), 30, 100)
            ]
        );
        // A step that failed after its judgement judges the same records again: once.
        let again = Recent::default();
        assert_eq!(
            again.judge(key(), &ids(0), 100, limits(), false, at(0)).0,
            None
        );
        assert_eq!(
            again.judge(key(), &ids(0), 100, limits(), false, at(1)),
            (None, 10, 100)
        );
        // 30 of 30 in three parts: the last part empties the scope with the others.
        let all = Recent::default();
        let mut size = 30;
        let mut last = None;
        for part in 0..3 {
            let (reason, ..) = all.judge(key(), &ids(part), size, limits(), false, at(part));
            if reason.is_none() {
                size -= 10;
            }
            last = reason;
        }
        assert_eq!(last, Some(HoldReason::Emptied));
        // Other scopes count on their own; after the window a part is alone.
        let other = (
            "a@example.com".to_string(),
            "crm_contacts".to_string(),
            "shared".to_string(),
            Side::Crm,
        );
        assert_eq!(
            recent.judge(other, &ids(5), 80, limits(), false, at(3)),
            (None, 10, 80)
        );
        let later = at(2) + BURST_WINDOW;
        assert_eq!(
            recent.judge(key(), &ids(6), 80, limits(), false, later),
            (None, 10, 80)
        );
    }

    #[test]
    fn no_limit_overflows() {
        let huge = BreakerLimits {
            max_deletes: u64::MAX,
            max_percent: u64::MAX,
        };
        assert_eq!(check(5, u64::MAX, huge, false), None);
    }
}
