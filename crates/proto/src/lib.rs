//! mailwarden's protocol cores: SMTP (command and address parsing, replies, the DATA/BDAT
//! readers, SASL decoding and the server session state machine) and POP3 (`pop3`). No I/O and no async runtime:
//! everything here takes bytes and returns replies and events, so it is tested (and fuzzed, by `fuzz/`)
//! without sockets.
#![forbid(unsafe_code)]

pub mod address;
pub mod command;
pub mod data;
pub mod pop3;
pub mod refusal;
pub mod replies;
pub mod reply;
pub mod sasl;
pub mod session;

pub use refusal::Why;
pub use reply::{Reply, Status};
