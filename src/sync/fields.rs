//! The field model both sides are compared in: each synced item is a map from field name to
//! canonical text (or none). The CRM row, the Exchange item and the last synced base (kept in
//! the state store as JSON) all become such a map, so the three-way merge is one function for
//! every area, and docs/mapping.md is this file in prose.
//!
//! Canonical forms: timestamps RFC 3339 UTC to the second (`2026-11-23T09:00:00Z`), dates
//! `YYYY-MM-DD`, booleans `true`/`false`, integers in decimal, categories a sorted JSON array,
//! recurrences the canonical RRULE ([`super::recurrence`]), time zones the canonical IANA name.
//! Empty text counts as none (Exchange does not keep empty strings).

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, SecondsFormat, TimeZone, Utc};
use ews::items::{
    Body, CalendarItem, CalendarItemKind, Contact, FreeBusy, Importance, Item, PhysicalAddress,
    Task, TaskStatus,
};
use ews::types::{ExtendedFieldUri, ExtendedProperty, PropertyPath};

use super::{recurrence, timezones};
use crate::config::Area;
use crate::db::rows::{AppointmentRow, ContactRow, CrmRow, TaskRow};

/// Field name to canonical value.
pub type Fields = BTreeMap<String, Option<String>>;

/// The property set of mailsync's extended properties.
pub const PROPERTY_SET: &str = "b7c3b6b4-8a52-4bb6-9d0e-6d61696c7379";
/// The extended property that carries the CRM id (`<table>:<id>`) on every item mailsync writes.
pub const CRM_ID_PROPERTY: &str = "MailsyncCrmId";

/// The extended property's URI.
pub fn crm_id_uri() -> ExtendedFieldUri {
    ExtendedFieldUri::string(PROPERTY_SET, CRM_ID_PROPERTY)
}

/// The value stamped on an item for a CRM row.
pub fn crm_stamp(table: &str, id: i64) -> String {
    format!("{table}:{id}")
}

/// The CRM id stamped on an item, if any and if it is for `table`.
pub fn stamped_id(item: &Item, table: &str) -> Option<i64> {
    let extended = match item {
        Item::Contact(c) => &c.extended,
        Item::CalendarItem(c) => &c.extended,
        Item::Task(t) => &t.extended,
        Item::Message(m) => &m.extended,
        _ => return None,
    };
    let uri = crm_id_uri();
    extended
        .iter()
        .find(|e| {
            e.uri.property_name == uri.property_name
                && e.uri
                    .property_set_id
                    .eq_ignore_ascii_case(&uri.property_set_id)
        })
        .and_then(|e| e.value.strip_prefix(table)?.strip_prefix(':')?.parse().ok())
}

/// The fields of an area, in the order docs/mapping.md lists them.
pub fn names(area: Area) -> &'static [&'static str] {
    match area {
        Area::Contacts => &[
            "given_name",
            "surname",
            "company",
            "job_title",
            "email1",
            "email2",
            "email3",
            "business_phone",
            "mobile_phone",
            "home_phone",
            "street",
            "postal_code",
            "city",
            "country",
            "notes",
            "categories",
        ],
        Area::Calendar => &[
            "subject",
            "location",
            "body",
            "start",
            "end",
            "all_day",
            "time_zone",
            "recurrence",
            "reminder_minutes",
            "show_as",
            "categories",
        ],
        Area::Tasks => &[
            "subject",
            "body",
            "start_date",
            "due_date",
            "status",
            "percent_complete",
            "importance",
            "completed_at",
            "categories",
        ],
        Area::Mail => &[],
    }
}

/// The CRM table of an area.
pub fn table(area: Area) -> &'static str {
    match area {
        Area::Contacts => "crm_contacts",
        Area::Calendar => "crm_appointments",
        Area::Tasks => "crm_tasks",
        Area::Mail => "crm_mails",
    }
}

