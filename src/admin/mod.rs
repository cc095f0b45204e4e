//! The admin HTTP server: metrics, health, readiness, the JSON API and the web console.
//!
//! `GET /metrics`, `/healthz`, `/readyz` are open (they reveal no addresses or secrets), and so
//! are the console's shell page and its static assets (`/`, `/console/…`), which hold no data.
//! Everything under `/api/v1` and the console's views (`/console/view/…`) need
//! `Authorization: Bearer <admin.token>`, compared in constant time; the console's script
//! sends it from sessionStorage, so no cookie exists and no request can be forged cross-site.
//! Responses are JSON built from API types declared here, never from the runtime's internal
//! structs. Errors are `{"error": "..."}` with a status that says what went wrong: 400 (bad
//! query), 401 (no or wrong token), 403 (no token configured), 404 (unknown mailbox,
//! failure, action or path), 409 (mailbox not running, nothing held), 422 (reload refused),
//! 501 (no delete breaker), 503 (shutting down, no state store).
//!
//! - [`api`]: the conflict and failure logs, "retry", mailbox filters.
//! - [`held`]: held deletes (the delete breaker's port, its DTOs, approve and reject).
//! - [`console`]: the web console (server-rendered HTML fragments, assets built in).

pub mod api;
mod cluster;
pub mod console;
pub mod held;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::future::BoxFuture;
use mailsync_actors::{
    Action, Command, CommandError, MailboxSnapshot, ReloadReport, SupervisorHandle,
};
use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::db::Db;
use crate::metrics::Telemetry;
use crate::secret::SecretString;

pub use held::{DecideError, DecideOutcome, DeleteDecision, DeleteGate, HeldGroup, HeldItem};

/// Why a reload was refused; nothing changed.
#[derive(Debug, Clone)]
pub struct ReloadFailure {
    /// One line.
    pub message: String,
    /// Every problem (e.g. each configuration error with its key path).
    pub details: Vec<String>,
}

/// Re-reads the configuration and applies it (sends `Reload` to the supervisor).
pub type Reloader =
    Arc<dyn Fn() -> BoxFuture<'static, Result<ReloadReport, ReloadFailure>> + Send + Sync>;

/// The bearer token of /api, shared with the reload that may replace it: a new token takes
/// effect at once and the old one stops working. `None` disables /api (loopback only).
#[derive(Clone, Default)]
pub struct AdminToken(Arc<parking_lot::RwLock<Option<SecretString>>>);

impl AdminToken {
    /// A token cell holding `token`.
    pub fn new(token: Option<SecretString>) -> Self {
        AdminToken(Arc::new(parking_lot::RwLock::new(token)))
    }

    /// Replaces the token; whether it changed.
    pub fn replace(&self, token: Option<SecretString>) -> bool {
        let mut current = self.0.write();
        let changed = *current != token;
        *current = token;
        changed
    }

    /// The current token (a clone: no lock is held while a request is served).
    pub fn current(&self) -> Option<SecretString> {
        self.0.read().clone()
    }
}

/// What the handlers need.
#[derive(Clone)]
pub struct AdminState {
    /// The supervisor and the registry.
    pub handle: SupervisorHandle,
    /// Every metric, for /metrics.
    pub telemetry: Telemetry,
    /// The bearer token (replaced by reloads).
    pub token: AdminToken,
    /// What POST /api/v1/reload and SIGHUP run.
    pub reload: Reloader,
    /// The state store, for the conflict and failure logs; `None` answers 503 there.
    pub store: Option<Db>,
    /// The delete breaker's held deletes; `None` (no breaker in this build) hides them.
    pub deletes: Option<Arc<dyn DeleteGate>>,
    /// Cluster membership (`[cluster]`): /api/v1/cluster, and 409 for a mailbox owned
    /// elsewhere; `None` outside a cluster.
    pub cluster: Option<crate::cluster::Cluster>,
}

/// A running admin server.
pub struct AdminServer {
    /// Where it listens (the real port when bound to port 0).
    pub addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
}

impl AdminServer {
    /// Stops accepting and finishes the requests in flight.
    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }
}

/// Binds the admin address, or says which address could not be bound and why. `run` binds
/// before it touches a database or Exchange, so an address in use stops it with nothing done.
pub fn bind(listen: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(listen).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("admin API cannot listen on {listen}: {e}"),
        )
    })
}

/// Binds `listen` and serves the admin API on its own worker thread.
pub fn start(listen: SocketAddr, state: AdminState) -> std::io::Result<AdminServer> {
    start_on(bind(listen)?, state)
}

