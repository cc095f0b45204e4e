//! Every request shape the client can produce validates against Microsoft's EWS schema
//! (messages.xsd + types.xsd, through ../shared/ews-schema/validate.py).

use chrono::{NaiveDate, TimeZone, Utc};
use ews::items::*;
use ews::ops::*;
use ews::soap::{envelope, Headers};
use ews::types::*;
use ews::xml::XmlWriter;

const PROPSET: &str = "{6c7d6b06-4a4b-4c11-9d4b-6d61696c7379}";

fn crm_id(v: &str) -> ExtendedProperty {
    ExtendedProperty {
        uri: ExtendedFieldUri::string(PROPSET, "CrmId"),
        value: v.into(),
    }
}

fn full_contact() -> Contact {
    Contact {
        display_name: Some("Anna Schmidt".into()),
        given_name: Some("Anna".into()),
        surname: Some("Schmidt".into()),
        company_name: Some("Muster & Söhne GmbH".into()),
        job_title: Some("Einkauf".into()),
        email: [
            Some("anna@example.com".into()),
            Some("a.schmidt@example.org".into()),
            None,
        ],
        phones: [
            Some("+49 30 1234".into()),
            Some("+49 170 5678".into()),
            None,
        ],
        addresses: [
            PhysicalAddress {
                street: Some("Hauptstr. 1".into()),
                city: Some("Berlin".into()),
                state: None,
                country: Some("Germany".into()),
                postal_code: Some("10115".into()),
            },
            PhysicalAddress::default(),
            PhysicalAddress {
                city: Some("Potsdam".into()),
                ..Default::default()
            },
        ],
        notes: Some("Notizen <mit> Sonderzeichen".into()),
        categories: vec!["Kunde".into(), "VIP".into()],
        extended: vec![crm_id("contact:42")],
        ..Default::default()
    }
}

fn appointment(recurrence: Option<Recurrence>) -> CalendarItem {
    CalendarItem {
        subject: Some("Weekly sync".into()),
        body: Some(Body {
            html: true,
            content: "<p>agenda</p>".into(),
        }),
        start: Some(Utc.with_ymd_and_hms(2026, 1, 5, 8, 0, 0).unwrap()),
        end: Some(Utc.with_ymd_and_hms(2026, 1, 5, 9, 0, 0).unwrap()),
        is_all_day: false,
        location: Some("Room 1".into()),
        reminder_minutes: Some(15),
        free_busy: FreeBusy::Tentative,
        categories: vec!["Projekt".into()],
        uid: Some("040000008200E00074C5B7101A82E008000000001".into()),
        recurrence,
        start_time_zone: Some("W. Europe Standard Time".into()),
        end_time_zone: Some("W. Europe Standard Time".into()),
        extended: vec![crm_id("appointment:7")],
        ..Default::default()
    }
}

fn recurrences() -> Vec<Recurrence> {
    let d = |m, day| NaiveDate::from_ymd_opt(2026, m, day).unwrap();
    vec![
        Recurrence {
            pattern: RecurrencePattern::Daily { interval: 2 },
            range: RecurrenceRange::Numbered {
                start: d(1, 5),
                count: 10,
            },
        },
        Recurrence {
            pattern: RecurrencePattern::Weekly {
                interval: 1,
                days: vec!["Monday".into(), "Wednesday".into()],
            },
            range: RecurrenceRange::EndDate {
                start: d(1, 5),
                end: d(6, 30),
            },
        },
        Recurrence {
            pattern: RecurrencePattern::AbsoluteMonthly {
                interval: 1,
                day_of_month: 15,
            },
            range: RecurrenceRange::NoEnd { start: d(1, 15) },
        },
        Recurrence {
            pattern: RecurrencePattern::RelativeMonthly {
                interval: 2,
                day: "Tuesday".into(),
                index: "Second".into(),
            },
            range: RecurrenceRange::Numbered {
                start: d(1, 13),
                count: 6,
            },
        },
        Recurrence {
            pattern: RecurrencePattern::AbsoluteYearly {
                day_of_month: 24,
                month: 12,
            },
            range: RecurrenceRange::NoEnd { start: d(12, 24) },
        },
        Recurrence {
            pattern: RecurrencePattern::RelativeYearly {
                day: "Thursday".into(),
                index: "Last".into(),
                month: 11,
            },
            range: RecurrenceRange::EndDate {
                start: d(11, 26),
                end: NaiveDate::from_ymd_opt(2030, 12, 31).unwrap(),
            },
        },
    ]
}

