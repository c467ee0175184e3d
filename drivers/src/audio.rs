//! `[[drivers]] kind = "audio"`: sound as a stream, from a WAV file (tests,
//! replays) or captured live from an ALSA device (a microphone, through cpal).
//! Every `hop_ms` the stream publishes the last `window_ms` of audio, either as raw
//! samples (`features = "raw"`: an audio stream `<name>.samples`, `[frames,
//! channels]`) or as a log-mel spectrogram (`features = "log_mel"`: a tensor stream
//! `<name>.data`, `[n_mels, frames]`, of the channels' mean, computed on the
//! driver's thread with [`crate::mel::LogMel`]). Both sources share that step
//! ([`WindowPublisher`]).
//!
//! Files: under the simulated clock the window ending at each hop boundary of the
//! simulated time is published from `sim_step`, so runs stay byte-identical; under
//! the wall clock a thread paces the file in real time. A file that ends stops the
//! stream (stale), unless `loop = true`.
//!
//! Devices ([`alsa_capture`]): cpal's callback appends the captured frames to a
//! lock-free ring ([`frame_ring`]); the driver's thread, woken by it, publishes the
//! newest window once a hop of new frames has arrived, stamped with the capture
//! time of its last frame. A device error stops the stream (stale); a live device
//! cannot run under the simulated clock.

mod alsa_capture;
mod frame_ring;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use reflex_runtime::driver::{Driver, DriverContext, DriverError, DriverPorts, TensorPort};
use reflex_runtime::launch::{Launch, LaunchError};
use reflex_runtime::registry::{DriverKind, DriverSpec, KindTable, schema_of};
use reflex_runtime::slot::{SlotWriter, latest_slot};
use reflex_runtime::stream::{SourceCounters, StreamDecl, StreamKind};
use reflex_runtime::types::{TensorSample, monotonic_ns};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::mel::{LogMel, MelConfig};
use alsa_capture::{AlsaCapture, CaptureRequest, CaptureShared};
use frame_ring::ReadError;

/// `[[drivers]] kind = "audio"`: exactly one of `file` and `device`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AudioConfig {
    /// The stream's name.
    pub name: String,
    /// A WAV file (16/24/32-bit PCM or 32-bit float), relative to the launch file.
    pub file: Option<PathBuf>,
    /// An ALSA capture device, by the PCM name `arecord -L` lists: `default`,
    /// `hw:1,0`, `plughw:CARD=Mic,DEV=0`, ...
    pub device: Option<String>,
    /// `device` only: the capture rate, Hz (default 16000; a file has its own).
    pub sample_rate: Option<u32>,
    /// `device` only: the channels captured (default 1; a file has its own).
    pub channels: Option<u16>,
    /// The audio each sample of the stream holds, ms.
    pub window_ms: f64,
    /// How often a new window is published, ms.
    pub hop_ms: f64,
    /// `raw` (the samples) or `log_mel` (needs `[drivers.mel]`).
    #[serde(default)]
    pub features: AudioFeatures,
    pub mel: Option<MelConfig>,
    /// `file` only: start the file again at its end.
    #[serde(default, rename = "loop")]
    pub looping: bool,
}

/// `device`'s rate and channels when not given.
pub const DEFAULT_DEVICE_RATE: u32 = 16_000;
pub const DEFAULT_DEVICE_CHANNELS: u16 = 1;

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

/// Where the audio comes from.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// A WAV file (resolved path).
    File(PathBuf),
    /// An ALSA capture PCM, by name.
    Device(String),
}

