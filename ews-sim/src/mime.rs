//! The envelope Exchange derives from a message's MIME headers (Subject, From, Sender, To,
//! Cc, Bcc, Reply-To, Message-ID, Date), read with a real MIME parser (`mail-parser`): encoded
//! words (RFC 2047, Q and B, any charset it knows) are decoded, folded headers unfolded,
//! quoted display names keep their commas, and groups (`Team: a@x, b@y;`) give their
//! members, as Exchange lists them.

use chrono::{DateTime, Utc};
use mail_parser::{Address, MessageParser};

/// One mailbox of an address header: display name (decoded) and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// The display name, empty when the header gave none.
    pub name: String,
    /// The address.
    pub email: String,
}

/// What Exchange shows of a message's headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// Subject, decoded.
    pub subject: Option<String>,
    /// The first mailbox of From.
    pub from: Option<Mailbox>,
    /// Sender; Exchange shows From when the message has no Sender header.
    pub sender: Option<Mailbox>,
    /// To, group members included.
    pub to: Vec<Mailbox>,
    /// Cc.
    pub cc: Vec<Mailbox>,
    /// Bcc (present on drafts and on the sender's copy).
    pub bcc: Vec<Mailbox>,
    /// Reply-To.
    pub reply_to: Vec<Mailbox>,
    /// Message-ID with its angle brackets, as Exchange's InternetMessageId.
    pub message_id: Option<String>,
    /// Date, as DateTimeSent.
    pub date: Option<DateTime<Utc>>,
}

fn mailboxes(address: Option<&Address<'_>>) -> Vec<Mailbox> {
    let Some(address) = address else {
        return Vec::new();
    };
    address
        .iter()
        .filter_map(|a| {
            let email = a.address.as_deref()?.trim();
            if email.is_empty() {
                return None;
            }
            Some(Mailbox {
                name: a.name.as_deref().unwrap_or_default().trim().to_string(),
                email: email.to_string(),
            })
        })
        .collect()
}

/// The envelope of a message (headers only are parsed); `None` when `mime` has no headers.
pub fn envelope(mime: &[u8]) -> Option<Envelope> {
    let message = MessageParser::default().parse_headers(mime)?;
    let from = mailboxes(message.from()).into_iter().next();
    let sender = mailboxes(message.sender())
        .into_iter()
        .next()
        .or_else(|| from.clone());
    Some(Envelope {
        subject: message.subject().map(str::to_string),
        from,
        sender,
        to: mailboxes(message.to()),
        cc: mailboxes(message.cc()),
        bcc: mailboxes(message.bcc()),
        reply_to: mailboxes(message.reply_to()),
        message_id: message.message_id().map(|id| format!("<{id}>")),
        date: message
            .date()
            .and_then(|d| DateTime::from_timestamp(d.to_timestamp(), 0)),
    })
}

/// The addresses a sent message goes to (To, Cc, Bcc), lower case.
pub fn recipients(mime: &[u8]) -> Vec<String> {
    envelope(mime)
        .map(|e| {
            e.to.into_iter()
                .chain(e.cc)
                .chain(e.bcc)
                .map(|m| m.email.to_ascii_lowercase())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbx(name: &str, email: &str) -> Mailbox {
        Mailbox {
            name: name.into(),
            email: email.into(),
        }
    }

    /// Parses `headers` (a body is added) and compares the envelope with `expected`.
    #[track_caller]
    fn check(headers: &str, expected: Envelope) {
        let mime = format!("{headers}\r\n\r\nbody\r\n");
        assert_eq!(envelope(mime.as_bytes()), Some(expected), "{headers}");
    }

    #[test]
    fn encoded_words_folding_quoted_commas_and_groups() {
        check(
            "Subject: =?utf-8?q?=C3=BCber?= den =?UTF-8?B?UHLDvGZzdGFuZA==?=\r\n\
             From: =?iso-8859-1?q?J=FCrgen_M=FCller?= <juergen@example.com>\r\n\
             To: \"M\u{fc}ller, Anna\" <anna@example.com>, bob@example.com,\r\n\
             \t=?utf-8?b?w4RyenRlLCBCw7xybw==?= <aerzte@example.com>\r\n\
             Cc: Team: carl@example.com, \"Dora D.\" <dora@example.com>;, undisclosed-recipients:;\r\n\
             Reply-To: <replies@example.com>\r\n\
             Message-ID: <abc.123@example.com>\r\n\
             Date: Tue, 3 Mar 2026 09:15:00 +0100",
            Envelope {
                subject: Some("über den Prüfstand".into()),
                from: Some(mbx("Jürgen Müller", "juergen@example.com")),
                sender: Some(mbx("Jürgen Müller", "juergen@example.com")),
                to: vec![
                    mbx("Müller, Anna", "anna@example.com"),
                    mbx("", "bob@example.com"),
                    mbx("Ärzte, Büro", "aerzte@example.com"),
                ],
                cc: vec![
                    mbx("", "carl@example.com"),
                    mbx("Dora D.", "dora@example.com"),
                ],
                bcc: vec![],
                reply_to: vec![mbx("", "replies@example.com")],
                message_id: Some("<abc.123@example.com>".into()),
                date: DateTime::parse_from_rfc3339("2026-03-03T08:15:00Z")
                    .ok()
                    .map(|d| d.with_timezone(&Utc)),
            },
        );
        // A folded subject, a Sender of its own, Bcc.
        check(
            "Subject: a long subject\r\n  folded onto two lines\r\n\
             From: Boss <boss@example.com>\r\n\
             Sender: Assistant <assistant@example.com>\r\n\
             Bcc: hidden@example.com",
            Envelope {
                subject: Some("a long subject folded onto two lines".into()),
                from: Some(mbx("Boss", "boss@example.com")),
                sender: Some(mbx("Assistant", "assistant@example.com")),
                bcc: vec![mbx("", "hidden@example.com")],
                ..Envelope::default()
            },
        );
        assert_eq!(
            recipients(
                b"To: \"A, B\" <AB@example.com>\r\nCc: c@example.com\r\nBcc: d@example.com\r\n\r\nx"
            ),
            vec!["ab@example.com", "c@example.com", "d@example.com"]
        );
    }
}
