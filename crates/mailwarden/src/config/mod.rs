//! The configuration: one typed schema whose doc comments state each key's meaning and default.
//! `docs/reference/config.md` is generated from it (`mailwarden config reference`), and a test
//! fails when the committed page is stale.
//!
//! Lookup order: `-c FILE`, then `$MAILWARDEN_CONFIG`, then `./mailwarden.toml`, then built-in
//! defaults. Relative paths in a file are taken from the file's directory.

pub mod docs;
pub(crate) mod schema;
pub mod screening;
pub mod units;

use anyhow::{Context, bail};
use schema::{choice, section};
pub use screening::{ListZone, Screening};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
pub use units::{ByteSize, Duration};

section! {
    /// mailwarden's configuration. Every key is optional: a missing key takes its default, so
    /// an empty file (or no file at all) runs a loopback-only test server.
    pub struct Config {
        /// The name this server uses in its SMTP banner, its EHLO reply, Received headers, and
        /// as the `authserv-id` of Authentication-Results.
        #[default_doc = "the machine's hostname"]
        pub hostname: String = default_hostname(),
        /// Where the store, the queue, the mailboxes and the generated certificate live. A
        /// relative path is taken from the config file's directory, or from the current
        /// directory when there is no file.
        pub data_dir: PathBuf = PathBuf::from("./mailwarden-data"),
        /// Local domains: mail for them is delivered to local accounts. The domain of every
        /// account is local as well, so `user add alice@example.test` makes example.test local.
        pub domains: Vec<String> = vec!["localhost".to_string()],
        /// The mailbox that receives mail for `postmaster@` every local domain and for the bare
        /// `<Postmaster>` (RFC 5321 §4.5.1). Empty means `postmaster@` the first domain.
        pub postmaster: String = String::new(),
        pub store: StoreConfig = StoreConfig::default(),
        pub listen: Listen = Listen::default(),
        pub tls: Tls = Tls::default(),
        pub dns: Dns = Dns::default(),
        pub spf: Spf = Spf::default(),
        pub dkim: Dkim = Dkim::default(),
        pub dmarc: Dmarc = Dmarc::default(),
        pub reports: Reports = Reports::default(),
        pub mta_sts: MtaSts = MtaSts::default(),
        pub arc: ArcCheck = ArcCheck::default(),
        pub iprev: Iprev = Iprev::default(),
        pub smtp: Smtp = Smtp::default(),
        pub mx: Mx = Mx::default(),
        pub limits: Limits = Limits::default(),
        pub auth: Auth = Auth::default(),
        pub queue: Queue = Queue::default(),
        pub delivery: Delivery = Delivery::default(),
        pub submission: Submission = Submission::default(),
        pub containment: Containment = Containment::default(),
        pub screening: Screening = Screening::default(),
        pub records: Records = Records::default(),
        pub scoring: Scoring = Scoring::default(),
        pub reputation: Reputation = Reputation::default(),
        pub learning: Learning = Learning::default(),
        pub log: Log = Log::default(),
        pub admin: Admin = Admin::default(),
        pub autoconfig: Autoconfig = Autoconfig::default(),
        pub audit: Audit = Audit::default(),
        pub pop3: Pop3 = Pop3::default(),
        pub pop_before_smtp: PopBeforeSmtp = PopBeforeSmtp::default(),
        /// The user `serve` switches to after binding its ports, when started as root (for
        /// good: real, effective and saved ids, no supplementary groups); `data_dir` is
        /// handed to it. Empty: a root start keeps root, with a warning in the log.
        pub run_as_user: String = String::new(),
    }
}

section! {
    /// Listening addresses, as `ip:port`. An empty string disables that listener. Port 0 picks a
    /// free port; the server prints the ports it bound (`listening NAME ADDRESS`).
    pub struct Listen {
        /// MX: mail from other servers, for local domains only. STARTTLS is offered; AUTH is not.
        pub mx: String = "127.0.0.1:2525".to_string(),
        /// Message submission with STARTTLS (RFC 6409). AUTH is required, and offered only after
        /// TLS.
        pub submission: String = "127.0.0.1:2587".to_string(),
        /// Message submission over implicit TLS (RFC 8314). AUTH is required.
        pub submissions: String = "127.0.0.1:2465".to_string(),
        /// Prometheus metrics (`GET /metrics`). Loopback addresses only; empty turns it off.
        pub metrics: String = "127.0.0.1:2580".to_string(),
        /// HTTPS for `mta-sts.<domain>`: serves `/.well-known/mta-sts.txt` (RFC 8461) built
        /// from `[mta_sts]`, for every local domain. Empty turns it off. Publish it on port
        /// 443.
        pub mta_sts: String = String::new(),
        /// The administrator's web console (`[admin]`). Loopback addresses only, unless
        /// `admin.allow_remote` and `admin.tls` are both on. Empty turns it off.
        pub admin: String = "127.0.0.1:2581".to_string(),
        /// Mail-client autoconfiguration over HTTP: Thunderbird's `config-v1.1.xml` and
        /// Microsoft's Autodiscover POX (`[autoconfig]`). Empty (the default) turns it off.
        /// Publish it as `autoconfig.<domain>` and `autodiscover.<domain>`, behind HTTPS.
        pub autoconfig: String = String::new(),
        /// POP3 over implicit TLS (RFC 8314; publish it on port 995): the accounts' Maildir
        /// inboxes, read with the accounts' passwords (`[pop3]`). Empty turns it off.
        pub pop3s: String = "127.0.0.1:2995".to_string(),
        /// POP3 with STLS (RFC 2595; port 110). USER, PASS and AUTH are refused until STLS;
        /// nothing is ever read or logged in over plaintext. Empty (the default) turns it off.
        pub pop3: String = String::new(),
    }
}

section! {
    /// The web console on `listen.admin`: who may log in, and how it is served. An admin
    /// logs in with an account's password (`mailwarden user add --admin`, or listed in
    /// `accounts`); failed logins count with the AUTH failures of the mail ports.
    pub struct Admin {
        /// Accounts that may log in to the console, besides those added with `--admin`.
        pub accounts: Vec<String> = Vec::new(),
        /// Let `listen.admin` be a non-loopback address. Requires `tls`.
        pub allow_remote: bool = false,
        /// Serve the console over HTTPS with the listeners' certificate; its cookies are then
        /// `Secure`.
        pub tls: bool = false,
        /// How long a console login lasts without use.
        pub session_idle: Duration = Duration::secs(30 * 60),
    }
}

