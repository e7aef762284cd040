//! SPF evaluation, RFC 7208: `check_host()` (§4) with strict record syntax (§4.6, §12 ABNF),
//! macros (§7) and the processing limits of §4.6.4 (10 DNS-querying terms, 2 void lookups,
//! 10 MX or PTR names per term).
//!
//! mail-auth 0.13.3 parses records leniently (it accepts `ip4:1.2.3.4/33`, unknown terms and
//! all-numeric top labels, and reports a body of errors as `neutral` or `fail`), which the
//! OpenSPF conformance suite counts as wrong. This module does the evaluation itself, through
//! mail-auth's hickory resolver (so the same `[dns]` servers, timeouts and answer cache), and
//! hands mail-auth an `SpfOutput` for DMARC and the Authentication-Results header.

use crate::util::{in_v4, in_v6};
use mail_auth::SpfResult;
use mail_auth::hickory_resolver::TokioResolver;
use mail_auth::hickory_resolver::net::{DnsError, NetError};
use mail_auth::hickory_resolver::proto::rr::{Name, RData};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::Pin;

/// §4.6.4: terms that query DNS, per check_host() including nested ones.
const MAX_LOOKUPS: u32 = 10;
/// §4.6.4: lookups that return no answer (NXDOMAIN or NODATA).
const MAX_VOID: u32 = 2;
/// §4.6.4: names an `mx` or `ptr` term may look at.
const MAX_NAMES: usize = 10;

/// The result of check_host() and, for `fail`, the explanation of §6.2.
pub struct Evaluated {
    pub result: SpfResult,
    pub domain: String,
    pub explanation: Option<String>,
}

/// Evaluate SPF for the MAIL FROM identity, or for the HELO identity (`postmaster@helo`)
/// when MAIL FROM is empty (§2.4).
pub async fn check(
    resolver: &TokioResolver,
    ip: IpAddr,
    helo: &str,
    receiver: &str,
    mail_from: &str,
) -> Evaluated {
    // §5: an IPv4-mapped IPv6 client is an IPv4 client.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let (local, domain) = match mail_from.rsplit_once('@') {
        Some((l, d)) if !mail_from.is_empty() => (if l.is_empty() { "postmaster" } else { l }, d),
        _ => ("postmaster", helo),
    };
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let mut ctx = Ctx {
        resolver,
        ip,
        local: local.to_string(),
        sender_domain: domain.clone(),
        helo: helo.to_string(),
        receiver: receiver.to_string(),
        lookups: 0,
        voids: 0,
        validated_ptr: None,
    };
    // §4.3: a malformed or single-label domain gives `none` without a lookup.
    if !is_queryable(&domain) || !domain.contains('.') {
        return Evaluated {
            result: SpfResult::None,
            domain,
            explanation: None,
        };
    }
    let (result, explanation) = match ctx.check_host(domain.clone()).await {
        Ok(done) => done,
        Err(Abort::Temp) => (SpfResult::TempError, None),
        Err(Abort::Perm) => (SpfResult::PermError, None),
    };
    Evaluated {
        result,
        domain,
        explanation,
    }
}

/// Evaluation stops at the first temporary or permanent error (§4.4, §4.6).
enum Abort {
    Temp,
    Perm,
}

type Step<T> = Result<T, Abort>;

/// A result and, for `fail`, its explanation.
type Outcome = Step<(SpfResult, Option<String>)>;

/// check_host() recurses through include and redirect, so its future is boxed.
type BoxedOutcome<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Qualifier {
    Pass,
    Fail,
    SoftFail,
    Neutral,
}

impl Qualifier {
    fn result(self) -> SpfResult {
        match self {
            Qualifier::Pass => SpfResult::Pass,
            Qualifier::Fail => SpfResult::Fail,
            Qualifier::SoftFail => SpfResult::SoftFail,
            Qualifier::Neutral => SpfResult::Neutral,
        }
    }
}

#[derive(Debug, PartialEq)]
enum Mechanism {
    All,
    Include(String),
    A(Option<String>, u8, u8),
    Mx(Option<String>, u8, u8),
    Ptr(Option<String>),
    Ip4(Ipv4Addr, u8),
    Ip6(Ipv6Addr, u8),
    Exists(String),
}

