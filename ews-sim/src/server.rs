//! The HTTP side: accounts and authentication, impersonation rules, Exchange-like throttling,
//! fault injection, request recording, GetStreamingEvents over a chunked body, Autodiscover,
//! and the JSON control API under /sim/ (see docs/ews-sim.md).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use bytes::Bytes;
use chrono::Utc;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::ops::{self, Ctx, Fault};
use crate::store::{self, Store};
use crate::xml::{self, esc, Node};

const NS_T: &str = "http://schemas.microsoft.com/exchange/services/2006/types";
const NS_M: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";
const NS_E: &str = "http://schemas.microsoft.com/exchange/services/2006/errors";

/// Which Exchange the simulator pretends to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Exchange 2016 on-premises (the default).
    Exchange2016,
    /// Exchange 2010 SP2: EWSMaxConcurrency 10, budgets per account.
    Exchange2010,
    /// Exchange Online: OAuth2 only, 10 open streams per account, 20 subscriptions per mailbox.
    Online,
}

impl Profile {
    /// Parses a profile name.
    pub fn parse(s: &str) -> Option<Profile> {
        match s {
            "exchange2016" => Some(Profile::Exchange2016),
            "exchange2010" => Some(Profile::Exchange2010),
            "online" => Some(Profile::Online),
            _ => None,
        }
    }

    fn server_version(self) -> &'static str {
        match self {
            Profile::Exchange2016 => {
                r#"MajorVersion="15" MinorVersion="1" MajorBuildNumber="2507" MinorBuildNumber="6" Version="V2017_07_11""#
            }
            Profile::Exchange2010 => {
                r#"MajorVersion="14" MinorVersion="3" MajorBuildNumber="123" MinorBuildNumber="4" Version="Exchange2010_SP2""#
            }
            Profile::Online => {
                r#"MajorVersion="15" MinorVersion="20" MajorBuildNumber="7698" MinorBuildNumber="10" Version="V2018_01_08""#
            }
        }
    }

    fn max_concurrency(self) -> u32 {
        if self == Profile::Exchange2010 {
            10
        } else {
            27
        }
    }

    fn max_streams(self) -> usize {
        if self == Profile::Online {
            10
        } else {
            3
        }
    }

    fn max_subscriptions(self) -> usize {
        if self == Profile::Online {
            20
        } else {
            5000
        }
    }
}

/// Exchange-like throttling settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ThrottleConfig {
    /// Throttling on.
    pub enabled: bool,
    /// Requests a budget holds when full.
    pub burst: f64,
    /// Requests per second the budget recharges.
    pub recharge_per_second: f64,
    /// Concurrent requests per budget (EWSMaxConcurrency); `None` takes the profile's.
    pub max_concurrency: Option<u32>,
    /// Answer over-budget requests with HTTP 503 instead of the ErrorServerBusy fault.
    pub use_503: bool,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            enabled: true,
            burst: 300.0,
            recharge_per_second: 100.0,
            max_concurrency: None,
            use_503: false,
        }
    }
}

/// A login.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    /// Primary SMTP address (also a login name; so is its local part).
    pub smtp: String,
    /// Password.
    pub password: String,
    /// Display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Holds the ApplicationImpersonation right.
    #[serde(default)]
    pub impersonation: bool,
    /// Mailboxes this login may open with its own identity (full access, delegate access):
    /// addresses, or `*` for every mailbox. Others answer ErrorAccessDenied.
    #[serde(default)]
    pub full_access: Vec<String>,
}

/// Reads a users file: a JSON array of users, or TOML with `[[users]]` tables.
pub fn read_users(path: &std::path::Path) -> Result<Vec<UserSpec>, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct UsersFile {
        users: Vec<UserSpec>,
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read users file {}: {e}", path.display()))?;
    let users = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a JSON array of users: {e}", path.display()))?
    } else {
        toml::from_str::<UsersFile>(&text)
            .map_err(|e| format!("{}: not a TOML file of [[users]]: {e}", path.display()))?
            .users
    };
    for (i, u) in users.iter().enumerate() {
        if !u.smtp.contains('@') {
            return Err(format!(
                "{}: users[{i}].smtp {:?} is not an e-mail address",
                path.display(),
                u.smtp
            ));
        }
    }
    Ok(users)
}

/// Simulator settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Where to listen (port 0 picks one).
    pub listen: SocketAddr,
    /// user1@example.com … userN@example.com with password `password`.
    pub mailboxes: usize,
    /// Further users (from a users file).
    pub users: Vec<UserSpec>,
    /// Service account login and password; holds the impersonation right.
    pub service_account: (String, String),
    /// OAuth2 app (client id, secret) allowed to get app-only tokens from /sim/oauth2/token.
    pub oauth_app: (String, String),
    /// The certificate (PEM) registered with the OAuth2 app: a client assertion signed with
    /// its key (RS256, `x5t` its SHA-1 thumbprint) proves the app instead of the secret.
    pub oauth_certificate: Option<Vec<u8>>,
    /// Write every request and response here.
    pub record: Option<PathBuf>,
    /// Which Exchange to be.
    pub profile: Profile,
    /// Throttling.
    pub throttle: ThrottleConfig,
    /// Heartbeat interval of streaming connections.
    pub heartbeat: Duration,
    /// A subscription no connection holds for this long expires.
    pub subscription_expiry: Duration,
    /// HTTP worker threads.
    pub workers: usize,
    /// How long one minute of a GetStreamingEvents ConnectionTimeout lasts (tests shorten it).
    pub minute: Duration,
    /// Open streaming connections per account (HangingConnectionLimit of the throttling
    /// policy); `None` takes the profile's default (3 on-premises, 10 online).
    pub max_streams: Option<usize>,
    /// Serve https with this certificate chain and key (PEM) instead of http.
    pub tls: Option<TlsPem>,
}

/// A certificate chain and its private key, PEM.
#[derive(Debug, Clone)]
pub struct TlsPem {
    /// Certificate chain, leaf first.
    pub cert_chain: Vec<u8>,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Vec<u8>,
}

fn tls_config(pem: &TlsPem) -> std::io::Result<rustls::ServerConfig> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string());
    let certs =
        rustls_pemfile::certs(&mut pem.cert_chain.as_slice()).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(bad("no certificate in the TLS certificate file"));
    }
    let key = rustls_pemfile::private_key(&mut pem.key.as_slice())?
        .ok_or_else(|| bad("no private key in the TLS key file"))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(&format!("TLS certificate and key do not fit: {e}")))
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: "127.0.0.1:0".parse().expect("literal address"),
            mailboxes: 0,
            users: Vec::new(),
            service_account: ("svc".into(), "secret".into()),
            oauth_app: ("mailsync-app".into(), "app-secret".into()),
            oauth_certificate: None,
            record: None,
            profile: Profile::Exchange2016,
            throttle: ThrottleConfig::default(),
            heartbeat: Duration::from_secs(15),
            subscription_expiry: Duration::from_secs(30 * 60),
            workers: 2,
            minute: Duration::from_secs(60),
            max_streams: None,
            tls: None,
        }
    }
}

#[derive(Debug, Clone)]
struct Account {
    password: String,
    smtp: String,
    impersonation: bool,
    /// Mailboxes it may open by delegate access (`*`: all).
    full_access: Vec<String>,
}

impl Account {
    fn may_open(&self, mailbox: &str) -> bool {
        self.full_access
            .iter()
            .any(|m| m == "*" || m.eq_ignore_ascii_case(mailbox))
    }
}

/// Which TCP connection a request came on (NTLM authenticates connections, not requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnId(u64);

/// The NTLM state of one connection.
#[derive(Debug, Clone)]
enum NtlmConn {
    /// A challenge was sent; the Authenticate message must answer it.
    Challenged([u8; 8], Instant),
    /// The handshake succeeded for this login (an `accounts` key).
    Authenticated(String, Instant),
}

/// Connections whose NTLM state has been unused this long are forgotten.
const NTLM_IDLE: Duration = Duration::from_secs(2 * 3600);

struct Budget {
    tokens: f64,
    last: Instant,
    in_flight: u32,
}

/// An injected fault.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct FaultRule {
    /// Only this operation (e.g. SyncFolderItems); any when absent.
    #[serde(default)]
    pub operation: Option<String>,
    /// Only requests for this mailbox.
    #[serde(default)]
    pub mailbox: Option<String>,
    /// Only requests made by this account (its login, `svc` or `svc@example.com`): a
    /// storm aimed at a service leaves the users' own requests alone, as a budget of the
    /// service account would.
    #[serde(default)]
    pub account: Option<String>,
    /// Answer with this EWS error code: as a SOAP fault for ErrorServerBusy and other
    /// request-level codes, inside the response message otherwise is not simulated: always a fault.
    #[serde(default)]
    pub error_code: Option<String>,
    /// BackOffMilliseconds for an ErrorServerBusy fault.
    #[serde(default)]
    pub back_off_ms: Option<u64>,
    /// Answer HTTP 503.
    #[serde(default)]
    pub http_503: bool,
    /// Answer a body that is not XML.
    #[serde(default)]
    pub malformed: bool,
    /// Delay before answering, in milliseconds.
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// How many requests it applies to; unlimited when absent.
    #[serde(default)]
    pub count: Option<u64>,
    /// Fraction of matching requests it applies to (0..1); all when absent.
    #[serde(default)]
    pub rate: Option<f64>,
}

