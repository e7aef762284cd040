//! The POP3 listeners (`listen.pop3s`, implicit TLS; `listen.pop3`, STLS): a thin async
//! driver around the I/O-free [`mailwarden_proto::pop3::Session`]. It owns the socket, TLS
//! and timeouts, checks logins as SMTP AUTH does ([`super::auth::check_password`]: the same
//! blocks, turns, delays and failure counters), lists and changes the Maildir through
//! [`crate::maildrop`] on the blocking pool, and records POP-before-SMTP logins
//! ([`super::grants`]).
//!
//! Security: a login is only ever taken under TLS (the core refuses USER, PASS and AUTH
//! before). A suspended account may read its mail, but its logins grant nothing. The
//! attempted name and password are never logged. Every client-controlled limit is the
//! core's or `[pop3]`'s: line length, errors, commands, failed logins, idle and session time,
//! listed messages; messages are streamed from their files, never held whole.

use super::auth::{self, Outcome};
use super::session::{Stream, upgrade};
use super::shared::Shared;
use crate::maildrop::{self, Maildrop};
use crate::util::new_id;
use mailwarden_proto::pop3::content::Stuffer;
use mailwarden_proto::pop3::{Config, Event, InBuf, Limits, Session, replies};
use mailwarden_proto::sasl::Credentials;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

