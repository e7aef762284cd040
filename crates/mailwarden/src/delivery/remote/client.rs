//! The outbound SMTP client (RFC 5321 client side, RFC 3207 STARTTLS, RFC 2920 PIPELINING).
//!
//! One [`Conn`] is one connection to one host; it can carry several transactions. Every wait
//! has the RFC 5321 §4.5.3.2 timeout for its step. Replies are read with bounded line length
//! and line count, so a hostile server cannot make us buffer without limit.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// RFC 5321 §4.5.3.2 timeouts.
pub const GREETING_TIMEOUT: Duration = Duration::from_secs(300);
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
pub const DATA_INIT_TIMEOUT: Duration = Duration::from_secs(120);
pub const DATA_BLOCK_TIMEOUT: Duration = Duration::from_secs(180);
pub const DATA_END_TIMEOUT: Duration = Duration::from_secs(600);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_REPLY_LINE: u64 = 4096;
const MAX_REPLY_LINES: usize = 100;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A reply from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteReply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl RemoteReply {
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// `550 5.1.1 text text`, one line.
    pub fn text(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" "))
            .trim()
            .to_string()
    }

    /// The enhanced status code (RFC 3463) if the reply has one matching its class, else the
    /// generic one for the class.
    pub fn status(&self) -> String {
        let class = self.code / 100;
        if let Some(first) = self.lines.first()
            && let Some(tok) = first.split_whitespace().next()
        {
            let parts: Vec<&str> = tok.split('.').collect();
            if parts.len() == 3
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
                && parts[0] == class.to_string()
            {
                return tok.to_string();
            }
        }
        format!("{class}.0.0")
    }
}

/// Why a connection could not be used.
#[derive(Debug, Clone)]
pub enum ConnectError {
    /// TCP, greeting or EHLO failed: try the next address or host.
    Unreachable(String),
    /// The TLS handshake failed: reconnect without TLS if the policy allows.
    TlsFailed(String),
    /// TLS is required and the host does not offer it.
    TlsUnavailable(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Unreachable(s)
            | ConnectError::TlsFailed(s)
            | ConnectError::TlsUnavailable(s) => f.write_str(s),
        }
    }
}

#[derive(Clone)]
pub enum TlsMode {
    /// Never STARTTLS (a retry after a failed handshake).
    Off,
    /// STARTTLS when offered.
    Opportunistic,
    /// STARTTLS or nothing.
    Required,
    /// STARTTLS or nothing, and the certificate checked by this config's verifier (MTA-STS:
    /// webpki and the host's name; DANE: the TLSA records).
    Verified(Arc<rustls::ClientConfig>),
}

impl TlsMode {
    fn required(&self) -> bool {
        matches!(self, TlsMode::Required | TlsMode::Verified(_))
    }
}

#[derive(Debug, Default, Clone)]
pub struct Extensions {
    pub pipelining: bool,
    pub starttls: bool,
    pub eight_bit: bool,
    pub smtputf8: bool,
    pub size: Option<u64>,
}

impl Extensions {
    pub fn parse(reply: &RemoteReply) -> Extensions {
        let mut e = Extensions::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let kw = words.next().unwrap_or("").to_ascii_uppercase();
            match kw.as_str() {
                "PIPELINING" => e.pipelining = true,
                "STARTTLS" => e.starttls = true,
                "8BITMIME" => e.eight_bit = true,
                "SMTPUTF8" => e.smtputf8 = true,
                "SIZE" => e.size = words.next().and_then(|n| n.parse().ok()).filter(|n| *n > 0),
                _ => {}
            }
        }
        e
    }
}

pub struct Conn {
    io: BufReader<Box<dyn Io>>,
    pub ext: Extensions,
    /// `name[ip]` for logs and DSNs.
    pub remote: String,
    pub tls: Option<String>,
    /// Set when the connection can no longer be trusted to be in sync.
    pub broken: bool,
}

