//! Sending operations over HTTP: reqwest with rustls, pooled connections, timeouts, an optional
//! extra CA, the EWS headers (X-AnchorMailbox on every mailbox request; X-PreferServerAffinity
//! and the back-end cookie for subscription groups), authentication, the access mode of a
//! request (impersonation, delegate access or the caller's own mailbox), and the mapping of
//! HTTP failures to [`Error`].
//!
//! Bounds on what a server can make the client do: no redirect is ever followed (a 3xx is
//! [`Error::Redirected`]), an answer larger than its cap is [`Error::TooLarge`] before it is
//! read into memory, and a header value that cannot be sent fails without being echoed (it
//! may be a password or a bearer token).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, COOKIE, SET_COOKIE};
use reqwest::StatusCode;

use crate::connection::Connection;
use crate::ops::{GetStreamingEvents, Operation};
use crate::soap::{self, Headers, ServerVersionInfo};
use crate::streaming::{StreamEvent, StreamParser};
use crate::Error;

pub use crate::oauth2::{ClientCertificate, ClientCredential, OAuth2Tokens};

/// How requests authenticate.
#[derive(Clone)]
pub enum Auth {
    /// HTTP Basic.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// OAuth2 bearer tokens from a client-credentials grant, cached and refreshed.
    OAuth2(Arc<OAuth2Tokens>),
    /// NTLM (connection-based): `DOMAIN\user` or `user@domain`, with a password.
    Ntlm {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// No credentials (tests of the 401 path).
    None,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Auth::OAuth2(_) => f.write_str("OAuth2(***)"),
            Auth::Ntlm { username, .. } => write!(f, "Ntlm({username}, ***)"),
            Auth::None => f.write_str("None"),
        }
    }
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The EWS endpoint.
    pub endpoint: url::Url,
    /// Authentication.
    pub auth: Auth,
    /// RequestServerVersion (`Exchange2010_SP2` … `Exchange2016`).
    pub version: String,
    /// Per-request timeout (not applied to streaming connections).
    pub timeout: Duration,
    /// Extra trusted CA certificates, PEM.
    pub ca_pem: Option<Vec<u8>>,
    /// Permit http:// endpoints (tests against a local simulator only).
    pub allow_http: bool,
    /// TimeZoneContext sent with every request.
    pub time_zone: Option<String>,
    /// Host names pinned to addresses, like curl's --resolve (split DNS, tests); the port
    /// always comes from the URL.
    pub resolve: Vec<(String, std::net::SocketAddr)>,
    /// Told about every finished request (the service counts them as metrics).
    pub observer: Option<Arc<dyn Observer>>,
    /// The largest answer read for a request without MIME content; a larger one is
    /// [`Error::TooLarge`] and is not read into memory.
    pub max_response_bytes: u64,
    /// The largest answer read for a request that asks for MIME content (GetItem with
    /// `item:MimeContent`).
    pub max_mime_response_bytes: u64,
}

/// Default of [`ClientConfig::max_response_bytes`]: 16 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;
/// Default of [`ClientConfig::max_mime_response_bytes`]: 128 MiB.
pub const DEFAULT_MAX_MIME_RESPONSE_BYTES: u64 = 128 * 1024 * 1024;

/// Watches requests as they finish, e.g. to count them; must be cheap and never block.
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// `operation` (`SyncFolderItems` …) finished after `elapsed` with `outcome`: `ok` or an
    /// [`Error::class`].
    fn request_done(&self, operation: &'static str, outcome: &'static str, elapsed: Duration);
}

impl ClientConfig {
    /// Defaults for an endpoint: Exchange2010_SP2, 100 s timeout, UTC time zone context.
    pub fn new(endpoint: url::Url, auth: Auth) -> Self {
        ClientConfig {
            endpoint,
            auth,
            version: "Exchange2010_SP2".to_string(),
            timeout: Duration::from_secs(100),
            ca_pem: None,
            allow_http: false,
            time_zone: Some("UTC".to_string()),
            resolve: Vec::new(),
            observer: None,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_mime_response_bytes: DEFAULT_MAX_MIME_RESPONSE_BYTES,
        }
    }
}

/// How a request reaches the mailbox it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The caller acts as the mailbox's user (ExchangeImpersonation header; the account holds
    /// the ApplicationImpersonation right, or it is an app-only OAuth2 token).
    Impersonation,
    /// The caller opens another user's mailbox with its own identity (full access, delegate):
    /// no ExchangeImpersonation; every distinguished folder names the mailbox (`t:Mailbox`).
    Delegate,
    /// The caller's own mailbox: no ExchangeImpersonation, folders as they are.
    Own,
}

