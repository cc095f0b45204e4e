//! The two actors of the workload: the ERP (SQL on the business database) and the users
//! (EWS as themselves, and mail arriving through the simulator). Each acts at its rate on a
//! random mailbox and area until told to stop, and records what it did in the knowledge.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, Utc};
use ews::items::{Body, CalendarItem, Contact, Item, Message, Task};
use ews::ops::{
    ConflictResolution, CreateItem, DeleteItem, DeleteType, FindItem, GetItem, ItemUpdate,
    MessageDisposition, Restriction, UpdateItem, View,
};
use ews::types::{FolderRef, ItemId, PropertyPath, Shape};

use super::workload::{
    crm_insert, fresh, initial_values, read_back, smtp, Ctx, Kind, Life, Rng, KINDS,
};

/// Runs `act` about `rate` times a second until `stop`.
async fn paced<F, Fut>(rate: f64, stop: &AtomicBool, mut act: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let period = Duration::from_secs_f64(1.0 / rate.max(0.01));
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        act().await;
        next += period;
        let now = Instant::now();
        if next > now {
            tokio::time::sleep(next - now).await;
        } else {
            next = now;
        }
    }
}

/// The ERP: inserts, updates (the ERP-only field, half the time the shared one too; mail: the
/// read flag or a move to Deleted Items) and deletes, 3 : 3 : 1.
pub async fn erp(ctx: Arc<Ctx>, rate: f64, seed: u64, stop: Arc<AtomicBool>) {
    let mut rng = Rng::new(seed);
    let mailboxes = ctx.users.len();
    paced(rate, &stop, || {
        let mailbox = rng.below(mailboxes);
        let kind = KINDS[rng.below(4)];
        let roll = rng.below(7);
        let both = rng.chance(0.5);
        let ctx = ctx.clone();
        let mut rng2 = Rng::new(rng.next());
        async move {
            match roll {
                0..=2 => erp_create(&ctx, mailbox, kind).await,
                3..=5 => erp_update(&ctx, &mut rng2, mailbox, kind, both).await,
                _ => erp_delete(&ctx, &mut rng2, mailbox, kind).await,
            }
        }
    })
    .await;
}

async fn erp_create(ctx: &Ctx, mailbox: usize, kind: Kind) {
    let (key, n) = ctx.new_key(mailbox, kind);
    let result = crm_insert(ctx, mailbox, kind, &key, n).await;
    let created = match result {
        Ok(done) => done,
        // The answer was lost: look.
        Err(_) => matches!(read_back(ctx, kind, mailbox, &key).await, Some(Some(_))),
    };
    if created {
        ctx.learn(key, |_| {
            fresh(mailbox, kind, false, initial_values(kind, n))
        });
        ctx.knowledge.lock().count("erp", kind, "create");
    }
}

