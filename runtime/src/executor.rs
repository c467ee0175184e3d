//! Execution strategies: how action chunks become one target per tick.
//!
//! [`Executor`] is the contract; strategies register a [`crate::registry::StrategyKind`]
//! and are picked by `[execution] strategy` (the built-in ones are in
//! [`crate::strategies`]). [`ChunkExecutor`] runs them all: action k of a chunk
//! conditioned on tick t0 is the target for tick `t0 + (k + 1) * ticks_per_action`;
//! a new chunk replaces the queued actions or is merged into them ([`Merge`]).
//! When a chunk arrives late, the actions whose time has already passed are
//! dropped and the target is interpolated from the last target handed out, so
//! switching chunks never jumps. Between actions the target is interpolated
//! linearly (the control rate is usually higher than the action rate); after the
//! last action it holds.

use std::fmt;
use std::sync::Arc;

use crate::registry::StrategyKind;
use crate::types::{ActionChunk, MAX_JOINTS};

/// Turns chunks into the target of every tick. Runs inside the tick: no
/// allocation, no blocking.
pub trait Executor: Send {
    /// Drops any chunk and holds `position` (start-up, re-arm).
    fn hold(&mut self, position: &[f64]);
    /// Drops the active chunk and every chunk conditioned before `tick`, and holds
    /// `position`.
    fn flush(&mut self, position: &[f64], tick: u64);
    /// Takes a finished chunk at tick `now`.
    fn accept(&mut self, chunk: &ActionChunk, now: u64) -> Result<(), ChunkRejection>;
    /// The target for tick `now` (the safety filter limits it).
    fn target(&mut self, now: u64) -> &[f64];
    /// True when the next chunk should be requested at tick `now`.
    fn wants_chunk(&self, now: u64) -> bool;
    /// Actions not yet reached (for the status line).
    fn queued(&self, now: u64) -> usize;
    /// True while it has a plan (false before the first chunk and after a flush).
    fn has_plan(&self) -> bool {
        true
    }
    /// Its plan at the action times of a chunk requested at `now` (action k at
    /// `now + (k + 1) * ticks_per_action`), as far as the plan reaches, written row
    /// by row into `out`; returns the number of rows. Real-time chunking keeps the
    /// first rows (those that run while the chunk is computed) and steers the new
    /// chunk toward the rest.
    fn committed(&self, _now: u64, _out: &mut [f64]) -> usize {
        0
    }
    /// Requests the loop may have in flight at once (asynchronous strategies ask
    /// again before a chunk comes back); at most `policy::MAX_IN_FLIGHT`.
    fn max_in_flight(&self) -> usize {
        1
    }
    /// The loop sent a request at tick `now`.
    fn requested(&mut self, _now: u64) {}
}

/// How the target moves between the actions of the plan
/// (`[execution] interpolation`), when the control rate exceeds the action rate.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Interpolation {
    /// Straight lines: the velocity steps at every action.
    #[default]
    Linear,
    /// Quintic segments that match position, velocity and acceleration at every
    /// action (the velocity and acceleration there from its neighbours, at rest
    /// at the plan's end) and, when a chunk arrives, the target's own motion:
    /// continuous acceleration, so the safety filter's jerk limit is not what
    /// makes the motion smooth.
    Quintic,
}

/// What every strategy is built from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExecutorParams {
    /// Joints (action width the executor sees).
    pub dim: usize,
    /// Actions in a chunk as the policy returns it.
    pub horizon: usize,
    /// Control ticks per action (`control.rate_hz / execution.action_rate_hz`).
    pub ticks_per_action: f64,
    /// `execution.replan_after`.
    pub replan_after: usize,
    /// `execution.interpolation`.
    pub interpolation: Interpolation,
}

type BuildFn = dyn Fn(&ExecutorParams) -> Result<Box<dyn Executor>, String> + Send + Sync;

/// A checked strategy with its parameters: builds the executor of a run, and is
/// written to the run log so that replay builds the same one.
#[derive(Clone)]
pub struct ExecutorFactory {
    pub strategy: String,
    /// The strategy's own parameters, as checked.
    pub params: serde_json::Value,
    build: Arc<BuildFn>,
}