/// Whom a request is for.
#[derive(Debug, Clone)]
pub struct Target {
    /// The mailbox (X-AnchorMailbox always; the impersonated user or the delegate-accessed
    /// mailbox by `access`).
    pub mailbox: String,
    /// How the request reaches the mailbox.
    pub access: Access,
    /// Subscription group routing, shared by the requests of one group.
    pub affinity: Option<Affinity>,
}

impl Target {
    /// A request acting for `mailbox` by impersonation.
    pub fn impersonating(mailbox: &str) -> Self {
        Self::with_access(mailbox, Access::Impersonation)
    }

    /// A request for the caller's own mailbox.
    pub fn own(mailbox: &str) -> Self {
        Self::with_access(mailbox, Access::Own)
    }

    /// A request opening `mailbox` by delegate (full) access.
    pub fn delegate(mailbox: &str) -> Self {
        Self::with_access(mailbox, Access::Delegate)
    }

    /// A request for `mailbox` with the given access.
    pub fn with_access(mailbox: &str, access: Access) -> Self {
        Target {
            mailbox: mailbox.to_string(),
            access,
            affinity: None,
        }
    }
}

/// Routing of a streaming subscription group: the anchor mailbox goes in X-AnchorMailbox with
/// X-PreferServerAffinity on every Subscribe of the group, and the X-BackEndOverrideCookie
/// the first response sets is sent back on the group's later requests.
#[derive(Debug, Clone, Default)]
pub struct Affinity {
    /// The group's anchor (its alphabetically first mailbox).
    pub anchor: String,
    cookie: Arc<Mutex<Option<String>>>,
}

impl Affinity {
    /// Routing for a group anchored at `anchor`.
    pub fn new(anchor: &str) -> Self {
        Affinity {
            anchor: anchor.to_string(),
            cookie: Arc::default(),
        }
    }

    /// The back-end cookie learnt so far.
    pub fn cookie(&self) -> Option<String> {
        self.cookie.lock().map(|c| c.clone()).unwrap_or(None)
    }
}

/// A successful call's result with the server's version header.
#[derive(Debug, Clone)]
pub struct Reply<T> {
    /// The operation's output.
    pub output: T,
    /// ServerVersionInfo, when sent.
    pub server_version: Option<ServerVersionInfo>,
}

/// The EWS client of one endpoint and credential. Cheap to clone; connections are pooled.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    streaming_http: reqwest::Client,
    cfg: Arc<ClientConfig>,
    /// NTLM authenticates a connection, not a request: each slot holds one connection
    /// (crate::connection, never pooled), used by one request at a time.
    ntlm_slots: Arc<Vec<tokio::sync::Mutex<NtlmSlot>>>,
    next_slot: Arc<std::sync::atomic::AtomicUsize>,
}

/// One NTLM connection.
#[derive(Debug, Default)]
struct NtlmSlot {
    /// The connection, once opened (again after the server closed it).
    conn: Option<Connection>,
    /// The connection has completed a handshake (the server may still ask again).
    authenticated: bool,
}

/// NTLM connections per client (requests beyond wait for a free one).
pub const NTLM_CONNECTIONS: usize = 8;

const COOKIE_NAME: &str = "X-BackEndOverrideCookie";