async fn erp_update(ctx: &Ctx, rng: &mut Rng, mailbox: usize, kind: Kind, both: bool) {
    let Some((key, _)) = ctx.knowledge.lock().pick(rng, mailbox, kind, false) else {
        return;
    };
    let op = mailbox as i64 + 1;
    let n = ctx.knowledge.lock().next();
    if kind == Kind::Mail {
        let Some((_, trash)) = ctx.mail_folders(mailbox).await else {
            ctx.knowledge.lock().release(&key, |_| {});
            return;
        };
        let anchor = ctx.knowledge.lock().recs[&key].anchor;
        let trash_it = !anchor && rng.chance(0.3);
        let sql = if trash_it {
            "UPDATE crm_mails SET folder_id = $3 WHERE owner_id = $1 AND internet_message_id = $2"
        } else {
            "UPDATE crm_mails SET is_read = NOT is_read WHERE owner_id = $1 AND internet_message_id = $2 AND $3 > 0"
        };
        let r = sqlx::query(sql)
            .bind(op)
            .bind(&key)
            .bind(trash)
            .execute(&ctx.crm)
            .await;
        let mut k = ctx.knowledge.lock();
        match r {
            Ok(r) if r.rows_affected() == 0 => k.release(&key, |_| {}),
            Ok(_) => {
                k.release(&key, |rec| {
                    rec.erp_touched = true;
                    if trash_it {
                        rec.life = Life::Trashed;
                    }
                });
                k.count("erp", kind, if trash_it { "move" } else { "update" });
            }
            // A read flag's or folder's outcome is not worth learning: skip the mail's checks.
            Err(_) => k.release(&key, |rec| rec.uncertain = true),
        }
        return;
    }
    let token = match kind {
        Kind::Task => initial_values(Kind::Task, n)[0].clone().unwrap(),
        _ => format!("e{n}"),
    };
    let (erp_col, shared_col) = match kind {
        Kind::Contact => ("company", "job_title"),
        Kind::Appointment => ("body", "location"),
        _ => ("due_date", "body"),
    };
    let cast = if kind == Kind::Task { "::date" } else { "" };
    let mut set = format!("{erp_col} = $3{cast}");
    if both {
        set.push_str(&format!(", {shared_col} = $4"));
    }
    let sql = format!(
        "UPDATE {} SET {set} WHERE owner_id = $1 AND {} = $2",
        kind.table(),
        kind.key_col()
    );
    let shared = format!("e{n}");
    let r = sqlx::query(&sql)
        .bind(op)
        .bind(&key)
        .bind(&token)
        .bind(&shared)
        .execute(&ctx.crm)
        .await;
    let applied = match r {
        Ok(r) => r.rows_affected() > 0,
        Err(_) => match read_back(ctx, kind, mailbox, &key).await {
            Some(Some(values)) => values[0].as_deref() == Some(token.as_str()),
            Some(None) => false,
            None => {
                ctx.knowledge
                    .lock()
                    .release(&key, |rec| rec.uncertain = true);
                return;
            }
        },
    };
    let mut k = ctx.knowledge.lock();
    k.release(&key, |rec| {
        if applied {
            rec.erp = Some(token.clone());
            rec.erp_touched = true;
            if both {
                rec.shared[1] = Some(shared.clone());
            }
        }
    });
    if applied {
        k.count("erp", kind, "update");
    }
}

async fn erp_delete(ctx: &Ctx, rng: &mut Rng, mailbox: usize, kind: Kind) {
    let Some((key, _)) = ctx.knowledge.lock().pick(rng, mailbox, kind, true) else {
        return;
    };
    let sql = format!(
        "DELETE FROM {} WHERE owner_id = $1 AND {} = $2",
        kind.table(),
        kind.key_col()
    );
    let r = sqlx::query(&sql)
        .bind(mailbox as i64 + 1)
        .bind(&key)
        .execute(&ctx.crm)
        .await;
    let deleted = match r {
        Ok(r) => Some(r.rows_affected() > 0),
        Err(_) => read_back(ctx, kind, mailbox, &key)
            .await
            .map(|v| v.is_none()),
    };
    let mut k = ctx.knowledge.lock();
    match deleted {
        Some(true) => {
            k.release(&key, |rec| rec.life = Life::Gone);
            k.count("erp", kind, "delete");
        }
        Some(false) => k.release(&key, |_| {}),
        None => k.release(&key, |rec| rec.uncertain = true),
    }
}

/// The users: creates, edits (the user-only field, half the time the shared one too; mail:
/// the read flag) and deletes (half hard, half Outlook's "Delete", a move to Deleted Items),
/// 3 : 3 : 2.
pub async fn users(ctx: Arc<Ctx>, rate: f64, seed: u64, stop: Arc<AtomicBool>) {
    let mut rng = Rng::new(seed);
    let mailboxes = ctx.users.len();
    paced(rate, &stop, || {
        let mailbox = rng.below(mailboxes);
        let kind = KINDS[rng.below(4)];
        let roll = rng.below(8);
        let both = rng.chance(0.5);
        let hard = rng.chance(0.5);
        let ctx = ctx.clone();
        let mut rng2 = Rng::new(rng.next());
        async move {
            match roll {
                0..=2 => {
                    user_create(&ctx, mailbox, kind).await;
                }
                3..=5 => user_update(&ctx, &mut rng2, mailbox, kind, both).await,
                _ => user_delete(&ctx, &mut rng2, mailbox, kind, hard).await,
            }
        }
    })
    .await;
}

