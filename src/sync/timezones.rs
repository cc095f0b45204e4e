//! IANA time zone names (the CRM's) and Windows time zone ids (Exchange's), for the zones
//! mailsync maps. Windows to IANA gives the canonical zone of each Windows id; IANA to Windows
//! also accepts the other zones of the same Windows id. A zone not in the table cannot be
//! written to Exchange: the row goes to the failure log naming it.

/// (Windows id, canonical IANA zone, other IANA zones with the same rules).
const ZONES: &[(&str, &str, &[&str])] = &[
    ("UTC", "UTC", &["Etc/UTC", "Etc/GMT", "GMT"]),
    (
        "W. Europe Standard Time",
        "Europe/Berlin",
        &[
            "Europe/Amsterdam",
            "Europe/Vienna",
            "Europe/Zurich",
            "Europe/Rome",
            "Europe/Stockholm",
            "Europe/Oslo",
            "Europe/Luxembourg",
            "Europe/Monaco",
        ],
    ),
    (
        "Romance Standard Time",
        "Europe/Paris",
        &["Europe/Brussels", "Europe/Madrid", "Europe/Copenhagen"],
    ),
    (
        "GMT Standard Time",
        "Europe/London",
        &["Europe/Dublin", "Europe/Lisbon"],
    ),
    (
        "Central European Standard Time",
        "Europe/Warsaw",
        &["Europe/Zagreb", "Europe/Sarajevo", "Europe/Skopje"],
    ),
    (
        "Central Europe Standard Time",
        "Europe/Budapest",
        &[
            "Europe/Prague",
            "Europe/Belgrade",
            "Europe/Bratislava",
            "Europe/Ljubljana",
        ],
    ),
    (
        "FLE Standard Time",
        "Europe/Kiev",
        &[
            "Europe/Kyiv",
            "Europe/Helsinki",
            "Europe/Riga",
            "Europe/Sofia",
            "Europe/Tallinn",
            "Europe/Vilnius",
        ],
    ),
    ("GTB Standard Time", "Europe/Bucharest", &["Europe/Athens"]),
    ("Turkey Standard Time", "Europe/Istanbul", &[]),
    ("Russian Standard Time", "Europe/Moscow", &[]),
    (
        "Eastern Standard Time",
        "America/New_York",
        &["America/Toronto", "America/Detroit"],
    ),
    (
        "Central Standard Time",
        "America/Chicago",
        &["America/Winnipeg"],
    ),
    (
        "Mountain Standard Time",
        "America/Denver",
        &["America/Edmonton"],
    ),
    ("US Mountain Standard Time", "America/Phoenix", &[]),
    (
        "Pacific Standard Time",
        "America/Los_Angeles",
        &["America/Vancouver"],
    ),
    ("Alaskan Standard Time", "America/Anchorage", &[]),
    ("Hawaiian Standard Time", "Pacific/Honolulu", &[]),
    ("E. South America Standard Time", "America/Sao_Paulo", &[]),
    ("Tokyo Standard Time", "Asia/Tokyo", &[]),
    ("China Standard Time", "Asia/Shanghai", &["Asia/Hong_Kong"]),
    ("India Standard Time", "Asia/Calcutta", &["Asia/Kolkata"]),
    ("Arabian Standard Time", "Asia/Dubai", &[]),
    ("Singapore Standard Time", "Asia/Singapore", &[]),
    (
        "AUS Eastern Standard Time",
        "Australia/Sydney",
        &["Australia/Melbourne"],
    ),
    ("South Africa Standard Time", "Africa/Johannesburg", &[]),
];

/// The Windows id for an IANA zone.
pub fn windows_id(iana: &str) -> Option<&'static str> {
    ZONES
        .iter()
        .find(|(_, canonical, others)| *canonical == iana || others.contains(&iana))
        .map(|(w, _, _)| *w)
}

/// The canonical IANA zone for a Windows id.
pub fn iana(windows: &str) -> Option<&'static str> {
    ZONES
        .iter()
        .find(|(w, _, _)| *w == windows)
        .map(|(_, canonical, _)| *canonical)
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
    fn every_zone_round_trips_and_parses_as_a_real_zone() {
        for (w, canonical_name, others) in ZONES {
            assert_eq!(iana(w), Some(*canonical_name));
            for name in std::iter::once(canonical_name).chain(others.iter()) {
                assert_eq!(windows_id(name), Some(*w), "{name}");
                assert!(
                    name.parse::<chrono_tz::Tz>().is_ok(),
                    "{name} is not an IANA zone"
                );
            }
        }
        assert_eq!(canonical("Europe/Amsterdam"), Some("Europe/Berlin"));
        assert_eq!(windows_id("Mars/Olympus_Mons"), None);
    }
}
