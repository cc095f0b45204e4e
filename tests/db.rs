//! The SQL side against real databases: PostgreSQL on 127.0.0.1:5432 and MariaDB on
//! 127.0.0.1:3306 (a fresh database per test; under CI=true a missing server fails) and SQLite
//! files. The state store lives in the business database on PostgreSQL and SQLite, and in a
//! SQLite file beside a MariaDB business database (it cannot live in MariaDB).

mod common;

use std::time::Duration;

use mailsync::config::DbKind;
use mailsync::db::changes::{ChangeOp, ChangeSignal, Cursor};
use mailsync::db::{Db, MigrationSet};

/// A database that is dropped (PostgreSQL, MariaDB) or deleted (SQLite) at the end of the test.
struct TestDb {
    /// The business database.
    db: Db,
    /// The state store: `db` itself, or a SQLite file beside a MariaDB `db`.
    state: Db,
    pg_name: Option<String>,
    my_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
    /// PostgreSQL tests run one at a time: the change reader waits for the oldest writing
    /// transaction of the whole cluster, and one test holds such transactions open on purpose.
    _serial: Option<tokio::sync::MutexGuard<'static, ()>>,
}

static PG_SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl TestDb {
    async fn drop_db(self) {
        self.db.close().await;
        self.state.close().await;
        if let Some(name) = self.pg_name {
            common::drop_postgres(&name).await;
        }
        if let Some(name) = self.my_name {
            common::drop_mariadb(&name).await;
        }
    }

    /// True when the state store is the business database itself.
    fn same(&self) -> bool {
        self.db.kind() != DbKind::MySql
    }
}

/// A change as compared in the tests: table, row, op, owner, tenant.
type Seen<'a> = (&'a str, i64, ChangeOp, Option<i64>, Option<i64>);

async fn postgres() -> Option<TestDb> {
    let serial = PG_SERIAL.lock().await;
    let (name, url) = common::postgres_db("test").await?;
    let db = Db::connect(&url, 5).await.unwrap();
    Some(TestDb {
        state: db.clone(),
        db,
        pg_name: Some(name),
        my_name: None,
        _dir: None,
        _serial: Some(serial),
    })
}

async fn mariadb() -> Option<TestDb> {
    let (name, url) = common::mariadb_db("test").await?;
    let db = Db::connect(&url, 5).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state_url = format!("sqlite:{}", dir.path().join("state.db").display());
    Some(TestDb {
        db,
        state: Db::connect(&state_url, 5).await.unwrap(),
        pg_name: None,
        my_name: Some(name),
        _dir: Some(dir),
        _serial: None,
    })
}

async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("crm.db").display());
    let db = Db::connect(&url, 5).await.unwrap();
    TestDb {
        state: db.clone(),
        db,
        pg_name: None,
        my_name: None,
        _dir: Some(dir),
        _serial: None,
    }
}

async fn migrated(list: Vec<TestDb>) -> Vec<TestDb> {
    for t in &list {
        t.db.migrate(MigrationSet::Crm).await.unwrap();
        t.state.migrate(MigrationSet::State).await.unwrap();
    }
    list
}

/// Every business database (PostgreSQL and MariaDB when available), migrated.
async fn backends() -> Vec<TestDb> {
    let mut out = vec![sqlite().await];
    if let Some(pg) = postgres().await {
        out.push(pg);
    }
    if let Some(my) = mariadb().await {
        out.push(my);
    }
    migrated(out).await
}

/// Every state store (PostgreSQL when available), migrated.
async fn state_backends() -> Vec<TestDb> {
    let mut out = vec![sqlite().await];
    if let Some(pg) = postgres().await {
        out.push(pg);
    }
    migrated(out).await
}

async fn exec(db: &Db, sql: &str) {
    common::exec(db, sql).await
}

async fn scalar(db: &Db, sql: &str) -> i64 {
    common::count(db, sql).await
}

async fn seed(db: &Db) {
    exec(
        db,
        "INSERT INTO crm_tenants (id, name) VALUES (10, 'Musterfirma')",
    )
    .await;
    exec(db, "INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name, email) VALUES (1, 10, '1001', 'Anna', 'anna@example.com')").await;
}

#[tokio::test]
async fn migrations_from_empty_then_rerun_and_sharing_one_database() {
    for kind in ["sqlite", "postgres", "mariadb"] {
        let t = match kind {
            "sqlite" => sqlite().await,
            "postgres" => match postgres().await {
                Some(t) => t,
                None => continue,
            },
            _ => match mariadb().await {
                Some(t) => t,
                None => continue,
            },
        };
        let crm = t.db.migrate(MigrationSet::Crm).await.unwrap();
        // MariaDB's schema has the unique ews_id indexes from its first migration.
        let expected: &[&str] = if kind == "mariadb" {
            &["1001 reference schema", "1003 change origin"]
        } else {
            &[
                "1001 reference schema",
                "1002 unique ews ids",
                "1003 change origin",
            ]
        };
        assert_eq!(
            (crm.applied, crm.already, crm.resolved),
            (expected.iter().map(|s| s.to_string()).collect(), 0, vec![]),
            "{kind}"
        );
        if kind == "mariadb" {
            // The state store cannot live in MariaDB: refused with the reason, nothing done.
            let err = t.db.migrate(MigrationSet::State).await.unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("mailsync's state store cannot live in MariaDB/MySQL"),
                "{err}"
            );
            let again = t.db.migrate(MigrationSet::Crm).await.unwrap();
            assert!(again.applied.is_empty() && again.already >= 1, "{again:?}");
            assert_eq!(scalar(&t.db, "SELECT COUNT(*) FROM crm_changes").await, 0);
            t.drop_db().await;
            continue;
        }
        // The state store in the same database: its own versions, no clash.
        let state = t.db.migrate(MigrationSet::State).await.unwrap();
        assert_eq!(
            state.applied,
            vec![
                "2001 state store".to_string(),
                "2002 pending".to_string(),
                "2003 conflict values retention".to_string(),
                "2010 integrity".to_string(),
                "2020 cluster".to_string(),
                "2030 item map by row".to_string()
            ],
            "{kind}"
        );
        for set in [MigrationSet::Crm, MigrationSet::State] {
            let again = t.db.migrate(set).await.unwrap();
            assert!(
                again.applied.is_empty() && again.already >= 1,
                "{kind}: {again:?}"
            );
        }
        assert_eq!(scalar(&t.db, "SELECT COUNT(*) FROM crm_changes").await, 0);
        t.drop_db().await;
    }
}

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

