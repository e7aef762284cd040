//! Local accounts: addresses with argon2id password hashes, stored in the embedded store, and
//! SMTP AUTH verification (RFC 4954).
//!
//! The CLI changes accounts in the same database while the server runs; every lookup reads the
//! store, so changes take effect at once without a restart.
//!
//! Security:
//! - Passwords are hashed with argon2id (RFC 9106) with a per-password salt.
//! - Unknown users cost the same argon2 work as known ones, so timing does not reveal which
//!   accounts exist.
//! - A verified password is cached as an HMAC under a key that exists only in this process's
//!   memory, for `auth.cache_ttl`; a changed hash invalidates the entry.
//! - Account names are restricted to a filesystem-safe alphabet because they name Maildir
//!   directories.

use crate::clock::Clock;
use crate::store::{Store, StoreError};

use crate::store::Optional;
use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use mailwarden_proto::address::{self, Domain};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{0:?} is not a valid address for an account: {1}")]
    BadAddress(String, &'static str),
    #[error("account {0} already exists")]
    Exists(String),
    #[error("no account {0}")]
    NotFound(String),
    #[error("the password must not be empty")]
    EmptyPassword,
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Canonical form of an account address: lowercased `local@domain`, ASCII, with a local part
/// of letters, digits, `.`, `_`, `-` and `+`.
pub fn canonical(addr: &str) -> Result<String, AccountError> {
    let bad = |why| AccountError::BadAddress(addr.to_string(), why);
    let m = address::parse_mailbox(addr.trim(), false).map_err(|_| bad("not local@domain"))?;
    let Domain::Name(domain) = &m.domain else {
        return Err(bad("address literals cannot hold accounts"));
    };
    let local = m.local.to_lowercase();
    if !local
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
    {
        return Err(bad(
            "local part may only hold letters, digits, '.', '_', '-' and '+'",
        ));
    }
    Ok(format!("{local}@{domain}"))
}

/// An alias as stored: a canonical mailbox, or `@domain`.
fn alias_form(address: &str) -> Result<String, AccountError> {
    let a = address.trim();
    if let Some(domain) = a.strip_prefix('@').or_else(|| a.strip_prefix("*@")) {
        let d = address::domain(domain, false)
            .map_err(|_| AccountError::BadAddress(address.to_string(), "not a domain name"))?;
        return Ok(format!("@{}", d.to_lowercase()));
    }
    let m = address::parse_mailbox(a, false).map_err(|_| {
        AccountError::BadAddress(address.to_string(), "not local@domain or @domain")
    })?;
    Ok(format!("{}@{}", m.local.to_lowercase(), m.domain).to_lowercase())
}

/// Why a new password is refused: too short, or too easy to guess (zxcvbn, with the
/// address's parts and the server's name as words an attacker would try first). The text
/// says why and what would help.
pub fn weak_password(auth: &crate::config::Auth, address: &str, password: &str) -> Option<String> {
    let len = password.chars().count();
    if len < auth.min_password_length {
        return Some(format!(
            "the password has {len} characters; at least {} are required",
            auth.min_password_length
        ));
    }
    // The estimator's cost grows with length; past this much any password is long enough.
    let probe: String = password.chars().take(100).collect();
    let words: Vec<&str> = address
        .split(['@', '.', '-', '_', '+'])
        .filter(|w| !w.is_empty())
        .collect();
    let e = zxcvbn::zxcvbn(&probe, &words);
    let score = e.score() as u32;
    if score >= auth.min_password_strength {
        return None;
    }
    let mut why = format!(
        "the password is too easy to guess (strength {score} of 4, at least {} required)",
        auth.min_password_strength
    );
    if let Some(f) = e.feedback() {
        let advice: Vec<String> = f
            .warning()
            .map(|w| w.to_string())
            .into_iter()
            .chain(f.suggestions().iter().map(|s| s.to_string()))
            .collect();
        if !advice.is_empty() {
            why = format!("{why}: {}", advice.join(" "));
        }
    }
    Some(why)
}

/// A new random password: 20 characters from 62, about 119 bits.
pub fn generate_password() -> zeroize::Zeroizing<String> {
    use ring::rand::SecureRandom;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let rng = ring::rand::SystemRandom::new();
    let mut out = zeroize::Zeroizing::new(String::with_capacity(20));
    while out.len() < 20 {
        let mut b = [0u8; 1];
        rng.fill(&mut b).expect("system RNG");
        // Rejection sampling keeps every character equally likely.
        if (b[0] as usize) < 256 - 256 % ALPHABET.len() {
            out.push(ALPHABET[b[0] as usize % ALPHABET.len()] as char);
        }
    }
    out
}

pub fn hash_password(password: &[u8]) -> Result<String, AccountError> {
    if password.is_empty() {
        return Err(AccountError::EmptyPassword);
    }
    Argon2::default()
        .hash_password(password)
        .map(|h| h.to_string())
        .map_err(|e| AccountError::Hash(e.to_string()))
}

fn split(addr: &str) -> (&str, &str) {
    addr.rsplit_once('@').unwrap_or((addr, ""))
}

/// Account administration, shared by the CLI and the server.
#[derive(Clone)]
pub struct Accounts {
    store: Store,
}

impl Accounts {
    pub fn new(store: Store) -> Accounts {
        Accounts { store }
    }

    pub fn add(&self, addr: &str, password: &[u8]) -> Result<String, AccountError> {
        let addr = canonical(addr)?;
        let hash = hash_password(password)?;
        let (_, domain) = split(&addr);
        let domain = domain.to_string();
        let a = addr.clone();
        let inserted = self.store.write_blocking(move |c| {
            let now = crate::clock::SystemClock.now_secs();
            c.execute(
                "INSERT INTO accounts(address, domain, password_hash, created, updated) \
                 VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT DO NOTHING",
                crate::params![a, domain, hash, now],
            )
        })?;
        if inserted == 0 {
            return Err(AccountError::Exists(addr));
        }
        Ok(addr)
    }

    pub fn set_password(&self, addr: &str, password: &[u8]) -> Result<String, AccountError> {
        let addr = canonical(addr)?;
        let hash = hash_password(password)?;
        let a = addr.clone();
        let n = self.store.write_blocking(move |c| {
            c.execute(
                "UPDATE accounts SET password_hash = ?2, updated = ?3 WHERE address = ?1",
                crate::params![a, hash, crate::clock::SystemClock.now_secs()],
            )
        })?;
        if n == 0 {
            return Err(AccountError::NotFound(addr));
        }
        Ok(addr)
    }

    pub fn remove(&self, addr: &str) -> Result<String, AccountError> {
        let addr = canonical(addr)?;
        let a = addr.clone();
        // The console grant goes with the account: a later account of the same name is new.
        let n = self.store.write_blocking(move |c| {
            c.execute("DELETE FROM admins WHERE address = ?1", [&a])?;
            c.execute("DELETE FROM accounts WHERE address = ?1", [&a])
        })?;
        if n == 0 {
            return Err(AccountError::NotFound(addr));
        }
        Ok(addr)
    }

    pub fn list(&self) -> Result<Vec<String>, AccountError> {
        Ok(self.store.read(|c| {
            c.query_map(
                "SELECT address FROM accounts ORDER BY domain, address",
                (),
                |r| r.get(0),
            )
        })?)
    }

    /// The store the accounts live in (containment state sits beside them).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Let `account` send as `address`: a mailbox, or `@domain` for a whole domain.
    pub fn alias_add(&self, account: &str, address: &str) -> Result<String, AccountError> {
        let account = canonical(account)?;
        if !self.exists(&account)? {
            return Err(AccountError::NotFound(account));
        }
        let alias = alias_form(address)?;
        let (acc, al) = (account.clone(), alias.clone());
        self.store.write_blocking(move |c| {
            c.execute(
                "INSERT INTO sender_aliases(account, address, created) VALUES (?1, ?2, ?3) \
                 ON CONFLICT DO NOTHING",
                crate::params![acc, al, crate::clock::SystemClock.now_secs()],
            )
        })?;
        Ok(alias)
    }

    pub fn alias_remove(&self, account: &str, address: &str) -> Result<String, AccountError> {
        let account = canonical(account)?;
        let alias = alias_form(address)?;
        let (acc, al) = (account.clone(), alias.clone());
        let n = self.store.write_blocking(move |c| {
            c.execute(
                "DELETE FROM sender_aliases WHERE account = ?1 AND address = ?2",
                [acc, al],
            )
        })?;
        if n == 0 {
            return Err(AccountError::NotFound(format!("{alias} for {account}")));
        }
        Ok(alias)
    }

    pub fn aliases(&self, account: &str) -> Result<Vec<String>, AccountError> {
        let account = canonical(account)?;
        Ok(self.store.read(|c| {
            c.query_map(
                "SELECT address FROM sender_aliases WHERE account = ?1 ORDER BY address",
                [&account],
                |r| r.get(0),
            )
        })?)
    }

    /// May `account` (canonical) use `address` as a sender: it is the account itself, one of
    /// its aliases, or in a domain granted to it. Case-insensitive, as mail systems treat
    /// local parts in practice.
    pub fn may_send_as(&self, account: &str, address: &str) -> Result<bool, StoreError> {
        let address = address.trim().to_lowercase();
        let account = account.to_lowercase();
        if address == account {
            return Ok(true);
        }
        let Some((_, domain)) = address.rsplit_once('@') else {
            return Ok(false);
        };
        let domain_grant = format!("@{domain}");
        self.store.read(|c| {
            c.exists(
                "SELECT 1 FROM sender_aliases WHERE account = ?1 AND address IN (?2, ?3)",
                crate::params![account, address, domain_grant],
            )
        })
    }

    /// A fingerprint of the account's stored password hash (salted, so it changes with every
    /// new password): a console session begun before a change ends. `None` for no such
    /// account.
    pub fn password_stamp(&self, addr: &str) -> Result<Option<String>, StoreError> {
        Ok(self.password_hash(addr)?.map(|h| {
            let d = ring::digest::digest(&ring::digest::SHA256, h.as_bytes());
            d.as_ref()[..16]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        }))
    }

    /// Let an account log in to the web console (`user add --admin`).
    pub fn set_admin(&self, addr: &str) -> Result<(), AccountError> {
        let addr = canonical(addr)?;
        if !self.exists(&addr)? {
            return Err(AccountError::NotFound(addr));
        }
        self.store.write_blocking(move |c| {
            c.execute(
                "INSERT INTO admins(address, added) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                crate::params![addr, crate::clock::SystemClock.now_secs()],
            )
        })?;
        Ok(())
    }

    /// May this (canonical) account log in to the console: stored as an admin, or listed in
    /// `admin.accounts`.
    pub fn is_admin(&self, cfg: &crate::config::Config, addr: &str) -> Result<bool, StoreError> {
        if cfg
            .admin
            .accounts
            .iter()
            .any(|a| a.eq_ignore_ascii_case(addr))
        {
            return Ok(true);
        }
        self.store
            .read(|c| c.exists("SELECT 1 FROM admins WHERE address = ?1", [addr]))
    }

    /// Does this (canonical) address have an account?
    pub fn exists(&self, addr: &str) -> Result<bool, StoreError> {
        self.store
            .read(|c| c.exists("SELECT 1 FROM accounts WHERE address = ?1", [addr]))
    }

    /// Does any account live in this domain?
    pub fn has_domain(&self, domain: &str) -> Result<bool, StoreError> {
        self.store
            .read(|c| c.exists("SELECT 1 FROM accounts WHERE domain = ?1 LIMIT 1", [domain]))
    }

    fn password_hash(&self, addr: &str) -> Result<Option<String>, StoreError> {
        self.store.read(|c| {
            c.query_row(
                "SELECT password_hash FROM accounts WHERE address = ?1",
                [addr],
                |r| r.get(0),
            )
            .optional()
        })
    }
}

/// Why an AUTH attempt could not be judged (answer `454 4.7.0`; never a pass).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the password verifiers are busy")]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Outcome of an AUTH attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Login {
    /// The canonical account address.
    Ok(String),
    Bad,
}

