//! Interventions with a leader arm over zenoh (`zenoh_teleop`): a person takes
//! over mid-run and hands back. The arm follows the leader's motion relative to
//! where both were at takeover (the leader sits far away: an absolute mapping
//! would jump), no chunk is asked for while engaged, the policy takes over again
//! after the release, the log replays bit for bit, and the recorded rows say
//! which steps were interventions, in the dataset and in the transition stream.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, repo, run_ok, scratch, spawn_until, zenoh_peer};
use reflex_runtime::log::{Record, read_log};
use reflex_runtime::types::MAX_JOINTS;
use zenoh::Wait;

/// The leader's pose at takeover: nowhere near the follower.
const LEADER: [f64; 3] = [1.2, -1.5, 0.9];
/// How far the leader moves while engaged.
const MOVE: [f64; 3] = [0.3, -0.2, 0.1];

#[test]
fn a_person_takes_over_with_a_leader_arm_and_hands_back() {
    let dir = scratch("teleop");
    let launch = dir.join("launch.toml");
    std::fs::write(
        &launch,
        format!(
            "{}\n[[drivers]]\nkind = \"zenoh_teleop\"\nname = \"leader\"\n",
            common::demo_launch_text()
        ),
    )
    .unwrap();
    let port = free_port();
    let endpoint = format!("tcp/127.0.0.1:{port}");
    let (log, summary_path, dataset) = (
        dir.join("run.log"),
        dir.join("summary.json"),
        dir.join("dataset"),
    );
    let args: Vec<String> = [
        "run",
        launch.to_str().unwrap(),
        "--duration",
        "5",
        "--set",
        "zenoh.listen=[]",
        "--set",
        &format!("zenoh.connect=[\"{endpoint}\"]"),
        "--set",
        "robot.name=teleop_arm",
        "--log",
        log.to_str().unwrap(),
        "--summary-json",
        summary_path.to_str().unwrap(),
        "--record",
        dataset.to_str().unwrap(),
        "--set",
        "recording.episode_time_s=100",
        "--set",
        "recording.reset_time_s=0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // A learner's view: the transitions the actor streams. The learner listens
    // and is subscribed before the actor starts, so it misses no row.
    let session = common::zenoh_listener(&endpoint);
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let _subscriber = {
        let received = received.clone();
        session
            .declare_subscriber("reflex/teleop_arm/transitions")
            .callback(move |sample| {
                let bytes = sample.payload().to_bytes();
                let message = serde_json::from_slice(&bytes).expect("a transition is JSON");
                received.lock().unwrap().push(message);
            })
            .wait()
            .unwrap()
    };
    let mut child = spawn_until(&args, "wall clock");
    let key = "reflex/teleop_arm/leader";
    let send = |seq: u64, engaged: bool, positions: [f64; 3]| {
        let message = serde_json::json!({"seq": seq, "engaged": engaged, "positions": positions});
        session.put(key, message.to_string()).wait().unwrap();
    };
    // The policy drives for a second, a person then moves the leader for 1.5 s
    // (a ramp of MOVE), holds, and releases.
    std::thread::sleep(Duration::from_millis(1200));
    let started = Instant::now();
    let mut seq = 0;
    while started.elapsed() < Duration::from_millis(1800) {
        seq += 1;
        let progress = (started.elapsed().as_secs_f64() / 1.5).min(1.0);
        let positions = std::array::from_fn(|j| LEADER[j] + MOVE[j] * progress);
        send(seq, true, positions);
        std::thread::sleep(Duration::from_millis(10));
    }
    let end: [f64; 3] = std::array::from_fn(|j| LEADER[j] + MOVE[j]);
    seq += 1;
    send(seq, false, end);
    // Garbage and a repeat are ignored.
    session.put(key, "not json").wait().unwrap();
    send(seq, true, [9.0; 3]);
    assert!(child.wait().unwrap().success());

    let summary = common::summary(&summary_path);
    let engaged_ticks = summary["intervention_ticks"].as_u64().unwrap();
    assert!((120..=200).contains(&engaged_ticks), "{engaged_ticks}");

    // From the log: the commands while engaged, and the chunks around it.
    let contents = read_log(&log).unwrap();
    let mut takeover = None;
    let mut release = None;
    let mut commands = Vec::new();
    let mut chunks_applied = Vec::new();
    for record in &contents.records {
        match record {
            Record::Teleop { tick, sample } => {
                if sample.engaged && takeover.is_none() {
                    takeover = Some(*tick);
                }
                if !sample.engaged && takeover.is_some() && release.is_none() {
                    release = Some(*tick);
                }
            }
            Record::Tick(t) => commands.push((t.tick, t.command.position)),
            Record::Chunk {
                tick,
                accepted: true,
                ..
            } => chunks_applied.push(*tick),
            _ => {}
        }
    }
    let (takeover, release) = (takeover.unwrap(), release.unwrap());
    let command_at = |tick: u64| command_at(&commands, tick);
    let before = command_at(takeover - 1);
    let at_release = command_at(release - 1);
    // The arm moved by the leader's motion, not to the leader's pose.
    for j in 0..3 {
        let moved = at_release[j] - before[j];
        assert!(
            (moved - MOVE[j]).abs() < 0.05,
            "joint {j}: the arm moved {moved:.3}, the leader {:.3}",
            MOVE[j]
        );
    }
    // No chunk was applied while a person commanded; the policy resumed after.
    assert!(
        !chunks_applied
            .iter()
            .any(|&t| t > takeover + 5 && t < release),
        "chunks during the intervention: {chunks_applied:?} ({takeover}..{release})"
    );
    assert!(
        chunks_applied.iter().any(|&t| t > release),
        "the policy never resumed"
    );
    run_ok(&["replay", log.to_str().unwrap()]);

    // The rows say which steps were interventions (10 rows a second).
    let out = std::process::Command::new(common::parity_python())
        .arg("-c")
        .arg(
            "import sys, pyarrow.parquet as pq\n\
             t = pq.read_table(sys.argv[1]).to_pydict()\n\
             print(sum(t['complementary_info.is_intervention']), len(t['index']))",
        )
        .arg(dataset.join("data/chunk-000/file-000.parquet"))
        .current_dir(repo())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let transitions = received.lock().unwrap().clone();
    let counts: Vec<u64> = text
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(
        counts.len(),
        2,
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = engaged_ticks / 10;
    assert!(
        counts[0].abs_diff(expected) <= 2 && counts[0] < counts[1],
        "{counts:?} rows flagged, {engaged_ticks} engaged ticks"
    );

    // Every row went out as a transition, flags and all; the run ended mid-episode
    // (saved on stop), so the last one is done.
    assert_eq!(transitions.len() as u64, counts[1], "transitions vs rows");
    let flagged = transitions
        .iter()
        .filter(|t| t["intervention"] == true)
        .count() as u64;
    assert_eq!(flagged, counts[0]);
    for (i, t) in transitions.iter().enumerate() {
        assert_eq!(t["kind"], "transition");
        assert_eq!(t["frame_index"], i, "{t}");
        assert_eq!(t["observation"]["state"].as_array().unwrap().len(), 3);
        assert_eq!(t["action"].as_array().unwrap().len(), 3);
        assert!(
            t["observation"]["images"]["observation.images.top"]["frame_index"] == i,
            "{t}"
        );
        assert_eq!(t["done"], i + 1 == transitions.len(), "{t}");
    }
}

/// From a run log: the ticks of the first takeover and of the release after it,
/// and every tick's command.
fn intervention(log: &std::path::Path) -> (u64, u64, Vec<(u64, [f64; MAX_JOINTS])>) {
    let contents = read_log(log).unwrap();
    let (mut takeover, mut release, mut commands) = (None, None, Vec::new());
    for record in &contents.records {
        match record {
            Record::Teleop { tick, sample } => {
                if sample.engaged && takeover.is_none() {
                    takeover = Some(*tick);
                }
                if !sample.engaged && takeover.is_some() && release.is_none() {
                    release = Some(*tick);
                }
            }
            Record::Tick(t) => commands.push((t.tick, t.command.position)),
            _ => {}
        }
    }
    (
        takeover.expect("a takeover"),
        release.expect("a release"),
        commands,
    )
}

/// The command published at `tick`.
fn command_at(commands: &[(u64, [f64; MAX_JOINTS])], tick: u64) -> [f64; MAX_JOINTS] {
    commands.iter().find(|(t, _)| *t == tick).unwrap().1
}

/// The simulated arm's tip in the plane, from its link lengths (launch/sim_arm.urdf),
/// written here independently of reflex's kinematics.
fn planar_tip(q: &[f64]) -> [f64; 2] {
    let (mut x, mut y, mut angle) = (0.0, 0.0, 0.0);
    for (length, value) in [0.4, 0.3, 0.2].iter().zip(q) {
        angle += value;
        x += length * angle.cos();
        y += length * angle.sin();
    }
    [x, y]
}

/// A Cartesian device (a 3D mouse or a gamepad in end-effector mode, here over
/// zenoh): the tip follows the device's motion since takeover through the
/// damped least-squares IK, the joints never jump, and replay reproduces it.
#[test]
fn a_cartesian_device_moves_the_tip_through_ik() {
    let dir = scratch("teleop-cartesian");
    let launch = dir.join("launch.toml");
    std::fs::write(
        &launch,
        format!(
            "{}\n[[drivers]]\nkind = \"zenoh_teleop\"\nname = \"mouse\"\nframe = \"end_effector\"\n",
            common::demo_launch_text()
        ),
    )
    .unwrap();
    let endpoint = format!("tcp/127.0.0.1:{}", free_port());
    let log = dir.join("run.log");
    let args: Vec<String> = [
        "run",
        launch.to_str().unwrap(),
        "--duration",
        "4",
        "--set",
        &format!("zenoh.listen=[\"{endpoint}\"]"),
        "--set",
        "robot.name=ee_arm",
        "--log",
        log.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut child = spawn_until(&args, "wall clock");
    let session = zenoh_peer(&endpoint);
    let send = |seq: u64, engaged: bool, positions: [f64; 3]| {
        let message = serde_json::json!({"seq": seq, "engaged": engaged, "positions": positions});
        session
            .put("reflex/ee_arm/mouse", message.to_string())
            .wait()
            .unwrap();
    };
    // The device's own origin is far from the tip: only its motion counts.
    let origin = [5.0, -3.0, 2.0];
    let motion = [0.08, -0.05, 0.0];
    std::thread::sleep(Duration::from_millis(1000));
    let started = Instant::now();
    let mut seq = 0;
    while started.elapsed() < Duration::from_millis(1600) {
        seq += 1;
        let progress = (started.elapsed().as_secs_f64() / 1.0).min(1.0);
        send(
            seq,
            true,
            std::array::from_fn(|i| origin[i] + motion[i] * progress),
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    send(
        seq + 1,
        false,
        std::array::from_fn(|i| origin[i] + motion[i]),
    );
    assert!(child.wait().unwrap().success());

    let (takeover, release, commands) = intervention(&log);
    let before = planar_tip(&command_at(&commands, takeover - 1)[..3]);
    let after = planar_tip(&command_at(&commands, release - 1)[..3]);
    for axis in 0..2 {
        let moved = after[axis] - before[axis];
        assert!(
            (moved - motion[axis]).abs() < 0.005,
            "axis {axis}: the tip moved {moved:.4} m, the device {:.4} m",
            motion[axis]
        );
    }
    // No jump at takeover: the first engaged ticks stay next to the command before.
    let first = command_at(&commands, takeover + 1);
    let held = command_at(&commands, takeover - 1);
    for j in 0..3 {
        assert!(
            (first[j] - held[j]).abs() < 0.05,
            "joint {j}: {held:?} -> {first:?}"
        );
    }
    run_ok(&["replay", log.to_str().unwrap()]);
}

/// A keyboard teleop device (`keyboard_teleop`) on a FIFO standing in for its
/// evdev device: holding Shift engages, ↑ moves the tip +x at `speed` while held,
/// releasing Shift hands back.
#[test]
fn a_keyboard_moves_the_tip_while_shift_is_held() {
    use reflex_teleop::keyboard::{codes, event_bytes};
    use std::io::Write;
    let dir = scratch("teleop-keyboard");
    let fifo = dir.join("kbd");
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let launch = dir.join("launch.toml");
    std::fs::write(
        &launch,
        format!(
            "{}\n[[drivers]]\nkind = \"keyboard_teleop\"\nname = \"keys\"\ndevice = \"{}\"\n\
             frame = \"end_effector\"\nspeed = 0.05\n",
            common::demo_launch_text(),
            fifo.display()
        ),
    )
    .unwrap();
    let log = dir.join("run.log");
    let summary_path = dir.join("summary.json");
    let args: Vec<String> = [
        "run",
        launch.to_str().unwrap(),
        "--duration",
        "4",
        "--set",
        "zenoh.enabled=false",
        "--log",
        log.to_str().unwrap(),
        "--summary-json",
        summary_path.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut child = spawn_until(&args, "wall clock");
    // Opening for writing waits for the driver's reader.
    let mut keyboard = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let mut key =
        |code: u16, pressed: bool| keyboard.write_all(&event_bytes(code, pressed)).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    // The holds as they really were (a loaded machine oversleeps).
    let shift_down = Instant::now();
    key(codes::SHIFT, true);
    std::thread::sleep(Duration::from_millis(100));
    let up_down = Instant::now();
    key(codes::UP, true);
    std::thread::sleep(Duration::from_millis(1000));
    key(codes::UP, false);
    let up_held = up_down.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    key(codes::SHIFT, false);
    let shift_held = shift_down.elapsed().as_secs_f64();
    assert!(child.wait().unwrap().success());

    let contents = read_log(&log).unwrap();
    assert!(contents.records.iter().all(|r| match r {
        Record::Teleop { sample, .. } => {
            sample.frame == reflex_runtime::teleop::TeleopFrame::EndEffector
        }
        _ => true,
    }));
    let (takeover, release, commands) = intervention(&log);
    let before = planar_tip(&command_at(&commands, takeover - 1)[..3]);
    let after = planar_tip(&command_at(&commands, release - 1)[..3]);
    let moved = [after[0] - before[0], after[1] - before[1]];
    assert!(
        (moved[0] - 0.05 * up_held).abs() < 0.004 && moved[1].abs() < 0.003,
        "the tip moved {moved:?} m; ↑ held {up_held:.3} s at 0.05 m/s"
    );
    let summary = common::summary(&summary_path);
    let engaged = summary["intervention_ticks"].as_u64().unwrap() as f64;
    assert!(
        (engaged - 100.0 * shift_held).abs() < 20.0,
        "{engaged} ticks engaged, Shift held {shift_held:.3} s"
    );
    run_ok(&["replay", log.to_str().unwrap()]);
}
