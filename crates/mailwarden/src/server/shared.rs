//! What every session shares: the config, the store's faces (accounts, queue, records), the
//! resolver, the clock, the limits and containment, and the listener kinds.

use crate::accounts::{Accounts, Authenticator};
use crate::config::{BareLfMode, Config};
use crate::limits::conn::ConnLimiter;
use crate::queue::Queue;
use crate::routing::Routing;
use mailwarden_proto::data::BareLf;
use mailwarden_proto::session::{Limits, SessionConfig};
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// Port 25: inbound mail for local domains.
    Mx,
    /// Port 587: STARTTLS, then AUTH.
    Submission,
    /// Port 465: implicit TLS, then AUTH.
    Submissions,
}

impl ListenerKind {
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Mx => "mx",
            ListenerKind::Submission => "submission",
            ListenerKind::Submissions => "submissions",
        }
    }

    pub(super) fn from_name(n: &str) -> ListenerKind {
        match n {
            "submission" => ListenerKind::Submission,
            "submissions" => ListenerKind::Submissions,
            _ => ListenerKind::Mx,
        }
    }
}

/// Everything sessions share.
pub struct Shared {
    pub config: Arc<Config>,
    /// Signs `X-Mailwarden-Id` on delivered mail (`learning`).
    pub learn_key: ring::hmac::Key,
    pub accounts: Accounts,
    pub auth: Arc<Authenticator>,
    pub routing: Routing,
    pub dns: Arc<crate::dns::Dns>,
    pub queue: Arc<Queue>,
    /// DKIM keys for signing submitted mail.
    pub keyring: crate::dkim::keys::Keyring,
    /// Limits, anomaly triggers, suspension and AUTH brute-force blocks for the submission
    /// ports (and outbound delivery's 5xx replies).
    pub contain: Arc<crate::containment::Containment>,
    /// The content classifier's model, reloaded when `mailwarden learn` changes it.
    pub classifier: crate::classifier::Live,
    /// Time for limits, screening memory and greylisting (shifted in end-to-end tests).
    pub clock: Arc<dyn crate::clock::Clock>,
    pub tls: tokio_rustls::TlsAcceptor,
    pub limiter: Arc<ConnLimiter>,
    /// `limits.min_free_space` on the filesystem of `data_dir`.
    pub free_space: super::freespace::FreeSpace,
    /// One AUTH password check at a time per client address.
    pub(crate) auth_lines: crate::limits::lines::Lines,
    /// POP-before-SMTP: what POP3 logins granted their addresses.
    pub(crate) grants: super::grants::Grants,
    /// One POP3 session per mailbox, and the sizes of messages POP3 has counted.
    pub(crate) pop3_locks: crate::maildrop::Locks,
    pub(crate) pop3_sizes: Arc<crate::maildrop::Sizes>,
    /// `limits.message_memory`: messages being checked in memory, over all sessions.
    pub memory: crate::heavy::Memory,
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    pub fn session_config(&self, kind: ListenerKind) -> SessionConfig {
        let s = &self.config.smtp;
        let submission = kind != ListenerKind::Mx;
        SessionConfig {
            hostname: self.config.hostname.clone(),
            limits: Limits {
                command_line: s.max_command_line,
                auth_line: 12288,
                text_line: s.max_text_line,
                message_size: s.max_message_size.0,
                recipients: s.max_recipients,
                errors: s.max_errors,
                junk_commands: s.max_junk_commands,
                transactions: s.max_messages_per_session,
                auth_failures: self.config.auth.max_failures_per_session,
            },
            tls_available: kind != ListenerKind::Submissions,
            tls_at_start: kind == ListenerKind::Submissions,
            auth_offered: submission,
            auth_required: submission,
            bare_lf: match s.bare_lf {
                BareLfMode::Reject => BareLf::Reject,
                BareLfMode::Normalize => BareLf::Normalize,
            },
            close_on_non_smtp: !submission
                && self.config.screening.protocol.mode == crate::config::Mode::Enforce,
            grants: submission && self.grants.on(),
        }
    }
}
