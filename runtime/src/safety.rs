//! The last word on every command, and the one place that owns the command
//! invariant: whatever the inputs (targets, states, operator requests, faults),
//! every command this filter produces is finite, inside the position limits, and
//! its velocity, acceleration and jerk, taken as the first, second and third finite
//! differences of consecutive commands at the control period, stay within the
//! joint limits.
//!
//! How: the filter keeps the commanded position, velocity and acceleration of each
//! joint and moves them with bounded jerk. Before it takes a step it simulates the
//! braking law from the state that step leads to; a step is taken only when braking
//! from there reaches rest inside every limit within [`SafetyFilter::stop_bound_ticks`].
//! The braking law is a function of the state alone, so braking from the next state
//! is the tail of braking from this one: once the filter is in a stoppable state it
//! can always stop, at any tick, for any reason, and the stop ends in bounded time.
//!
//! Stop semantics (IEC 60204-1 category 2, a controlled stop with power kept on):
//! an e-stop latches and brakes to rest, then holds. `rearm` (accepted only while
//! latched, at rest, with a measured state that agrees with the held command)
//! moves the latched stop to **hold**; only `resume` starts motion again. Neither
//! changes the command, so neither can make it jump.

// Per-joint loops index several parallel arrays at once.
#![allow(clippy::needless_range_loop)]

use crate::launch::{JointConfig, SafetyConfig};
use crate::types::{JointState, MAX_JOINTS};

/// Flags describing what the filter did on a tick (bit set, logged per tick).
pub mod flags {
    /// A limit changed the command.
    pub const LIMITED: u32 = 1 << 0;
    /// The target was NaN or infinite; the arm is being stopped.
    pub const NON_FINITE: u32 = 1 << 1;
    /// The joint state is stale or invalid; the arm is being stopped.
    pub const STALE_STATE: u32 = 1 << 2;
    /// The e-stop is latched.
    pub const ESTOP: u32 = 1 << 3;
    /// Re-armed and holding: waiting for an explicit resume.
    pub const HOLD: u32 = 1 << 4;
    /// The command is moving a joint that started past its limit back inward.
    pub const RECOVERING: u32 = 1 << 5;
    /// The workspace box stopped the motion.
    pub const WORKSPACE: u32 = 1 << 6;
}

/// What the filter is doing with the arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Motion {
    /// Following the executor's targets.
    Tracking,
    /// A latched stop: braking to rest, then holding, until re-armed.
    Latched,
    /// Re-armed: holding still until an explicit resume.
    Hold,
}

impl Motion {
    pub fn name(self) -> &'static str {
        match self {
            Motion::Tracking => "running",
            Motion::Latched => "e-stop latched",
            Motion::Hold => "holding (re-armed, waiting for resume)",
        }
    }
}

/// Why a measured state cannot be armed from.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum ArmError {
    #[error("joint {joint} measured {value}, not a finite number")]
    NonFinite { joint: usize, value: f64 },
    #[error(
        "joint {joint} measured {value:.4}, {distance:.4} past its limit (more than the \
         {margin} allowed by safety.state_limit_margin)"
    )]
    OutsideLimits {
        joint: usize,
        value: f64,
        distance: f64,
        margin: f64,
    },
    #[error("the state has {found} joints, the robot has {expected}")]
    JointCount { found: usize, expected: usize },
}

/// Why a re-arm or resume request was refused. Refused requests are forgotten.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Refusal {
    #[error("nothing to re-arm: the e-stop is not latched")]
    NotLatched,
    #[error("the arm is still stopping")]
    StillStopping,
    #[error("no fresh valid joint state to re-arm from")]
    NoFreshState,
    #[error(
        "joint {joint} is moving at {velocity:.4} rad/s (re-arm needs below {limit} rad/s, \
         safety.rearm_max_velocity)"
    )]
    Moving {
        joint: usize,
        velocity: f64,
        limit: f64,
    },
    #[error(
        "joint {joint} is {difference:.4} rad from the held command (more than \
         safety.rearm_position_tolerance = {tolerance}): the arm was moved while stopped"
    )]
    Moved {
        joint: usize,
        difference: f64,
        tolerance: f64,
    },
    #[error("nothing to resume: not holding after a re-arm")]
    NotHolding,
}

impl Refusal {
    /// A stable number for the log (0 means accepted).
    pub fn code(&self) -> u8 {
        match self {
            Refusal::NotLatched => 1,
            Refusal::StillStopping => 2,
            Refusal::NoFreshState => 3,
            Refusal::Moving { .. } => 4,
            Refusal::Moved { .. } => 5,
            Refusal::NotHolding => 6,
        }
    }
}

