//! Streams: what drivers declare they produce, named so that policy inputs can
//! refer to them and the launch file can be checked before anything runs.

use std::sync::atomic::{AtomicU64, Ordering};

/// One stream a driver produces.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamDecl {
    /// Unique in the launch file; policy inputs name it (`camera.<name>`).
    pub name: String,
    pub kind: StreamKind,
    /// Nominal sample rate, Hz (for the status line and staleness checks).
    pub rate_hz: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StreamKind {
    /// Measured joint positions and velocities of the robot.
    JointState { joints: usize },
    /// RGB8 images.
    Image { width: usize, height: usize },
    /// float32 values of a fixed shape, row-major (a taxel array's N x M pressures,
    /// a force-torque reading). Field `data`.
    Tensor { shape: Vec<usize> },
    /// Audio as chunks of `frames` samples of `channels` channels (float32,
    /// interleaved, `[frames, channels]`), each chunk one sample of the stream.
    /// Field `samples`.
    Audio {
        frames: usize,
        channels: usize,
        sample_rate_hz: f64,
    },
    /// Text, e.g. a task instruction from a speech recognizer or an operator's
    /// tablet; `[task] source = "<stream>.text"` makes it the policy's prompt.
    Text,
}

impl StreamKind {
    /// Values in one sample of a tensor or audio stream (0 for the others).
    pub fn values(&self) -> usize {
        match self {
            StreamKind::Tensor { shape } => shape.iter().product(),
            StreamKind::Audio {
                frames, channels, ..
            } => frames * channels,
            _ => 0,
        }
    }

    /// The shape of one sample of a tensor or audio stream.
    pub fn shape(&self) -> Vec<usize> {
        match self {
            StreamKind::Tensor { shape } => shape.clone(),
            StreamKind::Audio {
                frames, channels, ..
            } => vec![*frames, *channels],
            _ => Vec::new(),
        }
    }
}

impl StreamDecl {
    pub fn image(name: impl Into<String>, width: usize, height: usize, fps: f64) -> Self {
        Self {
            name: name.into(),
            kind: StreamKind::Image { width, height },
            rate_hz: Some(fps),
        }
    }

    pub fn joint_state(name: impl Into<String>, joints: usize) -> Self {
        Self {
            name: name.into(),
            kind: StreamKind::JointState { joints },
            rate_hz: None,
        }
    }

    /// A float32 tensor stream of `shape` at `rate_hz`.
    pub fn tensor(name: impl Into<String>, shape: Vec<usize>, rate_hz: Option<f64>) -> Self {
        Self {
            name: name.into(),
            kind: StreamKind::Tensor { shape },
            rate_hz,
        }
    }

    /// An audio stream of `frames`-sample chunks; its rate is chunks per second.
    pub fn audio(
        name: impl Into<String>,
        frames: usize,
        channels: usize,
        sample_rate_hz: f64,
    ) -> Self {
        Self {
            name: name.into(),
            rate_hz: Some(sample_rate_hz / frames.max(1) as f64),
            kind: StreamKind::Audio {
                frames,
                channels,
                sample_rate_hz,
            },
        }
    }

    pub fn text(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: StreamKind::Text,
            rate_hz: None,
        }
    }

    pub fn is_image(&self) -> bool {
        matches!(self.kind, StreamKind::Image { .. })
    }

    /// Tensor and audio streams: float32 samples policy inputs can read.
    pub fn is_tensor(&self) -> bool {
        matches!(
            self.kind,
            StreamKind::Tensor { .. } | StreamKind::Audio { .. }
        )
    }

    /// Streams the loop watches for staleness (`[streams.<name>]`): images,
    /// tensors and audio.
    pub fn is_sensor(&self) -> bool {
        self.is_image() || self.is_tensor()
    }
}

/// What a stale stream does to the run (`[streams.<name>] on_stale`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OnStale {
    /// Keep going with the last sample.
    Ignore,
    /// Policy inputs see the camera as absent (black image, mask false): for
    /// inputs marked `optional`.
    Mask,
    /// Ask for no new chunk; the active one runs out and the arm holds its last
    /// action until the stream is fresh again.
    #[default]
    Pause,
    /// Latch the e-stop (re-arm needed).
    Stop,
}

impl OnStale {
    pub fn verb(self) -> &'static str {
        match self {
            OnStale::Ignore => "ignored",
            OnStale::Mask => "masked",
            OnStale::Pause => "paused inference",
            OnStale::Stop => "stopped the arm",
        }
    }
}

/// How the loop watches one sensor stream (cameras in order, then tensor streams).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamWatch {
    pub name: String,
    /// Older than this (or nothing yet this long after the start) is stale.
    pub max_age_ns: u64,
    pub on_stale: OnStale,
    /// `sample = "aligned"`: the sample closest to the joint state's capture time
    /// is fed, and none within this many ns makes the observation misaligned.
    pub align_tolerance_ns: Option<u64>,
    /// `masked = true`: always fed as absent.
    pub masked: bool,
}

/// `[streams.<name>] sample`: which sample an observation takes.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Sampling {
    /// The newest sample.
    #[default]
    Latest,
    /// The sample captured closest to the joint state's capture time, within
    /// `tolerance_ms` (from a short history of the stream).
    Aligned,
}

/// What one stream's staleness did during a run.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamFaults {
    pub name: String,
    pub on_stale: OnStale,
    /// Times it went stale.
    pub episodes: u64,
    /// Ticks it was stale.
    pub stale_ticks: u64,
    /// New samples the loop saw.
    pub samples: u64,
    /// Observations an `aligned` stream had no sample within its tolerance for
    /// (handled as stale for that observation).
    pub misaligned: u64,
    /// What the source counted, at the end of the run.
    pub source: SourceCounts,
}

/// What a driver learns about one of its streams from the source itself: samples
/// repeated or skipped by the capture, late or corrupt ones, reconnects. The
/// driver's threads count; the tick reads them for the status line (atomics: no
/// lock) and the summary reports them.
#[derive(Debug, Default)]
pub struct SourceCounters {
    /// Samples whose sequence number or capture stamp did not advance (not fed as fresh).
    pub repeated: AtomicU64,
    /// Samples the source skipped (a jump in its sequence numbers).
    pub dropped: AtomicU64,
    /// Samples that arrived later than the driver accepts after their capture.
    pub late: AtomicU64,
    /// Samples that failed a checksum or did not parse.
    pub corrupt: AtomicU64,
    /// Times the source was lost and opened again.
    pub reconnects: AtomicU64,
    /// Samples lost to a full buffer (an audio overrun).
    pub overruns: AtomicU64,
}

/// A snapshot of [`SourceCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SourceCounts {
    pub repeated: u64,
    pub dropped: u64,
    pub late: u64,
    pub corrupt: u64,
    pub reconnects: u64,
    pub overruns: u64,
}

impl SourceCounters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> SourceCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SourceCounts {
            repeated: get(&self.repeated),
            dropped: get(&self.dropped),
            late: get(&self.late),
            corrupt: get(&self.corrupt),
            reconnects: get(&self.reconnects),
            overruns: get(&self.overruns),
        }
    }
}

impl SourceCounts {
    /// The non-zero counts, e.g. `2 dropped, 5 repeated` (empty when all are zero).
    pub fn describe(&self) -> String {
        [
            (self.dropped, "dropped"),
            (self.repeated, "repeated"),
            (self.late, "late"),
            (self.corrupt, "corrupt"),
            (self.reconnects, "reconnects"),
            (self.overruns, "overruns"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect::<Vec<_>>()
        .join(", ")
    }
}
