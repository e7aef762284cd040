//! Small shared helpers: identifiers, clocks and RFC 5322 dates.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

static LAST_ID: AtomicU64 = AtomicU64::new(0);

/// A unique, time-ordered identifier: 13 characters of Crockford base32, e.g. `0PQX7V2M4KD3B`. Unique within a process; across restarts
/// it is unique because the clock has moved on.
pub fn new_id() -> String {
    // Strictly increasing microsecond stamp: take the clock, or last + 1 under contention.
    let mut last = LAST_ID.load(Ordering::Relaxed);
    let stamp = loop {
        let next = unix_micros().max(last + 1);
        match LAST_ID.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => break next,
            Err(cur) => last = cur,
        }
    };
    let mut out = [0u8; 13];
    let mut v = stamp;
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(v & 31) as usize];
        v >>= 5;
    }
    String::from_utf8(out.to_vec()).expect("ascii")
}

/// `Mon, 23 Nov 2026 09:22:00 +0000` (RFC 5322 §3.3), in UTC.
pub fn rfc5322_date(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {} {} {} {:02}:{:02}:{:02} +0000",
        WD[days.rem_euclid(7) as usize],
        d,
        MON[(m - 1) as usize],
        y,
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The UTC (year, month, day) of a Unix time.
pub fn civil_date(unix: i64) -> (i64, u32, u32) {
    civil_from_days(unix.div_euclid(86_400))
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_425_720),
            "Mon, 23 Nov 2026 09:22:00 +0000"
        );
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(civil_date(1_795_425_720), (2026, 11, 23));
    }

    #[test]
    fn ids_are_unique_and_ordered() {
        let mut prev = new_id();
        for _ in 0..10_000 {
            let id = new_id();
            assert!(id > prev, "{id} <= {prev}");
            assert_eq!(id.len(), 13);
            prev = id;
        }
    }
}
