//! Autodiscover: finding a mailbox's EWS URL (and, for streaming groups, its
//! GroupingInformation) from its e-mail address.
//!
//! Two protocols: SOAP `GetUserSettings` (autodiscover.svc: ExternalEwsUrl, InternalEwsUrl,
//! GroupingInformation) and POX (autodiscover.xml: `Account/Protocol[Type=EXCH]/EwsUrl`). The
//! candidates are tried in the documented order — `https://DOMAIN/autodiscover/…`, then
//! `https://autodiscover.DOMAIN/…`, then an unauthenticated GET of
//! `http://autodiscover.DOMAIN/autodiscover/autodiscover.xml` whose 302 is followed to an https
//! URL — and the redirects both protocols answer with (another address, another URL) are
//! followed up to [`MAX_REDIRECTS`], and last the DNS SRV record `_autodiscover._tcp.DOMAIN`.
//! Credentials (Basic, NTLM or an OAuth2 bearer token: the server's own auth) only ever go to
//! https endpoints (unless a test allows http explicitly) in the mailbox's domain or on a
//! configured allowlist; see [`Autodiscover`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, LOCATION};
use reqwest::StatusCode;

use crate::client::{header_value, read_capped, transport_error, Auth};
use crate::xml::{self, Element, Ns, XmlWriter};
use crate::Error;

/// Redirects followed before giving up (Microsoft's clients use 10).
pub const MAX_REDIRECTS: usize = 10;

const NS_POX_REQUEST: &str =
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006";
const NS_POX_RESPONSE_A: &str =
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a";
const NS_SOAP_AD: &str = "http://schemas.microsoft.com/exchange/2010/Autodiscover";

/// What Autodiscover found for a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// The EWS URL to use (external preferred, as a service outside the LAN would).
    pub ews_url: url::Url,
    /// The internal EWS URL, when the server gave one.
    pub internal_ews_url: Option<url::Url>,
    /// GroupingInformation (SOAP only): mailboxes with the same value share a streaming group.
    pub grouping_information: Option<String>,
    /// The address the answer is for (after address redirects).
    pub mailbox: String,
    /// The Autodiscover endpoint that answered.
    pub endpoint: url::Url,
}

/// One step's outcome.
enum Step {
    Found(Box<Discovered>),
    RedirectAddress(String),
    RedirectUrl(url::Url),
}

/// One DNS SRV record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    /// Lower is tried first.
    pub priority: u16,
    /// Among equal priorities, higher is tried first.
    pub weight: u16,
    /// TCP port.
    pub port: u16,
    /// Host name.
    pub target: String,
}

/// Looks up SRV records (injectable so tests need no DNS).
pub trait SrvResolver: Send + Sync {
    /// The SRV records of `name`; empty when there are none or the lookup fails.
    fn lookup<'a>(
        &'a self,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Vec<SrvRecord>> + Send + 'a>>;
}

/// SRV lookups through the system's DNS configuration (hickory-resolver).
#[derive(Debug, Default)]
pub struct SystemSrv;

impl SrvResolver for SystemSrv {
    fn lookup<'a>(
        &'a self,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Vec<SrvRecord>> + Send + 'a>> {
        Box::pin(async move {
            let Ok(resolver) = hickory_resolver::TokioAsyncResolver::tokio_from_system_conf()
            else {
                return Vec::new();
            };
            match resolver.srv_lookup(name).await {
                Ok(found) => found
                    .iter()
                    .map(|r| SrvRecord {
                        priority: r.priority(),
                        weight: r.weight(),
                        port: r.port(),
                        target: r.target().to_utf8().trim_end_matches('.').to_string(),
                    })
                    .collect(),
                Err(_) => Vec::new(),
            }
        })
    }
}

/// The Autodiscover endpoints an SRV answer points to, best first (priority ascending,
/// weight descending).
pub fn srv_candidates(mut records: Vec<SrvRecord>) -> Vec<url::Url> {
    records.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
    records
        .into_iter()
        .filter(|r| !r.target.is_empty())
        .filter_map(|r| {
            url::Url::parse(&format!(
                "https://{}:{}/autodiscover/autodiscover.xml",
                r.target, r.port
            ))
            .ok()
        })
        .collect()
}

