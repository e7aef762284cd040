//! In-process session tests (tier 2 in docs/testing.md): the real session driver, policy,
//! store and queue, started in this process with no listeners; each client talks to
//! `server::session::run` over an in-memory duplex stream, so any client address can be
//! played. Time is a `ManualClock` the tests move, and DNS a loopback server: the seams
//! `server::start` takes.

use mailwarden::accounts::Accounts;
use mailwarden::clock::ManualClock;
use mailwarden::config::Config;
use mailwarden::server::{self, ListenerKind, Running};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Harness {
    _dns: mailwarden_testdns::TestDns,
    _dir: tempfile::TempDir,
    running: Running,
    accounts: Accounts,
    config: Config,
    clock: ManualClock,
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
        config.listen.admin = String::new();
        config.listen.pop3s = String::new();
        // The in-process client reads the banner at once; pregreet has its own e2e tests.
        config.screening.pregreet.mode = mailwarden::config::Mode::Off;
        // Sender checks resolve through a loopback server that knows no names.
        let dns = mailwarden_testdns::TestDns::start(mailwarden_testdns::Zones::new());
        config.dns.nameservers = vec![dns.addr.to_string()];
        tweak(&mut config);
        // 2026-12-01, as a fixed point the tests move on from.
        let clock = ManualClock::at(1_796_083_200_000);
        let resolver = Arc::new(mailwarden::dns::Dns::new(&config.dns).unwrap());
        let running = server::start(config.clone(), Arc::new(clock.clone()), resolver)
            .await
            .unwrap();
        let accounts = running.shared.accounts.clone();
        Harness {
            _dns: dns,
            _dir: dir,
            running,
            accounts,
            config,
            clock,
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
            io: Box::new(ours),
            buf: Vec::new(),
            banner: String::new(),
        };
        c.banner = c.reply().await;
        c
    }

    /// A client of the implicit-TLS submission port, trusting the server's own certificate.
    async fn tls_client(&self, peer: &str) -> Client {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let peer: SocketAddr = peer.parse().unwrap();
        tokio::spawn(server::session::run(
            theirs,
            peer,
            "127.0.0.1:465".parse().unwrap(),
            ListenerKind::Submissions,
            self.running.shared.clone(),
        ));
        use rustls_pki_types::pem::PemObject;
        let cert = self.config.data_dir.join("tls/cert.pem");
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_file_iter(&cert).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("mx.example.test").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, ours)
            .await
            .unwrap();
        let mut c = Client {
            io: Box::new(tls),
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

/// A client's connection: the duplex stream, or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

struct Client {
    io: Box<dyn Io>,
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
struct Tripwire(tokio::io::DuplexStream);

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
        io: Box::new(ours),
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

/// One attempt of the same (network, sender, recipient) triplet: the reply to its RCPT.
async fn greylist_attempt(h: &Harness) -> String {
    let mut c = h.client(ListenerKind::Mx, "203.0.113.5:40000").await;
    c.expect("EHLO mail.remote.test", "250-").await;
    c.expect("MAIL FROM:<news@remote.test>", "250").await;
    c.io.write_all(b"RCPT TO:<alice@example.test>\r\n")
        .await
        .unwrap();
    c.reply().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greylisting_lets_a_retry_through_once_the_servers_clock_has_moved_on() {
    let h = Harness::new(|c| {
        c.screening.greylist.mode = mailwarden::config::Mode::Enforce;
    })
    .await;
    h.add_user("alice@example.test", "pw").await;
    let first = greylist_attempt(&h).await;
    assert!(first.starts_with("451 4.7.1"), "{first}");
    // Its record says greylisting decided it.
    let store = h.running.shared.accounts.store().clone();
    let filter = mailwarden::records::Filter {
        ip: Some("203.0.113.5".into()),
        limit: 10,
        ..Default::default()
    };
    let mut found = Vec::new();
    for _ in 0..100 {
        found = mailwarden::records::search(&store, &filter).unwrap();
        if !found.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let rec = found.first().expect("a record of the greylisted attempt");
    assert_eq!(rec.action, "tempfail");
    let deciding: Vec<&str> = rec
        .reasons
        .iter()
        .filter(|r| r.deciding)
        .map(|r| r.code.as_str())
        .collect();
    assert_eq!(deciding, ["greylisted"], "{:?}", rec.reasons);
    // Too soon: still greylisted. The wall clock did not move; the server's did not either.
    let early = greylist_attempt(&h).await;
    assert!(early.starts_with("451 4.7.1"), "{early}");
    h.clock.advance(301_000);
    let retry = greylist_attempt(&h).await;
    assert!(retry.starts_with("250 2.1.5"), "{retry}");
    h.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_rate_limit_counts_a_minute_of_the_servers_clock() {
    let h = Harness::new(|c| c.containment.max_connections_per_minute_per_ip = 2).await;
    for port in [1000, 1001] {
        let c = h
            .client(ListenerKind::Mx, &format!("198.51.100.9:{port}"))
            .await;
        assert!(c.banner.starts_with("220"), "{}", c.banner);
    }
    let third = h.client(ListenerKind::Mx, "198.51.100.9:1002").await;
    assert!(third.banner.starts_with("421 4.7.0"), "{}", third.banner);
    h.clock.advance(61_000);
    let later = h.client(ListenerKind::Mx, "198.51.100.9:1003").await;
    assert!(later.banner.starts_with("220"), "{}", later.banner);
    h.running.stop().await;
}

/// One message from alice on the implicit-TLS submission port: the reply to its end of DATA.
async fn submit(h: &Harness) -> String {
    use base64::Engine;
    let mut c = h.tls_client("192.0.2.30:6000").await;
    c.expect("EHLO laptop.example.test", "250-").await;
    let plain = base64::engine::general_purpose::STANDARD.encode(b"\0alice@example.test\0pw");
    c.expect(&format!("AUTH PLAIN {plain}"), "235").await;
    c.expect("MAIL FROM:<alice@example.test>", "250").await;
    c.expect("RCPT TO:<alice@example.test>", "250").await;
    c.expect("DATA", "354").await;
    c.io.write_all(b"From: alice@example.test\r\nSubject: hi\r\n\r\nhello\r\n.\r\n")
        .await
        .unwrap();
    c.reply().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_burst_trigger_counts_a_minute_of_the_servers_clock() {
    let h = Harness::new(|c| c.containment.burst_per_minute = 3).await;
    h.add_user("alice@example.test", "pw").await;
    // Five messages a minute and a bit apart: never a burst.
    for _ in 0..5 {
        let r = submit(&h).await;
        assert!(r.starts_with("250"), "{r}");
        h.clock.advance(61_000);
    }
    assert!(
        !h.running
            .shared
            .contain
            .is_suspended("alice@example.test")
            .unwrap()
    );
    // Four within the same minute of the server's clock: the fourth is a burst.
    let mut replies = Vec::new();
    for _ in 0..4 {
        replies.push(submit(&h).await);
    }
    assert!(
        replies[..3].iter().all(|r| r.starts_with("250")),
        "{replies:?}"
    );
    assert!(!replies[3].starts_with("250"), "{replies:?}");
    assert!(
        h.running
            .shared
            .contain
            .is_suspended("alice@example.test")
            .unwrap()
    );
    h.running.stop().await;
}

/// Observe-mode greylisting (the default) finds something at every RCPT of a stranger. A
/// session of many transactions of many recipients must not carry those findings along: each
/// transaction's record holds greylisting once, with its `would_tempfail`, and the session's
/// screening state does not grow with the recipients it has seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greylisting_findings_belong_to_their_transaction_however_many_there_are() {
    let h = Harness::new(|_| {}).await;
    let (transactions, rcpts) = (5, 20);
    for i in 0..rcpts {
        h.add_user(&format!("user{i}@example.test"), "pw").await;
    }
    let mut c = h.client(ListenerKind::Mx, "203.0.113.9:40000").await;
    c.expect("EHLO mail.remote.test", "250-").await;
    for t in 0..transactions {
        c.expect(&format!("MAIL FROM:<news{t}@remote.test>"), "250")
            .await;
        // A recipient of its own each time: every finding's detail differs.
        for i in 0..rcpts {
            c.expect(&format!("RCPT TO:<user{i}@example.test>"), "250 2.1.5")
                .await;
        }
        c.expect("DATA", "354").await;
        c.expect("Subject: hi\r\n\r\nbody\r\n.", "250 2.0.0").await;
    }
    c.expect("QUIT", "221").await;
    let store = h.running.shared.accounts.store().clone();
    let filter = mailwarden::records::Filter {
        ip: Some("203.0.113.9".into()),
        limit: 100,
        ..Default::default()
    };
    let mut found = Vec::new();
    for _ in 0..200 {
        found = mailwarden::records::search(&store, &filter).unwrap();
        if found.len() == transactions {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(found.len(), transactions);
    for rec in &found {
        let count = |pred: &dyn Fn(&mailwarden::records::Reason) -> bool| {
            rec.reasons.iter().filter(|r| pred(r)).count()
        };
        assert_eq!(count(&|r| r.code == "greylisted"), 1, "{:?}", rec.reasons);
        assert_eq!(
            count(&|r| r.code == "would_tempfail" && r.detail.starts_with("greylisted: ")),
            1,
            "{:?}",
            rec.reasons
        );
    }
    h.running.stop().await;
}