/// Per-joint limits as the filter uses them (jerk = infinity when not limited).
#[derive(Debug, Clone, Copy, Default)]
struct Limits {
    lo: f64,
    hi: f64,
    velocity: f64,
    acceleration: f64,
    jerk: f64,
}

/// Commanded position, velocity and acceleration of one joint.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Kinematics {
    position: f64,
    velocity: f64,
    acceleration: f64,
}

impl Kinematics {
    fn at_rest(&self) -> bool {
        self.velocity == 0.0 && self.acceleration == 0.0
    }

    fn step(&self, acceleration: f64, dt: f64) -> Self {
        let velocity = self.velocity + acceleration * dt;
        // Landing on rest leaves a rounding residue; rest must be exact to be seen.
        let velocity = if velocity.abs() <= 1e-12 {
            0.0
        } else {
            velocity
        };
        Self {
            position: self.position + velocity * dt,
            velocity,
            acceleration,
        }
    }
}

/// The braking paths of a set of plans.
trait PlanPaths {
    fn map_paths(&self) -> [Option<BrakePath>; MAX_JOINTS];
}

impl PlanPaths for [Plan] {
    fn map_paths(&self) -> [Option<BrakePath>; MAX_JOINTS] {
        let mut out = [None; MAX_JOINTS];
        for (o, p) in out.iter_mut().zip(self) {
            *o = p.path;
        }
        out
    }
}

/// Halvings when searching for the largest acceptable step (1/64 resolution).
const BISECTIONS: usize = 6;

/// Where the braking trajectory from a state goes: its extreme and final positions.
#[derive(Debug, Clone, Copy)]
struct BrakePath {
    min: f64,
    max: f64,
    end: f64,
}

/// One joint's next step, before it is taken.
#[derive(Debug, Clone, Copy, Default)]
struct Plan {
    next: Kinematics,
    path: Option<BrakePath>,
    raised: u32,
}

/// A link that must stay inside a box: the chain that places it, and the box.
#[derive(Debug, Clone)]
pub struct WorkspaceGuard {
    pub chain: std::sync::Arc<crate::robot_model::KinematicChain>,
    pub bounds: crate::robot_model::WorkspaceBox,
}

#[derive(Debug, Clone)]
pub struct SafetyFilter {
    joints: usize,
    dt: f64,
    limits: [Limits; MAX_JOINTS],
    /// Position bounds in force: the limits, widened for a joint that was armed
    /// slightly past its limit, and tightened back as it moves inward.
    lo: [f64; MAX_JOINTS],
    hi: [f64; MAX_JOINTS],
    state: [Kinematics; MAX_JOINTS],
    /// The previous tick's (clamped) goal, to follow moving targets without lag.
    last_goal: [Option<f64>; MAX_JOINTS],
    config: SafetyConfig,
    estop_after_stale_ns: u64,
    stale_since_ns: Option<u64>,
    motion: Motion,
    armed: bool,
    stop_bound_ticks: usize,
    latches: u64,
    workspace: Option<WorkspaceGuard>,
    /// Where each joint comes to rest if it brakes from its current command (NaN
    /// when not simulated to the end).
    rest: [f64; MAX_JOINTS],
    #[cfg(test)]
    mutant: Mutant,
}

/// A deliberately broken filter, for the tests that show the property tests
/// catch each broken guarantee.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mutant {
    None,
    NoPositionLimit,
    NoVelocityLimit,
    NoAccelerationLimit,
    NoJerkLimit,
    NoNanGuard,
    NoStop,
}

impl SafetyFilter {
    pub fn new(joints: &[JointConfig], dt: f64, config: &SafetyConfig) -> Self {
        let mut limits = [Limits::default(); MAX_JOINTS];
        let mut stop_bound_ticks = 2;
        for (j, joint) in joints.iter().enumerate().take(MAX_JOINTS) {
            let l = Limits {
                lo: joint.position[0],
                hi: joint.position[1],
                velocity: joint.velocity,
                acceleration: joint.acceleration,
                jerk: joint.jerk.unwrap_or(f64::INFINITY),
            };
            // Braking from full speed takes v/a plus a/j to ramp the deceleration in
            // and out; the margin covers the discrete steps.
            let ramp = if l.jerk.is_finite() {
                l.acceleration / l.jerk
            } else {
                0.0
            };
            let seconds = 2.0 * (l.velocity / l.acceleration + 2.0 * ramp);
            let ticks = (seconds / dt).ceil();
            stop_bound_ticks = stop_bound_ticks.max(if ticks.is_finite() {
                ticks as usize + 10
            } else {
                usize::MAX
            });
            limits[j] = l;
        }
        Self {
            joints: joints.len().min(MAX_JOINTS),
            dt,
            lo: limits.map(|l| l.lo),
            hi: limits.map(|l| l.hi),
            limits,
            state: [Kinematics::default(); MAX_JOINTS],
            last_goal: [None; MAX_JOINTS],
            config: config.clone(),
            estop_after_stale_ns: (config.estop_after_stale_ms * 1e6) as u64,
            stale_since_ns: None,
            motion: Motion::Tracking,
            armed: false,
            stop_bound_ticks: stop_bound_ticks.min(1 << 20),
            latches: 0,
            workspace: None,
            rest: [f64::NAN; MAX_JOINTS],
            #[cfg(test)]
            mutant: Mutant::None,
        }
    }

