//! Per-dimension normalization of joint vectors and actions, in the three forms the
//! field uses: z-score (pi0), quantile (pi0-FAST, pi0.5) and min/max (LeRobot).
//! The epsilons are openpi's and LeRobot's, so values match theirs bit for bit in f32.

use std::path::Path;

use reflex_calibration::NormStats;
use reflex_runtime::launch::Launch;

use crate::config::{NormMode, NormStatsConfig, Normalization};

#[derive(Debug, Clone, PartialEq)]
pub enum VectorNorm {
    /// `(x - mean) / (std + 1e-6)`
    ZScore { mean: Vec<f32>, std: Vec<f32> },
    /// `(x - q01) / (q99 - q01 + 1e-6) * 2 - 1`
    Quantile { q01: Vec<f32>, q99: Vec<f32> },
    /// `(x - min) / (max - min + 1e-8) * 2 - 1`
    MinMax { min: Vec<f32>, max: Vec<f32> },
}

impl VectorNorm {
    /// From the launch file's inline `normalize = { mean, std }`.
    pub fn inline(n: &Normalization) -> Self {
        Self::ZScore {
            mean: n.mean.clone(),
            std: n.std.clone(),
        }
    }

    /// From a statistics entry; it must cover at least `width` dimensions (the
    /// robot's joints), of which the first `width` are used.
    pub fn from_stats(
        stats: &reflex_calibration::Stats,
        mode: NormMode,
        width: usize,
    ) -> Result<Self, String> {
        let field = |name: &str| -> Result<Vec<f32>, String> {
            let values = stats.field(name)?;
            if values.len() < width {
                return Err(format!(
                    "has {} values in `{name}`, the robot has {width} joints",
                    values.len()
                ));
            }
            Ok(values[..width].to_vec())
        };
        Ok(match mode {
            NormMode::ZScore => Self::ZScore {
                mean: field("mean")?,
                std: field("std")?,
            },
            NormMode::Quantile => Self::Quantile {
                q01: field("q01")?,
                q99: field("q99")?,
            },
            NormMode::MinMax => Self::MinMax {
                min: field("min")?,
                max: field("max")?,
            },
        })
    }

    /// Values it has statistics for.
    pub fn len(&self) -> usize {
        match self {
            Self::ZScore { mean, .. } => mean.len(),
            Self::Quantile { q01, .. } => q01.len(),
            Self::MinMax { min, .. } => min.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn normalize(&self, j: usize, x: f32) -> f32 {
        match self {
            Self::ZScore { mean, std } => (x - mean[j]) / (std[j] + 1e-6),
            Self::Quantile { q01, q99 } => (x - q01[j]) / (q99[j] - q01[j] + 1e-6) * 2.0 - 1.0,
            Self::MinMax { min, max } => (x - min[j]) / (max[j] - min[j] + 1e-8) * 2.0 - 1.0,
        }
    }

    /// [`unnormalize`](Self::unnormalize) of an f64 value (FAST decodes in f64):
    /// the statistics' spread is formed in f32 as the f32 form does, the rest in f64.
    pub fn unnormalize_f64(&self, j: usize, x: f64) -> f64 {
        match self {
            Self::ZScore { mean, std } => x * f64::from(std[j] + 1e-6) + f64::from(mean[j]),
            Self::Quantile { q01, q99 } => {
                (x + 1.0) / 2.0 * f64::from(q99[j] - q01[j] + 1e-6) + f64::from(q01[j])
            }
            Self::MinMax { min, max } => {
                (x + 1.0) / 2.0 * f64::from(max[j] - min[j] + 1e-8) + f64::from(min[j])
            }
        }
    }

    pub fn unnormalize(&self, j: usize, x: f32) -> f32 {
        match self {
            Self::ZScore { mean, std } => x * (std[j] + 1e-6) + mean[j],
            Self::Quantile { q01, q99 } => (x + 1.0) / 2.0 * (q99[j] - q01[j] + 1e-6) + q01[j],
            Self::MinMax { min, max } => (x + 1.0) / 2.0 * (max[j] - min[j] + 1e-8) + min[j],
        }
    }
}

/// The state and action normalizations a `norm_stats` table describes.
pub struct LoadedNormStats {
    pub state: Option<VectorNorm>,
    pub actions: VectorNorm,
}

/// Reads the statistics file of a policy; errors name the file and the entry.
pub fn load_norm_stats(
    launch: &Launch,
    cfg: &NormStatsConfig,
    joints: usize,
) -> Result<LoadedNormStats, String> {
    let path = launch.resolve(&cfg.file);
    let text = reflex_runtime::files::read_to_string(&path, reflex_runtime::files::MAX_DATA_BYTES)
        .map_err(|e| e.to_string())?;
    let stats = NormStats::parse(&text, &path).map_err(|e| e.to_string())?;
    let entry = |key: &str| -> Result<VectorNorm, String> {
        let stats = stats.get(key, &path).map_err(|e| e.to_string())?;
        VectorNorm::from_stats(stats, cfg.mode, joints)
            .map_err(|e| format!("{}: entry `{key}` {e}", display(&path)))
    };
    // A policy without a state input may come with stats that have no state entry.
    let state = match stats.entries.contains_key(&cfg.state_key) {
        true => Some(entry(&cfg.state_key)?),
        false => None,
    };
    Ok(LoadedNormStats {
        state,
        actions: entry(&cfg.actions_key)?,
    })
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_inverts_and_matches_the_published_formulas() {
        let norms = [
            VectorNorm::ZScore {
                mean: vec![1.0],
                std: vec![2.0],
            },
            VectorNorm::Quantile {
                q01: vec![-1.0],
                q99: vec![3.0],
            },
            VectorNorm::MinMax {
                min: vec![0.0],
                max: vec![4.0],
            },
        ];
        let expected = [
            (3.0 - 1.0) / (2.0 + 1e-6),
            (3.0 + 1.0) / (4.0 + 1e-6) * 2.0 - 1.0,
            0.5,
        ];
        for (norm, want) in norms.iter().zip(expected) {
            let z = norm.normalize(0, 3.0);
            assert!((z - want).abs() < 1e-6, "{norm:?}: {z} vs {want}");
            assert!((norm.unnormalize(0, z) - 3.0).abs() < 1e-5);
        }
    }

    #[test]
    fn stats_narrower_than_the_robot_are_an_error() {
        let stats = reflex_calibration::Stats {
            mean: Some(vec![0.0, 0.0]),
            std: Some(vec![1.0, 1.0]),
            ..Default::default()
        };
        let err = VectorNorm::from_stats(&stats, NormMode::ZScore, 3).unwrap_err();
        assert!(
            err.contains("has 2 values in `mean`, the robot has 3 joints"),
            "{err}"
        );
        let err = VectorNorm::from_stats(&stats, NormMode::Quantile, 2).unwrap_err();
        assert!(err.contains("no `q01`"), "{err}");
        assert!(VectorNorm::from_stats(&stats, NormMode::ZScore, 1).is_ok());
    }
}
