//! Console logins: the password check, shared with SMTP AUTH's failure counters, turns and
//! blocks; the sessions that follow it; their cookies and CSRF tokens.
//!
//! Security: a session is a 256-bit random token in an `HttpOnly; SameSite=Strict` cookie
//! (`Secure` over TLS); the server keeps only its SHA-256, so a memory dump holds no usable
//! cookie. Sessions end after `admin.session_idle` without use, at logout, and when more than
//! [`MAX_SESSIONS`] exist (the oldest goes). Each session has its own CSRF token that every
//! form carries and every POST must return; it is compared in constant time. A failed login
//! counts as a failed AUTH for the client's address, its network and the account, so the
//! console opens no second door for a password guesser. A right password of a non-admin or
//! suspended account fails like a wrong one. Names and passwords are never logged.

use crate::server::Shared;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const COOKIE: &str = "mw_console";
const MAX_SESSIONS: usize = 256;

#[derive(Clone)]
pub struct Session {
    pub account: String,
    pub csrf: String,
    /// The account's password stamp at login (`Accounts::password_stamp`): a change ends it.
    pub password_stamp: String,
    /// A one-time notice for the next page (what the last action did).
    pub flash: Option<String>,
    last_used: Instant,
}

#[derive(Default)]
pub struct Sessions {
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
}

fn random_hex() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system RNG");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hash(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Sessions {
    /// A new session for `account`; the cookie's token.
    pub fn create(&self, account: &str, password_stamp: String) -> String {
        let token = random_hex();
        let mut m = self.by_hash.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MAX_SESSIONS
            && let Some(oldest) = m.iter().min_by_key(|(_, s)| s.last_used).map(|(k, _)| *k)
        {
            m.remove(&oldest);
        }
        m.insert(
            hash(&token),
            Session {
                account: account.to_string(),
                csrf: random_hex(),
                password_stamp,
                flash: None,
                last_used: Instant::now(),
            },
        );
        token
    }

    /// The live session of `token`, touched; expired ones are dropped.
    pub fn get(&self, token: &str, idle: Duration) -> Option<Session> {
        let mut m = self.by_hash.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, s| s.last_used.elapsed() < idle);
        let s = m.get_mut(&hash(token))?;
        s.last_used = Instant::now();
        let out = s.clone();
        s.flash = None;
        Some(out)
    }

    /// Say `msg` on the session's next page.
    pub fn flash(&self, token: &str, msg: String) {
        let mut m = self.by_hash.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = m.get_mut(&hash(token)) {
            s.flash = Some(msg);
        }
    }

    pub fn remove(&self, token: &str) {
        let mut m = self.by_hash.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(&hash(token));
    }

    /// End every session of `account` (its password was reset, or it was suspended).
    pub fn end_all(&self, account: &str) {
        let mut m = self.by_hash.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, s| s.account != account);
    }
}

/// Does the form's token match the session's? Constant time.
pub fn csrf_ok(session: &Session, given: Option<&str>) -> bool {
    let Some(given) = given else { return false };
    let (a, b) = (session.csrf.as_bytes(), given.as_bytes());
    // Both tokens are 64 hex characters: only the length of a wrong guess shows early.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The session cookie's value in a `Cookie:` header.
pub fn cookie_token(headers: &axum::http::HeaderMap) -> Option<String> {
    for v in headers.get_all(axum::http::header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for part in v.split(';') {
            if let Some((k, val)) = part.trim().split_once('=')
                && k == COOKIE
                && val.len() == 64
                && val.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Some(val.to_string());
            }
        }
    }
    None
}

/// `Set-Cookie` for a session (an empty token ends it).
pub fn set_cookie(token: &str, secure: bool) -> String {
    let life = if token.is_empty() { "; Max-Age=0" } else { "" };
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}{life}")
}