fn text(v: &Option<String>) -> Option<String> {
    v.as_ref()
        .map(|s| s.trim_end().to_owned())
        .filter(|s| !s.is_empty())
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn date(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

fn categories(c: &[String]) -> Option<String> {
    let mut sorted: Vec<&str> = c
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.is_empty() {
        None
    } else {
        Some(serde_json::to_string(&sorted).unwrap_or_default())
    }
}

fn parse_categories(v: Option<&String>) -> Vec<String> {
    v.and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default()
}

fn put(f: &mut Fields, name: &str, v: Option<String>) {
    f.insert(name.to_owned(), v);
}

/// A CRM row's fields, or why Exchange cannot hold it.
pub fn from_row(row: &CrmRow) -> Result<Fields, String> {
    let mut f = Fields::new();
    match row {
        CrmRow::Contact(c) => {
            put(&mut f, "given_name", text(&c.given_name));
            put(&mut f, "surname", text(&c.surname));
            put(&mut f, "company", text(&c.company));
            put(&mut f, "job_title", text(&c.job_title));
            for (i, e) in c.email.iter().enumerate() {
                put(&mut f, &format!("email{}", i + 1), text(e));
            }
            for (name, p) in ["business_phone", "mobile_phone", "home_phone"]
                .iter()
                .zip(&c.phones)
            {
                put(&mut f, name, text(p));
            }
            for (name, a) in ["street", "postal_code", "city", "country"]
                .iter()
                .zip(&c.address)
            {
                put(&mut f, name, text(a));
            }
            put(&mut f, "notes", text(&c.notes));
            put(&mut f, "categories", categories(&c.categories));
        }
        CrmRow::Appointment(a) => {
            let zone = timezones::canonical(&a.time_zone).ok_or_else(|| {
                format!(
                    "time_zone: {:?} has no Exchange (Windows) equivalent",
                    a.time_zone
                )
            })?;
            let tz: chrono_tz::Tz = zone
                .parse()
                .map_err(|_| format!("time_zone: {zone:?} is unknown"))?;
            put(&mut f, "subject", text(&a.subject));
            put(&mut f, "location", text(&a.location));
            put(&mut f, "body", text(&a.body));
            put(&mut f, "start", Some(time(a.starts_at)));
            put(&mut f, "end", Some(time(a.ends_at)));
            put(&mut f, "all_day", Some(a.all_day.to_string()));
            put(&mut f, "time_zone", Some(zone.to_owned()));
            let recurrence = match &a.recurrence {
                Some(rule) if !rule.trim().is_empty() => {
                    let start = a.starts_at.with_timezone(&tz).date_naive();
                    Some(
                        recurrence::canonical(rule, start)
                            .map_err(|e| format!("recurrence: {e}"))?,
                    )
                }
                _ => None,
            };
            put(&mut f, "recurrence", recurrence);
            put(
                &mut f,
                "reminder_minutes",
                a.reminder_minutes.map(|m| m.to_string()),
            );
            put(&mut f, "show_as", Some(a.show_as.clone()));
            put(&mut f, "categories", categories(&a.categories));
        }
        CrmRow::Task(t) => {
            put(&mut f, "subject", text(&t.subject));
            put(&mut f, "body", text(&t.body));
            put(&mut f, "start_date", t.start_date.map(date));
            put(&mut f, "due_date", t.due_date.map(date));
            put(&mut f, "status", Some(t.status.clone()));
            put(
                &mut f,
                "percent_complete",
                Some(t.percent_complete.to_string()),
            );
            put(&mut f, "importance", Some(t.importance.clone()));
            put(&mut f, "completed_at", t.completed_at.map(time));
            put(&mut f, "categories", categories(&t.categories));
        }
    }
    Ok(f)
}

fn show_as(fb: FreeBusy) -> &'static str {
    match fb {
        FreeBusy::Free => "free",
        FreeBusy::Tentative => "tentative",
        FreeBusy::Busy | FreeBusy::NoData => "busy",
        FreeBusy::Oof => "oof",
        FreeBusy::WorkingElsewhere => "working_elsewhere",
    }
}

fn free_busy(s: Option<&str>) -> FreeBusy {
    match s {
        Some("free") => FreeBusy::Free,
        Some("tentative") => FreeBusy::Tentative,
        Some("oof") => FreeBusy::Oof,
        Some("working_elsewhere") => FreeBusy::WorkingElsewhere,
        _ => FreeBusy::Busy,
    }
}

fn status_name(s: TaskStatus) -> &'static str {
    match s {
        TaskStatus::NotStarted => "not_started",
        TaskStatus::InProgress => "in_progress",
        TaskStatus::Completed => "completed",
        TaskStatus::WaitingOnOthers => "waiting",
        TaskStatus::Deferred => "deferred",
    }
}

