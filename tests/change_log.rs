//! The business database's change log against real databases (tests/common/backends.rs):
//! triggers capture every change and bump versions, the cursor moves only forward, concurrent
//! and out-of-order writers are never skipped (PostgreSQL's snapshot horizon, MariaDB's
//! commit-order numbering), PostgreSQL notifies listeners, and a transaction left open in
//! another database does not hold the feed back.

mod common;
use common::backends::*;

use std::time::Duration;

use mailsync::db::changes::{ChangeOp, ChangeSignal, Cursor};
use mailsync::db::{Db, MigrationSet};

#[tokio::test]
async fn triggers_capture_every_change_and_bump_versions() {
    for t in backends().await {
        let db = &t.db;
        seed(db).await;
        exec(db, "INSERT INTO crm_contacts (id, tenant_id, owner_id, surname) VALUES (5, 10, 1, 'Schmidt')").await;
        exec(db, "INSERT INTO crm_contacts (id, tenant_id, owner_id, surname) VALUES (6, 10, NULL, 'Shared')").await;
        assert_eq!(
            scalar(db, "SELECT version FROM crm_contacts WHERE id = 5").await,
            1
        );
        exec(
            db,
            "UPDATE crm_contacts SET surname = 'Schmitt' WHERE id = 5",
        )
        .await;
        exec(db, "UPDATE crm_contacts SET city = 'Berlin' WHERE id = 5").await;
        assert_eq!(
            scalar(db, "SELECT version FROM crm_contacts WHERE id = 5").await,
            3,
            "{:?}",
            db.kind()
        );
        exec(db, "DELETE FROM crm_contacts WHERE id = 5").await;
        let changes = db.changes_after(Cursor::default(), 100).await.unwrap();
        let got: Vec<Seen> = changes
            .iter()
            .map(|c| (c.table.as_str(), c.row_id, c.op, c.owner_id, c.tenant_id))
            .collect();
        assert_eq!(
            got,
            vec![
                ("crm_operators", 1, ChangeOp::Insert, None, Some(10)),
                ("crm_contacts", 5, ChangeOp::Insert, Some(1), Some(10)),
                ("crm_contacts", 6, ChangeOp::Insert, None, Some(10)),
                ("crm_contacts", 5, ChangeOp::Update, Some(1), Some(10)),
                ("crm_contacts", 5, ChangeOp::Update, Some(1), Some(10)),
                ("crm_contacts", 5, ChangeOp::Delete, Some(1), Some(10)),
            ],
            "{:?}",
            db.kind()
        );
        // Every synced table is captured, mail and outbox included.
        exec(db, "INSERT INTO crm_appointments (tenant_id, owner_id, subject, starts_at, ends_at) VALUES (10, 1, 'a', '2026-01-05T08:00:00Z', '2026-01-05T09:00:00Z')").await;
        exec(
            db,
            "INSERT INTO crm_tasks (tenant_id, owner_id, subject) VALUES (10, 1, 't')",
        )
        .await;
        exec(db, "INSERT INTO crm_mail_folders (id, owner_id, name, role) VALUES (1, 1, 'Posteingang', 'inbox')").await;
        exec(
            db,
            "INSERT INTO crm_mails (owner_id, folder_id, subject) VALUES (1, 1, 'm')",
        )
        .await;
        exec(db, "INSERT INTO crm_outbox (owner_id, sender, recipients, mime) VALUES (1, 'anna@example.com', 'b@example.com', 'x')").await;
        let tables: Vec<String> = db
            .changes_after(changes.last().unwrap().cursor, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.table)
            .collect();
        assert_eq!(
            tables,
            vec![
                "crm_appointments",
                "crm_tasks",
                "crm_mail_folders",
                "crm_mails",
                "crm_outbox"
            ]
        );
        t.drop_db().await;
    }
}

