//! From [`RawConfig`] to [`Config`]: environment overrides, secret resolution and every check,
//! collecting all problems instead of stopping at the first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use chrono::NaiveDate;

use super::raw::*;
use super::*;
use crate::secret::SecretSource;

/// Parses the TOML text; a syntax or type error is reported with its line and key path.
pub(super) fn parse_toml(text: &str) -> Result<RawConfig, Vec<ConfigError>> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let at = inner
            .span()
            .map(|span| {
                let (line, col) = line_col(text, span.start);
                format!("line {line}, column {col}: ")
            })
            .unwrap_or_default();
        vec![ConfigError {
            path: if path == "." { String::new() } else { path },
            message: format!("{at}{}", inner.message().trim_end()),
        }]
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

/// Collects problems while the typed config is built.
struct Checker<'a> {
    env: &'a dyn Environment,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn secret(&mut self, path: &str, source: &SecretSource) -> Option<SecretString> {
        match source.resolve(self.env) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(path, e);
                None
            }
        }
    }

    /// A non-negative value within `range`, else an error naming the bounds.
    fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
        &mut self,
        path: &str,
        value: Option<T>,
        default: T,
        min: T,
        max: T,
    ) -> T {
        let v = value.unwrap_or(default);
        if v < min || v > max {
            self.err(path, format!("{v} is out of range, allowed {min} to {max}"));
        }
        v
    }
}

pub(super) fn validate(raw: RawConfig, env: &dyn Environment) -> Result<Config, Vec<ConfigError>> {
    let mut c = Checker {
        env,
        errors: Vec::new(),
    };
    let admin = admin(&mut c, raw.admin);
    let logging = logging(&mut c, raw.logging);
    let database = database_config(
        &mut c,
        "database",
        raw.database,
        overrides::DATABASE_URL,
        true,
    );
    let state = database_config(&mut c, "state", raw.state, overrides::STATE_URL, false).unwrap_or(
        DatabaseConfig {
            url: SecretString::new(DEFAULT_STATE_URL),
            kind: DbKind::Sqlite,
            max_connections: 5,
        },
    );
    let tenants = tenants(&mut c, raw.tenants);
    // Mailboxes are checked against the servers as declared, so a server with a bad field
    // does not also make every mailbox on it "unknown".
    let declared: Vec<DeclaredServer> = raw
        .servers
        .iter()
        .map(|s| DeclaredServer {
            name: s.name.clone(),
            oauth2: s.auth == "oauth2",
            service_account: s.service_account.is_some(),
            max_mime_response_mb: s
                .max_mime_response_mb
                .unwrap_or(DEFAULT_MAX_MIME_RESPONSE_MB),
        })
        .collect();
    let servers = servers(&mut c, raw.servers);
    let mailboxes = mailboxes(
        &mut c,
        &raw.mailbox_defaults,
        raw.mailboxes,
        &declared,
        &tenants,
    );
    let smtp = raw.smtp.and_then(|r| smtp(&mut c, r));
    let sync = sync_settings(&mut c, raw.sync);
    let retention = retention(&mut c, &raw.retention);
    let cluster = raw.cluster.map(|r| {
        super::cluster::validate(&mut |path, message| c.err(path, message), r, &state, &admin)
    });
    if c.errors.is_empty() {
        Ok(Config {
            admin,
            logging,
            database,
            state,
            tenants,
            servers,
            mailboxes,
            smtp,
            sync,
            retention,
            cluster,
        })
    } else {
        Err(c.errors)
    }
}

fn admin(c: &mut Checker, raw: RawAdmin) -> AdminConfig {
    let (listen_path, listen_text) = match c.env.var(overrides::ADMIN_LISTEN) {
        Some(v) => (overrides::ADMIN_LISTEN.to_string(), v),
        None => (
            "admin.listen".to_string(),
            raw.listen
                .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.to_string()),
        ),
    };
    let listen = match listen_text.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            c.err(
                listen_path,
                format!("{listen_text:?} is not a socket address such as 127.0.0.1:9898"),
            );
            DEFAULT_ADMIN_LISTEN
                .parse()
                .expect("default admin address parses")
        }
    };
    let token = match c.env.var(overrides::ADMIN_TOKEN) {
        Some(v) if !v.is_empty() => Some(SecretString::new(v)),
        Some(_) => {
            c.err(overrides::ADMIN_TOKEN, "is set but empty");
            None
        }
        None => raw.token.and_then(|s| c.secret("admin.token", &s)),
    };
    if let Some(t) = &token {
        if t.expose().len() < 16 {
            c.err(
                "admin.token",
                "is shorter than 16 characters; use a long random token",
            );
        }
        // It travels in an Authorization header; the message never shows it.
        if !t.expose().bytes().all(|b| b.is_ascii_graphic()) {
            c.err(
                "admin.token",
                "holds characters an HTTP header cannot carry (spaces, control characters or non-ASCII); use letters, digits and punctuation",
            );
        }
    }
    if token.is_none() && !listen.ip().is_loopback() {
        c.err(
            "admin.token",
            format!("is required when admin.listen ({listen}) is not a loopback address"),
        );
    }
    AdminConfig { listen, token }
}

