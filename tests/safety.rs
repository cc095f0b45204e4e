//! Plan before writing, end to end against ews-sim and the databases: the delete breaker
//! (a few deletes pass, many are held; approve applies them, reject restores them from the
//! other side) in every scope — own contacts, the tenant's shared contacts, a mail folder, a
//! mailbox recreated empty — and deletes that hide behind our own writes.

mod common;
use common::rig::{Rig, RigOptions, USERS};
use common::{count, exec};

use ews::items::Item;
use ews::types::{DistinguishedFolder, FolderRef, ItemId};
use mailsync::config::Area;
use mailsync::db::integrity::{Decision, Side};

const U: &str = USERS[0];

fn ids(items: &[Item]) -> Vec<ItemId> {
    items.iter().filter_map(|i| i.id().cloned()).collect()
}

async fn contacts_rig() -> Rig {
    Rig::new(RigOptions {
        areas: vec![Area::Contacts],
        ..RigOptions::default()
    })
    .await
    .expect("SQLite rig")
}

async fn crm_contacts(rig: &Rig, n: usize, prefix: &str, owner: Option<i64>) {
    let owner = owner.map_or("NULL".to_owned(), |o| o.to_string());
    let values: Vec<String> = (0..n)
        .map(|i| format!("(1, {owner}, '{prefix}{i:02}')"))
        .collect();
    exec(
        &rig.db,
        &format!(
            "INSERT INTO crm_contacts (tenant_id, owner_id, surname) VALUES {}",
            values.join(", ")
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlook_deletes_a_few_pass_many_are_held_approve_deletes_reject_restores() {
    let rig = contacts_rig().await;
    crm_contacts(&rig, 30, "k", Some(1)).await;
    rig.sync(U, "contacts").await;
    let items = rig.items(U, DistinguishedFolder::Contacts).await;
    assert_eq!(items.len(), 30);

    // 3 of 30: under the limits, they pass.
    rig.user_deletes(U, &ids(&items[..3]), false).await;
    let r = rig.sync(U, "contacts").await;
    assert_eq!(r.held, 0);
    assert_eq!(
        count(&rig.db, "SELECT COUNT(*) FROM crm_contacts").await,
        27
    );

    // Back to 30, then all 30 at once: held, nothing deleted in the CRM.
    crm_contacts(&rig, 3, "n", Some(1)).await;
    rig.sync(U, "contacts").await;
    let items = rig.items(U, DistinguishedFolder::Contacts).await;
    assert_eq!(items.len(), 30);
    rig.user_deletes(U, &ids(&items), false).await;
    let r = rig.sync(U, "contacts").await;
    assert_eq!(r.held, 30, "every delete of the scope is held");
    assert_eq!(
        count(&rig.db, "SELECT COUNT(*) FROM crm_contacts").await,
        30
    );
    let held = rig.held(U).await;
    assert_eq!(held.len(), 30);
    assert!(held.iter().all(|h| h.side == Side::Crm && h.scope == "own"));
    assert!(held.iter().all(|h| !h.title.is_empty()), "{held:?}");
    // Held deletes stay held across further steps.
    rig.sync(U, "contacts").await;
    assert_eq!(
        count(&rig.db, "SELECT COUNT(*) FROM crm_contacts").await,
        30
    );

    // Reject: all 30 come back in Exchange, linked to their rows.
    rig.decide(U, Decision::Reject).await;
    rig.sync(U, "contacts").await;
    let back = rig.items(U, DistinguishedFolder::Contacts).await;
    assert_eq!(back.len(), 30, "rejected deletes are restored in Exchange");
    assert!(rig.held(U).await.is_empty());
    assert_eq!(count(&rig.db, "SELECT COUNT(*) FROM ms_item_map").await, 30);
    let stamped: std::collections::HashSet<i64> = back
        .iter()
        .filter_map(|i| mailsync::sync::fields::stamped_id(i, "crm_contacts"))
        .collect();
    assert_eq!(stamped.len(), 30);

    // All again, approved: deleted in the CRM.
    rig.user_deletes(U, &ids(&back), false).await;
    assert_eq!(rig.sync(U, "contacts").await.held, 30);
    rig.decide(U, Decision::Approve).await;
    rig.sync(U, "contacts").await;
    assert_eq!(count(&rig.db, "SELECT COUNT(*) FROM crm_contacts").await, 0);
    assert_eq!(count(&rig.db, "SELECT COUNT(*) FROM ms_item_map").await, 0);
    assert!(rig.held(U).await.is_empty());
    rig.finish().await;
}

/// One mass delete that reaches mailsync in parts (30 of 100 contacts deleted in Outlook,
/// seen by three steps of 10): judged as one. The first 20 (the limit) pass, the rest is
/// held; nothing after the limit reaches the CRM until an administrator decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_delete_seen_in_parts_is_judged_as_one() {
    let rig = contacts_rig().await;
    crm_contacts(&rig, 100, "m", Some(1)).await;
    rig.sync(U, "contacts").await;
    let items = rig.items(U, DistinguishedFolder::Contacts).await;
    assert_eq!(items.len(), 100);
    let mut held = Vec::new();
    for part in items[..30].chunks(10) {
        rig.user_deletes(U, &ids(part), false).await;
        held.push(rig.sync(U, "contacts").await.held);
    }
    assert_eq!(
        held,
        [0, 0, 10],
        "the third part is held with the first two"
    );
    assert_eq!(
        count(&rig.db, "SELECT COUNT(*) FROM crm_contacts").await,
        80
    );
    let h = rig.held(U).await;
    assert_eq!(h.len(), 10);
    assert!(h.iter().all(|h| h.side == Side::Crm && h.scope == "own"));
    rig.decide(U, Decision::Approve).await;
    rig.sync(U, "contacts").await;
    assert_eq!(
        count(&rig.db, "SELECT COUNT(*) FROM crm_contacts").await,
        70
    );
    rig.finish().await;
}

/// A decision meets what happened after the hold, and survives a failed step: records
/// edited since the hold are kept (and restored on the side that deleted them) when the
/// delete is approved, on each side; a rejection whose step fails (Exchange busy) is still
/// carried out by the next step, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_keep_newer_edits_and_survive_a_failed_step() {
    use mailsync_actors::Cause;
    let rig = contacts_rig().await;
    crm_contacts(&rig, 30, "e", Some(1)).await;
    rig.sync(U, "contacts").await;
    let items = rig.items(U, DistinguishedFolder::Contacts).await;

    // All 30 deleted in Outlook: held. The ERP edits two of them meanwhile; approved.
    rig.user_deletes(U, &ids(&items), false).await;
    assert_eq!(rig.sync(U, "contacts").await.held, 30);
    exec(
        &rig.db,
        "UPDATE crm_contacts SET job_title = 'neu' WHERE surname IN ('e00', 'e01')",
    )
    .await;
    rig.feed.poll_once().await.unwrap();
    rig.sync(U, "contacts").await;
    rig.decide(U, Decision::Approve).await;
    rig.sync(U, "contacts").await;
    assert_eq!(
        (
            count(&rig.db, "SELECT COUNT(*) FROM crm_contacts").await,
            count(&rig.db, "SELECT COUNT(*) FROM crm_contacts WHERE surname IN ('e00', 'e01') AND job_title = 'neu'").await
        ),
        (2, 2),
        "the rows edited after the hold are kept"
    );
    let back = rig.items(U, DistinguishedFolder::Contacts).await;
    assert_eq!(back.len(), 2, "and come back to Exchange");
    assert!(rig.held(U).await.is_empty());

    // 28 more rows, synced; then deleted in the CRM: held (Exchange side). The user edits
    // one item in Outlook meanwhile; approved: the edited one comes back to the CRM.
    crm_contacts(&rig, 28, "f", Some(1)).await;
    rig.sync(U, "contacts").await;
    exec(&rig.db, "DELETE FROM crm_contacts").await;
    rig.feed.poll_once().await.unwrap();
    assert_eq!(rig.sync(U, "contacts").await.held, 30);
    let now = rig.items(U, DistinguishedFolder::Contacts).await;
    let edited = now
        .iter()
        .find(|i| matches!(i, Item::Contact(c) if c.surname.as_deref() == Some("f05")))
        .unwrap()
        .id()
        .unwrap()
        .clone();
    let op = ews::ops::UpdateItem {
        changes: vec![ews::ops::ItemUpdate {
            id: ItemId {
                id: edited.id.clone(),
                change_key: None,
            },
            updates: Item::Contact(ews::items::Contact {
                job_title: Some("Outlook".into()),
                ..Default::default()
            })
            .updates()
            .into_iter()
            .filter(|u| u.key() == "contacts:JobTitle")
            .collect(),
        }],
        conflict: ews::ops::ConflictResolution::AlwaysOverwrite,
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
    rig.decide(U, Decision::Approve).await;
    rig.sync(U, "contacts").await;
    assert_eq!(count(&rig.db, "SELECT COUNT(*) FROM crm_contacts").await, 1);
    assert_eq!(
        common::texts(&rig.db, "SELECT surname, job_title FROM crm_contacts").await,
        [Some("f05".to_string()), Some("Outlook".to_string())],
        "the item edited after the hold is kept and its row restored"
    );
    let left = rig.items(U, DistinguishedFolder::Contacts).await;
    assert_eq!(left.len(), 1, "{left:?}");

    // A rejection whose step fails: the decision is kept and carried out next time, once.
    crm_contacts(&rig, 29, "g", Some(1)).await;
    rig.sync(U, "contacts").await;
    let all = rig.items(U, DistinguishedFolder::Contacts).await;
    assert_eq!(all.len(), 30);
    // The 29 new ones (the restored item's own history is not this case's).
    let new: Vec<Item> = all
        .into_iter()
        .filter(|i| matches!(i, Item::Contact(c) if c.surname.as_deref().is_some_and(|n| n.starts_with('g'))))
        .collect();
    rig.user_deletes(U, &ids(&new), false).await;
    assert_eq!(rig.sync(U, "contacts").await.held, 29);
    rig.decide(U, Decision::Reject).await;
    // A second, contradicting decision does not overturn the first before it is carried out.
    assert_eq!(
        rig.state
            .decide_held(U, None, None, Decision::Approve)
            .await
            .unwrap(),
        0
    );
    rig.sim_post(
        "faults",
        serde_json::json!({"operation": "CreateItem", "error_code": "ErrorServerBusy", "back_off_ms": 10, "count": 1}),
    )
    .await;
    let failed = rig.try_step(U, "contacts", Cause::Admin, false).await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(rig.held(U).await.len(), 29, "the decision is not lost");
    rig.sync(U, "contacts").await;
    assert!(rig.held(U).await.is_empty());
    assert_eq!(
        rig.items(U, DistinguishedFolder::Contacts).await.len(),
        30,
        "every rejected delete restored once"
    );
    assert_eq!(
        count(&rig.db, "SELECT COUNT(*) FROM crm_contacts").await,
        30
    );
    rig.finish().await;
}

/// Items the user moves back from Deleted Items (restored) find their CRM rows again: a few
/// whose deletes passed come back as rows once each, and many whose deletes were held
/// relink to their held rows instead of being imported a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_restored_from_deleted_items_find_their_rows() {
    let rig = contacts_rig().await;
    crm_contacts(&rig, 30, "r", Some(1)).await;
    rig.sync(U, "contacts").await;
    let items = rig.items(U, DistinguishedFolder::Contacts).await;
    // All 30 into Deleted Items: held. Moved back: the same 30 rows, nothing held.
    rig.user_deletes(U, &ids(&items), false).await;
    assert_eq!(rig.sync(U, "contacts").await.held, 30);
    let bin = ids(&rig.items(U, DistinguishedFolder::DeletedItems).await);
    assert_eq!(bin.len(), 30);
    let op = ews::ops::MoveItem {
        ids: bin,
        to: FolderRef::well_known(DistinguishedFolder::Contacts),
    };
    for r in rig
        .client
        .call(&ews::Target::impersonating(U), &op)
        .await
        .unwrap()
        .output
    {
        r.unwrap();
    }
    rig.sync(U, "contacts").await;
    rig.sync(U, "contacts").await;
    assert_eq!(
        count(&rig.db, "SELECT COUNT(*) FROM crm_contacts").await,
        30,
        "no row imported twice"
    );
    assert_eq!(rig.items(U, DistinguishedFolder::Contacts).await.len(), 30);
    assert_eq!(count(&rig.db, "SELECT COUNT(*) FROM ms_item_map").await, 30);
    assert!(
        rig.held(U).await.is_empty(),
        "{:?}",
        rig.held(U).await.len()
    );

    // 3 into Deleted Items: their deletes pass. Moved back: a row each again, once.
    let items = rig.items(U, DistinguishedFolder::Contacts).await;
    rig.user_deletes(U, &ids(&items[..3]), false).await;
    assert_eq!(rig.sync(U, "contacts").await.held, 0);
    assert_eq!(
        count(&rig.db, "SELECT COUNT(*) FROM crm_contacts").await,
        27
    );
    let op = ews::ops::MoveItem {
        ids: ids(&rig.items(U, DistinguishedFolder::DeletedItems).await),
        to: FolderRef::well_known(DistinguishedFolder::Contacts),
    };
    rig.client
        .call(&ews::Target::impersonating(U), &op)
        .await
        .unwrap();
    rig.sync(U, "contacts").await;
    rig.sync(U, "contacts").await;
    assert_eq!(
        count(&rig.db, "SELECT COUNT(*) FROM crm_contacts").await,
        30
    );
    assert_eq!(rig.items(U, DistinguishedFolder::Contacts).await.len(), 30);
    assert_eq!(count(&rig.db, "SELECT COUNT(*) FROM ms_item_map").await, 30);
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crm_deletes_many_are_held_approve_deletes_reject_restores() {
    let rig = contacts_rig().await;
    crm_contacts(&rig, 30, "c", Some(1)).await;
    rig.sync(U, "contacts").await;
    assert_eq!(rig.items(U, DistinguishedFolder::Contacts).await.len(), 30);

    exec(&rig.db, "DELETE FROM crm_contacts").await;
    let r = rig.sync(U, "contacts").await;
    assert_eq!(r.held, 30);
    assert_eq!(
        rig.items(U, DistinguishedFolder::Contacts).await.len(),
        30,
        "nothing deleted in Exchange"
    );
    assert!(rig.held(U).await.iter().all(|h| h.side == Side::Exchange));

    // Reject: the rows come back from Exchange.
    rig.decide(U, Decision::Reject).await;
    rig.sync(U, "contacts").await;
    assert_eq!(
        count(
            &rig.db,
            "SELECT COUNT(*) FROM crm_contacts WHERE owner_id = 1"
        )
        .await,
        30
    );
    assert_eq!(
        rig.items(U, DistinguishedFolder::Contacts).await.len(),
        30,
        "and nothing was copied"
    );
    assert_eq!(count(&rig.db, "SELECT COUNT(*) FROM ms_item_map").await, 30);
    let restored: i64 = count(
        &rig.db,
        "SELECT COUNT(*) FROM crm_contacts WHERE surname LIKE 'c%'",
    )
    .await;
    assert_eq!(restored, 30, "with their values");

    // Again, approved: deleted in Exchange.
    exec(&rig.db, "DELETE FROM crm_contacts").await;
    assert_eq!(rig.sync(U, "contacts").await.held, 30);
    rig.decide(U, Decision::Approve).await;
    rig.sync(U, "contacts").await;
    assert!(rig.items(U, DistinguishedFolder::Contacts).await.is_empty());
    assert_eq!(count(&rig.db, "SELECT COUNT(*) FROM ms_item_map").await, 0);
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenants_shared_contacts_are_a_scope_of_their_own() {
    let rig = contacts_rig().await;
    crm_contacts(&rig, 25, "shared", None).await;
    crm_contacts(&rig, 5, "own", Some(1)).await;
    rig.sync(U, "contacts").await;
    let shared = rig.shared_folder(U).await;
    let in_shared = rig.items_in(U, shared.clone()).await;
    assert_eq!(in_shared.len(), 25);

    // "Select all, delete" in the shared folder: held, and the own contacts sync on.
    rig.user_deletes(U, &ids(&in_shared), false).await;
    let r = rig.sync(U, "contacts/shared").await;
    assert_eq!(r.held, 25);
    assert_eq!(
        count(
            &rig.db,
            "SELECT COUNT(*) FROM crm_contacts WHERE owner_id IS NULL"
        )
        .await,
        25
    );
    let held = rig.held(U).await;
    assert!(held.iter().all(|h| h.scope == "shared"), "{held:?}");
    // An own delete is not held: another scope.
    let own = rig.items(U, DistinguishedFolder::Contacts).await;
    rig.user_deletes(U, &ids(&own[..1]), false).await;
    assert_eq!(
        rig.sync(U, "contacts").await.held,
        25,
        "still only the shared deletes are held"
    );
    assert!(rig.held(U).await.iter().all(|h| h.scope == "shared"));
    assert_eq!(
        count(
            &rig.db,
            "SELECT COUNT(*) FROM crm_contacts WHERE owner_id = 1"
        )
        .await,
        4
    );
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_recreated_empty_is_held_and_rejecting_writes_everything_back() {
    let rig = contacts_rig().await;
    crm_contacts(&rig, 10, "r", Some(1)).await;
    rig.sync(U, "contacts").await;
    assert_eq!(rig.items(U, DistinguishedFolder::Contacts).await.len(), 10);

    // The administrator deletes the mailbox and creates it again: new ids, nothing in it.
    let http = reqwest::Client::new();
    http.post(format!("{}/sim/mailboxes/{U}/recreate", rig.sim.base_url()))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    rig.open(U).await;
    let r = rig.sync(U, "contacts").await;
    assert_eq!(r.held, 10, "an emptied side is held, not mirrored");
    assert_eq!(
        count(&rig.db, "SELECT COUNT(*) FROM crm_contacts").await,
        10
    );
    rig.decide(U, Decision::Reject).await;
    rig.sync(U, "contacts").await;
    assert_eq!(rig.items(U, DistinguishedFolder::Contacts).await.len(), 10);
    assert_eq!(
        count(&rig.db, "SELECT COUNT(*) FROM crm_contacts").await,
        10
    );
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_in_outlook_right_after_our_create_is_never_lost() {
    // Created from the CRM and deleted in Outlook before any other step reads the folder:
    // SyncFolderItems from the stored state nets "created, then deleted" into nothing, so the
    // delete must be found another way. Many times, with nothing lost.
    let rig = contacts_rig().await;
    crm_contacts(&rig, 2, "keep", Some(1)).await;
    rig.sync(U, "contacts").await;
    for round in 0..15 {
        exec(
            &rig.db,
            &format!("INSERT INTO crm_contacts (tenant_id, owner_id, surname) VALUES (1, 1, 'gone{round}')"),
        )
        .await;
        // Only CRM changes wake the step: it writes and reads no SyncFolderItems.
        rig.feed.poll_once().await.unwrap();
        rig.step_for(U, "contacts", mailsync_actors::Cause::Crm)
            .await;
        let items = rig.items(U, DistinguishedFolder::Contacts).await;
        let ours: Vec<ItemId> = items
            .iter()
            .filter(|i| matches!(i, Item::Contact(c) if c.surname.as_deref() == Some(&format!("gone{round}"))))
            .filter_map(|i| i.id().cloned())
            .collect();
        assert_eq!(ours.len(), 1, "round {round}: created in Exchange");
        rig.user_deletes(U, &ours, round % 2 == 0).await;
        rig.sync(U, "contacts").await;
        assert_eq!(
            count(
                &rig.db,
                &format!("SELECT COUNT(*) FROM crm_contacts WHERE surname = 'gone{round}'")
            )
            .await,
            0,
            "round {round}: the delete reached the CRM"
        );
    }
    assert_eq!(count(&rig.db, "SELECT COUNT(*) FROM crm_contacts").await, 2);
    assert_eq!(rig.items(U, DistinguishedFolder::Contacts).await.len(), 2);
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stamp_from_another_tenant_links_nothing_there() {
    // A contact of tenant 1's operator, copied with its stamp (CopyItem keeps extended
    // properties) into the mailbox of tenant 2's operator, then edited and deleted there.
    let rig = contacts_rig().await;
    exec(&rig.db, "INSERT INTO crm_contacts (tenant_id, owner_id, surname, company, job_title) VALUES (1, 1, 'Original', 'Muster GmbH', 'Einkauf')").await;
    rig.sync(U, "contacts").await;
    rig.sync(USERS[1], "contacts").await;
    let original = rig.items(U, DistinguishedFolder::Contacts).await;
    assert_eq!(original.len(), 1);
    let stamp = mailsync::sync::fields::stamped_id(&original[0], "crm_contacts");
    assert_eq!(stamp, Some(1));
    let mut copy = original[0].clone();
    if let Item::Contact(c) = &mut copy {
        c.id = None;
        c.company_name = Some("Andere AG".into());
    }
    let copied = rig
        .user_creates(
            USERS[1],
            FolderRef::well_known(DistinguishedFolder::Contacts),
            vec![copy],
        )
        .await;
    assert_eq!(
        mailsync::sync::fields::stamped_id(
            &rig.items(USERS[1], DistinguishedFolder::Contacts).await[0],
            "crm_contacts"
        ),
        Some(1),
        "the copy carries tenant 1's stamp"
    );
    rig.sync(USERS[1], "contacts").await;
    let row = common::texts(
        &rig.db,
        "SELECT company, job_title, ews_id FROM crm_contacts WHERE id = 1",
    )
    .await;
    assert_eq!(
        row[0].as_deref(),
        Some("Muster GmbH"),
        "tenant 1's row untouched"
    );
    assert_eq!(
        count(
            &rig.db,
            "SELECT COUNT(*) FROM crm_contacts WHERE tenant_id = 2 AND owner_id = 2"
        )
        .await,
        1,
        "the copy is a new contact of tenant 2"
    );
    rig.user_deletes(USERS[1], &copied, false).await;
    rig.sync(USERS[1], "contacts").await;
    assert_eq!(
        count(&rig.db, "SELECT COUNT(*) FROM crm_contacts WHERE id = 1").await,
        1,
        "tenant 1's row survives the copy's delete"
    );
    let after = common::texts(&rig.db, "SELECT ews_id FROM crm_contacts WHERE id = 1").await;
    assert_eq!(after[0], row[2], "and still points at its own item");
    assert_eq!(rig.items(U, DistinguishedFolder::Contacts).await.len(), 1);
    rig.finish().await;
}
