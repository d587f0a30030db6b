//! The agent's configuration (`kitt agent init`): where its server is, how its certificate is
//! trusted, its token, and what it allows. Kept 0600; one readable by others is refused, as the
//! token in it lets anyone act as this agent.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `https://host:port` (plain `http://` only on loopback).
    pub server: String,
    /// SHA-256 of the server's CA (or of its certificate), as `kitt serve` prints it: the only
    /// certificate trusted. Without it, the system's roots are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_sha256: Option<String>,
    pub token: String,
    /// Units run at once (default 1).
    #[serde(default = "one")]
    pub slots: u32,
    /// Where the agent keeps its spool, pid and status (default `$XDG_STATE_HOME/kitt/agent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// Whether it runs native engines (commands on this host) the server names.
    #[serde(default)]
    pub allow_native: bool,
    /// Globs of the container images it runs (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_images: Vec<String>,
}

fn one() -> u32 {
    1
}

fn env_dir(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from).filter(|p| p.is_absolute())
}

/// `--config`, else `$KITT_AGENT_CONFIG`, else `$XDG_CONFIG_HOME/kitt/agent.json`, else
/// `~/.config/kitt/agent.json`.
pub fn location(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf).or_else(|| env_dir("KITT_AGENT_CONFIG")).unwrap_or_else(|| {
        env_dir("XDG_CONFIG_HOME")
            .or_else(|| env_dir("HOME").map(|h| h.join(".config")))
            .unwrap_or_else(|| PathBuf::from(".kitt"))
            .join("kitt")
            .join("agent.json")
    })
}

impl Config {
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| {
            env_dir("XDG_STATE_HOME")
                .or_else(|| env_dir("HOME").map(|h| h.join(".local").join("state")))
                .unwrap_or_else(|| PathBuf::from(".kitt"))
                .join("kitt")
                .join("agent")
        })
    }

    /// Reads the config, refusing one that others can read or that does not parse.
    pub fn load(path: &Path) -> Result<Config, String> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(path).map_err(|e| {
            format!("cannot read the agent config {}: {e}; make it with `kitt agent init`", path.display())
        })?;
        if meta.mode() & 0o077 != 0 {
            return Err(format!(
                "the agent config {} can be read by others (mode {:o}): it holds the agent's token; `chmod 600 {}`",
                path.display(),
                meta.mode() & 0o777,
                path.display()
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let c: Config = serde_json::from_slice(&bytes).map_err(|e| format!("{} is damaged: {e}", path.display()))?;
        check_server(&c.server)?;
        if let Some(p) = &c.ca_sha256 {
            parse_pin(p)?;
        }
        Ok(c)
    }

    pub fn save(&self, path: &Path) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        crate::serve::tokens::write_private(path, &bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

/// An `https://` server, or `http://` on loopback only (the token would cross a network in clear).
pub fn check_server(url: &str) -> Result<(), String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("`{url}` is not a URL (https://HOST:PORT)"))?;
    let host_port = rest.split('/').next().unwrap_or_default();
    if host_port.is_empty() || rest.contains('@') {
        return Err(format!("`{url}`: expected https://HOST[:PORT]"));
    }
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host_port.rsplit_once(':').map_or(host_port, |(h, _)| h)
    };
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match scheme {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(format!(
            "`{url}`: plain HTTP only on loopback; the agent's token and its units would cross the network in clear (serve with --tls-self-signed and pin its CA with --ca-sha256)"
        )),
        _ => Err(format!("`{url}`: the scheme is https (or http on loopback)")),
    }
}

/// `3F:A1:…` or `3fa1…`: 32 bytes.
pub fn parse_pin(text: &str) -> Result<[u8; 32], String> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    let bad = || format!("--ca-sha256 `{text}`: expected the 64 hex digits `kitt serve` prints (colons allowed)");
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Trusts exactly the pinned certificate: the server's own, or the CA in its chain (the chain
/// is then verified against that CA alone, host name included).
#[derive(Debug)]
struct Pinned {
    pin: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let sha = |c: &[u8]| -> [u8; 32] { Sha256::digest(c).into() };
        if sha(end_entity.as_ref()) == self.pin {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        }
        let Some(ca) = intermediates.iter().find(|c| sha(c.as_ref()) == self.pin) else {
            return Err(rustls::Error::General(
                "the server's certificate chain has no certificate with the pinned SHA-256 (kitt agent init --ca-sha256)"
                    .into(),
            ));
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let v = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// An HTTP client for `server`: pinned to `pin` when given, else the system's roots.
pub fn client(pin: Option<&str>) -> Result<reqwest::Client, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .dangerous();
    let config = match pin {
        Some(p) => builder
            .with_custom_certificate_verifier(Arc::new(Pinned { pin: parse_pin(p)?, provider }))
            .with_no_client_auth(),
        None => {
            let v = rustls_platform_verifier::Verifier::new_with_extra_roots(Vec::new(), provider)
                .map_err(|e| format!("TLS: {e}"))?;
            builder.with_custom_certificate_verifier(Arc::new(v)).with_no_client_auth()
        }
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .no_proxy()
        .connect_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_on_loopback_and_pins_parse() {
        assert!(check_server("https://central:8443").is_ok());
        assert!(check_server("http://127.0.0.1:8080").is_ok());
        assert!(check_server("http://[::1]:8080").is_ok());
        assert!(check_server("http://localhost:1").is_ok());
        let e = check_server("http://10.0.0.5:8080").unwrap_err();
        assert!(e.contains("plain HTTP only on loopback"), "{e}");
        assert!(check_server("ftp://x").is_err() && check_server("central:8443").is_err());
        let pin = "3F:A1:".to_string() + &"00:".repeat(29) + "FF";
        assert_eq!(parse_pin(&pin).unwrap()[0], 0x3f);
        assert!(parse_pin("3F:A1").is_err());
    }

    #[test]
    fn a_config_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("agent.json");
        let c = Config {
            server: "http://127.0.0.1:9".into(),
            ca_sha256: None,
            token: "t".into(),
            slots: 1,
            state_dir: None,
            allow_native: false,
            allow_images: vec![],
        };
        c.save(&p).unwrap();
        assert_eq!(Config::load(&p).unwrap(), c);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Config::load(&p).unwrap_err();
        assert!(e.contains("can be read by others") && e.contains("chmod 600"), "{e}");
    }
}