/// Creates a record in a mailbox as its user (mail: delivered); the seed uses it too.
pub async fn user_create(ctx: &Ctx, mailbox: usize, kind: Kind) -> Option<String> {
    let (key, n) = ctx.new_key(mailbox, kind);
    let values = initial_values(kind, n);
    let ok = if kind == Kind::Mail {
        let body = serde_json::json!({
            "folder": "inbox",
            "type": "Message",
            "mime": super::workload::mime(&key, &smtp(mailbox), Utc::now()),
        });
        ctx.http
            .post(format!(
                "{}/sim/mailboxes/{}/items",
                ctx.sim_base,
                smtp(mailbox)
            ))
            .json(&body)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    } else {
        let [erp, user, shared] = values.clone();
        let start = super::workload::tomorrow();
        let item = match kind {
            Kind::Contact => Item::Contact(Contact {
                surname: Some(key.clone()),
                company_name: erp,
                given_name: user,
                job_title: shared,
                ..Contact::default()
            }),
            Kind::Appointment => Item::CalendarItem(CalendarItem {
                subject: Some(key.clone()),
                body: erp.map(Body::text),
                location: shared,
                start: Some(start),
                end: Some(start + chrono::Duration::hours(1)),
                ..CalendarItem::default()
            }),
            _ => Item::Task(Task {
                subject: Some(key.clone()),
                due_date: erp
                    .and_then(|d| d.parse::<NaiveDate>().ok())
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
                    .map(|d| d.and_utc()),
                body: shared.map(Body::text),
                ..Task::default()
            }),
        };
        let op = CreateItem {
            folder: Some(FolderRef::well_known(kind.folder())),
            items: vec![item],
            disposition: None,
        };
        match ctx.users[mailbox]
            .call(&ews::Target::own(&smtp(mailbox)), &op)
            .await
        {
            Ok(r) => r.output.into_iter().all(|r| r.is_ok()),
            Err(_) => false,
        }
    };
    if !ok {
        // Perhaps created, perhaps not: known, but not checked.
        ctx.learn(key, |_| {
            let mut r = fresh(mailbox, kind, false, values);
            r.uncertain = true;
            r
        });
        return None;
    }
    ctx.learn(key.clone(), |_| fresh(mailbox, kind, false, values));
    ctx.knowledge.lock().count("user", kind, "create");
    Some(key)
}

/// The item of a key in its mailbox, read in full; `None` while Exchange has none (not synced
/// yet) or on an error.
async fn find(ctx: &Ctx, mailbox: usize, kind: Kind, key: &str) -> Option<Item> {
    let target = ews::Target::own(&smtp(mailbox));
    let op = FindItem {
        folder: FolderRef::well_known(kind.folder()),
        shape: Shape::id_only(),
        view: View::IndexedPage { offset: 0, max: 10 },
        restriction: Some(Restriction::IsEqualTo(kind.key_path(), key.to_owned())),
    };
    let found = ctx.users[mailbox].call(&target, &op).await.ok()?.output;
    let id = found.items.first()?.id()?.clone();
    let get = GetItem {
        ids: vec![id],
        shape: Shape::all_properties(vec![
            PropertyPath::field("message:IsRead"),
            PropertyPath::field("message:InternetMessageId"),
        ]),
    };
    ctx.users[mailbox]
        .call(&target, &get)
        .await
        .ok()?
        .output
        .pop()?
        .ok()
}

