//! Interventions: a person takes over with a teleoperation device.
//!
//! A teleop driver publishes [`TeleopCommand`]s (the device's joint positions and
//! whether its operator is engaged) into a latest-value slot. While engaged, the
//! device's command replaces the policy's, through the same safety filter, and
//! moves *relative to the command at takeover* (a leader arm that sits elsewhere
//! does not make the follower jump). On release the executor is flushed, so the
//! policy re-infers from the current state. Each new sample is logged, so replay
//! reproduces the interventions bit for bit.

use crate::slot::SlotReader;
use crate::types::MAX_JOINTS;

/// One sample of a teleoperation device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TeleopCommand {
    /// Numbered from 1 by the device; 0: no sample yet.
    pub seq: u64,
    /// The operator holds the dead-man / clutch: the device commands the arm.
    pub engaged: bool,
    /// Joint positions of the device (then a gripper), rad.
    pub positions: [f64; MAX_JOINTS + 1],
    pub len: usize,
}

impl TeleopCommand {
    pub const NONE: Self = Self {
        seq: 0,
        engaged: false,
        positions: [0.0; MAX_JOINTS + 1],
        len: 0,
    };

    pub fn positions(&self) -> &[f64] {
        &self.positions[..self.len.min(MAX_JOINTS + 1)]
    }
}

/// The loop's end of a teleop device.
pub struct TeleopPort {
    pub name: String,
    pub commands: SlotReader<TeleopCommand>,
}
