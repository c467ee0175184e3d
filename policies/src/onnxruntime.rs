//! Finding and loading the ONNX Runtime shared library.
//!
//! reflex links ONNX Runtime at run time (`load-dynamic`), so the same binary runs
//! with the CPU build or `onnxruntime-gpu`. The library is searched in this order:
//! the launch file's `onnxruntime.library`, `$ORT_DYLIB_PATH`, the project's
//! `.venv` (PyPI `onnxruntime` ships `onnxruntime/capi/libonnxruntime.so.*`), then
//! the system library paths. A miss names every place searched. A library named
//! explicitly (launch file or `--onnxruntime`) is used or refused, never replaced by
//! one found elsewhere.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::ep::{self, ExecutionProvider};
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use std::any::Any;
use std::sync::Arc;

use reflex_runtime::launch::{Launch, LaunchError};
use reflex_runtime::registry::{KindTable, SectionKind, schema_of};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::PolicyLoadError;

/// `[onnxruntime]`: which library, execution providers and optimization.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OnnxRuntimeConfig {
    /// Path to libonnxruntime.so; searched for when absent.
    pub library: Option<PathBuf>,
    /// Execution providers in order of preference. One that cannot be registered
    /// (e.g. `cuda` with the CPU build of ONNX Runtime) is skipped with a warning;
    /// the CPU provider always remains as the fallback.
    #[serde(default = "default_providers")]
    pub providers: Vec<ExecutionProviderKind>,
    /// CUDA / TensorRT device.
    #[serde(default)]
    pub device_id: i32,
    /// TensorRT: build FP16 engines.
    #[serde(default)]
    pub tensorrt_fp16: bool,
    /// TensorRT: cache built engines here (relative to the launch file).
    pub tensorrt_cache: Option<PathBuf>,
    /// ONNX Runtime graph optimization level.
    #[serde(default = "default_optimization")]
    pub optimization: OptimizationLevel,
}

