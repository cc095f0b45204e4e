//! The rig of the admin API tests (tests/admin.rs, tests/admin_logs.rs, tests/console.rs): a
//! real admin server on a loopback port with the actor runtime driving fake ports, `mailsync
//! ctl`, a fake delete gate and a state store with logs.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use mailsync::admin::{
    self, AdminState, DecideError, DecideOutcome, DeleteDecision, DeleteGate, HeldGroup, HeldItem,
    ReloadFailure,
};
use mailsync::db::state::{Conflict, ConflictValues, Failure, Winner};
use mailsync::db::{Db, MigrationSet};
use mailsync::metrics::Telemetry;
use mailsync::secret::SecretString;
use mailsync_actors::fakes::{FakeStream, FakeSync};
use mailsync_actors::*;
use parking_lot::Mutex;
use serde_json::Value;

pub const TOKEN: &str = "an-admin-token-of-some-length";

pub fn server() -> ServerSpec {
    ServerSpec {
        id: "ex1".into(),
        throttle: ThrottleSettings {
            requests_per_second: 1000.0,
            burst: 1000,
            max_concurrent: 10,
        },
        streaming: true,
        stream: ServerStreaming::default(),
    }
}

pub fn mailbox(n: usize) -> MailboxSpec {
    MailboxSpec {
        smtp: format!("user{n}@example.com").into(),
        server: "ex1".into(),
        fingerprint: 0,
    }
}

pub struct Rig {
    pub base: String,
    pub http: reqwest::Client,
    pub sync: Arc<FakeSync>,
    pub handle: SupervisorHandle,
    /// What the next reload applies; `None` makes it fail like a broken config file would.
    pub next_config: Arc<Mutex<Option<Vec<MailboxSpec>>>>,
    pub _server: admin::AdminServer,
}

impl Rig {
    pub async fn start(token: Option<&str>, sync: Arc<FakeSync>) -> Rig {
        Rig::start_with(token, sync, 3, None, None).await
    }

