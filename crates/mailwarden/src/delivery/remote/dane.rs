//! DANE for SMTP (RFC 7672): TLSA records, trusted only when DNSSEC validates them, and the
//! certificate check they ask for.
//!
//! - DANE-EE (usage 3): the server's own certificate (selector 0) or its public key
//!   (selector 1), exactly or by SHA-256/512, must match. No name or expiry check (§3.1.1).
//! - DANE-TA (usage 2): a certificate the server presents must match and serve as the trust
//!   anchor of its chain, whose end must be valid for the MX host name (§3.1.2).
//! - PKIX usages (0, 1) are not usable for SMTP (§3.1.3) and are ignored; a TLSA set with
//!   nothing usable still means TLS is required.
//!
//! Lookups go through a resolver of our own that validates DNSSEC (`dns.trust_anchors`
//! replaces the root's key, for tests); DANE applies only when both the MX answer and the
//! host's TLSA answer are secure. An answer that fails validation, or a lookup that fails,
//! makes the host unusable for now, never a reason to fall back to plaintext (§2.2).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;

use mail_auth::hickory_resolver::TokioResolver;
use mail_auth::hickory_resolver::net::runtime::TokioRuntimeProvider;
use mail_auth::hickory_resolver::net::{DnsError, NetError};
use mail_auth::hickory_resolver::proto::dnssec::{DnssecSummary, TrustAnchors};
use mail_auth::hickory_resolver::proto::rr::RData;

/// The DNSSEC-validating resolver DANE asks.
pub struct Dane {
    resolver: TokioResolver,
    /// The port whose TLSA records are asked for (`_25._tcp.host`): `delivery.port`.
    port: u16,
}

impl Dane {
    pub fn new(cfg: &crate::config::Dns, port: u16) -> anyhow::Result<Dane> {
        let (config, mut opts) = crate::dns::resolver_parts(cfg)?;
        let mut b = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        match &cfg.trust_anchors {
            Some(path) => {
                let anchors = TrustAnchors::from_file(path)
                    .map_err(|e| anyhow::anyhow!("dns.trust_anchors: {}: {e}", path.display()))?;
                b = b.with_options(opts).with_trust_anchor(Arc::new(anchors));
            }
            None => {
                opts.validate = true;
                b = b.with_options(opts);
            }
        }
        let resolver = b
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the DNSSEC resolver: {e}"))?;
        Ok(Dane { resolver, port })
    }

    /// `domain`'s MX answer as DNSSEC sees it (RFC 7672 §2.2.1): secure (with its host
    /// names), insecure, or failed (bogus, or no answer), when the mail must wait.
    pub async fn mx(&self, domain: &str) -> Mx {
        use mail_auth::hickory_resolver::proto::dnssec::Proof;
        let name = format!("{}.", domain.trim_end_matches('.'));
        match self.resolver.mx_lookup(name).await {
            Ok(l) => match DnssecSummary::from_records(l.answers().iter()) {
                DnssecSummary::Secure => Mx::Secure(
                    l.answers()
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::MX(m) => Some(
                                m.exchange
                                    .to_ascii()
                                    .trim_end_matches('.')
                                    .to_ascii_lowercase(),
                            ),
                            _ => None,
                        })
                        .collect(),
                ),
                DnssecSummary::Insecure => Mx::Insecure,
                DnssecSummary::Bogus => {
                    Mx::Failed(format!("the MX answer for {domain} does not validate"))
                }
            },
            Err(NetError::Dns(DnsError::NoRecordsFound(_))) => Mx::Insecure,
            Err(NetError::Dns(DnsError::Nsec { proof, .. })) if proof != Proof::Bogus => {
                Mx::Insecure
            }
            Err(e) => Mx::Failed(format!("validating the MX answer for {domain}: {e}")),
        }
    }

    /// The usable TLSA records of `host` when they validate (`Some(vec![])`: records that
    /// validate, none usable), `None` when DANE does not apply, or why the host may not be
    /// used now.
    pub async fn lookup(&self, host: &str, mx_secure: bool) -> Result<Option<Vec<Tlsa>>, String> {
        if !mx_secure {
            return Ok(None);
        }
        let name = format!("_{}._tcp.{}.", self.port, host.trim_end_matches('.'));
        match self.resolver.tlsa_lookup(name.as_str()).await {
            Ok(l) => match DnssecSummary::from_records(l.answers().iter()) {
                DnssecSummary::Secure => Ok(Some(
                    l.answers()
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::TLSA(t) => Some(Tlsa {
                                usage: u8::from(t.cert_usage),
                                selector: u8::from(t.selector),
                                matching: u8::from(t.matching),
                                data: t.cert_data.clone(),
                            }),
                            _ => None,
                        })
                        .filter(Tlsa::usable)
                        .take(MAX_TLSA)
                        .collect(),
                )),
                DnssecSummary::Insecure => Ok(None),
                DnssecSummary::Bogus => Err(format!("the TLSA records of {host} do not validate")),
            },
            Err(NetError::Dns(DnsError::NoRecordsFound(_))) => Ok(None),
            Err(NetError::Dns(DnsError::DnssecBogus)) => Err(format!(
                "the TLSA answer for {host} does not validate (DNSSEC)"
            )),
            Err(NetError::Dns(DnsError::Nsec { .. })) => Ok(None),
            Err(e) => Err(format!("TLSA lookup for {host} failed: {e}")),
        }
    }

    /// The TLS config that checks a server against `records`.
    pub fn config(&self, records: Vec<Tlsa>) -> Arc<rustls::ClientConfig> {
        DaneVerifier::config(records)
    }
}