/// Statements that touch many rows (an ERP's bulk update, mailsync's batched writes) log one
/// change per row with its routing columns; a statement that touches none logs nothing; a
/// delete that cascades to subfolders and their mails logs every row it removed. PostgreSQL
/// captures by statement (transition tables, migration 1004), the others by row.
#[tokio::test]
async fn statements_over_many_rows_log_every_row() {
    for t in backends().await {
        let db = &t.db;
        let kind = db.kind();
        seed(db).await;
        exec(db, "INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name, email) VALUES (2, 10, '1002', 'Ben', 'ben@example.com')").await;
        let start = db.changes_after(Cursor::default(), 100).await.unwrap();
        let cursor = start.last().unwrap().cursor;
        exec(db, "INSERT INTO crm_contacts (id, tenant_id, owner_id, surname) VALUES (1, 10, 1, 'a'), (2, 10, NULL, 'b'), (3, 10, 2, 'c')").await;
        exec(
            db,
            "UPDATE crm_contacts SET city = 'Köln' WHERE id IN (1, 3)",
        )
        .await;
        exec(
            db,
            "UPDATE crm_contacts SET city = 'nowhere' WHERE id > 100",
        )
        .await;
        exec(
            db,
            "INSERT INTO crm_mail_folders (id, owner_id, name) VALUES (1, 1, 'top'), (2, 1, 'sub')",
        )
        .await;
        exec(db, "UPDATE crm_mail_folders SET parent_id = 1 WHERE id = 2").await;
        exec(db, "INSERT INTO crm_mails (id, owner_id, folder_id, subject) VALUES (1, 1, 2, 'in sub'), (2, 1, 1, 'in top')").await;
        exec(db, "DELETE FROM crm_mail_folders WHERE id = 1").await;
        exec(db, "DELETE FROM crm_contacts WHERE tenant_id = 10").await;
        let changes = db.changes_after(cursor, 100).await.unwrap();
        let mut got: Vec<Seen> = changes
            .iter()
            .map(|c| (c.table.as_str(), c.row_id, c.op, c.owner_id, c.tenant_id))
            .collect();
        // Within one statement the backends may log rows in any order.
        got.sort_by_key(|c| (c.2 as u8, c.0, c.1));
        let mut want: Vec<Seen> = vec![
            ("crm_contacts", 1, ChangeOp::Insert, Some(1), Some(10)),
            ("crm_contacts", 2, ChangeOp::Insert, None, Some(10)),
            ("crm_contacts", 3, ChangeOp::Insert, Some(2), Some(10)),
            ("crm_contacts", 1, ChangeOp::Update, Some(1), Some(10)),
            ("crm_contacts", 3, ChangeOp::Update, Some(2), Some(10)),
            ("crm_mail_folders", 1, ChangeOp::Insert, Some(1), None),
            ("crm_mail_folders", 2, ChangeOp::Insert, Some(1), None),
            ("crm_mail_folders", 2, ChangeOp::Update, Some(1), None),
            ("crm_mails", 1, ChangeOp::Insert, Some(1), None),
            ("crm_mails", 2, ChangeOp::Insert, Some(1), None),
            ("crm_mail_folders", 1, ChangeOp::Delete, Some(1), None),
            ("crm_mail_folders", 2, ChangeOp::Delete, Some(1), None),
            ("crm_mails", 1, ChangeOp::Delete, Some(1), None),
            ("crm_mails", 2, ChangeOp::Delete, Some(1), None),
            ("crm_contacts", 1, ChangeOp::Delete, Some(1), Some(10)),
            ("crm_contacts", 2, ChangeOp::Delete, None, Some(10)),
            ("crm_contacts", 3, ChangeOp::Delete, Some(2), Some(10)),
        ];
        want.sort_by_key(|c| (c.2 as u8, c.0, c.1));
        assert_eq!(got, want, "{kind:?}");
        assert_eq!(
            scalar(db, "SELECT COUNT(*) FROM crm_changes").await,
            start.len() as i64 + 17,
            "{kind:?}: nothing logged for the statement that matched no row"
        );
        t.drop_db().await;
    }
}