/// Settings of an [`Autodiscover`] client beyond its credentials.
#[derive(Clone)]
pub struct AutodiscoverOptions {
    /// Let credentials go to http:// endpoints (tests against a local simulator only).
    pub allow_http: bool,
    /// Extra trusted CA certificates, PEM.
    pub ca_pem: Option<Vec<u8>>,
    /// Host names pinned to addresses (the port comes from the URL).
    pub resolve: Vec<(String, std::net::SocketAddr)>,
    /// SRV lookups.
    pub srv: Arc<dyn SrvResolver>,
    /// Hosts outside the mailbox's domain that may receive credentials when a redirect, an
    /// SRV record or the http probe points to them: exact names, or `*.example.net` for every
    /// host under example.net.
    pub allowed_hosts: Vec<String>,
    /// The largest answer read from an Autodiscover endpoint.
    pub max_response_bytes: u64,
}

/// Default of [`AutodiscoverOptions::max_response_bytes`]: 1 MiB (answers are a few KB).
pub const DEFAULT_MAX_AUTODISCOVER_RESPONSE: u64 = 1024 * 1024;

impl Default for AutodiscoverOptions {
    fn default() -> Self {
        AutodiscoverOptions {
            allow_http: false,
            ca_pem: None,
            resolve: Vec::new(),
            srv: Arc::new(SystemSrv),
            allowed_hosts: Vec::new(),
            max_response_bytes: DEFAULT_MAX_AUTODISCOVER_RESPONSE,
        }
    }
}

/// An Autodiscover client.
///
/// Credentials go only where they belong: over https (unless http is allowed for a test) to
/// the endpoints a caller names, to hosts in the mailbox's domain (the domain itself or a
/// host under it, and the configured Autodiscover domain), or to hosts on
/// [`AutodiscoverOptions::allowed_hosts`]. A redirect, an SRV target or an http-probe answer
/// pointing elsewhere is refused and reported; the search goes on with the other candidates.
#[derive(Clone)]
pub struct Autodiscover {
    /// Follows no redirect: each one is a decision (https, allowed host, counted).
    http: reqwest::Client,
    /// How requests authenticate (the server's own auth: Basic, NTLM or OAuth2).
    auth: Auth,
    /// Extra CA and pinned hosts, for the one-connection clients NTLM needs.
    ca_pem: Option<Vec<u8>>,
    resolve: Vec<(String, std::net::SocketAddr)>,
    allow_http: bool,
    srv: Arc<dyn SrvResolver>,
    /// Lower-case host names or `*.suffix` patterns.
    allowed_hosts: Vec<String>,
    max_response_bytes: u64,
}

impl std::fmt::Debug for Autodiscover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Autodiscover({:?})", self.auth)
    }
}

/// Where credentials may go during one search: the domains of the mailbox (and the configured
/// Autodiscover domain), and the hosts of the endpoints the caller named.
#[derive(Debug, Clone, Default)]
struct Scope {
    domains: Vec<String>,
    named_hosts: Vec<String>,
}

fn host_in_domain(host: &str, domain: &str) -> bool {
    host == domain
        || host
            .strip_suffix(domain)
            .is_some_and(|rest| rest.ends_with('.'))
}

impl Autodiscover {
    /// A client authenticating with Basic credentials. `allow_http` lets credentials go to
    /// http:// endpoints (tests against a local simulator only).
    pub fn new(username: &str, password: &str, allow_http: bool) -> Result<Self, Error> {
        Self::with_options(
            username,
            password,
            AutodiscoverOptions {
                allow_http,
                ..AutodiscoverOptions::default()
            },
        )
    }

    /// A client with Basic credentials and explicit options.
    pub fn with_options(
        username: &str,
        password: &str,
        options: AutodiscoverOptions,
    ) -> Result<Self, Error> {
        Self::with_auth(
            Auth::Basic {
                username: username.to_string(),
                password: password.to_string(),
            },
            options,
        )
    }

    /// A client with any of the EWS authentications (Basic, NTLM, OAuth2 bearer tokens).
    pub fn with_auth(auth: Auth, options: AutodiscoverOptions) -> Result<Self, Error> {
        if let Auth::OAuth2(tokens) = &auth {
            crate::client::check_scheme("token URL", tokens.token_url(), options.allow_http)?;
        }
        let http = crate::client::build_http(
            options.ca_pem.as_deref(),
            &options.resolve,
            Some(std::time::Duration::from_secs(30)),
        )?;
        Ok(Autodiscover {
            http,
            auth,
            ca_pem: options.ca_pem,
            resolve: options.resolve,
            allow_http: options.allow_http,
            srv: options.srv,
            allowed_hosts: options
                .allowed_hosts
                .iter()
                .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
            max_response_bytes: options.max_response_bytes,
        })
    }