section! {
    /// What mail-client autoconfiguration (`listen.autoconfig`) announces. Submission is
    /// announced on `hostname`, ports 465 (SSL/TLS) and 587 (STARTTLS), with the user's full
    /// address as the user name.
    pub struct Autoconfig {
        /// The host clients connect to. Empty: `hostname`.
        pub host: String = String::new(),
        /// The submission ports announced: implicit TLS, then STARTTLS. 0 leaves one out.
        pub submissions_port: u16 = 465,
        pub submission_port: u16 = 587,
        /// The POP3 port announced (SSL/TLS) when `listen.pop3s` is on and `pop3` is empty.
        /// 0 leaves it out.
        pub pop3s_port: u16 = 995,
        /// An IMAP server to announce, as `host:port` (993: SSL/TLS; else STARTTLS). Empty:
        /// none.
        pub imap: String = String::new(),
        /// A POP3 server to announce, as `host:port` (995: SSL/TLS; else STARTTLS). Empty:
        /// ours, on `host` and `pop3s_port`, when `listen.pop3s` is on.
        pub pop3: String = String::new(),
    }
}

section! {
    /// The POP3 server (`listen.pop3s`, `listen.pop3`): RFC 1939 with UIDL, TOP, CAPA, STLS
    /// and SASL PLAIN, over each account's Maildir inbox as Dovecot sees it. A login counts
    /// with the AUTH failures, delays and blocks of the mail ports; a suspended account may
    /// still read its mail. One POP3 session per mailbox at a time.
    pub struct Pop3 {
        /// How long a session may wait for the client's next command (RFC 1939 §3 asks for at
        /// least 10 minutes).
        pub idle_timeout: Duration = Duration::secs(10 * 60),
        /// How long one session may last, whatever it does.
        pub max_session_time: Duration = Duration::secs(60 * 60),
        /// `-ERR` replies in one session before it is closed.
        pub max_errors: u32 = 10,
        /// Commands in one session before it is closed.
        pub max_commands: u32 = 100_000,
        /// Messages a session lists at most: the oldest ones. The rest wait for the next
        /// session, after these are removed.
        pub max_messages: usize = 50_000,
    }
}

choice! {
    /// Whether POP-before-SMTP grants anything.
    pub enum GrantMode {
        /// Never (the default).
        Off = "off",
        /// After a POP3 login, as `[pop_before_smtp]` allows.
        Enforce = "enforce",
    }
}

section! {
    /// POP-before-SMTP, for legacy clients that cannot use SMTP AUTH: after a POP3 login, the
    /// client's IP may submit on the submission ports (never MX) without AUTH, as that
    /// account, for `window`. It is weak (everyone behind the same NAT shares the IP; see
    /// docs/security.md), so it is off by default and hedged: only for `networks`, never for
    /// an IP from which more than one account logged in within the window, never from a
    /// plaintext login, and ended by the account's suspension or password change. Every
    /// sending-side control still applies (sender ownership, limits, containment).
    pub struct PopBeforeSmtp {
        pub mode: GrantMode = GrantMode::Off,
        /// How long a POP3 login lets its IP send.
        pub window: Duration = Duration::secs(10 * 60),
        /// The client networks it may be granted to (`192.0.2.0/24`, `2001:db8::/48`). Empty:
        /// none, whatever `mode` says.
        pub networks: Vec<String> = Vec::new(),
    }
}

section! {
    /// The self-audit (`mailwarden audit`) and its periodic part in the server: the DNS
    /// block lists and the certificate of our own addresses, rechecked every `interval`.
    pub struct Audit {
        /// How often the server rechecks. 0 turns the periodic check off.
        pub interval: Duration = Duration::secs(6 * 3600),
        /// Warn when the certificate expires within this.
        pub cert_warn: Duration = Duration::secs(14 * 86400),
        /// Our public sending addresses, for the PTR, SPF and block-list checks. Empty: the
        /// addresses `hostname` resolves to.
        pub addresses: Vec<String> = Vec::new(),
        /// The address the relay test connects from (a local address of this host that is not
        /// loopback). Empty: 127.0.0.2, which the MX sees as an outside client.
        pub relay_test_from: String = String::new(),
    }
}

section! {
    /// The TLS certificate for all listeners. Without `cert` and `key`, a self-signed ECDSA P-256
    /// certificate for `hostname` is generated once in `data_dir/tls/` and reused.
    pub struct Tls {
        /// PEM certificate chain, leaf first.
        pub cert: Option<PathBuf> = None,
        /// PEM private key (PKCS#8, PKCS#1 or SEC1). Keep it readable only by mailwarden.
        pub key: Option<PathBuf> = None,
    }
}

section! {
    /// DNS resolution for sender checks and outbound routing.
    pub struct Dns {
        /// Nameservers as `ip` or `ip:port`. Empty: the system resolver (`/etc/resolv.conf`).
        pub nameservers: Vec<String> = Vec::new(),
        /// Time allowed for one query attempt.
        pub timeout: Duration = Duration::secs(5),
        /// Attempts per query before it counts as a temporary error.
        pub attempts: usize = 2,
        /// A file of DNSKEY records (zone-file lines, `name TTL IN DNSKEY ...`) that replace
        /// the root zone's key as DNSSEC trust anchors for DANE. Empty: the IANA root keys.
        /// For test beds with their own signed zones.
        pub trust_anchors: Option<PathBuf> = None,
    }
}

choice! {
    /// How a check acts on what it finds.
    pub enum Mode {
        /// Not run.
        Off = "off",
        /// Run and recorded (Authentication-Results, logs); a would-be refusal is logged as
        /// "would reject" and the mail goes through.
        Observe = "observe",
        /// Run, recorded and acted on.
        Enforce = "enforce",
    }
}

section! {
    /// SPF (RFC 7208): is the client allowed to send for the MAIL FROM domain (or, for the null
    /// sender, the HELO name)? Checked for mail arriving on the MX listener; mail from local
    /// accounts is authenticated already.
    pub struct Spf {
        pub mode: Mode = Mode::Enforce,
        /// Reject (`550 5.7.23`) mail whose SPF result is `fail` (`-all`) when the From domain
        /// publishes no DMARC record. With a DMARC record, DMARC decides.
        pub reject_fail_without_dmarc: bool = true,
    }
}

