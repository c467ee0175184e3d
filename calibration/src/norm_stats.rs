//! Normalization statistics in the three files the field writes them to:
//!
//! - openpi's `norm_stats.json`: `{"norm_stats": {"<key>": {"mean": [..], "std":
//!   [..], "q01": [..], "q99": [..]}, ...}}`, one entry per normalized quantity
//!   (`state`, `actions`); the same object without the `norm_stats` wrapper is
//!   accepted;
//! - a LeRobot dataset's `meta/stats.json`: the same shape keyed by feature
//!   (`observation.state`, `observation.images.top`, `action`) with `min` / `max`
//!   too, image entries per channel as `[3, 1, 1]` nested lists (flattened here),
//!   and fields reflex does not use (`count`) ignored;
//! - LeRobot's normalizer processor state,
//!   `policy_preprocessor_step_*_normalizer_processor.safetensors`: flat tensors
//!   named `<feature>.<field>` (`observation.state.mean`).
//!
//! Every field is a list with one value per dimension; all lists of an entry have
//! the same length.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum NormStatsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    #[error("{}: entry `{key}` {message}", path.display())]
    Entry {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{}: no entry `{key}`; entries: {}", path.display(), available.join(", "))]
    MissingKey {
        path: PathBuf,
        key: String,
        available: Vec<String>,
    },
}

/// Statistics of one quantity, per dimension.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Stats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q01: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q99: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Vec<f32>>,
}

impl Stats {
    fn fields(&self) -> [(&'static str, Option<&Vec<f32>>); 6] {
        [
            ("mean", self.mean.as_ref()),
            ("std", self.std.as_ref()),
            ("q01", self.q01.as_ref()),
            ("q99", self.q99.as_ref()),
            ("min", self.min.as_ref()),
            ("max", self.max.as_ref()),
        ]
    }

    /// The number of dimensions (all present fields agree after [`NormStats::load`]).
    pub fn width(&self) -> usize {
        self.fields()
            .iter()
            .find_map(|(_, v)| v.map(Vec::len))
            .unwrap_or(0)
    }

    /// The field `name`, or an error naming what the entry has.
    pub fn field(&self, name: &str) -> Result<&[f32], String> {
        let present: Vec<&str> = self
            .fields()
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(n, _)| *n)
            .collect();
        self.fields()
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.map(Vec::as_slice))
            .ok_or_else(|| format!("has no `{name}` (it has {})", present.join(", ")))
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct NormStats {
    pub entries: BTreeMap<String, Stats>,
}

#[derive(Serialize)]
struct Wrapped<'a> {
    norm_stats: &'a BTreeMap<String, Stats>,
}

