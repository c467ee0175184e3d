//! `reflex infer --episode`: a recorded episode through the policy and the launch
//! file's execution strategy, offline, one action period per step.
//!
//! Step `t` observes the episode's arrays at `t` (inputs with `history` see steps
//! `t - 1`, `t - 2`, ..., the first step standing in before the start, as the loop
//! and LeRobot's observation queue do). When the executor asks for a chunk at step
//! `t` the policy samples one conditioned on `t`, and the step's action is the
//! executor's target one action period later: action `first_action` of a fresh
//! chunk, then the next ones until `replan_after` have run. This is LeRobot's
//! `select_action` schedule, which is what makes the two comparable step by step.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use reflex_runtime::executor::ExecutorParams;
use reflex_runtime::launch::Launch;
use reflex_runtime::npy::{self, NpyArray, NpyData};
use reflex_runtime::stage::{Candidates, ChunkStage};
use reflex_runtime::types::{ActionChunk, Observation, PastFrame};

use crate::infer::{InferArgs, observation_from, percentile, read_arrays};

/// Runs the episode and writes one action per step to `--out` (.npy [T, joints],
/// or .json with the latency report).
pub fn run(launch: &Launch, episode: &Path, args: &InferArgs) -> anyhow::Result<ExitCode> {
    let arrays = read_arrays(episode)
        .with_context(|| format!("cannot read episode {}", episode.display()))?;
    let steps = episode_length(&arrays, episode)?;
    let frames = launch.policy().history();
    let observations = (0..steps)
        .map(|t| {
            let at_t: Vec<(String, NpyArray)> = arrays
                .iter()
                .map(|(name, array)| (name.clone(), step_of(array, t)))
                .collect();
            observation_from(&at_t, episode, launch, t as u64)
                .with_context(|| format!("step {t} of {}", episode.display()))
        })
        .collect::<anyhow::Result<Vec<Observation>>>()?;

    let joints = launch.action_width();
    let mut generative = crate::load_generative(launch)?;
    let mut other = match generative {
        Some(_) => None,
        None => Some(crate::load_policy(launch)?),
    };
    let horizon = launch.policy().horizon();
    let noise = match &args.noise {
        Some(path) => Some(ChunkNoise::read(path, generative.as_ref())?),
        None => None,
    };
    // One step is one action period.
    let params = ExecutorParams {
        ticks_per_action: 1.0,
        ..launch.executor_params()
    };
    let mut executor = launch
        .executor()
        .build(&params)
        .map_err(|e| anyhow::anyhow!("execution: {e}"))?;
    executor.hold(&observations[0].joints.position);

    let period_ns = (1e9 / launch.config.execution.action_rate_hz) as u64;
    let mut chunk = ActionChunk::zeros(horizon, joints);
    let mut actions = Vec::with_capacity(steps * joints);
    let mut chunk_ms = Vec::new();
    // Steps that only take the next action from the executor.
    let mut action_ms = Vec::new();
    for t in 0..steps {
        let mut obs = observations[t].clone();
        obs.stamp_ns = t as u64 * period_ns;
        obs.history = (1..frames)
            .map(|k| {
                past_frame(
                    &observations[t.saturating_sub(k)],
                    obs.stamp_ns,
                    k,
                    period_ns,
                )
            })
            .collect();
        let step_started = Instant::now();
        let sampled = executor.wants_chunk(t as u64);
        if sampled {
            executor.requested(t as u64);
            let started = Instant::now();
            match (&mut generative, &mut other) {
                (Some(policy), _) => {
                    if let Some(noise) = &noise {
                        policy
                            .set_next_noise(noise.chunk(chunk_ms.len())?)
                            .map_err(|e| anyhow::anyhow!("noise: {e}"))?;
                    }
                    reflex_runtime::policy::Policy::infer(policy, &obs, &mut chunk)
                }
                (None, Some(loaded)) => loaded.policy.infer(&obs, &mut chunk),
                (None, None) => unreachable!("one policy is loaded"),
            }
            .map_err(|e| anyhow::anyhow!("step {t}: inference failed: {e}"))?;
            chunk_ms.push(started.elapsed().as_secs_f64() * 1e3);
            // Delta and velocity targets resolved against this step's state.
            let mut candidates = Candidates {
                batch: 1,
                horizon,
                dim: joints,
                values: std::mem::take(&mut chunk.actions),
                scores: vec![0.0],
                selected: 0,
                scored: false,
            };
            launch
                .action_targets()
                .apply(&obs, &mut candidates)
                .map_err(|e| anyhow::anyhow!("step {t}: {e}"))?;
            chunk.actions = candidates.values;
            chunk.conditioned_on_tick = t as u64;
            executor
                .accept(&chunk, t as u64)
                .map_err(|e| anyhow::anyhow!("step {t}: chunk rejected: {e:?}"))?;
        }
        actions.extend(executor.target(t as u64 + 1).iter().map(|&v| v as f32));
        if !sampled {
            action_ms.push(step_started.elapsed().as_secs_f64() * 1e3);
        }
    }

    let report = serde_json::json!({
        "steps": steps,
        "chunks": chunk_ms.len(),
        "chunk_ms": percentiles(&mut chunk_ms),
        "action_ms": percentiles(&mut action_ms),
        "actions": actions.chunks(joints).map(<[f32]>::to_vec).collect::<Vec<_>>(),
    });
    match &args.out {
        Some(path) if path.extension().is_some_and(|e| e == "npy") => {
            npy::write_f32(path, &[steps, joints], &actions)?;
            println!(
                "{steps} steps, {} chunks ({} ms per chunk, p50 / p99); actions [{steps}, {joints}] in {}",
                chunk_ms.len(),
                report["chunk_ms"],
                path.display()
            );
        }
        Some(path) => std::fs::write(path, serde_json::to_string_pretty(&report)?)?,
        None => println!("{}", serde_json::to_string(&report)?),
    }
    Ok(ExitCode::SUCCESS)
}

