//! Typed items and folders: what mailsync reads from and writes to Exchange.
//!
//! Each item type reads itself from a response element ([`Item::from_element`]), writes
//! itself for CreateItem in schema order ([`Item::write_create`]), and lists the field
//! updates that make an existing item equal to it ([`Item::updates`]): `SetItemField` for a
//! value, `DeleteItemField` for an empty one. A caller that merged fields picks the updates of
//! the fields that changed by [`FieldUpdate::key`].

use base64::Engine;
use chrono::{DateTime, NaiveDate, Utc};

use crate::types::{
    format_datetime, parse_datetime, ExtendedProperty, FolderId, ItemId, PropertyPath,
};
use crate::xml::{Element, XmlWriter};

/// Body text and its kind.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Body {
    /// True for HTML, false for plain text.
    pub html: bool,
    /// The content.
    pub content: String,
}

impl Body {
    /// A plain-text body.
    pub fn text(s: impl Into<String>) -> Self {
        Body {
            html: false,
            content: s.into(),
        }
    }

    fn write(&self, w: &mut XmlWriter) {
        w.start(
            "t:Body",
            &[("BodyType", if self.html { "HTML" } else { "Text" })],
        )
        .text(&self.content)
        .end("t:Body");
    }

    fn from_element(e: &Element) -> Body {
        Body {
            html: e.attr("BodyType") == Some("HTML"),
            content: e.text.clone(),
        }
    }
}

/// A postal address of a contact.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PhysicalAddress {
    /// Street and number.
    pub street: Option<String>,
    /// City.
    pub city: Option<String>,
    /// State or region.
    pub state: Option<String>,
    /// Country or region.
    pub country: Option<String>,
    /// Postal code.
    pub postal_code: Option<String>,
}

impl PhysicalAddress {
    const PARTS: [&'static str; 5] = ["Street", "City", "State", "CountryOrRegion", "PostalCode"];

    fn part(&self, name: &str) -> Option<&str> {
        match name {
            "Street" => self.street.as_deref(),
            "City" => self.city.as_deref(),
            "State" => self.state.as_deref(),
            "CountryOrRegion" => self.country.as_deref(),
            "PostalCode" => self.postal_code.as_deref(),
            _ => None,
        }
    }

    fn is_empty(&self) -> bool {
        Self::PARTS.iter().all(|p| self.part(p).is_none())
    }
}

/// Address keys of a contact (`Business`, `Home`, `Other`).
pub const ADDRESS_KEYS: [&str; 3] = ["Business", "Home", "Other"];
/// Phone keys mailsync maps.
pub const PHONE_KEYS: [&str; 3] = ["BusinessPhone", "MobilePhone", "HomePhone"];

/// A contact.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Contact {
    /// Id and change key, for items read from Exchange.
    pub id: Option<ItemId>,
    /// Folder holding the item.
    pub parent: Option<FolderId>,
    /// Display name (Exchange computes one when absent).
    pub display_name: Option<String>,
    /// First name.
    pub given_name: Option<String>,
    /// Last name.
    pub surname: Option<String>,
    /// Company.
    pub company_name: Option<String>,
    /// Job title.
    pub job_title: Option<String>,
    /// EmailAddress1..3.
    pub email: [Option<String>; 3],
    /// Phones by [`PHONE_KEYS`] order: business, mobile, home.
    pub phones: [Option<String>; 3],
    /// Addresses by [`ADDRESS_KEYS`] order: business, home, other.
    pub addresses: [PhysicalAddress; 3],
    /// Notes (the item body).
    pub notes: Option<String>,
    /// Categories.
    pub categories: Vec<String>,
    /// Extended properties read or to write.
    pub extended: Vec<ExtendedProperty>,
}

/// Free/busy status of an appointment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FreeBusy {
    /// Free.
    Free,
    /// Tentative.
    Tentative,
    /// Busy (the default).
    #[default]
    Busy,
    /// Out of office.
    Oof,
    /// Working elsewhere.
    WorkingElsewhere,
    /// No data.
    NoData,
}

impl FreeBusy {
    const ALL: [(FreeBusy, &'static str); 6] = [
        (FreeBusy::Free, "Free"),
        (FreeBusy::Tentative, "Tentative"),
        (FreeBusy::Busy, "Busy"),
        (FreeBusy::Oof, "OOF"),
        (FreeBusy::WorkingElsewhere, "WorkingElsewhere"),
        (FreeBusy::NoData, "NoData"),
    ];

    /// Wire name.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(v, _)| *v == self)
            .map(|(_, s)| *s)
            .unwrap_or("Busy")
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == s).map(|(v, _)| *v)
    }
}

/// Where an appointment stands in a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CalendarItemKind {
    /// Not recurring.
    #[default]
    Single,
    /// An unmodified occurrence of a series (only from CalendarView).
    Occurrence,
    /// A modified occurrence of a series.
    Exception,
    /// The series itself, holding recurrence, exceptions and deletions.
    RecurringMaster,
}

impl CalendarItemKind {
    fn parse(s: &str) -> Self {
        match s {
            "Occurrence" => CalendarItemKind::Occurrence,
            "Exception" => CalendarItemKind::Exception,
            "RecurringMaster" => CalendarItemKind::RecurringMaster,
            _ => CalendarItemKind::Single,
        }
    }
}

