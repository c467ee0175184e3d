//! The control loop: one thread, one tick per period.
//!
//! Each tick: step simulated drivers (simulated clock only), snapshot the joint
//! state and check its age, apply a chunk the worker finished, take this tick's
//! target from the executor, pass it through the safety filter, hand the command
//! to the arm and the bus, record the step, and request the next chunk when the
//! executor reaches its replan point. The decision part ([`TickCore`]) is shared
//! with `reflex replay`, which is how replay reproduces commands bit for bit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::bus::Mirror;
use crate::clock::{Clock, TickTime};
use crate::driver::{ArmPorts, CameraPort, Driver, DriverError, TaskReport};
use crate::executor::{ChunkExecutor, ChunkRejection};
use crate::log::{LogEvent, LogHeader, LogSummary, Record, Recorder, TickRecord};
use crate::policy::InferenceWorker;
use crate::safety::{SafetyFilter, flags};
use crate::slot::SlotWriter;
use crate::stats::{Distribution, RunStats, StatusSnapshot};
use crate::types::{ActionChunk, JointCommand, JointState, MAX_JOINTS, Observation};

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
}

impl TickParams {
    pub fn from_header(h: &LogHeader) -> Self {
        Self {
            joints: h.joints.clone(),
            rate_hz: h.rate_hz,
            max_state_age_ms: h.max_state_age_ms,
            estop_after_stale_ms: h.estop_after_stale_ms,
            horizon: h.horizon,
            action_rate_hz: h.action_rate_hz,
            replan_after: h.replan_after,
        }
    }
}

/// The deterministic part of a tick: executor + safety filter.
pub struct TickCore {
    pub executor: ChunkExecutor,
    pub safety: SafetyFilter,
    joints: usize,
    max_state_age_ns: u64,
    next_seq: u64,
}

impl TickCore {
    pub fn new(p: &TickParams) -> Self {
        let dt = 1.0 / p.rate_hz;
        Self {
            executor: ChunkExecutor::new(
                p.joints.len(),
                p.horizon,
                p.rate_hz / p.action_rate_hz,
                p.replan_after,
            ),
            safety: SafetyFilter::new(&p.joints, dt, (p.estop_after_stale_ms * 1e6) as u64),
            joints: p.joints.len(),
            max_state_age_ns: (p.max_state_age_ms * 1e6) as u64,
            next_seq: 1,
        }
    }

    /// Arms the filter and holds at the measured position.
    pub fn start(&mut self, measured: &[f64]) {
        self.safety.rearm(measured);
        self.executor.hold(self.safety.command());
    }

    pub fn state_is_fresh(&self, state: &JointState, now_ns: u64) -> bool {
        state.seq > 0
            && state.joints == self.joints
            && now_ns.saturating_sub(state.stamp_ns) <= self.max_state_age_ns
    }

    pub fn apply_chunk(&mut self, chunk: &ActionChunk, tick: u64) -> Result<(), ChunkRejection> {
        self.executor.accept(chunk, tick)
    }

