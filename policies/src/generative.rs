//! The generative policy kinds: `flow` (flow matching, pi0 convention, Euler) and
//! `diffusion` (diffusers' DDIM or DDPM steps, [`crate::scheduler`]).
//!
//! Per chunk: the observation is preprocessed once; in the split flow form the
//! prefix graph runs once and its outputs (e.g. a KV cache) stay bound to the
//! expert graph; then the step graph runs `num_steps` times on the evolving sample
//! `x` [B, H, D]. The step graph's inputs and output are bound once through ONNX
//! Runtime's IO binding to tensors allocated at load, so the loop copies only `x`
//! in and the velocity / noise prediction out (on a GPU, the cache never leaves it).
//!
//! The arithmetic mirrors `policies/export/sampler_reference.py` operation for
//! operation in f32, so reflex and the Python loop agree to rounding.
//!
//! The initial noise comes from a [`NoiseSource`]: [`SeededGaussian`] (standard
//! normal from a generator keyed by (seed, tick)) unless another is set with
//! [`GenerativePolicy::set_noise_source`] (DSRL's latent-noise policy), or given
//! once with [`GenerativePolicy::set_next_noise`] (`reflex infer --noise`). The first of the B sampled
//! chunks is executed; all of them are kept for inspection.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ort::memory::Allocator;
use ort::session::{IoBinding, Session};
use ort::value::{DynValue, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::any::Any;
use std::sync::Arc;

use reflex_runtime::launch::{Launch, LaunchError};
use reflex_runtime::policy::LoadedPolicy;
use reflex_runtime::registry::{KindTable, LoadError, PolicyKind, PolicySpec, schema_of};

use crate::config::{
    DiffusionPolicyConfig, FlowPolicyConfig, GenerativeActions, InputConfig, NormStatsConfig,
    TensorDtype,
};
use crate::prompt::PromptConfig;
use crate::scheduler::SamplerPlan;
use reflex_runtime::policy::{Policy, PolicyError};
use reflex_runtime::types::{ActionChunk, Observation};

use crate::PolicyLoadError;
use crate::chunk::{Port, check_inputs, model_ports, signature_mismatch as mismatch};
use crate::normalize::VectorNorm;
use crate::onnxruntime::{OpenedSession, SessionSettings, open_session};
use crate::preprocess::InputMapper;

enum Sampler {
    /// Euler from t = 1 to t = 0 in `steps` steps.
    Flow { steps: usize },
    /// diffusers' DDIM or DDPM steps.
    Diffusion(SamplerPlan),
}

/// The step graph's time input: flow time (f32) or a diffusion timestep.
enum TimeTensor {
    F32(Tensor<f32>),
    I64(Tensor<i64>),
}

impl TimeTensor {
    fn set(&mut self, t: f32, timestep: i64) {
        match self {
            Self::F32(tensor) => tensor.extract_tensor_mut().1.fill(t),
            Self::I64(tensor) => tensor.extract_tensor_mut().1.fill(timestep),
        }
    }

    fn bind(&self, binding: &mut IoBinding, name: &str) -> ort::Result<()> {
        match self {
            Self::F32(tensor) => binding.bind_input(name, tensor),
            Self::I64(tensor) => binding.bind_input(name, tensor),
        }
    }
}

/// Names of the sampler's ports.
struct Ports {
    noisy_actions: String,
    time: String,
    output: String,
}

/// What differs between the generative kinds' launch tables.
struct Spec<'a> {
    model: &'a Path,
    prefix: Option<&'a Path>,
    intra_threads: usize,
    batch: usize,
    inputs: &'a [InputConfig],
    prompt: Option<&'a PromptConfig>,
    actions: &'a GenerativeActions,
    norm_stats: Option<&'a NormStatsConfig>,
    ports: Ports,
    sampler: Sampler,
    time_dtypes: &'static [&'static str],
    /// Guided real-time chunking: the VJP graph and its cotangent / VJP ports.
    vjp: Option<(&'a Path, String, String)>,
    /// Training-time real-time chunking: the step graph's prefix-mask port.
    prefix_mask: Option<String>,
    /// DSRL's latent-noise policy.
    latent_noise: Option<&'a crate::config::LatentNoiseConfig>,
}

/// Where one inference's time went, ns.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SampleTiming {
    pub total_ns: u64,
    /// Inside ONNX Runtime: the prefix graph and every step-graph run.
    pub graph_ns: u64,
    pub graph_runs: u32,
    /// Observation preprocessing (resize, normalize), once per chunk.
    pub preprocess_ns: u64,
}

impl SampleTiming {
    /// The sampler's own time: everything but preprocessing and ONNX Runtime.
    pub fn sampler_overhead_ns(&self) -> u64 {
        self.total_ns
            .saturating_sub(self.graph_ns)
            .saturating_sub(self.preprocess_ns)
    }
}

pub struct GenerativePolicy {
    prefix: Option<Session>,
    step: Session,
    binding: IoBinding,
    mapper: InputMapper,
    sampler: Sampler,
    x: Tensor<f32>,
    time: TimeTensor,
    ports: Ports,
    batch: usize,
    horizon: usize,
    model_dim: usize,
    joints: usize,
    actions_norm: Option<VectorNorm>,
    noise: Box<dyn NoiseSource>,
    next_noise: Option<Vec<f32>>,
    /// The noise the last inference started from, [B, H, D] (kept when a
    /// latent-noise policy chooses it, for the log).
    initial_noise: Vec<f32>,
    /// The noise stochastic steps add (DDPM, DDIM with eta > 0), one sample per
    /// step, from a generator keyed by (seed, tick) apart from the initial noise's.
    step_noise: Vec<f32>,
    step_noise_seed: u64,
    next_step_noise: Option<Vec<f32>>,
    rebind_each_step: bool,
    /// Guided real-time chunking, with `[execution] strategy = "rtc"`.
    rtc: Option<crate::rtc::RtcGuide>,
    /// Training-time real-time chunking (`mode = "trained"`).
    rtc_prefix: Option<crate::rtc::RtcPrefix>,
    /// The last sample in the model's space, all B chunks: [B, H, D].
    pub last_raw: Vec<f32>,
    /// The last sample as joint targets, all B chunks: [B, H, joints].
    pub last_actions: Vec<f32>,
    /// Where the last inference's time went.
    pub last_timing: SampleTiming,
    /// `cpu`, `cuda` or `tensorrt`.
    pub provider: &'static str,
    pub model_path: PathBuf,
    pub library_path: PathBuf,
    pub warm_up_ms: f64,
}