impl NormStats {
    /// Reads and checks a statistics file: `.safetensors` (LeRobot's normalizer),
    /// else JSON (`norm_stats.json`, wrapped or not, or `meta/stats.json`).
    pub fn load(path: &Path) -> Result<Self, NormStatsError> {
        let bytes = std::fs::read(path).map_err(|source| NormStatsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// [`load`](Self::load) on a file's contents; `path` picks the format and
    /// names the file in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, NormStatsError> {
        if path.extension().is_some_and(|e| e == "safetensors") {
            return Self::parse_safetensors(bytes, path);
        }
        let text = std::str::from_utf8(bytes).map_err(|e| NormStatsError::Format {
            path: path.to_path_buf(),
            message: format!("not a JSON statistics file (or a .safetensors one): {e}"),
        })?;
        Self::parse(text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, NormStatsError> {
        let format = |message: String| NormStatsError::Format {
            path: path.to_path_buf(),
            message: format!("not a norm_stats.json or meta/stats.json: {message}"),
        };
        let mut value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format(e.to_string()))?;
        if let Some(inner) = value.get_mut("norm_stats") {
            value = inner.take();
        }
        // LeRobot's per-channel image statistics are [3, 1, 1]: one value per
        // channel once flattened.
        if let Some(entries) = value.as_object_mut() {
            for entry in entries.values_mut() {
                if let Some(fields) = entry.as_object_mut() {
                    for field in fields.values_mut() {
                        if field.is_array() {
                            *field = flatten(field.take()).into();
                        }
                    }
                }
            }
        }
        let entries: BTreeMap<String, Stats> = serde_json::from_value(value)
            .map_err(|e| format(format!("expected {{key: {{mean, std, q01, q99}}}}: {e}")))?;
        Self::checked(entries, path)
    }

    /// LeRobot's normalizer state: a safetensors file of `<feature>.<field>`
    /// tensors (F32 or F64; other tensors are skipped).
    pub fn parse_safetensors(bytes: &[u8], path: &Path) -> Result<Self, NormStatsError> {
        let format = |message: String| NormStatsError::Format {
            path: path.to_path_buf(),
            message: format!("not a LeRobot normalizer safetensors file: {message}"),
        };
        let header_len = bytes
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
            .ok_or_else(|| format("shorter than its 8-byte header length".into()))?;
        let data_start = usize::try_from(header_len)
            .ok()
            .and_then(|n| n.checked_add(8))
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| format(format!("header of {header_len} bytes past the end")))?;
        let header: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&bytes[8..data_start]).map_err(|e| format(e.to_string()))?;
        let data = &bytes[data_start..];
        let mut entries: BTreeMap<String, Stats> = BTreeMap::new();
        for (name, info) in &header {
            let Some((feature, field)) = name.rsplit_once('.') else {
                continue;
            };
            let dtype = info["dtype"].as_str().unwrap_or_default();
            let offsets = (
                info["data_offsets"][0].as_u64(),
                info["data_offsets"][1].as_u64(),
            );
            let (Some(begin), Some(end)) = offsets else {
                continue;
            };
            let range = usize::try_from(begin).ok().zip(usize::try_from(end).ok());
            let raw = range
                .filter(|(b, e)| b <= e)
                .and_then(|(b, e)| data.get(b..e))
                .ok_or_else(|| format(format!("tensor `{name}` lies outside the file")))?;
            let values: Vec<f32> = match dtype {
                "F32" => raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                "F64" => raw
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap_or_default()) as f32)
                    .collect(),
                _ => continue,
            };
            let stats = entries.entry(feature.to_string()).or_default();
            let slot = match field {
                "mean" => &mut stats.mean,
                "std" => &mut stats.std,
                "q01" => &mut stats.q01,
                "q99" => &mut stats.q99,
                "min" => &mut stats.min,
                "max" => &mut stats.max,
                _ => continue,
            };
            *slot = Some(values);
        }
        // Features whose only tensors are ones reflex does not use (`count`).
        entries.retain(|_, stats| stats.width() > 0);
        Self::checked(entries, path)
    }

    fn checked(entries: BTreeMap<String, Stats>, path: &Path) -> Result<Self, NormStatsError> {
        for (key, stats) in &entries {
            let entry = |message: String| NormStatsError::Entry {
                path: path.to_path_buf(),
                key: key.clone(),
                message,
            };
            let width = stats.width();
            if width == 0 {
                return Err(entry("has no statistics".into()));
            }
            for (name, values) in stats.fields() {
                let Some(values) = values else { continue };
                if values.len() != width {
                    return Err(entry(format!(
                        "field `{name}` has {} values, other fields have {width}",
                        values.len()
                    )));
                }
                if values.iter().any(|v| !v.is_finite()) {
                    return Err(entry(format!("field `{name}` has NaN or infinite values")));
                }
            }
        }
        Ok(Self { entries })
    }

    /// Which normalization the file's statistics suggest for the entry `key`:
    /// quantiles (openpi's pi0-FAST / pi0.5 files) before mean/std, min/max
    /// only when that is all there is.
    pub fn suggested_fields(&self, key: &str) -> Option<&'static str> {
        let stats = self.entries.get(key)?;
        Some(match (&stats.q01, &stats.mean, &stats.min) {
            (Some(_), _, _) => "q01/q99",
            (None, Some(_), _) => "mean/std",
            (None, None, Some(_)) => "min/max",
            _ => return None,
        })
    }

    /// The entry `key`, or an error listing the entries.
    pub fn get(&self, key: &str, path: &Path) -> Result<&Stats, NormStatsError> {
        self.entries
            .get(key)
            .ok_or_else(|| NormStatsError::MissingKey {
                path: path.to_path_buf(),
                key: key.to_string(),
                available: self.entries.keys().cloned().collect(),
            })
    }

    /// openpi's format: wrapped in `norm_stats`, pretty-printed.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&Wrapped {
            norm_stats: &self.entries,
        })
        .unwrap_or_default()
    }
}

