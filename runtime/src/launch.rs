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
pub const MAX_CAMERA_FPS: f64 = 1000.0;
/// Actions per chunk.
pub const MAX_HORIZON: usize = 10_000;
/// Width of a model's action or joint-vector input (pi0 pads to 32).
pub const MAX_ACTION_DIM: usize = 4096;
/// Height and width a camera image is resized to.
pub const MAX_IMAGE_SIDE: usize = 4096;
/// Robot, joint, driver and camera names.
pub const MAX_NAME_BYTES: usize = 128;

use std::any::Any;
use std::collections::BTreeMap;

use crate::executor::{ExecutorFactory, ExecutorParams};
use crate::registry::{DriverSpec, KindTable, LoadError, PolicySpec, Registry, StageSpec, one_of};
use crate::robot_model::{JointKind, ModelJoint, RobotModel, WorkspaceBox};
use crate::stream::{OnStale, StreamDecl, StreamWatch};

/// The runtime's part of a launch file. `[[drivers]]` and `[policy]` tables
/// belong to their kinds and other sections (`[onnxruntime]`) to the crates that
/// register them: the runtime keeps them as tables and hands them over.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LaunchFile {
    pub robot: RobotConfig,
    #[serde(default)]
    pub control: ControlConfig,
    /// How chunks are executed: action rate and when the next one is requested.
    pub execution: ExecutionConfig,
    /// What the robot is asked to do (the instruction of language-conditioned policies).
    #[serde(default)]
    pub task: TaskConfig,
    /// Per image stream: when it counts as stale and what that does.
    #[serde(default)]
    pub streams: BTreeMap<String, StreamConfig>,
    #[serde(default)]
    pub safety: SafetyConfig,
    /// Seeds every random choice of the run (targets, sampling noise).
    #[serde(default)]
    pub seed: u64,
    /// `[[drivers]]`: each has a `kind`; the rest of the table is the kind's.
    #[serde(default)]
    #[schemars(with = "Vec<serde_json::Map<String, serde_json::Value>>")]
    pub drivers: Vec<toml::Table>,
    /// `[policy]`: a `kind` and the kind's fields.
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub policy: toml::Table,
    /// `[[stages]]`: chunk stages between the policy's candidates and the executed
    /// chunk, in order; each has a `kind`.
    #[serde(default)]
    #[schemars(with = "Vec<serde_json::Map<String, serde_json::Value>>")]
    pub stages: Vec<toml::Table>,
    /// `[recording]`: how `reflex run --record DIR` records episodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<crate::recording::RecordingConfig>,
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
    /// A gripper commanded through its own column of the actions, with its own
    /// limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gripper: Option<crate::gripper::GripperConfig>,
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

/// `[task]`: the instruction given to policies with a prompt input; `reflex
/// prompt` changes it while running.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    #[serde(default)]
    pub instruction: String,
    /// `<stream>.text`: a text stream a driver declares; each text it sends
    /// becomes the instruction (the first one replaces `instruction`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// `[streams.<name>]`: the fault policy of one stream a driver declares.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// A sample older than this is stale, ms (default 500).
    #[serde(default = "defaults::stream_max_age_ms")]
    pub max_age_ms: f64,
    /// `ignore`, `mask`, `pause` (default) or `stop`.
    #[serde(default)]
    pub on_stale: OnStale,
    /// `latest` (default) or `aligned`: the sample closest to the joint state's
    /// capture time, within `tolerance_ms`.
    #[serde(default)]
    pub sample: crate::stream::Sampling,
    /// `aligned`: the largest skew accepted, ms (default 20).
    #[serde(default = "defaults::align_tolerance_ms")]
    pub tolerance_ms: f64,
    /// Feed the stream to the policy as absent for the whole run (zeros; a
    /// black image with its mask 0), as `on_stale = "mask"` does: ablations such
    /// as evaluating a policy with one sense taken away.
    #[serde(default)]
    pub masked: bool,
}

