//! The launch-file tables of the ONNX policy kinds (`[policy] kind = "chunk" |
//! "fast" | "flow" | "diffusion"`), their inputs and preprocessing, and the checks
//! that run on them when the launch file is checked.

use std::path::PathBuf;

use reflex_runtime::launch::{LaunchError, MAX_ACTION_DIM, MAX_HORIZON, MAX_IMAGE_SIDE};
use reflex_runtime::registry::KindTable;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::prompt::{PromptConfig, PromptTokenizer};

/// ONNX Runtime intra-op threads.
pub const MAX_INTRA_THREADS: usize = 256;
pub const MAX_FAST_TOKENS: usize = 65_536;

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
    /// How the task instruction (`[task]`) becomes `prompt.*` inputs.
    pub prompt: Option<PromptConfig>,
    pub actions: GenerativeActions,
    pub norm_stats: Option<NormStatsConfig>,
    /// Guided real-time chunking (`[execution] strategy = "rtc"`): the step graph
    /// with one more input, `cotangent` [B, H, D], and one more output, `vjp`
    /// [B, H, D] = (d velocity / d noisy_actions)^T cotangent, beside its
    /// velocity (policies/export/make_rtc_models.py writes one).
    pub vjp_model: Option<PathBuf>,
    /// DSRL: a latent-noise policy chooses the initial noise.
    pub latent_noise: Option<LatentNoiseConfig>,
    #[serde(default)]
    pub ports: FlowPorts,
}

/// `[policy.latent_noise]`: DSRL (Wagenmaker et al. 2025). A small policy (ONNX)
/// maps the observation to the sampler's initial noise w instead of the seeded
/// Gaussian: its output, `[1, H, D]` or `[1, D]` (repeated over the horizon), is
/// squashed to `action_magnitude * tanh(output)`. With `batch = B > 1` the first
/// candidate starts from w and the others from seeded noise (a `vgps` stage then
/// picks among them).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LatentNoiseConfig {
    pub model: PathBuf,
    /// Its observation inputs, as `[[policy.inputs]]`.
    #[serde(default)]
    pub inputs: Vec<InputConfig>,
    /// Outputs of the policy's prefix graph (`prefix_model`) fed to it as inputs
    /// of the same name, computed once per chunk and shared with the sampler
    /// (DSRL feeds pi0's last prefix token).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix_outputs: Vec<String>,
    /// Its output port.
    #[serde(default = "defaults::noise_output")]
    pub output: String,
    /// The bound of w (DSRL: 1.0 to 2.5).
    #[serde(default = "defaults::action_magnitude")]
    pub action_magnitude: f64,
    /// Gaussian exploration added to w (then clipped to the bound), for data
    /// collection; 0 (default) runs the policy as it is.
    #[serde(default)]
    pub exploration_std: f64,
    #[serde(default = "defaults::intra_threads")]
    pub intra_threads: usize,
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
    /// The VJP graph's cotangent input and VJP output.
    #[serde(default = "defaults::cotangent")]
    pub cotangent: String,
    #[serde(default = "defaults::vjp")]
    pub vjp: String,
    /// Training-time real-time chunking: the step graph's input marking the
    /// frozen actions of `noisy_actions` ([B, H], 1 = frozen).
    #[serde(default = "defaults::prefix_mask")]
    pub prefix_mask: String,
}

impl Default for FlowPorts {
    fn default() -> Self {
        Self {
            noisy_actions: defaults::noisy_actions(),
            time: defaults::time(),
            output: defaults::velocity(),
            cotangent: defaults::cotangent(),
            vjp: defaults::vjp(),
            prefix_mask: defaults::prefix_mask(),
        }
    }
}