/// What one transaction did for each recipient, in the order given.
#[derive(Debug, Clone)]
pub enum RcptResult {
    Accepted(RemoteReply),
    Deferred(String, String),
    Failed(String, String),
}

/// A message to send: its sender, recipients, and content as chunks (our prepended headers,
/// then the stored message), CRLF line ends.
pub struct Outgoing<'a> {
    pub sender: &'a str,
    pub rcpts: &'a [String],
    pub content: &'a [&'a [u8]],
}

#[derive(Clone)]
pub struct Connector {
    pub helo: String,
    pub port: u16,
    pub connect_timeout: Duration,
    pub tls: Arc<rustls::ClientConfig>,
}

impl Connector {
    pub async fn connect(
        &self,
        host: &str,
        ip: IpAddr,
        mode: TlsMode,
    ) -> Result<Conn, ConnectError> {
        let remote = format!("{host}[{ip}]");
        let unreachable = |what: String| ConnectError::Unreachable(format!("{remote}: {what}"));
        let sock = match timeout(
            self.connect_timeout,
            TcpStream::connect(SocketAddr::new(ip, self.port)),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(unreachable(format!("connect failed: {e}"))),
            Err(_) => return Err(unreachable("connect timed out".into())),
        };
        let _ = sock.set_nodelay(true);
        let mut conn = Conn {
            io: BufReader::new(Box::new(sock) as Box<dyn Io>),
            ext: Extensions::default(),
            remote: remote.clone(),
            tls: None,
            broken: false,
        };
        let greeting = conn
            .read_reply(GREETING_TIMEOUT)
            .await
            .map_err(|e| unreachable(format!("no greeting: {e}")))?;
        if greeting.code != 220 {
            return Err(unreachable(format!("greeting: {}", greeting.text())));
        }
        conn.hello(&self.helo).await.map_err(unreachable)?;
        if matches!(mode, TlsMode::Off) {
            return Ok(conn);
        }
        if !conn.ext.starttls {
            if mode.required() {
                conn.quit().await;
                return Err(ConnectError::TlsUnavailable(format!(
                    "{remote}: TLS is required but STARTTLS is not offered"
                )));
            }
            return Ok(conn);
        }
        let r = conn
            .command("STARTTLS", COMMAND_TIMEOUT)
            .await
            .map_err(unreachable)?;
        if r.code != 220 {
            return Err(ConnectError::TlsFailed(format!(
                "{remote}: STARTTLS refused: {}",
                r.text()
            )));
        }
        // The server must not have sent anything after its 220 (RFC 3207 §4): anything
        // buffered would be injected plaintext.
        if !conn.io.buffer().is_empty() {
            return Err(ConnectError::TlsFailed(format!(
                "{remote}: data after the STARTTLS reply"
            )));
        }
        let name = rustls_pki_types::ServerName::try_from(host.to_string())
            .unwrap_or_else(|_| rustls_pki_types::ServerName::IpAddress(ip.into()));
        let inner = conn.io.into_inner();
        let (config, verified) = match &mode {
            TlsMode::Verified(c) => (c.clone(), true),
            _ => (self.tls.clone(), false),
        };
        let connector = tokio_rustls::TlsConnector::from(config);
        let handshake = timeout(TLS_HANDSHAKE_TIMEOUT, connector.connect(name, inner)).await;
        crate::metrics::tls_handshake("outbound", matches!(handshake, Ok(Ok(_))));
        let tls = match handshake {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                return Err(ConnectError::TlsFailed(format!(
                    "{remote}: TLS handshake failed: {e}"
                )));
            }
            Err(_) => {
                return Err(ConnectError::TlsFailed(format!(
                    "{remote}: TLS handshake timed out"
                )));
            }
        };
        let (_, session) = tls.get_ref();
        let desc = format!(
            "{} {}{}",
            session
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            session
                .negotiated_cipher_suite()
                .map(|c| format!("{:?}", c.suite()))
                .unwrap_or_default(),
            if verified { " verified" } else { "" }
        );
        let mut conn = Conn {
            io: BufReader::new(Box::new(tls) as Box<dyn Io>),
            ext: Extensions::default(),
            remote,
            tls: Some(desc),
            broken: false,
        };
        // RFC 3207 §4.2: forget what was learnt before TLS and say EHLO again.
        conn.hello(&self.helo)
            .await
            .map_err(|e| ConnectError::Unreachable(format!("{}: {e}", conn.remote)))?;
        Ok(conn)
    }
}