#[tokio::test]
async fn state_store_forbids_duplicate_mappings() {
    for t in state_backends().await {
        let db = &t.db;
        exec(db, "INSERT INTO ms_item_map (mailbox, crm_table, crm_id, ews_item_id) VALUES ('a@example.com', 'crm_contacts', 1, 'AAMk1')").await;
        let dup_crm = "INSERT INTO ms_item_map (mailbox, crm_table, crm_id, ews_item_id) VALUES ('a@example.com', 'crm_contacts', 1, 'AAMk2')";
        let dup_ews = "INSERT INTO ms_item_map (mailbox, crm_table, crm_id, ews_item_id) VALUES ('a@example.com', 'crm_contacts', 2, 'AAMk1')";
        for sql in [dup_crm, dup_ews] {
            let r = match db {
                Db::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
                Db::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
                Db::MySql(_) => unreachable!("no state store in MariaDB"),
            };
            let err = r.expect_err("a duplicate mapping must be refused");
            assert!(
                err.as_database_error()
                    .is_some_and(|e| e.is_unique_violation()),
                "{err}"
            );
        }
        // Another mailbox may map the same CRM row (a shared contact in every tenant mailbox).
        exec(db, "INSERT INTO ms_item_map (mailbox, crm_table, crm_id, ews_item_id) VALUES ('b@example.com', 'crm_contacts', 1, 'AAMk1')").await;
        t.drop_db().await;
    }
}

#[test]
fn migrate_command_applies_then_reports_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("m.toml");
    std::fs::write(
        &cfg,
        format!(
            "[database]\nurl = \"sqlite:{0}/crm.db\"\n[state]\nurl = \"sqlite:{0}/state.db\"\n[[servers]]\nname = \"s\"\news_url = \"https://x.example.com/EWS/Exchange.asmx\"\nauth = \"basic\"\nservice_account = {{ username = \"svc\", password = \"pw\" }}\n[[mailboxes]]\nsmtp = \"a@example.com\"\noperator = \"1\"\nserver = \"s\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_mailsync"))
            .args(["migrate", "--config"])
            .arg(&cfg)
            .output()
            .unwrap()
    };
    let first = run();
    let out = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        out.contains("business database sqlite:")
            && out
                .contains("applied 1001 reference schema, 1002 unique ews ids, 1003 change origin"),
        "{out}"
    );
    assert!(
        out.contains("state store sqlite:")
            && out.contains(
                "applied 2001 state store, 2002 pending, 2003 conflict values retention, 2010 integrity, 2020 cluster, 2030 item map by row"
            ),
        "{out}"
    );
    let second = run();
    let out = String::from_utf8_lossy(&second.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("business database sqlite:")
            && lines[0].ends_with("up to date (3 migrations applied before)"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("state store sqlite:")
            && lines[1].ends_with("up to date (6 migrations applied before)"),
        "{out}"
    );

    // An unreachable database is a clear error naming it (password-free URL shown as given).
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg).unwrap().replacen(
            "sqlite:",
            "postgres://nobody@127.0.0.1:1/",
            1,
        ),
    )
    .unwrap();
    let failed = run();
    assert_eq!(failed.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&failed.stderr)
            .contains("cannot connect to postgres://nobody@127.0.0.1:1/"),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
}

#[tokio::test]
async fn state_store_round_trips() {
    use mailsync::db::state::{Conflict, Failure, FolderState, ItemMapping, Winner};
    for t in state_backends().await {
        let db = &t.db;
        let kind = db.kind();
        // Folder states: nothing stored means "from scratch".
        assert_eq!(
            db.folder_state("a@example.com", "contacts").await.unwrap(),
            FolderState::default()
        );
        let st = FolderState {
            ews_folder_id: Some("AAMkF=".into()),
            sync_state: Some("H4sI".into()),
        };
        db.set_folder_state("a@example.com", "contacts", &st)
            .await
            .unwrap();
        let st2 = FolderState {
            sync_state: Some("H4sJ".into()),
            ..st.clone()
        };
        db.set_folder_state("a@example.com", "contacts", &st2)
            .await
            .unwrap();
        assert_eq!(
            db.folder_state("a@example.com", "contacts").await.unwrap(),
            st2,
            "{kind:?}"
        );

        // Mappings both ways; a move gives the item a new id, the mapping follows.
        let mut m = ItemMapping {
            mailbox: "a@example.com".into(),
            crm_table: "crm_contacts".into(),
            crm_id: 7,
            ews_item_id: "AAMk7=".into(),
            change_key: Some("CK1".into()),
            crm_version: Some(3),
            fields: serde_json::json!({"surname": "Schmidt", "email1": "a@b.example"}),
            stamped: true,
            unverified: true,
        };
        db.put_mapping(&m).await.unwrap();
        assert_eq!(
            db.mapping_by_crm("a@example.com", "crm_contacts", 7)
                .await
                .unwrap()
                .as_ref(),
            Some(&m)
        );
        m.ews_item_id = "AAMk7-moved=".into();
        m.crm_version = Some(4);
        db.put_mapping(&m).await.unwrap();
        assert_eq!(
            db.mapping_by_ews("a@example.com", "AAMk7-moved=")
                .await
                .unwrap()
                .as_ref(),
            Some(&m)
        );
        assert_eq!(
            db.mapping_by_ews("a@example.com", "AAMk7=").await.unwrap(),
            None
        );
        // The same Exchange item for another row of the mailbox is refused.
        let other = ItemMapping {
            crm_id: 8,
            ..m.clone()
        };
        let err = db.put_mapping(&other).await.unwrap_err();
        assert!(
            err.to_string().starts_with("storing an item mapping:"),
            "{err}"
        );
        assert!(db
            .delete_mapping("a@example.com", "crm_contacts", 7)
            .await
            .unwrap());
        assert!(!db
            .delete_mapping("a@example.com", "crm_contacts", 7)
            .await
            .unwrap());

        // Conflicts and failures.
        let c = Conflict {
            mailbox: "a@example.com".into(),
            crm_table: "crm_appointments".into(),
            crm_id: Some(3),
            ews_item_id: Some("AAMk3=".into()),
            fields: vec!["location".into(), "subject".into()],
            winner: Winner::Exchange,
        };
        db.log_conflict(&c).await.unwrap();
        assert_eq!(db.conflicts("a@example.com").await.unwrap(), vec![c]);
        let f = Failure {
            mailbox: "a@example.com".into(),
            crm_table: "crm_appointments".into(),
            crm_id: 9,
            ews_item_id: String::new(),
            error: "ends_at 2026-01-01T09:00:00Z is before starts_at 2026-01-01T10:00:00Z".into(),
            attempts: 1,
        };
        let now = chrono::Utc::now();
        db.record_failure(&f, Some(now + chrono::Duration::minutes(5)))
            .await
            .unwrap();
        db.record_failure(&f, Some(now + chrono::Duration::minutes(10)))
            .await
            .unwrap();
        let all = db.failures("a@example.com", None).await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(
            all[0].attempts, 2,
            "{kind:?}: a repeated failure counts, not duplicates"
        );
        assert!(
            db.failures("a@example.com", Some(now))
                .await
                .unwrap()
                .is_empty(),
            "not due yet"
        );
        assert_eq!(
            db.failures("a@example.com", Some(now + chrono::Duration::minutes(11)))
                .await
                .unwrap()
                .len(),
            1
        );
        db.clear_failure("a@example.com", "crm_appointments", 9, "")
            .await
            .unwrap();
        assert!(db.failures("a@example.com", None).await.unwrap().is_empty());
        t.drop_db().await;
    }
}