fn task() -> Task {
    Task {
        subject: Some("Angebot schreiben".into()),
        body: Some(Body::text("bis Freitag")),
        start_date: Some(Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap()),
        due_date: Some(Utc.with_ymd_and_hms(2026, 2, 6, 0, 0, 0).unwrap()),
        status: TaskStatus::Completed,
        percent_complete: 100.0,
        importance: Importance::High,
        complete_date: Some(Utc.with_ymd_and_hms(2026, 2, 5, 12, 0, 0).unwrap()),
        categories: vec!["Vertrieb".into()],
        extended: vec![crm_id("task:9")],
        ..Default::default()
    }
}

fn message() -> Message {
    Message {
        mime: Some(
            b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nbody\r\n".to_vec(),
        ),
        is_read: Some(false),
        extended: vec![
            crm_id("mail:1"),
            ExtendedProperty {
                uri: ExtendedFieldUri::tag("0x0E07", "Integer"),
                value: "0".into(),
            },
        ],
        ..Default::default()
    }
}

/// Collects request envelopes as numbered files.
struct Requests(Vec<(String, Vec<u8>)>, Option<ews::Client>);

impl Requests {
    fn add(&mut self, name: &str, impersonate: bool, op: &impl Operation) {
        let n = self.0.len();
        let doc = match &self.1 {
            // Delegate access, written by the client as it sends it.
            Some(client) => client.envelope(&ews::Target::delegate("user2@example.com"), op),
            None => {
                let headers = Headers {
                    version: if impersonate {
                        "Exchange2013_SP1"
                    } else {
                        "Exchange2010_SP2"
                    },
                    impersonate: impersonate.then_some("user1@example.com"),
                    delegate: None,
                    time_zone: Some("UTC"),
                };
                envelope(&headers, |w: &mut XmlWriter| op.write_body(w))
            }
        };
        self.0.push((format!("{n:03}-{name}.xml"), doc));
    }
}

fn id(n: usize) -> ItemId {
    ItemId {
        id: format!("AAMkItem{n}="),
        change_key: Some(format!("CQAAAB{n}")),
    }
}

