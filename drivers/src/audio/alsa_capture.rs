//! Microphone capture through ALSA with cpal: opens a capture PCM by name, and from
//! cpal's callback thread appends every period's frames, converted to f32 and
//! stamped on the run's clock, to a [`FrameRing`]. The callback neither allocates
//! nor takes a lock; it wakes the audio driver's thread, which cuts the windows.
//!
//! Stamps: cpal (0.18) gives each callback a `StreamInstant` for the period (ALSA's
//! htstamp, the kernel's stamp of the last hardware pointer update, which cpal asks
//! on CLOCK_MONOTONIC_RAW and falls back to CLOCK_MONOTONIC; devices without
//! htstamps, such as PulseAudio's ALSA plugin, get `Instant::now()`), and a capture
//! instant: that minus the frames still buffered, i.e. when the period's first
//! frame was sampled. Both count from the stream's creation, not on an absolute
//! clock, so [`StampMapper`] maps them to the run's monotonic clock
//! (`reflex_runtime::types::monotonic_ns`, CLOCK_MONOTONIC) with the offset
//! `arrival - callback instant` of the callback that came through fastest (the
//! smallest), re-estimated over 10 s windows so that the ppm by which
//! CLOCK_MONOTONIC_RAW and CLOCK_MONOTONIC drift apart under NTP do not accumulate.
//! Where the capture instant is unknown the arrival time is used; no frame is
//! stamped after its arrival.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{
    BufferSize, Data, FromSample, InputCallbackInfo, SampleFormat, SizedSample, StreamConfig,
    StreamInstant, SupportedBufferSize, SupportedStreamConfigRange,
};
use reflex_runtime::types::monotonic_ns;

use super::frame_ring::FrameRing;

/// Sample formats reflex reads, in the order it prefers them: f32 (what it stores),
/// then integers from the widest; ALSA's plug devices offer all and convert.
const FORMATS: [SampleFormat; 9] = [
    SampleFormat::F32,
    SampleFormat::I32,
    SampleFormat::I24,
    SampleFormat::I16,
    SampleFormat::U16,
    SampleFormat::U8,
    SampleFormat::I8,
    SampleFormat::F64,
    SampleFormat::U32,
];

/// How long cpal's thread waits for a period before it asks ALSA for the PCM's
/// state (an unplugged device that did not wake the poll is noticed then).
const POLL_TIMEOUT: Duration = Duration::from_millis(500);

/// What to open.
pub struct CaptureRequest<'a> {
    /// The audio driver's name (for warnings).
    pub driver: &'a str,
    /// An ALSA PCM name as `arecord -L` lists it (`default`, `hw:1,0`, ...).
    pub device: &'a str,
    pub sample_rate: u32,
    pub channels: u16,
    /// Frames per period asked of the device (clamped to what it allows).
    pub period_frames: u32,
    /// Frames the ring holds.
    pub ring_frames: usize,
}

/// What cpal's callbacks share with the thread that publishes windows.
pub struct CaptureShared {
    pub ring: FrameRing,
    /// Overruns cpal reported (xruns: ALSA's buffer filled before cpal read it).
    pub xruns: AtomicU64,
    /// A stream error (e.g. the device was unplugged): nothing more is published.
    pub failed: AtomicBool,
    /// The thread that publishes windows, woken after every period.
    pub waker: OnceLock<Thread>,
}

impl CaptureShared {
    fn wake(&self) {
        if let Some(thread) = self.waker.get() {
            thread.unpark();
        }
    }
}

/// An open (not yet started) capture stream.
pub struct AlsaCapture {
    stream: cpal::Stream,
    pub shared: Arc<CaptureShared>,
    /// The sample format the device delivers.
    pub format: SampleFormat,
    /// Frames per period, when cpal knows.
    pub period_frames: Option<u32>,
}