fn task_status(s: Option<&str>) -> TaskStatus {
    match s {
        Some("in_progress") => TaskStatus::InProgress,
        Some("completed") => TaskStatus::Completed,
        Some("waiting") => TaskStatus::WaitingOnOthers,
        Some("deferred") => TaskStatus::Deferred,
        _ => TaskStatus::NotStarted,
    }
}

fn importance_name(i: Importance) -> &'static str {
    match i {
        Importance::Low => "low",
        Importance::Normal => "normal",
        Importance::High => "high",
    }
}

fn importance(s: Option<&str>) -> Importance {
    match s {
        Some("low") => Importance::Low,
        Some("high") => Importance::High,
        _ => Importance::Normal,
    }
}

fn body_text(b: &Option<Body>) -> Option<String> {
    b.as_ref().and_then(|b| text(&Some(b.content.clone())))
}

/// An Exchange item's fields, or why it cannot be mapped (an occurrence, an unknown zone …).
pub fn from_item(item: &Item) -> Result<Fields, String> {
    let mut f = Fields::new();
    match item {
        Item::Contact(c) => {
            put(&mut f, "given_name", text(&c.given_name));
            put(&mut f, "surname", text(&c.surname));
            put(&mut f, "company", text(&c.company_name));
            put(&mut f, "job_title", text(&c.job_title));
            for (i, e) in c.email.iter().enumerate() {
                put(&mut f, &format!("email{}", i + 1), text(e));
            }
            for (name, p) in ["business_phone", "mobile_phone", "home_phone"]
                .iter()
                .zip(&c.phones)
            {
                put(&mut f, name, text(p));
            }
            let a = &c.addresses[0];
            put(&mut f, "street", text(&a.street));
            put(&mut f, "postal_code", text(&a.postal_code));
            put(&mut f, "city", text(&a.city));
            put(&mut f, "country", text(&a.country));
            put(&mut f, "notes", text(&c.notes));
            put(&mut f, "categories", categories(&c.categories));
        }
        Item::CalendarItem(c) => {
            if matches!(
                c.kind,
                CalendarItemKind::Occurrence | CalendarItemKind::Exception
            ) {
                return Err("an occurrence of a series syncs with its master".into());
            }
            let (Some(start), Some(end)) = (c.start, c.end) else {
                return Err("an appointment without start or end".into());
            };
            let zone = match &c.start_time_zone {
                None => "UTC",
                Some(w) => timezones::iana(w).unwrap_or_else(|| unmapped_zone(w, c)),
            };
            put(&mut f, "subject", text(&c.subject));
            put(&mut f, "location", text(&c.location));
            put(&mut f, "body", body_text(&c.body));
            put(&mut f, "start", Some(time(start)));
            put(&mut f, "end", Some(time(end)));
            put(&mut f, "all_day", Some(c.is_all_day.to_string()));
            put(&mut f, "time_zone", Some(zone.to_owned()));
            let rule = match &c.recurrence {
                Some(r) => Some(recurrence::to_rrule(r).map_err(|e| format!("recurrence: {e}"))?),
                None => None,
            };
            put(&mut f, "recurrence", rule);
            put(
                &mut f,
                "reminder_minutes",
                c.reminder_minutes.map(|m| m.to_string()),
            );
            put(&mut f, "show_as", Some(show_as(c.free_busy).to_owned()));
            put(&mut f, "categories", categories(&c.categories));
        }
        Item::Task(t) => {
            put(&mut f, "subject", text(&t.subject));
            put(&mut f, "body", body_text(&t.body));
            put(
                &mut f,
                "start_date",
                t.start_date.map(|d| date(d.date_naive())),
            );
            put(&mut f, "due_date", t.due_date.map(|d| date(d.date_naive())));
            put(&mut f, "status", Some(status_name(t.status).to_owned()));
            put(
                &mut f,
                "percent_complete",
                Some(
                    (t.percent_complete.round() as i64)
                        .clamp(0, 100)
                        .to_string(),
                ),
            );
            put(
                &mut f,
                "importance",
                Some(importance_name(t.importance).to_owned()),
            );
            put(&mut f, "completed_at", t.complete_date.map(time));
            put(&mut f, "categories", categories(&t.categories));
        }
        _ => return Err("not a contact, appointment or task".into()),
    }
    Ok(f)
}

