//! Mail-client autoconfiguration on `listen.autoconfig` (plain HTTP; put it behind HTTPS as
//! `autoconfig.<domain>` and `autodiscover.<domain>`):
//! - Thunderbird's `config-v1.1.xml` at `/mail/config-v1.1.xml?emailaddress=…` and
//!   `/.well-known/autoconfig/mail/config-v1.1.xml`;
//! - Microsoft's Autodiscover POX (`POST /autodiscover/autodiscover.xml`, the 2006 schemas).
//!
//! Submission is announced on ports 465 (SSL/TLS) and 587 (STARTTLS) with the full address as
//! the user name and a cleartext password (only ever inside TLS); IMAP and POP3 when
//! `autoconfig.imap`/`autoconfig.pop3` name a server, and our own POP3 (port 995, SSL/TLS)
//! when `listen.pop3s` is on and no other is named. The RFC 6186 SRV records are printed
//! by `dns records`.
//!
//! Security: anyone may ask. Only our domains get an answer (else 404), so the listener tells
//! nothing about other domains. The Autodiscover request body is capped at [`MAX_BODY`] and
//! never parsed as XML (no entities, no DTD): the address is cut out of
//! `<EMailAddress>…</EMailAddress>` and must parse as a mailbox. Everything written into a
//! reply is XML-escaped.

use crate::config::Config;
use crate::reports::aggregate::escape;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::collections::HashMap;
use std::sync::Arc;

const MAX_BODY: usize = 8 << 10;
const MAX_CONNECTIONS: usize = 128;

/// `host:port` → (host, port).
pub fn host_port(s: &str) -> Option<(String, u16)> {
    let (h, p) = s.rsplit_once(':')?;
    let port = p.parse().ok().filter(|p| *p != 0)?;
    mailwarden_proto::address::domain(h, false).ok()?;
    Some((h.to_ascii_lowercase(), port))
}

/// A server a client is told about.
struct Server {
    kind: &'static str,
    host: String,
    port: u16,
    /// `SSL` (implicit TLS) or `STARTTLS`.
    socket: &'static str,
}

fn servers(cfg: &Config) -> (Vec<Server>, Vec<Server>) {
    let ac = &cfg.autoconfig;
    let host = if ac.host.is_empty() {
        cfg.hostname.clone()
    } else {
        ac.host.clone()
    };
    let mut incoming = Vec::new();
    for (kind, v, implicit) in [("imap", &ac.imap, 993), ("pop3", &ac.pop3, 995)] {
        if let Some((h, port)) = host_port(v) {
            let socket = if port == implicit { "SSL" } else { "STARTTLS" };
            incoming.push(Server {
                kind,
                host: h,
                port,
                socket,
            });
        }
    }
    // Our own POP3 over implicit TLS, unless another POP3 server is named.
    if ac.pop3.is_empty() && !cfg.listen.pop3s.is_empty() && ac.pop3s_port != 0 {
        incoming.push(Server {
            kind: "pop3",
            host: host.clone(),
            port: ac.pop3s_port,
            socket: "SSL",
        });
    }
    let mut outgoing = Vec::new();
    if ac.submissions_port != 0 {
        outgoing.push(Server {
            kind: "smtp",
            host: host.clone(),
            port: ac.submissions_port,
            socket: "SSL",
        });
    }
    if ac.submission_port != 0 {
        outgoing.push(Server {
            kind: "smtp",
            host,
            port: ac.submission_port,
            socket: "STARTTLS",
        });
    }
    (incoming, outgoing)
}

/// The local domain an address is in, if it is one of ours.
fn our_domain(cfg: &Config, address: &str) -> Option<String> {
    let (_, d) = address.rsplit_once('@')?;
    cfg.domains
        .iter()
        .find(|x| x.eq_ignore_ascii_case(d))
        .map(|x| x.to_ascii_lowercase())
}

/// Thunderbird's `config-v1.1.xml` for `domain`.
pub fn thunderbird(cfg: &Config, domain: &str) -> String {
    let (incoming, outgoing) = servers(cfg);
    let d = escape(domain);
    let mut x = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<clientConfig version=\"1.1\">\n  \
         <emailProvider id=\"{d}\">\n    <domain>{d}</domain>\n    \
         <displayName>{d} mail</displayName>\n    <displayShortName>{d}</displayShortName>\n"
    );
    let server = |tag: &str, s: &Server| {
        format!(
            "    <{tag} type=\"{}\">\n      <hostname>{}</hostname>\n      <port>{}</port>\n      \
             <socketType>{}</socketType>\n      <username>%EMAILADDRESS%</username>\n      \
             <authentication>password-cleartext</authentication>\n    </{tag}>\n",
            s.kind,
            escape(&s.host),
            s.port,
            s.socket
        )
    };
    for s in &incoming {
        x.push_str(&server("incomingServer", s));
    }
    for s in &outgoing {
        x.push_str(&server("outgoingServer", s));
    }
    x.push_str("  </emailProvider>\n</clientConfig>\n");
    x
}