impl AlsaCapture {
    /// Opens `request.device` for capture; nothing flows until [`Self::play`]. A
    /// device ALSA does not list, that cannot be opened or that cannot capture the
    /// rate and channels asked is an error naming it.
    pub fn open(request: &CaptureRequest<'_>) -> Result<Self, String> {
        let cannot = |why: String| {
            format!(
                "cannot open ALSA capture device {:?}: {}; list devices with `arecord -L`",
                request.device,
                why.trim_end_matches('.')
            )
        };
        let host = cpal::host_from_id(cpal::HostId::Alsa).map_err(|e| cannot(e.to_string()))?;
        let device = find_device(&host, request.device).ok_or_else(|| {
            cannot(
                "ALSA lists no such PCM (reflex opens `default`, the PCMs ALSA lists, and `hw:` \
                 and `plughw:` of the cards present)"
                    .to_string(),
            )
        })?;
        let ranges: Vec<SupportedStreamConfigRange> = device
            .supported_input_configs()
            .map_err(|e| cannot(e.to_string()))?
            .collect();
        let (rate, channels) = (request.sample_rate, request.channels);
        let range = FORMATS
            .iter()
            .find_map(|format| {
                ranges.iter().find(|r| {
                    r.sample_format() == *format
                        && r.channels() == channels
                        && r.contains_rate(rate)
                })
            })
            .ok_or_else(|| {
                cannot(format!(
                    "it cannot capture {channels} channel(s) at {rate} Hz; it offers {} (a \
                     `plughw:` device converts rates and channels)",
                    describe_ranges(&ranges)
                ))
            })?;
        let format = range.sample_format();
        let shared = Arc::new(CaptureShared {
            ring: FrameRing::new(usize::from(channels), request.ring_frames),
            xruns: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            waker: OnceLock::new(),
        });
        let fixed = match range.buffer_size() {
            SupportedBufferSize::Range { min, max } => {
                Some(BufferSize::Fixed(request.period_frames.clamp(*min, *max)))
            }
            SupportedBufferSize::Unknown => None,
        };
        let build = |buffer_size: BufferSize| {
            device.build_input_stream_raw(
                StreamConfig {
                    channels,
                    sample_rate: rate,
                    buffer_size,
                },
                format,
                data_callback(shared.clone(), usize::from(channels), rate),
                error_callback(shared.clone(), request.driver, request.device),
                Some(POLL_TIMEOUT),
            )
        };
        // A device that refuses the period asked gets its own.
        let stream = match fixed {
            Some(size) => build(size).or_else(|_| build(BufferSize::Default)),
            None => build(BufferSize::Default),
        }
        .map_err(|e| cannot(e.to_string()))?;
        let period_frames = stream.buffer_size().ok();
        Ok(Self {
            stream,
            shared,
            format,
            period_frames,
        })
    }

    /// Starts capture; periods then arrive on cpal's thread.
    pub fn play(&self) -> Result<(), String> {
        self.stream.play().map_err(|e| e.to_string())
    }
}

/// The device by its ALSA name: `default`, or one cpal enumerates (ALSA's hints,
/// i.e. what `arecord -L` lists, plus `hw:`/`plughw:` of every card; `hw:1,0` is
/// matched as `hw:CARD=1,DEV=0`).
fn find_device(host: &cpal::Host, name: &str) -> Option<cpal::Device> {
    if name == "default" {
        return host.default_input_device();
    }
    host.device_by_id(&cpal::DeviceId::new(cpal::HostId::Alsa, name))
}

fn describe_ranges(ranges: &[SupportedStreamConfigRange]) -> String {
    if ranges.is_empty() {
        return "no capture configuration".to_string();
    }
    let mut seen: Vec<String> = ranges
        .iter()
        .map(|r| {
            let rates = if r.min_sample_rate() == r.max_sample_rate() {
                format!("{} Hz", r.min_sample_rate())
            } else {
                format!("{}-{} Hz", r.min_sample_rate(), r.max_sample_rate())
            };
            format!("{} ch {rates}", r.channels())
        })
        .collect();
    seen.dedup();
    seen.truncate(8);
    seen.join(", ")
}

