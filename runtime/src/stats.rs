//! Per-run timing statistics, recorded by the tick without allocating
//! (fixed-range HDR histograms, sized once at start).

use hdrhistogram::Histogram;

/// Values are recorded in ns, 1 ns .. 100 s, 3 significant digits.
fn histogram() -> Histogram<u64> {
    let mut h =
        Histogram::new_with_bounds(1, 100_000_000_000, 3).unwrap_or_else(|_| unreachable!());
    h.auto(false);
    h
}

/// p50 / p99 / max of one quantity, µs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub count: u64,
}

pub struct Distribution {
    hist: Histogram<u64>,
}

impl Default for Distribution {
    fn default() -> Self {
        Self { hist: histogram() }
    }
}

impl Distribution {
    pub fn record_ns(&mut self, ns: u64) {
        // Out-of-range values saturate instead of failing.
        self.hist.saturating_record(ns.max(1));
    }

    pub fn percentiles(&self) -> Percentiles {
        if self.hist.is_empty() {
            return Percentiles::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Percentiles {
            p50_us: us(self.hist.value_at_quantile(0.5)),
            p99_us: us(self.hist.value_at_quantile(0.99)),
            max_us: us(self.hist.max()),
            count: self.hist.len(),
        }
    }

    pub fn reset(&mut self) {
        self.hist.reset();
    }
}

/// How smooth the executor's targets were, before the safety filter (which
/// would otherwise hide a strategy's jumps): the jerk of the target from its
/// third finite difference, and at each chunk switch the step in the target's
/// velocity. Only ticks that follow the executor count; fixed storage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TargetSmoothness {
    /// The last four targets (newest first) and how many of them are valid.
    recent: [[f64; crate::types::MAX_JOINTS]; 4],
    valid: usize,
    switch_pending: bool,
    jerk_sq_sum: f64,
    pub jerk_samples: u64,
    /// rad/s^3, the largest over joints and ticks.
    pub jerk_max: f64,
    pub switches: u64,
    switch_jump_sum: f64,
    /// rad/s, the largest velocity step at a chunk switch.
    pub switch_jump_max: f64,
    /// Ticks the executor held past the end of its plan (inference later than
    /// the plan lasted, or `synchronous` waiting).
    pub held_past_plan: u64,
}

impl TargetSmoothness {
    /// A chunk was applied this tick (before its target is recorded).
    pub fn note_switch(&mut self) {
        self.switch_pending = true;
    }

    /// The tick did not follow the executor (teleop, reset, stop): the next
    /// differences start afresh.
    pub fn interrupt(&mut self) {
        self.valid = 0;
        self.switch_pending = false;
    }

    /// This tick's executor target, `dt` seconds after the previous one.
    pub fn record(&mut self, target: &[f64], dt: f64) {
        let n = target.len().min(crate::types::MAX_JOINTS);
        self.recent.copy_within(0..3, 1);
        self.recent[0][..n].copy_from_slice(&target[..n]);
        self.valid = (self.valid + 1).min(4);
        let [x0, x1, x2, x3] = &self.recent;
        if self.valid >= 4 {
            let worst = (0..n)
                .map(|j| ((x0[j] - 3.0 * x1[j] + 3.0 * x2[j] - x3[j]) / (dt * dt * dt)).abs())
                .fold(0.0, f64::max);
            self.jerk_sq_sum += worst * worst;
            self.jerk_samples += 1;
            self.jerk_max = self.jerk_max.max(worst);
        }
        if std::mem::take(&mut self.switch_pending) && self.valid >= 3 {
            let step = (0..n)
                .map(|j| ((x0[j] - x1[j]) - (x1[j] - x2[j])).abs() / dt)
                .fold(0.0, f64::max);
            self.switches += 1;
            self.switch_jump_sum += step;
            self.switch_jump_max = self.switch_jump_max.max(step);
        }
    }

    /// RMS over ticks of the largest joint jerk, rad/s^3.
    pub fn jerk_rms(&self) -> f64 {
        if self.jerk_samples == 0 {
            0.0
        } else {
            (self.jerk_sq_sum / self.jerk_samples as f64).sqrt()
        }
    }

