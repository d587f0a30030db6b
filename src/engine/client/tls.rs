//! TLS for engine connections: which certificates the client trusts, and the one crypto provider
//! kitt's TLS runs on (the client's and the simulator's).
//!
//! The provider is rustls's `ring`: reqwest is built with `rustls-no-provider` because its default
//! provider, aws-lc-rs, needs cmake and minutes of C on a 2-core machine. reqwest then takes the
//! process-wide provider and panics if none is installed, so every path that builds a client goes
//! through [`crypto_provider`] first.
//!
//! The measured path's own transport (`transport`) speaks TLS through tokio-rustls with a
//! [`client_config`] that follows the same rules as the reqwest client of the control calls: the
//! platform's verifier with the CA file's roots added, or, `insecure`, a verifier that accepts any
//! certificate. Both are built from one reading of the CA file.
//!
//! An `http://` client trusts no roots at all (but the CA file's): it speaks to one plain-HTTP base
//! URL, so it must not depend on the machine's certificate store (a minimal container has none) nor
//! pay to parse it; a redirect to `https` fails rather than trusting the system.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use reqwest::{Certificate, ClientBuilder};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

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

/// The extra trusted roots `tls` names (none without a CA file). Read even when unused
/// (`insecure`, plain http): a wrong path is a mistake to report, not skip.
pub(super) fn roots(tls: &TlsOptions) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    match &tls.ca_file {
        Some(path) => read_roots(path),
        None => Ok(Vec::new()),
    }
}

/// Applies `tls` (with its `roots`) to a client for a base URL of scheme `https` (or not).
pub(super) fn configure(
    builder: ClientBuilder,
    https: bool,
    tls: &TlsOptions,
    roots: &[CertificateDer<'static>],
) -> Result<ClientBuilder, ClientError> {
    crypto_provider();
    let certs = roots
        .iter()
        .map(|der| Certificate::from_der(der).map_err(|e| ClientError::Build(super::chain(&e))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if tls.insecure {
        builder.danger_accept_invalid_certs(true)
    } else if https {
        builder.tls_certs_merge(certs)
    } else {
        builder.tls_certs_only(certs)
    })
}

/// The rustls configuration of the measured path's `https` connections: the same trust as
/// [`configure`] gives the control calls (system roots plus `roots`, or anything when `insecure`),
/// HTTP/1.1 by ALPN.
pub(super) fn client_config(
    tls: &TlsOptions,
    roots: Vec<CertificateDer<'static>>,
) -> Result<Arc<ClientConfig>, ClientError> {
    let provider = crypto_provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Build(format!("TLS: {e}")))?
        .dangerous();
    let builder = if tls.insecure {
        builder.with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
    } else {
        let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(roots, provider)
            .map_err(|e| ClientError::Build(format!("TLS: {e}")))?;
        builder.with_custom_certificate_verifier(Arc::new(verifier))
    };
    let mut config = builder.with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `insecure`: any certificate is accepted for any name. The handshake's signatures are still
/// checked against the certificate the server sent, so the connection is at least encrypted to
/// whoever holds that key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The certificates of a PEM file, each checked as a trust anchor here so that a bad one is blamed
/// on the file rather than on building the client.
fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let bad = |reason: String| ClientError::CaFile { path: path.to_path_buf(), reason };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut anchors = RootCertStore::empty();
    let mut roots = Vec::new();
    for (n, der) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let der = der.map_err(|e| bad(format!("not PEM: {e}")))?;
        anchors.add(der.clone()).map_err(|e| bad(format!("certificate {}: {e}", n + 1)))?;
        roots.push(der);
    }
    if roots.is_empty() {
        return Err(bad("it holds no PEM certificate".into()));
    }
    Ok(roots)
}
