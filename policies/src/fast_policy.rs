//! The `fast` policy kind: an autoregressive VLA that emits FAST action tokens.
//!
//! Per chunk: the prefix graph runs once on the observation (giving the first
//! logits and the cache), then the step graph runs once per token with the cache
//! handed back in (`present.*` -> `past.*`), greedy or seeded temperature sampling,
//! until the end token or `max_tokens`. With `batch = K` the prefix still runs
//! once and K candidates decode from copies of its cache, each with its own
//! sampling stream (for V-GPS). Model ids map to FAST ids
//! (`offset + sign * id`), the FAST codec decodes them (rejecting sequences of the
//! wrong length), and quantile normalization is undone. A rejected sequence is an
//! inference error: the chunk is discarded, the counter goes up, and the executor
//! keeps what it had.

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Instant;

use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorRef};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::any::Any;
use std::sync::Arc;

use reflex_runtime::launch::{Launch, LaunchError};
use reflex_runtime::policy::LoadedPolicy;
use reflex_runtime::registry::{KindTable, LoadError, PolicyKind, PolicySpec, schema_of};

use crate::config::{FastDecode, FastPolicyConfig, MAX_FAST_TOKENS, TokenMap};
use reflex_runtime::policy::{Policy, PolicyError};
use reflex_runtime::types::{ActionChunk, Observation};

use crate::PolicyLoadError;
use crate::chunk::{Port, check_inputs, model_ports, signature_mismatch};
use crate::fast::{DecodeMode, FastCodec};
use crate::normalize::VectorNorm;
use crate::preprocess::InputMapper;

pub struct FastPolicy {
    prefix: Session,
    step: Session,
    mapper: InputMapper,
    codec: FastCodec,
    /// Cache tensor names without their `present.` / `past.` prefix.
    cache: Vec<String>,
    end_token: u32,
    max_tokens: usize,
    token_map: TokenMap,
    temperature: f32,
    /// Candidates per inference.
    batch: usize,
    mode: DecodeMode,
    /// Undoes pi0-FAST's quantile normalization.
    unnormalize: Option<VectorNorm>,
    seed: u64,
    joints: usize,
    pub model_path: PathBuf,
    pub library_path: PathBuf,
    pub warm_up_ms: f64,
    /// `cpu`, `cuda` or `tensorrt` (of the step graph).
    pub provider: &'static str,
}

fn mismatch(
    model: &std::path::Path,
    problems: Vec<String>,
    inputs: &[Port],
    outputs: &[Port],
) -> PolicyLoadError {
    let expected = vec!["    (see [policy.fast] in the README)".into()];
    signature_mismatch(model, problems, expected, inputs, outputs)
}

