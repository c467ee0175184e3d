//! Values that move through one tick. Joint vectors are fixed-capacity arrays so that
//! states and commands are `Copy` and cross thread boundaries without allocating.

use std::sync::OnceLock;
use std::time::Instant;

/// The most joints one arm may have (pi0-style models pad action vectors to 32).
pub const MAX_JOINTS: usize = 32;

/// Nanoseconds on the process-wide monotonic clock (0 = first call).
///
/// Under the simulated clock, drivers stamp samples with simulated time instead.
pub fn monotonic_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_nanos() as u64
}

/// A measured joint state as an arm driver reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JointState {
    /// Identifies one run of the robot's driver (e.g. its start time); a driver
    /// that restarts picks a larger epoch and may start its `seq` again. 0 = unknown.
    pub epoch: u64,
    /// Increases with every sample of an epoch; 0 means "no sample yet".
    pub seq: u64,
    /// Capture time, ns on the run's clock.
    pub stamp_ns: u64,
    pub joints: usize,
    pub position: [f64; MAX_JOINTS],
    pub velocity: [f64; MAX_JOINTS],
    /// The gripper's measured opening (`[robot.gripper]` units), when the arm has
    /// one and reports it.
    pub gripper: Option<f64>,
}

impl JointState {
    pub fn empty(joints: usize) -> Self {
        Self {
            epoch: 0,
            seq: 0,
            stamp_ns: 0,
            joints,
            position: [0.0; MAX_JOINTS],
            velocity: [0.0; MAX_JOINTS],
            gripper: None,
        }
    }

    pub fn positions(&self) -> &[f64] {
        &self.position[..self.joints]
    }

    pub fn velocities(&self) -> &[f64] {
        &self.velocity[..self.joints]
    }
}

/// One joint-position command, as published to the arm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JointCommand {
    /// Strictly increasing per run, starting at 1.
    pub seq: u64,
    /// The tick that produced it.
    pub tick: u64,
    /// Time the tick computed it, ns on the run's clock.
    pub stamp_ns: u64,
    pub joints: usize,
    pub position: [f64; MAX_JOINTS],
    /// Commanded velocity, rad/s: the slope the filter moves the command with.
    pub velocity: [f64; MAX_JOINTS],
    /// Commanded acceleration, rad/s^2.
    pub acceleration: [f64; MAX_JOINTS],
    /// The gripper's command (`[robot.gripper]`), when the robot has one.
    pub gripper: Option<f64>,
}

impl JointCommand {
    pub fn empty(joints: usize) -> Self {
        Self {
            seq: 0,
            tick: 0,
            stamp_ns: 0,
            joints,
            position: [0.0; MAX_JOINTS],
            velocity: [0.0; MAX_JOINTS],
            acceleration: [0.0; MAX_JOINTS],
            gripper: None,
        }
    }

    pub fn positions(&self) -> &[f64] {
        &self.position[..self.joints]
    }
}

/// An RGB8 image, row-major, `width * height * 3` bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub seq: u64,
    pub stamp_ns: u64,
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl Image {
    pub fn black(width: usize, height: usize) -> Self {
        Self {
            seq: 0,
            stamp_ns: 0,
            width,
            height,
            rgb: vec![0; width * height * 3],
        }
    }

    /// Copies `other` into `self`, reusing the allocation when sizes match.
    pub fn copy_from(&mut self, other: &Image) {
        self.seq = other.seq;
        self.stamp_ns = other.stamp_ns;
        self.width = other.width;
        self.height = other.height;
        self.rgb.clone_from(&other.rgb);
    }
}

/// One sample of a tensor or audio stream: float32 values of the stream's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSample {
    /// Increases with every sample; 0 means "no sample yet".
    pub seq: u64,
    /// Capture time, ns on the run's clock.
    pub stamp_ns: u64,
    pub values: Vec<f32>,
}

impl TensorSample {
    pub fn zeros(len: usize) -> Self {
        Self {
            seq: 0,
            stamp_ns: 0,
            values: vec![0.0; len],
        }
    }

    /// Copies `other` into `self`, reusing the allocation when sizes match.
    pub fn copy_from(&mut self, other: &TensorSample) {
        self.seq = other.seq;
        self.stamp_ns = other.stamp_ns;
        self.values.clone_from(&other.values);
    }
}

