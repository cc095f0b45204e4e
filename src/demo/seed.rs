//! The demo's seed data: operators, contacts (own and shared), appointments (one recurring),
//! tasks, mail folders and messages in the CRM, and messages "delivered" into each simulated
//! Exchange mailbox — with attachments, read and unread — so the initial sync has something
//! to link and copy both ways.

use anyhow::Context as _;
use ews::items::{Item, Message};
use ews::ops::{CreateItem, MessageDisposition};
use ews::types::{DistinguishedFolder, FolderRef};
use sqlx::Row;

use crate::config::Area;
use crate::db::Db;

pub(crate) async fn exec(db: &Db, sql: &str) -> anyhow::Result<()> {
    match db {
        Db::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        Db::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        // MariaDB's DATETIME takes '2026-01-05 08:00:00' for '2026-01-05T08:00:00Z'.
        Db::MySql(p) => sqlx::query(&crate::db::mysql_literals(sql))
            .execute(p)
            .await
            .map(|_| ()),
    }
    .with_context(|| format!("seeding: {}", short(sql)))
}

fn short(sql: &str) -> String {
    sql.chars().take(200).collect()
}

pub(crate) async fn scalar(db: &Db, sql: &str) -> anyhow::Result<i64> {
    let v = match db {
        Db::Postgres(p) => sqlx::query(sql)
            .fetch_one(p)
            .await
            .and_then(|r| r.try_get::<i64, _>(0)),
        Db::Sqlite(p) => sqlx::query(sql)
            .fetch_one(p)
            .await
            .and_then(|r| r.try_get::<i64, _>(0)),
        Db::MySql(p) => sqlx::query(sql)
            .fetch_one(p)
            .await
            .and_then(|r| r.try_get::<i64, _>(0)),
    };
    v.with_context(|| format!("reading: {sql}"))
}

/// The first column of the first row as text, if there is a row.
pub(crate) async fn text(db: &Db, sql: &str) -> anyhow::Result<Option<String>> {
    let v = match db {
        Db::Postgres(p) => sqlx::query(sql)
            .fetch_optional(p)
            .await
            .and_then(|r| r.map(|r| r.try_get::<String, _>(0)).transpose()),
        Db::Sqlite(p) => sqlx::query(sql)
            .fetch_optional(p)
            .await
            .and_then(|r| r.map(|r| r.try_get::<String, _>(0)).transpose()),
        Db::MySql(p) => sqlx::query(sql)
            .fetch_optional(p)
            .await
            .and_then(|r| r.map(|r| r.try_get::<String, _>(0)).transpose()),
    };
    v.with_context(|| format!("reading: {sql}"))
}

/// A byte string as an SQL literal of the backend (`X'…'` or `decode('…', 'hex')`).
pub(crate) fn blob(db: &Db, bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    match db {
        Db::Postgres(_) => format!("decode('{hex}', 'hex')"),
        Db::Sqlite(_) | Db::MySql(_) => format!("X'{hex}'"),
    }
}

const SURNAMES: [&str; 10] = [
    "Müller",
    "Schmidt",
    "Schneider",
    "Fischer",
    "Weber",
    "Meyer",
    "Wagner",
    "Becker",
    "Schulz",
    "Hoffmann",
];
const GIVEN: [&str; 10] = [
    "Anna", "Ben", "Clara", "David", "Emma", "Felix", "Greta", "Hannes", "Ida", "Jonas",
];

/// A mail as RFC 5322 bytes: a German text part and, when `attachment` is set, a small PDF.
/// `tag` makes its Message-ID unique.
pub(crate) fn mime(tag: &str, from: &str, to: &str, subject: &str, attachment: bool) -> Vec<u8> {
    let body = format!("Guten Tag,\r\n\r\nanbei die Unterlagen zu \"{subject}\".\r\n\r\nMit freundlichen Grüßen\r\n");
    let id = format!("<{tag}@demo.mailsync.example>");
    if !attachment {
        return format!(
            "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Mon, 23 Nov 2026 09:30:00 +0100\r\n\
             Message-ID: {id}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: 8bit\r\n\r\n{body}"
        )
        .into_bytes();
    }
    // A tiny but well-formed PDF, base64 in 76-character lines.
    let pdf = format!(
        "%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Count 0/Kids[]>>endobj\n% {subject}\ntrailer<</Root 1 0 R>>\n%%EOF\n"
    );
    let b64 = base64(pdf.as_bytes());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Mon, 23 Nov 2026 09:30:00 +0100\r\n\
         Message-ID: {id}\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"demo-{tag}\"\r\n\r\n\
         --demo-{tag}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n\
         --demo-{tag}\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"Angebot.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--demo-{tag}--\r\n",
        lines.join("\r\n")
    )
    .into_bytes()
}

fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Seeds the CRM for `n` operators and the chosen areas, unless it has operators already.
pub(crate) async fn crm(db: &Db, n: usize, areas: &[Area]) -> anyhow::Result<bool> {
    if scalar(db, "SELECT COUNT(*) FROM crm_operators").await? > 0 {
        return Ok(false);
    }
    exec(
        db,
        "INSERT INTO crm_tenants (id, name) VALUES (1, 'Demo GmbH')",
    )
    .await?;
    for i in 1..=n {
        let id = i as i64;
        exec(db, &format!("INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name, email) VALUES ({id}, 1, '{}', 'Operator {i}', 'user{i}@example.com')", 1000 + i)).await?;
        if areas.contains(&Area::Contacts) {
            let contacts: Vec<String> = (0..10)
                .map(|k| {
                    let (g, s) = (GIVEN[(i + k) % 10], SURNAMES[(i * 3 + k) % 10]);
                    format!("(1, {id}, '{g}', '{s}', 'Kunde {k} AG', '{}.{}@kunde{k}.example', '+49 30 {i:03}{k:02}')", g.to_lowercase(), i)
                })
                .collect();
            exec(db, &format!("INSERT INTO crm_contacts (tenant_id, owner_id, given_name, surname, company, email1, business_phone) VALUES {}", contacts.join(", "))).await?;
        }
        if areas.contains(&Area::Calendar) {
            let day = 23 + (i % 5);
            exec(db, &format!(
                "INSERT INTO crm_appointments (tenant_id, owner_id, subject, location, starts_at, ends_at, time_zone, recurrence) VALUES \
                 (1, {id}, 'Jour fixe', 'Raum {i}', '2026-11-{day:02}T08:00:00Z', '2026-11-{day:02}T09:00:00Z', 'Europe/Berlin', 'FREQ=WEEKLY;COUNT=10'), \
                 (1, {id}, 'Kundentermin', 'Berlin', '2026-11-{day:02}T13:00:00Z', '2026-11-{day:02}T14:30:00Z', 'Europe/Berlin', NULL), \
                 (1, {id}, 'Messe', 'Hannover', '2026-12-0{}T23:00:00Z', '2026-12-0{}T23:00:00Z', 'Europe/Berlin', NULL)",
                1 + i % 4, 2 + i % 4
            )).await?;
        }
        if areas.contains(&Area::Tasks) {
            exec(db, &format!(
                "INSERT INTO crm_tasks (tenant_id, owner_id, subject, due_date, status, importance) VALUES \
                 (1, {id}, 'Angebot schreiben', '2026-12-01', 'in_progress', 'high'), \
                 (1, {id}, 'Rechnung prüfen', '2026-12-05', 'not_started', 'normal'), \
                 (1, {id}, 'Rückruf', NULL, 'not_started', 'low')"
            )).await?;
        }
        if areas.contains(&Area::Mail) {
            crm_mail(db, i).await?;
        }
    }
    if areas.contains(&Area::Contacts) {
        exec(db, "INSERT INTO crm_contacts (tenant_id, owner_id, company, email1) VALUES (1, NULL, 'Zentrale Demo GmbH', 'info@demo.example'), (1, NULL, 'Hotline', 'hotline@demo.example')").await?;
    }
    Ok(true)
}

