//! Episodes and what the tick hands the dataset recorder.
//!
//! `[recording]` makes a run a sequence of episodes: reset (move to
//! `reset.joint_positions` at `reset.speed`, or hold still for a human reset, at
//! least `reset_time_s`), record until success / failure / the time limit (or
//! re-record: the episode is dropped and done again), and so on. The tick owns
//! the phase; the moves it commands go through [`crate::control::TickCore`] as
//! logged operator requests, so replay reproduces them. Rows are captured at the
//! dataset's fps into preallocated buffers and queued to a recorder thread (the
//! `reflex-dataset` crate); the tick never waits for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::types::{Image, MAX_JOINTS};

/// `[recording]`: episodes of a run recorded as a LeRobot dataset (`reflex run --record DIR`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordingConfig {
    /// Dataset rows per second (one fps for the whole dataset); the control rate
    /// must be a whole multiple of it. Default: the action rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fps: Option<u32>,
    /// Stop the run after this many saved episodes (default: until Esc or Ctrl-C).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub episodes: Option<u64>,
    /// An episode ends (as not successful) after this long, s.
    #[serde(default = "default_episode_time_s")]
    pub episode_time_s: f64,
    /// The reset between episodes lasts at least this long, s (a human resets
    /// the scene meanwhile).
    #[serde(default = "default_reset_time_s")]
    pub reset_time_s: f64,
    /// The task string of the episodes (default: `task.instruction`, or the
    /// instruction in effect when the episode starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// `auto`: the next episode starts when the reset is over; `key`: it waits
    /// for `reflex episode start` (or the → key).
    #[serde(default)]
    pub start: EpisodeStart,
    /// Camera streams to record (default: every camera).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cameras: Option<Vec<String>>,
    /// `true`: cameras as h264 video (LeRobot's `video`); `false`: lossless PNG
    /// in the rows (LeRobot's `image`).
    #[serde(default = "default_true")]
    pub video: bool,
    /// Where the arm goes between episodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<ResetConfig>,
    /// Who says an episode succeeded: `key` (the operator: → or `reflex episode
    /// success`), `classifier` (`[reward_classifier]` on each row) or `both`.
    #[serde(default)]
    pub reward: RewardSource,
    /// With the classifier: its first success ends the episode (HIL-SERL);
    /// `false` rewards every row it calls a success and lets the episode run.
    #[serde(default = "default_true")]
    pub terminate_on_success: bool,
    /// Publish every written row on `<prefix>/<robot>/transitions` (when the
    /// zenoh bus is up) for a learner.
    #[serde(default = "default_true")]
    pub transitions: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RewardSource {
    #[default]
    Key,
    Classifier,
    Both,
}

impl RewardSource {
    pub fn uses_classifier(self) -> bool {
        self != RewardSource::Key
    }
}

/// A success classifier over recorded rows (run on the recorder's thread).
pub trait RewardModel: Send {
    /// The probability that the task is done in this row.
    fn success_probability(&mut self, row: &FrameRow) -> Result<f32, String>;
    /// Success when the probability is above this.
    fn threshold(&self) -> f64;
}

impl Default for RecordingConfig {
    fn default() -> Self {
        Self {
            fps: None,
            episodes: None,
            episode_time_s: default_episode_time_s(),
            reset_time_s: default_reset_time_s(),
            task: None,
            start: EpisodeStart::Auto,
            cameras: None,
            video: true,
            reset: None,
            reward: RewardSource::Key,
            terminate_on_success: true,
            transitions: true,
        }
    }
}

fn default_episode_time_s() -> f64 {
    20.0
}
fn default_reset_time_s() -> f64 {
    2.0
}
fn default_true() -> bool {
    true
}
fn default_reset_speed() -> f64 {
    0.5
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EpisodeStart {
    #[default]
    Auto,
    Key,
}

/// `[recording.reset]`: the pose the arm returns to between episodes.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetConfig {
    /// One position per joint, rad (inside the joint limits).
    pub joint_positions: Vec<f64>,
    /// The fastest joint moves at this speed, rad/s (the safety filter's limits
    /// still apply).
    #[serde(default = "default_reset_speed")]
    pub speed: f64,
}