#[tokio::test]
async fn the_cursor_advances_only_forward_and_replays_after_a_crash() {
    for t in backends().await {
        let (db, state) = (&t.db, &t.state);
        seed(db).await;
        for i in 0..5 {
            exec(db, &format!("INSERT INTO crm_tasks (tenant_id, owner_id, subject) VALUES (10, 1, 'task {i}')")).await;
        }
        // Batches of 2, the cursor advanced after each batch is "applied".
        let mut seen = Vec::new();
        loop {
            let cur = state.cursor("crm").await.unwrap();
            let batch = db.changes_after(cur, 2).await.unwrap();
            let Some(last) = batch.last() else { break };
            seen.extend(batch.iter().map(|c| c.row_id));
            state.advance_cursor("crm", last.cursor).await.unwrap();
        }
        assert_eq!(
            seen,
            vec![1, 1, 2, 3, 4, 5],
            "{:?}: the operator, then five tasks",
            db.kind()
        );
        let end = state.cursor("crm").await.unwrap();
        // A late, smaller advance (a replayed batch) does not move the cursor back.
        state
            .advance_cursor("crm", Cursor { txid: 0, seq: 1 })
            .await
            .unwrap();
        assert_eq!(state.cursor("crm").await.unwrap(), end);

        // A crash between reading and applying: the cursor did not move, the change comes again.
        exec(db, "UPDATE crm_tasks SET subject = 'changed' WHERE id = 3").await;
        let first = db
            .changes_after(state.cursor("crm").await.unwrap(), 10)
            .await
            .unwrap();
        assert_eq!(first.len(), 1);
        let after_restart = db
            .changes_after(state.cursor("crm").await.unwrap(), 10)
            .await
            .unwrap();
        assert_eq!(
            after_restart, first,
            "at least once: nothing is lost when the process dies before applying"
        );
        t.drop_db().await;
    }
}

#[tokio::test]
async fn concurrent_writers_never_slip_behind_the_cursor() {
    let Some(t) = postgres().await else { return };
    t.db.migrate(MigrationSet::Crm).await.unwrap();
    let Db::Postgres(pool) = &t.db else {
        unreachable!()
    };
    seed(&t.db).await;
    let start =
        t.db.changes_after(Cursor::default(), 100)
            .await
            .unwrap()
            .last()
            .unwrap()
            .cursor;

    // B takes its transaction id first; A then takes a sequence number first; B commits while
    // A is still open. A cursor on seq alone would move past A's change for good.
    let mut b = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO crm_tenants (id, name) VALUES (20, 'xid for B')")
        .execute(&mut *b)
        .await
        .unwrap();
    let mut a = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO crm_tasks (tenant_id, owner_id, subject) VALUES (10, 1, 'A')")
        .execute(&mut *a)
        .await
        .unwrap();
    sqlx::query("INSERT INTO crm_tasks (tenant_id, owner_id, subject) VALUES (10, 1, 'B')")
        .execute(&mut *b)
        .await
        .unwrap();
    b.commit().await.unwrap();

    let first = t.db.changes_after(start, 100).await.unwrap();
    assert_eq!(
        first.len(),
        1,
        "only B's change is safe to hand out while A is open"
    );
    assert!(
        first[0].cursor.seq > start.seq + 1,
        "A holds the lower sequence number: the case a seq cursor loses"
    );
    let mut cursor = first[0].cursor;
    a.commit().await.unwrap();
    let second = t.db.changes_after(cursor, 100).await.unwrap();
    cursor = second.last().map_or(cursor, |c| c.cursor);
    let mut delivered: Vec<i64> = first.iter().chain(&second).map(|c| c.cursor.seq).collect();
    delivered.sort();
    let all: Vec<i64> =
        t.db.changes_after(start, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.cursor.seq)
            .collect();
    let mut all_sorted = all.clone();
    all_sorted.sort();
    assert_eq!(delivered, all_sorted, "every change delivered exactly once");
    assert_eq!(all.len(), 2);

    // While a writer is open, nothing after its changes is handed out yet.
    let mut open = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO crm_tasks (tenant_id, owner_id, subject) VALUES (10, 1, 'open')")
        .execute(&mut *open)
        .await
        .unwrap();
    exec(
        &t.db,
        "INSERT INTO crm_tasks (tenant_id, owner_id, subject) VALUES (10, 1, 'later')",
    )
    .await;
    assert!(t.db.changes_after(cursor, 100).await.unwrap().is_empty());
    open.commit().await.unwrap();
    let subjects = t.db.changes_after(cursor, 100).await.unwrap();
    assert_eq!(subjects.len(), 2, "both, in commit-safe order");
    t.drop_db().await;
}