/// A nested JSON list as one flat list of its numbers, in order.
fn flatten(value: serde_json::Value) -> Vec<serde_json::Value> {
    match value {
        serde_json::Value::Array(items) => items.into_iter().flat_map(flatten).collect(),
        other => vec![other],
    }
}

/// Why a set of samples has no statistics that a `norm_stats.json` can hold.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    #[error("no finite samples ({skipped} skipped for NaN, infinite or misshapen values)")]
    NoSamples { skipped: usize },
    #[error(
        "dimension {dimension}: {field} is {value:e}, which float32 (the format of \
         norm_stats.json) cannot hold"
    )]
    OutOfRange {
        dimension: usize,
        field: &'static str,
        value: f64,
    },
}

/// Collects samples of a D-dimensional quantity and computes its statistics.
///
/// Mean and std are the population values (numpy's default, ddof = 0), computed in
/// f64. Quantiles are exact: numpy's default linear interpolation between order
/// statistics (openpi approximates them with histograms; the two agree to within a
/// bin width). A sample with a NaN or infinite value, or of the wrong width, is
/// skipped and counted ([`Self::skipped`]): one NaN would make every statistic of
/// its dimension NaN.
#[derive(Debug, Clone)]
pub struct StatsAccumulator {
    columns: Vec<Vec<f64>>,
    skipped: usize,
}

impl StatsAccumulator {
    pub fn new(width: usize) -> Self {
        Self {
            columns: vec![Vec::new(); width],
            skipped: 0,
        }
    }

    pub fn width(&self) -> usize {
        self.columns.len()
    }

    /// Samples taken.
    pub fn count(&self) -> usize {
        self.columns.first().map_or(0, Vec::len)
    }

    /// Samples skipped (non-finite values or wrong width).
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Adds one sample; returns false (and counts it) when it is skipped.
    pub fn push(&mut self, sample: &[f64]) -> bool {
        if sample.len() != self.columns.len() || sample.iter().any(|x| !x.is_finite()) {
            self.skipped += 1;
            return false;
        }
        for (column, &x) in self.columns.iter_mut().zip(sample) {
            column.push(x);
        }
        true
    }

    /// The statistics; an error when there are no samples or a statistic does not
    /// fit a float32 (values beyond ~3.4e38).
    pub fn finish(mut self) -> Result<Stats, StatsError> {
        let n = self.count();
        if n == 0 {
            return Err(StatsError::NoSamples {
                skipped: self.skipped,
            });
        }
        let mut stats = Stats::default();
        let (mut mean, mut std, mut q01, mut q99, mut min, mut max) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for (dimension, column) in self.columns.iter_mut().enumerate() {
            let m = column.iter().sum::<f64>() / n as f64;
            let var = column.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n as f64;
            column.sort_by(f64::total_cmp);
            let values = [
                ("mean", m, &mut mean),
                ("std", var.sqrt(), &mut std),
                ("q01", quantile(column, 0.01), &mut q01),
                ("q99", quantile(column, 0.99), &mut q99),
                ("min", column[0], &mut min),
                ("max", column[n - 1], &mut max),
            ];
            for (field, value, out) in values {
                let narrow = value as f32;
                if !narrow.is_finite() {
                    return Err(StatsError::OutOfRange {
                        dimension,
                        field,
                        value,
                    });
                }
                out.push(narrow);
            }
        }
        stats.mean = Some(mean);
        stats.std = Some(std);
        stats.q01 = Some(q01);
        stats.q99 = Some(q99);
        stats.min = Some(min);
        stats.max = Some(max);
        Ok(stats)
    }
}

