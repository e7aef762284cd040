//! The brief mode CI runs: every target replays its regression inputs (crashes found and
//! fixed), then runs a few thousand fresh cases from a seed that changes per run
//! (`FUZZ_SEED` repeats one). A crash fails the test and prints the input.

use mailwarden_fuzz::{Budget, fuzz, regressions, run_one, targets};

const CASES: u64 = 20_000;

#[test]
fn every_target_survives_its_regressions_and_fresh_cases() {
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let mut failures = Vec::new();
    for t in targets::all() {
        for (path, input) in regressions(t.name) {
            if let Err(m) = run_one(&t, &input) {
                failures.push(format!(
                    "{}: regression {} crashes: {m}",
                    t.name,
                    path.display()
                ));
            }
        }
        let r = fuzz(&t, Budget::Cases(CASES), seed);
        println!("{}: {} cases in {:?}", t.name, r.cases, r.elapsed);
        for c in r.crashes {
            failures.push(format!(
                "{}: {} on input {:?}",
                t.name,
                c.message,
                String::from_utf8_lossy(&c.input)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "seed {seed} (FUZZ_SEED={seed} repeats it):\n{}",
        failures.join("\n")
    );
}

#[test]
fn a_panicking_target_is_reported_as_a_crash() {
    // The harness itself must not hide a crash.
    let t = mailwarden_fuzz::Target {
        name: "selftest",
        about: "",
        seeds: || vec![b"ab".to_vec()],
        dict: &[],
        max_len: 16,
        run: |d| assert!(!d.contains(&b'!'), "found the bang"),
    };
    assert!(run_one(&t, b"a!").unwrap_err().contains("found the bang"));
    let r = fuzz(&t, Budget::Cases(20_000), 7);
    assert_eq!(r.crashes.len(), 1, "{r:?}");
}
