//! Launch files: one TOML file per robot, deserialized into typed configs.
//!
//! Every error names the file, line, column and field path. Syntax and type errors
//! come from the TOML parser's span; semantic errors (limits that make no sense, a
//! camera that does not exist, a missing model) carry a field path that is looked
//! up in the document to find its position. `--set key=value` overrides are applied
//! to the document before it is deserialized, and errors in an overridden field
//! name the override instead of a file position.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Launch files larger than this are refused before parsing.
pub const MAX_LAUNCH_BYTES: u64 = crate::files::MAX_CONFIG_BYTES;

// Bounds of launch-file values: beyond them a run would panic, hang, allocate
// without bound or silently lose its protection.
/// `max_state_age_ms` and `estop_after_stale_ms`, ms.
pub const MAX_STALE_MS: f64 = 60_000.0;
/// `startup_timeout_ms`, ms (one hour).
pub const MAX_STARTUP_TIMEOUT_MS: f64 = 3_600_000.0;
pub const MAX_SIM_INFERENCE_TICKS: u64 = 100_000;
/// `drivers.sim_arm[].physics_hz`, Hz.
pub const MAX_PHYSICS_HZ: f64 = 100_000.0;
pub const MAX_CAMERA_FPS: f64 = 1000.0;
/// ONNX Runtime intra-op threads.
pub const MAX_INTRA_THREADS: usize = 256;
/// Actions per chunk.
pub const MAX_HORIZON: usize = 10_000;
/// Width of a model's action or joint-vector input (pi0 pads to 32).
pub const MAX_ACTION_DIM: usize = 4096;
pub const MAX_FAST_TOKENS: usize = 65_536;
/// Height and width a camera image is resized to.
pub const MAX_IMAGE_SIDE: usize = 4096;
/// Robot, joint, driver and camera names.
pub const MAX_NAME_BYTES: usize = 128;
/// `zenoh.status_hz`, Hz.
pub const STATUS_HZ_RANGE: (f64, f64) = (0.1, 100.0);
use crate::robot_model::{JointKind, ModelJoint, RobotModel, WorkspaceBox};

/// The launch file of the simulated-arm demo, compiled in as the default.
pub const EMBEDDED_SIM_ARM: &str = include_str!("../../launch/sim_arm.toml");

/// The whole launch file.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LaunchFile {
    pub robot: RobotConfig,
    #[serde(default)]
    pub control: ControlConfig,
    pub drivers: DriversConfig,
    pub policy: PolicySection,
    #[serde(default)]
    pub safety: SafetyConfig,
    #[serde(default)]
    pub zenoh: ZenohConfig,
    #[serde(default)]
    pub onnxruntime: OnnxRuntimeConfig,
    /// Seeds every random choice of the run (targets, sampling noise).
    #[serde(default)]
    pub seed: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RobotConfig {
    /// Used in zenoh keys: `<prefix>/<name>/joint_commands`.
    pub name: String,
    /// A URDF file (relative to the launch file) that gives the joints, their limits
    /// and the kinematic chain; `[[robot.joints]]` entries then override its limits
    /// by joint name, and only joints the URDF has no limit for need one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urdf: Option<PathBuf>,
    /// The arm's last link in the URDF: the robot's joints are the movable joints
    /// from the root to it. Needed only when the URDF's movable joints branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tip_link: Option<String>,
    /// `[[robot.joints]]` as written. Without a URDF every entry gives position,
    /// velocity and acceleration; with one, entries name URDF joints and give only
    /// what they override or the URDF lacks.
    #[serde(rename = "joints", default)]
    pub joint_entries: Vec<JointEntry>,
    /// The robot's joints after loading (the entries merged with the URDF, in the
    /// URDF chain's order): what the rest of reflex uses.
    #[serde(skip)]
    pub joints: Vec<JointConfig>,
}

/// One `[[robot.joints]]` entry: a joint's limits as the launch file writes them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JointEntry {
    pub name: String,
    /// `[min, max]` in rad (or m for prismatic joints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<[f64; 2]>,
    /// Maximum speed, rad/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub velocity: Option<f64>,
    /// Maximum acceleration, rad/s^2 (URDF has none: always needed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceleration: Option<f64>,
    /// Maximum jerk, rad/s^3; without it the filter bounds only acceleration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jerk: Option<f64>,
}

/// Limits of one joint, applied to every command: position, velocity,
/// acceleration and (optionally) jerk.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JointConfig {
    pub name: String,
    /// `[min, max]` in rad (or m for prismatic joints).
    pub position: [f64; 2],
    /// Maximum speed, rad/s.
    pub velocity: f64,
    /// Maximum acceleration, rad/s^2.
    pub acceleration: f64,
    /// Maximum jerk, rad/s^3; without it the filter bounds only acceleration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jerk: Option<f64>,
}

impl JointConfig {
    /// Checks the limits make sense; on error returns the offending field
    /// (`position`, `velocity`, ...) and what is wrong with it.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let [lo, hi] = self.position;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err((
                "position",
                format!("must be [min, max] with min < max, found [{lo}, {hi}]"),
            ));
        }
        let positive = [
            ("velocity", Some(self.velocity)),
            ("acceleration", Some(self.acceleration)),
            ("jerk", self.jerk),
        ];
        for (field, value) in positive {
            if let Some(value) = value
                && !(value.is_finite() && value > 0.0)
            {
                return Err((field, format!("must be a positive number, found {value}")));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Control loop rate, Hz.
    #[serde(default = "defaults::rate_hz")]
    pub rate_hz: f64,
    /// Busy-wait this long before each deadline instead of sleeping, µs.
    #[serde(default = "defaults::spin_us")]
    pub spin_us: u64,
    /// The watchdog stops the arm when the joint state is older than this, ms.
    #[serde(default = "defaults::max_state_age_ms")]
    pub max_state_age_ms: f64,
    /// How long to wait for the first joint state before giving up, ms.
    #[serde(default = "defaults::startup_timeout_ms")]
    pub startup_timeout_ms: f64,
    /// Under the simulated clock, a chunk requested at tick t is applied at tick
    /// t + this (models inference latency deterministically).
    #[serde(default = "defaults::sim_inference_ticks")]
    pub sim_inference_ticks: u64,
    #[serde(default)]
    pub realtime: RealtimeConfig,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            rate_hz: defaults::rate_hz(),
            spin_us: defaults::spin_us(),
            max_state_age_ms: defaults::max_state_age_ms(),
            startup_timeout_ms: defaults::startup_timeout_ms(),
            sim_inference_ticks: defaults::sim_inference_ticks(),
            realtime: RealtimeConfig::default(),
        }
    }
}

/// Optional real-time settings for the control thread; each warns and continues
/// when the OS does not permit it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RealtimeConfig {
    /// SCHED_FIFO priority (1..=99).
    pub fifo_priority: Option<u8>,
    /// CPUs the control thread is pinned to.
    #[serde(default)]
    pub cpus: Vec<usize>,
    /// mlockall(MCL_CURRENT | MCL_FUTURE).
    #[serde(default)]
    pub lock_memory: bool,
}

/// Drivers by kind; each kind is an array of tables, e.g. `[[drivers.sim_arm]]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DriversConfig {
    #[serde(default)]
    pub sim_arm: Vec<SimArmConfig>,
    #[serde(default)]
    pub zenoh_arm: Vec<ZenohArmConfig>,
}

/// A simulated planar arm with joint-space servo dynamics and a top-down camera.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimArmConfig {
    #[serde(default = "defaults::arm_name")]
    pub name: String,
    /// One length per joint, m; the arm moves in the plane.
    pub link_lengths: Vec<f64>,
    /// Physics steps per second when running on the wall clock.
    #[serde(default = "defaults::physics_hz")]
    pub physics_hz: f64,
    /// Servo stiffness, 1/s^2.
    #[serde(default = "defaults::stiffness")]
    pub stiffness: f64,
    /// Servo damping, 1/s.
    #[serde(default = "defaults::damping")]
    pub damping: f64,
    /// Joint positions at start, rad (default: all zero).
    #[serde(default)]
    pub initial_position: Vec<f64>,
    /// A new target is drawn every this many seconds.
    #[serde(default = "defaults::episode_seconds")]
    pub episode_seconds: f64,
    /// The end effector counts as on target within this distance, m.
    #[serde(default = "defaults::target_tolerance")]
    pub target_tolerance: f64,
    pub camera: Option<SimCameraConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimCameraConfig {
    /// Referenced by policy inputs as `camera.<name>`.
    pub name: String,
    pub width: usize,
    pub height: usize,
    pub fps: f64,
}

/// An arm reached over zenoh: commands out, joint states in.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ZenohArmConfig {
    #[serde(default = "defaults::arm_name")]
    pub name: String,
    /// Default `<prefix>/<robot>/joint_commands`.
    pub command_key: Option<String>,
    /// Default `<prefix>/<robot>/joint_states`.
    pub state_key: Option<String>,
}

/// Exactly one policy kind, e.g. `[policy.chunk]` or `[policy.fast]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    pub chunk: Option<ChunkPolicyConfig>,
    pub fast: Option<FastPolicyConfig>,
    pub flow: Option<FlowPolicyConfig>,
    pub diffusion: Option<DiffusionPolicyConfig>,
}

/// A flow-matching policy (pi0 / pi0.5 / SmolVLA convention): `t = 1` is noise,
/// `t = 0` is data; Euler steps `x += dt * v(x, t)` with `dt = -1 / num_steps`.
///
/// Single form (`model` only): the velocity graph takes the mapped observation
/// inputs plus `noisy_actions` [B, H, D] and `time` [B] and returns `velocity`
/// [B, H, D]. Split form (`prefix_model` too): the prefix graph runs once per chunk
/// on the observation; every one of its outputs is fed, by name, to the expert step
/// graph (`model`), which also takes `noisy_actions` and `time`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowPolicyConfig {
    /// The velocity graph (single form) or the expert step graph (split form).
    pub model: PathBuf,
    /// The prefix graph of the split form (observation -> cache tensors).
    pub prefix_model: Option<PathBuf>,
    pub action_rate_hz: f64,
    pub replan_after: usize,
    #[serde(default = "defaults::intra_threads")]
    pub intra_threads: usize,
    /// Euler steps per chunk.
    #[serde(default = "defaults::flow_steps")]
    pub num_steps: usize,
    /// Chunks sampled per inference (B); above 1 needs a dynamic batch dimension.
    /// The first is executed.
    #[serde(default = "defaults::batch")]
    pub batch: usize,
    pub inputs: Vec<InputConfig>,
    pub actions: GenerativeActions,
    pub norm_stats: Option<NormStatsConfig>,
    #[serde(default)]
    pub ports: FlowPorts,
}

/// Names of the sampler's ports in the velocity / expert graph.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowPorts {
    #[serde(default = "defaults::noisy_actions")]
    pub noisy_actions: String,
    #[serde(default = "defaults::time")]
    pub time: String,
    #[serde(default = "defaults::velocity")]
    pub output: String,
}

impl Default for FlowPorts {
    fn default() -> Self {
        Self {
            noisy_actions: defaults::noisy_actions(),
            time: defaults::time(),
            output: defaults::velocity(),
        }
    }
}

/// A diffusion policy: an eps-prediction network sampled with DDIM (eta = 0) on a
/// noise schedule. The graph takes the mapped observation inputs plus
/// `noisy_actions` [B, H, D] and `timestep` [B] (int64 or float32) and returns
/// `eps` [B, H, D].
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiffusionPolicyConfig {
    pub model: PathBuf,
    pub action_rate_hz: f64,
    pub replan_after: usize,
    #[serde(default = "defaults::intra_threads")]
    pub intra_threads: usize,
    /// DDIM steps per chunk.
    #[serde(default = "defaults::ddim_steps")]
    pub num_steps: usize,
    #[serde(default = "defaults::batch")]
    pub batch: usize,
    pub inputs: Vec<InputConfig>,
    pub actions: GenerativeActions,
    pub norm_stats: Option<NormStatsConfig>,
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub ports: DiffusionPorts,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiffusionPorts {
    #[serde(default = "defaults::noisy_actions")]
    pub noisy_actions: String,
    #[serde(default = "defaults::timestep")]
    pub timestep: String,
    #[serde(default = "defaults::eps")]
    pub output: String,
}

impl Default for DiffusionPorts {
    fn default() -> Self {
        Self {
            noisy_actions: defaults::noisy_actions(),
            timestep: defaults::timestep(),
            output: defaults::eps(),
        }
    }
}

/// The training noise schedule (diffusers `DDIMScheduler` semantics).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// `squared_cosine` (Diffusion Policy's `squaredcos_cap_v2`), `linear` or
    /// `scaled_linear`; or leave it out and give `file`.
    pub kind: Option<ScheduleKind>,
    /// A `.npy` (float32/float64 [T]) or JSON list of `alphas_cumprod`.
    pub file: Option<PathBuf>,
    /// T, the number of training timesteps.
    #[serde(default = "defaults::train_steps")]
    pub train_steps: usize,
    #[serde(default = "defaults::beta_start")]
    pub beta_start: f64,
    #[serde(default = "defaults::beta_end")]
    pub beta_end: f64,
    /// Clip the predicted clean sample to [-clip, clip] (Diffusion Policy: 1.0).
    pub clip_sample: Option<f32>,
    /// The last step goes to alpha_bar = 1 (diffusers' `set_alpha_to_one`).
    #[serde(default = "defaults::yes")]
    pub set_alpha_to_one: bool,
    #[serde(default)]
    pub steps_offset: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    SquaredCosine,
    Linear,
    ScaledLinear,
}

/// The action chunk of a generative policy, in the model's space.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerativeActions {
    /// H, actions per chunk.
    pub horizon: usize,
    /// D, the model's action width; the robot's joints are the first ones and the
    /// rest is padding (pi0: 32). Defaults to the number of joints.
    pub dim: Option<usize>,
    /// The model's actions are relative to the joint positions it saw (openpi's
    /// delta actions): the positions are added back after unnormalizing.
    #[serde(default)]
    pub delta: bool,
}

