//! `[[stages]] kind = "vgps"`: value-guided policy steering (V-GPS, Nakamoto et
//! al. 2024). The policy samples K candidate chunks in one batched call (`batch =
//! K`: distinct seeded noise per candidate; a split flow policy's prefix runs once
//! and is shared by all K); a value model Q(observation, action) scores all K in
//! one batched call, and the chunk with the highest Q runs (`select = "argmax"`) or
//! one drawn from softmax(Q / temperature) with the run's seeded generator.
//!
//! What is scored (`score`): `action`, the first action that will run (V-GPS
//! scores one action; under asynchronous or real-time-chunked execution the
//! first d actions are due before the chunk arrives, so action d), `segment`, the
//! `replan_after` actions from there, or `chunk`, all H. The value model sees the
//! candidates as executed: joint targets (positions, the gripper last),
//! normalized with its own `norm_stats` when given.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;

use ort::memory::Allocator;
use ort::session::{Session, SessionInputValue};
use ort::value::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reflex_runtime::launch::{Launch, LaunchError};
use reflex_runtime::policy::PolicyError;
use reflex_runtime::registry::{KindTable, LoadError, StageKind, StageSpec, schema_of};
use reflex_runtime::stage::{Candidates, ChunkStage};
use reflex_runtime::types::Observation;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::PolicyLoadError;
use crate::chunk::{Port, check_inputs, model_ports, signature_mismatch};
use crate::config::{InputConfig, NormStatsConfig};
use crate::generative::{batch_problems, shape_fits, tiled_input};
use crate::normalize::VectorNorm;
use crate::preprocess::InputMapper;

/// What of each candidate the value model scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scored {
    /// The first action that will run: [K, A].
    #[default]
    Action,
    /// The `replan_after` actions from there: [K, s, A].
    Segment,
    /// The whole chunk: [K, H, A].
    Chunk,
}

/// How the executed candidate is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// The highest Q (the first among equals).
    #[default]
    Argmax,
    /// Drawn from softmax(Q / temperature) with the run's seeded generator.
    Softmax,
}

/// `[[stages]] kind = "vgps"`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValueGuidedConfig {
    /// The value model (ONNX): the mapped observation inputs and the scored
    /// actions, batch K, to `q` [K] (or [K, 1]).
    pub model: PathBuf,
    /// Its observation inputs, as `[[policy.inputs]]` (shapes with batch 1).
    /// A model input with a dynamic (or K) batch gets the observation tiled to
    /// K; one with a static batch of 1 gets it once, shared by all K (the model
    /// broadcasts it, so its observation encoder runs once per chunk).
    pub inputs: Vec<InputConfig>,
    /// Its statistics: the state inputs and the scored actions are normalized
    /// with them.
    pub norm_stats: Option<NormStatsConfig>,
    #[serde(default)]
    pub score: Scored,
    #[serde(default)]
    pub select: Selection,
    /// beta of softmax(Q / beta) (V-GPS: 1).
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// The model's action input and Q output.
    #[serde(default = "default_action_port")]
    pub action_input: String,
    #[serde(default = "default_q_port")]
    pub q_output: String,
    #[serde(default = "default_threads")]
    pub intra_threads: usize,
}

fn default_temperature() -> f64 {
    1.0
}
fn default_action_port() -> String {
    "action".into()
}
fn default_q_port() -> String {
    "q".into()
}
fn default_threads() -> usize {
    1
}

pub struct ValueGuidedKind;

/// A checked `vgps` table and where it stands in the launch file.
#[derive(Debug)]
pub struct ValueGuidedSpec {
    config: ValueGuidedConfig,
    at: String,
}

impl StageKind for ValueGuidedKind {
    fn kind(&self) -> &'static str {
        "vgps"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<ValueGuidedConfig>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn StageSpec>, LaunchError> {
        let mut config: ValueGuidedConfig = table.parse()?;
        if !(config.temperature.is_finite() && config.temperature > 0.0) {
            return Err(table.error_at(
                "temperature",
                format!("must be a positive number, found {}", config.temperature),
            ));
        }
        crate::config::check_intra_threads(table, config.intra_threads)?;
        crate::config::check_inputs(table, &mut config.inputs, None)?;
        crate::check_models(table, &[("model", &config.model)])?;
        crate::config::check_norm_stats(table, config.norm_stats.as_ref(), None)?;
        Ok(Arc::new(ValueGuidedSpec {
            config,
            at: table.at().to_string(),
        }))
    }
}

impl StageSpec for ValueGuidedSpec {
    fn kind(&self) -> &'static str {
        "vgps"
    }

    fn build(&self, launch: &Launch) -> Result<Box<dyn ChunkStage>, LoadError> {
        let stage = ValueGuided::load(launch, &self.config).map_err(|e| {
            let field = match &e {
                PolicyLoadError::Config { field, .. } => format!("{}.{field}", self.at),
                _ => format!("{}.model", self.at),
            };
            let message = match e {
                PolicyLoadError::Config { message, .. } => message,
                other => other.to_string(),
            };
            Box::new(launch.error_at(&field, message)) as LoadError
        })?;
        Ok(Box::new(stage))
    }
}