/// The mail folders of operator `i` (inbox and sent items by role, a project folder under
/// the inbox) and four mails: read and unread, two with a PDF attached, one already filed.
async fn crm_mail(db: &Db, i: usize) -> anyhow::Result<()> {
    exec(db, &format!("INSERT INTO crm_mail_folders (owner_id, parent_id, name, role) VALUES ({i}, NULL, 'Posteingang', 'inbox')")).await?;
    let inbox = scalar(
        db,
        &format!("SELECT id FROM crm_mail_folders WHERE owner_id = {i} AND role = 'inbox'"),
    )
    .await?;
    exec(db, &format!("INSERT INTO crm_mail_folders (owner_id, parent_id, name, role) VALUES ({i}, NULL, 'Gesendete Elemente', 'sentitems')")).await?;
    exec(db, &format!("INSERT INTO crm_mail_folders (owner_id, parent_id, name, role) VALUES ({i}, {inbox}, 'Projekte', NULL)")).await?;
    let projects = scalar(
        db,
        &format!("SELECT id FROM crm_mail_folders WHERE owner_id = {i} AND name = 'Projekte'"),
    )
    .await?;
    let to = format!("Operator {i} <user{i}@example.com>");
    for (k, (folder, subject, read, attachment)) in [
        (inbox, "Angebot Druckmaschine", false, true),
        (inbox, "Rückfrage Lieferung", false, false),
        (inbox, "Terminbestätigung", true, false),
        (projects, "Projektplan Q1", true, true),
    ]
    .into_iter()
    .enumerate()
    {
        let from = format!("{} <kunde{k}@kunde{k}.example>", GIVEN[(i + k) % 10]);
        let tag = format!("crm-{i}-{k}");
        let bytes = mime(&tag, &from, &to, subject, attachment);
        exec(db, &format!(
            "INSERT INTO crm_mails (owner_id, folder_id, internet_message_id, subject, sender, recipients, sent_at, is_read, mime, size) \
             VALUES ({i}, {folder}, '<{tag}@demo.mailsync.example>', '{subject}', 'kunde{k}@kunde{k}.example', 'user{i}@example.com', \
             '2026-11-23T08:30:00Z', {}, {}, {})",
            if read { "TRUE" } else { "FALSE" },
            blob(db, &bytes),
            bytes.len()
        )).await?;
    }
    Ok(())
}

/// Two mails delivered into each simulated mailbox's inbox (one unread with a PDF, one read),
/// as if they had arrived before mailsync was installed.
pub(crate) async fn exchange(client: &ews::Client, n: usize) -> anyhow::Result<()> {
    for i in 1..=n {
        let target = ews::Target::impersonating(&format!("user{i}@example.com"));
        let to = format!("user{i}@example.com");
        let items = [
            ("Bestellung 4711", false, true),
            ("Newsletter November", true, false),
        ]
        .into_iter()
        .enumerate()
        .map(|(k, (subject, read, attachment))| {
            Item::Message(Message {
                mime: Some(mime(
                    &format!("ex-{i}-{k}"),
                    "Lieferant <info@lieferant.example>",
                    &to,
                    subject,
                    attachment,
                )),
                is_read: Some(read),
                ..Message::default()
            })
        })
        .collect();
        let created = client
            .call(
                &target,
                &CreateItem {
                    folder: Some(FolderRef::well_known(DistinguishedFolder::Inbox)),
                    items,
                    disposition: Some(MessageDisposition::SaveOnly),
                },
            )
            .await
            .with_context(|| format!("delivering demo mail to user{i}@example.com"))?;
        for r in created.output {
            r.with_context(|| format!("delivering demo mail to user{i}@example.com"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }

    #[test]
    fn demo_mail_is_a_multipart_message_with_a_pdf() {
        let m =
            String::from_utf8(mime("t1", "a@x.example", "b@x.example", "Angebot", true)).unwrap();
        assert!(m.contains("Message-ID: <t1@demo.mailsync.example>\r\n"));
        assert!(m.contains("Content-Type: application/pdf\r\n"));
        assert!(m.contains("filename=\"Angebot.pdf\""));
        assert!(m.ends_with("--demo-t1--\r\n"));
        assert!(m.lines().all(|l| l.len() <= 998));
        let plain =
            String::from_utf8(mime("t2", "a@x.example", "b@x.example", "Hallo", false)).unwrap();
        assert!(plain.contains("Content-Type: text/plain; charset=utf-8\r\n"));
    }
}
