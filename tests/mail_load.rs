//! Mail sync under load (tests/mail_rig): ten thousand messages in fifty folders each way, and
//! storms of flags, moves and deletes on both sides that must converge.

mod common;
mod mail_rig;
use mail_rig::*;

/// Inserts `per_folder` mails into each of `folders` new CRM folders (PostgreSQL and
/// MariaDB, one statement per folder); returns the folder ids.
async fn crm_bulk(rig: &Rig, folders: usize, per_folder: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for f in 0..folders {
        let id = rig.crm_folder(&format!("Ordner {f:02}"), None, None).await;
        let mimes: Vec<Vec<u8>> = (0..per_folder)
            .map(|i| mime(f * per_folder + i, &format!("Vorgang {f}-{i}"), DATE))
            .collect();
        match &rig.db {
            Db::Postgres(p) => sqlx::query(
                "INSERT INTO crm_mails (owner_id, folder_id, subject, sent_at, is_read, mime, size) \
                 SELECT 1, $1, 'bulk', now(), (n % 3 = 0), m, length(m) FROM unnest($2::bytea[]) WITH ORDINALITY AS t(m, n)",
            )
            .bind(id)
            .bind(&mimes)
            .execute(p)
            .await
            .map(|_| ()),
            Db::MySql(p) => {
                let rows = vec!["(1, ?, 'bulk', UTC_TIMESTAMP(6), ?, ?, ?)"; mimes.len()].join(", ");
                let sql = format!(
                    "INSERT INTO crm_mails (owner_id, folder_id, subject, sent_at, is_read, mime, size) VALUES {rows}"
                );
                mimes
                    .iter()
                    .enumerate()
                    .fold(sqlx::query(&sql), |q, (n, m)| {
                        q.bind(id).bind((n + 1) % 3 == 0).bind(m).bind(m.len() as i64)
                    })
                    .execute(p)
                    .await
                    .map(|_| ())
            }
            Db::Sqlite(_) => panic!("bulk inserts are written for PostgreSQL and MariaDB"),
        }
        .unwrap();
        ids.push(id);
    }
    ids
}

/// Every synced folder holds the same messages (MIME hash and read flag) on both sides.
async fn assert_same_content(rig: &Rig, skip_trash: bool) {
    let ex = rig.exchange_folders().await;
    let crm = rig.crm_folders().await;
    let roles: BTreeMap<i64, Option<String>> = rig
        .db
        .mail_folders(1)
        .await
        .unwrap()
        .into_iter()
        .map(|f| (f.id, f.role))
        .collect();
    for (path, id) in &crm {
        if skip_trash && roles[id].as_deref() == Some("deleteditems") {
            continue;
        }
        let on_exchange: Vec<(String, bool)> = rig
            .exchange_mails(&ex[path])
            .await
            .into_iter()
            .map(|m| (m.0, m.1))
            .collect();
        let in_crm: Vec<(String, bool)> = rig
            .crm_mails(*id)
            .await
            .into_iter()
            .map(|m| (m.0, m.1))
            .collect();
        if on_exchange != in_crm {
            let a: BTreeSet<_> = on_exchange.iter().cloned().collect();
            let b: BTreeSet<_> = in_crm.iter().cloned().collect();
            eprintln!(
                "only in Exchange: {:?}",
                a.difference(&b).collect::<Vec<_>>()
            );
            eprintln!(
                "only in the CRM: {:?}",
                b.difference(&a).collect::<Vec<_>>()
            );
        }
        assert_eq!(on_exchange, in_crm, "folder {path}");
    }
}

/// 10,000 messages in 50 folders, initial-synced CRM → Exchange, then the same mailbox's
/// content imported into a fresh CRM (Exchange → CRM): identical MIME (hashes) and flags.
#[tokio::test]
async fn ten_thousand_messages_in_fifty_folders_initial_sync_each_way() {
    if let Some(rig) = Rig::postgres(Options::default()).await {
        ten_thousand_each_way(rig).await;
    }
}

#[tokio::test]
async fn ten_thousand_messages_in_fifty_folders_initial_sync_each_way_on_mariadb() {
    if let Some(rig) = Rig::mariadb(Options::default()).await {
        ten_thousand_each_way(rig).await;
    }
}

