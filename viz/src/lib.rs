//! `reflex run --rerun`: the run, live in the Rerun viewer (spawned, connected
//! to, or saved as an `.rrd` file). Timelines `tick` (control ticks) and `time`
//! (seconds of the run's clock).
//!
//! | entity | what |
//! |---|---|
//! | `joints/<joint>/state`, `joints/<joint>/command` | the measured position and the published command, every tick |
//! | `chunks/<joint>` | each applied chunk as a future trajectory (action time in s, target), at the tick it arrived |
//! | `steering/scores`, `steering/selected` | the candidates' scores and the chosen one (V-GPS) |
//! | `cameras/<camera>` | what the policy saw, at each inference |
//! | `events` | e-stops, operator requests and rejected chunks |
//!
//! Records come from the run's recorder thread and images from the inference
//! thread: the tick does no viewer work at all.

use std::path::PathBuf;
use std::str::FromStr;

use reflex_runtime::log::Record;
use reflex_runtime::policy::{Policy, PolicyError};
use reflex_runtime::stage::Candidates;
use reflex_runtime::types::{ActionChunk, Observation};
use rerun::{RecordingStream, RecordingStreamBuilder};

/// Where the recording goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Start a viewer (the `rerun` binary on PATH, e.g. from `pip install rerun-sdk`).
    Spawn,
    /// Stream to a running viewer (default `rerun+http://127.0.0.1:9876/proxy`).
    Connect(Option<String>),
    /// Write an `.rrd` file (open it later with `rerun FILE.rrd`).
    Save(PathBuf),
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "spawn" => Ok(Target::Spawn),
            "connect" => Ok(Target::Connect(None)),
            _ if s.starts_with("connect=") => Ok(Target::Connect(Some(s[8..].to_string()))),
            _ if s.starts_with("save=") && s.len() > 5 => Ok(Target::Save(PathBuf::from(&s[5..]))),
            _ if s.ends_with(".rrd") => Ok(Target::Save(PathBuf::from(s))),
            _ => Err(format!(
                "`{s}`: use spawn, connect, connect=rerun+http://HOST:9876/proxy, save=FILE.rrd or FILE.rrd"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("rerun: {0}")]
pub struct VizError(String);

/// The run's shape, for names and times.
#[derive(Debug, Clone)]
pub struct RunShape {
    pub joints: Vec<String>,
    pub cameras: Vec<String>,
    pub rate_hz: f64,
    pub ticks_per_action: f64,
}

/// One open recording; clones log to the same one.
#[derive(Clone)]
pub struct Viewer {
    rec: RecordingStream,
    shape: RunShape,
}

impl Viewer {
    pub fn open(target: &Target, robot: &str, shape: RunShape) -> Result<Self, VizError> {
        let builder = RecordingStreamBuilder::new(format!("reflex/{robot}"));
        let rec = match target {
            Target::Spawn => builder.spawn(),
            Target::Connect(None) => builder.connect_grpc(),
            Target::Connect(Some(url)) => builder.connect_grpc_opts(url.clone()),
            Target::Save(path) => builder.save(path),
        }
        .map_err(|e| VizError(e.to_string()))?;
        Ok(Self { rec, shape })
    }

    fn at_tick(&self, tick: u64) {
        self.rec.set_time_sequence("tick", tick as i64);
        self.rec
            .set_duration_secs("time", tick as f64 / self.shape.rate_hz);
    }

    /// One record of the run log (on the recorder's thread).
    pub fn record(&self, record: &Record) {
        let result = match record {
            Record::Tick(t) => {
                self.at_tick(t.tick);
                self.shape
                    .joints
                    .iter()
                    .enumerate()
                    .try_for_each(|(i, joint)| {
                        self.rec.log(
                            format!("joints/{joint}/state"),
                            &rerun::Scalars::single(t.state.position[i]),
                        )?;
                        self.rec.log(
                            format!("joints/{joint}/command"),
                            &rerun::Scalars::single(t.command.position[i]),
                        )
                    })
            }
            Record::Chunk {
                tick,
                accepted,
                chunk,
            } => {
                self.at_tick(*tick);
                if *accepted {
                    self.chunk(chunk)
                } else {
                    self.event(
                        format!("chunk {} rejected", chunk.id),
                        rerun::TextLogLevel::WARN,
                    )
                }
            }
            Record::Choice { tick, choice, .. } => {
                self.at_tick(*tick);
                self.rec
                    .log(
                        "steering/scores",
                        &rerun::BarChart::new(choice.scores.clone()),
                    )
                    .and_then(|()| {
                        self.rec.log(
                            "steering/selected",
                            &rerun::Scalars::single(choice.selected as f64),
                        )
                    })
            }
            Record::Estop { tick } => {
                self.at_tick(*tick);
                self.event(
                    "stop requested from outside the loop (operator, signal or end of run)".into(),
                    rerun::TextLogLevel::WARN,
                )
            }
            Record::Operator {
                tick,
                request,
                outcome,
            } => {
                self.at_tick(*tick);
                self.event(
                    format!("operator request {request}: outcome {outcome}"),
                    rerun::TextLogLevel::INFO,
                )
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!("rerun: {e}");
        }
    }

    fn event(&self, text: String, level: &str) -> rerun::RecordingStreamResult<()> {
        self.rec
            .log("events", &rerun::TextLog::new(text).with_level(level))
    }

    /// A chunk as future trajectories: per joint, (seconds from now, target).
    fn chunk(&self, chunk: &ActionChunk) -> rerun::RecordingStreamResult<()> {
        let step = self.shape.ticks_per_action / self.shape.rate_hz;
        for (j, joint) in self.shape.joints.iter().enumerate() {
            if j >= chunk.dim {
                break;
            }
            let strip: Vec<[f32; 2]> = (0..chunk.horizon)
                .map(|k| {
                    [
                        ((k + 1) as f64 * step) as f32,
                        chunk.actions[k * chunk.dim + j],
                    ]
                })
                .collect();
            self.rec.log(
                format!("chunks/{joint}"),
                &rerun::LineStrips2D::new([strip]),
            )?;
        }
        Ok(())
    }

    /// What the policy saw (on the inference thread).
    pub fn observation(&self, obs: &Observation) {
        self.at_tick(obs.tick);
        for (camera, image) in self.shape.cameras.iter().zip(&obs.images) {
            if image.width == 0 || image.height == 0 {
                continue;
            }
            let logged = rerun::Image::from_rgb24(
                image.rgb.clone(),
                [image.width as u32, image.height as u32],
            );
            if let Err(e) = self.rec.log(format!("cameras/{camera}"), &logged) {
                tracing::warn!("rerun: {e}");
            }
        }
    }

    /// Waits until everything logged is sent or written.
    pub fn flush(&self) {
        if let Err(e) = self.rec.flush_blocking() {
            tracing::warn!("rerun: {e}");
        }
    }
}

/// A policy whose every observation is also shown in the viewer.
pub struct Viewed {
    pub inner: Box<dyn Policy>,
    pub viewer: Viewer,
}

impl Policy for Viewed {
    fn horizon(&self) -> usize {
        self.inner.horizon()
    }
    fn action_dim(&self) -> usize {
        self.inner.action_dim()
    }
    fn infer(&mut self, obs: &Observation, out: &mut ActionChunk) -> Result<(), PolicyError> {
        self.viewer.observation(obs);
        self.inner.infer(obs, out)
    }
    fn candidates(&self) -> usize {
        self.inner.candidates()
    }
    fn infer_candidates(
        &mut self,
        obs: &Observation,
        out: &mut Candidates,
    ) -> Result<(), PolicyError> {
        self.viewer.observation(obs);
        self.inner.infer_candidates(obs, out)
    }
    fn initial_noise(&self) -> Option<&[f32]> {
        self.inner.initial_noise()
    }
    fn set_latent_noise(&mut self, on: bool) {
        self.inner.set_latent_noise(on)
    }
    fn set_next_noise(&mut self, noise: Vec<f32>) -> Result<(), PolicyError> {
        self.inner.set_next_noise(noise)
    }
    fn set_prompt(&mut self, prompt: &str) -> Result<(), PolicyError> {
        self.inner.set_prompt(prompt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!("spawn".parse(), Ok(Target::Spawn));
        assert_eq!("connect".parse(), Ok(Target::Connect(None)));
        assert_eq!(
            "connect=rerun+http://gpu:9876/proxy".parse(),
            Ok(Target::Connect(Some("rerun+http://gpu:9876/proxy".into())))
        );
        assert_eq!("save=a.rrd".parse(), Ok(Target::Save("a.rrd".into())));
        assert_eq!("run.rrd".parse(), Ok(Target::Save("run.rrd".into())));
        assert!("somewhere".parse::<Target>().is_err());
    }
}
