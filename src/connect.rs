//! How the service reaches a configured Exchange server: the authentication of its requests
//! (Basic, NTLM, OAuth2 with a secret or a certificate), its EWS clients (extra CA, answer caps,
//! http only where allowed), the access of each mailbox (impersonation, delegate, own), and
//! Autodiscover per mailbox with the server's own auth, cached per domain.
//!
//! `run` (service.rs) and `test-connection` (testconn.rs) both go through here, so what one
//! can reach the other can too.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{anyhow, Context as _};
use parking_lot::Mutex;

use crate::config::{
    self, AuthConfig, Config, Credentials, Endpoint, MailboxConfig, OAuth2Config, OAuth2Credential,
    ServerConfig,
};
use crate::metrics::Telemetry;

/// The OAuth2 token source of each OAuth2 server of a configuration, shared by its EWS
/// clients and its Autodiscover (one token, fetched once).
#[derive(Default, Clone)]
pub struct Tokens(HashMap<String, Arc<ews::client::OAuth2Tokens>>);

impl Tokens {
    /// Token sources for the OAuth2 servers of `cfg`.
    pub fn of(cfg: &Config) -> Self {
        Tokens(
            cfg.servers
                .iter()
                .filter_map(|s| match &s.auth {
                    AuthConfig::OAuth2(o) => Some((s.name.clone(), token_source(o))),
                    _ => None,
                })
                .collect(),
        )
    }
}

fn token_source(o: &OAuth2Config) -> Arc<ews::client::OAuth2Tokens> {
    let credential = match &o.credential {
        OAuth2Credential::Secret(secret) => {
            ews::client::ClientCredential::Secret(secret.expose().to_owned())
        }
        OAuth2Credential::Certificate { credential, .. } => {
            ews::client::ClientCredential::Certificate(credential.clone())
        }
    };
    Arc::new(ews::client::OAuth2Tokens::with_credential(
        o.token_url.clone(),
        &o.client_id,
        credential,
        &o.scope,
    ))
}

/// The authentication of `server`'s requests with `credentials` (the service account's or a
/// mailbox's own; OAuth2 uses the app's token instead).
pub fn auth(
    server: &ServerConfig,
    credentials: Option<&Credentials>,
    tokens: &Tokens,
) -> anyhow::Result<ews::Auth> {
    let creds = || {
        credentials.ok_or_else(|| {
            anyhow!(
                "servers.{}: no credentials (service_account or the mailbox's own)",
                server.name
            )
        })
    };
    Ok(match &server.auth {
        AuthConfig::Basic => {
            let c = creds()?;
            ews::Auth::Basic {
                username: c.username.clone(),
                password: c.password.expose().to_owned(),
            }
        }
        AuthConfig::Ntlm => {
            let c = creds()?;
            ews::Auth::Ntlm {
                username: c.username.clone(),
                password: c.password.expose().to_owned(),
            }
        }
        AuthConfig::OAuth2(o) => ews::Auth::OAuth2(
            tokens
                .0
                .get(&server.name)
                .cloned()
                .unwrap_or_else(|| token_source(o)),
        ),
    })
}

/// The extra CA certificates of a server, read from `ca_file`.
fn ca_pem(server: &ServerConfig) -> anyhow::Result<Option<Vec<u8>>> {
    server
        .ca_file
        .as_ref()
        .map(|ca| {
            std::fs::read(ca)
                .with_context(|| format!("servers.{}.ca_file: {}", server.name, ca.display()))
        })
        .transpose()
}

/// The EWS client of a server at `url` with `auth`.
pub fn client(
    server: &ServerConfig,
    url: url::Url,
    auth: ews::Auth,
    telemetry: &Telemetry,
) -> anyhow::Result<ews::Client> {
    let mut cfg = ews::ClientConfig::new(url, auth);
    cfg.version = server.version.as_str().to_owned();
    cfg.timeout = server.request_timeout;
    cfg.allow_http = server.allow_http;
    cfg.observer = Some(telemetry.ews_observer());
    cfg.max_response_bytes = server.max_response_bytes;
    cfg.max_mime_response_bytes = server.max_mime_response_bytes;
    cfg.ca_pem = ca_pem(server)?;
    ews::Client::new(cfg)
        .with_context(|| format!("servers.{}: building the EWS client", server.name))
}

/// The target of requests for mailbox `m` on `server`.
pub fn target(server: &ServerConfig, m: &MailboxConfig) -> ews::Target {
    ews::Target::with_access(&m.smtp.to_lowercase(), server.access_for(m))
}

/// An Autodiscover client for `server` authenticating with `auth`: the server's CA, its
/// allowed hosts, http only where allowed.
pub fn autodiscover(
    server: &ServerConfig,
    auth: ews::Auth,
) -> anyhow::Result<ews::autodiscover::Autodiscover> {
    let allowed_hosts = match &server.endpoint {
        Endpoint::Autodiscover { allowed_hosts, .. } => allowed_hosts.clone(),
        Endpoint::Url(_) => Vec::new(),
    };
    ews::autodiscover::Autodiscover::with_auth(
        auth,
        ews::autodiscover::AutodiscoverOptions {
            allow_http: server.allow_http,
            ca_pem: ca_pem(server)?,
            allowed_hosts,
            ..Default::default()
        },
    )
    .with_context(|| format!("servers.{}: Autodiscover client", server.name))
}

