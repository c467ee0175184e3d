//! `reflex`: run, check and replay robot policies from a launch file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

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
    /// Re-execute a run log and check every command bit for bit.
    Replay { log: PathBuf },
    /// Record scripted demonstrations on the simulated arm (training data).
    Demos(reflex::demos::DemoArgs),
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
    /// Calibration from recorded runs (normalization statistics).
    #[command(subcommand)]
    Calibrate(reflex::calibrate::CalibrateCommand),
    /// Print the JSON schema of launch files.
    Schema,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REFLEX_LOG")
                .unwrap_or_else(|_| "warn,zenoh=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => reflex::run::run(args),
        Command::Check { launch, overrides } => check(launch, &overrides),
        Command::Replay { log } => replay(&log),
        Command::Demos(args) => reflex::demos::record(args).map(|()| ExitCode::SUCCESS),
        Command::Fast(command) => reflex::fast_cli::run(command),
        Command::Infer(args) => reflex::infer::run(args),
        Command::Calibrate(command) => reflex::calibrate::run(command),
        Command::Inspect { model, onnxruntime } => {
            reflex_policies::inspect::inspect(&model, onnxruntime.as_deref())
                .map(|report| {
                    print!("{}", report.render(&model));
                    ExitCode::SUCCESS
                })
                .map_err(anyhow::Error::new)
        }
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&reflex_runtime::launch::json_schema())
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

fn check(path: Option<PathBuf>, overrides: &[String]) -> anyhow::Result<ExitCode> {
    let launch = reflex::load_launch(path.as_ref(), overrides)?;
    let policy = reflex::load_policy(&launch)?;
    let c = &launch.config;
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
        c.drivers
            .sim_arm
            .iter()
            .map(|d| format!("sim_arm `{}`", d.name))
            .chain(
                c.drivers
                    .zenoh_arm
                    .iter()
                    .map(|d| format!("zenoh_arm `{}`", d.name))
            )
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  policy     {} {} (signature matches)",
        launch.policy().table,
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
        if c.zenoh.enabled {
            format!("{:?} listening on {:?}", c.zenoh.mode, c.zenoh.listen)
        } else {
            "off".into()
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn replay(path: &Path) -> anyhow::Result<ExitCode> {
    let (header, records) = reflex_runtime::log::read_log(path)
        .with_context(|| format!("cannot read log {}", path.display()))?;
    let report = reflex_runtime::control::replay(&header, &records);
    println!(
        "replayed {} ticks and {} chunks from {} ({} clock{})",
        report.ticks,
        report.chunks,
        path.display(),
        header.clock,
        if report.complete {
            ""
        } else {
            ", log ends early: the run did not finish cleanly"
        }
    );
    if report.identical() {
        println!("all {} commands are bit-identical", report.ticks);
        Ok(ExitCode::SUCCESS)
    } else {
        println!("DIFFERENT: {} mismatches", report.mismatches);
        for m in &report.first {
            println!("  tick {}: {}", m.tick, m.what);
        }
        Ok(ExitCode::from(1))
    }
}
