//! mailsync's configuration: one TOML file plus environment overrides, parsed strictly and
//! validated as a whole.
//!
//! [`load`] reads the file, applies the overrides listed in [`overrides`], resolves every secret
//! and checks everything, returning either a typed [`Config`] or *all* problems found, each
//! with its key path (`mailboxes[3].smtp: "bob@" is not an e-mail address`). The types below
//! are what the rest of the service uses; [`raw`] mirrors the file.

mod cluster;
pub mod raw;
mod validate;

pub use cluster::ClusterConfig;
pub use validate::is_email;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::NaiveDate;

use crate::environment::Environment;
use crate::secret::SecretString;

/// Environment variables that override file settings. Secrets referenced as
/// `{ env = "…" }` in the file are read from the variable named there.
pub mod overrides {
    /// Overrides `database.url`.
    pub const DATABASE_URL: &str = "MAILSYNC_DATABASE_URL";
    /// Overrides `state.url`.
    pub const STATE_URL: &str = "MAILSYNC_STATE_URL";
    /// Overrides `admin.listen`.
    pub const ADMIN_LISTEN: &str = "MAILSYNC_ADMIN_LISTEN";
    /// Overrides `admin.token`.
    pub const ADMIN_TOKEN: &str = "MAILSYNC_ADMIN_TOKEN";
    /// Overrides `logging.format`.
    pub const LOG_FORMAT: &str = "MAILSYNC_LOG_FORMAT";
    /// Overrides `logging.level`.
    pub const LOG_LEVEL: &str = "MAILSYNC_LOG_LEVEL";
    /// Every override, for the docs and `--help`.
    pub const ALL: &[&str] = &[
        DATABASE_URL,
        STATE_URL,
        ADMIN_LISTEN,
        ADMIN_TOKEN,
        LOG_FORMAT,
        LOG_LEVEL,
    ];
}

/// Default admin listen address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9898";
/// Default state store when none is configured.
pub const DEFAULT_STATE_URL: &str = "sqlite:mailsync-state.db";
/// Default retention of logs and leftovers, in days.
pub const DEFAULT_RETENTION_DAYS: u32 = 90;
/// Default OAuth2 scope for EWS.
pub const DEFAULT_OAUTH2_SCOPE: &str = "https://outlook.office365.com/.default";

/// One problem in the configuration: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Key path such as `mailboxes[3].smtp`; empty for a problem with the file as a whole.
    pub path: String,
    /// What is wrong, lowercase, naming the offending value where that is not a secret.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one configuration, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file the problems were found in.
    pub file: PathBuf,
    /// The problems, at least one.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "{}: {n} configuration error{}",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Admin HTTP API.
    pub admin: AdminConfig,
    /// Log output.
    pub logging: LoggingConfig,
    /// The business database; `None` only where a command needs none.
    pub database: Option<DatabaseConfig>,
    /// mailsync's state store.
    pub state: DatabaseConfig,
    /// Tenants (Mandanten), by id.
    pub tenants: Vec<TenantConfig>,
    /// Exchange servers.
    pub servers: Vec<ServerConfig>,
    /// Mailboxes, with `[mailbox_defaults]` already applied.
    pub mailboxes: Vec<MailboxConfig>,
    /// SMTP server for outbox mails with an alternative sender address.
    pub smtp: Option<SmtpConfig>,
    /// Settings of the sync that apply to every mailbox.
    pub sync: SyncConfig,
    /// What is pruned, and when.
    pub retention: RetentionConfig,
    /// Several instances on one PostgreSQL state store (`None`: this one runs every mailbox).
    pub cluster: Option<ClusterConfig>,
}

/// `[sync]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncConfig {
    /// Every folder is read once in about this interval even without a notification
    /// (`None`: never).
    pub safety_read: Option<std::time::Duration>,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            safety_read: Some(std::time::Duration::from_secs(6 * 3600)),
        }
    }
}

/// How long logs and leftovers are kept, and how often the pruning job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Age after which conflict-log entries and consumed crm_changes rows are deleted, and
    /// how long a mailbox removed from the configuration keeps its state.
    pub keep: Duration,
    /// Time between two pruning runs (the first runs at start).
    pub interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            keep: Duration::from_secs(DEFAULT_RETENTION_DAYS as u64 * 86_400),
            interval: Duration::from_secs(3600),
        }
    }
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// STARTTLS after connecting (required, never downgraded).
    StartTls,
    /// TLS from the first byte (SMTPS).
    Tls,
    /// None: a relay on the same host or network only.
    None,
}