impl Conn {
    async fn hello(&mut self, helo: &str) -> Result<(), String> {
        let r = self
            .command(&format!("EHLO {helo}"), COMMAND_TIMEOUT)
            .await?;
        if r.code == 250 {
            self.ext = Extensions::parse(&r);
            return Ok(());
        }
        let r = self
            .command(&format!("HELO {helo}"), COMMAND_TIMEOUT)
            .await?;
        if r.code != 250 {
            return Err(format!("HELO refused: {}", r.text()));
        }
        self.ext = Extensions::default();
        Ok(())
    }

    async fn write(&mut self, data: &[u8], limit: Duration) -> Result<(), String> {
        let r = timeout(limit, self.io.get_mut().write_all(data)).await;
        self.written(r)
    }

    async fn flush(&mut self, limit: Duration) -> Result<(), String> {
        let r = timeout(limit, self.io.get_mut().flush()).await;
        self.written(r)
    }

    /// A failed or late write leaves the connection out of sync for good.
    fn written(
        &mut self,
        r: Result<std::io::Result<()>, tokio::time::error::Elapsed>,
    ) -> Result<(), String> {
        let e = match r {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => format!("write failed: {e}"),
            Err(_) => "write timed out".into(),
        };
        self.broken = true;
        Err(e)
    }

    async fn command(&mut self, cmd: &str, limit: Duration) -> Result<RemoteReply, String> {
        self.write(format!("{cmd}\r\n").as_bytes(), limit).await?;
        self.flush(limit).await?;
        self.read_reply(limit).await
    }

