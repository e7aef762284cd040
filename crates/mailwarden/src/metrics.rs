//! What the server does, served as Prometheus text on `listen.metrics` (loopback only;
//! `GET /metrics`, HTTP/1.1 with `Connection: close`). `docs/monitoring/` has alert rules and
//! a dashboard built on these names.
//!
//! Code counts with the `metrics` crate's macros (`metrics::counter!`); this module installs
//! the recorder once per process (with the histograms' buckets), answers scrapes, keeps the
//! gauges that are read from the store ([`gauges`]: the queue by state, the classifier
//! model's age) and names the few metrics several modules share. Labels are always from small
//! fixed sets (actions, states, check names), never from client input. The HTTP side is
//! deliberately tiny: one path, a bounded request, a timeout.

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
            let seconds = [
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets(&seconds)
                .expect("buckets")
                .build_recorder();
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

/// One DNS lookup: `kind` is the record type asked, `result` `ok`, `nxdomain` (no such name or
/// no record) or `error`.
pub fn dns_lookup(kind: &'static str, result: &'static str, started: std::time::Instant) {
    metrics::counter!("mailwarden_dns_lookups_total", "type" => kind, "result" => result)
        .increment(1);
    metrics::histogram!("mailwarden_dns_lookup_seconds", "type" => kind)
        .record(started.elapsed().as_secs_f64());
}

/// A TLS handshake, `side` `inbound` or `outbound`.
pub fn tls_handshake(side: &'static str, ok: bool) {
    let result = if ok { "ok" } else { "failed" };
    metrics::counter!("mailwarden_tls_handshakes_total", "side" => side, "result" => result)
        .increment(1);
}

/// The certificate's end, as `mailwarden_tls_certificate_expiry_timestamp_seconds`.
pub fn set_cert_expiry(not_after: i64) {
    metrics::gauge!("mailwarden_tls_certificate_expiry_timestamp_seconds").set(not_after as f64);
}

/// The self-audit's findings: per check and status, how many; plus one gauge per listed
/// address (`mailwarden_address_listed`, 1 while listed).
pub fn audit_findings(found: &[crate::audit::Finding]) {
    use crate::audit::Status;
    use std::collections::{BTreeMap, BTreeSet};
    // (metric, label, value) of every series written; those of the last run that this one
    // does not write again go to 0, so alerts on them resolve (an address no longer ours).
    static LAST: std::sync::Mutex<BTreeSet<(String, String)>> =
        std::sync::Mutex::new(BTreeSet::new());
    let mut by: BTreeMap<(&'static str, &'static str), u32> = BTreeMap::new();
    let mut listed: BTreeMap<String, bool> = BTreeMap::new();
    for f in found {
        for s in [Status::Pass, Status::Warn, Status::Fail] {
            by.entry((f.check, s.as_str())).or_insert(0);
        }
        *by.entry((f.check, f.status.as_str())).or_insert(0) += 1;
        if f.check == "dnsbl" {
            *listed.entry(f.subject.clone()).or_insert(false) |= f.status == Status::Fail;
        }
    }
    let mut now = BTreeSet::new();
    for ((check, status), n) in by {
        metrics::gauge!("mailwarden_audit_findings", "check" => check, "status" => status)
            .set(n as f64);
        now.insert((format!("{check}/{status}"), String::new()));
    }
    for (address, is_listed) in listed {
        metrics::gauge!("mailwarden_address_listed", "address" => address.clone())
            .set(if is_listed { 1.0 } else { 0.0 });
        now.insert((String::new(), address));
    }
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    for (series, address) in last.difference(&now) {
        if let Some((check, status)) = series.split_once('/') {
            metrics::gauge!("mailwarden_audit_findings", "check" => check.to_string(), "status" => status.to_string())
                .set(0.0);
        } else {
            metrics::gauge!("mailwarden_address_listed", "address" => address.clone()).set(0.0);
        }
    }
    *last = now;
}

/// The gauges read from the store, refreshed every `every`: the queue's recipients and the
/// oldest one's age by state, and the classifier model's age.
pub async fn gauges(
    store: crate::store::Store,
    clock: std::sync::Arc<dyn crate::clock::Clock>,
    every: Duration,
) {
    // The states an alert watches read 0 from the start, not "no data".
    let mut seen: std::collections::HashSet<String> = ["queued", "deferred", "held"]
        .into_iter()
        .map(String::from)
        .collect();
    loop {
        let s = store.clone();
        let read = tokio::task::spawn_blocking(move || {
            let q = crate::queue::admin::stats(&s)?;
            let trained = crate::classifier::Model::trained_at(&s)?;
            Ok::<_, crate::store::StoreError>((q, trained))
        })
        .await;
        if let Ok(Ok((queue, trained))) = read {
            let now = clock.now_secs();
            let mut states: std::collections::HashSet<String> = Default::default();
            for st in queue {
                metrics::gauge!("mailwarden_queue_recipients", "state" => st.status.clone())
                    .set(st.recipients as f64);
                metrics::gauge!("mailwarden_queue_oldest_age_seconds", "state" => st.status.clone())
                    .set((now - st.oldest).max(0) as f64);
                states.insert(st.status);
            }
            // A state that emptied reads 0, not its last value.
            for gone in seen.difference(&states) {
                metrics::gauge!("mailwarden_queue_recipients", "state" => gone.clone()).set(0.0);
                metrics::gauge!("mailwarden_queue_oldest_age_seconds", "state" => gone.clone())
                    .set(0.0);
            }
            seen.extend(states);
            if let Some(t) = trained {
                metrics::gauge!("mailwarden_classifier_model_age_seconds")
                    .set((now - t).max(0) as f64);
            }
        }
        tokio::time::sleep(every).await;
    }
}