/// What the tick needs to move the arm to the reset pose (in the log header).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ResetParams {
    pub joint_positions: Vec<f64>,
    pub speed: f64,
}

/// An episode request from an operator (terminal keys, control socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpisodeRequest {
    /// End the episode as a success (reward 1 on its last row) and save it.
    Success = 1,
    /// End it as a failure and save it.
    Failure = 2,
    /// Drop it and record it again after the reset.
    Rerecord = 3,
    /// Save it and stop recording (the run ends).
    Stop = 4,
    /// Start the next episode (`start = "key"`).
    Start = 5,
}

impl EpisodeRequest {
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::Success,
            2 => Self::Failure,
            3 => Self::Rerecord,
            4 => Self::Stop,
            5 => Self::Start,
            _ => return None,
        })
    }

    pub fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "success" => Self::Success,
            "failure" | "fail" => Self::Failure,
            "rerecord" | "re-record" => Self::Rerecord,
            "stop" => Self::Stop,
            "start" | "next" => Self::Start,
            _ => return None,
        })
    }
}

/// The latest episode request, read by the tick with one swap.
#[derive(Debug, Clone, Default)]
pub struct EpisodeRequests {
    code: Arc<AtomicU8>,
}

impl EpisodeRequests {
    pub fn raise(&self, request: EpisodeRequest) {
        self.code.store(request as u8, Ordering::Release);
    }

    pub fn take(&self) -> Option<EpisodeRequest> {
        EpisodeRequest::from_code(self.code.swap(0, Ordering::AcqRel))
    }

    /// Whether a raised request is still waiting for the tick.
    pub fn pending(&self) -> bool {
        self.code.load(Ordering::Acquire) != 0
    }
}

/// How an episode ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
    TimeLimit,
    /// Ended by `Stop` or by the end of the run.
    Stopped,
    /// Dropped (re-record).
    Rerecord,
}

/// One dataset row as the tick captured it. Preallocated and recycled.
#[derive(Debug, Clone)]
pub struct FrameRow {
    pub tick: u64,
    /// The tick's time, ns on the run's clock.
    pub now_ns: u64,
    /// Measured joint positions (then the gripper opening), and their capture stamp.
    pub state: [f64; MAX_JOINTS + 1],
    pub state_stamp_ns: u64,
    /// What the policy (executor) asked for this tick, before the safety filter.
    pub policy_action: [f64; MAX_JOINTS + 1],
    /// The command published this tick (after the safety filter).
    pub executed: [f64; MAX_JOINTS + 1],
    /// Width of state and actions (joints, plus one with a gripper).
    pub width: usize,
    /// Safety flags raised this tick.
    pub flags: u32,
    /// Control periods skipped since the previous row (0: on time).
    pub skipped_periods: u64,
    /// Rows that could not be captured before this one (no free buffer).
    pub rows_lost: u64,
    /// Whether a person commanded this step (teleop).
    pub intervention: bool,
    /// The model whose chunk the executor ran (see `ActionChunk::model_version`).
    pub model_version: u32,
    /// The recorded cameras' newest frames (their stamps in the images).
    pub images: Vec<Image>,
    /// Per camera: no new frame since the previous row (the frame is repeated).
    pub repeated: Vec<bool>,
}

impl FrameRow {
    pub fn new(cameras: &[(usize, usize)]) -> Self {
        Self {
            tick: 0,
            now_ns: 0,
            state: [0.0; MAX_JOINTS + 1],
            state_stamp_ns: 0,
            policy_action: [0.0; MAX_JOINTS + 1],
            executed: [0.0; MAX_JOINTS + 1],
            width: 0,
            flags: 0,
            skipped_periods: 0,
            rows_lost: 0,
            intervention: false,
            model_version: 0,
            images: cameras.iter().map(|&(w, h)| Image::black(w, h)).collect(),
            repeated: vec![false; cameras.len()],
        }
    }
}

