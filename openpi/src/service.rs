//! A reflex policy behind the openpi protocol: the launch file's policy and its
//! chunk stages (action targets, V-GPS, DSRL) answer every request, as they would
//! in the loop.

use std::sync::{Mutex, PoisonError};

use reflex_runtime::launch::Launch;
use reflex_runtime::log::ModelFile;
use reflex_runtime::policy::ChunkPipeline;
use reflex_runtime::stage::SteeringSwitch;
use reflex_runtime::types::ActionChunk;

use crate::keys::{Layout, ObservationKeys, lookup};
use crate::msgpack::{self, Value, Writer};
use crate::ndarray::NdArray;
use crate::server::{Service, Session};

/// The request key of reflex's extension: the initial noise of a flow or
/// diffusion policy, float `[H, D]` or `[B, H, D]` (DSRL's w, or a fixed noise
/// for reproducing a chunk).
pub const NOISE_KEY: &str = "noise";

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
}

/// What the metadata tells clients about the served policy.
#[derive(Debug, Clone)]
pub struct ServedModel {
    pub robot: String,
    pub policy_kind: String,
    pub joints: Vec<String>,
    /// Every model file the launch file names, with its hash.
    pub models: Vec<ModelFile>,
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
        Self {
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
    w.map(9)
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
        // The connection's request count keys the seeded noise, as the tick does
        // in the loop: request k is `reflex infer --tick k`.
        let obs = self
            .keys
            .observation(&value, &self.layout, session.requests)?;
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
        let mut entries = 2;
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