section! {
    /// DKIM (RFC 6376, Ed25519 per RFC 8463). Signatures with rsa-sha1 or RSA keys under 1024
    /// bits never pass (RFC 8301). DKIM alone never rejects: its results feed DMARC and the
    /// Authentication-Results header.
    pub struct Dkim {
        pub mode: Mode = Mode::Enforce,
        /// Sign mail that local accounts submit, with every key `mailwarden dkim keygen` stored
        /// for the `From:` domain (the newest key of each algorithm: Ed25519 and RSA give a
        /// dual signature, RFC 8463 §4). relaxed/relaxed canonicalization.
        pub sign: bool = true,
        /// Header fields to sign, in this order, when present. `From` is always signed, and
        /// signed once more than it occurs (oversigned) so that no `From:` can be added later.
        pub sign_headers: Vec<String> = [
            "From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To", "In-Reply-To",
            "References", "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
            "Content-Disposition", "Content-ID", "Content-Description",
        ]
        .map(String::from)
        .to_vec(),
        /// DKIM signatures verified per message (RFC 6376 §6.1 lets a verifier limit them);
        /// the rest are not looked at. Each costs a DNS lookup and a public-key operation.
        pub max_signatures: usize = 5,
        /// Header fields a signature's `h=` may list; a longer list makes that signature a
        /// `permerror` without hashing anything.
        pub max_signed_fields: usize = 64,
    }
}

section! {
    /// DMARC (RFC 7489): the From domain's published policy, applied to the SPF and DKIM
    /// results with alignment. `p=reject` failing gets `550 5.7.1` at the end of DATA;
    /// `p=quarantine` goes to the recipient's Junk folder; `p=none` is delivered. A
    /// temporary DNS error gets `451 4.7.0`, never a pass.
    pub struct Dmarc {
        pub mode: Mode = Mode::Enforce,
        /// Send RFC 7489 aggregate reports to the `rua` of the domains whose mail we
        /// evaluated, once per `report_interval`, gzip XML, DKIM-signed by the domain of
        /// `report_from`. Only to domains with an authenticated good history with us
        /// (`report_min_good`), within the daily budgets, never to a domain on our DNS domain
        /// lists, and to another domain's address only when it publishes the RFC 7489 §7.1
        /// authorization record. No failure (`ruf`) reports are ever sent.
        pub send_reports: bool = true,
        /// The period each aggregate report covers; reports go out when a period ends.
        pub report_interval: Duration = Duration::secs(86400),
        /// Messages from a domain, authenticated (aligned DKIM or SPF) and accepted, that the
        /// reputation window must hold before we send that domain a report. A domain whose
        /// mail we only ever junked or rejected gets none.
        pub report_min_good: u64 = 3,
        /// Reports sent per day, at most, over all domains.
        pub report_max_per_day: usize = 1000,
        /// Bytes of reports sent per day, at most, over all domains.
        pub report_max_bytes_per_day: ByteSize = ByteSize::mib(100),
        /// The largest report (compressed attachment) sent; a `rua` asking for less
        /// (`mailto:…!10k`) is honoured. A larger report is not sent.
        pub report_max_size: ByteSize = ByteSize::mib(1),
        /// The From address of the reports we send. Empty: `noreply-dmarc@` the first domain.
        pub report_from: String = String::new(),
        /// The `org_name` in our reports. Empty: `hostname`.
        pub report_org: String = String::new(),
    }
}

choice! {
    /// An MTA-STS policy's mode (RFC 8461 §3.2).
    pub enum StsMode {
        /// Senders deliver only to the listed MX hosts, over verified TLS.
        Enforce = "enforce",
        /// Senders deliver as before and report failures.
        Testing = "testing",
        /// The policy is withdrawn.
        None = "none",
    }
}

section! {
    /// The MTA-STS policy we publish for our domains (RFC 8461), served on `listen.mta_sts`.
    /// `mailwarden dns records` prints the `_mta-sts` record whose id changes with it.
    pub struct MtaSts {
        pub mode: StsMode = StsMode::Testing,
        /// MX host names (or `*.example.org`) senders may deliver to. Empty: `hostname`.
        pub mx: Vec<String> = Vec::new(),
        /// How long senders keep the policy (RFC 8461 suggests weeks).
        pub max_age: Duration = Duration::secs(7 * 86400),
        /// The certificate for `mta-sts.<domain>` (PEM chain). Empty: `tls.cert`.
        pub cert: Option<PathBuf> = None,
        /// Its private key. Empty: `tls.key`.
        pub key: Option<PathBuf> = None,
    }
}

section! {
    /// Reports other servers send us: DMARC aggregate (RFC 7489) and failure (RFC 6591 ARF)
    /// reports, and TLS-RPT (RFC 8460). Mail to `address` is parsed, not delivered to a
    /// mailbox; `mailwarden report domains` shows who sends as our domains.
    pub struct Reports {
        /// The address that receives reports; publish it in your DMARC record's `rua` (see
        /// `mailwarden dns records`). Empty: `dmarc-reports@` the first domain.
        pub address: String = String::new(),
        /// Networks (`ip` or `ip/len`) that send our mail besides this server: a source in
        /// a report that is neither ours nor listed here, and fails, is flagged as a likely
        /// forgery.
        pub known_senders: Vec<String> = Vec::new(),
        /// The most a report may decompress to (gzip, zip); a larger one, a decompression
        /// bomb, is refused without being held in memory.
        pub max_size: ByteSize = ByteSize::mib(10),
        /// The deepest XML element nesting accepted (an aggregate report needs 5).
        pub max_depth: usize = 20,
        /// Rows kept per report, at most; a report with more `<record>`s is refused.
        pub max_rows: usize = 10000,
        /// How long reports received, and our decisions about reports we sent, are kept.
        pub retention: Duration = Duration::secs(90 * 86400),
    }
}

section! {
    /// ARC (RFC 8617): the authentication results that forwarders (mailing lists) sealed.
    pub struct ArcCheck {
        pub mode: Mode = Mode::Observe,
        /// Domains whose ARC seal is trusted: when the chain validates and its newest seal is
        /// from one of them, a DMARC failure is overridden (the forwarder vouches for the
        /// original authentication). Empty: ARC is recorded only.
        pub trusted_sealers: Vec<String> = Vec::new(),
        /// ARC sets verified (RFC 8617 allows 50). A longer chain `fail`s unverified: each
        /// set costs a DNS lookup and a seal over all the sets before it.
        pub max_sets: usize = 10,
    }
}

section! {
    /// Reverse DNS (iprev, RFC 8601 §3): does the client's PTR name resolve back to its
    /// address? Recorded in Authentication-Results; screening may act on it.
    pub struct Iprev {
        pub mode: Mode = Mode::Observe,
    }
}

