//! Client shards on other agents: both ends of a relay through the server
//! (`serve::relays`).
//!
//! A unit whose engine is an endpoint sends a many-client cell from shards on other agents. Its
//! coordinator (the unit's `kitt work`) starts, per shard, `kitt client-relay` instead of `kitt
//! client-shard`: a process that is that shard's pipe, carried through the server. It opens
//! the relay as its agent (with the agent's own token, read from the agent's config, which the
//! agent names in [`RELAY_ENV`]); an agent with a free slot takes the shard with its next
//! claim, runs `kitt client-shard` and carries its pipe the other way ([`Agent::run_relay`]).
//! Lines pass unread, except two: the shard's `ready` gets the name of the agent it runs on,
//! and its `done` waits until its spool is on the server and then on the coordinator's host, so
//! the coordinator finds the shard's records where it finds a local shard's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

use super::Agent;
use super::config::Config;
use super::proto::{RelayLines, RelayOpen, RelayOpened, RelayRecv, RelaySend, RelayTask, Side};
use crate::bench::load::clients::wire::FromShard;
use crate::serve::tokens::hex;

/// Set by an agent on the `kitt work` of a unit whose cells may send from shards on other
/// agents: where the agent's config is and which attempt the unit is (JSON, [`RelayEnv`]).
pub const RELAY_ENV: &str = "KITT_AGENT_RELAY";

/// What [`RELAY_ENV`] holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayEnv {
    pub config: PathBuf,
    pub run: String,
    pub unit: String,
    pub attempt: u32,
    /// Labels the agents that take its shards must have (`execution.agents.clients_select`).
    #[serde(default)]
    pub select: std::collections::BTreeMap<String, String>,
}

/// How long a side keeps trying a server it cannot reach before it gives the shard up (the
/// server gives up on a silent side after 1.5 heartbeats, 15 s by default).
const UNREACHABLE: Duration = Duration::from_secs(15);

/// The agent routes of one relay, as one agent.
struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    /// Lines this side has sent (each side of a relay sends one way).
    sent: std::sync::atomic::AtomicU64,
}

enum Failure {
    /// The server does not know the relay (it ended, or the server restarted).
    Gone(String),
    /// Anything else, after retrying for [`UNREACHABLE`].
    Other(String),
}

impl Failure {
    fn text(self) -> String {
        match self {
            Failure::Gone(s) | Failure::Other(s) => s,
        }
    }
}