impl fmt::Debug for ExecutorFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecutorFactory")
            .field("strategy", &self.strategy)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl ExecutorFactory {
    /// A registered strategy with checked parameters.
    pub fn new(kind: Arc<dyn StrategyKind>, params: serde_json::Value) -> Self {
        let strategy = kind.name().to_string();
        let captured = params.clone();
        Self {
            strategy,
            params,
            build: Arc::new(move |p| kind.build(&captured, p)),
        }
    }

    /// The built-in `replace` strategy with its defaults.
    pub fn replace() -> Self {
        Self::new(Arc::new(ReplaceStrategy), serde_json::json!({}))
    }

    pub fn build(&self, p: &ExecutorParams) -> Result<Box<dyn Executor>, String> {
        (self.build)(p)
    }
}

pub use crate::strategies::{
    AggregateStrategy, ReplaceStrategy, RtcStrategy, SynchronousStrategy, TemporalEnsembleStrategy,
};

/// Why a chunk was not executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkRejection {
    #[error("chunk has shape [{horizon}, {dim}], expected [{expected_horizon}, {expected_dim}]")]
    Shape {
        horizon: usize,
        dim: usize,
        expected_horizon: usize,
        expected_dim: usize,
    },
    #[error("chunk contains NaN or infinite actions")]
    NonFinite,
    #[error(
        "chunk conditioned on tick {conditioned_on} arrived at tick {now}, older than the active chunk"
    )]
    Stale { conditioned_on: u64, now: u64 },
    #[error(
        "chunk conditioned on tick {conditioned_on} was planned before the stop flushed at tick {flushed_at}"
    )]
    Flushed {
        conditioned_on: u64,
        flushed_at: u64,
    },
}

/// How an arriving chunk joins the actions already queued.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Merge {
    /// The new chunk replaces the queue.
    Replace,
    /// Only the new chunk's first `n` actions are queued, timed from its
    /// arrival rather than its observation (openpi's synchronous broker).
    Synchronous { n: usize },
    /// Each timestep both chunks cover becomes `old * old_weight + new * new_weight`
    /// (LeRobot's `aggregate_fn`); the new chunk's other actions are queued.
    Aggregate { old_weight: f64, new_weight: f64 },
    /// ACT's temporal ensemble: every prediction of a timestep, the i-th oldest
    /// weighted `exp(-m * i)`.
    Ensemble { m: f64 },
}

/// When the executor asks for the next chunk.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Requests {
    /// Once `n` actions or fewer are left.
    AtMostQueued(usize),
    /// Every `n` action periods (the first at once).
    EveryActions(usize),
    /// When every queued action has run.
    WhenDone,
}

/// The built-in executor behind every strategy: a queue of timed actions,
/// interpolated into one target per tick.
///
/// An action of a chunk conditioned on tick t0 is due at tick
/// `t0 + (k + 1) * ticks_per_action` (the arrival tick for [`Merge::Synchronous`]).
/// When a chunk arrives, the actions whose time has passed are dropped and the
/// target is interpolated from the target of the previous tick, so that switching
/// chunks never jumps. Two actions are the same timestep when less than half an
/// action period apart.
pub struct ChunkExecutor {
    dim: usize,
    /// Actions per chunk from the policy.
    model_horizon: usize,
    /// Actions of a chunk executed: those from `first_action` on.
    horizon: usize,
    first_action: usize,
    ticks_per_action: f64,
    merge: Merge,
    requests: Requests,
    in_flight: usize,
    /// Due ticks of the queued actions, ascending; `values` holds their rows and
    /// `weights` the summed ensemble weight of each.
    times: Vec<f64>,
    values: Vec<f64>,
    weights: Vec<f64>,
    predictions: Vec<u32>,
    len: usize,
    /// Observation tick of the newest chunk accepted since the last flush.
    newest: Option<u64>,
    last_request: Option<u64>,
    /// Chunks conditioned before this tick were planned before a stop: dropped.
    not_before: u64,
    anchor: [f64; MAX_JOINTS],
    anchor_tick: f64,
    /// The target's velocity and acceleration at the anchor, per tick (quintic).
    anchor_velocity: [f64; MAX_JOINTS],
    anchor_acceleration: [f64; MAX_JOINTS],
    interpolation: Interpolation,
    target: [f64; MAX_JOINTS],
}