#[tokio::test]
async fn rows_exchange_cannot_hold_go_to_the_failure_log_and_the_rest_sync() {
    use mailsync::db::rows::CrmRow;
    for t in backends().await {
        let (db, state) = (&t.db, &t.state);
        let kind = db.kind();
        seed(db).await;
        let appt = |id: i64, start: &str, end: &str, tz: &str, rrule: &str| {
            let rrule = if rrule.is_empty() {
                "NULL".to_string()
            } else {
                format!("'{rrule}'")
            };
            format!("INSERT INTO crm_appointments (id, tenant_id, owner_id, subject, starts_at, ends_at, time_zone, recurrence) VALUES ({id}, 10, 1, 'a{id}', '{start}', '{end}', '{tz}', {rrule})")
        };
        exec(
            db,
            &appt(
                1,
                "2026-01-05T10:00:00Z",
                "2026-01-05T11:00:00Z",
                "Europe/Berlin",
                "FREQ=WEEKLY;BYDAY=MO",
            ),
        )
        .await;
        exec(
            db,
            &appt(
                2,
                "2026-01-05T10:00:00Z",
                "2026-01-05T09:00:00Z",
                "Europe/Berlin",
                "",
            ),
        )
        .await;
        exec(
            db,
            &appt(
                3,
                "2026-01-05T10:00:00Z",
                "2026-01-05T11:00:00Z",
                "Mars/Olympus_Mons",
                "FREQ=HOURLY",
            ),
        )
        .await;
        exec(
            db,
            &appt(4, "2026-01-06T10:00:00Z", "2026-01-06T11:00:00Z", "UTC", ""),
        )
        .await;
        exec(db, &format!("INSERT INTO crm_appointments (id, tenant_id, owner_id, subject, starts_at, ends_at) VALUES (5, 10, 1, '{}', '2026-01-05T10:00:00Z', '2026-01-05T11:00:00Z')", "x".repeat(300))).await;
        let ok = db
            .load_syncable(
                state,
                "anna@example.com",
                "crm_appointments",
                &[1, 2, 3, 4, 5, 99],
            )
            .await
            .unwrap();
        assert_eq!(
            ok.iter().map(CrmRow::id).collect::<Vec<_>>(),
            vec![1, 4],
            "{kind:?}"
        );
        let failures = state.failures("anna@example.com", None).await.unwrap();
        let errors: Vec<&str> = failures.iter().map(|f| f.error.as_str()).collect();
        assert_eq!(
            errors,
            vec![
                "crm_appointments 2: ends_at 2026-01-05T09:00:00Z is before starts_at 2026-01-05T10:00:00Z",
                "crm_appointments 3: time_zone \"Mars/Olympus_Mons\" is not an IANA time zone; recurrence \"FREQ=HOURLY\" is not a supported RRULE: FREQ=HOURLY is not supported (DAILY, WEEKLY, MONTHLY, YEARLY)",
                "crm_appointments 5: subject has 300 characters, at most 255 fit in Exchange",
            ],
            "{kind:?}"
        );

        exec(db, "INSERT INTO crm_contacts (id, tenant_id, owner_id, surname, email1, email2) VALUES (1, 10, 1, 'Ok', 'ok@example.com', NULL)").await;
        exec(db, "INSERT INTO crm_contacts (id, tenant_id, owner_id, surname, email1, email2) VALUES (2, 10, 1, 'Bad', 'ok@example.com', 'bob@')").await;
        exec(db, "INSERT INTO crm_tasks (id, tenant_id, owner_id, subject, start_date, due_date) VALUES (1, 10, 1, 'late', '2026-02-10', '2026-02-01')").await;
        assert_eq!(
            db.load_syncable(state, "anna@example.com", "crm_contacts", &[1, 2])
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(db
            .load_syncable(state, "anna@example.com", "crm_tasks", &[1])
            .await
            .unwrap()
            .is_empty());
        let errors: Vec<String> = state
            .failures("anna@example.com", None)
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.error)
            .collect();
        assert!(
            errors
                .contains(&"crm_contacts 2: email2 \"bob@\" is not an e-mail address".to_string()),
            "{errors:?}"
        );
        assert!(
            errors.contains(
                &"crm_tasks 1: due_date 2026-02-01 is before start_date 2026-02-10".to_string()
            ),
            "{errors:?}"
        );

        // Fixed in the CRM, the row syncs and leaves the failure log.
        exec(
            db,
            "UPDATE crm_appointments SET ends_at = starts_at WHERE id = 2",
        )
        .await;
        assert_eq!(
            db.load_syncable(state, "anna@example.com", "crm_appointments", &[2])
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(!state
            .failures("anna@example.com", None)
            .await
            .unwrap()
            .iter()
            .any(|f| f.crm_table == "crm_appointments" && f.crm_id == 2));

        if kind == mailsync::config::DbKind::Sqlite {
            // SQLite accepts any text: a timestamp that cannot be read is a failure too.
            exec(db, "INSERT INTO crm_appointments (id, tenant_id, owner_id, starts_at, ends_at) VALUES (7, 10, 1, 'tomorrow', 'later')").await;
            assert!(
                db.load_syncable(state, "anna@example.com", "crm_appointments", &[7, 1])
                    .await
                    .unwrap()
                    .len()
                    == 1
            );
            let f = state.failures("anna@example.com", None).await.unwrap();
            assert!(
                f.iter()
                    .any(|f| f.crm_id == 7
                        && f.error.starts_with("crm_appointments 7: cannot be read:")),
                "{f:?}"
            );
        }
        t.drop_db().await;
    }
}

fn appointment(id: i64, subject: &str, version: i64) -> mailsync::db::rows::CrmRow {
    mailsync::db::rows::CrmRow::Appointment(mailsync::db::rows::AppointmentRow {
        id,
        tenant_id: 10,
        owner_id: 1,
        subject: Some(subject.into()),
        location: Some("Raum 1".into()),
        body: None,
        starts_at: "2026-01-05T10:00:00Z".parse().unwrap(),
        ends_at: "2026-01-05T11:00:00Z".parse().unwrap(),
        all_day: false,
        time_zone: "Europe/Berlin".into(),
        recurrence: Some("FREQ=WEEKLY;BYDAY=MO".into()),
        reminder_minutes: Some(15),
        show_as: "busy".into(),
        categories: vec!["Kunde".into()],
        uid: Some("UID-1".into()),
        ews_id: None,
        version,
    })
}

#[tokio::test]
async fn a_crm_write_and_its_mapping_commit_together_or_not_at_all() {
    use mailsync::db::rows::CrmRow;
    use mailsync::db::state::ItemMapping;
    for t in backends().await {
        let (db, state) = (&t.db, &t.state);
        let kind = db.kind();
        seed(db).await;
        let appt = |id: i64, subject: &str| appointment(id, subject, 0);
        // With the state store in the business database the mapping is written in the same
        // transaction; beside MariaDB it is the caller's second write (not tested here).
        let mapping = |ews: &str| {
            t.same().then(|| ItemMapping {
                mailbox: "anna@example.com".into(),
                crm_table: "crm_appointments".into(),
                crm_id: 0,
                ews_item_id: ews.into(),
                change_key: Some("CK1".into()),
                crm_version: None,
                fields: serde_json::json!({"subject": "Jour fixe"}),
                stamped: false,
                unverified: false,
            })
        };
        let (id, version) = db
            .save_from_exchange(&appt(0, "Jour fixe"), "AAMk1=", mapping("AAMk1=").as_ref())
            .await
            .unwrap();
        assert_eq!(version, 1, "{kind:?}");
        if t.same() {
            let m = state
                .mapping_by_crm("anna@example.com", "crm_appointments", id)
                .await
                .unwrap()
                .unwrap();
            assert_eq!((m.ews_item_id.as_str(), m.crm_version), ("AAMk1=", Some(1)));
        }
        let Some(Ok(CrmRow::Appointment(read))) = db.crm_row("crm_appointments", id).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (
                read.ews_id.as_deref(),
                read.categories.clone(),
                read.reminder_minutes,
                read.starts_at,
                read.version,
            ),
            (
                Some("AAMk1="),
                vec!["Kunde".to_string()],
                Some(15),
                "2026-01-05T10:00:00Z".parse().unwrap(),
                1
            ),
            "{kind:?}"
        );

        // An update bumps the version, and the mapping records it.
        let (_, v2) = db
            .save_from_exchange(
                &appointment(id, "Jour fixe (neu)", 1),
                "AAMk1=",
                mapping("AAMk1=").as_ref(),
            )
            .await
            .unwrap();
        assert_eq!(v2, 2, "{kind:?}");
        if t.same() {
            assert_eq!(
                state
                    .mapping_by_crm("anna@example.com", "crm_appointments", id)
                    .await
                    .unwrap()
                    .unwrap()
                    .crm_version,
                Some(2)
            );
        }

        // A write based on a version the CRM has moved past (someone edited the row after it was
        // read) is refused: the edit is not overwritten.
        let err = db
            .save_from_exchange(&appointment(id, "veraltet", 1), "AAMk1=", None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, mailsync::db::DbError::Stale { table: "crm_appointments", id: i } if i == id),
            "{err}"
        );
        let Some(Ok(CrmRow::Appointment(kept))) = db.crm_row("crm_appointments", id).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (kept.subject.as_deref(), kept.version),
            (Some("Jour fixe (neu)"), 2),
            "{kind:?}: the newer edit survives"
        );

        let rows_before = scalar(db, "SELECT COUNT(*) FROM crm_appointments").await;
        let changes_before = scalar(db, "SELECT COUNT(*) FROM crm_changes").await;
        if t.same() {
            // The mapping fails (that Exchange item is mapped to another row already): the CRM
            // insert is undone with it, change log entry included.
            state
                .put_mapping(&ItemMapping {
                    crm_id: 77,
                    ..mapping("AAMk2=").unwrap()
                })
                .await
                .unwrap();
            let err = db
                .save_from_exchange(&appt(0, "Zweiter"), "AAMk2=", mapping("AAMk2=").as_ref())
                .await
                .unwrap_err();
            assert!(
                err.to_string().starts_with("storing an item mapping:"),
                "{err}"
            );
            assert_eq!(
                scalar(db, "SELECT COUNT(*) FROM crm_appointments").await,
                rows_before,
                "{kind:?}: rolled back"
            );
            assert_eq!(
                scalar(db, "SELECT COUNT(*) FROM crm_changes").await,
                changes_before
            );
        }

        // Updating a row that is gone says so.
        let err = db
            .save_from_exchange(&appt(999, "x"), "AAMk9=", None)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("crm_appointments row 999 was changed or deleted"),
            "{err}"
        );
        assert_eq!(
            scalar(db, "SELECT COUNT(*) FROM crm_changes").await,
            changes_before,
            "{kind:?}: nothing written"
        );
        t.drop_db().await;
    }
}

