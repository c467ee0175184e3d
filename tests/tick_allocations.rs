//! The tick allocates nothing after warm-up, proven with a counting allocator.
//!
//! The loop runs on this test's thread with the simulated clock (so the simulated
//! arm, its renderer and the recorder hand-off all run inside the tick), twice:
//! once for 600 ticks and once for 900. Both runs do the same set-up and tear-down,
//! so any difference in the number of allocations made on this thread comes from
//! the extra ticks. Inference runs on the worker thread and is not counted.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use reflex::run::{Assembly, assemble};
use reflex_runtime::control::RunLimits;

struct CountingAllocator;

thread_local! {
    /// Counting on? And allocations counted, on this thread only.
    static COUNTER: Cell<(bool, u64)> = const { Cell::new((false, 0)) };
}

fn count_one() {
    let _ = COUNTER.try_with(|c| {
        let (on, n) = c.get();
        if on {
            c.set((on, n + 1));
        }
    });
}

/// Runs `f` with counting on and returns the allocations it made on this thread.
fn counted<T>(f: impl FnOnce() -> T) -> (T, u64) {
    COUNTER.with(|c| c.set((true, 0)));
    let out = f();
    let (_, n) = COUNTER.with(|c| c.replace((false, 0)));
    (out, n)
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

static NEVER: AtomicBool = AtomicBool::new(false);

/// Allocations made on this thread by a run of `seconds` (at 100 Hz).
fn allocations_in_recorded_run(
    launch: &str,
    seconds: f64,
    extra: &[String],
    record: bool,
) -> (u64, u64) {
    // Tests run in parallel: each run its own directory.
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let dir = common::scratch(&format!("alloc-{seconds}-{record}-{run}"));
    let dataset = dir.join("dataset");
    let mut overrides = vec![
        "zenoh.enabled=false".to_string(),
        // One long episode, so the task report is the same size in both runs.
        "drivers[0].episode_seconds=1000".to_string(),
    ];
    overrides.extend_from_slice(extra);
    let launch = reflex::load_launch(Some(&common::repo().join(launch)), &overrides).unwrap();
    let log = dir.join("run.log");
    let assembled = assemble(
        &launch,
        &Assembly {
            simulated: true,
            log: Some(&log),
            record: record.then_some((dataset.as_path(), false)),
            models: &[],
            rerun: None,
        },
    )
    .unwrap();
    let limits = RunLimits {
        duration: Some(Duration::from_secs_f64(seconds)),
        stop: &NEVER,
    };
    let (summary, allocations) = counted(|| assembled.control.run(limits).unwrap());
    assembled.status.finish();
    if let Some(dataset) = assembled.dataset {
        let report = dataset.finish();
        assert!(report.error.is_none(), "{report:?}");
        assert!(report.saved >= 3, "{report:?}");
        assert_eq!(summary.episodes.map(|e| e.rows_lost), Some(0));
    }
    (allocations, summary.stats.ticks)
}

/// Recording episodes: rows captured at 10 fps (camera frames copied), episode
/// ends and resets (a move to the reset pose) every second or so; the 9 s run
/// has more episodes than the 6 s one and allocates no more.
#[test]
fn ticks_recording_episodes_allocate_nothing() {
    same_allocations_recorded(
        "launch/sim_arm.toml",
        &[
            "recording.episode_time_s=1.0".to_string(),
            "recording.reset_time_s=0.3".into(),
            "recording.reset.joint_positions=[0.0, 0.5, 0.5]".into(),
            "recording.reset.speed=2.0".into(),
        ],
        true,
    );
}

#[test]
fn ticks_after_warm_up_allocate_nothing() {
    same_allocations(&[]);
}

/// Every execution strategy, with requests in flight across action periods
/// (real-time chunking with the flow policy it guides, quintic interpolation).
#[test]
fn ticks_under_every_execution_strategy_allocate_nothing() {
    for strategy in ["synchronous", "aggregate", "temporal_ensemble"] {
        same_allocations(&[
            format!("execution.strategy=\"{strategy}\""),
            "execution.replan_after=1".into(),
            "control.sim_inference_ticks=25".into(),
        ]);
    }
    same_allocations_in(
        "launch/sim_arm_flow_rtc.toml",
        &[
            "control.sim_inference_ticks=20".into(),
            "execution.interpolation=\"quintic\"".into(),
        ],
    );
}

/// With observation history the tick also records every state and camera frame.
#[test]
fn ticks_with_observation_history_allocate_nothing() {
    let model = common::fixture("chunk_history2.onnx");
    same_allocations(&[
        format!("policy.model={:?}", model.display().to_string()),
        "policy.inputs[0].shape=[1, 2, 3, 32, 32]".into(),
        "policy.inputs[0].history=2".into(),
        "policy.inputs[1].shape=[1, 2, 3]".into(),
        "policy.inputs[1].history=2".into(),
    ]);
}

/// With sensor streams: the simulated microphones (a log-mel spectrogram of each,
/// computed in the tick under the simulated clock), the taxel pad, the camera; the
/// spectrograms fed `aligned` (from the per-stream history).
#[test]
fn ticks_with_sound_touch_and_camera_streams_allocate_nothing() {
    same_allocations_in(
        "launch/sim_arm_multisensor.toml",
        &[
            "streams.sound.sample=\"aligned\"".into(),
            "streams.sound.tolerance_ms=60".into(),
        ],
    );
}

fn same_allocations(extra: &[String]) {
    same_allocations_in("launch/sim_arm.toml", extra);
}

fn same_allocations_in(launch: &str, extra: &[String]) {
    same_allocations_recorded(launch, extra, false);
}

fn same_allocations_recorded(launch: &str, extra: &[String], record: bool) {
    let (short, short_ticks) = allocations_in_recorded_run(launch, 6.0, extra, record);
    let (long, long_ticks) = allocations_in_recorded_run(launch, 9.0, extra, record);
    assert!(
        long_ticks >= short_ticks + 290,
        "{short_ticks} vs {long_ticks} ticks"
    );
    assert_eq!(
        long,
        short,
        "{} extra ticks made {} extra allocations on the control thread",
        long_ticks - short_ticks,
        long as i64 - short as i64
    );
}

#[test]
fn the_counter_sees_allocations_on_this_thread() {
    // Guards against a counter that cannot fail.
    let (v, allocations) = counted(|| std::hint::black_box((0..100).collect::<Vec<u64>>()));
    drop(v);
    assert!(allocations >= 1);
}

/// Preprocessing (resize with pad, range mapping, normalization, padding, masks)
/// allocates only for the first frame of a camera size, not per chunk.
#[test]
fn observation_preprocessing_allocates_nothing_after_the_first_frame() {
    let launch = reflex::load_launch(
        Some(&common::repo().join("launch/examples/flow_fixture.toml")),
        &[],
    )
    .unwrap();
    let inputs = reflex_policies::config::inputs_of(launch.policy()).unwrap();
    let mut mapper = reflex_policies::preprocess::InputMapper::new(
        inputs,
        &launch.camera_names(),
        &launch.tensor_names(),
    )
    .unwrap();
    let mut obs = reflex_policies::preprocess::blank_observation(&launch);
    obs.images[0] = reflex_runtime::types::Image::black(120, 90);
    mapper.fill(&obs);
    let ((), allocations) = counted(|| {
        for i in 0..20 {
            obs.images[0].rgb[i] = i as u8;
            mapper.fill(&obs);
        }
    });
    assert_eq!(allocations, 0);
}
