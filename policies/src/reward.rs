//! `[reward_classifier]`: a success classifier (HIL-SERL's reward model) that
//! scores the recorded rows: an ONNX model whose inputs are mapped like
//! `[[policy.inputs]]` (cameras, joint state) and whose output is the probability
//! that the task is done. `[recording] reward = "classifier"` (or `"both"`) uses it;
//! it runs on the dataset recorder's thread, never on the tick.

use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;

use ort::session::Session;
use reflex_runtime::launch::{Launch, LaunchError};
use reflex_runtime::recording::{FrameRow, RewardModel};
use reflex_runtime::registry::{KindTable, SectionKind, schema_of};
use reflex_runtime::types::Observation;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::chunk::{PolicyLoadError, model_ports};
use crate::config::{InputConfig, ObservationSource};
use crate::preprocess::InputMapper;

/// `[reward_classifier]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RewardClassifierConfig {
    /// The ONNX model, relative to the launch file.
    pub model: Option<PathBuf>,
    /// Its inputs, as `[[policy.inputs]]` (cameras must be recorded ones).
    #[serde(default)]
    pub inputs: Vec<InputConfig>,
    /// The output holding the success probability (one value).
    #[serde(default = "default_output")]
    pub output: String,
    /// Success when the probability is above this (HIL-SERL: 0.85).
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    #[serde(default = "default_threads")]
    pub intra_threads: usize,
}

fn default_output() -> String {
    "probability".into()
}
fn default_threshold() -> f64 {
    0.85
}
fn default_threads() -> usize {
    1
}

pub struct RewardClassifierSection;

impl SectionKind for RewardClassifierSection {
    fn section(&self) -> &'static str {
        "reward_classifier"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<RewardClassifierConfig>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn Any + Send + Sync>, LaunchError> {
        let cfg: RewardClassifierConfig = table.parse()?;
        if !(cfg.threshold > 0.0 && cfg.threshold < 1.0) {
            return Err(table.error_at(
                "threshold",
                format!("must be a probability in (0, 1), found {}", cfg.threshold),
            ));
        }
        crate::config::check_intra_threads(table, cfg.intra_threads)?;
        if let Some(model) = &cfg.model {
            crate::check_models(table, &[("model", model)])?;
            if cfg.inputs.is_empty() {
                return Err(table.error_at("inputs", "a classifier needs at least one input"));
            }
        }
        Ok(Arc::new(cfg))
    }
}

/// The launch file's classifier settings (`None` without a model).
pub fn classifier_config(launch: &Launch) -> Option<&RewardClassifierConfig> {
    launch
        .section::<RewardClassifierConfig>("reward_classifier")
        .filter(|c| c.model.is_some())
}

/// The classifier with its session and a preallocated observation.
pub struct OnnxRewardClassifier {
    session: Session,
    mapper: InputMapper,
    output: String,
    obs: Observation,
    /// Per recorded camera (the row's order): its index among the run's cameras.
    cameras: Vec<usize>,
    pub threshold: f64,
}

impl OnnxRewardClassifier {
    /// Loads the model of `[reward_classifier]` and checks its signature;
    /// `recorded` are the run's camera indices the rows carry.
    pub fn load(launch: &Launch, recorded: &[usize]) -> Result<Self, PolicyLoadError> {
        let Some(cfg) = classifier_config(launch) else {
            return Err(PolicyLoadError::WarmUp(
                "[recording] reward uses the classifier, but [reward_classifier] names no model"
                    .into(),
            ));
        };
        let model_path = launch.resolve(cfg.model.as_ref().expect("checked above"));
        let mut inputs = cfg.inputs.clone();
        let names = launch.camera_names();
        for input in &mut inputs {
            if let ObservationSource::Stream { stream, field } = &input.source {
                input.source = crate::config::resolve_stream(launch, stream, field)
                    .map_err(PolicyLoadError::WarmUp)?;
            }
            if let ObservationSource::Camera(name) = &input.source {
                let recorded_names: Vec<&str> =
                    recorded.iter().map(|&i| names[i].as_str()).collect();
                if !recorded_names.contains(&name.as_str()) {
                    return Err(PolicyLoadError::WarmUp(format!(
                        "reward_classifier input `{}` reads camera `{name}`, which is not \
                         recorded (recorded: {})",
                        input.name,
                        recorded_names.join(", ")
                    )));
                }
            }
        }
        let (env, _) = crate::onnxruntime::environment_for(launch)?;
        let settings = crate::onnxruntime::SessionSettings::from_launch(launch, cfg.intra_threads);
        let session = crate::onnxruntime::open_session(&env, &model_path, &settings)?.session;
        let (ports, outputs) = model_ports(&session);
        let mut problems = crate::chunk::check_inputs(&inputs, &ports)
            .err()
            .unwrap_or_default();
        if !outputs.iter().any(|o| o.name == cfg.output) {
            problems.push(format!("no output `{}`", cfg.output));
        }
        if !problems.is_empty() {
            return Err(PolicyLoadError::Signature {
                model: model_path,
                problems,
                expected: inputs
                    .iter()
                    .map(|i| format!("  {} {:?}", i.name, i.shape))
                    .collect(),
                found: ports
                    .iter()
                    .chain(&outputs)
                    .map(|p| format!("  {p}"))
                    .collect(),
            });
        }
        let mapper = InputMapper::new(&inputs, &names, &launch.tensor_names())
            .map_err(PolicyLoadError::WarmUp)?;
        Ok(Self {
            session,
            mapper,
            output: cfg.output.clone(),
            obs: crate::preprocess::blank_observation(launch),
            cameras: recorded.to_vec(),
            threshold: cfg.threshold,
        })
    }
}

impl RewardModel for OnnxRewardClassifier {
    fn success_probability(&mut self, row: &FrameRow) -> Result<f32, String> {
        for (image, &camera) in row.images.iter().zip(&self.cameras) {
            self.obs.images[camera].copy_from(image);
        }
        let joints = self.obs.joints.joints.min(row.width);
        self.obs.joints.position[..joints].copy_from_slice(&row.state[..joints]);
        self.mapper.fill(&self.obs);
        let inputs = self.mapper.session_inputs().map_err(|e| e.to_string())?;
        let outputs = self.session.run(inputs).map_err(|e| e.to_string())?;
        let value = outputs
            .get(&self.output)
            .ok_or_else(|| format!("the classifier produced no `{}`", self.output))?;
        let (_, values) = value
            .try_extract_tensor::<f32>()
            .map_err(|e| e.to_string())?;
        match values {
            [p] if p.is_finite() => Ok(*p),
            [p] => Err(format!("the classifier returned {p}")),
            _ => Err(format!(
                "`{}` has {} values, not one",
                self.output,
                values.len()
            )),
        }
    }

    fn threshold(&self) -> f64 {
        self.threshold
    }
}
