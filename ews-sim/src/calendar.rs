//! CalendarView: recurring series expanded into occurrences inside a window, as Exchange does.
//!
//! Supported: daily, weekly, absolute and relative monthly, absolute and relative yearly
//! patterns with no-end, end-date and numbered ranges, computed in UTC from the master's start.
//! Exceptions: an occurrence deleted or modified on its own (UpdateItem / DeleteItem with an
//! OccurrenceItemId or an occurrence's ItemId) is kept on the master, listed in its
//! ModifiedOccurrences / DeletedOccurrences, left out of (or changed in) views, and dropped
//! when the series is rebuilt (new Recurrence, Start or End on the master).

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc, Weekday};

use std::collections::BTreeMap;

use crate::store::{decode_id, encode_ck, encode_id, fmt_time, Exception, Item, Mailbox, Prop};
use crate::xml::Node;

/// An occurrence of a series.
#[derive(Debug, Clone)]
pub struct Occurrence {
    /// Its id (an occurrence id pointing back to the master and the instance index).
    pub id: String,
    /// Start.
    pub start: DateTime<Utc>,
    /// End.
    pub end: DateTime<Utc>,
    /// Instance index (1-based).
    pub index: u64,
    /// Start as the pattern has it.
    pub original_start: DateTime<Utc>,
    /// For an exception, the properties set on it (over the master's).
    pub overrides: Option<BTreeMap<String, Node>>,
}

/// One hit of a calendar view: a single item, or an occurrence of a master.
pub struct Found {
    /// Start, for sorting.
    pub start: DateTime<Utc>,
    /// The occurrence, for series.
    pub occurrence: Option<Occurrence>,
}

const MAX_OCCURRENCES: usize = 5000;

fn time(it: &Item, name: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(it.text(name)?.trim())
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

/// The items or occurrences of `it` overlapping [start, end).
pub fn occurrences(m: &Mailbox, it: &Item, start: DateTime<Utc>, end: DateTime<Utc>) -> Vec<Found> {
    let (Some(s), Some(e)) = (time(it, "Start"), time(it, "End")) else {
        return vec![];
    };
    let Some(rec) = it.props.get("Recurrence").map(|p| p.node.clone()) else {
        return if s < end && e > start {
            vec![Found {
                start: s,
                occurrence: None,
            }]
        } else {
            vec![]
        };
    };
    expand(&rec, s)
        .into_iter()
        .enumerate()
        .filter_map(|(i, os)| occurrence_at(m.index, it, i as u64 + 1, os, e - s))
        .filter(|o| o.start < end && o.end > start)
        .map(|o| Found {
            start: o.start,
            occurrence: Some(o),
        })
        .collect()
}

/// Instance `index` of a series starting (by the pattern) at `original`; None when deleted.
fn occurrence_at(
    mbx: u64,
    it: &Item,
    index: u64,
    original: DateTime<Utc>,
    duration: Duration,
) -> Option<Occurrence> {
    let overrides = match it.exceptions.get(&index) {
        Some(Exception::Deleted) => return None,
        Some(Exception::Modified(props)) => Some(props.clone()),
        None => None,
    };
    let at = |name: &str, default: DateTime<Utc>| {
        overrides
            .as_ref()
            .and_then(|p| p.get(name))
            .and_then(|n| DateTime::parse_from_rfc3339(n.text.trim()).ok())
            .map_or(default, |d| d.with_timezone(&Utc))
    };
    Some(Occurrence {
        id: encode_id(b'O', mbx, it.key, index),
        start: at("Start", original),
        end: at("End", original + duration),
        index,
        original_start: original,
        overrides,
    })
}

/// Rewrites a master's ModifiedOccurrences and DeletedOccurrences from its exceptions.
pub fn refresh_exceptions(mbx: u64, it: &mut Item) {
    if it.exceptions.is_empty() {
        // The common case: no expansion of the series needed.
        it.props.remove("ModifiedOccurrences");
        it.props.remove("DeletedOccurrences");
        return;
    }
    let version = it.version;
    let starts = match (
        it.props.get("Recurrence"),
        time(it, "Start"),
        time(it, "End"),
    ) {
        (Some(rec), Some(s), Some(e)) => Some((expand(&rec.node, s), e - s)),
        _ => None,
    };
    let mut modified = Node::leaf("ModifiedOccurrences", "");
    let mut deleted = Node::leaf("DeletedOccurrences", "");
    if let Some((starts, duration)) = starts {
        for (&index, exception) in &it.exceptions {
            let Some(&original) = starts.get(index as usize - 1) else {
                continue;
            };
            match exception {
                Exception::Deleted => {
                    let mut d = Node::leaf("DeletedOccurrence", "");
                    d.children.push(Node::leaf("Start", &fmt_time(original)));
                    deleted.children.push(d);
                }
                Exception::Modified(_) => {
                    let Some(o) = occurrence_at(mbx, it, index, original, duration) else {
                        continue;
                    };
                    let mut id = Node::leaf("ItemId", "");
                    id.attrs = vec![
                        (crate::xml::name("Id"), o.id.clone()),
                        (crate::xml::name("ChangeKey"), encode_ck(version)),
                    ];
                    let mut n = Node::leaf("Occurrence", "");
                    n.children = vec![
                        id,
                        Node::leaf("Start", &fmt_time(o.start)),
                        Node::leaf("End", &fmt_time(o.end)),
                        Node::leaf("OriginalStart", &fmt_time(o.original_start)),
                    ];
                    modified.children.push(n);
                }
            }
        }
    }
    for list in [modified, deleted] {
        if list.children.is_empty() {
            it.props.remove(&list.name);
        } else {
            it.props.insert(Prop {
                node: list,
                version,
            });
        }
    }
}

/// Resolves an item reference that may name an occurrence: an OccurrenceItemId (master id +
/// instance index), a RecurringMasterItemId, an occurrence's own ItemId, or a plain ItemId.
/// Returns the item's key and, for an occurrence, the occurrence.
pub fn resolve_ref(
    m: &Mailbox,
    n: &Node,
    plain: impl Fn(&Mailbox, &Node) -> Result<u64, &'static str>,
) -> Result<(u64, Option<Occurrence>), &'static str> {
    match n.name.as_ref() {
        "OccurrenceItemId" | "RecurringMasterItemId" => resolve_occurrence_id(m, n),
        _ => match decode_id(n.attr("Id").unwrap_or_default()) {
            Some((b'O', mbx, key, index)) => {
                if mbx != m.index {
                    return Err("ErrorAccessDenied");
                }
                occurrence_of(m, key, index as usize)
            }
            _ => plain(m, n).map(|k| (k, None)),
        },
    }
}

