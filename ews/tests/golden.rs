//! Golden parsing tests: Microsoft-documented samples (../shared/ews-schema/samples) and our own
//! fixtures (tests/fixtures, themselves checked against the schema below) read into the
//! expected typed values, for every operation and every error class.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{NaiveDate, TimeZone, Utc};
use ews::items::*;
use ews::ops::*;
use ews::soap::parse_response;
use ews::streaming::{events_of_envelope, EventKind, StreamEvent, StreamParser};
use ews::types::*;
use ews::Error;

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A sample from ../shared/ews-schema/samples; `None` (skipped, or failed under CI) when absent.
fn sample(name: &str) -> Option<Vec<u8>> {
    let Some(dir) = mailsync_testkit::schema::dir() else {
        mailsync_testkit::require::missing("../shared/ews-schema samples not found");
        return None;
    };
    Some(std::fs::read(dir.join("samples").join(name)).unwrap_or_else(|e| panic!("{name}: {e}")))
}

/// Parses `doc` as the response of `op`.
fn run<O: Operation>(op: &O, doc: &[u8]) -> Result<O::Output, Error> {
    let resp = parse_response(doc)?;
    assert_eq!(resp.body.name, format!("{}Response", O::NAME));
    op.parse(&resp.body)
}

fn id(s: &str, ck: &str) -> ItemId {
    ItemId {
        id: s.into(),
        change_key: Some(ck.into()),
    }
}

fn inbox() -> FolderRef {
    FolderRef::well_known(DistinguishedFolder::Inbox)
}

fn sync_items() -> SyncFolderItems {
    SyncFolderItems {
        folder: inbox(),
        shape: Shape::id_only(),
        sync_state: None,
        ignore: vec![],
        max_changes: 512,
    }
}

/// A GetItem of `n` items (a batch answer is matched to the items asked for).
fn get_item(n: usize) -> GetItem {
    GetItem {
        ids: ids(n),
        shape: Shape::id_only(),
    }
}

fn ids(n: usize) -> Vec<ItemId> {
    (0..n).map(|i| ItemId::new(format!("ID{i}="))).collect()
}

fn contacts(n: usize) -> Vec<Item> {
    vec![Item::Contact(Default::default()); n]
}

#[test]
fn fixtures_are_schema_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "xml"))
        .collect();
    assert!(files.len() >= 15);
    if let Err(out) = mailsync_testkit::schema::validate(&files, true) {
        panic!("fixtures must be valid EWS:\n{out}");
    }
}

#[test]
fn sample_sync_folder_items() {
    let Some(doc) = sample("resp-SyncFolderItems.xml") else {
        return;
    };
    let out = run(&sync_items(), &doc).unwrap();
    assert_eq!(
        out.sync_state,
        "H4sIAAAAAAAEAO29B2AcSZYlJi9tynt/SvvKnl1X1Ve1"
    );
    assert!(out.includes_last);
    assert_eq!(out.changes.len(), 4);
    assert!(
        matches!(&out.changes[0], ItemChange::Create(Item::CalendarItem(c)) if c.id == Some(id("AAMkADEzOTExYjJkLTYz=", "DwAAABYAAADN")))
    );
    assert!(matches!(
        &out.changes[1],
        ItemChange::Update(Item::CalendarItem(_))
    ));
    assert_eq!(
        out.changes[2],
        ItemChange::Delete(id("AAMkADEzOTExYjJkLTYx=", "DwAAABYAAADP"))
    );
    assert_eq!(
        out.changes[3],
        ItemChange::ReadFlagChange {
            id: id("AAMkADEzOTExYjJkLTYw=", "DwAAABYAAADQ"),
            is_read: true
        }
    );
}

#[test]
fn sample_server_version_and_errors() {
    let Some(doc) = sample("resp-GetItem-error.xml") else {
        return;
    };
    let resp = parse_response(&doc).unwrap();
    let v = resp.server_version.unwrap();
    assert_eq!(
        (
            v.major_version,
            v.minor_version,
            v.major_build_number,
            v.minor_build_number
        ),
        (15, 0, 1497, 2)
    );
    assert_eq!(v.version, "V2_23");
    let out = run(&get_item(1), &doc).unwrap();
    assert_eq!(out, vec![Err(Error::NotFound("ErrorItemNotFound".into()))]);
    // One error message for a whole batch is that error, not a count mismatch.
    assert_eq!(
        run(&get_item(3), &doc).unwrap_err(),
        Error::NotFound("ErrorItemNotFound".into())
    );

    let Some(doc) = sample("resp-Fault-schema-validation.xml") else {
        return;
    };
    assert_eq!(
        parse_response(&doc).unwrap_err(),
        Error::Response {
            code: "ErrorSchemaValidation".into(),
            message: "The request failed schema validation.".into()
        }
    );
}

