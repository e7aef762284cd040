//! A small authoritative DNS server on loopback for mailwarden's tests and benchmarks
//! (hickory-server). It serves records from a simple text format, answers NXDOMAIN for every
//! other name (the root included, since DMARC walks parent domains), and can make names time
//! out or fail, to test how checks behave when DNS misbehaves.
//!
//! Zone text, one record per line (`#` starts a comment; names are absolute, a trailing dot is
//! optional):
//!
//! ```text
//! example.test.             TXT   "v=spf1 ip4:127.0.0.1 -all"
//! _dmarc.example.test       TXT   v=DMARC1; p=reject
//! example.test              MX    10 mx.example.test
//! mx.example.test           A     127.0.0.1
//! mx.example.test           AAAA  ::1
//! 1.0.0.127.in-addr.arpa    PTR   mx.example.test
//! www.example.test          CNAME example.test
//! slow.example.test         TIMEOUT          # never answered (but for types it has records of)
//! broken.example.test       SERVFAIL
//! closed.example.test       REFUSED
//! bare.example.test         NOSOA            # its NXDOMAIN or NODATA comes without an SOA
//! _25._tcp.mx.example.test  TLSA  3 1 1 0123abcd...
//! secure.test               SIGNED           # a DNSSEC-signed zone (see below)
//! ```
//!
//! DNSSEC: a name marked `SIGNED` is the apex of a zone served signed (NSEC, ECDSA P-256),
//! with every record at or below it (`. SIGNED` signs the root alone). The root is then
//! signed too, proving the other top-level domains insecure delegations, so a validating resolver sees the signed zones as
//! secure and the rest as insecure. [`TestDns::trust_anchors`] gives the keys to trust (the
//! root's and each signed zone's: islands of security, no DS records needed). Keys are made
//! once per server; zones are signed again whenever they change.
//!
//! A TXT value in double quotes may be split into several quoted strings, which are joined;
//! unquoted, the rest of the line is the value. Long values are split into 255-byte strings on
//! the wire.
#![forbid(unsafe_code)]

use hickory_server::dnssec::NxProofKind;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::dnssec::crypto::EcdsaSigningKey;
use hickory_server::proto::dnssec::rdata::DNSKEY;
use hickory_server::proto::dnssec::{Algorithm, DnssecSigner, PublicKeyBuf, SigningKey};
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::LowerName;
use hickory_server::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, MX, NS, PTR, SOA, TLSA, TXT};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, MessageResponseBuilder, ZoneType};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub enum Rec {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Mx(u16, String),
    Txt(Vec<u8>),
    Ptr(String),
    Cname(String),
    /// usage, selector, matching type, data.
    Tlsa(u8, u8, u8, Vec<u8>),
}

impl Rec {
    fn rtype(&self) -> RecordType {
        match self {
            Rec::A(_) => RecordType::A,
            Rec::Aaaa(_) => RecordType::AAAA,
            Rec::Mx(..) => RecordType::MX,
            Rec::Txt(_) => RecordType::TXT,
            Rec::Ptr(_) => RecordType::PTR,
            Rec::Cname(_) => RecordType::CNAME,
            Rec::Tlsa(..) => RecordType::TLSA,
        }
    }
}

/// `example.test` / `Example.Test.` → `example.test.`
pub fn fqdn(name: &str) -> String {
    let n = name.trim().to_ascii_lowercase();
    if n.ends_with('.') { n } else { format!("{n}.") }
}

/// The records served, keyed by lowercase FQDN.
#[derive(Clone, Debug, Default)]
pub struct Zones {
    records: HashMap<String, Vec<Rec>>,
    timeouts: HashSet<String>,
    servfail: HashSet<String>,
    refused: HashSet<String>,
    /// Names whose negative answers carry no SOA (some servers answer so; RFC 2308 §2.2).
    nosoa: HashSet<String>,
    /// Apexes of the zones served signed.
    signed: std::collections::BTreeSet<String>,
}

impl Zones {
    pub fn new() -> Zones {
        Zones::default()
    }

    /// Parse zone text (see the crate docs).
    pub fn parse(text: &str) -> Result<Zones, String> {
        let mut z = Zones::new();
        z.load(text)?;
        Ok(z)
    }