/// The loaded stage: the value model and its buffers.
pub struct ValueGuided {
    session: Session,
    mapper: InputMapper,
    /// Per mapped input: fed at batch 1 and shared by the candidates (else tiled).
    shared: Vec<bool>,
    actions_norm: Option<VectorNorm>,
    action_input: String,
    q_output: String,
    score: Scored,
    select: Selection,
    temperature: f64,
    /// Actions per candidate the model sees (1, s or H).
    scored_len: usize,
    /// The scored actions, [K, n, A] (or [K, A]), refilled per chunk.
    actions: Tensor<f32>,
    batch: usize,
    width: usize,
    horizon: usize,
    /// False under `synchronous`, whose chunks run from their first action.
    skips_delay: bool,
    ticks_per_action: f64,
    seed: u64,
}

impl ValueGuided {
    pub fn load(launch: &Launch, cfg: &ValueGuidedConfig) -> Result<Self, PolicyLoadError> {
        let c = &launch.config;
        let policy = launch.policy();
        let (batch, horizon, width) = (
            policy.candidates().max(1),
            policy.horizon(),
            launch.action_width(),
        );
        let scored_len = match cfg.score {
            Scored::Action => 1,
            Scored::Segment => c.execution.replan_after.clamp(1, horizon),
            Scored::Chunk => horizon,
        };
        let model_path = launch.resolve(&cfg.model);
        let (env, _) = crate::onnxruntime::environment_for(launch)?;
        let settings = crate::onnxruntime::SessionSettings::from_launch(launch, cfg.intra_threads);
        let session = crate::onnxruntime::open_session(&env, &model_path, &settings)?.session;
        let (inputs, outputs) = model_ports(&session);
        let action_shape: Vec<usize> = match cfg.score {
            Scored::Action => vec![batch, width],
            _ => vec![batch, scored_len, width],
        };
        let observation: Vec<Port> = inputs
            .iter()
            .filter(|p| p.name != cfg.action_input)
            .cloned()
            .collect();
        let mut problems = check_inputs(&cfg.inputs, &observation)
            .err()
            .unwrap_or_default();
        // An observation input of a static batch 1 is fed once, shared by all K
        // candidates (the model broadcasts it: its encoder runs once); the rest
        // are tiled to K.
        let (shared, tiled): (Vec<Port>, Vec<Port>) =
            (observation.iter().cloned()).partition(|p| p.shape.first() == Some(&1));
        problems.extend(batch_problems(&tiled, batch));
        match inputs.iter().find(|p| p.name == cfg.action_input) {
            None => problems.push(format!("input `{}` is not in the model", cfg.action_input)),
            Some(p) if p.dtype != "float32" || !shape_fits(&p.shape, &action_shape) => problems
                .push(format!(
                    "input `{}` is {} {:?}; scoring `{:?}` of {batch} candidates of {width} \
                     values per action needs float32 {action_shape:?}",
                    p.name, p.dtype, p.shape, cfg.score
                )),
            Some(_) => {}
        }
        match outputs.iter().find(|p| p.name == cfg.q_output) {
            None => problems.push(format!("output `{}` is not in the model", cfg.q_output)),
            Some(p)
                if p.dtype != "float32"
                    || !(shape_fits(&p.shape, &[batch]) || shape_fits(&p.shape, &[batch, 1])) =>
            {
                problems.push(format!(
                    "output `{}` is {} {:?}, expected float32 [{batch}] or [{batch}, 1]",
                    p.name, p.dtype, p.shape
                ))
            }
            Some(_) => {}
        }
        if !problems.is_empty() {
            let mut expected: Vec<String> = cfg
                .inputs
                .iter()
                .map(|i| format!("    {}: {:?} (batch {batch})", i.name, i.shape))
                .collect();
            expected.push(format!(
                "    {}: float32 {action_shape:?}",
                cfg.action_input
            ));
            expected.push(format!("    {} (output): float32 [{batch}]", cfg.q_output));
            return Err(signature_mismatch(
                &model_path,
                problems,
                expected,
                &inputs,
                &outputs,
            ));
        }
        let mut mapper =
            InputMapper::new(&cfg.inputs, &launch.camera_names(), &launch.tensor_names())
                .map_err(PolicyLoadError::WarmUp)?;
        let actions_norm = match &cfg.norm_stats {
            Some(stats) => crate::normalize::apply_norm_stats(launch, stats, width, &mut mapper)
                .map_err(|message| PolicyLoadError::Config {
                    field: "norm_stats.file".into(),
                    message,
                })?,
            None => None,
        };
        let actions = Tensor::<f32>::new(&Allocator::default(), action_shape).map_err(|e| {
            PolicyLoadError::Model {
                path: model_path.clone(),
                message: e.to_string(),
            }
        })?;
        let shared = (mapper.inputs.iter())
            .map(|i| shared.iter().any(|p| p.name == i.name))
            .collect();
        Ok(Self {
            session,
            mapper,
            shared,
            actions_norm,
            action_input: cfg.action_input.clone(),
            q_output: cfg.q_output.clone(),
            score: cfg.score,
            select: cfg.select,
            temperature: cfg.temperature,
            scored_len,
            actions,
            batch,
            width,
            horizon,
            skips_delay: launch.executor().strategy != "synchronous",
            ticks_per_action: c.control.rate_hz / c.execution.action_rate_hz,
            seed: c.seed,
        })
    }

