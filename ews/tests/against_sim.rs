//! The typed client against ews-sim: the operations mailsync relies on, end to end over HTTP,
//! with impersonation, OAuth2 tokens, Autodiscover and streaming.

use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, TimeZone, Utc};
use ews::autodiscover::Autodiscover;
use ews::client::{Auth, Client, ClientConfig, OAuth2Tokens, Target};
use ews::items::*;
use ews::ops::*;
use ews::streaming::{EventKind, StreamEvent};
use ews::types::*;
use ews::Error;
use ews_sim::server::{self, Running, SimConfig};
use futures_util::StreamExt;

const PROPSET: &str = "6c7d6b06-4a4b-4c11-9d4b-6d61696c7379";

async fn sim() -> Running {
    server::start(SimConfig {
        mailboxes: 3,
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

fn client(sim: &Running) -> Client {
    let mut cfg = ClientConfig::new(
        url::Url::parse(&sim.ews_url()).unwrap(),
        Auth::Basic {
            username: "svc".into(),
            password: "secret".into(),
        },
    );
    cfg.allow_http = true;
    cfg.version = "Exchange2013_SP1".into();
    Client::new(cfg).unwrap()
}

fn crm_id(v: &str) -> ExtendedProperty {
    ExtendedProperty {
        uri: ExtendedFieldUri::string(PROPSET, "CrmId"),
        value: v.into(),
    }
}

fn ext_path() -> PropertyPath {
    PropertyPath::Extended(ExtendedFieldUri::string(PROPSET, "CrmId"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_round_trip_and_are_found_by_crm_id() {
    let sim = sim().await;
    let c = client(&sim);
    let t = Target::impersonating("user1@example.com");
    let contact = Contact {
        given_name: Some("Anna".into()),
        surname: Some("Schmidt".into()),
        company_name: Some("Muster GmbH".into()),
        job_title: Some("Einkauf".into()),
        email: [
            Some("anna@example.com".into()),
            None,
            Some("anna@home.example".into()),
        ],
        phones: [Some("+49 30 1".into()), Some("+49 170 2".into()), None],
        addresses: [
            PhysicalAddress {
                street: Some("Hauptstr. 1".into()),
                city: Some("Berlin".into()),
                postal_code: Some("10115".into()),
                country: Some("Germany".into()),
                state: None,
            },
            PhysicalAddress::default(),
            PhysicalAddress::default(),
        ],
        notes: Some("Notiz".into()),
        categories: vec!["Kunde".into()],
        extended: vec![crm_id("contact:42")],
        ..Default::default()
    };
    let contacts = FolderRef::well_known(DistinguishedFolder::Contacts);
    let created = c
        .call(
            &t,
            &CreateItem {
                folder: Some(contacts.clone()),
                items: vec![Item::Contact(contact.clone())],
                disposition: None,
            },
        )
        .await
        .unwrap();
    let id = created.output[0].clone().unwrap();
    assert!(created.server_version.is_some());

    let shape = Shape::all_properties(vec![ext_path()]);
    let got = c
        .call(
            &t,
            &GetItem {
                ids: vec![id.clone()],
                shape: shape.clone(),
            },
        )
        .await
        .unwrap()
        .output
        .remove(0)
        .unwrap();
    let Item::Contact(g) = got else {
        panic!("{got:?}")
    };
    assert_eq!(
        (
            g.given_name.as_deref(),
            g.surname.as_deref(),
            g.company_name.as_deref(),
            g.job_title.as_deref()
        ),
        (
            Some("Anna"),
            Some("Schmidt"),
            Some("Muster GmbH"),
            Some("Einkauf")
        )
    );
    assert_eq!(g.email, contact.email);
    assert_eq!(g.phones, contact.phones);
    assert_eq!(g.addresses[0], contact.addresses[0]);
    assert_eq!(g.notes.as_deref(), Some("Notiz"));
    assert_eq!(g.categories, vec!["Kunde"]);
    assert_eq!(g.extended[0].value, "contact:42");

    // Field updates: change one e-mail, drop a phone, set a city on the home address.
    let mut changed = g.clone();
    changed.email[0] = Some("anna.schmidt@example.com".into());
    changed.phones[1] = None;
    changed.addresses[1].city = Some("Potsdam".into());
    let wanted = [
        "contacts:EmailAddress[EmailAddress1]",
        "contacts:PhoneNumber[MobilePhone]",
        "contacts:PhysicalAddress:City[Home]",
    ];
    let updates: Vec<FieldUpdate> = Item::Contact(changed)
        .updates()
        .into_iter()
        .filter(|u| wanted.contains(&u.key().as_str()))
        .collect();
    assert_eq!(updates.len(), 3);
    let up = UpdateItem {
        changes: vec![ItemUpdate {
            id: g.id.clone().unwrap(),
            updates,
        }],
        conflict: ConflictResolution::NeverOverwrite,
        disposition: None,
        calendar: false,
    };
    let new_id = c.call(&t, &up).await.unwrap().output.remove(0).unwrap();
    assert_ne!(new_id.change_key, g.id.as_ref().unwrap().change_key);
    let Item::Contact(after) = c
        .call(
            &t,
            &GetItem {
                ids: vec![new_id.clone()],
                shape,
            },
        )
        .await
        .unwrap()
        .output
        .remove(0)
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        after.email,
        [
            Some("anna.schmidt@example.com".into()),
            None,
            Some("anna@home.example".into())
        ]
    );
    assert_eq!(after.phones, [Some("+49 30 1".into()), None, None]);
    assert_eq!(after.addresses[1].city.as_deref(), Some("Potsdam"));
    assert_eq!(
        after.addresses[0].city.as_deref(),
        Some("Berlin"),
        "the other address is untouched"
    );

    // The old change key is stale now.
    let stale = UpdateItem {
        changes: vec![ItemUpdate {
            id: g.id.clone().unwrap(),
            updates: vec![],
        }],
        conflict: ConflictResolution::NeverOverwrite,
        disposition: None,
        calendar: false,
    };
    assert_eq!(
        c.call(&t, &stale).await.unwrap().output[0],
        Err(Error::Conflict("ErrorIrresolvableConflict".into()))
    );

    // Found by its stamped CRM id.
    let find = FindItem {
        folder: contacts,
        shape: Shape {
            base: BaseShape::IdOnly,
            additional: vec![ext_path()],
        },
        view: View::IndexedPage { offset: 0, max: 10 },
        restriction: Some(Restriction::IsEqualTo(ext_path(), "contact:42".into())),
    };
    let found = c.call(&t, &find).await.unwrap().output;
    assert_eq!(found.items.len(), 1);
    assert_eq!(found.items[0].id().map(|i| &i.id), Some(&id.id));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calendar_tasks_and_sync_folder_items() {
    let sim = sim().await;
    let c = client(&sim);
    let t = Target::impersonating("user2@example.com");
    let cal = FolderRef::well_known(DistinguishedFolder::Calendar);
    let first = c
        .call(
            &t,
            &SyncFolderItems {
                folder: cal.clone(),
                shape: Shape::id_only(),
                sync_state: None,
                ignore: vec![],
                max_changes: 512,
            },
        )
        .await
        .unwrap()
        .output;
    assert!(first.changes.is_empty() && first.includes_last);

    let series = CalendarItem {
        subject: Some("Jour fixe".into()),
        start: Some(Utc.with_ymd_and_hms(2026, 1, 5, 8, 0, 0).unwrap()),
        end: Some(Utc.with_ymd_and_hms(2026, 1, 5, 9, 0, 0).unwrap()),
        reminder_minutes: Some(15),
        recurrence: Some(Recurrence {
            pattern: RecurrencePattern::Weekly {
                interval: 1,
                days: vec!["Monday".into()],
            },
            range: RecurrenceRange::Numbered {
                start: NaiveDate::from_ymd_opt(2026, 1, 5).unwrap(),
                count: 4,
            },
        }),
        extended: vec![crm_id("appointment:1")],
        ..Default::default()
    };
    let task = Task {
        subject: Some("Angebot".into()),
        due_date: Some(Utc.with_ymd_and_hms(2026, 2, 6, 0, 0, 0).unwrap()),
        status: TaskStatus::InProgress,
        percent_complete: 50.0,
        importance: Importance::High,
        ..Default::default()
    };
    let ids = c
        .call(
            &t,
            &CreateItem {
                folder: Some(cal.clone()),
                items: vec![Item::CalendarItem(series)],
                disposition: None,
            },
        )
        .await
        .unwrap()
        .output;
    c.call(
        &t,
        &CreateItem {
            folder: None,
            items: vec![Item::Task(task)],
            disposition: None,
        },
    )
    .await
    .unwrap()
    .output[0]
        .clone()
        .unwrap();

    // The master comes back with its recurrence; the view expands it.
    let shape = Shape::all_properties(vec![ext_path()]);
    let next = c
        .call(
            &t,
            &SyncFolderItems {
                folder: cal.clone(),
                shape,
                sync_state: Some(first.sync_state.clone()),
                ignore: vec![],
                max_changes: 512,
            },
        )
        .await
        .unwrap()
        .output;
    let [ItemChange::Create(Item::CalendarItem(master))] = next.changes.as_slice() else {
        panic!("{:?}", next.changes)
    };
    assert_eq!(master.kind, CalendarItemKind::RecurringMaster);
    assert_eq!(master.reminder_minutes, Some(15));
    assert!(matches!(
        &master.recurrence,
        Some(Recurrence {
            range: RecurrenceRange::Numbered { count: 4, .. },
            ..
        })
    ));
    assert!(
        master.uid.is_some(),
        "the server gives every appointment a UID"
    );
    let view = FindItem {
        folder: cal.clone(),
        shape: Shape {
            base: BaseShape::Default,
            additional: vec![],
        },
        view: View::Calendar {
            start: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            end: Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap(),
            max: None,
        },
        restriction: None,
    };
    let occurrences = c.call(&t, &view).await.unwrap().output.items;
    assert_eq!(occurrences.len(), 4);
    assert!(occurrences
        .iter()
        .all(|o| matches!(o, Item::CalendarItem(ci) if ci.kind == CalendarItemKind::Occurrence)));

    // Delete shows up as a Delete change; a forged state is InvalidSyncState.
    c.call(
        &t,
        &DeleteItem {
            ids: vec![ids[0].clone().unwrap()],
            delete_type: DeleteType::HardDelete,
        },
    )
    .await
    .unwrap()
    .output[0]
        .clone()
        .unwrap();
    let after = c
        .call(
            &t,
            &SyncFolderItems {
                folder: cal.clone(),
                shape: Shape::id_only(),
                sync_state: Some(next.sync_state.clone()),
                ignore: vec![],
                max_changes: 512,
            },
        )
        .await
        .unwrap()
        .output;
    assert!(
        matches!(after.changes.as_slice(), [ItemChange::Delete(_)]),
        "{:?}",
        after.changes
    );
    let forged = SyncFolderItems {
        folder: cal,
        shape: Shape::id_only(),
        sync_state: Some("AAAA".into()),
        ignore: vec![],
        max_changes: 512,
    };
    assert!(matches!(
        c.call(&t, &forged).await,
        Err(Error::InvalidSyncState(_))
    ));

    let tasks = c
        .call(
            &t,
            &FindItem {
                folder: FolderRef::well_known(DistinguishedFolder::Tasks),
                shape: Shape {
                    base: BaseShape::Default,
                    additional: vec![],
                },
                view: View::IndexedPage { offset: 0, max: 10 },
                restriction: None,
            },
        )
        .await
        .unwrap()
        .output
        .items;
    let [Item::Task(tk)] = tasks.as_slice() else {
        panic!("{tasks:?}")
    };
    assert_eq!(
        (tk.status, tk.percent_complete, tk.importance),
        (TaskStatus::InProgress, 50.0, Importance::High)
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_mime_moves_read_flags_folders_and_sending() {
    let sim = sim().await;
    let c = client(&sim);
    let t = Target::impersonating("user1@example.com");
    let mime = b"From: user1@example.com\r\nTo: user2@example.com\r\nSubject: Angebot\r\nMessage-ID: <m1@example.com>\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nHallo\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAECAwQFBgcICQ==\r\n--b--\r\n".to_vec();
    let inbox = FolderRef::well_known(DistinguishedFolder::Inbox);
    let made = c
        .call(
            &t,
            &CreateItem {
                folder: Some(inbox.clone()),
                items: vec![Item::Message(Message {
                    mime: Some(mime.clone()),
                    is_read: Some(false),
                    ..Default::default()
                })],
                disposition: Some(MessageDisposition::SaveOnly),
            },
        )
        .await
        .unwrap()
        .output;
    let id = made[0].clone().unwrap();
    let sync0 = c
        .call(
            &t,
            &SyncFolderItems {
                folder: inbox.clone(),
                shape: Shape::id_only(),
                sync_state: None,
                ignore: vec![],
                max_changes: 512,
            },
        )
        .await
        .unwrap()
        .output;
    let mime_shape = Shape {
        base: BaseShape::IdOnly,
        additional: vec![
            PropertyPath::field("item:MimeContent"),
            PropertyPath::field("message:IsRead"),
            PropertyPath::field("message:InternetMessageId"),
        ],
    };
    let Item::Message(m) = c
        .call(
            &t,
            &GetItem {
                ids: vec![id.clone()],
                shape: mime_shape.clone(),
            },
        )
        .await
        .unwrap()
        .output
        .remove(0)
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        m.mime.as_deref(),
        Some(mime.as_slice()),
        "MIME byte for byte, attachment included"
    );
    assert_eq!(m.internet_message_id.as_deref(), Some("<m1@example.com>"));

    // Read flag: a ReadFlagChange, not an update.
    let read = Item::Message(Message {
        is_read: Some(true),
        ..Default::default()
    })
    .updates();
    let id2 = c
        .call(
            &t,
            &UpdateItem {
                changes: vec![ItemUpdate {
                    id: id.clone(),
                    updates: read,
                }],
                conflict: ConflictResolution::AutoResolve,
                disposition: Some(MessageDisposition::SaveOnly),
                calendar: false,
            },
        )
        .await
        .unwrap()
        .output
        .remove(0)
        .unwrap();
    let sync1 = c
        .call(
            &t,
            &SyncFolderItems {
                folder: inbox.clone(),
                shape: Shape::id_only(),
                sync_state: Some(sync0.sync_state),
                ignore: vec![],
                max_changes: 512,
            },
        )
        .await
        .unwrap()
        .output;
    assert_eq!(
        sync1.changes,
        vec![ItemChange::ReadFlagChange {
            id: ItemId {
                id: id.id.clone(),
                change_key: id2.change_key.clone()
            },
            is_read: true
        }]
    );

    // A folder, a move into it (new id), and the hierarchy sync sees the folder.
    let folder = c
        .call(
            &t,
            &CreateFolder {
                parent: inbox.clone(),
                folders: vec![Folder {
                    display_name: Some("Projekte".into()),
                    folder_class: Some("IPF.Note".into()),
                    ..Default::default()
                }],
            },
        )
        .await
        .unwrap()
        .output
        .remove(0)
        .unwrap();
    let moved = c
        .call(
            &t,
            &MoveItem {
                ids: vec![id2.clone()],
                to: FolderRef::Id(folder.clone()),
            },
        )
        .await
        .unwrap()
        .output
        .remove(0)
        .unwrap()
        .unwrap();
    assert_ne!(moved.id, id.id, "a moved item has a new id");
    assert!(matches!(
        c.call(
            &t,
            &GetItem {
                ids: vec![id.clone()],
                shape: Shape::id_only()
            }
        )
        .await
        .unwrap()
        .output[0],
        Err(Error::NotFound(_))
    ));
    let h = c
        .call(
            &t,
            &SyncFolderHierarchy {
                folder: Some(FolderRef::well_known(DistinguishedFolder::MsgFolderRoot)),
                shape: Shape::all_properties(vec![]),
                sync_state: None,
            },
        )
        .await
        .unwrap()
        .output;
    assert!(h.changes.iter().any(
        |ch| matches!(ch, FolderChange::Create(f) if f.display_name.as_deref() == Some("Projekte"))
    ));
    let subs = c
        .call(
            &t,
            &FindFolder {
                parent: inbox,
                traversal: Traversal::Shallow,
                shape: Shape::all_properties(vec![]),
            },
        )
        .await
        .unwrap()
        .output;
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].total_count, Some(1));

    // Sending: a copy lands in Sent Items, the recipient's inbox gets the mail.
    let send = CreateItem {
        folder: Some(FolderRef::well_known(DistinguishedFolder::SentItems)),
        items: vec![Item::Message(Message {
            mime: Some(mime.clone()),
            ..Default::default()
        })],
        disposition: Some(MessageDisposition::SendAndSaveCopy),
    };
    assert_eq!(
        c.call(&t, &send).await.unwrap().output,
        vec![Ok(ItemId::new(""))]
    );
    let count = |mailbox: &'static str, folder: DistinguishedFolder| {
        let c = c.clone();
        async move {
            let op = FindItem {
                folder: FolderRef::well_known(folder),
                shape: Shape::id_only(),
                view: View::IndexedPage {
                    offset: 0,
                    max: 100,
                },
                restriction: None,
            };
            c.call(&Target::impersonating(mailbox), &op)
                .await
                .unwrap()
                .output
                .items
                .len()
        }
    };
    assert_eq!(
        count("user1@example.com", DistinguishedFolder::SentItems).await,
        1
    );
    assert_eq!(
        count("user2@example.com", DistinguishedFolder::Inbox).await,
        1
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_oauth2_autodiscover_and_errors() {
    let sim = sim().await;
    // OAuth2 app-only tokens from the simulator's token endpoint.
    let token_url = url::Url::parse(&format!("{}/sim/oauth2/token", sim.base_url())).unwrap();
    let tokens = Arc::new(OAuth2Tokens::new(
        token_url,
        "mailsync-app",
        "app-secret",
        "https://outlook.office365.com/.default",
    ));
    let mut cfg = ClientConfig::new(
        url::Url::parse(&sim.ews_url()).unwrap(),
        Auth::OAuth2(tokens),
    );
    cfg.allow_http = true;
    let c = Client::new(cfg).unwrap();
    let t = Target::impersonating("user3@example.com");
    let sub = c
        .call(
            &t,
            &Subscribe {
                folders: vec![FolderRef::well_known(DistinguishedFolder::Inbox)],
                event_types: vec![],
            },
        )
        .await
        .unwrap()
        .output;
    let mut stream = Box::pin(
        c.stream(
            &t,
            &GetStreamingEvents {
                subscription_ids: vec![sub.clone()],
                connection_timeout_minutes: 1,
            },
        )
        .await
        .unwrap(),
    );
    assert_eq!(stream.next().await, Some(StreamEvent::ConnectionOk));
    let http = reqwest::Client::new();
    http.post(format!(
        "{}/sim/mailboxes/user3@example.com/items",
        sim.base_url()
    ))
    .json(
        &serde_json::json!({"folder": "inbox", "type": "Message", "fields": {"Subject": "hello"}}),
    )
    .send()
    .await
    .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap();
    let StreamEvent::Notification {
        subscription_id,
        events,
    } = ev
    else {
        panic!("{ev:?}")
    };
    assert_eq!(subscription_id, sub);
    assert!(events
        .iter()
        .any(|e| e.kind == EventKind::Created && e.item_id.is_some()));
    assert!(events.iter().any(|e| e.kind == EventKind::NewMail));
    c.call(
        &t,
        &Unsubscribe {
            subscription_id: sub.clone(),
        },
    )
    .await
    .unwrap();

    // Wrong app secret: Unauthorized.
    let bad = Arc::new(OAuth2Tokens::new(
        url::Url::parse(&format!("{}/sim/oauth2/token", sim.base_url())).unwrap(),
        "mailsync-app",
        "nope",
        "s",
    ));
    let mut cfg = ClientConfig::new(url::Url::parse(&sim.ews_url()).unwrap(), Auth::OAuth2(bad));
    cfg.allow_http = true;
    assert!(matches!(
        Client::new(cfg)
            .unwrap()
            .call(
                &t,
                &Unsubscribe {
                    subscription_id: "x".into()
                }
            )
            .await,
        Err(Error::Unauthorized(_))
    ));

    // A user without the impersonation right is Denied; ErrorServerBusy is Throttled.
    let mut cfg = ClientConfig::new(
        url::Url::parse(&sim.ews_url()).unwrap(),
        Auth::Basic {
            username: "user1@example.com".into(),
            password: "password".into(),
        },
    );
    cfg.allow_http = true;
    let user = Client::new(cfg).unwrap();
    let op = GetFolder {
        folders: vec![FolderRef::well_known(DistinguishedFolder::Inbox)],
        shape: Shape::id_only(),
    };
    assert!(
        matches!(user.call(&Target::impersonating("user2@example.com"), &op).await, Err(Error::Denied { code, .. }) if code == "ErrorImpersonateUserDenied")
    );
    http.post(format!("{}/sim/faults", sim.base_url()))
        .json(
            &serde_json::json!({"error_code": "ErrorServerBusy", "back_off_ms": 1234, "count": 1}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        user.call(&Target::own("user1@example.com"), &op)
            .await
            .unwrap_err(),
        Error::Throttled {
            back_off: Duration::from_millis(1234),
            code: "ErrorServerBusy".into()
        }
    );

    // Autodiscover finds the simulator's EWS URL (http allowed for the test), both protocols.
    let ad = Autodiscover::new("user2@example.com", "password", true).unwrap();
    for file in ["autodiscover.svc", "autodiscover.xml"] {
        let url = url::Url::parse(&format!("{}/autodiscover/{file}", sim.base_url())).unwrap();
        let found = ad.discover_at("user2@example.com", &[url]).await.unwrap();
        assert_eq!(found.ews_url.as_str(), sim.ews_url(), "{file}");
        if file.ends_with("svc") {
            assert!(found.grouping_information.is_some());
        }
    }
    let unknown = ad
        .discover_at(
            "nobody@example.com",
            &[
                url::Url::parse(&format!("{}/autodiscover/autodiscover.xml", sim.base_url()))
                    .unwrap(),
            ],
        )
        .await;
    assert!(unknown.is_err());
    sim.stop().await;
}

/// Records what the client reports about each request.
#[derive(Debug, Default)]
struct Recorder(std::sync::Mutex<Vec<(&'static str, &'static str)>>);

impl ews::Observer for Recorder {
    fn request_done(&self, operation: &'static str, outcome: &'static str, _elapsed: Duration) {
        self.0.lock().unwrap().push((operation, outcome));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_observer_hears_every_request_with_its_outcome() {
    let sim = sim().await;
    let recorder = Arc::new(Recorder::default());
    let mut cfg = ClientConfig::new(
        url::Url::parse(&sim.ews_url()).unwrap(),
        Auth::Basic {
            username: "svc".into(),
            password: "secret".into(),
        },
    );
    cfg.allow_http = true;
    cfg.observer = Some(recorder.clone());
    let c = Client::new(cfg).unwrap();
    let op = GetFolder {
        folders: vec![FolderRef::well_known(DistinguishedFolder::Inbox)],
        shape: Shape::id_only(),
    };
    c.call(&Target::impersonating("user1@example.com"), &op)
        .await
        .unwrap();
    reqwest::Client::new()
        .post(format!("{}/sim/faults", sim.base_url()))
        .json(
            &serde_json::json!({"error_code": "ErrorServerBusy", "back_off_ms": 1000, "count": 1}),
        )
        .send()
        .await
        .unwrap();
    assert!(c
        .call(&Target::impersonating("user1@example.com"), &op)
        .await
        .is_err());
    assert!(c
        .call(&Target::impersonating("nobody@example.com"), &op)
        .await
        .is_err());
    let seen = recorder.0.lock().unwrap().clone();
    assert_eq!(seen[..2], [("GetFolder", "ok"), ("GetFolder", "throttled")]);
    assert_eq!(seen.len(), 3);
    assert_ne!(seen[2].1, "ok");
}

/// A simulator with a delegate account `assistant@example.com` (password `pw`) that holds full
/// access to user1 only.
async fn sim_with_delegate() -> Running {
    server::start(SimConfig {
        mailboxes: 2,
        users: vec![ews_sim::server::UserSpec {
            smtp: "assistant@example.com".into(),
            password: "pw".into(),
            display_name: None,
            impersonation: false,
            full_access: vec!["user1@example.com".into()],
        }],
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

fn client_as(sim: &Running, auth: Auth) -> Client {
    let mut cfg = ClientConfig::new(url::Url::parse(&sim.ews_url()).unwrap(), auth);
    cfg.allow_http = true;
    cfg.version = "Exchange2013_SP1".into();
    Client::new(cfg).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegate_access_reaches_granted_mailboxes_only() {
    let sim = sim_with_delegate().await;
    let c = client_as(
        &sim,
        Auth::Basic {
            username: "assistant@example.com".into(),
            password: "pw".into(),
        },
    );
    let granted = Target::delegate("user1@example.com");
    // Folders, items and sync by delegate access, all in user1's mailbox.
    let create = CreateItem {
        folder: Some(FolderRef::well_known(DistinguishedFolder::Contacts)),
        items: vec![Item::Contact(Contact {
            given_name: Some("Dora".into()),
            surname: Some("Delegate".into()),
            ..Contact::default()
        })],
        disposition: None,
    };
    let created = c.call(&granted, &create).await.unwrap().output;
    let id = created[0].as_ref().unwrap().clone();
    let in_user1 = sim.sim.store.mailbox("user1@example.com").unwrap();
    let in_user1 = in_user1.lock().items.len();
    assert!(in_user1 >= 1, "the contact is in user1's mailbox");
    let sync = c
        .call(
            &granted,
            &SyncFolderItems {
                folder: FolderRef::well_known(DistinguishedFolder::Contacts),
                shape: Shape::id_only(),
                sync_state: None,
                ignore: vec![],
                max_changes: 100,
            },
        )
        .await
        .unwrap()
        .output;
    assert_eq!(sync.changes.len(), 1, "{:?}", sync.changes);
    let got = c
        .call(
            &granted,
            &GetItem {
                ids: vec![id],
                shape: Shape::all_properties(vec![]),
            },
        )
        .await
        .unwrap()
        .output;
    assert!(got[0].is_ok(), "{got:?}");

    // Subscriptions and streaming: folders of the mailbox, by delegate access.
    let sub = c
        .call(
            &granted,
            &Subscribe {
                folders: vec![FolderRef::well_known(DistinguishedFolder::Inbox)],
                event_types: vec![],
            },
        )
        .await
        .unwrap()
        .output;
    let mut stream = Box::pin(
        c.stream(
            &granted,
            &GetStreamingEvents {
                subscription_ids: vec![sub.clone()],
                connection_timeout_minutes: 1,
            },
        )
        .await
        .unwrap(),
    );
    assert_eq!(stream.next().await, Some(StreamEvent::ConnectionOk));
    reqwest::Client::new()
        .post(format!(
            "{}/sim/mailboxes/user1@example.com/items",
            sim.base_url()
        ))
        .json(&serde_json::json!({"folder": "inbox", "type": "Message", "fields": {"Subject": "for the boss"}}))
        .send()
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&event, StreamEvent::Notification { subscription_id, .. } if *subscription_id == sub),
        "{event:?}"
    );
    // SubscribeToAllFolders names no mailbox: the client refuses it for a delegate target
    // instead of silently watching the assistant's own mailbox.
    let all = c
        .call(
            &granted,
            &Subscribe {
                folders: vec![],
                event_types: vec![],
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&all, Error::Request(m) if m.contains("SubscribeToAllFolders")),
        "{all:?}"
    );

    // A mailbox without the grant answers ErrorAccessDenied, item by item, as Exchange does.
    let refused = c
        .call(
            &Target::delegate("user2@example.com"),
            &GetFolder {
                folders: vec![FolderRef::well_known(DistinguishedFolder::Inbox)],
                shape: Shape::id_only(),
            },
        )
        .await
        .unwrap()
        .output;
    assert!(
        matches!(&refused[0], Err(Error::Denied { code, .. }) if code == "ErrorAccessDenied"),
        "{refused:?}"
    );
    // Nor can an item id of the granted mailbox be used in a request for the other one.
    let mixed = c
        .call(
            &Target::delegate("user2@example.com"),
            &SyncFolderItems {
                folder: FolderRef::well_known(DistinguishedFolder::Contacts),
                shape: Shape::id_only(),
                sync_state: None,
                ignore: vec![],
                max_changes: 10,
            },
        )
        .await;
    assert!(
        matches!(&mixed, Err(Error::Denied { code, .. }) if code == "ErrorAccessDenied"),
        "{mixed:?}"
    );
    // The delegate holds no impersonation right.
    let impersonating = c
        .call(
            &Target::impersonating("user1@example.com"),
            &GetFolder {
                folders: vec![FolderRef::well_known(DistinguishedFolder::Inbox)],
                shape: Shape::id_only(),
            },
        )
        .await;
    assert!(
        matches!(&impersonating, Err(Error::Denied { code, .. }) if code == "ErrorImpersonateUserDenied"),
        "{impersonating:?}"
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ntlm_against_the_simulator() {
    let sim = sim_with_delegate().await;
    let inbox = GetFolder {
        folders: vec![FolderRef::well_known(DistinguishedFolder::Inbox)],
        shape: Shape::id_only(),
    };
    let c = client_as(
        &sim,
        Auth::Ntlm {
            username: r"EXAMPLE\svc".into(),
            password: "secret".into(),
        },
    );
    let handshakes = || async {
        reqwest::get(format!("{}/sim/stats", sim.base_url()))
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()["ntlm_handshakes"]
            .as_u64()
            .unwrap()
    };
    for _ in 0..3 {
        let reply = c
            .call(&Target::impersonating("user2@example.com"), &inbox)
            .await
            .unwrap();
        assert!(reply.output[0].is_ok());
    }
    assert_eq!(
        handshakes().await,
        1,
        "one handshake: the authenticated connection carries the later requests"
    );
    let wrong = client_as(
        &sim,
        Auth::Ntlm {
            username: r"EXAMPLE\svc".into(),
            password: "not-the-password".into(),
        },
    );
    let err = wrong
        .call(&Target::impersonating("user2@example.com"), &inbox)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Unauthorized(m) if m.contains("refused the NTLM credentials")),
        "{err:?}"
    );
    // A streaming connection authenticates on a connection of its own.
    let t = Target::impersonating("user2@example.com");
    let sub = c
        .call(
            &t,
            &Subscribe {
                folders: vec![FolderRef::well_known(DistinguishedFolder::Inbox)],
                event_types: vec![],
            },
        )
        .await
        .unwrap()
        .output;
    let mut stream = Box::pin(
        c.stream(
            &t,
            &GetStreamingEvents {
                subscription_ids: vec![sub],
                connection_timeout_minutes: 1,
            },
        )
        .await
        .unwrap(),
    );
    assert_eq!(stream.next().await, Some(StreamEvent::ConnectionOk));
    assert_eq!(
        handshakes().await,
        3,
        "one more for the wrong password and one for the stream's own connection; the Subscribe reused the authenticated one"
    );
    // NTLM with a user principal name, by delegate access.
    let assistant = client_as(
        &sim,
        Auth::Ntlm {
            username: "assistant@example.com".into(),
            password: "pw".into(),
        },
    );
    let reply = assistant
        .call(&Target::delegate("user1@example.com"), &inbox)
        .await
        .unwrap();
    assert!(reply.output[0].is_ok());
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_credentials_get_tokens_the_endpoint_verified() {
    use ews::client::{ClientCertificate, ClientCredential};
    use mailsync_testkit::fixtures;
    let sim = server::start(SimConfig {
        mailboxes: 1,
        oauth_certificate: Some(fixtures::read(fixtures::OAUTH_APP_CERT)),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let token_url = url::Url::parse(&format!("{}/sim/oauth2/token", sim.base_url())).unwrap();
    let credential = |key: &str| {
        ClientCertificate::from_pem(
            &fixtures::read(fixtures::OAUTH_APP_CERT),
            &fixtures::read(key),
        )
        .map(Arc::new)
    };
    let cert = credential(fixtures::OAUTH_APP_KEY).unwrap();
    assert_eq!(cert.thumbprint(), fixtures::OAUTH_APP_X5T);
    // PKCS#1 holds the same key.
    assert_eq!(
        credential(fixtures::OAUTH_APP_KEY_PKCS1)
            .unwrap()
            .thumbprint(),
        fixtures::OAUTH_APP_X5T
    );
    let tokens = |cert: Arc<ClientCertificate>, client_id: &str| {
        Arc::new(OAuth2Tokens::with_credential(
            token_url.clone(),
            client_id,
            ClientCredential::Certificate(cert),
            "https://outlook.office365.com/.default",
        ))
    };
    let inbox = GetFolder {
        folders: vec![FolderRef::well_known(DistinguishedFolder::Inbox)],
        shape: Shape::id_only(),
    };
    let c = client_as(&sim, Auth::OAuth2(tokens(cert.clone(), "mailsync-app")));
    let reply = c
        .call(&Target::impersonating("user1@example.com"), &inbox)
        .await
        .unwrap();
    assert!(reply.output[0].is_ok());

    // A key that is not the certificate's is refused before anything is sent.
    for (key, expected) in [
        (
            fixtures::OTHER_RSA_KEY,
            "does not belong to the certificate",
        ),
        (fixtures::EC_KEY, "not an RSA key"),
    ] {
        let err = credential(key).unwrap_err();
        assert!(
            matches!(&err, Error::Request(m) if m.contains(expected)),
            "{key}: {err:?}"
        );
    }

    // The endpoint checks what it must: the app, the audience, the time, replays.
    let http = reqwest::Client::new();
    let now = chrono::Utc::now().timestamp();
    let post = |assertion: String, client_id: &'static str| {
        let http = http.clone();
        let url = token_url.clone();
        async move {
            let resp = http
                .post(url)
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", assertion.as_str()),
                    ("scope", "https://outlook.office365.com/.default"),
                ])
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.unwrap();
            (
                status,
                body["error_description"].as_str().unwrap_or("").to_string(),
            )
        }
    };
    let good = cert
        .assertion("mailsync-app", token_url.as_str(), now)
        .unwrap();
    assert_eq!(post(good.clone(), "mailsync-app").await.0, 200);
    let cases = [
        (good, "mailsync-app", "already used"),
        (
            cert.assertion("mailsync-app", "https://login.example/other/token", now)
                .unwrap(),
            "mailsync-app",
            "audience",
        ),
        (
            cert.assertion("mailsync-app", token_url.as_str(), now - 3600)
                .unwrap(),
            "mailsync-app",
            "expired",
        ),
        (
            cert.assertion("mailsync-app", token_url.as_str(), now + 3600)
                .unwrap(),
            "mailsync-app",
            "not valid yet",
        ),
        (
            cert.assertion("another-app", token_url.as_str(), now)
                .unwrap(),
            "mailsync-app",
            "iss and sub",
        ),
        (
            "not.a.jwt".to_string(),
            "mailsync-app",
            "not base64url JSON",
        ),
    ];
    for (assertion, client_id, expected) in cases {
        let (status, why) = post(assertion, client_id).await;
        assert_eq!(status, 401, "{expected}: {why}");
        assert!(why.contains(expected), "{expected}: {why}");
    }
    // A signature by another key with the registered thumbprint is refused: forge one by
    // swapping the signature part.
    let other = {
        // Sign with a certificate-less key by re-using the header and claims of a good one.
        let good = cert
            .assertion("mailsync-app", token_url.as_str(), now)
            .unwrap();
        let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
        let mut sig = parts[2].clone().into_bytes();
        sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
        parts[2] = String::from_utf8(sig).unwrap();
        parts.join(".")
    };
    let (status, why) = post(other, "mailsync-app").await;
    assert_eq!(status, 401);
    assert!(why.contains("signature does not verify"), "{why}");

    // Through the client: a refused assertion is Unauthorized with the endpoint's reason.
    let wrong_app = client_as(&sim, Auth::OAuth2(tokens(cert, "unknown-app")));
    let err = wrong_app
        .call(&Target::impersonating("user1@example.com"), &inbox)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Unauthorized(m) if m.contains("invalid_client")),
        "{err:?}"
    );
    sim.stop().await;
}