#[test]
fn sample_find_item_calendar_view() {
    let Some(doc) = sample("resp-FindItem-calendarview.xml") else {
        return;
    };
    let op = FindItem {
        folder: FolderRef::well_known(DistinguishedFolder::Calendar),
        shape: Shape::id_only(),
        view: View::Calendar {
            start: Utc::now(),
            end: Utc::now(),
            max: None,
        },
        restriction: None,
    };
    let out = run(&op, &doc).unwrap();
    assert!(!out.items.is_empty());
    for item in &out.items {
        let Item::CalendarItem(c) = item else {
            panic!("{item:?}")
        };
        assert!(
            c.id.is_some() && c.start.is_some() && c.end.is_some(),
            "{c:?}"
        );
    }
}

#[test]
fn sample_subscribe_and_streams() {
    let Some(doc) = sample("resp-Subscribe-streaming.xml") else {
        return;
    };
    let sub = Subscribe {
        folders: vec![inbox()],
        event_types: vec![],
    };
    assert_eq!(
        run(&sub, &doc).unwrap(),
        "JABleGNoMTAwLmV4Y2gwMS5sb2NhbBAAAADnCOm5fsfNTY5pQbdrOyjC"
    );

    let Some(doc) = sample("resp-GetStreamingEvents-closed.xml") else {
        return;
    };
    assert_eq!(
        events_of_envelope(&doc),
        vec![StreamEvent::ConnectionClosed]
    );

    let Some(doc) = sample("resp-GetStreamingEvents-notification-wireformat.xml") else {
        return;
    };
    let events = events_of_envelope(&doc);
    let [StreamEvent::Notification {
        subscription_id,
        events,
    }] = events.as_slice()
    else {
        panic!("{events:?}")
    };
    assert_eq!(
        subscription_id,
        "JABleGNoMTAwLmV4Y2gwMS5sb2NhbBAAAADnCOm5fsfNTY5pQbdrOyjC"
    );
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].kind, EventKind::Created);
    assert_eq!(
        events[0].item_id,
        Some(id("AAMkADEzOTExYjJkLTYz=", "DwAAABYAAADN"))
    );
    assert_eq!(
        events[0].timestamp,
        Some(Utc.with_ymd_and_hms(2013, 9, 15, 21, 44, 51).unwrap())
    );
    assert_eq!(events[1].kind, EventKind::Modified);
    assert!(events[1].folder_id.is_some() && events[1].item_id.is_none());
}

#[test]
fn server_busy_fault_gives_the_back_off() {
    assert_eq!(
        parse_response(&fixture("fault-ErrorServerBusy.xml")).unwrap_err(),
        Error::Throttled {
            back_off: Duration::from_millis(297_749),
            code: "ErrorServerBusy".into()
        }
    );
}