    /// Add the records of zone text to these zones.
    pub fn load(&mut self, text: &str) -> Result<(), String> {
        for (n, raw) in text.lines().enumerate() {
            let line = strip_comment(raw).trim();
            if line.is_empty() {
                continue;
            }
            // Columns may be aligned with runs of blanks, so split token by token.
            let (name, rest) = next_token(line);
            let (rtype, data) = next_token(rest);
            let rtype = rtype.to_ascii_uppercase();
            let bad = |what: &str| format!("line {}: {what}: {raw}", n + 1);
            match rtype.as_str() {
                "A" => self.add(
                    name,
                    Rec::A(data.parse().map_err(|_| bad("bad IPv4 address"))?),
                ),
                "AAAA" => self.add(
                    name,
                    Rec::Aaaa(data.parse().map_err(|_| bad("bad IPv6 address"))?),
                ),
                "MX" => {
                    let (pref, host) = data
                        .split_once(char::is_whitespace)
                        .ok_or_else(|| bad("MX needs preference and host"))?;
                    let pref = pref.parse().map_err(|_| bad("bad MX preference"))?;
                    self.add(name, Rec::Mx(pref, fqdn(host.trim())))
                }
                "TXT" | "SPF" => self.add(name, Rec::Txt(txt_value(data))),
                "PTR" => self.add(name, Rec::Ptr(fqdn(data))),
                "CNAME" => self.add(name, Rec::Cname(fqdn(data))),
                "TIMEOUT" => self.timeout(name),
                "SERVFAIL" => self.servfail(name),
                "REFUSED" => self.refused(name),
                "NOSOA" => self.no_soa(name),
                "SIGNED" => self.sign(name),
                "TLSA" => {
                    let f: Vec<&str> = data.split_whitespace().collect();
                    let hex = f.get(3..).map(|h| h.concat()).unwrap_or_default();
                    let bytes: Option<Vec<u8>> = (0..hex.len())
                        .step_by(2)
                        .map(|i| {
                            hex.get(i..i + 2)
                                .and_then(|b| u8::from_str_radix(b, 16).ok())
                        })
                        .collect();
                    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u8>().ok());
                    match (num(0), num(1), num(2), bytes) {
                        (Some(u), Some(s), Some(m), Some(d)) if !d.is_empty() => {
                            self.add(name, Rec::Tlsa(u, s, m, d))
                        }
                        _ => return Err(bad("TLSA needs usage selector matching hex")),
                    }
                }
                _ => return Err(bad("unknown record type")),
            };
        }
        Ok(())
    }

    pub fn add(&mut self, name: &str, rec: Rec) -> &mut Self {
        self.records.entry(fqdn(name)).or_default().push(rec);
        self
    }

    pub fn txt(&mut self, name: &str, text: &str) -> &mut Self {
        self.add(name, Rec::Txt(text.as_bytes().to_vec()))
    }

    pub fn a(&mut self, name: &str, ip: Ipv4Addr) -> &mut Self {
        self.add(name, Rec::A(ip))
    }

    pub fn mx(&mut self, name: &str, pref: u16, host: &str) -> &mut Self {
        self.add(name, Rec::Mx(pref, fqdn(host)))
    }

    /// A PTR for `ip` (the in-addr.arpa / ip6.arpa name is derived).
    pub fn ptr(&mut self, ip: IpAddr, host: &str) -> &mut Self {
        self.add(&reverse_name(ip), Rec::Ptr(fqdn(host)))
    }

    /// Queries for this name are never answered, except for types it has records of (as the
    /// OpenSPF suite's `TIMEOUT` means: a TXT record beside it is still served).
    pub fn timeout(&mut self, name: &str) -> &mut Self {
        self.timeouts.insert(fqdn(name));
        self
    }

    /// Queries for this name get REFUSED.
    pub fn refused(&mut self, name: &str) -> &mut Self {
        self.refused.insert(fqdn(name));
        self
    }

    /// This name's negative answers (NXDOMAIN, NODATA) carry no SOA.
    pub fn no_soa(&mut self, name: &str) -> &mut Self {
        self.nosoa.insert(fqdn(name));
        self
    }

    /// Serve the zone at `apex` signed.
    pub fn sign(&mut self, apex: &str) -> &mut Self {
        self.signed.insert(fqdn(apex));
        self
    }

    /// Queries for this name get SERVFAIL.
    pub fn servfail(&mut self, name: &str) -> &mut Self {
        self.servfail.insert(fqdn(name));
        self
    }

    /// Remove every record of a name.
    pub fn remove(&mut self, name: &str) -> &mut Self {
        let n = fqdn(name);
        self.records.remove(&n);
        self.timeouts.remove(&n);
        self.servfail.remove(&n);
        self.refused.remove(&n);
        self.nosoa.remove(&n);
        self.signed.remove(&n);
        self
    }

    fn answer(&self, name: &str, rtype: RecordType) -> Answer {
        if self.timeouts.contains(name)
            && !self
                .records
                .get(name)
                .is_some_and(|r| r.iter().any(|r| r.rtype() == rtype))
        {
            return Answer::Timeout;
        }
        if self.servfail.contains(name) {
            return Answer::ServFail;
        }
        if self.refused.contains(name) {
            return Answer::Refused;
        }
        let Some(recs) = self.records.get(name) else {
            // An empty non-terminal (a name with records below it) exists: NODATA, not NXDOMAIN.
            let suffix = format!(".{name}");
            if self.records.keys().any(|k| k.ends_with(&suffix)) {
                return Answer::Records(Vec::new());
            }
            return Answer::NxDomain;
        };
        let out: Vec<Rec> = recs
            .iter()
            .filter(|r| r.rtype() == rtype)
            .cloned()
            .collect();
        if !out.is_empty() || rtype == RecordType::CNAME {
            return Answer::Records(out);
        }
        // Follow a CNAME chain, as an authoritative server for all the zones would, stopping
        // at a loop or after 8 hops (the SPF suite has CNAME loops); the client sees the
        // chain so far and gives up itself.
        let mut chain = Vec::new();
        let mut owner = name.to_string();
        let mut current = recs;
        for _ in 0..8 {
            let Some(Rec::Cname(target)) = current.iter().find(|r| matches!(r, Rec::Cname(_)))
            else {
                break;
            };
            chain.push((owner.clone(), Rec::Cname(target.clone())));
            if chain.iter().any(|(o, _)| o == target) {
                break;
            }
            owner = target.clone();
            match self.records.get(target) {
                Some(next) => current = next,
                None => break,
            }
            let found: Vec<Rec> = current
                .iter()
                .filter(|r| r.rtype() == rtype)
                .cloned()
                .collect();
            if !found.is_empty() {
                chain.extend(found.into_iter().map(|r| (owner.clone(), r)));
                break;
            }
        }
        if chain.is_empty() {
            Answer::Records(out)
        } else {
            Answer::Chain(chain)
        }
    }
}