/// True when a declared batch dimension admits `batch`.
pub(crate) fn batch_fits(dim: i64, batch: usize) -> bool {
    dim < 0 || dim == batch as i64
}

/// True when a declared shape admits `want` (its dynamic dimensions admit any size).
pub(crate) fn shape_fits(shape: &[i64], want: &[usize]) -> bool {
    shape.len() == want.len() && shape.iter().zip(want).all(|(&d, &w)| batch_fits(d, w))
}

impl GenerativePolicy {
    pub fn load_flow(launch: &Launch, cfg: &FlowPolicyConfig) -> Result<Self, PolicyLoadError> {
        Self::load(
            launch,
            Spec {
                model: &cfg.model,
                prefix: cfg.prefix_model.as_deref(),
                intra_threads: cfg.intra_threads,
                batch: cfg.batch,
                inputs: &cfg.inputs,
                prompt: cfg.prompt.as_ref(),
                actions: &cfg.actions,
                norm_stats: cfg.norm_stats.as_ref(),
                ports: Ports {
                    noisy_actions: cfg.ports.noisy_actions.clone(),
                    time: cfg.ports.time.clone(),
                    output: cfg.ports.output.clone(),
                },
                sampler: Sampler::Flow {
                    steps: cfg.num_steps,
                },
                time_dtypes: &["float32"],
                vjp: cfg
                    .vjp_model
                    .as_deref()
                    .map(|p| (p, cfg.ports.cotangent.clone(), cfg.ports.vjp.clone())),
                prefix_mask: Some(cfg.ports.prefix_mask.clone()),
                latent_noise: cfg.latent_noise.as_ref(),
            },
        )
    }

    pub fn load_diffusion(
        launch: &Launch,
        cfg: &DiffusionPolicyConfig,
    ) -> Result<Self, PolicyLoadError> {
        let schedule_error = |message: String| PolicyLoadError::Config {
            field: "policy.schedule".into(),
            message,
        };
        let plan = cfg
            .schedule
            .resolve(cfg.num_steps, |p| launch.resolve(p))
            .and_then(|s| {
                s.plan(cfg.num_steps)
                    .map_err(|e| ("steps_offset".into(), e))
            })
            .map_err(|(field, message)| schedule_error(format!("{field}: {message}")))?;
        if cfg.latent_noise.is_some() && plan.noise_samples() > 0 {
            return Err(PolicyLoadError::Config {
                field: "policy.latent_noise".into(),
                message: "a latent-noise policy steers a sampler whose chunk is a function of \
                          its initial noise: DDIM with eta = 0, not DDPM or eta > 0"
                    .into(),
            });
        }
        Self::load(
            launch,
            Spec {
                model: &cfg.model,
                prefix: cfg.prefix_model.as_deref(),
                intra_threads: cfg.intra_threads,
                batch: cfg.batch,
                inputs: &cfg.inputs,
                prompt: cfg.prompt.as_ref(),
                actions: &cfg.actions,
                norm_stats: cfg.norm_stats.as_ref(),
                ports: Ports {
                    noisy_actions: cfg.ports.noisy_actions.clone(),
                    time: cfg.ports.timestep.clone(),
                    output: cfg.ports.output.clone(),
                },
                sampler: Sampler::Diffusion(plan),
                time_dtypes: &["int64", "float32"],
                vjp: cfg
                    .vjp_model
                    .as_deref()
                    .map(|p| (p, cfg.ports.cotangent.clone(), cfg.ports.vjp.clone())),
                prefix_mask: Some(cfg.ports.prefix_mask.clone()),
                latent_noise: cfg.latent_noise.as_ref(),
            },
        )
    }

