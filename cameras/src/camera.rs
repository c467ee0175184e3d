//! `[[drivers]] kind = "opencv_camera"`: a camera through OpenCV videoio — a V4L2
//! device (path or index), a GStreamer pipeline, an RTSP / HTTP stream (FFMPEG) or
//! a video file.
//!
//! Each camera runs on its own thread: it reads into a reused `Mat`, judges the
//! frame from the capture's own index and timestamp ([`FrameJudge`]: a frame whose
//! index or stamp did not advance is counted as repeated and never published),
//! converts BGR to RGB (resizing to the declared size when the source delivers
//! another) into the preallocated slot the loop reads. The tick never waits for a
//! camera. A source that fails or ends is opened again every `reconnect_ms`; the
//! stream is stale meanwhile and the loop's fault policy (`[streams.<name>]`) acts.
//!
//! Under the simulated clock only files are allowed, and `sim_step` reads the
//! frame due at the simulated time (frame k at k / fps of the file), so runs stay
//! byte-identical.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opencv::core::{Mat, Size};
use opencv::prelude::*;
use opencv::videoio::{self, VideoCapture};
use opencv::{imgproc, videoio::VideoCaptureTrait, videoio::VideoCaptureTraitConst};
use reflex_runtime::driver::{CameraPort, Driver, DriverContext, DriverError, DriverPorts};
use reflex_runtime::launch::{Launch, LaunchError, MAX_CAMERA_FPS};
use reflex_runtime::registry::{DriverKind, DriverSpec, KindTable, schema_of};
use reflex_runtime::slot::{SlotWriter, latest_slot};
use reflex_runtime::stream::StreamDecl;
use reflex_runtime::tare::{TareRequests, TareWatch};
use reflex_runtime::types::{Image, monotonic_ns};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::frames::{FrameCounters, FrameInfo, FrameJudge, StampMapping, Verdict};

/// `[[drivers]] kind = "opencv_camera"`: exactly one of `device`, `pipeline`,
/// `url`, `file`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpencvCameraConfig {
    /// The stream's name (`<name>.image`).
    pub name: String,
    /// A V4L2 device: a path (`/dev/video0`, `/dev/v4l/by-id/...`) or an index.
    pub device: Option<DeviceRef>,
    /// A GStreamer pipeline ending in `appsink`, e.g.
    /// `v4l2src ! videoconvert ! video/x-raw,format=BGR ! appsink`.
    pub pipeline: Option<String>,
    /// A network stream opened with FFMPEG (`rtsp://...`, `http://...`).
    pub url: Option<String>,
    /// A video file (relative to the launch file): tests, replays.
    pub file: Option<PathBuf>,
    /// The image size policies see; a source of another size is resized.
    pub width: usize,
    pub height: usize,
    /// Frames per second asked of the source (and the file pacing's rate when the
    /// file does not say).
    pub fps: f64,
    /// V4L2 pixel format as a FOURCC (`MJPG`, `YUYV`), when the device should use
    /// a given one.
    pub pixel_format: Option<String>,
    /// Manual exposure in the backend's units (V4L2: 100 us steps); auto when absent.
    pub exposure: Option<f64>,
    /// Files: deliver frames at the file's rate (default) rather than as fast as
    /// they decode.
    #[serde(default = "yes")]
    pub realtime: bool,
    /// Files: start again at the end (default: the stream ends and goes stale).
    #[serde(default, rename = "loop")]
    pub looping: bool,
    /// Wait between attempts to open a lost or failed source, ms.
    #[serde(default = "default_reconnect_ms")]
    pub reconnect_ms: f64,
    /// How capture timestamps become stamps on the run's clock: `auto` (per
    /// source, see the README), `device`, `estimated` or `arrival`.
    #[serde(default)]
    pub timestamps: TimestampMode,
    /// A frame that reaches reflex more than this after its capture is late
    /// (counted), ms. Default: two frame periods.
    pub late_after_ms: Option<f64>,
    /// Camera-based tactile sensors (GelSight, DIGIT): average this many frames at
    /// start (and again on `reflex tare`) into a reference and publish
    /// `128 + frame - reference` (128: no contact). 0 (default): the frames as
    /// they are.
    #[serde(default)]
    pub reference_frames: usize,
}

