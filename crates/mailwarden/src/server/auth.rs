//! AUTH in a session (RFC 4954): the turn shared by all connections of an IP, its network
//! and the account ([`crate::containment::Detector::auth_turn`]), the password check on the
//! bounded verifier pool, and containment's say (blocked networks, suspended accounts, the
//! login-spread trigger). [`check_password`] is the part every login surface shares (POP3,
//! the console), so a guesser gains nothing by switching protocols.
//!
//! Security: the attempted name and password are never logged. A suspended account answers
//! exactly as a wrong password does (reply, delay, counting), whatever password was given, so
//! a guesser cannot learn from a suspension that a guess was right (docs/security.md). Every
//! error answers `454 4.7.0`; nothing but a verified password authenticates.

use super::ctx::Ctx;
use super::shared::Shared;
use crate::accounts::{AuthError, Login};
use crate::decision::{Finding, Kind};
use mailwarden_proto::replies;
use mailwarden_proto::sasl::{Credentials, Mechanism};
use mailwarden_proto::session::Session;
use std::net::IpAddr;

/// What a password check found, with the caller still at the head of its address's line:
/// whatever it does next (count a failure, take the login) happens before the next attempt
/// from that address is checked.
pub(crate) struct Checked<'a> {
    pub outcome: Outcome,
    /// The key the attempt counts under ([`key`]).
    pub name: String,
    _line: Option<crate::limits::lines::Place<'a>>,
}

pub(crate) enum Outcome {
    /// The password is right: the canonical account name.
    Account(String),
    /// Wrong password or no such account.
    Invalid,
    /// The address or its network is blocked for failed logins.
    Blocked,
    /// Earlier failures from this address, its network or for this account hold the line.
    LineFull,
    /// The verifiers' queue is full.
    Busy,
    StoreError(String),
}

impl<'a> Checked<'a> {
    /// The outcome, the key, and the place in the address's line, for a caller that leaves
    /// the line before slow work of its own (POP3's listing).
    pub(crate) fn into_parts(self) -> (Outcome, String, Option<crate::limits::lines::Place<'a>>) {
        (self.outcome, self.name, self._line)
    }
}

/// Check a password as every login surface does (SMTP AUTH, POP3): blocks first (no argon2
/// for a blocked address), one check at a time per address, the turn of the address, its
/// network and the account, then the bounded verifier pool. Suspension and containment are
/// the caller's: they differ by surface.
pub(crate) async fn check_password<'a>(
    shared: &'a Shared,
    ip: IpAddr,
    username: &str,
    password: &[u8],
) -> Checked<'a> {
    let detector = &shared.contain.detector;
    let name = key(username);
    let done = |outcome, line| Checked {
        outcome,
        name: name.clone(),
        _line: line,
    };
    if !detector.auth_allowed(ip) {
        return done(Outcome::Blocked, None);
    }
    // One password check at a time per address: more connections only queue behind it, and
    // every one of them then meets the same failures, turns and blocks. Asked again after
    // the wait in line, which the attempts ahead may have ended with a block.
    let line = shared.auth_lines.enter(ip).await;
    if !detector.auth_allowed(ip) {
        return done(Outcome::Blocked, Some(line));
    }
    let Some(wait) = detector.auth_turn(ip, &name) else {
        metrics::counter!("mailwarden_auth_busy_total").increment(1);
        return done(Outcome::LineFull, Some(line));
    };
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    let outcome = match shared.auth.verify(username, password).await {
        Ok(Login::Ok(account)) => Outcome::Account(account),
        Ok(Login::Bad) => Outcome::Invalid,
        Err(AuthError::Busy) => {
            metrics::counter!("mailwarden_auth_busy_total").increment(1);
            Outcome::Busy
        }
        Err(AuthError::Store(e)) => Outcome::StoreError(e.to_string()),
    };
    done(outcome, Some(line))
}

/// A failed login, counted for the IP, its network and the account (pushing their turns
/// on), whatever surface it came through.
pub(crate) fn count_failure(shared: &Shared, ip: IpAddr, name: &str, listener: &str) {
    let f = shared.contain.detector.auth_failed(ip, name);
    metrics::counter!("mailwarden_auth_failures_total").increment(1);
    if let Some(blocked) = f.blocked {
        metrics::counter!("mailwarden_auth_blocks_total").increment(1);
        tracing::warn!(event = "auth_blocked", ip = %ip, blocked = %blocked, listener,
            minutes = shared.config.containment.auth_block_time.get().as_secs() / 60);
    }
}