impl ChunkExecutor {
    /// The `replace` strategy: a chunk is asked for once `replan_after` of the
    /// active one's actions have been reached.
    pub fn new(dim: usize, horizon: usize, ticks_per_action: f64, replan_after: usize) -> Self {
        let capacity = 2 * horizon + 4;
        Self {
            dim,
            model_horizon: horizon,
            horizon,
            first_action: 0,
            ticks_per_action,
            merge: Merge::Replace,
            requests: Requests::AtMostQueued(horizon.saturating_sub(replan_after)),
            in_flight: 1,
            times: vec![0.0; capacity],
            values: vec![0.0; capacity * dim],
            weights: vec![0.0; capacity],
            predictions: vec![0; capacity],
            len: 0,
            newest: None,
            last_request: None,
            not_before: 0,
            anchor: [0.0; MAX_JOINTS],
            anchor_tick: 0.0,
            anchor_velocity: [0.0; MAX_JOINTS],
            anchor_acceleration: [0.0; MAX_JOINTS],
            interpolation: Interpolation::Linear,
            target: [0.0; MAX_JOINTS],
        }
    }

    pub fn interpolating(mut self, interpolation: Interpolation) -> Self {
        self.interpolation = interpolation;
        self
    }

    /// Executes each chunk from action `first` on (checked against the horizon
    /// by [`ReplaceStrategy`]).
    pub fn starting_at(mut self, first: usize) -> Self {
        let first = first.min(self.model_horizon.saturating_sub(1));
        let executed = self.model_horizon - first;
        if let Requests::AtMostQueued(n) = &mut self.requests {
            *n = n.saturating_sub(first);
        }
        self.first_action = first;
        self.horizon = executed;
        self
    }

    pub fn merging(mut self, merge: Merge) -> Self {
        self.merge = merge;
        self
    }

    pub fn requesting(mut self, requests: Requests) -> Self {
        self.requests = requests;
        self
    }

    /// Requests in flight at once (at most `policy::MAX_IN_FLIGHT`).
    pub fn in_flight(mut self, n: usize) -> Self {
        self.in_flight = n.max(1);
        self
    }

    fn row(&self, i: usize) -> &[f64] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }

    /// Index of the first queued action due after `tick`.
    fn first_after(&self, tick: f64) -> usize {
        self.times[..self.len].partition_point(|&t| t <= tick)
    }

    /// Drops the queued actions due at or before `tick`.
    fn drop_through(&mut self, tick: f64) {
        let gone = self.first_after(tick);
        if gone == 0 {
            return;
        }
        let dim = self.dim;
        self.times.copy_within(gone..self.len, 0);
        self.weights.copy_within(gone..self.len, 0);
        self.predictions.copy_within(gone..self.len, 0);
        self.values.copy_within(gone * dim..self.len * dim, 0);
        self.len -= gone;
    }

    /// Adds one action of a new chunk due at `time`: merged into the queued
    /// action of the same timestep, or inserted in order.
    fn add(&mut self, time: f64, action: &[f32]) {
        let dim = self.dim;
        let at = self.first_after(time - self.ticks_per_action / 2.0);
        let same = at < self.len && (self.times[at] - time).abs() < self.ticks_per_action / 2.0;
        if same {
            let (weight, count) = (self.weights[at], self.predictions[at]);
            let row = &mut self.values[at * dim..(at + 1) * dim];
            match self.merge {
                Merge::Aggregate {
                    old_weight,
                    new_weight,
                } => {
                    for (old, new) in row.iter_mut().zip(action) {
                        *old = *old * old_weight + f64::from(*new) * new_weight;
                    }
                }
                Merge::Ensemble { m } => {
                    let w = (-m * f64::from(count)).exp();
                    for (old, new) in row.iter_mut().zip(action) {
                        *old = (*old * weight + f64::from(*new) * w) / (weight + w);
                    }
                    self.weights[at] = weight + w;
                    self.predictions[at] = count + 1;
                }
                Merge::Replace | Merge::Synchronous { .. } => {
                    for (old, new) in row.iter_mut().zip(action) {
                        *old = f64::from(*new);
                    }
                }
            }
            // The newest prediction's clock.
            self.times[at] = time;
            return;
        }
        if self.len == self.times.len() {
            return; // cannot happen: the queue spans at most two horizons
        }
        self.times.copy_within(at..self.len, at + 1);
        self.weights.copy_within(at..self.len, at + 1);
        self.predictions.copy_within(at..self.len, at + 1);
        self.values
            .copy_within(at * dim..self.len * dim, (at + 1) * dim);
        self.times[at] = time;
        self.weights[at] = 1.0;
        self.predictions[at] = 1;
        for (slot, a) in self.values[at * dim..(at + 1) * dim].iter_mut().zip(action) {
            *slot = f64::from(*a);
        }
        self.len += 1;
    }
}

