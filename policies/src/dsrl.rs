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

use ort::session::Session;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use reflex_runtime::launch::Launch;
use reflex_runtime::policy::PolicyError;
use reflex_runtime::types::Observation;

use crate::PolicyLoadError;
use crate::chunk::{check_inputs, model_ports, signature_mismatch};
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
}

impl LatentNoise {
    /// Opens the model and checks it: its inputs against `inputs`, its output
    /// `[1, H, D]` or `[1, D]` float32.
    pub fn load(
        launch: &Launch,
        cfg: &LatentNoiseConfig,
        horizon: usize,
        dim: usize,
    ) -> Result<Self, PolicyLoadError> {
        let path = launch.resolve(&cfg.model);
        let (env, _) = crate::onnxruntime::environment_for(launch)?;
        let settings = crate::onnxruntime::SessionSettings::from_launch(launch, cfg.intra_threads);
        let session = crate::onnxruntime::open_session(&env, &path, &settings)?.session;
        let (inputs, outputs) = model_ports(&session);
        let mut problems = check_inputs(&cfg.inputs, &inputs).err().unwrap_or_default();
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
        let outputs = self.session.run(self.mapper.session_inputs()?)?;
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
}
