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
