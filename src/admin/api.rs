//! The conflict and failure logs in the admin API, "retry" of a parked failure, and the
//! mailbox filters the list endpoint and the console share.
//!
//! - `GET /api/v1/conflicts?mailbox=&since=&before=&limit=`: newest first; `since` is an
//!   RFC 3339 time, a date (`2026-03-01`, midnight UTC) or an age (`30m`, `24h`, `7d`); the
//!   answer's `next` is the `before` of the next (older) page, `null` on the last.
//! - `GET /api/v1/conflicts/{id}`: one entry with both sides' values and the merged result.
//! - `GET /api/v1/failures?mailbox=&before=&limit=`: the parked failures, newest first.
//! - `POST /api/v1/failures/{id}/retry`: makes the failure due now and asks its mailbox for a
//!   step (every folder, from the stored state); the step retries what is due.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use mailsync_actors::{Action, Command, CommandError, MailboxSnapshot, MailboxState};
use serde::{Deserialize, Serialize};

use super::held::HeldGroup;
use super::{authorize, error, AdminState};
use crate::db::journal::{area_of_table, ConflictEntry, ConflictQuery, FailureEntry};
use crate::db::state::Winner;

/// Largest page the API returns.
pub const MAX_LIMIT: i64 = 500;
/// Page size when none is asked for.
pub const DEFAULT_LIMIT: i64 = 50;

/// Filters of the mailbox list (API and console).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailboxFilter {
    /// Part of the address, the server name or the last error (case-insensitive).
    pub q: Option<String>,
    /// A mailbox state (`running`, `failed`, …), `held` (deletes wait for approval) or
    /// `error` (any last error).
    pub state: Option<String>,
    /// Mailboxes to skip (API paging).
    pub offset: Option<usize>,
    /// Mailboxes to return at most (API paging).
    pub limit: Option<usize>,
    /// Page number, from 1 (console paging).
    pub page: Option<usize>,
}

