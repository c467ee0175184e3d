//! `[policy] kind = "remote"`: the policy runs in `reflex serve` on another
//! machine (`[serve] protocol = "zenoh"`). Each inference sends the observation
//! with the tick, the expected delay and the committed actions, and waits for
//! the chunk on the inference thread (never the tick). The measured round trip
//! is the inference time, so it becomes the delay real-time chunking
//! compensates. A server that is slow, gone or refuses fails that inference: the
//! arm keeps its plan, then holds, and the next inference asks again; zenoh
//! reconnects to the server's endpoints in the background.

use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reflex_openpi::client::read_actions;
use reflex_openpi::keys::{Layout, ObservationKeys, Request};
use reflex_openpi::msgpack::{self, Value, Writer};
use reflex_openpi::ndarray::NdArray;
use reflex_openpi::service::{COMMITTED_KEY, DELAY_KEY, MODEL_VERSION_KEY, TICK_KEY};
use reflex_runtime::launch::{Launch, LaunchError, MAX_HORIZON};
use reflex_runtime::policy::{LoadedPolicy, Policy, PolicyError};
use reflex_runtime::registry::{KindTable, LoadError, PolicyKind, PolicySpec, schema_of};
use reflex_runtime::targets::ActionTarget;
use reflex_runtime::types::{ActionChunk, Observation};
use reflex_zenoh::bus::{check_endpoint, check_exact_key, zenoh_config};
use reflex_zenoh::{ZenohConfig, ZenohMode};
use schemars::JsonSchema;
use serde::Deserialize;
use zenoh::Wait;
use zenoh::query::{ConsolidationMode, QueryTarget};

/// How camera images travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImageEncoding {
    /// uint8 `[H, W, 3]` arrays: exact, the server's chunks equal local ones.
    #[default]
    Raw,
    /// JPEG at `jpeg_quality` (OpenCV's codec): ~10x smaller, lossy.
    Jpeg,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// zenoh endpoints of the server (its `[zenoh] listen`), e.g.
    /// `["tcp/gpu-box:7448"]`; zenoh reconnects to them when they go away.
    pub connect: Vec<String>,
    /// The server's request key (`[serve] key`).
    #[serde(default = "default_key")]
    pub key: String,
    /// A zenoh JSON5 config file for this session (TLS, mTLS, user/password),
    /// as `[zenoh] config_file`; relative to the launch file.
    #[serde(default)]
    pub config_file: Option<PathBuf>,
    /// Actions per chunk this robot executes: the first `horizon` rows of the
    /// server's (which must have at least that many).
    pub horizon: usize,
    /// Longest wait for one reply, ms; a slower reply fails the inference.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: f64,
    #[serde(default)]
    pub images: ImageEncoding,
    /// JPEG quality, 1..=100 (`images = "jpeg"`).
    #[serde(default = "default_jpeg_quality")]
    pub jpeg_quality: u8,
}

fn default_key() -> String {
    "reflex/policy".into()
}

fn default_timeout_ms() -> f64 {
    1000.0
}

fn default_jpeg_quality() -> u8 {
    90
}

pub struct RemoteKind;

#[derive(Debug)]
pub struct RemoteSpec {
    config: RemoteConfig,
}

impl PolicyKind for RemoteKind {
    fn kind(&self) -> &'static str {
        "remote"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<RemoteConfig>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn PolicySpec>, LaunchError> {
        let config: RemoteConfig = table.parse()?;
        if config.connect.is_empty() {
            return Err(table.error_at(
                "connect",
                "names no endpoint of the server, e.g. [\"tcp/gpu-box:7448\"]",
            ));
        }
        for (i, endpoint) in config.connect.iter().enumerate() {
            check_endpoint(endpoint).map_err(|e| table.error_at(&format!("connect[{i}]"), e))?;
        }
        check_exact_key(&config.key).map_err(|e| table.error_at("key", e))?;
        if !(1..=MAX_HORIZON).contains(&config.horizon) {
            return Err(table.error_at("horizon", format!("must be in 1..={MAX_HORIZON}")));
        }
        if !(config.timeout_ms.is_finite() && config.timeout_ms > 0.0 && config.timeout_ms <= 600e3)
        {
            return Err(table.error_at("timeout_ms", "must be in (0, 600000] ms"));
        }
        if table.launch().config.execution.target != ActionTarget::Position {
            return Err(table.launch().error_at(
                "execution.target",
                "must be \"position\" with a remote policy: the server resolves its \
                 policy's deltas or velocities (its own [execution] target) and sends \
                 joint positions",
            ));
        }
        if !(1..=100).contains(&config.jpeg_quality) {
            return Err(table.error_at("jpeg_quality", "must be in 1..=100"));
        }
        Ok(Arc::new(RemoteSpec { config }))
    }
}