/// Why a login did not open a session. The page says the same for all of them but
/// `Blocked` and `Busy`.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Wrong password, no such account, not an admin, or suspended.
    Invalid,
    /// The address or network is blocked for failed logins.
    Blocked,
    /// Earlier failures hold the line, or the verifiers are busy, or the store failed.
    Busy,
}

/// Check an admin login exactly as SMTP AUTH checks a password: the same blocks, turns,
/// verifier pool and failure counters (`server::auth::check_password`).
pub async fn login(
    shared: &Shared,
    ip: IpAddr,
    username: &str,
    password: &[u8],
) -> Result<String, Refused> {
    use crate::server::auth::{Outcome, check_password, count_failure};
    let checked = check_password(shared, ip, username, password).await;
    let verdict = match checked.outcome {
        Outcome::Account(account) => {
            let admin = shared.accounts.is_admin(&shared.config, &account);
            let suspended = shared.contain.is_suspended(&account);
            match (admin, suspended) {
                (Ok(true), Ok(false)) => {
                    // Logins from many networks are containment's business here too.
                    if let Some(t) = shared.contain.detector.login(&account, ip) {
                        shared.contain.suspend(&account, t, "console").await;
                        Err(("suspended_at_login", Refused::Invalid))
                    } else {
                        Ok(account)
                    }
                }
                (Ok(_), Ok(_)) => Err(("not_admin_or_suspended", Refused::Invalid)),
                _ => Err(("store_error", Refused::Busy)),
            }
        }
        Outcome::Invalid => Err(("invalid", Refused::Invalid)),
        Outcome::Blocked => Err(("blocked", Refused::Blocked)),
        Outcome::LineFull => Err(("line_full", Refused::Busy)),
        Outcome::Busy | Outcome::StoreError(_) => Err(("busy", Refused::Busy)),
    };
    match verdict {
        Ok(account) => {
            tracing::info!(event = "console_login", ip = %ip, user = %account);
            Ok(account)
        }
        Err((why, r)) => {
            if r == Refused::Invalid {
                count_failure(shared, ip, &checked.name, "admin");
            }
            tracing::warn!(event = "console_login_refused", ip = %ip, reason = why);
            Err(r)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_end() {
        let s = Sessions::default();
        let t = s.create("admin@example.test", String::new());
        assert_eq!(t.len(), 64);
        let got = s.get(&t, Duration::from_secs(60)).unwrap();
        assert_eq!(got.account, "admin@example.test");
        assert!(csrf_ok(&got, Some(&got.csrf)));
        assert!(!csrf_ok(&got, Some("x")));
        assert!(!csrf_ok(&got, None));
        assert!(s.get(&t, Duration::ZERO).is_none(), "idle past the limit");
        let t = s.create("admin@example.test", String::new());
        s.end_all("admin@example.test");
        assert!(s.get(&t, Duration::from_secs(60)).is_none());
    }

    #[test]
    fn cookies_are_strict_and_only_well_formed_tokens_are_read() {
        assert_eq!(
            set_cookie("ab", true),
            "mw_console=ab; Path=/; HttpOnly; SameSite=Strict; Secure"
        );
        assert!(set_cookie("", false).ends_with("Max-Age=0"));
        let mut h = axum::http::HeaderMap::new();
        let tok = "a".repeat(64);
        h.insert(
            axum::http::header::COOKIE,
            format!("x=1; {COOKIE}={tok}").parse().unwrap(),
        );
        assert_eq!(cookie_token(&h), Some(tok));
        h.insert(
            axum::http::header::COOKIE,
            format!("{COOKIE}=<script>").parse().unwrap(),
        );
        assert_eq!(cookie_token(&h), None);
    }

    #[test]
    fn the_oldest_session_goes_past_the_cap() {
        let s = Sessions::default();
        let first = s.create("a@example.test", String::new());
        for _ in 0..MAX_SESSIONS {
            s.create("b@example.test", String::new());
        }
        assert!(s.get(&first, Duration::from_secs(60)).is_none());
    }
}