impl MailboxFilter {
    /// What is wrong with the filter, if anything: a state no mailbox can be in would match
    /// nothing and look like an empty service.
    pub fn check(&self) -> Result<(), String> {
        match self.state.as_deref().map(str::trim) {
            None | Some("" | "held" | "error") => Ok(()),
            Some(s) if MailboxState::ALL.iter().any(|m| m.as_str() == s) => Ok(()),
            Some(s) => Err(format!(
                "state: {s:?} is not a state ({}, held or error)",
                MailboxState::ALL
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

/// The `mailbox` parameter of the log queries: trimmed, lower case, `None` when empty. Text
/// no address can hold (control characters, which PostgreSQL refuses in a query) is an
/// error naming the parameter, not a database failure.
pub(crate) fn mailbox_param(raw: Option<&str>) -> Result<Option<String>, String> {
    let Some(m) = raw.map(str::trim).filter(|m| !m.is_empty()) else {
        return Ok(None);
    };
    if m.chars().any(char::is_control) {
        return Err(format!(
            "mailbox: {m:?} is not an address (control characters)"
        ));
    }
    Ok(Some(m.to_lowercase()))
}

/// The snapshots that pass `filter`, in address order.
pub(crate) fn filter(
    all: Vec<MailboxSnapshot>,
    filter: &MailboxFilter,
    held: Option<&BTreeMap<String, Vec<HeldGroup>>>,
) -> Vec<MailboxSnapshot> {
    let q = filter
        .q
        .as_deref()
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .map(str::to_lowercase);
    let state = filter.state.as_deref().filter(|s| !s.is_empty());
    all.into_iter()
        .filter(|s| {
            q.as_ref().is_none_or(|q| {
                s.smtp.contains(q.as_str())
                    || s.server.to_lowercase().contains(q.as_str())
                    || s.last_error
                        .as_ref()
                        .is_some_and(|e| e.to_lowercase().contains(q.as_str()))
            })
        })
        .filter(|s| match state {
            None => true,
            Some("held") => held.is_some_and(|h| h.get(&*s.smtp).is_some_and(|g| !g.is_empty())),
            Some("error") => s.last_error.is_some(),
            Some(wanted) => s.state.as_str() == wanted,
        })
        .collect()
}

/// Reads `since`: an RFC 3339 time, a date (midnight UTC), or an age such as `30m`, `24h`,
/// `7d` counted back from `now`.
pub fn parse_since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let t = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(t) {
        return Ok(at.with_timezone(&Utc));
    }
    if let Ok(day) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    // The unit is the last character, whatever it is (the text comes from outside: it may
    // end in a character of several bytes).
    let unit = t.chars().next_back().unwrap_or(' ');
    let number = &t[..t.len() - unit.len_utf8().min(t.len())];
    let seconds: i64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => 0,
    };
    let age = match number.parse::<i64>() {
        Ok(n) if seconds > 0 && n >= 0 => n,
        _ => return Err(format!(
            "since: {text:?} is neither a time (2026-03-01T08:00:00Z), a date (2026-03-01) nor an age (30m, 24h, 7d)"
        )),
    };
    // An age reaching back before any time chrono can hold is refused, not a panic.
    age.checked_mul(seconds)
        .and_then(chrono::TimeDelta::try_seconds)
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(|| format!("since: {text:?} reaches back too far"))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A conflict as the API shows it.
#[derive(Debug, Serialize)]
pub(crate) struct ConflictDto {
    id: i64,
    at: String,
    mailbox: String,
    area: String,
    crm_table: String,
    crm_id: Option<i64>,
    ews_item_id: Option<String>,
    fields: Vec<String>,
    winner: &'static str,
    crm_values: serde_json::Map<String, serde_json::Value>,
    ews_values: serde_json::Map<String, serde_json::Value>,
    merged: serde_json::Map<String, serde_json::Value>,
}

impl From<ConflictEntry> for ConflictDto {
    fn from(e: ConflictEntry) -> Self {
        let c = e.conflict;
        ConflictDto {
            id: e.id,
            at: rfc3339(e.at),
            area: area_of_table(&c.crm_table).to_owned(),
            mailbox: c.mailbox,
            crm_table: c.crm_table,
            crm_id: c.crm_id,
            ews_item_id: c.ews_item_id,
            fields: c.fields,
            winner: match c.winner {
                Winner::Crm => "crm",
                Winner::Exchange => "exchange",
            },
            crm_values: e.values.crm,
            ews_values: e.values.exchange,
            merged: e.values.merged,
        }
    }
}

/// A parked failure as the API shows it.
#[derive(Debug, Serialize)]
pub(crate) struct FailureDto {
    id: i64,
    mailbox: String,
    area: String,
    crm_table: String,
    crm_id: Option<i64>,
    ews_item_id: Option<String>,
    error: String,
    attempts: i64,
    first_at: String,
    last_at: String,
    next_retry_at: Option<String>,
}

impl From<FailureEntry> for FailureDto {
    fn from(e: FailureEntry) -> Self {
        let f = e.failure;
        FailureDto {
            id: e.id,
            area: area_of_table(&f.crm_table).to_owned(),
            mailbox: f.mailbox,
            crm_table: f.crm_table,
            crm_id: (f.crm_id != 0).then_some(f.crm_id),
            ews_item_id: (!f.ews_item_id.is_empty()).then_some(f.ews_item_id),
            error: f.error,
            attempts: f.attempts,
            first_at: rfc3339(e.first_at),
            last_at: rfc3339(e.last_at),
            next_retry_at: e.next_retry_at.map(rfc3339),
        }
    }
}

/// Query of the conflict list.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConflictParams {
    /// Only this mailbox.
    pub mailbox: Option<String>,
    /// Only entries since then (time, date or age).
    pub since: Option<String>,
    /// Only entries older than this id (the previous page's `next`).
    pub before: Option<i64>,
    /// Page size (1 to 500, default 50).
    pub limit: Option<i64>,
}

impl ConflictParams {
    /// The store query these parameters ask for, or what is wrong with them.
    pub(crate) fn query(&self, now: DateTime<Utc>) -> Result<ConflictQuery, String> {
        Ok(ConflictQuery {
            mailbox: mailbox_param(self.mailbox.as_deref())?,
            since: match self.since.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(s) => Some(parse_since(s, now)?),
            },
            before: self.before,
            limit: limit(self.limit)?,
        })
    }
}

/// Query of the failure list.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureParams {
    /// Only this mailbox.
    pub mailbox: Option<String>,
    /// Only entries older than this id (the previous page's `next`).
    pub before: Option<i64>,
    /// Page size (1 to 500, default 50).
    pub limit: Option<i64>,
}

fn limit(asked: Option<i64>) -> Result<i64, String> {
    match asked {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(format!(
            "limit: {n} is out of range, allowed 1 to {MAX_LIMIT}"
        )),
    }
}

/// The answer when the service has no state store to read the logs from.
pub(crate) fn no_store() -> HttpResponse {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "this service has no state store to read logs from",
    )
}

/// The `before` of the next page: the last id when the page was full.
pub(crate) fn next_before(ids: &[i64], limit: i64) -> Option<i64> {
    (ids.len() as i64 == limit)
        .then(|| ids.last().copied())
        .flatten()
}