/// numpy's `quantile(..., method="linear")` on sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let position = q * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = (below + 1).min(sorted.len() - 1);
    let fraction = position - below as f64;
    sorted[below] + (sorted[above] - sorted[below]) * fraction
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lerobot_dataset_stats_json_with_image_entries_is_read() {
        // The shape of a LeRobot v3 dataset's meta/stats.json.
        let text = r#"{
            "observation.state": {"min": [-1.0, -2.0], "max": [1.0, 2.0], "mean": [0.0, 0.5],
                                  "std": [0.5, 1.0], "count": [120]},
            "observation.images.top": {"mean": [[[0.485]], [[0.456]], [[0.406]]],
                                       "std": [[[0.229]], [[0.224]], [[0.225]]],
                                       "min": [[[0.0]], [[0.0]], [[0.0]]],
                                       "max": [[[1.0]], [[1.0]], [[1.0]]], "count": [120]}
        }"#;
        let stats = NormStats::parse(text, Path::new("meta/stats.json")).unwrap();
        let image = &stats.entries["observation.images.top"];
        assert_eq!(image.field("std").unwrap(), &[0.229, 0.224, 0.225]);
        assert_eq!(stats.entries["observation.state"].width(), 2);
        assert_eq!(
            stats.suggested_fields("observation.state"),
            Some("mean/std")
        );
    }

    /// A safetensors file as the format defines it: u64 LE header length, JSON
    /// header, then the tensors' bytes.
    fn safetensors(tensors: &[(&str, &str, Vec<u8>)]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
        let mut data = Vec::new();
        for (name, dtype, bytes) in tensors {
            let n = bytes.len()
                / if *dtype == "F64" || *dtype == "I64" {
                    8
                } else {
                    4
                };
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": dtype, "shape": [n],
                    "data_offsets": [data.len(), data.len() + bytes.len()]}),
            );
            data.extend_from_slice(bytes);
        }
        let header = serde_json::to_vec(&header).unwrap();
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend(header);
        out.extend(data);
        out
    }

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn lerobot_normalizer_safetensors_is_read_by_feature_and_field() {
        let file = safetensors(&[
            ("observation.state.mean", "F32", f32_bytes(&[0.5, -0.5])),
            ("observation.state.std", "F32", f32_bytes(&[2.0, 3.0])),
            (
                "action.min",
                "F64",
                [-1.0f64, -2.0]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            ("action.max", "F32", f32_bytes(&[1.0, 2.0])),
            ("action.count", "I64", 7i64.to_le_bytes().to_vec()),
            ("episode_index.count", "I64", 7i64.to_le_bytes().to_vec()),
        ]);
        let path = Path::new("policy_preprocessor_step_3_normalizer_processor.safetensors");
        let stats = NormStats::from_bytes(&file, path).unwrap();
        assert_eq!(stats.entries.len(), 2, "{:?}", stats.entries.keys());
        assert_eq!(
            stats.entries["observation.state"].field("std").unwrap(),
            &[2.0, 3.0]
        );
        assert_eq!(stats.entries["action"].field("min").unwrap(), &[-1.0, -2.0]);
        assert_eq!(stats.suggested_fields("action"), Some("min/max"));
        // Truncated or garbage files are refused with the file's name.
        let err = NormStats::from_bytes(&file[..20], path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("normalizer_processor.safetensors: not a LeRobot normalizer"),
            "{err}"
        );
        let ragged = safetensors(&[
            ("action.min", "F32", f32_bytes(&[0.0])),
            ("action.max", "F32", f32_bytes(&[1.0, 2.0])),
        ]);
        let err = NormStats::from_bytes(&ragged, path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("field `max` has 2 values, other fields have 1"),
            "{err}"
        );
    }

    #[test]
    fn openpi_format_round_trips_and_unwrapped_is_accepted() {
        let text = r#"{"norm_stats": {"state": {"mean": [0.5, 1.0], "std": [1.0, 2.0],
            "q01": [-1.0, -2.0], "q99": [1.0, 2.0]}, "actions": {"mean": [0.0], "std": [1.0]}}}"#;
        let stats = NormStats::parse(text, Path::new("n.json")).unwrap();
        assert_eq!(stats.entries["state"].width(), 2);
        let again = NormStats::parse(&stats.to_json(), Path::new("n.json")).unwrap();
        assert_eq!(stats, again);
        assert!(stats.to_json().contains("\"norm_stats\""));
        let bare = r#"{"state": {"min": [0.0], "max": [1.0]}}"#;
        let stats = NormStats::parse(bare, Path::new("n.json")).unwrap();
        assert_eq!(stats.entries["state"].field("max").unwrap(), &[1.0]);
        let err = stats.entries["state"].field("q01").unwrap_err();
        assert!(err.contains("has no `q01` (it has min, max)"), "{err}");
    }

    #[test]
    fn inconsistent_or_non_finite_entries_are_rejected() {
        let ragged = r#"{"norm_stats": {"state": {"mean": [0.0, 1.0], "std": [1.0]}}}"#;
        let err = NormStats::parse(ragged, Path::new("n.json"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("entry `state` field `std` has 1 values"),
            "{err}"
        );
        let err = NormStats::parse("[1, 2]", Path::new("n.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a norm_stats.json"), "{err}");
        let stats = NormStats::parse(r#"{"a": {"mean": [1.0]}}"#, Path::new("n.json")).unwrap();
        let err = stats
            .get("actions", Path::new("n.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no entry `actions`; entries: a"), "{err}");
    }

    #[test]
    fn accumulator_matches_numpy_definitions() {
        let mut acc = StatsAccumulator::new(2);
        for i in 0..=100 {
            acc.push(&[i as f64, -2.0 * i as f64]);
        }
        let stats = acc.finish().unwrap();
        assert_eq!(stats.mean.as_ref().unwrap(), &[50.0, -100.0]);
        // Population std of 0..=100 is sqrt(850).
        assert!((stats.std.as_ref().unwrap()[0] - 850f32.sqrt()).abs() < 1e-4);
        // numpy.quantile(range(101), 0.01) == 1.0, 0.99 -> 99.0
        assert_eq!(stats.q01.as_ref().unwrap(), &[1.0, -198.0]);
        assert_eq!(stats.q99.as_ref().unwrap(), &[99.0, -2.0]);
        assert_eq!(stats.min.as_ref().unwrap(), &[0.0, -200.0]);
        assert_eq!(stats.max.as_ref().unwrap(), &[100.0, 0.0]);
        assert_eq!(
            StatsAccumulator::new(3).finish(),
            Err(StatsError::NoSamples { skipped: 0 })
        );
    }

    #[test]
    fn non_finite_samples_are_skipped_and_counted() {
        let mut acc = StatsAccumulator::new(2);
        assert!(acc.push(&[1.0, 2.0]));
        assert!(!acc.push(&[f64::NAN, 2.0]));
        assert!(!acc.push(&[1.0, f64::INFINITY]));
        assert!(!acc.push(&[1.0]));
        assert!(acc.push(&[3.0, 4.0]));
        assert_eq!((acc.count(), acc.skipped()), (2, 3));
        let stats = acc.finish().unwrap();
        assert_eq!(stats.mean.as_ref().unwrap(), &[2.0, 3.0]);
        // What is written is what reflex reads back.
        let mut all = NormStats::default();
        all.entries.insert("state".into(), stats);
        NormStats::parse(&all.to_json(), Path::new("n.json")).unwrap();

        let mut nothing = StatsAccumulator::new(1);
        nothing.push(&[f64::NAN]);
        assert_eq!(nothing.finish(), Err(StatsError::NoSamples { skipped: 1 }));
    }

    #[test]
    fn statistics_float32_cannot_hold_are_an_error() {
        let mut acc = StatsAccumulator::new(2);
        acc.push(&[0.0, 1e300]);
        acc.push(&[0.0, -1e300]);
        let err = acc.finish().unwrap_err();
        assert!(
            matches!(
                err,
                StatsError::OutOfRange {
                    dimension: 1,
                    field: "std",
                    ..
                }
            ),
            "{err}"
        );
    }
}