/// Ordinal of a weekday in a month (`First` … `Last`).
pub const WEEK_INDEXES: [&str; 5] = ["First", "Second", "Third", "Fourth", "Last"];
/// Month names as EWS writes them.
pub const MONTHS: [&str; 12] = [
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

/// A recurrence pattern. Days of week are EWS names (`Monday`, …, `Day`, `Weekday`, `WeekendDay`);
/// months are 1–12.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecurrencePattern {
    /// Every `interval` days.
    Daily {
        /// Days between occurrences.
        interval: u32,
    },
    /// Every `interval` weeks on `days`.
    Weekly {
        /// Weeks between occurrences.
        interval: u32,
        /// Weekdays.
        days: Vec<String>,
    },
    /// Day `day_of_month` every `interval` months.
    AbsoluteMonthly {
        /// Months between occurrences.
        interval: u32,
        /// 1–31.
        day_of_month: u32,
    },
    /// The `index` `day` every `interval` months (e.g. second Tuesday).
    RelativeMonthly {
        /// Months between occurrences.
        interval: u32,
        /// Weekday name.
        day: String,
        /// `First` … `Last`.
        index: String,
    },
    /// `day_of_month` of `month` every year.
    AbsoluteYearly {
        /// 1–31.
        day_of_month: u32,
        /// 1–12.
        month: u32,
    },
    /// The `index` `day` of `month` every year.
    RelativeYearly {
        /// Weekday name.
        day: String,
        /// `First` … `Last`.
        index: String,
        /// 1–12.
        month: u32,
    },
}

/// How long a series runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecurrenceRange {
    /// Forever from `start`.
    NoEnd {
        /// First day.
        start: NaiveDate,
    },
    /// From `start` to `end` inclusive.
    EndDate {
        /// First day.
        start: NaiveDate,
        /// Last day.
        end: NaiveDate,
    },
    /// `count` occurrences from `start`.
    Numbered {
        /// First day.
        start: NaiveDate,
        /// Number of occurrences.
        count: u32,
    },
}

/// A recurrence: pattern plus range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recurrence {
    /// When within the period.
    pub pattern: RecurrencePattern,
    /// How long.
    pub range: RecurrenceRange,
}

impl Recurrence {
    fn write(&self, w: &mut XmlWriter) {
        w.start("t:Recurrence", &[]);
        let month = |m: u32| {
            MONTHS
                .get(m.saturating_sub(1) as usize)
                .copied()
                .unwrap_or("January")
        };
        match &self.pattern {
            RecurrencePattern::Daily { interval } => {
                w.start("t:DailyRecurrence", &[])
                    .leaf("t:Interval", &interval.to_string())
                    .end("t:DailyRecurrence");
            }
            RecurrencePattern::Weekly { interval, days } => {
                w.start("t:WeeklyRecurrence", &[])
                    .leaf("t:Interval", &interval.to_string())
                    .leaf("t:DaysOfWeek", &days.join(" "))
                    .end("t:WeeklyRecurrence");
            }
            RecurrencePattern::AbsoluteMonthly {
                interval,
                day_of_month,
            } => {
                w.start("t:AbsoluteMonthlyRecurrence", &[])
                    .leaf("t:Interval", &interval.to_string())
                    .leaf("t:DayOfMonth", &day_of_month.to_string())
                    .end("t:AbsoluteMonthlyRecurrence");
            }
            RecurrencePattern::RelativeMonthly {
                interval,
                day,
                index,
            } => {
                w.start("t:RelativeMonthlyRecurrence", &[])
                    .leaf("t:Interval", &interval.to_string())
                    .leaf("t:DaysOfWeek", day)
                    .leaf("t:DayOfWeekIndex", index)
                    .end("t:RelativeMonthlyRecurrence");
            }
            RecurrencePattern::AbsoluteYearly {
                day_of_month,
                month: m,
            } => {
                w.start("t:AbsoluteYearlyRecurrence", &[])
                    .leaf("t:DayOfMonth", &day_of_month.to_string())
                    .leaf("t:Month", month(*m))
                    .end("t:AbsoluteYearlyRecurrence");
            }
            RecurrencePattern::RelativeYearly {
                day,
                index,
                month: m,
            } => {
                w.start("t:RelativeYearlyRecurrence", &[])
                    .leaf("t:DaysOfWeek", day)
                    .leaf("t:DayOfWeekIndex", index)
                    .leaf("t:Month", month(*m))
                    .end("t:RelativeYearlyRecurrence");
            }
        }
        let d = |x: &NaiveDate| x.format("%Y-%m-%d").to_string();
        match &self.range {
            RecurrenceRange::NoEnd { start } => {
                w.start("t:NoEndRecurrence", &[])
                    .leaf("t:StartDate", &d(start))
                    .end("t:NoEndRecurrence");
            }
            RecurrenceRange::EndDate { start, end } => {
                w.start("t:EndDateRecurrence", &[])
                    .leaf("t:StartDate", &d(start))
                    .leaf("t:EndDate", &d(end))
                    .end("t:EndDateRecurrence");
            }
            RecurrenceRange::Numbered { start, count } => {
                w.start("t:NumberedRecurrence", &[])
                    .leaf("t:StartDate", &d(start))
                    .leaf("t:NumberOfOccurrences", &count.to_string())
                    .end("t:NumberedRecurrence");
            }
        }
        w.end("t:Recurrence");
    }

