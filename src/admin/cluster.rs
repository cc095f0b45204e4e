//! `GET /api/v1/cluster` and the answer for a mailbox another instance owns.
//!
//! Choice: a command for a mailbox owned elsewhere is not forwarded; it answers 409 naming
//! the owner and its admin URL (`owner_admin_url`), which `mailsync ctl` and scripts follow.
//! Forwarding would make every instance hold every peer's token and hide which instance
//! acted; a 409 keeps each instance's API about what it runs.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use super::{authorize, error, AdminState};
use crate::cluster::FEED_KEY;

/// One instance as the API shows it.
#[derive(Serialize)]
struct InstanceDto {
    id: String,
    name: String,
    admin_url: String,
    heartbeat_age_seconds: f64,
    started: String,
    stopping: bool,
    /// Heartbeat within a lease and not stopping.
    live: bool,
    /// This instance (the one answering).
    this: bool,
    /// Mailboxes whose lease it holds now.
    mailboxes: usize,
}

/// One lease.
#[derive(Serialize)]
struct OwnerDto {
    mailbox: String,
    /// The owner's name; absent when the lease is free or expired.
    owner: Option<String>,
    owner_id: Option<String>,
    epoch: i64,
    expires_in_seconds: f64,
}

/// `GET /api/v1/cluster`: instances, heartbeats, the owner of each mailbox and of the feed.
pub(super) async fn view(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    if let Some(denied) = authorize(&req, &state) {
        return denied;
    }
    let Some(cluster) = &state.cluster else {
        return HttpResponse::Ok().json(serde_json::json!({
            "enabled": false,
            "instances": [],
            "mailboxes": [],
        }));
    };
    let store = cluster.store();
    let (instances, leases) = match (store.instances().await, store.leases().await) {
        (Ok(i), Ok(l)) => (i, l),
        (Err(e), _) | (_, Err(e)) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("reading the cluster from the state store: {e}"),
            )
        }
    };
    let lease = cluster.lease().as_secs_f64();
    let held =
        |l: &crate::cluster::store::LeaseRow| !l.owner.is_empty() && l.expires_in_seconds > 0.0;
    let name_of = |id: &str| {
        instances
            .iter()
            .find(|i| i.id == id)
            .map_or_else(|| id.to_owned(), |i| i.name.clone())
    };
    let mut feed = None;
    let mut mailboxes = Vec::new();
    for l in &leases {
        let dto = OwnerDto {
            mailbox: l.key.clone(),
            owner: held(l).then(|| name_of(&l.owner)),
            owner_id: held(l).then(|| l.owner.clone()),
            epoch: l.epoch,
            expires_in_seconds: l.expires_in_seconds,
        };
        if l.key == FEED_KEY {
            feed = Some(dto);
        } else {
            mailboxes.push(dto);
        }
    }
    let me = cluster.me();
    let instances: Vec<InstanceDto> = instances
        .iter()
        .map(|i| InstanceDto {
            id: i.id.clone(),
            name: i.name.clone(),
            admin_url: i.admin_url.clone(),
            heartbeat_age_seconds: i.heartbeat_age_seconds,
            started: i.started.clone(),
            stopping: i.stopping,
            live: !i.stopping && i.heartbeat_age_seconds < lease,
            this: i.id == me.id,
            mailboxes: mailboxes
                .iter()
                .filter(|m| m.owner_id.as_deref() == Some(i.id.as_str()))
                .count(),
        })
        .collect();
    HttpResponse::Ok().json(serde_json::json!({
        "enabled": true,
        "this": { "id": me.id, "name": me.name, "admin_url": me.admin_url },
        "lease_seconds": lease,
        "live": instances.iter().filter(|i| i.live).count(),
        "instances": instances,
        "feed": feed,
        "mailboxes": mailboxes,
    }))
}

/// 409 naming the owner when `smtp` is owned by another instance; `None` outside a cluster
/// or when nobody else holds it.
pub(super) async fn elsewhere(state: &AdminState, smtp: &str) -> Option<HttpResponse> {
    let cluster = state.cluster.as_ref()?;
    if cluster.owns(smtp) || !cluster.is_configured(smtp) {
        return None;
    }
    match cluster.owner_of(smtp).await {
        Ok(Some((name, url))) => Some(HttpResponse::Conflict().json(serde_json::json!({
            "error": format!("mailbox {smtp} is owned by instance {name}; send the command to {url}"),
            "owner": name,
            "owner_admin_url": url,
        }))),
        Ok(None) => Some(error(
            StatusCode::CONFLICT,
            format!("mailbox {smtp} has no owner at the moment (being handed over); try again in a few seconds"),
        )),
        Err(e) => Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("reading the mailbox's lease: {e}"),
        )),
    }
}
