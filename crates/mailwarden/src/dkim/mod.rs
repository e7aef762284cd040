//! DKIM signing of mail that local accounts submit (RFC 6376 §5, Ed25519 per RFC 8463).
//!
//! [`keys`] generates and stores per-domain keys (`mailwarden dkim keygen`) and prints the DNS
//! records to publish; [`sign`] computes signatures with mail-auth's keys and relaxed
//! canonicalization. Verification of incoming mail lives in `checks::sender`.

pub mod keys;
pub mod sign;
