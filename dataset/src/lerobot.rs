//! A LeRobotDataset v3.0 writer: exactly the layout the `lerobot` package loads.
//!
//! ```text
//! meta/info.json                       codebase_version "v3.0", fps, features, totals
//! meta/stats.json                      min / max / mean / std / count (+ quantiles)
//! meta/tasks.parquet                   task_index, indexed by the task string (pandas)
//! meta/episodes/chunk-000/file-000.parquet   one row per episode
//! data/chunk-XXX/file-XXX.parquet      one row per frame, many episodes per file
//! videos/<key>/chunk-XXX/file-XXX.mp4  h264, yuv420p
//! ```
//!
//! Crash safety: an episode is built in `.staging/episode/` (frames into the
//! video encoders as they come, rows in memory). Finishing it writes every file
//! that changes into `.staging/commit/`, fsyncs them, then writes the journal
//! `.staging/commit.json` (the commit point) and renames the files into place.
//! [`DatasetWriter::open`] rolls a journal forward and discards an unfinished
//! episode with a message, so a finished episode is never lost and the dataset
//! loads after any crash.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::builder::{
    BinaryBuilder, FixedSizeListBuilder, Float32Builder, Float64Builder, ListBuilder, StringBuilder,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Fields, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde_json::{Value, json};

use crate::stats::{FeatureStats, ImageAccumulator};
use crate::video::VideoEncoder;

pub const CODEBASE_VERSION: &str = "v3.0";
/// LeRobot's limits: files per chunk directory, MB per data file, MB per video file.
pub const CHUNK_SIZE: u64 = 1000;
pub const DATA_FILE_SIZE_MB: u64 = 100;
pub const VIDEO_FILE_SIZE_MB: u64 = 200;
const DATA_PATH: &str = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet";
const VIDEO_PATH: &str = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4";
const EPISODES_FILE: &str = "meta/episodes/chunk-000/file-000.parquet";
const STAGING: &str = ".staging";
/// Fault injection for the crash tests: the process aborts (as kill -9 would
/// stop it) at the named point of saving an episode: `videos` (encoders closed,
/// nothing written), `data` (the staged data file half written), `journal` (every
/// file staged, no journal yet), `commit` (journal written, two files moved).
pub const ABORT_ENV: &str = "REFLEX_DATASET_ABORT_AT";

fn abort_at(point: &str) {
    if std::env::var(ABORT_ENV).is_ok_and(|p| p == point) {
        eprintln!("reflex: {ABORT_ENV}={point}: aborting");
        std::process::abort();
    }
}
const JOURNAL: &str = "commit.json";

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: parquet: {message}")]
    Parquet { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error(
        "{0} already holds a dataset; pass --resume to append episodes to it, or record somewhere else"
    )]
    Exists(PathBuf),
    #[error("cannot resume {path}: {why}")]
    Incompatible { path: PathBuf, why: String },
    #[error("video `{key}`: {message}")]
    Video { key: String, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DatasetError + '_ {
    move |source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn pq_err(path: &Path) -> impl FnOnce(parquet::errors::ParquetError) -> DatasetError + '_ {
    move |e| DatasetError::Parquet {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// One column of the dataset beside LeRobot's five index columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Feature {
    /// `observation.state`, `action`, `observation.images.top`, ...
    pub key: String,
    pub kind: FeatureKind,
    /// Per-dimension names (joint names), written to info.json.
    pub names: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FeatureKind {
    /// float32, shape [n] (n = 1: a scalar column, as LeRobot stores shape (1,)).
    Float32(usize),
    /// float64 scalar (capture stamps in seconds keep their precision).
    Float64,
    Int64,
    Bool,
    /// An RGB camera stored as h264 video.
    Video {
        width: usize,
        height: usize,
    },
    /// An RGB camera stored losslessly as PNG in the parquet rows (LeRobot's
    /// `image` dtype).
    Image {
        width: usize,
        height: usize,
    },
}

impl FeatureKind {
    fn dtype(self) -> &'static str {
        match self {
            FeatureKind::Float32(_) => "float32",
            FeatureKind::Float64 => "float64",
            FeatureKind::Int64 => "int64",
            FeatureKind::Bool => "bool",
            FeatureKind::Video { .. } => "video",
            FeatureKind::Image { .. } => "image",
        }
    }

    fn is_camera(self) -> bool {
        matches!(self, FeatureKind::Video { .. } | FeatureKind::Image { .. })
    }
}

/// A row's value for one feature, in the order of [`DatasetSpec::features`].
#[derive(Debug, Clone, Copy)]
pub enum Cell<'a> {
    F32(&'a [f32]),
    F64(f64),
    I64(i64),
    Bool(bool),
    /// Packed RGB, height * width * 3 bytes.
    Rgb(&'a [u8]),
}

/// What a dataset holds.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetSpec {
    pub fps: u32,
    pub robot_type: String,
    pub features: Vec<Feature>,
}

impl DatasetSpec {
    fn info_features(&self) -> Value {
        let mut features = serde_json::Map::new();
        for f in &self.features {
            let value = match f.kind {
                FeatureKind::Video { width, height } | FeatureKind::Image { width, height } => {
                    let mut v = json!({
                        "dtype": f.kind.dtype(),
                        "shape": [height, width, 3],
                        "names": ["height", "width", "channels"],
                    });
                    if matches!(f.kind, FeatureKind::Video { .. }) {
                        v["info"] = json!({
                            "video.height": height,
                            "video.width": width,
                            "video.codec": "h264",
                            "video.pix_fmt": "yuv420p",
                            "video.is_depth_map": false,
                            "video.fps": self.fps,
                            "video.channels": 3,
                            "has_audio": false,
                        });
                    }
                    v
                }
                kind => json!({
                    "dtype": kind.dtype(),
                    "shape": [match kind { FeatureKind::Float32(n) => n, _ => 1 }],
                    "names": f.names,
                }),
            };
            features.insert(f.key.clone(), value);
        }
        for key in [
            "timestamp",
            "frame_index",
            "episode_index",
            "index",
            "task_index",
        ] {
            let dtype = if key == "timestamp" {
                "float32"
            } else {
                "int64"
            };
            features.insert(
                key.into(),
                json!({"dtype": dtype, "shape": [1], "names": null}),
            );
        }
        Value::Object(features)
    }
}

/// One finished episode's row in meta/episodes.
#[derive(Debug, Clone)]
struct EpisodeRow {
    index: u64,
    tasks: Vec<String>,
    length: u64,
    data_file: (u64, u64),
    from_index: u64,
    /// Per video feature: (chunk, file, from_timestamp, to_timestamp).
    videos: Vec<(u64, u64, f64, f64)>,
    stats: Vec<FeatureStats>,
}

/// The episode being recorded.
struct OpenEpisode {
    task_index: u64,
    frames: u64,
    columns: Vec<ColumnBuffer>,
    encoders: Vec<Option<VideoEncoder>>,
    images: Vec<Option<ImageAccumulator>>,
}

enum ColumnBuffer {
    F32 {
        len: usize,
        values: Vec<f32>,
    },
    F64(Vec<f64>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
    /// PNG bytes per frame.
    Png(Vec<Vec<u8>>),
    /// Frames went to a video encoder.
    Video,
}

/// What finishing an episode did.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedEpisode {
    pub index: u64,
    pub frames: u64,
    /// Time spent finalizing (closing videos, writing and renaming files), s.
    pub finalize_s: f64,
}

/// What opening a dataset found and did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovery {
    /// An interrupted commit was completed (its episode is kept).
    pub rolled_forward: Option<u64>,
    /// An unfinished episode was discarded: (episode index, frames buffered on disk).
    pub discarded: Option<String>,
}

