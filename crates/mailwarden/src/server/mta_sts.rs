//! The MTA-STS policy we publish (RFC 8461 §3.2), served over HTTPS on `listen.mta_sts` at
//! `https://mta-sts.<domain>/.well-known/mta-sts.txt` for each local domain, built from
//! `[mta_sts]`. Its id (`policy_id`) is a hash of its text, so the `_mta-sts` record that
//! `dns records` prints changes exactly when the policy does.
//!
//! Security: HTTP/1 only, one request path, at most [`MAX_CONNECTIONS`] connections, request
//! heads capped at [`MAX_HEAD`] bytes and [`HEAD_TIMEOUT`]; other hosts and paths get 404.

use crate::config::{Config, StsMode};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

const MAX_CONNECTIONS: usize = 256;
const MAX_HEAD: usize = 16 << 10;
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The policy's text.
pub fn policy_text(cfg: &Config) -> String {
    let mode = match cfg.mta_sts.mode {
        StsMode::Enforce => "enforce",
        StsMode::Testing => "testing",
        StsMode::None => "none",
    };
    let mut out = format!("version: STSv1\r\nmode: {mode}\r\n");
    let mx = if cfg.mta_sts.mx.is_empty() {
        vec![cfg.hostname.clone()]
    } else {
        cfg.mta_sts.mx.clone()
    };
    for m in mx {
        out.push_str(&format!("mx: {}\r\n", m.trim_end_matches('.')));
    }
    out.push_str(&format!(
        "max_age: {}\r\n",
        cfg.mta_sts.max_age.get().as_secs()
    ));
    out
}

/// The policy's id: its text's SHA-256, shortened (RFC 8461 §3.1 allows 32 characters).
pub fn policy_id(cfg: &Config) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, policy_text(cfg).as_bytes());
    d.as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// TLS for the listener: `mta_sts.cert`/`key`, else the listeners' certificate.
fn acceptor(cfg: &Config) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let mut c = cfg.clone();
    if let (Some(cert), Some(key)) = (&cfg.mta_sts.cert, &cfg.mta_sts.key) {
        c.tls.cert = Some(cert.clone());
        c.tls.key = Some(key.clone());
    }
    Ok(super::tls::load(&c)?.acceptor)
}

fn answer(cfg: &Config, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or("")
        .to_ascii_lowercase();
    let host = host.split(':').next().unwrap_or("");
    let ours = host
        .strip_prefix("mta-sts.")
        .is_some_and(|d| cfg.domains.iter().any(|x| x.eq_ignore_ascii_case(d)));
    let (status, body) = if req.uri().path() == "/.well-known/mta-sts.txt"
        && ours
        && req.method() == hyper::Method::GET
    {
        (StatusCode::OK, policy_text(cfg))
    } else {
        (StatusCode::NOT_FOUND, "not found\r\n".to_string())
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    resp
}

/// Serve the policy on `l` until the task is dropped.
pub fn serve(l: TcpListener, cfg: Arc<Config>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let tls = acceptor(&cfg)?;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        loop {
            let Ok((sock, peer)) = l.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue; // full: dropped
            };
            let (tls, cfg) = (tls.clone(), cfg.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let Ok(Ok(stream)) = tokio::time::timeout(HEAD_TIMEOUT, tls.accept(sock)).await
                else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    let resp = answer(&cfg, &req);
                    tracing::info!(event = "mta_sts_request", ip = %peer.ip(), path = %req.uri().path(), status = resp.status().as_u16());
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEAD_TIMEOUT)
                    .max_buf_size(MAX_HEAD)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
            });
        }
    }))
}
