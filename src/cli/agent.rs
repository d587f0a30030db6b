//! `kitt agent` (this host as an agent of a `kitt serve`) and `kitt agents` (a server's agents).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::{Value as Json, json};

use super::{EXIT_FAILED, EXIT_USAGE, Output, print_json};
use crate::agent::config::{self, Config};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The agent's config (default `$KITT_AGENT_CONFIG`, else `$XDG_CONFIG_HOME/kitt/agent.json`).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: AgentCommand,
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// Writes the agent's config (0600): its server, the server's pinned CA, its token.
    Init {
        /// `https://HOST:PORT` (plain `http://` only on loopback).
        #[arg(long)]
        server: String,
        /// SHA-256 of the server's CA, as `kitt serve --tls-self-signed` prints it; the only
        /// certificate the agent then trusts.
        #[arg(long)]
        ca_sha256: Option<String>,
        /// A file holding the agent token (`-`: standard input). Never on the command line.
        #[arg(long)]
        token_file: PathBuf,
        /// Units run at once.
        #[arg(long, default_value_t = 1)]
        slots: u32,
        /// Where the spool, pid and status live (default `$XDG_STATE_HOME/kitt/agent`).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Run native engines (commands on this host) the server names.
        #[arg(long)]
        allow_native: bool,
        /// Globs of the container images it runs, comma-separated (default: any).
        #[arg(long, value_delimiter = ',')]
        allow_images: Vec<String>,
    },
    /// Runs the agent in the foreground (stops orphaned engines first).
    Start,
    /// Whether the agent runs, and what it holds.
    Status {
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Stops a running agent (its units stop their engines and are placed elsewhere).
    Stop,
    /// Replaces this kitt with the server's build for this host (SHA-256 checked over the pinned
    /// channel, swapped atomically); a host the build cannot run on is refused.
    Update {
        /// Only say whether an update is there.
        #[arg(long)]
        check: bool,
    },
    /// A systemd unit for the agent.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ServiceCommand {
    /// Installs and starts `kitt-agent.service` (`--print`: only prints it).
    Install {
        /// A user unit (`systemctl --user`).
        #[arg(long)]
        user: bool,
        #[arg(long)]
        print: bool,
    },
    /// Stops and removes it.
    Uninstall {
        #[arg(long)]
        user: bool,
    },
}

#[derive(Debug, Args)]
pub struct AgentsArgs {
    /// The server (`https://HOST:PORT`; default `$KITT_SERVER`). Its token: `$KITT_SERVER_TOKEN`.
    #[arg(long, global = true, env = "KITT_SERVER")]
    server: Option<String>,
    /// SHA-256 of the server's CA, as `kitt serve --tls-self-signed` prints it.
    #[arg(long, global = true)]
    ca_sha256: Option<String>,
    #[command(subcommand)]
    command: AgentsCommand,
}

#[derive(Debug, Subcommand)]
enum AgentsCommand {
    /// Every agent: labels, fingerprint, GPUs free/total, version, last seen, units held.
    List {
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// The agent takes no new unit; what it runs finishes.
    Drain { name: String },
    /// Forgets the agent; the units it holds are placed again.
    Remove { name: String },
    /// Runs a command on the agent (sent with its next heartbeat) and prints its answer.
    Exec {
        name: String,
        #[arg(value_enum)]
        command: crate::agent::proto::ExecCommand,
        /// `engines-setup`'s engine.
        arg: Option<String>,
    },
}

fn read_token(file: &Path) -> Result<String, String> {
    let mut text = String::new();
    if file.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text).map_err(|e| format!("cannot read the token from stdin: {e}"))?;
    } else {
        text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    }
    let token = text.trim().to_string();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(
            "the token file holds no token (one line, as `kitt serve token create --scope agent` printed it)".into()
        );
    }
    Ok(token)
}

fn service_text(config: &Path, state: &Path, user: bool) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this kitt binary: {e}"))?;
    let config = std::path::absolute(config).map_err(|e| e.to_string())?;
    let state = std::path::absolute(state).map_err(|e| e.to_string())?;
    Ok(format!(
        "[Unit]\nDescription=kitt agent: runs units for {server}\nAfter=network-online.target docker.service\nWants=network-online.target\n\n[Service]\nType=simple\nExecStart={exe} agent start --config {config}\nRestart=on-failure\nRestartSec=5\nKillMode=mixed\nTimeoutStopSec=90\nNoNewPrivileges=yes\nProtectSystem=strict\nProtectHome=read-only\nPrivateTmp=yes\nReadWritePaths={state}\nReadWritePaths=-/run/docker.sock\n\n[Install]\nWantedBy={target}\n",
        server = Config::load(&config).map(|c| c.server).unwrap_or_else(|_| "a kitt serve".into()),
        exe = exe.display(),
        config = config.display(),
        state = state.display(),
        target = if user { "default.target" } else { "multi-user.target" },
    ))
}

