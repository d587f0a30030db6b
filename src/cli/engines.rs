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
    let scratch = scratch_dir()?;
    let dir = scratch.path();
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
    drop(scratch); // removes the scripts
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

/// A fresh directory for the build scripts, private to this user (mode 0700, an unpredictable
/// name, created exclusively): in a shared `/tmp`, a predictable `kitt-setup-<pid>` could be made
/// beforehand by another user, who would then write the scripts this run executes.
fn scratch_dir() -> Result<tempfile::TempDir, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::Builder::new()
        .prefix("kitt-setup-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .map_err(|e| format!("cannot create a scratch directory in {}: {e}", std::env::temp_dir().display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_scratch_directory_is_private_and_fresh() {
        use std::os::unix::fs::PermissionsExt as _;
        let a = super::scratch_dir().unwrap();
        let b = super::scratch_dir().unwrap();
        assert_ne!(a.path(), b.path());
        assert_eq!(std::fs::metadata(a.path()).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(!a.path().to_string_lossy().ends_with(&std::process::id().to_string()));
        let kept = a.path().to_path_buf();
        drop(a);
        assert!(!kept.exists(), "removed when done");
    }
}