async fn user_update(ctx: &Ctx, rng: &mut Rng, mailbox: usize, kind: Kind, both: bool) {
    let Some((key, _)) = ctx.knowledge.lock().pick(rng, mailbox, kind, false) else {
        return;
    };
    let Some(item) = find(ctx, mailbox, kind, &key).await else {
        ctx.knowledge.lock().release(&key, |_| {});
        return;
    };
    let n = ctx.knowledge.lock().next();
    let token = format!("o{n}");
    let (edited, paths): (Item, Vec<&str>) = match &item {
        Item::Contact(_) => (
            Item::Contact(Contact {
                given_name: Some(token.clone()),
                job_title: Some(token.clone()),
                ..Contact::default()
            }),
            vec!["contacts:GivenName", "contacts:JobTitle"],
        ),
        Item::CalendarItem(_) => (
            Item::CalendarItem(CalendarItem {
                categories: vec![token.clone()],
                location: Some(token.clone()),
                ..CalendarItem::default()
            }),
            vec!["item:Categories", "calendar:Location"],
        ),
        Item::Task(_) => (
            Item::Task(Task {
                categories: vec![token.clone()],
                body: Some(Body::text(token.clone())),
                ..Task::default()
            }),
            vec!["item:Categories", "item:Body"],
        ),
        Item::Message(m) => (
            Item::Message(Message {
                is_read: Some(!m.is_read.unwrap_or(false)),
                ..Message::default()
            }),
            vec!["message:IsRead"],
        ),
        Item::Other { .. } => {
            ctx.knowledge.lock().release(&key, |_| {});
            return;
        }
    };
    let take = if both || kind == Kind::Mail {
        paths.len()
    } else {
        1
    };
    let updates = edited
        .updates()
        .into_iter()
        .filter(|u| paths[..take].contains(&u.key().as_str()))
        .collect();
    let op = UpdateItem {
        changes: vec![ItemUpdate {
            id: item.id().cloned().expect("a found item has an id"),
            updates,
        }],
        conflict: ConflictResolution::AutoResolve,
        disposition: (kind == Kind::Mail).then_some(MessageDisposition::SaveOnly),
        calendar: kind == Kind::Appointment,
    };
    let r = ctx.users[mailbox]
        .call(&ews::Target::own(&smtp(mailbox)), &op)
        .await;
    let ok = matches!(&r, Ok(r) if r.output.iter().all(|o| o.is_ok()));
    let mut k = ctx.knowledge.lock();
    k.release(&key, |rec| {
        if ok && kind != Kind::Mail {
            rec.user = Some(token.clone());
            if both {
                rec.shared[2] = Some(token.clone());
            }
        }
        // A refused or lost edit: its outcome is unknown.
        if !ok && r.is_err() {
            rec.uncertain = true;
        }
    });
    if ok {
        k.count("user", kind, "update");
    }
}

async fn user_delete(ctx: &Ctx, rng: &mut Rng, mailbox: usize, kind: Kind, hard: bool) {
    let Some((key, rec)) = ctx.knowledge.lock().pick(rng, mailbox, kind, true) else {
        return;
    };
    // Only once the item shows the ERP's latest edit; a mail only if the ERP never touched it.
    let item = find(ctx, mailbox, kind, &key).await;
    let shows_erp = match &item {
        Some(Item::Message(_)) => !rec.erp_touched,
        Some(i) => super::workload::item_values(i).is_some_and(|(_, v)| v[0] == rec.erp),
        None => false,
    };
    let Some(item) = item.filter(|_| shows_erp) else {
        let mut k = ctx.knowledge.lock();
        k.release(&key, |_| {});
        k.count("user", kind, "delete deferred");
        return;
    };
    let op = DeleteItem {
        ids: vec![ItemId {
            id: item.id().expect("a found item has an id").id.clone(),
            change_key: None,
        }],
        delete_type: if hard {
            DeleteType::HardDelete
        } else {
            DeleteType::MoveToDeletedItems
        },
    };
    let r = ctx.users[mailbox]
        .call(&ews::Target::own(&smtp(mailbox)), &op)
        .await;
    let ok = matches!(&r, Ok(r) if r.output.iter().all(|o| o.is_ok()));
    let mut k = ctx.knowledge.lock();
    k.release(&key, |rec| {
        if ok {
            rec.life = if kind == Kind::Mail && !hard {
                Life::Trashed
            } else {
                Life::Gone
            };
        } else {
            rec.uncertain = true;
        }
    });
    if ok {
        k.count(
            "user",
            kind,
            if hard {
                "delete hard"
            } else {
                "delete to Deleted Items"
            },
        );
    }
}
