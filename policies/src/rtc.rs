//! Guided real-time chunking (Black, Galliker, Levine 2025, arXiv 2506.07339) in
//! the flow sampler: every Euler step is steered toward the plan the new chunk
//! replaces, by ΠGDM guidance through the velocity network's vector-Jacobian
//! product (a second graph, `[policy] vjp_model`).
//!
//! The paper integrates from noise at τ = 0 to data at τ = 1; openpi-style models
//! (ours) from t = 1 (noise) to t = 0, with v pointing from data to noise. With
//! τ = 1 - t both predict the same clean sample, `x̂ = x - t v(x, t)`, so one step
//! of the paper's algorithm in our convention is
//!
//! ```text
//! e = W ⊙ (y - x̂)                            the weighted gap to the previous plan y
//! g = e - t J_v(x)^T e                       (d x̂ / d x)^T e, one VJP-graph run
//! w = min(β, (1 - τ)/τ · (τ² + (1 - τ)²)/(1 - τ)²)   (β at τ = 0)
//! x += dt (v - w g)                          dt = -1/steps (the paper: v_paper + w g)
//! ```
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
    params: RtcParams,
    plan: ModelPlan,
    pub(crate) session: Session,
    pub(crate) binding: IoBinding,
    pub(crate) cotangent: Tensor<f32>,
    pub(crate) cotangent_port: String,
    pub(crate) vjp_port: String,
    /// The weight of each value of the plan, [H, D].
    mask: Vec<f32>,
    /// The last velocity, [B, H, D].
    pub(crate) velocity: Vec<f32>,
    /// Execution horizon s (`replan_after`).
    s: usize,
}

/// The sampler's ports a VJP graph must have beside the step graph's inputs.
pub(crate) struct VjpPorts<'a> {
    pub noisy_actions: &'a str,
    pub time: &'a str,
    pub velocity: &'a str,
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
            find(&vjp_out, ports.velocity).as_ref(),
            "output",
            ports.velocity,
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
                    ports.velocity
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
        for name in [ports.vjp, ports.velocity] {
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
            velocity: vec![0.0; batch * horizon * model_dim],
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

    /// Writes the cotangent `W ⊙ (y - x̂)` for every batch row, `x̂ = x - t v`.
    pub(crate) fn fill_cotangent(&mut self, x: &[f32], t: f32) {
        let per_row = self.plan.target.len();
        let cotangent = self.cotangent.extract_tensor_mut().1;
        for (i, (c, (x, v))) in cotangent
            .iter_mut()
            .zip(x.iter().zip(&self.velocity))
            .enumerate()
        {
            let k = i % per_row;
            let denoised = x - t * v;
            *c = self.mask[k] * (self.plan.target[k] - denoised);
        }
    }

    /// Runs the VJP graph and applies the guided Euler step to `x`.
    pub(crate) fn guided_step(
        &mut self,
        x: &mut [f32],
        t: f32,
        dt: f32,
        graph_ns: &mut u64,
    ) -> Result<bool, PolicyError> {
        let started = Instant::now();
        let outputs = self.session.run_binding(&self.binding)?;
        *graph_ns += started.elapsed().as_nanos() as u64;
        let jv = outputs[self.vjp_port.as_str()]
            .try_extract_tensor::<f32>()?
            .1;
        let weight = self.params.guidance_weight(1.0 - f64::from(t)) as f32;
        let cotangent = self.cotangent.extract_tensor().1;
        let mut finite = true;
        for (((x, v), e), jv) in x.iter_mut().zip(&self.velocity).zip(cotangent).zip(jv) {
            let g = e - t * jv;
            finite &= g.is_finite();
            *x += dt * (v - weight * g);
        }
        Ok(finite)
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
