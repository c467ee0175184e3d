//! The `reflex` binary's library half: wiring a launch file into a running control
//! loop (`run`), recording demonstrations (`demos`), and the run summary. Kept in a
//! library so that end-to-end tests can build the same loop the binary runs.

pub mod calibrate;
pub mod demos;
pub mod fast_cli;
pub mod infer;
pub use reflex_runtime::npy;
pub mod run;
pub mod summary;

use std::path::PathBuf;

use reflex_runtime::launch::Launch;

/// Loads a launch file, or the embedded default, and prints its warnings once.
pub fn load_launch(path: Option<&PathBuf>, overrides: &[String]) -> anyhow::Result<Launch> {
    let launch = match path {
        Some(path) => Launch::from_file(path, overrides)?,
        None => Launch::embedded(overrides)?,
    };
    for warning in &launch.warnings {
        tracing::warn!("{}: {warning}", launch.origin);
    }
    Ok(launch)
}

/// A loaded policy and where it came from.
pub struct LoadedPolicy {
    pub policy: Box<dyn reflex_runtime::policy::Policy>,
    pub model_path: PathBuf,
    pub library_path: PathBuf,
    pub warm_up_ms: f64,
    /// The execution provider the policy runs on (`cpu`, `cuda`, `tensorrt`).
    pub provider: &'static str,
}

/// Loads the launch file's policy; a signature mismatch is reported at the
/// launch file's policy table.
pub fn load_policy(launch: &Launch) -> anyhow::Result<LoadedPolicy> {
    launch.check_model_exists()?;
    let located = |e| located(launch, e);
    if let Some(p) = load_generative(launch)? {
        return Ok(LoadedPolicy {
            model_path: p.model_path.clone(),
            library_path: p.library_path.clone(),
            warm_up_ms: p.warm_up_ms,
            provider: p.provider,
            policy: Box::new(p),
        });
    }
    if let Some(cfg) = &launch.config.policy.fast {
        let p = reflex_policies::fast_policy::FastPolicy::load(launch, cfg).map_err(located)?;
        return Ok(LoadedPolicy {
            model_path: p.model_path.clone(),
            library_path: p.library_path.clone(),
            warm_up_ms: p.warm_up_ms,
            provider: p.provider,
            policy: Box::new(p),
        });
    }
    let p = reflex_policies::ChunkPolicy::load(launch).map_err(located)?;
    Ok(LoadedPolicy {
        model_path: p.model_path.clone(),
        library_path: p.library_path.clone(),
        warm_up_ms: p.warm_up_ms,
        provider: p.provider,
        policy: Box::new(p),
    })
}

/// A signature mismatch is reported at the launch file's policy inputs.
fn located(launch: &Launch, e: reflex_policies::PolicyLoadError) -> anyhow::Error {
    match e {
        reflex_policies::PolicyLoadError::Signature { .. } => anyhow::Error::new(
            launch.error_at(&format!("{}.inputs", launch.policy().table), e.to_string()),
        ),
        reflex_policies::PolicyLoadError::Config { field, message } => {
            anyhow::Error::new(launch.error_at(&field, message))
        }
        other => anyhow::Error::new(other),
    }
}

/// Loads a `flow` or `diffusion` policy; None for the other kinds.
pub fn load_generative(
    launch: &Launch,
) -> anyhow::Result<Option<reflex_policies::generative::GenerativePolicy>> {
    use reflex_policies::generative::GenerativePolicy;
    launch.check_model_exists()?;
    let located = |e| located(launch, e);
    let policy = &launch.config.policy;
    Ok(match (&policy.flow, &policy.diffusion) {
        (Some(cfg), _) => Some(GenerativePolicy::load_flow(launch, cfg).map_err(located)?),
        (None, Some(cfg)) => Some(GenerativePolicy::load_diffusion(launch, cfg).map_err(located)?),
        (None, None) => None,
    })
}
