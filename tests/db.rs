//! The SQL side against real databases (the backends in tests/common/backends.rs): the state
//! store's mappings, cursors and logs, errors that say whether a retry can help, the conflict
//! log and retention. CRM writes: tests/crm_writes.rs; the change log: tests/change_log.rs;
//! migrations: tests/migrations.rs.

mod common;
use common::backends::*;

use std::time::Duration;

use mailsync::db::Db;
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