#[test]
fn get_item_reads_every_item_type() {
    let out = run(&get_item(5), &fixture("GetItem-all-types.xml")).unwrap();
    let items: Vec<Item> = out.into_iter().map(Result::unwrap).collect();
    let Item::Contact(c) = &items[0] else {
        panic!()
    };
    assert_eq!(c.given_name.as_deref(), Some("Anna"));
    assert_eq!(c.surname.as_deref(), Some("Schmidt"));
    assert_eq!(c.company_name.as_deref(), Some("Muster GmbH"));
    assert_eq!(c.job_title.as_deref(), Some("Einkauf"));
    assert_eq!(
        c.email,
        [
            Some("anna@example.com".into()),
            None,
            Some("anna@home.example".into())
        ]
    );
    assert_eq!(
        c.phones,
        [None, Some("+49 170 1".into()), None],
        "CarPhone is not mapped"
    );
    assert_eq!(c.addresses[0].city.as_deref(), Some("Berlin"));
    assert_eq!(c.addresses[0].postal_code.as_deref(), Some("10115"));
    assert_eq!(c.notes.as_deref(), Some("VIP & Stammkundin"));
    assert_eq!(c.categories, vec!["Kunde", "VIP"]);
    let stamp = ExtendedFieldUri::string("{6c7d6b06-4a4b-4c11-9d4b-6d61696c7379}", "CrmId");
    assert!(
        c.extended
            .iter()
            .any(|p| p.uri.same_as(&stamp) && p.value == "contact:42"),
        "{:?}",
        c.extended
    );

    let Item::CalendarItem(a) = &items[1] else {
        panic!()
    };
    assert_eq!(a.kind, CalendarItemKind::RecurringMaster);
    assert_eq!(a.reminder_minutes, Some(10));
    assert_eq!(a.free_busy, FreeBusy::Oof);
    assert_eq!(
        a.start,
        Some(Utc.with_ymd_and_hms(2026, 1, 5, 8, 0, 0).unwrap())
    );
    assert_eq!(
        a.start_time_zone.as_deref(),
        Some("W. Europe Standard Time")
    );
    assert_eq!(
        a.recurrence,
        Some(Recurrence {
            pattern: RecurrencePattern::RelativeMonthly {
                interval: 1,
                day: "Tuesday".into(),
                index: "Second".into()
            },
            range: RecurrenceRange::Numbered {
                start: NaiveDate::from_ymd_opt(2026, 1, 13).unwrap(),
                count: 12
            },
        })
    );
    assert_eq!(a.modified_occurrences.len(), 1);
    assert_eq!(
        a.modified_occurrences[0].original_start,
        Some(Utc.with_ymd_and_hms(2026, 2, 10, 8, 0, 0).unwrap())
    );
    assert_eq!(a.deleted_occurrences.len(), 1);

    let Item::Task(t) = &items[2] else { panic!() };
    assert_eq!(
        (t.status, t.importance, t.percent_complete),
        (TaskStatus::InProgress, Importance::High, 50.0)
    );

    let Item::Message(m) = &items[3] else {
        panic!()
    };
    assert_eq!(
        m.mime.as_deref(),
        Some(&b"From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n"[..]),
        "base64 across a line break"
    );
    assert_eq!(m.is_read, Some(true));
    assert_eq!(m.internet_message_id.as_deref(), Some("<abc@example.com>"));
    assert_eq!(
        m.from.as_ref().and_then(|f| f.email.as_deref()),
        Some("a@example.com")
    );
    assert_eq!(m.to.len(), 1);
    assert_eq!(m.size, Some(1234));

    assert!(matches!(&items[4], Item::Other { kind, .. } if kind == "DistributionList"));
}

#[test]
fn batch_errors_are_per_item_in_order() {
    let out = run(&get_item(4), &fixture("GetItem-batch-stopped.xml")).unwrap();
    assert_eq!(out.len(), 4);
    assert!(out[0].is_ok());
    assert_eq!(out[1], Err(Error::NotFound("ErrorItemNotFound".into())));
    assert!(matches!(&out[2], Err(Error::Denied { code, .. }) if code == "ErrorAccessDenied"));
    assert!(
        matches!(&out[3], Err(Error::Transient(m)) if m.starts_with("ErrorBatchProcessingStopped"))
    );
}

#[test]
fn sync_folder_items_all_change_kinds_and_paging() {
    let out = run(&sync_items(), &fixture("SyncFolderItems-full.xml")).unwrap();
    assert_eq!(out.sync_state, "STATE-2");
    assert!(!out.includes_last, "0 means more to come");
    assert_eq!(
        out.changes.len(),
        4,
        "unknown change kinds are skipped: {:?}",
        out.changes
    );
    assert!(
        matches!(&out.changes[0], ItemChange::Create(Item::Message(m)) if m.is_read == Some(false))
    );
    assert_eq!(
        out.changes[3],
        ItemChange::ReadFlagChange {
            id: id("M2=", "d"),
            is_read: true
        }
    );
    assert_eq!(
        run(&sync_items(), &fixture("SyncFolderItems-invalid-state.xml")).unwrap_err(),
        Error::InvalidSyncState("ErrorInvalidSyncStateData".into())
    );
}

#[test]
fn hierarchy_changes() {
    let op = SyncFolderHierarchy {
        folder: None,
        shape: Shape::id_only(),
        sync_state: None,
    };
    let out = run(&op, &fixture("SyncFolderHierarchy.xml")).unwrap();
    assert_eq!(out.sync_state, "H-1");
    assert_eq!(out.changes.len(), 4);
    let FolderChange::Create(f) = &out.changes[0] else {
        panic!()
    };
    assert_eq!(f.display_name.as_deref(), Some("Posteingang"));
    assert_eq!(
        (f.total_count, f.child_folder_count, f.unread_count),
        (Some(3), Some(1), Some(2))
    );
    assert!(
        matches!(&out.changes[1], FolderChange::Create(f) if f.folder_class.as_deref() == Some("IPF.Appointment"))
    );
    assert!(
        matches!(&out.changes[2], FolderChange::Update(f) if f.display_name.as_deref() == Some("Projekte 2026"))
    );
    assert_eq!(out.changes[3], FolderChange::Delete(id("F4=", "AS")));
}