impl FastPolicy {
    pub fn load(launch: &Launch, cfg: &FastPolicyConfig) -> Result<Self, PolicyLoadError> {
        // Action columns: the joints and the gripper.
        let joints = launch.action_width();
        let (env, library_path) = crate::onnxruntime::environment_for(launch)?;
        let prefix_path = launch.resolve(&cfg.prefix_model);
        let step_path = launch.resolve(&cfg.model);
        let settings = crate::onnxruntime::SessionSettings::from_launch(launch, cfg.intra_threads);
        let prefix = crate::onnxruntime::open_session(&env, &prefix_path, &settings)?.session;
        let opened = crate::onnxruntime::open_session(&env, &step_path, &settings)?;
        let (step, provider) = (opened.session, opened.provider);

        // Prefix: the mapped inputs -> logits + present.*; step: input_ids + past.* -> logits + present.*.
        let (prefix_in, prefix_out) = model_ports(&prefix);
        let mut problems = check_inputs(&cfg.inputs, &prefix_in)
            .err()
            .unwrap_or_default();
        if !prefix_out.iter().any(|p| p.name == "logits") {
            problems.push("prefix output `logits` is missing".into());
        }
        if !problems.is_empty() {
            return Err(mismatch(&prefix_path, problems, &prefix_in, &prefix_out));
        }
        let cache: Vec<String> = prefix_out
            .iter()
            .filter_map(|p| p.name.strip_prefix("present.").map(str::to_string))
            .collect();
        let (step_in, step_out) = model_ports(&step);
        let mut problems = Vec::new();
        match step_in.iter().find(|p| p.name == "input_ids") {
            Some(p) if p.dtype == "int64" => {}
            _ => problems.push("step input `input_ids` (int64 [1, 1]) is missing".into()),
        }
        for name in &cache {
            if !step_in.iter().any(|p| p.name == format!("past.{name}")) {
                problems.push(format!(
                    "step input `past.{name}` (for prefix output `present.{name}`) is missing"
                ));
            }
            if !step_out.iter().any(|p| p.name == format!("present.{name}")) {
                problems.push(format!("step output `present.{name}` is missing"));
            }
        }
        if !step_out.iter().any(|p| p.name == "logits") {
            problems.push("step output `logits` is missing".into());
        }
        if step_in.len() != cache.len() + 1 {
            problems.push(format!(
                "step graph has {} inputs, expected input_ids + {} past.*",
                step_in.len(),
                cache.len()
            ));
        }
        if !problems.is_empty() {
            return Err(mismatch(&step_path, problems, &step_in, &step_out));
        }

        // Reported at the launch file's `tokenizer` field; the message names the
        // file inside the directory and its field.
        let codec = FastCodec::load(&launch.resolve(&cfg.tokenizer)).map_err(|e| {
            PolicyLoadError::Config {
                field: "policy.tokenizer".into(),
                message: e.to_string(),
            }
        })?;
        if codec.config.action_dim != joints {
            return Err(PolicyLoadError::Model {
                path: launch.resolve(&cfg.tokenizer),
                message: format!(
                    "tokenizer action_dim is {}, the robot takes {joints} action columns (joints and gripper)",
                    codec.config.action_dim
                ),
            });
        }
        let mapper = InputMapper::new(&cfg.inputs, &launch.camera_names(), &launch.tensor_names())
            .map_err(PolicyLoadError::WarmUp)?;
        let mut mapper = crate::attach_prompt(launch, mapper, cfg.prompt.as_ref())?;
        let from_stats =
            crate::normalize::norm_stats_for(launch, cfg.norm_stats.as_ref(), joints, &mut mapper)?;
        let mut policy = Self {
            prefix,
            step,
            mapper,
            codec,
            cache,
            end_token: cfg.end_token,
            max_tokens: cfg.max_tokens,
            token_map: cfg.token_map,
            temperature: cfg.temperature,
            batch: cfg.batch,
            mode: match cfg.decode {
                FastDecode::Strict => DecodeMode::Strict,
                FastDecode::PadMissing => DecodeMode::PadMissing,
            },
            unnormalize: cfg
                .quantiles
                .as_ref()
                .map(|q| VectorNorm::Quantile {
                    q01: q.q01.clone(),
                    q99: q.q99.clone(),
                })
                .or(from_stats),
            seed: launch.config.seed,
            joints,
            model_path: step_path,
            library_path,
            warm_up_ms: 0.0,
            provider,
        };
        // Warm up the sessions; the result of a blank observation does not matter.
        let obs = crate::preprocess::blank_observation(launch);
        let started = Instant::now();
        let _ = policy.generate(&obs);
        policy.warm_up_ms = started.elapsed().as_secs_f64() * 1e3;
        Ok(policy)
    }

    /// Picks the next model token from `logits`.
    fn select(&self, logits: &[f32], rng: &mut ChaCha8Rng) -> u32 {
        let argmax = || {
            logits
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &l)| {
                    if l > best.1 { (i, l) } else { best }
                })
                .0
        };
        if self.temperature <= 0.0 {
            return argmax() as u32;
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let weights: Vec<f64> = logits
            .iter()
            .map(|l| f64::from((l - max) / self.temperature).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut pick = rng.random_range(0.0..total.max(f64::MIN_POSITIVE));
        for (i, w) in weights.iter().enumerate() {
            if pick < *w {
                return i as u32;
            }
            pick -= w;
        }
        argmax() as u32
    }

    /// Runs prefix + decoding; returns the FAST ids (end token excluded).
    pub fn generate(&mut self, obs: &Observation) -> Result<Vec<u32>, PolicyError> {
        let (logits, cache) = self.run_prefix(obs)?;
        self.decode(logits, cache, &mut candidate_rng(self.seed, obs.tick, 0))
    }

    /// The prefix on `obs`: its logits and cache.
    fn run_prefix(&mut self, obs: &Observation) -> Result<(Vec<f32>, Vec<DynValue>), PolicyError> {
        self.mapper.fill(obs);
        let mut outputs = self.prefix.run(self.mapper.session_inputs()?)?;
        let logits: Vec<f32> = outputs["logits"].try_extract_tensor::<f32>()?.1.to_vec();
        let mut cache: Vec<DynValue> = Vec::with_capacity(self.cache.len());
        for name in &self.cache {
            cache.push(
                outputs
                    .remove(format!("present.{name}"))
                    .ok_or("prefix lost a cache tensor")?,
            );
        }
        Ok((logits, cache))
    }

    /// Decodes one sequence from the prefix's `logits` and `cache`.
    fn decode(
        &mut self,
        mut logits: Vec<f32>,
        mut cache: Vec<DynValue>,
        rng: &mut ChaCha8Rng,
    ) -> Result<Vec<u32>, PolicyError> {
        let mut ids = Vec::with_capacity(self.max_tokens);
        for _ in 0..self.max_tokens {
            let token = self.select(&logits, rng);
            if token == self.end_token {
                break;
            }
            let fast_id = self.token_map.offset + self.token_map.sign * i64::from(token);
            let fast_id = u32::try_from(fast_id)
                .map_err(|_| format!("model token {token} maps to FAST id {fast_id}"))?;
            ids.push(fast_id);
            let token_input = [i64::from(token)];
            let mut step_inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
                Vec::with_capacity(cache.len() + 1);
            step_inputs.push((
                Cow::from("input_ids"),
                TensorRef::from_array_view(([1usize, 1], &token_input[..]))?.into(),
            ));
            for (name, value) in self.cache.iter().zip(cache.drain(..)) {
                step_inputs.push((Cow::from(format!("past.{name}")), value.into()));
            }
            let mut outputs = self.step.run(step_inputs)?;
            logits.clear();
            logits.extend_from_slice(outputs["logits"].try_extract_tensor::<f32>()?.1);
            for name in &self.cache {
                cache.push(
                    outputs
                        .remove(format!("present.{name}"))
                        .ok_or("step lost a cache tensor")?,
                );
            }
        }
        Ok(ids)
    }

    /// Decoded FAST ids -> unnormalized actions in `out` (`horizon * joints`).
    fn actions(&self, ids: &[u32], out: &mut [f32]) -> Result<(), PolicyError> {
        let actions = self
            .codec
            .decode(ids, self.mode)
            .map_err(|e| format!("invalid FAST sequence ({} tokens): {e}", ids.len()))?;
        for (i, (dst, x)) in out.iter_mut().zip(&actions).enumerate() {
            let j = i % self.joints;
            *dst = match &self.unnormalize {
                Some(n) => n.unnormalize_f64(j, *x) as f32,
                None => *x as f32,
            };
        }
        Ok(())
    }
}

