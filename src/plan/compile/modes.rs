//! Keys of an engine instance that its mode cannot use, and params it sets that the mode does
//! not send. Each is an error: a value that reaches nothing would still enter the keys and the
//! plan, and a reader of `kitt plan` would believe it was measured.

use super::Compiler;
use crate::catalog::reach::{self, EngineMode};
use crate::manifest::diag::Diagnostic;
use crate::manifest::suite::EngineInstance;
use crate::manifest::template_kind::EngineSpec;
use crate::manifest::yaml::{Node, Value};

impl Compiler<'_> {
    pub(super) fn check_mode_keys(&mut self, inst: &EngineInstance, spec: &EngineSpec) {
        let mode = EngineMode::of(inst, spec);
        let name = &inst.name.value;
        let m = mode.name();
        if mode != EngineMode::Container {
            if let Some(image) = &inst.image {
                self.err(
                    Diagnostic::new(image.pos, format!("engine `{name}` runs in {m} mode, which uses no `image`"))
                        .help("remove `image:`; it is used only when the engine runs as a container"),
                );
            }
            if let Some(pull) = &inst.pull {
                self.err(
                    Diagnostic::new(pull.pos, format!("engine `{name}` runs in {m} mode, which pulls no image"))
                        .help("remove `pull:`; it is used only when the engine runs as a container"),
                );
            }
        }
        if mode == EngineMode::Endpoint
            && let Some((var, v)) = inst.env.iter().next()
        {
            self.err(
                Diagnostic::new(
                    v.pos,
                    format!(
                        "engine `{name}` is an endpoint, which kitt does not start: its `env` ({var}) reaches nothing"
                    ),
                )
                .help("remove `env:`; set the variables where that server is started"),
            );
        }
        let Some(Node { value: Value::Map(entries), .. }) = inst.params.as_ref() else { return };
        let used = reach::uses(spec, mode, Some(inst));
        let overridden = match mode {
            EngineMode::Container => inst.container.as_ref().is_some_and(|c| c.args.is_some()),
            EngineMode::Native => inst.native.as_ref().is_some_and(|n| n.command.is_some()),
            EngineMode::Endpoint => false,
        };
        for (key, _) in entries {
            if !spec.params.contains_key(&key.name) || used.contains(&key.name) {
                continue;
            }
            let why = match (overridden, reach::unused_reason(spec, mode, &key.name)) {
                (true, _) => {
                    let own = if mode == EngineMode::Container { "`container.args`" } else { "`native.command`" };
                    format!("this engine's own {own} does not name it")
                }
                (false, Some(reason)) => reason,
                (false, None) => "no part of that mode names it".to_string(),
            };
            self.err(
                Diagnostic::new(
                    key.pos,
                    format!(
                        "param `{}` of engine template `{}` is not used in {m} mode: {why}",
                        key.name, inst.template.value
                    ),
                )
                .help(format!("remove `{}` from this engine's params, or run it in a mode that sends it", key.name)),
            );
        }
    }
}