/// The SMTP server outbox mails with an alternative sender go through.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// Host name.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Transport security.
    pub tls: SmtpTls,
    /// User name and password, when the server wants them.
    pub credentials: Option<(String, SecretString)>,
}

impl Config {
    /// The server named `name`.
    pub fn server(&self, name: &str) -> Option<&ServerConfig> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// The mailbox with this SMTP address (case-insensitive).
    pub fn mailbox(&self, smtp: &str) -> Option<&MailboxConfig> {
        self.mailboxes
            .iter()
            .find(|m| m.smtp.eq_ignore_ascii_case(smtp))
    }
}

/// Admin HTTP API settings.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Where the admin server listens.
    pub listen: SocketAddr,
    /// Bearer token for /api; `None` only on a loopback address, where /api is then refused.
    pub token: Option<SecretString>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl LogFormat {
    /// Parses `text` or `json`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// Logging settings.
#[derive(Debug, Clone)]
pub struct LoggingConfig {
    /// Output format.
    pub format: LogFormat,
    /// tracing filter directive.
    pub level: String,
}

/// Which SQL database a URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    /// SQLite file (the embedded default).
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    MySql,
}

/// A database connection.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// Connection URL; a secret because it may carry a password.
    pub url: SecretString,
    /// Kind of database, from the URL scheme.
    pub kind: DbKind,
    /// Pool size.
    pub max_connections: u32,
}

/// A tenant (Mandant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantConfig {
    /// crm_tenants.id.
    pub id: String,
    /// Display name.
    pub name: String,
}

/// How the EWS endpoint of a server is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Set by hand.
    Url(url::Url),
    /// By Autodiscover, from this domain or each mailbox's own.
    Autodiscover {
        /// Fixed domain, or `None` for the mailbox's domain.
        domain: Option<String>,
        /// An Autodiscover endpoint set by hand, asked before the DNS-based search.
        url: Option<url::Url>,
        /// Hosts outside the mailbox's domain that may receive credentials (`*.suffix` for a
        /// domain's hosts).
        allowed_hosts: Vec<String>,
    },
}

/// How the service account of a server reaches the mailboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessMode {
    /// ExchangeImpersonation: the account holds the ApplicationImpersonation right (or is an
    /// app-only OAuth2 token).
    Impersonation,
    /// Delegate access: the account has full access to each mailbox and opens it with its own
    /// identity.
    Delegate,
}

impl AccessMode {
    /// Config name.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::Impersonation => "impersonation",
            AccessMode::Delegate => "delegate",
        }
    }
}

/// EWS RequestServerVersion values mailsync speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExchangeVersion {
    /// Exchange2010_SP2 (the default: understood by every server since 2010 SP2).
    Exchange2010Sp2,
    /// Exchange2013.
    Exchange2013,
    /// Exchange2013_SP1.
    Exchange2013Sp1,
    /// Exchange2016.
    Exchange2016,
}

impl ExchangeVersion {
    /// All versions with their wire names.
    pub const ALL: [(ExchangeVersion, &'static str); 4] = [
        (ExchangeVersion::Exchange2010Sp2, "Exchange2010_SP2"),
        (ExchangeVersion::Exchange2013, "Exchange2013"),
        (ExchangeVersion::Exchange2013Sp1, "Exchange2013_SP1"),
        (ExchangeVersion::Exchange2016, "Exchange2016"),
    ];

    /// The wire name, as in `RequestServerVersion Version="…"`.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(v, _)| *v == self)
            .map(|(_, s)| *s)
            .unwrap_or("Exchange2010_SP2")
    }
}

/// Username and password.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: SecretString,
}

/// The credential an OAuth2 client proves itself with.
#[derive(Debug, Clone)]
pub enum OAuth2Credential {
    /// A client secret.
    Secret(SecretString),
    /// A certificate and its private key (PEM files), read and checked when the
    /// configuration is loaded.
    Certificate {
        /// Certificate file.
        certificate_file: PathBuf,
        /// Private key file.
        private_key_file: PathBuf,
        /// The loaded credential: the key that signs client assertions and the certificate's
        /// thumbprint.
        credential: std::sync::Arc<ews::client::ClientCertificate>,
    },
}

