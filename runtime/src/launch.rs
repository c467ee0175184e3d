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

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
    pub joints: Vec<JointConfig>,
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
}

impl Launch {
    /// Reads and validates a launch file from disk.
    pub fn from_file(path: &Path, overrides: &[String]) -> Result<Self, LaunchError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| LaunchError {
            file: origin.clone(),
            line: 0,
            column: 0,
            field: String::new(),
            message: format!("cannot read launch file: {e}"),
            from_override: None,
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
        launch.validate()?;
        Ok(launch)
    }

    /// An error about `field` (a dotted path), positioned at that field.
    pub fn error_at(&self, field: &str, message: impl Into<String>) -> LaunchError {
        let from_override = self
            .overrides
            .iter()
            .find(|(key, _)| field == key || field.starts_with(&format!("{key}.")))
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
        let mut files = vec![("model", "model file", common.model)];
        if let Some(fast) = &policy.fast {
            files.push(("prefix_model", "model file", fast.prefix_model.as_path()));
        }
        if let Some(prefix) = policy.flow.as_ref().and_then(|f| f.prefix_model.as_ref()) {
            files.push(("prefix_model", "model file", prefix.as_path()));
        }
        let stats = (policy.flow.as_ref().and_then(|f| f.norm_stats.as_ref())).or(policy
            .diffusion
            .as_ref()
            .and_then(|d| d.norm_stats.as_ref()));
        if let Some(stats) = stats {
            files.push(("norm_stats.file", "statistics file", stats.file.as_path()));
        }
        if let Some(file) = policy
            .diffusion
            .as_ref()
            .and_then(|d| d.schedule.file.as_ref())
        {
            files.push(("schedule.file", "schedule file", file.as_path()));
        }
        for (field, what, file) in files {
            let path = self.resolve(file);
            if !path.is_file() {
                let at = format!("{}.{field}", common.table);
                return Err(self.error_at(&at, format!("{what} not found: {}", path.display())));
            }
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
                inputs: &c.inputs,
            }
        } else if let Some(f) = &p.fast {
            PolicyCommon {
                table: "policy.fast",
                model: &f.model,
                action_rate_hz: f.action_rate_hz,
                replan_after: f.replan_after,
                inputs: &f.inputs,
            }
        } else if let Some(f) = &p.flow {
            PolicyCommon {
                table: "policy.flow",
                model: &f.model,
                action_rate_hz: f.action_rate_hz,
                replan_after: f.replan_after,
                inputs: &f.inputs,
            }
        } else if let Some(d) = &p.diffusion {
            PolicyCommon {
                table: "policy.diffusion",
                model: &d.model,
                action_rate_hz: d.action_rate_hz,
                replan_after: d.replan_after,
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
        }
        self.check_safety(&c.safety, joints)?;
        let control = &c.control;
        if !(control.rate_hz.is_finite() && control.rate_hz > 0.0 && control.rate_hz <= 10_000.0) {
            return Err(self.error_at(
                "control.rate_hz",
                format!("must be in (0, 10000], found {}", control.rate_hz),
            ));
        }
        if !is_positive(control.max_state_age_ms) {
            return Err(self.error_at("control.max_state_age_ms", "must be positive"));
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
            if !arm.initial_position.is_empty() && arm.initial_position.len() != joints {
                return Err(self.error_at(
                    &at("initial_position"),
                    format!(
                        "has {} values, expected {joints}",
                        arm.initial_position.len()
                    ),
                ));
            }
            if let Some((j, p)) = arm
                .initial_position
                .iter()
                .enumerate()
                .find(|(j, p)| {
                    let [lo, hi] = c.robot.joints[*j].position;
                    !(p.is_finite() && **p >= lo && **p <= hi)
                })
            {
                return Err(self.error_at(
                    &at("initial_position"),
                    format!(
                        "joint {j} starts at {p}: must be a finite number inside its limits {:?}",
                        c.robot.joints[j].position
                    ),
                ));
            }
            if arm.physics_hz.is_nan() || arm.physics_hz < control.rate_hz {
                return Err(self.error_at(&at("physics_hz"), "must be at least control.rate_hz"));
            }
            if !is_positive(arm.episode_seconds) {
                return Err(self.error_at(&at("episode_seconds"), "must be positive"));
            }
            if let Some(camera) = &arm.camera
                && (camera.width < 8
                    || camera.height < 8
                    || camera.width > 4096
                    || camera.height > 4096)
            {
                return Err(self.error_at(&at("camera"), "width and height must be in 8..=4096"));
            }
        }
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
        if let Some(policy) = &c.policy.chunk {
            if policy.actions.horizon == 0 {
                return Err(self.error_at("policy.chunk.actions.horizon", "must be at least 1"));
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
            if policy.max_tokens == 0 {
                return Err(self.error_at("policy.fast.max_tokens", "must be at least 1"));
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
                        && input.shape[1] >= joints as i64;
                    if !fits {
                        return Err(self.error_at(
                            &at("shape"),
                            format!(
                                "a joint vector input has shape [1, N] with N >= {joints} \
                                 (zero-padded), found {:?}",
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
        if actions.horizon == 0 {
            return Err(self.error_at(&format!("{table}.actions.horizon"), "must be at least 1"));
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
        if norm.std.iter().any(|s| s.is_nan() || *s < 0.0) {
            return Err(self.error_at(&format!("{field}.std"), "must be non-negative"));
        }
        Ok(())
    }
}

/// False for NaN, zero and negative numbers.
impl Launch {
    fn check_safety(&self, safety: &SafetyConfig, joints: usize) -> Result<(), LaunchError> {
        // (field, value, smallest allowed, largest allowed)
        let mut bounded = vec![
            ("estop_after_stale_ms", safety.estop_after_stale_ms, 0.0, 60_000.0),
            ("state_limit_margin", safety.state_limit_margin, 0.0, 0.5),
            ("recovery_velocity_fraction", safety.recovery_velocity_fraction, 0.0, 1.0),
            ("rearm_max_velocity", safety.rearm_max_velocity, 0.0, 10.0),
            ("rearm_position_tolerance", safety.rearm_position_tolerance, 0.0, 1.0),
            ("tracking_lag_ms", safety.tracking_lag_ms, 0.0, 10_000.0),
        ];
        if let Some(ms) = safety.operator.heartbeat_ms {
            bounded.push(("operator.heartbeat_ms", ms, 1.0, 600_000.0));
        }
        for (field, value, lo, hi) in bounded {
            // Written so that NaN fails too.
            if !(value >= lo && value <= hi) {
                return Err(self.error_at(
                    &format!("safety.{field}"),
                    format!("must be a number in [{lo}, {hi}], found {value}"),
                ));
            }
        }
        if safety.recovery_velocity_fraction == 0.0 {
            return Err(self.error_at(
                "safety.recovery_velocity_fraction",
                "must be above 0 (a joint past its limit could never come back)",
            ));
        }
        if let Some(errors) = &safety.max_tracking_error {
            if errors.len() != joints {
                return Err(self.error_at(
                    "safety.max_tracking_error",
                    format!("has {} values, expected one per joint ({joints})", errors.len()),
                ));
            }
            if let Some(bad) = errors.iter().find(|e| !(e.is_finite() && **e > 0.0)) {
                return Err(self.error_at(
                    "safety.max_tracking_error",
                    format!("each value must be a positive number of rad, found {bad}"),
                ));
            }
        }
        let format = self.config.zenoh.command_format;
        if !(1..=2).contains(&format) {
            return Err(self.error_at(
                "zenoh.command_format",
                format!("must be 1 (positions) or 2 (with velocities and accelerations), found {format}"),
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
    let steps = path_steps(key);
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
            PathStep::Index(i) => item
                .get_mut(*i)
                .ok_or_else(|| format!("`{key}`: no element [{i}]"))?,
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
            let slot = item
                .get_mut(*i)
                .ok_or_else(|| format!("`{key}`: no element [{i}]"))?;
            *slot = toml_edit::Item::Value(value);
        }
    }
    Ok((key.to_string(), raw.to_string()))
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

    #[test]
    fn schema_names_the_sections() {
        let schema = json_schema().to_string();
        for section in ["robot", "drivers", "policy", "zenoh", "sim_arm"] {
            assert!(schema.contains(section), "{section}");
        }
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}
