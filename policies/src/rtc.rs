//! Guided real-time chunking (Black, Galliker, Levine 2025, arXiv 2506.07339) in
//! the flow and diffusion samplers: every step is steered toward the plan the new
//! chunk replaces, by ΠGDM guidance (Song et al. 2023) through the network's
//! vector-Jacobian product (a second graph, `[policy] vjp_model`).
//!
//! Each step's network output m gives a clean-sample estimate affine in the
//! sample x, `x̂ = a x + b m` ([`Denoiser`]); the step is guided by
//!
//! ```text
//! e = W ⊙ (y - x̂)                the weighted gap to the previous plan y
//! g = a e + b J^T e              (d x̂ / d x)^T e, one VJP-graph run
//! m ← m + kappa g                then the sampler's own update with m
//! ```
//!
//! Flow (openpi convention, t = 1 noise, v from data to noise): x̂ = x - t v,
//! the paper's `x += dt (v - w g)` with `w = min(β, (1 - τ)/τ · (τ² + (1 - τ)²)/(1 - τ)²)`
//! at τ = 1 - t (β at τ = 0), i.e. kappa = -w. (The paper integrates from noise at
//! τ = 0 to data at τ = 1 with v toward the data: the same estimate, the same step.)
//!
//! Diffusion (diffusers' DDIM / DDPM, any prediction type): x̂ = cx x + cm m as
//! the scheduler predicts the clean sample; ΠGDM's likelihood score
//! `min(β, 1 / (1 - ᾱ)) g` is added to the model's score, which moves the output
//! by kappa g (see [`Denoiser::diffusion`]); the scheduler's step then runs on it.
//!
//! y is the executor's plan at the new chunk's action times (the observation's
//! `committed` rows), taken back into the model's space: re-anchored to the state
//! the policy sees when actions are deltas, then normalized. W is the paper's
//! soft mask (1 for the d actions that run while the chunk is computed, decaying
//! to 0 at H - s), 0 where there is no plan and on padded model columns.
//!
//! Training-time RTC (arXiv 2512.05964, [`RtcPrefix`]) needs no VJP: the model
//! was trained with the first d actions of its input clean and marked by a
//! `prefix_mask` input; the sampler writes y's first d rows there before every
//! step and once more at the end.

use std::path::Path;
use std::time::Instant;

use ort::memory::Allocator;
use ort::session::{IoBinding, Session};
use ort::value::Tensor;
use reflex_runtime::launch::Launch;
use reflex_runtime::policy::PolicyError;
use reflex_runtime::strategies::RtcParams;
use reflex_runtime::targets::ActionTarget;
use reflex_runtime::types::Observation;

use crate::PolicyLoadError;
use crate::chunk::{Port, model_ports, signature_mismatch as mismatch};
use crate::normalize::VectorNorm;
use crate::scheduler::Step;

/// The plan a chunk continues, in the model's space.
pub(crate) struct ModelPlan {
    /// [H, D]: the plan's rows, re-anchored and normalized; zero where none.
    target: Vec<f32>,
    /// Rows of the plan this chunk has.
    rows: usize,
    /// The inference delay in actions (rounded up).
    delay: usize,
    horizon: usize,
    model_dim: usize,
    ticks_per_action: f64,
    target_kind: ActionTarget,
    arm_joints: usize,
    /// Executed columns: the joints and the gripper.
    columns: usize,
}

impl ModelPlan {
    pub(crate) fn new(launch: &Launch, horizon: usize, model_dim: usize) -> Self {
        let c = &launch.config;
        Self {
            target: vec![0.0; horizon * model_dim],
            rows: 0,
            delay: 0,
            horizon,
            model_dim,
            ticks_per_action: c.control.rate_hz / c.execution.action_rate_hz,
            target_kind: c.execution.target,
            arm_joints: c.robot.joints.len(),
            columns: launch.action_width(),
        }
    }

    /// Takes the observation's plan into the model's space.
    fn prepare(&mut self, obs: &Observation, norm: Option<&VectorNorm>) {
        let (h, dim) = (self.horizon, self.model_dim);
        let width = obs.committed_width.max(1);
        self.rows = obs.committed_len.min(h);
        self.delay = (obs.expected_delay_ticks as f64 / self.ticks_per_action).ceil() as usize;
        let columns = self.columns_used(width);
        self.target.fill(0.0);
        for (k, planned) in obs.committed.chunks(width).take(self.rows).enumerate() {
            for (j, &planned) in planned.iter().enumerate().take(columns) {
                let mut value = planned;
                if self.target_kind == ActionTarget::Delta && j < self.arm_joints {
                    value -= obs.joints.position[j];
                }
                let value = value as f32;
                self.target[k * dim + j] = norm.map_or(value, |n| n.normalize(j, value));
            }
        }
    }