impl Client {
    fn of(cfg: &Config) -> Result<Client, String> {
        Ok(Client {
            http: super::config::client(cfg.ca_sha256.as_deref())?,
            base: cfg.server.trim_end_matches('/').to_string(),
            token: cfg.token.clone(),
            sent: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/agent/{path}", self.base)
    }

    /// One JSON call, retried while the server cannot be reached or answers 5xx.
    async fn call<T: Serialize, R: for<'de> Deserialize<'de>>(&self, path: &str, body: &T) -> Result<R, Failure> {
        let body = serde_json::to_vec(body).map_err(|e| Failure::Other(e.to_string()))?;
        let began = Instant::now();
        loop {
            let sent = self
                .http
                .post(self.url(path))
                .bearer_auth(&self.token)
                .header("content-type", "application/json")
                .body(body.clone())
                .timeout(Duration::from_secs(60))
                .send()
                .await;
            let why = match sent {
                Ok(res) => {
                    let status = res.status().as_u16();
                    let bytes = res.bytes().await.unwrap_or_default();
                    match status {
                        200 => {
                            return serde_json::from_slice(&bytes).map_err(|e| Failure::Other(format!("{path}: {e}")));
                        }
                        404 => return Err(Failure::Gone(Agent::detail(&bytes))),
                        400..=499 => {
                            return Err(Failure::Other(format!("{path}: {status}: {}", Agent::detail(&bytes))));
                        }
                        _ => format!("{path}: {status}: {}", Agent::detail(&bytes)),
                    }
                }
                Err(e) => format!("{}: {}", self.url(path), super::chain(&e)),
            };
            if began.elapsed() > UNREACHABLE {
                return Err(Failure::Other(format!("the server could not be reached for {UNREACHABLE:?}: {why}")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sends `lines` (numbered on from what this side sent before) and, with `close`, its end.
    async fn send(&self, id: &str, to: Side, lines: Vec<String>, close: Option<String>) -> Result<(), Failure> {
        use std::sync::atomic::Ordering;
        let (seq, n) = (self.sent.load(Ordering::Relaxed), lines.len() as u64);
        let _: serde_json::Value =
            self.call(&format!("relays/{id}/send"), &RelaySend { to, seq, lines, close }).await?;
        self.sent.store(seq + n, Ordering::Relaxed);
        Ok(())
    }

    async fn recv(&self, id: &str, to: Side, from: u64) -> Result<RelayLines, Failure> {
        let wait_ms = super::proto::RELAY_WAIT_MAX_MS;
        self.call(&format!("relays/{id}/recv"), &RelayRecv { to, from, wait_ms }).await
    }

    /// Uploads the shard's spool `path`, streamed (hashed in a first pass).
    async fn put_spool(&self, id: &str, path: &Path) -> Result<(), String> {
        let io = |e: std::io::Error| format!("its spool {}: {e}", path.display());
        let p = path.to_path_buf();
        let sha = tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::open(&p)?;
            let mut hasher = Sha256::new();
            std::io::copy(&mut f, &mut hasher)?;
            Ok::<_, std::io::Error>(hex(&hasher.finalize()))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(io)?;
        let file = tokio::fs::File::open(path).await.map_err(io)?;
        let body = reqwest::Body::wrap_stream(crate::serve::relays::file_chunks(file));
        let res = self
            .http
            .put(self.url(&format!("relays/{id}/spool?sha256={sha}")))
            .bearer_auth(&self.token)
            .header("content-type", "application/octet-stream")
            .body(body)
            .timeout(Duration::from_secs(3600))
            .send()
            .await
            .map_err(|e| format!("uploading its spool: {}", super::chain(&e)))?;
        match res.status().as_u16() {
            200 => Ok(()),
            s => Err(format!("uploading its spool: {s}: {}", Agent::detail(&res.bytes().await.unwrap_or_default()))),
        }
    }

    /// Fetches the shard's spool into `path` (through a temporary file beside it).
    async fn get_spool(&self, id: &str, path: &Path) -> Result<(), String> {
        use futures_util::StreamExt as _;
        let res = self
            .http
            .get(self.url(&format!("relays/{id}/spool")))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(600))
            .send()
            .await
            .map_err(|e| format!("fetching its spool: {}", super::chain(&e)))?;
        if res.status().as_u16() != 200 {
            let s = res.status().as_u16();
            return Err(format!("fetching its spool: {s}: {}", Agent::detail(&res.bytes().await.unwrap_or_default())));
        }
        let want = res.headers().get("x-kitt-sha256").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let tmp = path.with_extension("part");
        let mut file = tokio::fs::File::create(&tmp).await.map_err(|e| format!("{}: {e}", tmp.display()))?;
        let mut hasher = Sha256::new();
        let mut stream = res.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("fetching its spool: {e}"))?;
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(|e| format!("{}: {e}", tmp.display()))?;
        }
        file.flush().await.map_err(|e| format!("{}: {e}", tmp.display()))?;
        drop(file);
        let got = hex(&hasher.finalize());
        if got != want {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("its spool arrived damaged (sha256 {got}, the server's {want})"));
        }
        std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// A shard's `failed` line, as the coordinator reads it.
fn failed_line(error: &str) -> String {
    serde_json::to_string(&FromShard::Failed { error: error.to_string() }).unwrap_or_default()
}

/// Whether a shard's line is its `done` (a line that does not read is passed on as it is: the
/// coordinator says what is wrong with it).
fn is_done(line: &str) -> bool {
    matches!(serde_json::from_str::<FromShard>(line), Ok(FromShard::Done(_)))
}

impl Agent {
    fn relay_client(&self) -> Result<Client, String> {
        Client::of(&self.cfg)
    }

    /// Runs a client shard of another agent's cell and carries its pipe through the relay.
    pub(super) async fn run_relay(self: Arc<Self>, t: RelayTask) {
        let who = format!("{}@{}", self.agent_name(), crate::bench::load::clients::shard::host_name());
        tracing::info!("client shard {} of {} of unit {} (run {}) taken", t.shard, t.of, t.unit, t.run);
        let client = match self.relay_client() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("client shard: {e}");
                return;
            }
        };
        let dir = self.state.join("relays");
        let spool = dir.join(format!("{}.spool", t.id));
        match self.shard_over_relay(&client, &t, &dir, &spool, &who).await {
            Ok(()) => {
                let _ = client.send(&t.id, Side::Coordinator, Vec::new(), Some(String::new())).await;
            }
            Err(why) => {
                let why = format!("{why} on {who}");
                tracing::warn!("client shard {} of {} of unit {}: {why}", t.shard, t.of, t.unit);
                let _ = client.send(&t.id, Side::Coordinator, vec![failed_line(&why)], Some(why)).await;
            }
        }
        let _ = std::fs::remove_file(&spool);
    }

    async fn shard_over_relay(
        &self,
        client: &Client,
        t: &RelayTask,
        dir: &Path,
        spool: &Path,
        who: &str,
    ) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this kitt binary: {e}"))?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args(["client-shard", "--shard", &t.shard.to_string(), "--of", &t.of.to_string(), "--spool"]).arg(spool);
        cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).kill_on_drop(true);
        // SAFETY: prctl(2) only, between fork and exec: the shard ends with this agent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| format!("cannot start kitt client-shard: {e}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("kitt client-shard has no pipe".into());
        };
        // Coordinator → shard, until the coordinator's side ends its stream.
        let down = async {
            // Owned here: the shard's stdin closes when this pump ends.
            let mut stdin = stdin;
            let mut from = 0;
            loop {
                let got = client.recv(&t.id, Side::Shard, from).await.map_err(Failure::text)?;
                from = got.next;
                let mut text = String::new();
                for l in &got.lines {
                    text.push_str(l);
                    text.push('\n');
                }
                if !text.is_empty() && stdin.write_all(text.as_bytes()).await.is_err() {
                    // The shard is gone: the other pump says how.
                    return Ok::<(), String>(());
                }
                let _ = stdin.flush().await;
                if got.closed.is_some() {
                    return Ok(());
                }
            }
        };
        // Shard → coordinator, until its pipe closes.
        let up = async {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            let mut done = false;
            while let Ok(Some(mut line)) = lines.next_line().await {
                if let Ok(FromShard::Ready { pid, host, slurm_step, .. }) = serde_json::from_str(&line) {
                    let ready = FromShard::Ready { pid, host, slurm_step, agent: Some(who.to_string()) };
                    line = serde_json::to_string(&ready).map_err(|e| e.to_string())?;
                }
                if is_done(&line) {
                    client.put_spool(&t.id, spool).await?;
                    done = true;
                }
                client.send(&t.id, Side::Coordinator, vec![line], None).await.map_err(Failure::text)?;
            }
            let status = child.wait().await.map_err(|e| e.to_string())?;
            if done {
                return Ok(());
            }
            use std::os::unix::process::ExitStatusExt as _;
            Err(match (status.code(), status.signal()) {
                (_, Some(sig)) => format!("it died (signal {sig})"),
                (Some(code), _) => format!("it exited with status {code}"),
                _ => "it exited".into(),
            })
        };
        tokio::pin!(down, up);
        tokio::select! {
            r = &mut up => r,
            r = &mut down => {
                // The coordinator's side is over: its stdin is closed (dropped with `down`'s
                // state when it returned) and the shard ends; what it said last still goes.
                r?;
                up.await
            }
        }
    }
}