    /// Breaks one guarantee on purpose (tests only).
    #[cfg(test)]
    pub(crate) fn mutate(&mut self, mutant: Mutant) {
        self.mutant = mutant;
        for j in 0..self.joints {
            let l = &mut self.limits[j];
            match mutant {
                Mutant::NoPositionLimit => {
                    (l.lo, l.hi) = (-1e300, 1e300);
                    (self.lo[j], self.hi[j]) = (-1e300, 1e300);
                }
                Mutant::NoVelocityLimit => l.velocity = 1e300,
                Mutant::NoAccelerationLimit => l.acceleration = 1e300,
                Mutant::NoJerkLimit => l.jerk = f64::INFINITY,
                _ => {}
            }
        }
    }

    /// Keeps `guard`'s link inside its box from now on.
    pub fn set_workspace(&mut self, guard: WorkspaceGuard) {
        self.workspace = Some(guard);
    }

    /// The longest any stop takes, in ticks: every state the filter enters can
    /// brake to rest within this many ticks.
    pub fn stop_bound_ticks(&self) -> usize {
        self.stop_bound_ticks
    }

    /// Checks that `measured` can be armed from: finite, and no joint further past
    /// its limit than `safety.state_limit_margin`.
    pub fn check_measured(&self, measured: &[f64]) -> Result<(), ArmError> {
        if measured.len() != self.joints {
            return Err(ArmError::JointCount {
                found: measured.len(),
                expected: self.joints,
            });
        }
        let margin = self.config.state_limit_margin;
        for (joint, &value) in measured.iter().enumerate() {
            if !value.is_finite() {
                return Err(ArmError::NonFinite { joint, value });
            }
            let l = &self.limits[joint];
            let distance = (l.lo - value).max(value - l.hi);
            if distance > margin {
                return Err(ArmError::OutsideLimits {
                    joint,
                    value,
                    distance,
                    margin,
                });
            }
        }
        Ok(())
    }

    /// Starts from the measured position at rest. A joint measured slightly past
    /// its limit starts there and may only be commanded back inward, slowly.
    pub fn arm(&mut self, measured: &[f64]) -> Result<(), ArmError> {
        self.check_measured(measured)?;
        for j in 0..self.joints {
            let p = measured[j];
            self.state[j] = Kinematics {
                position: p,
                velocity: 0.0,
                acceleration: 0.0,
            };
            self.lo[j] = self.limits[j].lo.min(p);
            self.hi[j] = self.limits[j].hi.max(p);
            self.last_goal[j] = None;
            self.rest[j] = p;
        }
        self.motion = Motion::Tracking;
        self.stale_since_ns = None;
        self.armed = true;
        Ok(())
    }

    /// Latches the e-stop: the arm brakes to rest and holds until re-armed.
    pub fn estop(&mut self) {
        if self.motion != Motion::Latched {
            self.latches += 1;
        }
        self.motion = Motion::Latched;
    }

    /// Moves a latched stop to hold. Refused unless latched, at rest, with a
    /// fresh valid state whose joints are still and where the command holds them.
    /// The command does not change.
    pub fn rearm(&mut self, measured: Option<&JointState>) -> Result<(), Refusal> {
        if self.motion != Motion::Latched {
            return Err(Refusal::NotLatched);
        }
        if !self.at_rest() {
            return Err(Refusal::StillStopping);
        }
        let Some(state) = measured else {
            return Err(Refusal::NoFreshState);
        };
        let limit = self.config.rearm_max_velocity;
        for (joint, &velocity) in state.velocities().iter().enumerate() {
            // A NaN velocity is no evidence of standing still.
            if velocity.is_nan() || velocity.abs() > limit {
                return Err(Refusal::Moving {
                    joint,
                    velocity,
                    limit,
                });
            }
        }
        let tolerance = self.config.rearm_position_tolerance;
        for (joint, &position) in state.positions().iter().enumerate() {
            let difference = (position - self.state[joint].position).abs();
            if difference.is_nan() || difference > tolerance {
                return Err(Refusal::Moved {
                    joint,
                    difference,
                    tolerance,
                });
            }
        }
        self.motion = Motion::Hold;
        self.stale_since_ns = None;
        Ok(())
    }

