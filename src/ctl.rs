//! `mailsync ctl`: the admin API from the command line.
//!
//! `status [MAILBOX]` prints a table (or one mailbox in detail); `restart|resync|sync|pause|
//! resume [MAILBOX]` acts on one mailbox, or on every configured mailbox when none is named;
//! `conflicts [MAILBOX] [--since S]` prints the conflict log with both sides' values;
//! `failures [MAILBOX]` the parked failures; `retry ID` makes one due now;
//! `approve-deletes|reject-deletes MAILBOX [--area A [--scope S]]` decides held deletes. The
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
    /// Run an action (`restart`, `resync`, `sync`, `pause`, `resume`).
    Action(String),
    /// Print the conflict log (of the mailbox, if one is named).
    Conflicts {
        /// Only entries since then (time, date or age such as `24h`).
        since: Option<String>,
        /// At most this many (newest first).
        limit: Option<u32>,
    },
    /// Print the parked failures (of the mailbox, if one is named).
    Failures {
        /// At most this many (newest first).
        limit: Option<u32>,
    },
    /// Make the failure with this id due now and run a step of its mailbox.
    Retry(i64),
    /// Print the cluster: instances, heartbeats, who owns each mailbox (or the named one).
    Cluster,
    /// Approve (true) or reject (false) the held deletes of the mailbox.
    Deletes {
        /// Approve, else reject.
        approve: bool,
        /// Only this area.
        area: Option<String>,
        /// Only this scope of the area.
        scope: Option<String>,
    },
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
    let call_with = |method: reqwest::Method, path: String, body: Option<serde_json::Value>| {
        let mut req = client.request(method, format!("{base}{path}"));
        if let Some(token) = &endpoint.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
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
    let call = |method: reqwest::Method, path: String| call_with(method, path, None);
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
        (CtlCommand::Conflicts { since, limit }, mailbox) => {
            let mut query = vec![];
            if let Some(m) = mailbox {
                query.push(format!("mailbox={}", query_value(m)));
            }
            if let Some(s) = since {
                query.push(format!("since={}", query_value(s)));
            }
            if let Some(l) = limit {
                query.push(format!("limit={l}"));
            }
            let body = call(
                reqwest::Method::GET,
                format!("/api/v1/conflicts?{}", query.join("&")),
            )
            .await?;
            let page: ConflictPage = serde_json::from_value(parse(&body)?).map_err(|e| {
                CtlError::Refused(format!("unexpected answer from the admin API: {e}"))
            })?;
            Ok(conflict_table(&page.conflicts))
        }
        (CtlCommand::Failures { limit }, mailbox) => {
            let mut query = vec![];
            if let Some(m) = mailbox {
                query.push(format!("mailbox={}", query_value(m)));
            }
            if let Some(l) = limit {
                query.push(format!("limit={l}"));
            }
            let body = call(
                reqwest::Method::GET,
                format!("/api/v1/failures?{}", query.join("&")),
            )
            .await?;
            let page: FailurePage = serde_json::from_value(parse(&body)?).map_err(|e| {
                CtlError::Refused(format!("unexpected answer from the admin API: {e}"))
            })?;
            Ok(failure_table(&page.failures))
        }
        (CtlCommand::Retry(id), _) => {
            let body = call(
                reqwest::Method::POST,
                format!("/api/v1/failures/{id}/retry"),
            )
            .await?;
            let v = parse(&body)?;
            Ok(format!(
                "failure {id} ({}): due now; step {}\n",
                v["mailbox"].as_str().unwrap_or("?"),
                v["step"].as_str().unwrap_or("?")
            ))
        }
        (CtlCommand::Deletes { .. }, None) => Err(CtlError::Refused(
            "name the mailbox whose held deletes to decide".into(),
        )),
        (
            CtlCommand::Deletes {
                approve,
                area,
                scope,
            },
            Some(smtp),
        ) => {
            // The API's word in the path, and what the answer says was done.
            let (word, done) = if *approve {
                ("approve", "approved")
            } else {
                ("reject", "rejected")
            };
            let body = call_with(
                reqwest::Method::POST,
                format!("/api/v1/mailboxes/{}/deletes/{word}", path_segment(smtp)),
                Some(serde_json::json!({ "area": area, "scope": scope })),
            )
            .await?;
            let v = parse(&body)?;
            Ok(format!(
                "{smtp}: {done} {} held deletes in {} group(s)\n",
                v["items"].as_u64().unwrap_or(0),
                v["groups"].as_u64().unwrap_or(0)
            ))
        }
        (CtlCommand::Cluster, mailbox) => {
            let body = call(reqwest::Method::GET, "/api/v1/cluster".into()).await?;
            Ok(cluster_table(&parse(&body)?, mailbox))
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

/// `GET /api/v1/cluster` as text: the instances, the feed's reader and each mailbox's owner
/// (only `mailbox`'s when one is named).
pub fn cluster_table(v: &serde_json::Value, mailbox: Option<&str>) -> String {
    if v["enabled"] != true {
        return "this instance runs alone (no [cluster] in its configuration)\n".to_owned();
    }
    let text = |x: &serde_json::Value| x.as_str().unwrap_or("-").to_owned();
    let instances = v["instances"].as_array().cloned().unwrap_or_default();
    let mut out = format!(
        "cluster: {} live of {} instances, lease {}s\n",
        v["live"].as_u64().unwrap_or(0),
        instances.len(),
        v["lease_seconds"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(
        out,
        "{:<24} {:<32} {:>10} {:>9}  STATE",
        "INSTANCE", "ADMIN URL", "HEARTBEAT", "MAILBOXES"
    );
    for i in &instances {
        let name = if i["this"] == true {
            format!("{} (this)", text(&i["name"]))
        } else {
            text(&i["name"])
        };
        let state = match (i["stopping"] == true, i["live"] == true) {
            (true, _) => "stopping",
            (false, true) => "live",
            (false, false) => "silent",
        };
        let _ = writeln!(
            out,
            "{name:<24} {:<32} {:>9.1}s {:>9}  {state}",
            text(&i["admin_url"]),
            i["heartbeat_age_seconds"].as_f64().unwrap_or(0.0),
            i["mailboxes"].as_u64().unwrap_or(0)
        );
    }
    let _ = writeln!(
        out,
        "change feed read by: {}",
        v["feed"]["owner"]
            .as_str()
            .unwrap_or("nobody at the moment")
    );
    let _ = writeln!(out, "{:<40} {:<24} {:>6}", "MAILBOX", "OWNER", "EPOCH");
    for m in v["mailboxes"].as_array().into_iter().flatten() {
        if mailbox.is_some_and(|x| !x.eq_ignore_ascii_case(m["mailbox"].as_str().unwrap_or(""))) {
            continue;
        }
        let _ = writeln!(
            out,
            "{:<40} {:<24} {:>6}",
            text(&m["mailbox"]),
            m["owner"].as_str().unwrap_or("(none: handing over)"),
            m["epoch"].as_i64().unwrap_or(0)
        );
    }
    out
}

/// A value for a query string: everything but unreserved characters percent-encoded.
fn query_value(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~@:".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[derive(Deserialize)]
struct ConflictPage {
    conflicts: Vec<ConflictRow>,
}

#[derive(Deserialize)]
struct ConflictRow {
    id: i64,
    at: String,
    mailbox: String,
    area: String,
    crm_id: Option<i64>,
    ews_item_id: Option<String>,
    fields: Vec<String>,
    winner: String,
    #[serde(default)]
    crm_values: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    ews_values: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    merged: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct FailurePage {
    failures: Vec<FailureRow>,
}

#[derive(Deserialize)]
struct FailureRow {
    id: i64,
    mailbox: String,
    area: String,
    crm_id: Option<i64>,
    ews_item_id: Option<String>,
    error: String,
    attempts: i64,
    next_retry_at: Option<String>,
}

fn item(crm_id: Option<i64>, ews: Option<&str>) -> String {
    match (crm_id, ews) {
        (Some(id), _) => format!("crm #{id}"),
        (None, Some(e)) => format!("ews {}", e.chars().take(12).collect::<String>()),
        (None, None) => "-".into(),
    }
}

fn value(v: Option<&serde_json::Value>) -> String {
    match v {
        None | Some(serde_json::Value::Null) => "-".into(),
        Some(other) => other.to_string(),
    }
}

fn conflict_table(rows: &[ConflictRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>6}  {:<20}  {:<28}  {:<8}  {:<16}  WINNER    FIELDS",
        "ID", "WHEN", "MAILBOX", "AREA", "ITEM"
    );
    for c in rows {
        let _ = writeln!(
            out,
            "{:>6}  {:<20}  {:<28}  {:<8}  {:<16}  {:<8}  {}",
            c.id,
            c.at,
            c.mailbox,
            c.area,
            item(c.crm_id, c.ews_item_id.as_deref()),
            c.winner,
            c.fields.join(", ")
        );
        for f in &c.fields {
            if c.crm_values.contains_key(f) || c.ews_values.contains_key(f) {
                let _ = writeln!(
                    out,
                    "          {f}: crm {} | exchange {} -> {}",
                    value(c.crm_values.get(f)),
                    value(c.ews_values.get(f)),
                    value(c.merged.get(f))
                );
            }
        }
    }
    let _ = writeln!(out, "{} conflicts", rows.len());
    out
}

fn failure_table(rows: &[FailureRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>6}  {:<28}  {:<8}  {:<16}  {:>8}  {:<20}  ERROR",
        "ID", "MAILBOX", "AREA", "ITEM", "ATTEMPTS", "NEXT RETRY"
    );
    for f in rows {
        let _ = writeln!(
            out,
            "{:>6}  {:<28}  {:<8}  {:<16}  {:>8}  {:<20}  {}",
            f.id,
            f.mailbox,
            f.area,
            item(f.crm_id, f.ews_item_id.as_deref()),
            f.attempts,
            f.next_retry_at.as_deref().unwrap_or("when it changes"),
            f.error
        );
    }
    let _ = writeln!(out, "{} parked failures", rows.len());
    out
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
