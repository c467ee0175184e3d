//! The `chunk` policy: an ONNX model mapping observations to an action chunk
//! `[1, H, D]` of absolute joint positions (optionally normalized).
//!
//! At load the model's signature is checked against the launch file, input by
//! input: a missing or extra input, a different element type or a shape that
//! cannot match is an error listing what the launch file expects and what the
//! model has. The first inference runs at load (warm-up), so the first tick that
//! needs a chunk does not pay for ONNX Runtime's lazy initialization.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ort::session::Session;
use ort::value::{TensorElementType, ValueType};
use std::any::Any;
use std::sync::Arc;

use reflex_runtime::launch::{Launch, LaunchError, MAX_HORIZON};
use reflex_runtime::policy::LoadedPolicy;
use reflex_runtime::registry::{KindTable, LoadError, PolicyKind, PolicySpec, schema_of};

use crate::config::{ChunkPolicyConfig, InputConfig, TensorDtype};
use crate::normalize::VectorNorm;
use reflex_runtime::policy::{Policy, PolicyError};
use reflex_runtime::types::{ActionChunk, Observation};

use crate::preprocess::InputMapper;

#[derive(Debug, thiserror::Error)]
pub enum PolicyLoadError {
    #[error(
        "ONNX Runtime library not found; searched:\n{}\nRun `make setup` (installs onnxruntime into .venv), set ORT_DYLIB_PATH, or set onnxruntime.library in the launch file",
        searched.iter().map(|p| format!("  {}", p.display())).collect::<Vec<_>>().join("\n")
    )]
    LibraryNotFound { searched: Vec<PathBuf> },
    #[error(
        "ONNX Runtime library {}: {reason} (it was named explicitly, so no other library is searched for)",
        path.display()
    )]
    LibraryMissing { path: PathBuf, reason: String },
    #[error("cannot load ONNX Runtime from {}: {message}", path.display())]
    LibraryLoad { path: PathBuf, message: String },
    #[error("cannot load model {}: {message}", path.display())]
    Model { path: PathBuf, message: String },
    #[error(
        "model {} does not match the launch file:\n{}\n  expected by the launch file:\n{}\n  found in the model:\n{}",
        model.display(),
        problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"),
        expected.join("\n"),
        found.join("\n")
    )]
    Signature {
        model: PathBuf,
        problems: Vec<String>,
        expected: Vec<String>,
        found: Vec<String>,
    },
    #[error("warm-up inference failed: {0}")]
    WarmUp(String),
    /// A launch-file setting that cannot be used (reported at `field`).
    #[error("field `{field}`: {message}")]
    Config { field: String, message: String },
}

/// A model input or output as the model declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    pub name: String,
    pub dtype: String,
    /// -1 for dynamic or symbolic dimensions.
    pub shape: Vec<i64>,
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "    {}: {} {:?}", self.name, self.dtype, self.shape)
    }
}

fn port(name: &str, dtype: &ValueType) -> Port {
    match dtype {
        ValueType::Tensor { ty, shape, .. } => Port {
            name: name.to_string(),
            dtype: element_name(*ty),
            shape: shape.iter().copied().collect(),
        },
        other => Port {
            name: name.to_string(),
            dtype: other.to_string(),
            shape: Vec::new(),
        },
    }
}

