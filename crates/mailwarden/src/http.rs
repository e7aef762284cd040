//! Serving an axum router on a listener of ours: the web console (`listen.admin`) and
//! mail-client autoconfiguration (`listen.autoconfig`).
//!
//! Security: HTTP/1 only; at most `max_connections` at once (past that a connection is
//! closed at once); request heads capped at [`MAX_HEAD`] bytes and [`HEAD_TIMEOUT`]; a
//! connection lives at most [`CONNECTION_LIFETIME`]. Bodies are capped by each router
//! (`axum::extract::DefaultBodyLimit`). Every request carries the client's address as a
//! [`Peer`] extension, taken from the socket, never from a header.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt;

const MAX_HEAD: usize = 16 << 10;
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// The client's address, from the socket.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// Serve `router` on `l` (over TLS when `tls` is given) until the task is aborted.
pub fn serve(
    l: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: axum::Router,
    max_connections: usize,
    name: &'static str,
) -> tokio::task::JoinHandle<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    tokio::spawn(async move {
        loop {
            let (sock, peer) = match l.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(event = "accept_failed", listener = name, error = %e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(event = "http_connections_full", listener = name, ip = %peer.ip());
                continue;
            };
            let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
            let (tls, router) = (tls.clone(), router.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let svc = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
                    req.extensions_mut().insert(Peer(peer));
                    router.clone().oneshot(req.map(axum::body::Body::new))
                });
                let builder = {
                    let mut b = hyper::server::conn::http1::Builder::new();
                    b.timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(HEAD_TIMEOUT)
                        .max_buf_size(MAX_HEAD);
                    b
                };
                match tls {
                    Some(tls) => {
                        let Ok(Ok(stream)) =
                            tokio::time::timeout(HEAD_TIMEOUT, tls.accept(sock)).await
                        else {
                            return;
                        };
                        let conn =
                            builder.serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                        let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
                    }
                    None => {
                        let conn =
                            builder.serve_connection(hyper_util::rt::TokioIo::new(sock), svc);
                        let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
                    }
                }
            });
        }
    })
}