    fn load(launch: &Launch, spec: Spec<'_>) -> Result<Self, PolicyLoadError> {
        // Action columns: the joints and the gripper.
        let joints = launch.action_width();
        let (horizon, model_dim, batch) = (
            spec.actions.horizon,
            spec.actions.dim.unwrap_or(joints),
            spec.batch,
        );
        let (env, library_path) = crate::onnxruntime::environment_for(launch)?;
        let settings = SessionSettings::from_launch(launch, spec.intra_threads);
        let rtc_params = reflex_runtime::strategies::RtcParams::of(launch);
        let trained = rtc_params
            .as_ref()
            .is_some_and(|p| p.mode == reflex_runtime::strategies::RtcMode::Trained);
        // The sampler's own ports: the noise, the time, and the prefix mask of a
        // model trained for real-time chunking.
        let prefix_mask = spec.prefix_mask.clone().filter(|_| trained);
        let sampler_port = |name: &str| {
            name == spec.ports.noisy_actions
                || name == spec.ports.time
                || prefix_mask.as_deref() == Some(name)
        };
        let step_path = launch.resolve(spec.model);
        let OpenedSession {
            session: step,
            provider,
            ..
        } = open_session(&env, &step_path, &settings)?;
        let (step_in, step_out) = model_ports(&step);
        let sample_shape = vec![batch as i64, horizon as i64, model_dim as i64];
        let expected = vec![
            format!("    {}: float32 {sample_shape:?}", spec.ports.noisy_actions),
            format!(
                "    {}: {} [{batch}] (or a scalar, or [{batch}, 1])",
                spec.ports.time,
                spec.time_dtypes.join(" or ")
            ),
            format!(
                "    {} (output): float32 {sample_shape:?}",
                spec.ports.output
            ),
        ];

        // Which step inputs come from the observation or the prefix.
        let prefix = match spec.prefix {
            None => {
                let obs_ports: Vec<Port> = step_in
                    .iter()
                    .filter(|p| !sampler_port(&p.name))
                    .cloned()
                    .collect();
                let mut problems = check_inputs(spec.inputs, &obs_ports)
                    .err()
                    .unwrap_or_default();
                problems.extend(batch_problems(&obs_ports, batch));
                if !problems.is_empty() {
                    return Err(mismatch(
                        &step_path, problems, expected, &step_in, &step_out,
                    ));
                }
                None
            }
            Some(prefix_model) => {
                let prefix_path = launch.resolve(prefix_model);
                let prefix = open_session(&env, &prefix_path, &settings)?.session;
                let (prefix_in, prefix_out) = model_ports(&prefix);
                let problems = check_inputs(spec.inputs, &prefix_in)
                    .err()
                    .unwrap_or_default();
                if !problems.is_empty() {
                    return Err(mismatch(
                        &prefix_path,
                        problems,
                        Vec::new(),
                        &prefix_in,
                        &prefix_out,
                    ));
                }
                let mut problems = Vec::new();
                for p in &step_in {
                    let fed = sampler_port(&p.name);
                    if !fed && !prefix_out.iter().any(|o| o.name == p.name) {
                        problems.push(format!(
                            "step input `{}` is neither a prefix output nor `{}` / `{}`",
                            p.name, spec.ports.noisy_actions, spec.ports.time
                        ));
                    }
                }
                for o in &prefix_out {
                    if !step_in.iter().any(|p| p.name == o.name) {
                        problems.push(format!("prefix output `{}` is not a step input", o.name));
                    }
                    if batch > 1 && o.dtype != "float32" {
                        problems.push(format!(
                            "prefix output `{}` is {}; batch > 1 tiles float32 caches only",
                            o.name, o.dtype
                        ));
                    }
                }
                if !problems.is_empty() {
                    return Err(mismatch(
                        &step_path, problems, expected, &step_in, &step_out,
                    ));
                }
                Some(prefix)
            }
        };

        // The sampler's own ports.
        let mut problems = Vec::new();
        let shape_ok = |p: &Port| shape_fits(&p.shape, &[batch, horizon, model_dim]);
        let sample_port = |ports: &[Port], name: &str, what: &str| -> Option<String> {
            match ports.iter().find(|p| p.name == name) {
                None => Some(format!("{what} `{name}` is not in the model")),
                Some(p) if p.dtype != "float32" || !shape_ok(p) => Some(format!(
                    "{what} `{name}` is {} {:?}, expected float32 {sample_shape:?}",
                    p.dtype, p.shape
                )),
                Some(_) => None,
            }
        };
        problems.extend(sample_port(&step_in, &spec.ports.noisy_actions, "input"));
        let time_port = step_in.iter().find(|p| p.name == spec.ports.time);
        let time_rank = match time_port {
            None => {
                problems.push(format!("input `{}` is not in the model", spec.ports.time));
                1
            }
            Some(p) => {
                if !spec.time_dtypes.contains(&p.dtype.as_str()) {
                    problems.push(format!(
                        "input `{}` is {}, expected {}",
                        p.name,
                        p.dtype,
                        spec.time_dtypes.join(" or ")
                    ));
                }
                let rank_ok = match p.shape.as_slice() {
                    [] => batch == 1,
                    [b] => batch_fits(*b, batch),
                    [b, one] => batch_fits(*b, batch) && batch_fits(*one, 1),
                    _ => false,
                };
                if !rank_ok {
                    problems.push(format!(
                        "input `{}` has shape {:?}, expected [{batch}], [{batch}, 1] or a scalar (batch 1)",
                        p.name, p.shape
                    ));
                }
                p.shape.len()
            }
        };
        problems.extend(sample_port(&step_out, &spec.ports.output, "output"));
        if let Some(name) = &prefix_mask {
            match step_in.iter().find(|p| &p.name == name) {
                None => problems.push(format!(
                    "input `{name}` is not in the model: `mode = \"trained\"` real-time chunking \
                     needs a model trained with a prefix mask [{batch}, {horizon}] \
                     (policies/export/train_sim_flow_rtc.py)"
                )),
                Some(p)
                    if p.dtype != "float32"
                        || p.shape.len() != 2
                        || !batch_fits(p.shape[1], horizon) =>
                {
                    problems.push(format!(
                        "input `{name}` is {} {:?}, expected float32 [{batch}, {horizon}]",
                        p.dtype, p.shape
                    ))
                }
                Some(_) => {}
            }
        }
        if !problems.is_empty() {
            return Err(mismatch(
                &step_path, problems, expected, &step_in, &step_out,
            ));
        }

        let mapper = InputMapper::new(spec.inputs, &launch.camera_names(), &launch.tensor_names())
            .map_err(PolicyLoadError::WarmUp)?;
        let mut mapper = crate::attach_prompt(launch, mapper, spec.prompt)?;
        let actions_norm =
            crate::normalize::norm_stats_for(launch, spec.norm_stats, joints, &mut mapper)?;

        let allocator = Allocator::default();
        let tensor_error = |e: ort::Error| PolicyLoadError::Model {
            path: step_path.clone(),
            message: e.to_string(),
        };
        let x =
            Tensor::<f32>::new(&allocator, [batch, horizon, model_dim]).map_err(tensor_error)?;
        let time_shape: Vec<usize> = match time_rank {
            0 => vec![],
            1 => vec![batch],
            _ => vec![batch, 1],
        };
        let time_is_int = time_port.is_some_and(|p| p.dtype == "int64");
        let time = match time_is_int {
            true => {
                TimeTensor::I64(Tensor::<i64>::new(&allocator, time_shape).map_err(tensor_error)?)
            }
            false => {
                TimeTensor::F32(Tensor::<f32>::new(&allocator, time_shape).map_err(tensor_error)?)
            }
        };
        let mut binding = step.create_binding().map_err(tensor_error)?;
        let output =
            Tensor::<f32>::new(&allocator, [batch, horizon, model_dim]).map_err(tensor_error)?;
        binding
            .bind_output(spec.ports.output.as_str(), output)
            .map_err(tensor_error)?;

        time.bind(&mut binding, &spec.ports.time)
            .map_err(tensor_error)?;
        binding
            .bind_input(spec.ports.noisy_actions.as_str(), &x)
            .map_err(tensor_error)?;
        let rtc_prefix = match &prefix_mask {
            Some(name) => {
                let mask =
                    Tensor::<f32>::new(&allocator, [batch, horizon]).map_err(tensor_error)?;
                binding
                    .bind_input(name.as_str(), &mask)
                    .map_err(tensor_error)?;
                Some(crate::rtc::RtcPrefix::new(
                    launch, name, mask, batch, horizon, model_dim,
                ))
            }
            None => None,
        };
        let rtc = match (rtc_params.filter(|_| !trained), &spec.vjp) {
            (Some(params), Some((vjp_model, cotangent, vjp))) => {
                let path = launch.resolve(vjp_model);
                let session = open_session(&env, &path, &settings)?.session;
                let step_inputs: Vec<Port> = (step_in.iter())
                    .filter(|p| !sampler_port(&p.name))
                    .cloned()
                    .collect();
                let ports = crate::rtc::VjpPorts {
                    noisy_actions: &spec.ports.noisy_actions,
                    time: &spec.ports.time,
                    output: &spec.ports.output,
                    cotangent,
                    vjp,
                };
                let mut guide = crate::rtc::RtcGuide::load(
                    launch,
                    params,
                    session,
                    &path,
                    &step_inputs,
                    &ports,
                    batch,
                    horizon,
                    model_dim,
                )?;
                let bind_error = |e: ort::Error| PolicyLoadError::Model {
                    path: path.clone(),
                    message: e.to_string(),
                };
                time.bind(&mut guide.binding, &spec.ports.time)
                    .map_err(bind_error)?;
                guide
                    .binding
                    .bind_input(spec.ports.noisy_actions.as_str(), &x)
                    .map_err(bind_error)?;
                Some(guide)
            }
            _ => None,
        };
        let step_noise_samples = match &spec.sampler {
            Sampler::Diffusion(plan) => plan.noise_samples(),
            Sampler::Flow { .. } => 0,
        };
        let mut policy = Self {
            prefix,
            step,
            binding,
            mapper,
            sampler: spec.sampler,
            x,
            time,
            ports: spec.ports,
            batch,
            horizon,
            model_dim,
            joints,
            actions_norm,
            noise: Box::new(SeededGaussian {
                seed: launch.config.seed,
            }),
            next_noise: None,
            initial_noise: Vec::new(),
            step_noise: vec![0.0; step_noise_samples * batch * horizon * model_dim],
            step_noise_seed: launch.config.seed ^ 0x57E9_5E0D_57E9_5E0D,
            next_step_noise: None,
            rebind_each_step: provider != "cpu",
            rtc,
            rtc_prefix,
            last_raw: vec![0.0; batch * horizon * model_dim],
            last_actions: vec![0.0; batch * horizon * joints],
            last_timing: SampleTiming::default(),
            provider,
            model_path: step_path,
            library_path,
            warm_up_ms: 0.0,
        };
        if let Some(cfg) = spec.latent_noise {
            let prefix_ports = policy.prefix.as_ref().map(|p| model_ports(p).1);
            let latent = crate::dsrl::LatentNoise::load(
                launch,
                cfg,
                horizon,
                model_dim,
                prefix_ports.as_deref().unwrap_or(&[]),
            )?;
            policy.set_noise_source(Box::new(latent));
        }
        // Warm-up: ONNX Runtime initializes lazily; let the first real tick pay nothing.
        let obs = crate::preprocess::blank_observation(launch);
        let mut chunk = ActionChunk::zeros(horizon, joints);
        let started = Instant::now();
        for _ in 0..2 {
            if let Err(e) = policy.infer(&obs, &mut chunk) {
                // A model that produces NaN is still loadable (its chunks get
                // rejected); a model that cannot run is not.
                if !e.to_string().contains("NaN") {
                    return Err(PolicyLoadError::WarmUp(e.to_string()));
                }
            }
        }
        policy.warm_up_ms = started.elapsed().as_secs_f64() * 1e3 / 2.0;
        Ok(policy)
    }

