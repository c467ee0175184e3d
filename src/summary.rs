//! The end-of-run summary: a table on stdout and the same numbers as JSON.

use std::fmt::Write;
use std::path::Path;

use crate::model_updates::ModelUpdatesReport;
use reflex_runtime::control::RunSummary;
use reflex_runtime::log::ModelFile;
use reflex_runtime::stats::Percentiles;
use serde_json::json;

pub struct Report<'a> {
    origin: &'a str,
    log: Option<&'a Path>,
    run: &'a RunSummary,
    rate_hz: f64,
    models: Option<&'a ModelUpdatesReport>,
    files: &'a [ModelFile],
}

fn percentiles_json(p: &Percentiles) -> serde_json::Value {
    json!({"p50_us": p.p50_us, "p99_us": p.p99_us, "max_us": p.max_us, "count": p.count})
}

impl<'a> Report<'a> {
    pub fn new(origin: &'a str, log: Option<&'a Path>, run: &'a RunSummary, rate_hz: f64) -> Self {
        Self {
            origin,
            log,
            run,
            rate_hz,
            models: None,
            files: &[],
        }
    }

    /// Adds what became of the models pushed during the run.
    pub fn with_model_updates(mut self, models: Option<&'a ModelUpdatesReport>) -> Self {
        self.models = models;
        self
    }

    /// Adds the model files the run loaded, with their hashes (JSON `models`).
    pub fn with_model_files(mut self, files: &'a [ModelFile]) -> Self {
        self.files = files;
        self
    }