impl Executor for ChunkExecutor {
    fn hold(&mut self, position: &[f64]) {
        self.len = 0;
        self.anchor_velocity = [0.0; MAX_JOINTS];
        self.anchor_acceleration = [0.0; MAX_JOINTS];
        self.newest = None;
        self.last_request = None;
        self.target[..self.dim].copy_from_slice(&position[..self.dim]);
    }

    fn flush(&mut self, position: &[f64], tick: u64) {
        self.hold(position);
        self.not_before = tick;
    }

    fn accept(&mut self, chunk: &ActionChunk, now: u64) -> Result<(), ChunkRejection> {
        if chunk.horizon != self.model_horizon
            || chunk.dim != self.dim
            || chunk.actions.len() != self.model_horizon * self.dim
        {
            return Err(ChunkRejection::Shape {
                horizon: chunk.horizon,
                dim: chunk.dim,
                expected_horizon: self.model_horizon,
                expected_dim: self.dim,
            });
        }
        if !chunk.is_finite() {
            return Err(ChunkRejection::NonFinite);
        }
        if chunk.conditioned_on_tick < self.not_before {
            return Err(ChunkRejection::Flushed {
                conditioned_on: chunk.conditioned_on_tick,
                flushed_at: self.not_before,
            });
        }
        if let Some(newest) = self.newest
            && chunk.conditioned_on_tick < newest
        {
            return Err(ChunkRejection::Stale {
                conditioned_on: chunk.conditioned_on_tick,
                now,
            });
        }
        // Interpolate from what was commanded on the previous tick (quintic: and
        // from how it was moving).
        if self.interpolation == Interpolation::Quintic && self.len > 0 {
            let (_, velocity, acceleration) = self.quintic_at(now as f64 - 1.0);
            self.anchor_velocity = velocity;
            self.anchor_acceleration = acceleration;
        } else {
            self.anchor_velocity = [0.0; MAX_JOINTS];
            self.anchor_acceleration = [0.0; MAX_JOINTS];
        }
        self.anchor = self.target;
        self.anchor_tick = now as f64 - 1.0;
        let (start, executed) = match self.merge {
            Merge::Synchronous { n } => (now, n.min(self.horizon)),
            _ => (chunk.conditioned_on_tick, self.horizon),
        };
        if matches!(self.merge, Merge::Replace | Merge::Synchronous { .. }) {
            self.len = 0;
        } else {
            self.drop_through(self.anchor_tick);
        }
        let dim = self.dim;
        let actions = &chunk.actions[self.first_action * dim..];
        for k in 0..executed {
            let time = self.point_tick(start, k);
            // Delay compensation: an action whose time has come is dropped (the
            // target heads from the current one to the next action due, rather
            // than jumping to one due this very tick).
            if time > now as f64 {
                self.add(time, &actions[k * dim..(k + 1) * dim]);
            }
        }
        self.newest = Some(chunk.conditioned_on_tick);
        Ok(())
    }

    fn target(&mut self, now: u64) -> &[f64] {
        if self.len > 0 {
            self.target = self.value_at(now as f64);
        }
        &self.target[..self.dim]
    }

    fn wants_chunk(&self, now: u64) -> bool {
        let now_f = now as f64;
        let since_request = self.last_request.map(|t| now_f - t as f64);
        match self.requests {
            Requests::AtMostQueued(n) => {
                // More than one in flight: at most one request per action period.
                self.queued(now) <= n
                    && (self.in_flight == 1
                        || since_request.is_none_or(|s| s >= self.ticks_per_action))
            }
            Requests::EveryActions(n) => {
                since_request.is_none_or(|s| s >= n as f64 * self.ticks_per_action)
            }
            Requests::WhenDone => self.len == 0 || now_f >= self.times[self.len - 1],
        }
    }

