//! Containing hijacked accounts: each account is `active`, `throttled` or `suspended`; a
//! [`Detector`] watches what accounts do and says when one must be stopped, and
//! [`Containment`] acts on it.
//!
//! A suspended account cannot authenticate (it gets `535 5.7.8`, exactly as a wrong password
//! does, so a guesser learns nothing from it) or submit (`550 5.7.1`), still receives mail, and its mail still waiting for delivery is held, not
//! sent. `mailwarden user suspend|resume|status` act by hand; a resume releases or deletes
//! the held mail. The state lives in the store, so the running server and the CLI agree at once.

pub mod act;
pub mod detector;

pub use act::Containment;
pub use detector::{Detector, Limited, Reservation, Trigger};

use crate::store::Optional;
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Active,
    Throttled,
    Suspended,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Throttled => "throttled",
            State::Suspended => "suspended",
        }
    }

    fn parse(s: &str) -> State {
        match s {
            "throttled" => State::Throttled,
            "suspended" => State::Suspended,
            _ => State::Active,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AccountState {
    pub state: State,
    /// When the state began (Unix time); 0 for an account that was never contained.
    pub since: i64,
    pub reason: String,
    /// What triggered it, for `user status`.
    pub evidence: String,
}

/// The account's state at `now` (Unix seconds).
pub fn state(store: &Store, account: &str, now: i64) -> Result<AccountState, StoreError> {
    let row = store.read(|c| {
        c.query_row(
            "SELECT state, since, reason, evidence FROM account_state WHERE account = ?1",
            [account],
            |r| {
                Ok(AccountState {
                    state: State::parse(&r.get::<String>(0)?),
                    since: r.get(1)?,
                    reason: r.get(2)?,
                    evidence: r.get(3)?,
                })
            },
        )
        .optional()
    })?;
    // Throttling lifts by itself as the limit's window slides: an old record is history.
    let row = row.filter(|st| st.state != State::Throttled || now - st.since < THROTTLE_SHOWN_SECS);
    Ok(row.unwrap_or(AccountState {
        state: State::Active,
        since: 0,
        reason: String::new(),
        evidence: String::new(),
    }))
}

pub fn is_suspended(store: &Store, account: &str, now: i64) -> Result<bool, StoreError> {
    Ok(state(store, account, now)?.state == State::Suspended)
}

/// How long after its last refusal a throttled account is still shown as throttled: the
/// longest window a limit that answers `451` counts over is the hour.
const THROTTLE_SHOWN_SECS: i64 = 3600;

/// Record that a limit refused `account` a message; a suspended account stays suspended.
pub fn throttle(store: &Store, account: &str, reason: &str, now: i64) -> Result<(), StoreError> {
    let (a, r) = (account.to_string(), reason.to_string());
    store.write_blocking(move |c| {
        c.execute(
            "INSERT INTO account_state(account, state, since, reason, evidence) \
             VALUES (?1, 'throttled', ?2, 'limit reached', ?3) \
             ON CONFLICT(account) DO UPDATE SET state = 'throttled', since = ?2, \
             reason = 'limit reached', evidence = ?3 WHERE account_state.state != 'suspended'",
            crate::params![a, now, r],
        )?;
        Ok(())
    })
}

/// Suspend an account and hold its mail that waits for delivery. Returns how many recipients
/// were held.
pub fn suspend(
    store: &Store,
    account: &str,
    reason: &str,
    evidence: &str,
    now: i64,
) -> Result<usize, StoreError> {
    let (a, r, e) = (
        account.to_string(),
        reason.to_string(),
        evidence.to_string(),
    );
    store.write_blocking(move |c| {
        c.execute(
            "INSERT INTO account_state(account, state, since, reason, evidence) \
             VALUES (?1, 'suspended', ?2, ?3, ?4) \
             ON CONFLICT(account) DO UPDATE SET state = 'suspended', since = ?2, reason = ?3, \
             evidence = ?4",
            crate::params![a, now, r, e],
        )?;
        crate::queue::account::hold(c, &a, now)
    })
}

/// What to do with held mail when an account resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldMail {
    Release,
    Delete,
}

/// Count the recipients held for this account.
pub fn held(store: &Store, account: &str) -> Result<usize, StoreError> {
    store.read(|c| crate::queue::account::held(c, account))
}

/// Make an account active again; release its held mail for delivery now, or delete it.
/// Returns how many recipients were released or deleted.
pub fn resume(
    store: &Store,
    account: &str,
    held_mail: HeldMail,
    now: i64,
) -> Result<usize, StoreError> {
    let a = account.to_string();
    store.write_blocking(move |c| {
        c.execute("DELETE FROM account_state WHERE account = ?1", [&a])?;
        match held_mail {
            HeldMail::Release => crate::queue::account::release(c, &a, now),
            HeldMail::Delete => crate::queue::account::delete(c, &a, now),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;

    fn now() -> i64 {
        crate::clock::SystemClock.now_secs()
    }

    #[test]
    fn suspend_and_resume_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            state(&store, "a@x.test", now()).unwrap().state,
            State::Active
        );
        suspend(&store, "a@x.test", "by hand", "admin", now()).unwrap();
        let st = state(&store, "a@x.test", now()).unwrap();
        assert_eq!(st.state, State::Suspended);
        assert_eq!(st.reason, "by hand");
        assert!(st.since > 0);
        assert!(is_suspended(&store, "a@x.test", now()).unwrap());
        assert!(!is_suspended(&store, "b@x.test", now()).unwrap());
        resume(&store, "a@x.test", HeldMail::Release, now()).unwrap();
        assert_eq!(
            state(&store, "a@x.test", now()).unwrap().state,
            State::Active
        );
    }

    #[test]
    fn throttling_shows_until_it_lifts_and_never_hides_a_suspension() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        throttle(&store, "a@x.test", "200 messages in the last hour", now()).unwrap();
        let st = state(&store, "a@x.test", now()).unwrap();
        assert_eq!(st.state, State::Throttled);
        assert_eq!(st.evidence, "200 messages in the last hour");
        // An hour-old throttle is over.
        store
            .write_blocking(|c| c.execute("UPDATE account_state SET since = since - 3601", ()))
            .unwrap();
        assert_eq!(
            state(&store, "a@x.test", now()).unwrap().state,
            State::Active
        );
        suspend(&store, "b@x.test", "message burst", "16 in a minute", now()).unwrap();
        throttle(&store, "b@x.test", "limit", now()).unwrap();
        assert_eq!(
            state(&store, "b@x.test", now()).unwrap().state,
            State::Suspended
        );
    }
}
