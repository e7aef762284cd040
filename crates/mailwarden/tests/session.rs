//! In-process session tests (tier 2 in docs/testing.md): the real session driver, policy,
//! store and queue, started in this process with no listeners; each client talks to
//! `server::session::run` over an in-memory duplex stream, so any client address can be
//! played.

use mailwarden::accounts::Accounts;
use mailwarden::config::Config;
use mailwarden::server::{self, ListenerKind, Running};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

struct Harness {
    _dns: mailwarden_testdns::TestDns,
    _dir: tempfile::TempDir,
    running: Running,
    accounts: Accounts,
    config: Config,
}

impl Harness {
    async fn new(tweak: impl FnOnce(&mut Config)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.hostname = "mx.example.test".into();
        config.data_dir = dir.path().join("data");
        config.domains = vec!["example.test".into()];
        config.listen.mx = String::new();
        config.listen.submission = String::new();
        config.listen.submissions = String::new();
        config.listen.metrics = String::new();
        // The in-process client reads the banner at once; pregreet has its own e2e tests.
        config.screening.pregreet.mode = mailwarden::config::Mode::Off;
        // Sender checks resolve through a loopback server that knows no names.
        let dns = mailwarden_testdns::TestDns::start(mailwarden_testdns::Zones::new());
        config.dns.nameservers = vec![dns.addr.to_string()];
        tweak(&mut config);
        let running = server::start(config.clone()).await.unwrap();
        let accounts = running.shared.accounts.clone();
        Harness {
            _dns: dns,
            _dir: dir,
            running,
            accounts,
            config,
        }
    }

    async fn add_user(&self, addr: &str, pw: &str) {
        let a = self.accounts.clone();
        let (addr, pw) = (addr.to_string(), pw.to_string());
        tokio::task::spawn_blocking(move || a.add(&addr, pw.as_bytes()).unwrap())
            .await
            .unwrap();
    }

    /// A client connected to a fresh session as `peer` on listener `kind`; banner read.
    async fn client(&self, kind: ListenerKind, peer: &str) -> Client {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let peer: SocketAddr = peer.parse().unwrap();
        tokio::spawn(server::session::run(
            theirs,
            peer,
            "127.0.0.1:25".parse().unwrap(),
            kind,
            self.running.shared.clone(),
        ));
        let mut c = Client {
            io: ours,
            buf: Vec::new(),
            banner: String::new(),
        };
        c.banner = c.reply().await;
        c
    }

    fn mailbox_count(&self, addr: &str) -> usize {
        let (l, d) = addr.split_once('@').unwrap();
        let dir = self
            .config
            .data_dir
            .join("mail")
            .join(d)
            .join(l)
            .join("Maildir/new");
        std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
    }
}

struct Client {
    io: DuplexStream,
    buf: Vec<u8>,
    banner: String,
}