/// Counters served by GET /sim/stats.
#[derive(Default)]
struct Stats {
    by_operation: BTreeMap<String, u64>,
    by_mailbox: BTreeMap<String, u64>,
    throttled: u64,
    faults_injected: u64,
    unauthorized: u64,
    /// NTLM challenges sent: one per handshake (a client that reuses its authenticated
    /// connections needs few).
    ntlm_handshakes: u64,
}

/// Shared state of a running simulator.
pub struct Sim {
    /// The store.
    pub store: Arc<Store>,
    config: Mutex<SimConfig>,
    accounts: Mutex<HashMap<String, Account>>,
    tokens: Mutex<HashMap<String, Instant>>,
    budgets: Mutex<HashMap<String, Budget>>,
    faults: Mutex<Vec<FaultRule>>,
    stats: Mutex<Stats>,
    record_seq: AtomicU64,
    streams_by_account: Mutex<HashMap<String, usize>>,
    open_streams: AtomicU64,
    conn_seq: AtomicU64,
    /// Bumped to close every open streaming connection.
    drop_streams: Notify,
    rng: Mutex<u64>,
    /// NTLM handshakes and authenticated connections.
    ntlm: Mutex<HashMap<ConnId, NtlmConn>>,
    /// Client assertion ids already used (a replayed assertion is refused), until they expire.
    assertion_ids: Mutex<HashMap<String, i64>>,
}

impl Sim {
    /// Builds the state for `cfg`, with its mailboxes.
    pub fn new(cfg: SimConfig) -> Arc<Sim> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let store = Arc::new(Store::new(nanos));
        let sim = Arc::new(Sim {
            store,
            // Users are consumed below; the stored config is cloned per request, so it keeps none.
            config: Mutex::new(SimConfig {
                users: Vec::new(),
                ..cfg.clone()
            }),
            accounts: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            budgets: Mutex::new(HashMap::new()),
            faults: Mutex::new(Vec::new()),
            stats: Mutex::new(Stats::default()),
            record_seq: AtomicU64::new(0),
            streams_by_account: Mutex::new(HashMap::new()),
            open_streams: AtomicU64::new(0),
            conn_seq: AtomicU64::new(0),
            drop_streams: Notify::new(),
            rng: Mutex::new(nanos | 1),
            ntlm: Mutex::new(HashMap::new()),
            assertion_ids: Mutex::new(HashMap::new()),
        });
        for i in 1..=cfg.mailboxes {
            sim.add_user(&UserSpec {
                smtp: format!("user{i}@example.com"),
                password: "password".into(),
                display_name: Some(format!("User {i}")),
                impersonation: false,
                full_access: Vec::new(),
            });
        }
        for u in &cfg.users {
            sim.add_user(u);
        }
        let (login, pw) = cfg.service_account.clone();
        let smtp = if login.contains('@') {
            login.clone()
        } else {
            format!("{login}@example.com")
        };
        sim.add_user(&UserSpec {
            smtp,
            password: pw,
            display_name: Some("Service Account".into()),
            impersonation: true,
            full_access: Vec::new(),
        });
        sim.accounts.lock().insert(
            login.to_ascii_lowercase(),
            Account {
                password: cfg.service_account.1.clone(),
                smtp: sim_smtp(&login),
                impersonation: true,
                full_access: Vec::new(),
            },
        );
        sim
    }

    /// Adds a user with a mailbox (idempotent).
    pub fn add_user(&self, u: &UserSpec) {
        let smtp = u.smtp.to_ascii_lowercase();
        self.store
            .add_mailbox(&smtp, u.display_name.as_deref().unwrap_or(&smtp));
        let acc = Account {
            password: u.password.clone(),
            smtp: smtp.clone(),
            impersonation: u.impersonation,
            full_access: u.full_access.clone(),
        };
        let mut accounts = self.accounts.lock();
        if let Some((local, _)) = smtp.split_once('@') {
            accounts
                .entry(local.to_string())
                .or_insert_with(|| acc.clone());
        }
        accounts.insert(smtp, acc);
    }

    fn random(&self) -> f64 {
        let mut s = self.rng.lock();
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        (*s >> 11) as f64 / (1u64 << 53) as f64
    }

    fn count(&self, op: &str, mailbox: &str) {
        let mut s = self.stats.lock();
        *s.by_operation.entry(op.to_string()).or_default() += 1;
        *s.by_mailbox.entry(mailbox.to_string()).or_default() += 1;
    }

    fn record(&self, op: &str, request: &[u8], response: &[u8]) {
        if let Some(path) = self.record_start(op, request) {
            let _ = std::fs::write(path, response);
        }
    }

    /// Writes the request file and returns the response file's path, for a response that is
    /// appended as it is sent (a stream of envelopes, recorded even if the stream is cut).
    fn record_start(&self, op: &str, request: &[u8]) -> Option<PathBuf> {
        let dir = self.config.lock().record.clone()?;
        let n = self.record_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let _ = std::fs::write(dir.join(format!("{n:06}-{op}-request.xml")), request);
        let path = dir.join(format!("{n:06}-{op}-response.xml"));
        let _ = std::fs::write(&path, b"");
        Some(path)
    }

    /// Takes a budget token for `key`; the back-off when there is none.
    fn acquire(&self, key: &str) -> Result<(), (Duration, bool)> {
        let (throttle, profile) = {
            let c = self.config.lock();
            (c.throttle.clone(), c.profile)
        };
        if !throttle.enabled {
            return Ok(());
        }
        let max_conc = throttle
            .max_concurrency
            .unwrap_or(profile.max_concurrency());
        let mut budgets = self.budgets.lock();
        let b = budgets.entry(key.to_string()).or_insert(Budget {
            tokens: throttle.burst,
            last: Instant::now(),
            in_flight: 0,
        });
        let now = Instant::now();
        b.tokens = (b.tokens
            + now.duration_since(b.last).as_secs_f64() * throttle.recharge_per_second)
            .min(throttle.burst);
        b.last = now;
        if b.in_flight >= max_conc {
            return Err((Duration::ZERO, true));
        }
        if b.tokens < 1.0 {
            let wait = (1.0 - b.tokens) / throttle.recharge_per_second.max(0.001);
            return Err((
                Duration::from_secs_f64(wait).max(Duration::from_millis(1)),
                false,
            ));
        }
        b.tokens -= 1.0;
        b.in_flight += 1;
        Ok(())
    }

    fn release(&self, key: &str) {
        if let Some(b) = self.budgets.lock().get_mut(key) {
            b.in_flight = b.in_flight.saturating_sub(1);
        }
    }

    fn matching_fault(&self, op: &str, mailbox: &str, caller: &str) -> Option<FaultRule> {
        let mut faults = self.faults.lock();
        let mut hit = None;
        for f in faults.iter_mut() {
            if f.operation.as_deref().is_some_and(|o| o != op)
                || f.mailbox
                    .as_deref()
                    .is_some_and(|m| !m.eq_ignore_ascii_case(mailbox))
                || f.account.as_deref().is_some_and(|a| sim_smtp(a) != caller)
            {
                continue;
            }
            if f.count == Some(0) {
                continue;
            }
            if let Some(r) = f.rate {
                if self.random() >= r {
                    continue;
                }
            }
            if let Some(c) = f.count.as_mut() {
                *c -= 1;
            }
            hit = Some(f.clone());
            break;
        }
        faults.retain(|f| f.count != Some(0));
        hit
    }
}

fn sim_smtp(login: &str) -> String {
    if login.contains('@') {
        login.to_ascii_lowercase()
    } else {
        format!("{}@example.com", login.to_ascii_lowercase())
    }
}

fn envelope(profile: Profile, body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Header><h:ServerVersionInfo {} xmlns:h=\"{NS_T}\" xmlns=\"{NS_T}\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"/></s:Header><s:Body xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\">{body}</s:Body></s:Envelope>",
        profile.server_version()
    )
}

fn fault_envelope(code: &str, message: &str, back_off: Option<Duration>) -> String {
    let xml = back_off
        .map(|b| format!("<t:MessageXml xmlns:t=\"{NS_T}\"><t:Value Name=\"BackOffMilliseconds\">{}</t:Value></t:MessageXml>", b.as_millis()))
        .unwrap_or_default();
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><s:Fault><faultcode xmlns:a=\"{NS_T}\">a:{code}</faultcode><faultstring xml:lang=\"en-US\">{m}</faultstring><detail><e:ResponseCode xmlns:e=\"{NS_E}\">{code}</e:ResponseCode><e:Message xmlns:e=\"{NS_E}\">{m}</e:Message>{xml}</detail></s:Fault></s:Body></s:Envelope>",
        m = esc(message)
    )
}

fn xml_response(status: StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/xml; charset=utf-8")
        .body(body)
}