    /// Mean velocity step at a chunk switch, rad/s.
    pub fn switch_jump_mean(&self) -> f64 {
        if self.switches == 0 {
            0.0
        } else {
            self.switch_jump_sum / self.switches as f64
        }
    }
}

/// What ranking stages (V-GPS) chose, over the run's applied chunks.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct SteeringStats {
    /// Applied chunks a stage scored.
    pub scored: u64,
    /// Of those, chunks other than the first candidate (what the base policy
    /// alone would have run).
    pub not_first: u64,
    pub spread_sum: f64,
    pub spread_max: f64,
    /// The last scored chunk's candidates, choice and score spread.
    pub last_candidates: u32,
    pub last_selected: u32,
    pub last_spread: f32,
    /// Applied chunks sampled from a latent-noise policy's w (DSRL), and the
    /// last one's mean |w|.
    pub latent_chunks: u64,
    pub last_noise_abs: f32,
}

impl SteeringStats {
    /// Counts what steered one applied chunk: a ranking stage's choice, a
    /// latent-noise policy's w (nothing when neither did).
    pub fn record(&mut self, chunk: &crate::types::ActionChunk) {
        if chunk.noise_from_latent && !chunk.noise.is_empty() {
            self.latent_chunks += 1;
            let sum: f32 = chunk.noise.iter().map(|v| v.abs()).sum();
            self.last_noise_abs = sum / chunk.noise.len() as f32;
        }
        let choice = &chunk.choice;
        if choice.scores.is_empty() {
            return;
        }
        let spread = choice.spread();
        self.scored += 1;
        self.not_first += u64::from(choice.selected != 0);
        self.spread_sum += f64::from(spread);
        self.spread_max = self.spread_max.max(f64::from(spread));
        self.last_candidates = choice.scores.len() as u32;
        self.last_selected = choice.selected;
        self.last_spread = spread;
    }

    pub fn mean_spread(&self) -> f64 {
        if self.scored == 0 {
            0.0
        } else {
            self.spread_sum / self.scored as f64
        }
    }
}

/// What a run measured; printed as the summary table at the end.
#[derive(Default)]
pub struct RunStats {
    /// |actual period - nominal period| between consecutive ticks.
    pub jitter: Distribution,
    /// Allocations of the ticks after warm-up, on the control thread (only in a
    /// binary with a counting allocator: see [`crate::alloc_probe`]).
    pub tick_allocations: Option<crate::alloc_probe::TickAllocations>,
    /// Time from wake-up to the end of the tick's work.
    pub compute: Distribution,
    /// Inference latency as the worker measured it.
    pub inference: Distribution,
    pub ticks: u64,
    pub overruns: u64,
    pub skipped_periods: u64,
    pub chunks_applied: u64,
    pub chunks_rejected: u64,
    pub stale_state_ticks: u64,
    pub limited_commands: u64,
    /// Ticks a person commanded (teleop engaged).
    pub intervention_ticks: u64,
    /// Models swapped in at run time, and the one running at the end (0: the
    /// launch file's).
    pub model_swaps: u64,
    pub model_version: u32,
    /// The executor's targets before the safety filter.
    pub smoothness: TargetSmoothness,
    /// What V-GPS-like stages chose.
    pub steering: SteeringStats,
    /// How many times the e-stop latched during the run (the shutdown's own
    /// controlled stop is not counted).
    pub estop_latches: u64,
    /// The safety filter's state when the run ended, before the shutdown stop.
    pub final_motion: &'static str,
    /// Joint states ignored as invalid (non-finite, out of range, reordered, ...).
    pub invalid_states: u64,
    pub last_invalid_state: Option<String>,
    /// Restarts of the robot's driver seen (new robot epochs).
    pub robot_epochs: u64,
    /// The joint and error that latched the e-stop on a tracking error.
    pub tracking_fault: Option<(usize, f64)>,
    /// Re-arm / resume requests refused, and the last reason.
    pub refusals: u64,
    pub last_refusal: Option<crate::safety::Refusal>,
    pub inference_errors: u64,
    /// Commands the arm driver's mailbox replaced because its thread fell behind.
    pub dropped_commands: u64,
    /// Commands and states the bus mirror's mailboxes replaced (not published).
    pub dropped_bus_messages: u64,
    /// Messages from the robot its driver refused (undecodable, wrong joint count).
    pub bad_robot_messages: u64,
    /// Per sensor stream: how often it went stale and what that did.
    pub stream_faults: Vec<crate::stream::StreamFaults>,
    /// Per sensor stream, per observation: |sample's capture stamp - the joint
    /// state's| (the skew between the stream and the state the policy saw).
    pub stream_skew: Vec<Distribution>,
    /// Per sensor stream, per observation: how old the sample fed was.
    pub stream_age: Vec<Distribution>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothness_measures_jerk_and_velocity_steps_at_switches() {
        let mut s = TargetSmoothness::default();
        let dt = 0.01;
        // A constant velocity: no jerk, no step.
        for k in 0..10 {
            s.record(&[0.1 * k as f64], dt);
        }
        assert!(s.jerk_max < 1e-6, "{}", s.jerk_max);
        assert_eq!(s.jerk_samples, 7);
        // A switch that doubles the velocity (0.1 -> 0.2 rad per tick): a step
        // of 10 rad/s, and jerk at the kink of 0.1 / dt^3.
        s.note_switch();
        s.record(&[0.9 + 0.2], dt);
        assert_eq!(s.switches, 1);
        assert!(
            (s.switch_jump_max - 10.0).abs() < 1e-9,
            "{}",
            s.switch_jump_max
        );
        assert!((s.jerk_max - 0.1 / (dt * dt * dt)).abs() < 1e-3);
        // An interruption starts the differences afresh.
        s.interrupt();
        s.record(&[5.0], dt);
        s.note_switch();
        s.record(&[6.0], dt);
        assert_eq!(s.switches, 1, "too few targets since the interruption");
    }

