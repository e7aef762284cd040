//! Counters of what the server decided, served as Prometheus text on `listen.metrics`
//! (loopback only; `GET /metrics`, HTTP/1.1 with `Connection: close`).
//!
//! Code counts with the `metrics` crate's macros (`metrics::counter!`); this module installs
//! the recorder once per process and answers scrapes. The HTTP side is deliberately tiny: one
//! path, a bounded request, a timeout. The admin web page will bring a real HTTP stack.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Requests larger than this are not scrapes.
const MAX_REQUEST: usize = 8192;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the recorder (once; later calls return the same handle).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed: then counts go there instead.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Serve scrapes until the task is aborted.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(512);
            let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                true
            })
            .await;
            if read != Ok(true) {
                return;
            }
            let line = buf.split(|b| *b == b'\r').next().unwrap_or_default();
            let (status, body) = if line.starts_with(b"GET /metrics ") {
                ("200 OK", handle.render())
            } else {
                (
                    "404 Not Found",
                    "only GET /metrics is served here\n".to_string(),
                )
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}
