//! End-to-end test support: run the real `mailwarden` binary on 127.0.0.1 port 0 with a
//! temporary config and data directory, and drive it with real clients (Python smtplib, a raw
//! scripted Python client, swaks, curl).
#![allow(dead_code)]

use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_mailwarden");

pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Base config: loopback, port 0 everywhere, one local domain, short AUTH delays.
pub fn base_config(data_dir: &Path) -> toml::Table {
    let text = format!(
        r#"
hostname = "mx.example.test"
data_dir = "{}"
domains = ["example.test"]
[listen]
mx = "127.0.0.1:0"
submission = "127.0.0.1:0"
submissions = "127.0.0.1:0"
metrics = "127.0.0.1:0"
admin = "127.0.0.1:0"
pop3s = "127.0.0.1:0"
[delivery]
# Every peer in these tests is on loopback.
allow_private_destinations = true
[screening.pregreet]
# A 2 s wait per new client would slow every MX test; e2e::screening turns it on.
mode = "off"
[auth]
failure_delay = "50ms"
max_failure_delay = "200ms"
# Test accounts have short passwords; e2e::hostile checks that the defaults refuse them.
min_password_length = 1
min_password_strength = 0
[log]
level = "info,mailwarden=debug"
"#,
        data_dir.display()
    );
    text.parse().expect("base config")
}

fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (k, v) in extra {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(e)) => merge(b, e),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

pub struct Server {
    /// The loopback DNS server this instance resolves through (NXDOMAIN for unknown names).
    pub dns: mailwarden_testdns::TestDns,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    child: Option<Child>,
    pub ports: HashMap<String, SocketAddr>,
    log: Arc<Mutex<String>>,
    /// The `MAILWARDEN_TEST_CLOCK` file: nodes of one cluster share theirs.
    clock: PathBuf,
    /// `store.url`, when the server runs on PostgreSQL.
    pub store_url: Option<String>,
}

impl Server {
    /// Start with the base config plus `extra` (TOML, merged key by key), resolving through a
    /// loopback DNS server that knows nothing (every name is NXDOMAIN).
    pub fn start(extra: &str) -> Server {
        Server::start_with_zones(extra, "")
    }

    /// Start with a loopback DNS server serving `zones` (see mailwarden-testdns).
    pub fn start_with_zones(extra: &str, zones: &str) -> Server {
        Server::start_with_clock(extra, zones, None)
    }

    /// Start with the test clock kept in `clock` (another server's [`Server::clock_file`]),
    /// or in this server's directory.
    pub fn start_with_clock(extra: &str, zones: &str, clock: Option<PathBuf>) -> Server {
        // A signed root, as the real one is: the validating resolver of DANE then proves
        // unsigned zones insecure, and trusts the test server's keys as the root's.
        let dns = mailwarden_testdns::TestDns::with_text(&format!(". SIGNED\n{zones}"));
        let dir = tempfile::tempdir().expect("tempdir");
        let anchors = dir.path().join("trust-anchors");
        std::fs::write(&anchors, dns.trust_anchors()).expect("trust anchors");
        let clock = clock.unwrap_or_else(|| dir.path().join("clock"));
        let mut cfg = base_config(&dir.path().join("data"));
        let dns_cfg = format!(
            "[dns]\nnameservers = [\"{}\"]\ntimeout = \"500ms\"\nattempts = 1\ntrust_anchors = \"{}\"\n",
            dns.addr,
            anchors.display()
        );
        merge(&mut cfg, dns_cfg.parse().expect("dns config"));
        merge(&mut cfg, extra.parse().expect("extra config"));
        // MAILWARDEN_E2E_STORE=postgres: every test on a fresh PostgreSQL database instead of
        // the embedded store, to check the shared backend against the whole suite.
        if std::env::var("MAILWARDEN_E2E_STORE").as_deref() == Ok("postgres")
            && !cfg.contains_key("store")
        {
            let url = mailwarden::store::test_postgres().expect("MAILWARDEN_TEST_POSTGRES");
            merge(
                &mut cfg,
                format!("[store]\nurl = \"{url}\"\n").parse().unwrap(),
            );
        }
        let store_url = cfg
            .get("store")
            .and_then(|s| s.get("url"))
            .and_then(|u| u.as_str())
            .filter(|u| !u.is_empty())
            .map(str::to_string);
        let config_path = dir.path().join("mailwarden.toml");
        std::fs::write(&config_path, toml::to_string(&cfg).unwrap()).unwrap();
        let mut s = Server {
            dns,
            dir,
            config_path,
            child: None,
            ports: HashMap::new(),
            log: Arc::new(Mutex::new(String::new())),
            clock,
            store_url,
        };
        s.spawn();
        s
    }

