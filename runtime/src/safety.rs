//! The last word on every command: NaN/Inf guard, position, velocity and
//! acceleration limits applied to the command itself, a watchdog on stale joint
//! state, and a latched e-stop that only an explicit re-arm clears.
//!
//! Stopping never jumps either: a stop decelerates every joint at its acceleration
//! limit until it stands still, then holds.

// Per-joint loops index several parallel limit arrays at once.
#![allow(clippy::needless_range_loop)]

use crate::launch::JointConfig;
use crate::types::MAX_JOINTS;

/// Flags describing what the filter did on a tick (bit set, logged per tick).
pub mod flags {
    /// A limit changed the command.
    pub const LIMITED: u32 = 1 << 0;
    /// The target was NaN or infinite; the arm is being stopped.
    pub const NON_FINITE: u32 = 1 << 1;
    /// The joint state is stale; the arm is being stopped.
    pub const STALE_STATE: u32 = 1 << 2;
    /// The e-stop is latched.
    pub const ESTOP: u32 = 1 << 3;
}

#[derive(Debug, Clone)]
pub struct SafetyFilter {
    joints: usize,
    dt: f64,
    min: [f64; MAX_JOINTS],
    max: [f64; MAX_JOINTS],
    max_velocity: [f64; MAX_JOINTS],
    max_acceleration: [f64; MAX_JOINTS],
    command: [f64; MAX_JOINTS],
    velocity: [f64; MAX_JOINTS],
    /// The previous tick's (clamped) goal, to follow moving targets without lag.
    last_goal: [Option<f64>; MAX_JOINTS],
    estop_after_stale_ns: u64,
    stale_since_ns: Option<u64>,
    estopped: bool,
}

impl SafetyFilter {
    pub fn new(joints: &[JointConfig], dt: f64, estop_after_stale_ns: u64) -> Self {
        let mut filter = Self {
            joints: joints.len(),
            dt,
            min: [0.0; MAX_JOINTS],
            max: [0.0; MAX_JOINTS],
            max_velocity: [0.0; MAX_JOINTS],
            max_acceleration: [0.0; MAX_JOINTS],
            command: [0.0; MAX_JOINTS],
            velocity: [0.0; MAX_JOINTS],
            last_goal: [None; MAX_JOINTS],
            estop_after_stale_ns,
            stale_since_ns: None,
            estopped: false,
        };
        for (j, joint) in joints.iter().enumerate() {
            filter.min[j] = joint.position[0];
            filter.max[j] = joint.position[1];
            filter.max_velocity[j] = joint.velocity;
            filter.max_acceleration[j] = joint.acceleration;
        }
        filter
    }

    /// Starts from the measured position at rest; also clears a latched e-stop.
    /// Re-arming from the measured state (not from the last command) is what keeps
    /// the first command after a fault from jumping.
    pub fn rearm(&mut self, measured: &[f64]) {
        for j in 0..self.joints {
            self.command[j] = measured[j].clamp(self.min[j], self.max[j]);
            self.velocity[j] = 0.0;
            self.last_goal[j] = None;
        }
        self.estopped = false;
        self.stale_since_ns = None;
    }

    /// Latches the e-stop: the arm decelerates to rest and holds until `rearm`.
    pub fn estop(&mut self) {
        self.estopped = true;
    }

    pub fn is_estopped(&self) -> bool {
        self.estopped
    }

    /// True when no joint is moving.
    pub fn at_rest(&self) -> bool {
        self.velocity[..self.joints].iter().all(|v| *v == 0.0)
    }

    pub fn command(&self) -> &[f64] {
        &self.command[..self.joints]
    }

    /// Filters `target` into the next command; returns the [`flags`] raised.
    pub fn apply(&mut self, target: &[f64], state_fresh: bool, now_ns: u64) -> u32 {
        let mut raised = 0;
        if state_fresh {
            self.stale_since_ns = None;
        } else {
            raised |= flags::STALE_STATE;
            let since = *self.stale_since_ns.get_or_insert(now_ns);
            if now_ns.saturating_sub(since) >= self.estop_after_stale_ns {
                self.estopped = true;
            }
        }
        if !target[..self.joints].iter().all(|t| t.is_finite()) {
            raised |= flags::NON_FINITE;
        }
        if self.estopped {
            raised |= flags::ESTOP;
        }
        if raised & (flags::STALE_STATE | flags::NON_FINITE | flags::ESTOP) != 0 {
            self.brake();
            return raised;
        }
        for j in 0..self.joints {
            let (lo, hi) = (self.min[j], self.max[j]);
            let (v_max, a) = (self.max_velocity[j], self.max_acceleration[j]);
            let goal = target[j].clamp(lo, hi);
            // Follow the goal's own motion, and close the remaining gap no faster
            // than allows stopping on it at the acceleration limit.
            let goal_velocity = self.last_goal[j]
                .map_or(0.0, |last| ((goal - last) / self.dt).clamp(-v_max, v_max));
            self.last_goal[j] = Some(goal);
            // What is left after following the goal's motion, closed no faster than
            // allows stopping on it within the acceleration limit (discrete time: after
            // n braking steps of a*dt each, a*dt^2*n(n+1)/2 of distance is covered).
            let gap = goal - (self.command[j] + goal_velocity * self.dt);
            let braking_steps =
                ((1.0 + 8.0 * gap.abs() / (a * self.dt * self.dt)).sqrt() - 1.0) / 2.0;
            let closing = (gap.abs() / self.dt).min(a * self.dt * braking_steps) * gap.signum();
            let dv = a * self.dt;
            let v = (goal_velocity + closing)
                .clamp(-v_max, v_max)
                .clamp(self.velocity[j] - dv, self.velocity[j] + dv);
            let mut next = self.command[j] + v * self.dt;
            next = next.clamp(lo, hi);
            let v = (next - self.command[j]) / self.dt;
            if goal != target[j] || (next - goal).abs() > 1e-9 {
                raised |= flags::LIMITED;
            }
            self.command[j] = next;
            self.velocity[j] = v;
        }
        raised
    }