/// `[execution]`: how the actions of a chunk become commands.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct ExecutionConfig {
    /// Rate of the actions in a chunk, Hz; the loop interpolates between them.
    pub action_rate_hz: f64,
    /// Ask for the next chunk after this many actions of the current one.
    pub replan_after: usize,
    /// What the joint columns of the actions are: `position` (absolute, the
    /// default), `delta` (relative to the measured positions the policy saw) or
    /// `velocity` (rad/s, integrated into positions).
    #[serde(default)]
    pub target: crate::targets::ActionTarget,
    /// The execution strategy (`replace`, or one a crate registers).
    #[serde(default = "defaults::strategy")]
    pub strategy: String,
    /// The expected inference delay (what real-time chunking freezes) is this
    /// percentile of the last `delay_window` latencies (100: their maximum).
    #[serde(default = "defaults::delay_percentile")]
    pub delay_percentile: f64,
    #[serde(default = "defaults::delay_window")]
    pub delay_window: usize,
    /// How the target moves between actions: `linear` or `quintic` (continuous
    /// acceleration).
    #[serde(default)]
    pub interpolation: crate::executor::Interpolation,
    /// The strategy's own fields (checked by the strategy).
    #[serde(flatten)]
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub params: toml::Table,
}

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

mod defaults {
    pub fn stream_max_age_ms() -> f64 {
        500.0
    }
    pub fn align_tolerance_ms() -> f64 {
        20.0
    }
    pub fn strategy() -> String {
        "replace".into()
    }
    pub fn delay_percentile() -> f64 {
        100.0
    }
    pub fn delay_window() -> usize {
        10
    }
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
#[derive(Clone)]
pub struct Launch {
    /// The runtime's own sections; the kinds' tables are checked into
    /// [`Launch::drivers`], [`Launch::policy`] and [`Launch::section`].
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
    /// `[[drivers]]`, checked by their kinds, in file order.
    pub drivers: Vec<Arc<dyn DriverSpec>>,
    /// Every stream the drivers declare, in driver order.
    pub streams: Vec<StreamDecl>,
    policy: Option<Arc<dyn PolicySpec>>,
    sections: BTreeMap<&'static str, Arc<dyn Any + Send + Sync>>,
    executor: Option<ExecutorFactory>,
    /// `[[stages]]`, checked by their kinds, in order.
    pub stage_specs: Vec<Arc<dyn StageSpec>>,
}

impl fmt::Debug for Launch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Launch")
            .field("origin", &self.origin)
            .field("config", &self.config)
            .field("drivers", &self.drivers)
            .field("policy", &self.policy)
            .field("sections", &self.sections.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Names the source forms `state.joint_positions`, `camera.<name>`,
/// `camera_mask.<name>` and `prompt.<field>` use: no stream may take them.
pub const RESERVED_STREAM_NAMES: [&str; 4] = ["state", "camera", "camera_mask", "prompt"];

/// Where launch files moved a field or table, for files in the old format: the
/// kinds named are the file's own.
fn new_format(driver: &str, policy: &str) -> String {
    format!(
        "launch files name kinds now: `[[drivers]]` tables with `kind = \"{driver}\"` \
         (was `[[drivers.{driver}]]`), one `[policy]` table with `kind = \"{policy}\"` \
         (was `[policy.{policy}]`), and `action_rate_hz` / `replan_after` in \
         `[execution]` (see the README's \"Launch files\")"
    )
}

impl Launch {
    /// Reads and checks a launch file from disk with the kinds of `registry`.
    pub fn from_file(
        path: &Path,
        overrides: &[String],
        registry: &Registry,
    ) -> Result<Self, LaunchError> {
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
        Self::from_text(&text, &origin, base_dir, overrides, registry)
    }

    /// Parses `text`, applies `overrides` (`key.path=value`), deserializes the
    /// runtime's sections and hands every kind's table to its kind.
    pub fn from_text(
        text: &str,
        origin: &str,
        base_dir: PathBuf,
        overrides: &[String],
        registry: &Registry,
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
            drivers: Vec::new(),
            streams: Vec::new(),
            policy: None,
            sections: BTreeMap::new(),
            executor: None,
            stage_specs: Vec::new(),
        };
        let mut root: toml::Table =
            toml::from_str(&launch.text).map_err(|e: toml::de::Error| {
                let (line, column) = e
                    .span()
                    .map(|s| line_column(&launch.text, s.start))
                    .unwrap_or((0, 0));
                error(line, column, "", e.message().to_string())
            })?;
        launch.reject_old_format(&root, registry)?;
        let mut section_tables = BTreeMap::new();
        for name in registry.section_names() {
            if let Some(value) = root.remove(name) {
                section_tables.insert(name, value);
            }
        }
        launch.config =
            serde_path_to_error::deserialize(toml::Value::Table(root)).map_err(|e| {
                let field = e.path().to_string();
                let field = if field == "." { String::new() } else { field };
                let mut message = e.into_inner().message().to_string();
                if !field.contains(['.', '[']) && message.starts_with("unknown field") {
                    message = format!(
                        "{message}; sections of the registered kinds: {}",
                        list_or_none(
                            &registry
                                .section_names()
                                .iter()
                                .map(|s| s.to_string())
                                .collect::<Vec<_>>()
                        )
                    );
                }
                launch.error_at(&field, message)
            })?;
        launch.resolve_robot()?;
        launch.validate()?;
        launch.check_sections(section_tables, registry)?;
        launch.check_drivers(registry)?;
        launch.check_policy(registry)?;
        launch.check_stages(registry)?;
        launch.check_execution(registry)?;
        launch.check_recording()?;
        launch.resolve_workspace()?;
        Ok(launch)
    }

    /// Files written for reflex before kinds registered themselves get an
    /// explanation of the new format instead of a bare "unknown field".
    fn reject_old_format(
        &self,
        root: &toml::Table,
        registry: &Registry,
    ) -> Result<(), LaunchError> {
        // The old format: `[policy.<kind>]` with no `kind`.
        let old_policy = match root.get("policy") {
            Some(toml::Value::Table(policy)) if !policy.contains_key("kind") => policy
                .iter()
                .find(|(key, value)| value.is_table() && registry.find_policy(key).is_some())
                .map(|(key, _)| key.as_str()),
            _ => None,
        };
        let policy_kind = old_policy
            .or_else(|| registry.policy_kinds().first().copied())
            .unwrap_or("<kind>");
        if let Some(toml::Value::Table(drivers)) = root.get("drivers") {
            let driver = drivers.keys().next().map_or("<kind>", String::as_str);
            return Err(self.error_at(
                "drivers",
                format!(
                    "`[[drivers.{driver}]]` is the old format; {}",
                    new_format(driver, policy_kind)
                ),
            ));
        }
        if let Some(kind) = old_policy {
            let driver = registry.driver_kinds().first().copied().unwrap_or("<kind>");
            return Err(self.error_at(
                &format!("policy.{kind}"),
                format!(
                    "`[policy.{kind}]` is the old format; {}",
                    new_format(driver, kind)
                ),
            ));
        }
        Ok(())
    }

    /// Every registered section checks its table (or an empty one).
    fn check_sections(
        &mut self,
        mut tables: BTreeMap<&'static str, toml::Value>,
        registry: &Registry,
    ) -> Result<(), LaunchError> {
        let mut checked = BTreeMap::new();
        for kind in registry.sections() {
            let name = kind.section();
            let table = match tables.remove(name) {
                None => toml::Table::new(),
                Some(toml::Value::Table(table)) => table,
                Some(other) => {
                    return Err(self.error_at(
                        name,
                        format!("must be a table `[{name}]`, found a {}", other.type_str()),
                    ));
                }
            };
            let value = kind.check(&KindTable::new(self, name, table))?;
            checked.insert(name, value);
        }
        self.sections = checked;
        Ok(())
    }

    /// The `kind` of a `[[drivers]]` or `[policy]` table, removed from it.
    fn take_kind(
        &self,
        at: &str,
        table: &mut toml::Table,
        known: &[&'static str],
    ) -> Result<String, LaunchError> {
        match table.remove("kind") {
            Some(toml::Value::String(kind)) if known.contains(&kind.as_str()) => Ok(kind),
            Some(toml::Value::String(kind)) => Err(self.error_at(
                &format!("{at}.kind"),
                format!("unknown kind `{kind}`; known kinds: {}", one_of(known)),
            )),
            Some(other) => Err(self.error_at(
                &format!("{at}.kind"),
                format!("must be a string, found a {}", other.type_str()),
            )),
            None => Err(self.error_at(
                at,
                format!("missing field `kind` (one of {})", one_of(known)),
            )),
        }
    }

    fn check_drivers(&mut self, registry: &Registry) -> Result<(), LaunchError> {
        let known = registry.driver_kinds();
        let mut specs: Vec<Arc<dyn DriverSpec>> = Vec::new();
        for (i, table) in self.config.drivers.iter().enumerate() {
            let at = format!("drivers[{i}]");
            let mut table = table.clone();
            let kind = self.take_kind(&at, &mut table, &known)?;
            let Some(driver_kind) = registry.find_driver(&kind) else {
                unreachable!("take_kind checked the kind")
            };
            let spec = driver_kind.check(&KindTable::new(self, at.clone(), table))?;
            if let Some(first) = specs.iter().position(|d| d.name() == spec.name()) {
                return Err(self.error_at(
                    &format!("{at}.name"),
                    format!(
                        "`{}` is already the name of drivers[{first}]; driver names must be unique",
                        spec.name()
                    ),
                ));
            }
            specs.push(spec);
        }
        let arms: Vec<_> = specs.iter().filter(|d| d.is_arm()).collect();
        if arms.len() != 1 {
            return Err(self.error_at(
                "drivers",
                format!(
                    "need exactly one arm driver, found {} (driver kinds: {})",
                    arms.len(),
                    one_of(&known)
                ),
            ));
        }
        let mut streams: Vec<StreamDecl> = Vec::new();
        for (i, driver) in specs.iter().enumerate() {
            for stream in driver.streams() {
                if RESERVED_STREAM_NAMES.contains(&stream.name.as_str()) {
                    return Err(self.error_at(
                        &format!("drivers[{i}]"),
                        format!(
                            "a stream may not be named `{}` (reserved: {})",
                            stream.name,
                            RESERVED_STREAM_NAMES.join(", ")
                        ),
                    ));
                }
                if let Some(other) = streams.iter().position(|s| s.name == stream.name) {
                    return Err(self.error_at(
                        &format!("drivers[{i}]"),
                        format!(
                            "stream `{}` is declared twice (also by stream {other}); stream names must be unique",
                            stream.name
                        ),
                    ));
                }
                streams.push(stream);
            }
        }
        self.drivers = specs;
        self.streams = streams;
        for (name, config) in &self.config.streams {
            let at = format!("streams.{name}");
            match self.streams.iter().find(|s| &s.name == name) {
                None => {
                    return Err(self.error_at(
                        &at,
                        format!(
                            "no stream named `{name}`; sensor streams: {}",
                            list_or_none(&self.sensor_names())
                        ),
                    ));
                }
                Some(stream) if !stream.is_sensor() => {
                    return Err(self.error_at(
                        &at,
                        "a stale joint state always stops the arm (control.max_state_age_ms, \
                         safety.estop_after_stale_ms), and a text stream is never stale; \
                         [streams] configures image, tensor and audio streams",
                    ));
                }
                Some(_) => {}
            }
            self.check_range(&format!("{at}.max_age_ms"), config.max_age_ms, MAX_STALE_MS)?;
            self.check_range(
                &format!("{at}.tolerance_ms"),
                config.tolerance_ms,
                MAX_STALE_MS,
            )?;
        }
        if let Some(source) = &self.config.task.source {
            let stream = source.strip_suffix(".text").unwrap_or("");
            if !self
                .streams
                .iter()
                .any(|s| s.name == stream && s.kind == crate::stream::StreamKind::Text)
            {
                let texts: Vec<String> = self
                    .streams
                    .iter()
                    .filter(|s| s.kind == crate::stream::StreamKind::Text)
                    .map(|s| format!("{}.text", s.name))
                    .collect();
                return Err(self.error_at(
                    "task.source",
                    format!(
                        "`{source}` is not a text stream's `text`; text streams: {}",
                        list_or_none(&texts)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The text stream `[task] source` names, if any.
    pub fn task_stream(&self) -> Option<&str> {
        self.config
            .task
            .source
            .as_deref()
            .and_then(|s| s.strip_suffix(".text"))
    }

    /// How the loop watches each sensor stream: the cameras in order, then the
    /// tensor and audio streams in order.
    pub fn stream_watches(&self) -> Vec<StreamWatch> {
        self.camera_names()
            .into_iter()
            .chain(self.tensor_names())
            .map(|name| {
                let config = self.config.streams.get(&name);
                let max_age_ms = config.map_or(defaults::stream_max_age_ms(), |c| c.max_age_ms);
                StreamWatch {
                    max_age_ns: (max_age_ms * 1e6) as u64,
                    on_stale: config.map(|c| c.on_stale).unwrap_or_default(),
                    align_tolerance_ns: config
                        .filter(|c| c.sample == crate::stream::Sampling::Aligned)
                        .map(|c| (c.tolerance_ms * 1e6) as u64),
                    masked: config.is_some_and(|c| c.masked),
                    name,
                }
            })
            .collect()
    }

    fn check_policy(&mut self, registry: &Registry) -> Result<(), LaunchError> {
        let known = registry.policy_kinds();
        let mut table = self.config.policy.clone();
        let kind = self.take_kind("policy", &mut table, &known)?;
        let Some(policy_kind) = registry.find_policy(&kind) else {
            unreachable!("take_kind checked the kind")
        };
        let spec = policy_kind.check(&KindTable::new(self, "policy", table))?;
        self.policy = Some(spec);
        Ok(())
    }

    fn check_stages(&mut self, registry: &Registry) -> Result<(), LaunchError> {
        let known = registry.stage_kinds();
        let mut specs = Vec::new();
        for (i, table) in self.config.stages.iter().enumerate() {
            let at = format!("stages[{i}]");
            let mut table = table.clone();
            let kind = self.take_kind(&at, &mut table, &known)?;
            let Some(stage_kind) = registry.find_stage(&kind) else {
                unreachable!("take_kind checked the kind")
            };
            specs.push(stage_kind.check(&KindTable::new(self, at, table))?);
        }
        self.stage_specs = specs;
        Ok(())
    }

    fn check_execution(&mut self, registry: &Registry) -> Result<(), LaunchError> {
        crate::prompt::check_prompt(&self.config.task.instruction)
            .map_err(|e| self.error_at("task.instruction", e.to_string()))?;
        let execution = &self.config.execution;
        let rate = self.config.control.rate_hz;
        if !(execution.action_rate_hz > 0.0 && execution.action_rate_hz <= rate) {
            return Err(self.error_at(
                "execution.action_rate_hz",
                format!(
                    "must be positive and at most control.rate_hz ({rate}), found {}",
                    execution.action_rate_hz
                ),
            ));
        }
        if !(0.0..=100.0).contains(&execution.delay_percentile) {
            return Err(self.error_at(
                "execution.delay_percentile",
                format!("must be in 0..=100, found {}", execution.delay_percentile),
            ));
        }
        if !(1..=crate::delay::MAX_DELAY_WINDOW).contains(&execution.delay_window) {
            return Err(self.error_at(
                "execution.delay_window",
                format!(
                    "must be in 1..={}, found {}",
                    crate::delay::MAX_DELAY_WINDOW,
                    execution.delay_window
                ),
            ));
        }
        let horizon = self.policy().horizon();
        if !(1..=horizon).contains(&execution.replan_after) {
            return Err(self.error_at(
                "execution.replan_after",
                format!(
                    "must be in 1..={horizon} (the policy's horizon), found {}",
                    execution.replan_after
                ),
            ));
        }
        let Some(kind) = registry.find_strategy(&execution.strategy) else {
            return Err(self.error_at(
                "execution.strategy",
                format!(
                    "unknown strategy `{}`; strategies: {}",
                    execution.strategy,
                    one_of(&registry.strategy_names())
                ),
            ));
        };
        let params = kind.check(&KindTable::new(self, "execution", execution.params.clone()))?;
        let factory = ExecutorFactory::new(kind.clone(), params);
        // Built once here so that a strategy that cannot start fails the check.
        factory
            .build(&self.executor_params())
            .map_err(|e| self.error_at("execution", e))?;
        self.executor = Some(factory);
        Ok(())
    }

    /// What the run's executor is built from.
    pub fn executor_params(&self) -> ExecutorParams {
        ExecutorParams {
            dim: self.action_width(),
            horizon: self.policy().horizon(),
            ticks_per_action: self.config.control.rate_hz / self.config.execution.action_rate_hz,
            replan_after: self.config.execution.replan_after,
            interpolation: self.config.execution.interpolation,
        }
    }

    /// Columns of the policy's actions: one per joint, and the gripper's.
    pub fn action_width(&self) -> usize {
        self.config.robot.joints.len() + usize::from(self.config.robot.gripper.is_some())
    }

    /// The first chunk stage: the action target and the gripper's column.
    pub fn action_targets(&self) -> crate::targets::ActionTargets {
        let joints = self.config.robot.joints.len();
        crate::targets::ActionTargets::new(
            self.config.execution.target,
            joints,
            self.config.robot.gripper.as_ref().map(|g| g.column(joints)),
            self.config.execution.action_rate_hz,
        )
    }

    /// The run's chunk stages: the action targets first (when they change
    /// anything), then `[[stages]]` in order.
    pub fn chunk_stages(
        &self,
    ) -> Result<Vec<Box<dyn crate::stage::ChunkStage>>, crate::registry::LoadError> {
        let targets = self.action_targets();
        let first = (!targets.is_identity())
            .then(|| Box::new(targets) as Box<dyn crate::stage::ChunkStage>);
        first
            .into_iter()
            .map(Ok)
            .chain(self.stage_specs.iter().map(|spec| spec.build(self)))
            .collect()
    }

    /// The checked execution strategy.
    pub fn executor(&self) -> ExecutorFactory {
        self.executor
            .clone()
            .unwrap_or_else(ExecutorFactory::replace)
    }

    /// The checked policy.
    pub fn policy(&self) -> &dyn PolicySpec {
        match &self.policy {
            Some(policy) => policy.as_ref(),
            // Only a launch file still being checked has none; kinds are handed the
            // launch before its policy exists and must not ask for it.
            None => &NO_POLICY,
        }
    }

    /// A section's checked config, e.g. `launch.section::<OnnxRuntimeConfig>("onnxruntime")`.
    pub fn section<T: Any>(&self, name: &str) -> Option<&T> {
        self.sections.get(name)?.downcast_ref()
    }

    /// The arm driver (validated launch files have exactly one).
    pub fn arm(&self) -> Option<&Arc<dyn DriverSpec>> {
        self.drivers.iter().find(|d| d.is_arm())
    }

    /// Image streams in the order policies see them (driver order).
    pub fn camera_names(&self) -> Vec<String> {
        self.streams
            .iter()
            .filter(|s| s.is_image())
            .map(|s| s.name.clone())
            .collect()
    }

    /// Tensor and audio streams in the order policies see them (driver order).
    pub fn tensor_names(&self) -> Vec<String> {
        self.streams
            .iter()
            .filter(|s| s.is_tensor())
            .map(|s| s.name.clone())
            .collect()
    }

    /// Streams the loop watches for staleness: cameras, then tensors.
    pub fn sensor_names(&self) -> Vec<String> {
        let mut names = self.camera_names();
        names.extend(self.tensor_names());
        names
    }

    /// A declared image stream by name.
    pub fn camera(&self, name: &str) -> Option<&StreamDecl> {
        self.streams.iter().find(|s| s.is_image() && s.name == name)
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

    /// Every model file the launch file names, at any depth (a `model` key or
    /// one ending in `_model`: the policy's graphs, chunk stages' value models,
    /// a latent-noise policy, a reward classifier), with the field naming it
    /// (`policy.prefix_model`, `stages[0].model`), tables' keys in sorted order.
    pub fn model_files(&self) -> Vec<(String, PathBuf)> {
        fn walk(value: &toml::Value, field: String, out: &mut Vec<(String, String)>) {
            match value {
                toml::Value::Table(table) => {
                    for (key, value) in table {
                        let at = if field.is_empty() {
                            key.clone()
                        } else {
                            format!("{field}.{key}")
                        };
                        match value {
                            toml::Value::String(path)
                                if key == "model" || key.ends_with("_model") =>
                            {
                                out.push((at, path.clone()))
                            }
                            _ => walk(value, at, out),
                        }
                    }
                }
                toml::Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        walk(item, format!("{field}[{i}]"), out);
                    }
                }
                _ => {}
            }
        }
        let mut found = Vec::new();
        if let Ok(root) = self.text.parse::<toml::Table>() {
            walk(&toml::Value::Table(root), String::new(), &mut found);
        }
        found
            .into_iter()
            .map(|(field, path)| (field, self.resolve(Path::new(&path))))
            .collect()
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
}

/// Stands in for the policy while a launch file is being checked.
#[derive(Debug)]
struct NoPolicy;

static NO_POLICY: NoPolicy = NoPolicy;

impl PolicySpec for NoPolicy {
    fn kind(&self) -> &'static str {
        "none"
    }
    fn horizon(&self) -> usize {
        1
    }
    fn model(&self) -> PathBuf {
        PathBuf::new()
    }
    fn load(&self, _launch: &Launch) -> Result<crate::policy::LoadedPolicy, LoadError> {
        Err("the launch file has no policy".into())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Checks a name that ends up in zenoh keys, thread names and log lines.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() || name.chars().any(char::is_control) || name.len() > MAX_NAME_BYTES {
        Err(format!(
            "must be 1 to {MAX_NAME_BYTES} bytes without control characters"
        ))
    } else {
        Ok(())
    }
}
/// The runtime's own sections.
impl Launch {
    fn validate(&self) -> Result<(), LaunchError> {
        let c = &self.config;
        if c.robot.name.is_empty() || c.robot.name.contains(['/', '*', '$', '?', '#']) {
            return Err(self.error_at(
                "robot.name",
                "must be non-empty and usable in a zenoh key (no / * $ ? #)",
            ));
        }
        // Names end up in zenoh keys, thread names and log lines.
        let names = std::iter::once(("robot.name".to_string(), &c.robot.name)).chain(
            (c.robot.joints.iter().enumerate())
                .map(|(i, j)| (format!("robot.joints[{i}].name"), &j.name)),
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
        if let Some(gripper) = &c.robot.gripper
            && let Err((field, message)) = gripper.check(joints)
        {
            return Err(self.error_at(&format!("robot.gripper.{field}"), message));
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
        Ok(())
    }

    /// `[recording]`: a whole number of ticks per row, sane durations, a reset
    /// pose per joint inside the limits, recorded cameras that exist.
    fn check_recording(&self) -> Result<(), LaunchError> {
        let Some(rec) = &self.config.recording else {
            return Ok(());
        };
        let rate = self.config.control.rate_hz;
        let fps = self.recording_fps();
        if fps == 0 || f64::from(fps) > rate {
            return Err(self.error_at(
                "recording.fps",
                format!(
                    "must be in 1..={rate} (at most control.rate_hz, a row per tick), found {fps}{}",
                    if rec.fps.is_none() { " (the action rate, rounded)" } else { "" }
                ),
            ));
        }
        self.check_range(
            "recording.episode_time_s",
            rec.episode_time_s,
            24.0 * 3600.0,
        )?;
        if !(rec.reset_time_s >= 0.0 && rec.reset_time_s <= 3600.0) {
            return Err(self.error_at(
                "recording.reset_time_s",
                format!("must be in [0, 3600], found {}", rec.reset_time_s),
            ));
        }
        if rec.episodes == Some(0) {
            return Err(self.error_at(
                "recording.episodes",
                "must be at least 1 (leave it out to record until stopped)",
            ));
        }
        if let Some(task) = &rec.task
            && (task.len() > crate::prompt::MAX_PROMPT_BYTES || task.chars().any(char::is_control))
        {
            return Err(self.error_at(
                "recording.task",
                format!(
                    "must be a single line of at most {} bytes",
                    crate::prompt::MAX_PROMPT_BYTES
                ),
            ));
        }
        if let Some(cameras) = &rec.cameras {
            let known = self.camera_names();
            for (i, name) in cameras.iter().enumerate() {
                if !known.contains(name) {
                    return Err(self.error_at(
                        &format!("recording.cameras[{i}]"),
                        format!("no camera stream `{name}` (cameras: {})", known.join(", ")),
                    ));
                }
            }
        }
        if let Some(reset) = &rec.reset {
            let joints = &self.config.robot.joints;
            if reset.joint_positions.len() != joints.len() {
                return Err(self.error_at(
                    "recording.reset.joint_positions",
                    format!(
                        "needs one position per joint ({}), found {}",
                        joints.len(),
                        reset.joint_positions.len()
                    ),
                ));
            }
            for (i, (q, joint)) in reset.joint_positions.iter().zip(joints).enumerate() {
                let [lo, hi] = joint.position;
                if !(q.is_finite() && *q >= lo && *q <= hi) {
                    return Err(self.error_at(
                        &format!("recording.reset.joint_positions[{i}]"),
                        format!(
                            "joint `{}` must stay in [{lo}, {hi}], found {q}",
                            joint.name
                        ),
                    ));
                }
            }
            self.check_range("recording.reset.speed", reset.speed, 100.0)?;
        }
        Ok(())
    }

    /// The dataset's fps: `[recording] fps`, else the action rate rounded.
    pub fn recording_fps(&self) -> u32 {
        let rec = self.config.recording.clone().unwrap_or_default();
        rec.fps
            .unwrap_or_else(|| self.config.execution.action_rate_hz.round().clamp(0.0, 1e6) as u32)
    }

    /// `value` (ms) must be finite, positive and at most `max`.
    fn check_range(&self, field: &str, value: f64, max: f64) -> Result<(), LaunchError> {
        if value > 0.0 && value <= max {
            Ok(())
        } else {
            Err(self.error_at(field, format!("must be in (0, {max}], found {value}")))
        }
    }
}

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

impl Launch {
    fn check_safety(&self, safety: &SafetyConfig, joints: usize) -> Result<(), LaunchError> {
        if let Err((field, message)) = safety.check(joints) {
            return Err(self.error_at(&format!("safety.{field}"), message));
        }
        Ok(())
    }
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
            gripper: None,
        },
        control: ControlConfig::default(),
        execution: ExecutionConfig {
            target: Default::default(),
            action_rate_hz: 1.0,
            replan_after: 1,
            strategy: defaults::strategy(),
            delay_percentile: defaults::delay_percentile(),
            delay_window: defaults::delay_window(),
            interpolation: Default::default(),
            params: toml::Table::new(),
        },
        task: TaskConfig::default(),
        streams: BTreeMap::new(),
        safety: SafetyConfig::default(),
        seed: 0,
        drivers: Vec::new(),
        policy: toml::Table::new(),
        stages: Vec::new(),
        recording: None,
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

/// The JSON schema of the runtime's part of launch files.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(LaunchFile)).unwrap_or_default()
}

/// The JSON schema of launch files with every registered kind, for editors: a
/// `[[drivers]]` entry is one of the driver kinds' tables (told apart by `kind`),
/// `[policy]` one of the policy kinds', and each section its own.
pub fn json_schema_with(registry: &Registry) -> serde_json::Value {
    use serde_json::{Value, json};
    let mut root = json_schema();
    let kinds = registry.kind_schemas();
    let mut defs = root["$defs"].as_object().cloned().unwrap_or_default();
    // Each kind's schema is self-contained; its definitions move to the root so
    // that its `#/$defs/...` references still resolve.
    let mut hoist = |name: &str, kind: Option<&str>, mut schema: Value| -> Value {
        if let Some(Value::Object(own)) = schema.as_object_mut().and_then(|s| s.remove("$defs")) {
            defs.extend(own);
        }
        if let Some(object) = schema.as_object_mut() {
            object.remove("$schema");
            if let Some(kind) = kind {
                object
                    .entry("properties")
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .map(|p| p.insert("kind".into(), json!({ "const": kind })));
                let required = object.entry("required").or_insert_with(|| json!([]));
                if let Some(list) = required.as_array_mut() {
                    list.push(json!("kind"));
                }
            }
        }
        defs.insert(name.to_string(), schema);
        json!({ "$ref": format!("#/$defs/{name}") })
    };
    let mut one_of_kinds = |group: &str, prefix: &str| -> Vec<Value> {
        kinds[group]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(kind, schema)| {
                        hoist(&format!("{prefix}_{kind}"), Some(kind), schema.clone())
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let drivers = one_of_kinds("drivers", "driver");
    let policies = one_of_kinds("policies", "policy");
    let mut sections = Vec::new();
    if let Some(map) = kinds["sections"].as_object() {
        for (name, schema) in map {
            sections.push((
                name.clone(),
                hoist(&format!("section_{name}"), None, schema.clone()),
            ));
        }
    }
    root["properties"]["drivers"] = json!({ "type": "array", "items": { "oneOf": drivers } });
    root["properties"]["policy"] = json!({ "oneOf": policies });
    for (name, reference) in sections {
        root["properties"][name.as_str()] = reference;
    }
    root["$defs"] = Value::Object(defs);
    root
}

#[cfg(test)]
#[path = "launch_tests.rs"]
mod tests;
