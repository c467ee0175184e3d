//! Open-loop execution of action chunks.
//!
//! Action k of a chunk conditioned on tick t0 is the target for tick
//! `t0 + (k + 1) * ticks_per_action`. When a chunk arrives late, the actions whose
//! time has already passed are dropped and the target is interpolated from the last
//! target handed out, so switching chunks never jumps. Between actions the target
//! is interpolated linearly (the control rate is usually higher than the action
//! rate); after the last action it holds.

use crate::types::{ActionChunk, MAX_JOINTS};

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
    horizon: usize,
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
            horizon,
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

    /// Drops any chunk and holds `position` (start-up, re-arm).
    pub fn hold(&mut self, position: &[f64]) {
        self.chunk_start = None;
        self.target[..self.dim].copy_from_slice(&position[..self.dim]);
    }

    /// Drops the active chunk and every chunk conditioned before `tick` (one in
    /// flight while the arm stopped, say), and holds `position`.
    pub fn flush(&mut self, position: &[f64], tick: u64) {
        self.hold(position);
        self.not_before = tick;
    }

    /// Takes `chunk` as the active chunk at tick `now`.
    pub fn accept(&mut self, chunk: &ActionChunk, now: u64) -> Result<(), ChunkRejection> {
        if chunk.horizon != self.horizon
            || chunk.dim != self.dim
            || chunk.actions.len() != self.horizon * self.dim
        {
            return Err(ChunkRejection::Shape {
                horizon: chunk.horizon,
                dim: chunk.dim,
                expected_horizon: self.horizon,
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
        for (point, action) in self.points.iter_mut().zip(&chunk.actions) {
            *point = f64::from(*action);
        }
        self.chunk_start = Some(chunk.conditioned_on_tick);
        // Interpolate from what was commanded on the previous tick.
        self.anchor = self.target;
        self.anchor_tick = now as f64 - 1.0;
        Ok(())
    }

    fn point_tick(&self, start: u64, k: usize) -> f64 {
        start as f64 + (k as f64 + 1.0) * self.ticks_per_action
    }

    /// The target for tick `now`.
    pub fn target(&mut self, now: u64) -> &[f64] {
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

    /// True when the next chunk should be requested at tick `now`: no chunk yet, or
    /// `replan_after` actions of the active one have been reached.
    pub fn wants_chunk(&self, now: u64) -> bool {
        match self.chunk_start {
            None => true,
            Some(start) => now as f64 >= self.point_tick(start, self.replan_after - 1),
        }
    }

    /// Actions of the active chunk not yet reached.
    pub fn queued(&self, now: u64) -> usize {
        self.chunk_start
            .map(|start| {
                (0..self.horizon)
                    .filter(|&k| self.point_tick(start, k) > now as f64)
                    .count()
            })
            .unwrap_or(0)
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
