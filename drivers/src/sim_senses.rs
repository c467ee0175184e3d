//! The simulated arm's hearing and touch, for a task where vision alone is
//! ambiguous. With `decoy = true` the world draws two identical red targets on
//! opposite sides of the arm and only the true one emits a tone:
//!
//! - [`SoundConfig`]: two microphones on the y axis, left and right of the base,
//!   hear the tone louder on its side (amplitude falls as 1/distance) over
//!   independent background noise; the stream is the log-mel spectrogram of each
//!   microphone, `[2, n_mels, frames]` (left first), computed off the tick like the
//!   `audio` driver's.
//! - [`TouchConfig`]: a square taxel pad centred on the end effector (world-aligned)
//!   feels how deep each taxel presses into a target's disc, 0 (no contact) to 1
//!   (at the centre), `[rows, cols]`. Both targets feel the same.
//!
//! Everything is a function of the world's state and a seeded generator, stepped on
//! the simulation's time, so runs under the simulated clock stay byte-identical.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::mel::{LogMel, MelConfig};

/// `[drivers.sound]`: the tone of the true target as two microphones hear it.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SoundConfig {
    /// The stream's name (its field is `data`).
    #[serde(default = "default_sound_name")]
    pub name: String,
    #[serde(default = "default_sample_rate")]
    pub sample_rate: u32,
    /// The audio each spectrogram covers, ms.
    #[serde(default = "default_window_ms")]
    pub window_ms: f64,
    /// A new spectrogram every this many ms.
    #[serde(default = "default_hop_ms")]
    pub hop_ms: f64,
    /// The tone's frequency, Hz.
    #[serde(default = "default_tone_hz")]
    pub tone_hz: f64,
    /// The tone's amplitude 1 m from the source (full scale 1).
    #[serde(default = "default_amplitude")]
    pub amplitude: f64,
    /// Standard deviation of each microphone's background noise (uniform, white).
    #[serde(default = "default_noise")]
    pub noise: f64,
    /// Distance between the two microphones, m (centred on the base).
    #[serde(default = "default_mic_spacing")]
    pub mic_spacing: f64,
    /// Negative control: each episode the tone comes from a target chosen by an
    /// independent coin, i.e. the sound of another episode, uncorrelated with
    /// which target is true.
    #[serde(default)]
    pub shuffle: bool,
    pub mel: MelConfig,
}

/// `[drivers.touch]`: a taxel pad on the end effector.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TouchConfig {
    /// The stream's name (its field is `data`).
    #[serde(default = "default_touch_name")]
    pub name: String,
    #[serde(default = "default_taxels")]
    pub rows: usize,
    #[serde(default = "default_taxels")]
    pub cols: usize,
    /// Side of the square pad, m.
    #[serde(default = "default_pad")]
    pub pad: f64,
    #[serde(default = "default_touch_rate")]
    pub rate_hz: f64,
}

fn default_sound_name() -> String {
    "sound".into()
}
fn default_touch_name() -> String {
    "touch".into()
}
fn default_sample_rate() -> u32 {
    16_000
}
fn default_window_ms() -> f64 {
    64.0
}
fn default_hop_ms() -> f64 {
    50.0
}
fn default_tone_hz() -> f64 {
    1_000.0
}
fn default_amplitude() -> f64 {
    0.05
}
fn default_noise() -> f64 {
    0.02
}
fn default_mic_spacing() -> f64 {
    0.8
}
fn default_taxels() -> usize {
    4
}
fn default_pad() -> f64 {
    0.08
}
fn default_touch_rate() -> f64 {
    100.0
}

impl SoundConfig {
    /// Samples per spectrogram window.
    pub fn window(&self) -> usize {
        (self.window_ms * f64::from(self.sample_rate) / 1e3).round() as usize
    }

    pub fn hop_ns(&self) -> u64 {
        (self.hop_ms * 1e6).round() as u64
    }

    /// `[2, n_mels, frames]`.
    pub fn shape(&self) -> Vec<usize> {
        vec![2, self.mel.n_mels, self.mel.frames(self.window())]
    }

