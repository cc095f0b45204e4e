//! RFC 5545 recurrence rules, the subset Exchange can hold: FREQ DAILY, WEEKLY, MONTHLY or
//! YEARLY with INTERVAL, BYDAY (with an ordinal for monthly/yearly), BYMONTHDAY, BYMONTH,
//! BYSETPOS, and COUNT or UNTIL. Anything else is refused with the reason, so the row goes to
//! the failure log instead of being synced wrongly.

use chrono::{NaiveDate, Weekday};

/// How often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freq {
    /// Every INTERVAL days.
    Daily,
    /// Every INTERVAL weeks.
    Weekly,
    /// Every INTERVAL months.
    Monthly,
    /// Every year.
    Yearly,
}

/// A parsed RRULE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rrule {
    /// Frequency.
    pub freq: Freq,
    /// Interval (1 when absent).
    pub interval: u32,
    /// Weekdays, with an ordinal (1..=4 or -1 for last) for monthly/yearly rules.
    pub by_day: Vec<(Option<i8>, Weekday)>,
    /// Day of the month.
    pub by_month_day: Option<u32>,
    /// Month, 1..=12.
    pub by_month: Option<u32>,
    /// BYSETPOS (with BYDAY sets like MO,TU,WE,TH,FR): 1..=4 or -1.
    pub by_set_pos: Option<i8>,
    /// Number of occurrences.
    pub count: Option<u32>,
    /// Last day.
    pub until: Option<NaiveDate>,
}

fn weekday(s: &str) -> Option<Weekday> {
    Some(match s {
        "MO" => Weekday::Mon,
        "TU" => Weekday::Tue,
        "WE" => Weekday::Wed,
        "TH" => Weekday::Thu,
        "FR" => Weekday::Fri,
        "SA" => Weekday::Sat,
        "SU" => Weekday::Sun,
        _ => return None,
    })
}

fn ordinal(n: i8) -> bool {
    matches!(n, 1..=4 | -1)
}

impl std::str::FromStr for Rrule {
    type Err = String;