/// cpal's data callback: converts the period to f32 into the ring, stamped, and
/// wakes the publishing thread. No allocation, no lock.
fn data_callback(
    shared: Arc<CaptureShared>,
    channels: usize,
    sample_rate: u32,
) -> impl FnMut(&Data, &InputCallbackInfo) + Send + 'static {
    let frame_ns = 1e9 / f64::from(sample_rate);
    let mut mapper = StampMapper::new(10_000_000_000);
    move |data: &Data, info: &InputCallbackInfo| {
        let arrival_ns = monotonic_ns();
        let timestamp = info.timestamp();
        let capture =
            (timestamp.capture != StreamInstant::ZERO).then(|| timestamp.capture.as_nanos() as u64);
        let first_ns = mapper.first_frame_ns(
            arrival_ns,
            timestamp.callback.as_nanos() as u64,
            capture,
            data.len() / channels.max(1),
            frame_ns,
        );
        push_as_f32(&shared.ring, data, first_ns, frame_ns);
        shared.wake();
    }
}

/// Appends a period of any format reflex reads to the ring, as f32 in [-1, 1]
/// (integers scaled by 2^(bits - 1), as the WAV reader does).
fn push_as_f32(ring: &FrameRing, data: &Data, first_ns: u64, frame_ns: f64) {
    fn push<T: SizedSample>(ring: &FrameRing, data: &Data, first_ns: u64, frame_ns: f64)
    where
        f32: FromSample<T>,
    {
        if let Some(samples) = data.as_slice::<T>() {
            ring.push(samples, |s| s.to_sample::<f32>(), first_ns, frame_ns);
        }
    }
    match data.sample_format() {
        SampleFormat::F32 => push::<f32>(ring, data, first_ns, frame_ns),
        SampleFormat::I32 => push::<i32>(ring, data, first_ns, frame_ns),
        SampleFormat::I24 => push::<cpal::I24>(ring, data, first_ns, frame_ns),
        SampleFormat::I16 => push::<i16>(ring, data, first_ns, frame_ns),
        SampleFormat::U16 => push::<u16>(ring, data, first_ns, frame_ns),
        SampleFormat::U8 => push::<u8>(ring, data, first_ns, frame_ns),
        SampleFormat::I8 => push::<i8>(ring, data, first_ns, frame_ns),
        SampleFormat::F64 => push::<f64>(ring, data, first_ns, frame_ns),
        SampleFormat::U32 => push::<u32>(ring, data, first_ns, frame_ns),
        // Not among FORMATS: never chosen.
        _ => {}
    }
}

/// cpal's error callback: xruns are counted (cpal restarts the PCM); any other
/// error (the device is gone) stops the stream's samples, so it goes stale and
/// the loop's fault policy acts.
pub(super) fn error_callback(
    shared: Arc<CaptureShared>,
    driver: &str,
    device: &str,
) -> impl FnMut(cpal::Error) + Send + 'static {
    let (driver, device) = (driver.to_string(), device.to_string());
    move |error: cpal::Error| {
        if error.kind() == cpal::ErrorKind::Xrun {
            shared.xruns.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if !shared.failed.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                "audio `{driver}`: ALSA capture device {device:?} failed: {error}; no more \
                 samples (the stream goes stale)"
            );
        }
        shared.wake();
    }
}

/// Maps cpal's stream instants (ns since the stream's creation, see the module
/// docs) to the run's clock.
#[derive(Debug)]
pub struct StampMapper {
    /// The offset is re-estimated over windows this long (of arrivals).
    window_ns: u64,
    window_start_ns: u64,
    /// Smallest `arrival - callback instant` in this window and the last one.
    current: Option<i64>,
    previous: Option<i64>,
}

impl StampMapper {
    pub fn new(window_ns: u64) -> Self {
        Self {
            window_ns,
            window_start_ns: 0,
            current: None,
            previous: None,
        }
    }

