//! The demo's simulated users: one change a second on either side, in the chosen areas, each
//! followed until it arrived on the other side, its latency printed and kept for the summary.
//!
//! Outlook users create contacts and appointments, receive mail, read it and file it into a
//! folder; CRM users create contacts and tasks, read mail and send a mail from the CRM's
//! outbox (which Exchange sends and files in Sent Items).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ews::items::{CalendarItem, Contact, Item, Message};
use ews::ops::{
    ConflictResolution, CreateItem, GetItem, ItemUpdate, MessageDisposition, MoveItem, UpdateItem,
};
use ews::types::{DistinguishedFolder, FolderRef, ItemId, Shape};
use parking_lot::Mutex;

use super::seed::{blob, exec, mime, scalar, text};
use crate::config::Area;
use crate::db::Db;

/// How long a change may take before it counts as not arrived.
const LIMIT: Duration = Duration::from_secs(10);

/// One kind of simulated change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    /// A contact created in the CRM.
    ContactInCrm,
    /// A contact created in Outlook.
    ContactInOutlook,
    /// A mail delivered into the Exchange inbox.
    MailArrives,
    /// A mail read in Outlook.
    MailReadInOutlook,
    /// A mail filed into a folder in Outlook.
    MailMovedInOutlook,
    /// A mail marked read in the CRM.
    MailReadInCrm,
    /// A mail sent from the CRM's outbox.
    OutboxMail,
    /// A task created in the CRM.
    TaskInCrm,
    /// An appointment created in Outlook.
    AppointmentInOutlook,
}

impl Act {
    /// The rotation: mail first, so a short run shows it; both directions alternate.
    const ROTATION: [Act; 9] = [
        Act::MailArrives,
        Act::ContactInCrm,
        Act::MailReadInOutlook,
        Act::ContactInOutlook,
        Act::OutboxMail,
        Act::MailReadInCrm,
        Act::MailMovedInOutlook,
        Act::TaskInCrm,
        Act::AppointmentInOutlook,
    ];

    fn area(self) -> Area {
        match self {
            Act::ContactInCrm | Act::ContactInOutlook => Area::Contacts,
            Act::TaskInCrm => Area::Tasks,
            Act::AppointmentInOutlook => Area::Calendar,
            _ => Area::Mail,
        }
    }

    /// Whether the change travels from the CRM to Exchange.
    fn to_exchange(self) -> bool {
        matches!(
            self,
            Act::ContactInCrm | Act::MailReadInCrm | Act::OutboxMail | Act::TaskInCrm
        )
    }

    /// What the printed line calls it.
    fn label(self) -> &'static str {
        match self {
            Act::ContactInCrm | Act::ContactInOutlook => "new contact",
            Act::MailArrives => "new mail",
            Act::MailReadInOutlook | Act::MailReadInCrm => "read",
            Act::MailMovedInOutlook => "filed",
            Act::OutboxMail => "sent from the outbox",
            Act::TaskInCrm => "new task",
            Act::AppointmentInOutlook => "new appointment",
        }
    }
}

/// Latencies of arrived changes by area and direction (`true`: CRM → Exchange).
#[derive(Default)]
pub(crate) struct Latencies(pub BTreeMap<(Area, bool), Vec<Duration>>);