/// An Exchange zone CLDR does not map (a custom zone from an iCalendar import, a zone
/// newer than our table): the appointment is imported all the same, as UTC. Its start and
/// end are exact instants either way (Exchange sends them in UTC); only the zone's name is
/// lost to the CRM. The Exchange item keeps its zone: it is rewritten only when the CRM
/// changes `time_zone`. Logged each time the item is read, so an operator can extend the
/// table (tools/windows_zones.py) or fix the item.
fn unmapped_zone(windows: &str, item: &CalendarItem) -> &'static str {
    tracing::warn!(
        windows_zone = windows,
        subject = item.subject.as_deref().unwrap_or_default(),
        "the appointment's time zone has no IANA equivalent; imported as UTC, the Exchange item keeps its zone"
    );
    "UTC"
}

fn get<'a>(f: &'a Fields, name: &str) -> Option<&'a String> {
    f.get(name).and_then(Option::as_ref)
}

fn parse_time(f: &Fields, name: &str) -> Result<Option<DateTime<Utc>>, String> {
    get(f, name)
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| format!("{name}: {e}"))
        })
        .transpose()
}

fn parse_date(f: &Fields, name: &str) -> Result<Option<NaiveDate>, String> {
    get(f, name)
        .map(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|e| format!("{name}: {e}")))
        .transpose()
}

fn display_name(f: &Fields) -> Option<String> {
    let names: Vec<&str> = ["given_name", "surname"]
        .iter()
        .filter_map(|n| get(f, n).map(String::as_str))
        .collect();
    if names.is_empty() {
        get(f, "company").or_else(|| get(f, "email1")).cloned()
    } else {
        Some(names.join(" "))
    }
}

