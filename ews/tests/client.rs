//! The HTTP side of the client against a scripted fake server on 127.0.0.1:0: headers, auth,
//! the mapping of HTTP failures, subscription-group affinity, OAuth2 token caching, and
//! streaming over a chunked body. The server answers a fixed script and fails the test on any
//! request it did not expect.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ews::client::{Affinity, Auth, Client, ClientConfig, OAuth2Tokens, Target};
use ews::ops::*;
use ews::streaming::StreamEvent;
use ews::types::*;
use ews::Error;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request as the fake server saw it.
#[derive(Debug, Clone)]
struct Seen {
    /// Which TCP connection (in accept order) carried the request.
    conn: usize,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A scripted answer.
enum Answer {
    /// Status, extra headers, body.
    Plain(u16, Vec<(&'static str, String)>, Vec<u8>),
    /// A chunked 200 response: each chunk written after the given pause.
    Chunked(Vec<(Duration, Vec<u8>)>),
}

struct FakeServer {
    url: url::Url,
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Mutex<VecDeque<Answer>>>,
}

impl FakeServer {
    async fn start(script: Vec<Answer>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = url::Url::parse(&format!(
            "http://{}/EWS/Exchange.asmx",
            listener.local_addr().unwrap()
        ))
        .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let (s2, sc2) = (seen.clone(), script.clone());
        tokio::spawn(async move {
            for conn in 0.. {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (s3, sc3) = (s2.clone(), sc2.clone());
                tokio::spawn(async move { serve(conn, sock, s3, sc3).await });
            }
        });
        FakeServer { url, seen, script }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn assert_script_done(&self) {
        assert!(
            self.script.lock().unwrap().is_empty(),
            "not every scripted answer was asked for"
        );
    }
}

async fn serve(
    conn: usize,
    mut sock: TcpStream,
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Mutex<VecDeque<Answer>>>,
) {
    loop {
        let mut buf = Vec::new();
        let head_end = loop {
            let mut chunk = [0u8; 4096];
            let n = match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let path = lines
            .next()
            .unwrap_or_default()
            .split(' ')
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string();
        seen.lock().unwrap().push(Seen {
            conn,
            path: path.clone(),
            headers,
            body: body.clone(),
        });
        let answer = script.lock().unwrap().pop_front();
        let Some(answer) = answer else {
            panic!("fake server: unexpected request to {path}:\n{body}");
        };
        match answer {
            Answer::Plain(status, extra, body) => {
                let mut resp = format!("HTTP/1.1 {status} X\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\n", body.len());
                for (k, v) in extra {
                    resp.push_str(&format!("{k}: {v}\r\n"));
                }
                resp.push_str("\r\n");
                let mut bytes = resp.into_bytes();
                bytes.extend(body);
                if sock.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Answer::Chunked(chunks) => {
                let _ = sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n").await;
                for (pause, data) in chunks {
                    tokio::time::sleep(pause).await;
                    let mut c = format!("{:x}\r\n", data.len()).into_bytes();
                    c.extend(data);
                    c.extend(b"\r\n");
                    if sock.write_all(&c).await.is_err() {
                        return;
                    }
                }
                let _ = sock.write_all(b"0\r\n\r\n").await;
            }
        }
    }
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

fn client(url: &url::Url, auth: Auth) -> Client {
    let mut cfg = ClientConfig::new(url.clone(), auth);
    cfg.allow_http = true;
    cfg.version = "Exchange2013_SP1".into();
    cfg.timeout = Duration::from_secs(5);
    Client::new(cfg).unwrap()
}

fn basic() -> Auth {
    Auth::Basic {
        username: "svc".into(),
        password: "secret".into(),
    }
}

fn sync_op() -> SyncFolderItems {
    SyncFolderItems {
        folder: FolderRef::well_known(DistinguishedFolder::Inbox),
        shape: Shape::id_only(),
        sync_state: None,
        ignore: vec![],
        max_changes: 512,
    }
}

#[tokio::test]
async fn sends_the_ews_headers_and_reads_the_answer() {
    let server = FakeServer::start(vec![Answer::Plain(
        200,
        vec![],
        fixture("SyncFolderItems-full.xml"),
    )])
    .await;
    let reply = client(&server.url, basic())
        .call(&Target::impersonating("user7@example.com"), &sync_op())
        .await
        .unwrap();
    assert_eq!(reply.output.sync_state, "STATE-2");
    assert_eq!(reply.server_version.unwrap().minor_version, 1);
    let seen = &server.seen()[0];
    assert_eq!(seen.path, "/EWS/Exchange.asmx");
    assert_eq!(seen.header("X-AnchorMailbox"), Some("user7@example.com"));
    assert_eq!(seen.header("Authorization"), Some("Basic c3ZjOnNlY3JldA=="));
    assert_eq!(seen.header("Content-Type"), Some("text/xml; charset=utf-8"));
    assert!(seen.header("X-PreferServerAffinity").is_none());
    assert!(
        seen.body
            .contains("<t:PrimarySmtpAddress>user7@example.com</t:PrimarySmtpAddress>"),
        "{}",
        seen.body
    );
    assert!(seen
        .body
        .contains(r#"<t:RequestServerVersion Version="Exchange2013_SP1"/>"#));
    server.assert_script_done();
}

#[tokio::test]
async fn http_failures_map_to_actions() {
    let busy = fixture("fault-ErrorServerBusy.xml");
    let server = FakeServer::start(vec![
        Answer::Plain(
            401,
            vec![("WWW-Authenticate", "Basic realm=\"x\"".into())],
            vec![],
        ),
        Answer::Plain(503, vec![], b"Service Unavailable".to_vec()),
        Answer::Plain(500, vec![], busy),
        Answer::Plain(500, vec![], b"<html>oops</html>".to_vec()),
        Answer::Plain(502, vec![], vec![]),
        Answer::Plain(200, vec![], b"<not-soap/>".to_vec()),
        Answer::Plain(200, vec![], fixture("DeleteItem.xml")),
    ])
    .await;
    let c = client(&server.url, basic());
    let t = Target::own("user1@example.com");
    assert!(matches!(
        c.call(&t, &sync_op()).await,
        Err(Error::Unauthorized(_))
    ));
    assert!(
        matches!(c.call(&t, &sync_op()).await, Err(Error::Throttled { back_off, .. }) if back_off == ews::error::DEFAULT_BACK_OFF)
    );
    assert_eq!(
        c.call(&t, &sync_op()).await.unwrap_err(),
        Error::Throttled {
            back_off: Duration::from_millis(297_749),
            code: "ErrorServerBusy".into()
        }
    );
    assert!(matches!(
        c.call(&t, &sync_op()).await,
        Err(Error::Transient(_))
    ));
    assert!(matches!(
        c.call(&t, &sync_op()).await,
        Err(Error::Transient(_))
    ));
    assert!(matches!(
        c.call(&t, &sync_op()).await,
        Err(Error::Malformed(_))
    ));
    assert!(
        matches!(c.call(&t, &sync_op()).await, Err(Error::Malformed(m)) if m.contains("expected SyncFolderItemsResponse")),
        "a response to another operation is refused"
    );
    assert!(
        server.seen()[0].body.contains("m:SyncFolderItems")
            && !server.seen()[0].body.contains("ExchangeImpersonation")
    );
    server.assert_script_done();
}

#[tokio::test]
async fn unreachable_server_is_transient() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = url::Url::parse(&format!(
        "http://{}/EWS/Exchange.asmx",
        listener.local_addr().unwrap()
    ))
    .unwrap();
    drop(listener);
    assert!(matches!(
        client(&url, basic())
            .call(&Target::own("a@example.com"), &sync_op())
            .await,
        Err(Error::Transient(_))
    ));
}

#[test]
fn credentials_only_go_to_https_unless_allowed() {
    let url = url::Url::parse("http://mail.example.com/EWS/Exchange.asmx").unwrap();
    let err = Client::new(ClientConfig::new(url, basic())).unwrap_err();
    assert!(
        matches!(&err, Error::Request(m) if m.contains("only sent over https")),
        "{err:?}"
    );
    let https = url::Url::parse("https://mail.example.com/EWS/Exchange.asmx").unwrap();
    assert!(Client::new(ClientConfig::new(https, basic())).is_ok());
}

#[tokio::test]
async fn subscription_group_affinity_and_back_end_cookie() {
    let sub = fixture("Unsubscribe.xml");
    let mut subscribe_ok = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/Subscribe-denied.xml"),
    )
    .unwrap();
    subscribe_ok = subscribe_ok
        .replace(r#"ResponseClass="Error""#, r#"ResponseClass="Success""#)
        .replace("<m:MessageText>The account does not have permission to impersonate the requested user.</m:MessageText><m:ResponseCode>ErrorImpersonateUserDenied</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>", "<m:ResponseCode>NoError</m:ResponseCode><m:SubscriptionId>SUB-1</m:SubscriptionId>");
    let server = FakeServer::start(vec![
        Answer::Plain(
            200,
            vec![(
                "Set-Cookie",
                "X-BackEndOverrideCookie=BE01~1941962753; path=/; secure".into(),
            )],
            subscribe_ok.into_bytes(),
        ),
        Answer::Plain(200, vec![], sub),
    ])
    .await;
    let c = client(&server.url, basic());
    let affinity = Affinity::new("anchor@example.com");
    let target = Target {
        mailbox: "user9@example.com".into(),
        access: ews::Access::Impersonation,
        affinity: Some(affinity.clone()),
    };
    let id = c
        .call(
            &target,
            &Subscribe {
                folders: vec![FolderRef::well_known(DistinguishedFolder::Inbox)],
                event_types: vec![],
            },
        )
        .await
        .unwrap();
    assert_eq!(id.output, "SUB-1");
    assert_eq!(affinity.cookie().as_deref(), Some("BE01~1941962753"));
    c.call(
        &target,
        &Unsubscribe {
            subscription_id: "SUB-1".into(),
        },
    )
    .await
    .unwrap();
    let seen = server.seen();
    assert_eq!(
        seen[0].header("X-AnchorMailbox"),
        Some("anchor@example.com")
    );
    assert_eq!(seen[0].header("X-PreferServerAffinity"), Some("true"));
    assert!(seen[0].header("Cookie").is_none());
    assert_eq!(
        seen[1].header("Cookie"),
        Some("X-BackEndOverrideCookie=BE01~1941962753")
    );
    assert!(
        seen[1]
            .body
            .contains("<t:PrimarySmtpAddress>user9@example.com</t:PrimarySmtpAddress>"),
        "impersonates the member, anchors on the group"
    );
}

#[tokio::test]
async fn oauth2_tokens_are_cached_and_refreshed_before_expiry() {
    let token = |t: &str, exp: u64| {
        Answer::Plain(
            200,
            vec![("Content-Type", "application/json".into())],
            format!(r#"{{"token_type":"Bearer","expires_in":{exp},"access_token":"{t}"}}"#)
                .into_bytes(),
        )
    };
    let ok = || Answer::Plain(200, vec![], fixture("Unsubscribe.xml"));
    let server = FakeServer::start(vec![token("tok-1", 3600), ok(), ok(), ok()]).await;
    let mut token_url = server.url.clone();
    token_url.set_path("/tenant/oauth2/v2.0/token");
    let tokens = Arc::new(OAuth2Tokens::new(
        token_url.clone(),
        "app-id",
        "app-secret",
        "https://outlook.office365.com/.default",
    ));
    let c = client(&server.url, Auth::OAuth2(tokens));
    let op = Unsubscribe {
        subscription_id: "s".into(),
    };
    for _ in 0..3 {
        c.call(&Target::impersonating("u@example.com"), &op)
            .await
            .unwrap();
    }
    let seen = server.seen();
    assert_eq!(seen.len(), 4, "one token request for three calls");
    assert_eq!(seen[0].path, "/tenant/oauth2/v2.0/token");
    assert!(
        seen[0].body.contains("grant_type=client_credentials")
            && seen[0].body.contains("client_secret=app-secret"),
        "{}",
        seen[0].body
    );
    assert!(
        seen[0]
            .body
            .contains("scope=https%3A%2F%2Foutlook.office365.com%2F.default"),
        "{}",
        seen[0].body
    );
    for s in &seen[1..] {
        assert_eq!(s.header("Authorization"), Some("Bearer tok-1"));
    }

    // A token that expires at once (or states a lifetime of zero) is fetched again on the
    // next call.
    let server =
        FakeServer::start(vec![token("short-1", 0), ok(), token("short-2", 0), ok()]).await;
    let mut token_url = server.url.clone();
    token_url.set_path("/t");
    let c = client(
        &server.url,
        Auth::OAuth2(Arc::new(OAuth2Tokens::new(token_url, "a", "b", "s"))),
    );
    c.call(&Target::impersonating("u@example.com"), &op)
        .await
        .unwrap();
    c.call(&Target::impersonating("u@example.com"), &op)
        .await
        .unwrap();
    let seen = server.seen();
    assert_eq!(seen[3].header("Authorization"), Some("Bearer short-2"));
    server.assert_script_done();

    // Refused client credentials are Unauthorized.
    let server = FakeServer::start(vec![Answer::Plain(
        401,
        vec![],
        br#"{"error":"invalid_client"}"#.to_vec(),
    )])
    .await;
    let mut token_url = server.url.clone();
    token_url.set_path("/t");
    let c = client(
        &server.url,
        Auth::OAuth2(Arc::new(OAuth2Tokens::new(token_url, "a", "bad", "s"))),
    );
    assert!(matches!(
        c.call(&Target::impersonating("u@example.com"), &op).await,
        Err(Error::Unauthorized(_))
    ));
}

#[tokio::test]
async fn streaming_events_arrive_while_the_connection_is_open() {
    let ok = fixture("GetStreamingEvents-ok.xml");
    let errs = fixture("GetStreamingEvents-errors.xml");
    let (a, b) = errs.split_at(errs.len() / 2);
    let server = FakeServer::start(vec![Answer::Chunked(vec![
        (Duration::ZERO, ok.clone()),
        (Duration::from_millis(50), a.to_vec()),
        (Duration::from_millis(50), b.to_vec()),
        (Duration::from_millis(50), ok),
    ])])
    .await;
    let c = client(&server.url, basic());
    let op = GetStreamingEvents {
        subscription_ids: vec!["sub-a".into(), "sub-b".into()],
        connection_timeout_minutes: 1,
    };
    let events: Vec<StreamEvent> = c
        .stream(&Target::own("u@example.com"), &op)
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0], StreamEvent::ConnectionOk);
    assert!(
        matches!(&events[1], StreamEvent::Error { error: Error::SubscriptionGone(_), subscription_ids } if subscription_ids.len() == 2)
    );
    assert_eq!(events[2], StreamEvent::ConnectionOk);
    assert!(server.seen()[0]
        .body
        .contains("<m:ConnectionTimeout>1</m:ConnectionTimeout>"));
}

fn ntlm_message(header: Option<&str>) -> ntlmclient::Message {
    use base64::Engine;
    let b64 = header
        .and_then(|h| h.strip_prefix("NTLM "))
        .unwrap_or_else(|| panic!("not an NTLM header: {header:?}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    ntlmclient::Message::try_from(bytes.as_slice()).unwrap()
}

fn challenge() -> String {
    use base64::Engine;
    let msg = ntlmclient::Message::Challenge(ntlmclient::ChallengeMessage {
        target_name: "CONTOSO".into(),
        flags: ntlmclient::Flags::NEGOTIATE_UNICODE
            | ntlmclient::Flags::NEGOTIATE_NTLM
            | ntlmclient::Flags::REQUEST_TARGET,
        challenge: [1, 2, 3, 4, 5, 6, 7, 8],
        context: (0, 0),
        target_information: vec![],
        os_version: Default::default(),
    });
    format!(
        "NTLM {}",
        base64::engine::general_purpose::STANDARD.encode(msg.to_bytes().unwrap())
    )
}

#[tokio::test]
async fn ntlm_handshake_on_one_connection_then_reuse() {
    let ok = || Answer::Plain(200, vec![], fixture("Unsubscribe.xml"));
    let server = FakeServer::start(vec![
        Answer::Plain(
            401,
            vec![("WWW-Authenticate", challenge())],
            b"unauthorized".to_vec(),
        ),
        ok(),
        ok(),
    ])
    .await;
    let c = client(
        &server.url,
        Auth::Ntlm {
            username: r"CONTOSO\alice".into(),
            password: "pw".into(),
        },
    );
    let op = Unsubscribe {
        subscription_id: "s".into(),
    };
    c.call(&Target::impersonating("u@example.com"), &op)
        .await
        .unwrap();
    c.call(&Target::impersonating("u@example.com"), &op)
        .await
        .unwrap();
    let seen = server.seen();
    assert!(matches!(
        ntlm_message(seen[0].header("Authorization")),
        ntlmclient::Message::Negotiate(_)
    ));
    let ntlmclient::Message::Authenticate(auth) = ntlm_message(seen[1].header("Authorization"))
    else {
        panic!("{:?}", seen[1])
    };
    assert_eq!(
        (auth.user_name.as_str(), auth.domain_name.as_str()),
        ("alice", "CONTOSO")
    );
    assert!(auth.ntlm_response.len() > 24, "an NTLMv2 response");
    assert_eq!(
        seen[0].conn, seen[1].conn,
        "the handshake stays on one connection"
    );
    assert!(
        seen[2].header("Authorization").is_none(),
        "the authenticated connection is reused without a new handshake"
    );
    assert_eq!(seen[2].conn, seen[0].conn);
    assert!(
        seen.iter().all(|s| s.body.contains("m:Unsubscribe")),
        "every leg carries the request"
    );
    server.assert_script_done();
}

#[tokio::test]
async fn ntlm_refusals_are_unauthorized() {
    let server = FakeServer::start(vec![
        Answer::Plain(401, vec![("WWW-Authenticate", challenge())], vec![]),
        Answer::Plain(401, vec![], vec![]),
        Answer::Plain(
            401,
            vec![("WWW-Authenticate", "Basic realm=\"x\"".into())],
            vec![],
        ),
    ])
    .await;
    let c = client(
        &server.url,
        Auth::Ntlm {
            username: "alice@contoso.com".into(),
            password: "wrong".into(),
        },
    );
    let op = Unsubscribe {
        subscription_id: "s".into(),
    };
    assert!(
        matches!(c.call(&Target::own("alice@contoso.com"), &op).await, Err(Error::Unauthorized(m)) if m.contains("refused the NTLM credentials"))
    );
    assert!(
        matches!(c.call(&Target::own("alice@contoso.com"), &op).await, Err(Error::Unauthorized(m)) if m.contains("no NTLM challenge"))
    );
    server.assert_script_done();
}

#[tokio::test]
async fn answers_over_the_cap_are_refused_without_being_read() {
    let big = |n: usize| {
        let mut body = fixture("Unsubscribe.xml");
        // Padding inside the envelope keeps it well-formed XML.
        let at = body
            .windows(7)
            .position(|w| w == b"</s:Bod")
            .unwrap_or(body.len());
        body.splice(at..at, std::iter::repeat_n(b' ', n));
        body
    };
    let server = FakeServer::start(vec![
        Answer::Plain(200, vec![], big(10)),
        Answer::Plain(200, vec![], big(2 * 1024 * 1024)),
        // A chunked body without a length grows past the cap as it arrives.
        Answer::Chunked(
            (0..40)
                .map(|_| (Duration::ZERO, vec![b' '; 64 * 1024]))
                .collect(),
        ),
        Answer::Plain(200, vec![], big(2 * 1024 * 1024)),
    ])
    .await;
    let mut cfg = ClientConfig::new(server.url.clone(), basic());
    cfg.allow_http = true;
    cfg.max_response_bytes = 1024 * 1024;
    cfg.max_mime_response_bytes = 4 * 1024 * 1024;
    let c = Client::new(cfg).unwrap();
    let op = Unsubscribe {
        subscription_id: "s".into(),
    };
    let t = Target::impersonating("u@example.com");
    c.call(&t, &op).await.unwrap();
    for _ in 0..2 {
        let err = c.call(&t, &op).await.unwrap_err();
        assert_eq!(
            err,
            Error::TooLarge {
                limit: 1024 * 1024,
                what: "response"
            }
        );
        assert!(err.to_string().contains("1048576 bytes"), "{err}");
    }
    // A GetItem asking for MIME content may be larger: the MIME cap applies.
    let get_mime = GetItem {
        ids: vec![],
        shape: Shape::all_properties(vec![PropertyPath::field("item:MimeContent")]),
    };
    let reply = c.call(&t, &get_mime).await;
    assert!(
        !matches!(reply, Err(Error::TooLarge { .. })),
        "2 MiB is within the MIME cap: {reply:?}"
    );
    server.assert_script_done();
}

#[tokio::test]
async fn redirects_are_refused_not_followed() {
    for status in [301u16, 302, 307, 308] {
        let server = FakeServer::start(vec![Answer::Plain(
            status,
            vec![(
                "Location",
                "https://elsewhere.example/EWS/Exchange.asmx?token=abc".into(),
            )],
            vec![],
        )])
        .await;
        let c = client(&server.url, basic());
        let err = c
            .call(
                &Target::impersonating("u@example.com"),
                &Unsubscribe {
                    subscription_id: "s".into(),
                },
            )
            .await
            .unwrap_err();
        assert_eq!(
            err,
            Error::Redirected {
                status,
                location: "https://elsewhere.example/EWS/Exchange.asmx".into()
            }
        );
        assert!(err.to_string().contains("follow no redirects"), "{err}");
        // Exactly one request: nothing went to the redirect's target.
        assert_eq!(server.seen().len(), 1);
        server.assert_script_done();
    }

    // The token endpoint follows none either (a 307 would replay the client secret).
    let server = FakeServer::start(vec![Answer::Plain(
        307,
        vec![("Location", "https://collector.example/token".into())],
        vec![],
    )])
    .await;
    let mut token_url = server.url.clone();
    token_url.set_path("/token");
    let c = client(
        &server.url,
        Auth::OAuth2(Arc::new(OAuth2Tokens::new(token_url, "a", "secret", "s"))),
    );
    let err = c
        .call(
            &Target::impersonating("u@example.com"),
            &Unsubscribe {
                subscription_id: "s".into(),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Redirected { status: 307, location } if location == "https://collector.example/token"),
        "{err:?}"
    );
    assert_eq!(server.seen().len(), 1);
}

#[test]
fn an_http_token_url_is_refused_unless_http_is_allowed() {
    let tokens = Arc::new(OAuth2Tokens::new(
        url::Url::parse("http://login.example/tenant/oauth2/v2.0/token").unwrap(),
        "a",
        "secret",
        "s",
    ));
    let cfg = ClientConfig::new(
        url::Url::parse("https://mail.example/EWS/Exchange.asmx").unwrap(),
        Auth::OAuth2(tokens.clone()),
    );
    let err = Client::new(cfg.clone()).unwrap_err();
    assert!(
        matches!(&err, Error::Request(m) if m.starts_with("token URL http://login.example/")),
        "{err:?}"
    );
    let mut allowed = cfg;
    allowed.allow_http = true;
    assert!(Client::new(allowed).is_ok());
}

#[tokio::test]
async fn header_errors_never_echo_the_value() {
    // A token with a line break cannot go into a header: the error says which header, not
    // what was in it.
    let server = FakeServer::start(vec![Answer::Plain(
        200,
        vec![("Content-Type", "application/json".into())],
        br#"{"token_type":"Bearer","expires_in":3600,"access_token":"SECRET-TOKEN\nX-Injected: 1"}"#
            .to_vec(),
    )])
    .await;
    let mut token_url = server.url.clone();
    token_url.set_path("/token");
    let c = client(
        &server.url,
        Auth::OAuth2(Arc::new(OAuth2Tokens::new(token_url, "a", "b", "s"))),
    );
    let err = c
        .call(
            &Target::impersonating("u@example.com"),
            &Unsubscribe {
                subscription_id: "s".into(),
            },
        )
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("Authorization header"), "{text}");
    assert!(!text.contains("SECRET-TOKEN"), "{text}");

    // The same for a mailbox address (Basic credentials are base64: always sendable).
    let c = client(&server.url, basic());
    let err = c
        .call(
            &Target::impersonating("u\r\n@example.com"),
            &Unsubscribe {
                subscription_id: "s".into(),
            },
        )
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("X-AnchorMailbox header"), "{text}");
    assert!(!text.contains("@example.com"), "{text}");
    server.assert_script_done();
}

/// A POX answer pointing elsewhere with redirectUrl.
fn pox_redirect(to: &str) -> Vec<u8> {
    format!(r#"<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"><Response xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"><Account><Action>redirectUrl</Action><RedirectUrl>{to}</RedirectUrl></Account></Response></Autodiscover>"#).into_bytes()
}

fn pox_found(ews: &str) -> Vec<u8> {
    format!(r#"<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"><Response xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"><Account><AccountType>email</AccountType><Action>settings</Action><Protocol><Type>EXPR</Type><EwsUrl>{ews}</EwsUrl></Protocol></Account></Response></Autodiscover>"#).into_bytes()
}

/// Autodiscover options for a fake server at `port` that answers for every host name: what
/// matters is which host a request is addressed to, and whether it was made at all.
fn autodiscover_options(port: u16, allowed: &[&str]) -> ews::autodiscover::AutodiscoverOptions {
    let here = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    ews::autodiscover::AutodiscoverOptions {
        allow_http: true,
        resolve: vec![
            ("ad.example.com".into(), here),
            ("collector.evil.test".into(), here),
        ],
        allowed_hosts: allowed.iter().map(|h| h.to_string()).collect(),
        ..Default::default()
    }
}

/// Replaces `PORT` in the scripted bodies and headers by the server's port.
fn with_port(server: &FakeServer) -> u16 {
    let port = server.url.port().unwrap();
    for answer in server.script.lock().unwrap().iter_mut() {
        if let Answer::Plain(_, headers, body) = answer {
            *body = String::from_utf8(body.clone())
                .unwrap()
                .replace("PORT", &port.to_string())
                .into_bytes();
            for (_, v) in headers.iter_mut() {
                *v = v.replace("PORT", &port.to_string());
            }
        }
    }
    port
}

#[tokio::test]
async fn autodiscover_sends_no_credentials_to_a_redirect_elsewhere() {
    use ews::autodiscover::Autodiscover;
    let evil = "http://collector.evil.test:PORT/autodiscover/autodiscover.xml";
    for answer in [
        Answer::Plain(200, vec![], pox_redirect(evil)),
        Answer::Plain(302, vec![("Location", evil.into())], vec![]),
        Answer::Plain(308, vec![("Location", evil.into())], vec![]),
    ] {
        let server = FakeServer::start(vec![answer]).await;
        let port = with_port(&server);
        let ad =
            Autodiscover::with_options("svc", "SECRET", autodiscover_options(port, &[])).unwrap();
        let start = url::Url::parse(&format!(
            "http://ad.example.com:{port}/autodiscover/autodiscover.xml"
        ))
        .unwrap();
        let err = ad
            .discover_at("anna@example.com", &[start])
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Request(m) if m.contains("not sending credentials to collector.evil.test")),
            "{err:?}"
        );
        let seen = server.seen();
        assert_eq!(seen.len(), 1, "nothing was sent to the redirect's target");
        assert!(seen[0]
            .header("Host")
            .unwrap()
            .starts_with("ad.example.com"));
        server.assert_script_done();
    }

    // On the allowed hosts list, the redirect is followed (and gets the credentials).
    let server = FakeServer::start(vec![
        Answer::Plain(200, vec![], pox_redirect(evil)),
        Answer::Plain(
            200,
            vec![],
            pox_found("https://mail.evil.test/EWS/Exchange.asmx"),
        ),
    ])
    .await;
    let port = with_port(&server);
    let ad = Autodiscover::with_options(
        "svc",
        "SECRET",
        autodiscover_options(port, &["*.evil.test"]),
    )
    .unwrap();
    let start = url::Url::parse(&format!(
        "http://ad.example.com:{port}/autodiscover/autodiscover.xml"
    ))
    .unwrap();
    let found = ad.discover_at("anna@example.com", &[start]).await.unwrap();
    assert_eq!(
        found.ews_url.as_str(),
        "https://mail.evil.test/EWS/Exchange.asmx"
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen[1]
        .header("Host")
        .unwrap()
        .starts_with("collector.evil.test"));
    assert!(seen[1].header("Authorization").is_some());
    server.assert_script_done();
}