    /// `mailboxes` mailboxes, the state store `store` and the delete breaker `deletes`.
    pub async fn start_with(
        token: Option<&str>,
        sync: Arc<FakeSync>,
        mailboxes: usize,
        store: Option<Db>,
        deletes: Option<Arc<dyn DeleteGate>>,
    ) -> Rig {
        let telemetry = Telemetry::new();
        let mut settings = RuntimeSettings {
            arbiters: 0,
            ..RuntimeSettings::default()
        };
        settings.stream.join_delay = Duration::from_millis(1);
        let ports = Ports {
            sync: sync.clone(),
            stream: FakeStream::new(),
            crm: None,
        };
        let handle = Supervisor::launch(
            settings,
            vec![server()],
            (1..=mailboxes).map(mailbox).collect(),
            ports,
            telemetry.runtime.clone(),
        )
        .unwrap();
        let next_config: Arc<Mutex<Option<Vec<MailboxSpec>>>> = Arc::new(Mutex::new(None));
        let (addr, next) = (handle.addr.clone(), next_config.clone());
        let reload: admin::Reloader = Arc::new(move || {
            let (addr, wanted) = (addr.clone(), next.lock().clone());
            Box::pin(async move {
                let Some(mailboxes) = wanted else {
                    return Err(ReloadFailure {
                        message: "the configuration has errors; nothing changed".into(),
                        details: vec!["mailboxes[0].smtp: \"bob@\" is not an e-mail address".into()],
                    });
                };
                let report = addr
                    .send(Reload {
                        servers: vec![server()],
                        mailboxes,
                    })
                    .await
                    .unwrap();
                report.map_err(|e| ReloadFailure {
                    message: e.to_string(),
                    details: vec![],
                })
            }) as BoxFuture<'static, _>
        });
        let state = AdminState {
            handle: handle.clone(),
            telemetry,
            token: admin::AdminToken::new(token.map(SecretString::new)),
            reload,
            store,
            deletes,
            cluster: None,
        };
        let server = admin::start("127.0.0.1:0".parse().unwrap(), state).unwrap();
        Rig {
            base: format!("http://{}", server.addr),
            http: reqwest::Client::new(),
            sync,
            handle,
            next_config,
            _server: server,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    pub async fn post(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    pub async fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path, Some(TOKEN)).await;
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    pub async fn ready(&self) {
        let board = self.handle.board.clone();
        self.sync.wait_until("ready", |_| board.ready()).await;
    }
}

pub fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

pub async fn ctl(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailsync"))
            .arg("ctl")
            .args(&args)
            .env_remove("MAILSYNC_ADMIN_TOKEN")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// A decision the fake breaker took: mailbox, decision, area, scope.
pub type Decided = (String, DeleteDecision, Option<String>, Option<String>);

/// A delete breaker holding what the test says, deciding in memory.
#[derive(Default)]
pub struct FakeGate {
    pub held: Mutex<Vec<HeldGroup>>,
    pub decided: Mutex<Vec<Decided>>,
}

impl FakeGate {
    pub fn holding(groups: Vec<HeldGroup>) -> Arc<FakeGate> {
        Arc::new(FakeGate {
            held: Mutex::new(groups),
            ..FakeGate::default()
        })
    }
}

pub fn held_group(mailbox: &str, area: &str, scope: &str, count: u64) -> HeldGroup {
    HeldGroup {
        mailbox: mailbox.into(),
        area: area.into(),
        scope: scope.into(),
        side: "crm".into(),
        count,
        sample: (1..=3)
            .map(|n| HeldItem {
                crm_id: Some(n),
                ews_id: Some(format!("AAMkAD{n}=")),
                title: format!("Kunde {n} <b>AG</b>"),
            })
            .collect(),
    }
}

impl DeleteGate for FakeGate {
    fn held(&self, mailbox: Option<&str>) -> BoxFuture<'static, Result<Vec<HeldGroup>, String>> {
        let all: Vec<HeldGroup> = self
            .held
            .lock()
            .iter()
            .filter(|g| mailbox.is_none_or(|m| g.mailbox == m))
            .cloned()
            .collect();
        Box::pin(async move { Ok(all) })
    }

    fn decide(
        &self,
        mailbox: &str,
        decision: DeleteDecision,
        area: Option<&str>,
        scope: Option<&str>,
    ) -> BoxFuture<'static, Result<DecideOutcome, DecideError>> {
        let mut held = self.held.lock();
        let matches = |g: &HeldGroup| {
            g.mailbox == mailbox
                && area.is_none_or(|a| g.area == a)
                && scope.is_none_or(|s| g.scope == s)
        };
        let outcome = DecideOutcome {
            groups: held.iter().filter(|g| matches(g)).count(),
            items: held.iter().filter(|g| matches(g)).map(|g| g.count).sum(),
        };
        held.retain(|g| !matches(g));
        self.decided.lock().push((
            mailbox.to_owned(),
            decision,
            area.map(str::to_owned),
            scope.map(str::to_owned),
        ));
        let result = if outcome.groups == 0 {
            Err(DecideError::NothingHeld(format!(
                "nothing is held for {mailbox}"
            )))
        } else {
            Ok(outcome)
        };
        Box::pin(async move { result })
    }
}

/// A migrated SQLite state store with two conflicts (one with values) and a parked failure
/// of user2.
pub async fn store_with_logs(dir: &tempfile::TempDir) -> Db {
    let url = format!("sqlite:{}", dir.path().join("state.db").display());
    let db = Db::connect(&url, 2).await.unwrap();
    db.migrate(MigrationSet::State).await.unwrap();
    let conflict = |mailbox: &str, id: i64| Conflict {
        mailbox: mailbox.into(),
        crm_table: "crm_contacts".into(),
        crm_id: Some(id),
        ews_item_id: Some(format!("AAMkContact{id}=")),
        fields: vec!["surname".into(), "business_phone".into()],
        winner: Winner::Crm,
    };
    db.log_conflict(&conflict("user1@example.com", 1))
        .await
        .unwrap();
    let c = conflict("user2@example.com", 2);
    let values = ConflictValues::of(
        &c.fields,
        &serde_json::json!({"surname": "Meier", "business_phone": "+49 30 1"}),
        &serde_json::json!({"surname": "Maier", "business_phone": "+49 30 2"}),
        &serde_json::json!({"surname": "Meier", "business_phone": "+49 30 1"}),
    );
    db.log_conflict_values(&c, &values).await.unwrap();
    db.record_failure(
        &Failure {
            mailbox: "user2@example.com".into(),
            crm_table: "crm_tasks".into(),
            crm_id: 7,
            ews_item_id: String::new(),
            error: "due_date 2026-01-01 is before start_date 2026-02-01".into(),
            attempts: 1,
        },
        None,
    )
    .await
    .unwrap();
    db
}
