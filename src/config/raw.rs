//! The configuration file as written: serde types mirroring the TOML one to one.
//!
//! Every table rejects unknown keys. Nothing here is checked beyond its TOML type; that is the
//! job of `validate`, which turns a [`RawConfig`] into the typed [`super::Config`] and reports
//! every problem at once. The doc comment of each field is the contract; the commented example
//! in config/mailsync.example.toml says the same.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::secret::SecretSource;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Admin HTTP API (metrics, health, mailbox control).
    #[serde(default)]
    pub admin: RawAdmin,
    /// Log output.
    #[serde(default)]
    pub logging: RawLogging,
    /// The business (ERP/CRM) database.
    pub database: Option<RawDatabase>,
    /// mailsync's own state store; defaults to a SQLite file next to the working directory.
    pub state: Option<RawDatabase>,
    /// Tenants (Mandanten) whose data is synced.
    #[serde(default)]
    pub tenants: Vec<RawTenant>,
    /// Exchange servers, any number.
    #[serde(default)]
    pub servers: Vec<RawServer>,
    /// Settings every mailbox inherits unless it sets its own.
    #[serde(default)]
    pub mailbox_defaults: RawMailboxSettings,
    /// One entry per synced mailbox (one per operator).
    #[serde(default)]
    pub mailboxes: Vec<RawMailbox>,
    /// How the sync runs beyond single mailboxes.
    #[serde(default)]
    pub sync: RawSync,
    /// SMTP server for outbox mails whose sender is not the mailbox's own address.
    pub smtp: Option<RawSmtp>,
    /// How long logs and leftovers are kept.
    #[serde(default)]
    pub retention: RawRetention,
    /// Several instances sharing the mailboxes through leases in the PostgreSQL state store;
    /// present means enabled.
    pub cluster: Option<RawCluster>,
}

