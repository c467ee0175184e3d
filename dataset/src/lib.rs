//! reflex-dataset: records a run's episodes as a LeRobotDataset v3.0.
//!
//! The tick captures rows into preallocated buffers and queues them
//! ([`reflex_runtime::recording`]); [`DatasetRecorder`]'s thread turns them into
//! dataset frames ([`lerobot::DatasetWriter`]: video encoding, parquet, the
//! crash-safe commit) and hands the buffers back. A row is held until the next
//! one arrives, so the episode's last row can carry `next.done` and the reward.

pub mod lerobot;
pub mod stats;
pub mod video;

use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use reflex_runtime::prompt::PromptCell;
use reflex_runtime::recording::{
    EpisodeEvent, EpisodePorts, EpisodeRequest, EpisodeRequests, EpisodesReport, FrameRow, Outcome,
    RewardModel, RewardSource,
};

pub use lerobot::{Cell, DatasetError, DatasetSpec, DatasetWriter, Feature, FeatureKind, Recovery};

/// What a row of the dataset holds, from the launch file.
#[derive(Debug, Clone)]
pub struct RowLayout {
    /// Joint names, then `gripper` when the robot has one.
    pub names: Vec<String>,
    /// Recorded cameras: name, width, height.
    pub cameras: Vec<(String, usize, usize)>,
    /// Cameras as video (else PNG images).
    pub video: bool,
}

impl RowLayout {
    /// The dataset's features, in the order [`row_cells`] fills them.
    pub fn spec(&self, fps: u32, robot_type: &str) -> DatasetSpec {
        let width = self.names.len();
        let names = Some(self.names.clone());
        let mut features = vec![
            feature(
                "observation.state",
                FeatureKind::Float32(width),
                names.clone(),
            ),
            feature("action", FeatureKind::Float32(width), names.clone()),
            feature("next.reward", FeatureKind::Float32(1), None),
            feature("next.done", FeatureKind::Bool, None),
            feature(
                "complementary_info.is_intervention",
                FeatureKind::Bool,
                None,
            ),
            feature(
                "complementary_info.policy_action",
                FeatureKind::Float32(width),
                names,
            ),
        ];
        for (name, width, height) in &self.cameras {
            let (width, height) = (*width, *height);
            features.push(feature(
                &format!("observation.images.{name}"),
                if self.video {
                    FeatureKind::Video { width, height }
                } else {
                    FeatureKind::Image { width, height }
                },
                None,
            ));
        }
        for (name, _, _) in &self.cameras {
            features.push(feature(
                &format!("reflex.images.{name}.stamp_s"),
                FeatureKind::Float64,
                None,
            ));
            features.push(feature(
                &format!("reflex.images.{name}.repeated"),
                FeatureKind::Bool,
                None,
            ));
        }
        for (key, kind) in [
            ("reflex.tick", FeatureKind::Int64),
            ("reflex.state_stamp_s", FeatureKind::Float64),
            ("reflex.skipped_periods", FeatureKind::Int64),
            ("reflex.rows_lost", FeatureKind::Int64),
            ("reflex.safety_flags", FeatureKind::Int64),
            ("reflex.model_version", FeatureKind::Int64),
        ] {
            features.push(feature(key, kind, None));
        }
        DatasetSpec {
            fps,
            robot_type: robot_type.to_string(),
            features,
        }
    }
}

fn feature(key: &str, kind: FeatureKind, names: Option<Vec<String>>) -> Feature {
    Feature {
        key: key.to_string(),
        kind,
        names,
    }
}

/// Converts a captured row into the dataset's cells (the order of [`RowLayout::spec`]).
struct RowCells {
    state: Vec<f32>,
    action: Vec<f32>,
    policy: Vec<f32>,
}