enum Answer {
    Records(Vec<Rec>),
    /// CNAMEs followed from the queried name, then the final target's records, each with
    /// its owner name.
    Chain(Vec<(String, Rec)>),
    NxDomain,
    ServFail,
    Refused,
    Timeout,
}

/// The first blank-separated token of `s` and the trimmed remainder.
fn next_token(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.split_once(char::is_whitespace) {
        Some((tok, rest)) => (tok, rest.trim()),
        None => (s, ""),
    }
}

fn strip_comment(line: &str) -> &str {
    // A '#' inside a quoted TXT value is data.
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

fn txt_value(data: &str) -> Vec<u8> {
    let d = data.trim();
    if !d.starts_with('"') {
        return d.as_bytes().to_vec();
    }
    // One or more quoted strings, joined; `\"` and `\\` escaped inside.
    let mut out = Vec::new();
    let mut chars = d.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        let mut b = [0; 4];
                        out.extend_from_slice(n.encode_utf8(&mut b).as_bytes());
                    }
                }
                '"' => break,
                c => {
                    let mut b = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                }
            }
        }
    }
    out
}

/// `127.0.0.1` → `1.0.0.127.in-addr.arpa.`
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(a) => {
            let mut s = String::new();
            for b in a.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s.push_str("ip6.arpa.");
            s
        }
    }
}

