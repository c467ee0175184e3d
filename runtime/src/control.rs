//! The control loop: one thread, one tick per period.
//!
//! Each tick: step simulated drivers (simulated clock only), snapshot the joint
//! state and check its age, apply a chunk the worker finished, take this tick's
//! target from the executor, pass it through the safety filter, hand the command
//! to the arm and the bus, record the step, and request the next chunk when the
//! executor reaches its replan point. The decision part ([`TickCore`]) is shared
//! with `reflex replay`, which is how replay reproduces commands bit for bit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use nalgebra::Vector3;

use crate::clock::{Clock, TickTime};
use crate::driver::{ArmPorts, CameraPort, Driver, DriverError, TaskReport, TensorPort};
use crate::executor::{ChunkRejection, Executor, ExecutorFactory, ExecutorParams};
use crate::gripper::{GripperConfig, GripperFilter};
use crate::history::ObservationHistory;
use crate::ik::{DampedLeastSquares, DlsParams};
use crate::launch::SafetyConfig;
use crate::log::{LogEvent, LogHeader, LogSummary, Record, Recorder, TickRecord};
use crate::policy::{InferenceWorker, MAX_IN_FLIGHT};
use crate::prompt::PromptCell;
use crate::recording::{EpisodeAction, EpisodeRequests, Episodes, ResetParams};
use crate::registry::Registry;
use crate::safety::{ArmError, Motion, Refusal, SafetyFilter, WorkspaceGuard, flags};
use crate::slot::SlotWriter;
use crate::stats::ShortName;
use crate::stats::{Distribution, RunStats, STATUS_STREAMS, StatusSnapshot, StreamStatus};
use crate::stream::{OnStale, SourceCounters, SourceCounts, StreamFaults, StreamWatch};
use crate::taps::Tap;
use crate::teleop::{TeleopCommand, TeleopFrame, TeleopPort};
use crate::types::{ActionChunk, JointCommand, JointState, MAX_JOINTS, Observation, monotonic_ns};

/// Parameters of the tick's decisions (all of them are in the log header).
#[derive(Debug, Clone)]
pub struct TickParams {
    pub joints: Vec<crate::launch::JointConfig>,
    pub rate_hz: f64,
    pub max_state_age_ms: f64,
    pub estop_after_stale_ms: f64,
    pub horizon: usize,
    pub action_rate_hz: f64,
    pub replan_after: usize,
    /// How the executor's target moves between actions.
    pub interpolation: crate::executor::Interpolation,
    pub safety: SafetyConfig,
    /// `[safety.workspace]` resolved against the robot model.
    pub workspace: Option<WorkspaceGuard>,
    /// The execution strategy and its parameters.
    pub executor: ExecutorFactory,
    /// `[robot.gripper]`: one more action column, commanded on its own.
    pub gripper: Option<GripperConfig>,
    /// `[recording.reset]`: where episodes' resets move the arm.
    pub reset: Option<ResetParams>,
    /// The chain to the tip link (from the URDF), for teleop in end-effector
    /// coordinates.
    pub tip: Option<TipKinematics>,
}

/// The robot's chain and the link a teleop device moves in Cartesian space.
#[derive(Debug, Clone)]
pub struct TipKinematics {
    pub chain: Arc<crate::robot_model::KinematicChain>,
    pub tip: crate::robot_model::LinkId,
}

impl TickParams {
    /// The parameters a logged run had; its execution strategy is looked up in
    /// `registry` (replace, the built-in one, is always there).
    pub fn from_header(h: &LogHeader, registry: &Registry) -> Result<Self, String> {
        let executor = registry.executor_from_header(&h.strategy, &h.strategy_params)?;
        Ok(Self {
            joints: h.joints.clone(),
            rate_hz: h.rate_hz,
            max_state_age_ms: h.max_state_age_ms,
            estop_after_stale_ms: h.estop_after_stale_ms,
            horizon: h.horizon,
            action_rate_hz: h.action_rate_hz,
            replan_after: h.replan_after,
            interpolation: h.interpolation,
            safety: SafetyConfig {
                estop_after_stale_ms: h.estop_after_stale_ms,
                ..h.safety.clone()
            },
            workspace: workspace_from_header(h),
            executor,
            gripper: h.gripper.clone(),
            reset: h.reset.clone(),
            tip: tip_from_header(h),
        })
    }

    /// What the executor is built from.
    pub fn executor_params(&self) -> ExecutorParams {
        ExecutorParams {
            dim: self.joints.len().min(MAX_JOINTS) + usize::from(self.gripper.is_some()),
            horizon: self.horizon,
            ticks_per_action: self.rate_hz / self.action_rate_hz,
            replan_after: self.replan_after,
            interpolation: self.interpolation,
        }
    }
}

/// The tip kinematics a logged run had (the URDF text in the header).
fn tip_from_header(h: &LogHeader) -> Option<TipKinematics> {
    let model = crate::robot_model::RobotModel::from_urdf(
        h.urdf.as_ref()?,
        "<log header>",
        h.tip_link.as_deref(),
    )
    .ok()?;
    Some(TipKinematics {
        tip: model.tip,
        chain: Arc::new(model.chain),
    })
}

/// The workspace guard a logged run had: its box and the URDF text in the header.
fn workspace_from_header(h: &LogHeader) -> Option<WorkspaceGuard> {
    let ws = h.safety.workspace.as_ref()?;
    let urdf = h.urdf.as_ref()?;
    let model =
        crate::robot_model::RobotModel::from_urdf(urdf, "<log header>", h.tip_link.as_deref())
            .ok()?;
    let link = model.chain.link_id(&ws.link)?;
    Some(WorkspaceGuard {
        chain: Arc::new(model.chain),
        bounds: crate::robot_model::WorkspaceBox {
            link,
            min: ws.min.into(),
            max: ws.max.into(),
        },
    })
}

/// The executor's hold target (joints, then the gripper) without allocating.
#[derive(Clone, Copy)]
struct HeldTarget {
    values: [f64; MAX_JOINTS + 1],
    len: usize,
}

/// A straight move from the command to the reset pose at the reset speed
/// (the fastest joint at `speed`; the others arrive with it).
struct ResetMotion {
    from: HeldTarget,
    to: HeldTarget,
    start: u64,
    ticks: u64,
    target: HeldTarget,
}

impl ResetMotion {
    fn new(from: HeldTarget, pose: &[f64], speed: f64, dt: f64, start: u64) -> Self {
        let mut to = from;
        let joints = pose.len().min(from.len);
        to.values[..joints].copy_from_slice(&pose[..joints]);
        let farthest = (0..joints)
            .map(|j| (to.values[j] - from.values[j]).abs())
            .fold(0.0, f64::max);
        let ticks = (farthest / (speed * dt)).ceil().max(1.0) as u64;
        Self {
            from,
            to,
            start,
            ticks,
            target: from,
        }
    }

    fn target(&mut self, tick: u64) -> &[f64] {
        let progress = (tick.saturating_sub(self.start) as f64 / self.ticks as f64).min(1.0);
        for j in 0..self.from.len {
            let (a, b) = (self.from.values[j], self.to.values[j]);
            self.target.values[j] = a + (b - a) * progress;
        }
        &self.target
    }

    fn done(&self, tick: u64) -> bool {
        tick.saturating_sub(self.start) >= self.ticks
    }
}

impl HeldTarget {
    const EMPTY: Self = Self {
        values: [0.0; MAX_JOINTS + 1],
        len: 0,
    };
}

impl std::ops::Deref for HeldTarget {
    type Target = [f64];
    fn deref(&self) -> &[f64] {
        &self.values[..self.len]
    }
}

/// Why a measured joint state was not used (it counts as missing).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, thiserror::Error)]
pub enum InvalidState {
    #[error("the state has {found} joints, the robot has {expected}")]
    JointCount { found: usize, expected: usize },
    #[error("joint {joint} is not a finite number")]
    NonFinite { joint: usize },
    #[error("joint {joint} is {distance:.4} rad past its limit")]
    OutsideLimits { joint: usize, distance: f64 },
    #[error("sequence number {seq} is older than {last}, already seen (reordered or replayed)")]
    Reordered { seq: u64, last: u64 },
    #[error("stamp {stamp_ns} ns is older than {last_ns} ns, already seen")]
    OlderStamp { stamp_ns: u64, last_ns: u64 },
    #[error("robot epoch {epoch} is older than the current epoch {current}")]
    OldEpoch { epoch: u64, current: u64 },
}

/// What an operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Request {
    Estop,
    Rearm,
    Resume,
    /// Episodes (`[recording]`): drop the policy's chunks and move to the reset
    /// pose (or hold still without one).
    EpisodeReset,
    /// Episodes: the reset is over, the policy acts from the current command.
    EpisodeBegin,
}

impl Request {
    pub fn code(self) -> u8 {
        match self {
            Request::Estop => 1,
            Request::Rearm => 2,
            Request::Resume => 3,
            Request::EpisodeReset => 4,
            Request::EpisodeBegin => 5,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Request::Estop),
            2 => Some(Request::Rearm),
            3 => Some(Request::Resume),
            4 => Some(Request::EpisodeReset),
            5 => Some(Request::EpisodeBegin),
            _ => None,
        }
    }
}

