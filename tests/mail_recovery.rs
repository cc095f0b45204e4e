//! Mail sync when things go wrong (tests/mail_rig): lost mappings link again, start dates and
//! excluded folders, the delete breaker on mail, a delete right after our write, and a failed
//! round's leftovers found by their stamps.

mod common;
mod mail_rig;
use mail_rig::*;

/// A crash between any write and its mapping links instead of copying: mappings lost on both
/// sides (as if the process died before storing them) are rebuilt from the CRM rows' Exchange
/// ids and the stamps on Exchange's messages.
#[tokio::test]
async fn lost_mappings_link_again_without_duplicates() {
    if let Some(rig) = Rig::postgres(Options::default()).await {
        lost_mappings(rig).await;
    }
}

#[tokio::test]
async fn lost_mappings_link_again_without_duplicates_on_mariadb() {
    if let Some(rig) = Rig::mariadb(Options::default()).await {
        lost_mappings(rig).await;
    }
}

async fn lost_mappings(rig: Rig) {
    let inbox = rig.crm_folder("Inbox", Some("inbox"), None).await;
    for n in 0..5 {
        rig.crm_mail(inbox, &mime(20 + n, "crm", DATE), n % 2 == 0, SENT)
            .await;
        rig.user_creates_mail(
            FolderRef::well_known(DistinguishedFolder::Inbox),
            mime(30 + n, "outlook", DATE),
            false,
        )
        .await;
    }
    rig.sync().await;
    let ex = rig.exchange_folders().await;
    assert_eq!(rig.exchange_mails(&ex["Inbox"]).await.len(), 10);
    assert_eq!(count(&rig.db, "SELECT count(*) FROM crm_mails").await, 10);
    // The crash: every mapping and sync state gone, the CRM rows queued again.
    exec(&rig.state, "DELETE FROM ms_item_map").await;
    exec(&rig.state, "DELETE FROM ms_folder_state").await;
    exec(&rig.db, "UPDATE crm_mails SET subject = subject").await;
    rig.sync().await;
    assert_eq!(rig.exchange_mails(&ex["Inbox"]).await.len(), 10);
    assert_eq!(count(&rig.db, "SELECT count(*) FROM crm_mails").await, 10);
    assert_eq!(
        count(
            &rig.db,
            "SELECT count(*) FROM crm_mail_folders WHERE role = 'inbox'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &rig.state,
            "SELECT count(*) FROM ms_item_map WHERE crm_table = 'crm_mails'"
        )
        .await,
        10
    );
    rig.finish().await;
}

/// Initial sync CRM → Exchange honours the start date per folder and skips excluded folders;
/// including a folder later syncs its backlog both ways.
#[tokio::test]
async fn start_dates_and_an_excluded_folder_that_is_included_later() {
    if let Some(rig) = Rig::postgres(start_dates_options()).await {
        start_dates(rig).await;
    }
}

#[tokio::test]
async fn start_dates_and_an_excluded_folder_that_is_included_later_on_mariadb() {
    if let Some(rig) = Rig::mariadb(start_dates_options()).await {
        start_dates(rig).await;
    }
}

fn start_dates_options() -> Options {
    Options {
        mail: MailConfig {
            excluded_folders: vec!["Projekte/Alt".into()],
            ..MailConfig::default()
        },
        record: true,
        ..Options::default()
    }
}

async fn start_dates(rig: Rig) {
    let inbox = rig.crm_folder("Inbox", Some("inbox"), None).await;
    exec(
        &rig.db,
        &format!("UPDATE crm_mail_folders SET sync_from = '2026-01-01' WHERE id = {inbox}"),
    )
    .await;
    let archiv = rig.crm_folder("Archiv", None, None).await;
    exec(
        &rig.db,
        &format!("UPDATE crm_mail_folders SET sync_excluded = TRUE WHERE id = {archiv}"),
    )
    .await;
    let projekte = rig.crm_folder("Projekte", None, None).await;
    let alt = rig.crm_folder("Alt", None, Some(projekte)).await;
    let old = mime(40, "alt", "Tue, 01 Oct 2024 10:00:00 +0200");
    rig.crm_mail(inbox, &old, true, "2024-10-01T08:00:00Z")
        .await;
    let new = mime(41, "neu", DATE);
    rig.crm_mail(inbox, &new, false, SENT).await;
    let archived = mime(42, "archiv", DATE);
    rig.crm_mail(archiv, &archived, true, SENT).await;
    let by_path = mime(43, "alt-projekt", DATE);
    rig.crm_mail(alt, &by_path, true, SENT).await;
    let counted = rig.initial(Direction::CrmToExchange).await;
    assert!(counted >= 4, "folders and mails written: {counted}");

    let ex = rig.exchange_folders().await;
    // The tree is complete; only the mails are left out.
    for path in ["Inbox", "Archiv", "Projekte/Alt"] {
        assert!(ex.contains_key(path), "{path} in {ex:?}");
    }
    assert_eq!(
        hashes(&rig.exchange_mails(&ex["Inbox"]).await),
        [sha(&new)].into_iter().collect(),
        "mails before the start date stay in the CRM"
    );
    assert!(rig.exchange_mails(&ex["Archiv"]).await.is_empty());
    assert!(rig.exchange_mails(&ex["Projekte/Alt"]).await.is_empty());

    // Meanwhile a user files a message into the excluded folder in Outlook: not imported.
    let outlook = mime(44, "outlook-archiv", DATE);
    rig.user_creates_mail(FolderRef::Id(ex["Archiv"].clone()), outlook.clone(), false)
        .await;
    rig.sync().await;
    assert_eq!(rig.crm_mails(archiv).await.len(), 1);

    // Included: the backlog of both sides arrives.
    exec(
        &rig.db,
        &format!("UPDATE crm_mail_folders SET sync_excluded = FALSE WHERE id = {archiv}"),
    )
    .await;
    rig.sync().await;
    let both: BTreeSet<String> = [sha(&archived), sha(&outlook)].into_iter().collect();
    assert_eq!(hashes(&rig.exchange_mails(&ex["Archiv"]).await), both);
    assert_eq!(
        rig.crm_mails(archiv)
            .await
            .into_iter()
            .map(|m| m.0)
            .collect::<BTreeSet<_>>(),
        both
    );
    rig.finish().await;
}

