//! mwload: an SMTP load generator for comparing mail servers (bench/compare.sh).
//!
//! It opens N concurrent connections and sends M messages of size S, K per connection, in
//! plain SMTP, STARTTLS or implicit TLS, with optional AUTH PLAIN. Closed loop (as fast as
//! the server answers) or open loop (`--rate`: messages start on a fixed schedule, and latency
//! counts from the scheduled time, so a slow server cannot hide its queueing). It stops at
//! `--messages` or `--duration`, whichever comes first. `--idle` holds many idle sessions and
//! probes how fast a new session still gets its banner.
//!
//! The client is cheap on purpose: messages built once (one generated, or a corpus read at
//! start with `--corpus`), pipelined MAIL/RCPT/DATA when the server offers PIPELINING, and a
//! reply parser that only reads codes.
#![forbid(unsafe_code)]

mod smtp;
mod stats;

use anyhow::Context;
use clap::Parser;
use smtp::{Conn, Mode, Setup};
use stats::{Hist, Totals};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser, Clone, serde::Serialize)]
#[command(name = "mwload", about = "SMTP load generator")]
pub struct Args {
    /// Server address; several, comma-separated, share the connections in turn (the nodes
    /// of a cluster behind one MX name).
    #[arg(long, default_value = "127.0.0.1:2525", value_delimiter = ',')]
    pub server: Vec<SocketAddr>,
    /// plain, starttls or tls (implicit TLS).
    #[arg(long, default_value = "plain")]
    pub mode: Mode,
    /// AUTH PLAIN credentials, `user:password`.
    #[arg(long)]
    pub auth: Option<String>,
    /// Concurrent connections (closed loop), or the most in flight (open loop).
    #[arg(long, short = 'c', default_value_t = 50)]
    pub connections: usize,
    /// Messages to send in all.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    pub messages: u64,
    /// Stop after this many seconds even if messages remain.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Messages per connection (1: a new connection per message, as MX traffic arrives).
    #[arg(long, short = 'k', default_value_t = 1)]
    pub per_conn: u64,
    /// Message size in bytes (ignored with --message-file).
    #[arg(long, short = 's', default_value_t = 1024)]
    pub size: usize,
    /// Open loop: start this many messages per second. 0 = closed loop.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    #[arg(long, default_value = "load@bench.example")]
    pub from: String,
    #[arg(long, default_value = "bob@bench.test")]
    pub to: Vec<String>,
    #[arg(long, default_value = "mwload.bench.example")]
    pub helo: String,
    /// Send this exact message (e.g. DKIM-signed) instead of a generated one.
    #[arg(long)]
    pub message_file: Option<std::path::PathBuf>,
    /// Replay real messages: every file in this directory and its subdirectories (an mbox
    /// `From ` first line is dropped), in turn, so the server's parser, tokenizer and
    /// heuristics see real text instead of one line repeated.
    #[arg(long)]
    pub corpus: Option<std::path::PathBuf>,
    /// Source addresses to spread connections over (e.g. 127.0.0.2,127.0.0.3).
    #[arg(long, value_delimiter = ',')]
    pub source: Vec<std::net::IpAddr>,
    /// Idle mode: hold this many idle sessions, then probe new sessions.
    #[arg(long, default_value_t = 0)]
    pub idle: usize,
    /// Idle mode: seconds to hold the sessions after they are all open.
    #[arg(long, default_value_t = 5.0)]
    pub idle_secs: f64,
    /// Idle mode: probes for the time to a new session's banner.
    #[arg(long, default_value_t = 20)]
    pub probes: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        if args.idle > 0 {
            idle(&args).await
        } else {
            load(&args).await
        }
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        stats::print_text(&report);
    }
    Ok(())
}

/// Where each message comes from: a shared counter (closed loop) or a schedule (open loop).
struct Tickets {
    next: AtomicU64,
    total: u64,
    deadline: Instant,
    start: Instant,
    /// Seconds between scheduled starts; 0 in closed loop.
    interval: f64,
}

impl Tickets {
    /// The next message number and the instant its latency counts from.
    async fn take(&self) -> Option<(u64, Instant)> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if n >= self.total || Instant::now() >= self.deadline {
            return None;
        }
        if self.interval == 0.0 {
            return Some((n, Instant::now()));
        }
        let at = self.start + Duration::from_secs_f64(self.interval * n as f64);
        if at >= self.deadline {
            return None;
        }
        tokio::time::sleep_until(at.into()).await;
        Some((n, at))
    }
}

