//! Per-dimension normalization of joint vectors, images (per channel) and actions,
//! in the forms the field uses: openpi's z-score (pi0) and quantile (pi0-FAST,
//! pi0.5), LeRobot's MEAN_STD, MIN_MAX and IDENTITY. The epsilons and the order of
//! operations are theirs, so values match theirs in f32.

use std::path::Path;

use reflex_calibration::NormStats;
use reflex_runtime::launch::Launch;

use crate::config::{NormMode, NormStatsConfig, Normalization};
use crate::preprocess::InputMapper;

/// LeRobot's `NormalizerProcessorStep.eps`.
const LEROBOT_EPS: f32 = 1e-8;

#[derive(Debug, Clone, PartialEq)]
pub enum VectorNorm {
    /// `(x - mean) / (std + 1e-6)`
    ZScore { mean: Vec<f32>, std: Vec<f32> },
    /// `(x - q01) / (q99 - q01 + 1e-6) * 2 - 1`
    Quantile { q01: Vec<f32>, q99: Vec<f32> },
    /// `(x - mean) / (std + 1e-8)`; undone without the epsilon
    MeanStd { mean: Vec<f32>, std: Vec<f32> },
    /// `2 (x - min) / span - 1`, span = `max - min`, or 1e-8 where that is 0
    MinMax { min: Vec<f32>, span: Vec<f32> },
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
    /// robot's joints), of which the first `width` are used. None for `identity`.
    pub fn from_stats(
        stats: &reflex_calibration::Stats,
        mode: NormMode,
        width: usize,
    ) -> Result<Option<Self>, String> {
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
        Ok(Some(match mode {
            NormMode::ZScore => Self::ZScore {
                mean: field("mean")?,
                std: field("std")?,
            },
            NormMode::Quantile => Self::Quantile {
                q01: field("q01")?,
                q99: field("q99")?,
            },
            NormMode::MeanStd => Self::MeanStd {
                mean: field("mean")?,
                std: field("std")?,
            },
            NormMode::MinMax => {
                let min = field("min")?;
                let span = field("max")?
                    .iter()
                    .zip(&min)
                    .map(|(max, min)| match max - min {
                        0.0 => LEROBOT_EPS,
                        span => span,
                    })
                    .collect();
                Self::MinMax { min, span }
            }
            NormMode::Identity => return Ok(None),
        }))
    }

    /// Values it has statistics for.
    pub fn len(&self) -> usize {
        match self {
            Self::ZScore { mean, .. } | Self::MeanStd { mean, .. } => mean.len(),
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
            Self::MeanStd { mean, std } => (x - mean[j]) / (std[j] + LEROBOT_EPS),
            Self::MinMax { min, span } => 2.0 * (x - min[j]) / span[j] - 1.0,
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
            Self::MeanStd { mean, std } => x * f64::from(std[j]) + f64::from(mean[j]),
            Self::MinMax { min, span } => (x + 1.0) / 2.0 * f64::from(span[j]) + f64::from(min[j]),
        }
    }

    pub fn unnormalize(&self, j: usize, x: f32) -> f32 {
        match self {
            Self::ZScore { mean, std } => x * (std[j] + 1e-6) + mean[j],
            Self::Quantile { q01, q99 } => (x + 1.0) / 2.0 * (q99[j] - q01[j] + 1e-6) + q01[j],
            Self::MeanStd { mean, std } => x * std[j] + mean[j],
            Self::MinMax { min, span } => (x + 1.0) / 2.0 * span[j] + min[j],
        }
    }
}

/// The state and action normalizations a `norm_stats` table describes (None:
/// identity, or no state entry).
pub struct LoadedNormStats {
    pub state: Option<VectorNorm>,
    pub actions: Option<VectorNorm>,
    stats: NormStats,
    path: std::path::PathBuf,
}