fn yes() -> bool {
    true
}

fn default_reconnect_ms() -> f64 {
    1000.0
}

/// A V4L2 device by path or index.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum DeviceRef {
    Index(u32),
    Path(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TimestampMode {
    /// `device` for V4L2, `estimated` for pipelines, streams and files.
    #[default]
    Auto,
    /// The capture's stamps are CLOCK_MONOTONIC (V4L2 buffer timestamps).
    Device,
    /// The capture's own clock plus an offset estimated from arrivals.
    Estimated,
    /// The time reflex received the frame.
    Arrival,
}

/// Where frames come from.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    Device(DeviceRef),
    Pipeline(String),
    Url(String),
    File(PathBuf),
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::Device(DeviceRef::Index(i)) => format!("V4L2 device {i}"),
            Source::Device(DeviceRef::Path(p)) => format!("V4L2 device {}", p.display()),
            Source::Pipeline(p) => format!("GStreamer pipeline `{p}`"),
            Source::Url(u) => format!("stream {u}"),
            Source::File(f) => format!("file {}", f.display()),
        }
    }

    fn open(&self) -> opencv::Result<VideoCapture> {
        match self {
            Source::Device(DeviceRef::Index(i)) => VideoCapture::new(*i as i32, videoio::CAP_V4L2),
            Source::Device(DeviceRef::Path(p)) => VideoCapture::from_file(p, videoio::CAP_V4L2),
            Source::Pipeline(p) => VideoCapture::from_file(p, videoio::CAP_GSTREAMER),
            Source::Url(u) => VideoCapture::from_file(u, videoio::CAP_FFMPEG),
            Source::File(f) => VideoCapture::from_file(f, videoio::CAP_ANY),
        }
    }

    fn mapping(&self, mode: TimestampMode) -> StampMapping {
        match (mode, self) {
            (TimestampMode::Arrival, _) => StampMapping::Arrival,
            (TimestampMode::Device, _) | (TimestampMode::Auto, Source::Device(_)) => {
                StampMapping::Monotonic {
                    offset_ns: monotonic_offset_ns(),
                }
            }
            _ => StampMapping::Estimated { offset_ns: None },
        }
    }
}

/// The run's clock minus CLOCK_MONOTONIC, ns (V4L2 stamps are CLOCK_MONOTONIC).
fn monotonic_offset_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let mono = ts.tv_sec * 1_000_000_000 + ts.tv_nsec;
    monotonic_ns() as i64 - mono
}

/// Registers `opencv_camera`.
pub struct OpencvCameraKind;

#[derive(Debug)]
pub struct OpencvCameraSpec {
    pub config: OpencvCameraConfig,
    source: Source,
}

