//! Per-episode and dataset statistics as LeRobot keeps them: min, max, mean,
//! std, count and the quantiles q01 / q10 / q50 / q90 / q99, per dimension
//! (per channel in [0, 1] for cameras).

use serde_json::{Value, json};

const QUANTILES: [f64; 5] = [0.01, 0.10, 0.50, 0.90, 0.99];
/// Field order: min, max, mean, std, count, then the quantiles.
const FIELDS: usize = 10;
const COUNT: usize = 4;

#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStats {
    fields: Vec<Vec<f64>>,
}

impl FeatureStats {
    pub fn empty() -> Self {
        Self {
            fields: vec![Vec::new(); FIELDS],
        }
    }

    pub fn from_fields(fields: Vec<Vec<f64>>) -> Self {
        let mut fields = fields;
        fields.resize(FIELDS, Vec::new());
        Self { fields }
    }

    pub fn field(&self, i: usize) -> &[f64] {
        &self.fields[i]
    }

    fn count(&self) -> f64 {
        self.fields[COUNT].first().copied().unwrap_or(0.0)
    }

    /// Statistics of `values`, rows of `dim` numbers; quantiles interpolate
    /// linearly between order statistics (numpy's default).
    pub fn of_rows(values: &[f64], dim: usize) -> Self {
        Self::of(values.len() / dim.max(1), dim, |row, d| {
            values[row * dim + d]
        })
    }

    fn of(rows: usize, dim: usize, at: impl Fn(usize, usize) -> f64) -> Self {
        if rows == 0 {
            return Self::empty();
        }
        let mut fields = vec![Vec::new(); FIELDS];
        let mut column = Vec::with_capacity(rows);
        for d in 0..dim {
            column.clear();
            column.extend((0..rows).map(|r| at(r, d)));
            let mean = column.iter().sum::<f64>() / rows as f64;
            let var = column.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / rows as f64;
            column.sort_by(f64::total_cmp);
            fields[0].push(column[0]);
            fields[1].push(column[rows - 1]);
            fields[2].push(mean);
            fields[3].push(var.sqrt());
            for (q, quantile) in QUANTILES.iter().enumerate() {
                let position = quantile * (rows - 1) as f64;
                let (lo, frac) = (position.floor() as usize, position.fract());
                let hi = (lo + 1).min(rows - 1);
                fields[5 + q].push(column[lo] + (column[hi] - column[lo]) * frac);
            }
        }
        fields[COUNT] = vec![rows as f64];
        Self { fields }
    }

    /// Pools episodes: extremes of the extremes, count-weighted means, the
    /// pooled variance, count-weighted quantiles (as LeRobot aggregates them).
    pub fn aggregate<'a>(parts: impl Iterator<Item = &'a FeatureStats>) -> Option<Self> {
        let parts: Vec<&FeatureStats> = parts.filter(|p| p.count() > 0.0).collect();
        let first = parts.first()?;
        let dim = first.fields[0].len();
        let total: f64 = parts.iter().map(|p| p.count()).sum();
        let mut out = Self::empty();
        for d in 0..dim {
            let min = parts
                .iter()
                .map(|p| p.fields[0][d])
                .fold(f64::INFINITY, f64::min);
            let max = parts
                .iter()
                .map(|p| p.fields[1][d])
                .fold(f64::NEG_INFINITY, f64::max);
            let mean = parts
                .iter()
                .map(|p| p.fields[2][d] * p.count())
                .sum::<f64>()
                / total;
            let var = parts
                .iter()
                .map(|p| p.count() * (p.fields[3][d].powi(2) + (p.fields[2][d] - mean).powi(2)))
                .sum::<f64>()
                / total;
            out.fields[0].push(min);
            out.fields[1].push(max);
            out.fields[2].push(mean);
            out.fields[3].push(var.sqrt());
            for q in 0..QUANTILES.len() {
                out.fields[5 + q].push(
                    parts
                        .iter()
                        .map(|p| p.fields[5 + q].get(d).copied().unwrap_or(0.0) * p.count())
                        .sum::<f64>()
                        / total,
                );
            }
        }
        out.fields[COUNT] = vec![total];
        Some(out)
    }

    /// stats.json's entry; a camera's per-channel values shaped [3, 1, 1].
    pub fn to_json(&self, camera: bool) -> Value {
        let names = [
            "min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99",
        ];
        let mut out = serde_json::Map::new();
        for (name, values) in names.iter().zip(&self.fields) {
            let value = if camera && *name != "count" {
                json!(values.iter().map(|v| json!([[v]])).collect::<Vec<_>>())
            } else if *name == "count" {
                json!(values.iter().map(|v| *v as u64).collect::<Vec<_>>())
            } else {
                json!(values)
            };
            out.insert((*name).to_string(), value);
        }
        Value::Object(out)
    }
}