/// A diffusion policy: a denoising network (eps, sample or v prediction) sampled
/// with diffusers' DDIM or DDPM on a noise schedule. The graph takes the mapped
/// observation inputs plus `noisy_actions` [B, H, D] and `timestep` [B] (int64 or
/// float32) and returns its prediction [B, H, D].
///
/// Split form (`prefix_model` too), as for flow: the observation encoder runs
/// once per chunk (Diffusion Policy's image encoder -> `global_cond`) and each of
/// its outputs is fed, by name, to the noise network at every step.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiffusionPolicyConfig {
    /// The noise network (single form: with the observation inputs).
    pub model: PathBuf,
    /// The observation encoder of the split form.
    pub prefix_model: Option<PathBuf>,
    #[serde(default = "defaults::intra_threads")]
    pub intra_threads: usize,
    /// Denoising steps per chunk.
    #[serde(default = "defaults::ddim_steps")]
    pub num_steps: usize,
    #[serde(default = "defaults::batch")]
    pub batch: usize,
    pub inputs: Vec<InputConfig>,
    /// How the task instruction (`[task]`) becomes `prompt.*` inputs.
    pub prompt: Option<PromptConfig>,
    pub actions: GenerativeActions,
    pub norm_stats: Option<NormStatsConfig>,
    pub schedule: ScheduleConfig,
    /// DSRL: a latent-noise policy chooses the initial noise (DDIM with eta = 0
    /// only: the sample must be a function of it).
    pub latent_noise: Option<LatentNoiseConfig>,
    /// Guided real-time chunking (`[execution] strategy = "rtc"`): the noise
    /// network with one more input, `cotangent` [B, H, D], and one more output,
    /// `vjp` [B, H, D] = (d output / d noisy_actions)^T cotangent, beside its
    /// prediction (policies/export/make_rtc_models.py writes them for its graphs).
    pub vjp_model: Option<PathBuf>,
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
    /// The VJP graph's cotangent input and VJP output.
    #[serde(default = "defaults::cotangent")]
    pub cotangent: String,
    #[serde(default = "defaults::vjp")]
    pub vjp: String,
    /// Training-time real-time chunking: the noise network's input marking the
    /// frozen (clean) actions of `noisy_actions` ([B, H], 1 = frozen).
    #[serde(default = "defaults::prefix_mask")]
    pub prefix_mask: String,
}

impl Default for DiffusionPorts {
    fn default() -> Self {
        Self {
            noisy_actions: defaults::noisy_actions(),
            timestep: defaults::timestep(),
            output: defaults::eps(),
            cotangent: defaults::cotangent(),
            vjp: defaults::vjp(),
            prefix_mask: defaults::prefix_mask(),
        }
    }
}

pub use crate::scheduler::{ScheduleConfig, ScheduleKind};

/// The action chunk of a generative policy, in the model's space.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerativeActions {
    /// H, actions per chunk.
    pub horizon: usize,
    /// D, the model's action width; the robot's joints are the first ones and the
    /// rest is padding (pi0: 32). Defaults to the number of joints.
    pub dim: Option<usize>,
    /// Replaced by `[execution] target = "delta"`; kept to say so.
    #[serde(default)]
    #[schemars(skip)]
    pub delta: bool,
}

/// Normalization statistics from a file: openpi's `norm_stats.json` (or the same
/// keys without the `norm_stats` wrapper), a LeRobot dataset's `meta/stats.json`,
/// or LeRobot's normalizer state
/// (`policy_preprocessor_step_*_normalizer_processor.safetensors`).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NormStatsConfig {
    pub file: PathBuf,
    /// The normalization of the state and the actions, unless `state_mode` /
    /// `actions_mode` say otherwise.
    #[serde(default)]
    pub mode: NormMode,
    /// LeRobot's `normalization_mapping` STATE.
    pub state_mode: Option<NormMode>,
    /// LeRobot's `normalization_mapping` ACTION.
    pub actions_mode: Option<NormMode>,
    /// Camera inputs with `stats = "<key>"`, per channel (LeRobot's VISUAL).
    #[serde(default = "defaults::image_mode")]
    pub image_mode: NormMode,
    /// Which entry normalizes joint-vector inputs.
    #[serde(default = "defaults::state_key")]
    pub state_key: String,
    /// Which entry unnormalizes the actions.
    #[serde(default = "defaults::actions_key")]
    pub actions_key: String,
}