    fn requested(&mut self, now: u64) {
        self.last_request = Some(now);
    }

    fn has_plan(&self) -> bool {
        self.len > 0
    }

    fn committed(&self, now: u64, out: &mut [f64]) -> usize {
        let dim = self.dim;
        let Some(&last) = self.times[..self.len].last() else {
            return 0;
        };
        let mut rows = 0;
        for k in 0..self.model_horizon {
            let time = self.point_tick(now, k);
            let Some(row) = out.get_mut(rows * dim..(rows + 1) * dim) else {
                break;
            };
            if time > last {
                break;
            }
            row.copy_from_slice(&self.value_at(time)[..dim]);
            rows += 1;
        }
        rows
    }

    fn queued(&self, now: u64) -> usize {
        self.len - self.first_after(now as f64)
    }

    fn max_in_flight(&self) -> usize {
        self.in_flight
    }
}

impl ChunkExecutor {
    fn point_tick(&self, start: u64, k: usize) -> f64 {
        start as f64 + (k as f64 + 1.0) * self.ticks_per_action
    }

    /// The target at tick `time` (a non-empty queue): interpolated from the anchor
    /// or the previous action to the next action due, the last one held after it.
    fn value_at(&self, time: f64) -> [f64; MAX_JOINTS] {
        if self.interpolation == Interpolation::Quintic {
            return self.quintic_at(time).0;
        }
        let dim = self.dim;
        let mut value = [0.0; MAX_JOINTS];
        // First action still ahead (and ahead of the anchor).
        let next = self.first_after(time.max(self.anchor_tick));
        if next == self.len {
            value[..dim].copy_from_slice(self.row(self.len - 1));
            return value;
        }
        let to_tick = self.times[next];
        let (from_tick, from): (f64, [f64; MAX_JOINTS]) =
            if next > 0 && self.times[next - 1] > self.anchor_tick {
                let mut from = [0.0; MAX_JOINTS];
                from[..dim].copy_from_slice(self.row(next - 1));
                (self.times[next - 1], from)
            } else {
                (self.anchor_tick, self.anchor)
            };
        let alpha = ((time - from_tick) / (to_tick - from_tick)).clamp(0.0, 1.0);
        let to = self.row(next);
        for j in 0..dim {
            value[j] = from[j] + alpha * (to[j] - from[j]);
        }
        value
    }

    /// Velocity and acceleration (per tick) at queued action `i`: from its
    /// neighbours (non-uniform central differences); one-sided after a splice;
    /// at rest at the plan's end.
    fn knot(&self, i: usize, j: usize) -> (f64, f64) {
        let dim = self.dim;
        let p = |k: usize| self.values[k * dim + j];
        if i + 1 >= self.len {
            return (0.0, 0.0);
        }
        let (t1, t2) = (self.times[i], self.times[i + 1]);
        let forward = (p(i + 1) - p(i)) / (t2 - t1);
        if i == 0 || self.times[i - 1] <= self.anchor_tick {
            return (forward, 0.0);
        }
        let t0 = self.times[i - 1];
        let backward = (p(i) - p(i - 1)) / (t1 - t0);
        let velocity = (p(i + 1) - p(i - 1)) / (t2 - t0);
        let acceleration = 2.0 * (forward - backward) / (t2 - t0);
        (velocity, acceleration)
    }