fn retention(c: &mut Checker, raw: &super::raw::RawRetention) -> RetentionConfig {
    let days = c.in_range(
        "retention.days",
        raw.days,
        super::DEFAULT_RETENTION_DAYS,
        1,
        3650,
    );
    let minutes = c.in_range(
        "retention.interval_minutes",
        raw.interval_minutes,
        60,
        1,
        1440,
    );
    RetentionConfig {
        keep: Duration::from_secs(u64::from(days) * 86_400),
        interval: Duration::from_secs(u64::from(minutes) * 60),
    }
}

fn logging(c: &mut Checker, raw: RawLogging) -> LoggingConfig {
    let (fpath, ftext) = match c.env.var(overrides::LOG_FORMAT) {
        Some(v) => (overrides::LOG_FORMAT.to_string(), Some(v)),
        None => ("logging.format".to_string(), raw.format),
    };
    let format = match ftext.as_deref() {
        None => LogFormat::Text,
        Some(f) => LogFormat::parse(f).unwrap_or_else(|| {
            c.err(
                fpath,
                format!("{f:?} is not a log format, expected text or json"),
            );
            LogFormat::Text
        }),
    };
    let (lpath, level) = match c.env.var(overrides::LOG_LEVEL) {
        Some(v) => (overrides::LOG_LEVEL.to_string(), v),
        None => (
            "logging.level".to_string(),
            raw.level.unwrap_or_else(|| "info".to_string()),
        ),
    };
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
        c.err(lpath, format!("{level:?} is not a valid log filter: {e}"));
    }
    LoggingConfig { format, level }
}

fn database_config(
    c: &mut Checker,
    key: &str,
    raw: Option<RawDatabase>,
    override_var: &str,
    business: bool,
) -> Option<DatabaseConfig> {
    let (path, url) = match (c.env.var(override_var), &raw) {
        (Some(v), _) => (override_var.to_string(), Some(SecretString::new(v))),
        (None, Some(r)) => {
            let p = format!("{key}.url");
            let v = c.secret(&p, &r.url);
            (p, v)
        }
        (None, None) => return None,
    };
    let url = url?;
    let scheme = url.expose().split(':').next().unwrap_or_default();
    let kind = match scheme {
        "sqlite" => DbKind::Sqlite,
        "postgres" | "postgresql" => DbKind::Postgres,
        "mysql" | "mariadb" if business => DbKind::MySql,
        "mysql" | "mariadb" => {
            c.err(
                path,
                format!(
                    "{:?}: the state store cannot be MariaDB/MySQL; use sqlite:PATH (the default) \
                     or postgres:// (MariaDB/MySQL is supported for the business database, [database])",
                    crate::secret::mask_url(url.expose())
                ),
            );
            return None;
        }
        _ => {
            let allowed = if business {
                "sqlite:, postgres://, mysql:// or mariadb://"
            } else {
                "sqlite: or postgres://"
            };
            c.err(
                path,
                format!(
                    "{:?} is not a supported database URL, expected {allowed}",
                    crate::secret::mask_url(url.expose())
                ),
            );
            return None;
        }
    };
    let max_connections = c.in_range(
        &format!("{key}.max_connections"),
        raw.and_then(|r| r.max_connections),
        if kind == DbKind::Sqlite { 5 } else { 10 },
        1,
        1000,
    );
    Some(DatabaseConfig {
        url,
        kind,
        max_connections,
    })
}

fn tenants(c: &mut Checker, raw: Vec<RawTenant>) -> Vec<TenantConfig> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, t) in raw.into_iter().enumerate() {
        if t.id.trim().is_empty() {
            c.err(format!("tenants[{i}].id"), "is empty");
        } else if !seen.insert(t.id.clone()) {
            c.err(
                format!("tenants[{i}].id"),
                format!("duplicate tenant id {:?}", t.id),
            );
        }
        if t.name.trim().is_empty() {
            c.err(format!("tenants[{i}].name"), "is empty");
        }
        out.push(TenantConfig {
            id: t.id,
            name: t.name,
        });
    }
    out
}

fn servers(c: &mut Checker, raw: Vec<RawServer>) -> Vec<ServerConfig> {
    if raw.is_empty() {
        c.err(
            "servers",
            "no Exchange server configured; add a [[servers]] table",
        );
    }
    let mut seen = HashSet::new();
    raw.into_iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let p = format!("servers[{i}]");
            if s.name.trim().is_empty() {
                c.err(format!("{p}.name"), "is empty");
            } else if !seen.insert(s.name.clone()) {
                c.err(
                    format!("{p}.name"),
                    format!("duplicate server name {:?}", s.name),
                );
            }
            server(c, &p, s)
        })
        .collect()
}