/// The tick's answer to an operator request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OperatorOutcome {
    pub tick: u64,
    pub request: Request,
    pub result: Result<(), Refusal>,
}

/// The deterministic part of a tick: state validation, executor, safety filter
/// and operator requests. Everything it decides depends only on what the log holds.
pub struct TickCore {
    pub executor: Box<dyn Executor>,
    pub safety: SafetyFilter,
    /// The gripper's own filter, when the robot has one (its target is the
    /// executor's last column).
    pub gripper: Option<GripperFilter>,
    joints: usize,
    limits: [[f64; 2]; MAX_JOINTS],
    margin: f64,
    max_state_age_ns: u64,
    max_tracking_error: Option<[f64; MAX_JOINTS]>,
    tracking_lag_s: f64,
    next_seq: u64,
    /// (epoch, seq, stamp) of the newest valid state.
    newest: Option<(u64, u64, u64)>,
    /// (epoch, seq) of the last state looked at, so each sample is judged once.
    last_seen: (u64, u64),
    /// This tick's verdict on the measured state.
    state_ok: bool,
    pub invalid_states: u64,
    pub last_invalid: Option<InvalidState>,
    pub epochs: u64,
    /// The joint and error that latched the e-stop on a tracking error.
    pub tracking_fault: Option<(usize, f64)>,
    reset_params: Option<ResetParams>,
    reset: Option<ResetMotion>,
    /// While a person is engaged: the command and the device's position at
    /// takeover, and the device's newest sample.
    teleop: Option<(HeldTarget, HeldTarget)>,
    teleop_sample: TeleopCommand,
    teleop_target: HeldTarget,
    /// Position IK for devices that move the tip (`TeleopFrame::EndEffector`).
    ik: Option<DampedLeastSquares>,
    /// While such a device is engaged: the tip's position at takeover and the
    /// joint solution so far.
    tip_teleop: Option<TipTeleop>,
    dt: f64,
    /// This tick's target before the safety filter (the policy's, or the reset's).
    last_target: HeldTarget,
    /// The model whose chunks the executor takes (`ActionChunk::model_version`).
    model_version: u32,
    /// The executor's targets before the safety filter.
    pub smoothness: crate::stats::TargetSmoothness,
    /// Models swapped in during the run.
    pub model_swaps: u64,
}

/// An end-effector teleop under way.
#[derive(Debug, Clone, Copy)]
struct TipTeleop {
    /// The tip at takeover (root frame, m).
    origin: Vector3<f64>,
    /// The IK's joint solution, warm-started from the command at takeover.
    q: [f64; MAX_JOINTS],
}

impl TickCore {
    /// Fails only when the execution strategy cannot be built from `p`.
    pub fn new(p: &TickParams) -> Result<Self, String> {
        let dt = 1.0 / p.rate_hz;
        let joints = p.joints.len().min(MAX_JOINTS);
        let mut limits = [[0.0; 2]; MAX_JOINTS];
        for (j, joint) in p.joints.iter().take(MAX_JOINTS).enumerate() {
            limits[j] = joint.position;
        }
        let max_tracking_error = p.safety.max_tracking_error.as_ref().map(|errors| {
            let mut out = [f64::INFINITY; MAX_JOINTS];
            for (o, e) in out.iter_mut().zip(errors) {
                *o = *e;
            }
            out
        });
        Ok(Self {
            executor: p.executor.build(&p.executor_params())?,
            safety: {
                let mut filter = SafetyFilter::new(&p.joints, dt, &p.safety);
                if let Some(guard) = &p.workspace {
                    filter.set_workspace(guard.clone());
                }
                filter
            },
            gripper: p.gripper.as_ref().map(|g| GripperFilter::new(g, dt)),
            joints,
            limits,
            margin: p.safety.state_limit_margin,
            max_state_age_ns: (p.max_state_age_ms * 1e6) as u64,
            max_tracking_error,
            tracking_lag_s: p.safety.tracking_lag_ms / 1e3,
            next_seq: 1,
            newest: None,
            last_seen: (0, 0),
            state_ok: false,
            invalid_states: 0,
            last_invalid: None,
            epochs: 0,
            tracking_fault: None,
            reset_params: p.reset.clone(),
            reset: None,
            teleop: None,
            teleop_sample: TeleopCommand::NONE,
            teleop_target: HeldTarget::EMPTY,
            ik: p
                .tip
                .as_ref()
                .map(|k| DampedLeastSquares::new(k.chain.clone(), k.tip, DlsParams::default())),
            tip_teleop: None,
            dt,
            last_target: HeldTarget::EMPTY,
            model_version: 0,
            model_swaps: 0,
            smoothness: Default::default(),
        })
    }

    /// Arms the filter from the measured position (and gripper opening) and holds it.
    pub fn start(&mut self, measured: &[f64], gripper: Option<f64>) -> Result<(), ArmError> {
        self.safety.arm(measured)?;
        if let Some(filter) = &mut self.gripper {
            filter.start(gripper);
        }
        self.executor.hold(&self.held());
        Ok(())
    }

    /// What the executor holds: the joint command, then the gripper's.
    fn held(&self) -> HeldTarget {
        let mut held = HeldTarget {
            values: [0.0; MAX_JOINTS + 1],
            len: self.joints,
        };
        held.values[..self.joints].copy_from_slice(&self.safety.command()[..self.joints]);
        if let Some(filter) = &self.gripper {
            held.values[self.joints] = filter.command();
            held.len += 1;
        }
        held
    }

    /// Checks a state on its own: joint count, finite values, within the margin
    /// of the limits. Ordering against earlier states is [`Self::observe`]'s job.
    pub fn validate(&self, state: &JointState) -> Result<(), InvalidState> {
        if state.joints != self.joints {
            return Err(InvalidState::JointCount {
                found: state.joints,
                expected: self.joints,
            });
        }
        for joint in 0..self.joints {
            let (p, v) = (state.position[joint], state.velocity[joint]);
            if !(p.is_finite() && v.is_finite()) {
                return Err(InvalidState::NonFinite { joint });
            }
            let [lo, hi] = self.limits[joint];
            let distance = (lo - p).max(p - hi);
            if distance > self.margin {
                return Err(InvalidState::OutsideLimits { joint, distance });
            }
        }
        Ok(())
    }

    /// Judges this tick's measured state: valid (finite, in range, not older than
    /// what was already seen) and fresh. Anything else counts as missing.
    pub fn observe(&mut self, state: &JointState, now_ns: u64) -> bool {
        self.state_ok = false;
        if state.seq == 0 {
            return false;
        }
        let verdict = self.validate(state).and_then(|()| self.ordering(state));
        let sample = (state.epoch, state.seq);
        let new_sample = sample != self.last_seen;
        self.last_seen = sample;
        match verdict {
            Err(why) => {
                if new_sample {
                    self.invalid_states += 1;
                    self.last_invalid = Some(why);
                }
                false
            }
            Ok(()) => {
                if self.newest.is_some_and(|(epoch, _, _)| state.epoch > epoch) {
                    self.epochs += 1;
                }
                self.newest = Some((state.epoch, state.seq, state.stamp_ns));
                self.state_ok = now_ns.saturating_sub(state.stamp_ns) <= self.max_state_age_ns;
                self.state_ok
            }
        }
    }

    fn ordering(&self, state: &JointState) -> Result<(), InvalidState> {
        let Some((epoch, seq, stamp)) = self.newest else {
            return Ok(());
        };
        if state.epoch < epoch {
            return Err(InvalidState::OldEpoch {
                epoch: state.epoch,
                current: epoch,
            });
        }
        if state.epoch > epoch {
            return Ok(());
        }
        if state.seq < seq {
            return Err(InvalidState::Reordered {
                seq: state.seq,
                last: seq,
            });
        }
        if state.stamp_ns < stamp {
            return Err(InvalidState::OlderStamp {
                stamp_ns: state.stamp_ns,
                last_ns: stamp,
            });
        }
        Ok(())
    }

    /// This tick's verdict from [`Self::observe`].
    pub fn state_ok(&self) -> bool {
        self.state_ok
    }

    /// Hands a chunk to the executor. The first chunk of a swapped-in model
    /// flushes the executor first, as a takeover's release does: nothing the old
    /// model planned runs after it, and the new model re-infers from the current
    /// command (this chunk, conditioned before the flush, is refused as flushed).
    pub fn apply_chunk(&mut self, chunk: &ActionChunk, tick: u64) -> Result<(), ChunkRejection> {
        if chunk.model_version != self.model_version {
            self.model_version = chunk.model_version;
            self.model_swaps += 1;
            self.executor.flush(&self.held(), tick);
        }
        self.executor.accept(chunk, tick)?;
        self.smoothness.note_switch();
        Ok(())
    }