#[derive(Debug, Default)]
struct Record {
    directives: Vec<(Qualifier, Mechanism)>,
    redirect: Option<String>,
    exp: Option<String>,
}

/// Whether `text` is a syntactically valid SPF record (§4.6, §12). Records come from DNS, which
/// a sender controls: the fuzzer feeds this any bytes.
pub fn record_is_valid(text: &str) -> bool {
    parse_record(text).is_ok()
}

/// Parse a whole record (§4.6): any syntax error anywhere makes it a permerror, before any
/// term is evaluated.
fn parse_record(text: &str) -> Step<Record> {
    if text.bytes().any(|b| !(0x20..=0x7e).contains(&b)) {
        return Err(Abort::Perm);
    }
    let mut terms = text.split(' ').filter(|t| !t.is_empty());
    match terms.next() {
        Some(v) if v.eq_ignore_ascii_case("v=spf1") => {}
        _ => return Err(Abort::Perm),
    }
    let mut rec = Record::default();
    for term in terms {
        if let Some((name, value)) = modifier(term) {
            if name.eq_ignore_ascii_case("redirect") {
                check_domain_spec(value)?;
                if rec.redirect.replace(value.to_string()).is_some() {
                    return Err(Abort::Perm);
                }
            } else if name.eq_ignore_ascii_case("exp") {
                check_domain_spec(value)?;
                if rec.exp.replace(value.to_string()).is_some() {
                    return Err(Abort::Perm);
                }
            } else {
                // Unknown modifiers are ignored (§6), but must still be well formed.
                check_macro_string(value, false)?;
            }
            continue;
        }
        rec.directives.push(directive(term)?);
    }
    Ok(rec)
}

/// `name "=" macro-string`, name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." ).
fn modifier(term: &str) -> Option<(&str, &str)> {
    let (name, value) = term.split_once('=')?;
    let mut chars = name.chars();
    let first_alpha = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    (first_alpha && rest_ok).then_some((name, value))
}

fn directive(term: &str) -> Step<(Qualifier, Mechanism)> {
    let (q, rest) = match term.as_bytes().first() {
        Some(b'+') => (Qualifier::Pass, &term[1..]),
        Some(b'-') => (Qualifier::Fail, &term[1..]),
        Some(b'~') => (Qualifier::SoftFail, &term[1..]),
        Some(b'?') => (Qualifier::Neutral, &term[1..]),
        _ => (Qualifier::Pass, term),
    };
    let split = rest.find([':', '/']).unwrap_or(rest.len());
    let (name, args) = rest.split_at(split);
    let name = name.to_ascii_lowercase();
    let m = match name.as_str() {
        "all" if args.is_empty() => Mechanism::All,
        "include" => Mechanism::Include(required_domain(args)?),
        "exists" => Mechanism::Exists(required_domain(args)?),
        "a" | "mx" => {
            let (domain, v4, v6) = domain_and_cidr(args)?;
            if name == "a" {
                Mechanism::A(domain, v4, v6)
            } else {
                Mechanism::Mx(domain, v4, v6)
            }
        }
        "ptr" => match args {
            "" => Mechanism::Ptr(None),
            _ => Mechanism::Ptr(Some(required_domain(args)?)),
        },
        "ip4" => {
            let net = args.strip_prefix(':').ok_or(Abort::Perm)?;
            let (addr, len) = match net.split_once('/') {
                Some((a, l)) => (a, cidr(l, 32)?),
                None => (net, 32),
            };
            Mechanism::Ip4(strict_ipv4(addr).ok_or(Abort::Perm)?, len)
        }
        "ip6" => {
            let net = args.strip_prefix(':').ok_or(Abort::Perm)?;
            let (addr, len) = match net.split_once('/') {
                Some((a, l)) => (a, cidr(l, 128)?),
                None => (net, 128),
            };
            Mechanism::Ip6(addr.parse().map_err(|_| Abort::Perm)?, len)
        }
        _ => return Err(Abort::Perm),
    };
    Ok((q, m))
}

fn required_domain(args: &str) -> Step<String> {
    let d = args.strip_prefix(':').ok_or(Abort::Perm)?;
    check_domain_spec(d)?;
    Ok(d.to_string())
}

