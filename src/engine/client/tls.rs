//! TLS for engine connections: which certificates the client trusts, and the one crypto provider
//! kitt's TLS runs on (the client's and the simulator's).
//!
//! The provider is rustls's `ring`: reqwest is built with `rustls-no-provider` because its default
//! provider, aws-lc-rs, needs cmake and minutes of C on a 2-core machine. reqwest then takes the
//! process-wide provider and panics if none is installed, so every path that builds a client goes
//! through [`crypto_provider`] first.
//!
//! An `http://` client trusts no roots at all (but the CA file's): it speaks to one plain-HTTP base
//! URL, so it must not depend on the machine's certificate store (a minimal container has none) nor
//! pay to parse it; a redirect to `https` fails rather than trusting the system.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use reqwest::{Certificate, ClientBuilder};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use super::ClientError;

/// How a client checks an `https://` engine's certificate. The default trusts the system's roots.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// A PEM file of extra trusted roots (it may hold several certificates), for engines behind a
    /// private CA.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate: encryption without authentication, for self-signed test deployments.
    pub insecure: bool,
}

/// The process-wide crypto provider, installing `ring` if none is installed yet.
pub(crate) fn crypto_provider() -> Arc<CryptoProvider> {
    if let Some(provider) = CryptoProvider::get_default() {
        return Arc::clone(provider);
    }
    // Losing a race to another installer is fine: whichever provider won is the default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    CryptoProvider::get_default().cloned().unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// Applies `tls` to a client for a base URL of scheme `https` (or not).
pub(super) fn configure(builder: ClientBuilder, https: bool, tls: &TlsOptions) -> Result<ClientBuilder, ClientError> {
    crypto_provider();
    // Read even when unused (`insecure`, plain http): a wrong path is a mistake to report, not skip.
    let roots = match &tls.ca_file {
        Some(path) => read_roots(path)?,
        None => Vec::new(),
    };
    Ok(if tls.insecure {
        builder.danger_accept_invalid_certs(true)
    } else if https {
        builder.tls_certs_merge(roots)
    } else {
        builder.tls_certs_only(roots)
    })
}

/// The certificates of a PEM file, each checked as a trust anchor here so that a bad one is blamed
/// on the file rather than on building the client.
fn read_roots(path: &Path) -> Result<Vec<Certificate>, ClientError> {
    let bad = |reason: String| ClientError::CaFile { path: path.to_path_buf(), reason };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut anchors = RootCertStore::empty();
    let mut roots = Vec::new();
    for (n, der) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let der = der.map_err(|e| bad(format!("not PEM: {e}")))?;
        anchors.add(der.clone()).map_err(|e| bad(format!("certificate {}: {e}", n + 1)))?;
        roots.push(Certificate::from_der(&der).map_err(|e| bad(super::chain(&e)))?);
    }
    if roots.is_empty() {
        return Err(bad("it holds no PEM certificate".into()));
    }
    Ok(roots)
}
