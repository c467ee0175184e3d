//! reflex-policies: policies on ONNX Runtime.
//!
//! - [`onnxruntime`]: finds and loads `libonnxruntime.so` once per process, and
//!   owns the launch file's `[onnxruntime]` section;
//! - [`config`]: the policy kinds' launch-file tables and their checks;
//! - [`preprocess`]: turns an observation into model inputs (resize, normalize);
//! - [`chunk`]: the `chunk` policy, a model mapping observations to `[1, H, D]`;
//! - [`fast`]: the FAST action-token codec; [`fast_policy`]: the autoregressive `fast` policy;
//! - [`generative`]: the `flow` and `diffusion` policies;
//! - [`prompt`]: a VLA's task instruction as fixed-length `input_ids` / `attention_mask`.
//!
//! Each kind registers itself in [`register`].

pub mod chunk;
pub mod config;
pub mod dsrl;
pub mod fast;
pub mod fast_policy;
pub mod generative;
pub mod inspect;
pub mod normalize;
pub mod onnxruntime;
pub mod preprocess;
pub mod prompt;
pub mod reward;
mod rtc;
pub mod scheduler;
pub mod vgps;

pub use chunk::{ChunkPolicy, PolicyLoadError};

use std::path::{Path, PathBuf};

use reflex_runtime::launch::{Launch, LaunchError};
use reflex_runtime::policy::{LoadedPolicy, Policy};
use reflex_runtime::registry::{KindTable, LoadError, Registry};

/// Registers every policy kind and section of this crate.
pub fn register(registry: &mut Registry) {
    registry.policy(chunk::ChunkKind);
    registry.policy(fast_policy::FastKind);
    registry.policy(generative::FlowKind);
    registry.policy(generative::DiffusionKind);
    registry.stage(vgps::ValueGuidedKind);
    registry.section(onnxruntime::OnnxRuntimeSection);
    registry.section(reward::RewardClassifierSection);
}

/// A load error about the launch file becomes a [`LaunchError`] at its field: a
/// signature mismatch at `policy.inputs`, a bad setting at the setting.
pub(crate) fn located(launch: &Launch, e: PolicyLoadError) -> LoadError {
    match e {
        PolicyLoadError::Signature { .. } => {
            Box::new(launch.error_at("policy.inputs", e.to_string()))
        }
        PolicyLoadError::Config { field, message } => Box::new(launch.error_at(&field, message)),
        other => Box::new(other),
    }
}

/// What a loaded ONNX policy reports about itself: model, library, warm-up ms,
/// execution provider.
pub(crate) trait Reported {
    fn report(&self) -> (PathBuf, PathBuf, f64, &'static str);
}

/// One loaded policy as the binary holds it.
pub(crate) fn into_loaded(policy: impl Policy + Reported + 'static) -> LoadedPolicy {
    let (model_path, library_path, warm_up_ms, provider) = policy.report();
    LoadedPolicy {
        policy: Box::new(policy),
        model_path,
        library_path,
        warm_up_ms,
        provider,
    }
}

/// Gives the mapper the `[policy.prompt]` tokenizer and the launch file's
/// instruction (`[task]`), when the policy has a prompt.
pub(crate) fn attach_prompt(
    launch: &Launch,
    mapper: preprocess::InputMapper,
    prompt: Option<&prompt::PromptConfig>,
) -> Result<preprocess::InputMapper, PolicyLoadError> {
    let Some(prompt) = prompt else {
        return Ok(mapper);
    };
    let resolved = prompt::PromptConfig {
        tokenizer: launch.resolve(&prompt.tokenizer),
        ..prompt.clone()
    };
    let tokenizer =
        prompt::PromptTokenizer::load(&resolved).map_err(|e| PolicyLoadError::Config {
            field: "policy.prompt.tokenizer".into(),
            message: e.to_string(),
        })?;
    mapper
        .with_prompt(tokenizer, &launch.config.task.instruction)
        .map_err(|e| PolicyLoadError::Config {
            field: "task.instruction".into(),
            message: e.to_string(),
        })
}

/// Checks the model files of a policy table exist (at check time, so that
/// `reflex check` catches them).
pub(crate) fn check_models(
    table: &KindTable<'_>,
    files: &[(&str, &Path)],
) -> Result<(), LaunchError> {
    for (field, path) in files {
        table.check_file(
            field,
            path,
            "model file",
            reflex_runtime::files::MAX_MODEL_BYTES,
        )?;
    }
    Ok(())
}
