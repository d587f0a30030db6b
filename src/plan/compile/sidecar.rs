//! Engines of a suite with `execution.kubernetes`: each runs as a sidecar container of the pod
//! that runs kitt, started by Kubernetes, not by kitt.
//!
//! A container engine keeps its image, args, env and mounts; a native engine can be a sidecar
//! only when it is kitt itself (the simulator, `{{kitt.exe}} sim …`), which then runs from the
//! kitt image. What a pod cannot express is an error here, at compile time, with the engine's
//! position: a GPU request that is not a count (`auto`, `all`: a pod asks for a number), `docker
//! run` arguments, a host program, a secret with no Secret to read it from.

use std::collections::BTreeMap;

use crate::manifest::diag::Diagnostic;
use crate::manifest::kubernetes::{DEFAULT_ENGINE_PORT, KITT_IN_IMAGE, Kubernetes};
use crate::manifest::secret::SecretOr;
use crate::manifest::suite::{EngineInstance, PullPolicy};
use crate::plan::Mode;
use crate::template::{env_placeholders, placeholder};

/// The sidecar form of `mode` (an engine's container or native mode), or why it has none.
pub(super) fn sidecar(
    mode: Mode,
    k: &Kubernetes,
    default_port: Option<u16>,
    inst: &EngineInstance,
) -> Result<Mode, Diagnostic> {
    let name = &inst.name.value;
    let at = |message: String, help: &str| Diagnostic::new(inst.name.pos, message).help(help.to_string());
    let port = k.engine_port.as_ref().map(|p| p.value).or(default_port).unwrap_or(DEFAULT_ENGINE_PORT);
    // A secret reaches a pod only from a Kubernetes Secret: an env value `{from_env: NAME}`, a
    // secret param (its `{{from_env.NAME}}` placeholder in args or env), an endpoint's header.
    let secrets = |env: &BTreeMap<String, SecretOr>, args: &[String]| -> Result<(), Diagnostic> {
        let from_env = env.values().find_map(|v| match v {
            SecretOr::FromEnv { from_env, .. } => Some(from_env.clone()),
            SecretOr::Plain(p) => env_placeholders(p).next().map(str::to_string),
        });
        let var = from_env.or_else(|| args.iter().find_map(|a| env_placeholders(a).next().map(str::to_string)));
        match var {
            Some(var) if k.secret.is_none() => Err(at(
                format!(
                    "engine `{name}` reads `{var}` from the environment, but a pod has no environment of kitt's to read it from"
                ),
                "name a Kubernetes Secret holding it in `execution.kubernetes.secret` (its key is the variable's name)",
            )),
            _ => Ok(()),
        }
    };
    if let Mode::Endpoint { headers, .. } = &mode {
        secrets(headers, &[])?;
    }
    match mode {
        Mode::Container { image, pull, args, env, mounts, gpus, shm_size, extra_args, network: _ } => {
            let gpus = match gpus.as_str() {
                "none" => 0,
                n if n.bytes().all(|b| b.is_ascii_digit()) && !n.is_empty() => n.parse::<u32>().unwrap_or(u32::MAX),
                d if d.starts_with("device=") => {
                    return Err(at(
                        format!(
                            "engine `{name}` asks for GPUs `{d}`, but a pod asks for a number of GPUs, not devices"
                        ),
                        "write `container: {gpus: \"N\"}` with the number of GPUs the engine needs",
                    ));
                }
                other => {
                    return Err(at(
                        format!("engine `{name}` asks for GPUs `{other}`, but a pod asks for a number of GPUs"),
                        "write `container: {gpus: \"N\"}` (the number the engine needs, such as its tensor parallel size) or `gpus: none`",
                    ));
                }
            };
            if let Some(arg) = extra_args.first() {
                return Err(at(
                    format!("engine `{name}` has `docker run` arguments (`{arg}`), which a pod does not take"),
                    "remove `extra_args`; on Kubernetes the pod's spec is kitt's to write",
                ));
            }
            if let Some(m) = mounts.first() {
                if k.models_claim.is_none() {
                    return Err(at(
                        format!(
                            "engine `{name}` mounts `{}` at `{}`, but a pod sees no host directory",
                            m.source, m.target
                        ),
                        "name the PersistentVolumeClaim holding the model files, as they lie under the suite's directory, in `execution.kubernetes.models_claim`",
                    ));
                }
                if let Some(m) =
                    mounts.iter().find(|m| m.source.starts_with('/') || m.source.split('/').any(|p| p == ".."))
                {
                    return Err(at(
                        format!("engine `{name}` mounts `{}`, which is not a path inside the models claim", m.source),
                        "write the model's `path` relative to the suite's directory, without `..`: the same path inside `models_claim`",
                    ));
                }
            }
            secrets(&env, &args)?;
            Ok(Mode::Sidecar { image, pull, command: Vec::new(), args, env, mounts, gpus, shm_size, port })
        }
        Mode::Native { argv, env, cwd } => {
            let Some((_, rest)) = argv.split_first().filter(|(exe, _)| **exe == placeholder("kitt.exe")) else {
                return Err(at(
                    format!(
                        "engine `{name}` runs a program on the host, but on Kubernetes every engine is a container of the pod"
                    ),
                    "use a template with a `container:` section (or an `endpoint:`), or run this suite without `execution.kubernetes`",
                ));
            };
            if let Some(cwd) = cwd {
                return Err(at(
                    format!("engine `{name}` sets `native.cwd` (`{cwd}`), which a sidecar has no use for"),
                    "remove `cwd`",
                ));
            }
            secrets(&env, rest)?;
            Ok(Mode::Sidecar {
                image: k.image.value.clone(),
                pull: PullPolicy::IfNotPresent,
                command: vec![KITT_IN_IMAGE.to_string()],
                args: rest.to_vec(),
                env,
                mounts: Vec::new(),
                gpus: 0,
                shm_size: None,
                port,
            })
        }
        other => Ok(other),
    }
}