/// The Exchange item for `fields`, stamped with the CRM id.
pub fn to_item(area: Area, f: &Fields, stamp: &str) -> Result<Item, String> {
    let extended = vec![ExtendedProperty {
        uri: crm_id_uri(),
        value: stamp.to_owned(),
    }];
    Ok(match area {
        Area::Contacts => {
            let mut c = Contact {
                display_name: display_name(f),
                given_name: get(f, "given_name").cloned(),
                surname: get(f, "surname").cloned(),
                company_name: get(f, "company").cloned(),
                job_title: get(f, "job_title").cloned(),
                notes: get(f, "notes").cloned(),
                categories: parse_categories(get(f, "categories")),
                extended,
                ..Contact::default()
            };
            for i in 0..3 {
                c.email[i] = get(f, &format!("email{}", i + 1)).cloned();
            }
            for (i, name) in ["business_phone", "mobile_phone", "home_phone"]
                .iter()
                .enumerate()
            {
                c.phones[i] = get(f, name).cloned();
            }
            c.addresses[0] = PhysicalAddress {
                street: get(f, "street").cloned(),
                postal_code: get(f, "postal_code").cloned(),
                city: get(f, "city").cloned(),
                country: get(f, "country").cloned(),
                state: None,
            };
            Item::Contact(c)
        }
        Area::Calendar => {
            let zone = get(f, "time_zone").map_or("UTC", String::as_str);
            let windows = timezones::windows_id(zone)
                .ok_or_else(|| format!("time_zone: {zone:?} has no Exchange equivalent"))?;
            let tz: chrono_tz::Tz = zone
                .parse()
                .map_err(|_| format!("time_zone: {zone:?} is unknown"))?;
            let start = parse_time(f, "start")?.ok_or("start is missing")?;
            let end = parse_time(f, "end")?.ok_or("end is missing")?;
            let recurrence = match get(f, "recurrence") {
                Some(rule) => {
                    let parsed = rule.parse().map_err(|e| format!("recurrence: {e}"))?;
                    Some(recurrence::to_ews(
                        &parsed,
                        tz.from_utc_datetime(&start.naive_utc()).date_naive(),
                    )?)
                }
                None => None,
            };
            Item::CalendarItem(CalendarItem {
                subject: get(f, "subject").cloned(),
                body: get(f, "body").map(|b| Body::text(b.clone())),
                start: Some(start),
                end: Some(end),
                is_all_day: get(f, "all_day").is_some_and(|v| v == "true"),
                location: get(f, "location").cloned(),
                reminder_minutes: get(f, "reminder_minutes").and_then(|m| m.parse().ok()),
                free_busy: free_busy(get(f, "show_as").map(String::as_str)),
                categories: parse_categories(get(f, "categories")),
                recurrence,
                start_time_zone: Some(windows.to_owned()),
                end_time_zone: Some(windows.to_owned()),
                extended,
                ..CalendarItem::default()
            })
        }
        Area::Tasks => {
            let midnight =
                |d: Option<NaiveDate>| d.and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| t.and_utc());
            Item::Task(Task {
                subject: get(f, "subject").cloned(),
                body: get(f, "body").map(|b| Body::text(b.clone())),
                start_date: midnight(parse_date(f, "start_date")?),
                due_date: midnight(parse_date(f, "due_date")?),
                status: task_status(get(f, "status").map(String::as_str)),
                percent_complete: get(f, "percent_complete")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0.0),
                importance: importance(get(f, "importance").map(String::as_str)),
                complete_date: parse_time(f, "completed_at")?,
                categories: parse_categories(get(f, "categories")),
                extended,
                ..Task::default()
            })
        }
        Area::Mail => return Err("mail is not a field-mapped area".into()),
    })
}

/// The property keys (see `ews::types::PropertyPath::key`) a field is written through.
pub fn property_keys(area: Area, field: &str) -> Vec<String> {
    let k = |s: &str| s.to_owned();
    match (area, field) {
        (Area::Contacts, "given_name") => vec![k("contacts:GivenName"), k("contacts:DisplayName")],
        (Area::Contacts, "surname") => vec![k("contacts:Surname"), k("contacts:DisplayName")],
        (Area::Contacts, "company") => vec![k("contacts:CompanyName"), k("contacts:DisplayName")],
        (Area::Contacts, "job_title") => vec![k("contacts:JobTitle")],
        (Area::Contacts, f) if f.starts_with("email") => {
            vec![
                format!("contacts:EmailAddress[EmailAddress{}]", &f[5..]),
                k("contacts:DisplayName"),
            ]
        }
        (Area::Contacts, "business_phone") => vec![k("contacts:PhoneNumber[BusinessPhone]")],
        (Area::Contacts, "mobile_phone") => vec![k("contacts:PhoneNumber[MobilePhone]")],
        (Area::Contacts, "home_phone") => vec![k("contacts:PhoneNumber[HomePhone]")],
        (Area::Contacts, "street") => vec![k("contacts:PhysicalAddress:Street[Business]")],
        (Area::Contacts, "postal_code") => vec![k("contacts:PhysicalAddress:PostalCode[Business]")],
        (Area::Contacts, "city") => vec![k("contacts:PhysicalAddress:City[Business]")],
        (Area::Contacts, "country") => {
            vec![k("contacts:PhysicalAddress:CountryOrRegion[Business]")]
        }
        (Area::Contacts, "notes") | (_, "body") => vec![k("item:Body")],
        (_, "categories") => vec![k("item:Categories")],
        (_, "subject") => vec![k("item:Subject")],
        (Area::Calendar, "location") => vec![k("calendar:Location")],
        (Area::Calendar, "start") => vec![k("calendar:Start")],
        (Area::Calendar, "end") => vec![k("calendar:End")],
        (Area::Calendar, "all_day") => vec![k("calendar:IsAllDayEvent")],
        (Area::Calendar, "time_zone") => {
            vec![k("calendar:StartTimeZone"), k("calendar:EndTimeZone")]
        }
        (Area::Calendar, "recurrence") => vec![k("calendar:Recurrence")],
        (Area::Calendar, "reminder_minutes") => {
            vec![
                k("item:ReminderMinutesBeforeStart"),
                k("item:ReminderIsSet"),
            ]
        }
        (Area::Calendar, "show_as") => vec![k("calendar:LegacyFreeBusyStatus")],
        (Area::Tasks, "start_date") => vec![k("task:StartDate")],
        (Area::Tasks, "due_date") => vec![k("task:DueDate")],
        (Area::Tasks, "status") => vec![k("task:Status")],
        (Area::Tasks, "percent_complete") => vec![k("task:PercentComplete")],
        (Area::Tasks, "importance") => vec![k("item:Importance")],
        (Area::Tasks, "completed_at") => vec![k("task:CompleteDate")],
        _ => vec![],
    }
}