    /// The first scored action: the first that will run.
    fn first_scored(&self, obs: &Observation) -> usize {
        let first = match (self.score, self.skips_delay) {
            (Scored::Chunk, _) | (_, false) => 0,
            _ => (obs.expected_delay_ticks as f64 / self.ticks_per_action).ceil() as usize,
        };
        first.min(self.horizon - self.scored_len)
    }

    /// Writes every candidate's scored actions into the model's action input.
    fn fill_actions(&mut self, obs: &Observation, candidates: &Candidates) {
        let first = self.first_scored(obs);
        let (n, width) = (self.scored_len, self.width);
        let out = self.actions.extract_tensor_mut().1;
        for b in 0..self.batch {
            let chunk = candidates.chunk(b.min(candidates.batch - 1));
            let rows = &chunk[first * candidates.dim..(first + n) * candidates.dim];
            for (k, row) in rows.chunks(candidates.dim).enumerate() {
                for (j, &v) in row.iter().enumerate().take(width) {
                    out[(b * n + k) * width + j] = match &self.actions_norm {
                        Some(norm) => norm.normalize(j, v),
                        None => v,
                    };
                }
            }
        }
    }

    /// Q of every candidate into `candidates.scores`.
    fn score(&mut self, obs: &Observation, candidates: &mut Candidates) -> Result<(), PolicyError> {
        self.mapper.fill(obs);
        self.fill_actions(obs, candidates);
        let allocator = Allocator::default();
        let mut feeds: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(self.mapper.inputs.len() + 1);
        for (input, &shared) in self.mapper.inputs.iter().zip(&self.shared) {
            let copies = if shared { 1 } else { self.batch };
            let value = tiled_input(input, copies, &allocator)?;
            feeds.push((Cow::Borrowed(input.name.as_str()), value.into()));
        }
        feeds.push((
            Cow::Borrowed(self.action_input.as_str()),
            SessionInputValue::from(&self.actions),
        ));
        let outputs = self.session.run(feeds)?;
        let q = outputs
            .get(&self.q_output)
            .ok_or_else(|| format!("the value model produced no `{}`", self.q_output))?
            .try_extract_tensor::<f32>()?
            .1;
        if q.len() != candidates.batch {
            return Err(format!(
                "the value model gave {} values for {} candidates",
                q.len(),
                candidates.batch
            )
            .into());
        }
        if let Some(bad) = q.iter().find(|v| !v.is_finite()) {
            return Err(format!("the value model returned {bad}; chunk rejected").into());
        }
        candidates.scores.copy_from_slice(q);
        Ok(())
    }
}

/// softmax(scores / temperature) sampled with `u` in [0, 1): the index whose
/// cumulative probability first exceeds u.
pub fn softmax_choice(scores: &[f32], temperature: f64, u: f64) -> usize {
    let top = scores
        .iter()
        .fold(f64::NEG_INFINITY, |m, &q| m.max(f64::from(q)));
    let weight = |q: f32| ((f64::from(q) - top) / temperature).exp();
    let total: f64 = scores.iter().map(|&q| weight(q)).sum();
    let mut cumulative = 0.0;
    for (k, &q) in scores.iter().enumerate() {
        cumulative += weight(q) / total;
        if u < cumulative {
            return k;
        }
    }
    scores.len() - 1
}

impl ChunkStage for ValueGuided {
    fn steers(&self) -> bool {
        true
    }

    fn apply(&mut self, obs: &Observation, candidates: &mut Candidates) -> Result<(), PolicyError> {
        self.score(obs, candidates)?;
        candidates.scored = true;
        candidates.selected = match self.select {
            Selection::Argmax => candidates.best(),
            Selection::Softmax => {
                // Keyed by (seed, tick): a replayed tick draws the same.
                let mut rng = ChaCha8Rng::seed_from_u64(
                    self.seed ^ 0x5647_5053 ^ obs.tick.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                softmax_choice(&candidates.scores, self.temperature, rng.random::<f64>())
            }
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_choice_follows_the_cumulative_probabilities() {
        // softmax([0, ln 3]) = [0.25, 0.75].
        let scores = [0.0, 3f32.ln()];
        assert_eq!(softmax_choice(&scores, 1.0, 0.0), 0);
        assert_eq!(softmax_choice(&scores, 1.0, 0.249), 0);
        assert_eq!(softmax_choice(&scores, 1.0, 0.251), 1);
        assert_eq!(softmax_choice(&scores, 1.0, 0.999_999), 1);
        // A low temperature is the argmax; a huge one is uniform.
        assert_eq!(softmax_choice(&[1.0, 2.0, 0.5], 1e-3, 0.5), 1);
        assert_eq!(softmax_choice(&[1.0, 2.0, 0.5], 1e9, 0.1), 0);
    }
}