    /// Read one (possibly multiline) reply.
    pub async fn read_reply(&mut self, limit: Duration) -> Result<RemoteReply, String> {
        match timeout(limit, self.read_reply_inner()).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.broken = true;
                Err(e)
            }
            Err(_) => {
                self.broken = true;
                Err("timed out waiting for a reply".into())
            }
        }
    }

    async fn read_reply_inner(&mut self) -> Result<RemoteReply, String> {
        let mut reply = RemoteReply {
            code: 0,
            lines: Vec::new(),
        };
        loop {
            let mut line = Vec::new();
            let n = (&mut self.io)
                .take(MAX_REPLY_LINE)
                .read_until(b'\n', &mut line)
                .await
                .map_err(|e| format!("read failed: {e}"))?;
            if n == 0 {
                return Err("connection closed by the server".into());
            }
            if line.last() != Some(&b'\n') {
                return Err("reply line too long".into());
            }
            if reply_line(&mut reply, &line)? {
                return Ok(reply);
            }
        }
    }

    /// Run one transaction. An `Err` means the connection failed midway: the caller treats
    /// every recipient not already final as deferred.
    pub async fn send(&mut self, msg: &Outgoing<'_>) -> Result<Vec<RcptResult>, String> {
        let size: usize = msg.content.iter().map(|c| c.len()).sum();
        let eight_bit = msg.content.iter().any(|c| c.iter().any(|b| *b >= 0x80));
        let mut mail = format!("MAIL FROM:<{}>", msg.sender);
        if self.ext.size.is_some() {
            mail.push_str(&format!(" SIZE={size}"));
        }
        if eight_bit && self.ext.eight_bit {
            mail.push_str(" BODY=8BITMIME");
        }
        let remote = self.remote.clone();
        let said = |r: &RemoteReply| format!("{remote} said: {}", r.text());
        let (mail_reply, rcpt_replies, data_reply) = if self.ext.pipelining {
            // RFC 2920: MAIL, every RCPT and DATA in one write, then the replies in order.
            let mut batch = format!("{mail}\r\n");
            for r in msg.rcpts {
                batch.push_str(&format!("RCPT TO:<{r}>\r\n"));
            }
            batch.push_str("DATA\r\n");
            self.write(batch.as_bytes(), COMMAND_TIMEOUT).await?;
            self.flush(COMMAND_TIMEOUT).await?;
            let m = self.read_reply(COMMAND_TIMEOUT).await?;
            let mut rr = Vec::new();
            for _ in msg.rcpts {
                rr.push(self.read_reply(COMMAND_TIMEOUT).await?);
            }
            let d = self.read_reply(DATA_INIT_TIMEOUT).await?;
            (m, rr, Some(d))
        } else {
            let m = self.command(&mail, COMMAND_TIMEOUT).await?;
            let mut rr = Vec::new();
            if m.is_positive() {
                for r in msg.rcpts {
                    rr.push(
                        self.command(&format!("RCPT TO:<{r}>"), COMMAND_TIMEOUT)
                            .await?,
                    );
                }
            }
            let d = if rr.iter().any(RemoteReply::is_positive) {
                Some(self.command("DATA", DATA_INIT_TIMEOUT).await?)
            } else {
                None
            };
            (m, rr, d)
        };

        let mut results: Vec<RcptResult> = Vec::with_capacity(msg.rcpts.len());
        if !mail_reply.is_positive() {
            for _ in msg.rcpts {
                results.push(classify(&mail_reply, said(&mail_reply)));
            }
            self.finish_failed(data_reply.as_ref()).await?;
            return Ok(results);
        }
        for r in &rcpt_replies {
            results.push(if r.is_positive() {
                RcptResult::Accepted(r.clone())
            } else {
                classify(r, said(r))
            });
        }
        let accepted = results.iter().any(|r| matches!(r, RcptResult::Accepted(_)));
        let Some(data_reply) = data_reply else {
            self.reset().await?;
            return Ok(results);
        };
        if data_reply.code != 354 {
            for r in results.iter_mut() {
                if matches!(r, RcptResult::Accepted(_)) {
                    *r = classify(&data_reply, said(&data_reply));
                }
            }
            self.reset().await?;
            return Ok(results);
        }
        if !accepted {
            // A server that said 354 with no valid recipient gets an empty message
            // (RFC 2920 §3.1); whatever it replies changes nothing.
            self.write(b".\r\n", DATA_BLOCK_TIMEOUT).await?;
            self.flush(DATA_BLOCK_TIMEOUT).await?;
            let _ = self.read_reply(DATA_END_TIMEOUT).await?;
            return Ok(results);
        }
        self.write_data(msg.content).await?;
        let end = self.read_reply(DATA_END_TIMEOUT).await?;
        for r in results.iter_mut() {
            if matches!(r, RcptResult::Accepted(_)) {
                *r = if end.is_positive() {
                    RcptResult::Accepted(end.clone())
                } else {
                    classify(&end, said(&end))
                };
            }
        }
        Ok(results)
    }

    /// After a refused MAIL with pipelining, the DATA reply was read already; make sure the
    /// session is back at the start.
    async fn finish_failed(&mut self, data_reply: Option<&RemoteReply>) -> Result<(), String> {
        if let Some(d) = data_reply
            && d.code == 354
        {
            self.write(b".\r\n", DATA_BLOCK_TIMEOUT).await?;
            self.flush(DATA_BLOCK_TIMEOUT).await?;
            let _ = self.read_reply(DATA_END_TIMEOUT).await?;
        }
        self.reset().await
    }

    async fn reset(&mut self) -> Result<(), String> {
        let r = self.command("RSET", COMMAND_TIMEOUT).await?;
        if !r.is_positive() {
            self.broken = true;
            return Err(format!("RSET refused: {}", r.text()));
        }
        Ok(())
    }

    /// The content, dot-stuffed (RFC 5321 §4.5.2), then CRLF.CRLF.
    async fn write_data(&mut self, content: &[&[u8]]) -> Result<(), String> {
        let mut out = Vec::with_capacity(64 * 1024);
        let mut at_line_start = true;
        let mut last = b'\n';
        for chunk in content {
            for &b in *chunk {
                if at_line_start && b == b'.' {
                    out.push(b'.');
                }
                out.push(b);
                at_line_start = b == b'\n';
                last = b;
                if out.len() >= 64 * 1024 {
                    self.write(&out, DATA_BLOCK_TIMEOUT).await?;
                    out.clear();
                }
            }
        }
        if last != b'\n' {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        self.write(&out, DATA_BLOCK_TIMEOUT).await?;
        self.flush(DATA_BLOCK_TIMEOUT).await
    }

    /// Say goodbye; errors do not matter any more.
    pub async fn quit(&mut self) {
        if !self.broken {
            let _ = self.command("QUIT", Duration::from_secs(10)).await;
        }
        let _ = timeout(Duration::from_secs(5), self.io.get_mut().shutdown()).await;
    }
}

