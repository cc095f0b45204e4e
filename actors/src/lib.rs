//! mailsync-actors: the concurrency, supervision and throttling of mailsync.
//!
//! A supervisor owns one actor per mailbox, each owning one actor per synced folder; stream
//! group actors hold the EWS streaming connections; a throttle per Exchange server meters every
//! request. The crate knows nothing of XML or SQL: it drives the ports (traits) that the
//! service implements with the `ews` client and sqlx. See docs/ARCHITECTURE.md.
