//! Action targets: what the columns of a policy's actions mean, and the first
//! chunk stage, which turns them into what the executor runs (absolute joint
//! positions, then the gripper's command when the robot has one).
//!
//! - `position`: absolute joint positions, as they are.
//! - `delta`: joint positions relative to the measured positions the policy saw
//!   (openpi's delta actions); the gripper column stays absolute.
//! - `velocity`: joint velocities, rad/s, each held for one action period. They
//!   are integrated here, on the inference thread, from the command the loop was
//!   publishing when the observation was taken, into position targets. So the
//!   executor only ever holds positions: when a chunk runs out or inference stalls
//!   the arm holds the last one (velocity zero) instead of moving on at the last
//!   velocity, and the safety filter bounds the result like any other target.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::PolicyError;
use crate::stage::{Candidates, ChunkStage};
use crate::types::Observation;

/// `[execution] target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ActionTarget {
    #[default]
    Position,
    Delta,
    Velocity,
}

impl ActionTarget {
    pub fn name(self) -> &'static str {
        match self {
            ActionTarget::Position => "position",
            ActionTarget::Delta => "delta",
            ActionTarget::Velocity => "velocity",
        }
    }
}

/// The built-in first stage: reorders the gripper column last and makes the joint
/// columns absolute positions. Allocates nothing.
pub struct ActionTargets {
    target: ActionTarget,
    joints: usize,
    /// The gripper's column in the policy's actions, when the robot has one.
    gripper_column: Option<usize>,
    /// Seconds per action (velocity integration).
    action_period_s: f64,
}

impl ActionTargets {
    pub fn new(
        target: ActionTarget,
        joints: usize,
        gripper_column: Option<usize>,
        action_rate_hz: f64,
    ) -> Self {
        Self {
            target,
            joints,
            gripper_column,
            action_period_s: 1.0 / action_rate_hz,
        }
    }

    /// True when the stage changes nothing (absolute positions, gripper last or none).
    pub fn is_identity(&self) -> bool {
        self.target == ActionTarget::Position
            && self.gripper_column.is_none_or(|c| c == self.joints)
    }
}

impl ChunkStage for ActionTargets {
    fn apply(&mut self, obs: &Observation, candidates: &mut Candidates) -> Result<(), PolicyError> {
        let (joints, dim) = (self.joints, candidates.dim);
        let width = joints + usize::from(self.gripper_column.is_some());
        if dim != width {
            return Err(format!(
                "the policy's actions have {dim} columns, the robot takes {width} \
                 ({joints} joints{})",
                if width > joints {
                    " and the gripper"
                } else {
                    ""
                }
            )
            .into());
        }
        for b in 0..candidates.batch {
            let chunk = candidates.chunk_mut(b);
            let mut integrated = obs.command;
            for row in chunk.chunks_mut(dim) {
                if let Some(column) = self.gripper_column
                    && column < joints
                {
                    row[column..].rotate_left(1);
                }
                match self.target {
                    ActionTarget::Position => {}
                    ActionTarget::Delta => {
                        for (value, base) in row[..joints].iter_mut().zip(obs.joints.positions()) {
                            *value = (*base + f64::from(*value)) as f32;
                        }
                    }
                    ActionTarget::Velocity => {
                        for (value, position) in row[..joints].iter_mut().zip(&mut integrated) {
                            *position += f64::from(*value) * self.action_period_s;
                            *value = *position as f32;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::JointState;

    fn observation(positions: &[f64], command: &[f64]) -> Observation {
        let mut state = JointState::empty(positions.len());
        state.position[..positions.len()].copy_from_slice(positions);
        let mut obs = Observation::of_joints(0, state);
        obs.command[..command.len()].copy_from_slice(command);
        obs
    }

    fn candidates(dim: usize, rows: &[&[f32]]) -> Candidates {
        let mut c = Candidates::zeros(1, rows.len(), dim);
        for (k, row) in rows.iter().enumerate() {
            c.chunk_mut(0)[k * dim..(k + 1) * dim].copy_from_slice(row);
        }
        c
    }

    #[test]
    fn deltas_are_added_to_the_measured_positions_and_the_gripper_stays_absolute() {
        let obs = observation(&[1.0, -1.0], &[0.0, 0.0]);
        let mut c = candidates(3, &[&[0.5, 0.0, 0.02], &[0.25, 1.0, 0.03]]);
        ActionTargets::new(ActionTarget::Delta, 2, Some(2), 10.0)
            .apply(&obs, &mut c)
            .unwrap();
        assert_eq!(c.chunk(0), &[1.5, -1.0, 0.02, 1.25, 0.0, 0.03]);
    }

    #[test]
    fn velocities_are_integrated_from_the_published_command_one_action_period_each() {
        let obs = observation(&[9.0, 9.0], &[0.5, 0.0]);
        let mut c = candidates(2, &[&[1.0, -2.0], &[1.0, 0.0], &[0.0, 0.0]]);
        ActionTargets::new(ActionTarget::Velocity, 2, None, 10.0)
            .apply(&obs, &mut c)
            .unwrap();
        assert_eq!(c.chunk(0), &[0.6, -0.2, 0.7, -0.2, 0.7, -0.2]);
    }

    #[test]
    fn a_gripper_column_before_the_joints_moves_last() {
        let obs = observation(&[0.0, 0.0], &[0.0, 0.0]);
        let mut c = candidates(3, &[&[0.04, 1.0, 2.0]]);
        let mut stage = ActionTargets::new(ActionTarget::Position, 2, Some(0), 10.0);
        assert!(!stage.is_identity());
        stage.apply(&obs, &mut c).unwrap();
        assert_eq!(c.chunk(0), &[1.0, 2.0, 0.04]);
        let mut wrong = candidates(2, &[&[1.0, 2.0]]);
        assert!(stage.apply(&obs, &mut wrong).is_err());
    }
}