impl PolicySpec for RemoteSpec {
    fn kind(&self) -> &'static str {
        "remote"
    }

    fn horizon(&self) -> usize {
        self.config.horizon
    }

    fn model(&self) -> PathBuf {
        PathBuf::from(format!("zenoh:{}", self.config.key))
    }

    /// The server says at load whether its policy continues the plan; the
    /// request carries what it needs either way.
    fn real_time_chunking(&self) -> bool {
        true
    }

    fn load(&self, launch: &Launch) -> Result<LoadedPolicy, LoadError> {
        let started = Instant::now();
        let timeout = Duration::from_secs_f64(self.config.timeout_ms / 1e3);
        let session = self.open_session(launch, timeout)?;
        let layout = Layout::of(launch);
        let mut keys = ObservationKeys::by_name(&layout);
        // JPEG images follow the arrays as `bin` entries: (camera index, key).
        let jpeg_keys = match self.config.images {
            ImageEncoding::Raw => Vec::new(),
            ImageEncoding::Jpeg => std::mem::take(&mut keys.images)
                .into_iter()
                .filter_map(|(camera, key)| {
                    layout
                        .cameras
                        .iter()
                        .position(|c| *c == camera)
                        .map(|i| (i, key))
                })
                .collect(),
        };
        let policy = RemotePolicy {
            session,
            key: self.config.key.clone(),
            horizon: self.config.horizon,
            width: launch.action_width(),
            timeout,
            keys,
            jpeg_keys,
            layout,
            jpeg_quality: self.config.jpeg_quality,
            jpegs: Vec::new(),
            prompt: None,
            request: Writer::new(),
            model_version: String::new(),
            last_server_ms: None,
        };
        // The server must be there at start, and serve this robot: a wrong
        // endpoint or launch file is an error now, not a robot that holds still.
        let metadata = policy
            .ask(&crate::metadata_key(&self.config.key), Vec::new())
            .map_err(|e| launch.error_at("policy.connect", e))?;
        let metadata = msgpack::decode(&metadata).map_err(|e| {
            launch.error_at(
                "policy.connect",
                format!("the server's metadata is not msgpack: {e}"),
            )
        })?;
        check_metadata(&metadata, launch, self.config.horizon)
            .map_err(|(field, e)| launch.error_at(&format!("policy.{field}"), e))?;
        Ok(LoadedPolicy {
            policy: Box::new(policy),
            model_path: self.model(),
            library_path: PathBuf::from(format!(
                "reflex serve over zenoh ({})",
                self.config.connect.join(", ")
            )),
            warm_up_ms: started.elapsed().as_secs_f64() * 1e3,
            provider: "remote",
        })
    }

    fn as_any(&self) -> &dyn Any {
        &self.config
    }
}