/// A name from raw labels: zone names may hold characters hickory's text parser refuses
/// (the SPF suite has `foo:bar/baz.example.com`).
fn name(text: &str) -> Option<Name> {
    let t = text.strip_suffix('.').unwrap_or(text);
    if t.is_empty() {
        return Some(Name::root());
    }
    Name::from_labels(t.split('.').map(str::as_bytes)).ok()
}

fn rdata(rec: &Rec) -> Option<RData> {
    Some(match rec {
        Rec::A(a) => RData::A(A(*a)),
        Rec::Aaaa(a) => RData::AAAA(AAAA(*a)),
        Rec::Mx(p, h) => RData::MX(MX::new(*p, name(h)?)),
        // An empty record is one empty character-string: a TXT RR cannot have none.
        Rec::Txt(t) if t.is_empty() => RData::TXT(TXT::from_bytes(vec![&b""[..]])),
        Rec::Txt(t) => RData::TXT(TXT::from_bytes(t.chunks(255).collect::<Vec<_>>())),
        Rec::Ptr(h) => RData::PTR(PTR(name(h)?)),
        Rec::Cname(h) => RData::CNAME(CNAME(name(h)?)),
        Rec::Tlsa(u, s, m, d) => RData::TLSA(TLSA::new(
            CertUsage::from(*u),
            Selector::from(*s),
            Matching::from(*m),
            d.clone(),
        )),
    })
}

struct Handler {
    zones: Arc<RwLock<Zones>>,
    queries: Arc<std::sync::atomic::AtomicU64>,
    /// The signed zones, as hickory serves them; rebuilt when the zones change.
    signed: Arc<RwLock<Option<Arc<Catalog>>>>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: hickory_server::net::runtime::Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        self.queries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let edns = request.edns.as_ref().map(|e| {
            let mut out = Edns::new();
            out.set_max_payload(e.max_payload().max(512));
            out
        });
        let Ok(info) = request.request_info() else {
            let resp = MessageResponseBuilder::new(&request.queries, edns.as_ref())
                .error_msg(&request.metadata, ResponseCode::FormErr);
            return send(&mut response_handle, resp, request).await;
        };
        // Raw label bytes, not Display (which escapes `:` and `/`, legal in SPF targets).
        let labels: Vec<String> = info
            .query
            .name()
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        let qname = fqdn(&labels.join("."));
        let qtype = info.query.query_type();
        let catalog = self
            .signed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(catalog) = catalog {
            let lower = info.query.name();
            let signed = match catalog.find(lower) {
                // Inside a signed zone.
                Some(h) if !h[0].origin().is_root() => true,
                // The root itself, and the NS and DS of top-level domains (their insecure
                // delegations).
                Some(_) => {
                    lower.is_root()
                        || (lower.num_labels() == 1
                            && matches!(qtype, RecordType::NS | RecordType::DS))
                }
                None => false,
            };
            if signed {
                return catalog
                    .handle_request::<R, T>(request, response_handle)
                    .await;
            }
        }
        let (answer, no_soa) = {
            let z = self.zones.read().unwrap_or_else(|e| e.into_inner());
            (z.answer(&qname, qtype), z.nosoa.contains(&qname))
        };
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.authoritative = true;
        let records: Vec<Record> = match answer {
            Answer::Timeout => {
                // Never answer: the resolver times out.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return serve_failed(request);
            }
            Answer::ServFail => {
                let resp = MessageResponseBuilder::new(&request.queries, edns.as_ref())
                    .error_msg(&request.metadata, ResponseCode::ServFail);
                return send(&mut response_handle, resp, request).await;
            }
            Answer::Refused => {
                let resp = MessageResponseBuilder::new(&request.queries, edns.as_ref())
                    .error_msg(&request.metadata, ResponseCode::Refused);
                return send(&mut response_handle, resp, request).await;
            }
            Answer::NxDomain => {
                let soa: Vec<Record> = if no_soa {
                    Vec::new()
                } else {
                    vec![negative_soa()]
                };
                meta.response_code = ResponseCode::NXDomain;
                let resp = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
                    meta,
                    std::iter::empty(),
                    std::iter::empty(),
                    soa.iter(),
                    std::iter::empty(),
                );
                return send(&mut response_handle, resp, request).await;
            }
            Answer::Records(recs) => to_records(&qname, &recs),
            Answer::Chain(chain) => chain
                .into_iter()
                .flat_map(|(owner, rec)| to_records(&owner, &[rec]))
                .collect(),
        };
        // NODATA carries the SOA too, so resolvers cache it like NXDOMAIN.
        let soa: Vec<Record> = if records.is_empty() && !no_soa {
            vec![negative_soa()]
        } else {
            Vec::new()
        };
        let resp = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
            meta,
            records.iter(),
            std::iter::empty(),
            soa.iter(),
            std::iter::empty(),
        );
        send(&mut response_handle, resp, request).await
    }
}

