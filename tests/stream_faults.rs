//! One fault policy for every image stream (`[streams.<name>] on_stale`): a camera
//! that delivers a frame every 2 s (stale for 1.5 s of every 2 with the default
//! 500 ms limit) pauses inference, stops the arm, or is ignored, as the launch file
//! says; the summary names the stream and what it did.

mod common;

use common::*;
use reflex_runtime::log::{Record, read_log};

/// Runs the demo for 5 simulated seconds with a camera at 0.5 fps; returns the
/// summary and the ticks the chunks were conditioned on.
fn run_with(name: &str, extra: &[&str]) -> (serde_json::Value, Vec<u64>) {
    let dir = scratch(name);
    let (log, summary_path) = (dir.join("run.log"), dir.join("summary.json"));
    let launch = repo().join("launch/sim_arm.toml");
    let mut args = vec![
        "run",
        launch.to_str().unwrap(),
        "--sim-clock",
        "--duration",
        "5",
        "--set",
        "zenoh.enabled=false",
        "--log",
        log.to_str().unwrap(),
        "--summary-json",
        summary_path.to_str().unwrap(),
    ];
    for set in extra {
        args.extend(["--set", set]);
    }
    let out = reflex().args(&args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let summary = summary(&summary_path);
    let ticks = read_log(&log)
        .unwrap()
        .records
        .iter()
        .filter_map(|r| match r {
            Record::Chunk { chunk, .. } => Some(chunk.conditioned_on_tick),
            _ => None,
        })
        .collect();
    assert!(
        stdout.contains("reflex run summary"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (summary, ticks)
}

/// The camera's frames come at 0, 2, 4 s; at 100 Hz a frame is fresh for 50 ticks.
fn fresh(tick: u64) -> bool {
    tick % 200 <= 50
}

#[test]
fn a_stale_camera_pauses_inference_by_default() {
    let (summary, ticks) = run_with("stream-pause", &["drivers[0].camera.fps=0.5"]);
    let stream = &summary["streams"][0];
    assert_eq!(stream["name"], "top");
    assert_eq!(stream["on_stale"], "pause");
    assert!(stream["stale_episodes"].as_u64().unwrap() >= 2, "{stream}");
    assert_eq!(summary["estop"], false);
    assert!(ticks.len() >= 3, "chunks while fresh: {ticks:?}");
    assert!(
        ticks.iter().all(|&t| fresh(t)),
        "a chunk was requested on a stale image: {ticks:?}"
    );
}

#[test]
fn stop_latches_and_ignore_keeps_going() {
    let (summary, _) = run_with(
        "stream-stop",
        &["drivers[0].camera.fps=0.5", "streams.top.on_stale=\"stop\""],
    );
    assert_eq!(summary["estop"], true, "{summary}");
    assert_eq!(summary["final_state"], "e-stop latched");

    let (summary, ticks) = run_with(
        "stream-ignore",
        &[
            "drivers[0].camera.fps=0.5",
            "streams.top.on_stale=\"ignore\"",
        ],
    );
    assert_eq!(summary["estop"], false);
    assert!(
        ticks.iter().any(|&t| !fresh(t)),
        "ignored staleness requests chunks anyway: {ticks:?}"
    );
    // A camera at its normal rate is never stale.
    let (summary, _) = run_with("stream-fresh", &[]);
    assert_eq!(summary["streams"][0]["stale_episodes"], 0);
}

#[test]
fn stream_settings_name_declared_image_streams() {
    let launch = repo().join("launch/sim_arm.toml");
    let check = |set: &str| {
        let out = reflex()
            .args(["check", launch.to_str().unwrap(), "--set", set])
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = check("streams.wrist.on_stale=\"stop\"");
    assert!(
        err.contains("field `streams.wrist`: no stream named `wrist`; sensor streams: top"),
        "{err}"
    );
    let err = check("streams.arm.on_stale=\"stop\"");
    assert!(
        err.contains("a stale joint state always stops the arm"),
        "{err}"
    );
    let err = check("streams.top.max_age_ms=0");
    assert!(err.contains("field `streams.top.max_age_ms`"), "{err}");
    let err = check("streams.top.on_stale=\"panic\"");
    assert!(err.contains("streams.top.on_stale"), "{err}");
}

/// Skew between each stream and the joint state is measured; `sample = "aligned"`
/// feeds only samples within `tolerance_ms` of the state and pauses the others.
#[test]
fn aligned_streams_feed_only_samples_close_to_the_joint_state() {
    // A 7 fps camera: the newest frame is 0 to 143 ms older than the state.
    let (latest, _) = run_with("stream-latest", &["drivers[0].camera.fps=7.0"]);
    let stream = &latest["streams"][0];
    assert!(stream["samples"].as_u64().unwrap() >= 30, "{stream}");
    assert!(
        stream["skew_ms"]["max"].as_f64().unwrap() > 20.0,
        "the latest frame is often far from the state: {stream}"
    );
    assert_eq!(stream["misaligned"], 0);
    let (aligned, ticks) = run_with(
        "stream-aligned",
        &[
            "drivers[0].camera.fps=7.0",
            "streams.top.sample=\"aligned\"",
            "streams.top.tolerance_ms=20.0",
        ],
    );
    let stream = &aligned["streams"][0];
    // (The summary's histograms keep 3 significant digits.)
    assert!(
        stream["skew_ms"]["max"].as_f64().unwrap() <= 20.05,
        "a frame farther than the tolerance was fed: {stream}"
    );
    assert!(stream["misaligned"].as_u64().unwrap() > 0, "{stream}");
    assert!(
        !ticks.is_empty(),
        "aligned observations were still requested"
    );
    assert_eq!(aligned["estop"], false);
}
