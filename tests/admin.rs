//! The admin API and `mailsync ctl` against a real admin server on a loopback port, with the
//! actor runtime driving fake ports.

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
use mailsync_actors::fakes::{Behaviour, FakeStream, FakeSync};
use mailsync_actors::*;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::Notify;

mod webdriver;

const TOKEN: &str = "an-admin-token-of-some-length";

fn server() -> ServerSpec {
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

fn mailbox(n: usize) -> MailboxSpec {
    MailboxSpec {
        smtp: format!("user{n}@example.com").into(),
        server: "ex1".into(),
        fingerprint: 0,
    }
}

struct Rig {
    base: String,
    http: reqwest::Client,
    sync: Arc<FakeSync>,
    handle: SupervisorHandle,
    /// What the next reload applies; `None` makes it fail like a broken config file would.
    next_config: Arc<Mutex<Option<Vec<MailboxSpec>>>>,
    _server: admin::AdminServer,
}

impl Rig {
    async fn start(token: Option<&str>, sync: Arc<FakeSync>) -> Rig {
        Rig::start_with(token, sync, 3, None, None).await
    }

    /// `mailboxes` mailboxes, the state store `store` and the delete breaker `deletes`.
    async fn start_with(
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

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn post(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    async fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path, Some(TOKEN)).await;
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn ready(&self) {
        let board = self.handle.board.clone();
        self.sync.wait_until("ready", |_| board.ready()).await;
    }
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[actix_rt::test]
async fn metrics_health_and_readiness() {
    let sync = FakeSync::new(&["contacts", "calendar"]);
    let gate = Arc::new(Notify::new());
    sync.script_step(
        "user3@example.com",
        "calendar",
        [Behaviour::Gate(gate.clone())],
    );
    let rig = Rig::start(Some(TOKEN), sync).await;
    rig.sync
        .wait_until("the gated step runs", |f| {
            f.step_count("user3@example.com", "calendar") == 1
        })
        .await;

    let (status, body) = rig.get("/readyz", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(json(&body)["waiting"], 1);
    gate.notify_one();
    rig.ready().await;
    let (status, body) = rig.get("/readyz", None).await;
    assert_eq!(
        (status, json(&body)["ready"].clone()),
        (200, Value::Bool(true))
    );

    let (status, body) = rig.get("/healthz", None).await;
    assert_eq!(
        (status, json(&body)["status"].clone()),
        (200, Value::from("ok"))
    );

    let (status, text) = rig.get("/metrics", None).await;
    assert_eq!(status, 200);
    assert!(
        text.contains("mailsync_mailboxes{state=\"running\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("mailsync_folder_steps_total{outcome=\"ok\"} 6"),
        "{text}"
    );
    assert!(text.contains("# TYPE mailsync_ews_requests_total counter"));
    assert!(!text.contains("user1@"), "no mailbox address as a label");
}

#[actix_rt::test]
async fn the_api_needs_the_bearer_token() {
    let rig = Rig::start(Some(TOKEN), FakeSync::new(&["contacts"])).await;
    let (status, body) = rig.get("/api/v1/mailboxes", None).await;
    assert_eq!(
        (status, json(&body)["error"].clone()),
        (401, Value::from("missing bearer token"))
    );
    let (status, body) = rig
        .get("/api/v1/mailboxes", Some("an-admin-token-of-some-lengtX"))
        .await;
    assert_eq!(
        (status, json(&body)["error"].clone()),
        (401, Value::from("wrong bearer token"))
    );
    let resp = rig
        .http
        .post(format!("{}/api/v1/reload", rig.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"mailsync\""
    );

    let off = Rig::start(None, FakeSync::new(&["contacts"])).await;
    let (status, body) = off.get("/api/v1/mailboxes", Some(TOKEN)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(off.get("/metrics", None).await.0, 200, "metrics stay open");
}

#[actix_rt::test]
async fn mailboxes_are_listed_and_shown_with_their_state() {
    let sync = FakeSync::new(&["contacts", "tasks"]);
    sync.script_open(
        "user2@example.com",
        [Behaviour::Fail(SyncError::Denied(
            "ErrorImpersonateUserDenied".into(),
        ))],
    );
    let rig = Rig::start(Some(TOKEN), sync).await;
    rig.ready().await;
    let list = rig.json("/api/v1/mailboxes").await;
    let mailboxes = list["mailboxes"].as_array().unwrap();
    assert_eq!(mailboxes.len(), 3);
    for field in [
        "smtp",
        "state",
        "restarts",
        "last_sync",
        "last_error",
        "lag_seconds",
    ] {
        assert!(
            mailboxes.iter().all(|m| m.get(field).is_some()),
            "{field} missing"
        );
    }
    assert_eq!(mailboxes[0]["smtp"], "user1@example.com");
    assert_eq!(mailboxes[0]["state"], "running");
    assert!(mailboxes[0]["last_sync"].as_str().unwrap().ends_with('Z'));
    assert_eq!(mailboxes[0]["lag_seconds"], 0.0);
    assert_eq!(list["states"]["failed"], 1);

    let one = rig.json("/api/v1/mailboxes/USER2@example.com").await;
    assert_eq!(one["state"], "failed");
    assert_eq!(one["restarts"], 1);
    assert!(one["last_error"]
        .as_str()
        .unwrap()
        .contains("ErrorImpersonateUserDenied"));
    assert!(one["next_retry"].is_string());

    let (status, body) = rig
        .get("/api/v1/mailboxes/nobody@example.com", Some(TOKEN))
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        json(&body)["error"],
        "mailbox nobody@example.com is not configured"
    );
    let (status, body) = rig.get("/api/v1/nothing", Some(TOKEN)).await;
    assert_eq!(
        (status, json(&body)["error"].clone()),
        (404, Value::from("no such endpoint: GET /api/v1/nothing"))
    );
}

#[actix_rt::test]
async fn commands_act_on_exactly_one_mailbox() {
    let sync = FakeSync::new(&["contacts"]);
    sync.script_open(
        "user3@example.com",
        [Behaviour::Fail(SyncError::Denied("401".into()))],
    );
    let rig = Rig::start(Some(TOKEN), sync).await;
    rig.ready().await;
    let generation = |n: usize| {
        rig.handle
            .board
            .snapshot(&format!("user{n}@example.com"))
            .unwrap()
            .generation
    };
    let before = [generation(1), generation(2)];

    let (status, body) = rig
        .post("/api/v1/mailboxes/user2@example.com/restart")
        .await;
    assert_eq!((status, body["ok"].clone()), (200, Value::Bool(true)));
    rig.ready().await;
    assert_eq!(
        generation(1),
        before[0],
        "the other mailbox kept its actors"
    );
    assert!(generation(2) > before[1]);
    assert_eq!(rig.sync.opens("user1@example.com"), 1);
    assert_eq!(rig.sync.opens("user2@example.com"), 2);
    assert_eq!(
        rig.json("/api/v1/mailboxes/user2@example.com").await["restarts"],
        1
    );
    assert_eq!(
        rig.json("/api/v1/mailboxes/user1@example.com").await["restarts"],
        0
    );

    assert_eq!(
        rig.post("/api/v1/mailboxes/user1@example.com/pause")
            .await
            .0,
        200
    );
    assert_eq!(
        rig.json("/api/v1/mailboxes/user1@example.com").await["state"],
        "paused"
    );
    assert_eq!(
        rig.post("/api/v1/mailboxes/user1@example.com/resume")
            .await
            .0,
        200
    );
    assert_eq!(
        rig.json("/api/v1/mailboxes/user1@example.com").await["state"],
        "running"
    );

    let steps = rig.sync.step_count("user1@example.com", "contacts");
    assert_eq!(
        rig.post("/api/v1/mailboxes/user1@example.com/resync")
            .await
            .0,
        200
    );
    rig.sync
        .wait_until("resynced", |f| {
            f.step_count("user1@example.com", "contacts") == steps + 1
        })
        .await;
    assert!(
        rig.sync
            .steps_of("user1@example.com", "contacts")
            .last()
            .unwrap()
            .full
    );

    let (status, body) = rig.post("/api/v1/mailboxes/user3@example.com/resync").await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("is failed"));
    let (status, body) = rig
        .post("/api/v1/mailboxes/user1@example.com/explode")
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        body["error"],
        "unknown action \"explode\"; expected restart, resync, sync, pause or resume"
    );
    let (status, body) = rig
        .post("/api/v1/mailboxes/nobody@example.com/restart")
        .await;
    assert_eq!(
        (status, body["error"].clone()),
        (
            404,
            Value::from("mailbox nobody@example.com is not configured")
        )
    );
}

#[actix_rt::test]
async fn reload_applies_the_new_configuration_or_changes_nothing() {
    let rig = Rig::start(Some(TOKEN), FakeSync::new(&["contacts"])).await;
    rig.ready().await;
    let (status, body) = rig.post("/api/v1/reload").await;
    assert_eq!(status, 422);
    assert_eq!(
        body["details"][0],
        "mailboxes[0].smtp: \"bob@\" is not an e-mail address"
    );
    assert_eq!(rig.handle.board.len(), 3);

    *rig.next_config.lock() = Some(vec![mailbox(1), mailbox(2), mailbox(4)]);
    let (status, body) = rig.post("/api/v1/reload").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["added"], serde_json::json!(["user4@example.com"]));
    assert_eq!(body["removed"], serde_json::json!(["user3@example.com"]));
    assert_eq!(body["unchanged"], 2);
    rig.ready().await;
    let list = rig.json("/api/v1/mailboxes").await;
    let names: Vec<&str> = list["mailboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["smtp"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec![
            "user1@example.com",
            "user2@example.com",
            "user4@example.com"
        ]
    );
}

async fn ctl(args: Vec<String>) -> (i32, String, String) {
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

#[actix_rt::test]
async fn ctl_drives_the_api() {
    let rig = Rig::start(Some(TOKEN), FakeSync::new(&["contacts"])).await;
    rig.ready().await;
    let args = |rest: &[&str]| {
        let mut v: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
        v.extend([
            "--url".to_string(),
            rig.base.clone(),
            "--token".to_string(),
            TOKEN.to_string(),
        ]);
        v
    };
    let (code, out, err) = ctl(args(&["status"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("MAILBOX"), "{out}");
    for n in 1..=3 {
        assert!(
            out.contains(&format!("user{n}@example.com  running")),
            "{out}"
        );
    }
    assert!(out.ends_with("3 mailboxes\n"));

    let (code, out, err) = ctl(args(&["status", "user2@example.com"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("state:      running") && out.contains("contacts"),
        "{out}"
    );

    let (code, out, _) = ctl(args(&["restart", "user2@example.com"])).await;
    assert_eq!((code, out.as_str()), (0, "user2@example.com: restart ok\n"));
    rig.ready().await;
    assert_eq!(rig.sync.opens("user2@example.com"), 2);
    assert_eq!(rig.sync.opens("user1@example.com"), 1);

    let (code, out, _) = ctl(args(&["pause"])).await;
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 3, "every mailbox: {out}");
    assert!(rig
        .handle
        .board
        .snapshots()
        .iter()
        .all(|s| s.state == MailboxState::Paused));

    let (code, _, err) = ctl(args(&["resync", "nobody@example.com"])).await;
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: mailbox nobody@example.com is not configured (HTTP 404)\n"
    );
    let (code, _, err) = ctl(vec!["status".into(), "--url".into(), rig.base.clone()]).await;
    assert_eq!(code, 1);
    assert_eq!(err, "error: missing bearer token (HTTP 401)\n");
    let (code, _, err) = ctl(vec![
        "status".into(),
        "--url".into(),
        "http://127.0.0.1:1".into(),
    ])
    .await;
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: cannot reach the admin API at http://127.0.0.1:1/api/v1/mailboxes"),
        "{err}"
    );
}

/// A decision the fake breaker took: mailbox, decision, area, scope.
type Decided = (String, DeleteDecision, Option<String>, Option<String>);

/// A delete breaker holding what the test says, deciding in memory.
#[derive(Default)]
struct FakeGate {
    held: Mutex<Vec<HeldGroup>>,
    decided: Mutex<Vec<Decided>>,
}

impl FakeGate {
    fn holding(groups: Vec<HeldGroup>) -> Arc<FakeGate> {
        Arc::new(FakeGate {
            held: Mutex::new(groups),
            ..FakeGate::default()
        })
    }
}

fn held_group(mailbox: &str, area: &str, scope: &str, count: u64) -> HeldGroup {
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
async fn store_with_logs(dir: &tempfile::TempDir) -> Db {
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

#[actix_rt::test]
async fn conflicts_failures_and_retry_through_the_api_and_ctl() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_logs(&dir).await;
    let rig = Rig::start_with(
        Some(TOKEN),
        FakeSync::new(&["contacts", "tasks"]),
        3,
        Some(store.clone()),
        None,
    )
    .await;
    rig.ready().await;

    let all = rig.json("/api/v1/conflicts").await;
    assert_eq!(all["count"], 2, "{all}");
    assert_eq!(all["next"], Value::Null);
    let newest = &all["conflicts"][0];
    assert_eq!(newest["mailbox"], "user2@example.com");
    assert_eq!(newest["area"], "contacts");
    assert_eq!(newest["winner"], "crm");
    assert_eq!(newest["crm_values"]["surname"], "Meier");
    assert_eq!(newest["ews_values"]["surname"], "Maier");
    assert_eq!(newest["merged"]["business_phone"], "+49 30 1");
    assert_eq!(all["conflicts"][1]["crm_values"], serde_json::json!({}));

    let page = rig.json("/api/v1/conflicts?limit=1").await;
    assert_eq!(page["count"], 1);
    let next = page["next"].as_i64().expect("a full page has a next");
    let older = rig
        .json(&format!("/api/v1/conflicts?limit=1&before={next}"))
        .await;
    assert_eq!(older["conflicts"][0]["mailbox"], "user1@example.com");
    let mine = rig
        .json("/api/v1/conflicts?mailbox=USER1@example.com&since=1h")
        .await;
    assert_eq!(mine["count"], 1, "{mine}");
    assert_eq!(
        rig.json("/api/v1/conflicts?since=2999-01-01").await["count"],
        0
    );
    let (status, body) = rig
        .get("/api/v1/conflicts?since=yesterday", Some(TOKEN))
        .await;
    assert_eq!(status, 400);
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .starts_with("since: \"yesterday\" is neither"),
        "{body}"
    );
    // Ages beyond any time chrono can hold, and a unit of several bytes: refused, no panic,
    // and the service answers on (the console's view too).
    for bad in ["9223372036854775807d", "106751991167300d", "7%C3%BC"] {
        for path in ["/api/v1/conflicts", "/console/view/conflicts"] {
            let (status, body) = rig.get(&format!("{path}?since={bad}"), Some(TOKEN)).await;
            assert!(
                body.contains("since: "),
                "{path}?since={bad}: {status} {body}"
            );
            if path.starts_with("/api") {
                assert_eq!(status, 400, "{body}");
            }
        }
    }
    // Filters no record can match are refused by name, not answered by the database (a NUL
    // byte made PostgreSQL fail the query: 503) or with an empty list.
    for (path, starts) in [
        ("/api/v1/conflicts?mailbox=a%00b", "mailbox: "),
        ("/api/v1/failures?mailbox=%07", "mailbox: "),
        (
            "/api/v1/mailboxes?state=bogus",
            "state: \"bogus\" is not a state",
        ),
    ] {
        let (status, body) = rig.get(path, Some(TOKEN)).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(
            json(&body)["error"].as_str().unwrap().starts_with(starts),
            "{path}: {body}"
        );
    }
    let (status, body) = rig.get("/api/v1/conflicts?limit=9999", Some(TOKEN)).await;
    assert_eq!(
        (status, json(&body)["error"].clone()),
        (
            400,
            Value::from("limit: 9999 is out of range, allowed 1 to 500")
        )
    );
    let (status, body) = rig.get("/api/v1/conflicts?colour=red", Some(TOKEN)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        json(&body)["error"].as_str().unwrap().contains("colour"),
        "{body}"
    );
    let id = newest["id"].as_i64().unwrap();
    let one = rig.json(&format!("/api/v1/conflicts/{id}")).await;
    assert_eq!(
        one["fields"],
        serde_json::json!(["surname", "business_phone"])
    );
    assert_eq!(rig.get("/api/v1/conflicts/999", Some(TOKEN)).await.0, 404);
    assert_eq!(rig.get("/api/v1/conflicts", None).await.0, 401);

    let failures = rig.json("/api/v1/failures?mailbox=user2@example.com").await;
    assert_eq!(failures["count"], 1, "{failures}");
    let f = &failures["failures"][0];
    assert_eq!(
        (
            f["area"].clone(),
            f["crm_id"].clone(),
            f["ews_item_id"].clone(),
            f["next_retry_at"].clone()
        ),
        (
            Value::from("tasks"),
            Value::from(7),
            Value::Null,
            Value::Null
        )
    );
    let fid = f["id"].as_i64().unwrap();
    let before = rig.sync.step_count("user2@example.com", "tasks");
    let (status, body) = rig.post(&format!("/api/v1/failures/{fid}/retry")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["step"], "started");
    assert_eq!(body["mailbox"], "user2@example.com");
    rig.sync
        .wait_until("a step of every folder of user2", |s| {
            s.step_count("user2@example.com", "tasks") == before + 1
        })
        .await;
    assert!(
        rig.sync
            .steps_of("user2@example.com", "tasks")
            .iter()
            .all(|s| !s.full),
        "a step, not a resync"
    );
    let due = store
        .failures("user2@example.com", Some(chrono::Utc::now()))
        .await
        .unwrap();
    assert_eq!(due.len(), 1, "the failure is due for the lead's step");
    assert_eq!(rig.post("/api/v1/failures/424242/retry").await.0, 404);

    // Paused mailbox: the failure waits for it.
    let (status, _) = rig.post("/api/v1/mailboxes/user2@example.com/pause").await;
    assert_eq!(status, 200);

    // The same through ctl.
    let args = |rest: &[&str]| {
        let mut v: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
        v.extend([
            "--url".to_string(),
            rig.base.clone(),
            "--token".to_string(),
            TOKEN.to_string(),
        ]);
        v
    };
    let (code, out, err) = ctl(args(&["conflicts", "user2@example.com", "--since", "24h"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("user2@example.com") && out.contains("surname, business_phone"),
        "{out}"
    );
    assert!(
        out.contains("surname: crm \"Meier\" | exchange \"Maier\" -> \"Meier\""),
        "{out}"
    );
    assert!(out.ends_with("1 conflicts\n"), "{out}");
    let (code, out, err) = ctl(args(&["failures"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("due_date 2026-01-01 is before start_date") && out.contains("crm #7"),
        "{out}"
    );
    let (code, out, err) = ctl(args(&["retry", &fid.to_string()])).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!("failure {fid} (user2@example.com): due now; step started\n")
    );
    let (code, _, err) = ctl(args(&["retry", "x"])).await;
    assert_eq!(
        (code, err.as_str()),
        (
            2,
            "error: retry needs a failure id (see `mailsync ctl failures`)\n"
        )
    );
    let (code, _, err) = ctl(args(&["approve-deletes", "user1@example.com"])).await;
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: this service holds no deletes (no delete breaker) (HTTP 501)\n"
    );
    let (code, out, err) = ctl(args(&["sync", "user1@example.com"])).await;
    assert_eq!(
        (code, out.as_str()),
        (0, "user1@example.com: sync ok\n"),
        "{err}"
    );
}

#[actix_rt::test]
async fn held_deletes_show_and_are_decided_through_the_breaker() {
    let gate = FakeGate::holding(vec![
        held_group("user2@example.com", "contacts", "shared", 30),
        held_group("user2@example.com", "mail", "Inbox/Projekte", 12),
        held_group("user3@example.com", "tasks", "own", 25),
    ]);
    let rig = Rig::start_with(
        Some(TOKEN),
        FakeSync::new(&["contacts", "tasks"]),
        3,
        None,
        Some(gate.clone()),
    )
    .await;
    rig.ready().await;
    let m = rig.json("/api/v1/mailboxes/user2@example.com").await;
    assert_eq!(m["held"].as_array().unwrap().len(), 2, "{m}");
    assert_eq!(
        m["held"][0],
        serde_json::json!({"area": "contacts", "scope": "shared", "side": "crm", "count": 30,
            "sample": [
                {"crm_id": 1, "ews_id": "AAMkAD1=", "title": "Kunde 1 <b>AG</b>"},
                {"crm_id": 2, "ews_id": "AAMkAD2=", "title": "Kunde 2 <b>AG</b>"},
                {"crm_id": 3, "ews_id": "AAMkAD3=", "title": "Kunde 3 <b>AG</b>"}]})
    );
    assert_eq!(
        rig.json("/api/v1/mailboxes/user1@example.com").await["held"],
        serde_json::json!([])
    );
    let held = rig.json("/api/v1/mailboxes?state=held").await;
    let smtps: Vec<&str> = held["mailboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["smtp"].as_str().unwrap())
        .collect();
    assert_eq!(smtps, ["user2@example.com", "user3@example.com"]);
    assert_eq!(held["total"], 2);

    let resp = rig
        .http
        .post(format!(
            "{}/api/v1/mailboxes/user2@example.com/deletes/approve",
            rig.base
        ))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"area": "contacts", "scope": "shared"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        (body["groups"].clone(), body["items"].clone()),
        (Value::from(1), Value::from(30))
    );
    let (status, body) = rig
        .post("/api/v1/mailboxes/user2@example.com/deletes/reject")
        .await;
    assert_eq!(
        (status, body["items"].clone()),
        (200, Value::from(12)),
        "no body: everything held"
    );
    let (status, body) = rig
        .post("/api/v1/mailboxes/user2@example.com/deletes/reject")
        .await;
    assert_eq!(
        (status, body["error"].clone()),
        (409, Value::from("nothing is held for user2@example.com"))
    );
    let (status, _) = rig
        .post("/api/v1/mailboxes/nobody@example.com/deletes/approve")
        .await;
    assert_eq!(status, 404);
    let (status, _) = rig
        .post("/api/v1/mailboxes/user3@example.com/deletes/maybe")
        .await;
    assert_eq!(status, 404);
    let resp = rig
        .http
        .post(format!(
            "{}/api/v1/mailboxes/user3@example.com/deletes/approve",
            rig.base
        ))
        .bearer_auth(TOKEN)
        .body("{\"scope\": \"own\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400, "a scope needs an area");
    let resp = rig
        .http
        .post(format!(
            "{}/api/v1/mailboxes/user3@example.com/deletes/approve",
            rig.base
        ))
        .bearer_auth(TOKEN)
        .body("{\"area\": \"nope\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            resp.status().as_u16(),
            resp.json::<Value>().await.unwrap()["error"].clone()
        ),
        (
            400,
            Value::from("area: \"nope\" is not an area (contacts, calendar, tasks, mail)")
        )
    );
    // The same decisions from the command line: the API's words in the path, what was done
    // in the answer.
    let ctl_args = |rest: &[&str]| {
        let mut v: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
        v.extend([
            "--url".into(),
            rig.base.clone(),
            "--token".into(),
            TOKEN.into(),
        ]);
        v
    };
    let (code, out, err) = ctl(ctl_args(&[
        "reject-deletes",
        "user3@example.com",
        "--area",
        "tasks",
    ]))
    .await;
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "user3@example.com: rejected 25 held deletes in 1 group(s)\n"
        ),
        "{err}"
    );
    let (code, _, err) = ctl(ctl_args(&["approve-deletes", "user3@example.com"])).await;
    assert_eq!(
        (code, err.as_str()),
        (
            1,
            "error: nothing is held for user3@example.com (HTTP 409)\n"
        )
    );
    assert_eq!(
        gate.decided
            .lock()
            .iter()
            .map(|d| (d.1, d.2.clone()))
            .collect::<Vec<_>>(),
        vec![
            (DeleteDecision::Approve, Some("contacts".to_string())),
            (DeleteDecision::Reject, None),
            (DeleteDecision::Reject, None),
            (DeleteDecision::Reject, Some("tasks".to_string())),
            (DeleteDecision::Approve, None)
        ]
    );

    // Without a breaker nothing about held deletes shows.
    let plain = Rig::start(Some(TOKEN), FakeSync::new(&["contacts"])).await;
    let m = plain.json("/api/v1/mailboxes/user1@example.com").await;
    assert!(m.get("held").is_none(), "{m}");
    assert_eq!(
        plain
            .post("/api/v1/mailboxes/user1@example.com/deletes/approve")
            .await
            .0,
        501
    );
}

/// The web console in a real headless Chromium: log in, page through 120 mailboxes, filter,
/// pause one and see it paused, read a conflict with both sides' values, retry a failure,
/// approve held deletes, and log out.
#[actix_rt::test]
async fn the_console_in_a_real_browser() {
    let Some((chromium, chromedriver)) = webdriver::binaries() else {
        mailsync_testkit::require::missing(
            "chromium and chromedriver (Debian: apt-get install chromium chromium-driver)",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_logs(&dir).await;
    let gate = FakeGate::holding(vec![held_group(
        "user2@example.com",
        "contacts",
        "shared",
        30,
    )]);
    let rig = Rig::start_with(
        Some(TOKEN),
        FakeSync::new(&["contacts", "contacts/shared", "tasks"]),
        120,
        Some(store.clone()),
        Some(gate.clone()),
    )
    .await;
    rig.ready().await;
    let b = webdriver::Browser::start(&chromium, &chromedriver).await;

    // Log in: the token is typed once.
    b.goto(&format!("{}/", rig.base)).await;
    b.wait_for(
        "the login form",
        "return !document.getElementById('login').hidden",
    )
    .await;
    b.type_into("#token", "a-wrong-token-of-some-length").await;
    b.click("#login-button").await;
    b.wait_for(
        "a refused token is said so",
        "return document.getElementById('login-error').textContent === 'wrong bearer token'",
    )
    .await;
    b.type_into("#token", TOKEN).await;
    b.click("#login-button").await;
    b.wait_for(
        "the first page of mailboxes",
        "return document.querySelectorAll('#mailboxes tbody tr').length === 50",
    )
    .await;
    assert!(b
        .text("#summary")
        .await
        .starts_with("120 of 120 mailboxes match"));
    assert_eq!(b.text(".pager .page").await, "page 1 of 3");
    let stored = b
        .run("return sessionStorage.getItem('mailsync.token')")
        .await;
    assert_eq!(stored, Value::from(TOKEN));
    let cookies = b.run("return document.cookie").await;
    assert_eq!(cookies, Value::from(""), "no cookie");

    // Paging, then a filter.
    b.click(".pager a[rel=next]").await;
    b.wait_for(
        "page 2",
        "return document.querySelector('.pager .page').textContent === 'page 2 of 3'",
    )
    .await;
    b.type_into("input[name=q]", "user7").await;
    b.click("form.filters button[type=submit]").await;
    b.wait_for(
        "the filtered list",
        "return document.querySelectorAll('#mailboxes tbody tr').length === 11",
    )
    .await;
    assert!(b
        .run("return location.hash")
        .await
        .as_str()
        .unwrap()
        .contains("q=user7"));
    let held_row = b
        .run("return document.querySelector('tr[data-mailbox=\"user2@example.com\"]') === null")
        .await;
    assert_eq!(held_row, Value::Bool(true));

    // An action and its effect.
    b.click("tr[data-mailbox=\"user7@example.com\"] button[data-action=pause]")
        .await;
    b.wait_for(
        "user7 shown paused",
        "const r = document.querySelector('tr[data-mailbox=\"user7@example.com\"] td.state'); return r !== null && r.textContent === 'paused'",
    )
    .await;
    assert_eq!(b.text("#flash").await, "user7@example.com: pause ok");
    assert_eq!(
        rig.handle
            .board
            .snapshot("user7@example.com")
            .unwrap()
            .state,
        MailboxState::Paused
    );
    b.click("tr[data-mailbox=\"user7@example.com\"] button[data-action=resume]")
        .await;
    b.wait_for(
        "user7 running again",
        "const r = document.querySelector('tr[data-mailbox=\"user7@example.com\"] td.state'); return r !== null && r.textContent === 'running'",
    )
    .await;

    // The held filter, the mailbox page with its held deletes, approve.
    b.goto(&format!("{}/#/mailboxes?state=held", rig.base))
        .await;
    b.wait_for(
        "only the held mailbox",
        "return document.querySelectorAll('#mailboxes tbody tr').length === 1 && document.querySelector('#mailboxes tbody tr').dataset.mailbox === 'user2@example.com'",
    )
    .await;
    b.click("tr[data-mailbox=\"user2@example.com\"] a.mailbox")
        .await;
    b.wait_for(
        "the held section",
        "return document.getElementById('held') !== null",
    )
    .await;
    let held_text = b.text("#held").await;
    assert!(
        held_text.contains("contacts · shared: 30 deletes in the CRM"),
        "{held_text}"
    );
    assert!(
        held_text.contains("Kunde 1 <b>AG</b>"),
        "escaped, shown as text: {held_text}"
    );
    assert!(
        b.text("#areas").await.contains("held"),
        "the area shows held"
    );
    b.run("window.confirm = function () { return true; }; return true")
        .await;
    b.click("#held .group button[data-post$='/approve']").await;
    b.wait_for(
        "nothing held any more",
        "const h = document.getElementById('held'); return h !== null && h.textContent.includes('Nothing is held')",
    )
    .await;
    assert_eq!(b.text("#flash").await, "user2@example.com: approve ok");
    assert_eq!(gate.decided.lock()[0].2.as_deref(), Some("contacts"));

    // A conflict, read with both sides' values.
    b.click("nav a[href='#/conflicts']").await;
    b.wait_for(
        "the conflict log",
        "return document.querySelectorAll('table.conflicts tbody tr').length === 2",
    )
    .await;
    b.click("table.conflicts tbody tr:first-child a.open").await;
    b.wait_for(
        "the conflict's values",
        "return document.getElementById('values') !== null",
    )
    .await;
    assert_eq!(
        b.text("#values tr[data-field=surname]").await,
        "surname Meier Maier Meier"
    );
    assert!(b.text("#winner").await.starts_with("the CRM"));

    // A parked failure, retried.
    b.click("nav a[href='#/failures']").await;
    b.wait_for(
        "the failures",
        "return document.querySelectorAll('table.failures tbody tr').length === 1",
    )
    .await;
    assert_eq!(b.text("table.failures td.next").await, "when it changes");
    b.click("table.failures button[data-post]").await;
    b.wait_for(
        "the retry is scheduled",
        "const n = document.querySelector('table.failures td.next'); return n !== null && n.textContent !== 'when it changes'",
    )
    .await;
    assert_eq!(
        b.text("#flash").await,
        "user2@example.com: retry: started ok"
    );

    // An error the API answers in JSON (here: a query field the view does not know, named
    // in the error) is shown as text, never parsed as HTML.
    b.goto(&format!(
        "{}/#/conflicts?x%3Cimg%20id%3Dinjected%20src%3Dx%3E=1",
        rig.base
    ))
    .await;
    b.wait_for(
        "the error shown",
        "const p = document.querySelector('#main p.problem'); return p !== null && p.textContent.includes('bad query')",
    )
    .await;
    let shown = b.text("#main p.problem").await;
    assert!(shown.contains("<img id=injected src=x>"), "{shown}");
    assert_eq!(
        b.run("return document.getElementById('injected') === null")
            .await,
        Value::Bool(true),
        "markup from the request was not rendered"
    );

    // A new tab of the same session keeps the token; logging out forgets it.
    b.goto(&format!("{}/#/mailboxes", rig.base)).await;
    b.wait_for(
        "still logged in after a reload",
        "return document.querySelectorAll('#mailboxes tbody tr').length === 50",
    )
    .await;
    if let Ok(dir) = std::env::var("MAILSYNC_CONSOLE_SCREENSHOT") {
        b.screenshot(&std::path::Path::new(&dir).join("console.png"))
            .await;
    }
    b.click("#logout").await;
    b.wait_for(
        "the login form again",
        "return !document.getElementById('login').hidden",
    )
    .await;
    assert_eq!(
        b.run("return sessionStorage.getItem('mailsync.token')")
            .await,
        Value::Null
    );
}

/// `mailsync healthcheck` (the container HEALTHCHECK): 0 when /healthz answers, 1 otherwise;
/// without --url it finds the service from MAILSYNC_ADMIN_LISTEN, 0.0.0.0 meaning this host.
#[actix_rt::test]
async fn healthcheck_exits_by_the_service_health() {
    let rig = Rig::start(Some(TOKEN), FakeSync::new(&["contacts"])).await;
    let port = rig.base.rsplit(':').next().unwrap().to_owned();
    let run = |args: Vec<String>, listen: Option<String>| {
        tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mailsync"));
            cmd.arg("healthcheck").args(&args);
            match listen {
                Some(l) => cmd.env("MAILSYNC_ADMIN_LISTEN", l),
                None => cmd.env_remove("MAILSYNC_ADMIN_LISTEN"),
            };
            let out = cmd.output().unwrap();
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    let (code, out, _) = run(vec!["--url".into(), format!("{}/healthz", rig.base)], None)
        .await
        .unwrap();
    assert_eq!((code, out), (0, format!("healthy: {}/healthz\n", rig.base)));
    let (code, out, err) = run(vec![], Some(format!("0.0.0.0:{port}"))).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, format!("healthy: http://127.0.0.1:{port}/healthz\n"));
    let (code, _, err) = run(
        vec!["--url".into(), "http://127.0.0.1:1/healthz".into()],
        None,
    )
    .await
    .unwrap();
    assert_eq!(code, 1);
    assert!(
        err.starts_with("unhealthy: http://127.0.0.1:1/healthz: "),
        "{err}"
    );
    let (code, _, err) = run(vec!["--url".into(), format!("{}/nope", rig.base)], None)
        .await
        .unwrap();
    assert_eq!(
        (code, err),
        (1, format!("unhealthy: {}/nope: HTTP 404\n", rig.base))
    );
}