/// The SOA of negative answers (RFC 2308 §3): without it resolvers may not cache NXDOMAIN and
/// NODATA at all, which real authoritative servers never make them do. TTL and minimum 60 s,
/// like the positive answers.
fn negative_soa() -> Record {
    zone_soa(&Name::root())
}

fn to_records(name: &str, recs: &[Rec]) -> Vec<Record> {
    let Some(n) = self::name(name) else {
        return Vec::new();
    };
    recs.iter()
        .filter_map(|r| rdata(r).map(|d| Record::from_rdata(n.clone(), 60, d)))
        .collect()
}

async fn send<'a, R: ResponseHandler>(
    h: &mut R,
    resp: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    request: &Request,
) -> ResponseInfo {
    match h.send_response(resp).await {
        Ok(info) => info,
        Err(_) => serve_failed(request),
    }
}

fn serve_failed(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

/// Signing keys (PKCS#8, ECDSA P-256) by zone apex, made once per server.
type Keys = Arc<std::sync::Mutex<HashMap<String, Vec<u8>>>>;

fn signer(apex: &Name, keys: &Keys) -> Option<(DnssecSigner, PublicKeyBuf)> {
    let alg = Algorithm::ECDSAP256SHA256;
    let pkcs8 = {
        let mut k = keys.lock().unwrap_or_else(|e| e.into_inner());
        k.entry(apex.to_ascii().to_ascii_lowercase())
            .or_insert_with(|| {
                EcdsaSigningKey::generate_pkcs8(alg)
                    .map(|d| d.secret_pkcs8_der().to_vec())
                    .unwrap_or_default()
            })
            .clone()
    };
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8);
    let key: Box<dyn SigningKey> = Box::new(EcdsaSigningKey::from_pkcs8(&der, alg).ok()?);
    let public = key.to_public_key().ok()?;
    let signer = DnssecSigner::new(
        DNSKEY::from_key(&public),
        key,
        apex.clone(),
        Duration::from_secs(30 * 86400),
    );
    Some((signer, public))
}

/// The SOA of every zone here, signed or not.
fn zone_soa(origin: &Name) -> Record {
    let soa = SOA::new(
        Name::from_ascii("ns.testdns.").expect("static name"),
        Name::from_ascii("hostmaster.testdns.").expect("static name"),
        1,
        3600,
        600,
        86400,
        60,
    );
    Record::from_rdata(origin.clone(), 60, RData::SOA(soa))
}

/// One zone, signed: SOA and NS at the apex, `records`, NSEC, RRSIGs.
fn signed_zone(
    apex: &Name,
    records: Vec<Record>,
    keys: &Keys,
) -> Option<InMemoryZoneHandler<TokioRuntimeProvider>> {
    let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
        apex.clone(),
        ZoneType::Primary,
        AxfrPolicy::Deny,
        Some(NxProofKind::Nsec),
    );
    // The SOA first: the DNSKEY takes its TTL from it.
    zone.upsert_mut(zone_soa(apex), 0);
    let ns = Name::from_ascii("ns.testdns.").expect("static name");
    zone.upsert_mut(Record::from_rdata(apex.clone(), 60, RData::NS(NS(ns))), 0);
    for r in records {
        zone.upsert_mut(r, 0);
    }
    let (signer, _) = signer(apex, keys)?;
    zone.add_zone_signing_key_mut(signer).ok()?;
    zone.secure_zone_mut().ok()?;
    Some(zone)
}

