//! ews: a typed client for Exchange Web Services.
//!
//! It writes SOAP 1.1 requests and reads responses with quick-xml, sends them with reqwest, and
//! turns what Exchange answers into typed items and into errors a caller can act on (throttled,
//! transient, invalid sync state, denied, malformed). It knows nothing of actors or SQL, and
//! shares no XML code with `ews-sim`.