/// Answer one AUTH attempt.
pub(super) async fn attempt(
    shared: &Shared,
    ctx: &mut Ctx,
    s: &mut Session,
    mechanism: Mechanism,
    credentials: Credentials,
) {
    let ip = ctx.peer.ip();
    let checked = check_password(
        shared,
        ip,
        &credentials.username,
        credentials.password.expose(),
    )
    .await;
    let name = checked.name.as_str();
    let account = match checked.outcome {
        Outcome::Account(account) => account,
        Outcome::Invalid => return failed(shared, ctx, s, name, Kind::AuthInvalid),
        Outcome::Blocked => {
            return ctx.refuse_auth(
                s,
                Finding::refusing(
                    Kind::AuthBlocked,
                    "AUTH from a network blocked for failed logins",
                    replies::AUTH_BLOCKED,
                ),
            );
        }
        Outcome::LineFull => {
            return ctx.refuse_auth(
                s,
                Finding::refusing(
                    Kind::AuthLineFull,
                    "AUTH while earlier failures from this address or network hold the line",
                    replies::AUTH_BUSY,
                ),
            );
        }
        Outcome::Busy => {
            return ctx.refuse_auth(
                s,
                Finding::refusing(
                    Kind::AuthVerifiersBusy,
                    "AUTH while the password verifiers' queue is full",
                    replies::AUTH_BUSY,
                ),
            );
        }
        Outcome::StoreError(e) => {
            tracing::error!(event = "auth_backend_error", session = %ctx.session, error = %e);
            return ctx.refuse_auth(s, backend_error());
        }
    };
    let detector = &shared.contain.detector;
    match shared.contain.is_suspended(&account) {
        Ok(false) => {}
        Ok(true) => {
            // The right password; the log says so, the client learns nothing from it.
            tracing::warn!(event = "auth_suspended", session = %ctx.session, ip = %ip,
                user = %account, "a suspended account's password was given");
            return failed(shared, ctx, s, name, Kind::AuthSuspended);
        }
        Err(e) => {
            tracing::error!(event = "auth_backend_error", session = %ctx.session, error = %e);
            ctx.refuse_auth(s, backend_error());
            return;
        }
    }
    if let Some(t) = detector.login(&account, ip) {
        shared.contain.suspend(&account, t, &ctx.session).await;
        return failed(shared, ctx, s, name, Kind::AuthSuspendedAtLogin);
    }
    tracing::info!(event = "auth_ok", session = %ctx.session, ip = %ip,
        mechanism = mechanism.as_str(), user = %account);
    s.auth_succeeded(account);
}

/// The key an attempt is counted under: the account's own name, so " Alice@Example.test"
/// and "alice@example.test" share their failures and their turn.
pub(crate) fn key(username: &str) -> String {
    crate::accounts::canonical(username).unwrap_or_else(|_| username.trim().to_lowercase())
}

fn backend_error() -> Finding {
    Finding::refusing(
        Kind::AuthBackendError,
        "auth backend error",
        replies::AUTH_TEMP,
    )
}

/// A failed attempt: counted for the IP, its network and the account (pushing their turns
/// on), and answered `535 5.7.8` whatever `kind` it was (the log and the record tell them
/// apart; the client cannot).
fn failed(shared: &Shared, ctx: &mut Ctx, s: &mut Session, name: &str, kind: Kind) {
    count_failure(shared, ctx.peer.ip(), name, ctx.listener.name());
    let detail = match kind {
        Kind::AuthSuspended => "account suspended",
        Kind::AuthSuspendedAtLogin => "account suspended at login",
        _ => "invalid credentials",
    };
    ctx.refuse_auth(s, Finding::refusing(kind, detail, replies::AUTH_FAILED));
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_attempt_counts_under_the_accounts_own_name() {
        assert_eq!(super::key(" Alice@Example.TEST"), "alice@example.test");
        assert_eq!(super::key("alice@example.test"), "alice@example.test");
        // Not an address at all: still one key however it is spaced or cased.
        assert_eq!(super::key(" Not An Address "), "not an address");
    }
}
