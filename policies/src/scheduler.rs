//! Diffusion schedulers as diffusers defines them: `DDIMScheduler` and
//! `DDPMScheduler` with their beta schedules (`linear`, `scaled_linear`,
//! `squaredcos_cap_v2`), `prediction_type` (`epsilon`, `sample`, `v_prediction`),
//! `timestep_spacing` (`leading`, `trailing`, `linspace`), `clip_sample` /
//! `clip_sample_range`, `set_alpha_to_one`, `steps_offset`, DDIM's `eta` and DDPM's
//! `variance_type`. A launch file names them in `[policy.schedule]`, or points at a
//! diffusers `scheduler_config.json` or a LeRobot Diffusion Policy `config.json`.
//!
//! Every step is precomputed at load into the coefficients of one affine update
//! ([`Step`]), in f64 from diffusers' float32 `alphas_cumprod`, so the loop does a
//! handful of multiply-adds per value. Stochastic steps (DDPM, DDIM with eta > 0)
//! take their noise from the policy's noise buffer, which the run's seeded
//! generator fills per chunk: replays stay bit for bit.

use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// diffusers' `beta_schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Nichol & Dhariwal's squared cosine (diffusers `squaredcos_cap_v2`).
    #[serde(alias = "squaredcos_cap_v2")]
    SquaredCosine,
    Linear,
    ScaledLinear,
}

/// The diffusers scheduler class the steps follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// `DDIMScheduler` (deterministic with eta = 0).
    #[default]
    Ddim,
    /// `DDPMScheduler` (stochastic: LeRobot Diffusion Policy's default).
    Ddpm,
}

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    #[default]
    Epsilon,
    Sample,
    VPrediction,
}

/// How inference timesteps are spread over the training ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TimestepSpacing {
    #[default]
    Leading,
    Trailing,
    Linspace,
}

/// DDPM's variance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VarianceType {
    #[default]
    FixedSmall,
    FixedSmallLog,
    FixedLarge,
}

/// `clip_sample = true` (with `clip_sample_range`, diffusers) or a number (the
/// range itself).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ClipSample {
    On(bool),
    Range(f32),
}

/// The scheduler fields of a diffusers `scheduler_config.json` or of a LeRobot
/// Diffusion Policy `config.json` (whose names differ), all optional.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SchedulerFile {
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    /// LeRobot: `DDPM` or `DDIM`.
    pub noise_scheduler_type: Option<String>,
    pub num_train_timesteps: Option<usize>,
    /// LeRobot's `num_inference_steps` (diffusers keeps it out of the config).
    pub num_inference_steps: Option<usize>,
    pub beta_start: Option<f64>,
    pub beta_end: Option<f64>,
    pub beta_schedule: Option<ScheduleKind>,
    pub trained_betas: Option<Vec<f64>>,
    pub clip_sample: Option<bool>,
    pub clip_sample_range: Option<f32>,
    pub prediction_type: Option<PredictionType>,
    pub timestep_spacing: Option<TimestepSpacing>,
    pub set_alpha_to_one: Option<bool>,
    pub steps_offset: Option<usize>,
    pub variance_type: Option<VarianceType>,
    pub thresholding: Option<bool>,
    pub rescale_betas_zero_snr: Option<bool>,
}

impl SchedulerFile {
    pub fn read(path: &Path) -> Result<Self, String> {
        let text =
            reflex_runtime::files::read_to_string(path, reflex_runtime::files::MAX_DATA_BYTES)
                .map_err(|e| e.to_string())?;
        let file: Self = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a scheduler config we read: {e}", path.display()))?;
        if file.thresholding == Some(true) {
            return Err(format!(
                "{}: `thresholding` (dynamic thresholding) is not supported",
                path.display()
            ));
        }
        if file.rescale_betas_zero_snr == Some(true) {
            return Err(format!(
                "{}: `rescale_betas_zero_snr` is not supported",
                path.display()
            ));
        }
        Ok(file)
    }

    /// The sampler the file names (`DDPMScheduler`, LeRobot's `DDPM`, ...).
    pub fn sampler(&self) -> Result<Option<SamplerKind>, String> {
        let name = match (&self.class_name, &self.noise_scheduler_type) {
            (Some(name), _) | (None, Some(name)) => name.to_ascii_lowercase(),
            (None, None) => return Ok(None),
        };
        match name.trim_end_matches("scheduler") {
            "ddpm" => Ok(Some(SamplerKind::Ddpm)),
            "ddim" => Ok(Some(SamplerKind::Ddim)),
            _ => Err(format!(
                "scheduler `{name}` is not supported (DDPMScheduler and DDIMScheduler are)"
            )),
        }
    }
}