/// Candidate k's sampling stream for the observation at `tick`: candidate 0's is
/// the one a policy without candidates uses.
fn candidate_rng(seed: u64, tick: u64, k: usize) -> ChaCha8Rng {
    let key = seed ^ tick.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rng = ChaCha8Rng::seed_from_u64(key);
    rng.set_stream(k as u64);
    rng
}

/// A copy of a cache tensor (float32, int64 or int32), for another candidate to
/// decode from.
fn copy_cache(value: &DynValue) -> Result<DynValue, PolicyError> {
    fn copy<T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static>(
        value: &DynValue,
    ) -> Option<Result<DynValue, PolicyError>> {
        let (shape, data) = value.try_extract_tensor::<T>().ok()?;
        let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        Some(
            Tensor::from_array((dims, data.to_vec()))
                .map(Tensor::into_dyn)
                .map_err(PolicyError::from),
        )
    }
    copy::<f32>(value)
        .or_else(|| copy::<i64>(value))
        .or_else(|| copy::<i32>(value))
        .unwrap_or_else(|| Err("a cache tensor is not float32, int64 or int32".into()))
}

impl crate::Reported for FastPolicy {
    fn report(&self) -> (PathBuf, PathBuf, f64, &'static str) {
        (
            self.model_path.clone(),
            self.library_path.clone(),
            self.warm_up_ms,
            self.provider,
        )
    }
}

impl Policy for FastPolicy {
    fn set_prompt(&mut self, prompt: &str) -> Result<(), PolicyError> {
        Ok(self.mapper.set_prompt(prompt)?)
    }

    fn horizon(&self) -> usize {
        self.codec.config.time_horizon
    }

    fn action_dim(&self) -> usize {
        self.joints
    }

    fn infer(&mut self, obs: &Observation, out: &mut ActionChunk) -> Result<(), PolicyError> {
        let ids = self.generate(obs)?;
        self.actions(&ids, &mut out.actions)
    }

    fn candidates(&self) -> usize {
        self.batch
    }

