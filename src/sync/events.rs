//! Telemetry of the sync engine as small event structs (the model is Vector's
//! `internal_events`): each event is logged and counted by one `emit`, so the log and the
//! metrics cannot drift apart, and the label values are enums, so the metric's help text lists
//! every value that can occur.

use crate::metrics::ServiceMetrics;

/// Which way a write went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Written to Exchange.
    ToExchange,
    /// Written to the CRM.
    ToCrm,
}

impl Direction {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToExchange => "to_exchange",
            Direction::ToCrm => "to_crm",
        }
    }
}

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// A new record.
    Create,
    /// Changed fields.
    Update,
    /// Deleted.
    Delete,
    /// Linked to an existing record of the other side (first contact, a lost mapping).
    Link,
    /// A mail moved between folders.
    Move,
    /// A mail folder created.
    CreateFolder,
    /// A mail folder renamed or moved in the CRM.
    UpdateFolder,
    /// A mail folder renamed in Exchange.
    RenameFolder,
    /// A mail folder moved in Exchange.
    MoveFolder,
    /// A mail folder deleted.
    DeleteFolder,
    /// An outbox mail sent.
    Send,
    /// An outbox mail that could not be sent.
    SendFailed,
    /// The CRM-id stamp written on an imported item.
    Stamp,
    /// A deleted record restored from the other side (held deletes rejected).
    Restore,
}

impl Action {
    /// Every action, so the metric's series exist (as zero) and its help lists them all.
    pub const ALL: [Action; 14] = [
        Action::Create,
        Action::Update,
        Action::Delete,
        Action::Link,
        Action::Move,
        Action::CreateFolder,
        Action::UpdateFolder,
        Action::RenameFolder,
        Action::MoveFolder,
        Action::DeleteFolder,
        Action::Send,
        Action::SendFailed,
        Action::Stamp,
        Action::Restore,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Link => "link",
            Action::Move => "move",
            Action::CreateFolder => "create_folder",
            Action::UpdateFolder => "update_folder",
            Action::RenameFolder => "rename_folder",
            Action::MoveFolder => "move_folder",
            Action::DeleteFolder => "delete_folder",
            Action::Send => "send",
            Action::SendFailed => "send_failed",
            Action::Stamp => "stamp",
            Action::Restore => "restore",
        }
    }
}

/// Help text of `mailsync_items_synced_total`, listing every label value.
pub const ITEMS_HELP: &str = "Items written by area (contacts, calendar, tasks, mail), direction (to_exchange, to_crm) and action (create, update, delete, link, move, create_folder, update_folder, rename_folder, move_folder, delete_folder, send, send_failed, stamp, restore).";

/// A record was written on one side.
#[derive(Debug, Clone, Copy)]
pub struct ItemSynced {
    /// The area (contacts, calendar, tasks, mail).
    pub area: &'static str,
    /// Which side was written.
    pub direction: Direction,
    /// What was done.
    pub action: Action,
}

impl ItemSynced {
    /// Counts it (the step logs its summary; one line per item would flood the log).
    pub fn emit(self, metrics: &ServiceMetrics) {
        metrics
            .items
            .with_label_values(&[self.area, self.direction.as_str(), self.action.as_str()])
            .inc();
    }
}

/// Why an item went to the failure log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A CRM row Exchange cannot hold, or an Exchange item the CRM cannot hold.
    InvalidRow,
    /// Exchange refused a write for good.
    RejectedByExchange,
    /// A mail larger than `mail.max_message_mb`.
    TooLarge,
}

impl FailureKind {
    /// Every kind, so the metric's series exist (as zero) and its help lists them all.
    pub const ALL: [FailureKind; 3] = [
        FailureKind::InvalidRow,
        FailureKind::RejectedByExchange,
        FailureKind::TooLarge,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::InvalidRow => "invalid_row",
            FailureKind::RejectedByExchange => "rejected_by_exchange",
            FailureKind::TooLarge => "too_large",
        }
    }
}

/// Help text of `mailsync_failures_total`.
pub const FAILURES_HELP: &str = "Items that could not be synced and were parked in the failure log (retried on a schedule), by area (contacts, calendar, tasks, mail) and kind (invalid_row, rejected_by_exchange, too_large).";

/// An item was parked in the failure log.
#[derive(Debug, Clone)]
pub struct ItemParked<'a> {
    /// Mailbox.
    pub mailbox: &'a str,
    /// Area.
    pub area: &'static str,
    /// CRM table.
    pub table: &'a str,
    /// CRM row (0 when only known in Exchange).
    pub crm_id: i64,
    /// Exchange item ('' when only known in the CRM).
    pub ews_id: &'a str,
    /// Why.
    pub kind: FailureKind,
    /// In words an operator can act on.
    pub reason: &'a str,
}

impl ItemParked<'_> {
    /// Logs and counts it.
    pub fn emit(&self, metrics: &ServiceMetrics) {
        tracing::warn!(
            mailbox = self.mailbox,
            table = self.table,
            crm_id = self.crm_id,
            ews_id = self.ews_id,
            kind = self.kind.as_str(),
            reason = self.reason,
            "item not synced; parked in the failure log"
        );
        metrics
            .failures
            .with_label_values(&[self.area, self.kind.as_str()])
            .inc();
    }
}

/// Deletes were held by the breaker.
#[derive(Debug, Clone)]
pub struct DeletesHeld<'a> {
    /// Mailbox.
    pub mailbox: &'a str,
    /// Area.
    pub area: &'static str,
    /// Scope (own, shared, a mail folder path).
    pub scope: &'a str,
    /// Where they would have been applied (crm, exchange).
    pub side: &'static str,
    /// How many.
    pub count: usize,
    /// Mapped records in the scope before the deletes.
    pub of: u64,
    /// Why (over the limit, or the side turned empty).
    pub reason: &'a str,
}

impl DeletesHeld<'_> {
    /// Logs it; the gauge `mailsync_held_deletes` is set from the state store.
    pub fn emit(&self) {
        tracing::warn!(
            mailbox = self.mailbox,
            area = self.area,
            scope = self.scope,
            side = self.side,
            count = self.count,
            of = self.of,
            reason = self.reason,
            "deletes held for approval (POST /api/v1/mailboxes/{{smtp}}/deletes/approve or reject)"
        );
    }
}