/// The breaker for mail: a folder deleted in Exchange with its messages is held (the CRM keeps
/// the folder and its mails); rejected, the folder is created again in Exchange with its
/// messages; deleted again and approved, it goes from the CRM. Then many messages deleted at
/// once in a folder: held, approved, deleted.
#[tokio::test]
async fn a_mail_folder_deleted_with_its_messages_is_held_then_restored_or_deleted() {
    use mailsync::db::integrity::{Decision, Side};
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let rig = Rig::sqlite(Options::default()).await;
    let inbox = rig.crm_folder("Inbox", Some("inbox"), None).await;
    let projects = rig.crm_folder("Projekte", None, Some(inbox)).await;
    for n in 0..5 {
        rig.crm_mail(projects, &mime(100 + n, "projekt", DATE), false, SENT)
            .await;
    }
    rig.sync().await;
    let ex = rig.exchange_folders().await;
    let folder = ex["Inbox/Projekte"].clone();
    assert_eq!(rig.exchange_mails(&folder).await.len(), 5);

    // Outlook: the folder is deleted for good, messages and all.
    rig.call(&ews::ops::DeleteFolder {
        folder: folder.clone(),
        delete_type: DeleteType::HardDelete,
    })
    .await;
    rig.sync().await;
    assert_eq!(
        count(
            &rig.db,
            &format!("SELECT count(*) FROM crm_mails WHERE folder_id = {projects}")
        )
        .await,
        5,
        "nothing deleted in the CRM"
    );
    let held = rig.state.held(USER, None).await.unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        (held[0].crm_table.as_str(), held[0].side),
        ("crm_mail_folders", Side::Crm)
    );

    // Rejected: the folder comes back in Exchange with its five messages.
    rig.state
        .decide_held(USER, None, None, Decision::Reject)
        .await
        .unwrap();
    rig.sync().await;
    let ex = rig.exchange_folders().await;
    let folder = ex
        .get("Inbox/Projekte")
        .expect("the folder is back")
        .clone();
    assert_eq!(rig.exchange_mails(&folder).await.len(), 5);
    assert!(rig.state.held(USER, None).await.unwrap().is_empty());

    // Deleted again, approved: gone from the CRM with its mails.
    rig.call(&ews::ops::DeleteFolder {
        folder,
        delete_type: DeleteType::HardDelete,
    })
    .await;
    rig.sync().await;
    assert_eq!(rig.state.held(USER, None).await.unwrap().len(), 1);
    rig.state
        .decide_held(USER, None, None, Decision::Approve)
        .await
        .unwrap();
    rig.sync().await;
    assert_eq!(
        count(
            &rig.db,
            &format!("SELECT count(*) FROM crm_mail_folders WHERE id = {projects}")
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &rig.db,
            &format!("SELECT count(*) FROM crm_mails WHERE folder_id = {projects}")
        )
        .await,
        0
    );

    // 30 messages in the inbox, all deleted at once in Outlook: held; approved: deleted.
    let mut ids = Vec::new();
    for n in 0..30 {
        ids.push(
            rig.user_creates_mail(
                FolderRef::well_known(DistinguishedFolder::Inbox),
                mime(200 + n, "massenweise", DATE),
                false,
            )
            .await,
        );
    }
    rig.sync().await;
    assert_eq!(
        count(
            &rig.db,
            &format!("SELECT count(*) FROM crm_mails WHERE folder_id = {inbox}")
        )
        .await,
        30
    );
    rig.call(&DeleteItem {
        ids: ids.clone(),
        delete_type: DeleteType::HardDelete,
    })
    .await;
    rig.sync().await;
    assert_eq!(
        count(
            &rig.db,
            &format!("SELECT count(*) FROM crm_mails WHERE folder_id = {inbox}")
        )
        .await,
        30,
        "held"
    );
    let held = rig.state.held(USER, Some("crm_mails")).await.unwrap();
    assert_eq!(held.len(), 30);
    assert!(held.iter().all(|h| h.scope == "inbox"), "{held:?}");
    rig.state
        .decide_held(USER, None, None, Decision::Approve)
        .await
        .unwrap();
    rig.sync().await;
    assert_eq!(
        count(
            &rig.db,
            &format!("SELECT count(*) FROM crm_mails WHERE folder_id = {inbox}")
        )
        .await,
        0
    );
    rig.finish().await;
}