/// Resolves an OccurrenceItemId (master id + instance index) or a RecurringMasterItemId.
pub fn resolve_occurrence_id(
    m: &Mailbox,
    n: &Node,
) -> Result<(u64, Option<Occurrence>), &'static str> {
    let (master_attr, index) = match n.name.as_ref() {
        "OccurrenceItemId" => (
            n.attr("RecurringMasterId"),
            n.attr("InstanceIndex")
                .and_then(|i| i.parse::<usize>().ok()),
        ),
        _ => (n.attr("OccurrenceId"), None),
    };
    let (kind, mbx, key, _) =
        decode_id(master_attr.unwrap_or_default()).ok_or("ErrorInvalidIdMalformed")?;
    if mbx != m.index {
        return Err("ErrorAccessDenied");
    }
    if !m.items.contains_key(&key) {
        return Err("ErrorItemNotFound");
    }
    let index = match (kind, index) {
        (b'O', None) => return Ok((key, None)),
        (b'I', Some(i)) => i,
        (b'O', Some(_)) | (_, None) => return Err("ErrorInvalidIdMalformed"),
        _ => return Err("ErrorInvalidIdMalformed"),
    };
    occurrence_of(m, key, index)
}

/// Instance `index` (1-based) of the series `key`.
fn occurrence_of(
    m: &Mailbox,
    key: u64,
    index: usize,
) -> Result<(u64, Option<Occurrence>), &'static str> {
    let it = m.items.get(&key).ok_or("ErrorItemNotFound")?;
    let rec = it
        .props
        .get("Recurrence")
        .ok_or("ErrorCalendarOccurrenceIndexIsOutOfRecurrenceRange")?;
    let (Some(s), Some(e)) = (time(it, "Start"), time(it, "End")) else {
        return Err("ErrorItemNotFound");
    };
    let starts = expand(&rec.node, s);
    let os = *starts
        .get(index.wrapping_sub(1))
        .ok_or("ErrorCalendarOccurrenceIndexIsOutOfRecurrenceRange")?;
    let o = occurrence_at(m.index, it, index as u64, os, e - s)
        .ok_or("ErrorCalendarOccurrenceIsDeletedFromRecurrence")?;
    Ok((key, Some(o)))
}

