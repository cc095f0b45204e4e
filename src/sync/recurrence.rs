//! RFC 5545 RRULEs (the CRM's `recurrence` column) to Exchange recurrences and back.
//!
//! The supported subset is what [`crate::rrule`] parses. A rule is compared in canonical
//! form — the RRULE that Exchange's pattern converts back to — so two spellings of one rule
//! (`BYDAY=WE,MO` and `BYDAY=MO,WE`, a missing `INTERVAL=1`) are not seen as a change.

use chrono::{Datelike, NaiveDate, Weekday};
use ews::items::{Recurrence, RecurrencePattern, RecurrenceRange};

use crate::rrule::{Freq, Rrule};

const DAYS: [(Weekday, &str, &str); 7] = [
    (Weekday::Mon, "MO", "Monday"),
    (Weekday::Tue, "TU", "Tuesday"),
    (Weekday::Wed, "WE", "Wednesday"),
    (Weekday::Thu, "TH", "Thursday"),
    (Weekday::Fri, "FR", "Friday"),
    (Weekday::Sat, "SA", "Saturday"),
    (Weekday::Sun, "SU", "Sunday"),
];
const INDEXES: [(i8, &str); 5] = [
    (1, "First"),
    (2, "Second"),
    (3, "Third"),
    (4, "Fourth"),
    (-1, "Last"),
];
const WEEKDAYS: [Weekday; 5] = [
    Weekday::Mon,
    Weekday::Tue,
    Weekday::Wed,
    Weekday::Thu,
    Weekday::Fri,
];
const WEEKEND: [Weekday; 2] = [Weekday::Sat, Weekday::Sun];

fn ews_day(d: Weekday) -> String {
    DAYS.iter()
        .find(|(w, _, _)| *w == d)
        .map(|(_, _, n)| (*n).to_owned())
        .unwrap_or_default()
}

fn ical_day(d: Weekday) -> &'static str {
    DAYS.iter()
        .find(|(w, _, _)| *w == d)
        .map_or("MO", |(_, i, _)| *i)
}

fn index_name(n: i8) -> Result<String, String> {
    INDEXES
        .iter()
        .find(|(i, _)| *i == n)
        .map(|(_, s)| (*s).to_owned())
        .ok_or(format!("ordinal {n} is not supported"))
}

/// The EWS name of a set of weekdays with BYSETPOS (`Day`, `Weekday`, `WeekendDay`).
fn day_set(days: &[Weekday]) -> Result<String, String> {
    let mut sorted: Vec<u32> = days.iter().map(|d| d.num_days_from_monday()).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let set = |s: &[Weekday]| {
        s.iter()
            .map(|d| d.num_days_from_monday())
            .collect::<Vec<_>>()
    };
    if sorted.len() == 7 {
        Ok("Day".into())
    } else if sorted == set(&WEEKDAYS) {
        Ok("Weekday".into())
    } else if sorted == set(&WEEKEND) {
        Ok("WeekendDay".into())
    } else {
        Err("BYDAY with BYSETPOS must be every day, MO-FR or SA,SU".into())
    }
}