/// `GET /api/v1/conflicts`.
pub(crate) async fn conflicts(
    req: HttpRequest,
    state: web::Data<AdminState>,
    params: web::Query<ConflictParams>,
) -> HttpResponse {
    if let Some(denied) = authorize(&req, &state) {
        return denied;
    }
    let Some(db) = state.store.as_ref() else {
        return no_store();
    };
    let query = match params.query(Utc::now()) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match db.conflict_page(&query).await {
        Ok(page) => {
            let ids: Vec<i64> = page.iter().map(|e| e.id).collect();
            let list: Vec<ConflictDto> = page.into_iter().map(ConflictDto::from).collect();
            HttpResponse::Ok().json(serde_json::json!({
                "count": list.len(),
                "conflicts": list,
                "next": next_before(&ids, query.limit),
            }))
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `GET /api/v1/conflicts/{id}`.
pub(crate) async fn conflict(
    req: HttpRequest,
    state: web::Data<AdminState>,
    path: web::Path<String>,
) -> HttpResponse {
    if let Some(denied) = authorize(&req, &state) {
        return denied;
    }
    let Some(db) = state.store.as_ref() else {
        return no_store();
    };
    let Ok(id) = path.parse::<i64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{:?} is not a conflict id", path.as_str()),
        );
    };
    match db.conflict_by_id(id).await {
        Ok(Some(e)) => HttpResponse::Ok().json(ConflictDto::from(e)),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no conflict {id}")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `GET /api/v1/failures`.
pub(crate) async fn failures(
    req: HttpRequest,
    state: web::Data<AdminState>,
    params: web::Query<FailureParams>,
) -> HttpResponse {
    if let Some(denied) = authorize(&req, &state) {
        return denied;
    }
    let Some(db) = state.store.as_ref() else {
        return no_store();
    };
    let limit = match limit(params.limit) {
        Ok(l) => l,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let mailbox = match mailbox_param(params.mailbox.as_deref()) {
        Ok(m) => m,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match db
        .failure_page(mailbox.as_deref(), params.before, limit)
        .await
    {
        Ok(page) => {
            let ids: Vec<i64> = page.iter().map(|e| e.id).collect();
            let list: Vec<FailureDto> = page.into_iter().map(FailureDto::from).collect();
            HttpResponse::Ok().json(serde_json::json!({
                "count": list.len(),
                "failures": list,
                "next": next_before(&ids, limit),
            }))
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `POST /api/v1/failures/{id}/retry`.
pub(crate) async fn retry(
    req: HttpRequest,
    state: web::Data<AdminState>,
    path: web::Path<String>,
) -> HttpResponse {
    if let Some(denied) = authorize(&req, &state) {
        return denied;
    }
    let Some(db) = state.store.as_ref() else {
        return no_store();
    };
    let Ok(id) = path.parse::<i64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{:?} is not a failure id", path.as_str()),
        );
    };
    let entry = match db.retry_failure_now(id, Utc::now()).await {
        Ok(Some(e)) => e,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no failure {id} (it may have synced meanwhile)"),
            )
        }
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let mailbox = entry.failure.mailbox.clone();
    let sent = state
        .handle
        .addr
        .send(Command {
            smtp: mailbox.as_str().into(),
            action: Action::Sync,
        })
        .await;
    let step = match sent {
        Ok(Ok(())) => "started".to_owned(),
        Ok(Err(e @ CommandError::NotRunning { .. })) => {
            format!("waiting: {e}; the failure is retried when it runs again")
        }
        Ok(Err(e @ CommandError::NotFound(_))) => {
            return error(StatusCode::CONFLICT, e.to_string())
        }
        Ok(Err(e @ CommandError::ShuttingDown)) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Err(_) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the supervisor has stopped",
            )
        }
    };
    tracing::info!(failure = id, mailbox = %mailbox, "failure retry requested");
    HttpResponse::Ok().json(serde_json::json!({
        "id": id,
        "mailbox": mailbox,
        "next_retry_at": entry.next_retry_at.map(rfc3339),
        "step": step,
        "ok": true,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_times_dates_and_ages() {
        let now = DateTime::parse_from_rfc3339("2026-03-10T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |s: &str| rfc3339(parse_since(s, now).unwrap());
        assert_eq!(at("2026-03-01T08:00:00+01:00"), "2026-03-01T07:00:00Z");
        assert_eq!(at("2026-03-01"), "2026-03-01T00:00:00Z");
        assert_eq!(at("30m"), "2026-03-10T11:30:00Z");
        assert_eq!(at("24h"), "2026-03-09T12:00:00Z");
        assert_eq!(at("7d"), "2026-03-03T12:00:00Z");
        for bad in [
            "yesterday",
            "7w",
            "-3d",
            "",
            "d",
            "7ü",
            "ü",
            "9223372036854775807d",
            "106751991167300d",
            "9223372036854775807s",
        ] {
            let e = parse_since(bad, now).unwrap_err();
            assert!(e.starts_with("since: "), "{bad}: {e}");
        }
    }

    #[test]
    fn limits_are_bounded_and_pages_end_when_short() {
        assert_eq!(limit(None), Ok(DEFAULT_LIMIT));
        assert_eq!(limit(Some(500)), Ok(500));
        assert!(limit(Some(0)).is_err());
        assert!(limit(Some(501)).is_err());
        assert_eq!(next_before(&[9, 8, 7], 3), Some(7));
        assert_eq!(next_before(&[9, 8], 3), None);
    }
}
