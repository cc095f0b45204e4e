//! IANA time zone names (the CRM's) and Windows time zone ids (Exchange's), for every zone
//! of the maintained CLDR mapping (windowsZones.xml). The table is generated
//! (`windows_zones.rs`, by tools/windows_zones.py from the PyPI package tzlocal, which ships
//! CLDR's data; its licence is `windows_zones.LICENSE`). Windows to IANA gives the canonical
//! zone of each Windows id (CLDR territory 001); IANA to Windows also accepts every other zone
//! and alias CLDR lists for it. A CRM zone not in the table cannot be written to Exchange:
//! the row goes to the failure log naming it. An Exchange zone not in the table is imported
//! as UTC ([`super::fields`]).

#[path = "windows_zones.rs"]
mod table;

pub use table::{IANA_TO_WINDOWS, WINDOWS_TO_IANA};

/// The Windows id for an IANA zone (canonical or alias).
pub fn windows_id(iana: &str) -> Option<&'static str> {
    IANA_TO_WINDOWS
        .binary_search_by(|(name, _)| (*name).cmp(iana))
        .ok()
        .map(|i| IANA_TO_WINDOWS[i].1)
}

/// The canonical IANA zone for a Windows id.
pub fn iana(windows: &str) -> Option<&'static str> {
    WINDOWS_TO_IANA
        .binary_search_by(|(id, _)| (*id).cmp(windows))
        .ok()
        .map(|i| WINDOWS_TO_IANA[i].1)
}

/// The zone a CRM value stands for, in canonical form (so `Europe/Amsterdam` and
/// `Europe/Berlin`, which Exchange cannot tell apart, compare equal).
pub fn canonical(iana_name: &str) -> Option<&'static str> {
    windows_id(iana_name).and_then(iana)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tables_are_sorted_for_binary_search_and_complete() {
        assert!(WINDOWS_TO_IANA.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(IANA_TO_WINDOWS.windows(2).all(|w| w[0].0 < w[1].0));
        // CLDR maps about 140 Windows ids; the hand-kept table before it had 25.
        assert!(WINDOWS_TO_IANA.len() >= 135, "{}", WINDOWS_TO_IANA.len());
        assert!(IANA_TO_WINDOWS.len() >= 450, "{}", IANA_TO_WINDOWS.len());
    }

    #[test]
    fn every_windows_id_maps_to_a_zone_chrono_tz_knows_and_back() {
        for (windows, zone) in WINDOWS_TO_IANA {
            assert!(
                zone.parse::<chrono_tz::Tz>().is_ok(),
                "{windows}: {zone} is not an IANA zone chrono-tz knows"
            );
            assert_eq!(iana(windows), Some(*zone));
            assert_eq!(windows_id(zone), Some(*windows), "{zone} maps back");
            assert_eq!(canonical(zone), Some(*zone));
        }
    }

    #[test]
    fn every_iana_zone_maps_to_a_windows_id_with_a_canonical_zone() {
        for (zone, windows) in IANA_TO_WINDOWS {
            assert!(
                zone.parse::<chrono_tz::Tz>().is_ok(),
                "{zone} is not an IANA zone chrono-tz knows"
            );
            let canonical_zone = iana(windows)
                .unwrap_or_else(|| panic!("{zone} -> {windows}, which has no canonical zone"));
            assert_eq!(canonical(zone), Some(canonical_zone));
        }
    }

    #[test]
    fn known_pairs() {
        for (windows, zone) in [
            ("W. Europe Standard Time", "Europe/Berlin"),
            ("Romance Standard Time", "Europe/Paris"),
            ("Eastern Standard Time", "America/New_York"),
            ("India Standard Time", "Asia/Calcutta"),
            ("UTC", "UTC"),
            ("Nepal Standard Time", "Asia/Katmandu"),
            ("Chatham Islands Standard Time", "Pacific/Chatham"),
            ("Line Islands Standard Time", "Pacific/Kiritimati"),
        ] {
            assert_eq!(iana(windows), Some(zone), "{windows}");
        }
        assert_eq!(canonical("Europe/Amsterdam"), Some("Europe/Berlin"));
        assert_eq!(canonical("Asia/Kolkata"), Some("Asia/Calcutta"));
        assert_eq!(canonical("Etc/GMT"), Some("UTC"));
        assert_eq!(windows_id("Mars/Olympus_Mons"), None);
        assert_eq!(iana("Customized Time Zone"), None);
    }
}