    /// Checks the values; on error the field (under `sound.`) and why.
    pub fn check(&self) -> Result<(), (String, String)> {
        let rate = f64::from(self.sample_rate);
        if !(8_000..=192_000).contains(&self.sample_rate) {
            return Err((
                "sample_rate".into(),
                format!("must be in 8000..=192000 Hz, found {}", self.sample_rate),
            ));
        }
        for (field, value, max) in [
            ("window_ms", self.window_ms, 10_000.0),
            ("hop_ms", self.hop_ms, 10_000.0),
            ("tone_hz", self.tone_hz, rate / 2.0),
            ("amplitude", self.amplitude, 100.0),
            ("mic_spacing", self.mic_spacing, 100.0),
        ] {
            if !(value.is_finite() && value > 0.0 && value <= max) {
                return Err((
                    field.into(),
                    format!("must be in (0, {max}], found {value}"),
                ));
            }
        }
        if !(self.noise.is_finite() && (0.0..=10.0).contains(&self.noise)) {
            return Err((
                "noise".into(),
                format!("must be in [0, 10], found {}", self.noise),
            ));
        }
        self.mel
            .check(rate)
            .map_err(|(field, message)| (format!("mel.{field}"), message))?;
        if self.mel.frames(self.window()) == 0 {
            return Err((
                "window_ms".into(),
                format!(
                    "{} samples are fewer than mel.n_fft = {}",
                    self.window(),
                    self.mel.n_fft
                ),
            ));
        }
        Ok(())
    }
}

impl TouchConfig {
    pub fn period_ns(&self) -> u64 {
        (1e9 / self.rate_hz).round() as u64
    }

    pub fn check(&self) -> Result<(), (String, String)> {
        for (field, n) in [("rows", self.rows), ("cols", self.cols)] {
            if !(1..=64).contains(&n) {
                return Err((field.into(), format!("must be in 1..=64, found {n}")));
            }
        }
        if !(self.pad.is_finite() && self.pad > 0.0 && self.pad <= 1.0) {
            return Err((
                "pad".into(),
                format!("must be in (0, 1] m, found {}", self.pad),
            ));
        }
        if !(self.rate_hz.is_finite() && self.rate_hz > 0.0 && self.rate_hz <= 10_000.0) {
            return Err((
                "rate_hz".into(),
                format!("must be in (0, 10000] Hz, found {}", self.rate_hz),
            ));
        }
        Ok(())
    }
}

/// The two microphones: the signal they pick up and its spectrogram. Buffers are
/// made once; [`Hearing::listen`] allocates nothing.
pub struct Hearing {
    config: SoundConfig,
    mel: LogMel,
    signal: Vec<f32>,
    noise: ChaCha8Rng,
}

impl Hearing {
    pub fn new(config: &SoundConfig, seed: u64) -> Self {
        Self {
            mel: LogMel::new(&config.mel, f64::from(config.sample_rate)),
            signal: vec![0.0; config.window()],
            // Its own generator: hearing never shifts the targets the world draws.
            noise: ChaCha8Rng::seed_from_u64(seed ^ 0x50D5_50D5_50D5_50D5),
            config: config.clone(),
        }
    }

    pub fn config(&self) -> &SoundConfig {
        &self.config
    }

    /// The spectrograms of the window ending at `end_ns` of simulated time, with
    /// the tone at `source` (None: silence but noise) into `out`, `[2, n_mels,
    /// frames]`, left microphone first.
    pub fn listen(&mut self, source: Option<[f64; 2]>, end_ns: u64, out: &mut [f32]) {
        let c = &self.config;
        let rate = f64::from(c.sample_rate);
        let n = self.signal.len();
        let half = out.len() / 2;
        let end_s = end_ns as f64 / 1e9;
        // Uniform in ±a has standard deviation a / sqrt(3).
        let spread = c.noise * 3f64.sqrt();
        for (mic, spectrogram) in out.chunks_mut(half).enumerate() {
            let y = if mic == 0 { 0.5 } else { -0.5 } * c.mic_spacing;
            // Amplitude falls as 1/distance (a point source), capped at 10 cm.
            let gain = source.map_or(0.0, |[sx, sy]| c.amplitude / sx.hypot(sy - y).max(0.1));
            for (k, s) in self.signal.iter_mut().enumerate() {
                let t = end_s - (n - 1 - k) as f64 / rate;
                let tone = gain * (2.0 * std::f64::consts::PI * c.tone_hz * t).sin();
                let noise = if spread > 0.0 {
                    self.noise.random_range(-spread..spread)
                } else {
                    0.0
                };
                *s = (tone + noise) as f32;
            }
            self.mel.compute(&self.signal, spectrogram);
        }
    }
}