fn server(c: &mut Checker, p: &str, s: RawServer) -> Option<ServerConfig> {
    let allow_http = s.allow_http.unwrap_or(false);
    let endpoint = match (s.ews_url.as_deref(), s.autodiscover.unwrap_or(false)) {
        (Some(_), true) => {
            c.err(p, "set either ews_url or autodiscover = true, not both");
            None
        }
        (None, false) => {
            c.err(p, "no EWS endpoint: set ews_url or autodiscover = true");
            None
        }
        (None, true) => {
            if let Some(d) = &s.autodiscover_domain {
                if !is_domain(d) {
                    c.err(
                        format!("{p}.autodiscover_domain"),
                        format!("{d:?} is not a domain name"),
                    );
                }
            }
            let url = s
                .autodiscover_url
                .as_deref()
                .and_then(|u| https_url(c, &format!("{p}.autodiscover_url"), u, allow_http));
            let mut allowed_hosts = Vec::new();
            for (j, h) in s.autodiscover_allowed_hosts.iter().flatten().enumerate() {
                let bare = h.strip_prefix("*.").unwrap_or(h);
                if is_host(bare) {
                    allowed_hosts.push(h.to_ascii_lowercase());
                } else {
                    c.err(
                        format!("{p}.autodiscover_allowed_hosts[{j}]"),
                        format!("{h:?} is not a host name (or *.domain)"),
                    );
                }
            }
            Some(Endpoint::Autodiscover {
                domain: s.autodiscover_domain.clone(),
                url,
                allowed_hosts,
            })
        }
        (Some(u), false) => {
            for (key, set) in [
                ("autodiscover_domain", s.autodiscover_domain.is_some()),
                ("autodiscover_url", s.autodiscover_url.is_some()),
                (
                    "autodiscover_allowed_hosts",
                    s.autodiscover_allowed_hosts.is_some(),
                ),
            ] {
                if set {
                    c.err(
                        format!("{p}.{key}"),
                        "only applies with autodiscover = true",
                    );
                }
            }
            // Shown masked: a URL may carry a password (user:password@, ?password=).
            let shown = crate::secret::mask_url(u);
            let u = &shown;
            match url::Url::parse(s.ews_url.as_deref().unwrap_or_default()) {
                Ok(url) if has_credentials(&url) => {
                    c.err(format!("{p}.ews_url"), credentials_in_url(u));
                    None
                }
                Ok(url) if url.scheme() == "https" || (url.scheme() == "http" && allow_http) => {
                    if url.host_str().is_none() {
                        c.err(format!("{p}.ews_url"), format!("{u:?} has no host"));
                    }
                    Some(Endpoint::Url(url))
                }
                Ok(url) if url.scheme() == "http" => {
                    c.err(
                        format!("{p}.ews_url"),
                        format!("{u:?} is plain http; credentials would travel unencrypted (set allow_http = true for a test set-up)"),
                    );
                    None
                }
                Ok(_) => {
                    c.err(
                        format!("{p}.ews_url"),
                        format!("{u:?} is not an https:// URL"),
                    );
                    None
                }
                Err(e) => {
                    c.err(format!("{p}.ews_url"), format!("{u:?} is not a URL: {e}"));
                    None
                }
            }
        }
    };

    let version = match s.version.as_deref() {
        None => ExchangeVersion::Exchange2010Sp2,
        Some(v) => match ExchangeVersion::ALL.iter().find(|(_, n)| *n == v) {
            Some((ver, _)) => *ver,
            None => {
                let names: Vec<_> = ExchangeVersion::ALL.iter().map(|(_, n)| *n).collect();
                c.err(
                    format!("{p}.version"),
                    format!(
                        "{v:?} is not a supported version, expected one of {}",
                        names.join(", ")
                    ),
                );
                ExchangeVersion::Exchange2010Sp2
            }
        },
    };

    if let Some(ca) = &s.ca_file {
        if !ca.is_file() {
            c.err(
                format!("{p}.ca_file"),
                format!("{} does not exist or is not a file", ca.display()),
            );
        }
    }

    let service_account = s
        .service_account
        .as_ref()
        .and_then(|sa| credentials(c, &format!("{p}.service_account"), sa));
    let auth = match s.auth.as_str() {
        "basic" => Some(AuthConfig::Basic),
        "ntlm" => Some(AuthConfig::Ntlm),
        "oauth2" => match &s.oauth2 {
            None => {
                c.err(format!("{p}.oauth2"), "is required when auth = \"oauth2\"");
                None
            }
            Some(o) => oauth2(c, &format!("{p}.oauth2"), o, allow_http)
                .map(|o| AuthConfig::OAuth2(Box::new(o))),
        },
        other => {
            c.err(
                format!("{p}.auth"),
                format!("{other:?} is not an auth method, expected basic, ntlm or oauth2"),
            );
            None
        }
    };
    if s.auth != "oauth2" && s.oauth2.is_some() {
        c.err(
            format!("{p}.oauth2"),
            format!("only applies with auth = \"oauth2\" (auth is {:?})", s.auth),
        );
    }
    if s.auth == "oauth2" && s.service_account.is_some() {
        c.err(
            format!("{p}.service_account"),
            "does not apply with auth = \"oauth2\": the app-only token acts for every mailbox",
        );
    }
    let access = match s.access.as_deref() {
        None | Some("impersonation") => AccessMode::Impersonation,
        Some("delegate") => {
            if s.auth == "oauth2" {
                c.err(
                    format!("{p}.access"),
                    "\"delegate\" needs a service account with full access to the mailboxes (auth basic or ntlm); app-only OAuth2 tokens act by impersonation",
                );
            } else if s.service_account.is_none() {
                c.err(
                    format!("{p}.service_account"),
                    "is required with access = \"delegate\": the account that has full access to the mailboxes",
                );
            }
            AccessMode::Delegate
        }
        Some(other) => {
            c.err(
                format!("{p}.access"),
                format!("{other:?} is not an access mode, expected impersonation or delegate"),
            );
            AccessMode::Impersonation
        }
    };
    let max_response_mb = c.in_range(
        &format!("{p}.max_response_mb"),
        s.max_response_mb,
        DEFAULT_MAX_RESPONSE_MB,
        1,
        1024,
    );
    let max_mime_response_mb = c.in_range(
        &format!("{p}.max_mime_response_mb"),
        s.max_mime_response_mb,
        DEFAULT_MAX_MIME_RESPONSE_MB,
        1,
        4096,
    );

    let throttle = ThrottleConfig {
        requests_per_second: {
            let v = s.throttle.requests_per_second.unwrap_or(20.0);
            let key = format!("{p}.throttle.requests_per_second");
            if !v.is_finite() {
                c.err(
                    key,
                    format!("{v} is not a finite number of requests per second"),
                );
            } else if !(v > 0.0 && v <= 10_000.0) {
                c.err(
                    key,
                    format!(
                        "{v} is out of range, allowed more than 0 up to 10000 \
                         (fractions are kept: 0.5 is one request every 2 s)"
                    ),
                );
            }
            v
        },
        burst: c.in_range(
            &format!("{p}.throttle.burst"),
            s.throttle.burst,
            40,
            1,
            100_000,
        ),
        max_concurrent_requests: c.in_range(
            &format!("{p}.throttle.max_concurrent_requests"),
            s.throttle.max_concurrent_requests,
            10,
            1,
            1000,
        ),
    };
    let streaming = StreamingConfig {
        enabled: s.streaming.enabled.unwrap_or(true),
        group_size: c.in_range(
            &format!("{p}.streaming.group_size"),
            s.streaming.group_size,
            200,
            1,
            200,
        ),
        connection_timeout: Duration::from_secs(
            60 * u64::from(c.in_range(
                &format!("{p}.streaming.connection_timeout_minutes"),
                s.streaming.connection_timeout_minutes,
                30,
                1,
                30,
            )),
        ),
        polling_interval: Duration::from_secs(c.in_range(
            &format!("{p}.streaming.polling_interval_seconds"),
            s.streaming.polling_interval_seconds,
            60,
            5,
            86_400,
        )),
    };
    let request_timeout = Duration::from_secs(c.in_range(
        &format!("{p}.request_timeout_seconds"),
        s.request_timeout_seconds,
        100,
        1,
        3600,
    ));

    Some(ServerConfig {
        name: s.name,
        endpoint: endpoint?,
        auth: auth?,
        version,
        ca_file: s.ca_file,
        allow_http,
        request_timeout,
        service_account,
        access,
        // Saturating: a value out of range was reported above and must not overflow here.
        max_response_bytes: max_response_mb.saturating_mul(MIB),
        max_mime_response_bytes: max_mime_response_mb.saturating_mul(MIB),
        throttle,
        streaming,
    })
}

