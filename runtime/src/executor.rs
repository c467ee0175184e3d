//! Execution strategies: how action chunks become one target per tick.
//!
//! [`Executor`] is the contract; strategies register a [`crate::registry::StrategyKind`]
//! and are picked by `[execution] strategy`. The built-in `replace` strategy
//! ([`ChunkExecutor`], [`ReplaceStrategy`]) executes the newest chunk open loop:
//! action k of a chunk conditioned on tick t0 is the target for tick
//! `t0 + (k + 1) * ticks_per_action`. When a chunk arrives late, the actions whose
//! time has already passed are dropped and the target is interpolated from the last
//! target handed out, so switching chunks never jumps. Between actions the target
//! is interpolated linearly (the control rate is usually higher than the action
//! rate); after the last action it holds.

use std::fmt;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::launch::LaunchError;
use crate::registry::{KindTable, StrategyKind, schema_of};
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
    /// The targets it will hand out at the action points after `now` up to
    /// `now + delay_ticks` (what a chunk requested now cannot change), written
    /// row by row into `out`; returns the number of rows.
    fn committed(&self, _now: u64, _delay_ticks: u64, _out: &mut [f64]) -> usize {
        0
    }
    /// Requests the loop may have in flight at once (asynchronous strategies ask
    /// again before a chunk comes back); at most `policy::MAX_IN_FLIGHT`.
    fn max_in_flight(&self) -> usize {
        1
    }
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

/// `[execution] strategy = "replace"` (the default): the newest chunk replaces
/// the active one; between actions the target is interpolated.
pub struct ReplaceStrategy;

/// The `replace` strategy's own fields of `[execution]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplaceParams {
    /// Index of the first action executed: LeRobot's Diffusion Policy executes
    /// from `n_obs_steps - 1`, the earlier actions being the past it denoised too.
    #[serde(default)]
    pub first_action: usize,
}

impl StrategyKind for ReplaceStrategy {
    fn name(&self) -> &'static str {
        "replace"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<ReplaceParams>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<serde_json::Value, LaunchError> {
        let params: ReplaceParams = table.parse()?;
        let launch = table.launch();
        let horizon = launch.policy().horizon();
        let replan_after = launch.config.execution.replan_after;
        if params.first_action + replan_after > horizon {
            return Err(table.error_at(
                "first_action",
                format!(
                    "{} skipped + replan_after {replan_after} is more than the policy's horizon {horizon}",
                    params.first_action
                ),
            ));
        }
        serde_json::to_value(params).map_err(|e| table.error_at("", e.to_string()))
    }

    fn build(
        &self,
        params: &serde_json::Value,
        p: &ExecutorParams,
    ) -> Result<Box<dyn Executor>, String> {
        let params: ReplaceParams = if params.is_null() {
            ReplaceParams::default()
        } else {
            serde_json::from_value(params.clone()).map_err(|e| e.to_string())?
        };
        if params.first_action + p.replan_after.max(1) > p.horizon {
            return Err(format!(
                "first_action {} + replan_after {} exceeds the horizon {}",
                params.first_action, p.replan_after, p.horizon
            ));
        }
        Ok(Box::new(
            ChunkExecutor::new(p.dim, p.horizon, p.ticks_per_action, p.replan_after)
                .starting_at(params.first_action),
        ))
    }
}

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

pub struct ChunkExecutor {
    dim: usize,
    /// Actions per chunk from the policy.
    model_horizon: usize,
    /// Actions of a chunk executed: those from `first_action` on.
    horizon: usize,
    first_action: usize,
    ticks_per_action: f64,
    replan_after: usize,
    /// Row-major [horizon][dim] of the active chunk.
    points: Vec<f64>,
    chunk_start: Option<u64>,
    /// Chunks conditioned before this tick were planned before a stop: dropped.
    not_before: u64,
    anchor: [f64; MAX_JOINTS],
    anchor_tick: f64,
    target: [f64; MAX_JOINTS],
}

impl ChunkExecutor {
    pub fn new(dim: usize, horizon: usize, ticks_per_action: f64, replan_after: usize) -> Self {
        Self {
            dim,
            model_horizon: horizon,
            horizon,
            first_action: 0,
            ticks_per_action,
            replan_after,
            points: vec![0.0; horizon * dim],
            chunk_start: None,
            not_before: 0,
            anchor: [0.0; MAX_JOINTS],
            anchor_tick: 0.0,
            target: [0.0; MAX_JOINTS],
        }
    }

    /// Executes each chunk from action `first` on (checked against the horizon
    /// by [`ReplaceStrategy`]).
    pub fn starting_at(mut self, first: usize) -> Self {
        let first = first.min(self.model_horizon.saturating_sub(1));
        self.first_action = first;
        self.horizon = self.model_horizon - first;
        self.points.truncate(self.horizon * self.dim);
        self
    }
}