impl NormStatsConfig {
    pub fn state_mode(&self) -> NormMode {
        self.state_mode.unwrap_or(self.mode)
    }

    pub fn actions_mode(&self) -> NormMode {
        self.actions_mode.unwrap_or(self.mode)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NormMode {
    /// `(x - mean) / (std + 1e-6)` (openpi's pi0)
    #[default]
    ZScore,
    /// `(x - q01) / (q99 - q01 + 1e-6) * 2 - 1` (openpi's pi0-FAST, pi0.5)
    Quantile,
    /// LeRobot's MEAN_STD: `(x - mean) / (std + 1e-8)`, undone as `x * std + mean`
    MeanStd,
    /// LeRobot's MIN_MAX: `2 (x - min) / (max - min) - 1` (1e-8 when max = min)
    MinMax,
    /// LeRobot's IDENTITY: values pass as they are
    Identity,
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
    #[serde(default = "defaults::intra_threads")]
    pub intra_threads: usize,
    pub inputs: Vec<InputConfig>,
    /// How the task instruction (`[task]`) becomes `prompt.*` inputs.
    pub prompt: Option<PromptConfig>,
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
    /// Candidate chunks per inference (K, what `[[stages]]` such as V-GPS choose
    /// from): the prefix runs once, every candidate decodes from its cache with
    /// its own seeded sampling stream. Above 1 needs `temperature > 0`.
    #[serde(default = "defaults::batch")]
    pub batch: usize,
    /// `strict` rejects sequences that do not give exactly T x D coefficients;
    /// `pad_missing` fills missing trailing coefficients with zeros.
    #[serde(default)]
    pub decode: FastDecode,
    /// Undo the quantile normalization of pi0-FAST: `(x + 1) / 2 * (q99 - q01) + q01`.
    pub quantiles: Option<Quantiles>,
    /// Or a statistics file: its actions entry undoes the decoded actions' (pi0-FAST:
    /// `mode = "quantile"`) and its state entry normalizes joint inputs.
    pub norm_stats: Option<NormStatsConfig>,
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

/// An ONNX model that maps observations to an action chunk `[1, H, D]` of absolute
/// joint positions.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChunkPolicyConfig {
    /// Path to the .onnx file, relative to the launch file.
    pub model: PathBuf,
    /// ONNX Runtime intra-op threads.
    #[serde(default = "defaults::intra_threads")]
    pub intra_threads: usize,
    pub inputs: Vec<InputConfig>,
    /// How the task instruction (`[task]`) becomes `prompt.*` inputs.
    pub prompt: Option<PromptConfig>,
    pub actions: ActionsConfig,
    /// Statistics that normalize the inputs and unnormalize the actions (instead
    /// of the inline `normalize` tables).
    pub norm_stats: Option<NormStatsConfig>,
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
    /// Observations this input holds, the current one last, one action period
    /// apart (LeRobot's `n_obs_steps`): above 1 the shape gains a time axis after
    /// the batch, e.g. `[1, 2, 3]` for two joint vectors of three joints.
    #[serde(default = "defaults::history")]
    pub history: usize,
    /// Normalize with this entry of `[policy.norm_stats]`'s file (e.g.
    /// `observation.images.top`): a camera per channel after `image.range`, with
    /// `image_mode`; a vector per value, with `state_mode`.
    pub stats: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TensorDtype {
    #[default]
    Float32,
    Uint8,
    /// Camera masks and prompt attention masks.
    Bool,
    /// Prompt token ids and attention masks.
    Int64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ObservationSource {
    JointPositions,
    JointVelocities,
    Camera(String),
    /// True when the camera's image is present (pi0's `image_mask`).
    CameraMask(String),
    /// A tensor stream's `data` or an audio stream's `samples` (float32 values of
    /// the stream's shape).
    Tensor(String),
    /// The task instruction's token ids (`[policy.prompt]`), `[1, max_length]`.
    PromptIds,
    /// 1 for the instruction's tokens, 0 for padding, `[1, max_length]`.
    PromptMask,
    /// `<stream>.<field>` as written, resolved against the streams the drivers
    /// declare when the launch file is checked: a joint state's `position` or
    /// `velocity`, an image stream's `image` or `present`.
    Stream {
        stream: String,
        field: String,
    },
}

impl TryFrom<String> for ObservationSource {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "state.joint_positions" => Ok(Self::JointPositions),
            "state.joint_velocities" => Ok(Self::JointVelocities),
            "prompt.input_ids" => Ok(Self::PromptIds),
            "prompt.attention_mask" => Ok(Self::PromptMask),
            _ => match (
                text.strip_prefix("camera."),
                text.strip_prefix("camera_mask."),
            ) {
                (Some(name), _) if !name.is_empty() => Ok(Self::Camera(name.to_string())),
                (_, Some(name)) if !name.is_empty() => Ok(Self::CameraMask(name.to_string())),
                _ if text.split_once('.').is_some_and(|(stream, field)| {
                    !stream.is_empty() && !field.is_empty() && !field.contains('.')
                }) =>
                {
                    let (stream, field) = text.split_once('.').unwrap_or_default();
                    Ok(Self::Stream {
                        stream: stream.to_string(),
                        field: field.to_string(),
                    })
                }
                _ => Err(format!(
                    "unknown observation source `{text}`, expected `<stream>.<field>` (e.g. \
                     `arm.position`, `top.image`), `prompt.input_ids` or \
                     `prompt.attention_mask`"
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
            ObservationSource::Tensor(name) => format!("{name}.data"),
            ObservationSource::PromptIds => "prompt.input_ids".into(),
            ObservationSource::PromptMask => "prompt.attention_mask".into(),
            ObservationSource::Stream { stream, field } => format!("{stream}.{field}"),
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
    /// `area` (default): the mean of each block when the size divides evenly
    /// (OpenCV's `INTER_AREA`), else `bilinear`; `bilinear`: bilinear with
    /// half-pixel centres at every size (torch `interpolate(mode="bilinear")`,
    /// OpenCV's `INTER_LINEAR`); `pil_bilinear`: Pillow's antialiased bilinear
    /// on uint8, bit-exact (openpi's `resize_with_pad`).
    #[serde(default)]
    pub filter: ResizeFilter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResizeFilter {
    /// Block mean at whole factors, else bilinear (`linear` is its old name).
    #[default]
    #[serde(alias = "linear")]
    Area,
    Bilinear,
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

/// `[policy.norm_stats]`, when given: its file exists and is not too large, and
/// `inline` (the field of a kind's inline actions statistics, when that is set)
/// does not say the same thing twice.
pub fn check_norm_stats(
    table: &KindTable<'_>,
    stats: Option<&NormStatsConfig>,
    inline: Option<&str>,
) -> Result<(), LaunchError> {
    let Some(stats) = stats else { return Ok(()) };
    if let Some(field) = inline {
        return Err(table.error_at(
            field,
            "give the actions' statistics inline or in norm_stats, not both",
        ));
    }
    table.check_file(
        "norm_stats.file",
        &stats.file,
        "statistics file",
        reflex_runtime::files::MAX_DATA_BYTES,
    )?;
    Ok(())
}

/// The inputs of an ONNX policy kind's table (None for other kinds).
pub fn inputs_of(spec: &dyn reflex_runtime::registry::PolicySpec) -> Option<&[InputConfig]> {
    let any = spec.as_any();
    if let Some(c) = any.downcast_ref::<ChunkPolicyConfig>() {
        Some(&c.inputs)
    } else if let Some(c) = any.downcast_ref::<FastPolicyConfig>() {
        Some(&c.inputs)
    } else if let Some(c) = any.downcast_ref::<FlowPolicyConfig>() {
        Some(&c.inputs)
    } else {
        any.downcast_ref::<DiffusionPolicyConfig>()
            .map(|c| c.inputs.as_slice())
    }
}

/// Checks the inputs against the robot and the declared streams.
pub fn check_inputs(
    table: &KindTable<'_>,
    inputs: &mut [InputConfig],
    prompt: Option<&PromptConfig>,
) -> Result<(), LaunchError> {
    check_inputs_at(table, "", inputs, prompt)
}

/// [`check_inputs`] for inputs under `prefix` (`latent_noise.`) in the table.
pub fn check_inputs_at(
    table: &KindTable<'_>,
    prefix: &str,
    inputs: &mut [InputConfig],
    prompt: Option<&PromptConfig>,
) -> Result<(), LaunchError> {
    let launch = table.launch();
    for (i, input) in inputs.iter_mut().enumerate() {
        if let ObservationSource::Stream { stream, field } = &input.source {
            input.source = resolve_stream(launch, stream, field).map_err(|message| {
                table.error_at(&format!("{prefix}inputs[{i}].source"), message)
            })?;
        }
    }
    let inputs: &[InputConfig] = inputs;
    let tokenizer = prompt.map(|p| load_prompt(table, p)).transpose()?;
    // A joint vector: the joints, then the gripper's opening when the robot has one
    // (the state layout of LeRobot and openpi).
    let joints = launch.action_width();
    let cameras = launch.camera_names();
    for (i, input) in inputs.iter().enumerate() {
        let at = |field: &str| format!("{prefix}inputs[{i}].{field}");
        if !(1..=MAX_HISTORY).contains(&input.history) {
            return Err(table.error_at(
                &at("history"),
                format!("must be in 1..={MAX_HISTORY}, found {}", input.history),
            ));
        }
        // With history the time axis follows the batch axis; what follows it is one
        // observation, checked like an input without history.
        let frames = input.history;
        let frame_input;
        let input = if frames > 1 {
            if input.shape.get(1) != Some(&(frames as i64)) {
                return Err(table.error_at(
                    &at("shape"),
                    format!(
                        "with history = {frames} the shape is [1, {frames}, ...] (batch, time, \
                         one observation), found {:?}",
                        input.shape
                    ),
                ));
            }
            if matches!(input.source, ObservationSource::CameraMask(_)) {
                return Err(table.error_at(&at("history"), "a camera mask has no history"));
            }
            frame_input = InputConfig {
                shape: std::iter::once(input.shape[0])
                    .chain(input.shape[2..].iter().copied())
                    .collect(),
                ..input.clone()
            };
            &frame_input
        } else {
            input
        };
        match &input.source {
            // Resolved above.
            ObservationSource::Stream { .. } => {}
            ObservationSource::PromptIds | ObservationSource::PromptMask => {
                let Some(tokenizer) = &tokenizer else {
                    return Err(table.error_at(
                        &at("source"),
                        "prompt inputs need a [policy.prompt] table (tokenizer, max_length)",
                    ));
                };
                let length = tokenizer.max_length() as i64;
                if input.shape != [1, length] {
                    return Err(table.error_at(
                        &at("shape"),
                        format!(
                            "prompt inputs have shape [1, {length}] (prompt.max_length), found {:?}",
                            input.shape
                        ),
                    ));
                }
                let ids = matches!(input.source, ObservationSource::PromptIds);
                let dtype_ok = match input.dtype {
                    TensorDtype::Int64 => true,
                    TensorDtype::Bool | TensorDtype::Float32 => !ids,
                    TensorDtype::Uint8 => false,
                };
                if !dtype_ok {
                    return Err(table.error_at(
                        &at("dtype"),
                        if ids {
                            "token ids are int64"
                        } else {
                            "an attention mask is int64, bool or float32"
                        },
                    ));
                }
                if input.history != 1 || input.image.is_some() || input.normalize.is_some() {
                    return Err(table.error_at(
                        &at("source"),
                        "prompt inputs take no history, image or normalize settings",
                    ));
                }
            }
            ObservationSource::CameraMask(name) => {
                let camera_input = inputs.iter().find(
                    |other| matches!(&other.source, ObservationSource::Camera(n) if n == name),
                );
                if camera_input.is_none() {
                    return Err(table.error_at(
                        &at("source"),
                        format!("no `camera.{name}` input for this mask to describe"),
                    ));
                }
                if input.shape != [1] && input.shape != [1, 1] {
                    return Err(table.error_at(
                        &at("shape"),
                        format!("a camera mask has shape [1], found {:?}", input.shape),
                    ));
                }
                if matches!(input.dtype, TensorDtype::Uint8 | TensorDtype::Int64) {
                    return Err(table.error_at(&at("dtype"), "a camera mask is bool or float32"));
                }
            }
            ObservationSource::Camera(name) => {
                if !cameras.contains(name) && !input.optional {
                    return Err(table.error_at(
                        &at("source"),
                        format!(
                            "no camera named `{name}`; cameras: {} (set `optional = true` \
                             for a view this robot does not have)",
                            list_or_none(&cameras)
                        ),
                    ));
                }
                if !matches!(input.dtype, TensorDtype::Float32 | TensorDtype::Uint8) {
                    return Err(table.error_at(&at("dtype"), "images are float32 or uint8"));
                }
                if input.normalize.is_some() {
                    return Err(table.error_at(
                        &at("normalize"),
                        "camera inputs are scaled by `image.range`; `normalize` (mean, std) \
                         applies to joint vectors",
                    ));
                }
                let Some(image) = &input.image else {
                    return Err(table.error_at(
                        &at("image"),
                        "camera inputs need an [image] table (resize, layout)",
                    ));
                };
                let [h, w] = image.resize;
                if !(1..=MAX_IMAGE_SIDE).contains(&h) || !(1..=MAX_IMAGE_SIDE).contains(&w) {
                    return Err(table.error_at(
                        &at("image.resize"),
                        format!("height and width must be in 1..={MAX_IMAGE_SIDE}"),
                    ));
                }
                let expected: Vec<i64> = match image.layout {
                    ImageLayout::Nchw => vec![1, 3, h as i64, w as i64],
                    ImageLayout::Nhwc => vec![1, h as i64, w as i64, 3],
                };
                if input.shape != expected {
                    return Err(table.error_at(
                        &at("shape"),
                        format!(
                            "{:?} does not match the image settings, which give {expected:?}",
                            input.shape
                        ),
                    ));
                }
            }
            ObservationSource::Tensor(name) => {
                let stream = launch
                    .streams
                    .iter()
                    .find(|s| &s.name == name && s.is_tensor());
                let Some(stream) = stream else {
                    return Err(table
                        .error_at(&at("source"), format!("no tensor or audio stream `{name}`")));
                };
                let want = stream.kind.shape();
                let values = stream.kind.values() as i64;
                // [1, ...the stream's shape], or [1, values] flattened.
                let shape_ok = input.shape.first() == Some(&1)
                    && (input.shape[1..]
                        .iter()
                        .map(|&d| d as usize)
                        .eq(want.iter().copied())
                        || input.shape[1..] == [values]);
                if !shape_ok {
                    return Err(table.error_at(
                        &at("shape"),
                        format!(
                            "stream `{name}` has samples of shape {want:?}: the input is [1, {}] \
                             or [1, {values}], found {:?}",
                            want.iter()
                                .map(usize::to_string)
                                .collect::<Vec<_>>()
                                .join(", "),
                            input.shape
                        ),
                    ));
                }
                if input.dtype != TensorDtype::Float32 {
                    return Err(
                        table.error_at(&at("dtype"), "tensor and audio samples are float32")
                    );
                }
                if input.image.is_some() {
                    return Err(
                        table.error_at(&at("image"), "only camera inputs take image preprocessing")
                    );
                }
                if let Some(norm) = &input.normalize {
                    check_normalization(table, norm, values as usize, &at("normalize"))?;
                }
            }
            ObservationSource::JointPositions | ObservationSource::JointVelocities => {
                // Wider than the robot: zero padding (pi0 pads state to 32).
                let fits = input.shape.len() == 2
                    && input.shape[0] == 1
                    && input.shape[1] >= joints as i64
                    && input.shape[1] <= MAX_ACTION_DIM as i64;
                if !fits {
                    return Err(table.error_at(
                        &at("shape"),
                        format!(
                            "a joint vector input has shape [1, N] with {joints} <= N <= \
                             {MAX_ACTION_DIM} (zero-padded), found {:?}",
                            input.shape
                        ),
                    ));
                }
                if input.dtype != TensorDtype::Float32 {
                    return Err(table.error_at(&at("dtype"), "joint vectors are float32"));
                }
                if input.image.is_some() {
                    return Err(
                        table.error_at(&at("image"), "only camera inputs take image preprocessing")
                    );
                }
                if let Some(norm) = &input.normalize {
                    check_normalization(table, norm, joints, &at("normalize"))?;
                }
            }
        }
    }
    Ok(())
}

/// `<stream>.<field>` against the declared streams.
pub(crate) fn resolve_stream(
    launch: &reflex_runtime::launch::Launch,
    stream: &str,
    field: &str,
) -> Result<ObservationSource, String> {
    use reflex_runtime::stream::StreamKind;
    let Some(declared) = launch.streams.iter().find(|s| s.name == stream) else {
        let names: Vec<String> = launch.streams.iter().map(|s| s.name.clone()).collect();
        return Err(format!(
            "no stream named `{stream}`; streams: {}",
            list_or_none(&names)
        ));
    };
    match (&declared.kind, field) {
        (StreamKind::JointState { .. }, "position") => {
            if launch.arm().is_some_and(|arm| arm.name() == stream) {
                Ok(ObservationSource::JointPositions)
            } else {
                Err(format!("`{stream}` is not the arm's joint state"))
            }
        }
        (StreamKind::JointState { .. }, "velocity") => Ok(ObservationSource::JointVelocities),
        (StreamKind::Image { .. }, "image") => Ok(ObservationSource::Camera(stream.to_string())),
        (StreamKind::Image { .. }, "present") => {
            Ok(ObservationSource::CameraMask(stream.to_string()))
        }
        (StreamKind::Tensor { .. }, "data") | (StreamKind::Audio { .. }, "samples") => {
            Ok(ObservationSource::Tensor(stream.to_string()))
        }
        (StreamKind::JointState { .. }, _) => Err(format!(
            "`{stream}` is a joint state: its fields are `position` and `velocity`, not `{field}`"
        )),
        (StreamKind::Image { .. }, _) => Err(format!(
            "`{stream}` is an image stream: its fields are `image` and `present`, not `{field}`"
        )),
        (StreamKind::Tensor { .. }, _) => Err(format!(
            "`{stream}` is a tensor stream: its field is `data`, not `{field}`"
        )),
        (StreamKind::Audio { .. }, _) => Err(format!(
            "`{stream}` is an audio stream: its field is `samples`, not `{field}`"
        )),
        (StreamKind::Text, _) => Err(format!(
            "`{stream}` is a text stream: it feeds the prompt (`[task] source = \"{stream}.text\"`), \
             not a model input"
        )),
    }
}

/// Loads the prompt's tokenizer the way the policy will, reporting problems at
/// `prompt.*`.
pub fn load_prompt(
    table: &KindTable<'_>,
    prompt: &PromptConfig,
) -> Result<PromptTokenizer, LaunchError> {
    let resolved = PromptConfig {
        tokenizer: table.resolve(&prompt.tokenizer),
        ..prompt.clone()
    };
    resolved
        .check()
        .map_err(|e| table.error_at("prompt.max_length", e.to_string()))?;
    PromptTokenizer::load(&resolved).map_err(|e| table.error_at("prompt.tokenizer", e.to_string()))
}

/// `intra_threads` of an ONNX policy.
pub fn check_intra_threads(table: &KindTable<'_>, threads: usize) -> Result<(), LaunchError> {
    if (1..=MAX_INTRA_THREADS).contains(&threads) {
        return Ok(());
    }
    Err(table.error_at(
        "intra_threads",
        format!(
            "must be in 1..={MAX_INTRA_THREADS}, found {threads} (this machine has {} CPUs)",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
    ))
}

pub fn check_generative(
    table: &KindTable<'_>,
    num_steps: usize,
    batch: usize,
    actions: &GenerativeActions,
) -> Result<(), LaunchError> {
    let joints = table.launch().action_width();
    if actions.delta {
        return Err(table.error_at(
            "actions.delta",
            "moved: write `target = \"delta\"` in [execution] (it works for every policy kind)",
        ));
    }
    if !(1..=1000).contains(&num_steps) {
        return Err(table.error_at("num_steps", "must be in 1..=1000"));
    }
    if !(1..=1024).contains(&batch) {
        return Err(table.error_at("batch", "must be in 1..=1024"));
    }
    if !(1..=MAX_HORIZON).contains(&actions.horizon) {
        return Err(table.error_at("actions.horizon", format!("must be in 1..={MAX_HORIZON}")));
    }
    if let Some(dim) = actions.dim
        && dim < joints
    {
        return Err(table.error_at(
            "actions.dim",
            format!("the model's action width must cover the robot's {joints} action columns, found {dim}"),
        ));
    }
    if let Some(dim) = actions.dim
        && dim > MAX_ACTION_DIM
    {
        return Err(table.error_at(
            "actions.dim",
            format!("must be at most {MAX_ACTION_DIM}, found {dim}"),
        ));
    }
    Ok(())
}

pub fn check_normalization(
    table: &KindTable<'_>,
    norm: &Normalization,
    width: usize,
    field: &str,
) -> Result<(), LaunchError> {
    for (name, values) in [("mean", &norm.mean), ("std", &norm.std)] {
        if values.len() != width {
            return Err(table.error_at(
                &format!("{field}.{name}"),
                format!("has {} values, expected {width}", values.len()),
            ));
        }
    }
    for (name, values) in [("mean", &norm.mean), ("std", &norm.std)] {
        if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(table.error_at(
                &format!("{field}.{name}[{i}]"),
                format!("must be finite, found {v}"),
            ));
        }
    }
    // A zero std would turn the tiny epsilon into the scale of the actions.
    if let Some((i, v)) = norm.std.iter().enumerate().find(|(_, s)| **s <= 0.0) {
        return Err(table.error_at(
            &format!("{field}.std[{i}]"),
            format!("must be positive, found {v}"),
        ));
    }
    Ok(())
}

/// Most observations one input may hold.
pub const MAX_HISTORY: usize = 64;

/// Observations a policy with these inputs conditions on.
pub fn max_history(inputs: &[InputConfig]) -> usize {
    inputs.iter().map(|i| i.history).max().unwrap_or(1).max(1)
}

mod defaults {
    pub fn history() -> usize {
        1
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
    pub fn cotangent() -> String {
        "cotangent".into()
    }
    pub fn vjp() -> String {
        "vjp".into()
    }
    pub fn noise_output() -> String {
        "noise".into()
    }

    pub fn action_magnitude() -> f64 {
        1.0
    }

    pub fn prefix_mask() -> String {
        "prefix_mask".into()
    }
    pub fn timestep() -> String {
        "timestep".into()
    }
    pub fn eps() -> String {
        "eps".into()
    }
    pub fn state_key() -> String {
        "state".into()
    }
    pub fn image_mode() -> super::NormMode {
        super::NormMode::MeanStd
    }
    pub fn actions_key() -> String {
        "actions".into()
    }
    pub fn actions_output() -> String {
        "actions".into()
    }
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}