/// What the tick sends the recorder thread.
#[derive(Debug)]
pub enum EpisodeEvent {
    Begin { episode: u64, tick: u64 },
    Row(Box<FrameRow>),
    End { tick: u64, outcome: Outcome },
}

/// The queues between the tick and the recorder thread.
#[derive(Clone)]
pub struct EpisodePorts {
    pub events: Arc<ArrayQueue<EpisodeEvent>>,
    /// Empty row buffers (the recorder returns each after writing it).
    pub free: Arc<ArrayQueue<Box<FrameRow>>>,
    /// Set by the recorder when it cannot write (a full disk): the tick stops
    /// the episodes and ends the run.
    pub failed: Arc<AtomicBool>,
    /// Episodes the recorder saved so far.
    pub saved: Arc<AtomicU64>,
    /// Rows the recorder has taken and judged (the success classifier's verdict
    /// raised): under the simulated clock the tick waits for every queued row,
    /// so a verdict ends the episode at the same tick in every run.
    pub judged: Arc<AtomicU64>,
}

impl EpisodePorts {
    /// Queues with `rows` row buffers for cameras of the given sizes.
    pub fn new(rows: usize, cameras: &[(usize, usize)]) -> Self {
        let free = Arc::new(ArrayQueue::new(rows.max(1)));
        for _ in 0..rows.max(1) {
            let _ = free.push(Box::new(FrameRow::new(cameras)));
        }
        Self {
            // Begin / End events besides every row.
            events: Arc::new(ArrayQueue::new(rows.max(1) + 64)),
            free,
            failed: Arc::default(),
            saved: Arc::default(),
            judged: Arc::default(),
        }
    }
}

/// Checked episode timing, in ticks.
#[derive(Debug, Clone)]
pub struct EpisodePlan {
    /// Control rate / dataset fps: row k is taken at the tick nearest k times this.
    pub ticks_per_row: f64,
    pub episode_ticks: u64,
    pub reset_ticks: u64,
    pub episodes: Option<u64>,
    pub start: EpisodeStart,
    /// Indices (among the run's cameras) of the recorded ones.
    pub cameras: Vec<usize>,
    pub reset: Option<ResetParams>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Moving to the reset pose / waiting for the human reset, since `since`.
    Resetting {
        since: u64,
    },
    /// Reset over, waiting for `start`.
    Waiting,
    Recording {
        start: u64,
    },
    Finished,
}

/// What the tick must do about the episode this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpisodeAction {
    None,
    /// Begin moving to the reset pose (policy chunks are dropped).
    Reset,
    /// An episode ended: drivers hear it, then the reset begins.
    End,
    /// Begin an episode: the policy acts from the current command.
    Begin,
}

/// The tick's episode state: phase, row timing, and the queue to the recorder.
pub struct Episodes {
    pub plan: EpisodePlan,
    pub ports: EpisodePorts,
    pub requests: EpisodeRequests,
    phase: Phase,
    episode: u64,
    next_row_tick: u64,
    /// The episode's first tick and the next row's index in it.
    episode_start: u64,
    next_row: u64,
    last_row_tick: Option<u64>,
    rows_lost: u64,
    /// Rows queued for the recorder (what `ports.judged` catches up with).
    queued: u64,
    pub rows: u64,
    pub rows_lost_total: u64,
    last_seq: Vec<u64>,
    reached: bool,
    started: bool,
    saved_this_run: u64,
    /// Under the simulated clock: wait for row buffers instead of losing rows.
    pub wait_for_recorder: bool,
}

impl Episodes {
    pub fn new(
        plan: EpisodePlan,
        ports: EpisodePorts,
        requests: EpisodeRequests,
        first_episode: u64,
    ) -> Self {
        let cameras = plan.cameras.len();
        Self {
            plan,
            ports,
            requests,
            phase: Phase::Resetting { since: 0 },
            episode: first_episode,
            next_row_tick: 0,
            episode_start: 0,
            next_row: 0,
            last_row_tick: None,
            rows_lost: 0,
            queued: 0,
            rows: 0,
            rows_lost_total: 0,
            last_seq: vec![0; cameras],
            reached: false,
            started: false,
            saved_this_run: 0,
            wait_for_recorder: false,
        }
    }

