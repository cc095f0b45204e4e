//! mailsync: two-way sync between a business application's SQL database (an ERP/CRM) and
//! Microsoft Exchange mailboxes over Exchange Web Services.
//!
//! This crate is the service: the CLI (`main.rs`), configuration ([`config`]), logging
//! ([`logging`]) and, as the issues land, the adapters that implement the ports of
//! `mailsync-actors` with the `ews` client and sqlx. Layout and invariants: docs/ARCHITECTURE.md.

/// mimalloc instead of the system allocator: the sync path allocates many small strings and
/// maps per item, and glibc's malloc and free were over a third of mailsync's CPU samples in
/// the initial-sync bench (perf, examples/speed_bench). Built without transparent huge pages
/// (Cargo.toml): a sync service works in bursts, and each burst paid for zeroing fresh 2 MiB
/// pages in the kernel.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod admin;
pub mod cluster;
pub mod config;
pub mod connect;
pub mod ctl;
pub mod db;
#[cfg(feature = "demo")]
pub mod demo;
pub mod environment;
pub mod logging;
pub mod maintenance;
pub mod metrics;
pub mod oneshot;
pub mod rrule;
pub mod sdnotify;
pub mod secret;
pub mod service;
pub mod summary;
pub mod sync;
pub mod testconn;
