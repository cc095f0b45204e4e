//! `[cluster]`: several instances sharing the mailboxes through leases in one PostgreSQL
//! state store (src/cluster). Checked here; the defaults that depend on the running process
//! (host name, process id) are filled in when the service starts.

use std::time::Duration;

use super::raw::RawCluster;
use super::{AdminConfig, DatabaseConfig, DbKind};

/// Default lease (and heartbeat validity) in seconds.
pub const DEFAULT_LEASE_SECONDS: u32 = 15;

/// The validated `[cluster]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The name peers and the admin API show; `None`: host name and process id at start.
    pub instance: Option<String>,
    /// How long a lease and a heartbeat stay valid; the membership loop runs every third.
    pub lease: Duration,
    /// This instance's admin API as peers should reach it; `None`: derived from
    /// `admin.listen` (the host name in place of an unspecified address) at start.
    pub admin_url: Option<url::Url>,
}

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
}

/// Checks `raw`, reporting each problem through `err(path, message)`.
pub(super) fn validate(
    err: &mut dyn FnMut(&str, String),
    raw: RawCluster,
    state: &DatabaseConfig,
    _admin: &AdminConfig,
) -> ClusterConfig {
    if state.kind != DbKind::Postgres {
        err(
            "cluster",
            "several instances share their mailboxes through a PostgreSQL state store; \
             set state.url to a postgres:// URL (SQLite cannot be shared) or remove [cluster]"
                .to_owned(),
        );
    }
    if let Some(name) = &raw.instance {
        if !name_ok(name) {
            err(
                "cluster.instance",
                format!("{name:?} must be 1 to 100 letters, digits, '.', '_', '-' or ':'"),
            );
        }
    }
    let seconds = raw.lease_seconds.unwrap_or(DEFAULT_LEASE_SECONDS);
    if !(3..=300).contains(&seconds) {
        err(
            "cluster.lease_seconds",
            format!("{seconds} is out of range, allowed 3 to 300"),
        );
    }
    let admin_url = raw
        .admin_url
        .as_deref()
        .and_then(|u| match url::Url::parse(u) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Some(url)
            }
            Ok(_) => {
                err(
                    "cluster.admin_url",
                    format!("{u:?} is not an http:// or https:// URL with a host"),
                );
                None
            }
            Err(e) => {
                err("cluster.admin_url", format!("{u:?} is not a URL: {e}"));
                None
            }
        });
    ClusterConfig {
        instance: raw.instance,
        lease: Duration::from_secs(u64::from(seconds)),
        admin_url,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::config::parse;

    const BASE: &str = r#"
[database]
url = "postgres://u@db/crm"

[[servers]]
name = "ex"
ews_url = "https://mail.example.com/EWS/Exchange.asmx"
auth = "basic"
service_account = { username = "svc", password = "pw" }
"#;

    fn errors(text: &str) -> Vec<String> {
        match parse(text, &HashMap::<&str, &str>::new()) {
            Ok(_) => vec![],
            Err(e) => e.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn a_cluster_needs_a_postgresql_state_store() {
        let errs = errors(&format!("{BASE}\n[cluster]\n"));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with(
                "cluster: several instances share their mailboxes through a PostgreSQL state store"
            ),
            "{errs:?}"
        );
    }

    #[test]
    fn cluster_settings_and_their_defaults() {
        let text = format!("{BASE}\n[state]\nurl = \"postgres://u@db/state\"\n[cluster]\n");
        let cfg = parse(&text, &HashMap::<&str, &str>::new()).expect("valid");
        let cluster = cfg.cluster.expect("enabled by its table");
        assert_eq!(cluster.lease.as_secs(), 15);
        assert_eq!(cluster.instance, None);
        assert_eq!(cluster.admin_url, None);

        let text = format!(
            "{BASE}\n[state]\nurl = \"postgres://u@db/state\"\n[cluster]\ninstance = \"mail-1\"\nlease_seconds = 5\nadmin_url = \"http://mail1:9898\"\n"
        );
        let cfg = parse(&text, &HashMap::<&str, &str>::new()).expect("valid");
        let cluster = cfg.cluster.unwrap();
        assert_eq!(cluster.instance.as_deref(), Some("mail-1"));
        assert_eq!(cluster.lease.as_secs(), 5);
        assert_eq!(cluster.admin_url.unwrap().as_str(), "http://mail1:9898/");
        assert!(
            parse(BASE, &HashMap::<&str, &str>::new())
                .unwrap()
                .cluster
                .is_none(),
            "no table, no cluster"
        );
    }

    #[test]
    fn bad_cluster_values_are_named_all_at_once() {
        let text = format!(
            "{BASE}\n[state]\nurl = \"postgres://u@db/state\"\n[cluster]\ninstance = \"a b\"\nlease_seconds = 1\nadmin_url = \"ftp://x\"\n"
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs[0].starts_with("cluster.instance: \"a b\" must be"),
            "{errs:?}"
        );
        assert_eq!(
            errs[1],
            "cluster.lease_seconds: 1 is out of range, allowed 3 to 300"
        );
        assert!(
            errs[2].starts_with("cluster.admin_url: \"ftp://x\" is not an http"),
            "{errs:?}"
        );
    }
}
