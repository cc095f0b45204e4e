//! The delete breaker as the admin API sees it ([`crate::admin::DeleteGate`]): held deletes
//! are read from the state store, and a decision is recorded there and carried out by the
//! mailbox's next step, which the gate asks for at once — so a decision never writes to
//! either side from outside the folder actors that own them.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use mailsync_actors::{Action, Command, CommandError, SupervisorHandle};

use crate::admin::{DecideError, DecideOutcome, DeleteDecision, DeleteGate, HeldGroup, HeldItem};
use crate::db::integrity::Decision;
use crate::db::journal::area_of_table;
use crate::db::Db;

/// Items shown per held group.
const SAMPLE: usize = 10;

/// The CRM tables of an area (what the API calls `area`).
fn tables_of(area: &str) -> Option<&'static [&'static str]> {
    Some(match area {
        "contacts" => &["crm_contacts"],
        "calendar" => &["crm_appointments"],
        "tasks" => &["crm_tasks"],
        "mail" => &["crm_mails", "crm_mail_folders"],
        _ => return None,
    })
}

/// The gate over the state store and the running supervisor.
pub struct StoreGate {
    /// Where held deletes are kept.
    state: Db,
    /// The runtime, to run the mailbox's step that carries a decision out.
    handle: SupervisorHandle,
}

impl StoreGate {
    /// A gate over the state store.
    pub fn new(state: Db, handle: SupervisorHandle) -> Arc<Self> {
        Arc::new(StoreGate { state, handle })
    }
}

async fn groups(state: &Db, mailbox: &str) -> Result<Vec<HeldGroup>, String> {
    Ok(state
        .held_groups(mailbox, SAMPLE)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|g| HeldGroup {
            mailbox: mailbox.to_owned(),
            area: area_of_table(&g.crm_table).to_owned(),
            scope: g.scope,
            side: g.side.as_str().to_owned(),
            count: g.count.max(0) as u64,
            sample: g
                .sample
                .into_iter()
                .map(|h| HeldItem {
                    crm_id: (h.crm_id != 0).then_some(h.crm_id),
                    ews_id: (!h.ews_item_id.is_empty()).then_some(h.ews_item_id),
                    title: h.title,
                })
                .collect(),
        })
        .collect())
}

impl DeleteGate for StoreGate {
    fn held(&self, mailbox: Option<&str>) -> BoxFuture<'static, Result<Vec<HeldGroup>, String>> {
        let state = self.state.clone();
        let mailbox = mailbox.map(str::to_lowercase);
        Box::pin(async move {
            let mailboxes: Vec<String> = match mailbox {
                Some(m) => vec![m],
                None => {
                    let mut all: Vec<String> = state
                        .held_counts()
                        .await
                        .map_err(|e| e.to_string())?
                        .into_iter()
                        .map(|(m, _, _)| m)
                        .collect();
                    all.dedup();
                    all
                }
            };
            let mut out = Vec::new();
            for m in mailboxes {
                out.extend(groups(&state, &m).await?);
            }
            Ok(out)
        })
    }

    fn decide(
        &self,
        mailbox: &str,
        decision: DeleteDecision,
        area: Option<&str>,
        scope: Option<&str>,
    ) -> BoxFuture<'static, Result<DecideOutcome, DecideError>> {
        let state = self.state.clone();
        let handle = self.handle.clone();
        let mailbox = mailbox.to_lowercase();
        let area = area.map(str::to_owned);
        let scope = scope.map(str::to_owned);
        Box::pin(async move {
            let tables: Vec<Option<&str>> = match area.as_deref() {
                None => vec![None],
                Some(a) => tables_of(a)
                    .ok_or_else(|| {
                        DecideError::NothingHeld(format!(
                            "{a:?} is not an area (contacts, calendar, tasks, mail)"
                        ))
                    })?
                    .iter()
                    .map(|t| Some(*t))
                    .collect(),
            };
            let before = groups(&state, &mailbox)
                .await
                .map_err(DecideError::Failed)?;
            let matching: Vec<&HeldGroup> = before
                .iter()
                .filter(|g| area.as_deref().is_none_or(|a| g.area == a))
                .filter(|g| scope.as_deref().is_none_or(|s| g.scope == s))
                .collect();
            if matching.is_empty() {
                return Err(DecideError::NothingHeld(format!(
                    "nothing is held for {mailbox}{}{}",
                    area.as_deref()
                        .map(|a| format!(" in {a}"))
                        .unwrap_or_default(),
                    scope
                        .as_deref()
                        .map(|s| format!(" ({s})"))
                        .unwrap_or_default()
                )));
            }
            let verdict = match decision {
                DeleteDecision::Approve => Decision::Approve,
                DeleteDecision::Reject => Decision::Reject,
            };
            let mut decided = 0;
            for table in tables {
                decided += state
                    .decide_held(&mailbox, table, scope.as_deref(), verdict)
                    .await
                    .map_err(|e| DecideError::Failed(e.to_string()))?;
            }
            if decided == 0 {
                return Err(DecideError::NothingHeld(format!(
                    "the held deletes of {mailbox} already have a decision, which is being carried out"
                )));
            }
            let outcome = DecideOutcome {
                groups: matching.len(),
                items: decided,
            };
            // The mailbox's next step carries the decision out; run it now.
            let sent = handle
                .addr
                .send(Command {
                    smtp: mailbox.as_str().into(),
                    action: Action::Sync,
                })
                .await;
            match sent {
                Ok(Ok(())) | Ok(Err(CommandError::NotRunning { .. })) => Ok(outcome),
                Ok(Err(e)) => Err(DecideError::Failed(format!(
                    "the decision is recorded; the mailbox could not be asked to apply it now: {e}"
                ))),
                Err(_) => Err(DecideError::Failed(
                    "the decision is recorded; the supervisor has stopped".into(),
                )),
            }
        })
    }
}
