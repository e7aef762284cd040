//! `serve` started as root: bind every listener while root (ports 25, 465, 587), then become
//! `run_as_user` for good, before any other thread exists. The server then takes its
//! listeners from here instead of binding them ([`bind`]).
//!
//! Security: the switch sets the real, effective and saved user and group ids and drops the
//! supplementary groups, so root cannot be regained. It happens while the process has one
//! thread (checked: the kernel changes ids per thread), and is verified afterwards. `data_dir`
//! is handed to the user (it may have been made by a root `user add`), never following a
//! symbolic link. The TLS key is read while root. Without
//! `run_as_user`, a root start stays root and says so in the log.

use crate::config::Config;
use anyhow::Context;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

static PREBOUND: OnceLock<Mutex<HashMap<String, std::net::TcpListener>>> = OnceLock::new();

fn prebound() -> std::sync::MutexGuard<'static, HashMap<String, std::net::TcpListener>> {
    PREBOUND
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The listener for `addr`: bound before the switch, or bound now.
pub async fn bind(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let early = prebound().remove(addr);
    match early {
        Some(l) => {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)
        }
        None => tokio::net::TcpListener::bind(addr).await,
    }
}

/// (uid, gid) of `name` in `/etc/passwd`.
fn lookup(name: &str) -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("cannot read /etc/passwd")?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[0] == name {
            return Ok((f[2].parse()?, f[3].parse()?));
        }
    }
    anyhow::bail!("run_as_user: no user {name:?} in /etc/passwd")
}

/// Hand `path` and what is under it to the user, never following a symbolic link: a link
/// the unprivileged server planted in `data_dir` must not make root give away its target.
/// Only what is not the user's already is changed.
fn chown_tree(
    path: &std::path::Path,
    uid: rustix::fs::Uid,
    gid: rustix::fs::Gid,
) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    if meta.uid() != uid.as_raw() || meta.gid() != gid.as_raw() {
        rustix::fs::chownat(
            rustix::fs::CWD,
            path,
            Some(uid),
            Some(gid),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .with_context(|| format!("cannot hand {} to run_as_user", path.display()))?;
    }
    if meta.is_dir() {
        for e in std::fs::read_dir(path)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

static TLS: Mutex<Option<super::tls::TlsSetup>> = Mutex::new(None);

/// The listeners' TLS: loaded while root when `serve` gave up root (a key readable by root
/// only, as certbot leaves it), else now.
pub fn tls(cfg: &Config) -> anyhow::Result<super::tls::TlsSetup> {
    let early = TLS.lock().unwrap_or_else(|e| e.into_inner()).take();
    match early {
        Some(t) => Ok(t),
        None => super::tls::load(cfg),
    }
}

/// When root: bind the listeners and become `run_as_user`. Call before any thread starts.
/// Returns the user switched to, if any.
pub fn drop_root(cfg: &Config) -> anyhow::Result<Option<String>> {
    if !rustix::process::geteuid().is_root() || cfg.run_as_user.is_empty() {
        return Ok(None);
    }
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(1);
    anyhow::ensure!(
        threads == 1,
        "cannot switch to run_as_user with {threads} threads running"
    );
    let (uid, gid) = lookup(&cfg.run_as_user)?;
    anyhow::ensure!(uid != 0, "run_as_user {:?} is root", cfg.run_as_user);
    let mut addrs: Vec<(&str, &str)> = cfg.listeners().to_vec();
    for (name, a) in [
        ("metrics", &cfg.listen.metrics),
        ("mta_sts", &cfg.listen.mta_sts),
        ("admin", &cfg.listen.admin),
        ("autoconfig", &cfg.listen.autoconfig),
        ("pop3s", &cfg.listen.pop3s),
        ("pop3", &cfg.listen.pop3),
    ] {
        addrs.push((name, a.as_str()));
    }
    {
        let mut early = prebound();
        for (name, a) in addrs {
            if a.is_empty() {
                continue;
            }
            let l = std::net::TcpListener::bind(a)
                .with_context(|| format!("cannot listen on {a} (listen.{name})"))?;
            early.insert(a.to_string(), l);
        }
    }
    let (u, g) = (
        rustix::fs::Uid::from_raw(uid),
        rustix::fs::Gid::from_raw(gid),
    );
    crate::store::create_private_dir(&cfg.data_dir)
        .with_context(|| format!("cannot make {}", cfg.data_dir.display()))?;
    *TLS.lock().unwrap_or_else(|e| e.into_inner()) = Some(super::tls::load(cfg)?);
    chown_tree(&cfg.data_dir, u, g)?;
    rustix::thread::set_thread_groups(&[]).context("setgroups")?;
    rustix::thread::set_thread_res_gid(g, g, g).context("setresgid")?;
    rustix::thread::set_thread_res_uid(u, u, u).context("setresuid")?;
    anyhow::ensure!(
        rustix::process::geteuid().as_raw() == uid
            && rustix::process::getuid().as_raw() == uid
            && rustix::process::getegid().as_raw() == gid
            && rustix::thread::set_thread_res_uid(rustix::fs::Uid::ROOT, None, None).is_err(),
        "the switch to run_as_user did not hold"
    );
    Ok(Some(cfg.run_as_user.clone()))
}
