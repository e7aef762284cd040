//! DNS for sender checks (and later outbound routing): one hickory resolver built from
//! `[dns]`, wrapped in mail-auth's `MessageAuthenticator`, plus caches of parsed records.
//!
//! The resolver caches raw answers within their TTL; the caches here keep the parsed form
//! (SPF, DKIM keys, DMARC records, MX and address sets) until the `valid_until` mail-auth
//! computes from the same TTLs, so a busy MX parses a sender's records once, not per message.
//! All lookups go through the configured nameservers with the configured timeout; a timeout
//! surfaces as a temporary error, which the checks turn into `451`, never into a pass.

use crate::config::{Dns as DnsConfig, parse_nameserver};
use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
};
use mail_auth::{MX, MessageAuthenticator, Parameters, RecordSet, ResolverCache, Txt};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Instant;

/// Entries per cache before expired ones are dropped, then the oldest half.
const CACHE_ENTRIES: usize = 50_000;

/// A bounded map whose entries expire at the time mail-auth gives (the record's TTL).
pub struct TtlCache<K, V> {
    map: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K, V> Default for TtlCache<K, V> {
    fn default() -> Self {
        TtlCache {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> ResolverCache<K, V> for TtlCache<K, V> {
    fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(v, _)| v.clone())
    }

    fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(key).map(|(v, _)| v)
    }

    fn insert(&self, key: K, value: V, valid_until: Instant) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= CACHE_ENTRIES {
            let now = Instant::now();
            map.retain(|_, (_, until)| *until > now);
            if map.len() >= CACHE_ENTRIES {
                // Still full of live entries: keep the half that lives longest.
                let mut untils: Vec<Instant> = map.values().map(|(_, u)| *u).collect();
                untils.sort_unstable();
                let cut = untils[untils.len() / 2];
                map.retain(|_, (_, until)| *until > cut);
            }
        }
        map.insert(key, (value, valid_until));
    }
}

#[derive(Default)]
pub struct Caches {
    pub txt: TtlCache<Box<str>, Txt>,
    pub mx: TtlCache<Box<str>, RecordSet<MX>>,
    pub ipv4: TtlCache<Box<str>, RecordSet<Ipv4Addr>>,
    pub ipv6: TtlCache<Box<str>, RecordSet<Ipv6Addr>>,
    pub ptr: TtlCache<IpAddr, RecordSet<Box<str>>>,
}

type Cached<'a, P> = Parameters<
    'a,
    P,
    TtlCache<Box<str>, Txt>,
    TtlCache<Box<str>, RecordSet<MX>>,
    TtlCache<Box<str>, RecordSet<Ipv4Addr>>,
    TtlCache<Box<str>, RecordSet<Ipv6Addr>>,
    TtlCache<IpAddr, RecordSet<Box<str>>>,
>;

/// The resolver and its caches.
pub struct Dns {
    pub auth: MessageAuthenticator,
    pub caches: Caches,
}

impl Dns {
    pub fn new(cfg: &DnsConfig) -> anyhow::Result<Dns> {
        let (config, mut opts) = if cfg.nameservers.is_empty() {
            mail_auth::hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| anyhow::anyhow!("cannot read the system resolver config: {e}"))?
        } else {
            let servers = cfg
                .nameservers
                .iter()
                .filter_map(|s| parse_nameserver(s))
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                    ns.connections = vec![udp, tcp];
                    ns
                })
                .collect();
            (
                ResolverConfig::from_parts(None, vec![], servers),
                ResolverOpts::default(),
            )
        };
        opts.timeout = cfg.timeout.get();
        opts.attempts = cfg.attempts.max(1);
        opts.edns0 = true;
        let auth = MessageAuthenticator::new(config, opts)
            .map_err(|e| anyhow::anyhow!("cannot build the DNS resolver: {e}"))?;
        Ok(Dns {
            auth,
            caches: Caches::default(),
        })
    }

    /// Wrap check parameters with the caches.
    pub fn params<P>(&self, p: P) -> Cached<'_, P> {
        let c = &self.caches;
        Parameters::new(p)
            .with_txt_cache(&c.txt)
            .with_mx_cache(&c.mx)
            .with_ipv4_cache(&c.ipv4)
            .with_ipv6_cache(&c.ipv6)
            .with_ptr_cache(&c.ptr)
    }
}