fn classify(r: &RemoteReply, said: String) -> RcptResult {
    if r.is_transient() {
        RcptResult::Deferred(r.status(), said)
    } else {
        RcptResult::Failed(r.status(), said)
    }
}

/// Add one line of a server reply (with its line ending, at most `MAX_REPLY_LINE` bytes) to
/// `reply`; true when it was the last line. Everything the server sends passes through here,
/// so it takes any bytes: a malformed line is an error, never a panic.
pub fn reply_line(reply: &mut RemoteReply, line: &[u8]) -> Result<bool, String> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches(['\r', '\n']);
    let c: u16 = text
        .get(..3)
        .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|c| c.parse().ok())
        .filter(|c| (200..600).contains(c))
        .ok_or_else(|| format!("malformed reply: {:?}", truncate(text, 80)))?;
    if reply.code != 0 && c != reply.code {
        return Err("reply lines disagree on the code".into());
    }
    reply.code = c;
    let sep = text.as_bytes().get(3).copied();
    reply.lines.push(text.get(4..).unwrap_or("").to_string());
    if reply.lines.len() > MAX_REPLY_LINES {
        return Err("reply has too many lines".into());
    }
    match sep {
        Some(b'-') => Ok(false),
        Some(b' ') | None => Ok(true),
        _ => Err(format!("malformed reply: {:?}", truncate(text, 80))),
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// TLS for opportunistic STARTTLS: encryption against passive eavesdropping. The handshake
/// signatures are checked (the peer must hold the certificate's key); the chain and the name
/// are not, as with Postfix's `may` and `encrypt` levels, because most MX certificates would
/// not verify against an MX name.
pub fn client_tls() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_status_prefers_matching_enhanced_code() {
        let r = RemoteReply {
            code: 550,
            lines: vec!["5.1.1 no such user".into()],
        };
        assert_eq!(r.status(), "5.1.1");
        assert_eq!(r.text(), "550 5.1.1 no such user");
        let r = RemoteReply {
            code: 451,
            lines: vec!["5.1.1 wrong class".into()],
        };
        assert_eq!(r.status(), "4.0.0");
        let r = RemoteReply {
            code: 421,
            lines: vec!["try later".into()],
        };
        assert_eq!(r.status(), "4.0.0");
    }

    #[test]
    fn extensions_from_ehlo() {
        let r = RemoteReply {
            code: 250,
            lines: vec![
                "mx.test".into(),
                "PIPELINING".into(),
                "SIZE 1000".into(),
                "starttls".into(),
                "8BITMIME".into(),
            ],
        };
        let e = Extensions::parse(&r);
        assert!(e.pipelining && e.starttls && e.eight_bit && !e.smtputf8);
        assert_eq!(e.size, Some(1000));
    }
}