#[derive(Debug)]
pub struct AudioSpec {
    pub config: AudioConfig,
    source: Source,
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

/// The source, its rate and its channels, checked without opening a device.
fn check_source(
    table: &KindTable<'_>,
    config: &AudioConfig,
) -> Result<(Source, u32, usize), LaunchError> {
    match (&config.file, &config.device) {
        (Some(_), Some(_)) => Err(table.error_at(
            "",
            "audio needs exactly one of `file` or `device`, found both",
        )),
        (None, None) => Err(table.error_at(
            "",
            "audio needs exactly one of `file` (a WAV file) or `device` (an ALSA capture \
             device), found none",
        )),
        (Some(path), None) => {
            for (field, set) in [
                ("sample_rate", config.sample_rate.is_some()),
                ("channels", config.channels.is_some()),
            ] {
                if set {
                    return Err(
                        table.error_at(field, "comes from the WAV file; set it only with `device`")
                    );
                }
            }
            let file = table.check_file(
                "file",
                path,
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
            Ok((
                Source::File(file),
                header.sample_rate,
                usize::from(header.channels),
            ))
        }
        (None, Some(device)) => {
            check_device_name(device).map_err(|message| table.error_at("device", message))?;
            if config.looping {
                return Err(table.error_at("loop", "applies to `file`, not to a live `device`"));
            }
            let rate = config.sample_rate.unwrap_or(DEFAULT_DEVICE_RATE);
            if !(1_000..=384_000).contains(&rate) {
                return Err(table.error_at(
                    "sample_rate",
                    format!("must be 1000 to 384000 Hz, found {rate}"),
                ));
            }
            let channels = config.channels.unwrap_or(DEFAULT_DEVICE_CHANNELS);
            if !(1..=32).contains(&channels) {
                return Err(
                    table.error_at("channels", format!("must be 1 to 32, found {channels}"))
                );
            }
            Ok((Source::Device(device.clone()), rate, usize::from(channels)))
        }
    }
}

/// What `reflex check` can tell about an ALSA device name without opening it: its
/// syntax, and for `hw:` / `plughw:` names whether the card exists here
/// (`/proc/asound/card<N>` or `/proc/asound/<id>`).
fn check_device_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        return Err(
            "an ALSA PCM name (`default`, `hw:1,0`, `plughw:CARD=Mic,DEV=0`, see `arecord -L`) \
             of 1 to 256 bytes without control characters"
                .to_string(),
        );
    }
    let Some(args) = name
        .strip_prefix("hw:")
        .or_else(|| name.strip_prefix("plughw:"))
    else {
        return Ok(());
    };
    let card = args.split(',').next().unwrap_or("").trim();
    let card = card.strip_prefix("CARD=").unwrap_or(card);
    if card.is_empty() || card.contains(['/', '=']) || card.starts_with('.') {
        return Ok(());
    }
    let asound = Path::new("/proc/asound");
    let entry = match card.parse::<u32>() {
        Ok(index) => asound.join(format!("card{index}")),
        Err(_) => asound.join(card),
    };
    if entry.exists() {
        Ok(())
    } else if !asound.exists() {
        Err(format!(
            "no sound card {card} on this machine: it has no sound cards (/proc/asound is missing)"
        ))
    } else {
        Err(format!(
            "no sound card {card} on this machine (see `cat /proc/asound/cards`, `arecord -L`)"
        ))
    }
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
        let (source, sample_rate, channels) = check_source(table, &config)?;
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
            source,
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
    fn source(&self, _launch: &Launch) -> Option<String> {
        Some(match &self.source {
            Source::File(file) => format!("WAV file {}", file.display()),
            Source::Device(device) => format!("ALSA capture device {device:?}"),
        })
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
            source: self.source.clone(),
            len: self.decl.kind.values(),
            sample_rate: self.sample_rate,
            channels: self.channels,
            opened: None,
            capture: None,
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
            simulated: false,
            reported: false,
        }))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Turns windows of audio into samples of the stream, the same for files and
/// devices: the samples as they are, or the log-mel spectrogram of the channels'
/// mean (computed here, on the driver's thread, never in the tick).
struct WindowPublisher {
    channels: usize,
    /// The window's samples, interleaved: the source fills it, then `publish`.
    frame: Vec<f32>,
    /// The mono mix for the spectrogram.
    mono: Vec<f32>,
    mel: Option<LogMel>,
    writer: SlotWriter<TensorSample>,
    published: u64,
}

impl WindowPublisher {
    fn new(
        cfg: &AudioConfig,
        sample_rate: u32,
        channels: usize,
        window: usize,
        writer: SlotWriter<TensorSample>,
    ) -> Self {
        Self {
            channels,
            frame: vec![0.0; window * channels],
            mono: vec![0.0; window],
            mel: cfg
                .mel
                .as_ref()
                .map(|m| LogMel::new(m, f64::from(sample_rate))),
            writer,
            published: 0,
        }
    }

    /// Publishes `frame`, stamped `stamp_ns` (the capture time of its last frame).
    fn publish(&mut self, stamp_ns: u64) {
        self.published += 1;
        let seq = self.published;
        let channels = self.channels;
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
    }
}

/// A WAV file cut into the windows that end at each hop.
struct FileSource {
    wav: Wav,
    looping: bool,
    window: usize,
    hop: usize,
    out: WindowPublisher,
}

impl FileSource {
    /// Frames (per channel) in the file.
    fn file_frames(&self) -> usize {
        self.wav.samples.len() / self.wav.channels.max(1)
    }

