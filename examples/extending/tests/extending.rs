//! The example kinds through reflex's own loop: a launch file that names them is
//! checked with their errors, and a simulated run with the pattern camera and the
//! `goto` policy brings the simulated arm to the target.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use reflex::run::{Assembly, assemble};
use reflex_runtime::control::{RunLimits, replay_with};
use reflex_runtime::launch::{Launch, LaunchError};
use reflex_runtime::log::{Record, read_log};
use reflex_runtime::registry::Registry;

static NEVER: AtomicBool = AtomicBool::new(false);

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// reflex's kinds plus this crate's: what a binary built with the extension runs.
fn registry() -> Registry {
    let mut registry = reflex::registry();
    reflex_example_extending::register(&mut registry);
    registry
}

const TARGET: [f64; 3] = [0.5, -0.4, 0.3];

fn launch_text() -> String {
    format!(
        r#"
[robot]
name = "ext_arm"
urdf = "{urdf}"

[[robot.joints]]
name = "shoulder"
acceleration = 8.0

[[robot.joints]]
name = "elbow"
acceleration = 8.0

[[robot.joints]]
name = "wrist"
acceleration = 10.0

[control]
rate_hz = 100.0
sim_inference_ticks = 2

[execution]
action_rate_hz = 10.0
replan_after = 2

[[drivers]]
kind = "sim_arm"
name = "arm"
link_lengths = [0.4, 0.3, 0.2]
initial_position = [0.0, 0.0, 0.0]
episode_seconds = 1000.0

[[drivers]]
kind = "pattern_camera"
name = "pattern"
width = 16
height = 8
fps = 30.0

[policy]
kind = "goto"
target = {target:?}
max_step = 0.05
horizon = 5
wait_for_camera = "pattern"

[zenoh]
enabled = false
"#,
        urdf = repo().join("launch/sim_arm.urdf").display(),
        target = TARGET,
    )
}