    /// Reads a `Recurrence` element; `None` for patterns mailsync does not map (task
    /// regeneration patterns) or malformed ones.
    pub fn from_element(e: &Element) -> Option<Recurrence> {
        let num = |p: &Element, n: &str| p.child_num::<u32>(n);
        let month = |p: &Element| {
            let m = p.child_text("Month")?.trim();
            MONTHS.iter().position(|x| *x == m).map(|i| i as u32 + 1)
        };
        let mut pattern = None;
        let mut range = None;
        for c in &e.children {
            let date = |n: &str| c.child_text(n).and_then(parse_date);
            match c.name.as_str() {
                "DailyRecurrence" => {
                    pattern = Some(RecurrencePattern::Daily {
                        interval: num(c, "Interval")?,
                    })
                }
                "WeeklyRecurrence" => {
                    pattern = Some(RecurrencePattern::Weekly {
                        interval: num(c, "Interval")?,
                        days: c
                            .child_text("DaysOfWeek")?
                            .split_whitespace()
                            .map(str::to_string)
                            .collect(),
                    })
                }
                "AbsoluteMonthlyRecurrence" => {
                    pattern = Some(RecurrencePattern::AbsoluteMonthly {
                        interval: num(c, "Interval")?,
                        day_of_month: num(c, "DayOfMonth")?,
                    })
                }
                "RelativeMonthlyRecurrence" => {
                    pattern = Some(RecurrencePattern::RelativeMonthly {
                        interval: num(c, "Interval")?,
                        day: c.child_text("DaysOfWeek")?.trim().to_string(),
                        index: c.child_text("DayOfWeekIndex")?.trim().to_string(),
                    })
                }
                "AbsoluteYearlyRecurrence" => {
                    pattern = Some(RecurrencePattern::AbsoluteYearly {
                        day_of_month: num(c, "DayOfMonth")?,
                        month: month(c)?,
                    })
                }
                "RelativeYearlyRecurrence" => {
                    pattern = Some(RecurrencePattern::RelativeYearly {
                        day: c.child_text("DaysOfWeek")?.trim().to_string(),
                        index: c.child_text("DayOfWeekIndex")?.trim().to_string(),
                        month: month(c)?,
                    })
                }
                "NoEndRecurrence" => {
                    range = Some(RecurrenceRange::NoEnd {
                        start: date("StartDate")?,
                    })
                }
                "EndDateRecurrence" => {
                    range = Some(RecurrenceRange::EndDate {
                        start: date("StartDate")?,
                        end: date("EndDate")?,
                    })
                }
                "NumberedRecurrence" => {
                    range = Some(RecurrenceRange::Numbered {
                        start: date("StartDate")?,
                        count: num(c, "NumberOfOccurrences")?,
                    })
                }
                _ => {}
            }
        }
        Some(Recurrence {
            pattern: pattern?,
            range: range?,
        })
    }
}

/// EWS dates may carry an offset (`2024-01-01Z`, `2024-01-01+02:00`); the date part counts.
fn parse_date(s: &str) -> Option<NaiveDate> {
    let s = s.trim();
    NaiveDate::parse_from_str(s.get(..10)?, "%Y-%m-%d").ok()
}

/// One modified or deleted occurrence of a series, as listed on its master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OccurrenceInfo {
    /// The occurrence's own id.
    pub id: Option<ItemId>,
    /// Start (modified occurrences).
    pub start: Option<DateTime<Utc>>,
    /// End (modified occurrences).
    pub end: Option<DateTime<Utc>>,
    /// The start the occurrence had in the pattern; identifies it.
    pub original_start: Option<DateTime<Utc>>,
}

impl OccurrenceInfo {
    fn list(e: Option<&Element>) -> Vec<OccurrenceInfo> {
        e.map(|l| {
            l.children
                .iter()
                .map(|o| OccurrenceInfo {
                    id: o.child("ItemId").and_then(ItemId::from_element),
                    start: o.child_text("Start").and_then(parse_datetime),
                    end: o.child_text("End").and_then(parse_datetime),
                    original_start: o.child_text("OriginalStart").and_then(parse_datetime),
                })
                .collect()
        })
        .unwrap_or_default()
    }
}

/// An appointment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CalendarItem {
    /// Id and change key.
    pub id: Option<ItemId>,
    /// Folder.
    pub parent: Option<FolderId>,
    /// Subject.
    pub subject: Option<String>,
    /// Body.
    pub body: Option<Body>,
    /// Start, UTC.
    pub start: Option<DateTime<Utc>>,
    /// End, UTC.
    pub end: Option<DateTime<Utc>>,
    /// All-day event (start and end at midnight of the time zone).
    pub is_all_day: bool,
    /// Location.
    pub location: Option<String>,
    /// Reminder minutes before start; `None` for no reminder.
    pub reminder_minutes: Option<i32>,
    /// Free/busy.
    pub free_busy: FreeBusy,
    /// Categories.
    pub categories: Vec<String>,
    /// iCalendar UID (stable across copies; links an appointment to its CRM row).
    pub uid: Option<String>,
    /// Series pattern (masters).
    pub recurrence: Option<Recurrence>,
    /// Single, occurrence, exception or master.
    pub kind: CalendarItemKind,
    /// Windows time zone id of the start (`W. Europe Standard Time`).
    pub start_time_zone: Option<String>,
    /// Windows time zone id of the end.
    pub end_time_zone: Option<String>,
    /// Exceptions of a master.
    pub modified_occurrences: Vec<OccurrenceInfo>,
    /// Deleted occurrences of a master.
    pub deleted_occurrences: Vec<OccurrenceInfo>,
    /// For occurrences from a CalendarView: the original start, identifying the occurrence.
    pub original_start: Option<DateTime<Utc>>,
    /// Extended properties.
    pub extended: Vec<ExtendedProperty>,
}

/// Task status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaskStatus {
    /// Not started.
    #[default]
    NotStarted,
    /// In progress.
    InProgress,
    /// Completed.
    Completed,
    /// Waiting on others.
    WaitingOnOthers,
    /// Deferred.
    Deferred,
}

