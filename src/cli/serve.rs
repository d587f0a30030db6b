//! `kitt serve`: the REST API server, and `kitt serve token` to manage who may call it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::json;

use super::{EXIT_FAILED, EXIT_USAGE, Output, print_json};
use crate::serve::tokens::{self, Scope};
use crate::serve::{Config, Given, TlsSource};

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(subcommand)]
    pub command: Option<ServeCommand>,
    /// Where to listen. Anything but a loopback address needs TLS (or --insecure).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// The results store: a SQLite file or a postgres:// URL (default: $KITT_STORE, else the
    /// default results store).
    #[arg(long, value_name = "PATH|URL")]
    pub store: Option<PathBuf>,
    /// Where runs live (default: $KITT_RUNS_DIR, else ./.kitt/runs).
    #[arg(long)]
    pub runs_dir: Option<PathBuf>,
    /// Change nothing: the store is opened read-only (immutable where its directory is not
    /// writable) and every route that writes answers 403.
    #[arg(long)]
    pub read_only: bool,
    /// A file holding the admin token (made, 0600, when it does not exist). Without it (and
    /// without $KITT_WEB_TOKEN), a fresh admin token is written to `web-token` beside the
    /// token file and a login URL is printed.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The token file (default: $KITT_TOKENS, else $XDG_CONFIG_HOME/kitt/tokens.json).
    #[arg(long, global = true, value_name = "FILE")]
    pub tokens: Option<PathBuf>,
    /// A directory whose suites `POST /api/v1/runs` may start (repeatable); without one, the
    /// server starts no runs.
    #[arg(long, value_name = "DIR")]
    pub suites_dir: Vec<PathBuf>,
    /// Run suites uploaded by `kitt apply SUITE --server URL` (with their templates) from `run`
    /// tokens: code execution on this machine for anyone holding one.
    #[arg(long)]
    pub allow_suite_upload: bool,
    /// The server's certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_key", conflicts_with = "tls_self_signed")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve TLS with a CA and certificate made once and kept (0600) in --tls-dir; prints the
    /// CA's SHA-256 fingerprint, and clients trust `ca.pem`.
    #[arg(long)]
    pub tls_self_signed: bool,
    /// Where --tls-self-signed keeps its files (default: `tls/` beside the token file).
    #[arg(long, value_name = "DIR", requires = "tls_self_signed")]
    pub tls_dir: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (tokens then cross the network in clear).
    #[arg(long)]
    pub insecure: bool,
    /// DEVON, the model manager (its origin, `http://HOST:PORT`): a Devon page embeds its UI and
    /// the Models page lists its models (default: $KITT_DEVON_URL).
    #[arg(long, value_name = "URL")]
    pub devon_url: Option<String>,
    /// The environment variable holding DEVON's API key, sent as a Bearer token.
    #[arg(long, value_name = "NAME", default_value = "DEVON_API_KEY")]
    pub devon_token_env: String,
}

