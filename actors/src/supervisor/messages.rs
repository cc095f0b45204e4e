//! The supervisor's messages: admin commands, reloads, shutdown, status, and the reports
//! its mailbox actors send it.

use super::*;

/// What an operator can ask of one mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stop the mailbox's actors (running steps finish) and start new ones.
    Restart,
    /// Sync every folder from scratch (the stored sync states are not used).
    Resync,
    /// Run one step in every folder now, from the stored sync states (e.g. so that failures
    /// made due again are retried without waiting for a change).
    Sync,
    /// Run no steps until resumed; triggers are remembered.
    Pause,
    /// Undo a pause.
    Resume,
}

impl Action {
    /// The word used in the API path and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Restart => "restart",
            Action::Resync => "resync",
            Action::Sync => "sync",
            Action::Pause => "pause",
            Action::Resume => "resume",
        }
    }

    /// Parses the API path / CLI word.
    pub fn parse(word: &str) -> Option<Self> {
        [
            Action::Restart,
            Action::Resync,
            Action::Sync,
            Action::Pause,
            Action::Resume,
        ]
        .into_iter()
        .find(|a| a.as_str() == word)
    }
}

/// An admin command for one mailbox.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(), CommandError>")]
pub struct Command {
    /// The mailbox (lower case).
    pub smtp: MailboxId,
    /// What to do.
    pub action: Action,
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// No such mailbox is configured.
    #[error("mailbox {0} is not configured")]
    NotFound(MailboxId),
    /// The mailbox has no running actor (it waits to restart); only restart works then.
    #[error("mailbox {smtp} is {state}; only restart works until it runs again")]
    NotRunning {
        /// The mailbox.
        smtp: MailboxId,
        /// Its state.
        state: &'static str,
    },
    /// The service is shutting down.
    #[error("the service is shutting down")]
    ShuttingDown,
}

/// Replaces the configured servers and mailboxes: added ones start, removed ones stop,
/// changed ones restart, the rest are not touched.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<ReloadReport, SpecError>")]
pub struct Reload {
    /// The servers now configured.
    pub servers: Vec<ServerSpec>,
    /// The mailboxes now configured.
    pub mailboxes: Vec<MailboxSpec>,
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Mailboxes started.
    pub added: Vec<MailboxId>,
    /// Mailboxes stopped and forgotten.
    pub removed: Vec<MailboxId>,
    /// Mailboxes restarted with their new configuration.
    pub changed: Vec<MailboxId>,
    /// Mailboxes left alone.
    pub unchanged: usize,
}

/// A set of servers and mailboxes the supervisor cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Two mailboxes with one address.
    #[error("mailbox {0} is configured twice")]
    DuplicateMailbox(MailboxId),
    /// Two servers with one name.
    #[error("server {0} is configured twice")]
    DuplicateServer(ServerId),
    /// A mailbox names a server that is not configured.
    #[error("mailbox {smtp} uses server {server}, which is not configured")]
    UnknownServer {
        /// The mailbox.
        smtp: MailboxId,
        /// The server it names.
        server: ServerId,
    },
}

/// Stops everything gracefully: running steps finish (up to the stop timeout), then the
/// actors and arbiters stop.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Several instances share every server's EWS budget (a cluster): each throttle takes its
/// share, adjusted in place; servers added later take it too.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct ShareBudget {
    /// Live instances, this one included.
    pub instances: usize,
}

/// Asks for a [`SupervisorStatus`].
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "SupervisorStatus")]
pub struct GetStatus;

/// The supervisor's view.
#[derive(Debug, Clone)]
pub struct SupervisorStatus {
    /// Configured mailboxes.
    pub mailboxes: usize,
    /// Arbiters the mailboxes run on (0: the supervisor's own).
    pub arbiters: usize,
    /// Stream groups, with their server, number and member count.
    pub groups: Vec<GroupRef>,
    /// The service is shutting down.
    pub shutting_down: bool,
}

/// A stream group, for status and tests.
#[derive(Debug, Clone)]
pub struct GroupRef {
    /// Its server.
    pub server: ServerId,
    /// Its number within the server.
    pub group: u32,
    /// Its members.
    pub members: Vec<MailboxId>,
    /// The actor.
    pub addr: Addr<StreamGroupActor>,
}

/// A mailbox finished its first steps.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct MailboxReady {
    pub smtp: MailboxId,
    pub generation: u64,
}

/// A mailbox actor went down.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct MailboxDown {
    pub smtp: MailboxId,
    pub generation: u64,
    pub cause: RestartCause,
    pub error: String,
}

/// What the service holds on to: the supervisor's address and the registry.
#[derive(Clone)]
pub struct SupervisorHandle {
    /// Send [`Command`], [`Reload`], [`Shutdown`], [`GetStatus`] here.
    pub addr: Addr<Supervisor>,
    /// Every mailbox's status, readable without a message.
    pub board: Board,
    /// The runtime's metrics.
    pub metrics: Metrics,
}