/// An https URL (http only where allowed), with a host; the error names the key.
/// Whether a URL carries credentials of its own (user:password@ or a secret query parameter).
fn has_credentials(url: &url::Url) -> bool {
    !url.username().is_empty()
        || url.password().is_some()
        || crate::secret::mask_url(url.as_str()) != url.as_str()
}

/// The error for a URL with credentials in it (`shown` is already masked).
fn credentials_in_url(shown: &str) -> String {
    format!(
        "{shown:?} carries credentials; they belong in service_account, credentials or oauth2 \
         (secrets from the environment or a file), where they are sent only as the auth allows"
    )
}

fn https_url(c: &mut Checker, key: &str, text: &str, allow_http: bool) -> Option<url::Url> {
    let raw = text;
    // Shown masked: a URL may carry a password (user:password@, ?password=).
    let shown = crate::secret::mask_url(raw);
    let text = shown.as_str();
    match url::Url::parse(raw) {
        Ok(u) if has_credentials(&u) => {
            c.err(key, credentials_in_url(text));
            None
        }
        Ok(u) if u.host_str().is_none() => {
            c.err(key, format!("{text:?} has no host"));
            None
        }
        Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && allow_http) => Some(u),
        Ok(u) if u.scheme() == "http" => {
            c.err(
                key,
                format!("{text:?} is plain http; credentials would travel unencrypted (set allow_http = true for a test set-up)"),
            );
            None
        }
        Ok(_) => {
            c.err(key, format!("{text:?} is not an https:// URL"));
            None
        }
        Err(e) => {
            c.err(key, format!("{text:?} is not a URL: {e}"));
            None
        }
    }
}

fn credentials(c: &mut Checker, p: &str, raw: &RawCredentials) -> Option<Credentials> {
    if raw.username.trim().is_empty() {
        c.err(format!("{p}.username"), "is empty");
    }
    let password = c.secret(&format!("{p}.password"), &raw.password)?;
    Some(Credentials {
        username: raw.username.clone(),
        password,
    })
}

