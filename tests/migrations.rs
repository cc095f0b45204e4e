//! Migrations against real databases (tests/common/backends.rs): from empty and again, one
//! database shared by both sets, the `migrate` command on SQLite and MariaDB, and duplicate
//! `ews_id`s resolved and reported before the unique index.

mod common;
use common::backends::*;

use mailsync::db::{Db, MigrationSet};

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
        let expected: &[&str] = match kind {
            "mariadb" => &["1001 reference schema", "1003 change origin"],
            "sqlite" => &[
                "1001 reference schema",
                "1002 unique ews ids",
                "1003 change origin",
            ],
            // Change capture by statement (PostgreSQL's transition tables).
            _ => &[
                "1001 reference schema",
                "1002 unique ews ids",
                "1003 change origin",
                "1004 capture by statement",
            ],
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

/// A business database at migration 1001 only (before the unique ews_id indexes).
async fn at_1001(db: &Db) {
    up_to(db, 1001).await
}

/// A business database migrated up to `last` (inclusive).
async fn up_to(db: &Db, last: i64) {
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
        .filter(|m| m.version <= last)
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
        let mut expected = vec![
            "1002 unique ews ids".to_string(),
            "1003 change origin".to_string(),
        ];
        if matches!(db, Db::Postgres(_)) {
            expected.push("1004 capture by statement".to_string());
        }
        assert_eq!(report.applied, expected, "{kind:?}");
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

/// Migration 1004 (PostgreSQL: capture by statement) replaces each reference capture trigger
/// that is there and enabled as usual; it leaves a table without the reference trigger (an
/// integration's own capture) and one whose trigger fires on replicas (logical replication
/// runs row triggers only) as they are, and keeps a disabled capture disabled. Every table's
/// changes are logged afterwards as before.
#[tokio::test]
async fn capture_by_statement_replaces_only_the_reference_triggers() {
    let Some(t) = postgres().await else { return };
    let db = &t.db;
    up_to(db, 1003).await;
    exec(db, "DROP TRIGGER crm_tasks_capture ON crm_tasks").await;
    exec(db, "CREATE TRIGGER erp_capture AFTER INSERT OR UPDATE OR DELETE ON crm_tasks FOR EACH ROW EXECUTE FUNCTION crm_capture()").await;
    exec(
        db,
        "ALTER TABLE crm_mails ENABLE ALWAYS TRIGGER crm_mails_capture",
    )
    .await;
    exec(
        db,
        "ALTER TABLE crm_outbox DISABLE TRIGGER crm_outbox_capture",
    )
    .await;
    let report = db.migrate(MigrationSet::Crm).await.unwrap();
    assert_eq!(
        report.applied,
        vec!["1004 capture by statement".to_string()]
    );
    let triggers = |table: &str| {
        format!("SELECT COUNT(*) FROM pg_trigger WHERE tgrelid = '{table}'::regclass AND NOT tgisinternal AND tgname LIKE '%capture%'")
    };
    let statement_triggers = |table: &str, enabled: &str| {
        format!("SELECT COUNT(*) FROM pg_trigger WHERE tgrelid = '{table}'::regclass AND tgname LIKE '{table}_capture_%' AND tgenabled = '{enabled}' AND (tgtype & 1) = 0")
    };
    assert_eq!(
        scalar(db, &statement_triggers("crm_contacts", "O")).await,
        3
    );
    assert_eq!(
        scalar(db, &triggers("crm_contacts")).await,
        3,
        "the row trigger is gone"
    );
    assert_eq!(
        scalar(db, &triggers("crm_tasks")).await,
        1,
        "the ERP's own capture alone"
    );
    assert_eq!(
        scalar(db, "SELECT COUNT(*) FROM pg_trigger WHERE tgname = 'crm_mails_capture' AND tgenabled = 'A'").await,
        1,
        "a capture that fires on replicas stays a row trigger"
    );
    assert_eq!(scalar(db, &statement_triggers("crm_outbox", "D")).await, 3);
    seed(db).await;
    exec(db, "INSERT INTO crm_contacts (id, tenant_id, owner_id, surname) VALUES (1, 10, 1, 'a'), (2, 10, 1, 'b')").await;
    exec(
        db,
        "INSERT INTO crm_tasks (id, tenant_id, owner_id, subject) VALUES (1, 10, 1, 't')",
    )
    .await;
    exec(
        db,
        "INSERT INTO crm_mail_folders (id, owner_id, name) VALUES (1, 1, 'f')",
    )
    .await;
    exec(
        db,
        "INSERT INTO crm_mails (id, owner_id, folder_id, subject) VALUES (1, 1, 1, 'm')",
    )
    .await;
    exec(db, "INSERT INTO crm_outbox (owner_id, sender, recipients, mime) VALUES (1, 'a@example.com', 'b@example.com', 'x')").await;
    let logged =
        |table: &str| format!("SELECT COUNT(*) FROM crm_changes WHERE table_name = '{table}'");
    assert_eq!(scalar(db, &logged("crm_contacts")).await, 2);
    assert_eq!(
        scalar(db, &logged("crm_tasks")).await,
        1,
        "once, by the ERP's trigger"
    );
    assert_eq!(scalar(db, &logged("crm_mail_folders")).await, 1);
    assert_eq!(scalar(db, &logged("crm_mails")).await, 1);
    assert_eq!(
        scalar(db, &logged("crm_outbox")).await,
        0,
        "capture stays disabled"
    );
    t.drop_db().await;
}