impl Client {
    /// Builds the client; fails on an http:// endpoint or OAuth2 token URL unless allowed, or
    /// a bad CA file.
    pub fn new(cfg: ClientConfig) -> Result<Self, Error> {
        check_scheme("endpoint", &cfg.endpoint, cfg.allow_http)?;
        if let Auth::OAuth2(tokens) = &cfg.auth {
            check_scheme("token URL", tokens.token_url(), cfg.allow_http)?;
        }
        let ntlm_slots = if matches!(cfg.auth, Auth::Ntlm { .. }) {
            (0..NTLM_CONNECTIONS)
                .map(|_| tokio::sync::Mutex::new(NtlmSlot::default()))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Client {
            http: http_client(&cfg, Some(cfg.timeout))?,
            streaming_http: http_client(&cfg, None)?,
            cfg: Arc::new(cfg),
            ntlm_slots: Arc::new(ntlm_slots),
            next_slot: Arc::default(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// Writes the full request envelope of `op` for `target` (also used by tests and recording).
    pub fn envelope<O: Operation>(&self, target: &Target, op: &O) -> Vec<u8> {
        let mailbox = Some(target.mailbox.as_str());
        let headers = Headers {
            version: &self.cfg.version,
            impersonate: mailbox.filter(|_| target.access == Access::Impersonation),
            delegate: mailbox.filter(|_| target.access == Access::Delegate),
            time_zone: self.cfg.time_zone.as_deref(),
        };
        soap::envelope(&headers, |w| op.write_body(w))
    }

    async fn headers(&self, target: &Target) -> Result<HeaderMap, Error> {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/xml; charset=utf-8"),
        );
        let anchor = target
            .affinity
            .as_ref()
            .map_or(target.mailbox.as_str(), |a| a.anchor.as_str());
        h.insert("X-AnchorMailbox", header_value("X-AnchorMailbox", anchor)?);
        if let Some(a) = &target.affinity {
            h.insert("X-PreferServerAffinity", HeaderValue::from_static("true"));
            if let Some(c) = a.cookie() {
                h.insert(
                    COOKIE,
                    header_value("Cookie", &format!("{COOKIE_NAME}={c}"))?,
                );
            }
        }
        match &self.cfg.auth {
            Auth::Basic { username, password } => {
                use base64::Engine;
                let token = base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{password}"));
                h.insert(
                    AUTHORIZATION,
                    header_value("Authorization", &format!("Basic {token}"))?,
                );
            }
            Auth::OAuth2(tokens) => {
                let t = tokens.token(&self.http).await?;
                h.insert(
                    AUTHORIZATION,
                    header_value("Authorization", &format!("Bearer {t}"))?,
                );
            }
            // NTLM headers are per connection, added by `send_ntlm`.
            Auth::Ntlm { .. } | Auth::None => {}
        }
        Ok(h)
    }

    /// Sends an envelope for `target`, authenticated; streaming requests get no timeout.
    async fn send(
        &self,
        target: &Target,
        body: Vec<u8>,
        streaming: bool,
    ) -> Result<reqwest::Response, Error> {
        let headers = self.headers(target).await?;
        if let Auth::Ntlm { username, password } = &self.cfg.auth {
            return self
                .send_ntlm(username, password, headers, body, streaming)
                .await;
        }
        let http = if streaming {
            &self.streaming_http
        } else {
            &self.http
        };
        http.post(self.cfg.endpoint.clone())
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(transport_error)
    }

    async fn send_ntlm(
        &self,
        username: &str,
        password: &str,
        headers: HeaderMap,
        body: Vec<u8>,
        streaming: bool,
    ) -> Result<reqwest::Response, Error> {
        let target = crate::connection::Target {
            url: self.cfg.endpoint.clone(),
            ca_pem: self.cfg.ca_pem.clone(),
            resolve: self.cfg.resolve.clone(),
        };
        let url = &self.cfg.endpoint;
        if streaming {
            // A stream holds its connection for minutes: it gets a connection of its own.
            let mut conn = Connection::open(&target).await?;
            return ntlm_handshake(username, password, &mut conn, url, &headers, &body).await;
        }
        // A free connection first (authenticated ones are found first as they are reused);
        // when all are busy, queue on one in turn.
        let mut slot = match self.ntlm_slots.iter().find_map(|s| s.try_lock().ok()) {
            Some(free) => free,
            None => {
                let n = self
                    .next_slot
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    % self.ntlm_slots.len().max(1);
                self.ntlm_slots[n].lock().await
            }
        };
        let slot = &mut *slot;
        let exchange = async {
            if slot.conn.as_ref().is_none_or(Connection::is_closed) {
                slot.conn = Some(Connection::open(&target).await?);
                slot.authenticated = false;
            }
            let Some(conn) = slot.conn.as_mut() else {
                return Err(Error::Request("no NTLM connection".into()));
            };
            if slot.authenticated {
                let resp = conn.post(url, &headers, None, &body).await?;
                if resp.status() != StatusCode::UNAUTHORIZED {
                    return Ok(resp);
                }
                slot.authenticated = false;
                // Drain the 401 so the connection can carry the handshake.
                let _ = resp.bytes().await;
            }
            let resp = ntlm_handshake(username, password, conn, url, &headers, &body).await?;
            slot.authenticated = true;
            Ok(resp)
        };
        let result = tokio::time::timeout(self.cfg.timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(Error::Transient("the request timed out".into())));
        if result.is_err() {
            // Whatever state the connection is in, the next request starts on a new one.
            slot.conn = None;
            slot.authenticated = false;
        }
        result
    }

    /// Sends `op` for `target` and parses the answer.
    pub async fn call<O: Operation>(
        &self,
        target: &Target,
        op: &O,
    ) -> Result<Reply<O::Output>, Error> {
        let started = Instant::now();
        let result = self.call_inner(target, op).await;
        if let Some(observer) = &self.cfg.observer {
            let outcome = result.as_ref().map_or_else(Error::class, |_| "ok");
            observer.request_done(O::NAME, outcome, started.elapsed());
        }
        result
    }

    async fn call_inner<O: Operation>(
        &self,
        target: &Target,
        op: &O,
    ) -> Result<Reply<O::Output>, Error> {
        if target.access == Access::Delegate {
            if let Some(why) = op.delegate_refusal() {
                return Err(Error::Request(format!(
                    "{} for {} by delegate access: {why}",
                    O::NAME,
                    target.mailbox
                )));
            }
        }
        let body = self.envelope(target, op);
        let resp = self.send(target, body, false).await?;
        remember_cookie(target, resp.headers());
        let status = resp.status();
        check_redirect(status, resp.headers(), &self.cfg.endpoint)?;
        let (limit, what) = if op.carries_mime() {
            (self.cfg.max_mime_response_bytes, "mime response")
        } else {
            (self.cfg.max_response_bytes, "response")
        };
        // reqwest's timeout covers its own bodies; an NTLM connection's body needs this one.
        let bytes = tokio::time::timeout(self.cfg.timeout, read_capped(resp, limit, what))
            .await
            .map_err(|_| Error::Transient("reading the answer timed out".into()))??;
        check_status(status, &bytes)?;
        let parsed = soap::parse_response(&bytes)?;
        if parsed.body.name != format!("{}Response", O::NAME) {
            return Err(Error::Malformed(format!(
                "expected {}Response, got <{}>",
                O::NAME,
                parsed.body.name
            )));
        }
        Ok(Reply {
            output: op.parse(&parsed.body)?,
            server_version: parsed.server_version,
        })
    }

    /// Opens a GetStreamingEvents connection and returns its events as they arrive. The
    /// returned stream ends when the server closes the connection; an error on the wire is
    /// its last item.
    pub async fn stream(
        &self,
        target: &Target,
        op: &GetStreamingEvents,
    ) -> Result<impl futures_util::Stream<Item = StreamEvent> + Send + 'static, Error> {
        let body = self.envelope(target, op);
        let started = Instant::now();
        let resp = self.send(target, body, true).await;
        if let Some(observer) = &self.cfg.observer {
            // The connection's establishment; its minutes-long life is not a request duration.
            let outcome = match &resp {
                Ok(r) if r.status().is_success() => "ok",
                Ok(_) => "http_error",
                Err(e) => e.class(),
            };
            observer.request_done(GetStreamingEvents::NAME, outcome, started.elapsed());
        }
        let resp = resp?;
        remember_cookie(target, resp.headers());
        let status = resp.status();
        check_redirect(status, resp.headers(), &self.cfg.endpoint)?;
        if !status.is_success() {
            let bytes = read_capped(resp, self.cfg.max_response_bytes, "response").await?;
            check_status(status, &bytes)?;
            // A 200-class status was handled above; a non-success one always errors in check_status.
            return Err(Error::Malformed(format!("unexpected HTTP status {status}")));
        }
        let mut parser = StreamParser::new();
        let chunks = resp.bytes_stream();
        Ok(chunks
            .map(move |chunk| match chunk {
                Ok(bytes) => parser.push(&bytes),
                Err(e) => vec![StreamEvent::Error {
                    error: transport_error(e),
                    subscription_ids: vec![],
                }],
            })
            .flat_map(futures_util::stream::iter))
    }
}

/// Refuses a non-https URL unless http is allowed: credentials travel with every request.
pub(crate) fn check_scheme(what: &str, url: &url::Url, allow_http: bool) -> Result<(), Error> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_http => Ok(()),
        other => Err(Error::Request(format!(
            "{what} {} uses {other}; credentials are only sent over https unless http is explicitly allowed",
            without_query(url)
        ))),
    }
}