#[test]
fn find_item_paging() {
    let op = FindItem {
        folder: inbox(),
        shape: Shape::id_only(),
        view: View::IndexedPage { offset: 0, max: 2 },
        restriction: None,
    };
    let out = run(&op, &fixture("FindItem-paged.xml")).unwrap();
    assert_eq!(
        (
            out.items.len(),
            out.includes_last,
            out.total,
            out.next_offset
        ),
        (2, false, Some(5), Some(2))
    );
}

#[test]
fn writes_and_their_errors() {
    let create = CreateItem {
        folder: None,
        items: contacts(2),
        disposition: None,
    };
    let out = run(&create, &fixture("CreateItem.xml")).unwrap();
    assert_eq!(out[0], Ok(id("NEW1=", "k1")));
    assert!(
        matches!(&out[1], Err(Error::Response { code, .. }) if code == "ErrorInvalidPropertySet")
    );

    let send = CreateItem {
        folder: None,
        items: contacts(1),
        disposition: Some(MessageDisposition::SendAndSaveCopy),
    };
    assert_eq!(
        run(&send, &fixture("CreateItem-sent.xml")).unwrap(),
        vec![Ok(ItemId::new(""))]
    );
    let save = CreateItem {
        folder: None,
        items: contacts(1),
        disposition: Some(MessageDisposition::SaveOnly),
    };
    assert!(
        matches!(
            &run(&save, &fixture("CreateItem-sent.xml")).unwrap()[0],
            Err(Error::Malformed(_))
        ),
        "a saved item must come back with an id"
    );

    let update = UpdateItem {
        changes: ids(2)
            .into_iter()
            .map(|id| ItemUpdate {
                id,
                updates: vec![],
            })
            .collect(),
        conflict: ConflictResolution::NeverOverwrite,
        disposition: None,
        calendar: true,
    };
    let out = run(&update, &fixture("UpdateItem-conflict.xml")).unwrap();
    assert_eq!(out[0], Ok(id("A1=", "k2")));
    assert_eq!(
        out[1],
        Err(Error::Conflict("ErrorIrresolvableConflict".into()))
    );

    let delete = DeleteItem {
        ids: ids(2),
        delete_type: DeleteType::HardDelete,
    };
    assert_eq!(
        run(&delete, &fixture("DeleteItem.xml")).unwrap(),
        vec![Ok(()), Err(Error::NotFound("ErrorItemNotFound".into()))]
    );

    let mv = MoveItem {
        ids: ids(1),
        to: inbox(),
    };
    assert_eq!(
        run(&mv, &fixture("MoveItem.xml")).unwrap(),
        vec![Ok(Some(id("MOVED=", "k")))]
    );

    // An answer that cannot be matched to the items asked for is refused whole.
    assert!(matches!(
        run(&DeleteItem { ids: ids(3), delete_type: DeleteType::HardDelete }, &fixture("DeleteItem.xml")),
        Err(Error::Malformed(m)) if m.contains("3 items")
    ));
    assert!(matches!(
        run(&get_item(1), &fixture("GetItem-all-types.xml")),
        Err(Error::Malformed(_))
    ));
}

#[test]
fn folder_operations() {
    let get = GetFolder {
        folders: vec![],
        shape: Shape::id_only(),
    };
    let out = run(&get, &fixture("GetFolder.xml")).unwrap();
    let f = out[0].as_ref().unwrap();
    assert_eq!(
        (
            f.display_name.as_deref(),
            f.folder_class.as_deref(),
            f.total_count
        ),
        (Some("Kontakte"), Some("IPF.Contact"), Some(12))
    );
    assert_eq!(out[1], Err(Error::NotFound("ErrorFolderNotFound".into())));

    let find = FindFolder {
        parent: inbox(),
        traversal: Traversal::Shallow,
        shape: Shape::id_only(),
    };
    let names: Vec<_> = run(&find, &fixture("FindFolder.xml"))
        .unwrap()
        .into_iter()
        .map(|f| f.display_name.unwrap())
        .collect();
    assert_eq!(names, vec!["Inbox", "Aufgaben"]);

    let create = CreateFolder {
        parent: inbox(),
        folders: vec![],
    };
    assert_eq!(
        run(&create, &fixture("CreateFolder.xml")).unwrap(),
        vec![Ok(id("NEWF=", "AQ"))]
    );
}

