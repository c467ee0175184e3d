//! `reflex calibrate`: calibration computed from recorded runs.
//!
//! `norm-stats` reads run logs (`reflex run --log`) and writes openpi's
//! `norm_stats.json`: `state` from the measured joint positions of every tick,
//! `actions` from the joint commands sent on those ticks (or, with `--delta`,
//! command minus measured position: the delta-action convention). Ticks with NaN or
//! infinite values are skipped and counted; logs of different robots are refused.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use reflex_calibration::{NormStats, StatsAccumulator, StatsError};
use reflex_runtime::log::{Record, open_log};
use reflex_runtime::safety::flags;

#[derive(clap::Subcommand)]
pub enum CalibrateCommand {
    /// Normalization statistics (openpi norm_stats.json) from run logs.
    NormStats(NormStatsArgs),
}

#[derive(clap::Args)]
pub struct NormStatsArgs {
    /// Run logs written by `reflex run --log`.
    #[arg(required = true)]
    pub logs: Vec<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    /// Actions relative to the measured joint positions.
    #[arg(long)]
    pub delta: bool,
    /// Also count ticks flagged e-stop, stale state or non-finite (skipped by default).
    #[arg(long)]
    pub all_ticks: bool,
}

pub fn run(command: CalibrateCommand) -> anyhow::Result<ExitCode> {
    match command {
        CalibrateCommand::NormStats(args) => norm_stats(&args),
    }
}

/// The first log's robot, to refuse merging logs of different robots.
struct Robot {
    log: PathBuf,
    joints: Vec<String>,
}

fn norm_stats(args: &NormStatsArgs) -> anyhow::Result<ExitCode> {
    let mut state: Option<StatsAccumulator> = None;
    let mut actions: Option<StatsAccumulator> = None;
    let mut robot: Option<Robot> = None;
    let mut ticks_skipped = 0u64;
    for path in &args.logs {
        // Streamed: every whole record counts, also from a truncated or damaged log.
        let mut reader =
            open_log(path).with_context(|| format!("cannot read log {}", path.display()))?;
        let joints: Vec<String> = reader
            .header()
            .joints
            .iter()
            .map(|j| j.name.clone())
            .collect();
        match &robot {
            Some(first) if first.joints != joints => bail!(
                "{} has joints [{}] but {} has [{}]: statistics of different robots \
                 cannot be merged; compute them per robot",
                path.display(),
                joints.join(", "),
                first.log.display(),
                first.joints.join(", ")
            ),
            Some(_) => {}
            None => {
                robot = Some(Robot {
                    log: path.clone(),
                    joints: joints.clone(),
                })
            }
        }
        let width = joints.len();
        let state = state.get_or_insert_with(|| StatsAccumulator::new(width));
        let actions = actions.get_or_insert_with(|| StatsAccumulator::new(width));
        let mut delta = vec![0.0; width];
        while let Some(record) = reader.next_record() {
            let Record::Tick(tick) = record else { continue };
            // A command of seq 0 was never sent (no joint state yet).
            let abnormal = tick.flags & (flags::ESTOP | flags::STALE_STATE | flags::NON_FINITE);
            if tick.command.seq == 0 || (!args.all_ticks && abnormal != 0) {
                continue;
            }
            let measured = tick.state.positions();
            let command = tick.command.positions();
            // Skip the whole tick unless both halves are usable, so state and
            // actions are statistics of the same ticks.
            let usable = |v: &[f64]| v.len() == width && v.iter().all(|x| x.is_finite());
            if !usable(measured) || !usable(command) {
                ticks_skipped += 1;
                continue;
            }
            state.push(measured);
            if args.delta {
                for (d, (c, m)) in delta.iter_mut().zip(command.iter().zip(measured)) {
                    *d = c - m;
                }
                actions.push(&delta);
            } else {
                actions.push(command);
            }
        }
        let report = reader.report();
        if !report.is_clean() {
            for line in report.lines() {
                println!("{}: {line}", path.display());
            }
        }
    }
    let (Some(state), Some(actions)) = (state, actions) else {
        bail!("no logs given");
    };
    // Differences of finite values can still overflow: counted with the rest.
    ticks_skipped += actions.skipped() as u64;
    let samples = state.count().min(actions.count());
    if ticks_skipped > 0 {
        println!("skipped {ticks_skipped} ticks with NaN, infinite or misshapen joint values");
    }
    let joints = robot.map_or(0, |r| r.joints.len());
    let no_ticks =
        "the logs have no ticks with commands (use --all-ticks to include e-stopped ticks)";
    let state = match state.finish() {
        Ok(stats) => stats,
        Err(StatsError::NoSamples { .. }) if ticks_skipped > 0 => bail!(
            "the logs have no ticks with finite joint values ({ticks_skipped} skipped for NaN \
             or infinite values); refusing to write statistics"
        ),
        Err(StatsError::NoSamples { .. }) => bail!(no_ticks),
        Err(e) => bail!("state: {e}"),
    };
    let actions = match actions.finish() {
        Ok(stats) => stats,
        Err(StatsError::NoSamples { .. }) => bail!(
            "the logs have no ticks with finite actions ({ticks_skipped} skipped); \
             refusing to write statistics"
        ),
        Err(e) => bail!("actions: {e}"),
    };
    let mut stats = NormStats::default();
    stats.entries.insert("state".into(), state);
    stats.entries.insert("actions".into(), actions);
    std::fs::write(&args.out, stats.to_json())
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!(
        "wrote {} ({samples} samples of {joints} joints from {} log(s){})",
        args.out.display(),
        args.logs.len(),
        if args.delta { ", delta actions" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}