    /// The model whose chunks the executor runs (0: the launch file's).
    pub fn model_version(&self) -> u32 {
        self.model_version
    }

    /// Carries out an operator request at `tick`, after [`Self::observe`].
    pub fn operator(
        &mut self,
        request: Request,
        state: &JointState,
        tick: u64,
    ) -> Result<(), Refusal> {
        match request {
            Request::Estop => {
                self.safety.estop();
                Ok(())
            }
            Request::Rearm => {
                let fresh = self.state_ok.then_some(state);
                self.safety.rearm(fresh)?;
                // Nothing planned before the stop may run after it.
                self.executor.flush(&self.held(), tick);
                Ok(())
            }
            Request::Resume => {
                self.safety.resume()?;
                self.executor.flush(&self.held(), tick);
                Ok(())
            }
            Request::EpisodeReset => {
                let held = self.held();
                self.executor.flush(&held, tick);
                self.reset = self.reset_motion(held, tick);
                Ok(())
            }
            Request::EpisodeBegin => {
                self.reset = None;
                self.executor.flush(&self.held(), tick);
                Ok(())
            }
        }
    }

    /// A new sample of the teleop device, before this tick's step. Engaging
    /// anchors the device at the current command (no jump); releasing flushes
    /// the executor so the policy re-infers from where the person left the arm.
    pub fn teleop_sample(&mut self, sample: &TeleopCommand, tick: u64) {
        self.teleop_sample = *sample;
        match (sample.engaged, self.teleop.is_some()) {
            (true, false) => {
                let command = self.held();
                if sample.frame == TeleopFrame::EndEffector {
                    // Without the robot's kinematics a Cartesian device cannot
                    // command it (`reflex check` refuses such a launch file).
                    let Some(ik) = &self.ik else {
                        return;
                    };
                    let mut q = [0.0; MAX_JOINTS];
                    q[..self.joints].copy_from_slice(&command.values[..self.joints]);
                    self.tip_teleop = Some(TipTeleop {
                        origin: ik.position(&q[..self.joints]),
                        q,
                    });
                }
                let mut device = command;
                let n = sample.len.min(command.len);
                device.values[..n].copy_from_slice(&sample.positions[..n]);
                self.teleop = Some((command, device));
            }
            (false, true) => {
                self.teleop = None;
                self.tip_teleop = None;
                let held = self.held();
                self.executor.flush(&held, tick);
                // A reset under way starts again from where the person left the arm.
                if self.reset.is_some() {
                    self.reset = self.reset_motion(held, tick);
                }
            }
            _ => {}
        }
    }

    /// The move from `from` to `[recording.reset]`'s pose, starting at `tick`
    /// (none without a pose: the arm holds).
    fn reset_motion(&self, from: HeldTarget, tick: u64) -> Option<ResetMotion> {
        (self.reset_params.as_ref())
            .map(|r| ResetMotion::new(from, &r.joint_positions, r.speed, self.dt, tick))
    }

    /// Whether a person commands the arm (an intervention).
    pub fn teleop_engaged(&self) -> bool {
        self.teleop.is_some()
    }

    /// Whether the reset motion (if any) has reached its pose.
    pub fn reset_reached(&self, tick: u64) -> bool {
        self.reset.as_ref().is_none_or(|r| r.done(tick))
    }

    /// This tick's target before the safety filter (after [`Self::step`]).
    pub fn target(&self) -> &[f64] {
        &self.last_target
    }

    /// Latches the e-stop when the arm lags the command by more than allowed.
    fn check_tracking(&mut self, state: &JointState) {
        let Some(max_error) = &self.max_tracking_error else {
            return;
        };
        if !self.state_ok || self.safety.motion() != Motion::Tracking {
            return;
        }
        let (command, velocity) = (self.safety.command(), self.safety.velocity());
        for j in 0..self.joints {
            let error = (state.position[j] - command[j]).abs();
            if error > max_error[j] + velocity[j].abs() * self.tracking_lag_s {
                self.safety.estop();
                self.tracking_fault = Some((j, error));
                return;
            }
        }
    }

    /// Computes this tick's command (after [`Self::observe`]); returns it with the safety flags.
    pub fn step(&mut self, tick: u64, now_ns: u64, state: &JointState) -> (JointCommand, u32) {
        self.check_tracking(state);
        let following = self.teleop.is_none() && self.reset.is_none();
        let target = match (&self.teleop, &mut self.reset) {
            (Some((command, device)), _) => {
                self.teleop_target = *command;
                let sample = &self.teleop_sample;
                match (&mut self.tip_teleop, &self.ik) {
                    (Some(tip), Some(ik)) => {
                        // The tip's motion since takeover, through the IK; a
                        // fourth value moves the gripper.
                        let moved = |i: usize| sample.positions[i] - device.values[i];
                        let goal = tip.origin + Vector3::new(moved(0), moved(1), moved(2));
                        let n = self.joints;
                        ik.solve(&mut tip.q[..n], &goal, &self.limits[..n]);
                        self.teleop_target.values[..n].copy_from_slice(&tip.q[..n]);
                        if sample.len > 3 && command.len > n {
                            self.teleop_target.values[n] += moved(3);
                        }
                    }
                    _ => {
                        // The device's motion since takeover, added to the command then.
                        let n = sample.len.min(command.len);
                        for j in 0..n {
                            self.teleop_target.values[j] += sample.positions[j] - device.values[j];
                        }
                    }
                }
                &self.teleop_target[..]
            }
            (None, Some(reset)) => reset.target(tick),
            (None, None) => self.executor.target(tick),
        };
        let len = target.len().min(MAX_JOINTS + 1);
        self.last_target.values[..len].copy_from_slice(&target[..len]);
        self.last_target.len = len;
        let gripper_target = target.get(self.joints).copied();
        let mut raised = self.safety.apply(
            &self.last_target.values[..self.joints],
            self.state_ok,
            now_ns,
        );
        if following && self.safety.motion() == Motion::Tracking {
            let n = self.joints;
            self.smoothness
                .record(&self.last_target.values[..n], self.dt);
            if self.executor.queued(tick) == 0 && self.executor.has_plan() {
                self.smoothness.held_past_plan += 1;
            }
        } else {
            self.smoothness.interrupt();
        }
        let mut command = JointCommand::empty(self.joints);
        if let (Some(filter), Some(action)) = (&mut self.gripper, gripper_target) {
            raised |= filter.apply(action, self.safety.motion() == Motion::Tracking);
            command.gripper = Some(filter.command());
        }
        command.seq = self.next_seq;
        self.next_seq += 1;
        command.tick = tick;
        command.stamp_ns = now_ns;
        command.position = self.safety.command();
        command.velocity = self.safety.velocity();
        command.acceleration = self.safety.acceleration();
        (command, raised)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "no joint state from the arm within {0:?}; is the robot (or its zenoh bridge) up? \
         (states must number their samples from 1: a sequence number of 0 means no sample)"
    )]
    NoInitialState(Duration),
    #[error("the arm sent joint states for {waited:?} but none can be started from: {why}")]
    InvalidInitialState { waited: Duration, why: String },
    #[error("stopped while waiting for the first joint state; nothing was commanded")]
    StoppedBeforeFirstState,
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error("execution strategy: {0}")]
    Executor(String),
}

/// Requests from an operator, read by the tick with one atomic swap each. Stop
/// may come from anywhere; who may raise re-arm and resume is decided by whoever
/// holds these handles (the local control socket, the terminal, or zenoh when the
/// launch file allows it).
#[derive(Clone)]
pub struct OperatorRequests {
    /// Latch the e-stop: the arm decelerates to rest and holds.
    pub estop: Arc<AtomicBool>,
    /// Move a latched stop to hold.
    pub rearm: Arc<AtomicBool>,
    /// Start moving again after a re-arm.
    pub resume: Arc<AtomicBool>,
    /// `monotonic_ns()` of the latest operator heartbeat (deadman), 0 before any.
    pub heartbeat_ns: Arc<AtomicU64>,
    /// The tick's answers, for whoever asked (bounded; the oldest are dropped).
    pub outcomes: Arc<ArrayQueue<OperatorOutcome>>,
    /// The task instruction (the inference thread reads it; the tick never does).
    pub prompt: PromptCell,
    /// Tare requests for tactile sensors (their drivers watch them).
    pub tare: crate::tare::TareRequests,
    /// Episode requests (success, failure, re-record, stop, start).
    pub episodes: EpisodeRequests,
    /// Steering switched on or off at run time (the inference worker reads it).
    pub steering: crate::stage::SteeringSwitch,
}

impl Default for OperatorRequests {
    fn default() -> Self {
        Self {
            estop: Arc::default(),
            rearm: Arc::default(),
            resume: Arc::default(),
            heartbeat_ns: Arc::default(),
            outcomes: Arc::new(ArrayQueue::new(16)),
            prompt: PromptCell::default(),
            tare: Default::default(),
            episodes: EpisodeRequests::default(),
            steering: Default::default(),
        }
    }
}