/// Converts a parsed rule; `start` is the first day, in the appointment's time zone.
pub fn to_ews(rule: &Rrule, start: NaiveDate) -> Result<Recurrence, String> {
    let relative = |rule: &Rrule| -> Result<Option<(String, String)>, String> {
        match (rule.by_day.as_slice(), rule.by_set_pos) {
            ([], _) => Ok(None),
            ([(Some(n), d)], None) => Ok(Some((ews_day(*d), index_name(*n)?))),
            (days, Some(pos)) if days.iter().all(|(n, _)| n.is_none()) => {
                let days: Vec<Weekday> = days.iter().map(|(_, d)| *d).collect();
                if days.len() == 1 {
                    Ok(Some((ews_day(days[0]), index_name(pos)?)))
                } else {
                    Ok(Some((day_set(&days)?, index_name(pos)?)))
                }
            }
            _ => Err("BYDAY must be one day with an ordinal, or days with BYSETPOS".into()),
        }
    };
    let pattern = match rule.freq {
        Freq::Daily => RecurrencePattern::Daily {
            interval: rule.interval,
        },
        Freq::Weekly => {
            let mut days: Vec<Weekday> = rule.by_day.iter().map(|(_, d)| *d).collect();
            if days.is_empty() {
                days.push(start.weekday());
            }
            days.sort_by_key(|d| d.num_days_from_monday());
            days.dedup();
            RecurrencePattern::Weekly {
                interval: rule.interval,
                days: days.into_iter().map(ews_day).collect(),
            }
        }
        Freq::Monthly => match (rule.by_month_day, relative(rule)?) {
            (Some(day), _) => RecurrencePattern::AbsoluteMonthly {
                interval: rule.interval,
                day_of_month: day,
            },
            (None, Some((day, index))) => RecurrencePattern::RelativeMonthly {
                interval: rule.interval,
                day,
                index,
            },
            (None, None) => RecurrencePattern::AbsoluteMonthly {
                interval: rule.interval,
                day_of_month: start.day(),
            },
        },
        Freq::Yearly => {
            let month = rule.by_month.unwrap_or(start.month());
            match (rule.by_month_day, relative(rule)?) {
                (Some(day), _) => RecurrencePattern::AbsoluteYearly {
                    day_of_month: day,
                    month,
                },
                (None, Some((day, index))) => {
                    RecurrencePattern::RelativeYearly { day, index, month }
                }
                (None, None) => RecurrencePattern::AbsoluteYearly {
                    day_of_month: start.day(),
                    month,
                },
            }
        }
    };
    let range = match (rule.count, rule.until) {
        (Some(count), _) => RecurrenceRange::Numbered { start, count },
        (None, Some(end)) => RecurrenceRange::EndDate { start, end },
        (None, None) => RecurrenceRange::NoEnd { start },
    };
    Ok(Recurrence { pattern, range })
}

fn weekday_of(name: &str) -> Result<Vec<Weekday>, String> {
    match name {
        "Day" => Ok(DAYS.iter().map(|(d, _, _)| *d).collect()),
        "Weekday" => Ok(WEEKDAYS.to_vec()),
        "WeekendDay" => Ok(WEEKEND.to_vec()),
        other => DAYS
            .iter()
            .find(|(_, _, n)| *n == other)
            .map(|(d, _, _)| vec![*d])
            .ok_or(format!("{other:?} is not a day of the week")),
    }
}

fn index_of(name: &str) -> Result<i8, String> {
    INDEXES
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(i, _)| *i)
        .ok_or(format!("{name:?} is not a week index"))
}

fn relative_by_day(day: &str, index: &str) -> Result<String, String> {
    let days = weekday_of(day)?;
    let n = index_of(index)?;
    Ok(if days.len() == 1 {
        format!("BYDAY={n}{}", ical_day(days[0]))
    } else {
        let list: Vec<&str> = days.iter().map(|d| ical_day(*d)).collect();
        format!("BYDAY={};BYSETPOS={n}", list.join(","))
    })
}

/// The canonical RRULE of an Exchange recurrence.
pub fn to_rrule(rec: &Recurrence) -> Result<String, String> {
    let mut rule = match &rec.pattern {
        RecurrencePattern::Daily { interval } => format!("FREQ=DAILY;INTERVAL={interval}"),
        RecurrencePattern::Weekly { interval, days } => {
            let mut all = Vec::new();
            for d in days {
                all.extend(weekday_of(d)?);
            }
            all.sort_by_key(|d| d.num_days_from_monday());
            all.dedup();
            let list: Vec<&str> = all.iter().map(|d| ical_day(*d)).collect();
            format!("FREQ=WEEKLY;INTERVAL={interval};BYDAY={}", list.join(","))
        }
        RecurrencePattern::AbsoluteMonthly {
            interval,
            day_of_month,
        } => {
            format!("FREQ=MONTHLY;INTERVAL={interval};BYMONTHDAY={day_of_month}")
        }
        RecurrencePattern::RelativeMonthly {
            interval,
            day,
            index,
        } => {
            format!(
                "FREQ=MONTHLY;INTERVAL={interval};{}",
                relative_by_day(day, index)?
            )
        }
        RecurrencePattern::AbsoluteYearly {
            day_of_month,
            month,
        } => {
            format!("FREQ=YEARLY;BYMONTH={month};BYMONTHDAY={day_of_month}")
        }
        RecurrencePattern::RelativeYearly { day, index, month } => {
            format!(
                "FREQ=YEARLY;BYMONTH={month};{}",
                relative_by_day(day, index)?
            )
        }
    };
    match &rec.range {
        RecurrenceRange::NoEnd { .. } => {}
        RecurrenceRange::EndDate { end, .. } => {
            rule.push_str(&format!(";UNTIL={}", end.format("%Y%m%d")))
        }
        RecurrenceRange::Numbered { count, .. } => rule.push_str(&format!(";COUNT={count}")),
    }
    Ok(rule)
}