impl RemoteSpec {
    /// A session of its own, connecting to the server (and retrying in the
    /// background when it is gone); listening nowhere.
    fn open_session(
        &self,
        launch: &Launch,
        timeout: Duration,
    ) -> Result<zenoh::Session, LaunchError> {
        let config = ZenohConfig {
            mode: ZenohMode::Peer,
            listen: Vec::new(),
            connect: self.config.connect.clone(),
            multicast_scouting: false,
            config_file: self.config.config_file.clone(),
            ..ZenohConfig::default()
        };
        let mut config = zenoh_config(&config, &launch.base_dir)
            .map_err(|e| launch.error_at("policy.config_file", e.to_string()))?;
        let settings = [
            // Wait this long for the server at start, then go on and retry.
            ("connect/timeout_ms", timeout.as_millis().to_string()),
            ("connect/exit_on_failure", "false".into()),
            // ... every 100 ms at first, at most 500 ms apart.
            (
                "connect/retry",
                "{period_init_ms: 100, period_max_ms: 500, period_increase_factor: 2}".into(),
            ),
        ];
        for (key, value) in settings {
            config
                .insert_json5(key, &value)
                .map_err(|e| launch.error_at("policy", format!("zenoh {key}: {e}")))?;
        }
        zenoh::open(config)
            .wait()
            .map_err(|e| launch.error_at("policy.connect", format!("cannot open zenoh: {e}")))
    }
}

/// Checks the server's metadata against this robot: the same joints (by
/// name), rates and action width, and a chunk at least `horizon` long.
fn check_metadata(
    metadata: &Value<'_>,
    launch: &Launch,
    horizon: usize,
) -> Result<(), (&'static str, String)> {
    let int = |key: &str| metadata.get(key).and_then(Value::as_f64);
    let server_horizon = int("action_horizon").unwrap_or(0.0) as usize;
    if server_horizon < horizon {
        return Err((
            "horizon",
            format!("is {horizon}; the server's chunks have {server_horizon} actions"),
        ));
    }
    let dim = int("action_dim").unwrap_or(0.0) as usize;
    if dim != launch.action_width() {
        return Err((
            "key",
            format!(
                "the server's actions have {dim} values; this robot takes {} (joints, then the gripper)",
                launch.action_width()
            ),
        ));
    }
    let joints: Vec<&str> = match metadata.get("joints") {
        Some(Value::Array(items)) => items.iter().filter_map(Value::key_text).collect(),
        _ => Vec::new(),
    };
    let ours: Vec<&str> = launch
        .config
        .robot
        .joints
        .iter()
        .map(|j| j.name.as_str())
        .collect();
    if joints != ours {
        return Err((
            "key",
            format!(
                "the server's joints are {joints:?}; this robot's are {ours:?} (matched by name, in order)"
            ),
        ));
    }
    if launch.config.execution.strategy == "rtc"
        && !matches!(metadata.get("real_time_chunking"), Some(Value::Bool(true)))
    {
        return Err((
            "key",
            "`[execution] strategy = \"rtc\"`, but the server's policy does not continue \
             the executor's plan (serve a flow or diffusion policy with `vjp_model` or a \
             prefix-trained model)"
                .into(),
        ));
    }
    let rates = (int("rate_hz"), int("action_rate_hz"));
    let our_rates = (
        launch.config.control.rate_hz,
        launch.config.execution.action_rate_hz,
    );
    if rates != (Some(our_rates.0), Some(our_rates.1)) {
        return Err((
            "key",
            format!(
                "the server's launch file runs at {:?} Hz with actions at {:?} Hz; this one at {} / {} Hz (delays and committed actions are counted in ticks)",
                rates.0, rates.1, our_rates.0, our_rates.1
            ),
        ));
    }
    Ok(())
}