    pub fn table(&self) -> String {
        let s = &self.run.stats;
        let (jitter, compute, inference) = (
            s.jitter.percentiles(),
            s.compute.percentiles(),
            s.inference.percentiles(),
        );
        let mut out = String::new();
        let clock = if self.run.simulated {
            "simulated clock"
        } else {
            "wall clock"
        };
        let _ = writeln!(
            out,
            "\nreflex run summary: {} ({clock}, {:.1} s)",
            self.origin, self.run.duration_s
        );
        if let Some(fault) = &self.run.fault {
            let _ = writeln!(
                out,
                "  FAULT              {fault}; the arm was brought to rest"
            );
        }
        if self.run.interrupted {
            let _ = writeln!(
                out,
                "  interrupted        by signal; the arm was brought to rest"
            );
        }
        let _ = writeln!(
            out,
            "  ticks              {} at {} Hz (skipped periods {}, overruns {})",
            s.ticks, self.rate_hz, s.skipped_periods, s.overruns
        );
        if s.intervention_ticks > 0 {
            let _ = writeln!(
                out,
                "  interventions      a person commanded {} ticks ({:.1} s)",
                s.intervention_ticks,
                s.intervention_ticks as f64 / self.rate_hz
            );
        }
        let v = &s.steering;
        if v.scored > 0 {
            let _ = writeln!(
                out,
                "  steering (vgps)    {} chunks scored over {} candidates; {} ran a candidate \
                 other than the first ({:.0} %); Q spread mean {:.3}, max {:.3}",
                v.scored,
                v.last_candidates,
                v.not_first,
                100.0 * v.not_first as f64 / v.scored as f64,
                v.mean_spread(),
                v.spread_max
            );
        }
        if v.latent_chunks > 0 {
            let _ = writeln!(
                out,
                "  steering (dsrl)    {} chunks sampled from the latent-noise policy's w",
                v.latent_chunks
            );
        }
        if let Some(m) = self.models {
            let _ = writeln!(
                out,
                "  models             version {} ran last; {} pushed models swapped in ({} at \
                 chunk boundaries), {} refused{}",
                s.model_version,
                m.accepted,
                s.model_swaps,
                m.refused,
                m.last_refusal
                    .as_ref()
                    .map(|why| format!(" (last: {why})"))
                    .unwrap_or_default()
            );
        }
        if let Some(e) = &self.run.episodes {
            let finalize = e.finalize_ms.iter().copied().fold(0.0, f64::max);
            let _ = writeln!(
                out,
                "  episodes           {} saved ({} successes, {} re-recorded), {} frames; \
                 {} now in {} (finalize max {finalize:.0} ms{})",
                e.saved,
                e.successes,
                e.discarded,
                e.frames,
                e.total_episodes,
                e.root,
                if e.rows_lost > 0 {
                    format!(", {} rows lost: the recorder fell behind", e.rows_lost)
                } else {
                    String::new()
                }
            );
            if let Some(error) = &e.error {
                let _ = writeln!(
                    out,
                    "  RECORDING FAILED   {error}; episodes saved before it are intact"
                );
            }
        }
        let row = |out: &mut String, name: &str, p: &Percentiles, unit_ms: bool| {
            let f = |us: f64| {
                if unit_ms {
                    format!("{:.2} ms", us / 1e3)
                } else {
                    format!("{us:.1} us")
                }
            };
            let _ = writeln!(
                out,
                "  {name:<18} p50 {:>10}  p99 {:>10}  max {:>10}",
                f(p.p50_us),
                f(p.p99_us),
                f(p.max_us)
            );
        };
        if !self.run.simulated {
            row(&mut out, "period jitter", &jitter, false);
        }
        row(&mut out, "tick compute", &compute, false);
        row(&mut out, "inference", &inference, true);
        let _ = writeln!(
            out,
            "  chunks             applied {}, rejected {}, inference errors {}",
            s.chunks_applied, s.chunks_rejected, s.inference_errors
        );
        let m = &s.smoothness;
        if m.jerk_samples > 0 {
            let _ = writeln!(
                out,
                "  executor           before the safety filter: jerk rms {:.0}, max {:.0} rad/s^3; \
                 velocity step at {} chunk switches mean {:.3}, max {:.3} rad/s; held past its \
                 plan {} ticks",
                m.jerk_rms(),
                m.jerk_max,
                m.switches,
                m.switch_jump_mean(),
                m.switch_jump_max,
                m.held_past_plan
            );
        }
        let latched = match s.estop_latches {
            0 => "never latched".to_string(),
            1 => "latched once".to_string(),
            n => format!("latched {n} times"),
        };
        let _ = writeln!(
            out,
            "  safety             limited {} ticks, stale state {} ticks, e-stop {latched}, final state: {}",
            s.limited_commands,
            s.stale_state_ticks,
            if s.final_motion.is_empty() {
                "not started"
            } else {
                s.final_motion
            }
        );
        if s.invalid_states > 0 {
            let _ = writeln!(
                out,
                "  invalid states     {} ignored, last: {}",
                s.invalid_states,
                s.last_invalid_state.as_deref().unwrap_or("?")
            );
        }
        if s.robot_epochs > 0 {
            let _ = writeln!(
                out,
                "  robot restarts     {} (new robot epochs)",
                s.robot_epochs
            );
        }
        if let Some(refusal) = &s.last_refusal {
            let _ = writeln!(
                out,
                "  operator           {} requests refused, last: {refusal}",
                s.refusals
            );
        }
        for (i, fault) in s.stream_faults.iter().enumerate() {
            let name = format!("`{}`", fault.name);
            let (age, skew) = (
                s.stream_age
                    .get(i)
                    .map(|d| d.percentiles())
                    .unwrap_or_default(),
                s.stream_skew
                    .get(i)
                    .map(|d| d.percentiles())
                    .unwrap_or_default(),
            );
            let _ = writeln!(
                out,
                "  stream {name:<11} {} samples; fed {:.1} / {:.1} ms old (p50 / p99), \
                 {:.1} / {:.1} ms from the joint state{}",
                fault.samples,
                age.p50_us / 1e3,
                age.p99_us / 1e3,
                skew.p50_us / 1e3,
                skew.p99_us / 1e3,
                if fault.misaligned > 0 {
                    format!(", {} observations misaligned", fault.misaligned)
                } else {
                    String::new()
                }
            );
            let counts = fault.source.describe();
            if !counts.is_empty() {
                let _ = writeln!(out, "  stream {name:<11} source: {counts}");
            }
            if fault.episodes > 0 {
                let _ = writeln!(
                    out,
                    "  stream {name:<11} stale {} times, {:.2} s in all: {}",
                    fault.episodes,
                    fault.stale_ticks as f64 / self.rate_hz,
                    fault.on_stale.verb()
                );
            }
        }
        if let Some(counted) = s.tick_allocations {
            let _ = writeln!(
                out,
                "  allocations        {} in {} ticks after a 2 s warm-up (control thread)",
                counted.allocations, counted.ticks
            );
        }
        let _ = writeln!(
            out,
            "  messages           dropped commands {}, dropped bus messages {}, refused from the robot {}",
            s.dropped_commands, s.dropped_bus_messages, s.bad_robot_messages
        );
        if let (Some(path), Some(log)) = (self.log, &self.run.log) {
            let state = match &log.error {
                Some(e) => format!("INCOMPLETE: {e}"),
                None if log.dropped > 0 => format!("{} events dropped", log.dropped),
                None => "complete".into(),
            };
            let _ = writeln!(
                out,
                "  log                {} ({} records, {state})",
                path.display(),
                log.records
            );
        }
        for task in &self.run.task {
            let reached = task.episodes.iter().filter(|e| e.reached).count();
            let _ = writeln!(
                out,
                "  task {:<13} {reached}/{} episodes reached the target (tolerance {:.3} m)",
                task.task,
                task.episodes.len(),
                task.tolerance
            );
            for e in &task.episodes {
                let when = e.time_to_reach_s.map_or("never on target".into(), |t| {
                    format!("on target after {t:.2} s")
                });
                let verdict = if e.reached { "reached" } else { "MISSED" };
                let _ = writeln!(
                    out,
                    "    episode {:<3} {verdict:<8} final error {:.3} m, {when}",
                    e.index, e.final_error
                );
            }
        }
        out
    }