choice! {
    /// What to do with a bare CR or LF inside message content.
    pub enum BareLfMode {
        /// Refuse the message at the end of DATA with `554 5.5.2`.
        Reject = "reject",
        /// Store each bare CR or LF as CRLF. Only `CRLF.CRLF` still ends DATA.
        Normalize = "normalize",
    }
}

section! {
    /// SMTP session limits. Each one bounds something a client controls.
    pub struct Smtp {
        /// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4). Longer lines get
        /// `500 5.5.2`.
        pub max_command_line: usize = 512,
        /// Longest line of message content, CRLF included (RFC 5321 §4.5.3.1.6). A message
        /// with a longer line gets `554 5.6.0`.
        pub max_text_line: usize = 1000,
        /// Largest message accepted (advertised with SIZE, RFC 1870). Larger gets `552 5.3.4`.
        pub max_message_size: ByteSize = ByteSize::mib(25),
        /// Recipients per message. More get `452 4.5.3`.
        pub max_recipients: usize = 100,
        /// Error replies in one session before `421 4.7.0` and close.
        pub max_errors: u32 = 10,
        /// NOOP, RSET, VRFY, HELP, EXPN, HELO/EHLO and empty BDAT chunks per session before
        /// `421 4.7.0` and close.
        pub max_junk_commands: u32 = 100,
        /// Messages per session before `421 4.7.0` and close.
        pub max_messages_per_session: u32 = 1000,
        /// How long to wait for a command (RFC 5321 §4.5.3.2 asks for at least 5 minutes).
        pub idle_timeout: Duration = Duration::secs(300),
        /// How long to wait for each block of message content (RFC 5321 §4.5.3.2.5: 10 minutes
        /// for the terminator).
        pub data_timeout: Duration = Duration::secs(600),
        /// Longest a session may last in total.
        pub max_session_time: Duration = Duration::secs(3600),
        /// Time allowed for a TLS handshake.
        pub tls_handshake_timeout: Duration = Duration::secs(30),
        /// Concurrent sessions over all listeners. Beyond it a new client gets `421 4.7.0`.
        pub max_connections: usize = 20000,
        /// Concurrent sessions from one IP address. Beyond it a new client gets `421 4.7.0`.
        pub max_connections_per_ip: usize = 50,
        /// Bare CR or LF in message content. Either way only `CRLF.CRLF` ends DATA, so one
        /// transaction can never turn into two (SMTP smuggling).
        pub bare_lf: BareLfMode = BareLfMode::Reject,
    }
}

section! {
    /// Mail arriving on the MX listener from other servers.
    pub struct Mx {
        /// Mail from outside whose envelope sender or `From:` is in one of our domains is
        /// refused with `550 5.7.1` (the forged "CEO" mail), unless it carries a passing DKIM
        /// signature aligned with that domain, a trusted ARC sealer
        /// (`arc.trusted_sealers`, with `arc.mode = "enforce"`) vouches for it, or the client is in `trusted_relays`. A
        /// DKIM key lookup that failed for now gets `451 4.7.0`. Our own users send through
        /// the submission ports, where AUTH proves who they are.
        pub local_forgery: Mode = Mode::Enforce,
        /// Networks (`192.0.2.0/24`, `2001:db8::/48`, or single addresses) of relays allowed
        /// to deliver mail as our domains on the MX port: a backup MX, a scanner in front, a
        /// device that sends from inside.
        pub trusted_relays: Vec<String> = Vec::new(),
    }
}

section! {
    /// Bounds on what a client's bytes can cost the server beyond the SMTP session limits:
    /// disk, memory and the work done on each message. Each cap sits where no legitimate
    /// message reaches it.
    pub struct Limits {
        /// Free space the filesystem of `data_dir` must keep. Below it, MAIL and DATA get
        /// `452 4.3.1` instead of a half-written message.
        pub min_free_space: ByteSize = ByteSize::mib(100),
        /// Size of a message's header section. Larger gets `554 5.6.0` at the end of DATA.
        pub max_header_size: ByteSize = ByteSize::mib(1),
        /// Header fields in a message. More get `554 5.6.0` at the end of DATA.
        pub max_header_fields: usize = 1000,
        /// `Received` fields in a message (RFC 5321 §6.3: a loop). More get `554 5.4.6`.
        pub max_received: usize = 100,
        /// MIME nesting depth (multiparts and attached messages; Postfix's
        /// `mime_nesting_limit`). Deeper gets `554 5.6.0`.
        pub max_mime_depth: usize = 100,
        /// Bytes of each message that content scoring reads (its header and link heuristics
        /// and the classifier, which tokenizes at most 256 KiB of their text). Authentication
        /// (DKIM) always covers the whole message. Messages over 64 KiB are checked off the
        /// async workers.
        pub max_scan_bytes: ByteSize = ByteSize::mib(1),
        /// Distinct link hosts collected from one message for the link checks, URI block lists
        /// and the classifier; later links are not looked at.
        pub max_link_hosts: usize = 1000,
        /// Memory for messages being checked at the end of DATA, over all sessions. A message
        /// takes 1.25 times its size plus what content scoring copies of it (at most
        /// `max_scan_bytes`); past the budget it waits its turn, and after five minutes gets
        /// `451 4.3.0`.
        pub message_memory: ByteSize = ByteSize::mib(128),
    }
}

section! {
    /// SMTP AUTH (submission ports only).
    pub struct Auth {
        /// How long a failed AUTH makes the next attempt wait, from any connection of the
        /// same IP or network, or naming the same account. It doubles with each failure of
        /// that key in the last ten minutes, up to `max_failure_delay`; attempts arriving
        /// while the line is more than twice that long get `454 4.7.0` at once.
        pub failure_delay: Duration = Duration::millis(1000),
        /// Upper bound of one failure's delay.
        pub max_failure_delay: Duration = Duration::secs(8),
        /// Failed AUTH attempts in one session before `421 4.7.0` and close.
        pub max_failures_per_session: u32 = 3,
        /// How long a verified password is remembered, as a keyed hash held only in memory, so
        /// that clients that log in for every message do not pay for argon2 each time. `0s`
        /// turns the cache off. A password change invalidates it at once.
        pub cache_ttl: Duration = Duration::secs(300),
        /// Password checks waiting for a verifier thread at most. Past it, AUTH gets
        /// `454 4.7.0` at once: a flood of guesses costs neither unbounded memory nor
        /// everyone's login time.
        pub max_pending_verifications: usize = 64,
        /// The least strength `user add` and `user passwd` accept, on zxcvbn's scale: 0 is
        /// guessed in under 10^3 tries, 1 under 10^6, 2 under 10^8, 3 under 10^10, 4 more.
        /// Guessed and reused passwords are how accounts get hijacked.
        pub min_password_strength: u32 = 3,
        /// The least length, in characters, of a password `user add` and `user passwd`
        /// accept.
        pub min_password_length: usize = 10,
    }
}

