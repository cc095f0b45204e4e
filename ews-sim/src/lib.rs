//! ews-sim: an Exchange Web Services server simulator.
//!
//! It serves /EWS/Exchange.asmx and Autodiscover for in-memory mailboxes, with Exchange's sync
//! states, change keys, streaming notifications, throttling and impersonation rules, so that a
//! real EWS client cannot tell it from Exchange. It shares no XML code with the `ews` crate.
