//! The conflict and failure logs, retries and held deletes through the admin API and `mailsync
//! ctl` (tests/admin_rig: a real admin server, fake ports, a state store with logs).

mod admin_rig;
use admin_rig::*;

use mailsync::admin::DeleteDecision;
use mailsync_actors::fakes::FakeSync;
use serde_json::Value;

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