/// A mail written to Exchange by a step woken only by CRM changes, deleted in Outlook before
/// its folder is read again: the delete reaches the CRM (the folder's read from an older
/// state would report nothing), every time.
#[tokio::test]
async fn a_mail_deleted_in_outlook_right_after_we_wrote_it_is_not_lost() {
    let rig = Rig::sqlite(Options::default()).await;
    let inbox = rig.crm_folder("Inbox", Some("inbox"), None).await;
    rig.crm_mail(inbox, &mime(300, "keep", DATE), false, SENT)
        .await;
    rig.crm_mail(inbox, &mime(301, "keep", DATE), false, SENT)
        .await;
    rig.sync().await;
    for round in 0..8 {
        let id = rig
            .crm_mail(inbox, &mime(400 + round, "gone", DATE), false, SENT)
            .await;
        rig.sync_with(Cause::Crm).await;
        let written: Vec<ItemId> = common::texts(
            &rig.state,
            &format!("SELECT ews_item_id FROM ms_item_map WHERE crm_table = 'crm_mails' AND crm_id = {id}"),
        )
        .await
        .into_iter()
        .flatten()
        .map(|id| ItemId { id, change_key: None })
        .collect();
        assert!(!written.is_empty(), "round {round}: written to Exchange");
        rig.call(&DeleteItem {
            ids: written,
            delete_type: if round % 2 == 0 {
                DeleteType::HardDelete
            } else {
                DeleteType::SoftDelete
            },
        })
        .await;
        // (Without a stream here, a timer reads every folder, as the safety-net read does.)
        rig.sync_with(Cause::Timer).await;
        assert_eq!(
            count(
                &rig.db,
                &format!("SELECT count(*) FROM crm_mails WHERE id = {id}")
            )
            .await,
            0,
            "round {round}: the delete reached the CRM"
        );
    }
    assert_eq!(count(&rig.db, "SELECT count(*) FROM crm_mails").await, 2);
    rig.finish().await;
}

/// Whether a mail folder's last round finished clean is kept per folder: folder B's round
/// fails after its CreateItem (the CRM refuses the Exchange id), folder A's next round is
/// clean — B's next round still searches for stamps and links its message instead of
/// creating it a second time.
#[tokio::test]
async fn a_failed_round_in_one_mail_folder_is_searched_again_after_another_is_clean() {
    let rig = Rig::sqlite(Options::default()).await;
    let a = rig.crm_folder("Projekte A", None, None).await;
    let b = rig.crm_folder("Projekte B", None, None).await;
    rig.sync().await;
    exec(
        &rig.db,
        "CREATE TRIGGER failpoint BEFORE UPDATE OF ews_id ON crm_mails \
         BEGIN SELECT RAISE(ABORT, 'failpoint: the Exchange id refused'); END",
    )
    .await;
    rig.crm_mail(b, &mime(41, "b", DATE), false, SENT).await;
    while rig.feed.poll_once().await.unwrap().is_some() {}
    let mut causes = Causes::default();
    causes.insert(Cause::Crm);
    let failed = rig
        .engine
        .sync_folder(StepRequest {
            mailbox: USER.into(),
            folder: "mail".into(),
            full_resync: false,
            causes,
            ctx: StepContext::new(rig.throttle.clone()),
        })
        .await;
    let err = format!("{:?}", failed.expect_err("the record was refused"));
    assert!(err.contains("failpoint"), "{err}");
    let ex = rig.exchange_folders().await;
    assert_eq!(rig.exchange_mails(&ex["Projekte B"]).await.len(), 1);
    exec(&rig.db, "DROP TRIGGER failpoint").await;
    // A's round (the lower folder id goes first) finishes clean, then B's.
    rig.crm_mail(a, &mime(42, "a", DATE), false, SENT).await;
    rig.sync_with(Cause::Crm).await;
    assert_eq!(rig.exchange_mails(&ex["Projekte A"]).await.len(), 1);
    assert_eq!(
        rig.exchange_mails(&ex["Projekte B"]).await.len(),
        1,
        "B's message linked, not created twice"
    );
    assert_eq!(
        count(
            &rig.state,
            "SELECT count(*) FROM ms_item_map WHERE crm_table = 'crm_mails'"
        )
        .await,
        2
    );
    rig.finish().await;
}
