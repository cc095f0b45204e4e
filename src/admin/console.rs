//! The web console at `/`: mailboxes (state, areas, lag, last error, restarts; search, state
//! filter, pages of [`PER_PAGE`]), one mailbox (areas, actions, held deletes, its recent
//! conflicts and failures), the conflict log with both sides' values, and the parked failures
//! with "retry".
//!
//! The shell page and its script and style sheet are built into the binary and hold no data.
//! The script keeps the admin token in sessionStorage and fetches the views below with it as
//! a bearer header; the server renders each view as an HTML fragment (every value escaped)
//! and the script puts it in place. Actions are `<button data-post>`: the script POSTs them to
//! the JSON API with the token and shows the view again, so their effect is visible. No
//! cookie, so no cross-site request can carry the admin's authority; a strict
//! Content-Security-Policy allows only the console's own script and style.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::SystemTime;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use mailsync_actors::{MailboxSnapshot, MailboxState};

use super::api::{self, ConflictParams, FailureParams, MailboxFilter};
use super::held::{self, HeldGroup};
use super::{authorize, AdminState};
use crate::db::journal::{area_of_table, ConflictEntry, ConflictQuery, FailureEntry};
use crate::db::state::Winner;

/// Mailboxes per page.
pub const PER_PAGE: usize = 50;
/// Log entries per page.
const LOG_PAGE: i64 = 50;

const SHELL: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// `GET /`: the shell page.
pub(crate) async fn shell() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .body(SHELL)
}

/// `GET /console/app.js`.
pub(crate) async fn script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(SCRIPT)
}

/// `GET /console/app.css`.
pub(crate) async fn style() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(STYLE)
}

fn fragment(html: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(html)
}

fn problem(message: &str) -> HttpResponse {
    fragment(format!("<p class=\"problem\">{}</p>", esc(message)))
}