section! {
    /// The durable queue. A `250` after DATA means the message and its envelope are on stable
    /// storage; concurrent sessions share each fsync (group commit).
    pub struct Queue {
        /// Messages up to this size are written inside the store's group-committed
        /// transaction. Larger ones go to a spool file that is fsynced on its own, which keeps
        /// memory per session bounded.
        pub inline_max: ByteSize = ByteSize::kib(128),
        /// Threads that write and fsync Maildir files for one delivery batch. Deliveries are
        /// batched: everything that arrives while a batch is busy goes into the next one.
        pub local_concurrency: usize = 8,
        /// Memory for message bodies waiting between their commit and their delivery. Beyond
        /// it, bodies are read back from the store at delivery, so a backlog cannot exhaust
        /// memory.
        pub memory_budget: ByteSize = ByteSize::mib(16),
        /// How a delivered Maildir file is made durable. Either way it is on stable storage
        /// before it becomes visible in `new/` and before the queue records it delivered.
        pub maildir_sync: MaildirSync = MaildirSync::File,
    }
}

section! {
    /// Outbound delivery over SMTP (RFC 5321 §5): MX records in preference order, then the
    /// domain's A/AAAA; a null MX (RFC 7505) fails at once. Recipients that fail temporarily
    /// are retried on `retry_schedule` until `max_age`; then, or on a permanent failure, the
    /// sender gets a delivery status notification (RFC 3464) if it is a local account or its
    /// message passed SPF or DMARC (never for a bounce, so no backscatter).
    pub struct Delivery {
        /// Destination port. Only tests and special setups change it from 25.
        pub port: u16 = 25,
        /// Waits between attempts: the n-th retry waits the n-th entry; past the end, the last
        /// entry repeats.
        pub retry_schedule: Vec<Duration> = vec![
            Duration::secs(60),
            Duration::secs(300),
            Duration::secs(900),
            Duration::secs(1800),
            Duration::secs(3600),
            Duration::secs(7200),
            Duration::secs(14400),
        ],
        /// Give up on a recipient this long after the message arrived, and bounce it.
        pub max_age: Duration = Duration::secs(5 * 86400),
        /// Connections at once to one destination domain.
        pub max_connections_per_domain: usize = 4,
        /// Outbound connections at once in all.
        pub max_connections: usize = 100,
        /// Messages sent over one connection before it is closed and a new one opened.
        pub max_messages_per_connection: usize = 100,
        /// Time allowed to establish a TCP connection to one address. The SMTP command
        /// timeouts follow RFC 5321 §4.5.3.2 (greeting, MAIL, RCPT 5 min; DATA 2 min; each
        /// data block 3 min; the final dot 10 min).
        pub connect_timeout: Duration = Duration::secs(30),
        /// STARTTLS is used whenever the destination offers it; if the handshake fails, the
        /// message goes without TLS. For the domains listed here TLS is required: without it,
        /// recipients are deferred. Certificates are not verified (as Postfix's `encrypt`).
        pub require_tls: Vec<String> = Vec::new(),
        /// Deliver to loopback, private, link-local, shared and documentation addresses. Off,
        /// an authenticated user could point an MX or A record at what only this server can
        /// reach (its own admin ports, an internal network); such recipients fail with
        /// `5.4.4`. Mail routed back to one of our own listeners always fails (`5.4.6`).
        pub allow_private_destinations: bool = false,
        /// Local mailboxes over LMTP (RFC 2033) at `host:port` instead of the Maildir tree in
        /// `data_dir`: in a cluster, every node hands local mail to one mailbox server
        /// (Dovecot's `lmtp` service). Mail for Junk carries `X-Spam-Flag: YES` for its
        /// filter. Empty: Maildir.
        pub lmtp: String = String::new(),
        /// Apply the MTA-STS policy (RFC 8461) a destination domain publishes: in `enforce`
        /// mode mail goes only to MX hosts the policy names, over TLS with a certificate valid
        /// for the host (webpki roots and `extra_roots`), or waits; `testing` mode only
        /// reports failures (TLS-RPT).
        pub mta_sts: bool = true,
        /// Apply DANE (RFC 7672): for an MX host whose MX and TLSA answers validate under
        /// DNSSEC, the certificate must match a TLSA record (DANE-EE or DANE-TA), or the mail
        /// waits; there is never a plaintext fallback. DANE takes precedence over MTA-STS.
        pub dane: bool = true,
        /// PEM files of certificate authorities trusted for MTA-STS besides the webpki roots
        /// (a private CA; tests).
        pub extra_roots: Vec<PathBuf> = Vec::new(),
        /// The HTTPS port MTA-STS policies are fetched from (RFC 8461 says 443; tests change
        /// it).
        pub mta_sts_port: u16 = 443,
    }
}

section! {
    /// Mail that local accounts submit (ports 587 and 465).
    pub struct Submission {
        /// Leave the client's HELO name and IP address out of the Received header, so a
        /// message never reveals the sender's private network address or machine name. The
        /// header still records our host, the protocol (ESMTPSA) and the queue id.
        pub hide_client: bool = false,
    }
}