    #[test]
    fn the_status_line_shows_each_streams_rate_and_age() {
        let mut snapshot = StatusSnapshot {
            stream_count: 2,
            ..StatusSnapshot::default()
        };
        snapshot.streams[0] = StreamStatus {
            name: ShortName::new("top"),
            rate_hz: 29.8,
            age_ms: Some(12.4),
            source: Default::default(),
        };
        snapshot.streams[1] = StreamStatus {
            name: ShortName::new("taxels"),
            rate_hz: 0.0,
            age_ms: None,
            source: Default::default(),
        };
        let line = snapshot.line();
        assert!(line.ends_with(" top=30Hz/12ms taxels=0Hz/-"), "{line}");
        snapshot.streams[0].source.repeated = 5;
        snapshot.streams[0].source.dropped = 2;
        let line = snapshot.line();
        assert!(
            line.ends_with(" top=30Hz/12ms[2 dropped, 5 repeated] taxels=0Hz/-"),
            "{line}"
        );
        let json = serde_json::to_value(snapshot).unwrap();
        assert_eq!(json["streams"].as_array().unwrap().len(), 2, "{json}");
        assert_eq!(json["streams"][0]["name"], "top");
        assert!(json.get("stream_count").is_none());
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut d = Distribution::default();
        for us in 1..=100u64 {
            d.record_ns(us * 1000);
        }
        let p = d.percentiles();
        assert_eq!(p.count, 100);
        assert!((p.p50_us - 50.0).abs() < 0.1, "{p:?}");
        assert!((p.p99_us - 99.0).abs() < 0.1, "{p:?}");
        assert!((p.max_us - 100.0).abs() < 0.1, "{p:?}");
    }
}