/// A URL for messages: scheme, host, port and path; the query (which may carry anything) and
/// any user info are left out.
pub(crate) fn without_query(url: &url::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// A 3xx answer is an error: no redirect is followed (see [`Error::Redirected`]).
pub(crate) fn check_redirect(
    status: StatusCode,
    headers: &HeaderMap,
    base: &url::Url,
) -> Result<(), Error> {
    if !status.is_redirection() {
        return Ok(());
    }
    let location = headers
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| base.join(l).ok())
        .map_or_else(|| "(no Location)".to_string(), |u| without_query(&u));
    Err(Error::Redirected {
        status: status.as_u16(),
        location,
    })
}

/// Reads an answer's body, at most `limit` bytes: a Content-Length over the cap is refused
/// before reading, and a body that grows past it is dropped as soon as it does.
pub(crate) async fn read_capped(
    resp: reqwest::Response,
    limit: u64,
    what: &'static str,
) -> Result<Vec<u8>, Error> {
    let too_large = || Error::TooLarge { limit, what };
    let declared = resp.content_length();
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut out = Vec::with_capacity(declared.unwrap_or(0).min(1 << 20) as usize);
    let mut chunks = resp.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(transport_error)?;
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A reqwest client for `cfg`: rustls, the extra CA, timeouts. With `single` its requests
/// share one keep-alive HTTP/1.1 connection, as NTLM needs (it authenticates the connection,
/// so the handshake and the request must travel on the same one).
fn http_client(cfg: &ClientConfig, timeout: Option<Duration>) -> Result<reqwest::Client, Error> {
    build_http(cfg.ca_pem.as_deref(), &cfg.resolve, timeout)
}

/// A reqwest client: rustls, an extra CA, pinned host names, timeouts. It follows no
/// redirect: every 3xx comes back to the caller, which refuses it (EWS, tokens) or decides on
/// it (Autodiscover). (NTLM uses crate::connection instead: it needs one held connection.)
pub(crate) fn build_http(
    ca_pem: Option<&[u8]>,
    resolve: &[(String, std::net::SocketAddr)],
    timeout: Option<Duration>,
) -> Result<reqwest::Client, Error> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .pool_max_idle_per_host(32)
        .connect_timeout(Duration::from_secs(15))
        .user_agent(concat!("mailsync-ews/", env!("CARGO_PKG_VERSION")));
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    if let Some(pem) = ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| Error::Request(format!("custom CA: {e}")))?;
        if certs.is_empty() {
            return Err(Error::Request(
                "custom CA: no certificate in the PEM data".into(),
            ));
        }
        for cert in certs {
            b = b.add_root_certificate(cert);
        }
    }
    for (host, addr) in resolve {
        b = b.resolve(host, *addr);
    }
    b.redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Error::Request(format!("http client: {e}")))
}