pub fn agent(args: &AgentArgs, quiet: bool) -> i32 {
    let path = config::location(args.config.as_deref());
    match &args.command {
        AgentCommand::Init { server, ca_sha256, token_file, slots, state_dir, allow_native, allow_images } => {
            let made = (|| {
                config::check_server(server)?;
                if let Some(p) = ca_sha256 {
                    config::parse_pin(p)?;
                }
                if server.starts_with("https://") && ca_sha256.is_none() && !quiet {
                    eprintln!("note: no --ca-sha256: the server's certificate must chain to this system's roots");
                }
                let cfg = Config {
                    server: server.trim_end_matches('/').to_string(),
                    ca_sha256: ca_sha256.clone(),
                    token: read_token(token_file)?,
                    slots: (*slots).max(1),
                    state_dir: state_dir.clone(),
                    allow_native: *allow_native,
                    allow_images: allow_images.clone(),
                };
                cfg.save(&path)?;
                Ok::<_, String>(cfg)
            })();
            match made {
                Ok(cfg) => {
                    if !quiet {
                        eprintln!(
                            "agent config written to {} (0600); state in {}\n  kitt agent start           # run it here\n  kitt agent service install # or as a service",
                            path.display(),
                            cfg.state_dir().display()
                        );
                    }
                    0
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    EXIT_USAGE
                }
            }
        }
        AgentCommand::Start => {
            let cfg = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return EXIT_FAILED;
                }
            };
            let Some(rt) = super::apply::runtime() else { return EXIT_FAILED };
            rt.block_on(async move {
                let stop = crate::cancel::Cancel::default();
                super::apply::watch_signals(stop.clone());
                match crate::agent::start(cfg, path.clone(), stop).await {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("error: {e}");
                        EXIT_FAILED
                    }
                }
            })
        }
        AgentCommand::Status { output } => {
            let cfg = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return EXIT_FAILED;
                }
            };
            let state = cfg.state_dir();
            let owner = std::fs::read(crate::agent::pid_path(&state))
                .ok()
                .and_then(|b| serde_json::from_slice::<crate::run::pidfile::Owner>(&b).ok());
            let running = owner.as_ref().is_some_and(crate::run::pidfile::still_running);
            let status: Json = std::fs::read(state.join("status.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .filter(|_| running)
                .unwrap_or(Json::Null);
            let v = json!({
                "running": running, "pid": owner.filter(|_| running).map(|o| o.pid), "server": cfg.server,
                "config": path, "state_dir": state, "status": status,
            });
            match output {
                Output::Json => print_json(&v),
                Output::Text => {
                    if running {
                        println!(
                            "agent `{}` runs (pid {}) for {}; units held: {}",
                            status["agent"].as_str().unwrap_or("?"),
                            v["pid"],
                            cfg.server,
                            status["units"].as_array().map_or(0, Vec::len)
                        );
                    } else {
                        println!("no agent runs with {} (kitt agent start)", path.display());
                    }
                }
            }
            if running { 0 } else { 3 }
        }
        AgentCommand::Stop => {
            let Ok(cfg) = Config::load(&path) else {
                eprintln!("error: no agent config at {}", path.display());
                return EXIT_FAILED;
            };
            let pid_file = crate::agent::pid_path(&cfg.state_dir());
            let owner = std::fs::read(&pid_file)
                .ok()
                .and_then(|b| serde_json::from_slice::<crate::run::pidfile::Owner>(&b).ok())
                .filter(crate::run::pidfile::still_running);
            let Some(owner) = owner else {
                eprintln!("no agent runs (no live pid in {})", pid_file.display());
                return 0;
            };
            // SAFETY: kill(2) on the recorded process, checked by its start time.
            unsafe { libc::kill(owner.pid as i32, libc::SIGTERM) };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
            while crate::run::pidfile::still_running(&owner) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            if crate::run::pidfile::still_running(&owner) {
                eprintln!("error: agent (pid {}) did not stop within 90 s", owner.pid);
                return EXIT_FAILED;
            }
            if !quiet {
                eprintln!("agent (pid {}) stopped", owner.pid);
            }
            0
        }
        AgentCommand::Update { check } => {
            let cfg = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return EXIT_FAILED;
                }
            };
            match update(&cfg, *check, quiet) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e}");
                    EXIT_FAILED
                }
            }
        }
        AgentCommand::Service { command } => {
            let state =
                Config::load(&path).map(|c| c.state_dir()).unwrap_or_else(|_| PathBuf::from("/var/lib/kitt-agent"));
            let (user, print) = match command {
                ServiceCommand::Install { user, print } => (*user, *print),
                ServiceCommand::Uninstall { user } => (*user, false),
            };
            let unit_dir = if user {
                std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(".config/systemd/user")
            } else {
                PathBuf::from("/etc/systemd/system")
            };
            let unit = unit_dir.join("kitt-agent.service");
            let systemctl = |args: &[&str]| {
                let mut c = std::process::Command::new("systemctl");
                if user {
                    c.arg("--user");
                }
                c.args(args).status().is_ok_and(|s| s.success())
            };
            match command {
                ServiceCommand::Install { .. } => {
                    let text = match service_text(&path, &state, user) {
                        Ok(t) => t,
                        Err(e) => {
                            eprintln!("error: {e}");
                            return EXIT_FAILED;
                        }
                    };
                    if print {
                        print!("{text}");
                        return 0;
                    }
                    if let Err(e) = std::fs::create_dir_all(&unit_dir).and_then(|_| std::fs::write(&unit, text)) {
                        eprintln!("error: cannot write {}: {e}", unit.display());
                        return EXIT_FAILED;
                    }
                    if systemctl(&["daemon-reload"]) && systemctl(&["enable", "--now", "kitt-agent.service"]) {
                        eprintln!("kitt-agent.service installed and started ({})", unit.display());
                    } else {
                        eprintln!(
                            "wrote {}; systemd did not take it here: run `systemctl {}daemon-reload && systemctl {}enable --now kitt-agent`",
                            unit.display(),
                            if user { "--user " } else { "" },
                            if user { "--user " } else { "" }
                        );
                    }
                    0
                }
                ServiceCommand::Uninstall { .. } => {
                    systemctl(&["disable", "--now", "kitt-agent.service"]);
                    match std::fs::remove_file(&unit) {
                        Ok(()) => {
                            systemctl(&["daemon-reload"]);
                            eprintln!("removed {}", unit.display());
                            0
                        }
                        Err(e) => {
                            eprintln!("error: cannot remove {}: {e}", unit.display());
                            EXIT_FAILED
                        }
                    }
                }
            }
        }
    }
}