/// Reads the statistics file of a policy; errors name the file and the entry.
pub fn load_norm_stats(
    launch: &Launch,
    cfg: &NormStatsConfig,
    joints: usize,
) -> Result<LoadedNormStats, String> {
    let path = launch.resolve(&cfg.file);
    let bytes = reflex_runtime::files::read(&path, reflex_runtime::files::MAX_DATA_BYTES)
        .map_err(|e| e.to_string())?;
    let stats = NormStats::from_bytes(&bytes, &path).map_err(|e| e.to_string())?;
    let entry = |key: &str, mode: NormMode| -> Result<Option<VectorNorm>, String> {
        let found = stats.get(key, &path).map_err(|e| e.to_string())?;
        VectorNorm::from_stats(found, mode, joints)
            .map_err(|e| format!("{}: entry `{key}` {e}", display(&path)))
    };
    // A policy without a state input may come with stats that have no state entry.
    let state = match stats.entries.contains_key(&cfg.state_key) {
        true => entry(&cfg.state_key, cfg.state_mode())?,
        false => None,
    };
    let actions = entry(&cfg.actions_key, cfg.actions_mode())?;
    Ok(LoadedNormStats {
        state,
        actions,
        stats,
        path,
    })
}

/// Applies a policy's `[policy.norm_stats]` to its inputs (joint positions with the
/// state entry, inputs with `stats = "<key>"` with theirs) and returns the actions'
/// normalization.
pub fn apply_norm_stats(
    launch: &Launch,
    cfg: &NormStatsConfig,
    joints: usize,
    mapper: &mut InputMapper,
) -> Result<Option<VectorNorm>, String> {
    let loaded = load_norm_stats(launch, cfg, joints)?;
    if let Some(state) = &loaded.state {
        mapper.set_state_normalization(state);
    }
    for input in &mut mapper.inputs {
        let Some(key) = input.stats_key.clone() else {
            continue;
        };
        let found = loaded
            .stats
            .get(&key, &loaded.path)
            .map_err(|e| format!("input `{}`: {e}", input.name))?;
        let (mode, width) = match input.is_camera() {
            true => (cfg.image_mode, input.channels()),
            false => (cfg.state_mode(), input.values_per_frame()),
        };
        if input.is_camera() && found.width() != width {
            return Err(format!(
                "{}: entry `{key}` has {} values per field, input `{}` has {width} channels",
                display(&loaded.path),
                found.width(),
                input.name
            ));
        }
        input.normalize = VectorNorm::from_stats(found, mode, width).map_err(|e| {
            format!(
                "{}: entry `{key}` (input `{}`) {e}",
                display(&loaded.path),
                input.name
            )
        })?;
    }
    Ok(loaded.actions)
}

/// [`apply_norm_stats`] for a policy's optional table, errors at its field.
pub fn norm_stats_for(
    launch: &Launch,
    cfg: Option<&NormStatsConfig>,
    joints: usize,
    mapper: &mut InputMapper,
) -> Result<Option<VectorNorm>, crate::chunk::PolicyLoadError> {
    let Some(cfg) = cfg else { return Ok(None) };
    apply_norm_stats(launch, cfg, joints, mapper).map_err(|message| {
        crate::chunk::PolicyLoadError::Config {
            field: "policy.norm_stats.file".into(),
            message,
        }
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
                span: vec![4.0],
            },
            VectorNorm::MeanStd {
                mean: vec![1.0],
                std: vec![2.0],
            },
        ];
        let expected = [
            (3.0 - 1.0) / (2.0 + 1e-6),
            (3.0 + 1.0) / (4.0 + 1e-6) * 2.0 - 1.0,
            0.5,
            (3.0 - 1.0) / (2.0 + 1e-8),
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
        assert_eq!(
            VectorNorm::from_stats(&stats, NormMode::Identity, 2),
            Ok(None)
        );
    }

    #[test]
    fn lerobot_min_max_uses_epsilon_only_for_a_constant_dimension() {
        let stats = reflex_calibration::Stats {
            min: Some(vec![-1.0, 0.5]),
            max: Some(vec![3.0, 0.5]),
            ..Default::default()
        };
        let norm = VectorNorm::from_stats(&stats, NormMode::MinMax, 2)
            .unwrap()
            .unwrap();
        // LeRobot: 2 * (x - min) / (max - min) - 1, exactly, and (x + 1) / 2 * span + min.
        assert_eq!(norm.normalize(0, 1.0), 2.0 * (1.0 - -1.0) / 4.0 - 1.0);
        assert_eq!(norm.unnormalize(0, 0.0), 1.0);
        // A constant dimension maps its value to -1 (span 1e-8), as LeRobot does.
        assert_eq!(norm.normalize(1, 0.5), -1.0);
    }
}