    /// The file its test clock is read from.
    pub fn clock_file(&self) -> PathBuf {
        self.clock.clone()
    }

    fn spawn(&mut self) {
        let mut child = Command::new(BIN)
            .args(["serve", "-c"])
            .arg(&self.config_path)
            .env_remove("RUST_LOG")
            .env("MAILWARDEN_TEST_CLOCK", &self.clock)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mailwarden");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        self.ports.clear();
        let cfg: toml::Table = std::fs::read_to_string(&self.config_path)
            .unwrap()
            .parse()
            .unwrap();
        let optional = ["mta_sts", "admin", "autoconfig", "pop3s", "pop3"]
            .iter()
            .filter(|k| {
                cfg.get("listen")
                    .and_then(|l| l.get(**k))
                    .and_then(|v| v.as_str())
                    .is_some_and(|v| !v.is_empty())
            })
            .count();
        let want = 4 + optional;
        while self.ports.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let mut w = line.split_whitespace();
                    if w.next() == Some("listening") {
                        let name = w.next().unwrap().to_string();
                        let addr: SocketAddr = w.next().unwrap().parse().unwrap();
                        self.ports.insert(name, addr);
                    }
                }
                Err(_) => panic!(
                    "server did not report its listeners; log:\n{}",
                    self.log.lock().unwrap()
                ),
            }
        }
        self.child = Some(child);
    }

    pub fn mx(&self) -> SocketAddr {
        self.ports["mx"]
    }
    /// Move the server's clock forward (`MAILWARDEN_TEST_CLOCK`): greylisting delays and
    /// screening memory without waiting.
    pub fn advance_clock(&self, secs: i64) {
        let path = &self.clock;
        let now: i64 = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        std::fs::write(path, (now + secs * 1000).to_string()).unwrap();
    }

    /// The Prometheus text at `/metrics`, fetched with curl.
    pub fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.ports["metrics"]);
        let out = run("curl", &["-sSf", "--max-time", "5", &url], None);
        assert!(
            out.status.success(),
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
    pub fn submission(&self) -> SocketAddr {
        self.ports["submission"]
    }
    pub fn submissions(&self) -> SocketAddr {
        self.ports["submissions"]
    }
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Log lines containing every one of `needles`.
    pub fn log_lines(&self, needles: &[&str]) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_string)
            .collect()
    }

    /// Wait until a log line contains all of `needles`.
    pub fn wait_log(&self, needles: &[&str]) -> String {
        wait_for(Duration::from_secs(20), || {
            self.log_lines(needles).into_iter().next()
        })
        .unwrap_or_else(|| panic!("no log line with {needles:?}; log:\n{}", self.log()))
    }

    /// `log search --json ARGS`, once it finds something (records are saved after the
    /// reply): the records, one JSON object each.
    pub fn search_records(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["log", "search", "--json"];
        all.extend_from_slice(args);
        wait_for(Duration::from_secs(10), || {
            let found: Vec<Value> = self
                .cli_ok(&all, None)
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            (!found.is_empty()).then_some(found)
        })
        .unwrap_or_else(|| panic!("no record for {args:?}"))
    }

    /// Run the CLI, which must succeed; its standard output.
    pub fn cli_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.cli(args, stdin);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run the CLI against this server's config.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args).arg("-c").arg(&self.config_path);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run mailwarden cli");
        if let Some(text) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        } else {
            drop(child.stdin.take());
        }
        child.wait_with_output().unwrap()
    }

    pub fn add_user(&self, addr: &str, password: &str) {
        let out = self.cli(
            &["user", "add", addr, "--password-stdin"],
            Some(&format!("{password}\n")),
        );
        assert!(
            out.status.success(),
            "user add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn maildir(&self, addr: &str) -> PathBuf {
        let (local, domain) = addr.rsplit_once('@').unwrap();
        self.data_dir()
            .join("mail")
            .join(domain)
            .join(local)
            .join("Maildir")
    }

    /// Contents of every message in `new/` and `cur/` of a mailbox (or a folder of it).
    pub fn messages_in(&self, dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
                let mut names: Vec<_> = rd.map(|e| e.unwrap().path()).collect();
                names.sort();
                for p in names {
                    out.push(String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned());
                }
            }
        }
        out
    }

    pub fn messages(&self, addr: &str) -> Vec<String> {
        self.messages_in(&self.maildir(addr))
    }

    /// Wait until `addr` has at least `n` messages; return them.
    pub fn wait_messages(&self, addr: &str, n: usize) -> Vec<String> {
        wait_for(Duration::from_secs(30), || {
            let m = self.messages(addr);
            (m.len() >= n).then_some(m)
        })
        .unwrap_or_else(|| {
            panic!(
                "{addr} has {} messages, wanted {n}; log:\n{}",
                self.messages(addr).len(),
                self.log()
            )
        })
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Write the ports bound now into the config, so that a later start binds the same ones
    /// (a peer's `delivery.port` keeps pointing at this instance).
    pub fn pin_ports(&mut self) {
        let mut cfg: toml::Table = std::fs::read_to_string(&self.config_path)
            .unwrap()
            .parse()
            .unwrap();
        let listen = cfg
            .get_mut("listen")
            .and_then(|l| l.as_table_mut())
            .unwrap();
        for (name, addr) in &self.ports {
            listen.insert(name.clone(), toml::Value::String(addr.to_string()));
        }
        std::fs::write(&self.config_path, toml::to_string(&cfg).unwrap()).unwrap();
    }

    /// Change the config file (of a stopped server, for its next start).
    pub fn edit_config(&self, f: impl FnOnce(&mut toml::Table)) {
        let mut cfg: toml::Table = std::fs::read_to_string(&self.config_path)
            .unwrap()
            .parse()
            .unwrap();
        f(&mut cfg);
        std::fs::write(&self.config_path, toml::to_string(&cfg).unwrap()).unwrap();
    }

    /// `dkim keygen DOMAIN` here; the `NAME TXT ...` lines it printed, as zone text.
    pub fn dkim_keygen(&self, domain: &str) -> String {
        self.cli_ok(&["dkim", "keygen", domain], None)
            .lines()
            .filter(|l| l.contains("._domainkey.") && l.contains(" IN TXT "))
            .map(|l| l.replacen(" IN TXT ", " TXT ", 1))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Start again after [`Server::stop`] or [`Server::kill9`].
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    /// Stop with SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }

    /// Run a query on the store (the server keeps running; WAL allows it).
    pub fn query_count(&self, sql: &str) -> i64 {
        if let Some(url) = &self.store_url {
            return pg_count(url, sql);
        }
        let c = rusqlite::Connection::open(self.data_dir().join("mailwarden.db")).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c.query_row(sql, [], |r| r.get(0)).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A fresh database on the test PostgreSQL (`MAILWARDEN_TEST_POSTGRES`, which `scripts/test`
/// sets), or `None` after saying on stderr that `test` is skipped.
pub fn postgres(test: &str) -> Option<String> {
    let url = mailwarden::store::test_postgres();
    if url.is_none() {
        eprintln!("{test}: skipped, no PostgreSQL (MAILWARDEN_TEST_POSTGRES is not set)");
    }
    url
}

/// A hijacked account blasting from one connection until refused (`clients/blast.py`):
/// its JSON report, `{"accepted": N, "code": ..., "message": ...}`.
pub fn blast(submissions: SocketAddr, user: &str, password: &str) -> Value {
    let out = run(
        "python3",
        &[
            clients_dir().join("blast.py").to_str().unwrap(),
            "--host",
            &submissions.ip().to_string(),
            "--port",
            &submissions.port().to_string(),
            "--user",
            user,
            "--password",
            password,
            "--count",
            "10000",
        ],
        None,
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("blast.py: {}", String::from_utf8_lossy(&out.stderr)))
}

/// A count from the shared store at `url`.
pub fn pg_count(url: &str, sql: &str) -> i64 {
    let store = mailwarden::store::Store::open_postgres(url).expect("open the shared store");
    let n = store
        .read(|c| c.query_row(&format!("SELECT CAST(({sql}) AS BIGINT)"), (), |r| r.get(0)))
        .expect("query the shared store");
    store.close();
    n
}

pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Send with smtplib (`tests/clients/send.py`); returns its JSON report.
pub fn smtplib(port: SocketAddr, mode: &str, args: &[&str]) -> Value {
    smtplib_stdin(port, mode, args, None)
}

/// Submit one message on 465 as `user`, from the user's own address to `to`. `extra` adds
/// send.py arguments; a later `--from` there replaces the default sender.
pub fn submit(s: &Server, user: &str, password: &str, to: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "--user",
        user,
        "--password",
        password,
        "--from",
        user,
        "--to",
        to,
    ];
    args.extend_from_slice(extra);
    smtplib(s.submissions(), "ssl", &args)
}

/// As [`smtplib`], with a raw message on standard input (`--raw`).
pub fn smtplib_stdin(port: SocketAddr, mode: &str, args: &[&str], stdin: Option<&[u8]>) -> Value {
    let mut child = Command::new("python3")
        .arg(clients_dir().join("send.py"))
        .args(["--host", &port.ip().to_string()])
        .args(["--port", &port.port().to_string(), "--mode", mode])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|_| missing("python3", how_to_get("python3")));
    {
        use std::io::Write;
        let mut i = child.stdin.take().unwrap();
        if let Some(b) = stdin {
            i.write_all(b).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "send.py failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Read a mailbox with poplib (`tests/clients/pop3.py`): `mode` is ssl, stls or plain;
/// `source` the loopback address to connect from; `ops` as the script takes them.
pub fn pop3(
    port: SocketAddr,
    mode: &str,
    login: Option<(&str, &str)>,
    source: Option<&str>,
    ops: &[&str],
) -> Value {
    let port = port.port().to_string();
    let script = clients_dir().join("pop3.py");
    let mut args = vec![script.to_str().unwrap(), "--port", &port, "--mode", mode];
    if let Some((u, p)) = login {
        args.extend(["--user", u, "--password", p]);
    }
    if let Some(s) = source {
        args.extend(["--source", s]);
    }
    args.extend_from_slice(ops);
    let out = run("python3", &args, None);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "pop3.py failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A pop3.py session held open in the middle: it logs in, runs `before`, and waits until
/// [`Pop3Held::finish`] lets it run `after` and QUIT, so a test can act in between. Its
/// report numbers the ops: the login 0, then `before`, then two for the wait, then `after`.
pub struct Pop3Held {
    child: Child,
    dir: tempfile::TempDir,
}

impl Pop3Held {
    pub fn start(
        port: SocketAddr,
        login: (&str, &str),
        before: &[&str],
        after: &[&str],
    ) -> Pop3Held {
        let dir = tempfile::tempdir().unwrap();
        let (ready, go) = (dir.path().join("ready"), dir.path().join("go"));
        let mut ops: Vec<String> = before.iter().map(|s| s.to_string()).collect();
        ops.push(format!("touch:{}", ready.display()));
        ops.push(format!("waitfile:{}", go.display()));
        ops.extend(after.iter().map(|s| s.to_string()));
        let child = Command::new("python3")
            .arg(clients_dir().join("pop3.py"))
            .args(["--port", &port.port().to_string()])
            .args(["--user", login.0, "--password", login.1])
            .args(&ops)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|_| missing("python3", how_to_get("python3")));
        wait_for(Duration::from_secs(30), || ready.exists().then_some(()))
            .expect("the POP3 session reached its wait");
        Pop3Held { child, dir }
    }

    pub fn finish(self) -> Value {
        std::fs::write(self.dir.path().join("go"), "").unwrap();
        let out = self.child.wait_with_output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// One step of a raw dialogue (`tests/clients/smtpraw.py`).
pub enum Step<'a> {
    Read,
    Cmd(&'a str),
    Send(&'a str),
    StartTls,
    Sleep(f64),
    UntilClose,
}

pub struct Raw {
    pub replies: Vec<String>,
    pub closed: bool,
    pub error: Option<String>,
}

impl Raw {
    /// The reply at `i`, or a panic that shows the whole dialogue.
    pub fn reply(&self, i: usize) -> &str {
        self.replies
            .get(i)
            .unwrap_or_else(|| panic!("no reply {i}: {:?} (error {:?})", self.replies, self.error))
    }

    pub fn codes(&self) -> Vec<String> {
        self.replies
            .iter()
            .map(|r| r.lines().last().unwrap_or("").chars().take(9).collect())
            .collect()
    }
}

pub fn raw(addr: SocketAddr, implicit_tls: bool, source: Option<&str>, steps: &[Step]) -> Raw {
    let steps: Vec<Value> = steps
        .iter()
        .map(|s| match s {
            Step::Read => json!(["read"]),
            Step::Cmd(c) => json!(["cmd", c]),
            Step::Send(c) => json!(["send", c]),
            Step::StartTls => json!(["starttls"]),
            Step::Sleep(t) => json!(["sleep", t]),
            Step::UntilClose => json!(["until_close"]),
        })
        .collect();
    let spec = json!({
        "host": addr.ip().to_string(),
        "port": addr.port(),
        "implicit_tls": implicit_tls,
        "source": source,
        "steps": steps,
    });
    let mut child = Command::new("python3")
        .arg(clients_dir().join("smtpraw.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|_| missing("python3", how_to_get("python3")));
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(spec.to_string().as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "smtpraw.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Raw {
        replies: v["replies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect(),
        closed: v["closed"].as_bool().unwrap_or(false),
        error: v["error"].as_str().map(str::to_string),
    }
}

/// How to get each outside tool the end-to-end tier drives the server with.
fn how_to_get(cmd: &str) -> &'static str {
    match cmd {
        "swaks" => "apt-get install swaks libio-socket-ssl-perl libauthen-sasl-perl",
        "curl" => "apt-get install curl",
        "opendkim" => "apt-get install opendkim",
        "python3" => "apt-get install python3",
        "xmllint" => "apt-get install libxml2-utils",
        _ => "see scripts/test",
    }
}

/// Fail the test by naming a missing tool and how to get it, rather than with whatever the
/// missing tool makes a test trip over.
pub fn missing(tool: &str, how: &str) -> ! {
    panic!(
        "the end-to-end tests need {tool}, which is not installed here: run `scripts/test` \
         (it installs every test client), or: {how}"
    )
}

/// dkimpy (with PyNaCl), for the scripts that sign and verify independently of mailwarden.
fn need_dkimpy() {
    static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let found = *FOUND.get_or_init(|| {
        Command::new("python3")
            .args(["-c", "import dkim, nacl"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !found {
        missing(
            "the Python modules dkimpy and pynacl",
            "python3 -m pip install dkimpy pynacl",
        );
    }
}

/// [`run`], which must succeed; its standard output.
pub fn run_ok(cmd: &str, args: &[&str], stdin: Option<&str>) -> Vec<u8> {
    let out = run(cmd, args, stdin);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Run an external client (swaks, curl, opendkim, a Python script) and return its output.
pub fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> Output {
    if args
        .first()
        .is_some_and(|a| a.ends_with("dkim_sign.py") || a.ends_with("dkim_verify.py"))
    {
        need_dkimpy();
    }
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => missing(cmd, how_to_get(cmd)),
            _ => panic!("cannot run {cmd}: {e}"),
        });
    {
        use std::io::Write;
        let mut i = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            i.write_all(s.as_bytes()).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

/// Dovecot over `data_dir`'s Maildir tree (`tests/clients/dovecot.py`), for `users`; with
/// `lmtp`, also its LMTP service (only those users exist then). Stopped when dropped.
pub struct Dovecot {
    child: Child,
    pub port: u16,
    pub lmtp: Option<u16>,
}

impl Dovecot {
    pub fn start(data_dir: &Path, users: &[(&str, &str)], lmtp: bool) -> Dovecot {
        let mut cmd = Command::new("python3");
        cmd.arg(clients_dir().join("dovecot.py")).arg(data_dir);
        for (u, p) in users {
            cmd.args([u, p]);
        }
        if lmtp {
            cmd.env("MW_DOVECOT_LMTP", "1");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|_| missing("python3", "apt-get install python3"));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut lmtp_port = None;
        loop {
            let line = lines.next().and_then(Result::ok).unwrap_or_default();
            if let Some(p) = line.trim().strip_prefix("lmtp=") {
                lmtp_port = Some(p.parse().unwrap());
                continue;
            }
            let Some(port) = line.trim().strip_prefix("port=") else {
                let out = child.wait_with_output().unwrap();
                if out.status.code() == Some(3) {
                    missing("dovecot", "apt-get install dovecot-imapd dovecot-lmtpd");
                }
                panic!("dovecot.py: {}", String::from_utf8_lossy(&out.stderr));
            };
            return Dovecot {
                port: port.parse().unwrap(),
                lmtp: lmtp_port,
                child,
            };
        }
    }

    /// As `user`, move the messages whose subject has each text, as a mail client does, and
    /// return every folder's subjects (`tests/clients/imap_move.py`).
    pub fn client(&self, user: &str, password: &str, moves: &[(&str, &str, &str)]) -> Value {
        let mut extra = Vec::new();
        for (s, from, to) in moves {
            extra.extend(["--move", s, from, to]);
        }
        self.script("imap_move.py", user, password, &extra)
    }

    /// As `user`, add `flags` (subject, IMAP flag) and expunge `expunge` (subjects) in INBOX;
    /// then every INBOX subject's flags (`tests/clients/imap_flags.py`).
    pub fn flags(
        &self,
        user: &str,
        password: &str,
        flags: &[(&str, &str)],
        expunge: &[&str],
    ) -> Value {
        let mut extra = Vec::new();
        for (s, f) in flags {
            extra.extend(["--flag", s, f]);
        }
        for s in expunge {
            extra.extend(["--expunge", s]);
        }
        self.script("imap_flags.py", user, password, &extra)
    }

    /// Run an imaplib client script against this Dovecot as `user`; its JSON report.
    fn script(&self, name: &str, user: &str, password: &str, extra: &[&str]) -> Value {
        let port = self.port.to_string();
        let script = clients_dir().join(name);
        let mut args = vec![
            script.to_str().unwrap(),
            "--port",
            &port,
            "--user",
            user,
            "--password",
            password,
        ];
        args.extend_from_slice(extra);
        serde_json::from_slice(&run_ok("python3", &args, None)).unwrap()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // Closing its stdin stops it.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// A test CA and a certificate it issued for `names`: (ca.pem, chain.pem, key.pem).
pub fn test_ca(dir: &Path, names: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "mailwarden test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
    let (ca_pem, chain, key_pem) = (
        dir.join("ca.pem"),
        dir.join("chain.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&ca_pem, ca_cert.pem()).unwrap();
    std::fs::write(&chain, format!("{}{}", leaf.pem(), ca_cert.pem())).unwrap();
    std::fs::write(&key_pem, key.serialize_pem()).unwrap();
    (ca_pem, chain, key_pem)
}
