//! The command line: accounts (seen live by a running server) and config inspection, and a
//! server started with no config at all.

use crate::support::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn account_changes_apply_to_a_running_server() {
    let s = Server::start("");
    let rcpt = |addr: &str| {
        let cmd = format!("RCPT TO:<{addr}>");
        let r = raw(
            s.mx(),
            false,
            None,
            &[
                Step::Read,
                Step::Cmd("EHLO c.example.net"),
                Step::Cmd("MAIL FROM:<x@remote.test>"),
                Step::Cmd(&cmd),
            ],
        );
        r.reply(3)[..9].to_string()
    };
    assert_eq!(rcpt("bob@example.test"), "550 5.1.1");
    s.add_user("Bob@Example.test", "first");
    assert_eq!(rcpt("bob@example.test"), "250 2.1.5");
    // A new account's domain becomes local.
    s.add_user("carol@new.test", "pw");
    assert_eq!(rcpt("carol@new.test"), "250 2.1.5");
    assert_eq!(rcpt("dave@new.test"), "550 5.1.1");

    let list = s.cli(&["user", "list"], None);
    assert_eq!(stdout(&list), "bob@example.test\ncarol@new.test\n");
    let dup = s.cli(
        &["user", "add", "bob@example.test", "--password-stdin"],
        Some("x\n"),
    );
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    let empty = s.cli(
        &["user", "add", "eve@example.test", "--password-stdin"],
        Some("\n"),
    );
    assert!(!empty.status.success(), "empty password accepted");

    let login = |pw: &str| {
        let r = smtplib(
            s.submissions(),
            "ssl",
            &[
                "--user",
                "bob@example.test",
                "--password",
                pw,
                "--from",
                "bob@example.test",
                "--to",
                "bob@example.test",
            ],
        );
        r["ok"] == true
    };
    assert!(login("first"));
    let out = s.cli(
        &["user", "passwd", "bob@example.test", "--password-stdin"],
        Some("second\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!login("first"), "old password still works");
    assert!(login("second"));

    let out = s.cli(&["user", "remove", "bob@example.test"], None);
    assert!(out.status.success());
    assert_eq!(rcpt("bob@example.test"), "550 5.1.1");
    assert!(!login("second"));
}

#[test]
fn config_show_defaults_and_changed() {
    let s = Server::start("[smtp]\nmax_recipients = 7");
    let d = stdout(&s.cli(&["config", "show", "--defaults"], None));
    assert!(d.contains("max_recipients = 100"), "{d}");
    assert!(d.contains("mx = \"127.0.0.1:2525\""), "{d}");
    assert!(d.contains("domains = [\"localhost\"]"), "{d}");
    let c = stdout(&s.cli(&["config", "show", "--changed"], None));
    assert!(c.contains("max_recipients = 7"), "{c}");
    assert!(c.contains("domains = [\"example.test\"]"), "{c}");
    assert!(!c.contains("max_errors"), "{c}");
    let e = stdout(&s.cli(&["config", "show"], None));
    assert!(
        e.contains("max_recipients = 7") && e.contains("max_errors = 10"),
        "{e}"
    );
    let bad = Command::new(BIN)
        .args(["config", "show", "-c", "/nonexistent/mailwarden.toml"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[test]
fn serve_with_no_config_file_uses_embedded_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .arg("serve")
        .current_dir(dir.path())
        .env_remove("MAILWARDEN_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut text = String::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(30)) {
        text.push_str(&l);
        text.push('\n');
        if l.starts_with("Add an account") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("config: built-in defaults"), "{text}");
    assert!(text.contains("listening mx 127.0.0.1:2525"), "{text}");
    assert!(
        text.contains("listening submission 127.0.0.1:2587"),
        "{text}"
    );
    assert!(
        text.contains("listening submissions 127.0.0.1:2465"),
        "{text}"
    );
    assert!(text.contains("user add alice@localhost"), "{text}");
    let data = dir.path().join("mailwarden-data");
    assert!(data.join("mailwarden.db").exists());
    assert!(data.join("tls/cert.pem").exists() && data.join("tls/key.pem").exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("tls/key.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "private key readable by others");
}

/// The ids on a `Uid:` or `Gid:` line of /proc/PID/status (real, effective, saved, fs).
fn ids(pid: u32, which: &str) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(which))
        .unwrap()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect()
}

#[test]
fn serve_started_as_root_binds_then_runs_as_run_as_user() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("serve_started_as_root_binds_then_runs_as_run_as_user: skipped, not root");
        return;
    }
    // Root made the store (`user add` as root); a restart as root must still hand it over.
    let mut s = Server::start("");
    s.add_user("alice@example.test", "pw");
    s.stop();
    // nobody must reach its data_dir through the test's private temporary directory.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    s.edit_config(|c| {
        c.insert("run_as_user".into(), toml::Value::String("nobody".into()));
    });
    s.start_again();
    s.wait_log(&["event=\"privileges_dropped\"", "user=nobody"]);
    assert_eq!(
        ids(s.pid(), "Uid:"),
        vec![65534; 4],
        "every uid is nobody's"
    );
    assert_eq!(
        ids(s.pid(), "Gid:"),
        vec![65534; 4],
        "every gid is nogroup's"
    );
    let groups = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    let groups = groups.lines().find(|l| l.starts_with("Groups:")).unwrap();
    assert_eq!(groups.trim(), "Groups:", "no supplementary groups");
    // It still serves, as nobody: a message through 465 into alice's Maildir.
    let r = submit(&s, "alice@example.test", "pw", "alice@example.test", &[]);
    assert_eq!(r["ok"], true, "{r}\n{}", s.log());
    s.wait_messages("alice@example.test", 1);
}