/// The NTLM handshake (MS-NLMP: Negotiate, Challenge, Authenticate with NTLMv2) around a
/// request, both legs on `conn`: the request (`headers`, `body`) travels with each. The crypto
/// is ntlmclient's (RustCrypto md4, hmac, md-5).
pub(crate) async fn ntlm_handshake(
    username: &str,
    password: &str,
    conn: &mut Connection,
    url: &url::Url,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<reqwest::Response, Error> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (domain, user) = match username.split_once('\\') {
        Some((d, u)) => (d.to_string(), u.to_string()),
        None => (String::new(), username.to_string()),
    };
    let workstation = "MAILSYNC".to_string();
    let negotiate = ntlmclient::Message::Negotiate(ntlmclient::NegotiateMessage {
        flags: ntlmclient::Flags::NEGOTIATE_UNICODE
            | ntlmclient::Flags::REQUEST_TARGET
            | ntlmclient::Flags::NEGOTIATE_NTLM
            | ntlmclient::Flags::NEGOTIATE_WORKSTATION_SUPPLIED,
        supplied_domain: String::new(),
        supplied_workstation: workstation.clone(),
        os_version: Default::default(),
    });
    let nego = negotiate
        .to_bytes()
        .map_err(|e| Error::Request(format!("ntlm negotiate: {e:?}")))?;
    let first = conn
        .post(
            url,
            headers,
            Some(&format!("NTLM {}", b64.encode(nego))),
            body,
        )
        .await?;
    if first.status() != StatusCode::UNAUTHORIZED {
        // The connection was authenticated already, or the server does not do NTLM.
        return Ok(first);
    }
    let challenge_b64 = first
        .headers()
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("NTLM ").map(|c| c.trim().to_string()))
        .ok_or_else(|| {
            Error::Unauthorized(
                "HTTP 401: the server offers no NTLM challenge (is NTLM enabled for EWS?)".into(),
            )
        })?;
    // Drain the 401 body so the connection can carry the next request.
    let _ = first.bytes().await;
    let bytes = b64
        .decode(challenge_b64)
        .map_err(|e| Error::Malformed(format!("NTLM challenge is not base64: {e}")))?;
    let ntlmclient::Message::Challenge(challenge) = ntlmclient::Message::try_from(bytes.as_slice())
        .map_err(|e| Error::Malformed(format!("NTLM challenge: {e:?}")))?
    else {
        return Err(Error::Malformed(
            "NTLM: expected a challenge message".into(),
        ));
    };
    let target_info: Vec<u8> = challenge
        .target_information
        .iter()
        .flat_map(|e| e.to_bytes())
        .collect();
    let creds = ntlmclient::Credentials {
        username: user,
        password: password.to_string(),
        domain,
    };
    let response = ntlmclient::respond_challenge_ntlm_v2(
        challenge.challenge,
        &target_info,
        ntlmclient::get_ntlm_time(),
        &creds,
    );
    let auth = response.to_message(
        &creds,
        &workstation,
        ntlmclient::Flags::NEGOTIATE_UNICODE | ntlmclient::Flags::NEGOTIATE_NTLM,
    );
    let auth = auth
        .to_bytes()
        .map_err(|e| Error::Request(format!("ntlm authenticate: {e:?}")))?;
    let resp = conn
        .post(
            url,
            headers,
            Some(&format!("NTLM {}", b64.encode(auth))),
            body,
        )
        .await?;
    if resp.status() == StatusCode::UNAUTHORIZED {
        return Err(Error::Unauthorized(
            "HTTP 401: the server refused the NTLM credentials".into(),
        ));
    }
    Ok(resp)
}

