//! reflex-zenoh: everything reflex does over zenoh, outside the runtime core.
//!
//! - the `[zenoh]` launch-file section ([`ZenohSection`]): session settings, keys,
//!   the command wire format and the access-control rules re-arm over zenoh needs;
//! - [`bus`]: the run's session, the threads that publish commands, joint states and
//!   status, and the operator's `control` key;
//! - [`wire`]: the byte format of commands and states;
//! - [`zenoh_arm`]: `[[drivers]] kind = "zenoh_arm"`, an arm reached over zenoh.

pub mod bus;
pub mod wire;
pub mod zenoh_arm;
pub mod zenoh_stream;
pub mod zenoh_teleop;

use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;

use reflex_runtime::launch::{Launch, LaunchError};
use reflex_runtime::registry::{KindTable, Registry, SectionKind, schema_of};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use bus::Bus;

/// `zenoh.status_hz`, Hz.
pub const STATUS_HZ_RANGE: (f64, f64) = (0.1, 100.0);

/// Registers the `[zenoh]` section and the `zenoh_arm`, `zenoh_stream` and
/// `zenoh_teleop` drivers.
pub fn register(registry: &mut Registry) {
    registry.section(ZenohSection);
    registry.driver(zenoh_arm::ZenohArmKind);
    registry.driver(zenoh_stream::ZenohStreamKind);
    registry.driver(zenoh_teleop::ZenohTeleopKind);
}

/// The launch file's `[zenoh]` (its defaults when the section is absent).
pub fn config(launch: &Launch) -> ZenohConfig {
    launch
        .section::<ZenohConfig>("zenoh")
        .cloned()
        .unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ZenohMode {
    #[default]
    Peer,
    Client,
    Router,
}

/// `[zenoh]`: the run's zenoh session and what reflex publishes on it.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ZenohConfig {
    /// Turn the bus off entirely (sim-only runs, tests).
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub mode: ZenohMode,
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    #[serde(default)]
    pub connect: Vec<String>,
    #[serde(default)]
    pub multicast_scouting: bool,
    /// First segment of every key.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// A zenoh JSON5 config file (TLS, mTLS, user/password, ACLs); the fields above
    /// are applied on top of it.
    pub config_file: Option<PathBuf>,
    /// How often the status message is published, Hz.
    #[serde(default = "default_status_hz")]
    pub status_hz: f64,
    /// Wire format of published joint commands: 1 (positions) or 2 (positions,
    /// commanded velocities and accelerations, for a robot-side interpolator).
    #[serde(default = "default_command_format")]
    pub command_format: u16,
    /// Accept ONNX policy models pushed on `<prefix>/<robot>/models/policy` and swap
    /// them in between chunks (a learner's updates). Needs access control, like
    /// `safety.operator.zenoh_rearm`.
    #[serde(default)]
    pub model_updates: bool,
    /// The largest model accepted, bytes (a bigger push is refused unread).
    #[serde(default = "default_max_model_bytes")]
    pub max_model_bytes: u64,
}

