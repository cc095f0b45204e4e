//! Mail sync end to end (tests/mail_rig): the folder tree by role, messages with their flags,
//! moves and deletes both ways on PostgreSQL, MariaDB and SQLite, the outbox through Exchange
//! or an SMTP server, decoded headers, and the convergence checker on mail.

mod common;
mod mail_rig;
use mail_rig::*;

/// The folder tree both ways: distinguished folders link by role whatever their names (a
/// German mailbox, an English CRM), custom folders are created where missing; renames, moves
/// and deletes follow on either side.
async fn folder_tree(rig: &Rig) {
    let inbox = rig.crm_folder("Inbox", Some("inbox"), None).await;
    rig.crm_folder("Sent Items", Some("sentitems"), None).await;
    let projekte = rig.crm_folder("Projekte", None, Some(inbox)).await;
    let kunden = rig
        .call(&CreateFolder {
            parent: FolderRef::well_known(DistinguishedFolder::Inbox),
            folders: vec![ews::items::Folder {
                display_name: Some("Kunden".into()),
                folder_class: Some("IPF.Note".into()),
                ..Default::default()
            }],
        })
        .await
        .remove(0)
        .unwrap();
    rig.sync().await;

    let crm = rig.crm_folders().await;
    // One CRM folder per role: linked, never duplicated under the German name.
    assert_eq!(
        count(
            &rig.db,
            "SELECT count(*) FROM crm_mail_folders WHERE role = 'inbox'"
        )
        .await,
        1
    );
    assert!(crm.contains_key("Inbox/Kunden"), "{crm:?}");
    assert!(!crm.keys().any(|k| k.starts_with("Posteingang")), "{crm:?}");
    // Roles Exchange has and the CRM had not arrive under Exchange's names.
    assert!(crm.contains_key("Gelöschte Elemente"), "{crm:?}");
    assert_eq!(
        count(&rig.db, "SELECT count(*) FROM crm_mail_folders WHERE role = 'deleteditems' AND name = 'Gelöschte Elemente'").await,
        1
    );
    let ex = rig.exchange_folders().await;
    assert!(ex.contains_key("Posteingang/Projekte"), "{ex:?}");
    assert!(!ex.contains_key("Inbox"), "{ex:?}");

    // Rename in the CRM, rename and move in Exchange.
    exec(
        &rig.db,
        &format!("UPDATE crm_mail_folders SET name = 'Projekte 2026' WHERE id = {projekte}"),
    )
    .await;
    rig.call(&UpdateFolder {
        folder: kunden.clone(),
        display_name: "Stammkunden".into(),
    })
    .await;
    rig.sync().await;
    let ex = rig.exchange_folders().await;
    assert!(ex.contains_key("Posteingang/Projekte 2026"), "{ex:?}");
    let crm = rig.crm_folders().await;
    assert!(crm.contains_key("Inbox/Stammkunden"), "{crm:?}");

    rig.call(&ews::ops::MoveFolder {
        folder: ex["Posteingang/Stammkunden"].clone(),
        to: FolderRef::well_known(DistinguishedFolder::MsgFolderRoot),
    })
    .await;
    rig.sync().await;
    let crm = rig.crm_folders().await;
    assert!(crm.contains_key("Stammkunden"), "{crm:?}");

    // Delete in Exchange, delete in the CRM.
    rig.call(&ews::ops::DeleteFolder {
        folder: rig.exchange_folders().await["Stammkunden"].clone(),
        delete_type: DeleteType::HardDelete,
    })
    .await;
    exec(
        &rig.db,
        &format!("DELETE FROM crm_mail_folders WHERE id = {projekte}"),
    )
    .await;
    rig.sync().await;
    let crm = rig.crm_folders().await;
    assert!(!crm.contains_key("Stammkunden"), "{crm:?}");
    let ex = rig.exchange_folders().await;
    assert!(!ex.contains_key("Posteingang/Projekte 2026"), "{ex:?}");
    // Deleted the default way: into Deleted Items, where the user can restore it.
    assert!(
        ex.contains_key("Gelöschte Elemente/Projekte 2026"),
        "{ex:?}"
    );
    // ... and it does not come back into the CRM from there.
    rig.sync().await;
    let crm = rig.crm_folders().await;
    assert!(!crm.keys().any(|k| k.contains("Projekte")), "{crm:?}");
}

#[tokio::test]
async fn folder_tree_both_ways_by_role_in_a_german_mailbox_postgres() {
    let Some(rig) = Rig::postgres(Options {
        german: true,
        record: true,
        ..Options::default()
    })
    .await
    else {
        return;
    };
    folder_tree(&rig).await;
    rig.finish().await;
}