    /// Publishes the window that ends at frame `end` of the file (frames before 0
    /// are silence; past the end, looped or silence); false once the file has
    /// ended and does not loop.
    fn publish(&mut self, end: usize, stamp_ns: u64) -> bool {
        let (total, channels) = (self.file_frames(), self.wav.channels);
        if !self.looping && end > total + self.window {
            return false;
        }
        for f in 0..self.window {
            let at = end as i64 - self.window as i64 + f as i64;
            let source = if at < 0 {
                None
            } else if self.looping && total > 0 {
                Some(at as usize % total)
            } else {
                Some(at as usize).filter(|a| *a < total)
            };
            for c in 0..channels {
                self.out.frame[f * channels + c] =
                    source.map_or(0.0, |s| self.wav.samples[s * channels + c]);
            }
        }
        self.out.publish(stamp_ns);
        true
    }

    /// Wall clock: the file in real time; returns the windows published.
    fn run(mut self, sample_rate: u32, stop: &AtomicBool) -> u64 {
        let start = Instant::now();
        let hop_s = self.hop as f64 / f64::from(sample_rate);
        let mut k = 1u64;
        while !stop.load(Ordering::Acquire) {
            let due = start + Duration::from_secs_f64(k as f64 * hop_s);
            let now = Instant::now();
            if now < due {
                std::thread::sleep((due - now).min(Duration::from_millis(20)));
                continue;
            }
            let end = k as usize * self.hop;
            if !self.publish(end, monotonic_ns()) {
                while !stop.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            k += 1;
        }
        self.out.published
    }
}

/// A live device: the newest window of the capture ring, once a hop of new frames
/// has arrived.
struct DeviceSource {
    shared: Arc<CaptureShared>,
    /// xruns + ring overruns, for the status line and summary.
    counters: Arc<SourceCounters>,
    hop: usize,
    hop_time: Duration,
    out: WindowPublisher,
}

impl DeviceSource {
    /// Runs until `stop`; returns the windows published.
    fn run(mut self, name: &str, stop: &AtomicBool) -> u64 {
        let ring = &self.shared.ring;
        // Never more often than twice the hop rate (a burst of periods after a
        // stall, or a source that is not paced, would otherwise spin the mel).
        let min_gap = self.hop_time / 2;
        let mut last_end = 0u64;
        let mut last_publish: Option<Instant> = None;
        let (mut xruns_told, mut overruns_told) = (0u64, 0u64);
        let mut last_warning: Option<Instant> = None;
        while !stop.load(Ordering::Acquire) {
            let lost = self.shared.xruns.load(Ordering::Relaxed) + ring.overruns();
            self.counters.overruns.store(lost, Ordering::Relaxed);
            if self.shared.failed.load(Ordering::Acquire) {
                // Stale from now on; the error was logged when it came.
                std::thread::park_timeout(Duration::from_millis(100));
                continue;
            }
            if ring.written() >= last_end + self.hop as u64 {
                if let Some(wait) = last_publish.and_then(|t| min_gap.checked_sub(t.elapsed())) {
                    std::thread::sleep(wait);
                }
                // A read the writer overran is retried on newer frames.
                for _ in 0..3 {
                    match ring.read_newest(&mut self.out.frame) {
                        Ok(window) => {
                            self.out.publish(window.stamp_ns);
                            last_end = window.end;
                            last_publish = Some(Instant::now());
                            break;
                        }
                        Err(ReadError::Empty) => break,
                        Err(ReadError::Overrun) => {}
                    }
                }
            }
            let (xruns, overruns) = (self.shared.xruns.load(Ordering::Relaxed), ring.overruns());
            if (xruns, overruns) != (xruns_told, overruns_told)
                && last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
            {
                tracing::warn!(
                    "audio `{name}`: {} xruns, {} ring overruns so far: audio was lost \
                     (a late capture thread, or a loaded machine)",
                    xruns,
                    overruns
                );
                (xruns_told, overruns_told) = (xruns, overruns);
                last_warning = Some(Instant::now());
            }
            // Woken by every period; the timeout only bounds how late `stop` is seen.
            std::thread::park_timeout(self.hop_time.min(Duration::from_millis(100)));
        }
        self.out.published
    }
}

/// Opened and waiting for `start` (wall clock) or stepped by `sim_step` (files
/// under the simulated clock).
enum Opened {
    File(FileSource),
    Device(DeviceSource),
}

pub struct AudioDriver {
    cfg: AudioConfig,
    source: Source,
    len: usize,
    sample_rate: u32,
    channels: usize,
    opened: Option<Opened>,
    /// The device's stream, kept until `stop` (dropping it stops capture).
    capture: Option<AlsaCapture>,
    stop: Arc<AtomicBool>,
    /// Returns the windows it published.
    thread: Option<JoinHandle<u64>>,
    simulated: bool,
    reported: bool,
}

impl AudioDriver {
    fn failed(&self, message: impl Into<String>) -> DriverError {
        DriverError::failed(&self.cfg.name, message)
    }