    /// Starts following targets again after a re-arm.
    pub fn resume(&mut self) -> Result<(), Refusal> {
        if self.motion != Motion::Hold {
            return Err(Refusal::NotHolding);
        }
        self.motion = Motion::Tracking;
        self.last_goal = [None; MAX_JOINTS];
        Ok(())
    }

    pub fn motion(&self) -> Motion {
        self.motion
    }

    pub fn is_estopped(&self) -> bool {
        self.motion == Motion::Latched
    }

    /// How many times the e-stop latched.
    pub fn latches(&self) -> u64 {
        self.latches
    }

    /// True when no joint is moving (and none is accelerating).
    pub fn at_rest(&self) -> bool {
        self.state[..self.joints].iter().all(Kinematics::at_rest)
    }

    /// The current command (positions).
    pub fn command(&self) -> [f64; MAX_JOINTS] {
        let mut out = [0.0; MAX_JOINTS];
        for j in 0..self.joints {
            out[j] = self.state[j].position;
        }
        out
    }

    /// Commanded velocities of the current command.
    pub fn velocity(&self) -> [f64; MAX_JOINTS] {
        self.state.map(|s| s.velocity)
    }

    /// Commanded accelerations of the current command.
    pub fn acceleration(&self) -> [f64; MAX_JOINTS] {
        self.state.map(|s| s.acceleration)
    }

    /// Filters `target` into the next command; returns the [`flags`] raised.
    /// `state_ok` says the measured state is fresh and valid this tick.
    pub fn apply(&mut self, target: &[f64], state_ok: bool, now_ns: u64) -> u32 {
        let mut raised = 0;
        if state_ok {
            self.stale_since_ns = None;
        } else {
            raised |= flags::STALE_STATE;
            let since = *self.stale_since_ns.get_or_insert(now_ns);
            if self.motion == Motion::Tracking
                && now_ns.saturating_sub(since) >= self.estop_after_stale_ns
            {
                self.estop();
            }
        }
        let guard_nan = {
            #[cfg(test)]
            {
                self.mutant != Mutant::NoNanGuard
            }
            #[cfg(not(test))]
            {
                true
            }
        };
        if guard_nan
            && (target.len() < self.joints || !target[..self.joints].iter().all(|t| t.is_finite()))
        {
            raised |= flags::NON_FINITE;
        }
        match self.motion {
            Motion::Latched => raised |= flags::ESTOP,
            Motion::Hold => raised |= flags::HOLD,
            Motion::Tracking => {}
        }
        #[allow(unused_mut)]
        let mut stopped = self.motion != Motion::Tracking;
        #[cfg(test)]
        if self.mutant == Mutant::NoStop {
            stopped = false;
        }
        let brake =
            !self.armed || stopped || raised & (flags::STALE_STATE | flags::NON_FINITE) != 0;
        let mut plans = [Plan::default(); MAX_JOINTS];
        for j in 0..self.joints {
            let goal = if brake {
                None
            } else {
                Some(target[j].clamp(self.limits[j].lo, self.limits[j].hi))
            };
            if let Some(goal) = goal
                && goal != target[j]
            {
                raised |= flags::LIMITED;
            }
            plans[j] = self.plan_joint(j, goal);
        }
        // The workspace box: where the link would come to rest if the arm braked
        // after this step must be inside the box (or, when the arm is outside, no
        // further out than braking now would leave it). Otherwise every joint brakes.
        if !brake && let Some(guard) = self.workspace.clone() {
            let next = self.rest_distance(&guard, &plans[..self.joints].map_paths());
            // Braking now ends where braking after the last step would have (the
            // braking law is time-consistent): the rest point kept from that step.
            if next > 1e-12 {
                let now = self.box_distance(&guard, &self.rest);
                if now.is_infinite() || next > now + 1e-12 {
                    for j in 0..self.joints {
                        plans[j] = self.plan_joint_braking(j);
                    }
                    raised |= flags::WORKSPACE | flags::LIMITED;
                    self.last_goal = [None; MAX_JOINTS];
                }
            }
        }
        for j in 0..self.joints {
            raised |= plans[j].raised;
            self.commit(j, &plans[j]);
        }
        raised
    }

    /// The braking step of joint `j`, without touching its goal history.
    fn plan_joint_braking(&mut self, j: usize) -> Plan {
        let last_goal = self.last_goal[j];
        let plan = self.plan_joint(j, None);
        self.last_goal[j] = last_goal;
        plan
    }

