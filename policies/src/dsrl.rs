//! DSRL (diffusion steering by reinforcement learning, Wagenmaker et al. 2025): a
//! small latent-noise policy chooses the initial noise w of a flow or diffusion
//! policy instead of its actions (`[policy.latent_noise]`). The frozen policy
//! then maps w to a chunk deterministically (Euler flow, DDIM with eta = 0), so a
//! learner can act in noise space; w is recorded with each chunk.
//!
//! The latent policy's raw output, `[1, H, D]` or `[1, D]` (one latent action
//! repeated over the horizon), is squashed to `action_magnitude * tanh(raw)`;
//! optional Gaussian exploration (keyed by the run's seed and the tick) is added
//! and clipped to the same bound. With `batch = B > 1` the first candidate starts
//! from w and the others from the run's seeded noise.
//!
//! Besides mapped observations it may read outputs of the policy's prefix graph
//! (`prefix_outputs`: pi0's last prefix token in DSRL), which the sampler computes
//! once per chunk anyway; their values are copied into tensors made at load.

use std::borrow::Cow;

use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use reflex_runtime::launch::Launch;
use reflex_runtime::policy::PolicyError;
use reflex_runtime::types::Observation;

use crate::PolicyLoadError;
use crate::chunk::{Port, check_inputs, model_ports, signature_mismatch};
use crate::config::LatentNoiseConfig;
use crate::generative::{NoiseSource, SeededGaussian, shape_fits};
use crate::preprocess::InputMapper;

/// The latent-noise policy as the sampler's [`NoiseSource`].
pub struct LatentNoise {
    session: Session,
    mapper: InputMapper,
    output: String,
    magnitude: f32,
    exploration_std: f64,
    seed: u64,
    horizon: usize,
    dim: usize,
    /// The rest of the batch (all of it while switched off).
    seeded: SeededGaussian,
    /// Switched on or off at run time (`reflex steer dsrl`).
    enabled: bool,
    /// `prefix_outputs`, and this chunk's value of each (batch 1).
    prefix_names: Vec<String>,
    prefix_values: Vec<Tensor<f32>>,
}

/// Checks the prefix outputs the latent model reads: each an output of the prefix
/// graph and an input of the latent model, float32, the same static shape past
/// the batch dimension. Returns their shapes at batch 1.
fn prefix_feeds(
    names: &[String],
    prefix_outputs: &[Port],
    latent_inputs: &[Port],
    problems: &mut Vec<String>,
) -> Vec<Vec<usize>> {
    let mut shapes = Vec::new();
    for name in names {
        let Some(out) = prefix_outputs.iter().find(|p| &p.name == name) else {
            let have: Vec<&str> = prefix_outputs.iter().map(|p| p.name.as_str()).collect();
            problems.push(format!(
                "`{name}` is not an output of the policy's prefix graph (it has {have:?})"
            ));
            continue;
        };
        let shape: Vec<usize> = (out.shape.iter().enumerate())
            .map(|(i, &d)| if i == 0 { 1 } else { d.max(0) as usize })
            .collect();
        if out.dtype != "float32" || out.shape.iter().skip(1).any(|&d| d < 1) {
            problems.push(format!(
                "prefix output `{name}` is {} {:?}: only float32 with a static shape past \
                 the batch dimension can be fed",
                out.dtype, out.shape
            ));
            continue;
        }
        match latent_inputs.iter().find(|p| &p.name == name) {
            None => problems.push(format!(
                "prefix output `{name}` is not an input of the latent-noise model"
            )),
            Some(p) if p.dtype != "float32" || !shape_fits(&p.shape, &shape) => {
                problems.push(format!(
                    "input `{name}` is {} {:?}; the prefix graph gives float32 {:?}",
                    p.dtype, p.shape, out.shape
                ))
            }
            Some(_) => shapes.push(shape),
        }
    }
    shapes
}