/// `[policy.schedule]`: the noise schedule and sampler. Give `kind` (a named beta
/// schedule), `file` (`alphas_cumprod` as .npy or a JSON list) or `config` (a
/// diffusers `scheduler_config.json` or a LeRobot `config.json`); fields set here
/// override the config file's.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// A diffusers `scheduler_config.json` (DDPMScheduler / DDIMScheduler) or a
    /// LeRobot Diffusion Policy `config.json`: their scheduler fields, with
    /// diffusers' defaults for what they leave out.
    pub config: Option<std::path::PathBuf>,
    /// `ddim` (default) or `ddpm`.
    pub sampler: Option<SamplerKind>,
    /// `squared_cosine` (also `squaredcos_cap_v2`), `linear` or `scaled_linear`
    /// (diffusers' `beta_schedule`).
    #[serde(alias = "beta_schedule")]
    pub kind: Option<ScheduleKind>,
    /// A `.npy` (float32/float64 [T]) or JSON list of `alphas_cumprod`.
    pub file: Option<std::path::PathBuf>,
    /// T, the number of training timesteps (default 100; diffusers' 1000 with `config`).
    #[serde(alias = "num_train_timesteps")]
    pub train_steps: Option<usize>,
    pub beta_start: Option<f64>,
    pub beta_end: Option<f64>,
    /// Clip the predicted clean sample: `true` (to `clip_sample_range`) or the range.
    pub clip_sample: Option<ClipSample>,
    pub clip_sample_range: Option<f32>,
    /// `epsilon` (default), `sample` or `v_prediction`.
    pub prediction_type: Option<PredictionType>,
    /// `leading` (default), `trailing` or `linspace`.
    pub timestep_spacing: Option<TimestepSpacing>,
    /// DDIM: the last step goes to alpha_bar = 1 (default true).
    pub set_alpha_to_one: Option<bool>,
    pub steps_offset: Option<usize>,
    /// DDIM: 0 (default) is deterministic; 1 is DDPM-like.
    pub eta: Option<f64>,
    /// DDPM: `fixed_small` (default), `fixed_small_log` or `fixed_large`.
    pub variance_type: Option<VarianceType>,
}

/// A scheduler with every field decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Scheduler {
    pub sampler: SamplerKind,
    /// diffusers' `alphas_cumprod` (float32).
    pub alphas_cumprod: Vec<f32>,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    /// Clip the predicted clean sample to [-c, c].
    pub clip: Option<f32>,
    pub set_alpha_to_one: bool,
    pub steps_offset: usize,
    /// DDIM's eta (0: deterministic).
    pub eta: f64,
    pub variance_type: VarianceType,
}

/// `alphas_cumprod` as diffusers computes it: float32 betas (linear: torch's
/// float32 `linspace`; scaled_linear: the squares of a float32 `linspace` of
/// square roots; squaredcos_cap_v2: computed in f64, stored as f32), then
/// [`cumprod_of_betas`].
pub fn alphas_cumprod(
    kind: ScheduleKind,
    steps: usize,
    beta_start: f64,
    beta_end: f64,
) -> Vec<f32> {
    let betas: Vec<f32> = match kind {
        ScheduleKind::Linear => linspace_f32(beta_start as f32, beta_end as f32, steps),
        ScheduleKind::ScaledLinear => {
            linspace_f32(beta_start.sqrt() as f32, beta_end.sqrt() as f32, steps)
                .into_iter()
                .map(|b| b * b)
                .collect()
        }
        ScheduleKind::SquaredCosine => {
            let t = steps as f64;
            let abar = |s: f64| {
                ((s + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                    .cos()
                    .powi(2)
            };
            (0..steps)
                .map(|i| (1.0 - abar((i as f64 + 1.0) / t) / abar(i as f64 / t)).min(0.999) as f32)
                .collect()
        }
    };
    cumprod_of_betas(&betas)
}

/// `torch.cumprod(1 - betas)` on float32 tensors: float32 alphas, a running
/// product kept in f64 (torch accumulates float32 scans in double on the CPU),
/// each entry stored as f32.
pub fn cumprod_of_betas(betas: &[f32]) -> Vec<f32> {
    let mut product = 1.0f64;
    betas
        .iter()
        .map(|beta| {
            product *= f64::from(1.0f32 - beta);
            product as f32
        })
        .collect()
}

/// torch's float32 `linspace` on the CPU: a float32 step, then from the start for
/// the first half and from the end for the second, each value one fused
/// multiply-add (torch's vectorized kernel; it differs from `start + step * i` by
/// an ulp at some entries).
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - 1 - i) as f32, end)
            }
        })
        .collect()
}