    /// Plans joint `j`'s step towards `goal` (or braking when there is none).
    fn plan_joint(&mut self, j: usize, goal: Option<f64>) -> Plan {
        let mut raised = 0;
        let l = self.limits[j];
        let now = self.state[j];
        let recovering = now.position < l.lo || now.position > l.hi;
        let v_max = if recovering {
            raised |= flags::RECOVERING;
            l.velocity * self.config.recovery_velocity_fraction
        } else {
            l.velocity
        };
        let (lo, hi) = (self.lo[j], self.hi[j]);
        let brake = self.brake_acceleration(&l, now);
        let wanted = match goal {
            None => {
                self.last_goal[j] = None;
                brake
            }
            Some(goal) => {
                // Keep the step itself within the jerk, acceleration and velocity limits.
                let jdt = l.jerk * self.dt;
                let a_lo = (now.acceleration - jdt)
                    .max(-l.acceleration)
                    .max((-v_max - now.velocity) / self.dt);
                let a_hi = (now.acceleration + jdt)
                    .min(l.acceleration)
                    .min((v_max - now.velocity) / self.dt);
                if a_lo <= a_hi {
                    self.tracking_acceleration(j, &l, v_max, now, goal, a_lo, a_hi)
                } else {
                    brake
                }
            }
        };
        // Take the wanted step if the arm can still stop from where it leads;
        // otherwise the largest fraction of it towards braking that can.
        let wanted_path = self.brake_path(&l, v_max, lo, hi, now.step(wanted, self.dt));
        let chosen = match wanted_path {
            Some(path) => (wanted, Some(path)),
            None => {
                let mut chosen = (
                    brake,
                    self.brake_path(&l, v_max, lo, hi, now.step(brake, self.dt)),
                );
                if wanted != brake {
                    raised |= flags::LIMITED;
                    let (mut safe, mut unsafe_) = (0.0, 1.0);
                    for _ in 0..BISECTIONS {
                        let mid = 0.5 * (safe + unsafe_);
                        let a = brake + mid * (wanted - brake);
                        match self.brake_path(&l, v_max, lo, hi, now.step(a, self.dt)) {
                            Some(path) => {
                                safe = mid;
                                chosen = (a, Some(path));
                            }
                            None => unsafe_ = mid,
                        }
                    }
                }
                chosen
            }
        };
        let (acceleration, path) = chosen;
        let next = now.step(acceleration, self.dt);
        if let Some(goal) = goal
            && (next.position - goal).abs() > 1e-9
        {
            raised |= flags::LIMITED;
        }
        Plan { next, path, raised }
    }

    /// Takes a planned step.
    fn commit(&mut self, j: usize, plan: &Plan) {
        self.state[j] = plan.next;
        self.rest[j] = plan.path.map_or(f64::NAN, |path| path.end);
        // A joint armed past its limit: the bounds close in behind it as it returns.
        if let Some(path) = plan.path {
            let l = &self.limits[j];
            self.lo[j] = self.lo[j].max(l.lo.min(path.min));
            self.hi[j] = self.hi[j].min(l.hi.max(path.max));
        }
    }

    /// How far outside the workspace box the guarded link comes to rest when every
    /// joint brakes along `paths` (0 inside; infinite when a path is unknown).
    fn rest_distance(&self, guard: &WorkspaceGuard, paths: &[Option<BrakePath>]) -> f64 {
        let mut rest = [0.0; MAX_JOINTS];
        for (j, path) in paths.iter().enumerate().take(self.joints) {
            match path {
                Some(path) => rest[j] = path.end,
                None => return f64::INFINITY,
            }
        }
        self.box_distance(guard, &rest)
    }

    /// How far outside the box the guarded link is at joint positions `q`.
    fn box_distance(&self, guard: &WorkspaceGuard, q: &[f64; MAX_JOINTS]) -> f64 {
        let p = guard
            .chain
            .link_position(&q[..self.joints], guard.bounds.link);
        let (lo, hi) = (guard.bounds.min, guard.bounds.max);
        let outside = (0..3)
            .map(|i| (lo[i] - p[i]).max(p[i] - hi[i]).max(0.0))
            .fold(0.0, |acc: f64, d| acc + d * d);
        // NaN (a broken chain or path) counts as far outside.
        if outside.is_nan() {
            f64::INFINITY
        } else {
            outside.sqrt()
        }
    }

