//! Fuzzing mailwarden's parsers on stable Rust (1.95: no nightly, so no libFuzzer or
//! cargo-fuzz). A small mutation fuzzer: each target has seed inputs and a dictionary of the
//! tokens its grammar cares about; every case is a seed or an earlier interesting case, mutated
//! (bit flips, inserted multi-byte UTF-8, repeated ranges, spliced dictionary tokens), run under
//! `catch_unwind`, and timed.
//!
//! Two modes share this engine: `cargo test -p mailwarden-fuzz` runs every target briefly and
//! replays `fuzz/regressions/<target>/*` (what CI does), and `cargo run --release -p
//! mailwarden-fuzz -- --seconds N` is the long run (`docs/testing.md`). A panic is a crash; a
//! target may also assert properties (a parser fed the same bytes in other chunks must agree
//! with itself), whose failures are crashes too. The slowest case per byte is reported, so a
//! super-linear parser shows up as an outlier.

pub mod targets;

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

/// xorshift64*: fast, and reproducible from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng((seed ^ 0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// One thing to fuzz.
pub struct Target {
    pub name: &'static str,
    pub about: &'static str,
    /// Inputs to start from.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Tokens of the target's grammar, spliced in by mutations.
    pub dict: &'static [&'static str],
    /// Inputs are cut to this many bytes.
    pub max_len: usize,
    /// Runs one input; panics (including failed property assertions) are crashes.
    pub run: fn(&[u8]),
}

/// Bytes that break careless parsers whatever the grammar: multi-byte and invalid UTF-8, line
/// ends, NUL, quotes, brackets.
const SPICE: &[&[u8]] = &[
    "€".as_bytes(),
    "é".as_bytes(),
    "\u{1F600}".as_bytes(),
    b"\xff",
    b"\xc3",
    b"\xe2\x82",
    b"\r\n",
    b"\n",
    b"\r",
    b"\0",
    b" ",
    b"\t",
    b"<",
    b">",
    b"@",
    b":",
    b"\"",
    b"\\",
    b"(",
    b")",
    b";",
    b"=",
    b".",
    b"%",
    b"{",
    b"}",
    b"[",
    b"]",
    b"0",
    b"4294967296",
    b"18446744073709551616",
    b"-1",
];

/// Change `data` in one to six ways.
pub fn mutate(data: &mut Vec<u8>, rng: &mut Rng, dict: &[&str], corpus: &[Vec<u8>], max: usize) {
    for _ in 0..1 + rng.below(6) {
        let len = data.len();
        match rng.below(11) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.next_u64() as u8;
            }
            2 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(4);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                data.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                data.drain(a..b);
            }
            4 if len > 0 => {
                // Repeat a range many times: how quadratic work and deep nesting are found.
                let a = rng.below(len);
                let b = (a + 1 + rng.below(32)).min(len);
                let piece = data[a..b].to_vec();
                let most = if rng.below(4) == 0 { 256 } else { 8 };
                let times = 1 + rng.below(most);
                let at = rng.below(len + 1);
                let rep: Vec<u8> = piece
                    .iter()
                    .copied()
                    .cycle()
                    .take(piece.len() * times)
                    .collect();
                data.splice(at..at, rep);
            }
            5 | 6 => {
                let tok: &[u8] = if !dict.is_empty() && rng.below(3) > 0 {
                    dict[rng.below(dict.len())].as_bytes()
                } else {
                    SPICE[rng.below(SPICE.len())]
                };
                let at = rng.below(len + 1);
                if rng.below(2) == 0 || len == 0 {
                    data.splice(at..at, tok.iter().copied());
                } else {
                    let end = (at + tok.len()).min(len);
                    data.splice(at..end, tok.iter().copied());
                }
            }
            7 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = (a + 1 + rng.below(64)).min(other.len());
                    let at = rng.below(len + 1);
                    data.splice(at..at, other[a..b].iter().copied());
                }
            }
            8 if len > 0 => data.truncate(rng.below(len)),
            9 if len > 1 => {
                let a = rng.below(len);
                let b = rng.below(len);
                data.swap(a, b);
            }
            _ => {
                let tok = SPICE[rng.below(SPICE.len())];
                let at = rng.below(len + 1);
                data.splice(at..at, tok.iter().copied());
            }
        }
    }
    data.truncate(max);
}

/// A failing input and what it did.
#[derive(Debug, Clone)]
pub struct Crash {
    pub input: Vec<u8>,
    pub message: String,
}

