//! Server startup and the listeners.
//!
//! One startup path: open the store, load (or generate) the certificate, bind every listener,
//! recover the queue, and only then serve. A bind failure stops startup with a clear error.
//! Each accepted connection becomes a session task ([`session::run`]); SIGINT/SIGTERM stop the
//! listeners and tell sessions to close with `421 4.3.2`.

pub(crate) mod auth;
mod body;
mod ctx;
mod early;
pub mod freespace;
mod grants;
mod message;
pub mod mta_sts;
mod pop3;
pub mod privileges;
mod record;
mod screen;
pub mod session;
mod shared;
mod stage;
pub mod tls;

pub use shared::{ListenerKind, Shared};

use crate::accounts::{Accounts, Authenticator};
use crate::config::{Config, Loaded};
use crate::delivery::local as manager;
use crate::delivery::maildir::Maildir;
use crate::fsync::DirSync;
use crate::limits::conn::ConnLimiter;
use crate::queue::Queue;
use crate::routing::Routing;
use crate::store::Store;
use anyhow::Context;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How often the gauges read from the store (queue, classifier) are refreshed.
const GAUGE_REFRESH: Duration = Duration::from_secs(15);

/// How often the server looks for a newly trained classifier model.
const CLASSIFIER_REFRESH: Duration = Duration::from_secs(10);