#[tokio::test]
async fn folder_tree_both_ways_by_role_in_a_german_mailbox_mariadb() {
    let Some(rig) = Rig::mariadb(Options {
        german: true,
        record: true,
        ..Options::default()
    })
    .await
    else {
        return;
    };
    folder_tree(&rig).await;
    rig.finish().await;
}

#[tokio::test]
async fn folder_tree_both_ways_by_role_in_a_german_mailbox_sqlite() {
    let rig = Rig::sqlite(Options {
        german: true,
        ..Options::default()
    })
    .await;
    folder_tree(&rig).await;
    rig.finish().await;
}

/// Messages both ways with their MIME byte for byte (attachments included), read flags,
/// moves and deletes both ways; a move is a move, never a copy.
async fn messages(rig: &Rig) {
    let inbox = rig.crm_folder("Inbox", Some("inbox"), None).await;
    let archiv = rig.crm_folder("Archiv", None, None).await;
    let from_crm = mime(1, "Angebot", DATE);
    let crm_id = rig.crm_mail(inbox, &from_crm, false, SENT).await;
    let from_outlook = mime(2, "Rückfrage", DATE);
    let ews_id = rig
        .user_creates_mail(
            FolderRef::well_known(DistinguishedFolder::Inbox),
            from_outlook.clone(),
            true,
        )
        .await;
    rig.sync().await;

    let ex = rig.exchange_folders().await;
    let ex_inbox = rig.exchange_mails(&ex["Inbox"]).await;
    let crm_inbox = rig.crm_mails(inbox).await;
    assert_eq!(
        hashes(&ex_inbox),
        crm_inbox
            .iter()
            .map(|m| m.0.clone())
            .collect::<BTreeSet<_>>()
    );
    assert_eq!(
        hashes(&ex_inbox),
        [sha(&from_crm), sha(&from_outlook)].into_iter().collect()
    );
    assert_eq!(
        count(&rig.db, "SELECT count(*) FROM crm_mails").await,
        2,
        "no copies"
    );
    // Filed as received mail, not as an unsent draft (PR_MESSAGE_FLAGS set at creation).
    let filed = ex_inbox
        .iter()
        .find(|m| m.0 == sha(&from_crm))
        .unwrap()
        .2
        .clone();
    let got = rig
        .call(&GetItem {
            ids: vec![filed],
            shape: Shape::all_properties(vec![]),
        })
        .await;
    let Ok(Item::Message(filed)) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!((filed.is_draft, filed.is_read), (Some(false), Some(false)));
    let imported = count(
        &rig.db,
        &format!("SELECT id FROM crm_mails WHERE id <> {crm_id}"),
    )
    .await;
    assert_eq!(
        count(
            &rig.db,
            &format!("SELECT count(*) FROM crm_mails WHERE is_read AND id = {imported}")
        )
        .await,
        1,
        "the read flag came with the message"
    );
    // The envelope columns are filled from Exchange.
    assert_eq!(
        count(&rig.db, &format!("SELECT count(*) FROM crm_mails WHERE id = {imported} AND subject = 'Rückfrage' AND sender = 'kunde2@example.org' AND internet_message_id IS NOT NULL AND size > 0")).await,
        1
    );

    // Read flags both ways.
    exec(
        &rig.db,
        &format!("UPDATE crm_mails SET is_read = TRUE WHERE id = {crm_id}"),
    )
    .await;
    let current = rig.exchange_mails(&ex["Inbox"]).await;
    let outlook_now = current
        .iter()
        .find(|m| m.0 == sha(&from_outlook))
        .unwrap()
        .2
        .clone();
    rig.call(&UpdateItem {
        changes: vec![ItemUpdate {
            id: outlook_now,
            updates: Item::Message(Message {
                is_read: Some(false),
                ..Message::default()
            })
            .updates(),
        }],
        conflict: ews::ops::ConflictResolution::AlwaysOverwrite,
        disposition: Some(MessageDisposition::SaveOnly),
        calendar: false,
    })
    .await;
    rig.sync().await;
    let flags: BTreeMap<String, bool> = rig
        .exchange_mails(&ex["Inbox"])
        .await
        .into_iter()
        .map(|m| (m.0, m.1))
        .collect();
    assert!(flags[&sha(&from_crm)], "CRM read → Exchange");
    assert_eq!(
        count(
            &rig.db,
            &format!("SELECT count(*) FROM crm_mails WHERE is_read AND id = {imported}")
        )
        .await,
        0,
        "Exchange unread → CRM"
    );

    // Moves both ways: the Outlook message into Archiv in Exchange, the CRM one in the CRM.
    let outlook_now = rig
        .exchange_mails(&ex["Inbox"])
        .await
        .into_iter()
        .find(|m| m.0 == sha(&from_outlook))
        .unwrap()
        .2;
    rig.call(&MoveItem {
        ids: vec![outlook_now],
        to: FolderRef::Id(ex["Archiv"].clone()),
    })
    .await;
    exec(
        &rig.db,
        &format!("UPDATE crm_mails SET folder_id = {archiv} WHERE id = {crm_id}"),
    )
    .await;
    rig.sync().await;
    assert!(rig.exchange_mails(&ex["Inbox"]).await.is_empty());
    assert_eq!(
        hashes(&rig.exchange_mails(&ex["Archiv"]).await),
        [sha(&from_crm), sha(&from_outlook)].into_iter().collect()
    );
    assert_eq!(
        count(&rig.db, &format!("SELECT count(*) FROM crm_mails WHERE folder_id = {archiv} AND id IN ({crm_id}, {imported})")).await,
        2,
        "both rows moved, same ids: no copy"
    );
    assert_eq!(count(&rig.db, "SELECT count(*) FROM crm_mails").await, 2);

    // Deletes: in the CRM → Exchange's Deleted Items (the default), not back into the CRM;
    // in Exchange (hard) → gone from the CRM.
    exec(
        &rig.db,
        &format!("DELETE FROM crm_mails WHERE id = {crm_id}"),
    )
    .await;
    let outlook_now = rig
        .exchange_mails(&ex["Archiv"])
        .await
        .into_iter()
        .find(|m| m.0 == sha(&from_outlook))
        .unwrap()
        .2;
    rig.call(&DeleteItem {
        ids: vec![outlook_now],
        delete_type: DeleteType::HardDelete,
    })
    .await;
    rig.sync().await;
    assert!(rig.exchange_mails(&ex["Archiv"]).await.is_empty());
    assert_eq!(
        hashes(&rig.exchange_mails(&ex["Deleted Items"]).await),
        [sha(&from_crm)].into_iter().collect()
    );
    assert_eq!(count(&rig.db, "SELECT count(*) FROM crm_mails").await, 0);
    let _ = ews_id;
}