/// Accept POP3 clients on `l` until the server stops.
pub(super) async fn accept_loop(
    l: tokio::net::TcpListener,
    implicit_tls: bool,
    shared: Arc<Shared>,
) {
    let name = if implicit_tls { "pop3s" } else { "pop3" };
    loop {
        match l.accept().await {
            Ok((sock, peer)) => {
                let _ = sock.set_nodelay(true);
                let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                tokio::spawn(run(sock, peer, implicit_tls, shared.clone()));
            }
            Err(e) => {
                tracing::error!(event = "accept_failed", listener = name, error = %e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

struct Driver<'a, IO> {
    stream: Stream<IO>,
    shared: &'a Shared,
    s: Session,
    inbuf: InBuf,
    session: String,
    peer: SocketAddr,
    listener: &'static str,
    /// After login: the account, its maildrop (lent to the blocking pool while it works on
    /// the files) and its lock.
    account: Option<String>,
    maildrop: Option<Maildrop>,
    _lock: Option<maildrop::Lock<'a>>,
    deadline: tokio::time::Instant,
    end_reason: &'static str,
}

async fn run<IO>(io: IO, peer: SocketAddr, implicit_tls: bool, shared: Arc<Shared>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let listener = if implicit_tls { "pop3s" } else { "pop3" };
    let session = new_id();
    let mut stream = Stream::Plain(io);
    let _slot = match super::stage::connect(&shared, peer.ip()) {
        Ok(slot) => slot,
        Err(why) => {
            tracing::info!(event = "pop3_refused", session = %session, listener, ip = %peer.ip(),
                command = "CONNECT", reason = why.detail.as_str(), reply = replies::TOO_MANY_CONNECTIONS);
            let line = format!("{}\r\n", replies::TOO_MANY_CONNECTIONS);
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(line.as_bytes()))
                .await;
            return;
        }
    };
    tracing::info!(event = "connect", session = %session, listener, ip = %peer.ip(), port = peer.port());
    metrics::counter!("mailwarden_pop3_sessions_total", "listener" => listener).increment(1);
    let started = Instant::now();
    if implicit_tls && let Err(e) = upgrade(&mut stream, &shared).await {
        tracing::info!(event = "tls_failed", session = %session, ip = %peer.ip(), error = %e);
        return;
    }
    let cfg = &shared.config;
    let core = Config {
        hostname: cfg.hostname.clone(),
        limits: Limits {
            errors: cfg.pop3.max_errors,
            commands: cfg.pop3.max_commands,
            auth_failures: cfg.auth.max_failures_per_session,
            ..Limits::default()
        },
        tls_available: !implicit_tls,
        tls_at_start: implicit_tls,
    };
    let mut d = Driver {
        stream,
        shared: &shared,
        s: Session::new(core),
        inbuf: InBuf::with_capacity(512),
        session,
        peer,
        listener,
        account: None,
        maildrop: None,
        _lock: None,
        deadline: tokio::time::Instant::now() + cfg.pop3.max_session_time.get(),
        end_reason: "quit",
    };
    let served = crate::heavy::CatchPanic::new(d.serve()).await;
    if let Err(panic) = served {
        metrics::counter!("mailwarden_session_panics_total", "listener" => listener).increment(1);
        tracing::error!(event = "session_panic", session = %d.session, ip = %peer.ip(), error = %panic);
        d.end_reason = "panic";
    }
    let c = d.s.counters();
    tracing::info!(event = "disconnect", session = %d.session, ip = %peer.ip(), listener,
        reason = d.end_reason, user = d.account.as_deref().unwrap_or("-"),
        retrieved = c.retrieved, errors = c.errors, secs = started.elapsed().as_secs_f32());
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> Driver<'_, IO> {
    async fn serve(&mut self) {
        self.s.greet();
        loop {
            match self.s.poll(&mut self.inbuf) {
                Event::NeedInput => {
                    if !self.read_more().await {
                        return;
                    }
                }
                Event::Flush => {
                    if !self.flush().await {
                        return;
                    }
                }
                Event::Refused {
                    command,
                    reply,
                    reason,
                } => {
                    tracing::info!(event = "pop3_refused", session = %self.session, ip = %self.peer.ip(),
                        listener = self.listener, command, reason = reason.slug(), reply);
                }
                Event::StartTls { discarded } => {
                    if discarded > 0 {
                        tracing::warn!(event = "starttls_injection", session = %self.session,
                            ip = %self.peer.ip(), discarded);
                    }
                    if !self.flush().await {
                        return;
                    }
                    if let Err(e) = upgrade(&mut self.stream, self.shared).await {
                        tracing::info!(event = "tls_failed", session = %self.session, ip = %self.peer.ip(), error = %e);
                        self.end_reason = "tls failed";
                        return;
                    }
                    self.s.tls_started();
                }
                Event::Login {
                    mechanism,
                    credentials,
                } => self.login(mechanism, credentials).await,
                Event::Retrieve { index, top } => {
                    if !self.retrieve(index, top).await {
                        return;
                    }
                }
                Event::Quit { deleted } => self.update(deleted).await,
                Event::Close => {
                    let _ = self.flush().await;
                    self.stream.shutdown().await;
                    return;
                }
            }
        }
    }

    async fn flush(&mut self) -> bool {
        let out = self.s.take_output();
        if out.is_empty() {
            return true;
        }
        let ok = self.write(&out).await;
        if !ok {
            self.end_reason = "write failed";
        }
        ok
    }

    /// Write within the idle timeout and the session's own deadline: a client that reads
    /// slowly cannot stretch a RETR past `pop3.max_session_time` (and hold the mailbox).
    async fn write(&mut self, data: &[u8]) -> bool {
        let idle = self.shared.config.pop3.idle_timeout.get();
        let until = (tokio::time::Instant::now() + idle).min(self.deadline);
        matches!(
            tokio::time::timeout_at(until, self.stream.write_all(data)).await,
            Ok(Ok(()))
        )
    }

    /// Flush, then wait for the client. False: the session is over.
    async fn read_more(&mut self) -> bool {
        self.inbuf.shrink(4096);
        if self.s.has_output() && !self.flush().await {
            return false;
        }
        let mut shutdown = self.shared.shutdown.clone();
        let wait = self.shared.config.pop3.idle_timeout.get();
        tokio::select! {
            r = tokio::time::timeout(wait, self.stream.read_into(self.inbuf.for_read(1024))) => match r {
                Err(_) => {
                    self.s.close_with(replies::TIMEOUT);
                    self.end_reason = "timeout";
                }
                Ok(Ok(0)) => {
                    self.end_reason = "disconnect";
                    return false;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(event = "read_error", session = %self.session, error = %e);
                    self.end_reason = "read error";
                    return false;
                }
            },
            _ = shutdown.changed() => {
                self.s.close_with(replies::SHUTTING_DOWN);
                self.end_reason = "shutdown";
            }
            _ = tokio::time::sleep_until(self.deadline) => {
                self.s.close_with(replies::SESSION_TOO_LONG);
                self.end_reason = "session time limit";
            }
        }
        true
    }

    fn refused_login(&self, reason: &str) {
        metrics::counter!("mailwarden_pop3_logins_total", "result" => "refused").increment(1);
        tracing::warn!(event = "pop3_login_refused", session = %self.session, ip = %self.peer.ip(),
            listener = self.listener, reason);
    }

    async fn login(&mut self, mechanism: &'static str, credentials: Credentials) {
        let shared = self.shared;
        let ip = self.peer.ip();
        let checked = auth::check_password(
            shared,
            ip,
            &credentials.username,
            credentials.password.expose(),
        )
        .await;
        drop(credentials);
        self.inbuf.scrub();
        // `_line`: this address's place in the login line, held until the failure is counted.
        let (outcome, name, _line) = checked.into_parts();
        let account = match outcome {
            Outcome::Account(a) => a,
            Outcome::Invalid => {
                auth::count_failure(shared, ip, &name, self.listener);
                self.refused_login("invalid_credentials");
                self.s.login_failed(replies::AUTH_FAILED);
                return;
            }
            Outcome::Blocked => {
                self.refused_login("blocked");
                self.s.login_failed(replies::BLOCKED);
                return;
            }
            Outcome::LineFull | Outcome::Busy => {
                self.refused_login("busy");
                self.s.login_failed(replies::TEMP);
                return;
            }
            Outcome::StoreError(e) => {
                tracing::error!(event = "auth_backend_error", session = %self.session, error = %e);
                self.s.login_unavailable(replies::TEMP);
                return;
            }
        };
        // Logins from many networks are containment's business, as with SMTP AUTH; a
        // suspended account still reads its mail, but its logins grant nothing.
        let mut suspended = !matches!(shared.contain.is_suspended(&account), Ok(false));
        if !suspended && let Some(t) = shared.contain.detector.login(&account, ip) {
            shared.contain.suspend(&account, t, &self.session).await;
            suspended = true;
        }
        // Every right password from this address counts for POP-before-SMTP's one-account
        // rule, whatever happens next (in use, suspended, a listing error); a suspended
        // account's login is recorded without a stamp, which no grant ever matches.
        let stamp = if suspended {
            String::new()
        } else {
            shared
                .accounts
                .password_stamp(&account)
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        let granted =
            self.s.tls() && shared.grants.login(ip, &account, stamp.clone()) && !stamp.is_empty();
        drop(_line);
        let Some(lock) = shared.pop3_locks.take(&account) else {
            self.refused_login("in_use");
            self.s.login_unavailable(replies::IN_USE);
            return;
        };
        let dir = maildrop::inbox(&shared.config.data_dir, &account);
        let max = shared.config.pop3.max_messages;
        let sizes = shared.pop3_sizes.clone();
        let listed = tokio::task::spawn_blocking(move || Maildrop::list(&dir, max, &sizes)).await;
        let (md, total) = match listed {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                tracing::error!(event = "pop3_list_failed", session = %self.session, user = %account, error = %e);
                self.s.login_unavailable(replies::TEMP);
                return;
            }
            Err(e) => {
                tracing::error!(event = "pop3_list_failed", session = %self.session, user = %account, error = %e);
                self.s.login_unavailable(replies::TEMP);
                return;
            }
        };
        metrics::counter!("mailwarden_pop3_logins_total", "result" => "ok").increment(1);
        tracing::info!(event = "pop3_login", session = %self.session, ip = %ip, listener = self.listener,
            mechanism, user = %account, messages = md.len(), total, suspended, pop_before_smtp = granted);
        self.s.login_ok(md.entries());
        self.maildrop = Some(md);
        self.account = Some(account);
        self._lock = Some(lock);
    }

    /// Run `f` on the maildrop on the blocking pool and take it back. `None`: it was lost to
    /// a panic there, and the session ends.
    async fn on_maildrop<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Maildrop) -> T + Send + 'static,
    ) -> Option<T> {
        let mut md = self.maildrop.take()?;
        match tokio::task::spawn_blocking(move || {
            let r = f(&mut md);
            (r, md)
        })
        .await
        {
            Ok((r, md)) => {
                self.maildrop = Some(md);
                Some(r)
            }
            Err(e) => {
                tracing::error!(event = "pop3_maildrop_failed", session = %self.session, error = %e);
                self.end_reason = "maildrop failed";
                None
            }
        }
    }

    /// RETR or TOP. False: the session is over (the client stopped reading).
    async fn retrieve(&mut self, index: usize, top: Option<u64>) -> bool {
        let opened = self
            .on_maildrop(move |m| m.open(index, top.is_none()))
            .await;
        let file = match opened {
            None => return false,
            Some(Ok(Some(f))) => f,
            Some(Ok(None)) => {
                self.s.retrieve_failed(replies::GONE);
                return true;
            }
            Some(Err(e)) => {
                tracing::error!(event = "pop3_read_failed", session = %self.session, error = %e);
                self.s.retrieve_failed(replies::TEMP);
                return true;
            }
        };
        self.s.retrieve_begin();
        if !self.flush().await {
            return false;
        }
        let mut file = tokio::fs::File::from_std(file);
        let mut stuffer = Stuffer::new(top);
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Vec::with_capacity(70 * 1024);
        loop {
            let n = match file.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    // Half a message is out: the only honest end is to close.
                    tracing::error!(event = "pop3_read_failed", session = %self.session, error = %e);
                    self.end_reason = "read failed";
                    return false;
                }
            };
            if n == 0 {
                break;
            }
            out.clear();
            stuffer.push(&buf[..n], &mut out);
            if !out.is_empty() && !self.write(&out).await {
                self.end_reason = "write failed";
                return false;
            }
            if stuffer.is_done() {
                break;
            }
        }
        out.clear();
        stuffer.finish(&mut out);
        if !self.write(&out).await {
            self.end_reason = "write failed";
            return false;
        }
        true
    }

    /// QUIT: the UPDATE state removes what was deleted.
    async fn update(&mut self, deleted: Vec<usize>) {
        let n = deleted.len();
        let failed = self
            .on_maildrop(move |m| m.remove(&deleted))
            .await
            .unwrap_or(n);
        if failed > 0 {
            tracing::error!(event = "pop3_remove_failed", session = %self.session, failed);
        }
        tracing::info!(event = "pop3_update", session = %self.session,
            user = self.account.as_deref().unwrap_or("-"), removed = n - failed, failed);
        self.s.update_done(n - failed, failed);
    }
}