    /// The model inputs as last filled (after preprocessing and normalization).
    pub fn model_inputs(&self) -> &[crate::preprocess::MappedInput] {
        &self.mapper.inputs
    }

    pub fn horizon(&self) -> usize {
        self.horizon
    }

    /// Values per sample: B * H * D.
    pub fn noise_len(&self) -> usize {
        self.batch * self.horizon * self.model_dim
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    pub fn model_dim(&self) -> usize {
        self.model_dim
    }

    /// Values of step noise per chunk (0 for deterministic samplers).
    pub fn step_noise_len(&self) -> usize {
        self.step_noise.len()
    }

    /// The next inference starts from `noise` ([B, H, D], row-major) instead of the
    /// seeded generator.
    pub fn set_next_noise(&mut self, mut noise: Vec<f32>) -> Result<(), String> {
        let (initial, steps) = (self.noise_len(), self.step_noise_len());
        if noise.len() != initial && noise.len() != initial + steps {
            return Err(format!(
                "noise has {} values, expected B x H x D = {} x {} x {} = {initial}{}",
                noise.len(),
                self.batch,
                self.horizon,
                self.model_dim,
                if steps > 0 {
                    format!(", or that plus one sample per step ({})", initial + steps)
                } else {
                    String::new()
                }
            ));
        }
        self.next_step_noise = (noise.len() > initial).then(|| noise.split_off(initial));
        self.next_noise = Some(noise);
        Ok(())
    }

    /// Binds what stays constant during one chunk: the observation tensors (single
    /// form) or the prefix graph's outputs, tiled to the batch.
    fn bind_conditioning(&mut self, obs: &Observation) -> Result<(), PolicyError> {
        let started = Instant::now();
        self.mapper.fill(obs);
        self.last_timing.preprocess_ns = started.elapsed().as_nanos() as u64;
        let allocator = Allocator::default();
        match &mut self.prefix {
            Some(prefix) => {
                let started = Instant::now();
                let mut outputs = prefix.run(self.mapper.session_inputs()?)?;
                self.last_timing.graph_ns += started.elapsed().as_nanos() as u64;
                self.last_timing.graph_runs += 1;
                let names: Vec<String> = outputs.keys().map(str::to_string).collect();
                for name in names {
                    let value = outputs.remove(&name).ok_or("prefix output vanished")?;
                    if self.noise.prefix_outputs().contains(&name) {
                        self.noise.take_prefix_output(&name, &value)?;
                    }
                    let value = tile(value, self.batch, &allocator)?;
                    bind_conditioning_input(&mut self.binding, self.rtc.as_mut(), &name, &value)?;
                }
            }
            None => {
                for input in &self.mapper.inputs {
                    let value = tiled_input(input, self.batch, &allocator)?;
                    bind_conditioning_input(
                        &mut self.binding,
                        self.rtc.as_mut(),
                        &input.name,
                        &value,
                    )?;
                }
            }
        }
        Ok(())
    }

    fn fill_noise(&mut self, obs: &Observation) -> Result<(), PolicyError> {
        match self.next_step_noise.take() {
            Some(noise) => self.step_noise.copy_from_slice(&noise),
            None if !self.step_noise.is_empty() => {
                SeededGaussian {
                    seed: self.step_noise_seed,
                }
                .fill(obs, &mut self.step_noise)?;
            }
            None => {}
        }
        let x = self.x.extract_tensor_mut().1;
        if let Some(noise) = self.next_noise.take() {
            x.copy_from_slice(&noise);
        } else {
            self.noise.fill(obs, x)?;
            if x.iter().any(|v| !v.is_finite()) {
                return Err("the noise source gave NaN or infinite noise".into());
            }
        }
        if self.noise.chooses_noise() {
            // Sized once: the buffer keeps its capacity.
            self.initial_noise.clear();
            self.initial_noise.extend_from_slice(x);
        }
        Ok(())
    }

    /// Where every later chunk's initial noise comes from.
    pub fn set_noise_source(&mut self, source: Box<dyn NoiseSource>) {
        self.noise = source;
    }

    /// One step-graph run on the current `x` and time; applies `update(x, out)`.
    fn step(
        &mut self,
        t: f32,
        timestep: i64,
        mut update: impl FnMut(&mut [f32], &[f32]),
    ) -> Result<bool, PolicyError> {
        self.time.set(t, timestep);
        // On the CPU the bound tensors are the session's inputs (no copy), so
        // writing them is enough; a GPU needs the new values copied over.
        if self.rebind_each_step {
            self.time.bind(&mut self.binding, &self.ports.time)?;
            self.binding
                .bind_input(self.ports.noisy_actions.as_str(), &self.x)?;
        }
        let started = Instant::now();
        let outputs = self.step.run_binding(&self.binding)?;
        self.last_timing.graph_ns += started.elapsed().as_nanos() as u64;
        self.last_timing.graph_runs += 1;
        let out = outputs[self.ports.output.as_str()]
            .try_extract_tensor::<f32>()?
            .1;
        let finite = out.iter().all(|v| v.is_finite());
        update(self.x.extract_tensor_mut().1, out);
        Ok(finite)
    }

    /// One step-graph run guided toward the previous plan (see [`crate::rtc`]):
    /// the network's output, then the VJP graph on the weighted gap between the
    /// step's clean-sample estimate and the plan. The guided output is left in
    /// the guide's `output` for the sampler's update.
    fn guided_output(
        &mut self,
        t: f32,
        timestep: i64,
        denoiser: crate::rtc::Denoiser,
    ) -> Result<bool, PolicyError> {
        let Some(guide) = self.rtc.as_mut() else {
            return Err("guided step without real-time chunking".into());
        };
        let mut output = std::mem::take(&mut guide.output);
        let finite = self.step(t, timestep, |_, m| output.copy_from_slice(m));
        let Some(guide) = self.rtc.as_mut() else {
            return Err("guided step without real-time chunking".into());
        };
        guide.output = output;
        let finite = finite?;
        if self.rebind_each_step {
            self.time.bind(&mut guide.binding, &self.ports.time)?;
            guide
                .binding
                .bind_input(self.ports.noisy_actions.as_str(), &self.x)?;
        }
        guide.fill_cotangent(self.x.extract_tensor().1, denoiser);
        if self.rebind_each_step {
            guide
                .binding
                .bind_input(guide.cotangent_port.as_str(), &guide.cotangent)?;
        }
        let guided = guide.guide(denoiser, &mut self.last_timing.graph_ns)?;
        self.last_timing.graph_runs += 1;
        Ok(finite && guided)
    }

    /// Writes the frozen prefix of training-time real-time chunking into `x`.
    fn impose_prefix(&mut self, frozen: usize) {
        if frozen > 0
            && let Some(prefix) = &self.rtc_prefix
        {
            prefix.impose(self.x.extract_tensor_mut().1);
        }
    }

    /// Samples B chunks for `obs` into [`Self::last_raw`] / [`Self::last_actions`].
    pub fn sample(&mut self, obs: &Observation) -> Result<(), PolicyError> {
        let started = Instant::now();
        self.last_timing = SampleTiming::default();
        let result = self.sample_inner(obs);
        self.last_timing.total_ns = started.elapsed().as_nanos() as u64;
        result
    }

    fn sample_inner(&mut self, obs: &Observation) -> Result<(), PolicyError> {
        self.bind_conditioning(obs)?;
        self.fill_noise(obs)?;
        let mut bad_step = None;
        // Real-time chunking: the plan this chunk continues, when there is one.
        let guided = match &mut self.rtc {
            Some(guide) => guide.prepare(obs, self.actions_norm.as_ref()),
            None => false,
        };
        let rtc_params = self.rtc.as_ref().map(|g| g.params.clone());
        let frozen = match &mut self.rtc_prefix {
            Some(prefix) => {
                let frozen = prefix.prepare(obs, self.actions_norm.as_ref());
                if self.rebind_each_step {
                    self.binding
                        .bind_input(prefix.port.as_str(), &prefix.mask)?;
                }
                frozen
            }
            None => 0,
        };
        match &self.sampler {
            Sampler::Flow { steps } => {
                let dt = (-1.0 / *steps as f64) as f32;
                let mut t = 1.0f32;
                let mut k = 0;
                // openpi's loop condition; float rounding decides the last step the same way.
                while t >= -dt / 2.0 {
                    self.impose_prefix(frozen);
                    let finite = match (&rtc_params, guided) {
                        (Some(params), true) => {
                            let finite =
                                self.guided_output(t, 0, crate::rtc::Denoiser::flow(params, t))?;
                            if let Some(guide) = &self.rtc {
                                let x = self.x.extract_tensor_mut().1;
                                for (x, v) in x.iter_mut().zip(&guide.output) {
                                    *x += dt * v;
                                }
                            }
                            finite
                        }
                        _ => self.step(t, 0, |x, v| {
                            for (x, v) in x.iter_mut().zip(v) {
                                *x += dt * v;
                            }
                        })?,
                    };
                    if !finite && bad_step.is_none() {
                        bad_step = Some(k);
                    }
                    t += dt;
                    k += 1;
                }
            }
            Sampler::Diffusion(plan) => {
                let plan = plan.clone(); // shared steps: no allocation
                // Step k adds the k-th sample of the step noise (when it adds any).
                let noise = std::mem::take(&mut self.step_noise);
                let per_step = self.noise_len();
                let mut result = Ok(());
                for (k, step) in plan.steps.iter().enumerate() {
                    let z = noise.get(k * per_step..(k + 1) * per_step).unwrap_or(&[]);
                    self.impose_prefix(frozen);
                    let time = step.timestep as f32;
                    let ran = match (&rtc_params, guided) {
                        (Some(params), true) => {
                            let denoiser = crate::rtc::Denoiser::diffusion(params, step);
                            let ran = self.guided_output(time, step.timestep, denoiser);
                            if let Some(guide) = &self.rtc {
                                step.apply(
                                    plan.clip,
                                    self.x.extract_tensor_mut().1,
                                    &guide.output,
                                    z,
                                );
                            }
                            ran
                        }
                        _ => self.step(time, step.timestep, |x, m| step.apply(plan.clip, x, m, z)),
                    };
                    match ran {
                        Ok(finite) => {
                            if !finite && bad_step.is_none() {
                                bad_step = Some(k);
                            }
                        }
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                self.step_noise = noise;
                result?;
            }
        }
        self.impose_prefix(frozen);
        let x = self.x.extract_tensor().1;
        self.last_raw.copy_from_slice(x);
        if let Some(k) = bad_step {
            return Err(format!(
                "the model produced NaN or infinite values at sampling step {k}; chunk rejected"
            )
            .into());
        }
        let (h, d, joints) = (self.horizon, self.model_dim, self.joints);
        for (row, out) in self.last_actions.chunks_mut(joints).enumerate() {
            let src = &x[row * d..row * d + joints];
            debug_assert!(row < self.batch * h);
            for (j, (dst, v)) in out.iter_mut().zip(src).enumerate() {
                *dst = match &self.actions_norm {
                    Some(n) => n.unnormalize(j, *v),
                    None => *v,
                };
            }
        }
        if self.last_actions.iter().any(|v| !v.is_finite()) {
            return Err("unnormalized actions are NaN or infinite; chunk rejected".into());
        }
        Ok(())
    }
}

/// Where a flow or diffusion sampler's initial noise `x` [B, H, D] comes from.
/// Runs on the inference thread, once per chunk.
pub trait NoiseSource: Send {
    fn fill(&mut self, obs: &Observation, out: &mut [f32]) -> Result<(), PolicyError>;
    /// True when a policy (DSRL's latent-noise policy) chooses the first
    /// candidate's noise: it is then recorded with each chunk.
    fn chooses_noise(&self) -> bool {
        false
    }
    /// Switched off at run time, a source that chooses noise gives the run's
    /// seeded noise instead (and no longer chooses it).
    fn set_enabled(&mut self, _on: bool) {}
    /// Outputs of the policy's prefix graph the source reads.
    fn prefix_outputs(&self) -> &[String] {
        &[]
    }
    /// One of them for the coming [`Self::fill`] (one observation's, before the
    /// batch is tiled).
    fn take_prefix_output(&mut self, _name: &str, _value: &DynValue) -> Result<(), PolicyError> {
        Ok(())
    }
}

/// Standard normal noise from a generator keyed by (seed, the observation's tick):
/// a replayed tick samples the same noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeededGaussian {
    pub seed: u64,
}

impl NoiseSource for SeededGaussian {
    fn fill(&mut self, obs: &Observation, out: &mut [f32]) -> Result<(), PolicyError> {
        let mut rng =
            ChaCha8Rng::seed_from_u64(self.seed ^ obs.tick.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for pair in out.chunks_mut(2) {
            let (a, b) = standard_normal_pair(&mut rng);
            pair[0] = a;
            if let Some(second) = pair.get_mut(1) {
                *second = b;
            }
        }
        Ok(())
    }
}

/// Box-Muller: two independent standard normal samples.
pub(crate) fn standard_normal_pair(rng: &mut ChaCha8Rng) -> (f32, f32) {
    // u1 in (0, 1] so that ln(u1) is finite.
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    let r = (-2.0 * u1.ln()).sqrt();
    let angle = std::f64::consts::TAU * u2;
    ((r * angle.cos()) as f32, (r * angle.sin()) as f32)
}

/// Repeats `row` (one batch entry) over `out`.
fn fill_tiled<T: Copy>(out: &mut [T], row: &[T]) {
    for chunk in out.chunks_mut(row.len().max(1)) {
        chunk.copy_from_slice(&row[..chunk.len()]);
    }
}

/// One mapped observation input (batch 1) repeated to `batch` rows.
pub(crate) fn tiled_input(
    input: &crate::preprocess::MappedInput,
    batch: usize,
    allocator: &Allocator,
) -> ort::Result<DynValue> {
    let mut shape = input.shape.clone();
    shape[0] = batch;
    Ok(match input.dtype {
        TensorDtype::Float32 => {
            let mut t = Tensor::<f32>::new(allocator, shape)?;
            fill_tiled(t.extract_tensor_mut().1, &input.values);
            t.into_dyn()
        }
        TensorDtype::Uint8 => {
            let mut t = Tensor::<u8>::new(allocator, shape)?;
            fill_tiled(t.extract_tensor_mut().1, &input.bytes);
            t.into_dyn()
        }
        TensorDtype::Bool => {
            let mut t = Tensor::<bool>::new(allocator, shape)?;
            fill_tiled(t.extract_tensor_mut().1, &input.flags);
            t.into_dyn()
        }
        TensorDtype::Int64 => {
            let mut t = Tensor::<i64>::new(allocator, shape)?;
            fill_tiled(t.extract_tensor_mut().1, &input.ids);
            t.into_dyn()
        }
    })
}

/// A prefix output with batch 1, repeated to `batch` (float32 only).
/// Binds one conditioning tensor to the step graph, and to the VJP graph when
/// real-time chunking guides the sampler (it takes the same inputs).
fn bind_conditioning_input(
    binding: &mut IoBinding,
    guide: Option<&mut crate::rtc::RtcGuide>,
    name: &str,
    value: &DynValue,
) -> ort::Result<()> {
    binding.bind_input(name, value)?;
    if let Some(guide) = guide {
        guide.binding.bind_input(name, value)?;
    }
    Ok(())
}

fn tile(value: DynValue, batch: usize, allocator: &Allocator) -> Result<DynValue, PolicyError> {
    if batch == 1 {
        return Ok(value);
    }
    let (shape, data) = value.try_extract_tensor::<f32>()?;
    let mut dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    if dims.first() == Some(&batch) {
        return Ok(value);
    }
    if dims.first() != Some(&1) {
        return Err(format!(
            "prefix output has batch {:?}, cannot tile to {batch}",
            dims.first()
        )
        .into());
    }
    dims[0] = batch;
    let mut tiled = Tensor::<f32>::new(allocator, dims)?;
    fill_tiled(tiled.extract_tensor_mut().1, data);
    Ok(tiled.into_dyn())
}

pub(crate) fn batch_problems(ports: &[Port], batch: usize) -> Vec<String> {
    if batch == 1 {
        return Vec::new();
    }
    ports
        .iter()
        .filter(|p| p.shape.first().is_some_and(|&d| !batch_fits(d, batch)))
        .map(|p| {
            format!(
                "input `{}` has a fixed batch of {}; batch = {batch} needs a dynamic first dimension",
                p.name, p.shape[0]
            )
        })
        .collect()
}

impl Policy for GenerativePolicy {
    fn set_next_noise(&mut self, noise: Vec<f32>) -> Result<(), PolicyError> {
        GenerativePolicy::set_next_noise(self, noise).map_err(Into::into)
    }

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
        self.sample(obs)?;
        let first = self.horizon * self.joints;
        out.actions.copy_from_slice(&self.last_actions[..first]);
        out.horizon = self.horizon;
        out.dim = self.joints;
        Ok(())
    }

    fn candidates(&self) -> usize {
        self.batch
    }

    fn initial_noise(&self) -> Option<&[f32]> {
        (self.noise.chooses_noise() && !self.initial_noise.is_empty())
            .then_some(&self.initial_noise[..])
    }

    fn set_latent_noise(&mut self, on: bool) {
        self.noise.set_enabled(on);
    }

    fn infer_candidates(
        &mut self,
        obs: &Observation,
        out: &mut reflex_runtime::stage::Candidates,
    ) -> Result<(), PolicyError> {
        self.sample(obs)?;
        out.values.copy_from_slice(&self.last_actions);
        Ok(())
    }
}

/// Registers `[policy] kind = "flow"`.
pub struct FlowKind;

/// Registers `[policy] kind = "diffusion"`.
pub struct DiffusionKind;

/// A checked `flow` or `diffusion` table.
#[derive(Debug)]
pub struct GenerativeSpec<C>(pub C);

/// What the two generative kinds' tables answer alike.
pub trait GenerativeConfig: std::fmt::Debug + Send + Sync + 'static {
    const KIND: &'static str;
    fn batch(&self) -> usize;
    fn actions(&self) -> &GenerativeActions;
    fn inputs(&self) -> &[InputConfig];
    fn model(&self) -> &Path;
    fn load(&self, launch: &Launch) -> Result<GenerativePolicy, PolicyLoadError>;
}

impl GenerativeConfig for FlowPolicyConfig {
    const KIND: &'static str = "flow";
    fn batch(&self) -> usize {
        self.batch
    }
    fn actions(&self) -> &GenerativeActions {
        &self.actions
    }
    fn inputs(&self) -> &[InputConfig] {
        &self.inputs
    }
    fn model(&self) -> &Path {
        &self.model
    }
    fn load(&self, launch: &Launch) -> Result<GenerativePolicy, PolicyLoadError> {
        GenerativePolicy::load_flow(launch, self)
    }
}

impl GenerativeConfig for DiffusionPolicyConfig {
    const KIND: &'static str = "diffusion";
    fn batch(&self) -> usize {
        self.batch
    }
    fn actions(&self) -> &GenerativeActions {
        &self.actions
    }
    fn inputs(&self) -> &[InputConfig] {
        &self.inputs
    }
    fn model(&self) -> &Path {
        &self.model
    }
    fn load(&self, launch: &Launch) -> Result<GenerativePolicy, PolicyLoadError> {
        GenerativePolicy::load_diffusion(launch, self)
    }
}

/// `[policy.latent_noise]`: its model (added to the files checked), inputs and bounds.
fn check_latent_noise<'a>(
    table: &KindTable<'_>,
    latent: Option<&'a mut crate::config::LatentNoiseConfig>,
    has_prefix: bool,
    models: &mut Vec<(&'static str, &'a Path)>,
) -> Result<(), LaunchError> {
    let Some(latent) = latent else {
        return Ok(());
    };
    if !latent.prefix_outputs.is_empty() && !has_prefix {
        return Err(table.error_at(
            "latent_noise.prefix_outputs",
            "needs the policy's `prefix_model` (the graph whose outputs these are)",
        ));
    }
    if !(latent.action_magnitude.is_finite() && latent.action_magnitude > 0.0) {
        return Err(table.error_at(
            "latent_noise.action_magnitude",
            format!(
                "must be a positive number, found {}",
                latent.action_magnitude
            ),
        ));
    }
    if !(latent.exploration_std.is_finite() && latent.exploration_std >= 0.0) {
        return Err(table.error_at(
            "latent_noise.exploration_std",
            format!("must be zero or positive, found {}", latent.exploration_std),
        ));
    }
    crate::config::check_intra_threads(table, latent.intra_threads)?;
    crate::config::check_inputs_at(table, "latent_noise.", &mut latent.inputs, None)?;
    models.push(("latent_noise.model", latent.model.as_path()));
    Ok(())
}