/// `[ ":" domain-spec ] [ dual-cidr-length ]` for `a` and `mx`.
fn domain_and_cidr(args: &str) -> Step<(Option<String>, u8, u8)> {
    let mut rest = args;
    let mut v6 = 128;
    let mut v4 = 32;
    if let Some(i) = rest.rfind("//") {
        v6 = cidr(&rest[i + 2..], 128)?;
        rest = &rest[..i];
    }
    // A single "/" after the last macro or dot starts the IPv4 length.
    if let Some(i) = rest.rfind('/')
        && rest[i + 1..].bytes().all(|b| b.is_ascii_digit())
    {
        v4 = cidr(&rest[i + 1..], 32)?;
        rest = &rest[..i];
    }
    match rest {
        "" => Ok((None, v4, v6)),
        _ => Ok((Some(required_domain(rest)?), v4, v6)),
    }
}

/// A prefix length: "0" or digits without a leading zero, at most `max`.
fn cidr(s: &str, max: u8) -> Step<u8> {
    let ok =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    match s.parse::<u8>() {
        Ok(n) if ok && n <= max => Ok(n),
        _ => Err(Abort::Perm),
    }
}

/// Dotted quad with each part 0..=255 and no leading zeros (the `qnum` rule).
fn strict_ipv4(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() != 4 {
        return None;
    }
    let mut octets = [0u8; 4];
    for (o, p) in octets.iter_mut().zip(&parts) {
        if p.is_empty() || p.len() > 3 || (p.len() > 1 && p.starts_with('0')) {
            return None;
        }
        *o = p.parse().ok()?;
    }
    Some(Ipv4Addr::from(octets))
}

/// domain-spec = macro-string domain-end; domain-end = ( "." toplabel [ "." ] ) /
/// macro-expand. Checked before expansion (§7.1).
fn check_domain_spec(s: &str) -> Step<()> {
    let macro_end = check_macro_string(s, false)?;
    if s.is_empty() {
        return Err(Abort::Perm);
    }
    if macro_end == Some(s.len()) {
        return Ok(());
    }
    let t = s.strip_suffix('.').unwrap_or(s);
    let (_, top) = t.rsplit_once('.').ok_or(Abort::Perm)?;
    if is_toplabel(top) {
        Ok(())
    } else {
        Err(Abort::Perm)
    }
}

/// toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )
fn is_toplabel(l: &str) -> bool {
    let b = l.as_bytes();
    if b.is_empty() || !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-') {
        return false;
    }
    if !b.contains(&b'-') {
        return b.iter().any(|c| c.is_ascii_alphabetic());
    }
    b[0].is_ascii_alphanumeric() && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Check macro-string syntax (§7.1). `explain` allows the explanation-only letters c, r, t
/// and spaces. Returns where the last macro-expand ended.
fn check_macro_string(s: &str, explain: bool) -> Step<Option<usize>> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut last_macro_end = None;
    while i < b.len() {
        match b[i] {
            b'%' => {
                match b.get(i + 1) {
                    Some(b'%' | b'_' | b'-') => i += 2,
                    Some(b'{') => {
                        let close = s[i..].find('}').ok_or(Abort::Perm)? + i;
                        parse_macro(&s[i + 2..close], explain)?;
                        i = close + 1;
                    }
                    _ => return Err(Abort::Perm),
                }
                last_macro_end = Some(i);
            }
            b' ' if explain => i += 1,
            0x21..=0x7e => i += 1,
            _ => return Err(Abort::Perm),
        }
    }
    Ok(last_macro_end)
}

/// The inside of `%{...}`: letter, digits, optional `r`, delimiters.
struct MacroSpec {
    letter: u8,
    upper: bool,
    keep: Option<usize>,
    reverse: bool,
    delimiters: Vec<u8>,
}