    /// The acceleration that follows `goal`: match the goal's own motion, and
    /// close the gap as fast as the box `[a_lo, a_hi]` allows while matching the
    /// goal's velocity from the next state would still not pass the goal.
    #[allow(clippy::too_many_arguments)]
    fn tracking_acceleration(
        &mut self,
        j: usize,
        l: &Limits,
        v_max: f64,
        now: Kinematics,
        goal: f64,
        a_lo: f64,
        a_hi: f64,
    ) -> f64 {
        let dt = self.dt;
        let goal_velocity =
            self.last_goal[j].map_or(0.0, |last| ((goal - last) / dt).clamp(-v_max, v_max));
        self.last_goal[j] = Some(goal);
        let follow = velocity_servo(l, now, goal_velocity, dt).clamp(a_lo, a_hi);
        let gap = goal - now.position;
        let toward = if gap > 0.0 { a_hi } else { a_lo };
        if gap == 0.0 || toward == follow {
            return follow;
        }
        let passes =
            |a: f64| self.passes_goal(l, now.step(a, dt), goal, goal_velocity, gap.signum());
        if !passes(toward) {
            return toward;
        }
        if passes(follow) {
            return follow;
        }
        let (mut ok, mut bad) = (follow, toward);
        for _ in 0..BISECTIONS {
            let mid = 0.5 * (ok + bad);
            if passes(mid) {
                bad = mid;
            } else {
                ok = mid;
            }
        }
        ok
    }

    /// True when matching the goal's velocity from `from` (the goal at `goal` now,
    /// moving at `goal_velocity`) would carry the command past it in direction `side`.
    fn passes_goal(
        &self,
        l: &Limits,
        from: Kinematics,
        goal: f64,
        goal_velocity: f64,
        side: f64,
    ) -> bool {
        // Only the quality of tracking depends on this, not safety: a coarser step
        // (at most ~32 of them) keeps it cheap at high control rates.
        let coarse = (self.stop_bound_ticks as f64 / 64.0).ceil().max(1.0);
        let dt = self.dt * coarse;
        let mut s = from;
        let mut goal_at = goal;
        for _ in 0..=(self.stop_bound_ticks / coarse as usize + 1) {
            if side * (goal_at - s.position) < -1e-9 {
                return true;
            }
            let settled =
                (s.velocity - goal_velocity).abs() <= 1e-9 && s.acceleration.abs() <= 1e-6;
            if settled {
                return false;
            }
            s = s.step(velocity_servo(l, s, goal_velocity, dt), dt);
            goal_at += goal_velocity * dt;
        }
        true
    }

    /// The braking law: the state's own function, so braking is time-consistent.
    fn brake_acceleration(&self, l: &Limits, now: Kinematics) -> f64 {
        velocity_servo(l, now, 0.0, self.dt)
    }

    /// Simulates braking from `from` (a state just stepped into); returns its path
    /// when it reaches rest inside `[lo, hi]` and under `v_max` within the bound.
    fn brake_path(
        &self,
        l: &Limits,
        v_max: f64,
        lo: f64,
        hi: f64,
        from: Kinematics,
    ) -> Option<BrakePath> {
        let mut s = from;
        let mut path = BrakePath {
            min: s.position,
            max: s.position,
            end: s.position,
        };
        for _ in 0..=self.stop_bound_ticks {
            let fast = s.velocity.abs() > v_max * (1.0 + 1e-12);
            if !(s.position >= lo && s.position <= hi) || fast {
                return None;
            }
            path.min = path.min.min(s.position);
            path.max = path.max.max(s.position);
            if s.at_rest() {
                path.end = s.position;
                return Some(path);
            }
            s = s.step(self.brake_acceleration(l, s), self.dt);
        }
        None
    }
}

/// The acceleration for the next tick that brings the velocity to `v_wanted`
/// as fast as the acceleration and jerk limits allow without overshooting it:
/// the acceleration is ramped so that it reaches zero as the velocity arrives.
fn velocity_servo(l: &Limits, now: Kinematics, v_wanted: f64, dt: f64) -> f64 {
    let jdt = l.jerk * dt;
    let error = v_wanted - now.velocity;
    // Arrive this tick when that is allowed and leaves an acceleration the jerk
    // limit can take back to zero next tick.
    let land = error / dt;
    if land.abs() <= l.acceleration && (land - now.acceleration).abs() <= jdt && land.abs() <= jdt {
        return land;
    }
    let wanted = if l.jerk.is_finite() {
        // With the acceleration ramped down at the jerk limit, a covers a^2/(2j)
        // of velocity; one tick's acceleration change more keeps it from overshooting.
        let ramp = (2.0 * l.jerk * error.abs()).sqrt() - 0.5 * jdt;
        error.signum() * ramp.max(0.0).min(error.abs() / dt)
    } else {
        land
    };
    wanted
        .clamp(now.acceleration - jdt, now.acceleration + jdt)
        .clamp(-l.acceleration, l.acceleration)
}

