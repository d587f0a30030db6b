//! The client against the simulator over HTTPS and behind a required header, with a throwaway CA
//! made by the `openssl` CLI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::tests::{completion_body, completion_call, start_sim};
use super::*;

/// A CA and a certificate it signed for 127.0.0.1, in a directory that lives as long as this.
struct Certs {
    dir: tempfile::TempDir,
    ca: PathBuf,
}

impl Certs {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let ca = ["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=kitt test CA"];
        let ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"];
        openssl(dir.path(), &[&["req", "-x509"][..], &ec, &ca, &ca_ext].concat());
        let csr = ["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"];
        openssl(dir.path(), &[&["req"][..], &ec, &csr].concat());
        std::fs::write(dir.path().join("ext.cnf"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
            .unwrap();
        openssl(
            dir.path(),
            &["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-out", "server.pem"]
                .into_iter()
                .chain(["-days", "2", "-extfile", "ext.cnf"])
                .collect::<Vec<_>>(),
        );
        let ca = dir.path().join("ca.pem");
        Certs { dir, ca }
    }

    /// The `kitt sim` flags that serve HTTPS with the server certificate.
    fn sim_flags(&self) -> [String; 4] {
        let path = |name: &str| self.dir.path().join(name).to_str().unwrap().to_string();
        ["--tls-cert".into(), path("server.pem"), "--tls-key".into(), path("server.key")]
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

async fn start_https(certs: &Certs, more: &[&str]) -> String {
    let flags = certs.sim_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).chain(more.iter().copied()).collect();
    let url = start_sim(&flags).await;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    url
}

async fn stream_one(client: &EngineClient) -> RequestRecord {
    let mut record = RequestRecord::default();
    let body = Bytes::from(completion_body("a b c", 4).to_string());
    client.send(&completion_call(4), &body, Instant::now(), &mut record).await;
    record
}

fn trusting(ca: &Path) -> TlsOptions {
    TlsOptions { ca_file: Some(ca.to_path_buf()), insecure: false }
}

#[tokio::test]
async fn an_https_engine_is_trusted_through_the_ca_file() {
    let certs = Certs::new();
    let url = start_https(&certs, &[]).await;
    let client = EngineClient::with_tls(&url, vec![], 2, &trusting(&certs.ca)).unwrap();
    for _ in 0..3 {
        let record = stream_one(&client).await;
        assert!(record.ok(), "{record:?}");
        assert_eq!((record.content_events, record.usage_completion_tokens), (4, Some(4)));
    }
    // One TLS connection carried all three.
    assert_eq!(client.inner.transport.opened(), 1);
    assert_eq!(client.get("/health", Duration::from_secs(5)).await.unwrap().0, 200);
    assert_eq!(client.get_json("/version").await.unwrap()["version"], "kitt-sim 0.1.0");

    // The system's roots do not know the throwaway CA: no answer, and the reason says why.
    let stranger = EngineClient::new(&url, vec![], 1).unwrap();
    let record = stream_one(&stranger).await;
    assert_eq!((record.error, record.status), (Some(ErrorKind::Connect), None), "{record:?}");
    assert!(record.error_detail.as_deref().unwrap().contains("certificate"), "{record:?}");
    let refused = stranger.get_json("/version").await.unwrap_err();
    assert!(matches!(refused, ClientError::Connect { .. }), "{refused}");

    let insecure = EngineClient::with_tls(&url, vec![], 1, &TlsOptions { ca_file: None, insecure: true }).unwrap();
    let record = stream_one(&insecure).await;
    assert!(record.ok(), "{record:?}");

    // A plain-HTTP client of the same sim gets no HTTP answer either.
    let plain = EngineClient::new(&url.replace("https://", "http://"), vec![], 1).unwrap();
    assert!(!stream_one(&plain).await.ok());
}

#[test]
fn a_bad_ca_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let error = EngineClient::with_tls("https://127.0.0.1:1", vec![], 1, &trusting(&missing)).err().unwrap();
    assert!(matches!(error, ClientError::CaFile { .. }), "{error:?}");
    assert!(error.to_string().starts_with(&format!("cannot use the CA file {}: ", missing.display())), "{error}");

    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    // Even a plain-HTTP client reports it: a wrong path is a mistake, whatever the scheme.
    let error = EngineClient::with_tls("http://127.0.0.1:1", vec![], 1, &trusting(&not_pem)).err().unwrap();
    assert_eq!(error.to_string(), format!("cannot use the CA file {}: it holds no PEM certificate", not_pem.display()));
}

#[tokio::test]
async fn a_required_header_is_sent_and_never_shown() {
    let certs = Certs::new();
    let url = start_https(&certs, &["--require-header", "Authorization: Bearer s3cret"]).await;
    let auth = |value: &str| vec![("Authorization".to_string(), value.to_string())];
    let client = EngineClient::with_tls(&url, auth("Bearer s3cret"), 1, &trusting(&certs.ca)).unwrap();
    let record = stream_one(&client).await;
    assert!(record.ok(), "{record:?}");
    assert_eq!(client.get("/health", Duration::from_secs(5)).await.unwrap().0, 200);
    assert!(!format!("{:?}", client.inner.http).contains("s3cret"));

    let mut shown = Vec::new();
    for headers in [auth("Bearer wrong"), vec![]] {
        let client = EngineClient::with_tls(&url, headers, 1, &trusting(&certs.ca)).unwrap();
        let record = stream_one(&client).await;
        assert_eq!(record.error, Some(ErrorKind::Status(401)), "{record:?}");
        let detail = record.error_detail.clone().unwrap();
        assert!(detail.contains("missing or wrong Authorization header"), "{detail}");
        shown.push(format!("{record:?}"));
        let (status, body) = client.get("/health", Duration::from_secs(5)).await.unwrap();
        assert_eq!(status, 401);
        shown.push(body);
        let error = client.get_json("/version").await.unwrap_err();
        assert!(matches!(error, ClientError::Status { status: 401, .. }), "{error}");
        shown.extend([error.to_string(), format!("{error:?}")]);
    }
    let unsendable = EngineClient::new(&url, auth("Bearer s3cret\n"), 1).err().unwrap();
    shown.extend([unsendable.to_string(), format!("{unsendable:?}")]);
    for text in shown {
        assert!(!text.contains("s3cret"), "{text}");
    }
}