    fn columns_used(&self, width: usize) -> usize {
        self.columns.min(width).min(self.model_dim)
    }
}

/// What one chunk's guidance needs, allocated once.
pub(crate) struct RtcGuide {
    pub(crate) params: RtcParams,
    plan: ModelPlan,
    pub(crate) session: Session,
    pub(crate) binding: IoBinding,
    pub(crate) cotangent: Tensor<f32>,
    pub(crate) cotangent_port: String,
    pub(crate) vjp_port: String,
    /// The weight of each value of the plan, [H, D].
    mask: Vec<f32>,
    /// The network's last output (velocity or noise prediction), [B, H, D];
    /// guided in place.
    pub(crate) output: Vec<f32>,
    /// Execution horizon s (`replan_after`).
    s: usize,
}

/// The sampler's ports a VJP graph must have beside the step graph's inputs.
pub(crate) struct VjpPorts<'a> {
    pub noisy_actions: &'a str,
    pub time: &'a str,
    /// The network's output (velocity or noise prediction).
    pub output: &'a str,
    pub cotangent: &'a str,
    pub vjp: &'a str,
}

impl RtcGuide {
    /// Opens the VJP graph and checks it against the step graph's inputs.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn load(
        launch: &Launch,
        params: RtcParams,
        session: Session,
        path: &Path,
        step_inputs: &[Port],
        ports: &VjpPorts<'_>,
        batch: usize,
        horizon: usize,
        model_dim: usize,
    ) -> Result<Self, PolicyLoadError> {
        let (vjp_in, vjp_out) = model_ports(&session);
        let mut problems = Vec::new();
        for p in step_inputs {
            if !vjp_in.iter().any(|q| q.name == p.name) {
                problems.push(format!(
                    "input `{}` of the step graph is not an input",
                    p.name
                ));
            }
        }
        let sample = |p: Option<&Port>, what: &str, name: &str| match p {
            None => Some(format!("{what} `{name}` is not in the model")),
            Some(p) if p.dtype != "float32" || p.shape.len() != 3 => Some(format!(
                "{what} `{name}` is {} {:?}, expected float32 [{batch}, {horizon}, {model_dim}]",
                p.dtype, p.shape
            )),
            Some(_) => None,
        };
        let find = |ports: &[Port], name: &str| ports.iter().find(|p| p.name == name).cloned();
        problems.extend(sample(
            find(&vjp_in, ports.cotangent).as_ref(),
            "input",
            ports.cotangent,
        ));
        problems.extend(sample(
            find(&vjp_out, ports.vjp).as_ref(),
            "output",
            ports.vjp,
        ));
        problems.extend(sample(
            find(&vjp_out, ports.output).as_ref(),
            "output",
            ports.output,
        ));
        for p in &vjp_in {
            let known = p.name == ports.cotangent
                || p.name == ports.noisy_actions
                || p.name == ports.time
                || step_inputs.iter().any(|q| q.name == p.name);
            if !known {
                problems.push(format!("input `{}` is not one the step graph has", p.name));
            }
        }
        if !problems.is_empty() {
            let expected = vec![
                "    the step graph's inputs, and".to_string(),
                format!(
                    "    {}: float32 [{batch}, {horizon}, {model_dim}]",
                    ports.cotangent
                ),
                format!(
                    "    {} (output): float32 [{batch}, {horizon}, {model_dim}]",
                    ports.vjp
                ),
                format!(
                    "    {} (output): float32 [{batch}, {horizon}, {model_dim}]",
                    ports.output
                ),
            ];
            return Err(mismatch(path, problems, expected, &vjp_in, &vjp_out));
        }
        let tensor_error = |e: ort::Error| PolicyLoadError::Model {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let allocator = Allocator::default();
        let cotangent =
            Tensor::<f32>::new(&allocator, [batch, horizon, model_dim]).map_err(tensor_error)?;
        let mut binding = session.create_binding().map_err(tensor_error)?;
        binding
            .bind_input(ports.cotangent, &cotangent)
            .map_err(tensor_error)?;
        for name in [ports.vjp, ports.output] {
            let out = Tensor::<f32>::new(&allocator, [batch, horizon, model_dim])
                .map_err(tensor_error)?;
            binding.bind_output(name, out).map_err(tensor_error)?;
        }
        Ok(Self {
            params,
            plan: ModelPlan::new(launch, horizon, model_dim),
            session,
            binding,
            cotangent,
            cotangent_port: ports.cotangent.to_string(),
            vjp_port: ports.vjp.to_string(),
            mask: vec![0.0; horizon * model_dim],
            output: vec![0.0; batch * horizon * model_dim],
            s: launch.config.execution.replan_after,
        })
    }

    /// Takes the observation's plan into the model's space and weighs it.
    /// Returns false when nothing constrains this chunk (no plan).
    pub(crate) fn prepare(&mut self, obs: &Observation, norm: Option<&VectorNorm>) -> bool {
        self.plan.prepare(obs, norm);
        let plan = &self.plan;
        let (h, dim) = (plan.horizon, plan.model_dim);
        let columns = plan.columns_used(obs.committed_width.max(1));
        self.mask.fill(0.0);
        let mut any = false;
        for k in 0..plan.rows {
            let weight = self.params.schedule.weight(k, plan.delay, self.s, h) as f32;
            for j in 0..columns {
                self.mask[k * dim + j] = weight;
                any |= weight > 0.0;
            }
        }
        any
    }

    /// Writes the cotangent `W ⊙ (y - x̂)` for every batch row, `x̂ = a x + b m`
    /// (m: the network's output of this step, in [`Self::output`]).
    pub(crate) fn fill_cotangent(&mut self, x: &[f32], denoiser: Denoiser) {
        let per_row = self.plan.target.len();
        let cotangent = self.cotangent.extract_tensor_mut().1;
        for (i, (c, (x, m))) in cotangent
            .iter_mut()
            .zip(x.iter().zip(&self.output))
            .enumerate()
        {
            let k = i % per_row;
            let denoised = denoiser.a * x + denoiser.b * m;
            *c = self.mask[k] * (self.plan.target[k] - denoised);
        }
    }

    /// Runs the VJP graph and guides [`Self::output`]: `m += kappa (a e + b J^T e)`.
    pub(crate) fn guide(
        &mut self,
        denoiser: Denoiser,
        graph_ns: &mut u64,
    ) -> Result<bool, PolicyError> {
        let started = Instant::now();
        let outputs = self.session.run_binding(&self.binding)?;
        *graph_ns += started.elapsed().as_nanos() as u64;
        let jv = outputs[self.vjp_port.as_str()]
            .try_extract_tensor::<f32>()?
            .1;
        let cotangent = self.cotangent.extract_tensor().1;
        let Denoiser { a, b, kappa } = denoiser;
        let mut finite = true;
        for ((m, e), jv) in self.output.iter_mut().zip(cotangent).zip(jv) {
            let g = a * e + b * jv;
            finite &= g.is_finite();
            *m += kappa * g;
        }
        Ok(finite)
    }
}