fn oauth2(c: &mut Checker, p: &str, o: &RawOAuth2, allow_http: bool) -> Option<OAuth2Config> {
    if o.tenant_id.trim().is_empty() {
        c.err(format!("{p}.tenant_id"), "is empty");
    }
    if o.client_id.trim().is_empty() {
        c.err(format!("{p}.client_id"), "is empty");
    }
    let credential = match (&o.client_secret, &o.certificate_file) {
        (Some(_), Some(_)) => {
            c.err(p, "set either client_secret or certificate_file, not both");
            None
        }
        (None, None) => {
            c.err(
                p,
                "no client credential: set client_secret or certificate_file",
            );
            None
        }
        (Some(s), None) => c
            .secret(&format!("{p}.client_secret"), s)
            .map(OAuth2Credential::Secret),
        (None, Some(cert)) => {
            let mut ok = true;
            if !cert.is_file() {
                c.err(
                    format!("{p}.certificate_file"),
                    format!("{} does not exist or is not a file", cert.display()),
                );
                ok = false;
            }
            match &o.private_key_file {
                None => {
                    c.err(
                        format!("{p}.private_key_file"),
                        "is required with certificate_file",
                    );
                    ok = false;
                }
                Some(k) if !k.is_file() => {
                    c.err(
                        format!("{p}.private_key_file"),
                        format!("{} does not exist or is not a file", k.display()),
                    );
                    ok = false;
                }
                Some(_) => {}
            }
            let key = o.private_key_file.clone().unwrap_or_default();
            if ok {
                certificate_credential(c, p, cert, &key).map(|credential| {
                    OAuth2Credential::Certificate {
                        certificate_file: cert.clone(),
                        private_key_file: key,
                        credential,
                    }
                })
            } else {
                None
            }
        }
    };
    let token_url_text = o.token_url.clone().unwrap_or_else(|| {
        format!(
            "https://login.microsoftonline.com/{}/oauth2/v2.0/token",
            o.tenant_id
        )
    });
    let token_url = https_url(c, &format!("{p}.token_url"), &token_url_text, allow_http);
    Some(OAuth2Config {
        tenant_id: o.tenant_id.clone(),
        client_id: o.client_id.clone(),
        credential: credential?,
        scope: o
            .scope
            .clone()
            .unwrap_or_else(|| DEFAULT_OAUTH2_SCOPE.to_string()),
        token_url: token_url?,
    })
}

/// Reads the certificate and its private key and checks they belong together, so that a
/// configuration that validates can sign client assertions at run time.
fn certificate_credential(
    c: &mut Checker,
    p: &str,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Option<std::sync::Arc<ews::client::ClientCertificate>> {
    let read = |c: &mut Checker, field: &str, path: &std::path::Path| match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e) => {
            c.err(
                format!("{p}.{field}"),
                format!("{} cannot be read: {e}", path.display()),
            );
            None
        }
    };
    let cert_pem = read(c, "certificate_file", cert);
    let key_pem = read(c, "private_key_file", key);
    let (cert_pem, key_pem) = (cert_pem?, key_pem?);
    match ews::client::ClientCertificate::from_pem(&cert_pem, &key_pem) {
        Ok(credential) => Some(std::sync::Arc::new(credential)),
        Err(e) => {
            let message = match e {
                ews::Error::Request(m) => m,
                other => other.to_string(),
            };
            // Name the file the problem is in.
            let field = if message.starts_with("the certificate") {
                "certificate_file"
            } else {
                "private_key_file"
            };
            c.err(format!("{p}.{field}"), message);
            None
        }
    }
}

/// What mailbox checks need to know of a server, valid or not.
struct DeclaredServer {
    name: String,
    oauth2: bool,
    service_account: bool,
    max_mime_response_mb: u64,
}

