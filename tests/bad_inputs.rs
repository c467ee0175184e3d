//! Bad inputs outside the launch file: command-line numbers, paths that are not
//! regular files, and a peer flooding the joint-state key. Each ends in a clear
//! error or a counted, rate-limited refusal, never a panic, a hang or a log flood.

mod common;

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use reflex_runtime::types::JointState;
use reflex_zenoh::wire;
use zenoh::Wait;

/// Runs `cmd`, killing it if it is still running after `limit` (a read of
/// `/dev/zero` used to grow to gigabytes).
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_bad_duration_is_a_usage_error_not_a_panic() {
    for value in ["nan", "inf", "1e300", "-1", "0"] {
        let out = reflex()
            .args(["run", "--sim-clock", "--duration", value])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--duration {value}: {err}");
        assert!(
            err.contains("--duration") && err.contains("number of seconds"),
            "--duration {value}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn inspect_refuses_a_device_instead_of_reading_it() {
    let mut cmd = reflex();
    cmd.args(["inspect", "/dev/zero"]);
    let out = output_within(cmd, Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("not a regular file (it is a character device)"),
        "{err}"
    );
}

#[test]
fn infer_refuses_an_image_or_observation_that_is_a_device() {
    let dir = scratch("infer-dev-zero");
    let obs = dir.join("obs.json");
    std::fs::write(
        &obs,
        r#"{"joint_positions": [0, 0.6, 0.6], "images": {"top": "/dev/zero"}}"#,
    )
    .unwrap();
    let mut cmd = reflex();
    cmd.args([
        "infer",
        "launch/sim_arm.toml",
        "--obs",
        obs.to_str().unwrap(),
    ]);
    let out = output_within(cmd, Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("/dev/zero: not a regular file"), "{err}");

    // The observation itself: a directory named like an .npz.
    let npz = dir.join("obs.npz");
    std::fs::create_dir_all(&npz).unwrap();
    let mut cmd = reflex();
    cmd.args([
        "infer",
        "launch/sim_arm.toml",
        "--obs",
        npz.to_str().unwrap(),
    ]);
    let out = output_within(cmd, Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("not a regular file (it is a directory)"),
        "{err}"
    );
}

/// A peer that sends 20,000 undecodable messages (one of 1 MB) on the state key
/// while a robot sends good states, starting late: the run counts every refused
/// message in its summary, logs a handful of short lines about them, and does not
/// count the wait for the first state as skipped periods.
#[test]
fn a_flood_of_bad_states_is_counted_and_rate_limited() {
    let dir = scratch("bad-states");
    let summary_path = dir.join("summary.json");
    let endpoint = format!("tcp/127.0.0.1:{}", free_port());
    let args: Vec<String> = [
        "run",
        "launch/zenoh_arm.toml",
        "--duration",
        "5",
        "--set",
        &format!("zenoh.listen=[\"{endpoint}\"]"),
        "--summary-json",
        summary_path.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    let mut child = reflex()
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let lines = std::thread::spawn(move || {
        use std::io::{BufRead, BufReader};
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("reflex: zenoh") {
                let _ = ready_tx.send(());
            }
            lines.push(line);
        }
        lines
    });
    ready
        .recv_timeout(Duration::from_secs(60))
        .expect("reflex did not open the bus");

    let session = zenoh_peer(&endpoint);
    let publisher = session
        .declare_publisher("reflex/zarm/joint_states")
        .congestion_control(zenoh::qos::CongestionControl::Block)
        .wait()
        .unwrap();
    // The run waits for its first state meanwhile (start-up, not skipped periods).
    std::thread::sleep(Duration::from_millis(1500));
    let stop = Arc::new(AtomicBool::new(false));
    let robot = {
        let stop = stop.clone();
        let publisher = session
            .declare_publisher("reflex/zarm/joint_states")
            .wait()
            .unwrap();
        std::thread::spawn(move || {
            let mut state = JointState::empty(3);
            state.position[..3].copy_from_slice(&[0.1, 0.2, 0.3]);
            let mut buf = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                state.seq += 1;
                wire::encode_state(&state, wire::unix_ns(), &mut buf);
                let _ = publisher.put(buf.clone()).wait();
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    publisher.put(vec![b'x'; 1_000_000]).wait().unwrap();
    for i in 0..19_999u32 {
        publisher.put(format!("garbage {i}")).wait().unwrap();
    }
    let status = child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    robot.join().unwrap();
    let lines = lines.join().unwrap();
    assert!(status.success(), "{}", lines.join("\n"));

    let summary = summary(&summary_path);
    let refused = summary["bad_robot_messages"].as_u64().unwrap();
    assert_eq!(refused, 20_000, "{summary}");
    assert!(summary["dropped_commands"].is_u64(), "{summary}");
    let skipped = summary["skipped_periods"].as_u64().unwrap();
    assert!(
        skipped < 100,
        "the 1.5 s wait for the first state is not 150 skipped periods: {skipped}"
    );
    let about_bad: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("bad states so far") || l.contains("bad joint states in total"))
        .collect();
    assert!(
        (1..=10).contains(&about_bad.len()),
        "a few lines, not one per message: {}",
        about_bad.len()
    );
    assert!(
        about_bad
            .last()
            .unwrap()
            .contains("20000 bad joint states in total"),
        "{about_bad:?}"
    );
    assert!(
        lines.iter().all(|l| l.len() < 1000),
        "no payload is echoed into the log"
    );
    let stdout = String::from_utf8_lossy(&child.wait_with_output().unwrap().stdout).into_owned();
    assert!(stdout.contains("refused from the robot 20000"), "{stdout}");
}

/// An array for an .npz: name, shape, float32 values (None: uint8 zeros).
type NpzArray<'a> = (&'a str, Vec<usize>, Option<Vec<f32>>);

/// An .npz of the given arrays, as numpy's `savez` writes it.
fn write_npz(path: &std::path::Path, arrays: &[NpzArray<'_>]) {
    use std::io::Write as _;
    let dir = path.parent().unwrap();
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for (name, shape, values) in arrays {
        let file = dir.join(format!("{name}.npy"));
        let n: usize = shape.iter().product();
        match values {
            Some(v) => reflex_runtime::npy::write_f32(&file, shape, v).unwrap(),
            None => reflex_runtime::npy::write_u8(&file, shape, &vec![0; n]).unwrap(),
        }
        zip.start_file(
            format!("{name}.npy"),
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        zip.write_all(&std::fs::read(&file).unwrap()).unwrap();
    }
    zip.finish().unwrap();
}

#[test]
fn a_bad_episode_is_a_clear_error() {
    let dir = scratch("bad-episode");
    let launch = dir.join("launch.toml");
    std::fs::write(&launch, demo_launch_text()).unwrap();
    let infer = |episode: &std::path::Path| {
        let out = reflex()
            .args(["infer", launch.to_str().unwrap(), "--episode"])
            .arg(episode)
            .args(["--out", dir.join("actions.npy").to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Arrays of different lengths.
    let ragged = dir.join("ragged.npz");
    write_npz(
        &ragged,
        &[
            ("joint_positions", vec![5, 3], Some(vec![0.1; 15])),
            ("camera.top", vec![4, 96, 96, 3], None),
        ],
    );
    let (ok, err) = infer(&ragged);
    assert!(!ok);
    assert!(
        err.contains("`camera.top` has shape [4, 96, 96, 3]")
            && err.contains("leading time axis of 5 steps"),
        "{err}"
    );
    // A NaN joint position names the step.
    let mut positions = vec![0.1; 15];
    positions[7] = f32::NAN;
    let nan = dir.join("nan.npz");
    write_npz(
        &nan,
        &[
            ("joint_positions", vec![5, 3], Some(positions)),
            ("camera.top", vec![5, 96, 96, 3], None),
        ],
    );
    let (ok, err) = infer(&nan);
    assert!(!ok);
    assert!(err.contains("step 2 of") && err.contains("NaN"), "{err}");
    // A good one runs: one action per step.
    let good = dir.join("good.npz");
    write_npz(
        &good,
        &[
            ("joint_positions", vec![5, 3], Some(vec![0.1; 15])),
            ("camera.top", vec![5, 96, 96, 3], None),
        ],
    );
    let (ok, err) = infer(&good);
    assert!(ok, "{err}");
    let (shape, _) = reflex_runtime::npy::read_f64(&dir.join("actions.npy")).unwrap();
    assert_eq!(shape, vec![5, 3]);
}