/// `[cluster]`: this instance's place among several sharing one PostgreSQL state store.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// The instance's name as peers and the admin API show it (default: host name and
    /// process id, e.g. `mail1-4711`); 1 to 100 letters, digits, `.`, `_`, `-`, `:`.
    pub instance: Option<String>,
    /// Seconds a mailbox lease and an instance heartbeat stay valid (3 to 300, default 15):
    /// a dead instance's mailboxes move after at most about this long.
    pub lease_seconds: Option<u32>,
    /// The address peers and `409` answers name for this instance's admin API
    /// (e.g. `http://mail1.example.com:9898`; default `http://` + `admin.listen`).
    pub admin_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    /// Days conflict-log entries, consumed crm_changes rows and the state of mailboxes removed
    /// from the configuration are kept (1 to 3650, default 90).
    pub days: Option<u32>,
    /// Minutes between two runs of the pruning job (1 to 1440, default 60); the first runs
    /// at start.
    pub interval_minutes: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSmtp {
    /// Host name of the SMTP server.
    pub host: String,
    /// Port; default 587 for starttls, 465 for tls, 25 for none.
    pub port: Option<u16>,
    /// `starttls` (default), `tls` (implicit TLS) or `none` (local relays only).
    pub tls: Option<String>,
    /// User name, with `password`; none for an open relay.
    pub username: Option<String>,
    /// Password.
    pub password: Option<SecretSource>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Socket address the admin HTTP server listens on; default 127.0.0.1:9898.
    pub listen: Option<String>,
    /// Bearer token required on /api; required unless `listen` is a loopback address.
    pub token: Option<SecretSource>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    /// `text` (default) or `json`.
    pub format: Option<String>,
    /// A tracing filter such as `info` or `mailsync=debug,ews=info`.
    pub level: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    /// Connection URL: `sqlite:PATH`, `postgres://…`, or (business side only) `mysql://…` /
    /// `mariadb://…`.
    pub url: SecretSource,
    /// Upper bound of the connection pool.
    pub max_connections: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    /// The tenant's id as in crm_tenants.id.
    pub id: String,
    /// Human-readable name, for logs and the admin API.
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Name mailboxes refer to with `server = "…"`.
    pub name: String,
    /// The EWS endpoint, e.g. https://mail.example.com/EWS/Exchange.asmx. Exclusive with `autodiscover`.
    pub ews_url: Option<String>,
    /// Find the EWS endpoint by Autodiscover from the mailbox's domain. Exclusive with `ews_url`.
    pub autodiscover: Option<bool>,
    /// Domain to run Autodiscover against; default: each mailbox's own domain.
    pub autodiscover_domain: Option<String>,
    /// An Autodiscover endpoint set by hand (https://HOST/autodiscover/autodiscover.svc or
    /// .xml): asked first, instead of the DNS-based search.
    pub autodiscover_url: Option<String>,
    /// Hosts outside the mailbox's domain that may receive credentials when Autodiscover is
    /// redirected to them (or an SRV record or the http probe points there): host names, or
    /// `*.example.net` for the hosts under a domain.
    pub autodiscover_allowed_hosts: Option<Vec<String>>,
    /// How the service account reaches the mailboxes: `impersonation` (ApplicationImpersonation
    /// right; the default) or `delegate` (full access to each mailbox).
    pub access: Option<String>,
    /// The largest EWS answer read, in MiB, for requests without MIME content.
    pub max_response_mb: Option<u64>,
    /// The largest EWS answer read, in MiB, for requests with MIME content (GetItem of mails).
    pub max_mime_response_mb: Option<u64>,
    /// `basic`, `ntlm` or `oauth2`.
    pub auth: String,
    /// RequestServerVersion sent: Exchange2010_SP2 (default), Exchange2013, Exchange2013_SP1, Exchange2016.
    pub version: Option<String>,
    /// PEM file with extra CA certificates to trust (an internal CA).
    pub ca_file: Option<PathBuf>,
    /// Allow plain http:// endpoints (test set-ups only: credentials travel unencrypted).
    pub allow_http: Option<bool>,
    /// Timeout of one EWS request in seconds (streaming connections excepted).
    pub request_timeout_seconds: Option<u64>,
    /// An account holding the ApplicationImpersonation right that acts for every mailbox.
    pub service_account: Option<RawCredentials>,
    /// OAuth2 client-credentials (app-only) settings; required when `auth = "oauth2"`.
    pub oauth2: Option<RawOAuth2>,
    /// Request budget mailsync keeps towards this server.
    #[serde(default)]
    pub throttle: RawThrottle,
    /// Streaming notifications and the polling fallback.
    #[serde(default)]
    pub streaming: RawStreaming,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCredentials {
    /// User name: `user@domain`, or `DOMAIN\user` for NTLM.
    pub username: String,
    /// The password (a secret: `{ env = "…" }` or `{ file = "…" }`).
    pub password: SecretSource,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOAuth2 {
    /// Azure AD / Entra ID tenant (directory) id or domain.
    pub tenant_id: String,
    /// Application (client) id.
    pub client_id: String,
    /// Client secret; exclusive with `certificate_file`.
    pub client_secret: Option<SecretSource>,
    /// PEM certificate for certificate credentials; exclusive with `client_secret`.
    pub certificate_file: Option<PathBuf>,
    /// PEM private key belonging to `certificate_file`.
    pub private_key_file: Option<PathBuf>,
    /// Token scope; default https://outlook.office365.com/.default.
    pub scope: Option<String>,
    /// Token endpoint; default the Microsoft identity platform endpoint of `tenant_id`.
    pub token_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThrottle {
    /// Sustained EWS requests per second towards this server, all mailboxes together.
    pub requests_per_second: Option<f64>,
    /// Requests allowed in a burst above the sustained rate.
    pub burst: Option<u32>,
    /// EWS requests in flight at once (streaming connections not counted).
    pub max_concurrent_requests: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStreaming {
    /// Use streaming notifications; when false, folders are polled.
    pub enabled: Option<bool>,
    /// Mailboxes sharing one GetStreamingEvents connection (1 to 200).
    pub group_size: Option<u32>,
    /// GetStreamingEvents ConnectionTimeout in minutes (1 to 30); renewed before it ends.
    pub connection_timeout_minutes: Option<u32>,
    /// Polling interval in seconds when streaming is off or keeps failing.
    pub polling_interval_seconds: Option<u64>,
}

/// Settings that `[mailbox_defaults]` provides and each mailbox may override.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMailboxSettings {
    /// Data areas to sync: any of `contacts`, `calendar`, `tasks`, `mail`.
    pub areas: Option<Vec<String>>,
    /// Leading system per area (`crm` or `exchange`), deciding fields changed on both sides.
    pub leading: Option<BTreeMap<String, String>>,
    /// Per area, the categories/markers a record must carry to be synced (empty: all records).
    pub filters: Option<BTreeMap<String, Vec<String>>>,
    /// Initial sync direction: `crm-to-exchange`, `exchange-to-crm` or `none`.
    pub initial_sync: Option<String>,
    /// Mail folder rules.
    pub mail: Option<RawMailSettings>,
    /// Deletes in one scope (own records, the tenant's shared contacts, one mail folder)
    /// above this many at once are held for approval (default 20).
    pub delete_limit: Option<u64>,
    /// ...or above this percentage of the scope, whichever is larger (default 10).
    pub delete_limit_percent: Option<u64>,
    /// First-contact records with several candidates on the other side are synced as
    /// separate records (default false: they are left alone and reported).
    pub sync_ambiguous: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMailSettings {
    /// Initial-sync start date for every mail folder without its own.
    pub sync_from: Option<toml::value::Datetime>,
    /// Folder paths not synced (until removed from this list).
    pub excluded_folders: Option<Vec<String>>,
    /// Per-folder settings.
    pub folders: Option<Vec<RawMailFolder>>,
    /// Where a mail deleted in the CRM goes in Exchange: `move-to-deleted-items` (default),
    /// `soft-delete` or `hard-delete`.
    pub delete_mode: Option<String>,
    /// Mails larger than this (MiB) are not synced; they go to the failure log.
    pub max_message_mb: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMailFolder {
    /// Folder path; the first segment may be a well-known folder (inbox, sentitems, drafts, …).
    pub path: String,
    /// Initial-sync start date of this folder.
    pub sync_from: Option<toml::value::Datetime>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMailbox {
    /// Primary SMTP address of the mailbox.
    pub smtp: String,
    /// The operator's personnel number (crm_operators.personnel_no).
    pub operator: String,
    /// Name of the `[[servers]]` entry the mailbox lives on.
    pub server: String,
    /// Tenant id; required when `[[tenants]]` are configured.
    pub tenant: Option<String>,
    /// Credentials of the mailbox user, for servers without a service account.
    pub credentials: Option<RawCredentials>,
    /// Overrides `mailbox_defaults.areas`.
    pub areas: Option<Vec<String>>,
    /// Overrides `mailbox_defaults.leading`, area by area.
    pub leading: Option<BTreeMap<String, String>>,
    /// Overrides `mailbox_defaults.filters`, area by area.
    pub filters: Option<BTreeMap<String, Vec<String>>>,
    /// Overrides `mailbox_defaults.initial_sync`.
    pub initial_sync: Option<String>,
    /// Overrides `mailbox_defaults.mail`, key by key.
    pub mail: Option<RawMailSettings>,
    /// Overrides `mailbox_defaults.delete_limit`.
    pub delete_limit: Option<u64>,
    /// Overrides `mailbox_defaults.delete_limit_percent`.
    pub delete_limit_percent: Option<u64>,
    /// Overrides `mailbox_defaults.sync_ambiguous`.
    pub sync_ambiguous: Option<bool>,
}

/// `[sync]`: settings of the sync that apply to every mailbox.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSync {
    /// Every folder is read once in about this many hours (jittered) even without a
    /// notification: a safety net against a missed one (default 6; 0 turns it off).
    pub safety_read_hours: Option<f64>,
}
