//! `[[drivers]] kind = "audio"`: sound as a stream, from a WAV file (tests,
//! replays; ALSA capture is not built yet). Every `hop_ms` the stream publishes the
//! last `window_ms` of audio, either as raw samples (`features = "raw"`: an audio
//! stream `<name>.samples`, `[frames, channels]`) or as a log-mel spectrogram
//! (`features = "log_mel"`: a tensor stream `<name>.data`, `[n_mels, frames]`, of the
//! channels' mean, computed on the driver's thread with [`crate::mel::LogMel`]).
//!
//! Under the simulated clock the window ending at each hop boundary of the
//! simulated time is published from `sim_step`, so runs stay byte-identical; under
//! the wall clock a thread paces the file in real time. A file that ends stops the
//! stream (stale), unless `loop = true`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use reflex_runtime::driver::{Driver, DriverContext, DriverError, DriverPorts, TensorPort};
use reflex_runtime::launch::{Launch, LaunchError};
use reflex_runtime::registry::{DriverKind, DriverSpec, KindTable, schema_of};
use reflex_runtime::slot::{SlotWriter, latest_slot};
use reflex_runtime::stream::{StreamDecl, StreamKind};
use reflex_runtime::types::{TensorSample, monotonic_ns};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::mel::{LogMel, MelConfig};

/// `[[drivers]] kind = "audio"`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AudioConfig {
    /// The stream's name.
    pub name: String,
    /// A WAV file (16/24/32-bit PCM or 32-bit float), relative to the launch file.
    pub file: PathBuf,
    /// The audio each sample of the stream holds, ms.
    pub window_ms: f64,
    /// How often a new window is published, ms.
    pub hop_ms: f64,
    /// `raw` (the samples) or `log_mel` (needs `[drivers.mel]`).
    #[serde(default)]
    pub features: AudioFeatures,
    pub mel: Option<MelConfig>,
    /// Start the file again at its end.
    #[serde(default, rename = "loop")]
    pub looping: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AudioFeatures {
    #[default]
    Raw,
    LogMel,
}

/// A WAV file's samples, interleaved, in [-1, 1] (as soundfile / librosa read them).
pub struct Wav {
    pub sample_rate: u32,
    pub channels: usize,
    pub samples: Vec<f32>,
}

/// Reads a WAV file (PCM scaled by 2^(bits - 1), float as is).
pub fn read_wav(path: &Path) -> Result<Wav, String> {
    let mut reader = hound::WavReader::open(path).map_err(|e| e.to_string())?;
    let spec = reader.spec();
    let samples = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?
        }
    };
    Ok(Wav {
        sample_rate: spec.sample_rate,
        channels: usize::from(spec.channels),
        samples,
    })
}

/// Registers `audio`.
pub struct AudioKind;

#[derive(Debug)]
pub struct AudioSpec {
    pub config: AudioConfig,
    file: PathBuf,
    decl: StreamDecl,
    sample_rate: u32,
    channels: usize,
}

/// Samples per window and per hop.
fn sizes(config: &AudioConfig, sample_rate: u32) -> (usize, usize) {
    let per_ms = f64::from(sample_rate) / 1e3;
    (
        (config.window_ms * per_ms).round() as usize,
        (config.hop_ms * per_ms).round().max(1.0) as usize,
    )
}