/// The number of steps: the leading axis every array shares.
fn episode_length(arrays: &[(String, NpyArray)], path: &Path) -> anyhow::Result<usize> {
    let Some((_, positions)) = arrays.iter().find(|(n, _)| n == "joint_positions") else {
        bail!("{}: no `joint_positions` [T, joints]", path.display());
    };
    let steps = match positions.shape.as_slice() {
        [t, _] if *t > 0 => *t,
        shape => bail!(
            "{}: `joint_positions` must be [T, joints] with T > 0, found {shape:?}",
            path.display()
        ),
    };
    if let Some((name, array)) = arrays.iter().find(|(_, a)| a.shape.first() != Some(&steps)) {
        bail!(
            "{}: `{name}` has shape {:?}; every array needs the leading time axis of {steps} steps",
            path.display(),
            array.shape
        );
    }
    Ok(steps)
}

/// Step `t` of an array with a leading time axis.
fn step_of(array: &NpyArray, t: usize) -> NpyArray {
    let shape = array.shape[1..].to_vec();
    let n: usize = shape.iter().product();
    let data = match &array.data {
        NpyData::Float(v) => NpyData::Float(v[t * n..(t + 1) * n].to_vec()),
        NpyData::Uint8(v) => NpyData::Uint8(v[t * n..(t + 1) * n].to_vec()),
        NpyData::Int64(v) => NpyData::Int64(v[t * n..(t + 1) * n].to_vec()),
    };
    NpyArray { shape, data }
}

/// An earlier step as the history frame `k` periods back.
fn past_frame(obs: &Observation, now_ns: u64, k: usize, period_ns: u64) -> PastFrame {
    PastFrame {
        stamp_ns: now_ns.saturating_sub(k as u64 * period_ns),
        joints: obs.joints,
        images: obs.images.clone(),
        tensors: obs.tensors.clone(),
    }
}

/// `--noise` of an episode: one chunk's noise (initial, optionally followed by the
/// per-step samples) after another.
struct ChunkNoise {
    values: Vec<f32>,
    per_chunk: usize,
}

impl ChunkNoise {
    fn read(
        path: &Path,
        policy: Option<&reflex_policies::generative::GenerativePolicy>,
    ) -> anyhow::Result<Self> {
        let Some(policy) = policy else {
            bail!("--noise applies to flow and diffusion policies");
        };
        let (shape, data) =
            npy::read_f64(path).with_context(|| format!("cannot read noise {}", path.display()))?;
        let values: Vec<f32> = data.iter().map(|&v| v as f32).collect();
        let (initial, steps) = (policy.noise_len(), policy.step_noise_len());
        // [chunks, samples, B, H, D] says where chunks end; a flat file is cut into
        // chunks with the step samples when they divide it.
        let declared = (shape.len() == 5).then(|| shape[1..].iter().product::<usize>());
        let per_chunk = [initial + steps, initial]
            .into_iter()
            .filter(|&n| declared.is_none_or(|d| d == n))
            .find(|&n| n > 0 && values.len().is_multiple_of(n))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: {} values (shape {shape:?}) are not a whole number of chunks of \
                     {initial} (initial noise) or {} (with the per-step samples)",
                    path.display(),
                    values.len(),
                    initial + steps
                )
            })?;
        Ok(Self { values, per_chunk })
    }

    fn chunk(&self, i: usize) -> anyhow::Result<Vec<f32>> {
        self.values
            .get(i * self.per_chunk..(i + 1) * self.per_chunk)
            .map(<[f32]>::to_vec)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "--noise holds {} chunks, the episode samples more",
                    self.values.len() / self.per_chunk
                )
            })
    }
}

fn percentiles(v: &mut [f64]) -> serde_json::Value {
    if v.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::json!({"p50": percentile(v, 0.5), "p99": percentile(v, 0.99), "max": percentile(v, 1.0)})
}