/// What the policy sees: a snapshot taken by the tick and handed to the inference worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The tick the snapshot was taken at; the chunk it produces is aligned to it.
    pub tick: u64,
    pub stamp_ns: u64,
    pub joints: JointState,
    /// The joint command the loop published at `tick` (velocity targets are
    /// integrated from it).
    pub command: [f64; MAX_JOINTS],
    /// One image per camera, in launch-file order.
    pub images: Vec<Image>,
    /// One sample per tensor or audio stream, in launch-file order (seq 0: none
    /// yet, or masked as stale).
    pub tensors: Vec<TensorSample>,
    /// Earlier observations for inputs with `history` (LeRobot's `n_obs_steps`),
    /// newest first: `history[k]` is from `k + 1` action periods before `stamp_ns`.
    pub history: Vec<PastFrame>,
    /// The executor's plan at this chunk's action times (row k: the target it
    /// would command at `tick + (k + 1) * ticks_per_action`), as far as the plan
    /// reaches: the first `committed_len` rows of `[horizon][joints]`. Real-time
    /// chunking keeps the rows that run while the chunk is computed and steers
    /// the chunk toward the rest.
    pub committed: Vec<f64>,
    pub committed_len: usize,
    /// Values per committed row: the joints, and the gripper when there is one.
    pub committed_width: usize,
    /// Ticks the chunk is expected to take to arrive (the simulated clock's
    /// `sim_inference_ticks`, else a percentile of the recent latencies).
    pub expected_delay_ticks: u64,
}

/// One earlier observation.
#[derive(Debug, Clone, PartialEq)]
pub struct PastFrame {
    pub stamp_ns: u64,
    pub joints: JointState,
    pub images: Vec<Image>,
    pub tensors: Vec<TensorSample>,
}

impl PastFrame {
    pub fn copy_from(&mut self, other: &PastFrame) {
        self.stamp_ns = other.stamp_ns;
        self.joints = other.joints;
        for (mine, theirs) in self.images.iter_mut().zip(&other.images) {
            mine.copy_from(theirs);
        }
        for (mine, theirs) in self.tensors.iter_mut().zip(&other.tensors) {
            mine.copy_from(theirs);
        }
    }
}

/// One frame of an observation as inputs read it: now or a past one.
pub struct Frame<'a> {
    pub joints: &'a JointState,
    pub images: &'a [Image],
    pub tensors: &'a [TensorSample],
}

impl Observation {
    /// An all-black, zero-state observation with images of `image_sizes`
    /// (width, height), tensors of `tensor_lens` values, `frames - 1` past frames
    /// like it, and room for `committed` values: the buffers that circulate between
    /// the tick and the inference thread (allocates; made once).
    pub fn blank(
        joints: usize,
        image_sizes: &[(usize, usize)],
        tensor_lens: &[usize],
        frames: usize,
        committed: usize,
    ) -> Self {
        let images: Vec<Image> = image_sizes
            .iter()
            .map(|&(width, height)| Image::black(width, height))
            .collect();
        let tensors: Vec<TensorSample> = tensor_lens
            .iter()
            .map(|&n| TensorSample::zeros(n))
            .collect();
        let past = PastFrame {
            stamp_ns: 0,
            joints: JointState::empty(joints),
            images: images.clone(),
            tensors: tensors.clone(),
        };
        Self {
            history: vec![past; frames.saturating_sub(1)],
            images,
            tensors,
            committed: vec![0.0; committed],
            ..Self::of_joints(0, JointState::empty(joints))
        }
    }

    /// An observation with no images and no history.
    pub fn of_joints(tick: u64, joints: JointState) -> Self {
        Self {
            tick,
            stamp_ns: 0,
            command: joints.position,
            joints,
            images: Vec::new(),
            tensors: Vec::new(),
            history: Vec::new(),
            committed: Vec::new(),
            committed_len: 0,
            committed_width: joints.joints,
            expected_delay_ticks: 0,
        }
    }

