//! ews-sim: an Exchange Web Services server simulator.
//!
//! It serves /EWS/Exchange.asmx and Autodiscover for in-memory mailboxes, with Exchange's sync
//! states, change keys, streaming notifications, throttling and impersonation rules, so that a
//! real EWS client cannot tell it from Exchange. It shares no XML code with the `ews` crate.
//!
//! Layout: [`xml`] reads requests and escapes responses; [`store`] holds mailboxes, folders,
//! items and their change journals; [`ops`] implements the operations; [`calendar`] expands
//! recurring series; [`streaming`] holds subscriptions; [`server`] is the HTTP side (auth,
//! impersonation, throttling, recording, GetStreamingEvents, Autodiscover, the /sim control API).

pub mod calendar;
pub mod mime;
pub mod ops;
pub mod schema_order;
pub mod server;
pub mod store;
pub mod streaming;
pub mod xml;
