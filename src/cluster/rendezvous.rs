//! Who should own what: rendezvous (highest random weight) hashing of keys over the live
//! instances. Every instance computes the same answer from the same membership, with no
//! coordination; when an instance joins or leaves only the keys whose winner changed move
//! (about 1/n of them), and a dead instance's keys spread evenly over the others.

/// FNV-1a over the bytes, then the splitmix64 finaliser so that near-equal inputs land far
/// apart. Stable across builds and platforms (std's hasher is not promised to be).
fn weight(instance: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in instance.bytes().chain([0xff]).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The instance (of `live`, by id) that should own `key`; `None` when nobody is live. Ties
/// (practically impossible) go to the smaller id, so every instance agrees.
pub fn owner<'a>(key: &str, live: &'a [String]) -> Option<&'a str> {
    live.iter()
        .map(|id| (weight(id, key), id.as_str()))
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, id)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("host{i}-{}#a1b2", 1000 + i))
            .collect()
    }

    fn keys() -> Vec<String> {
        (1..=1000).map(|i| format!("user{i}@example.com")).collect()
    }

    #[test]
    fn keys_spread_evenly_over_the_live_instances() {
        let live = ids(3);
        let mut counts = [0usize; 3];
        for k in keys() {
            let o = owner(&k, &live).unwrap();
            counts[live.iter().position(|i| i == o).unwrap()] += 1;
        }
        for c in counts {
            assert!((250..=420).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn a_leave_moves_only_the_leavers_keys_and_a_join_only_to_the_joiner() {
        let three = ids(3);
        let two: Vec<String> = three[..2].to_vec();
        for k in keys() {
            let before = owner(&k, &three).unwrap();
            let after = owner(&k, &two).unwrap();
            if before != three[2] {
                assert_eq!(before, after, "{k} moved although its owner stayed");
            }
            // Joining is the same relation read backwards.
            if after != before {
                assert_eq!(before, three[2]);
            }
        }
    }

    #[test]
    fn everyone_agrees_whatever_order_they_list_the_members_in() {
        let live = ids(4);
        let mut reversed = live.clone();
        reversed.reverse();
        for k in keys() {
            assert_eq!(owner(&k, &live), owner(&k, &reversed));
        }
        assert_eq!(owner("x", &[]), None);
    }
}