/// The taxel pad on the end effector.
pub struct Touch {
    config: TouchConfig,
}

impl Touch {
    pub fn new(config: &TouchConfig) -> Self {
        Self {
            config: config.clone(),
        }
    }

    pub fn config(&self) -> &TouchConfig {
        &self.config
    }

    /// Each taxel's depth into the nearest target disc of `radius` (0..=1), row
    /// major, row 0 at the pad's +y edge.
    pub fn feel(&self, effector: [f64; 2], targets: &[[f64; 2]], radius: f64, out: &mut [f32]) {
        let c = &self.config;
        for row in 0..c.rows {
            for col in 0..c.cols {
                let x = effector[0] + ((col as f64 + 0.5) / c.cols as f64 - 0.5) * c.pad;
                let y = effector[1] - ((row as f64 + 0.5) / c.rows as f64 - 0.5) * c.pad;
                let depth = targets
                    .iter()
                    .map(|t| 1.0 - (x - t[0]).hypot(y - t[1]) / radius)
                    .fold(0.0f64, f64::max);
                out[row * c.cols + col] = depth as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sound() -> SoundConfig {
        serde_json::from_str(
            r#"{"mel": {"n_fft": 512, "hop_length": 256, "n_mels": 16, "fmax": 4000.0}}"#,
        )
        .unwrap()
    }

    fn band_energy(spectrogram: &[f32], config: &SoundConfig) -> f32 {
        // The mel band holding the tone, averaged over the frames.
        let frames = config.mel.frames(config.window());
        let row = spectrogram
            .chunks(frames)
            .enumerate()
            .max_by(|a, b| a.1[0].total_cmp(&b.1[0]))
            .unwrap()
            .0;
        spectrogram[row * frames..(row + 1) * frames]
            .iter()
            .sum::<f32>()
            / frames as f32
    }

    #[test]
    fn the_microphone_nearer_the_source_hears_it_louder() {
        let config = sound();
        config.check().unwrap();
        let len: usize = config.shape().iter().product();
        let mut hearing = Hearing::new(&config, 3);
        let mut out = vec![0.0; len];
        hearing.listen(Some([0.3, 0.6]), 1_000_000_000, &mut out);
        let (left, right) = out.split_at(len / 2);
        let (l, r) = (band_energy(left, &config), band_energy(right, &config));
        assert!(l > r + 3.0, "left {l} dB, right {r} dB");
        hearing.listen(Some([0.3, -0.6]), 1_050_000_000, &mut out);
        let (left, right) = out.split_at(len / 2);
        assert!(band_energy(right, &config) > band_energy(left, &config) + 3.0);
    }

    #[test]
    fn touch_feels_a_target_only_under_the_pad() {
        let touch = Touch::new(&TouchConfig {
            name: "touch".into(),
            rows: 4,
            cols: 4,
            pad: 0.08,
            rate_hz: 100.0,
        });
        let mut out = vec![0.0; 16];
        touch.feel([0.5, 0.0], &[[0.5, 0.0]], 0.08, &mut out);
        assert!(out.iter().all(|p| *p > 0.2 && *p < 1.0), "{out:?}");
        // A target to the right presses on the right column harder.
        touch.feel([0.5, 0.0], &[[0.56, 0.0]], 0.08, &mut out);
        assert!(out[3] > out[0], "{out:?}");
        touch.feel([0.5, 0.0], &[[0.8, 0.0]], 0.08, &mut out);
        assert!(out.iter().all(|p| *p == 0.0));
    }
}
