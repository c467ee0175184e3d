//! Chunk stages: what happens between a policy's samples and the executed chunk,
//! on the inference thread. A policy that samples B candidate chunks (a flow or
//! diffusion policy with `batch = B`) hands all of them to the stages in launch-file
//! order (`[[stages]]`); each may score, rerank or replace them, and the one
//! `selected` at the end is executed. Without stages the first candidate runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::policy::PolicyError;
use crate::types::Observation;

/// B candidate chunks of joint targets, row-major `[B][horizon][dim]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidates {
    pub batch: usize,
    pub horizon: usize,
    pub dim: usize,
    pub values: Vec<f32>,
    /// A score per candidate, for stages that rank (0 until one sets them).
    pub scores: Vec<f32>,
    /// The candidate that will be executed.
    pub selected: usize,
    /// Set by a stage that scored the candidates: the choice is then recorded
    /// (scores, candidates, the selected index) with the chunk.
    pub scored: bool,
}

impl Candidates {
    pub fn zeros(batch: usize, horizon: usize, dim: usize) -> Self {
        Self {
            batch,
            horizon,
            dim,
            values: vec![0.0; batch * horizon * dim],
            scores: vec![0.0; batch],
            selected: 0,
            scored: false,
        }
    }

    /// Candidate `b`, `[horizon][dim]`.
    pub fn chunk(&self, b: usize) -> &[f32] {
        let len = self.horizon * self.dim;
        &self.values[b * len..(b + 1) * len]
    }

    pub fn chunk_mut(&mut self, b: usize) -> &mut [f32] {
        let len = self.horizon * self.dim;
        &mut self.values[b * len..(b + 1) * len]
    }

    /// The candidate with the highest score (the first among equals).
    pub fn best(&self) -> usize {
        (0..self.batch).fold(0, |best, b| {
            if self.scores[b] > self.scores[best] {
                b
            } else {
                best
            }
        })
    }
}

/// One stage of the pipeline.
pub trait ChunkStage: Send {
    /// Looks at the candidates sampled for `obs` and may score, change or select.
    fn apply(&mut self, obs: &Observation, candidates: &mut Candidates) -> Result<(), PolicyError>;
    /// True for a steering stage (V-GPS) that [`SteeringSwitch`] can turn off at
    /// run time; the first candidate then runs as without it.
    fn steers(&self) -> bool {
        false
    }
}

/// Which steering method a request switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steering {
    /// Ranking stages (`[[stages]] kind = "vgps"`).
    Ranking,
    /// A latent-noise policy choosing the initial noise (DSRL).
    LatentNoise,
}

impl Steering {
    pub fn parse(word: &str) -> Option<Self> {
        match word {
            "vgps" => Some(Self::Ranking),
            "dsrl" => Some(Self::LatentNoise),
            _ => None,
        }
    }

    /// `steer <vgps|dsrl> <on|off>` (the control socket's and zenoh's request).
    pub fn parse_request(text: &str) -> Option<(Self, bool)> {
        let words: Vec<&str> = text
            .trim()
            .strip_prefix("steer")?
            .split_whitespace()
            .collect();
        match words.as_slice() {
            [which, state] => Self::parse(which).zip(match *state {
                "on" => Some(true),
                "off" => Some(false),
                _ => None,
            }),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Ranking => "vgps",
            Self::LatentNoise => "dsrl",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Self::Ranking => 1,
            Self::LatentNoise => 2,
        }
    }
}

/// Run-time switches of the steering methods a launch file configures, shared by
/// the control socket (which sets them) and the inference worker (which reads
/// them before each inference). Both start on.
#[derive(Debug, Clone)]
pub struct SteeringSwitch(Arc<AtomicU8>);

impl Default for SteeringSwitch {
    fn default() -> Self {
        Self(Arc::new(AtomicU8::new(
            Steering::Ranking.bit() | Steering::LatentNoise.bit(),
        )))
    }
}

impl SteeringSwitch {
    pub fn is_on(&self, which: Steering) -> bool {
        self.0.load(Ordering::Acquire) & which.bit() != 0
    }

    pub fn set(&self, which: Steering, on: bool) {
        if on {
            self.0.fetch_or(which.bit(), Ordering::AcqRel);
        } else {
            self.0.fetch_and(!which.bit(), Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_rows_and_the_best_is_the_first_highest() {
        let mut c = Candidates::zeros(3, 2, 1);
        c.chunk_mut(1).copy_from_slice(&[1.0, 2.0]);
        assert_eq!(c.chunk(1), &[1.0, 2.0]);
        assert_eq!(c.best(), 0);
        c.scores = vec![0.5, 2.0, 2.0];
        assert_eq!(c.best(), 1);
    }

    #[test]
    fn steering_requests_parse_strictly() {
        assert_eq!(
            Steering::parse_request("steer vgps off"),
            Some((Steering::Ranking, false))
        );
        assert_eq!(
            Steering::parse_request(" steer  dsrl on\n"),
            Some((Steering::LatentNoise, true))
        );
        for bad in [
            "steer",
            "steer vgps",
            "steer fast on",
            "steer vgps yes",
            "steering vgps on",
            "steer vgps on now",
            "vgps on",
        ] {
            assert_eq!(Steering::parse_request(bad), None, "{bad}");
        }
    }
}