/// Normalization statistics from a file (openpi `norm_stats.json`, or the same
/// keys without the `norm_stats` wrapper).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NormStatsConfig {
    pub file: PathBuf,
    #[serde(default)]
    pub mode: NormMode,
    /// Which entry normalizes joint-vector inputs.
    #[serde(default = "defaults::state_key")]
    pub state_key: String,
    /// Which entry unnormalizes the actions.
    #[serde(default = "defaults::actions_key")]
    pub actions_key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NormMode {
    /// `(x - mean) / (std + 1e-6)` (pi0)
    #[default]
    ZScore,
    /// `(x - q01) / (q99 - q01 + 1e-6) * 2 - 1` (pi0-FAST, pi0.5)
    Quantile,
    /// `(x - min) / (max - min + 1e-8) * 2 - 1` (LeRobot MIN_MAX)
    MinMax,
}

/// An autoregressive VLA that emits FAST action tokens: a prefix graph run once per
/// chunk on the observation, then a decoder step graph run per token with a cache.
///
/// Prefix graph: the mapped observation inputs -> `logits` [1, V] and cache tensors
/// `present.<name>`. Step graph: `input_ids` [1, 1] int64 and `past.<name>` ->
/// `logits` [1, V] and `present.<name>`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FastPolicyConfig {
    /// The prefix graph (observation -> first logits + cache), relative to the launch file.
    pub prefix_model: PathBuf,
    /// The decoder step graph.
    pub model: PathBuf,
    /// Directory with `tokenizer.json` and `processor_config.json`.
    pub tokenizer: PathBuf,
    pub action_rate_hz: f64,
    pub replan_after: usize,
    #[serde(default = "defaults::intra_threads")]
    pub intra_threads: usize,
    pub inputs: Vec<InputConfig>,
    /// Stop decoding at this model token id (e.g. the id of `|`).
    pub end_token: u32,
    #[serde(default = "defaults::max_tokens")]
    pub max_tokens: usize,
    /// FAST id = `offset + sign * model id` (openpi with PaliGemma: 257023, -1).
    #[serde(default)]
    pub token_map: TokenMap,
    /// 0 decodes greedily; above 0 samples from softmax(logits / temperature) with
    /// a generator seeded by (seed, tick).
    #[serde(default)]
    pub temperature: f32,
    /// `strict` rejects sequences that do not give exactly T x D coefficients;
    /// `pad_missing` fills missing trailing coefficients with zeros.
    #[serde(default)]
    pub decode: FastDecode,
    /// Undo the quantile normalization of pi0-FAST: `(x + 1) / 2 * (q99 - q01) + q01`.
    pub quantiles: Option<Quantiles>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenMap {
    pub offset: i64,
    pub sign: i64,
}

