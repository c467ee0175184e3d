//! `reflex calibrate`: calibration computed from recorded runs.
//!
//! `norm-stats` reads run logs (`reflex run --log`) and writes openpi's
//! `norm_stats.json`: `state` from the measured joint positions of every tick,
//! `actions` from the joint commands sent on those ticks (or, with `--delta`,
//! command minus measured position: the delta-action convention).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use reflex_calibration::{NormStats, StatsAccumulator};
use reflex_runtime::log::{Record, read_log};
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

fn norm_stats(args: &NormStatsArgs) -> anyhow::Result<ExitCode> {
    let mut state: Option<StatsAccumulator> = None;
    let mut actions: Option<StatsAccumulator> = None;
    let mut joints = 0;
    for path in &args.logs {
        let (header, records) =
            read_log(path).with_context(|| format!("cannot read log {}", path.display()))?;
        let width = header.joints.len();
        if joints != 0 && width != joints {
            bail!(
                "{}: {width} joints, earlier logs have {joints}",
                path.display()
            );
        }
        joints = width;
        let state = state.get_or_insert_with(|| StatsAccumulator::new(width));
        let actions = actions.get_or_insert_with(|| StatsAccumulator::new(width));
        let mut delta = vec![0.0; width];
        for record in &records {
            let Record::Tick(tick) = record else { continue };
            // A command of seq 0 was never sent (no joint state yet).
            let abnormal = tick.flags & (flags::ESTOP | flags::STALE_STATE | flags::NON_FINITE);
            if tick.command.seq == 0 || (!args.all_ticks && abnormal != 0) {
                continue;
            }
            let measured = tick.state.positions();
            let command = tick.command.positions();
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
    }
    let (Some(state), Some(actions)) = (state, actions) else {
        bail!("no logs given");
    };
    let samples = state.count();
    let (Some(state), Some(actions)) = (state.finish(), actions.finish()) else {
        bail!("the logs have no ticks with commands (use --all-ticks to include e-stopped ticks)");
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