#[tokio::test]
async fn messages_flags_moves_and_deletes_both_ways_postgres() {
    let Some(rig) = Rig::postgres(Options {
        record: true,
        ..Options::default()
    })
    .await
    else {
        return;
    };
    messages(&rig).await;
    rig.finish().await;
}

#[tokio::test]
async fn messages_flags_moves_and_deletes_both_ways_mariadb() {
    let Some(rig) = Rig::mariadb(Options {
        record: true,
        ..Options::default()
    })
    .await
    else {
        return;
    };
    messages(&rig).await;
    rig.finish().await;
}

#[tokio::test]
async fn messages_flags_moves_and_deletes_both_ways_sqlite() {
    let rig = Rig::sqlite(Options::default()).await;
    messages(&rig).await;
    rig.finish().await;
}

/// Sending: the mailbox's own address through Exchange (SendAndSaveCopy: the copy lands in
/// Sent Items and from there in the CRM's sent items), an alternative sender through the SMTP
/// server (byte for byte, envelope from the row); without an SMTP server the row fails with
/// the reason and the others are still sent.
#[tokio::test]
async fn outbox_sends_through_exchange_or_the_smtp_server() {
    let sink = SmtpSink::start().await;
    if let Some(rig) = Rig::postgres(outbox_options(&sink)).await {
        outbox(rig, sink).await;
    }
}

#[tokio::test]
async fn outbox_sends_through_exchange_or_the_smtp_server_on_mariadb() {
    let sink = SmtpSink::start().await;
    if let Some(rig) = Rig::mariadb(outbox_options(&sink)).await {
        outbox(rig, sink).await;
    }
}

fn outbox_options(sink: &SmtpSink) -> Options {
    Options {
        smtp: Some(SmtpConfig {
            host: "127.0.0.1".into(),
            port: sink.addr.port(),
            tls: SmtpTls::None,
            credentials: None,
        }),
        record: true,
        ..Options::default()
    }
}