struct CacheEntry {
    hash: String,
    mac: ring::hmac::Tag,
    at: Instant,
}

/// SMTP AUTH verification for the server.
pub struct Authenticator {
    accounts: Accounts,
    key: ring::hmac::Key,
    cache: Mutex<HashMap<String, CacheEntry>>,
    ttl: Duration,
    verifier: Verifier,
    dummy_hash: String,
}

type VerifyJob = (
    String,
    zeroize::Zeroizing<Vec<u8>>,
    tokio::sync::oneshot::Sender<bool>,
);

/// A few dedicated threads run argon2. Each verification needs 19 MiB of working memory; on
/// a fixed set of threads the allocator reuses it, so memory stays at threads × 19 MiB instead
/// of growing with every blocking-pool thread that ever ran one. It also bounds the CPU that
/// password guessing can take, and its queue is bounded: past `auth.max_pending_verifications`
/// an attempt is turned away at once instead of waiting behind a flood.
struct Verifier {
    tx: std::sync::mpsc::SyncSender<VerifyJob>,
}

impl Verifier {
    fn start(threads: usize, pending: usize) -> Verifier {
        let (tx, rx) = std::sync::mpsc::sync_channel::<VerifyJob>(pending.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let _ = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    loop {
                        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok((hash, pw, reply)) = job else { return };
                        let ok = PasswordHash::new(&hash)
                            .map(|h| Argon2::default().verify_password(&pw, &h).is_ok())
                            .unwrap_or(false);
                        let _ = reply.send(ok);
                    }
                });
        }
        Verifier { tx }
    }

    async fn verify(&self, hash: String, password: &[u8]) -> Result<bool, AuthError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = (hash, zeroize::Zeroizing::new(password.to_vec()), tx);
        self.tx.try_send(job).map_err(|e| match e {
            std::sync::mpsc::TrySendError::Full(_) => AuthError::Busy,
            std::sync::mpsc::TrySendError::Disconnected(_) => StoreError::Closed.into(),
        })?;
        rx.await.map_err(|_| StoreError::Closed.into())
    }
}