fn weekday(name: &str) -> Option<Weekday> {
    Some(match name {
        "Sunday" => Weekday::Sun,
        "Monday" => Weekday::Mon,
        "Tuesday" => Weekday::Tue,
        "Wednesday" => Weekday::Wed,
        "Thursday" => Weekday::Thu,
        "Friday" => Weekday::Fri,
        "Saturday" => Weekday::Sat,
        _ => return None,
    })
}

/// Whether `d` is one of the EWS day names in `days` (incl. Day, Weekday, WeekendDay).
fn day_matches(days: &str, d: NaiveDate) -> bool {
    days.split_whitespace().any(|n| match n {
        "Day" => true,
        "Weekday" => !matches!(d.weekday(), Weekday::Sat | Weekday::Sun),
        "WeekendDay" => matches!(d.weekday(), Weekday::Sat | Weekday::Sun),
        other => weekday(other) == Some(d.weekday()),
    })
}

fn month_of(name: &str) -> Option<u32> {
    const M: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    M.iter()
        .position(|m| *m == name.trim())
        .map(|i| i as u32 + 1)
}

fn nth_in_month(year: i32, month: u32, days: &str, index: &str) -> Option<NaiveDate> {
    let first = NaiveDate::from_ymd_opt(year, month, 1)?;
    let matching: Vec<NaiveDate> = first
        .iter_days()
        .take_while(|d| d.month() == month)
        .filter(|d| day_matches(days, *d))
        .collect();
    match index {
        "First" => matching.first().copied(),
        "Second" => matching.get(1).copied(),
        "Third" => matching.get(2).copied(),
        "Fourth" => matching.get(3).copied(),
        "Last" => matching.last().copied(),
        _ => None,
    }
}

fn day_in_month(year: i32, month: u32, day: u32) -> Option<NaiveDate> {
    // A day past the month's end falls on its last day, as Outlook schedules it.
    (1..=day.max(1))
        .rev()
        .find_map(|d| NaiveDate::from_ymd_opt(year, month, d))
}

fn add_months(year: i32, month: u32, k: u32) -> (i32, u32) {
    let total = year * 12 + month as i32 - 1 + k as i32;
    (total.div_euclid(12), total.rem_euclid(12) as u32 + 1)
}

