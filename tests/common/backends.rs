//! The databases of the SQL-side tests (tests/db.rs, tests/change_log.rs, tests/migrations.rs):
//! PostgreSQL on 127.0.0.1:5432 and MariaDB on 127.0.0.1:3306 (a fresh database per test;
//! under CI=true a missing server fails) and SQLite files. The state store lives in the
//! business database on PostgreSQL and SQLite, and in a SQLite file beside a MariaDB business
//! database (it cannot live in MariaDB).

use mailsync::config::DbKind;
use mailsync::db::changes::ChangeOp;
use mailsync::db::{Db, MigrationSet};

/// A database that is dropped (PostgreSQL, MariaDB) or deleted (SQLite) at the end of the test.
pub struct TestDb {
    /// The business database.
    pub db: Db,
    /// The state store: `db` itself, or a SQLite file beside a MariaDB `db`.
    pub state: Db,
    pub pg_name: Option<String>,
    pub my_name: Option<String>,
    pub _dir: Option<tempfile::TempDir>,
    /// PostgreSQL tests run one at a time: the change reader waits for the oldest writing
    /// transaction of the whole cluster, and one test holds such transactions open on purpose.
    pub _serial: Option<tokio::sync::MutexGuard<'static, ()>>,
}

pub static PG_SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl TestDb {
    pub async fn drop_db(self) {
        self.db.close().await;
        self.state.close().await;
        if let Some(name) = self.pg_name {
            super::drop_postgres(&name).await;
        }
        if let Some(name) = self.my_name {
            super::drop_mariadb(&name).await;
        }
    }

    /// True when the state store is the business database itself.
    pub fn same(&self) -> bool {
        self.db.kind() != DbKind::MySql
    }
}

/// A change as compared in the tests: table, row, op, owner, tenant.
pub type Seen<'a> = (&'a str, i64, ChangeOp, Option<i64>, Option<i64>);

pub async fn postgres() -> Option<TestDb> {
    let serial = PG_SERIAL.lock().await;
    let (name, url) = super::postgres_db("test").await?;
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

pub async fn mariadb() -> Option<TestDb> {
    let (name, url) = super::mariadb_db("test").await?;
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

pub async fn sqlite() -> TestDb {
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

pub async fn migrated(list: Vec<TestDb>) -> Vec<TestDb> {
    for t in &list {
        t.db.migrate(MigrationSet::Crm).await.unwrap();
        t.state.migrate(MigrationSet::State).await.unwrap();
    }
    list
}

/// Every business database (PostgreSQL and MariaDB when available), migrated.
pub async fn backends() -> Vec<TestDb> {
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
pub async fn state_backends() -> Vec<TestDb> {
    let mut out = vec![sqlite().await];
    if let Some(pg) = postgres().await {
        out.push(pg);
    }
    migrated(out).await
}

pub async fn exec(db: &Db, sql: &str) {
    super::exec(db, sql).await
}

pub async fn scalar(db: &Db, sql: &str) -> i64 {
    super::count(db, sql).await
}

pub async fn seed(db: &Db) {
    exec(
        db,
        "INSERT INTO crm_tenants (id, name) VALUES (10, 'Musterfirma')",
    )
    .await;
    exec(db, "INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name, email) VALUES (1, 10, '1001', 'Anna', 'anna@example.com')").await;
}

/// An appointment row of the seeded tenant (10) as the write tests use it; `id` 0 inserts.
pub fn appointment(id: i64, subject: &str, version: i64) -> mailsync::db::rows::CrmRow {
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
