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
    /// The first configured nameserver, asked directly for loopback PTRs (see
    /// [`Dns::prime_loopback_ptr`]); `None` with the system resolver.
    direct: Option<(std::net::SocketAddr, std::time::Duration)>,
}

impl Dns {
    pub fn new(cfg: &DnsConfig) -> anyhow::Result<Dns> {
        let direct = cfg
            .nameservers
            .iter()
            .find_map(|s| parse_nameserver(s))
            .map(|a| (a, cfg.timeout.get()));
        let (config, opts) = resolver_parts(cfg)?;
        let auth = MessageAuthenticator::new(config, opts)
            .map_err(|e| anyhow::anyhow!("cannot build the DNS resolver: {e}"))?;
        Ok(Dns {
            auth,
            caches: Caches::default(),
            direct,
        })
    }

    /// hickory answers every PTR query under `127.in-addr.arpa` and for `::1` itself, with
    /// `localhost` (RFC 6761 §6.3), so a loopback client could never have another name. When
    /// nameservers are configured, ask the first one directly and put its answer in the PTR
    /// cache, where the iprev check finds it. This is what lets loopback test beds play
    /// clients with and without reverse names; other addresses never come here.
    pub async fn prime_loopback_ptr(&self, ip: IpAddr) {
        use mail_auth::hickory_resolver::proto::op::{Message, Query, ResponseCode};
        use mail_auth::hickory_resolver::proto::rr::{Name, RData, RecordType};
        let Some((server, timeout)) = self.direct else {
            return;
        };
        if !ip.is_loopback() || ResolverCache::get(&self.caches.ptr, &ip).is_some() {
            return;
        }
        let mut q = Message::query();
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(Name::from(ip), RecordType::PTR));
        let Ok(wire) = q.to_vec() else { return };
        let answer = async {
            let bind: std::net::SocketAddr = if server.is_ipv4() {
                ([127, 0, 0, 1], 0).into()
            } else {
                (Ipv6Addr::LOCALHOST, 0).into()
            };
            let sock = tokio::net::UdpSocket::bind(bind).await.ok()?;
            sock.send_to(&wire, server).await.ok()?;
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, from) = sock.recv_from(&mut buf).await.ok()?;
                let Ok(m) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                if from == server && m.metadata.id == q.metadata.id {
                    return Some(m);
                }
            }
        };
        // No answer leaves the cache empty: the normal lookup then runs, as it would anyway.
        let Ok(Some(m)) = tokio::time::timeout(timeout, answer).await else {
            return;
        };
        if !matches!(
            m.metadata.response_code,
            ResponseCode::NoError | ResponseCode::NXDomain
        ) {
            return;
        }
        let mut ttl = 300u32;
        let names: Vec<Box<str>> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::PTR(p) => {
                    ttl = ttl.min(r.ttl);
                    Some(p.to_lowercase().to_ascii().into_boxed_str())
                }
                _ => None,
            })
            .collect();
        let until = Instant::now() + std::time::Duration::from_secs(ttl.max(1) as u64);
        let set = RecordSet {
            rrset: names.into(),
            dnssec_status: mail_auth::DnssecStatus::Indeterminate,
        };
        ResolverCache::insert(&self.caches.ptr, ip, set, until);
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

/// The resolver's servers and options from `[dns]` (also the DANE resolver's).
pub fn resolver_parts(cfg: &DnsConfig) -> anyhow::Result<(ResolverConfig, ResolverOpts)> {
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
    Ok((config, opts))
}
