//! `mailsync ctl`: the admin API from the command line.
//!
//! `status [MAILBOX]` prints a table (or one mailbox in detail); `restart|resync|pause|resume
//! [MAILBOX]` acts on one mailbox, or on every configured mailbox when none is named. The
//! API address and token come from `--url`/`--token`, else `MAILSYNC_ADMIN_TOKEN`, else the
//! configuration file's `[admin]`.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Deserialize;

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtlCommand {
    /// Print the status.
    Status,
    /// Run an action (`restart`, `resync`, `pause`, `resume`).
    Action(String),
}

/// Where the API is and how to get in.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Base URL, e.g. `http://127.0.0.1:9898`.
    pub url: String,
    /// Bearer token.
    pub token: Option<String>,
}

/// A failed ctl call.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The API could not be reached.
    #[error("cannot reach the admin API at {url}: {reason}")]
    Unreachable {
        /// The URL tried.
        url: String,
        /// Why.
        reason: String,
    },
    /// The API said no.
    #[error("{0}")]
    Refused(String),
}

#[derive(Deserialize)]
struct List {
    mailboxes: Vec<Mailbox>,
}

#[derive(Deserialize)]
struct Mailbox {
    smtp: String,
    state: String,
    restarts: u32,
    last_sync: Option<String>,
    last_error: Option<String>,
    lag_seconds: f64,
    #[serde(default)]
    next_retry: Option<String>,
    #[serde(default)]
    folders: Vec<Folder>,
}

#[derive(Deserialize)]
struct Folder {
    folder: String,
    state: String,
    steps: u64,
    restarts: u32,
    last_error: Option<String>,
}

/// Runs one ctl command and returns what to print.
pub async fn run(
    endpoint: &Endpoint,
    command: &CtlCommand,
    mailbox: Option<&str>,
) -> Result<String, CtlError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| CtlError::Unreachable {
            url: endpoint.url.clone(),
            reason: e.to_string(),
        })?;
    let base = endpoint.url.trim_end_matches('/').to_owned();
    let call = |method: reqwest::Method, path: String| {
        let mut req = client.request(method, format!("{base}{path}"));
        if let Some(token) = &endpoint.token {
            req = req.bearer_auth(token);
        }
        let url = format!("{base}{path}");
        async move {
            let resp = req.send().await.map_err(|e| CtlError::Unreachable {
                url: url.clone(),
                reason: e.to_string(),
            })?;
            let status = resp.status();
            let body = resp.text().await.map_err(|e| CtlError::Unreachable {
                url,
                reason: e.to_string(),
            })?;
            if status.is_success() {
                Ok(body)
            } else {
                let message = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                    .unwrap_or(body);
                Err(CtlError::Refused(format!(
                    "{message} (HTTP {})",
                    status.as_u16()
                )))
            }
        }
    };
    let parse = |body: &str| -> Result<serde_json::Value, CtlError> {
        serde_json::from_str(body).map_err(|e| {
            CtlError::Refused(format!(
                "the admin API answered something that is not JSON: {e}"
            ))
        })
    };
    match (command, mailbox) {
        (CtlCommand::Status, None) => {
            let body = call(reqwest::Method::GET, "/api/v1/mailboxes".into()).await?;
            let list: List = serde_json::from_value(parse(&body)?).map_err(|e| {
                CtlError::Refused(format!("unexpected answer from the admin API: {e}"))
            })?;
            Ok(table(&list.mailboxes))
        }
        (CtlCommand::Status, Some(smtp)) => {
            let body = call(
                reqwest::Method::GET,
                format!("/api/v1/mailboxes/{}", path_segment(smtp)),
            )
            .await?;
            let mailbox: Mailbox = serde_json::from_value(parse(&body)?).map_err(|e| {
                CtlError::Refused(format!("unexpected answer from the admin API: {e}"))
            })?;
            Ok(detail(&mailbox))
        }
        (CtlCommand::Action(action), Some(smtp)) => {
            call(
                reqwest::Method::POST,
                format!("/api/v1/mailboxes/{}/{action}", path_segment(smtp)),
            )
            .await?;
            Ok(format!("{smtp}: {action} ok\n"))
        }
        (CtlCommand::Action(action), None) => {
            let body = call(reqwest::Method::GET, "/api/v1/mailboxes".into()).await?;
            let list: List = serde_json::from_value(parse(&body)?).map_err(|e| {
                CtlError::Refused(format!("unexpected answer from the admin API: {e}"))
            })?;
            let mut out = String::new();
            let mut failed = Vec::new();
            for m in &list.mailboxes {
                match call(
                    reqwest::Method::POST,
                    format!("/api/v1/mailboxes/{}/{action}", path_segment(&m.smtp)),
                )
                .await
                {
                    Ok(_) => {
                        let _ = writeln!(out, "{}: {action} ok", m.smtp);
                    }
                    Err(e) => failed.push(format!("{}: {e}", m.smtp)),
                }
            }
            if failed.is_empty() {
                Ok(out)
            } else {
                Err(CtlError::Refused(format!("{out}{}", failed.join("\n"))))
            }
        }
    }
}

fn path_segment(smtp: &str) -> String {
    smtp.replace('%', "%25")
        .replace('/', "%2F")
        .replace('?', "%3F")
        .replace('#', "%23")
}

fn table(mailboxes: &[Mailbox]) -> String {
    let mut out = String::new();
    let width = mailboxes
        .iter()
        .map(|m| m.smtp.len())
        .max()
        .unwrap_or(7)
        .max(7);
    let _ = writeln!(
        out,
        "{:<width$}  {:<9} {:>8}  {:<20}  {:>8}  LAST ERROR",
        "MAILBOX", "STATE", "RESTARTS", "LAST SYNC", "LAG (s)"
    );
    for m in mailboxes {
        let _ = writeln!(
            out,
            "{:<width$}  {:<9} {:>8}  {:<20}  {:>8.1}  {}",
            m.smtp,
            m.state,
            m.restarts,
            m.last_sync.as_deref().unwrap_or("-"),
            m.lag_seconds,
            m.last_error.as_deref().unwrap_or("")
        );
    }
    let _ = writeln!(out, "{} mailboxes", mailboxes.len());
    out
}

fn detail(m: &Mailbox) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "mailbox:    {}", m.smtp);
    let _ = writeln!(out, "state:      {}", m.state);
    let _ = writeln!(out, "restarts:   {}", m.restarts);
    let _ = writeln!(out, "last sync:  {}", m.last_sync.as_deref().unwrap_or("-"));
    let _ = writeln!(out, "lag:        {:.1} s", m.lag_seconds);
    if let Some(retry) = &m.next_retry {
        let _ = writeln!(out, "next retry: {retry}");
    }
    if let Some(e) = &m.last_error {
        let _ = writeln!(out, "last error: {e}");
    }
    for f in &m.folders {
        let _ = writeln!(
            out,
            "  {:<24} {:<10} steps {:>6}  restarts {:>3}  {}",
            f.folder,
            f.state,
            f.steps,
            f.restarts,
            f.last_error.as_deref().unwrap_or("")
        );
    }
    out
}