/// Every request shape; with `delegate`, as the client writes them for a mailbox opened by
/// delegate access.
fn requests(delegate: bool) -> Vec<(String, Vec<u8>)> {
    let client = delegate.then(|| {
        let mut cfg = ews::ClientConfig::new(
            url::Url::parse("https://mail.example.com/EWS/Exchange.asmx").unwrap(),
            ews::Auth::None,
        );
        cfg.version = "Exchange2013_SP1".into();
        ews::Client::new(cfg).unwrap()
    });
    let mut r = Requests(Vec::new(), client);
    let inbox = FolderRef::well_known(DistinguishedFolder::Inbox);
    let by_id = FolderRef::Id(ItemId {
        id: "AAMkAD=".into(),
        change_key: Some("AQAAAA==".into()),
    });
    let delegate = FolderRef::Distinguished {
        folder: DistinguishedFolder::Calendar,
        mailbox: Some("user2@example.com".into()),
    };
    let ext = PropertyPath::Extended(ExtendedFieldUri::string(PROPSET, "CrmId"));

    r.add(
        "GetFolder",
        true,
        &GetFolder {
            folders: DistinguishedFolder::ALL
                .iter()
                .map(|(f, _)| FolderRef::well_known(*f))
                .chain([by_id.clone(), delegate.clone()])
                .collect(),
            shape: Shape::all_properties(vec![]),
        },
    );
    r.add(
        "FindFolder",
        true,
        &FindFolder {
            parent: FolderRef::well_known(DistinguishedFolder::MsgFolderRoot),
            traversal: Traversal::Deep,
            shape: Shape::all_properties(vec![]),
        },
    );
    r.add(
        "CreateFolder",
        true,
        &CreateFolder {
            parent: inbox.clone(),
            folders: vec![Folder {
                display_name: Some("Projekte".into()),
                folder_class: Some("IPF.Note".into()),
                ..Default::default()
            }],
        },
    );
    r.add(
        "SyncFolderHierarchy-first",
        true,
        &SyncFolderHierarchy {
            folder: None,
            shape: Shape::all_properties(vec![]),
            sync_state: None,
        },
    );
    r.add(
        "SyncFolderHierarchy-next",
        true,
        &SyncFolderHierarchy {
            folder: Some(FolderRef::well_known(DistinguishedFolder::MsgFolderRoot)),
            shape: Shape::id_only(),
            sync_state: Some("H4sIAAA=".into()),
        },
    );
    r.add(
        "SyncFolderItems-first",
        true,
        &SyncFolderItems {
            folder: inbox.clone(),
            shape: Shape::id_only(),
            sync_state: None,
            ignore: vec![],
            max_changes: 512,
        },
    );
    r.add(
        "SyncFolderItems-next",
        false,
        &SyncFolderItems {
            folder: by_id.clone(),
            shape: Shape {
                base: BaseShape::IdOnly,
                additional: vec![ext.clone(), PropertyPath::field("message:IsRead")],
            },
            sync_state: Some("H4sIAAAAAAAEAO29B2AcSZYlJi9tynt".into()),
            ignore: vec![id(1), id(2)],
            max_changes: 9999,
        },
    );
    r.add(
        "FindItem-paged",
        true,
        &FindItem {
            folder: inbox.clone(),
            shape: Shape::id_only(),
            view: View::IndexedPage {
                offset: 0,
                max: 1000,
            },
            restriction: None,
        },
    );
    r.add(
        "FindItem-by-crm-id",
        true,
        &FindItem {
            folder: FolderRef::well_known(DistinguishedFolder::Contacts),
            shape: Shape {
                base: BaseShape::IdOnly,
                additional: vec![ext.clone()],
            },
            view: View::IndexedPage {
                offset: 200,
                max: 100,
            },
            restriction: Some(Restriction::IsEqualTo(ext.clone(), "contact:42".into())),
        },
    );
    r.add(
        "FindItem-calendarview",
        false,
        &FindItem {
            folder: delegate.clone(),
            shape: Shape {
                base: BaseShape::Default,
                additional: vec![PropertyPath::field("calendar:UID")],
            },
            view: View::Calendar {
                start: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
                end: Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap(),
                max: Some(500),
            },
            restriction: None,
        },
    );
    r.add(
        "FindItem-and-or",
        true,
        &FindItem {
            folder: FolderRef::well_known(DistinguishedFolder::Calendar),
            shape: Shape::id_only(),
            view: View::IndexedPage { offset: 0, max: 10 },
            restriction: Some(Restriction::And(vec![
                Restriction::IsGreaterThanOrEqualTo(
                    PropertyPath::field("calendar:Start"),
                    "2026-01-01T00:00:00Z".into(),
                ),
                Restriction::Or(vec![
                    Restriction::IsLessThan(
                        PropertyPath::field("calendar:Start"),
                        "2026-02-01T00:00:00Z".into(),
                    ),
                    Restriction::IsEqualTo(PropertyPath::field("calendar:UID"), "x".into()),
                ]),
            ])),
        },
    );
    r.add(
        "GetItem-all-mime-ext",
        true,
        &GetItem {
            ids: vec![id(1), ItemId::new("AAMkNoCk=")],
            shape: Shape {
                base: BaseShape::AllProperties,
                additional: vec![
                    PropertyPath::field("item:MimeContent"),
                    ext.clone(),
                    PropertyPath::indexed("contacts:EmailAddress", "EmailAddress1"),
                ],
            },
        },
    );
    r.add(
        "GetItem-default",
        false,
        &GetItem {
            ids: vec![id(3)],
            shape: Shape {
                base: BaseShape::Default,
                additional: vec![],
            },
        },
    );

    let mut all_items = vec![
        Item::Contact(full_contact()),
        Item::Contact(Contact {
            given_name: Some("Min".into()),
            ..Default::default()
        }),
        Item::Task(task()),
        Item::Task(Task {
            subject: Some("min".into()),
            ..Default::default()
        }),
        Item::CalendarItem(appointment(None)),
    ];
    all_items.extend(
        recurrences()
            .into_iter()
            .map(|rec| Item::CalendarItem(appointment(Some(rec)))),
    );
    all_items.push(Item::CalendarItem(CalendarItem {
        subject: Some("all day".into()),
        start: Some(Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap()),
        end: Some(Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap()),
        is_all_day: true,
        ..Default::default()
    }));
    for (n, item) in all_items.iter().enumerate() {
        r.add(
            &format!("CreateItem-{n}"),
            true,
            &CreateItem {
                folder: Some(by_id.clone()),
                items: vec![item.clone()],
                disposition: None,
            },
        );
        r.add(
            &format!("UpdateItem-{n}"),
            true,
            &UpdateItem {
                changes: vec![ItemUpdate {
                    id: id(n),
                    updates: item.updates(),
                }],
                conflict: ConflictResolution::NeverOverwrite,
                disposition: None,
                calendar: matches!(item, Item::CalendarItem(_)),
            },
        );
    }
    r.add(
        "CreateItem-batch",
        true,
        &CreateItem {
            folder: None,
            items: vec![Item::Contact(full_contact()); 3],
            disposition: None,
        },
    );
    for (n, d) in [
        MessageDisposition::SaveOnly,
        MessageDisposition::SendAndSaveCopy,
        MessageDisposition::SendOnly,
    ]
    .into_iter()
    .enumerate()
    {
        r.add(
            &format!("CreateItem-message{n}"),
            true,
            &CreateItem {
                folder: Some(FolderRef::well_known(DistinguishedFolder::SentItems)),
                items: vec![Item::Message(message())],
                disposition: Some(d),
            },
        );
    }
    let plain = Message {
        subject: Some("no mime".into()),
        to: vec![Mailbox {
            name: Some("B".into()),
            email: Some("b@example.com".into()),
        }],
        cc: vec![Mailbox {
            name: None,
            email: Some("c@example.com".into()),
        }],
        is_read: Some(true),
        ..Default::default()
    };
    r.add(
        "CreateItem-plain-message",
        true,
        &CreateItem {
            folder: None,
            items: vec![Item::Message(plain)],
            disposition: Some(MessageDisposition::SendAndSaveCopy),
        },
    );
    r.add(
        "UpdateItem-isread",
        true,
        &UpdateItem {
            changes: vec![ItemUpdate {
                id: id(5),
                updates: Item::Message(Message {
                    is_read: Some(true),
                    ..Default::default()
                })
                .updates(),
            }],
            conflict: ConflictResolution::AlwaysOverwrite,
            disposition: Some(MessageDisposition::SaveOnly),
            calendar: false,
        },
    );
    r.add(
        "UpdateItem-deletes",
        true,
        &UpdateItem {
            changes: vec![ItemUpdate {
                id: id(6),
                updates: Item::Contact(Contact::default()).updates(),
            }],
            conflict: ConflictResolution::AutoResolve,
            disposition: None,
            calendar: false,
        },
    );
    for (n, t) in [
        DeleteType::HardDelete,
        DeleteType::SoftDelete,
        DeleteType::MoveToDeletedItems,
    ]
    .into_iter()
    .enumerate()
    {
        r.add(
            &format!("DeleteItem{n}"),
            true,
            &DeleteItem {
                ids: vec![id(1), id(2)],
                delete_type: t,
            },
        );
    }
    r.add(
        "MoveItem",
        true,
        &MoveItem {
            ids: vec![id(1)],
            to: FolderRef::well_known(DistinguishedFolder::DeletedItems),
        },
    );
    r.add(
        "Subscribe",
        true,
        &Subscribe {
            folders: vec![inbox.clone(), by_id.clone()],
            event_types: vec![],
        },
    );
    r.add(
        "Subscribe-all",
        true,
        &Subscribe {
            folders: vec![],
            event_types: vec![],
        },
    );
    r.add(
        "UpdateFolder",
        true,
        &UpdateFolder {
            folder: id(3),
            display_name: "Kunden & Partner".into(),
        },
    );
    r.add(
        "MoveFolder",
        true,
        &MoveFolder {
            folder: id(3),
            to: FolderRef::well_known(DistinguishedFolder::Inbox),
        },
    );
    r.add(
        "DeleteFolder",
        true,
        &DeleteFolder {
            folder: id(3),
            delete_type: DeleteType::MoveToDeletedItems,
        },
    );
    r.add(
        "Subscribe-one",
        false,
        &Subscribe {
            folders: vec![FolderRef::well_known(DistinguishedFolder::Calendar)],
            event_types: vec!["CreatedEvent".into()],
        },
    );
    r.add(
        "GetStreamingEvents",
        false,
        &GetStreamingEvents {
            subscription_ids: (0..200).map(|i| format!("sub{i}")).collect(),
            connection_timeout_minutes: 30,
        },
    );
    r.add(
        "Unsubscribe",
        true,
        &Unsubscribe {
            subscription_id: "sub0".into(),
        },
    );
    r.0
}

