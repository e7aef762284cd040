//! DKIM keys: generation, storage and the DNS records that publish them.
//!
//! Keys live in `data_dir/dkim/<domain>/<selector>.pem` (PKCS#8 for Ed25519, PKCS#1 for RSA),
//! in directories of mode 0700 and files of mode 0600: only the service user can read them.
//! The running server picks up new keys without a restart ([`Keyring`] re-reads a domain's
//! directory when its modification time changes).
//!
//! On a shared store (`[store] url`) keys live in its `dkim_keys` table instead, so every node
//! signs with the same ones; a node re-reads a domain's keys every [`SHARED_REFRESH`].

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::dkim::generate::DkimKeyPair;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Ed25519,
    Rsa,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Ed25519 => "ed25519",
            Algorithm::Rsa => "rsa",
        }
    }

    pub fn parse(s: &str) -> Option<Algorithm> {
        match s.to_ascii_lowercase().as_str() {
            "ed25519" => Some(Algorithm::Ed25519),
            "rsa" => Some(Algorithm::Rsa),
            _ => None,
        }
    }
}

/// A private key ready to sign.
pub enum Key {
    Ed25519(Ed25519Key),
    Rsa(RsaKey<Sha256>),
}

impl Key {
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Key::Ed25519(_) => Algorithm::Ed25519,
            Key::Rsa(_) => Algorithm::Rsa,
        }
    }
}

/// A stored key and its selector.
pub struct DomainKey {
    pub selector: String,
    pub key: Key,
}

pub fn domain_dir(data_dir: &Path, domain: &str) -> PathBuf {
    data_dir.join("dkim").join(domain.to_ascii_lowercase())
}

/// A key into the shared store (`?1` domain, `?2` selector, `?3` PEM, `?4` created); a
/// selector that exists is never replaced.
pub const INSERT_KEY: &str = "INSERT INTO dkim_keys(domain, selector, pem, created) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING";

/// How often a node re-reads a domain's keys from the shared store.
pub const SHARED_REFRESH: std::time::Duration = std::time::Duration::from_secs(10);

/// What `keygen` made: where the key is and the TXT record to publish.
pub struct Generated {
    pub selector: String,
    pub algorithm: Algorithm,
    /// The file, or `None` when the key went into the shared store.
    pub path: Option<PathBuf>,
    /// `selector._domainkey.domain.`
    pub record_name: String,
    /// The TXT record's text, before splitting into strings.
    pub record: String,
}

/// Generate a key, store it (in `data_dir`, or in the store when it is shared), and describe
/// its DNS record. Refuses to overwrite a selector.
pub fn generate(
    data_dir: &Path,
    store: Option<&crate::store::Store>,
    domain: &str,
    selector: &str,
    algorithm: Algorithm,
) -> anyhow::Result<Generated> {
    check_names(domain, selector)?;
    let (pem, record) = make(algorithm)?;
    let domain = domain.to_ascii_lowercase();
    let path = match store.filter(|s| s.is_shared()) {
        Some(store) => {
            let (d, s, p) = (domain.clone(), selector.to_string(), pem.clone());
            let added = store.write_blocking(move |c| {
                c.execute(
                    INSERT_KEY,
                    crate::params![
                        d,
                        s,
                        p,
                        crate::clock::Clock::now_secs(&crate::clock::SystemClock)
                    ],
                )
            })?;
            anyhow::ensure!(
                added == 1,
                "a key for selector {selector} of {domain} exists already in the shared store; choose another selector"
            );
            None
        }
        None => Some(write_file(data_dir, &domain, selector, &pem)?),
    };
    Ok(Generated {
        selector: selector.to_string(),
        algorithm,
        path,
        record_name: format!("{selector}._domainkey.{domain}."),
        record,
    })
}

fn check_names(domain: &str, selector: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !selector.is_empty()
            && selector
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')),
        "selector {selector:?} must be dot-separated letters, digits and hyphens"
    );
    mailwarden_proto::address::domain(domain, false)
        .map_err(|_| anyhow::anyhow!("{domain:?} is not a domain name"))?;
    Ok(())
}