/// Runs Autodiscover for `smtp` as `server` says: its endpoint set by hand, else the search
/// from the configured domain or the mailbox's own.
pub async fn discover(
    server: &ServerConfig,
    ad: &ews::autodiscover::Autodiscover,
    smtp: &str,
) -> Result<ews::autodiscover::Discovered, ews::Error> {
    match &server.endpoint {
        Endpoint::Autodiscover { url: Some(u), .. } => {
            ad.discover_at(smtp, std::slice::from_ref(u)).await
        }
        Endpoint::Autodiscover { domain, .. } => ad.discover(smtp, domain.as_deref()).await,
        Endpoint::Url(u) => Ok(ews::autodiscover::Discovered {
            ews_url: u.clone(),
            internal_ews_url: None,
            grouping_information: None,
            mailbox: smtp.to_owned(),
            endpoint: u.clone(),
        }),
    }
}

/// The domain Autodiscover answers are cached under for a mailbox: the configured one, or
/// the mailbox's own.
fn domain_of(server: &ServerConfig, smtp: &str) -> String {
    match &server.endpoint {
        Endpoint::Autodiscover {
            domain: Some(d), ..
        } => d.to_lowercase(),
        _ => smtp
            .rsplit_once('@')
            .map(|(_, d)| d.to_lowercase())
            .unwrap_or_default(),
    }
}

/// Where an Autodiscover answer is kept: the server, a fingerprint of its settings (a reload
/// that changes them asks again), and the domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    server: String,
    settings: u64,
    domain: String,
}

fn cache_key(server: &ServerConfig, smtp: &str) -> CacheKey {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!(
        "{:?}{:?}{:?}{:?}",
        server.endpoint, server.auth, server.service_account, server.ca_file
    )
    .hash(&mut h);
    CacheKey {
        server: server.name.clone(),
        settings: h.finish(),
        domain: domain_of(server, smtp),
    }
}

/// EWS URLs found by Autodiscover, per server settings and domain; kept across reloads, so a
/// reload asks again only for domains (or server settings) it has not seen.
#[derive(Clone, Default)]
pub struct Endpoints(Arc<Mutex<HashMap<CacheKey, url::Url>>>);

/// Autodiscover lookups run at once.
const PARALLEL_LOOKUPS: usize = 8;

impl Endpoints {
    /// The EWS URL of every mailbox of `cfg` (by lower-case address): set by hand, or by
    /// Autodiscover once per server and domain, with the server's own auth (the service
    /// account, the app's token, or the first mailbox's own credentials). A domain whose
    /// Autodiscover fails is an error naming the server, the domain and why.
    pub async fn resolve(
        &self,
        cfg: &Config,
        tokens: &Tokens,
    ) -> anyhow::Result<HashMap<String, url::Url>> {
        use futures_util::StreamExt;
        let mut out = HashMap::new();
        // (cache key, server, first mailbox of the domain), owned: the lookups run as one
        // stream of futures.
        let mut todo: Vec<(CacheKey, ServerConfig, MailboxConfig)> = Vec::new();
        for m in &cfg.mailboxes {
            let server = cfg
                .server(&m.server)
                .ok_or_else(|| anyhow!("mailbox {}: unknown server {}", m.smtp, m.server))?;
            let smtp = m.smtp.to_lowercase();
            if let Endpoint::Url(u) = &server.endpoint {
                out.insert(smtp, u.clone());
                continue;
            }
            let key = cache_key(server, &smtp);
            if let Some(u) = self.0.lock().get(&key) {
                out.insert(smtp, u.clone());
                continue;
            }
            if !todo.iter().any(|(k, _, _)| *k == key) {
                todo.push((key, server.clone(), m.clone()));
            }
        }
        let found: Vec<_> = futures_util::stream::iter(todo)
            .map(|(key, server, m)| async move {
                let result = async {
                    let credentials = server.service_account.as_ref().or(m.credentials.as_ref());
                    let ad = autodiscover(&server, auth(&server, credentials, tokens)?)?;
                    discover(&server, &ad, &m.smtp.to_lowercase())
                        .await
                        .map_err(anyhow::Error::from)
                }
                .await
                .with_context(|| {
                    format!(
                        "servers.{}: Autodiscover for {} (asked for {})",
                        server.name, key.domain, m.smtp
                    )
                });
                (key, result)
            })
            .buffer_unordered(PARALLEL_LOOKUPS)
            .collect()
            .await;
        for (key, result) in found {
            let url = result?.ews_url;
            tracing::info!(server = %key.server, domain = %key.domain, ews_url = %url, "Autodiscover found the EWS endpoint");
            self.0.lock().insert(key, url);
        }
        for m in &cfg.mailboxes {
            let smtp = m.smtp.to_lowercase();
            if out.contains_key(&smtp) {
                continue;
            }
            let server = cfg
                .server(&m.server)
                .ok_or_else(|| anyhow!("mailbox {}: unknown server {}", m.smtp, m.server))?;
            let key = cache_key(server, &smtp);
            let url = self
                .0
                .lock()
                .get(&key)
                .cloned()
                .ok_or_else(|| anyhow!("mailbox {smtp}: no EWS endpoint was found"))?;
            out.insert(smtp, url);
        }
        Ok(out)
    }
}

/// The credentials a mailbox's requests use: its own, or the server's service account.
pub fn credentials_of<'a>(
    server: &'a ServerConfig,
    m: &'a MailboxConfig,
) -> Option<&'a config::Credentials> {
    m.credentials.as_ref().or(server.service_account.as_ref())
}