    /// The documented candidate endpoints for `domain`, in order: each host with the SOAP
    /// endpoint first, then POX.
    pub fn candidates(domain: &str) -> Vec<url::Url> {
        let mut out = Vec::new();
        for host in [domain.to_string(), format!("autodiscover.{domain}")] {
            for file in ["autodiscover.svc", "autodiscover.xml"] {
                if let Ok(u) = url::Url::parse(&format!("https://{host}/autodiscover/{file}")) {
                    out.push(u);
                }
            }
        }
        out
    }

    /// Whether credentials may go to `url`; the reason when not.
    fn may_send_credentials(&self, url: &url::Url, scope: &Scope) -> Result<(), String> {
        if url.scheme() != "https" && !self.allow_http {
            return Err(format!(
                "not sending credentials to {}: it is not https",
                crate::client::without_query(url)
            ));
        }
        let host = url
            .host_str()
            .unwrap_or_default()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let allowed = scope.named_hosts.contains(&host)
            || scope.domains.iter().any(|d| host_in_domain(&host, d))
            || self
                .allowed_hosts
                .iter()
                .any(|a| match a.strip_prefix("*.") {
                    Some(suffix) => host_in_domain(&host, suffix) && host != suffix,
                    None => *a == host,
                });
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "not sending credentials to {host}: it is neither in the mailbox's domain ({}) nor on the allowed hosts list",
                scope.domains.join(", ")
            ))
        }
    }

    /// Finds the EWS URL of `email`: the standard candidates of its domain (or of `domain`
    /// when given), then the unauthenticated http redirect of `autodiscover.DOMAIN`, then the
    /// endpoints of the SRV record `_autodiscover._tcp.DOMAIN`.
    pub async fn discover(&self, email: &str, domain: Option<&str>) -> Result<Discovered, Error> {
        let own = email
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .ok_or_else(|| Error::Request(format!("{email:?} is not an e-mail address")))?;
        let domain = domain.map_or_else(|| own.clone(), str::to_ascii_lowercase);
        let mut scope = Scope {
            domains: vec![own.clone()],
            named_hosts: Vec::new(),
        };
        if domain != own {
            scope.domains.push(domain.clone());
        }
        let mut candidates = Self::candidates(&domain);
        if let Ok(u) = url::Url::parse(&format!(
            "http://autodiscover.{domain}/autodiscover/autodiscover.xml"
        )) {
            candidates.push(u);
        }
        let first = match self.search(email, &candidates, &scope).await {
            Ok(d) => return Ok(d),
            Err(e @ Error::Unauthorized(_)) => return Err(e),
            Err(e) => e,
        };
        let srv = srv_candidates(
            self.srv
                .lookup(&format!("_autodiscover._tcp.{domain}"))
                .await,
        );
        if srv.is_empty() {
            return Err(first);
        }
        match self.search(email, &srv, &scope).await {
            Err(Error::Unauthorized(m)) => Err(Error::Unauthorized(m)),
            Err(e @ Error::Request(_)) => Err(Error::Request(format!(
                "{}; then via DNS SRV: {}",
                message(&first),
                message(&e)
            ))),
            Err(e) => Err(Error::Transient(format!(
                "{}; then via DNS SRV: {}",
                message(&first),
                message(&e)
            ))),
            found => found,
        }
    }

    /// Tries `candidates` in order for `email`, following redirects. The candidates are the
    /// caller's choice and may receive credentials; what they redirect to must be in the
    /// mailbox's domain or on the allowed hosts list. A candidate with an `http` scheme is the
    /// unauthenticated redirect probe (GET, no credentials) unless http is allowed, in which
    /// case it is asked like any other endpoint.
    pub async fn discover_at(
        &self,
        email: &str,
        candidates: &[url::Url],
    ) -> Result<Discovered, Error> {
        let own = email
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        let scope = Scope {
            domains: vec![own],
            named_hosts: candidates
                .iter()
                .filter_map(|u| u.host_str())
                .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
        };
        self.search(email, candidates, &scope).await
    }

    async fn search(
        &self,
        email: &str,
        candidates: &[url::Url],
        scope: &Scope,
    ) -> Result<Discovered, Error> {
        let mut email = email.to_string();
        let mut queue: Vec<url::Url> = candidates.to_vec();
        let mut redirects = 0;
        let mut errors = Vec::new();
        let mut refused = false;
        let mut i = 0;
        while i < queue.len() {
            let url = queue[i].clone();
            i += 1;
            let probe = url.scheme() == "http" && !self.allow_http;
            if !probe {
                if let Err(why) = self.may_send_credentials(&url, scope) {
                    refused = true;
                    errors.push(why);
                    continue;
                }
            }
            let step = if probe {
                match self.http_redirect_probe(&url).await {
                    Ok(target) => Ok(Step::RedirectUrl(target)),
                    Err(e) => Err(e),
                }
            } else if url.path().ends_with(".svc") {
                self.soap(&url, &email).await
            } else {
                self.pox(&url, &email).await
            };
            if matches!(step, Ok(Step::RedirectAddress(_) | Step::RedirectUrl(_)))
                && redirects >= MAX_REDIRECTS
            {
                return Err(Error::Request(format!(
                    "autodiscover for {email}: more than {MAX_REDIRECTS} redirects"
                )));
            }
            match step {
                Ok(Step::Found(d)) => return Ok(*d),
                Ok(Step::RedirectAddress(addr)) => {
                    redirects += 1;
                    email = addr;
                    // A new address starts the candidate list over for its domain (whose
                    // hosts receive credentials only if they are in scope or allowed).
                    let domain = email
                        .rsplit_once('@')
                        .map(|(_, d)| d.to_string())
                        .unwrap_or_default();
                    queue = Self::candidates(&domain);
                    if self.allow_http {
                        // Tests map every host to a local server; keep the caller's list.
                        queue = candidates.to_vec();
                    }
                    i = 0;
                }
                Ok(Step::RedirectUrl(u)) => {
                    redirects += 1;
                    if u.scheme() != "https" && !self.allow_http {
                        errors.push(format!(
                            "{}: redirect to non-https {} refused",
                            crate::client::without_query(&url),
                            crate::client::without_query(&u)
                        ));
                        continue;
                    }
                    queue.insert(i, u);
                }
                Err(Error::Unauthorized(m)) => {
                    return Err(Error::Unauthorized(format!(
                        "autodiscover at {}: {m}",
                        crate::client::without_query(&url)
                    )))
                }
                Err(e) => errors.push(format!(
                    "{}: {}",
                    crate::client::without_query(&url),
                    message(&e)
                )),
            }
        }
        let text = format!(
            "autodiscover for {email} failed at every endpoint: {}",
            errors.join("; ")
        );
        // A refusal is a decision of ours: trying again later would not change it.
        Err(if refused {
            Error::Request(text)
        } else {
            Error::Transient(text)
        })
    }

    async fn http_redirect_probe(&self, url: &url::Url) -> Result<url::Url, Error> {
        let resp = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(transport_error)?;
        if resp.status() != StatusCode::FOUND && resp.status() != StatusCode::MOVED_PERMANENTLY {
            return Err(Error::NotFound(format!(
                "no redirect (HTTP {})",
                resp.status().as_u16()
            )));
        }
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::Malformed("redirect without Location".into()))?;
        url.join(loc)
            .map_err(|e| Error::Malformed(format!("redirect Location: {e}")))
    }

    async fn post(
        &self,
        url: &url::Url,
        body: Vec<u8>,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, Vec<u8>), Error> {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            reqwest::header::HeaderValue::from_static("text/xml; charset=utf-8"),
        );
        let resp = match &self.auth {
            Auth::Ntlm { username, password } => {
                // NTLM authenticates a connection: the handshake and the request share one.
                let mut conn = crate::connection::Connection::open(&crate::connection::Target {
                    url: url.clone(),
                    ca_pem: self.ca_pem.clone(),
                    resolve: self.resolve.clone(),
                })
                .await?;
                tokio::time::timeout(
                    std::time::Duration::from_secs(30),
                    crate::client::ntlm_handshake(
                        username, password, &mut conn, url, &headers, &body,
                    ),
                )
                .await
                .map_err(|_| Error::Transient("autodiscover request timed out".into()))??
            }
            other => {
                match other {
                    Auth::Basic { username, password } => {
                        use base64::Engine;
                        let basic = base64::engine::general_purpose::STANDARD
                            .encode(format!("{username}:{password}"));
                        headers.insert(
                            AUTHORIZATION,
                            header_value("Authorization", &format!("Basic {basic}"))?,
                        );
                    }
                    Auth::OAuth2(tokens) => {
                        let token = tokens.token(&self.http).await?;
                        headers.insert(
                            AUTHORIZATION,
                            header_value("Authorization", &format!("Bearer {token}"))?,
                        );
                    }
                    Auth::Ntlm { .. } | Auth::None => {}
                }
                self.http
                    .post(url.clone())
                    .headers(headers)
                    .body(body)
                    .send()
                    .await
                    .map_err(transport_error)?
            }
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = read_capped(resp, self.max_response_bytes, "autodiscover response").await?;
        Ok((status, headers, bytes))
    }

    fn check(
        status: StatusCode,
        headers: &reqwest::header::HeaderMap,
        url: &url::Url,
    ) -> Result<Option<Step>, Error> {
        match status {
            s if s.is_success() => Ok(None),
            StatusCode::UNAUTHORIZED => Err(Error::Unauthorized("HTTP 401".into())),
            StatusCode::FOUND
            | StatusCode::MOVED_PERMANENTLY
            | StatusCode::TEMPORARY_REDIRECT
            | StatusCode::PERMANENT_REDIRECT => {
                let loc = headers
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| Error::Malformed("redirect without Location".into()))?;
                Ok(Some(Step::RedirectUrl(
                    url.join(loc).map_err(|e| Error::Malformed(e.to_string()))?,
                )))
            }
            s => Err(Error::Transient(format!("HTTP {}", s.as_u16()))),
        }
    }

    async fn pox(&self, url: &url::Url, email: &str) -> Result<Step, Error> {
        let (status, headers, body) = self.post(url, pox_request(email)).await?;
        if let Some(step) = Self::check(status, &headers, url)? {
            return Ok(step);
        }
        parse_pox(&body, email, url)
    }

    async fn soap(&self, url: &url::Url, email: &str) -> Result<Step, Error> {
        let (status, headers, body) = self.post(url, soap_request(email, url)).await?;
        if let Some(step) = Self::check(status, &headers, url)? {
            return Ok(step);
        }
        parse_soap(&body, email, url)
    }
}

