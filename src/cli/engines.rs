//! `kitt engines setup`: prepare an engine so that a suite can run it.

use std::path::Path;

use super::EXIT_FAILED;
use crate::catalog::Catalog;

/// The image `--local-build` makes for llama_cpp (examples/llama-cpp-cpu.yaml names it).
pub const LLAMA_CPP_LOCAL_IMAGE: &str = "kitt-local/llama.cpp:server-cpu";

/// The build scripts, embedded so an installed kitt can build without the repository.
const SCRIPTS: &[(&str, &str)] = &[
    ("llama-cpp.sh", include_str!("../../scripts/llama-cpp.sh")),
    ("pack-image.sh", include_str!("../../scripts/pack-image.sh")),
    ("tiny-gguf.py", include_str!("../../scripts/tiny-gguf.py")),
];

pub fn setup(name: &str, local_build: bool, link: &Path) -> i32 {
    let catalog = Catalog::builtin();
    let Some(entry) = catalog.engines.get(name) else {
        let help = crate::manifest::diag::unknown_help(name, catalog.engines.keys().map(String::as_str));
        eprintln!("error: unknown engine template `{name}`; {help}");
        return EXIT_FAILED;
    };
    if local_build {
        if name != "llama_cpp" {
            eprintln!(
                "error: `--local-build` builds llama_cpp only; `{name}` images come from their registry (`kitt engines setup {name}` pulls it)"
            );
            return EXIT_FAILED;
        }
        return match build_llama_cpp(link) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {e}");
                EXIT_FAILED
            }
        };
    }
    let Some(image) = entry.manifest.spec.image.clone() else {
        println!("{name} needs no image: it runs as a host process");
        return 0;
    };
    match crate::docker::image_id(&image) {
        Ok(Some(id)) => {
            println!("{name}: image {image} is present ({id})");
            return 0;
        }
        Ok(None) => {}
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    }
    eprintln!("pulling {image} …");
    match crate::docker::docker_sync(&["pull".into(), "--".into(), image.clone()]) {
        Ok(_) => {
            println!("{name}: pulled {image}");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            if name == "llama_cpp" {
                eprintln!(
                    "hint: without a registry, `kitt engines setup llama_cpp --local-build` builds a CPU image here"
                );
            }
            EXIT_FAILED
        }
    }
}

/// Builds llama-server (cached by version under ~/.cache/kitt), a tiny test model, and the local
/// image, with the embedded scripts.
fn build_llama_cpp(link: &Path) -> Result<(), String> {
    let dir = tempfile_dir()?;
    for (file, text) in SCRIPTS {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    eprintln!("building llama.cpp (the first build takes several minutes; later ones reuse the cache) …");
    let status = std::process::Command::new("bash")
        .arg(dir.join("llama-cpp.sh"))
        .arg("--link")
        .arg(link)
        .arg("--image")
        .arg(LLAMA_CPP_LOCAL_IMAGE)
        .status();
    let _ = std::fs::remove_dir_all(&dir);
    match status {
        Ok(s) if s.success() => {
            println!(
                "llama_cpp: image {LLAMA_CPP_LOCAL_IMAGE} is ready; binary and model linked under {}",
                link.display()
            );
            Ok(())
        }
        Ok(s) => Err(format!("the llama.cpp build failed ({s})")),
        Err(e) => Err(format!("cannot run bash: {e}")),
    }
}

fn tempfile_dir() -> Result<std::path::PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("kitt-setup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}
