//! Change-capture throughput on SQLite, PostgreSQL and MariaDB: insert 100,000 contact rows
//! (the triggers log each), then read the change log in batches of 1,000 after the cursor,
//! apply each batch (read its rows in one query, screen them) and advance the cursor. Prints
//! one JSON object per backend. On MariaDB reading includes numbering the changes in commit
//! order (crm_changes.seq), and the cursor lives in a SQLite state store beside it.
//!
//!     cargo run --release --example change_capture [-- ROWS]
//!
//! PostgreSQL is used at postgres://postgres@127.0.0.1:5432 and MariaDB at
//! mysql://root@127.0.0.1:3306 (scratch databases) when reachable.

use std::time::Instant;

use mailsync::db::changes::Cursor;
use mailsync::db::{Db, MigrationSet};
use sqlx::Connection;

/// `state` holds the cursor and the failure log (the business database itself, except beside
/// MariaDB).
async fn run(label: &str, db: Db, state: Db, rows: i64) {
    db.migrate(MigrationSet::Crm).await.unwrap();
    state.migrate(MigrationSet::State).await.unwrap();
    let exec = |sql: String| {
        let db = db.clone();
        async move {
            match &db {
                Db::Postgres(p) => sqlx::query(&sql).execute(p).await.map(|_| ()),
                Db::Sqlite(p) => sqlx::query(&sql).execute(p).await.map(|_| ()),
                Db::MySql(p) => sqlx::query(&sql).execute(p).await.map(|_| ()),
            }
            .unwrap()
        }
    };
    exec("INSERT INTO crm_tenants (id, name) VALUES (1, 't')".into()).await;
    exec("INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name) VALUES (1, 1, '1', 'A')".into()).await;
    let t0 = Instant::now();
    let batch = 1000;
    for start in (0..rows).step_by(batch as usize) {
        let values: Vec<String> = (start..(start + batch).min(rows))
            .map(|i| format!("(1, 1, 'Vorname{i}', 'Nachname{i}', 'kontakt{i}@example.com')"))
            .collect();
        exec(format!(
            "INSERT INTO crm_contacts (tenant_id, owner_id, given_name, surname, email1) VALUES {}",
            values.join(",")
        ))
        .await;
    }
    let insert_secs = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let mut applied = 0u64;
    loop {
        let cursor: Cursor = state.cursor("bench").await.unwrap();
        let changes = db.changes_after(cursor, 1000).await.unwrap();
        let Some(last) = changes.last().map(|c| c.cursor) else {
            break;
        };
        let ids: Vec<i64> = changes
            .iter()
            .filter(|c| c.table == "crm_contacts")
            .map(|c| c.row_id)
            .collect();
        applied += db
            .load_syncable(&state, "a@example.com", "crm_contacts", &ids)
            .await
            .unwrap()
            .len() as u64;
        state.advance_cursor("bench", last).await.unwrap();
    }
    let read_secs = t1.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "backend": label,
            "rows": rows,
            "insert_seconds": (insert_secs * 100.0).round() / 100.0,
            "inserts_per_second_with_capture": (rows as f64 / insert_secs).round(),
            "changes_applied": applied,
            "apply_seconds": (read_secs * 100.0).round() / 100.0,
            "changes_per_second_read_and_applied": (applied as f64 / read_secs).round(),
            "note": "apply = read the batch's rows in one query, screen them, advance the cursor after each batch of 1000",
        })
    );
    db.close().await;
    state.close().await;
}

#[tokio::main]
async fn main() {
    let rows: i64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Db::connect(
        &format!("sqlite:{}", dir.path().join("bench.db").display()),
        4,
    )
    .await
    .unwrap();
    run("sqlite", sqlite.clone(), sqlite, rows).await;

    let admin = "postgres://postgres@127.0.0.1:5432/postgres";
    match sqlx::PgConnection::connect(admin).await {
        Ok(mut c) => {
            let name = format!("mailsync_bench_{}", std::process::id());
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut c)
                .await
                .unwrap();
            let pg = Db::connect(&format!("postgres://postgres@127.0.0.1:5432/{name}"), 4)
                .await
                .unwrap();
            run("postgres", pg.clone(), pg, rows).await;
            sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
                .execute(&mut c)
                .await
                .unwrap();
        }
        Err(e) => eprintln!("postgres skipped: {e}"),
    }

    let admin = "mysql://root@127.0.0.1:3306";
    match sqlx::MySqlConnection::connect(admin).await {
        Ok(mut c) => {
            let name = format!("mailsync_bench_{}", std::process::id());
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut c)
                .await
                .unwrap();
            let my = Db::connect(&format!("{admin}/{name}"), 4).await.unwrap();
            let state = Db::connect(
                &format!("sqlite:{}", dir.path().join("state.db").display()),
                4,
            )
            .await
            .unwrap();
            run("mariadb", my, state, rows).await;
            sqlx::query(&format!("DROP DATABASE {name}"))
                .execute(&mut c)
                .await
                .unwrap();
        }
        Err(e) => eprintln!("mariadb skipped: {e}"),
    }
}
