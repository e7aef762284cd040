//! Policy checks, one file per check, each a function of what its stage knows that returns
//! `decision::Finding`s: submission ones are called by the stages (`server::stage`,
//! `server::message`), end-of-DATA ones for mail from outside through [`inbound::decide`],
//! which `explain` shares. None applies a mode (that is `decision::apply`'s) or does I/O of
//! its own but DNS.

pub mod arc;
pub mod authres;
pub mod headers;
pub mod inbound;
pub mod local_sender;
pub mod ownership;
pub mod scoring;
pub mod sender;
pub mod shape;
pub mod spf;
pub mod weights;