fn unauthorized(profile: Profile) -> HttpResponse {
    let mut r = HttpResponse::Unauthorized();
    if profile == Profile::Online {
        r.insert_header(("WWW-Authenticate", "Bearer authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\""));
    } else {
        r.insert_header(("WWW-Authenticate", "NTLM"));
        r.append_header(("WWW-Authenticate", "Basic realm=\"ews-sim\""));
        r.append_header(("WWW-Authenticate", "Bearer"));
    }
    r.finish()
}

/// Why a request gets a 401.
#[derive(Debug)]
enum Refusal {
    /// No or wrong credentials.
    Unauthorized(Profile),
    /// The NTLM challenge (a Challenge message) of a handshake in progress.
    Challenge(Vec<u8>),
}

impl Refusal {
    fn response(self) -> HttpResponse {
        match self {
            Refusal::Unauthorized(profile) => unauthorized(profile),
            Refusal::Challenge(msg) => HttpResponse::Unauthorized()
                .insert_header((
                    "WWW-Authenticate",
                    format!(
                        "NTLM {}",
                        base64::engine::general_purpose::STANDARD.encode(msg)
                    ),
                ))
                .finish(),
        }
    }
}

/// Who is calling: an account, or an app-only token; or why it gets a 401 (no or wrong
/// credentials, or the NTLM challenge of a handshake in progress).
fn authenticate(sim: &Sim, req: &HttpRequest) -> Result<Account, Refusal> {
    let profile = sim.config.lock().profile;
    let refuse = || {
        sim.stats.lock().unauthorized += 1;
        Err(Refusal::Unauthorized(profile))
    };
    let conn = req.conn_data::<ConnId>().copied();
    let Some(h) = req
        .headers()
        .get("Authorization")
        .and_then(|h| h.to_str().ok())
    else {
        // NTLM authenticated this connection earlier.
        let login = conn.and_then(|c| match sim.ntlm.lock().get_mut(&c) {
            Some(NtlmConn::Authenticated(login, used)) => {
                *used = Instant::now();
                Some(login.clone())
            }
            _ => None,
        });
        return match login.and_then(|l| sim.accounts.lock().get(&l).cloned()) {
            Some(acc) if profile != Profile::Online => Ok(acc),
            _ => refuse(),
        };
    };
    if let Some(b) = h.strip_prefix("Basic ") {
        if profile == Profile::Online {
            return refuse();
        }
        let account = (|| {
            let decoded = String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()?,
            )
            .ok()?;
            let (user, pw) = decoded.split_once(':')?;
            let acc = sim.accounts.lock().get(&login_key(user)).cloned()?;
            (acc.password == pw).then_some(acc)
        })();
        return account.map_or_else(refuse, Ok);
    }
    if let Some(t) = h.strip_prefix("Bearer ") {
        let valid = sim
            .tokens
            .lock()
            .get(t.trim())
            .is_some_and(|exp| *exp > Instant::now());
        if !valid {
            return refuse();
        }
        return Ok(Account {
            password: String::new(),
            smtp: String::new(),
            impersonation: true,
            full_access: Vec::new(),
        });
    }
    if let Some(b) = h
        .strip_prefix("NTLM ")
        .or_else(|| h.strip_prefix("Negotiate "))
    {
        let (Some(conn), false) = (conn, profile == Profile::Online) else {
            return refuse();
        };
        let message = base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .ok()
            .and_then(|m| crate::ntlm::parse(&m));
        let mut states = sim.ntlm.lock();
        states.retain(|_, s| match s {
            NtlmConn::Challenged(_, at) | NtlmConn::Authenticated(_, at) => {
                at.elapsed() < NTLM_IDLE
            }
        });
        match message {
            Some(crate::ntlm::Message::Negotiate) => {
                let mut challenge = [0u8; 8];
                for b in &mut challenge {
                    *b = (sim.random() * 256.0) as u8;
                }
                states.insert(conn, NtlmConn::Challenged(challenge, Instant::now()));
                sim.stats.lock().ntlm_handshakes += 1;
                return Err(Refusal::Challenge(crate::ntlm::challenge_message(
                    challenge, "EXAMPLE",
                )));
            }
            Some(crate::ntlm::Message::Authenticate(auth)) => {
                let challenge = match states.remove(&conn) {
                    Some(NtlmConn::Challenged(c, _)) => c,
                    _ => {
                        drop(states);
                        return refuse();
                    }
                };
                let key = login_key(&auth.user);
                let account = sim.accounts.lock().get(&key).cloned();
                match account {
                    Some(acc) if crate::ntlm::verify_v2(&auth, challenge, &acc.password) => {
                        states.insert(conn, NtlmConn::Authenticated(key, Instant::now()));
                        return Ok(acc);
                    }
                    _ => {
                        drop(states);
                        return refuse();
                    }
                }
            }
            None => {
                drop(states);
                return refuse();
            }
        }
    }
    refuse()
}

/// The `accounts` key of a login name: lower case, without a `DOMAIN\` prefix.
fn login_key(user: &str) -> String {
    user.rsplit('\\')
        .next()
        .unwrap_or(user)
        .to_ascii_lowercase()
}

/// The mailbox a request without ExchangeImpersonation names in its body: the first
/// `DistinguishedFolderId/Mailbox`, the mailbox an item or folder id belongs to, or the one a
/// subscription (Unsubscribe) was made for. `None` when it names none (the caller's own).
fn named_mailbox(sim: &Sim, op: &Node) -> Option<String> {
    fn walk(sim: &Sim, n: &Node) -> Option<String> {
        match n.name.as_ref() {
            "DistinguishedFolderId" => {
                if let Some(smtp) = n.get("Mailbox").and_then(|m| m.text_of("EmailAddress")) {
                    return Some(smtp.trim().to_ascii_lowercase());
                }
            }
            "FolderId" | "ItemId" => {
                if let Some((_, index, _, _)) = n.attr("Id").and_then(store::decode_id) {
                    return sim.store.address_of(index);
                }
            }
            "SubscriptionId" => {
                return sim.store.subscriptions.mailbox_of(n.text.trim());
            }
            _ => {}
        }
        n.children.iter().find_map(|c| walk(sim, c))
    }
    op.children.iter().find_map(|c| walk(sim, c))
}

