//! `kitt apply SUITE --server URL`: the suite and its suite-local templates uploaded as one
//! bundle (with their digest) to a `kitt serve` that runs it; the run lives on the server.
//!
//! The token comes from `KITT_SERVER_TOKEN` (never argv). The suite is validated here first, so
//! its errors show with this machine's file:line:column; model paths are the server's.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value as Json, json};

use super::{EXIT_FAILED, Output, print_json, report};

/// The bundle's files: the suite under its file name, and each suite-local template under its
/// path relative to the suite (which must stay inside the suite's directory).
pub(crate) fn bundle_files(suite: &Path) -> Result<(String, BTreeMap<String, String>), String> {
    let raw = crate::manifest::read_raw(suite).map_err(|d| {
        report(&d);
        "the suite does not validate".to_string()
    })?;
    let spec = raw.decode::<crate::manifest::SuiteSpec>().map_err(|d| {
        report(&d);
        "the suite does not validate".to_string()
    })?;
    if let Err(d) = crate::plan::compile::check_with_catalog(&spec, suite) {
        report(&d);
        return Err("the suite does not validate".into());
    }
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let name = suite.file_name().and_then(|n| n.to_str()).ok_or("the suite's file name is not UTF-8")?.to_string();
    let base = suite.parent().unwrap_or(Path::new("."));
    let mut files = BTreeMap::from([(name.clone(), read(suite)?)]);
    for t in &spec.spec.templates {
        let rel = Path::new(&t.value);
        if !rel.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
            return Err(format!(
                "templates: `{}` leaves the suite's directory; a bundle holds only files beside or below the suite",
                t.value
            ));
        }
        let full = base.join(rel);
        let paths: Vec<PathBuf> = if full.is_file() {
            vec![full.clone()]
        } else {
            crate::catalog::template_files(&full).map_err(|e| format!("templates: `{}`: {e}", t.value))?
        };
        for p in paths {
            let key = p.strip_prefix(base).unwrap_or(&p).components().filter(|c| !matches!(c, Component::CurDir));
            let key: PathBuf = key.collect();
            files.insert(key.to_string_lossy().to_string(), read(&p)?);
        }
    }
    Ok((name, files))
}

/// An HTTP client that trusts the system's roots and `ca` (a server's `--tls-self-signed` CA).
fn client(ca: Option<&Path>) -> Result<reqwest::Client, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let roots: Vec<CertificateDer<'static>> = match ca {
        Some(p) => CertificateDer::pem_file_iter(p)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("--server-ca {}: {e}", p.display()))?,
        None => Vec::new(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(roots, provider.clone())
        .map_err(|e| format!("TLS: {e}"))?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    reqwest::Client::builder().use_preconfigured_tls(config).no_proxy().build().map_err(|e| e.to_string())
}

async fn upload(server: &str, token: &str, ca: Option<&Path>, body: &Json) -> Result<Json, String> {
    let url = format!("{}/api/v1/bundles", server.trim_end_matches('/'));
    let res = client(ca)?
        .post(&url)
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = res.status();
    let bytes = res.bytes().await.map_err(|e| format!("{url}: {status}: {e}"))?;
    let answer: Json = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{url}: {status}: {e}: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(200)])))?;
    if !status.is_success() {
        return Err(format!("{url}: {status}: {}", answer["detail"].as_str().unwrap_or_default()));
    }
    Ok(answer)
}