impl Executor for ChunkExecutor {
    fn hold(&mut self, position: &[f64]) {
        self.chunk_start = None;
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
        if let Some(start) = self.chunk_start
            && chunk.conditioned_on_tick < start
        {
            return Err(ChunkRejection::Stale {
                conditioned_on: chunk.conditioned_on_tick,
                now,
            });
        }
        let executed = &chunk.actions[self.first_action * self.dim..];
        for (point, action) in self.points.iter_mut().zip(executed) {
            *point = f64::from(*action);
        }
        self.chunk_start = Some(chunk.conditioned_on_tick);
        // Interpolate from what was commanded on the previous tick.
        self.anchor = self.target;
        self.anchor_tick = now as f64 - 1.0;
        Ok(())
    }

    fn target(&mut self, now: u64) -> &[f64] {
        let Some(start) = self.chunk_start else {
            return &self.target[..self.dim];
        };
        let now_f = now as f64;
        let dim = self.dim;
        // First action still ahead of us (and ahead of the anchor).
        let next =
            (0..self.horizon).find(|&k| self.point_tick(start, k) > now_f.max(self.anchor_tick));
        match next {
            None => {
                let last = &self.points[(self.horizon - 1) * dim..];
                self.target[..dim].copy_from_slice(last);
            }
            Some(k) => {
                let to_tick = self.point_tick(start, k);
                let prev_tick = if k > 0 {
                    self.point_tick(start, k - 1)
                } else {
                    f64::NEG_INFINITY
                };
                let (from_tick, from): (f64, [f64; MAX_JOINTS]) = if prev_tick > self.anchor_tick {
                    let mut from = [0.0; MAX_JOINTS];
                    from[..dim].copy_from_slice(&self.points[(k - 1) * dim..k * dim]);
                    (prev_tick, from)
                } else {
                    (self.anchor_tick, self.anchor)
                };
                let alpha = ((now_f - from_tick) / (to_tick - from_tick)).clamp(0.0, 1.0);
                let to = &self.points[k * dim..(k + 1) * dim];
                for j in 0..dim {
                    self.target[j] = from[j] + alpha * (to[j] - from[j]);
                }
            }
        }
        &self.target[..dim]
    }

    /// No chunk yet, or `replan_after` actions of the active one have been reached.
    fn wants_chunk(&self, now: u64) -> bool {
        match self.chunk_start {
            None => true,
            Some(start) => now as f64 >= self.point_tick(start, self.replan_after - 1),
        }
    }

    fn committed(&self, now: u64, delay_ticks: u64, out: &mut [f64]) -> usize {
        let Some(start) = self.chunk_start else {
            return 0;
        };
        let (from, to) = (now as f64, (now + delay_ticks) as f64);
        let mut rows = 0;
        for k in 0..self.horizon {
            let at = self.point_tick(start, k);
            if at <= from || at > to {
                continue;
            }
            let Some(row) = out.get_mut(rows * self.dim..(rows + 1) * self.dim) else {
                break;
            };
            row.copy_from_slice(&self.points[k * self.dim..(k + 1) * self.dim]);
            rows += 1;
        }
        rows
    }

    fn queued(&self, now: u64) -> usize {
        self.chunk_start
            .map(|start| {
                (0..self.horizon)
                    .filter(|&k| self.point_tick(start, k) > now as f64)
                    .count()
            })
            .unwrap_or(0)
    }
}

impl ChunkExecutor {
    fn point_tick(&self, start: u64, k: usize) -> f64 {
        start as f64 + (k as f64 + 1.0) * self.ticks_per_action
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(start: u64, values: &[f32]) -> ActionChunk {
        ActionChunk {
            id: 1,
            conditioned_on_tick: start,
            horizon: values.len(),
            dim: 1,
            actions: values.to_vec(),
            infer_ns: 0,
            model_version: 0,
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
        // Conditioned on tick 5 but arriving at tick 15: its first action (tick 15) is due.
        ex.accept(&chunk(5, &[10.0, 20.0, 30.0, 40.0]), 15).unwrap();
        let after = ex.target(15)[0];
        assert!(
            (after - 10.0).abs() < 1e-12,
            "first action due now, {after}"
        );
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
    fn committed_actions_are_those_due_before_the_next_chunk() {
        let mut ex = ChunkExecutor::new(1, 5, 10.0, 2);
        ex.hold(&[0.0]);
        let mut out = [0.0; 5];
        assert_eq!(ex.committed(0, 30, &mut out), 0, "nothing planned yet");
        ex.accept(&chunk(0, &[1.0, 2.0, 3.0, 4.0, 5.0]), 1).unwrap();
        // At tick 15, a chunk 20 ticks away: the actions at ticks 20 and 30 run first.
        assert_eq!(ex.committed(15, 20, &mut out), 2);
        assert_eq!(&out[..2], &[2.0, 3.0]);
        assert_eq!(ex.committed(15, 0, &mut out), 0);
        // Past the chunk's end nothing more is planned.
        assert_eq!(ex.committed(45, 100, &mut out), 1);
        assert_eq!(out[0], 5.0);
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
