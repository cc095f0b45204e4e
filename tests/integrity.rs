//! Integrity under faults, engine level against ews-sim: a permanent per-item refusal parks
//! that item (retried on its schedule, never in a loop) while the rest syncs; a step that fails
//! after its Exchange write never lets an older value overwrite a newer one; a full resync
//! compares the listing with the mappings; a row whose id the database reused pairs as new.

mod common;
use common::rig::{Rig, RigOptions, USERS};
use common::{count, exec, texts};

use ews::items::{Contact, Item};
use ews::ops::{ConflictResolution, ItemUpdate, UpdateItem};
use ews::types::{DistinguishedFolder, ItemId};
use mailsync::config::{Area, Leading};
use mailsync_actors::{Cause, SyncError};

const U: &str = USERS[0];

async fn rig(leading: Leading) -> Rig {
    Rig::new(RigOptions {
        areas: vec![Area::Contacts],
        leading,
        ..RigOptions::default()
    })
    .await
    .unwrap()
}

fn surname(i: &Item) -> Option<&str> {
    match i {
        Item::Contact(c) => c.surname.as_deref(),
        _ => None,
    }
}

/// The user edits a field of an item in Outlook.
async fn user_sets(rig: &Rig, id: &ItemId, item: Item, key: &str) {
    let updates = item
        .updates()
        .into_iter()
        .filter(|u| u.key() == key)
        .collect();
    let op = UpdateItem {
        changes: vec![ItemUpdate {
            id: ItemId {
                id: id.id.clone(),
                change_key: None,
            },
            updates,
        }],
        conflict: ConflictResolution::AlwaysOverwrite,
        disposition: None,
        calendar: false,
    };
    rig.client
        .call(&ews::Target::impersonating(U), &op)
        .await
        .unwrap()
        .output
        .remove(0)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_refusal_parks_the_item_the_rest_syncs_and_nothing_loops() {
    let rig = rig(Leading::Crm).await;
    exec(&rig.db, "INSERT INTO crm_contacts (tenant_id, owner_id, surname) VALUES (1, 1, 'p0'), (1, 1, 'p1'), (1, 1, 'p2'), (1, 1, 'p3'), (1, 1, 'p4')").await;
    rig.sync(U, "contacts").await;
    let items = rig.items(U, DistinguishedFolder::Contacts).await;
    let bad = items
        .iter()
        .find(|i| surname(i) == Some("p0"))
        .unwrap()
        .id()
        .unwrap()
        .clone();
    rig.sim_post(
        &format!("mailboxes/{U}/items/{}/poison", bad.id),
        serde_json::json!({"code": "ErrorCorruptData"}),
    )
    .await;

    exec(&rig.db, "UPDATE crm_contacts SET job_title = 'neu'").await;
    let before = rig.requests("UpdateItem").await;
    let r = rig.sync(U, "contacts").await;
    let titles = rig.items(U, DistinguishedFolder::Contacts).await;
    let updated = titles
        .iter()
        .filter(|i| matches!(i, Item::Contact(c) if c.job_title.as_deref() == Some("neu")))
        .count();
    assert_eq!(updated, 4, "the others synced");
    let failure = texts(
        &rig.db,
        "SELECT error, CAST(attempts AS TEXT), next_retry_at FROM ms_failures",
    )
    .await;
    assert!(
        failure[0].as_deref().unwrap().contains("ErrorCorruptData"),
        "{failure:?}"
    );
    assert!(failure[2].is_some(), "a retry time is set");
    // Many steps before the retry time: the refused item is not written again.
    for _ in 0..30 {
        rig.step_for(U, "contacts", Cause::Notification).await;
        rig.step_for(U, "contacts", Cause::Crm).await;
    }
    let spent = rig.requests("UpdateItem").await - before;
    assert!(
        spent <= 2,
        "{spent} UpdateItem requests for one refused item"
    );
    assert!(
        r.wake_in
            .is_some_and(|w| w.as_secs() >= 30 && w.as_secs() <= 90),
        "woken for the retry in about a minute: {:?}",
        r.wake_in
    );

    // Due: retried once, refused again, the next retry twice as far.
    exec(
        &rig.db,
        "UPDATE ms_failures SET next_retry_at = '2020-01-01T00:00:00.000Z'",
    )
    .await;
    let before = rig.requests("UpdateItem").await;
    let r = rig.step_for(U, "contacts", Cause::Timer).await;
    assert_eq!(rig.requests("UpdateItem").await - before, 1);
    assert_eq!(count(&rig.db, "SELECT attempts FROM ms_failures").await, 2);
    assert!(
        r.wake_in
            .is_some_and(|w| w.as_secs() >= 90 && w.as_secs() <= 150),
        "{:?}",
        r.wake_in
    );

    // Healed: the retry syncs it and the failure log is empty.
    rig.sim_post(
        &format!("mailboxes/{U}/items/{}/poison", bad.id),
        serde_json::json!({}),
    )
    .await;
    exec(
        &rig.db,
        "UPDATE ms_failures SET next_retry_at = '2020-01-01T00:00:00.000Z'",
    )
    .await;
    rig.step_for(U, "contacts", Cause::Timer).await;
    assert_eq!(count(&rig.db, "SELECT COUNT(*) FROM ms_failures").await, 0);
    let all_new = rig
        .items(U, DistinguishedFolder::Contacts)
        .await
        .iter()
        .all(|i| matches!(i, Item::Contact(c) if c.job_title.as_deref() == Some("neu")));
    assert!(all_new);
    rig.finish().await;
}

/// Exchange answers one item's UpdateItem with a server error (ErrorInternalServerError in
/// its own response message) every time: that item is parked with the reason and retried on
/// its schedule; the step succeeds, the folder's other items sync, and nothing loops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_on_one_item_every_time_parks_that_item_alone() {
    let rig = rig(Leading::Crm).await;
    exec(&rig.db, "INSERT INTO crm_contacts (tenant_id, owner_id, surname) VALUES (1, 1, 's0'), (1, 1, 's1'), (1, 1, 's2'), (1, 1, 's3'), (1, 1, 's4')").await;
    rig.sync(U, "contacts").await;
    let items = rig.items(U, DistinguishedFolder::Contacts).await;
    let bad = items
        .iter()
        .find(|i| surname(i) == Some("s2"))
        .unwrap()
        .id()
        .unwrap()
        .clone();
    rig.sim_post(
        &format!("mailboxes/{U}/items/{}/poison", bad.id),
        serde_json::json!({"code": "ErrorInternalServerError"}),
    )
    .await;

    exec(&rig.db, "UPDATE crm_contacts SET job_title = 'neu'").await;
    let before = rig.requests("UpdateItem").await;
    let r = rig
        .try_step(U, "contacts", Cause::Crm, false)
        .await
        .expect("one item's server error does not fail the folder's step");
    // The items after the failed one in its batch were not attempted
    // (ErrorBatchProcessingStopped): the step asks for one more, which writes them.
    if r.more {
        rig.step_for(U, "contacts", Cause::Crm).await;
    }
    let updated = rig
        .items(U, DistinguishedFolder::Contacts)
        .await
        .iter()
        .filter(|i| matches!(i, Item::Contact(c) if c.job_title.as_deref() == Some("neu")))
        .count();
    assert_eq!(updated, 4, "the others synced");
    let failure = texts(
        &rig.db,
        "SELECT error, CAST(attempts AS TEXT), next_retry_at FROM ms_failures",
    )
    .await;
    assert!(
        failure[0]
            .as_deref()
            .unwrap()
            .contains("ErrorInternalServerError"),
        "{failure:?}"
    );
    assert!(failure[2].is_some(), "a retry time is set");
    for _ in 0..20 {
        rig.step_for(U, "contacts", Cause::Notification).await;
        rig.step_for(U, "contacts", Cause::Crm).await;
    }
    let spent = rig.requests("UpdateItem").await - before;
    assert!(
        spent <= 3,
        "{spent} UpdateItem requests for one failing item"
    );
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_failing_after_a_merge_never_lets_an_older_value_win() {
    // The ERP changes one field, the user another; the step's UpdateItem is answered
    // ErrorServerBusy; the user edits again; the retry must keep the user's newest value.
    let rig = rig(Leading::Crm).await;
    exec(&rig.db, "INSERT INTO crm_contacts (tenant_id, owner_id, surname, company, job_title) VALUES (1, 1, 'Meier', 'Alt AG', 'Einkauf')").await;
    rig.sync(U, "contacts").await;
    let id = rig.items(U, DistinguishedFolder::Contacts).await[0]
        .id()
        .unwrap()
        .clone();

    exec(&rig.db, "UPDATE crm_contacts SET job_title = 'Vertrieb'").await;
    let company = |c: &str| {
        Item::Contact(Contact {
            company_name: Some(c.into()),
            ..Contact::default()
        })
    };
    user_sets(&rig, &id, company("Erste GmbH"), "contacts:CompanyName").await;
    rig.sim_post(
        "faults",
        serde_json::json!({"operation": "UpdateItem", "error_code": "ErrorServerBusy", "back_off_ms": 10, "count": 1}),
    )
    .await;
    rig.feed.poll_once().await.unwrap();
    let failed = rig
        .try_step(U, "contacts", Cause::Notification, false)
        .await;
    assert!(
        matches!(failed, Err(SyncError::Throttled { .. })),
        "{failed:?}"
    );
    // Nothing of the merge reached the CRM: its company is still the old one.
    assert_eq!(
        texts(&rig.db, "SELECT company FROM crm_contacts").await[0].as_deref(),
        Some("Alt AG")
    );

    user_sets(&rig, &id, company("Zweite GmbH"), "contacts:CompanyName").await;
    rig.sync(U, "contacts").await;
    let row = texts(&rig.db, "SELECT company, job_title FROM crm_contacts").await;
    assert_eq!(
        row[0].as_deref(),
        Some("Zweite GmbH"),
        "the user's newest value"
    );
    assert_eq!(row[1].as_deref(), Some("Vertrieb"), "the ERP's change");
    let item = rig.items(U, DistinguishedFolder::Contacts).await.remove(0);
    let Item::Contact(c) = item else { panic!() };
    assert_eq!(c.company_name.as_deref(), Some("Zweite GmbH"));
    assert_eq!(c.job_title.as_deref(), Some("Vertrieb"));
    assert_eq!(
        count(&rig.db, "SELECT COUNT(*) FROM ms_conflicts").await,
        0,
        "no conflict: each field changed on one side only"
    );
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_resync_treats_what_the_listing_lacks_as_deleted() {
    let rig = rig(Leading::Crm).await;
    let values: Vec<String> = (0..10).map(|i| format!("(1, 1, 'r{i}')")).collect();
    exec(
        &rig.db,
        &format!(
            "INSERT INTO crm_contacts (tenant_id, owner_id, surname) VALUES {}",
            values.join(", ")
        ),
    )
    .await;
    rig.sync(U, "contacts").await;
    let items = rig.items(U, DistinguishedFolder::Contacts).await;
    // Deleted while the sync state is lost (an invalidated state, an admin resync): no
    // SyncFolderItems will ever report these deletes.
    rig.sim_post("syncstates/invalidate", serde_json::json!({"mailbox": U}))
        .await;
    let gone: Vec<ItemId> = items[..2].iter().filter_map(|i| i.id().cloned()).collect();
    rig.user_deletes(U, &gone, true).await;
    let first = rig
        .try_step(U, "contacts", Cause::Notification, false)
        .await;
    assert!(
        matches!(first, Err(SyncError::InvalidState(_))),
        "{first:?}"
    );
    rig.try_step(U, "contacts", Cause::Notification, true)
        .await
        .unwrap();
    assert_eq!(count(&rig.db, "SELECT COUNT(*) FROM crm_contacts").await, 8);
    assert_eq!(count(&rig.db, "SELECT COUNT(*) FROM ms_item_map").await, 8);
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_reuses_a_deleted_rows_id_is_a_new_record() {
    // SQLite gives a new row the id of the newest one deleted before it: the mapping of the
    // old row must not pair the new one with the old item.
    let rig = rig(Leading::Crm).await;
    exec(&rig.db, "INSERT INTO crm_contacts (tenant_id, owner_id, surname) VALUES (1, 1, 'keep'), (1, 1, 'old')").await;
    rig.sync(U, "contacts").await;
    let old_id = count(&rig.db, "SELECT id FROM crm_contacts WHERE surname = 'old'").await;
    exec(&rig.db, "DELETE FROM crm_contacts WHERE surname = 'old'").await;
    exec(
        &rig.db,
        "INSERT INTO crm_contacts (tenant_id, owner_id, surname) VALUES (1, 1, 'new')",
    )
    .await;
    assert_eq!(
        count(&rig.db, "SELECT id FROM crm_contacts WHERE surname = 'new'").await,
        old_id,
        "the id was reused"
    );
    rig.sync(U, "contacts").await;
    let mut names: Vec<String> = rig
        .items(U, DistinguishedFolder::Contacts)
        .await
        .iter()
        .filter_map(|i| surname(i).map(str::to_owned))
        .collect();
    names.sort();
    assert_eq!(names, vec!["keep", "new"], "old deleted, new created");
    rig.finish().await;
}

/// A failpoint between a CRM row and its mapping: the state store (apart from the business
/// database) refuses the mapping after the row is written, as a crash, stall or database
/// error at that point would leave things.
async fn mapping_writes_fail(rig: &Rig, fail: bool) {
    let sql = if fail {
        "CREATE TRIGGER failpoint BEFORE INSERT ON ms_item_map \
         BEGIN SELECT RAISE(ABORT, 'failpoint: between the row and its mapping'); END"
    } else {
        "DROP TRIGGER failpoint"
    };
    exec(&rig.state, sql).await;
}

async fn no_second_row_after_a_failure_between_row_and_mapping(postgres: bool) {
    let Some(rig) = Rig::new(RigOptions {
        areas: vec![Area::Contacts],
        leading: Leading::Exchange,
        state_apart: true,
        postgres,
        ..RigOptions::default()
    })
    .await
    else {
        return;
    };
    rig.sync(U, "contacts").await;
    let made = rig
        .user_creates(
            U,
            ews::types::FolderRef::well_known(DistinguishedFolder::Contacts),
            (0..3)
                .map(|i| {
                    Item::Contact(Contact {
                        surname: Some(format!("imp{i}")),
                        ..Contact::default()
                    })
                })
                .collect(),
        )
        .await;

    // The import writes the rows, then cannot write their mappings: the step fails.
    mapping_writes_fail(&rig, true).await;
    let failed = rig
        .try_step(U, "contacts", Cause::Notification, false)
        .await;
    assert!(failed.is_err(), "the failpoint did not fire: {failed:?}");
    assert_eq!(count(&rig.db, "SELECT COUNT(*) FROM crm_contacts").await, 3);
    assert_eq!(
        count(&rig.state, "SELECT COUNT(*) FROM ms_item_map").await,
        0
    );

    // The next step sees the same items as new again: each finds its row.
    mapping_writes_fail(&rig, false).await;
    rig.sync(U, "contacts").await;
    let rows = "SELECT COUNT(*) FROM crm_contacts";
    assert_eq!(count(&rig.db, rows).await, 3, "no second row");
    assert_eq!(
        count(&rig.db, "SELECT COUNT(DISTINCT ews_id) FROM crm_contacts").await,
        3
    );
    assert_eq!(
        count(&rig.state, "SELECT COUNT(*) FROM ms_item_map").await,
        3
    );
    assert_eq!(rig.items(U, DistinguishedFolder::Contacts).await.len(), 3);
    // The pairs are linked: an edit on either side reaches the other.
    exec(
        &rig.db,
        "UPDATE crm_contacts SET job_title = 'ERP' WHERE surname = 'imp0'",
    )
    .await;
    rig.feed.poll_once().await.unwrap();
    rig.sync(U, "contacts").await;
    let titled = rig
        .items(U, DistinguishedFolder::Contacts)
        .await
        .into_iter()
        .filter(|i| matches!(i, Item::Contact(c) if c.job_title.as_deref() == Some("ERP")))
        .count();
    assert_eq!(titled, 1);

    // The recreate path: deleted in the CRM, edited in Exchange, Exchange leads, so the row
    // comes back; the failpoint hits between the new row and its mapping.
    let imp1 = count(
        &rig.db,
        "SELECT id FROM crm_contacts WHERE surname = 'imp1'",
    )
    .await;
    exec(
        &rig.db,
        &format!("DELETE FROM crm_contacts WHERE id = {imp1}"),
    )
    .await;
    let item = rig
        .items(U, DistinguishedFolder::Contacts)
        .await
        .into_iter()
        .find(|i| surname(i) == Some("imp1"))
        .unwrap();
    let id = item.id().unwrap().clone();
    user_sets(
        &rig,
        &id,
        Item::Contact(Contact {
            company_name: Some("Outlook AG".into()),
            ..Contact::default()
        }),
        "contacts:CompanyName",
    )
    .await;
    rig.feed.poll_once().await.unwrap();
    mapping_writes_fail(&rig, true).await;
    let failed = rig
        .try_step(U, "contacts", Cause::Notification, false)
        .await;
    assert!(failed.is_err(), "the failpoint did not fire: {failed:?}");
    mapping_writes_fail(&rig, false).await;
    rig.sync(U, "contacts").await;
    rig.sync(U, "contacts").await;
    assert_eq!(
        count(
            &rig.db,
            &format!(
                "SELECT COUNT(*) FROM crm_contacts WHERE ews_id = '{}'",
                id.id
            )
        )
        .await,
        1,
        "the recreated row exists once"
    );
    assert_eq!(count(&rig.db, rows).await, 3);
    assert_eq!(
        texts(
            &rig.db,
            "SELECT company FROM crm_contacts WHERE surname = 'imp1'"
        )
        .await[0]
            .as_deref(),
        Some("Outlook AG")
    );
    assert_eq!(
        count(&rig.state, "SELECT COUNT(*) FROM ms_item_map").await,
        3
    );
    assert_eq!(rig.items(U, DistinguishedFolder::Contacts).await.len(), 3);
    drop(made);
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_between_a_row_and_its_mapping_never_makes_a_second_row() {
    no_second_row_after_a_failure_between_row_and_mapping(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_between_a_row_and_its_mapping_never_makes_a_second_row_on_postgres() {
    no_second_row_after_a_failure_between_row_and_mapping(true).await;
}

/// A contact that becomes the tenant's shared one moves from the own folder to the shared
/// folder (its old item deleted, a new one created). When the CreateItem fails after the
/// delete, the next steps must finish the move: the row is never taken for one the user
/// deleted in Outlook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_to_the_shared_folder_that_fails_halfway_deletes_no_row() {
    let rig = rig(Leading::Crm).await;
    exec(
        &rig.db,
        "INSERT INTO crm_contacts (id, tenant_id, owner_id, surname) VALUES (7, 1, 1, 'Wandert')",
    )
    .await;
    rig.sync(U, "contacts").await;
    assert_eq!(rig.items(U, DistinguishedFolder::Contacts).await.len(), 1);
    exec(
        &rig.db,
        "UPDATE crm_contacts SET owner_id = NULL WHERE id = 7",
    )
    .await;
    rig.sim_post(
        "faults",
        serde_json::json!({"operation": "CreateItem", "error_code": "ErrorServerBusy", "back_off_ms": 10, "count": 1}),
    )
    .await;
    rig.feed.poll_once().await.unwrap();
    let failed = rig.try_step(U, "contacts", Cause::Crm, false).await;
    assert!(
        matches!(failed, Err(SyncError::Throttled { .. })),
        "the CreateItem was refused: {failed:?}"
    );
    for _ in 0..3 {
        rig.sync(U, "contacts").await;
        rig.sync(U, "contacts/shared").await;
    }
    assert_eq!(
        count(&rig.db, "SELECT COUNT(*) FROM crm_contacts WHERE id = 7").await,
        1,
        "the row is still there"
    );
    assert!(rig.items(U, DistinguishedFolder::Contacts).await.is_empty());
    let shared = rig.shared_folder(U).await;
    let in_shared = rig.items_in(U, shared).await;
    assert_eq!(in_shared.len(), 1, "{in_shared:?}");
    rig.finish().await;
}