#[tokio::test]
async fn batches_stamp_ews_ids_and_store_mappings_in_one_go() {
    use mailsync::db::state::ItemMapping;
    for t in backends().await {
        let (db, state) = (&t.db, &t.state);
        let kind = db.kind();
        seed(db).await;
        for name in ["Eins", "Zwei"] {
            exec(db, &format!("INSERT INTO crm_contacts (tenant_id, owner_id, surname) VALUES (10, 1, '{name}')")).await;
        }
        let id = |name: &str| {
            let sql = format!("SELECT id FROM crm_contacts WHERE surname = '{name}'");
            async move { scalar(db, &sql).await }
        };
        let (one, two) = (id("Eins").await, id("Zwei").await);
        let versions = db
            .set_ews_ids(
                "crm_contacts",
                &[
                    (two, "AAMk2=".into()),
                    (999, "AAMk9=".into()),
                    (one, "AAMk1=".into()),
                ],
            )
            .await
            .unwrap();
        assert_eq!(
            versions,
            vec![Some(2), None, Some(2)],
            "{kind:?}: in the order given"
        );
        assert_eq!(
            scalar(
                db,
                &format!(
                    "SELECT COUNT(*) FROM crm_contacts WHERE ews_id = 'AAMk1=' AND id = {one}"
                )
            )
            .await,
            1
        );
        let mapping = |crm_id: i64, ews: &str, version: i64| ItemMapping {
            mailbox: "anna@example.com".into(),
            crm_table: "crm_contacts".into(),
            crm_id,
            ews_item_id: ews.into(),
            change_key: Some(format!("CK{version}")),
            crm_version: Some(version),
            fields: serde_json::json!({"surname": ews}),
            stamped: version % 2 == 0,
            unverified: version % 2 == 1,
        };
        state
            .put_mappings(&[mapping(one, "AAMk1=", 2), mapping(two, "AAMk2=", 2)])
            .await
            .unwrap();
        // Again, changed: an upsert, not a second row.
        state
            .put_mappings(&[mapping(one, "AAMk1=", 3), mapping(two, "AAMk2=", 3)])
            .await
            .unwrap();
        for crm_id in [one, two] {
            let m = state
                .mapping_by_crm("anna@example.com", "crm_contacts", crm_id)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (m.crm_version, m.change_key.as_deref()),
                (Some(3), Some("CK3")),
                "{kind:?}"
            );
        }
        assert_eq!(scalar(state, "SELECT COUNT(*) FROM ms_item_map").await, 2);
        // An Exchange item mapped to two rows is refused as a whole.
        assert!(state
            .put_mappings(&[mapping(one, "AAMk1=", 4), mapping(999, "AAMk1=", 1)])
            .await
            .is_err());
        t.drop_db().await;
    }
}