impl DriverKind for AudioKind {
    fn kind(&self) -> &'static str {
        "audio"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<AudioConfig>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn DriverSpec>, LaunchError> {
        let config: AudioConfig = table.parse()?;
        table.check_name("name", &config.name)?;
        let file = table.check_file(
            "file",
            &config.file,
            "WAV file",
            reflex_runtime::files::MAX_DATA_BYTES,
        )?;
        let header = hound::WavReader::open(&file)
            .map_err(|e| {
                table.error_at(
                    "file",
                    format!("{}: not a WAV file we read: {e}", file.display()),
                )
            })?
            .spec();
        let (sample_rate, channels) = (header.sample_rate, usize::from(header.channels));
        for (field, ms) in [("window_ms", config.window_ms), ("hop_ms", config.hop_ms)] {
            if !(ms.is_finite() && ms > 0.0 && ms <= 60_000.0) {
                return Err(table.error_at(field, format!("must be in (0, 60000] ms, found {ms}")));
            }
        }
        let (window, _) = sizes(&config, sample_rate);
        if window == 0 || window * channels > 1 << 22 {
            return Err(table.error_at("window_ms", "gives no samples, or too many"));
        }
        let rate_hz = Some(1e3 / config.hop_ms);
        let decl = match (config.features, &config.mel) {
            (AudioFeatures::Raw, None) => StreamDecl {
                name: config.name.clone(),
                kind: StreamKind::Audio {
                    frames: window,
                    channels,
                    sample_rate_hz: f64::from(sample_rate),
                },
                rate_hz,
            },
            (AudioFeatures::Raw, Some(_)) => {
                return Err(table.error_at("mel", "applies to features = \"log_mel\""));
            }
            (AudioFeatures::LogMel, None) => {
                return Err(table.error_at("mel", "features = \"log_mel\" needs [drivers.mel]"));
            }
            (AudioFeatures::LogMel, Some(mel)) => {
                mel.check(f64::from(sample_rate))
                    .map_err(|(field, message)| table.error_at(&format!("mel.{field}"), message))?;
                let frames = mel.frames(window);
                if frames == 0 {
                    return Err(table.error_at(
                        "window_ms",
                        format!("{window} samples are fewer than mel.n_fft = {}", mel.n_fft),
                    ));
                }
                StreamDecl::tensor(&config.name, vec![mel.n_mels, frames], rate_hz)
            }
        };
        Ok(Arc::new(AudioSpec {
            config,
            file,
            decl,
            sample_rate,
            channels,
        }))
    }
}