impl RowCells {
    fn write(
        &mut self,
        writer: &mut DatasetWriter,
        row: &FrameRow,
        done: bool,
        reward: f32,
    ) -> Result<(), DatasetError> {
        let width = row.width;
        let to_f32 = |out: &mut Vec<f32>, values: &[f64]| {
            out.clear();
            out.extend(values[..width].iter().map(|&v| v as f32));
        };
        to_f32(&mut self.state, &row.state);
        to_f32(&mut self.action, &row.executed);
        to_f32(&mut self.policy, &row.policy_action);
        let mut cells = vec![
            Cell::F32(&self.state),
            Cell::F32(&self.action),
            Cell::F32(std::slice::from_ref(&reward)),
            Cell::Bool(done),
            Cell::Bool(row.intervention),
            Cell::F32(&self.policy),
        ];
        for image in &row.images {
            cells.push(Cell::Rgb(&image.rgb));
        }
        for (image, repeated) in row.images.iter().zip(&row.repeated) {
            cells.push(Cell::F64(image.stamp_ns as f64 / 1e9));
            cells.push(Cell::Bool(*repeated));
        }
        cells.extend([
            Cell::I64(row.tick as i64),
            Cell::F64(row.state_stamp_ns as f64 / 1e9),
            Cell::I64(row.skipped_periods as i64),
            Cell::I64(row.rows_lost as i64),
            Cell::I64(i64::from(row.flags)),
            Cell::I64(i64::from(row.model_version)),
        ]);
        writer.add_frame(&cells)
    }
}

/// Writes rows into the dataset and hands each to the transition stream.
struct RowWriter<'a> {
    cells: RowCells,
    cameras: Vec<String>,
    transitions: &'a mut Option<Box<dyn TransitionSink>>,
}

impl RowWriter<'_> {
    fn write(
        &mut self,
        writer: &mut DatasetWriter,
        row: &FrameRow,
        task: &str,
        done: bool,
        reward: f32,
    ) -> Result<(), DatasetError> {
        let (episode_index, frame_index) = (writer.episodes(), writer.open_frames());
        self.cells.write(writer, row, done, reward)?;
        if let Some(sink) = self.transitions.as_mut() {
            sink.transition(&Transition {
                episode_index,
                frame_index,
                fps: writer.spec().fps,
                task,
                row,
                reward,
                done,
                cameras: &self.cameras,
            });
        }
        Ok(())
    }
}

/// Where an episode's task string comes from.
#[derive(Clone)]
pub enum TaskSource {
    Fixed(String),
    /// The run's instruction when the episode begins.
    Prompt(PromptCell),
}

/// Who decides success, and what the classifier's success does.
pub struct Rewards {
    pub source: RewardSource,
    /// `[reward_classifier]`, when `source` uses it.
    pub classifier: Option<Box<dyn RewardModel>>,
    /// The classifier's first success ends the episode.
    pub terminate_on_success: bool,
    /// Where that end is asked for (the tick's episode requests).
    pub requests: EpisodeRequests,
}

impl Rewards {
    /// Success as the operator says it (no classifier).
    pub fn key() -> Self {
        Self {
            source: RewardSource::Key,
            classifier: None,
            terminate_on_success: true,
            requests: EpisodeRequests::default(),
        }
    }
}

/// One written row as a learner sees it (see [`TransitionSink`]).
pub struct Transition<'a> {
    pub episode_index: u64,
    pub frame_index: u64,
    pub fps: u32,
    pub task: &'a str,
    pub row: &'a FrameRow,
    pub reward: f32,
    pub done: bool,
    /// The recorded cameras' dataset keys (`observation.images.<name>`).
    pub cameras: &'a [String],
}

