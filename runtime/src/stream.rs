//! Streams: what drivers declare they produce, named so that policy inputs can
//! refer to them and the launch file can be checked before anything runs.

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

    pub fn is_image(&self) -> bool {
        matches!(self.kind, StreamKind::Image { .. })
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

/// How the loop watches one image stream (camera order).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamWatch {
    pub name: String,
    /// Older than this (or nothing yet this long after the start) is stale.
    pub max_age_ns: u64,
    pub on_stale: OnStale,
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
}
