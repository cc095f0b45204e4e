//! `mailsync demo` as README's first command runs it (shortened with --seconds): it starts the
//! simulator, seeds the CRM and the mailboxes (mail included), initial-syncs them, propagates
//! simulated users' changes in all four areas both ways and prints their latencies; every
//! request it sent validates against the official schema. `--areas` chooses the areas.

mod common;

use std::process::Command;

#[test]
fn the_demo_syncs_and_reports_latencies_and_its_requests_are_schema_valid() {
    let record = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mailsync"))
        .args([
            "demo",
            "--mailboxes",
            "3",
            "--seconds",
            "12",
            "--admin",
            "127.0.0.1:0",
            "--admin-token",
            "demo-token-for-the-test",
        ])
        .arg("--sim-record")
        .arg(record.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("seeded 3 operators with contacts, calendar, tasks, mail"),
        "{stdout}"
    );
    assert!(
        stdout.contains("2 mails delivered into each inbox"),
        "{stdout}"
    );
    for n in 1..=3 {
        assert!(
            stdout.contains(&format!(
                "initial sync of user{n}@example.com (crm-to-exchange) done"
            )),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains("contacts: ") && stdout.contains("to Exchange: 12 created"),
        "{stdout}"
    );
    assert!(
        stdout.contains("initial sync of 3 mailboxes done"),
        "{stdout}"
    );
    assert!(
        stdout.contains("(token demo-token-for-the-test)"),
        "{stdout}"
    );
    // Mail: the CRM's 4 mails and 3 folders to Exchange, Exchange's 2 mails to the CRM.
    assert!(
        stdout.contains("  mail: ")
            && stdout.contains("to Exchange: 4 created, 1 folders created; to CRM: 2 created"),
        "{stdout}"
    );
    // Every kind of simulated change arrived, each with its latency.
    for line in [
        "mail: new mail",
        "contacts: new contact",
        "mail: read",
        "mail: sent from the outbox",
        "mail: filed",
        "tasks: new task",
        "calendar: new appointment",
    ] {
        assert!(stdout.contains(line), "no {line:?} in\n{stdout}");
    }
    for summary in [
        "mail Exchange → CRM: ",
        "mail CRM → Exchange: ",
        "contacts CRM → Exchange: ",
        "contacts Exchange → CRM: ",
    ] {
        assert!(stdout.contains(summary), "no {summary:?} in\n{stdout}");
    }
    assert!(!stdout.contains("not arrived"), "{stdout}");

    // The requests mailsync sent, against Microsoft's schema (strict: requests are ours).
    let operations = common::validate_recorded_requests(record.path());
    for op in [
        "GetFolder",
        "FindFolder",
        "CreateFolder",
        "SyncFolderItems",
        "GetItem",
        "CreateItem",
        "UpdateItem",
        "FindItem",
        "Subscribe",
        "GetStreamingEvents",
        "SyncFolderHierarchy",
        "MoveItem",
    ] {
        assert!(operations.contains(op), "no {op} among {operations:?}");
    }
}

#[test]
fn the_demo_syncs_only_the_areas_asked_for() {
    let out = Command::new(env!("CARGO_BIN_EXE_mailsync"))
        .args([
            "demo",
            "--mailboxes",
            "1",
            "--seconds",
            "1",
            "--no-activity",
            "--admin",
            "127.0.0.1:0",
            "--areas",
            "contacts,mail",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("seeded 1 operators with contacts, mail"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  contacts: ") && stdout.contains("  mail: "),
        "{stdout}"
    );
    assert!(
        !stdout.contains("  calendar: ") && !stdout.contains("  tasks: "),
        "{stdout}"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_mailsync"))
        .args(["demo", "--areas", "contacts,notes"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid value 'notes' for '--areas"));
}

/// `mailsync demo --database mysql://…`: the business database in MariaDB (the state store in
/// a SQLite file beside it), seeded, initial-synced, changes propagated both ways.
#[test]
fn the_demo_runs_on_a_mariadb_business_database() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some((name, url)) = runtime.block_on(common::mariadb_db("demo")) else {
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_mailsync"))
        .args([
            "demo",
            "--mailboxes",
            "2",
            "--seconds",
            "5",
            "--admin",
            "127.0.0.1:0",
            "--database",
            &url,
        ])
        .output()
        .unwrap();
    runtime.block_on(common::drop_mariadb(&name));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("business database {url}: seeded 2 operators")),
        "{stdout}"
    );
    assert!(
        stdout.contains("initial sync of 2 mailboxes done"),
        "{stdout}"
    );
    assert!(
        stdout.contains("CRM → Exchange: ") && stdout.contains("Exchange → CRM: "),
        "{stdout}"
    );
    assert!(!stdout.contains("not arrived"), "{stdout}");
}
