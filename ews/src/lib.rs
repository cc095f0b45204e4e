//! ews: a typed client for Exchange Web Services.
//!
//! It writes SOAP 1.1 requests and reads responses with quick-xml, sends them with reqwest, and
//! turns what Exchange answers into typed items and into errors a caller can act on (throttled,
//! transient, invalid sync state, denied, malformed). It knows nothing of actors or SQL, and
//! shares no XML code with `ews-sim`.
//!
//! Layout: [`xml`] reads and writes XML; [`soap`] frames envelopes and reads faults and
//! response messages; [`types`] and [`items`] are the typed ids, shapes and items;
//! [`ops`] the operations, each a request type that writes its body and parses its response;
//! [`streaming`] reads GetStreamingEvents incrementally; [`client`] sends it all over HTTP;
//! [`oauth2`] gets app-only tokens (client secret or certificate); [`autodiscover`] finds a
//! mailbox's EWS URL.

pub mod autodiscover;
pub mod client;
mod connection;
pub mod error;
pub mod items;
pub mod oauth2;
pub mod ops;
pub mod soap;
pub mod streaming;
pub mod types;
pub mod xml;

pub use client::{Access, Auth, Client, ClientConfig, Observer, Target};
pub use error::Error;