section! {
    /// Containing spambots and hijacked accounts on the submission ports: limits per account,
    /// triggers that suspend an account by themselves (`user status` shows why; the postmaster
    /// is told), and AUTH brute-force blocking. Defaults fit a university: a heavy but honest
    /// sender is never stopped, a blast from a stolen password is within seconds.
    pub struct Containment {
        /// Messages one account may submit per hour; beyond, `451 4.7.1` until the hour has
        /// room again.
        pub max_messages_per_hour: usize = 200,
        /// Distinct recipients one account may write to per day; beyond, `451 4.7.1`.
        pub max_recipients_per_day: usize = 1000,
        /// Messages per hour submitted with one envelope sender domain, over all accounts
        /// (a domain grant or many hijacked accounts at once); beyond, `451 4.7.1`.
        pub max_messages_per_hour_per_domain: usize = 10000,
        /// New connections per minute from one IP, on every listener; beyond, `421 4.7.0`
        /// at connect. 0 turns it off.
        pub max_connections_per_minute_per_ip: usize = 600,
        /// Suspend an account that submits more messages than this within one minute (or more
        /// than `burst_factor` times its usual per-minute volume, if that is higher).
        pub burst_per_minute: usize = 15,
        /// How far above its own usual hourly volume (a moving average over the hours it was
        /// active) an account may go before it is suspended.
        pub burst_factor: f64 = 4.0,
        /// The hourly burst trigger never fires below this many messages in the hour, nor
        /// before the account has a few active hours of history.
        pub burst_per_hour_floor: usize = 300,
        /// Suspend after this many distinct new recipients (never written to before) within
        /// an hour.
        pub new_recipients_per_hour: usize = 300,
        /// Suspend after this many RCPTs to local addresses that do not exist within ten
        /// minutes (address guessing with a stolen account).
        pub unknown_recipients: usize = 20,
        /// Suspend when one account logs in from this many different networks (/24, /64)
        /// within an hour.
        pub login_networks_per_hour: usize = 10,
        /// Suspend when remote servers refuse, with a 5xx reply, more than this many
        /// recipients of one account's mail within an hour (Exim's BlockCracking).
        pub remote_rejections_per_hour: usize = 30,
        /// Suspend when this many of an account's messages within an hour are held because
        /// their content scores as spam (`scoring.quarantine`).
        pub spam_messages_per_hour: usize = 3,
        /// AUTH failures from one IP within ten minutes before that IP is blocked. Until then
        /// each failure pushes the next attempt on by `auth.failure_delay`, doubled for each
        /// earlier failure in that time from the IP, its network or for the account named.
        pub auth_failures_per_ip: usize = 10,
        /// AUTH failures from one /24 (/64) within ten minutes before the whole network is
        /// blocked. Failures never lock an account: its owner, from a clean network, gets in.
        pub auth_failures_per_network: usize = 30,
        /// How long a blocked IP or network gets `454 4.7.0` for AUTH.
        pub auth_block_time: Duration = Duration::secs(900),
        /// Other limits for some accounts or groups, the first match winning. Each entry is a
        /// `[[containment.overrides]]` table with `accounts` (addresses, or `@domain` for
        /// every account of a domain) and any of `max_messages_per_hour`,
        /// `max_recipients_per_day` and `burst_per_minute`.
        pub overrides: Vec<LimitOverride> = Vec::new(),
    }
}

section! {
    /// Content scoring of mail from other servers: header-forgery and link heuristics (and URI
    /// block lists) add up to a score, which thresholds map to actions. Sender authentication
    /// (DMARC and friends) decides on its own first; a score never softens its verdict.
    pub struct Scoring {
        /// `observe` computes, records and logs the would-be action without acting.
        pub mode: Mode = Mode::Enforce,
        /// From this score on, the message carries `X-Spam-Score` and `X-Spam-Status`.
        pub tag: f64 = 2.5,
        /// From this score on, it is delivered to the recipients' Junk folder.
        pub junk: f64 = 5.0,
        /// From this score on, it is kept in quarantine for an administrator
        /// (`mailwarden quarantine`), not delivered.
        pub quarantine: f64 = 9.0,
        /// From this score on, it is refused with `550 5.7.1`.
        pub reject: f64 = 12.0,
        /// Domain block lists asked for the hosts of links in the message (at most 10 hosts),
        /// each `{ zone, weight, codes }` like `screening.dnsbl.domain_zones`.
        pub uribl_zones: Vec<ListZone> = Vec::new(),
        /// Put this before the Subject of mail scoring at `junk` or above, e.g. `[SPAM]`.
        /// Empty: off. It breaks the sender's DKIM signature over Subject for later hops.
        pub subject_tag: String = String::new(),
        /// Add `X-Mailwarden-Warning: The sender of this message could not be verified` to
        /// mail whose sender no check verified, so readers notice forgeries.
        pub warning_header: bool = false,
        /// The weight of a scored reason, by its code, over the learned and built-in ones:
        /// `weights = { "headers.date_past" = 0.5, "content.classifier_spam" = 6.0 }`. The
        /// classifier's weight is multiplied by its strength (0 to 1). `mailwarden explain`
        /// shows the weight each reason was given, and where it came from.
        pub weights: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new(),
    }
}

section! {
    /// Sender reputation from our own history: per identity (the authenticated From address,
    /// the DMARC-aligned From domain, the client's /32, /24 and /16, or /64 and /48), what we
    /// did with its mail and what users marked as spam or ham. It is a scored reason of the
    /// content score (`reputation.*`, weighed like the others), and trusts only what an
    /// authentication result supports: unauthenticated From addresses are neither credited
    /// nor blamed.
    pub struct Reputation {
        /// `off` neither keeps history nor scores; `observe` and `enforce` do both (whether
        /// the score acts is `scoring.mode`'s).
        pub mode: Mode = Mode::Enforce,
        /// How far back history counts.
        pub window: Duration = Duration::secs(90 * 86400),
        /// Messages an identity needs before its history says anything.
        pub min_messages: u64 = 3,
    }
}

section! {
    /// Learning from users: a message a user moves into Junk (through any IMAP server on the
    /// Maildir) is learned as spam by the classifier and reputation, one moved out of Junk as
    /// ham; moved back, it is unlearned.
    pub struct Learning {
        /// `off` does not look; `observe` and `enforce` learn.
        pub mode: Mode = Mode::Enforce,
        /// How often the mailboxes are looked at.
        pub scan_interval: Duration = Duration::secs(30),
    }
}

section! {
    /// Where durable state lives: accounts, the queue, counters, screening's memory,
    /// reputation, records, quarantine and the classifier (`docs/cluster.md`).
    pub struct StoreConfig {
        /// Empty: the embedded SQLite store in `data_dir` (one node, nothing to set up).
        /// `postgres://user:password@host:port/db`: a PostgreSQL every node of a cluster
        /// shares. Its migrations run at start; `mailwarden store copy` moves a single node's
        /// state into it.
        #[default_doc = "embedded SQLite"]
        pub url: String = String::new(),
        /// This node's name in a cluster: it marks the queue's delivery leases, and a node
        /// restarted under the same name takes its own back at once. Empty: `hostname`. Nodes
        /// sharing a store must have different names.
        pub node: String = String::new(),
        /// How long a node's claim on a recipient's delivery lasts. It is renewed just before
        /// each attempt; a node that dies holding one leaves it to the others after this long.
        /// Keep it above the longest single attempt (`delivery.connect_timeout` and the SMTP
        /// timeouts of RFC 5321, for each MX host tried).
        pub lease: Duration = Duration::secs(600),
    }
}

section! {
    /// Decision records: one per SMTP transaction, for `mailwarden log search` and
    /// `mailwarden explain`.
    pub struct Records {
        /// How long records are kept.
        pub retention: Duration = Duration::secs(30 * 86400),
    }
}

