//! TLS for `kitt serve`: rustls with the ring provider, from PEM files or from a CA and a
//! certificate `--tls-self-signed` makes once (0600) and reuses, so clients that trust the CA
//! keep trusting the server across restarts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};

/// Where the server's certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// A certificate chain and its key, PEM.
    Files { cert: PathBuf, key: PathBuf },
    /// A CA and a certificate for `hosts` kept in `dir` (`ca.pem`, `cert.pem`, `key.pem`), made
    /// when missing.
    SelfSigned { dir: PathBuf, hosts: Vec<String> },
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, String),
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("cannot make a certificate: {0}")]
    Make(#[from] rcgen::Error),
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A TLS acceptor and the SHA-256 fingerprint of the certificate clients should trust (the CA
/// for a self-signed server, the first certificate of a given chain otherwise).
pub struct Acceptor {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub fingerprint: String,
}

/// `AA:BB:…`, as `openssl x509 -fingerprint -sha256` prints it.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |e: &dyn std::fmt::Display| TlsError::Read(path.to_path_buf(), e.to_string());
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(path).map_err(|e| read(&e))?.collect::<Result<_, _>>().map_err(|e| read(&e))?;
    if certs.is_empty() {
        return Err(read(&"no PEM certificate in it"));
    }
    Ok(certs)
}

/// Makes the CA, the certificate and its key in `dir`, unless they are there.
fn self_signed(dir: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf, PathBuf), TlsError> {
    let (ca, cert, key) = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    if ca.is_file() && cert.is_file() && key.is_file() {
        return Ok((ca, cert, key));
    }
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "kitt serve CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let server_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(hosts.to_vec())?;
    params.distinguished_name.push(DnType::CommonName, "kitt serve");
    let server_cert = params.signed_by(&server_key, &ca_cert, &ca_key)?;
    let write = |p: &Path, text: String| {
        super::tokens::write_private(p, text.as_bytes()).map_err(|e| TlsError::Write(p.to_path_buf(), e))
    };
    write(&dir.join("ca-key.pem"), ca_key.serialize_pem())?;
    write(&key, server_key.serialize_pem())?;
    write(&cert, format!("{}{}", server_cert.pem(), ca_cert.pem()))?;
    write(&ca, ca_cert.pem())?;
    Ok((ca, cert, key))
}

pub fn acceptor(source: &TlsSource) -> Result<Acceptor, TlsError> {
    let (trust, cert_path, key_path) = match source {
        TlsSource::Files { cert, key } => (cert.clone(), cert.clone(), key.clone()),
        TlsSource::SelfSigned { dir, hosts } => self_signed(dir, hosts)?,
    };
    let chain = certs(&cert_path)?;
    let trusted = certs(&trust)?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| TlsError::Read(key_path.clone(), e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Acceptor { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)), fingerprint: fingerprint(&trusted[0]) })
}

/// What an agent trusts of this server: the CA's PEM (the certificate file's own with
/// `--tls-cert`) and its SHA-256, as the server prints it.
pub fn trust_anchor(source: &TlsSource) -> Result<(String, String), TlsError> {
    let trust = match source {
        TlsSource::Files { cert, .. } => cert.clone(),
        TlsSource::SelfSigned { dir, hosts } => self_signed(dir, hosts)?.0,
    };
    let pem = std::fs::read_to_string(&trust).map_err(|e| TlsError::Read(trust.clone(), e.to_string()))?;
    let first =
        certs(&trust)?.into_iter().next().ok_or_else(|| TlsError::Read(trust.clone(), "no certificate".into()))?;
    Ok((pem, fingerprint(&first)))
}