async fn ten_thousand_each_way(rig: Rig) {
    crm_bulk(&rig, 50, 200).await;
    rig.initial(Direction::CrmToExchange).await;
    assert_eq!(
        count(
            &rig.state,
            "SELECT count(*) FROM ms_item_map WHERE crm_table = 'crm_mails'"
        )
        .await,
        10_000
    );
    assert_same_content(&rig, false).await;

    // The other way: the mailbox as it now is, into an empty CRM.
    exec(&rig.db, "DELETE FROM crm_mail_folders").await;
    exec(&rig.state, "DELETE FROM ms_item_map").await;
    exec(&rig.state, "DELETE FROM ms_folder_state").await;
    exec(&rig.state, "DELETE FROM ms_pending").await;
    rig.feed.start_at_end_if_new().await.unwrap();
    while rig.feed.poll_once().await.unwrap().is_some() {}
    exec(&rig.state, "DELETE FROM ms_pending").await;
    // Unstamped copies, as mail that arrived in Outlook would be.
    let before = count(&rig.db, "SELECT count(*) FROM crm_mails").await;
    assert_eq!(before, 0);
    rig.initial(Direction::ExchangeToCrm).await;
    assert_eq!(
        count(&rig.db, "SELECT count(*) FROM crm_mails").await,
        10_000
    );
    assert_same_content(&rig, false).await;
    rig.finish().await;
}

/// A small deterministic generator for the storms.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

/// Flag, move and delete storms on both sides, with steps in between at random moments,
/// converge: every folder holds the same messages with the same flags on both sides, and no
/// message exists twice.
#[tokio::test]
async fn flag_move_and_delete_storms_converge() {
    if let Some(rig) = Rig::postgres(Options::default()).await {
        storms(rig).await;
    }
}

#[tokio::test]
async fn flag_move_and_delete_storms_converge_on_mariadb() {
    if let Some(rig) = Rig::mariadb(Options::default()).await {
        storms(rig).await;
    }
}

async fn storms(rig: Rig) {
    rig.crm_folder("Deleted Items", Some("deleteditems"), None)
        .await;
    let folders = crm_bulk(&rig, 5, 40).await;
    for n in 0..40 {
        rig.user_creates_mail(
            FolderRef::well_known(DistinguishedFolder::Inbox),
            mime(900 + n, "outlook", DATE),
            n % 2 == 0,
        )
        .await;
    }
    rig.initial(Direction::CrmToExchange).await;
    assert_same_content(&rig, false).await;

    let mut rng = Lcg(7);
    for round in 0..6 {
        let ex = rig.exchange_folders().await;
        let ex_paths: Vec<String> = ex
            .keys()
            .filter(|p| p.starts_with("Ordner") || *p == "Inbox")
            .cloned()
            .collect();
        // Exchange side: 30 operations on messages listed once per round (each at most once,
        // as a moved message has a new id).
        let mut listed: Vec<(bool, ItemId)> = Vec::new();
        for path in &ex_paths {
            listed.extend(
                rig.exchange_mails(&ex[path])
                    .await
                    .into_iter()
                    .map(|m| (m.1, m.2)),
            );
        }
        for _ in 0..30 {
            if listed.is_empty() {
                break;
            }
            let (read, id) = listed.swap_remove(rng.next(listed.len()));
            match rng.next(4) {
                0 | 1 => {
                    rig.call(&UpdateItem {
                        changes: vec![ItemUpdate {
                            id,
                            updates: Item::Message(Message {
                                is_read: Some(!read),
                                ..Message::default()
                            })
                            .updates(),
                        }],
                        conflict: ews::ops::ConflictResolution::AlwaysOverwrite,
                        disposition: Some(MessageDisposition::SaveOnly),
                        calendar: false,
                    })
                    .await;
                }
                2 => {
                    let to = &ex_paths[rng.next(ex_paths.len())];
                    rig.call(&MoveItem {
                        ids: vec![id],
                        to: FolderRef::Id(ex[to].clone()),
                    })
                    .await;
                }
                _ => {
                    rig.call(&DeleteItem {
                        ids: vec![id],
                        delete_type: if rng.next(2) == 0 {
                            DeleteType::HardDelete
                        } else {
                            DeleteType::MoveToDeletedItems
                        },
                    })
                    .await;
                }
            }
        }
        // CRM side: 30 operations.
        let crm_ids: Vec<(i64, i64)> = rig.crm_mail_ids().await;
        for _ in 0..30 {
            let (id, _) = crm_ids[rng.next(crm_ids.len())];
            let sql = match rng.next(4) {
                0 | 1 => format!("UPDATE crm_mails SET is_read = NOT is_read WHERE id = {id}"),
                2 => format!(
                    "UPDATE crm_mails SET folder_id = {} WHERE id = {id}",
                    folders[rng.next(folders.len())]
                ),
                _ => format!("DELETE FROM crm_mails WHERE id = {id}"),
            };
            exec(&rig.db, &sql).await;
        }
        if round % 2 == 0 {
            rig.sync_with(Cause::Notification).await;
        }
    }
    rig.sync().await;
    rig.sync().await;
    // Deleted Items holds, in Exchange, what the CRM deleted (by design it stays there).
    assert_same_content(&rig, true).await;
    let dupes = count(
        &rig.db,
        "SELECT count(*) FROM (SELECT md5(mime) FROM crm_mails GROUP BY md5(mime) HAVING count(*) > 1) d",
    )
    .await;
    assert_eq!(dupes, 0, "no message twice in the CRM");
    rig.finish().await;
}