pub struct DatasetWriter {
    root: PathBuf,
    spec: DatasetSpec,
    info: Value,
    tasks: Vec<String>,
    episodes: Vec<EpisodeRow>,
    total_frames: u64,
    stats: Vec<Option<FeatureStats>>,
    episode: Option<OpenEpisode>,
}

/// Indices of the video features among all features.
fn video_keys(spec: &DatasetSpec) -> Vec<&Feature> {
    spec.features
        .iter()
        .filter(|f| matches!(f.kind, FeatureKind::Video { .. }))
        .collect()
}

impl DatasetWriter {
    /// Creates a dataset at `root`, or with `resume` appends to the one there
    /// (its features must equal `spec`'s). Either way an interrupted commit is
    /// completed and an unfinished episode discarded first (see [`Recovery`]).
    pub fn open(
        root: &Path,
        spec: DatasetSpec,
        resume: bool,
    ) -> Result<(Self, Recovery), DatasetError> {
        check_spec(&spec)?;
        let recovery = recover(root)?;
        let info_path = root.join("meta/info.json");
        let exists = info_path.exists();
        if exists && !resume {
            return Err(DatasetError::Exists(root.to_path_buf()));
        }
        let mut writer = Self {
            root: root.to_path_buf(),
            info: json!({}),
            tasks: Vec::new(),
            episodes: Vec::new(),
            total_frames: 0,
            stats: vec![None; spec.features.len()],
            episode: None,
            spec,
        };
        if exists {
            writer.load_existing()?;
        } else {
            fs::create_dir_all(root).map_err(io_err(root))?;
            writer.info = writer.fresh_info();
        }
        Ok((writer, recovery))
    }

    fn fresh_info(&self) -> Value {
        let videos = !video_keys(&self.spec).is_empty();
        json!({
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.spec.robot_type,
            "total_episodes": 0,
            "total_frames": 0,
            "total_tasks": 0,
            "chunks_size": CHUNK_SIZE,
            "data_files_size_in_mb": DATA_FILE_SIZE_MB,
            "video_files_size_in_mb": VIDEO_FILE_SIZE_MB,
            "fps": self.spec.fps,
            "splits": {},
            "data_path": DATA_PATH,
            "video_path": if videos { Value::from(VIDEO_PATH) } else { Value::Null },
            "features": self.spec.info_features(),
        })
    }

    fn load_existing(&mut self) -> Result<(), DatasetError> {
        let root = self.root.clone();
        let incompatible = |why: String| DatasetError::Incompatible {
            path: root.clone(),
            why,
        };
        let info_path = self.root.join("meta/info.json");
        let info: Value = read_json(&info_path)?;
        if info["codebase_version"] != CODEBASE_VERSION {
            return Err(incompatible(format!(
                "codebase_version is {}, this writer writes {CODEBASE_VERSION}",
                info["codebase_version"]
            )));
        }
        if info["fps"] != self.spec.fps {
            return Err(incompatible(format!(
                "it was recorded at {} fps, this run records at {}",
                info["fps"], self.spec.fps
            )));
        }
        if info["features"] != self.spec.info_features() {
            return Err(incompatible(format!(
                "its features differ from this run's: {} vs {}",
                info["features"],
                self.spec.info_features()
            )));
        }
        self.tasks = read_tasks(&self.root.join("meta/tasks.parquet"))?;
        self.episodes = read_episodes(&self.root.join(EPISODES_FILE), &self.spec)?;
        self.total_frames = self.episodes.iter().map(|e| e.length).sum();
        let expected = (
            info["total_episodes"].as_u64(),
            info["total_frames"].as_u64(),
        );
        if expected != (Some(self.episodes.len() as u64), Some(self.total_frames)) {
            return Err(incompatible(format!(
                "info.json counts {:?} episodes / frames, meta/episodes holds {} / {}",
                expected,
                self.episodes.len(),
                self.total_frames
            )));
        }
        for (i, e) in self.episodes.iter().enumerate() {
            if e.index != i as u64 {
                return Err(incompatible(format!(
                    "episode indices are not contiguous: row {i} holds episode {}",
                    e.index
                )));
            }
        }
        self.stats = aggregate_all(&self.episodes, self.spec.features.len());
        self.info = info;
        Ok(())
    }