/// With `[execution] strategy = "rtc"`: guided mode needs the VJP graph (added
/// to the files checked); no mode can re-anchor velocity targets.
fn check_real_time_chunking<'a>(
    table: &KindTable<'_>,
    vjp_model: Option<&'a Path>,
    models: &mut Vec<(&'static str, &'a Path)>,
) -> Result<(), LaunchError> {
    let execution = &table.launch().config.execution;
    if execution.strategy != "rtc" {
        return Ok(());
    }
    let trained = execution.params.get("mode").and_then(|m| m.as_str()) == Some("trained");
    match vjp_model {
        None if trained => {}
        None => {
            return Err(table.error_at(
                "vjp_model",
                "`[execution] strategy = \"rtc\"` guides the sampler with the network's \
                 vector-Jacobian product: name the VJP graph \
                 (policies/export/make_rtc_models.py writes one)",
            ));
        }
        Some(vjp) => models.push(("vjp_model", vjp)),
    }
    if execution.target == reflex_runtime::targets::ActionTarget::Velocity {
        return Err(table.launch().error_at(
            "execution.target",
            "real-time chunking re-anchors the plan it continues as positions or \
             deltas; velocity targets cannot be",
        ));
    }
    Ok(())
}

/// What the generative kinds check alike: sampler sizes, inputs and files.
fn check_common(
    table: &KindTable<'_>,
    intra_threads: usize,
    num_steps: usize,
    batch: usize,
    actions: &GenerativeActions,
    models: &[(&str, &Path)],
    norm_stats: Option<&NormStatsConfig>,
) -> Result<(), LaunchError> {
    crate::config::check_intra_threads(table, intra_threads)?;
    crate::config::check_generative(table, num_steps, batch, actions)?;
    crate::check_models(table, models)?;
    crate::config::check_norm_stats(table, norm_stats, None)
}