/// Occurrence starts of a Recurrence element, from the master start `s`.
pub fn expand(rec: &Node, s: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let date = |n: &Node, name: &str| {
        n.text_of(name)
            .and_then(|t| NaiveDate::parse_from_str(t.get(..10)?, "%Y-%m-%d").ok())
    };
    let num = |n: &Node, name: &str| n.text_of(name).and_then(|t| t.parse::<u32>().ok());
    let range = rec.children.iter().find(|c| {
        c.name.ends_with("Recurrence") && (c.name.contains("End") || c.name.contains("Numbered"))
    });
    let Some(range) = range else { return vec![] };
    let Some(first_day) = date(range, "StartDate") else {
        return vec![];
    };
    let last_day = if range.name == "EndDateRecurrence" {
        date(range, "EndDate")
    } else {
        None
    };
    let count = if range.name == "NumberedRecurrence" {
        num(range, "NumberOfOccurrences").map(|c| c as usize)
    } else {
        None
    };
    let limit = count.unwrap_or(MAX_OCCURRENCES).min(MAX_OCCURRENCES);
    let Some(pattern) = rec.children.iter().find(|c| !std::ptr::eq(*c, range)) else {
        return vec![];
    };
    let interval = num(pattern, "Interval").unwrap_or(1).max(1);
    let mut days: Vec<NaiveDate> = Vec::new();
    let push = |d: NaiveDate, days: &mut Vec<NaiveDate>| -> bool {
        if last_day.is_some_and(|l| d > l) || days.len() >= limit {
            return false;
        }
        if d >= first_day {
            days.push(d);
        }
        true
    };
    match pattern.name.as_ref() {
        "DailyRecurrence" => {
            let mut d = first_day;
            while push(d, &mut days) {
                d += Duration::days(interval as i64);
            }
        }
        "WeeklyRecurrence" => {
            let dow = pattern
                .text_of("DaysOfWeek")
                .unwrap_or_default()
                .to_string();
            let week_start =
                first_day - Duration::days(first_day.weekday().num_days_from_sunday() as i64);
            let mut w = 0i64;
            'weeks: loop {
                let base = week_start + Duration::weeks(w * interval as i64);
                for i in 0..7 {
                    let d = base + Duration::days(i);
                    if day_matches(&dow, d) && !push(d, &mut days) {
                        break 'weeks;
                    }
                }
                w += 1;
                if w > 100_000 {
                    break;
                }
            }
        }
        "AbsoluteMonthlyRecurrence"
        | "RelativeMonthlyRecurrence"
        | "AbsoluteYearlyRecurrence"
        | "RelativeYearlyRecurrence" => {
            let yearly = pattern.name.contains("Yearly");
            let step = if yearly { 12 } else { interval };
            let month = if yearly {
                pattern
                    .text_of("Month")
                    .and_then(month_of)
                    .unwrap_or(first_day.month())
            } else {
                first_day.month()
            };
            let mut k = 0;
            loop {
                let (y, mo) = add_months(first_day.year(), month, k * step);
                let d = if pattern.name.starts_with("Absolute") {
                    day_in_month(y, mo, num(pattern, "DayOfMonth").unwrap_or(1))
                } else {
                    nth_in_month(
                        y,
                        mo,
                        pattern.text_of("DaysOfWeek").unwrap_or("Day"),
                        pattern.text_of("DayOfWeekIndex").unwrap_or("First"),
                    )
                };
                if let Some(d) = d {
                    if !push(d, &mut days) {
                        break;
                    }
                }
                k += 1;
                if k > 12_000 {
                    break;
                }
            }
        }
        _ => {}
    }
    days.into_iter()
        .map(|d| d.and_time(s.time()).and_utc())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::parse;

    fn dates(xml: &str) -> Vec<String> {
        let rec = parse(xml.as_bytes()).unwrap();
        let s = DateTime::parse_from_rfc3339("2026-01-05T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        expand(&rec, s)
            .into_iter()
            .map(|d| d.format("%Y-%m-%d").to_string())
            .collect()
    }

    #[test]
    fn patterns_expand() {
        let cases: &[(&str, &[&str])] = &[
            ("<Recurrence><DailyRecurrence><Interval>2</Interval></DailyRecurrence><NumberedRecurrence><StartDate>2026-01-05</StartDate><NumberOfOccurrences>3</NumberOfOccurrences></NumberedRecurrence></Recurrence>", &["2026-01-05", "2026-01-07", "2026-01-09"]),
            ("<Recurrence><WeeklyRecurrence><Interval>1</Interval><DaysOfWeek>Monday Wednesday</DaysOfWeek></WeeklyRecurrence><EndDateRecurrence><StartDate>2026-01-05</StartDate><EndDate>2026-01-14</EndDate></EndDateRecurrence></Recurrence>", &["2026-01-05", "2026-01-07", "2026-01-12", "2026-01-14"]),
            ("<Recurrence><AbsoluteMonthlyRecurrence><Interval>1</Interval><DayOfMonth>31</DayOfMonth></AbsoluteMonthlyRecurrence><NumberedRecurrence><StartDate>2026-01-05</StartDate><NumberOfOccurrences>3</NumberOfOccurrences></NumberedRecurrence></Recurrence>", &["2026-01-31", "2026-02-28", "2026-03-31"]),
            ("<Recurrence><RelativeMonthlyRecurrence><Interval>1</Interval><DaysOfWeek>Tuesday</DaysOfWeek><DayOfWeekIndex>Second</DayOfWeekIndex></RelativeMonthlyRecurrence><NumberedRecurrence><StartDate>2026-01-01</StartDate><NumberOfOccurrences>2</NumberOfOccurrences></NumberedRecurrence></Recurrence>", &["2026-01-13", "2026-02-10"]),
            ("<Recurrence><AbsoluteYearlyRecurrence><DayOfMonth>24</DayOfMonth><Month>December</Month></AbsoluteYearlyRecurrence><NumberedRecurrence><StartDate>2026-01-01</StartDate><NumberOfOccurrences>2</NumberOfOccurrences></NumberedRecurrence></Recurrence>", &["2026-12-24", "2027-12-24"]),
            ("<Recurrence><RelativeYearlyRecurrence><DaysOfWeek>Thursday</DaysOfWeek><DayOfWeekIndex>Last</DayOfWeekIndex><Month>November</Month></RelativeYearlyRecurrence><NumberedRecurrence><StartDate>2026-01-01</StartDate><NumberOfOccurrences>2</NumberOfOccurrences></NumberedRecurrence></Recurrence>", &["2026-11-26", "2027-11-25"]),
        ];
        for (xml, expected) in cases {
            assert_eq!(dates(xml), *expected, "{xml}");
        }
    }
}
