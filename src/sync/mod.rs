//! The sync engine. Dependencies run one way:
//!
//! - [`core`]: the shared core (databases, mailboxes, the EWS call, typed outcomes);
//! - [`fields`], [`merge`], [`recurrence`], [`timezones`]: the field model and the merge;
//! - [`open`]: opening a mailbox;
//! - [`items`]: contacts, calendar and tasks — read, [`items::plan`] (pure), execute;
//! - [`breaker`]: the delete breaker (pure); [`matching`]: first-contact matching (pure);
//! - [`mail`]: the mail tree, messages and the outbox;
//! - [`initial`]: the first contact (initial sync, baseline);
//! - [`engine`]: the runtime's `SyncPort`, routing steps to the above;
//! - [`dryrun`]: `mailsync plan`, read-only;
//! - [`feed`], [`stream`]: the CRM change feed and streaming notifications;
//! - [`converge`]: the convergence checker.

pub mod breaker;
pub mod converge;
pub mod core;
pub mod engine;
pub mod events;
pub mod feed;
pub mod fields;
pub mod gate;
pub mod initial;
pub mod items;
pub mod mail;
pub mod matching;
pub mod merge;
pub mod open;
pub mod recurrence;
pub mod smtp;
pub mod stream;
pub mod timezones;
