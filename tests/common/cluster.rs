//! The rig of the cluster tests (tests/cluster.rs, tests/cluster_feed.rs): one PostgreSQL
//! database (business tables and state store), the simulator, and `mailsync run` instances
//! with `[cluster]` as child processes; helpers that read what they own and run.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ews::items::{Contact, Item};
use ews::ops::CreateItem;
use ews::types::{DistinguishedFolder, FolderRef};
use ews_sim::server::{self, SimConfig};
use mailsync::config::Area;
use mailsync::db::{Db, MigrationSet};
use mailsync::sync::converge::compare;

use super::{exec, free_port, sim_client, Service};

pub const TOKEN: &str = "cluster-test-token-0123456789";
pub const LEASE: u64 = 3;

/// The database, the simulator and the instances of one scenario.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub db: Db,
    pub db_name: String,
    pub url: String,
    pub sim: server::Running,
    pub mailboxes: usize,
}

impl Rig {
    /// A fresh PostgreSQL database (business tables and state store in one), `mailboxes`
    /// simulated mailboxes with one operator each. None without PostgreSQL (outside CI).
    pub async fn new(mailboxes: usize) -> Option<Rig> {
        let (db_name, url) = super::postgres_db("cluster").await?;
        let db = Db::connect(&url, 4).await.unwrap();
        db.migrate(MigrationSet::Crm).await.unwrap();
        db.migrate(MigrationSet::State).await.unwrap();
        exec(
            &db,
            "INSERT INTO crm_tenants (id, name) VALUES (1, 'Muster GmbH')",
        )
        .await;
        for n in 1..=mailboxes {
            exec(&db, &format!("INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name, email) VALUES ({n}, 1, '{}', 'Op {n}', 'user{n}@example.com')", 1000 + n)).await;
        }
        let sim = server::start(SimConfig {
            mailboxes,
            max_streams: Some(50),
            ..SimConfig::default()
        })
        .await
        .unwrap();
        Some(Rig {
            dir: tempfile::tempdir().unwrap(),
            db,
            db_name,
            url,
            sim,
            mailboxes,
        })
    }

    /// Starts instance `name` (its admin API on a free port).
    pub fn start(&self, name: &str) -> Service {
        self.start_as(name, name)
    }

    /// Starts an instance named `name` from the configuration file `file`.toml.
    pub fn start_as(&self, file: &str, name: &str) -> Service {
        let port = free_port();
        let mut boxes = String::new();
        for n in 1..=self.mailboxes {
            boxes.push_str(&format!(
                "[[mailboxes]]\nsmtp = \"user{n}@example.com\"\noperator = \"{}\"\nserver = \"sim\"\n\n",
                1000 + n
            ));
        }
        let config = self.dir.path().join(format!("{file}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"
[admin]
listen = "127.0.0.1:{port}"
token = "{TOKEN}"

[database]
url = "{url}"

[state]
url = "{url}"

[cluster]
instance = "{name}"
lease_seconds = {LEASE}

[[servers]]
name = "sim"
ews_url = "{ews}"
allow_http = true
auth = "basic"
service_account = {{ username = "svc", password = "secret" }}

[mailbox_defaults]
areas = ["contacts"]
initial_sync = "crm-to-exchange"

{boxes}"#,
                url = self.url,
                ews = self.sim.ews_url(),
            ),
        )
        .unwrap();
        Service::start(&config, port)
    }

    /// Owner name of every mailbox with a live lease.
    pub async fn owners(&self) -> BTreeMap<String, String> {
        let Db::Postgres(p) = &self.db else {
            unreachable!()
        };
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT l.mailbox, i.name FROM ms_lease l JOIN ms_instance i ON i.id = l.owner \
             WHERE l.expires_at > now() AND l.mailbox NOT LIKE '@%'",
        )
        .fetch_all(p)
        .await
        .unwrap();
        rows.into_iter().collect()
    }

    pub async fn finish(self) {
        self.db.close().await;
        super::drop_postgres(&self.db_name).await;
    }
}

/// The mailboxes an instance's supervisor runs (running state), by its admin API.
pub async fn running(service: &Service) -> BTreeSet<String> {
    let (status, body) = service.mailboxes(TOKEN).await;
    if status != 200 {
        return BTreeSet::new();
    }
    body["mailboxes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] == "running")
        .map(|m| m["smtp"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until the instances together run every mailbox, each exactly once, and the leases
/// say the same.
pub async fn every_mailbox_once(rig: &Rig, services: &[&Service], limit: Duration) {
    let all: BTreeSet<String> = (1..=rig.mailboxes)
        .map(|n| format!("user{n}@example.com"))
        .collect();
    let start = Instant::now();
    loop {
        let mut seen = BTreeSet::new();
        let mut twice = Vec::new();
        for s in services {
            for m in running(s).await {
                if !seen.insert(m.clone()) {
                    twice.push(m);
                }
            }
        }
        assert!(twice.is_empty(), "run by two instances at once: {twice:?}");
        if seen == all && rig.owners().await.len() == all.len() {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "not every mailbox runs once within {limit:?}: {} of {} run\n{}",
            seen.len(),
            all.len(),
            services
                .iter()
                .map(|s| s.log_text())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn cluster_view(service: &Service) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{}/api/v1/cluster", service.admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Creates a contact in Exchange as the mailbox's user would.
pub async fn user_creates_contact(rig: &Rig, smtp: &str, surname: &str) {
    let create = CreateItem {
        folder: Some(FolderRef::well_known(DistinguishedFolder::Contacts)),
        items: vec![Item::Contact(Contact {
            given_name: Some("Eva".into()),
            surname: Some(surname.into()),
            ..Contact::default()
        })],
        disposition: None,
    };
    sim_client(&rig.sim)
        .call(&ews::Target::impersonating(smtp), &create)
        .await
        .unwrap();
}

/// The convergence checker finds nothing lost, duplicated or different in `n`'s contacts.
pub async fn converged(rig: &Rig, n: usize) {
    let client = sim_client(&rig.sim);
    let target = ews::Target::impersonating(&format!("user{n}@example.com"));
    let mut last = String::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        match compare(
            &rig.db,
            &client,
            &target,
            Area::Contacts,
            n as i64,
            1,
            "Muster GmbH (CRM)",
        )
        .await
        {
            Ok(d) if d.is_empty() => return,
            Ok(d) => last = format!("{d:?}"),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("user{n}: not converged: {last}");
}

pub fn number(smtp: &str) -> usize {
    smtp.trim_start_matches("user")
        .trim_end_matches("@example.com")
        .parse()
        .unwrap()
}

/// /readyz of a member, as (status, body); status 0 while its admin API does not answer.
pub async fn readyz(service: &Service) -> (u16, serde_json::Value) {
    let Ok(resp) = reqwest::Client::new()
        .get(format!("{}/readyz", service.admin))
        .send()
        .await
    else {
        return (0, serde_json::Value::Null);
    };
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

/// Makes the simulator answer the next `count` requests for `smtp` only after `ms`, so that
/// the mailbox's first step takes at least that long.
pub async fn slow_down(rig: &Rig, smtp: &str, ms: u64, count: u64) {
    reqwest::Client::new()
        .post(format!("{}/sim/faults", rig.sim.base_url()))
        .json(&serde_json::json!({ "mailbox": smtp, "latency_ms": ms, "count": count }))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
}
