//! Reading a GetStreamingEvents response as it arrives.
//!
//! The response is one chunked HTTP body carrying complete SOAP envelopes one after another,
//! each with notifications, a heartbeat (`ConnectionStatus` OK) or the end (`Closed`).
//! [`StreamParser`] takes bytes in whatever pieces the network delivers — a chunk may end in
//! the middle of a tag or of a UTF-8 character — and yields events as soon as an envelope is
//! complete.

use chrono::{DateTime, Utc};

use crate::soap::{message_result, response_from_envelope};
use crate::types::{parse_datetime, FolderId, ItemId};
use crate::xml::{self, Element};
use crate::Error;

/// What happened, per the event's element name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A new mail arrived.
    NewMail,
    /// An item or folder was created.
    Created,
    /// An item or folder was deleted.
    Deleted,
    /// An item or folder changed.
    Modified,
    /// An item or folder moved (new id in `item_id`, old one in `old_item_id`).
    Moved,
    /// An item or folder was copied.
    Copied,
    /// Free/busy changed.
    FreeBusyChanged,
    /// The server lost events: resync.
    Status,
}

impl EventKind {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "NewMailEvent" => EventKind::NewMail,
            "CreatedEvent" => EventKind::Created,
            "DeletedEvent" => EventKind::Deleted,
            "ModifiedEvent" => EventKind::Modified,
            "MovedEvent" => EventKind::Moved,
            "CopiedEvent" => EventKind::Copied,
            "FreeBusyChangedEvent" => EventKind::FreeBusyChanged,
            "StatusEvent" => EventKind::Status,
            _ => return None,
        })
    }
}

/// One event of a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationEvent {
    /// Kind.
    pub kind: EventKind,
    /// When.
    pub timestamp: Option<DateTime<Utc>>,
    /// The item, for item events.
    pub item_id: Option<ItemId>,
    /// The folder, for folder events.
    pub folder_id: Option<FolderId>,
    /// The folder holding the item or folder (the new one after a move).
    pub parent_folder_id: Option<FolderId>,
    /// Before a move or copy.
    pub old_item_id: Option<ItemId>,
    /// Before a move or copy.
    pub old_parent_folder_id: Option<FolderId>,
}

/// What a stream delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// Events of one subscription.
    Notification {
        /// The subscription.
        subscription_id: String,
        /// Its events, in order.
        events: Vec<NotificationEvent>,
    },
    /// Heartbeat: the connection is alive.
    ConnectionOk,
    /// The server ended the connection (ConnectionTimeout reached): open a new one.
    ConnectionClosed,
    /// An error, for the listed subscriptions or (empty list) for the whole connection.
    Error {
        /// What went wrong.
        error: Error,
        /// Subscriptions concerned; empty means all.
        subscription_ids: Vec<String>,
    },
}

/// Incremental reader of a streaming response body.
#[derive(Debug, Default)]
pub struct StreamParser {
    buf: Vec<u8>,
    /// Where to resume searching for an envelope end (bytes before it were searched already).
    scanned: usize,
}

/// An envelope larger than this without an end is refused: a broken stream, not a notification.
const MAX_ENVELOPE: usize = 16 * 1024 * 1024;

impl StreamParser {
    /// A parser with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes and returns the events of every envelope completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<StreamEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.find_envelope_end() {
            let doc: Vec<u8> = self.buf.drain(..end).collect();
            self.scanned = 0;
            out.extend(events_of_envelope(&doc));
        }
        if self.buf.len() > MAX_ENVELOPE {
            self.buf.clear();
            self.scanned = 0;
            out.push(StreamEvent::Error {
                error: Error::Malformed(format!(
                    "streaming envelope larger than {MAX_ENVELOPE} bytes"
                )),
                subscription_ids: vec![],
            });
        }
        out
    }

    /// Bytes buffered but not yet a complete envelope (whitespace between envelopes included).
    pub fn pending(&self) -> usize {
        self.buf.iter().filter(|b| !b.is_ascii_whitespace()).count()
    }

    /// Finds the end of the first `</…Envelope>` closing tag in the buffer.
    fn find_envelope_end(&mut self) -> Option<usize> {
        const NEEDLE: &[u8] = b"Envelope>";
        let start = self.scanned.saturating_sub(NEEDLE.len() + 64);
        let hay = &self.buf[start..];
        let mut from = 0;
        while let Some(pos) = find(&hay[from..], NEEDLE) {
            let at = from + pos;
            // Walk back over an optional prefix to the "</".
            let mut i = at;
            while i > 0
                && (hay[i - 1].is_ascii_alphanumeric()
                    || matches!(hay[i - 1], b'_' | b'-' | b'.' | b':'))
            {
                i -= 1;
            }
            let prefix_ok = i == at || hay[i..at].ends_with(b":");
            if prefix_ok && i >= 2 && &hay[i - 2..i] == b"</" {
                return Some(start + at + NEEDLE.len());
            }
            from = at + NEEDLE.len();
        }
        self.scanned = self.buf.len();
        None
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The events of one complete envelope.
pub fn events_of_envelope(doc: &[u8]) -> Vec<StreamEvent> {
    let whole = |error| {
        vec![StreamEvent::Error {
            error,
            subscription_ids: vec![],
        }]
    };
    let root = match xml::parse(doc) {
        Ok(r) => r,
        Err(e) => return whole(e),
    };
    let resp = match response_from_envelope(root) {
        Ok(r) => r,
        Err(e) => return whole(e),
    };
    let Some(msgs) = resp.body.child("ResponseMessages") else {
        return whole(Error::Malformed(
            "GetStreamingEvents response without ResponseMessages".into(),
        ));
    };
    let mut out = Vec::new();
    for m in &msgs.children {
        if let Err(error) = message_result(m) {
            let subscription_ids = m
                .child("ErrorSubscriptionIds")
                .map(|l| {
                    l.children
                        .iter()
                        .map(|s| s.text.trim().to_string())
                        .collect()
                })
                .unwrap_or_default();
            out.push(StreamEvent::Error {
                error,
                subscription_ids,
            });
            continue;
        }
        if let Some(ns) = m.child("Notifications") {
            // Real servers write m:Notification, the schema says t:Notification: both are read.
            for n in ns.children_named("Notification") {
                out.push(notification(n));
            }
        }
        match m.child_text("ConnectionStatus").map(str::trim) {
            Some("OK") => out.push(StreamEvent::ConnectionOk),
            Some("Closed") => out.push(StreamEvent::ConnectionClosed),
            _ => {}
        }
    }
    out
}

fn notification(n: &Element) -> StreamEvent {
    let events = n
        .children
        .iter()
        .filter_map(|e| {
            let kind = EventKind::parse(&e.name)?;
            let id = |name: &str| e.child(name).and_then(ItemId::from_element);
            Some(NotificationEvent {
                kind,
                timestamp: e.child_text("TimeStamp").and_then(parse_datetime),
                item_id: id("ItemId"),
                folder_id: id("FolderId"),
                parent_folder_id: id("ParentFolderId"),
                old_item_id: id("OldItemId").or_else(|| id("OldFolderId")),
                old_parent_folder_id: id("OldParentFolderId"),
            })
        })
        .collect();
    StreamEvent::Notification {
        subscription_id: n
            .child_text("SubscriptionId")
            .unwrap_or_default()
            .trim()
            .to_string(),
        events,
    }
}