    /// Parses `FREQ=WEEKLY;BYDAY=MO,WE;COUNT=10` (an optional `RRULE:` prefix is accepted).
    fn from_str(text: &str) -> Result<Rrule, String> {
        let body = text.trim().strip_prefix("RRULE:").unwrap_or(text.trim());
        let mut freq = None;
        let mut r = Rrule {
            freq: Freq::Daily,
            interval: 1,
            by_day: vec![],
            by_month_day: None,
            by_month: None,
            by_set_pos: None,
            count: None,
            until: None,
        };
        for part in body.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not NAME=VALUE"))?;
            let num = |v: &str| {
                v.parse::<i64>()
                    .map_err(|_| format!("{k}={v} is not a number"))
            };
            match k {
                "FREQ" => {
                    freq = Some(match v {
                        "DAILY" => Freq::Daily,
                        "WEEKLY" => Freq::Weekly,
                        "MONTHLY" => Freq::Monthly,
                        "YEARLY" => Freq::Yearly,
                        other => {
                            return Err(format!(
                                "FREQ={other} is not supported (DAILY, WEEKLY, MONTHLY, YEARLY)"
                            ))
                        }
                    })
                }
                "INTERVAL" => {
                    r.interval = u32::try_from(num(v)?)
                        .ok()
                        .filter(|i| (1..=999).contains(i))
                        .ok_or(format!("INTERVAL={v} is out of range 1..999"))?
                }
                "COUNT" => {
                    r.count = Some(
                        u32::try_from(num(v)?)
                            .ok()
                            .filter(|c| (1..=999).contains(c))
                            .ok_or(format!("COUNT={v} is out of range 1..999"))?,
                    )
                }
                "UNTIL" => {
                    let d = v
                        .get(..8)
                        .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok())
                        .ok_or(format!(
                            "UNTIL={v} is not a date (YYYYMMDD or YYYYMMDDTHHMMSSZ)"
                        ))?;
                    r.until = Some(d);
                }
                "BYDAY" => {
                    for d in v.split(',') {
                        let split = d.len().saturating_sub(2);
                        let (n, day) = d.split_at(split);
                        let wd =
                            weekday(day).ok_or(format!("BYDAY={v}: {d:?} is not a weekday"))?;
                        let n = if n.is_empty() {
                            None
                        } else {
                            Some(
                                n.trim_start_matches('+')
                                    .parse::<i8>()
                                    .ok()
                                    .filter(|n| ordinal(*n))
                                    .ok_or(format!(
                                        "BYDAY={v}: ordinal {n} is not supported (1 to 4, or -1)"
                                    ))?,
                            )
                        };
                        r.by_day.push((n, wd));
                    }
                }
                "BYMONTHDAY" => {
                    r.by_month_day = Some(
                        u32::try_from(num(v)?)
                            .ok()
                            .filter(|d| (1..=31).contains(d))
                            .ok_or(format!("BYMONTHDAY={v} is not supported (1 to 31)"))?,
                    )
                }
                "BYMONTH" => {
                    r.by_month = Some(
                        u32::try_from(num(v)?)
                            .ok()
                            .filter(|m| (1..=12).contains(m))
                            .ok_or(format!("BYMONTH={v} is not a month"))?,
                    )
                }
                "BYSETPOS" => {
                    r.by_set_pos = Some(
                        i8::try_from(num(v)?)
                            .ok()
                            .filter(|p| ordinal(*p))
                            .ok_or(format!("BYSETPOS={v} is not supported (1 to 4, or -1)"))?,
                    )
                }
                "WKST" => {}
                other => return Err(format!("{other} is not supported by Exchange recurrences")),
            }
        }
        r.freq = freq.ok_or("FREQ is missing")?;
        if r.count.is_some() && r.until.is_some() {
            return Err("COUNT and UNTIL exclude each other".into());
        }
        match r.freq {
            Freq::Daily
                if !r.by_day.is_empty() || r.by_month_day.is_some() || r.by_month.is_some() =>
            {
                return Err(
                    "a DAILY rule takes no BYDAY, BYMONTHDAY or BYMONTH (use WEEKLY for weekdays)"
                        .into(),
                )
            }
            Freq::Weekly if r.by_day.iter().any(|(n, _)| n.is_some()) => {
                return Err("a WEEKLY rule takes BYDAY without ordinals".into())
            }
            Freq::Monthly | Freq::Yearly => {
                let relative = !r.by_day.is_empty();
                if relative && r.by_month_day.is_some() {
                    return Err("BYDAY and BYMONTHDAY together are not supported".into());
                }
                if relative && r.by_day.iter().all(|(n, _)| n.is_none()) && r.by_set_pos.is_none() {
                    return Err(
                        "a MONTHLY or YEARLY BYDAY needs an ordinal (2TU) or BYSETPOS".into(),
                    );
                }
                if r.freq == Freq::Yearly && r.interval != 1 {
                    return Err("Exchange yearly recurrences have no interval".into());
                }
            }
            _ => {}
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_and_refused_rules() {
        let ok: &[&str] = &[
            "FREQ=DAILY;INTERVAL=2;COUNT=10",
            "RRULE:FREQ=WEEKLY;BYDAY=MO,WE,FR;UNTIL=20261231T235959Z",
            "FREQ=MONTHLY;BYMONTHDAY=15",
            "FREQ=MONTHLY;INTERVAL=2;BYDAY=2TU",
            "FREQ=MONTHLY;BYDAY=-1FR",
            "FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1",
            "FREQ=YEARLY;BYMONTH=12;BYMONTHDAY=24",
            "FREQ=YEARLY;BYMONTH=11;BYDAY=4TH",
        ];
        for r in ok {
            assert!(r.parse::<Rrule>().is_ok(), "{r}: {:?}", r.parse::<Rrule>());
        }
        let refused: &[(&str, &str)] = &[
            ("", "FREQ is missing"),
            (
                "FREQ=HOURLY",
                "FREQ=HOURLY is not supported (DAILY, WEEKLY, MONTHLY, YEARLY)",
            ),
            (
                "FREQ=DAILY;COUNT=3;UNTIL=20260101",
                "COUNT and UNTIL exclude each other",
            ),
            ("FREQ=WEEKLY;BYDAY=XX", "BYDAY=XX: \"XX\" is not a weekday"),
            (
                "FREQ=MONTHLY;BYDAY=5MO",
                "BYDAY=5MO: ordinal 5 is not supported (1 to 4, or -1)",
            ),
            (
                "FREQ=MONTHLY;BYDAY=MO",
                "a MONTHLY or YEARLY BYDAY needs an ordinal (2TU) or BYSETPOS",
            ),
            (
                "FREQ=DAILY;BYHOUR=9",
                "BYHOUR is not supported by Exchange recurrences",
            ),
            ("FREQ=DAILY;INTERVAL=0", "INTERVAL=0 is out of range 1..999"),
            (
                "FREQ=YEARLY;INTERVAL=2;BYMONTH=1;BYMONTHDAY=1",
                "Exchange yearly recurrences have no interval",
            ),
            (
                "FREQ=WEEKLY;UNTIL=tomorrow",
                "UNTIL=tomorrow is not a date (YYYYMMDD or YYYYMMDDTHHMMSSZ)",
            ),
            ("garbage", "\"garbage\" is not NAME=VALUE"),
        ];
        for (r, why) in refused {
            assert_eq!(r.parse::<Rrule>().unwrap_err(), *why, "{r}");
        }
    }
}