impl PolicyKind for FlowKind {
    fn kind(&self) -> &'static str {
        "flow"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<FlowPolicyConfig>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn PolicySpec>, LaunchError> {
        let mut cfg: FlowPolicyConfig = table.parse()?;
        crate::config::check_inputs(table, &mut cfg.inputs, cfg.prompt.as_ref())?;
        let mut models = vec![("model", cfg.model.as_path())];
        if let Some(prefix) = &cfg.prefix_model {
            models.push(("prefix_model", prefix.as_path()));
        }
        check_real_time_chunking(table, cfg.vjp_model.as_deref(), &mut models)?;
        let has_prefix = cfg.prefix_model.is_some();
        check_latent_noise(table, cfg.latent_noise.as_mut(), has_prefix, &mut models)?;
        check_common(
            table,
            cfg.intra_threads,
            cfg.num_steps,
            cfg.batch,
            &cfg.actions,
            &models,
            cfg.norm_stats.as_ref(),
        )?;
        Ok(Arc::new(GenerativeSpec(cfg)))
    }
}

impl PolicyKind for DiffusionKind {
    fn kind(&self) -> &'static str {
        "diffusion"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<DiffusionPolicyConfig>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn PolicySpec>, LaunchError> {
        let mut cfg: DiffusionPolicyConfig = table.parse()?;
        crate::config::check_inputs(table, &mut cfg.inputs, cfg.prompt.as_ref())?;
        let mut models = vec![("model", cfg.model.as_path())];
        if let Some(prefix) = &cfg.prefix_model {
            models.push(("prefix_model", prefix.as_path()));
        }
        check_real_time_chunking(table, cfg.vjp_model.as_deref(), &mut models)?;
        let has_prefix = cfg.prefix_model.is_some();
        check_latent_noise(table, cfg.latent_noise.as_mut(), has_prefix, &mut models)?;
        check_common(
            table,
            cfg.intra_threads,
            cfg.num_steps,
            cfg.batch,
            &cfg.actions,
            &models,
            cfg.norm_stats.as_ref(),
        )?;
        for (field, file, what) in [
            ("schedule.file", &cfg.schedule.file, "schedule file"),
            ("schedule.config", &cfg.schedule.config, "scheduler config"),
        ] {
            if let Some(file) = file {
                table.check_file(field, file, what, reflex_runtime::files::MAX_DATA_BYTES)?;
            }
        }
        cfg.schedule
            .resolve(cfg.num_steps, |p| table.launch().resolve(p))
            .map_err(|(field, message)| table.error_at(&format!("schedule.{field}"), message))?;
        Ok(Arc::new(GenerativeSpec(cfg)))
    }
}