    /// The committed targets as rows of `committed_width` values.
    pub fn committed_rows(&self) -> impl Iterator<Item = &[f64]> {
        let width = self.committed_width.max(1);
        self.committed[..(self.committed_len * width).min(self.committed.len())].chunks(width)
    }

    /// Copies `other` into `self`, reusing every buffer when the sizes match.
    pub fn copy_from(&mut self, other: &Observation) {
        self.tick = other.tick;
        self.stamp_ns = other.stamp_ns;
        self.joints = other.joints;
        self.command = other.command;
        for (mine, theirs) in self.images.iter_mut().zip(&other.images) {
            mine.copy_from(theirs);
        }
        for (mine, theirs) in self.tensors.iter_mut().zip(&other.tensors) {
            mine.copy_from(theirs);
        }
        for (mine, theirs) in self.history.iter_mut().zip(&other.history) {
            mine.copy_from(theirs);
        }
        self.committed.clone_from(&other.committed);
        self.committed_len = other.committed_len;
        self.committed_width = other.committed_width;
        self.expected_delay_ticks = other.expected_delay_ticks;
    }

    /// The joints, images and tensors `back` frames ago (0: now). Before enough
    /// history exists the oldest frame there is stands in (LeRobot fills its queue
    /// with the first observation the same way).
    pub fn frame(&self, back: usize) -> Frame<'_> {
        match back
            .checked_sub(1)
            .and_then(|k| self.history.get(k).or(self.history.last()))
        {
            Some(past) => Frame {
                joints: &past.joints,
                images: &past.images,
                tensors: &past.tensors,
            },
            None => Frame {
                joints: &self.joints,
                images: &self.images,
                tensors: &self.tensors,
            },
        }
    }
}

/// A chunk of future joint-position targets produced by one inference.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionChunk {
    /// Identifies the chunk in logs (per run, from 1).
    pub id: u64,
    /// The tick whose observation produced this chunk.
    pub conditioned_on_tick: u64,
    pub horizon: usize,
    pub dim: usize,
    /// Row-major [horizon][dim].
    pub actions: Vec<f32>,
    /// Inference wall time, ns (0 under the simulated clock's accounting).
    pub infer_ns: u64,
    /// Which model produced it: 0 for the launch file's, then 1, 2, ... for each
    /// model swapped in at run time (`[zenoh] model_updates`).
    pub model_version: u32,
    /// What a ranking stage chose it from (empty when no stage scored).
    pub choice: ChunkChoice,
    /// The initial noise it was sampled from, `[horizon][model dim]`, when a
    /// latent-noise policy (DSRL) steers the sampler; empty otherwise.
    pub noise: Vec<f32>,
    /// True when that noise is the latent-noise policy's w (false: a seeded
    /// candidate a ranking stage preferred).
    pub noise_from_latent: bool,
}

/// The candidates a ranking chunk stage (V-GPS) chose a chunk from: for the log,
/// the status line and the summary. Its buffers are kept across chunks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChunkChoice {
    /// The executed candidate.
    pub selected: u32,
    /// One score per candidate (e.g. Q values); empty when none were scored.
    pub scores: Vec<f32>,
    /// Every candidate, row-major `[K][horizon][dim]`.
    pub candidates: Vec<f32>,
}

impl ChunkChoice {
    /// Largest minus smallest score (0 when unscored).
    pub fn spread(&self) -> f32 {
        let (lo, hi) = self
            .scores
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &q| {
                (lo.min(q), hi.max(q))
            });
        if self.scores.is_empty() { 0.0 } else { hi - lo }
    }
}

impl ActionChunk {
    pub fn zeros(horizon: usize, dim: usize) -> Self {
        Self {
            id: 0,
            conditioned_on_tick: 0,
            horizon,
            dim,
            actions: vec![0.0; horizon * dim],
            infer_ns: 0,
            model_version: 0,
            choice: ChunkChoice::default(),
            noise: Vec::new(),
            noise_from_latent: false,
        }
    }

    pub fn step(&self, k: usize) -> &[f32] {
        &self.actions[k * self.dim..(k + 1) * self.dim]
    }

    /// True when every value is finite.
    pub fn is_finite(&self) -> bool {
        self.actions.iter().all(|a| a.is_finite())
    }
}