/// A running server's handles, for tests that run it in-process.
pub struct Running {
    pub shared: Arc<Shared>,
    pub bound: Vec<(ListenerKind, std::net::SocketAddr)>,
    /// Where `/metrics` is served, if it is.
    pub metrics: Option<std::net::SocketAddr>,
    /// Where the MTA-STS policy is served, if it is.
    pub mta_sts: Option<std::net::SocketAddr>,
    /// Where the web console is served, if it is.
    pub admin: Option<std::net::SocketAddr>,
    /// Where mail-client autoconfiguration is served, if it is.
    pub autoconfig: Option<std::net::SocketAddr>,
    /// The POP3 listeners bound (`pop3s`, `pop3`).
    pub pop3: Vec<(&'static str, std::net::SocketAddr)>,
    shutdown: watch::Sender<bool>,
    store: Store,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stop accepting, ask sessions to close, and close the store.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in &self.tasks {
            t.abort();
        }
        // Give sessions a moment to send their 421.
        for _ in 0..50 {
            if self.shared.limiter.active() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let store = self.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
    }
}

/// Open everything and bind the listeners; serving starts on return. Time comes from
/// `clock` and every DNS answer from `dns`, for everything the server decides: the binary
/// passes the system's (or a test clock) and the configured resolver; in-process tests pass
/// their own.
pub async fn start(
    config: Config,
    clock: Arc<dyn crate::clock::Clock>,
    dns: Arc<crate::dns::Dns>,
) -> anyhow::Result<Running> {
    let config = Arc::new(config);
    let store = Store::for_config(&config).with_context(|| {
        if crate::store::is_postgres_url(&config.store.url) {
            "cannot open the shared store (store.url)".to_string()
        } else {
            format!("cannot open the store in {}", config.data_dir.display())
        }
    })?;
    let tls = privileges::tls(&config)?;
    let dirsync = DirSync::start();
    let (queue, rx) = Queue::new(
        store.clone(),
        &config.data_dir,
        dirsync.clone(),
        config.queue.memory_budget.0,
        clock.clone(),
        crate::queue::Lease::from_config(&config),
    )?;
    let mailboxes = if config.delivery.lmtp.is_empty() {
        crate::delivery::local::Mailboxes::Maildir(Arc::new(Maildir::new(
            &config.data_dir,
            &config.hostname,
            dirsync,
            config.queue.maildir_sync,
        )))
    } else {
        crate::delivery::local::Mailboxes::Lmtp(Arc::new(crate::delivery::lmtp::Lmtp::new(
            &config.delivery.lmtp,
            &config.hostname,
            config.delivery.connect_timeout.get(),
        )))
    };
    let accounts = Accounts::new(store.clone());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let contain = Arc::new(crate::containment::Containment::new(
        config.clone(),
        store.clone(),
        queue.clone(),
        Routing::new(&config, accounts.clone()),
        clock.clone(),
    ));
    let learn_key = if store.is_shared() {
        crate::learning::shared_key(&store)
            .await
            .context("cannot read the cluster's learn_key")?
    } else {
        crate::learning::key(&config.data_dir)
            .with_context(|| format!("cannot make {}/learn.key", config.data_dir.display()))?
    };
    let shared = Arc::new(Shared {
        learn_key: learn_key.clone(),
        auth: Authenticator::new(
            accounts.clone(),
            config.auth.cache_ttl.get(),
            config.auth.max_pending_verifications,
        ),
        routing: Routing::new(&config, accounts.clone()),
        dns: dns.clone(),
        keyring: crate::dkim::keys::Keyring::new(&config.data_dir).with_store(&store),
        contain: contain.clone(),
        classifier: crate::classifier::Live::default(),
        clock: clock.clone(),
        accounts: accounts.clone(),
        queue: queue.clone(),
        tls: tls.acceptor,
        limiter: ConnLimiter::new(
            config.smtp.max_connections,
            config.smtp.max_connections_per_ip,
        ),
        memory: crate::heavy::Memory::new(config.limits.message_memory.0),
        auth_lines: crate::limits::lines::Lines::default(),
        grants: grants::Grants::new(&config, clock.clone()),
        pop3_locks: crate::maildrop::Locks::default(),
        pop3_sizes: Arc::new(crate::maildrop::Sizes::default()),
        free_space: freespace::FreeSpace::new(
            config.data_dir.clone(),
            config.limits.min_free_space.0,
        ),
        shutdown: shutdown_rx,
        config: config.clone(),
    });

    // The stored model before any port opens: the first message after a start is scored
    // like every other, however large the model is.
    {
        let (s, sh) = (store.clone(), shared.clone());
        tokio::task::spawn_blocking(move || sh.classifier.refresh(&s))
            .await?
            .context("cannot load the classifier's model")?;
        log_loaded(&shared.classifier.get());
    }

    let mut listeners = Vec::new();
    for (name, addr) in config.listeners() {
        if addr.is_empty() {
            continue;
        }
        let l = privileges::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (listen.{name})"))?;
        listeners.push((ListenerKind::from_name(name), l));
    }

    // The recorder is installed before anything is counted.
    let metrics = bind_optional(&config.listen.metrics, "metrics")
        .await?
        .map(|l| (l, crate::metrics::install()));

    let orphans = queue.remove_orphan_spools()?;
    let recovered = queue.recover(true).await?;
    if orphans > 0 || !recovered.is_empty() {
        tracing::info!(
            event = "queue_recovered",
            messages = recovered.len(),
            orphan_spools = orphans
        );
    }
    let sink = Arc::new(crate::reports::inbound::Sink {
        address: config.reports_address(),
        store: store.clone(),
        limits: crate::reports::inbound::Limits::from_config(&config.reports),
        max_rows: config.reports.max_rows,
        clock: shared.clock.clone(),
    });
    let mut tasks = vec![manager::spawn(
        queue.clone(),
        rx,
        mailboxes,
        config.queue.local_concurrency,
        Some(sink),
    )];
    for m in recovered {
        queue.dispatch(m, true);
    }
    if store.is_shared() {
        tasks.push(take_over_local(queue.clone(), config.store.lease.get()));
    }
    let ours = listeners
        .iter()
        .filter_map(|(_, l)| l.local_addr().ok())
        .collect();
    tasks.push(tokio::spawn(crate::reports::outbound::run(
        crate::reports::outbound::Reporter {
            config: config.clone(),
            store: store.clone(),
            dns: dns.clone(),
            queue: queue.clone(),
            routing: Routing::new(&config, accounts.clone()),
            keyring: Arc::new(crate::dkim::keys::Keyring::new(&config.data_dir).with_store(&store)),
            clock: shared.clock.clone(),
        },
    )));
    let policies = crate::delivery::remote::tls_policy::TlsPolicies::new(
        config.clone(),
        dns.clone(),
        store.clone(),
        shared.clock.clone(),
    )?;
    tasks.push(crate::delivery::remote::spawn(
        config.clone(),
        queue.clone(),
        dns,
        Routing::new(&config, accounts),
        contain,
        ours,
        policies,
    ));

    {
        let shared = shared.clone();
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let s = store.clone();
                let sh = shared.clone();
                match tokio::task::spawn_blocking(move || sh.classifier.refresh(&s)).await {
                    Ok(Ok(true)) => log_loaded(&shared.classifier.get()),
                    Ok(Err(e)) => tracing::error!(event = "classifier_load_failed", error = %e),
                    _ => {}
                }
                tokio::time::sleep(CLASSIFIER_REFRESH).await;
            }
        }));
    }
    if config.learning.mode != crate::config::Mode::Off {
        tasks.push(tokio::spawn(crate::learning::run(
            store.clone(),
            config.data_dir.clone(),
            learn_key,
            config.learning.scan_interval.get(),
            shared.clock.clone(),
        )));
    }
    tasks.push(tokio::spawn(crate::quarantine::deliver_released(
        store.clone(),
        queue.clone(),
    )));
    let metrics = match metrics {
        Some((l, handle)) => {
            let addr = l.local_addr()?;
            tasks.push(tokio::spawn(crate::metrics::serve(l, handle)));
            Some(addr)
        }
        None => None,
    };
    let mta_sts = match bind_optional(&config.listen.mta_sts, "mta_sts").await? {
        None => None,
        Some(l) => {
            let a = l.local_addr()?;
            tasks.push(mta_sts::serve(l, config.clone())?);
            Some(a)
        }
    };
    let mut bound = Vec::new();
    let mut pop3_bound = Vec::new();
    for (kind, l) in listeners {
        bound.push((kind, l.local_addr()?));
        tasks.push(tokio::spawn(accept_loop(l, kind, shared.clone())));
    }
    for (name, addr, implicit) in [
        ("pop3s", &config.listen.pop3s, true),
        ("pop3", &config.listen.pop3, false),
    ] {
        if let Some(l) = bind_optional(addr, name).await? {
            pop3_bound.push((name, l.local_addr()?));
            tasks.push(tokio::spawn(pop3::accept_loop(l, implicit, shared.clone())));
        }
    }
    let admin = match bind_optional(&config.listen.admin, "admin").await? {
        None => None,
        Some(l) => {
            let a = l.local_addr()?;
            let mx = bound
                .iter()
                .find(|(k, _)| *k == ListenerKind::Mx)
                .map(|(_, a)| *a);
            tasks.push(crate::console::serve(l, shared.clone(), store.clone(), mx));
            Some(a)
        }
    };
    let autoconfig = match bind_optional(&config.listen.autoconfig, "autoconfig").await? {
        None => None,
        Some(l) => {
            let a = l.local_addr()?;
            tasks.push(crate::autoconfig::serve(l, config.clone()));
            Some(a)
        }
    };
    tasks.push(tokio::spawn(crate::audit::watch(crate::audit::Watch {
        config: config.clone(),
        dns: shared.dns.clone(),
        queue: queue.clone(),
        routing: Routing::new(&config, shared.accounts.clone()),
        clock: shared.clock.clone(),
    })));
    if metrics.is_some() {
        tasks.push(tokio::spawn(crate::metrics::gauges(
            store.clone(),
            shared.clock.clone(),
            GAUGE_REFRESH,
        )));
    }
    tracing::info!(event = "started", hostname = %config.hostname, data_dir = %config.data_dir.display(), tls = %tls.description);
    Ok(Running {
        shared,
        bound,
        metrics,
        mta_sts,
        admin,
        autoconfig,
        pop3: pop3_bound,
        shutdown: shutdown_tx,
        store,
        tasks,
    })
}