/// Where transitions go as rows are written (the actor's stream to a learner).
pub trait TransitionSink: Send {
    fn transition(&mut self, t: &Transition<'_>);
    /// The episode was dropped (re-record): its transitions are void.
    fn discard(&mut self, episode_index: u64);
}

/// The recorder thread.
pub struct DatasetRecorder {
    thread: Option<JoinHandle<EpisodesReport>>,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl DatasetRecorder {
    pub fn spawn(
        mut writer: DatasetWriter,
        ports: EpisodePorts,
        task: TaskSource,
        mut rewards: Rewards,
        mut transitions: Option<Box<dyn TransitionSink>>,
    ) -> std::io::Result<Self> {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let done = done.clone();
            std::thread::Builder::new()
                .name("reflex-dataset".into())
                .spawn(move || {
                    record(
                        &mut writer,
                        &ports,
                        &task,
                        &mut rewards,
                        &mut transitions,
                        &done,
                    )
                })?
        };
        Ok(Self {
            thread: Some(thread),
            done,
        })
    }

    /// Writes what is queued (an open episode is finished by the tick's End
    /// event before this) and says what was recorded.
    pub fn finish(mut self) -> EpisodesReport {
        self.done.store(true, Ordering::Release);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_else(|| EpisodesReport {
                error: Some("the dataset thread panicked".into()),
                ..EpisodesReport::default()
            })
    }
}

impl Drop for DatasetRecorder {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The classifier's verdict on a row (false without one; an error counts as no
/// success and is reported, rate-limited).
fn judge(rewards: &mut Rewards, row: &FrameRow, errors: &mut u64) -> bool {
    let Some(model) = rewards.classifier.as_mut() else {
        return false;
    };
    match model.success_probability(row) {
        Ok(p) => f64::from(p) > model.threshold(),
        Err(e) => {
            *errors += 1;
            if errors.is_power_of_two() {
                tracing::warn!("reward classifier failed ({errors} so far): {e}");
            }
            false
        }
    }
}

fn record(
    writer: &mut DatasetWriter,
    ports: &EpisodePorts,
    task: &TaskSource,
    rewards: &mut Rewards,
    transitions: &mut Option<Box<dyn TransitionSink>>,
    done: &std::sync::atomic::AtomicBool,
) -> EpisodesReport {
    let mut report = EpisodesReport {
        root: writer.root().display().to_string(),
        first_episode: writer.episodes(),
        ..EpisodesReport::default()
    };
    let mut out = RowWriter {
        cells: RowCells {
            state: Vec::new(),
            action: Vec::new(),
            policy: Vec::new(),
        },
        cameras: (writer.spec().features.iter())
            .filter(|f| {
                matches!(
                    f.kind,
                    FeatureKind::Video { .. } | FeatureKind::Image { .. }
                )
            })
            .map(|f| f.key.clone())
            .collect(),
        transitions,
    };
    let mut episode_task = String::new();
    // The newest row, held until the next one shows whether it ends the episode.
    let mut held: Option<(Box<FrameRow>, bool)> = None;
    let mut open = false;
    // The classifier ended this episode: rows until the tick's End are dropped.
    let mut terminated = false;
    let mut classifier_errors = 0u64;
    let fail = |report: &mut EpisodesReport, e: DatasetError| {
        tracing::error!("recording stops: {e}");
        eprintln!("reflex: recording stops: {e}");
        report.error.get_or_insert_with(|| e.to_string());
        ports.failed.store(true, Ordering::Release);
    };
    loop {
        let Some(event) = ports.events.pop() else {
            if done.load(Ordering::Acquire) && ports.events.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
            continue;
        };
        if report.error.is_some() {
            // Nothing more is written; buffers still go back to the tick.
            if let EpisodeEvent::Row(row) = event {
                let _ = ports.free.push(row);
                ports.judged.fetch_add(1, Ordering::AcqRel);
            }
            continue;
        }
        match event {
            EpisodeEvent::Begin { episode, .. } => {
                let text = match task {
                    TaskSource::Fixed(t) => t.clone(),
                    TaskSource::Prompt(cell) => cell.get(),
                };
                if episode != writer.episodes() {
                    tracing::warn!(
                        "episode {episode} begins while the dataset holds {} episodes",
                        writer.episodes()
                    );
                }
                episode_task.clone_from(&text);
                if let Err(e) = writer.begin_episode(&text) {
                    fail(&mut report, e);
                    continue;
                }
                open = true;
                terminated = false;
            }
            EpisodeEvent::Row(row) => {
                if terminated {
                    let _ = ports.free.push(row);
                    ports.judged.fetch_add(1, Ordering::AcqRel);
                    continue;
                }
                let success = judge(rewards, &row, &mut classifier_errors);
                if success && rewards.terminate_on_success {
                    rewards.requests.raise(EpisodeRequest::Success);
                    terminated = true;
                }
                // After the request: the tick that waits for this sees it.
                ports.judged.fetch_add(1, Ordering::AcqRel);
                if let Some((previous, previous_success)) = held.replace((row, success))
                    && open
                {
                    // Without termination every row the classifier calls a success
                    // is rewarded (a sparse reward).
                    let reward = if previous_success { 1.0 } else { 0.0 };
                    let result = out.write(writer, &previous, &episode_task, false, reward);
                    let _ = ports.free.push(previous);
                    if let Err(e) = result {
                        fail(&mut report, e);
                    }
                }
            }
            EpisodeEvent::End { outcome, .. } => {
                let last = held.take();
                let mut succeeded = false;
                let result = match (outcome, last) {
                    (Outcome::Rerecord, last) => {
                        if let Some((row, _)) = last {
                            let _ = ports.free.push(row);
                        }
                        report.discarded += 1;
                        if let Some(sink) = out.transitions.as_mut() {
                            sink.discard(writer.episodes());
                        }
                        writer.discard_episode().map(|()| None)
                    }
                    (_, Some((row, classified))) => {
                        let said = outcome == Outcome::Success;
                        succeeded = match rewards.source {
                            RewardSource::Key => said,
                            RewardSource::Classifier => classified,
                            RewardSource::Both => said || classified,
                        };
                        let reward = if succeeded { 1.0 } else { 0.0 };
                        let written = out.write(writer, &row, &episode_task, true, reward);
                        let _ = ports.free.push(row);
                        written.and_then(|()| writer.finish_episode())
                    }
                    (_, None) => writer.discard_episode().map(|()| None),
                };
                open = false;
                terminated = false;
                match result {
                    Ok(Some(finished)) => {
                        report.saved += 1;
                        report.frames += finished.frames;
                        if succeeded {
                            report.successes += 1;
                        }
                        report.finalize_ms.push(finished.finalize_s * 1e3);
                        ports.saved.fetch_add(1, Ordering::AcqRel);
                        tracing::info!(
                            "episode {} saved: {} frames, {outcome:?} ({:.1} ms to finalize)",
                            finished.index,
                            finished.frames,
                            finished.finalize_s * 1e3
                        );
                    }
                    Ok(None) => {}
                    Err(e) => fail(&mut report, e),
                }
            }
        }
    }
    if let Some((row, _)) = held.take() {
        let _ = ports.free.push(row);
    }
    // A run that ended without the tick's End (a fault) leaves nothing half done.
    if open && let Err(e) = writer.discard_episode() {
        fail(&mut report, e);
    }
    report.total_episodes = writer.episodes();
    report
}

/// Opens (or with `resume` reopens) the dataset at `root`, printing what the
/// recovery of an interrupted run did.
pub fn open_dataset(
    root: &std::path::Path,
    spec: DatasetSpec,
    resume: bool,
) -> Result<DatasetWriter, DatasetError> {
    let (writer, recovery) = DatasetWriter::open(root, spec, resume)?;
    if let Some(episode) = recovery.rolled_forward {
        eprintln!(
            "reflex: {}: completed the interrupted save of episode {episode} (kept)",
            root.display()
        );
    }
    if let Some(what) = &recovery.discarded {
        eprintln!(
            "reflex: {}: discarded {what}, interrupted before it was saved",
            root.display()
        );
    }
    Ok(writer)
}
