//! Counters and latency percentiles for the load generator, and its text and JSON reports.

use crate::Args;
use serde_json::{Value, json};
use std::time::Duration;

/// Latency samples in microseconds. Runs are at most a few hundred thousand messages, so
/// keeping every sample and sorting once is exact and cheap.
#[derive(Default)]
pub struct Hist(Vec<u32>);

impl Hist {
    pub fn record(&mut self, d: Duration) {
        self.0.push(d.as_micros().min(u32::MAX as u128) as u32);
    }

    fn merge(&mut self, other: Hist) {
        self.0.extend(other.0);
    }

    fn percentile(sorted: &[u32], p: f64) -> u32 {
        if sorted.is_empty() {
            return 0;
        }
        let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
        sorted[i.min(sorted.len() - 1)]
    }

    pub fn summary_us(&self) -> Value {
        let mut v = self.0.clone();
        v.sort_unstable();
        json!({
            "count": v.len(),
            "p50": Self::percentile(&v, 50.0),
            "p99": Self::percentile(&v, 99.0),
            "p999": Self::percentile(&v, 99.9),
            "max": v.last().copied().unwrap_or(0),
        })
    }

    pub fn summary_ms(&self) -> Value {
        let mut v = self.0.clone();
        v.sort_unstable();
        let ms = |x: u32| (x as f64 / 1000.0 * 100.0).round() / 100.0;
        json!({
            "count": v.len(),
            "p50": ms(Self::percentile(&v, 50.0)),
            "p99": ms(Self::percentile(&v, 99.0)),
            "max": ms(v.last().copied().unwrap_or(0)),
        })
    }
}

#[derive(Default)]
pub struct Totals {
    pub sent: u64,
    pub accepted: u64,
    pub c4xx: u64,
    pub c5xx: u64,
    pub conn_errors: u64,
    pub connections: u64,
    pub setup: Hist,
    pub txn: Hist,
}

impl Totals {
    pub fn reply(&mut self, code: u16) {
        match code / 100 {
            2 => self.accepted += 1,
            4 => self.c4xx += 1,
            _ => self.c5xx += 1,
        }
    }

    pub fn merge(&mut self, o: Totals) {
        self.sent += o.sent;
        self.accepted += o.accepted;
        self.c4xx += o.c4xx;
        self.c5xx += o.c5xx;
        self.conn_errors += o.conn_errors;
        self.connections += o.connections;
        self.setup.merge(o.setup);
        self.txn.merge(o.txn);
    }
}

pub fn report(args: &Args, t: &Totals, elapsed: f64) -> Value {
    json!({
        "mode": "load",
        "args": args,
        "elapsed_s": (elapsed * 1000.0).round() / 1000.0,
        "sent": t.sent,
        "accepted": t.accepted,
        "msg_per_s": if elapsed > 0.0 { (t.accepted as f64 / elapsed * 10.0).round() / 10.0 } else { 0.0 },
        "replies": { "2xx": t.accepted, "4xx": t.c4xx, "5xx": t.c5xx },
        "conn_errors": t.conn_errors,
        "connections": t.connections,
        "setup_us": t.setup.summary_us(),
        "txn_us": t.txn.summary_us(),
    })
}

pub fn print_text(r: &Value) {
    if r["mode"] == "idle" {
        println!(
            "idle sessions: {} opened, {} failed in {:.1}s; new-session banner: p50 {} ms, p99 {} ms, max {} ms ({} probes, {} failed)",
            r["idle_opened"],
            r["idle_failed"],
            r["open_secs"].as_f64().unwrap_or(0.0),
            r["banner_ms"]["p50"],
            r["banner_ms"]["p99"],
            r["banner_ms"]["max"],
            r["probes"],
            r["probe_failures"]
        );
        return;
    }
    println!(
        "accepted {} of {} in {:.2}s: {} msg/s",
        r["accepted"],
        r["sent"],
        r["elapsed_s"].as_f64().unwrap_or(0.0),
        r["msg_per_s"]
    );
    println!(
        "replies 2xx {} 4xx {} 5xx {}; connection errors {}; connections {}",
        r["replies"]["2xx"],
        r["replies"]["4xx"],
        r["replies"]["5xx"],
        r["conn_errors"],
        r["connections"]
    );
    for (name, key) in [("setup", "setup_us"), ("transaction", "txn_us")] {
        let h = &r[key];
        println!(
            "{name:>11} latency µs: p50 {} p99 {} p999 {} max {}",
            h["p50"], h["p99"], h["p999"], h["max"]
        );
    }
}