pub(crate) fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s.get(((s.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

pub(crate) fn arrow(to_exchange: bool) -> &'static str {
    if to_exchange {
        "CRM → Exchange"
    } else {
        "Exchange → CRM"
    }
}

/// What the users work with.
pub(crate) struct Users {
    pub db: Db,
    /// The state store (the business database itself, except beside MariaDB/MySQL).
    pub state: Db,
    pub client: ews::Client,
    pub mailboxes: usize,
    pub areas: Vec<Area>,
    pub latencies: Arc<Mutex<Latencies>>,
}

/// Runs until the task is dropped: one change a second.
pub(crate) async fn run(users: Users) -> anyhow::Result<()> {
    let acts: Vec<Act> = Act::ROTATION
        .into_iter()
        .filter(|a| users.areas.contains(&a.area()))
        .collect();
    if acts.is_empty() {
        return Ok(());
    }
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    for k in 0u64.. {
        tick.tick().await;
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let user = (seed % users.mailboxes as u64) as usize + 1;
        let act = acts[(k % acts.len() as u64) as usize];
        let started = Instant::now();
        let what = match users.act(act, user, k).await? {
            Some(what) => what,
            None => continue,
        };
        let arrived = users.arrived(act, user, &what).await?;
        report(
            &users.latencies,
            act,
            user,
            &what.0,
            arrived.then(|| started.elapsed()),
        );
    }
    Ok(())
}

/// What was changed: its name for the printed line, and how to recognise it arrived.
struct Change(String, Probe);

enum Probe {
    /// This SQL counts 1 (or more) once it arrived.
    Sql(String),
    /// This SQL on the state store counts 1 (or more) once it arrived.
    StateSql(String),
    /// This Exchange item shows this read flag.
    ReadInExchange(ItemId, bool),
}

impl Users {
    fn target(user: usize) -> ews::Target {
        ews::Target::impersonating(&format!("user{user}@example.com"))
    }

    async fn call<O: ews::ops::Operation>(&self, user: usize, op: &O) -> anyhow::Result<O::Output> {
        Ok(self.client.call(&Self::target(user), op).await?.output)
    }

    /// The Exchange item of a CRM mail, with its current change key.
    async fn exchange_mail(&self, user: usize, crm_id: i64) -> anyhow::Result<Option<ItemId>> {
        let Some(id) = text(
            &self.state,
            &format!("SELECT ews_item_id FROM ms_item_map WHERE mailbox = 'user{user}@example.com' AND crm_table = 'crm_mails' AND crm_id = {crm_id}"),
        )
        .await?
        else {
            return Ok(None);
        };
        let got = self
            .call(
                user,
                &GetItem {
                    ids: vec![ItemId::new(id)],
                    shape: Shape::id_only(),
                },
            )
            .await?;
        Ok(got
            .into_iter()
            .next()
            .and_then(|r| r.ok())
            .and_then(|item| match item {
                Item::Message(m) => m.id,
                _ => None,
            }))
    }

    /// A synced CRM mail of `user` in the inbox, unread if `unread`.
    async fn inbox_mail(&self, user: usize, unread: bool) -> anyhow::Result<Option<i64>> {
        let read = if unread { "AND NOT m.is_read" } else { "" };
        let sql = format!(
            "SELECT COALESCE(MIN(m.id), 0) FROM crm_mails m JOIN crm_mail_folders f ON f.id = m.folder_id \
             WHERE m.owner_id = {user} AND f.role = 'inbox' AND m.ews_id IS NOT NULL {read}"
        );
        let id = scalar(&self.db, &sql).await?;
        Ok((id > 0).then_some(id))
    }

    async fn act(&self, act: Act, user: usize, k: u64) -> anyhow::Result<Option<Change>> {
        let db = &self.db;
        let name = format!("Demo{k}");
        Ok(Some(match act {
            Act::ContactInCrm => {
                exec(db, &format!("INSERT INTO crm_contacts (tenant_id, owner_id, given_name, surname) VALUES (1, {user}, 'Neu', '{name}')")).await?;
                let id = scalar(
                    db,
                    &format!("SELECT id FROM crm_contacts WHERE surname = '{name}'"),
                )
                .await?;
                Change(name, Probe::StateSql(format!("SELECT COUNT(*) FROM ms_item_map WHERE crm_table = 'crm_contacts' AND crm_id = {id}")))
            }
            Act::ContactInOutlook => {
                let item = Item::Contact(Contact {
                    given_name: Some("Outlook".into()),
                    surname: Some(name.clone()),
                    ..Contact::default()
                });
                self.call(
                    user,
                    &CreateItem {
                        folder: Some(FolderRef::well_known(DistinguishedFolder::Contacts)),
                        items: vec![item],
                        disposition: None,
                    },
                )
                .await?;
                Change(
                    name.clone(),
                    Probe::Sql(format!(
                        "SELECT COUNT(*) FROM crm_contacts WHERE surname = '{name}'"
                    )),
                )
            }
            Act::MailArrives => {
                let tag = format!("arrived-{k}");
                let subject = format!("Anfrage {k}");
                let bytes = mime(
                    &tag,
                    "Interessent <anfrage@kunde.example>",
                    &format!("user{user}@example.com"),
                    &subject,
                    k.is_multiple_of(2),
                );
                self.call(
                    user,
                    &CreateItem {
                        folder: Some(FolderRef::well_known(DistinguishedFolder::Inbox)),
                        items: vec![Item::Message(Message {
                            mime: Some(bytes),
                            is_read: Some(false),
                            ..Message::default()
                        })],
                        disposition: Some(MessageDisposition::SaveOnly),
                    },
                )
                .await?
                .into_iter()
                .next()
                .context("CreateItem answered nothing")??;
                Change(subject, Probe::Sql(format!("SELECT COUNT(*) FROM crm_mails WHERE internet_message_id = '<{tag}@demo.mailsync.example>'")))
            }
            Act::MailReadInOutlook | Act::MailReadInCrm => {
                let Some(crm_id) = self.inbox_mail(user, true).await? else {
                    return Ok(None);
                };
                let Some(ews_id) = self.exchange_mail(user, crm_id).await? else {
                    return Ok(None);
                };
                let subject = text(
                    db,
                    &format!("SELECT subject FROM crm_mails WHERE id = {crm_id}"),
                )
                .await?
                .unwrap_or_default();
                if act == Act::MailReadInCrm {
                    exec(
                        db,
                        &format!("UPDATE crm_mails SET is_read = TRUE WHERE id = {crm_id}"),
                    )
                    .await?;
                    Change(subject, Probe::ReadInExchange(ItemId::new(ews_id.id), true))
                } else {
                    self.call(
                        user,
                        &UpdateItem {
                            changes: vec![ItemUpdate {
                                id: ews_id,
                                updates: Item::Message(Message {
                                    is_read: Some(true),
                                    ..Message::default()
                                })
                                .updates(),
                            }],
                            conflict: ConflictResolution::AlwaysOverwrite,
                            disposition: Some(MessageDisposition::SaveOnly),
                            calendar: false,
                        },
                    )
                    .await?
                    .into_iter()
                    .next()
                    .context("UpdateItem answered nothing")??;
                    Change(
                        subject,
                        Probe::Sql(format!(
                            "SELECT COUNT(*) FROM crm_mails WHERE id = {crm_id} AND is_read"
                        )),
                    )
                }
            }
            Act::MailMovedInOutlook => {
                let Some(crm_id) = self.inbox_mail(user, false).await? else {
                    return Ok(None);
                };
                let Some(ews_id) = self.exchange_mail(user, crm_id).await? else {
                    return Ok(None);
                };
                let projects = scalar(db, &format!("SELECT COALESCE(MIN(id), 0) FROM crm_mail_folders WHERE owner_id = {user} AND name = 'Projekte'")).await?;
                let Some(folder) = text(&self.state, &format!("SELECT ews_item_id FROM ms_item_map WHERE mailbox = 'user{user}@example.com' AND crm_table = 'crm_mail_folders' AND crm_id = {projects}")).await? else {
                    return Ok(None);
                };
                let subject = text(
                    db,
                    &format!("SELECT subject FROM crm_mails WHERE id = {crm_id}"),
                )
                .await?
                .unwrap_or_default();
                self.call(
                    user,
                    &MoveItem {
                        ids: vec![ews_id],
                        to: FolderRef::Id(ItemId::new(folder)),
                    },
                )
                .await?
                .into_iter()
                .next()
                .context("MoveItem answered nothing")??;
                Change(format!("{subject} → Projekte"), Probe::Sql(format!("SELECT COUNT(*) FROM crm_mails WHERE id = {crm_id} AND folder_id = {projects}")))
            }
            Act::OutboxMail => {
                let subject = format!("Auftragsbestätigung {k}");
                let bytes = mime(
                    &format!("outbox-{k}"),
                    &format!("Operator {user} <user{user}@example.com>"),
                    "Kunde <bestellung@kunde.example>",
                    &subject,
                    true,
                );
                exec(db, &format!(
                    "INSERT INTO crm_outbox (owner_id, sender, recipients, subject, mime) VALUES ({user}, 'user{user}@example.com', 'bestellung@kunde.example', '{subject}', {})",
                    blob(db, &bytes)
                )).await?;
                Change(subject.clone(), Probe::Sql(format!("SELECT COUNT(*) FROM crm_outbox WHERE subject = '{subject}' AND state = 'sent'")))
            }
            Act::TaskInCrm => {
                exec(db, &format!("INSERT INTO crm_tasks (tenant_id, owner_id, subject, due_date) VALUES (1, {user}, '{name}', '2026-12-10')")).await?;
                let id = scalar(
                    db,
                    &format!("SELECT id FROM crm_tasks WHERE subject = '{name}'"),
                )
                .await?;
                Change(name, Probe::StateSql(format!("SELECT COUNT(*) FROM ms_item_map WHERE crm_table = 'crm_tasks' AND crm_id = {id}")))
            }
            Act::AppointmentInOutlook => {
                let start = chrono::Utc::now() + chrono::Duration::days(2);
                let item = Item::CalendarItem(CalendarItem {
                    subject: Some(name.clone()),
                    start: Some(start),
                    end: Some(start + chrono::Duration::hours(1)),
                    location: Some("Teams".into()),
                    ..CalendarItem::default()
                });
                self.call(
                    user,
                    &CreateItem {
                        folder: Some(FolderRef::well_known(DistinguishedFolder::Calendar)),
                        items: vec![item],
                        disposition: None,
                    },
                )
                .await?;
                Change(
                    name.clone(),
                    Probe::Sql(format!(
                        "SELECT COUNT(*) FROM crm_appointments WHERE subject = '{name}'"
                    )),
                )
            }
        }))
    }

    /// Waits until the change shows on the other side (or [`LIMIT`] passes). The other side
    /// is another system, so it is looked at every few milliseconds.
    async fn arrived(&self, _act: Act, user: usize, change: &Change) -> anyhow::Result<bool> {
        let started = Instant::now();
        while started.elapsed() < LIMIT {
            let done = match &change.1 {
                Probe::Sql(sql) => scalar(&self.db, sql).await.unwrap_or(0) > 0,
                Probe::StateSql(sql) => scalar(&self.state, sql).await.unwrap_or(0) > 0,
                Probe::ReadInExchange(id, read) => {
                    let got = self
                        .call(
                            user,
                            &GetItem {
                                ids: vec![id.clone()],
                                shape: Shape::all_properties(vec![]),
                            },
                        )
                        .await?;
                    matches!(got.first(), Some(Ok(Item::Message(m))) if m.is_read == Some(*read))
                }
            };
            if done {
                return Ok(true);
            }
            let pause = match change.1 {
                Probe::Sql(_) | Probe::StateSql(_) => 5,
                Probe::ReadInExchange(..) => 20,
            };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        Ok(false)
    }
}

fn report(latencies: &Mutex<Latencies>, act: Act, user: usize, what: &str, took: Option<Duration>) {
    let mailbox = format!("user{user}@example.com");
    let label = format!("{}: {}", act.area().as_str(), act.label());
    match took {
        Some(d) => {
            let mut l = latencies.lock();
            let v = l.0.entry((act.area(), act.to_exchange())).or_default();
            v.push(d);
            println!(
                "  {}  {mailbox:<22} {label:<26} {what:<32} {:>5} ms",
                arrow(act.to_exchange()),
                d.as_millis()
            );
        }
        None => println!(
            "  {}  {mailbox:<22} {label:<26} {what:<32} not arrived within {} s",
            arrow(act.to_exchange()),
            LIMIT.as_secs()
        ),
    }
}