/// A business database at migration 1001 only (before the unique ews_id indexes).
async fn at_1001(db: &Db) {
    let dir = match db {
        Db::Postgres(_) => "migrations/postgres/crm",
        Db::Sqlite(_) => "migrations/sqlite/crm",
        Db::MySql(_) => unreachable!("MariaDB starts with the unique indexes"),
    };
    let mut migrator = sqlx::migrate::Migrator::new(std::path::Path::new(dir))
        .await
        .unwrap();
    migrator.migrations = migrator
        .migrations
        .iter()
        .filter(|m| m.version == 1001)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    match db {
        Db::Postgres(p) => migrator.run(p).await.unwrap(),
        Db::Sqlite(p) => migrator.run(p).await.unwrap(),
        Db::MySql(_) => unreachable!(),
    }
}

/// Rows imported twice before imports were idempotent: the migration that adds the unique
/// index keeps each Exchange id on the oldest row, clears it on the others, reports each case,
/// and ends with the index in place.
#[tokio::test]
async fn duplicate_ews_ids_are_resolved_and_reported_before_the_unique_index() {
    let mut list = vec![sqlite().await];
    if let Some(pg) = postgres().await {
        list.push(pg);
    }
    for t in list {
        let db = &t.db;
        let kind = db.kind();
        at_1001(db).await;
        seed(db).await;
        for (id, ews) in [
            (1, "AAMk-a"),
            (2, "AAMk-b"),
            (3, "AAMk-a"),
            (4, "AAMk-a"),
            (5, "AAMk-b"),
            (6, "AAMk-c"),
        ] {
            exec(db, &format!("INSERT INTO crm_contacts (id, tenant_id, owner_id, surname, ews_id) VALUES ({id}, 10, 1, 'K{id}', '{ews}')")).await;
        }
        exec(db, "INSERT INTO crm_contacts (id, tenant_id, owner_id, surname) VALUES (7, 10, 1, 'no id')").await;
        exec(db, "INSERT INTO crm_contacts (id, tenant_id, owner_id, surname) VALUES (8, 10, 1, 'no id')").await;
        exec(db, "INSERT INTO crm_tasks (id, tenant_id, owner_id, subject, ews_id) VALUES (1, 10, 1, 't', 'AAMk-t'), (2, 10, 1, 't', 'AAMk-t')").await;
        exec(db, "INSERT INTO crm_mail_folders (id, owner_id, name, ews_id) VALUES (1, 1, 'f', 'F1'), (2, 1, 'f', 'F1')").await;

        let report = db.migrate(MigrationSet::Crm).await.unwrap();
        assert_eq!(
            report.applied,
            vec![
                "1002 unique ews ids".to_string(),
                "1003 change origin".to_string()
            ],
            "{kind:?}"
        );
        let resolved: Vec<(&str, &str, i64, Vec<i64>)> = report
            .resolved
            .iter()
            .map(|r| (r.table, r.ews_id.as_str(), r.kept, r.cleared.clone()))
            .collect();
        assert_eq!(
            resolved,
            vec![
                ("crm_contacts", "AAMk-a", 1, vec![3, 4]),
                ("crm_contacts", "AAMk-b", 2, vec![5]),
                ("crm_tasks", "AAMk-t", 1, vec![2]),
                ("crm_mail_folders", "F1", 1, vec![2]),
            ],
            "{kind:?}"
        );
        assert_eq!(
            report.resolved[0].to_string(),
            "crm_contacts: Exchange item AAMk-a was on rows 1 and 3, 4: kept on row 1 (the oldest), \
             cleared on 3, 4; check whether they are one record"
        );
        assert_eq!(
            scalar(db, "SELECT COUNT(*) FROM crm_contacts WHERE ews_id IS NULL").await,
            5,
            "rows 3, 4, 5 cleared; 7 and 8 had none"
        );
        assert_eq!(
            db.row_by_ews_id("crm_contacts", "AAMk-a")
                .await
                .unwrap()
                .map(|r| r.0),
            Some(1)
        );
        assert_eq!(
            db.row_by_ews_id("crm_contacts", "AAMk-c")
                .await
                .unwrap()
                .map(|r| r.0),
            Some(6)
        );
        // Nothing else changed on the cleared rows (their data stays for the operator).
        assert_eq!(
            scalar(
                db,
                "SELECT COUNT(*) FROM crm_contacts WHERE id = 3 AND surname = 'K3'"
            )
            .await,
            1
        );
        // The index is there now: a second row with an Exchange id is refused.
        let dup = "INSERT INTO crm_contacts (tenant_id, owner_id, surname, ews_id) VALUES (10, 1, 'x', 'AAMk-c')";
        let err = match db {
            Db::Postgres(p) => sqlx::query(dup).execute(p).await.map(|_| ()),
            Db::Sqlite(p) => sqlx::query(dup).execute(p).await.map(|_| ()),
            Db::MySql(_) => unreachable!(),
        }
        .unwrap_err();
        assert!(
            err.as_database_error()
                .is_some_and(|e| e.is_unique_violation()),
            "{err}"
        );
        // Again: up to date, nothing to resolve.
        let again = db.migrate(MigrationSet::Crm).await.unwrap();
        assert!(
            again.applied.is_empty() && again.resolved.is_empty(),
            "{again:?}"
        );
        t.drop_db().await;
    }
}

/// `mailsync migrate` prints what it resolved.
#[tokio::test]
async fn the_migrate_command_reports_resolved_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let crm = Db::connect(&format!("sqlite:{}/crm.db", dir.path().display()), 1)
        .await
        .unwrap();
    at_1001(&crm).await;
    seed(&crm).await;
    exec(&crm, "INSERT INTO crm_tasks (id, tenant_id, owner_id, subject, ews_id) VALUES (4, 10, 1, 'a', 'AAMk-t'), (9, 10, 1, 'b', 'AAMk-t')").await;
    crm.close().await;
    let cfg = dir.path().join("m.toml");
    std::fs::write(
        &cfg,
        format!(
            "[database]\nurl = \"sqlite:{0}/crm.db\"\n[state]\nurl = \"sqlite:{0}/state.db\"\n[[servers]]\nname = \"s\"\news_url = \"https://x.example.com/EWS/Exchange.asmx\"\nauth = \"basic\"\nservice_account = {{ username = \"svc\", password = \"pw\" }}\n[[mailboxes]]\nsmtp = \"a@example.com\"\noperator = \"1001\"\nserver = \"s\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailsync"))
        .args(["migrate", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("applied 1002 unique ews ids, 1003 change origin\n  resolved duplicate: crm_tasks: Exchange item AAMk-t was on rows 4 and 9: kept on row 4 (the oldest), cleared on 9"),
        "{stdout}"
    );
}