impl TaskStatus {
    const ALL: [(TaskStatus, &'static str); 5] = [
        (TaskStatus::NotStarted, "NotStarted"),
        (TaskStatus::InProgress, "InProgress"),
        (TaskStatus::Completed, "Completed"),
        (TaskStatus::WaitingOnOthers, "WaitingOnOthers"),
        (TaskStatus::Deferred, "Deferred"),
    ];

    /// Wire name.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(v, _)| *v == self)
            .map(|(_, s)| *s)
            .unwrap_or("NotStarted")
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == s).map(|(v, _)| *v)
    }
}

/// Importance of a task or message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Importance {
    /// Low.
    Low,
    /// Normal.
    #[default]
    Normal,
    /// High.
    High,
}

impl Importance {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Importance::Low => "Low",
            Importance::Normal => "Normal",
            Importance::High => "High",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Low" => Some(Importance::Low),
            "Normal" => Some(Importance::Normal),
            "High" => Some(Importance::High),
            _ => None,
        }
    }
}

/// A task.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Task {
    /// Id and change key.
    pub id: Option<ItemId>,
    /// Folder.
    pub parent: Option<FolderId>,
    /// Subject.
    pub subject: Option<String>,
    /// Body.
    pub body: Option<Body>,
    /// Start date.
    pub start_date: Option<DateTime<Utc>>,
    /// Due date.
    pub due_date: Option<DateTime<Utc>>,
    /// Status.
    pub status: TaskStatus,
    /// 0–100.
    pub percent_complete: f64,
    /// Importance.
    pub importance: Importance,
    /// When completed.
    pub complete_date: Option<DateTime<Utc>>,
    /// Categories.
    pub categories: Vec<String>,
    /// Extended properties.
    pub extended: Vec<ExtendedProperty>,
}

/// A mailbox address (name and SMTP address).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mailbox {
    /// Display name.
    pub name: Option<String>,
    /// SMTP address.
    pub email: Option<String>,
}

impl Mailbox {
    fn from_element(e: &Element) -> Mailbox {
        Mailbox {
            name: e.child_text("Name").map(str::to_string),
            email: e.child_text("EmailAddress").map(str::to_string),
        }
    }
}

/// An e-mail message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// Id and change key.
    pub id: Option<ItemId>,
    /// Folder.
    pub parent: Option<FolderId>,
    /// The full RFC 5322 message, byte-exact.
    pub mime: Option<Vec<u8>>,
    /// Subject.
    pub subject: Option<String>,
    /// Sender.
    pub from: Option<Mailbox>,
    /// To.
    pub to: Vec<Mailbox>,
    /// Cc.
    pub cc: Vec<Mailbox>,
    /// Read flag.
    pub is_read: Option<bool>,
    /// An unsent draft (read only: Exchange derives it from PR_MESSAGE_FLAGS).
    pub is_draft: Option<bool>,
    /// Message-ID header.
    pub internet_message_id: Option<String>,
    /// When received.
    pub received: Option<DateTime<Utc>>,
    /// When sent (DateTimeSent).
    pub sent: Option<DateTime<Utc>>,
    /// Size in bytes.
    pub size: Option<u64>,
    /// Extended properties.
    pub extended: Vec<ExtendedProperty>,
}

/// A folder.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Folder {
    /// Id.
    pub id: Option<FolderId>,
    /// Parent.
    pub parent: Option<FolderId>,
    /// Display name.
    pub display_name: Option<String>,
    /// `IPF.Note`, `IPF.Appointment`, …
    pub folder_class: Option<String>,
    /// Items in the folder.
    pub total_count: Option<u32>,
    /// Subfolders.
    pub child_folder_count: Option<u32>,
    /// Unread items.
    pub unread_count: Option<u32>,
    /// The distinguished folder this is, when the server says so (2013+).
    pub distinguished: Option<String>,
}

impl Folder {
    /// Reads any folder element (`Folder`, `CalendarFolder`, `ContactsFolder`, …).
    pub fn from_element(e: &Element) -> Folder {
        Folder {
            id: e.child("FolderId").and_then(ItemId::from_element),
            parent: e.child("ParentFolderId").and_then(ItemId::from_element),
            display_name: e.child_text("DisplayName").map(str::to_string),
            folder_class: e.child_text("FolderClass").map(str::to_string),
            total_count: e.child_num("TotalCount"),
            child_folder_count: e.child_num("ChildFolderCount"),
            unread_count: e.child_num("UnreadCount"),
            distinguished: e.child_text("DistinguishedFolderId").map(str::to_string),
        }
    }

    /// Writes the folder for CreateFolder (display name and class).
    pub fn write_create(&self, w: &mut XmlWriter) {
        w.start("t:Folder", &[]);
        w.opt_leaf("t:FolderClass", self.folder_class.as_deref());
        w.opt_leaf("t:DisplayName", self.display_name.as_deref());
        w.end("t:Folder");
    }

    /// True for folder elements of any kind.
    pub fn is_folder_element(name: &str) -> bool {
        matches!(
            name,
            "Folder" | "CalendarFolder" | "ContactsFolder" | "TasksFolder" | "SearchFolder"
        )
    }
}

/// Any item.
// Items are handled one or a batch at a time; boxing every variant would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A contact.
    Contact(Contact),
    /// An appointment.
    CalendarItem(CalendarItem),
    /// A task.
    Task(Task),
    /// A message (and meeting messages, read as messages).
    Message(Message),
    /// An item type mailsync does not map (distribution lists, posts, …).
    Other {
        /// Id.
        id: Option<ItemId>,
        /// Element name, e.g. `DistributionList`.
        kind: String,
    },
}

