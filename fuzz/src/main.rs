//! `mailwarden-fuzz`: the long-running mode. Build it with `--release`:
//!
//! ```text
//! cargo run --release -p mailwarden-fuzz -- [--target NAME] [--seconds N | --cases N] [--seed S]
//! ```
//!
//! Each target runs for the budget (per target). Crashing inputs are written to
//! `fuzz/crashes/<target>-<hash>`; once fixed, move them to `fuzz/regressions/<target>/` so
//! every test run replays them. Exits non-zero if anything crashed.

use mailwarden_fuzz::{Budget, fuzz, input_name, targets};
use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut only: Option<String> = None;
    let mut budget = Budget::Time(Duration::from_secs(10));
    let mut seed: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--target" => only = Some(value()),
            "--seconds" => {
                budget = Budget::Time(Duration::from_secs(
                    value().parse().unwrap_or_else(|_| usage("--seconds N")),
                ))
            }
            "--cases" => {
                budget = Budget::Cases(value().parse().unwrap_or_else(|_| usage("--cases N")))
            }
            "--seed" => seed = value().parse().unwrap_or_else(|_| usage("--seed S")),
            "--list" => {
                for t in targets::all() {
                    println!("{:12} {}", t.name, t.about);
                }
                return;
            }
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    if let Some(o) = &only
        && !targets::all().iter().any(|t| t.name == o)
    {
        usage(&format!("no target {o} (--list names them)"));
    }
    let crashes_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crashes");
    let mut crashed = false;
    println!("seed {seed}");
    println!(
        "{:12} {:>12} {:>8} {:>10} {:>14} {:>9}",
        "target", "cases", "crashes", "secs", "slowest", "its bytes"
    );
    for t in targets::all() {
        if only.as_deref().is_some_and(|o| o != t.name) {
            continue;
        }
        let r = fuzz(&t, budget, seed);
        println!(
            "{:12} {:>12} {:>8} {:>10.1} {:>12.3}ms {:>9}",
            r.target,
            r.cases,
            r.crashes.len(),
            r.elapsed.as_secs_f64(),
            r.slowest.as_secs_f64() * 1000.0,
            r.slowest_len
        );
        for c in &r.crashes {
            crashed = true;
            let _ = std::fs::create_dir_all(&crashes_dir);
            let path = crashes_dir.join(format!("{}-{}", t.name, input_name(&c.input)));
            let _ = std::fs::write(&path, &c.input);
            let msg: String = c.message.chars().take(400).collect();
            println!("  crash: {msg} ({})", path.display());
        }
    }
    if crashed {
        std::process::exit(1);
    }
}

fn usage(why: &str) -> ! {
    eprintln!(
        "{why}\nusage: mailwarden-fuzz [--target NAME] [--seconds N | --cases N] [--seed S] [--list]"
    );
    std::process::exit(2)
}