    pub fn spec(&self) -> &DatasetSpec {
        &self.spec
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Episodes on disk.
    pub fn episodes(&self) -> u64 {
        self.episodes.len() as u64
    }

    pub fn total_frames(&self) -> u64 {
        self.total_frames
    }

    /// Frames in the episode being recorded (0 when none is).
    pub fn open_frames(&self) -> u64 {
        self.episode.as_ref().map_or(0, |e| e.frames)
    }

    fn staging(&self) -> PathBuf {
        self.root.join(STAGING)
    }

    /// Starts episode [`Self::episodes`] with the task string `task`.
    pub fn begin_episode(&mut self, task: &str) -> Result<(), DatasetError> {
        if self.episode.is_some() {
            self.discard_episode()?;
        }
        let dir = self.staging().join("episode");
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let task_index = match self.tasks.iter().position(|t| t == task) {
            Some(i) => i as u64,
            None => {
                self.tasks.push(task.to_string());
                self.tasks.len() as u64 - 1
            }
        };
        let mut encoders = Vec::new();
        let mut images = Vec::new();
        let mut columns = Vec::new();
        for (i, f) in self.spec.features.iter().enumerate() {
            columns.push(match f.kind {
                FeatureKind::Float32(len) => ColumnBuffer::F32 {
                    len,
                    values: Vec::new(),
                },
                FeatureKind::Float64 => ColumnBuffer::F64(Vec::new()),
                FeatureKind::Int64 => ColumnBuffer::I64(Vec::new()),
                FeatureKind::Bool => ColumnBuffer::Bool(Vec::new()),
                FeatureKind::Image { .. } => ColumnBuffer::Png(Vec::new()),
                FeatureKind::Video { .. } => ColumnBuffer::Video,
            });
            encoders.push(match f.kind {
                FeatureKind::Video { width, height } => Some(
                    VideoEncoder::create(
                        &dir.join(format!("{i}.mp4")),
                        width,
                        height,
                        self.spec.fps,
                    )
                    .map_err(|message| DatasetError::Video {
                        key: f.key.clone(),
                        message,
                    })?,
                ),
                _ => None,
            });
            images.push(f.kind.is_camera().then(ImageAccumulator::default));
        }
        // Says which episode the staged files belong to, for the recovery message.
        let marker = dir.join("episode.json");
        fs::write(
            &marker,
            json!({"episode_index": self.episodes.len(), "task": task}).to_string(),
        )
        .map_err(io_err(&marker))?;
        self.episode = Some(OpenEpisode {
            task_index,
            frames: 0,
            columns,
            encoders,
            images,
        });
        Ok(())
    }

    /// Appends one frame (the cells in feature order) to the open episode.
    pub fn add_frame(&mut self, cells: &[Cell<'_>]) -> Result<(), DatasetError> {
        let features = &self.spec.features;
        let Some(episode) = &mut self.episode else {
            return Err(DatasetError::Invalid(
                "add_frame: no episode is open".into(),
            ));
        };
        if cells.len() != features.len() {
            return Err(DatasetError::Invalid(format!(
                "a frame has {} values, the dataset {} features",
                cells.len(),
                features.len()
            )));
        }
        for (i, (f, cell)) in features.iter().zip(cells).enumerate() {
            let mismatch = || {
                DatasetError::Invalid(format!(
                    "feature `{}` ({:?}) got {:?}",
                    f.key,
                    f.kind,
                    describe(cell)
                ))
            };
            match (&mut episode.columns[i], *cell) {
                (ColumnBuffer::F32 { len, values }, Cell::F32(v)) if v.len() == *len => {
                    values.extend_from_slice(v)
                }
                (ColumnBuffer::F64(values), Cell::F64(v)) => values.push(v),
                (ColumnBuffer::I64(values), Cell::I64(v)) => values.push(v),
                (ColumnBuffer::Bool(values), Cell::Bool(v)) => values.push(v),
                (column @ (ColumnBuffer::Png(_) | ColumnBuffer::Video), Cell::Rgb(rgb)) => {
                    let (FeatureKind::Video { width, height }
                    | FeatureKind::Image { width, height }) = f.kind
                    else {
                        return Err(mismatch());
                    };
                    if rgb.len() != width * height * 3 {
                        return Err(DatasetError::Invalid(format!(
                            "camera `{}` is {width}x{height}, a frame has {} bytes, not {}",
                            f.key,
                            rgb.len(),
                            width * height * 3
                        )));
                    }
                    if let Some(acc) = &mut episode.images[i] {
                        acc.add(rgb);
                    }
                    let video_error = |message| DatasetError::Video {
                        key: f.key.clone(),
                        message,
                    };
                    match column {
                        ColumnBuffer::Png(frames) => frames.push(
                            crate::video::encode_png(rgb, width, height).map_err(video_error)?,
                        ),
                        _ => {
                            if let Some(encoder) = &mut episode.encoders[i] {
                                encoder.write(rgb).map_err(video_error)?;
                            }
                        }
                    }
                }
                _ => return Err(mismatch()),
            }
        }
        episode.frames += 1;
        Ok(())
    }

    /// Drops the open episode (re-record, or a run that ends mid-episode); nothing
    /// on disk changes but the staging directory.
    pub fn discard_episode(&mut self) -> Result<(), DatasetError> {
        if let Some(mut episode) = self.episode.take() {
            // A task first named by this episode is forgotten with it.
            self.tasks.truncate(self.task_count_on_disk());
            for encoder in episode.encoders.iter_mut().flatten() {
                encoder.close();
            }
        }
        let dir = self.staging().join("episode");
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        Ok(())
    }

    /// Tasks referenced by the episodes on disk.
    fn task_count_on_disk(&self) -> usize {
        self.info["total_tasks"].as_u64().unwrap_or(0) as usize
    }

    /// Writes the open episode into the dataset (atomically; see the module doc).
    /// An episode without frames is discarded instead.
    pub fn finish_episode(&mut self) -> Result<Option<FinishedEpisode>, DatasetError> {
        let started = Instant::now();
        let Some(mut episode) = self.episode.take() else {
            return Ok(None);
        };
        if episode.frames == 0 {
            self.episode = Some(episode);
            self.discard_episode()?;
            return Ok(None);
        }
        for encoder in episode.encoders.iter_mut().flatten() {
            encoder.finish().map_err(|message| DatasetError::Video {
                key: "?".into(),
                message,
            })?;
        }
        abort_at("videos");
        let index = self.episodes.len() as u64;
        let frames = episode.frames;
        let commit_dir = self.staging().join("commit");
        if commit_dir.exists() {
            fs::remove_dir_all(&commit_dir).map_err(io_err(&commit_dir))?;
        }
        fs::create_dir_all(&commit_dir).map_err(io_err(&commit_dir))?;
        let mut moves: Vec<(String, String)> = Vec::new();

        // Data rows: appended to the newest data file unless it is full.
        let batch = self.episode_batch(&episode, index)?;
        let (mut chunk, mut file) = self.episodes.last().map_or((0, 0), |e| e.data_file);
        let mut batches = Vec::new();
        let current = self.root.join(data_path(chunk, file));
        if !self.episodes.is_empty() {
            let size = fs::metadata(&current).map_err(io_err(&current))?.len();
            if size >= DATA_FILE_SIZE_MB << 20 {
                (chunk, file) = next_file(chunk, file);
            } else {
                batches = read_batches(&current)?;
            }
        }
        batches.push(batch);
        let staged = commit_dir.join("data.parquet");
        write_parquet(&staged, &batches, None)?;
        if std::env::var(ABORT_ENV).is_ok_and(|p| p == "data") {
            // A data file cut in the middle, as a crash mid-write leaves it.
            let len = fs::metadata(&staged).map_err(io_err(&staged))?.len();
            File::options()
                .write(true)
                .open(&staged)
                .and_then(|f| f.set_len(len / 2))
                .map_err(io_err(&staged))?;
            abort_at("data");
        }
        moves.push(("commit/data.parquet".into(), data_path(chunk, file)));

        // Videos: appended to the camera's newest file (packets copied, the
        // episode's stamps shifted behind what it holds) until the file would pass
        // LeRobot's size limit; then a new file.
        let mut videos = Vec::new();
        let duration = frames as f64 / self.spec.fps as f64;
        for (v, (i, f)) in self
            .spec
            .features
            .iter()
            .enumerate()
            .filter(|(_, f)| matches!(f.kind, FeatureKind::Video { .. }))
            .enumerate()
        {
            let staged = self.staging().join(format!("episode/{i}.mp4"));
            let video_error = |message| DatasetError::Video {
                key: f.key.clone(),
                message,
            };
            let written = crate::video::count_frames(&staged).map_err(video_error)?;
            if written != frames {
                return Err(video_error(format!(
                    "the encoder wrote {written} of {frames} frames (a full disk?)"
                )));
            }
            let latest = self.episodes.last().map(|e| e.videos[v]);
            let target = latest.and_then(|(chunk, file, _, to)| {
                let path = self.root.join(video_path(&f.key, chunk, file));
                let size = fs::metadata(&path).ok()?.len() + fs::metadata(&staged).ok()?.len();
                (size < VIDEO_FILE_SIZE_MB << 20).then_some((chunk, file, to, path))
            });
            match target {
                Some((chunk, file, from, current)) => {
                    let merged = commit_dir.join(format!("video-{i}.mp4"));
                    crate::video::concatenate(&current, &staged, from, &merged)
                        .map_err(video_error)?;
                    moves.push((
                        format!("commit/video-{i}.mp4"),
                        video_path(&f.key, chunk, file),
                    ));
                    videos.push((chunk, file, from, from + duration));
                }
                None => {
                    let (chunk, file) = latest.map_or((0, 0), |(c, f, _, _)| next_file(c, f));
                    moves.push((format!("episode/{i}.mp4"), video_path(&f.key, chunk, file)));
                    videos.push((chunk, file, 0.0, duration));
                }
            }
        }

        // Statistics of this episode and of the whole dataset.
        let mut episode_stats = Vec::new();
        for i in 0..self.spec.features.len() {
            episode_stats.push(match (&episode.columns[i], &episode.images[i]) {
                (_, Some(acc)) => acc.stats(),
                (ColumnBuffer::F32 { len, values }, _) => FeatureStats::of_rows(
                    &values.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
                    *len,
                ),
                (ColumnBuffer::F64(values), _) => FeatureStats::of_rows(values, 1),
                (ColumnBuffer::I64(values), _) => {
                    FeatureStats::of_rows(&values.iter().map(|&v| v as f64).collect::<Vec<_>>(), 1)
                }
                (ColumnBuffer::Bool(values), _) => FeatureStats::of_rows(
                    &values
                        .iter()
                        .map(|&v| f64::from(u8::from(v)))
                        .collect::<Vec<_>>(),
                    1,
                ),
                _ => FeatureStats::empty(),
            });
        }
        let row = EpisodeRow {
            index,
            tasks: vec![self.tasks[episode.task_index as usize].clone()],
            length: frames,
            data_file: (chunk, file),
            from_index: self.total_frames,
            videos,
            stats: episode_stats,
        };
        let mut episodes = self.episodes.clone();
        episodes.push(row);
        let staged = commit_dir.join("episodes.parquet");
        write_parquet(&staged, &[episodes_batch(&episodes, &self.spec)?], None)?;
        moves.push(("commit/episodes.parquet".into(), EPISODES_FILE.into()));

        let staged = commit_dir.join("tasks.parquet");
        write_tasks(&staged, &self.tasks)?;
        moves.push(("commit/tasks.parquet".into(), "meta/tasks.parquet".into()));

        let stats = aggregate_all(&episodes, self.spec.features.len());
        let staged = commit_dir.join("stats.json");
        write_durable(
            &staged,
            stats_json(&self.spec, &stats).to_string().as_bytes(),
        )?;
        moves.push(("commit/stats.json".into(), "meta/stats.json".into()));

        let mut info = self.info.clone();
        let total_frames = self.total_frames + frames;
        info["total_episodes"] = json!(episodes.len());
        info["total_frames"] = json!(total_frames);
        info["total_tasks"] = json!(self.tasks.len());
        info["splits"] = json!({"train": format!("0:{}", episodes.len())});
        let staged = commit_dir.join("info.json");
        write_durable(
            &staged,
            serde_json::to_string_pretty(&info)
                .unwrap_or_default()
                .as_bytes(),
        )?;
        moves.push(("commit/info.json".into(), "meta/info.json".into()));

        abort_at("journal");
        // The commit point: once the journal is on disk the episode is kept.
        let journal = self.staging().join(JOURNAL);
        write_durable(
            &journal,
            json!({"episode_index": index, "moves": moves})
                .to_string()
                .as_bytes(),
        )?;
        sync_dir(&self.staging())?;
        apply_journal(&self.root)?;
        // Nothing staged is left: the next start has nothing to recover.
        let staging = self.staging();
        fs::remove_dir_all(&staging).map_err(io_err(&staging))?;

        self.episodes = episodes;
        self.total_frames = total_frames;
        self.stats = stats;
        self.info = info;
        Ok(Some(FinishedEpisode {
            index,
            frames,
            finalize_s: started.elapsed().as_secs_f64(),
        }))
    }

    /// The episode's rows as one record batch.
    fn episode_batch(
        &self,
        episode: &OpenEpisode,
        index: u64,
    ) -> Result<RecordBatch, DatasetError> {
        let n = episode.frames as usize;
        let mut fields = Vec::new();
        let mut arrays: Vec<ArrayRef> = Vec::new();
        for (f, column) in self.spec.features.iter().zip(&episode.columns) {
            let array: ArrayRef = match column {
                ColumnBuffer::Video => continue,
                ColumnBuffer::F32 { len: 1, values } => {
                    Arc::new(arrow_array::Float32Array::from(values.clone()))
                }
                ColumnBuffer::F32 { len, values } => {
                    let mut b = FixedSizeListBuilder::new(Float32Builder::new(), *len as i32)
                        .with_field(Field::new("item", DataType::Float32, true));
                    for row in values.chunks(*len) {
                        b.values().append_slice(row);
                        b.append(true);
                    }
                    Arc::new(b.finish())
                }
                ColumnBuffer::F64(values) => {
                    Arc::new(arrow_array::Float64Array::from(values.clone()))
                }
                ColumnBuffer::I64(values) => {
                    Arc::new(arrow_array::Int64Array::from(values.clone()))
                }
                ColumnBuffer::Bool(values) => {
                    Arc::new(arrow_array::BooleanArray::from(values.clone()))
                }
                ColumnBuffer::Png(frames) => {
                    let mut bytes = BinaryBuilder::new();
                    let mut paths = StringBuilder::new();
                    for png in frames {
                        bytes.append_value(png);
                        paths.append_null();
                    }
                    Arc::new(arrow_array::StructArray::new(
                        image_fields(),
                        vec![Arc::new(bytes.finish()), Arc::new(paths.finish())],
                        None,
                    ))
                }
            };
            fields.push(Field::new(&f.key, array.data_type().clone(), true));
            arrays.push(array);
        }
        let fps = self.spec.fps as f64;
        let index_columns: [(&str, ArrayRef); 5] = [
            (
                "timestamp",
                Arc::new(arrow_array::Float32Array::from_iter_values(
                    (0..n).map(|i| (i as f64 / fps) as f32),
                )),
            ),
            (
                "frame_index",
                Arc::new(arrow_array::Int64Array::from_iter_values(0..n as i64)),
            ),
            (
                "episode_index",
                Arc::new(arrow_array::Int64Array::from_iter_values(
                    std::iter::repeat_n(index as i64, n),
                )),
            ),
            (
                "index",
                Arc::new(arrow_array::Int64Array::from_iter_values(
                    (0..n as i64).map(|i| i + self.total_frames as i64),
                )),
            ),
            (
                "task_index",
                Arc::new(arrow_array::Int64Array::from_iter_values(
                    std::iter::repeat_n(episode.task_index as i64, n),
                )),
            ),
        ];
        for (name, array) in index_columns {
            fields.push(Field::new(name, array.data_type().clone(), true));
            arrays.push(array);
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .map_err(|e| DatasetError::Invalid(format!("episode rows: {e}")))
    }
}

fn describe(cell: &Cell<'_>) -> String {
    match cell {
        Cell::F32(v) => format!("{} float32 values", v.len()),
        Cell::F64(_) => "a float64".into(),
        Cell::I64(_) => "an int64".into(),
        Cell::Bool(_) => "a bool".into(),
        Cell::Rgb(v) => format!("an image of {} bytes", v.len()),
    }
}

fn check_spec(spec: &DatasetSpec) -> Result<(), DatasetError> {
    if spec.fps == 0 {
        return Err(DatasetError::Invalid(
            "the dataset's fps must be at least 1".into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for f in &spec.features {
        if [
            "timestamp",
            "frame_index",
            "episode_index",
            "index",
            "task_index",
        ]
        .contains(&f.key.as_str())
            || !seen.insert(f.key.as_str())
        {
            return Err(DatasetError::Invalid(format!(
                "feature `{}` is reserved or given twice",
                f.key
            )));
        }
        if f.key.contains('/') {
            return Err(DatasetError::Invalid(format!(
                "feature `{}`: LeRobot feature names cannot contain '/'",
                f.key
            )));
        }
    }
    Ok(())
}

fn image_fields() -> Fields {
    Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ])
}

pub fn data_path(chunk: u64, file: u64) -> String {
    format!("data/chunk-{chunk:03}/file-{file:03}.parquet")
}

pub fn video_path(key: &str, chunk: u64, file: u64) -> String {
    format!("videos/{key}/chunk-{chunk:03}/file-{file:03}.mp4")
}

fn next_file(chunk: u64, file: u64) -> (u64, u64) {
    if file + 1 == CHUNK_SIZE {
        (chunk + 1, 0)
    } else {
        (chunk, file + 1)
    }
}

/// Writes `bytes` to `path` and fsyncs it.
fn write_durable(path: &Path, bytes: &[u8]) -> Result<(), DatasetError> {
    let mut f = File::create(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn sync_dir(dir: &Path) -> Result<(), DatasetError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn read_json(path: &Path) -> Result<Value, DatasetError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text)
        .map_err(|e| DatasetError::Invalid(format!("{}: {e}", path.display())))
}

fn write_parquet(
    path: &Path,
    batches: &[RecordBatch],
    metadata: Option<(&str, String)>,
) -> Result<(), DatasetError> {
    let Some(first) = batches.first() else {
        return Err(DatasetError::Invalid("nothing to write".into()));
    };
    let mut schema = first.schema().as_ref().clone();
    if let Some((key, value)) = metadata {
        schema = schema.with_metadata(std::collections::HashMap::from([(key.to_string(), value)]));
    }
    let file = File::create(path).map_err(io_err(path))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer =
        ArrowWriter::try_new(file, Arc::new(schema.clone()), Some(props)).map_err(pq_err(path))?;
    for batch in batches {
        let batch = batch
            .clone()
            .with_schema(Arc::new(schema.clone()))
            .map_err(|e| DatasetError::Parquet {
                path: path.to_path_buf(),
                message: format!("rows do not match the file's columns: {e}"),
            })?;
        writer.write(&batch).map_err(pq_err(path))?;
    }
    let file = writer.into_inner().map_err(pq_err(path))?;
    file.sync_all().map_err(io_err(path))
}

fn read_batches(path: &Path) -> Result<Vec<RecordBatch>, DatasetError> {
    let file = File::open(path).map_err(io_err(path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(pq_err(path))?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DatasetError::Parquet {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// meta/tasks.parquet as pandas writes `DataFrame({"task_index": ...}, index=tasks)`:
/// the index is the task string, named in the pandas metadata.
fn write_tasks(path: &Path, tasks: &[String]) -> Result<(), DatasetError> {
    let schema = Schema::new(vec![
        Field::new("task_index", DataType::Int64, true),
        Field::new("__index_level_0__", DataType::Utf8, true),
    ]);
    let batch = RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(arrow_array::Int64Array::from_iter_values(
                0..tasks.len() as i64,
            )),
            Arc::new(arrow_array::StringArray::from_iter_values(tasks)),
        ],
    )
    .map_err(|e| DatasetError::Invalid(e.to_string()))?;
    let pandas = json!({
        "index_columns": ["__index_level_0__"],
        "column_indexes": [{"name": null, "field_name": null, "pandas_type": "unicode",
                            "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
             "numpy_type": "int64", "metadata": null},
            {"name": null, "field_name": "__index_level_0__", "pandas_type": "unicode",
             "numpy_type": "object", "metadata": null},
        ],
        "creator": {"library": "reflex", "version": env!("CARGO_PKG_VERSION")},
        "pandas_version": "2.2.3",
    });
    write_parquet(path, &[batch], Some(("pandas", pandas.to_string())))
}

fn read_tasks(path: &Path) -> Result<Vec<String>, DatasetError> {
    let mut tasks: Vec<(i64, String)> = Vec::new();
    for batch in read_batches(path)? {
        let index = batch.column_by_name("task_index").and_then(|c| {
            c.as_any()
                .downcast_ref::<arrow_array::Int64Array>()
                .cloned()
        });
        let names = batch
            .column_by_name("__index_level_0__")
            .or_else(|| batch.column_by_name("task"))
            .and_then(|c| {
                c.as_any()
                    .downcast_ref::<arrow_array::StringArray>()
                    .cloned()
            });
        let (Some(index), Some(names)) = (index, names) else {
            return Err(DatasetError::Invalid(format!(
                "{}: expected columns task_index and the task strings",
                path.display()
            )));
        };
        for i in 0..batch.num_rows() {
            tasks.push((index.value(i), names.value(i).to_string()));
        }
    }
    tasks.sort();
    for (i, (index, _)) in tasks.iter().enumerate() {
        if *index != i as i64 {
            return Err(DatasetError::Invalid(format!(
                "{}: task indices are not 0..{}",
                path.display(),
                tasks.len()
            )));
        }
    }
    Ok(tasks.into_iter().map(|(_, t)| t).collect())
}

const STAT_NAMES: [&str; 10] = [
    "min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99",
];

fn episodes_batch(rows: &[EpisodeRow], spec: &DatasetSpec) -> Result<RecordBatch, DatasetError> {
    let mut fields: Vec<Field> = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    let push_i64 =
        |name: String, values: Vec<i64>, fields: &mut Vec<Field>, arrays: &mut Vec<ArrayRef>| {
            fields.push(Field::new(name, DataType::Int64, true));
            arrays.push(Arc::new(arrow_array::Int64Array::from(values)));
        };
    push_i64(
        "episode_index".into(),
        rows.iter().map(|r| r.index as i64).collect(),
        &mut fields,
        &mut arrays,
    );
    let mut tasks = ListBuilder::new(StringBuilder::new());
    for r in rows {
        for t in &r.tasks {
            tasks.values().append_value(t);
        }
        tasks.append(true);
    }
    let tasks = tasks.finish();
    fields.push(Field::new("tasks", tasks.data_type().clone(), true));
    arrays.push(Arc::new(tasks));
    push_i64(
        "length".into(),
        rows.iter().map(|r| r.length as i64).collect(),
        &mut fields,
        &mut arrays,
    );
    push_i64(
        "data/chunk_index".into(),
        rows.iter().map(|r| r.data_file.0 as i64).collect(),
        &mut fields,
        &mut arrays,
    );
    push_i64(
        "data/file_index".into(),
        rows.iter().map(|r| r.data_file.1 as i64).collect(),
        &mut fields,
        &mut arrays,
    );
    push_i64(
        "dataset_from_index".into(),
        rows.iter().map(|r| r.from_index as i64).collect(),
        &mut fields,
        &mut arrays,
    );
    push_i64(
        "dataset_to_index".into(),
        rows.iter()
            .map(|r| (r.from_index + r.length) as i64)
            .collect(),
        &mut fields,
        &mut arrays,
    );
    for (v, f) in video_keys(spec).iter().enumerate() {
        push_i64(
            format!("videos/{}/chunk_index", f.key),
            rows.iter().map(|r| r.videos[v].0 as i64).collect(),
            &mut fields,
            &mut arrays,
        );
        push_i64(
            format!("videos/{}/file_index", f.key),
            rows.iter().map(|r| r.videos[v].1 as i64).collect(),
            &mut fields,
            &mut arrays,
        );
        for (name, pick) in [("from_timestamp", 2), ("to_timestamp", 3)] {
            let values: Vec<f64> = rows
                .iter()
                .map(|r| {
                    if pick == 2 {
                        r.videos[v].2
                    } else {
                        r.videos[v].3
                    }
                })
                .collect();
            fields.push(Field::new(
                format!("videos/{}/{name}", f.key),
                DataType::Float64,
                true,
            ));
            arrays.push(Arc::new(arrow_array::Float64Array::from(values)));
        }
    }
    push_i64(
        "meta/episodes/chunk_index".into(),
        vec![0; rows.len()],
        &mut fields,
        &mut arrays,
    );
    push_i64(
        "meta/episodes/file_index".into(),
        vec![0; rows.len()],
        &mut fields,
        &mut arrays,
    );
    // Per-episode statistics as flat lists (a camera's [3, 1, 1] flattened); the
    // loader skips `stats/` columns, and reflex reads them back on resume.
    for (i, f) in spec.features.iter().enumerate() {
        for (s, stat) in STAT_NAMES.iter().enumerate() {
            let mut b = ListBuilder::new(Float64Builder::new());
            for r in rows {
                b.values().append_slice(r.stats[i].field(s));
                b.append(true);
            }
            let array = b.finish();
            fields.push(Field::new(
                format!("stats/{}/{stat}", f.key),
                array.data_type().clone(),
                true,
            ));
            arrays.push(Arc::new(array));
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| DatasetError::Invalid(format!("meta/episodes: {e}")))
}

fn read_episodes(path: &Path, spec: &DatasetSpec) -> Result<Vec<EpisodeRow>, DatasetError> {
    let bad = |what: String| DatasetError::Invalid(format!("{}: {what}", path.display()));
    let mut rows = Vec::new();
    for batch in read_batches(path)? {
        let int = |name: &str| -> Result<arrow_array::Int64Array, DatasetError> {
            batch
                .column_by_name(name)
                .and_then(|c| {
                    c.as_any()
                        .downcast_ref::<arrow_array::Int64Array>()
                        .cloned()
                })
                .ok_or_else(|| bad(format!("no int64 column `{name}`")))
        };
        let float = |name: &str| -> Result<arrow_array::Float64Array, DatasetError> {
            batch
                .column_by_name(name)
                .and_then(|c| {
                    c.as_any()
                        .downcast_ref::<arrow_array::Float64Array>()
                        .cloned()
                })
                .ok_or_else(|| bad(format!("no float64 column `{name}`")))
        };
        let list = |name: &str| -> Result<arrow_array::ListArray, DatasetError> {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<arrow_array::ListArray>().cloned())
                .ok_or_else(|| bad(format!("no list column `{name}`")))
        };
        let (index, length) = (int("episode_index")?, int("length")?);
        let (data_chunk, data_file, from) = (
            int("data/chunk_index")?,
            int("data/file_index")?,
            int("dataset_from_index")?,
        );
        let tasks = list("tasks")?;
        let mut videos = Vec::new();
        for f in video_keys(spec) {
            videos.push((
                int(&format!("videos/{}/chunk_index", f.key))?,
                int(&format!("videos/{}/file_index", f.key))?,
                float(&format!("videos/{}/from_timestamp", f.key))?,
                float(&format!("videos/{}/to_timestamp", f.key))?,
            ));
        }
        let mut stats_columns = Vec::new();
        for f in &spec.features {
            let mut per_stat = Vec::new();
            for stat in STAT_NAMES {
                per_stat.push(list(&format!("stats/{}/{stat}", f.key))?);
            }
            stats_columns.push(per_stat);
        }
        for r in 0..batch.num_rows() {
            let task_values = tasks.value(r);
            let task_values = task_values
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .ok_or_else(|| bad("tasks is not a list of strings".into()))?;
            let stats = stats_columns
                .iter()
                .map(|per_stat| {
                    let fields: Vec<Vec<f64>> = per_stat
                        .iter()
                        .map(|column| {
                            let values = column.value(r);
                            values
                                .as_any()
                                .downcast_ref::<arrow_array::Float64Array>()
                                .map(|a| a.values().to_vec())
                                .unwrap_or_default()
                        })
                        .collect();
                    FeatureStats::from_fields(fields)
                })
                .collect();
            rows.push(EpisodeRow {
                index: index.value(r) as u64,
                tasks: (0..task_values.len())
                    .map(|i| task_values.value(i).to_string())
                    .collect(),
                length: length.value(r) as u64,
                data_file: (data_chunk.value(r) as u64, data_file.value(r) as u64),
                from_index: from.value(r) as u64,
                videos: videos
                    .iter()
                    .map(|(c, f, a, b)| {
                        (c.value(r) as u64, f.value(r) as u64, a.value(r), b.value(r))
                    })
                    .collect(),
                stats,
            });
        }
    }
    Ok(rows)
}

fn aggregate_all(episodes: &[EpisodeRow], features: usize) -> Vec<Option<FeatureStats>> {
    (0..features)
        .map(|i| FeatureStats::aggregate(episodes.iter().map(|e| &e.stats[i])))
        .collect()
}

/// meta/stats.json: per feature min, max, mean, std, count (and quantiles for
/// vectors); a camera's in [0, 1] shaped [3, 1, 1], as LeRobot writes them.
fn stats_json(spec: &DatasetSpec, stats: &[Option<FeatureStats>]) -> Value {
    let mut out = BTreeMap::new();
    for (f, s) in spec.features.iter().zip(stats) {
        let Some(s) = s else { continue };
        out.insert(f.key.clone(), s.to_json(f.kind.is_camera()));
    }
    json!(out)
}

/// Completes an interrupted commit (its journal is on disk) and discards an
/// unfinished episode's staged files, saying what it did.
pub fn recover(root: &Path) -> Result<Recovery, DatasetError> {
    let mut recovery = Recovery::default();
    let staging = root.join(STAGING);
    if !staging.exists() {
        return Ok(recovery);
    }
    let journal = staging.join(JOURNAL);
    if journal.exists() {
        let index = read_json(&journal)
            .ok()
            .and_then(|j| j["episode_index"].as_u64());
        apply_journal(root)?;
        recovery.rolled_forward = index;
    }
    let episode = staging.join("episode");
    if episode.exists() {
        let committed = read_json(&root.join("meta/info.json"))
            .ok()
            .and_then(|info| info["total_episodes"].as_u64())
            .unwrap_or(0);
        let marker = read_json(&episode.join("episode.json")).ok();
        // Left behind by a finished (committed) episode: nothing is lost.
        let finished = marker
            .as_ref()
            .and_then(|m| m["episode_index"].as_u64())
            .is_some_and(|i| i < committed);
        if !finished {
            recovery.discarded = Some(marker.map_or_else(
                || "an episode".into(),
                |m| format!("episode {} (task {})", m["episode_index"], m["task"]),
            ));
        }
        fs::remove_dir_all(&episode).map_err(io_err(&episode))?;
    }
    let _ = fs::remove_dir_all(&staging);
    Ok(recovery)
}

/// Renames the journal's staged files into place (those already moved are
/// skipped, so it can run again after a crash), then removes the journal.
fn apply_journal(root: &Path) -> Result<(), DatasetError> {
    let staging = root.join(STAGING);
    let journal = staging.join(JOURNAL);
    let j = read_json(&journal)?;
    let moves = j["moves"]
        .as_array()
        .ok_or_else(|| DatasetError::Invalid(format!("{}: no moves", journal.display())))?;
    let mut dirs = std::collections::BTreeSet::new();
    let mut moved = 0;
    for m in moves {
        let (Some(from), Some(to)) = (m[0].as_str(), m[1].as_str()) else {
            return Err(DatasetError::Invalid(format!(
                "{}: bad move {m}",
                journal.display()
            )));
        };
        let (from, to) = (staging.join(from), root.join(to));
        if !from.exists() {
            continue;
        }
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
            dirs.insert(parent.to_path_buf());
        }
        // A staged video was encoded without fsync; make it durable first.
        File::open(&from)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&from))?;
        fs::rename(&from, &to).map_err(io_err(&to))?;
        moved += 1;
        if moved == 2 {
            abort_at("commit");
        }
    }
    for dir in dirs {
        sync_dir(&dir)?;
    }
    fs::remove_file(&journal).map_err(io_err(&journal))?;
    sync_dir(&staging)
}
