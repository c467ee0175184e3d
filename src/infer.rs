//! `reflex infer`: one inference offline, on a saved observation, for debugging a
//! model without a robot.
//!
//! Observation files:
//! - `.json`: `{"joint_positions": [..], "joint_velocities": [..], "images":
//!   {"<camera>": "image.npy"}}` (image paths relative to the JSON file, uint8
//!   [H, W, 3]); only `joint_positions` is required;
//! - `.npz` (numpy `savez`): arrays `joint_positions`, optional `joint_velocities`
//!   and `camera.<name>` (uint8 [H, W, 3]);
//! - `.npy`: the joint positions alone.
//!
//! A camera the file leaves out is a missing view (black, masked), which is an
//! error unless the launch file marks it `optional`.
//!
//! `--episode EP.npz` runs a whole recorded episode instead, one action period per
//! step, as the loop would: the same arrays with a leading time axis (`[T, joints]`,
//! `[T, H, W, 3]`), inputs with `history` fed the earlier steps, the launch file's
//! execution strategy (`first_action`, `replan_after`) deciding when a chunk is
//! sampled and which action runs; what comes out is the action of every step.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use reflex_policies::config::{ObservationSource, TensorDtype, inputs_of};
use reflex_runtime::files;
use reflex_runtime::launch::Launch;
use reflex_runtime::npy::{self, NpyArray, NpyData};
use reflex_runtime::stage::{Candidates, ChunkStage};
use reflex_runtime::stream::StreamKind;
use reflex_runtime::types::{ActionChunk, Image, JointState, Observation, TensorSample};

