//! Who may talk to the simulator: HTTPS (`--tls-cert`/`--tls-key`) and required headers
//! (`--require-header`), so that kitt's endpoint mode is tested against a server that looks like a
//! protected deployment.
//!
//! Owns loading the certificate and key and checking headers; it never sees a request body. A
//! required header's value is a secret: it is never shown in `Debug`, a CLI error, a log line or an
//! answer (a 401 names only the header).

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// A header every request must carry with exactly this value.
#[derive(Clone)]
pub struct RequiredHeader {
    /// As the user wrote it, for messages.
    label: String,
    name: HeaderName,
    value: HeaderValue,
}

impl fmt::Debug for RequiredHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequiredHeader({}: <redacted>)", self.label)
    }
}

impl RequiredHeader {
    /// Parses `NAME: VALUE`; an error never quotes the value.
    fn parse(text: &str) -> Result<Self, String> {
        let Some((label, value)) = text.split_once(':') else {
            return Err("expected `NAME: VALUE`, found no `:`".into());
        };
        let label = label.trim();
        let name = HeaderName::from_bytes(label.as_bytes()).map_err(|_| format!("`{label}` is not a header name"))?;
        let value = value.trim();
        if value.is_empty() {
            return Err(format!("the value of `{label}` is empty"));
        }
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("the value of `{label}` has characters a header cannot carry"))?;
        Ok(RequiredHeader { label: label.to_string(), name, value })
    }

    /// Whether `headers` has this header with exactly the required value (one of several will do).
    fn is_in(&self, headers: &HeaderMap) -> bool {
        headers.get_all(&self.name).iter().any(|value| value == self.value)
    }
}

/// clap's parser for `--require-header`. clap's own errors for a bad value quote it; this one
/// names only the header.
#[derive(Clone, Copy)]
pub(crate) struct RequiredHeaderParser;

impl clap::builder::TypedValueParser for RequiredHeaderParser {
    type Value = RequiredHeader;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<RequiredHeader, clap::Error> {
        let flag = arg.map_or_else(|| "--require-header".to_string(), ToString::to_string);
        let text = value.to_str().ok_or("the header is not UTF-8".to_string());
        text.and_then(RequiredHeader::parse).map_err(|reason| {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("invalid {flag}: {reason}\n"))
                .with_cmd(cmd)
        })
    }
}

/// The label of the first required header `headers` lacks, if any.
pub(super) fn missing<'a>(required: &'a [RequiredHeader], headers: &HeaderMap) -> Option<&'a str> {
    required.iter().find(|header| !header.is_in(headers)).map(|header| header.label.as_str())
}

/// The TLS acceptor for `--tls-cert`/`--tls-key`, or none for plain HTTP.
pub(super) fn acceptor(cert: Option<&Path>, key: Option<&Path>) -> io::Result<Option<TlsAcceptor>> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        _ => return Err(invalid("--tls-cert and --tls-key go together: give both or neither".into())),
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(format!("cannot read --tls-cert {}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(invalid(format!("--tls-cert {} holds no PEM certificate", cert.display())));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| invalid(format!("cannot read --tls-key {}: {e}", key.display())))?;
    let mut config = ServerConfig::builder_with_provider(crate::engine::client::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("cannot set up TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| invalid(format!("--tls-cert {} and --tls-key {}: {e}", cert.display(), key.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}