fn validate_all(reqs: &[(String, Vec<u8>)]) {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (name, body) in reqs {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        files.push(p);
    }
    match mailsync_testkit::schema::validate(&files, true) {
        Ok(Some(out)) => assert_eq!(
            out.lines().filter(|l| l.ends_with(": ok")).count(),
            reqs.len(),
            "{out}"
        ),
        Ok(None) => {}
        Err(out) => panic!("requests do not validate:\n{out}"),
    }
}

#[test]
fn delegate_requests_validate_and_name_the_mailbox_everywhere() {
    let reqs = requests(true);
    let mut distinguished = 0;
    for (name, body) in &reqs {
        let text = String::from_utf8_lossy(body);
        assert!(!text.contains("ExchangeImpersonation"), "{name}: {text}");
        // Every distinguished folder names a mailbox (user2, or the explicit one).
        for part in text.split("<t:DistinguishedFolderId ").skip(1) {
            distinguished += 1;
            let element = &part[..part.find("</t:DistinguishedFolderId>").unwrap_or(0)];
            assert!(
                element.contains("<t:Mailbox><t:EmailAddress>"),
                "{name}: a DistinguishedFolderId without t:Mailbox: {part}"
            );
        }
    }
    assert!(
        distinguished > 20,
        "only {distinguished} distinguished folders seen"
    );
    validate_all(&reqs);
}

#[test]
fn every_request_validates_against_the_official_schema() {
    validate_all(&requests(false));
}

#[test]
fn the_validator_rejects_what_is_wrong() {
    // Proves the schema check above can fail: GetItem with its children out of schema order.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.xml");
    let headers = Headers {
        version: "Exchange2013_SP1",
        impersonate: None,
        delegate: None,
        time_zone: None,
    };
    std::fs::write(
        &p,
        envelope(&headers, |w| {
            w.start("m:GetItem", &[])
                .start("m:ItemIds", &[])
                .empty("t:ItemId", &[("Id", "x")])
                .end("m:ItemIds");
            w.start("m:ItemShape", &[])
                .leaf("t:BaseShape", "IdOnly")
                .end("m:ItemShape")
                .end("m:GetItem");
        }),
    )
    .unwrap();
    match mailsync_testkit::schema::validate(&[p], true) {
        Ok(Some(out)) => panic!("an invalid request passed: {out}"),
        Ok(None) => {}
        Err(out) => assert!(out.contains("INVALID"), "{out}"),
    }
}
