//! `mailsync test-connection`: checks, mailbox by mailbox, everything a sync needs, and says
//! which check failed and why — the operator in the CRM (with personnel number and e-mail,
//! without which appointments cannot be assigned), Autodiscover, authentication, the right to
//! impersonate the mailbox, and access to each enabled folder; and, when `[smtp]` is
//! configured, the SMTP server (connect, EHLO, TLS, login).

use std::fmt::Write as _;

use ews::ops::GetFolder;
use ews::types::{DistinguishedFolder, FolderRef, Shape};

use crate::config::{self, Area, Config, Endpoint};
use crate::db::Db;
use crate::metrics::Telemetry;
use crate::service::client_for;

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The mailbox.
    pub mailbox: String,
    /// What was checked.
    pub what: String,
    /// `Ok(detail)` or `Err(reason)`.
    pub result: Result<String, String>,
}

fn folder_of(area: Area) -> DistinguishedFolder {
    match area {
        Area::Contacts => DistinguishedFolder::Contacts,
        Area::Calendar => DistinguishedFolder::Calendar,
        Area::Tasks => DistinguishedFolder::Tasks,
        Area::Mail => DistinguishedFolder::Inbox,
    }
}

/// Runs every check for the mailboxes of `cfg` (or only `only`).
pub async fn run(cfg: &Config, only: Option<&str>) -> Vec<Check> {
    let telemetry = Telemetry::new();
    let mut checks = Vec::new();
    let crm = match &cfg.database {
        Some(d) => Some(
            Db::connect(d.url.expose(), 2)
                .await
                .map_err(|e| e.to_string()),
        ),
        None => None,
    };
    let operators = match &crm {
        Some(Ok(db)) => Some(db.operators().await.map_err(|e| e.to_string())),
        Some(Err(e)) => Some(Err(e.clone())),
        None => None,
    };
    for m in cfg
        .mailboxes
        .iter()
        .filter(|m| only.is_none_or(|o| m.smtp.eq_ignore_ascii_case(o)))
    {
        let mut add = |what: &str, result: Result<String, String>| {
            checks.push(Check {
                mailbox: m.smtp.clone(),
                what: what.to_owned(),
                result,
            })
        };
        let tenant: Option<i64> = m.tenant.as_ref().and_then(|t| t.parse().ok());
        add(
            "operator",
            match &operators {
                None => Err("database.url is not configured".into()),
                Some(Err(e)) => Err(format!("cannot read crm_operators: {e}")),
                Some(Ok(ops)) => match ops.iter().find(|o| o.personnel_no == m.operator && tenant.is_none_or(|t| t == o.tenant_id)) {
                    None => Err(format!("no operator with personnel number {:?} in crm_operators", m.operator)),
                    Some(o) => match o.email.as_deref().filter(|e| !e.trim().is_empty()) {
                        None => Err(format!(
                            "operator {} ({}) has no e-mail address; appointments cannot be assigned",
                            o.personnel_no, o.display_name
                        )),
                        Some(email) => Ok(format!("{} {} <{email}>", o.personnel_no, o.display_name)),
                    },
                },
            },
        );
        let Some(server) = cfg.server(&m.server) else {
            add(
                "server",
                Err(format!("server {} is not configured", m.server)),
            );
            continue;
        };
        let url = match &server.endpoint {
            Endpoint::Url(u) => u.clone(),
            Endpoint::Autodiscover { domain } => {
                let Some(creds) = server.service_account.as_ref().or(m.credentials.as_ref()) else {
                    add(
                        "autodiscover",
                        Err("no credentials to ask Autodiscover with".into()),
                    );
                    continue;
                };
                let found = match ews::autodiscover::Autodiscover::new(
                    &creds.username,
                    creds.password.expose(),
                    server.allow_http,
                ) {
                    Ok(ad) => ad
                        .discover(&m.smtp, domain.as_deref())
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match found {
                    Ok(f) => {
                        add("autodiscover", Ok(f.ews_url.to_string()));
                        f.ews_url
                    }
                    Err(e) => {
                        add("autodiscover", Err(e));
                        continue;
                    }
                }
            }
        };
        let credentials: Option<&config::Credentials> =
            m.credentials.as_ref().or(server.service_account.as_ref());
        let client = match client_for(server, url.clone(), credentials, &telemetry) {
            Ok(c) => c,
            Err(e) => {
                add("authentication", Err(format!("{e:#}")));
                continue;
            }
        };
        let impersonate = m.credentials.is_none();
        let target = if impersonate {
            ews::Target::impersonating(&m.smtp)
        } else {
            ews::Target::own(&m.smtp)
        };
        let root = GetFolder {
            folders: vec![FolderRef::well_known(DistinguishedFolder::MsgFolderRoot)],
            shape: Shape::id_only(),
        };
        match client.call(&target, &root).await {
            Ok(reply) => {
                let who = credentials.map_or("?", |c| c.username.as_str());
                add("authentication", Ok(format!("{who} at {url}")));
                let access = reply.output.into_iter().next().map(|r| r.map(|_| ()));
                let what = if impersonate {
                    "impersonation"
                } else {
                    "mailbox access"
                };
                match access {
                    Some(Ok(())) => add(what, Ok(format!("acting for {}", m.smtp))),
                    Some(Err(e)) => {
                        add(what, Err(e.to_string()));
                        continue;
                    }
                    None => {
                        add(what, Err("GetFolder answered nothing".into()));
                        continue;
                    }
                }
            }
            Err(e @ ews::Error::Unauthorized(_)) => {
                add("authentication", Err(e.to_string()));
                continue;
            }
            Err(e @ ews::Error::Denied { .. }) => {
                let who = credentials.map_or("?", |c| c.username.as_str());
                add("authentication", Ok(format!("{who} at {url}")));
                add(
                    if impersonate {
                        "impersonation"
                    } else {
                        "mailbox access"
                    },
                    Err(e.to_string()),
                );
                continue;
            }
            Err(e) => {
                add("connection", Err(e.to_string()));
                continue;
            }
        }
        for area in m.areas.keys() {
            let op = GetFolder {
                folders: vec![FolderRef::well_known(folder_of(*area))],
                shape: Shape::id_only(),
            };
            let result = match client.call(&target, &op).await {
                Ok(r) => match r.output.into_iter().next() {
                    Some(Ok(_)) => Ok("accessible".to_owned()),
                    Some(Err(e)) => Err(e.to_string()),
                    None => Err("GetFolder answered nothing".into()),
                },
                Err(e) => Err(e.to_string()),
            };
            add(&format!("folder {}", area.as_str()), result);
        }
    }
    if let Some(Ok(db)) = crm {
        db.close().await;
    }
    if let Some(relay) = &cfg.smtp {
        checks.push(Check {
            mailbox: "[smtp]".to_owned(),
            what: "smtp server".to_owned(),
            result: crate::sync::smtp::check(relay).await,
        });
    }
    checks
}

/// The report printed by the CLI.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    let width = checks.iter().map(|c| c.mailbox.len()).max().unwrap_or(0);
    for c in checks {
        let (status, text) = match &c.result {
            Ok(detail) => ("ok    ", detail.as_str()),
            Err(reason) => ("FAILED", reason.as_str()),
        };
        let _ = writeln!(out, "{status} {:<width$}  {}: {text}", c.mailbox, c.what);
    }
    let failed = checks.iter().filter(|c| c.result.is_err()).count();
    let _ = writeln!(out, "{} checks, {failed} failed", checks.len());
    out
}