    /// The prefix once, then every candidate decoded from a copy of its cache with
    /// its own stream. A candidate whose tokens do not decode is replaced by the
    /// first one that did (so a stage never picks an invalid chunk); the inference
    /// fails only when none decodes.
    fn infer_candidates(
        &mut self,
        obs: &Observation,
        out: &mut reflex_runtime::stage::Candidates,
    ) -> Result<(), PolicyError> {
        let (logits, mut cache) = self.run_prefix(obs)?;
        let per = out.values.len() / self.batch.max(1);
        let mut valid = vec![false; self.batch];
        let mut first_error = None;
        for (k, valid) in valid.iter_mut().enumerate() {
            // The last candidate takes the prefix's own cache.
            let start = match k + 1 == self.batch {
                true => std::mem::take(&mut cache),
                false => cache.iter().map(copy_cache).collect::<Result<_, _>>()?,
            };
            let mut rng = candidate_rng(self.seed, obs.tick, k);
            let decoded = self
                .decode(logits.clone(), start, &mut rng)
                .and_then(|ids| self.actions(&ids, &mut out.values[k * per..(k + 1) * per]));
            match decoded {
                Ok(()) => *valid = true,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let Some(good) = valid.iter().position(|&v| v) else {
            return Err(first_error.unwrap_or_else(|| "no candidate decoded".into()));
        };
        for k in (0..self.batch).filter(|&k| !valid[k]) {
            out.values
                .copy_within(good * per..(good + 1) * per, k * per);
        }
        Ok(())
    }
}

/// Registers `[policy] kind = "fast"`.
pub struct FastKind;

/// A checked `fast` table; the horizon comes from the tokenizer's processor config.
#[derive(Debug)]
pub struct FastSpec {
    pub config: FastPolicyConfig,
    horizon: usize,
}

impl PolicyKind for FastKind {
    fn kind(&self) -> &'static str {
        "fast"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<FastPolicyConfig>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn PolicySpec>, LaunchError> {
        let mut cfg: FastPolicyConfig = table.parse()?;
        let joints = table.launch().action_width();
        crate::config::check_intra_threads(table, cfg.intra_threads)?;
        if !(1..=MAX_FAST_TOKENS).contains(&cfg.max_tokens) {
            return Err(table.error_at("max_tokens", format!("must be in 1..={MAX_FAST_TOKENS}")));
        }
        if !(cfg.temperature.is_finite() && cfg.temperature >= 0.0) {
            return Err(table.error_at("temperature", "must be 0 (greedy) or positive"));
        }
        if !(1..=1024).contains(&cfg.batch) {
            return Err(table.error_at("batch", "must be in 1..=1024"));
        }
        if cfg.batch > 1 && cfg.temperature <= 0.0 {
            return Err(table.error_at(
                "batch",
                format!(
                    "{} candidates need temperature > 0: greedy decoding gives the same \
                     sequence every time",
                    cfg.batch
                ),
            ));
        }
        if cfg.token_map.sign.abs() != 1 {
            return Err(table.error_at("token_map.sign", "must be 1 or -1"));
        }
        if let Some(q) = &cfg.quantiles {
            for (name, values) in [("q01", &q.q01), ("q99", &q.q99)] {
                if values.len() != joints {
                    return Err(table.error_at(
                        &format!("quantiles.{name}"),
                        format!("has {} values, expected {joints}", values.len()),
                    ));
                }
                if let Some((j, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                    return Err(table.error_at(
                        &format!("quantiles.{name}[{j}]"),
                        format!("must be finite, found {v}"),
                    ));
                }
            }
            if let Some(j) = (0..joints).find(|&j| q.q99[j] < q.q01[j]) {
                return Err(table.error_at(
                    &format!("quantiles.q99[{j}]"),
                    format!("{} is below q01[{j}] = {}", q.q99[j], q.q01[j]),
                ));
            }
        }
        crate::config::check_norm_stats(
            table,
            cfg.norm_stats.as_ref(),
            cfg.quantiles.is_some().then_some("quantiles"),
        )?;
        crate::config::check_inputs(table, &mut cfg.inputs, cfg.prompt.as_ref())?;
        crate::check_models(
            table,
            &[("model", &cfg.model), ("prefix_model", &cfg.prefix_model)],
        )?;
        // The tokenizer gives the horizon the execution settings are checked against.
        let codec = FastCodec::load(&table.resolve(&cfg.tokenizer))
            .map_err(|e| table.error_at("tokenizer", e.to_string()))?;
        if codec.config.action_dim != joints {
            return Err(table.error_at(
                "tokenizer",
                format!(
                    "tokenizer action_dim is {}, the robot takes {joints} action columns (joints and gripper)",
                    codec.config.action_dim
                ),
            ));
        }
        Ok(Arc::new(FastSpec {
            horizon: codec.config.time_horizon,
            config: cfg,
        }))
    }
}

impl PolicySpec for FastSpec {
    fn kind(&self) -> &'static str {
        "fast"
    }
    fn horizon(&self) -> usize {
        self.horizon
    }
    fn history(&self) -> usize {
        crate::config::max_history(&self.config.inputs)
    }
    fn candidates(&self) -> usize {
        self.config.batch
    }
    fn model(&self) -> PathBuf {
        self.config.model.clone()
    }
    fn load(&self, launch: &Launch) -> Result<LoadedPolicy, LoadError> {
        FastPolicy::load(launch, &self.config)
            .map(crate::into_loaded)
            .map_err(|e| crate::located(launch, e))
    }
    fn as_any(&self) -> &dyn Any {
        &self.config
    }
}