/// The signed root and zones of `z`, or `None` when no zone is signed.
fn build_signed(z: &Zones, keys: &Keys) -> Option<Arc<Catalog>> {
    if z.signed.is_empty() {
        return None;
    }
    let mut catalog = Catalog::new();
    // The root delegates every top-level domain the zones use, unsigned (no DS): NSEC proves
    // them insecure, and signed zones below are islands with their own anchors.
    let mut tlds: std::collections::BTreeSet<String> = z
        .records
        .keys()
        .chain(z.signed.iter())
        .filter_map(|n| {
            n.trim_end_matches('.')
                .rsplit('.')
                .next()
                .map(str::to_string)
        })
        .filter(|t| !t.is_empty())
        .collect();
    tlds.insert("arpa".into());
    let ns = Name::from_ascii("ns.testdns.").expect("static name");
    let root_records = tlds
        .iter()
        .filter_map(|t| Some(Record::from_rdata(name(t)?, 60, RData::NS(NS(ns.clone())))))
        .collect();
    let root = signed_zone(&Name::root(), root_records, keys)?;
    catalog.upsert(LowerName::from(&Name::root()), vec![Arc::new(root)]);
    for apex in z.signed.iter().filter(|a| *a != ".") {
        let origin = name(apex)?;
        let suffix = format!(".{apex}");
        let records = z
            .records
            .iter()
            .filter(|(n, _)| *n == apex || n.ends_with(&suffix))
            .flat_map(|(n, recs)| to_records(n, recs))
            .collect();
        let zone = signed_zone(&origin, records, keys)?;
        catalog.upsert(LowerName::from(&origin), vec![Arc::new(zone)]);
    }
    Some(Arc::new(catalog))
}