/// Importing is idempotent at the SQL layer: a row is found by its Exchange id, an insert for
/// an item a row already holds is refused naming that row (also when two writers race, through
/// the unique index), and ids compare case-sensitively (they are base64).
#[tokio::test]
async fn importing_an_exchange_item_twice_finds_the_row_instead_of_inserting_a_second() {
    use mailsync::db::DbError;
    for t in backends().await {
        let db = &t.db;
        let kind = db.kind();
        seed(db).await;
        let (id, version) = db
            .save_from_exchange(&appointment(0, "Termin", 0), "AAMkX=", None)
            .await
            .unwrap();
        assert_eq!(
            db.row_by_ews_id("crm_appointments", "AAMkX=")
                .await
                .unwrap(),
            Some((id, version)),
            "{kind:?}"
        );
        assert_eq!(
            db.row_by_ews_id("crm_appointments", "AAMKX=")
                .await
                .unwrap(),
            None,
            "{kind:?}: case-sensitive"
        );
        assert_eq!(db.row_by_ews_id("crm_tasks", "AAMkX=").await.unwrap(), None);
        assert!(
            db.row_by_ews_id("crm_operators", "AAMkX=").await.is_err(),
            "only synced tables"
        );

        // The same item again (a crash between the row and its mapping): the row is named.
        let changes = scalar(db, "SELECT COUNT(*) FROM crm_changes").await;
        let err = db
            .save_from_exchange(&appointment(0, "Termin", 0), "AAMkX=", None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, DbError::Duplicate { table: "crm_appointments", ews_id, existing } if ews_id == "AAMkX=" && *existing == (id, version)),
            "{kind:?}: {err}"
        );
        assert!(!err.is_transient());
        assert_eq!(
            err.to_string(),
            format!(
                "crm_appointments row {id} already holds Exchange item AAMkX=; nothing was written"
            )
        );
        // An id differing by case only is another item.
        let (other, _) = db
            .save_from_exchange(&appointment(0, "Anderer", 0), "AAMKX=", None)
            .await
            .unwrap();
        // An update that would give a second row the item's id is refused by the index.
        let err = db
            .save_from_exchange(&appointment(other, "Anderer", 1), "AAMkX=", None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, DbError::Duplicate { existing, .. } if existing.0 == id),
            "{kind:?}: {err}"
        );
        assert_eq!(scalar(db, "SELECT COUNT(*) FROM crm_appointments").await, 2);
        assert_eq!(
            scalar(db, "SELECT COUNT(*) FROM crm_changes").await,
            changes + 1,
            "only the second item's insert"
        );

        // Two writers importing the same items at once: one row each, the loser told which.
        for n in 0..8 {
            let ews = format!("AAMk-race-{n}=");
            let row = appointment(0, "race", 0);
            let (a, b) = tokio::join!(
                db.save_from_exchange(&row, &ews, None),
                db.save_from_exchange(&row, &ews, None)
            );
            let (won, lost) = match (a, b) {
                (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
                other => panic!("{kind:?}: exactly one insert wins: {other:?}"),
            };
            assert!(
                matches!(&lost, DbError::Duplicate { existing, .. } if existing.0 == won.0),
                "{kind:?}: {lost}"
            );
            assert_eq!(
                scalar(
                    db,
                    &format!("SELECT COUNT(*) FROM crm_appointments WHERE ews_id = '{ews}'")
                )
                .await,
                1
            );
        }

        // The mail tables carry unique Exchange ids too.
        let (folder, _) = db
            .insert_mail_folder(1, None, "Posteingang", Some("inbox"), "F-1")
            .await
            .unwrap();
        assert_eq!(
            db.row_by_ews_id("crm_mail_folders", "F-1")
                .await
                .unwrap()
                .map(|r| r.0),
            Some(folder)
        );
        let err = db
            .insert_mail_folder(1, None, "Kopie", None, "F-1")
            .await
            .unwrap_err();
        assert!(
            !err.is_transient(),
            "a constraint violation is permanent: {err}"
        );
        let mail = |ews: &str| mailsync::db::mail::NewMail {
            owner_id: 1,
            folder_id: folder,
            internet_message_id: Some("<m@example.com>".into()),
            subject: Some("s".into()),
            sender: None,
            recipients: None,
            sent_at: Some("2026-01-05T10:00:00Z".parse().unwrap()),
            is_read: false,
            mime: b"Subject: s\r\n\r\nx".to_vec(),
            ews_id: ews.into(),
        };
        let ids = db.insert_mails(&[mail("M-1"), mail("M-2")]).await.unwrap();
        assert_eq!(ids.iter().map(|(_, v)| *v).collect::<Vec<_>>(), vec![1, 1]);
        assert_eq!(
            db.row_by_ews_id("crm_mails", "M-2").await.unwrap(),
            Some(ids[1])
        );
        assert!(
            db.insert_mails(&[mail("M-3"), mail("M-1")]).await.is_err(),
            "{kind:?}"
        );
        assert_eq!(
            db.row_by_ews_id("crm_mails", "M-3").await.unwrap(),
            None,
            "the batch is one transaction"
        );
        t.drop_db().await;
    }
}

