//! The admin API and `mailsync ctl` against a real admin server on a loopback port, with the
//! actor runtime driving fake ports.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use mailsync::admin::{self, AdminState, ReloadFailure};
use mailsync::metrics::Telemetry;
use mailsync::secret::SecretString;
use mailsync_actors::fakes::{Behaviour, FakeStream, FakeSync};
use mailsync_actors::*;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::Notify;

const TOKEN: &str = "an-admin-token-of-some-length";

fn server() -> ServerSpec {
    ServerSpec {
        id: "ex1".into(),
        throttle: ThrottleSettings {
            requests_per_second: 1000,
            burst: 1000,
            max_concurrent: 10,
        },
        streaming: true,
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
            (1..=3).map(mailbox).collect(),
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
        "unknown action \"explode\"; expected restart, resync, pause or resume"
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
