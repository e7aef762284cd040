//! AUTH in a session (RFC 4954): the turn shared by all connections of an IP, its network
//! and the account ([`crate::containment::Detector::auth_turn`]), the password check on the
//! bounded verifier pool, and containment's say (blocked networks, suspended accounts, the
//! login-spread trigger).
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

/// Answer one AUTH attempt.
pub(super) async fn attempt(
    shared: &Shared,
    ctx: &mut Ctx,
    s: &mut Session,
    mechanism: Mechanism,
    credentials: Credentials,
) {
    let ip = ctx.peer.ip();
    let detector = &shared.contain.detector;
    // Blocked for guessing: not even the argon2 work is spent on it. Asked again after the
    // wait in line, which the attempts ahead may have ended with a block.
    let blocked = |ctx: &mut Ctx, s: &mut Session| {
        let no = !detector.auth_allowed(ip);
        if no {
            ctx.refuse_auth(
                s,
                Finding::refusing(
                    Kind::AuthBlocked,
                    "AUTH from a network blocked for failed logins",
                    replies::AUTH_BLOCKED,
                ),
            );
        }
        no
    };
    if blocked(ctx, s) {
        return;
    }
    let name = key(&credentials.username);
    // One password check at a time per address: more connections only queue behind it, and
    // every one of them then meets the same failures, turns and blocks.
    let _line = shared.auth_lines.enter(ip).await;
    if blocked(ctx, s) {
        return;
    }
    let Some(wait) = detector.auth_turn(ip, &name) else {
        metrics::counter!("mailwarden_auth_busy_total").increment(1);
        ctx.refuse_auth(
            s,
            Finding::refusing(
                Kind::AuthLineFull,
                "AUTH while earlier failures from this address or network hold the line",
                replies::AUTH_BUSY,
            ),
        );
        return;
    };
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    let account = match shared
        .auth
        .verify(&credentials.username, credentials.password.expose())
        .await
    {
        Ok(Login::Ok(account)) => account,
        Ok(Login::Bad) => return failed(shared, ctx, s, &name, Kind::AuthInvalid),
        Err(AuthError::Busy) => {
            metrics::counter!("mailwarden_auth_busy_total").increment(1);
            ctx.refuse_auth(
                s,
                Finding::refusing(
                    Kind::AuthVerifiersBusy,
                    "AUTH while the password verifiers' queue is full",
                    replies::AUTH_BUSY,
                ),
            );
            return;
        }
        Err(AuthError::Store(e)) => {
            tracing::error!(event = "auth_backend_error", session = %ctx.session, error = %e);
            ctx.refuse_auth(s, backend_error());
            return;
        }
    };
    match shared.contain.is_suspended(&account) {
        Ok(false) => {}
        Ok(true) => {
            // The right password; the log says so, the client learns nothing from it.
            tracing::warn!(event = "auth_suspended", session = %ctx.session, ip = %ip,
                user = %account, "a suspended account's password was given");
            return failed(shared, ctx, s, &name, Kind::AuthSuspended);
        }
        Err(e) => {
            tracing::error!(event = "auth_backend_error", session = %ctx.session, error = %e);
            ctx.refuse_auth(s, backend_error());
            return;
        }
    }
    if let Some(t) = detector.login(&account, ip) {
        shared.contain.suspend(&account, t, &ctx.session).await;
        return failed(shared, ctx, s, &name, Kind::AuthSuspendedAtLogin);
    }
    tracing::info!(event = "auth_ok", session = %ctx.session, ip = %ip,
        mechanism = mechanism.as_str(), user = %account);
    s.auth_succeeded(account);
}

/// The key an attempt is counted under: the account's own name, so " Alice@Example.test"
/// and "alice@example.test" share their failures and their turn.
fn key(username: &str) -> String {
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
    let f = shared.contain.detector.auth_failed(ctx.peer.ip(), name);
    metrics::counter!("mailwarden_auth_failures_total").increment(1);
    if let Some(blocked) = f.blocked {
        metrics::counter!("mailwarden_auth_blocks_total").increment(1);
        tracing::warn!(event = "auth_blocked", session = %ctx.session,
            ip = %ctx.peer.ip(), blocked = %blocked,
            minutes = shared.config.containment.auth_block_time.get().as_secs() / 60);
    }
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
