//! Log-mel spectrograms as librosa computes them
//! (`librosa.feature.melspectrogram(..., center=False)` then
//! `librosa.power_to_db`), for audio streams: a periodic Hann window, |STFT|^power,
//! a Slaney- or HTK-scale mel filterbank with Slaney area normalization, and
//! `10 log10(max(amin, S)) - 10 log10(max(amin, ref))`, floored at `max - top_db`.
//! Buffers are made once; [`LogMel::compute`] allocates nothing.

use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The spectrogram's parameters (librosa's names and defaults where it has them).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MelConfig {
    /// FFT size (and window length), samples.
    pub n_fft: usize,
    /// Samples between frames.
    pub hop_length: usize,
    pub n_mels: usize,
    #[serde(default)]
    pub fmin: f64,
    /// Default: half the sample rate.
    pub fmax: Option<f64>,
    /// `slaney` (default: each filter has unit area) or `none`.
    #[serde(default)]
    pub norm: MelNorm,
    /// The HTK mel scale instead of Slaney's.
    #[serde(default)]
    pub htk: bool,
    /// 2 for power, 1 for magnitude.
    #[serde(default = "two")]
    pub power: f64,
    /// power_to_db's `amin`.
    #[serde(default = "default_amin")]
    pub amin: f64,
    /// power_to_db's `ref` (a fixed value).
    #[serde(default = "one")]
    pub reference: f64,
    /// power_to_db's `top_db` (None: no floor).
    #[serde(default = "default_top_db")]
    pub top_db: Option<f64>,
}

fn two() -> f64 {
    2.0
}

fn one() -> f64 {
    1.0
}

fn default_amin() -> f64 {
    1e-10
}

fn default_top_db() -> Option<f64> {
    Some(80.0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MelNorm {
    #[default]
    Slaney,
    None,
}

impl MelConfig {
    /// Checks the values against the sample rate; on error the field and why.
    pub fn check(&self, sample_rate: f64) -> Result<(), (&'static str, String)> {
        if !(16..=65_536).contains(&self.n_fft) {
            return Err((
                "n_fft",
                format!("must be in 16..=65536, found {}", self.n_fft),
            ));
        }
        if self.hop_length == 0 || self.hop_length > self.n_fft * 4 {
            return Err(("hop_length", "must be in 1..=4 n_fft".into()));
        }
        if !(1..=512).contains(&self.n_mels) {
            return Err(("n_mels", "must be in 1..=512".into()));
        }
        let fmax = self.fmax.unwrap_or(sample_rate / 2.0);
        if !(self.fmin.is_finite() && self.fmin >= 0.0 && fmax.is_finite() && self.fmin < fmax) {
            return Err((
                "fmin",
                format!("need 0 <= fmin < fmax, found {} and {fmax}", self.fmin),
            ));
        }
        if fmax > sample_rate / 2.0 {
            return Err((
                "fmax",
                format!(
                    "{fmax} is above the Nyquist frequency {}",
                    sample_rate / 2.0
                ),
            ));
        }
        if !(self.power.is_finite() && self.power > 0.0) {
            return Err(("power", "must be positive".into()));
        }
        if !(self.amin.is_finite()
            && self.amin > 0.0
            && self.reference.is_finite()
            && self.reference > 0.0)
        {
            return Err(("amin", "amin and reference must be positive".into()));
        }
        if self.top_db.is_some_and(|t| !(t.is_finite() && t >= 0.0)) {
            return Err(("top_db", "must be a non-negative number".into()));
        }
        Ok(())
    }

    /// Frames in a window of `samples` samples (center = False).
    pub fn frames(&self, samples: usize) -> usize {
        if samples < self.n_fft {
            0
        } else {
            1 + (samples - self.n_fft) / self.hop_length
        }
    }
}

fn hz_to_mel(f: f64, htk: bool) -> f64 {
    if htk {
        return 2595.0 * (1.0 + f / 700.0).log10();
    }
    let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if f >= min_log_hz {
        min_log_mel + (f / min_log_hz).ln() / logstep
    } else {
        f / f_sp
    }
}

fn mel_to_hz(m: f64, htk: bool) -> f64 {
    if htk {
        return 700.0 * (10f64.powf(m / 2595.0) - 1.0);
    }
    let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if m >= min_log_mel {
        min_log_hz * (logstep * (m - min_log_mel)).exp()
    } else {
        f_sp * m
    }
}

/// The mel filterbank, `[n_mels][1 + n_fft / 2]` (librosa.filters.mel).
pub fn mel_filters(config: &MelConfig, sample_rate: f64) -> Vec<Vec<f64>> {
    let bins = 1 + config.n_fft / 2;
    let fmax = config.fmax.unwrap_or(sample_rate / 2.0);
    let fft_freqs: Vec<f64> = (0..bins)
        .map(|k| k as f64 * sample_rate / config.n_fft as f64)
        .collect();
    let (lo, hi) = (
        hz_to_mel(config.fmin, config.htk),
        hz_to_mel(fmax, config.htk),
    );
    let points = config.n_mels + 2;
    let mel_f: Vec<f64> = (0..points)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (points - 1) as f64, config.htk))
        .collect();
    (0..config.n_mels)
        .map(|m| {
            let (left, center, right) = (mel_f[m], mel_f[m + 1], mel_f[m + 2]);
            let enorm = match config.norm {
                MelNorm::Slaney => 2.0 / (right - left),
                MelNorm::None => 1.0,
            };
            fft_freqs
                .iter()
                .map(|&f| {
                    let lower = (f - left) / (center - left);
                    let upper = (right - f) / (right - center);
                    lower.min(upper).max(0.0) * enorm
                })
                .collect()
        })
        .collect()
}