impl DriverSpec for AudioSpec {
    fn kind(&self) -> &'static str {
        "audio"
    }
    fn name(&self) -> &str {
        &self.config.name
    }
    fn streams(&self) -> Vec<StreamDecl> {
        vec![self.decl.clone()]
    }
    fn is_arm(&self) -> bool {
        false
    }
    fn build(&self, _launch: &Launch) -> Result<Box<dyn Driver>, DriverError> {
        Ok(Box::new(AudioDriver {
            cfg: self.config.clone(),
            file: self.file.clone(),
            len: self.decl.kind.values(),
            sample_rate: self.sample_rate,
            channels: self.channels,
            source: None,
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
            simulated: false,
        }))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The file and what turns its windows into samples of the stream.
struct WindowSource {
    cfg: AudioConfig,
    wav: Wav,
    window: usize,
    hop: usize,
    /// The window's samples (interleaved), then the mono mix for the spectrogram.
    frame: Vec<f32>,
    mono: Vec<f32>,
    mel: Option<LogMel>,
    writer: SlotWriter<TensorSample>,
    published: u64,
}

impl WindowSource {
    /// Frames (per channel) in the file.
    fn file_frames(&self) -> usize {
        self.wav.samples.len() / self.wav.channels.max(1)
    }

    /// Publishes the window that ends at frame `end` of the file (frames before 0
    /// are silence; past the end, looped or silence); false once the file has
    /// ended and does not loop.
    fn publish(&mut self, end: usize, stamp_ns: u64) -> bool {
        let (total, channels) = (self.file_frames(), self.wav.channels);
        if !self.cfg.looping && end > total + self.window {
            return false;
        }
        for f in 0..self.window {
            let at = end as i64 - self.window as i64 + f as i64;
            let source = if at < 0 {
                None
            } else if self.cfg.looping && total > 0 {
                Some(at as usize % total)
            } else {
                Some(at as usize).filter(|a| *a < total)
            };
            for c in 0..channels {
                self.frame[f * channels + c] =
                    source.map_or(0.0, |s| self.wav.samples[s * channels + c]);
            }
        }
        self.published += 1;
        let seq = self.published;
        match &mut self.mel {
            None => {
                let frame = &self.frame;
                self.writer.publish_with(|sample| {
                    sample.seq = seq;
                    sample.stamp_ns = stamp_ns;
                    sample.values.copy_from_slice(frame);
                });
            }
            Some(mel) => {
                for (m, chunk) in self.mono.iter_mut().zip(self.frame.chunks(channels)) {
                    *m = chunk.iter().sum::<f32>() / channels as f32;
                }
                let mono = &self.mono;
                self.writer.publish_with(|sample| {
                    sample.seq = seq;
                    sample.stamp_ns = stamp_ns;
                    mel.compute(mono, &mut sample.values);
                });
            }
        }
        true
    }
}

pub struct AudioDriver {
    cfg: AudioConfig,
    file: PathBuf,
    len: usize,
    sample_rate: u32,
    channels: usize,
    source: Option<WindowSource>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    simulated: bool,
}

impl AudioDriver {
    fn failed(&self, message: impl Into<String>) -> DriverError {
        DriverError::failed(&self.cfg.name, message)
    }
}

impl Driver for AudioDriver {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn open(&mut self, ctx: &DriverContext) -> Result<DriverPorts, DriverError> {
        self.simulated = ctx.simulated;
        let wav = read_wav(&self.file)
            .map_err(|e| self.failed(format!("cannot read {}: {e}", self.file.display())))?;
        if wav.sample_rate != self.sample_rate || wav.channels != self.channels {
            return Err(self.failed("the WAV file changed since the launch file was checked"));
        }
        let (window, hop) = sizes(&self.cfg, self.sample_rate);
        let (writer, reader) = latest_slot(&TensorSample::zeros(self.len));
        self.source = Some(WindowSource {
            mel: self
                .cfg
                .mel
                .as_ref()
                .map(|m| LogMel::new(m, f64::from(self.sample_rate))),
            frame: vec![0.0; window * self.channels],
            mono: vec![0.0; window],
            window,
            hop,
            cfg: self.cfg.clone(),
            wav,
            writer,
            published: 0,
        });
        Ok(DriverPorts {
            tensors: vec![TensorPort {
                name: self.cfg.name.clone(),
                samples: reader,
                len: self.len,
            }],
            ..DriverPorts::default()
        })
    }

    fn start(&mut self) -> Result<(), DriverError> {
        if self.simulated {
            return Ok(());
        }
        let Some(mut source) = self.source.take() else {
            return Err(self.failed("start before open"));
        };
        let stop = self.stop.clone();
        let rate = f64::from(self.sample_rate);
        let thread = std::thread::Builder::new()
            .name(format!("reflex-audio-{}", self.cfg.name))
            .spawn(move || {
                let start = Instant::now();
                let hop_s = source.hop as f64 / rate;
                let mut k = 1u64;
                while !stop.load(Ordering::Acquire) {
                    let due = start + Duration::from_secs_f64(k as f64 * hop_s);
                    let now = Instant::now();
                    if now < due {
                        std::thread::sleep((due - now).min(Duration::from_millis(20)));
                        continue;
                    }
                    let end = k as usize * source.hop;
                    if !source.publish(end, monotonic_ns()) {
                        while !stop.load(Ordering::Acquire) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    k += 1;
                }
            })
            .map_err(|e| self.failed(format!("cannot start audio thread: {e}")))?;
        self.thread = Some(thread);
        Ok(())
    }

    fn sim_step(&mut self, now_ns: u64) -> Result<(), DriverError> {
        let Some(source) = &mut self.source else {
            return Ok(());
        };
        // The newest hop boundary at or before now; each is published once.
        let rate = f64::from(self.sample_rate);
        let hop_ns = source.hop as f64 / rate * 1e9;
        let k = (now_ns as f64 / hop_ns).floor() as u64;
        if k >= 1 && k > source.published {
            let end = k as usize * source.hop;
            source.published = k - 1;
            source.publish(end, (k as f64 * hop_ns) as u64);
        }
        Ok(())
    }

    fn stop(&mut self) -> Result<(), DriverError> {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| self.failed("audio thread panicked"))?;
        }
        Ok(())
    }
}