    /// The capture stamp, on the run's clock, of the first of `frames` frames that
    /// arrived at `arrival_ns` with the callback's instants `callback_ns` and
    /// `capture_ns` (None: unknown, the arrival time is used). The last frame is
    /// never stamped after its arrival.
    pub fn first_frame_ns(
        &mut self,
        arrival_ns: u64,
        callback_ns: u64,
        capture_ns: Option<u64>,
        frames: usize,
        frame_ns: f64,
    ) -> u64 {
        let span_ns = (frames.saturating_sub(1) as f64 * frame_ns) as u64;
        let by_arrival = arrival_ns.saturating_sub(span_ns);
        let Some(capture_ns) = capture_ns else {
            return by_arrival;
        };
        if arrival_ns >= self.window_start_ns.saturating_add(self.window_ns) {
            self.previous = self.current.take();
            self.window_start_ns = arrival_ns;
        }
        let here = arrival_ns as i64 - callback_ns as i64;
        let current = self.current.map_or(here, |c| c.min(here));
        self.current = Some(current);
        let offset = self.previous.map_or(current, |p| p.min(current));
        let mapped = (capture_ns as i64).saturating_add(offset).max(0) as u64;
        mapped.min(by_arrival)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn stamps_use_the_fastest_callbacks_offset_and_follow_drift() {
        let mut mapper = StampMapper::new(10_000 * MS);
        // The stream was created at 5 s on the run's clock; callbacks arrive 0.2 to
        // 3 ms after their period's interrupt; a period of 160 frames at 16 kHz
        // (10 ms) whose first frame was captured 10 ms before the interrupt.
        let frame_ns = 1e9 / 16_000.0;
        let lag = [3, 1, 2, 0, 2];
        let mut stamps = Vec::new();
        for k in 1..=5u64 {
            let callback = k * 10 * MS;
            let arrival = 5_000 * MS + callback + 200_000 + lag[k as usize - 1] * MS;
            stamps.push(mapper.first_frame_ns(
                arrival,
                callback,
                Some(callback - 10 * MS),
                160,
                frame_ns,
            ));
        }
        // The first callback's offset is 3.2 ms too large; from the fourth on the
        // offset is the fastest one's (0.2 ms late).
        assert_eq!(stamps[0], 5_000 * MS + 3_200_000);
        assert_eq!(stamps[3], 5_000 * MS + 30 * MS + 200_000);
        assert_eq!(stamps[4], 5_000 * MS + 40 * MS + 200_000);
        // The stream's clock runs 100 ppm slower than the run's (0.1 ms a second):
        // the true offset grows. A minimum kept forever would lag 20 ms behind after
        // 200 s; re-estimated over 10 s windows the lag stays under two windows'
        // drift (2 ms).
        let mut mapper = StampMapper::new(10_000 * MS);
        for k in 0..200u64 {
            let callback = 100 * MS + k * 1_000 * MS;
            let drift = k * MS / 10;
            let arrival = 5_000 * MS + callback + drift + 200_000;
            let stamp = mapper.first_frame_ns(arrival, callback, Some(callback), 1, frame_ns);
            // The best a minimum can do: the fastest callback's 0.2 ms.
            let best = 5_000 * MS + callback + drift + 200_000;
            assert!(
                stamp <= best && best - stamp <= 2 * MS,
                "{k}: {}",
                best - stamp
            );
        }
    }

    #[test]
    fn without_a_capture_instant_the_arrival_time_stamps_the_last_frame() {
        let mut mapper = StampMapper::new(10_000 * MS);
        let frame_ns = 1e6; // 1 kHz
        assert_eq!(
            mapper.first_frame_ns(50 * MS, 7, None, 11, frame_ns),
            40 * MS
        );
        // A capture instant that would put the last frame after its arrival is
        // clamped to the arrival.
        let first = mapper.first_frame_ns(60 * MS, 0, Some(30 * MS), 11, frame_ns);
        assert_eq!(first, 50 * MS);
    }

    #[test]
    fn integer_samples_are_scaled_like_the_wav_reader() {
        let ring = FrameRing::new(1, 8);
        let mut samples = [i16::MIN, 16_384, 0, i16::MAX];
        let data = unsafe {
            Data::from_parts(
                samples.as_mut_ptr().cast(),
                samples.len(),
                SampleFormat::I16,
            )
        };
        push_as_f32(&ring, &data, 0, 1.0);
        let mut out = [0.0f32; 4];
        ring.read_newest(&mut out).unwrap();
        assert_eq!(out, [-1.0, 0.5, 0.0, 32_767.0 / 32_768.0]);
    }
}