/// The canonical form of a CRM rule starting on `start`, or why Exchange cannot hold it.
pub fn canonical(text: &str, start: NaiveDate) -> Result<String, String> {
    let rule: Rrule = text.parse()?;
    to_rrule(&to_ews(&rule, start)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(rule: &str, start: (i32, u32, u32), expected: &str) {
        let start = NaiveDate::from_ymd_opt(start.0, start.1, start.2).unwrap();
        let canonical_rule = canonical(rule, start).unwrap_or_else(|e| panic!("{rule}: {e}"));
        assert_eq!(canonical_rule, expected, "{rule}");
        // The canonical form is a fixed point.
        assert_eq!(canonical(&canonical_rule, start).unwrap(), expected);
    }

    #[test]
    fn every_pattern_and_range_round_trips() {
        check(
            "FREQ=DAILY;COUNT=5",
            (2026, 11, 23),
            "FREQ=DAILY;INTERVAL=1;COUNT=5",
        );
        check(
            "FREQ=DAILY;INTERVAL=3;UNTIL=20261231T235959Z",
            (2026, 11, 23),
            "FREQ=DAILY;INTERVAL=3;UNTIL=20261231",
        );
        check(
            "FREQ=WEEKLY",
            (2026, 11, 25),
            "FREQ=WEEKLY;INTERVAL=1;BYDAY=WE",
        );
        check(
            "FREQ=WEEKLY;BYDAY=FR,MO;INTERVAL=2",
            (2026, 11, 23),
            "FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,FR",
        );
        check(
            "FREQ=MONTHLY",
            (2026, 11, 23),
            "FREQ=MONTHLY;INTERVAL=1;BYMONTHDAY=23",
        );
        check(
            "FREQ=MONTHLY;BYMONTHDAY=31;INTERVAL=2",
            (2026, 1, 31),
            "FREQ=MONTHLY;INTERVAL=2;BYMONTHDAY=31",
        );
        check(
            "FREQ=MONTHLY;BYDAY=2TU",
            (2026, 11, 10),
            "FREQ=MONTHLY;INTERVAL=1;BYDAY=2TU",
        );
        check(
            "FREQ=MONTHLY;BYDAY=-1FR;COUNT=12",
            (2026, 11, 27),
            "FREQ=MONTHLY;INTERVAL=1;BYDAY=-1FR;COUNT=12",
        );
        check(
            "FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1",
            (2026, 11, 30),
            "FREQ=MONTHLY;INTERVAL=1;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1",
        );
        check(
            "FREQ=YEARLY",
            (2026, 3, 14),
            "FREQ=YEARLY;BYMONTH=3;BYMONTHDAY=14",
        );
        check(
            "FREQ=YEARLY;BYMONTH=11;BYDAY=4TH",
            (2026, 11, 26),
            "FREQ=YEARLY;BYMONTH=11;BYDAY=4TH",
        );
        check(
            "FREQ=YEARLY;BYMONTH=5;BYDAY=SA,SU;BYSETPOS=1",
            (2026, 5, 2),
            "FREQ=YEARLY;BYMONTH=5;BYDAY=SA,SU;BYSETPOS=1",
        );
    }

    #[test]
    fn rules_exchange_cannot_hold_are_refused_with_the_reason() {
        let start = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        assert_eq!(
            canonical("FREQ=MONTHLY;BYDAY=MO,WE;BYSETPOS=2", start).unwrap_err(),
            "BYDAY with BYSETPOS must be every day, MO-FR or SA,SU"
        );
        assert!(canonical("FREQ=HOURLY", start)
            .unwrap_err()
            .contains("FREQ=HOURLY"));
    }
}
