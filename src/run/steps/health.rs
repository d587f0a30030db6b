//! Waiting for a started engine to become healthy, and making sure it is ours: the health path
//! is polled with exponential backoff; an engine that exits (or a container that dies) fails the
//! wait at once with its last log lines; a port answered by someone else's server fails it too,
//! since that server would be benchmarked in the engine's place. Shared by start and connect.

use super::*;

/// What `wait_healthy` watches besides the health path: the engine must stay alive, and the
/// server answering must be its own.
pub(super) enum Watch<'a> {
    /// An endpoint: nothing of ours to watch.
    Nothing,
    Process(&'a mut EngineProcess),
    Container(&'a Container, Network),
}

impl Watch<'_> {
    /// Why the engine cannot become healthy any more, with its last log lines.
    pub(super) async fn dead(&mut self, g: &EngineGroup, client: &EngineClient) -> Option<String> {
        match self {
            Watch::Nothing => None,
            Watch::Process(p) => {
                let status = p.exited()?;
                let port = client.base_url().rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                let holder = port
                    .and_then(crate::engine::native::port_holder)
                    .map(|h| format!("; port {} is held by {h}", port.unwrap_or(0)))
                    .unwrap_or_default();
                Some(format!(
                    "engine `{}` exited ({status}) before it was healthy{holder}; last log lines:\n{}",
                    g.id,
                    p.last_log_lines(50)
                ))
            }
            Watch::Container(c, _) => {
                let trouble = match c.state().await {
                    Ok(state) => state.trouble()?,
                    Err(e) => format!("cannot be inspected ({e})"),
                };
                Some(format!(
                    "engine `{}`: container {} {trouble} before it was healthy; last log lines:\n{}",
                    g.id,
                    c.name,
                    c.last_log_lines(50).await
                ))
            }
        }
    }

    /// Whether the server that answered is ours: for a native engine, the process listening on
    /// the port must be one kitt started or a descendant of it; for a host-network container, it
    /// must live in the container's pid namespace. The port was free when kitt chose it, but
    /// another server may have taken it before the engine bound it, and would be benchmarked.
    pub(super) async fn owns(&mut self, g: &EngineGroup, client: &EngineClient) -> Result<(), String> {
        let Some(port) = client.base_url().rsplit(':').next().and_then(|p| p.parse::<u16>().ok()) else {
            return Ok(());
        };
        if let Watch::Process(p) = self {
            return crate::engine::native::owns_port(p.pid(), port)
                .map_err(|holder| format!("engine `{}`: port {port} answers, but not from the engine kitt started (pid {}): it is held by {holder}", g.id, p.pid()));
        }
        let Watch::Container(c, Network::Host) = self else { return Ok(()) };
        let state = c.state().await.map_err(|e| e.to_string())?;
        let ns = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
        let (Some(theirs), Some(pids)) = (ns(state.pid), crate::engine::native::listener_pids(port)) else {
            // kitt itself runs in a container (sibling mode) and cannot see the engine's
            // processes: the container being alive is all it can check.
            return Ok(());
        };
        if pids.is_empty() || pids.iter().any(|p| ns(*p).as_ref() == Some(&theirs)) {
            return Ok(());
        }
        Err(format!(
            "engine `{}`: port {port} answers, but not from container {}: it is held by {}",
            g.id,
            c.name,
            crate::engine::native::port_holder(port).unwrap_or_default()
        ))
    }
}

/// Polls the health path with exponential backoff until it answers 2xx; fails at once if the
/// engine exits, and on timeout says what was polled and what it last answered.
pub(super) async fn wait_healthy(
    g: &EngineGroup,
    client: &EngineClient,
    mut watch: Watch<'_>,
    cancel: &Cancel,
) -> Result<(), StepError> {
    let h = &g.health;
    let started = std::time::Instant::now();
    let mut interval = h.initial_interval.0.max(Duration::from_millis(5));
    let mut last: String;
    loop {
        match client.get(&h.path, Duration::from_secs(5)).await {
            Ok((code, _)) if (200..300).contains(&code) => {
                // The answer must come from our engine, which must still be alive.
                if let Some(dead) = watch.dead(g, client).await {
                    return Err(err(dead));
                }
                watch.owns(g, client).await.map_err(err)?;
                return Ok(());
            }
            Ok((code @ (401 | 403), _)) => {
                // Credentials do not fix themselves by waiting.
                return Err(err(format!(
                    "engine `{}` refused kitt's credentials: HTTP {code} from {}{}; check the endpoint's `headers:`",
                    g.id,
                    client.base_url(),
                    h.path
                )));
            }
            Ok((code, body)) => last = format!("HTTP {code}: {}", body.chars().take(200).collect::<String>()),
            // An untrusted certificate does not become trusted by waiting either.
            Err(e) if e.to_string().to_lowercase().contains("certificate") => {
                return Err(err(format!(
                    "engine `{}`: TLS failed at {}{}: {e}; trust its CA with `ca_file:` (or, knowingly, `insecure: true`)",
                    g.id,
                    client.base_url(),
                    h.path
                )));
            }
            Err(e) => last = e.to_string(),
        }
        if let Some(dead) = watch.dead(g, client).await {
            return Err(err(dead));
        }
        if started.elapsed() >= h.timeout.0 {
            return Err(err(format!(
                "engine `{}` was not healthy after {}: polled {}{}, last answer: {last}",
                g.id,
                humantime::format_duration(h.timeout.0),
                client.base_url(),
                h.path
            )));
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = cancel.cancelled() => return Err(StepError::cancelled()),
        }
        interval = (interval * 2).min(h.max_interval.0);
    }
}