/// The EWS endpoint.
async fn ews(sim: web::Data<Arc<Sim>>, req: HttpRequest, body: Bytes) -> HttpResponse {
    let sim = sim.get_ref().clone();
    let cfg = sim.config.lock().clone();
    let account = match authenticate(&sim, &req) {
        Ok(a) => a,
        Err(refusal) => return refusal.response(),
    };
    let doc = match xml::parse(&body) {
        Ok(d) => d,
        Err(e) => {
            return xml_response(
                StatusCode::BAD_REQUEST,
                fault_envelope(
                    "ErrorInvalidRequest",
                    &format!("The request is invalid: {e}"),
                    None,
                ),
            )
        }
    };
    let header = doc.get("Header").cloned().unwrap_or_default();
    let Some(op) = doc.get("Body").and_then(|b| b.children.first()).cloned() else {
        return xml_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            fault_envelope(
                "ErrorInvalidRequest",
                "The request is invalid: no SOAP body.",
                None,
            ),
        );
    };
    let op_name = op.name.clone();
    let impersonate = header
        .get("ExchangeImpersonation")
        .and_then(|i| i.get("ConnectingSID"))
        .and_then(|c| {
            c.text_of("PrimarySmtpAddress")
                .or_else(|| c.text_of("SmtpAddress"))
                .or_else(|| c.text_of("PrincipalName"))
        })
        .map(str::to_ascii_lowercase);
    let answer = |status: StatusCode, text: String| {
        sim.record(&op_name, &body, text.as_bytes());
        xml_response(status, text)
    };
    // Whose mailbox: impersonation needs the right; without it the caller's own, or one the
    // body names that the caller has full access to (delegate access). A mailbox named without
    // that right stays the caller's own context, so its folders and items answer
    // ErrorAccessDenied one by one, as on Exchange.
    let delegate = if impersonate.is_none() {
        named_mailbox(&sim, &op)
            .filter(|m| *m != account.smtp && account.may_open(m) && sim.store.mailbox(m).is_some())
    } else {
        None
    };
    let target = match &impersonate {
        Some(_) if !account.impersonation => {
            return answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                fault_envelope(
                    "ErrorImpersonateUserDenied",
                    "The account does not have permission to impersonate the requested user.",
                    None,
                ),
            );
        }
        Some(t) => t.clone(),
        None if delegate.is_some() => delegate.clone().unwrap_or_default(),
        None if account.smtp.is_empty() => {
            return answer(StatusCode::INTERNAL_SERVER_ERROR, fault_envelope("ErrorMissingEmailAddress", "When making a request as an account that does not have a mailbox, you must specify the mailbox primary SMTP address for any distinguished folders.", None));
        }
        None => account.smtp.clone(),
    };
    let Some(mailbox) = sim.store.mailbox(&target) else {
        return answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            fault_envelope(
                "ErrorNonExistentMailbox",
                &format!("No mailbox with such guid or SMTP address {target}."),
                None,
            ),
        );
    };
    sim.count(&op_name, &target);

    let fault = sim.matching_fault(&op_name, &target, &account.smtp);
    if let Some(f) = &fault {
        sim.stats.lock().faults_injected += 1;
        let answers = f.http_503 || f.malformed || f.error_code.is_some();
        if let (Some(ms), true) = (f.latency_ms, answers) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if f.http_503 {
            return answer(StatusCode::SERVICE_UNAVAILABLE, String::new());
        }
        if f.malformed {
            return answer(StatusCode::OK, "<s:Envelope><oops".to_string());
        }
        if let Some(code) = &f.error_code {
            let back_off = (code == "ErrorServerBusy")
                .then(|| Duration::from_millis(f.back_off_ms.unwrap_or(30_000)));
            return answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                fault_envelope(code, &ops::message_text(code), back_off),
            );
        }
    }

    // Budgets are charged to the target mailbox under impersonation (2013+), else the caller.
    let budget_key = if impersonate.is_some() && cfg.profile != Profile::Exchange2010 {
        target.clone()
    } else {
        format!("account:{}", account.smtp)
    };
    let streaming = op_name == "GetStreamingEvents";
    if !streaming {
        if let Err((back_off, concurrency)) = sim.acquire(&budget_key) {
            sim.stats.lock().throttled += 1;
            if cfg.throttle.use_503 {
                return answer(StatusCode::SERVICE_UNAVAILABLE, String::new());
            }
            let text = if concurrency {
                fault_envelope(
                    "ErrorExceededConnectionCount",
                    "You have exceeded the maximum number of connections.",
                    None,
                )
            } else {
                fault_envelope(
                    "ErrorServerBusy",
                    "The server cannot service this request right now. Try again later.",
                    Some(back_off),
                )
            };
            return answer(StatusCode::INTERNAL_SERVER_ERROR, text);
        }
    }
    // A slow answer holds its concurrency slot while it is slow, as on Exchange.
    if let Some(ms) = fault.as_ref().and_then(|f| f.latency_ms) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if streaming {
        let stream_account = if account.smtp.is_empty() {
            "app".to_string()
        } else {
            account.smtp.clone()
        };
        return get_streaming_events(sim.clone(), &op, &stream_account, body.clone()).await;
    }
    let ctx = Ctx {
        store: &sim.store,
        mailbox,
        smtp: target.clone(),
        now: Utc::now(),
        find_limit: 1000,
        max_subscriptions: cfg.profile.max_subscriptions(),
        soft_delete_moves: cfg.profile != Profile::Exchange2010,
    };
    let result = ops::dispatch(&ctx, &op);
    sim.release(&budget_key);
    match result {
        Ok(resp) => answer(StatusCode::OK, envelope(cfg.profile, &resp)),
        Err(Fault { code, message }) => answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            fault_envelope(&code, &message, None),
        ),
    }
}

/// Decrements the open-stream count of an account when a stream ends.
struct StreamGuard {
    sim: Arc<Sim>,
    account: String,
    conn: u64,
    ids: Vec<String>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.sim.store.subscriptions.detach(self.conn, &self.ids);
        self.sim.open_streams.fetch_sub(1, Ordering::Relaxed);
        if let Some(n) = self.sim.streams_by_account.lock().get_mut(&self.account) {
            *n = n.saturating_sub(1);
        }
    }
}

fn stream_message(profile: Profile, inner: &str, error: Option<(&str, &[String])>) -> String {
    let msg = match error {
        None => format!("<m:GetStreamingEventsResponseMessage ResponseClass=\"Success\"><m:ResponseCode>NoError</m:ResponseCode>{inner}</m:GetStreamingEventsResponseMessage>"),
        Some((code, ids)) => {
            let list: String = ids.iter().map(|i| format!("<t:SubscriptionId>{}</t:SubscriptionId>", esc(i))).collect();
            format!(
                "<m:GetStreamingEventsResponseMessage ResponseClass=\"Error\"><m:MessageText>{}</m:MessageText><m:ResponseCode>{code}</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey><m:ErrorSubscriptionIds>{list}</m:ErrorSubscriptionIds></m:GetStreamingEventsResponseMessage>",
                esc(&ops::message_text(code))
            )
        }
    };
    envelope(profile, &format!("<m:GetStreamingEventsResponse xmlns:m=\"{NS_M}\" xmlns:t=\"{NS_T}\"><m:ResponseMessages>{msg}</m:ResponseMessages></m:GetStreamingEventsResponse>"))
}

fn notifications(events: &[(String, Vec<store::Event>)]) -> String {
    let mut s = String::from("<m:Notifications>");
    for (sub, evs) in events {
        // The wire form real Exchange sends: m:Notification (the schema says t:).
        s.push_str(&format!(
            "<m:Notification><t:SubscriptionId>{}</t:SubscriptionId>",
            esc(sub)
        ));
        for e in evs {
            s.push_str(&format!(
                "<t:{}><t:TimeStamp>{}</t:TimeStamp>",
                e.kind,
                store::fmt_time(e.at)
            ));
            let id = |s: &mut String, tag: &str, (i, ck): &(String, String)| {
                s.push_str(&format!(
                    "<t:{tag} Id=\"{}\" ChangeKey=\"{}\"/>",
                    esc(i),
                    esc(ck)
                ))
            };
            match (&e.item_id, &e.folder_id) {
                (Some(i), _) => id(&mut s, "ItemId", i),
                (None, Some(f)) => id(&mut s, "FolderId", f),
                (None, None) => {}
            }
            id(&mut s, "ParentFolderId", &e.parent);
            if let Some((old_id, old_parent)) = &e.old {
                id(
                    &mut s,
                    if e.item_id.is_some() {
                        "OldItemId"
                    } else {
                        "OldFolderId"
                    },
                    old_id,
                );
                id(&mut s, "OldParentFolderId", old_parent);
            }
            s.push_str(&format!("</t:{}>", e.kind));
        }
        s.push_str("</m:Notification>");
    }
    s.push_str("</m:Notifications>");
    s
}