impl LatentNoise {
    /// Opens the model and checks it: its inputs against `inputs`, its output
    /// `[1, H, D]` or `[1, D]` float32.
    pub fn load(
        launch: &Launch,
        cfg: &LatentNoiseConfig,
        horizon: usize,
        dim: usize,
        prefix_outputs: &[Port],
    ) -> Result<Self, PolicyLoadError> {
        let path = launch.resolve(&cfg.model);
        let (env, _) = crate::onnxruntime::environment_for(launch)?;
        let settings = crate::onnxruntime::SessionSettings::from_launch(launch, cfg.intra_threads);
        let session = crate::onnxruntime::open_session(&env, &path, &settings)?.session;
        let (inputs, outputs) = model_ports(&session);
        // Inputs the prefix graph feeds are not the launch file's to map.
        let (fed, mapped): (Vec<Port>, Vec<Port>) =
            (inputs.iter().cloned()).partition(|p| cfg.prefix_outputs.contains(&p.name));
        let mut problems = check_inputs(&cfg.inputs, &mapped).err().unwrap_or_default();
        let shapes = prefix_feeds(&cfg.prefix_outputs, prefix_outputs, &fed, &mut problems);
        match outputs.iter().find(|p| p.name == cfg.output) {
            None => problems.push(format!("output `{}` is not in the model", cfg.output)),
            Some(p)
                if p.dtype != "float32"
                    || !(shape_fits(&p.shape, &[1, horizon, dim])
                        || shape_fits(&p.shape, &[1, dim])) =>
            {
                problems.push(format!(
                    "output `{}` is {} {:?}, expected float32 [1, {horizon}, {dim}] (the \
                     noise of one chunk) or [1, {dim}] (repeated over the horizon)",
                    p.name, p.dtype, p.shape
                ))
            }
            Some(_) => {}
        }
        if !problems.is_empty() {
            let mut expected: Vec<String> = cfg
                .inputs
                .iter()
                .map(|i| format!("    {}: {:?}", i.name, i.shape))
                .chain((cfg.prefix_outputs.iter()).map(|n| format!("    {n}: the prefix graph's")))
                .collect();
            expected.push(format!(
                "    {} (output): float32 [1, {horizon}, {dim}] or [1, {dim}]",
                cfg.output
            ));
            let message = signature_mismatch(&path, problems, expected, &inputs, &outputs);
            return Err(PolicyLoadError::Config {
                field: "policy.latent_noise.model".into(),
                message: message.to_string(),
            });
        }
        let mapper = InputMapper::new(&cfg.inputs, &launch.camera_names(), &launch.tensor_names())
            .map_err(PolicyLoadError::WarmUp)?;
        Ok(Self {
            session,
            mapper,
            output: cfg.output.clone(),
            magnitude: cfg.action_magnitude as f32,
            exploration_std: cfg.exploration_std,
            seed: launch.config.seed,
            horizon,
            dim,
            seeded: SeededGaussian {
                seed: launch.config.seed,
            },
            enabled: true,
            prefix_values: shapes
                .into_iter()
                .map(|shape| {
                    let n = shape.iter().product::<usize>();
                    Tensor::from_array((shape, vec![0.0f32; n]))
                })
                .collect::<Result<_, _>>()
                .map_err(|e| PolicyLoadError::WarmUp(e.to_string()))?,
            prefix_names: cfg.prefix_outputs.clone(),
        })
    }
}

impl NoiseSource for LatentNoise {
    fn fill(&mut self, obs: &Observation, out: &mut [f32]) -> Result<(), PolicyError> {
        // The other candidates' noise, as without DSRL; the first is replaced.
        self.seeded.fill(obs, out)?;
        if !self.enabled {
            return Ok(());
        }
        self.mapper.fill(obs);
        let mut feeds = self.mapper.session_inputs()?;
        for (name, value) in self.prefix_names.iter().zip(&self.prefix_values) {
            feeds.push((Cow::Borrowed(name.as_str()), SessionInputValue::from(value)));
        }
        let outputs = self.session.run(feeds)?;
        let raw = outputs
            .get(&self.output)
            .ok_or_else(|| format!("the latent-noise policy produced no `{}`", self.output))?
            .try_extract_tensor::<f32>()?
            .1;
        let per_row = raw.len();
        if per_row != self.horizon * self.dim && per_row != self.dim {
            return Err(format!(
                "the latent-noise policy gave {per_row} values, expected {} or {}",
                self.horizon * self.dim,
                self.dim
            )
            .into());
        }
        let m = self.magnitude;
        let mut explore = (self.exploration_std > 0.0).then(|| {
            ChaCha8Rng::seed_from_u64(
                self.seed ^ 0xD5_5D ^ obs.tick.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            )
        });
        for (i, w) in out[..self.horizon * self.dim].iter_mut().enumerate() {
            let mut value = m * raw[i % per_row].tanh();
            if let Some(rng) = explore.as_mut() {
                let (z, _) = crate::generative::standard_normal_pair(rng);
                value = (value + self.exploration_std as f32 * z).clamp(-m, m);
            }
            if !value.is_finite() {
                return Err("the latent-noise policy gave NaN or infinite noise".into());
            }
            *w = value;
        }
        Ok(())
    }

    fn chooses_noise(&self) -> bool {
        self.enabled
    }

    fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
    }

    fn prefix_outputs(&self) -> &[String] {
        &self.prefix_names
    }

    fn take_prefix_output(&mut self, name: &str, value: &DynValue) -> Result<(), PolicyError> {
        let Some(i) = self.prefix_names.iter().position(|n| n == name) else {
            return Ok(());
        };
        let data = value.try_extract_tensor::<f32>()?.1;
        let slot = self.prefix_values[i].extract_tensor_mut().1;
        if data.len() != slot.len() {
            return Err(format!(
                "prefix output `{name}` has {} values, the latent-noise model takes {}",
                data.len(),
                slot.len()
            )
            .into());
        }
        slot.copy_from_slice(data);
        Ok(())
    }
}