#[test]
fn subscriptions() {
    let unsub = Unsubscribe {
        subscription_id: "x".into(),
    };
    run(&unsub, &fixture("Unsubscribe.xml")).unwrap();
    let sub = Subscribe {
        folders: vec![inbox()],
        event_types: vec![],
    };
    assert!(
        matches!(run(&sub, &fixture("Subscribe-denied.xml")), Err(Error::Denied { code, .. }) if code == "ErrorImpersonateUserDenied")
    );
    assert_eq!(
        events_of_envelope(&fixture("GetStreamingEvents-errors.xml")),
        vec![StreamEvent::Error {
            error: Error::SubscriptionGone("ErrorSubscriptionNotFound".into()),
            subscription_ids: vec!["sub-a".into(), "sub-b".into()],
        }]
    );
    assert_eq!(
        events_of_envelope(&fixture("GetStreamingEvents-ok.xml")),
        vec![StreamEvent::ConnectionOk]
    );
}

#[test]
fn unknown_elements_and_any_prefix() {
    let out = run(
        &sync_items(),
        &fixture("odd-prefixes-unknown-elements.xml.noschema"),
    )
    .unwrap();
    assert_eq!(out.sync_state, "S");
    assert_eq!(out.changes.len(), 1);
    let ItemChange::Create(Item::Task(t)) = &out.changes[0] else {
        panic!("{:?}", out.changes)
    };
    assert_eq!(t.subject.as_deref(), Some("with <cdata> & stuff"));
    assert_eq!(
        parse_response(&fixture("odd-prefixes-unknown-elements.xml.noschema"))
            .unwrap()
            .server_version
            .unwrap()
            .minor_version,
        2
    );
}

#[test]
fn wrong_response_shapes_are_malformed() {
    for doc in [
        "<a/>",
        r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"/>"#,
        r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body/></s:Envelope>"#,
        r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultstring>x</faultstring></s:Fault></s:Body></s:Envelope>"#,
    ] {
        assert!(
            matches!(parse_response(doc.as_bytes()), Err(Error::Malformed(_))),
            "{doc}"
        );
    }
    let no_messages = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:GetItemResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"/></s:Body></s:Envelope>"#;
    assert!(matches!(
        run(&get_item(1), no_messages.as_bytes()),
        Err(Error::Malformed(_))
    ));
}

/// Three envelopes (notification, heartbeat, closed) as one streaming body.
fn stream_body() -> Vec<u8> {
    let mut body = Vec::new();
    if let Some(n) = sample("resp-GetStreamingEvents-notification-wireformat.xml") {
        body.extend(n);
    }
    body.extend(fixture("GetStreamingEvents-ok.xml"));
    body.extend(b"\r\n");
    body.extend(fixture("GetStreamingEvents-errors.xml"));
    if let Some(c) = sample("resp-GetStreamingEvents-closed.xml") {
        body.extend(c);
    }
    body
}

#[test]
fn streaming_split_at_every_byte_boundary() {
    let body = stream_body();
    let whole = StreamParser::new().push(&body);
    assert!(whole.len() >= 2, "{whole:?}");
    assert!(whole.contains(&StreamEvent::ConnectionOk));
    // Every split point into two pieces, including inside tags, attribute values and UTF-8.
    for cut in 0..=body.len() {
        let mut p = StreamParser::new();
        let mut got = p.push(&body[..cut]);
        got.extend(p.push(&body[cut..]));
        assert_eq!(got, whole, "split at byte {cut}");
        assert_eq!(p.pending(), 0);
    }
    // And byte by byte.
    let mut p = StreamParser::new();
    let got: Vec<_> = body
        .iter()
        .flat_map(|b| p.push(std::slice::from_ref(b)))
        .collect();
    assert_eq!(got, whole);
}

#[test]
fn streaming_events_arrive_as_soon_as_their_envelope_is_complete() {
    let ok = fixture("GetStreamingEvents-ok.xml");
    let mut p = StreamParser::new();
    assert_eq!(p.push(&ok[..ok.len() - 3]), vec![]);
    assert_eq!(p.push(&ok[ok.len() - 3..]), vec![StreamEvent::ConnectionOk]);
    // A broken envelope is reported and the stream goes on.
    let mut garbage =
        b"<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><oops></s:Envelope>"
            .to_vec();
    garbage.extend(&ok);
    let got = p.push(&garbage);
    assert!(
        matches!(
            &got[0],
            StreamEvent::Error {
                error: Error::Malformed(_),
                ..
            }
        ),
        "{got:?}"
    );
    assert_eq!(got[1], StreamEvent::ConnectionOk);
}