/// A domain's MX answer under DNSSEC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mx {
    /// Validated: these host names (lowercase, no trailing dot).
    Secure(Vec<String>),
    Insecure,
    Failed(String),
}

/// TLSA records kept per host, at most: each is compared with every certificate offered.
const MAX_TLSA: usize = 16;

/// One usable TLSA record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

impl Tlsa {
    /// Usable for SMTP (RFC 7672 §3.1): DANE-TA or DANE-EE, known selector and matching.
    pub fn usable(&self) -> bool {
        matches!(self.usage, 2 | 3) && self.selector <= 1 && self.matching <= 2
    }

    /// Does certificate `der` match this record?
    pub fn matches(&self, der: &CertificateDer<'_>) -> bool {
        let owned;
        let selected: &[u8] = match self.selector {
            0 => der.as_ref(),
            _ => match webpki::EndEntityCert::try_from(der) {
                Ok(c) => {
                    owned = c.subject_public_key_info();
                    owned.as_ref()
                }
                Err(_) => return false,
            },
        };
        match self.matching {
            0 => selected == self.data.as_slice(),
            1 => ring::digest::digest(&ring::digest::SHA256, selected).as_ref() == self.data,
            2 => ring::digest::digest(&ring::digest::SHA512, selected).as_ref() == self.data,
            _ => false,
        }
    }
}