fn element_name(ty: TensorElementType) -> String {
    match ty {
        TensorElementType::Float32 => "float32".into(),
        TensorElementType::Uint8 => "uint8".into(),
        TensorElementType::Bool => "bool".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn dtype_name(dtype: TensorDtype) -> &'static str {
    match dtype {
        TensorDtype::Float32 => "float32",
        TensorDtype::Uint8 => "uint8",
        TensorDtype::Bool => "bool",
        TensorDtype::Int64 => "int64",
    }
}

/// True when a model dimension list accepts `wanted` (model -1 accepts anything).
fn shape_matches(model: &[i64], wanted: &[i64]) -> bool {
    model.len() == wanted.len()
        && model
            .iter()
            .zip(wanted)
            .all(|(m, w)| *m < 0 || *w < 0 || m == w)
}

/// What differs between a model and the launch file, with both sides listed.
#[derive(Debug, Clone, PartialEq)]
pub struct SignatureMismatch {
    pub problems: Vec<String>,
    pub expected: Vec<String>,
    pub found: Vec<String>,
}

/// Compares the model's inputs with the launch file's `[[inputs]]`; returns the problems.
pub fn check_inputs(configured: &[InputConfig], inputs: &[Port]) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    for input in configured {
        match inputs.iter().find(|p| p.name == input.name) {
            None => problems.push(format!("input `{}` is not in the model", input.name)),
            Some(p) if p.dtype != dtype_name(input.dtype) => problems.push(format!(
                "input `{}` is {} in the model, {} in the launch file",
                input.name,
                p.dtype,
                dtype_name(input.dtype)
            )),
            Some(p) if !shape_matches(&p.shape, &input.shape) => problems.push(format!(
                "input `{}` has shape {:?} in the model, {:?} in the launch file",
                input.name, p.shape, input.shape
            )),
            Some(_) => {}
        }
    }
    for p in inputs {
        if !configured.iter().any(|i| i.name == p.name) {
            problems.push(format!(
                "model input `{}` is not mapped by any [[inputs]] entry",
                p.name
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Compares the model's ports with what the launch file maps; returns the problems.
pub fn check_signature(
    cfg: &ChunkPolicyConfig,
    joints: usize,
    inputs: &[Port],
    outputs: &[Port],
) -> Result<(), SignatureMismatch> {
    let mut problems = Vec::new();
    let mut expected: Vec<String> = cfg
        .inputs
        .iter()
        .map(|i| {
            Port {
                name: i.name.clone(),
                dtype: dtype_name(i.dtype).into(),
                shape: i.shape.clone(),
            }
            .to_string()
        })
        .collect();
    let wanted_actions = vec![1, cfg.actions.horizon as i64, joints as i64];
    expected.push(format!(
        "    {} (output): float32 {wanted_actions:?}",
        cfg.actions.output
    ));
    if let Err(found) = check_inputs(&cfg.inputs, inputs) {
        problems.extend(found);
    }
    match outputs.iter().find(|p| p.name == cfg.actions.output) {
        None => problems.push(format!(
            "output `{}` is not in the model",
            cfg.actions.output
        )),
        Some(p) if p.dtype != "float32" => problems.push(format!(
            "output `{}` is {}, expected float32",
            p.name, p.dtype
        )),
        Some(p) if !shape_matches(&p.shape, &wanted_actions) => problems.push(format!(
            "output `{}` has shape {:?}, expected [1, horizon = {}, action columns = {joints}]",
            p.name, p.shape, cfg.actions.horizon
        )),
        Some(_) => {}
    }
    if problems.is_empty() {
        return Ok(());
    }
    let mut found: Vec<String> = inputs.iter().map(Port::to_string).collect();
    found.extend(outputs.iter().map(|p| format!("{p} (output)")));
    Err(SignatureMismatch {
        problems,
        expected,
        found,
    })
}

/// A signature error listing what the launch file expects and all the model's ports.
pub fn signature_mismatch(
    model: &Path,
    problems: Vec<String>,
    expected: Vec<String>,
    inputs: &[Port],
    outputs: &[Port],
) -> PolicyLoadError {
    PolicyLoadError::Signature {
        model: model.to_path_buf(),
        problems,
        expected,
        found: inputs
            .iter()
            .map(Port::to_string)
            .chain(outputs.iter().map(|p| format!("{p} (output)")))
            .collect(),
    }
}

/// Loads a model's declared inputs and outputs.
pub fn model_ports(session: &Session) -> (Vec<Port>, Vec<Port>) {
    (
        session
            .inputs()
            .iter()
            .map(|o| port(o.name(), o.dtype()))
            .collect(),
        session
            .outputs()
            .iter()
            .map(|o| port(o.name(), o.dtype()))
            .collect(),
    )
}

pub struct ChunkPolicy {
    session: Session,
    mapper: InputMapper,
    output: String,
    horizon: usize,
    joints: usize,
    unnormalize: Option<VectorNorm>,
    pub model_path: PathBuf,
    pub library_path: PathBuf,
    pub warm_up_ms: f64,
    /// `cpu`, `cuda` or `tensorrt`.
    pub provider: &'static str,
}

impl ChunkPolicy {
    /// Loads ONNX Runtime and the model, checks the signature and warms up.
    pub fn load(launch: &Launch, cfg: &ChunkPolicyConfig) -> Result<Self, PolicyLoadError> {
        // Action columns: the joints and the gripper.
        let joints = launch.action_width();
        let (env, library_path) = crate::onnxruntime::environment_for(launch)?;
        let model_path = launch.resolve(&cfg.model);
        let settings = crate::onnxruntime::SessionSettings::from_launch(launch, cfg.intra_threads);
        let opened = crate::onnxruntime::open_session(&env, &model_path, &settings)?;
        let (session, provider) = (opened.session, opened.provider);
        let (inputs, outputs) = model_ports(&session);
        check_signature(cfg, joints, &inputs, &outputs).map_err(
            |SignatureMismatch {
                 problems,
                 expected,
                 found,
             }| PolicyLoadError::Signature {
                model: model_path.clone(),
                problems,
                expected,
                found,
            },
        )?;
        let mapper = InputMapper::new(&cfg.inputs, &launch.camera_names(), &launch.tensor_names())
            .map_err(PolicyLoadError::WarmUp)?;
        let mut mapper = crate::attach_prompt(launch, mapper, cfg.prompt.as_ref())?;
        let from_stats =
            crate::normalize::norm_stats_for(launch, cfg.norm_stats.as_ref(), joints, &mut mapper)?;
        let mut policy = Self {
            session,
            mapper,
            output: cfg.actions.output.clone(),
            horizon: cfg.actions.horizon,
            joints,
            unnormalize: cfg
                .actions
                .normalize
                .as_ref()
                .map(VectorNorm::inline)
                .or(from_stats),
            model_path,
            library_path,
            warm_up_ms: 0.0,
            provider,
        };
        policy.warm_up(launch)?;
        Ok(policy)
    }

    fn warm_up(&mut self, launch: &Launch) -> Result<(), PolicyLoadError> {
        let obs = crate::preprocess::blank_observation(launch);
        let mut chunk = ActionChunk::zeros(self.horizon, self.joints);
        let started = Instant::now();
        for _ in 0..3 {
            self.infer(&obs, &mut chunk)
                .map_err(|e| PolicyLoadError::WarmUp(e.to_string()))?;
        }
        self.warm_up_ms = started.elapsed().as_secs_f64() * 1e3 / 3.0;
        Ok(())
    }
}

impl crate::Reported for ChunkPolicy {
    fn report(&self) -> (PathBuf, PathBuf, f64, &'static str) {
        (
            self.model_path.clone(),
            self.library_path.clone(),
            self.warm_up_ms,
            self.provider,
        )
    }
}

impl Policy for ChunkPolicy {
    fn set_prompt(&mut self, prompt: &str) -> Result<(), PolicyError> {
        Ok(self.mapper.set_prompt(prompt)?)
    }

    fn horizon(&self) -> usize {
        self.horizon
    }

    fn action_dim(&self) -> usize {
        self.joints
    }

    fn infer(&mut self, obs: &Observation, out: &mut ActionChunk) -> Result<(), PolicyError> {
        self.mapper.fill(obs);
        let outputs = self.session.run(self.mapper.session_inputs()?)?;
        let actions = outputs
            .get(&self.output)
            .ok_or_else(|| format!("model produced no `{}` output", self.output))?;
        let (_, values) = actions.try_extract_tensor::<f32>()?;
        let expected = self.horizon * self.joints;
        if values.len() != expected {
            return Err(format!(
                "`{}` has {} values, expected {expected}",
                self.output,
                values.len()
            )
            .into());
        }
        for (i, (dst, src)) in out.actions.iter_mut().zip(values).enumerate() {
            *dst = match &self.unnormalize {
                Some(n) => n.unnormalize(i % self.joints, *src),
                None => *src,
            };
        }
        out.horizon = self.horizon;
        out.dim = self.joints;
        Ok(())
    }
}

/// Registers `[policy] kind = "chunk"`.
pub struct ChunkKind;

/// A checked `chunk` table.
#[derive(Debug)]
pub struct ChunkSpec(pub ChunkPolicyConfig);

impl PolicyKind for ChunkKind {
    fn kind(&self) -> &'static str {
        "chunk"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<ChunkPolicyConfig>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn PolicySpec>, LaunchError> {
        let mut cfg: ChunkPolicyConfig = table.parse()?;
        let joints = table.launch().action_width();
        crate::config::check_intra_threads(table, cfg.intra_threads)?;
        if !(1..=MAX_HORIZON).contains(&cfg.actions.horizon) {
            return Err(table.error_at("actions.horizon", format!("must be in 1..={MAX_HORIZON}")));
        }
        if let Some(norm) = &cfg.actions.normalize {
            crate::config::check_normalization(table, norm, joints, "actions.normalize")?;
        }
        crate::config::check_inputs(table, &mut cfg.inputs, cfg.prompt.as_ref())?;
        crate::check_models(table, &[("model", &cfg.model)])?;
        crate::config::check_norm_stats(
            table,
            cfg.norm_stats.as_ref(),
            cfg.actions
                .normalize
                .is_some()
                .then_some("actions.normalize"),
        )?;
        Ok(Arc::new(ChunkSpec(cfg)))
    }
}

impl PolicySpec for ChunkSpec {
    fn kind(&self) -> &'static str {
        "chunk"
    }
    fn horizon(&self) -> usize {
        self.0.actions.horizon
    }
    fn history(&self) -> usize {
        crate::config::max_history(&self.0.inputs)
    }
    fn model(&self) -> PathBuf {
        self.0.model.clone()
    }
    fn load(&self, launch: &Launch) -> Result<LoadedPolicy, LoadError> {
        ChunkPolicy::load(launch, &self.0)
            .map(crate::into_loaded)
            .map_err(|e| crate::located(launch, e))
    }
    fn as_any(&self) -> &dyn Any {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, dtype: &str, shape: &[i64]) -> Port {
        Port {
            name: name.into(),
            dtype: dtype.into(),
            shape: shape.to_vec(),
        }
    }

    /// The demo launch file's `[policy]` table.
    fn config() -> ChunkPolicyConfig {
        let file: toml::Table = toml::from_str(include_str!("../../launch/sim_arm.toml")).unwrap();
        let mut policy = file["policy"].as_table().unwrap().clone();
        assert_eq!(policy.remove("kind").unwrap().as_str(), Some("chunk"));
        policy.try_into().unwrap()
    }

    #[test]
    fn matching_signature_passes_and_dynamic_batch_is_accepted() {
        let inputs = [
            p("image", "float32", &[-1, 3, 32, 32]),
            p("state", "float32", &[-1, 3]),
        ];
        let outputs = [p("actions", "float32", &[-1, 10, 3])];
        assert!(check_signature(&config(), 3, &inputs, &outputs).is_ok());
    }

    #[test]
    fn mismatches_list_expected_and_found() {
        let inputs = [
            p("image", "float32", &[1, 3, 64, 64]),
            p("joint_state", "float32", &[1, 3]),
        ];
        let outputs = [p("actions", "float32", &[1, 10, 4])];
        let SignatureMismatch {
            problems,
            expected,
            found,
        } = check_signature(&config(), 3, &inputs, &outputs).unwrap_err();
        let all = problems.join("\n");
        assert!(all.contains("input `state` is not in the model"), "{all}");
        assert!(all.contains("`joint_state` is not mapped"), "{all}");
        assert!(all.contains("shape [1, 3, 64, 64]"), "{all}");
        assert!(
            all.contains("output `actions` has shape [1, 10, 4]"),
            "{all}"
        );
        assert!(expected.iter().any(|e| e.contains("state: float32 [1, 3]")));
        assert!(found.iter().any(|f| f.contains("joint_state")));
    }
}
