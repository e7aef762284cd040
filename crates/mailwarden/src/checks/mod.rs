//! Policy checks, one file per check. Each is consulted by the session driver at its SMTP stage.

pub mod relay;