/// Write a key's PEM as `data_dir/dkim/<domain>/<selector>.pem`, private to the service user.
pub fn write_file(
    data_dir: &Path,
    domain: &str,
    selector: &str,
    pem: &str,
) -> anyhow::Result<PathBuf> {
    let dir = domain_dir(data_dir, domain);
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true).mode(0o700);
    builder.create(&dir)?;
    // An older directory may have been created with a laxer mode.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        data_dir.join("dkim"),
        std::fs::Permissions::from_mode(0o700),
    )?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let path = dir.join(format!("{selector}.pem"));
    anyhow::ensure!(
        !path.exists(),
        "a key for selector {selector} of {domain} exists already ({}); choose another selector",
        path.display()
    );
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(pem.as_bytes())?;
    f.sync_all()?;
    // The key must load back, or the server would sign with nothing.
    load(&path)?;
    Ok(path)
}

/// A new key: its PEM and the TXT record that publishes it.
fn make(algorithm: Algorithm) -> anyhow::Result<(String, String)> {
    let (pem_label, der, public) = match algorithm {
        Algorithm::Ed25519 => {
            let pair = DkimKeyPair::generate_ed25519()
                .map_err(|e| anyhow::anyhow!("Ed25519 key generation failed: {e}"))?;
            let (private, public) = pair.into_inner();
            ("PRIVATE KEY", private, public)
        }
        Algorithm::Rsa => {
            let pair = DkimKeyPair::generate_rsa(2048)
                .map_err(|e| anyhow::anyhow!("RSA key generation failed: {e}"))?;
            let (private, public) = pair.into_inner();
            // DKIM publishes RSA keys as SubjectPublicKeyInfo (RFC 6376 §3.6.1 as deployed):
            // verifiers such as dkimpy accept nothing else.
            ("RSA PRIVATE KEY", private, spki_from_pkcs1(&public))
        }
    };
    let pem = pem(pem_label, &der);
    // The key must load back, or the server would sign with nothing.
    parse(pem.as_bytes(), "the new key")?;
    Ok((pem, record_text(algorithm, &public)))
}

/// The DKIM TXT record's text for a public key (SPKI for RSA, the raw key for Ed25519).
fn record_text(algorithm: Algorithm, public: &[u8]) -> String {
    format!(
        "v=DKIM1; k={}; p={}",
        algorithm.name(),
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, public)
    )
}

impl DomainKey {
    /// The TXT record that publishes this key (`dns records`).
    pub fn record(&self) -> String {
        match &self.key {
            Key::Ed25519(k) => record_text(Algorithm::Ed25519, &k.public_key()),
            Key::Rsa(k) => record_text(Algorithm::Rsa, &spki_from_pkcs1(&k.public_key())),
        }
    }
}