#[derive(Debug)]
pub struct Report {
    pub target: &'static str,
    pub cases: u64,
    pub crashes: Vec<Crash>,
    /// The case that took longest per byte: its time and its length.
    pub slowest: Duration,
    pub slowest_len: usize,
    pub elapsed: Duration,
}

#[derive(Clone, Copy, Debug)]
pub enum Budget {
    Cases(u64),
    Time(Duration),
}

thread_local! {
    /// Set while this thread runs a case: its panics are reported, not printed.
    static FUZZING: RefCell<bool> = const { RefCell::new(false) };
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Panics inside a case are caught and named in the report; anywhere else the default hook
/// still prints them (so a failing test shows its message).
fn quiet_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if FUZZING.with(|f| *f.borrow()) {
                let msg = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                let at = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                LAST_PANIC.with(|p| *p.borrow_mut() = format!("{msg} at {at}"));
            } else {
                default(info);
            }
        }));
    });
}

/// Run one input: its time, or the panic it caused.
pub fn run_one(t: &Target, input: &[u8]) -> Result<Duration, String> {
    quiet_panics();
    FUZZING.with(|f| *f.borrow_mut() = true);
    let start = Instant::now();
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| (t.run)(input)));
    let took = start.elapsed();
    FUZZING.with(|f| *f.borrow_mut() = false);
    match r {
        Ok(()) => Ok(took),
        Err(_) => Err(LAST_PANIC.with(|p| std::mem::take(&mut *p.borrow_mut()))),
    }
}

/// Fuzz `t` within `budget`, starting from `seed`.
pub fn fuzz(t: &Target, budget: Budget, seed: u64) -> Report {
    let mut rng = Rng::new(seed);
    let mut corpus: Vec<Vec<u8>> = (t.seeds)();
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let start = Instant::now();
    let mut report = Report {
        target: t.name,
        cases: 0,
        crashes: Vec::new(),
        slowest: Duration::ZERO,
        slowest_len: 0,
        elapsed: Duration::ZERO,
    };
    let mut worst_per_byte = 0f64;
    let mut pending_seeds: Vec<Vec<u8>> = corpus.clone();
    loop {
        let done = match budget {
            Budget::Cases(n) => report.cases >= n,
            Budget::Time(d) => start.elapsed() >= d,
        };
        if done {
            break;
        }
        let input = match pending_seeds.pop() {
            Some(s) => s,
            None => {
                let mut d = corpus[rng.below(corpus.len())].clone();
                mutate(&mut d, &mut rng, t.dict, &corpus, t.max_len);
                d
            }
        };
        report.cases += 1;
        match run_one(t, &input) {
            Ok(took) => {
                let mut per_byte = took.as_secs_f64() / (input.len().max(64) as f64);
                if per_byte > worst_per_byte {
                    // A scheduler hiccup is not a slow parser: time it twice more, keep the best.
                    let again = (0..2).filter_map(|_| run_one(t, &input).ok()).min();
                    let took = again.map_or(took, |a| a.min(took));
                    per_byte = took.as_secs_f64() / (input.len().max(64) as f64);
                }
                if per_byte > worst_per_byte {
                    let took = Duration::from_secs_f64(per_byte * input.len().max(64) as f64);
                    worst_per_byte = per_byte;
                    report.slowest = took;
                    report.slowest_len = input.len();
                }
                // No coverage feedback on stable: keep a sample of what mutation made, so
                // later cases build on earlier ones and reach deeper states.
                if corpus.len() < 4096 && rng.below(16) == 0 {
                    corpus.push(input);
                }
            }
            Err(message) => {
                // One crash per place: the same assertion with other data is the same bug.
                let place = |m: &str| m.rsplit_once(" at ").map(|(_, p)| p.to_string());
                if !report
                    .crashes
                    .iter()
                    .any(|c| place(&c.message) == place(&message))
                {
                    report.crashes.push(Crash { input, message });
                }
            }
        }
    }
    report.elapsed = start.elapsed();
    report
}

/// Where a target's regression inputs live: crashes found once, fixed, and replayed forever.
pub fn regressions_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("regressions")
        .join(target)
}

/// The regression inputs of a target.
pub fn regressions(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(regressions_dir(target)) {
        for e in rd.flatten() {
            if let Ok(b) = std::fs::read(e.path()) {
                out.push((e.path(), b));
            }
        }
    }
    out.sort();
    out
}

/// A stable short name for an input (FNV-1a), for saved crash files.
pub fn input_name(input: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in input {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}