/// Serves the admin API on a listener bound with [`bind`], on its own worker thread.
pub fn start_on(
    listener: std::net::TcpListener,
    state: AdminState,
) -> std::io::Result<AdminServer> {
    let listen = listener.local_addr()?;
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::QueryConfig::default().error_handler(|e, _| {
                let response = error(StatusCode::BAD_REQUEST, format!("bad query: {e}"));
                actix_web::error::InternalError::from_response(e, response).into()
            }))
            .route("/metrics", web::get().to(metrics))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/", web::get().to(console::shell))
            .route("/console/app.js", web::get().to(console::script))
            .route("/console/app.css", web::get().to(console::style))
            .service(
                web::scope("/console/view")
                    .route("/mailboxes", web::get().to(console::mailboxes))
                    .route("/mailbox/{smtp}", web::get().to(console::mailbox))
                    .route("/conflicts", web::get().to(console::conflicts))
                    .route("/conflict/{id}", web::get().to(console::conflict))
                    .route("/failures", web::get().to(console::failures))
                    .default_service(web::to(api_not_found)),
            )
            .service(
                web::scope("/api/v1")
                    .route("/mailboxes", web::get().to(list))
                    .route("/mailboxes/{smtp}", web::get().to(one))
                    .route(
                        "/mailboxes/{smtp}/deletes/{decision}",
                        web::post().to(held::decide),
                    )
                    .route("/mailboxes/{smtp}/{action}", web::post().to(command))
                    .route("/conflicts", web::get().to(api::conflicts))
                    .route("/conflicts/{id}", web::get().to(api::conflict))
                    .route("/failures", web::get().to(api::failures))
                    .route("/failures/{id}/retry", web::post().to(api::retry))
                    .route("/reload", web::post().to(reload))
                    .route("/cluster", web::get().to(cluster::view))
                    .default_service(web::to(api_not_found)),
            )
            .default_service(web::to(not_found))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(5)
    .listen(listener)
    .map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("admin API cannot listen on {listen}: {e}"),
        )
    })?;
    let addr = server.addrs().first().copied().unwrap_or(listen);
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "admin API stopped with an error");
        }
    });
    tracing::info!(%addr, "admin API listening");
    Ok(AdminServer { addr, handle })
}

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({ "error": message.into() }))
}

/// Checks the bearer token in constant time; the refusal to send when it does not match.
pub(crate) fn authorize(req: &HttpRequest, state: &AdminState) -> Option<HttpResponse> {
    let Some(token) = state.token.current() else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "the API is disabled: admin.token is not configured",
        ));
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(presented.as_bytes().ct_eq(token.expose().as_bytes())) {
        return None;
    }
    let message = if presented.is_empty() {
        "missing bearer token"
    } else {
        "wrong bearer token"
    };
    Some(
        HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"mailsync\""))
            .json(serde_json::json!({ "error": message })),
    )
}

async fn metrics(state: web::Data<AdminState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.telemetry.render())
}

async fn healthz(state: web::Data<AdminState>) -> HttpResponse {
    if state.handle.addr.connected() {
        HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the supervisor has stopped",
        )
    }
}

async fn readyz(state: web::Data<AdminState>) -> HttpResponse {
    let board = &state.handle.board;
    let waiting = board
        .snapshots()
        .iter()
        .filter(|s| !s.first_step_done)
        .count();
    // A cluster member's board starts empty and fills as the membership loop leases
    // mailboxes: it is ready only once it took what it should own and each of those took its
    // first step.
    let cluster = state.cluster.as_ref().map(|c| c.readiness());
    let ready = waiting == 0 && cluster.is_none_or(|r| r.ready());
    let mut body =
        serde_json::json!({ "ready": ready, "mailboxes": board.len(), "waiting": waiting });
    if let Some(r) = cluster {
        body["cluster"] = serde_json::json!({
            "acquired": r.acquired,
            "owned": r.owned,
            "waiting": r.waiting,
        });
    }
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// A folder as the API shows it.
#[derive(Serialize)]
pub(crate) struct FolderDto {
    folder: String,
    state: &'static str,
    steps: u64,
    restarts: u32,
    last_sync: Option<String>,
    last_error: Option<String>,
    lag_seconds: f64,
    /// Deletes of this folder held for approval at its last step.
    held: u64,
    /// A long job's progress (an initial sync): done and total items.
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<ProgressDto>,
}

/// How far an initial sync is.
#[derive(Serialize)]
pub(crate) struct ProgressDto {
    done: u64,
    total: u64,
}

/// A mailbox as the API shows it.
#[derive(Serialize)]
pub(crate) struct MailboxDto {
    smtp: String,
    server: String,
    state: &'static str,
    restarts: u32,
    last_sync: Option<String>,
    last_error: Option<String>,
    lag_seconds: f64,
    next_retry: Option<String>,
    first_step_done: bool,
    folders: Vec<FolderDto>,
    /// Deletes held for approval; absent when the service has no delete breaker.
    #[serde(skip_serializing_if = "Option::is_none")]
    held: Option<Vec<held::HeldDto>>,
}

pub(crate) fn time(t: Option<SystemTime>) -> Option<String> {
    t.map(|t| DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Secs, true))
}