/// One field of an UpdateItem: set to a value, or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldUpdate {
    /// The property.
    pub path: PropertyPath,
    /// The item element carrying only this property (`<t:Contact><t:GivenName>…`), or
    /// `None` to delete the property.
    pub value: Option<Vec<u8>>,
}

impl FieldUpdate {
    /// The field's key, see [`PropertyPath::key`].
    pub fn key(&self) -> String {
        self.path.key()
    }
}

/// Collects the updates of one item type.
struct Updates {
    wrapper: &'static str,
    out: Vec<FieldUpdate>,
}

impl Updates {
    fn new(wrapper: &'static str) -> Self {
        Updates {
            wrapper,
            out: Vec::new(),
        }
    }

    /// A field set by `write` when `present`, deleted otherwise.
    fn field(&mut self, path: PropertyPath, present: bool, write: impl FnOnce(&mut XmlWriter)) {
        let value = present.then(|| {
            let mut w = XmlWriter::new();
            w.start(self.wrapper, &[]);
            write(&mut w);
            w.end(self.wrapper);
            w.into_bytes()
        });
        self.out.push(FieldUpdate { path, value });
    }

    fn text(&mut self, uri: &str, tag: &str, v: Option<&str>) {
        self.field(PropertyPath::field(uri), v.is_some(), |w| {
            w.leaf(tag, v.unwrap_or_default());
        });
    }

    fn categories(&mut self, cats: &[String]) {
        self.field(
            PropertyPath::field("item:Categories"),
            !cats.is_empty(),
            |w| write_categories(w, cats),
        );
    }

    fn body(&mut self, body: Option<&Body>) {
        self.field(PropertyPath::field("item:Body"), body.is_some(), |w| {
            if let Some(b) = body {
                b.write(w)
            }
        });
    }

    fn extended(&mut self, props: &[ExtendedProperty]) {
        for p in props {
            self.field(PropertyPath::Extended(p.uri.clone()), true, |w| p.write(w));
        }
    }
}

fn write_categories(w: &mut XmlWriter, cats: &[String]) {
    if cats.is_empty() {
        return;
    }
    w.start("t:Categories", &[]);
    for c in cats {
        w.leaf("t:String", c);
    }
    w.end("t:Categories");
}

fn read_categories(e: &Element) -> Vec<String> {
    e.child("Categories")
        .map(|c| c.children.iter().map(|s| s.text.clone()).collect())
        .unwrap_or_default()
}

fn text(e: &Element, name: &str) -> Option<String> {
    e.child_text(name).map(str::to_string)
}

impl Contact {
    fn write_create(&self, w: &mut XmlWriter) {
        w.start("t:Contact", &[]);
        if let Some(n) = &self.notes {
            Body::text(n.clone()).write(w);
        }
        write_categories(w, &self.categories);
        for p in &self.extended {
            p.write(w);
        }
        w.opt_leaf("t:DisplayName", self.display_name.as_deref());
        w.opt_leaf("t:GivenName", self.given_name.as_deref());
        w.opt_leaf("t:CompanyName", self.company_name.as_deref());
        if self.email.iter().any(Option::is_some) {
            w.start("t:EmailAddresses", &[]);
            for (i, e) in self.email.iter().enumerate() {
                if let Some(e) = e {
                    w.start("t:Entry", &[("Key", &format!("EmailAddress{}", i + 1))])
                        .text(e)
                        .end("t:Entry");
                }
            }
            w.end("t:EmailAddresses");
        }
        if self.addresses.iter().any(|a| !a.is_empty()) {
            w.start("t:PhysicalAddresses", &[]);
            for (key, a) in ADDRESS_KEYS.iter().zip(&self.addresses) {
                if a.is_empty() {
                    continue;
                }
                w.start("t:Entry", &[("Key", key)]);
                for part in PhysicalAddress::PARTS {
                    w.opt_leaf(&format!("t:{part}"), a.part(part));
                }
                w.end("t:Entry");
            }
            w.end("t:PhysicalAddresses");
        }
        if self.phones.iter().any(Option::is_some) {
            w.start("t:PhoneNumbers", &[]);
            for (key, p) in PHONE_KEYS.iter().zip(&self.phones) {
                if let Some(p) = p {
                    w.start("t:Entry", &[("Key", key)]).text(p).end("t:Entry");
                }
            }
            w.end("t:PhoneNumbers");
        }
        w.opt_leaf("t:JobTitle", self.job_title.as_deref());
        w.opt_leaf("t:Surname", self.surname.as_deref());
        w.end("t:Contact");
    }

    fn updates(&self) -> Vec<FieldUpdate> {
        let mut u = Updates::new("t:Contact");
        u.text(
            "contacts:DisplayName",
            "t:DisplayName",
            self.display_name.as_deref(),
        );
        u.text(
            "contacts:GivenName",
            "t:GivenName",
            self.given_name.as_deref(),
        );
        u.text("contacts:Surname", "t:Surname", self.surname.as_deref());
        u.text(
            "contacts:CompanyName",
            "t:CompanyName",
            self.company_name.as_deref(),
        );
        u.text("contacts:JobTitle", "t:JobTitle", self.job_title.as_deref());
        for (i, e) in self.email.iter().enumerate() {
            let key = format!("EmailAddress{}", i + 1);
            u.field(
                PropertyPath::indexed("contacts:EmailAddress", &key),
                e.is_some(),
                |w| {
                    w.start("t:EmailAddresses", &[])
                        .start("t:Entry", &[("Key", &key)])
                        .text(e.as_deref().unwrap_or_default())
                        .end("t:Entry")
                        .end("t:EmailAddresses");
                },
            );
        }
        for (key, p) in PHONE_KEYS.iter().zip(&self.phones) {
            u.field(
                PropertyPath::indexed("contacts:PhoneNumber", key),
                p.is_some(),
                |w| {
                    w.start("t:PhoneNumbers", &[])
                        .start("t:Entry", &[("Key", key)])
                        .text(p.as_deref().unwrap_or_default())
                        .end("t:Entry")
                        .end("t:PhoneNumbers");
                },
            );
        }
        for (key, a) in ADDRESS_KEYS.iter().zip(&self.addresses) {
            for part in PhysicalAddress::PARTS {
                let v = a.part(part);
                u.field(
                    PropertyPath::indexed(&format!("contacts:PhysicalAddress:{part}"), key),
                    v.is_some(),
                    |w| {
                        w.start("t:PhysicalAddresses", &[])
                            .start("t:Entry", &[("Key", key)])
                            .leaf(&format!("t:{part}"), v.unwrap_or_default())
                            .end("t:Entry")
                            .end("t:PhysicalAddresses");
                    },
                );
            }
        }
        u.body(self.notes.clone().map(Body::text).as_ref());
        u.categories(&self.categories);
        u.extended(&self.extended);
        u.out
    }