    pub fn recording(&self) -> bool {
        matches!(self.phase, Phase::Recording { .. })
    }

    pub fn finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// The first tick of the run: the reset before the first episode begins.
    fn start(&mut self, tick: u64) -> EpisodeAction {
        self.started = true;
        self.phase = Phase::Resetting { since: tick };
        self.reached = self.plan.reset.is_none();
        EpisodeAction::Reset
    }

    /// Tells the phase machine the reset motion reached its pose.
    pub fn reset_reached(&mut self) {
        self.reached = true;
    }

    fn end(&mut self, tick: u64, outcome: Outcome) -> EpisodeAction {
        let _ = self.ports.events.push(EpisodeEvent::End { tick, outcome });
        if outcome != Outcome::Rerecord {
            self.episode += 1;
        }
        if outcome != Outcome::Rerecord {
            self.saved_this_run += 1;
        }
        let enough = self.plan.episodes.is_some_and(|n| self.saved_this_run >= n);
        if outcome == Outcome::Stopped || enough {
            self.phase = Phase::Finished;
            return EpisodeAction::End;
        }
        self.phase = Phase::Resetting { since: tick };
        self.reached = self.plan.reset.is_none();
        EpisodeAction::End
    }

    /// Ends the open episode when the run ends (saved as stopped).
    pub fn stop(&mut self, tick: u64) {
        if self.recording() {
            self.end(tick, Outcome::Stopped);
        }
        self.phase = Phase::Finished;
    }

    /// Before the tick's step: operator requests, the time limit, the end of
    /// the reset. Returns what the tick must do.
    pub fn decide(&mut self, tick: u64) -> EpisodeAction {
        if !self.started {
            return self.start(tick);
        }
        if self.ports.failed.load(Ordering::Acquire) && self.phase != Phase::Finished {
            tracing::error!("recording failed: no more episodes; the arm is brought to rest");
            self.phase = Phase::Finished;
            return EpisodeAction::Reset;
        }
        self.wait_for_verdicts();
        let request = self.requests.take();
        match self.phase {
            Phase::Recording { start } => {
                let outcome = match request {
                    Some(EpisodeRequest::Success) => Some(Outcome::Success),
                    Some(EpisodeRequest::Failure) => Some(Outcome::Failure),
                    Some(EpisodeRequest::Rerecord) => Some(Outcome::Rerecord),
                    Some(EpisodeRequest::Stop) => Some(Outcome::Stopped),
                    _ if tick - start >= self.plan.episode_ticks => Some(Outcome::TimeLimit),
                    _ => None,
                };
                match outcome {
                    Some(outcome) => {
                        tracing::info!("episode {} ended: {outcome:?}", self.episode);
                        self.end(tick, outcome)
                    }
                    None => EpisodeAction::None,
                }
            }
            Phase::Resetting { since } => {
                if request == Some(EpisodeRequest::Stop) {
                    self.phase = Phase::Finished;
                    return EpisodeAction::None;
                }
                if self.reached && tick - since >= self.plan.reset_ticks {
                    if self.plan.start == EpisodeStart::Key
                        && request != Some(EpisodeRequest::Start)
                    {
                        tracing::info!(
                            "reset done: `reflex episode start` (or →) starts episode {}",
                            self.episode
                        );
                        self.phase = Phase::Waiting;
                        return EpisodeAction::None;
                    }
                    return self.begin(tick);
                }
                EpisodeAction::None
            }
            Phase::Waiting => match request {
                Some(EpisodeRequest::Start | EpisodeRequest::Success) => self.begin(tick),
                Some(EpisodeRequest::Stop) => {
                    self.phase = Phase::Finished;
                    EpisodeAction::None
                }
                _ => EpisodeAction::None,
            },
            Phase::Finished => EpisodeAction::None,
        }
    }