fn dto(s: MailboxSnapshot, held: Option<Vec<held::HeldDto>>) -> MailboxDto {
    let now = tokio::time::Instant::now();
    MailboxDto {
        smtp: s.smtp.to_string(),
        server: s.server.to_string(),
        state: s.state.as_str(),
        restarts: s.restarts,
        last_sync: time(s.last_sync),
        last_error: s.last_error,
        lag_seconds: s.lag.as_secs_f64(),
        next_retry: time(s.next_retry),
        first_step_done: s.first_step_done,
        folders: s
            .folders
            .into_iter()
            .map(|f| FolderDto {
                folder: f.id.to_string(),
                // An idle folder with deletes waiting for a decision is `held`.
                state: if f.held > 0 && f.state == mailsync_actors::FolderState::Idle {
                    "held"
                } else {
                    f.state.as_str()
                },
                held: f.held,
                progress: f.progress.map(|(done, total)| ProgressDto { done, total }),
                steps: f.steps,
                restarts: f.restarts,
                last_sync: time(f.last_sync),
                last_error: f.last_error,
                lag_seconds: f
                    .pending_since
                    .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64()),
            })
            .collect(),
        held,
    }
}

async fn list(
    req: HttpRequest,
    state: web::Data<AdminState>,
    query: web::Query<api::MailboxFilter>,
) -> HttpResponse {
    if let Some(denied) = authorize(&req, &state) {
        return denied;
    }
    if let Err(e) = query.check() {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let board = &state.handle.board;
    let states: serde_json::Map<String, serde_json::Value> = board
        .states()
        .into_iter()
        .map(|(s, n)| (s.as_str().to_owned(), n.into()))
        .collect();
    let held = match held::held_by_mailbox(&state, None).await {
        Ok(h) => h,
        Err(e) => return e,
    };
    let matching = api::filter(board.snapshots(), &query, held.as_ref());
    let total = matching.len();
    let offset = query.offset.unwrap_or(0);
    let limit = query.limit.unwrap_or(usize::MAX);
    let mailboxes: Vec<MailboxDto> = matching
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|s| {
            let groups = held
                .as_ref()
                .map(|h| h.get(&*s.smtp).cloned().unwrap_or_default());
            dto(
                s,
                groups.map(|g| g.into_iter().map(held::HeldDto::from).collect()),
            )
        })
        .collect();
    HttpResponse::Ok().json(serde_json::json!({
        "count": mailboxes.len(),
        "total": total,
        "states": states,
        "mailboxes": mailboxes,
    }))
}

async fn one(
    req: HttpRequest,
    state: web::Data<AdminState>,
    path: web::Path<String>,
) -> HttpResponse {
    if let Some(denied) = authorize(&req, &state) {
        return denied;
    }
    let smtp = path.into_inner().to_lowercase();
    let Some(snapshot) = state.handle.board.snapshot(&smtp) else {
        if let Some(owned_elsewhere) = cluster::elsewhere(&state, &smtp).await {
            return owned_elsewhere;
        }
        return error(
            StatusCode::NOT_FOUND,
            format!("mailbox {smtp} is not configured"),
        );
    };
    let held = match held::held_by_mailbox(&state, Some(&smtp)).await {
        Ok(h) => h,
        Err(e) => return e,
    };
    let groups = held.map(|mut h| {
        h.remove(&smtp)
            .unwrap_or_default()
            .into_iter()
            .map(held::HeldDto::from)
            .collect()
    });
    HttpResponse::Ok().json(dto(snapshot, groups))
}

async fn command(
    req: HttpRequest,
    state: web::Data<AdminState>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    if let Some(denied) = authorize(&req, &state) {
        return denied;
    }
    let (smtp, word) = path.into_inner();
    let smtp = smtp.to_lowercase();
    let Some(action) = Action::parse(&word) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("unknown action {word:?}; expected restart, resync, sync, pause or resume"),
        );
    };
    let sent = state
        .handle
        .addr
        .send(Command {
            smtp: smtp.as_str().into(),
            action,
        })
        .await;
    match sent {
        Ok(Ok(())) => HttpResponse::Ok()
            .json(serde_json::json!({ "mailbox": smtp, "action": action.as_str(), "ok": true })),
        Ok(Err(e @ CommandError::NotFound(_))) => match cluster::elsewhere(&state, &smtp).await {
            Some(owned_elsewhere) => owned_elsewhere,
            None => error(StatusCode::NOT_FOUND, e.to_string()),
        },
        Ok(Err(e @ CommandError::NotRunning { .. })) => error(StatusCode::CONFLICT, e.to_string()),
        Ok(Err(e @ CommandError::ShuttingDown)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the supervisor has stopped",
        ),
    }
}

async fn reload(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    if let Some(denied) = authorize(&req, &state) {
        return denied;
    }
    match (state.reload)().await {
        Ok(report) => HttpResponse::Ok().json(serde_json::json!({
            "added": report.added.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "removed": report.removed.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "changed": report.changed.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "unchanged": report.unchanged,
        })),
        Err(failure) => HttpResponse::UnprocessableEntity().json(serde_json::json!({
            "error": failure.message,
            "details": failure.details,
        })),
    }
}

async fn api_not_found(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    if let Some(denied) = authorize(&req, &state) {
        return denied;
    }
    error(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {} {}", req.method(), req.path()),
    )
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    error(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {} {}", req.method(), req.path()),
    )
}