fn mailboxes(
    c: &mut Checker,
    defaults: &RawMailboxSettings,
    raw: Vec<RawMailbox>,
    servers: &[DeclaredServer],
    tenants: &[TenantConfig],
) -> Vec<MailboxConfig> {
    // Checked once, so a bad default is reported once and not per mailbox.
    check_settings(c, "mailbox_defaults", defaults);

    let mut by_smtp: HashMap<String, usize> = HashMap::new();
    let mut by_operator: HashMap<(Option<String>, String), usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, m) in raw.into_iter().enumerate() {
        let p = format!("mailboxes[{i}]");
        let smtp = m.smtp.trim().to_ascii_lowercase();
        if !is_email(&smtp) {
            c.err(
                format!("{p}.smtp"),
                format!("{:?} is not an e-mail address", m.smtp),
            );
        } else if let Some(first) = by_smtp.insert(smtp.clone(), i) {
            c.err(
                format!("{p}.smtp"),
                format!("{smtp:?} is already used by mailboxes[{first}]"),
            );
        }
        if m.operator.trim().is_empty() {
            c.err(
                format!("{p}.operator"),
                "is empty: every mailbox belongs to an operator (personnel number)",
            );
        } else if let Some(first) = by_operator.insert((m.tenant.clone(), m.operator.clone()), i) {
            c.err(
                format!("{p}.operator"),
                format!("operator {:?} already has a mailbox (mailboxes[{first}]); one operator has exactly one mailbox", m.operator),
            );
        }
        let server = servers.iter().find(|s| s.name == m.server);
        if server.is_none() {
            let names: Vec<_> = servers.iter().map(|s| s.name.as_str()).collect();
            c.err(
                format!("{p}.server"),
                format!(
                    "unknown server {:?} (configured: {})",
                    m.server,
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
            );
        }
        match (&m.tenant, tenants.is_empty()) {
            (Some(t), _) if !tenants.iter().any(|x| &x.id == t) => {
                c.err(format!("{p}.tenant"), format!("unknown tenant {t:?}"));
            }
            (None, false) => c.err(
                format!("{p}.tenant"),
                "is required because [[tenants]] are configured",
            ),
            _ => {}
        }
        let credentials = m
            .credentials
            .as_ref()
            .and_then(|cr| credentials(c, &format!("{p}.credentials"), cr));
        if let Some(s) = server {
            match (s.oauth2, s.service_account, m.credentials.is_some()) {
                (true, _, true) => c.err(
                    format!("{p}.credentials"),
                    format!(
                        "server {:?} uses oauth2; mailbox credentials do not apply",
                        s.name
                    ),
                ),
                (false, false, false) => c.err(
                    format!("{p}.credentials"),
                    format!("are required: server {:?} has no service_account", s.name),
                ),
                _ => {}
            }
        }

        let own = RawMailboxSettings {
            areas: m.areas,
            leading: m.leading,
            filters: m.filters,
            initial_sync: m.initial_sync,
            mail: m.mail,
            delete_limit: m.delete_limit,
            delete_limit_percent: m.delete_limit_percent,
            sync_ambiguous: m.sync_ambiguous,
        };
        check_settings(c, &p, &own);
        let areas = effective_areas(defaults, &own);
        if areas.is_empty() {
            c.err(format!("{p}.areas"), "no data area enabled");
        }
        let initial_sync = own
            .initial_sync
            .as_deref()
            .or(defaults.initial_sync.as_deref())
            .and_then(parse_initial_sync)
            .unwrap_or(InitialSync::None);
        let mail = effective_mail(defaults.mail.as_ref(), own.mail.as_ref());
        if let Some(s) = server {
            // A mail of the largest size must fit in a GetItem answer (MIME travels base64:
            // 4/3 of its size), or it could never be read.
            // Saturating: both values come from the file unchecked (their range errors are
            // reported on their own keys).
            if mail.max_message_bytes.saturating_mul(4)
                > s.max_mime_response_mb.saturating_mul(MIB).saturating_mul(3)
            {
                let from = if own
                    .mail
                    .as_ref()
                    .is_some_and(|m| m.max_message_mb.is_some())
                {
                    format!("{p}.mail.max_message_mb")
                } else {
                    "mailbox_defaults.mail.max_message_mb".to_string()
                };
                c.err(
                    from,
                    format!(
                        "{} MiB does not fit in an answer of server {:?} (max_mime_response_mb = {}, of which MIME in base64 may take 3/4): raise max_mime_response_mb or lower max_message_mb",
                        mail.max_message_bytes / MIB,
                        s.name,
                        s.max_mime_response_mb
                    ),
                );
            }
        }
        if own.mail.is_some() && !areas.contains_key(&Area::Mail) {
            c.err(
                format!("{p}.mail"),
                "is set but the mail area is not enabled",
            );
        }
        let defaults_breaker = crate::config::BreakerLimits::default();
        let breaker = crate::config::BreakerLimits {
            max_deletes: own
                .delete_limit
                .or(defaults.delete_limit)
                .unwrap_or(defaults_breaker.max_deletes),
            max_percent: own
                .delete_limit_percent
                .or(defaults.delete_limit_percent)
                .unwrap_or(defaults_breaker.max_percent),
        };
        let sync_ambiguous = own
            .sync_ambiguous
            .or(defaults.sync_ambiguous)
            .unwrap_or(false);
        out.push(MailboxConfig {
            smtp,
            operator: m.operator,
            server: m.server,
            tenant: m.tenant,
            credentials,
            areas,
            initial_sync,
            mail,
            breaker,
            sync_ambiguous,
        });
    }
    out
}

/// `[sync]`.
fn sync_settings(c: &mut Checker, raw: super::raw::RawSync) -> super::SyncConfig {
    let mut out = super::SyncConfig::default();
    if let Some(h) = raw.safety_read_hours {
        if !h.is_finite() || !(0.0..=24.0 * 365.0).contains(&h) {
            c.err(
                "sync.safety_read_hours",
                format!("{h} is not a number of hours between 0 (off) and 8760"),
            );
        } else {
            out.safety_read = (h > 0.0).then(|| std::time::Duration::from_secs_f64(h * 3600.0));
        }
    }
    out
}