/// The CRM row for `fields`: `id` 0 inserts; owner and tenant come from the routing.
pub fn to_row(
    area: Area,
    f: &Fields,
    id: i64,
    tenant_id: i64,
    owner_id: Option<i64>,
    version: i64,
) -> Result<CrmRow, String> {
    let s = |name: &str| get(f, name).cloned();
    Ok(match area {
        Area::Contacts => CrmRow::Contact(ContactRow {
            id,
            tenant_id,
            owner_id,
            given_name: s("given_name"),
            surname: s("surname"),
            company: s("company"),
            job_title: s("job_title"),
            email: [s("email1"), s("email2"), s("email3")],
            phones: [s("business_phone"), s("mobile_phone"), s("home_phone")],
            address: [s("street"), s("postal_code"), s("city"), s("country")],
            notes: s("notes"),
            categories: parse_categories(get(f, "categories")),
            ews_id: None,
            version,
        }),
        Area::Calendar => CrmRow::Appointment(AppointmentRow {
            id,
            tenant_id,
            owner_id: owner_id.ok_or("an appointment needs an owner")?,
            subject: s("subject"),
            location: s("location"),
            body: s("body"),
            starts_at: parse_time(f, "start")?.ok_or("start is missing")?,
            ends_at: parse_time(f, "end")?.ok_or("end is missing")?,
            all_day: get(f, "all_day").is_some_and(|v| v == "true"),
            time_zone: s("time_zone").unwrap_or_else(|| "UTC".into()),
            recurrence: s("recurrence"),
            reminder_minutes: get(f, "reminder_minutes").and_then(|m| m.parse().ok()),
            show_as: s("show_as").unwrap_or_else(|| "busy".into()),
            categories: parse_categories(get(f, "categories")),
            uid: None,
            ews_id: None,
            version,
        }),
        Area::Tasks => CrmRow::Task(TaskRow {
            id,
            tenant_id,
            owner_id: owner_id.ok_or("a task needs an owner")?,
            subject: s("subject"),
            body: s("body"),
            start_date: parse_date(f, "start_date")?,
            due_date: parse_date(f, "due_date")?,
            status: s("status").unwrap_or_else(|| "not_started".into()),
            percent_complete: get(f, "percent_complete")
                .and_then(|p| p.parse().ok())
                .unwrap_or(0),
            importance: s("importance").unwrap_or_else(|| "normal".into()),
            completed_at: parse_time(f, "completed_at")?,
            categories: parse_categories(get(f, "categories")),
            ews_id: None,
            version,
        }),
        Area::Mail => return Err("mail is not a field-mapped area".into()),
    })
}

/// The categories of a field map.
pub fn categories_of(f: &Fields) -> Vec<String> {
    parse_categories(get(f, "categories"))
}

/// A property path for the CRM id stamp (ask for it in GetItem's shape).
pub fn crm_id_path() -> PropertyPath {
    PropertyPath::Extended(crm_id_uri())
}