/// The listener of an optional `listen.NAME` address; `None` when it is empty (off).
async fn bind_optional(addr: &str, name: &str) -> anyhow::Result<Option<TcpListener>> {
    if addr.is_empty() {
        return Ok(None);
    }
    let l = privileges::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (listen.{name})"))?;
    Ok(Some(l))
}

async fn accept_loop(l: TcpListener, kind: ListenerKind, shared: Arc<Shared>) {
    loop {
        match l.accept().await {
            Ok((sock, peer)) => {
                let _ = sock.set_nodelay(true);
                let local = sock.local_addr().unwrap_or(peer);
                // On a dual-stack listener IPv4 clients arrive as ::ffff:a.b.c.d. Everything
                // keyed on the client (limits, networks, greylisting, DNS lists, SPF, records,
                // metrics) must see the IPv4 address, or all of IPv4 is one /64.
                let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                let local = SocketAddr::new(local.ip().to_canonical(), local.port());
                tokio::spawn(session::run(sock, peer, local, kind, shared.clone()));
            }
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::error!(event = "accept_failed", listener = kind.name(), error = %e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// `mailwarden serve`: start, print what we listen on, run until SIGINT/SIGTERM.
pub async fn serve(loaded: Loaded) -> anyhow::Result<()> {
    let config = loaded.config.clone();
    let dns = Arc::new(crate::dns::Dns::new(&config.dns)?);
    let running = start(loaded.config, crate::clock::from_env(), dns).await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "mailwarden {} serving (config: {})",
        env!("CARGO_PKG_VERSION"),
        loaded.source
    )?;
    writeln!(out, "  hostname     {}", config.hostname)?;
    writeln!(out, "  domains      {}", config.domains.join(", "))?;
    writeln!(out, "  data         {}", config.data_dir.display())?;
    for (kind, addr) in &running.bound {
        let what = match kind {
            ListenerKind::Mx => "SMTP for local domains; STARTTLS offered; no AUTH, no relay",
            ListenerKind::Submission => "submission; STARTTLS, then AUTH PLAIN/LOGIN required",
            ListenerKind::Submissions => "submission over implicit TLS; AUTH PLAIN/LOGIN required",
        };
        writeln!(out, "listening {} {}    ({what})", kind.name(), addr)?;
    }
    if let Some(a) = running.metrics {
        writeln!(
            out,
            "listening metrics {a}    (Prometheus text at GET /metrics; loopback only)"
        )?;
    }
    if let Some(a) = running.mta_sts {
        writeln!(
            out,
            "listening mta_sts {a}    (HTTPS: the MTA-STS policy of every local domain)"
        )?;
    }
    if let Some(a) = running.admin {
        let scheme = if config.admin.tls { "https" } else { "http" };
        writeln!(
            out,
            "listening admin {a}    (the web console: {scheme}://{a}/; log in as an admin account)"
        )?;
    }
    for (name, a) in &running.pop3 {
        let what = if *name == "pop3s" {
            "POP3 over implicit TLS; the accounts' inboxes"
        } else {
            "POP3; STLS required before any login"
        };
        writeln!(out, "listening {name} {a}    ({what})")?;
    }
    if let Some(a) = running.autoconfig {
        writeln!(
            out,
            "listening autoconfig {a}    (mail-client autoconfiguration: Thunderbird, Autodiscover)"
        )?;
    }
    let domain = config
        .domains
        .first()
        .cloned()
        .unwrap_or_else(|| "localhost".into());
    writeln!(out)?;
    writeln!(out, "Add an account:  mailwarden user add alice@{domain}")?;
    writeln!(
        out,
        "                 (from a checkout: cargo run --release -- user add alice@{domain})"
    )?;
    if let Some((_, a)) = running
        .bound
        .iter()
        .find(|(k, _)| *k == ListenerKind::Submissions)
    {
        writeln!(
            out,
            "Send a message:  swaks --server {a} --tls-on-connect --auth-user alice@{domain} --to alice@{domain}"
        )?;
    }
    out.flush()?;
    drop(out);
    wait_for_signal().await;
    tracing::info!(event = "stopping");
    running.stop().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn log_loaded(m: &crate::classifier::Model) {
    tracing::info!(
        event = "classifier_loaded",
        spam = m.spam_messages,
        ham = m.ham_messages,
        tokens = m.tokens_known(),
        weights = if m.weights.is_empty() {
            "built-in"
        } else {
            "learned"
        }
    );
}

/// On a shared store, local deliveries whose node died: claimed when their lease runs out,
/// and delivered here.
fn take_over_local(queue: Arc<Queue>, lease: std::time::Duration) -> tokio::task::JoinHandle<()> {
    let every = (lease / 4).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match queue.recover(false).await {
                Ok(msgs) => {
                    for m in msgs {
                        tracing::info!(event = "queue_taken_over", qid = %m.id);
                        queue.dispatch(m, true);
                    }
                }
                Err(e) => tracing::warn!(event = "queue_take_over_failed", error = %e),
            }
        }
    })
}