/// Checks the values of a settings table (defaults or one mailbox's overrides).
fn check_settings(c: &mut Checker, p: &str, s: &RawMailboxSettings) {
    if let Some(areas) = &s.areas {
        let mut seen = HashSet::new();
        for (j, a) in areas.iter().enumerate() {
            if Area::parse(a).is_none() {
                c.err(
                    format!("{p}.areas[{j}]"),
                    format!("{a:?} is not a data area, expected contacts, calendar, tasks or mail"),
                );
            } else if !seen.insert(a) {
                c.err(format!("{p}.areas[{j}]"), format!("{a:?} is listed twice"));
            }
        }
    }
    for (area, leading) in s.leading.iter().flatten() {
        if Area::parse(area).is_none() {
            c.err(
                format!("{p}.leading.{area}"),
                "is not a data area, expected contacts, calendar, tasks or mail",
            );
        }
        if parse_leading(leading).is_none() {
            c.err(
                format!("{p}.leading.{area}"),
                format!("{leading:?} is not a leading system, expected crm or exchange"),
            );
        }
    }
    for (area, cats) in s.filters.iter().flatten() {
        match Area::parse(area) {
            None => c.err(
                format!("{p}.filters.{area}"),
                "is not a data area, expected contacts, calendar, tasks or mail",
            ),
            // Accepting it would promise a filter nothing applies: every message of the
            // synced folders syncs, whatever its categories.
            Some(Area::Mail) => c.err(
                format!("{p}.filters.mail"),
                "mail is not filtered by category (every message of the synced folders syncs); \
                 remove it, and limit mail with mail.excluded_folders or mail.sync_from",
            ),
            Some(_) => {}
        }
        for (j, cat) in cats.iter().enumerate() {
            if cat.trim().is_empty() {
                c.err(format!("{p}.filters.{area}[{j}]"), "is an empty category");
            }
        }
    }
    if let Some(pct) = s.delete_limit_percent {
        if pct > 100 {
            c.err(
                format!("{p}.delete_limit_percent"),
                format!("{pct} is not a percentage (0 to 100)"),
            );
        }
    }
    if let Some(is) = &s.initial_sync {
        if parse_initial_sync(is).is_none() {
            c.err(
                format!("{p}.initial_sync"),
                format!(
                    "{is:?} is not a direction, expected crm-to-exchange, exchange-to-crm or none"
                ),
            );
        }
    }
    if let Some(mail) = &s.mail {
        let mp = format!("{p}.mail");
        if let Some(d) = &mail.sync_from {
            date_only(c, &format!("{mp}.sync_from"), d);
        }
        if let Some(mb) = mail.max_message_mb {
            if !(1..=4096).contains(&mb) {
                c.err(
                    format!("{mp}.max_message_mb"),
                    format!("{mb} is out of range, allowed 1 to 4096"),
                );
            }
        }
        if let Some(mode) = &mail.delete_mode {
            if parse_delete_mode(mode).is_none() {
                c.err(format!("{mp}.delete_mode"), format!("{mode:?} is not a delete mode, expected move-to-deleted-items, soft-delete or hard-delete"));
            }
        }
        let mut excluded = HashSet::new();
        for (j, f) in mail.excluded_folders.iter().flatten().enumerate() {
            let fp = format!("{mp}.excluded_folders[{j}]");
            if let Err(e) = check_folder_path(f) {
                c.err(fp, e);
            } else if !excluded.insert(normalize_path(f)) {
                c.err(fp, format!("{f:?} is listed twice"));
            }
        }
        let mut folders = HashSet::new();
        for (j, f) in mail.folders.iter().flatten().enumerate() {
            let fp = format!("{mp}.folders[{j}]");
            if let Err(e) = check_folder_path(&f.path) {
                c.err(format!("{fp}.path"), e);
                continue;
            }
            let norm = normalize_path(&f.path);
            if !folders.insert(norm.clone()) {
                c.err(
                    format!("{fp}.path"),
                    format!("{:?} is configured twice", f.path),
                );
            }
            if excluded.contains(&norm) {
                c.err(
                    format!("{fp}.path"),
                    format!("{:?} is also in excluded_folders", f.path),
                );
            }
            if let Some(d) = &f.sync_from {
                date_only(c, &format!("{fp}.sync_from"), d);
            }
        }
    }
}

fn effective_areas(
    defaults: &RawMailboxSettings,
    own: &RawMailboxSettings,
) -> BTreeMap<Area, AreaConfig> {
    let names = own.areas.as_ref().or(defaults.areas.as_ref());
    let list: Vec<Area> = match names {
        Some(n) => n.iter().filter_map(|a| Area::parse(a)).collect(),
        None => Area::ALL.to_vec(),
    };
    list.into_iter()
        .map(|area| {
            let key = area.as_str();
            let leading = own
                .leading
                .as_ref()
                .and_then(|l| l.get(key))
                .or_else(|| defaults.leading.as_ref().and_then(|l| l.get(key)))
                .and_then(|s| parse_leading(s))
                .unwrap_or(Leading::Crm);
            let categories = own
                .filters
                .as_ref()
                .and_then(|f| f.get(key))
                .or_else(|| defaults.filters.as_ref().and_then(|f| f.get(key)))
                .cloned()
                .unwrap_or_default();
            (
                area,
                AreaConfig {
                    leading,
                    categories,
                },
            )
        })
        .collect()
}