#[derive(Debug, Subcommand)]
pub enum ServeCommand {
    /// API tokens: create (printed once, kept hashed), list, revoke.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Print the OpenAPI document of /api/v1 (docs/openapi.json is this output).
    Openapi,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it: the only time it is shown.
    Create {
        /// Its name, shown in logs and `token list` (letters, digits, `-`, `_`, `.`).
        #[arg(long)]
        name: String,
        #[arg(long, value_enum, default_value = "read")]
        scope: Scope,
        /// An agent token's labels, `key=value,…` (what `execution.agents.select` matches).
        #[arg(long, value_parser = parse_labels, default_value = "")]
        labels: std::collections::BTreeMap<String, String>,
        /// With `--scope agent`: also write FILE (0600), a script that installs kitt from
        /// `--server` on the agent's host and feeds it this token on standard input.
        #[arg(long, value_name = "FILE", requires = "server")]
        install_script: Option<std::path::PathBuf>,
        /// The server's URL as agents reach it, for `--install-script`.
        #[arg(long)]
        server: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Every token: id, name, scope, when made, last used, revoked.
    List {
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Revoke tokens by id or name; a running server refuses them at once.
    Revoke {
        id: String,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

fn time_text(ns: Option<u64>) -> String {
    ns.map_or("-".into(), |ns| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns)).to_string()
    })
}

fn token(path: &Path, command: &TokenCommand) -> i32 {
    match command {
        TokenCommand::Create { name, scope, labels, install_script, server, output } => {
            match create_token(path, name, *scope, labels) {
                Ok((token, entry)) => {
                    if let (Some(file), Some(server)) = (install_script, server) {
                        let server = server.trim_end_matches('/');
                        let text = format!(
                            "#!/bin/sh\n# Installs kitt from {server} as agent `{name}` (this file holds its token: keep it 0600, delete it after).\nset -eu\ntok=\"$(mktemp)\"\ntrap 'rm -f \"$tok\"' EXIT\nchmod 600 \"$tok\"\nprintf '%s\\n' '{token}' > \"$tok\"\ncurl -fsS ${{KITT_CURL_TLS:-}} \"{server}/api/v1/agent/install.sh\" > \"$tok.sh\"\nKITT_AGENT_TOKEN_FILE=\"$tok\" sh \"$tok.sh\"\nrm -f \"$tok.sh\"\n"
                        );
                        if let Err(e) = tokens::write_private(file, text.as_bytes()) {
                            eprintln!("error: cannot write {}: {e}", file.display());
                            return super::EXIT_FAILED;
                        }
                        eprintln!(
                            "install script for `{name}` written to {} (0600; it holds the token)",
                            file.display()
                        );
                    }
                    match output {
                        Output::Json => print_json(&json!({"token": token, "entry": entry})),
                        Output::Text => {
                            println!("{token}");
                            eprintln!(
                                "token `{}` ({}, id {}) kept hashed in {}; it is not shown again",
                                entry.name,
                                entry.scope.name(),
                                entry.id,
                                path.display()
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
        TokenCommand::List { output } => match tokens::list(path) {
            Ok(list) => {
                match output {
                    Output::Json => print_json(&list),
                    Output::Text => {
                        println!(
                            "{:<9} {:<20} {:<6} {:<21} {:<21} revoked",
                            "id", "name", "scope", "created", "last used"
                        );
                        for t in &list {
                            println!(
                                "{:<9} {:<20} {:<6} {:<21} {:<21} {}",
                                t.id,
                                t.name,
                                t.scope.name(),
                                time_text(Some(t.created_unix_ns)),
                                time_text(t.last_used_unix_ns),
                                time_text(t.revoked_unix_ns)
                            );
                        }
                    }
                }
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                EXIT_FAILED
            }
        },
        TokenCommand::Revoke { id, output } => match tokens::revoke(path, id) {
            Ok(done) => {
                match output {
                    Output::Json => print_json(&json!({"revoked": done})),
                    Output::Text => {
                        for t in &done {
                            println!("revoked {} `{}` ({})", t.id, t.name, t.scope.name());
                        }
                    }
                }
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                EXIT_FAILED
            }
        },
    }
}

/// The admin token and whether it was made now (then the login URL may show it): from
/// $KITT_WEB_TOKEN, from --token-file (made there if missing), or fresh in `web-token`.
fn admin_token(args: &ServeArgs, tokens_path: &Path) -> Result<(String, bool, Option<PathBuf>), String> {
    if let Some(t) = std::env::var("KITT_WEB_TOKEN").ok().filter(|t| !t.is_empty()) {
        return check_strength(t.trim().to_string(), "KITT_WEB_TOKEN").map(|t| (t, false, None));
    }
    let (file, fresh_each_start) = match &args.token_file {
        Some(f) => (f.clone(), false),
        None => (tokens_path.parent().unwrap_or(Path::new(".")).join("web-token"), true),
    };
    if !fresh_each_start && file.exists() {
        let text = std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        return check_strength(text.trim().to_string(), &file.display().to_string()).map(|t| (t, false, Some(file)));
    }
    let token = tokens::generate().map_err(|e| e.to_string())?;
    tokens::write_private(&file, format!("{token}\n").as_bytes())
        .map_err(|e| format!("cannot write the admin token to {}: {e}", file.display()))?;
    Ok((token, true, Some(file)))
}

/// A token from a file or the environment must be long enough not to be guessed.
fn check_strength(token: String, from: &str) -> Result<String, String> {
    if token.len() < 32 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "the admin token in {from} is too weak: at least 32 characters without spaces (`kitt serve` makes one when there is no token file)"
        ));
    }
    Ok(token)
}

pub fn serve(args: &ServeArgs) -> i32 {
    let tokens_path = tokens::location(args.tokens.as_deref());
    match &args.command {
        Some(ServeCommand::Token { command }) => return token(&tokens_path, command),
        Some(ServeCommand::Openapi) => {
            print_json(&crate::serve::openapi::document());
            return 0;
        }
        None => {}
    }
    let tls = match (&args.tls_cert, &args.tls_key, args.tls_self_signed) {
        (Some(cert), Some(key), _) => Some(TlsSource::Files { cert: cert.clone(), key: key.clone() }),
        (_, _, true) => {
            let dir =
                args.tls_dir.clone().unwrap_or_else(|| tokens_path.parent().unwrap_or(Path::new(".")).join("tls"));
            let mut hosts = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
            if !args.bind.ip().is_unspecified() && !args.bind.ip().is_loopback() {
                hosts.push(args.bind.ip().to_string());
            }
            if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
                hosts.push(h.trim().to_string());
            }
            Some(TlsSource::SelfSigned { dir, hosts })
        }
        _ => None,
    };
    if !args.bind.ip().is_loopback() && tls.is_none() && !args.insecure {
        eprintln!(
            "error: refusing to serve plain HTTP on {}: tokens would cross the network in clear\n  = help: add --tls-self-signed (or --tls-cert FILE --tls-key FILE), or --insecure on a network you trust",
            args.bind
        );
        return EXIT_USAGE;
    }
    let (admin, fresh, admin_file) = match admin_token(args, &tokens_path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    let mut suites_dirs = Vec::new();
    for d in &args.suites_dir {
        match d.canonicalize() {
            Ok(c) if c.is_dir() => suites_dirs.push(c),
            _ => {
                eprintln!("error: --suites-dir {}: not a directory", d.display());
                return EXIT_USAGE;
            }
        }
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot find this kitt binary: {e}");
            return EXIT_FAILED;
        }
    };
    let runs_root = crate::run::dir::runs_root(args.runs_dir.as_deref());
    let runs_root = runs_root.canonicalize().unwrap_or(runs_root);
    let store = crate::store::location(args.store.as_deref());
    let store_flag = store.as_ref().map(|_| {
        args.store.clone().or_else(|| std::env::var_os("KITT_STORE").map(PathBuf::from)).unwrap_or_else(|| match &store
        {
            Some(crate::store::Location::Sqlite(p)) => p.clone(),
            _ => PathBuf::from("off"),
        })
    });
    let tls_on = tls.is_some();
    let insecure = args.insecure && !args.bind.ip().is_loopback() && !tls_on;
    let devon_flag = args.devon_url.clone().map(|u| (u, "flag"));
    let devon_url = devon_flag
        .or_else(|| std::env::var("KITT_DEVON_URL").ok().filter(|u| !u.trim().is_empty()).map(|u| (u, "env")));
    let devon = match &devon_url {
        Some((url, _)) => match crate::serve::Devon::new(url, &args.devon_token_env) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_USAGE;
            }
        },
        None => None,
    };
    let flag_or = |given: bool, env: &str| {
        if given {
            "flag"
        } else if std::env::var_os(env).is_some() {
            "env"
        } else {
            "default"
        }
    };
    let given = vec![
        Given {
            name: "bind",
            value: args.bind.to_string(),
            source: if args.bind.to_string() == "127.0.0.1:8080" { "default" } else { "flag" },
        },
        Given {
            name: "runs dir",
            value: runs_root.display().to_string(),
            source: flag_or(args.runs_dir.is_some(), "KITT_RUNS_DIR"),
        },
        Given {
            name: "store",
            value: store.as_ref().map_or("off".to_string(), |s| s.to_string()),
            source: flag_or(args.store.is_some(), "KITT_STORE"),
        },
        Given {
            name: "tokens",
            value: tokens_path.display().to_string(),
            source: flag_or(args.tokens.is_some(), "KITT_TOKENS"),
        },
        Given {
            name: "read only",
            value: args.read_only.to_string(),
            source: if args.read_only { "flag" } else { "default" },
        },
        Given {
            name: "tls",
            value: match &tls {
                Some(TlsSource::Files { cert, .. }) => format!("certificate {}", cert.display()),
                Some(TlsSource::SelfSigned { dir, .. }) => format!("self-signed, kept in {}", dir.display()),
                None => "off (plain HTTP)".into(),
            },
            source: if tls_on { "flag" } else { "default" },
        },
        Given { name: "insecure", value: insecure.to_string(), source: if args.insecure { "flag" } else { "default" } },
        Given {
            name: "suites dirs",
            value: suites_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
            source: if args.suites_dir.is_empty() { "default" } else { "flag" },
        },
        Given {
            name: "allow suite upload",
            value: args.allow_suite_upload.to_string(),
            source: if args.allow_suite_upload { "flag" } else { "default" },
        },
        Given {
            name: "devon url",
            value: devon.as_ref().map_or("none".to_string(), |d| d.origin.clone()),
            source: devon_url.as_ref().map_or("default", |(_, s)| s),
        },
        Given {
            name: "devon token env",
            value: args.devon_token_env.clone(),
            source: if args.devon_token_env == "DEVON_API_KEY" { "default" } else { "flag" },
        },
    ];
    let cfg = Config {
        bind: args.bind,
        store,
        store_flag,
        runs_root,
        read_only: args.read_only,
        tls,
        suites_dirs,
        allow_suite_upload: args.allow_suite_upload,
        exe,
        insecure,
        devon,
        given,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return EXIT_FAILED;
        }
    };
    let result = rt.block_on(crate::serve::serve(cfg, tokens_path.clone(), &admin, |addr, fingerprint| {
        let scheme = if tls_on { "https" } else { "http" };
        let shown = if addr.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], addr.port())) } else { addr };
        eprintln!("kitt serve: listening on {scheme}://{addr}");
        if let Some(fp) = fingerprint {
            eprintln!("  TLS certificate to trust: SHA-256 {fp}");
        }
        if insecure {
            eprintln!("  warning: plain HTTP on a network address (--insecure): tokens cross the network in clear");
        }
        match (&admin_file, fresh) {
            (Some(f), true) => {
                eprintln!("  admin token written to {} (0600)", f.display());
                eprintln!("  log in: {scheme}://{shown}/login?token={admin}");
            }
            (Some(f), false) => eprintln!("  admin token: {}; log in at {scheme}://{shown}/login", f.display()),
            (None, _) => eprintln!("  admin token: $KITT_WEB_TOKEN; log in at {scheme}://{shown}/login"),
        }
        eprintln!("  tokens: {}", tokens_path.display());
    }));
    match result {
        Ok(()) => {
            eprintln!("kitt serve: stopped");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILED
        }
    }
}

/// `--labels key=value,…`: keys and values are `[a-z0-9._-]`, at most 63 characters each.
pub fn parse_labels(text: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    let ok = |s: &str| {
        (1..=63).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    };
    let mut labels = std::collections::BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!("`{part}` is not `key=value`"));
        };
        if !ok(k) || !ok(v) {
            return Err(format!("`{part}`: keys and values are 1 to 63 of a-z, 0-9, `.`, `_`, `-`"));
        }
        labels.insert(k.to_string(), v.to_string());
    }
    Ok(labels)
}

fn create_token(
    path: &std::path::Path,
    name: &str,
    scope: Scope,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<(String, tokens::TokenEntry), tokens::TokenError> {
    tokens::create_labelled(path, name, scope, labels.clone())
}
