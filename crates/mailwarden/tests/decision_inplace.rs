//! One decision path: the server on the MX port and `mailwarden explain FILE.eml` give the
//! same reasons, score and action for the same message and the same facts (client address,
//! HELO, envelope). Real messages: the SpamAssassin public corpus, read in place from
//! `../shared/testdata` (override with `MAILWARDEN_TESTDATA`), so this runs with the
//! `conformance` feature, as `.ci/run` does when the folder exists:
//!
//! ```sh
//! cargo test -p mailwarden --features conformance --test decision_inplace -- --nocapture
//! ```
//!
//! The server runs for real (its binary, a loopback DNS server with one IP list and one
//! domain list, a classifier trained on other messages of the corpus), and every message is
//! sent by Python's smtplib from one of three loopback addresses with one of four HELO names;
//! `explain` is given the time the server's record says it received it.
//! Findings that depend on a client's behaviour over time (`decision::Kind::behavioural`:
//! pregreet, greylisting, protocol habits) exist only in the server and are left out of the
//! comparison; with the config below none is expected.

#[path = "e2e/support.rs"]
mod support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use support::{Server, clients_dir};

fn corpus() -> PathBuf {
    std::env::var_os("MAILWARDEN_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata")
        })
        .join("spam-corpus-spamassassin-public")
}

/// A corpus file as a client sends it: the mbox `From ` line gone, CRLF line endings, a
/// final CRLF. `None` when the protocol core itself would refuse it (a line over 998
/// bytes), which `explain` cannot know.
fn as_sent(path: &Path) -> Option<Vec<u8>> {
    let raw = std::fs::read(path).ok()?;
    let raw = match raw.strip_prefix(b"From ") {
        Some(_) => raw.splitn(2, |b| *b == b'\n').nth(1)?.to_vec(),
        None => raw,
    };
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 40);
    for line in raw.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > 998 {
            return None;
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    while out.ends_with(b"\r\n\r\n") {
        out.truncate(out.len() - 2);
    }
    Some(out)
}

