//! `reflex run`: wires the launch file's drivers, policy, bus and recorder into the
//! control loop, runs it on its own thread, and prints the summary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use crate::model_updates::{ChunkShape, ModelUpdates, ModelUpdatesReport};
use anyhow::{Context, bail};
use clap::Args;
use reflex_runtime::clock::{Clock, SimClock, WallClock};
use reflex_runtime::control::{
    ControlError, ControlLoop, OperatorRequests, RunLimits, RunSummary, TickParams, TipKinematics,
};
use reflex_runtime::driver::{DriverContext, Services};
use reflex_runtime::launch::{Launch, RealtimeConfig};
use reflex_runtime::log::{LogHeader, ModelFile, Recorder};
use reflex_runtime::operator::{ControlSocket, OperatorError, TerminalKeys};
use reflex_runtime::policy::InferenceWorker;
use reflex_runtime::prompt::PromptCell;
use reflex_runtime::recording::{EpisodePlan, EpisodePorts, Episodes, ResetParams};
use reflex_runtime::safety::WorkspaceGuard;
use reflex_runtime::slot::latest_slot;
use reflex_runtime::stats::StatusSnapshot;
use reflex_runtime::status::StatusThread;
use reflex_runtime::tare::TareRequests;
use reflex_runtime::types::Observation;
use reflex_zenoh::Bus;
use reflex_zenoh::bus::OperatorListener;

#[derive(Args)]
pub struct RunArgs {
    /// Launch file (default: the embedded launch/sim_arm.toml).
    launch: Option<PathBuf>,
    /// Stop after this many seconds (default: run until Ctrl-C); at most a year.
    #[arg(long, value_parser = parse_duration, allow_negative_numbers = true)]
    duration: Option<f64>,
    /// Seed for every random choice (overrides the launch file's `seed`).
    #[arg(long)]
    seed: Option<u64>,
    /// Simulated clock: ticks advance instantly, inference takes
    /// `control.sim_inference_ticks` ticks; the run is reproducible.
    #[arg(long)]
    sim_clock: bool,
    /// Write a binary log of every tick's inputs and outputs (for `reflex replay`).
    #[arg(long)]
    log: Option<PathBuf>,
    /// Record the run's episodes (`[recording]`) as a LeRobot dataset in this
    /// directory: reset, record, save; keys → success, ↓ failure, ← re-record,
    /// Esc stop (or `reflex episode success|failure|rerecord|stop|start`).
    #[arg(long, value_name = "DIR")]
    record: Option<PathBuf>,
    /// Append episodes to the dataset `--record` names (same features and fps).
    #[arg(long, requires = "record")]
    resume: bool,
    /// Also write the summary as JSON.
    #[arg(long, value_name = "FILE")]
    summary_json: Option<PathBuf>,
    /// Show the run in the Rerun viewer: `spawn` (starts `rerun`), `connect`
    /// (`connect=rerun+http://HOST:9876/proxy`) or `save=FILE.rrd`.
    #[arg(long, value_name = "TARGET")]
    rerun: Option<reflex_viz::Target>,
    /// Override a launch-file field: `--set control.rate_hz=200` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

/// The longest `--duration`, s (a year); longer runs leave it out.
pub const MAX_DURATION_S: f64 = 365.0 * 24.0 * 3600.0;

/// `--duration`: a positive, finite number of seconds up to [`MAX_DURATION_S`]
/// (clap reports anything else as a usage error, exit 2).
pub fn parse_duration(text: &str) -> Result<f64, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if seconds > 0.0 && seconds <= MAX_DURATION_S {
        Ok(seconds)
    } else {
        Err(format!(
            "must be a number of seconds in (0, {MAX_DURATION_S}] (leave it out to run until Ctrl-C), found {text}"
        ))
    }
}

/// Set by SIGINT, SIGTERM, SIGHUP or SIGQUIT: the loop brings the arm to rest,
/// prints the summary and closes the log.
static STOP: AtomicBool = AtomicBool::new(false);
/// The signal that set `STOP` (0 = none yet).
static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// Until the log file is about to be created, a signal ends the process at once:
/// nothing has been commanded, nothing needs closing, and loading a model cannot
/// be interrupted any other way.
static EXIT_ON_SIGNAL: AtomicBool = AtomicBool::new(false);

