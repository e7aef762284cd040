//! Delivery, from the queue onwards: local mailboxes ([`local`], the runner, into
//! [`maildir`]) and other servers ([`remote`]: MX routing, the SMTP client, retries, DSNs).
//! Delivery reads the queue and records outcomes in it; the queue never calls delivery.

pub mod lmtp;
pub mod local;
pub mod maildir;
pub mod remote;