/// The change reader on MariaDB numbers committed changes in the order it finds them
/// committed; a transaction that wrote first and commits last is numbered last, not skipped.
#[tokio::test]
async fn mariadb_changes_committed_out_of_order_are_never_skipped() {
    let Some(t) = mariadb().await else { return };
    t.db.migrate(MigrationSet::Crm).await.unwrap();
    let Db::MySql(pool) = &t.db else {
        unreachable!()
    };
    seed(&t.db).await;
    let read = |after: Cursor| {
        let db = t.db.clone();
        async move {
            // Never waits for an open writer (it would hit the 50 s lock wait otherwise).
            tokio::time::timeout(Duration::from_secs(10), db.changes_after(after, 100))
                .await
                .expect("the reader does not wait for writers")
                .unwrap()
        }
    };
    let start = read(Cursor::default()).await.last().unwrap().cursor;
    let task_id = |subject: &'static str| {
        let db = t.db.clone();
        async move {
            common::count(
                &db,
                &format!("SELECT id FROM crm_tasks WHERE subject = '{subject}'"),
            )
            .await
        }
    };

    // A writes first (its change row has the lower id), B writes and commits, then A commits.
    let mut a = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO crm_tasks (tenant_id, owner_id, subject) VALUES (10, 1, 'A')")
        .execute(&mut *a)
        .await
        .unwrap();
    let mut b = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO crm_tasks (tenant_id, owner_id, subject) VALUES (10, 1, 'B')")
        .execute(&mut *b)
        .await
        .unwrap();
    b.commit().await.unwrap();
    let first = read(start).await;
    assert_eq!(
        first.iter().map(|c| c.row_id).collect::<Vec<_>>(),
        vec![task_id("B").await],
        "only B is committed; A's open transaction does not hold B back"
    );
    let mut cursor = first[0].cursor;
    assert_eq!(cursor.txid, 0);

    // A commits after the cursor moved past B: A is numbered after B, so it is read next.
    a.commit().await.unwrap();
    let second = read(cursor).await;
    assert_eq!(
        second.iter().map(|c| c.row_id).collect::<Vec<_>>(),
        vec![task_id("A").await],
        "the late commit is delivered, not skipped"
    );
    assert!(second[0].cursor > cursor);
    cursor = second[0].cursor;

    // A rolled-back writer leaves nothing and holds nothing up.
    let mut gone = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO crm_tasks (tenant_id, owner_id, subject) VALUES (10, 1, 'rolled back')",
    )
    .execute(&mut *gone)
    .await
    .unwrap();
    exec(
        &t.db,
        "INSERT INTO crm_tasks (tenant_id, owner_id, subject) VALUES (10, 1, 'C')",
    )
    .await;
    gone.rollback().await.unwrap();
    let third = read(cursor).await;
    assert_eq!(
        third.iter().map(|c| c.row_id).collect::<Vec<_>>(),
        vec![task_id("C").await]
    );
    cursor = third[0].cursor;
    assert!(read(cursor).await.is_empty());

    // Every change of the log was delivered exactly once, in numbering order.
    let all = read(start).await;
    let delivered: Vec<Cursor> = first
        .iter()
        .chain(&second)
        .chain(&third)
        .map(|c| c.cursor)
        .collect();
    assert_eq!(all.iter().map(|c| c.cursor).collect::<Vec<_>>(), delivered);
    assert_eq!(
        common::count(&t.db, "SELECT COUNT(*) FROM crm_changes WHERE seq IS NULL").await,
        0
    );
    t.drop_db().await;
}