/// HTML-escapes text for element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a value for a path segment or a query value.
pub fn enc(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn query_string(pairs: &[(&str, String)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn ago(t: Option<SystemTime>) -> String {
    let Some(t) = t else {
        return "never".to_owned();
    };
    let secs = SystemTime::now()
        .duration_since(t)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => DateTime::<Utc>::from(t)
            .format("%Y-%m-%d %H:%M")
            .to_string(),
    }
}

fn lag(seconds: f64) -> String {
    if seconds < 0.05 {
        "0 s".to_owned()
    } else if seconds < 60.0 {
        format!("{seconds:.1} s")
    } else if seconds < 3600.0 {
        format!("{:.0} min", seconds / 60.0)
    } else {
        format!("{:.1} h", seconds / 3600.0)
    }
}

fn short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}

fn badge(state: &str) -> String {
    format!("<span class=\"badge s-{0}\">{0}</span>", esc(state))
}

fn mailbox_link(smtp: &str) -> String {
    format!(
        "<a class=\"mailbox\" href=\"#/mailbox/{}\">{}</a>",
        enc(smtp),
        esc(smtp)
    )
}

/// The area a folder actor syncs and, for the tenant's shared contacts, its scope.
fn folder_label(folder: &str) -> (String, &'static str) {
    match folder.split_once('/') {
        Some((area, "shared")) => (area.to_owned(), "shared"),
        Some((area, _)) => (area.to_owned(), "own"),
        None => (folder.to_owned(), "own"),
    }
}

/// A folder's state, or `held` when deletes of its area (and scope) wait for approval.
fn area_state(folder: &str, state: &'static str, held: &[HeldGroup]) -> String {
    let (area, scope) = folder_label(folder);
    // A mail folder actor owns the whole tree, so a held mail folder holds the mail area.
    let is_held = held
        .iter()
        .any(|g| g.area == area && (area == "mail" || g.scope == scope));
    if is_held {
        "held".to_owned()
    } else {
        state.to_owned()
    }
}

fn action_button(smtp: &str, action: &str, confirm: Option<&str>) -> String {
    let confirm = confirm
        .map(|c| format!(" data-confirm=\"{}\"", esc(c)))
        .unwrap_or_default();
    format!(
        "<button type=\"button\" class=\"act\" data-post=\"/api/v1/mailboxes/{}/{action}\" data-action=\"{action}\"{confirm}>{action}</button>",
        enc(smtp)
    )
}

fn actions(s: &MailboxSnapshot) -> String {
    let smtp = &*s.smtp;
    let mut out = String::new();
    out.push_str(&action_button(smtp, "sync", None));
    out.push_str(&action_button(smtp, "restart", None));
    out.push_str(&action_button(
        smtp,
        "resync",
        Some(&format!(
            "Resync {smtp}? Every folder is compared in full; this costs EWS requests."
        )),
    ));
    if s.state == MailboxState::Paused {
        out.push_str(&action_button(smtp, "resume", None));
    } else {
        out.push_str(&action_button(smtp, "pause", None));
    }
    out
}

async fn held_map(
    state: &AdminState,
    mailbox: Option<&str>,
) -> Result<Option<BTreeMap<String, Vec<HeldGroup>>>, HttpResponse> {
    held::held_by_mailbox(state, mailbox)
        .await
        .map_err(|_| problem("the held deletes cannot be read right now"))
}

/// `GET /console/view/mailboxes?q=&state=&page=`.
pub(crate) async fn mailboxes(
    req: HttpRequest,
    state: web::Data<AdminState>,
    filter: web::Query<MailboxFilter>,
) -> HttpResponse {
    if let Some(denied) = authorize(&req, &state) {
        return denied;
    }
    if let Err(e) = filter.check() {
        return problem(&e);
    }
    let held = match held_map(&state, None).await {
        Ok(h) => h,
        Err(e) => return e,
    };
    let board = &state.handle.board;
    let all = board.snapshots();
    let total = all.len();
    let matching = api::filter(all, &filter, held.as_ref());
    let pages = matching.len().div_ceil(PER_PAGE).max(1);
    let page = filter.page.unwrap_or(1).clamp(1, pages);
    let q = filter.q.clone().unwrap_or_default();
    let wanted = filter.state.clone().unwrap_or_default();

    let mut h = String::new();
    h.push_str("<h2>Mailboxes</h2>");
    h.push_str("<form class=\"filters\" data-view=\"/mailboxes\">");
    let _ = write!(
        h,
        "<input type=\"search\" name=\"q\" value=\"{}\" placeholder=\"address, server or error\" aria-label=\"search\">",
        esc(&q)
    );
    h.push_str(
        "<select name=\"state\" aria-label=\"state\"><option value=\"\">every state</option>",
    );
    let mut options: Vec<(String, String)> = board
        .states()
        .into_iter()
        .map(|(s, n)| (s.as_str().to_owned(), format!("{} ({n})", s.as_str())))
        .collect();
    options.push(("error".into(), "with an error".into()));
    if let Some(held) = &held {
        options.push(("held".into(), format!("held deletes ({})", held.len())));
    }
    for (value, label) in options {
        let selected = if value == wanted { " selected" } else { "" };
        let _ = write!(
            h,
            "<option value=\"{}\"{selected}>{}</option>",
            esc(&value),
            esc(&label)
        );
    }
    h.push_str("</select><button type=\"submit\">Filter</button></form>");
    let counts: Vec<String> = board
        .states()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("{n} {}", s.as_str()))
        .collect();
    let _ = write!(
        h,
        "<p class=\"summary\" id=\"summary\">{} of {total} mailboxes match · {}</p>",
        matching.len(),
        esc(&counts.join(" · "))
    );
    h.push_str("<table class=\"list\" id=\"mailboxes\"><thead><tr><th>Mailbox</th><th>Server</th><th>State</th><th>Areas</th><th>Lag</th><th>Last sync</th><th>Restarts</th><th>Last error</th><th>Actions</th></tr></thead><tbody>");
    let no_held = Vec::new();
    for s in matching.iter().skip((page - 1) * PER_PAGE).take(PER_PAGE) {
        let groups = held
            .as_ref()
            .and_then(|h| h.get(&*s.smtp))
            .unwrap_or(&no_held);
        let mut areas = String::new();
        for f in &s.folders {
            let st = area_state(&f.id, f.state.as_str(), groups);
            let _ = write!(
                areas,
                "<span class=\"area s-{}\">{}: {}</span> ",
                esc(&st),
                esc(&f.id),
                esc(&st)
            );
        }
        let mailbox_state = if groups.is_empty() {
            s.state.as_str().to_owned()
        } else {
            format!("{} · held", s.state.as_str())
        };
        let _ = write!(
            h,
            "<tr data-mailbox=\"{}\"><td>{}</td><td>{}</td><td class=\"state\">{}</td><td>{areas}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"error\" title=\"{}\">{}</td><td class=\"actions\">{}</td></tr>",
            esc(&s.smtp),
            mailbox_link(&s.smtp),
            esc(&s.server),
            badge(&mailbox_state),
            lag(s.lag.as_secs_f64()),
            ago(s.last_sync),
            s.restarts,
            esc(s.last_error.as_deref().unwrap_or("")),
            esc(&short(s.last_error.as_deref().unwrap_or(""), 100)),
            actions(s)
        );
    }
    h.push_str("</tbody></table>");
    if matching.is_empty() {
        h.push_str("<p class=\"empty\">No mailbox matches.</p>");
    }
    let link = |p: usize| {
        format!(
            "#/mailboxes{}",
            query_string(&[
                ("q", q.clone()),
                ("state", wanted.clone()),
                ("page", p.to_string())
            ])
        )
    };
    h.push_str("<nav class=\"pager\">");
    if page > 1 {
        let _ = write!(
            h,
            "<a href=\"{}\" rel=\"prev\">← previous</a>",
            esc(&link(page - 1))
        );
    }
    let _ = write!(h, "<span class=\"page\">page {page} of {pages}</span>");
    if page < pages {
        let _ = write!(
            h,
            "<a href=\"{}\" rel=\"next\">next →</a>",
            esc(&link(page + 1))
        );
    }
    h.push_str("</nav>");
    fragment(h)
}