    /// Position, velocity and acceleration at tick `time` on the quintic plan.
    #[allow(clippy::type_complexity)]
    fn quintic_at(&self, time: f64) -> ([f64; MAX_JOINTS], [f64; MAX_JOINTS], [f64; MAX_JOINTS]) {
        let dim = self.dim;
        let (mut p, mut v, mut a) = ([0.0; MAX_JOINTS], [0.0; MAX_JOINTS], [0.0; MAX_JOINTS]);
        let next = self.first_after(time.max(self.anchor_tick));
        if next == self.len {
            p[..dim].copy_from_slice(self.row(self.len - 1));
            return (p, v, a);
        }
        let to_tick = self.times[next];
        let from_point = next > 0 && self.times[next - 1] > self.anchor_tick;
        let from_tick = if from_point {
            self.times[next - 1]
        } else {
            self.anchor_tick
        };
        let span = to_tick - from_tick;
        let s = ((time - from_tick) / span).clamp(0.0, 1.0);
        let basis = QuinticBasis::at(s);
        for j in 0..dim {
            let (p0, v0, a0) = if from_point {
                let (v0, a0) = self.knot(next - 1, j);
                (self.values[(next - 1) * dim + j], v0, a0)
            } else {
                (
                    self.anchor[j],
                    self.anchor_velocity[j],
                    self.anchor_acceleration[j],
                )
            };
            let (v1, a1) = self.knot(next, j);
            let p1 = self.values[next * dim + j];
            let coefficients = [
                p0,
                v0 * span,
                a0 * span * span,
                a1 * span * span,
                v1 * span,
                p1,
            ];
            let dot = |h: &[f64; 6]| h.iter().zip(&coefficients).map(|(h, c)| h * c).sum::<f64>();
            p[j] = dot(&basis.position);
            v[j] = dot(&basis.velocity) / span;
            a[j] = dot(&basis.acceleration) / (span * span);
        }
        (p, v, a)
    }
}

/// The quintic Hermite basis at s in [0, 1] and its first two derivatives, for
/// the coefficients (p0, v0 T, a0 T^2, a1 T^2, v1 T, p1).
struct QuinticBasis {
    position: [f64; 6],
    velocity: [f64; 6],
    acceleration: [f64; 6],
}