    pub fn json(&self) -> serde_json::Value {
        let s = &self.run.stats;
        let mut out = json!({
            "launch": self.origin,
            "simulated": self.run.simulated,
            "duration_s": self.run.duration_s,
            "interrupted": self.run.interrupted,
            "fault": self.run.fault,
            "ticks": s.ticks,
            "rate_hz": self.rate_hz,
            "skipped_periods": s.skipped_periods,
            "overruns": s.overruns,
            "jitter": percentiles_json(&s.jitter.percentiles()),
            "compute": percentiles_json(&s.compute.percentiles()),
            "inference": percentiles_json(&s.inference.percentiles()),
            "chunks_applied": s.chunks_applied,
            "chunks_rejected": s.chunks_rejected,
            "inference_errors": s.inference_errors,
            "limited_commands": s.limited_commands,
            "stale_state_ticks": s.stale_state_ticks,
            "estop": s.estop_latches > 0,
            "estop_latches": s.estop_latches,
            "final_state": s.final_motion,
            "invalid_states": s.invalid_states,
            "last_invalid_state": s.last_invalid_state,
            "robot_epochs": s.robot_epochs,
            "refusals": s.refusals,
            "last_refusal": s.last_refusal.map(|r| r.to_string()),
            "tracking_fault": s.tracking_fault.map(|(joint, error)| json!({"joint": joint, "error": error})),
            "dropped_commands": s.dropped_commands,
            "tick_allocations": s.tick_allocations,
            "dropped_bus_messages": s.dropped_bus_messages,
            "bad_robot_messages": s.bad_robot_messages,
            "streams": s.stream_faults.iter().enumerate().map(|(i, f)| {
                let ms = |d: Option<&reflex_runtime::stats::Distribution>| {
                    let p = d.map(|d| d.percentiles()).unwrap_or_default();
                    json!({"p50": p.p50_us / 1e3, "p99": p.p99_us / 1e3, "max": p.max_us / 1e3})
                };
                json!({
                    "name": f.name,
                    "on_stale": f.on_stale,
                    "stale_episodes": f.episodes,
                    "stale_ticks": f.stale_ticks,
                    "samples": f.samples,
                    "misaligned": f.misaligned,
                    "source": f.source,
                    "age_ms": ms(s.stream_age.get(i)),
                    "skew_ms": ms(s.stream_skew.get(i)),
                })
            }).collect::<Vec<_>>(),
            "log": self.run.log.as_ref().map(|l| json!({"records": l.records, "dropped": l.dropped, "error": l.error})),
            "tasks": self.run.task.iter().map(|t| json!({
                "task": t.task,
                "tolerance": t.tolerance,
                "episodes": t.episodes.iter().map(|e| json!({
                    "reached": e.reached, "final_error": e.final_error, "time_to_reach_s": e.time_to_reach_s,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        // Apart: one more key would exceed json!'s recursion limit.
        out["episodes"] = json!(self.run.episodes);
        out["intervention_ticks"] = json!(s.intervention_ticks);
        out["model_version"] = json!(s.model_version);
        out["model_swaps"] = json!(s.model_swaps);
        out["steering"] = json!({
            "scored": s.steering.scored,
            "candidates": s.steering.last_candidates,
            "not_first": s.steering.not_first,
            "spread_mean": s.steering.mean_spread(),
            "spread_max": s.steering.spread_max,
            "latent_chunks": s.steering.latent_chunks,
        });
        let m = &s.smoothness;
        out["executor"] = json!({
            "jerk_rms": m.jerk_rms(),
            "jerk_max": m.jerk_max,
            "switches": m.switches,
            "switch_jump_mean": m.switch_jump_mean(),
            "switch_jump_max": m.switch_jump_max,
            "held_past_plan_ticks": m.held_past_plan,
        });
        out["model_updates"] = json!(self.models);
        out["models"] = json!(self.files);
        out
    }
}
