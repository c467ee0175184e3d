//! The `reflex` binary's library half: wiring a launch file into a running control
//! loop (`run`), recording demonstrations (`demos`), and the run summary. Kept in a
//! library so that end-to-end tests can build the same loop the binary runs.

pub mod demos;
pub mod fast_cli;
pub mod npy;
pub mod run;
pub mod summary;

use std::path::PathBuf;

use reflex_runtime::launch::Launch;

/// Loads a launch file, or the embedded default.
pub fn load_launch(path: Option<&PathBuf>, overrides: &[String]) -> anyhow::Result<Launch> {
    Ok(match path {
        Some(path) => Launch::from_file(path, overrides)?,
        None => Launch::embedded(overrides)?,
    })
}

/// Loads the launch file's policy; a signature mismatch is reported at the
/// launch file's policy table.
pub fn load_policy(launch: &Launch) -> anyhow::Result<reflex_policies::ChunkPolicy> {
    launch.check_model_exists()?;
    reflex_policies::ChunkPolicy::load(launch).map_err(|e| match e {
        reflex_policies::PolicyLoadError::Signature { .. } => {
            anyhow::Error::new(launch.error_at("policy.chunk.inputs", e.to_string()))
        }
        other => anyhow::Error::new(other),
    })
}
