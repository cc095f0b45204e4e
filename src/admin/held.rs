//! Held deletes in the admin API: the port the delete breaker implements ([`DeleteGate`]),
//! the DTOs of `GET /api/v1/mailboxes/{smtp}` (`"held": [...]`), and
//! `POST /api/v1/mailboxes/{smtp}/deletes/{approve|reject}` with an optional JSON body
//! `{"area": "...", "scope": "..."}` (none: everything held of the mailbox).
//!
//! The breaker itself lives in the sync engine; this module only shows and forwards. Without
//! a gate (`AdminState::deletes` is `None`) nothing about held deletes appears in the API
//! or the console, and the two endpoints answer 501.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{authorize, error, AdminState};

/// Deletes of one mailbox, area and scope that wait for a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldGroup {
    /// The mailbox (lower case).
    pub mailbox: String,
    /// `contacts`, `calendar`, `tasks` or `mail`.
    pub area: String,
    /// `own`, `shared` (the tenant's shared contacts) or, for mail, the folder path.
    pub scope: String,
    /// The side the deletes would be applied to: `crm` or `exchange`.
    pub side: String,
    /// How many items would be deleted.
    pub count: u64,
    /// A few of them, so the administrator sees what they are.
    pub sample: Vec<HeldItem>,
}

/// One item a held delete would remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldItem {
    /// Its CRM row, if it has one.
    pub crm_id: Option<i64>,
    /// Its Exchange item, if it has one.
    pub ews_id: Option<String>,
    /// What a person recognises it by (name, subject).
    pub title: String,
}

/// What the administrator decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteDecision {
    /// Apply the held deletes.
    Approve,
    /// Restore the deleted items on the side that deleted them.
    Reject,
}

impl DeleteDecision {
    /// The word in the path.
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteDecision::Approve => "approve",
            DeleteDecision::Reject => "reject",
        }
    }
}

/// What a decision covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecideOutcome {
    /// Held groups decided.
    pub groups: usize,
    /// Items in them.
    pub items: u64,
}

/// Why a decision was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    /// Nothing (matching) is held for that mailbox.
    #[error("{0}")]
    NothingHeld(String),
    /// The decision could not be carried out; nothing changed.
    #[error("{0}")]
    Failed(String),
}

/// The delete breaker as the admin API sees it.
pub trait DeleteGate: Send + Sync {
    /// Every held group of one mailbox, or of all when `mailbox` is `None`.
    fn held(&self, mailbox: Option<&str>) -> BoxFuture<'static, Result<Vec<HeldGroup>, String>>;

    /// Approves or rejects the held deletes of a mailbox: all of them, or those of one area
    /// (and scope) when given.
    fn decide(
        &self,
        mailbox: &str,
        decision: DeleteDecision,
        area: Option<&str>,
        scope: Option<&str>,
    ) -> BoxFuture<'static, Result<DecideOutcome, DecideError>>;
}

/// A held group as the API shows it (the mailbox is the enclosing object).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HeldDto {
    area: String,
    scope: String,
    side: String,
    count: u64,
    sample: Vec<HeldItem>,
}

impl From<HeldGroup> for HeldDto {
    fn from(g: HeldGroup) -> Self {
        HeldDto {
            area: g.area,
            scope: g.scope,
            side: g.side,
            count: g.count,
            sample: g.sample,
        }
    }
}

/// Held groups by mailbox; `Ok(None)` without a gate, an error response when the gate fails.
pub(crate) async fn held_by_mailbox(
    state: &AdminState,
    mailbox: Option<&str>,
) -> Result<Option<BTreeMap<String, Vec<HeldGroup>>>, HttpResponse> {
    let Some(gate) = &state.deletes else {
        return Ok(None);
    };
    let groups = gate.held(mailbox).await.map_err(|e| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("reading held deletes: {e}"),
        )
    })?;
    let mut by: BTreeMap<String, Vec<HeldGroup>> = BTreeMap::new();
    for g in groups {
        by.entry(g.mailbox.to_lowercase()).or_default().push(g);
    }
    Ok(Some(by))
}

/// The optional body of approve/reject.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DecideBody {
    area: Option<String>,
    scope: Option<String>,
}

/// `POST /api/v1/mailboxes/{smtp}/deletes/{approve|reject}`.
pub(crate) async fn decide(
    req: HttpRequest,
    state: web::Data<AdminState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> HttpResponse {
    if let Some(denied) = authorize(&req, &state) {
        return denied;
    }
    let (smtp, word) = path.into_inner();
    let smtp = smtp.to_lowercase();
    let decision = match word.as_str() {
        "approve" => DeleteDecision::Approve,
        "reject" => DeleteDecision::Reject,
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!("unknown decision {other:?}; expected approve or reject"),
            )
        }
    };
    let Some(gate) = &state.deletes else {
        return error(
            StatusCode::NOT_IMPLEMENTED,
            "this service holds no deletes (no delete breaker)",
        );
    };
    if !state.handle.board.contains(&smtp) {
        return error(
            StatusCode::NOT_FOUND,
            format!("mailbox {smtp} is not configured"),
        );
    }
    let body: DecideBody = if body.iter().all(u8::is_ascii_whitespace) {
        DecideBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("the body must be {{\"area\": \"...\", \"scope\": \"...\"}} (both optional): {e}"),
                )
            }
        }
    };
    if body.scope.is_some() && body.area.is_none() {
        return error(StatusCode::BAD_REQUEST, "scope needs an area");
    }
    if let Some(a) = body
        .area
        .as_deref()
        .filter(|a| !["contacts", "calendar", "tasks", "mail"].contains(a))
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!("area: {a:?} is not an area (contacts, calendar, tasks, mail)"),
        );
    }
    match gate
        .decide(&smtp, decision, body.area.as_deref(), body.scope.as_deref())
        .await
    {
        Ok(outcome) => {
            tracing::info!(mailbox = %smtp, decision = decision.as_str(), area = ?body.area, scope = ?body.scope, groups = outcome.groups, items = outcome.items, "held deletes decided");
            HttpResponse::Ok().json(serde_json::json!({
                "mailbox": smtp,
                "decision": decision.as_str(),
                "area": body.area,
                "scope": body.scope,
                "groups": outcome.groups,
                "items": outcome.items,
                "ok": true,
            }))
        }
        Err(e @ DecideError::NothingHeld(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e @ DecideError::Failed(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