impl Default for ZenohConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mode: ZenohMode::Peer,
            listen: default_listen(),
            connect: Vec::new(),
            multicast_scouting: false,
            key_prefix: default_key_prefix(),
            config_file: None,
            status_hz: default_status_hz(),
            command_format: default_command_format(),
            model_updates: false,
            max_model_bytes: default_max_model_bytes(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_listen() -> Vec<String> {
    vec!["tcp/127.0.0.1:7447".into()]
}
fn default_key_prefix() -> String {
    "reflex".into()
}
fn default_status_hz() -> f64 {
    10.0
}
fn default_command_format() -> u16 {
    1
}
/// 256 MiB: a single-file ONNX graph of the small policies reflex runs on board
/// (a pi0-class model uses external data, and a GPU server: see the remote issue).
fn default_max_model_bytes() -> u64 {
    256 << 20
}
/// zenoh's own message limit is 1 GiB (`transport.link.rx.max_message_size`).
const MAX_MODEL_BYTES: u64 = 1 << 30;

/// Registers `[zenoh]`.
pub struct ZenohSection;

impl SectionKind for ZenohSection {
    fn section(&self) -> &'static str {
        "zenoh"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<ZenohConfig>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn Any + Send + Sync>, LaunchError> {
        let z: ZenohConfig = table.parse()?;
        check_session(table, &z)?;
        check_operator(table, &z)?;
        Ok(Arc::new(z))
    }
}

/// Keys, endpoints and the config file, checked the way zenoh will use them.
fn check_session(table: &KindTable<'_>, z: &ZenohConfig) -> Result<(), LaunchError> {
    let launch = table.launch();
    let (lo, hi) = STATUS_HZ_RANGE;
    if !(z.status_hz >= lo && z.status_hz <= hi) {
        return Err(table.error_at(
            "status_hz",
            format!("must be in [{lo}, {hi}], found {}", z.status_hz),
        ));
    }
    bus::check_exact_key(&z.key_prefix).map_err(|message| {
        table.error_at(
            "key_prefix",
            format!("{message} (e.g. `reflex` or `lab/reflex`, no leading or trailing `/`)"),
        )
    })?;
    let robot_key = format!("{}/{}", z.key_prefix, launch.config.robot.name);
    bus::check_exact_key(&robot_key).map_err(|message| launch.error_at("robot.name", message))?;
    for (list, endpoints) in [("listen", &z.listen), ("connect", &z.connect)] {
        for (i, endpoint) in endpoints.iter().enumerate() {
            bus::check_endpoint(endpoint)
                .map_err(|message| table.error_at(&format!("{list}[{i}]"), message))?;
        }
    }
    if let Some(file) = &z.config_file {
        let path = table.resolve(file);
        let problem = match reflex_runtime::files::check_regular(
            &path,
            reflex_runtime::files::MAX_CONFIG_BYTES,
        ) {
            Err(reflex_runtime::files::FileError::NotFound { .. }) => {
                Some(format!("zenoh config file not found: {}", path.display()))
            }
            Err(e) => Some(format!("zenoh config file {e}")),
            Ok(_) => zenoh::Config::from_file(&path)
                .err()
                .map(|e| format!("zenoh config file {}: {e}", path.display())),
        };
        if let Some(message) = problem {
            return Err(table.error_at("config_file", message));
        }
    }
    // What `reflex run` does with all of it: the same settings through zenoh.
    bus::zenoh_config(z, &launch.base_dir).map_err(|e| table.error_at("", e.to_string()))?;
    Ok(())
}

/// The command format, and re-arm over zenoh only behind access control.
fn check_operator(table: &KindTable<'_>, z: &ZenohConfig) -> Result<(), LaunchError> {
    let launch = table.launch();
    let safety = &launch.config.safety;
    let format = z.command_format;
    if !(1..=2).contains(&format) {
        return Err(table.error_at(
            "command_format",
            format!(
                "must be 1 (positions) or 2 (with velocities and accelerations), found {format}"
            ),
        ));
    }
    if safety.operator.zenoh_rearm {
        require_access_control(table, z, "safety.operator.zenoh_rearm", "re-arm over zenoh")?;
    }
    if z.model_updates {
        if !(1..=MAX_MODEL_BYTES).contains(&z.max_model_bytes) {
            return Err(table.error_at(
                "max_model_bytes",
                format!(
                    "must be in 1..={MAX_MODEL_BYTES}, found {}",
                    z.max_model_bytes
                ),
            ));
        }
        require_access_control(table, z, "zenoh.model_updates", "model updates over zenoh")?;
    }
    Ok(())
}

/// `what` (turned on at `field`) only behind zenoh access control: a config file
/// with ACL rules under "deny" and authentication of the other side.
fn require_access_control(
    table: &KindTable<'_>,
    z: &ZenohConfig,
    field: &str,
    what: &str,
) -> Result<(), LaunchError> {
    let launch = table.launch();
    let Some(file) = &z.config_file else {
        return Err(launch.error_at(
            field,
            format!(
                "{what} needs zenoh access control: set zenoh.config_file to a zenoh \
                 config with mTLS or user/password authentication and ACL rules (see the \
                 README's Security section)"
            ),
        ));
    };
    let path = table.resolve(file);
    let zenoh = zenoh::Config::from_file(&path).map_err(|e| {
        table.error_at(
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
        return Err(launch.error_at(
            field,
            format!(
                "{what} needs zenoh access control, but {} lacks {} \
                 (see the README's Security section)",
                path.display(),
                missing.join(" and ")
            ),
        ));
    }
    Ok(())
}