#[derive(clap::Args)]
pub struct InferArgs {
    /// Launch file whose policy to run.
    pub launch: PathBuf,
    /// The observation: .json, .npz or .npy (see `reflex infer --help`).
    #[arg(long, required_unless_present = "episode", conflicts_with = "episode")]
    pub obs: Option<PathBuf>,
    /// A recorded episode (.npz, every array with a leading time axis): run it step
    /// by step and write the executed action of every step to --out ([T, joints]).
    /// With --noise: [chunks, ...] one chunk's noise after another.
    #[arg(long, value_name = "EP.npz")]
    pub episode: Option<PathBuf>,
    /// Initial noise for flow / diffusion policies: .npy float32 [B, H, D]; for a
    /// stochastic sampler (DDPM, DDIM with eta > 0) optionally followed by one
    /// [B, H, D] sample per step ([1 + steps, B, H, D]).
    #[arg(long)]
    pub noise: Option<PathBuf>,
    /// Write the chunk here: .npy (float32 [B, H, joints]) or .json.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the sample in the model's space (before unnormalizing and slicing),
    /// .npy float32 [B, H, D] (flow / diffusion only).
    #[arg(long)]
    pub raw_out: Option<PathBuf>,
    /// Write every float32 model input, as fed, to DIR/<input>.npy.
    #[arg(long, value_name = "DIR")]
    pub dump_inputs: Option<PathBuf>,
    /// The plan the chunk continues, for real-time chunking (`strategy = "rtc"`):
    /// .npy [rows, joints] of targets, row k due at action k of this chunk (what
    /// the executor would command meanwhile and after).
    #[arg(long, value_name = "PLAN.npy", conflicts_with = "episode")]
    pub previous: Option<PathBuf>,
    /// With --previous: the inference delay the chunk is made for, in control ticks.
    #[arg(long, default_value_t = 0, requires = "previous")]
    pub delay_ticks: u64,
    /// The tick the observation is taken at (keys the seeded noise).
    #[arg(long, default_value_t = 0)]
    pub tick: u64,
    /// Then time N more inferences on the same observation and report latency
    /// percentiles (and, for flow / diffusion, the time inside ONNX Runtime).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub repeat: usize,
    /// Override a launch-file field.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

pub fn run(args: InferArgs) -> anyhow::Result<ExitCode> {
    let launch = crate::load_launch(Some(&args.launch), &args.overrides)?;
    if let Some(episode) = &args.episode {
        return crate::episode::run(&launch, episode, &args);
    }
    let obs_path = args.obs.clone().unwrap_or_default();
    let mut obs = read_observation(&obs_path, &launch, args.tick)?;
    if let Some(path) = &args.previous {
        let (shape, values) = npy::read_f64(path)
            .with_context(|| format!("cannot read the previous plan {}", path.display()))?;
        let width = launch.action_width();
        let horizon = launch.policy().horizon();
        match shape.as_slice() {
            [rows, w] if *w == width && *rows <= horizon => {
                obs.committed = values;
                obs.committed_len = shape[0];
                obs.committed_width = width;
                obs.expected_delay_ticks = args.delay_ticks;
            }
            _ => bail!(
                "{}: shape {shape:?}, expected [rows <= {horizon}, {width}] (targets per action)",
                path.display()
            ),
        }
    }
    // Action columns: the joints and the gripper.
    let joints = launch.action_width();
    let horizon;
    let (actions, rows, raw, infer_ms, provider);
    let mut latency = serde_json::Value::Null;
    if let Some(mut policy) = crate::load_generative(&launch)? {
        if let Some(path) = &args.noise {
            let noise = npy::read_f64(path)
                .with_context(|| format!("cannot read noise {}", path.display()))?;
            let values: Vec<f32> = noise.1.iter().map(|&v| v as f32).collect();
            policy
                .set_next_noise(values)
                .map_err(|e| anyhow::anyhow!("{}: {e} (shape {:?})", path.display(), noise.0))?;
        }
        let started = Instant::now();
        policy
            .sample(&obs)
            .map_err(|e| anyhow::anyhow!("inference failed: {e}"))?;
        infer_ms = started.elapsed().as_secs_f64() * 1e3;
        horizon = policy.horizon();
        rows = policy.batch();
        actions = policy.last_actions.clone();
        raw = Some((policy.last_raw.clone(), policy.model_dim()));
        provider = policy.provider;
        if args.repeat > 0 {
            let (mut total, mut graph, mut overhead) = (Vec::new(), Vec::new(), Vec::new());
            let mut next = obs.clone();
            for i in 0..args.repeat {
                next.tick = obs.tick + 1 + i as u64;
                policy
                    .sample(&next)
                    .map_err(|e| anyhow::anyhow!("inference failed: {e}"))?;
                total.push(policy.last_timing.total_ns as f64 / 1e6);
                graph.push(policy.last_timing.graph_ns as f64 / 1e6);
                overhead.push(policy.last_timing.sampler_overhead_ns() as f64 / 1e6);
            }
            latency = latency_report(
                &mut total,
                Some((&mut graph, &mut overhead)),
                policy.last_timing.graph_runs,
            );
        }
        if let Some(dir) = &args.dump_inputs {
            std::fs::create_dir_all(dir)?;
            // Every input in its own dtype, as the model got it.
            for input in policy.model_inputs() {
                let path = dir.join(format!("{}.npy", input.name));
                match input.dtype {
                    TensorDtype::Float32 => npy::write_f32(&path, &input.shape, &input.values)?,
                    TensorDtype::Uint8 => npy::write_u8(&path, &input.shape, &input.bytes)?,
                    TensorDtype::Bool => npy::write_bool(&path, &input.shape, &input.flags)?,
                    TensorDtype::Int64 => npy::write_i64(&path, &input.shape, &input.ids)?,
                }
            }
        }
    } else {
        if args.noise.is_some() || args.raw_out.is_some() || args.dump_inputs.is_some() {
            bail!("--noise, --raw-out and --dump-inputs apply to flow and diffusion policies");
        }
        let mut loaded = crate::load_policy(&launch)?;
        horizon = loaded.policy.horizon();
        let mut chunk = ActionChunk::zeros(horizon, joints);
        let started = Instant::now();
        loaded
            .policy
            .infer(&obs, &mut chunk)
            .map_err(|e| anyhow::anyhow!("inference failed: {e}"))?;
        infer_ms = started.elapsed().as_secs_f64() * 1e3;
        rows = 1;
        actions = chunk.actions.clone();
        if args.repeat > 0 {
            let mut total = Vec::new();
            let mut scratch = ActionChunk::zeros(horizon, joints);
            for _ in 0..args.repeat {
                let started = Instant::now();
                loaded
                    .policy
                    .infer(&obs, &mut scratch)
                    .map_err(|e| anyhow::anyhow!("inference failed: {e}"))?;
                total.push(started.elapsed().as_secs_f64() * 1e3);
            }
            latency = latency_report(&mut total, None, 0);
        }
        raw = None;
        provider = loaded.provider;
    }
    // As the run executes them: absolute positions (delta / velocity targets
    // resolved against this observation), the gripper last.
    let mut candidates = Candidates {
        batch: rows,
        horizon,
        dim: joints,
        values: actions,
        scores: vec![0.0; rows],
        selected: 0,
        scored: false,
    };
    launch
        .action_targets()
        .apply(&obs, &mut candidates)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let actions = candidates.values;
    if let (Some(path), Some((values, dim))) = (&args.raw_out, &raw) {
        npy::write_f32(path, &[rows, horizon, *dim], values)?;
    }
    let shape = [rows, horizon, joints];
    let nested: Vec<Vec<Vec<f32>>> = actions
        .chunks(horizon * joints)
        .map(|chunk| chunk.chunks(joints).map(<[f32]>::to_vec).collect())
        .collect();
    let report = serde_json::json!({
        "shape": shape,
        "infer_ms": infer_ms,
        "provider": provider,
        "actions": nested,
        "latency": latency,
    });
    match &args.out {
        Some(path) if path.extension().is_some_and(|e| e == "npy") => {
            npy::write_f32(path, &shape, &actions)?;
        }
        Some(path) => std::fs::write(path, serde_json::to_string_pretty(&report)?)?,
        None => println!("{}", serde_json::to_string(&report)?),
    }
    if args.out.is_some() {
        println!(
            "{} chunk(s) of {horizon} x {joints} in {infer_ms:.2} ms on {provider}",
            rows
        );
        if !latency.is_null() {
            println!("latency over {} inferences: {latency}", args.repeat);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The `q` quantile of `v` (nearest rank; sorts `v`, which must not be empty).
pub fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Percentiles of per-inference times (ms); with graph times, the share outside
/// ONNX Runtime.
fn latency_report(
    total: &mut [f64],
    graph: Option<(&mut [f64], &mut [f64])>,
    graph_runs: u32,
) -> serde_json::Value {
    let mut report = serde_json::json!({
        "median_ms": percentile(total, 0.5),
        "p90_ms": percentile(total, 0.9),
        "p99_ms": percentile(total, 0.99),
        "max_ms": percentile(total, 1.0),
    });
    if let Some((graph, overhead)) = graph {
        let graph_median = percentile(graph, 0.5);
        report["onnxruntime_median_ms"] = graph_median.into();
        report["graph_runs_per_inference"] = graph_runs.into();
        // The sampler's own time (noise, binding, updates), preprocessing excluded.
        report["sampler_overhead_percent"] =
            (percentile(overhead, 0.5) / graph_median * 100.0).into();
    }
    report
}

/// Named arrays from an observation file.
pub fn read_arrays(path: &Path) -> anyhow::Result<Vec<(String, NpyArray)>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "npy" => Ok(vec![("joint_positions".into(), npy::read(path)?)]),
        "npz" => {
            let (file, _) = files::open_regular(path, files::MAX_DATA_BYTES)?;
            let mut archive = zip::ZipArchive::new(file)
                .with_context(|| format!("{}: not an .npz archive", path.display()))?;
            let mut arrays = Vec::new();
            for i in 0..archive.len() {
                let mut entry = archive.by_index(i)?;
                let name = entry.name().trim_end_matches(".npy").to_string();
                // The archive's own size claims are not trusted: read at most the cap.
                let mut bytes = Vec::new();
                (&mut entry)
                    .take(files::MAX_DATA_BYTES + 1)
                    .read_to_end(&mut bytes)?;
                if bytes.len() as u64 > files::MAX_DATA_BYTES {
                    bail!(
                        "{}: entry `{name}` is larger than the limit of {}",
                        path.display(),
                        files::human(files::MAX_DATA_BYTES)
                    );
                }
                let array = npy::parse(&bytes)
                    .map_err(|e| anyhow::anyhow!("{}: entry `{name}`: {e}", path.display()))?;
                arrays.push((name, array));
            }
            Ok(arrays)
        }
        "json" => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct JsonObservation {
                joint_positions: Vec<f64>,
                joint_velocities: Option<Vec<f64>>,
                #[serde(default)]
                images: std::collections::BTreeMap<String, PathBuf>,
                /// `<stream>.data` (or `.samples`) -> a .npy file.
                #[serde(default)]
                tensors: std::collections::BTreeMap<String, PathBuf>,
            }
            let text = files::read_to_string(path, files::MAX_DATA_BYTES)?;
            let parsed: JsonObservation = serde_json::from_str(&text)
                .with_context(|| format!("{}: not an observation", path.display()))?;
            let vector = |values: Vec<f64>| NpyArray {
                shape: vec![values.len()],
                data: NpyData::Float(values),
            };
            let mut arrays = vec![(
                "joint_positions".to_string(),
                vector(parsed.joint_positions),
            )];
            if let Some(v) = parsed.joint_velocities {
                arrays.push(("joint_velocities".into(), vector(v)));
            }
            let base = path.parent().unwrap_or(Path::new("."));
            for (camera, file) in parsed.images {
                arrays.push((format!("camera.{camera}"), npy::read(&base.join(file))?));
            }
            for (name, file) in parsed.tensors {
                arrays.push((name, npy::read(&base.join(file))?));
            }
            Ok(arrays)
        }
        _ => bail!(
            "{}: observation files are .json, .npz or .npy",
            path.display()
        ),
    }
}

/// Builds the observation the policy sees from a file.
pub fn read_observation(path: &Path, launch: &Launch, tick: u64) -> anyhow::Result<Observation> {
    let arrays =
        read_arrays(path).with_context(|| format!("cannot read observation {}", path.display()))?;
    observation_from(&arrays, path, launch, tick)
}

/// The observation named arrays describe (`path` names them in errors).
pub fn observation_from(
    arrays: &[(String, NpyArray)],
    path: &Path,
    launch: &Launch,
    tick: u64,
) -> anyhow::Result<Observation> {
    let get = |name: &str| arrays.iter().find(|(n, _)| n == name).map(|(_, a)| a);
    let joints = launch.config.robot.joints.len();
    let mut state = JointState::empty(joints);
    state.seq = 1;
    for (name, target) in [
        ("joint_positions", &mut state.position),
        ("joint_velocities", &mut state.velocity),
    ] {
        let Some(array) = get(name) else {
            if name == "joint_positions" {
                bail!("{}: no `joint_positions`", path.display());
            }
            continue;
        };
        let values = array.to_f64();
        if values.len() != joints {
            bail!(
                "{}: `{name}` has {} values, the robot has {joints} joints",
                path.display(),
                values.len()
            );
        }
        if values.iter().any(|v| !v.is_finite()) {
            bail!("{}: `{name}` has NaN or infinite values", path.display());
        }
        target[..joints].copy_from_slice(&values);
    }
    let optional: Vec<&str> = inputs_of(launch.policy())
        .unwrap_or_default()
        .iter()
        .filter(|i| i.optional)
        .filter_map(|i| match &i.source {
            ObservationSource::Camera(name) => Some(name.as_str()),
            _ => None,
        })
        .collect();
    // An image for a camera no driver declares would never reach the policy (an
    // optional input would quietly see black): say so instead.
    let cameras = launch.camera_names();
    if let Some((name, _)) = arrays.iter().find(|(name, _)| {
        name.strip_prefix("camera.")
            .is_some_and(|camera| !cameras.iter().any(|c| c == camera))
    }) {
        bail!(
            "{}: `{name}` is not a camera of {} (cameras: {}); an input can only see \
             images of cameras a driver declares",
            path.display(),
            launch.origin,
            cameras.join(", ")
        );
    }
    let mut images = Vec::new();
    for camera in launch.camera_names() {
        let Some(array) = get(&format!("camera.{camera}")) else {
            if !optional.contains(&camera.as_str()) {
                bail!(
                    "{}: no image for camera `{camera}` (give `camera.{camera}`, or mark the input optional)",
                    path.display()
                );
            }
            images.push(Image::black(0, 0));
            continue;
        };
        let (NpyData::Uint8(rgb), [height, width, 3]) = (&array.data, array.shape.as_slice())
        else {
            bail!(
                "{}: `camera.{camera}` must be uint8 [H, W, 3], found shape {:?}",
                path.display(),
                array.shape
            );
        };
        images.push(Image {
            seq: 1,
            stamp_ns: 0,
            width: *width,
            height: *height,
            rgb: rgb.clone(),
        });
    }
    // Tensor and audio streams: `<stream>.data` / `<stream>.samples` arrays. One
    // a policy input reads must be there (zeros would be fed silently otherwise).
    let inputs = inputs_of(launch.policy()).unwrap_or_default();
    let mut tensors = Vec::new();
    for stream in launch.streams.iter().filter(|s| s.is_tensor()) {
        let field = match stream.kind {
            StreamKind::Audio { .. } => "samples",
            _ => "data",
        };
        let key = format!("{}.{field}", stream.name);
        let len = stream.kind.values();
        let read = inputs
            .iter()
            .any(|i| matches!(&i.source, ObservationSource::Tensor(n) if *n == stream.name));
        let Some(array) = get(&key) else {
            if read {
                bail!(
                    "{}: no `{key}` for the input that reads stream `{}` (shape {:?})",
                    path.display(),
                    stream.name,
                    stream.kind.shape()
                );
            }
            tensors.push(TensorSample::zeros(len));
            continue;
        };
        let values: Vec<f32> = array.to_f64().iter().map(|v| *v as f32).collect();
        if values.len() != len {
            bail!(
                "{}: `{key}` has {} values, stream `{}` has samples of shape {:?}",
                path.display(),
                values.len(),
                stream.name,
                stream.kind.shape()
            );
        }
        if values.iter().any(|v| !v.is_finite()) {
            bail!("{}: `{key}` has NaN or infinite values", path.display());
        }
        tensors.push(TensorSample {
            seq: 1,
            stamp_ns: 0,
            values,
        });
    }
    Ok(Observation {
        images,
        tensors,
        ..Observation::of_joints(tick, state)
    })
}