/// A header value; the error names the header, never the value (it may be a password or a
/// bearer token).
pub(crate) fn header_value(name: &str, value: &str) -> Result<HeaderValue, Error> {
    HeaderValue::from_str(value).map_err(|_| {
        Error::Request(format!(
            "the {name} header cannot be sent: its value holds characters HTTP headers cannot carry"
        ))
    })
}

fn remember_cookie(target: &Target, headers: &HeaderMap) {
    let Some(a) = &target.affinity else { return };
    for v in headers.get_all(SET_COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        if let Some(rest) = v
            .strip_prefix(COOKIE_NAME)
            .and_then(|r| r.strip_prefix('='))
        {
            let value = rest.split(';').next().unwrap_or_default().to_string();
            if let Ok(mut c) = a.cookie.lock() {
                *c = Some(value);
            }
        }
    }
}

/// Maps an HTTP status (and for 500 the SOAP fault in the body) to an error.
fn check_status(status: StatusCode, body: &[u8]) -> Result<(), Error> {
    if status.is_success() {
        return Ok(());
    }
    match status {
        StatusCode::UNAUTHORIZED => Err(Error::Unauthorized(
            "HTTP 401: the server refused the credentials".into(),
        )),
        StatusCode::FORBIDDEN => Err(Error::Denied {
            code: "HTTP 403".into(),
            message: "forbidden".into(),
        }),
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => Err(Error::Throttled {
            back_off: crate::error::DEFAULT_BACK_OFF,
            code: format!("HTTP {}", status.as_u16()),
        }),
        // Exchange sends SOAP faults (ErrorServerBusy, schema errors) with HTTP 500.
        StatusCode::INTERNAL_SERVER_ERROR => match soap::parse_response(body) {
            Err(e @ Error::Malformed(_)) => {
                let _ = e;
                Err(Error::Transient(format!(
                    "HTTP 500 without a SOAP fault ({} bytes)",
                    body.len()
                )))
            }
            Err(e) => Err(e),
            Ok(_) => Err(Error::Transient("HTTP 500".into())),
        },
        s if s.is_server_error() => Err(Error::Transient(format!("HTTP {}", s.as_u16()))),
        s => Err(Error::Response {
            code: format!("HTTP {}", s.as_u16()),
            message: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        }),
    }
}

/// A reqwest failure as an error. reqwest's messages name the URL, never header values.
pub(crate) fn transport_error(e: reqwest::Error) -> Error {
    if e.is_builder() {
        Error::Request(e.to_string())
    } else {
        // Timeouts, resets, refused connections: all worth a retry.
        Error::Transient(error_chain(&e))
    }
}

/// An error with its sources (`error sending request: connection refused`), so the cause of
/// a transport failure is in the message.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