section! {
    /// Limits for a group of accounts (one `[[containment.overrides]]` entry).
    pub struct LimitOverride {
        /// Accounts this applies to: addresses, or `@domain` for every account of a domain.
        pub accounts: Vec<String> = Vec::new(),
        pub max_messages_per_hour: Option<usize> = None,
        pub max_recipients_per_day: Option<usize> = None,
        pub burst_per_minute: Option<usize> = None,
    }
}

choice! {
    /// How delivered Maildir files are made durable before they are recorded as delivered.
    pub enum MaildirSync {
        /// fsync each file. Touches nothing but mailwarden's own files.
        File = "file",
        /// One `syncfs` for each delivery batch. Cheaper per message under load, but it also
        /// flushes every other dirty file on the same filesystem: use it when `data_dir` has a
        /// filesystem of its own.
        Filesystem = "filesystem",
    }
}

choice! {
    /// Log line format.
    pub enum LogFormat {
        /// `key=value` lines for people.
        Text = "text",
        /// One JSON object per line for log pipelines.
        Json = "json",
    }
}

section! {
    /// Logging, to standard error.
    pub struct Log {
        /// A tracing filter: `info`, `debug`, or per module, e.g. `info,mailwarden::queue=debug`.
        /// `RUST_LOG` overrides it.
        pub level: String = "info".to_string(),
        pub format: LogFormat = LogFormat::Text,
    }
}

pub fn default_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_lowercase())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Where the running configuration came from.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Defaults,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Defaults => f.write_str("built-in defaults"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub source: Source,
}

/// Find and read the configuration (see the module docs for the lookup order).
pub fn load(explicit: Option<&Path>) -> anyhow::Result<Loaded> {
    let path = match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => match std::env::var_os("MAILWARDEN_CONFIG") {
            Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
            _ => Some(PathBuf::from("mailwarden.toml")).filter(|p| p.exists()),
        },
    };
    let Some(path) = path else {
        let config = Config::default();
        config.validate()?;
        return Ok(Loaded {
            config,
            source: Source::Defaults,
        });
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let mut config = parse(&text).with_context(|| format!("in config file {}", path.display()))?;
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    config.resolve_paths(&base);
    config
        .validate()
        .with_context(|| format!("in config file {}", path.display()))?;
    Ok(Loaded {
        config,
        source: Source::File(path),
    })
}

pub fn parse(text: &str) -> anyhow::Result<Config> {
    Ok(toml::from_str(text)?)
}