/// A running server. Dropping it stops the server.
pub struct TestDns {
    pub addr: SocketAddr,
    zones: Arc<RwLock<Zones>>,
    signed: Arc<RwLock<Option<Arc<Catalog>>>>,
    keys: Keys,
    queries: Arc<std::sync::atomic::AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestDns {
    /// Start on 127.0.0.1, UDP and TCP on the same free port, in a thread of its own (so it
    /// works from plain tests and from any async runtime).
    pub fn start(zones: Zones) -> TestDns {
        TestDns::start_on(zones, SocketAddr::from(([127, 0, 0, 1], 0))).expect("start testdns")
    }

    /// Start on a given loopback address; port 0 picks a free port shared by UDP and TCP.
    /// Other than loopback is refused: this server answers with made-up records.
    pub fn start_on(zones: Zones, at: SocketAddr) -> Result<TestDns, String> {
        if !at.ip().is_loopback() {
            return Err(format!("{at} is not a loopback address"));
        }
        let keys: Keys = Arc::default();
        let signed = Arc::new(RwLock::new(build_signed(&zones, &keys)));
        let zones = Arc::new(RwLock::new(zones));
        let queries = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sg = signed.clone();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (z, q) = (zones.clone(), queries.clone());
        let thread = std::thread::Builder::new()
            .name("testdns".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("testdns runtime");
                rt.block_on(async move {
                    // With port 0, UDP gets a free port and TCP must get the same one:
                    // retry while it is taken. A fixed port is tried once.
                    let (udp, tcp) = loop {
                        let udp = match tokio::net::UdpSocket::bind(at).await {
                            Ok(u) => u,
                            Err(e) => {
                                let _ = addr_tx.send(Err(format!("bind udp {at}: {e}")));
                                return;
                            }
                        };
                        let bound = match udp.local_addr() {
                            Ok(a) => a,
                            Err(e) => {
                                let _ = addr_tx.send(Err(format!("udp address: {e}")));
                                return;
                            }
                        };
                        match tokio::net::TcpListener::bind(bound).await {
                            Ok(tcp) => break (udp, tcp),
                            Err(e) if at.port() != 0 => {
                                let _ = addr_tx.send(Err(format!("bind tcp {bound}: {e}")));
                                return;
                            }
                            Err(_) => continue,
                        }
                    };
                    let _ = addr_tx.send(udp.local_addr().map_err(|e| e.to_string()));
                    let mut server = hickory_server::Server::new(Handler {
                        zones: z,
                        queries: q,
                        signed: sg,
                    });
                    server.register_socket(udp);
                    server.register_listener(tcp, Duration::from_secs(5), 65535);
                    let _ = stop_rx.await;
                    let _ = server.shutdown_gracefully().await;
                });
            })
            .map_err(|e| format!("spawn testdns thread: {e}"))?;
        let addr = match addr_rx.recv() {
            Ok(Ok(addr)) => addr,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => return Err("testdns thread ended before binding".into()),
        };
        Ok(TestDns {
            addr,
            zones,
            signed,
            keys,
            queries,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Start with zone text.
    pub fn with_text(text: &str) -> TestDns {
        TestDns::start(Zones::parse(text).expect("zone text"))
    }

    /// Change the zones while running (signed zones are signed again).
    pub fn update(&self, f: impl FnOnce(&mut Zones)) {
        let mut z = self.zones.write().unwrap_or_else(|e| e.into_inner());
        f(&mut z);
        *self.signed.write().unwrap_or_else(|e| e.into_inner()) = build_signed(&z, &self.keys);
    }

    /// The DNSSEC trust anchors of the signed zones (the root's key and each signed zone's),
    /// as zone-file DNSKEY lines; empty when no zone is signed.
    pub fn trust_anchors(&self) -> String {
        let z = self.zones.read().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let apexes =
            std::iter::once(".".to_string()).chain(z.signed.iter().filter(|a| *a != ".").cloned());
        if z.signed.is_empty() {
            return out;
        }
        for apex in apexes {
            let Some(n) = name(&apex) else { continue };
            if let Some((_, public)) = signer(&n, &self.keys) {
                out.push_str(&format!(
                    "{} 3600 IN DNSKEY {}\n",
                    if apex == "." {
                        ".".to_string()
                    } else {
                        apex.clone()
                    },
                    DNSKEY::from_key(&public)
                ));
            }
        }
        out
    }

    /// Queries answered (or swallowed) so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        // A query stuck in a TIMEOUT answer must not hold the test up.
        if let Some(t) = self.thread.take() {
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_zone_text() {
        let z = Zones::parse(
            "example.test. TXT \"v=spf1 \" \"-all\" # two strings\n\
             _dmarc.example.test TXT v=DMARC1; p=reject\n\
             example.test MX 10 mx.example.test\n\
             mx.example.test A 127.0.0.1\n\
             1.0.0.127.in-addr.arpa PTR mx.example.test\n\
             slow.test TIMEOUT\n",
        )
        .unwrap();
        assert!(
            matches!(z.answer("example.test.", RecordType::TXT), Answer::Records(r) if r == vec![Rec::Txt(b"v=spf1 -all".to_vec())])
        );
        assert!(
            matches!(z.answer("_dmarc.example.test.", RecordType::TXT), Answer::Records(r) if r == vec![Rec::Txt(b"v=DMARC1; p=reject".to_vec())])
        );
        assert!(
            matches!(z.answer("example.test.", RecordType::A), Answer::Records(r) if r.is_empty())
        );
        assert!(matches!(
            z.answer("nowhere.test.", RecordType::A),
            Answer::NxDomain
        ));
        assert!(matches!(z.answer(".", RecordType::SOA), Answer::NxDomain));
        assert!(matches!(
            z.answer("slow.test.", RecordType::TXT),
            Answer::Timeout
        ));
        assert!(
            matches!(z.answer("test.", RecordType::TXT), Answer::Records(r) if r.is_empty()),
            "empty non-terminal"
        );
        assert!(Zones::parse("x.test BOGUS 1").is_err());
    }

    #[test]
    fn parses_aligned_columns() {
        let z = Zones::parse(
            "  host.test.     A       127.0.0.9\n\
             host.test\tMX   5    mx.host.test\n",
        )
        .unwrap();
        assert!(
            matches!(z.answer("host.test.", RecordType::A), Answer::Records(r) if r == vec![Rec::A("127.0.0.9".parse().unwrap())])
        );
        assert!(
            matches!(z.answer("host.test.", RecordType::MX), Answer::Records(r) if r == vec![Rec::Mx(5, "mx.host.test.".into())])
        );
    }

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_name("127.0.0.1".parse().unwrap()),
            "1.0.0.127.in-addr.arpa."
        );
        assert!(reverse_name("::1".parse().unwrap()).starts_with("1.0.0.0."));
    }
}
