//! AUTH in a session (RFC 4954): the turn shared by all connections of an IP, its network
//! and the account ([`crate::containment::Detector::auth_turn`]), the password check on the
//! bounded verifier pool, and containment's say (blocked networks, suspended accounts, the
//! login-spread trigger).
//!
//! Security: the attempted name and password are never logged. A suspended account answers
//! exactly as a wrong password does (reply, delay, counting), whatever password was given, so
//! a guesser cannot learn from a suspension that a guess was right (docs/security.md). Every
//! error answers `454 4.7.0`; nothing but a verified password authenticates.

use super::Shared;
use super::session::Ctx;
use crate::accounts::{AuthError, Verdict};
use mailwarden_proto::replies;
use mailwarden_proto::sasl::{Credentials, Mechanism};
use mailwarden_proto::session::Session;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

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
                replies::AUTH_BLOCKED,
                "client network blocked",
                "AUTH from a network blocked for failed logins",
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
            replies::AUTH_BUSY,
            "login line full",
            "AUTH while earlier failures from this address or network hold the line",
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
        Ok(Verdict::Ok(account)) => account,
        Ok(Verdict::Bad) => return failed(shared, ctx, s, &name, "invalid credentials"),
        Err(AuthError::Busy) => {
            metrics::counter!("mailwarden_auth_busy_total").increment(1);
            ctx.refuse_auth(
                s,
                replies::AUTH_BUSY,
                "verifiers busy",
                "AUTH while the password verifiers' queue is full",
            );
            return;
        }
        Err(AuthError::Store(e)) => {
            tracing::error!(event = "auth_backend_error", session = %ctx.session, error = %e);
            ctx.refuse_auth(
                s,
                replies::AUTH_TEMP,
                "auth backend error",
                "auth backend error",
            );
            return;
        }
    };
    match shared.contain.is_suspended(&account) {
        Ok(false) => {}
        Ok(true) => {
            // The right password; the log says so, the client learns nothing from it.
            tracing::warn!(event = "auth_suspended", session = %ctx.session, ip = %ip,
                user = %account, "a suspended account's password was given");
            return failed(shared, ctx, s, &name, "account suspended");
        }
        Err(e) => {
            tracing::error!(event = "auth_backend_error", session = %ctx.session, error = %e);
            ctx.refuse_auth(
                s,
                replies::AUTH_TEMP,
                "auth backend error",
                "auth backend error",
            );
            return;
        }
    }
    if let Some(t) = detector.login(&account, ip) {
        shared.contain.suspend(&account, t, &ctx.session).await;
        return failed(shared, ctx, s, &name, "account suspended at login");
    }
    tracing::info!(event = "auth_ok", session = %ctx.session, ip = %ip,
        mechanism = mechanism.as_str(), user = %account);
    s.auth_succeeded(account);
}

/// One AUTH in progress per client address; the rest wait in line. How many can wait is
/// bounded by `smtp.max_connections_per_ip` (a session has one AUTH at a time).
#[derive(Default)]
pub(super) struct Lines(std::sync::Mutex<HashMap<IpAddr, Arc<tokio::sync::Mutex<()>>>>);

/// A place in an address's line, at its head once [`Lines::enter`] returns; leaving it (or
/// giving up waiting) lets the next attempt in, and the last to leave forgets the line.
pub(super) struct Place<'a> {
    lines: &'a Lines,
    ip: IpAddr,
    line: Option<Arc<tokio::sync::Mutex<()>>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Lines {
    pub(super) async fn enter(&self, ip: IpAddr) -> Place<'_> {
        let line = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(ip)
            .or_default()
            .clone();
        // In place before the wait, so a session dropped while waiting still leaves.
        let mut place = Place {
            lines: self,
            ip,
            line: Some(line.clone()),
            guard: None,
        };
        place.guard = Some(line.lock_owned().await);
        place
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        drop(self.line.take());
        let mut m = self.lines.0.lock().unwrap_or_else(|e| e.into_inner());
        // Nobody else holds or waits for this address's line: forget it.
        if m.get(&self.ip).is_some_and(|l| Arc::strong_count(l) == 1) {
            m.remove(&self.ip);
        }
    }
}

/// The key an attempt is counted under: the account's own name, so " Alice@Example.test"
/// and "alice@example.test" share their failures and their turn.
fn key(username: &str) -> String {
    crate::accounts::canonical(username).unwrap_or_else(|_| username.trim().to_lowercase())
}

/// A failed attempt: counted for the IP, its network and the account (pushing their turns
/// on), and answered `535 5.7.8`. `detail` goes to the log only.
fn failed(shared: &Shared, ctx: &mut Ctx, s: &mut Session, name: &str, detail: &str) {
    let f = shared.contain.detector.auth_failed(ctx.peer.ip(), name);
    metrics::counter!("mailwarden_auth_failures_total").increment(1);
    if let Some(blocked) = f.blocked {
        metrics::counter!("mailwarden_auth_blocks_total").increment(1);
        tracing::warn!(event = "auth_blocked", session = %ctx.session,
            ip = %ctx.peer.ip(), blocked = %blocked,
            minutes = shared.config.containment.auth_block_time.get().as_secs() / 60);
    }
    ctx.refuse_auth(s, replies::AUTH_FAILED, "invalid credentials", detail);
}

#[cfg(test)]
mod tests {
    use super::Lines;
    use std::time::Duration;

    #[tokio::test]
    async fn a_line_is_forgotten_when_the_last_attempt_leaves_even_one_that_gave_up_waiting() {
        let lines = Lines::default();
        let ip = "192.0.2.7".parse().unwrap();
        let first = lines.enter(ip).await;
        // A second session of the address waits, then goes away before its turn.
        let gave_up = tokio::time::timeout(Duration::from_millis(20), lines.enter(ip)).await;
        assert!(gave_up.is_err(), "the line has one place at its head");
        assert_eq!(lines.0.lock().unwrap().len(), 1);
        drop(first);
        assert!(lines.0.lock().unwrap().is_empty());
    }

    #[test]
    fn an_attempt_counts_under_the_accounts_own_name() {
        assert_eq!(super::key(" Alice@Example.TEST"), "alice@example.test");
        assert_eq!(super::key("alice@example.test"), "alice@example.test");
        // Not an address at all: still one key however it is spaced or cased.
        assert_eq!(super::key(" Not An Address "), "not an address");
    }
}
