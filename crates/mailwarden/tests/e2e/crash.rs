//! Durability: kill -9 in the middle of a load; after a restart every message that got a 250 is
//! delivered exactly once, and no message is delivered twice.

use crate::support::*;
use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

fn acks(path: &std::path::Path) -> Vec<usize> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn kill9_mid_load_loses_nothing_and_duplicates_nothing() {
    crash_test("");
}

#[test]
fn kill9_mid_load_with_filesystem_sync_and_no_memory_budget() {
    // One syncfs per delivery batch, and every body read back from the store at delivery.
    crash_test("[queue]\nmaildir_sync = \"filesystem\"\nmemory_budget = 0");
}

fn crash_test(extra: &str) {
    let mut s = Server::start(&format!("[smtp]\nmax_connections_per_ip = 200\n{extra}"));
    s.add_user("bob@example.test", "pw");
    let ack_file = s.dir.path().join("acks.txt");
    let mut load = Command::new("python3")
        .arg(clients_dir().join("load.py"))
        .args([
            "--port",
            &s.mx().port().to_string(),
            "--count",
            "600",
            "--threads",
            "16",
        ])
        .args(["--to", "bob@example.test", "--acks"])
        .arg(&ack_file)
        .spawn()
        .unwrap();
    let mid = wait_for(Duration::from_secs(60), || {
        (acks(&ack_file).len() >= 80).then_some(())
    });
    assert!(mid.is_some(), "load never got going; log:\n{}", s.log());
    s.kill9();
    load.wait().unwrap();
    let promised = acks(&ack_file);
    assert!(
        promised.len() < 600,
        "the kill came too late to test anything"
    );

    s.restart();
    let drained = wait_for(Duration::from_secs(60), || {
        (s.query_count("SELECT count(*) FROM queue") == 0).then_some(())
    });
    assert!(
        drained.is_some(),
        "queue did not drain after restart; log:\n{}",
        s.log()
    );

    let mut seen: HashMap<usize, usize> = HashMap::new();
    for m in s.messages("bob@example.test") {
        let n = m
            .lines()
            .find_map(|l| l.strip_prefix("Subject: load-"))
            .and_then(|v| v.trim().parse().ok())
            .expect("numbered message");
        *seen.entry(n).or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(dups.is_empty(), "delivered more than once: {dups:?}");
    let lost: Vec<_> = promised.iter().filter(|i| !seen.contains_key(i)).collect();
    assert!(lost.is_empty(), "acknowledged with 250 but lost: {lost:?}");
    eprintln!(
        "crash test ({extra:?}): {} acknowledged before kill -9, {} delivered after restart (extra ones were committed but their 250 was lost with the connection)",
        promised.len(),
        seen.len()
    );
}
