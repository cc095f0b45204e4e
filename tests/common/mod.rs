//! Helpers shared by the end-to-end tests: SQL on either backend, the simulator's client,
//! and the tenant/operators most tests start from.
#![allow(dead_code)]

pub mod backends;
pub mod cluster;
pub mod rig;

use ews_sim::server::Running;
use mailsync::db::Db;

/// Runs a statement, panicking with it on failure. ISO timestamp literals
/// (`'2026-01-05T08:00:00Z'`) are written as MariaDB takes them there.
pub async fn exec(db: &Db, sql: &str) {
    match db {
        Db::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        Db::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        Db::MySql(p) => sqlx::query(&mailsync::db::mysql_literals(sql))
            .execute(p)
            .await
            .map(|_| ()),
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The first column of the first row, as an integer.
pub async fn count(db: &Db, sql: &str) -> i64 {
    match db {
        Db::Postgres(p) => sqlx::query_as::<_, (i64,)>(sql).fetch_one(p).await,
        Db::Sqlite(p) => sqlx::query_as::<_, (i64,)>(sql).fetch_one(p).await,
        Db::MySql(p) => {
            sqlx::query_as::<_, (i64,)>(&mailsync::db::mysql_literals(sql))
                .fetch_one(p)
                .await
        }
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
    .0
}

/// The first row's text columns (NULL as `None`); panics with the statement when no row.
pub async fn texts(db: &Db, sql: &str) -> Vec<Option<String>> {
    use sqlx::Row;
    let row = match db {
        Db::Postgres(p) => sqlx::query(sql).fetch_one(p).await.map(|r| {
            (0..r.len())
                .map(|i| r.try_get::<Option<String>, _>(i).unwrap())
                .collect()
        }),
        Db::Sqlite(p) => sqlx::query(sql).fetch_one(p).await.map(|r| {
            (0..r.len())
                .map(|i| r.try_get::<Option<String>, _>(i).unwrap())
                .collect()
        }),
        // Binary-collated columns (ews_id) come as bytes.
        Db::MySql(p) => sqlx::query(sql).fetch_one(p).await.map(|r| {
            (0..r.len())
                .map(|i| {
                    r.try_get::<Option<Vec<u8>>, _>(i)
                        .unwrap()
                        .map(|b| String::from_utf8(b).unwrap())
                })
                .collect()
        }),
    };
    row.unwrap_or_else(|e| panic!("{sql}: {e}"))
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

const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A fresh PostgreSQL database for one test: (name, URL). None when no server runs (after
/// `require::missing`, which fails the test under CI=true).
pub async fn postgres_db(prefix: &str) -> Option<(String, String)> {
    use sqlx::Connection;
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let mut admin = match sqlx::PgConnection::connect(PG_ADMIN).await {
        Ok(c) => c,
        Err(e) => {
            mailsync_testkit::require::missing(&format!("PostgreSQL at 127.0.0.1:5432 ({e})"));
            return None;
        }
    };
    let name = format!(
        "mailsync_{prefix}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("creating a test database");
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    Some((name, url))
}

/// Runs `sql` on the server's `postgres` database (what cannot run inside the test's own
/// database, e.g. `ALTER DATABASE … ALLOW_CONNECTIONS`).
pub async fn postgres_admin(sql: &str) {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(PG_ADMIN)
        .await
        .expect("connecting to PostgreSQL's postgres database");
    sqlx::query(sql)
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Drops a database made by [`postgres_db`].
pub async fn drop_postgres(name: &str) {
    use sqlx::Connection;
    if let Ok(mut admin) = sqlx::PgConnection::connect(PG_ADMIN).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    }
}

const MARIADB_ADMIN: &str = "mysql://root@127.0.0.1:3306";

/// A fresh MariaDB database for one test: (name, URL). None when no server runs (after
/// `require::missing`, which fails the test under CI=true).
pub async fn mariadb_db(prefix: &str) -> Option<(String, String)> {
    use sqlx::Connection;
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let mut admin = match sqlx::MySqlConnection::connect(MARIADB_ADMIN).await {
        Ok(c) => c,
        Err(e) => {
            mailsync_testkit::require::missing(&format!(
                "MariaDB at 127.0.0.1:3306, user root without password ({e})"
            ));
            return None;
        }
    };
    let name = format!(
        "mailsync_{prefix}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("creating a test database");
    let url = format!("mysql://root@127.0.0.1:3306/{name}");
    Some((name, url))
}

/// Drops a database made by [`mariadb_db`].
pub async fn drop_mariadb(name: &str) {
    use sqlx::Connection;
    if let Ok(mut admin) = sqlx::MySqlConnection::connect(MARIADB_ADMIN).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
            .execute(&mut admin)
            .await;
    }
}

/// A state store for a test whose business database is MariaDB (where the state store cannot
/// live): a SQLite file in `dir`, migrated.
pub async fn sqlite_state(dir: &std::path::Path) -> (Db, String) {
    let url = format!("sqlite:{}", dir.join("state.db").display());
    let db = Db::connect(&url, 5).await.expect("the SQLite state store");
    db.migrate(mailsync::db::MigrationSet::State)
        .await
        .expect("migrating the state store");
    (db, url)
}

/// Validates the requests the simulator recorded in `dir` strictly against Microsoft's
/// schema (they are ours), panicking with those that do not validate; returns the
/// operations seen.
pub fn validate_recorded_requests(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    let requests: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .expect("the record directory")
        .map(|e| e.expect("a recorded file").path())
        .filter(|p| p.to_string_lossy().ends_with("-request.xml"))
        .collect();
    assert!(
        !requests.is_empty(),
        "nothing recorded in {}",
        dir.display()
    );
    match mailsync_testkit::schema::validate(&requests, true) {
        Ok(Some(report)) => assert_eq!(
            report.lines().filter(|l| l.ends_with(": ok")).count(),
            requests.len(),
            "{report}"
        ),
        Ok(None) => {}
        Err(report) => panic!(
            "requests that do not validate:\n{}",
            report
                .lines()
                .filter(|l| !l.ends_with(": ok"))
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
    requests
        .iter()
        .filter_map(|p| {
            p.file_name()?
                .to_str()?
                .split('-')
                .nth(1)
                .map(str::to_owned)
        })
        .collect()
}

/// A mail the sink received: (envelope sender, envelope recipients, data).
pub type Received = (String, Vec<String>, Vec<u8>);

/// A local SMTP sink: accepts every mail and keeps (sender, recipients, data) of each.
pub struct SmtpSink {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// What it received.
    pub mails: std::sync::Arc<parking_lot::Mutex<Vec<Received>>>,
}

impl SmtpSink {
    /// Starts the sink on the current tokio runtime.
    pub async fn start() -> SmtpSink {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mails = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let store = mails.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let store = store.clone();
                tokio::spawn(async move {
                    let (r, mut w) = conn.into_split();
                    let mut r = BufReader::new(r);
                    w.write_all(b"220 sink ESMTP\r\n").await.ok()?;
                    let (mut from, mut to) = (String::new(), Vec::new());
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).await.ok()? == 0 {
                            return Some(());
                        }
                        let upper = line.to_ascii_uppercase();
                        let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO")
                        {
                            b"250-sink\r\n250 8BITMIME\r\n"
                        } else if upper.starts_with("MAIL FROM:") {
                            from = angle(&line[10..]);
                            b"250 OK\r\n"
                        } else if upper.starts_with("RCPT TO:") {
                            to.push(angle(&line[8..]));
                            b"250 OK\r\n"
                        } else if upper.starts_with("DATA") {
                            w.write_all(b"354 go on\r\n").await.ok()?;
                            let mut data = Vec::new();
                            loop {
                                let mut l = Vec::new();
                                if r.read_until(b'\n', &mut l).await.ok()? == 0 {
                                    return Some(());
                                }
                                if l == b".\r\n" {
                                    break;
                                }
                                // Dot-unstuffing.
                                let l = if l.starts_with(b"..") {
                                    l[1..].to_vec()
                                } else {
                                    l
                                };
                                data.extend_from_slice(&l);
                            }
                            store
                                .lock()
                                .push((from.clone(), std::mem::take(&mut to), data));
                            b"250 queued\r\n"
                        } else if upper.starts_with("QUIT") {
                            w.write_all(b"221 bye\r\n").await.ok()?;
                            return Some(());
                        } else {
                            b"250 OK\r\n"
                        };
                        w.write_all(reply).await.ok()?;
                    }
                });
            }
        });
        SmtpSink { addr, mails }
    }
}

/// The address in `<...>` of an SMTP command argument (parameters after it left out).
fn angle(arg: &str) -> String {
    let arg = arg.trim();
    match (arg.find('<'), arg.find('>')) {
        (Some(a), Some(b)) if a < b => arg[a + 1..b].to_string(),
        _ => arg
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}

/// A test CA and a server certificate it signed, as PEM files in a directory.
pub struct Pki {
    /// The CA certificate (what `servers[].ca_file` points at).
    pub ca_file: std::path::PathBuf,
    /// The certificate chain and key the simulator serves.
    pub tls: ews_sim::server::TlsPem,
}

/// Makes a CA and a certificate for `names` (rcgen), writing the CA to `dir/ca.pem`.
pub fn pki(dir: &std::path::Path, names: &[&str]) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "mailsync test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    Pki {
        ca_file,
        tls: ews_sim::server::TlsPem {
            cert_chain: leaf_cert.pem().into_bytes(),
            key: leaf_key.serialize_pem().into_bytes(),
        },
    }
}

/// Polls `check` every 50 ms until it holds or `limit` passes; the other side is another
/// process, so there is no event to await.
pub async fn eventually<F, Fut>(what: &str, limit: std::time::Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{what}: not within {limit:?}");
}

/// A free port on 127.0.0.1 (bound and released; the service binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `mailsync run` as a child process, its stderr in a log file; killed when dropped.
pub struct Service {
    /// The process.
    pub child: std::process::Child,
    /// `http://127.0.0.1:PORT` of its admin API.
    pub admin: String,
    /// Its log.
    pub log: std::path::PathBuf,
}

impl Service {
    /// Starts `mailsync run --config CONFIG` with the admin API on `admin_port`, logging JSON
    /// lines (fields a test can read).
    pub fn start(config: &std::path::Path, admin_port: u16) -> Service {
        let log = config.with_extension("log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_mailsync"))
            .args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Service {
            child,
            admin: format!("http://127.0.0.1:{admin_port}"),
            log,
        }
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until /readyz says every mailbox finished its first step.
    pub async fn ready(&mut self, limit: std::time::Duration) {
        let http = reqwest::Client::new();
        let url = format!("{}/readyz", self.admin);
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("mailsync run exited ({status}):\n{}", self.log_text());
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("not ready within {limit:?}:\n{}", self.log_text());
    }

    /// `GET /api/v1/mailboxes` with `token`: (status, body).
    /// Status 0 while the API does not answer yet.
    pub async fn mailboxes(&self, token: &str) -> (u16, serde_json::Value) {
        let Ok(resp) = reqwest::Client::new()
            .get(format!("{}/api/v1/mailboxes", self.admin))
            .bearer_auth(token)
            .send()
            .await
        else {
            return (0, serde_json::Value::Null);
        };
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or_default())
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn stop(mut self) {
        // SAFETY: a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{status}\n{}", self.log_text());
                return;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "no stop after SIGTERM\n{}",
                self.log_text()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every contact of a mailbox: (surname, stamped CRM id).
pub async fn exchange_contacts(client: &ews::Client, mailbox: &str) -> Vec<(String, Option<i64>)> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let op = ews::ops::FindItem {
            folder: ews::types::FolderRef::well_known(ews::types::DistinguishedFolder::Contacts),
            shape: ews::types::Shape::all_properties(vec![mailsync::sync::fields::crm_id_path()]),
            view: ews::ops::View::IndexedPage { offset, max: 1000 },
            restriction: None,
        };
        let page = client
            .call(&ews::Target::impersonating(mailbox), &op)
            .await
            .unwrap()
            .output;
        for item in &page.items {
            let surname = match item {
                ews::items::Item::Contact(c) => c.surname.clone().unwrap_or_default(),
                _ => continue,
            };
            out.push((
                surname,
                mailsync::sync::fields::stamped_id(item, "crm_contacts"),
            ));
        }
        offset += page.items.len() as u32;
        if page.includes_last || page.items.is_empty() {
            return out;
        }
    }
}

/// A contact row from Exchange as the write tests use it: tenant 1, given name Eva, the
/// Exchange id `ews`; `id` 0 inserts, anything else updates over `version`.
pub fn contact_row(
    id: i64,
    version: i64,
    owner: Option<i64>,
    surname: &str,
    ews: &str,
) -> mailsync::db::rows::CrmRow {
    mailsync::db::rows::CrmRow::Contact(mailsync::db::rows::ContactRow {
        id,
        tenant_id: 1,
        owner_id: owner,
        given_name: Some("Eva".into()),
        surname: Some(surname.into()),
        company: None,
        job_title: None,
        email: [None, None, None],
        phones: [None, None, None],
        address: [None, None, None, None],
        notes: None,
        categories: vec![],
        ews_id: Some(ews.into()),
        version,
    })
}