impl Client {
    async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            while !self.buf.windows(2).any(|w| w == b"\r\n") {
                let mut chunk = [0u8; 4096];
                let n = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    self.io.read(&mut chunk),
                )
                .await
                .expect("reply timed out")
                .unwrap();
                if n == 0 {
                    return lines.join("\n");
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
            let i = self.buf.windows(2).position(|w| w == b"\r\n").unwrap();
            let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
            self.buf.drain(..i + 2);
            let done = line.len() < 4 || line.as_bytes()[3] != b'-';
            lines.push(line);
            if done {
                return lines.join("\n");
            }
        }
    }

    /// Send a line; the reply must start with `want`.
    async fn expect(&mut self, line: &str, want: &str) -> &mut Self {
        self.io
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        let r = self.reply().await;
        assert!(r.starts_with(want), "{line}: want {want}, got {r}");
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_routing_and_relay_by_policy() {
    let h = Harness::new(|_| {}).await;
    h.add_user("alice@example.test", "pw").await;
    let mut c = h.client(ListenerKind::Mx, "192.0.2.10:40000").await;
    assert!(c.banner.starts_with("220 mx.example.test ESMTP"));
    c.expect("EHLO client.test", "250-mx.example.test").await;
    c.expect("MAIL FROM:<someone@remote.test>", "250 2.1.0")
        .await;
    c.expect("RCPT TO:<alice@example.test>", "250 2.1.5").await;
    c.expect("RCPT TO:<nobody@example.test>", "550 5.1.1").await;
    c.expect("RCPT TO:<bob@remote.test>", "554 5.7.1").await;
    c.expect("RCPT TO:<alice%remote.test@example.test>", "550 5.1.1")
        .await;
    c.expect("DATA", "354").await;
    c.expect("Subject: hi\r\n\r\nbody\r\n.", "250 2.0.0 OK queued as ")
        .await;
    c.expect("QUIT", "221").await;
    // The 250 came after the commit: the message was in the store (or already delivered).
    for _ in 0..100 {
        if h.mailbox_count("alice@example.test") == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(h.mailbox_count("alice@example.test"), 1);
    h.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_added_while_running_are_seen_at_once() {
    let h = Harness::new(|_| {}).await;
    let mut c = h.client(ListenerKind::Mx, "192.0.2.10:40000").await;
    c.expect("HELO client.test", "250 mx.example.test").await;
    c.expect("MAIL FROM:<>", "250").await;
    c.expect("RCPT TO:<late@example.test>", "550 5.1.1").await;
    h.add_user("late@example.test", "pw").await;
    c.expect("RCPT TO:<late@example.test>", "250 2.1.5").await;
    h.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_connection_limit_counts_each_address_separately() {
    let h = Harness::new(|c| c.smtp.max_connections_per_ip = 1).await;
    let first = h.client(ListenerKind::Mx, "198.51.100.1:1000").await;
    assert!(first.banner.starts_with("220"));
    let second = h.client(ListenerKind::Mx, "198.51.100.1:1001").await;
    assert!(second.banner.starts_with("421 4.7.0"), "{}", second.banner);
    let other = h.client(ListenerKind::Mx, "198.51.100.2:1000").await;
    assert!(other.banner.starts_with("220"), "{}", other.banner);
    drop(first);
    // The slot comes back when the session ends.
    let mut ok = false;
    for _ in 0..100 {
        let again = h.client(ListenerKind::Mx, "198.51.100.1:1002").await;
        if again.banner.starts_with("220") {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ok, "slot not released");
    h.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_demands_tls_then_auth() {
    let h = Harness::new(|_| {}).await;
    h.add_user("alice@example.test", "pw").await;
    let mut c = h.client(ListenerKind::Submission, "192.0.2.20:5000").await;
    c.expect("EHLO laptop.example.test", "250-mx.example.test")
        .await;
    c.expect("AUTH LOGIN", "538 5.7.11").await;
    c.expect("MAIL FROM:<alice@example.test>", "530 5.7.0")
        .await;
    c.expect("RCPT TO:<alice@example.test>", "503 5.5.1").await;
    c.expect("QUIT", "221").await;
    h.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_sessions_with_421() {
    let h = Harness::new(|_| {}).await;
    let mut c = h.client(ListenerKind::Mx, "192.0.2.30:5000").await;
    c.expect("EHLO client.test", "250").await;
    let shared = Arc::clone(&h.running.shared);
    let stop = tokio::spawn(h.running.stop());
    let r = c.reply().await;
    assert!(r.starts_with("421 4.3.2"), "{r}");
    stop.await.unwrap();
    assert_eq!(shared.limiter.active(), 0);
}

/// A connection that panics inside the session's read when the client sends `TRIPWIRE`: a
/// stand-in for any bug a client's bytes might reach.
struct Tripwire(DuplexStream);

impl tokio::io::AsyncRead for Tripwire {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.0).poll_read(cx, buf);
        if buf.filled()[before..].windows(8).any(|w| w == b"TRIPWIRE") {
            panic!("tripwire");
        }
        r
    }
}

impl tokio::io::AsyncWrite for Tripwire {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_ends_only_its_session_with_421_and_leaves_nothing_behind() {
    let h = Harness::new(|_| {}).await;
    h.add_user("alice@example.test", "pw").await;
    let (ours, theirs) = tokio::io::duplex(1024 * 1024);
    let session = tokio::spawn(server::session::run(
        Tripwire(theirs),
        "192.0.2.40:5000".parse().unwrap(),
        "127.0.0.1:25".parse().unwrap(),
        ListenerKind::Mx,
        h.running.shared.clone(),
    ));
    let mut c = Client {
        io: ours,
        buf: Vec::new(),
        banner: String::new(),
    };
    c.banner = c.reply().await;
    c.expect("EHLO client.test", "250").await;
    c.expect("MAIL FROM:<someone@remote.test>", "250").await;
    c.expect("RCPT TO:<alice@example.test>", "250").await;
    c.expect("DATA", "354").await;
    // Past queue.inline_max, so the body is in a spool file when the bug strikes.
    let line = format!("{}\r\n", "x".repeat(998));
    for _ in 0..300 {
        c.io.write_all(line.as_bytes()).await.unwrap();
    }
    let spool = h.config.data_dir.join("queue");
    let spooled = || {
        std::fs::read_dir(&spool)
            .map(|d| d.flatten().filter(|e| e.path().is_file()).count())
            .unwrap_or(0)
    };
    for _ in 0..200 {
        if spooled() > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(spooled(), 1, "the body was not spooled before the panic");
    c.io.write_all(b"TRIPWIRE\r\n").await.unwrap();
    let r = c.reply().await;
    assert!(r.starts_with("421 4.3.0"), "{r}");
    session.await.expect("the panic stayed inside the session");
    assert_eq!(spooled(), 0, "spool file left behind");
    assert_eq!(h.running.shared.limiter.active(), 0, "connection slot kept");
    // The transaction's decision record says what happened.
    let store = h.accounts.store().clone();
    let mut found = None;
    for _ in 0..100 {
        let s = store.clone();
        let recs = tokio::task::spawn_blocking(move || {
            let f = mailwarden::records::Filter {
                ip: Some("192.0.2.40".into()),
                limit: 10,
                ..Default::default()
            };
            mailwarden::records::search(&s, &f).unwrap()
        })
        .await
        .unwrap();
        found = recs.into_iter().find(|r| r.ip == "192.0.2.40");
        if found.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let rec = found.expect("no decision record for the panicked session");
    assert_eq!(rec.action, "tempfail");
    assert!(rec.reply.starts_with("421 4.3.0"), "{}", rec.reply);
    assert!(
        rec.reasons
            .iter()
            .any(|r| r.code == "session.panic" && r.deciding)
    );
    // Other sessions go on.
    let mut other = h.client(ListenerKind::Mx, "192.0.2.41:5000").await;
    other.expect("EHLO client.test", "250").await;
    h.running.stop().await;
}