/// The live status the tick publishes a few times per second (a `Copy` value in a
/// latest-value slot; the status thread formats and sends it).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct StatusSnapshot {
    pub tick: u64,
    pub elapsed_s: f64,
    /// Ticks per second over the last window.
    pub rate_hz: f64,
    pub jitter_p99_us: f64,
    pub compute_p99_us: f64,
    pub inference_ms: f64,
    /// Actions of the active chunk not yet reached.
    pub chunk_queue: usize,
    pub chunks_applied: u64,
    pub chunks_rejected: u64,
    /// The model whose chunks run (0: the launch file's; then each swapped in).
    pub model_version: u32,
    /// Ranking stages: the last chunk's candidate and score spread.
    pub steering: SteeringStats,
    /// Inferences that failed (an invalid FAST sequence, a runtime error).
    pub inference_errors: u64,
    pub overruns: u64,
    pub stale_state_ticks: u64,
    pub invalid_states: u64,
    pub last_invalid_state: Option<crate::control::InvalidState>,
    /// The e-stop is latched.
    pub estop: bool,
    /// Re-armed and holding, waiting for resume.
    pub hold: bool,
    pub estop_latches: u64,
    /// Why the last re-arm or resume was refused.
    pub last_refusal: Option<crate::safety::Refusal>,
    /// The run is ending and the arm is being brought to rest.
    pub stopping: bool,
    /// A stream that is stale now, and what that does.
    pub stale_stream: Option<(ShortName, crate::stream::OnStale)>,
    /// The first [`STATUS_STREAMS`] sensor streams: rate and age now.
    #[serde(serialize_with = "used_streams")]
    pub streams: [StreamStatus; STATUS_STREAMS],
    #[serde(skip)]
    pub stream_count: usize,
}

fn used_streams<S: serde::Serializer>(
    streams: &[StreamStatus; STATUS_STREAMS],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(streams.iter().filter(|s| !s.name.as_str().is_empty()))
}

/// Sensor streams the status line shows (the summary has them all).
pub const STATUS_STREAMS: usize = 8;

/// One sensor stream on the status line.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct StreamStatus {
    pub name: ShortName,
    /// New samples per second over the status window.
    pub rate_hz: f64,
    /// How old the newest sample is, ms (None: nothing yet).
    pub age_ms: Option<f64>,
    /// What its source counted so far (repeated, dropped, ...).
    pub source: crate::stream::SourceCounts,
}

/// A name in a fixed buffer, so that snapshots stay `Copy` (at most 32 bytes; a
/// longer one is cut at a character boundary).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ShortName {
    bytes: [u8; 32],
    len: u8,
}

impl ShortName {
    pub fn new(name: &str) -> Self {
        let mut len = name.len().min(32);
        while !name.is_char_boundary(len) {
            len -= 1;
        }
        let mut bytes = [0; 32];
        bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
        Self {
            bytes,
            len: len as u8,
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }
}

impl serde::Serialize for ShortName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl StatusSnapshot {
    /// The one-line form shown on a terminal.
    pub fn line(&self) -> String {
        format!(
            "t={:6.1}s rate={:6.1}Hz jitter_p99={:7.1}us compute_p99={:6.1}us infer={:6.2}ms queue={:2} chunks={} rejected={} errors={} overruns={}{}",
            self.elapsed_s,
            self.rate_hz,
            self.jitter_p99_us,
            self.compute_p99_us,
            self.inference_ms,
            self.chunk_queue,
            self.chunks_applied,
            self.chunks_rejected,
            self.inference_errors,
            self.overruns,
            if self.stopping {
                " stopping"
            } else if self.estop {
                " E-STOP (r: re-arm)"
            } else if self.hold {
                " HOLD (g: resume)"
            } else {
                ""
            }
        ) + &self
            .last_refusal
            .filter(|_| self.estop || self.hold)
            .map(|r| format!(" refused: {r}"))
            .unwrap_or_default()
            + &(if self.steering.scored > 0 {
                format!(
                    " vgps={}/{} dQ={:.3}",
                    self.steering.last_selected,
                    self.steering.last_candidates,
                    self.steering.last_spread
                )
            } else {
                String::new()
            })
            + &(if self.steering.latent_chunks > 0 {
                format!(" |w|={:.2}", self.steering.last_noise_abs)
            } else {
                String::new()
            })
            + &self
                .stale_stream
                .map(|(name, action)| {
                    format!(" stream `{}` stale: {}", name.as_str(), action.verb())
                })
                .unwrap_or_default()
            + &self.streams[..self.stream_count.min(STATUS_STREAMS)]
                .iter()
                .map(|s| {
                    let counts = s.source.describe();
                    format!(
                        " {}={:.0}Hz/{}{}",
                        s.name.as_str(),
                        s.rate_hz,
                        s.age_ms.map_or("-".to_string(), |ms| format!("{ms:.0}ms")),
                        if counts.is_empty() {
                            counts
                        } else {
                            format!("[{counts}]")
                        }
                    )
                })
                .collect::<String>()
    }
}