/// One denoising step, `x <- c_x0 * clip(cx x + cm m) + c_e (ex x + em m) + c_x x + sigma z`
/// (m: the model's output, z: standard normal noise).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// The timestep fed to the model.
    pub timestep: i64,
    pub cx: f32,
    pub cm: f32,
    pub ex: f32,
    pub em: f32,
    pub c_x0: f32,
    pub c_e: f32,
    pub c_x: f32,
    /// Standard deviation of the noise added (0: none drawn).
    pub sigma: f32,
    /// alpha_bar at this step's timestep (guided real-time chunking weighs by it).
    pub alpha_bar: f32,
}

impl Step {
    /// Applies the step to `x` in place; `z` holds this step's noise when
    /// `sigma > 0`.
    pub fn apply(&self, clip: Option<f32>, x: &mut [f32], model: &[f32], z: &[f32]) {
        for (i, (x, m)) in x.iter_mut().zip(model).enumerate() {
            let mut x0 = self.cx * *x + self.cm * m;
            if let Some(c) = clip {
                x0 = x0.clamp(-c, c);
            }
            let e = self.ex * *x + self.em * m;
            let mut next = self.c_x0 * x0 + self.c_e * e + self.c_x * *x;
            if self.sigma > 0.0 {
                next += self.sigma * z[i];
            }
            *x = next;
        }
    }
}

/// The steps of one chunk (shared: the sampler clones the plan per chunk).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerPlan {
    pub steps: std::sync::Arc<[Step]>,
    pub clip: Option<f32>,
}

impl SamplerPlan {
    /// Samples of step noise a chunk takes from the noise buffer after the initial
    /// noise: one per step when any step adds noise (step k reads the k-th, as
    /// diffusers draws them), else none.
    pub fn noise_samples(&self) -> usize {
        if self.steps.iter().any(|s| s.sigma > 0.0) {
            self.steps.len()
        } else {
            0
        }
    }
}

impl Scheduler {
    /// diffusers' `set_timesteps(num_steps)`.
    pub fn timesteps(&self, num_steps: usize) -> Result<Vec<usize>, String> {
        let train = self.alphas_cumprod.len();
        if num_steps == 0 || num_steps > train {
            return Err(format!(
                "num_steps must be in 1..={train} (the schedule's length)"
            ));
        }
        let timesteps: Vec<usize> = match self.timestep_spacing {
            TimestepSpacing::Leading => {
                let ratio = train / num_steps;
                (0..num_steps)
                    .rev()
                    .map(|i| i * ratio + self.steps_offset)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = train as f64 / num_steps as f64;
                (0..num_steps)
                    .map(|i| (train as f64 - i as f64 * ratio).round_ties_even() as usize - 1)
                    .collect()
            }
            TimestepSpacing::Linspace => {
                let last = (train - 1) as f64;
                (0..num_steps)
                    .rev()
                    .map(|i| match num_steps {
                        1 => 0,
                        n => (last * i as f64 / (n - 1) as f64).round_ties_even() as usize,
                    })
                    .collect()
            }
        };
        if let Some(t) = timesteps.iter().find(|t| **t >= train) {
            return Err(format!(
                "timestep {t} is past the schedule's {train} entries (steps_offset?)"
            ));
        }
        Ok(timesteps)
    }

