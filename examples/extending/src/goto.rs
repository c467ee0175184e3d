//! `[policy] kind = "goto"`: moves the arm to `target` (rad) in straight
//! joint-space steps of at most `max_step` per action: a bring-up policy with no
//! model, and the smallest complete example of a policy kind.

use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;

use reflex_runtime::launch::{Launch, LaunchError, MAX_HORIZON};
use reflex_runtime::policy::{LoadedPolicy, Policy, PolicyError};
use reflex_runtime::registry::{KindTable, LoadError, PolicyKind, PolicySpec, schema_of};
use reflex_runtime::stage::Candidates;
use reflex_runtime::types::{ActionChunk, Observation};
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GotoConfig {
    /// The pose to reach, one value per joint, rad.
    pub target: Vec<f64>,
    /// Largest change of a joint between two actions, rad.
    pub max_step: f64,
    /// Actions per chunk.
    pub horizon: usize,
    /// Stream whose images must be present (frame `seq` > 0) before moving: a
    /// camera check for bring-up. Optional.
    #[serde(default)]
    pub wait_for_camera: Option<String>,
    /// Candidate chunks per inference, for `[[stages]]` to choose from: candidate
    /// `b` is the plan shifted by `candidate_spread * (candidates - 1 - b)` rad on
    /// every joint, so only the last one is exact.
    #[serde(default = "one")]
    pub candidates: usize,
    #[serde(default)]
    pub candidate_spread: f64,
}

fn one() -> usize {
    1
}

pub struct GotoKind;

#[derive(Debug)]
pub struct GotoSpec {
    config: GotoConfig,
    camera_index: Option<usize>,
}

impl PolicyKind for GotoKind {
    fn kind(&self) -> &'static str {
        "goto"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<GotoConfig>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn PolicySpec>, LaunchError> {
        let config: GotoConfig = table.parse()?;
        let launch = table.launch();
        let joints = &launch.config.robot.joints;
        if config.target.len() != joints.len() {
            return Err(table.error_at(
                "target",
                format!(
                    "has {} values, the robot has {} joints",
                    config.target.len(),
                    joints.len()
                ),
            ));
        }
        for (j, (value, joint)) in config.target.iter().zip(joints).enumerate() {
            let [lo, hi] = joint.position;
            if !(*value >= lo && *value <= hi) {
                return Err(table.error_at(
                    &format!("target[{j}]"),
                    format!(
                        "{value} is outside joint `{}`'s limits [{lo}, {hi}]",
                        joint.name
                    ),
                ));
            }
        }
        if !(config.max_step.is_finite() && config.max_step > 0.0) {
            return Err(table.error_at("max_step", "must be a positive number of rad"));
        }
        if !(1..=64).contains(&config.candidates) {
            return Err(table.error_at("candidates", "must be in 1..=64"));
        }
        if !(1..=MAX_HORIZON).contains(&config.horizon) {
            return Err(table.error_at("horizon", format!("must be in 1..={MAX_HORIZON}")));
        }
        let camera_index = match &config.wait_for_camera {
            None => None,
            Some(name) => Some(
                launch
                    .camera_names()
                    .iter()
                    .position(|c| c == name)
                    .ok_or_else(|| {
                        table.error_at(
                            "wait_for_camera",
                            format!(
                                "no camera named `{name}`; cameras: {}",
                                launch.camera_names().join(", ")
                            ),
                        )
                    })?,
            ),
        };
        Ok(Arc::new(GotoSpec {
            config,
            camera_index,
        }))
    }
}

impl PolicySpec for GotoSpec {
    fn kind(&self) -> &'static str {
        "goto"
    }
    fn horizon(&self) -> usize {
        self.config.horizon
    }
    fn candidates(&self) -> usize {
        self.config.candidates
    }
    fn model(&self) -> PathBuf {
        PathBuf::from("(no model)")
    }
    fn load(&self, _launch: &Launch) -> Result<LoadedPolicy, LoadError> {
        Ok(LoadedPolicy {
            policy: Box::new(Goto {
                config: self.config.clone(),
                camera_index: self.camera_index,
            }),
            model_path: self.model(),
            library_path: PathBuf::from("(none)"),
            warm_up_ms: 0.0,
            provider: "cpu",
        })
    }
    fn as_any(&self) -> &dyn Any {
        &self.config
    }
}

pub struct Goto {
    config: GotoConfig,
    camera_index: Option<usize>,
}

impl Policy for Goto {
    fn horizon(&self) -> usize {
        self.config.horizon
    }

    fn action_dim(&self) -> usize {
        self.config.target.len()
    }

    fn infer(&mut self, obs: &Observation, out: &mut ActionChunk) -> Result<(), PolicyError> {
        let offset = self.config.candidate_spread * (self.config.candidates - 1) as f64;
        self.plan(obs, offset, &mut out.actions);
        Ok(())
    }

    fn candidates(&self) -> usize {
        self.config.candidates
    }

    fn infer_candidates(
        &mut self,
        obs: &Observation,
        out: &mut Candidates,
    ) -> Result<(), PolicyError> {
        for b in 0..out.batch {
            let offset = self.config.candidate_spread * (out.batch - 1 - b) as f64;
            self.plan(obs, offset, out.chunk_mut(b));
        }
        Ok(())
    }
}

impl Goto {
    /// Straight steps toward the target, shifted by `offset` on every joint.
    fn plan(&self, obs: &Observation, offset: f64, out: &mut [f32]) {
        let joints = self.config.target.len();
        let waiting = self
            .camera_index
            .is_some_and(|i| obs.images.get(i).is_none_or(|image| image.seq == 0));
        let mut pose: Vec<f64> = obs.joints.positions().to_vec();
        for k in 0..self.config.horizon {
            if !waiting {
                for (q, goal) in pose.iter_mut().zip(&self.config.target) {
                    *q += (goal - *q).clamp(-self.config.max_step, self.config.max_step);
                }
            }
            for (slot, q) in out[k * joints..][..joints].iter_mut().zip(&pose) {
                *slot = (*q + offset) as f32;
            }
        }
    }
}