fn into_loaded(
    launch: &Launch,
    p: Result<GenerativePolicy, PolicyLoadError>,
) -> Result<LoadedPolicy, LoadError> {
    p.map(crate::into_loaded)
        .map_err(|e| crate::located(launch, e))
}

impl crate::Reported for GenerativePolicy {
    fn report(&self) -> (PathBuf, PathBuf, f64, &'static str) {
        (
            self.model_path.clone(),
            self.library_path.clone(),
            self.warm_up_ms,
            self.provider,
        )
    }
}

impl<C: GenerativeConfig> PolicySpec for GenerativeSpec<C> {
    fn kind(&self) -> &'static str {
        C::KIND
    }
    fn candidates(&self) -> usize {
        self.0.batch()
    }
    fn horizon(&self) -> usize {
        self.0.actions().horizon
    }
    fn history(&self) -> usize {
        crate::config::max_history(self.0.inputs())
    }
    fn real_time_chunking(&self) -> bool {
        true
    }
    fn model(&self) -> PathBuf {
        self.0.model().to_path_buf()
    }
    fn load(&self, launch: &Launch) -> Result<LoadedPolicy, LoadError> {
        into_loaded(launch, self.0.load(launch))
    }
    fn as_any(&self) -> &dyn Any {
        &self.0
    }
}

/// The flow or diffusion policy of a launch file, as the concrete type (for
/// `reflex infer`, which sets the noise); None for other kinds.
pub fn load_generative(launch: &Launch) -> Result<Option<GenerativePolicy>, LoadError> {
    let any = launch.policy().as_any();
    let loaded = if let Some(cfg) = any.downcast_ref::<FlowPolicyConfig>() {
        GenerativePolicy::load_flow(launch, cfg)
    } else if let Some(cfg) = any.downcast_ref::<DiffusionPolicyConfig>() {
        GenerativePolicy::load_diffusion(launch, cfg)
    } else {
        return Ok(None);
    };
    loaded.map(Some).map_err(|e| crate::located(launch, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_noise_is_standard_normal() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let samples: Vec<f32> = (0..20_000)
            .flat_map(|_| {
                let (a, b) = standard_normal_pair(&mut rng);
                [a, b]
            })
            .collect();
        let n = samples.len() as f64;
        let mean = samples.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = samples
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 0.02, "{mean}");
        assert!((var - 1.0).abs() < 0.03, "{var}");
    }
}