/// Microsoft's Autodiscover POX answer for `address`.
pub fn autodiscover(cfg: &Config, address: &str) -> String {
    let (incoming, outgoing) = servers(cfg);
    let mut x = String::from(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
         <Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006\">\n  \
         <Response xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a\">\n    \
         <Account>\n      <AccountType>email</AccountType>\n      <Action>settings</Action>\n",
    );
    for s in incoming.iter().chain(&outgoing) {
        let kind = match s.kind {
            "imap" => "IMAP",
            "pop3" => "POP3",
            _ => "SMTP",
        };
        x.push_str(&format!(
            "      <Protocol>\n        <Type>{kind}</Type>\n        <Server>{}</Server>\n        \
             <Port>{}</Port>\n        <LoginName>{}</LoginName>\n        <SPA>off</SPA>\n        \
             <SSL>on</SSL>\n        <Encryption>{}</Encryption>\n        \
             <AuthRequired>on</AuthRequired>\n      </Protocol>\n",
            escape(&s.host),
            s.port,
            escape(address),
            if s.socket == "SSL" { "SSL" } else { "TLS" }
        ));
    }
    x.push_str("    </Account>\n  </Response>\n</Autodiscover>\n");
    x
}

/// The address in an Autodiscover request, cut out without an XML parser.
pub fn request_address(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<EMailAddress>")? + "<EMailAddress>".len();
    let end = start + text[start..].find("</EMailAddress>")?;
    let addr = text[start..end].trim();
    mailwarden_proto::address::parse_mailbox(addr, false).ok()?;
    Some(addr.to_string())
}

type Cfg = State<Arc<Config>>;

fn xml(body: String) -> Response {
    (
        [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
        body,
    )
        .into_response()
}

fn not_ours() -> Response {
    (StatusCode::NOT_FOUND, "not a domain of this server\n").into_response()
}

async fn config_v11(
    State(cfg): Cfg,
    Query(q): Query<HashMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> Response {
    // With an address, its domain; else the Host the client asked (`autoconfig.<domain>`).
    let domain = match q.get("emailaddress") {
        Some(a) => our_domain(&cfg, a),
        None => headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.split(':').next().unwrap_or("").to_ascii_lowercase())
            .and_then(|h| {
                our_domain(
                    &cfg,
                    &format!("x@{}", h.strip_prefix("autoconfig.").unwrap_or(&h)),
                )
            }),
    };
    match domain {
        Some(d) => xml(thunderbird(&cfg, &d)),
        None => not_ours(),
    }
}

async fn autodiscover_pox(State(cfg): Cfg, body: axum::body::Bytes) -> Response {
    match request_address(&body) {
        Some(a) if our_domain(&cfg, &a).is_some() => xml(autodiscover(&cfg, &a)),
        Some(_) => not_ours(),
        None => (StatusCode::BAD_REQUEST, "no EMailAddress in the request\n").into_response(),
    }
}

pub fn router(cfg: Arc<Config>) -> axum::Router {
    axum::Router::new()
        .route("/mail/config-v1.1.xml", get(config_v11))
        .route(
            "/.well-known/autoconfig/mail/config-v1.1.xml",
            get(config_v11),
        )
        .route("/autodiscover/autodiscover.xml", post(autodiscover_pox))
        .route("/Autodiscover/Autodiscover.xml", post(autodiscover_pox))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(cfg)
}

pub fn serve(l: tokio::net::TcpListener, cfg: Arc<Config>) -> tokio::task::JoinHandle<()> {
    crate::http::serve(l, None, router(cfg), MAX_CONNECTIONS, "autoconfig")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_cut_out_and_must_be_one() {
        let body = b"<?xml version=\"1.0\"?><Autodiscover><Request><EMailAddress> a@example.test </EMailAddress></Request></Autodiscover>";
        assert_eq!(request_address(body).as_deref(), Some("a@example.test"));
        assert_eq!(
            request_address(b"<EMailAddress><x>&amp;</EMailAddress>"),
            None
        );
        assert_eq!(request_address(b"<EMailAddress>a@b"), None);
    }

    #[test]
    fn hosts_and_ports_parse() {
        assert_eq!(
            host_port("imap.example.test:993"),
            Some(("imap.example.test".into(), 993))
        );
        assert_eq!(host_port("imap.example.test"), None);
        assert_eq!(host_port("<x>:993"), None);
        assert_eq!(host_port("h.test:0"), None);
    }

    #[test]
    fn thunderbird_gets_both_submission_ports_and_the_configured_imap() {
        let mut cfg = Config::default();
        cfg.hostname = "mx.example.test".into();
        cfg.autoconfig.imap = "imap.example.test:993".into();
        cfg.listen.pop3s = String::new();
        let x = thunderbird(&cfg, "example.test");
        assert!(x.contains("<incomingServer type=\"imap\">"));
        assert!(x.contains("<port>465</port>\n      <socketType>SSL</socketType>"));
        assert!(x.contains("<port>587</port>\n      <socketType>STARTTLS</socketType>"));
        assert_eq!(x.matches("%EMAILADDRESS%").count(), 3);
        assert!(!x.contains("pop3"));
    }

    #[test]
    fn our_pop3_is_announced_when_pop3s_listens() {
        let mut cfg = Config::default();
        cfg.hostname = "mx.example.test".into();
        let x = thunderbird(&cfg, "example.test");
        assert!(x.contains("<incomingServer type=\"pop3\">\n      <hostname>mx.example.test</hostname>\n      <port>995</port>\n      <socketType>SSL</socketType>"), "{x}");
        // Another POP3 server named: that one instead.
        cfg.autoconfig.pop3 = "pop.example.test:995".into();
        let x = thunderbird(&cfg, "example.test");
        assert_eq!(x.matches("type=\"pop3\"").count(), 1);
        assert!(x.contains("<hostname>pop.example.test</hostname>"));
        // Off: none.
        cfg.autoconfig.pop3 = String::new();
        cfg.listen.pop3s = String::new();
        assert!(!thunderbird(&cfg, "example.test").contains("pop3"));
    }
}