    /// The steps of a chunk of `num_steps` denoising steps.
    pub fn plan(&self, num_steps: usize) -> Result<SamplerPlan, String> {
        let ac = &self.alphas_cumprod;
        if ac.iter().any(|a| !(a.is_finite() && *a > 0.0 && *a <= 1.0)) {
            return Err("alphas_cumprod values must be in (0, 1]".into());
        }
        let train = ac.len();
        // diffusers' previous timestep: t - T // n, for every spacing.
        let ratio = train / num_steps;
        let final_alpha = match self.sampler {
            SamplerKind::Ddim if !self.set_alpha_to_one => f64::from(ac[0]),
            _ => 1.0,
        };
        let steps = self
            .timesteps(num_steps)?
            .into_iter()
            .map(|t| {
                let a_t = f64::from(ac[t]);
                let a_prev = t
                    .checked_sub(ratio)
                    .map_or(final_alpha, |p| f64::from(ac[p]));
                let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
                // The predicted clean sample (cx, cm) and noise (ex, em), from x and m.
                let (cx, cm, ex, em) = match self.prediction_type {
                    PredictionType::Epsilon => {
                        (1.0 / a_t.sqrt(), -b_t.sqrt() / a_t.sqrt(), 0.0, 1.0)
                    }
                    PredictionType::Sample => {
                        (0.0, 1.0, 1.0 / b_t.sqrt(), -a_t.sqrt() / b_t.sqrt())
                    }
                    PredictionType::VPrediction => {
                        (a_t.sqrt(), -b_t.sqrt(), b_t.sqrt(), a_t.sqrt())
                    }
                };
                let (c_x0, c_e, c_x, sigma) = match self.sampler {
                    SamplerKind::Ddim => {
                        let variance = b_prev / b_t * (1.0 - a_t / a_prev);
                        let sigma = self.eta * variance.sqrt();
                        (
                            a_prev.sqrt(),
                            (b_prev - sigma * sigma).max(0.0).sqrt(),
                            0.0,
                            sigma,
                        )
                    }
                    SamplerKind::Ddpm => {
                        let alpha_t = a_t / a_prev;
                        let beta_t = 1.0 - alpha_t;
                        let variance = (b_prev / b_t * beta_t).max(1e-20);
                        let sigma = match (t, self.variance_type) {
                            (0, _) => 0.0,
                            (_, VarianceType::FixedSmall) => variance.sqrt(),
                            (_, VarianceType::FixedSmallLog) => (0.5 * variance.ln()).exp(),
                            (_, VarianceType::FixedLarge) => beta_t.sqrt(),
                        };
                        (
                            a_prev.sqrt() * beta_t / b_t,
                            0.0,
                            alpha_t.sqrt() * b_prev / b_t,
                            sigma,
                        )
                    }
                };
                Step {
                    timestep: t as i64,
                    cx: cx as f32,
                    cm: cm as f32,
                    ex: ex as f32,
                    em: em as f32,
                    c_x0: c_x0 as f32,
                    c_e: c_e as f32,
                    c_x: c_x as f32,
                    sigma: sigma as f32,
                    alpha_bar: a_t as f32,
                }
            })
            .collect::<Vec<_>>()
            .into();
        Ok(SamplerPlan {
            steps,
            clip: self.clip,
        })
    }
}

/// An error about a `schedule.<field>`: the field and the message.
pub type FieldError = (String, String);

fn at(field: &str, message: impl Into<String>) -> FieldError {
    (field.to_string(), message.into())
}