/// A log-mel spectrogram of fixed-size windows.
pub struct LogMel {
    config: MelConfig,
    /// Each filter's non-zero span: its first FFT bin and the weights from there
    /// (most of a mel filter is zero).
    filters: Vec<(usize, Vec<f64>)>,
    window: Vec<f64>,
    fft: Arc<dyn Fft<f64>>,
    buffer: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
    power: Vec<f64>,
}

impl LogMel {
    pub fn new(config: &MelConfig, sample_rate: f64) -> Self {
        let n = config.n_fft;
        let fft = FftPlanner::new().plan_fft_forward(n);
        let scratch = vec![Complex::default(); fft.get_inplace_scratch_len()];
        let filters = mel_filters(config, sample_rate)
            .into_iter()
            .map(|w| {
                let first = w.iter().position(|v| *v != 0.0).unwrap_or(0);
                let last = w.iter().rposition(|v| *v != 0.0).map_or(first, |l| l + 1);
                (first, w[first..last].to_vec())
            })
            .collect();
        Self {
            filters,
            // Periodic Hann (scipy.signal.get_window('hann', n, fftbins=True)).
            window: (0..n)
                .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos())
                .collect(),
            fft,
            buffer: vec![Complex::default(); n],
            scratch,
            power: vec![0.0; 1 + n / 2],
            config: config.clone(),
        }
    }

    /// `[n_mels][frames]` row-major into `out` (its length says how many frames).
    pub fn compute(&mut self, samples: &[f32], out: &mut [f32]) {
        let c = &self.config;
        let frames = out.len() / c.n_mels.max(1);
        let mut db_max = f64::NEG_INFINITY;
        for t in 0..frames {
            let start = t * c.hop_length;
            for (i, b) in self.buffer.iter_mut().enumerate() {
                let x = samples.get(start + i).copied().unwrap_or(0.0);
                *b = Complex::new(f64::from(x) * self.window[i], 0.0);
            }
            self.fft
                .process_with_scratch(&mut self.buffer, &mut self.scratch);
            for (p, b) in self.power.iter_mut().zip(&self.buffer) {
                *p = if c.power == 2.0 {
                    b.norm_sqr()
                } else {
                    b.norm().powf(c.power)
                };
            }
            for (m, (first, weights)) in self.filters.iter().enumerate() {
                let energy: f64 = weights
                    .iter()
                    .zip(&self.power[*first..])
                    .map(|(w, p)| w * p)
                    .sum();
                let db = 10.0 * energy.max(c.amin).log10() - 10.0 * c.reference.max(c.amin).log10();
                db_max = db_max.max(db);
                out[m * frames + t] = db as f32;
            }
        }
        if let Some(top_db) = c.top_db {
            let floor = (db_max - top_db) as f32;
            for v in out.iter_mut() {
                *v = v.max(floor);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mel_scale_round_trips_and_filters_have_unit_area() {
        for f in [0.0, 440.0, 1000.0, 3000.0, 7999.0] {
            for htk in [false, true] {
                assert!((mel_to_hz(hz_to_mel(f, htk), htk) - f).abs() < 1e-6);
            }
        }
        let config = MelConfig {
            n_fft: 512,
            hop_length: 160,
            n_mels: 40,
            fmin: 0.0,
            fmax: None,
            norm: MelNorm::Slaney,
            htk: false,
            power: 2.0,
            amin: 1e-10,
            reference: 1.0,
            top_db: Some(80.0),
        };
        let filters = mel_filters(&config, 16_000.0);
        assert_eq!(filters.len(), 40);
        assert_eq!(filters[0].len(), 257);
        assert!(filters.iter().all(|f| f.iter().any(|w| *w > 0.0)));
        assert_eq!(config.frames(16_000), 1 + (16_000 - 512) / 160);
        assert_eq!(config.frames(100), 0);
    }
}
