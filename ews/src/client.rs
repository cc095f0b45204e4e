//! Sending operations over HTTP: reqwest with rustls, pooled connections, timeouts, an optional
//! extra CA, the EWS headers (X-AnchorMailbox on every mailbox request; X-PreferServerAffinity
//! and the back-end cookie for subscription groups), authentication, and the mapping of HTTP
//! failures to [`Error`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, COOKIE, SET_COOKIE};
use reqwest::StatusCode;

use crate::ops::{GetStreamingEvents, Operation};
use crate::soap::{self, Headers, ServerVersionInfo};
use crate::streaming::{StreamEvent, StreamParser};
use crate::Error;

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
    /// No credentials (tests of the 401 path).
    None,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Auth::OAuth2(_) => f.write_str("OAuth2(***)"),
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
        }
    }
}

/// Whom a request is for.
#[derive(Debug, Clone)]
pub struct Target {
    /// The mailbox (X-AnchorMailbox, and the impersonated user when `impersonate`).
    pub mailbox: String,
    /// Send ExchangeImpersonation.
    pub impersonate: bool,
    /// Subscription group routing, shared by the requests of one group.
    pub affinity: Option<Affinity>,
}

impl Target {
    /// A request acting for `mailbox` by impersonation.
    pub fn impersonating(mailbox: &str) -> Self {
        Target {
            mailbox: mailbox.to_string(),
            impersonate: true,
            affinity: None,
        }
    }

    /// A request for the caller's own mailbox (or delegate access).
    pub fn own(mailbox: &str) -> Self {
        Target {
            mailbox: mailbox.to_string(),
            impersonate: false,
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
}

const COOKIE_NAME: &str = "X-BackEndOverrideCookie";

impl Client {
    /// Builds the client; fails on an http:// endpoint unless allowed, or a bad CA file.
    pub fn new(cfg: ClientConfig) -> Result<Self, Error> {
        match cfg.endpoint.scheme() {
            "https" => {}
            "http" if cfg.allow_http => {}
            other => {
                return Err(Error::Request(format!(
                    "endpoint {} uses {other}; credentials are only sent over https unless http is explicitly allowed",
                    cfg.endpoint
                )))
            }
        }
        let builder = |timeout: Option<Duration>| -> Result<reqwest::Client, Error> {
            let mut b = reqwest::Client::builder()
                .use_rustls_tls()
                .pool_max_idle_per_host(32)
                .connect_timeout(Duration::from_secs(15))
                .user_agent(concat!("mailsync-ews/", env!("CARGO_PKG_VERSION")));
            if let Some(t) = timeout {
                b = b.timeout(t);
            }
            if let Some(pem) = &cfg.ca_pem {
                for cert in reqwest::Certificate::from_pem_bundle(pem)
                    .map_err(|e| Error::Request(format!("custom CA: {e}")))?
                {
                    b = b.add_root_certificate(cert);
                }
            }
            b.build()
                .map_err(|e| Error::Request(format!("http client: {e}")))
        };
        Ok(Client {
            http: builder(Some(cfg.timeout))?,
            streaming_http: builder(None)?,
            cfg: Arc::new(cfg),
        })
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// Writes the full request envelope of `op` for `target` (also used by tests and recording).
    pub fn envelope<O: Operation>(&self, target: &Target, op: &O) -> Vec<u8> {
        let headers = Headers {
            version: &self.cfg.version,
            impersonate: target.impersonate.then_some(target.mailbox.as_str()),
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
        h.insert("X-AnchorMailbox", header_value(anchor)?);
        if let Some(a) = &target.affinity {
            h.insert("X-PreferServerAffinity", HeaderValue::from_static("true"));
            if let Some(c) = a.cookie() {
                h.insert(COOKIE, header_value(&format!("{COOKIE_NAME}={c}"))?);
            }
        }
        match &self.cfg.auth {
            Auth::Basic { username, password } => {
                use base64::Engine;
                let token = base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{password}"));
                h.insert(AUTHORIZATION, header_value(&format!("Basic {token}"))?);
            }
            Auth::OAuth2(tokens) => {
                let t = tokens.token(&self.http).await?;
                h.insert(AUTHORIZATION, header_value(&format!("Bearer {t}"))?);
            }
            Auth::None => {}
        }
        Ok(h)
    }

    /// Sends `op` for `target` and parses the answer.
    pub async fn call<O: Operation>(
        &self,
        target: &Target,
        op: &O,
    ) -> Result<Reply<O::Output>, Error> {
        let body = self.envelope(target, op);
        let resp = self
            .http
            .post(self.cfg.endpoint.clone())
            .headers(self.headers(target).await?)
            .body(body)
            .send()
            .await
            .map_err(transport_error)?;
        remember_cookie(target, resp.headers());
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(transport_error)?;
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
        let resp = self
            .streaming_http
            .post(self.cfg.endpoint.clone())
            .headers(self.headers(target).await?)
            .body(body)
            .send()
            .await
            .map_err(transport_error)?;
        remember_cookie(target, resp.headers());
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.map_err(transport_error)?;
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

fn header_value(s: &str) -> Result<HeaderValue, Error> {
    HeaderValue::from_str(s)
        .map_err(|_| Error::Request(format!("{s:?} cannot be sent in an HTTP header")))
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

fn transport_error(e: reqwest::Error) -> Error {
    if e.is_builder() {
        Error::Request(e.to_string())
    } else {
        // Timeouts, resets, refused connections: all worth a retry.
        Error::Transient(e.to_string())
    }
}

/// OAuth2 client-credentials tokens for one app registration, cached until shortly before
/// they expire. Concurrent callers share one refresh.
pub struct OAuth2Tokens {
    token_url: url::Url,
    client_id: String,
    client_secret: String,
    scope: String,
    cached: tokio::sync::Mutex<Option<(String, Instant)>>,
}

/// Tokens are refreshed this long before they expire.
pub const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(300);

impl OAuth2Tokens {
    /// A token source for a client secret.
    pub fn new(token_url: url::Url, client_id: &str, client_secret: &str, scope: &str) -> Self {
        OAuth2Tokens {
            token_url,
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            scope: scope.to_string(),
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// A valid access token, fetched when none is cached or the cached one is about to expire.
    pub async fn token(&self, http: &reqwest::Client) -> Result<String, Error> {
        let mut cached = self.cached.lock().await;
        if let Some((t, valid_until)) = cached.as_ref() {
            if Instant::now() + TOKEN_REFRESH_MARGIN < *valid_until {
                return Ok(t.clone());
            }
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            access_token: String,
            expires_in: Option<u64>,
        }
        let resp = http
            .post(self.token_url.clone())
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.client_secret.as_str()),
                ("scope", self.scope.as_str()),
            ])
            .send()
            .await
            .map_err(transport_error)?;
        let status = resp.status();
        if status == StatusCode::BAD_REQUEST || status == StatusCode::UNAUTHORIZED {
            return Err(Error::Unauthorized(format!(
                "token endpoint refused the client credentials (HTTP {})",
                status.as_u16()
            )));
        }
        if !status.is_success() {
            return Err(Error::Transient(format!(
                "token endpoint answered HTTP {}",
                status.as_u16()
            )));
        }
        let t: TokenResponse = resp
            .json()
            .await
            .map_err(|e| Error::Malformed(format!("token response: {e}")))?;
        let lifetime = Duration::from_secs(t.expires_in.unwrap_or(3600));
        *cached = Some((t.access_token.clone(), Instant::now() + lifetime));
        Ok(t.access_token)
    }
}
