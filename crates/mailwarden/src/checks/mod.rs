//! Policy checks, one file per check. Each is consulted by the session driver at its SMTP stage.

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