fn parse_macro(body: &str, explain: bool) -> Step<MacroSpec> {
    let b = body.as_bytes();
    let letter = *b.first().ok_or(Abort::Perm)?;
    let lower = letter.to_ascii_lowercase();
    let allowed = matches!(lower, b's' | b'l' | b'o' | b'd' | b'i' | b'p' | b'h' | b'v')
        || (explain && matches!(lower, b'c' | b'r' | b't'));
    if !allowed {
        return Err(Abort::Perm);
    }
    let mut i = 1;
    let digits_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let keep = if i > digits_start {
        // §7.3: the number of parts to keep must be nonzero.
        let n: usize = body[digits_start..i].parse().map_err(|_| Abort::Perm)?;
        if n == 0 {
            return Err(Abort::Perm);
        }
        Some(n)
    } else {
        None
    };
    let reverse = i < b.len() && b[i].eq_ignore_ascii_case(&b'r');
    if reverse {
        i += 1;
    }
    let delimiters = b[i..].to_vec();
    if !delimiters.iter().all(|d| b".-+,/_=".contains(d)) {
        return Err(Abort::Perm);
    }
    Ok(MacroSpec {
        letter: lower,
        upper: letter.is_ascii_uppercase(),
        keep,
        reverse,
        delimiters,
    })
}

/// Whether a name can be put in a DNS query: labels of 1..=63 octets, 253 in all.
fn is_queryable(name: &str) -> bool {
    let n = name.strip_suffix('.').unwrap_or(name);
    !n.is_empty() && n.len() <= 253 && n.split('.').all(|l| !l.is_empty() && l.len() <= 63)
}

/// The name as raw labels: domain-specs may hold any visible character (`a:foo:bar/baz.test`
/// is legal, §7.1), which hickory's text parsers refuse.
pub(crate) fn fqdn_name(name: &str) -> Option<Name> {
    let n = name.strip_suffix('.').unwrap_or(name);
    Name::from_labels(n.split('.').map(str::as_bytes)).ok()
}

/// The inverse of `fqdn_name`: raw labels, without Display's escapes.
pub(crate) fn name_text(n: &Name) -> String {
    n.iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect::<Vec<_>>()
        .join(".")
}

/// A lookup's answers, or nothing for NXDOMAIN/NODATA; other failures are temporary.
fn answers(
    kind: &'static str,
    started: std::time::Instant,
    res: Result<mail_auth::hickory_resolver::lookup::Lookup, NetError>,
) -> Step<Vec<RData>> {
    let class = match &res {
        Ok(_) => "ok",
        Err(NetError::Dns(DnsError::NoRecordsFound(_))) => "nxdomain",
        Err(_) => "error",
    };
    crate::metrics::dns_lookup(kind, class, started);
    match res {
        Ok(l) => Ok(l.answers().iter().map(|r| r.data.clone()).collect()),
        Err(NetError::Dns(DnsError::NoRecordsFound(_))) => Ok(Vec::new()),
        Err(_) => Err(Abort::Temp),
    }
}

struct Ctx<'a> {
    resolver: &'a TokioResolver,
    ip: IpAddr,
    local: String,
    sender_domain: String,
    helo: String,
    receiver: String,
    lookups: u32,
    voids: u32,
    /// The `p` macro's value, computed once.
    validated_ptr: Option<String>,
}

impl<'a> Ctx<'a> {
    async fn txt(&self, name: &str) -> Step<Vec<String>> {
        let Some(n) = fqdn_name(name) else {
            return Ok(Vec::new());
        };
        let t = std::time::Instant::now();
        let data = answers("TXT", t, self.resolver.txt_lookup(n).await)?;
        Ok(data
            .into_iter()
            .filter_map(|d| match d {
                RData::TXT(t) => Some(
                    t.txt_data
                        .iter()
                        .flat_map(|s| s.iter().copied())
                        .collect::<Vec<u8>>(),
                ),
                _ => None,
            })
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect())
    }

