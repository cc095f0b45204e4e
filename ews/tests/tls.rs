//! https against ews-sim serving TLS with a certificate from a test CA (made here with rcgen):
//! the custom CA is what makes it trusted, and Autodiscover walks the documented order down to
//! the DNS SRV record. Host names are pinned to loopback addresses, so no DNS is involved.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ews::autodiscover::{Autodiscover, AutodiscoverOptions, SrvRecord, SrvResolver};
use ews::client::{Auth, Client, ClientConfig, Target};
use ews::ops::GetFolder;
use ews::types::{DistinguishedFolder, FolderRef, Shape};
use ews::Error;
use ews_sim::server::{self, Running, SimConfig, TlsPem};

struct Pki {
    ca_pem: String,
    tls: TlsPem,
}

fn pki(names: &[&str]) -> Pki {
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
    Pki {
        ca_pem: ca_cert.pem(),
        tls: TlsPem {
            cert_chain: leaf_cert.pem().into_bytes(),
            key: leaf_key.serialize_pem().into_bytes(),
        },
    }
}

async fn tls_sim(pki: &Pki) -> Running {
    server::start(SimConfig {
        mailboxes: 2,
        tls: Some(pki.tls.clone()),
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn get_inbox() -> GetFolder {
    GetFolder {
        folders: vec![FolderRef::well_known(DistinguishedFolder::Inbox)],
        shape: Shape::id_only(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_ca_makes_the_server_trusted() {
    let pki = pki(&["mail.sim.test"]);
    let sim = tls_sim(&pki).await;
    let url = url::Url::parse(&format!(
        "https://mail.sim.test:{}/EWS/Exchange.asmx",
        sim.addr.port()
    ))
    .unwrap();
    let config = |ca: Option<Vec<u8>>| {
        let mut c = ClientConfig::new(
            url.clone(),
            Auth::Basic {
                username: "svc".into(),
                password: "secret".into(),
            },
        );
        c.ca_pem = ca;
        c.resolve = vec![("mail.sim.test".into(), loopback(sim.addr.port()))];
        c
    };
    let trusted = Client::new(config(Some(pki.ca_pem.clone().into_bytes()))).unwrap();
    let reply = trusted
        .call(&Target::impersonating("user1@example.com"), &get_inbox())
        .await
        .unwrap();
    assert!(reply.output[0].is_ok());

    let untrusted = Client::new(config(None)).unwrap();
    let err = untrusted
        .call(&Target::impersonating("user1@example.com"), &get_inbox())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Transient(_)),
        "an unknown issuer fails the connection: {err:?}"
    );

    let broken = Client::new(config(Some(b"not a certificate".to_vec()))).unwrap_err();
    assert!(
        matches!(&broken, Error::Request(m) if m.starts_with("custom CA")),
        "{broken:?}"
    );
    sim.stop().await;
}

/// An SRV resolver with one fixed answer that records what it was asked.
struct FakeSrv {
    answer: Vec<SrvRecord>,
    asked: Mutex<Vec<String>>,
}

impl SrvResolver for FakeSrv {
    fn lookup<'a>(
        &'a self,
        name: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<SrvRecord>> + Send + 'a>> {
        self.asked.lock().unwrap().push(name.to_string());
        let answer = self.answer.clone();
        Box::pin(async move { answer })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autodiscover_walks_the_order_down_to_srv() {
    let pki = pki(&["contoso.test", "autodiscover.contoso.test", "ad.srv.test"]);
    let sim = tls_sim(&pki).await;
    let port = sim.addr.port();
    // contoso.test and autodiscover.contoso.test lead nowhere (127.0.0.2:443 and :80 refuse);
    // only the SRV target reaches the simulator.
    let srv = Arc::new(FakeSrv {
        answer: vec![SrvRecord {
            priority: 0,
            weight: 10,
            port,
            target: "ad.srv.test".into(),
        }],
        asked: Mutex::default(),
    });
    let options = AutodiscoverOptions {
        allow_http: false,
        ca_pem: Some(pki.ca_pem.clone().into_bytes()),
        resolve: vec![
            (
                "contoso.test".into(),
                SocketAddr::from(([127, 0, 0, 2], 443)),
            ),
            (
                "autodiscover.contoso.test".into(),
                SocketAddr::from(([127, 0, 0, 2], 443)),
            ),
            ("ad.srv.test".into(), loopback(port)),
        ],
        srv: srv.clone(),
        ..AutodiscoverOptions::default()
    };
    // The SRV target is outside the mailbox's domains (example.com, contoso.test): no
    // credentials go there unless it is on the allowed hosts list.
    let ad = Autodiscover::with_options("user1@example.com", "password", options.clone()).unwrap();
    let refused = ad
        .discover("user1@example.com", Some("contoso.test"))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, Error::Request(m) if m.contains("not sending credentials to ad.srv.test")),
        "{refused:?}"
    );
    let options = AutodiscoverOptions {
        allowed_hosts: vec!["ad.srv.test".into()],
        ..options
    };
    srv.asked.lock().unwrap().clear();
    let ad = Autodiscover::with_options("user1@example.com", "password", options.clone()).unwrap();
    let found = ad
        .discover("user1@example.com", Some("contoso.test"))
        .await
        .unwrap();
    assert_eq!(
        srv.asked.lock().unwrap().as_slice(),
        ["_autodiscover._tcp.contoso.test"]
    );
    assert_eq!(
        found.endpoint.as_str(),
        format!("https://ad.srv.test:{port}/autodiscover/autodiscover.xml")
    );
    assert_eq!(
        found.ews_url.as_str(),
        format!("https://ad.srv.test:{port}/EWS/Exchange.asmx")
    );

    // When the domain itself answers, the first candidate (SOAP) wins and SRV is not asked.
    let srv2 = Arc::new(FakeSrv {
        answer: vec![],
        asked: Mutex::default(),
    });
    let direct = AutodiscoverOptions {
        resolve: vec![("contoso.test".into(), loopback(port))],
        srv: srv2.clone(),
        ..options.clone()
    };
    // The candidates use the standard port 443; the simulator listens elsewhere, so point the
    // candidate list at its port explicitly, in the documented order.
    let ad = Autodiscover::with_options("user1@example.com", "password", direct).unwrap();
    let ordered: Vec<url::Url> = Autodiscover::candidates("contoso.test")
        .into_iter()
        .map(|mut u| {
            u.set_port(Some(port)).unwrap();
            u
        })
        .collect();
    let found = ad.discover_at("user1@example.com", &ordered).await.unwrap();
    assert_eq!(found.endpoint.path(), "/autodiscover/autodiscover.svc");
    assert!(found.grouping_information.is_some());
    assert!(srv2.asked.lock().unwrap().is_empty());

    // Wrong credentials stop the search with Unauthorized instead of trying further.
    let ad = Autodiscover::with_options("user1@example.com", "wrong", options).unwrap();
    assert!(matches!(
        ad.discover("user1@example.com", Some("contoso.test")).await,
        Err(Error::Unauthorized(_))
    ));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autodiscover_with_ntlm_and_oauth2_over_https() {
    use ews::client::OAuth2Tokens;
    let pki = pki(&["ad.sim.test"]);
    let sim = tls_sim(&pki).await;
    let port = sim.addr.port();
    let options = AutodiscoverOptions {
        ca_pem: Some(pki.ca_pem.clone().into_bytes()),
        resolve: vec![("ad.sim.test".into(), loopback(port))],
        ..AutodiscoverOptions::default()
    };
    let endpoints = |file: &str| {
        vec![url::Url::parse(&format!("https://ad.sim.test:{port}/autodiscover/{file}")).unwrap()]
    };
    let token_url =
        url::Url::parse(&format!("https://ad.sim.test:{port}/sim/oauth2/token")).unwrap();
    let auths = [
        (
            "ntlm",
            Auth::Ntlm {
                username: r"EXAMPLE\svc".into(),
                password: "secret".into(),
            },
        ),
        (
            "oauth2",
            Auth::OAuth2(std::sync::Arc::new(OAuth2Tokens::new(
                token_url.clone(),
                "mailsync-app",
                "app-secret",
                "https://outlook.office365.com/.default",
            ))),
        ),
    ];
    for (name, auth) in auths {
        let ad = Autodiscover::with_auth(auth, options.clone()).unwrap();
        for file in ["autodiscover.svc", "autodiscover.xml"] {
            let found = ad
                .discover_at("user2@example.com", &endpoints(file))
                .await
                .unwrap_or_else(|e| panic!("{name} {file}: {e}"));
            assert_eq!(
                found.ews_url.as_str(),
                format!("https://ad.sim.test:{port}/EWS/Exchange.asmx"),
                "{name} {file}"
            );
        }
    }
    // Wrong NTLM credentials and a refused OAuth2 app stop the search as Unauthorized.
    for auth in [
        Auth::Ntlm {
            username: r"EXAMPLE\svc".into(),
            password: "wrong".into(),
        },
        Auth::OAuth2(std::sync::Arc::new(OAuth2Tokens::new(
            token_url,
            "mailsync-app",
            "wrong",
            "https://outlook.office365.com/.default",
        ))),
    ] {
        let ad = Autodiscover::with_auth(auth, options.clone()).unwrap();
        let err = ad
            .discover_at("user2@example.com", &endpoints("autodiscover.svc"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
    }
    sim.stop().await;
}
