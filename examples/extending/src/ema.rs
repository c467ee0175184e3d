//! `[execution] strategy = "ema"`: the `replace` strategy with an exponential
//! moving average on its targets (`alpha` per tick), for policies whose chunks
//! disagree at the seams. The safety filter still bounds what reaches the arm.

use reflex_runtime::executor::{ChunkExecutor, ChunkRejection, Executor, ExecutorParams};
use reflex_runtime::launch::LaunchError;
use reflex_runtime::registry::{KindTable, StrategyKind, schema_of};
use reflex_runtime::types::{ActionChunk, MAX_JOINTS};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The strategy's own fields of `[execution]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmaParams {
    /// Weight of the newest target each tick, in (0, 1]; 1 is `replace`.
    pub alpha: f64,
    /// Requests allowed in flight at once (asking again before the last chunk
    /// came back pipelines inference at the replan point).
    #[serde(default = "one")]
    pub max_in_flight: usize,
}

fn one() -> usize {
    1
}

pub struct EmaStrategy;

impl StrategyKind for EmaStrategy {
    fn name(&self) -> &'static str {
        "ema"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<EmaParams>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<serde_json::Value, LaunchError> {
        let params: EmaParams = table.parse()?;
        if !(params.alpha > 0.0 && params.alpha <= 1.0) {
            return Err(table.error_at(
                "alpha",
                format!("must be in (0, 1], found {}", params.alpha),
            ));
        }
        serde_json::to_value(params).map_err(|e| table.error_at("", e.to_string()))
    }

    fn build(
        &self,
        params: &serde_json::Value,
        p: &ExecutorParams,
    ) -> Result<Box<dyn Executor>, String> {
        let params: EmaParams =
            serde_json::from_value(params.clone()).map_err(|e| e.to_string())?;
        Ok(Box::new(Ema {
            inner: ChunkExecutor::new(p.dim, p.horizon, p.ticks_per_action, p.replan_after),
            alpha: params.alpha,
            max_in_flight: params.max_in_flight,
            dim: p.dim,
            smoothed: [0.0; MAX_JOINTS],
        }))
    }
}

pub struct Ema {
    inner: ChunkExecutor,
    alpha: f64,
    max_in_flight: usize,
    dim: usize,
    smoothed: [f64; MAX_JOINTS],
}

impl Executor for Ema {
    fn hold(&mut self, position: &[f64]) {
        self.inner.hold(position);
        self.smoothed[..self.dim].copy_from_slice(&position[..self.dim]);
    }

    fn flush(&mut self, position: &[f64], tick: u64) {
        self.inner.flush(position, tick);
        self.smoothed[..self.dim].copy_from_slice(&position[..self.dim]);
    }

    fn accept(&mut self, chunk: &ActionChunk, now: u64) -> Result<(), ChunkRejection> {
        self.inner.accept(chunk, now)
    }

    fn target(&mut self, now: u64) -> &[f64] {
        let target = self.inner.target(now);
        for (s, t) in self.smoothed.iter_mut().zip(target) {
            *s += self.alpha * (t - *s);
        }
        &self.smoothed[..self.dim]
    }

    fn wants_chunk(&self, now: u64) -> bool {
        self.inner.wants_chunk(now)
    }

    fn queued(&self, now: u64) -> usize {
        self.inner.queued(now)
    }

    fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }
}