/// Checks a server's certificate against TLSA records.
#[derive(Debug)]
pub struct DaneVerifier {
    records: Vec<Tlsa>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl DaneVerifier {
    pub fn config(records: Vec<Tlsa>) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(DaneVerifier {
            records,
            provider: provider.clone(),
        });
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth(),
        )
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .records
            .iter()
            .any(|r| r.usage == 3 && r.matches(end_entity))
        {
            return Ok(ServerCertVerified::assertion());
        }
        for r in self.records.iter().filter(|r| r.usage == 2) {
            for (i, ta) in intermediates.iter().enumerate() {
                if !r.matches(ta) {
                    continue;
                }
                let Ok(anchor) = webpki::anchor_from_trusted_cert(ta) else {
                    continue;
                };
                let roots = rustls::RootCertStore {
                    roots: vec![anchor.to_owned()],
                };
                let Ok(v) = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    self.provider.clone(),
                )
                .build() else {
                    continue;
                };
                if v.verify_server_cert(end_entity, &intermediates[..i], server_name, ocsp, now)
                    .is_ok()
                {
                    return Ok(ServerCertVerified::assertion());
                }
            }
        }
        Err(rustls::Error::General(
            "DANE: the certificate matches no TLSA record".into(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert() -> CertificateDer<'static> {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let c = rcgen::CertificateParams::new(vec!["mx.example.test".into()])
            .unwrap()
            .self_signed(&kp)
            .unwrap();
        c.der().clone()
    }

    /// The validating resolver against real signed zones: a signed zone's TLSA records are
    /// used, an unsigned zone's are not, and a signed zone's key we do not trust fails.
    #[tokio::test]
    async fn tlsa_records_count_only_when_they_validate() {
        let dns = mailwarden_testdns::TestDns::with_text(
            "secure.test SIGNED\n\
             secure.test MX 10 mx.secure.test\n\
             mx.secure.test A 127.0.0.1\n\
             _25._tcp.mx.secure.test TLSA 3 1 1 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n\
             _25._tcp.mx.secure.test TLSA 0 0 1 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n\
             plain.test MX 10 mx.plain.test\n\
             mx.plain.test A 127.0.0.1\n\
             _25._tcp.mx.plain.test TLSA 3 1 1 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
        );
        let dir = tempfile::tempdir().unwrap();
        let anchors = dir.path().join("anchors");
        std::fs::write(&anchors, dns.trust_anchors()).unwrap();
        let mut cfg = crate::config::Dns::default();
        cfg.nameservers = vec![dns.addr.to_string()];
        cfg.trust_anchors = Some(anchors);
        let dane = Dane::new(&cfg, 25).unwrap();
        assert_eq!(
            dane.mx("secure.test").await,
            Mx::Secure(vec!["mx.secure.test".into()])
        );
        let found = dane.lookup("mx.secure.test", true).await.unwrap().unwrap();
        assert_eq!(
            found.len(),
            1,
            "the PKIX-TA record is not usable: {found:?}"
        );
        assert_eq!(
            (found[0].usage, found[0].selector, found[0].matching),
            (3, 1, 1)
        );
        assert_eq!(dane.mx("plain.test").await, Mx::Insecure);
        assert_eq!(dane.lookup("mx.plain.test", true).await, Ok(None));
        // Another server's keys: the same names no longer validate.
        let other = mailwarden_testdns::TestDns::with_text("secure.test SIGNED\n");
        std::fs::write(cfg.trust_anchors.as_ref().unwrap(), other.trust_anchors()).unwrap();
        let untrusting = Dane::new(&cfg, 25).unwrap();
        assert!(matches!(untrusting.mx("secure.test").await, Mx::Failed(_)));
        assert!(untrusting.lookup("mx.secure.test", true).await.is_err());
    }

    /// DANE-TA: a CA the server presents, named by a TLSA record, anchors the chain, and the
    /// end certificate must be valid for the MX host; DANE-EE ignores names.
    #[test]
    fn a_trust_anchor_record_checks_the_chain_and_the_name() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["mx.example.test".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let (leaf, ca_der) = (leaf.der().clone(), ca_cert.der().clone());
        let sha256 = |b: &[u8]| {
            ring::digest::digest(&ring::digest::SHA256, b)
                .as_ref()
                .to_vec()
        };
        let verify = |records: Vec<Tlsa>, chain: &[CertificateDer<'static>], name: &str| {
            let v = DaneVerifier {
                records,
                provider: Arc::new(rustls::crypto::ring::default_provider()),
            };
            v.verify_server_cert(
                &leaf,
                chain,
                &ServerName::try_from(name.to_string()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .is_ok()
        };
        let ta = || Tlsa {
            usage: 2,
            selector: 0,
            matching: 1,
            data: sha256(ca_der.as_ref()),
        };
        assert!(verify(
            vec![ta()],
            std::slice::from_ref(&ca_der),
            "mx.example.test"
        ));
        assert!(
            !verify(vec![ta()], std::slice::from_ref(&ca_der), "mx.other.test"),
            "name checked"
        );
        assert!(
            !verify(vec![ta()], &[], "mx.example.test"),
            "the anchor must be presented"
        );
        let ee = Tlsa {
            usage: 3,
            selector: 0,
            matching: 1,
            data: sha256(leaf.as_ref()),
        };
        assert!(
            verify(vec![ee], &[], "any.name.test"),
            "DANE-EE checks no name"
        );
    }

    #[test]
    fn records_match_by_certificate_or_key_and_digest() {
        let c = cert();
        let spki = webpki::EndEntityCert::try_from(&c)
            .unwrap()
            .subject_public_key_info();
        let sha256 = |b: &[u8]| {
            ring::digest::digest(&ring::digest::SHA256, b)
                .as_ref()
                .to_vec()
        };
        let sha512 = |b: &[u8]| {
            ring::digest::digest(&ring::digest::SHA512, b)
                .as_ref()
                .to_vec()
        };
        let rec = |selector, matching, data| Tlsa {
            usage: 3,
            selector,
            matching,
            data,
        };
        assert!(rec(1, 1, sha256(spki.as_ref())).matches(&c));
        assert!(rec(0, 1, sha256(c.as_ref())).matches(&c));
        assert!(rec(0, 2, sha512(c.as_ref())).matches(&c));
        assert!(rec(0, 0, c.as_ref().to_vec()).matches(&c));
        assert!(!rec(1, 1, sha256(c.as_ref())).matches(&c));
        assert!(!rec(1, 1, sha256(spki.as_ref())).matches(&cert()));
        assert!(
            !Tlsa {
                usage: 1,
                ..rec(1, 1, vec![])
            }
            .usable()
        );
    }
}