/// An error's text without the variant's prefix where that adds nothing.
fn message(e: &Error) -> String {
    match e {
        Error::Transient(m) | Error::Request(m) => m.clone(),
        other => other.to_string(),
    }
}

/// The POX request body.
pub fn pox_request(email: &str) -> Vec<u8> {
    let mut w = XmlWriter::new();
    w.raw(br#"<?xml version="1.0" encoding="utf-8"?>"#);
    w.start("Autodiscover", &[("xmlns", NS_POX_REQUEST)])
        .start("Request", &[])
        .leaf("EMailAddress", email)
        .leaf("AcceptableResponseSchema", NS_POX_RESPONSE_A)
        .end("Request")
        .end("Autodiscover");
    w.into_bytes()
}

/// The SOAP GetUserSettings request body.
pub fn soap_request(email: &str, to: &url::Url) -> Vec<u8> {
    let mut w = XmlWriter::new();
    w.raw(br#"<?xml version="1.0" encoding="utf-8"?>"#);
    w.start(
        "soap:Envelope",
        &[
            ("xmlns:soap", crate::xml::NS_SOAP),
            ("xmlns:a", NS_SOAP_AD),
            ("xmlns:wsa", "http://www.w3.org/2005/08/addressing"),
        ],
    );
    w.start("soap:Header", &[])
        .leaf("a:RequestedServerVersion", "Exchange2013")
        .leaf(
            "wsa:Action",
            "http://schemas.microsoft.com/exchange/2010/Autodiscover/Autodiscover/GetUserSettings",
        )
        .leaf("wsa:To", to.as_str())
        .end("soap:Header");
    w.start("soap:Body", &[])
        .start("a:GetUserSettingsRequestMessage", &[])
        .start("a:Request", &[]);
    w.start("a:Users", &[])
        .start("a:User", &[])
        .leaf("a:Mailbox", email)
        .end("a:User")
        .end("a:Users");
    w.start("a:RequestedSettings", &[]);
    for s in ["ExternalEwsUrl", "InternalEwsUrl", "GroupingInformation"] {
        w.leaf("a:Setting", s);
    }
    w.end("a:RequestedSettings")
        .end("a:Request")
        .end("a:GetUserSettingsRequestMessage")
        .end("soap:Body")
        .end("soap:Envelope");
    w.into_bytes()
}

fn parse_url(s: &str) -> Result<url::Url, Error> {
    url::Url::parse(s.trim()).map_err(|e| Error::Malformed(format!("autodiscover URL {s:?}: {e}")))
}

fn parse_pox(body: &[u8], email: &str, endpoint: &url::Url) -> Result<Step, Error> {
    let root = xml::parse(body)?;
    let resp = root
        .child("Response")
        .ok_or_else(|| Error::Malformed("POX answer without Response".into()))?;
    if let Some(err) = resp.child("Error") {
        let code = err
            .child_text("ErrorCode")
            .unwrap_or_default()
            .trim()
            .to_string();
        let msg = err
            .child_text("Message")
            .unwrap_or_default()
            .trim()
            .to_string();
        return Err(if code == "500" {
            Error::NotFound(format!("autodiscover: {msg}"))
        } else {
            Error::Response { code, message: msg }
        });
    }
    let account = resp
        .child("Account")
        .ok_or_else(|| Error::Malformed("POX answer without Account".into()))?;
    match account.child_text("Action").map(str::trim) {
        Some("redirectAddr") => {
            return account
                .child_text("RedirectAddr")
                .map(|a| Step::RedirectAddress(a.trim().to_string()))
                .ok_or_else(|| Error::Malformed("redirectAddr without RedirectAddr".into()))
        }
        Some("redirectUrl") => {
            return account
                .child_text("RedirectUrl")
                .map(parse_url)
                .transpose()?
                .map(Step::RedirectUrl)
                .ok_or_else(|| Error::Malformed("redirectUrl without RedirectUrl".into()))
        }
        _ => {}
    }
    let protocol = |t: &str| {
        account
            .children_named("Protocol")
            .find(|p| p.child_text("Type").map(str::trim) == Some(t))
    };
    let ews = |p: Option<&Element>| {
        p.and_then(|p| p.child_text("EwsUrl"))
            .map(parse_url)
            .transpose()
    };
    let external = ews(protocol("EXPR"))?;
    let internal = ews(protocol("EXCH"))?;
    let ews_url = external
        .clone()
        .or(internal.clone())
        .ok_or_else(|| Error::NotFound("autodiscover: no EwsUrl in the answer".into()))?;
    Ok(Step::Found(Box::new(Discovered {
        ews_url,
        internal_ews_url: internal,
        grouping_information: None,
        mailbox: email.to_string(),
        endpoint: endpoint.clone(),
    })))
}

fn parse_soap(body: &[u8], email: &str, endpoint: &url::Url) -> Result<Step, Error> {
    let root = xml::parse(body)?;
    if root.ns != Ns::Soap {
        return Err(Error::Malformed(
            "autodiscover SOAP answer is not an envelope".into(),
        ));
    }
    let msg = root
        .child("Body")
        .and_then(|b| b.children.first())
        .ok_or_else(|| Error::Malformed("empty SOAP body".into()))?;
    if msg.name == "Fault" {
        return Err(crate::soap::fault(msg));
    }
    let resp = msg
        .child("Response")
        .ok_or_else(|| Error::Malformed("GetUserSettings answer without Response".into()))?;
    let top = resp.child_text("ErrorCode").unwrap_or("NoError").trim();
    if top != "NoError" {
        return Err(Error::Response {
            code: top.to_string(),
            message: resp
                .child_text("ErrorMessage")
                .unwrap_or_default()
                .to_string(),
        });
    }
    let user = resp
        .child("UserResponses")
        .and_then(|u| u.children.first())
        .ok_or_else(|| Error::Malformed("GetUserSettings answer without UserResponse".into()))?;
    let code = user.child_text("ErrorCode").unwrap_or("NoError").trim();
    let target = || {
        user.child_text("RedirectTarget")
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    };
    match code {
        "NoError" => {}
        "RedirectAddress" => {
            return target()
                .map(Step::RedirectAddress)
                .ok_or_else(|| Error::Malformed("RedirectAddress without target".into()))
        }
        "RedirectUrl" => {
            return target()
                .map(|t| parse_url(&t))
                .transpose()?
                .map(Step::RedirectUrl)
                .ok_or_else(|| Error::Malformed("RedirectUrl without target".into()))
        }
        "InvalidUser" => {
            return Err(Error::NotFound(format!(
                "autodiscover: {email} is not known"
            )))
        }
        other => {
            return Err(Error::Response {
                code: other.to_string(),
                message: user
                    .child_text("ErrorMessage")
                    .unwrap_or_default()
                    .to_string(),
            })
        }
    }
    let setting = |name: &str| {
        user.child("UserSettings")?
            .children
            .iter()
            .find(|s| s.child_text("Name").map(str::trim) == Some(name))
            .and_then(|s| s.child_text("Value"))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let external = setting("ExternalEwsUrl")
        .map(|u| parse_url(&u))
        .transpose()?;
    let internal = setting("InternalEwsUrl")
        .map(|u| parse_url(&u))
        .transpose()?;
    let ews_url = external
        .or(internal.clone())
        .ok_or_else(|| Error::NotFound("autodiscover: no EWS URL in the user settings".into()))?;
    Ok(Step::Found(Box::new(Discovered {
        ews_url,
        internal_ews_url: internal,
        grouping_information: setting("GroupingInformation"),
        mailbox: email.to_string(),
        endpoint: endpoint.clone(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srv_records_are_tried_by_priority_then_weight() {
        let r = |priority, weight, target: &str| SrvRecord {
            priority,
            weight,
            port: 443,
            target: target.into(),
        };
        let got: Vec<String> = srv_candidates(vec![
            r(10, 5, "c.example"),
            r(0, 1, "b.example"),
            r(0, 50, "a.example"),
            r(0, 0, ""),
        ])
        .iter()
        .map(|u| u.host_str().unwrap_or_default().to_string())
        .collect();
        assert_eq!(got, vec!["a.example", "b.example", "c.example"]);
    }

    #[test]
    fn credentials_go_only_to_the_mailbox_domain_named_hosts_and_the_allowlist() {
        let ad = Autodiscover::with_auth(
            Auth::None,
            AutodiscoverOptions {
                allowed_hosts: vec![
                    "autodiscover-s.outlook.com".into(),
                    "*.hosting.example".into(),
                ],
                ..AutodiscoverOptions::default()
            },
        )
        .unwrap();
        let scope = Scope {
            domains: vec!["contoso.com".into(), "ad.contoso.net".into()],
            named_hosts: vec!["explicit.example.org".into()],
        };
        let check = |u: &str| {
            ad.may_send_credentials(&url::Url::parse(u).unwrap(), &scope)
                .is_ok()
        };
        for ok in [
            "https://contoso.com/autodiscover/autodiscover.svc",
            "https://autodiscover.contoso.com/autodiscover/autodiscover.xml",
            "https://mail.eu.CONTOSO.com./autodiscover/autodiscover.xml",
            "https://ad.contoso.net:8443/autodiscover/autodiscover.svc",
            "https://x.ad.contoso.net/autodiscover/autodiscover.svc",
            "https://explicit.example.org:444/autodiscover/autodiscover.svc",
            "https://autodiscover-s.outlook.com/autodiscover/autodiscover.svc",
            "https://eu1.hosting.example/autodiscover/autodiscover.xml",
        ] {
            assert!(check(ok), "{ok} should be allowed");
        }
        for refused in [
            // Not https.
            "http://contoso.com/autodiscover/autodiscover.xml",
            // Look-alikes and other domains.
            "https://evilcontoso.com/autodiscover/autodiscover.xml",
            "https://contoso.com.evil.example/autodiscover/autodiscover.xml",
            "https://contoso.net/autodiscover/autodiscover.xml",
            "https://outlook.com/autodiscover/autodiscover.svc",
            // A wildcard covers hosts under the domain, not the domain itself.
            "https://hosting.example/autodiscover/autodiscover.xml",
        ] {
            assert!(!check(refused), "{refused} should be refused");
        }
        let why = ad
            .may_send_credentials(
                &url::Url::parse("https://evil.example/autodiscover/autodiscover.xml?u=x").unwrap(),
                &scope,
            )
            .unwrap_err();
        assert_eq!(
            why,
            "not sending credentials to evil.example: it is neither in the mailbox's domain (contoso.com, ad.contoso.net) nor on the allowed hosts list"
        );
    }

    #[test]
    fn candidates_follow_the_documented_order() {
        let c: Vec<String> = Autodiscover::candidates("contoso.com")
            .iter()
            .map(|u| u.to_string())
            .collect();
        assert_eq!(
            c,
            vec![
                "https://contoso.com/autodiscover/autodiscover.svc",
                "https://contoso.com/autodiscover/autodiscover.xml",
                "https://autodiscover.contoso.com/autodiscover/autodiscover.svc",
                "https://autodiscover.contoso.com/autodiscover/autodiscover.xml",
            ]
        );
    }

    fn ep() -> url::Url {
        url::Url::parse("https://x/autodiscover/autodiscover.xml").unwrap()
    }

    #[test]
    fn pox_answers() {
        let ok = br#"<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"><Response xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"><Account><AccountType>email</AccountType><Action>settings</Action><Protocol><Type>EXCH</Type><EwsUrl>https://int.contoso.com/EWS/Exchange.asmx</EwsUrl></Protocol><Protocol><Type>EXPR</Type><EwsUrl>https://mail.contoso.com/EWS/Exchange.asmx</EwsUrl></Protocol></Account></Response></Autodiscover>"#;
        let Step::Found(d) = parse_pox(ok, "a@contoso.com", &ep()).unwrap() else {
            panic!()
        };
        assert_eq!(
            d.ews_url.as_str(),
            "https://mail.contoso.com/EWS/Exchange.asmx"
        );
        assert_eq!(
            d.internal_ews_url.unwrap().as_str(),
            "https://int.contoso.com/EWS/Exchange.asmx"
        );
        let redirect = br#"<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"><Response xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"><Account><Action>redirectAddr</Action><RedirectAddr>a@fabrikam.com</RedirectAddr></Account></Response></Autodiscover>"#;
        assert!(
            matches!(parse_pox(redirect, "a@contoso.com", &ep()).unwrap(), Step::RedirectAddress(a) if a == "a@fabrikam.com")
        );
        let err = br#"<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"><Response><Error Time="1" Id="2"><ErrorCode>500</ErrorCode><Message>The e-mail address cannot be found.</Message></Error></Response></Autodiscover>"#;
        assert!(matches!(
            parse_pox(err, "a@contoso.com", &ep()),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn soap_answers() {
        let ok = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><GetUserSettingsResponseMessage xmlns="http://schemas.microsoft.com/exchange/2010/Autodiscover"><Response xmlns:i="http://www.w3.org/2001/XMLSchema-instance"><ErrorCode>NoError</ErrorCode><ErrorMessage/><UserResponses><UserResponse><ErrorCode>NoError</ErrorCode><ErrorMessage>No error.</ErrorMessage><RedirectTarget i:nil="true"/><UserSettingErrors/><UserSettings><UserSetting i:type="StringSetting"><Name>GroupingInformation</Name><Value>PRDEU01</Value></UserSetting><UserSetting i:type="StringSetting"><Name>ExternalEwsUrl</Name><Value>https://outlook.office365.com/EWS/Exchange.asmx</Value></UserSetting></UserSettings></UserResponse></UserResponses></Response></GetUserSettingsResponseMessage></s:Body></s:Envelope>"#;
        let Step::Found(d) = parse_soap(ok, "a@contoso.com", &ep()).unwrap() else {
            panic!()
        };
        assert_eq!(
            d.ews_url.as_str(),
            "https://outlook.office365.com/EWS/Exchange.asmx"
        );
        assert_eq!(d.grouping_information.as_deref(), Some("PRDEU01"));
        let redirect = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><GetUserSettingsResponseMessage xmlns="http://schemas.microsoft.com/exchange/2010/Autodiscover"><Response><ErrorCode>NoError</ErrorCode><UserResponses><UserResponse><ErrorCode>RedirectUrl</ErrorCode><RedirectTarget>https://ad.fabrikam.com/autodiscover/autodiscover.svc</RedirectTarget></UserResponse></UserResponses></Response></GetUserSettingsResponseMessage></s:Body></s:Envelope>"#;
        assert!(
            matches!(parse_soap(redirect, "a@contoso.com", &ep()).unwrap(), Step::RedirectUrl(u) if u.host_str() == Some("ad.fabrikam.com"))
        );
        let invalid = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><GetUserSettingsResponseMessage xmlns="http://schemas.microsoft.com/exchange/2010/Autodiscover"><Response><ErrorCode>NoError</ErrorCode><UserResponses><UserResponse><ErrorCode>InvalidUser</ErrorCode></UserResponse></UserResponses></Response></GetUserSettingsResponseMessage></s:Body></s:Envelope>"#;
        assert!(matches!(
            parse_soap(invalid, "a@contoso.com", &ep()),
            Err(Error::NotFound(_))
        ));
    }
}
