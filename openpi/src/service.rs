//! A reflex policy behind the openpi protocol: the launch file's policy and its
//! chunk stages (action targets, V-GPS, DSRL) answer every request, as they would
//! in the loop.

use std::sync::{Mutex, PoisonError};

use reflex_runtime::launch::Launch;
use reflex_runtime::log::ModelFile;
use reflex_runtime::policy::ChunkPipeline;
use reflex_runtime::stage::SteeringSwitch;
use reflex_runtime::types::{ActionChunk, Observation};

use crate::keys::{ImageDecoder, Layout, ObservationKeys, lookup};
use crate::msgpack::{self, Value, Writer};
use crate::ndarray::NdArray;
use crate::server::{Service, Session};

/// The request key of reflex's extension: the initial noise of a flow or
/// diffusion policy, float `[H, D]` or `[B, H, D]` (DSRL's w, or a fixed noise
/// for reproducing a chunk).
pub const NOISE_KEY: &str = "noise";
/// Extension: the control tick the observation was taken at (seeds the noise
/// as in the loop; echoed in the reply). Default: the connection's request count.
pub const TICK_KEY: &str = "tick";
/// Extension, for real-time chunking: ticks the chunk is expected to take to
/// reach the robot (the robot's measured round trip).
pub const DELAY_KEY: &str = "delay_ticks";
/// Extension, for real-time chunking: the robot's plan at the new chunk's action
/// times, float `[rows, joints (+ gripper)]` (the frozen prefix and what guided
/// RTC steers toward).
pub const COMMITTED_KEY: &str = "committed";
/// In replies: the SHA-256 of the policy's model file.
pub const MODEL_VERSION_KEY: &str = "model_version";

struct Served {
    pipeline: ChunkPipeline,
    chunk: ActionChunk,
    /// The instruction the policy holds.
    prompt: Option<String>,
}

/// Requests answered since the last report, for `reflex serve`'s status line.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ServeReport {
    /// Every request answered since start.
    pub total: u64,
    /// Server time (request received to reply built) of each request answered
    /// since the last report, ms.
    pub infer_ms: Vec<f64>,
    /// Requests refused or failed since the last report.
    pub errors: u64,
}

pub struct PolicyService {
    report: Mutex<ServeReport>,
    layout: Layout,
    keys: ObservationKeys,
    served: Mutex<Served>,
    steering: SteeringSwitch,
    metadata: Vec<u8>,
    horizon: usize,
    /// The SHA-256 of the policy's model file, in every reply.
    model_version: String,
    /// Compressed images are accepted when set.
    decoder: Option<ImageDecoder>,
}

/// What the metadata tells clients about the served policy.
#[derive(Debug, Clone)]
pub struct ServedModel {
    pub robot: String,
    pub policy_kind: String,
    pub joints: Vec<String>,
    /// Every model file the launch file names, with its hash.
    pub models: Vec<ModelFile>,
    /// The served launch file's control and action rates (a request's ticks
    /// and committed rows are counted in them).
    pub rate_hz: f64,
    pub action_rate_hz: f64,
    /// Whether the policy continues the executor's plan (real-time chunking).
    pub real_time_chunking: bool,
}

impl PolicyService {
    pub fn new(
        launch: &Launch,
        keys: ObservationKeys,
        pipeline: ChunkPipeline,
        model: ServedModel,
    ) -> Self {
        let layout = Layout::of(launch);
        let horizon = pipeline.policy.horizon();
        let dim = pipeline.policy.action_dim();
        let metadata = metadata(&model, &keys, horizon, dim);
        let model_version = model
            .models
            .iter()
            .find(|f| f.field == "policy.model")
            .or(model.models.first())
            .map_or(String::new(), |f| f.sha256.clone());
        Self {
            horizon,
            model_version,
            decoder: None,
            report: Mutex::default(),
            layout,
            keys,
            served: Mutex::new(Served {
                pipeline,
                chunk: ActionChunk::zeros(horizon, dim),
                prompt: None,
            }),
            steering: SteeringSwitch::default(),
            metadata,
        }
    }
}

