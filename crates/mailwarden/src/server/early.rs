//! Checks started before the end of DATA, so their DNS answers are there when the message
//! is: iprev from connect, SPF from MAIL FROM. Each is polled once at start and spawned only
//! if it still waits; a check of an abandoned transaction is aborted.

use super::shared::{ListenerKind, Shared};
use crate::checks::sender;
use mail_auth::{IprevOutput, SpfOutput};
use std::sync::Arc;
use tokio::task::JoinHandle;

/// A check started early: finished at once (its DNS answers were cached), or running in a
/// task of its own while the client sends the rest of the transaction.
pub(super) enum Started<T> {
    Done(T),
    Running(JoinHandle<T>),
}

impl<T: Send + 'static> Started<T> {
    /// Poll `fut` once; spawn it only if it is still waiting. With warm caches this saves a
    /// task and a cross-thread wake-up per check, a measurable share of a message's CPU.
    pub(super) fn start(fut: impl std::future::Future<Output = T> + Send + 'static) -> Started<T> {
        let mut fut = Box::pin(fut);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => Started::Done(v),
            std::task::Poll::Pending => Started::Running(tokio::spawn(fut)),
        }
    }

    pub(super) async fn finish(self) -> Option<T> {
        match self {
            Started::Done(v) => Some(v),
            Started::Running(h) => h.await.ok(),
        }
    }

    pub(super) fn abort(&self) {
        if let Started::Running(h) = self {
            h.abort();
        }
    }
}

/// Checks started before the end of DATA: iprev from connect, SPF from MAIL FROM.
#[derive(Default)]
pub(super) struct Early {
    pub(super) iprev: Option<Started<IprevOutput>>,
    pub(super) iprev_done: Option<IprevOutput>,
    pub(super) spf: Option<Started<SpfOutput>>,
    /// SPF finished early (greylisting asked at RCPT), kept for the end of DATA.
    pub(super) spf_done: Option<SpfOutput>,
}

impl Early {
    /// Start iprev for a new session on the MX listener.
    pub(super) fn at_connect(
        shared: &Arc<Shared>,
        kind: ListenerKind,
        ip: std::net::IpAddr,
    ) -> Early {
        let mut e = Early::default();
        let off = crate::config::Mode::Off;
        let cfg = &shared.config;
        if kind == ListenerKind::Mx && (cfg.iprev.mode != off || cfg.screening.rdns.mode != off) {
            let dns = shared.dns.clone();
            e.iprev = Some(Started::start(async move {
                dns.prime_loopback_ptr(ip).await;
                sender::iprev(&dns, ip).await
            }));
        }
        e
    }

    /// Start SPF for a new transaction from outside.
    pub(super) fn at_mail(
        &mut self,
        shared: &Arc<Shared>,
        ip: std::net::IpAddr,
        helo: &str,
        mail_from: &str,
    ) {
        if let Some(h) = self.spf.take() {
            h.abort();
        }
        self.spf_done = None;
        if shared.config.spf.mode == crate::config::Mode::Off {
            return;
        }
        let (dns, helo, from, host) = (
            shared.dns.clone(),
            helo.to_string(),
            mail_from.to_string(),
            shared.config.hostname.clone(),
        );
        self.spf = Some(Started::start(async move {
            sender::spf(&dns, ip, &helo, &host, &from).await
        }));
    }

    pub(super) async fn iprev(&mut self) -> Option<IprevOutput> {
        if let Some(h) = self.iprev.take() {
            self.iprev_done = h.finish().await;
        }
        self.iprev_done.clone()
    }

    pub(super) async fn spf(&mut self) -> Option<SpfOutput> {
        match self.spf.take() {
            Some(h) => h.finish().await,
            None => self.spf_done.take(),
        }
    }

    /// The client's PTR name, once iprev has finished.
    pub(super) fn ptr(&self) -> Option<String> {
        self.iprev_done
            .as_ref()
            .and_then(|o| o.ptr.as_ref())
            .and_then(|p| p.first())
            .map(|n| n.trim_end_matches('.').to_string())
    }

    /// The transaction's SPF result, waiting for it if needed, without using it up.
    pub(super) async fn spf_peek(&mut self) -> Option<SpfOutput> {
        if let Some(h) = self.spf.take() {
            self.spf_done = h.finish().await;
        }
        self.spf_done.clone()
    }
}

impl Drop for Early {
    fn drop(&mut self) {
        if let Some(h) = self.spf.take() {
            h.abort();
        }
        if let Some(h) = self.iprev.take() {
            h.abort();
        }
    }
}