/// A TXT record's text as zone-file strings of at most 255 octets each (RFC 1035 §3.3.14).
pub fn txt_strings(text: &str) -> String {
    text.as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Wrap a PKCS#1 RSAPublicKey in SubjectPublicKeyInfo (rsaEncryption, NULL parameters).
fn spki_from_pkcs1(pkcs1: &[u8]) -> Vec<u8> {
    const ALG_ID: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0u8]; // no unused bits
    bits.extend_from_slice(pkcs1);
    let mut inner = ALG_ID.to_vec();
    inner.extend(der_tlv(0x03, &bits));
    der_tlv(0x30, &inner)
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let len = n.to_be_bytes();
        let skip = len.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (len.len() - skip) as u8);
        out.extend_from_slice(&len[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// Load a stored key.
pub fn load(path: &Path) -> anyhow::Result<Key> {
    parse(&std::fs::read(path)?, &path.display().to_string())
}

/// A key from its PEM; `what` names it in errors.
pub fn parse(bytes: &[u8], what: &str) -> anyhow::Result<Key> {
    let der = PrivateKeyDer::from_pem_slice(bytes)
        .map_err(|e| anyhow::anyhow!("{what}: not a PEM private key: {e}"))?;
    match der {
        PrivateKeyDer::Pkcs8(p8) => {
            if let Ok(k) = Ed25519Key::from_pkcs8_maybe_unchecked_der(p8.secret_pkcs8_der()) {
                return Ok(Key::Ed25519(k));
            }
            RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(p8))
                .map(Key::Rsa)
                .map_err(|e| anyhow::anyhow!("{what}: unusable key: {e}"))
        }
        other => RsaKey::<Sha256>::from_key_der(other)
            .map(Key::Rsa)
            .map_err(|e| anyhow::anyhow!("{what}: unusable key: {e}")),
    }
}

/// A domain's keys, and the directory's modification time they were read at.
type Cached = (Option<SystemTime>, Arc<Vec<DomainKey>>);

/// A domain's keys from the shared store, and when they were read.
type Fetched = (std::time::Instant, Arc<Vec<DomainKey>>);

/// The keys to sign with for each domain: the newest of each algorithm.
pub struct Keyring {
    data_dir: PathBuf,
    cache: Mutex<HashMap<String, Cached>>,
    /// The shared store keys come from, with when each domain's were read.
    shared: Option<(crate::store::Store, Mutex<HashMap<String, Fetched>>)>,
}

impl Keyring {
    pub fn new(data_dir: &Path) -> Keyring {
        Keyring {
            data_dir: data_dir.to_path_buf(),
            cache: Mutex::new(HashMap::new()),
            shared: None,
        }
    }

    /// Read keys from `store` when it is shared.
    pub fn with_store(mut self, store: &crate::store::Store) -> Keyring {
        if store.is_shared() {
            self.shared = Some((store.clone(), Mutex::new(HashMap::new())));
        }
        self
    }

    pub fn keys_for(&self, domain: &str) -> Arc<Vec<DomainKey>> {
        let domain = domain.to_ascii_lowercase();
        if let Some((store, cache)) = &self.shared {
            let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, keys)) = cache.get(&domain)
                && at.elapsed() < SHARED_REFRESH
            {
                return keys.clone();
            }
            let keys = Arc::new(read_shared(store, &domain));
            cache.insert(domain, (std::time::Instant::now(), keys.clone()));
            return keys;
        }
        let dir = domain_dir(&self.data_dir, &domain);
        let mtime = std::fs::metadata(&dir).and_then(|m| m.modified()).ok();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, keys)) = cache.get(&domain)
            && *seen == mtime
        {
            return keys.clone();
        }
        let keys = Arc::new(read_dir(&dir));
        cache.insert(domain, (mtime, keys.clone()));
        keys
    }
}