    fn from_element(e: &Element) -> Contact {
        let entry = |list: &str, key: &str| {
            e.child(list)
                .and_then(|l| l.children.iter().find(|x| x.attr("Key") == Some(key)))
                .map(|x| x.text.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let address = |key: &str| {
            e.child("PhysicalAddresses")
                .and_then(|l| l.children.iter().find(|x| x.attr("Key") == Some(key)))
                .map(|a| PhysicalAddress {
                    street: text(a, "Street"),
                    city: text(a, "City"),
                    state: text(a, "State"),
                    country: text(a, "CountryOrRegion"),
                    postal_code: text(a, "PostalCode"),
                })
                .unwrap_or_default()
        };
        Contact {
            id: e.child("ItemId").and_then(ItemId::from_element),
            parent: e.child("ParentFolderId").and_then(ItemId::from_element),
            display_name: text(e, "DisplayName"),
            given_name: text(e, "GivenName"),
            surname: text(e, "Surname"),
            company_name: text(e, "CompanyName"),
            job_title: text(e, "JobTitle"),
            email: [
                entry("EmailAddresses", "EmailAddress1"),
                entry("EmailAddresses", "EmailAddress2"),
                entry("EmailAddresses", "EmailAddress3"),
            ],
            phones: PHONE_KEYS.map(|k| entry("PhoneNumbers", k)),
            addresses: ADDRESS_KEYS.map(address),
            notes: e
                .child("Body")
                .map(|b| b.text.clone())
                .filter(|s| !s.is_empty()),
            categories: read_categories(e),
            extended: ExtendedProperty::all_from(e),
        }
    }
}

impl CalendarItem {
    fn write_create(&self, w: &mut XmlWriter) {
        w.start("t:CalendarItem", &[]);
        w.opt_leaf("t:Subject", self.subject.as_deref());
        if let Some(b) = &self.body {
            b.write(w);
        }
        write_categories(w, &self.categories);
        w.leaf(
            "t:ReminderIsSet",
            if self.reminder_minutes.is_some() {
                "true"
            } else {
                "false"
            },
        );
        if let Some(m) = self.reminder_minutes {
            w.leaf("t:ReminderMinutesBeforeStart", &m.to_string());
        }
        for p in &self.extended {
            p.write(w);
        }
        w.opt_leaf("t:UID", self.uid.as_deref());
        w.opt_leaf(
            "t:Start",
            self.start.as_ref().map(format_datetime).as_deref(),
        );
        w.opt_leaf("t:End", self.end.as_ref().map(format_datetime).as_deref());
        w.leaf(
            "t:IsAllDayEvent",
            if self.is_all_day { "true" } else { "false" },
        );
        w.leaf("t:LegacyFreeBusyStatus", self.free_busy.as_str());
        w.opt_leaf("t:Location", self.location.as_deref());
        if let Some(r) = &self.recurrence {
            r.write(w);
        }
        if let Some(tz) = &self.start_time_zone {
            w.empty("t:StartTimeZone", &[("Id", tz)]);
        }
        if let Some(tz) = &self.end_time_zone {
            w.empty("t:EndTimeZone", &[("Id", tz)]);
        }
        w.end("t:CalendarItem");
    }

    fn updates(&self) -> Vec<FieldUpdate> {
        let mut u = Updates::new("t:CalendarItem");
        u.text("item:Subject", "t:Subject", self.subject.as_deref());
        u.body(self.body.as_ref());
        u.categories(&self.categories);
        u.text(
            "item:ReminderIsSet",
            "t:ReminderIsSet",
            Some(if self.reminder_minutes.is_some() {
                "true"
            } else {
                "false"
            }),
        );
        if let Some(m) = self.reminder_minutes {
            u.text(
                "item:ReminderMinutesBeforeStart",
                "t:ReminderMinutesBeforeStart",
                Some(&m.to_string()),
            );
        }
        u.text(
            "calendar:Start",
            "t:Start",
            self.start.as_ref().map(format_datetime).as_deref(),
        );
        u.text(
            "calendar:End",
            "t:End",
            self.end.as_ref().map(format_datetime).as_deref(),
        );
        u.text(
            "calendar:IsAllDayEvent",
            "t:IsAllDayEvent",
            Some(if self.is_all_day { "true" } else { "false" }),
        );
        u.text(
            "calendar:LegacyFreeBusyStatus",
            "t:LegacyFreeBusyStatus",
            Some(self.free_busy.as_str()),
        );
        u.text("calendar:Location", "t:Location", self.location.as_deref());
        u.field(
            PropertyPath::field("calendar:Recurrence"),
            self.recurrence.is_some(),
            |w| {
                if let Some(r) = &self.recurrence {
                    r.write(w)
                }
            },
        );
        if let Some(tz) = &self.start_time_zone {
            u.field(PropertyPath::field("calendar:StartTimeZone"), true, |w| {
                w.empty("t:StartTimeZone", &[("Id", tz)]);
            });
        }
        if let Some(tz) = &self.end_time_zone {
            u.field(PropertyPath::field("calendar:EndTimeZone"), true, |w| {
                w.empty("t:EndTimeZone", &[("Id", tz)]);
            });
        }
        u.extended(&self.extended);
        u.out
    }

    fn from_element(e: &Element) -> CalendarItem {
        let reminder_set = e.child_bool("ReminderIsSet").unwrap_or(false);
        CalendarItem {
            id: e.child("ItemId").and_then(ItemId::from_element),
            parent: e.child("ParentFolderId").and_then(ItemId::from_element),
            subject: text(e, "Subject"),
            body: e.child("Body").map(Body::from_element),
            start: e.child_text("Start").and_then(parse_datetime),
            end: e.child_text("End").and_then(parse_datetime),
            is_all_day: e.child_bool("IsAllDayEvent").unwrap_or(false),
            location: text(e, "Location"),
            reminder_minutes: if reminder_set {
                e.child_num("ReminderMinutesBeforeStart")
            } else {
                None
            },
            free_busy: e
                .child_text("LegacyFreeBusyStatus")
                .and_then(FreeBusy::parse)
                .unwrap_or_default(),
            categories: read_categories(e),
            uid: text(e, "UID"),
            recurrence: e.child("Recurrence").and_then(Recurrence::from_element),
            kind: e
                .child_text("CalendarItemType")
                .map(CalendarItemKind::parse)
                .unwrap_or_default(),
            start_time_zone: e
                .child("StartTimeZone")
                .and_then(|z| z.attr("Id"))
                .map(str::to_string),
            end_time_zone: e
                .child("EndTimeZone")
                .and_then(|z| z.attr("Id"))
                .map(str::to_string),
            modified_occurrences: OccurrenceInfo::list(e.child("ModifiedOccurrences")),
            deleted_occurrences: OccurrenceInfo::list(e.child("DeletedOccurrences")),
            original_start: e.child_text("OriginalStart").and_then(parse_datetime),
            extended: ExtendedProperty::all_from(e),
        }
    }
}

impl Task {
    fn write_create(&self, w: &mut XmlWriter) {
        w.start("t:Task", &[]);
        w.opt_leaf("t:Subject", self.subject.as_deref());
        if let Some(b) = &self.body {
            b.write(w);
        }
        write_categories(w, &self.categories);
        w.leaf("t:Importance", self.importance.as_str());
        for p in &self.extended {
            p.write(w);
        }
        w.opt_leaf(
            "t:CompleteDate",
            self.complete_date.as_ref().map(format_datetime).as_deref(),
        );
        w.opt_leaf(
            "t:DueDate",
            self.due_date.as_ref().map(format_datetime).as_deref(),
        );
        w.leaf("t:PercentComplete", &format_percent(self.percent_complete));
        w.opt_leaf(
            "t:StartDate",
            self.start_date.as_ref().map(format_datetime).as_deref(),
        );
        w.leaf("t:Status", self.status.as_str());
        w.end("t:Task");
    }

    fn updates(&self) -> Vec<FieldUpdate> {
        let mut u = Updates::new("t:Task");
        u.text("item:Subject", "t:Subject", self.subject.as_deref());
        u.body(self.body.as_ref());
        u.categories(&self.categories);
        u.text(
            "item:Importance",
            "t:Importance",
            Some(self.importance.as_str()),
        );
        u.text(
            "task:DueDate",
            "t:DueDate",
            self.due_date.as_ref().map(format_datetime).as_deref(),
        );
        u.text(
            "task:StartDate",
            "t:StartDate",
            self.start_date.as_ref().map(format_datetime).as_deref(),
        );
        u.text("task:Status", "t:Status", Some(self.status.as_str()));
        u.text(
            "task:PercentComplete",
            "t:PercentComplete",
            Some(&format_percent(self.percent_complete)),
        );
        if self.status == TaskStatus::Completed {
            u.text(
                "task:CompleteDate",
                "t:CompleteDate",
                self.complete_date.as_ref().map(format_datetime).as_deref(),
            );
        }
        u.extended(&self.extended);
        u.out
    }

    fn from_element(e: &Element) -> Task {
        Task {
            id: e.child("ItemId").and_then(ItemId::from_element),
            parent: e.child("ParentFolderId").and_then(ItemId::from_element),
            subject: text(e, "Subject"),
            body: e.child("Body").map(Body::from_element),
            start_date: e.child_text("StartDate").and_then(parse_datetime),
            due_date: e.child_text("DueDate").and_then(parse_datetime),
            status: e
                .child_text("Status")
                .and_then(TaskStatus::parse)
                .unwrap_or_default(),
            percent_complete: e.child_num("PercentComplete").unwrap_or(0.0),
            importance: e
                .child_text("Importance")
                .and_then(Importance::parse)
                .unwrap_or_default(),
            complete_date: e.child_text("CompleteDate").and_then(parse_datetime),
            categories: read_categories(e),
            extended: ExtendedProperty::all_from(e),
        }
    }
}

fn format_percent(p: f64) -> String {
    let p = p.clamp(0.0, 100.0);
    if p.fract() == 0.0 {
        format!("{}", p as u32)
    } else {
        format!("{p}")
    }
}

impl Message {
    fn write_create(&self, w: &mut XmlWriter) {
        w.start("t:Message", &[]);
        if let Some(m) = &self.mime {
            w.start("t:MimeContent", &[("CharacterSet", "UTF-8")])
                .text(&base64::engine::general_purpose::STANDARD.encode(m))
                .end("t:MimeContent");
        } else {
            w.opt_leaf("t:Subject", self.subject.as_deref());
        }
        for p in &self.extended {
            p.write(w);
        }
        if self.mime.is_none() {
            let list = |w: &mut XmlWriter, tag: &str, boxes: &[Mailbox]| {
                if boxes.is_empty() {
                    return;
                }
                w.start(tag, &[]);
                for b in boxes {
                    w.start("t:Mailbox", &[]);
                    w.opt_leaf("t:Name", b.name.as_deref());
                    w.opt_leaf("t:EmailAddress", b.email.as_deref());
                    w.end("t:Mailbox");
                }
                w.end(tag);
            };
            list(w, "t:ToRecipients", &self.to);
            list(w, "t:CcRecipients", &self.cc);
        }
        if let Some(r) = self.is_read {
            w.leaf("t:IsRead", if r { "true" } else { "false" });
        }
        w.end("t:Message");
    }

    fn updates(&self) -> Vec<FieldUpdate> {
        let mut u = Updates::new("t:Message");
        if let Some(r) = self.is_read {
            u.text(
                "message:IsRead",
                "t:IsRead",
                Some(if r { "true" } else { "false" }),
            );
        }
        u.extended(&self.extended);
        u.out
    }

    fn from_element(e: &Element) -> Message {
        let boxes = |name: &str| {
            e.child(name)
                .map(|l| {
                    l.children_named("Mailbox")
                        .map(Mailbox::from_element)
                        .collect()
                })
                .unwrap_or_default()
        };
        Message {
            id: e.child("ItemId").and_then(ItemId::from_element),
            parent: e.child("ParentFolderId").and_then(ItemId::from_element),
            mime: e.child("MimeContent").and_then(|m| {
                let cleaned: String = m.text.chars().filter(|c| !c.is_whitespace()).collect();
                base64::engine::general_purpose::STANDARD
                    .decode(cleaned)
                    .ok()
            }),
            subject: text(e, "Subject"),
            from: e
                .child("From")
                .and_then(|f| f.child("Mailbox"))
                .map(Mailbox::from_element),
            to: boxes("ToRecipients"),
            cc: boxes("CcRecipients"),
            is_read: e.child_bool("IsRead"),
            is_draft: e.child_bool("IsDraft"),
            internet_message_id: text(e, "InternetMessageId"),
            received: e.child_text("DateTimeReceived").and_then(parse_datetime),
            sent: e.child_text("DateTimeSent").and_then(parse_datetime),
            size: e.child_num("Size"),
            extended: ExtendedProperty::all_from(e),
        }
    }
}

impl Item {
    /// Reads an item element of any type; unknown types become [`Item::Other`].
    pub fn from_element(e: &Element) -> Item {
        match e.name.as_str() {
            "Contact" => Item::Contact(Contact::from_element(e)),
            "CalendarItem" => Item::CalendarItem(CalendarItem::from_element(e)),
            "Task" => Item::Task(Task::from_element(e)),
            "Message"
            | "MeetingRequest"
            | "MeetingResponse"
            | "MeetingCancellation"
            | "MeetingMessage" => Item::Message(Message::from_element(e)),
            other => Item::Other {
                id: e.child("ItemId").and_then(ItemId::from_element),
                kind: other.to_string(),
            },
        }
    }

    /// The item's id, when read from Exchange.
    pub fn id(&self) -> Option<&ItemId> {
        match self {
            Item::Contact(c) => c.id.as_ref(),
            Item::CalendarItem(c) => c.id.as_ref(),
            Item::Task(t) => t.id.as_ref(),
            Item::Message(m) => m.id.as_ref(),
            Item::Other { id, .. } => id.as_ref(),
        }
    }

    /// The folder the item is in, when the shape asked for `item:ParentFolderId`.
    pub fn parent(&self) -> Option<&ItemId> {
        match self {
            Item::Contact(c) => c.parent.as_ref(),
            Item::CalendarItem(c) => c.parent.as_ref(),
            Item::Task(t) => t.parent.as_ref(),
            Item::Message(m) => m.parent.as_ref(),
            Item::Other { .. } => None,
        }
    }

    /// The item's extended properties.
    pub fn extended(&self) -> &[ExtendedProperty] {
        match self {
            Item::Contact(c) => &c.extended,
            Item::CalendarItem(c) => &c.extended,
            Item::Task(t) => &t.extended,
            Item::Message(m) => &m.extended,
            Item::Other { .. } => &[],
        }
    }

    /// Writes the item for CreateItem; [`Item::Other`] writes nothing (it cannot be created).
    pub fn write_create(&self, w: &mut XmlWriter) {
        match self {
            Item::Contact(c) => c.write_create(w),
            Item::CalendarItem(c) => c.write_create(w),
            Item::Task(t) => t.write_create(w),
            Item::Message(m) => m.write_create(w),
            Item::Other { .. } => {}
        }
    }

    /// The updates that make an existing item equal to this one, field by field.
    pub fn updates(&self) -> Vec<FieldUpdate> {
        match self {
            Item::Contact(c) => c.updates(),
            Item::CalendarItem(c) => c.updates(),
            Item::Task(t) => t.updates(),
            Item::Message(m) => m.updates(),
            Item::Other { .. } => Vec::new(),
        }
    }
}
