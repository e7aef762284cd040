//! The load generator's SMTP client: connect, optional TLS (no certificate verification: the
//! servers under test use self-signed certificates), EHLO, optional AUTH PLAIN, and pipelined
//! transactions.

use crate::Args;
use anyhow::{Context, bail};
use base64::Engine;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, clap::ValueEnum, serde::Serialize)]
pub enum Mode {
    Plain,
    Starttls,
    Tls,
}

/// What every connection shares.
pub struct Setup {
    addrs: Vec<SocketAddr>,
    next: std::sync::atomic::AtomicUsize,
    mode: Mode,
    tls: tokio_rustls::TlsConnector,
    helo: String,
    auth: Option<String>,
}

impl Setup {
    /// The next server address, in turn.
    fn addr(&self) -> SocketAddr {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.addrs[i % self.addrs.len()]
    }

    pub fn new(args: &Args) -> anyhow::Result<Setup> {
        let cfg = rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert))
            .with_no_client_auth();
        let auth = args.auth.as_ref().map(|a| {
            let (u, p) = a.split_once(':').unwrap_or((a, ""));
            base64::engine::general_purpose::STANDARD.encode(format!("\0{u}\0{p}"))
        });
        Ok(Setup {
            addrs: args.server.clone(),
            next: Default::default(),
            mode: args.mode,
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            helo: args.helo.clone(),
            auth,
        })
    }
}

/// The message, built once: envelope commands and the dot-stuffed content with a `{n}` slot
/// filled per message so every Message-ID differs.
pub struct Template {
    envelope: Vec<u8>,
    rcpts: usize,
    head: Vec<u8>,
    tail: Vec<u8>,
    /// `--corpus`: each message ready to send (CRLF, dot-stuffed, ended), used in turn.
    corpus: Vec<Vec<u8>>,
}

/// Dot-stuffed, with the final dot (`body` has CRLF line ends).
fn data(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    mailwarden_proto::data::dot_stuff(body, &mut out);
    out
}

/// Every file under `dir` (one level of subdirectories), sorted, ready to send.
fn corpus(dir: &std::path::Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            for f in std::fs::read_dir(&p)? {
                let f = f?.path();
                if f.is_file() {
                    files.push(f);
                }
            }
        } else if p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no messages in {}", dir.display());
    files
        .iter()
        .map(|f| {
            let raw = std::fs::read(f)?;
            let raw = match raw.strip_prefix(b"From ") {
                Some(_) => {
                    raw[raw.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1)..].to_vec()
                }
                None => raw,
            };
            Ok(data(&crlf(&raw)))
        })
        .collect()
}

impl Template {
    pub fn new(args: &Args) -> anyhow::Result<Template> {
        let mut envelope = format!("MAIL FROM:<{}>\r\n", args.from).into_bytes();
        for t in &args.to {
            envelope.extend_from_slice(format!("RCPT TO:<{t}>\r\n").as_bytes());
        }
        envelope.extend_from_slice(b"DATA\r\n");
        let (head, body) = match &args.message_file {
            Some(p) => {
                let raw = std::fs::read(p).with_context(|| format!("read {}", p.display()))?;
                (Vec::new(), crlf(&raw))
            }
            None => {
                let head = format!(
                    "From: <{}>\r\nTo: <{}>\r\nSubject: mwload\r\nDate: Mon, 23 Nov 2026 09:00:00 +0000\r\nMessage-ID: <",
                    args.from, args.to[0]
                );
                let mut body = b"@mwload.bench.example>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n".to_vec();
                let line =
                    b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n";
                while body.len() + head.len() + 8 < args.size {
                    body.extend_from_slice(line);
                }
                (head.into_bytes(), body)
            }
        };
        Ok(Template {
            envelope,
            rcpts: args.to.len(),
            head,
            tail: data(&body),
            corpus: match &args.corpus {
                Some(dir) => corpus(dir)?,
                None => Vec::new(),
            },
        })
    }
}