impl Config {
    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data_dir);
        if let Some(p) = self.tls.cert.as_mut() {
            fix(p);
        }
        if let Some(p) = self.tls.key.as_mut() {
            fix(p);
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let mut errs = Vec::new();
        if mailwarden_proto::address::domain(&self.hostname, false).is_err() {
            errs.push(format!(
                "hostname {:?} is not a valid domain name",
                self.hostname
            ));
        }
        for code in self.scoring.weights.keys() {
            if !crate::checks::weights::weighed().any(|k| k.code() == code.as_str()) {
                errs.push(format!(
                    "scoring.weights: {code:?} is not a weighted reason (one of {})",
                    crate::checks::weights::weighed()
                        .map(|k| k.code())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        if self.domains.is_empty() {
            errs.push("domains must list at least one local domain".to_string());
        }
        for d in &self.domains {
            if mailwarden_proto::address::domain(d, false).is_err() {
                errs.push(format!("domains: {d:?} is not a valid domain name"));
            }
        }
        if !self.postmaster.is_empty()
            && mailwarden_proto::address::parse_mailbox(&self.postmaster, false).is_err()
        {
            errs.push(format!(
                "postmaster {:?} is not an address",
                self.postmaster
            ));
        }
        for (name, addr) in self.listeners() {
            if !addr.is_empty() && addr.parse::<SocketAddr>().is_err() {
                errs.push(format!("listen.{name} = {addr:?} is not ip:port"));
            }
        }
        if !self.listen.metrics.is_empty() {
            match self.listen.metrics.parse::<SocketAddr>() {
                Ok(a) if a.ip().is_loopback() => {}
                Ok(_) => errs.push(format!(
                    "listen.metrics = {:?}: admin surfaces listen on loopback only",
                    self.listen.metrics
                )),
                Err(_) => errs.push(format!(
                    "listen.metrics = {:?} is not ip:port",
                    self.listen.metrics
                )),
            }
        }
        if !self.listen.admin.is_empty() {
            match self.listen.admin.parse::<SocketAddr>() {
                Ok(a) if a.ip().is_loopback() => {}
                Ok(_) if self.admin.allow_remote && self.admin.tls => {}
                Ok(_) => errs.push(format!(
                    "listen.admin = {:?}: the console listens on loopback only, unless \
                     admin.allow_remote and admin.tls are both on",
                    self.listen.admin
                )),
                Err(_) => errs.push(format!(
                    "listen.admin = {:?} is not ip:port",
                    self.listen.admin
                )),
            }
        }
        for (name, addr) in [
            ("autoconfig", &self.listen.autoconfig),
            ("pop3s", &self.listen.pop3s),
            ("pop3", &self.listen.pop3),
        ] {
            if !addr.is_empty() && addr.parse::<SocketAddr>().is_err() {
                errs.push(format!("listen.{name} = {addr:?} is not ip:port"));
            }
        }
        for (key, v) in [
            ("autoconfig.imap", &self.autoconfig.imap),
            ("autoconfig.pop3", &self.autoconfig.pop3),
        ] {
            if !v.is_empty() && crate::autoconfig::host_port(v).is_none() {
                errs.push(format!("{key} = {v:?} is not host:port"));
            }
        }
        for a in &self.admin.accounts {
            if mailwarden_proto::address::parse_mailbox(a, false).is_err() {
                errs.push(format!("admin.accounts: {a:?} is not an address"));
            }
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            errs.push("tls.cert and tls.key must be given together".to_string());
        }
        for ns in &self.dns.nameservers {
            if parse_nameserver(ns).is_none() {
                errs.push(format!("dns.nameservers: {ns:?} is not ip or ip:port"));
            }
        }
        for n in &self.mx.trusted_relays {
            if let Err(e) = n.parse::<crate::util::Network>() {
                errs.push(format!("mx.trusted_relays: {e}"));
            }
        }
        for n in &self.pop_before_smtp.networks {
            if let Err(e) = n.parse::<crate::util::Network>() {
                errs.push(format!("pop_before_smtp.networks: {e}"));
            }
        }
        let w = self.pop_before_smtp.window.get().as_secs();
        if !(1..=86400).contains(&w) {
            errs.push("pop_before_smtp.window: 1 second to 1 day".into());
        }
        let p = &self.pop3;
        if p.max_errors < 1 || p.max_commands < 1 || p.max_messages < 1 {
            errs.push("pop3 limits must be at least 1".into());
        }
        for n in &self.reports.known_senders {
            if let Err(e) = n.parse::<crate::util::Network>() {
                errs.push(format!("reports.known_senders: {e}"));
            }
        }
        if self.dmarc.report_interval.get().as_secs() < 60 {
            errs.push("dmarc.report_interval: at least 1 minute".to_string());
        }
        for (key, a) in [
            ("reports.address", self.reports_address()),
            ("dmarc.report_from", self.report_from()),
        ] {
            if !a.contains('@') {
                errs.push(format!("{key}: {a:?} is not an address"));
            }
        }
        let l = &self.limits;
        if l.max_header_fields < 1
            || l.max_received < 1
            || l.max_mime_depth < 1
            || l.max_link_hosts < 1
            || self.dkim.max_signatures < 1
            || self.dkim.max_signed_fields < 1
            || self.arc.max_sets < 1
            || self.auth.max_pending_verifications < 1
        {
            errs.push(
                "limits, dkim and arc caps and auth.max_pending_verifications must be at least 1"
                    .into(),
            );
        }
        if self.auth.min_password_strength > 4 {
            errs.push("auth.min_password_strength is 0 to 4".into());
        }
        let s = &self.smtp;
        if s.max_command_line < 512 {
            errs.push("smtp.max_command_line must be at least 512 (RFC 5321)".into());
        }
        if s.max_text_line < 1000 {
            errs.push("smtp.max_text_line must be at least 1000 (RFC 5321)".into());
        }
        if s.max_recipients < 1
            || s.max_errors < 1
            || s.max_connections < 1
            || s.max_connections_per_ip < 1
        {
            errs.push("smtp limits must be at least 1".into());
        }
        let d = &self.delivery;
        if d.retry_schedule.is_empty() || d.retry_schedule.iter().any(|t| t.get().is_zero()) {
            errs.push("delivery.retry_schedule must list at least one wait, none of them 0".into());
        }
        if d.max_connections_per_domain < 1
            || d.max_connections < 1
            || d.max_messages_per_connection < 1
        {
            errs.push("delivery limits must be at least 1".into());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            bail!("invalid configuration:\n  {}", errs.join("\n  "))
        }
    }

    pub fn listeners(&self) -> [(&'static str, &str); 3] {
        [
            ("mx", self.listen.mx.as_str()),
            ("submission", self.listen.submission.as_str()),
            ("submissions", self.listen.submissions.as_str()),
        ]
    }

    fn first_domain(&self) -> &str {
        self.domains
            .first()
            .map(String::as_str)
            .unwrap_or("localhost")
    }

    /// Where reports from other servers are received (`reports.address`).
    pub fn reports_address(&self) -> String {
        if self.reports.address.is_empty() {
            format!("dmarc-reports@{}", self.first_domain())
        } else {
            self.reports.address.to_lowercase()
        }
    }

    /// The From address of the DMARC reports we send (`dmarc.report_from`).
    pub fn report_from(&self) -> String {
        if self.dmarc.report_from.is_empty() {
            format!("noreply-dmarc@{}", self.first_domain())
        } else {
            self.dmarc.report_from.to_lowercase()
        }
    }

    /// The address postmaster mail is delivered to.
    pub fn postmaster_address(&self) -> String {
        if self.postmaster.is_empty() {
            format!(
                "postmaster@{}",
                self.domains
                    .first()
                    .map(String::as_str)
                    .unwrap_or("localhost")
            )
        } else {
            self.postmaster.to_lowercase()
        }
    }

    /// The directory holding the mailbox of `local@domain`.
    pub fn maildir(&self, local: &str, domain: &str) -> PathBuf {
        self.data_dir
            .join("mail")
            .join(domain)
            .join(local)
            .join("Maildir")
    }
}

/// `1.2.3.4`, `1.2.3.4:53`, `::1` or `[::1]:53`.
pub fn parse_nameserver(s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    s.parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, 53))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_loopback() {
        let c = Config::default();
        c.validate().unwrap();
        for (_, a) in c.listeners() {
            assert!(a.parse::<SocketAddr>().unwrap().ip().is_loopback());
        }
        assert_eq!(c.domains, vec!["localhost"]);
        assert_eq!(c.postmaster_address(), "postmaster@localhost");
    }

    #[test]
    fn issue_keys_parse() {
        let c = parse(
            r#"
            hostname = "mx.example.test"
            data_dir = "/var/lib/mailwarden"
            domains  = ["example.test"]
            [listen]
            mx          = "0.0.0.0:25"
            submission  = "0.0.0.0:587"
            submissions = ""
            [tls]
            cert = "/path/fullchain.pem"
            key  = "/path/key.pem"
            [dns]
            nameservers = ["127.0.0.1:5353"]
            [smtp]
            max_message_size = "10MiB"
            idle_timeout = "2m"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.listen.submissions, "");
        assert_eq!(c.smtp.max_message_size, ByteSize::mib(10));
        assert_eq!(c.smtp.idle_timeout, Duration::secs(120));
        assert_eq!(
            parse_nameserver(&c.dns.nameservers[0]),
            "127.0.0.1:5353".parse().ok()
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = parse("hostnme = \"x\"").unwrap_err();
        assert!(format!("{e:#}").contains("hostnme"), "{e:#}");
    }

    #[test]
    fn invalid_values_are_reported_together() {
        let c = parse("domains = []\n[listen]\nmx = \"nowhere\"\n[tls]\ncert = \"/x\"").unwrap();
        let e = format!("{:#}", c.validate().unwrap_err());
        assert!(e.contains("domains"), "{e}");
        assert!(e.contains("listen.mx"), "{e}");
        assert!(e.contains("tls.cert"), "{e}");
    }

    #[test]
    fn metrics_listen_on_loopback_only() {
        let c = parse("[listen]\nmetrics = \"0.0.0.0:9100\"").unwrap();
        let e = format!("{:#}", c.validate().unwrap_err());
        assert!(e.contains("loopback only"), "{e}");
        for ok in ["127.0.0.1:9100", "[::1]:9100", ""] {
            let c = parse(&format!("[listen]\nmetrics = \"{ok}\"")).unwrap();
            assert!(c.validate().is_ok(), "{ok}");
        }
    }
}
