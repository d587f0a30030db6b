//! Who owns a container: the `kitt.owner` label, and the judgement of whether that owner is gone.
//!
//! A label names the kitt process (machine, boot id, pid namespace, pid, start time), the Docker
//! daemon as that kitt addressed it, and — when kitt itself runs in a container on the same
//! daemon (the sibling-container pattern) — that container's id and start time. The judgement
//! must never remove a live kitt's engine, so it only trusts what it can check:
//!
//! - the owner's container, when recorded: kitt confirmed at labelling time that this daemon runs
//!   it, so the daemon's answer now is sound from any machine: gone, stopped or restarted ⇒ the
//!   owner is gone;
//! - otherwise pids, boot ids and namespaces, and only on the owner's own machine: another
//!   machine's owner is *foreign* (left alone unless `kitt gc --foreign` is asked), and an owner
//!   in another pid namespace of this machine cannot be seen, so it is taken as alive.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::DockerError;
use crate::run::pidfile::{self, Owner};

/// kitt's own container, when kitt runs in one on the daemon it drives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KittContainer {
    pub id: String,
    /// `.State.StartedAt` as the daemon reported it: a restarted container is another life.
    pub started: String,
}

/// The `kitt.owner` label of a container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerOwner {
    #[serde(flatten)]
    pub process: Owner,
    /// `DOCKER_HOST`, `context NAME` or `default`: how the owner reached the daemon (shown in
    /// listings; the same daemon may be reached under several names).
    #[serde(default)]
    pub docker_host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<KittContainer>,
}

/// How the owning kitt addresses the daemon: `--docker-context`, else `DOCKER_HOST`, else
/// `DOCKER_CONTEXT`, else `default` (the CLI's own order).
pub fn docker_host() -> String {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(c) = super::CONTEXT.get() {
        return format!("context {c}");
    }
    env("DOCKER_HOST")
        .or_else(|| env("DOCKER_CONTEXT").map(|c| format!("context {c}")))
        .unwrap_or_else(|| "default".into())
}

/// This process as an owner (computed once: sibling detection asks the daemon).
pub fn current() -> Option<&'static ContainerOwner> {
    static ME: OnceLock<Option<ContainerOwner>> = OnceLock::new();
    ME.get_or_init(|| {
        let process = pidfile::owner_of(std::process::id())?;
        Some(ContainerOwner { process, docker_host: docker_host(), container: own_container() })
    })
    .as_ref()
}

/// The label value for containers this process starts (empty when /proc cannot say who we are).
pub fn label() -> String {
    current().and_then(|o| serde_json::to_string(o).ok()).unwrap_or_default()
}

/// A 64-hex-digit container id right after `marker` somewhere in `text`.
fn id_after(text: &str, marker: &str) -> Option<String> {
    text.match_indices(marker).find_map(|(i, _)| {
        let id: String = text[i + marker.len()..].chars().take_while(|c| c.is_ascii_hexdigit()).collect();
        (id.len() == 64).then_some(id)
    })
}

/// The id of the container this process runs in, as its mounts and cgroups tell: Docker
/// bind-mounts `/etc/hostname` and friends from `<data root>/containers/<id>/`, and names the
/// cgroup `/docker/<id>` (v1) or `docker-<id>.scope` (systemd driver).
fn container_id_from(mountinfo: &str, cgroup: &str) -> Option<String> {
    id_after(mountinfo, "/containers/").or_else(|| id_after(cgroup, "/docker/")).or_else(|| id_after(cgroup, "docker-"))
}

/// kitt's own container, if kitt runs in one that the daemon it drives is running (sibling mode).
/// An id seen in /proc that this daemon does not know (kitt in a container, driving another
/// daemon) is not recorded: nobody could check it later.
fn own_container() -> Option<KittContainer> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let id = container_id_from(&read("/proc/self/mountinfo"), &read("/proc/self/cgroup"))?;
    match container_state(&id) {
        Ok(Some(s)) if s.running => Some(KittContainer { id, started: s.started }),
        _ => None,
    }
}

