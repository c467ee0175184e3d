//! `reflex`: run, check and replay robot policies from a launch file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use reflex_runtime::stream::StreamKind;

/// The system allocator, counting each thread's allocations (for the summary's
/// allocations per tick; see `reflex_runtime::alloc_probe`).
#[cfg(feature = "count-allocations")]
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    pub struct Counting;

    thread_local! {
        static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    }

    fn count() {
        // try_with: a thread being torn down still allocates.
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }

    pub fn on_this_thread() -> u64 {
        ALLOCATIONS.try_with(Cell::get).unwrap_or(0)
    }

    // SAFETY: forwards every call to the system allocator unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count();
            // SAFETY: the caller's contract is passed on as is.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: as above.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count();
            // SAFETY: as above.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }
}

#[cfg(feature = "count-allocations")]
#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

#[derive(Parser)]
#[command(
    name = "reflex",
    version,
    about = "Real-time robot control runtime for ONNX policies"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a launch file (default: the embedded simulated-arm demo).
    Run(reflex::run::RunArgs),
    /// Validate a launch file and its model's signature.
    Check {
        /// Launch file (default: the embedded launch/sim_arm.toml).
        launch: Option<PathBuf>,
        /// Override a field: `--set control.rate_hz=200`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Re-execute a run log and check every command bit for bit. Exit status 0:
    /// every command matches (a truncated log replays what it holds); 1: a
    /// difference, a corrupt frame or no ticks; 2: the log cannot be read.
    Replay {
        log: PathBuf,
        /// Also write every replayed tick as CSV: tick, time, then per joint the
        /// measured position, the target before the safety filter and the command.
        #[arg(long, value_name = "OUT.csv")]
        trace: Option<PathBuf>,
    },
    /// Record scripted demonstrations on the simulated arm (training data).
    Demos(reflex::demos::DemoArgs),
    /// Convert a run log for other tools: `--mcap OUT.mcap` (Foxglove, PlotJuggler).
    Export(reflex::export::ExportArgs),
    /// Print a model's inputs, outputs, IR version and opsets, and a launch-file snippet.
    Inspect {
        model: PathBuf,
        /// libonnxruntime.so to use (default: searched as for `run`).
        #[arg(long)]
        onnxruntime: Option<PathBuf>,
    },
    /// FAST action tokens: fit a tokenizer, encode and decode chunks (JSON).
    #[command(subcommand)]
    Fast(reflex::fast_cli::FastCommand),
    /// Run one inference offline on a saved observation and write the chunk.
    Infer(reflex::infer::InferArgs),
    /// Serve the launch file's policy to other machines (openpi's websocket
    /// protocol; `[serve]` says where and how).
    Serve(reflex::serve::ServeArgs),
    /// Calibration from recorded runs (normalization statistics).
    #[command(subcommand)]
    Calibrate(reflex::calibrate::CalibrateCommand),
    /// Print the JSON schema of launch files.
    Schema,
    /// Stop the arm of a run on this machine (a controlled stop that latches).
    Estop(OperatorArgs),
    /// Move a latched stop of a run on this machine to hold (the arm stays still).
    Rearm(OperatorArgs),
    /// Let a held run on this machine move again.
    Resume(OperatorArgs),
    /// Send one operator heartbeat (for `safety.operator.heartbeat_ms`).
    Heartbeat(OperatorArgs),
    /// Change the task instruction of a run on this machine (policies with a prompt input).
    Prompt(PromptArgs),
    /// End, re-record or start an episode of a run recording on this machine
    /// (`reflex run --record DIR`).
    Episode(EpisodeArgs),
    /// Switch steering of a run on this machine on or off: `vgps` (ranking
    /// stages) or `dsrl` (the latent-noise policy), from its next inference.
    Steer(SteerArgs),
    /// Tare the tactile sensors of a run on this machine: a new reference frame
    /// for camera-based sensors, a new bias for taxel arrays (all, or one stream).
    Tare(TareArgs),
}

#[derive(clap::Args)]
struct TareArgs {
    /// The robot's name (`robot.name` in the launch file).
    #[arg(long, default_value = "sim_arm")]
    robot: String,
    /// The stream to tare (default: every stream that tares).
    stream: Option<String>,
}

