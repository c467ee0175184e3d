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

/// What a device's values are.
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
#[serde(rename_all = "snake_case")]
pub enum TeleopFrame {
    /// Joint positions (then a gripper opening), rad: a leader arm, or a device
    /// that moves joints one by one.
    #[default]
    Joint,
    /// The tip link's position in the robot's root frame, m (x, y, z; then a
    /// gripper opening): the arm follows through damped least-squares IK on the
    /// URDF's chain.
    EndEffector,
}

/// One sample of a teleoperation device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TeleopCommand {
    /// Numbered from 1 by the device; 0: no sample yet.
    pub seq: u64,
    /// The operator holds the dead-man / clutch: the device commands the arm.
    pub engaged: bool,
    /// What `positions` holds.
    pub frame: TeleopFrame,
    /// The device's position (see [`TeleopFrame`]); only its motion since
    /// takeover matters.
    pub positions: [f64; MAX_JOINTS + 1],
    pub len: usize,
}

impl TeleopFrame {
    /// How many values a device in this frame sends for `launch`'s robot: the
    /// joints (or x, y, z), then optionally the gripper. An error (for the
    /// launch file) when the frame needs what the robot lacks.
    pub fn values(self, launch: &crate::launch::Launch) -> Result<(usize, usize), String> {
        let gripper = usize::from(launch.config.robot.gripper.is_some());
        match self {
            TeleopFrame::Joint => {
                let joints = launch.config.robot.joints.len();
                Ok((joints, joints + gripper))
            }
            TeleopFrame::EndEffector if launch.robot_model.is_none() => Err(
                "\"end_effector\" needs the robot's kinematics: set robot.urdf (and tip_link \
                 if the chain's last link is not the tip)"
                    .into(),
            ),
            TeleopFrame::EndEffector => Ok((3, 3 + gripper)),
        }
    }
}

impl TeleopCommand {
    pub const NONE: Self = Self {
        seq: 0,
        engaged: false,
        frame: TeleopFrame::Joint,
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