impl ScheduleConfig {
    /// Decides every field: this table over the config file over the defaults
    /// (diffusers' with a config file, else reflex's); reads the files
    /// (`resolve_path` makes their paths absolute).
    pub fn resolve(
        &self,
        num_steps: usize,
        resolve_path: impl Fn(&Path) -> std::path::PathBuf,
    ) -> Result<Scheduler, FieldError> {
        let file = match &self.config {
            Some(path) => SchedulerFile::read(&resolve_path(path)).map_err(|e| at("config", e))?,
            None => SchedulerFile::default(),
        };
        let diffusers = self.config.is_some();
        let sampler = match self.sampler {
            Some(sampler) => sampler,
            None => file
                .sampler()
                .map_err(|e| at("config", e))?
                .unwrap_or_default(),
        };
        let given = [self.kind.is_some(), self.file.is_some()]
            .iter()
            .filter(|g| **g)
            .count();
        if given > 1 || (given == 0 && !diffusers) {
            return Err(at(
                "kind",
                "give one of `kind` (squared_cosine, linear, scaled_linear), `file` or `config`",
            ));
        }
        let alphas_cumprod = if let Some(path) = &self.file {
            read_alphas_cumprod(&resolve_path(path)).map_err(|e| at("file", e))?
        } else if let Some(betas) = file.trained_betas.as_ref().filter(|_| self.kind.is_none()) {
            let betas: Vec<f32> = betas.iter().map(|b| *b as f32).collect();
            cumprod_of_betas(&betas)
        } else {
            let kind = self
                .kind
                .or(file.beta_schedule)
                .unwrap_or(ScheduleKind::Linear);
            let train = self
                .train_steps
                .or(file.num_train_timesteps)
                .unwrap_or(if diffusers { 1000 } else { 100 });
            if !(num_steps..=100_000).contains(&train) {
                return Err(at(
                    "train_steps",
                    format!("must be in {num_steps}..=100000 (at least num_steps), found {train}"),
                ));
            }
            let start = self.beta_start.or(file.beta_start).unwrap_or(1e-4);
            let end = self.beta_end.or(file.beta_end).unwrap_or(0.02);
            if !(start > 0.0 && end > 0.0 && start < 1.0 && end < 1.0) {
                return Err(at("beta_start", "betas must be in (0, 1)"));
            }
            alphas_cumprod(kind, train, start, end)
        };
        let range = (self.clip_sample_range)
            .or(file.clip_sample_range)
            .unwrap_or(1.0);
        let clip = match self.clip_sample {
            Some(ClipSample::Range(range)) => Some(range),
            Some(ClipSample::On(on)) => on.then_some(range),
            // diffusers clips by default.
            None => file.clip_sample.unwrap_or(diffusers).then_some(range),
        };
        if let Some(c) = clip
            && !(c.is_finite() && c > 0.0)
        {
            return Err(at(
                "clip_sample",
                format!("the range must be positive, found {c}"),
            ));
        }
        let eta = self.eta.unwrap_or(0.0);
        if !(eta.is_finite() && (0.0..=1.0).contains(&eta)) {
            return Err(at("eta", format!("must be in [0, 1], found {eta}")));
        }
        if eta > 0.0 && sampler == SamplerKind::Ddpm {
            return Err(at("eta", "applies to sampler = \"ddim\""));
        }
        let scheduler = Scheduler {
            sampler,
            alphas_cumprod,
            prediction_type: self
                .prediction_type
                .or(file.prediction_type)
                .unwrap_or_default(),
            timestep_spacing: self
                .timestep_spacing
                .or(file.timestep_spacing)
                .unwrap_or_default(),
            clip,
            set_alpha_to_one: self
                .set_alpha_to_one
                .or(file.set_alpha_to_one)
                .unwrap_or(true),
            steps_offset: self.steps_offset.or(file.steps_offset).unwrap_or(0),
            eta,
            variance_type: self
                .variance_type
                .or(file.variance_type)
                .unwrap_or_default(),
        };
        // Every timestep and coefficient must exist for these steps.
        scheduler.plan(num_steps).map_err(|e| {
            let field = if e.starts_with("num_steps") {
                "train_steps"
            } else {
                "steps_offset"
            };
            at(field, e)
        })?;
        Ok(scheduler)
    }
}