fn metadata(model: &ServedModel, keys: &ObservationKeys, horizon: usize, dim: usize) -> Vec<u8> {
    let mut w = Writer::new();
    w.map(12)
        .str("server")
        .str("reflex")
        .str("version")
        .str(env!("CARGO_PKG_VERSION"))
        .str("robot")
        .str(&model.robot)
        .str("policy")
        .str(&model.policy_kind)
        .str("models")
        .array(model.models.len());
    for file in &model.models {
        // The file's name only: the server's directories are its own business.
        let name = std::path::Path::new(&file.path)
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned());
        w.map(4)
            .str("field")
            .str(&file.field)
            .str("file")
            .str(&name);
        w.str("sha256")
            .str(&file.sha256)
            .str("bytes")
            .int(file.bytes as i64);
    }
    w.str("real_time_chunking").bool(model.real_time_chunking);
    w.str("rate_hz").float(model.rate_hz);
    w.str("action_rate_hz").float(model.action_rate_hz);
    w.str("action_horizon").int(horizon as i64);
    w.str("action_dim").int(dim as i64);
    w.str("joints").array(model.joints.len());
    for joint in &model.joints {
        w.str(joint);
    }
    w.str("keys").map(4).str("state").str(&keys.state);
    w.str("images").map(keys.images.len());
    for (camera, key) in &keys.images {
        w.str(camera).str(key);
    }
    w.str("tensors").map(keys.tensors.len());
    for (stream, key) in &keys.tensors {
        w.str(stream).str(key);
    }
    w.str("prompt").str(&keys.prompt);
    w.into_bytes()
}

impl PolicyService {
    /// Accepts images sent compressed (msgpack `bin`), decoded by `decoder`.
    pub fn with_image_decoder(mut self, decoder: ImageDecoder) -> Self {
        self.decoder = Some(decoder);
        self
    }

    /// What was served since the last call (and the running total).
    pub fn take_report(&self) -> ServeReport {
        let mut report = self.report.lock().unwrap_or_else(PoisonError::into_inner);
        let taken = report.clone();
        report.infer_ms.clear();
        report.errors = 0;
        taken
    }

    fn answer(
        &self,
        request: &[u8],
        session: &mut Session,
        reply: &mut Writer,
    ) -> Result<usize, String> {
        let value =
            msgpack::decode(request).map_err(|e| format!("the request is not msgpack: {e}"))?;
        // The tick keys the seeded noise as in the loop: request k of a
        // connection is `reflex infer --tick k` unless it names its tick.
        let tick = match lookup(&value, TICK_KEY) {
            None | Some(Value::Nil) => session.requests,
            Some(Value::Int(t)) if *t >= 0 => *t as u64,
            Some(other) => {
                return Err(format!(
                    "`{TICK_KEY}` must be an integer >= 0, not {}",
                    other.type_name()
                ));
            }
        };
        let mut obs = self
            .keys
            .observation(&value, &self.layout, tick, self.decoder)?;
        self.read_plan(&value, &mut obs)?;
        let prompt = self.keys.prompt(&value)?;
        let noise = match lookup(&value, NOISE_KEY) {
            None | Some(Value::Nil) => None,
            Some(v) => {
                let array = NdArray::from_value(v)
                    .ok_or_else(|| {
                        format!("`{NOISE_KEY}` is {}, not a numpy array", v.type_name())
                    })?
                    .map_err(|e| format!("`{NOISE_KEY}` {e}"))?;
                let values: Vec<f32> = array.to_f64().iter().map(|&v| v as f32).collect();
                if values.iter().any(|v| !v.is_finite()) {
                    return Err(format!("`{NOISE_KEY}` has values that are not finite"));
                }
                Some(values)
            }
        };
        let mut served = self.served.lock().unwrap_or_else(PoisonError::into_inner);
        let Served {
            pipeline,
            chunk,
            prompt: held,
        } = &mut *served;
        if let Some(text) = prompt
            && held.as_deref() != Some(text)
        {
            pipeline
                .policy
                .set_prompt(text)
                .map_err(|e| format!("the policy refused the prompt: {e}"))?;
            *held = Some(text.to_string());
        }
        if let Some(noise) = noise {
            pipeline
                .policy
                .set_next_noise(noise)
                .map_err(|e| format!("`{NOISE_KEY}`: {e}"))?;
        }
        chunk.conditioned_on_tick = obs.tick;
        pipeline
            .run(&obs, chunk, &self.steering)
            .map_err(|e| format!("inference failed: {e}"))?;
        let mut entries = 4;
        reply.str(TICK_KEY).int(obs.tick as i64);
        reply.str(MODEL_VERSION_KEY).str(&self.model_version);
        reply.str("actions");
        NdArray::from_f32(&[chunk.horizon, chunk.dim], &chunk.actions).write(reply);
        reply
            .str("policy_timing")
            .map(1)
            .str("infer_ms")
            .float(chunk.infer_ns as f64 / 1e6);
        if !chunk.choice.scores.is_empty() {
            entries += 1;
            reply.str("choice").map(2).str("selected");
            reply.int(chunk.choice.selected as i64).str("scores");
            NdArray::from_f32(&[chunk.choice.scores.len()], &chunk.choice.scores).write(reply);
        }
        if !chunk.noise.is_empty() {
            entries += 1;
            reply.str(NOISE_KEY);
            let rows = chunk.horizon.max(1);
            NdArray::from_f32(&[rows, chunk.noise.len() / rows], &chunk.noise).write(reply);
        }
        Ok(entries)
    }
}