    /// One line on stderr after a device run: what was captured and lost.
    fn report(&mut self, windows: u64) {
        let Some(capture) = &self.capture else {
            return;
        };
        if std::mem::replace(&mut self.reported, true) {
            return;
        }
        let Source::Device(device) = &self.source else {
            return;
        };
        let shared = &capture.shared;
        let period = capture
            .period_frames
            .map_or(String::new(), |p| format!(", {p}-frame periods"));
        eprintln!(
            "reflex: audio `{}` (ALSA {device:?}, {} Hz x {}, {:?}{period}): {windows} windows, \
             {} frames captured, {} xruns, {} ring overruns{}",
            self.cfg.name,
            self.sample_rate,
            self.channels,
            capture.format,
            shared.ring.written(),
            shared.xruns.load(Ordering::Relaxed),
            shared.ring.overruns(),
            if shared.failed.load(Ordering::Relaxed) {
                "; stopped by a device error"
            } else {
                ""
            }
        );
    }
}

impl Driver for AudioDriver {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn open(&mut self, ctx: &DriverContext) -> Result<DriverPorts, DriverError> {
        self.simulated = ctx.simulated;
        let (window, hop) = sizes(&self.cfg, self.sample_rate);
        let (writer, reader) = latest_slot(&TensorSample::zeros(self.len));
        let out = WindowPublisher::new(&self.cfg, self.sample_rate, self.channels, window, writer);
        let counters = Arc::new(SourceCounters::default());
        self.opened = Some(match &self.source {
            Source::File(file) => {
                let wav = read_wav(file)
                    .map_err(|e| self.failed(format!("cannot read {}: {e}", file.display())))?;
                if wav.sample_rate != self.sample_rate || wav.channels != self.channels {
                    return Err(
                        self.failed("the WAV file changed since the launch file was checked")
                    );
                }
                Opened::File(FileSource {
                    wav,
                    looping: self.cfg.looping,
                    window,
                    hop,
                    out,
                })
            }
            Source::Device(device) => {
                if ctx.simulated {
                    return Err(self.failed(format!(
                        "a live microphone (ALSA device {device:?}) cannot be stepped by the \
                         simulated clock; run without --sim-clock, or use a WAV `file`"
                    )));
                }
                let capture = AlsaCapture::open(&CaptureRequest {
                    driver: &self.cfg.name,
                    device,
                    sample_rate: self.sample_rate,
                    channels: self.channels as u16,
                    period_frames: hop as u32,
                    // The window, and a second and two periods of slack for the reader.
                    ring_frames: window
                        + self.sample_rate as usize
                        + 2 * hop.min(self.sample_rate as usize),
                })
                .map_err(|e| self.failed(e))?;
                let source = DeviceSource {
                    shared: capture.shared.clone(),
                    counters: counters.clone(),
                    hop,
                    hop_time: Duration::from_secs_f64(hop as f64 / f64::from(self.sample_rate)),
                    out,
                };
                self.capture = Some(capture);
                Opened::Device(source)
            }
        });
        Ok(DriverPorts {
            tensors: vec![TensorPort {
                name: self.cfg.name.clone(),
                samples: reader,
                len: self.len,
            }],
            counters: vec![(self.cfg.name.clone(), counters)],
            ..DriverPorts::default()
        })
    }

    fn start(&mut self) -> Result<(), DriverError> {
        if self.simulated {
            return Ok(());
        }
        let Some(opened) = self.opened.take() else {
            return Err(self.failed("start before open"));
        };
        let stop = self.stop.clone();
        let (name, rate) = (self.cfg.name.clone(), self.sample_rate);
        let thread = std::thread::Builder::new()
            .name(format!("reflex-audio-{}", self.cfg.name))
            .spawn(move || match opened {
                Opened::File(file) => file.run(rate, &stop),
                Opened::Device(device) => device.run(&name, &stop),
            })
            .map_err(|e| self.failed(format!("cannot start audio thread: {e}")))?;
        let waker = thread.thread().clone();
        // Kept first: `stop` ends it even if capture does not start.
        self.thread = Some(thread);
        if let Some(capture) = &self.capture {
            let _ = capture.shared.waker.set(waker);
            capture
                .play()
                .map_err(|e| self.failed(format!("cannot start capture: {e}")))?;
        }
        Ok(())
    }

