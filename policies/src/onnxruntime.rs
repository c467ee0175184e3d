//! Finding and loading the ONNX Runtime shared library.
//!
//! reflex links ONNX Runtime at run time (`load-dynamic`), so the same binary runs
//! with the CPU build or `onnxruntime-gpu`. The library is searched in this order:
//! the launch file's `onnxruntime.library`, `$ORT_DYLIB_PATH`, the project's
//! `.venv` (PyPI `onnxruntime` ships `onnxruntime/capi/libonnxruntime.so.*`), then
//! the system library paths. A miss names every place searched.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::PolicyLoadError;

/// Candidate library paths, most preferred first, for `configured` (launch file).
pub fn candidates(configured: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(path) = configured {
        out.push(path.to_path_buf());
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        out.push(PathBuf::from(path));
    }
    // The project's .venv: next to the working directory, the executable's
    // ancestors (target/release/reflex -> repo root) and this source tree.
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
    }
    roots.push(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")));
    for root in roots {
        let lib = root.join(".venv/lib");
        let Ok(entries) = std::fs::read_dir(&lib) else {
            out.push(lib.join("python3*/site-packages/onnxruntime/capi/libonnxruntime.so*"));
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|python| python.path().join("site-packages/onnxruntime/capi"))
            .filter_map(|capi| std::fs::read_dir(capi).ok())
            .flat_map(|files| files.flatten().map(|f| f.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libonnxruntime.so"))
            })
            .collect();
        found.sort();
        if found.is_empty() {
            out.push(lib.join("python3*/site-packages/onnxruntime/capi/libonnxruntime.so*"));
        }
        out.extend(found);
    }
    let mut system: Vec<PathBuf> = std::env::var("LD_LIBRARY_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect();
    system.extend(
        [
            "/usr/local/lib",
            "/usr/lib",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
        ]
        .map(PathBuf::from),
    );
    out.extend(system.into_iter().map(|dir| dir.join("libonnxruntime.so")));
    out
}

/// The first candidate that is a file.
pub fn find_library(configured: Option<&Path>) -> Result<PathBuf, PolicyLoadError> {
    let searched = candidates(configured);
    searched
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or(PolicyLoadError::LibraryNotFound { searched })
}

static ENVIRONMENT: OnceLock<Result<(ort::environment::Environment, PathBuf), String>> =
    OnceLock::new();

/// Loads ONNX Runtime once per process; later calls return the same environment.
pub fn environment(
    configured: Option<&Path>,
) -> Result<(ort::environment::Environment, PathBuf), PolicyLoadError> {
    let path = find_library(configured)?;
    let loaded = ENVIRONMENT.get_or_init(|| {
        let env = ort::init_from(&path)
            .map_err(|e| e.to_string())?
            .with_name("reflex")
            .build()
            .map_err(|e| e.to_string())?;
        Ok((env, path.clone()))
    });
    match loaded {
        Ok((env, loaded_from)) => Ok((env.clone(), loaded_from.clone())),
        Err(message) => Err(PolicyLoadError::LibraryLoad {
            path,
            message: message.clone(),
        }),
    }
}

/// The environment for a launch file (its `onnxruntime.library`, or the search).
pub fn environment_for(
    launch: &reflex_runtime::launch::Launch,
) -> Result<(ort::environment::Environment, PathBuf), PolicyLoadError> {
    let configured = launch
        .config
        .onnxruntime
        .library
        .as_ref()
        .map(|p| launch.resolve(p));
    environment(configured.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_path_comes_first_and_misses_list_every_place() {
        let missing = Path::new("/nonexistent/libonnxruntime.so");
        let list = candidates(Some(missing));
        assert_eq!(list[0], missing);
        assert!(list.iter().any(|p| p.to_string_lossy().contains(".venv")));
        assert!(list.iter().any(|p| p.starts_with("/usr/lib")));
    }

    #[test]
    fn the_project_venv_library_is_found() {
        // make test installs onnxruntime into .venv before running tests.
        let path = find_library(None).expect("libonnxruntime in .venv");
        assert!(path.to_string_lossy().contains("libonnxruntime.so"));
    }
}
