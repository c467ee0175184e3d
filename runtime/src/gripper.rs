//! A gripper: its own command beside the arm's joints, with its own limits.
//!
//! The policy commands it through one column of its actions (`[robot.gripper]
//! column`); the executor carries that column like a joint, and the tick passes it
//! through [`GripperFilter`] instead of the joint filter: finite, inside `range`,
//! moving at most `max_speed`, and held (not opened) whenever the arm is stopped or
//! held, so that a stop never drops what the gripper holds.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::safety::flags;

/// `[robot.gripper]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GripperConfig {
    /// The column of the policy's actions that commands the gripper (default: the
    /// one after the joints). The joints take the other columns, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// `[min, max]` of the command, in the gripper's own unit (m of opening, or 0..1).
    pub range: [f64; 2],
    /// Fastest change of the command, units/s.
    pub max_speed: f64,
    /// `continuous` (the action is the command) or `binary` (open / close).
    #[serde(default)]
    pub mode: GripperMode,
    /// `binary`: an action at or above this closes the gripper.
    #[serde(default = "half")]
    pub threshold: f64,
    /// `binary`: the command that opens it (default: the top of `range`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<f64>,
    /// `binary`: the command that closes it (default: the bottom of `range`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed: Option<f64>,
}

fn half() -> f64 {
    0.5
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GripperMode {
    #[default]
    Continuous,
    Binary,
}

impl GripperConfig {
    /// Checks the numbers; on error returns the field and what is wrong.
    pub fn check(&self, joints: usize) -> Result<(), (&'static str, String)> {
        let [lo, hi] = self.range;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err((
                "range",
                format!("must be [min, max] with min < max, found [{lo}, {hi}]"),
            ));
        }
        if !(self.max_speed.is_finite() && self.max_speed > 0.0) {
            return Err((
                "max_speed",
                format!("must be a positive number, found {}", self.max_speed),
            ));
        }
        if let Some(column) = self.column
            && column > joints
        {
            return Err((
                "column",
                format!(
                    "is {column}, but the actions have {} columns (the {joints} joints and the gripper)",
                    joints + 1
                ),
            ));
        }
        if !self.threshold.is_finite() {
            return Err(("threshold", "must be a finite number".into()));
        }
        for (field, value) in [("open", self.open), ("closed", self.closed)] {
            if let Some(v) = value
                && !(lo..=hi).contains(&v)
            {
                return Err((field, format!("{v} is outside range [{lo}, {hi}]")));
            }
        }
        Ok(())
    }

    /// The action column of the gripper, given the robot's joints.
    pub fn column(&self, joints: usize) -> usize {
        self.column.unwrap_or(joints)
    }

    pub fn open_position(&self) -> f64 {
        self.open.unwrap_or(self.range[1])
    }

    pub fn closed_position(&self) -> f64 {
        self.closed.unwrap_or(self.range[0])
    }

    /// The command an action asks for, before the speed limit.
    pub fn wanted(&self, action: f64) -> f64 {
        let wanted = match self.mode {
            GripperMode::Continuous => action,
            GripperMode::Binary if action >= self.threshold => self.closed_position(),
            GripperMode::Binary => self.open_position(),
        };
        wanted.clamp(self.range[0], self.range[1])
    }
}

/// The gripper's command: one value per tick, limited in range and speed.
#[derive(Debug, Clone)]
pub struct GripperFilter {
    config: GripperConfig,
    max_step: f64,
    command: f64,
}

impl GripperFilter {
    pub fn new(config: &GripperConfig, dt: f64) -> Self {
        Self {
            max_step: config.max_speed * dt,
            command: config.open_position(),
            config: config.clone(),
        }
    }

    /// Starts from the measured opening (clamped into range), or from open when the
    /// arm does not report one.
    pub fn start(&mut self, measured: Option<f64>) {
        self.command = match measured.filter(|m| m.is_finite()) {
            Some(m) => m.clamp(self.config.range[0], self.config.range[1]),
            None => self.config.open_position(),
        };
    }

    /// The command for this tick from the executor's `action`; `moving` is false
    /// while the arm is stopped or held, and the gripper then holds too. Returns
    /// the safety flags it raised.
    pub fn apply(&mut self, action: f64, moving: bool) -> u32 {
        if !action.is_finite() {
            return flags::NON_FINITE;
        }
        if !moving {
            return 0;
        }
        let wanted = self.config.wanted(action);
        let step = (wanted - self.command).clamp(-self.max_step, self.max_step);
        self.command = (self.command + step).clamp(self.config.range[0], self.config.range[1]);
        0
    }

    pub fn command(&self) -> f64 {
        self.command
    }

    pub fn config(&self) -> &GripperConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(mode: GripperMode) -> GripperConfig {
        GripperConfig {
            column: None,
            range: [0.0, 0.08],
            max_speed: 0.1,
            mode,
            threshold: 0.5,
            open: None,
            closed: None,
        }
    }

    #[test]
    fn the_command_stays_in_range_and_under_the_speed_limit_whatever_arrives() {
        let mut filter = GripperFilter::new(&config(GripperMode::Continuous), 0.01);
        filter.start(Some(0.04));
        let actions = [
            1e9,
            -1e9,
            f64::NAN,
            f64::INFINITY,
            0.02,
            f64::NEG_INFINITY,
            0.5,
        ];
        let mut last = filter.command();
        for (i, a) in actions.iter().cycle().take(500).enumerate() {
            let raised = filter.apply(*a, i % 7 != 3);
            let c = filter.command();
            assert!(c.is_finite() && (0.0..=0.08).contains(&c), "{c}");
            assert!((c - last).abs() <= 0.1 * 0.01 + 1e-15, "{last} -> {c}");
            assert_eq!(raised != 0, !a.is_finite());
            last = c;
        }
    }

    #[test]
    fn a_stopped_arm_holds_the_gripper_and_binary_actions_open_or_close() {
        let mut filter = GripperFilter::new(&config(GripperMode::Binary), 0.01);
        filter.start(None);
        assert_eq!(filter.command(), 0.08, "starts open without a measurement");
        filter.apply(0.9, false);
        assert_eq!(filter.command(), 0.08, "held while the arm is stopped");
        for _ in 0..100 {
            filter.apply(0.9, true);
        }
        assert_eq!(filter.command(), 0.0, "closed");
        for _ in 0..100 {
            filter.apply(0.1, true);
        }
        assert_eq!(filter.command(), 0.08, "open again");
    }

    #[test]
    fn bad_settings_name_their_field() {
        let mut c = config(GripperMode::Continuous);
        c.range = [0.1, 0.0];
        assert_eq!(c.check(6).unwrap_err().0, "range");
        let mut c = config(GripperMode::Continuous);
        c.column = Some(8);
        assert_eq!(c.check(6).unwrap_err().0, "column");
        let mut c = config(GripperMode::Binary);
        c.open = Some(0.2);
        assert_eq!(c.check(6).unwrap_err().0, "open");
        assert!(config(GripperMode::Continuous).check(6).is_ok());
    }
}
