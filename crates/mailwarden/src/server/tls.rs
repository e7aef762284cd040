//! TLS for the listeners: rustls with the ring provider, TLS 1.2 and 1.3 only.
//!
//! With `tls.cert`/`tls.key` the PEM files are loaded. Otherwise a self-signed ECDSA P-256
//! certificate for the hostname (and `localhost`) is generated once into `data_dir/tls/` and
//! reused, so clients that pin it keep working across restarts. P-256 is the default because
//! its handshakes cost far less CPU than RSA.

use crate::config::Config;
use anyhow::Context;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct TlsSetup {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Where the certificate came from, for the startup summary.
    pub description: String,
}

pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn load(config: &Config) -> anyhow::Result<TlsSetup> {
    install_provider();
    let (cert_path, key_path, description) = match (&config.tls.cert, &config.tls.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone(), format!("{}", c.display())),
        _ => {
            let (c, k) = self_signed(config)?;
            let d = format!("self-signed for {} ({})", config.hostname, c.display());
            (c, k, d)
        }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("cannot read certificate {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad PEM in {}", cert_path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "no certificate in {}",
        cert_path.display()
    );
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("cannot read private key {}", key_path.display()))?;
    let mut sc = ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ])
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("certificate and key do not match")?;
    sc.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    Ok(TlsSetup {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(sc)),
        description,
    })
}

fn self_signed(config: &Config) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = config.data_dir.join("tls");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    crate::store::create_private_dir(&dir)?;
    let mut names = vec![config.hostname.clone()];
    if config.hostname != "localhost" {
        names.push("localhost".to_string());
    }
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let params = rcgen::CertificateParams::new(names)?;
    let c = params.self_signed(&kp)?;
    write_private(&key, kp.serialize_pem().as_bytes())?;
    write_private(&cert, c.pem().as_bytes())?;
    Ok((cert, key))
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

/// `TLSv1.3 TLS13_AES_128_GCM_SHA256`, for logs and the Received header.
pub fn describe(conn: &rustls::ServerConnection) -> String {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    };
    let suite = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    format!("{version} {suite}")
}