/// `GET /console/view/mailbox/{smtp}`.
pub(crate) async fn mailbox(
    req: HttpRequest,
    state: web::Data<AdminState>,
    path: web::Path<String>,
) -> HttpResponse {
    if let Some(denied) = authorize(&req, &state) {
        return denied;
    }
    let smtp = path.into_inner().to_lowercase();
    let Some(s) = state.handle.board.snapshot(&smtp) else {
        return problem(&format!("mailbox {smtp} is not configured"));
    };
    let held = match held_map(&state, Some(&smtp)).await {
        Ok(h) => h,
        Err(e) => return e,
    };
    let groups = held
        .as_ref()
        .and_then(|h| h.get(&smtp).cloned())
        .unwrap_or_default();
    let mut h = String::new();
    let _ = write!(
        h,
        "<h2>{} {}</h2><p class=\"back\"><a href=\"#/mailboxes\">← all mailboxes</a></p>",
        esc(&smtp),
        badge(s.state.as_str())
    );
    let _ = write!(
        h,
        "<div class=\"actions\" id=\"actions\">{}</div>",
        actions(&s)
    );
    h.push_str("<dl class=\"facts\">");
    for (k, v) in [
        ("server", esc(&s.server)),
        ("restarts", s.restarts.to_string()),
        ("lag", lag(s.lag.as_secs_f64())),
        ("last sync", ago(s.last_sync)),
        (
            "next retry",
            super::time(s.next_retry).unwrap_or_else(|| "-".into()),
        ),
        ("last error", esc(s.last_error.as_deref().unwrap_or("none"))),
    ] {
        let _ = write!(h, "<dt>{k}</dt><dd>{v}</dd>");
    }
    h.push_str("</dl><h3>Areas</h3><table class=\"list\" id=\"areas\"><thead><tr><th>Folder</th><th>State</th><th>Steps</th><th>Restarts</th><th>Last sync</th><th>Lag</th><th>Last error</th></tr></thead><tbody>");
    let now = tokio::time::Instant::now();
    for f in &s.folders {
        let st = area_state(&f.id, f.state.as_str(), &groups);
        let folder_lag = f
            .pending_since
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"error\">{}</td></tr>",
            esc(&f.id),
            badge(&st),
            f.steps,
            f.restarts,
            ago(f.last_sync),
            lag(folder_lag),
            esc(f.last_error.as_deref().unwrap_or(""))
        );
    }
    h.push_str("</tbody></table>");
    if held.is_some() {
        h.push_str(&held_section(&smtp, &groups));
    }
    if let Some(db) = &state.store {
        let conflicts = db
            .conflict_page(&ConflictQuery {
                mailbox: Some(smtp.clone()),
                limit: 10,
                ..ConflictQuery::default()
            })
            .await;
        let _ = write!(
            h,
            "<h3>Recent conflicts <a class=\"more\" href=\"#/conflicts?mailbox={}\">all</a></h3>",
            enc(&smtp)
        );
        match conflicts {
            Ok(list) => h.push_str(&conflict_table(&list)),
            Err(e) => h.push_str(&format!("<p class=\"problem\">{}</p>", esc(&e.to_string()))),
        }
        let _ = write!(
            h,
            "<h3>Parked failures <a class=\"more\" href=\"#/failures?mailbox={}\">all</a></h3>",
            enc(&smtp)
        );
        match db.failure_page(Some(&smtp), None, 20).await {
            Ok(list) => h.push_str(&failure_table(&list)),
            Err(e) => h.push_str(&format!("<p class=\"problem\">{}</p>", esc(&e.to_string()))),
        }
    }
    fragment(h)
}