/// What a person recognises a record by: a contact's name, an appointment's or task's subject.
pub fn title(area: Area, f: &Fields) -> String {
    match area {
        Area::Contacts => display_name(f),
        _ => get(f, "subject").cloned(),
    }
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact() -> CrmRow {
        CrmRow::Contact(ContactRow {
            id: 7,
            tenant_id: 1,
            owner_id: Some(3),
            given_name: Some("Anna".into()),
            surname: Some("Schmidt".into()),
            company: Some("Muster GmbH".into()),
            job_title: Some("Einkauf".into()),
            email: [
                Some("anna@muster.de".into()),
                None,
                Some("a.s@example.com".into()),
            ],
            phones: [
                Some("+49 30 1234".into()),
                Some("+49 170 5555".into()),
                None,
            ],
            address: [
                Some("Hauptstr. 1".into()),
                Some("10115".into()),
                Some("Berlin".into()),
                Some("Germany".into()),
            ],
            notes: Some("Kundin seit 2019\nVIP".into()),
            categories: vec!["VIP".into(), "Kunde".into(), "VIP".into()],
            ews_id: None,
            version: 4,
        })
    }

    fn appointment(rule: Option<&str>, zone: &str) -> CrmRow {
        CrmRow::Appointment(AppointmentRow {
            id: 9,
            tenant_id: 1,
            owner_id: 3,
            subject: Some("Jour fixe".into()),
            location: Some("Raum 2".into()),
            body: Some("Agenda".into()),
            starts_at: Utc.with_ymd_and_hms(2026, 11, 24, 8, 0, 0).unwrap(),
            ends_at: Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap(),
            all_day: false,
            time_zone: zone.into(),
            recurrence: rule.map(Into::into),
            reminder_minutes: Some(15),
            show_as: "tentative".into(),
            categories: vec![],
            uid: None,
            ews_id: None,
            version: 1,
        })
    }

    fn task() -> CrmRow {
        CrmRow::Task(TaskRow {
            id: 11,
            tenant_id: 1,
            owner_id: 3,
            subject: Some("Angebot schreiben".into()),
            body: None,
            start_date: NaiveDate::from_ymd_opt(2026, 11, 23),
            due_date: NaiveDate::from_ymd_opt(2026, 11, 30),
            status: "in_progress".into(),
            percent_complete: 40,
            importance: "high".into(),
            completed_at: None,
            categories: vec!["Vertrieb".into()],
            ews_id: None,
            version: 2,
        })
    }

    fn area_of(row: &CrmRow) -> Area {
        match row {
            CrmRow::Contact(_) => Area::Contacts,
            CrmRow::Appointment(_) => Area::Calendar,
            CrmRow::Task(_) => Area::Tasks,
        }
    }

    /// CRM row -> fields -> Exchange item -> fields, and fields -> CRM row -> fields: nothing
    /// is lost or changed either way.
    fn check_round_trip(row: CrmRow) {
        let area = area_of(&row);
        let fields = from_row(&row).unwrap();
        assert_eq!(
            fields.keys().map(String::as_str).collect::<Vec<_>>().len(),
            names(area).len()
        );
        for name in names(area) {
            assert!(fields.contains_key(*name), "{name} missing");
        }
        let item = to_item(area, &fields, &crm_stamp(table(area), row.id())).unwrap();
        assert_eq!(stamped_id(&item, table(area)), Some(row.id()));
        assert_eq!(from_item(&item).unwrap(), fields, "through Exchange");
        let back = to_row(area, &fields, row.id(), 1, Some(3), 1).unwrap();
        assert_eq!(from_row(&back).unwrap(), fields, "through the CRM");
    }

    fn exchange_appointment(zone: Option<&str>) -> Item {
        Item::CalendarItem(CalendarItem {
            subject: Some("Import".into()),
            start: Some(Utc.with_ymd_and_hms(2026, 11, 24, 8, 0, 0).unwrap()),
            end: Some(Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap()),
            start_time_zone: zone.map(Into::into),
            end_time_zone: zone.map(Into::into),
            ..CalendarItem::default()
        })
    }

    #[test]
    fn every_windows_zone_of_the_table_imports_with_its_iana_zone() {
        for (windows, zone) in timezones::WINDOWS_TO_IANA {
            let f = from_item(&exchange_appointment(Some(windows))).unwrap();
            assert_eq!(f["time_zone"].as_deref(), Some(*zone), "{windows}");
        }
    }

    #[test]
    fn an_unmapped_zone_is_imported_as_utc_never_dropped() {
        let f = from_item(&exchange_appointment(Some("Customized Time Zone"))).unwrap();
        assert_eq!(f["time_zone"].as_deref(), Some("UTC"));
        assert_eq!(f["start"].as_deref(), Some("2026-11-24T08:00:00Z"));
        assert_eq!(f["end"].as_deref(), Some("2026-11-24T09:00:00Z"));
        assert_eq!(f["subject"].as_deref(), Some("Import"));
        // Read again, it gives the same fields: no change is seen where none happened.
        assert_eq!(
            from_item(&exchange_appointment(Some("Customized Time Zone"))).unwrap(),
            f
        );
        assert_eq!(
            from_item(&exchange_appointment(None)).unwrap()["time_zone"].as_deref(),
            Some("UTC")
        );
    }

    #[test]
    fn every_area_round_trips_both_ways() {
        check_round_trip(contact());
        check_round_trip(task());
        check_round_trip(appointment(None, "Europe/Berlin"));
        check_round_trip(appointment(
            Some("FREQ=WEEKLY;BYDAY=TU,TH;COUNT=10"),
            "America/New_York",
        ));
        check_round_trip(appointment(Some("FREQ=MONTHLY;BYDAY=-1FR"), "UTC"));
    }

    #[test]
    fn canonical_forms_hide_spelling_differences() {
        let f = from_row(&contact()).unwrap();
        assert_eq!(f["categories"].as_deref(), Some(r#"["Kunde","VIP"]"#));
        let a = from_row(&appointment(
            Some("FREQ=WEEKLY;BYDAY=TH,TU;COUNT=10"),
            "Europe/Amsterdam",
        ))
        .unwrap();
        assert_eq!(
            a["recurrence"].as_deref(),
            Some("FREQ=WEEKLY;INTERVAL=1;BYDAY=TU,TH;COUNT=10")
        );
        assert_eq!(a["time_zone"].as_deref(), Some("Europe/Berlin"));
        assert_eq!(a["start"].as_deref(), Some("2026-11-24T08:00:00Z"));
    }

    #[test]
    fn rows_exchange_cannot_hold_say_why() {
        assert_eq!(
            from_row(&appointment(None, "Mars/Base")).unwrap_err(),
            "time_zone: \"Mars/Base\" has no Exchange (Windows) equivalent"
        );
        assert!(from_row(&appointment(Some("FREQ=SECONDLY"), "UTC"))
            .unwrap_err()
            .starts_with("recurrence: "));
        let occurrence = Item::CalendarItem(CalendarItem {
            kind: CalendarItemKind::Occurrence,
            ..CalendarItem::default()
        });
        assert_eq!(
            from_item(&occurrence).unwrap_err(),
            "an occurrence of a series syncs with its master"
        );
    }

    #[test]
    fn every_property_mailsync_sets_in_exchange_belongs_to_a_field() {
        for row in [
            contact(),
            task(),
            appointment(Some("FREQ=DAILY;COUNT=3"), "Europe/Berlin"),
        ] {
            let area = area_of(&row);
            let item = to_item(area, &from_row(&row).unwrap(), "x").unwrap();
            let claimed: BTreeMap<String, Vec<&str>> = names(area)
                .iter()
                .flat_map(|n| property_keys(area, n).into_iter().map(move |k| (k, *n)))
                .fold(BTreeMap::new(), |mut m, (k, n)| {
                    m.entry(k).or_default().push(n);
                    m
                });
            for update in item.updates() {
                let key = update.key();
                // Unset properties mailsync does not map are never sent (only the keys of
                // changed fields are), so Exchange keeps whatever the user put there.
                if key.starts_with("ext:") || update.value.is_none() {
                    continue;
                }
                assert!(
                    claimed.contains_key(&key),
                    "{area:?}: {key} is written but no field claims it"
                );
            }
        }
    }
}