/// `n` files of a corpus folder, in name order, skipping the first `skip`.
fn files(folder: &str, skip: usize, n: usize) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(corpus().join(folder))
        .unwrap_or_else(|e| panic!("{folder}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    all.sort();
    all.into_iter().skip(skip).take(n).collect()
}

/// What must be the same: each finding's code, detail, score and whether it decided or was
/// counted in the score; the score; the action.
fn summary(rec: &Value) -> (Vec<String>, String, String) {
    let behavioural: Vec<String> = mailwarden::decision::Kind::BEHAVIOURAL
        .iter()
        .map(|k| k.code().into_owned())
        .collect();
    let mut reasons: Vec<String> = rec["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !behavioural.iter().any(|b| r["code"] == b.as_str()))
        .map(|r| {
            format!(
                "{} | {} | {} | deciding={} counted={}",
                r["code"].as_str().unwrap(),
                r["detail"].as_str().unwrap(),
                r["score"],
                r["deciding"],
                r["counted"]
            )
        })
        .collect();
    reasons.sort();
    (
        reasons,
        rec["score"].to_string(),
        rec["action"].as_str().unwrap().to_string(),
    )
}

#[test]
fn the_server_and_explain_decide_the_same_on_real_mail() {
    let zones = "\
3.0.0.127.bl.test. A 127.0.0.2
listed.test.dbl.test. A 127.0.0.2
";
    let s = Server::start_with_zones(
        r#"
[screening.greylist]
mode = "off"
[screening.dnsbl]
threshold = 1.0
[[screening.dnsbl.zones]]
zone = "bl.test"
weight = 0.5
[[screening.dnsbl.domain_zones]]
zone = "dbl.test"
weight = 0.5
[scoring]
mode = "enforce"
# Reputation is history: each message the server decides changes what the next one (and
# explain, run later) finds, so the two could only agree by accident. Its findings come from
# the same `reputation::assess` in both; its own tests cover it.
[reputation]
mode = "off"
"#,
        zones,
    );
    s.add_user("alice@example.test", "pw");

    // A classifier trained on other messages of the corpus than the ones sent.
    let train = s.dir.path().join("train");
    for (kind, folder) in [("spam", "spam-2"), ("ham", "easy-ham-2")] {
        let dir = train.join(kind);
        std::fs::create_dir_all(&dir).unwrap();
        for f in files(folder, 0, 60) {
            std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
        }
    }
    let spam_dir = train.join("spam");
    let ham_dir = train.join("ham");
    let loads = s.log_lines(&["event=\"classifier_loaded\""]).len();
    s.cli_ok(
        &[
            "learn",
            "--spam",
            spam_dir.to_str().unwrap(),
            "--ham",
            ham_dir.to_str().unwrap(),
        ],
        None,
    );
    // The server has the new model (it looks for one every 10 s) before anything is sent.
    for _ in 0..300 {
        if s.log_lines(&["event=\"classifier_loaded\""]).len() > loads {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        s.log_lines(&["event=\"classifier_loaded\""]).len() > loads,
        "the server never loaded the trained model"
    );

    // The messages, and the facts each is sent with.
    let sent_dir = s.dir.path().join("sent");
    std::fs::create_dir_all(&sent_dir).unwrap();
    let ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let helos = [
        "mail.sender.test",
        "localhost",
        "listed.test",
        "[127.0.0.4]",
    ];
    let mut jobs = Vec::new();
    let picked = files("spam-1", 0, 140)
        .into_iter()
        .chain(files("easy-ham-1", 0, 140))
        .chain(files("hard-ham-1", 0, 60));
    for (i, path) in picked.enumerate() {
        let Some(raw) = as_sent(&path) else { continue };
        let file = sent_dir.join(format!("{i:04}.eml"));
        std::fs::write(&file, &raw).unwrap();
        jobs.push(serde_json::json!({
            "file": file,
            "ip": ips[i % ips.len()],
            "helo": helos[(i / 3) % helos.len()],
            // One envelope sender per message, so its record is found by it.
            "mail_from": format!("sender-{i}@corpus{}.test", i % 7),
            "rcpt": "alice@example.test",
        }));
    }
    assert!(jobs.len() >= 300, "only {} messages usable", jobs.len());
    let input = serde_json::to_string(&jobs).unwrap();
    let out = support::run_ok(
        "python3",
        &[
            clients_dir().join("send_many.py").to_str().unwrap(),
            "--port",
            &s.mx().port().to_string(),
        ],
        Some(&input),
    );
    let replies: Vec<Value> = String::from_utf8_lossy(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(replies.len(), jobs.len());
    for r in &replies {
        assert_ne!(r["stage"], "error", "{r}");
    }

    // The server's records, found by their envelope senders.
    let limit = (jobs.len() * 2).to_string();
    let mut records: BTreeMap<String, Value> = BTreeMap::new();
    for _ in 0..100 {
        records = s
            .cli_ok(&["log", "search", "--json", "--limit", &limit], None)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .map(|r| (r["mail_from"].as_str().unwrap().to_string(), r))
            .collect();
        if records.len() >= jobs.len() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    let mut actions: BTreeMap<String, usize> = BTreeMap::new();
    let mut mismatches = Vec::new();
    for job in &jobs {
        let from = job["mail_from"].as_str().unwrap();
        let rec = records
            .get(from)
            .unwrap_or_else(|| panic!("no record for {from}"));
        let offline: Value = serde_json::from_str(&s.cli_ok(
            &[
                "explain",
                job["file"].as_str().unwrap(),
                "--json",
                "--ip",
                job["ip"].as_str().unwrap(),
                "--helo",
                job["helo"].as_str().unwrap(),
                "--mail-from",
                from,
                "--rcpt",
                "alice@example.test",
                // The time it was received: the age of its Date: depends on it.
                "--time",
                &rec["time"].to_string(),
            ],
            None,
        ))
        .unwrap();
        let (server, offline) = (summary(rec), summary(&offline));
        *actions.entry(server.2.clone()).or_default() += 1;
        if server != offline {
            mismatches.push(format!(
                "{}:\n  server:  {server:?}\n  explain: {offline:?}",
                job["file"]
            ));
        }
    }
    eprintln!("{} messages; server actions: {actions:?}", jobs.len());
    assert!(
        mismatches.is_empty(),
        "{} of {} differ:\n{}",
        mismatches.len(),
        jobs.len(),
        mismatches.join("\n")
    );
    // The comparison covered refusals at the door and verdicts on content alike.
    assert!(actions.len() >= 3, "{actions:?}");
}
