//! Exchange → CRM at the request floor, engine level against ews-sim: an import's stamps go in
//! batches (one UpdateItem per hundred items, each item with its own outcome matched to it in
//! order, one refusal parked alone while the rest are stamped), an isolated change costs
//! SyncFolderItems + GetItem and its stamp waits for a batch or the item's next update, and a
//! crash before the deferred stamp neither loses nor duplicates anything. Figures come from
//! examples/speed_bench.rs; these tests count requests only.

mod common;
use common::rig::{Rig, RigOptions, USERS};
use common::{count, exec};

use ews::items::{Contact, Item};
use ews::types::{DistinguishedFolder, FolderRef};
use mailsync::config::{Area, Leading};
use mailsync::sync::engine::Direction;
use mailsync_actors::MailboxSpec;

const U: &str = USERS[0];

async fn rig(postgres: bool, state_apart: bool) -> Option<Rig> {
    Rig::new(RigOptions {
        areas: vec![Area::Contacts],
        leading: Leading::Exchange,
        postgres,
        state_apart,
        ..RigOptions::default()
    })
    .await
}

/// Every EWS request the simulator answered so far.
async fn all_requests(rig: &Rig) -> u64 {
    let stats: serde_json::Value = reqwest::get(format!("{}/sim/stats", rig.sim.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stats["requests_by_operation"]
        .as_object()
        .map_or(0, |ops| ops.values().filter_map(|v| v.as_u64()).sum())
}

fn contacts(names: impl IntoIterator<Item = String>) -> Vec<Item> {
    names
        .into_iter()
        .map(|n| {
            Item::Contact(Contact {
                given_name: Some("Kim".into()),
                surname: Some(n),
                ..Contact::default()
            })
        })
        .collect()
}

fn contacts_folder() -> FolderRef {
    FolderRef::well_known(DistinguishedFolder::Contacts)
}

/// (surname, stamp) of every contact in the mailbox's contacts folder.
async fn stamped(rig: &Rig) -> Vec<(String, Option<i64>)> {
    rig.items(U, DistinguishedFolder::Contacts)
        .await
        .iter()
        .map(|i| {
            let Item::Contact(c) = i else {
                panic!("not a contact: {i:?}")
            };
            (
                c.surname.clone().unwrap_or_default(),
                mailsync::sync::fields::stamped_id(i, "crm_contacts"),
            )
        })
        .collect()
}

/// The CRM id of every imported contact, by surname.
async fn crm_ids(rig: &Rig) -> std::collections::HashMap<String, i64> {
    let rows = rig
        .db
        .crm_rows(
            "crm_contacts",
            &rig.db
                .ids_in_scope("crm_contacts", Some(1), 1)
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    rows.into_iter()
        .filter_map(|(id, r)| match r.ok()? {
            mailsync::db::rows::CrmRow::Contact(c) => Some((c.surname?, id)),
            _ => None,
        })
        .collect()
}

/// The initial sync of the test mailbox in one direction.
async fn initial(rig: &Rig, direction: Direction) -> Result<(), mailsync_actors::SyncError> {
    let spec = MailboxSpec {
        smtp: U.into(),
        server: "ex1".into(),
        fingerprint: 0,
    };
    rig.engine
        .initial_sync(&spec, direction, rig.throttle.clone(), false, &|_, _, _| {})
        .await
        .map(|_| ())
}

async fn import(rig: &Rig) {
    initial(rig, Direction::ExchangeToCrm)
        .await
        .expect("the import");
}

async fn batched_stamps_with_one_refusal(postgres: bool) {
    let Some(rig) = rig(postgres, false).await else {
        return;
    };
    const N: usize = 250;
    let ids = rig
        .user_creates(
            U,
            contacts_folder(),
            contacts((0..N).map(|i| format!("s{i:03}"))),
        )
        .await;
    // Exchange refuses any write of one item in the middle of the first batch.
    rig.sim_post(
        &format!("mailboxes/{U}/items/{}/poison", ids[40].id),
        serde_json::json!({"code": "ErrorCorruptData"}),
    )
    .await;
    let (before, updates_before, gets_before) = (
        all_requests(&rig).await,
        rig.requests("UpdateItem").await,
        rig.requests("GetItem").await,
    );
    import(&rig).await;
    let spent = all_requests(&rig).await - before;
    let updates = rig.requests("UpdateItem").await - updates_before;
    let gets = rig.requests("GetItem").await - gets_before;

    // Every item once in the CRM.
    let rows = crm_ids(&rig).await;
    assert_eq!(rows.len(), N, "one row per item");
    assert_eq!(
        count(&rig.db, "SELECT COUNT(*) FROM crm_contacts").await,
        N as i64
    );
    // Three batches of stamps, and one more for the items Exchange did not attempt after
    // the refused one; GetItem in batches of a hundred.
    assert_eq!(updates, 4, "UpdateItem requests for {N} stamps");
    assert_eq!(gets, 3, "GetItem requests for {N} items");
    assert!(
        (spent as f64) / (N as f64) <= 0.05,
        "{spent} requests for {N} items"
    );
    // Each stamp is the CRM id of the row that holds that item: answers matched in order.
    let bad = "s040";
    for (surname, stamp) in stamped(&rig).await {
        if surname == bad {
            assert_eq!(stamp, None, "the refused item carries no stamp");
        } else {
            assert_eq!(stamp, rows.get(&surname).copied(), "the stamp of {surname}");
        }
    }
    assert_eq!(
        count(&rig.state, "SELECT COUNT(*) FROM ms_item_map WHERE stamped").await,
        N as i64 - 1
    );
    let parked = common::texts(&rig.state, "SELECT error, ews_item_id FROM ms_failures").await;
    assert!(
        parked[0]
            .as_deref()
            .is_some_and(|e| e.contains("ErrorCorruptData")),
        "{parked:?}"
    );
    assert_eq!(parked[1].as_deref(), Some(ids[40].id.as_str()));

    // The refused stamp is not offered again while parked: steps spend nothing on it.
    let before = rig.requests("UpdateItem").await;
    for _ in 0..5 {
        rig.sync(U, "contacts").await;
    }
    assert_eq!(rig.requests("UpdateItem").await, before);
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_stamps_in_batches_and_a_refused_item_stops_no_other() {
    batched_stamps_with_one_refusal(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_stamps_in_batches_and_a_refused_item_stops_no_other_on_postgres() {
    batched_stamps_with_one_refusal(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_change_costs_two_requests_and_its_stamp_rides_along_later() {
    let rig = rig(false, false).await.unwrap();
    // The first contact of two empty sides.
    rig.sync(U, "contacts").await;
    const N: usize = 20;
    let before = all_requests(&rig).await;
    for i in 0..N {
        rig.user_creates(U, contacts_folder(), contacts([format!("i{i:02}")]))
            .await;
        let before_step = all_requests(&rig).await;
        rig.sync(U, "contacts").await;
        assert_eq!(
            all_requests(&rig).await - before_step,
            2,
            "change {i}: SyncFolderItems + GetItem"
        );
    }
    // The users' own CreateItem calls are not mailsync's.
    let spent = all_requests(&rig).await - before - N as u64;
    assert_eq!(spent, 2 * N as u64);
    assert_eq!(crm_ids(&rig).await.len(), N);
    assert_eq!(
        count(
            &rig.db,
            "SELECT COUNT(*) FROM ms_item_map WHERE NOT stamped"
        )
        .await,
        N as i64,
        "the stamps wait"
    );
    assert!(stamped(&rig).await.iter().all(|(_, s)| s.is_none()));

    // The CRM changes one of them: its UpdateItem carries every waiting stamp, at no extra
    // request.
    exec(
        &rig.db,
        "UPDATE crm_contacts SET job_title = 'neu' WHERE surname = 'i07'",
    )
    .await;
    let updates = rig.requests("UpdateItem").await;
    rig.sync(U, "contacts").await;
    assert_eq!(rig.requests("UpdateItem").await - updates, 1);
    let rows = crm_ids(&rig).await;
    for (surname, stamp) in stamped(&rig).await {
        assert_eq!(stamp, rows.get(&surname).copied(), "the stamp of {surname}");
    }
    assert_eq!(
        count(
            &rig.db,
            "SELECT COUNT(*) FROM ms_item_map WHERE NOT stamped"
        )
        .await,
        0
    );
    // Our own stamps come back as nothing to do.
    let before = all_requests(&rig).await;
    rig.sync(U, "contacts").await;
    assert!(
        all_requests(&rig).await - before <= 1,
        "one SyncFolderItems that finds echoes"
    );
    assert_eq!(crm_ids(&rig).await.len(), N);

    // A few more imports whose stamps wait with nothing to ride along: once one has waited
    // its time, the folder's next step writes all of them in one request.
    for i in 0..5 {
        rig.user_creates(U, contacts_folder(), contacts([format!("j{i}")]))
            .await;
        rig.sync(U, "contacts").await;
    }
    let updates = rig.requests("UpdateItem").await;
    rig.sync(U, "contacts").await;
    assert_eq!(rig.requests("UpdateItem").await, updates, "not yet due");
    exec(
        &rig.db,
        "UPDATE ms_item_map SET updated_at = '2020-01-01T00:00:00.000Z' WHERE NOT stamped",
    )
    .await;
    rig.sync(U, "contacts").await;
    assert_eq!(rig.requests("UpdateItem").await - updates, 1);
    let rows = crm_ids(&rig).await;
    for (surname, stamp) in stamped(&rig).await {
        assert_eq!(stamp, rows.get(&surname).copied(), "the stamp of {surname}");
    }
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_deferred_stamp_loses_nothing_and_duplicates_nothing() {
    // The state store apart: a CRM row and its mapping are two writes a crash can separate.
    let rig = rig(false, true).await.unwrap();
    rig.sync(U, "contacts").await;
    let old_state = common::texts(
        &rig.state,
        "SELECT sync_state FROM ms_folder_state WHERE mailbox = 'user1@example.com' AND folder_key = 'contacts'",
    )
    .await;
    // 60 isolated changes imported; their stamps wait.
    rig.user_creates(
        U,
        contacts_folder(),
        contacts((0..60).map(|i| format!("c{i:02}"))),
    )
    .await;
    rig.step_for(U, "contacts", mailsync_actors::Cause::Notification)
        .await;
    assert_eq!(
        count(&rig.db, "SELECT COUNT(*) FROM crm_contacts").await,
        60
    );
    // The crash: the rows committed, their mappings and the folder's new sync state did not.
    exec(&rig.state, "DELETE FROM ms_item_map").await;
    exec(
        &rig.state,
        &format!(
            "UPDATE ms_folder_state SET sync_state = '{}' WHERE mailbox = 'user1@example.com' AND folder_key = 'contacts'",
            old_state[0].as_deref().unwrap_or_default()
        ),
    )
    .await;
    // After the restart the same changes are read again: each is linked to the row that
    // carries its Exchange id, and the stamps (50 or more waiting) go out in one batch.
    rig.sync(U, "contacts").await;
    assert_eq!(
        count(&rig.db, "SELECT COUNT(*) FROM crm_contacts").await,
        60,
        "no second row"
    );
    assert_eq!(
        count(&rig.state, "SELECT COUNT(*) FROM ms_item_map").await,
        60
    );
    let items = stamped(&rig).await;
    assert_eq!(items.len(), 60, "no copy in Exchange");
    let rows = crm_ids(&rig).await;
    for (surname, stamp) in items {
        assert_eq!(stamp, rows.get(&surname).copied(), "the stamp of {surname}");
    }
    rig.finish().await;
}

/// CRM → Exchange records a landed CreateItem batch while the next one is on the wire. When a
/// record fails (here: the database refuses the `ews_id` writes), the step stops with that
/// error after taking in what the request beside it created; those items carry their stamps,
/// so the next start links them instead of creating them twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_record_between_create_batches_duplicates_nothing() {
    let Some(rig) = Rig::new(RigOptions {
        areas: vec![Area::Contacts],
        leading: Leading::Crm,
        postgres: true,
        ..RigOptions::default()
    })
    .await
    else {
        return;
    };
    const N: i64 = 250;
    exec(
        &rig.db,
        &format!("INSERT INTO crm_contacts (tenant_id, owner_id, given_name, surname) SELECT 1, 1, 'Kim', 'r' || lpad(g::text, 3, '0') FROM generate_series(1, {N}) g"),
    )
    .await;
    exec(&rig.db, "CREATE FUNCTION refuse_ews_id() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'no ews_id today'; END $$").await;
    exec(&rig.db, "CREATE TRIGGER refuse_ews_id BEFORE UPDATE OF ews_id ON crm_contacts FOR EACH ROW EXECUTE FUNCTION refuse_ews_id()").await;
    let first = initial(&rig, Direction::CrmToExchange).await;
    let err = format!("{:?}", first.expect_err("the record was refused"));
    assert!(err.contains("no ews_id today"), "{err}");
    let created = stamped(&rig).await.len();
    assert!(
        created >= 200,
        "the first batch and the one on the wire beside its record were created: {created}"
    );
    assert_eq!(count(&rig.db, "SELECT COUNT(*) FROM ms_item_map").await, 0);
    exec(&rig.db, "DROP TRIGGER refuse_ews_id ON crm_contacts").await;
    initial(&rig, Direction::CrmToExchange)
        .await
        .expect("the second start");
    let items = stamped(&rig).await;
    assert_eq!(items.len() as i64, N, "every row once in Exchange");
    let rows = crm_ids(&rig).await;
    for (surname, stamp) in &items {
        assert_eq!(*stamp, rows.get(surname).copied(), "the stamp of {surname}");
    }
    // Each row mapped to the item that carries its stamp (a row linked by its stamp keeps
    // `ews_id` empty, as after a crash between CreateItem and its record).
    assert_eq!(rows.len() as i64, N);
    for id in rows.values() {
        assert_eq!(
            count(
                &rig.db,
                &format!("SELECT COUNT(*) FROM ms_item_map WHERE crm_id = {id}")
            )
            .await,
            1,
            "row {id} mapped once"
        );
    }
    rig.finish().await;
}

/// A folder this process found free of unrecorded creates is searched for stamps again once
/// its mailbox is opened anew (a cluster hands a mailbox back and forth: meanwhile another
/// owner may have created items it never recorded). Here the other owner's item for row B
/// is in Exchange, unseen by any pull; after the reopen, a CRM-only step (no SyncFolderItems)
/// links B to it instead of creating a second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_mailbox_searches_for_stamps_before_it_creates() {
    let rig = Rig::new(RigOptions {
        areas: vec![Area::Contacts],
        leading: Leading::Crm,
        ..RigOptions::default()
    })
    .await
    .unwrap();
    rig.open(U).await;
    exec(&rig.db, "INSERT INTO crm_contacts (id, tenant_id, owner_id, given_name, surname) VALUES (1, 1, 1, 'Kim', 'A')").await;
    rig.sync(U, "contacts").await;
    assert_eq!(stamped(&rig).await, vec![("A".to_string(), Some(1))]);
    // Another owner's create for row B that it never recorded.
    exec(&rig.db, "INSERT INTO crm_contacts (id, tenant_id, owner_id, given_name, surname) VALUES (2, 1, 1, 'Kim', 'B')").await;
    let fields: mailsync::sync::fields::Fields = [
        ("given_name".to_string(), Some("Kim".to_string())),
        ("surname".to_string(), Some("B".to_string())),
    ]
    .into_iter()
    .collect();
    let orphan = mailsync::sync::fields::to_item(
        Area::Contacts,
        &fields,
        &mailsync::sync::fields::crm_stamp("crm_contacts", 2),
    )
    .unwrap();
    rig.user_creates(U, contacts_folder(), vec![orphan]).await;
    rig.open(U).await;
    rig.feed.poll_once().await.unwrap();
    rig.step_for(U, "contacts", mailsync_actors::Cause::Crm)
        .await;
    let mut items = stamped(&rig).await;
    items.sort();
    assert_eq!(
        items,
        vec![("A".to_string(), Some(1)), ("B".to_string(), Some(2))],
        "B linked to the other owner's item, not created twice"
    );
    assert_eq!(
        count(
            &rig.state,
            "SELECT COUNT(*) FROM ms_item_map WHERE crm_id = 2"
        )
        .await,
        1
    );
    rig.finish().await;
}

/// A first contact reads each folder's own scope only (the own folder the operator's rows, the
/// shared folder the tenant's rows without an owner): every contact lands in its folder once,
/// nothing of another operator or tenant comes along, and a second start links all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_contact_puts_own_and_shared_contacts_each_in_its_folder_once() {
    let rig = Rig::new(RigOptions {
        areas: vec![Area::Contacts],
        leading: Leading::Crm,
        ..RigOptions::default()
    })
    .await
    .unwrap();
    exec(&rig.db, "INSERT INTO crm_contacts (tenant_id, owner_id, surname) VALUES (1, 1, 'own1'), (1, 1, 'own2'), (1, 1, 'own3'), (1, NULL, 'shared1'), (1, NULL, 'shared2'), (2, 2, 'other operator'), (2, NULL, 'other tenant')").await;
    for _ in 0..2 {
        initial(&rig, Direction::CrmToExchange)
            .await
            .expect("the initial sync");
        let mut own: Vec<String> = stamped(&rig).await.into_iter().map(|(s, _)| s).collect();
        own.sort();
        assert_eq!(own, ["own1", "own2", "own3"]);
        let shared_folder = rig.shared_folder(U).await;
        let mut shared: Vec<String> = rig
            .items_in(U, shared_folder)
            .await
            .iter()
            .map(|i| match i {
                Item::Contact(c) => c.surname.clone().unwrap_or_default(),
                other => panic!("not a contact: {other:?}"),
            })
            .collect();
        shared.sort();
        assert_eq!(shared, ["shared1", "shared2"]);
        assert_eq!(
            count(&rig.state, "SELECT COUNT(*) FROM ms_item_map").await,
            5
        );
    }
    rig.finish().await;
}

fn contact_row(id: i64, version: i64, surname: &str) -> mailsync::db::rows::CrmRow {
    mailsync::db::rows::CrmRow::Contact(mailsync::db::rows::ContactRow {
        id,
        tenant_id: 1,
        owner_id: Some(1),
        given_name: Some("Kim".into()),
        surname: Some(surname.into()),
        company: None,
        job_title: None,
        email: [None, None, None],
        phones: [None, None, None],
        address: [None, None, None, None],
        notes: None,
        categories: vec!["CRM".into()],
        ews_id: None,
        version,
    })
}

/// A chunk of writes in one transaction, an outcome per row in the order given: new rows
/// written, an item a row already carries named (nothing inserted), an update over a changed
/// version refused (nothing written), the rest landed.
async fn bulk_save_outcomes(postgres: bool) {
    use mailsync::db::write::{ExchangeWrite, Saved};
    let Some(rig) = rig(postgres, false).await else {
        return;
    };
    let db = &rig.db;
    let (old, _) = db
        .save_from_exchange(&contact_row(0, 0, "alt"), "E-OLD=", None)
        .await
        .unwrap();
    let (kept, kept_version) = db
        .save_from_exchange(&contact_row(0, 0, "bleibt"), "E-KEPT=", None)
        .await
        .unwrap();
    // Changed in the CRM after it was read at its version.
    exec(
        db,
        &format!("UPDATE crm_contacts SET job_title = 'ERP' WHERE id = {kept}"),
    )
    .await;
    let write = |row, ews: &str| ExchangeWrite {
        row,
        ews_id: ews.into(),
        mapping: None,
    };
    let mut writes = vec![write(contact_row(0, 0, "neu0"), "E-0=")];
    writes.push(write(contact_row(0, 0, "doppelt"), "E-OLD="));
    writes.push(write(
        contact_row(kept, kept_version, "überschrieben"),
        "E-KEPT=",
    ));
    writes
        .extend((1..150).map(|i| write(contact_row(0, 0, &format!("neu{i}")), &format!("E-{i}="))));
    let saved = db.save_many_from_exchange(&writes).await.unwrap();
    assert_eq!(saved.len(), writes.len());
    assert!(matches!(saved[0], Saved::Written(..)));
    assert!(matches!(saved[1], Saved::Duplicate(id, _) if id == old));
    assert_eq!(saved[2], Saved::Stale);
    for (w, s) in writes.iter().zip(&saved).skip(3) {
        let Saved::Written(id, _) = s else {
            panic!("{s:?}")
        };
        assert_eq!(
            db.row_by_ews_id("crm_contacts", &w.ews_id)
                .await
                .unwrap()
                .map(|r| r.0),
            Some(*id),
            "the outcome of {} is its own row",
            w.ews_id
        );
    }
    assert_eq!(count(db, "SELECT COUNT(*) FROM crm_contacts").await, 152);
    assert_eq!(
        count(db, &format!("SELECT COUNT(*) FROM crm_contacts WHERE id = {kept} AND surname = 'bleibt' AND job_title = 'ERP'")).await,
        1,
        "the CRM's change is not overwritten"
    );
    assert_eq!(
        count(
            db,
            "SELECT COUNT(*) FROM crm_contacts WHERE surname = 'doppelt'"
        )
        .await,
        0
    );
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_save_gives_each_row_its_own_outcome() {
    bulk_save_outcomes(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_save_gives_each_row_its_own_outcome_on_postgres() {
    bulk_save_outcomes(true).await;
}