impl DriverKind for OpencvCameraKind {
    fn kind(&self) -> &'static str {
        "opencv_camera"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<OpencvCameraConfig>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn DriverSpec>, LaunchError> {
        let config: OpencvCameraConfig = table.parse()?;
        table.check_name("name", &config.name)?;
        let given: Vec<&str> = [
            ("device", config.device.is_some()),
            ("pipeline", config.pipeline.is_some()),
            ("url", config.url.is_some()),
            ("file", config.file.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| *name)
        .collect();
        if given.len() != 1 {
            return Err(table.error_at(
                "",
                format!(
                    "a camera needs exactly one of `device`, `pipeline`, `url` or `file`, found {}",
                    if given.is_empty() {
                        "none".to_string()
                    } else {
                        given.join(", ")
                    }
                ),
            ));
        }
        let source = if let Some(device) = &config.device {
            if let DeviceRef::Path(path) = device
                && !path.exists()
            {
                return Err(table.error_at(
                    "device",
                    format!(
                        "no such device: {} (is the camera plugged in?)",
                        path.display()
                    ),
                ));
            }
            Source::Device(device.clone())
        } else if let Some(pipeline) = &config.pipeline {
            if !pipeline.contains("appsink") {
                return Err(table.error_at(
                    "pipeline",
                    "a GStreamer pipeline for OpenCV ends in `appsink` (e.g. `... ! videoconvert ! \
                     video/x-raw,format=BGR ! appsink`)",
                ));
            }
            Source::Pipeline(pipeline.clone())
        } else if let Some(url) = &config.url {
            if !url.contains("://") {
                return Err(table.error_at("url", format!("`{url}` is not a URL (rtsp://...)")));
            }
            Source::Url(url.clone())
        } else if let Some(file) = &config.file {
            Source::File(table.check_file("file", file, "video file", u64::MAX)?)
        } else {
            unreachable!("exactly one source was checked")
        };
        if !(8..=4096).contains(&config.width) || !(8..=4096).contains(&config.height) {
            return Err(table.error_at("width", "width and height must be in 8..=4096"));
        }
        if !(config.fps.is_finite() && config.fps > 0.0 && config.fps <= MAX_CAMERA_FPS) {
            return Err(table.error_at(
                "fps",
                format!("must be in (0, {MAX_CAMERA_FPS}], found {}", config.fps),
            ));
        }
        if let Some(format) = &config.pixel_format
            && (format.len() != 4 || !format.is_ascii())
        {
            return Err(table.error_at(
                "pixel_format",
                format!("a FOURCC is 4 ASCII characters (`MJPG`, `YUYV`), found `{format}`"),
            ));
        }
        if config.exposure.is_some_and(|e| !e.is_finite()) {
            return Err(table.error_at("exposure", "must be a finite number"));
        }
        if config.reference_frames > 1000 {
            return Err(table.error_at("reference_frames", "must be at most 1000"));
        }
        if !(config.reconnect_ms.is_finite() && (1.0..=60_000.0).contains(&config.reconnect_ms)) {
            return Err(table.error_at("reconnect_ms", "must be in [1, 60000] ms"));
        }
        if config
            .late_after_ms
            .is_some_and(|ms| !(ms.is_finite() && ms > 0.0))
        {
            return Err(table.error_at("late_after_ms", "must be a positive number"));
        }
        let file_only = [("loop", config.looping), ("realtime", !config.realtime)];
        if !matches!(source, Source::File(_))
            && let Some((field, _)) = file_only.iter().find(|(_, set)| *set)
        {
            return Err(table.error_at(field, "applies to `file` cameras only"));
        }
        Ok(Arc::new(OpencvCameraSpec { config, source }))
    }
}

impl DriverSpec for OpencvCameraSpec {
    fn kind(&self) -> &'static str {
        "opencv_camera"
    }
    fn source(&self, _launch: &Launch) -> Option<String> {
        Some(self.source.describe())
    }
    fn name(&self) -> &str {
        &self.config.name
    }
    fn streams(&self) -> Vec<StreamDecl> {
        vec![StreamDecl::image(
            &self.config.name,
            self.config.width,
            self.config.height,
            self.config.fps,
        )]
    }
    fn is_arm(&self) -> bool {
        false
    }
    fn build(&self, _launch: &Launch) -> Result<Box<dyn Driver>, DriverError> {
        Ok(Box::new(OpencvCamera {
            cfg: self.config.clone(),
            source: self.source.clone(),
            capture: None,
            counters: Arc::new(FrameCounters::default()),
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

pub struct OpencvCamera {
    cfg: OpencvCameraConfig,
    source: Source,
    /// Made at open; moved to the capture thread at start (wall clock) or stepped
    /// by `sim_step` (simulated clock).
    capture: Option<Capture>,
    counters: Arc<FrameCounters>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    simulated: bool,
    reported: bool,
}

impl OpencvCamera {
    fn failed(&self, message: impl Into<String>) -> DriverError {
        DriverError::failed(&self.cfg.name, message)
    }

    /// The camera's counters (fresh, repeated, dropped, late, reconnects).
    pub fn counters(&self) -> Arc<FrameCounters> {
        self.counters.clone()
    }
}

/// The reference frame of a camera-based tactile sensor (GelSight, DIGIT): the
/// mean of the first `wanted` frames; the stream is then `128 + frame - reference`
/// per channel, clamped (128: no contact). A tare request averages the next
/// `wanted` frames into a new reference; the old one is used until it is ready.
#[derive(Debug, Default)]
struct Reference {
    wanted: usize,
    /// The reference in use (empty until the first is complete).
    mean: Vec<f32>,
    /// Frames summed towards the next reference, and how many.
    sum: Vec<f32>,
    summed: usize,
    tare: Option<TareWatch>,
}

impl Reference {
    /// Adds a frame towards the next reference while one is being averaged.
    fn observe(&mut self, rgb: &[u8]) {
        if self.tare.as_mut().is_some_and(TareWatch::requested) {
            self.summed = 0;
        }
        if self.summed >= self.wanted {
            return;
        }
        if self.summed == 0 {
            self.sum.clear();
            self.sum.resize(rgb.len(), 0.0);
        }
        for (s, v) in self.sum.iter_mut().zip(rgb) {
            *s += f32::from(*v);
        }
        self.summed += 1;
        if self.summed == self.wanted {
            let n = self.wanted as f32;
            self.mean.clear();
            self.mean.extend(self.sum.iter().map(|s| s / n));
        }
    }

    fn ready(&self) -> bool {
        !self.mean.is_empty()
    }

    fn difference(&self, rgb: &[u8], out: &mut [u8]) {
        for ((o, v), m) in out.iter_mut().zip(rgb).zip(&self.mean) {
            *o = (128.0 + f32::from(*v) - m).round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// Everything the capture thread owns.
struct Capture {
    cfg: OpencvCameraConfig,
    source: Source,
    cap: Option<VideoCapture>,
    bgr: Mat,
    resized: Mat,
    rgb: Mat,
    writer: SlotWriter<Image>,
    reference: Reference,
    judge: FrameJudge,
    counters: Arc<FrameCounters>,
    /// Files: when frame 0 of the current pass was (or would have been) shown.
    file_start: Option<Instant>,
    /// Files under the simulated clock: the frames read so far this pass.
    file_frames: u64,
    file_fps: f64,
}

impl Capture {
    fn new(
        cfg: &OpencvCameraConfig,
        source: &Source,
        writer: SlotWriter<Image>,
        counters: Arc<FrameCounters>,
        tare: Option<TareWatch>,
    ) -> Self {
        let period_ns = 1e9 / cfg.fps;
        let late_after_ns = cfg.late_after_ms.map_or(2.0 * period_ns, |ms| ms * 1e6) as u64;
        Self {
            cfg: cfg.clone(),
            source: source.clone(),
            cap: None,
            bgr: Mat::default(),
            resized: Mat::default(),
            rgb: Mat::default(),
            writer,
            reference: Reference {
                wanted: cfg.reference_frames,
                tare,
                ..Reference::default()
            },
            judge: FrameJudge::new(source.mapping(cfg.timestamps), late_after_ns),
            counters,
            file_start: None,
            file_frames: 0,
            file_fps: cfg.fps,
        }
    }

    /// Opens the source and asks for the configured format.
    fn open(&mut self) -> Result<(), String> {
        let mut cap = self.source.open().map_err(|e| e.to_string())?;
        if !cap.is_opened().map_err(|e| e.to_string())? {
            return Err(format!(
                "OpenCV cannot open the {} (backend missing, device busy or absent, or a \
                 pipeline that does not start)",
                self.source.describe()
            ));
        }
        if matches!(self.source, Source::Device(_)) {
            // What the backend does not support it ignores; the frames say what came.
            if let Some(format) = &self.cfg.pixel_format {
                let c: Vec<char> = format.chars().collect();
                let fourcc = videoio::VideoWriter::fourcc(c[0], c[1], c[2], c[3])
                    .map_err(|e| e.to_string())?;
                let _ = cap.set(videoio::CAP_PROP_FOURCC, f64::from(fourcc));
            }
            let _ = cap.set(videoio::CAP_PROP_FRAME_WIDTH, self.cfg.width as f64);
            let _ = cap.set(videoio::CAP_PROP_FRAME_HEIGHT, self.cfg.height as f64);
            let _ = cap.set(videoio::CAP_PROP_FPS, self.cfg.fps);
            // One buffer: the newest frame, not a queue of old ones.
            let _ = cap.set(videoio::CAP_PROP_BUFFERSIZE, 1.0);
            if let Some(exposure) = self.cfg.exposure {
                // V4L2: 1 = manual exposure, 3 = aperture priority (auto).
                let _ = cap.set(videoio::CAP_PROP_AUTO_EXPOSURE, 1.0);
                let _ = cap.set(videoio::CAP_PROP_EXPOSURE, exposure);
            }
        }
        if matches!(self.source, Source::File(_)) {
            let fps = cap.get(videoio::CAP_PROP_FPS).unwrap_or(0.0);
            self.file_fps = if fps.is_finite() && fps > 0.0 {
                fps
            } else {
                self.cfg.fps
            };
        }
        self.cap = Some(cap);
        self.judge.restart();
        self.file_start = None;
        self.file_frames = 0;
        Ok(())
    }

    /// Reads one frame and publishes it if fresh. Returns false when the source
    /// gave nothing (ended, lost): the caller reconnects.
    fn read_one(&mut self) -> bool {
        let Some(cap) = &mut self.cap else {
            return false;
        };
        let ok = cap.read(&mut self.bgr).unwrap_or(false);
        if !ok || self.bgr.empty() {
            if matches!(self.source, Source::File(_)) && self.cfg.looping {
                // Rewind: a new pass, numbered from the start again.
                let rewound = cap.set(videoio::CAP_PROP_POS_FRAMES, 0.0).unwrap_or(false);
                self.judge.restart();
                self.file_start = None;
                self.file_frames = 0;
                return rewound;
            }
            return false;
        }
        let arrival_ns = monotonic_ns();
        let index = cap
            .get(videoio::CAP_PROP_POS_FRAMES)
            .ok()
            .filter(|f| f.is_finite() && *f > 0.0)
            .map(|f| f as u64);
        let stamp_ns = cap
            .get(videoio::CAP_PROP_POS_MSEC)
            .ok()
            .filter(|ms| ms.is_finite() && *ms > 0.0)
            .map(|ms| (ms * 1e6) as u64);
        self.file_frames += 1;
        let verdict = self.judge.judge(
            FrameInfo {
                index,
                stamp_ns,
                arrival_ns,
            },
            &self.counters,
        );
        let Verdict::Fresh { stamp_ns } = verdict else {
            return true;
        };
        if let Err(e) = self.publish(stamp_ns) {
            tracing::warn!("camera `{}`: frame not converted: {e}", self.cfg.name);
        }
        true
    }

    /// BGR (any size) -> RGB at the declared size, into the slot.
    fn publish(&mut self, stamp_ns: u64) -> opencv::Result<()> {
        let (w, h) = (self.cfg.width as i32, self.cfg.height as i32);
        let src = if self.bgr.cols() != w || self.bgr.rows() != h {
            imgproc::resize(
                &self.bgr,
                &mut self.resized,
                Size::new(w, h),
                0.0,
                0.0,
                imgproc::INTER_AREA,
            )?;
            &self.resized
        } else {
            &self.bgr
        };
        let code = match src.channels() {
            1 => imgproc::COLOR_GRAY2RGB,
            4 => imgproc::COLOR_BGRA2RGB,
            _ => imgproc::COLOR_BGR2RGB,
        };
        imgproc::cvt_color_def(src, &mut self.rgb, code)?;
        let bytes = self.rgb.data_bytes()?;
        let seq = self.counters.fresh.load(Ordering::Relaxed);
        let reference = &mut self.reference;
        if reference.wanted > 0 {
            // Camera-based tactile sensors: average the reference first; the frames
            // that make the first one are not published.
            let ready = reference.ready();
            reference.observe(bytes);
            if !ready {
                return Ok(());
            }
        }
        self.writer.publish_with(|image| {
            image.seq = seq;
            image.stamp_ns = stamp_ns;
            if image.rgb.len() != bytes.len() {
                return;
            }
            if reference.wanted == 0 {
                image.rgb.copy_from_slice(bytes);
            } else {
                reference.difference(bytes, &mut image.rgb);
            }
        });
        Ok(())
    }

    /// Files in real time: waits until the next frame is due.
    fn pace(&mut self, stop: &AtomicBool) {
        if !(matches!(self.source, Source::File(_)) && self.cfg.realtime) {
            return;
        }
        let start = *self.file_start.get_or_insert_with(Instant::now);
        let due = start + Duration::from_secs_f64(self.file_frames as f64 / self.file_fps);
        while !stop.load(Ordering::Acquire) {
            let now = Instant::now();
            if now >= due {
                break;
            }
            std::thread::sleep((due - now).min(Duration::from_millis(20)));
        }
    }

    /// The capture thread: read, judge, publish; reopen a lost source.
    fn run(mut self, stop: Arc<AtomicBool>) {
        let reconnect = Duration::from_secs_f64(self.cfg.reconnect_ms / 1e3);
        let mut warned = false;
        while !stop.load(Ordering::Acquire) {
            if self.cap.is_none() {
                match self.open() {
                    Ok(()) => {
                        if warned {
                            tracing::warn!(
                                "camera `{}`: {} open again",
                                self.cfg.name,
                                self.source.describe()
                            );
                            self.counters
                                .source
                                .reconnects
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        warned = false;
                    }
                    Err(e) => {
                        if !warned {
                            tracing::warn!(
                                "camera `{}`: {e}; trying again every {} ms (the stream is stale meanwhile)",
                                self.cfg.name,
                                self.cfg.reconnect_ms
                            );
                            warned = true;
                        }
                        sleep_unless_stopped(reconnect, &stop);
                        continue;
                    }
                }
            }
            self.pace(&stop);
            if !self.read_one() {
                if matches!(self.source, Source::File(_)) && !self.cfg.looping {
                    // The file ended: the stream goes stale; nothing to reopen.
                    tracing::warn!(
                        "camera `{}`: end of {}",
                        self.cfg.name,
                        self.source.describe()
                    );
                    while !stop.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    break;
                }
                tracing::warn!(
                    "camera `{}`: {} gave no frame: reopening",
                    self.cfg.name,
                    self.source.describe()
                );
                self.cap = None;
                warned = true;
                sleep_unless_stopped(reconnect, &stop);
            }
        }
    }

    /// Under the simulated clock: reads the file's frames due by `now_ns` (frame
    /// k is due at k / fps of the file); each is stamped with its due time.
    fn step_to(&mut self, now_ns: u64) -> Result<(), String> {
        if self.cap.is_none() {
            self.open()?;
        }
        let period_ns = 1e9 / self.file_fps;
        while (self.file_frames as f64 * period_ns) as u64 <= now_ns {
            let due_ns = (self.file_frames as f64 * period_ns) as u64;
            let Some(cap) = &mut self.cap else { break };
            if !cap.read(&mut self.bgr).unwrap_or(false) || self.bgr.empty() {
                if self.cfg.looping && self.file_frames > 0 {
                    let _ = cap.set(videoio::CAP_PROP_POS_FRAMES, 0.0);
                    continue;
                }
                break;
            }
            self.file_frames += 1;
            self.counters.fresh.fetch_add(1, Ordering::Relaxed);
            self.publish(due_ns).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

fn sleep_unless_stopped(total: Duration, stop: &AtomicBool) {
    let until = Instant::now() + total;
    while !stop.load(Ordering::Acquire) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10).min(until - Instant::now()));
    }
}

impl Driver for OpencvCamera {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn open(&mut self, ctx: &DriverContext) -> Result<DriverPorts, DriverError> {
        self.simulated = ctx.simulated;
        if ctx.simulated && !matches!(self.source, Source::File(_)) {
            return Err(self.failed(format!(
                "a live camera ({}) needs the wall clock; under the simulated clock use a `file`",
                self.source.describe()
            )));
        }
        let (writer, reader) = latest_slot(&Image::black(self.cfg.width, self.cfg.height));
        let tare = (self.cfg.reference_frames > 0)
            .then(|| ctx.services.get::<TareRequests>()?.watch(&self.cfg.name))
            .flatten();
        let mut capture =
            Capture::new(&self.cfg, &self.source, writer, self.counters.clone(), tare);
        // A source that cannot be opened at start is an error, not a hang; one that
        // is lost later is reopened.
        capture.open().map_err(|e| self.failed(e))?;
        self.capture = Some(capture);
        Ok(DriverPorts {
            cameras: vec![CameraPort {
                name: self.cfg.name.clone(),
                frames: reader,
                width: self.cfg.width,
                height: self.cfg.height,
            }],
            counters: vec![(self.cfg.name.clone(), self.counters.source.clone())],
            ..DriverPorts::default()
        })
    }

    fn start(&mut self) -> Result<(), DriverError> {
        if self.simulated {
            return Ok(());
        }
        let Some(capture) = self.capture.take() else {
            return Err(self.failed("start before open"));
        };
        let stop = self.stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("reflex-cam-{}", self.cfg.name))
            .spawn(move || capture.run(stop))
            .map_err(|e| self.failed(format!("cannot start capture thread: {e}")))?;
        self.thread = Some(thread);
        Ok(())
    }

    fn sim_step(&mut self, now_ns: u64) -> Result<(), DriverError> {
        let Some(capture) = &mut self.capture else {
            return Ok(());
        };
        capture.step_to(now_ns).map_err(|e| {
            DriverError::failed(&self.cfg.name, format!("reading the file failed: {e}"))
        })
    }

    fn stop(&mut self) -> Result<(), DriverError> {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| self.failed("capture thread panicked"))?;
        }
        self.capture = None;
        if std::mem::replace(&mut self.reported, true) {
            return Ok(());
        }
        eprintln!(
            "reflex: camera `{}` ({}): {}",
            self.cfg.name,
            self.source.describe(),
            self.counters.summary()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reflex_runtime::tare::TareRequests;

    #[test]
    fn a_tare_averages_a_new_reference_and_keeps_the_old_meanwhile() {
        let requests = TareRequests::new(["gel".to_string()]);
        let mut reference = Reference {
            wanted: 2,
            tare: requests.watch("gel"),
            ..Reference::default()
        };
        let mut out = [0u8; 3];
        reference.observe(&[10, 20, 30]);
        assert!(!reference.ready());
        reference.observe(&[12, 22, 32]);
        reference.difference(&[11, 21, 31], &mut out);
        assert_eq!(out, [128; 3]);
        // The gel drifts by 40; a tare takes the next two frames as the reference.
        requests.request(Some("gel")).unwrap();
        reference.observe(&[51, 61, 71]);
        reference.difference(&[51, 61, 71], &mut out);
        assert_eq!(
            out, [168; 3],
            "the old reference until the new one is ready"
        );
        reference.observe(&[51, 61, 71]);
        reference.difference(&[51, 61, 71], &mut out);
        assert_eq!(out, [128; 3]);
    }
}