/// OAuth2 client-credentials settings.
#[derive(Debug, Clone)]
pub struct OAuth2Config {
    /// Directory tenant.
    pub tenant_id: String,
    /// Application id.
    pub client_id: String,
    /// Secret or certificate.
    pub credential: OAuth2Credential,
    /// Scope requested.
    pub scope: String,
    /// Token endpoint.
    pub token_url: url::Url,
}

/// Authentication towards a server.
#[derive(Debug, Clone)]
pub enum AuthConfig {
    /// HTTP Basic.
    Basic,
    /// NTLM/Negotiate.
    Ntlm,
    /// OAuth2 bearer tokens, app-only.
    OAuth2(Box<OAuth2Config>),
}

impl AuthConfig {
    /// Short name for summaries.
    pub fn name(&self) -> &'static str {
        match self {
            AuthConfig::Basic => "basic",
            AuthConfig::Ntlm => "ntlm",
            AuthConfig::OAuth2(_) => "oauth2",
        }
    }
}

/// Client-side request budget towards one server.
#[derive(Debug, Clone, PartialEq)]
pub struct ThrottleConfig {
    /// Sustained requests per second.
    pub requests_per_second: f64,
    /// Burst size.
    pub burst: u32,
    /// Requests in flight at once.
    pub max_concurrent_requests: u32,
}

/// Streaming notification settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamingConfig {
    /// Streaming on; off means polling only.
    pub enabled: bool,
    /// Mailboxes per GetStreamingEvents connection.
    pub group_size: u32,
    /// ConnectionTimeout of GetStreamingEvents.
    pub connection_timeout: Duration,
    /// Polling interval of the fallback.
    pub polling_interval: Duration,
}

/// One Exchange server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Name mailboxes refer to.
    pub name: String,
    /// Where EWS is.
    pub endpoint: Endpoint,
    /// How to authenticate.
    pub auth: AuthConfig,
    /// RequestServerVersion.
    pub version: ExchangeVersion,
    /// Extra trusted CA certificates.
    pub ca_file: Option<PathBuf>,
    /// http:// allowed.
    pub allow_http: bool,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Service account with impersonation or full access, if any (basic/ntlm only).
    pub service_account: Option<Credentials>,
    /// How the service account reaches the mailboxes.
    pub access: AccessMode,
    /// The largest answer read for requests without MIME content, in bytes.
    pub max_response_bytes: u64,
    /// The largest answer read for requests with MIME content, in bytes.
    pub max_mime_response_bytes: u64,
    /// Request budget.
    pub throttle: ThrottleConfig,
    /// Streaming.
    pub streaming: StreamingConfig,
}

impl ServerConfig {
    /// Whether requests for mailboxes on this server use ExchangeImpersonation.
    pub fn impersonation(&self) -> bool {
        (self.service_account.is_some() && self.access == AccessMode::Impersonation)
            || matches!(self.auth, AuthConfig::OAuth2(_))
    }

    /// How a request for `mailbox` reaches it: with the mailbox's own credentials, its own
    /// mailbox; otherwise the server's access mode.
    pub fn access_for(&self, mailbox: &MailboxConfig) -> ews::Access {
        if mailbox.credentials.is_some() {
            ews::Access::Own
        } else if self.impersonation() {
            ews::Access::Impersonation
        } else {
            ews::Access::Delegate
        }
    }
}

/// A data area of a mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Area {
    /// Contacts folder.
    Contacts,
    /// Calendar.
    Calendar,
    /// Tasks.
    Tasks,
    /// Mail folders.
    Mail,
}

impl Area {
    /// All areas, in display order.
    pub const ALL: [Area; 4] = [Area::Contacts, Area::Calendar, Area::Tasks, Area::Mail];

    /// Config and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Area::Contacts => "contacts",
            Area::Calendar => "calendar",
            Area::Tasks => "tasks",
            Area::Mail => "mail",
        }
    }

    /// Parses a config name.
    pub fn parse(s: &str) -> Option<Area> {
        Area::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// The system whose value wins when a field changed on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leading {
    /// The business database.
    Crm,
    /// Exchange.
    Exchange,
}

