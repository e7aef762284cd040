//! Policy checks, one file per check: MAIL and RCPT ones are called by the session driver
//! (`server::session`), end-of-DATA ones by `server::message` (mail from outside through
//! [`inbound::decide`]). Each returns typed reasons; none does I/O of its own but DNS.

pub mod arc;
pub mod authres;
pub mod headers;
pub mod inbound;
pub mod local_sender;
pub mod ownership;
pub mod relay;
pub mod scoring;
pub mod sender;
pub mod shape;
pub mod spf;
pub mod verdict;
