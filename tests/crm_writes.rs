//! CRM writes from Exchange against real databases (tests/common/backends.rs): a row and its
//! mapping commit together or not at all, batches stamp `ews_id`s and store mappings in one
//! go, an Exchange item imported twice finds its row instead of a second one, and rows
//! Exchange cannot hold go to the failure log while the rest syncs.

mod common;
use common::backends::*;

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