/// `kitt client-relay`: shard `shard` of `of`, run by another agent, as the coordinator's
/// child. Its stdin and stdout are the shard's, carried through the server.
pub fn relay_main(shard: u32, of: u32, gang: &str, spool: PathBuf) -> i32 {
    let say_failed = |e: &str| {
        println!("{}", failed_line(e));
        eprintln!("error: client shard {shard} of {of}: {e}");
        1
    };
    let env: RelayEnv = match std::env::var(RELAY_ENV)
        .map_err(|e| e.to_string())
        .and_then(|v| serde_json::from_str(&v).map_err(|e| format!("{RELAY_ENV}: {e}")))
    {
        Ok(e) => e,
        Err(e) => return say_failed(&format!("not started by an agent's unit ({e})")),
    };
    let client = match Config::load(&env.config).and_then(|c| Client::of(&c)) {
        Ok(c) => c,
        Err(e) => return say_failed(&e),
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return say_failed(&format!("cannot start the runtime: {e}")),
    };
    match rt.block_on(relay(client, env, shard, of, gang, spool)) {
        Ok(()) => 0,
        Err(e) => say_failed(&e),
    }
}

async fn relay(client: Client, env: RelayEnv, shard: u32, of: u32, gang: &str, spool: PathBuf) -> Result<(), String> {
    let open = RelayOpen {
        run: env.run,
        unit: env.unit,
        attempt: env.attempt,
        gang: gang.to_string(),
        shard,
        of,
        select: env.select,
    };
    // stdin and stdout are the coordinator's pipes.
    let (input, mut out) = {
        use crate::bench::load::clients::shard::{reader, writer};
        use std::os::fd::AsFd as _;
        let io = |e: std::io::Error| format!("stdin and stdout must be pipes from its coordinator: {e}");
        (reader(std::io::stdin().as_fd()).map_err(io)?, writer(std::io::stdout().as_fd()).map_err(io)?)
    };
    let opened: RelayOpened = client.call("relays", &open).await.map_err(Failure::text)?;
    let id = opened.id;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot watch for SIGTERM: {e}"))?;
    // Coordinator → shard: this process's stdin, line by line, then its end.
    let down = async {
        let mut lines = tokio::io::BufReader::new(input).lines();
        loop {
            match lines.next_line().await {
                Ok(Some(line)) => client.send(&id, Side::Shard, vec![line], None).await.map_err(Failure::text)?,
                _ => {
                    client.send(&id, Side::Shard, Vec::new(), Some(String::new())).await.map_err(Failure::text)?;
                    return Ok::<(), String>(());
                }
            }
        }
    };
    // Shard → coordinator: this process's stdout; a `done` line once the spool is here.
    let up = async {
        let out = &mut out;
        let mut from = 0;
        loop {
            let got = match client.recv(&id, Side::Coordinator, from).await {
                Ok(g) => g,
                Err(Failure::Gone(e)) => return Err(format!("the server ended its relay: {e}")),
                Err(Failure::Other(e)) => return Err(e),
            };
            from = got.next;
            for line in got.lines {
                if is_done(&line) {
                    client.get_spool(&id, &spool).await?;
                }
                out.write_all(line.as_bytes()).await.map_err(|e| e.to_string())?;
                out.write_all(b"\n").await.map_err(|e| e.to_string())?;
            }
            out.flush().await.map_err(|e| e.to_string())?;
            match got.closed {
                None => {}
                Some(why) if why.is_empty() => return Ok(()),
                // The other side sent its `failed` line first, when it could.
                Some(why) => return Err(why),
            }
        }
    };
    tokio::pin!(down, up);
    let mut down_over = false;
    loop {
        tokio::select! {
            r = &mut up => {
                // The shard's stream is over: so is the coordinator's (what it still says is
                // for nobody), and the relay can go.
                if !down_over {
                    let _ = client.send(&id, Side::Shard, Vec::new(), Some(String::new())).await;
                }
                return r;
            }
            r = &mut down, if !down_over => { r?; down_over = true; }
            _ = term.recv() => {
                let _ = client.send(&id, Side::Shard, Vec::new(), Some("the coordinator stopped".into())).await;
                return Err("stopped".into());
            }
        }
    }
}