#[cfg(test)]
#[path = "safety_invariant_tests.rs"]
mod invariant_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn joint(lo: f64, hi: f64, v: f64, a: f64, jerk: Option<f64>) -> JointConfig {
        JointConfig {
            name: "j".into(),
            position: [lo, hi],
            velocity: v,
            acceleration: a,
            jerk,
        }
    }

    fn filter_with(jerk: Option<f64>) -> SafetyFilter {
        let config = SafetyConfig {
            estop_after_stale_ms: 100.0,
            ..SafetyConfig::default()
        };
        let mut f = SafetyFilter::new(&[joint(-1.0, 1.0, 2.0, 10.0, jerk)], 0.01, &config);
        f.arm(&[0.0]).unwrap();
        f
    }

    fn filter() -> SafetyFilter {
        filter_with(None)
    }

    /// Checks every step of a command sequence against the limits by finite differences.
    fn assert_within_limits(commands: &[f64], dt: f64, v_max: f64, a_max: f64, j_max: f64) {
        assert_within_limits_of(commands, dt, [1.0, v_max, a_max, j_max]);
    }

    /// `[|position|, velocity, acceleration, jerk]` limits.
    fn assert_within_limits_of(commands: &[f64], dt: f64, limits: [f64; 4]) {
        let [p_max, v_max, a_max, j_max] = limits;
        let (mut v_prev, mut a_prev) = (0.0, 0.0);
        for pair in commands.windows(2) {
            let v = (pair[1] - pair[0]) / dt;
            let a = (v - v_prev) / dt;
            let jerk = (a - a_prev) / dt;
            assert!(v.abs() <= v_max + 1e-9, "velocity {v}");
            assert!(a.abs() <= a_max + 1e-6, "acceleration {a}");
            assert!(jerk.abs() <= j_max * (1.0 + 1e-9) + 1e-3, "jerk {jerk}");
            assert!(pair[1].abs() <= p_max, "position {}", pair[1]);
            (v_prev, a_prev) = (v, a);
        }
    }

    #[test]
    fn a_step_target_becomes_a_limited_ramp_that_settles() {
        for jerk in [None, Some(200.0)] {
            let mut f = filter_with(jerk);
            let mut commands = vec![0.0];
            for tick in 0..300 {
                f.apply(&[0.8], true, tick * 10_000_000);
                commands.push(f.command()[0]);
            }
            assert_within_limits(&commands, 0.01, 2.0, 10.0, jerk.unwrap_or(f64::INFINITY));
            let last = *commands.last().unwrap();
            assert!(
                (last - 0.8).abs() < 1e-3,
                "{jerk:?}: settles at the goal: {last}"
            );
        }
    }

    #[test]
    fn a_slowly_moving_target_is_followed_without_lag() {
        let mut f = filter();
        // Up to 0.75 rad: nearer the limit the filter must slow down to stop on it.
        for tick in 0..150u64 {
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
    fn targets_beyond_the_position_limit_stop_on_it_within_the_limits() {
        for jerk in [None, Some(150.0)] {
            let mut f = filter_with(jerk);
            let mut commands = vec![0.0];
            for tick in 0..300 {
                f.apply(&[1e30], true, tick * 10_000_000);
                commands.push(f.command()[0]);
            }
            assert_within_limits(&commands, 0.01, 2.0, 10.0, jerk.unwrap_or(f64::INFINITY));
            let last = *commands.last().unwrap();
            assert!(last <= 1.0 && (last - 1.0).abs() < 1e-3, "{last}");
        }
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
        assert_within_limits(&commands, 0.01, 2.0, 10.0, f64::INFINITY);
        let n = commands.len();
        assert_eq!(commands[n - 1], commands[n - 2], "came to rest");
    }

    fn measured(position: f64, velocity: f64) -> JointState {
        let mut s = JointState::empty(1);
        (s.seq, s.position[0], s.velocity[0]) = (1, position, velocity);
        s
    }

    #[test]
    fn stale_state_latches_then_rearm_holds_and_only_resume_moves() {
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
            "fresh state alone does not clear it"
        );
        assert_eq!(f.command()[0], held);
        assert_eq!(f.rearm(None), Err(Refusal::NoFreshState));
        assert!(matches!(
            f.rearm(Some(&measured(held + 0.5, 0.0))),
            Err(Refusal::Moved { joint: 0, .. })
        ));
        assert!(matches!(
            f.rearm(Some(&measured(held, 1.0))),
            Err(Refusal::Moving { joint: 0, .. })
        ));
        f.rearm(Some(&measured(held + 0.01, 0.0))).unwrap();
        assert_eq!(f.command()[0], held, "re-arm does not move the command");
        for tick in 51..60 {
            let raised = f.apply(&[0.5], true, tick * 10_000_000);
            assert!(raised & flags::HOLD != 0);
            assert_eq!(f.command()[0], held, "holding until resumed");
        }
        assert_eq!(
            f.rearm(Some(&measured(held, 0.0))),
            Err(Refusal::NotLatched)
        );
        f.resume().unwrap();
        f.apply(&[0.5], true, 600_000_000);
        assert_ne!(f.command()[0], held, "moving after resume");
        assert_eq!(f.resume(), Err(Refusal::NotHolding));
    }

    #[test]
    fn rearm_is_refused_while_still_stopping() {
        let mut f = filter();
        for tick in 0..30 {
            f.apply(&[0.9], true, tick * 10_000_000);
        }
        f.estop();
        f.apply(&[0.9], true, 300_000_000);
        assert_eq!(
            f.rearm(Some(&measured(f.command()[0], 0.0))),
            Err(Refusal::StillStopping)
        );
    }

    #[test]
    fn arming_refuses_non_finite_and_far_out_states_and_recovers_slightly_out_ones() {
        let config = SafetyConfig::default();
        let mut f = SafetyFilter::new(&[joint(-1.0, 1.0, 2.0, 10.0, None)], 0.01, &config);
        assert!(matches!(
            f.arm(&[f64::NAN]),
            Err(ArmError::NonFinite { .. })
        ));
        assert!(matches!(
            f.arm(&[f64::INFINITY]),
            Err(ArmError::NonFinite { .. })
        ));
        assert!(matches!(
            f.arm(&[10.0]),
            Err(ArmError::OutsideLimits { .. })
        ));
        let start = 1.0 + config.state_limit_margin * 0.5;
        f.arm(&[start]).unwrap();
        let mut commands = vec![start];
        for tick in 0..400 {
            // Even a target further out only brings it back to the limit.
            f.apply(&[5.0], true, tick * 10_000_000);
            commands.push(f.command()[0]);
        }
        let slow = 2.0 * config.recovery_velocity_fraction;
        let inside = commands
            .iter()
            .position(|c| *c <= 1.0)
            .expect("came back inside");
        for pair in commands[..=inside].windows(2) {
            assert!(pair[1] < pair[0], "only inward: {} -> {}", pair[0], pair[1]);
            assert!((pair[1] - pair[0]).abs() / 0.01 <= slow + 1e-9, "slowly");
        }
        assert!(
            commands[inside..].iter().all(|c| *c <= 1.0),
            "stays inside once in"
        );
    }

    #[test]
    fn the_workspace_box_stops_the_tool_at_its_boundary_within_the_limits() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../launch/sim_arm.urdf");
        let model = crate::robot_model::RobotModel::from_file(path.as_ref(), None).unwrap();
        let tool = model.chain.link_id("tool").unwrap();
        let joints: Vec<JointConfig> = (0..3)
            .map(|_| joint(-2.8, 2.8, 1.5, 8.0, Some(400.0)))
            .collect();
        let mut f = SafetyFilter::new(&joints, 0.01, &SafetyConfig::default());
        let chain = std::sync::Arc::new(model.chain.clone());
        let bounds = crate::robot_model::WorkspaceBox {
            link: tool,
            min: [-1.0, -1.0, -1.0].into(),
            max: [1.0, 0.5, 1.0].into(),
        };
        f.set_workspace(WorkspaceGuard {
            chain: chain.clone(),
            bounds,
        });
        f.arm(&[0.0, 0.6, 0.6]).unwrap();
        // Sweep the whole arm counter-clockwise: the tool's y would pass 0.5.
        let mut raised = 0;
        let mut commands = vec![[0.0, 0.6, 0.6]];
        for tick in 0..400 {
            raised |= f.apply(&[1.5, 0.6, 0.6], true, tick * 10_000_000);
            let c = f.command();
            commands.push([c[0], c[1], c[2]]);
            let y = chain.link_position(&c[..3], tool)[1];
            assert!(y <= 0.5 + 0.02, "tick {tick}: tool y {y}");
        }
        assert!(raised & flags::WORKSPACE != 0);
        for j in 0..3 {
            let series: Vec<f64> = commands.iter().map(|c| c[j]).collect();
            assert_within_limits_of(&series, 0.01, [2.8, 1.5, 8.0, 400.0]);
        }
        let last = commands.last().unwrap();
        let y = chain.link_position(last, tool)[1];
        assert!(y > 0.4, "stopped near the boundary, not far from it: {y}");
        // A target back inside is followed again.
        for tick in 400..700 {
            f.apply(&[0.0, 0.6, 0.6], true, tick * 10_000_000);
        }
        assert!((f.command()[0]).abs() < 1e-3);
    }

    #[test]
    fn every_stop_ends_within_the_stop_bound() {
        let mut f = filter_with(Some(100.0));
        let bound = f.stop_bound_ticks();
        for tick in 0..40 {
            f.apply(&[-0.9 + 0.05 * tick as f64], true, tick * 10_000_000);
        }
        f.estop();
        let mut ticks = 0;
        while !f.at_rest() {
            f.apply(&[0.0], true, 0);
            ticks += 1;
            assert!(ticks <= bound, "stopped within {bound} ticks");
        }
    }
}