async fn outbox(rig: Rig, sink: SmtpSink) {
    rig.crm_folder("Gesendet", Some("sentitems"), None).await;
    rig.sync().await;
    let own = mime(10, "Auftragsbestätigung", DATE);
    let alt = mime(11, "Newsletter", DATE);
    for (sender, body) in [(USER, &own), ("vertrieb@example.com", &alt)] {
        rig.crm_outbox(
            sender,
            "Kunde <kunde10@example.org>, kunde11@example.org",
            body,
        )
        .await;
    }
    rig.sync().await;
    assert_eq!(
        count(
            &rig.db,
            "SELECT count(*) FROM crm_outbox WHERE state = 'sent' AND sent_at IS NOT NULL"
        )
        .await,
        2
    );
    // Through Exchange: the copy in Sent Items, imported into the CRM's sent folder once.
    let ex = rig.exchange_folders().await;
    assert_eq!(
        hashes(&rig.exchange_mails(&ex["Sent Items"]).await),
        [sha(&own)].into_iter().collect()
    );
    rig.sync().await;
    assert_eq!(
        count(&rig.db, "SELECT count(*) FROM crm_mails m JOIN crm_mail_folders f ON f.id = m.folder_id WHERE f.role = 'sentitems'").await,
        1
    );
    // Through SMTP: the exact bytes, the row's envelope.
    let got = sink.mails.lock().clone();
    assert_eq!(
        got.len(),
        1,
        "only the alternative sender goes through SMTP"
    );
    assert_eq!(got[0].0, "vertrieb@example.com");
    assert_eq!(got[0].1, ["kunde10@example.org", "kunde11@example.org"]);
    assert_eq!(sha(&got[0].2), sha(&alt));

    // Sent rows are not sent again.
    rig.sync_with(Cause::Start).await;
    assert_eq!(sink.mails.lock().len(), 1);
    assert_eq!(rig.exchange_mails(&ex["Sent Items"]).await.len(), 1);
    rig.finish().await;
}

#[tokio::test]
async fn an_alternative_sender_without_an_smtp_server_fails_that_row_only() {
    let rig = Rig::sqlite(Options::default()).await;
    rig.crm_folder("Sent Items", Some("sentitems"), None).await;
    for sender in ["other@example.com", USER] {
        exec(
            &rig.db,
            &format!("INSERT INTO crm_outbox (owner_id, sender, recipients, mime) VALUES (1, '{sender}', 'kunde@example.org', X'{}')",
                mime(12, sender, DATE).iter().map(|b| format!("{b:02x}")).collect::<String>()),
        )
        .await;
    }
    rig.sync().await;
    assert_eq!(
        count(&rig.db, "SELECT count(*) FROM crm_outbox WHERE state = 'failed' AND sender = 'other@example.com' AND error LIKE '%no [smtp] server is configured%'").await,
        1
    );
    assert_eq!(
        count(
            &rig.db,
            "SELECT count(*) FROM crm_outbox WHERE state = 'sent' AND sender = 'user1@example.com'"
        )
        .await,
        1
    );
    rig.finish().await;
}

/// A message whose headers use RFC 2047 encoded words (UTF-8 and Latin-1, Q and B), folding,
/// a quoted display name with a comma and a group arrives in the CRM decoded: the subject as
/// text, the sender's address, and every recipient once (none split at a quoted comma).
#[tokio::test]
async fn imported_mail_has_decoded_subjects_and_whole_addresses() {
    let rig = Rig::sqlite(Options::default()).await;
    rig.crm_folder("Inbox", Some("inbox"), None).await;
    let raw = "Subject: =?utf-8?q?=C3=BCber?= den\r\n =?UTF-8?B?UHLDvGZzdGFuZA==?=\r\n\
               From: =?iso-8859-1?q?J=FCrgen_M=FCller?= <Juergen@example.com>\r\n\
               To: \"M\u{fc}ller, Anna\" <anna@example.com>, =?utf-8?b?w4RyenRlLCBCw7xybw==?=\r\n\
               \t<aerzte@example.com>\r\n\
               Cc: Team: carl@example.com, \"Dora, D.\" <dora@example.com>;\r\n\
               Message-ID: <decoded-1@example.com>\r\n\
               Date: Tue, 3 Mar 2026 09:15:00 +0100\r\n\
               MIME-Version: 1.0\r\n\
               Content-Type: text/plain; charset=utf-8\r\n\r\n\
               Hallo\r\n";
    rig.user_creates_mail(
        FolderRef::well_known(DistinguishedFolder::Inbox),
        raw.as_bytes().to_vec(),
        false,
    )
    .await;
    rig.sync().await;
    let row = common::texts(
        &rig.db,
        "SELECT subject, sender, recipients, internet_message_id FROM crm_mails",
    )
    .await;
    assert_eq!(
        row,
        vec![
            Some("über den Prüfstand".to_string()),
            Some("Juergen@example.com".to_string()),
            Some(
                "anna@example.com, aerzte@example.com, carl@example.com, dora@example.com"
                    .to_string()
            ),
            Some("<decoded-1@example.com>".to_string()),
        ]
    );
    rig.finish().await;
}