impl OperatorRequests {
    /// Raises `request` for the next tick.
    pub fn raise(&self, request: Request) {
        let flag = match request {
            Request::Estop => &self.estop,
            Request::Rearm => &self.rearm,
            Request::Resume => &self.resume,
            // Raised by the tick itself (episodes), never from outside.
            Request::EpisodeReset | Request::EpisodeBegin => return,
        };
        flag.store(true, Ordering::Release);
    }

    pub fn heartbeat(&self) {
        self.heartbeat_ns
            .store(monotonic_ns().max(1), Ordering::Release);
    }
}

/// What sensor stream `i`'s source counted so far.
fn source_counts(counters: &[Option<Arc<SourceCounters>>], i: usize) -> SourceCounts {
    (counters.get(i).and_then(Option::as_ref))
        .map(|c| c.snapshot())
        .unwrap_or_default()
}

/// Everything the loop owns, wired up by the caller.
pub struct ControlLoop {
    pub params: TickParams,
    pub clock: Box<dyn Clock>,
    pub drivers: Vec<Box<dyn Driver>>,
    pub arm: ArmPorts,
    pub cameras: Vec<CameraPort>,
    /// Tensor and audio streams, in launch-file order.
    pub tensors: Vec<TensorPort>,
    pub worker: InferenceWorker,
    /// Copies of every command and measured state for an observer (the zenoh bus).
    pub tap: Option<Tap>,
    pub recorder: Option<Recorder>,
    pub status: Option<SlotWriter<StatusSnapshot>>,
    pub operator: OperatorRequests,
    pub sim_inference_ticks: u64,
    /// The expected inference delay on the wall clock (from recent latencies).
    pub delay: crate::delay::DelayEstimate,
    /// Observations the policy conditions on (1: the current one only).
    pub observation_frames: usize,
    /// Each sensor stream's fault policy: the cameras in order, then the tensor streams.
    pub stream_watches: Vec<StreamWatch>,
    /// Each sensor stream's source counters (same order), where its driver keeps them.
    pub source_counters: Vec<Option<Arc<SourceCounters>>>,
    pub startup_timeout: Duration,
    /// Deadman: latch the e-stop when no operator heartbeat came for this long.
    pub heartbeat_timeout: Option<Duration>,
    /// `[recording]` with `--record`: the run is a sequence of episodes.
    pub episodes: Option<Episodes>,
    /// Teleoperation devices (the first one commands).
    pub teleop: Vec<TeleopPort>,
}

/// When a run ends.
pub struct RunLimits {
    pub duration: Option<Duration>,
    /// Set by the SIGINT handler (or anything else) to end the run.
    pub stop: &'static AtomicBool,
}

pub struct RunSummary {
    pub stats: RunStats,
    pub task: Vec<TaskReport>,
    pub log: Option<LogSummary>,
    pub simulated: bool,
    pub duration_s: f64,
    pub interrupted: bool,
    /// Why the run ended early, when a driver failed.
    pub fault: Option<String>,
    /// What `[recording]` recorded (filled in by whoever runs the recorder).
    pub episodes: Option<crate::recording::EpisodesReport>,
}

/// The loop's state while running (everything preallocated).
struct Running {
    core: TickCore,
    obs: Observation,
    history: ObservationHistory,
    /// Per sensor stream (cameras, then tensors): stale on the last tick.
    stale: Vec<bool>,
    /// Per sensor stream: the sequence number seen last (to count new samples).
    seen_seq: Vec<u64>,
    /// Per sensor stream: the newest sample's stamp (0: none yet).
    newest_stamp: Vec<u64>,
    /// Per sensor stream: samples counted when `samples_since` was.
    window_samples: Vec<u64>,
    samples_since: Instant,
    /// A stale stream with `on_stale = "pause"`: no new chunk is requested.
    paused: bool,
    /// The first tick's time (a stream with no sample yet is as old as the run).
    first_tick_ns: Option<u64>,
    stats: RunStats,
    window_jitter: Distribution,
    window_compute: Distribution,
    window_start_tick: u64,
    window_start: Instant,
    last_tick_ns: Option<u64>,
    last_state_seq: u64,
    last_infer_ms: f64,
    /// Under the simulated clock, the ticks the requests in flight come back at
    /// (oldest first; capacity MAX_IN_FLIGHT, so pushing never allocates).
    inference_due: std::collections::VecDeque<u64>,
    started: Instant,
    /// The teleop sample seen last.
    last_teleop_seq: u64,
}

impl ControlLoop {
    fn step_simulated(&mut self, now_ns: u64) -> Result<(), DriverError> {
        if self.clock.is_simulated() {
            for driver in &mut self.drivers {
                driver.sim_step(now_ns)?;
            }
        }
        Ok(())
    }