/// Initial sync direction of a mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialSync {
    /// CRM data is written to Exchange first.
    CrmToExchange,
    /// Exchange data is imported into the CRM first.
    ExchangeToCrm,
    /// No initial sync: only changes from now on.
    None,
}

/// Where a mail deleted in the CRM goes in Exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailDeleteMode {
    /// Into Deleted Items (the user can still restore it).
    MoveToDeletedItems,
    /// Into the recoverable items (dumpster).
    SoftDelete,
    /// Gone.
    HardDelete,
}

/// Per-area settings of a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AreaConfig {
    /// Who wins a field changed on both sides.
    pub leading: Leading,
    /// Categories a record must carry (any of them); empty means every record.
    pub categories: Vec<String>,
}

/// Mail folder rules of a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailConfig {
    /// Start date for folders without their own.
    pub sync_from: Option<NaiveDate>,
    /// Folder paths not synced.
    pub excluded_folders: Vec<String>,
    /// Start dates per folder path.
    pub folder_sync_from: BTreeMap<String, NaiveDate>,
    /// Delete behaviour in Exchange.
    pub delete_mode: Option<MailDeleteMode>,
    /// Mails larger than this many bytes are not synced (failure log instead).
    pub max_message_bytes: u64,
}

impl Default for MailConfig {
    fn default() -> Self {
        MailConfig {
            sync_from: None,
            excluded_folders: Vec::new(),
            folder_sync_from: BTreeMap::new(),
            delete_mode: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_MB * MIB,
        }
    }
}

/// Default of `mail.max_message_mb`.
pub const DEFAULT_MAX_MESSAGE_MB: u64 = 64;
/// Default of `servers[].max_response_mb`.
pub const DEFAULT_MAX_RESPONSE_MB: u64 = 16;
/// Default of `servers[].max_mime_response_mb`.
pub const DEFAULT_MAX_MIME_RESPONSE_MB: u64 = 128;
/// One MiB.
pub const MIB: u64 = 1024 * 1024;

/// One mailbox, defaults applied.
#[derive(Debug, Clone)]
pub struct MailboxConfig {
    /// Primary SMTP address, lowercased.
    pub smtp: String,
    /// Operator personnel number.
    pub operator: String,
    /// Server name.
    pub server: String,
    /// Tenant id.
    pub tenant: Option<String>,
    /// Mailbox credentials, where the server has no service account.
    pub credentials: Option<Credentials>,
    /// Enabled areas and their settings.
    pub areas: BTreeMap<Area, AreaConfig>,
    /// Initial sync direction.
    pub initial_sync: InitialSync,
    /// Mail folder rules (meaningful when the mail area is enabled).
    pub mail: MailConfig,
    /// When deletes are held for approval.
    pub breaker: BreakerLimits,
    /// First-contact records with several candidates are synced as separate records.
    pub sync_ambiguous: bool,
}

/// Limits of the delete breaker (docs/safety.md): deletes in one scope above
/// `max_deletes` or `max_percent` of the scope, whichever is larger, are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerLimits {
    /// Deletes at once above this many are held...
    pub max_deletes: u64,
    /// ...or above this percentage of the scope, whichever is larger.
    pub max_percent: u64,
}

impl Default for BreakerLimits {
    fn default() -> Self {
        BreakerLimits {
            max_deletes: 20,
            max_percent: 10,
        }
    }
}

/// Reads, overrides, resolves and validates the configuration file at `path`.
pub fn load(path: &Path, env: &dyn Environment) -> Result<Config, ConfigErrors> {
    let fail = |errors| ConfigErrors {
        file: path.to_path_buf(),
        errors,
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(vec![ConfigError {
            path: String::new(),
            message: format!("cannot read {}: {e}", path.display()),
        }])
    })?;
    parse(&text, env).map_err(fail)
}

/// Parses and validates configuration text (the part of [`load`] after reading the file).
pub fn parse(text: &str, env: &dyn Environment) -> Result<Config, Vec<ConfigError>> {
    let raw = validate::parse_toml(text)?;
    validate::validate(raw, env)
}