/// Database errors are told apart by what a caller can do: try again (connection lost or
/// refused, deadlock) or not (constraints, syntax).
#[tokio::test]
async fn database_errors_say_whether_trying_again_can_help() {
    use mailsync::db::DbError;
    // Nobody listens on port 1: connection refused, transient. (One connection attempt:
    // the pool would retry until its acquire timeout.)
    use sqlx::Connection;
    let refused = [
        sqlx::PgConnection::connect("postgres://nobody@127.0.0.1:1/x")
            .await
            .map(|_| ()),
        sqlx::MySqlConnection::connect("mysql://nobody@127.0.0.1:1/x")
            .await
            .map(|_| ()),
    ];
    for r in refused {
        let err = DbError::Connect {
            url: "x".into(),
            source: r.unwrap_err(),
        };
        assert!(err.is_transient(), "{err}");
    }
    for t in backends().await {
        let db = &t.db;
        let kind = db.kind();
        seed(db).await;
        // A check violation, a missing table.
        let check = db
            .save_from_exchange(
                &match appointment(0, "x", 0) {
                    mailsync::db::rows::CrmRow::Appointment(mut a) => {
                        a.show_as = "sometimes".into();
                        mailsync::db::rows::CrmRow::Appointment(a)
                    }
                    _ => unreachable!(),
                },
                "E2",
                None,
            )
            .await
            .unwrap_err();
        assert!(!check.is_transient(), "{kind:?}: {check}");
        let missing = db.row_by_ews_id("no_such_table", "E1").await.unwrap_err();
        assert!(!missing.is_transient(), "{missing}");

        // A deadlock: each of two transactions waits for the other's row; the one the database
        // picks as victim fails with a transient error.
        let (a, b) = match db {
            Db::Postgres(p) => {
                let deadlock = |first: i64, second: i64| {
                    let p = p.clone();
                    async move {
                        let mut tx = p.begin().await.map_err(|e| e.to_string())?;
                        for (i, id) in [first, second].into_iter().enumerate() {
                            sqlx::query(
                                "UPDATE crm_operators SET display_name = 'x' WHERE id = $1",
                            )
                            .bind(id)
                            .execute(&mut *tx)
                            .await
                            .map_err(|e| DbError::Query {
                                what: "deadlock",
                                source: e,
                            })
                            .map_err(|e| (e.is_transient(), e.to_string()))
                            .map_err(|e| format!("{e:?}"))?;
                            if i == 0 {
                                tokio::time::sleep(Duration::from_millis(300)).await;
                            }
                        }
                        tx.commit().await.map_err(|e| e.to_string())
                    }
                };
                exec(db, "INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name) VALUES (2, 10, '1002', 'B')").await;
                tokio::join!(deadlock(1, 2), deadlock(2, 1))
            }
            Db::MySql(p) => {
                let deadlock = |first: i64, second: i64| {
                    let p = p.clone();
                    async move {
                        let mut tx = p.begin().await.map_err(|e| e.to_string())?;
                        for (i, id) in [first, second].into_iter().enumerate() {
                            sqlx::query("UPDATE crm_operators SET display_name = 'x' WHERE id = ?")
                                .bind(id)
                                .execute(&mut *tx)
                                .await
                                .map_err(|e| DbError::Query {
                                    what: "deadlock",
                                    source: e,
                                })
                                .map_err(|e| (e.is_transient(), e.to_string()))
                                .map_err(|e| format!("{e:?}"))?;
                            if i == 0 {
                                tokio::time::sleep(Duration::from_millis(300)).await;
                            }
                        }
                        tx.commit().await.map_err(|e| e.to_string())
                    }
                };
                exec(db, "INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name) VALUES (2, 10, '1002', 'B')").await;
                tokio::join!(deadlock(1, 2), deadlock(2, 1))
            }
            Db::Sqlite(_) => {
                t.drop_db().await;
                continue;
            }
        };
        let failed: Vec<String> = [a, b].into_iter().filter_map(Result::err).collect();
        assert_eq!(failed.len(), 1, "{kind:?}: one deadlock victim: {failed:?}");
        assert!(
            failed[0].starts_with("(true, "),
            "{kind:?}: a deadlock is transient: {}",
            failed[0]
        );
        t.drop_db().await;
    }
}

/// `mailsync migrate` with a mysql:// business database and the state store in SQLite; a
/// mariadb:// state URL is refused by the configuration check, naming the key.
#[tokio::test]
async fn the_migrate_command_on_mariadb() {
    let Some((name, url)) = common::mariadb_db("migrate").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("m.toml");
    let write = |state: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[database]\nurl = \"{url}\"\n[state]\nurl = \"{state}\"\n[[servers]]\nname = \"s\"\news_url = \"https://x.example.com/EWS/Exchange.asmx\"\nauth = \"basic\"\nservice_account = {{ username = \"svc\", password = \"pw\" }}\n[[mailboxes]]\nsmtp = \"a@example.com\"\noperator = \"1\"\nserver = \"s\"\n"
            ),
        )
        .unwrap()
    };
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_mailsync"))
            .args(["migrate", "--config"])
            .arg(&cfg)
            .output()
            .unwrap()
    };
    write(&format!("sqlite:{}/state.db", dir.path().display()));
    let first = run();
    let out = String::from_utf8_lossy(&first.stdout);
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{out}{err}");
    assert!(
        out.contains(&format!(
            "business database {url}: applied 1001 reference schema, 1003 change origin\n"
        )),
        "{out}"
    );
    assert!(
        out.contains("applied 2001 state store, 2002 pending"),
        "{out}"
    );
    assert!(!err.contains("slow statement"), "{err}");
    let second = run();
    let out = String::from_utf8_lossy(&second.stdout);
    assert!(
        out.contains(&format!(
            "business database {url}: up to date (2 migrations applied before)"
        )),
        "{out}"
    );

    write(&url.replacen("mysql://", "mariadb://", 1));
    let refused = run();
    assert_eq!(refused.status.code(), Some(2));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("state.url: ") && err.contains("the state store cannot be MariaDB/MySQL"),
        "{err}"
    );
    common::drop_mariadb(&name).await;
}