/// The convergence checker on mail: after a sync both sides are equal; then one difference of
/// each kind, made behind mailsync's back, is found and named.
#[tokio::test]
async fn the_convergence_checker_compares_mail_and_names_each_difference() {
    use mailsync::sync::converge::{compare, Difference};
    use mailsync::sync::fields;

    let rig = Rig::sqlite(Options::default()).await;
    let inbox = rig.crm_folder("Inbox", Some("inbox"), None).await;
    let projects = rig.crm_folder("Projekte", None, Some(inbox)).await;
    let crm1 = rig
        .crm_mail(inbox, &mime(1, "crm one", DATE), true, SENT)
        .await;
    let crm2 = rig
        .crm_mail(projects, &mime(2, "crm two", DATE), false, SENT)
        .await;
    for n in 3..=4 {
        rig.user_creates_mail(
            FolderRef::well_known(DistinguishedFolder::Inbox),
            mime(n, "outlook", DATE),
            false,
        )
        .await;
    }
    rig.sync().await;
    let target = ews::Target::impersonating(USER);
    let check = || compare(&rig.db, &rig.client, &target, Area::Mail, 1, 1, "");
    assert_eq!(check().await.unwrap(), vec![], "converged after the sync");

    // A message moved to another folder in Outlook, not synced yet: a folder mismatch; moved
    // back, equal again (paired by its stamp although its id changed twice).
    let ex = rig.exchange_folders().await;
    let in_projects = rig.exchange_mails(&ex["Inbox/Projekte"]).await;
    assert_eq!(in_projects.len(), 1);
    let moved = rig
        .call(&ews::ops::MoveItem {
            ids: vec![in_projects[0].2.clone()],
            to: FolderRef::well_known(DistinguishedFolder::SentItems),
        })
        .await
        .remove(0)
        .unwrap();
    assert_eq!(
        check().await.unwrap(),
        vec![Difference::Fields(
            crm2,
            vec![(
                "folder".into(),
                Some("inbox/projekte".into()),
                Some("sentitems".into())
            )]
        )]
    );
    rig.call(&ews::ops::MoveItem {
        ids: vec![moved.expect("MoveItem names the new id")],
        to: FolderRef::Id(ex["Inbox/Projekte"].clone()),
    })
    .await;
    assert_eq!(check().await.unwrap(), vec![]);

    // Behind mailsync's back: a read flag flipped in the CRM (mismatched), a CRM mail and an
    // Outlook mail nobody synced (lost, each way), a second message stamped with crm2's id
    // (duplicated), and crm1's row deleted while its message stays (resurrected).
    exec(
        &rig.db,
        "UPDATE crm_mails SET is_read = NOT is_read WHERE subject <> 'crm'",
    )
    .await;
    let lost_in_crm = rig
        .crm_mail(inbox, &mime(5, "crm five", DATE), false, SENT)
        .await;
    rig.user_creates_mail(
        FolderRef::well_known(DistinguishedFolder::Inbox),
        mime(6, "outlook six", DATE),
        false,
    )
    .await;
    rig.call(&CreateItem {
        folder: Some(FolderRef::well_known(DistinguishedFolder::Inbox)),
        items: vec![Item::Message(Message {
            mime: Some(mime(2, "crm two", DATE)),
            is_read: Some(false),
            extended: vec![ews::types::ExtendedProperty {
                uri: fields::crm_id_uri(),
                value: fields::crm_stamp("crm_mails", crm2),
            }],
            ..Message::default()
        })],
        disposition: Some(MessageDisposition::SaveOnly),
    })
    .await;
    exec(&rig.db, &format!("DELETE FROM crm_mails WHERE id = {crm1}")).await;

    let diffs = check().await.unwrap();
    let mut kinds: Vec<&str> = diffs.iter().map(Difference::kind).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "duplicated",
            "lost",
            "lost",
            "mismatched",
            "mismatched",
            "resurrected"
        ],
        "{diffs:#?}"
    );
    assert!(diffs.contains(&Difference::Duplicate(crm2)), "{diffs:#?}");
    assert!(
        diffs.contains(&Difference::MissingInExchange(lost_in_crm)),
        "{diffs:#?}"
    );
    assert!(
        diffs
            .iter()
            .any(|d| matches!(d, Difference::Resurrected(_, id) if *id == crm1)),
        "{diffs:#?}"
    );
    assert!(
        diffs
            .iter()
            .any(|d| matches!(d, Difference::Fields(_, f) if f.len() == 1 && f[0].0 == "is_read")),
        "{diffs:#?}"
    );
    rig.finish().await;
}
