//! The admin API and `mailsync ctl` against a real admin server on a loopback port, with the
//! actor runtime driving fake ports (tests/admin_rig): health, readiness and metrics, the
//! token, mailboxes and commands, reload, ctl, the healthcheck. The logs and held deletes:
//! tests/admin_logs.rs; the console in a browser: tests/console.rs.

mod admin_rig;
use admin_rig::*;

use std::sync::Arc;

use mailsync_actors::fakes::{Behaviour, FakeSync};
use mailsync_actors::*;
use serde_json::Value;
use tokio::sync::Notify;

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