fn held_section(smtp: &str, groups: &[HeldGroup]) -> String {
    let mut h = String::from("<section class=\"held\" id=\"held\"><h3>Held deletes</h3>");
    if groups.is_empty() {
        h.push_str("<p class=\"empty\">Nothing is held.</p></section>");
        return h;
    }
    let total: u64 = groups.iter().map(|g| g.count).sum();
    let base = format!("/api/v1/mailboxes/{}/deletes", enc(smtp));
    let _ = write!(
        h,
        "<p>{total} deletes wait for a decision. Approve applies them; reject restores the items on the side that deleted them.</p>\
         <div class=\"actions\"><button type=\"button\" class=\"act danger\" data-post=\"{base}/approve\" data-confirm=\"Apply all {total} held deletes of {0}?\">approve all</button>\
         <button type=\"button\" class=\"act\" data-post=\"{base}/reject\" data-confirm=\"Restore all {total} deleted items of {0}?\">reject all</button></div>",
        esc(smtp)
    );
    for g in groups {
        let body = serde_json::json!({ "area": g.area, "scope": g.scope }).to_string();
        let side = if g.side == "crm" {
            "the CRM"
        } else {
            "Exchange"
        };
        let _ = write!(
            h,
            "<div class=\"group\" data-area=\"{0}\" data-scope=\"{1}\"><h4>{0} · {1}: {2} deletes in {side}</h4>\
             <table class=\"list\"><thead><tr><th>Item</th><th>CRM id</th><th>Exchange id</th></tr></thead><tbody>",
            esc(&g.area),
            esc(&g.scope),
            g.count
        );
        for item in &g.sample {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=\"id\">{}</td></tr>",
                esc(&item.title),
                item.crm_id.map_or("-".into(), |i| i.to_string()),
                esc(&short(item.ews_id.as_deref().unwrap_or("-"), 24))
            );
        }
        if g.count > g.sample.len() as u64 {
            let _ = write!(
                h,
                "<tr><td colspan=\"3\">… and {} more</td></tr>",
                g.count - g.sample.len() as u64
            );
        }
        let _ = write!(
            h,
            "</tbody></table><div class=\"actions\"><button type=\"button\" class=\"act danger\" data-post=\"{base}/approve\" data-body=\"{0}\" data-confirm=\"Delete {1} items in {side}?\">approve</button>\
             <button type=\"button\" class=\"act\" data-post=\"{base}/reject\" data-body=\"{0}\" data-confirm=\"Restore {1} items?\">reject</button></div></div>",
            esc(&body),
            g.count
        );
    }
    h.push_str("</section>");
    h
}