impl Default for TokenMap {
    fn default() -> Self {
        Self { offset: 0, sign: 1 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FastDecode {
    #[default]
    Strict,
    PadMissing,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Quantiles {
    pub q01: Vec<f32>,
    pub q99: Vec<f32>,
}

/// The parts every policy kind has.
pub struct PolicyCommon<'a> {
    /// Launch-file path of the policy table, e.g. `policy.fast`.
    pub table: &'static str,
    pub model: &'a Path,
    pub action_rate_hz: f64,
    pub replan_after: usize,
    pub intra_threads: usize,
    pub inputs: &'a [InputConfig],
}

/// An ONNX model that maps observations to an action chunk `[1, H, D]` of absolute
/// joint positions.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChunkPolicyConfig {
    /// Path to the .onnx file, relative to the launch file.
    pub model: PathBuf,
    /// Rate of the actions in the chunk, Hz; the loop interpolates between them.
    pub action_rate_hz: f64,
    /// Ask for the next chunk after this many actions of the current one.
    pub replan_after: usize,
    /// ONNX Runtime intra-op threads.
    #[serde(default = "defaults::intra_threads")]
    pub intra_threads: usize,
    pub inputs: Vec<InputConfig>,
    pub actions: ActionsConfig,
}

/// One ONNX input and the observation that fills it.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// The ONNX input's name.
    pub name: String,
    /// `state.joint_positions`, `state.joint_velocities` or `camera.<name>`.
    #[schemars(with = "String")]
    pub source: ObservationSource,
    #[serde(default)]
    pub dtype: TensorDtype,
    /// The ONNX input's shape, batch included; -1 marks a dynamic dimension.
    pub shape: Vec<i64>,
    /// Image preprocessing (camera sources only).
    pub image: Option<ImagePreprocess>,
    /// z-score normalization of a vector source.
    pub normalize: Option<Normalization>,
    /// A camera the robot may not have (e.g. pi0's third view on a one-arm robot):
    /// when it is not in the launch file or sends no image, the input is a black
    /// image and its `camera_mask.<name>` input is false.
    #[serde(default)]
    pub optional: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TensorDtype {
    #[default]
    Float32,
    Uint8,
    /// Camera masks only.
    Bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ObservationSource {
    JointPositions,
    JointVelocities,
    Camera(String),
    /// True when the camera's image is present (pi0's `image_mask`).
    CameraMask(String),
}

impl TryFrom<String> for ObservationSource {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "state.joint_positions" => Ok(Self::JointPositions),
            "state.joint_velocities" => Ok(Self::JointVelocities),
            _ => match (
                text.strip_prefix("camera."),
                text.strip_prefix("camera_mask."),
            ) {
                (Some(name), _) if !name.is_empty() => Ok(Self::Camera(name.to_string())),
                (_, Some(name)) if !name.is_empty() => Ok(Self::CameraMask(name.to_string())),
                _ => Err(format!(
                    "unknown observation source `{text}`, expected `state.joint_positions`, \
                     `state.joint_velocities`, `camera.<name>` or `camera_mask.<name>`"
                )),
            },
        }
    }
}

impl From<ObservationSource> for String {
    fn from(source: ObservationSource) -> String {
        match source {
            ObservationSource::JointPositions => "state.joint_positions".into(),
            ObservationSource::JointVelocities => "state.joint_velocities".into(),
            ObservationSource::Camera(name) => format!("camera.{name}"),
            ObservationSource::CameraMask(name) => format!("camera_mask.{name}"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImagePreprocess {
    /// `[height, width]` the image is resized to.
    pub resize: [usize; 2],
    #[serde(default)]
    pub layout: ImageLayout,
    #[serde(default)]
    pub range: PixelRange,
    /// `stretch` resizes to exactly `resize`; `pad` keeps the aspect ratio and pads
    /// with black (openpi's `resize_with_pad`).
    #[serde(default)]
    pub mode: ResizeMode,
    /// Channel order the model expects (cameras deliver RGB).
    #[serde(default)]
    pub channels: ChannelOrder,
    /// `linear`: area averaging when the size divides evenly, else bilinear with
    /// half-pixel centres (OpenCV, torch `interpolate`); `pil_bilinear`: Pillow's
    /// antialiased bilinear on uint8, bit-exact (openpi's `resize_with_pad`).
    #[serde(default)]
    pub filter: ResizeFilter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResizeFilter {
    #[default]
    Linear,
    PilBilinear,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    #[default]
    Rgb,
    Bgr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    #[default]
    Stretch,
    Pad,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageLayout {
    #[default]
    Nchw,
    Nhwc,
}

/// How uint8 pixels map to float inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PixelRange {
    /// x / 255
    #[default]
    ZeroOne,
    /// x / 255 * 2 - 1 (SigLIP / pi0)
    MinusOneOne,
    /// x as is
    Raw,
}

/// `(x - mean) / (std + 1e-6)` on the way in, the inverse on the way out.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionsConfig {
    /// The ONNX output holding `[1, H, D]` actions.
    #[serde(default = "defaults::actions_output")]
    pub output: String,
    /// H, the number of actions in a chunk.
    pub horizon: usize,
    pub normalize: Option<Normalization>,
}

/// The safety filter's settings beyond the joint limits (see the README's Safety
/// section for the command contract they are part of).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SafetyConfig {
    /// Latch the e-stop after the joint state has been stale or invalid this long, ms.
    #[serde(default = "defaults::estop_after_stale_ms")]
    pub estop_after_stale_ms: f64,
    /// A measured joint up to this far past its position limit (rad) is accepted and
    /// commanded back inward, slowly; further out is a fault.
    #[serde(default = "defaults::state_limit_margin")]
    pub state_limit_margin: f64,
    /// The speed limit, as a fraction of the joint's, while a joint is brought back
    /// inside its limits.
    #[serde(default = "defaults::recovery_velocity_fraction")]
    pub recovery_velocity_fraction: f64,
    /// Re-arm is refused while any measured joint moves faster than this, rad/s.
    #[serde(default = "defaults::rearm_max_velocity")]
    pub rearm_max_velocity: f64,
    /// Re-arm is refused when a measured joint is further than this from the held
    /// command (the arm was moved while stopped), rad.
    #[serde(default = "defaults::rearm_position_tolerance")]
    pub rearm_position_tolerance: f64,
    /// Per joint, rad: the e-stop latches when the measured position is further than
    /// this from the command (plus the commanded velocity times `tracking_lag_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tracking_error: Option<Vec<f64>>,
    /// How far the robot is expected to lag the command, ms.
    #[serde(default = "defaults::tracking_lag_ms")]
    pub tracking_lag_ms: f64,
    #[serde(default)]
    pub operator: OperatorConfig,
    /// A box a URDF link must stay inside (needs `robot.urdf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<WorkspaceConfig>,
}

impl SafetyConfig {
    /// Checks the settings for a robot with `joints` joints; on error returns the
    /// field (under `safety.`) and what is wrong with it.
    pub fn check(&self, joints: usize) -> Result<(), (String, String)> {
        let safety = self;
        let stale = safety.estop_after_stale_ms;
        if !(stale > 0.0 && stale <= MAX_STALE_MS) {
            return Err((
                "estop_after_stale_ms".into(),
                format!("must be in (0, {MAX_STALE_MS}] ms, found {stale}"),
            ));
        }
        // (field, value, smallest allowed, largest allowed)
        let mut bounded = vec![
            ("state_limit_margin", safety.state_limit_margin, 0.0, 0.5),
            (
                "recovery_velocity_fraction",
                safety.recovery_velocity_fraction,
                0.0,
                1.0,
            ),
            ("rearm_max_velocity", safety.rearm_max_velocity, 0.0, 10.0),
            (
                "rearm_position_tolerance",
                safety.rearm_position_tolerance,
                0.0,
                1.0,
            ),
            ("tracking_lag_ms", safety.tracking_lag_ms, 0.0, 10_000.0),
        ];
        if let Some(ms) = safety.operator.heartbeat_ms {
            bounded.push(("operator.heartbeat_ms", ms, 1.0, 600_000.0));
        }
        for (field, value, lo, hi) in bounded {
            // Written so that NaN fails too.
            if !(value >= lo && value <= hi) {
                return Err((
                    field.to_string(),
                    format!("must be a number in [{lo}, {hi}], found {value}"),
                ));
            }
        }
        if safety.recovery_velocity_fraction == 0.0 {
            return Err((
                "recovery_velocity_fraction".into(),
                "must be above 0 (a joint past its limit could never come back)".into(),
            ));
        }
        if let Some(errors) = &safety.max_tracking_error {
            if errors.len() != joints {
                return Err((
                    "max_tracking_error".into(),
                    format!(
                        "has {} values, expected one per joint ({joints})",
                        errors.len()
                    ),
                ));
            }
            if let Some(bad) = errors.iter().find(|e| !(e.is_finite() && **e > 0.0)) {
                return Err((
                    "max_tracking_error".into(),
                    format!("each value must be a positive number of rad, found {bad}"),
                ));
            }
        }
        Ok(())
    }
}

impl Default for SafetyConfig {
    fn default() -> Self {
        Self {
            estop_after_stale_ms: defaults::estop_after_stale_ms(),
            state_limit_margin: defaults::state_limit_margin(),
            recovery_velocity_fraction: defaults::recovery_velocity_fraction(),
            rearm_max_velocity: defaults::rearm_max_velocity(),
            rearm_position_tolerance: defaults::rearm_position_tolerance(),
            max_tracking_error: None,
            tracking_lag_ms: defaults::tracking_lag_ms(),
            operator: OperatorConfig::default(),
            workspace: None,
        }
    }
}

/// Who may stop, re-arm and resume the arm. Stop is open to everyone (fail safe);
/// re-arm and resume come from this machine unless remote re-arm is turned on.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// Accept `rearm` / `resume` on the zenoh `control` key. Only together with a
    /// `zenoh.config_file` that sets up access control (see the README's Security).
    #[serde(default)]
    pub zenoh_rearm: bool,
    /// Deadman: when set, the e-stop latches if no operator heartbeat arrives
    /// within this many ms (`reflex heartbeat`, or `heartbeat` on `control`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_ms: Option<f64>,
    /// Read single keys from the run's terminal (s stop, r re-arm, g resume).
    #[serde(default = "defaults::yes")]
    pub terminal_keys: bool,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            zenoh_rearm: false,
            heartbeat_ms: None,
            terminal_keys: true,
        }
    }
}

/// `[safety.workspace]`: an axis-aligned box, in the URDF root link's frame (m),
/// that the origin of `link` must stay inside.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceConfig {
    /// A URDF link moved only by the robot's joints (e.g. the tool).
    pub link: String,
    /// `[x, y, z]` lower corner, m.
    pub min: [f64; 3],
    /// `[x, y, z]` upper corner, m.
    pub max: [f64; 3],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ZenohMode {
    #[default]
    Peer,
    Client,
    Router,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ZenohConfig {
    /// Turn the bus off entirely (sim-only runs, tests).
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    #[serde(default)]
    pub mode: ZenohMode,
    #[serde(default = "defaults::zenoh_listen")]
    pub listen: Vec<String>,
    #[serde(default)]
    pub connect: Vec<String>,
    #[serde(default)]
    pub multicast_scouting: bool,
    /// First segment of every key.
    #[serde(default = "defaults::key_prefix")]
    pub key_prefix: String,
    /// A zenoh JSON5 config file (TLS, mTLS, user/password, ACLs); the fields above
    /// are applied on top of it.
    pub config_file: Option<PathBuf>,
    /// How often the status message is published, Hz.
    #[serde(default = "defaults::status_hz")]
    pub status_hz: f64,
    /// Wire format of published joint commands: 1 (positions) or 2 (positions,
    /// commanded velocities and accelerations, for a robot-side interpolator).
    #[serde(default = "defaults::command_format")]
    pub command_format: u16,
}

impl Default for ZenohConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mode: ZenohMode::Peer,
            listen: defaults::zenoh_listen(),
            connect: Vec::new(),
            multicast_scouting: false,
            key_prefix: defaults::key_prefix(),
            config_file: None,
            status_hz: defaults::status_hz(),
            command_format: defaults::command_format(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OnnxRuntimeConfig {
    /// Path to libonnxruntime.so; searched for when absent.
    pub library: Option<PathBuf>,
    /// Execution providers in order of preference. One that cannot be registered
    /// (e.g. `cuda` with the CPU build of ONNX Runtime) is skipped with a warning;
    /// the CPU provider always remains as the fallback.
    #[serde(default = "defaults::providers")]
    pub providers: Vec<ExecutionProviderKind>,
    /// CUDA / TensorRT device.
    #[serde(default)]
    pub device_id: i32,
    /// TensorRT: build FP16 engines.
    #[serde(default)]
    pub tensorrt_fp16: bool,
    /// TensorRT: cache built engines here (relative to the launch file).
    pub tensorrt_cache: Option<PathBuf>,
    /// ONNX Runtime graph optimization level.
    #[serde(default = "defaults::optimization")]
    pub optimization: OptimizationLevel,
}

impl Default for OnnxRuntimeConfig {
    fn default() -> Self {
        Self {
            library: None,
            providers: defaults::providers(),
            device_id: 0,
            tensorrt_fp16: false,
            tensorrt_cache: None,
            optimization: defaults::optimization(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProviderKind {
    Cpu,
    Cuda,
    Tensorrt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OptimizationLevel {
    Disabled,
    Basic,
    Extended,
    All,
}

mod defaults {
    use super::{ExecutionProviderKind, OptimizationLevel};

    pub fn rate_hz() -> f64 {
        100.0
    }
    pub fn spin_us() -> u64 {
        200
    }
    pub fn max_state_age_ms() -> f64 {
        50.0
    }
    pub fn startup_timeout_ms() -> f64 {
        5000.0
    }
    pub fn sim_inference_ticks() -> u64 {
        3
    }
    pub fn arm_name() -> String {
        "arm".into()
    }
    pub fn physics_hz() -> f64 {
        1000.0
    }
    pub fn stiffness() -> f64 {
        400.0
    }
    pub fn damping() -> f64 {
        40.0
    }
    pub fn episode_seconds() -> f64 {
        5.0
    }
    pub fn target_tolerance() -> f64 {
        0.05
    }
    pub fn intra_threads() -> usize {
        1
    }
    pub fn max_tokens() -> usize {
        256
    }
    pub fn flow_steps() -> usize {
        10
    }
    pub fn ddim_steps() -> usize {
        10
    }
    pub fn batch() -> usize {
        1
    }
    pub fn noisy_actions() -> String {
        "noisy_actions".into()
    }
    pub fn time() -> String {
        "time".into()
    }
    pub fn velocity() -> String {
        "velocity".into()
    }
    pub fn timestep() -> String {
        "timestep".into()
    }
    pub fn eps() -> String {
        "eps".into()
    }
    pub fn train_steps() -> usize {
        100
    }
    pub fn beta_start() -> f64 {
        1e-4
    }
    pub fn beta_end() -> f64 {
        0.02
    }
    pub fn state_key() -> String {
        "state".into()
    }
    pub fn actions_key() -> String {
        "actions".into()
    }
    pub fn optimization() -> OptimizationLevel {
        OptimizationLevel::All
    }
    pub fn providers() -> Vec<ExecutionProviderKind> {
        vec![ExecutionProviderKind::Cpu]
    }
    pub fn actions_output() -> String {
        "actions".into()
    }
    pub fn command_format() -> u16 {
        1
    }
    pub fn state_limit_margin() -> f64 {
        0.05
    }
    pub fn recovery_velocity_fraction() -> f64 {
        0.1
    }
    pub fn rearm_max_velocity() -> f64 {
        0.05
    }
    pub fn rearm_position_tolerance() -> f64 {
        0.05
    }
    pub fn tracking_lag_ms() -> f64 {
        100.0
    }
    pub fn estop_after_stale_ms() -> f64 {
        500.0
    }
    pub fn yes() -> bool {
        true
    }
    pub fn zenoh_listen() -> Vec<String> {
        vec!["tcp/127.0.0.1:7447".into()]
    }
    pub fn key_prefix() -> String {
        "reflex".into()
    }
    pub fn status_hz() -> f64 {
        10.0
    }
}

/// A launch-file error: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct LaunchError {
    pub file: String,
    /// 1-based; 0 when the error has no position (e.g. unreadable file).
    pub line: usize,
    pub column: usize,
    /// Dotted field path, e.g. `policy.chunk.inputs[1].source`.
    pub field: String,
    pub message: String,
    /// Set when the field was given by `--set`.
    pub from_override: Option<String>,
}

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.from_override, self.line) {
            (Some(set), _) => write!(f, "{} (from --set {set})", self.file)?,
            (None, 0) => write!(f, "{}", self.file)?,
            (None, line) => write!(f, "{}:{line}:{}", self.file, self.column)?,
        }
        if !self.field.is_empty() {
            write!(f, ": field `{}`", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A parsed, validated launch file plus where it came from.
#[derive(Debug, Clone)]
pub struct Launch {
    pub config: LaunchFile,
    /// The launch file's text after overrides (written into run logs).
    pub text: String,
    /// Relative paths in the file are resolved against this directory.
    pub base_dir: PathBuf,
    pub origin: String,
    overrides: Vec<(String, String)>,
    /// The URDF model when `robot.urdf` is given.
    pub robot_model: Option<Arc<RobotModel>>,
    /// `[safety.workspace]`, resolved against the robot model.
    pub workspace: Option<WorkspaceBox>,
    /// Things worth a warning that do not stop the run (e.g. launch-file limits
    /// that override the URDF's); the binary prints them once at load.
    pub warnings: Vec<String>,
}

impl Launch {
    /// Reads and validates a launch file from disk.
    pub fn from_file(path: &Path, overrides: &[String]) -> Result<Self, LaunchError> {
        let origin = path.display().to_string();
        // Capped before parsing: a huge file (a 10M-element array) would otherwise
        // take gigabytes in the parser.
        let text = crate::files::read_to_string(path, MAX_LAUNCH_BYTES).map_err(|e| {
            let message = match e {
                crate::files::FileError::TooLarge { size, limit, .. } => format!(
                    "launch file is {size} bytes; launch files are limited to {}",
                    crate::files::human(limit)
                ),
                crate::files::FileError::NotFound { .. } => "launch file not found".into(),
                other => format!("cannot read launch file: {}", other.reason()),
            };
            LaunchError {
                file: origin.clone(),
                line: 0,
                column: 0,
                field: String::new(),
                message,
                from_override: None,
            }
        })?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_text(&text, &origin, base_dir, overrides)
    }

    /// The compiled-in simulated-arm launch file; its paths resolve against this
    /// source tree's `launch/`.
    pub fn embedded(overrides: &[String]) -> Result<Self, LaunchError> {
        let base_dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../launch"));
        Self::from_text(
            EMBEDDED_SIM_ARM,
            "<embedded launch/sim_arm.toml>",
            base_dir,
            overrides,
        )
    }

    /// Parses `text`, applies `overrides` (`key.path=value`), deserializes and validates.
    pub fn from_text(
        text: &str,
        origin: &str,
        base_dir: PathBuf,
        overrides: &[String],
    ) -> Result<Self, LaunchError> {
        let error = |line: usize, column: usize, field: &str, message: String| LaunchError {
            file: origin.to_string(),
            line,
            column,
            field: field.to_string(),
            message,
            from_override: None,
        };
        if text.len() as u64 > MAX_LAUNCH_BYTES {
            return Err(error(
                0,
                0,
                "",
                format!(
                    "launch file is {} bytes; launch files are limited to {}",
                    text.len(),
                    crate::files::human(MAX_LAUNCH_BYTES)
                ),
            ));
        }
        let mut parsed_overrides = Vec::new();
        let text = if overrides.is_empty() {
            text.to_string()
        } else {
            let mut doc: toml_edit::DocumentMut =
                text.parse().map_err(|e: toml_edit::TomlError| {
                    let (line, column) = e
                        .span()
                        .map(|s| line_column(text, s.start))
                        .unwrap_or((0, 0));
                    error(line, column, "", e.message().to_string())
                })?;
            for spec in overrides {
                let (key, value) =
                    apply_override(&mut doc, spec).map_err(|message| LaunchError {
                        from_override: Some(spec.clone()),
                        ..error(0, 0, "", message)
                    })?;
                parsed_overrides.push((key, value));
            }
            doc.to_string()
        };
        let mut launch = Self {
            config: placeholder(),
            text,
            base_dir,
            origin: origin.to_string(),
            overrides: parsed_overrides,
            robot_model: None,
            workspace: None,
            warnings: Vec::new(),
        };
        let deserializer = toml::Deserializer::parse(&launch.text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|s| line_column(&launch.text, s.start))
                .unwrap_or((0, 0));
            error(line, column, "", e.message().to_string())
        })?;
        launch.config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." { String::new() } else { field };
            let inner = e.into_inner();
            let mut err = launch.error_at(&field, inner.message().to_string());
            if let Some(span) = inner.span() {
                (err.line, err.column) = line_column(&launch.text, span.start);
            }
            err
        })?;
        launch.resolve_robot()?;
        launch.validate()?;
        launch.resolve_workspace()?;
        Ok(launch)
    }

    /// An error about `field` (a dotted path), positioned at that field.
    pub fn error_at(&self, field: &str, message: impl Into<String>) -> LaunchError {
        let from_override = self
            .overrides
            .iter()
            .find(|(key, _)| {
                field == key
                    || field.starts_with(&format!("{key}."))
                    || field.starts_with(&format!("{key}["))
            })
            .map(|(key, value)| format!("{key}={value}"));
        let (line, column) = toml_edit::Document::parse(self.text.as_str())
            .ok()
            .and_then(|doc| locate(doc.as_item(), field))
            .map(|offset| line_column(&self.text, offset))
            .unwrap_or((0, 0));
        LaunchError {
            file: self.origin.clone(),
            line,
            column,
            field: field.to_string(),
            message: message.into(),
            from_override,
        }
    }

    /// Resolves a path from the launch file against its directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        let joined = if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        };
        // Lexically drop `.` and `dir/..` so paths read well in messages.
        let mut clean = PathBuf::new();
        for part in joined.components() {
            match part {
                std::path::Component::CurDir => {}
                std::path::Component::ParentDir if clean.file_name().is_some() => {
                    clean.pop();
                }
                other => clean.push(other),
            }
        }
        clean
    }
    /// Checks that the policy's model files exist (at load, not at parse, so that
    /// tools such as `reflex demos` work before a model has been trained).
    pub fn check_model_exists(&self) -> Result<PathBuf, LaunchError> {
        let common = self.policy();
        let policy = &self.config.policy;
        use crate::files::{FileError, MAX_DATA_BYTES, MAX_MODEL_BYTES};
        let mut files = vec![("model", "model file", common.model, MAX_MODEL_BYTES)];
        if let Some(fast) = &policy.fast {
            files.push((
                "prefix_model",
                "model file",
                fast.prefix_model.as_path(),
                MAX_MODEL_BYTES,
            ));
        }
        if let Some(prefix) = policy.flow.as_ref().and_then(|f| f.prefix_model.as_ref()) {
            files.push((
                "prefix_model",
                "model file",
                prefix.as_path(),
                MAX_MODEL_BYTES,
            ));
        }
        let stats = (policy.flow.as_ref().and_then(|f| f.norm_stats.as_ref())).or(policy
            .diffusion
            .as_ref()
            .and_then(|d| d.norm_stats.as_ref()));
        if let Some(stats) = stats {
            files.push((
                "norm_stats.file",
                "statistics file",
                stats.file.as_path(),
                MAX_DATA_BYTES,
            ));
        }
        if let Some(file) = policy
            .diffusion
            .as_ref()
            .and_then(|d| d.schedule.file.as_ref())
        {
            files.push((
                "schedule.file",
                "schedule file",
                file.as_path(),
                MAX_DATA_BYTES,
            ));
        }
        for (field, what, file, limit) in files {
            let path = self.resolve(file);
            let problem = match crate::files::check_regular(&path, limit) {
                Ok(_) => continue,
                Err(FileError::NotFound { .. }) => format!("{what} not found: {}", path.display()),
                Err(e) => format!("{what} {e}"),
            };
            return Err(self.error_at(&format!("{}.{field}", common.table), problem));
        }
        Ok(self.resolve(common.model))
    }

    /// The chunk policy (validated launch files have exactly one policy).
    pub fn chunk_policy(&self) -> Option<&ChunkPolicyConfig> {
        self.config.policy.chunk.as_ref()
    }

    /// The policy tables present, by launch-file name.
    fn policy_tables(&self) -> Vec<&'static str> {
        let p = &self.config.policy;
        [
            ("policy.chunk", p.chunk.is_some()),
            ("policy.fast", p.fast.is_some()),
            ("policy.flow", p.flow.is_some()),
            ("policy.diffusion", p.diffusion.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, present)| present.then_some(name))
        .collect()
    }

    /// What every policy kind has, whichever the file uses.
    pub fn policy(&self) -> PolicyCommon<'_> {
        let p = &self.config.policy;
        if let Some(c) = &p.chunk {
            PolicyCommon {
                table: "policy.chunk",
                model: &c.model,
                action_rate_hz: c.action_rate_hz,
                replan_after: c.replan_after,
                intra_threads: c.intra_threads,
                inputs: &c.inputs,
            }
        } else if let Some(f) = &p.fast {
            PolicyCommon {
                table: "policy.fast",
                model: &f.model,
                action_rate_hz: f.action_rate_hz,
                replan_after: f.replan_after,
                intra_threads: f.intra_threads,
                inputs: &f.inputs,
            }
        } else if let Some(f) = &p.flow {
            PolicyCommon {
                table: "policy.flow",
                model: &f.model,
                action_rate_hz: f.action_rate_hz,
                replan_after: f.replan_after,
                intra_threads: f.intra_threads,
                inputs: &f.inputs,
            }
        } else if let Some(d) = &p.diffusion {
            PolicyCommon {
                table: "policy.diffusion",
                model: &d.model,
                action_rate_hz: d.action_rate_hz,
                replan_after: d.replan_after,
                intra_threads: d.intra_threads,
                inputs: &d.inputs,
            }
        } else {
            // validate() guarantees one of them.
            unreachable!("validated launch file has a policy")
        }
    }

    /// Camera names in the order policies see them.
    pub fn camera_names(&self) -> Vec<String> {
        self.config
            .drivers
            .sim_arm
            .iter()
            .filter_map(|arm| arm.camera.as_ref().map(|c| c.name.clone()))
            .collect()
    }

    fn validate(&self) -> Result<(), LaunchError> {
        let c = &self.config;
        if c.robot.name.is_empty() || c.robot.name.contains(['/', '*', '$', '?', '#']) {
            return Err(self.error_at(
                "robot.name",
                "must be non-empty and usable in a zenoh key (no / * $ ? #)",
            ));
        }
        // Names end up in zenoh keys, thread names and log lines.
        let names = std::iter::once(("robot.name".to_string(), &c.robot.name))
            .chain(
                (c.robot.joints.iter().enumerate())
                    .map(|(i, j)| (format!("robot.joints[{i}].name"), &j.name)),
            )
            .chain(
                (c.drivers.sim_arm.iter().enumerate())
                    .map(|(i, d)| (format!("drivers.sim_arm[{i}].name"), &d.name)),
            )
            .chain(
                (c.drivers.zenoh_arm.iter().enumerate())
                    .map(|(i, d)| (format!("drivers.zenoh_arm[{i}].name"), &d.name)),
            );
        for (field, name) in names {
            if name.chars().any(char::is_control) || name.len() > MAX_NAME_BYTES {
                return Err(self.error_at(
                    &field,
                    format!("must be at most {MAX_NAME_BYTES} bytes without control characters"),
                ));
            }
        }
        let joints = c.robot.joints.len();
        if joints == 0 || joints > crate::MAX_JOINTS {
            return Err(self.error_at(
                "robot.joints",
                format!("need 1..={} joints, found {joints}", crate::MAX_JOINTS),
            ));
        }
        for (i, joint) in c.robot.joints.iter().enumerate() {
            if let Err((field, message)) = joint.check() {
                return Err(self.error_at(&format!("robot.joints[{i}].{field}"), message));
            }
            if joint.name.trim().is_empty() {
                return Err(self.error_at(&format!("robot.joints[{i}].name"), "must not be empty"));
            }
            if let Some(first) = c.robot.joints[..i]
                .iter()
                .position(|j| j.name == joint.name)
            {
                return Err(self.error_at(
                    &format!("robot.joints[{i}].name"),
                    format!(
                        "`{}` is already the name of robot.joints[{first}]; joint names must be unique",
                        joint.name
                    ),
                ));
            }
        }
        self.check_safety(&c.safety, joints)?;
        let control = &c.control;
        if !(control.rate_hz.is_finite() && control.rate_hz > 0.0 && control.rate_hz <= 10_000.0) {
            return Err(self.error_at(
                "control.rate_hz",
                format!("must be in (0, 10000], found {}", control.rate_hz),
            ));
        }
        // Durations become `Duration`s and nanosecond counts: finite and bounded,
        // or a run panics (NaN, -1) or silently loses its protection (inf).
        self.check_range(
            "control.max_state_age_ms",
            control.max_state_age_ms,
            MAX_STALE_MS,
        )?;
        self.check_range(
            "control.startup_timeout_ms",
            control.startup_timeout_ms,
            MAX_STARTUP_TIMEOUT_MS,
        )?;
        // safety.estop_after_stale_ms: checked with the rest of [safety] (check_safety).
        let period_us = 1e6 / control.rate_hz;
        if control.spin_us as f64 > period_us {
            return Err(self.error_at(
                "control.spin_us",
                format!(
                    "must be at most one control period ({period_us:.0} us at {} Hz), found {}",
                    control.rate_hz, control.spin_us
                ),
            ));
        }
        if control.sim_inference_ticks > MAX_SIM_INFERENCE_TICKS {
            return Err(self.error_at(
                "control.sim_inference_ticks",
                format!(
                    "must be at most {MAX_SIM_INFERENCE_TICKS}, found {}",
                    control.sim_inference_ticks
                ),
            ));
        }
        if let Some(priority) = control.realtime.fifo_priority
            && !(1..=99).contains(&priority)
        {
            return Err(self.error_at(
                "control.realtime.fifo_priority",
                format!("must be 1..=99, found {priority}"),
            ));
        }
        let arms = c.drivers.sim_arm.len() + c.drivers.zenoh_arm.len();
        if arms != 1 {
            return Err(self.error_at(
                "drivers",
                format!("need exactly one arm driver ([[drivers.sim_arm]] or [[drivers.zenoh_arm]]), found {arms}"),
            ));
        }
        for (i, arm) in c.drivers.sim_arm.iter().enumerate() {
            let at = |field: &str| format!("drivers.sim_arm[{i}].{field}");
            if arm.link_lengths.len() != joints {
                return Err(self.error_at(
                    &at("link_lengths"),
                    format!(
                        "has {} links but robot.joints has {joints} joints",
                        arm.link_lengths.len()
                    ),
                ));
            }
            if let Some((j, length)) =
                (arm.link_lengths.iter().enumerate()).find(|(_, l)| !(l.is_finite() && **l > 0.0))
            {
                return Err(self.error_at(
                    &at(&format!("link_lengths[{j}]")),
                    format!("must be a positive length in m, found {length}"),
                ));
            }
            if !arm.initial_position.is_empty() && arm.initial_position.len() != joints {
                return Err(self.error_at(
                    &at("initial_position"),
                    format!(
                        "has {} values, expected {joints}",
                        arm.initial_position.len()
                    ),
                ));
            }
            if let Some((j, value)) =
                (arm.initial_position.iter().enumerate()).find(|(_, q)| !q.is_finite())
            {
                return Err(self.error_at(
                    &at(&format!("initial_position[{j}]")),
                    format!("must be a finite position, found {value}"),
                ));
            }
            if let Some((j, p)) = arm.initial_position.iter().enumerate().find(|(j, p)| {
                let [lo, hi] = c.robot.joints[*j].position;
                !(**p >= lo && **p <= hi)
            }) {
                return Err(self.error_at(
                    &at("initial_position"),
                    format!(
                        "joint {j} starts at {p}: must be inside its limits {:?}",
                        c.robot.joints[j].position
                    ),
                ));
            }
            // The simulated clock steps physics until it reaches the tick's time: a
            // step too small to advance it would loop forever.
            if !(arm.physics_hz >= control.rate_hz && arm.physics_hz <= MAX_PHYSICS_HZ) {
                return Err(self.error_at(
                    &at("physics_hz"),
                    format!(
                        "must be at least control.rate_hz ({}) and at most {MAX_PHYSICS_HZ}, found {}",
                        control.rate_hz, arm.physics_hz
                    ),
                ));
            }
            for (field, value) in [
                ("stiffness", arm.stiffness),
                ("episode_seconds", arm.episode_seconds),
                ("target_tolerance", arm.target_tolerance),
            ] {
                if !(value.is_finite() && value > 0.0) {
                    return Err(self.error_at(
                        &at(field),
                        format!("must be a positive number, found {value}"),
                    ));
                }
            }
            if !(arm.damping.is_finite() && arm.damping >= 0.0) {
                return Err(self.error_at(
                    &at("damping"),
                    format!("must be zero or positive, found {}", arm.damping),
                ));
            }
            if let Some(camera) = &arm.camera {
                if camera.width < 8
                    || camera.height < 8
                    || camera.width > 4096
                    || camera.height > 4096
                {
                    return Err(
                        self.error_at(&at("camera"), "width and height must be in 8..=4096")
                    );
                }
                if !(camera.fps > 0.0 && camera.fps <= MAX_CAMERA_FPS) {
                    return Err(self.error_at(
                        &at("camera.fps"),
                        format!("must be in (0, {MAX_CAMERA_FPS}], found {}", camera.fps),
                    ));
                }
                if camera.name.is_empty()
                    || camera.name.len() > MAX_NAME_BYTES
                    || camera.name.chars().any(char::is_control)
                {
                    return Err(self.error_at(
                        &at("camera.name"),
                        format!("must be 1 to {MAX_NAME_BYTES} bytes without control characters"),
                    ));
                }
            }
        }
        self.check_zenoh()?;
        self.check_onnxruntime()?;
        let tables = self.policy_tables();
        if tables.len() != 1 {
            return Err(self.error_at(
                "policy",
                format!(
                    "need exactly one policy kind ([policy.chunk], [policy.fast], [policy.flow] \
                     or [policy.diffusion]), found {}",
                    list_or_none(&tables.iter().map(|t| format!("[{t}]")).collect::<Vec<_>>())
                ),
            ));
        }
        let common = self.policy();
        let table = common.table;
        if !is_positive(common.action_rate_hz) || common.action_rate_hz > control.rate_hz {
            return Err(self.error_at(
                &format!("{table}.action_rate_hz"),
                "must be positive and at most control.rate_hz",
            ));
        }
        if common.replan_after == 0 {
            return Err(self.error_at(&format!("{table}.replan_after"), "must be at least 1"));
        }
        if !(1..=MAX_INTRA_THREADS).contains(&common.intra_threads) {
            return Err(self.error_at(
                &format!("{table}.intra_threads"),
                format!(
                    "must be in 1..={MAX_INTRA_THREADS}, found {} (this machine has {} CPUs)",
                    common.intra_threads,
                    std::thread::available_parallelism().map_or(1, |n| n.get())
                ),
            ));
        }
        if let Some(policy) = &c.policy.chunk {
            if !(1..=MAX_HORIZON).contains(&policy.actions.horizon) {
                return Err(self.error_at(
                    "policy.chunk.actions.horizon",
                    format!("must be in 1..={MAX_HORIZON}"),
                ));
            }
            if policy.replan_after > policy.actions.horizon {
                return Err(self.error_at(
                    "policy.chunk.replan_after",
                    format!("must be in 1..={} (the horizon)", policy.actions.horizon),
                ));
            }
            if let Some(norm) = &policy.actions.normalize {
                self.check_normalization(norm, joints, "policy.chunk.actions.normalize")?;
            }
        }
        if let Some(policy) = &c.policy.fast {
            if !(1..=MAX_FAST_TOKENS).contains(&policy.max_tokens) {
                return Err(self.error_at(
                    "policy.fast.max_tokens",
                    format!("must be in 1..={MAX_FAST_TOKENS}"),
                ));
            }
            if !(policy.temperature.is_finite() && policy.temperature >= 0.0) {
                return Err(
                    self.error_at("policy.fast.temperature", "must be 0 (greedy) or positive")
                );
            }
            if policy.token_map.sign.abs() != 1 {
                return Err(self.error_at("policy.fast.token_map.sign", "must be 1 or -1"));
            }
            if let Some(q) = &policy.quantiles {
                for (name, values) in [("q01", &q.q01), ("q99", &q.q99)] {
                    if values.len() != joints {
                        return Err(self.error_at(
                            &format!("policy.fast.quantiles.{name}"),
                            format!("has {} values, expected {joints}", values.len()),
                        ));
                    }
                    if let Some((j, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                        return Err(self.error_at(
                            &format!("policy.fast.quantiles.{name}[{j}]"),
                            format!("must be finite, found {v}"),
                        ));
                    }
                }
                if let Some(j) = (0..joints).find(|&j| q.q99[j] < q.q01[j]) {
                    return Err(self.error_at(
                        &format!("policy.fast.quantiles.q99[{j}]"),
                        format!("{} is below q01[{j}] = {}", q.q99[j], q.q01[j]),
                    ));
                }
            }
        }
        if let Some(flow) = &c.policy.flow {
            self.check_generative(
                "policy.flow",
                flow.num_steps,
                flow.batch,
                flow.replan_after,
                &flow.actions,
            )?;
        }
        if let Some(diffusion) = &c.policy.diffusion {
            self.check_generative(
                "policy.diffusion",
                diffusion.num_steps,
                diffusion.batch,
                diffusion.replan_after,
                &diffusion.actions,
            )?;
            self.check_schedule(&diffusion.schedule, diffusion.num_steps)?;
        }
        let cameras = self.camera_names();
        for (i, input) in common.inputs.iter().enumerate() {
            let at = |field: &str| format!("{table}.inputs[{i}].{field}");
            match &input.source {
                ObservationSource::CameraMask(name) => {
                    let camera_input = common.inputs.iter().find(
                        |other| matches!(&other.source, ObservationSource::Camera(n) if n == name),
                    );
                    if camera_input.is_none() {
                        return Err(self.error_at(
                            &at("source"),
                            format!("no `camera.{name}` input for this mask to describe"),
                        ));
                    }
                    if input.shape != [1] && input.shape != [1, 1] {
                        return Err(self.error_at(
                            &at("shape"),
                            format!("a camera mask has shape [1], found {:?}", input.shape),
                        ));
                    }
                    if input.dtype == TensorDtype::Uint8 {
                        return Err(self.error_at(&at("dtype"), "a camera mask is bool or float32"));
                    }
                }
                ObservationSource::Camera(name) => {
                    if !cameras.contains(name) && !input.optional {
                        return Err(self.error_at(
                            &at("source"),
                            format!(
                                "no camera named `{name}`; cameras: {} (set `optional = true` \
                                 for a view this robot does not have)",
                                list_or_none(&cameras)
                            ),
                        ));
                    }
                    let Some(image) = &input.image else {
                        return Err(self.error_at(
                            &at("image"),
                            "camera inputs need an [image] table (resize, layout)",
                        ));
                    };
                    let [h, w] = image.resize;
                    if !(1..=MAX_IMAGE_SIDE).contains(&h) || !(1..=MAX_IMAGE_SIDE).contains(&w) {
                        return Err(self.error_at(
                            &at("image.resize"),
                            format!("height and width must be in 1..={MAX_IMAGE_SIDE}"),
                        ));
                    }
                    let expected: Vec<i64> = match image.layout {
                        ImageLayout::Nchw => vec![1, 3, h as i64, w as i64],
                        ImageLayout::Nhwc => vec![1, h as i64, w as i64, 3],
                    };
                    if input.shape != expected {
                        return Err(self.error_at(
                            &at("shape"),
                            format!(
                                "{:?} does not match the image settings, which give {expected:?}",
                                input.shape
                            ),
                        ));
                    }
                }
                ObservationSource::JointPositions | ObservationSource::JointVelocities => {
                    // Wider than the robot: zero padding (pi0 pads state to 32).
                    let fits = input.shape.len() == 2
                        && input.shape[0] == 1
                        && input.shape[1] >= joints as i64
                        && input.shape[1] <= MAX_ACTION_DIM as i64;
                    if !fits {
                        return Err(self.error_at(
                            &at("shape"),
                            format!(
                                "a joint vector input has shape [1, N] with {joints} <= N <= \
                                 {MAX_ACTION_DIM} (zero-padded), found {:?}",
                                input.shape
                            ),
                        ));
                    }
                    if input.dtype != TensorDtype::Float32 {
                        return Err(self.error_at(&at("dtype"), "joint vectors are float32"));
                    }
                    if input.image.is_some() {
                        return Err(self.error_at(
                            &at("image"),
                            "only camera inputs take image preprocessing",
                        ));
                    }
                    if let Some(norm) = &input.normalize {
                        self.check_normalization(norm, joints, &at("normalize"))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// `value` (ms) must be finite, positive and at most `max`.
    fn check_range(&self, field: &str, value: f64, max: f64) -> Result<(), LaunchError> {
        if value > 0.0 && value <= max {
            Ok(())
        } else {
            Err(self.error_at(field, format!("must be in (0, {max}], found {value}")))
        }
    }

    /// Keys, endpoints and the config file, checked the way zenoh will use them.
    fn check_zenoh(&self) -> Result<(), LaunchError> {
        let z = &self.config.zenoh;
        let (lo, hi) = STATUS_HZ_RANGE;
        if !(z.status_hz >= lo && z.status_hz <= hi) {
            return Err(self.error_at(
                "zenoh.status_hz",
                format!("must be in [{lo}, {hi}], found {}", z.status_hz),
            ));
        }
        crate::bus::check_exact_key(&z.key_prefix).map_err(|message| {
            self.error_at(
                "zenoh.key_prefix",
                format!("{message} (e.g. `reflex` or `lab/reflex`, no leading or trailing `/`)"),
            )
        })?;
        let robot_key = format!("{}/{}", z.key_prefix, self.config.robot.name);
        crate::bus::check_exact_key(&robot_key)
            .map_err(|message| self.error_at("robot.name", message))?;
        for (list, endpoints) in [("listen", &z.listen), ("connect", &z.connect)] {
            for (i, endpoint) in endpoints.iter().enumerate() {
                crate::bus::check_endpoint(endpoint)
                    .map_err(|message| self.error_at(&format!("zenoh.{list}[{i}]"), message))?;
            }
        }
        for (i, arm) in self.config.drivers.zenoh_arm.iter().enumerate() {
            for (field, key) in [
                ("command_key", &arm.command_key),
                ("state_key", &arm.state_key),
            ] {
                if let Some(key) = key {
                    crate::bus::check_exact_key(key).map_err(|message| {
                        self.error_at(&format!("drivers.zenoh_arm[{i}].{field}"), message)
                    })?;
                }
            }
        }
        if let Some(file) = &z.config_file {
            let path = self.resolve(file);
            let problem = match crate::files::check_regular(&path, crate::files::MAX_CONFIG_BYTES) {
                Err(crate::files::FileError::NotFound { .. }) => {
                    Some(format!("zenoh config file not found: {}", path.display()))
                }
                Err(e) => Some(format!("zenoh config file {e}")),
                Ok(_) => zenoh::Config::from_file(&path)
                    .err()
                    .map(|e| format!("zenoh config file {}: {e}", path.display())),
            };
            if let Some(message) = problem {
                return Err(self.error_at("zenoh.config_file", message));
            }
        }
        // What `reflex run` does with all of it: the same settings through zenoh.
        crate::bus::zenoh_config(z, &self.base_dir)
            .map_err(|e| self.error_at("zenoh", e.to_string()))?;
        Ok(())
    }

    /// A library named in the launch file must be there: falling back to another
    /// one would run a different ONNX Runtime than the one asked for.
    fn check_onnxruntime(&self) -> Result<(), LaunchError> {
        let ort = &self.config.onnxruntime;
        if let Some(library) = &ort.library {
            let path = self.resolve(library);
            crate::files::check_regular(&path, crate::files::MAX_MODEL_BYTES).map_err(|e| {
                let message = match e {
                    crate::files::FileError::NotFound { .. } => format!(
                        "ONNX Runtime library not found: {} (remove the field to search \
                         $ORT_DYLIB_PATH, the project's .venv and the system paths)",
                        path.display()
                    ),
                    other => format!("ONNX Runtime library: {other}"),
                };
                self.error_at("onnxruntime.library", message)
            })?;
        }
        if ort.device_id < 0 {
            return Err(self.error_at(
                "onnxruntime.device_id",
                format!("must be 0 or more, found {}", ort.device_id),
            ));
        }
        Ok(())
    }

    fn check_generative(
        &self,
        table: &str,
        num_steps: usize,
        batch: usize,
        replan_after: usize,
        actions: &GenerativeActions,
    ) -> Result<(), LaunchError> {
        let joints = self.config.robot.joints.len();
        if !(1..=1000).contains(&num_steps) {
            return Err(self.error_at(&format!("{table}.num_steps"), "must be in 1..=1000"));
        }
        if !(1..=1024).contains(&batch) {
            return Err(self.error_at(&format!("{table}.batch"), "must be in 1..=1024"));
        }
        if !(1..=MAX_HORIZON).contains(&actions.horizon) {
            return Err(self.error_at(
                &format!("{table}.actions.horizon"),
                format!("must be in 1..={MAX_HORIZON}"),
            ));
        }
        if replan_after > actions.horizon {
            return Err(self.error_at(
                &format!("{table}.replan_after"),
                format!("must be in 1..={} (the horizon)", actions.horizon),
            ));
        }
        if let Some(dim) = actions.dim
            && dim < joints
        {
            return Err(self.error_at(
                &format!("{table}.actions.dim"),
                format!("the model's action width must cover the {joints} joints, found {dim}"),
            ));
        }
        if let Some(dim) = actions.dim
            && dim > MAX_ACTION_DIM
        {
            return Err(self.error_at(
                &format!("{table}.actions.dim"),
                format!("must be at most {MAX_ACTION_DIM}, found {dim}"),
            ));
        }
        Ok(())
    }

    fn check_schedule(
        &self,
        schedule: &ScheduleConfig,
        num_steps: usize,
    ) -> Result<(), LaunchError> {
        let at = |field: &str| format!("policy.diffusion.schedule.{field}");
        if schedule.kind.is_some() == schedule.file.is_some() {
            return Err(self.error_at(
                "policy.diffusion.schedule",
                "give exactly one of `kind` (squared_cosine, linear, scaled_linear) or `file`",
            ));
        }
        if schedule.kind.is_some() {
            if schedule.train_steps < num_steps || schedule.train_steps > 100_000 {
                return Err(self.error_at(
                    &at("train_steps"),
                    format!("must be in {num_steps}..=100000 (at least num_steps)"),
                ));
            }
            let (start, end) = (schedule.beta_start, schedule.beta_end);
            if !(start > 0.0 && end > 0.0 && start < 1.0 && end < 1.0) {
                return Err(self.error_at(&at("beta_start"), "betas must be in (0, 1)"));
            }
        }
        if let Some(clip) = schedule.clip_sample
            && !(clip.is_finite() && clip > 0.0)
        {
            return Err(self.error_at(&at("clip_sample"), "must be positive"));
        }
        Ok(())
    }

    fn check_normalization(
        &self,
        norm: &Normalization,
        width: usize,
        field: &str,
    ) -> Result<(), LaunchError> {
        for (name, values) in [("mean", &norm.mean), ("std", &norm.std)] {
            if values.len() != width {
                return Err(self.error_at(
                    &format!("{field}.{name}"),
                    format!("has {} values, expected {width}", values.len()),
                ));
            }
        }
        for (name, values) in [("mean", &norm.mean), ("std", &norm.std)] {
            if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(self.error_at(
                    &format!("{field}.{name}[{i}]"),
                    format!("must be finite, found {v}"),
                ));
            }
        }
        // A zero std would turn the tiny epsilon into the scale of the actions.
        if let Some((i, v)) = norm.std.iter().enumerate().find(|(_, s)| **s <= 0.0) {
            return Err(self.error_at(
                &format!("{field}.std[{i}]"),
                format!("must be positive, found {v}"),
            ));
        }
        Ok(())
    }
}

/// The robot's joints and model: `[[robot.joints]]` alone, or merged with a URDF.
impl Launch {
    fn resolve_robot(&mut self) -> Result<(), LaunchError> {
        let robot = &self.config.robot;
        let Some(urdf) = &robot.urdf else {
            if robot.tip_link.is_some() {
                return Err(self.error_at("robot.tip_link", "is only used with robot.urdf"));
            }
            let mut joints = Vec::with_capacity(robot.joint_entries.len());
            for (i, entry) in robot.joint_entries.iter().enumerate() {
                let missing = |field: &str| {
                    self.error_at(
                        &format!("robot.joints[{i}]"),
                        format!(
                            "missing field `{field}` (without robot.urdf every joint gives \
                             position, velocity and acceleration)"
                        ),
                    )
                };
                joints.push(JointConfig {
                    name: entry.name.clone(),
                    position: entry.position.ok_or_else(|| missing("position"))?,
                    velocity: entry.velocity.ok_or_else(|| missing("velocity"))?,
                    acceleration: entry.acceleration.ok_or_else(|| missing("acceleration"))?,
                    jerk: entry.jerk,
                });
            }
            self.config.robot.joints = joints;
            return Ok(());
        };
        let path = self.resolve(urdf);
        let file = path.display().to_string();
        let tip = robot.tip_link.as_deref();
        let model = RobotModel::from_file(&path, tip).map_err(|e| {
            let field = match (&e, tip) {
                (crate::robot_model::RobotModelError::UnknownTip { .. }, Some(_)) => {
                    "robot.tip_link"
                }
                _ => "robot.urdf",
            };
            self.error_at(field, e.to_string())
        })?;
        if model.joints.is_empty() {
            return Err(self.error_at(
                "robot.urdf",
                format!(
                    "URDF {file} has no movable joint between its root and `{}`",
                    model.chain.link_name(model.tip)
                ),
            ));
        }
        let names: Vec<&str> = model.joints.iter().map(|j| j.name.as_str()).collect();
        for (i, entry) in robot.joint_entries.iter().enumerate() {
            if entry.name.trim().is_empty() {
                return Err(self.error_at(&format!("robot.joints[{i}].name"), "must not be empty"));
            }
            if !names.contains(&entry.name.as_str()) {
                return Err(self.error_at(
                    &format!("robot.joints[{i}].name"),
                    format!(
                        "URDF {file} has no joint `{}` on the arm's chain; its joints: {}",
                        entry.name,
                        names.join(", ")
                    ),
                ));
            }
            if let Some(first) = robot.joint_entries[..i]
                .iter()
                .position(|e| e.name == entry.name)
            {
                return Err(self.error_at(
                    &format!("robot.joints[{i}].name"),
                    format!(
                        "joint `{}` already has an entry (robot.joints[{first}])",
                        entry.name
                    ),
                ));
            }
        }
        let mut joints = Vec::with_capacity(model.joints.len());
        let mut warnings = Vec::new();
        for urdf_joint in &model.joints {
            let index = robot
                .joint_entries
                .iter()
                .position(|e| e.name == urdf_joint.name);
            let joint = self.merge_joint(urdf_joint, index, &file, &mut warnings)?;
            joints.push(joint);
        }
        self.config.robot.joints = joints;
        self.warnings.extend(warnings);
        self.robot_model = Some(Arc::new(model));
        Ok(())
    }

    /// One robot joint: the launch-file entry (`robot.joints[index]`) over the URDF.
    fn merge_joint(
        &self,
        urdf: &ModelJoint,
        index: Option<usize>,
        file: &str,
        warnings: &mut Vec<String>,
    ) -> Result<JointConfig, LaunchError> {
        let entry = index.map(|i| &self.config.robot.joint_entries[i]);
        let name = &urdf.name;
        let unit = match urdf.kind {
            JointKind::Prismatic => "m",
            _ => "rad",
        };
        // Where to point for a value the launch file must add.
        let at = |field: &str| match index {
            Some(i) => format!("robot.joints[{i}].{field}"),
            None => "robot.urdf".into(),
        };
        let add = |field: &str, what: &str, example: &str| {
            format!(
                "joint `{name}` has no {what} in URDF {file}; add `{field} = {example}` \
                 to a [[robot.joints]] entry with name = \"{name}\""
            )
        };
        let position = entry
            .and_then(|e| e.position)
            .or(urdf.position)
            .ok_or_else(|| {
                let what = match urdf.kind {
                    JointKind::Continuous => "position limits (it is continuous)",
                    _ => "usable position limits",
                };
                self.error_at(&at("position"), add("position", what, "[min, max]"))
            })?;
        let velocity = entry
            .and_then(|e| e.velocity)
            .or(urdf.velocity)
            .ok_or_else(|| {
                self.error_at(
                    &at("velocity"),
                    add("velocity", "velocity limit", &format!("<{unit}/s>")),
                )
            })?;
        let acceleration = entry
            .and_then(|e| e.acceleration)
            .or(urdf.acceleration)
            .ok_or_else(|| {
                self.error_at(
                    &at("acceleration"),
                    add(
                        "acceleration",
                        "acceleration limit (URDF has none)",
                        &format!("<{unit}/s^2>"),
                    ),
                )
            })?;
        let joint = JointConfig {
            name: name.clone(),
            position,
            velocity,
            acceleration,
            jerk: entry.and_then(|e| e.jerk).or(urdf.jerk),
        };
        if let Err((field, message)) = joint.check() {
            let from_launch = entry.is_some_and(|e| match field {
                "position" => e.position.is_some(),
                "velocity" => e.velocity.is_some(),
                "acceleration" => e.acceleration.is_some(),
                _ => e.jerk.is_some(),
            });
            return Err(match (from_launch, index) {
                (true, Some(i)) => self.error_at(&format!("robot.joints[{i}].{field}"), message),
                _ => self.error_at(
                    "robot.urdf",
                    format!(
                        "joint `{name}` in URDF {file}: {field} {message}; override it in a \
                         [[robot.joints]] entry with name = \"{name}\""
                    ),
                ),
            });
        }
        if let (Some(e), Some(i)) = (entry, index) {
            // `None`: the URDF's own value is no valid limit, so there is nothing to
            // be stricter or looser than.
            let mut note = |field: &str, ours: String, theirs: String, stricter: Option<bool>| {
                let verdict = match stricter {
                    Some(true) => "stricter than the URDF",
                    Some(false) => {
                        "LOOSER than the URDF: it allows motion the robot's description forbids"
                    }
                    None => "the URDF's value is not a valid limit",
                };
                warnings.push(format!(
                    "robot.joints[{i}] (`{name}`): {field} {ours} overrides {theirs} from \
                     URDF {file} ({verdict})"
                ));
            };
            if let (Some([lo, hi]), Some([ulo, uhi])) = (e.position, urdf.position)
                && [lo, hi] != [ulo, uhi]
            {
                let valid = ulo.is_finite() && uhi.is_finite() && ulo < uhi;
                note(
                    "position",
                    format!("[{lo}, {hi}]"),
                    format!("[{ulo}, {uhi}]"),
                    valid.then_some(lo >= ulo && hi <= uhi),
                );
            }
            let scalars = [
                ("velocity", e.velocity, urdf.velocity),
                ("acceleration", e.acceleration, urdf.acceleration),
                ("jerk", e.jerk, urdf.jerk),
            ];
            for (field, ours, theirs) in scalars {
                if let (Some(ours), Some(theirs)) = (ours, theirs)
                    && ours != theirs
                {
                    let valid = theirs.is_finite() && theirs > 0.0;
                    note(
                        field,
                        ours.to_string(),
                        theirs.to_string(),
                        valid.then_some(ours < theirs),
                    );
                }
            }
        }
        Ok(joint)
    }

    /// `[safety.workspace]`: the link must be one the URDF chain places.
    fn resolve_workspace(&mut self) -> Result<(), LaunchError> {
        let Some(ws) = &self.config.safety.workspace else {
            return Ok(());
        };
        let Some(model) = &self.robot_model else {
            return Err(self.error_at(
                "safety.workspace",
                "needs robot.urdf: the box is checked on a link's position, which comes from \
                 the URDF's forward kinematics",
            ));
        };
        if let Some(why) = model.why_unplaced(&ws.link) {
            return Err(self.error_at("safety.workspace.link", why));
        }
        for (field, corner) in [("min", ws.min), ("max", ws.max)] {
            if !corner.iter().all(|v| v.is_finite()) {
                return Err(self.error_at(
                    &format!("safety.workspace.{field}"),
                    format!("must be [x, y, z] finite numbers (m), found {corner:?}"),
                ));
            }
        }
        if let Some(axis) = (0..3).find(|&a| ws.min[a] >= ws.max[a]) {
            return Err(self.error_at(
                "safety.workspace.max",
                format!(
                    "must be above min on every axis; on {} min is {} and max {}",
                    ["x", "y", "z"][axis],
                    ws.min[axis],
                    ws.max[axis]
                ),
            ));
        }
        let link = model.chain.link_id(&ws.link);
        self.workspace = link.map(|link| WorkspaceBox {
            link,
            min: ws.min.into(),
            max: ws.max.into(),
        });
        Ok(())
    }
}

/// False for NaN, zero and negative numbers.
impl Launch {
    fn check_safety(&self, safety: &SafetyConfig, joints: usize) -> Result<(), LaunchError> {
        if let Err((field, message)) = safety.check(joints) {
            return Err(self.error_at(&format!("safety.{field}"), message));
        }
        let format = self.config.zenoh.command_format;
        if !(1..=2).contains(&format) {
            return Err(self.error_at(
                "zenoh.command_format",
                format!(
                    "must be 1 (positions) or 2 (with velocities and accelerations), found {format}"
                ),
            ));
        }
        if safety.operator.zenoh_rearm {
            let Some(file) = &self.config.zenoh.config_file else {
                return Err(self.error_at(
                    "safety.operator.zenoh_rearm",
                    "re-arm over zenoh needs zenoh access control: set zenoh.config_file to a \
                     zenoh config with TLS or user/password authentication and ACL rules \
                     (see the README's Security section)",
                ));
            };
            let path = self.resolve(file);
            let zenoh = zenoh::Config::from_file(&path).map_err(|e| {
                self.error_at(
                    "zenoh.config_file",
                    format!("cannot read the zenoh config {}: {e}", path.display()),
                )
            })?;
            let value = |key: &str| {
                zenoh
                    .get_json(key)
                    .ok()
                    .and_then(|json| serde_json::from_str::<serde_json::Value>(&json).ok())
                    .unwrap_or(serde_json::Value::Null)
            };
            let is_set = |key: &str| !value(key).is_null();
            let mut missing = Vec::new();
            if value("access_control/enabled") != serde_json::Value::Bool(true) {
                missing.push("`access_control.enabled: true`");
            }
            // zenoh lets any matching deny rule win over allow rules, so under
            // "allow" no rule can keep `control` for the operator alone.
            if value("access_control/default_permission") != "deny" {
                missing.push(
                    "`access_control.default_permission: \"deny\"` (under \"allow\" a deny \
                     rule cannot exempt the operator)",
                );
            }
            let mtls = value("transport/link/tls/enable_mtls") == serde_json::Value::Bool(true)
                && is_set("transport/link/tls/root_ca_certificate");
            let usrpwd = is_set("transport/auth/usrpwd/dictionary_file");
            if !(mtls || usrpwd) {
                missing.push(
                    "authentication of the other side: TLS client certificates \
                     (`transport.link.tls.enable_mtls: true` with `root_ca_certificate`) or \
                     user/password (`transport.auth.usrpwd.dictionary_file`)",
                );
            }
            if !missing.is_empty() {
                return Err(self.error_at(
                    "safety.operator.zenoh_rearm",
                    format!(
                        "re-arm over zenoh needs zenoh access control, but {} lacks {} \
                         (see the README's Security section)",
                        path.display(),
                        missing.join(" and ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn is_positive(x: f64) -> bool {
    x > 0.0
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Only used between parsing and the first successful deserialization.
fn placeholder() -> LaunchFile {
    LaunchFile {
        robot: RobotConfig {
            name: String::new(),
            urdf: None,
            tip_link: None,
            joint_entries: Vec::new(),
            joints: Vec::new(),
        },
        control: ControlConfig::default(),
        drivers: DriversConfig::default(),
        policy: PolicySection::default(),
        safety: SafetyConfig::default(),
        zenoh: ZenohConfig::default(),
        onnxruntime: OnnxRuntimeConfig::default(),
        seed: 0,
    }
}

/// 1-based line and column (in characters) of byte `offset`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// One step of a field path.
enum PathStep<'a> {
    Key(&'a str),
    Index(usize),
}

/// Splits `a.b[2].c` into steps.
fn path_steps(path: &str) -> Vec<PathStep<'_>> {
    let mut steps = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            steps.push(PathStep::Key(key));
        }
        while let Some((index, after)) = rest.split_once(']') {
            if let Ok(i) = index.parse() {
                steps.push(PathStep::Index(i));
            }
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    steps
}

/// Byte offset of the deepest part of `path` present in the document: the key's
/// position when the field exists, else its closest existing parent.
fn locate(root: &toml_edit::Item, path: &str) -> Option<usize> {
    let mut item = root;
    let mut offset = None;
    for step in path_steps(path) {
        let next = match step {
            PathStep::Key(key) => {
                item.as_table_like()
                    .and_then(|t| t.get_key_value(key))
                    .map(|(k, v)| {
                        offset = k.span().or_else(|| v.span()).map(|s| s.start).or(offset);
                        v
                    })
            }
            PathStep::Index(i) => item.get(i).inspect(|v| {
                offset = v.span().map(|s| s.start).or(offset);
            }),
        };
        match next {
            Some(next) => item = next,
            None => break,
        }
    }
    offset
}

/// Applies `key.path=value` to the document; the value is TOML (`1.5`, `[1, 2]`,
/// `"text"`), or taken as a string when it does not parse as TOML.
fn apply_override(
    doc: &mut toml_edit::DocumentMut,
    spec: &str,
) -> Result<(String, String), String> {
    let (key, raw) = spec
        .split_once('=')
        .ok_or_else(|| format!("`{spec}` is not key=value"))?;
    let (key, raw) = (key.trim(), raw.trim());
    let value: toml_edit::Value = raw.parse().unwrap_or_else(|_| raw.into());
    let steps = override_steps(key)?;
    let Some((last, parents)) = steps.split_last() else {
        return Err(format!("`{spec}` has an empty key"));
    };
    let mut item = doc.as_item_mut();
    for step in parents {
        item = match step {
            PathStep::Key(k) => {
                let table = item
                    .as_table_like_mut()
                    .ok_or_else(|| format!("`{key}`: not a table before `{k}`"))?;
                if table.get(k).is_none() {
                    table.insert(k, toml_edit::Item::Table(toml_edit::Table::new()));
                }
                table
                    .get_mut(k)
                    .ok_or_else(|| format!("`{key}`: cannot create `{k}`"))?
            }
            PathStep::Index(i) => {
                let len = array_len(item).ok_or_else(|| format!("`{key}`: not an array"))?;
                item.get_mut(*i)
                    .ok_or_else(|| format!("`{key}`: no element [{i}], the array has {len}"))?
            }
        };
    }
    match last {
        PathStep::Key(k) => {
            let table = item
                .as_table_like_mut()
                .ok_or_else(|| format!("`{key}`: parent is not a table"))?;
            table.insert(k, toml_edit::Item::Value(value));
        }
        PathStep::Index(i) => {
            let len = array_len(item).ok_or_else(|| format!("`{key}`: not an array"))?;
            // An element of `[[array]]` tables is a table: a plain value there would
            // silently vanish from the document (and the element with it).
            let element = match (&*item, value) {
                (toml_edit::Item::ArrayOfTables(_), toml_edit::Value::InlineTable(table)) => {
                    toml_edit::Item::Table(table.into_table())
                }
                (toml_edit::Item::ArrayOfTables(_), _) => {
                    return Err(format!(
                        "`{key}` is a table: give an inline table, e.g. `{key}={{ name = \"...\", ... }}`, \
                         or set one of its fields, e.g. `{key}.name=...`"
                    ));
                }
                (_, value) => toml_edit::Item::Value(value),
            };
            let slot = item.get_mut(*i).ok_or_else(|| {
                format!(
                    "`{key}`: no element [{i}], the array has {len} (to add elements, set the whole array)"
                )
            })?;
            *slot = element;
        }
    }
    Ok((key.to_string(), raw.to_string()))
}

/// Elements of an array or of an array of tables.
fn array_len(item: &toml_edit::Item) -> Option<usize> {
    match item {
        toml_edit::Item::ArrayOfTables(tables) => Some(tables.len()),
        toml_edit::Item::Value(toml_edit::Value::Array(array)) => Some(array.len()),
        _ => None,
    }
}

/// The steps of an override's key (`a.b[2].c`), strictly: every name non-empty and
/// made of letters, digits, `_` and `-`, every index a number in brackets.
fn override_steps(key: &str) -> Result<Vec<PathStep<'_>>, String> {
    let mut steps = Vec::new();
    for segment in key.split('.') {
        let name_end = segment.find('[').unwrap_or(segment.len());
        let (name, mut rest) = segment.split_at(name_end);
        if name.is_empty() {
            return Err(format!(
                "`{key}`: empty field name (two dots in a row, or a dot at either end?)"
            ));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "`{key}`: `{name}` is not a field name (letters, digits, `_`, `-`)"
            ));
        }
        steps.push(PathStep::Key(name));
        while !rest.is_empty() {
            let (index, after) = rest
                .strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .ok_or_else(|| format!("`{key}`: expected `[index]` after `{name}`"))?;
            let index = index
                .parse()
                .map_err(|_| format!("`{key}`: `[{index}]` is not an array index"))?;
            steps.push(PathStep::Index(index));
            rest = after;
        }
    }
    Ok(steps)
}

/// The JSON schema of launch files, for editors.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(LaunchFile)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, overrides: &[&str]) -> Result<Launch, LaunchError> {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        let base = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../launch"));
        Launch::from_text(text, "test.toml", base, &overrides)
    }

    #[test]
    fn embedded_launch_file_is_valid() {
        let launch = Launch::embedded(&[]).expect("embedded launch file");
        assert_eq!(launch.config.robot.name, "sim_arm");
        assert_eq!(launch.camera_names(), vec!["top".to_string()]);
    }

    #[test]
    fn typo_names_line_column_and_field() {
        let text = EMBEDDED_SIM_ARM.replace("rate_hz = 100.0", "rate_hz = 100.0\nrat_hz = 5");
        let err = load(&text, &[]).unwrap_err();
        assert!(err.message.contains("unknown field `rat_hz`"), "{err}");
        assert_eq!(err.field, "control.rat_hz");
        let line = text.lines().position(|l| l.starts_with("rat_hz")).unwrap() + 1;
        assert_eq!((err.line, err.column), (line, 1), "{err}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let text = EMBEDDED_SIM_ARM.replace("rate_hz = 100.0", "rate_hz = \"fast\"");
        let err = load(&text, &[]).unwrap_err();
        assert_eq!(err.field, "control.rate_hz");
        let line = text.lines().position(|l| l.starts_with("rate_hz")).unwrap() + 1;
        assert_eq!(err.line, line, "{err}");
        assert!(
            err.to_string().starts_with(&format!("test.toml:{line}:")),
            "{err}"
        );
    }

    #[test]
    fn unknown_driver_kind_is_reported() {
        let text = EMBEDDED_SIM_ARM.replace("drivers.sim_arm", "drivers.sim_ram");
        let err = load(&text, &[]).unwrap_err();
        assert!(err.message.contains("unknown field `sim_ram`"), "{err}");
        assert!(
            err.message.contains("sim_arm"),
            "lists the known kinds: {err}"
        );
        assert!(err.line > 0);
    }

    #[test]
    fn semantic_errors_point_at_the_field() {
        let text = EMBEDDED_SIM_ARM.replace("source = \"camera.top\"", "source = \"camera.wrist\"");
        let err = load(&text, &[]).unwrap_err();
        assert_eq!(err.field, "policy.chunk.inputs[0].source");
        assert!(err.message.contains("no camera named `wrist`"), "{err}");
        let line = text
            .lines()
            .position(|l| l.contains("camera.wrist"))
            .unwrap()
            + 1;
        assert_eq!(err.line, line, "{err}");
    }

    #[test]
    fn missing_model_file_is_reported() {
        let launch = load(EMBEDDED_SIM_ARM, &["policy.chunk.model=\"nope.onnx\""]).unwrap();
        let err = launch.check_model_exists().unwrap_err();
        assert_eq!(err.field, "policy.chunk.model");
        assert!(err.message.contains("model file not found"), "{err}");
        assert_eq!(
            err.from_override.as_deref(),
            Some("policy.chunk.model=\"nope.onnx\"")
        );
    }

    #[test]
    fn overrides_change_fields() {
        let launch = load(
            EMBEDDED_SIM_ARM,
            &["control.rate_hz=250", "seed=7", "zenoh.enabled=false"],
        )
        .unwrap();
        assert_eq!(launch.config.control.rate_hz, 250.0);
        assert_eq!(launch.config.seed, 7);
        assert!(!launch.config.zenoh.enabled);
        let launch = load(EMBEDDED_SIM_ARM, &["robot.joints[0].velocity=0.5"]).unwrap();
        assert_eq!(launch.config.robot.joints[0].velocity, 0.5);
    }

    #[test]
    fn exactly_one_policy_kind() {
        let both = format!(
            "{EMBEDDED_SIM_ARM}\n[policy.fast]\nprefix_model = \"p.onnx\"\nmodel = \"s.onnx\"\ntokenizer = \"t\"\naction_rate_hz = 10.0\nreplan_after = 5\nend_token = 1\ninputs = []\n"
        );
        let err = load(&both, &[]).unwrap_err();
        assert_eq!(err.field, "policy");
        assert!(err.message.contains("exactly one policy kind"), "{err}");
    }

    #[test]
    fn generative_tables_are_validated_at_their_fields() {
        let flow = include_str!("../../launch/sim_arm_flow.toml");
        assert!(load(flow, &[]).is_ok());
        let err = load(flow, &["policy.flow.num_steps=0"]).unwrap_err();
        assert_eq!(err.field, "policy.flow.num_steps");
        let err = load(flow, &["policy.flow.actions.dim=2"]).unwrap_err();
        assert!(err.message.contains("must cover the 3 joints"), "{err}");
        let err = load(flow, &["policy.flow.inputs[1].shape=[1, 2]"]).unwrap_err();
        assert_eq!(err.field, "policy.flow.inputs[1].shape");
        assert!(load(flow, &["policy.flow.inputs[1].shape=[1, 32]"]).is_ok());
        let err = load(flow, &["policy.flow.norm_stats.mode=\"mean\""]).unwrap_err();
        assert_eq!(err.field, "policy.flow.norm_stats.mode");
        let diffusion = include_str!("../../launch/examples/diffusion_fixture.toml");
        assert!(load(diffusion, &[]).is_ok());
        let err = load(diffusion, &["policy.diffusion.schedule.train_steps=4"]).unwrap_err();
        assert_eq!(err.field, "policy.diffusion.schedule.train_steps");
        let err = load(diffusion, &["policy.diffusion.schedule.kind=\"cosine\""]).unwrap_err();
        assert!(err.message.contains("squared_cosine"), "{err}");
        // A mask needs the camera it describes.
        let masked = format!(
            "{diffusion}\n[[policy.diffusion.inputs]]\nname = \"m\"\nsource = \"camera_mask.wrist\"\ndtype = \"bool\"\nshape = [1]\n"
        );
        let err = load(&masked, &[]).unwrap_err();
        assert!(err.message.contains("no `camera.wrist` input"), "{err}");
    }

    #[test]
    fn invalid_limits_are_rejected() {
        let err = load(EMBEDDED_SIM_ARM, &["robot.joints[1].position=[1.0, -1.0]"]).unwrap_err();
        assert_eq!(err.field, "robot.joints[1].position");
    }

    /// A scratch directory holding `files`, for launch files that name a URDF.
    fn scratch_with(name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("reflex-launch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, text) in files {
            std::fs::write(dir.join(file), text).unwrap();
        }
        dir
    }

    const SIM_URDF: &str = include_str!("../../launch/sim_arm.urdf");

    /// The embedded launch file's `[robot]` section replaced by `robot`.
    fn with_robot(robot: &str) -> String {
        let start = EMBEDDED_SIM_ARM.find("[robot]").unwrap();
        let end = EMBEDDED_SIM_ARM.find("[control]").unwrap();
        format!(
            "{}{robot}\n{}",
            &EMBEDDED_SIM_ARM[..start],
            &EMBEDDED_SIM_ARM[end..]
        )
    }

    #[test]
    fn the_demo_reads_its_joints_from_the_urdf() {
        let launch = Launch::embedded(&[]).unwrap();
        assert!(launch.config.robot.urdf.is_some());
        let joints = &launch.config.robot.joints;
        let names: Vec<_> = joints.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["shoulder", "elbow", "wrist"]);
        assert_eq!(joints[2].position, [-2.8, 2.8]);
        assert_eq!(joints[2].velocity, 2.0, "from the URDF");
        assert_eq!(joints[2].acceleration, 10.0, "from the launch file");
        assert!(launch.warnings.is_empty(), "{:?}", launch.warnings);
        let model = launch.robot_model.as_ref().unwrap();
        assert_eq!(model.chain.link_name(model.tip), "tool");
        assert_eq!(model.joints[0].effort, Some(100.0));
    }

    #[test]
    fn launch_values_override_the_urdf_with_a_warning() {
        let launch = load(
            EMBEDDED_SIM_ARM,
            &[
                "robot.joints[0].velocity=1.0",
                "robot.joints[1].position=[-3.0, 2.0]",
                "robot.joints[2].jerk=50.0",
            ],
        )
        .unwrap();
        assert_eq!(launch.config.robot.joints[0].velocity, 1.0);
        assert_eq!(launch.config.robot.joints[1].position, [-3.0, 2.0]);
        assert_eq!(launch.config.robot.joints[2].jerk, Some(50.0));
        let w = &launch.warnings;
        assert_eq!(
            w.len(),
            2,
            "jerk is not in the URDF, so not an override: {w:?}"
        );
        assert!(
            w[0].contains("`shoulder`") && w[0].contains("stricter"),
            "{w:?}"
        );
        assert!(w[1].contains("`elbow`") && w[1].contains("LOOSER"), "{w:?}");
        assert!(w[1].contains("sim_arm.urdf"), "{w:?}");
        // A looser velocity is called looser.
        let launch = load(EMBEDDED_SIM_ARM, &["robot.joints[2].velocity=3.0"]).unwrap();
        assert!(
            launch.warnings[0].contains("LOOSER"),
            "{:?}",
            launch.warnings
        );
    }

    #[test]
    fn a_joint_without_acceleration_is_named() {
        let text = with_robot(
            "[robot]\nname = \"sim_arm\"\nurdf = \"sim_arm.urdf\"\n\n[[robot.joints]]\nname = \"shoulder\"\nacceleration = 8.0\n",
        );
        let err = load(&text, &[]).unwrap_err();
        assert_eq!(err.field, "robot.urdf");
        assert!(
            err.message
                .contains("joint `elbow` has no acceleration limit"),
            "{err}"
        );
        assert!(err.message.contains("name = \"elbow\""), "{err}");
        assert!(err.line > 0, "{err}");
        // With an entry for the joint, the error points at that entry.
        let text = EMBEDDED_SIM_ARM.replace("acceleration = 10.0", "jerk = 100.0");
        let err = load(&text, &[]).unwrap_err();
        assert_eq!(err.field, "robot.joints[2].acceleration");
        assert!(err.message.contains("joint `wrist`"), "{err}");
        let line = text
            .lines()
            .position(|l| l.contains("jerk = 100.0"))
            .unwrap();
        assert_eq!(err.line, line - 1, "at the entry: {err}");
    }

    #[test]
    fn entries_must_name_urdf_joints_once() {
        let text = EMBEDDED_SIM_ARM.replace("name = \"wrist\"", "name = \"wirst\"");
        let err = load(&text, &[]).unwrap_err();
        assert_eq!(err.field, "robot.joints[2].name");
        assert!(err.message.contains("no joint `wirst`"), "{err}");
        assert!(err.message.contains("shoulder, elbow, wrist"), "{err}");
        let text = EMBEDDED_SIM_ARM.replace("name = \"wrist\"", "name = \"elbow\"");
        let err = load(&text, &[]).unwrap_err();
        assert_eq!(err.field, "robot.joints[2].name");
        assert!(
            err.message
                .contains("already has an entry (robot.joints[1])"),
            "{err}"
        );
    }

    #[test]
    fn bad_urdf_values_point_at_the_urdf_or_the_override() {
        let bad = SIM_URDF.replace("velocity=\"2.0\"", "velocity=\"-2.0\"");
        let dir = scratch_with("bad-velocity", &[("sim_arm.urdf", &bad)]);
        let text = EMBEDDED_SIM_ARM.replace("../policies", "policies");
        let err = Launch::from_text(&text, "t.toml", dir.clone(), &[]).unwrap_err();
        assert_eq!(err.field, "robot.urdf");
        assert!(
            err.message.contains("joint `wrist`") && err.message.contains("velocity"),
            "{err}"
        );
        // An override fixes it, and a bad override is blamed on the launch file.
        let fixed = ["robot.joints[2].velocity=1.0".to_string()];
        let launch = Launch::from_text(&text, "t.toml", dir.clone(), &fixed).unwrap();
        assert!(
            launch.warnings[0].contains("not a valid limit"),
            "{:?}",
            launch.warnings
        );
        let worse = ["robot.joints[2].velocity=nan".to_string()];
        let err = Launch::from_text(&text, "t.toml", dir, &worse).unwrap_err();
        assert_eq!(err.field, "robot.joints[2].velocity");
        // A continuous joint needs position limits from the launch file.
        let continuous = SIM_URDF.replace(
            "<joint name=\"elbow\" type=\"revolute\">",
            "<joint name=\"elbow\" type=\"continuous\">",
        );
        let dir = scratch_with("continuous", &[("sim_arm.urdf", &continuous)]);
        let err = Launch::from_text(&text, "t.toml", dir.clone(), &[]).unwrap_err();
        assert_eq!(err.field, "robot.joints[1].position");
        assert!(err.message.contains("continuous"), "{err}");
        let limited = ["robot.joints[1].position=[-3.0, 3.0]".to_string()];
        assert!(Launch::from_text(&text, "t.toml", dir, &limited).is_ok());
    }

    #[test]
    fn an_unreadable_or_broken_urdf_names_the_file() {
        let err = load(EMBEDDED_SIM_ARM, &["robot.urdf=\"missing.urdf\""]).unwrap_err();
        assert_eq!(err.field, "robot.urdf");
        assert!(err.message.contains("missing.urdf"), "{err}");
        let dir = scratch_with(
            "broken",
            &[("sim_arm.urdf", "<robot name='x'><link name='a'>")],
        );
        let text = EMBEDDED_SIM_ARM.replace("../policies", "policies");
        let err = Launch::from_text(&text, "t.toml", dir.clone(), &[]).unwrap_err();
        assert_eq!(err.field, "robot.urdf");
        let file = dir.join("sim_arm.urdf").display().to_string();
        assert!(err.message.contains(&file), "{err}");
        assert!(err.message.contains("not valid URDF XML"), "{err}");
        let line = text.lines().position(|l| l.starts_with("urdf =")).unwrap() + 1;
        assert_eq!(err.line, line, "{err}");
        let err = load(EMBEDDED_SIM_ARM, &["robot.tip_link=\"hand2\""]).unwrap_err();
        assert_eq!(err.field, "robot.tip_link");
        assert!(err.message.contains("no link `hand2`"), "{err}");
    }

    #[test]
    fn without_a_urdf_entries_give_every_limit() {
        let flow = include_str!("../../launch/sim_arm_flow.toml");
        let launch = load(flow, &[]).unwrap();
        assert!(launch.robot_model.is_none());
        assert_eq!(launch.config.robot.joints.len(), 3);
        let text = flow.replacen("velocity = 1.5\n", "", 1);
        let err = load(&text, &[]).unwrap_err();
        assert_eq!(err.field, "robot.joints[0]");
        assert!(err.message.contains("missing field `velocity`"), "{err}");
        let err = load(flow, &["robot.tip_link=\"tool\""]).unwrap_err();
        assert_eq!(err.field, "robot.tip_link");
    }

    #[test]
    fn a_workspace_box_is_resolved_and_validated() {
        let boxed = format!(
            "{EMBEDDED_SIM_ARM}\n[safety.workspace]\nlink = \"tool\"\nmin = [-1.0, -1.0, -0.1]\nmax = [1.0, 1.0, 0.1]\n"
        );
        let launch = load(&boxed, &[]).unwrap();
        let ws = launch.workspace.unwrap();
        let chain = &launch.robot_model.as_ref().unwrap().chain;
        assert!(ws.contains(chain, &[0.0, 0.6, 0.6]));
        let err = load(&boxed, &["safety.workspace.max=[1.0, 1.0, -0.2]"]).unwrap_err();
        assert_eq!(err.field, "safety.workspace.max");
        assert!(err.message.contains("on z"), "{err}");
        let err = load(&boxed, &["safety.workspace.min=[nan, 0, 0]"]).unwrap_err();
        assert_eq!(err.field, "safety.workspace.min");
        let err = load(&boxed, &["safety.workspace.link=\"gripper\""]).unwrap_err();
        assert_eq!(err.field, "safety.workspace.link");
        assert!(err.message.contains("no link `gripper`"), "{err}");
        let flow = include_str!("../../launch/sim_arm_flow.toml");
        let err = load(
            &format!(
                "{flow}\n[safety.workspace]\nlink = \"tool\"\nmin = [0, 0, 0]\nmax = [1, 1, 1]\n"
            ),
            &[],
        )
        .unwrap_err();
        assert_eq!(err.field, "safety.workspace");
        assert!(err.message.contains("needs robot.urdf"), "{err}");
    }

    #[test]
    fn a_seven_joint_urdf_gives_seven_joints_in_chain_order() {
        let robot = format!(
            "[robot]\nname = \"panda\"\nurdf = \"{}/../tests/fixtures/arm7.urdf\"\n{}",
            env!("CARGO_MANIFEST_DIR"),
            (1..=7)
                .map(|j| format!(
                    "\n[[robot.joints]]\nname = \"panda_joint{}\"\nacceleration = 10.0\n",
                    8 - j
                ))
                .collect::<String>()
        );
        let text = with_robot(&robot)
            .replace(
                "[[drivers.sim_arm]]",
                "[[drivers.zenoh_arm]]\n\n[[unused.sim_arm]]",
            )
            .replace("shape = [1, 3]", "shape = [1, 7]");
        let start = text.find("[[unused.sim_arm]]").unwrap();
        let end = text.find("[policy.chunk]").unwrap();
        let text = format!("{}{}", &text[..start], &text[end..]).replace(
            "source = \"camera.top\"",
            "source = \"camera.top\"\noptional = true",
        );
        let launch = load(&text, &[]).unwrap();
        let joints = &launch.config.robot.joints;
        let names: Vec<_> = joints.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(
            names,
            (1..=7)
                .map(|j| format!("panda_joint{j}"))
                .collect::<Vec<_>>()
        );
        assert_eq!(joints[3].position, [-3.0718, -0.0698]);
        assert_eq!(joints[6].velocity, 2.61);
        let model = launch.robot_model.as_ref().unwrap();
        assert_eq!(model.chain.link_name(model.tip), "panda_hand_tcp");
    }

    #[test]
    fn schema_names_the_sections() {
        let schema = json_schema().to_string();
        for section in ["robot", "drivers", "policy", "zenoh", "sim_arm"] {
            assert!(schema.contains(section), "{section}");
        }
    }

    /// Each override must be refused with an error at `field`.
    fn rejected_at(overrides: &[&str], field: &str) -> LaunchError {
        let err = match load(EMBEDDED_SIM_ARM, overrides) {
            Ok(_) => panic!("{overrides:?} was accepted"),
            Err(err) => err,
        };
        assert_eq!(err.field, field, "{overrides:?}: {err}");
        err
    }

    #[test]
    fn durations_must_be_finite_positive_and_bounded() {
        for value in ["nan", "inf", "-1", "0", "1e300", "-inf"] {
            for field in [
                "control.startup_timeout_ms",
                "control.max_state_age_ms",
                "safety.estop_after_stale_ms",
            ] {
                let err = rejected_at(&[&format!("{field}={value}")], field);
                assert!(err.message.contains("must be in (0, "), "{err}");
            }
        }
        assert!(load(EMBEDDED_SIM_ARM, &["control.startup_timeout_ms=10000"]).is_ok());
        for value in ["nan", "inf", "0", "1000"] {
            rejected_at(&[&format!("zenoh.status_hz={value}")], "zenoh.status_hz");
        }
        rejected_at(&["control.spin_us=1000000000"], "control.spin_us");
        rejected_at(
            &["control.sim_inference_ticks=18446744073709551615"],
            "control.sim_inference_ticks",
        );
    }

    #[test]
    fn sim_arm_values_are_checked() {
        for (value, bad) in [
            ("[nan, 0.3, 0.2]", 0),
            ("[0.4, -0.3, 0.2]", 1),
            ("[0.4, 0.3, 0.0]", 2),
            ("[0.4, 0.3, inf]", 2),
        ] {
            let err = rejected_at(
                &[&format!("drivers.sim_arm[0].link_lengths={value}")],
                &format!("drivers.sim_arm[0].link_lengths[{bad}]"),
            );
            assert!(err.message.contains("positive length"), "{err}");
        }
        for value in ["1e12", "nan", "inf", "50"] {
            let err = rejected_at(
                &[&format!("drivers.sim_arm[0].physics_hz={value}")],
                "drivers.sim_arm[0].physics_hz",
            );
            assert!(err.message.contains("at most 100000"), "{err}");
        }
        for value in ["0", "nan", "inf", "-30"] {
            rejected_at(
                &[&format!("drivers.sim_arm[0].camera.fps={value}")],
                "drivers.sim_arm[0].camera.fps",
            );
        }
        rejected_at(
            &["drivers.sim_arm[0].initial_position=[nan, 0.6, 0.6]"],
            "drivers.sim_arm[0].initial_position[0]",
        );
        rejected_at(
            &["drivers.sim_arm[0].episode_seconds=inf"],
            "drivers.sim_arm[0].episode_seconds",
        );
        rejected_at(
            &["drivers.sim_arm[0].damping=nan"],
            "drivers.sim_arm[0].damping",
        );
    }

    #[test]
    fn joint_names_are_unique_and_not_empty() {
        let err = rejected_at(&["robot.joints[2].name=\"elbow\""], "robot.joints[2].name");
        // With a URDF the merge finds the duplicate first.
        assert!(
            err.message.contains("already the name of robot.joints[1]")
                || err
                    .message
                    .contains("already has an entry (robot.joints[1])"),
            "{err}"
        );
        rejected_at(&["robot.joints[0].name=\"\""], "robot.joints[0].name");
        // A NUL in a driver name used to panic when its thread was named.
        rejected_at(
            &["drivers.sim_arm[0].name=\"arm\\u0000\""],
            "drivers.sim_arm[0].name",
        );
        rejected_at(&["robot.joints[1].name=\"a\\nb\""], "robot.joints[1].name");
    }

    #[test]
    fn key_prefixes_must_be_exact_zenoh_keys() {
        for prefix in [
            "", "reflex/", "/reflex", "**", "a/*", "a//b", "a$*", "a?b", "a#b",
        ] {
            let err = rejected_at(
                &[&format!("zenoh.key_prefix=\"{prefix}\"")],
                "zenoh.key_prefix",
            );
            assert!(
                err.message.contains("zenoh key expression") || err.message.contains("wildcard"),
                "{prefix}: {err}"
            );
        }
        assert!(load(EMBEDDED_SIM_ARM, &["zenoh.key_prefix=\"lab/reflex\""]).is_ok());
        let zenoh_arm = include_str!("../../launch/zenoh_arm.toml");
        assert!(load(zenoh_arm, &[]).is_ok());
        for (field, key) in [
            ("command_key", "robots/**"),
            ("state_key", "robot/*/states"),
        ] {
            let set = format!("drivers.zenoh_arm[0].{field}=\"{key}\"");
            let err = load(zenoh_arm, &[&set]).unwrap_err();
            assert_eq!(err.field, format!("drivers.zenoh_arm[0].{field}"), "{err}");
            assert!(err.message.contains("wildcard"), "{err}");
        }
        let set = "drivers.zenoh_arm[0].command_key=\"robot/joint_commands\"";
        assert!(load(zenoh_arm, &[set]).is_ok());
    }

    #[test]
    fn endpoints_are_parsed_like_zenoh() {
        for (value, fragment) in [
            ("[\"garbage\"]", "not a zenoh endpoint"),
            ("[\"tcp/127.0.0.1:99999\"]", "port `99999`"),
            ("[\"tcp/127.0.0.1\"]", "host:port"),
            ("[\"tcp/:7447\"]", "no host"),
        ] {
            let err = rejected_at(&[&format!("zenoh.listen={value}")], "zenoh.listen[0]");
            assert!(err.message.contains(fragment), "{value}: {err}");
        }
        let err = rejected_at(
            &["zenoh.connect=[\"tcp/127.0.0.1:7447\", \"udp/[::1]:70000\"]"],
            "zenoh.connect[1]",
        );
        assert!(err.message.contains("70000"), "{err}");
        assert!(
            load(
                EMBEDDED_SIM_ARM,
                &["zenoh.connect=[\"tcp/[::1]:7447\", \"tcp/robot.local:7447\", \"unixsock-stream//tmp/z.sock\"]"]
            )
            .is_ok()
        );
    }

    #[test]
    fn a_missing_zenoh_config_file_is_reported_at_the_field() {
        let text = format!("{EMBEDDED_SIM_ARM}config_file = \"no_such_zenoh.json5\"\n");
        let err = load(&text, &[]).unwrap_err();
        assert_eq!(err.field, "zenoh.config_file", "{err}");
        assert!(err.message.contains("zenoh config file not found"), "{err}");
        let line = text
            .lines()
            .position(|l| l.starts_with("config_file"))
            .unwrap()
            + 1;
        assert_eq!(err.line, line, "{err}");
        // A directory is not a config file either.
        let err = rejected_at(&["zenoh.config_file=\"/\""], "zenoh.config_file");
        assert!(err.message.contains("not a regular file"), "{err}");
    }

    #[test]
    fn onnxruntime_settings_are_checked() {
        let err = rejected_at(
            &["policy.chunk.intra_threads=2000"],
            "policy.chunk.intra_threads",
        );
        assert!(err.message.contains("1..=256"), "{err}");
        rejected_at(
            &["policy.chunk.intra_threads=0"],
            "policy.chunk.intra_threads",
        );
        let err = rejected_at(
            &["onnxruntime.library=\"/nonexistent/libonnxruntime.so\""],
            "onnxruntime.library",
        );
        assert!(err.message.contains("library not found"), "{err}");
        rejected_at(
            &["onnxruntime.library=\"/dev/zero\""],
            "onnxruntime.library",
        );
        rejected_at(&["onnxruntime.device_id=-1"], "onnxruntime.device_id");
    }

    #[test]
    fn normalization_must_be_finite_with_positive_std() {
        let norm = |mean: &str, std: &str| {
            format!("policy.chunk.actions.normalize={{ mean = {mean}, std = {std} }}")
        };
        assert!(load(EMBEDDED_SIM_ARM, &[&norm("[0, 0, 0]", "[1, 1, 1]")]).is_ok());
        for (mean, std, field) in [
            ("[nan, 0, 0]", "[1, 1, 1]", "mean[0]"),
            ("[0, inf, 0]", "[1, 1, 1]", "mean[1]"),
            ("[0, 0, 0]", "[1, 1, nan]", "std[2]"),
            ("[0, 0, 0]", "[1, 0, 1]", "std[1]"),
            ("[0, 0, 0]", "[1, -1, 1]", "std[1]"),
        ] {
            rejected_at(
                &[&norm(mean, std)],
                &format!("policy.chunk.actions.normalize.{field}"),
            );
        }
    }

    #[test]
    fn sizes_are_bounded() {
        rejected_at(
            &["policy.chunk.actions.horizon=100000000"],
            "policy.chunk.actions.horizon",
        );
        rejected_at(
            &["policy.chunk.inputs[1].shape=[1, 1000000000000]"],
            "policy.chunk.inputs[1].shape",
        );
        rejected_at(
            &["policy.chunk.inputs[0].image.resize=[100000, 100000]"],
            "policy.chunk.inputs[0].image.resize",
        );
        let flow = include_str!("../../launch/sim_arm_flow.toml");
        let err = load(flow, &["policy.flow.actions.dim=10000000000000000"]).unwrap_err();
        assert_eq!(err.field, "policy.flow.actions.dim", "{err}");
    }

    #[test]
    fn launch_files_over_the_cap_are_refused_before_parsing() {
        let mut text = String::from(EMBEDDED_SIM_ARM);
        text.push_str("# ");
        text.push_str(&"x".repeat(MAX_LAUNCH_BYTES as usize));
        let err = load(&text, &[]).unwrap_err();
        assert!(err.message.contains("limited to 1 MiB"), "{err}");
        let dir = std::env::temp_dir().join(format!("reflex-launch-cap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.toml");
        std::fs::write(&path, &text).unwrap();
        let err = Launch::from_file(&path, &[]).unwrap_err();
        assert!(err.message.contains("limited to 1 MiB"), "{err}");
        let err = Launch::from_file(Path::new("/dev/zero"), &[]).unwrap_err();
        assert!(err.message.contains("not a regular file"), "{err}");
    }

    #[test]
    fn overrides_reach_array_elements() {
        let launch = load(
            EMBEDDED_SIM_ARM,
            &["drivers.sim_arm[0].link_lengths[1]=0.35"],
        )
        .unwrap();
        assert_eq!(
            launch.config.drivers.sim_arm[0].link_lengths,
            [0.4, 0.35, 0.2]
        );
        // A whole `[[robot.joints]]` element from an inline table.
        let launch = load(
            EMBEDDED_SIM_ARM,
            &["robot.joints[2]={ name = \"wrist\", position = [-1.0, 1.0], velocity = 1.0, acceleration = 4.0 }"],
        )
        .unwrap();
        assert_eq!(launch.config.robot.joints.len(), 3);
        assert_eq!(launch.config.robot.joints[2].name, "wrist");
        assert_eq!(launch.config.robot.joints[2].position, [-1.0, 1.0]);
        // A plain value cannot replace a table element: it used to delete the joint.
        let err = load(EMBEDDED_SIM_ARM, &["robot.joints[2]=5"]).unwrap_err();
        assert!(err.message.contains("is a table"), "{err}");
        assert_eq!(err.from_override.as_deref(), Some("robot.joints[2]=5"));
        let err = load(EMBEDDED_SIM_ARM, &["robot.joints[3].velocity=1"]).unwrap_err();
        assert!(
            err.message.contains("no element [3], the array has 3"),
            "{err}"
        );
        let err = load(EMBEDDED_SIM_ARM, &["drivers.sim_arm[0].link_lengths[7]=1"]).unwrap_err();
        assert!(err.message.contains("no element [7]"), "{err}");
    }

    #[test]
    fn malformed_override_keys_are_errors() {
        for spec in [
            "control..rate_hz=50",
            ".control.rate_hz=50",
            "control.rate_hz.=50",
            "=50",
            "robot.joints[x].velocity=1",
            "robot.joints[1.velocity=1",
            "robot.joints[1]x.velocity=1",
            "control.rate hz=50",
        ] {
            let err = match load(EMBEDDED_SIM_ARM, &[spec]) {
                Ok(_) => panic!("`{spec}` was accepted"),
                Err(err) => err,
            };
            assert_eq!(err.from_override.as_deref(), Some(spec), "{err}");
        }
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}
