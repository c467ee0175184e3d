//! The `reflex` binary's library half: wiring a launch file into a running control
//! loop (`run`), recording demonstrations (`demos`), and the run summary. Kept in a
//! library so that end-to-end tests can build the same loop the binary runs.

pub mod calibrate;
pub mod demos;
pub mod episode;
pub mod export;
pub mod fast_cli;
pub mod infer;
pub mod model_updates;
pub use reflex_runtime::npy;
pub mod run;
pub mod serve;
pub mod summary;
pub mod transitions;

use std::path::{Path, PathBuf};

use reflex_runtime::launch::{Launch, LaunchError};
use reflex_runtime::policy::LoadedPolicy;
use reflex_runtime::registry::Registry;

/// The launch file of the simulated-arm demo, compiled in as the default.
pub const EMBEDDED_SIM_ARM: &str = include_str!("../launch/sim_arm.toml");

/// Every kind this binary knows: one registration line per crate.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    reflex_drivers::register(&mut registry);
    reflex_cameras::register(&mut registry);
    reflex_policies::register(&mut registry);
    reflex_zenoh::register(&mut registry);
    reflex_teleop::register(&mut registry);
    reflex_openpi::register(&mut registry);
    reflex_remote::register(&mut registry);
    reflex_ros2::register(&mut registry);
    registry
}

/// Loads a launch file, or the embedded default, and prints its warnings once.
pub fn load_launch(path: Option<&PathBuf>, overrides: &[String]) -> anyhow::Result<Launch> {
    let launch = match path {
        Some(path) => Launch::from_file(path, overrides, &registry())?,
        None => embedded_launch(overrides)?,
    };
    for warning in &launch.warnings {
        tracing::warn!("{}: {warning}", launch.origin);
    }
    Ok(launch)
}

/// The compiled-in simulated-arm launch file; its paths resolve against this
/// source tree's `launch/`.
pub fn embedded_launch(overrides: &[String]) -> Result<Launch, LaunchError> {
    Launch::from_text(
        EMBEDDED_SIM_ARM,
        "<embedded launch/sim_arm.toml>",
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/launch")),
        overrides,
        &registry(),
    )
}

/// A launch file from text (tests), with paths relative to `base_dir`.
pub fn launch_from_text(
    text: &str,
    base_dir: &Path,
    overrides: &[&str],
) -> Result<Launch, LaunchError> {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    Launch::from_text(
        text,
        "test.toml",
        base_dir.to_path_buf(),
        &overrides,
        &registry(),
    )
}

/// Loads the launch file's policy; errors about the launch file carry its
/// position.
pub fn load_policy(launch: &Launch) -> anyhow::Result<LoadedPolicy> {
    launch
        .policy()
        .load(launch)
        .map_err(|e| match e.downcast::<LaunchError>() {
            Ok(located) => anyhow::Error::new(*located),
            Err(other) => anyhow::anyhow!(other),
        })
}

/// Loads a `flow` or `diffusion` policy; None for the other kinds.
pub fn load_generative(
    launch: &Launch,
) -> anyhow::Result<Option<reflex_policies::generative::GenerativePolicy>> {
    reflex_policies::generative::load_generative(launch).map_err(|e| {
        match e.downcast::<LaunchError>() {
            Ok(located) => anyhow::Error::new(*located),
            Err(other) => anyhow::anyhow!(other),
        }
    })
}