pub fn apply(suite: &Path, server: &str, ca: Option<&Path>, fresh: bool, detach: bool, output: Output) -> i32 {
    let Some(token) = std::env::var("KITT_SERVER_TOKEN").ok().filter(|t| !t.is_empty()) else {
        eprintln!(
            "error: --server needs a `run` token in KITT_SERVER_TOKEN (`kitt serve token create --scope run` on the server)"
        );
        return EXIT_FAILED;
    };
    let (name, files) = match bundle_files(suite) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    let digest = crate::serve::bundle::digest(&files);
    let body = json!({"suite": name, "files": files, "digest": digest, "fresh": fresh});
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return EXIT_FAILED;
        }
    };
    match rt.block_on(upload(server, &token, ca, &body)) {
        Ok(answer) if !detach => {
            let run = answer["run_id"].as_str().unwrap_or_default().to_string();
            if output == Output::Text {
                eprintln!("run {run} started on {server} (bundle {}); following it (Ctrl-C cancels it)", &digest[..12]);
            }
            match rt.block_on(follow(server, &token, ca, &run, output)) {
                Ok((status, code)) => {
                    if output == Output::Json {
                        let mut a = answer;
                        a["status"] = status.into();
                        print_json(&a);
                    }
                    code
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    EXIT_FAILED
                }
            }
        }
        Ok(answer) => {
            match output {
                Output::Json => print_json(&answer),
                Output::Text => {
                    let run = answer["run_id"].as_str().unwrap_or_default();
                    println!("run {run} started on {server} (bundle {})", &digest[..12]);
                    eprintln!(
                        "  {}/api/v1/runs/{run}   # where it stands\n  {}/api/v1/events?run={run}   # its events",
                        server.trim_end_matches('/'),
                        server.trim_end_matches('/')
                    );
                }
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILED
        }
    }
}

/// Follows a run on the server until it ends: each step as it ends (text), the run's status at
/// the end and the exit code (0 succeeded, 1 failed, 130 cancelled here). Ctrl-C asks the server
/// to cancel the run and waits for it to stop.
async fn follow(
    server: &str,
    token: &str,
    ca: Option<&Path>,
    run: &str,
    output: Output,
) -> Result<(String, i32), String> {
    let base = server.trim_end_matches('/');
    let http = client(ca)?;
    let url = format!("{base}/api/v1/runs/{run}");
    let mut shown = std::collections::HashSet::new();
    let mut cancelled = false;
    let mut unfinished_since: Option<std::time::Instant> = None;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| format!("cannot watch Ctrl-C: {e}"))?;
    loop {
        let v: Json = match http.get(&url).bearer_auth(token).send().await {
            Ok(r) if r.status().is_success() => r.json().await.map_err(|e| format!("{url}: {e}"))?,
            Ok(r) => return Err(format!("{url}: {}", r.status())),
            Err(e) => {
                eprintln!("warning: {url}: {e}; trying again");
                Json::Null
            }
        };
        if output == Output::Text {
            for step in v["steps"].as_array().into_iter().flatten() {
                let state = step["state"].as_str().unwrap_or_default();
                let key = step["key"].as_str().unwrap_or_default().to_string();
                if matches!(state, "done" | "failed" | "skipped") && shown.insert(key) {
                    eprintln!(
                        "  {:<9} {:<8} {}",
                        step["kind"].as_str().unwrap_or_default(),
                        state,
                        step["label"].as_str().unwrap_or_default()
                    );
                }
            }
        }
        let status = v["run"]["status"].as_str().unwrap_or_default().to_string();
        match status.as_str() {
            "succeeded" => return Ok((status, 0)),
            "failed" => return Ok((status, EXIT_FAILED)),
            "unfinished" => {
                let since = *unfinished_since.get_or_insert_with(std::time::Instant::now);
                // Nothing drives it: stopped (cancelled, or its driver died).
                if since.elapsed() > std::time::Duration::from_secs(if cancelled { 2 } else { 10 }) {
                    let code = if cancelled { super::EXIT_INTERRUPTED } else { EXIT_FAILED };
                    if output == Output::Text {
                        eprintln!("run {run} stopped; `kitt apply SUITE --server {base}` again resumes it");
                    }
                    return Ok((status, code));
                }
            }
            _ => unfinished_since = None,
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            _ = interrupt.recv(), if !cancelled => {
                cancelled = true;
                eprintln!("cancelling run {run} on the server…");
                let cancel = format!("{url}/cancel");
                if let Err(e) = http.post(&cancel).bearer_auth(token).send().await {
                    eprintln!("warning: {cancel}: {e}");
                }
            }
        }
    }
}