pub struct RemotePolicy {
    session: zenoh::Session,
    key: String,
    horizon: usize,
    /// Columns the robot takes: its joints, then the gripper.
    width: usize,
    timeout: Duration,
    /// The keys of what goes as arrays.
    keys: ObservationKeys,
    /// `images = "jpeg"`: (camera index, key) of each image sent as a JPEG.
    jpeg_keys: Vec<(usize, String)>,
    layout: Layout,
    jpeg_quality: u8,
    /// Per camera: the last JPEG, reused.
    jpegs: Vec<Vec<u8>>,
    prompt: Option<String>,
    request: Writer,
    /// The served model's SHA-256 in the last reply.
    pub model_version: String,
    /// `server_timing.infer_ms` of the last reply.
    pub last_server_ms: Option<f64>,
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

impl RemotePolicy {
    /// One query: the first reply's payload, or the server's error.
    fn ask(&self, key: &str, payload: Vec<u8>) -> Result<Vec<u8>, String> {
        let replies = self
            .session
            .get(key)
            .payload(payload)
            .target(QueryTarget::BestMatching)
            .consolidation(ConsolidationMode::None)
            .timeout(self.timeout)
            .wait()
            .map_err(|e| format!("cannot send the request: {e}"))?;
        let reply = replies.recv().map_err(|_| {
            format!(
                "no reply on `{key}` within {} ms (is reflex serve running, and reachable?)",
                self.timeout.as_millis()
            )
        })?;
        match reply.result() {
            Ok(sample) => Ok(sample.payload().to_bytes().into_owned()),
            Err(error) => Err(format!(
                "the server failed: {}",
                error
                    .payload()
                    .try_to_string()
                    .unwrap_or_default()
                    .trim_end()
            )),
        }
    }

    fn write_request(&mut self, obs: &Observation) -> Result<(), Failure> {
        let committed = obs.committed_len > 0;
        self.request.bytes.clear();
        self.keys.write_request(
            &mut self.request,
            Request {
                obs,
                layout: &self.layout,
                prompt: self.prompt.as_deref(),
                images: &[],
            },
            2 + usize::from(committed) + self.jpeg_keys.len(),
        );
        let w = &mut self.request;
        w.str(TICK_KEY).int(obs.tick as i64);
        w.str(DELAY_KEY).int(obs.expected_delay_ticks as i64);
        if committed {
            let width = obs.committed_width.max(1);
            let rows: &[f64] =
                &obs.committed[..(obs.committed_len * width).min(obs.committed.len())];
            w.str(COMMITTED_KEY);
            NdArray::from_f64(&[rows.len() / width, width], rows).write(w);
        }
        self.jpegs.resize_with(obs.images.len(), Vec::new);
        for (i, key) in &self.jpeg_keys {
            let image = &obs.images[*i];
            let out = &mut self.jpegs[*i];
            out.clear();
            if image.width > 0 && image.height > 0 {
                crate::jpeg::encode(image, self.jpeg_quality, out)?;
            }
            self.request.str(key).bin(out);
        }
        Ok(())
    }

    fn exchange(&mut self, obs: &Observation, out: &mut ActionChunk) -> Result<(), Failure> {
        self.write_request(obs)?;
        // The query takes the buffer (no copy of the images).
        let size = self.request.bytes.len();
        let payload = std::mem::replace(&mut self.request.bytes, Vec::with_capacity(size));
        let reply = self.ask(&self.key, payload)?;
        let value =
            msgpack::decode(&reply).map_err(|e| format!("the reply is not msgpack: {e}"))?;
        match value.get(TICK_KEY).and_then(Value::as_f64) {
            Some(tick) if tick as u64 == obs.tick => {}
            other => {
                return Err(format!(
                    "the reply answers tick {other:?}, the request was for tick {}",
                    obs.tick
                )
                .into());
            }
        }
        self.last_server_ms = value
            .get("server_timing")
            .and_then(|t| t.get("infer_ms"))
            .and_then(Value::as_f64);
        if let Some(version) = value.get(MODEL_VERSION_KEY).and_then(Value::key_text)
            && version != self.model_version
        {
            if !self.model_version.is_empty() {
                tracing::warn!(
                    "the server's model changed: sha256 {:.12} -> {version:.12}",
                    self.model_version
                );
            }
            self.model_version = version.to_string();
        }
        read_actions(&value, self.horizon, self.width, &mut out.actions)?;
        Ok(())
    }
}

impl Policy for RemotePolicy {
    fn horizon(&self) -> usize {
        self.horizon
    }

    fn action_dim(&self) -> usize {
        self.width
    }

    fn infer(&mut self, obs: &Observation, out: &mut ActionChunk) -> Result<(), PolicyError> {
        self.exchange(obs, out)
    }

    fn set_prompt(&mut self, prompt: &str) -> Result<(), PolicyError> {
        self.prompt = Some(prompt.to_string());
        Ok(())
    }
}