fn item_label(crm_id: Option<i64>, ews: Option<&str>) -> String {
    match (crm_id, ews) {
        (Some(id), _) => format!("CRM #{id}"),
        (None, Some(e)) if !e.is_empty() => format!("Exchange {}", short(e, 16)),
        _ => "-".to_owned(),
    }
}

fn conflict_table(list: &[ConflictEntry]) -> String {
    if list.is_empty() {
        return "<p class=\"empty\">No conflicts.</p>".to_owned();
    }
    let mut h = String::from("<table class=\"list conflicts\"><thead><tr><th>When</th><th>Mailbox</th><th>Area</th><th>Item</th><th>Fields changed on both sides</th><th>Winner</th><th></th></tr></thead><tbody>");
    for e in list {
        let c = &e.conflict;
        let winner = match c.winner {
            Winner::Crm => "CRM",
            Winner::Exchange => "Exchange",
        };
        let _ = write!(
            h,
            "<tr data-conflict=\"{0}\"><td>{1}</td><td>{2}</td><td>{3}</td><td>{4}</td><td>{5}</td><td>{winner}</td><td><a class=\"open\" href=\"#/conflict/{0}\">details</a></td></tr>",
            e.id,
            e.at.format("%Y-%m-%d %H:%M:%S"),
            mailbox_link(&c.mailbox),
            esc(area_of_table(&c.crm_table)),
            esc(&item_label(c.crm_id, c.ews_item_id.as_deref())),
            esc(&c.fields.join(", "))
        );
    }
    h.push_str("</tbody></table>");
    h
}