impl Authenticator {
    pub fn new(accounts: Accounts, ttl: Duration, pending: usize) -> Arc<Authenticator> {
        let rng = ring::rand::SystemRandom::new();
        let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng).expect("system RNG");
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Arc::new(Authenticator {
            accounts,
            key,
            cache: Mutex::new(HashMap::new()),
            ttl,
            verifier: Verifier::start(cpus.min(4), pending),
            dummy_hash: hash_password(b"mailwarden timing equaliser").expect("hash"),
        })
    }

    /// Check a login. Errors (answer `454 4.7.0`) are a busy verifier or a store failure,
    /// never bad passwords.
    pub async fn verify(&self, username: &str, password: &[u8]) -> Result<Login, AuthError> {
        let addr = canonical(username).ok();
        let stored = match &addr {
            Some(a) => self.accounts.password_hash(a)?,
            None => None,
        };
        if let (Some(a), Some(h)) = (&addr, &stored)
            && !self.ttl.is_zero()
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = cache.get(a)
                && e.hash == *h
                && e.at.elapsed() < self.ttl
                && ring::hmac::verify(&self.key, &self.mac_input(a, password), e.mac.as_ref())
                    .is_ok()
            {
                return Ok(Login::Ok(a.clone()));
            }
        }
        let hash = stored.clone().unwrap_or_else(|| self.dummy_hash.clone());
        let ok = self.verifier.verify(hash, password).await?;
        match (ok, addr, stored) {
            (true, Some(a), Some(h)) => {
                if !self.ttl.is_zero() {
                    let mac = ring::hmac::sign(&self.key, &self.mac_input(&a, password));
                    let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                    cache.retain(|_, e| e.at.elapsed() < self.ttl);
                    cache.insert(
                        a.clone(),
                        CacheEntry {
                            hash: h,
                            mac,
                            at: Instant::now(),
                        },
                    );
                }
                Ok(Login::Ok(a))
            }
            _ => Ok(Login::Bad),
        }
    }

    fn mac_input(&self, addr: &str, password: &[u8]) -> zeroize::Zeroizing<Vec<u8>> {
        let mut v = zeroize::Zeroizing::new(Vec::with_capacity(addr.len() + 1 + password.len()));
        v.extend_from_slice(addr.as_bytes());
        v.push(0);
        v.extend_from_slice(password);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_addresses() {
        assert_eq!(
            canonical("Alice@Example.TEST").unwrap(),
            "alice@example.test"
        );
        for bad in [
            "alice",
            "a/b@example.test",
            "\"a b\"@example.test",
            "a@[127.0.0.1]",
            "a@b@c.test",
        ] {
            assert!(canonical(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn weak_passwords_are_refused_with_a_reason() {
        let auth = crate::config::Auth::default();
        let a = "alice@example.test";
        let short = weak_password(&auth, a, "x").unwrap();
        assert!(short.contains("1 characters; at least 10"), "{short}");
        let common = weak_password(&auth, a, "qwertyuiop").unwrap();
        assert!(common.contains("top-100 common password"), "{common}");
        let own = weak_password(&auth, a, "Example2026").unwrap();
        assert!(own.contains("too easy to guess"), "{own}");
        assert_eq!(
            weak_password(&auth, a, "correct horse battery staple"),
            None
        );
        let generated = generate_password();
        assert_eq!(generated.len(), 20);
        assert_eq!(weak_password(&auth, a, &generated), None);
        assert_ne!(*generated, *generate_password());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_verifier_queue_turns_attempts_away_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let acc = Accounts::new(Store::open(dir.path()).unwrap());
        let a = acc.clone();
        tokio::task::spawn_blocking(move || a.add("alice@example.test", b"secret").unwrap())
            .await
            .unwrap();
        let auth = Authenticator::new(acc, Duration::ZERO, 1);
        let tries: Vec<_> = (0..12)
            .map(|_| {
                let auth = auth.clone();
                tokio::spawn(async move { auth.verify("alice@example.test", b"wrong").await })
            })
            .collect();
        let mut busy = 0;
        for t in tries {
            match t.await.unwrap() {
                Err(AuthError::Busy) => busy += 1,
                Ok(Login::Bad) => {}
                other => panic!("{other:?}"),
            }
        }
        // At most a few verifier threads and one queued: the rest never waited.
        assert!(busy >= 12 - 5, "{busy} of 12 turned away");
    }

    #[tokio::test]
    async fn add_verify_change_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let acc = Accounts::new(store.clone());
        let a = acc.clone();
        tokio::task::spawn_blocking(move || {
            a.add("Alice@Example.test", b"secret").unwrap();
            assert!(matches!(
                a.add("alice@example.test", b"x"),
                Err(AccountError::Exists(_))
            ));
        })
        .await
        .unwrap();
        assert!(acc.exists("alice@example.test").unwrap());
        assert!(acc.has_domain("example.test").unwrap());
        let auth = Authenticator::new(acc.clone(), Duration::from_secs(60), 64);
        assert_eq!(
            auth.verify("ALICE@example.test", b"secret").await.unwrap(),
            Login::Ok("alice@example.test".into())
        );
        assert_eq!(
            auth.verify("alice@example.test", b"wrong").await.unwrap(),
            Login::Bad
        );
        assert_eq!(
            auth.verify("nobody@example.test", b"secret").await.unwrap(),
            Login::Bad
        );
        // Cached success must not survive a password change.
        let a = acc.clone();
        tokio::task::spawn_blocking(move || a.set_password("alice@example.test", b"new").unwrap())
            .await
            .unwrap();
        assert_eq!(
            auth.verify("alice@example.test", b"secret").await.unwrap(),
            Login::Bad
        );
        assert_eq!(
            auth.verify("alice@example.test", b"new").await.unwrap(),
            Login::Ok("alice@example.test".into())
        );
        let a = acc.clone();
        tokio::task::spawn_blocking(move || a.remove("alice@example.test").unwrap())
            .await
            .unwrap();
        assert_eq!(
            auth.verify("alice@example.test", b"new").await.unwrap(),
            Login::Bad
        );
    }
}
