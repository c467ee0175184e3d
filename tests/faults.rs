//! Faults: a policy that outputs NaN, a robot that goes silent, a robot that never
//! answers, and SIGINT in the middle of a run. The arm is held safe in each, and
//! what was recorded survives.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use reflex_runtime::log::{Record, read_log};
use reflex_runtime::types::JointState;
use reflex_zenoh::wire;
use zenoh::Wait;

#[test]
fn nan_chunks_are_rejected_and_the_arm_holds_still() {
    let dir = scratch("fault-nan");
    let (log, summary_path) = (dir.join("nan.log"), dir.join("summary.json"));
    let model = format!("policy.model=\"{}\"", fixture("chunk_nan.onnx").display());
    run_ok(&[
        "run",
        "launch/sim_arm.toml",
        "--sim-clock",
        "--duration",
        "2",
        "--set",
        "zenoh.enabled=false",
        "--set",
        &model,
        "--log",
        log.to_str().unwrap(),
        "--summary-json",
        summary_path.to_str().unwrap(),
    ]);
    let summary = summary(&summary_path);
    assert!(
        summary["chunks_rejected"].as_u64().unwrap() >= 5,
        "{summary}"
    );
    assert_eq!(summary["chunks_applied"].as_u64(), Some(0), "{summary}");
    let records = read_log(&log).unwrap().records;
    let Some(Record::Start {
        position: start, ..
    }) = records.first()
    else {
        panic!("log starts with Start")
    };
    let ticks: Vec<_> = records
        .iter()
        .filter_map(|r| {
            if let Record::Tick(t) = r {
                Some(t)
            } else {
                None
            }
        })
        .collect();
    assert!(ticks.len() >= 200);
    for t in ticks {
        assert_eq!(
            &t.command.position[..3],
            &start[..3],
            "tick {}: the arm holds where it started",
            t.tick
        );
    }
}

/// A fake robot on zenoh: publishes joint states for `alive`, then goes silent;
/// records every command it receives.
struct FakeRobot {
    commands: Arc<Mutex<Vec<reflex_runtime::JointCommand>>>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
    _subscriber: zenoh::pubsub::Subscriber<()>,
    _session: zenoh::Session,
}

impl FakeRobot {
    fn start(endpoint: &str, alive: Duration) -> Self {
        let session = zenoh_peer(endpoint);
        let commands = Arc::new(Mutex::new(Vec::new()));
        let subscriber = {
            let commands = commands.clone();
            session
                .declare_subscriber("reflex/zarm/joint_commands")
                .callback(move |s| {
                    commands
                        .lock()
                        .unwrap()
                        .push(wire::decode_command(&s.payload().to_bytes()).unwrap())
                })
                .wait()
                .unwrap()
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let publisher = session
                .declare_publisher("reflex/zarm/joint_states")
                .wait()
                .unwrap();
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut state = JointState::empty(3);
                state.position[..3].copy_from_slice(&[0.1, 0.2, 0.3]);
                let mut buf = Vec::new();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < alive {
                    state.seq += 1;
                    wire::encode_state(&state, wire::unix_ns(), &mut buf);
                    publisher.put(buf.clone()).wait().unwrap();
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Self {
            commands,
            stop,
            thread,
            _subscriber: subscriber,
            _session: session,
        }
    }
}

#[test]
fn a_robot_that_goes_silent_trips_the_watchdog_and_the_estop() {
    let dir = scratch("fault-silent");
    let summary_path = dir.join("summary.json");
    let port = free_port();
    let endpoint = format!("tcp/127.0.0.1:{port}");
    let args: Vec<String> = [
        "run",
        "launch/zenoh_arm.toml",
        "--duration",
        "3",
        "--set",
        &format!("zenoh.listen=[\"{endpoint}\"]"),
        "--summary-json",
        summary_path.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    let mut child = spawn_until(&args, "reflex: zenoh");
    let robot = FakeRobot::start(&endpoint, Duration::from_millis(1500));
    assert!(child.wait().unwrap().success());
    robot.stop.store(true, Ordering::Relaxed);
    robot.thread.join().unwrap();
    let summary = summary(&summary_path);
    assert_eq!(summary["estop"], true, "{summary}");
    assert!(
        summary["stale_state_ticks"].as_u64().unwrap() > 50,
        "{summary}"
    );
    let commands = robot.commands.lock().unwrap().clone();
    assert!(
        commands.len() > 100,
        "the robot heard the loop: {}",
        commands.len()
    );
    for c in &commands {
        assert!(c.positions().iter().all(|p| p.is_finite()));
        for (j, expected) in [0.1, 0.2, 0.3].iter().enumerate() {
            assert!(
                (c.position[j] - expected).abs() < 1e-6,
                "held at the measured position: {:?}",
                c.positions()
            );
        }
    }
}

#[test]
fn a_robot_that_never_answers_is_a_clear_startup_error() {
    let port = free_port();
    let out = reflex()
        .args(["run", "launch/zenoh_arm.toml", "--duration", "1"])
        .args([
            "--set",
            &format!("zenoh.listen=[\"tcp/127.0.0.1:{port}\"]"),
            "--set",
            "control.startup_timeout_ms=300",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no joint state from the arm"), "{err}");
}

#[test]
fn sigint_mid_run_stops_cleanly_and_keeps_the_log() {
    let dir = scratch("fault-sigint");
    let log = dir.join("sigint.log");
    let args: Vec<String> = [
        "run",
        "launch/sim_arm.toml",
        "--duration",
        "60",
        "--set",
        "zenoh.enabled=false",
    ]
    .into_iter()
    .map(String::from)
    .chain(["--log".to_string(), log.display().to_string()])
    .collect();
    let child = spawn_until(&args, "clock");
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("interrupted"), "{stdout}");
    let replay = reflex()
        .args(["replay", log.to_str().unwrap()])
        .output()
        .unwrap();
    let replayed = String::from_utf8_lossy(&replay.stdout);
    assert!(
        replay.status.success() && replayed.contains("bit-identical"),
        "{replayed}"
    );
    assert!(
        !replayed.contains("ends early"),
        "the log was closed properly: {replayed}"
    );
}