/// `alphas_cumprod` from a `.npy` (float32/float64 [T]) or a JSON list.
fn read_alphas_cumprod(path: &Path) -> Result<Vec<f32>, String> {
    let values: Vec<f64> = if path.extension().is_some_and(|e| e == "json") {
        let text =
            reflex_runtime::files::read_to_string(path, reflex_runtime::files::MAX_DATA_BYTES)
                .map_err(|e| e.to_string())?;
        serde_json::from_str(&text).map_err(|e| {
            format!(
                "{}: expected a JSON list of alphas_cumprod: {e}",
                path.display()
            )
        })?
    } else {
        let (shape, values) = reflex_runtime::npy::read_f64(path).map_err(|e| e.to_string())?;
        if shape.len() != 1 {
            return Err(format!(
                "{}: expected a 1-D array, found {shape:?}",
                path.display()
            ));
        }
        values
    };
    Ok(values.into_iter().map(|v| v as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduler(sampler: SamplerKind, spacing: TimestepSpacing) -> Scheduler {
        Scheduler {
            sampler,
            alphas_cumprod: alphas_cumprod(ScheduleKind::SquaredCosine, 100, 1e-4, 0.02),
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: spacing,
            clip: Some(1.0),
            set_alpha_to_one: true,
            steps_offset: 0,
            eta: 0.0,
            variance_type: VarianceType::FixedSmall,
        }
    }

    #[test]
    fn schedules_match_diffusers() {
        // diffusers 0.31 `alphas_cumprod` (float32), printed by the parity venv.
        let linear = alphas_cumprod(ScheduleKind::Linear, 1000, 1e-4, 0.02);
        assert_eq!(linear[..3], [0.9999, 0.99978006, 0.9996403]);
        assert!(
            (linear[999] - 4.035_830_4e-5).abs() < 1e-11,
            "{}",
            linear[999]
        );
        let cosine = alphas_cumprod(ScheduleKind::SquaredCosine, 100, 0.0, 0.0);
        assert!((cosine[0] - 0.99937).abs() < 1e-5, "{}", cosine[0]);
        assert!(cosine.windows(2).all(|w| w[1] < w[0]));
        let scaled = alphas_cumprod(ScheduleKind::ScaledLinear, 1000, 0.00085, 0.012);
        assert!((scaled[0] - 0.99915).abs() < 1e-6);
    }

    #[test]
    fn ddim_steps_use_the_final_alpha() {
        let mut ddim = scheduler(SamplerKind::Ddim, TimestepSpacing::Leading);
        let plan = ddim.plan(8).unwrap();
        let last = plan.steps[7];
        assert_eq!((last.timestep, last.c_x0, last.c_e), (0, 1.0, 0.0));
        let first = plan.steps[0];
        assert_eq!(first.c_x0, f64::from(ddim.alphas_cumprod[72]).sqrt() as f32);
        ddim.set_alpha_to_one = false;
        let plan = ddim.plan(8).unwrap();
        assert_eq!(
            plan.steps[7].c_x0,
            f64::from(ddim.alphas_cumprod[0]).sqrt() as f32
        );
        assert!(ddim.plan(101).is_err());
        ddim.steps_offset = 20;
        assert!(ddim.plan(10).is_err());
    }

    #[test]
    fn timesteps_follow_diffusers_spacings() {
        // diffusers 0.31, num_train_timesteps = 100, 8 steps.
        let t = |spacing| scheduler(SamplerKind::Ddim, spacing).timesteps(8).unwrap();
        assert_eq!(t(TimestepSpacing::Leading), [84, 72, 60, 48, 36, 24, 12, 0]);
        assert_eq!(
            t(TimestepSpacing::Trailing),
            [99, 87, 74, 61, 49, 37, 24, 11]
        );
        assert_eq!(
            t(TimestepSpacing::Linspace),
            [99, 85, 71, 57, 42, 28, 14, 0]
        );
    }

    #[test]
    fn ddim_with_eta_zero_draws_no_noise_and_ddpm_draws_all_but_the_last() {
        let ddim = scheduler(SamplerKind::Ddim, TimestepSpacing::Leading)
            .plan(8)
            .unwrap();
        assert_eq!(ddim.noise_samples(), 0);
        let ddpm = scheduler(SamplerKind::Ddpm, TimestepSpacing::Leading)
            .plan(100)
            .unwrap();
        assert_eq!(ddpm.steps.len(), 100);
        assert_eq!(ddpm.noise_samples(), 100);
        assert_eq!(ddpm.steps.iter().filter(|s| s.sigma > 0.0).count(), 99);
        assert_eq!(ddpm.steps[99].timestep, 0);
        // At t = 0 DDPM returns the clean sample.
        let last = ddpm.steps[99];
        assert!(
            (last.c_x0 - 1.0).abs() < 1e-6 && last.c_x.abs() < 1e-6,
            "{last:?}"
        );
    }

    #[test]
    fn diffusers_names_and_files_are_read() {
        let kind: ScheduleKind = serde_json::from_str("\"squaredcos_cap_v2\"").unwrap();
        assert_eq!(kind, ScheduleKind::SquaredCosine);
        let file: SchedulerFile = serde_json::from_str(
            r#"{"_class_name": "DDPMScheduler", "_diffusers_version": "0.31.0",
                "beta_schedule": "squaredcos_cap_v2", "clip_sample": true,
                "prediction_type": "epsilon", "num_train_timesteps": 100}"#,
        )
        .unwrap();
        assert_eq!(file.sampler().unwrap(), Some(SamplerKind::Ddpm));
        let lerobot: SchedulerFile =
            serde_json::from_str(r#"{"noise_scheduler_type": "DDIM", "type": "diffusion"}"#)
                .unwrap();
        assert_eq!(lerobot.sampler().unwrap(), Some(SamplerKind::Ddim));
    }
}