/// How one sampling step's clean-sample estimate and its guidance enter the
/// sampler: the estimate is affine in the sample and the network's output m,
/// `x̂ = a x + b m`, so `g = (d x̂ / d x)^T e = a e + b J^T e`; the guided output
/// is `m + kappa g`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Denoiser {
    pub a: f32,
    pub b: f32,
    pub kappa: f32,
}

impl Denoiser {
    /// A flow step at time t (openpi convention): `x̂ = x - t v`, `v - w g` with
    /// the paper's weight at τ = 1 - t.
    pub(crate) fn flow(params: &RtcParams, t: f32) -> Self {
        Self {
            a: 1.0,
            b: -t,
            kappa: -(params.guidance_weight(1.0 - f64::from(t)) as f32),
        }
    }

    /// A diffusers step: `x̂ = cx x + cm m` for its prediction type. ΠGDM adds
    /// `h = min(β, 1 / r²) g` to the score, r² = 1 - ᾱ (the posterior variance
    /// of unit-variance data); a score shift h moves x̂ by `(1 - ᾱ) / √ᾱ h` (Tweedie),
    /// and so the output by `(1 - ᾱ) / (√ᾱ cm) h`: `-√(1 - ᾱ) h` for an ε
    /// prediction, as in classifier guidance (Dhariwal & Nichol 2021, eq. 14).
    pub(crate) fn diffusion(params: &RtcParams, step: &Step) -> Self {
        let alpha_bar = f64::from(step.alpha_bar);
        let cm = f64::from(step.cm);
        let kappa = if alpha_bar < 1.0 && cm != 0.0 {
            (1.0 - alpha_bar) / (alpha_bar.sqrt() * cm)
                * params.diffusion_guidance_weight(alpha_bar)
        } else {
            0.0
        };
        Self {
            a: step.cx,
            b: step.cm,
            kappa: kappa as f32,
        }
    }
}

