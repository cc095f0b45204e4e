//! Exchange semantics of the simulator, driven with hand-written SOAP (no `ews` code): auth,
//! impersonation, sync states, change keys and conflicts, batches, extended properties, MIME,
//! throttling, streaming, paging, calendar views and Autodiscover.

use std::time::Duration;

use base64::Engine;
use ews_sim::server::{self, Running, SimConfig};
use ews_sim::xml::{parse, Node};
use serde_json::json;

const NS: &str = r#"xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types""#;

struct T {
    sim: Running,
    http: reqwest::Client,
}

impl T {
    async fn new() -> T {
        T::with(SimConfig {
            mailboxes: 3,
            ..SimConfig::default()
        })
        .await
    }

    async fn with(cfg: SimConfig) -> T {
        T {
            sim: server::start(cfg).await.unwrap(),
            http: reqwest::Client::new(),
        }
    }

    /// Posts an envelope as `user` (impersonating `imp`), returning status and parsed body.
    async fn call_as(&self, user: (&str, &str), imp: Option<&str>, body: &str) -> (u16, Node) {
        let imp = imp
            .map(|m| format!("<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>{m}</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>"))
            .unwrap_or_default();
        let env = format!(
            r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope {NS}><s:Header><t:RequestServerVersion Version="Exchange2013_SP1"/>{imp}</s:Header><s:Body>{body}</s:Body></s:Envelope>"#
        );
        let r = self
            .http
            .post(self.sim.ews_url())
            .basic_auth(user.0, Some(user.1))
            .header("Content-Type", "text/xml")
            .body(env)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.bytes().await.unwrap();
        (status, parse(&text).unwrap_or_default())
    }

    /// As svc impersonating user1.
    async fn call(&self, body: &str) -> Node {
        let (status, n) = self
            .call_as(("svc", "secret"), Some("user1@example.com"), body)
            .await;
        assert_eq!(status, 200, "{n:?}");
        n
    }