    /// Waits for the first state that can be started from (stepping simulated
    /// drivers once): valid, and no joint further past its limit than the margin.
    fn first_state(
        &mut self,
        core: &TickCore,
        stop: &AtomicBool,
    ) -> Result<JointState, ControlError> {
        self.step_simulated(0)?;
        let started = Instant::now();
        let mut why: Option<String> = None;
        loop {
            let state = *self.arm.state.latest();
            if state.seq > 0 {
                let verdict = core
                    .validate(&state)
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        core.safety
                            .check_measured(state.positions())
                            .map_err(|e| e.to_string())
                    });
                match verdict {
                    Ok(()) => return Ok(state),
                    Err(e) => why = Some(e),
                }
            }
            if stop.load(Ordering::Relaxed) {
                return Err(ControlError::StoppedBeforeFirstState);
            }
            if started.elapsed() >= self.startup_timeout {
                return Err(match why {
                    Some(why) => ControlError::InvalidInitialState {
                        waited: self.startup_timeout,
                        why,
                    },
                    None => ControlError::NoInitialState(self.startup_timeout),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Runs until the duration is reached or `stop` is set, then brings the arm to rest.
    pub fn run(mut self, limits: RunLimits) -> Result<RunSummary, ControlError> {
        let joints = self.params.joints.len();
        let action_width = self.params.executor_params().dim;
        let mut core = TickCore::new(&self.params).map_err(ControlError::Executor)?;
        self.worker.set_max_in_flight(core.executor.max_in_flight());
        let first = self.first_state(&core, limits.stop)?;
        if let Err(e) = core.start(first.positions(), first.gripper) {
            // first_state checked the same; a state that changed under us is a fault.
            return Err(ControlError::InvalidInitialState {
                waited: Duration::ZERO,
                why: e.to_string(),
            });
        }
        if let Some(recorder) = &self.recorder {
            recorder.record(LogEvent::Start {
                joints,
                position: first.position,
                gripper: first.gripper,
            });
        }
        if let Some(episodes) = &mut self.episodes {
            episodes.wait_for_recorder = self.clock.is_simulated();
        }
        if self.heartbeat_timeout.is_some() {
            // The deadman's grace starts with the run.
            self.operator.heartbeat();
        }
        let camera_sizes: Vec<(usize, usize)> =
            self.cameras.iter().map(|c| (c.width, c.height)).collect();
        let tensor_lens: Vec<usize> = self.tensors.iter().map(|t| t.len).collect();
        // One observation frame per action period, a whole number of ticks.
        let ticks_per_frame = (self.params.rate_hz / self.params.action_rate_hz)
            .round()
            .max(1.0) as usize;
        let history = ObservationHistory::new(
            self.observation_frames,
            ticks_per_frame,
            ticks_per_frame as u64 * self.clock.period_ns(),
            joints,
            &self.cameras,
            &self.tensors,
            // Aligned streams choose among their last 16 samples.
            if self
                .stream_watches
                .iter()
                .any(|w| w.align_tolerance_ns.is_some())
            {
                16
            } else {
                0
            },
        );
        let mut r = Running {
            core,
            obs: Observation {
                joints: first,
                committed_width: action_width,
                ..Observation::blank(
                    joints,
                    &camera_sizes,
                    &tensor_lens,
                    self.observation_frames,
                    self.params.horizon * action_width,
                )
            },
            history,
            stale: vec![false; self.cameras.len() + self.tensors.len()],
            seen_seq: vec![0; self.cameras.len() + self.tensors.len()],
            newest_stamp: vec![0; self.cameras.len() + self.tensors.len()],
            window_samples: vec![0; self.cameras.len() + self.tensors.len()],
            samples_since: Instant::now(),
            paused: false,
            first_tick_ns: None,
            stats: RunStats {
                stream_faults: self
                    .stream_watches
                    .iter()
                    .map(|w| StreamFaults {
                        name: w.name.clone(),
                        on_stale: w.on_stale,
                        episodes: 0,
                        stale_ticks: 0,
                        samples: 0,
                        misaligned: 0,
                        source: SourceCounts::default(),
                    })
                    .collect(),
                stream_skew: self
                    .stream_watches
                    .iter()
                    .map(|_| Distribution::default())
                    .collect(),
                stream_age: self
                    .stream_watches
                    .iter()
                    .map(|_| Distribution::default())
                    .collect(),
                ..RunStats::default()
            },
            window_jitter: Distribution::default(),
            window_compute: Distribution::default(),
            window_start_tick: 0,
            window_start: Instant::now(),
            last_tick_ns: None,
            last_state_seq: 0,
            last_infer_ms: 0.0,
            inference_due: std::collections::VecDeque::with_capacity(MAX_IN_FLIGHT),
            started: Instant::now(),
            last_teleop_seq: 0,
        };
        let period_ns = self.clock.period_ns();
        let max_ticks = limits
            .duration
            .map(|d| (d.as_nanos() as u64).div_ceil(period_ns));
        let mut first_tick = None;
        let mut last_tick = 0;
        let mut interrupted = false;
        let mut fault = None;
        loop {
            if limits.stop.load(Ordering::Relaxed) {
                interrupted = true;
                break;
            }
            // Every episode recorded (or recording stopped / failed).
            if self.episodes.as_ref().is_some_and(Episodes::finished) {
                break;
            }
            // Periods, not ticks run, measure the duration (skipped periods count).
            if max_ticks
                .is_some_and(|max| first_tick.is_some_and(|first| last_tick + 1 - first >= max))
            {
                break;
            }
            let t = self.clock.next_tick();
            first_tick.get_or_insert(t.tick);
            last_tick = t.tick;
            let woke = Instant::now();
            let allocated_before = crate::alloc_probe::allocations();
            if let Err(e) = self.tick(&mut r, t, false) {
                // A driver failed: stop the arm like any other ending, and say why.
                tracing::error!("{e}");
                fault = Some(e.to_string());
                break;
            }
            // After two seconds of ticks (first chunks, first frames of each size).
            if let (Some(before), Some(after)) =
                (allocated_before, crate::alloc_probe::allocations())
                && r.stats.ticks as f64 > 2.0 * self.params.rate_hz
            {
                let counted = r.stats.tick_allocations.get_or_insert_default();
                counted.ticks += 1;
                counted.allocations += after - before;
            }
            let compute = woke.elapsed().as_nanos() as u64;
            r.stats.compute.record_ns(compute);
            r.window_compute.record_ns(compute);
            if compute > period_ns {
                r.stats.overruns += 1;
            }
        }
        // An episode still open is saved as stopped.
        if let Some(episodes) = &mut self.episodes {
            episodes.stop(last_tick);
        }
        // How the run stood before the shutdown's own stop.
        r.stats.estop_latches = r.core.safety.latches();
        r.stats.final_motion = r.core.safety.motion().name();
        // Bring the arm to rest within its limits before letting go.
        r.core.safety.estop();
        if let Some(recorder) = &self.recorder {
            recorder.record(LogEvent::Estop { tick: last_tick });
        }
        for _ in 0..=r.core.safety.stop_bound_ticks() {
            if r.core.safety.at_rest() {
                break;
            }
            let t = self.clock.next_tick();
            if let Err(e) = self.tick(&mut r, t, true) {
                tracing::error!("while stopping: {e}");
                break;
            }
        }
        for driver in &mut self.drivers {
            if let Err(e) = driver.stop() {
                tracing::warn!("{e}");
            }
        }
        let task = self
            .drivers
            .iter()
            .filter_map(|d| d.task_report())
            .collect();
        if let Some(tap) = self.tap.take() {
            tap.finish();
        }
        r.stats.inference_errors = self.worker.errors();
        r.stats.invalid_states = r.core.invalid_states;
        r.stats.last_invalid_state = r.core.last_invalid.map(|e| e.to_string());
        r.stats.robot_epochs = r.core.epochs;
        r.stats.tracking_fault = r.core.tracking_fault;
        r.stats.model_swaps = r.core.model_swaps;
        r.stats.smoothness = r.core.smoothness;
        r.stats.model_version = r.core.model_version();
        for (i, faults) in r.stats.stream_faults.iter_mut().enumerate() {
            faults.source = source_counts(&self.source_counters, i);
        }
        if fault.is_none()
            && let Some((joint, error)) = r.core.tracking_fault
        {
            fault = Some(format!(
                "joint {} `{}` lagged the command by {error:.4} rad (safety.max_tracking_error): \
                 blocked or colliding arm?",
                joint, self.params.joints[joint].name
            ));
        }
        let log = self.recorder.take().map(Recorder::finish);
        Ok(RunSummary {
            stats: r.stats,
            task,
            log,
            simulated: self.clock.is_simulated(),
            duration_s: r.started.elapsed().as_secs_f64(),
            interrupted,
            fault,
            episodes: self
                .episodes
                .as_ref()
                .map(|e| crate::recording::EpisodesReport {
                    rows_lost: e.rows_lost_total,
                    ..Default::default()
                }),
        })
    }

    fn tick(&mut self, r: &mut Running, t: TickTime, stopping: bool) -> Result<(), ControlError> {
        self.step_simulated(t.now_ns)?;
        r.stats.ticks += 1;
        r.stats.skipped_periods += t.skipped;
        if let Some(last) = r.last_tick_ns {
            let jitter = (t.now_ns + t.lateness_ns).abs_diff(last + self.clock.period_ns());
            r.stats.jitter.record_ns(jitter);
            r.window_jitter.record_ns(jitter);
        }
        r.last_tick_ns = Some(t.now_ns + t.lateness_ns);

        // 1. Snapshot sensors and judge the joint state.
        let state = *self.arm.state.latest();
        let invalid_before = r.core.invalid_states;
        r.core.observe(&state, t.now_ns);
        if r.core.invalid_states != invalid_before
            && let Some(why) = r.core.last_invalid
            && r.core.invalid_states.is_power_of_two()
        {
            // Rate-limited: the 1st, 2nd, 4th, 8th, ... invalid state.
            tracing::warn!(
                "invalid joint state ignored ({} so far): {why}",
                r.core.invalid_states
            );
        }

        // Policies that see past observations: this tick's state and camera frames.
        r.history.record(
            r.core.state_ok().then_some(&state),
            &mut self.cameras,
            &mut self.tensors,
        );
        self.watch_streams(r, t);

        // 2. A finished chunk, if any (under the simulated clock: exactly when due).
        // While stopping, chunks are left unread: nothing may move the arm again.
        let done = match r.inference_due.front() {
            _ if stopping => None,
            Some(&due) if self.clock.is_simulated() => {
                if t.tick >= due {
                    r.inference_due.pop_front();
                    self.worker.wait(Duration::from_secs(60))
                } else {
                    None
                }
            }
            _ => self.worker.poll(),
        };
        if let Some(done) = done {
            r.last_infer_ms = done.chunk.infer_ns as f64 / 1e6;
            self.delay.record_ns(done.chunk.infer_ns);
            r.stats.inference.record_ns(done.chunk.infer_ns);
            let accepted = if done.ok {
                match r.core.apply_chunk(&done.chunk, t.tick) {
                    Ok(()) => true,
                    Err(ChunkRejection::Flushed { .. }) => false,
                    Err(rejection) => {
                        tracing::warn!("chunk {} rejected: {rejection}", done.chunk.id);
                        false
                    }
                }
            } else {
                false
            };
            if accepted {
                r.stats.chunks_applied += 1;
                r.stats.steering.record(&done.chunk);
            } else if done.ok {
                r.stats.chunks_rejected += 1;
            }
            let chunk = done.chunk;
            let leftover = match &self.recorder {
                Some(recorder) if done.ok => recorder.record(LogEvent::Chunk {
                    tick: t.tick,
                    accepted,
                    chunk,
                }),
                _ => Some(chunk),
            };
            if let Some(chunk) = leftover {
                self.worker.recycle(chunk);
            }
        }

        // Operator requests after the chunk: a re-arm flushes what arrived with it
        // (replay applies them in this order too).
        if !stopping {
            self.operator_requests(r, &state, t);
            self.episode_requests(r, &state, t);
            self.teleop(r, t);
        }

        // 3. Command through the safety filter.
        let (command, raised) = r.core.step(t.tick, t.now_ns, &state);
        if raised & flags::STALE_STATE != 0 {
            r.stats.stale_state_ticks += 1;
        }
        if raised & flags::LIMITED != 0 {
            r.stats.limited_commands += 1;
        }
        if r.core.teleop_engaged() {
            r.stats.intervention_ticks += 1;
        }

        // 4. Publish.
        self.arm.commands.send(command);
        if let Some(tap) = &self.tap {
            tap.commands.send(command);
            if state.seq != r.last_state_seq {
                tap.states.send(state);
            }
        }
        r.last_state_seq = state.seq;

        // 5. Record (the dataset row at its fps, the run log every tick).
        if let Some(episodes) = &mut self.episodes {
            let cameras = &mut self.cameras;
            let core = &r.core;
            episodes.capture(t.tick, |row, recorded| {
                let joints = state.joints.min(MAX_JOINTS);
                row.now_ns = t.now_ns;
                row.state[..joints].copy_from_slice(state.positions());
                row.executed[..joints].copy_from_slice(command.positions());
                row.width = joints;
                if let Some(gripper) = command.gripper {
                    row.state[joints] = state.gripper.unwrap_or(f64::NAN);
                    row.executed[joints] = gripper;
                    row.width += 1;
                }
                let target = core.target();
                let width = target.len().min(row.width);
                row.policy_action[..width].copy_from_slice(&target[..width]);
                row.state_stamp_ns = state.stamp_ns;
                row.flags = raised;
                row.intervention = core.teleop_engaged();
                row.model_version = core.model_version();
                for (image, &camera) in row.images.iter_mut().zip(recorded) {
                    image.copy_from(cameras[camera].frames.latest());
                }
            });
        }
        if let Some(recorder) = &self.recorder {
            recorder.record(LogEvent::Tick(TickRecord {
                tick: t.tick,
                now_ns: t.now_ns,
                state,
                command,
                flags: raised,
            }));
        }

        // 6. Request inference at the replan point, only while following the policy.
        let moving = r.core.safety.motion() == Motion::Tracking;
        if !stopping
            && moving
            && self.episodes.as_ref().is_none_or(Episodes::recording)
            && !r.core.teleop_engaged()
            && r.core.state_ok()
            && self.worker.can_request()
            && !r.paused
            && r.core.executor.wants_chunk(t.tick)
        {
            r.obs.tick = t.tick;
            r.obs.stamp_ns = t.now_ns;
            r.obs.joints = state;
            r.obs.command = command.position;
            let usable = self.snapshot_sensors(r, state.stamp_ns, t.now_ns);
            r.history.fill(&mut r.obs);
            // What runs while this chunk is computed, for strategies such as RTC.
            let delay = if self.clock.is_simulated() {
                self.sim_inference_ticks.max(1)
            } else {
                self.delay.ticks(self.params.rate_hz)
            };
            r.obs.expected_delay_ticks = delay;
            r.obs.committed_len = r.core.executor.committed(t.tick, &mut r.obs.committed);
            if usable && self.worker.request(&r.obs) {
                r.core.executor.requested(t.tick);
                if self.clock.is_simulated() {
                    r.inference_due
                        .push_back(t.tick + self.sim_inference_ticks.max(1));
                }
            }
        }

        self.publish_status(r, t, stopping);
        Ok(())
    }

    /// Copies each sensor stream's sample into the observation: the newest, or
    /// for `aligned` streams the one captured closest to the joint state
    /// (`reference_ns`); a stale or misaligned stream with `on_stale = "mask"` is
    /// absent (black image, zeros). Records each sample's skew and age. Returns
    /// false when a misaligned stream pauses (or stops) this observation.
    fn snapshot_sensors(&mut self, r: &mut Running, reference_ns: u64, now_ns: u64) -> bool {
        let cameras = self.cameras.len();
        let mut usable = true;
        for (i, watch) in self.stream_watches.iter().enumerate() {
            let (latest_seq, latest_stamp) = match i.checked_sub(cameras) {
                None => {
                    let latest = self.cameras[i].frames.latest();
                    r.obs.images[i].copy_from(latest);
                    (latest.seq, latest.stamp_ns)
                }
                Some(k) => {
                    let latest = self.tensors[k].samples.latest();
                    r.obs.tensors[k].copy_from(latest);
                    (latest.seq, latest.stamp_ns)
                }
            };
            let mut stamp = (latest_seq != 0).then_some(latest_stamp);
            let mut absent = watch.masked || (r.stale[i] && watch.on_stale == OnStale::Mask);
            if let Some(tolerance) = watch.align_tolerance_ns
                && latest_seq != 0
            {
                let closest = match i.checked_sub(cameras) {
                    None => r.history.closest_image(i, reference_ns).map(|img| {
                        r.obs.images[i].copy_from(img);
                        img.stamp_ns
                    }),
                    Some(k) => r.history.closest_tensor(k, reference_ns).map(|sample| {
                        r.obs.tensors[k].copy_from(sample);
                        sample.stamp_ns
                    }),
                };
                stamp = closest.or(stamp);
                if stamp.is_none_or(|s| s.abs_diff(reference_ns) > tolerance) {
                    r.stats.stream_faults[i].misaligned += 1;
                    match watch.on_stale {
                        OnStale::Ignore => {}
                        OnStale::Mask => absent = true,
                        OnStale::Pause | OnStale::Stop => usable = false,
                    }
                }
            }
            if absent {
                match i.checked_sub(cameras) {
                    // Absent to the policy: a black image, its mask false.
                    None => {
                        r.obs.images[i].width = 0;
                        r.obs.images[i].height = 0;
                    }
                    // Zeros.
                    Some(k) => {
                        r.obs.tensors[k].seq = 0;
                        r.obs.tensors[k].values.fill(0.0);
                    }
                }
            }
        }
        if usable {
            // What is fed: each present sample's distance from the state, and age.
            for i in 0..self.stream_watches.len() {
                let stamp = match i.checked_sub(cameras) {
                    None => {
                        let image = &r.obs.images[i];
                        (image.seq != 0 && image.width > 0).then_some(image.stamp_ns)
                    }
                    Some(k) => {
                        let sample = &r.obs.tensors[k];
                        (sample.seq != 0).then_some(sample.stamp_ns)
                    }
                };
                if let Some(stamp) = stamp {
                    r.stats.stream_skew[i].record_ns(stamp.abs_diff(reference_ns));
                    r.stats.stream_age[i].record_ns(now_ns.saturating_sub(stamp));
                }
            }
        }
        usable
    }

    /// Applies operator requests (and the deadman); each is logged with its
    /// outcome, applied before this tick's step, so replay sees them.
    /// Judges each camera's newest frame against its `[streams]` fault policy.
    fn watch_streams(&mut self, r: &mut Running, t: TickTime) {
        let start = *r.first_tick_ns.get_or_insert(t.now_ns);
        let mut paused = false;
        let cameras = self.cameras.len();
        for (i, watch) in self.stream_watches.iter().enumerate() {
            let (seq, stamp_ns) = match i.checked_sub(cameras) {
                None => {
                    let frame = self.cameras[i].frames.latest();
                    (frame.seq, frame.stamp_ns)
                }
                Some(t) => {
                    let sample = self.tensors[t].samples.latest();
                    (sample.seq, sample.stamp_ns)
                }
            };
            if seq != r.seen_seq[i] {
                r.seen_seq[i] = seq;
                r.stats.stream_faults[i].samples += 1;
            }
            r.newest_stamp[i] = if seq == 0 { 0 } else { stamp_ns };
            let since = if seq == 0 { start } else { stamp_ns };
            let stale = t.now_ns.saturating_sub(since) > watch.max_age_ns;
            let fault = &mut r.stats.stream_faults[i];
            if stale && !r.stale[i] {
                fault.episodes += 1;
                tracing::warn!(
                    "stream `{}` stale (no frame for {} ms): {}",
                    watch.name,
                    t.now_ns.saturating_sub(since) / 1_000_000,
                    watch.on_stale.verb()
                );
                if watch.on_stale == OnStale::Stop && r.core.safety.motion() == Motion::Tracking {
                    self.operator.estop.store(true, Ordering::Release);
                }
            } else if !stale && r.stale[i] {
                tracing::warn!("stream `{}` fresh again", watch.name);
            }
            r.stale[i] = stale;
            if stale {
                fault.stale_ticks += 1;
                paused |= watch.on_stale == OnStale::Pause;
            }
            // Nothing to feed yet: no chunk is asked for (but the stream is not
            // reported stale before its max_age).
            paused |= seq == 0 && watch.on_stale == OnStale::Pause;
        }
        r.paused = paused;
    }

    fn operator_requests(&mut self, r: &mut Running, state: &JointState, t: TickTime) {
        if let Some(timeout) = self.heartbeat_timeout {
            let last = self.operator.heartbeat_ns.load(Ordering::Acquire);
            let silent = monotonic_ns().saturating_sub(last);
            if r.core.safety.motion() == Motion::Tracking && silent > timeout.as_nanos() as u64 {
                tracing::warn!(
                    "operator heartbeat silent for {} ms: stopping",
                    silent / 1_000_000
                );
                self.operator.estop.store(true, Ordering::Release);
            }
        }
        for (request, flag) in [
            (Request::Estop, &self.operator.estop),
            (Request::Rearm, &self.operator.rearm),
            (Request::Resume, &self.operator.resume),
        ] {
            // Swapped every tick, so a refused request is forgotten, never applied later.
            if !flag.swap(false, Ordering::AcqRel) {
                continue;
            }
            let result = r.core.operator(request, state, t.tick);
            self.log_request(t.tick, request, result);
            match result {
                Ok(()) => {}
                Err(refusal) => {
                    tracing::warn!("{request:?} refused: {refusal}");
                    r.stats.refusals += 1;
                    r.stats.last_refusal = Some(refusal);
                }
            }
            let outcome = OperatorOutcome {
                tick: t.tick,
                request,
                result,
            };
            self.operator.outcomes.force_push(outcome);
        }
    }

    /// A new sample of the teleop device goes to the core (and the log).
    fn teleop(&mut self, r: &mut Running, t: TickTime) {
        let Some(port) = self.teleop.first_mut() else {
            return;
        };
        let sample = *port.commands.latest();
        if sample.seq == r.last_teleop_seq {
            return;
        }
        r.last_teleop_seq = sample.seq;
        let engaged = r.core.teleop_engaged();
        r.core.teleop_sample(&sample, t.tick);
        if engaged != r.core.teleop_engaged() {
            tracing::info!(
                "teleop `{}` {}",
                port.name,
                if engaged {
                    "released: the policy takes over"
                } else {
                    "engaged: a person commands the arm"
                }
            );
        }
        if let Some(recorder) = &self.recorder {
            recorder.record(LogEvent::Teleop {
                tick: t.tick,
                sample,
            });
        }
    }

    /// Episodes: their phase changes move the arm (reset, begin) through the
    /// core as logged operator requests, so replay reproduces them.
    fn episode_requests(&mut self, r: &mut Running, state: &JointState, t: TickTime) {
        let Some(episodes) = &mut self.episodes else {
            return;
        };
        if r.core.reset_reached(t.tick) {
            episodes.reset_reached();
        }
        let action = episodes.decide(t.tick);
        let request = match action {
            EpisodeAction::None => return,
            EpisodeAction::Reset | EpisodeAction::End => Request::EpisodeReset,
            EpisodeAction::Begin => Request::EpisodeBegin,
        };
        let result = r.core.operator(request, state, t.tick);
        for driver in &mut self.drivers {
            match action {
                EpisodeAction::Begin => driver.episode_begins(),
                EpisodeAction::End => driver.episode_ends(),
                _ => {}
            }
        }
        self.log_request(t.tick, request, result);
    }

    /// Logs a request the core carried out at `tick` (replay applies it there).
    fn log_request(&self, tick: u64, request: Request, result: Result<(), Refusal>) {
        if let Some(recorder) = &self.recorder {
            recorder.record(match request {
                Request::Estop => LogEvent::Estop { tick },
                _ => LogEvent::Operator {
                    tick,
                    request: request.code(),
                    outcome: result.map_or_else(|e| e.code(), |()| 0),
                },
            });
        }
    }

    fn publish_status(&mut self, r: &mut Running, t: TickTime, stopping: bool) {
        let Some(status) = &mut self.status else {
            return;
        };
        let window = t.tick.saturating_sub(r.window_start_tick);
        if window < (self.params.rate_hz / 10.0).max(1.0) as u64 {
            return;
        }
        let simulated = self.clock.is_simulated();
        let elapsed = r.window_start.elapsed().as_secs_f64();
        let rate = if simulated || elapsed <= 0.0 {
            self.params.rate_hz
        } else {
            window as f64 / elapsed
        };
        let (jitter, compute) = (
            r.window_jitter.percentiles(),
            r.window_compute.percentiles(),
        );
        let motion = r.core.safety.motion();
        let snapshot = StatusSnapshot {
            tick: t.tick,
            elapsed_s: r.started.elapsed().as_secs_f64(),
            rate_hz: rate,
            jitter_p99_us: jitter.p99_us,
            compute_p99_us: compute.p99_us,
            inference_ms: r.last_infer_ms,
            chunk_queue: r.core.executor.queued(t.tick),
            chunks_applied: r.stats.chunks_applied,
            chunks_rejected: r.stats.chunks_rejected,
            model_version: r.core.model_version(),
            steering: r.stats.steering,
            inference_errors: self.worker.errors(),
            overruns: r.stats.overruns,
            stale_state_ticks: r.stats.stale_state_ticks,
            invalid_states: r.core.invalid_states,
            last_invalid_state: r.core.last_invalid,
            estop: motion == Motion::Latched && !stopping,
            hold: motion == Motion::Hold && !stopping,
            estop_latches: r.core.safety.latches(),
            last_refusal: r.stats.last_refusal,
            stopping,
            stale_stream: r
                .stale
                .iter()
                .zip(&self.stream_watches)
                .find(|(stale, _)| **stale)
                .map(|(_, w)| (ShortName::new(&w.name), w.on_stale)),
            streams: {
                let mut streams = [StreamStatus::default(); STATUS_STREAMS];
                let seconds = r.samples_since.elapsed().as_secs_f64().max(1e-3);
                for (i, (slot, watch)) in streams.iter_mut().zip(&self.stream_watches).enumerate() {
                    let samples = r.stats.stream_faults[i].samples - r.window_samples[i];
                    *slot = StreamStatus {
                        name: ShortName::new(&watch.name),
                        rate_hz: if simulated {
                            0.0
                        } else {
                            samples as f64 / seconds
                        },
                        age_ms: (r.newest_stamp[i] != 0)
                            .then(|| t.now_ns.saturating_sub(r.newest_stamp[i]) as f64 / 1e6),
                        source: source_counts(&self.source_counters, i),
                    };
                }
                streams
            },
            stream_count: self.stream_watches.len().min(STATUS_STREAMS),
        };
        status.publish_with(|slot| *slot = snapshot);
        if r.window_start.elapsed() >= Duration::from_secs(1) || simulated {
            r.window_jitter.reset();
            r.window_compute.reset();
        }
        // Stream rates over about a second.
        if r.samples_since.elapsed() >= Duration::from_secs(1) {
            for (start, fault) in r.window_samples.iter_mut().zip(&r.stats.stream_faults) {
                *start = fault.samples;
            }
            r.samples_since = Instant::now();
        }
        r.window_start_tick = t.tick;
        r.window_start = Instant::now();
    }
}

/// One difference between a log and its replay.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    pub tick: u64,
    pub what: String,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReplayReport {
    pub ticks: u64,
    pub chunks: u64,
    pub mismatches: u64,
    /// The first few differences.
    pub first: Vec<Mismatch>,
    pub complete: bool,
}

impl ReplayReport {
    pub fn identical(&self) -> bool {
        self.mismatches == 0 && self.ticks > 0
    }
}

/// Re-executes a log's ticks and compares every command and flag bit for bit.
///
/// `records` may be a slice or a stream (`reflex replay` reads the log as it goes).
pub fn replay<R: std::borrow::Borrow<Record>>(
    header: &LogHeader,
    records: impl IntoIterator<Item = R>,
) -> ReplayReport {
    replay_with(header, records, &Registry::new())
}

/// [`replay`] with the execution strategies of `registry` (a binary's own).
pub fn replay_with<R: std::borrow::Borrow<Record>>(
    header: &LogHeader,
    records: impl IntoIterator<Item = R>,
    registry: &Registry,
) -> ReplayReport {
    replay_traced(header, records, registry, |_| {})
}

/// One replayed tick: the measured state, the target before the safety filter
/// and the command after it.
pub struct TickTrace<'a> {
    pub tick: u64,
    pub now_ns: u64,
    pub state: &'a JointState,
    pub target: &'a [f64],
    pub command: &'a JointCommand,
}

/// [`replay_with`], handing every replayed tick to `trace`.
pub fn replay_traced<R: std::borrow::Borrow<Record>>(
    header: &LogHeader,
    records: impl IntoIterator<Item = R>,
    registry: &Registry,
    mut trace: impl FnMut(&TickTrace<'_>),
) -> ReplayReport {
    let mut report = ReplayReport::default();
    let core = TickParams::from_header(header, registry).and_then(|p| TickCore::new(&p));
    let mut core = match core {
        Ok(core) => core,
        Err(e) => {
            report.mismatches += 1;
            report.first.push(Mismatch {
                tick: 0,
                what: format!("cannot rebuild the tick: {e}"),
            });
            return report;
        }
    };
    let note = |report: &mut ReplayReport, tick: u64, what: String| {
        report.mismatches += 1;
        if report.first.len() < 10 {
            report.first.push(Mismatch { tick, what });
        }
    };
    // Operator requests act before the step of the tick that follows them,
    // then a teleop sample.
    let mut pending: Vec<(Request, Option<u8>)> = Vec::new();
    let mut pending_teleop: Option<TeleopCommand> = None;
    for record in records {
        match record.borrow() {
            Record::Start {
                joints,
                position,
                gripper,
            } => {
                if let Err(e) = core.start(&position[..(*joints).min(MAX_JOINTS)], *gripper) {
                    note(
                        &mut report,
                        0,
                        format!("cannot arm from the logged start: {e}"),
                    );
                }
            }
            Record::Estop { .. } => pending.push((Request::Estop, None)),
            Record::Teleop { sample, .. } => pending_teleop = Some(*sample),
            Record::Operator {
                request, outcome, ..
            } => match Request::from_code(*request) {
                Some(r) => pending.push((r, Some(*outcome))),
                None => note(
                    &mut report,
                    0,
                    format!("unknown operator request {request}"),
                ),
            },
            Record::Chunk {
                tick,
                accepted,
                chunk,
            } => {
                report.chunks += 1;
                let replayed = core.apply_chunk(chunk, *tick).is_ok();
                if replayed != *accepted {
                    note(
                        &mut report,
                        *tick,
                        format!(
                            "chunk {} accepted={accepted}, replay says {replayed}",
                            chunk.id
                        ),
                    );
                }
            }
            Record::Tick(logged) => {
                report.ticks += 1;
                core.observe(&logged.state, logged.now_ns);
                for (request, logged_outcome) in pending.drain(..) {
                    let outcome = core
                        .operator(request, &logged.state, logged.tick)
                        .map_or_else(|e| e.code(), |()| 0);
                    if logged_outcome.is_some_and(|o| o != outcome) {
                        note(
                            &mut report,
                            logged.tick,
                            format!(
                                "{request:?}: logged outcome {logged_outcome:?}, replay gives {outcome}"
                            ),
                        );
                    }
                }
                if let Some(sample) = pending_teleop.take() {
                    core.teleop_sample(&sample, logged.tick);
                }
                let (command, raised) = core.step(logged.tick, logged.now_ns, &logged.state);
                trace(&TickTrace {
                    tick: logged.tick,
                    now_ns: logged.now_ns,
                    state: &logged.state,
                    target: core.target(),
                    command: &command,
                });
                for j in 0..MAX_JOINTS.min(command.joints.max(logged.command.joints)) {
                    let (a, b) = (logged.command.position[j], command.position[j]);
                    if a.to_bits() != b.to_bits() {
                        note(
                            &mut report,
                            logged.tick,
                            format!("joint {j}: logged {a:?}, replayed {b:?}"),
                        );
                        break;
                    }
                }
                let (a, b) = (logged.command.gripper, command.gripper);
                if a.map(f64::to_bits) != b.map(f64::to_bits) {
                    note(
                        &mut report,
                        logged.tick,
                        format!("gripper: logged {a:?}, replayed {b:?}"),
                    );
                }
                if raised != logged.flags {
                    note(
                        &mut report,
                        logged.tick,
                        format!("flags: logged {:#x}, replayed {raised:#x}", logged.flags),
                    );
                }
                if command.seq != logged.command.seq {
                    note(
                        &mut report,
                        logged.tick,
                        format!(
                            "seq: logged {}, replayed {}",
                            logged.command.seq, command.seq
                        ),
                    );
                }
            }
            Record::End { .. } => report.complete = true,
            Record::Choice { .. } | Record::Noise { .. } => {}
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::JointConfig;

    /// Parameters of a 100 Hz test robot with these joints and safety settings.
    pub(super) fn params(names: &[&str], safety: SafetyConfig) -> TickParams {
        TickParams {
            joints: names
                .iter()
                .map(|name| JointConfig {
                    name: (*name).into(),
                    position: [-1.0, 1.0],
                    velocity: 1.0,
                    acceleration: 5.0,
                    jerk: None,
                })
                .collect(),
            rate_hz: 100.0,
            max_state_age_ms: 50.0,
            estop_after_stale_ms: 200.0,
            horizon: 2,
            action_rate_hz: 10.0,
            replan_after: 1,
            interpolation: Default::default(),
            safety,
            workspace: None,
            executor: ExecutorFactory::replace(),
            gripper: None,
            reset: None,
            tip: None,
        }
    }

    fn core() -> TickCore {
        let mut core = TickCore::new(&params(&["j"], SafetyConfig::default())).unwrap();
        core.start(&[0.0], None).unwrap();
        core
    }

    fn state(epoch: u64, seq: u64, stamp_ns: u64, position: f64) -> JointState {
        let mut s = JointState::empty(1);
        (s.epoch, s.seq, s.stamp_ns, s.position[0]) = (epoch, seq, stamp_ns, position);
        s
    }

    #[test]
    fn states_are_judged_valid_fresh_and_in_order() {
        let mut core = core();
        assert!(core.observe(&state(1, 5, 100, 0.1), 100));
        assert!(
            !core.observe(&state(1, 4, 200, 0.1), 200),
            "older seq: replayed"
        );
        assert!(matches!(
            core.last_invalid,
            Some(InvalidState::Reordered { .. })
        ));
        assert!(!core.observe(&state(1, 6, 50, 0.1), 200), "older stamp");
        assert!(!core.observe(&state(1, 7, 300, f64::NAN), 300));
        assert!(
            !core.observe(&state(1, 8, 300, 1.2), 300),
            "beyond the margin"
        );
        assert!(
            core.observe(&state(1, 9, 300, 1.01), 300),
            "within the margin"
        );
        assert_eq!(core.invalid_states, 4);
        // The same invalid sample seen on many ticks counts once.
        assert!(!core.observe(&state(1, 8, 300, 1.2), 310));
        assert!(!core.observe(&state(1, 8, 300, 1.2), 320));
        assert_eq!(core.invalid_states, 5);
        // A restarted robot driver: a larger epoch with seq from 1 is accepted.
        assert!(core.observe(&state(2, 1, 400, 0.1), 400));
        assert_eq!(core.epochs, 1);
        assert!(
            !core.observe(&state(1, 50, 500, 0.1), 500),
            "the old epoch is over"
        );
        // Valid but old: not fresh.
        assert!(!core.observe(&state(2, 2, 400, 0.1), 400 + 60_000_000));
    }

    #[test]
    fn rearm_and_resume_flush_what_was_planned_before() {
        let mut core = core();
        let s = state(1, 1, 0, 0.0);
        core.observe(&s, 0);
        let mut chunk = ActionChunk::zeros(2, 1);
        chunk.actions.copy_from_slice(&[0.5, 0.5]);
        core.apply_chunk(&chunk, 1).unwrap();
        core.operator(Request::Estop, &s, 2).unwrap();
        for tick in 2..100 {
            core.observe(
                &state(1, tick, tick * 10_000_000, core.safety.command()[0]),
                tick * 10_000_000,
            );
            core.step(tick, tick * 10_000_000, &s);
        }
        let s = state(1, 100, 1_000_000_000, core.safety.command()[0]);
        core.observe(&s, 1_000_000_000);
        assert_eq!(
            core.operator(Request::Resume, &s, 100),
            Err(Refusal::NotHolding)
        );
        core.operator(Request::Rearm, &s, 100).unwrap();
        // A chunk that was in flight during the stop is dropped.
        chunk.conditioned_on_tick = 50;
        assert!(matches!(
            core.apply_chunk(&chunk, 101),
            Err(ChunkRejection::Flushed { .. })
        ));
        core.operator(Request::Resume, &s, 102).unwrap();
        assert_eq!(core.safety.motion(), Motion::Tracking);
    }

    #[test]
    fn a_swapped_in_model_flushes_the_old_models_plan() {
        let mut core = core();
        let s = state(1, 1, 0, 0.0);
        core.observe(&s, 0);
        let mut old = ActionChunk::zeros(2, 1);
        old.actions.copy_from_slice(&[0.5, 0.5]);
        core.apply_chunk(&old, 1).unwrap();
        assert_eq!(core.executor.queued(1), 2);
        // The new model's first chunk was asked for before the swap was seen:
        // the old plan goes, and so does it; the arm holds the current command.
        let mut new = ActionChunk::zeros(2, 1);
        new.actions.copy_from_slice(&[-0.5, -0.5]);
        new.model_version = 1;
        new.conditioned_on_tick = 2;
        assert!(matches!(
            core.apply_chunk(&new, 3),
            Err(ChunkRejection::Flushed { .. })
        ));
        assert_eq!((core.model_version(), core.model_swaps), (1, 1));
        assert_eq!(core.executor.queued(3), 0);
        // Its next chunk, asked for after the swap, runs.
        new.conditioned_on_tick = 4;
        core.apply_chunk(&new, 5).unwrap();
        assert_eq!(core.model_swaps, 1);
        assert_eq!(core.executor.queued(5), 2);
    }
}

#[cfg(test)]
mod tracking_tests {
    use super::*;

    #[test]
    fn a_blocked_joint_latches_the_stop_and_is_named() {
        let mut core = TickCore::new(&super::tests::params(
            &["a", "b"],
            SafetyConfig {
                max_tracking_error: Some(vec![0.05, 0.05]),
                tracking_lag_ms: 50.0,
                ..SafetyConfig::default()
            },
        ))
        .unwrap();
        core.start(&[0.0, 0.0], None).unwrap();
        let mut chunk = ActionChunk::zeros(2, 2);
        chunk.actions.copy_from_slice(&[0.0, 0.8, 0.0, 0.8]);
        core.apply_chunk(&chunk, 1).unwrap();
        let mut state = JointState::empty(2);
        for tick in 1..200u64 {
            let now = tick * 10_000_000;
            state.seq = tick;
            state.stamp_ns = now;
            // Joint a follows the command; joint b is stuck at 0.
            state.position[0] = core.safety.command()[0];
            core.observe(&state, now);
            core.step(tick, now, &state);
            if core.safety.is_estopped() {
                let (joint, error) = core.tracking_fault.expect("the fault is named");
                assert_eq!(joint, 1);
                assert!(error > 0.05, "{error}");
                return;
            }
        }
        panic!("a joint stuck at 0 while commanded to 0.8 must latch the stop");
    }
}