#[derive(clap::Args)]
struct EpisodeArgs {
    /// The robot's name (`robot.name` in the launch file).
    #[arg(long, default_value = "sim_arm")]
    robot: String,
    /// `success` (reward 1, saved), `failure` (saved), `rerecord` (dropped and
    /// done again), `stop` (saved, recording ends) or `start` (the next episode,
    /// with `[recording] start = "key"`).
    #[arg(value_parser = ["success", "failure", "rerecord", "stop", "start"])]
    request: String,
}

#[derive(clap::Args)]
struct SteerArgs {
    /// The robot's name (`robot.name` in the launch file).
    #[arg(long, default_value = "sim_arm")]
    robot: String,
    #[arg(value_parser = ["vgps", "dsrl"])]
    method: String,
    #[arg(value_parser = ["on", "off"])]
    state: String,
}

#[derive(clap::Args)]
struct PromptArgs {
    /// The robot's name (`robot.name` in the launch file).
    #[arg(long, default_value = "sim_arm")]
    robot: String,
    /// The new instruction (the words are joined with spaces).
    #[arg(required = true)]
    instruction: Vec<String>,
}

#[derive(clap::Args)]
struct OperatorArgs {
    /// The robot's name (`robot.name` in the launch file).
    #[arg(long, default_value = "sim_arm")]
    robot: String,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REFLEX_LOG")
                .unwrap_or_else(|_| "warn,zenoh=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    #[cfg(feature = "count-allocations")]
    reflex_runtime::alloc_probe::register(counting::on_this_thread);
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => reflex::run::run(args),
        Command::Check { launch, overrides } => check(launch, &overrides),
        Command::Replay { log, trace } => replay(&log, trace.as_deref()),
        Command::Demos(args) => reflex::demos::record(args).map(|()| ExitCode::SUCCESS),
        Command::Export(args) => reflex::export::export(args).map(|()| ExitCode::SUCCESS),
        Command::Fast(command) => reflex::fast_cli::run(command),
        Command::Infer(args) => reflex::infer::run(args),
        Command::Serve(args) => reflex::serve::run(args),
        Command::Calibrate(command) => reflex::calibrate::run(command),
        Command::Inspect { model, onnxruntime } => {
            reflex_policies::inspect::inspect(&model, onnxruntime.as_deref())
                .map(|report| {
                    print!("{}", report.render(&model));
                    ExitCode::SUCCESS
                })
                .map_err(anyhow::Error::new)
        }
        Command::Estop(a) => operator(&a.robot, "estop"),
        Command::Rearm(a) => operator(&a.robot, "rearm"),
        Command::Resume(a) => operator(&a.robot, "resume"),
        Command::Heartbeat(a) => operator(&a.robot, "heartbeat"),
        Command::Tare(a) => match a.stream {
            Some(stream) if stream.contains(['\n', '\r']) => {
                Err(anyhow::anyhow!("the stream name must be one line"))
            }
            Some(stream) => operator(&a.robot, &format!("tare {stream}")),
            None => operator(&a.robot, "tare"),
        },
        Command::Prompt(a) => {
            let text = a.instruction.join(" ");
            if text.contains(['\n', '\r']) {
                Err(anyhow::anyhow!("the instruction must be one line"))
            } else {
                operator(&a.robot, &format!("prompt {text}"))
            }
        }
        Command::Episode(a) => operator(&a.robot, &format!("episode {}", a.request)),
        Command::Steer(a) => operator(&a.robot, &format!("steer {} {}", a.method, a.state)),
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&reflex_runtime::launch::json_schema_with(
                    &reflex::registry()
                ))
                .unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Sends an operator request to the local run's control socket.
fn operator(robot: &str, request: &str) -> anyhow::Result<ExitCode> {
    let answer = reflex_runtime::operator::send(robot, request)?;
    println!("{request}: {answer}");
    Ok(if answer == "ok" || answer.starts_with("ok: ") {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn check(path: Option<PathBuf>, overrides: &[String]) -> anyhow::Result<ExitCode> {
    let launch = reflex::load_launch(path.as_ref(), overrides)?;
    let policy = reflex::load_policy(&launch)?;
    // The chunk stages load their models (a V-GPS value model) as `reflex run` does.
    launch.chunk_stages().map_err(|e| anyhow::anyhow!("{e}"))?;
    let c = &launch.config;
    let zenoh = reflex_zenoh::config(&launch);
    println!("{}: OK", launch.origin);
    println!(
        "  robot      {} ({} joints) at {} Hz",
        c.robot.name,
        c.robot.joints.len(),
        c.control.rate_hz
    );
    if let Some(model) = &launch.robot_model {
        println!(
            "  urdf       {} (robot `{}`, chain to `{}`; {})",
            c.robot
                .urdf
                .as_ref()
                .map(|p| launch.resolve(p).display().to_string())
                .unwrap_or_default(),
            model.name,
            model.chain.link_name(model.tip),
            c.robot
                .joints
                .iter()
                .map(|j| j.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(ws) = &c.safety.workspace {
        println!(
            "  workspace  link `{}` inside {:?} .. {:?} m",
            ws.link, ws.min, ws.max
        );
    }
    println!(
        "  drivers    {}",
        launch
            .drivers
            .iter()
            .map(|d| format!("{} `{}`", d.kind(), d.name()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let watches = launch.stream_watches();
    println!(
        "  streams    {}",
        launch
            .streams
            .iter()
            .map(|s| {
                let what = match &s.kind {
                    StreamKind::JointState { joints } => {
                        return format!("{} (joint state, {joints} joints)", s.name);
                    }
                    StreamKind::Text => return format!("{} (text)", s.name),
                    StreamKind::Image { width, height } => format!("image {width}x{height}"),
                    StreamKind::Tensor { shape } => format!("tensor {shape:?}"),
                    StreamKind::Audio {
                        frames,
                        channels,
                        sample_rate_hz,
                    } => {
                        format!("audio {channels} ch at {sample_rate_hz} Hz in chunks of {frames}")
                    }
                };
                let watch = watches.iter().find(|w| w.name == s.name);
                let driver = (launch.drivers.iter())
                    .find(|d| d.streams().iter().any(|d| d.name == s.name))
                    .map(|d| {
                        let source = d.source(&launch).map(|s| format!(": {s}"));
                        format!(
                            ", from {} `{}`{}",
                            d.kind(),
                            d.name(),
                            source.unwrap_or_default()
                        )
                    });
                format!(
                    "{} ({what}{}{}; stale after {} ms: {}{})",
                    s.name,
                    s.rate_hz
                        .map(|hz| format!(" at {hz} Hz"))
                        .unwrap_or_default(),
                    driver.unwrap_or_default(),
                    watch.map_or(0, |w| w.max_age_ns / 1_000_000),
                    watch.map_or("?", |w| w.on_stale.verb()),
                    if watch.is_some_and(|w| w.masked) {
                        ", masked for the whole run"
                    } else {
                        ""
                    }
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    let executor = launch.executor();
    println!(
        "  execution  {} {} at {} Hz actions ({} targets{}), replan after {}{}",
        executor.strategy,
        executor.params,
        c.execution.action_rate_hz,
        c.execution.target.name(),
        c.robot.gripper.as_ref().map_or(String::new(), |g| format!(
            " + gripper ({}, column {}, range {:?}, max {}/s)",
            format!("{:?}", g.mode).to_lowercase(),
            g.column(c.robot.joints.len()),
            g.range,
            g.max_speed
        )),
        c.execution.replan_after,
        if launch.stage_specs.is_empty() {
            String::new()
        } else {
            format!(
                "; stages {}",
                launch
                    .stage_specs
                    .iter()
                    .map(|s| s.kind())
                    .collect::<Vec<_>>()
                    .join(" -> ")
            )
        }
    );
    if !c.task.instruction.is_empty() {
        println!("  task       {:?}", c.task.instruction);
    }
    println!(
        "  policy     {} {} (signature matches)",
        launch.policy().kind(),
        policy.model_path.display()
    );
    println!(
        "  onnxruntime {} ({} execution provider, warm-up {:.1} ms)",
        policy.library_path.display(),
        policy.provider,
        policy.warm_up_ms
    );
    println!(
        "  zenoh      {}",
        if zenoh.enabled {
            format!("{:?} listening on {:?}", zenoh.mode, zenoh.listen)
        } else {
            "off".into()
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// Replays a log as it is read, so a long log needs no more memory than a short one.
/// A truncated log (a killed run) replays every whole record; re-execution stops
/// at the first corrupt frame, since the tick's state cannot be rebuilt across a gap.
fn replay(path: &Path, trace: Option<&Path>) -> anyhow::Result<ExitCode> {
    let mut reader = reflex_runtime::log::open_log(path)
        .with_context(|| format!("cannot read log {}", path.display()))?;
    let header = reader.header().clone();
    let mut after_gap = 0u64;
    let report = {
        let reader = &mut reader;
        let after_gap = &mut after_gap;
        let records = std::iter::from_fn(move || {
            let record = reader.next_record()?;
            if reader.report().corrupt_count == 0 {
                Some(record)
            } else {
                *after_gap += 1;
                None
            }
        });
        let joints = header.joints.len();
        let mut csv = match trace {
            None => None,
            Some(out) => {
                let file = std::fs::File::create(out)
                    .with_context(|| format!("cannot write {}", out.display()))?;
                let mut csv = std::io::BufWriter::new(file);
                let mut columns = vec!["tick".to_string(), "time_s".to_string()];
                for kind in ["measured", "target", "command"] {
                    columns.extend(header.joints.iter().map(|j| format!("{kind}.{}", j.name)));
                }
                writeln!(csv, "{}", columns.join(","))?;
                Some(csv)
            }
        };
        let mut write_error = None;
        let report =
            reflex_runtime::control::replay_traced(&header, records, &reflex::registry(), |t| {
                let Some(csv) = &mut csv else { return };
                let mut line = format!("{},{:.6}", t.tick, t.now_ns as f64 / 1e9);
                let target = |j: usize| t.target.get(j).copied().unwrap_or(f64::NAN);
                for j in 0..joints {
                    line += &format!(",{}", t.state.position[j]);
                }
                for j in 0..joints {
                    line += &format!(",{}", target(j));
                }
                for j in 0..joints {
                    line += &format!(",{}", t.command.position[j]);
                }
                if let Err(e) = writeln!(csv, "{line}")
                    && write_error.is_none()
                {
                    write_error = Some(e);
                }
            });
        if let Some(e) = write_error {
            anyhow::bail!("writing the trace: {e}");
        }
        if let Some(mut csv) = csv {
            csv.flush()?;
        }
        report
    };
    while reader.next_record().is_some() {
        after_gap += 1;
    }
    let log = reader.report();
    println!(
        "replayed {} ticks and {} chunks from {} ({} clock)",
        report.ticks,
        report.chunks,
        path.display(),
        header.clock,
    );
    for line in log.lines() {
        println!("{line}");
    }
    if let Some(gap) = log.corrupt.first() {
        println!(
            "replay stopped at the corrupt frame at byte {}: {after_gap} whole records after it \
             were read but not re-executed (the tick's state cannot be rebuilt across a gap)",
            gap.offset
        );
    }
    if report.ticks == 0 {
        println!("no ticks to compare: the run ended before its first tick");
        return Ok(ExitCode::from(1));
    }
    if report.identical() {
        println!("all {} commands are bit-identical", report.ticks);
        if log.corrupt_count == 0 {
            return Ok(ExitCode::SUCCESS);
        }
        // A damaged log fails even when what could be replayed matches.
        println!(
            "the log is damaged ({} corrupt frames): exit status 1",
            log.corrupt_count
        );
        Ok(ExitCode::from(1))
    } else {
        println!("DIFFERENT: {} mismatches", report.mismatches);
        for m in &report.first {
            println!("  tick {}: {}", m.tick, m.what);
        }
        Ok(ExitCode::from(1))
    }
}