impl QuinticBasis {
    fn at(s: f64) -> Self {
        let (s2, s3, s4, s5) = (s * s, s * s * s, s * s * s * s, s * s * s * s * s);
        Self {
            position: [
                1.0 - 10.0 * s3 + 15.0 * s4 - 6.0 * s5,
                s - 6.0 * s3 + 8.0 * s4 - 3.0 * s5,
                0.5 * s2 - 1.5 * s3 + 1.5 * s4 - 0.5 * s5,
                0.5 * s3 - s4 + 0.5 * s5,
                -4.0 * s3 + 7.0 * s4 - 3.0 * s5,
                10.0 * s3 - 15.0 * s4 + 6.0 * s5,
            ],
            velocity: [
                -30.0 * s2 + 60.0 * s3 - 30.0 * s4,
                1.0 - 18.0 * s2 + 32.0 * s3 - 15.0 * s4,
                s - 4.5 * s2 + 6.0 * s3 - 2.5 * s4,
                1.5 * s2 - 4.0 * s3 + 2.5 * s4,
                -12.0 * s2 + 28.0 * s3 - 15.0 * s4,
                30.0 * s2 - 60.0 * s3 + 30.0 * s4,
            ],
            acceleration: [
                -60.0 * s + 180.0 * s2 - 120.0 * s3,
                -36.0 * s + 96.0 * s2 - 60.0 * s3,
                1.0 - 9.0 * s + 18.0 * s2 - 10.0 * s3,
                3.0 * s - 12.0 * s2 + 10.0 * s3,
                -24.0 * s + 84.0 * s2 - 60.0 * s3,
                60.0 * s - 180.0 * s2 + 120.0 * s3,
            ],
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A one-joint chunk conditioned on tick `start`.
    pub(crate) fn chunk(start: u64, values: &[f32]) -> ActionChunk {
        ActionChunk {
            id: 1,
            conditioned_on_tick: start,
            horizon: values.len(),
            dim: 1,
            actions: values.to_vec(),
            infer_ns: 0,
            model_version: 0,
            choice: Default::default(),
            noise: Vec::new(),
            noise_from_latent: false,
        }
    }

    #[test]
    fn interpolates_between_actions_and_holds_the_last() {
        let mut ex = ChunkExecutor::new(1, 3, 10.0, 2);
        ex.hold(&[0.0]);
        ex.accept(&chunk(0, &[1.0, 2.0, 3.0]), 1).unwrap();
        // Anchor: 0.0 at tick 0, first action 1.0 at tick 10.
        assert!((ex.target(5)[0] - 0.5).abs() < 1e-12);
        assert!((ex.target(10)[0] - 1.0).abs() < 1e-12);
        assert!((ex.target(15)[0] - 1.5).abs() < 1e-12);
        assert!((ex.target(30)[0] - 3.0).abs() < 1e-12);
        assert!((ex.target(99)[0] - 3.0).abs() < 1e-12);
    }

    #[test]
    fn late_chunk_drops_past_actions_without_jumping() {
        let mut ex = ChunkExecutor::new(1, 4, 10.0, 2);
        ex.hold(&[0.0]);
        ex.accept(&chunk(0, &[1.0, 2.0, 3.0, 4.0]), 1).unwrap();
        let before = ex.target(14)[0];
        // Conditioned on tick 5 but arriving at tick 15: its first action (due at
        // tick 15) is dropped; the target heads from where it was to the second.
        ex.accept(&chunk(5, &[10.0, 20.0, 30.0, 40.0]), 15).unwrap();
        let after = ex.target(15)[0];
        let expected = before + (20.0 - before) / 11.0;
        assert!(
            (after - expected).abs() < 1e-12,
            "one step of eleven toward the action due at 25: {after}"
        );
        assert_eq!(ex.target(25)[0], 20.0);
        assert!(before < 2.0);
        let mut ex = ChunkExecutor::new(1, 4, 10.0, 2);
        ex.hold(&[0.0]);
        ex.accept(&chunk(0, &[1.0, 2.0, 3.0, 4.0]), 3).unwrap();
        let t2 = ex.target(3)[0];
        let t3 = ex.target(4)[0];
        assert!(t2 > 0.0 && t2 < 0.3 && t3 > t2, "smooth start: {t2} {t3}");
    }

    #[test]
    fn rejects_bad_chunks_and_keeps_the_active_one() {
        let mut ex = ChunkExecutor::new(1, 2, 10.0, 1);
        ex.hold(&[0.5]);
        assert_eq!(
            ex.accept(&chunk(0, &[1.0, f32::NAN]), 1),
            Err(ChunkRejection::NonFinite)
        );
        assert!(matches!(
            ex.accept(&chunk(0, &[1.0, 2.0, 3.0]), 1),
            Err(ChunkRejection::Shape { .. })
        ));
        assert_eq!(ex.target(50)[0], 0.5, "still holding");
        ex.accept(&chunk(10, &[1.0, 2.0]), 11).unwrap();
        assert!(matches!(
            ex.accept(&chunk(5, &[1.0, 2.0]), 12),
            Err(ChunkRejection::Stale { .. })
        ));
    }

    #[test]
    fn a_flush_drops_chunks_planned_before_it() {
        let mut ex = ChunkExecutor::new(1, 2, 10.0, 1);
        ex.hold(&[0.0]);
        ex.accept(&chunk(0, &[1.0, 2.0]), 1).unwrap();
        ex.flush(&[0.3], 20);
        assert_eq!(ex.target(25)[0], 0.3, "holds where it was flushed");
        assert!(matches!(
            ex.accept(&chunk(19, &[1.0, 2.0]), 22),
            Err(ChunkRejection::Flushed { .. })
        ));
        ex.accept(&chunk(20, &[1.0, 2.0]), 22).unwrap();
    }

    #[test]
    fn first_action_skips_the_chunks_past() {
        // A Diffusion Policy chunk with n_obs_steps = 2 starts one action in the past.
        let mut ex = ChunkExecutor::new(1, 4, 10.0, 2).starting_at(1);
        ex.hold(&[0.0]);
        ex.accept(&chunk(0, &[-5.0, 1.0, 2.0, 3.0]), 1).unwrap();
        assert!((ex.target(10)[0] - 1.0).abs() < 1e-12);
        assert!((ex.target(30)[0] - 3.0).abs() < 1e-12);
        assert!(ex.target(5)[0] > 0.0, "never heads for the skipped action");
        assert_eq!(ex.queued(0), 3);
        // The strategy refuses what cannot run.
        let p = ExecutorParams {
            dim: 1,
            horizon: 4,
            ticks_per_action: 10.0,
            replan_after: 3,
            interpolation: Interpolation::Linear,
        };
        let replace = ReplaceStrategy;
        assert!(
            replace
                .build(&serde_json::json!({"first_action": 1}), &p)
                .is_ok()
        );
        assert!(
            replace
                .build(&serde_json::json!({"first_action": 2}), &p)
                .is_err()
        );
        assert!(replace.build(&serde_json::json!({"first": 2}), &p).is_err());
        assert!(replace.build(&serde_json::Value::Null, &p).is_ok());
    }

    #[test]
    fn the_plan_is_sampled_at_the_next_chunks_action_times() {
        let mut ex = ChunkExecutor::new(1, 5, 10.0, 2);
        ex.hold(&[0.0]);
        let mut out = [0.0; 5];
        assert_eq!(ex.committed(0, &mut out), 0, "nothing planned yet");
        ex.accept(&chunk(0, &[1.0, 2.0, 3.0, 4.0, 5.0]), 1).unwrap();
        // Requested at tick 20: its actions are due at 30, 40, 50; the plan ends at 50.
        assert_eq!(ex.committed(20, &mut out), 3);
        assert_eq!(&out[..3], &[3.0, 4.0, 5.0]);
        // Off the grid (tick 15): interpolated between the plan's actions.
        assert_eq!(ex.committed(15, &mut out), 3);
        assert_eq!(&out[..3], &[2.5, 3.5, 4.5]);
        assert_eq!(ex.committed(45, &mut out), 0, "past the plan's end");
        let mut short = [0.0; 2];
        assert_eq!(ex.committed(0, &mut short), 2, "as many rows as fit");
    }

    #[test]
    fn quintic_interpolation_keeps_acceleration_continuous_across_actions_and_switches() {
        // 100 ticks per action, so that per-tick differences approach derivatives.
        let track = |interpolation| {
            let mut ex = ChunkExecutor::new(1, 6, 100.0, 3).interpolating(interpolation);
            ex.hold(&[0.0]);
            ex.accept(&chunk(0, &[1.0, 0.5, 2.0, 1.0, 1.5, 1.5]), 1)
                .unwrap();
            let mut xs = vec![0.0];
            for t in 1..900 {
                if t == 330 {
                    // Mid-segment, a chunk conditioned on tick 200 (its first action,
                    // due at 300, passed).
                    ex.accept(&chunk(200, &[9.0, 2.0, 0.0, 0.5, 1.0, 1.0]), t)
                        .unwrap();
                }
                xs.push(ex.target(t)[0]);
            }
            xs
        };
        let (linear, quintic) = (track(Interpolation::Linear), track(Interpolation::Quintic));
        // Both pass through the actions at their times.
        for (tick, value) in [(100, 1.0), (200, 0.5), (400, 2.0), (500, 0.0), (600, 0.5)] {
            assert_eq!(linear[tick], value, "linear at {tick}");
            assert!((quintic[tick] - value).abs() < 1e-12, "quintic at {tick}");
        }
        // Continuous acceleration: from one tick to the next the second difference
        // changes by a small part of its size (everywhere, the switch included).
        // Linear targets have none between actions and a spike at each action: the
        // change is the whole of it.
        let roughness = |xs: &[f64]| {
            let a: Vec<f64> = xs.windows(3).map(|w| w[2] - 2.0 * w[1] + w[0]).collect();
            let largest = a.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
            let step = a
                .windows(2)
                .fold(0.0_f64, |m, w| m.max((w[1] - w[0]).abs()));
            step / largest
        };
        assert!(roughness(&quintic) < 0.2, "{}", roughness(&quintic));
        assert!(roughness(&linear) > 0.99, "{}", roughness(&linear));
        // Past the plan it holds still.
        assert_eq!(quintic[899], 1.0);
    }

    #[test]
    fn asks_for_a_chunk_at_the_replan_point() {
        let mut ex = ChunkExecutor::new(1, 10, 10.0, 3);
        assert!(ex.wants_chunk(0));
        ex.hold(&[0.0]);
        ex.accept(&chunk(0, &[0.0; 10]), 1).unwrap();
        assert!(!ex.wants_chunk(29));
        assert!(ex.wants_chunk(30));
        assert_eq!(ex.queued(29), 8);
    }
}
