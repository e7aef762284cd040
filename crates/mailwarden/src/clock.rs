//! The one time source: every decision that depends on time (limits, containment triggers,
//! greylisting, screening memory, the queue's retry times, records' and quarantine's stamps)
//! reads a [`Clock`]. A server gets its clock at start (`server::start`); tests pass a
//! [`ManualClock`] and move it, and the binary can be given a [`FileClock`] for end-to-end
//! runs that simulate days.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Milliseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;

    /// Seconds since the Unix epoch.
    fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told: for tests that simulate days in milliseconds.
#[derive(Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn at(ms: i64) -> ManualClock {
        ManualClock(Arc::new(AtomicI64::new(ms)))
    }
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The system clock shifted by a number of milliseconds read from a file at each call: how
/// end-to-end tests move the real binary's time (greylisting delays, a simulated week). Only
/// `MAILWARDEN_TEST_CLOCK=FILE` in the environment turns it on, and the server says so at
/// startup.
pub struct FileClock(std::path::PathBuf);

impl Clock for FileClock {
    fn now_ms(&self) -> i64 {
        let offset = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(0);
        SystemClock.now_ms() + offset
    }
}

/// The system's clock, for what runs outside a server (the CLI).
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// The binary's clock: the system's, or a [`FileClock`] when the environment asks for one
/// (the end-to-end tier's week-long run). A server started in-process gets its clock as an
/// argument instead (`server::start`).
pub fn from_env() -> Arc<dyn Clock> {
    match std::env::var_os("MAILWARDEN_TEST_CLOCK") {
        Some(path) => {
            tracing::warn!(event = "test_clock", file = %std::path::Path::new(&path).display(),
                "time is shifted by the offset in this file (MAILWARDEN_TEST_CLOCK)");
            Arc::new(FileClock(path.into()))
        }
        None => Arc::new(SystemClock),
    }
}