async fn load(args: &Args) -> anyhow::Result<serde_json::Value> {
    let template = Arc::new(smtp::Template::new(args)?);
    let setup = Arc::new(Setup::new(args)?);
    let start = Instant::now();
    let tickets = Arc::new(Tickets {
        next: AtomicU64::new(0),
        total: args.messages,
        deadline: start + Duration::from_secs_f64(args.duration),
        start,
        interval: if args.rate > 0.0 {
            1.0 / args.rate
        } else {
            0.0
        },
    });
    let mut workers = Vec::new();
    for w in 0..args.connections {
        let (t, tpl, setup) = (tickets.clone(), template.clone(), setup.clone());
        let per_conn = args.per_conn.max(1);
        let source = (!args.source.is_empty()).then(|| args.source[w % args.source.len()]);
        workers.push(tokio::spawn(async move {
            let mut tot = Totals::default();
            let mut conn: Option<(Conn, u64)> = None;
            while let Some((n, from)) = t.take().await {
                if conn.as_ref().is_none_or(|(_, used)| *used >= per_conn) {
                    if let Some((c, _)) = conn.take() {
                        c.quit().await;
                    }
                    let t0 = Instant::now();
                    match Conn::open(&setup, source).await {
                        Ok(c) => {
                            tot.setup.record(t0.elapsed());
                            tot.connections += 1;
                            conn = Some((c, 0));
                        }
                        Err(_) => {
                            tot.conn_errors += 1;
                            continue;
                        }
                    }
                }
                let (c, used) = conn.as_mut().expect("connection opened above");
                *used += 1;
                tot.sent += 1;
                match c.send(&tpl, n).await {
                    Ok(code) => {
                        tot.reply(code);
                        if code / 100 == 2 {
                            tot.txn.record(from.elapsed());
                        }
                        if code / 100 != 2 {
                            // The server refused; start fresh rather than reuse a session
                            // in an unknown state.
                            conn = None;
                        }
                    }
                    Err(_) => {
                        tot.conn_errors += 1;
                        conn = None;
                    }
                }
            }
            if let Some((c, _)) = conn.take() {
                c.quit().await;
            }
            tot
        }));
    }
    let mut total = Totals::default();
    for w in workers {
        total.merge(w.await.context("worker panicked")?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(stats::report(args, &total, elapsed))
}

async fn idle(args: &Args) -> anyhow::Result<serde_json::Value> {
    let setup = Arc::new(Setup::new(args)?);
    let start = Instant::now();
    let opened = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(200));
    let (release_tx, release) = tokio::sync::watch::channel(false);
    let mut holders = Vec::new();
    for i in 0..args.idle {
        let (setup, opened, failed, gate, mut release) = (
            setup.clone(),
            opened.clone(),
            failed.clone(),
            gate.clone(),
            release.clone(),
        );
        let source = (!args.source.is_empty()).then(|| args.source[i % args.source.len()]);
        holders.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.ok();
            match Conn::open_idle(&setup, source).await {
                Ok(c) => {
                    opened.fetch_add(1, Ordering::Relaxed);
                    drop(permit);
                    let _ = release.wait_for(|go| *go).await;
                    drop(c);
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    while (opened.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed)) < args.idle as u64 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open_secs = start.elapsed().as_secs_f64();
    let mut probe = Hist::default();
    let mut probe_failures = 0;
    let hold_until = Instant::now() + Duration::from_secs_f64(args.idle_secs);
    for _ in 0..args.probes {
        let t0 = Instant::now();
        match tokio::time::timeout(Duration::from_secs(10), smtp::banner_only(&setup)).await {
            Ok(Ok(())) => probe.record(t0.elapsed()),
            _ => probe_failures += 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep_until(hold_until.into()).await;
    let _ = release_tx.send(true);
    for h in holders {
        let _ = h.await;
    }
    Ok(serde_json::json!({
        "mode": "idle",
        "idle_requested": args.idle,
        "idle_opened": opened.load(Ordering::Relaxed),
        "idle_failed": failed.load(Ordering::Relaxed),
        "open_secs": open_secs,
        "probes": args.probes,
        "probe_failures": probe_failures,
        "banner_ms": probe.summary_ms(),
    }))
}