fn load(text: &str, overrides: &[&str]) -> Result<Launch, LaunchError> {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    Launch::from_text(
        text,
        "ext.toml",
        repo().join("launch"),
        &overrides,
        &registry(),
    )
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn the_kinds_check_their_tables_with_positions() {
    let text = launch_text();
    let launch = load(&text, &[]).unwrap();
    assert_eq!(launch.camera_names(), vec!["pattern".to_string()]);
    assert_eq!(launch.policy().kind(), "goto");

    let typo = text.replace("max_step = 0.05", "max_stp = 0.05");
    let err = load(&typo, &[]).unwrap_err();
    assert_eq!(err.field, "policy.max_stp");
    assert_eq!(
        (err.line, err.column),
        (line_of(&typo, "max_stp"), 1),
        "{err}"
    );
    assert!(err.to_string().starts_with("ext.toml:"), "{err}");

    let err = load(&text, &["policy.target[1]=3.5"]).unwrap_err();
    assert_eq!(err.field, "policy.target[1]");
    assert!(
        err.message.contains("outside joint `elbow`'s limits"),
        "{err}"
    );

    let err = load(&text, &["drivers[1].fps=0"]).unwrap_err();
    assert_eq!(err.field, "drivers[1].fps");

    let err = load(&text, &["policy.wait_for_camera=\"wrist\""]).unwrap_err();
    assert!(err.message.contains("cameras: pattern"), "{err}");

    // Without the extension registered, its kinds are unknown ones.
    let err = Launch::from_text(
        &text,
        "ext.toml",
        repo().join("launch"),
        &[],
        &reflex::registry(),
    )
    .unwrap_err();
    assert_eq!(err.field, "drivers[1].kind");
    assert!(
        err.message.contains("unknown kind `pattern_camera`"),
        "{err}"
    );
}

/// Final measured positions of a simulated run.
fn run(overrides: &[&str], name: &str) -> Vec<f64> {
    run_logged(overrides, name).0
}

/// Final measured positions of a simulated run of `text`.
fn run_text(text: &str, overrides: &[&str], name: &str) -> Vec<f64> {
    run_launch(load(text, overrides).unwrap(), name).0
}

/// Final measured positions of a simulated run, and its log.
fn run_logged(overrides: &[&str], name: &str) -> (Vec<f64>, reflex_runtime::log::LogContents) {
    run_launch(load(&launch_text(), overrides).unwrap(), name)
}

fn run_launch(launch: Launch, name: &str) -> (Vec<f64>, reflex_runtime::log::LogContents) {
    let dir = std::env::temp_dir().join(format!("reflex-ext-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("run.log");
    let assembled = assemble(
        &launch,
        &Assembly {
            simulated: true,
            log: Some(&log),
            record: None,
            models: &[],
            rerun: None,
        },
    )
    .unwrap();
    let (summary, _models) = assembled
        .run(
            launch.config.control.realtime.clone(),
            RunLimits {
                duration: Some(Duration::from_secs(4)),
                stop: &NEVER,
            },
        )
        .unwrap();
    assert!(summary.fault.is_none(), "{:?}", summary.fault);
    let contents = read_log(&log).unwrap();
    let last = contents
        .records
        .iter()
        .rev()
        .find_map(|r| match r {
            Record::Tick(t) => Some(t.state),
            _ => None,
        })
        .expect("tick records");
    let _ = std::fs::remove_dir_all(&dir);
    (last.positions().to_vec(), contents)
}

#[test]
fn a_run_with_the_extension_reaches_the_target() {
    let reached = run(&[], "reach");
    for (q, goal) in reached.iter().zip(TARGET) {
        assert!((q - goal).abs() < 0.05, "{reached:?} vs {TARGET:?}");
    }
    // Negative control: a policy waiting for a camera that never delivers a frame
    // (fps so low the first frame is due after the run) must not move.
    let held = run(&["drivers[1].fps=0.001"], "held");
    for q in &held {
        assert!(q.abs() < 0.02, "{held:?}");
    }
}

#[test]
fn an_execution_strategy_from_outside_runs_and_replays() {
    let err = load(
        &launch_text(),
        &["execution.strategy=\"ema\"", "execution.alpha=2"],
    )
    .unwrap_err();
    assert_eq!(err.field, "execution.alpha");
    let (reached, log) = run_logged(
        &["execution.strategy=\"ema\"", "execution.alpha=0.2"],
        "ema",
    );
    for (q, goal) in reached.iter().zip(TARGET) {
        assert!((q - goal).abs() < 0.05, "{reached:?} vs {TARGET:?}");
    }
    assert_eq!(log.header.strategy, "ema");
    assert_eq!(log.header.strategy_params["alpha"], 0.2);
    let replayed = replay_with(&log.header, &log.records, &registry());
    assert!(replayed.identical(), "{:?}", replayed.first);
    // Replay rebuilds the strategy the log names: the default one differs.
    let mut as_replace = log.header.clone();
    as_replace.strategy = "replace".into();
    as_replace.strategy_params = serde_json::Value::Null;
    assert!(!replay_with(&as_replace, &log.records, &registry()).identical());
    // A binary without the strategy says so instead of replaying something else.
    let missing = replay_with(&log.header, &log.records, &reflex::registry());
    assert!(!missing.identical());
    assert!(
        missing.first[0].what.contains("execution strategy `ema`"),
        "{:?}",
        missing.first
    );
}

#[test]
fn a_chunk_stage_from_outside_chooses_among_the_candidates() {
    // Four candidates; only the last is the plan, the others are it shifted by
    // 0.2, 0.4 and 0.6 rad from where the arm is. Without a stage the first one
    // runs, and every chunk pushes the arm 0.6 rad further: it ends far away.
    let candidates = ["policy.candidates=4", "policy.candidate_spread=0.2"];
    let missed = run(&candidates, "no-stage");
    assert!(
        missed
            .iter()
            .zip(TARGET)
            .all(|(q, goal)| (q - goal).abs() > 0.5),
        "without a stage the first candidate runs: {missed:?}"
    );
    let text = format!("{}\n[[stages]]\nkind = \"closest\"\n", launch_text());
    let launch = load(&text, &candidates).unwrap();
    assert_eq!(launch.stage_specs.len(), 1);
    let reached = run_text(&text, &candidates, "closest");
    for (q, goal) in reached.iter().zip(TARGET) {
        assert!((q - goal).abs() < 0.05, "{reached:?} vs {TARGET:?}");
    }
    // A stage has nothing to choose from with one candidate: a check error.
    let err = load(&text, &[]).unwrap_err();
    assert_eq!(err.field, "stages[0]");
    assert!(err.message.contains("nothing to choose from"), "{err}");
}

/// The ticks the chunks of a logged run were conditioned on.
fn conditioned_ticks(log: &reflex_runtime::log::LogContents) -> Vec<u64> {
    log.records
        .iter()
        .filter_map(|r| match r {
            Record::Chunk { chunk, .. } => Some(chunk.conditioned_on_tick),
            _ => None,
        })
        .collect()
}

#[test]
fn a_strategy_may_keep_two_requests_in_flight() {
    let closest_pair = |ticks: &[u64]| ticks.windows(2).map(|w| w[1] - w[0]).min().unwrap();
    let (_, one) = run_logged(
        &["execution.strategy=\"ema\"", "execution.alpha=1.0"],
        "flight1",
    );
    // One in flight: a new request only after the last chunk came back.
    assert!(closest_pair(&conditioned_ticks(&one)) >= 2);
    let (reached, two) = run_logged(
        &[
            "execution.strategy=\"ema\"",
            "execution.alpha=1.0",
            "execution.max_in_flight=2",
        ],
        "flight2",
    );
    // Two in flight: the second request follows the first on the next tick.
    assert_eq!(closest_pair(&conditioned_ticks(&two)), 1);
    for (q, goal) in reached.iter().zip(TARGET) {
        assert!((q - goal).abs() < 0.05, "{reached:?} vs {TARGET:?}");
    }
    let replayed = replay_with(&two.header, &two.records, &registry());
    assert!(replayed.identical(), "{:?}", replayed.first);
}
