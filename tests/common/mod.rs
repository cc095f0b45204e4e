//! Helpers shared by the end-to-end tests: SQL on either backend, the simulator's client,
//! and the tenant/operators most tests start from.
#![allow(dead_code)]

use ews_sim::server::Running;
use mailsync::db::Db;

/// Runs a statement, panicking with it on failure.
pub async fn exec(db: &Db, sql: &str) {
    match db {
        Db::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        Db::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The first column of the first row, as an integer.
pub async fn count(db: &Db, sql: &str) -> i64 {
    match db {
        Db::Postgres(p) => sqlx::query_as::<_, (i64,)>(sql).fetch_one(p).await,
        Db::Sqlite(p) => sqlx::query_as::<_, (i64,)>(sql).fetch_one(p).await,
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
    .0
}

/// Tenant 1 "Muster GmbH" and operators `(id, personnel number, e-mail)`.
pub async fn seed(db: &Db, operators: &[(i64, &str, Option<&str>)]) {
    exec(
        db,
        "INSERT INTO crm_tenants (id, name) VALUES (1, 'Muster GmbH')",
    )
    .await;
    for (id, personnel, email) in operators {
        let email = email.map_or("NULL".to_owned(), |e| format!("'{e}'"));
        exec(
            db,
            &format!("INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name, email) VALUES ({id}, 1, '{personnel}', 'Op {id}', {email})"),
        )
        .await;
    }
}

/// A client of the simulator as its service account (svc / secret).
pub fn sim_client(sim: &Running) -> ews::Client {
    let mut cfg = ews::ClientConfig::new(
        url::Url::parse(&sim.ews_url()).expect("the simulator's URL"),
        ews::Auth::Basic {
            username: "svc".into(),
            password: "secret".into(),
        },
    );
    cfg.allow_http = true;
    ews::Client::new(cfg).expect("a client for the simulator")
}