fn effective_mail(defaults: Option<&RawMailSettings>, own: Option<&RawMailSettings>) -> MailConfig {
    let pick = |f: fn(&RawMailSettings) -> bool| own.filter(|o| f(o)).or(defaults);
    let sync_from = pick(|m| m.sync_from.is_some())
        .and_then(|m| m.sync_from.as_ref())
        .and_then(toml_date);
    let excluded_folders = pick(|m| m.excluded_folders.is_some())
        .and_then(|m| m.excluded_folders.clone())
        .unwrap_or_default();
    let folder_sync_from = pick(|m| m.folders.is_some())
        .and_then(|m| m.folders.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|f| Some((normalize_path(&f.path), toml_date(f.sync_from.as_ref()?)?)))
        .collect();
    let delete_mode = pick(|m| m.delete_mode.is_some())
        .and_then(|m| m.delete_mode.as_deref())
        .and_then(parse_delete_mode);
    let max_message_bytes = pick(|m| m.max_message_mb.is_some())
        .and_then(|m| m.max_message_mb)
        .unwrap_or(DEFAULT_MAX_MESSAGE_MB)
        .saturating_mul(MIB);
    MailConfig {
        sync_from,
        excluded_folders,
        folder_sync_from,
        delete_mode,
        max_message_bytes,
    }
}

fn parse_leading(s: &str) -> Option<Leading> {
    match s {
        "crm" => Some(Leading::Crm),
        "exchange" => Some(Leading::Exchange),
        _ => None,
    }
}

fn parse_initial_sync(s: &str) -> Option<InitialSync> {
    match s {
        "crm-to-exchange" => Some(InitialSync::CrmToExchange),
        "exchange-to-crm" => Some(InitialSync::ExchangeToCrm),
        "none" => Some(InitialSync::None),
        _ => None,
    }
}

fn parse_delete_mode(s: &str) -> Option<MailDeleteMode> {
    match s {
        "move-to-deleted-items" => Some(MailDeleteMode::MoveToDeletedItems),
        "soft-delete" => Some(MailDeleteMode::SoftDelete),
        "hard-delete" => Some(MailDeleteMode::HardDelete),
        _ => None,
    }
}

fn toml_date(d: &toml::value::Datetime) -> Option<NaiveDate> {
    match (d.date, d.time) {
        (Some(date), None) => NaiveDate::from_ymd_opt(
            i32::from(date.year),
            u32::from(date.month),
            u32::from(date.day),
        ),
        _ => None,
    }
}

fn date_only(c: &mut Checker, p: &str, d: &toml::value::Datetime) {
    if toml_date(d).is_none() {
        c.err(p, format!("{d} is not a plain date such as 2025-01-31"));
    }
}

/// Folder paths compare without surrounding slashes and case-insensitively, as Exchange does.
pub(crate) fn normalize_path(p: &str) -> String {
    p.trim_matches('/').to_lowercase()
}

fn check_folder_path(p: &str) -> Result<(), String> {
    let t = p.trim_matches('/');
    if t.is_empty() {
        return Err("is an empty folder path".to_string());
    }
    if t.split('/').any(|seg| seg.trim().is_empty()) {
        return Err(format!("{p:?} has an empty path segment"));
    }
    Ok(())
}

/// A pragmatic address check: what Exchange accepts as a primary SMTP address.
pub fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && !local.contains(['@', ' ', '"', '<', '>', ',', ';'])
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && is_domain(domain)
}

/// A host name: dot-separated labels of letters, digits and hyphens (`localhost` too).
fn is_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
        })
}

fn is_domain(d: &str) -> bool {
    d.len() <= 253
        && d.contains('.')
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
        })
}

fn smtp(c: &mut Checker<'_>, raw: super::raw::RawSmtp) -> Option<SmtpConfig> {
    let before = c.errors.len();
    if raw.host.trim().is_empty() || raw.host.contains(char::is_whitespace) {
        c.err("smtp.host", format!("{:?} is not a host name", raw.host));
    }
    let tls = match raw.tls.as_deref().unwrap_or("starttls") {
        "starttls" => SmtpTls::StartTls,
        "tls" => SmtpTls::Tls,
        "none" => SmtpTls::None,
        other => {
            c.err(
                "smtp.tls",
                format!("{other:?} is not a TLS mode, expected starttls, tls or none"),
            );
            SmtpTls::StartTls
        }
    };
    let port = raw.port.unwrap_or(match tls {
        SmtpTls::StartTls => 587,
        SmtpTls::Tls => 465,
        SmtpTls::None => 25,
    });
    if port == 0 {
        c.err("smtp.port", "0 is not a port");
    }
    let credentials = match (raw.username, raw.password) {
        (Some(u), Some(p)) => c.secret("smtp.password", &p).map(|p| (u, p)),
        (None, None) => None,
        (Some(_), None) => {
            c.err(
                "smtp.password",
                "is missing: username and password go together",
            );
            None
        }
        (None, Some(_)) => {
            c.err(
                "smtp.username",
                "is missing: username and password go together",
            );
            None
        }
    };
    if credentials.is_some() && tls == SmtpTls::None {
        c.err(
            "smtp.tls",
            "is \"none\" but credentials are set: they would travel unencrypted",
        );
    }
    (c.errors.len() == before).then_some(SmtpConfig {
        host: raw.host,
        port,
        tls,
        credentials,
    })
}
