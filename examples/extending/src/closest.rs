//! `[[stages]] kind = "closest"`: of the policy's candidate chunks, executes the
//! one whose first action is nearest the measured joint positions (the candidate
//! most consistent with where the arm is). Optionally only when the candidates
//! disagree by more than `min_spread` rad, so single-mode policies pay nothing.

use std::sync::Arc;

use reflex_runtime::launch::{Launch, LaunchError};
use reflex_runtime::policy::PolicyError;
use reflex_runtime::registry::{KindTable, LoadError, StageKind, StageSpec, schema_of};
use reflex_runtime::stage::{Candidates, ChunkStage};
use reflex_runtime::types::Observation;
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClosestConfig {
    /// Below this largest distance between first actions the choice is left as it was, rad.
    #[serde(default)]
    pub min_spread: f64,
}

pub struct ClosestKind;

#[derive(Debug)]
pub struct ClosestSpec(ClosestConfig);

impl StageKind for ClosestKind {
    fn kind(&self) -> &'static str {
        "closest"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<ClosestConfig>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn StageSpec>, LaunchError> {
        let config: ClosestConfig = table.parse()?;
        if !(config.min_spread.is_finite() && config.min_spread >= 0.0) {
            return Err(table.error_at("min_spread", "must be zero or a positive number of rad"));
        }
        if table.launch().policy().candidates() < 2 {
            return Err(table.error_at(
                "",
                "the policy samples one chunk per inference: there is nothing to choose from \
                 (raise its batch / candidates)",
            ));
        }
        Ok(Arc::new(ClosestSpec(config)))
    }
}

impl StageSpec for ClosestSpec {
    fn kind(&self) -> &'static str {
        "closest"
    }

    fn build(&self, _launch: &Launch) -> Result<Box<dyn ChunkStage>, LoadError> {
        Ok(Box::new(Closest(self.0.clone())))
    }
}

pub struct Closest(ClosestConfig);

impl ChunkStage for Closest {
    fn apply(&mut self, obs: &Observation, candidates: &mut Candidates) -> Result<(), PolicyError> {
        let here = obs.joints.positions();
        let distance = |candidates: &Candidates, b: usize| -> f64 {
            let first = &candidates.chunk(b)[..candidates.dim];
            first
                .iter()
                .zip(here)
                .map(|(a, q)| (f64::from(*a) - q).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let reference = distance(candidates, 0);
        let (mut nearest, mut nearest_distance, mut spread) = (0, reference, 0.0f64);
        for b in 0..candidates.batch {
            let d = distance(candidates, b);
            spread = spread.max((d - reference).abs());
            // Scores rank the candidates: nearer is better.
            candidates.scores[b] = -d as f32;
            if d < nearest_distance {
                (nearest, nearest_distance) = (b, d);
            }
        }
        if spread >= self.0.min_spread {
            candidates.selected = nearest;
        }
        Ok(())
    }
}