async fn get_streaming_events(
    sim: Arc<Sim>,
    op: &Node,
    account: &str,
    request: Bytes,
) -> HttpResponse {
    let cfg = sim.config.lock().clone();
    let ids: Vec<String> = op
        .get("SubscriptionIds")
        .map(|l| {
            l.children
                .iter()
                .map(|c| c.text.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    let timeout: u64 = op
        .text_of("ConnectionTimeout")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let fail = |code: &str, msg: &str| {
        let text = fault_envelope(code, msg, None);
        sim.record("GetStreamingEvents", &request, text.as_bytes());
        xml_response(StatusCode::INTERNAL_SERVER_ERROR, text)
    };
    if !(1..=30).contains(&timeout) {
        return fail(
            "ErrorInvalidArgument",
            "ConnectionTimeout must be between 1 and 30 minutes.",
        );
    }
    if ids.is_empty() || ids.len() > 200 {
        return fail(
            "ErrorInvalidArgument",
            "Between 1 and 200 subscription ids are allowed on one connection.",
        );
    }
    {
        let mut open = sim.streams_by_account.lock();
        let n = open.entry(account.to_string()).or_default();
        if *n >= cfg.max_streams.unwrap_or(cfg.profile.max_streams()) {
            drop(open);
            sim.stats.lock().throttled += 1;
            return fail(
                "ErrorExceededConnectionCount",
                "You have exceeded the maximum number of connections.",
            );
        }
        *n += 1;
    }
    sim.open_streams.fetch_add(1, Ordering::Relaxed);
    let conn = sim.conn_seq.fetch_add(1, Ordering::Relaxed) + 1;
    let notify = Arc::new(Notify::new());
    let missing = sim.store.subscriptions.attach(conn, &ids, &notify);
    let mut live: Vec<String> = ids
        .iter()
        .filter(|i| !missing.contains(i))
        .cloned()
        .collect();
    let guard = StreamGuard {
        sim: sim.clone(),
        account: account.to_string(),
        conn,
        ids: live.clone(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let profile = cfg.profile;
    let heartbeat = cfg.heartbeat;
    let deadline = Instant::now() + cfg.minute * timeout as u32;
    let sim2 = sim.clone();
    let record = sim.record_start("GetStreamingEvents", &request);
    actix_web::rt::spawn(async move {
        let _guard = guard;
        let send = |text: String| {
            if let Some(path) = &record {
                use std::io::Write;
                if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(path) {
                    let _ = f.write_all(text.as_bytes());
                }
            }
            tx.try_send(Ok(Bytes::from(text))).is_ok() || !tx.is_closed()
        };
        if !missing.is_empty() {
            let text = stream_message(profile, "", Some(("ErrorSubscriptionNotFound", &missing)));
            send(text);
        }
        let served = !live.is_empty();
        let mut ok = served;
        if ok {
            ok = send(stream_message(
                profile,
                "<m:ConnectionStatus>OK</m:ConnectionStatus>",
                None,
            ));
        }
        let mut next_beat = Instant::now() + heartbeat;
        while ok {
            let taken = sim2.store.subscriptions.take(conn, &live);
            let (events, gone) = (taken.events, taken.gone);
            if !taken.moved.is_empty() {
                // Taken over by a newer connection: this one no longer serves them, and
                // ends once it serves none.
                live.retain(|id| !taken.moved.contains(id));
                if live.is_empty() {
                    break;
                }
            }
            if !gone.is_empty() {
                send(stream_message(
                    profile,
                    "",
                    Some(("ErrorSubscriptionNotFound", &gone)),
                ));
                break;
            }
            if !events.is_empty() {
                ok = send(stream_message(profile, &notifications(&events), None));
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if now >= next_beat {
                ok = send(stream_message(
                    profile,
                    "<m:ConnectionStatus>OK</m:ConnectionStatus>",
                    None,
                ));
                next_beat = now + heartbeat;
                continue;
            }
            let wake = next_beat.min(deadline);
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
                _ = sim2.drop_streams.notified() => {
                    // Dropped connection (fault injection): end without Closed, as a network cut does.
                    return;
                }
                _ = tx.closed() => break,
            }
        }
        if !tx.is_closed() && served {
            send(stream_message(
                profile,
                "<m:ConnectionStatus>Closed</m:ConnectionStatus>",
                None,
            ));
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    HttpResponse::Ok()
        .content_type("text/xml; charset=utf-8")
        .streaming(body)
}

fn host_base(req: &HttpRequest) -> String {
    let info = req.connection_info();
    format!("{}://{}", info.scheme(), info.host())
}

/// POX Autodiscover.
async fn autodiscover_xml(sim: web::Data<Arc<Sim>>, req: HttpRequest, body: Bytes) -> HttpResponse {
    if let Err(refusal) = authenticate(&sim, &req) {
        return refusal.response();
    }
    let email = xml::parse(&body).ok().and_then(|d| {
        d.get("Request")
            .and_then(|r| r.text_of("EMailAddress").map(str::to_ascii_lowercase))
    });
    let ns = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006";
    let nsa = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a";
    let text = match email.as_deref().and_then(|e| sim.store.mailbox(e).map(|m| (e.to_string(), m))) {
        Some((e, m)) => {
            let name = m.lock().display_name.clone();
            let url = format!("{}/EWS/Exchange.asmx", host_base(&req));
            format!(
                "<?xml version=\"1.0\" encoding=\"utf-8\"?><Autodiscover xmlns=\"{ns}\"><Response xmlns=\"{nsa}\"><User><DisplayName>{}</DisplayName><AutoDiscoverSMTPAddress>{}</AutoDiscoverSMTPAddress></User><Account><AccountType>email</AccountType><Action>settings</Action><Protocol><Type>EXCH</Type><EwsUrl>{url}</EwsUrl></Protocol><Protocol><Type>EXPR</Type><EwsUrl>{url}</EwsUrl></Protocol></Account></Response></Autodiscover>",
                esc(&name),
                esc(&e)
            )
        }
        None => format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><Autodiscover xmlns=\"{ns}\"><Response><Error Time=\"{}\" Id=\"1\"><ErrorCode>500</ErrorCode><Message>The e-mail address cannot be found.</Message><DebugData/></Error></Response></Autodiscover>",
            Utc::now().format("%H:%M:%S")
        ),
    };
    xml_response(StatusCode::OK, text)
}

/// SOAP Autodiscover: GetUserSettings.
async fn autodiscover_svc(sim: web::Data<Arc<Sim>>, req: HttpRequest, body: Bytes) -> HttpResponse {
    if let Err(refusal) = authenticate(&sim, &req) {
        return refusal.response();
    }
    let Ok(doc) = xml::parse(&body) else {
        return xml_response(
            StatusCode::BAD_REQUEST,
            fault_envelope("ErrorInvalidRequest", "The request is not XML.", None),
        );
    };
    let request = doc
        .get("Body")
        .and_then(|b| b.get("GetUserSettingsRequestMessage"))
        .and_then(|m| m.get("Request"));
    let users: Vec<String> = request
        .and_then(|r| r.get("Users"))
        .map(|u| {
            u.all("User")
                .filter_map(|u| u.text_of("Mailbox"))
                .map(str::to_ascii_lowercase)
                .collect()
        })
        .unwrap_or_default();
    let wanted: HashSet<String> = request
        .and_then(|r| r.get("RequestedSettings"))
        .map(|s| {
            s.children
                .iter()
                .map(|c| c.text.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    let url = format!("{}/EWS/Exchange.asmx", host_base(&req));
    let mut responses = String::new();
    for u in &users {
        match sim.store.mailbox(u) {
            Some(m) => {
                let index = m.lock().index;
                let mut settings = String::new();
                for (name, value) in [("ExternalEwsUrl", url.clone()), ("InternalEwsUrl", url.clone()), ("GroupingInformation", format!("SIM-{:02}", index % 8))] {
                    if wanted.contains(name) {
                        settings.push_str(&format!("<UserSetting i:type=\"StringSetting\"><Name>{name}</Name><Value>{}</Value></UserSetting>", esc(&value)));
                    }
                }
                responses.push_str(&format!("<UserResponse><ErrorCode>NoError</ErrorCode><ErrorMessage>No error.</ErrorMessage><RedirectTarget i:nil=\"true\"/><UserSettingErrors/><UserSettings>{settings}</UserSettings></UserResponse>"));
            }
            None => responses.push_str("<UserResponse><ErrorCode>InvalidUser</ErrorCode><ErrorMessage>Invalid user.</ErrorMessage><RedirectTarget i:nil=\"true\"/><UserSettingErrors/><UserSettings/></UserResponse>"),
        }
    }
    let text = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:a=\"http://www.w3.org/2005/08/addressing\"><s:Header><a:Action s:mustUnderstand=\"1\">http://schemas.microsoft.com/exchange/2010/Autodiscover/Autodiscover/GetUserSettingsResponse</a:Action></s:Header><s:Body><GetUserSettingsResponseMessage xmlns=\"http://schemas.microsoft.com/exchange/2010/Autodiscover\"><Response xmlns:i=\"http://www.w3.org/2001/XMLSchema-instance\"><ErrorCode>NoError</ErrorCode><ErrorMessage/><UserResponses>{responses}</UserResponses></Response></GetUserSettingsResponseMessage></s:Body></s:Envelope>"
    );
    xml_response(StatusCode::OK, text)
}

// ---------------------------------------------------------------------------------------
// Control API (/sim/...): act as a mailbox user, inject faults, read statistics.

#[derive(Serialize)]
struct ApiError {
    error: String,
}

fn api_err(status: StatusCode, msg: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(ApiError { error: msg.into() })
}

/// A folder by distinguished name, path of display names from msgfolderroot
/// (`inbox/Projekte`), or folder id.
fn resolve_folder(m: &mut store::Mailbox, spec: &str) -> Option<u64> {
    if let Some((b'F', idx, key, _)) = store::decode_id(spec) {
        return (idx == m.index && m.folders.contains_key(&key)).then_some(key);
    }
    let mut parts = spec.split('/').filter(|p| !p.is_empty());
    let first = parts.next()?;
    let mut cur = m.distinguished_folder(first).or_else(|| {
        m.folders
            .values()
            .find(|f| f.parent == Some(store::MSG_ROOT) && f.name.eq_ignore_ascii_case(first))
            .map(|f| f.key)
    })?;
    for p in parts {
        cur = m
            .folders
            .values()
            .find(|f| f.parent == Some(cur) && f.name.eq_ignore_ascii_case(p))
            .map(|f| f.key)?;
    }
    Some(cur)
}

/// Body of POST /sim/mailboxes/{smtp}/items.
#[derive(Deserialize)]
pub struct NewItem {
    /// Folder (see `resolve_folder`).
    pub folder: String,
    /// Element name: Message, CalendarItem, Contact, Task.
    #[serde(rename = "type")]
    pub kind: String,
    /// Simple properties: element name → text.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// Raw EWS property elements (t: prefix optional), for anything richer.
    #[serde(default)]
    pub xml: Option<String>,
    /// Full MIME message, for messages (stored base64, as CreateItem does).
    #[serde(default)]
    pub mime: Option<String>,
}

fn props_from(
    fields: &BTreeMap<String, String>,
    raw: Option<&str>,
    mime: Option<&str>,
) -> Result<Vec<Node>, String> {
    let mut props: Vec<Node> = Vec::new();
    if let Some(m) = mime {
        props.push(Node::leaf(
            "MimeContent",
            &base64::engine::general_purpose::STANDARD.encode(m.as_bytes()),
        ));
    }
    for (k, v) in fields {
        if k == "Body" {
            let mut b = Node::leaf("Body", v);
            b.attrs.push(("BodyType".into(), "Text".into()));
            props.push(b);
        } else if k == "Categories" {
            let mut c = Node::leaf("Categories", "");
            c.children = v
                .split(',')
                .map(|x| Node::leaf("String", x.trim()))
                .collect();
            props.push(c);
        } else {
            props.push(Node::leaf(k, v));
        }
    }
    if let Some(x) = raw {
        let wrapped = format!("<w xmlns:t=\"{NS_T}\">{x}</w>");
        let n = xml::parse(wrapped.as_bytes()).map_err(|e| format!("xml: {e}"))?;
        props.extend(n.children);
    }
    Ok(props)
}

#[derive(Serialize)]
struct ItemRef {
    id: String,
    change_key: String,
}

async fn api_create_item(
    sim: web::Data<Arc<Sim>>,
    path: web::Path<String>,
    body: web::Json<NewItem>,
) -> HttpResponse {
    let Some(mb) = sim.store.mailbox(&path) else {
        return api_err(StatusCode::NOT_FOUND, format!("no mailbox {path}"));
    };
    let props = match props_from(&body.fields, body.xml.as_deref(), body.mime.as_deref()) {
        Ok(p) => p,
        Err(e) => return api_err(StatusCode::BAD_REQUEST, e),
    };
    sim.store.with_mailbox(&mb, |m| {
        let Some(folder) = resolve_folder(m, &body.folder) else {
            return api_err(StatusCode::NOT_FOUND, format!("no folder {}", body.folder));
        };
        match m.create_item(folder, &body.kind, props, Utc::now()) {
            Ok(k) => {
                let (id, change_key) = m.item_id(&m.items[&k]);
                HttpResponse::Created().json(ItemRef { id, change_key })
            }
            Err(code) => api_err(StatusCode::BAD_REQUEST, code),
        }
    })
}

/// Body of PATCH /sim/mailboxes/{smtp}/items/{id}.
#[derive(Deserialize)]
pub struct ItemPatch {
    /// Properties to set.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// Raw property elements to set.
    #[serde(default)]
    pub xml: Option<String>,
    /// Property names to delete.
    #[serde(default)]
    pub delete: Vec<String>,
}

fn api_item_key(m: &store::Mailbox, id: &str) -> Option<u64> {
    match store::decode_id(id) {
        Some((b'I', idx, key, folder)) if idx == m.index => m
            .items
            .get(&key)
            .filter(|i| i.folder == folder)
            .map(|_| key),
        _ => None,
    }
}

async fn api_update_item(
    sim: web::Data<Arc<Sim>>,
    path: web::Path<(String, String)>,
    body: web::Json<ItemPatch>,
) -> HttpResponse {
    let (smtp, id) = path.into_inner();
    let Some(mb) = sim.store.mailbox(&smtp) else {
        return api_err(StatusCode::NOT_FOUND, format!("no mailbox {smtp}"));
    };
    let props = match props_from(&body.fields, body.xml.as_deref(), None) {
        Ok(p) => p,
        Err(e) => return api_err(StatusCode::BAD_REQUEST, e),
    };
    sim.store.with_mailbox(&mb, |m| {
        let Some(key) = api_item_key(m, &id) else {
            return api_err(StatusCode::NOT_FOUND, "no such item");
        };
        let delete = body
            .delete
            .iter()
            .map(|d| store::PropPath::Field(d.clone()))
            .collect();
        match m.update_item(key, props, delete, Utc::now()) {
            Ok(_) => {
                let (id, change_key) = m.item_id(&m.items[&key]);
                HttpResponse::Ok().json(ItemRef { id, change_key })
            }
            Err(code) => api_err(StatusCode::BAD_REQUEST, code),
        }
    })
}

#[derive(Deserialize)]
struct PoisonBody {
    /// The response code every UpdateItem of the item gets (ErrorCorruptData,
    /// ErrorInvalidPropertySet, ErrorItemCorrupt, ErrorAccessDenied); none: healed.
    #[serde(default)]
    code: Option<String>,
}

async fn api_poison_item(
    sim: web::Data<Arc<Sim>>,
    path: web::Path<(String, String)>,
    body: web::Json<PoisonBody>,
) -> HttpResponse {
    let (smtp, id) = path.into_inner();
    let Some(mb) = sim.store.mailbox(&smtp) else {
        return api_err(StatusCode::NOT_FOUND, format!("no mailbox {smtp}"));
    };
    sim.store.with_mailbox(&mb, |m| match api_item_key(m, &id) {
        Some(k) => {
            match body.code.clone() {
                Some(code) => m.poisoned.insert(k, code),
                None => m.poisoned.remove(&k),
            };
            HttpResponse::NoContent().finish()
        }
        None => api_err(StatusCode::NOT_FOUND, "no such item"),
    })
}

async fn api_delete_item(
    sim: web::Data<Arc<Sim>>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (smtp, id) = path.into_inner();
    let Some(mb) = sim.store.mailbox(&smtp) else {
        return api_err(StatusCode::NOT_FOUND, format!("no mailbox {smtp}"));
    };
    sim.store.with_mailbox(&mb, |m| {
        match api_item_key(m, &id).map(|k| m.delete_item(k)) {
            Some(Ok(())) => HttpResponse::NoContent().finish(),
            _ => api_err(StatusCode::NOT_FOUND, "no such item"),
        }
    })
}

#[derive(Deserialize)]
struct MoveBody {
    folder: String,
}

async fn api_move_item(
    sim: web::Data<Arc<Sim>>,
    path: web::Path<(String, String)>,
    body: web::Json<MoveBody>,
) -> HttpResponse {
    let (smtp, id) = path.into_inner();
    let Some(mb) = sim.store.mailbox(&smtp) else {
        return api_err(StatusCode::NOT_FOUND, format!("no mailbox {smtp}"));
    };
    sim.store.with_mailbox(&mb, |m| {
        let (Some(key), Some(to)) = (api_item_key(m, &id), resolve_folder(m, &body.folder)) else {
            return api_err(StatusCode::NOT_FOUND, "no such item or folder");
        };
        match m.move_item(key, to) {
            Ok(()) => {
                let (id, change_key) = m.item_id(&m.items[&key]);
                HttpResponse::Ok().json(ItemRef { id, change_key })
            }
            Err(code) => api_err(StatusCode::BAD_REQUEST, code),
        }
    })
}

#[derive(Deserialize)]
struct ReadBody {
    is_read: bool,
}

async fn api_mark_read(
    sim: web::Data<Arc<Sim>>,
    path: web::Path<(String, String)>,
    body: web::Json<ReadBody>,
) -> HttpResponse {
    let (smtp, id) = path.into_inner();
    let Some(mb) = sim.store.mailbox(&smtp) else {
        return api_err(StatusCode::NOT_FOUND, format!("no mailbox {smtp}"));
    };
    sim.store.with_mailbox(&mb, |m| {
        let Some(key) = api_item_key(m, &id) else {
            return api_err(StatusCode::NOT_FOUND, "no such item");
        };
        match m.update_item(
            key,
            vec![Node::leaf(
                "IsRead",
                if body.is_read { "true" } else { "false" },
            )],
            vec![],
            Utc::now(),
        ) {
            Ok(_) => {
                let (id, change_key) = m.item_id(&m.items[&key]);
                HttpResponse::Ok().json(ItemRef { id, change_key })
            }
            Err(code) => api_err(StatusCode::BAD_REQUEST, code),
        }
    })
}

#[derive(Serialize)]
struct ItemSummary {
    id: String,
    change_key: String,
    kind: String,
    folder: String,
    properties: BTreeMap<String, String>,
    extended: BTreeMap<String, String>,
}

async fn api_list_items(
    sim: web::Data<Arc<Sim>>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (smtp, folder) = path.into_inner();
    let Some(mb) = sim.store.mailbox(&smtp) else {
        return api_err(StatusCode::NOT_FOUND, format!("no mailbox {smtp}"));
    };
    let folder = folder.replace('|', "/");
    sim.store.with_mailbox(&mb, |m| {
        let Some(f) = resolve_folder(m, &folder) else {
            return api_err(StatusCode::NOT_FOUND, format!("no folder {folder}"));
        };
        let mut items: Vec<&store::Item> = m.items.values().filter(|i| i.folder == f).collect();
        items.sort_by_key(|i| i.key);
        let out: Vec<ItemSummary> = items
            .into_iter()
            .map(|i| {
                let (id, change_key) = m.item_id(i);
                ItemSummary {
                    id,
                    change_key,
                    kind: i.kind.to_string(),
                    folder: folder.clone(),
                    properties: i
                        .props
                        .values()
                        .filter(|p| p.node.children.is_empty())
                        .map(|p| (p.node.name.to_string(), p.node.text.clone()))
                        .collect(),
                    extended: i
                        .ext
                        .iter()
                        .map(|((s, n), p)| {
                            (
                                format!("{s}/{n}"),
                                p.node.text_of("Value").unwrap_or_default().to_string(),
                            )
                        })
                        .collect(),
                }
            })
            .collect();
        HttpResponse::Ok().json(out)
    })
}

#[derive(Deserialize)]
struct NewFolder {
    parent: String,
    name: String,
    #[serde(default)]
    class: Option<String>,
}

async fn api_create_folder(
    sim: web::Data<Arc<Sim>>,
    path: web::Path<String>,
    body: web::Json<NewFolder>,
) -> HttpResponse {
    let Some(mb) = sim.store.mailbox(&path) else {
        return api_err(StatusCode::NOT_FOUND, format!("no mailbox {path}"));
    };
    sim.store.with_mailbox(&mb, |m| {
        let Some(parent) = resolve_folder(m, &body.parent) else {
            return api_err(StatusCode::NOT_FOUND, "no parent folder");
        };
        match m.create_folder(
            parent,
            &body.name,
            body.class.as_deref().unwrap_or("IPF.Note"),
        ) {
            Ok(k) => HttpResponse::Created().json(serde_json::json!({ "id": m.folder_id(k).0 })),
            Err(code) => api_err(StatusCode::BAD_REQUEST, code),
        }
    })
}

#[derive(Deserialize)]
struct FolderPatch {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    parent: Option<String>,
}

async fn api_update_folder(
    sim: web::Data<Arc<Sim>>,
    path: web::Path<(String, String)>,
    body: web::Json<FolderPatch>,
) -> HttpResponse {
    let (smtp, folder) = path.into_inner();
    let Some(mb) = sim.store.mailbox(&smtp) else {
        return api_err(StatusCode::NOT_FOUND, format!("no mailbox {smtp}"));
    };
    sim.store.with_mailbox(&mb, |m| {
        let Some(f) = resolve_folder(m, &folder.replace('|', "/")) else {
            return api_err(StatusCode::NOT_FOUND, "no folder");
        };
        let parent = match &body.parent {
            Some(p) => match resolve_folder(m, p) {
                Some(k) => Some(k),
                None => return api_err(StatusCode::NOT_FOUND, "no parent folder"),
            },
            None => None,
        };
        match m.update_folder(f, body.name.as_deref(), parent) {
            Ok(()) => HttpResponse::Ok().json(serde_json::json!({ "id": m.folder_id(f).0 })),
            Err(code) => api_err(StatusCode::BAD_REQUEST, code),
        }
    })
}

async fn api_delete_folder(
    sim: web::Data<Arc<Sim>>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (smtp, folder) = path.into_inner();
    let Some(mb) = sim.store.mailbox(&smtp) else {
        return api_err(StatusCode::NOT_FOUND, format!("no mailbox {smtp}"));
    };
    sim.store.with_mailbox(&mb, |m| {
        match resolve_folder(m, &folder.replace('|', "/")).map(|f| m.delete_folder(f)) {
            Some(Ok(())) => HttpResponse::NoContent().finish(),
            Some(Err(code)) => api_err(StatusCode::BAD_REQUEST, code),
            None => api_err(StatusCode::NOT_FOUND, "no folder"),
        }
    })
}

async fn api_add_mailbox(sim: web::Data<Arc<Sim>>, body: web::Json<UserSpec>) -> HttpResponse {
    sim.add_user(&body);
    HttpResponse::Created().json(serde_json::json!({ "smtp": body.smtp.to_ascii_lowercase() }))
}

async fn api_recreate_mailbox(sim: web::Data<Arc<Sim>>, path: web::Path<String>) -> HttpResponse {
    if sim.store.recreate_mailbox(&path) {
        HttpResponse::Ok().json(serde_json::json!({ "recreated": path.to_ascii_lowercase() }))
    } else {
        HttpResponse::NotFound().json(serde_json::json!({ "error": format!("no mailbox {path}") }))
    }
}

async fn api_add_fault(sim: web::Data<Arc<Sim>>, body: web::Json<FaultRule>) -> HttpResponse {
    sim.faults.lock().push(body.into_inner());
    HttpResponse::Created().finish()
}

async fn api_clear_faults(sim: web::Data<Arc<Sim>>) -> HttpResponse {
    sim.faults.lock().clear();
    HttpResponse::NoContent().finish()
}

async fn api_drop_streams(sim: web::Data<Arc<Sim>>) -> HttpResponse {
    let n = sim.open_streams.load(Ordering::Relaxed);
    sim.drop_streams.notify_waiters();
    HttpResponse::Ok().json(serde_json::json!({ "dropped": n }))
}

#[derive(Deserialize, Default)]
struct MailboxScope {
    #[serde(default)]
    mailbox: Option<String>,
    #[serde(default)]
    folder: Option<String>,
}

async fn api_expire_subscriptions(
    sim: web::Data<Arc<Sim>>,
    body: Option<web::Json<MailboxScope>>,
) -> HttpResponse {
    let scope = body.map(|b| b.into_inner()).unwrap_or_default();
    let n = sim.store.subscriptions.expire_mailbox(
        scope
            .mailbox
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
    );
    HttpResponse::Ok().json(serde_json::json!({ "expired": n }))
}

async fn api_invalidate_states(
    sim: web::Data<Arc<Sim>>,
    body: web::Json<MailboxScope>,
) -> HttpResponse {
    let Some(smtp) = &body.mailbox else {
        return api_err(StatusCode::BAD_REQUEST, "mailbox is required");
    };
    let Some(mb) = sim.store.mailbox(smtp) else {
        return api_err(StatusCode::NOT_FOUND, format!("no mailbox {smtp}"));
    };
    let mut m = mb.lock();
    match &body.folder {
        Some(f) => match resolve_folder(&mut m, f) {
            Some(k) => {
                if let Some(folder) = m.folders.get_mut(&k) {
                    folder.epoch += 1;
                }
            }
            None => return api_err(StatusCode::NOT_FOUND, "no folder"),
        },
        None => {
            m.hierarchy_epoch += 1;
            for f in m.folders.values_mut() {
                f.epoch += 1;
            }
        }
    }
    HttpResponse::NoContent().finish()
}

async fn api_throttle(sim: web::Data<Arc<Sim>>, body: web::Json<ThrottleConfig>) -> HttpResponse {
    sim.config.lock().throttle = body.into_inner();
    sim.budgets.lock().clear();
    HttpResponse::NoContent().finish()
}

#[derive(Deserialize)]
struct StreamSettings {
    #[serde(default)]
    heartbeat_ms: Option<u64>,
    #[serde(default)]
    subscription_expiry_ms: Option<u64>,
}

async fn api_streaming(sim: web::Data<Arc<Sim>>, body: web::Json<StreamSettings>) -> HttpResponse {
    let mut c = sim.config.lock();
    if let Some(h) = body.heartbeat_ms {
        c.heartbeat = Duration::from_millis(h.max(10));
    }
    if let Some(e) = body.subscription_expiry_ms {
        c.subscription_expiry = Duration::from_millis(e);
    }
    HttpResponse::NoContent().finish()
}

async fn api_stats(sim: web::Data<Arc<Sim>>) -> HttpResponse {
    let s = sim.stats.lock();
    HttpResponse::Ok().json(serde_json::json!({
        "requests_by_operation": s.by_operation,
        "requests_by_mailbox": s.by_mailbox,
        "requests_total": s.by_operation.values().sum::<u64>(),
        "throttled": s.throttled,
        "faults_injected": s.faults_injected,
        "unauthorized": s.unauthorized,
        "ntlm_handshakes": s.ntlm_handshakes,
        "open_streams": sim.open_streams.load(Ordering::Relaxed),
        "subscriptions": sim.store.subscriptions.len(),
        "mailboxes": sim.store.len(),
    }))
}

async fn api_reset_stats(sim: web::Data<Arc<Sim>>) -> HttpResponse {
    *sim.stats.lock() = Stats::default();
    HttpResponse::NoContent().finish()
}

#[derive(Deserialize)]
struct TokenRequest {
    grant_type: String,
    client_id: String,
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default)]
    client_assertion_type: Option<String>,
    #[serde(default)]
    client_assertion: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

/// `client_assertion_type` of a JWT client assertion (RFC 7523).
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Clock skew tolerated on `nbf` and `exp`, as the Microsoft identity platform does.
const ASSERTION_SKEW_SECONDS: i64 = 300;

fn invalid_client(description: &str) -> HttpResponse {
    HttpResponse::Unauthorized().json(serde_json::json!({
        "error": "invalid_client",
        "error_description": description,
    }))
}

/// Checks a client assertion the way the Microsoft identity platform does: an RS256 JWT whose
/// `x5t` names the app's registered certificate, signed with that certificate's key, for this
/// token endpoint (`aud`), issued by and about the app (`iss` = `sub` = client id), with a
/// `jti` not seen before, not yet expired and already valid. The error is the reason.
fn verify_assertion(
    sim: &Sim,
    assertion: &str,
    client_id: &str,
    audience: &str,
) -> Result<(), &'static str> {
    use rustls::pki_types::CertificateDer;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let certificate = sim
        .config
        .lock()
        .oauth_certificate
        .clone()
        .ok_or("AADSTS700027: no certificate is registered for the application")?;
    let der: CertificateDer<'static> = rustls_pemfile::certs(&mut certificate.as_slice())
        .next()
        .and_then(Result::ok)
        .ok_or("the registered certificate is not PEM")?;
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return Err("AADSTS50027: the client assertion is not a JWT");
    };
    let json = |part: &str| -> Option<serde_json::Value> {
        serde_json::from_slice(&b64.decode(part).ok()?).ok()
    };
    let header = json(header).ok_or("AADSTS50027: the JWT header is not base64url JSON")?;
    let claims = json(claims).ok_or("AADSTS50027: the JWT claims are not base64url JSON")?;
    if header["alg"] != "RS256" {
        return Err("AADSTS5002738: the client assertion is not signed with RS256");
    }
    let thumbprint = b64.encode(
        ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der.as_ref()).as_ref(),
    );
    if header["x5t"].as_str() != Some(thumbprint.as_str()) {
        return Err("AADSTS700027: the x5t thumbprint names no registered certificate");
    }
    let signature = b64
        .decode(signature)
        .map_err(|_| "AADSTS50027: the JWT signature is not base64url")?;
    let signing_input = &assertion[..assertion.rfind('.').unwrap_or(0)];
    let cert = webpki::EndEntityCert::try_from(&der)
        .map_err(|_| "the registered certificate cannot be read")?;
    cert.verify_signature(
        webpki::ring::RSA_PKCS1_2048_8192_SHA256,
        signing_input.as_bytes(),
        &signature,
    )
    .map_err(|_| "AADSTS700027: the client assertion signature does not verify with the registered certificate")?;
    if claims["aud"].as_str() != Some(audience) {
        return Err("AADSTS700016: the client assertion audience (aud) is not this token endpoint");
    }
    if claims["iss"].as_str() != Some(client_id) || claims["sub"].as_str() != Some(client_id) {
        return Err("AADSTS700023: the client assertion iss and sub must both be the client id");
    }
    let now = Utc::now().timestamp();
    let exp = claims["exp"]
        .as_i64()
        .ok_or("AADSTS50027: the client assertion has no exp")?;
    if exp + ASSERTION_SKEW_SECONDS < now {
        return Err("AADSTS700024: the client assertion has expired");
    }
    if claims["nbf"]
        .as_i64()
        .is_some_and(|nbf| nbf - ASSERTION_SKEW_SECONDS > now)
    {
        return Err("AADSTS700024: the client assertion is not valid yet (nbf)");
    }
    let jti = claims["jti"]
        .as_str()
        .filter(|j| !j.is_empty())
        .ok_or("AADSTS50027: the client assertion has no jti")?;
    let mut seen = sim.assertion_ids.lock();
    seen.retain(|_, until| *until + ASSERTION_SKEW_SECONDS >= now);
    if seen.insert(jti.to_string(), exp).is_some() {
        return Err("AADSTS700022: the client assertion (jti) was already used");
    }
    Ok(())
}

/// A stand-in for the Microsoft identity platform's token endpoint: client credentials, proven
/// with the app's secret or with a client assertion signed by its registered certificate.
async fn oauth_token(
    sim: web::Data<Arc<Sim>>,
    req: HttpRequest,
    form: web::Form<TokenRequest>,
) -> HttpResponse {
    let (id, secret) = sim.config.lock().oauth_app.clone();
    if form.grant_type != "client_credentials" {
        return HttpResponse::BadRequest()
            .json(serde_json::json!({ "error": "unsupported_grant_type" }));
    }
    if form.client_id != id {
        return invalid_client("AADSTS700016: application not found");
    }
    match (&form.client_secret, &form.client_assertion) {
        (Some(s), None) if *s == secret => {}
        (Some(_), None) => return invalid_client("AADSTS7000215: invalid client secret"),
        (None, Some(assertion)) => {
            if form.client_assertion_type.as_deref() != Some(JWT_BEARER) {
                return invalid_client("AADSTS50027: client_assertion_type must be jwt-bearer");
            }
            let audience = format!("{}/sim/oauth2/token", host_base(&req));
            if let Err(reason) = verify_assertion(&sim, assertion, &form.client_id, &audience) {
                return invalid_client(reason);
            }
        }
        _ => {
            return invalid_client(
                "AADSTS7000218: the request must contain client_secret or client_assertion",
            )
        }
    }
    let _ = &form.scope;
    let n = sim.conn_seq.fetch_add(1, Ordering::Relaxed);
    let token = base64::engine::general_purpose::STANDARD.encode(format!(
        "sim-token-{n}-{}",
        Utc::now().timestamp_nanos_opt().unwrap_or_default()
    ));
    sim.tokens
        .lock()
        .insert(token.clone(), Instant::now() + Duration::from_secs(3600));
    HttpResponse::Ok().json(
        serde_json::json!({ "token_type": "Bearer", "expires_in": 3599, "access_token": token }),
    )
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/EWS/Exchange.asmx", web::post().to(ews))
        .route("/ews/exchange.asmx", web::post().to(ews))
        .route(
            "/autodiscover/autodiscover.xml",
            web::post().to(autodiscover_xml),
        )
        .route(
            "/Autodiscover/Autodiscover.xml",
            web::post().to(autodiscover_xml),
        )
        .route(
            "/autodiscover/autodiscover.svc",
            web::post().to(autodiscover_svc),
        )
        .route("/sim/stats", web::get().to(api_stats))
        .route("/sim/stats", web::delete().to(api_reset_stats))
        .route("/sim/mailboxes", web::post().to(api_add_mailbox))
        .route(
            "/sim/mailboxes/{smtp}/recreate",
            web::post().to(api_recreate_mailbox),
        )
        .route(
            "/sim/mailboxes/{smtp}/items/{id}/poison",
            web::post().to(api_poison_item),
        )
        .route(
            "/sim/mailboxes/{smtp}/items",
            web::post().to(api_create_item),
        )
        .route(
            "/sim/mailboxes/{smtp}/items/{id}",
            web::patch().to(api_update_item),
        )
        .route(
            "/sim/mailboxes/{smtp}/items/{id}",
            web::delete().to(api_delete_item),
        )
        .route(
            "/sim/mailboxes/{smtp}/items/{id}/move",
            web::post().to(api_move_item),
        )
        .route(
            "/sim/mailboxes/{smtp}/items/{id}/read",
            web::post().to(api_mark_read),
        )
        .route(
            "/sim/mailboxes/{smtp}/folders",
            web::post().to(api_create_folder),
        )
        .route(
            "/sim/mailboxes/{smtp}/folders/{folder}",
            web::patch().to(api_update_folder),
        )
        .route(
            "/sim/mailboxes/{smtp}/folders/{folder}",
            web::delete().to(api_delete_folder),
        )
        .route(
            "/sim/mailboxes/{smtp}/folders/{folder}/items",
            web::get().to(api_list_items),
        )
        .route("/sim/faults", web::post().to(api_add_fault))
        .route("/sim/faults", web::delete().to(api_clear_faults))
        .route("/sim/streams/drop", web::post().to(api_drop_streams))
        .route(
            "/sim/subscriptions/expire",
            web::post().to(api_expire_subscriptions),
        )
        .route(
            "/sim/syncstates/invalidate",
            web::post().to(api_invalidate_states),
        )
        .route("/sim/throttle", web::put().to(api_throttle))
        .route("/sim/streaming", web::put().to(api_streaming))
        .route("/sim/oauth2/token", web::post().to(oauth_token));
}

/// A running simulator.
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Shared state (tests reach the store directly through it).
    pub sim: Arc<Sim>,
    tls: bool,
    handle: actix_web::dev::ServerHandle,
}

impl Running {
    /// `http://ADDR/EWS/Exchange.asmx` (https with TLS).
    pub fn ews_url(&self) -> String {
        format!("{}/EWS/Exchange.asmx", self.base_url())
    }

    /// `http://ADDR` (https with TLS).
    pub fn base_url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.addr
        )
    }

    /// Stops the server.
    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// Starts the simulator on the current tokio runtime.
pub async fn start(cfg: SimConfig) -> std::io::Result<Running> {
    if let Some(dir) = &cfg.record {
        std::fs::create_dir_all(dir)?;
    }
    let sim = Sim::new(cfg.clone());
    let data = web::Data::new(sim.clone());
    static CONNECTIONS: AtomicU64 = AtomicU64::new(1);
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(256 * 1024 * 1024))
            .app_data(web::JsonConfig::default().limit(64 * 1024 * 1024))
            .configure(routes)
    })
    .on_connect(|_, ext| {
        ext.insert(ConnId(CONNECTIONS.fetch_add(1, Ordering::Relaxed)));
    })
    .workers(cfg.workers.max(1))
    .keep_alive(Duration::from_secs(120))
    .disable_signals();
    let server = match &cfg.tls {
        Some(pem) => server.bind_rustls_0_23(cfg.listen, tls_config(pem)?)?,
        None => server.bind(cfg.listen)?,
    };
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    // Subscriptions nobody holds expire, as on Exchange.
    let sweeper = sim.clone();
    tokio::spawn(async move {
        loop {
            let expiry = sweeper.config.lock().subscription_expiry;
            tokio::time::sleep(
                expiry
                    .min(Duration::from_secs(5))
                    .max(Duration::from_millis(50)),
            )
            .await;
            sweeper.store.subscriptions.expire_idle(expiry);
        }
    });
    Ok(Running {
        addr,
        sim,
        tls: cfg.tls.is_some(),
        handle,
    })
}
