//! The safety reproductions of issue 9, end to end: the real binary, a scripted
//! robot on zenoh, and an independent zenoh subscriber that checks every command
//! it hears against the limits by finite differences.

mod common;

use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use reflex_runtime::JointCommand;
use reflex_runtime::types::JointState;
use reflex_zenoh::wire;
use zenoh::Wait;

/// Listens to a run's commands on zenoh, decoding them with the wire format alone.
struct CommandTap {
    commands: Arc<Mutex<Vec<JointCommand>>>,
    _subscriber: zenoh::pubsub::Subscriber<()>,
    session: zenoh::Session,
}

impl CommandTap {
    fn start(endpoint: &str, robot: &str) -> Self {
        let session = zenoh_peer(endpoint);
        let commands = Arc::new(Mutex::new(Vec::new()));
        let subscriber = {
            let commands = commands.clone();
            session
                .declare_subscriber(format!("reflex/{robot}/joint_commands"))
                .callback(move |s| {
                    let c = wire::decode_command(&s.payload().to_bytes()).expect("wire format");
                    commands.lock().unwrap().push(c);
                })
                .wait()
                .unwrap()
        };
        Self {
            commands,
            _subscriber: subscriber,
            session,
        }
    }

    fn commands(&self) -> Vec<JointCommand> {
        self.commands.lock().unwrap().clone()
    }

    fn put(&self, key: &str, payload: &str) {
        self.session.put(key, payload).wait().unwrap();
    }
}

/// Every command finite and inside the limits; velocity and acceleration by finite
/// differences over consecutive sequence numbers within the limits.
fn assert_commands_safe(commands: &[JointCommand], limits: &[(f64, f64, f64, f64)], dt: f64) {
    assert!(!commands.is_empty(), "no commands heard");
    for c in commands {
        for (j, &(lo, hi, _, _)) in limits.iter().enumerate() {
            let p = c.position[j];
            assert!(
                p.is_finite() && p >= lo && p <= hi,
                "seq {}: joint {j} at {p}",
                c.seq
            );
        }
    }
    for w in commands.windows(3) {
        if w[1].seq != w[0].seq + 1 || w[2].seq != w[1].seq + 1 {
            continue; // a gap in what the tap heard: no finite difference there
        }
        for (j, &(_, _, v_max, a_max)) in limits.iter().enumerate() {
            let v1 = (w[1].position[j] - w[0].position[j]) / dt;
            let v2 = (w[2].position[j] - w[1].position[j]) / dt;
            let a = (v2 - v1) / dt;
            assert!(
                v2.abs() <= v_max + 1e-6,
                "seq {}: joint {j} velocity {v2}",
                w[2].seq
            );
            assert!(
                a.abs() <= a_max + 1e-4,
                "seq {}: joint {j} acceleration {a}",
                w[2].seq
            );
        }
    }
}

/// (min, max, velocity, acceleration) of a launch file's joints.
fn limits(launch: &str) -> Vec<(f64, f64, f64, f64)> {
    let launch = reflex::load_launch(Some(&repo().join(launch)), &[]).unwrap();
    launch
        .config
        .robot
        .joints
        .iter()
        .map(|j| (j.position[0], j.position[1], j.velocity, j.acceleration))
        .collect()
}

/// A robot on zenoh whose states follow a script: `state(t)` is what it publishes
/// `t` after starting (None: silent).
struct ScriptedRobot {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _session: zenoh::Session,
}

