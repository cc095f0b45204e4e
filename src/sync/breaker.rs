//! The delete breaker: before a plan is carried out, its deletes are counted per mailbox,
//! area, scope (own records, the tenant's shared contacts, each mail folder) and side. A count
//! over the mailbox's limits — more than `max_deletes` or `max_percent` of the scope,
//! whichever is larger — or one that would empty a side while the other still holds the
//! records, is held: those deletes wait for an administrator (approve applies them, reject
//! restores what was deleted from the other side), while everything else goes on. A side
//! left empty by more than one delete is always held. Once a scope is held, further deletes
//! in it join the hold. See docs/safety.md.

use crate::db::integrity::Side;
use crate::sync::core::BreakerLimits;

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

    #[test]
    fn no_limit_overflows() {
        let huge = BreakerLimits {
            max_deletes: u64::MAX,
            max_percent: u64::MAX,
        };
        assert_eq!(check(5, u64::MAX, huge, false), None);
    }
}