/// Training-time real-time chunking: the step graph's `prefix_mask` input and
/// the frozen rows written into the sample.
pub(crate) struct RtcPrefix {
    plan: ModelPlan,
    pub(crate) port: String,
    pub(crate) mask: Tensor<f32>,
    /// Rows frozen this chunk: the delay, as far as the plan reaches.
    frozen: usize,
    batch: usize,
}

impl RtcPrefix {
    pub(crate) fn new(
        launch: &Launch,
        port: &str,
        mask: Tensor<f32>,
        batch: usize,
        horizon: usize,
        model_dim: usize,
    ) -> Self {
        Self {
            plan: ModelPlan::new(launch, horizon, model_dim),
            port: port.to_string(),
            mask,
            frozen: 0,
            batch,
        }
    }

    /// Takes this chunk's plan and marks its first d rows; returns how many.
    pub(crate) fn prepare(&mut self, obs: &Observation, norm: Option<&VectorNorm>) -> usize {
        self.plan.prepare(obs, norm);
        let h = self.plan.horizon;
        self.frozen = self.plan.delay.min(self.plan.rows).min(h);
        let mask = self.mask.extract_tensor_mut().1;
        for (i, m) in mask.iter_mut().enumerate() {
            *m = if i % h < self.frozen { 1.0 } else { 0.0 };
        }
        self.frozen
    }

    /// Writes the frozen rows into every batch row of the sample `x` [B, H, D].
    pub(crate) fn impose(&self, x: &mut [f32]) {
        let per_row = self.plan.target.len();
        let frozen = self.frozen * self.plan.model_dim;
        for b in 0..self.batch {
            x[b * per_row..b * per_row + frozen].copy_from_slice(&self.plan.target[..frozen]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::{
        PredictionType, SamplerKind, ScheduleKind, Scheduler, TimestepSpacing, VarianceType,
        alphas_cumprod,
    };

    /// Whatever the network predicts, guidance is one shift h of the score: by
    /// Tweedie the clean estimate moves by (1 - ᾱ)/√ᾱ h and the noise estimate by
    /// -√(1 - ᾱ) h. Checked through the scheduler's own estimates of both.
    #[test]
    fn diffusion_guidance_shifts_the_score_for_every_prediction_type() {
        let params = RtcParams::default();
        for prediction_type in [
            PredictionType::Epsilon,
            PredictionType::Sample,
            PredictionType::VPrediction,
        ] {
            let plan = Scheduler {
                sampler: SamplerKind::Ddim,
                alphas_cumprod: alphas_cumprod(ScheduleKind::SquaredCosine, 100, 1e-4, 0.02),
                prediction_type,
                timestep_spacing: TimestepSpacing::Leading,
                clip: None,
                set_alpha_to_one: true,
                steps_offset: 0,
                eta: 0.0,
                variance_type: VarianceType::FixedSmall,
            }
            .plan(10)
            .unwrap();
            for step in plan.steps.iter() {
                let denoiser = Denoiser::diffusion(&params, step);
                let ab = f64::from(step.alpha_bar);
                let h = params.diffusion_guidance_weight(ab); // the score shift for g = 1
                let (x, m) = (0.7f64, -0.4f64);
                let clean = |m: f64| f64::from(step.cx) * x + f64::from(step.cm) * m;
                let noise = |m: f64| f64::from(step.ex) * x + f64::from(step.em) * m;
                let guided = m + f64::from(denoiser.kappa);
                let dx0 = clean(guided) - clean(m);
                let de = noise(guided) - noise(m);
                let (want_x0, want_e) = ((1.0 - ab) / ab.sqrt() * h, -(1.0 - ab).sqrt() * h);
                let close = |a: f64, b: f64| (a - b).abs() <= 1e-4 * (1.0 + b.abs());
                assert!(
                    close(dx0, want_x0) && close(de, want_e),
                    "{prediction_type:?} at {}: x0 {dx0} vs {want_x0}, eps {de} vs {want_e}",
                    step.timestep
                );
                assert_eq!((denoiser.a, denoiser.b), (step.cx, step.cm));
            }
        }
    }

    #[test]
    fn flow_guidance_is_the_papers_step() {
        let params = RtcParams::default();
        let d = Denoiser::flow(&params, 0.25);
        assert_eq!((d.a, d.b), (1.0, -0.25));
        assert_eq!(d.kappa, -(params.guidance_weight(0.75) as f32));
    }
}
