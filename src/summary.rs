//! The human-readable summary `mailsync check-config` prints for a valid configuration.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::config::{Area, Config, Endpoint, InitialSync};
use crate::secret::mask_url;

/// Renders servers, mailboxes per server, areas, tenants and stores; never a secret.
pub fn render(cfg: &Config) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        let _ = writeln!(out, "{s}");
    };
    line(format!("tenants: {}", cfg.tenants.len()));
    for t in &cfg.tenants {
        let n = cfg
            .mailboxes
            .iter()
            .filter(|m| m.tenant.as_deref() == Some(&t.id))
            .count();
        line(format!(
            "  {} {:?}: {n} mailbox{}",
            t.id,
            t.name,
            plural(n, "es")
        ));
    }
    line(format!("servers: {}", cfg.servers.len()));
    for s in &cfg.servers {
        let n = cfg.mailboxes.iter().filter(|m| m.server == s.name).count();
        let endpoint = match &s.endpoint {
            Endpoint::Url(u) => u.to_string(),
            Endpoint::Autodiscover { url: Some(u), .. } => format!("autodiscover at {u}"),
            Endpoint::Autodiscover {
                domain: Some(d), ..
            } => format!("autodiscover ({d})"),
            Endpoint::Autodiscover { domain: None, .. } => {
                "autodiscover (mailbox domain)".to_string()
            }
        };
        let access = if s.impersonation() {
            "impersonation"
        } else if s.service_account.is_some() {
            "delegate (full access)"
        } else {
            "mailbox credentials"
        };
        line(format!(
            "  {}: {endpoint}, auth {}, {access}, {}, {n} mailbox{}",
            s.name,
            s.auth.name(),
            s.version.as_str(),
            plural(n, "es")
        ));
        line(format!(
            "    throttle {} req/s (burst {}), {} concurrent; streaming {} (groups of {}, {} min), polling every {} s",
            s.throttle.requests_per_second,
            s.throttle.burst,
            s.throttle.max_concurrent_requests,
            if s.streaming.enabled { "on" } else { "off" },
            s.streaming.group_size,
            s.streaming.connection_timeout.as_secs() / 60,
            s.streaming.polling_interval.as_secs()
        ));
    }
    line(format!("mailboxes: {}", cfg.mailboxes.len()));
    let mut areas: BTreeMap<Area, usize> = BTreeMap::new();
    let mut initial: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &cfg.mailboxes {
        for a in m.areas.keys() {
            *areas.entry(*a).or_default() += 1;
        }
        let dir = match m.initial_sync {
            InitialSync::CrmToExchange => "crm-to-exchange",
            InitialSync::ExchangeToCrm => "exchange-to-crm",
            InitialSync::None => "none",
        };
        *initial.entry(dir).or_default() += 1;
    }
    let areas: Vec<String> = Area::ALL
        .iter()
        .map(|a| format!("{} {}", a.as_str(), areas.get(a).copied().unwrap_or(0)))
        .collect();
    line(format!("  areas: {}", areas.join(", ")));
    let initial: Vec<String> = initial.iter().map(|(k, v)| format!("{k} {v}")).collect();
    line(format!("  initial sync: {}", initial.join(", ")));
    match &cfg.database {
        Some(db) => line(format!("business database: {}", mask_url(db.url.expose()))),
        None => line("business database: not configured".to_string()),
    }
    line(format!("state store: {}", mask_url(cfg.state.url.expose())));
    match &cfg.smtp {
        Some(s) => line(format!(
            "smtp (outbox mails of other senders): {}:{} ({}{})",
            s.host,
            s.port,
            match s.tls {
                crate::config::SmtpTls::StartTls => "starttls",
                crate::config::SmtpTls::Tls => "tls",
                crate::config::SmtpTls::None => "no tls",
            },
            if s.credentials.is_some() {
                ", login"
            } else {
                ""
            }
        )),
        None => line("smtp: none (outbox mails of other senders fail)".to_string()),
    }
    line(format!(
        "admin: {} ({})",
        cfg.admin.listen,
        if cfg.admin.token.is_some() {
            "token set"
        } else {
            "no token: /api refused"
        }
    ));
    out
}

fn plural(n: usize, suffix: &str) -> &str {
    if n == 1 {
        ""
    } else {
        suffix
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    #[test]
    fn summary_counts_and_masks() {
        let env: HashMap<&str, &str> =
            [("PW", "pw-not-shown"), ("DB", "postgres://u:db-pw@h/crm")].into();
        let text = r#"
[database]
url = { env = "DB" }
[[tenants]]
id = "10"
name = "A"
[[servers]]
name = "ex1"
ews_url = "https://mail.example.com/EWS/Exchange.asmx"
auth = "basic"
service_account = { username = "svc", password = { env = "PW" } }
[[mailboxes]]
smtp = "a@example.com"
operator = "1"
server = "ex1"
tenant = "10"
areas = ["mail", "calendar"]
[[mailboxes]]
smtp = "b@example.com"
operator = "2"
server = "ex1"
tenant = "10"
initial_sync = "exchange-to-crm"
"#;
        let cfg = crate::config::parse(text, &env).unwrap();
        let s = super::render(&cfg);
        assert!(s.contains("  10 \"A\": 2 mailboxes\n"), "{s}");
        assert!(s.contains("  ex1: https://mail.example.com/EWS/Exchange.asmx, auth basic, impersonation, Exchange2010_SP2, 2 mailboxes\n"), "{s}");
        assert!(
            s.contains("  areas: contacts 1, calendar 2, tasks 1, mail 2\n"),
            "{s}"
        );
        assert!(
            s.contains("  initial sync: exchange-to-crm 1, none 1\n"),
            "{s}"
        );
        assert!(
            s.contains("business database: postgres://u:***@h/crm\n"),
            "{s}"
        );
        assert!(!s.contains("pw-not-shown") && !s.contains("db-pw"), "{s}");

        // Delegate access and a hand-set Autodiscover endpoint are named as such.
        let delegate = text
            .replace(
                "ews_url = \"https://mail.example.com/EWS/Exchange.asmx\"",
                "autodiscover = true\nautodiscover_url = \"https://ad.example.com/autodiscover/autodiscover.svc\"",
            )
            .replace("auth = \"basic\"", "auth = \"basic\"\naccess = \"delegate\"");
        let cfg = crate::config::parse(&delegate, &env).unwrap();
        let s = super::render(&cfg);
        assert!(s.contains("  ex1: autodiscover at https://ad.example.com/autodiscover/autodiscover.svc, auth basic, delegate (full access), Exchange2010_SP2, 2 mailboxes\n"), "{s}");
    }
}
