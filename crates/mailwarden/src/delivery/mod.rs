//! Local delivery: Maildir. Remote delivery is `outbound`.

pub mod maildir;