    /// A records for an IPv4 client, AAAA for IPv6 (§5.3).
    async fn addrs(&self, name: &str, v6: bool) -> Step<Vec<IpAddr>> {
        let Some(n) = fqdn_name(name) else {
            return Ok(Vec::new());
        };
        let t = std::time::Instant::now();
        let res = if v6 {
            self.resolver.ipv6_lookup(n).await
        } else {
            self.resolver.ipv4_lookup(n).await
        };
        Ok(answers(if v6 { "AAAA" } else { "A" }, t, res)?
            .into_iter()
            .filter_map(|d| match d {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect())
    }

    async fn mx_hosts(&self, name: &str) -> Step<Vec<String>> {
        let Some(n) = fqdn_name(name) else {
            return Ok(Vec::new());
        };
        let t = std::time::Instant::now();
        let mut mx: Vec<(u16, String)> = answers("MX", t, self.resolver.mx_lookup(n).await)?
            .into_iter()
            .filter_map(|d| match d {
                RData::MX(m) => Some((m.preference, name_text(&m.exchange))),
                _ => None,
            })
            .collect();
        mx.sort();
        Ok(mx.into_iter().map(|(_, h)| h).collect())
    }

    async fn ptr_names(&self) -> Step<Vec<String>> {
        let n = Name::from(self.ip);
        let t = std::time::Instant::now();
        Ok(answers("PTR", t, self.resolver.reverse_lookup(n).await)?
            .into_iter()
            .filter_map(|d| match d {
                RData::PTR(p) => Some(name_text(&p.0)),
                _ => None,
            })
            .collect())
    }

    fn count_lookup(&mut self) -> Step<()> {
        self.lookups += 1;
        if self.lookups > MAX_LOOKUPS {
            Err(Abort::Perm)
        } else {
            Ok(())
        }
    }

    fn count_void(&mut self, empty: bool) -> Step<()> {
        if empty {
            self.voids += 1;
            if self.voids > MAX_VOID {
                return Err(Abort::Perm);
            }
        }
        Ok(())
    }

    /// §4: find the one SPF record of `domain` and evaluate it.
    fn check_host(&mut self, domain: String) -> BoxedOutcome<'_> {
        Box::pin(async move {
            if !is_queryable(&domain) {
                return Ok((SpfResult::None, None));
            }
            let records: Vec<String> = self
                .txt(&domain)
                .await?
                .into_iter()
                .filter(|t| {
                    let l = t.to_ascii_lowercase();
                    l == "v=spf1" || l.starts_with("v=spf1 ")
                })
                .collect();
            let text = match records.as_slice() {
                [] => return Ok((SpfResult::None, None)),
                [one] => one,
                _ => return Err(Abort::Perm),
            };
            let record = parse_record(text)?;
            self.evaluate(&domain, &record).await
        })
    }

    async fn evaluate(&mut self, domain: &str, record: &Record) -> Outcome {
        for (q, m) in &record.directives {
            if self.matches(domain, m).await? {
                let result = q.result();
                let explanation = match (&record.exp, result) {
                    (Some(exp), SpfResult::Fail) => self.explain(domain, exp).await,
                    _ => None,
                };
                return Ok((result, explanation));
            }
        }
        // §5.1: `redirect` is ignored when the record has `all`, which always matched above.
        if let Some(target) = &record.redirect {
            self.count_lookup()?;
            let target = self.expand_domain(target, domain).await?;
            return match self.check_host(target).await? {
                (SpfResult::None, _) => Err(Abort::Perm),
                done => Ok(done),
            };
        }
        Ok((SpfResult::Neutral, None))
    }

    async fn matches(&mut self, domain: &str, m: &Mechanism) -> Step<bool> {
        let v6 = self.ip.is_ipv6();
        match m {
            Mechanism::All => Ok(true),
            Mechanism::Ip4(net, len) => Ok(match self.ip {
                IpAddr::V4(ip) => in_v4(ip, *net, *len),
                IpAddr::V6(_) => false,
            }),
            Mechanism::Ip6(net, len) => Ok(match self.ip {
                IpAddr::V6(ip) => in_v6(ip, *net, *len),
                IpAddr::V4(_) => false,
            }),
            Mechanism::Include(spec) => {
                self.count_lookup()?;
                let target = self.expand_domain(spec, domain).await?;
                // §5.2: only a pass matches; none is a permerror.
                match self.check_host(target).await?.0 {
                    SpfResult::Pass => Ok(true),
                    SpfResult::None => Err(Abort::Perm),
                    SpfResult::TempError => Err(Abort::Temp),
                    SpfResult::PermError => Err(Abort::Perm),
                    _ => Ok(false),
                }
            }
            Mechanism::A(spec, l4, l6) => {
                self.count_lookup()?;
                let target = self.target(spec.as_deref(), domain).await?;
                if !is_queryable(&target) {
                    return Ok(false);
                }
                let addrs = self.addrs(&target, v6).await?;
                self.count_void(addrs.is_empty())?;
                Ok(addrs.iter().any(|a| self.in_net(*a, *l4, *l6)))
            }
            Mechanism::Mx(spec, l4, l6) => {
                self.count_lookup()?;
                let target = self.target(spec.as_deref(), domain).await?;
                if !is_queryable(&target) {
                    return Ok(false);
                }
                let hosts = self.mx_hosts(&target).await?;
                self.count_void(hosts.is_empty())?;
                if hosts.len() > MAX_NAMES {
                    return Err(Abort::Perm);
                }
                for h in hosts {
                    let addrs = self.addrs(&h, v6).await?;
                    if addrs.iter().any(|a| self.in_net(*a, *l4, *l6)) {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Mechanism::Ptr(spec) => {
                self.count_lookup()?;
                let target = self.target(spec.as_deref(), domain).await?;
                // §5.5: a DNS error on the PTR lookup is simply no match.
                let names = self.ptr_names().await.unwrap_or_default();
                self.count_void(names.is_empty())?;
                let target = target.trim_end_matches('.').to_ascii_lowercase();
                for name in self.validated(names).await {
                    if name == target || name.ends_with(&format!(".{target}")) {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Mechanism::Exists(spec) => {
                self.count_lookup()?;
                let target = self.expand_domain(spec, domain).await?;
                if !is_queryable(&target) {
                    return Ok(false);
                }
                // §5.7: always an A query, whatever the client's address family.
                let addrs = self.addrs(&target, false).await?;
                self.count_void(addrs.is_empty())?;
                Ok(!addrs.is_empty())
            }
        }
    }

    async fn target(&mut self, spec: Option<&str>, domain: &str) -> Step<String> {
        match spec {
            Some(s) => self.expand_domain(s, domain).await,
            None => Ok(domain.to_string()),
        }
    }

    fn in_net(&self, a: IpAddr, l4: u8, l6: u8) -> bool {
        match (self.ip, a) {
            (IpAddr::V4(ip), IpAddr::V4(net)) => in_v4(ip, net, l4),
            (IpAddr::V6(ip), IpAddr::V6(net)) => in_v6(ip, net, l6),
            _ => false,
        }
    }

    /// §5.5: PTR names (at most 10) whose forward lookup contains the client's address.
    /// Lookup errors just drop the name.
    async fn validated(&self, names: Vec<String>) -> Vec<String> {
        let mut out = Vec::new();
        for name in names.into_iter().take(MAX_NAMES) {
            let ok = match self.addrs(&name, self.ip.is_ipv6()).await {
                Ok(addrs) => addrs.contains(&self.ip),
                Err(_) => false,
            };
            if ok {
                out.push(name.trim_end_matches('.').to_ascii_lowercase());
            }
        }
        out
    }

    /// Expand a domain-spec and shorten it to 253 octets by dropping labels from the left
    /// (§7.3).
    async fn expand_domain(&mut self, spec: &str, domain: &str) -> Step<String> {
        let mut s = self.expand(spec, domain, false).await?;
        while s.trim_end_matches('.').len() > 253 {
            match s.split_once('.') {
                Some((_, rest)) => s = rest.to_string(),
                None => break,
            }
        }
        Ok(s)
    }

    /// §6.2: the explanation TXT; any problem just means no explanation.
    async fn explain(&mut self, domain: &str, exp: &str) -> Option<String> {
        let target = self.expand_domain(exp, domain).await.ok()?;
        if !is_queryable(&target) {
            return None;
        }
        let texts = self.txt(&target).await.ok()?;
        let [text] = texts.as_slice() else {
            return None;
        };
        if text.bytes().any(|b| !(0x20..=0x7e).contains(&b))
            || check_macro_string(text, true).is_err()
        {
            return None;
        }
        self.expand(text, domain, true).await.ok()
    }

    async fn expand(&mut self, s: &str, domain: &str, explain: bool) -> Step<String> {
        if self.validated_ptr.is_none() && s.to_ascii_lowercase().contains("%{p") {
            let names = self.ptr_names().await.unwrap_or_default();
            let valid = self.validated(names).await;
            let d = domain.trim_end_matches('.').to_ascii_lowercase();
            let pick = valid
                .iter()
                .find(|n| **n == d)
                .or_else(|| valid.iter().find(|n| n.ends_with(&format!(".{d}"))))
                .or(valid.first());
            self.validated_ptr = Some(pick.cloned().unwrap_or_else(|| "unknown".into()));
        }
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('%') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            match after.as_bytes().first() {
                Some(b'%') => {
                    out.push('%');
                    rest = &after[1..];
                }
                Some(b'_') => {
                    out.push(' ');
                    rest = &after[1..];
                }
                Some(b'-') => {
                    out.push_str("%20");
                    rest = &after[1..];
                }
                Some(b'{') => {
                    let close = after.find('}').ok_or(Abort::Perm)?;
                    let spec = parse_macro(&after[1..close], explain)?;
                    out.push_str(&self.macro_value(&spec, domain));
                    rest = &after[close + 1..];
                }
                _ => return Err(Abort::Perm),
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    fn macro_value(&self, m: &MacroSpec, domain: &str) -> String {
        let raw = match m.letter {
            b's' => format!("{}@{}", self.local, self.sender_domain),
            b'l' => self.local.clone(),
            b'o' => self.sender_domain.clone(),
            b'd' => domain.to_string(),
            b'i' => match self.ip {
                IpAddr::V4(a) => a.to_string(),
                IpAddr::V6(a) => a
                    .octets()
                    .iter()
                    .flat_map(|b| [b >> 4, b & 0xf])
                    .map(|n| format!("{n:x}"))
                    .collect::<Vec<_>>()
                    .join("."),
            },
            b'p' => self
                .validated_ptr
                .clone()
                .unwrap_or_else(|| "unknown".into()),
            b'v' => if self.ip.is_ipv4() { "in-addr" } else { "ip6" }.to_string(),
            b'h' => self.helo.clone(),
            b'c' => self.ip.to_string(),
            b'r' => self.receiver.clone(),
            b't' => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                .to_string(),
            _ => String::new(),
        };
        let delims: &[u8] = if m.delimiters.is_empty() {
            b"."
        } else {
            &m.delimiters
        };
        let mut parts: Vec<&str> = raw
            .split(|c: char| c.is_ascii() && delims.contains(&(c as u8)))
            .collect();
        if m.reverse {
            parts.reverse();
        }
        if let Some(n) = m.keep
            && parts.len() > n
        {
            parts.drain(..parts.len() - n);
        }
        let joined = parts.join(".");
        if m.upper { url_escape(&joined) } else { joined }
    }
}

/// §7.3: uppercase macro letters URL-escape everything outside RFC 3986 "unreserved".
fn url_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_syntax_is_strict() {
        for bad in [
            "v=spf1 ip4:1.2.3.4/33",
            "v=spf1 ip4:1.2.3.4/032",
            "v=spf1 ip4:01.2.3.4",
            "v=spf1 a:museum",
            "v=spf1 a:111.222.33.44",
            "v=spf1 a/129",
            "v=spf1 a//129",
            "v=spf1 foo",
            "v=spf1 redirect=a.test redirect=b.test",
            "v=spf1 include:%{x}.test",
            "v=spf1 exists:%{d0}.test",
            "v=spf1 -all moo=%z",
            "v=spf1 a:b\u{e9}.test",
        ] {
            assert!(parse_record(bad).is_err(), "{bad} should be a permerror");
        }
        let r =
            parse_record("v=spf1  a:Mail.Example.com/24//64 mx ~all exp=explain.%{d} moo.cow=ok")
                .unwrap_or_default();
        assert_eq!(r.directives.len(), 3);
        assert_eq!(
            r.directives[0],
            (
                Qualifier::Pass,
                Mechanism::A(Some("Mail.Example.com".into()), 24, 64)
            )
        );
        assert_eq!(r.directives[2], (Qualifier::SoftFail, Mechanism::All));
        assert_eq!(r.exp.as_deref(), Some("explain.%{d}"));
    }

    #[test]
    fn networks_compare_by_prefix() {
        assert!(in_v4(
            "192.0.2.200".parse().unwrap(),
            "192.0.2.0".parse().unwrap(),
            24
        ));
        assert!(!in_v4(
            "192.0.3.1".parse().unwrap(),
            "192.0.2.0".parse().unwrap(),
            24
        ));
        assert!(in_v4(
            "8.8.8.8".parse().unwrap(),
            "1.2.3.4".parse().unwrap(),
            0
        ));
        assert!(in_v6(
            "2001:db8::1".parse().unwrap(),
            "2001:db8::".parse().unwrap(),
            32
        ));
    }
}