fn failure_table(list: &[FailureEntry]) -> String {
    if list.is_empty() {
        return "<p class=\"empty\">No parked failures.</p>".to_owned();
    }
    let mut h = String::from("<table class=\"list failures\"><thead><tr><th>Id</th><th>Mailbox</th><th>Area</th><th>Item</th><th>Error</th><th>Attempts</th><th>Last failed</th><th>Next retry</th><th></th></tr></thead><tbody>");
    for e in list {
        let f = &e.failure;
        let crm = (f.crm_id != 0).then_some(f.crm_id);
        let _ = write!(
            h,
            "<tr data-failure=\"{0}\"><td>{0}</td><td>{1}</td><td>{2}</td><td>{3}</td><td class=\"error\">{4}</td><td>{5}</td><td>{6}</td><td class=\"next\">{7}</td>\
             <td><button type=\"button\" class=\"act\" data-post=\"/api/v1/failures/{0}/retry\">retry</button></td></tr>",
            e.id,
            mailbox_link(&f.mailbox),
            esc(area_of_table(&f.crm_table)),
            esc(&item_label(crm, Some(&f.ews_item_id))),
            esc(&f.error),
            f.attempts,
            e.last_at.format("%Y-%m-%d %H:%M:%S"),
            e.next_retry_at
                .map_or("when it changes".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        );
    }
    h.push_str("</tbody></table>");
    h
}

/// `GET /console/view/conflicts?mailbox=&since=&before=`.
pub(crate) async fn conflicts(
    req: HttpRequest,
    state: web::Data<AdminState>,
    params: web::Query<ConflictParams>,
) -> HttpResponse {
    if let Some(denied) = authorize(&req, &state) {
        return denied;
    }
    let Some(db) = &state.store else {
        return problem("this service has no state store to read the conflict log from");
    };
    let mut query = match params.query(Utc::now()) {
        Ok(q) => q,
        Err(e) => return problem(&e),
    };
    if params.limit.is_none() {
        query.limit = LOG_PAGE;
    }
    let mailbox = params.mailbox.clone().unwrap_or_default();
    let since = params.since.clone().unwrap_or_default();
    let mut h = String::from("<h2>Conflicts</h2><form class=\"filters\" data-view=\"/conflicts\">");
    let _ = write!(
        h,
        "<input type=\"search\" name=\"mailbox\" value=\"{}\" placeholder=\"mailbox\" aria-label=\"mailbox\">\
         <input type=\"text\" name=\"since\" value=\"{}\" placeholder=\"since: 24h, 7d, 2026-03-01\" aria-label=\"since\">\
         <button type=\"submit\">Filter</button></form>",
        esc(&mailbox),
        esc(&since)
    );
    match db.conflict_page(&query).await {
        Ok(list) => {
            h.push_str(&conflict_table(&list));
            let ids: Vec<i64> = list.iter().map(|e| e.id).collect();
            if let Some(next) = api::next_before(&ids, query.limit) {
                let link = format!(
                    "#/conflicts{}",
                    query_string(&[
                        ("mailbox", mailbox.clone()),
                        ("since", since.clone()),
                        ("before", next.to_string())
                    ])
                );
                let _ = write!(
                    h,
                    "<nav class=\"pager\"><a href=\"{}\" rel=\"next\">older →</a></nav>",
                    esc(&link)
                );
            }
        }
        Err(e) => h.push_str(&format!("<p class=\"problem\">{}</p>", esc(&e.to_string()))),
    }
    fragment(h)
}

fn value_text(v: Option<&serde_json::Value>) -> String {
    match v {
        None | Some(serde_json::Value::Null) => "—".to_owned(),
        Some(serde_json::Value::String(s)) if s.is_empty() => "(empty)".to_owned(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// `GET /console/view/conflict/{id}`.
pub(crate) async fn conflict(
    req: HttpRequest,
    state: web::Data<AdminState>,
    path: web::Path<String>,
) -> HttpResponse {
    if let Some(denied) = authorize(&req, &state) {
        return denied;
    }
    let Some(db) = &state.store else {
        return problem("this service has no state store to read the conflict log from");
    };
    let Ok(id) = path.parse::<i64>() else {
        return problem(&format!("{:?} is not a conflict id", path.as_str()));
    };
    let e = match db.conflict_by_id(id).await {
        Ok(Some(e)) => e,
        Ok(None) => return problem(&format!("no conflict {id} (it may have been pruned)")),
        Err(e) => return problem(&e.to_string()),
    };
    let c = &e.conflict;
    let winner = match c.winner {
        Winner::Crm => "crm",
        Winner::Exchange => "exchange",
    };
    let mut h = String::new();
    let _ = write!(
        h,
        "<h2>Conflict {id}</h2><p class=\"back\"><a href=\"#/conflicts\">← conflict log</a></p><dl class=\"facts\">\
         <dt>when</dt><dd>{}</dd><dt>mailbox</dt><dd>{}</dd><dt>area</dt><dd>{}</dd><dt>CRM row</dt><dd>{} {}</dd>\
         <dt>Exchange item</dt><dd class=\"id\">{}</dd><dt>winner</dt><dd id=\"winner\">{}</dd></dl>",
        e.at.format("%Y-%m-%d %H:%M:%S UTC"),
        mailbox_link(&c.mailbox),
        esc(area_of_table(&c.crm_table)),
        esc(&c.crm_table),
        c.crm_id.map_or("-".into(), |i| i.to_string()),
        esc(c.ews_item_id.as_deref().unwrap_or("-")),
        if winner == "crm" { "the CRM (leading system)" } else { "Exchange (leading system)" }
    );
    h.push_str("<table class=\"list values\" id=\"values\"><thead><tr><th>Field</th><th>CRM</th><th>Exchange</th><th>Result</th></tr></thead><tbody>");
    for field in &c.fields {
        let crm = value_text(e.values.crm.get(field));
        let ews = value_text(e.values.exchange.get(field));
        let merged = value_text(e.values.merged.get(field));
        let (crm_class, ews_class) = if winner == "crm" {
            ("won", "lost")
        } else {
            ("lost", "won")
        };
        let _ = write!(
            h,
            "<tr data-field=\"{0}\"><th>{0}</th><td class=\"{crm_class}\">{1}</td><td class=\"{ews_class}\">{2}</td><td class=\"merged\">{3}</td></tr>",
            esc(field),
            esc(&crm),
            esc(&ews),
            esc(&merged)
        );
    }
    h.push_str("</tbody></table>");
    if e.values.crm.is_empty() && e.values.exchange.is_empty() {
        h.push_str("<p class=\"empty\">This entry was logged without the values.</p>");
    }
    fragment(h)
}

/// `GET /console/view/failures?mailbox=&before=`.
pub(crate) async fn failures(
    req: HttpRequest,
    state: web::Data<AdminState>,
    params: web::Query<FailureParams>,
) -> HttpResponse {
    if let Some(denied) = authorize(&req, &state) {
        return denied;
    }
    let Some(db) = &state.store else {
        return problem("this service has no state store to read the failure log from");
    };
    let mailbox = match api::mailbox_param(params.mailbox.as_deref()) {
        Ok(m) => m.unwrap_or_default(),
        Err(e) => return problem(&e),
    };
    let mut h =
        String::from("<h2>Parked failures</h2><form class=\"filters\" data-view=\"/failures\">");
    let _ = write!(
        h,
        "<input type=\"search\" name=\"mailbox\" value=\"{}\" placeholder=\"mailbox\" aria-label=\"mailbox\"><button type=\"submit\">Filter</button></form>\
         <p class=\"hint\">Items that could not be synced. \"retry\" makes one due now and runs a step of its mailbox.</p>",
        esc(&mailbox)
    );
    let limit = params.limit.unwrap_or(LOG_PAGE).clamp(1, api::MAX_LIMIT);
    match db
        .failure_page(
            (!mailbox.is_empty()).then_some(mailbox.as_str()),
            params.before,
            limit,
        )
        .await
    {
        Ok(list) => {
            h.push_str(&failure_table(&list));
            let ids: Vec<i64> = list.iter().map(|e| e.id).collect();
            if let Some(next) = api::next_before(&ids, limit) {
                let link = format!(
                    "#/failures{}",
                    query_string(&[("mailbox", mailbox.clone()), ("before", next.to_string())])
                );
                let _ = write!(
                    h,
                    "<nav class=\"pager\"><a href=\"{}\" rel=\"next\">older →</a></nav>",
                    esc(&link)
                );
            }
        }
        Err(e) => h.push_str(&format!("<p class=\"problem\">{}</p>", esc(&e.to_string()))),
    }
    fragment(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_encoding() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(enc("a b@c.de/&?#"), "a%20b@c.de%2F%26%3F%23");
        assert_eq!(
            query_string(&[("q", "x y".into()), ("state", String::new())]),
            "?q=x%20y"
        );
        assert_eq!(query_string(&[("q", String::new())]), "");
    }

    #[test]
    fn held_marks_the_area_and_scope_it_concerns() {
        let group = |area: &str, scope: &str| HeldGroup {
            mailbox: "a@example.com".into(),
            area: area.into(),
            scope: scope.into(),
            side: "crm".into(),
            count: 30,
            sample: vec![],
        };
        let held = [group("contacts", "shared"), group("mail", "Inbox/Projekte")];
        assert_eq!(area_state("contacts", "idle", &held), "idle");
        assert_eq!(area_state("contacts/shared", "idle", &held), "held");
        assert_eq!(area_state("mail", "syncing", &held), "held");
        assert_eq!(area_state("tasks", "idle", &held), "idle");
        assert_eq!(
            area_state("contacts", "idle", &[group("contacts", "own")]),
            "held"
        );
    }

    #[test]
    fn durations_read_like_a_person_would_say_them() {
        assert_eq!(lag(0.0), "0 s");
        assert_eq!(lag(2.3), "2.3 s");
        assert_eq!(lag(600.0), "10 min");
        assert_eq!(lag(7200.0), "2.0 h");
        assert_eq!(short("abcdef", 3), "abc…");
        assert_eq!(ago(None), "never");
    }
}