impl Default for OnnxRuntimeConfig {
    fn default() -> Self {
        Self {
            library: None,
            providers: default_providers(),
            device_id: 0,
            tensorrt_fp16: false,
            tensorrt_cache: None,
            optimization: default_optimization(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProviderKind {
    Cpu,
    Cuda,
    Tensorrt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OptimizationLevel {
    Disabled,
    Basic,
    Extended,
    All,
}

fn default_providers() -> Vec<ExecutionProviderKind> {
    vec![ExecutionProviderKind::Cpu]
}

fn default_optimization() -> OptimizationLevel {
    OptimizationLevel::All
}

/// Registers the `[onnxruntime]` section.
pub struct OnnxRuntimeSection;

impl SectionKind for OnnxRuntimeSection {
    fn section(&self) -> &'static str {
        "onnxruntime"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<OnnxRuntimeConfig>()
    }

    /// A library named in the launch file must be there: falling back to another
    /// one would run a different ONNX Runtime than the one asked for.
    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn Any + Send + Sync>, LaunchError> {
        let ort: OnnxRuntimeConfig = table.parse()?;
        if let Some(library) = &ort.library {
            let path = table.resolve(library);
            reflex_runtime::files::check_regular(&path, reflex_runtime::files::MAX_MODEL_BYTES)
                .map_err(|e| {
                    let message = match e {
                        reflex_runtime::files::FileError::NotFound { .. } => format!(
                            "ONNX Runtime library not found: {} (remove the field to search \
                             $ORT_DYLIB_PATH, the project's .venv and the system paths)",
                            path.display()
                        ),
                        other => format!("ONNX Runtime library: {other}"),
                    };
                    table.error_at("library", message)
                })?;
        }
        if ort.device_id < 0 {
            return Err(table.error_at(
                "device_id",
                format!("must be 0 or more, found {}", ort.device_id),
            ));
        }
        Ok(Arc::new(ort))
    }
}

/// The launch file's `[onnxruntime]` (its defaults when the section is absent).
pub fn config(launch: &Launch) -> OnnxRuntimeConfig {
    launch
        .section::<OnnxRuntimeConfig>("onnxruntime")
        .cloned()
        .unwrap_or_default()
}

/// Candidate library paths, most preferred first, when none is configured.
pub fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
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

/// The configured library if it is a file (an error if not), else the first
/// candidate that is a file.
pub fn find_library(configured: Option<&Path>) -> Result<PathBuf, PolicyLoadError> {
    if let Some(path) = configured {
        return match reflex_runtime::files::check_regular(
            path,
            reflex_runtime::files::MAX_MODEL_BYTES,
        ) {
            Ok(_) => Ok(path.to_path_buf()),
            Err(e) => Err(PolicyLoadError::LibraryMissing {
                path: path.to_path_buf(),
                reason: e.reason(),
            }),
        };
    }
    let searched = candidates();
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
    let configured = config(launch).library.as_ref().map(|p| launch.resolve(p));
    environment(configured.as_deref()).map_err(|e| match e {
        PolicyLoadError::LibraryMissing { .. } => PolicyLoadError::Config {
            field: "onnxruntime.library".into(),
            message: e.to_string(),
        },
        other => other,
    })
}

/// How sessions are built: the launch file's `[onnxruntime]` plus the policy's threads.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub intra_threads: usize,
    pub providers: Vec<ExecutionProviderKind>,
    pub device_id: i32,
    pub tensorrt_fp16: bool,
    pub tensorrt_cache: Option<PathBuf>,
    pub optimization: OptimizationLevel,
}

impl SessionSettings {
    pub fn from_launch(launch: &Launch, intra_threads: usize) -> Self {
        let ort = config(launch);
        Self {
            intra_threads,
            providers: ort.providers,
            device_id: ort.device_id,
            tensorrt_fp16: ort.tensorrt_fp16,
            tensorrt_cache: ort.tensorrt_cache.as_ref().map(|p| launch.resolve(p)),
            optimization: ort.optimization,
        }
    }

    /// CPU only, full optimization.
    pub fn cpu(intra_threads: usize) -> Self {
        Self {
            intra_threads,
            providers: vec![ExecutionProviderKind::Cpu],
            device_id: 0,
            tensorrt_fp16: false,
            tensorrt_cache: None,
            optimization: OptimizationLevel::All,
        }
    }
}

/// A session and the execution provider it was built with.
pub struct OpenedSession {
    pub session: Session,
    /// `cpu`, `cuda` or `tensorrt`: the first provider that registered.
    pub provider: &'static str,
    /// Why preferred providers were skipped (also logged as warnings).
    pub warnings: Vec<String>,
}

fn provider_name(kind: ExecutionProviderKind) -> &'static str {
    match kind {
        ExecutionProviderKind::Cpu => "cpu",
        ExecutionProviderKind::Cuda => "cuda",
        ExecutionProviderKind::Tensorrt => "tensorrt",
    }
}

/// Builds a session with the preferred execution providers, falling back (with a
/// warning) to the next one and finally to the CPU when a provider is not in this
/// ONNX Runtime build or cannot start (no GPU, missing CUDA libraries).
pub fn open_session(
    env: &ort::environment::Environment,
    path: &Path,
    settings: &SessionSettings,
) -> Result<OpenedSession, PolicyLoadError> {
    let fail = |message: String| PolicyLoadError::Model {
        path: path.to_path_buf(),
        message,
    };
    let level = match settings.optimization {
        OptimizationLevel::Disabled => GraphOptimizationLevel::Disable,
        OptimizationLevel::Basic => GraphOptimizationLevel::Level1,
        OptimizationLevel::Extended => GraphOptimizationLevel::Level2,
        OptimizationLevel::All => GraphOptimizationLevel::All,
    };
    let builder = || -> Result<SessionBuilder, PolicyLoadError> {
        Session::builder(env)
            .map_err(|e| fail(e.to_string()))?
            .with_optimization_level(level)
            .map_err(|e| fail(e.to_string()))?
            .with_intra_threads(settings.intra_threads.max(1))
            .map_err(|e| fail(e.to_string()))
    };
    let mut warnings = Vec::new();
    let mut warn = |message: String| {
        tracing::warn!("{message}");
        warnings.push(message);
    };
    for &kind in &settings.providers {
        let name = provider_name(kind);
        if kind == ExecutionProviderKind::Cpu {
            break;
        }
        let (available, registered) = {
            let mut b = builder()?;
            let outcome = match kind {
                ExecutionProviderKind::Cuda => ep::CUDA::is_available().map(|ok| {
                    (
                        ok,
                        ok.then(|| {
                            ep::CUDA::default()
                                .with_device_id(settings.device_id)
                                .register(&mut b)
                        }),
                    )
                }),
                ExecutionProviderKind::Tensorrt => ep::TensorRT::is_available().map(|ok| {
                    let mut trt = ep::TensorRT::default()
                        .with_device_id(settings.device_id)
                        .with_fp16(settings.tensorrt_fp16);
                    if let Some(cache) = &settings.tensorrt_cache {
                        trt = trt
                            .with_engine_cache(true)
                            .with_engine_cache_path(cache.display());
                    }
                    (ok, ok.then(|| trt.register(&mut b)))
                }),
                ExecutionProviderKind::Cpu => Ok((true, None)),
            };
            match outcome {
                Ok((available, registered)) => (available, registered.map(|r| r.map(|()| b))),
                Err(e) => (false, Some(Err(e))),
            }
        };
        if !available {
            warn(format!(
                "execution provider `{name}` is not in this ONNX Runtime build (the PyPI \
                 `onnxruntime` package is CPU-only; use `onnxruntime-gpu`); trying the next one"
            ));
            continue;
        }
        match registered {
            Some(Ok(mut b)) => match b.commit_from_file(path) {
                Ok(session) => {
                    return Ok(OpenedSession {
                        session,
                        provider: name,
                        warnings,
                    });
                }
                Err(e) => warn(format!(
                    "execution provider `{name}` could not run {}: {e}; trying the next one",
                    path.display()
                )),
            },
            Some(Err(e)) => warn(format!(
                "execution provider `{name}` failed to start: {e}; trying the next one"
            )),
            None => {}
        }
    }
    let session = builder()?
        .commit_from_file(path)
        .map_err(|e| fail(e.to_string()))?;
    Ok(OpenedSession {
        session,
        provider: "cpu",
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_search_lists_every_place() {
        let list = candidates();
        assert!(list.iter().any(|p| p.to_string_lossy().contains(".venv")));
        assert!(list.iter().any(|p| p.starts_with("/usr/lib")));
    }

    #[test]
    fn a_configured_library_is_never_replaced_by_another() {
        // The .venv has a library, yet a missing configured one is an error.
        assert!(find_library(None).is_ok());
        let missing = Path::new("/nonexistent/libonnxruntime.so");
        let err = find_library(Some(missing)).unwrap_err();
        assert!(
            matches!(err, PolicyLoadError::LibraryMissing { .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("/nonexistent/libonnxruntime.so: not found"),
            "{err}"
        );
        let err = find_library(Some(Path::new("/dev/zero"))).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn unavailable_gpu_providers_fall_back_to_cpu_with_a_warning() {
        // The CPU build of ONNX Runtime in .venv has neither CUDA nor TensorRT.
        let (env, _) = environment(None).expect("onnxruntime in .venv");
        let model = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/test/chunk_identity.onnx"
        ));
        let settings = SessionSettings {
            providers: vec![ExecutionProviderKind::Tensorrt, ExecutionProviderKind::Cuda],
            optimization: OptimizationLevel::Basic,
            ..SessionSettings::cpu(1)
        };
        let opened = open_session(&env, model, &settings).expect("CPU fallback");
        if ep::CUDA::is_available().unwrap_or(false) {
            return; // a GPU build: nothing to fall back from
        }
        assert_eq!(opened.provider, "cpu");
        assert_eq!(opened.warnings.len(), 2, "{:?}", opened.warnings);
        assert!(opened.warnings[0].contains("`tensorrt` is not in this ONNX Runtime build"));
        assert!(opened.warnings[1].contains("`cuda`"));
    }

    #[test]
    fn the_project_venv_library_is_found() {
        // make test installs onnxruntime into .venv before running tests.
        let path = find_library(None).expect("libonnxruntime in .venv");
        assert!(path.to_string_lossy().contains("libonnxruntime.so"));
    }
}