    /// Decelerates every joint towards rest at its acceleration limit.
    fn brake(&mut self) {
        for j in 0..self.joints {
            self.last_goal[j] = None;
            let dv = self.max_acceleration[j] * self.dt;
            let v = self.velocity[j];
            let v = if v.abs() <= dv {
                0.0
            } else {
                v - dv * v.signum()
            };
            self.command[j] = (self.command[j] + v * self.dt).clamp(self.min[j], self.max[j]);
            self.velocity[j] = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joint(lo: f64, hi: f64, v: f64, a: f64) -> JointConfig {
        JointConfig {
            name: "j".into(),
            position: [lo, hi],
            velocity: v,
            acceleration: a,
            jerk: None,
        }
    }

    fn filter() -> SafetyFilter {
        let mut f = SafetyFilter::new(&[joint(-1.0, 1.0, 2.0, 10.0)], 0.01, 100_000_000);
        f.rearm(&[0.0]);
        f
    }

    /// Checks every step of a command sequence against the limits.
    fn assert_within_limits(commands: &[f64], dt: f64, v_max: f64, a_max: f64) {
        let mut v_prev = 0.0;
        for pair in commands.windows(2) {
            let v = (pair[1] - pair[0]) / dt;
            assert!(v.abs() <= v_max + 1e-9, "velocity {v}");
            assert!(
                ((v - v_prev) / dt).abs() <= a_max + 1e-6,
                "acceleration {}",
                (v - v_prev) / dt
            );
            assert!(pair[1].abs() <= 1.0);
            v_prev = v;
        }
    }

    #[test]
    fn a_step_target_becomes_a_limited_ramp_that_settles() {
        let mut f = filter();
        let mut commands = vec![0.0];
        for tick in 0..300 {
            f.apply(&[0.8], true, tick * 10_000_000);
            commands.push(f.command()[0]);
        }
        assert_within_limits(&commands, 0.01, 2.0, 10.0);
        assert!(
            (commands.last().unwrap() - 0.8).abs() < 1e-3,
            "settles at the goal: {}",
            commands.last().unwrap()
        );
    }

    #[test]
    fn a_slowly_moving_target_is_followed_without_lag() {
        let mut f = filter();
        for tick in 0..200u64 {
            let goal = 0.5 * tick as f64 * 0.01; // 0.5 rad/s
            let raised = f.apply(&[goal], true, tick * 10_000_000);
            if tick > 20 {
                assert!(
                    (f.command()[0] - goal).abs() < 1e-9,
                    "tick {tick}: {} vs {goal}",
                    f.command()[0]
                );
                assert_eq!(raised & flags::LIMITED, 0);
            }
        }
    }

    #[test]
    fn targets_beyond_the_position_limit_are_clamped() {
        let mut f = filter();
        for tick in 0..300 {
            f.apply(&[5.0], true, tick * 10_000_000);
        }
        assert!(f.command()[0] <= 1.0);
        assert!((f.command()[0] - 1.0).abs() < 1e-3);
    }

    #[test]
    fn nan_target_brakes_smoothly_instead_of_passing_through() {
        let mut f = filter();
        let mut commands = vec![0.0];
        for tick in 0..20 {
            f.apply(&[0.9], true, tick * 10_000_000);
            commands.push(f.command()[0]);
        }
        for tick in 20..60 {
            let raised = f.apply(&[f64::NAN], true, tick * 10_000_000);
            assert!(raised & flags::NON_FINITE != 0);
            assert!(f.command()[0].is_finite());
            commands.push(f.command()[0]);
        }
        assert_within_limits(&commands, 0.01, 2.0, 10.0);
        let n = commands.len();
        assert_eq!(commands[n - 1], commands[n - 2], "came to rest");
    }

    #[test]
    fn stale_state_stops_then_latches_the_estop_until_rearm() {
        let mut f = filter();
        for tick in 0..10 {
            f.apply(&[0.5], true, tick * 10_000_000);
        }
        for tick in 10..40 {
            let raised = f.apply(&[0.5], false, tick * 10_000_000);
            assert!(raised & flags::STALE_STATE != 0);
        }
        assert!(f.is_estopped(), "stale for 300 ms > 100 ms");
        let held = f.command()[0];
        let raised = f.apply(&[0.5], true, 500_000_000);
        assert!(
            raised & flags::ESTOP != 0,
            "fresh state alone does not clear the e-stop"
        );
        assert_eq!(f.command()[0], held);
        f.rearm(&[0.2]);
        assert_eq!(
            f.command()[0],
            0.2,
            "re-arm starts from the measured position"
        );
        let raised = f.apply(&[0.5], true, 510_000_000);
        assert_eq!(raised & flags::ESTOP, 0);
    }
}