    /// Computes this tick's command; returns it with the safety flags.
    pub fn step(&mut self, tick: u64, now_ns: u64, state: &JointState) -> (JointCommand, u32) {
        let fresh = self.state_is_fresh(state, now_ns);
        let target = self.executor.target(tick);
        let raised = self.safety.apply(target, fresh, now_ns);
        let mut command = JointCommand::empty(self.joints);
        command.seq = self.next_seq;
        self.next_seq += 1;
        command.tick = tick;
        command.stamp_ns = now_ns;
        command.position[..self.joints].copy_from_slice(self.safety.command());
        (command, raised)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no joint state from the arm within {0:?}; is the robot (or its zenoh bridge) up?")]
    NoInitialState(Duration),
    #[error("stopped while waiting for the first joint state; nothing was commanded")]
    StoppedBeforeFirstState,
    #[error(transparent)]
    Driver(#[from] DriverError),
}

/// Requests from an operator (over the bus), read by the tick with one atomic swap.
#[derive(Clone, Default)]
pub struct OperatorRequests {
    /// Latch the e-stop: the arm decelerates to rest and holds.
    pub estop: Arc<AtomicBool>,
    /// Clear a latched e-stop, starting again from the measured position.
    pub rearm: Arc<AtomicBool>,
}

/// Everything the loop owns, wired up by the caller.
pub struct ControlLoop {
    pub params: TickParams,
    pub clock: Box<dyn Clock>,
    pub drivers: Vec<Box<dyn Driver>>,
    pub arm: ArmPorts,
    pub cameras: Vec<CameraPort>,
    pub worker: InferenceWorker,
    pub mirror: Option<Mirror>,
    pub recorder: Option<Recorder>,
    pub status: Option<SlotWriter<StatusSnapshot>>,
    pub operator: OperatorRequests,
    pub sim_inference_ticks: u64,
    pub startup_timeout: Duration,
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
}

/// The loop's state while running (everything preallocated).
struct Running {
    core: TickCore,
    obs: Observation,
    stats: RunStats,
    window_jitter: Distribution,
    window_compute: Distribution,
    window_start_tick: u64,
    window_start: Instant,
    last_tick_ns: Option<u64>,
    last_state_seq: u64,
    last_infer_ms: f64,
    inference_due: Option<u64>,
    started: Instant,
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

    /// Waits for the first joint state (stepping simulated drivers once); gives up
    /// at once when `stop` is set (a signal during start-up).
    fn first_state(&mut self, stop: &AtomicBool) -> Result<JointState, ControlError> {
        self.step_simulated(0)?;
        let deadline = Instant::now() + self.startup_timeout;
        loop {
            let state = *self.arm.state.latest();
            if state.seq > 0 {
                return Ok(state);
            }
            if stop.load(Ordering::Relaxed) {
                return Err(ControlError::StoppedBeforeFirstState);
            }
            if Instant::now() >= deadline {
                return Err(ControlError::NoInitialState(self.startup_timeout));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Runs until the duration is reached or `stop` is set, then brings the arm to rest.
    pub fn run(mut self, limits: RunLimits) -> Result<RunSummary, ControlError> {
        let joints = self.params.joints.len();
        let first = self.first_state(limits.stop)?;
        let mut core = TickCore::new(&self.params);
        core.start(first.positions());
        if let Some(recorder) = &self.recorder {
            recorder.record(LogEvent::Start {
                joints,
                position: first.position,
            });
        }
        let images = self
            .cameras
            .iter()
            .map(|c| crate::types::Image::black(c.width, c.height))
            .collect();
        let mut r = Running {
            core,
            obs: Observation {
                tick: 0,
                stamp_ns: 0,
                joints: first,
                images,
            },
            stats: RunStats::default(),
            window_jitter: Distribution::default(),
            window_compute: Distribution::default(),
            window_start_tick: 0,
            window_start: Instant::now(),
            last_tick_ns: None,
            last_state_seq: 0,
            last_infer_ms: 0.0,
            inference_due: None,
            started: Instant::now(),
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
            if let Err(e) = self.tick(&mut r, t, false) {
                // A driver failed: stop the arm like any other ending, and say why.
                tracing::error!("{e}");
                fault = Some(e.to_string());
                break;
            }
            let compute = woke.elapsed().as_nanos() as u64;
            r.stats.compute.record_ns(compute);
            r.window_compute.record_ns(compute);
            if compute > period_ns {
                r.stats.overruns += 1;
            }
        }
        // Bring the arm to rest within its acceleration limits before letting go.
        r.core.safety.estop();
        if let Some(recorder) = &self.recorder {
            recorder.record(LogEvent::Estop { tick: last_tick });
        }
        let max_rest_ticks = self.params.rate_hz as u64 * 5;
        for _ in 0..max_rest_ticks {
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
        if let Some(mirror) = self.mirror.take() {
            mirror.finish();
        }
        r.stats.inference_errors = self.worker.errors();
        let log = self.recorder.take().map(Recorder::finish);
        Ok(RunSummary {
            stats: r.stats,
            task,
            log,
            simulated: self.clock.is_simulated(),
            duration_s: r.started.elapsed().as_secs_f64(),
            interrupted,
            fault,
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

        // 1. Snapshot sensors.
        let state = *self.arm.state.latest();
        self.operator_requests(r, &state, t);

        // 2. A finished chunk, if any (under the simulated clock: exactly when due).
        // While stopping, chunks are left unread: nothing may move the arm again.
        let done = match r.inference_due {
            _ if stopping => None,
            Some(due) if self.clock.is_simulated() => {
                if t.tick >= due {
                    r.inference_due = None;
                    self.worker.wait(Duration::from_secs(60))
                } else {
                    None
                }
            }
            _ => self.worker.poll(),
        };
        if let Some(done) = done {
            r.inference_due = None;
            r.last_infer_ms = done.chunk.infer_ns as f64 / 1e6;
            r.stats.inference.record_ns(done.chunk.infer_ns);
            let accepted = if done.ok {
                match r.core.apply_chunk(&done.chunk, t.tick) {
                    Ok(()) => true,
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

        // 3. Command through the safety filter.
        let (command, raised) = r.core.step(t.tick, t.now_ns, &state);
        if raised & flags::STALE_STATE != 0 {
            r.stats.stale_state_ticks += 1;
        }
        if raised & flags::LIMITED != 0 {
            r.stats.limited_commands += 1;
        }

        // 4. Publish.
        self.arm.commands.send(command);
        if let Some(mirror) = &self.mirror {
            mirror.commands.send(command);
            if state.seq != r.last_state_seq {
                mirror.states.send(state);
            }
        }
        r.last_state_seq = state.seq;

        // 5. Record.
        if let Some(recorder) = &self.recorder {
            recorder.record(LogEvent::Tick(TickRecord {
                tick: t.tick,
                now_ns: t.now_ns,
                state,
                command,
                flags: raised,
            }));
        }

        // 6. Request inference at the replan point.
        let fresh = r.core.state_is_fresh(&state, t.now_ns);
        if !stopping && fresh && !self.worker.in_flight() && r.core.executor.wants_chunk(t.tick) {
            r.obs.tick = t.tick;
            r.obs.stamp_ns = t.now_ns;
            r.obs.joints = state;
            for (image, camera) in r.obs.images.iter_mut().zip(&mut self.cameras) {
                image.copy_from(camera.frames.latest());
            }
            if self.worker.request(&r.obs) {
                r.inference_due = Some(t.tick + self.sim_inference_ticks.max(1));
            }
        }

        if r.core.safety.is_estopped() && !stopping {
            r.stats.estops = 1;
        }
        self.publish_status(r, t, stopping);
        Ok(())
    }

    /// Applies an operator's e-stop or re-arm; both are logged so replay sees them.
    fn operator_requests(&mut self, r: &mut Running, state: &JointState, t: TickTime) {
        if self.operator.estop.swap(false, Ordering::AcqRel) {
            r.core.safety.estop();
            if let Some(recorder) = &self.recorder {
                recorder.record(LogEvent::Estop { tick: t.tick });
            }
        }
        // Re-arming needs a fresh measurement to start from; otherwise it waits.
        if r.core.state_is_fresh(state, t.now_ns)
            && self.operator.rearm.swap(false, Ordering::AcqRel)
        {
            r.core.start(state.positions());
            if let Some(recorder) = &self.recorder {
                recorder.record(LogEvent::Start {
                    joints: state.joints,
                    position: state.position,
                });
            }
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
            inference_errors: self.worker.errors(),
            overruns: r.stats.overruns,
            stale_state_ticks: r.stats.stale_state_ticks,
            estop: r.core.safety.is_estopped() && !stopping,
            stopping,
        };
        status.publish_with(|slot| *slot = snapshot);
        if r.window_start.elapsed() >= Duration::from_secs(1) || simulated {
            r.window_jitter.reset();
            r.window_compute.reset();
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
    let params = TickParams::from_header(header);
    let mut core = TickCore::new(&params);
    let mut report = ReplayReport::default();
    let note = |report: &mut ReplayReport, tick: u64, what: String| {
        report.mismatches += 1;
        if report.first.len() < 10 {
            report.first.push(Mismatch { tick, what });
        }
    };
    for record in records {
        match record.borrow() {
            Record::Start { joints, position } => core.start(&position[..*joints]),
            Record::Estop { .. } => core.safety.estop(),
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
                let (command, raised) = core.step(logged.tick, logged.now_ns, &logged.state);
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
        }
    }
    report
}