/// A domain's newest key of each algorithm in the shared store.
fn read_shared(store: &crate::store::Store, domain: &str) -> Vec<DomainKey> {
    let rows: Vec<(String, String)> = match store.read(|c| {
        c.query_map(
            "SELECT selector, pem FROM dkim_keys WHERE domain = ?1 ORDER BY created, selector",
            [domain],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(event = "dkim_keys_unreadable", domain, error = %e);
            return Vec::new();
        }
    };
    let mut newest: [Option<DomainKey>; 2] = [None, None];
    for (selector, pem) in rows {
        match parse(pem.as_bytes(), &format!("{domain} {selector}")) {
            // Oldest first: a later one takes its algorithm's slot.
            Ok(key) => {
                let slot = key.algorithm() as usize;
                newest[slot] = Some(DomainKey { selector, key });
            }
            Err(e) => tracing::error!(event = "dkim_key_unusable", domain, selector, error = %e),
        }
    }
    newest.into_iter().flatten().collect()
}

fn read_dir(dir: &Path) -> Vec<DomainKey> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut newest: [Option<(SystemTime, DomainKey)>; 2] = [None, None];
    for e in entries.flatten() {
        let path = e.path();
        let Some(selector) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".pem"))
            .map(str::to_string)
        else {
            continue;
        };
        let when = e
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        match load(&path) {
            Ok(key) => {
                let slot = &mut newest[key.algorithm() as usize];
                let newer = match slot {
                    Some((t, k)) => (when, &selector) > (*t, &k.selector),
                    None => true,
                };
                if newer {
                    *slot = Some((when, DomainKey { selector, key }));
                }
            }
            Err(e) => {
                tracing::error!(event = "dkim_key_unusable", path = %path.display(), error = %e)
            }
        }
    }
    newest.into_iter().flatten().map(|(_, k)| k).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The (algorithm, selector) pairs `ring` signs `domain`'s mail with, by selector.
    fn signing(ring: &Keyring, domain: &str) -> Vec<(Algorithm, String)> {
        let mut algs: Vec<_> = ring
            .keys_for(domain)
            .iter()
            .map(|k| (k.key.algorithm(), k.selector.clone()))
            .collect();
        algs.sort_by_key(|a| a.1.clone());
        algs
    }

    #[test]
    fn generated_keys_load_are_private_and_published_whole() {
        let dir = tempfile::tempdir().unwrap();
        let ed = generate(dir.path(), None, "Example.test", "s1", Algorithm::Ed25519).unwrap();
        let rsa = generate(dir.path(), None, "example.test", "s2", Algorithm::Rsa).unwrap();
        use std::os::unix::fs::PermissionsExt;
        for g in [&ed, &rsa] {
            let path = g.path.as_ref().unwrap();
            let mode = std::fs::metadata(path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
        let ddir = domain_dir(dir.path(), "example.test");
        assert_eq!(
            std::fs::metadata(&ddir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(ed.record_name, "s1._domainkey.example.test.");
        assert!(ed.record.starts_with("v=DKIM1; k=ed25519; p="));
        // RSA-2048 SPKI is 294 octets: 392 base64 characters, more than one TXT string.
        assert!(rsa.record.len() > 255);
        let strings = txt_strings(&rsa.record);
        assert_eq!(strings.matches('"').count(), 4, "{strings}");
        assert!(generate(dir.path(), None, "example.test", "s1", Algorithm::Rsa).is_err());
        let ring = Keyring::new(dir.path());
        assert_eq!(
            signing(&ring, "EXAMPLE.test"),
            vec![
                (Algorithm::Ed25519, "s1".into()),
                (Algorithm::Rsa, "s2".into())
            ]
        );
        assert!(ring.keys_for("other.test").is_empty());
    }

    #[test]
    fn spki_wraps_pkcs1() {
        let out = spki_from_pkcs1(&[0x30, 0x03, 0x02, 0x01, 0x05]);
        assert_eq!(out[0], 0x30);
        assert_eq!(out[1] as usize, out.len() - 2);
        assert_eq!(&out[out.len() - 6..], &[0x00, 0x30, 0x03, 0x02, 0x01, 0x05]);
    }

    #[test]
    fn on_a_shared_store_keys_live_in_it_for_every_node() {
        let Some(url) = crate::store::test_postgres() else {
            return;
        };
        let store = crate::store::Store::open_postgres(&url).unwrap();
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let g = generate(
            dir_a.path(),
            Some(&store),
            "example.test",
            "s1",
            Algorithm::Ed25519,
        )
        .unwrap();
        assert!(g.path.is_none());
        assert!(
            !domain_dir(dir_a.path(), "example.test").exists(),
            "no file"
        );
        generate(
            dir_a.path(),
            Some(&store),
            "example.test",
            "s2",
            Algorithm::Rsa,
        )
        .unwrap();
        assert!(
            generate(
                dir_b.path(),
                Some(&store),
                "example.test",
                "s1",
                Algorithm::Rsa
            )
            .is_err(),
            "a selector is never overwritten, from any node"
        );
        // Another node, with nothing in its own data directory, signs with them.
        let ring = Keyring::new(dir_b.path()).with_store(&store);
        assert_eq!(
            signing(&ring, "example.test"),
            vec![
                (Algorithm::Ed25519, "s1".into()),
                (Algorithm::Rsa, "s2".into())
            ]
        );
    }
}