    async fn control(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let r = self
            .http
            .request(method, format!("{}{path}", self.sim.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap_or(serde_json::Value::Null)
    }

    async fn create(&self, mailbox: &str, folder: &str, kind: &str, subject: &str) -> String {
        let v = self
            .control(
                reqwest::Method::POST,
                &format!("/sim/mailboxes/{mailbox}/items"),
                json!({"folder": folder, "type": kind, "fields": {"Subject": subject}}),
            )
            .await;
        v["id"].as_str().unwrap().to_string()
    }
}

/// The response messages of a response envelope.
fn messages(env: &Node) -> Vec<Node> {
    env.get("Body")
        .and_then(|b| b.children.first())
        .and_then(|r| r.get("ResponseMessages"))
        .map(|m| m.children.clone())
        .unwrap_or_default()
}

fn code(m: &Node) -> String {
    m.text_of("ResponseCode").unwrap_or_default().to_string()
}

fn fault_code(env: &Node) -> String {
    env.get("Body")
        .and_then(|b| b.get("Fault"))
        .and_then(|f| f.get("detail"))
        .and_then(|d| d.text_of("ResponseCode"))
        .unwrap_or_default()
        .to_string()
}

fn sync(folder: &str, state: Option<&str>, max: u32) -> String {
    let state = state
        .map(|s| format!("<m:SyncState>{s}</m:SyncState>"))
        .unwrap_or_default();
    format!(
        r#"<m:SyncFolderItems><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI="item:Subject"/></t:AdditionalProperties></m:ItemShape><m:SyncFolderId><t:DistinguishedFolderId Id="{folder}"/></m:SyncFolderId>{state}<m:MaxChangesReturned>{max}</m:MaxChangesReturned></m:SyncFolderItems>"#
    )
}

fn changes(m: &Node) -> Vec<String> {
    m.get("Changes")
        .map(|c| c.children.iter().map(|x| x.name.to_string()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_impersonation_rules() {
    let t = T::new().await;
    let r = t
        .http
        .post(t.sim.ews_url())
        .body("<x/>")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r
        .headers()
        .get_all("WWW-Authenticate")
        .iter()
        .any(|v| v.to_str().unwrap().starts_with("Basic")));
    let get_inbox = r#"<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>"#;
    assert_eq!(
        t.call_as(("user1@example.com", "wrong"), None, get_inbox)
            .await
            .0,
        401
    );
    // A user reaches its own mailbox, also by its short login name.
    let (s, env) = t.call_as(("user1", "password"), None, get_inbox).await;
    assert_eq!((s, code(&messages(&env)[0])), (200, "NoError".to_string()));
    // ... but not another's, neither by impersonation nor by naming it.
    let (s, env) = t
        .call_as(
            ("user1@example.com", "password"),
            Some("user2@example.com"),
            get_inbox,
        )
        .await;
    assert_eq!(
        (s, fault_code(&env)),
        (500, "ErrorImpersonateUserDenied".to_string())
    );
    let other = r#"<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"><t:Mailbox><t:EmailAddress>user2@example.com</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId></m:FolderIds></m:GetFolder>"#;
    let (_, env) = t
        .call_as(("user1@example.com", "password"), None, other)
        .await;
    assert_eq!(code(&messages(&env)[0]), "ErrorAccessDenied");
    // The service account impersonates anyone; an unknown target does not exist.
    let (_, env) = t
        .call_as(("svc", "secret"), Some("user2@example.com"), get_inbox)
        .await;
    assert_eq!(code(&messages(&env)[0]), "NoError");
    let (_, env) = t
        .call_as(("svc", "secret"), Some("nobody@example.com"), get_inbox)
        .await;
    assert_eq!(fault_code(&env), "ErrorNonExistentMailbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_states_page_collapse_and_refuse_forgeries() {
    let t = T::new().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            t.create("user1@example.com", "inbox", "Message", &format!("m{i}"))
                .await,
        );
    }
    let mut state: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let env = t.call(&sync("inbox", state.as_deref(), 2)).await;
        let m = &messages(&env)[0];
        assert_eq!(code(m), "NoError");
        pages.push(changes(m).len());
        state = m.text_of("SyncState").map(str::to_string);
        if m.text_of("IncludesLastItemInRange") == Some("true") {
            break;
        }
    }
    assert_eq!(pages, vec![2, 2, 1]);
    let env = t.call(&sync("inbox", state.as_deref(), 512)).await;
    assert!(changes(&messages(&env)[0]).is_empty(), "nothing new");

    // An update, a delete and a read-flag change, each reported once, as such.
    t.control(
        reqwest::Method::PATCH,
        &format!("/sim/mailboxes/user1@example.com/items/{}", ids[0]),
        json!({"fields": {"Subject": "changed"}}),
    )
    .await;
    t.control(
        reqwest::Method::PATCH,
        &format!("/sim/mailboxes/user1@example.com/items/{}", ids[0]),
        json!({"fields": {"Subject": "changed again"}}),
    )
    .await;
    let del = t
        .http
        .delete(format!(
            "{}/sim/mailboxes/user1@example.com/items/{}",
            t.sim.base_url(),
            ids[1]
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    t.control(
        reqwest::Method::POST,
        &format!("/sim/mailboxes/user1@example.com/items/{}/read", ids[2]),
        json!({"is_read": true}),
    )
    .await;
    let env = t.call(&sync("inbox", state.as_deref(), 512)).await;
    let m = &messages(&env)[0];
    let mut got = changes(m);
    got.sort();
    assert_eq!(got, vec!["Delete", "ReadFlagChange", "Update"]);
    let good = m.text_of("SyncState").unwrap().to_string();

    // A forged state, another folder's state, and an invalidated state are all refused.
    let mut raw = base64::engine::general_purpose::STANDARD
        .decode(&good)
        .unwrap();
    raw[39] ^= 1;
    let forged = base64::engine::general_purpose::STANDARD.encode(raw);
    for (folder, st) in [
        ("inbox", forged.as_str()),
        ("calendar", good.as_str()),
        ("inbox", "bm90IGEgc3RhdGU="),
    ] {
        let env = t.call(&sync(folder, Some(st), 10)).await;
        assert_eq!(
            code(&messages(&env)[0]),
            "ErrorInvalidSyncStateData",
            "{folder} {st}"
        );
    }
    t.control(
        reqwest::Method::POST,
        "/sim/syncstates/invalidate",
        json!({"mailbox": "user1@example.com", "folder": "inbox"}),
    )
    .await;
    let env = t.call(&sync("inbox", Some(&good), 10)).await;
    assert_eq!(code(&messages(&env)[0]), "ErrorInvalidSyncStateData");
    let env = t.call(&sync("inbox", None, 512)).await;
    assert_eq!(
        changes(&messages(&env)[0]).len(),
        4,
        "a full resync sees what is there now"
    );
    // MaxChangesReturned outside 1..=512 fails the request, as the schema does.
    assert_eq!(
        fault_code(
            &t.call_as(
                ("svc", "secret"),
                Some("user1@example.com"),
                &sync("inbox", None, 513)
            )
            .await
            .1
        ),
        "ErrorSchemaValidation"
    );
}

fn update(id: &str, ck: &str, mode: &str, field: &str, value: &str) -> String {
    format!(
        r#"<m:UpdateItem ConflictResolution="{mode}" MessageDisposition="SaveOnly"><m:ItemChanges><t:ItemChange><t:ItemId Id="{id}" ChangeKey="{ck}"/><t:Updates><t:SetItemField><t:FieldURI FieldURI="item:{field}"/><t:Message><t:{field}>{value}</t:{field}></t:Message></t:SetItemField></t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_keys_and_conflict_resolution() {
    let t = T::new().await;
    let v = t.control(reqwest::Method::POST, "/sim/mailboxes/user1@example.com/items", json!({"folder": "drafts", "type": "Message", "fields": {"Subject": "a", "Importance": "Low"}})).await;
    let (id, ck0) = (
        v["id"].as_str().unwrap().to_string(),
        v["change_key"].as_str().unwrap().to_string(),
    );
    let env = t
        .call(&update(&id, &ck0, "NeverOverwrite", "Subject", "b"))
        .await;
    let m = &messages(&env)[0];
    assert_eq!(code(m), "NoError");
    let ck1 = m.get("Items").unwrap().children[0]
        .get("ItemId")
        .unwrap()
        .attr("ChangeKey")
        .unwrap()
        .to_string();
    assert_ne!(ck1, ck0, "every change gives a new change key");
    // Stale key: NeverOverwrite refuses; AutoResolve accepts a field nobody else changed,
    // refuses one that changed since; AlwaysOverwrite writes regardless.
    assert_eq!(
        code(
            &messages(
                &t.call(&update(&id, &ck0, "NeverOverwrite", "Importance", "High"))
                    .await
            )[0]
        ),
        "ErrorIrresolvableConflict"
    );
    assert_eq!(
        code(
            &messages(
                &t.call(&update(&id, &ck0, "AutoResolve", "Importance", "High"))
                    .await
            )[0]
        ),
        "NoError"
    );
    assert_eq!(
        code(
            &messages(
                &t.call(&update(&id, &ck0, "AutoResolve", "Subject", "c"))
                    .await
            )[0]
        ),
        "ErrorIrresolvableConflict"
    );
    assert_eq!(
        code(
            &messages(
                &t.call(&update(&id, &ck0, "AlwaysOverwrite", "Subject", "d"))
                    .await
            )[0]
        ),
        "NoError"
    );
    let items = t
        .control(
            reqwest::Method::GET,
            "/sim/mailboxes/user1@example.com/folders/drafts/items",
            json!(null),
        )
        .await;
    assert_eq!(items[0]["properties"]["Subject"], "d");
    assert_eq!(items[0]["properties"]["Importance"], "High");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_answer_per_item_in_order() {
    let t = T::new().await;
    let a = t.create("user1@example.com", "inbox", "Message", "a").await;
    let b = t.create("user1@example.com", "inbox", "Message", "b").await;
    let other = t
        .create("user2@example.com", "inbox", "Message", "not yours")
        .await;
    let body = format!(
        r#"<m:GetItem><m:ItemShape><t:BaseShape>Default</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id="{a}"/><t:ItemId Id="AAAA"/><t:ItemId Id="{other}"/><t:ItemId Id="{b}"/></m:ItemIds></m:GetItem>"#
    );
    let msgs = messages(&t.call(&body).await);
    let codes: Vec<String> = msgs.iter().map(code).collect();
    assert_eq!(
        codes,
        vec![
            "NoError",
            "ErrorInvalidIdMalformed",
            "ErrorAccessDenied",
            "NoError"
        ]
    );
    assert_eq!(
        msgs[3].get("Items").unwrap().children[0].text_of("Subject"),
        Some("b")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_properties_are_stored_and_searchable_and_mime_is_byte_exact() {
    let t = T::new().await;
    let ext = r#"<t:ExtendedFieldURI PropertySetId="6c7d6b06-4a4b-4c11-9d4b-6d61696c7379" PropertyName="CrmId" PropertyType="String"/>"#;
    let mime = b"From: A <a@example.com>\r\nTo: user2@example.com\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nMessage-ID: <x1@example.com>\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\nGr\xfc\xdfe\r\n.\r\n";
    let b64 = base64::engine::general_purpose::STANDARD.encode(mime);
    let mut create = String::from(
        r#"<m:CreateItem MessageDisposition="SaveOnly"><m:SavedItemFolderId><t:DistinguishedFolderId Id="inbox"/></m:SavedItemFolderId><m:Items>"#,
    );
    for i in 0..3 {
        create.push_str(&format!(r#"<t:Message><t:MimeContent CharacterSet="UTF-8">{b64}</t:MimeContent><t:ExtendedProperty>{ext}<t:Value>mail:{i}</t:Value></t:ExtendedProperty></t:Message>"#));
    }
    create.push_str("</m:Items></m:CreateItem>");
    assert!(messages(&t.call(&create).await)
        .iter()
        .all(|m| code(m) == "NoError"));
    let find = format!(
        r#"<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties>{ext}<t:FieldURI FieldURI="item:MimeContent"/></t:AdditionalProperties></m:ItemShape><m:IndexedPageItemView MaxEntriesReturned="10" Offset="0" BasePoint="Beginning"/><m:Restriction><t:IsEqualTo>{ext}<t:FieldURIOrConstant><t:Constant Value="mail:1"/></t:FieldURIOrConstant></t:IsEqualTo></m:Restriction><m:ParentFolderIds><t:DistinguishedFolderId Id="inbox"/></m:ParentFolderIds></m:FindItem>"#
    );
    let env = t.call(&find).await;
    let items = messages(&env)[0]
        .get("RootFolder")
        .unwrap()
        .get("Items")
        .unwrap()
        .children
        .clone();
    assert_eq!(items.len(), 1);
    assert_eq!(
        items[0].get("ExtendedProperty").unwrap().text_of("Value"),
        Some("mail:1")
    );
    let got = base64::engine::general_purpose::STANDARD
        .decode(items[0].text_of("MimeContent").unwrap())
        .unwrap();
    assert_eq!(got, mime, "MIME comes back byte for byte");
    // Without asking, neither the extended property nor the MIME is returned.
    let id = items[0].get("ItemId").unwrap().attr("Id").unwrap();
    let env = t.call(&format!(r#"<m:GetItem><m:ItemShape><t:BaseShape>AllProperties</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id="{id}"/></m:ItemIds></m:GetItem>"#)).await;
    let msgs = messages(&env);
    let item = &msgs[0].get("Items").unwrap().children[0];
    assert!(item.get("ExtendedProperty").is_none() && item.get("MimeContent").is_none());
    assert_eq!(
        item.text_of("InternetMessageId"),
        Some("<x1@example.com>"),
        "envelope properties come from the MIME headers"
    );
    // Saved without PR_MESSAGE_FLAGS, a message is an unsent draft, as in Exchange.
    assert_eq!(item.text_of("IsDraft"), Some("true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pr_message_flags_at_creation_decide_draft_and_read() {
    let t = T::new().await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(b"Subject: x\r\n\r\nbody\r\n");
    let flags = |tag: &str, v: u32| {
        format!(
            r#"<t:ExtendedProperty><t:ExtendedFieldURI PropertyTag="{tag}" PropertyType="Integer"/><t:Value>{v}</t:Value></t:ExtendedProperty>"#
        )
    };
    // (flags element, expected IsDraft, expected IsRead)
    let cases = [
        (flags("0x0E07", 1), "false", "true"),
        (flags("0x0e07", 0), "false", "false"),
        (flags("3591", 8), "true", "false"),
        (String::new(), "true", "false"),
    ];
    for (ext, draft, read) in cases {
        let env = t.call(&format!(r#"<m:CreateItem MessageDisposition="SaveOnly"><m:SavedItemFolderId><t:DistinguishedFolderId Id="inbox"/></m:SavedItemFolderId><m:Items><t:Message><t:MimeContent CharacterSet="UTF-8">{b64}</t:MimeContent>{ext}</t:Message></m:Items></m:CreateItem>"#)).await;
        let msgs = messages(&env);
        let id = msgs[0].get("Items").unwrap().children[0]
            .get("ItemId")
            .unwrap()
            .attr("Id")
            .unwrap()
            .to_string();
        let env = t.call(&format!(r#"<m:GetItem><m:ItemShape><t:BaseShape>AllProperties</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id="{id}"/></m:ItemIds></m:GetItem>"#)).await;
        let msgs = messages(&env);
        let item = &msgs[0].get("Items").unwrap().children[0];
        assert_eq!(
            (item.text_of("IsDraft"), item.text_of("IsRead")),
            (Some(draft), Some(read)),
            "{ext}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_throttle_per_target_mailbox() {
    let t = T::new().await;
    t.control(
        reqwest::Method::PUT,
        "/sim/throttle",
        json!({"enabled": true, "burst": 3.0, "recharge_per_second": 0.5, "use_503": false}),
    )
    .await;
    let get = r#"<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>"#;
    for _ in 0..3 {
        assert_eq!(
            t.call_as(("svc", "secret"), Some("user2@example.com"), get)
                .await
                .0,
            200
        );
    }
    let (status, env) = t
        .call_as(("svc", "secret"), Some("user2@example.com"), get)
        .await;
    assert_eq!(
        (status, fault_code(&env)),
        (500, "ErrorServerBusy".to_string())
    );
    let fault = env.get("Body").unwrap().get("Fault").unwrap();
    assert_eq!(fault.text_of("faultcode"), Some("a:ErrorServerBusy"));
    let back_off: u64 = fault
        .get("detail")
        .unwrap()
        .get("MessageXml")
        .unwrap()
        .get("Value")
        .unwrap()
        .text
        .parse()
        .unwrap();
    assert!((1..=2000).contains(&back_off), "{back_off}");
    // Under impersonation the budget is the target's: another mailbox is unaffected.
    assert_eq!(
        t.call_as(("svc", "secret"), Some("user3@example.com"), get)
            .await
            .0,
        200
    );
    let stats = t
        .control(reqwest::Method::GET, "/sim/stats", json!(null))
        .await;
    assert_eq!(stats["throttled"], 1);
    // 503 instead of the fault, when asked for.
    t.control(
        reqwest::Method::PUT,
        "/sim/throttle",
        json!({"enabled": true, "burst": 1.0, "recharge_per_second": 0.01, "use_503": true}),
    )
    .await;
    assert_eq!(
        t.call_as(("svc", "secret"), Some("user3@example.com"), get)
            .await
            .0,
        200
    );
    assert_eq!(
        t.call_as(("svc", "secret"), Some("user3@example.com"), get)
            .await
            .0,
        503
    );
}

async fn subscribe(t: &T, mailbox: &str, folder: &str) -> String {
    let body = format!(
        r#"<m:Subscribe><m:StreamingSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="{folder}"/></t:FolderIds><t:EventTypes><t:EventType>CreatedEvent</t:EventType><t:EventType>NewMailEvent</t:EventType></t:EventTypes></m:StreamingSubscriptionRequest></m:Subscribe>"#
    );
    let (_, env) = t.call_as(("svc", "secret"), Some(mailbox), &body).await;
    let m = &messages(&env)[0];
    assert_eq!(code(m), "NoError");
    m.text_of("SubscriptionId").unwrap().to_string()
}

/// Opens a stream and returns the response to read envelopes from.
async fn open_stream(t: &T, ids: &[&str], minutes: u32) -> reqwest::Response {
    let list: String = ids
        .iter()
        .map(|i| format!("<t:SubscriptionId>{i}</t:SubscriptionId>"))
        .collect();
    let env = format!(
        r#"<s:Envelope {NS}><s:Header><t:RequestServerVersion Version="Exchange2013_SP1"/></s:Header><s:Body><m:GetStreamingEvents><m:SubscriptionIds>{list}</m:SubscriptionIds><m:ConnectionTimeout>{minutes}</m:ConnectionTimeout></m:GetStreamingEvents></s:Body></s:Envelope>"#
    );
    t.http
        .post(t.sim.ews_url())
        .basic_auth("svc", Some("secret"))
        .body(env)
        .send()
        .await
        .unwrap()
}

/// Reads from the stream until `pred` holds for the text so far (or 10 s pass).
async fn read_until(
    resp: &mut reqwest::Response,
    buf: &mut String,
    pred: impl Fn(&str) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !pred(buf) {
        match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Ok(Ok(Some(c))) => buf.push_str(&String::from_utf8_lossy(&c)),
            _ => return false,
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_notifications_heartbeats_and_losses() {
    let t = T::new().await;
    t.control(
        reqwest::Method::PUT,
        "/sim/streaming",
        json!({"heartbeat_ms": 100}),
    )
    .await;
    let sub = subscribe(&t, "user1@example.com", "inbox").await;
    let mut stream = open_stream(&t, &[&sub, "bm8tc3VjaA=="], 1).await;
    assert_eq!(stream.status(), 200);
    let mut buf = String::new();
    assert!(
        read_until(&mut stream, &mut buf, |b| b
            .contains("ErrorSubscriptionNotFound")
            && b.matches("<m:ConnectionStatus>OK").count() >= 2)
        .await,
        "{buf}"
    );
    assert!(
        buf.contains("<t:SubscriptionId>bm8tc3VjaA==</t:SubscriptionId>"),
        "the unknown id is named: {buf}"
    );
    // A change made as the user arrives as events, in an envelope of its own.
    let before = buf.len();
    t.create("user1@example.com", "inbox", "Message", "push me")
        .await;
    assert!(
        read_until(&mut stream, &mut buf, |b| b[before..]
            .contains("NewMailEvent"))
        .await,
        "{buf}"
    );
    assert!(buf[before..].contains("<m:Notification><t:SubscriptionId>"));
    // Changes elsewhere are not reported to an inbox subscription.
    let before = buf.len();
    t.create("user1@example.com", "drafts", "Message", "not here")
        .await;
    t.create("user2@example.com", "inbox", "Message", "nor here")
        .await;
    assert!(
        read_until(&mut stream, &mut buf, |b| b[before..]
            .matches("ConnectionStatus>OK")
            .count()
            >= 2)
        .await
    );
    assert!(
        !buf[before..].contains("<m:Notification>"),
        "{}",
        &buf[before..]
    );
    // A lost subscription ends the stream with ErrorSubscriptionNotFound.
    let expired = t
        .control(
            reqwest::Method::POST,
            "/sim/subscriptions/expire",
            json!({"mailbox": "user1@example.com"}),
        )
        .await;
    assert_eq!(expired["expired"], 1);
    let before = buf.len();
    assert!(
        read_until(&mut stream, &mut buf, |b| b[before..]
            .contains("ErrorSubscriptionNotFound"))
        .await,
        "{buf}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_connection_takes_a_subscription_over_and_the_old_one_ends() {
    let t = T::new().await;
    let sub = subscribe(&t, "user1@example.com", "inbox").await;
    let mut old = open_stream(&t, &[&sub], 5).await;
    let mut old_text = String::new();
    assert!(
        read_until(&mut old, &mut old_text, |b| b
            .contains("<m:ConnectionStatus>OK"))
        .await
    );
    let mut new = open_stream(&t, &[&sub], 5).await;
    let mut new_text = String::new();
    assert!(
        read_until(&mut new, &mut new_text, |b| b
            .contains("<m:ConnectionStatus>OK"))
        .await
    );
    // The old connection serves nothing any more: it says so and ends.
    assert!(
        read_until(&mut old, &mut old_text, |b| b
            .contains("<m:ConnectionStatus>Closed"))
        .await,
        "{old_text}"
    );
    // Events go to the newer connection only.
    t.create("user1@example.com", "inbox", "Message", "for the new one")
        .await;
    assert!(read_until(&mut new, &mut new_text, |b| b.contains("NewMailEvent")).await);
    assert!(!old_text.contains("NewMailEvent"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_limits() {
    let t = T::new().await;
    let sub = subscribe(&t, "user1@example.com", "inbox").await;
    // ConnectionTimeout must be 1..=30.
    let r = open_stream(&t, &[&sub], 31).await;
    assert_eq!(r.status(), 500);
    // At most 3 open streams per account on-premises (each with a subscription of its own:
    // a connection naming another's subscription takes it over and the other one ends).
    let mut open = Vec::new();
    for _ in 0..3 {
        let own = subscribe(&t, "user1@example.com", "inbox").await;
        open.push(open_stream(&t, &[&own], 1).await);
    }
    let fourth = open_stream(&t, &[&sub], 1).await;
    assert_eq!(fourth.status(), 500);
    let text = fourth.text().await.unwrap();
    assert!(text.contains("ErrorExceededConnectionCount"), "{text}");
    // One mailbox per subscription.
    let both = r#"<m:Subscribe><m:StreamingSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="inbox"/><t:DistinguishedFolderId Id="inbox"><t:Mailbox><t:EmailAddress>user2@example.com</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId></t:FolderIds><t:EventTypes><t:EventType>CreatedEvent</t:EventType></t:EventTypes></m:StreamingSubscriptionRequest></m:Subscribe>"#;
    assert_eq!(
        code(&messages(&t.call(both).await)[0]),
        "ErrorInvalidSubscriptionRequest"
    );
    drop(open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_and_calendar_view() {
    let t = T::new().await;
    for i in 0..25 {
        t.create(
            "user1@example.com",
            "tasks",
            "Task",
            &format!("task {i:02}"),
        )
        .await;
    }
    let page = |offset: u32| {
        format!(
            r#"<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:IndexedPageItemView MaxEntriesReturned="10" Offset="{offset}" BasePoint="Beginning"/><m:ParentFolderIds><t:DistinguishedFolderId Id="tasks"/></m:ParentFolderIds></m:FindItem>"#
        )
    };
    let mut offset = 0;
    let mut seen = 0;
    loop {
        let env = t.call(&page(offset)).await;
        let root = messages(&env)[0].get("RootFolder").unwrap().clone();
        seen += root.get("Items").unwrap().children.len();
        assert_eq!(root.attr("TotalItemsInView"), Some("25"));
        offset = root.attr("IndexedPagingOffset").unwrap().parse().unwrap();
        if root.attr("IncludesLastItemInRange") == Some("true") {
            break;
        }
    }
    assert_eq!((seen, offset), (25, 25));

    let weekly = r#"<t:Subject>Jour fixe</t:Subject><t:Start>2026-01-05T08:00:00Z</t:Start><t:End>2026-01-05T09:00:00Z</t:End><t:Recurrence><t:WeeklyRecurrence><t:Interval>1</t:Interval><t:DaysOfWeek>Monday</t:DaysOfWeek></t:WeeklyRecurrence><t:NumberedRecurrence><t:StartDate>2026-01-05</t:StartDate><t:NumberOfOccurrences>10</t:NumberOfOccurrences></t:NumberedRecurrence></t:Recurrence>"#;
    t.control(
        reqwest::Method::POST,
        "/sim/mailboxes/user1@example.com/items",
        json!({"folder": "calendar", "type": "CalendarItem", "xml": weekly}),
    )
    .await;
    t.control(reqwest::Method::POST, "/sim/mailboxes/user1@example.com/items", json!({"folder": "calendar", "type": "CalendarItem", "fields": {"Subject": "single", "Start": "2026-01-14T10:00:00Z", "End": "2026-01-14T11:00:00Z"}})).await;
    let view = r#"<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>Default</t:BaseShape></m:ItemShape><m:CalendarView StartDate="2026-01-10T00:00:00Z" EndDate="2026-02-01T00:00:00Z"/><m:ParentFolderIds><t:DistinguishedFolderId Id="calendar"/></m:ParentFolderIds></m:FindItem>"#;
    let env = t.call(view).await;
    let items = messages(&env)[0]
        .get("RootFolder")
        .unwrap()
        .get("Items")
        .unwrap()
        .children
        .clone();
    let got: Vec<(String, String)> = items
        .iter()
        .map(|i| {
            (
                i.text_of("Start").unwrap().to_string(),
                i.text_of("CalendarItemType").unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("2026-01-12T08:00:00Z".into(), "Occurrence".into()),
            ("2026-01-14T10:00:00Z".into(), "Single".into()),
            ("2026-01-19T08:00:00Z".into(), "Occurrence".into()),
            ("2026-01-26T08:00:00Z".into(), "Occurrence".into()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn occurrences_changed_on_their_own_become_exceptions_of_the_series() {
    let t = T::new().await;
    let weekly = r#"<t:Subject>Jour fixe</t:Subject><t:Start>2026-01-05T08:00:00Z</t:Start><t:End>2026-01-05T09:00:00Z</t:End><t:Recurrence><t:WeeklyRecurrence><t:Interval>1</t:Interval><t:DaysOfWeek>Monday</t:DaysOfWeek></t:WeeklyRecurrence><t:NumberedRecurrence><t:StartDate>2026-01-05</t:StartDate><t:NumberOfOccurrences>10</t:NumberOfOccurrences></t:NumberedRecurrence></t:Recurrence>"#;
    let master = t
        .control(
            reqwest::Method::POST,
            "/sim/mailboxes/user1@example.com/items",
            json!({"folder": "calendar", "type": "CalendarItem", "xml": weekly}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let occurrence = |index: u32| {
        format!(r#"<t:OccurrenceItemId RecurringMasterId="{master}" InstanceIndex="{index}"/>"#)
    };
    let set = |id: &str, field: &str, value: &str| {
        format!(
            r#"<m:UpdateItem ConflictResolution="AlwaysOverwrite" SendMeetingInvitationsOrCancellations="SendToNone"><m:ItemChanges><t:ItemChange>{id}<t:Updates><t:SetItemField><t:FieldURI FieldURI="{field}"/><t:CalendarItem>{value}</t:CalendarItem></t:SetItemField></t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>"#
        )
    };
    let delete = |id: &str| {
        format!(
            r#"<m:DeleteItem DeleteType="MoveToDeletedItems" SendMeetingCancellations="SendToNone"><m:ItemIds>{id}</m:ItemIds></m:DeleteItem>"#
        )
    };
    let view = || async {
        let env = t.call(r#"<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>Default</t:BaseShape></m:ItemShape><m:CalendarView StartDate="2026-01-01T00:00:00Z" EndDate="2026-01-27T00:00:00Z"/><m:ParentFolderIds><t:DistinguishedFolderId Id="calendar"/></m:ParentFolderIds></m:FindItem>"#).await;
        messages(&env)[0]
            .get("RootFolder")
            .unwrap()
            .get("Items")
            .unwrap()
            .children
            .iter()
            .map(|i| {
                format!(
                    "{} {} {}",
                    i.text_of("Start").unwrap(),
                    i.text_of("CalendarItemType").unwrap(),
                    i.text_of("Subject").unwrap()
                )
            })
            .collect::<Vec<_>>()
    };
    let get_master = || async {
        let env = t.call(&format!(r#"<m:GetItem><m:ItemShape><t:BaseShape>AllProperties</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id="{master}"/></m:ItemIds></m:GetItem>"#)).await;
        let m = messages(&env)[0].clone();
        assert_eq!(code(&m), "NoError", "{m:?}");
        m.get("Items").unwrap().children[0].clone()
    };

    // The user moves the second Monday to Tuesday 10:00 and renames it, and deletes the third.
    let m = t
        .call(&set(
            &occurrence(2),
            "item:Subject",
            "<t:Subject>verschoben</t:Subject>",
        ))
        .await;
    assert_eq!(code(&messages(&m)[0]), "NoError", "{m:?}");
    let m = t
        .call(&set(
            &occurrence(2),
            "calendar:Start",
            "<t:Start>2026-01-13T10:00:00Z</t:Start>",
        ))
        .await;
    assert_eq!(code(&messages(&m)[0]), "NoError", "{m:?}");
    t.call(&set(
        &occurrence(2),
        "calendar:End",
        "<t:End>2026-01-13T11:00:00Z</t:End>",
    ))
    .await;
    let m = t.call(&delete(&occurrence(3))).await;
    assert_eq!(code(&messages(&m)[0]), "NoError", "{m:?}");
    let expected = vec![
        "2026-01-05T08:00:00Z Occurrence Jour fixe".to_string(),
        "2026-01-13T10:00:00Z Exception verschoben".into(),
        "2026-01-26T08:00:00Z Occurrence Jour fixe".into(),
    ];
    assert_eq!(view().await, expected);
    let it = get_master().await;
    let modified = it.get("ModifiedOccurrences").expect("ModifiedOccurrences");
    assert_eq!(modified.children.len(), 1);
    assert_eq!(
        (
            modified.children[0].text_of("Start"),
            modified.children[0].text_of("OriginalStart")
        ),
        (Some("2026-01-13T10:00:00Z"), Some("2026-01-12T08:00:00Z"))
    );
    let deleted = it.get("DeletedOccurrences").expect("DeletedOccurrences");
    assert_eq!(
        deleted.children[0].text_of("Start"),
        Some("2026-01-19T08:00:00Z")
    );
    // The exception's own id reads it back; the deleted occurrence is gone for good.
    let exception_id = modified.children[0]
        .get("ItemId")
        .unwrap()
        .attr("Id")
        .unwrap()
        .to_string();
    let env = t.call(&format!(r#"<m:GetItem><m:ItemShape><t:BaseShape>AllProperties</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id="{exception_id}"/></m:ItemIds></m:GetItem>"#)).await;
    let got = messages(&env)[0].get("Items").unwrap().children[0].clone();
    assert_eq!(
        (got.text_of("Subject"), got.text_of("CalendarItemType")),
        (Some("verschoben"), Some("Exception"))
    );
    let m = t.call(&delete(&occurrence(3))).await;
    assert_eq!(
        code(&messages(&m)[0]),
        "ErrorCalendarOccurrenceIsDeletedFromRecurrence"
    );

    // A change of the master's other fields keeps the exceptions; the exception keeps its
    // own subject.
    t.call(&set(
        &format!(r#"<t:ItemId Id="{master}"/>"#),
        "item:Subject",
        "<t:Subject>Jour fixe (neu)</t:Subject>",
    ))
    .await;
    assert_eq!(
        view().await,
        vec![
            "2026-01-05T08:00:00Z Occurrence Jour fixe (neu)".to_string(),
            "2026-01-13T10:00:00Z Exception verschoben".into(),
            "2026-01-26T08:00:00Z Occurrence Jour fixe (neu)".into(),
        ]
    );
    // A new pattern rebuilds the series: the exceptions are gone.
    let daily = r#"<t:Recurrence><t:DailyRecurrence><t:Interval>7</t:Interval></t:DailyRecurrence><t:NumberedRecurrence><t:StartDate>2026-01-05</t:StartDate><t:NumberOfOccurrences>10</t:NumberOfOccurrences></t:NumberedRecurrence></t:Recurrence>"#;
    t.call(&set(
        &format!(r#"<t:ItemId Id="{master}"/>"#),
        "calendar:Recurrence",
        daily,
    ))
    .await;
    let it = get_master().await;
    assert!(it.get("ModifiedOccurrences").is_none() && it.get("DeletedOccurrences").is_none());
    assert_eq!(view().await.len(), 4);
}

/// A fault aimed at one account (the service's) leaves a user's own requests to the same
/// mailbox alone, and is spent only by that account's requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_aimed_at_an_account_spare_the_others() {
    let t = T::new().await;
    let get = r#"<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>"#;
    t.control(
        reqwest::Method::POST,
        "/sim/faults",
        json!({"account": "svc", "error_code": "ErrorServerBusy", "back_off_ms": 2000, "count": 2}),
    )
    .await;
    // The user's own request: untouched, the fault not spent.
    assert_eq!(
        t.call_as(("user1@example.com", "password"), None, get)
            .await
            .0,
        200
    );
    for _ in 0..2 {
        let (s, env) = t
            .call_as(("svc", "secret"), Some("user1@example.com"), get)
            .await;
        assert_eq!((s, fault_code(&env)), (500, "ErrorServerBusy".to_string()));
    }
    assert_eq!(
        t.call_as(("svc", "secret"), Some("user1@example.com"), get)
            .await
            .0,
        200,
        "spent after its count"
    );
    // The full address names the same account.
    t.control(
        reqwest::Method::POST,
        "/sim/faults",
        json!({"account": "SVC@example.com", "http_503": true, "count": 1}),
    )
    .await;
    assert_eq!(
        t.call_as(("user2@example.com", "password"), None, get)
            .await
            .0,
        200
    );
    assert_eq!(
        t.call_as(("svc", "secret"), Some("user2@example.com"), get)
            .await
            .0,
        503
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_and_autodiscover() {
    let t = T::new().await;
    let get = r#"<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>"#;
    t.control(
        reqwest::Method::POST,
        "/sim/faults",
        json!({"operation": "GetFolder", "http_503": true, "count": 1}),
    )
    .await;
    t.control(reqwest::Method::POST, "/sim/faults", json!({"operation": "GetFolder", "error_code": "ErrorServerBusy", "back_off_ms": 45000, "count": 1})).await;
    assert_eq!(
        t.call_as(("svc", "secret"), Some("user1@example.com"), get)
            .await
            .0,
        503
    );
    let (s, env) = t
        .call_as(("svc", "secret"), Some("user1@example.com"), get)
        .await;
    assert_eq!((s, fault_code(&env)), (500, "ErrorServerBusy".to_string()));
    assert!(format!("{env:?}").contains("45000"));
    assert_eq!(
        t.call_as(("svc", "secret"), Some("user1@example.com"), get)
            .await
            .0,
        200,
        "counted faults run out"
    );

    let pox = r#"<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"><Request><EMailAddress>user2@example.com</EMailAddress><AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>"#;
    let r = t
        .http
        .post(format!(
            "{}/autodiscover/autodiscover.xml",
            t.sim.base_url()
        ))
        .basic_auth("user2@example.com", Some("password"))
        .body(pox)
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(
        text.contains(&format!("<EwsUrl>{}</EwsUrl>", t.sim.ews_url())),
        "{text}"
    );
    let r = t
        .http
        .post(format!(
            "{}/autodiscover/autodiscover.xml",
            t.sim.base_url()
        ))
        .body(pox)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_close_at_their_timeout_and_idle_subscriptions_expire() {
    let t = T::with(SimConfig {
        mailboxes: 1,
        minute: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await;
    let sub = subscribe(&t, "user1@example.com", "inbox").await;
    let mut stream = open_stream(&t, &[&sub], 1).await;
    let mut buf = String::new();
    assert!(
        read_until(&mut stream, &mut buf, |b| b
            .contains("<m:ConnectionStatus>Closed</m:ConnectionStatus>"))
        .await,
        "{buf}"
    );
    assert!(
        stream.chunk().await.unwrap().is_none(),
        "the response ends after Closed"
    );

    // Held by no connection for longer than the expiry, the subscription is gone.
    t.control(
        reqwest::Method::PUT,
        "/sim/streaming",
        json!({"subscription_expiry_ms": 100}),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = t
            .control(reqwest::Method::GET, "/sim/stats", json!(null))
            .await;
        if stats["subscriptions"] == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the subscription did not expire"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut stream = open_stream(&t, &[&sub], 1).await;
    let mut buf = String::new();
    assert!(
        read_until(&mut stream, &mut buf, |b| b
            .contains("ErrorSubscriptionNotFound"))
        .await,
        "{buf}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_streams_end_without_closed() {
    let t = T::new().await;
    let sub = subscribe(&t, "user1@example.com", "inbox").await;
    let mut stream = open_stream(&t, &[&sub], 5).await;
    let mut buf = String::new();
    assert!(read_until(&mut stream, &mut buf, |b| b.contains("ConnectionStatus>OK")).await);
    let dropped = t
        .control(reqwest::Method::POST, "/sim/streams/drop", json!(null))
        .await;
    assert_eq!(dropped["dropped"], 1);
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        let mut rest = String::new();
        while let Ok(Some(c)) = stream.chunk().await {
            rest.push_str(&String::from_utf8_lossy(&c));
        }
        rest
    })
    .await
    .expect("the stream ends");
    assert!(
        !rest.contains("Closed"),
        "a cut connection says nothing more: {rest}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_beyond_the_limit_is_refused() {
    let t = T::new().await;
    t.control(reqwest::Method::PUT, "/sim/throttle", json!({"enabled": true, "burst": 100.0, "recharge_per_second": 100.0, "max_concurrency": 1, "use_503": false})).await;
    t.control(
        reqwest::Method::POST,
        "/sim/faults",
        json!({"operation": "GetFolder", "latency_ms": 1000, "count": 1}),
    )
    .await;
    let get = r#"<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>"#;
    let slow = t.call_as(("svc", "secret"), Some("user1@example.com"), get);
    let fast = async {
        // The slow request takes its slot right after its fault is counted (no await between).
        loop {
            let stats = t
                .control(reqwest::Method::GET, "/sim/stats", json!(null))
                .await;
            if stats["faults_injected"] == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        t.call_as(("svc", "secret"), Some("user1@example.com"), get)
            .await
    };
    let ((s1, _), (s2, env2)) = tokio::join!(slow, fast);
    assert_eq!(s1, 200);
    assert_eq!(
        (s2, fault_code(&env2)),
        (500, "ErrorExceededConnectionCount".to_string())
    );
    assert_eq!(
        t.call_as(("svc", "secret"), Some("user1@example.com"), get)
            .await
            .0,
        200,
        "the slot is free again"
    );
}

#[test]
fn users_files_in_json_and_toml() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("users.json");
    std::fs::write(&json_path, r#"[{"smtp": "anna@contoso.com", "password": "pw", "display_name": "Anna"}, {"smtp": "svc2@contoso.com", "password": "x", "impersonation": true}]"#).unwrap();
    let users = server::read_users(&json_path).unwrap();
    assert_eq!(
        (
            users.len(),
            users[1].impersonation,
            users[0].display_name.as_deref()
        ),
        (2, true, Some("Anna"))
    );
    let toml_path = dir.path().join("users.toml");
    std::fs::write(
        &toml_path,
        "[[users]]\nsmtp = \"bob@contoso.com\"\npassword = \"pw\"\nfull_access = [\"anna@contoso.com\", \"*\"]\n",
    )
    .unwrap();
    let users = server::read_users(&toml_path).unwrap();
    assert_eq!(users[0].smtp, "bob@contoso.com");
    assert_eq!(users[0].full_access, vec!["anna@contoso.com", "*"]);
    assert!(
        server::read_users(&json_path).unwrap()[0]
            .full_access
            .is_empty(),
        "no full access unless granted"
    );
    std::fs::write(&toml_path, "[[users]]\nsmtp = \"bob\"\npassword = \"pw\"\n").unwrap();
    assert!(server::read_users(&toml_path)
        .unwrap_err()
        .contains("users[0].smtp \"bob\" is not an e-mail address"));
    std::fs::write(
        &toml_path,
        "[[users]]\nsmtp = \"bob@x.com\"\npasword = \"pw\"\n",
    )
    .unwrap();
    assert!(server::read_users(&toml_path)
        .unwrap_err()
        .contains("pasword"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_online_and_exchange2010() {
    use ews_sim::server::Profile;
    let t = T::with(SimConfig {
        mailboxes: 1,
        profile: Profile::Online,
        ..SimConfig::default()
    })
    .await;
    let get = r#"<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>"#;
    // Exchange Online refuses Basic; an app-only token works, with impersonation.
    let (s, _) = t
        .call_as(("user1@example.com", "password"), None, get)
        .await;
    assert_eq!(s, 401);
    let token: serde_json::Value = t
        .http
        .post(format!("{}/sim/oauth2/token", t.sim.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "mailsync-app"),
            ("client_secret", "app-secret"),
            ("scope", "https://outlook.office365.com/.default"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let env = format!(
        r#"<s:Envelope {NS}><s:Header><t:RequestServerVersion Version="Exchange2016"/><t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>user1@example.com</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation></s:Header><s:Body>{get}</s:Body></s:Envelope>"#
    );
    let r = t
        .http
        .post(t.sim.ews_url())
        .bearer_auth(token["access_token"].as_str().unwrap())
        .body(env)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        text.contains(r#"MajorVersion="15" MinorVersion="20""#),
        "{text}"
    );
    t.sim.stop().await;

    let t = T::with(SimConfig {
        mailboxes: 1,
        profile: Profile::Exchange2010,
        ..SimConfig::default()
    })
    .await;
    let r = t.http.post(t.sim.ews_url()).basic_auth("user1@example.com", Some("password")).body(format!(r#"<s:Envelope {NS}><s:Header><t:RequestServerVersion Version="Exchange2010_SP2"/></s:Header><s:Body>{get}</s:Body></s:Envelope>"#)).send().await.unwrap();
    assert!(r
        .text()
        .await
        .unwrap()
        .contains(r#"Version="Exchange2010_SP2""#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_folders_and_fault_variants() {
    let t = T::new().await;
    let base = t.sim.base_url();
    t.control(
        reqwest::Method::POST,
        "/sim/mailboxes/user1@example.com/folders",
        json!({"parent": "inbox", "name": "Projekte"}),
    )
    .await;
    t.control(
        reqwest::Method::POST,
        "/sim/mailboxes/user1@example.com/folders",
        json!({"parent": "inbox/Projekte", "name": "Alt"}),
    )
    .await;
    t.control(
        reqwest::Method::PATCH,
        "/sim/mailboxes/user1@example.com/folders/inbox|Projekte|Alt",
        json!({"name": "Archiv", "parent": "inbox"}),
    )
    .await;
    let id = t
        .create(
            "user1@example.com",
            "inbox/Archiv",
            "Message",
            "moved folder",
        )
        .await;
    assert!(!id.is_empty());
    let h = r#"<m:SyncFolderHierarchy><m:FolderShape><t:BaseShape>AllProperties</t:BaseShape></m:FolderShape><m:SyncFolderId><t:DistinguishedFolderId Id="inbox"/></m:SyncFolderId></m:SyncFolderHierarchy>"#;
    let env = t.call(h).await;
    let names: Vec<String> = messages(&env)[0]
        .get("Changes")
        .unwrap()
        .children
        .iter()
        .filter_map(|c| c.children[0].text_of("DisplayName").map(str::to_string))
        .collect();
    assert_eq!(names, vec!["Projekte", "Archiv"]);
    let del = t
        .http
        .delete(format!(
            "{base}/sim/mailboxes/user1@example.com/folders/inbox|Projekte"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    let missing = t
        .http
        .delete(format!(
            "{base}/sim/mailboxes/user1@example.com/folders/inbox|Projekte"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let refused = t
        .http
        .delete(format!(
            "{base}/sim/mailboxes/user1@example.com/folders/inbox"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        400,
        "distinguished folders cannot be deleted"
    );

    let get = r#"<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>"#;
    // A malformed answer, then a rate of 0 that never fires and a rate of 1 that always does.
    t.control(
        reqwest::Method::POST,
        "/sim/faults",
        json!({"operation": "GetFolder", "malformed": true, "count": 1}),
    )
    .await;
    let r = t
        .http
        .post(t.sim.ews_url())
        .basic_auth("user1", Some("password"))
        .body(format!(
            r#"<s:Envelope {NS}><s:Body>{get}</s:Body></s:Envelope>"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(parse(&r.bytes().await.unwrap()).is_err(), "not XML");
    t.control(
        reqwest::Method::POST,
        "/sim/faults",
        json!({"operation": "GetFolder", "error_code": "ErrorInternalServerError", "rate": 0.0}),
    )
    .await;
    for _ in 0..20 {
        assert_eq!(t.call_as(("user1", "password"), None, get).await.0, 200);
    }
    t.http
        .delete(format!("{base}/sim/faults"))
        .send()
        .await
        .unwrap();
    t.control(reqwest::Method::POST, "/sim/faults", json!({"operation": "GetFolder", "mailbox": "user1@example.com", "error_code": "ErrorInternalServerError", "rate": 1.0})).await;
    for _ in 0..5 {
        assert_eq!(
            fault_code(&t.call_as(("user1", "password"), None, get).await.1),
            "ErrorInternalServerError"
        );
    }
    assert_eq!(
        t.call_as(("user2", "password"), None, get).await.0,
        200,
        "another mailbox is not affected"
    );
}

/// One event read from a stream: (subscription, kind, item or folder id, parent folder id,
/// old parent folder id). Ids without change keys: a folder's changes with its count.
type Seen = (String, String, String, String, Option<String>);

/// Every event in the envelopes of a stream so far.
fn stream_events(buf: &str) -> Vec<Seen> {
    let mut out = Vec::new();
    for envelope in buf.split("<?xml").filter(|e| e.contains("Envelope")) {
        let Ok(env) = parse(format!("<?xml{envelope}").as_bytes()) else {
            continue;
        };
        for m in messages(&env) {
            for n in m.children_of("Notifications") {
                let sub = n.text_of("SubscriptionId").unwrap_or_default().to_string();
                for e in n.children.iter().filter(|e| e.name != "SubscriptionId") {
                    let id = |tag: &str| e.get(tag).and_then(|x| x.attr("Id")).map(str::to_string);
                    out.push((
                        sub.clone(),
                        e.name.to_string(),
                        id("ItemId").or_else(|| id("FolderId")).unwrap_or_default(),
                        id("ParentFolderId").unwrap_or_default(),
                        id("OldParentFolderId"),
                    ));
                }
            }
        }
    }
    out
}

async fn folder_id(t: &T, mailbox: &str, folder: &str) -> String {
    let body = format!(
        r#"<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="{folder}"/></m:FolderIds></m:GetFolder>"#
    );
    let (_, env) = t.call_as(("svc", "secret"), Some(mailbox), &body).await;
    let m = &messages(&env)[0];
    m.get("Folders")
        .and_then(|f| f.children.first())
        .and_then(|f| f.get("FolderId"))
        .and_then(|f| f.attr("Id"))
        .unwrap()
        .to_string()
}

/// A subscription to every event type, for `folder` (or every folder with `None`).
async fn subscribe_all_events(t: &T, mailbox: &str, folder: Option<&str>) -> String {
    let types = "<t:EventTypes><t:EventType>CreatedEvent</t:EventType><t:EventType>DeletedEvent</t:EventType><t:EventType>ModifiedEvent</t:EventType><t:EventType>MovedEvent</t:EventType><t:EventType>CopiedEvent</t:EventType></t:EventTypes>";
    let request = match folder {
        Some(f) => format!(
            r#"<m:StreamingSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="{f}"/></t:FolderIds>{types}</m:StreamingSubscriptionRequest>"#
        ),
        None => format!(
            r#"<m:StreamingSubscriptionRequest SubscribeToAllFolders="true">{types}</m:StreamingSubscriptionRequest>"#
        ),
    };
    let (_, env) = t
        .call_as(
            ("svc", "secret"),
            Some(mailbox),
            &format!("<m:Subscribe>{request}</m:Subscribe>"),
        )
        .await;
    let m = &messages(&env)[0];
    assert_eq!(code(m), "NoError", "{m:?}");
    m.text_of("SubscriptionId").unwrap().to_string()
}

async fn delete_as_user1(t: &T, id: &str, delete_type: &str) {
    let env = t
        .call(&format!(
            r#"<m:DeleteItem DeleteType="{delete_type}"><m:ItemIds><t:ItemId Id="{id}"/></m:ItemIds></m:DeleteItem>"#
        ))
        .await;
    assert_eq!(code(&messages(&env)[0]), "NoError");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_and_deletes_are_told_to_the_subscribers_of_the_folder_left_too() {
    let t = T::new().await;
    let mbx = "user1@example.com";
    let contacts = folder_id(&t, mbx, "contacts").await;
    let trash = folder_id(&t, mbx, "deleteditems").await;
    let by_contacts = subscribe_all_events(&t, mbx, Some("contacts")).await;
    let by_trash = subscribe_all_events(&t, mbx, Some("deleteditems")).await;
    let by_all = subscribe_all_events(&t, mbx, None).await;
    let mut stream = open_stream(&t, &[&by_contacts, &by_trash, &by_all], 1).await;
    assert_eq!(stream.status(), 200);
    let mut buf = String::new();
    let moved = t.create(mbx, "contacts", "Contact", "moved").await;
    let hard = t.create(mbx, "contacts", "Contact", "hard").await;
    let soft = t.create(mbx, "contacts", "Contact", "soft").await;
    assert!(
        read_until(&mut stream, &mut buf, |b| stream_events(b)
            .iter()
            .filter(|e| e.1 == "CreatedEvent")
            .count()
            == 6)
        .await,
        "three creates, each to the contacts and the all-folders subscription: {buf}"
    );
    let before = buf.len();
    let after = |buf: &str| stream_events(&buf[before..]);

    // Outlook's "Delete": a move to Deleted Items. The MovedEvent (new and old parent) goes
    // to the subscribers of both folders, once to the all-folders one; each folder's count
    // change is a ModifiedEvent of that folder.
    delete_as_user1(&t, &moved, "MoveToDeletedItems").await;
    let settled = |b: &str| {
        let e = stream_events(b);
        e.iter().filter(|e| e.1 == "MovedEvent").count() == 3
            && e.iter().filter(|e| e.1 == "ModifiedEvent").count() == 4
    };
    assert!(
        read_until(&mut stream, &mut buf, |b| settled(&b[before..])).await,
        "{}",
        &buf[before..]
    );
    let events = after(&buf);
    for sub in [&by_contacts, &by_trash, &by_all] {
        let moves: Vec<&Seen> = events
            .iter()
            .filter(|e| &e.0 == sub && e.1 == "MovedEvent")
            .collect();
        assert_eq!(moves.len(), 1, "{sub}: {events:?}");
        assert_eq!(moves[0].3, trash, "the new parent");
        assert_eq!(moves[0].4.as_deref(), Some(contacts.as_str()), "the old");
    }
    let modified = |sub: &str, events: &[Seen]| -> Vec<String> {
        let mut folders: Vec<String> = events
            .iter()
            .filter(|e| e.0 == sub && e.1 == "ModifiedEvent")
            .map(|e| e.2.clone())
            .collect();
        folders.sort();
        folders
    };
    assert_eq!(modified(&by_contacts, &events), vec![contacts.clone()]);
    assert_eq!(modified(&by_trash, &events), vec![trash.clone()]);
    let mut both = vec![contacts.clone(), trash.clone()];
    both.sort();
    assert_eq!(modified(&by_all, &events), both);

    // A hard delete: a DeletedEvent and the parent's ModifiedEvent, to contacts' subscribers.
    let before = buf.len();
    delete_as_user1(&t, &hard, "HardDelete").await;
    assert!(
        read_until(&mut stream, &mut buf, |b| stream_events(&b[before..])
            .iter()
            .filter(|e| e.1 == "ModifiedEvent")
            .count()
            == 2)
        .await,
        "{}",
        &buf[before..]
    );
    let events = stream_events(&buf[before..]);
    let kinds = |sub: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e.0 == sub)
            .map(|e| e.1.clone())
            .collect()
    };
    assert_eq!(kinds(&by_contacts), vec!["DeletedEvent", "ModifiedEvent"]);
    assert_eq!(kinds(&by_all), vec!["DeletedEvent", "ModifiedEvent"]);
    assert!(kinds(&by_trash).is_empty(), "{events:?}");

    // A soft delete on Exchange 2013 and later: a move into the dumpster, so contacts'
    // subscribers hear a MovedEvent whose old parent is contacts.
    let before = buf.len();
    delete_as_user1(&t, &soft, "SoftDelete").await;
    assert!(
        read_until(&mut stream, &mut buf, |b| stream_events(&b[before..])
            .iter()
            .filter(|e| e.1 == "MovedEvent")
            .count()
            == 2)
        .await,
        "{}",
        &buf[before..]
    );
    let events = stream_events(&buf[before..]);
    let moved_out: Vec<&Seen> = events
        .iter()
        .filter(|e| e.0 == by_contacts && e.1 == "MovedEvent")
        .collect();
    assert_eq!(moved_out.len(), 1, "{events:?}");
    assert_eq!(moved_out[0].4.as_deref(), Some(contacts.as_str()));
    assert_ne!(moved_out[0].3, contacts);
    assert_ne!(
        moved_out[0].3, trash,
        "into the dumpster, not Deleted Items"
    );
    assert!(
        events.iter().all(|e| e.0 != by_trash),
        "Deleted Items is not involved: {events:?}"
    );
    // Gone from the folder: SyncFolderItems from the start lists none of the three.
    let env = t.call(&sync("contacts", None, 100)).await;
    assert!(changes(&messages(&env)[0]).is_empty());
    t.sim.stop().await;

    // Exchange 2010 reports a soft delete as a DeletedEvent.
    let t = T::with(SimConfig {
        mailboxes: 1,
        profile: ews_sim::server::Profile::Exchange2010,
        ..SimConfig::default()
    })
    .await;
    let sub = subscribe_all_events(&t, mbx, Some("contacts")).await;
    let mut stream = open_stream(&t, &[&sub], 1).await;
    let mut buf = String::new();
    let soft = t.create(mbx, "contacts", "Contact", "soft").await;
    delete_as_user1(&t, &soft, "SoftDelete").await;
    assert!(
        read_until(&mut stream, &mut buf, |b| stream_events(b)
            .iter()
            .any(|e| e.1 == "DeletedEvent"))
        .await,
        "{buf}"
    );
    assert!(!stream_events(&buf).iter().any(|e| e.1 == "MovedEvent"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_access_is_granted_per_mailbox_and_refused_as_exchange_does() {
    let t = T::new().await;
    t.control(
        reqwest::Method::POST,
        "/sim/mailboxes",
        serde_json::json!({"smtp": "assistant@example.com", "password": "pw", "full_access": ["user2@example.com"]}),
    )
    .await;
    let get_inbox = |mailbox: &str| {
        format!(
            r#"<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"><t:Mailbox><t:EmailAddress>{mailbox}</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId></m:FolderIds></m:GetFolder>"#
        )
    };
    let message = |n: &Node| {
        n.get("Body")
            .and_then(|b| b.children.first())
            .and_then(|r| r.get("ResponseMessages"))
            .and_then(|m| m.children.first())
            .cloned()
            .unwrap_or_default()
    };
    // Granted: the folder of user2's mailbox (not the assistant's own).
    let (status, n) = t
        .call_as(
            ("assistant@example.com", "pw"),
            None,
            &get_inbox("user2@example.com"),
        )
        .await;
    assert_eq!(status, 200);
    let m = message(&n);
    assert_eq!(m.text_of("ResponseCode"), Some("NoError"), "{n:?}");
    let id = m
        .get("Folders")
        .and_then(|f| f.children.first())
        .and_then(|f| f.get("FolderId"))
        .and_then(|f| f.attr("Id"))
        .unwrap()
        .to_string();
    let user2_inbox = {
        let mailbox = t.sim.sim.store.mailbox("user2@example.com").unwrap();
        let mut m = mailbox.lock();
        let key = m.distinguished_folder("inbox").unwrap();
        m.folder_id(key).0
    };
    assert_eq!(id, user2_inbox);
    // Not granted: the response message says ErrorAccessDenied, as Exchange's does.
    let (status, n) = t
        .call_as(
            ("assistant@example.com", "pw"),
            None,
            &get_inbox("user1@example.com"),
        )
        .await;
    assert_eq!(status, 200);
    let m = message(&n);
    assert_eq!(
        (m.attr("ResponseClass"), m.text_of("ResponseCode")),
        (Some("Error"), Some("ErrorAccessDenied")),
        "{n:?}"
    );
    // Nor does the grant open the mailbox by impersonation.
    let (status, _) = t
        .call_as(
            ("assistant@example.com", "pw"),
            Some("user2@example.com"),
            &get_inbox("user2@example.com"),
        )
        .await;
    assert_eq!(status, 500, "ErrorImpersonateUserDenied is a fault");
}