/// The conflict log keeps both sides' values and the merged result and pages newest first;
/// a parked failure made due by "retry" is what the sync step's due query returns.
#[tokio::test]
async fn conflict_log_pages_with_values_and_retry_makes_a_failure_due() {
    use mailsync::db::journal::ConflictQuery;
    use mailsync::db::state::{Conflict, ConflictValues, Failure, Winner};
    for t in state_backends().await {
        let db = &t.db;
        let kind = if t.pg_name.is_some() { "pg" } else { "sqlite" };
        for n in 0..5i64 {
            let c = Conflict {
                mailbox: if n % 2 == 0 {
                    "a@example.com"
                } else {
                    "b@example.com"
                }
                .into(),
                crm_table: "crm_contacts".into(),
                crm_id: Some(n),
                ews_item_id: Some(format!("AAMk{n}=")),
                fields: vec!["surname".into(), "city".into()],
                winner: Winner::Crm,
            };
            let values = ConflictValues::of(
                &c.fields,
                &serde_json::json!({"surname": format!("Meier{n}"), "city": "Berlin", "company": "x"}),
                &serde_json::json!({"surname": "Maier", "city": null}),
                &serde_json::json!({"surname": format!("Meier{n}"), "city": "Berlin"}),
            );
            db.log_conflict_values(&c, &values).await.unwrap();
        }
        let first = db
            .conflict_page(&ConflictQuery {
                limit: 2,
                ..ConflictQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(
            first.iter().map(|e| e.conflict.crm_id).collect::<Vec<_>>(),
            vec![Some(4), Some(3)],
            "{kind}: newest first"
        );
        let e = &first[0];
        assert_eq!(e.values.crm["surname"], "Meier4", "{kind}");
        assert_eq!(e.values.exchange["surname"], "Maier", "{kind}");
        assert_eq!(e.values.exchange["city"], serde_json::Value::Null, "{kind}");
        assert_eq!(e.values.merged["city"], "Berlin", "{kind}");
        assert!(
            !e.values.crm.contains_key("company"),
            "{kind}: only the conflicting fields"
        );
        let rest = db
            .conflict_page(&ConflictQuery {
                before: Some(first[1].id),
                limit: 10,
                ..ConflictQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(rest.len(), 3, "{kind}");
        let of_a = db
            .conflict_page(&ConflictQuery {
                mailbox: Some("a@example.com".into()),
                limit: 10,
                ..ConflictQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(of_a.len(), 3, "{kind}");
        let future = db
            .conflict_page(&ConflictQuery {
                since: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
                limit: 10,
                ..ConflictQuery::default()
            })
            .await
            .unwrap();
        assert!(future.is_empty(), "{kind}: since cuts");
        let past = db
            .conflict_page(&ConflictQuery {
                since: Some(chrono::Utc::now() - chrono::Duration::hours(1)),
                limit: 10,
                ..ConflictQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(past.len(), 5, "{kind}");
        assert_eq!(
            db.conflict_by_id(e.id).await.unwrap().as_ref(),
            Some(e),
            "{kind}"
        );
        // The old entry point still logs (without values).
        db.log_conflict(&e.conflict).await.unwrap();
        assert_eq!(db.conflicts("a@example.com").await.unwrap().len(), 4);

        let f = Failure {
            mailbox: "a@example.com".into(),
            crm_table: "crm_tasks".into(),
            crm_id: 4,
            ews_item_id: String::new(),
            error: "due_date before start_date".into(),
            attempts: 1,
        };
        db.record_failure(&f, None).await.unwrap();
        let page = db.failure_page(None, None, 10).await.unwrap();
        assert_eq!(page.len(), 1, "{kind}");
        assert_eq!(page[0].failure, f, "{kind}");
        assert_eq!(page[0].next_retry_at, None, "{kind}");
        let now = chrono::Utc::now();
        assert!(
            db.failures("a@example.com", Some(now))
                .await
                .unwrap()
                .is_empty(),
            "{kind}: parked until it changes"
        );
        let retried = db
            .retry_failure_now(page[0].id, now)
            .await
            .unwrap()
            .unwrap();
        assert!(retried.next_retry_at.is_some(), "{kind}");
        assert_eq!(
            db.failures("a@example.com", Some(now + chrono::Duration::seconds(1)))
                .await
                .unwrap(),
            vec![f.clone()],
            "{kind}: due for the next step"
        );
        assert_eq!(
            db.failure_counts().await.unwrap(),
            vec![("crm_tasks".to_string(), 1)],
            "{kind}"
        );
        assert!(db.retry_failure_now(999_999, now).await.unwrap().is_none());
        t.drop_db().await;
    }
}

/// Retention: consumed and old change-log rows go, unconsumed or recent ones stay; old
/// conflicts go; a mailbox out of the configuration for the whole period loses its state, a
/// configured one or one removed recently keeps it.
#[tokio::test]
async fn retention_prunes_only_what_is_old_and_done_with() {
    use mailsync::db::changes::Cursor;
    for t in backends().await {
        // The change log in the business database, the rest in the state store (the same
        // database except beside MariaDB).
        let (db, state) = (&t.db, &t.state);
        let kind = format!("{:?}", db.kind());
        seed(db).await;
        for n in 0..6 {
            exec(
                db,
                &format!(
                    "INSERT INTO crm_tasks (tenant_id, owner_id, subject) VALUES (10, 1, 't{n}')"
                ),
            )
            .await;
        }
        let changes = db.changes_after(Cursor::default(), 100).await.unwrap();
        assert_eq!(changes.len(), 7, "{kind}: the operator and six tasks");
        // The first five are old; the feed consumes three, then five more (the sixth is
        // recent though consumed, the seventh not consumed).
        let old = "2020-01-01T00:00:00Z";
        let ts = if t.pg_name.is_some() {
            format!("TIMESTAMPTZ '{old}'")
        } else {
            format!("'{old}'")
        };
        for c in &changes[..5] {
            exec(
                db,
                &format!(
                    "UPDATE crm_changes SET at = {ts} WHERE seq = {}",
                    c.cursor.seq
                ),
            )
            .await;
        }
        let cursor = changes[5].cursor;
        let cutoff = chrono::Utc::now() - chrono::Duration::days(90);
        let consumed_three = changes[2].cursor;
        assert_eq!(
            db.prune_changes(consumed_three, cutoff).await.unwrap(),
            3,
            "{kind}"
        );
        assert_eq!(
            db.prune_changes(cursor, cutoff).await.unwrap(),
            2,
            "{kind}: only old ones"
        );
        assert_eq!(
            scalar(db, "SELECT COUNT(*) FROM crm_changes").await,
            2,
            "{kind}"
        );

        // Conflicts.
        for (mailbox, at) in [("a@example.com", Some(old)), ("a@example.com", None)] {
            let at = at.map_or("now()".to_owned(), |_| ts.clone());
            let at = if t.pg_name.is_none() && at == "now()" {
                "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')".to_owned()
            } else {
                at
            };
            exec(state, &format!("INSERT INTO ms_conflicts (mailbox, crm_table, fields, winner, at) VALUES ('{mailbox}', 'crm_tasks', '[]', 'crm', {at})")).await;
        }
        assert_eq!(state.prune_conflicts(cutoff).await.unwrap(), 1, "{kind}");
        assert_eq!(
            scalar(state, "SELECT COUNT(*) FROM ms_conflicts").await,
            1,
            "{kind}"
        );

        // Mailbox state: kept.example.com is configured, gone@ was removed long ago,
        // recent@ was removed yesterday.
        for m in ["kept@example.com", "gone@example.com", "recent@example.com"] {
            exec(state, &format!("INSERT INTO ms_folder_state (mailbox, folder_key, sync_state) VALUES ('{m}', 'contacts', 's')")).await;
            exec(state, &format!("INSERT INTO ms_item_map (mailbox, crm_table, crm_id, ews_item_id) VALUES ('{m}', 'crm_tasks', 1, 'AAMk-{m}')")).await;
            exec(state, &format!("INSERT INTO ms_pending (mailbox, crm_table, crm_id) VALUES ('{m}', 'crm_tasks', 1)")).await;
            exec(state, &format!("INSERT INTO ms_failures (mailbox, crm_table, crm_id, error) VALUES ('{m}', 'crm_tasks', 1, 'x')")).await;
        }
        let configured = vec!["kept@example.com".to_string()];
        state.mark_configured(&configured).await.unwrap();
        assert_eq!(
            scalar(state, "SELECT COUNT(*) FROM ms_mailboxes").await,
            3,
            "{kind}: state adopted"
        );
        let (gone, _) = state
            .prune_removed_mailboxes(&configured, cutoff)
            .await
            .unwrap();
        assert!(gone.is_empty(), "{kind}: every clock starts now");
        exec(state, &format!("UPDATE ms_mailboxes SET last_configured_at = {ts} WHERE mailbox IN ('gone@example.com', 'kept@example.com')")).await;
        let (gone, rows) = state
            .prune_removed_mailboxes(&configured, cutoff)
            .await
            .unwrap();
        assert_eq!(gone, vec!["gone@example.com".to_string()], "{kind}");
        assert_eq!(rows, 4, "{kind}");
        for table in [
            "ms_folder_state",
            "ms_item_map",
            "ms_pending",
            "ms_failures",
        ] {
            assert_eq!(
                scalar(
                    state,
                    &format!("SELECT COUNT(*) FROM {table} WHERE mailbox = 'gone@example.com'")
                )
                .await,
                0,
                "{kind}: {table}"
            );
            assert_eq!(
                scalar(state, &format!("SELECT COUNT(*) FROM {table}")).await,
                2,
                "{kind}: {table} of the others"
            );
        }
        t.drop_db().await;
    }
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