/// What the daemon says about an owner's container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerState {
    pub running: bool,
    pub started: String,
}

/// The state of container `id`; `None` when the daemon does not have it.
pub fn container_state(id: &str) -> Result<Option<ContainerState>, DockerError> {
    let args: Vec<String> = ["container", "inspect", "--format", "{{.State.Running}} {{.State.StartedAt}}", "--", id]
        .iter()
        .map(|s| s.to_string())
        .collect();
    match super::docker_sync(&args) {
        Ok(text) => {
            let (running, started) = text.split_once(' ').unwrap_or((text.as_str(), ""));
            Ok(Some(ContainerState { running: running == "true", started: started.to_string() }))
        }
        Err(e) if super::no_such(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What the sweep may do with a container, by its owner.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The owner is (or may be) alive: never touched.
    Live,
    /// The owner is certainly gone; why.
    Gone(String),
    /// Owned from another machine, which alone can judge it.
    Foreign,
}

/// Judges `owner`; `inspect` answers for the owner's own container (see [`container_state`]).
pub fn judge(
    owner: &ContainerOwner,
    inspect: &mut dyn FnMut(&str) -> Result<Option<ContainerState>, DockerError>,
) -> Verdict {
    let p = &owner.process;
    if let Some(c) = &owner.container {
        let short = &c.id[..c.id.len().min(12)];
        match inspect(&c.id) {
            Err(_) => return Verdict::Live, // the daemon cannot say: leave it
            Ok(None) => return Verdict::Gone(format!("kitt's container {short} is gone")),
            Ok(Some(s)) if !s.running => return Verdict::Gone(format!("kitt's container {short} has stopped")),
            Ok(Some(s)) if s.started != c.started => {
                return Verdict::Gone(format!("kitt's container {short} was restarted"));
            }
            // It runs: whether kitt still runs in it is for a kitt inside it to tell.
            Ok(Some(_)) if pidfile::foreign(p) || p.pid_ns != pidfile::pid_ns() => return Verdict::Live,
            Ok(Some(_)) => {}
        }
    }
    if pidfile::foreign(p) {
        return Verdict::Foreign;
    }
    if p.boot_id != pidfile::boot_id() {
        return Verdict::Gone("this machine restarted since".into());
    }
    if p.pid_ns != pidfile::pid_ns() {
        return Verdict::Live; // a pid namespace this kitt cannot see into
    }
    if pidfile::still_running(p) { Verdict::Live } else { Verdict::Gone(format!("kitt pid {} is gone", p.pid)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1c2a9b8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a";

    #[test]
    fn finds_its_own_container_id_in_mounts_or_cgroups() {
        let mountinfo = format!(
            "612 590 0:52 / / rw,relatime master:1 - overlay overlay rw\n\
             630 612 254:1 /var/lib/containers/storage/x /etc/x rw - ext4 /dev/vda1 rw\n\
             631 612 254:1 /var/lib/docker/containers/{ID}/hostname /etc/hostname rw - ext4 /dev/vda1 rw\n"
        );
        assert_eq!(container_id_from(&mountinfo, "").as_deref(), Some(ID));
        assert_eq!(container_id_from("", &format!("4:memory:/docker/{ID}\n")).as_deref(), Some(ID));
        assert_eq!(container_id_from("", &format!("0::/system.slice/docker-{ID}.scope\n")).as_deref(), Some(ID));
        // The host itself: nothing that looks like a container.
        assert_eq!(container_id_from("612 590 0:52 / / rw - ext4 /dev/vda1 rw\n", "0::/user.slice\n"), None);
        assert_eq!(container_id_from("/containers/abc/hostname", "/docker/0123"), None, "ids are 64 hex digits");
    }

    fn me() -> ContainerOwner {
        ContainerOwner {
            process: pidfile::owner_of(std::process::id()).unwrap(),
            docker_host: "default".into(),
            container: None,
        }
    }

    fn no_daemon(_: &str) -> Result<Option<ContainerState>, DockerError> {
        panic!("only an owner's container is asked about")
    }

    #[test]
    fn local_owners_are_judged_by_pid_and_others_by_their_machine() {
        let me = me();
        assert_eq!(judge(&me, &mut no_daemon), Verdict::Live);
        let dead = ContainerOwner {
            process: Owner { start_time: me.process.start_time + 1, ..me.process.clone() },
            ..me.clone()
        };
        assert!(matches!(judge(&dead, &mut no_daemon), Verdict::Gone(why) if why.contains("is gone")));
        let rebooted =
            ContainerOwner { process: Owner { boot_id: "earlier-boot".into(), ..me.process.clone() }, ..me.clone() };
        assert!(matches!(judge(&rebooted, &mut no_daemon), Verdict::Gone(_)));
        let other_ns = ContainerOwner {
            process: Owner { pid_ns: "pid:[1]".into(), start_time: 1, ..me.process.clone() },
            ..me.clone()
        };
        assert_eq!(judge(&other_ns, &mut no_daemon), Verdict::Live, "a namespace we cannot see into");
        // Another machine on a shared daemon: even a pid that is dead here, or an earlier boot id,
        // says nothing about it.
        for process in [dead.process.clone(), rebooted.process.clone()] {
            let far =
                ContainerOwner { process: Owner { machine: "far-away-machine-0001".into(), ..process }, ..me.clone() };
            assert_eq!(judge(&far, &mut no_daemon), Verdict::Foreign);
        }
    }

    #[test]
    fn a_containerised_owner_is_judged_by_its_container() {
        let far = Owner { machine: "kitt-in-a-container-01".into(), pid_ns: "pid:[1]".into(), pid: 1, ..me().process };
        let owner = ContainerOwner {
            process: far,
            docker_host: "default".into(),
            container: Some(KittContainer { id: ID.into(), started: "2026-01-01T00:00:00Z".into() }),
        };
        let answer = |state: Option<(bool, &'static str)>| {
            move |id: &str| -> Result<Option<ContainerState>, DockerError> {
                assert_eq!(id, ID);
                Ok(state.map(|(running, started)| ContainerState { running, started: started.into() }))
            }
        };
        assert_eq!(judge(&owner, &mut answer(Some((true, "2026-01-01T00:00:00Z")))), Verdict::Live);
        assert!(matches!(judge(&owner, &mut answer(None)), Verdict::Gone(w) if w.contains("is gone")));
        assert!(
            matches!(judge(&owner, &mut answer(Some((false, "2026-01-01T00:00:00Z")))), Verdict::Gone(w) if w.contains("stopped"))
        );
        assert!(
            matches!(judge(&owner, &mut answer(Some((true, "2026-02-02T00:00:00Z")))), Verdict::Gone(w) if w.contains("restarted"))
        );
        let mut failing = |_: &str| -> Result<Option<ContainerState>, DockerError> {
            Err(DockerError::Failed { command: "container inspect".into(), message: "daemon busy".into(), hint: "" })
        };
        assert_eq!(judge(&owner, &mut failing), Verdict::Live, "no answer is no verdict");
    }

    #[test]
    fn labels_round_trip_and_old_labels_still_parse() {
        let me = me();
        let text = serde_json::to_string(&me).unwrap();
        assert!(text.contains("\"machine\"") && text.contains("\"docker_host\""), "{text}");
        assert_eq!(serde_json::from_str::<ContainerOwner>(&text).unwrap(), me);
        let old = r#"{"pid":7,"boot_id":"b","pid_ns":"pid:[4026531836]","start_time":9}"#;
        let old: ContainerOwner = serde_json::from_str(old).unwrap();
        assert_eq!((old.process.machine.as_str(), old.container), ("", None));
    }
}