impl PolicyService {
    /// Real-time chunking's fields: the expected delay and the committed rows.
    fn read_plan(&self, request: &Value<'_>, obs: &mut Observation) -> Result<(), String> {
        match lookup(request, DELAY_KEY) {
            None | Some(Value::Nil) => {}
            Some(Value::Int(d)) if (0..=1 << 20).contains(d) => {
                obs.expected_delay_ticks = *d as u64;
            }
            Some(other) => {
                return Err(format!(
                    "`{DELAY_KEY}` must be an integer in 0..=1048576, not {other:?}"
                ));
            }
        }
        let width = self.layout.state_width();
        obs.committed_width = width;
        let Some(value) = lookup(request, COMMITTED_KEY).filter(|v| !matches!(v, Value::Nil))
        else {
            return Ok(());
        };
        let array = NdArray::from_value(value)
            .ok_or_else(|| {
                format!(
                    "`{COMMITTED_KEY}` is {}, not a numpy array",
                    value.type_name()
                )
            })?
            .map_err(|e| format!("`{COMMITTED_KEY}` {e}"))?;
        let rows = match array.shape.as_slice() {
            &[rows, cols] if cols == width || rows == 0 => rows,
            shape => {
                return Err(format!(
                    "`{COMMITTED_KEY}` has shape {shape:?}; this robot's rows have {width} values"
                ));
            }
        };
        if rows > self.horizon {
            return Err(format!(
                "`{COMMITTED_KEY}` has {rows} rows, more than the chunk's {}",
                self.horizon
            ));
        }
        obs.committed = array.to_f64();
        if obs.committed.iter().any(|v| !v.is_finite()) {
            return Err(format!("`{COMMITTED_KEY}` has values that are not finite"));
        }
        obs.committed_len = rows;
        Ok(())
    }
}

impl Service for PolicyService {
    fn metadata(&self) -> Vec<u8> {
        self.metadata.clone()
    }

    fn infer(
        &self,
        request: &[u8],
        session: &mut Session,
        reply: &mut Writer,
    ) -> Result<usize, String> {
        let started = std::time::Instant::now();
        let result = self.answer(request, session, reply);
        let mut report = self.report.lock().unwrap_or_else(PoisonError::into_inner);
        match &result {
            Ok(_) => {
                report.total += 1;
                // Bounded: a status line that nobody takes keeps the last hour
                // at 30 Hz at most.
                if report.infer_ms.len() < 1 << 17 {
                    report.infer_ms.push(started.elapsed().as_secs_f64() * 1e3);
                }
            }
            Err(_) => report.errors += 1,
        }
        result
    }
}
