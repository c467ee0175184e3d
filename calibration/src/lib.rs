//! reflex-calibration: what a robot and its policy need to agree on numbers.
//!
//! - [`norm_stats`]: normalization statistics in openpi's `norm_stats.json` format
//!   (mean, std, q01, q99 per key) plus LeRobot's min/max, read, written and
//!   computed from samples.

pub mod norm_stats;

pub use norm_stats::{NormStats, NormStatsError, Stats, StatsAccumulator, StatsError};
