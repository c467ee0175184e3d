//! Episodes recorded as a LeRobotDataset v3.0, checked with the real `lerobot`
//! package (policies/export/check_lerobot_dataset.py in the parity venv): every
//! frame and delta-timestamp windows across episode boundaries load, decoded video
//! frames carry the pixels the run captured (against a lossless recording of the
//! same seeded run), resume appends with contiguous indices, and a crash at any
//! point of saving an episode loses no finished episode.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{parity_python, repo, run_ok, scratch, sim_summary};

/// Overrides: three 1.5 s episodes with a move to a reset pose between them.
const EPISODES: [&str; 10] = [
    "--set",
    "recording.episode_time_s=1.5",
    "--set",
    "recording.reset_time_s=0.4",
    "--set",
    "recording.reset.joint_positions=[0.0, 0.5, 0.5]",
    "--set",
    "recording.task=\"reach the red target\"",
    "--set",
    "recording.episodes=3",
];

fn check_dataset(root: &Path, more: &[&str]) -> serde_json::Value {
    let out = Command::new(parity_python())
        .arg(repo().join("policies/export/check_lerobot_dataset.py"))
        .arg(root)
        .args(more)
        .output()
        .expect("check_lerobot_dataset.py");
    assert!(
        out.status.success(),
        "LeRobot could not load {}: {}\n{}",
        root.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    serde_json::from_str(&last).expect("the checker's JSON report")
}

/// `reflex run` of the demo on the simulated clock for `seconds`, without zenoh,
/// up to `--record` (the dataset directory comes next).
fn sim_recording(seconds: &str) -> Command {
    let mut cmd = common::reflex();
    cmd.args([
        "run",
        "launch/sim_arm.toml",
        "--sim-clock",
        "--duration",
        seconds,
    ])
    .args(["--set", "zenoh.enabled=false", "--record"]);
    cmd
}

fn record(root: &Path, summary: &Path, more: &[&str]) -> serde_json::Value {
    let launch = repo().join("launch/sim_arm.toml");
    let mut args = vec!["--record", root.to_str().unwrap()];
    args.extend_from_slice(&EPISODES);
    args.extend_from_slice(more);
    sim_summary(&launch, "30", &args, summary)
}

#[test]
fn recorded_episodes_load_in_lerobot_with_the_frames_the_run_captured() {
    let dir = scratch("record");
    let (video, lossless) = (dir.join("video"), dir.join("png"));
    let log = dir.join("run.log");
    let s = record(
        &video,
        &dir.join("a.json"),
        &["--log", log.to_str().unwrap()],
    );
    let e = &s["episodes"];
    assert_eq!(e["saved"], 3, "{s}");
    assert_eq!(e["total_episodes"], 3);
    // 10 rows per second (the action rate) for 1.5 s.
    assert_eq!(e["frames"], 45, "{e}");
    assert_eq!(e["rows_lost"], 0);
    assert!(e["error"].is_null());
    // The run ends once the third episode is saved, well before 30 s.
    assert!(s["ticks"].as_u64().unwrap() < 1500, "{}", s["ticks"]);
    // The resets (moves to the pose) are part of what replay reproduces.
    run_ok(&["replay", log.to_str().unwrap()]);

    record(
        &lossless,
        &dir.join("b.json"),
        &["--set", "recording.video=false"],
    );
    let report = check_dataset(
        &video,
        &["--window", "--frames-from", lossless.to_str().unwrap()],
    );
    assert_eq!(report["episodes"], 3, "{report}");
    assert_eq!(report["frames"], 45);
    assert_eq!(report["episode_lengths"], serde_json::json!([15, 15, 15]));
    assert_eq!(report["done_on_last_rows"], true);
    assert_eq!(report["tasks"], serde_json::json!(["reach the red target"]));
    assert_eq!(report["windows_checked"], 45);
    let pixels = &report["pixels"];
    // h264 of the 96x96 render: close to the exact frame, and nearer to it than
    // to the frames before and after (no off-by-one).
    assert!(pixels["worst_mean_abs"].as_f64().unwrap() < 6.0, "{pixels}");
    assert_eq!(pixels["nearest_is_own_frame"], true, "{pixels}");
    assert!(
        pixels["neighbour_comparisons"].as_u64().unwrap() > 20,
        "{pixels}"
    );
    for key in [
        "complementary_info.is_intervention",
        "complementary_info.policy_action",
        "next.reward",
        "observation.images.top",
        "reflex.images.top.stamp_s",
        "reflex.skipped_periods",
    ] {
        assert!(
            report["features"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f == key),
            "{key} missing: {}",
            report["features"]
        );
    }

    // Recording into it again is refused without --resume; with it, two more
    // episodes follow with contiguous indices.
    let out = sim_recording("5")
        .arg(&video)
        .args(EPISODES)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--resume"), "{stderr}");
    let s = record(
        &video,
        &dir.join("c.json"),
        &["--resume", "--set", "recording.episodes=2"],
    );
    assert_eq!(s["episodes"]["first_episode"], 3, "{s}");
    assert_eq!(s["episodes"]["total_episodes"], 5);
    let report = check_dataset(&video, &[]);
    assert_eq!(
        report["episode_indices"],
        serde_json::json!([0, 1, 2, 3, 4])
    );
    assert_eq!(report["frames"], 75);
}

/// A run recording on the wall clock, aborted at `abort_at` (the writer's fault
/// injection) or killed with SIGKILL after `kill_after`.
fn crashed_run(
    root: &Path,
    resume: bool,
    abort_at: Option<&str>,
    kill_after: Option<f64>,
) -> String {
    let mut cmd = common::reflex();
    cmd.args(["run", "launch/sim_arm.toml", "--duration", "20"])
        .args(["--set", "zenoh.enabled=false"])
        .args(["--set", "robot.name=crash_rec"])
        .args(["--set", "recording.episode_time_s=0.5"])
        .args(["--set", "recording.reset_time_s=0.1"])
        .arg("--record")
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if resume {
        cmd.arg("--resume");
    }
    if let Some(point) = abort_at {
        cmd.env("REFLEX_DATASET_ABORT_AT", point);
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(seconds) = kill_after {
        std::thread::sleep(Duration::from_secs_f64(seconds));
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "the run was meant to crash");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_crash_at_any_point_of_saving_loses_no_finished_episode() {
    let dir = scratch("record-crash");
    let root = dir.join("dataset");
    let mut resume = false;
    let mut messages = Vec::new();
    // Mid-episode (SIGKILL), then each point of saving, then SIGKILL again.
    let crashes: [(Option<&str>, Option<f64>); 6] = [
        (None, Some(1.7)),
        (Some("videos"), None),
        (Some("data"), None),
        (Some("journal"), None),
        (Some("commit"), None),
        (None, Some(2.3)),
    ];
    for (abort_at, kill_after) in crashes {
        let stderr = crashed_run(&root, resume, abort_at, kill_after);
        messages.push(stderr);
        resume = root.join("meta/info.json").exists();
    }
    let all = messages.join("\n");
    assert!(
        all.contains("interrupted before it was saved"),
        "no discarded episode reported:\n{all}"
    );
    assert!(
        all.contains("completed the interrupted save of episode"),
        "the commit crash was not rolled forward:\n{all}"
    );
    // A clean run after the crashes: recovers, appends one episode.
    let s = sim_summary(
        &repo().join("launch/sim_arm.toml"),
        "10",
        &[
            "--record",
            root.to_str().unwrap(),
            "--resume",
            "--set",
            "recording.episode_time_s=0.5",
            "--set",
            "recording.episodes=1",
        ],
        &dir.join("final.json"),
    );
    let e = &s["episodes"];
    assert_eq!(e["saved"], 1, "{s}");
    let total = e["total_episodes"].as_u64().unwrap();
    // The commit crash kept its episode, the clean run added one (the SIGKILLs
    // may or may not come after a saved episode, depending on the machine's speed).
    assert!(total >= 2, "{e}\n{all}");
    let report = check_dataset(&root, &["--window"]);
    assert_eq!(report["episodes"], total);
    let indices: Vec<u64> = (0..total).collect();
    assert_eq!(report["episode_indices"], serde_json::json!(indices));
    assert_eq!(report["done_on_last_rows"], true);
}

/// A disk that fills up while recording: the recording stops with a clear error,
/// the run ends with the arm brought to rest (exit status 1), and the episodes
/// saved before load. Needs a small tmpfs (root); skipped with a message otherwise.
#[test]
fn a_full_disk_stops_recording_and_keeps_the_saved_episodes() {
    let dir = scratch("record-full");
    let mount = dir.join("small");
    std::fs::create_dir_all(&mount).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=160k", "tmpfs"])
        .arg(&mount)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a small tmpfs here (needs root)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mount);
    let root = mount.join("dataset");
    let summary_path = dir.join("summary.json");
    let out = sim_recording("600")
        .arg(&root)
        .args(["--set", "recording.episode_time_s=1.5"])
        .args(["--set", "recording.reset_time_s=0.2"])
        .args(["--set", "recording.episodes=1000"])
        .arg("--summary-json")
        .arg(&summary_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("RECORDING FAILED"), "{stdout}");
    let s = common::summary(&summary_path);
    let e = &s["episodes"];
    assert!(e["error"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    // The run ended when recording failed (then the usual stop to rest), long
    // before its 600 s.
    assert!(s["ticks"].as_u64().unwrap() < 60_000, "{}", s["ticks"]);
    let saved = e["saved"].as_u64().unwrap();
    assert!((1..1000).contains(&saved), "{e}");
    let report = check_dataset(&root, &[]);
    assert_eq!(report["episodes"], saved, "{report}");
}

/// `[reward_classifier]` over the top camera (policies/export/make_reward_classifier.py:
/// success when the effector's green disappears under the red target) ends each
/// episode at its first success, rewarded on that row. The simulator's own
/// judgement (the effector within the tolerance at the end) agrees; the run
/// replays byte for byte; a classifier that never fires (the negative control)
/// lets every episode time out unrewarded.
#[test]
fn a_success_classifier_rewards_and_ends_episodes() {
    let dir = scratch("record-reward");
    let launch = dir.join("launch.toml");
    std::fs::write(
        &launch,
        format!(
            "{}\n[recording]\nepisodes = 6\nepisode_time_s = 5.0\nreset_time_s = 0.5\n\
             reward = \"classifier\"\n\n[recording.reset]\njoint_positions = [0.0, 0.6, 0.6]\n\
             speed = 1.0\n\n[reward_classifier]\nmodel = \"{}\"\n\n[[reward_classifier.inputs]]\n\
             name = \"image\"\nsource = \"top.image\"\nshape = [1, 3, 96, 96]\n\
             image = {{ resize = [96, 96], layout = \"nchw\", range = \"zero_one\" }}\n",
            common::demo_launch_text(),
            common::fixture("reward_green.onnx").display()
        ),
    )
    .unwrap();
    let run = |name: &str, more: &[&str]| {
        let root = dir.join(name);
        let mut args = vec!["--record", root.to_str().unwrap()];
        args.extend_from_slice(more);
        let s = sim_summary(&launch, "200", &args, &dir.join(format!("{name}.json")));
        (s, check_dataset(&root, &[]))
    };
    let logs = [dir.join("green.log"), dir.join("green_again.log")];
    let (s, report) = run("green", &["--log", logs[0].to_str().unwrap()]);
    let e = &s["episodes"];
    assert_eq!(e["saved"], 6, "{e}");
    assert_eq!(e["successes"], 6, "{e}");
    assert_eq!(
        report["rewards"], 6.0,
        "one reward per episode, on its last row"
    );
    let lengths: Vec<u64> = serde_json::from_value(report["episode_lengths"].clone()).unwrap();
    assert!(lengths.iter().all(|&n| n < 50), "ended early: {lengths:?}");
    // The simulator's judgement at each episode's end: on target.
    let episodes = s["tasks"][0]["episodes"].as_array().unwrap();
    assert_eq!(episodes.len(), 6, "{}", s["tasks"]);
    assert!(
        episodes.iter().all(|e| e["reached"] == true),
        "{}",
        s["tasks"]
    );

    // The classifier runs on the recorder's thread, yet on the simulated clock
    // its verdict ends the episode at the same tick in every run: the same run
    // again writes the same log, byte for byte, and the same episodes.
    let (_, again) = run("green_again", &["--log", logs[1].to_str().unwrap()]);
    assert_eq!(again["episode_lengths"], report["episode_lengths"]);
    assert!(
        std::fs::read(&logs[0]).unwrap() == std::fs::read(&logs[1]).unwrap(),
        "two runs of the same seed wrote different logs"
    );

    let never = common::fixture("reward_never.onnx");
    let set = format!("reward_classifier.model={:?}", never.display().to_string());
    let (s, report) = run("never", &["--set", &set, "--set", "recording.episodes=2"]);
    assert_eq!(s["episodes"]["successes"], 0, "{}", s["episodes"]);
    assert_eq!(report["rewards"], 0.0);
    assert_eq!(report["episode_lengths"], serde_json::json!([50, 50]));
}
