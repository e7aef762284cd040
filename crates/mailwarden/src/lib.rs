//! mailwarden: a mail server that never takes a sender's word for who it is.
//!
//! The life of a message is the layout: `server` (listeners and sessions, around the I/O-free
//! protocol core in `mailwarden-proto`) → `checks` → `queue` → `delivery`. The queue is the
//! only bridge between receiving and sending. `config`, `store`, `accounts` and `cli` serve
//! them all.
#![forbid(unsafe_code)]

pub mod accounts;
pub mod audit;
pub mod autoconfig;
pub mod checks;
pub mod classifier;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod containment;
pub mod decision;
pub mod delivery;
pub mod dkim;
pub mod dns;
pub mod dns_records;
pub mod explain;
pub mod fsync;
pub mod header;
pub mod heavy;
pub mod http;
pub mod learning;
pub mod limits;
pub mod logging;
pub mod maildrop;
pub mod metrics;
pub mod quarantine;
pub mod queue;
pub mod quickstart;
pub mod received;
pub mod records;
pub mod reports;
pub mod reputation;
pub mod routing;
pub mod screening;
pub mod server;
pub mod store;
pub mod util;

/// HACKING.md's example check, compiled and run with the doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../HACKING.md")]
pub struct HackingMd;