    fn sim_step(&mut self, now_ns: u64) -> Result<(), DriverError> {
        let Some(Opened::File(source)) = &mut self.opened else {
            return Ok(());
        };
        // The newest hop boundary at or before now; each is published once.
        let rate = f64::from(self.sample_rate);
        let hop_ns = source.hop as f64 / rate * 1e9;
        let k = (now_ns as f64 / hop_ns).floor() as u64;
        if k >= 1 && k > source.out.published {
            let end = k as usize * source.hop;
            source.out.published = k - 1;
            source.publish(end, (k as f64 * hop_ns) as u64);
        }
        Ok(())
    }

    fn stop(&mut self) -> Result<(), DriverError> {
        self.stop.store(true, Ordering::Release);
        let mut windows = 0;
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            windows = thread
                .join()
                .map_err(|_| self.failed("audio thread panicked"))?;
        }
        self.report(windows);
        // Dropping the stream stops capture and joins cpal's thread.
        self.capture = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use frame_ring::FrameRing;
    use std::sync::OnceLock;
    use std::sync::atomic::AtomicU64;

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_device_publishes_the_newest_window_per_hop_until_it_fails() {
        let cfg = AudioConfig {
            name: "mic".into(),
            file: None,
            device: Some("hw:9,0".into()),
            sample_rate: Some(16_000),
            channels: Some(1),
            window_ms: 10.0,
            hop_ms: 5.0,
            features: AudioFeatures::Raw,
            mel: None,
            looping: false,
        };
        let (window, hop) = sizes(&cfg, 16_000);
        assert_eq!((window, hop), (160, 80));
        let shared = Arc::new(CaptureShared {
            ring: FrameRing::new(1, 1_000),
            xruns: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            waker: OnceLock::new(),
        });
        let (writer, mut reader) = latest_slot(&TensorSample::zeros(window));
        let counters = Arc::new(SourceCounters::default());
        let source = DeviceSource {
            shared: shared.clone(),
            counters: counters.clone(),
            hop,
            hop_time: Duration::from_millis(5),
            out: WindowPublisher::new(&cfg, 16_000, 1, window, writer),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || source.run("mic", &stop))
        };
        shared.waker.set(thread.thread().clone()).unwrap();
        let ramp: Vec<f32> = (0..400).map(|i| i as f32).collect();
        // Less than a hop: nothing yet. A hop: a window, silence before capture.
        shared.ring.push(&ramp[..50], |v| *v, 1_000, 1.0);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(reader.latest().seq, 0);
        shared.ring.push(&ramp[50..80], |v| *v, 1_050, 1.0);
        wait_for("the first window", || reader.latest().seq == 1);
        let sample = reader.latest();
        assert_eq!(
            sample.stamp_ns, 1_079,
            "the capture stamp of its last frame"
        );
        assert_eq!(&sample.values[..80], &[0.0; 80][..]);
        assert_eq!(&sample.values[80..], &ramp[..80]);
        // Two hops at once: one window, the newest.
        shared.ring.push(&ramp[80..240], |v| *v, 1_080, 1.0);
        wait_for("the second window", || reader.latest().seq == 2);
        assert_eq!(reader.latest().values, ramp[80..240]);
        // An xrun is counted; a device error stops the stream (it goes stale).
        let mut on_error = alsa_capture::error_callback(shared.clone(), "mic", "hw:9,0");
        on_error(cpal::ErrorKind::Xrun.into());
        assert_eq!(shared.xruns.load(Ordering::Relaxed), 1);
        assert!(!shared.failed.load(Ordering::Relaxed));
        thread.thread().unpark();
        wait_for("the xrun in the stream's counters", || {
            counters.overruns.load(Ordering::Relaxed) == 1
        });
        on_error(cpal::ErrorKind::DeviceNotAvailable.into());
        assert!(shared.failed.load(Ordering::Relaxed));
        shared.ring.push(&ramp[240..400], |v| *v, 1_240, 1.0);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(reader.latest().seq, 2, "nothing after the error");
        stop.store(true, Ordering::Release);
        thread.thread().unpark();
        assert_eq!(thread.join().unwrap(), 2);
    }
}