/// A camera's per-channel histogram over an episode's frames: exact statistics
/// of the pixel values in [0, 1].
#[derive(Debug, Clone)]
pub struct ImageAccumulator {
    histogram: Box<[[u64; 256]; 3]>,
    frames: u64,
}

impl Default for ImageAccumulator {
    fn default() -> Self {
        Self {
            histogram: Box::new([[0; 256]; 3]),
            frames: 0,
        }
    }
}

impl ImageAccumulator {
    pub fn add(&mut self, rgb: &[u8]) {
        self.frames += 1;
        for pixel in rgb.chunks_exact(3) {
            for (c, &v) in pixel.iter().enumerate() {
                self.histogram[c][v as usize] += 1;
            }
        }
    }

    pub fn stats(&self) -> FeatureStats {
        let mut fields = vec![Vec::new(); FIELDS];
        for channel in self.histogram.iter() {
            let n: u64 = channel.iter().sum();
            if n == 0 {
                return FeatureStats::empty();
            }
            let value = |i: usize| i as f64 / 255.0;
            let mean = channel
                .iter()
                .enumerate()
                .map(|(i, &c)| value(i) * c as f64)
                .sum::<f64>()
                / n as f64;
            let var = channel
                .iter()
                .enumerate()
                .map(|(i, &c)| (value(i) - mean).powi(2) * c as f64)
                .sum::<f64>()
                / n as f64;
            let first = channel.iter().position(|&c| c > 0).unwrap_or(0);
            let last = channel.iter().rposition(|&c| c > 0).unwrap_or(0);
            fields[0].push(value(first));
            fields[1].push(value(last));
            fields[2].push(mean);
            fields[3].push(var.sqrt());
            // The k-th order statistic from the cumulative histogram.
            let order = |k: u64| {
                let mut seen = 0;
                for (i, &c) in channel.iter().enumerate() {
                    seen += c;
                    if seen > k {
                        return value(i);
                    }
                }
                value(last)
            };
            for (q, quantile) in QUANTILES.iter().enumerate() {
                let position = quantile * (n - 1) as f64;
                let lo = position.floor() as u64;
                let (a, b) = (order(lo), order((lo + 1).min(n - 1)));
                fields[5 + q].push(a + (b - a) * position.fract());
            }
        }
        // Frames, as LeRobot counts them for cameras (every frame has as many
        // pixels, so pooling by frames weights pixels equally).
        fields[COUNT] = vec![self.frames as f64];
        FeatureStats { fields }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_statistics_equal_those_of_the_concatenation() {
        let a: Vec<f64> = (0..40).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..60).map(|i| (i as f64 * 0.11).cos() * 2.0).collect();
        let whole: Vec<f64> = a.iter().chain(&b).copied().collect();
        let (sa, sb, sw) = (
            FeatureStats::of_rows(&a, 2),
            FeatureStats::of_rows(&b, 2),
            FeatureStats::of_rows(&whole, 2),
        );
        let pooled = FeatureStats::aggregate([&sa, &sb].into_iter()).unwrap();
        for f in [0, 1, 2, 3, 4] {
            for (x, y) in pooled.field(f).iter().zip(sw.field(f)) {
                assert!((x - y).abs() < 1e-12, "field {f}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn quantiles_interpolate_like_numpy() {
        // numpy.quantile([0, 1, ..., 10], 0.01) = 0.1, 0.5 -> 5.
        let values: Vec<f64> = (0..=10).map(f64::from).collect();
        let s = FeatureStats::of_rows(&values, 1);
        assert!((s.field(5)[0] - 0.1).abs() < 1e-12);
        assert!((s.field(7)[0] - 5.0).abs() < 1e-12);
    }

    #[test]
    fn image_statistics_are_per_channel_in_zero_one() {
        let mut acc = ImageAccumulator::default();
        acc.add(&[0, 255, 10, 255, 255, 30]);
        let s = acc.stats();
        assert_eq!(s.field(0), &[0.0, 1.0, 10.0 / 255.0]);
        assert_eq!(s.field(1), &[1.0, 1.0, 30.0 / 255.0]);
        assert!((s.field(2)[0] - 0.5).abs() < 1e-12);
        assert!((s.field(3)[0] - 0.5).abs() < 1e-12);
    }
}