fn crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 40);
    let mut prev = 0u8;
    for &b in raw {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct Conn {
    io: BufReader<Box<dyn Io>>,
    pipelining: bool,
    line: String,
    out: Vec<u8>,
}

async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> anyhow::Result<TcpStream> {
    let s = match source {
        Some(ip) => {
            let sock = if ip.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            sock.bind(SocketAddr::new(ip, 0))?;
            sock.connect(addr).await?
        }
        None => TcpStream::connect(addr).await?,
    };
    s.set_nodelay(true)?;
    Ok(s)
}

impl Conn {
    /// Connect and get ready to send: banner, EHLO, STARTTLS or TLS, AUTH.
    pub async fn open(setup: &Setup, source: Option<IpAddr>) -> anyhow::Result<Conn> {
        tokio::time::timeout(TIMEOUT, Self::open_inner(setup, source))
            .await
            .context("setup timeout")?
    }

    async fn open_inner(setup: &Setup, source: Option<IpAddr>) -> anyhow::Result<Conn> {
        let tcp = connect(setup.addr(), source).await?;
        let io: Box<dyn Io> = match setup.mode {
            Mode::Tls => Box::new(setup.tls.connect(server_name(), tcp).await?),
            _ => Box::new(tcp),
        };
        let mut c = Conn {
            io: BufReader::with_capacity(4096, io),
            pipelining: false,
            line: String::new(),
            out: Vec::new(),
        };
        c.expect(2).await?;
        c.ehlo(&setup.helo).await?;
        if let Mode::Starttls = setup.mode {
            c.cmd(b"STARTTLS\r\n", 2).await?;
            let Conn { io, .. } = c;
            let inner = io.into_inner();
            let tls = setup.tls.connect(server_name(), inner).await?;
            c = Conn {
                io: BufReader::with_capacity(4096, Box::new(tls)),
                pipelining: false,
                line: String::new(),
                out: Vec::new(),
            };
            c.ehlo(&setup.helo).await?;
        }
        if let Some(a) = &setup.auth {
            c.cmd(format!("AUTH PLAIN {a}\r\n").as_bytes(), 2).await?;
        }
        Ok(c)
    }

    /// Connect, read the banner, say EHLO, and stay idle.
    pub async fn open_idle(setup: &Setup, source: Option<IpAddr>) -> anyhow::Result<Conn> {
        let tcp = connect(setup.addr(), source).await?;
        let mut c = Conn {
            io: BufReader::with_capacity(512, Box::new(tcp) as Box<dyn Io>),
            pipelining: false,
            line: String::new(),
            out: Vec::new(),
        };
        tokio::time::timeout(TIMEOUT, async {
            c.expect(2).await?;
            c.ehlo(&setup.helo).await
        })
        .await
        .context("timeout")??;
        Ok(c)
    }

    async fn ehlo(&mut self, helo: &str) -> anyhow::Result<()> {
        self.write(format!("EHLO {helo}\r\n").as_bytes()).await?;
        self.pipelining = false;
        loop {
            self.read_line().await?;
            if !self.line.starts_with('2') {
                bail!("EHLO refused: {}", self.line.trim_end());
            }
            if self.line.len() > 4 && self.line[4..].trim_end().eq_ignore_ascii_case("PIPELINING") {
                self.pipelining = true;
            }
            if self.line.as_bytes().get(3) != Some(&b'-') {
                return Ok(());
            }
        }
    }

    async fn read_line(&mut self) -> anyhow::Result<()> {
        self.line.clear();
        let n = self.io.read_line(&mut self.line).await?;
        if n == 0 {
            bail!("connection closed");
        }
        Ok(())
    }

    /// Read one reply; return its code.
    async fn reply(&mut self) -> anyhow::Result<u16> {
        loop {
            self.read_line().await?;
            let code: u16 = self
                .line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .with_context(|| format!("bad reply {:?}", self.line))?;
            if self.line.as_bytes().get(3) != Some(&b'-') {
                return Ok(code);
            }
        }
    }

    async fn expect(&mut self, class: u16) -> anyhow::Result<u16> {
        let code = self.reply().await?;
        if code / 100 != class {
            bail!("unexpected reply {}", self.line.trim_end());
        }
        Ok(code)
    }

    async fn cmd(&mut self, line: &[u8], class: u16) -> anyhow::Result<u16> {
        self.write(line).await?;
        self.expect(class).await
    }

    /// One transaction. Returns the code of the last reply: the one after the content, or
    /// the first refusal of MAIL, RCPT or DATA.
    pub async fn send(&mut self, t: &Template, n: u64) -> anyhow::Result<u16> {
        tokio::time::timeout(TIMEOUT, self.send_inner(t, n))
            .await
            .context("transaction timeout")?
    }

    async fn write(&mut self, data: &[u8]) -> anyhow::Result<()> {
        let w = self.io.get_mut();
        w.write_all(data).await?;
        w.flush().await?;
        Ok(())
    }

    async fn send_inner(&mut self, t: &Template, n: u64) -> anyhow::Result<u16> {
        let expected = 2 + t.rcpts;
        let mut refused = None;
        if self.pipelining {
            self.write(&t.envelope).await?;
            for _ in 0..expected {
                let code = self.reply().await?;
                if code >= 400 && refused.is_none() {
                    refused = Some(code);
                }
            }
        } else {
            let mut start = 0;
            for _ in 0..expected {
                let end = start
                    + t.envelope[start..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .unwrap_or(0)
                    + 1;
                self.write(&t.envelope[start..end]).await?;
                start = end;
                let code = self.reply().await?;
                if code >= 400 {
                    refused = Some(code);
                    break;
                }
            }
        }
        if let Some(code) = refused {
            // DATA may have been accepted after a refused RCPT; end it cleanly.
            self.write(b"RSET\r\n").await?;
            let _ = self.reply().await;
            return Ok(code);
        }
        if !t.corpus.is_empty() {
            self.write(&t.corpus[(n % t.corpus.len() as u64) as usize])
                .await?;
            return self.reply().await;
        }
        let mut msg = std::mem::take(&mut self.out);
        msg.clear();
        if !t.head.is_empty() {
            msg.extend_from_slice(&t.head);
            msg.extend_from_slice(n.to_string().as_bytes());
        }
        msg.extend_from_slice(&t.tail);
        let r = self.write(&msg).await;
        self.out = msg;
        r?;
        self.reply().await
    }

    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            self.write(b"QUIT\r\n").await?;
            self.reply().await
        })
        .await;
    }
}

/// Connect and wait for the banner only.
pub async fn banner_only(setup: &Setup) -> anyhow::Result<()> {
    let tcp = connect(setup.addr(), None).await?;
    let mut c = Conn {
        io: BufReader::with_capacity(512, Box::new(tcp) as Box<dyn Io>),
        pipelining: false,
        line: String::new(),
        out: Vec::new(),
    };
    c.expect(2).await?;
    Ok(())
}

fn server_name() -> ServerName<'static> {
    ServerName::try_from("localhost").expect("valid name")
}

/// Accepts any certificate: the servers under test use self-signed ones, and the benchmark
/// measures the handshake cost, not the PKI.
#[derive(Debug)]
struct AnyCert;

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