/// Many writers committing and rolling back at random while two readers (two mailsync
/// instances) read in small batches: each reader gets every committed change exactly once.
#[tokio::test]
async fn mariadb_concurrent_writers_and_readers_lose_nothing() {
    let Some(t) = mariadb().await else { return };
    t.db.migrate(MigrationSet::Crm).await.unwrap();
    seed(&t.db).await;
    let Db::MySql(pool) = t.db.clone() else {
        unreachable!()
    };
    let start =
        t.db.changes_after(Cursor::default(), 100)
            .await
            .unwrap()
            .last()
            .unwrap()
            .cursor;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6u64 {
        let pool = pool.clone();
        writers.push(tokio::spawn(async move {
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (w + 1);
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            for i in 0..40 {
                let mut tx = pool.begin().await.unwrap();
                for k in 0..=(next() % 3) {
                    sqlx::query(
                        "INSERT INTO crm_tasks (tenant_id, owner_id, subject) VALUES (10, 1, ?)",
                    )
                    .bind(format!("w{w} t{i} {k}"))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                    if next() % 2 == 0 {
                        tokio::time::sleep(Duration::from_millis(next() % 4)).await;
                    }
                }
                if next() % 10 == 0 {
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                }
            }
        }));
    }
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (db, done) = (t.db.clone(), done.clone());
        readers.push(tokio::spawn(async move {
            let mut cursor = start;
            let mut seen: Vec<i64> = Vec::new();
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let batch = db.changes_after(cursor, 7).await.unwrap();
                for c in &batch {
                    assert!(c.cursor > cursor, "cursor order");
                    cursor = c.cursor;
                    seen.push(c.row_id);
                }
                if batch.is_empty() {
                    if finished {
                        return seen;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let committed: Vec<i64> = sqlx::query_scalar("SELECT id FROM crm_tasks ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(committed.len() > 100, "{} rows", committed.len());
    for r in readers {
        let mut seen = r.await.unwrap();
        seen.sort();
        assert_eq!(seen, committed, "every committed change exactly once");
    }
    t.drop_db().await;
}

#[tokio::test]
async fn postgres_notifies_listeners() {
    let Some(t) = postgres().await else { return };
    t.db.migrate(MigrationSet::Crm).await.unwrap();
    let mut signal = ChangeSignal::new(&t.db, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(!signal.wait(Duration::from_millis(50)).await, "nothing yet");
    seed(&t.db).await;
    assert!(
        signal.wait(Duration::from_secs(10)).await,
        "the insert notified"
    );
    t.drop_db().await;
}

/// A transaction left open in another database of the PostgreSQL cluster (another
/// application, another tenant's ERP, a forgotten psql session) must not stall the change
/// feed: it cannot write to this database's change log.
#[tokio::test]
async fn an_open_transaction_in_another_database_does_not_hold_the_feed_back() {
    use sqlx::Connection;
    let Some((name, url)) = common::postgres_db("feed_horizon").await else {
        return;
    };
    let db = Db::connect(&url, 2).await.unwrap();
    db.migrate(MigrationSet::Crm).await.unwrap();
    common::seed(&db, &[(1, "1001", Some("user1@example.com"))]).await;
    let after = db
        .changes_after(Cursor::default(), 1000)
        .await
        .unwrap()
        .last()
        .map(|c| c.cursor)
        .unwrap_or_default();
    // Elsewhere: a transaction with an xid, left open.
    let mut other = sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    sqlx::query("SELECT txid_current()")
        .execute(&mut other)
        .await
        .unwrap();
    common::exec(
        &db,
        "INSERT INTO crm_tasks (tenant_id, owner_id, subject) VALUES (1, 1, 'seen')",
    )
    .await;
    let changes = db.changes_after(after, 1000).await.unwrap();
    assert!(
        changes.iter().any(|c| c.table == "crm_tasks"),
        "the change waits for a transaction of another database: {changes:?}"
    );
    // Here: an open transaction that wrote holds changes after it back (they may commit
    // before it), and it stays so until it ends.
    let mut here = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut here).await.unwrap();
    sqlx::query("SELECT txid_current()")
        .execute(&mut here)
        .await
        .unwrap();
    common::exec(
        &db,
        "INSERT INTO crm_tasks (tenant_id, owner_id, subject) VALUES (1, 1, 'later')",
    )
    .await;
    let last = changes.last().map(|c| c.cursor).unwrap();
    assert!(
        db.changes_after(last, 1000).await.unwrap().is_empty(),
        "held back behind this database's open transaction"
    );
    sqlx::query("COMMIT").execute(&mut here).await.unwrap();
    assert_eq!(db.changes_after(last, 1000).await.unwrap().len(), 1);
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    db.close().await;
    common::drop_postgres(&name).await;
}