impl ScriptedRobot {
    fn start(
        endpoint: &str,
        script: impl Fn(Duration, &mut JointState) -> bool + Send + 'static,
    ) -> Self {
        let session = zenoh_peer(endpoint);
        let publisher = session
            .declare_publisher("reflex/zarm/joint_states")
            .wait()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut state = JointState::empty(3);
                state.epoch = 1;
                let mut buf = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    state.seq += 1;
                    if script(started.elapsed(), &mut state) {
                        wire::encode_state(&state, wire::unix_ns(), &mut buf);
                        let _ = publisher.put(buf.clone()).wait();
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Self {
            stop,
            thread: Some(thread),
            _session: session,
        }
    }
}

impl Drop for ScriptedRobot {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts `reflex run` on `launch` with a private control-socket directory.
fn start_run(launch: &str, endpoint: &str, dir: &std::path::Path, extra: &[&str]) -> Child {
    let mut args: Vec<String> = [
        "run",
        launch,
        "--set",
        &format!("zenoh.listen=[\"{endpoint}\"]"),
        "--summary-json",
    ]
    .map(String::from)
    .to_vec();
    args.push(dir.join("summary.json").display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut cmd_env = reflex();
    cmd_env.env("XDG_RUNTIME_DIR", dir);
    spawn_until_with(cmd_env, &args, "reflex: zenoh")
}

fn operator(dir: &std::path::Path, robot: &str, request: &str) -> String {
    let out = reflex()
        .env("XDG_RUNTIME_DIR", dir)
        .args([request, "--robot", robot])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A simulated-arm run on a free port with a private control-socket directory,
/// and a command tap on it.
fn sim_arm_run(name: &str, extra: &[&str]) -> (Child, CommandTap, PathBuf) {
    let port = free_port();
    let endpoint = format!("tcp/127.0.0.1:{port}");
    let dir = private_dir(name);
    let child = start_run("launch/sim_arm.toml", &endpoint, &dir, extra);
    let tap = CommandTap::start(&endpoint, "sim_arm");
    (child, tap, dir)
}

fn private_dir(name: &str) -> PathBuf {
    scratch(name)
}

#[test]
fn nan_and_far_out_states_never_start_the_arm_and_are_named() {
    for (bad, named) in [
        ([f64::NAN, 0.2, 0.3], "joint 0 is not a finite number"),
        ([10.0, -50.0, 0.3], "joint 0 is 7.2000 rad past its limit"),
        ([f64::INFINITY, 0.2, 0.3], "joint 0 is not a finite number"),
    ] {
        let port = free_port();
        let endpoint = format!("tcp/127.0.0.1:{port}");
        let dir = private_dir("safety-bad-start");
        let robot = ScriptedRobot::start(&endpoint, move |_, s| {
            s.position[..3].copy_from_slice(&bad);
            true
        });
        let out = reflex()
            .env("XDG_RUNTIME_DIR", &dir)
            .args(["run", "launch/zenoh_arm.toml", "--duration", "1"])
            .args([
                "--set",
                &format!("zenoh.listen=[\"{endpoint}\"]"),
                "--set",
                "control.startup_timeout_ms=1500",
            ])
            .output()
            .unwrap();
        drop(robot);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("none can be started from"), "{err}");
        assert!(err.contains(named), "{named:?} in {err}");
    }
}

#[test]
fn a_robot_that_starts_with_nan_then_sends_valid_states_gets_only_safe_commands() {
    let port = free_port();
    let endpoint = format!("tcp/127.0.0.1:{port}");
    let dir = private_dir("safety-nan-first");
    let robot = ScriptedRobot::start(&endpoint, |t, s| {
        let bad = t < Duration::from_millis(800);
        s.position[..3].copy_from_slice(&[if bad { f64::NAN } else { 0.1 }, 0.2, 0.3]);
        true
    });
    let mut child = start_run(
        "launch/zenoh_arm.toml",
        &endpoint,
        &dir,
        &["--duration", "3"],
    );
    let tap = CommandTap::start(&endpoint, "zarm");
    assert!(child.wait().unwrap().success());
    drop(robot);
    let commands = tap.commands();
    assert!(commands.len() > 100, "{} commands", commands.len());
    assert_commands_safe(&commands, &limits("launch/zenoh_arm.toml"), 0.01);
    for c in &commands {
        assert!(
            (c.position[0] - 0.1).abs() < 1e-6,
            "held at the valid state: {c:?}"
        );
    }
}

#[test]
fn invalid_and_replayed_states_count_as_missing_and_latch_the_stop() {
    let port = free_port();
    let endpoint = format!("tcp/127.0.0.1:{port}");
    let dir = private_dir("safety-invalid");
    let robot = ScriptedRobot::start(&endpoint, |t, s| {
        s.position[..3].copy_from_slice(&[0.1, 0.2, 0.3]);
        if t > Duration::from_millis(1200) {
            // NaN, then an old sample replayed: neither may feed the watchdog.
            if (s.seq / 10) % 2 == 0 {
                s.position[1] = f64::NAN;
            } else {
                s.seq = 3;
            }
        }
        true
    });
    let mut child = start_run(
        "launch/zenoh_arm.toml",
        &endpoint,
        &dir,
        &["--duration", "3"],
    );
    assert!(child.wait().unwrap().success());
    drop(robot);
    let summary = summary(&dir.join("summary.json"));
    assert_eq!(summary["estop_latches"], 1, "{summary}");
    assert_eq!(summary["final_state"], "e-stop latched", "{summary}");
    assert!(
        summary["invalid_states"].as_u64().unwrap() > 20,
        "{summary}"
    );
    assert!(
        summary["stale_state_ticks"].as_u64().unwrap() > 50,
        "{summary}"
    );
}

#[test]
fn remote_rearm_is_ignored_and_local_rearm_holds_until_resume() {
    let (mut child, tap, dir) = sim_arm_run(
        "safety-authority",
        &[
            "--duration",
            "7",
            "--set",
            "safety.rearm_position_tolerance=0.2",
        ],
    );
    std::thread::sleep(Duration::from_millis(1200));
    tap.put("reflex/sim_arm/control", "estop");
    std::thread::sleep(Duration::from_millis(1000));
    // Anyone on the network: no credentials, no effect.
    for _ in 0..20 {
        tap.put("reflex/sim_arm/control", "rearm");
        tap.put("reflex/sim_arm/control", "resume");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let after_remote = tap.commands().len();
    // From this machine: re-arm holds, resume moves again.
    let held = operator(&dir, "sim_arm", "rearm");
    assert!(held.contains("rearm: ok"), "{held}");
    assert!(operator(&dir, "sim_arm", "rearm").contains("refused: nothing to re-arm"));
    std::thread::sleep(Duration::from_millis(500));
    let resumed = operator(&dir, "sim_arm", "resume");
    assert!(resumed.contains("resume: ok"), "{resumed}");
    assert!(child.wait().unwrap().success());
    let summary = summary(&dir.join("summary.json"));
    assert_eq!(summary["estop_latches"], 1, "{summary}");
    assert_eq!(summary["final_state"], "running", "{summary}");
    assert!(summary["refusals"].as_u64().unwrap() >= 1, "{summary}");
    let commands = tap.commands();
    assert_commands_safe(&commands, &limits("launch/sim_arm.toml"), 0.01);
    // Between the remote attempts and the local re-arm the arm stood still.
    let still = &commands[after_remote.saturating_sub(30)..after_remote];
    assert!(
        still
            .windows(2)
            .all(|w| w[0].positions() == w[1].positions()),
        "held still while only remote peers asked to re-arm"
    );
    // And it moved again after the resume.
    let last = &commands[commands.len() - 100..];
    assert!(
        last.windows(2)
            .any(|w| w[0].positions() != w[1].positions())
    );
}

#[test]
fn request_spam_never_breaks_the_limits() {
    let (mut child, tap, dir) = sim_arm_run(
        "safety-spam",
        &[
            "--duration",
            "6",
            "--set",
            "safety.rearm_position_tolerance=0.5",
        ],
    );
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let request = ["estop", "rearm", "resume", "rearm", "resume"][i % 5];
        let _ = operator(&dir, "sim_arm", request);
        tap.put("reflex/sim_arm/control", "rearm");
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(child.wait().unwrap().success());
    let summary = summary(&dir.join("summary.json"));
    assert!(summary["estop_latches"].as_u64().unwrap() >= 2, "{summary}");
    assert_commands_safe(&tap.commands(), &limits("launch/sim_arm.toml"), 0.01);
}

#[test]
fn a_rearm_while_the_robot_is_silent_is_refused_and_never_fires_later() {
    let port = free_port();
    let endpoint = format!("tcp/127.0.0.1:{port}");
    let dir = private_dir("safety-stale-rearm");
    // Up for 2 s, silent for 1.5 s, then back 1 rad away (moved while stopped).
    // The requests are timed on the robot's clock, so a slow start of reflex (a
    // loaded machine) does not shift the phases.
    let robot_started = Instant::now();
    let robot = ScriptedRobot::start(&endpoint, |t, s| {
        let back = t > Duration::from_millis(3500);
        s.position[..3].copy_from_slice(&[if back { 1.1 } else { 0.1 }, 0.2, 0.3]);
        t < Duration::from_millis(2000) || back
    });
    let mut child = start_run(
        "launch/zenoh_arm.toml",
        &endpoint,
        &dir,
        &["--duration", "5.5"],
    );
    let tap = CommandTap::start(&endpoint, "zarm");
    let at = |ms: u64| {
        let due = robot_started + Duration::from_millis(ms);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    };
    at(2800);
    let answer = operator(&dir, "zarm", "rearm");
    assert!(
        answer.contains("refused: no fresh valid joint state"),
        "{answer}"
    );
    at(4300);
    let answer = operator(&dir, "zarm", "rearm");
    assert!(answer.contains("rad from the held command"), "{answer}");
    assert!(child.wait().unwrap().success());
    drop(robot);
    let summary = summary(&dir.join("summary.json"));
    assert_eq!(summary["final_state"], "e-stop latched", "{summary}");
    let commands = tap.commands();
    assert_commands_safe(&commands, &limits("launch/zenoh_arm.toml"), 0.01);
    assert!(
        commands.iter().all(|c| (c.position[0] - 0.1).abs() < 1e-6),
        "the command never followed the robot's new position"
    );
}

#[test]
fn the_deadman_stops_the_arm_when_the_operator_heartbeat_stops() {
    let (mut child, tap, dir) = sim_arm_run(
        "safety-deadman",
        &[
            "--duration",
            "5",
            "--set",
            "safety.operator.heartbeat_ms=1000",
        ],
    );
    // Heartbeats for 2 s keep it running; then the operator goes quiet.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        assert!(operator(&dir, "sim_arm", "heartbeat").contains("heartbeat: ok"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(child.wait().unwrap().success());
    let summary = summary(&dir.join("summary.json"));
    assert_eq!(summary["estop_latches"], 1, "{summary}");
    assert_eq!(summary["final_state"], "e-stop latched", "{summary}");
    assert_commands_safe(&tap.commands(), &limits("launch/sim_arm.toml"), 0.01);
}