const STOP_SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

extern "C" fn on_signal(signal: libc::c_int) {
    SIGNAL.store(signal, Ordering::Relaxed);
    STOP.store(true, Ordering::Relaxed);
    if EXIT_ON_SIGNAL.load(Ordering::Relaxed) {
        let message = b"reflex: signal during start-up: exiting before the first command\n";
        // SAFETY: write(2) and _exit(2) are async-signal-safe.
        unsafe {
            libc::write(2, message.as_ptr().cast(), message.len());
            libc::_exit(128 + signal);
        }
    }
}

/// Installed before anything slow (model load, waiting for the robot).
fn install_signal_handlers() {
    EXIT_ON_SIGNAL.store(true, Ordering::SeqCst);
    for signal in STOP_SIGNALS {
        // SAFETY: the handler only touches atomics and calls async-signal-safe functions.
        unsafe {
            libc::signal(signal, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// The log (if any) is about to be created: from now on a signal sets `STOP`, and
/// the loop, or its wait for the first joint state, ends and closes the log.
fn signals_stop_the_loop() {
    EXIT_ON_SIGNAL.store(false, Ordering::SeqCst);
}

fn signal_name(signal: libc::c_int) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        libc::SIGQUIT => "SIGQUIT",
        _ => "a signal",
    }
}

/// How a loop is assembled beyond what the launch file says.
pub struct Assembly<'a> {
    pub simulated: bool,
    pub log: Option<&'a Path>,
    /// `--record DIR` and `--resume`.
    pub record: Option<(&'a Path, bool)>,
    /// The model files the run loads, hashed (for the log header).
    pub models: &'a [ModelFile],
    /// `--rerun`: where the live view goes.
    pub rerun: Option<&'a reflex_viz::Target>,
}

/// Every model file the launch file names, with its SHA-256 (read in blocks:
/// a large model is hashed without holding it twice).
pub fn model_files(launch: &Launch) -> anyhow::Result<Vec<ModelFile>> {
    use sha2::{Digest, Sha256};
    launch
        .model_files()
        .into_iter()
        .map(|(field, path)| {
            let mut file = std::fs::File::open(&path)
                .with_context(|| format!("{field}: cannot open {}", path.display()))?;
            let mut hasher = Sha256::new();
            let bytes = std::io::copy(&mut file, &mut hasher)
                .with_context(|| format!("{field}: cannot read {}", path.display()))?;
            let sha256 = hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            Ok(ModelFile {
                field,
                path: path.display().to_string(),
                sha256,
                bytes,
            })
        })
        .collect()
}

/// A control loop wired from a launch file, with the services that outlive it.
pub struct Assembled {
    pub control: ControlLoop,
    pub bus: Option<Bus>,
    pub status: StatusThread,
    pub operator: Option<OperatorListener>,
    pub socket: Option<ControlSocket>,
    pub keys: Option<TerminalKeys>,
    pub dataset: Option<reflex_dataset::DatasetRecorder>,
    /// `[zenoh] model_updates`: pushed models, loaded off the loop.
    pub models: Option<crate::model_updates::ModelUpdates>,
    /// `--rerun`, flushed at the end.
    pub viewer: Option<reflex_viz::Viewer>,
    /// Whether the recorder writes a file (it may only feed the viewer).
    pub log_file: bool,
}

impl Assembled {
    /// Runs the loop on its own thread (with the launch file's real-time settings)
    /// and shuts the services down afterwards.
    pub fn run(
        self,
        realtime: RealtimeConfig,
        limits: RunLimits,
    ) -> anyhow::Result<(RunSummary, Option<ModelUpdatesReport>)> {
        let Self {
            control,
            bus,
            status,
            operator,
            socket,
            keys,
            dataset,
            models,
            viewer,
            log_file,
        } = self;
        // The loop owns its mailboxes; keep handles to read their drop counts after.
        let arm_commands = control.arm.commands.clone();
        let bad_messages = control.arm.bad_messages.clone();
        let tap = control
            .tap
            .as_ref()
            .map(|t| (t.commands.clone(), t.states.clone()));
        let result = std::thread::Builder::new()
            .name("reflex-control".into())
            .spawn(move || {
                for warning in reflex_runtime::realtime::apply(&realtime) {
                    tracing::warn!("{warning}");
                    eprintln!("reflex: warning: {warning}");
                }
                control.run(limits)
            })?
            .join();
        drop(keys);
        // Also when the loop ended in an error (a signal before the first state).
        status.finish();
        drop(socket);
        drop(operator);
        let models = models.map(crate::model_updates::ModelUpdates::finish);
        // The loop sent every episode's end: the recorder finishes its last save,
        // whose transitions still go out on the bus.
        let recorded = dataset.map(reflex_dataset::DatasetRecorder::finish);
        if let Some(bus) = bus {
            bus.close();
        }
        if let Some(viewer) = viewer {
            viewer.flush();
        }
        let mut summary = result.map_err(|_| anyhow::anyhow!("control thread panicked"))??;
        if !log_file {
            summary.log = None;
        }
        if let Some(recorded) = recorded {
            let rows_lost = summary.episodes.as_ref().map_or(0, |e| e.rows_lost);
            summary.episodes = Some(reflex_runtime::recording::EpisodesReport {
                rows_lost,
                ..recorded
            });
        }
        summary.stats.dropped_commands = arm_commands.dropped();
        summary.stats.dropped_bus_messages = tap.map_or(0, |(c, s)| c.dropped() + s.dropped());
        summary.stats.bad_robot_messages = bad_messages.load(Ordering::Relaxed);
        Ok((summary, models))
    }
}

/// Loads the policy, opens the bus and the drivers, and wires the loop.
pub fn assemble(launch: &Launch, how: &Assembly<'_>) -> anyhow::Result<Assembled> {
    let c = &launch.config;
    let joints = c.robot.joints.len();
    let policy = crate::load_policy(launch)?;
    eprintln!(
        "reflex: {} with {} ({} on {}; warm-up {:.2} ms/inference), {} clock",
        launch.origin,
        policy.model_path.display(),
        policy.library_path.display(),
        policy.provider,
        policy.warm_up_ms,
        if how.simulated { "simulated" } else { "wall" }
    );

    let zenoh = reflex_zenoh::config(launch);
    let bus = if zenoh.enabled {
        let bus = Bus::open(&zenoh, &launch.base_dir, &c.robot.name)?;
        eprintln!(
            "reflex: zenoh {:?} on {:?}, keys {}",
            zenoh.mode,
            zenoh.listen,
            bus.key("*")
        );
        Some(bus)
    } else {
        None
    };
    let mut services = Services::default();
    if let Some(bus) = &bus {
        services.insert(bus.session());
    }
    // Drivers of tactile sensors watch these; `reflex tare` asks through the socket.
    let tare = TareRequests::new(launch.sensor_names());
    services.insert(tare.clone());

    let mut drivers = launch
        .drivers
        .iter()
        .map(|spec| spec.build(launch))
        .collect::<Result<Vec<_>, _>>()?;
    let ctx = DriverContext {
        simulated: how.simulated,
        seed: c.seed,
        joints,
        gripper: c.robot.gripper.clone(),
        robot: c.robot.name.clone(),
        services,
    };
    let mut arm = None;
    let (mut cameras, mut tensors, mut texts) = (Vec::new(), Vec::new(), Vec::new());
    let mut counters = Vec::new();
    let mut teleop = Vec::new();
    for driver in &mut drivers {
        let ports = driver.open(&ctx)?;
        if ports.arm.is_some() {
            arm = ports.arm;
        }
        cameras.extend(ports.cameras);
        tensors.extend(ports.tensors);
        texts.extend(ports.texts);
        teleop.extend(ports.teleop);
        counters.extend(ports.counters);
    }
    let Some(arm) = arm else {
        bail!("the launch file has no arm driver")
    };
    let camera_order = launch.camera_names();
    cameras.sort_by_key(|c| camera_order.iter().position(|n| *n == c.name));
    let tensor_order = launch.tensor_names();
    tensors.sort_by_key(|t| tensor_order.iter().position(|n| *n == t.name));
    // Policies see the streams the launch file checked, in its order: a driver that
    // opened other ports than it declared is a bug to report, not to feed.
    let opened: Vec<&str> = cameras
        .iter()
        .map(|c| c.name.as_str())
        .chain(tensors.iter().map(|t| t.name.as_str()))
        .collect();
    let declared = launch.sensor_names();
    if opened != declared.iter().map(String::as_str).collect::<Vec<_>>() {
        bail!("the drivers opened the streams {opened:?}, but declared {declared:?}");
    }
    for driver in &mut drivers {
        driver.start()?;
    }

    let tap = match &bus {
        Some(bus) if !arm.publishes_itself => Some(bus.spawn_mirror(zenoh.command_format)?),
        _ => None,
    };
    let (status_writer, status_reader) = latest_slot(&StatusSnapshot::default());
    let status = match &bus {
        Some(bus) => bus.spawn_status(status_reader, zenoh.status_hz)?,
        None => StatusThread::spawn(status_reader, 10.0, None)?,
    };

    // The instruction: the text stream `[task] source` names when there is one
    // (its driver replaces the launch file's instruction with each text it gets),
    // else a cell of its own; `reflex prompt` writes to the same cell.
    let prompt = match launch.task_stream() {
        Some(name) => {
            let Some(port) = texts.iter().find(|t| t.name == name) else {
                bail!("no driver opened the text stream `{name}` that [task] source names");
            };
            if !c.task.instruction.is_empty() {
                port.text.set(&c.task.instruction)?;
            }
            port.text.clone()
        }
        None => PromptCell::new(&c.task.instruction),
    };
    let requests = OperatorRequests {
        prompt,
        tare,
        ..OperatorRequests::default()
    };
    let operator = bus
        .as_ref()
        .map(|bus| bus.listen_for_operator(requests.clone(), c.safety.operator.zenoh_rearm))
        .transpose()?;
    // Re-arm and resume from this machine: the control socket, and the terminal.
    let socket = match ControlSocket::bind(&c.robot.name, requests.clone()) {
        Ok(socket) => Some(socket),
        Err(e @ OperatorError::InUse { .. }) => {
            eprintln!(
                "reflex: warning: {e}; this run takes re-arm and resume from its terminal only"
            );
            None
        }
        Err(e) => return Err(e.into()),
    };
    let keys = (c.safety.operator.terminal_keys && !how.simulated)
        .then(|| TerminalKeys::start(requests.clone()));
    let (episodes, dataset) = match how.record {
        Some((root, resume)) => {
            let (episodes, dataset) =
                recording(launch, &cameras, root, resume, &requests, bus.as_ref())?;
            (Some(episodes), Some(dataset))
        }
        None => (None, None),
    };

    let observation_frames = launch.policy().history();
    let horizon = policy.policy.horizon();
    let template = Observation::blank(
        joints,
        &cameras
            .iter()
            .map(|cam| (cam.width, cam.height))
            .collect::<Vec<_>>(),
        &tensors.iter().map(|t| t.len).collect::<Vec<_>>(),
        observation_frames,
        horizon * launch.action_width(),
    );
    let stages = launch.chunk_stages().map_err(|e| anyhow::anyhow!("{e}"))?;
    let shape = ChunkShape {
        horizon,
        action_dim: policy.policy.action_dim(),
        candidates: policy.policy.candidates().max(1),
    };
    let viewer = match how.rerun {
        Some(target) => Some(
            reflex_viz::Viewer::open(
                target,
                &c.robot.name,
                reflex_viz::RunShape {
                    joints: c.robot.joints.iter().map(|j| j.name.clone()).collect(),
                    cameras: cameras.iter().map(|cam| cam.name.clone()).collect(),
                    rate_hz: c.control.rate_hz,
                    ticks_per_action: c.control.rate_hz / c.execution.action_rate_hz,
                },
            )
            .map_err(|e| anyhow::anyhow!("--rerun: {e}"))?,
        ),
        None => None,
    };
    // The viewer sees what the policy sees, on the inference thread.
    let policy_to_run: Box<dyn reflex_runtime::policy::Policy> = match &viewer {
        Some(viewer) => Box::new(reflex_viz::Viewed {
            inner: policy.policy,
            viewer: viewer.clone(),
        }),
        None => policy.policy,
    };
    let worker = InferenceWorker::spawn(
        policy_to_run,
        &template,
        requests.prompt.clone(),
        stages,
        requests.steering.clone(),
    )?;
    let models = match &bus {
        Some(bus) if zenoh.model_updates => {
            let key = bus.key(&format!("models/{}", crate::model_updates::POLICY));
            let updates = ModelUpdates::start(
                &bus.session(),
                &key,
                launch,
                shape,
                worker.swaps(),
                zenoh.max_model_bytes,
            )?;
            eprintln!(
                "reflex: accepting policy models on {key} (at most {} bytes)",
                zenoh.max_model_bytes
            );
            Some(updates)
        }
        _ => None,
    };
    let params = TickParams {
        joints: c.robot.joints.clone(),
        rate_hz: c.control.rate_hz,
        max_state_age_ms: c.control.max_state_age_ms,
        estop_after_stale_ms: c.safety.estop_after_stale_ms,
        horizon,
        action_rate_hz: c.execution.action_rate_hz,
        replan_after: c.execution.replan_after.min(horizon),
        interpolation: c.execution.interpolation,
        safety: c.safety.clone(),
        workspace: match (&launch.robot_model, launch.workspace) {
            (Some(model), Some(bounds)) => Some(WorkspaceGuard {
                chain: std::sync::Arc::new(model.chain.clone()),
                bounds,
            }),
            _ => None,
        },
        executor: launch.executor(),
        gripper: c.robot.gripper.clone(),
        reset: episodes.as_ref().and_then(|e| e.plan.reset.clone()),
        tip: launch.robot_model.as_ref().map(|model| TipKinematics {
            chain: std::sync::Arc::new(model.chain.clone()),
            tip: model.tip,
        }),
    };
    signals_stop_the_loop();
    let recorder = match (how.log, &viewer) {
        (None, None) => None,
        (path, viewer) => {
            let header = LogHeader {
                reflex_version: env!("CARGO_PKG_VERSION").into(),
                clock: if how.simulated { "sim" } else { "wall" }.into(),
                seed: c.seed,
                rate_hz: params.rate_hz,
                joints: params.joints.clone(),
                max_state_age_ms: params.max_state_age_ms,
                estop_after_stale_ms: params.estop_after_stale_ms,
                horizon: params.horizon,
                action_rate_hz: params.action_rate_hz,
                replan_after: params.replan_after,
                interpolation: params.interpolation,
                strategy: params.executor.strategy.clone(),
                strategy_params: params.executor.params.clone(),
                safety: params.safety.clone(),
                // Replay rebuilds the workspace box from the URDF the run used.
                urdf: match &c.robot.urdf {
                    // Replay rebuilds the workspace box and the teleop IK from it.
                    Some(path) if params.workspace.is_some() || params.tip.is_some() => Some(
                        reflex_runtime::files::read_to_string(
                            &launch.resolve(path),
                            reflex_runtime::files::MAX_CONFIG_BYTES * 16,
                        )
                        .with_context(|| format!("cannot read {}", path.display()))?,
                    ),
                    _ => None,
                },
                tip_link: c.robot.tip_link.clone(),
                gripper: params.gripper.clone(),
                reset: params.reset.clone(),
                launch: launch.text.clone(),
                models: how.models.to_vec(),
            };
            let free = worker.free_chunks.clone();
            let created = match viewer {
                None => path.map(|path| Recorder::create(path, &header, free)),
                Some(viewer) => {
                    let viewer = viewer.clone();
                    let observer = Box::new(move |record: &_| viewer.record(record));
                    Some(Recorder::create_observed(path, &header, free, observer))
                }
            };
            Some(
                created
                    .transpose()
                    .with_context(|| match path {
                        Some(path) => format!("cannot create log {}", path.display()),
                        None => "cannot start the viewer's recorder".into(),
                    })?
                    .unwrap_or_else(|| unreachable!("a log or a viewer")),
            )
        }
    };

    let period = Duration::from_secs_f64(1.0 / c.control.rate_hz);
    let clock: Box<dyn Clock> = if how.simulated {
        Box::new(SimClock::new(period))
    } else {
        Box::new(WallClock::new(
            period,
            Duration::from_micros(c.control.spin_us),
        ))
    };
    let control = ControlLoop {
        params,
        clock,
        drivers,
        arm,
        cameras,
        tensors,
        worker,
        tap,
        recorder,
        status: Some(status_writer),
        operator: requests,
        sim_inference_ticks: c.control.sim_inference_ticks,
        delay: reflex_runtime::delay::DelayEstimate::new(
            c.execution.delay_window,
            c.execution.delay_percentile,
        ),
        observation_frames,
        source_counters: (launch.sensor_names().iter())
            .map(|name| {
                (counters.iter())
                    .find(|(stream, _)| stream == name)
                    .map(|(_, c)| Arc::clone(c))
            })
            .collect(),
        stream_watches: launch.stream_watches(),
        startup_timeout: Duration::from_secs_f64(c.control.startup_timeout_ms / 1e3),
        heartbeat_timeout: c
            .safety
            .operator
            .heartbeat_ms
            .map(|ms| Duration::from_secs_f64(ms / 1e3)),
        episodes,
        teleop,
    };
    Ok(Assembled {
        control,
        bus,
        status,
        operator,
        socket,
        keys,
        dataset,
        models,
        viewer,
        log_file: how.log.is_some(),
    })
}

/// `--record`: the dataset (created, or reopened with `resume`), its recorder
/// thread, and the tick's episode plan.
fn recording(
    launch: &Launch,
    cameras: &[reflex_runtime::driver::CameraPort],
    root: &Path,
    resume: bool,
    requests: &OperatorRequests,
    bus: Option<&Bus>,
) -> anyhow::Result<(Episodes, reflex_dataset::DatasetRecorder)> {
    let c = &launch.config;
    let rec = c.recording.clone().unwrap_or_default();
    let fps = launch.recording_fps();
    let names = launch.camera_names();
    let recorded: Vec<usize> = match &rec.cameras {
        Some(wanted) => wanted
            .iter()
            .filter_map(|w| names.iter().position(|n| n == w))
            .collect(),
        None => (0..cameras.len()).collect(),
    };
    let mut joint_names: Vec<String> = c.robot.joints.iter().map(|j| j.name.clone()).collect();
    if c.robot.gripper.is_some() {
        joint_names.push("gripper".into());
    }
    let layout = reflex_dataset::RowLayout {
        names: joint_names,
        cameras: recorded
            .iter()
            .map(|&i| (names[i].clone(), cameras[i].width, cameras[i].height))
            .collect(),
        video: rec.video,
    };
    let spec = layout.spec(fps, &c.robot.name);
    let writer = reflex_dataset::open_dataset(root, spec, resume)
        .with_context(|| format!("cannot record into {}", root.display()))?;
    let first_episode = writer.episodes();
    eprintln!(
        "reflex: recording episodes into {} at {fps} fps (LeRobotDataset v3.0; {} episodes there)",
        root.display(),
        first_episode
    );
    let sizes: Vec<(usize, usize)> = recorded
        .iter()
        .map(|&i| (cameras[i].width, cameras[i].height))
        .collect();
    // Two seconds of rows in flight before the tick has to drop one.
    let ports = EpisodePorts::new(2 * fps as usize + 8, &sizes);
    let task = match &rec.task {
        Some(task) => reflex_dataset::TaskSource::Fixed(task.clone()),
        None => reflex_dataset::TaskSource::Prompt(requests.prompt.clone()),
    };
    let rewards = reflex_dataset::Rewards {
        source: rec.reward,
        classifier: if rec.reward.uses_classifier() {
            let classifier = reflex_policies::reward::OnnxRewardClassifier::load(launch, &recorded)
                .context("[reward_classifier]")?;
            eprintln!(
                "reflex: rewards from the success classifier (probability > {}){}",
                classifier.threshold,
                if rec.terminate_on_success {
                    ", which ends the episode"
                } else {
                    ""
                }
            );
            Some(Box::new(classifier))
        } else {
            None
        },
        terminate_on_success: rec.terminate_on_success,
        requests: requests.episodes.clone(),
    };
    let transitions = match bus {
        Some(bus) if rec.transitions => {
            let key = bus.key("transitions");
            eprintln!("reflex: transitions for a learner on {key}");
            Some(Box::new(crate::transitions::ZenohTransitions::new(
                bus.session(),
                key,
                &c.robot.name,
            )) as Box<dyn reflex_dataset::TransitionSink>)
        }
        _ => None,
    };
    let dataset =
        reflex_dataset::DatasetRecorder::spawn(writer, ports.clone(), task, rewards, transitions)?;
    let ticks = |s: f64| (s * c.control.rate_hz).round() as u64;
    let plan = EpisodePlan {
        ticks_per_row: c.control.rate_hz / f64::from(fps),
        episode_ticks: ticks(rec.episode_time_s).max(1),
        reset_ticks: ticks(rec.reset_time_s),
        episodes: rec.episodes,
        start: rec.start,
        cameras: recorded,
        reset: rec.reset.map(|r| ResetParams {
            joint_positions: r.joint_positions,
            speed: r.speed,
        }),
    };
    Ok((
        Episodes::new(plan, ports, requests.episodes.clone(), first_episode),
        dataset,
    ))
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut overrides = args.overrides.clone();
    if let Some(seed) = args.seed {
        overrides.push(format!("seed={seed}"));
    }
    install_signal_handlers();
    let launch = crate::load_launch(args.launch.as_ref(), &overrides)?;
    // Which model versions produced the run, for its log and its summary.
    let models = match args.log.is_some() || args.summary_json.is_some() {
        true => model_files(&launch)?,
        false => Vec::new(),
    };
    let assembled = assemble(
        &launch,
        &Assembly {
            simulated: args.sim_clock,
            log: args.log.as_deref(),
            record: args.record.as_deref().map(|root| (root, args.resume)),
            models: &models,
            rerun: args.rerun.as_ref(),
        },
    )?;
    let limits = RunLimits {
        // parse_duration keeps it finite and positive, so this cannot panic.
        duration: args
            .duration
            .and_then(|s| Duration::try_from_secs_f64(s).ok()),
        stop: &STOP,
    };
    let (summary, model_updates) =
        match assembled.run(launch.config.control.realtime.clone(), limits) {
            Ok(finished) => finished,
            Err(e)
                if matches!(
                    e.downcast_ref::<ControlError>(),
                    Some(ControlError::StoppedBeforeFirstState)
                ) =>
            {
                let signal = SIGNAL.load(Ordering::Relaxed);
                eprintln!(
                    "reflex: {} while waiting for the first joint state: stopped before the \
                 first command{}",
                    signal_name(signal),
                    match &args.log {
                        Some(path) => format!("; log {} closed", path.display()),
                        None => String::new(),
                    }
                );
                return Ok(ExitCode::from((128 + signal).clamp(0, 255) as u8));
            }
            Err(e) => return Err(e),
        };
    let report = crate::summary::Report::new(
        &launch.origin,
        args.log.as_deref(),
        &summary,
        launch.config.control.rate_hz,
    )
    .with_model_updates(model_updates.as_ref())
    .with_model_files(&models);
    // The terminal may be gone (SIGHUP): the log is already closed, so a failed
    // write must not turn into a panic.
    let _ = write!(std::io::stdout(), "{}", report.table());
    if let Some(path) = &args.summary_json {
        std::fs::write(path, serde_json::to_vec_pretty(&report.json())?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let log_failed = summary.log.as_ref().is_some_and(|l| l.error.is_some())
        || (summary.episodes.as_ref()).is_some_and(|e| e.error.is_some());
    Ok(if log_failed || summary.fault.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_finite_positive_and_bounded() {
        assert_eq!(parse_duration("2.5"), Ok(2.5));
        for bad in ["nan", "inf", "-inf", "1e300", "-1", "0", "", "two"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        // Every accepted value converts without panicking.
        let max = parse_duration(&MAX_DURATION_S.to_string()).unwrap();
        assert!(Duration::try_from_secs_f64(max).is_ok());
    }
}