    fn begin(&mut self, tick: u64) -> EpisodeAction {
        tracing::info!("episode {} begins", self.episode);
        let _ = self.ports.events.push(EpisodeEvent::Begin {
            episode: self.episode,
            tick,
        });
        self.phase = Phase::Recording { start: tick };
        self.next_row_tick = tick;
        self.episode_start = tick;
        self.next_row = 0;
        self.last_row_tick = None;
        self.rows_lost = 0;
        EpisodeAction::Begin
    }

    /// Whether this tick is (at or past) the next row's tick; `fill` then
    /// writes the row into a free buffer, which is queued.
    pub fn capture(&mut self, tick: u64, fill: impl FnOnce(&mut FrameRow, &[usize])) {
        if !self.recording() || tick < self.next_row_tick {
            return;
        }
        let skipped = tick - self.next_row_tick;
        // The next row due after this tick (rows whose ticks were skipped are
        // not made up: this one stands for them, flagged).
        while self.next_row_tick <= tick {
            self.next_row += 1;
            self.next_row_tick = self.episode_start
                + (self.next_row as f64 * self.plan.ticks_per_row).round() as u64;
        }
        let Some(mut row) = self.free_row() else {
            self.rows_lost += 1;
            self.rows_lost_total += 1;
            return;
        };
        row.tick = tick;
        row.skipped_periods = skipped;
        row.rows_lost = std::mem::take(&mut self.rows_lost);
        row.intervention = false;
        fill(&mut row, &self.plan.cameras);
        for (c, seq) in self.last_seq.iter_mut().enumerate() {
            let new = row.images.get(c).map_or(0, |i| i.seq);
            row.repeated[c] = new == *seq;
            *seq = new;
        }
        self.last_row_tick = Some(tick);
        self.rows += 1;
        let mut event = EpisodeEvent::Row(row);
        loop {
            match self.ports.events.push(event) {
                Ok(()) => {
                    self.queued += 1;
                    return;
                }
                Err(back)
                    if self.wait_for_recorder && !self.ports.failed.load(Ordering::Acquire) =>
                {
                    event = back;
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
                Err(back) => {
                    self.rows_lost += 1;
                    self.rows_lost_total += 1;
                    if let EpisodeEvent::Row(row) = back {
                        let _ = self.ports.free.push(row);
                    }
                    return;
                }
            }
        }
    }

    /// Under the simulated clock, waits until the recorder has judged every
    /// queued row, so that a classifier's success (raised as a request) is taken
    /// at the tick after its row in every run, however fast the recorder is.
    fn wait_for_verdicts(&self) {
        while self.wait_for_recorder
            && self.ports.judged.load(Ordering::Acquire) < self.queued
            && !self.ports.failed.load(Ordering::Acquire)
        {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }

    /// A free row buffer; under the simulated clock the tick waits for the
    /// recorder (time stands still, so the recording stays complete and the
    /// same for every run), on the wall clock it never waits.
    fn free_row(&self) -> Option<Box<FrameRow>> {
        loop {
            if let Some(row) = self.ports.free.pop() {
                return Some(row);
            }
            if !self.wait_for_recorder || self.ports.failed.load(Ordering::Acquire) {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }
}

/// What a run recorded (the summary's `episodes`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EpisodesReport {
    /// The dataset directory.
    pub root: String,
    /// The dataset's episode count when the run started (`--resume`).
    pub first_episode: u64,
    pub saved: u64,
    pub successes: u64,
    /// Re-recorded (dropped) episodes.
    pub discarded: u64,
    pub frames: u64,
    /// Rows the tick could not capture (no free buffer: the recorder fell behind).
    pub rows_lost: u64,
    pub total_episodes: u64,
    /// Time to finalize each saved episode, ms.
    pub finalize_ms: Vec<f64>,
    /// Why recording stopped early (a full disk, say).
    pub error: Option<String>,
}