pub fn agents(args: &AgentsArgs) -> i32 {
    let Some(server) = args.server.clone() else {
        eprintln!("error: give --server URL (or KITT_SERVER)");
        return EXIT_USAGE;
    };
    let Some(token) = std::env::var("KITT_SERVER_TOKEN").ok().filter(|t| !t.is_empty()) else {
        eprintln!("error: `kitt agents` needs a token in KITT_SERVER_TOKEN (read to list; admin to drain or remove)");
        return EXIT_USAGE;
    };
    let base = server.trim_end_matches('/').to_string();
    let client = match config::client(args.ca_sha256.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return EXIT_FAILED };
    let (method, url) = match &args.command {
        AgentsCommand::List { .. } => (reqwest::Method::GET, format!("{base}/api/v1/agents")),
        AgentsCommand::Drain { name } => (reqwest::Method::POST, format!("{base}/api/v1/agents/{name}/drain")),
        AgentsCommand::Remove { name } => (reqwest::Method::DELETE, format!("{base}/api/v1/agents/{name}")),
        AgentsCommand::Exec { name, .. } => (reqwest::Method::POST, format!("{base}/api/v1/agents/{name}/exec")),
    };
    let body = match &args.command {
        AgentsCommand::Exec { command, arg, .. } => json!({"command": command, "arg": arg}).to_string(),
        _ => String::new(),
    };
    let answer = rt.block_on(async {
        let mut req = client.request(method, &url).bearer_auth(&token).timeout(std::time::Duration::from_secs(180));
        if !body.is_empty() {
            req = req.header("content-type", "application/json").body(body.clone());
        }
        let res = req.send().await.map_err(|e| format!("{url}: {e}"))?;
        let status = res.status();
        let v: Json = res.json().await.map_err(|e| format!("{url}: {status}: {e}"))?;
        if !status.is_success() {
            return Err(format!("{url}: {status}: {}", v["detail"].as_str().unwrap_or_default()));
        }
        Ok(v)
    });
    let v = match answer {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    match &args.command {
        AgentsCommand::List { output: Output::Json } => print_json(&v),
        AgentsCommand::List { output: Output::Text } => {
            println!(
                "{:<20} {:<8} {:<24} {:<9} {:<10} {:<12} {:<6} {:<7} LABELS",
                "NAME", "STATE", "FINGERPRINT", "GPUS", "VERSION", "LAST SEEN", "UNITS", "SHARDS"
            );
            let now = crate::run::journal::unix_ns();
            for a in v["agents"].as_array().into_iter().flatten() {
                let seen = now.saturating_sub(a["last_seen_unix_ns"].as_u64().unwrap_or(0)) / 1_000_000_000;
                let labels: Vec<String> = a["labels"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect();
                let state =
                    if a["online"].as_bool() == Some(false) { "offline" } else { a["state"].as_str().unwrap_or("?") };
                println!(
                    "{:<20} {:<8} {:<24} {:<9} {:<10} {:<12} {:<6} {:<7} {}",
                    a["name"].as_str().unwrap_or("?"),
                    state,
                    a["fingerprint"].as_str().unwrap_or("").chars().take(24).collect::<String>(),
                    format!("{}/{}", a["gpus_free"], a["gpus_total"]),
                    a["kitt_version"].as_str().unwrap_or(""),
                    format!("{seen}s ago"),
                    a["held"].as_array().map_or(0, Vec::len),
                    a["client_shards"].as_array().map_or(0, Vec::len),
                    labels.join(",")
                );
            }
        }
        AgentsCommand::Exec { .. } => {
            println!("{}", v["output"].as_str().unwrap_or_default());
            if v["ok"] != true {
                return EXIT_FAILED;
            }
        }
        _ => print_json(&v),
    }
    0
}

/// `kitt agent update`: 0 updated or up to date; with `--check`, 3 when an update is there.
fn update(cfg: &Config, check: bool, quiet: bool) -> Result<i32, String> {
    use sha2::Digest as _;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this kitt binary: {e}"))?;
    let ours: String =
        sha2::Sha256::digest(std::fs::read(&exe).map_err(|e| format!("cannot read {}: {e}", exe.display()))?)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
    let client = config::client(cfg.ca_sha256.as_deref())?;
    let glibc = crate::serve::agents::glibc().map(|(a, b)| format!("{a}.{b}"));
    let url = format!("{}/api/v1/agent/build", cfg.server.trim_end_matches('/'));
    let mut query = vec![("target", crate::agent::target())];
    if let Some(g) = glibc {
        query.push(("glibc", g));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let (sha, bytes) = rt.block_on(async {
        let res = client
            .get(&url)
            .query(&query)
            .bearer_auth(&cfg.token)
            .timeout(std::time::Duration::from_secs(600))
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = res.status();
        let sha = res.headers().get("x-kitt-sha256").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let bytes = res.bytes().await.map_err(|e| format!("{url}: {e}"))?;
        if !status.is_success() {
            let detail = serde_json::from_slice::<Json>(&bytes)
                .ok()
                .and_then(|v| v["detail"].as_str().map(str::to_string))
                .unwrap_or_default();
            return Err(format!("the server has no build for this host ({status}): {detail}"));
        }
        Ok((sha, bytes))
    })?;
    let got: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    if sha.is_empty() || got != sha {
        return Err(format!("the download's SHA-256 is {got}, the server said `{sha}`: nothing was changed"));
    }
    if got == ours {
        if !quiet {
            eprintln!("kitt is up to date ({})", crate::run::facts::build_id());
        }
        return Ok(0);
    }
    if check {
        println!("an update is there: SHA-256 {got}");
        return Ok(3);
    }
    // Beside the binary (one filesystem, so the rename is atomic), checked to run before the swap.
    let new = exe.with_file_name(format!(".{}.update", exe.file_name().and_then(|n| n.to_str()).unwrap_or("kitt")));
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o755)
            .open(&new)
            .map_err(|e| format!("cannot write {}: {e}", new.display()))?;
        f.write_all(&bytes).and_then(|_| f.sync_all()).map_err(|e| format!("cannot write {}: {e}", new.display()))?;
    }
    let runs = std::process::Command::new(&new).arg("--version").output().is_ok_and(|o| o.status.success());
    if !runs {
        let _ = std::fs::remove_file(&new);
        return Err("the downloaded kitt does not run on this host: nothing was changed".into());
    }
    std::fs::rename(&new, &exe).map_err(|e| format!("cannot replace {}: {e}", exe.display()))?;
    if !quiet {
        eprintln!(
            "kitt updated in {} (SHA-256 {got}); restart a running agent: `kitt agent stop && kitt agent start` (a service restarts itself on failure: `systemctl restart kitt-agent`)",
            exe.display()
        );
    }
    Ok(0)
}
