//! The sync engine: the field model both sides are compared in ([`fields`]), the three-way
//! merge ([`merge`]), recurrences ([`recurrence`]) and time zones ([`timezones`]).

pub mod converge;
pub mod engine;
pub mod feed;
pub mod fields;
pub mod mail;
pub mod merge;
pub mod recurrence;
pub mod smtp;
pub mod stream;
pub mod timezones;
